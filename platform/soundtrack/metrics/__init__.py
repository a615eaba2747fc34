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

* ``statistics``: bootstrap intervals (``bootstrap_ci``, ``paired_bootstrap_ci``; clip-level
  with ``clusters``) and the one resampling primitive under every bootstrap
  (``bootstrap_indices``, ``bootstrap_replicates``, ``cluster_bootstrap_indices``); set-metric
  intervals by subsampling (``set_metric_ci``, ``paired_set_metric_ci`` from shared indices,
  ``subsample_indices``, ``subsample_interval``).
* ``speed``: ``real_time_factor``.
* ``events``: event matching and onsets (``match_events``, ``onset_times``,
  ``segment_onset_times``), rhythm synchronisation (``onset_sync``, ``bcs``, ``bhs``,
  ``beat_f1``, ``csd``, ``hsd``) and their tolerances ``BEAT_TOLERANCE_S``,
  ``SYNC_TOLERANCE_S``.
* ``distribution``: Frechet distance (``frechet_distance``, ``embedding_stats``,
  ``fad``, ``fd``), ``kl_divergence``, ``inception_score`` (``inception_score_splits``),
  ``originality_recognizability``; FAD against its floor (``fad_floor``), ``fad_infinity``
  (Chong & Forsyth 2020), ``kid`` (Binkowski et al. 2018), ``distance_ci``.
* ``control``: control fidelity (``melody_accuracy``, ``dynamics_correlation``).
* ``structure``: music structure (``pche``, ``grooving_patterns``, ``gps``, ``adv``).
* ``retrieval``: embedding similarity and retrieval (``sim``, ``precision_at_k``,
  ``precision_at_k_from_similarity``).
* ``tonality``: tonal versus noise-like audio and its mode (``chroma_concentration``,
  ``spectral_flatness``, ``key_correlations``, ``estimate_key``, ``estimate_mode``,
  ``mode_match``, the Krumhansl-Kessler profiles ``KK_MAJOR`` / ``KK_MINOR``).
* ``seams``: window joins of a long soundtrack against the track itself (``seam_metrics``,
  ``frame_changes``, the record keys ``SEAM_METRICS``); our own measure, no paper's.
* ``modes``: the papers' own computations for numbers next to their tables (``loris_*``,
  ``muvi_*``, ``diffbgm_*``) and saturation flags (``BOUNDS``, ``saturation``, ``saturated``).
  Also new in the families above: ``melody_accuracy_report`` / ``voiced_frames`` (control),
  ``accent_times`` (events, ADV's accents), ``pche_notes`` / ``pitch_class_counts`` and SI
  (``structure_indicator``, ``self_similarity_matrix``, ``fitness_scape_plot``) (structure),
  ``POOL_SIZE`` (retrieval).

The family modules import only numpy/scipy/librosa, :mod:`soundtrack.errors` and,
downwards, each other: ``structure`` uses ``events``'s time validation, ``distribution``
uses ``statistics``'s subsampling; the others are independent.
"""

from __future__ import annotations

from soundtrack.metrics.control import (
    VOICING_FLOOR_DBFS,
    dynamics_correlation,
    melody_accuracy,
    melody_accuracy_report,
    voiced_frames,
)
from soundtrack.metrics.control import _pearson as _pearson
from soundtrack.metrics.control import _pitch_classes as _pitch_classes
from soundtrack.metrics.distribution import (
    IS_MAX_SPLITS,
    IS_MIN_SPLIT,
    distance_ci,
    embedding_stats,
    fad,
    fad_floor,
    fad_infinity,
    fd,
    frechet_distance,
    inception_score,
    inception_score_splits,
    kid,
    kl_divergence,
    originality_recognizability,
)
from soundtrack.metrics.distribution import _as_prob_rows as _as_prob_rows
from soundtrack.metrics.events import (
    ACCENT_DELTA,
    BEAT_TOLERANCE_S,
    SYNC_TOLERANCE_S,
    accent_times,
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
from soundtrack.metrics.modes import (
    BOUNDS,
    DIFFBGM_BAR_BEATS,
    DIFFBGM_EPS,
    DIFFBGM_GROUP_BEATS,
    DIFFBGM_POSITIONS,
    LORIS_ONSET,
    LORIS_SR,
    MUVI_TOLERANCE_S,
    diffbgm_gps,
    diffbgm_grooving_patterns,
    diffbgm_pche,
    diffbgm_scores,
    loris_beat_bins,
    loris_beat_scores,
    loris_scores,
    loris_scores_from_bins,
    muvi_beat_scores,
    muvi_beats,
    muvi_scores,
    saturated,
    saturation,
)
from soundtrack.metrics.retrieval import POOL_SIZE, precision_at_k, precision_at_k_from_similarity, sim
from soundtrack.metrics.retrieval import _unit as _unit
from soundtrack.metrics.seams import SEAM_METRICS, frame_changes, seam_metrics
from soundtrack.metrics.speed import real_time_factor
from soundtrack.metrics.statistics import _bootstrap_stats as _bootstrap_stats
from soundtrack.metrics.statistics import _check_boot_args as _check_boot_args
from soundtrack.metrics.statistics import (
    bootstrap_ci,
    bootstrap_indices,
    bootstrap_replicates,
    cluster_bootstrap_indices,
    paired_bootstrap_ci,
    paired_set_metric_ci,
    set_metric_ci,
    subsample_indices,
    subsample_interval,
)
from soundtrack.metrics.structure import (
    PCHE_MAX_BITS,
    SI_SR,
    adv,
    fitness_scape_plot,
    gps,
    grooving_patterns,
    pche,
    pche_notes,
    pitch_class_counts,
    self_similarity_matrix,
    structure_indicator,
)
from soundtrack.metrics.structure import _entropy_bits as _entropy_bits
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
    "ACCENT_DELTA",
    "BEAT_TOLERANCE_S",
    "BOUNDS",
    "DIFFBGM_BAR_BEATS",
    "DIFFBGM_EPS",
    "DIFFBGM_GROUP_BEATS",
    "DIFFBGM_POSITIONS",
    "IS_MAX_SPLITS",
    "IS_MIN_SPLIT",
    "KK_MAJOR",
    "KK_MINOR",
    "LORIS_ONSET",
    "LORIS_SR",
    "MUVI_TOLERANCE_S",
    "PCHE_MAX_BITS",
    "POOL_SIZE",
    "SEAM_METRICS",
    "SI_SR",
    "SYNC_TOLERANCE_S",
    "VOICING_FLOOR_DBFS",
    "Key",
    "accent_times",
    "adv",
    "bcs",
    "beat_f1",
    "bhs",
    "bootstrap_ci",
    "bootstrap_indices",
    "bootstrap_replicates",
    "chroma_concentration",
    "cluster_bootstrap_indices",
    "csd",
    "diffbgm_gps",
    "diffbgm_grooving_patterns",
    "diffbgm_pche",
    "diffbgm_scores",
    "distance_ci",
    "dynamics_correlation",
    "embedding_stats",
    "estimate_key",
    "estimate_mode",
    "fad",
    "fad_floor",
    "fad_infinity",
    "fd",
    "fitness_scape_plot",
    "frame_changes",
    "frechet_distance",
    "gps",
    "grooving_patterns",
    "hsd",
    "inception_score",
    "inception_score_splits",
    "key_correlations",
    "kid",
    "kl_divergence",
    "loris_beat_bins",
    "loris_beat_scores",
    "loris_scores",
    "loris_scores_from_bins",
    "match_events",
    "melody_accuracy",
    "melody_accuracy_report",
    "mode_match",
    "muvi_beat_scores",
    "muvi_beats",
    "muvi_scores",
    "onset_sync",
    "onset_times",
    "originality_recognizability",
    "paired_bootstrap_ci",
    "paired_set_metric_ci",
    "pche",
    "pche_notes",
    "pitch_class_counts",
    "precision_at_k",
    "precision_at_k_from_similarity",
    "real_time_factor",
    "saturated",
    "saturation",
    "seam_metrics",
    "segment_onset_times",
    "self_similarity_matrix",
    "set_metric_ci",
    "sim",
    "spectral_flatness",
    "structure_indicator",
    "subsample_indices",
    "subsample_interval",
    "voiced_frames",
]
