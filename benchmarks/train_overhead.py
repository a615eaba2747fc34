"""Overhead of the Ray Train loop: steady-state steps/s against the same loop in plain PyTorch.

    .venv/bin/python benchmarks/train_overhead.py [--steps 60] [--batch 16] [--threads 1]

Both sides run the pretraining step of ``soundtrack.distributed.train_pretrain`` (same model, same
loss, same batch size, same torch thread count) on the featurized demo set:

* ``plain``: a Python loop in this process over batches built beforehand with the same
  :class:`BatchPrep` (so it times the optimiser step alone);
* ``ray_train``: ``TorchTrainer`` with one worker (1 CPU, the same thread count), data
  streamed through Ray Data with batches built by a Ray Data actor beside it, as
  ``soundtrack pretrain`` runs.

Steady state: the first ``--warmup`` steps are dropped on both sides; the Ray side's rate
comes from its own per-step timestamps (``metrics.jsonl``). Writes
``benchmarks/results/train_overhead.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(ROOT / "experiments" / "pretrain_tiny.yaml"))
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "train_overhead.json"))
    args = ap.parse_args()

    import torch

    from soundtrack.config import load_config
    from soundtrack.data.augment import objective_config
    from soundtrack.data.shards import read_shards
    from soundtrack.distributed.batches import BatchPrep
    from soundtrack.distributed.train_pretrain import model_config
    from soundtrack.losses.contrastive import contrastive_loss
    from soundtrack.models.encoders import ContrastiveConfig, build_contrastive
    from soundtrack.solvers.contrastive import ContrastiveSolver, to_torch_batch
    from soundtrack.stages.data import features_for
    from soundtrack.stages.runs import git_commit, read_metrics

    cfg = load_config(args.config)
    sec = dataclasses.replace(cfg.pretrain, steps=args.steps, batch_size=args.batch, log_every=1,
                              checkpoint_every=10**6, torch_threads=args.threads, warmup_steps=2)
    features = features_for(cfg, None)
    mcfg = model_config(cfg.profile, sec.model)

    # plain PyTorch: the same step on batches built beforehand
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    df = read_shards(features, split="train", columns=["clip_id", "source_id", "caption", "frames", "wav_music",
                                                       "wav_sfx", "beat_times"])
    prep = BatchPrep(sec.objective, 0)
    batches = [to_torch_batch(prep(df.iloc[(i * args.batch) % (len(df) - args.batch):][: args.batch]))
               for i in range(args.steps)]
    model = build_contrastive(ContrastiveConfig.from_dict(mcfg.to_dict()))
    opt = ContrastiveSolver({"section": dataclasses.asdict(sec), "model": mcfg.to_dict(), "objective": sec.objective},
                            ".").build_optimizer(model)
    ocfg = objective_config(sec.objective)
    stamps = []
    for b in batches:
        loss, _ = contrastive_loss(model, b, ocfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        stamps.append(time.time())
    plain = (args.steps - args.warmup - 1) / (stamps[-1] - stamps[args.warmup])

    # Ray Train: the real loop, one worker
    from soundtrack.distributed.cluster import init_ray
    from soundtrack.distributed.train_pretrain import run_pretrain

    init_ray(num_cpus=os.cpu_count())
    with tempfile.TemporaryDirectory() as d:
        t0 = time.time()
        run_pretrain(cfg.profile, dataclasses.replace(sec, num_workers=1, cpus_per_worker=1.0, eval_split="val"),
                     features, Path(d) / "run")
        wall = time.time() - t0
        recs = [r for r in read_metrics(Path(d) / "run") if r.get("step")]
    ts = [r["time"] for r in sorted(recs, key=lambda r: r["step"])]
    ray_rate = (len(ts) - args.warmup - 1) / (ts[-1] - ts[args.warmup])
    report = {
        "benchmark": "train_overhead",
        "command": f"python benchmarks/train_overhead.py --steps {args.steps} --batch {args.batch} --threads {args.threads}",
        "commit": git_commit(),
        "machine": {"cores": os.cpu_count(), "load_avg_1_5_15_at_end": list(os.getloadavg())},
        "torch_threads": args.threads,
        "batch_size": args.batch,
        "steps": args.steps,
        "warmup_steps_dropped": args.warmup,
        "plain_steps_per_s": round(plain, 4),
        "ray_train_steps_per_s": round(ray_rate, 4),
        "ray_over_plain": round(ray_rate / plain, 4),
        "ray_fit_wall_s_incl_startup_and_eval": round(wall, 1),
        "note": "plain times the optimiser step on pre-built batches; ray_train includes streaming the batches, which "
                "one Ray Data actor builds beside the trainer (crops, negatives, mels: about as costly as the step on "
                "one core). A ratio below 1 means the loop waited for data or for Ray; see the README.",
    }
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(json.dumps({k: report[k] for k in ("plain_steps_per_s", "ray_train_steps_per_s", "ray_over_plain")}))


if __name__ == "__main__":
    main()
