"""The Ray Serve application: upload a video, get its soundtrack.

Two deployments:

* ``SoundtrackIngress`` (FastAPI): HTTP, limits, upload streaming, decoding, encoding.
  It never imports torch; it decodes the upload with :mod:`soundtrack.data.media` at the
  model's frame size and frame rate and sends the small frame array to the generator.
* ``SoundtrackGenerator``: loads one model URI (:func:`soundtrack.stages.models.load_generator`)
  and answers batched requests (``@serve.batch``; ``max_batch_size`` and
  ``batch_wait_timeout_s`` come from the application's arguments). The jobs of one batch
  whose options agree go through ONE denoising loop
  (:meth:`SoundtrackGenerator.generate_batch`), each with its own noise (seed, clip id):
  a batched soundtrack equals the request alone within
  :data:`soundtrack.pipelines.sampler.BATCH_TOLERANCE` (CPU kernels are not
  batch-invariant), and bit for bit with ``batching: false`` or a batch of one; one bad
  job gets its own error. The noise is seeded like
  :meth:`SoundtrackGenerator.generate_file` (``clip_id="clip"``), so an unbatched served
  WAV equals the one ``soundtrack generate`` writes for the same video, seed and options.

HTTP API (``/openapi.json`` documents it; ``/docs`` renders it):

* ``POST /v1/soundtrack``: ``multipart/form-data`` with a ``video`` file (an audio track
  is not needed) and the optional fields of :class:`SoundtrackOptions`; answers
  ``audio/wav`` (16-bit PCM, 16 kHz, mono) or ``video/mp4`` (the video with the new track).
* ``GET /v1/health``: liveness plus the ingress' load.
* ``GET /v1/model``: the model card.
* Jobs, for long videos (:mod:`soundtrack.serving.jobs`): ``POST /v1/jobs`` (the same form;
  202 with the job and a ``Location``; up to ``max_job_duration_s``, ``max_jobs`` per ingress
  replica), ``GET /v1/jobs/{id}`` (state, windows done / total, times), ``GET
  /v1/jobs/{id}/result`` (the WAV or MP4 once done; 409 before, 410 after ``job_ttl_s``) and
  ``DELETE /v1/jobs/{id}`` (cancel: the generation stops between windows or denoising steps).
  Their state lives under ``<storage>/serve_jobs`` (a local root or ``s3://``), so any
  replica answers for any job; the generator runs them through ``run_job``, not the batch.

Refusals (JSON body ``{"error", "message", "field", "limit"}``; the service stays up):
413 upload over ``max_upload_bytes`` (a declared ``Content-Length`` is refused before any
byte of the body is read; a chunked upload is counted while streaming); 415 not
multipart, or a file that is not a video; 422 an unknown or out-of-range option (the
``field`` names it), a video with no frames, or one longer than ``max_duration_s``; 503
with ``Retry-After`` when ``max_pending`` requests are in flight in the ingress replica or
the generator's queue (``max_queued_requests``) is full; 408 from the proxy after
``request_timeout_s``.

Entry points: :func:`build_app` (the application builder named by ``serve/config.yaml``)
and :func:`run_local` (``soundtrack serve``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from ray.serve.config import AutoscalingConfig, BackpressureConfig
from ray.serve.schema import DeploymentSchema, ServeDeploySchema

from soundtrack.serving.generator import GeneratorDeployment
from soundtrack.serving.ingress import IngressDeployment
from soundtrack.serving.limits import (
    APP_NAME,
    DEFAULT_MODEL_URI,
    GENERATOR_DEFAULTS,
    GENERATOR_NAME,
    INGRESS_DEFAULTS,
    INGRESS_NAME,
    ServeLimits,
)
from soundtrack.stages.models import resolve_model_uri, split_uri

# ----------------------------------------------------------------------------- builders


class BuildArgs(BaseModel):
    """Arguments of :func:`build_app` (a Serve config's ``applications[].args``)."""

    model_config = ConfigDict(extra="forbid")

    model_uri: str = Field(DEFAULT_MODEL_URI, min_length=1)
    storage: str = "runs"
    limits: dict[str, Any] = Field(default_factory=dict)
    max_batch_size: int = Field(4, ge=1, le=256)
    batch_wait_timeout_s: float = Field(0.05, ge=0, le=60)
    batching: bool = True
    torch_threads: int = Field(1, ge=1, le=256)
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")
    deployment_options: dict[str, dict[str, Any]] = Field(default_factory=dict)
    check_model: bool = True


def _merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else v
    if "num_replicas" in over and "autoscaling_config" not in over:
        out.pop("autoscaling_config", None)  # a fixed replica count replaces the default autoscaling
    if "autoscaling_config" in over and "num_replicas" not in over:
        out.pop("num_replicas", None)
    return out


def _absolute_uri(uri: str) -> str:
    """``file:`` URIs and plain paths made absolute (replicas may run in another directory)."""
    scheme, rest = split_uri(uri)
    if scheme == "file":
        return "file:" + str(Path(rest).expanduser().resolve())
    return uri


def build_app(args: dict | None = None):
    """The application builder of ``serve run serve/config.yaml`` (``import_path:
    soundtrack.serving.app:build_app``).

    Args:
        args: the config's ``args``: ``model_uri`` (default ``registry:best``), ``storage``
            (default ``runs``, made absolute here; it also holds the jobs of ``POST /v1/jobs``,
            under ``serve_jobs/``), ``limits`` (:class:`ServeLimits` fields),
            ``max_batch_size``, ``batch_wait_timeout_s``, ``batching`` (one denoising loop
            over a batch's jobs, default true; false: one job after another, bit-identical
            to a request alone), ``torch_threads``, ``device``
            (``auto``: CUDA where the replica has a GPU),
            ``deployment_options`` (``{"SoundtrackIngress" | "SoundtrackGenerator": options}``,
            the keys of a config file's ``deployments`` entries; :func:`run_local` fills it
            from the config file), ``check_model`` (resolve the URI now, default true, so a
            wrong URI fails the deploy at once with the message naming what exists).

    Returns:
        the bound application (ingress -> generator).

    Raises:
        ValueError: an unknown argument, a bad value, or (``check_model``) a model URI that
            names no model directory.
    """
    try:
        a = BuildArgs.model_validate(dict(args or {}))
    except ValidationError as exc:
        err = exc.errors()[0]
        raise ValueError(f"serve application argument {'.'.join(map(str, err['loc']))!r}: {err['msg']} (allowed "
                         f"arguments: {', '.join(BuildArgs.model_fields)})") from None
    limits = ServeLimits.from_dict(a.limits)
    unknown = sorted(set(a.deployment_options) - {INGRESS_NAME, GENERATOR_NAME})
    if unknown:
        raise ValueError(f"deployment_options names unknown deployments {unknown}; deployments: {INGRESS_NAME}, "
                         f"{GENERATOR_NAME}")
    storage = a.storage if "://" in a.storage else str(Path(a.storage).expanduser().resolve())
    uri = _absolute_uri(a.model_uri)
    if a.check_model:
        resolve_model_uri(uri, storage)  # ModelURIError (a ValueError) names what exists
    gen_opts = _merge(GENERATOR_DEFAULTS, a.deployment_options.get(GENERATOR_NAME, {}))
    ing_opts = _merge(INGRESS_DEFAULTS, a.deployment_options.get(INGRESS_NAME, {}))
    mor = gen_opts.get("max_ongoing_requests", 5)
    if mor < a.max_batch_size:
        raise ValueError(f"{GENERATOR_NAME}.max_ongoing_requests ({mor}) is below max_batch_size "
                         f"({a.max_batch_size}): batches could never fill; raise it or lower max_batch_size")
    try:
        gen = GeneratorDeployment.options(**gen_opts).bind(uri, storage, a.max_batch_size, a.batch_wait_timeout_s,
                                                           a.torch_threads, a.device, batching=a.batching)
        # the ingress keeps its jobs under the same storage root (<storage>/serve_jobs)
        return IngressDeployment.options(**ing_opts).bind(gen, uri, limits.to_dict(), storage)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"bad deployment options: {exc}") from None


def check_graceful_shutdown(deployment_options: Mapping[str, Mapping[str, Any]] | None,
                            request_timeout_s: float) -> dict[str, float]:
    """Each deployment's graceful shutdown time, checked against the request timeout.

    A replica being removed (scale-down, redeploy) is killed after ``graceful_shutdown_timeout_s``
    even with requests in flight: shorter than the proxy's ``request_timeout_s``, a scale-down
    could kill requests the client is still waiting for.

    Args:
        deployment_options: ``{deployment: options}`` over the code defaults.
        request_timeout_s: the proxy's request timeout (s).

    Returns:
        ``{deployment: graceful_shutdown_timeout_s}``.

    Raises:
        ValueError: a deployment's graceful shutdown is shorter than the request timeout.
    """
    out = {}
    for name, defaults in ((INGRESS_NAME, INGRESS_DEFAULTS), (GENERATOR_NAME, GENERATOR_DEFAULTS)):
        opts = _merge(defaults, (deployment_options or {}).get(name, {}))
        grace = float(opts.get("graceful_shutdown_timeout_s", 20.0))  # Serve's default
        if grace < float(request_timeout_s):
            raise ValueError(f"{name}.graceful_shutdown_timeout_s ({grace:g} s) is shorter than the request timeout "
                             f"({float(request_timeout_s):g} s): a scale-down or redeploy could kill requests in "
                             "flight; raise it to at least the request timeout")
        out[name] = grace
    return out


def load_serve_config(path: str | os.PathLike) -> dict[str, Any]:
    """Reads a Serve config file and checks it against Serve's own schema.

    Args:
        path: e.g. ``serve/config.yaml`` (one application whose import path is
            :func:`build_app`).

    Returns:
        ``{"http_options": {...}, "args": {...}, "deployment_options": {name: options},
        "env_vars": {...}, "name": str, "route_prefix": str}``.

    Raises:
        ValueError: unreadable YAML, a schema violation (Serve's message) or not exactly
            one application.
    """
    p = Path(path)
    try:
        raw = yaml.safe_load(p.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"serve config {p}: not readable YAML ({exc})") from exc
    try:
        ServeDeploySchema.model_validate(raw)
    except Exception as exc:
        raise ValueError(f"serve config {p} does not match Ray Serve's schema: {exc}") from exc
    apps = raw.get("applications") or []
    if len(apps) != 1:
        raise ValueError(f"serve config {p}: expected one application, found {len(apps)}")
    app = apps[0]
    # Serve's schema leaves deployment entries loose (unknown keys, autoscaling values);
    # check them with Serve's own models so a typo fails here, naming the key.

    deployments = {}
    for d in app.get("deployments") or []:
        name = d.get("name")
        unknown = sorted(set(d) - set(DeploymentSchema.model_fields))
        if unknown:
            raise ValueError(f"serve config {p}: deployment {name!r} has unknown keys {unknown}; allowed: "
                             f"{', '.join(sorted(DeploymentSchema.model_fields))}")
        for key, model in (("autoscaling_config", AutoscalingConfig), ("backpressure_config", BackpressureConfig)):
            if d.get(key) is not None:
                try:
                    model.model_validate(d[key])
                except Exception as exc:
                    raise ValueError(f"serve config {p}: deployment {name!r} {key} does not match Ray Serve's "
                                     f"schema: {exc}") from exc
        deployments[name] = {k: v for k, v in d.items() if k != "name"}
    return {
        "http_options": dict(raw.get("http_options") or {}),
        "args": dict(app.get("args") or {}),
        "deployment_options": deployments,
        "env_vars": dict((app.get("runtime_env") or {}).get("env_vars") or {}),
        "name": app.get("name", APP_NAME),
        "route_prefix": app.get("route_prefix", "/"),
        "proxy_location": raw.get("proxy_location"),
    }




