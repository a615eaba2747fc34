"""The generator deployment: one model behind ``@serve.batch`` (the only serving module that imports torch),
and ``run_job`` for the jobs of long videos (one at a time, not batched, cancellable)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from ray import serve

from soundtrack.pipelines.generator import GenerationRequest, GeneratorError
from soundtrack.pipelines.sampler import BATCH_TOLERANCE, GenerationCancelled, window_starts
from soundtrack.serving.jobs import JobOutcome, JobRequest, JobStore
from soundtrack.serving.limits import GENERATOR_NAME
from soundtrack.serving.options import GenerationJob, GenerationOutput
from soundtrack.stages.models import load_generator, resolve_model_uri

log = logging.getLogger(__name__)

#: Seconds a cancel token is kept when no batch of its request ran yet (a request dropped
#: from Serve's queue never runs): long enough for any queued batch, short enough not to pile up.
CANCELLED_TTL_S = 600.0


def _entry_card(model_dir: Path) -> dict | None:
    """The card of the run or registry entry holding ``model_dir`` (``<entry>/model``), if any."""
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
        batching: sample the jobs of a batch together
            (:meth:`~soundtrack.pipelines.generator.SoundtrackGenerator.generate_batch`: the
            jobs with the same sampler settings share one denoising loop, each output
            within :data:`~soundtrack.pipelines.sampler.BATCH_TOLERANCE` of the job run
            alone); False: one :meth:`~soundtrack.pipelines.generator.SoundtrackGenerator.generate`
            call per job, each output bit-identical to the job run alone.
    """

    def __init__(self, model_uri: str, storage: str, max_batch_size: int = 4, batch_wait_timeout_s: float = 0.05,
                 torch_threads: int = 1, device: str = "auto", batching: bool = True):

        torch.set_num_threads(int(torch_threads))
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = device
        self.model_uri = model_uri
        self.model_dir = resolve_model_uri(model_uri, storage)
        self.gen = load_generator(model_uri, storage, device=device)
        self._batched.set_max_batch_size(int(max_batch_size))
        self._batched.set_batch_wait_timeout_s(float(batch_wait_timeout_s))
        self.max_batch_size = int(max_batch_size)
        self.batch_wait_timeout_s = float(batch_wait_timeout_s)
        self.batching = bool(batching)
        self.jobs = JobStore(storage)  # progress and cancel markers of the jobs (serving.jobs)
        # busy time: wall seconds (time.monotonic) during which at least one generation (a
        # batch or a job) was in progress; a lock because the generations run in threads
        self._busy_lock = threading.Lock()
        self._busy_s = 0.0
        self._busy_since = 0.0
        self._busy_n = 0
        self._jobs_ended = {"done": 0, "failed": 0, "cancelled": 0}
        # tokens of synchronous requests whose caller went away (Serve cancelled the call of
        # generate); a token is dropped once its batch ends, or after CANCELLED_TTL_S
        self._cancelled: dict[str, float] = {}
        self.requests_cancelled = 0

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
            "noise_schedule": g.schedule.to_dict(),
            "card": dict(g.card),
            "entry_card": _entry_card(Path(self.model_dir)),
            "batching": {"max_batch_size": self.max_batch_size, "batch_wait_timeout_s": self.batch_wait_timeout_s,
                         "enabled": self.batching, "tolerance": BATCH_TOLERANCE if self.batching else 0.0},
        }

    @contextlib.contextmanager
    def _busy(self) -> Iterator[None]:
        """Counts the enclosed generation into :meth:`stats`' ``busy_s``."""
        with self._busy_lock:
            if self._busy_n == 0:
                self._busy_since = time.monotonic()
            self._busy_n += 1
        try:
            yield
        finally:
            with self._busy_lock:
                self._busy_n -= 1
                if self._busy_n == 0:
                    self._busy_s += time.monotonic() - self._busy_since

    def stats(self) -> dict[str, Any]:
        """What this replica has been doing: ``busy_s`` (wall seconds with a generation in
        progress, never decreasing; it stops growing when the work stops, e.g. after a job
        is cancelled), ``generating`` (generations in progress now) and ``jobs`` (jobs ended,
        by final state)."""
        with self._busy_lock:
            busy = self._busy_s + (time.monotonic() - self._busy_since if self._busy_n else 0.0)
            return {"busy_s": busy, "generating": self._busy_n, "jobs": dict(self._jobs_ended),
                    "requests_cancelled": self.requests_cancelled}

    def _mark_cancelled(self, token: str) -> None:
        """Marks a synchronous request as gone: a request still queued in ``@serve.batch`` is
        dropped by Serve itself; one whose batch is sampling stops at the next denoising step
        when it runs alone, and its batch stops once every request of the batch is cancelled
        (see ``SoundtrackGenerator.generate_batch``)."""
        now = time.monotonic()
        with self._busy_lock:
            self._cancelled[token] = now
            for t, at in list(self._cancelled.items()):  # tokens of batches that never ran do not pile up
                if now - at > CANCELLED_TTL_S:
                    del self._cancelled[t]

    def _stop_hook(self, token: str | None):
        """``should_stop`` of a request: its token was cancelled (``None``: no hook)."""
        if token is None:
            return None
        return lambda: token in self._cancelled

    async def run_job(self, req: JobRequest) -> JobOutcome:
        """One job of ``POST /v1/jobs`` (not through ``@serve.batch``: a long video is a batch of
        its own): :meth:`~soundtrack.pipelines.generator.SoundtrackGenerator.generate` with the
        job's progress written to the job store after each group of windows and a
        ``should_stop`` hook that reads the job's cancel marker
        (:meth:`~soundtrack.serving.jobs.JobStore.stop_check`) before every window and every
        denoising step. Seeded like ``POST /v1/soundtrack`` unbatched: the same video, seed
        and options give the same soundtrack.

        Runs in a thread so that the replica keeps answering (health checks, :meth:`stats`,
        the batched requests that queue for the model meanwhile).

        Args:
            req: the job.
        """
        return await asyncio.to_thread(self._run_job, req)

    def _run_job(self, req: JobRequest) -> JobOutcome:
        g = self.gen
        t = time.perf_counter()
        n = None

        def progress(done: int, total: int) -> None:
            try:
                self.jobs.write_progress(req.job_id, req.attempt, done, total)
            except Exception as exc:  # progress is news, not the job: a failed write must not fail it
                log.warning("job %s: progress not written (%s)", req.job_id, exc)

        with self._busy():
            try:
                frames = np.array(req.frames)  # a writable copy (Ray hands read-only arrays over)
                cfg = g.sampler_config(**req.overrides)
                n = len(window_starts(len(frames) / g.fps, g.clip_s, cfg.crossfade_s, g.sr))
                progress(0, n)
                wav = g.generate(frames, seed=req.seed, clip_id=req.clip_id, caption=req.caption, progress=progress,
                                 should_stop=self.jobs.stop_check(req.job_id, req.attempt), **req.overrides)
                out = JobOutcome("done", wav, g.sr, None, time.perf_counter() - t, n)
            except GenerationCancelled:
                out = JobOutcome("cancelled", None, g.sr, None, time.perf_counter() - t, n)
            except GeneratorError as exc:  # a bad option or input, or a diverged model: the job fails
                out = JobOutcome("failed", None, g.sr, str(exc), time.perf_counter() - t, n)
        with self._busy_lock:
            self._jobs_ended[out.state] += 1
        log.info("job %s: %s after %.1f s (%s windows)", req.job_id, out.state, out.seconds, n)
        return out

    def _run(self, jobs: list[GenerationJob]) -> list[GenerationOutput]:
        if not self.batching:
            return self._run_one_by_one(jobs)
        t = time.perf_counter()
        # np.array: writable copies (Ray hands read-only arrays over)
        try:
            results = self.gen.generate_batch([
                GenerationRequest(np.array(job.frames), seed=job.seed, clip_id=job.clip_id, caption=job.caption,
                                  overrides=job.overrides, should_stop=self._stop_hook(job.token))
                for job in jobs])
        finally:
            self._forget(jobs)
        # The jobs shared their model calls, so no job has a time of its own: each is given
        # the batch's wall time (s) divided evenly among the jobs.
        seconds = (time.perf_counter() - t) / max(len(jobs), 1)
        return [self._output(r, len(jobs), seconds) for r in results]

    def _output(self, r: Any, batch_size: int, seconds: float) -> GenerationOutput:
        """A job's answer from its waveform, :class:`GeneratorError` or :class:`GenerationCancelled`."""
        if isinstance(r, GenerationCancelled):
            with self._busy_lock:
                self.requests_cancelled += 1
            return GenerationOutput(None, self.gen.sr, "the request was cancelled", batch_size, seconds, cancelled=True)
        if isinstance(r, GeneratorError):
            return GenerationOutput(None, self.gen.sr, str(r), batch_size, seconds)
        return GenerationOutput(r, self.gen.sr, None, batch_size, seconds)

    def _forget(self, jobs: list[GenerationJob]) -> None:
        with self._busy_lock:
            for job in jobs:
                if job.token is not None:
                    self._cancelled.pop(job.token, None)

    def _run_one_by_one(self, jobs: list[GenerationJob]) -> list[GenerationOutput]:
        """``batching=False``: one ``generate`` call per job, each timed on its own (s)."""
        outs = []
        try:
            for job in jobs:
                t = time.perf_counter()
                try:
                    frames = np.array(job.frames)  # a writable copy (Ray hands read-only arrays over)
                    r = self.gen.generate(frames, seed=job.seed, clip_id=job.clip_id, caption=job.caption,
                                          should_stop=self._stop_hook(job.token), **job.overrides)
                except (GeneratorError, GenerationCancelled) as exc:  # a bad option or input: 422; or gone
                    r = exc
                outs.append(self._output(r, len(jobs), time.perf_counter() - t))
        finally:
            self._forget(jobs)
        return outs

    async def generate(self, job: GenerationJob) -> GenerationOutput:
        """The soundtrack of one job of ``POST /v1/soundtrack``, batched with others (:meth:`_batched`).

        When the caller goes away (the client closed its connection: Serve's proxy cancels the
        request and Serve cancels this call), the job's token is marked, so its generation
        stops at the next denoising step instead of running to its end unanswered.

        Args:
            job: the job (its ``token`` is made here when the ingress gave none).
        """
        if job.token is None:
            job = dataclasses.replace(job, token=uuid.uuid4().hex)
        try:
            return await self._batched(job)
        except asyncio.CancelledError:
            self._mark_cancelled(job.token)
            log.info("a caller went away: its generation is cancelled")
            raise

    @serve.batch(max_batch_size=4, batch_wait_timeout_s=0.05)
    async def _batched(self, jobs: list[GenerationJob]) -> list[GenerationOutput]:
        """Soundtracks for a batch of jobs.

        With ``batching`` (the default) the jobs that share their sampler settings go
        through one denoising loop (every model call takes all their windows), each job's
        noise drawn from its own seed and clip id: an output depends on the other jobs of
        the batch only through float rounding, within
        :data:`~soundtrack.pipelines.sampler.BATCH_TOLERANCE` of the job run alone (a job
        whose settings no other job shares runs alone: bit-identical). A job refused for
        its options or frames gets its error; the others run. Without ``batching`` each
        job runs alone and the outputs do not depend on the batch at all.

        The work runs in a thread so that the replica's event loop keeps answering health
        checks and keeps collecting the next batch.

        Args:
            jobs: the batch (``@serve.batch`` collects single calls into this list).
        """
        return await asyncio.to_thread(self._run_busy, jobs)

    def _run_busy(self, jobs: list[GenerationJob]) -> list[GenerationOutput]:
        """:meth:`_run`, counted into ``busy_s``."""
        with self._busy():
            return self._run(jobs)
