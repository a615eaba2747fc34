"""Scoring one setting on a list of clips, batch by batch: what every trial runs.

:func:`evaluate_clips` generates a soundtrack for each clip (same clip ids and seed for
every trial, so two trials are paired clip by clip), scores it with
:func:`soundtrack.eval.scoring.clip_metrics` and the evaluator's SIM / KL, and after each
batch of clips calls back with the objective on the clips evaluated so far (the
intermediate result ASHA compares at its rungs).

The objective (:func:`objective_value`) is the declared combination ``sum_m w_m * value_m``:
per-clip metrics are averaged over the clips (nan-aware), set metrics (``fad``, ``is``,
``p_at_k``, ``csd``, ``hsd``) are computed on them.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from soundtrack.data.media import write_wav
from soundtrack.data.shards import decode_row, read_shards
from soundtrack.eval.scoring import (
    SET_METRICS,
    Evaluator,
    clip_metrics,
    evaluator_metrics,
    set_metrics,
)
from soundtrack.metrics import paired_bootstrap_ci
from soundtrack.pipelines.generator import SoundtrackGenerator

#: Shard columns a scored clip needs.
ROW_COLUMNS = ("clip_id", "frames", "wav_mix", "melody", "dynamics_db", "label_event_times")


def load_rows(features_dir: str | Path, split: str, n: int) -> list[dict]:
    """The first ``n`` clips (by clip id) of a split, decoded.

    Args:
        features_dir: a finished featurize run.
        split: ``val`` or ``test``.
        n: how many clips.

    Raises:
        ValueError: the split has fewer than ``n`` clips.
    """
    df = read_shards(features_dir, split=split, columns=list(ROW_COLUMNS))
    if len(df) < n:
        raise ValueError(f"{features_dir} has {len(df)} {split} clips, {n} requested (val_clips / test_clips)")
    df = df.sort_values("clip_id").head(n).reset_index(drop=True)
    return [decode_row(r) for r in df.to_dict("records")]


@dataclass
class ClipScores:
    """Per-clip metrics and the embeddings set metrics need, growing batch by batch.

    Attributes:
        clip_ids: the clips scored so far, in order.
        per_clip: ``{metric: [value per clip]}``.
        audio / ref_audio / video: evaluator embeddings (N, T, E) per clip (lists of arrays).
        probs: evaluator class probabilities of the generated audio (list of (C,)).
        gen_seconds: generation wall time per clip (s).
    """

    clip_ids: list[str] = field(default_factory=list)
    per_clip: dict[str, list[float]] = field(default_factory=dict)
    audio: list[np.ndarray] = field(default_factory=list)
    ref_audio: list[np.ndarray] = field(default_factory=list)
    video: list[np.ndarray] = field(default_factory=list)
    probs: list[np.ndarray] = field(default_factory=list)
    gen_seconds: list[float] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.clip_ids)

    def subset(self, idx: Sequence[int]) -> "ClipScores":
        """The clips at ``idx`` (repeats allowed: bootstrap resamples)."""
        pick = lambda xs: [xs[i] for i in idx] if xs else []  # noqa: E731
        return ClipScores([self.clip_ids[i] for i in idx], {k: pick(v) for k, v in self.per_clip.items()},
                          pick(self.audio), pick(self.ref_audio), pick(self.video), pick(self.probs),
                          pick(self.gen_seconds))

    def means(self) -> dict[str, float]:
        """Per-clip metrics averaged over the clips (nan where every clip is nan)."""
        out = {}
        for k, v in self.per_clip.items():
            a = np.asarray(v, float)
            out[k] = float(np.nanmean(a)) if np.isfinite(a).any() else math.nan
        return out

    def set_metrics(self, names: Sequence[str] | None = None) -> dict[str, float]:
        """Set metrics (FAD, IS, P@K, CSD, HSD) on the clips so far."""
        if not self.clip_ids:
            return {}
        want = set(names) if names is not None else {"fad", "is", "p_at_1", "p_at_5", "csd", "hsd"}
        have_emb = bool(self.audio)
        # Only the inputs the wanted metrics need: P@K needs at least 2 clips, FAD the
        # reference embeddings, IS the class probabilities.
        use_video = have_emb and len(self) >= 2 and bool(want & {"p_at_1", "p_at_5"})
        use_fad = have_emb and "fad" in want
        try:
            out = set_metrics({k: np.asarray(self.per_clip[k], float) for k in ("bcs", "bhs") if k in self.per_clip},
                              audio=np.stack(self.audio) if (use_video or use_fad) else None,
                              video=np.stack(self.video) if use_video else None,
                              ref_audio=np.stack(self.ref_audio) if use_fad else None,
                              probs=np.stack(self.probs) if self.probs and "is" in want else None)
        except ValueError:  # a set too small for a metric: undefined, not an error of the trial
            out = {}
        return {k: out.get(k, math.nan) for k in (names if names is not None else sorted(want))}

    def rows(self) -> list[dict[str, Any]]:
        """One dict per clip (clip id, generation seconds, every per-clip metric)."""
        return [{"clip_id": c, "gen_s": round(self.gen_seconds[i], 3),
                 **{k: v[i] for k, v in self.per_clip.items()}} for i, c in enumerate(self.clip_ids)]


def objective_value(scores: ClipScores, objective: Mapping[str, float]) -> float:
    """``sum_m w_m * value_m`` over the objective's metrics on the clips in ``scores``.

    A metric that is nan on every clip counts as 0 (it cannot rank trials); the trial's
    report lists it so that a reader sees it.

    Args:
        scores: the clips' scores.
        objective: ``{metric: weight}`` (checked by :func:`soundtrack.tuning.config.check_objective`).
    """
    means = scores.means()
    set_names = [m for m in objective if m in SET_METRICS]
    sets = scores.set_metrics(set_names) if set_names else {}
    total = 0.0
    for m, w in objective.items():
        v = sets.get(m, math.nan) if m in SET_METRICS else means.get(m, math.nan)
        total += w * (v if math.isfinite(v) else 0.0)
    return float(total)


def per_clip_objective(scores: ClipScores, objective: Mapping[str, float]) -> np.ndarray | None:
    """The objective of each clip alone, when it has only per-clip metrics (else ``None``).

    Its mean over clips equals :func:`objective_value` when no metric is nan.
    """
    if any(m in SET_METRICS for m in objective):
        return None
    n = len(scores)
    out = np.zeros(n)
    for m, w in objective.items():
        v = np.asarray(scores.per_clip.get(m, [math.nan] * n), float)
        out += w * np.where(np.isfinite(v), v, 0.0)
    return out


def paired_objective_ci(a: ClipScores, b: ClipScores, objective: Mapping[str, float], n_boot: int = 1000,
                        seed: int = 0, alpha: float = 0.05) -> dict[str, Any]:
    """Paired bootstrap interval of objective(a) - objective(b) over shared clips.

    With only per-clip metrics this is :func:`soundtrack.metrics.paired_bootstrap_ci`
    of the per-clip objectives; with set metrics the clips are resampled together and the
    objective (set metrics included) recomputed on each resample (fewer resamples: FAD
    costs a matrix square root each).

    Args:
        a: method A's scores (same clip order as ``b``).
        b: method B's scores.
        objective: ``{metric: weight}``.
        n_boot: resamples.
        seed: resampling seed.
        alpha: 1 - confidence level.

    Returns:
        ``{"diff": point, "ci95": [lo, hi], "n": clips, "n_boot": resamples}``.
    """
    if a.clip_ids != b.clip_ids:
        raise ValueError("paired scores need the same clips in the same order")
    pa, pb = per_clip_objective(a, objective), per_clip_objective(b, objective)
    if pa is not None:
        d, lo, hi = paired_bootstrap_ci(pa, pb, n_boot=n_boot, alpha=alpha, seed=seed)
        return {"diff": d, "ci95": [lo, hi], "n": len(a), "n_boot": n_boot}
    n_boot = min(n_boot, 200)
    rng = np.random.default_rng(seed)
    n = len(a)
    reps = []
    for _ in range(n_boot):
        idx = rng.integers(0, n, n).tolist()
        reps.append(objective_value(a.subset(idx), objective) - objective_value(b.subset(idx), objective))
    lo, hi = np.quantile(reps, [alpha / 2, 1 - alpha / 2])
    return {"diff": objective_value(a, objective) - objective_value(b, objective), "ci95": [float(lo), float(hi)],
            "n": n, "n_boot": n_boot}


def evaluate_clips(
    gen,
    rows: Sequence[Mapping[str, Any]],
    overrides: Mapping[str, Any],
    seed: int,
    evaluator,
    objective: Mapping[str, float],
    batch_clips: int = 4,
    on_batch: Callable[[int, float, ClipScores], None] | None = None,
    wav_dir: str | Path | None = None,
) -> ClipScores:
    """Generate and score every clip, reporting after each batch.

    Args:
        gen: a :class:`~soundtrack.pipelines.generator.SoundtrackGenerator`.
        rows: decoded shard rows (:func:`load_rows`).
        overrides: sampler overrides of this setting (``gen.generate(..., **overrides)``).
        seed: generation seed (with the clip id it seeds each clip's noise).
        evaluator: a :class:`~soundtrack.eval.scoring.Evaluator` (``None``: no SIM / KL / FAD).
        objective: ``{metric: weight}``.
        batch_clips: clips per callback.
        on_batch: ``fn(clips_done, objective_so_far, scores)`` after each batch.
        wav_dir: where to write the generated WAVs (16-bit; ``None``: not written).

    Returns:
        the :class:`ClipScores` of all clips.
    """
    scores = ClipScores()
    if wav_dir is not None:
        Path(wav_dir).mkdir(parents=True, exist_ok=True)
    for start in range(0, len(rows), batch_clips):
        batch = rows[start:start + batch_clips]
        wavs = []
        for r in batch:
            t = time.perf_counter()
            wav = gen.generate(r["frames"], seed=seed, clip_id=str(r["clip_id"]), **overrides)
            scores.gen_seconds.append(time.perf_counter() - t)
            wavs.append(wav)
            if wav_dir is not None:
                write_wav(Path(wav_dir) / f"{r['clip_id']}.wav", wav, gen.sr)
            m = clip_metrics(wav, r)
            for k, v in m.items():
                scores.per_clip.setdefault(k, []).append(v)
            scores.clip_ids.append(str(r["clip_id"]))
        if evaluator is not None:
            ev = evaluator_metrics(evaluator, wavs, [r["wav_mix"] for r in batch], [r["frames"] for r in batch])
            for k in ("sim", "kl"):
                scores.per_clip.setdefault(k, []).extend(float(x) for x in ev[k])
            scores.audio.extend(ev["audio"].astype(np.float32))
            scores.ref_audio.extend(ev["ref_audio"].astype(np.float32))
            scores.video.extend(ev["video"].astype(np.float32))
            scores.probs.extend(ev["probs"].astype(np.float32))
        if on_batch is not None:
            on_batch(len(scores), objective_value(scores, objective), scores)
    return scores


def save_scores(scores: ClipScores, directory: str | Path, embeddings: bool = True) -> None:
    """Write ``per_clip.csv`` (and ``embeddings.npz`` for the set metrics) into ``directory``."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(scores.rows()).to_csv(d / "per_clip.csv", index=False)
    if embeddings and scores.audio:
        np.savez_compressed(d / "embeddings.npz", audio=np.stack(scores.audio).astype(np.float16),
                            ref_audio=np.stack(scores.ref_audio).astype(np.float16),
                            video=np.stack(scores.video).astype(np.float16), probs=np.stack(scores.probs))


def load_scores(directory: str | Path) -> ClipScores:
    """Read what :func:`save_scores` wrote."""
    d = Path(directory)
    df = pd.read_csv(d / "per_clip.csv")
    metrics = [c for c in df.columns if c not in ("clip_id", "gen_s")]
    s = ClipScores([str(c) for c in df["clip_id"]], {m: df[m].astype(float).tolist() for m in metrics},
                   gen_seconds=df["gen_s"].astype(float).tolist())
    if (d / "embeddings.npz").exists():
        z = np.load(d / "embeddings.npz")
        s.audio = list(z["audio"].astype(np.float32))
        s.ref_audio = list(z["ref_audio"].astype(np.float32))
        s.video = list(z["video"].astype(np.float32))
        s.probs = list(z["probs"].astype(np.float32))
    return s


def evaluate_arm(model_dir: str, overrides: dict, features: str, split: str, n: int, seed: int, evaluator: str | None,
                 objective: dict, threads: int):
    """One arm (a model + sampler settings) generated and scored on ``n`` clips of ``split``.

    Args:
        model_dir: the generator directory.
        overrides: sampler settings.
        features: the featurize run.
        split: ``val`` or ``test``.
        n: clips (the first ``n`` by clip id).
        seed: generation seed.
        evaluator: an evaluator directory (None: no evaluator metrics).
        objective: the objective weights.
        threads: torch intra-op threads.

    Returns:
        the arm's :class:`ClipScores`.
    """

    torch.set_num_threads(threads)
    gen = SoundtrackGenerator.load(model_dir)
    rows = load_rows(features, split, n)
    ev = Evaluator.load(evaluator) if evaluator else None
    return evaluate_clips(gen, rows, overrides, seed, ev, objective, batch_clips=len(rows))


def compare(best, base, objective: dict) -> dict[str, Any]:
    """Best vs defaults: objective and every per-clip metric, means and paired 95 % intervals."""
    out: dict[str, Any] = {"clips": len(best), "objective": {
        "best": objective_value(best, objective), "defaults": objective_value(base, objective),
        "best_minus_defaults": paired_objective_ci(best, base, objective)}}
    mb, md = best.means(), base.means()
    metrics = {}
    for k in best.per_clip:
        a, b = [float(x) for x in best.per_clip[k]], [float(x) for x in base.per_clip[k]]
        pairs = [(x, y) for x, y in zip(a, b) if math.isfinite(x) and math.isfinite(y)]
        entry = {"best": mb.get(k), "defaults": md.get(k)}
        if len(pairs) >= 2:
            d, lo, hi = paired_bootstrap_ci([p[0] for p in pairs], [p[1] for p in pairs], seed=0)
            entry["best_minus_defaults"] = {"diff": d, "ci95": [lo, hi], "n": len(pairs)}
        metrics[k] = entry
    out["metrics"] = metrics
    sb, sd = best.set_metrics(), base.set_metrics()
    out["set_metrics"] = {k: {"best": sb.get(k), "defaults": sd.get(k)} for k in sb}
    return out
