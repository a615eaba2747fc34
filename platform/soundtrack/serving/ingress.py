"""The HTTP ingress (FastAPI): limits, upload streaming, decoding, encoding; never imports torch."""

from __future__ import annotations

import asyncio
import io
import math
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import soundfile as sf
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from ray import serve
from ray.serve.exceptions import BackPressureError
from starlette.requests import ClientDisconnect

from soundtrack.data import media
from soundtrack.serving.limits import (
    _IMAGE_CONTAINERS,
    INGRESS_NAME,
    VIDEO_FIELD,
    ServeLimits,
)
from soundtrack.serving.options import (
    GenerationJob,
    GenerationOutput,
    SoundtrackOptions,
    options_form_schema,
    parse_options,
)
from soundtrack.serving.upload import UploadError, multipart_boundary, read_multipart


def _error(status: int, code: str, message: str, field: str | None = None, limit=None,
           headers: dict | None = None):
    return JSONResponse({"error": code, "message": message, "field": field, "limit": limit}, status_code=status,
                        headers=headers)


def _decode(path: Path, info: Mapping[str, Any], limits: ServeLimits, want_mp4: bool) -> np.ndarray:
    """Probes and decodes an uploaded file at the model's frame size and rate (raises UploadError)."""
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
    buf = io.BytesIO()
    sf.write(buf, np.clip(np.asarray(wav, np.float32), -1, 1), int(sr), format="WAV", subtype="PCM_16")
    return buf.getvalue()


def _mp4_bytes(video: Path, wav: np.ndarray, sr: int, out: Path) -> bytes:
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
