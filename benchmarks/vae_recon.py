"""Does the tiny mel VAE keep the music? Reconstruction quality of candidate latents.

    .venv/bin/python benchmarks/vae_recon.py --features /tmp/demo13/features/<run> \
        [--steps-scale 1.0] [--clips 32] [--split val] [--out benchmarks/results/vae_recon.json]

Groundwork for the issue "Sound quality: a latent that keeps the music". Each candidate
VAE is trained in this process with the project's own :class:`soundtrack.solvers.vae.VAESolver`
(``solver_class("vae")``, a :class:`~soundtrack.solvers.base.LocalReporter`, in-memory
:func:`~soundtrack.solvers.base.numpy_batches` of the train split: exactly the
``num_workers: 0`` path of ``distributed/train_generator._run_phase``; no Ray), on the
``mel_mix`` column (``train.target: mix``), with the tiny profile's train settings
(batch 8, lr 1e-3, kl_weight 1e-4, seed 0) and ``--threads`` torch threads. Candidates:

* ``a_tiny_200`` / ``a_tiny_300``: today's tiny VAE, 200 steps (``experiments/demo.yaml``)
  and 300 steps (the tiny profile, ``train_tiny``);
* ``b_down2_c4_300``: less compression, one down-sampling block instead of two
  (channels (16, 32)): a 4 x 32 x 128 latent, as many numbers as the 64 x 256 mel;
* ``c_down4_c8_300``: more latent channels, 8 instead of 4 (8 x 16 x 64, 2x fewer numbers);
* ``d_<best>_x3``: the best of a_tiny_300 / b / c trained 3x as many steps (best = the
  highest ``chroma / ceiling + onset F1``).

Measured on held-out clips (``--split``, default ``val``; the first ``--clips`` by clip id,
:func:`soundtrack.data.shards.load_split`):

* ``l1``: mean |log-mel(reconstruction) - log-mel(input)| in the model's mel format (tiny:
  64 x 256 pooled natural-log mel, :class:`~soundtrack.models.mel.MelFormat`), with the
  posterior mean as latent (``encode_latents(sample=False)``, what the UNet's cache uses);
* ``chroma_agreement``: fraction of 10 ms frames whose chroma argmax is the same for the
  vocoded audio and the input audio (``wav_mix``). Chroma: the project's
  :func:`soundtrack.data.features.chroma` (librosa ``chroma_stft`` on the front end's STFT),
  agreement :func:`soundtrack.metrics.control.melody_accuracy`; chance is 1/12. Vocoder:
  :class:`~soundtrack.models.vocoder.GriffinLimVocoder` (32 iterations, seed 0). The
  ``ceiling`` is the same for the input mel -> vocoder (no VAE), measured in this run;
* ``onset_f1``: ``librosa.onset.onset_detect`` (times) on the vocoded audio against the
  input audio, matched by ``mir_eval.onset.f_measure`` (50 ms window), mean over clips;
  the ceiling's onset F1 is reported too;
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
_D2 = {"down_block_types": ("DownEncoderBlock2D",) * 2, "up_block_types": ("UpDecoderBlock2D",) * 2}


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


def train_candidate(features: str, overrides: dict[str, Any], steps: int, threads: int, work: Path) -> tuple[Any, dict]:
    """Trains one tiny-profile VAE with ``VAESolver`` in this process (``LocalReporter``, no Ray).

    Args:
        features: the featurize run (its ``train`` split is read).
        overrides: ``build_vae`` overrides of the tiny config.
        steps: optimiser steps.
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

    sec = TrainSection(features=features, vae=overrides, vae_steps=steps, vae_batch_size=8, vae_lr=1e-3,
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


def _onsets(wav: np.ndarray, sr: int) -> np.ndarray:
    """Onset times (s): ``librosa.onset.onset_detect`` with its defaults."""
    import librosa

    return librosa.onset.onset_detect(y=np.asarray(wav, dtype=np.float32), sr=sr, units="time")


def _onset_f1(ref: np.ndarray, est: np.ndarray) -> float:
    """mir_eval onset F-measure (50 ms window); 1.0 when both lists are empty, 0.0 when one is."""
    import mir_eval

    if len(ref) == 0 and len(est) == 0:
        return 1.0
    if len(ref) == 0 or len(est) == 0:
        return 0.0
    return float(mir_eval.onset.f_measure(ref, est, window=ONSET_WINDOW_S)[0])


class Evaluator:
    """Held-out clips, their reference chroma / onsets, and the vocoder ceiling.

    Args:
        features: the featurize run.
        split: ``val`` or ``test``.
        clips: how many clips (the first by clip id).
        batch: clips per vocoder call.
    """

    def __init__(self, features: str, split: str, clips: int, batch: int = 8):
        import torch

        from soundtrack.data.features import chroma
        from soundtrack.data.shards import load_split
        from soundtrack.models.mel import MelFormat
        from soundtrack.models.vocoder import GriffinLimVocoder

        self.fmt = MelFormat.tiny()
        self.fe = self.fmt.features
        self.batch = batch
        rows = load_split(features, split, ["mel_mix", "wav_mix"], n=clips, too_few="fewer")
        self.clip_ids = [r["clip_id"] for r in rows]
        self.mels = torch.stack([self.fmt.from_features(r["mel_mix"].astype(np.float32)) for r in rows])
        self.wavs = [np.asarray(r["wav_mix"], dtype=np.float32) for r in rows]
        self.vocoder = GriffinLimVocoder(self.fmt, n_iter=32, seed=0)
        self._chroma = lambda w: chroma(np.asarray(w, dtype=np.float32), self.fe)
        self.ref_chroma = [self._chroma(w) for w in self.wavs]
        self.ref_onsets = [_onsets(w, self.fe.sr) for w in self.wavs]
        log.info("%d %s clips, tiny mel %s; mean %.1f reference onsets per clip", len(rows), split,
                 tuple(self.mels.shape[1:]), float(np.mean([len(o) for o in self.ref_onsets])))

    def audio_scores(self, mels) -> dict[str, float]:
        """Chroma agreement and onset F1 of the vocoded ``mels`` against the input audio.

        Args:
            mels: tiny log-mels (N, 64, 256), one per held-out clip, in clip order.

        Returns:
            ``{"chroma_agreement", "onset_f1"}``, means over clips.
        """
        import torch

        from soundtrack.metrics.control import melody_accuracy

        chroma_acc, f1 = [], []
        for i in range(0, len(mels), self.batch):
            with torch.no_grad():
                wavs = self.vocoder(mels[i:i + self.batch]).numpy()
            for j, wav in enumerate(wavs):
                k = i + j
                n = min(len(wav), len(self.wavs[k]))
                chroma_acc.append(melody_accuracy(self.ref_chroma[k], self._chroma(wav[:n])))
                f1.append(_onset_f1(self.ref_onsets[k], _onsets(wav[:n], self.fe.sr)))
        return {"chroma_agreement": float(np.mean(chroma_acc)), "onset_f1": float(np.mean(f1))}

    def reconstruct(self, vae) -> Any:
        """Encode (posterior mean) and decode every held-out mel.

        Args:
            vae: a trained tiny :class:`~soundtrack.models.vae.MelVAE`.

        Returns:
            reconstructed tiny log-mels (N, 64, 256).
        """
        import torch

        from soundtrack.models.vae import decode_mel, encode_latents

        out = []
        with torch.no_grad():
            for i in range(0, len(self.mels), self.batch):
                out.append(decode_mel(vae, encode_latents(vae, self.mels[i:i + self.batch])))
        return torch.cat(out)


def evaluate(ev: Evaluator, vae) -> dict[str, Any]:
    """All reconstruction numbers of one VAE on the held-out clips.

    Args:
        ev: the evaluator.
        vae: the trained VAE.

    Returns:
        ``{"l1", "chroma_agreement", "onset_f1", "latent_shape", "latent_numbers_per_mel_number", "eval_s"}``.
    """
    from soundtrack.models.vae import latent_shape

    t0 = time.perf_counter()
    rec = ev.reconstruct(vae)
    l1 = float((rec - ev.mels).abs().mean())
    scores = ev.audio_scores(rec)
    shape = latent_shape(vae, ev.fmt.n_mels, ev.fmt.n_frames)
    return {"l1": l1, **scores, "latent_shape": list(shape),
            "latent_numbers_per_mel_number": float(np.prod(shape)) / (ev.fmt.n_mels * ev.fmt.n_frames),
            "eval_s": round(time.perf_counter() - t0, 1)}


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
                    "mel_mix, batch 8, lr 1e-3, kl_weight 1e-4, seed 0",
        "metrics": {"l1": "mean |log-mel(rec) - log-mel(input)|, tiny 64x256 pooled natural-log mel, posterior mean",
                    "chroma_agreement": "frame-wise argmax agreement of soundtrack.data.features.chroma "
                                        "(librosa chroma_stft, 10 ms frames) of Griffin-Lim audio vs input wav_mix",
                    "onset_f1": f"librosa.onset.onset_detect vs input wav_mix, mir_eval.onset.f_measure "
                                f"window {ONSET_WINDOW_S} s, mean over clips",
                    "vocoder": "GriffinLimVocoder, 32 iterations, seed 0"},
        "aims": {"chroma_of_ceiling": AIM_CHROMA_OF_CEILING, "onset_f1": AIM_ONSET_F1},
        "steps_scale": args.steps_scale,
    }
    ev = Evaluator(args.features, args.split, args.clips)
    report["n_clips"] = len(ev.clip_ids)
    t0 = time.perf_counter()
    ceiling = {"l1": 0.0, **ev.audio_scores(ev.mels), "eval_s": 0.0}
    ceiling["eval_s"] = round(time.perf_counter() - t0, 1)
    report["ceiling"] = ceiling
    log.info("ceiling (tiny mel -> Griffin-Lim): chroma %.3f, onset F1 %.3f (%.0f s)",
             ceiling["chroma_agreement"], ceiling["onset_f1"], ceiling["eval_s"])
    report["candidates"] = {}

    specs: list[tuple[str, str, dict, int]] = [
        ("a_tiny_200", "today's tiny VAE, demo training (200 steps)", {}, steps(200)),
        ("a_tiny_300", "today's tiny VAE, train_tiny training (300 steps)", {}, steps(300)),
        ("b_down2_c4_300", "one down-sampling (channels 16, 32), 4 latent channels", dict(block_out_channels=(16, 32),
                                                                                         **_D2), steps(300)),
        ("c_down4_c8_300", "tiny channels (16, 32, 64), 8 latent channels", {"latent_channels": 8}, steps(300)),
    ]

    def run(name: str, desc: str, overrides: dict, n_steps: int, work: Path) -> None:
        log.info("training %s: %s, %d steps", name, desc, n_steps)
        vae, info = train_candidate(args.features, overrides, n_steps, args.threads, work / name)
        res = {"description": desc, "overrides": {k: list(v) if isinstance(v, tuple) else v
                                                  for k, v in overrides.items()},
               "params": _params(vae), **info, **evaluate(ev, vae)}
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
        pool = ["a_tiny_300", "b_down2_c4_300", "c_down4_c8_300"]
        best = max(pool, key=lambda n: _score(report["candidates"][n]))
        base = next(s for s in specs if s[0] == best)
        run(f"d_{best.split('_', 1)[1].rsplit('_', 1)[0]}_x3", f"{best}'s architecture, 3x its steps (best of {', '.join(pool)})",
            base[2], 3 * base[3], work)
    report["best_of_abc"] = best

    if args.paper_steps > 0:
        report["paper"] = paper_timing(args.features, args.paper_steps, args.paper_batch, args.threads)
    else:
        report["paper"] = {"params": _params(build_vae("paper")), "quality": "not measured"}
    log.info("paper VAE: %d params, %s", report["paper"]["params"],
             f"{report['paper']['step_s']:.1f} s/step at batch {args.paper_batch}" if "step_s" in report["paper"] else "")

    ranked = sorted(report["candidates"], key=lambda n: _score(report["candidates"][n]), reverse=True)
    report["ranking"] = ranked
    report["wall_s"] = round(time.perf_counter() - t_start, 1)
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
