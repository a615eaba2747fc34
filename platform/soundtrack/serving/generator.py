"""The generator deployment: one model behind ``@serve.batch`` (the only serving module that imports torch)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ray import serve

from soundtrack.pipelines.generator import GenerationRequest, GeneratorError
from soundtrack.pipelines.sampler import BATCH_TOLERANCE
from soundtrack.serving.limits import GENERATOR_NAME
from soundtrack.serving.options import GenerationJob, GenerationOutput
from soundtrack.stages.models import load_generator, resolve_model_uri


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
        self.generate.set_max_batch_size(int(max_batch_size))
        self.generate.set_batch_wait_timeout_s(float(batch_wait_timeout_s))
        self.max_batch_size = int(max_batch_size)
        self.batch_wait_timeout_s = float(batch_wait_timeout_s)
        self.batching = bool(batching)

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

    def _run(self, jobs: list[GenerationJob]) -> list[GenerationOutput]:
        if not self.batching:
            return self._run_one_by_one(jobs)
        t = time.perf_counter()
        # np.array: writable copies (Ray hands read-only arrays over)
        results = self.gen.generate_batch([
            GenerationRequest(np.array(job.frames), seed=job.seed, clip_id=job.clip_id, caption=job.caption,
                              overrides=job.overrides)
            for job in jobs])
        # The jobs shared their model calls, so no job has a time of its own: each is given
        # the batch's wall time (s) divided evenly among the jobs.
        seconds = (time.perf_counter() - t) / max(len(jobs), 1)
        return [GenerationOutput(None, self.gen.sr, str(r), len(jobs), seconds) if isinstance(r, GeneratorError)
                else GenerationOutput(r, self.gen.sr, None, len(jobs), seconds) for r in results]

    def _run_one_by_one(self, jobs: list[GenerationJob]) -> list[GenerationOutput]:
        """``batching=False``: one ``generate`` call per job, each timed on its own (s)."""
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
        return await asyncio.to_thread(self._run, jobs)
