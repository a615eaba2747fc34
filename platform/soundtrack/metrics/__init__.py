"""The seed papers' objective metrics, one plain numpy function per metric.

Nothing here loads a model or touches Ray: embedding- and classifier-based metrics
(FAD, FD, KL, IS, SIM, P@K, originality) take the arrays that some encoder produced,
so the encoder is pluggable (VGGish, PANNs, CLAP, the platform's own contrastive
encoders). Audio-derived inputs (onsets, chroma, loudness curves) come from the
caller; :func:`onset_times` is provided because the onset parameters are part of the
rhythm metrics' definition.

Where the papers disagree, each function's docstring names the definition chosen
and its source. Summary of the sources:

* HPM (*Harmonizing Pixels and Melodies*), Appendix D: BCS, BHS, F1, CSD, HSD,
  melody accuracy, dynamics correlation (micro, macro), originality vs
  recognizability.
* Diff-BGM (supplement sections 1-3 and its main paper): PCHE, GPS, P@K, ADV (eq. 2).
* MuVi, section 4.1 and Appendix E: FAD, KL, IS, FD, BCS, BHS (100 ms tolerance,
  exclusive bipartite pairing), SIM.
* Not from the seed papers (tonality, see ``tonality``): the Krumhansl-Kessler key
  profiles (Krumhansl & Kessler 1982; Krumhansl 1990) for key and mode, spectral
  flatness (Johnston 1988; Dubnov 2004), and a frame-wise pitch-class entropy.

Times are in seconds throughout; rates are per second.

One module per metric family; everything is re-exported here, so import from
``soundtrack.metrics``:

* ``statistics``: bootstrap intervals (``bootstrap_ci``, ``paired_bootstrap_ci``) and the one
  resampling primitive under every bootstrap (``bootstrap_indices``, ``bootstrap_replicates``).
* ``speed``: ``real_time_factor``.
* ``events``: event matching and onsets (``match_events``, ``onset_times``,
  ``segment_onset_times``), rhythm synchronisation (``onset_sync``, ``bcs``, ``bhs``,
  ``beat_f1``, ``csd``, ``hsd``) and their tolerances ``BEAT_TOLERANCE_S``,
  ``SYNC_TOLERANCE_S``.
* ``distribution``: Frechet distance (``frechet_distance``, ``embedding_stats``,
  ``fad``, ``fd``), ``kl_divergence``, ``inception_score``,
  ``originality_recognizability``.
* ``control``: control fidelity (``melody_accuracy``, ``dynamics_correlation``).
* ``structure``: music structure (``pche``, ``grooving_patterns``, ``gps``, ``adv``).
* ``retrieval``: embedding similarity and retrieval (``sim``, ``precision_at_k``,
  ``precision_at_k_from_similarity``).
* ``tonality``: tonal versus noise-like audio and its mode (``chroma_concentration``,
  ``spectral_flatness``, ``key_correlations``, ``estimate_key``, ``estimate_mode``,
  ``mode_match``, the Krumhansl-Kessler profiles ``KK_MAJOR`` / ``KK_MINOR``).
* ``seams``: window joins of a long soundtrack against the track itself (``seam_metrics``,
  ``frame_changes``, the record keys ``SEAM_METRICS``); our own measure, no paper's.

The family modules import only numpy/scipy/librosa, :mod:`soundtrack.errors` and,
downwards, each other: ``structure`` uses ``events``'s time validation; the others are
independent.
"""

from __future__ import annotations

from soundtrack.metrics.control import _pearson as _pearson
from soundtrack.metrics.control import _pitch_classes as _pitch_classes
from soundtrack.metrics.control import dynamics_correlation, melody_accuracy
from soundtrack.metrics.distribution import _as_prob_rows as _as_prob_rows
from soundtrack.metrics.distribution import (
    embedding_stats,
    fad,
    fd,
    frechet_distance,
    inception_score,
    kl_divergence,
    originality_recognizability,
)
from soundtrack.metrics.events import (
    BEAT_TOLERANCE_S,
    SYNC_TOLERANCE_S,
    bcs,
    beat_f1,
    bhs,
    csd,
    hsd,
    match_events,
    onset_sync,
    onset_times,
    segment_onset_times,
)
from soundtrack.metrics.events import _as_times as _as_times
from soundtrack.metrics.events import _stability_deviation as _stability_deviation
from soundtrack.metrics.retrieval import _unit as _unit
from soundtrack.metrics.retrieval import precision_at_k, precision_at_k_from_similarity, sim
from soundtrack.metrics.seams import SEAM_METRICS, frame_changes, seam_metrics
from soundtrack.metrics.speed import real_time_factor
from soundtrack.metrics.statistics import _bootstrap_stats as _bootstrap_stats
from soundtrack.metrics.statistics import _check_boot_args as _check_boot_args
from soundtrack.metrics.statistics import (
    bootstrap_ci,
    bootstrap_indices,
    bootstrap_replicates,
    paired_bootstrap_ci,
)
from soundtrack.metrics.structure import _entropy_bits as _entropy_bits
from soundtrack.metrics.structure import adv, gps, grooving_patterns, pche
from soundtrack.metrics.tonality import (
    KK_MAJOR,
    KK_MINOR,
    Key,
    chroma_concentration,
    estimate_key,
    estimate_mode,
    key_correlations,
    mode_match,
    spectral_flatness,
)

# The private helpers above (``name as name``) stay importable from the package, as
# they were before the split; they are not part of ``__all__``.

__all__ = [
    "BEAT_TOLERANCE_S",
    "KK_MAJOR",
    "KK_MINOR",
    "Key",
    "SEAM_METRICS",
    "SYNC_TOLERANCE_S",
    "adv",
    "bcs",
    "beat_f1",
    "bhs",
    "bootstrap_ci",
    "bootstrap_indices",
    "bootstrap_replicates",
    "chroma_concentration",
    "csd",
    "dynamics_correlation",
    "embedding_stats",
    "estimate_key",
    "estimate_mode",
    "fad",
    "fd",
    "frame_changes",
    "frechet_distance",
    "gps",
    "grooving_patterns",
    "hsd",
    "inception_score",
    "key_correlations",
    "kl_divergence",
    "match_events",
    "melody_accuracy",
    "mode_match",
    "onset_sync",
    "onset_times",
    "originality_recognizability",
    "paired_bootstrap_ci",
    "pche",
    "precision_at_k",
    "precision_at_k_from_similarity",
    "real_time_factor",
    "seam_metrics",
    "segment_onset_times",
    "sim",
    "spectral_flatness",
]
