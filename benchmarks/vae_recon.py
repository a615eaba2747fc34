"""Does the tiny mel VAE keep the music? Reconstruction quality of candidate latents.

    .venv/bin/python benchmarks/vae_recon.py --features /tmp/demo13/features/<run> \
        [--steps-scale 1.0] [--clips 32] [--split val] [--out benchmarks/results/vae_recon.json]

Groundwork for the issue "Sound quality: a latent that keeps the music". Each candidate
VAE is trained in this process with the project's own :class:`soundtrack.solvers.vae.VAESolver`
(``solver_class("vae")``, a :class:`~soundtrack.solvers.base.LocalReporter`, in-memory
:func:`~soundtrack.solvers.base.numpy_batches` of the train split: exactly the
``num_workers: 0`` path of ``distributed/train_generator._run_phase``; no Ray), on the
``mel_mix`` column (``train.target: mix``), with the tiny profile's train settings
(batch 8, kl_weight 1e-4, seed 0; steps and learning rate per candidate) and ``--threads``
torch threads. Candidates:

* ``old_4x_300``: the tiny VAE before this benchmark (channels (16, 32, 64): two
  down-samplings, a 4 x 16 x 64 latent, 4x fewer numbers than the mel), its 300 steps at
  lr 1e-3;
* ``old_4x_900``: the same trained 3x longer (is it under-trained?);
* ``old_4x_c8_900``: the same with 8 latent channels, 900 steps (more channels);
* ``tiny``: the tiny profile's VAE now (:func:`soundtrack.models.vae.vae_config`: channels
  (16, 32), ONE down-sampling, a 4 x 32 x 128 latent; ``train.vae_steps`` 450 at lr 3e-3
  from ``profiles/tiny.yaml``): less compression;
* ``demo``: the same VAE at ``experiments/demo.yaml``'s ``vae_steps``.

Measured on held-out clips (``--split``, default ``val``; the first ``--clips`` by clip id,
:func:`soundtrack.data.shards.load_split`):

* ``l1``, ``chroma_agreement``, ``onset_f1`` and the vocoder ``ceiling`` (the input mel ->
  Griffin-Lim, no VAE, on the same clips in the same run): the definitions of
  :mod:`soundtrack.eval.reconstruction` (the train stage's VAE check uses the same code);
* ``train_s`` (wall time of ``fit``) and ``params``.

The ``paper`` VAE's parameter count and the time of ``--paper-steps`` training steps at
batch ``--paper-batch`` on a 128 x 1024 mel are recorded as well; its quality needs a GPU
and is "not measured".

Writes the JSON (``--out``, rewritten after every candidate) and a figure beside it
(``vae_recon.png``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform as pyplatform
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("vae_recon")

#: Aims from the issue.
AIM_CHROMA_OF_CEILING = 0.9
AIM_ONSET_F1 = 0.9
ONSET_WINDOW_S = 0.05
#: The tiny VAE before this benchmark chose the current one.
OLD_4X = {"block_out_channels": (16, 32, 64)}


def _git_commit() -> str:
    """``git rev-parse HEAD`` of the repository (``"unknown"`` outside git)."""
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _params(model) -> int:
    """Number of parameters of a torch module."""
    return int(sum(p.numel() for p in model.parameters()))


def train_candidate(features: str, overrides: dict[str, Any], steps: int, lr: float, threads: int,
                    work: Path) -> tuple[Any, dict]:
    """Trains one tiny-profile VAE with ``VAESolver`` in this process (``LocalReporter``, no Ray).

    Args:
        features: the featurize run (its ``train`` split is read).
        overrides: ``build_vae`` overrides of the tiny config.
        steps: optimiser steps.
        lr: learning rate (AdamW, the solver's warm-up and cosine decay).
        threads: torch threads.
        work: scratch directory of this candidate (checkpoints, metrics).

    Returns:
        ``(vae, info)`` with the trained :class:`~soundtrack.models.vae.MelVAE` (eval mode)
        and ``{"train_s", "final_loss", "steps"}``.
    """
    from soundtrack.config import TrainSection, to_dict
    from soundtrack.data.shards import read_shards
    from soundtrack.models.vae import load_vae
    from soundtrack.solvers import solver_class
    from soundtrack.solvers.base import LocalReporter, numpy_batches

    sec = TrainSection(features=features, vae=overrides, vae_steps=steps, vae_batch_size=8, vae_lr=lr,
                       kl_weight=1e-4, num_workers=0, torch_threads=threads, checkpoint_every=max(steps, 1),
                       log_every=max(steps // 5, 1), seed=0)
    frame = read_shards(features, split="train", columns=[f"mel_{sec.target}"])
    columns = {c: frame[c].to_numpy() for c in frame.columns}
    solver = solver_class("vae")({"section": to_dict(sec), "profile": "tiny", "vae": overrides}, work)
    reporter = LocalReporter(work / "checkpoints", keep=1)
    t0 = time.perf_counter()
    result = solver.fit(numpy_batches(columns, solver.batch_size, seed=solver.seed), reporter)
    train_s = time.perf_counter() - t0
    vae = load_vae(reporter.latest() / solver.model_subdir).eval()
    return vae, {"train_s": round(train_s, 1), "final_loss": float(result["loss"]), "steps": steps}


def evaluate(clips, vae) -> dict[str, Any]:
    """All reconstruction numbers of one VAE (:func:`soundtrack.eval.reconstruction.reconstruction_quality`)."""
    from soundtrack.eval.reconstruction import reconstruction_quality

    q = reconstruction_quality(vae, clips)
    return {k: q[k] for k in ("l1", "chroma_agreement", "onset_f1", "latent_shape", "latent_numbers_per_mel_number",
                              "eval_s")}


def paper_timing(features: str, steps: int, batch: int, threads: int) -> dict[str, Any]:
    """Parameter count of the ``paper`` VAE and the time of a few CPU training steps.

    Args:
        features: the featurize run (the stored 128 x 1024 ``mel_mix`` is the paper format).
        steps: timed steps (one more, untimed, warms up).
        batch: clips per step.
        threads: torch threads.

    Returns:
        ``{"params", "batch", "steps_timed", "step_s", "mel_shape", "quality"}``.
    """
    import torch

    from soundtrack.data.shards import load_split
    from soundtrack.losses.vae import vae_loss
    from soundtrack.models.vae import build_vae

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    vae = build_vae("paper")
    rows = load_split(features, "train", ["mel_mix"], n=batch)
    mel = torch.stack([torch.as_tensor(r["mel_mix"].astype(np.float32)) for r in rows])
    opt = torch.optim.AdamW(vae.parameters(), lr=4.5e-6)
    times = []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        loss, _ = vae_loss(vae, mel, kl_weight=1e-4)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i:
            times.append(time.perf_counter() - t0)
        log.info("paper VAE step %d/%d: %.1f s", i, steps, time.perf_counter() - t0)
    return {"params": _params(vae), "batch": batch, "steps_timed": steps, "step_s": float(np.mean(times)),
            "mel_shape": list(mel.shape[1:]), "threads": threads,
            "quality": "not measured (needs a GPU: 100k steps at batch 8+)"}


def _meets(c: dict, ceiling: float) -> dict[str, Any]:
    """The issue's aims for one candidate."""
    ratio = c["chroma_agreement"] / ceiling if ceiling > 0 else float("nan")
    return {"chroma_of_ceiling": ratio, "meets_chroma": bool(ratio >= AIM_CHROMA_OF_CEILING),
            "meets_onset": bool(c["onset_f1"] >= AIM_ONSET_F1)}


def _score(c: dict) -> float:
    """Ranking key: chroma agreement as a fraction of the ceiling plus onset F1."""
    return c["chroma_of_ceiling"] + c["onset_f1"]


def plot(report: dict, path: Path) -> None:
    """Bars per candidate: chroma agreement vs the ceiling, onset F1; L1 as text.

    Args:
        report: the JSON report.
        path: output PNG.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cands = report["candidates"]
    names = list(cands)
    ceil = report["ceiling"]
    x = np.arange(len(names))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(max(9.0, 2.6 * len(names)), 4.8))
    ch = [cands[n]["chroma_agreement"] for n in names]
    ax1.bar(x, ch, color=["tab:green" if cands[n]["meets_chroma"] else "tab:blue" for n in names])
    ax1.axhline(ceil["chroma_agreement"], color="k", ls="--", label=f"ceiling (mel -> GL) {ceil['chroma_agreement']:.3f}")
    ax1.axhline(AIM_CHROMA_OF_CEILING * ceil["chroma_agreement"], color="tab:red", ls=":",
                label=f"aim: {AIM_CHROMA_OF_CEILING:.0%} of ceiling")
    ax1.axhline(1 / 12, color="gray", ls="-.", lw=0.8, label="chance 1/12")
    ax1.set_ylabel("chroma-argmax agreement with input audio")
    ax1.set_ylim(0, 1.2 * max(ceil["chroma_agreement"], *ch))
    ax1.set_title(f"Pitch: chroma agreement ({report['n_clips']} {report['split']} clips)")
    for i, n in enumerate(names):
        ax1.text(i, ch[i] + 0.005, f"{ch[i]:.3f}\nL1 {cands[n]['l1']:.3f}", ha="center", va="bottom", fontsize=7)
    on = [cands[n]["onset_f1"] for n in names]
    ax2.bar(x, on, color=["tab:green" if cands[n]["meets_onset"] else "tab:orange" for n in names])
    ax2.axhline(ceil["onset_f1"], color="k", ls="--", label=f"ceiling (mel -> GL) {ceil['onset_f1']:.3f}")
    ax2.axhline(AIM_ONSET_F1, color="tab:red", ls=":", label=f"aim {AIM_ONSET_F1}")
    ax2.set_ylabel(f"onset F1 ({ONSET_WINDOW_S * 1000:.0f} ms window)")
    ax2.set_ylim(0, 1.12)
    ax2.set_title("Timing: onset F1 vs input audio")
    for i, n in enumerate(names):
        ax2.text(i, on[i] + 0.01, f"{on[i]:.3f}\n{cands[n]['train_s']:.0f} s", ha="center", va="bottom", fontsize=7)
    for ax in (ax1, ax2):
        ax.set_xticks(x, names, rotation=25, ha="right", fontsize=8)
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle("Tiny mel VAE reconstruction (encode/decode -> Griffin-Lim); green = meets the aim", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """Runs the benchmark (see the module docstring).

    Args:
        argv: command-line arguments (``None``: ``sys.argv``).

    Returns:
        the exit status.
    """
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--features", required=True, help="a finished featurize run directory")
    p.add_argument("--steps-scale", type=float, default=1.0, help="multiplies every candidate's training steps")
    p.add_argument("--clips", type=int, default=32, help="held-out clips evaluated")
    p.add_argument("--split", default="val", choices=["val", "test"])
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads")
    p.add_argument("--paper-steps", type=int, default=2, help="timed paper-VAE steps (0: skip the timing)")
    p.add_argument("--paper-batch", type=int, default=1)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "vae_recon.json"))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    for noisy in ("soundtrack", "diffusers", "numba"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", module="mir_eval")
    import torch

    from soundtrack.models.vae import build_vae

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()

    def steps(n: int) -> int:
        return max(1, round(n * args.steps_scale))

    report: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]) if argv is None else " ".join(argv),
        "commit": _git_commit(), "machine": {"cpus": os.cpu_count(), "platform": pyplatform.platform(),
                                             "torch": torch.__version__, "threads": args.threads},
        "features": str(args.features), "split": args.split,
        "training": "VAESolver (soundtrack.solvers, solver_class('vae')) in process with LocalReporter and "
                    "numpy_batches of the train split (the num_workers=0 path of _run_phase); tiny profile, "
                    "mel_mix, batch 8, kl_weight 1e-4, seed 0; steps and lr per candidate",
        "metrics": "soundtrack.eval.reconstruction (module docstring): l1 = mean |log-mel(rec) - log-mel(input)| "
                   "in the VAE's mel format with the posterior mean; chroma_agreement = frame-wise chroma-argmax "
                   "agreement (HPM melody accuracy) of Griffin-Lim audio (32 iterations, seed 0) vs input wav_mix; "
                   f"onset_f1 = librosa onsets vs the input's, mir_eval window {ONSET_WINDOW_S} s; ceiling = the "
                   "input mel -> Griffin-Lim, same clips",
        "aims": {"chroma_of_ceiling": AIM_CHROMA_OF_CEILING, "onset_f1": AIM_ONSET_F1},
        "steps_scale": args.steps_scale,
        # train_s is wall time: these say whether other work shared the cores during the run
        "load_avg_1_5_15_start": [round(x, 2) for x in os.getloadavg()],
    }
    from soundtrack.config import load_config
    from soundtrack.eval.reconstruction import HeldOutClips
    from soundtrack.models.mel import MelFormat

    clips = HeldOutClips(args.features, MelFormat.tiny(), split=args.split, n=args.clips)
    report["n_clips"] = len(clips.clip_ids)
    ceiling = {"l1": 0.0, **clips.ceiling}
    report["ceiling"] = ceiling
    log.info("ceiling (tiny mel -> Griffin-Lim): chroma %.3f, onset F1 %.3f (%.0f s)",
             ceiling["chroma_agreement"], ceiling["onset_f1"], ceiling["eval_s"])
    report["candidates"] = {}
    tiny = load_config().train  # the tiny profile's train section (vae_steps, vae_lr)
    demo = load_config(ROOT / "experiments" / "demo.yaml").train
    specs: list[tuple[str, str, dict, int, float]] = [
        ("old_4x_300", "the tiny VAE before: channels (16, 32, 64), 4x down-sampling, 300 steps, lr 1e-3",
         OLD_4X, steps(300), 1e-3),
        ("old_4x_900", "the same, 3x longer training (900 steps)", OLD_4X, steps(900), 1e-3),
        ("old_4x_c8_900", "the same with 8 latent channels, 900 steps", {**OLD_4X, "latent_channels": 8},
         steps(900), 1e-3),
        ("tiny", f"the tiny profile now: channels (16, 32), 2x down-sampling, {tiny.vae_steps} steps, "
                 f"lr {tiny.vae_lr:g}", dict(tiny.vae), steps(tiny.vae_steps), tiny.vae_lr),
    ]
    if (demo.vae_steps, demo.vae_lr) != (tiny.vae_steps, tiny.vae_lr):
        specs.append(("demo", f"the same VAE at experiments/demo.yaml's {demo.vae_steps} steps, lr {demo.vae_lr:g}",
                      dict(demo.vae), steps(demo.vae_steps), demo.vae_lr))

    def run(name: str, desc: str, overrides: dict, n_steps: int, lr: float, work: Path) -> None:
        log.info("training %s: %s, %d steps", name, desc, n_steps)
        vae, info = train_candidate(args.features, overrides, n_steps, lr, args.threads, work / name)
        res = {"description": desc, "overrides": {k: list(v) if isinstance(v, tuple) else v
                                                  for k, v in overrides.items()},
               "lr": lr, "params": _params(vae), **info, **evaluate(clips, vae)}
        res.update(_meets(res, ceiling["chroma_agreement"]))
        report["candidates"][name] = res
        log.info("%s: L1 %.3f, chroma %.3f (%.0f%% of ceiling), onset F1 %.3f, %d params, train %.0f s",
                 name, res["l1"], res["chroma_agreement"], 100 * res["chroma_of_ceiling"], res["onset_f1"],
                 res["params"], res["train_s"])
        out.write_text(json.dumps(report, indent=2))

    with tempfile.TemporaryDirectory(prefix="vae_recon_") as tmp:
        work = Path(tmp)
        for spec in specs:
            run(*spec, work)

    if args.paper_steps > 0:
        report["paper"] = paper_timing(args.features, args.paper_steps, args.paper_batch, args.threads)
    else:
        report["paper"] = {"params": _params(build_vae("paper")), "quality": "not measured"}
    log.info("paper VAE: %d params, %s", report["paper"]["params"],
             f"{report['paper']['step_s']:.1f} s/step at batch {args.paper_batch}" if "step_s" in report["paper"] else "")

    ranked = sorted(report["candidates"], key=lambda n: _score(report["candidates"][n]), reverse=True)
    report["ranking"] = ranked
    report["wall_s"] = round(time.perf_counter() - t_start, 1)
    report["load_avg_1_5_15_end"] = [round(x, 2) for x in os.getloadavg()]
    out.write_text(json.dumps(report, indent=2))
    png = out.with_suffix(".png")
    plot(report, png)
    b = report["candidates"][ranked[0]]
    log.info("summary: %d %s clips, ceiling chroma %.3f / onset F1 %.3f; best %s: L1 %.3f, chroma %.3f "
             "(%.0f%% of ceiling, aim 90%%: %s), onset F1 %.3f (aim 0.9: %s); wall %.0f s; wrote %s, %s",
             report["n_clips"], args.split, ceiling["chroma_agreement"], ceiling["onset_f1"], ranked[0], b["l1"],
             b["chroma_agreement"], 100 * b["chroma_of_ceiling"], b["meets_chroma"], b["onset_f1"], b["meets_onset"],
             report["wall_s"], out, png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
