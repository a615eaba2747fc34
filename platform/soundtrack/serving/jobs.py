"""Jobs for long videos: ``POST /v1/jobs`` stores the upload and answers at once; a
background task in the ingress replica runs it; clients poll, fetch the result, cancel.

Everything a job is lives in the run storage (:class:`~soundtrack.storage.Store`: a local
directory or ``s3://``), never in a replica's memory, so any ingress replica answers for
any job and a job outlives the replica that took it::

    <storage>/serve_jobs/<job_id>/      job_id: uuid4 hex (32 characters), checked on every route
      input          the upload as received (already judged by guard.inspect_upload)
      claim.<n>      attempt n's owner, created exclusively (one replica wins a take-over)
      job.json       state, times, options, attempt, heartbeat: written by attempt n's owner only
      progress.json  windows done / windows, written by the generator replica as groups finish
      cancel.json    the cancel marker (DELETE, from any replica)
      result.wav     16-bit PCM; result.mp4 too when output=mp4
      analysis.json  the web page's spectrogram, rhythm and beats, made at its first GET

Every file is written whole (temp + fsync + rename locally, one PUT on an object store), so a
reader sees the old or the new content. ``job.json`` is written last at creation: a folder
without it is an interrupted POST, removed by a sweep once it has been so for ``job_stale_s``.

States: ``queued`` -> ``running`` -> ``done`` | ``failed`` | ``cancelled``. Cancellation is
a marker in the store: the generator's ``should_stop`` hook
(:func:`soundtrack.pipelines.sampler.generate_video`) reads it, at most every
:data:`STOP_POLL_S` s, before every window and every denoising step, so a cancelled job
stops within about one denoising step plus the poll interval, on whichever replica runs it.

Replicas that stop: the owner renews ``heartbeat_at`` every ``job_stale_s / 6`` s. A sweep
(every ``job_sweep_s`` s on each ingress replica, and on each POST) treats an active job
whose heartbeat is older than ``job_stale_s`` as orphaned: it claims the next attempt and
runs the job again from its stored upload (a job runs at most :data:`MAX_ATTEMPTS` times,
then fails), and the previous owner, should it still live, sees the newer claim and stops.
A generator replica that dies under a job is retried the same way by the owner. Finished
jobs are kept ``job_ttl_s`` s, then answer 410 until a sweep removes them (404 after).

This module imports no torch: the ingress runs :class:`JobManager`; the generator
deployment uses :class:`JobStore` to write progress and to read the cancel marker.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import re
import socket
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Awaitable, Callable, Mapping

import numpy as np
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError

from soundtrack.errors import SoundtrackError, StorageError, UploadError
from soundtrack.serving.limits import ServeLimits
from soundtrack.serving.options import parse_options
from soundtrack.storage import Store

log = logging.getLogger(__name__)

#: The folder of the jobs under the storage root.
JOBS_DIR = "serve_jobs"

#: A job id: the hex of a uuid4 (122 random bits). Anything else is answered 404 unread.
JOB_ID_RE = re.compile(r"[0-9a-f]{32}")

JOB_FILE = "job.json"
PROGRESS_FILE = "progress.json"
CANCEL_FILE = "cancel.json"
INPUT_FILE = "input"
RESULT_FILES = {"wav": "result.wav", "mp4": "result.mp4"}
ANALYSIS_FILE = "analysis.json"
MEDIA_TYPES = {"wav": "audio/wav", "mp4": "video/mp4"}
JOB_FORMAT = "soundtrack-job/1"

ACTIVE = ("queued", "running")
TERMINAL = ("done", "failed", "cancelled")
STATES = ACTIVE + TERMINAL

#: Most times a job is run (its first run plus take-overs after a replica stopped, and
#: retries after a generator replica died under it) before it fails.
MAX_ATTEMPTS = 3

#: Seconds between two reads of the cancel marker by a running generation, on a local
#: store (a stat: microseconds) and on an object store (a HEAD request: tens of ms, and
#: billed). Bounds the stop latency together with the length of one denoising step.
STOP_POLL_S = {"local": 0.25, "objects": 1.0}


#: The JSON schema of a job's status (:meth:`JobStore.status` plus the routes' ``links``), for the OpenAPI description.
JOB_STATUS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "job_id": {"type": "string", "pattern": "^[0-9a-f]{32}$"},
        "state": {"type": "string", "enum": list(STATES)},
        "progress": {"type": "object", "description": "windows (10.24 s each) done, of the video's n_windows (null "
                                                      "until the generator starts the job); fraction in [0, 1]",
                     "properties": {"windows_done": {"type": "integer"}, "n_windows": {"type": ["integer", "null"]},
                                    "fraction": {"type": "number"}}},
        "output": {"type": "string", "enum": ["wav", "mp4"]},
        "created_at": {"type": "string", "format": "date-time"},
        "updated_at": {"type": "string", "format": "date-time"},
        "started_at": {"type": ["string", "null"], "format": "date-time"},
        "finished_at": {"type": ["string", "null"], "format": "date-time"},
        "expires_at": {"type": "string", "format": "date-time",
                       "description": "after it: 410, then 404 once a sweep removed the job"},
        "seconds": {"type": ["number", "null"], "description": "generation time (s) of a done job"},
        "error": {"type": ["object", "null"], "description": "a failed job's {error, message}"},
        "links": {"type": "object", "description": "the self, result and cancel URLs (paths)"},
    },
    "required": ["job_id", "state", "progress", "links"],
}


class JobError(SoundtrackError):
    """A job route's refusal: an unknown id (404), a result not ready (409), an expired job (410).

    Attributes:
        status: HTTP status code.
        code: machine-readable error name.
        message: what is wrong and what to do.
        state: the job's state, when it has one.
    """

    def __init__(self, status: int, code: str, message: str, state: str | None = None):
        super().__init__(message)
        self.status = int(status)
        self.code = code
        self.message = message
        self.state = state


@dataclass(frozen=True)
class JobRequest:
    """What the ingress sends the generator deployment's ``run_job`` (one job, not batched).

    Attributes:
        job_id: the job (the generator writes its progress and reads its cancel marker).
        attempt: the attempt that sent it (a newer claim stops it).
        frames: uint8 (T, H, W, 3) at the model's frame rate.
        seed: noise seed.
        caption: text prompt or ``None``.
        overrides: sampler overrides (guidance_scale, weights, num_steps).
        clip_id: seeds the noise with ``seed`` (as ``POST /v1/soundtrack`` and ``generate_file``).
    """

    job_id: str
    attempt: int
    frames: np.ndarray
    seed: int = 0
    caption: str | None = None
    overrides: dict = field(default_factory=dict)
    clip_id: str = "clip"


@dataclass(frozen=True)
class JobOutcome:
    """The generator's answer to a :class:`JobRequest`.

    Attributes:
        state: ``done``, ``failed`` (the generator refused the options or frames, or the
            model diverged) or ``cancelled`` (the cancel marker or a newer claim stopped it).
        wav: float32 mono soundtrack when done.
        sr: its sample rate (Hz).
        error: the generator's message when failed.
        seconds: time spent in the generator (s).
        n_windows: windows of the video.
    """

    state: str
    wav: np.ndarray | None = None
    sr: int = 16000
    error: str | None = None
    seconds: float = 0.0
    n_windows: int | None = None


def _iso(t: float | None) -> str | None:
    """Epoch seconds as ISO 8601 UTC (``2026-12-02T15:53:36.120Z``)."""
    if t is None:
        return None
    return datetime.fromtimestamp(float(t), timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def check_job_id(job_id: Any) -> str:
    """A job id as routes and the store accept it, or 404 (the id is never used as a path otherwise).

    Args:
        job_id: what the client sent.

    Raises:
        JobError: 404 ``no_such_job`` for anything but 32 lower-case hex digits.
    """
    if not isinstance(job_id, str) or not JOB_ID_RE.fullmatch(job_id):
        raise JobError(404, "no_such_job", "there is no job with this id (job ids are the 32 hex digits that "
                       "POST /v1/jobs answered)")
    return job_id


def job_limits(limits: ServeLimits, info: Mapping[str, Any]) -> ServeLimits:
    """The limits a job's upload is judged by: :meth:`ServeLimits.for_jobs` with the duration
    limit lowered to the model's ``sampler.max_seconds`` when that is shorter (the generator
    would refuse a longer video after the job had waited for it).

    Args:
        limits: the service's limits.
        info: the generator's description (``sampler.max_seconds``).
    """
    seconds = float(limits.max_job_duration_s)
    model_max = (info.get("sampler") or {}).get("max_seconds")
    if model_max is not None and float(model_max) < seconds:
        seconds = float(model_max)
    return limits.for_jobs(seconds)


class JobStore:
    """The jobs' files under ``<root>/serve_jobs`` (the layout in the module docstring).

    Args:
        root: the run storage root (a local path or an object-store URI) or a :class:`Store` on it.
        clock: wall-clock time source (epoch s); tests pass their own.
    """

    def __init__(self, root: "str | os.PathLike | Store", clock: Callable[[], float] = time.time):
        base = root if isinstance(root, Store) else Store(root)
        self.store = base.sub(JOBS_DIR)
        self.clock = clock
        self.stop_poll_s = STOP_POLL_S["local" if self.store.is_local else "objects"]

    @staticmethod
    def new_id() -> str:
        """A fresh random job id (uuid4 hex)."""
        return uuid.uuid4().hex

    @staticmethod
    def _rel(job_id: str, name: str) -> str:
        return f"{check_job_id(job_id)}/{name}"

    # -- creation and state ---------------------------------------------------------------

    def create(self, job_id: str, input_dir: Path, options: Mapping[str, str], output: str, name: str,
               ttl_s: float, owner: str) -> dict:
        """Stores a new job: its upload, the claim of attempt 1, then ``job.json`` (last).

        Args:
            job_id: from :meth:`new_id`.
            input_dir: a local directory holding the upload as :data:`INPUT_FILE` and nothing else.
            options: the form's text fields (validated already; validated again when run).
            output: ``wav`` or ``mp4``.
            name: the stem of the result's file name (ASCII, safe).
            ttl_s: provisional retention from now (s); set again from the end time when it finishes.
            owner: the replica that runs it.

        Returns:
            the job document.
        """
        check_job_id(job_id)
        self.store.upload_dir(input_dir, job_id)
        self.store.create_bytes(self._rel(job_id, "claim.1"), owner.encode())
        now = self.clock()
        doc = {"format": JOB_FORMAT, "job_id": job_id, "state": "queued", "created_at": now, "updated_at": now,
               "heartbeat_at": now, "expires_at": now + float(ttl_s), "started_at": None, "finished_at": None,
               "attempt": 1, "owner": owner, "options": dict(options), "output": output, "name": name,
               "error": None, "seconds": None}
        self.store.write_json(self._rel(job_id, JOB_FILE), doc)
        return doc

    def read(self, job_id: str) -> dict:
        """The job document.

        Raises:
            JobError: 404 for a bad id or a job that does not exist (or was removed).
        """
        try:
            doc = self.store.read_json(self._rel(job_id, JOB_FILE))
        except FileNotFoundError:
            raise JobError(404, "no_such_job", "there is no job with this id (it never existed, was deleted, or "
                           "expired and was removed)") from None
        if not isinstance(doc, dict) or doc.get("format") != JOB_FORMAT:
            raise StorageError(f"{self.store.uri(self._rel(job_id, JOB_FILE))} is not a {JOB_FORMAT} document")
        return doc

    def superseded(self, job_id: str, attempt: int) -> bool:
        """Whether a later attempt has claimed the job (attempt ``attempt`` must stop and write nothing)."""
        return self.store.is_file(self._rel(job_id, f"claim.{int(attempt) + 1}"))

    def claim(self, job_id: str, attempt: int, owner: str) -> bool:
        """Claims attempt ``attempt`` exclusively (False: another replica has it).

        Args:
            job_id: the job.
            attempt: the attempt number (>= 2 for a take-over).
            owner: the claiming replica.
        """
        return self.store.create_bytes(self._rel(job_id, f"claim.{int(attempt)}"), owner.encode())

    def update(self, job_id: str, writer: int, **changes: Any) -> dict | None:
        """Changes ``job.json`` on behalf of attempt ``writer`` (``updated_at`` set unless only
        the heartbeat moves); nothing when a later attempt has claimed the job.

        Args:
            job_id: the job.
            writer: the writer's attempt.
            **changes: fields to set (``attempt`` among them when a take-over starts).

        Returns:
            the new document, or ``None`` when superseded.
        """
        if self.superseded(job_id, writer):
            return None
        doc = self.read(job_id)
        doc.update(changes)
        if set(changes) - {"heartbeat_at"}:
            doc["updated_at"] = self.clock()
        self.store.write_json(self._rel(job_id, JOB_FILE), doc)
        return doc

    def finish(self, job_id: str, writer: int, state: str, ttl_s: float, error: tuple[str, str] | None = None,
               **changes: Any) -> dict | None:
        """Writes a final state; the job is kept ``ttl_s`` s from now.

        Args:
            job_id: the job.
            writer: the writer's attempt.
            state: ``done``, ``failed`` or ``cancelled``.
            ttl_s: retention (s).
            error: ``(code, message)`` of a failure (no traceback, no server paths).
            **changes: more fields (``seconds``).
        """
        if state not in TERMINAL:
            raise ValueError(f"{state!r} is not a final state ({', '.join(TERMINAL)})")
        now = self.clock()
        err = None if error is None else {"error": error[0], "message": error[1]}
        return self.update(job_id, writer, state=state, finished_at=now, expires_at=now + float(ttl_s), error=err,
                           **changes)

    # -- progress and cancellation (the generator's side) ---------------------------------

    def write_progress(self, job_id: str, attempt: int, windows_done: int, n_windows: int) -> None:
        """Records how many windows of the video are done (the generator calls it)."""
        self.store.write_json(self._rel(job_id, PROGRESS_FILE), {
            "attempt": int(attempt), "windows_done": int(windows_done), "n_windows": int(n_windows),
            "updated_at": self.clock()})

    def progress(self, job_id: str, attempt: int) -> dict | None:
        """Attempt ``attempt``'s progress record (``None`` before the generator started it)."""
        p = self.store.read_json(self._rel(job_id, PROGRESS_FILE), None)
        return p if isinstance(p, dict) and p.get("attempt") == int(attempt) else None

    def cancel_marked(self, job_id: str) -> bool:
        """Whether the job's cancel marker exists."""
        return self.store.is_file(self._rel(job_id, CANCEL_FILE))

    def mark_cancelled(self, job_id: str) -> None:
        """Writes the cancel marker (idempotent)."""
        self.store.write_json(self._rel(job_id, CANCEL_FILE), {"cancelled_at": self.clock()})

    def stop_check(self, job_id: str, attempt: int, poll_s: float | None = None) -> Callable[[], bool]:
        """The ``should_stop`` hook of a running attempt: True once the job's cancel marker
        exists or a later attempt claimed it. It reads the store at most every ``poll_s`` s
        (it is called before every denoising step) and stays True once True. A store that
        fails to answer counts as "go on" (logged): a flaky read must not kill a job.

        Args:
            job_id: the job.
            attempt: the running attempt.
            poll_s: seconds between reads (``None``: :data:`STOP_POLL_S` of this store).
        """
        check_job_id(job_id)
        poll = self.stop_poll_s if poll_s is None else float(poll_s)
        state = {"next": 0.0, "stop": False}

        def should_stop() -> bool:
            now = time.monotonic()
            if state["stop"] or now < state["next"]:
                return state["stop"]
            state["next"] = now + poll
            try:
                state["stop"] = self.cancel_marked(job_id) or self.superseded(job_id, attempt)
            except Exception as exc:
                log.warning("job %s: could not read its cancel marker (%s); going on", job_id, exc)
            return state["stop"]

        return should_stop

    # -- inputs, results, removal ---------------------------------------------------------

    def local_input(self, job_id: str, tmp: Path) -> Path:
        """A local path of the job's upload: the stored file itself on a local store, else a
        copy in ``tmp`` (at most ``max_upload_bytes``)."""
        rel = self._rel(job_id, INPUT_FILE)
        if self.store.is_local:
            return Path(self.store.uri(rel))
        dst = Path(tmp) / INPUT_FILE
        dst.write_bytes(self.store.read_bytes(rel))
        return dst

    def write_result(self, job_id: str, kind: str, data: bytes) -> None:
        """Stores a result (``kind``: ``wav`` or ``mp4``)."""
        self.store.write_bytes(self._rel(job_id, RESULT_FILES[kind]), data)

    def read_result(self, job_id: str, kind: str) -> bytes:
        """A stored result's bytes."""
        return self.store.read_bytes(self._rel(job_id, RESULT_FILES[kind]))

    def delete_results(self, job_id: str) -> None:
        """Removes the results (a job cancelled as it finished keeps none)."""
        for name in (*RESULT_FILES.values(), ANALYSIS_FILE):
            self.store.delete(self._rel(job_id, name))

    def read_analysis(self, job_id: str) -> dict | None:
        """The stored analysis of a done job's result (``None`` before it is made)."""
        try:
            return self.store.read_json(self._rel(job_id, ANALYSIS_FILE))
        except FileNotFoundError:
            return None

    def write_analysis(self, job_id: str, analysis: Mapping[str, Any]) -> None:
        """Stores the analysis (written whole: a reader sees none or all of it)."""
        self.store.write_json(self._rel(job_id, ANALYSIS_FILE), dict(analysis))

    def delete(self, job_id: str) -> None:
        """Removes the job's folder."""
        self.store.delete(check_job_id(job_id))

    def ids(self) -> list[str]:
        """The ids of the stored jobs (folders that are not job ids are never touched)."""
        return [n for n in self.store.listdir() if JOB_ID_RE.fullmatch(n)]

    # -- what clients see -----------------------------------------------------------------

    def status(self, job_id: str) -> dict:
        """The public view of a job (no paths, no owner): state, progress, times, error.

        A job whose cancel marker exists shows ``cancelled`` at once, while its generation
        winds down; a finished job past its ``expires_at`` is refused with 410.

        Raises:
            JobError: 404 (unknown or bad id), 410 (expired).
        """
        doc = self.read(job_id)
        state = doc["state"]
        if state in ACTIVE and self.cancel_marked(job_id):
            state = "cancelled"
        now = self.clock()
        if doc["state"] in TERMINAL and now >= float(doc["expires_at"]):
            raise JobError(410, "job_expired", f"the job ended more than its retention ago and its result was "
                           f"removed (expired {_iso(doc['expires_at'])}); submit it again", state=doc["state"])
        p = self.progress(job_id, int(doc.get("attempt", 1))) or {}
        n = p.get("n_windows")
        done = p.get("windows_done", 0)
        if doc["state"] == "done" and n is not None:
            done = n
        updated = max(float(doc["updated_at"]), float(p.get("updated_at") or 0.0))
        return {
            "job_id": doc["job_id"],
            "state": state,
            "progress": {"windows_done": int(done), "n_windows": n,
                         "fraction": round(done / n, 4) if n else (1.0 if state == "done" else 0.0)},
            "output": doc["output"],
            "created_at": _iso(doc["created_at"]),
            "updated_at": _iso(updated),
            "started_at": _iso(doc.get("started_at")),
            "finished_at": _iso(doc.get("finished_at")),
            "expires_at": _iso(doc["expires_at"]),
            "seconds": doc.get("seconds"),
            "error": doc.get("error"),
        }

    def sweep(self, stale_s: float, incomplete: dict[str, float]) -> tuple[list[str], list[tuple[str, int]]]:
        """Removes expired jobs and interrupted creations; finds orphaned active jobs.

        Args:
            stale_s: heartbeat age (s) past which an active job is orphaned; also how long a
                folder without ``job.json`` is left alone (a POST may still be storing it).
            incomplete: id -> when a sweep first saw it without ``job.json`` (epoch s),
                updated in place: such a folder is removed once it has been so for ``stale_s``.

        Returns:
            (removed ids, orphans as (id, attempt)).
        """
        removed, orphans = [], []
        now = self.clock()
        seen = {}
        for job_id in self.ids():
            try:
                doc = self.read(job_id)
            except JobError:
                doc = None
            except StorageError as exc:
                log.warning("job sweep: %s", exc)
                continue
            if doc is None:
                seen[job_id] = incomplete.get(job_id, now)
                if now - seen[job_id] > stale_s:
                    self.delete(job_id)
                    removed.append(job_id)
                    del seen[job_id]
                continue
            state = doc.get("state")
            if state in TERMINAL and now >= float(doc.get("expires_at", 0)):
                self.delete(job_id)
                removed.append(job_id)
            elif state in ACTIVE and now - float(doc.get("heartbeat_at", 0)) > stale_s:
                orphans.append((job_id, int(doc.get("attempt", 1))))
        incomplete.clear()
        incomplete.update(seen)
        return removed, orphans


class _JobFailed(SoundtrackError):
    """A job that ends ``failed`` with a client-facing ``(code, message)`` (internal to the runner)."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class JobManager:
    """The ingress replica's side of the jobs: submission, the background runs, the sweeps.

    Args:
        store: the job store.
        generator: handle of the generator deployment (``run_job``).
        limits: the service's limits (``max_jobs``, ``job_*``).
        model_info: the generator's description (awaitable; cached by the ingress).
        decode: ``decode(path, info, limits, want_mp4) -> frames``: the ingress' judge-and-decode
            (raises :class:`~soundtrack.errors.UploadError`).
        encode: ``encode(kind, video, wav, sr, tmp_dir) -> bytes``: a result file (``wav`` / ``mp4``).
    """

    def __init__(self, store: JobStore, generator, limits: ServeLimits,
                 model_info: Callable[[], Awaitable[dict]],
                 decode: Callable[[Path, Mapping[str, Any], ServeLimits, bool], np.ndarray],
                 encode: Callable[[str, Path, np.ndarray, int, Path], bytes]):
        self.store = store
        self.generator = generator
        self.limits = limits
        self.model_info = model_info
        self.decode = decode
        self.encode = encode
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.tasks: dict[str, asyncio.Task] = {}
        self.reserved = 0  # POSTs admitted whose job is not stored yet
        # the owner renews a heartbeat six times per job_stale_s: a sweep takes a job over
        # only after several renewals were missed
        self.heartbeat_s = max(0.2, float(limits.job_stale_s) / 6)
        self._incomplete: dict[str, float] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._sweeper: asyncio.Task | None = None
        self._sweep_task: asyncio.Task | None = None
        self._sweep_lock: asyncio.Lock | None = None  # made on the event loop, at the first sweep

    # -- capacity -------------------------------------------------------------------------

    @property
    def active(self) -> int:
        """Jobs of this replica queued or running, plus POSTs admitted and not stored yet."""
        return len(self.tasks) + self.reserved

    def reserve(self) -> bool:
        """Takes a place for a job about to be uploaded; False at ``max_jobs``."""
        if self.active >= self.limits.max_jobs:
            return False
        self.reserved += 1
        return True

    def release(self) -> None:
        """Gives back a place of :meth:`reserve` (the job was stored, or refused)."""
        self.reserved -= 1

    # -- background tasks -----------------------------------------------------------------

    def _spawn(self, coro) -> asyncio.Task:
        # A fresh context: the task must not inherit the POST's Serve request context, or
        # Serve would treat its generator calls as children of a request that has ended.
        return asyncio.get_running_loop().create_task(coro, context=contextvars.Context())

    def ensure_started(self) -> None:
        """Starts the periodic sweep on this replica's event loop (once; needs a running loop)."""
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = self._spawn(self._sweep_loop())

    async def _sweep_loop(self) -> None:
        while True:
            await self.sweep()
            await asyncio.sleep(float(self.limits.job_sweep_s))

    def kick_sweep(self) -> None:
        """Starts a sweep now unless one is running (a POST does not wait for it)."""
        if self._sweep_task is None or self._sweep_task.done():
            self._sweep_task = self._spawn(self.sweep())

    async def sweep(self) -> dict[str, list[str]]:
        """Removes expired jobs; runs orphaned ones again (or fails or cancels them).

        Returns:
            ``{"removed": [...], "resumed": [...], "ended": [...]}`` (ids).
        """
        if self._sweep_lock is None:
            self._sweep_lock = asyncio.Lock()
        async with self._sweep_lock:  # one sweep at a time per replica (the periodic one, a POST's)
            return await self._sweep()

    async def _sweep(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {"removed": [], "resumed": [], "ended": []}
        try:
            removed, orphans = await asyncio.to_thread(self.store.sweep, float(self.limits.job_stale_s),
                                                       self._incomplete)
            out["removed"] = removed
            for job_id, attempt in orphans:
                if job_id in self.tasks:
                    continue  # ours and alive: a heartbeat write failed, the next one will do
                cancelled = await asyncio.to_thread(self.store.cancel_marked, job_id)
                if not cancelled and attempt < MAX_ATTEMPTS and self.active >= self.limits.max_jobs:
                    continue  # no room here: another replica, or a later sweep, takes it
                if not await asyncio.to_thread(self.store.claim, job_id, attempt + 1, self.owner):
                    continue  # another replica took it
                await self._update(job_id, attempt + 1, attempt=attempt + 1, owner=self.owner,
                                   heartbeat_at=self.store.clock())
                if cancelled:
                    await self._finish(job_id, attempt + 1, "cancelled")
                    out["ended"].append(job_id)
                elif attempt >= MAX_ATTEMPTS:
                    await self._finish(job_id, attempt + 1, "failed", error=(
                        "job_lost", f"the service replicas running this job stopped {attempt} times; submit it again"))
                    out["ended"].append(job_id)
                if job_id in out["ended"]:
                    self._locks.pop(job_id, None)  # no run of it here
                else:
                    log.info("job %s: its replica stopped (no heartbeat for %g s); running it again (attempt %d)",
                             job_id, self.limits.job_stale_s, attempt + 1)
                    self._start(job_id, attempt + 1)
                    out["resumed"].append(job_id)
            if removed:
                log.info("job sweep: removed %d expired or interrupted job(s)", len(removed))
        except Exception:  # a sweep must never take the replica down: the next one tries again
            log.exception("job sweep failed")
        return out

    def _start(self, job_id: str, attempt: int) -> None:
        task = self._spawn(self._run(job_id, attempt))
        self.tasks[job_id] = task

        def done(t: asyncio.Task) -> None:
            if self.tasks.get(job_id) is t:
                del self.tasks[job_id]
            self._locks.pop(job_id, None)

        task.add_done_callback(done)

    # -- submission -----------------------------------------------------------------------

    async def submit(self, input_dir: Path, options: Mapping[str, str], output: str, name: str) -> dict:
        """Stores a job (its upload in ``input_dir``) and starts it; call after :meth:`reserve`.

        Args:
            input_dir: a local directory holding only the upload, named :data:`INPUT_FILE`.
            options: the form's text fields.
            output: ``wav`` or ``mp4``.
            name: the stem of the result's file name.

        Returns:
            the job's public status (:meth:`JobStore.status`).
        """
        job_id = self.store.new_id()
        await asyncio.to_thread(self.store.create, job_id, input_dir, options, output, name,
                                float(self.limits.job_ttl_s), self.owner)
        status = await asyncio.to_thread(self.store.status, job_id)  # "queued": read before the run can start
        self._start(job_id, 1)
        log.info("job %s: queued (output=%s)", job_id, output)
        return status

    async def status(self, job_id: str) -> dict:
        """``GET /v1/jobs/{id}`` (raises :class:`JobError` 404 / 410)."""
        check_job_id(job_id)
        return await asyncio.to_thread(self.store.status, job_id)

    async def result(self, job_id: str, kind: str | None = None) -> tuple[bytes, str, str]:
        """``GET /v1/jobs/{id}/result``: ``(bytes, media type, file name)``.

        Args:
            job_id: the job.
            kind: ``wav`` or ``mp4``; ``None``: the output the job was submitted with (an
                ``output=mp4`` job keeps its WAV too).

        Raises:
            JobError: 404 (also: ``mp4`` of an ``output=wav`` job), 409 (not done: the state
                is named), 410 (expired).
        """
        await self.done_status(job_id)
        doc = await asyncio.to_thread(self.store.read, job_id)
        stored = ("wav", "mp4") if doc["output"] == "mp4" else ("wav",)
        kind = doc["output"] if kind is None else kind
        if kind not in stored:
            raise JobError(404, "no_such_result", f"this job has no {kind!r} result (it was submitted with "
                           f"output={doc['output']}; it has: {', '.join(stored)})", state="done")
        data = await asyncio.to_thread(self.store.read_result, job_id, kind)
        return data, MEDIA_TYPES[kind], f"{doc['name']}.soundtrack.{kind}"

    async def done_status(self, job_id: str) -> dict:
        """The status of a job that must be done.

        Raises:
            JobError: 404, 409 (not done: the state is named), 410 (expired).
        """
        st = await self.status(job_id)
        if st["state"] != "done":
            what = {"queued": "is queued", "running": "is still running",
                    "failed": "failed (GET the job for its error)", "cancelled": "was cancelled"}[st["state"]]
            raise JobError(409, "job_not_done", f"the job {what}: there is no result"
                           + ("; poll the job until its state is done" if st["state"] in ACTIVE else ""),
                           state=st["state"])
        return st

    async def cancel(self, job_id: str) -> dict:
        """``DELETE /v1/jobs/{id}``: cancels a queued or running job (the marker; the job's
        state is ``cancelled`` from now on and its generation stops within about a
        denoising step); deletes a finished one.

        Returns:
            the job's status, or ``{"job_id", "state": "deleted"}``.
        """
        check_job_id(job_id)
        doc = await asyncio.to_thread(self.store.read, job_id)
        if doc["state"] in ACTIVE:
            await asyncio.to_thread(self.store.mark_cancelled, job_id)
            log.info("job %s: cancel requested", job_id)
            return await asyncio.to_thread(self.store.status, job_id)
        await asyncio.to_thread(self.store.delete, job_id)
        log.info("job %s: deleted (it was %s)", job_id, doc["state"])
        return {"job_id": job_id, "state": "deleted"}

    # -- one run --------------------------------------------------------------------------

    async def _update(self, job_id: str, writer: int, **changes: Any) -> dict | None:
        # one writer of job.json at a time in this replica (the heartbeat and the run share it)
        lock = self._locks.setdefault(job_id, asyncio.Lock())
        async with lock:
            return await asyncio.to_thread(self.store.update, job_id, writer, **changes)

    async def _finish(self, job_id: str, attempt: int, state: str, error: tuple[str, str] | None = None,
                      **changes: Any) -> None:
        lock = self._locks.setdefault(job_id, asyncio.Lock())
        async with lock:
            await asyncio.to_thread(self.store.finish, job_id, attempt, state, float(self.limits.job_ttl_s), error,
                                    **changes)
        log.info("job %s: %s%s", job_id, state, f" ({error[0]}: {error[1]})" if error else "")

    async def _heartbeat(self, job_id: str, attempt: int) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_s)
            try:
                await self._update(job_id, attempt, heartbeat_at=self.store.clock())
            except Exception as exc:  # a missed beat is not fatal: stale_s allows several
                log.warning("job %s: heartbeat not written (%s)", job_id, exc)

    async def _stop_reason(self, job_id: str, attempt: int) -> str | None:
        """``"superseded"`` (a later attempt owns the job), ``"cancelled"`` or ``None``."""
        if await asyncio.to_thread(self.store.superseded, job_id, attempt):
            return "superseded"
        if await asyncio.to_thread(self.store.cancel_marked, job_id):
            return "cancelled"
        return None

    async def _run(self, job_id: str, attempt: int) -> None:
        beat = asyncio.get_running_loop().create_task(self._heartbeat(job_id, attempt))
        try:
            await self._work(job_id, attempt)
        except _JobFailed as exc:
            await self._finish(job_id, attempt, "failed", error=(exc.code, exc.message))
        except asyncio.CancelledError:  # the replica stops: a sweep elsewhere takes the job over
            log.info("job %s: stopped with its replica (attempt %d); a sweep will run it again", job_id, attempt)
            raise
        except Exception:
            log.exception("job %s (attempt %d) failed", job_id, attempt)
            try:
                await self._finish(job_id, attempt, "failed",
                                   error=("internal_error", "the job failed on the server; submit it again"))
            except Exception:
                log.exception("job %s: its failure could not be recorded", job_id)
        finally:
            beat.cancel()

    async def _work(self, job_id: str, attempt: int) -> None:
        """One attempt: decode, generate (the generator writes progress), store the results."""
        lim = self.limits
        doc = await asyncio.to_thread(self.store.read, job_id)
        with tempfile.TemporaryDirectory(prefix="soundtrack-job-") as tmp:
            if await self._stop_reason(job_id, attempt):
                return await self._end_stopped(job_id, attempt)
            await self._update(job_id, attempt, state="running", started_at=self.store.clock())
            path = await asyncio.to_thread(self.store.local_input, job_id, Path(tmp))
            info = await self._model_info()
            try:
                opts = parse_options(doc["options"], lim, info)
                frames = await asyncio.to_thread(self.decode, path, info, job_limits(lim, info), doc["output"] == "mp4")
            except UploadError as exc:  # judged at the POST; a decode can still fail (the message has no paths)
                raise _JobFailed(exc.code, exc.message) from None
            if await self._stop_reason(job_id, attempt):
                return await self._end_stopped(job_id, attempt)
            out = await self._generate(JobRequest(job_id, attempt, frames, seed=opts.seed, caption=opts.prompt,
                                                  overrides=opts.overrides()))
            del frames
            if out.state == "failed":
                raise _JobFailed("generation_failed", out.error or "the generator refused the job")
            if out.state == "cancelled" or await self._stop_reason(job_id, attempt):
                return await self._end_stopped(job_id, attempt)
            kinds = ["wav"] + (["mp4"] if doc["output"] == "mp4" else [])
            for kind in kinds:
                try:
                    data = await asyncio.to_thread(self.encode, kind, path, out.wav, out.sr, Path(tmp))
                except Exception as exc:  # re-decoding the client's file failed: its input, not a server fault
                    log.warning("job %s: encoding the %s failed: %s", job_id, kind, exc, exc_info=True)
                    raise _JobFailed("undecodable_video", "the video could not be re-encoded with its soundtrack; "
                                     "submit it again with output=wav") from None
                await asyncio.to_thread(self.store.write_result, job_id, kind, data)
                del data
            if await self._stop_reason(job_id, attempt):  # cancelled while the results were written
                await asyncio.to_thread(self.store.delete_results, job_id)
                return await self._end_stopped(job_id, attempt)
            await self._finish(job_id, attempt, "done", seconds=round(out.seconds, 3))

    async def _end_stopped(self, job_id: str, attempt: int) -> None:
        """Ends a stopped attempt: ``cancelled``, or nothing at all when a later attempt owns the job."""
        if await self._stop_reason(job_id, attempt) == "cancelled":
            await self._finish(job_id, attempt, "cancelled")

    async def _model_info(self) -> dict:
        """The generator's description, waiting out a full generator queue."""
        while True:
            try:
                return await self.model_info()
            except BackPressureError as exc:
                await asyncio.sleep(float(getattr(exc, "retry_after_s", None) or self.limits.retry_after_s))

    async def _generate(self, req: JobRequest) -> JobOutcome:
        """``run_job`` on a generator replica: waits out a full queue (the job is queued, not
        refused) and runs again on another replica if one dies under it (up to :data:`MAX_ATTEMPTS`)."""
        deaths = 0
        while True:
            response = self.generator.run_job.remote(req)
            try:
                return await response
            except BackPressureError as exc:
                wait = float(getattr(exc, "retry_after_s", None) or self.limits.retry_after_s)
            except RayActorError as exc:  # the replica died (a scale-down's kill, a crash) or is unreachable
                deaths += 1
                if deaths >= MAX_ATTEMPTS:
                    raise _JobFailed("generator_unavailable", f"the generator replica running the job stopped "
                                     f"{deaths} times; submit it again") from None
                log.warning("job %s: the generator replica stopped under it (%s); trying again", req.job_id,
                            type(exc).__name__)
                wait = float(self.limits.retry_after_s)
            except asyncio.CancelledError:
                cancel = getattr(response, "cancel", None)
                if cancel is not None:
                    cancel()
                raise
            if await self._stop_reason(req.job_id, req.attempt):
                return JobOutcome("cancelled")
            await asyncio.sleep(wait)
