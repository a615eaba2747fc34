"""The Ray Serve application: upload a video, get its soundtrack.

Two deployments:

* ``SoundtrackIngress`` (FastAPI): HTTP, limits, upload streaming, decoding, encoding.
  It never imports torch; it decodes the upload with :mod:`soundtrack.data.media` at the
  model's frame size and frame rate and sends the small frame array to the generator.
* ``SoundtrackGenerator``: loads one model URI (:func:`soundtrack.stages.models.load_generator`)
  and answers batched requests (``@serve.batch``; ``max_batch_size`` and
  ``batch_wait_timeout_s`` come from the application's arguments). The sampler denoises
  each clip on its own (``batch_invariant``), so a clip's soundtrack depends only on
  (model, clip, options, seed), never on the other requests of its batch; the noise is
  seeded like :meth:`SoundtrackGenerator.generate_file` (``clip_id="clip"``), so the served
  WAV equals the one ``soundtrack generate`` writes for the same video, seed and options.

HTTP API (``/openapi.json`` documents it; ``/docs`` renders it):

* ``POST /v1/soundtrack``: ``multipart/form-data`` with a ``video`` file (an audio track
  is not needed) and the optional fields of :class:`SoundtrackOptions`; answers
  ``audio/wav`` (16-bit PCM, 16 kHz, mono) or ``video/mp4`` (the video with the new track).
* ``GET /v1/health``: liveness plus the ingress' load.
* ``GET /v1/model``: the model card.

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

import asyncio
import dataclasses
import io
import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Mapping

import numpy as np
from fastapi import Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from ray import serve

from soundtrack.serving.upload import UploadError, multipart_boundary, read_multipart

APP_NAME = "soundtrack"
INGRESS_NAME = "SoundtrackIngress"
GENERATOR_NAME = "SoundtrackGenerator"
DEFAULT_MODEL_URI = "registry:best"
#: The config file of the repository (``serve run serve/config.yaml``).
DEFAULT_CONFIG = Path(__file__).resolve().parents[3] / "serve" / "config.yaml"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
DEFAULT_REQUEST_TIMEOUT_S = 120.0

#: Form field -> generator condition of the per-condition guidance weights.
WEIGHT_FIELDS = {"weight_video": "video", "weight_music": "music", "weight_sfx": "sfx", "weight_text": "text"}
#: The form field of the uploaded video.
VIDEO_FIELD = "video"
#: Containers PyAV opens that hold a still image, not a video.
_IMAGE_CONTAINERS = ("image2", "png_pipe", "jpeg_pipe", "bmp_pipe", "webp_pipe", "tiff_pipe", "gif")

# Code defaults of the deployments (``serve/config.yaml`` and ``deployment_options`` override
# them). Sized for a 2-core machine: fractional CPUs so that two generator replicas and the
# ingress fit; torch runs one thread per generator replica.
INGRESS_DEFAULTS: dict[str, Any] = {
    "max_ongoing_requests": 32,
    "max_queued_requests": 64,
    "backpressure_config": {"status_code": 503, "retry_after_s": 2},
    "ray_actor_options": {"num_cpus": 0.1},
}
GENERATOR_DEFAULTS: dict[str, Any] = {
    "max_ongoing_requests": 4,
    "max_queued_requests": 8,
    "backpressure_config": {"status_code": 503, "retry_after_s": 2},
    "autoscaling_config": {
        "min_replicas": 1,
        "max_replicas": 2,
        "target_ongoing_requests": 1,
        "upscale_delay_s": 2,
        "downscale_delay_s": 10,
        "look_back_period_s": 12,
    },
    "ray_actor_options": {"num_cpus": 0.5},
    "health_check_timeout_s": 60,
}
#: Environment of every Serve process started by :func:`run_local`: autoscaling metrics
#: pushed every second instead of every 10 s (the replica count follows load within seconds).
AUTOSCALING_ENV = {
    "RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "1",
    "RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "1",
}


# ----------------------------------------------------------------------------- limits


@dataclass(frozen=True)
class ServeLimits:
    """What the service accepts (each limit answered with its own status code).

    Attributes:
        max_upload_bytes: request body limit (413), checked on ``Content-Length`` before
            reading and counted while streaming.
        max_duration_s: longest video (422).
        max_steps: most sampler steps a request may ask for (422 naming ``steps``).
        max_pending: requests in flight in one ingress replica (upload to answer); one more
            is refused with 503 and ``Retry-After`` before its body is read.
        retry_after_s: the ``Retry-After`` value of 503 answers (s).
        max_prompt_chars: longest text prompt (422 naming ``prompt``).
        max_field_bytes: longest non-file form field (422 naming it).
        max_mux_bytes: decoded size (frames x width x height x 3 at the source rate) above
            which ``output=mp4`` is refused (422 naming ``output``); the WAV is always possible.
    """

    max_upload_bytes: int = 64 * 2**20
    max_duration_s: float = 60.0
    max_steps: int = 100
    max_pending: int = 8
    retry_after_s: float = 2.0
    max_prompt_chars: int = 500
    max_field_bytes: int = 4096
    max_mux_bytes: int = 2**30

    def __post_init__(self):
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise ValueError(f"ServeLimits.{f.name} must be a positive number, got {v!r}")
        for name in ("max_upload_bytes", "max_steps", "max_pending", "max_prompt_chars", "max_field_bytes",
                     "max_mux_bytes"):
            if int(getattr(self, name)) != getattr(self, name):
                raise ValueError(f"ServeLimits.{name} must be an integer, got {getattr(self, name)!r}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "ServeLimits":
        """Limits from a mapping (a config file's ``limits``); unknown keys are errors.

        Args:
            d: field -> value (missing fields keep their defaults); ``None`` for the defaults.

        Raises:
            ValueError: an unknown key (the message lists the allowed ones) or a bad value.
        """
        d = dict(d or {})
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(d) - set(names))
        if unknown:
            raise ValueError(f"unknown serve limit(s) {unknown}; allowed: {', '.join(names)}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        """The limits as a plain dict (JSON-ready)."""
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------- options


class SoundtrackOptions(BaseModel):
    """The form fields of ``POST /v1/soundtrack`` besides the ``video`` file.

    Unset fields take the model's defaults. Unknown fields are refused (422 naming them).
    """

    model_config = ConfigDict(extra="forbid")

    cfg_scale: float | None = Field(None, ge=0, le=30, allow_inf_nan=False,
                                    description="classifier-free guidance scale (1: no extrapolation; "
                                                "default: the model's)")
    weight_video: float | None = Field(None, ge=0, le=10, allow_inf_nan=False,
                                       description="guidance weight of the video-feature condition")
    weight_music: float | None = Field(None, ge=0, le=10, allow_inf_nan=False,
                                       description="guidance weight of the video's music-space condition")
    weight_sfx: float | None = Field(None, ge=0, le=10, allow_inf_nan=False,
                                     description="guidance weight of the video's sound-effect-space condition")
    weight_text: float | None = Field(None, ge=0, le=10, allow_inf_nan=False,
                                      description="guidance weight of the text prompt (models with text only)")
    steps: int | None = Field(None, ge=1, description="sampler steps (default: the model's; at most the "
                                                      "service's max_steps)")
    seed: int = Field(0, ge=0, le=2**31 - 1, description="noise seed: same video, options and seed give the "
                                                          "same soundtrack")
    prompt: str | None = Field(None, description="text prompt (models trained with text only)")
    output: Literal["wav", "mp4"] = Field("wav", description="'wav': the soundtrack; 'mp4': the video with it")

    def weights(self) -> dict[str, float] | None:
        """The per-condition guidance weights that were set (``None`` when none was)."""
        w = {cond: getattr(self, name) for name, cond in WEIGHT_FIELDS.items() if getattr(self, name) is not None}
        return w or None

    def overrides(self) -> dict[str, Any]:
        """The generator's per-call overrides (see ``SoundtrackGenerator.generate``)."""
        out: dict[str, Any] = {}
        if self.cfg_scale is not None:
            out["guidance_scale"] = float(self.cfg_scale)
        if self.steps is not None:
            out["num_steps"] = int(self.steps)
        w = self.weights()
        if w is not None:
            out["weights"] = w
        return out


def parse_options(fields: Mapping[str, str], limits: ServeLimits, model: Mapping[str, Any]) -> SoundtrackOptions:
    """Validates the text fields of a request against the schema, the limits and the model.

    Args:
        fields: form field -> text.
        limits: the service's limits.
        model: the generator's description (``conditions``), from :meth:`GeneratorDeployment.info`.

    Returns:
        the options.

    Raises:
        UploadError: 422 naming the first field at fault.
    """
    data = {k: v for k, v in fields.items() if not (k == "prompt" and v.strip() == "")}
    try:
        opts = SoundtrackOptions.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        name = str(err["loc"][0]) if err.get("loc") else None
        msg = f"form field {name!r}: {err['msg']}" if name else err["msg"]
        if err.get("type") == "extra_forbidden":
            raise UploadError(422, "unknown_field", f"unknown form field {name!r}; allowed: {VIDEO_FIELD}, "
                              f"{', '.join(SoundtrackOptions.model_fields)}", field=name) from None
        raise UploadError(422, "invalid_option", f"{msg} (got {err.get('input')!r})", field=name) from None
    if opts.steps is not None and opts.steps > limits.max_steps:
        raise UploadError(422, "invalid_option", f"form field 'steps': at most {limits.max_steps} steps are "
                          f"allowed, got {opts.steps}", field="steps", limit=limits.max_steps)
    if opts.prompt is not None and len(opts.prompt) > limits.max_prompt_chars:
        raise UploadError(422, "invalid_option", f"form field 'prompt' is longer than {limits.max_prompt_chars} "
                          "characters", field="prompt", limit=limits.max_prompt_chars)
    conds = tuple(model.get("conditions", ()))
    for name, cond in WEIGHT_FIELDS.items():
        if getattr(opts, name) is not None and cond not in conds:
            raise UploadError(422, "invalid_option", f"form field {name!r}: this model has no {cond!r} condition "
                              f"(its conditions: {', '.join(conds)})", field=name)
    if opts.prompt is not None and "text" not in conds:
        raise UploadError(422, "invalid_option", "form field 'prompt': this model was trained without text "
                          f"conditioning (its conditions: {', '.join(conds)}); drop the prompt", field="prompt")
    w = opts.weights()
    if w is not None and sum(w.values()) <= 0:
        name = next(iter(n for n in WEIGHT_FIELDS if getattr(opts, n) is not None))
        raise UploadError(422, "invalid_option", "the guidance weights that are set are all 0; give at least one "
                          "a positive weight", field=name)
    return opts


def options_form_schema(limits: ServeLimits) -> dict[str, Any]:
    """The OpenAPI schema of the ``multipart/form-data`` request body (from :class:`SoundtrackOptions`).

    Args:
        limits: the service's limits (``steps`` gets ``maximum: max_steps``).
    """
    schema = SoundtrackOptions.model_json_schema()
    props = {VIDEO_FIELD: {"type": "string", "format": "binary",
                           "description": f"the video (mp4, mkv, webm, mov, ...; at most {limits.max_duration_s:g} s "
                                          f"and {limits.max_upload_bytes} bytes; no audio track needed)"}}
    for name, prop in schema["properties"].items():
        prop = dict(prop)
        prop.pop("title", None)
        alts = [p for p in prop.pop("anyOf", []) if p.get("type") != "null"]
        if len(alts) == 1:  # an optional form field is simply left out: no null alternative
            prop.update(alts[0])
        if prop.get("default", 0) is None:
            prop.pop("default")
        if name == "steps":
            prop["maximum"] = limits.max_steps
        if name == "prompt":
            prop["maxLength"] = limits.max_prompt_chars
        props[name] = prop
    return {"type": "object", "required": [VIDEO_FIELD], "properties": props, "additionalProperties": False}


# ----------------------------------------------------------------------------- generator


@dataclass(frozen=True)
class GenerationJob:
    """One request to the generator deployment.

    Attributes:
        frames: uint8 (T, H, W, 3) RGB at the model's frame rate.
        seed: noise seed.
        caption: text prompt or ``None``.
        overrides: sampler overrides (guidance_scale, weights, num_steps).
        clip_id: seeds the noise with ``seed`` (the default equals ``generate_file``'s).
    """

    frames: np.ndarray
    seed: int = 0
    caption: str | None = None
    overrides: dict = dataclasses.field(default_factory=dict)
    clip_id: str = "clip"


@dataclass(frozen=True)
class GenerationOutput:
    """The generator's answer to one :class:`GenerationJob`.

    Attributes:
        wav: float32 mono soundtrack (``None`` on error).
        sr: its sample rate (Hz).
        error: the generator's message when the job's options or frames were refused.
        batch_size: how many jobs ran in the same ``@serve.batch`` call.
        seconds: generation time of this job (s).
    """

    wav: np.ndarray | None
    sr: int
    error: str | None = None
    batch_size: int = 1
    seconds: float = 0.0


def _entry_card(model_dir: Path) -> dict | None:
    """The card of the run or registry entry holding ``model_dir`` (``<entry>/model``), if any."""
    import json

    if model_dir.name != "model":
        return None
    for name in ("card.json", "run.json"):
        p = model_dir.parent / name
        if p.is_file():
            try:
                return json.loads(p.read_text())
            except (OSError, ValueError):
                return None
    return None


@serve.deployment(name=GENERATOR_NAME)
class GeneratorDeployment:
    """Holds one :class:`~soundtrack.pipelines.generator.SoundtrackGenerator` and runs batched requests.

    Args:
        model_uri: ``registry:<name>``, ``train:<run>``, ``file:<dir>`` or a directory.
        storage: storage root the URI is resolved against.
        max_batch_size: most jobs per ``@serve.batch`` call.
        batch_wait_timeout_s: how long a batch waits to fill (s).
        torch_threads: torch intra-op threads in this replica.
        device: ``auto`` (CUDA when the replica has a GPU, else CPU), ``cpu`` or ``cuda[:n]``.
    """

    def __init__(self, model_uri: str, storage: str, max_batch_size: int = 4, batch_wait_timeout_s: float = 0.05,
                 torch_threads: int = 1, device: str = "auto"):
        import torch

        from soundtrack.stages.models import load_generator, resolve_model_uri

        torch.set_num_threads(int(torch_threads))
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = device
        self.model_uri = model_uri
        self.model_dir = resolve_model_uri(model_uri, storage)
        self.gen = load_generator(model_uri, storage, device=device)
        self.generate.set_max_batch_size(int(max_batch_size))
        self.generate.set_batch_wait_timeout_s(float(batch_wait_timeout_s))
        self.max_batch_size = int(max_batch_size)
        self.batch_wait_timeout_s = float(batch_wait_timeout_s)

    def info(self) -> dict[str, Any]:
        """The model card and the facts the ingress needs (frame size and rate, conditions)."""
        g = self.gen
        doc = g.to_dict()
        return {
            "uri": self.model_uri,
            "directory": str(self.model_dir),
            "device": self.device,
            "profile": g.profile,
            "fps": g.fps,
            "sr": g.sr,
            "clip_s": g.clip_s,
            "frame_size": g.frame_size,
            "conditions": list(g.conditions),
            "sampler": doc["sampler"],
            "card": dict(g.card),
            "entry_card": _entry_card(Path(self.model_dir)),
            "batching": {"max_batch_size": self.max_batch_size, "batch_wait_timeout_s": self.batch_wait_timeout_s},
        }

    def _run(self, jobs: list[GenerationJob]) -> list[GenerationOutput]:
        from soundtrack.pipelines.generator import GeneratorError

        outs = []
        for job in jobs:
            t = time.perf_counter()
            try:
                frames = np.array(job.frames)  # a writable copy (Ray hands read-only arrays over)
                wav = self.gen.generate(frames, seed=job.seed, clip_id=job.clip_id, caption=job.caption,
                                        **job.overrides)
                outs.append(GenerationOutput(wav, self.gen.sr, None, len(jobs), time.perf_counter() - t))
            except GeneratorError as exc:  # a bad option or input: the caller answers 422
                outs.append(GenerationOutput(None, self.gen.sr, str(exc), len(jobs), time.perf_counter() - t))
        return outs

    @serve.batch(max_batch_size=4, batch_wait_timeout_s=0.05)
    async def generate(self, jobs: list[GenerationJob]) -> list[GenerationOutput]:
        """Soundtracks for a batch of jobs (each clip sampled on its own: outputs do not depend on the batch).

        The work runs in a thread so that the replica's event loop keeps answering health
        checks and keeps collecting the next batch.

        Args:
            jobs: the batch (``@serve.batch`` collects single calls into this list).
        """
        return await asyncio.to_thread(self._run, jobs)


# ----------------------------------------------------------------------------- ingress


def _error(status: int, code: str, message: str, field: str | None = None, limit=None,
           headers: dict | None = None):
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": code, "message": message, "field": field, "limit": limit}, status_code=status,
                        headers=headers)


def _decode(path: Path, info: Mapping[str, Any], limits: ServeLimits, want_mp4: bool) -> np.ndarray:
    """Probes and decodes an uploaded file at the model's frame size and rate (raises UploadError)."""
    from soundtrack.data import media

    try:
        probe = media.probe(path, check_vfr=False)
    except media.MediaError as exc:
        what = "an empty file" if exc.reason == "empty" else "not a video container"
        raise UploadError(415, "not_a_video", f"the upload is {what}; send a video file (mp4, mkv, webm, mov)",
                          field=VIDEO_FIELD) from None
    if not probe.has_video:
        raise UploadError(415, "not_a_video", "the upload has no video stream (an audio-only file?); send a video",
                          field=VIDEO_FIELD)
    if probe.container in _IMAGE_CONTAINERS or any(probe.container.startswith(c + ",") for c in _IMAGE_CONTAINERS):
        raise UploadError(415, "not_a_video", f"the upload is a still image ({probe.container}), not a video",
                          field=VIDEO_FIELD)
    if probe.duration_s > limits.max_duration_s:
        raise UploadError(422, "video_too_long", f"the video lasts {probe.duration_s:.2f} s, longer than the limit "
                          f"of {limits.max_duration_s:g} s; cut it", field=VIDEO_FIELD, limit=limits.max_duration_s)
    if want_mp4:
        fps = probe.fps if probe.fps > 0 else float(info["fps"])
        decoded = math.ceil(probe.duration_s * fps) * probe.width * probe.height * 3
        if decoded > limits.max_mux_bytes:
            raise UploadError(422, "video_too_large_to_mux", f"re-encoding this video would decode {decoded} bytes "
                              f"of frames, over the limit of {limits.max_mux_bytes}; ask for output=wav",
                              field="output", limit=limits.max_mux_bytes)
    size = int(info["frame_size"])
    try:
        frames = media.read_frames(path, fps=float(info["fps"]), size=(size, size))
    except media.MediaError as exc:  # the message names the server's temp file: keep only the reason
        raise UploadError(422, "no_frames", f"the video stream has no decodable frames ({exc.reason}); send a "
                          "video with frames", field=VIDEO_FIELD) from None
    if len(frames) == 0:
        raise UploadError(422, "no_frames", "the video has no frames", field=VIDEO_FIELD)
    seconds = len(frames) / float(info["fps"])
    if seconds > limits.max_duration_s + 1.0 / float(info["fps"]):
        raise UploadError(422, "video_too_long", f"the video lasts {seconds:.2f} s, longer than the limit of "
                          f"{limits.max_duration_s:g} s; cut it", field=VIDEO_FIELD, limit=limits.max_duration_s)
    return frames


def _wav_bytes(wav: np.ndarray, sr: int) -> bytes:
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, np.clip(np.asarray(wav, np.float32), -1, 1), int(sr), format="WAV", subtype="PCM_16")
    return buf.getvalue()


def _mp4_bytes(video: Path, wav: np.ndarray, sr: int, out: Path) -> bytes:
    from soundtrack.data import media

    media.mux_audio(video, wav, sr, out)
    return out.read_bytes()


class SoundtrackService:
    """The ingress' request handling, independent of FastAPI routing.

    Args:
        generator: handle of the generator deployment.
        model_uri: the model URI served (reported by the health endpoint).
        limits: the service's limits.
    """

    def __init__(self, generator, model_uri: str, limits: ServeLimits):
        self.generator = generator
        self.model_uri = model_uri
        self.limits = limits
        self.pending = 0
        self.served = 0
        self._info: dict | None = None

    async def model_info(self) -> dict:
        """The generator's :meth:`GeneratorDeployment.info`, fetched once."""
        if self._info is None:
            self._info = await self.generator.info.remote()
        return self._info

    def retry_headers(self, seconds: float | None = None) -> dict[str, str]:
        """A ``Retry-After`` header (whole seconds, rounded up)."""
        return {"Retry-After": str(max(1, math.ceil(seconds if seconds is not None else self.limits.retry_after_s)))}

    async def soundtrack(self, request: Request) -> Any:
        """Handles ``POST /v1/soundtrack`` (see the module docstring for the statuses)."""
        from fastapi.responses import Response
        from ray.serve.exceptions import BackPressureError
        from starlette.requests import ClientDisconnect

        lim = self.limits
        try:
            boundary = multipart_boundary(request.headers.get("content-type"))
            declared = request.headers.get("content-length")
            if declared is not None:
                try:
                    n = int(declared)
                except ValueError:
                    raise UploadError(400, "bad_content_length", f"Content-Length {declared!r} is not a number") \
                        from None
                if n > lim.max_upload_bytes:  # refused before a byte of the body is read
                    raise UploadError(413, "upload_too_large", f"the upload declares {n} bytes, over the limit of "
                                      f"{lim.max_upload_bytes} bytes; send a shorter or smaller video",
                                      limit=lim.max_upload_bytes)
        except UploadError as exc:
            return _error(exc.status, exc.code, exc.message, exc.field, exc.limit)
        if self.pending >= lim.max_pending:
            return _error(503, "busy", f"{self.pending} requests are in progress (limit {lim.max_pending}); retry "
                          "later", limit=lim.max_pending, headers=self.retry_headers())
        self.pending += 1
        t0 = time.perf_counter()
        try:
            with tempfile.TemporaryDirectory(prefix="soundtrack-upload-") as tmp:
                tmpdir = Path(tmp)
                try:
                    upload = await read_multipart(
                        request.stream(), boundary, tmpdir / "upload", max_bytes=lim.max_upload_bytes,
                        file_field=VIDEO_FIELD, allowed_fields=set(SoundtrackOptions.model_fields),
                        max_field_bytes=lim.max_field_bytes, max_parts=len(SoundtrackOptions.model_fields) + 1)
                    if upload.file_path is None:
                        raise UploadError(422, "missing_field", f"the form has no {VIDEO_FIELD!r} file part",
                                          field=VIDEO_FIELD)
                    info = await self.model_info()
                    opts = parse_options(upload.fields, lim, info)
                    frames = await asyncio.to_thread(_decode, upload.file_path, info, lim, opts.output == "mp4")
                    job = GenerationJob(frames=frames, seed=opts.seed, caption=opts.prompt,
                                        overrides=opts.overrides())
                    out: GenerationOutput = await self.generator.generate.remote(job)
                except UploadError as exc:
                    return _error(exc.status, exc.code, exc.message, exc.field, exc.limit)
                except ClientDisconnect:
                    return _error(400, "client_disconnected", "the client closed the connection during the upload")
                except BackPressureError as exc:  # Serve's max_queued_requests of the generator
                    return _error(503, "busy", f"the generator's queue is full ({exc}); retry later",
                                  headers=self.retry_headers(getattr(exc, "retry_after_s", None)))
                if out.error is not None:
                    return _error(422, "invalid_option", out.error)
                headers = {
                    "X-Soundtrack-Model": self.model_uri.encode("ascii", "backslashreplace").decode(),
                    "X-Soundtrack-Seed": str(opts.seed),
                    "X-Soundtrack-Batch-Size": str(out.batch_size),
                    "X-Soundtrack-Generate-Seconds": f"{out.seconds:.3f}",
                    "X-Soundtrack-Seconds": f"{time.perf_counter() - t0:.3f}",
                }
                stem = Path(upload.filename or "video").stem or "video"
                stem = "".join(c if (c.isascii() and c.isalnum()) or c in "-_." else "_" for c in stem)[:64]
                if opts.output == "wav":
                    body = await asyncio.to_thread(_wav_bytes, out.wav, out.sr)
                    media_type, name = "audio/wav", f"{stem}.soundtrack.wav"
                else:
                    body = await asyncio.to_thread(_mp4_bytes, upload.file_path, out.wav, out.sr, tmpdir / "out.mp4")
                    media_type, name = "video/mp4", f"{stem}.soundtrack.mp4"
                headers["Content-Disposition"] = f'attachment; filename="{name}"'
                self.served += 1
                return Response(content=body, media_type=media_type, headers=headers)
        finally:
            self.pending -= 1


_ERROR_SCHEMA = {
    "type": "object",
    "properties": {
        "error": {"type": "string", "description": "machine-readable error name"},
        "message": {"type": "string", "description": "what is wrong and what to do"},
        "field": {"type": ["string", "null"], "description": "the form field at fault"},
        "limit": {"description": "the limit that was exceeded"},
    },
    "required": ["error", "message"],
}


def _error_response(description: str, retry: bool = False) -> dict:
    r: dict[str, Any] = {"description": description, "content": {"application/json": {"schema": _ERROR_SCHEMA}}}
    if retry:
        r["headers"] = {"Retry-After": {"description": "seconds to wait before retrying",
                                        "schema": {"type": "integer"}}}
    return r


def create_api(service: SoundtrackService):
    """The FastAPI application of the ingress (routes bound to ``service``).

    Args:
        service: the request handler.

    Returns:
        a ``FastAPI`` app whose ``/openapi.json`` documents the form fields, the limits and
        the response media types.
    """
    from fastapi import FastAPI
    from fastapi.responses import Response

    lim = service.limits
    api = FastAPI(
        title="soundtrack",
        version="1",
        description="Generate a soundtrack for a video: upload the video, get a WAV or the video with the new "
                    "track. Limits: " + ", ".join(f"{k}={v}" for k, v in lim.to_dict().items()),
    )

    @api.get("/v1/health", summary="liveness and load of this ingress replica")
    async def health() -> dict:
        return {"status": "ok", "model_uri": service.model_uri, "pending": service.pending,
                "max_pending": lim.max_pending, "served": service.served}

    @api.get("/v1/model", summary="the model card of the served generator",
             responses={503: _error_response("the generator is overloaded", retry=True)})
    async def model():
        from ray.serve.exceptions import BackPressureError

        try:
            return await service.model_info()
        except BackPressureError:
            return _error(503, "busy", "the generator's queue is full; retry later", headers=service.retry_headers())

    @api.post(
        "/v1/soundtrack",
        summary="generate a soundtrack for an uploaded video",
        response_class=Response,
        openapi_extra={"requestBody": {"required": True,
                                       "content": {"multipart/form-data": {"schema": options_form_schema(lim)}}}},
        responses={
            200: {"description": "the soundtrack (output=wav: 16-bit PCM WAV, mono) or the video with it "
                                 "(output=mp4: H.264 + AAC)",
                  "content": {"audio/wav": {"schema": {"type": "string", "format": "binary"}},
                              "video/mp4": {"schema": {"type": "string", "format": "binary"}}}},
            400: _error_response("malformed multipart body"),
            413: _error_response(f"the upload is over max_upload_bytes ({lim.max_upload_bytes})"),
            415: _error_response("the body is not multipart/form-data, or the file is not a video"),
            422: _error_response("an unknown or out-of-range option (field names it), a video without frames, "
                                 f"or one longer than max_duration_s ({lim.max_duration_s:g} s)"),
            503: _error_response("too many requests in progress or queued", retry=True),
        },
    )
    async def soundtrack(request: Request):
        return await service.soundtrack(request)

    return api


@serve.deployment(name=INGRESS_NAME)
@serve.ingress()
class IngressDeployment:
    """The HTTP ingress: FastAPI routes of :func:`create_api` over a :class:`SoundtrackService`.

    Args:
        generator: handle of the generator deployment.
        model_uri: the model URI served.
        limits: :class:`ServeLimits` fields as a dict.
    """

    def __init__(self, generator, model_uri: str, limits: dict | None = None):
        self.service = SoundtrackService(generator, model_uri, ServeLimits.from_dict(limits))

    def __serve_build_asgi_app__(self):
        return create_api(self.service)


# ----------------------------------------------------------------------------- builders


class BuildArgs(BaseModel):
    """Arguments of :func:`build_app` (a Serve config's ``applications[].args``)."""

    model_config = ConfigDict(extra="forbid")

    model_uri: str = Field(DEFAULT_MODEL_URI, min_length=1)
    storage: str = "runs"
    limits: dict[str, Any] = Field(default_factory=dict)
    max_batch_size: int = Field(4, ge=1, le=256)
    batch_wait_timeout_s: float = Field(0.05, ge=0, le=60)
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
    from soundtrack.stages.models import split_uri

    scheme, rest = split_uri(uri)
    if scheme == "file":
        return "file:" + str(Path(rest).expanduser().resolve())
    return uri


def build_app(args: dict | None = None):
    """The application builder of ``serve run serve/config.yaml`` (``import_path:
    soundtrack.serving.app:build_app``).

    Args:
        args: the config's ``args``: ``model_uri`` (default ``registry:best``), ``storage``
            (default ``runs``, made absolute here), ``limits`` (:class:`ServeLimits` fields),
            ``max_batch_size``, ``batch_wait_timeout_s``, ``torch_threads``, ``device``
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
        from soundtrack.stages.models import resolve_model_uri

        resolve_model_uri(uri, storage)  # ModelURIError (a ValueError) names what exists
    gen_opts = _merge(GENERATOR_DEFAULTS, a.deployment_options.get(GENERATOR_NAME, {}))
    ing_opts = _merge(INGRESS_DEFAULTS, a.deployment_options.get(INGRESS_NAME, {}))
    mor = gen_opts.get("max_ongoing_requests", 5)
    if mor < a.max_batch_size:
        raise ValueError(f"{GENERATOR_NAME}.max_ongoing_requests ({mor}) is below max_batch_size "
                         f"({a.max_batch_size}): batches could never fill; raise it or lower max_batch_size")
    try:
        gen = GeneratorDeployment.options(**gen_opts).bind(uri, storage, a.max_batch_size, a.batch_wait_timeout_s,
                                                           a.torch_threads, a.device)
        return IngressDeployment.options(**ing_opts).bind(gen, uri, limits.to_dict())
    except (TypeError, ValueError) as exc:
        raise ValueError(f"bad deployment options: {exc}") from None


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
    import yaml
    from ray.serve.schema import ServeDeploySchema

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
    from ray.serve.config import AutoscalingConfig, BackpressureConfig
    from ray.serve.schema import DeploymentSchema

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


def run_local(
    model_uri: str | None = None,
    storage: str | None = None,
    host: str | None = None,
    port: int | None = None,
    *,
    config: str | os.PathLike | None = None,
    request_timeout_s: float | None = None,
    limits: Mapping[str, Any] | None = None,
    address: str | None = None,
    block: bool = True,
    **args: Any,
) -> str:
    """Starts (or joins) Ray, starts Serve's HTTP proxy and runs the application.

    Values come from the arguments, then the config file, then the defaults: host
    127.0.0.1, port 8000, model ``registry:best``, storage ``runs``.

    Args:
        model_uri: the model URI.
        storage: the storage root the URI is resolved against.
        host: HTTP bind address (loopback unless you mean to expose the service).
        port: HTTP port.
        config: a Serve config file (``serve/config.yaml``): its http_options, args,
            deployments and runtime_env env_vars are used.
        request_timeout_s: the proxy's request timeout (s).
        limits: :class:`ServeLimits` fields (over the config's).
        address: a Ray cluster to join (``auto``) instead of a new local Ray.
        block: wait until Ctrl-C, then shut Serve down; ``False`` returns at once.
        **args: more :func:`build_app` arguments (max_batch_size, deployment_options, ...).

    Returns:
        the service URL.
    """
    cfg = load_serve_config(config) if config else {"http_options": {}, "args": {}, "deployment_options": {},
                                                    "env_vars": {}, "name": APP_NAME, "route_prefix": "/"}
    for k, v in {**AUTOSCALING_ENV, **cfg["env_vars"]}.items():
        os.environ.setdefault(k, str(v))
    build = dict(cfg["args"])
    if cfg["deployment_options"]:
        build["deployment_options"] = _merge(cfg["deployment_options"], args.pop("deployment_options", {}))
    build.update(args)
    if model_uri is not None:
        build["model_uri"] = model_uri
    if storage is not None:
        build["storage"] = storage
    if limits:
        build["limits"] = {**build.get("limits", {}), **dict(limits)}
    app = build_app(build)  # fails here, before Ray starts, on a bad argument or URI
    http = dict(cfg["http_options"])
    http["host"] = host or http.get("host") or DEFAULT_HOST
    http["port"] = int(port or http.get("port") or DEFAULT_PORT)
    http["request_timeout_s"] = request_timeout_s or http.get("request_timeout_s") or DEFAULT_REQUEST_TIMEOUT_S
    # The body limit also runs inside the HTTP proxy, which otherwise buffers whole uploads
    # before the ingress sees them (soundtrack.serving.proxy). Serve reads the proxy's
    # middlewares from its environment: a local Ray started below inherits these; a cluster
    # joined with ``address`` must have them set where `ray start` ran (cluster.yaml does).
    import ray

    from soundtrack.serving.proxy import MAX_UPLOAD_ENV, PROXY_CALLBACK, PROXY_CALLBACK_ENV

    if ray.is_initialized() or address:
        print("soundtrack serve: joining a running Ray: the proxy's upload limit applies only if that Ray was "
              f"started with {PROXY_CALLBACK_ENV}={PROXY_CALLBACK} (the ingress checks the limit regardless)",
              flush=True)
    os.environ.setdefault(PROXY_CALLBACK_ENV, PROXY_CALLBACK)
    os.environ[MAX_UPLOAD_ENV] = str(ServeLimits.from_dict(build.get("limits")).max_upload_bytes)

    from soundtrack.distributed.cluster import init_ray

    init_ray(address=address)
    serve.start(http_options=http, proxy_location=cfg.get("proxy_location"))
    serve.run(app, name=cfg["name"], route_prefix=cfg["route_prefix"])
    url = f"http://{http['host']}:{http['port']}{cfg['route_prefix'].rstrip('/')}"
    print(f"soundtrack serve: {url}/v1/soundtrack  (model {build.get('model_uri', DEFAULT_MODEL_URI)})\n"
          f"  health: {url}/v1/health   model card: {url}/v1/model   API: {url}/docs\n"
          f"  try:    curl -F video=@clip.mp4 -F output=wav -o soundtrack.wav {url}/v1/soundtrack", flush=True)
    if not block:
        return url
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        # Ctrl-C (even when the shell started us with SIGINT ignored) and SIGTERM both stop cleanly.
        def _stop(signum, frame):
            raise KeyboardInterrupt

        signal.signal(signal.SIGINT, _stop)
        signal.signal(signal.SIGTERM, _stop)
    try:
        print("serving; press Ctrl-C to stop", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("stopping: shutting Serve down", flush=True)
    finally:
        serve.shutdown()
    return url


# ----------------------------------------------------------------------------- client, demo


def request_soundtrack(url: str, video: str | os.PathLike, out: str | os.PathLike, timeout: float = 300,
                       **options: Any) -> dict[str, Any]:
    """Sends one video to a running service and writes the answer.

    Args:
        url: the service root, e.g. ``http://127.0.0.1:8000``.
        video: the video file to upload.
        out: ``.wav`` (the soundtrack) or ``.mp4`` (the video with it); the suffix sets ``output``.
        timeout: seconds to wait for the answer.
        **options: form fields of :class:`SoundtrackOptions` (seed, steps, cfg_scale, ...).

    Returns:
        ``{"path", "status", "bytes", "seconds", "headers"}``.

    Raises:
        RuntimeError: the service answered with an error (its JSON message included).
    """
    import requests

    out = Path(out)
    fields = {k: str(v) for k, v in options.items() if v is not None}
    fields["output"] = "mp4" if out.suffix.lower() == ".mp4" else "wav"
    t = time.perf_counter()
    with open(video, "rb") as f:
        r = requests.post(url.rstrip("/") + "/v1/soundtrack", files={VIDEO_FIELD: (Path(video).name, f)},
                          data=fields, timeout=timeout)
    if r.status_code != 200:
        raise RuntimeError(f"{url}/v1/soundtrack answered {r.status_code}: {r.text[:500]}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(r.content)
    return {"path": out, "status": r.status_code, "bytes": len(r.content),
            "seconds": round(time.perf_counter() - t, 3), "headers": dict(r.headers)}


def serve_demo(model_uri: str, storage: str, video: str | os.PathLike, out_dir: str | os.PathLike,
               port: int | None = None, config: str | os.PathLike | None = DEFAULT_CONFIG,
               **options: Any) -> dict[str, Path]:
    """Starts the service, sends one real request for a WAV and one for an MP4, stops Serve.

    What ``make demo`` needs from the serve stage: the same application as ``soundtrack
    serve`` (config file included), real HTTP on 127.0.0.1, then Serve shut down (Ray is
    left to the caller).

    Args:
        model_uri: the model to serve.
        storage: the runs root.
        video: a video to send (no audio track needed).
        out_dir: where ``<stem>.soundtrack.wav`` and ``.mp4`` are written.
        port: HTTP port (``None``: a free one).
        config: the Serve config file (``None``: code defaults).
        **options: request options (seed, steps, ...).

    Returns:
        ``{"url", "wav", "mp4"}`` (paths of the answers).
    """
    import socket

    if port is None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
    cfg_path = config if config is not None and Path(config).exists() else None
    url = run_local(model_uri, storage, "127.0.0.1", port, config=cfg_path, block=False)
    out_dir = Path(out_dir)
    stem = Path(video).stem
    try:
        wav = request_soundtrack(url, video, out_dir / f"{stem}.soundtrack.wav", **options)
        mp4 = request_soundtrack(url, video, out_dir / f"{stem}.soundtrack.mp4", **options)
        print(f"serve demo: {url}/v1/soundtrack answered a WAV ({wav['bytes']} bytes, {wav['seconds']} s) and an "
              f"MP4 ({mp4['bytes']} bytes, {mp4['seconds']} s)", flush=True)
    finally:
        serve.shutdown()
    return {"url": url, "wav": wav["path"], "mp4": mp4["path"]}
