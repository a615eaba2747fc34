"""The deployment artefacts, offline: the Dockerfile's pins and the KubeRay manifests' schema.

No image is built and no cluster is contacted. The Dockerfile is parsed (pinned Ray base
images of the installed Ray version, every ``pip install`` pinned, a non-root user, token
authentication on). ``deploy/kuberay/*.yaml`` are validated against the openAPIV3Schema of
KubeRay's own CRDs (``tests/data/kuberay/``, v1.7.0), with objects closed the way
``kubectl apply``'s strict field validation closes them, and checked against the rest of the
repository (the images of ``cluster.yaml``, the Serve application of
``serve/config.cluster.yaml``, the experiment the RayJob trains).
"""

from __future__ import annotations

import copy
import os
import re
import shlex
import tomllib
from pathlib import Path

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CRDS = REPO / "tests" / "data" / "kuberay"
STORAGE = "s3://soundtrack-runs/runs"
MANIFESTS = {"rayjob-train.yaml": "rayjobs", "rayservice.yaml": "rayservices"}


def _ray_version() -> str:
    import ray

    return ray.__version__


def _pins() -> dict[str, str]:
    """``name -> version`` of pyproject.toml's exact (``==``) dependency pins."""
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    out = {}
    for d in deps:
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)(\[[^\]]*\])?==([^;\s]+)", d.strip())
        if m:
            out[m.group(1).lower()] = m.group(3)
    return out


# ----------------------------------------------------------------------------- Dockerfile


def _instructions(path: Path) -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` of a Dockerfile, continuation lines joined, comments dropped."""
    out, buf = [], ""
    for line in path.read_text().splitlines():
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    return _instructions(REPO / "Dockerfile")


#: Shell tokens that end a simple command.
_SEPARATORS = {"&&", "||", ";", "|", "(", ")", "then", "else", "fi", "do", "done"}


def _pip_installs(command: str) -> list[list[str]]:
    """The argument lists of every ``pip install`` in a shell command."""
    lex = shlex.shlex(command, posix=True, punctuation_chars=True)
    lex.whitespace_split = True
    segments: list[list[str]] = [[]]
    for token in lex:
        if token in _SEPARATORS:
            segments.append([])
        else:
            segments[-1].append(token)
    out = []
    for words in segments:
        for i in range(len(words) - 1):
            if words[i].endswith("pip") and words[i + 1] == "install":
                out.append(words[i + 2:])
                break
    return out


#: pip options followed by a value (the value is not a requirement).
_VALUED = {"--index-url", "-i", "--extra-index-url", "-c", "--constraint", "-r", "--requirement", "--target",
           "-t", "--find-links", "-f", "--platform", "--python-version"}


def _unpinned(args: list[str]) -> list[str]:
    """The requirements of one ``pip install`` that are neither ``name==version`` nor a local wheel."""
    bad, skip = [], False
    for a in args:
        if skip:
            skip = False
            continue
        if a in _VALUED:
            skip = True
            continue
        if a.startswith("-"):
            if a in ("-r", "--requirement", "-e", "--editable"):
                bad.append(a)
            continue
        if re.fullmatch(r"[A-Za-z0-9_.-]+(\[[^\]]*\])?==[0-9][^,<>=!~*\s]*", a):
            continue
        if re.fullmatch(r"(\S+ @ )?(file://)?/\S+\.whl", a):
            continue
        bad.append(a)
    return bad


def test_pip_pin_checker_tells_pinned_from_unpinned():
    cmd = ('pip install --no-cache-dir torch==2.13.0 --index-url "https://x/cpu" && pip install /tmp/w/a-1-py3-none-any.whl '
           'boto3==1.44.8 && pip install "s[analysis] @ file:///tmp/w/s-0.1.0-py3-none-any.whl" && pip install numpy '
           "&& pip install 'requests>=2' && pip install -e . && pip install torch==latest")
    assert [_unpinned(a) for a in _pip_installs(cmd)] == [[], [], [], ["numpy"], ["requests>=2"], ["-e", "."],
                                                          ["torch==latest"]]


def test_dockerfile_from_pinned_ray_images_of_the_installed_version(dockerfile):
    ver = _ray_version()
    args = {a.split("=", 1)[0]: a.split("=", 1)[1] for i, a in dockerfile if i == "ARG" and "=" in a}
    stages: dict[str, str] = {}
    for instr, rest in dockerfile:
        if instr != "FROM":
            continue
        m = re.fullmatch(r"(\S+)(?:\s+AS\s+(\S+))?", rest, flags=re.I)
        image, name = m.group(1), m.group(2)
        if "$" in image:  # FROM base-${VARIANT}: every value must name an earlier stage
            pattern = re.escape(image).replace(r"\$\{VARIANT\}", "(.+)")
            variants = [m.group(1) for s in stages if (m := re.fullmatch(pattern, s))]
            assert sorted(variants) == ["cpu", "gpu"] and args["VARIANT"] in variants, (image, list(stages))
            stages[name] = image
            continue
        if image in stages:
            stages[name] = image
            continue
        repo, _, tag = image.partition(":")
        assert repo == "rayproject/ray", image
        assert tag and "latest" not in tag and "nightly" not in tag, image
        assert tag == f"{ver}-py311" or re.fullmatch(rf"{re.escape(ver)}-py311-cu\d{{3}}", tag), image
        stages[name] = image
    assert stages["base-cpu"] == f"rayproject/ray:{ver}-py311"
    assert stages["base-gpu"].startswith(f"rayproject/ray:{ver}-py311-cu")


def test_dockerfile_pins_every_pip_install_and_the_projects_torch(dockerfile):
    runs = [rest for instr, rest in dockerfile if instr == "RUN"]
    installs = [a for r in runs for a in _pip_installs(r)]
    assert installs, "no pip install found"
    for args in installs:
        assert _unpinned(args) == [], args
    words = [w for args in installs for w in args]
    torch = f"torch=={_pins()['torch']}"
    assert torch in words and not any(w.startswith(("torchvision", "torchaudio")) for w in words)
    assert "https://download.pytorch.org/whl/cpu" in (REPO / "Dockerfile").read_text()  # the CPU variant's build
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert f"/tmp/wheels/soundtrack-{version}-py3-none-any.whl" in words
    assert any("soundtrack[analysis]" in w for w in words), "the analysis extra is an option of the image"


def test_dockerfile_runs_as_a_non_root_user_with_token_auth(dockerfile):
    users = [rest for instr, rest in dockerfile if instr == "USER"]
    assert users and users[-1] not in ("root", "0")
    env = " ".join(rest for instr, rest in dockerfile if instr == "ENV")
    assert "RAY_AUTH_MODE=token" in env and "disabled" not in env


def test_dockerfile_copies_files_that_exist_and_the_context_keeps_secrets_out(dockerfile):
    ignored = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    for instr, rest in dockerfile:
        if instr != "COPY" or "--from=" in rest:
            continue
        srcs = [w for w in shlex.split(rest) if not w.startswith("--")][:-1]
        for src in srcs:
            assert (REPO / src).exists(), src
            assert src not in ignored, f"{src} is copied but .dockerignore excludes it"
    for must in (".git", ".venv", "runs", ".cache", "**/auth_token"):
        assert must in ignored, must


# ----------------------------------------------------------------------------- KubeRay


def _closed(schema):
    """A copy of an OpenAPI schema whose objects refuse unknown fields, like ``kubectl apply``'s
    strict validation (objects with ``properties`` and no ``additionalProperties`` or
    ``x-kubernetes-preserve-unknown-fields``)."""
    if isinstance(schema, list):
        return [_closed(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _closed(v) for k, v in schema.items()}
    if "properties" in out and "additionalProperties" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


@pytest.fixture(scope="module")
def crds() -> dict[str, dict]:
    out = {}
    for name in set(MANIFESTS.values()):
        crd = yaml.load((CRDS / f"ray.io_{name}.yaml").read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        out[name] = crd
    return out


def _validator(crd: dict) -> jsonschema.Validator:
    (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    assert v1["served"] and v1["storage"]
    return jsonschema.Draft7Validator(_closed(v1["schema"]["openAPIV3Schema"]))


@pytest.fixture(scope="module")
def validators(crds) -> dict[str, jsonschema.Validator]:
    return {name: _validator(crd) for name, crd in crds.items()}


def _manifest(name: str) -> dict:
    return yaml.safe_load((REPO / "deploy" / "kuberay" / name).read_text())


def _cluster_spec(doc: dict) -> dict:
    return doc["spec"]["rayClusterSpec" if doc["kind"] == "RayJob" else "rayClusterConfig"]


def _pods(doc: dict) -> list[dict]:
    spec = _cluster_spec(doc)
    return [spec["headGroupSpec"]["template"]] + [g["template"] for g in spec["workerGroupSpecs"]]


def test_crd_test_data_names_its_source_and_licence():
    for name in set(MANIFESTS.values()):
        head = (CRDS / f"ray.io_{name}.yaml").read_text()[:1000]
        assert "https://github.com/ray-project/kuberay/blob/v1.7.0/helm-chart/kuberay-operator/crds/" in head
        assert "Apache License 2.0" in head and "Release tag: v1.7.0" in head


@pytest.mark.parametrize("name", sorted(MANIFESTS))
def test_manifest_matches_the_kuberay_crd(name, crds, validators):
    doc = _manifest(name)
    crd = crds[MANIFESTS[name]]
    assert doc["apiVersion"] == f"{crd['spec']['group']}/v1" and doc["kind"] == crd["spec"]["names"]["kind"]
    errors = sorted(validators[MANIFESTS[name]].iter_errors(doc), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in errors)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d["spec"]["rayClusterSpec"]["headGroupSpec"].update(serviceTyp="ClusterIP"),
         r"'serviceTyp' was unexpected"),
        (lambda d: d["spec"]["rayClusterSpec"]["workerGroupSpecs"][0].pop("maxReplicas"),
         r"'maxReplicas' is a required property"),
        (lambda d: d["spec"]["rayClusterSpec"]["authOptions"].update(mode="tokens"), r"'tokens' is not one of"),
        (lambda d: d["spec"]["rayClusterSpec"]["headGroupSpec"]["rayStartParams"].update({"num-cpus": 4}),
         r"4 is not of type 'string'"),
        (lambda d: d["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
         .update(imagePullPolicy=["Always"]), r"\['Always'\] is not of type 'string'"),
    ],
    ids=["unknown-key", "missing-required", "bad-enum", "wrong-type", "pod-template-type"],
)
def test_broken_manifests_are_rejected_by_the_crd_schema(validators, edit, message):
    doc = _manifest("rayjob-train.yaml")
    edit(doc)
    errors = [e.message for e in validators["rayjobs"].iter_errors(doc)]
    assert any(re.search(message, m) for m in errors), errors


@pytest.mark.parametrize("name", sorted(MANIFESTS))
def test_manifests_use_the_cluster_images_token_auth_and_no_public_service(name):
    doc = _manifest(name)
    spec = _cluster_spec(doc)
    assert spec["rayVersion"] == _ray_version()
    assert spec["authOptions"]["mode"] == "token"
    assert "LoadBalancer" not in yaml.safe_dump(doc)  # no service of that type, anywhere
    assert spec["headGroupSpec"]["serviceType"] == "ClusterIP"
    assert "serveService" not in doc["spec"]  # KubeRay's default serve service: ClusterIP
    cluster = yaml.safe_load((REPO / "cluster.yaml").read_text())
    cpu_image = cluster["docker"]["image"]
    gpu_image = cluster["available_node_types"]["gpu_worker"]["docker"]["worker_image"]
    assert spec["headGroupSpec"]["template"]["spec"]["containers"][0]["image"] == cpu_image
    gpu_groups = [g for g in spec["workerGroupSpecs"] if g["groupName"] == "gpu"]
    assert len(gpu_groups) == 1
    for pod in _pods(doc):
        pod_spec = pod["spec"]
        assert pod_spec["securityContext"]["runAsNonRoot"] is True and pod_spec["securityContext"]["runAsUser"] != 0
        for c in pod_spec["containers"]:
            assert c["image"] in (cpu_image, gpu_image)
            assert c["securityContext"]["allowPrivilegeEscalation"] is False
            env = {e["name"]: e.get("value") for e in c.get("env", [])}
            assert env.get("RAY_AUTH_MODE") == "token"
    (gpu,) = gpu_groups
    gpu_container = gpu["template"]["spec"]["containers"][0]
    assert gpu_container["image"] == gpu_image
    assert gpu_container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert 0 <= gpu["minReplicas"] <= gpu["maxReplicas"]


def test_rayjob_trains_an_experiment_that_exists_into_the_object_store():
    from soundtrack.config import load_config

    doc = _manifest("rayjob-train.yaml")
    words = shlex.split(doc["spec"]["entrypoint"])
    assert words[:2] == ["cd", "/home/ray/soundtrack"] and words[2] == "&&"
    stage, path = words[4], words[5]
    assert words[3] == "soundtrack" and stage == "train"
    assert words[words.index("--storage") + 1] == STORAGE
    cfg = load_config(REPO / path)  # the image copies experiments/ to /home/ray/soundtrack
    (gpu,) = [g for g in doc["spec"]["rayClusterSpec"]["workerGroupSpecs"] if g["groupName"] == "gpu"]
    assert cfg.profile == "paper" and cfg.train.num_workers <= gpu["maxReplicas"]


def test_rayservice_serves_the_cluster_serve_config():
    from ray.serve.schema import ServeDeploySchema

    from soundtrack.serving.limits import GENERATOR_NAME, ServeLimits

    doc = _manifest("rayservice.yaml")
    serve = yaml.safe_load(doc["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(serve)
    # The same application as serve/config.cluster.yaml, which tests/test_cluster_config.py checks
    # with soundtrack.serving.app.load_serve_config; only the bind address differs (the pod network).
    cluster_serve = yaml.safe_load((REPO / "serve" / "config.cluster.yaml").read_text())
    assert serve["applications"] == cluster_serve["applications"]
    assert serve["http_options"] == {**cluster_serve["http_options"], "host": "0.0.0.0"}
    (app,) = serve["applications"]
    args = app["args"]
    ServeLimits(**args["limits"])
    assert args["storage"] == STORAGE and args["model_uri"] == "registry:best"
    gen = {d["name"]: d for d in app["deployments"]}[GENERATOR_NAME]
    (gpu,) = [g for g in doc["spec"]["rayClusterConfig"]["workerGroupSpecs"] if g["groupName"] == "gpu"]
    assert gen["ray_actor_options"]["num_gpus"] == 1
    assert gen["autoscaling_config"]["max_replicas"] == gpu["maxReplicas"]
    assert gen["autoscaling_config"]["min_replicas"] == gpu["minReplicas"]
    limit = str(args["limits"]["max_upload_bytes"])
    for pod in _pods(doc):
        env = {e["name"]: e.get("value") for c in pod["spec"]["containers"] for e in c.get("env", [])}
        assert env["RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"] == "soundtrack.serving.proxy:proxy_middlewares"
        assert env["SOUNDTRACK_MAX_UPLOAD_BYTES"] == limit


def test_serviceaccount_holds_no_credentials():
    doc = _manifest("serviceaccount.yaml")
    assert doc["kind"] == "ServiceAccount" and doc["metadata"]["name"] == "soundtrack-ray"
    for name in MANIFESTS:
        for pod in _pods(_manifest(name)):
            assert pod["spec"]["serviceAccountName"] == "soundtrack-ray"
    text = (REPO / "deploy" / "kuberay" / "serviceaccount.yaml").read_text()
    assert not re.search(r"AKIA[0-9A-Z]{16}|aws_secret_access_key", text, flags=re.I)


def test_closed_schema_keeps_open_maps_open():
    schema = {"type": "object", "properties": {"a": {"type": "object", "additionalProperties": {"type": "string"}},
                                               "b": {"type": "object", "x-kubernetes-preserve-unknown-fields": True,
                                                     "properties": {"c": {"type": "string"}}}}}
    v = jsonschema.Draft7Validator(_closed(copy.deepcopy(schema)))
    assert v.is_valid({"a": {"any": "x"}, "b": {"c": "y", "d": 1}})
    assert not v.is_valid({"a": {}, "z": 1})


def test_the_images_token_mode_survives_soundtracks_environment_defaults(monkeypatch):
    """soundtrack's own default (``RAY_AUTH_MODE=disabled`` for a loopback-only local Ray) never
    replaces the image's ``token`` in a driver or worker on the cluster."""
    from soundtrack.env import apply_env_defaults

    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    apply_env_defaults()
    apply_env_defaults({"RAY_AUTH_MODE": "disabled"})
    assert os.environ["RAY_AUTH_MODE"] == "token"
