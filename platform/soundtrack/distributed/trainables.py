"""The Ray Tune trainables: one trial = one setting scored on the validation clips.

Both are function trainables wrapped with ``tune.with_parameters(fn, ctx=...)``; ``ctx``
holds everything a trial needs to find its inputs (model, features, evaluator, objective)
as plain JSON-able values. A trial writes its artifacts to ``<run>/trials/<trial id>/``:
``config.json`` (its parameters and the model settings they mean), ``per_clip.csv``,
``embeddings.npz`` (evaluator embeddings, for set metrics and bootstrap), ``wavs/`` and,
last, ``done.json`` (final score, clips evaluated, seconds). A trial restarted after an
interrupted search rewrites its folder from scratch.

Intermediate results (``tune.report``): ``clips`` (validation clips evaluated so far, the
ASHA resource), ``score`` (the objective on those clips) and the per-clip metric means.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from ray import tune

from soundtrack.config import TrainSection, build
from soundtrack.data.shards import load_split
from soundtrack.distributed.train_generator import run_train
from soundtrack.eval.engine import OPTIONAL_ROW_COLUMNS, ROW_COLUMNS, evaluate_clips, save_scores
from soundtrack.eval.scoring import Evaluator
from soundtrack.pipelines.generator import SoundtrackGenerator
from soundtrack.tuning.space import sampling_overrides, training_changes


def _setup(ctx: dict) -> tuple[Path, str]:
    torch.set_num_threads(int(ctx["torch_threads"]))
    trial_id = tune.get_context().get_trial_id()
    out = Path(ctx["run_dir"]) / "trials" / trial_id
    if out.exists():  # a restarted trial starts over

        shutil.rmtree(out)
    out.mkdir(parents=True)
    return out, trial_id


def _device(ctx: dict) -> str:
    """``cuda`` for a trial given GPUs (``search.gpus_per_trial > 0``; Ray sets its visible device), else ``cpu``."""
    return "cuda" if float(ctx.get("gpus_per_trial", 0) or 0) > 0 and torch.cuda.is_available() else "cpu"


def _load_evaluator(ctx: dict):
    return Evaluator.load(ctx["evaluator"]) if ctx.get("evaluator") else None


def _score(gen, overrides: dict, ctx: dict, out: Path, t0: float, extra: dict | None = None) -> None:
    """Evaluate the validation clips batch by batch, reporting to Tune, and save artifacts."""

    rows = load_split(ctx["features"], "val", ROW_COLUMNS, int(ctx["val_clips"]), hint="val_clips",
                      optional=OPTIONAL_ROW_COLUMNS)
    ev = _load_evaluator(ctx)
    objective = ctx["objective"]

    def report(n: int, score: float, scores) -> None:
        means = {k: v for k, v in scores.means().items() if k in ctx["report_metrics"]}
        save_scores(scores, out)  # partial artifacts survive an early stop
        if n == len(rows):  # before the last report: ASHA stops a trial that reaches max_t at once
            (out / "done.json").write_text(json.dumps({"clips": n, "score": score,
                                                       "seconds": round(time.time() - t0, 2)}))
        tune.report({"clips": n, "score": score, **means, **(extra or {})})

    evaluate_clips(gen, rows, overrides, int(ctx["gen_seed"]), ev, objective, batch_clips=int(ctx["batch_clips"]),
                   on_batch=report, wav_dir=out / "wavs" if ctx.get("keep_wavs") == "all" else None)


def sampling_trial(config: dict[str, Any], ctx: dict) -> None:
    """One sampling-space trial: the trained model with this trial's guidance / window settings.

    Args:
        config: the trial's parameters (from the searcher).
        ctx: the search's context (see the module docstring).
    """
    t0 = time.time()
    out, trial_id = _setup(ctx)
    gen = SoundtrackGenerator.load(ctx["model_dir"], device=_device(ctx))
    overrides = sampling_overrides(config, tuple(gen.conditions))
    gen.sampler_config(**overrides)  # a bad setting fails here, before any work
    (out / "config.json").write_text(json.dumps({"trial_id": trial_id, "params": config, "overrides": overrides,
                                                 "model": ctx["model_dir"]}, indent=2, default=str))
    _score(gen, overrides, ctx, out, t0)


def training_trial(config: dict[str, Any], ctx: dict) -> None:
    """One training-space trial: a short UNet training (reused VAE + cache), then the evaluation.

    The trial runs the diffusion solver itself: with ``train.num_workers=0`` (the default
    of the tune config) in this process, on the latent cache read into memory, with no Ray
    Train worker group and no Ray Data read; the trial's metrics carry ``trial_pid`` and
    ``train_pid`` (the process the solver ran in) to show it. A trial that asks for workers
    (``train.num_workers >= 1``, e.g. GPUs on a cluster) runs the same solver under the Ray
    Train launcher instead; its workers then need resources beside the trial's own.

    Args:
        config: the trial's parameters.
        ctx: the search's context.
    """

    t0 = time.time()
    out, trial_id = _setup(ctx)
    base = build(TrainSection, ctx["base_train"], src="base training run", prefix="train.")
    sec = build(TrainSection, ctx["train"], src="tune config", prefix="train.", base=base)
    changes = training_changes(config)
    den = {**sec.denoiser, **changes.pop("denoiser", {})}
    sec = dataclasses.replace(sec, **changes, denoiser=den, reuse_vae_from=ctx["base_run"], features=None,
                              pretrain=None, torch_threads=int(ctx["torch_threads"]))
    if sec.num_workers == 0 and _device(ctx) == "cuda" and not sec.gpus_per_worker:
        sec = dataclasses.replace(sec, gpus_per_worker=1.0)  # the in-process solver trains on the trial's GPU
    (out / "config.json").write_text(json.dumps({"trial_id": trial_id, "params": config,
                                                 "train": dataclasses.asdict(sec)}, indent=2, default=str))
    t = time.time()
    summary = run_train(ctx["profile"], sec, Path(ctx["features"]), Path(ctx["encoders_dir"]), out / "train")
    train_s = time.time() - t
    state = json.loads((Path(summary["model"]).parent / "unet" / "final" / "trainer_state.json").read_text())
    gen = SoundtrackGenerator.load(summary["model"], device=_device(ctx))
    _score(gen, {}, ctx, out, t0, extra={"train_s": round(train_s, 1), "trial_pid": os.getpid(),
                                         "train_pid": int(state.get("pid", -1))})
