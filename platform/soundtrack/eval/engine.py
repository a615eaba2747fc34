"""The one generate-and-score engine: what tune trials and the bench both run.

Three steps, each one function:

* :func:`run_jobs` turns jobs (``clip_id``, ``source``, ``seed``, ``kind``) into per-clip
  records (:class:`ClipRecord`): the audio of each job (a generator's output, or a
  clip's real mix for the bench's ``ground_truth`` / ``retrieval`` kinds; taken from an
  optional on-disk cache when there) scored with
  :func:`soundtrack.eval.scoring.clip_metrics`. The generator raises on non-finite
  output (:meth:`~soundtrack.pipelines.generator.SoundtrackGenerator.generate`, at the
  denoising step where it appears), so nothing non-finite is scored: such a job gives a
  *failed* record (its error message, no metrics, nothing cached) and the other jobs go
  on. A job with ``sources`` is a long video made of those clips one after the other
  (:func:`long_video_row`), scored with the seam metric at its window joins
  (:func:`soundtrack.metrics.seam_metrics`).
* :func:`evaluate_audio` is the evaluator step: SIM / KL / P@K hits per clip and the
  embeddings set metrics need, for one batch of records.
* :class:`ClipScores` accumulates both and computes set metrics; :func:`objective_value`
  combines them into the objective ``sum_m w_m * value_m``: per-clip metrics averaged
  over the clips (nan-aware), set metrics (``fad``, ``is``, ``csd``, ``hsd``,
  ``dyn_macro``) and P@K (``p_at_1`` / ``p_at_5``: retrieval in the pool of the clips
  scored so far) computed on the set. Failed clips are kept apart (``failed``: clip id ->
  error) and counted (``failed_clips`` in :meth:`ClipScores.means`, what a tune trial
  reports); the objective is over the clips that were scored.

A metric named in the objective that is missing (``sim`` without an evaluator) or not
finite (nan on every clip; a set metric undefined on a set this small) makes the
objective undefined: :class:`soundtrack.errors.ObjectiveError` names it and why; a tune
trial then errors (Tune records it as errored) instead of scoring 0.

:func:`evaluate_clips` is the trials' loop (batches of clips, a callback with the
objective after each: the intermediate result ASHA compares at its rungs);
:func:`soundtrack.eval.bench.run_chunk` and :func:`soundtrack.eval.bench.score_sets`
are the bench's (a cache per method, whole-set evaluator step per seed).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Sequence

import numpy as np
import pandas as pd
import soundfile as sf
import torch

from soundtrack.data.features import DEFAULT_CONFIG, dynamics_db
from soundtrack.data.media import write_wav
from soundtrack.data.shards import load_split
from soundtrack.errors import GeneratorError, ObjectiveError
from soundtrack.eval.scoring import (
    AUDIO_METRICS,
    SET_METRICS,
    Evaluator,
    ScoringConfig,
    audio_descriptors,
    clip_metrics,
    evaluator_metrics,
    set_metrics,
)
from soundtrack.metrics import (
    SEAM_METRICS,
    paired_bootstrap_ci,
    seam_metrics,
    subsample_indices,
    subsample_interval,
)
from soundtrack.pipelines.generator import SoundtrackGenerator
from soundtrack.storage import atomic_write

log = logging.getLogger(__name__)

#: Sample rate of every scored waveform (Hz).
SR = ScoringConfig().sr
#: Shard columns a scored clip needs.
ROW_COLUMNS = ("clip_id", "frames", "wav_mix", "melody", "dynamics_db")
#: Shard columns a scored clip uses when the data set has them (``load_split(optional=...)``):
#: ``label_event_times`` for the sync and beat metrics, ``label_mode`` for ``mode_match`` and
#: ``label_mood`` for ``mood_acc`` (nan without them: ingested real videos have none).
OPTIONAL_ROW_COLUMNS = ("label_event_times", "label_mode", "label_mood")
#: Job kinds: a generator's output, the clip's real mix, or another clip's real mix.
KINDS = ("generator", "ground_truth", "retrieval")
#: Metrics :class:`ClipScores` computes on the whole set of clips, not per clip.
POOLED_METRICS = (*SET_METRICS, "p_at_1", "p_at_5")
#: Metrics that need the evaluator (its encoders or its classifier).
EVALUATOR_METRICS = ("sim", "kl", "mood_acc", "fad", "is", "p_at_1", "p_at_5")
#: Set metrics :meth:`ClipScores.set_metrics` computes when no names are given.
DEFAULT_SET_METRICS = ("fad", "is", "p_at_1", "p_at_5", "csd", "hsd", "dyn_macro")

_RECORD_KEYS = ("clip_id", "seed", "source", "gen_s", "audio_s", "cached", "failed", "error", "sources", "joins")


# ----------------------------------------------------------------------------- generating


@dataclass
class ClipRecord:
    """One job's scored audio.

    Attributes:
        clip_id: the clip scored against.
        seed: generation seed.
        source: the clip whose video conditioned the generator (or whose real audio was used).
        metrics: :func:`~soundtrack.eval.scoring.clip_metrics` of the audio.
        gen_s: generation compute seconds (0 when cached or real audio).
        audio_s: audio duration (s).
        cached: taken from the cache.
        wav: the waveform (only with ``keep_audio``).
        dynamics: its dynamics curve (dB per frame; only with ``keep_audio``).
        error: why the job failed (a :class:`~soundtrack.errors.GeneratorError`'s message:
            the generator diverged, non-finite output); ``None`` when it was scored. A
            failed record has no metrics and no audio.
        sources: the clips of a long video, in order (``None``: one clip).
        joins: a long video's window joins ``[start_s, end_s]`` (where the seams were measured).
    """

    clip_id: str
    seed: int
    source: str
    metrics: dict[str, float]
    gen_s: float = 0.0
    audio_s: float = 0.0
    cached: bool = False
    wav: np.ndarray | None = None
    dynamics: np.ndarray | None = None
    error: str | None = None
    sources: list[str] | None = None
    joins: list[list[float]] | None = None

    @property
    def failed(self) -> bool:
        """The job failed (:attr:`error`); nothing was scored."""
        return self.error is not None

    def to_dict(self, cached: bool = True) -> dict[str, Any]:
        """The flat record the bench tabulates (``cached`` left out with ``cached=False``: the cache file).

        A failed record adds ``failed: True`` and ``error``; a long video's adds ``sources``
        and ``joins``.
        """
        d = {"clip_id": self.clip_id, "seed": self.seed, "source": self.source, **self.metrics, "gen_s": self.gen_s,
             "audio_s": self.audio_s}
        if self.failed:
            d.update(failed=True, error=self.error)
        if self.sources is not None:
            d.update(sources=list(self.sources), joins=[list(j) for j in self.joins or []])
        if cached:
            d["cached"] = self.cached
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], cached: bool) -> "ClipRecord":
        """The record of a cache file (:meth:`to_dict`)."""
        return cls(str(d["clip_id"]), int(d["seed"]), str(d["source"]),
                   {k: v for k, v in d.items() if k not in _RECORD_KEYS}, float(d["gen_s"]), float(d["audio_s"]),
                   cached, error=d.get("error"), sources=d.get("sources"), joins=d.get("joins"))


def long_video_row(rows: Mapping[str, Mapping[str, Any]], ids: Sequence[str], fps: float = 10.0) -> dict[str, Any]:
    """One long video made of clips played one after the other: its frames and real mix.

    The audio is the clips' ``wav_mix`` concatenated (clip ``k`` starts where clip
    ``k - 1``'s audio ends); the frames are sampled on that timeline at ``fps``, frame
    ``j`` being the frame of the clip playing at ``j / fps`` that is on screen then (the
    last one whose time ``i / fps`` in its clip is <= the time since the clip started), as
    :func:`soundtrack.data.media.read_frames` samples a video. So consecutive clips of one
    source give (up to its 10 fps frame grid) the source's own video and audio.

    Args:
        rows: decoded shard rows by clip id (``frames``, ``wav_mix``).
        ids: the clips, in playing order.
        fps: the clips' frame rate.

    Returns:
        ``{"clip_id", "frames": (ceil(T_total * fps), H, W, 3), "wav_mix", "duration_s",
        "offsets_s"}`` (each clip's start in the long video).
    """
    parts = [rows[c] for c in ids]
    lengths = [len(np.asarray(r["wav_mix"]).reshape(-1)) / SR for r in parts]
    offsets = np.concatenate([[0.0], np.cumsum(lengths)[:-1]])
    total = float(sum(lengths))
    n = int(math.ceil(round(total * fps, 3)))
    t = np.arange(n) / fps
    k = np.clip(np.searchsorted(offsets, t + 1e-6, side="right") - 1, 0, len(parts) - 1)
    frames = np.empty((n, *np.shape(parts[0]["frames"])[1:]), np.uint8)
    for j in range(n):
        clip = parts[int(k[j])]["frames"]
        frames[j] = clip[min(int(np.floor((t[j] - offsets[k[j]]) * fps + 1e-6)), len(clip) - 1)]
    wav = np.concatenate([np.asarray(r["wav_mix"], np.float32).reshape(-1) for r in parts])
    return {"clip_id": "+".join(ids), "frames": frames, "wav_mix": wav, "duration_s": total,
            "offsets_s": [float(o) for o in offsets]}


def _check_finite(wav: np.ndarray, kind: str, cid: str, seed: int, src: str) -> None:
    """Raise :class:`GeneratorError` when a job's audio has a non-finite sample (it is never scored)."""
    bad = int(np.count_nonzero(~np.isfinite(wav)))
    if bad:
        raise GeneratorError(f"the {kind} audio of clip {cid!r} (seed {seed}, source {src!r}) has {bad} non-finite "
                             f"samples of {len(wav)}; it is not scored")


def _score_job(wav: np.ndarray, rows: Mapping[str, Mapping[str, Any]], cid: str, joins: list[list[float]] | None,
               desc: Mapping[str, np.ndarray] | None = None, scoring: ScoringConfig = ScoringConfig()) -> dict[str, float]:
    """A clip's metrics against its row; a long video's (``joins`` given) seam metrics at its joins."""
    if joins is not None:
        return seam_metrics(wav, SR, [tuple(j) for j in joins])
    return clip_metrics(wav, rows[cid], scoring, desc=desc)


def scoring_suffix(scoring: ScoringConfig) -> str:
    """The cache file suffix of a scoring's records: ``""`` for the default analysers, else
    ``.<transcriber>-<beat tracker>-<key estimator>`` (the waveforms are shared; each
    analyser set keeps its own metrics file beside them)."""
    tag = (scoring.transcriber, scoring.beat_tracker, scoring.key_estimator)
    default = ScoringConfig()
    return "" if tag == (default.transcriber, default.beat_tracker, default.key_estimator) else "." + "-".join(tag)


def run_jobs(jobs: Sequence[Mapping[str, Any]], rows: Mapping[str, Mapping[str, Any]],
             model: SoundtrackGenerator | str | os.PathLike | None, overrides: Mapping[str, Any] | None = None,
             cache_dir: str | os.PathLike | None = None, keep_audio: bool = False,
             scoring: ScoringConfig = ScoringConfig()) -> Iterator[ClipRecord]:
    """Generate (or take from the cache) and score each job's audio, one record per job.

    Args:
        jobs: dicts with ``clip_id`` (scored against this clip's row), ``seed`` and
            optionally ``source`` (the clip whose video conditions the generator or whose
            real audio is used; default ``clip_id``) and ``kind`` (one of :data:`KINDS`;
            default ``generator``). A long-video job has ``sources`` (the clips played one
            after the other, :func:`long_video_row`; ``clip_id`` names the video) and
            ``joins`` (its window joins, ``[start_s, end_s]`` each, see
            :func:`soundtrack.pipelines.sampler.window_joins`); it is scored with
            :func:`soundtrack.metrics.seam_metrics` (kinds ``generator`` and ``ground_truth``).
        rows: decoded shard rows by clip id (:func:`soundtrack.data.shards.load_split`,
            :data:`ROW_COLUMNS`).
        model: a loaded generator (anything with ``generate``), or its directory (loaded
            at the first generator job; ``None`` when no job needs one).
        overrides: sampler overrides (``generate(..., **overrides)``).
        cache_dir: where each job's waveform (``<clip>_s<seed>.wav``, float) and record
            (``<clip>_s<seed>.json``) are written atomically and found again (``None``: no cache).
            A cached record lacking one of :data:`~soundtrack.eval.scoring.AUDIO_METRICS`
            (written before that metric existed) is rescored from its cached waveform and
            rewritten, keeping its ``gen_s``; the waveform is not regenerated.
        keep_audio: put the waveform and its dynamics curve on each record.
        scoring: the per-clip scoring (its analysers: transcriber, beat tracker, key
            estimator). Records scored with other analysers than the defaults are cached in
            ``<clip>_s<seed><suffix>.json`` (:func:`scoring_suffix`) beside the shared
            waveform, so switching analysers rescores cached audio without regenerating it.

    Yields:
        :class:`ClipRecord` per job, in job order. A generator job whose generation raises
        :class:`~soundtrack.errors.GeneratorError` (a diverged model: non-finite latents
        or audio; also a video the model refuses) gives a *failed* record (``error``: the
        message; no metrics, nothing cached, logged as a warning) and the next job runs:
        a failed clip is counted, never scored as silence. A failed job is not cached, so
        a later run tries it again.

    Raises:
        GeneratorError: real or cached audio that is not finite (a damaged cache or data
            set, not a model failure): nothing non-finite is scored or cached.
        ValueError: an unknown job kind, or a long video of kind ``retrieval``.
    """
    overrides = dict(overrides or {})
    cache = Path(cache_dir) if cache_dir is not None else None
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
    gen = model if model is not None and not isinstance(model, (str, os.PathLike)) else None
    for job in jobs:
        cid, seed = str(job["clip_id"]), int(job["seed"])
        src, kind = str(job.get("source", cid)), job.get("kind", "generator")
        if kind not in KINDS:
            raise ValueError(f"job kind {kind!r} is not one of {', '.join(KINDS)}")
        sources = [str(c) for c in job["sources"]] if job.get("sources") else None
        joins = [[float(a), float(b)] for a, b in job.get("joins") or []] if sources else None
        if sources is not None and kind == "retrieval":
            raise ValueError(f"long video {cid}: kind 'retrieval' has no long form (generator or ground_truth)")
        wanted = SEAM_METRICS if sources is not None else AUDIO_METRICS
        wav_path = cache / f"{cid}_s{seed}.wav" if cache is not None else None
        met_path = cache / f"{cid}_s{seed}{scoring_suffix(scoring)}.json" if cache is not None else None
        if met_path is not None and met_path.is_file() and wav_path.is_file():
            rec = ClipRecord.from_dict(json.loads(met_path.read_text()), cached=True)
            missing = [m for m in wanted if m not in rec.metrics]
            wav = sf.read(str(wav_path), dtype="float32")[0] if keep_audio or missing else None
            if missing:  # an older cache: score what it lacks from the cached audio, keep gen_s
                log.info("cached clip %s (seed %d) lacks %s; rescoring its cached audio", cid, seed, ", ".join(missing))
                _check_finite(wav, kind, cid, seed, src)
                rec.metrics = _score_job(wav, rows, cid, joins, scoring=scoring)
                atomic_write(met_path, lambda p: p.write_text(json.dumps(rec.to_dict(cached=False))))
            if keep_audio:
                rec.wav, rec.dynamics = wav, dynamics_db(wav, DEFAULT_CONFIG)
            yield rec
            continue
        gen_s = 0.0
        row = long_video_row(rows, sources) if sources is not None else None  # a long video's frames and mix
        if wav_path is not None and wav_path.is_file():
            wav, _ = sf.read(str(wav_path), dtype="float32")
        elif kind in ("ground_truth", "retrieval"):
            wav = np.asarray((row or rows[src])["wav_mix"], np.float32)
        else:
            if gen is None:
                if model is None:
                    raise ValueError(f"job {cid} (seed {seed}) needs a generator, and none was given")
                gen = SoundtrackGenerator.load(model)
            t = time.perf_counter()
            try:
                wav = np.asarray(gen.generate((row or rows[src])["frames"], seed=seed, clip_id=cid, **overrides),
                                 np.float32).reshape(-1)
                _check_finite(wav, kind, cid, seed, src)
            except GeneratorError as exc:  # counted as failed; the other jobs go on
                log.warning("clip %s (seed %d, source %s) failed: %s", cid, seed, src, exc)
                yield ClipRecord(cid, seed, src, {}, time.perf_counter() - t, 0.0, error=str(exc), sources=sources,
                                 joins=joins)
                continue
            gen_s = time.perf_counter() - t
        wav = np.asarray(wav, np.float32).reshape(-1)
        _check_finite(wav, kind, cid, seed, src)
        if wav_path is not None and not wav_path.is_file():
            atomic_write(wav_path, lambda p: sf.write(str(p), wav, SR, subtype="FLOAT", format="WAV"))
        desc = audio_descriptors(wav, SR, scoring=scoring) if sources is None or keep_audio else None
        rec = ClipRecord(cid, seed, src, _score_job(wav, rows, cid, joins, desc, scoring), gen_s, len(wav) / SR,
                         sources=sources, joins=joins)
        if met_path is not None:
            atomic_write(met_path, lambda p: p.write_text(json.dumps(rec.to_dict(cached=False))))
        if keep_audio:
            rec.wav, rec.dynamics = wav, desc["dynamics"]
        yield rec


def evaluate_audio(evaluator: Evaluator, wavs: Sequence[np.ndarray], rows: Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
    """The evaluator step on one batch: per-clip ``sim``, ``kl``, ``mood_acc``, ``p_at_1`` /
    ``p_at_5`` hits (pool: this batch) and the embeddings (``audio``, ``ref_audio``, ``video``, ``probs``).

    Args:
        evaluator: the evaluator.
        wavs: the batch's waveforms.
        rows: their clips' decoded rows (``wav_mix``: KL's and FAD's reference; ``frames``: SIM's
            video; ``label_mood`` when present: ``mood_acc``'s target).
    """
    return evaluator_metrics(evaluator, wavs, [r["wav_mix"] for r in rows], [r["frames"] for r in rows],
                             moods=[r.get("label_mood") for r in rows])


# ----------------------------------------------------------------------------- scores


@dataclass
class ClipScores:
    """Per-clip metrics and the embeddings set metrics need, growing batch by batch.

    Attributes:
        clip_ids: the clips scored so far, in order.
        per_clip: ``{metric: [value per clip]}``.
        audio / ref_audio / video: evaluator embeddings (N, T, E) per clip (lists of arrays).
        probs: evaluator class probabilities of the generated audio (list of (C,)).
        gen_seconds: generation wall time per clip (s).
        dyn_ref / dyn_gen: the clips' reference and generated dynamics curves (``dyn_macro``).
        failed: clips whose generation failed (clip id -> error message); they are in none
            of the lists above.
    """

    clip_ids: list[str] = field(default_factory=list)
    per_clip: dict[str, list[float]] = field(default_factory=dict)
    audio: list[np.ndarray] = field(default_factory=list)
    ref_audio: list[np.ndarray] = field(default_factory=list)
    video: list[np.ndarray] = field(default_factory=list)
    probs: list[np.ndarray] = field(default_factory=list)
    gen_seconds: list[float] = field(default_factory=list)
    dyn_ref: list[np.ndarray | None] = field(default_factory=list)
    dyn_gen: list[np.ndarray | None] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)

    def __len__(self) -> int:
        """The clips scored (failed ones not included: :attr:`n_processed`)."""
        return len(self.clip_ids)

    @property
    def n_processed(self) -> int:
        """Clips generated so far, scored or failed (a tune trial's ``clips``, ASHA's resource)."""
        return len(self.clip_ids) + len(self.failed)

    def add_failed(self, rec: ClipRecord) -> None:
        """Record a failed job of :func:`run_jobs` (its error; it is not scored).

        Args:
            rec: the failed record (``rec.error`` set).
        """
        self.failed[rec.clip_id] = str(rec.error)

    def add(self, rec: ClipRecord, row: Mapping[str, Any]) -> None:
        """Append one record of :func:`run_jobs` (``row``: its clip's decoded row)."""
        self.clip_ids.append(rec.clip_id)
        for k, v in rec.metrics.items():
            self.per_clip.setdefault(k, []).append(v)
        self.gen_seconds.append(rec.gen_s)
        ref = row.get("dynamics_db")
        self.dyn_ref.append(None if ref is None else np.asarray(ref, np.float32))
        self.dyn_gen.append(None if rec.dynamics is None else np.asarray(rec.dynamics, np.float32))

    def add_evaluated(self, ev: Mapping[str, np.ndarray]) -> None:
        """Append the evaluator step (:func:`evaluate_audio`) of the clips added last."""
        for k in ("sim", "kl", "mood_acc"):
            if k in ev:
                self.per_clip.setdefault(k, []).extend(float(x) for x in ev[k])
        self.audio.extend(ev["audio"].astype(np.float32))
        self.ref_audio.extend(ev["ref_audio"].astype(np.float32))
        self.video.extend(ev["video"].astype(np.float32))
        self.probs.extend(ev["probs"].astype(np.float32))

    def subset(self, idx: Sequence[int]) -> "ClipScores":
        """The clips at ``idx`` (repeats allowed: bootstrap resamples)."""
        pick = lambda xs: [xs[i] for i in idx] if xs else []  # noqa: E731
        return ClipScores([self.clip_ids[i] for i in idx], {k: pick(v) for k, v in self.per_clip.items()},
                          pick(self.audio), pick(self.ref_audio), pick(self.video), pick(self.probs),
                          pick(self.gen_seconds), pick(self.dyn_ref), pick(self.dyn_gen))

    def means(self) -> dict[str, float]:
        """Per-clip metrics averaged over the scored clips (nan where every clip is nan),
        plus ``failed_clips``: how many clips failed (a count, not a mean; what a tune
        trial reports so that its table shows them)."""
        out = {}
        for k, v in self.per_clip.items():
            a = np.asarray(v, float)
            out[k] = float(np.nanmean(a)) if np.isfinite(a).any() else math.nan
        out["failed_clips"] = float(len(self.failed))
        return out

    def set_metric_values(self, names: Sequence[str]) -> tuple[dict[str, float], dict[str, str]]:
        """Set metrics on the clips so far, with the reason of each undefined one.

        Each metric is computed from its own inputs only (CSD / HSD from the per-clip BCS /
        BHS, FAD from the audio and reference embeddings, IS from the class probabilities,
        P@K from the audio and video embeddings, ``dyn_macro`` from the dynamics curves),
        so one undefined metric leaves the others defined.

        Args:
            names: metrics of :data:`POOLED_METRICS`.

        Returns:
            ``({metric: value}, {metric: why it is undefined})``: every undefined metric
            is nan in the first and explained in the second.
        """
        n = len(self)
        has_emb = n > 0 and len(self.audio) == n
        inputs: dict[str, tuple[str | None, Callable[[], dict[str, float]]]] = {
            "csd": ("needs the per-clip bcs and bhs" if not {"bcs", "bhs"} <= set(self.per_clip) else None,
                    lambda: set_metrics({k: np.asarray(self.per_clip[k], float) for k in ("bcs", "bhs")})),
            "fad": ("needs an evaluator (no evaluator embeddings were computed)" if not has_emb else None,
                    lambda: set_metrics({}, audio=np.stack(self.audio), ref_audio=np.stack(self.ref_audio))),
            "is": ("needs an evaluator (no class probabilities were computed)" if not has_emb or not self.probs
                   else None, lambda: set_metrics({}, probs=np.stack(self.probs))),
            "p_at_1": ("needs an evaluator (no evaluator embeddings were computed)" if not has_emb
                       else f"needs a pool of at least 2 clips, got {n}" if n < 2 else None,
                       lambda: set_metrics({}, audio=np.stack(self.audio), video=np.stack(self.video))),
            "dyn_macro": ("needs every clip's reference and generated dynamics curves"
                          if n == 0 or len(self.dyn_ref) != n or len(self.dyn_gen) != n
                          or any(d is None for d in (*self.dyn_ref, *self.dyn_gen)) else None,
                          lambda: set_metrics({}, dyn_ref=self.dyn_ref, dyn_gen=self.dyn_gen)),
        }
        inputs["hsd"], inputs["p_at_5"] = inputs["csd"], inputs["p_at_1"]
        values: dict[str, float] = {}
        why: dict[str, str] = {}
        computed: dict[int, dict[str, float] | str] = {}  # one call per input group
        for m in names:
            if m not in inputs:
                raise KeyError(f"{m!r} is not a set metric; set metrics: {', '.join(POOLED_METRICS)}")
            missing, compute = inputs[m]
            values[m] = math.nan
            if n == 0:
                why[m] = "needs at least one scored clip"
                continue
            if missing:
                why[m] = missing
                continue
            key = id(inputs[m])
            if key not in computed:
                try:
                    computed[key] = compute()
                except ValueError as exc:  # e.g. FAD's covariance on too few embeddings
                    computed[key] = f"is undefined on {n} clip(s): {exc}"
            got = computed[key]
            if isinstance(got, str):
                why[m] = got
                continue
            values[m] = float(got.get(m, math.nan))
            if not math.isfinite(values[m]):
                why[m] = f"is {values[m]} on these {n} clip(s)"
        return values, why

    def set_metrics(self, names: Sequence[str] | None = None, required: Sequence[str] = ()) -> dict[str, float]:
        """Set metrics (FAD, IS, P@K, CSD, HSD, dyn_macro) on the clips so far.

        Args:
            names: which (default :data:`DEFAULT_SET_METRICS`).
            required: metrics that must be defined (an objective's).

        Returns:
            ``{metric: value}``; an undefined metric not in ``required`` is nan (logged
            with its reason).

        Raises:
            ObjectiveError: a ``required`` metric is undefined (the message says why).
        """
        names = list(names) if names is not None else list(DEFAULT_SET_METRICS)
        values, why = self.set_metric_values(list(dict.fromkeys([*names, *required])))
        for m in required:
            if m in why:
                raise ObjectiveError(f"objective metric {m!r} {why[m]}")
        for m in names:
            if m in why:
                log.info("set metric %s left nan: it %s", m, why[m])
        return {m: values[m] for m in names}

    def rows(self) -> list[dict[str, Any]]:
        """One dict per clip (clip id, generation seconds, every per-clip metric)."""
        return [{"clip_id": c, "gen_s": round(self.gen_seconds[i], 3),
                 **{k: v[i] for k, v in self.per_clip.items()}} for i, c in enumerate(self.clip_ids)]


# ----------------------------------------------------------------------------- the objective


def require_inputs(objective: Mapping[str, float], has_evaluator: bool) -> None:
    """Fail before any generation when the objective needs an evaluator and there is none.

    Raises:
        ObjectiveError: naming the first such metric.
    """
    for m in objective:
        if m in EVALUATOR_METRICS and not has_evaluator:
            raise ObjectiveError(f"objective metric {m!r} needs an evaluator (none was given); set 'evaluator' "
                                 "or drop it from the objective")


def _clip_metric(scores: ClipScores, m: str) -> np.ndarray:
    """The per-clip values of objective metric ``m``, checked to be defined on some clip."""
    if m not in scores.per_clip:
        if m in EVALUATOR_METRICS:
            raise ObjectiveError(f"objective metric {m!r} needs an evaluator (none was given)")
        raise ObjectiveError(f"objective metric {m!r} was not computed on these clips "
                             f"(computed: {', '.join(scores.per_clip) or 'nothing'})")
    v = np.asarray(scores.per_clip[m], float)
    if not np.isfinite(v).any():
        raise ObjectiveError(f"objective metric {m!r} is undefined (not finite) on all {len(v)} clip(s); it cannot "
                             "rank trials: drop it from the objective or score clips where it is defined")
    return v


def objective_value(scores: ClipScores, objective: Mapping[str, float]) -> float:
    """``sum_m w_m * value_m`` over the objective's metrics on the clips in ``scores``.

    A per-clip metric is averaged over the clips where it is finite; a set metric (and
    P@K) is computed on the set.

    Args:
        scores: the clips' scores.
        objective: ``{metric: weight}`` (checked by :func:`soundtrack.tuning.config.check_objective`).

    Raises:
        ObjectiveError: a metric of the objective is missing, nan on every clip, or a set
            metric undefined on this set (the message names the metric and why).
    """
    if not len(scores):
        why = ""
        if scores.failed:
            cid, err = next(iter(scores.failed.items()))
            why = f" ({len(scores.failed)} clip(s) failed; {cid}: {err})"
        raise ObjectiveError(f"the objective is undefined on 0 scored clips{why}")
    pooled = [m for m in objective if m in POOLED_METRICS]
    sets = scores.set_metrics(pooled, required=pooled) if pooled else {}
    total = 0.0
    for m, w in objective.items():
        total += w * (sets[m] if m in POOLED_METRICS else float(np.nanmean(_clip_metric(scores, m))))
    return float(total)


def per_clip_objective(scores: ClipScores, objective: Mapping[str, float]) -> np.ndarray | None:
    """The objective of each clip alone, when it has only per-clip metrics (else ``None``).

    A clip where a metric is nan takes that metric's mean over the other clips, so the
    mean over clips always equals :func:`objective_value`.

    Raises:
        ObjectiveError: as :func:`objective_value`.
    """
    if any(m in POOLED_METRICS for m in objective):
        return None
    out = np.zeros(len(scores))
    for m, w in objective.items():
        v = _clip_metric(scores, m)
        out += w * np.where(np.isfinite(v), v, np.nanmean(v))
    return out


def paired_objective_ci(a: ClipScores, b: ClipScores, objective: Mapping[str, float], n_boot: int = 1000,
                        seed: int = 0, alpha: float = 0.05) -> dict[str, Any]:
    """Paired interval of objective(a) - objective(b) over shared clips.

    With only per-clip metrics this is :func:`soundtrack.metrics.paired_bootstrap_ci`
    of the per-clip objectives. With set metrics (FAD, IS, ...) the objective is
    recomputed on shared random halves of the clips, drawn without replacement (the same
    subsets for ``a`` and ``b``; at most 200: FAD costs a matrix square root each), and
    the interval is :func:`soundtrack.metrics.subsample_interval` around the point
    difference: a percentile bootstrap of a set metric can miss its own point (FAD's
    small-set bias; see that function). A subset on which the objective is undefined is
    left out.

    Args:
        a: method A's scores (same clip order as ``b``).
        b: method B's scores.
        objective: ``{metric: weight}``.
        n_boot: resamples.
        seed: resampling seed.
        alpha: 1 - confidence level.

    Returns:
        ``{"diff": point, "ci95": [lo, hi], "n": clips, "n_boot": resamples used,
        "interval": "paired bootstrap" | "subsampling"}``.

    Raises:
        ObjectiveError: the objective is undefined on ``a`` or ``b``.
    """
    if a.clip_ids != b.clip_ids:
        raise ValueError("paired scores need the same clips in the same order")
    pa, pb = per_clip_objective(a, objective), per_clip_objective(b, objective)
    if pa is not None:
        d, lo, hi = paired_bootstrap_ci(pa, pb, n_boot=n_boot, alpha=alpha, seed=seed)
        return {"diff": d, "ci95": [lo, hi], "n": len(a), "n_boot": n_boot, "interval": "paired bootstrap"}
    diff = objective_value(a, objective) - objective_value(b, objective)
    n, m = len(a), len(a) // 2
    reps = []
    if m >= 2:
        for idx in subsample_indices(n, min(n_boot, 200), m, seed):
            try:
                reps.append(objective_value(a.subset(idx), objective) - objective_value(b.subset(idx), objective))
            except ObjectiveError:
                continue
    v = np.asarray(reps, float)
    v = v[np.isfinite(v)]
    lo, hi = subsample_interval(diff, v, m, n, alpha=alpha) if len(v) else (math.nan, math.nan)
    return {"diff": diff, "ci95": [float(lo), float(hi)], "n": n, "n_boot": int(len(v)), "interval": "subsampling"}


# ----------------------------------------------------------------------------- tune trials and arms


def evaluate_clips(
    gen: SoundtrackGenerator,
    rows: Sequence[Mapping[str, Any]],
    overrides: Mapping[str, Any],
    seed: int,
    evaluator: Evaluator | None,
    objective: Mapping[str, float],
    batch_clips: int = 4,
    on_batch: Callable[[int, float, ClipScores], None] | None = None,
    wav_dir: str | Path | None = None,
) -> ClipScores:
    """Generate and score every clip (:func:`run_jobs`, :func:`evaluate_audio`), reporting after each batch.

    Args:
        gen: a :class:`~soundtrack.pipelines.generator.SoundtrackGenerator`.
        rows: decoded shard rows (:func:`soundtrack.data.shards.load_split` of :data:`ROW_COLUMNS`).
        overrides: sampler overrides of this setting (``gen.generate(..., **overrides)``).
        seed: generation seed (with the clip id it seeds each clip's noise).
        evaluator: a :class:`~soundtrack.eval.scoring.Evaluator` (``None``: no SIM / KL / FAD).
        objective: ``{metric: weight}``.
        batch_clips: clips per callback.
        on_batch: ``fn(clips_done, objective_so_far, scores)`` after each batch.
        wav_dir: where to write the generated WAVs (16-bit; ``None``: not written).

    Returns:
        the :class:`ClipScores` of all clips; a clip whose generation failed is in its
        ``failed`` (with the error) and the run goes on. ``on_batch`` gets the clips
        processed (scored or failed) and the objective on those scored.

    Raises:
        ObjectiveError: the objective needs an evaluator and there is none (before any
            generation), or is undefined on the clips of a batch (``on_batch`` only; e.g.
            every clip so far failed).
    """
    require_inputs(objective, evaluator is not None)
    by_id = {str(r["clip_id"]): r for r in rows}
    jobs = [{"clip_id": str(r["clip_id"]), "seed": int(seed)} for r in rows]
    scores = ClipScores()
    if wav_dir is not None:
        Path(wav_dir).mkdir(parents=True, exist_ok=True)
    for start in range(0, len(jobs), batch_clips):
        recs = list(run_jobs(jobs[start:start + batch_clips], by_id, gen, overrides, keep_audio=True))
        ok = [r for r in recs if not r.failed]
        for rec in recs:
            if rec.failed:
                scores.add_failed(rec)
                continue
            scores.add(rec, by_id[rec.clip_id])
            if wav_dir is not None:
                write_wav(Path(wav_dir) / f"{rec.clip_id}.wav", rec.wav, gen.sr)
        if evaluator is not None and ok:
            scores.add_evaluated(evaluate_audio(evaluator, [r.wav for r in ok], [by_id[r.clip_id] for r in ok]))
        if on_batch is not None:
            on_batch(scores.n_processed, objective_value(scores, objective), scores)
    return scores


def save_scores(scores: ClipScores, directory: str | Path, embeddings: bool = True) -> None:
    """Write ``per_clip.csv``, ``embeddings.npz`` (evaluator embeddings), ``dynamics.npz``
    (the dynamics curves) and, when clips failed, ``failed.json`` (clip id -> error) into
    ``directory``: what set metrics and comparisons need later."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(scores.rows()).to_csv(d / "per_clip.csv", index=False)
    if scores.failed:
        (d / "failed.json").write_text(json.dumps(scores.failed, indent=2))
    elif (d / "failed.json").exists():  # rewritten after each batch: none failed this time
        (d / "failed.json").unlink()
    if embeddings and scores.audio:
        np.savez_compressed(d / "embeddings.npz", audio=np.stack(scores.audio).astype(np.float16),
                            ref_audio=np.stack(scores.ref_audio).astype(np.float16),
                            video=np.stack(scores.video).astype(np.float16), probs=np.stack(scores.probs))
    curves = (*scores.dyn_ref, *scores.dyn_gen)
    if embeddings and scores.dyn_ref and all(c is not None for c in curves) and len({c.shape for c in curves}) == 1:
        np.savez_compressed(d / "dynamics.npz", ref=np.stack(scores.dyn_ref), gen=np.stack(scores.dyn_gen))


def load_scores(directory: str | Path) -> ClipScores:
    """Read what :func:`save_scores` wrote."""
    d = Path(directory)
    try:
        df = pd.read_csv(d / "per_clip.csv")
    except pd.errors.EmptyDataError:  # every clip failed: no row, no header
        df = pd.DataFrame({"clip_id": [], "gen_s": []})
    metrics = [c for c in df.columns if c not in ("clip_id", "gen_s")]
    s = ClipScores([str(c) for c in df["clip_id"]], {m: df[m].astype(float).tolist() for m in metrics},
                   gen_seconds=df["gen_s"].astype(float).tolist())
    if (d / "embeddings.npz").exists():
        z = np.load(d / "embeddings.npz")
        s.audio = list(z["audio"].astype(np.float32))
        s.ref_audio = list(z["ref_audio"].astype(np.float32))
        s.video = list(z["video"].astype(np.float32))
        s.probs = list(z["probs"].astype(np.float32))
    if (d / "dynamics.npz").exists():
        z = np.load(d / "dynamics.npz")
        s.dyn_ref, s.dyn_gen = list(z["ref"]), list(z["gen"])
    else:
        s.dyn_ref, s.dyn_gen = [None] * len(s), [None] * len(s)
    if (d / "failed.json").exists():
        s.failed = {str(k): str(v) for k, v in json.loads((d / "failed.json").read_text()).items()}
    return s


def evaluate_arm(model_dir: str, overrides: dict, features: str, split: str, n: int, seed: int, evaluator: str | None,
                 objective: dict, threads: int, too_few: Literal["raise", "fewer"] = "raise") -> ClipScores:
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
        too_few: a split with fewer than ``n`` clips raises
            :class:`~soundtrack.errors.TooFewClips` or scores the fewer clips.

    Returns:
        the arm's :class:`ClipScores`.
    """

    torch.set_num_threads(threads)
    require_inputs(objective, evaluator is not None)
    gen = SoundtrackGenerator.load(model_dir)
    rows = load_split(features, split, ROW_COLUMNS, n, too_few=too_few, hint="val_clips / test_clips",
                      optional=OPTIONAL_ROW_COLUMNS)
    ev = Evaluator.load(evaluator) if evaluator else None
    return evaluate_clips(gen, rows, overrides, seed, ev, objective, batch_clips=len(rows))


def _shared(a: ClipScores, b: ClipScores) -> tuple[ClipScores, ClipScores]:
    """Both score sets on the clips both scored, in ``a``'s order (a failed clip drops from both)."""
    if a.clip_ids == b.clip_ids:
        return a, b
    ib = {c: i for i, c in enumerate(b.clip_ids)}
    common = [c for c in a.clip_ids if c in ib]
    return a.subset([a.clip_ids.index(c) for c in common]), b.subset([ib[c] for c in common])


def compare(best: ClipScores, base: ClipScores, objective: dict) -> dict[str, Any]:
    """Best vs defaults: objective and every per-clip metric, means and paired 95 % intervals.

    Paired on the clips both scored: a clip that failed on either side (a diverged
    generation) is left out of both and listed under ``failed``.

    Raises:
        ObjectiveError: the objective is undefined on either set of clips.
    """
    failed = {"best": dict(best.failed), "defaults": dict(base.failed)}
    best, base = _shared(best, base)
    out: dict[str, Any] = {"clips": len(best), "failed": failed, "objective": {
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
