"""Scaling of the Ray Train loop: steps/s of 1 vs 2 workers on a local multi-node cluster,
the Ray Train loop vs the same solver in plain PyTorch, and (``--device cuda``) a
paper-profile step on a GPU.

    .venv/bin/python benchmarks/train_scaling.py [--steps 40] [--warmup 8] [--batch 4] [--nodes 3]
    .venv/bin/python benchmarks/train_scaling.py --device cuda      # adds the paper-profile GPU step

What runs, all in this one script and process (the driver):

* ``plain``: the diffusion solver (:class:`soundtrack.solvers.diffusion.DiffusionSolver`,
  the tiny profile's denoiser) in this process with a ``LocalReporter`` over in-memory
  latent-cache rows (synthetic, shaped like the tiny profile's cache), 1 torch thread;
* ``ray_1`` / ``ray_2``: the same solver and rows through
  :func:`soundtrack.distributed.train.launch` on a ``ray.cluster_utils.Cluster`` of
  ``--nodes`` 1-CPU nodes (plus a 0-CPU head that only schedules), 1 and 2 workers
  (``SPREAD``, one per node; 2 workers train through DDP over gloo), the rows as a Ray
  Data stream. The per-worker batch stays ``--batch``: 2 workers take twice the rows per
  step (weak scaling), so ``samples_per_s`` is the throughput to compare.

Rates are steady-state: the first ``--warmup`` steps are dropped, the rest timed from the
solver's own per-step timestamps in ``metrics.jsonl`` (rank 0). A fit's fixed cost (Ray
Train start-up, ~20 s) is reported apart (``wall_s``).

The cluster's nodes are processes on this machine: on 2 physical cores, 3 nodes of 1 CPU
oversubscribe the cores (Ray Data's reads share them with the workers), so the 2-worker
speed-up here is a floor of what separate machines give. Writes
``benchmarks/results/train_scaling.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("train_scaling")
TOKENS = 103  # 10.24 s of video at 10 fps


def cache_rows(n: int, latent: tuple[int, int, int], dims: dict[str, int], seed: int = 0) -> dict[str, np.ndarray]:
    """Synthetic latent-cache rows in the shard codec (float32 bytes + shapes, shots as JSON)."""
    rng = np.random.default_rng(seed)

    def col(shape):
        xs = [rng.standard_normal(shape).astype(np.float32) for _ in range(n)]
        return np.asarray([x.tobytes() for x in xs], dtype=object), np.asarray([list(shape)] * n)

    out: dict[str, np.ndarray] = {}
    shapes = {"latents": latent, "video": (TOKENS, dims["video"]), "music": (TOKENS, dims["music"]),
              "sfx": (TOKENS, dims["sfx"])}
    for name, shape in shapes.items():
        out[name], out[name + "__shape"] = col(shape)
    out["shots"] = np.asarray([json.dumps([0.0])] * n, dtype=object)
    return out


def solver_config(profile: str, steps: int, batch: int, precision: str = "fp32") -> tuple[dict, dict]:
    """The diffusion solver's config for ``profile``'s denoiser, and the cache dims it reads."""
    from soundtrack.config import TrainSection, to_dict
    from soundtrack.models.unet import DenoiserConfig

    base = DenoiserConfig.preset(profile)
    embed = 64 if profile == "tiny" else 512
    den = dataclasses.replace(base, music_dim=embed, sfx_dim=embed, text_dim=embed,
                              token_sources=tuple(s for s in base.token_sources if s != "text"))
    sec = TrainSection(unet_steps=steps, batch_size=batch, warmup_steps=1, log_every=1, checkpoint_every=10**6,
                       torch_threads=1, precision=precision)
    dims = {"video": den.video_dim, "music": embed, "sfx": embed, "latent": (den.latent_channels, *den.latent_hw)}
    return {"section": to_dict(sec), "denoiser": dataclasses.asdict(den)}, dims


def steady_rate(metrics_path: Path, warmup: int) -> dict:
    """Steps/s after ``warmup`` steps from the per-step timestamps of a metrics log."""
    recs = [json.loads(ln) for ln in metrics_path.read_text().splitlines() if ln.strip()]
    recs = [r for r in recs if r.get("step") is not None]
    timed = [r for r in recs if r["step"] >= warmup]
    if len(timed) < 2:
        return {"steps_timed": 0, "steps_per_s": None}
    dt = timed[-1]["time"] - timed[0]["time"]
    n = timed[-1]["step"] - timed[0]["step"]
    return {"steps_timed": n, "steps_per_s": round(n / dt, 4) if dt > 0 else None,
            "s_per_step": round(dt / n, 4) if n else None}


def run_plain(cfg: dict, rows: dict, batch: int, out: Path, warmup: int) -> dict:
    from soundtrack.solvers.base import LocalReporter, numpy_batches
    from soundtrack.solvers.diffusion import DiffusionSolver

    t = time.time()
    DiffusionSolver(cfg, out).fit(numpy_batches(rows, batch, seed=0), LocalReporter(out / "ckpt"))
    return {**steady_rate(out / "metrics.jsonl", warmup), "wall_s": round(time.time() - t, 1)}


def run_ray(cfg: dict, rows: dict, batch: int, workers: int, steps: int, out: Path, warmup: int) -> dict:
    import pandas as pd
    import ray

    from soundtrack.distributed.train import launch, repeat_stream

    n = len(rows["shots"])
    ds = ray.data.from_pandas(pd.DataFrame({k: list(v) for k, v in rows.items()})).materialize()
    stream = repeat_stream(ds, steps * batch * workers, n)
    t = time.time()
    launch("diffusion", cfg, out, datasets={"train": stream}, num_workers=workers, cpus_per_worker=1.0,
           max_failures=0, placement_strategy="SPREAD")
    starts = [json.loads(ln) for ln in (out / "starts.jsonl").read_text().splitlines()]
    return {**steady_rate(out / "metrics.jsonl", warmup), "wall_s": round(time.time() - t, 1),
            "workers": workers, "pids": sorted({s["pid"] for s in starts})}


def gpu_step(steps: int, batch: int, precision: str) -> dict:
    """A paper-profile UNet step on CUDA: seconds per step and peak memory."""
    import torch

    if not torch.cuda.is_available():
        return {"status": "not measured: no GPU"}
    from soundtrack.solvers.base import LocalReporter, numpy_batches
    from soundtrack.solvers.diffusion import DiffusionSolver

    cfg, dims = solver_config("paper", steps, batch, precision)
    rows = cache_rows(2 * batch, dims["latent"], dims)
    with tempfile.TemporaryDirectory() as d:
        torch.cuda.reset_peak_memory_stats()
        DiffusionSolver(cfg, d).fit(numpy_batches(rows, batch, seed=0), LocalReporter(Path(d) / "ckpt", device="cuda"))
        rate = steady_rate(Path(d) / "metrics.jsonl", min(3, steps - 2))
    return {"status": "measured", "device": torch.cuda.get_device_name(), "profile": "paper", "batch": batch,
            "precision": precision, **rate, "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=8)
    ap.add_argument("--batch", type=int, default=4, help="rows per step per worker")
    ap.add_argument("--nodes", type=int, default=3, help="1-CPU nodes of the local cluster")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                    help="cuda: also time a paper-profile step on the GPU")
    ap.add_argument("--gpu-steps", type=int, default=20)
    ap.add_argument("--gpu-batch", type=int, default=8)
    ap.add_argument("--gpu-precision", default="bf16", choices=["fp32", "bf16", "fp16"])
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "train_scaling.json"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    import ray
    import torch
    from ray.cluster_utils import Cluster

    from soundtrack.stages.runs import git_commit

    torch.set_num_threads(1)
    cfg, dims = solver_config("tiny", args.steps, args.batch)
    rows = cache_rows(4 * args.batch, dims["latent"], dims)
    result: dict = {"what": "diffusion solver (tiny denoiser), steady-state steps/s", "steps": args.steps,
                    "warmup_steps_dropped": args.warmup, "batch_per_worker": args.batch, "torch_threads": 1,
                    "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                "torch": torch.__version__, "ray": ray.__version__},
                    "commit": git_commit()}
    with tempfile.TemporaryDirectory(prefix="scaling") as tmp:
        tmp = Path(tmp)
        log.info("plain PyTorch in this process")
        result["plain"] = run_plain(cfg, rows, args.batch, tmp / "plain", args.warmup)
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
        for _ in range(args.nodes):
            cluster.add_node(num_cpus=1)
        ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False)
        cluster.wait_for_nodes()
        result["cluster"] = {"nodes": args.nodes, "cpus_per_node": 1, "head_cpus": 0,
                             "note": f"{args.nodes} Ray nodes as processes on one machine of {os.cpu_count()} cores"}
        try:
            for w in (1, 2):
                log.info("Ray Train, %d worker(s)", w)
                result[f"ray_{w}"] = run_ray(cfg, rows, args.batch, w, args.steps, tmp / f"ray{w}", args.warmup)
        finally:
            ray.shutdown()
            cluster.shutdown()
    plain, r1, r2 = (result[k]["steps_per_s"] for k in ("plain", "ray_1", "ray_2"))
    for k in ("plain", "ray_1", "ray_2"):
        sps = result[k]["steps_per_s"]
        result[k]["samples_per_s"] = round(sps * args.batch * (2 if k == "ray_2" else 1), 3) if sps else None
    result["ray_1_over_plain"] = round(r1 / plain, 3) if plain and r1 else None
    result["ray_2_over_ray_1_samples"] = (round(result["ray_2"]["samples_per_s"] / result["ray_1"]["samples_per_s"], 3)
                                          if r1 and r2 else None)
    result["gpu"] = gpu_step(args.gpu_steps, args.gpu_batch, args.gpu_precision) if args.device == "cuda" else {
        "status": "not measured: no GPU" if not torch.cuda.is_available() else "not measured: run with --device cuda"}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    log.info("wrote %s: plain %s, ray 1 worker %s, 2 workers %s steps/s", args.out, plain, r1, r2)


if __name__ == "__main__":
    main()
