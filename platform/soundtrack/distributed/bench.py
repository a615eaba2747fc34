"""The bench's fan-out: one Ray task per (method, chunk of clips), results as they finish."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

import ray

from soundtrack.distributed.cluster import init_ray
from soundtrack.eval.bench import run_chunk

log = logging.getLogger(__name__)


def run_chunks(tasks: Sequence[tuple[str, list[dict], str | None, Mapping[str, Any], str]], rows: Mapping[str, dict],
               cpus_per_task: float = 1.0, progress: bool = True, what: str = "",
               scoring: Mapping[str, Any] | None = None, gpus_per_task: float = 0.0) -> dict[str, list[dict]]:
    """Run :func:`soundtrack.eval.bench.run_chunk` for every task as Ray tasks.

    Args:
        tasks: ``(method key, jobs, model dir, sampler overrides, cache dir)`` per task.
        rows: the decoded clip rows by clip id (put in the object store once).
        cpus_per_task: CPUs each task reserves.
        progress: log a line per finished task.
        what: a description of the grid for the first progress line.
        scoring: the bench's analysers (``BenchConfig.scoring``), for every task.
        gpus_per_task: GPUs each task reserves (> 0: its generator runs on CUDA).

    Returns:
        The per-job records of every task, by method key.
    """
    t0 = time.time()
    init_ray()
    rows_ref = ray.put(dict(rows))
    remote = ray.remote(num_cpus=cpus_per_task, num_gpus=gpus_per_task)(run_chunk)
    device = "cuda" if gpus_per_task > 0 else "cpu"
    pending = {}
    for key, jobs, model_dir, sampler, cache in tasks:
        pending[remote.remote(jobs, model_dir, sampler, cache, rows_ref, scoring=dict(scoring or {}),
                              device=device)] = (key, len(jobs))
    n_jobs = sum(n for _, n in pending.values())
    if progress:
        log.info("bench: %d (method, clip, seed) samples in %d Ray tasks (%s)", n_jobs, len(pending), what)
    results: dict[str, list[dict]] = {}
    done = 0
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        key, n = pending.pop(ready[0])
        recs = ray.get(ready[0])
        results.setdefault(key, []).extend(recs)
        done += n
        if progress:
            cached = sum(r["cached"] for r in recs)
            log.info("bench: %d/%d samples (%.0f %%), %.0f s; %s: %d done (%d from cache)",
                     done, n_jobs, 100 * done / max(n_jobs, 1), time.time() - t0, key, n, cached)
    return results
