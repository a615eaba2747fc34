"""Training-step cost of tiny UNet layouts for the 4 x 16 x 64 and 4 x 32 x 128 latents.

    .venv/bin/python benchmarks/unet_step.py [--threads 1] [--out benchmarks/results/unet_step.json]

One forward + backward + AdamW step at batch 8 with the three video-derived conditions
(40 frames), for: the earlier tiny UNet on its 16 x 64 latent (channels (32, 64, 64),
attention at the two lower levels); the same UNet on the 32 x 128 latent; and the tiny
profile's UNet now (channels (16, 32, 64, 64), attention at the two lowest levels, whose
token grids are the earlier ones'). Mean of 4 timed steps after 2 warm-up steps; the ratio
to the first layout, measured in the same process, is the number to read.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

from soundtrack.models.unet import Conditions, DenoiserConfig, SoundtrackDenoiser, count_parameters

ROOT = Path(__file__).resolve().parents[1]
LAYOUTS = {
    "earlier_16x64": {"latent_hw": (16, 64), "block_out_channels": (32, 64, 64), "attention_levels": (False, True, True)},
    "earlier_unet_on_32x128": {"latent_hw": (32, 128), "block_out_channels": (32, 64, 64),
                               "attention_levels": (False, True, True)},
    "tiny_now_32x128": {},  # the tiny profile's preset
}


def step_seconds(overrides: dict, warmup: int = 2, timed: int = 4) -> tuple[float, int]:
    """Mean seconds of one training step of a layout, and its parameter count."""
    torch.manual_seed(0)
    cfg = DenoiserConfig.tiny(**overrides)
    model = SoundtrackDenoiser(cfg)
    opt = torch.optim.AdamW(model.parameters(), 1e-3)
    h, w = cfg.latent_hw
    x = torch.randn(8, cfg.latent_channels, h, w)
    conds = Conditions(video=torch.randn(8, 40, cfg.video_dim), music=torch.randn(8, 40, cfg.music_dim),
                       sfx=torch.randn(8, 40, cfg.sfx_dim))
    times = []
    for i in range(warmup + timed):
        t0 = time.perf_counter()
        loss = model(x, torch.randint(0, 1000, (8,)), conds).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return sum(times) / len(times), count_parameters(model)


def main(argv: list[str] | None = None) -> int:
    """The measurement of the module docstring; ``argv`` as on the command line."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "unet_step.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    report = {"command": " ".join(["python", *sys.argv]) if argv is None else " ".join(argv),
              "threads": args.threads, "batch": 8, "load_avg_1_5_15_start": list(os.getloadavg()), "layouts": {}}
    for name, ov in LAYOUTS.items():
        s, n = step_seconds(ov)
        report["layouts"][name] = {"overrides": {k: list(v) for k, v in ov.items()}, "step_s": s, "params": n}
    base = report["layouts"]["earlier_16x64"]["step_s"]
    for v in report["layouts"].values():
        v["ratio_to_earlier"] = v["step_s"] / base
    report["load_avg_1_5_15_end"] = list(os.getloadavg())
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
