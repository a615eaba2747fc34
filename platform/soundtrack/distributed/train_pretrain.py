"""``soundtrack pretrain``: contrastive video-sound-music pretraining on Ray Train.

Fixed stages, Ray only at the edges:

1. the driver resolves the model / objective configs, reads the featurize run's shards
   as a Ray Data dataset (train split, the columns the loss needs), builds crops and
   negatives in Ray Data workers (:class:`BatchPrep`, :func:`soundtrack.data.augment.make_batch`)
   and launches the ``contrastive`` solver (:class:`soundtrack.solvers.contrastive.ContrastiveSolver`)
   on ``num_workers`` Ray Train workers (:func:`soundtrack.distributed.train.launch`);
2. every worker restores the last checkpoint if Ray Train hands it one (worker restart
   or ``--resume``) and runs the solver's loop over its shard (gradients averaged across
   workers, Adam with warm-up + cosine learning rate);
3. rank 0 writes ``metrics.jsonl`` and, every ``checkpoint_every`` steps, a checkpoint
   (safetensors weights + optimiser state + step) that it reports to Ray Train;
4. the driver loads the final checkpoint, exports it to ``<run>/model/`` and evaluates
   it on the held-out split (P@K, SIM, synchronisation accuracy, the audio-only
   control) into ``<run>/eval.json`` and ``<run>/sync_accuracy.png``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import ray
import ray.train
import torch
from ray.data.expressions import col

from soundtrack.config import ConfigError, PretrainSection, build, to_dict
from soundtrack.data.augment import objective_config
from soundtrack.data.integrity import MANIFEST_FILE
from soundtrack.data.shards import load_split, read_shards, shard_files
from soundtrack.distributed.batches import BatchPrep
from soundtrack.distributed.cluster import init_ray
from soundtrack.distributed.train import check_precision, launch, local_device, repeat_stream
from soundtrack.errors import TooFewClips
from soundtrack.eval.retrieval import RetrievalConfig, evaluate_retrieval
from soundtrack.models.encoders import (
    ContrastiveConfig,
    ContrastiveModel,
)
from soundtrack.solvers.base import LocalReporter, numpy_batches
from soundtrack.solvers.contrastive import ContrastiveSolver
from soundtrack.solvers.tracking import tracking_config

log = logging.getLogger(__name__)

#: Shard columns the contrastive loss reads (the rest of a shard row stays on disk).
TRAIN_COLUMNS = ["clip_id", "source_id", "split", "caption", "frames", "wav_music", "wav_sfx", "beat_times"]


def model_config(profile: str, overrides: dict[str, Any]):
    """The :class:`ContrastiveConfig` of a profile with the experiment's overrides.

    Raises:
        ConfigError: an unknown model key or bad value (named ``pretrain.model.<key>``).
    """
    return build(ContrastiveConfig, overrides, src="pretrain.model", prefix="pretrain.model.",
                 base=ContrastiveConfig.preset(profile))


def retrieval_config(overrides: dict[str, Any]):
    """The :class:`RetrievalConfig` with the experiment's overrides."""
    return build(RetrievalConfig, overrides, src="pretrain.evaluation", prefix="pretrain.evaluation.")


def prepared_dataset(raw, sec: PretrainSection, n_rows: int):
    """All epochs as one stream (:func:`repeat_stream`): raw rows for the workers to shuffle
    and batch (``batch_prep: worker``, :func:`worker_prep`), or batches built in Ray Data
    actors (``ray_data``, :class:`BatchPrep`)."""

    rows = sec.steps * sec.batch_size * max(sec.num_workers, 1) * sec.grad_accum_steps
    stream = repeat_stream(raw, rows, n_rows, seed=sec.seed)
    if sec.batch_prep == "worker":
        return stream
    return stream.map_batches(
        BatchPrep,
        batch_size=sec.batch_size,
        batch_format="pandas",
        fn_constructor_kwargs={"objective": sec.objective, "seed": sec.seed},
        compute=ray.data.ActorPoolStrategy(size=sec.prep_workers),
        num_cpus=sec.prep_cpus,
    )


def worker_prep(sec: PretrainSection) -> dict | None:
    """What :func:`soundtrack.distributed.train.launch` passes the workers to build batches
    themselves (``batch_prep: worker``; ``None`` for ``ray_data``)."""
    if sec.batch_prep != "worker":
        return None
    return {"objective": dict(sec.objective), "seed": int(sec.seed), "shuffle_buffer": int(sec.shuffle_buffer),
            "depth": 2}


def train_dataset(features_dir: str | os.PathLike, split: str = "train"):
    """The featurize run's shards as a Ray Data dataset of one split (the loss's columns)."""

    files = shard_files(features_dir)
    if not files:
        raise FileNotFoundError(f"no shards in {features_dir}; run `soundtrack data featurize` first.")
    cols = TRAIN_COLUMNS + [c + "__shape" for c in ("frames", "wav_music", "wav_sfx", "beat_times")]
    # The predicate runs as a native Arrow filter (pushed into the read where Ray can).
    return ray.data.read_parquet(files, columns=cols).filter(expr=col("split") == split)


def run_pretrain(profile: str, sec: PretrainSection, features_dir: str | os.PathLike, run_dir: str | os.PathLike,
                 progress: bool = True) -> dict:
    """Train the contrastive encoders and evaluate them; returns the summary.

    Args:
        profile: ``tiny`` or ``paper`` (the model preset).
        sec: pretraining settings.
        features_dir: a finished featurize run.
        run_dir: this run's directory.
        progress: print progress.
    """
    mcfg = model_config(profile, sec.model)
    check_precision(sec.precision, sec.gpus_per_worker)
    tracking_config(sec.tracking, "pretrain.tracking")  # a bad key fails before Ray starts
    objective_config(sec.objective)  # validate before paying for Ray
    retrieval_config(sec.evaluation)
    run_dir = Path(run_dir).resolve()
    if sec.num_workers == 0:  # the same solver in this process (no Ray), batches built here
        frame = read_shards(features_dir, split="train", columns=TRAIN_COLUMNS)
        n_train = len(frame)
    else:
        init_ray()
        raw = train_dataset(features_dir, "train").materialize()
        n_train = raw.count()
    if n_train < sec.batch_size * max(sec.num_workers, 1):
        raise ConfigError(
            f"pretrain.batch_size={sec.batch_size} x {max(sec.num_workers, 1)} worker(s) exceeds the {n_train} "
            "training clips; lower the batch size or featurize more clips."
        )
    t0 = time.time()
    solver_config = {"section": to_dict(sec), "model": mcfg.to_dict(), "objective": sec.objective, "n_train": n_train}
    if sec.num_workers == 0:
        columns = {c: frame[c].to_numpy() for c in frame.columns}
        prep = BatchPrep(sec.objective, sec.seed)
        rows = numpy_batches(columns, sec.batch_size, seed=sec.seed)
        reporter = LocalReporter(run_dir / "checkpoints", device=local_device(sec.gpus_per_worker))
        ContrastiveSolver(solver_config, run_dir).fit(lambda: (prep(pd.DataFrame(b)) for b in rows()), reporter)
        model_dir = export_final(reporter.latest(), run_dir / "model")
    else:
        result = launch("contrastive", solver_config, run_dir, datasets={"train": prepared_dataset(raw, sec, n_train)},
                        prep=worker_prep(sec),
                        num_workers=sec.num_workers, cpus_per_worker=sec.cpus_per_worker,
                        gpus_per_worker=sec.gpus_per_worker, max_failures=sec.max_failures)
        with result.checkpoint.as_directory() as d:
            model_dir = export_final(d, run_dir / "model")
    train_s = time.time() - t0
    try:
        ev = evaluate_run(model_dir, features_dir, run_dir, split=sec.eval_split, overrides=sec.evaluation)["summary"]
    except TooFewClips as exc:  # the trained model is kept; only the evaluation is skipped
        log.info(f"pretrain: evaluation skipped: {exc}")
        ev = {"skipped": str(exc)}
    return {"train_clips": n_train, "train_seconds": round(train_s, 1), "model": str(model_dir), "eval": ev}


def export_final(checkpoint_dir: str | os.PathLike, out: Path) -> Path:
    """Copy the final checkpoint's weights, config and the weights' manifest to ``out`` (what later stages load)."""
    out.mkdir(parents=True, exist_ok=True)
    for name in ("model.safetensors", "config.json", "trainer_state.json", MANIFEST_FILE):
        if os.path.exists(os.path.join(checkpoint_dir, name)):
            shutil.copy2(os.path.join(checkpoint_dir, name), out / name)
    return out


#: Shard columns the encoders' evaluation reads (:func:`evaluate_run`).
EVAL_COLUMNS = ["clip_id", "source_id", "caption", "frames", "wav_music", "wav_sfx", "mel_music", "mel_sfx",
                "beat_times"]


def evaluate_run(model_dir: str | os.PathLike, features_dir: str | os.PathLike, run_dir: str | os.PathLike,
                 split: str = "val", overrides: dict | None = None, name: str = "eval") -> dict:
    """Evaluate saved encoders on a split; writes ``<name>.json`` and a sync-accuracy plot.

    Args:
        model_dir: a saved ContrastiveModel.
        features_dir: featurize run to take the split from.
        run_dir: where to write the results.
        split: ``val`` or ``test``.
        overrides: RetrievalConfig overrides.
        name: file stem of the outputs.

    Returns:
        ``{"summary": {...}, "full": {...}}``.
    """
    rcfg = retrieval_config(overrides or {})
    model = ContrastiveModel.load(model_dir).eval()
    rows = load_split(features_dir, split, EVAL_COLUMNS)
    if len(rows) < 2:
        raise TooFewClips(f"the {split} split of {features_dir} has {len(rows)} clip(s); retrieval needs at least 2 "
                          "(featurize more clips or set pretrain.eval_split).")
    with torch.no_grad():
        full = evaluate_retrieval(model, rows, rcfg)
    summary = summarize_eval(full)
    out = {"split": split, "features": str(features_dir), "summary": summary, "full": full}
    Path(run_dir, f"{name}.json").write_text(json.dumps(out, indent=2, default=_jsonable))
    plot_sync(full, Path(run_dir, f"{name}_sync_accuracy.png"), title=f"{Path(run_dir).name} ({split})")
    return out


def _jsonable(o):
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    return str(o)


def _strip(d: Any) -> Any:
    """Drop per-item arrays (ranks, per-clip tables) from a result, keeping the numbers."""
    if isinstance(d, dict):
        return {k: _strip(v) for k, v in d.items() if k not in ("ranks", "per_clip", "hits")}
    return d


def summarize_eval(full: dict) -> dict:
    """The headline numbers of :func:`evaluate_retrieval`: P@K, SIM, sync per shift, control."""
    return json.loads(json.dumps(_strip(full), default=_jsonable))


def _shift_curve(s: dict) -> tuple[list[int], list[float], list[float], list[float]]:
    keys = sorted((int(k.split("_")[1]), k) for k in s if k.startswith("shift_"))
    xs, m, lo, hi = [], [], [], []
    for x, k in keys:
        v = s[k]
        if v.get("n", 0) == 0:
            continue
        xs.append(x)
        m.append(v["value"])
        lo.append(v.get("ci_low", v["value"]))
        hi.append(v.get("ci_high", v["value"]))
    return xs, m, lo, hi


def plot_sync(full: dict, path: Path, title: str = "") -> Path | None:
    """Synchronisation accuracy against shift (frames), with 95 % intervals, per stream."""
    matplotlib.use("Agg")

    fig, ax = plt.subplots(figsize=(5.5, 3.5), dpi=120)
    drawn = False
    for stream, res in full.items():
        if not isinstance(res, dict):
            continue
        for key, style in (("sync", "-o"), ("sync_control", "--x")):
            s = res.get(key)
            if not isinstance(s, dict):
                continue
            xs, m, lo, hi = _shift_curve(s)
            if not xs:
                continue
            ax.errorbar(xs, m, yerr=[np.subtract(m, lo), np.subtract(hi, m)], fmt=style, capsize=3,
                        label=f"{stream}{' (audio-only control)' if key == 'sync_control' else ''}")
            drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.axhline(0.5, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("shift (frames at 10 fps)")
    ax.set_ylabel("sync accuracy")
    ax.set_ylim(0, 1.05)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
