"""Held-out quality of the tiny contrastive encoders at three difficulty levels.

    .venv/bin/python benchmarks/pretrain_eval.py [--config experiments/pretrain_tiny.yaml]

Runs (or reuses) ``soundtrack pretrain CONFIG`` (trained on the medium synthetic set's
train split), then builds the easy and hard versions of the same synthetic songs (same
seed, so the test split holds the same clip ids) and featurizes only their test splits.
On each test split it reports P@1/5/10 in pools of 32 (position-aware similarity),
synchronisation accuracy at shifts of 1, 2, 3, 5 and 10 frames (0.1-1 s) with bootstrap
95 % intervals, and the audio-only control (every video replaced by one fixed clip),
which should sit at 0.5. Writes ``benchmarks/results/pretrain.json`` and
``benchmarks/results/pretrain_sync.png``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(ROOT / "experiments" / "pretrain_tiny.yaml"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "pretrain.json"))
    ap.add_argument("--n-boot", type=int, default=1000)
    args = ap.parse_args()

    from soundtrack.env import apply_env_defaults

    apply_env_defaults()
    import torch

    from soundtrack.config import load_config
    from soundtrack.distributed.train_pretrain import evaluate_run
    from soundtrack.stages.data import stage_featurize, stage_synth
    from soundtrack.stages.pretrain import stage_pretrain
    from soundtrack.stages.runs import git_commit
    from soundtrack.storage import read_card

    cfg = load_config(args.config)
    t0 = time.time()
    run = stage_pretrain(cfg, resume=True)
    card = read_card(run)
    pretrain_s = card.get("timings", {}).get("train+eval")
    torch.set_num_threads(os.cpu_count() or 1)

    levels = {}
    for level in ("easy", "medium", "hard"):
        synth = dataclasses.replace(cfg.synth, difficulty=level)
        data = stage_synth(synth, storage=cfg.storage)
        sec = cfg.featurize if level == "medium" else dataclasses.replace(cfg.featurize, splits=("test",))
        feats = stage_featurize(data, sec, storage=cfg.storage)
        ev = evaluate_run(run / "model", feats, run, split="test", overrides={"n_boot": args.n_boot}, name=f"test_{level}")
        levels[level] = {"features": str(feats), **ev["summary"]}
        print(f"{level}: done", file=sys.stderr)

    report = {
        "benchmark": "pretrain",
        "command": f"python benchmarks/pretrain_eval.py --config {os.path.relpath(args.config, ROOT)}",
        "pretrain_command": f"soundtrack pretrain {os.path.relpath(args.config, ROOT)}",
        "commit": git_commit(),
        "machine": {"cores": os.cpu_count(), "load_avg_1_5_15_at_end": list(os.getloadavg())},
        "pretrain_run": str(run),
        "pretrain_wall_s": pretrain_s,
        "trained_on": "medium train split",
        "retrieval_similarity": "position-aware (MuVi); pools of 32 with a fixed seed",
        "levels": levels,
        "headline": {
            lvl: {
                "music_p_at_1": v["music"]["retrieval"]["p_at_1"],
                "music_sync_shift_2": v["music"]["sync"]["shift_2"],
                "music_sync_control_mean": v["music"]["sync_control"]["mean"],
                "sfx_p_at_1": v["sfx"]["retrieval"]["p_at_1"],
                "sfx_sync_shift_2": v["sfx"]["sync"]["shift_2"],
            }
            for lvl, v in levels.items()
        },
        "wall_s": round(time.time() - t0, 1),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    plot(levels, out.with_name("pretrain_sync.png"))
    print(json.dumps(report["headline"], indent=2))


def plot(levels: dict, path: Path) -> None:
    """Sync accuracy against shift for each level (music stream), plus the audio-only control."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from soundtrack.distributed.train_pretrain import _shift_curve

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), dpi=120, sharey=True)
    for ax, stream in zip(axes, ("music", "sfx")):
        for lvl, v in levels.items():
            for key, style in (("sync", "-o"), ("sync_control", ":x")):
                xs, m, lo, hi = _shift_curve(v[stream][key])
                lab = f"{lvl}" + (" (audio-only control)" if key == "sync_control" else "")
                ax.errorbar(np.asarray(xs) / 10.0, m, yerr=[np.subtract(m, lo), np.subtract(hi, m)], fmt=style,
                            capsize=3, label=lab, alpha=0.9 if key == "sync" else 0.5)
        ax.axhline(0.5, color="grey", lw=0.8, ls="--")
        ax.set_xscale("log")
        ax.set_xlabel("shift (s)")
        ax.set_title(f"video vs {stream}: true pair vs shifted copy", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("sync accuracy (95 % CI)")
    axes[0].set_ylim(0, 1.05)
    axes[1].legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    main()
