"""Comparison modes: the published papers' own computations, for numbers next to their tables.

Our default metrics (:mod:`~soundtrack.metrics.events`, :mod:`~soundtrack.metrics.structure`)
score generated audio against the video's events with our front end; they are not the
numbers the papers publish. Each mode here reproduces one paper's evaluation code or text,
so that a row computed with it can sit next to that paper's table:

* ``loris``: LORIS (Yu et al., ICML 2023), ``beats_scores.py`` of
  github.com/OpenGVLab/LORIS: onsets of the real and the generated music, binned into
  1 s bins; BCS (``cover``), BHS (``hit``), their F1 and stds. :func:`loris_beat_bins`,
  :func:`loris_beat_scores`, :func:`loris_scores`.
* ``muvi``: MuVi (Li et al. 2024), section 4.1 and Appendix E: dynamic-programming beats
  (Ellis 2007) of the real and the generated music; BCS = generated / real beat count,
  BHS = matched / real beats, 100 ms exclusive matching, in percent.
  :func:`muvi_beats`, :func:`muvi_beat_scores`, :func:`muvi_scores`.
* ``diffbgm``: Diff-BGM (Li et al., CVPR 2024), ``diffbgm/test.ipynb`` of
  github.com/sizhelee/Diff-BGM: PCHE and GPS from notes exactly as its code computes them
  (:func:`diffbgm_pche`, :func:`diffbgm_gps`), SI (MusDr's structureness indicator,
  :func:`soundtrack.metrics.structure.structure_indicator`; the repository has none),
  P@K of generated among real music and ``|metric - real|`` columns
  (:func:`diffbgm_scores`).

``tests/test_metric_fixes.py`` checks the ``loris`` and ``diffbgm`` modes against the
numbers the papers' own functions give on fixed signals and note lists
(``benchmarks/reference_metrics.py`` runs them, ``tests/data/reference_metrics.json``
holds the result).

Also here: :data:`BOUNDS` (each bounded metric's range) and :func:`saturation` /
:func:`saturated`, which flag a value within ``tol`` of a bound (a metric at its ceiling
for every method separates nothing).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import librosa
import numpy as np

from soundtrack.errors import MetricError
from soundtrack.metrics.events import _as_times, match_events
from soundtrack.metrics.retrieval import _unit, precision_at_k_from_similarity
from soundtrack.metrics.structure import PCHE_MAX_BITS, _note_events

# ---------------------------------------------------------------------------
# loris: LORIS's beats_scores.py
# ---------------------------------------------------------------------------

#: Sample rate (Hz) LORIS's ``beats_scores.py`` loads audio at (``librosa.load`` default).
LORIS_SR = 22050

#: LORIS's onset parameters (``beat_detect``), in librosa frames of 512 samples (23.2 ms
#: at 22050 Hz): ``wait`` 1 frame, peak window 3 frames each side, local mean over 3
#: frames each side, threshold ``delta`` 0.2 on the [0, 1]-normalised envelope.
LORIS_ONSET = {"wait": 1, "delta": 0.2, "pre_avg": 3, "post_avg": 3, "pre_max": 3, "post_max": 3}


def loris_beat_bins(wav: np.ndarray, sr: int = LORIS_SR) -> np.ndarray:
    """LORIS's "beats" of a clip: one flag per second, 1 if an onset falls in that second.

    Definition (``beats_scores.py``, ``beat_detect``): ``librosa.onset.onset_detect`` at
    22050 Hz with :data:`LORIS_ONSET`, onset times in seconds; ``ceil(len / sr)`` bins of
    1 s; bin ``trunc(t)`` set for each onset ``t``. Audio at another rate is resampled
    (``librosa.resample``, soxr_hq, what ``librosa.load`` uses). An onset at or past the
    last bin (possible when the length is a whole number of seconds) would raise an
    IndexError in LORIS's code; it is dropped here.

    Args:
        wav: mono waveform.
        sr: its sample rate (Hz).

    Returns:
        int64 array (ceil(duration),) of 0/1.
    """
    y = np.asarray(wav, dtype=np.float32).reshape(-1)
    if sr != LORIS_SR:
        y = librosa.resample(y, orig_sr=sr, target_sr=LORIS_SR, res_type="soxr_hq")
    onsets = librosa.onset.onset_detect(y=y, sr=LORIS_SR, units="time", **LORIS_ONSET)
    bins = np.zeros(int(math.ceil(y.size / LORIS_SR)), dtype=np.int64)
    idx = np.trunc(onsets).astype(np.int64)
    bins[idx[idx < bins.size]] = 1
    return bins


def loris_beat_scores(ref_bins: Sequence[int] | np.ndarray, gen_bins: Sequence[int] | np.ndarray) -> tuple[float, float]:
    """LORIS's per-clip (cover, hit) of two 1 s beat-bin vectors (``beat_scores``).

    Definition: the reference is cut to the generation's length; ``hits`` = bins that
    are 1 in both; ``cover = hits / sum(gen)`` (BCS, HPM's ``B_a / B_g``) and
    ``hit = hits / sum(ref)`` (BHS), each 0 when its denominator is 0.

    Args:
        ref_bins: real music's bins (:func:`loris_beat_bins`).
        gen_bins: generated music's bins, not longer than the reference.

    Returns:
        ``(cover, hit)`` in [0, 1].

    Raises:
        MetricError: a generation longer than its reference (LORIS asserts equal lengths).
    """
    ref = np.asarray(ref_bins, dtype=np.int64).reshape(-1)
    gen = np.asarray(gen_bins, dtype=np.int64).reshape(-1)
    ref = ref[: gen.size]
    if ref.size != gen.size:
        raise MetricError(f"generated clip ({gen.size} s) longer than its reference ({ref.size} s)")
    hits = int(np.count_nonzero((ref == 1) & (gen == 1)))
    total, cover = int(ref.sum()), int(gen.sum())
    return (hits / cover if cover else 0.0), (hits / total if total else 0.0)


def _std1(x: Sequence[float]) -> float:
    """Sample standard deviation (ddof=1); nan for fewer than 2 values."""
    return float(np.std(np.asarray(x, dtype=np.float64), ddof=1)) if len(x) >= 2 else float("nan")


def loris_scores_from_bins(ref_bins: Sequence[np.ndarray], gen_bins: Sequence[np.ndarray]) -> dict[str, Any]:
    """LORIS's set-level scores from per-clip beat bins (``beats_scores.py``'s main loop).

    Definition: per clip ``(cover, hit)`` by :func:`loris_beat_scores`; ``bcs`` and
    ``bhs`` are their means over clips, ``f1 = 2 * bcs * bhs / (bcs + bhs)`` (the F1 *of
    the means*, 0 when both are 0 where LORIS would divide by zero), ``csd`` / ``hsd``
    the sample stds (``ddof=1``) of the per-clip values, i.e. the spread across clips.

    Args:
        ref_bins: per-clip real-music bins.
        gen_bins: per-clip generated bins, same order.

    Returns:
        Dict with ``bcs``, ``bhs``, ``f1``, ``csd``, ``hsd`` (fractions), ``cover`` and
        ``hit`` (per-clip lists) and ``n_clips``.
    """
    if len(ref_bins) != len(gen_bins) or not ref_bins:
        raise MetricError("need the same, non-zero number of reference and generated clips")
    pairs = [loris_beat_scores(r, g) for r, g in zip(ref_bins, gen_bins)]
    cover = [c for c, _ in pairs]
    hit = [h for _, h in pairs]
    b_c, b_h = float(np.mean(cover)), float(np.mean(hit))
    return {
        "bcs": b_c,
        "bhs": b_h,
        "f1": 2 * b_c * b_h / (b_c + b_h) if b_c + b_h > 0 else 0.0,
        "csd": _std1(cover),
        "hsd": _std1(hit),
        "cover": cover,
        "hit": hit,
        "n_clips": len(pairs),
    }


def loris_scores(ref_wavs: Sequence[np.ndarray], gen_wavs: Sequence[np.ndarray], sr: int = LORIS_SR) -> dict[str, Any]:
    """LORIS's BCS, BHS, F1, CSD, HSD of generated against real music (``beats_scores.py``).

    :func:`loris_beat_bins` of each real and generated clip, then
    :func:`loris_scores_from_bins`. The reference is the *real music* (LORIS's ``gt*``
    files), not video events.

    Args:
        ref_wavs: real music, one mono waveform per clip.
        gen_wavs: generated music, same order (each not longer than its reference).
        sr: sample rate of both (Hz).

    Returns:
        See :func:`loris_scores_from_bins`.
    """
    return loris_scores_from_bins([loris_beat_bins(w, sr) for w in ref_wavs],
                                  [loris_beat_bins(w, sr) for w in gen_wavs])


# ---------------------------------------------------------------------------
# muvi: MuVi's BCS / BHS
# ---------------------------------------------------------------------------

#: MuVi's matching tolerance (s), Appendix E: a generated beat within 100 ms of a real
#: beat ("less than 100ms": strict) is aligned; pairs are exclusive.
MUVI_TOLERANCE_S = 0.1


def muvi_beats(
    wav: np.ndarray,
    sr: int = LORIS_SR,
    *,
    hop_length: int = 512,
    window_s: float = 8.0,
    bpm_range: tuple[float, float] = (30.0, 240.0),
) -> np.ndarray:
    """Beat times with MuVi's tracker: dynamic programming (Ellis 2007) on a time-varying tempo.

    Definition (MuVi section 4.1): "a dynamic beat tracking algorithm (Ellis, 2007) to
    obtain a time-varying tempo sequence ..., where the sliding window size is 8 seconds,
    the stride is 512 frames, and the BPM range is from 30 to 240". We read that as
    librosa's onset envelope at a hop of ``hop_length`` = 512 samples, a per-frame tempo
    from an ``window_s`` = 8 s autocorrelation window (``librosa.feature.tempo`` with
    ``aggregate=None``, its default log-normal prior around 120 BPM, at most 240 BPM)
    clipped to ``bpm_range``, and ``librosa.beat.beat_track`` with that tempo curve. MuVi
    does not give its sample rate, prior or implementation; 22050 Hz (librosa's) by
    default. Its own tracker's accuracy (58.8 % in Ellis 2007) is why MuVi calls the
    metrics "a reference".

    Args:
        wav: mono waveform.
        sr: its sample rate (Hz).
        hop_length: onset-envelope hop (samples).
        window_s: tempo estimation window (s).
        bpm_range: tempo range (BPM).

    Returns:
        Beat times (s), sorted.
    """
    y = np.asarray(wav, dtype=np.float32).reshape(-1)
    if y.size < 2 * hop_length or not np.any(y):
        return np.zeros(0)
    env = librosa.onset.onset_strength(y=y, sr=sr, hop_length=hop_length)
    lo, hi = bpm_range
    # librosa's log-normal tempo prior (120 BPM, one octave): a uniform prior over the
    # range picks half the tempo of a plain click track as often as the tempo.
    tempo = librosa.feature.tempo(onset_envelope=env, sr=sr, hop_length=hop_length, ac_size=window_s,
                                  aggregate=None, max_tempo=hi)
    tempo = np.clip(tempo, lo, hi)
    _, beats = librosa.beat.beat_track(onset_envelope=env, sr=sr, hop_length=hop_length, bpm=tempo, units="time")
    return np.sort(np.asarray(beats, dtype=np.float64))


def muvi_beat_scores(
    ref_beats: Sequence[float] | np.ndarray,
    gen_beats: Sequence[float] | np.ndarray,
    tolerance: float = MUVI_TOLERANCE_S,
) -> dict[str, float]:
    """MuVi's per-clip BCS and BHS, in percent (section 4.1, Appendix E; after D2M-GAN).

    Definition: ``BCS = 100 * n_gen / n_real`` ("the ratio of overall generated beats to
    the total musical beats", so it exceeds 100 for a busy generator) and ``BHS = 100 *
    n_aligned / n_real`` with ``n_aligned`` the size of a maximum exclusive matching of
    generated to real beats closer than ``tolerance`` (strictly, "less than 100ms").

    Args:
        ref_beats: beats of the real music (s), e.g. :func:`muvi_beats`.
        gen_beats: beats of the generated music (s).
        tolerance: matching tolerance (s).

    Returns:
        Dict with ``bcs``, ``bhs`` (percent; nan without real beats), ``n_real``, ``n_gen``,
        ``n_aligned``.
    """
    ref = _as_times(ref_beats, "ref_beats")
    gen = _as_times(gen_beats, "gen_beats")
    aligned = len(match_events(ref, gen, float(np.nextafter(tolerance, 0.0))))  # strict "<"
    n_ref = ref.size
    return {
        "bcs": 100.0 * gen.size / n_ref if n_ref else float("nan"),
        "bhs": 100.0 * aligned / n_ref if n_ref else float("nan"),
        "n_real": int(n_ref),
        "n_gen": int(gen.size),
        "n_aligned": int(aligned),
    }


def muvi_scores(
    ref_beats: Sequence[Sequence[float] | np.ndarray],
    gen_beats: Sequence[Sequence[float] | np.ndarray],
    tolerance: float = MUVI_TOLERANCE_S,
) -> dict[str, Any]:
    """MuVi's BCS / BHS of a set: per-clip :func:`muvi_beat_scores`, mean over clips (nan-aware).

    MuVi averages over 5 inference runs per test sample and does not say whether the
    per-clip ratios or pooled counts are averaged; we average the per-clip ratios and
    also give the pooled ratios (``bcs_pooled``, ``bhs_pooled``).

    Args:
        ref_beats: per-clip real-music beats (s).
        gen_beats: per-clip generated beats (s), same order.
        tolerance: matching tolerance (s).

    Returns:
        Dict with ``bcs``, ``bhs`` (means, percent), ``bcs_pooled``, ``bhs_pooled``,
        ``per_clip`` (list of dicts) and ``n_clips``.
    """
    if len(ref_beats) != len(gen_beats) or not ref_beats:
        raise MetricError("need the same, non-zero number of reference and generated clips")
    per = [muvi_beat_scores(r, g, tolerance) for r, g in zip(ref_beats, gen_beats)]
    n_real = sum(p["n_real"] for p in per)

    def mean(key: str) -> float:
        vals = [p[key] for p in per if not math.isnan(p[key])]
        return float(np.mean(vals)) if vals else float("nan")

    return {
        "bcs": mean("bcs"),
        "bhs": mean("bhs"),
        "bcs_pooled": 100.0 * sum(p["n_gen"] for p in per) / n_real if n_real else float("nan"),
        "bhs_pooled": 100.0 * sum(p["n_aligned"] for p in per) / n_real if n_real else float("nan"),
        "per_clip": per,
        "n_clips": len(per),
    }


# ---------------------------------------------------------------------------
# diffbgm: Diff-BGM's test.ipynb
# ---------------------------------------------------------------------------

#: Diff-BGM's PCHE window: 32 quarter notes (``process_midi`` closes a group at offsets
#: 32, 64, ...), i.e. 8 bars of 4/4.
DIFFBGM_GROUP_BEATS = 32.0
#: Diff-BGM's grooving-pattern bar: 4 quarter notes, 16 positions (sixteenth notes).
DIFFBGM_BAR_BEATS = 4.0
DIFFBGM_POSITIONS = 16
#: The epsilon Diff-BGM adds inside the log of its entropy (``np.log2(histogram + 1e-6)``).
DIFFBGM_EPS = 1e-6


def diffbgm_pche(notes: Any, group_beats: float = DIFFBGM_GROUP_BEATS, eps: float = DIFFBGM_EPS) -> float:
    """PCHE exactly as Diff-BGM's ``test.ipynb`` computes it from a MIDI file's notes.

    Definition (``process_midi`` + ``pitch_class_histogram_entropy``): notes are grouped
    by onset into windows of ``group_beats`` quarter notes; a window enters only once a
    later note starts past its end, so the window holding the last onset (complete or
    not) is left out; per window, the histogram of note counts per pitch class (each
    note of a chord counts), normalised, and ``-sum(h * log2(h + eps))`` over the 12
    bins; PCHE is the mean over windows. Onsets are in quarter notes (music21 offsets).

    Differences from the code, on inputs where it fails or drifts: with no complete
    window (a piece shorter than 32 quarter notes, e.g. one note) the code divides by
    zero, we return nan; after a silence of 32 quarter notes or more the code's
    grouping (an ``if`` where a ``while`` is needed) drifts, we keep aligned windows and
    skip empty ones. Our own :func:`~soundtrack.metrics.structure.pche_notes` gives a
    one-note MIDI exactly 0.

    Args:
        notes: MIDI-like notes ``(pitch, onset, offset)``, onsets in quarter notes.
        group_beats: window length (quarter notes).
        eps: the epsilon inside the log.

    Returns:
        PCHE in bits (about -1.4e-6 for one pitch class, because of ``eps``); nan when no
        window enters.
    """
    ev = _note_events(notes)
    if ev.shape[0] == 0:
        return float("nan")
    group = np.floor(ev[:, 1] / group_beats).astype(np.int64)
    pcs = ev[:, 0].astype(np.int64) % 12
    ents = []
    for g in range(int(group.max())):
        hist = np.bincount(pcs[group == g], minlength=12).astype(np.float64)
        if hist.sum() == 0:
            continue
        hist = hist / hist.sum()
        ents.append(-float(np.sum(hist * np.log2(hist + eps))))
    return float(np.mean(ents)) if ents else float("nan")


def diffbgm_grooving_patterns(notes: Any, bar_beats: float = DIFFBGM_BAR_BEATS,
                              positions: int = DIFFBGM_POSITIONS) -> np.ndarray:
    """Diff-BGM's grooving patterns of a MIDI file's notes (``process_midi``'s ``pattern``).

    Definition: bar ``j`` covers onsets in ``[j * bar_beats, (j + 1) * bar_beats)``
    quarter notes; a note sets position ``int(positions / bar_beats * (onset - j *
    bar_beats))`` (truncated, not rounded, to the sixteenth-note grid); bars are the
    ones before the bar of the last onset (the code appends a bar only when a later
    note starts past it), empty bars included.

    Args:
        notes: MIDI-like notes ``(pitch, onset, offset)``, onsets in quarter notes.
        bar_beats: bar length (quarter notes).
        positions: grid positions per bar.

    Returns:
        int64 array (n_bars, positions) of 0/1.
    """
    ev = _note_events(notes)
    if ev.shape[0] == 0:
        return np.zeros((0, positions), dtype=np.int64)
    on = ev[:, 1]
    bar = np.floor(on / bar_beats).astype(np.int64)
    n_bars = int(bar.max())
    pos = np.trunc((positions / bar_beats) * (on - bar_beats * bar)).astype(np.int64)
    keep = bar < n_bars
    pat = np.zeros((n_bars, positions), dtype=np.int64)
    pat[bar[keep], pos[keep]] = 1
    return pat


def diffbgm_gps(notes: Any, bar_beats: float = DIFFBGM_BAR_BEATS, positions: int = DIFFBGM_POSITIONS) -> float:
    """GPS exactly as Diff-BGM's ``test.ipynb`` computes it (``cal_cps``).

    Definition: over all pairs ``i < j`` of :func:`diffbgm_grooving_patterns`, the mean of
    ``1 - (1 / Q) * sum(XOR(g_i, g_j))``. Same quantity as
    :func:`soundtrack.metrics.structure.gps` (``pairs="all"``); the bars differ (see
    :func:`diffbgm_grooving_patterns`).

    Args:
        notes: MIDI-like notes ``(pitch, onset, offset)``, onsets in quarter notes.
        bar_beats: bar length (quarter notes).
        positions: grid positions per bar.

    Returns:
        GPS in [0, 1]; nan with fewer than 2 bars (the code divides by zero).
    """
    g = diffbgm_grooving_patterns(notes, bar_beats, positions)
    if g.shape[0] < 2:
        return float("nan")
    ia, ib = np.triu_indices(g.shape[0], k=1)
    return float(np.mean(1.0 - np.sum(np.bitwise_xor(g[ia], g[ib]), axis=1) / positions))


def diffbgm_scores(
    gen_emb: np.ndarray | None = None,
    real_emb: np.ndarray | None = None,
    *,
    gen_values: Mapping[str, Sequence[float] | np.ndarray] | None = None,
    real_values: Mapping[str, Sequence[float] | np.ndarray] | None = None,
    ks: Sequence[int] = (5, 10, 20),
    pool_size: int | None = None,
    seed: int = 0,
) -> dict[str, float]:
    """Diff-BGM's table: P@K of generated among real music, and ``|metric - real|`` columns.

    Definition: P@K (:func:`~soundtrack.metrics.retrieval.precision_at_k`) with the
    generated clips' music embeddings as queries and the real music's as candidates
    (partner = the same clip's real music), pool ``min(60, N)`` by default (Diff-BGM
    samples 60 real candidates out of 500) and a fixed seed; Diff-BGM reports P@5, P@10,
    P@20 in percent, we report fractions. For each metric in ``gen_values`` (per-clip
    values, e.g. ``pche``, ``gps``, ``si``): the generated mean, the real mean and
    ``|generated mean - real mean|`` (Diff-BGM marks PCHE, GPS and SI "->": closer to
    the real music's value is better), plus the per-clip mean ``|gen_i - real_i|``.

    Args:
        gen_emb: (N, D) embeddings of the generated music (None: no P@K).
        real_emb: (N, D) embeddings of the real music, row i = clip i.
        gen_values: per-clip metric values of the generated music, by name.
        real_values: the same metrics of the real music (same names and clip order).
        ks: cut-off ranks.
        pool_size: candidates per query; None for ``min(60, N)``.
        seed: seed of the pools.

    Returns:
        Dict with ``p_at_{k}`` and ``pool_size`` (when embeddings are given) and, per
        metric ``m``, ``m``, ``m_real``, ``m_abs_diff``, ``m_clip_abs_diff`` (nan-aware means).
    """
    out: dict[str, float] = {}
    if gen_emb is not None and real_emb is not None:
        q = _unit(np.asarray(gen_emb, dtype=np.float64))
        c = _unit(np.asarray(real_emb, dtype=np.float64))
        if q.ndim != 2 or q.shape != c.shape:
            raise MetricError(f"need equal (N, D) embeddings, got {q.shape} and {c.shape}")
        sim = q @ c.T
        for k in ks:
            res = precision_at_k_from_similarity(sim, k, pool_size=pool_size, seed=seed)
            out[f"p_at_{k}"] = float(res["p_at_k"])
            out["pool_size"] = float(res["pool_size"])
    gen_values = gen_values or {}
    real_values = real_values or {}
    for name, gv in gen_values.items():
        if name not in real_values:
            raise MetricError(f"real_values has no {name!r}; the |metric - real| column needs both")
        g = np.asarray(gv, dtype=np.float64).reshape(-1)
        r = np.asarray(real_values[name], dtype=np.float64).reshape(-1)
        gm = float(np.nanmean(g)) if np.any(np.isfinite(g)) else float("nan")
        rm = float(np.nanmean(r)) if np.any(np.isfinite(r)) else float("nan")
        out[name], out[f"{name}_real"], out[f"{name}_abs_diff"] = gm, rm, abs(gm - rm)
        d = np.abs(g - r) if g.shape == r.shape else np.zeros(0)
        out[f"{name}_clip_abs_diff"] = float(np.nanmean(d)) if np.any(np.isfinite(d)) else float("nan")
    return out


# ---------------------------------------------------------------------------
# Saturation: a value at a metric's bound
# ---------------------------------------------------------------------------

#: Range ``(lower, upper)`` of each bounded metric, by the column names of the platform's
#: tables (None: unbounded on that side). Sources: the metric functions' docstrings.
BOUNDS: dict[str, tuple[float | None, float | None]] = {
    # rhythm (fractions): onset_sync, bcs, bhs, beat_f1; the loris mode's
    "f1": (0.0, 1.0), "precision": (0.0, 1.0), "hit_rate": (0.0, 1.0),
    "bcs": (0.0, 1.0), "bhs": (0.0, 1.0), "beat_f1": (0.0, 1.0),
    "loris_bcs": (0.0, 1.0), "loris_bhs": (0.0, 1.0), "loris_f1": (0.0, 1.0),
    # MuVi's BHS is a percentage; its BCS is a count ratio (percent), unbounded above
    "muvi_bhs": (0.0, 100.0), "muvi_bcs": (0.0, None),
    # control fidelity
    "melody_acc": (0.0, 1.0), "dyn_r": (-1.0, 1.0), "dyn_macro": (-1.0, 1.0),
    # structure: PCHE in bits up to log2(12), GPS, ADV (in [0, 1)), SI
    "pche": (0.0, PCHE_MAX_BITS), "gps": (0.0, 1.0), "adv": (0.0, 1.0), "si": (0.0, 1.0),
    # tonality
    "chroma_conc": (0.0, 1.0), "flatness": (0.0, 1.0), "mode_match": (0.0, 1.0), "mood_acc": (0.0, 1.0),
    # embeddings and retrieval (cosines; P@K fractions)
    "sim": (-1.0, 1.0), "clap": (-1.0, 1.0), "p_at_1": (0.0, 1.0), "p_at_5": (0.0, 1.0), "p_at_10": (0.0, 1.0), "p_at_20": (0.0, 1.0),
    # distributions: bounded below only
    "fad": (0.0, None), "kl": (0.0, None), "is": (1.0, None),
}


def saturation(value: float, bound: float | None, tol: float = 0.05) -> bool:
    """Whether ``value`` lies within ``tol`` of ``bound`` (absolute, in the metric's units).

    Args:
        value: the metric value (nan: never saturated).
        bound: the bound (None: never saturated).
        tol: tolerance, in the metric's own units (0.05 = 5 points of a fraction, 0.05 bit
            of PCHE).

    Returns:
        True when ``|value - bound| <= tol``.
    """
    if bound is None or value is None or not math.isfinite(float(value)):
        return False
    return abs(float(value) - float(bound)) <= tol


def saturated(metric: str, value: float, tol: float = 0.05) -> str | None:
    """Which bound of :data:`BOUNDS` a metric's value sits at, for flagging table cells.

    Args:
        metric: a name in :data:`BOUNDS` (unknown names are never flagged).
        value: the value.
        tol: tolerance in the metric's units (see :func:`saturation`).

    Returns:
        ``"upper"``, ``"lower"`` or None.
    """
    lo, hi = BOUNDS.get(metric, (None, None))
    if saturation(value, hi, tol):
        return "upper"
    if saturation(value, lo, tol):
        return "lower"
    return None
