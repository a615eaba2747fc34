"""Generation speed: real-time factor of DDIM-200 and DPM-Solver++ (20 steps), batch 8.

    .venv/bin/python benchmarks/generate_speed.py [--model train:<run>] [--batch 8]

Counts everything from video frames to waveform: the condition encoders, every guidance
pass (unconditional + video + music + sound effect, batched), the VAE decode and the
vocoder. Real-time factor = seconds of audio produced / seconds of compute (above 1 is
faster than real time). Both samplers run on the same 8 test clips and seeds in this
process, and their outputs are scored with the same onset metrics as
``benchmarks/train_eval.py`` (against the clips' ground-truth video event times), so a
faster sampler is only a win if its numbers hold. Writes
``benchmarks/results/generate.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="model URI (default: the train_tiny run)")
    ap.add_argument("--config", default=str(ROOT / "experiments" / "train_tiny.yaml"))
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "generate.json"))
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from soundtrack.config import load_config
    from soundtrack.data.shards import decode_row, read_shards
    from soundtrack.metrics import bootstrap_ci, onset_sync, onset_times, paired_bootstrap_ci, real_time_factor
    from soundtrack.models.conditioning import video_conditions
    from soundtrack.pipelines.sampler import generate_clips
    from soundtrack.stages.models import load_generator, resolve_model_uri
    from soundtrack.stages.runs import git_commit
    from soundtrack.stages.train import stage_train
    from soundtrack.storage import read_card

    if args.model is None:
        run = stage_train(load_config(args.config), resume=True)
        uri = f"train:{run.name}"
    else:
        uri = args.model
    gen = load_generator(uri)
    model_dir = resolve_model_uri(uri)
    card = read_card(model_dir.parent)
    features = Path(card["upstream"]["features"]["path"])
    df = read_shards(features, split="test", columns=["clip_id", "frames", "label_event_times"])
    rows = [decode_row(r) for r in df.sort_values("clip_id").head(args.batch).to_dict("records")]
    ids = [r["clip_id"] for r in rows]
    frames = np.stack([r["frames"] for r in rows])
    audio_s = len(rows) * gen.clip_s

    results = {}
    wavs = {}
    for name, sched, steps in (("dpmsolver++_20", "dpmsolver++", 20), ("ddim_200", "ddim", 200)):
        cfg = dataclasses.replace(gen.sampler, scheduler=sched, num_steps=steps, batch_invariant=False)
        t = time.time()
        with torch.no_grad():
            conds = video_conditions(gen.encoders, frames, use_text=False)  # (1) encoders
            w = generate_clips(gen.denoiser, gen.vae, gen.vocoder, conds, ids, seed=0, cfg=cfg)  # (2)-(4)
        sec = time.time() - t
        w = np.asarray(w if not torch.is_tensor(w) else w.cpu().numpy(), np.float32)
        wavs[name] = w
        scores = [onset_sync(np.asarray(r["label_event_times"], float), onset_times(w[i], 16000), window=0.1,
                             duration=gen.clip_s) for i, r in enumerate(rows)]
        results[name] = {
            "scheduler": sched, "steps": steps, "batch": len(rows), "seconds": round(sec, 2),
            "real_time_factor": round(real_time_factor(audio_s, sec), 3),
            "guidance_passes_per_step": 1 + len(gen.conditions),
            "f1": {k: round(v, 4) for k, v in zip(("mean", "lo", "hi"), bootstrap_ci([s["f1"] for s in scores], seed=0))},
            "precision_mean": round(float(np.mean([s["precision"] for s in scores])), 4),
            "hit_rate_mean": round(float(np.mean([s["hit_rate"] for s in scores])), 4),
            "onset_rate_mean": round(float(np.mean([s["onset_rate"] for s in scores])), 3),
            "_f1": [s["f1"] for s in scores],
        }
        print(name, results[name]["seconds"], "s, RTF", results[name]["real_time_factor"])
    d = paired_bootstrap_ci(results["dpmsolver++_20"].pop("_f1"), results["ddim_200"].pop("_f1"), seed=0)
    report = {
        "benchmark": "generate",
        "command": "python benchmarks/generate_speed.py" + (f" --model {args.model}" if args.model else ""),
        "commit": git_commit(),
        "machine": {"cores": os.cpu_count(), "load_avg_1_5_15_at_end": list(os.getloadavg()), "torch_threads": args.threads},
        "model": uri,
        "audio_seconds_per_run": audio_s,
        "counted": "video frames -> condition encoders -> guided denoising (uncond + each condition) -> VAE decode -> vocoder",
        "vocoder": "griffinlim",
        "results": results,
        "f1_dpm20_minus_ddim200": {"mean": round(d[0], 4), "ci95": [round(d[1], 4), round(d[2], 4)], "n": len(rows)},
        "speedup_dpm20_over_ddim200": round(results["ddim_200"]["seconds"] / results["dpmsolver++_20"]["seconds"], 2),
    }
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(json.dumps({k: report[k] for k in ("speedup_dpm20_over_ddim200", "f1_dpm20_minus_ddim200")}, indent=2))


if __name__ == "__main__":
    main()
