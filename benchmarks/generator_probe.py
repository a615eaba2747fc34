"""Speed of the tiny generator and the epsilon-vs-v probe on the CCCG beta schedule.

    .venv/bin/python benchmarks/generator_probe.py [--threads 1] [--probe-steps 300]

Writes ``benchmarks/results/generator_probe.json``. Two parts, one process:

* ``speed``: the tiny profile (denoiser over a 4 x 16 x 64 latent, VAE over a 64 x 256 mel)
  with ``--threads`` intra-op threads: one training step at batch 8 (diffusion loss with
  condition dropout, backward, AdamW), one denoiser forward at batch 1 and 8, one guided
  forward of one clip (unconditional + video + music + sfx passes), a 20-step guided
  DPM-Solver++ sample of one clip, a VAE training step at batch 8, a VAE decode and a
  Griffin-Lim inversion of one 10.24 s clip. Min and median of ``--repeats`` runs.
* ``probe``: two tiny denoisers, identical except for ``prediction_type`` (epsilon, v),
  trained ``--probe-steps`` steps (batch 8, AdamW 2e-3) on the same 32 smooth unit-variance
  latents with a per-clip video condition; then, on the same noise, the RMS error of the
  model output and of the implied clean latent at t = 999, 900, 500, 100, and the
  statistics of 8 latents sampled with 20 DPM-Solver++ steps (data: std 1). The analytic
  x0 error gain at t = 999 (197.3 for epsilon, 1.0 for v) is reported beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _timed(fn, repeats: int) -> dict:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return {"min_s": round(min(times), 4), "median_s": round(statistics.median(times), 4)}


def speed(repeats: int) -> dict:
    """Timings of the tiny profile (see module docstring)."""
    import numpy as np
    import torch

    from soundtrack.losses.diffusion import condition_dropout_mask, diffusion_loss
    from soundtrack.losses.vae import vae_loss
    from soundtrack.models.unet import Conditions, DenoiserConfig, SoundtrackDenoiser, count_parameters
    from soundtrack.models.vae import build_vae, decode_mel
    from soundtrack.models.vocoder import GriffinLimVocoder
    from soundtrack.pipelines.guidance import guided_prediction
    from soundtrack.pipelines.sampler import SamplerConfig, sample_latents
    from soundtrack.pipelines.schedulers import training_scheduler

    torch.manual_seed(0)
    cfg = DenoiserConfig.tiny()
    den = SoundtrackDenoiser(cfg)
    vae = build_vae("tiny")
    b = 8
    gen = torch.Generator().manual_seed(0)
    conds = Conditions(video=torch.randn(b, 103, 64, generator=gen), music=torch.randn(b, 103, 512, generator=gen),
                       sfx=torch.randn(b, 103, 512, generator=gen))
    lat = torch.randn(b, *((cfg.latent_channels,) + tuple(cfg.latent_hw)), generator=gen)
    sched = training_scheduler(cfg.prediction_type)
    opt = torch.optim.AdamW(den.parameters(), 1e-4)
    rng = np.random.default_rng(0)

    def train_step():
        loss = diffusion_loss(den, sched, lat, conds, drop_mask=condition_dropout_mask(b, conds, rng))
        opt.zero_grad()
        loss.backward()
        opt.step()

    vopt = torch.optim.AdamW(vae.parameters(), 1e-4)
    mel = torch.randn(b, 64, 256, generator=gen) - 5.0

    def vae_step():
        loss, _ = vae_loss(vae, mel)
        vopt.zero_grad()
        loss.backward()
        vopt.step()

    train_step()
    vae_step()  # warm-up (oneDNN primitive creation)
    out = {
        "denoiser_parameters": count_parameters(den),
        "unet_parameters": count_parameters(den.unet),
        "vae_parameters": count_parameters(vae),
        "latent": [cfg.latent_channels, *cfg.latent_hw],
        "train_step_b8": _timed(train_step, repeats),
        "vae_train_step_b8": _timed(vae_step, repeats),
    }
    den.eval()
    vae.eval()
    c1, x1 = conds.select([0]), lat[:1]
    gl = GriffinLimVocoder(vae.mel)
    with torch.no_grad():
        out["forward_b1"] = _timed(lambda: den(x1, 500, c1), repeats)
        out["forward_b8"] = _timed(lambda: den(lat, 500, conds), repeats)
        out["guided_forward_1clip_4passes"] = _timed(lambda: guided_prediction(den, x1, 500, c1, 2.5), repeats)
        out["sample_20step_dpmpp_guided_1clip"] = _timed(
            lambda: sample_latents(den, c1, ["a"], 0, SamplerConfig()), max(2, repeats // 2))
        out["vae_decode_1clip"] = _timed(lambda: decode_mel(vae, x1), repeats)
        out["griffinlim_32iter_1clip"] = _timed(lambda: gl(mel[:1]), max(2, repeats // 2))
    return out


def probe(steps: int) -> dict:
    """The epsilon-vs-v probe (see module docstring)."""
    import torch
    import torch.nn.functional as F

    from soundtrack.losses.diffusion import diffusion_loss
    from soundtrack.models.unet import Conditions, DenoiserConfig, SoundtrackDenoiser
    from soundtrack.pipelines.sampler import SamplerConfig, sample_latents
    from soundtrack.pipelines.schedulers import alphas_cumprod, training_scheduler, x0_error_gain

    g = torch.Generator().manual_seed(0)
    n = 32
    x0 = F.avg_pool2d(torch.randn(n, 4, 10, 34, generator=g), 3, 1)  # smooth 4 x 8 x 32 fields
    x0 = (x0 - x0.mean()) / x0.std()
    conds = Conditions(video=torch.randn(n, 103, 64, generator=g))
    ab = alphas_cumprod().float()
    result: dict = {"steps": steps, "x0_gain_t999": {}}
    for pt in ("epsilon", "v_prediction"):
        result["x0_gain_t999"][pt] = round(x0_error_gain(999, pt), 3)
        torch.manual_seed(0)
        cfg = DenoiserConfig.tiny(latent_hw=(8, 32), prediction_type=pt, token_sources=("video",),
                                  fusion_sources=("video",))
        den = SoundtrackDenoiser(cfg)
        sched = training_scheduler(pt)
        opt = torch.optim.AdamW(den.parameters(), 2e-3)
        gg = torch.Generator().manual_seed(1)
        t0 = time.perf_counter()
        for _ in range(steps):
            idx = torch.randint(0, n, (8,), generator=gg)
            loss = diffusion_loss(den, sched, x0[idx], conds.select(idx.tolist()), generator=gg)
            opt.zero_grad()
            loss.backward()
            opt.step()
        train_s = time.perf_counter() - t0
        den.eval()
        errs = {}
        with torch.no_grad():
            noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(7))
            for t in (999, 900, 500, 100):
                tt = torch.full((n,), t)
                xt = sched.add_noise(x0, noise, tt)
                y = den(xt, tt, conds)
                a, s = ab[t].sqrt(), (1 - ab[t]).sqrt()
                if pt == "epsilon":
                    target, x0_hat = noise, (xt - s * y) / a
                else:
                    target, x0_hat = sched.get_velocity(x0, noise, tt), a * xt - s * y
                errs[str(t)] = {"output_rms_err": round((y - target).pow(2).mean().sqrt().item(), 4),
                                "x0_rms_err": round((x0_hat - x0).pow(2).mean().sqrt().item(), 4)}
            lat = sample_latents(den, conds.select(list(range(8))), [str(i) for i in range(8)], 0,
                                 SamplerConfig(num_steps=20, guidance_scale=1.0))
        result[pt] = {"train_s": round(train_s, 1), "final_loss": round(loss.item(), 4), "errors_by_t": errs,
                      "sampled_std": round(lat.std().item(), 3), "sampled_max_abs": round(lat.abs().max().item(), 2)}
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--probe-steps", type=int, default=300)
    ap.add_argument("--skip-probe", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "generator_probe.json"))
    args = ap.parse_args()

    import torch

    from soundtrack.stages.runs import git_commit

    torch.set_num_threads(args.threads)
    report = {
        "benchmark": "generator_probe",
        "command": f"benchmarks/generator_probe.py --threads {args.threads} --repeats {args.repeats} "
                   f"--probe-steps {args.probe_steps}",
        "commit": git_commit(),
        "machine": {"cores": os.cpu_count(), "threads": args.threads, "python": platform.python_version(),
                    "processor": platform.machine(), "load_avg_1m_at_start": round(os.getloadavg()[0], 2)},
        "speed": speed(args.repeats),
    }
    if not args.skip_probe:
        report["probe"] = probe(args.probe_steps)
    report["machine"]["load_avg_1m_at_end"] = round(os.getloadavg()[0], 2)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
