"""``soundtrack bench``: several methods x seeds x test clips, scored with the papers' metrics.

A bench YAML (``experiments/bench_*.yaml``) names the generator experiment that is
"ours" (``model``: an experiment YAML, trained when missing, or a model URI such as
``registry:<name>``), the evaluation encoders (``evaluator``), the clips (``split``,
``clips``), the ``seeds`` and the ``methods``. A method is one of:

* ``ground_truth``: the clip's real soundtrack (the mix);
* ``retrieval``: random retrieval, the real soundtrack of *another* test clip (a seeded
  derangement per seed), i.e. real music that ignores the video;
* ``generator``: a generator, with optional ``sampler`` overrides (guidance scale,
  weights, steps, attention, window), ``video: other`` (conditioned on another clip's
  video: the control), ``uri`` (any model URI), or ``train`` (deltas over the base
  experiment's train section: a variant trained with the same data, encoders, VAE and
  latent cache, only its UNet differs; run ``<base name>_<method>``).

Generation and per-clip scoring run as Ray tasks (one per method x chunk of clips), each
running the engine of tune trials too (:func:`soundtrack.eval.engine.run_jobs`). Each
generated waveform is cached at ``<run>/cache/<method>-<spec hash>/<clip>_s<seed>.wav``
with its per-clip metrics beside it, written atomically, so a killed or re-launched
bench only computes what is missing, and changing a method's settings changes its hash.
A cached record that lacks a per-clip metric added since (e.g. ``chroma_conc``,
``flatness``, ``mode_match``) is rescored from its cached waveform, not regenerated
(:func:`soundtrack.eval.engine.run_jobs`). The cache is keyed by the method and model,
not by the shards: a record scored against rows without ``label_mode`` keeps its nan
``mode_match`` until its cache file is removed.

Failed clips: a generation that diverges (non-finite latents or audio: the generator
raises :class:`~soundtrack.errors.GeneratorError` naming the window and the denoising
step) is a *failed* record (:func:`soundtrack.eval.engine.run_jobs`): its row in the
results has ``failed`` true and the ``error``, no metrics; it is left out of every mean
and set metric (never scored as silence), counted per method in the summary
(``failed``) and listed in ``summary.md``; the other clips are scored as usual. A failed
sample is not cached, so a re-run tries it again.

Long videos (``long_videos: N``): the bench's clips are single 10.24 s windows, so window
joins never occur in them. With ``long_videos`` > 0 the bench also builds N long videos
from its own clips (the first ``clips`` by clip id), each ``long_clips`` clips played one
after the other (:func:`soundtrack.eval.engine.long_video_row`: their real mixes
concatenated, the frames sampled on that timeline). Which clips (``long_from``):
``source`` (default) takes runs of consecutive clips of one source video (same
``source_id``, each starting where the previous one ends, ``start_s``): what ingesting a
long real video gives, so a long video is a stretch of that source; ``montage`` takes
consecutive clips in clip-id order whatever their source (the synthetic set has one clip
per source: its long videos are montages with a cut at each clip boundary; the real mix
then has a hard cut every 10.24 s, the first inside the first join's neighbourhood, so
its ratios are no seamless reference there: use ``source`` for that). Each
``generator`` method with its own video (not ``video: other``) generates every long
video through the generator's long-video path
(:func:`soundtrack.pipelines.sampler.generate_video`: windows, crossfades), and the
``ground_truth`` method gives the real concatenated mix; both are scored with the seam
metric (:func:`soundtrack.metrics.seam_metrics`: spectral flux and loudness change at
each window join over the track's own change elsewhere; the real mix, which has no join
at those times, shows what a seamless track scores). The aim is joins no worse than the
rest of the track (ratios <= 1); ``summary.md`` reports the measured ratios either way.
Why built from the bench's clips rather than a folder of long videos: the clips come with
the shards' real audio and the bench's cache, and a source's consecutive clips are its
own long video; a data set of long videos is ingested into such clips anyway.

Outputs in ``<storage>/bench/<name>/``: ``results.parquet`` / ``results.csv`` (one row
per method x clip x seed, failed ones included), ``set_metrics.csv`` (set-level metrics
with bootstrap intervals), ``summary.md`` (mean with 95 % bootstrap interval per metric
and method, plus paired intervals of differences and a tonality section: each method's
median ``chroma_conc`` and ``flatness`` against the ``ground_truth`` method's 5th-95th
percentile band, :func:`tonality_summary`; failed clips; long videos),
``long_videos.csv`` (one row per method x long video x seed, with ``long_videos``),
``summary.json`` and ``bench.png``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import soundfile as sf
import torch

from soundtrack.config import ConfigError, _coerce, load_yaml
from soundtrack.data.features import DEFAULT_CONFIG, dynamics_db
from soundtrack.errors import GeneratorError
from soundtrack.eval.engine import OPTIONAL_ROW_COLUMNS, ROW_COLUMNS, SR, evaluate_audio, run_jobs
from soundtrack.eval.scoring import (
    CLIP_METRICS,
    DIRECTION,
    FLOOR_METRICS,
    SET_METRICS,
    Evaluator,
    ScoringConfig,
    analysis_description,
    clip_metrics,
    set_metrics,
)
from soundtrack.metrics import bootstrap_ci, paired_bootstrap_ci, saturated, subsample_indices, subsample_interval
from soundtrack.metrics import modes as paper_modes
from soundtrack.metrics.structure import structure_indicator
from soundtrack.models.audio_embedders import AudioEmbedder, load_embedder
from soundtrack.pipelines.generator import SoundtrackGenerator, apply_overrides
from soundtrack.pipelines.sampler import SamplerConfig, window_joins
from soundtrack.storage import atomic_write

log = logging.getLogger(__name__)

#: Shard columns of the bench's clips (:func:`soundtrack.data.shards.load_split`).
BENCH_COLUMNS = ROW_COLUMNS
#: Shard columns read where the data set has them (``label_event_times``: the sync and beat
#: metrics, ``label_mode``: ``mode_match``, nan without them, as for ingested real videos;
#: ``source_id`` / ``start_s``: which clips follow each other in a source, for long videos).
BENCH_OPTIONAL_COLUMNS = (*OPTIONAL_ROW_COLUMNS, "source_id", "start_s", "caption")
#: Two clips of a source follow each other when the second starts within this much (s) of
#: the first's end (shard times are rounded to the audio sample; 50 ms is half a frame).
CONSECUTIVE_TOL_S = 0.05


@dataclass(frozen=True)
class MethodSpec:
    """One compared method.

    Args:
        kind: ``ground_truth``, ``retrieval`` or ``generator``.
        label: the name printed in tables and plots (default: the method's key).
        sampler: generation overrides (``guidance_scale``, ``weights``, ``num_steps``,
            ``scheduler``, ``attention``, ``window_k``).
        video: ``own`` or ``other`` (another test clip's video, a fixed derangement).
        uri: a model URI (``registry:<name>``, ``train:<run>``, ``file:<dir>``); ``None``
            uses the bench's model (or this method's ``train`` variant).
        train: deltas over the base experiment's ``train`` section; the variant reuses the
            base run's VAE and latent cache (``train.reuse_vae_from``).
    """

    kind: Literal["ground_truth", "retrieval", "generator"] = "generator"
    label: str | None = None
    sampler: dict[str, Any] = field(default_factory=dict)
    video: Literal["own", "other"] = "own"
    uri: str | None = None
    train: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class BenchConfig:
    """A comparative bench.

    Args:
        name: the bench's name; outputs go to ``<storage>/bench/<name>``.
        model: the generator experiment YAML that is "ours" (trained when missing) or a
            model URI.
        evaluator: the experiment YAML of the evaluation encoders (trained apart: another
            seed, another draw of clips), or an evaluator directory.
        data: the experiment YAML whose featurized data set holds the clips, or a
            finished featurize run directory (``None``: the ``model``'s data).
        split: which split's clips are scored.
        clips: how many clips (the first ``clips`` by clip id).
        seeds: generation seeds (each clip x seed is one sample).
        methods: ``{key: MethodSpec}``.
        baseline: paired differences are computed against this method...
        pairs: ...and for these extra ``[a, b]`` pairs (``a - b``).
        clips_per_task: clips per Ray task (a task loads its model once).
        cpus_per_task: CPUs per Ray task (torch runs 1 thread per task).
        gpus_per_task: GPUs per Ray task (0: CPU; > 0: the task's generator runs on CUDA, and
            the autoscaler sees the GPU demand). Infrastructure: not part of any cache key.
        n_boot: bootstrap resamples of the intervals.
        long_videos: long videos to build from the bench's clips and score at their window
            joins (0: none; module docstring).
        long_clips: clips per long video (>= 2; 3 clips = 30.7 s = 4 windows, 3 joins).
        long_from: ``source`` (consecutive clips of one source video) or ``montage``
            (consecutive clips in clip-id order, any source).
        modes: comparison modes to add (:data:`MODES`: ``loris``, ``muvi``, ``diffbgm``):
            each method's set scored the way that paper's code or text computes it, against
            the real music of the same clips, for numbers next to the paper's table
            (:func:`mode_scores`; definitions in :mod:`soundtrack.metrics.modes`).
        embedder: a standard audio backbone from local weights for FAD / KID (and, for a
            CLAP with a text branch, the per-clip ``clap`` score against the clip's caption):
            ``vggish:PATH[,pca=PATH]``, ``panns:PATH``, ``clap:PATH,text=DIR,tokenizer=DIR``
            (:func:`soundtrack.models.audio_embedders.load_embedder`). None: FAD on the
            evaluator's own encoders. The tables print the backbone's identity (its weight
            file's sha256).
        scoring: the per-clip analysers (:data:`SCORING_KEYS`): ``transcriber``
            (``chroma`` | ``basic_pitch``: note-level PCHE / GPS), ``beat_tracker``
            (``librosa`` | ``madmom``), ``key_estimator`` (``krumhansl`` | ``madmom``); the
            optional ``analysis`` extra provides basic-pitch and madmom
            (:mod:`soundtrack.metrics.analysis`; madmom's models are CC BY-NC-SA, printed with
            every table that uses them). Default: the librosa / chroma front end.
    """

    name: str = "bench"
    model: str = "experiments/train_tiny.yaml"
    evaluator: str = "experiments/eval_encoders.yaml"
    data: str | None = None
    split: Literal["train", "val", "test"] = "test"
    clips: int = 16
    seeds: tuple[int, ...] = (0,)
    methods: dict[str, Any] = field(default_factory=dict)
    baseline: str | None = None
    pairs: tuple[tuple[str, str], ...] = ()
    clips_per_task: int = 4
    cpus_per_task: float = 1.0
    gpus_per_task: float = 0.0
    n_boot: int = 1000
    long_videos: int = 0
    long_clips: int = 3
    long_from: Literal["source", "montage"] = "source"
    modes: tuple[str, ...] = ()
    embedder: str | None = None
    scoring: dict[str, Any] = field(default_factory=dict)


def load_bench_config(path: str | os.PathLike, overrides: Sequence[str] = ()) -> tuple[BenchConfig, dict[str, MethodSpec]]:
    """Read a bench YAML (plus ``key=value`` overrides) and check every method.

    Args:
        path: the bench YAML.
        overrides: ``key=value`` strings (from ``--set``).

    Returns:
        the config and its checked methods (``{key: MethodSpec}``).

    Raises:
        ConfigError: unknown keys or values (named with the file), no methods, a
            baseline or pair naming an unknown method; :class:`~soundtrack.errors.ConfigFileNotFound` (a
            ``ConfigError``) when the file does not exist.
    """
    src = str(path)
    cfg = load_yaml(path, overrides, BenchConfig, what="bench config", example="experiments/bench_demo.yaml")
    if not cfg.methods:
        raise ConfigError(f"{src}: 'methods' is empty; list at least one method (see experiments/bench_demo.yaml)")
    methods = {}
    for key, spec in cfg.methods.items():
        methods[str(key)] = _coerce(spec or {}, MethodSpec, f"methods.{key}", src)
        if methods[str(key)].kind != "generator" and (spec or {}).keys() - {"kind", "label"}:
            raise ConfigError(f"{src}: method '{key}' of kind {methods[str(key)].kind} takes only 'kind' and 'label'")
        try:  # the sampler knobs' one check (pipelines.knobs), now rather than in the first task
            apply_overrides(SamplerConfig(), methods[str(key)].sampler)
        except GeneratorError as exc:
            raise ConfigError(f"{src}: methods.{key}.sampler: {exc}") from None
    for m in [cfg.baseline, *[x for p in cfg.pairs for x in p]]:
        if m is not None and m not in methods:
            raise ConfigError(f"{src}: '{m}' (baseline/pairs) is not a method; methods: {', '.join(methods)}")
    if cfg.clips < 2:
        raise ConfigError(f"{src}: clips={cfg.clips}; at least 2 clips are needed (retrieval and intervals)")
    scoring_config(cfg.scoring)  # unknown keys or analysers now, not in the first task
    bad = [m for m in cfg.modes if m not in MODES]
    if bad:
        raise ConfigError(f"{src}: modes {bad} unknown; choose from {list(MODES)} (soundtrack.metrics.modes)")
    if cfg.long_videos < 0 or cfg.long_clips < 2:
        raise ConfigError(f"{src}: long_videos={cfg.long_videos}, long_clips={cfg.long_clips}; long_videos must be "
                          ">= 0 and a long video needs long_clips >= 2 clips (one join at least)")
    return cfg, methods


def spec_hash(spec: MethodSpec, model_dir: str | None) -> str:
    """8 hex digits over the method's settings and the model it uses (the cache key)."""
    d = dataclasses.asdict(spec)
    d.pop("label")
    d["model"] = None if model_dir is None else _model_identity(model_dir)
    return hashlib.sha1(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:8]


def _model_identity(model_dir: str) -> str:
    """A model is identified by its generator.json and weight file sizes/times (not its path)."""
    p = Path(model_dir)
    h = hashlib.sha1((p / "generator.json").read_bytes())
    for f in sorted(p.rglob("*.safetensors")):
        st = f.stat()
        h.update(f"{f.relative_to(p)}:{st.st_size}:{int(st.st_mtime)}".encode())
    return h.hexdigest()[:12]


def derangement(n: int, seed: int) -> list[int]:
    """A seeded permutation of range(n) with no fixed point (``n >= 2``)."""
    rng = np.random.default_rng(10_000 + seed)
    while True:
        p = rng.permutation(n)
        if n < 2 or not np.any(p == np.arange(n)):
            return [int(x) for x in p]


# ----------------------------------------------------------------------------- long videos


def long_video_groups(rows: Sequence[Mapping[str, Any]], n_videos: int, n_clips: int,
                      mode: Literal["source", "montage"] = "source") -> list[list[str]]:
    """Which clips make each long video (module docstring), in clip-id order, disjoint.

    Args:
        rows: the bench's clips (``clip_id``, ``wav_mix``; ``source_id`` and ``start_s``
            for ``source``), any order.
        n_videos: at most this many videos.
        n_clips: clips per video.
        mode: ``source``: runs of clips of one source, each starting where the previous
            one's audio ends (within :data:`CONSECUTIVE_TOL_S`); ``montage``: consecutive
            clips in clip-id order.

    Returns:
        up to ``n_videos`` lists of ``n_clips`` clip ids (fewer when the clips do not have
        them; a run is cut into as many whole videos as it holds).
    """
    ordered = sorted(rows, key=lambda r: str(r["clip_id"]))
    runs: list[list[Mapping[str, Any]]] = []
    for r in ordered:
        prev = runs[-1][-1] if runs else None
        follows = mode == "montage" and prev is not None
        if mode == "source" and prev is not None and r.get("source_id") is not None and r.get("start_s") is not None:
            end = float(prev["start_s"]) + len(np.asarray(prev["wav_mix"]).reshape(-1)) / SR
            follows = r.get("source_id") == prev.get("source_id") and abs(float(r["start_s"]) - end) <= CONSECUTIVE_TOL_S
        if follows:
            runs[-1].append(r)
        else:
            runs.append([r])
    groups = [[str(x["clip_id"]) for x in run[i:i + n_clips]] for run in runs for i in range(0, len(run) - n_clips + 1,
                                                                                           n_clips)]
    return groups[:max(0, int(n_videos))]


def long_video_id(ids: Sequence[str]) -> str:
    """The name of a long video (its first clip and how many): ``<first>+<n>``.

    Args:
        ids: its clips, in playing order.
    """
    return f"{ids[0]}+{len(ids)}"


def long_video_jobs(groups: Sequence[Sequence[str]], rows: Mapping[str, Mapping[str, Any]], seeds: Sequence[int],
                    kind: str, clip_s: float, crossfade_s: float, fps: float = 10.0) -> list[dict]:
    """The :func:`~soundtrack.eval.engine.run_jobs` jobs of the long videos for one method.

    The joins are the generator's (:func:`~soundtrack.pipelines.sampler.window_joins` of
    the video's ``ceil(T * fps) / fps`` seconds, ``T`` its audio length); a ground-truth
    job is measured at the same joins, cut to its audio.

    Args:
        groups: the clips of each video (:func:`long_video_groups`).
        rows: decoded rows by clip id (``wav_mix``).
        seeds: generation seeds (ground truth: the same audio per seed).
        kind: ``generator`` or ``ground_truth``.
        clip_s: the model's window (s).
        crossfade_s: the model's crossfade (s).
        fps: the frame rate of the clips.
    """
    jobs = []
    for ids in groups:
        total = sum(len(np.asarray(rows[c]["wav_mix"]).reshape(-1)) for c in ids) / SR
        video_s = math.ceil(round(total * fps, 3)) / fps
        joins = window_joins(video_s, clip_s, crossfade_s, SR)
        if kind == "ground_truth":
            joins = [(a, min(b, total)) for a, b in joins if a < total]
        for seed in seeds:
            jobs.append({"clip_id": long_video_id(ids), "source": ids[0], "sources": list(ids), "seed": int(seed),
                         "kind": kind, "joins": [list(j) for j in joins]})
    return jobs


# ----------------------------------------------------------------------------- resolution


# ----------------------------------------------------------------------------- Ray task



def run_chunk(jobs: Sequence[dict], model_dir: str | None, overrides: Mapping[str, Any], cache_dir: str,
              clip_rows: Mapping[str, dict], threads: int = 1, scoring: Mapping[str, Any] | None = None,
              device: str = "cpu") -> list[dict]:
    """Generate (or read from the cache) and score one chunk of (clip, seed) jobs: the
    engine's :func:`~soundtrack.eval.engine.run_jobs` with this method's cache.

    Each job: ``clip_id`` (scored against this clip), ``source`` (the clip whose video
    conditions the generator or whose real audio is used), ``seed``, ``kind``.

    ``scoring``: the bench's analysers (:attr:`BenchConfig.scoring`, ScoringConfig fields);
    ``device``: where the generator runs (``cuda`` in a task that reserved a GPU).

    Returns:
        One dict per job: ``clip_id``, ``seed``, per-clip metrics, ``gen_s`` (compute
        seconds, 0 when cached or real audio), ``audio_s``, ``cached``.
    """

    torch.set_num_threads(threads)
    model = SoundtrackGenerator.load(model_dir, device=device) if model_dir and device != "cpu" else model_dir
    return [rec.to_dict() for rec in run_jobs(jobs, clip_rows, model, overrides, cache_dir=cache_dir,
                                              scoring=scoring_config(scoring))]


#: The :class:`~soundtrack.eval.scoring.ScoringConfig` fields a bench's ``scoring`` may set.
SCORING_KEYS = ("transcriber", "beat_tracker", "key_estimator")


def scoring_config(scoring: Mapping[str, Any] | None) -> ScoringConfig:
    """The ScoringConfig of a bench's ``scoring`` section (analysers only; the rest stays default).

    Raises:
        ConfigError: a key other than :data:`SCORING_KEYS`, or an unknown analyser.
    """
    scoring = dict(scoring or {})
    bad = sorted(set(scoring) - set(SCORING_KEYS))
    if bad:
        raise ConfigError(f"bench scoring: {bad} cannot be set; the keys are {list(SCORING_KEYS)}")
    return ScoringConfig(**scoring)


# ----------------------------------------------------------------------------- the bench


#: Comparison modes (:attr:`BenchConfig.modes`), each a paper's own computation.
MODES = ("loris", "muvi", "diffbgm")
#: What each mode's table says defines it (printed above its columns).
MODE_DEFINITIONS = {
    "loris": ("LORIS (Yu et al. 2023), beats_scores.py: librosa onsets of the real and the generated music at "
              "22050 Hz binned into 1 s bins; BCS = mean cover, BHS = mean hit, F1 of the means, CSD/HSD = ddof=1 "
              "stds across clips (fractions). Random onsets score high here (1 s bins): compare with its ground truth."),
    "muvi": ("MuVi (Li et al. 2024) sec. 4.1 / App. E: dynamic-programming beats (Ellis 2007, 8 s tempo window, "
             "30-240 BPM) of the real and the generated music; BCS = generated / real beats, BHS = matched / real "
             "beats (exclusive, < 100 ms), in percent, mean of per-clip ratios (pooled ratios in summary.json)."),
    "diffbgm": ("Diff-BGM (Li et al. 2024) test.ipynb: P@K of each generated clip's music embedding (evaluation "
                "encoders, mean over time) among the real music of a pool of min(60, N) clips, fixed seed 0; PCHE, "
                "GPS, SI of the method and |method - real| (closer to the real music is better)."),
}


def mode_scores(modes: Sequence[str], gen_wavs: Sequence[np.ndarray], ref_wavs: Sequence[np.ndarray],
                gen_emb: np.ndarray | None = None, ref_emb: np.ndarray | None = None,
                gen_values: Mapping[str, Sequence[float]] | None = None,
                ref_values: Mapping[str, Sequence[float]] | None = None, sr: int = SR) -> dict[str, dict[str, float]]:
    """One method's set scored in each comparison mode (:data:`MODE_DEFINITIONS`).

    Args:
        modes: names from :data:`MODES`.
        gen_wavs: the method's waveforms at ``sr``, one per clip.
        ref_wavs: the same clips' real music (the mix), same order.
        gen_emb / ref_emb: (N, T, E) or (N, E) evaluation-encoder music embeddings of both
            (``diffbgm``'s P@K; None: no P@K).
        gen_values / ref_values: per-clip ``pche``, ``gps``, ``si`` of both (``diffbgm``;
            :func:`diffbgm_values` makes them).
        sr: sample rate (Hz).

    Returns:
        ``{mode: {metric: value}}``, plus ``n_clips`` per mode.
    """
    out: dict[str, dict[str, float]] = {}
    n = len(gen_wavs)
    for mode in modes:
        if mode == "loris":
            r = paper_modes.loris_scores(ref_wavs, gen_wavs, sr=sr)
            out[mode] = {k: float(r[k]) for k in ("bcs", "bhs", "f1", "csd", "hsd")}
        elif mode == "muvi":
            r = paper_modes.muvi_scores([paper_modes.muvi_beats(w, sr) for w in ref_wavs],
                                        [paper_modes.muvi_beats(w, sr) for w in gen_wavs])
            out[mode] = {k: float(r[k]) for k in ("bcs", "bhs", "bcs_pooled", "bhs_pooled")}
        elif mode == "diffbgm":
            ge = None if gen_emb is None else np.asarray(gen_emb, float)
            re_ = None if ref_emb is None else np.asarray(ref_emb, float)
            if ge is not None and ge.ndim == 3:
                ge, re_ = ge.mean(axis=1), re_.mean(axis=1)
            ks = tuple(k for k in (1, 5, 10, 20) if k < min(60, n))
            r = paper_modes.diffbgm_scores(ge if n >= 2 else None, re_ if n >= 2 else None, gen_values=gen_values or {},
                                           real_values=ref_values or {}, ks=ks, seed=0)
            out[mode] = {k: float(v) for k, v in r.items()}
        else:
            raise ConfigError(f"unknown comparison mode {mode!r}; choose from {list(MODES)}")
        out[mode]["n_clips"] = float(n)
    return out


def diffbgm_values(wav: np.ndarray, record: Mapping[str, Any], sr: int = SR) -> dict[str, float]:
    """The per-clip values of the ``diffbgm`` mode: ``pche`` and ``gps`` as the bench scored
    them (note-level when the scoring's transcriber is ``basic_pitch``, otherwise from
    chroma and onsets: the table says which) and ``si`` (:func:`structure_indicator`, 3-8 s).

    Args:
        wav: the waveform at ``sr``.
        record: its per-clip metrics (``pche``, ``gps``).
        sr: sample rate (Hz).
    """
    return {"pche": float(record.get("pche", math.nan)), "gps": float(record.get("gps", math.nan)),
            "si": float(structure_indicator(wav, sr))}


def score_sets(results: Mapping[str, list[dict]], methods: Mapping[str, MethodSpec], rows: Sequence[dict],
               ev_dir: Path, cfg: BenchConfig, caches: Mapping[str, Path]):
    """Evaluator metrics (SIM, KL per clip; FAD, IS, P@K per set) and the result tables.

    Args:
        results: per method, the records :func:`run_chunk` returned.
        methods: the method specs.
        rows: the scored clips' decoded shard rows.
        ev_dir: the evaluator directory.
        cfg: the bench settings.
        caches: per method, the directory holding its waveforms.

    Returns:
        ``(per-clip table, set-metric table, summary dict)``. Failed records (a diverged
        generation, :func:`~soundtrack.eval.engine.run_jobs`) are rows with ``failed``
        true, their ``error`` and no metrics, left out of the evaluator step and the set
        metrics; long-video records (``sources``) go to ``summary["long_videos"]``
        (:func:`long_video_summary`), not to the per-clip table.
    """

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    ev = Evaluator.load(ev_dir)
    embedder = load_embedder(cfg.embedder) if cfg.embedder else None
    ref_windows: dict[str, np.ndarray] = {}  # per clip: the backbone's windows of the real mix (computed once)
    by_id = {r["clip_id"]: r for r in rows}
    ids = [r["clip_id"] for r in rows]
    records, set_rows, long_rows = [], [], []
    set_reps: dict[tuple[str, int], dict] = {}  # per (method, seed): the set metrics on each shared subset
    mode_reps: dict[tuple[str, int], dict] = {}  # per (method, seed): the comparison modes' scores
    ref_values: dict[str, dict[str, float]] = {}  # per clip: the real music's diffbgm values (computed once)
    for key, recs in results.items():
        spec = methods[key]
        for r in recs:
            if r.get("sources"):
                long_rows.append({"method": key, "label": spec.label or key, "failed": bool(r.get("failed", False)),
                                  "error": r.get("error"), **{k: v for k, v in r.items()
                                                              if k not in ("cached", "failed", "error", "sources",
                                                                           "joins")},
                                  "sources": " ".join(r["sources"])})
        recs = [r for r in recs if not r.get("sources")]
        for seed in cfg.seeds:
            every = sorted([r for r in recs if r["seed"] == seed], key=lambda r: ids.index(r["clip_id"]))
            rs = [r for r in every if not r.get("failed")]
            if rs:
                wavs = [sf.read(str(Path(caches[key]) / f"{r['clip_id']}_s{seed}.wav"), dtype="float32")[0] for r in rs]
                em = evaluate_audio(ev, wavs, [by_id[r["clip_id"]] for r in rs])
                if embedder is not None:
                    em.update(backbone_metrics(embedder, wavs, [by_id[r["clip_id"]] for r in rs], ref_windows))
            i = 0
            for r in every:  # clip order; a failed clip: its error, no metrics (nan in the table)
                if r.get("failed"):
                    records.append({"method": key, "label": spec.label or key,
                                    **{k: v for k, v in r.items() if k not in ("cached", "failed", "error")},
                                    "failed": True, "error": r.get("error")})
                    continue
                records.append({"method": key, "label": spec.label or key, **{k: v for k, v in r.items() if k != "cached"},
                                "sim": float(em["sim"][i]), "kl": float(em["kl"][i]),
                                "mood_acc": float(em["mood_acc"][i]),
                                "clap": float(em["clap"][i]) if "clap" in em else math.nan,
                                "p_at_1": float(em["p_at_1"][i]), "p_at_5": float(em["p_at_5"][i]),
                                "failed": False, "error": None})
                i += 1
            if not rs:
                continue
            if cfg.modes:
                mode_reps[(key, seed)] = _mode_rep(cfg.modes, wavs, rs, by_id, em, ref_values,
                                                   scoring_config(cfg.scoring))
            dyn_gen = [dynamics_db(w, DEFAULT_CONFIG) for w in wavs]  # only the curve, not the full descriptors
            dyn_ref = [np.asarray(by_id[r["clip_id"]]["dynamics_db"], float) for r in rs]
            cols = {"bcs": [r["bcs"] for r in rs], "bhs": [r["bhs"] for r in rs]}
            fad_g, fad_r = em.get("fad_audio"), em.get("fad_ref")
            point = set_metrics(cols, em["audio"], None, em["ref_audio"], em["probs"], dyn_ref, dyn_gen, floors=True,
                                fad_audio=fad_g, fad_ref=fad_r)
            # subsampling over clips (half the clips without replacement; seed 0: the same
            # subsets for every method): a set metric such as FAD is biased upward by a term
            # that grows as the set shrinks, so a percentile bootstrap's resamples (~63 %
            # distinct clips) sit above the point and can miss it; the subsampling interval
            # (metrics.subsample_interval) takes only their spread and contains its point.
            # Set metrics are costlier (matrix roots), hence fewer resamples.
            n_set, m_sub = len(rs), len(rs) // 2
            reps = []
            set_reps[(key, seed)] = {"ids": [r["clip_id"] for r in rs], "m": m_sub, "point": point, "reps": reps}
            if m_sub >= 2:
                for idx in subsample_indices(n_set, max(50, cfg.n_boot // 5), m_sub, 0):
                    reps.append(set_metrics({k: [v[i] for i in idx] for k, v in cols.items()}, em["audio"][idx], None,
                                            em["ref_audio"][idx], em["probs"][idx], [dyn_ref[i] for i in idx],
                                            [dyn_gen[i] for i in idx],
                                            fad_audio=None if fad_g is None else fad_g[idx],
                                            fad_ref=None if fad_r is None else fad_r[idx]))
            for m in (*SET_METRICS, *FLOOR_METRICS):
                v = np.asarray([b[m] for b in reps if m in b], float)
                v = v[np.isfinite(v)]
                lo, hi = (subsample_interval(point[m], v, m_sub, n_set) if len(v) and np.isfinite(point[m])
                          else (math.nan, math.nan))
                set_rows.append({"method": key, "label": spec.label or key, "seed": seed, "metric": m,
                                 "value": point[m], "ci_low": float(lo), "ci_high": float(hi), "n_clips": len(rs),
                                 "interval": "subsampling" if len(v) else "none"})
    table = pd.DataFrame.from_records(records)
    set_table = pd.DataFrame.from_records(set_rows)
    summary = summarize(table, set_table, methods, cfg, set_reps=set_reps)
    summary["evaluator_card"] = {**ev.card, "heads": {k: h.card for k, h in ev.heads.items()}}
    summary["evaluator_classes"] = list(ev.classes)
    summary["analysis"] = analysis_description(scoring_config(cfg.scoring))
    summary["fad_encoder"] = embedder.identity if embedder is not None else f"evaluator encoders {ev.card.get('encoders')}"
    if long_rows or cfg.long_videos:
        summary["long_videos"] = long_video_summary(long_rows, methods, cfg)
    if cfg.modes:
        summary["modes"] = modes_summary(mode_reps, methods, cfg)
    return table, set_table, summary


def backbone_metrics(embedder: AudioEmbedder, wavs: Sequence[np.ndarray], rows: Sequence[Mapping[str, Any]],
                     ref_windows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A standard backbone's window embeddings for FAD (and the CLAP score) of one set.

    Args:
        embedder: the backbone (:func:`soundtrack.models.audio_embedders.load_embedder`).
        wavs: the set's waveforms at :data:`SR`.
        rows: their clips' rows (``wav_mix``: the reference; ``caption``: the CLAP score's text).
        ref_windows: per-clip cache of the real mixes' windows (filled here).

    Returns:
        ``fad_audio`` / ``fad_ref`` (N, W, D) (W: the fewest windows of any clip, so that
        every clip weighs the same) and, for a CLAP with a text branch and captions,
        ``clap`` (N,): the cosine of each clip's caption and generated audio.
    """
    gen = embedder.embed(wavs, SR)
    for r in rows:
        if r["clip_id"] not in ref_windows:
            ref_windows[r["clip_id"]] = embedder.embed([np.asarray(r["wav_mix"], np.float32)], SR)[0]
    ref = [ref_windows[r["clip_id"]] for r in rows]
    w = min(min(len(x) for x in gen), min(len(x) for x in ref))
    out = {"fad_audio": np.stack([x[:w] for x in gen]), "fad_ref": np.stack([x[:w] for x in ref])}
    captions = [r.get("caption") for r in rows]
    if getattr(embedder, "text_branch", None) is not None and all(isinstance(c, str) and c for c in captions):
        out["clap"] = np.asarray(embedder.clap_similarities(captions, wavs, SR), float)
    return out


def _mode_rep(modes: Sequence[str], wavs: Sequence[np.ndarray], recs: Sequence[Mapping[str, Any]],
              by_id: Mapping[str, Mapping[str, Any]], em: Mapping[str, np.ndarray],
              ref_values: dict[str, dict[str, float]], scoring: ScoringConfig = ScoringConfig()
              ) -> dict[str, dict[str, float]]:
    """:func:`mode_scores` of one method and seed (``ref_values``: a per-clip cache of the real music's values)."""
    refs = [np.asarray(by_id[r["clip_id"]]["wav_mix"], np.float32) for r in recs]
    gen_v = ref_v = None
    if "diffbgm" in modes:
        for r, ref in zip(recs, refs):
            if r["clip_id"] not in ref_values:  # the real mix scored once, with the bench's own scoring
                ref_values[r["clip_id"]] = diffbgm_values(ref, clip_metrics(ref, by_id[r["clip_id"]], scoring))
        rows_g = [diffbgm_values(w, r) for w, r in zip(wavs, recs)]
        rows_r = [ref_values[r["clip_id"]] for r in recs]
        gen_v = {k: [d[k] for d in rows_g] for k in ("pche", "gps", "si")}
        ref_v = {k: [d[k] for d in rows_r] for k in ("pche", "gps", "si")}
    return mode_scores(modes, wavs, refs, em["audio"], em["ref_audio"], gen_v, ref_v)


def modes_summary(mode_reps: Mapping[tuple[str, int], Mapping[str, Mapping[str, float]]],
                  methods: Mapping[str, MethodSpec], cfg: BenchConfig) -> dict:
    """Each mode's scores per method, the mean over seeds (the papers report points; so do we).

    Returns:
        ``{"definitions": {mode: text}, mode: {method: {metric: value, "seeds": k}}}``.
    """
    out: dict[str, Any] = {"definitions": {m: MODE_DEFINITIONS[m] for m in cfg.modes}}
    for mode in cfg.modes:
        out[mode] = {}
        for key in methods:
            reps = [mode_reps[(key, sd)][mode] for sd in cfg.seeds if (key, sd) in mode_reps]
            if not reps:
                continue
            names = sorted({k for r in reps for k in r})
            out[mode][key] = {k: float(np.nanmean([r.get(k, math.nan) for r in reps])) for k in names}
            out[mode][key]["seeds"] = len(reps)
    return out


#: Columns of each mode's Markdown table (all values are in summary.json).
MODE_COLUMNS = {"loris": ("bcs", "bhs", "f1", "csd", "hsd"), "muvi": ("bcs", "bhs"),
                "diffbgm": ("p_at_1", "p_at_5", "p_at_10", "p_at_20", "pche", "pche_abs_diff", "gps", "gps_abs_diff",
                            "si", "si_abs_diff")}


def _mode_lines(modes: Mapping[str, Any], labels: Mapping[str, str]) -> list[str]:
    """The Markdown "Comparison modes" section."""
    lines = ["## Comparison modes (the papers' own computations, against the real music of the same clips)", ""]
    for mode, text in modes.get("definitions", {}).items():
        per = modes.get(mode, {})
        cols = [c for c in MODE_COLUMNS[mode] if any(c in d for d in per.values())]
        n = next((int(d.get("n_clips", 0)) for d in per.values()), 0)
        pool = next((int(d["pool_size"]) for d in per.values() if "pool_size" in d), None)
        lines += [f"**{mode}**: {text} N = {n} clips per seed" + (f", pool {pool}" if pool else "") + ".", ""]
        lines.append("| method | " + " | ".join(cols) + " |")
        lines.append("|---|" + "---|" * len(cols))
        for key, d in per.items():
            cells = []
            for c in cols:
                v = d.get(c, math.nan)
                cell = "–" if not np.isfinite(v) else (f"{v:.1f}" if mode == "muvi" else f"{v:.3f}")
                bound = {"loris": f"loris_{c}", "muvi": f"muvi_{c}"}.get(mode, c)
                cells.append(cell + (" ⚑" if cell != "–" and saturated(bound, float(v)) else ""))
            lines.append(f"| {labels.get(key, key)} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


#: Seam columns of the long-video summary (:func:`soundtrack.metrics.seam_metrics`).
LONG_METRICS = ("flux_ratio", "flux_ratio_max", "loudness_ratio", "loudness_ratio_max", "flux_vs_median",
                "loudness_vs_median")


def long_video_summary(records: Sequence[Mapping[str, Any]], methods: Mapping[str, MethodSpec],
                       cfg: BenchConfig) -> dict:
    """The long videos' seam ratios per method: means with bootstrap intervals, the worst
    join, and how many tracks meet the aim (every join's flux and loudness ratio <= 1).

    Args:
        records: one per method x long video x seed (:func:`score_sets`), failed ones included.
        methods: the method specs.
        cfg: the bench settings (``n_boot``, ``long_*``).

    Returns:
        ``{"videos", "long_clips", "long_from", "aim", "records", "methods": {key: {"n",
        "failed", "joins", metric: {"mean", "ci95", "n"}, "within_aim"}}}``.
    """
    out: dict[str, Any] = {"videos": len({r["clip_id"] for r in records}), "long_clips": cfg.long_clips,
                           "long_from": cfg.long_from, "aim": "flux_ratio_max <= 1 and loudness_ratio_max <= 1",
                           "records": [dict(r) for r in records], "methods": {}}
    for key in methods:
        sub = [r for r in records if r["method"] == key]
        if not sub:
            continue
        ok = [r for r in sub if not r.get("failed")]
        entry: dict[str, Any] = {"n": len(ok), "failed": len(sub) - len(ok),
                                 "joins": int(sum(float(r.get("n_joins", 0)) for r in ok))}
        for m in LONG_METRICS:
            v = np.asarray([float(r.get(m, math.nan)) for r in ok], float)
            v = v[np.isfinite(v)]
            if len(v) == 0:
                entry[m] = {"mean": math.nan, "ci95": [math.nan, math.nan], "n": 0}
            elif len(v) == 1:
                entry[m] = {"mean": float(v[0]), "ci95": [math.nan, math.nan], "n": 1}
            else:
                mean, lo, hi = bootstrap_ci(v, n_boot=cfg.n_boot, seed=0)
                entry[m] = {"mean": float(mean), "ci95": [float(lo), float(hi)], "n": int(len(v))}
        within = [float(r.get("flux_ratio_max", math.nan)) <= 1.0 and float(r.get("loudness_ratio_max", math.nan)) <= 1.0
                  for r in ok]
        entry["within_aim"] = {"tracks": int(sum(within)), "of": len(ok)}
        out["methods"][key] = entry
    return out


def failed_summary(table, methods: Mapping[str, MethodSpec], limit: int = 5) -> dict:
    """Failed samples per method: how many of how many, and the first errors.

    Args:
        table: the per-clip results (a ``failed`` / ``error`` column; none: nothing failed).
        methods: the method specs.
        limit: errors listed per method.
    """
    out = {}
    for key in methods:
        sub = table[table["method"] == key] if len(table) else table
        bad = sub[sub["failed"].eq(True)] if "failed" in sub.columns else sub.iloc[0:0]
        out[key] = {"n": int(len(bad)), "of": int(len(sub)),
                    "errors": [{"clip_id": str(r["clip_id"]), "seed": int(r["seed"]), "error": str(r["error"])}
                               for _, r in bad.head(limit).iterrows()]}
    return out


#: Per-clip metrics of the tonality check (median per method vs the real mixes' band).
TONALITY_METRICS = ("chroma_conc", "flatness")
#: Percentiles of the ground-truth per-clip values that bound the "real music" band.
TONALITY_BAND = (5.0, 95.0)


def _finite(sub, m: str, with_ids: bool = False):
    """A metric column's finite values as floats; empty when the table has no such column
    (results tabulated before the metric existed). With ``with_ids``: ``(values, clip ids)``
    aligned, for the clip-level bootstrap."""
    v = sub[m].to_numpy(float) if m in sub.columns else np.zeros(0)
    ok = np.isfinite(v)
    if not with_ids:
        return v[ok]
    ids = sub["clip_id"].to_numpy() if m in sub.columns else np.zeros(0, object)
    return v[ok], ids[ok]


def tonality_summary(table, methods: Mapping[str, MethodSpec]) -> dict:
    """Is each method's audio as tonal as the real mixes? Medians against the ground truth's band.

    For each method and each of :data:`TONALITY_METRICS` (``chroma_conc``, ``flatness``):
    the median of its per-clip values (clips x seeds, finite values only) and whether it
    lies inside the band ``[5th, 95th]`` percentile of the ``ground_truth`` method's
    per-clip values (the real mixes; one value per clip, its seeds averaged, as they
    score the same audio). ``in_band_frac`` is the share of the method's own clips
    inside that band. Without a ``ground_truth`` method the band and the verdicts are
    ``None``.

    Args:
        table: the per-clip results (``method``, ``clip_id``, the metric columns).
        methods: the method specs (the first of kind ``ground_truth`` gives the band).

    Returns:
        ``{"reference": key or None, "percentiles": [5, 95], "band": {metric: [lo, hi] or
        None}, "methods": {key: {metric: {"median", "n", "inside", "in_band_frac"}}}}``.
    """
    ref = next((k for k, s in methods.items() if s.kind == "ground_truth"), None)
    band: dict[str, list[float] | None] = {m: None for m in TONALITY_METRICS}
    if ref is not None:
        sub = table[table["method"] == ref]
        for m in TONALITY_METRICS:
            if m not in sub.columns:
                continue
            per_clip = sub.groupby("clip_id")[m].mean().to_numpy(float)
            per_clip = per_clip[np.isfinite(per_clip)]
            if len(per_clip):
                lo, hi = np.percentile(per_clip, TONALITY_BAND)
                band[m] = [float(lo), float(hi)]
    out: dict[str, dict] = {}
    for key in methods:
        sub = table[table["method"] == key]
        out[key] = {}
        for m in TONALITY_METRICS:
            v = _finite(sub, m)
            med = float(np.median(v)) if len(v) else math.nan
            b = band[m]
            inside = None if b is None or not len(v) else bool(b[0] <= med <= b[1])
            frac = None if b is None or not len(v) else float(np.mean((v >= b[0]) & (v <= b[1])))
            out[key][m] = {"median": med, "n": int(len(v)), "inside": inside, "in_band_frac": frac}
    return {"reference": ref, "percentiles": list(TONALITY_BAND), "band": band, "methods": out}


def paired_set_differences(a: str, b: str, set_reps: Mapping[tuple[str, int], dict], seeds: Sequence[int]) -> dict:
    """Paired intervals of set-metric differences ``a - b`` from shared subsets.

    Both methods' set metrics were recomputed on the same subsets of clip positions (seed 0
    of :func:`~soundtrack.metrics.subsample_indices`), so where they scored the same clips in
    the same order, subset ``s`` gives one replicate of the difference: the point is the
    mean over seeds of ``metric_a - metric_b`` and its interval the subsampling interval of
    the per-subset differences (:func:`~soundtrack.metrics.subsample_interval`). Seeds whose
    clip lists differ (a failed clip on one side) are left out.

    Args:
        a: a method.
        b: the method it is compared with.
        set_reps: per ``(method, seed)``: ``ids``, ``m`` (clips per subset), ``point`` and
            ``reps`` (the set metrics per subset), from :func:`score_sets`.
        seeds: the bench's seeds.

    Returns:
        ``{metric: {"mean", "ci95", "n", "set_level": True}}`` for the metrics both sides have.
    """
    both = [s for s in seeds if (a, s) in set_reps and (b, s) in set_reps
            and set_reps[(a, s)]["ids"] == set_reps[(b, s)]["ids"] and set_reps[(a, s)]["reps"]]
    out: dict[str, dict] = {}
    if not both:
        return out
    n, m_sub = len(set_reps[(a, both[0])]["ids"]), set_reps[(a, both[0])]["m"]
    for m in SET_METRICS:
        pts = [set_reps[(a, s)]["point"][m] - set_reps[(b, s)]["point"][m] for s in both]
        reps = np.mean([[ra[m] - rb[m] for ra, rb in zip(set_reps[(a, s)]["reps"], set_reps[(b, s)]["reps"])]
                        for s in both], axis=0)
        reps = reps[np.isfinite(reps)]
        point = float(np.mean(pts))
        if not np.isfinite(point) or len(reps) == 0:
            continue
        lo, hi = subsample_interval(point, reps, m_sub, n)
        out[m] = {"mean": point, "ci95": [float(lo), float(hi)], "n": n * len(both), "set_level": True}
    return out


def summarize(table, set_table, methods: Mapping[str, MethodSpec], cfg: BenchConfig,
              set_reps: Mapping[tuple[str, int], dict] | None = None) -> dict:
    """Means with bootstrap intervals per method and metric; paired differences (every
    per-clip metric of :data:`~soundtrack.eval.scoring.CLIP_METRICS`, ``f1`` and
    ``mode_match`` included, and with ``set_reps`` the set metrics from shared subsets,
    :func:`paired_set_differences`); the tonality check (:func:`tonality_summary`)."""
    per: dict[str, dict] = {}
    for key in methods:
        sub = table[table["method"] == key]
        per[key] = {}
        for m in CLIP_METRICS:
            v, ids = _finite(sub, m, with_ids=True)
            if len(v) == 0:
                per[key][m] = {"mean": math.nan, "ci95": [math.nan, math.nan], "n": 0}
                continue
            # clip-level (cluster) bootstrap: the seeds of one clip are not independent samples
            mean, lo, hi = bootstrap_ci(v, n_boot=cfg.n_boot, seed=0, clusters=ids)
            per[key][m] = {"mean": float(mean), "ci95": [float(lo), float(hi)], "n": int(len(v)),
                           "clips": int(len(set(ids)))}
        s = set_table[set_table["method"] == key]
        for m in (*SET_METRICS, *FLOOR_METRICS):
            r = s[s["metric"] == m]
            if len(r):
                per[key][m] = {"mean": float(r["value"].mean()), "ci95": [float(r["ci_low"].mean()), float(r["ci_high"].mean())],
                               "n": int(r["n_clips"].sum()), "set_level": True}
    pairs = [(a, cfg.baseline) for a in methods if cfg.baseline and a != cfg.baseline] + [tuple(p) for p in cfg.pairs]
    diffs: dict[str, dict] = {}
    for a, b in pairs:
        ta = table[table["method"] == a].set_index(["clip_id", "seed"])
        tb = table[table["method"] == b].set_index(["clip_id", "seed"])
        common = ta.index.intersection(tb.index)
        d = {}
        for m in CLIP_METRICS:
            if m not in table.columns:
                continue
            x, y = ta.loc[common, m].to_numpy(float), tb.loc[common, m].to_numpy(float)
            ok = np.isfinite(x) & np.isfinite(y)
            if ok.sum() < 2:
                continue
            clips = common.get_level_values("clip_id").to_numpy()[ok]
            mean, lo, hi = paired_bootstrap_ci(x[ok], y[ok], n_boot=cfg.n_boot, seed=0, clusters=clips)
            d[m] = {"mean": float(mean), "ci95": [float(lo), float(hi)], "n": int(ok.sum())}
        if set_reps:
            d.update(paired_set_differences(a, b, set_reps, cfg.seeds))
        diffs[f"{a} - {b}"] = d
    failed = failed_summary(table, methods)
    for key in methods:
        per[key]["failed"] = {"n": failed[key]["n"], "of": failed[key]["of"]}
    return {"methods": per, "paired_differences": diffs, "tonality": tonality_summary(table, methods),
            "labels": {k: (s.label or k) for k, s in methods.items()}, "failed": failed}


def _fmt_flag(metric: str, d: Mapping[str, Any], digits: int = 3) -> str:
    """:func:`_fmt` with ⚑ when the mean is within 0.05 of the metric's bound (:func:`soundtrack.metrics.saturated`)."""
    cell = _fmt(d, digits)
    mean = d.get("mean", math.nan) if d else math.nan
    return cell + (" ⚑" if cell != "–" and saturated(metric, float(mean)) else "")


def _fmt(d: Mapping[str, Any], digits: int = 3) -> str:
    if not d or not np.isfinite(d.get("mean", math.nan)):
        return "–"
    lo, hi = d["ci95"]
    return f"{d['mean']:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


#: Metrics shown in the Markdown tables (all are in the CSV / parquet).
MAIN_TABLE = ("f1", "precision", "hit_rate", "onset_rate", "beat_f1", "sim", "p_at_1", "fad", "kl", "is")
SECOND_TABLE = ("bcs", "bhs", "csd", "hsd", "melody_acc", "dyn_r", "dyn_macro", "pche", "gps", "adv", "mode_match",
                "mood_acc", "clap")
#: Columns of the paired-differences table.
PAIRED_TABLE = ("f1", "precision", "onset_rate", "beat_f1", "melody_acc", "mode_match", "mood_acc", "sim", "p_at_1", "kl",
                "fad")


def _tonality_lines(ton: Mapping[str, Any], per: Mapping[str, Any], labels: Mapping[str, str],
                    methods: Mapping[str, MethodSpec]) -> list[str]:
    """The Markdown "Tonality" section of :func:`tonality_summary`."""
    lo_p, hi_p = (int(x) if float(x).is_integer() else x for x in ton.get("percentiles", TONALITY_BAND))
    ref = ton.get("reference")
    lines = ["## Tonality", ""]
    if ref is None:
        lines += ["No `ground_truth` method, so no band of real mixes: medians only.", ""]
    else:
        bands = "; ".join(f"{m} [{b[0]:.3f}, {b[1]:.3f}]" if b else f"{m} –" for m, b in ton["band"].items())
        lines += [f"Median per-clip chroma concentration (1 - pitch-class entropy / ln 12, mean over non-silent "
                  f"frames) and spectral flatness (geometric / arithmetic mean power, non-silent frames), and "
                  f"whether the median lies inside the band of the real mixes (`{labels.get(ref, ref)}`: "
                  f"{lo_p}th-{hi_p}th percentile of its per-clip values): {bands}. In band: the share of the "
                  "method's clips inside it. mode_match: mean [95 % CI] agreement of the Krumhansl-Kessler "
                  "mode estimate with the clip's `label_mode`.", ""]
    lines.append("| method | chroma_conc median | in band | flatness median | in band | mode_match ↑ |")
    lines.append("|---|---|---|---|---|---|")

    def cell(d: Mapping[str, Any]) -> tuple[str, str]:
        if not d or not d.get("n"):
            return "–", "–"
        verdict = "–" if d.get("inside") is None else ("yes" if d["inside"] else "no")
        if d.get("in_band_frac") is not None:
            verdict += f" ({100 * d['in_band_frac']:.0f} % of clips)"
        return f"{d['median']:.3f}", verdict

    for key in methods:
        t = ton["methods"].get(key, {})
        c, f = cell(t.get("chroma_conc", {})), cell(t.get("flatness", {}))
        lines.append(f"| {labels.get(key, key)} | {c[0]} | {c[1]} | {f[0]} | {f[1]} | "
                     f"{_fmt(per.get(key, {}).get('mode_match', {}))} |")
    lines.append("")
    return lines


def _failed_lines(failed: Mapping[str, Any], labels: Mapping[str, str]) -> list[str]:
    """The Markdown "Failed samples" section (nothing when no sample failed)."""
    if not any(d.get("n") for d in failed.values()):
        return []
    lines = ["## Failed samples", "",
             "Generations that diverged (non-finite latents or audio; GeneratorError names the window and the "
             "denoising step). They are in no mean or set metric above: those cover the other samples.", "",
             "| method | failed | of | first errors |", "|---|---|---|---|"]
    for key, d in failed.items():
        if d.get("n"):
            errs = "; ".join(f"{e['clip_id']} (seed {e['seed']}): {e['error']}" for e in d["errors"][:2])
            lines.append(f"| {labels.get(key, key)} | {d['n']} | {d['of']} | {errs.replace('|', '/')} |")
    lines.append("")
    return lines


def _long_lines(long: Mapping[str, Any], labels: Mapping[str, str]) -> list[str]:
    """The Markdown "Long videos" section (:func:`long_video_summary`)."""
    lines = ["## Long videos: window joins", ""]
    if not long.get("methods"):
        return lines + [f"No long video: the bench's clips hold no {long.get('long_clips')} consecutive clips "
                        f"({long.get('long_from')}); set long_from: montage, more clips, or fewer long_clips.", ""]
    lines += [f"{long.get('videos')} long videos of {long.get('long_clips')} clips ({long.get('long_from')}), "
              "generated through the long-video path (windows joined with crossfades). Seam ratio: the largest "
              "frame-to-frame change (spectral flux on mel bands; loudness |dB|) within each join's crossfade "
              "+- 0.1 s over the median of the same statistic on equally long stretches elsewhere in the same track "
              "(1: the join changes the sound no more than the rest; `soundtrack.metrics.seam_metrics`). Mean [95 % "
              "bootstrap interval] over tracks; worst: the mean of each track's worst join. Aim: every join <= 1. "
              "The ground truth (real audio, no join there) shows a seamless track's ratios.", "",
              "| method | tracks | joins | flux ratio | worst flux | loudness ratio | worst loudness | within aim | failed |",
              "|---|---|---|---|---|---|---|---|---|"]
    for key, d in long["methods"].items():
        w = d.get("within_aim", {})
        lines.append(f"| {labels.get(key, key)} | {d['n']} | {d['joins']} | {_fmt(d.get('flux_ratio', {}))} | "
                     f"{_fmt(d.get('flux_ratio_max', {}))} | {_fmt(d.get('loudness_ratio', {}))} | "
                     f"{_fmt(d.get('loudness_ratio_max', {}))} | {w.get('tracks', 0)} / {w.get('of', 0)} | "
                     f"{d.get('failed', 0)} |")
    lines.append("")
    return lines


def _heads_sentence(heads: Mapping[str, Mapping[str, Any]]) -> str:
    """" <label> classifier held-out accuracy ..." for each further classifier of the evaluator."""
    out = ""
    for lab, c in heads.items():
        out += (f" {lab.capitalize()} classifier ({', '.join(c.get('classes') or [])}) held-out accuracy "
                f"{c.get('val_accuracy', math.nan):.2f} (majority class {c.get('majority_baseline', math.nan):.2f}, "
                f"{c.get('val_clips')} clips): about the most {lab}_acc can reach (real mixes score near it).")
    return out if heads else " No mood classifier (an evaluator built before it): mood_acc is nan."


def markdown(summary: Mapping[str, Any], methods: Mapping[str, MethodSpec], command: str = "") -> str:
    """The Markdown report: two metric tables (mean [95 % CI]), the paired differences and
    the tonality check."""
    arrow = {1: " ↑", -1: " ↓", 0: ""}
    lines = [f"# Bench `{summary.get('bench')}`", ""]
    if command:
        lines += [f"Command: `{command}`  ", ""]
    lines += [f"{summary.get('clips')} {summary.get('split')} clips x seeds {summary.get('seeds')}; wall time "
              f"{summary.get('wall_s')} s. Each cell: mean [95 % bootstrap interval over clips]. Sync metrics "
              "(f1, precision, hit_rate, onset_rate, bcs, bhs, beat_f1) are measured against the clips' "
              "ground-truth video event times (bounces, flashes, cuts), never against the reference audio; "
              "0.1 s tolerance. SIM, P@1, FAD, KL and IS use the evaluation encoders/classifier, trained apart "
              "from the generator's conditioner; P@1 is video -> generated-audio retrieval in a pool of "
              f"min(60, N) = {min(60, int(summary.get('clips') or 0))} of the method's own clips, fixed seed "
              "(chance 1/pool). Per-clip intervals resample clips with all their seeds (a clip-level bootstrap). "
              "FAD, IS, CSD, HSD and dyn_macro are set-level (interval: subsampling, the set metric on random "
              "halves of the clips, centred on the point); FAD's real-vs-real floor (fad_floor: two halves of "
              "the real set) and the generated set's FAD at that size (fad_half) and KID are in summary.json. "
              "CSD/HSD are the spread of BCS/BHS across clips, not a generation's stability. "
              "⚑ marks a value within 0.05 of its metric's bound (saturated: it cannot separate methods there). "
              f"FAD / KID encoder: {summary.get('fad_encoder', 'the evaluator encoders')}. "
              + ("clap: cosine of the clip's caption and the audio in that CLAP's space. "
                 if str(summary.get("fad_encoder", "")).startswith("clap") else "")
              + (summary.get("analysis") or ""),
              ""]
    per = summary["methods"]
    for cols in (MAIN_TABLE, SECOND_TABLE):
        # a column no method has a value for (clap without a CLAP embedder, mood_acc without
        # labels) is left out of the table; summary.json has every metric
        cols = tuple(c for c in cols if c in MAIN_TABLE or any(np.isfinite(per[k].get(c, {}).get("mean", math.nan))
                                                                for k in methods if k in per))
        lines.append("| method | " + " | ".join(f"{c}{arrow[DIRECTION.get(c, 0)]}" for c in cols) + " |")
        lines.append("|---|" + "---|" * len(cols))
        for key in methods:
            lab = summary["labels"].get(key, key)
            lines.append(f"| {lab} | " + " | ".join(_fmt_flag(c, per[key].get(c, {})) for c in cols) + " |")
        lines.append("")
    if summary.get("paired_differences"):
        lines += ["## Paired differences (a - b, same clips and seeds; 95 % paired bootstrap interval)", ""]
        cols = PAIRED_TABLE
        lines.append("| a - b | " + " | ".join(cols) + " |")
        lines.append("|---|" + "---|" * len(cols))
        for name, d in summary["paired_differences"].items():
            lines.append(f"| {name} | " + " | ".join(_fmt(d.get(c, {})) for c in cols) + " |")
        lines.append("")
    if summary.get("tonality"):
        lines += _tonality_lines(summary["tonality"], per, summary["labels"], methods)
    lines += _failed_lines(summary.get("failed") or {}, summary["labels"])
    if summary.get("long_videos"):
        lines += _long_lines(summary["long_videos"], summary["labels"])
    if summary.get("modes"):
        lines += _mode_lines(summary["modes"], summary["labels"])
    ev = summary.get("evaluator_card", {})
    if ev:
        classes = summary.get("evaluator_classes") or []
        lines += [f"Evaluator: encoders {ev.get('encoders')}; {ev.get('label')} classifier "
                  + (f"({', '.join(classes)}) " if classes else "") + "held-out accuracy "
                  f"{ev.get('val_accuracy', math.nan):.2f} (majority class {ev.get('majority_baseline', math.nan):.2f}, "
                  f"{ev.get('val_clips')} clips): KL and IS are only as informative as that."
                  + _heads_sentence(ev.get("heads") or {}), ""]
    return "\n".join(lines)


def plot(summary: Mapping[str, Any], methods: Mapping[str, MethodSpec], path: Path,
         metrics: Sequence[str] = ("f1", "precision", "onset_rate", "beat_f1", "sim", "fad")) -> Path:
    """A bar chart per metric (mean with 95 % interval), methods in config order."""
    matplotlib.use("Agg")

    keys = list(methods)
    labels = [summary["labels"].get(k, k) for k in keys]
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.0 * len(metrics), 0.35 * len(keys) + 1.6), sharey=True)
    for ax, m in zip(np.atleast_1d(axes), metrics):
        vals = [summary["methods"][k].get(m, {}) for k in keys]
        mean = np.array([v.get("mean", np.nan) for v in vals], float)
        lo = np.array([v.get("ci95", [np.nan, np.nan])[0] for v in vals], float)
        hi = np.array([v.get("ci95", [np.nan, np.nan])[1] for v in vals], float)
        y = np.arange(len(keys))
        colors = ["0.55" if methods[k].kind != "generator" else "tab:blue" for k in keys]
        ax.barh(y, mean, xerr=np.vstack([np.clip(mean - lo, 0, None), np.clip(hi - mean, 0, None)]),
                color=colors, capsize=2)
        ax.set_title(f"{m}{' (higher better)' if DIRECTION.get(m) == 1 else ' (lower better)' if DIRECTION.get(m) == -1 else ''}",
                     fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    np.atleast_1d(axes)[0].set_yticks(np.arange(len(keys)), labels, fontsize=8)
    np.atleast_1d(axes)[0].invert_yaxis()
    fig.suptitle(f"bench {summary.get('bench')}: {summary.get('clips')} {summary.get('split')} clips, "
                 f"seeds {summary.get('seeds')} (grey: real audio)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def write_outputs(out: Path, table, set_table, summary: dict, methods: Mapping[str, MethodSpec], cfg: BenchConfig,
                  command: str | None = None) -> None:
    """results.parquet/csv, set_metrics.csv, summary.json, summary.md, bench.png, and long_videos.csv
    with long videos (atomically each)."""
    if command is None:
        command = summary.get("command") or ""
    long = (summary.get("long_videos") or {}).get("records")
    if long:
        atomic_write(out / "long_videos.csv", lambda p: pd.DataFrame.from_records(long).to_csv(p, index=False))
    atomic_write(out / "results.parquet", lambda p: table.to_parquet(p, index=False))
    atomic_write(out / "results.csv", lambda p: table.to_csv(p, index=False))
    atomic_write(out / "set_metrics.csv", lambda p: set_table.to_csv(p, index=False))
    summary = dict(summary, command=command)
    atomic_write(out / "summary.json", lambda p: p.write_text(json.dumps(summary, indent=2, default=float)))
    atomic_write(out / "summary.md", lambda p: p.write_text(markdown(summary, methods, command)))
    plot(summary, methods, out / "bench.png")
