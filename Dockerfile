# syntax=docker/dockerfile:1.7
# The node image of the soundtrack platform: Ray's own image (the same Ray as pyproject.toml's
# pin), torch==2.13.0 and the project wheel, run as Ray's non-root user `ray`. Used by
# cluster.yaml (docker:) and deploy/kuberay/*.yaml. Build from the repository root (x86_64 only:
# decord 0.6.0 has no other Linux wheel):
#
#   docker build --platform linux/amd64 --build-arg VARIANT=cpu \
#       --build-arg SOUNDTRACK_COMMIT=$(git rev-parse HEAD) -t <registry>/soundtrack:0.1.0-cpu .
#   docker build --platform linux/amd64 --build-arg VARIANT=gpu \
#       --build-arg SOUNDTRACK_COMMIT=$(git rev-parse HEAD) -t <registry>/soundtrack:0.1.0-gpu .
#   add --build-arg WITH_ANALYSIS=1 for the `analysis` extra (basic-pitch's ONNX model, madmom:
#   CC BY-NC-SA models, non-commercial; off by default)
#
# VARIANT=cpu: rayproject/ray:2.60.0-py311 and the +cpu torch build from the PyTorch CPU index
#   (the head and the CPU workers: Ray Data featurizing, drivers, the Serve ingress).
# VARIANT=gpu: rayproject/ray:2.60.0-py311-cu128 and torch==2.13.0 from PyPI, whose Linux x86_64
#   wheel is the CUDA build (it bundles its CUDA runtime; the host needs only an NVIDIA driver
#   recent enough for it, e.g. the Deep Learning AMI's, and the NVIDIA container toolkit).
# Both builds satisfy the project's `torch==2.13.0` pin, so installing the wheel afterwards keeps
# the torch installed first. No torchvision / torchaudio (not used).
#
# Every pip install below names exact versions: the project wheel's own dependencies are the
# pins of pyproject.toml. tests/test_deploy.py parses this file (pinned FROM tags, Ray version =
# the installed Ray, no `latest`, every pip install pinned); it is not built in the tests.

ARG VARIANT=cpu

# ---------------------------------------------------------------- the project wheel
FROM rayproject/ray:2.60.0-py311 AS wheel
USER ray
RUN mkdir -p /home/ray/build /home/ray/wheels
WORKDIR /home/ray/build
COPY --chown=ray:users pyproject.toml README.md ./
COPY --chown=ray:users platform ./platform
RUN pip install --no-cache-dir setuptools==84.2.1 wheel==0.45.1 \
    && pip wheel --no-deps --no-build-isolation --wheel-dir /home/ray/wheels .

# ---------------------------------------------------------------- the two bases
FROM rayproject/ray:2.60.0-py311 AS base-cpu
ENV SOUNDTRACK_TORCH_INDEX=https://download.pytorch.org/whl/cpu

FROM rayproject/ray:2.60.0-py311-cu128 AS base-gpu
ENV SOUNDTRACK_TORCH_INDEX=https://pypi.org/simple

# ---------------------------------------------------------------- the node image
FROM base-${VARIANT} AS runtime
ARG WITH_ANALYSIS=0
ARG SOUNDTRACK_COMMIT=unknown
LABEL org.opencontainers.image.title="soundtrack" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.revision="${SOUNDTRACK_COMMIT}"
USER ray
RUN mkdir -p /home/ray/soundtrack
WORKDIR /home/ray/soundtrack
COPY --from=wheel --chown=ray:users /home/ray/wheels /tmp/wheels
# torch first and alone (the variant's build), then the wheel with its pinned dependencies and
# boto3 (the cluster launcher's autoscaler on the head starts EC2 nodes with it).
RUN pip install --no-cache-dir torch==2.13.0 --index-url "${SOUNDTRACK_TORCH_INDEX}" \
    && pip install --no-cache-dir /tmp/wheels/soundtrack-0.1.0-py3-none-any.whl boto3==1.44.8 \
    && if [ "${WITH_ANALYSIS}" = "1" ]; then \
         pip install --no-cache-dir "soundtrack[analysis] @ file:///tmp/wheels/soundtrack-0.1.0-py3-none-any.whl" \
         && pip install --no-cache-dir --no-deps basic-pitch==0.4.0; \
       fi \
    && rm -rf /tmp/wheels \
    && python -c "import ray, soundtrack, torch; assert ray.__version__ == '2.60.0' and torch.__version__.startswith('2.13.0'), (ray.__version__, torch.__version__)"
# The experiment and Serve configs, for jobs started without a working_dir (KubeRay RayJob /
# RayService entrypoints: `cd /home/ray/soundtrack && soundtrack train experiments/...`).
COPY --chown=ray:users experiments ./experiments
COPY --chown=ray:users serve ./serve
# Ray's token authentication on every process of the image (ray start, drivers, workers):
# soundtrack's own environment defaults never replace a value set here (soundtrack.env).
# The token itself is never in the image: cluster.yaml mounts ~/.ray/auth_token, KubeRay
# injects it from a Secret (authOptions.mode: token).
ENV RAY_AUTH_MODE=token \
    RAY_USAGE_STATS_ENABLED=0 \
    SOUNDTRACK_COMMIT=${SOUNDTRACK_COMMIT}
