"""The HTTP ingress (FastAPI): limits, upload streaming, decoding, encoding; never imports torch.

Before a request reaches a route, :class:`~soundtrack.serving.guard.RequestGuard` checks its
``Host`` (421 / 400), the ``Origin`` of a post (403) and, when configured, its API key (401)
and quota (429). ``POST /v1/soundtrack`` then refuses, before reading the body, a declared
length over ``max_upload_bytes`` (413), more than ``max_pending`` requests in flight or
uploads in flight over ``max_inflight_upload_bytes`` (503 + ``Retry-After``); while reading,
a body over the limit (413) or slower than ``min_upload_bytes_per_s`` after
``upload_grace_s`` (408); before decoding, a file that is not an allowed container and
codecs, or refers to other files (415), or whose packets exceed the limits (422, see
:func:`~soundtrack.serving.guard.inspect_upload`). A file that passes and still fails to
decode gets 422: no input answers 500.

``POST /v1/jobs`` takes the same form through the same checks (its duration, frame, packet
and re-encoding limits those of :meth:`~soundtrack.serving.limits.ServeLimits.for_jobs`),
stores the upload and answers 202 at once; :mod:`soundtrack.serving.jobs` runs it and
answers ``GET /v1/jobs/{id}``, ``GET /v1/jobs/{id}/result`` and ``DELETE /v1/jobs/{id}``.
"""

from __future__ import annotations

import asyncio
import importlib.resources
import io
import logging
import math
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, Literal, Mapping

import numpy as np
import soundfile as sf
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from ray import serve
from ray.serve.exceptions import BackPressureError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from soundtrack.data import media
from soundtrack.serving import overview
from soundtrack.serving.analysis import soundtrack_analysis
from soundtrack.serving.guard import (
    KEY_EXEMPT_PATHS,
    SAFE_METHODS,
    GuardError,
    InflightBudget,
    RequestGuard,
    UploadFacts,
    inspect_upload,
    public_model_info,
    public_uri,
)
from soundtrack.serving.jobs import INPUT_FILE, JOB_STATUS_SCHEMA, JobError, JobManager, JobStore, job_limits
from soundtrack.serving.limits import (
    INGRESS_NAME,
    VIDEO_FIELD,
    ServeLimits,
)
from soundtrack.serving.metrics import AnswerMetrics, ServiceMetrics
from soundtrack.serving.options import (
    GenerationJob,
    GenerationOutput,
    SoundtrackOptions,
    options_form_schema,
    parse_options,
)
from soundtrack.serving.upload import UploadError, multipart_boundary, read_multipart
from soundtrack.storage import Store

log = logging.getLogger(__name__)

#: The web page's files (``platform/soundtrack/serving/ui``) and their media types: nothing
#: else is served from there, and the page loads nothing from anywhere else.
UI_ASSETS = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
             "app.css": "text/css; charset=utf-8"}
#: The page's Content-Security-Policy: its own scripts, styles and data, media from blobs of
#: its own answers; no other origin (the page works offline and cannot be made to load more).
UI_CSP = ("default-src 'self'; img-src 'self' blob: data:; media-src 'self' blob:; connect-src 'self'; "
          "script-src 'self'; style-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
          "form-action 'self'")
#: Frame size (pixels) the page's rhythm curve is computed at (a mean over pixels: small is enough).
RHYTHM_FRAME_SIZE = 64


def ui_asset(name: str) -> bytes:
    """A file of the web page (one of :data:`UI_ASSETS`)."""
    return importlib.resources.files("soundtrack.serving").joinpath("ui", name).read_bytes()


def _error(status: int, code: str, message: str, field: str | None = None, limit=None,
           headers: dict | None = None, **extra: Any):
    """A JSON error answer ``{"error", "message", "field", "limit", **extra}``.

    Args:
        status: HTTP status code.
        code: machine-readable error name.
        message: what is wrong and what to do.
        field: the form field at fault.
        limit: the limit exceeded.
        headers: response headers (``Retry-After``).
        **extra: more keys of the body (``found``, ``allowed``).
    """
    # the code also in a header: the service's metrics count answers by it (serving.metrics)
    return JSONResponse({"error": code, "message": message, "field": field, "limit": limit, **extra},
                        status_code=status, headers={**(headers or {}), "X-Soundtrack-Error": code})


def _upload_error(exc: UploadError) -> JSONResponse:
    """The JSON answer of a refusal (with ``found`` / ``allowed`` for a :class:`GuardError`).

    Args:
        exc: the refusal.
    """
    extra = {"found": exc.found, "allowed": exc.allowed} if isinstance(exc, GuardError) else {}
    return _error(exc.status, exc.code, exc.message, exc.field, exc.limit, **extra)


def _inspect(path: Path, limits: ServeLimits, want_mp4: bool) -> UploadFacts:
    """Judges an uploaded file without decoding (:func:`inspect_upload`), and whether it may be
    re-encoded for ``output=mp4``.

    Args:
        path: the uploaded file (server side: never named in an answer).
        limits: the limits it is judged by.
        want_mp4: the client asked for ``output=mp4`` (the source is decoded again to mux).

    Raises:
        UploadError: 415 / 422 from :func:`inspect_upload`; 422 when ``output=mp4`` would
            decode more than ``max_mux_bytes``.
    """
    facts = inspect_upload(path, limits)  # GuardError (an UploadError) before any frame is decoded
    if want_mp4:
        # mux_audio decodes every source frame at the source size: frames x width x height x 3 bytes
        decoded = facts.frames * facts.width * facts.height * 3
        if decoded > limits.max_mux_bytes:
            raise UploadError(422, "video_too_large_to_mux", f"re-encoding this video would decode {decoded} bytes "
                              f"of frames, over the limit of {limits.max_mux_bytes}; ask for output=wav",
                              field="output", limit=limits.max_mux_bytes)
    return facts


def _decode(path: Path, info: Mapping[str, Any], limits: ServeLimits, want_mp4: bool) -> np.ndarray:
    """Judges an uploaded file without decoding (:func:`_inspect`), then decodes it at the
    model's frame size and rate.

    Args:
        path: the uploaded file (server side: never named in an answer).
        info: the generator's description (``fps``, ``frame_size``).
        limits: the service's limits.
        want_mp4: the client asked for ``output=mp4`` (the source is decoded again to mux).

    Returns:
        uint8 ``(T, frame_size, frame_size, 3)`` frames at the model's rate.

    Raises:
        UploadError: 415 / 422 from :func:`_inspect`; 422 when the frames do not decode.
    """
    facts = _inspect(path, limits, want_mp4)
    size = int(info["frame_size"])
    try:
        frames = media.read_frames(path, fps=float(info["fps"]), size=(size, size))
    except media.MediaError as exc:  # the message names the server's temp file: keep only the reason
        raise UploadError(422, "no_frames", f"the video stream has no decodable frames ({exc.reason}); send a "
                          "video with frames", field=VIDEO_FIELD) from None
    except Exception as exc:  # any decoder failure on a client's bytes is the client's input, not a server fault
        log.warning("decoding an upload (%s, %s) failed: %s", facts.container, facts.video_codec, exc, exc_info=True)
        raise UploadError(422, "undecodable_video", f"the {facts.video_codec} video could not be decoded; re-encode "
                          "it (e.g. H.264 in mp4)", field=VIDEO_FIELD) from None
    if len(frames) == 0:
        raise UploadError(422, "no_frames", "the video has no frames", field=VIDEO_FIELD)
    seconds = len(frames) / float(info["fps"])
    if seconds > limits.max_duration_s + 1.0 / float(info["fps"]):  # what the decoder made (a late start adds)
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


def _encode(kind: str, video: Path, wav: np.ndarray, sr: int, tmp: Path) -> bytes:
    """A result file's bytes: ``wav`` (16-bit PCM) or ``mp4`` (``video`` with the track, built in ``tmp``)."""
    return _wav_bytes(wav, sr) if kind == "wav" else _mp4_bytes(video, wav, sr, tmp / "out.mp4")


def _safe_stem(filename: str | None) -> str:
    """The client's file name as the stem of an answer's file name: ASCII letters, digits, ``-_.``."""
    stem = Path(filename or "video").stem or "video"
    return "".join(c if (c.isascii() and c.isalnum()) or c in "-_." else "_" for c in stem)[:64]


def _job_error(exc: JobError) -> JSONResponse:
    """The JSON answer of a job route's refusal (404 / 409 / 410; ``state`` when known)."""
    return _error(exc.status, exc.code, exc.message, state=exc.state)


def _job_links(request: Request, job_id: str) -> dict[str, str]:
    """The job's URLs as paths under the application's route prefix."""
    base = f"{str(request.scope.get('root_path') or '').rstrip('/')}/v1/jobs/{job_id}"
    return {"self": base, "result": f"{base}/result", "cancel": base}


class SoundtrackService:
    """The ingress' request handling, independent of FastAPI routing.

    Args:
        generator: handle of the generator deployment.
        model_uri: the model URI served (reported by the health endpoint, without its path).
        limits: the service's limits.
        storage: the run storage root that holds the jobs (``<storage>/serve_jobs``; a path
            or an object-store URI); ``None``: no job routes (they answer 404).
    """

    def __init__(self, generator, model_uri: str, limits: ServeLimits, storage: str | None = None):
        self.generator = generator
        self.model_uri = model_uri
        self.limits = limits
        self.pending = 0
        self.served = 0
        self.budget = InflightBudget(limits.max_inflight_upload_bytes)
        self._info: dict | None = None
        self._public_info: dict | None = None
        self.jobs = None if storage is None else JobManager(JobStore(storage), generator, limits, self.model_info,
                                                            _decode, _encode)
        self.store = None if storage is None else Store(storage)  # the runs view and the test clips read it

    async def model_info(self) -> dict:
        """The generator's :meth:`GeneratorDeployment.info`, fetched once (server side only: it
        holds paths; clients get :meth:`public_model_info`)."""
        if self._info is None:
            self._info = await self.generator.info.remote()
        return self._info

    async def public_model_info(self) -> dict:
        """``GET /v1/model``: :meth:`model_info` without paths, hosts, commands or credentials."""
        if self._public_info is None:
            self._public_info = public_model_info(await self.model_info())
        return self._public_info

    @property
    def public_model_uri(self) -> str:
        """The model URI as clients see it (:func:`~soundtrack.serving.guard.public_uri`)."""
        return public_uri(self.model_uri)

    def retry_headers(self, seconds: float | None = None) -> dict[str, str]:
        """A ``Retry-After`` header (whole seconds, rounded up)."""
        return {"Retry-After": str(max(1, math.ceil(seconds if seconds is not None else self.limits.retry_after_s)))}

    async def soundtrack(self, request: Request) -> Any:
        """Handles ``POST /v1/soundtrack`` (see the module docstring for the statuses).

        Args:
            request: the HTTP request.
        """
        return await self._admitted(request, lambda boundary: self._soundtrack(request, boundary))

    async def _admitted(self, request: Request, handle) -> Any:
        """The checks of an upload before its body is read (Content-Type and -Length,
        ``max_pending``, the upload budget), then ``handle(boundary)`` holding its place.

        Args:
            request: the HTTP request.
            handle: ``async handle(boundary) -> answer``, run once the request is admitted.
        """
        lim = self.limits
        try:
            boundary = multipart_boundary(request.headers.get("content-type"))
            declared = request.headers.get("content-length")
            n = None
            if declared is not None:
                try:
                    n = int(declared)
                except ValueError:
                    raise UploadError(400, "bad_content_length", f"Content-Length {declared!r} is not a number") \
                        from None
                if n < 0:
                    raise UploadError(400, "bad_content_length", f"Content-Length {declared!r} is negative")
                if n > lim.max_upload_bytes:  # refused before a byte of the body is read
                    raise UploadError(413, "upload_too_large", f"the upload declares {n} bytes, over the limit of "
                                      f"{lim.max_upload_bytes} bytes; send a shorter or smaller video",
                                      limit=lim.max_upload_bytes)
        except UploadError as exc:
            return _upload_error(exc)
        if self.pending >= lim.max_pending:
            return _error(503, "busy", f"{self.pending} requests are in progress (limit {lim.max_pending}); retry "
                          "later", limit=lim.max_pending, headers=self.retry_headers())
        # What this body may write to disk: its declared length, or the most a chunked one may send.
        reserve = n if n is not None else lim.max_upload_bytes
        if not self.budget.try_reserve(reserve):
            return _error(503, "busy", f"uploads in flight hold {self.budget.used} of the {self.budget.limit} bytes "
                          f"this service buffers; this one needs {reserve}; retry later",
                          limit=lim.max_inflight_upload_bytes, headers=self.retry_headers())
        self.pending += 1
        try:
            return await handle(boundary)
        finally:
            self.pending -= 1
            self.budget.release(reserve)

    async def _soundtrack(self, request: Request, boundary: bytes) -> Any:
        """The body of :meth:`soundtrack` once the request holds its place (pending, budget).

        Args:
            request: the HTTP request (its body not read yet).
            boundary: its multipart boundary.
        """
        lim = self.limits
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="soundtrack-upload-") as tmp:
            tmpdir = Path(tmp)
            try:
                upload = await self._read_form(request, boundary, tmpdir / "upload")
                info = await self.model_info()
                opts = parse_options(upload.fields, lim, info)
                frames = await asyncio.to_thread(_decode, upload.file_path, info, lim, opts.output == "mp4")
                job = GenerationJob(frames=frames, seed=opts.seed, caption=opts.prompt,
                                    overrides=opts.overrides(), token=uuid.uuid4().hex)
                response = self.generator.generate.remote(job)
                try:
                    out: GenerationOutput = await response
                except asyncio.CancelledError:
                    # The client went away (Serve cancels the request): a job still waiting in
                    # the generator's @serve.batch queue is dropped there; one whose batch is
                    # already sampling stops at its next denoising step (alone in its loop, or
                    # once every job of its loop is gone): GeneratorDeployment.generate marks
                    # its token when this cancel reaches it.
                    cancel = getattr(response, "cancel", None)
                    if cancel is not None:
                        cancel()
                    raise
            except (UploadError, ClientDisconnect, BackPressureError) as exc:
                return self._refusal(exc)
            if out.cancelled:  # its client went away (only then is a token cancelled)
                return _error(400, "client_disconnected", "the client closed the connection; nothing was generated")
            if out.error is not None:
                return _error(422, "invalid_option", out.error)
            headers = {
                "X-Soundtrack-Model": self.public_model_uri.encode("ascii", "backslashreplace").decode(),
                "X-Soundtrack-Seed": str(opts.seed),
                "X-Soundtrack-Batch-Size": str(out.batch_size),
                "X-Soundtrack-Generate-Seconds": f"{out.seconds:.3f}",
                "X-Soundtrack-Seconds": f"{time.perf_counter() - t0:.3f}",
            }
            stem = _safe_stem(upload.filename)
            if opts.output == "wav":
                body = await asyncio.to_thread(_wav_bytes, out.wav, out.sr)
                media_type, name = "audio/wav", f"{stem}.soundtrack.wav"
            else:
                try:
                    body = await asyncio.to_thread(_mp4_bytes, upload.file_path, out.wav, out.sr, tmpdir / "out.mp4")
                except Exception as exc:  # re-decoding the client's file failed: its input, not a server fault
                    log.warning("muxing an upload failed: %s", exc, exc_info=True)
                    return _error(422, "undecodable_video", "the video could not be re-encoded with its soundtrack; "
                                  "ask for output=wav", field="output")
                media_type, name = "video/mp4", f"{stem}.soundtrack.mp4"
            headers["Content-Disposition"] = f'attachment; filename="{name}"'
            self.served += 1
            return Response(content=body, media_type=media_type, headers=headers)

    async def _read_form(self, request: Request, boundary: bytes, dest: Path):
        """Streams the multipart form to ``dest`` (the video) and memory (the fields).

        Args:
            request: the HTTP request.
            boundary: its multipart boundary.
            dest: where the video part is written.

        Returns:
            the :class:`~soundtrack.serving.upload.Upload`.

        Raises:
            UploadError: 400 / 408 / 413 / 422 from the reader; 422 without a video part.
        """
        lim = self.limits
        upload = await read_multipart(
            request.stream(), boundary, dest, max_bytes=lim.max_upload_bytes,
            file_field=VIDEO_FIELD, allowed_fields=set(SoundtrackOptions.model_fields),
            max_field_bytes=lim.max_field_bytes, max_parts=len(SoundtrackOptions.model_fields) + 1,
            min_bytes_per_s=lim.min_upload_bytes_per_s, grace_s=lim.upload_grace_s)
        if upload.file_path is None:
            raise UploadError(422, "missing_field", f"the form has no {VIDEO_FIELD!r} file part", field=VIDEO_FIELD)
        return upload

    def _refusal(self, exc: Exception) -> JSONResponse:
        """The answer to an upload that ends in a refusal: :class:`UploadError`, a client gone
        during the upload (400), the generator's full queue (503)."""
        if isinstance(exc, UploadError):
            return _upload_error(exc)
        if isinstance(exc, ClientDisconnect):
            return _error(400, "client_disconnected", "the client closed the connection during the upload")
        # BackPressureError: Serve's max_queued_requests of the generator
        return _error(503, "busy", f"the generator's queue is full ({exc}); retry later",
                      headers=self.retry_headers(getattr(exc, "retry_after_s", None)))

    # -- jobs -------------------------------------------------------------------------------

    def _no_jobs(self) -> JSONResponse | None:
        """404 when this service keeps no jobs; else starts the replica's job sweeps (once)."""
        if self.jobs is None:
            return _error(404, "jobs_disabled", "this service runs without job storage; use POST /v1/soundtrack")
        self.jobs.ensure_started()
        return None

    async def create_job(self, request: Request) -> Any:
        """Handles ``POST /v1/jobs``: the form of ``POST /v1/soundtrack`` and its checks, the
        job limits (:func:`~soundtrack.serving.jobs.job_limits`); 503 + ``Retry-After`` when
        ``max_jobs`` jobs of this replica are queued or running. Answers 202 with the job's
        status and a ``Location`` header.

        Args:
            request: the HTTP request.
        """
        refused = self._no_jobs()
        if refused is not None:
            return refused
        self.jobs.kick_sweep()  # expired jobs go on every POST (and every job_sweep_s)
        if not self.jobs.reserve():
            return _error(503, "busy", f"{self.jobs.active} jobs are queued or running on this replica (limit "
                          f"{self.limits.max_jobs}); retry later", limit=self.limits.max_jobs,
                          headers=self.retry_headers())
        try:
            return await self._admitted(request, lambda boundary: self._create_job(request, boundary))
        finally:
            self.jobs.release()

    async def _create_job(self, request: Request, boundary: bytes) -> Any:
        lim = self.limits
        with tempfile.TemporaryDirectory(prefix="soundtrack-upload-") as tmp:
            indir = Path(tmp) / "in"  # holds the upload alone: it is copied to the store as it is
            indir.mkdir()
            try:
                upload = await self._read_form(request, boundary, indir / INPUT_FILE)
                info = await self.model_info()
                opts = parse_options(upload.fields, lim, info)
                await asyncio.to_thread(_inspect, upload.file_path, job_limits(lim, info), opts.output == "mp4")
            except (UploadError, ClientDisconnect, BackPressureError) as exc:
                return self._refusal(exc)
            try:
                st = await self.jobs.submit(indir, upload.fields, opts.output, _safe_stem(upload.filename))
            except OSError:
                log.exception("storing a job failed")
                return _error(503, "job_store_unavailable", "the job could not be stored; retry later",
                              headers=self.retry_headers())
        links = _job_links(request, st["job_id"])
        return JSONResponse({**st, "links": links}, status_code=202, headers={"Location": links["self"]})

    async def job_route(self, request: Request, job_id: str, what: str, kind: str | None = None) -> Any:
        """Handles ``GET /v1/jobs/{job_id}`` (``what="status"``: 200; 404 unknown or bad id;
        410 expired), ``GET /v1/jobs/{job_id}/result`` (``"result"``: 200 WAV / MP4; 404; 409
        not done; 410) and ``DELETE /v1/jobs/{job_id}`` (``"cancel"``: 200 cancelled, or
        deleted when it had ended; 404); 503 when the job store does not answer.

        Args:
            request: the HTTP request.
            job_id: the id from the path (checked before any storage access).
            what: ``status``, ``result`` or ``cancel``.
            kind: the result's kind (``wav`` / ``mp4``; ``None``: the job's output).
        """
        refused = self._no_jobs()
        if refused is not None:
            return refused
        try:
            if what == "result":
                data, media_type, name = await self.jobs.result(job_id, kind)
                return Response(content=data, media_type=media_type, headers={
                    "Content-Disposition": f'attachment; filename="{name}"', "X-Soundtrack-Job": job_id})
            st = await (self.jobs.status(job_id) if what == "status" else self.jobs.cancel(job_id))
        except JobError as exc:
            return _job_error(exc)
        except OSError:  # the store did not answer (StorageError is an OSError)
            log.exception("job %s: the job store failed", job_id)
            return _error(503, "job_store_unavailable", "the job store did not answer; retry later",
                          headers=self.retry_headers())
        return JSONResponse(st if st["state"] == "deleted" else {**st, "links": _job_links(request, job_id)})

    async def job_analysis(self, job_id: str) -> Any:
        """Handles ``GET /v1/jobs/{job_id}/analysis``: a done job's mel-spectrogram, video
        rhythm curve and beats (:func:`~soundtrack.serving.analysis.soundtrack_analysis`),
        made at the first request and kept with the job; 404 / 409 / 410 as the result.

        Args:
            job_id: the id from the path.
        """
        refused = self._no_jobs()
        if refused is not None:
            return refused
        try:
            await self.jobs.done_status(job_id)
            found = await asyncio.to_thread(self.jobs.store.read_analysis, job_id)
            if found is None:
                info = await self.model_info()
                wav_bytes, _, _ = await self.jobs.result(job_id, "wav")
                found = await asyncio.to_thread(self._analyse, job_id, wav_bytes, float(info["fps"]))
        except JobError as exc:
            return _job_error(exc)
        except OSError:
            log.exception("job %s: the job store failed", job_id)
            return _error(503, "job_store_unavailable", "the job store did not answer; retry later",
                          headers=self.retry_headers())
        return JSONResponse(found)

    def _analyse(self, job_id: str, wav_bytes: bytes, fps: float) -> dict:
        """Computes and stores a job's analysis (a thread: decoding and librosa)."""
        wav, sr = sf.read(io.BytesIO(wav_bytes), dtype="float32")
        frames = None
        with tempfile.TemporaryDirectory(prefix="soundtrack-analysis-") as tmp:
            path = self.jobs.store.local_input(job_id, Path(tmp))
            try:  # the upload was judged and decoded at the job's run; small frames suffice here
                frames = media.read_frames(path, fps=fps, size=(RHYTHM_FRAME_SIZE, RHYTHM_FRAME_SIZE))
            except Exception as exc:  # the spectrogram is still worth drawing
                log.warning("job %s: no rhythm curve (%s)", job_id, exc)
        found = soundtrack_analysis(wav, sr, frames, fps)
        self.jobs.store.write_analysis(job_id, found)
        return found

    # -- the web page's data ----------------------------------------------------------------

    def _no_store(self) -> JSONResponse | None:
        if self.store is None:
            return _error(404, "runs_disabled", "this service runs without a storage root")
        return None

    async def runs(self) -> Any:
        """Handles ``GET /v1/runs``: :func:`~soundtrack.serving.overview.runs_overview`."""
        refused = self._no_store()
        if refused is not None:
            return refused
        try:
            return JSONResponse(await asyncio.to_thread(overview.runs_overview, self.store))
        except OSError:
            log.exception("the runs view: the storage failed")
            return _error(503, "storage_unavailable", "the run storage did not answer; retry later",
                          headers=self.retry_headers())

    async def stored_file(self, what: str, *parts: str) -> Any:
        """Handles ``GET /v1/runs/{stage}/{name}/plots/{plot}`` (``what="plot"``: PNG),
        ``GET /v1/clips`` (``"clips"``: JSON) and ``GET /v1/clips/{run}/{clip}`` (``"clip"``:
        MP4); 404 for anything not listed.

        Args:
            what: ``plot``, ``clips`` or ``clip``.
            *parts: the path's names.
        """
        refused = self._no_store()
        if refused is not None:
            return refused
        try:
            if what == "clips":
                return JSONResponse({"clips": await asyncio.to_thread(overview.list_clips, self.store)})
            if what == "plot":
                data = await asyncio.to_thread(overview.plot_bytes, self.store, *parts)
                return Response(content=data, media_type="image/png", headers={"Cache-Control": "no-cache"})
            data = await asyncio.to_thread(overview.clip_bytes, self.store, *parts)
            return Response(content=data, media_type="video/mp4")
        except (overview.OverviewError, FileNotFoundError):
            return _error(404, "not_found", f"no such {what}; GET /v1/runs or /v1/clips lists what exists")
        except OSError:
            log.exception("the runs view: the storage failed")
            return _error(503, "storage_unavailable", "the run storage did not answer; retry later",
                          headers=self.retry_headers())


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


#: The answer of ``DELETE /v1/jobs/{id}`` to a job that had ended: it is gone, no status is left.
_JOB_DELETED_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"job_id": {"type": "string", "pattern": "^[0-9a-f]{32}$"}, "state": {"const": "deleted"}},
    "required": ["job_id", "state"],
}

#: Starlette's own refusals (no route, a method the path lacks) -> the ``error`` of their answer.
_HTTP_ERROR_CODES = {404: "not_found", 405: "method_not_allowed"}


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """Starlette's own refusals in the service's error shape, the one every operation declares
    (its ``{"detail"}`` matches none): e.g. a job id with a ``/`` in it, which no route matches."""
    code = _HTTP_ERROR_CODES.get(exc.status_code, "http_error")
    headers = dict(getattr(exc, "headers", None) or {})
    where = f"{request.method} {request.url.path[:200]}"  # the path as decoded: a '/' in an id splits it
    if exc.status_code == 404:
        message = f"nothing answers {where}; /openapi.json lists the routes"
    elif exc.status_code == 405:
        message = f"{where}: the method is not allowed here; allowed: {headers.get('Allow', '?')}"
    else:
        message = str(exc.detail)
    return _error(exc.status_code, code, message, headers=headers or None)


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's refusal of a query or path parameter (``?kind=flac``) in the service's error
    shape (a 422 naming the parameter), not FastAPI's ``{"detail": [...]}``."""
    err = (exc.errors() or [{}])[0]
    loc = [str(x) for x in err.get("loc", ()) if x not in ("query", "path", "body")]
    name = loc[0] if loc else None
    return _error(422, "invalid_parameter", f"parameter {name!r}: {err.get('msg', 'invalid')} (got "
                  f"{str(err.get('input'))[:100]!r})" if name else str(err.get("msg", "invalid request")), field=name)


def _declare_guard_answers(schema: dict[str, Any]) -> None:
    """Adds :class:`RequestGuard`'s refusals to every operation of an OpenAPI document (those an
    operation declares itself are kept): 400 / 421 (Host) everywhere, 403 (Origin) on the
    methods that change something, 401 / 429 (API key, quota) off :data:`KEY_EXEMPT_PATHS`.
    The guard answers them before any route, so no route's own ``responses`` would say so.

    Args:
        schema: the OpenAPI document, changed in place.
    """
    for path, ops in schema.get("paths", {}).items():
        for method, op in ops.items():
            responses = op.setdefault("responses", {})
            answers = {"400": _error_response("a missing, repeated or malformed Host header"),
                       "421": _error_response("a Host header this service does not answer to (allowed_hosts)")}
            if method.upper() not in SAFE_METHODS:
                answers["403"] = _error_response("a request from a web page of another site (Origin)")
            if path not in KEY_EXEMPT_PATHS:
                answers["401"] = _error_response("a missing or invalid API key (when the service has api_keys)")
                answers["429"] = _error_response("the API key's requests per minute are used up", retry=True)
            for status, answer in answers.items():
                responses.setdefault(status, answer)


def _ui_response(name: str) -> Response:
    """A page file with the page's security headers."""
    return Response(content=ui_asset(name), media_type=UI_ASSETS[name],
                    headers={"Content-Security-Policy": UI_CSP, "X-Content-Type-Options": "nosniff",
                             "Referrer-Policy": "no-referrer", "Cache-Control": "no-cache"})


#: The JSON schema of ``GET /v1/jobs/{id}/analysis`` (:func:`~soundtrack.serving.analysis.soundtrack_analysis`).
ANALYSIS_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["seconds", "sr", "rms", "mel", "rhythm", "beats"],
    "properties": {
        "seconds": {"type": "number"}, "sr": {"type": "integer"}, "rms": {"type": "number"},
        "mel": {"type": "object", "required": ["n_mels", "columns", "hop_s", "top_db", "levels_b64"],
                "description": "n_mels x columns uint8 levels (row 0: the lowest band; 0: top_db below the loudest "
                               "bin, 255: the loudest), base64, row-major; a column every hop_s s"},
        "rhythm": {"type": ["object", "null"], "description": "the video's motion energy (mean luma change, "
                                                              "[0, 1]), a value every step_s s"},
        "beats": {"type": "array", "items": {"type": "number"}, "description": "the music's beats (s)"},
    },
}

#: The JSON schema of ``GET /v1/runs`` (:func:`~soundtrack.serving.overview.runs_overview`).
RUNS_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["tune", "bench", "registry"],
    "properties": {k: {"type": "array", "items": {"type": "object", "required": ["name"]}}
                   for k in ("tune", "bench", "registry")},
}


def _job_response(description: str, status: int = 200) -> dict:
    return {"description": description, "content": {"application/json": {"schema": JOB_STATUS_SCHEMA}},
            **({"headers": {"Location": {"description": "the job's URL", "schema": {"type": "string"}}}}
               if status == 202 else {})}


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
                    "track. Limits: " + ", ".join(f"{k}={v}" for k, v in lim.public_dict().items()),
    )
    # Host / Origin / API-key checks before any route (and before a body is read)
    api.add_middleware(RequestGuard, limits=lim)
    # added last, so outermost: every answer is counted, the guard's refusals too
    api.add_middleware(AnswerMetrics, metrics=ServiceMetrics({
        "uploads_in_flight": lambda: service.pending,
        "jobs_active": lambda: service.jobs.active if service.jobs is not None else 0}))
    api.add_exception_handler(StarletteHTTPException, _http_error)
    api.add_exception_handler(RequestValidationError, _validation_error)
    fastapi_openapi = api.openapi

    def openapi() -> dict[str, Any]:
        # FastAPI builds the document once and caches it in api.openapi_schema; the guard's
        # answers are added to that first build
        if api.openapi_schema is None:
            _declare_guard_answers(fastapi_openapi())
        return api.openapi_schema

    api.openapi = openapi

    @api.get("/v1/health", summary="liveness and load of this ingress replica")
    async def health() -> dict:
        return {"status": "ok", "model_uri": service.public_model_uri, "pending": service.pending,
                "max_pending": lim.max_pending, "served": service.served,
                "jobs": service.jobs.active if service.jobs is not None else None, "max_jobs": lim.max_jobs}

    @api.get("/v1/model", summary="the model card of the served generator",
             responses={503: _error_response("the generator is overloaded", retry=True)})
    async def model():
        try:
            return await service.public_model_info()
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
            400: _error_response("malformed multipart body or Host header"),
            401: _error_response("a missing or invalid API key (when the service has api_keys)"),
            403: _error_response("a post from a web page of another site (Origin)"),
            408: _error_response(f"the upload was slower than min_upload_bytes_per_s ({lim.min_upload_bytes_per_s:g}) "
                                 f"after upload_grace_s ({lim.upload_grace_s:g} s)"),
            413: _error_response(f"the upload is over max_upload_bytes ({lim.max_upload_bytes})"),
            415: _error_response("the body is not multipart/form-data, or the file is not an accepted video "
                                 "container and codecs (found and allowed are named), or refers to other files"),
            421: _error_response("a Host header this service does not answer to (allowed_hosts)"),
            422: _error_response("an unknown or out-of-range option (field names it), a video without frames, "
                                 f"one longer than max_duration_s ({lim.max_duration_s:g} s), or over max_streams, "
                                 "max_video_pixels, max_video_frames or max_packets"),
            429: _error_response("the API key's requests per minute are used up", retry=True),
            503: _error_response("too many requests or upload bytes in progress, or the queue is full", retry=True),
        },
    )
    async def soundtrack(request: Request):
        return await service.soundtrack(request)

    no_job = _error_response("no job has this id (bad ids included), or the service keeps no jobs")
    gone = _error_response("the job expired (job_ttl_s after it ended); a sweep then removes it (404)")

    @api.post(
        "/v1/jobs",
        summary="submit a video as a job (long videos): answered at once, generated in the background",
        status_code=202,
        openapi_extra={"requestBody": {"required": True, "content": {
            "multipart/form-data": {"schema": options_form_schema(lim.for_jobs())}}}},
        responses={
            202: _job_response("the job, queued (Location: its URL; poll it)", status=202),
            400: _error_response("malformed multipart body or Host header"),
            404: _error_response("the service keeps no jobs (it runs without job storage)"),
            401: _error_response("a missing or invalid API key (when the service has api_keys)"),
            403: _error_response("a post from a web page of another site (Origin)"),
            408: _error_response("the upload was slower than min_upload_bytes_per_s"),
            413: _error_response(f"the upload is over max_upload_bytes ({lim.max_upload_bytes})"),
            415: _error_response("not multipart/form-data, or not an accepted video container and codecs"),
            421: _error_response("a Host header this service does not answer to (allowed_hosts)"),
            422: _error_response(f"an unknown or out-of-range option, a video without frames, one longer than "
                                 f"max_job_duration_s ({lim.max_job_duration_s:g} s) or the model's "
                                 "sampler.max_seconds, or over the job's frame / packet limits"),
            429: _error_response("the API key's requests per minute are used up", retry=True),
            503: _error_response(f"max_jobs ({lim.max_jobs}) jobs queued or running on this replica, too many "
                                 "uploads in progress, or the job store did not answer", retry=True),
        },
    )
    async def create_job(request: Request):
        return await service.create_job(request)

    @api.get("/v1/jobs/{job_id}", summary="a job's state, progress (windows done / total) and times",
             responses={200: _job_response("the job"), 404: no_job, 410: gone,
                        503: _error_response("the job store did not answer", retry=True)})
    async def job_status(request: Request, job_id: str):
        return await service.job_route(request, job_id, "status")

    @api.get(
        "/v1/jobs/{job_id}/result",
        summary="a done job's soundtrack (WAV) or video with it (MP4)",
        response_class=Response,
        responses={
            200: {"description": "the result of a done job (the output it was submitted with)",
                  "content": {"audio/wav": {"schema": {"type": "string", "format": "binary"}},
                              "video/mp4": {"schema": {"type": "string", "format": "binary"}}}},
            404: no_job, 409: _error_response("the job is not done (queued, running, failed or cancelled: state "
                                              "names it)"),
            422: _error_response("kind is not wav or mp4"),
            410: gone, 503: _error_response("the job store did not answer", retry=True),
        },
    )
    async def job_result(request: Request, job_id: str,
                         kind: Literal["wav", "mp4"] | None = Query(None, description="wav or mp4 (default: the "
                                                                    "job's output; an output=mp4 job keeps both)")):
        return await service.job_route(request, job_id, "result", kind)

    @api.get("/v1/jobs/{job_id}/analysis",
             summary="a done job's soundtrack mel-spectrogram (uint8 levels, base64), the video's rhythm curve and "
                     "the music's beats: what the web page draws",
             responses={200: {"description": "the analysis", "content": {"application/json": {
                 "schema": ANALYSIS_SCHEMA}}},
                 404: no_job, 409: _error_response("the job is not done"), 410: gone,
                 503: _error_response("the job store did not answer", retry=True)})
    async def job_analysis(job_id: str):
        return await service.job_analysis(job_id)

    no_store = _error_response("the service runs without a storage root, or nothing of that name is listed")
    unavailable = _error_response("the run storage did not answer", retry=True)

    @api.get("/v1/runs", summary="the searches (trials, plots), benches (tables, plots) and registry cards under "
                                 "the storage root: the web page's runs view",
             responses={200: {"description": "tune, bench and registry entries", "content": {
                 "application/json": {"schema": RUNS_SCHEMA}}}, 404: no_store, 503: unavailable})
    async def runs():
        return await service.runs()

    @api.get("/v1/runs/{stage}/{name}/plots/{plot}", summary="a plot of a search or a bench (PNG)",
             response_class=Response,
             responses={200: {"description": "the plot", "content": {"image/png": {"schema": {
                 "type": "string", "format": "binary"}}}}, 404: no_store, 503: unavailable})
    async def run_plot(stage: str, name: str, plot: str):
        return await service.stored_file("plot", stage, name, plot)

    @api.get("/v1/clips", summary="test clips the web page offers (data/<run>/videos/*.mp4 under the storage root)",
             responses={200: {"description": "the clips", "content": {"application/json": {"schema": {
                 "type": "object", "required": ["clips"], "properties": {"clips": {"type": "array", "items": {
                     "type": "object", "required": ["run", "clip"], "properties": {
                         "run": {"type": "string"}, "clip": {"type": "string"}}}}}}}}},
                 404: no_store, 503: unavailable})
    async def clips():
        return await service.stored_file("clips")

    @api.get("/v1/clips/{run}/{clip}", summary="a test clip (MP4)", response_class=Response,
             responses={200: {"description": "the clip", "content": {"video/mp4": {"schema": {
                 "type": "string", "format": "binary"}}}}, 404: no_store, 503: unavailable})
    async def clip(run: str, clip: str):
        return await service.stored_file("clip", run, clip)

    # The web page: its three files, from the package (no CDN: it works offline).
    @api.get("/", include_in_schema=False)
    async def page():
        return _ui_response("index.html")

    @api.get("/ui/{asset}", include_in_schema=False)
    async def ui(asset: str):
        if asset not in UI_ASSETS or asset == "index.html":
            return _error(404, "not_found", f"no page asset {asset!r}")
        return _ui_response(asset)

    @api.delete(
        "/v1/jobs/{job_id}",
        summary="cancel a queued or running job (it stops within about one denoising step), or delete a "
                "finished one",
        responses={200: {"description": "the cancelled job (state cancelled), or {job_id, state: deleted}",
                         "content": {"application/json": {"schema": {
                             "anyOf": [JOB_STATUS_SCHEMA, _JOB_DELETED_SCHEMA]}}}},
                   404: no_job, 503: _error_response("the job store did not answer", retry=True)},
    )
    async def cancel_job(request: Request, job_id: str):
        return await service.job_route(request, job_id, "cancel")

    return api


@serve.deployment(name=INGRESS_NAME)
@serve.ingress()
class IngressDeployment:
    """The HTTP ingress: FastAPI routes of :func:`create_api` over a :class:`SoundtrackService`.

    Args:
        generator: handle of the generator deployment.
        model_uri: the model URI served.
        limits: :class:`ServeLimits` fields as a dict.
        storage: the run storage root of the jobs (``None``: no job routes).
    """

    def __init__(self, generator, model_uri: str, limits: dict | None = None, storage: str | None = None):
        self.service = SoundtrackService(generator, model_uri, ServeLimits.from_dict(limits), storage)

    def __serve_build_asgi_app__(self):
        return create_api(self.service)

    async def check_health(self):
        """Serve's periodic health check; also starts this replica's job sweeps (expiry and
        take-over of jobs whose replica stopped) without waiting for a request."""
        if self.service.jobs is not None:
            self.service.jobs.ensure_started()
