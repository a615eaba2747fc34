"""Confidence intervals of metric values: bootstrap (percentile, paired, clip-level) and subsampling.

One resampling primitive serves every bootstrap of the platform: :func:`bootstrap_indices`
draws the resamples (``numpy.random.default_rng(seed).integers(0, n, (n_boot, n))``, so
a seed gives the same resampled item sets whoever asks), :func:`bootstrap_replicates`
evaluates any function of the item indices on each of them (set metrics, an objective
recomputed on the resampled clips), and :func:`bootstrap_ci` / :func:`paired_bootstrap_ci`
are the vectorised per-item statistics on top.

Clip-level (cluster) bootstrap: with several seeds per clip the rows (clip x seed) are not
independent; the clips are. Every function above takes ``clusters`` (a clip id per row):
the clips are resampled (the same draw as :func:`bootstrap_indices` over the sorted clip
ids) and every row of a drawn clip comes along. Resampling rows instead treats 4 seeds of
one clip as 4 independent clips and, with a strong clip effect, gives an interval about
half as wide as it should be (``tests/test_stats_fixes.py``: 200 simulated tables of 16
clips x 4 seeds, clip sd 1, seed sd 0.5: the 95 % interval of the mean covers the true mean
68 % of the time by rows, 92 % by clips; paired differences 66 % against 93 %).

Set metrics (FAD, KID, IS, CSD, ...) are not means of per-item values and FAD is biased
by a term that grows as the set shrinks; :func:`set_metric_ci` and
:func:`paired_set_metric_ci` give intervals by subsampling (m-out-of-n without
replacement, see :func:`subsample_interval`) and, for two methods, from shared indices
(the same clips in both methods' replicate), so that a difference of two set metrics has
its own interval.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal, TypeVar

import numpy as np

from soundtrack.errors import MetricError

T = TypeVar("T")


def bootstrap_indices(n: int, n_boot: int, seed: int) -> np.ndarray:
    """The item indices of ``n_boot`` bootstrap resamples of ``n`` items.

    Args:
        n: items (clips, or clip x seed); each resample draws ``n`` of them with replacement.
        n_boot: resamples.
        seed: seed of ``numpy.random.default_rng``.

    Returns:
        int64 (n_boot, n): row ``b`` holds resample ``b``'s indices. Drawn in one call,
        which gives the same rows as ``n_boot`` successive ``rng.integers(0, n, n)``.
    """
    if n < 1 or n_boot < 1:
        raise MetricError(f"bootstrap needs n >= 1 items and n_boot >= 1 resamples, got {n}, {n_boot}")
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def _cluster_rows(clusters: Sequence[object] | np.ndarray, n: int) -> list[np.ndarray]:
    """Row indices of each cluster, clusters in sorted label order (so two methods with the
    same clip ids draw the same clips whatever their row order)."""
    labels = np.asarray(clusters).reshape(-1)
    if labels.shape[0] != n:
        raise MetricError(f"clusters needs one label per row: {labels.shape[0]} labels for {n} rows")
    _, inverse = np.unique(labels, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    return np.split(order, np.cumsum(np.bincount(inverse))[:-1])


def cluster_bootstrap_indices(clusters: Sequence[object] | np.ndarray, n_boot: int, seed: int) -> list[np.ndarray]:
    """Row indices of ``n_boot`` clip-level (cluster) bootstrap resamples.

    Definition (the cluster bootstrap for hierarchical data, Davison & Hinkley 1997; Cameron, Gelbach
    & Miller 2008): the G clusters are the independent units; each resample draws G of them
    with replacement (:func:`bootstrap_indices` over the sorted labels, so the same seed
    draws the same clips for every method) and carries all rows of each drawn cluster.

    Args:
        clusters: a cluster label (clip id) per row, shape (N,).
        n_boot: resamples.
        seed: resampling seed.

    Returns:
        ``n_boot`` int arrays of row indices, with repeats (a clip drawn twice brings its
        rows twice); each has N rows when the clusters are of equal size.
    """
    labels = np.asarray(clusters).reshape(-1)
    rows = _cluster_rows(labels, labels.shape[0])
    draws = bootstrap_indices(len(rows), n_boot, seed)
    return [np.concatenate([rows[g] for g in draw]) for draw in draws]


def bootstrap_replicates(n: int, n_boot: int, seed: int, fn: Callable[[np.ndarray], T],
                         min_unique: int = 1, clusters: Sequence[object] | np.ndarray | None = None) -> list[T]:
    """``fn(idx)`` on every bootstrap resample ``idx`` of :func:`bootstrap_indices`.

    For statistics that are not a vectorisable function of per-item values: set-level
    metrics (FAD, IS, CSD, ...) or an objective recomputed on the resampled clips. For a
    statistic biased by the set size (FAD) prefer :func:`set_metric_ci`: a resample with
    repeated clips is a smaller set in disguise.

    Args:
        n: items.
        n_boot: resamples drawn.
        seed: resampling seed.
        fn: called with each resample's indices, an int array with repeats ((n,) without
            ``clusters``).
        min_unique: resamples with fewer distinct items (distinct clusters when ``clusters``
            is given) are skipped (not redrawn), e.g. 2 for a set metric undefined on one
            repeated clip.
        clusters: a clip id per item for the clip-level bootstrap
            (:func:`cluster_bootstrap_indices`); None resamples items.

    Returns:
        ``fn``'s results in resample order (at most ``n_boot``; fewer when skipped).
    """
    if clusters is None:
        resamples = list(bootstrap_indices(n, n_boot, seed))
        labels = np.arange(n)
    else:
        labels = np.asarray(clusters).reshape(-1)
        if labels.shape[0] != n:
            raise MetricError(f"clusters needs one label per item: {labels.shape[0]} labels for {n} items")
        resamples = cluster_bootstrap_indices(labels, n_boot, seed)
    out = []
    for idx in resamples:
        if min_unique > 1 and len(np.unique(labels[idx])) < min_unique:
            continue
        out.append(fn(idx))
    return out


def _bootstrap_stats(
    columns: tuple[np.ndarray, ...],
    stat: Callable[..., object],
    combine: Callable[..., np.ndarray],
    n_boot: int,
    seed: int,
    clusters: Sequence[object] | np.ndarray | None = None,
) -> np.ndarray:
    """Bootstrap replicates of ``stat(combine(*resampled columns))``, items or clusters resampled."""
    n = columns[0].shape[0]
    if clusters is None:
        idx = bootstrap_indices(n, n_boot, seed)
    else:
        rows = _cluster_rows(clusters, n)
        draws = bootstrap_indices(len(rows), n_boot, seed)
        if len({len(r) for r in rows}) == 1:  # equal cluster sizes: one rectangular (n_boot, n) index
            idx = np.stack(rows)[draws].reshape(n_boot, n)
        else:
            values = combine(*columns)
            if stat is np.mean:
                # a resample's row mean from per-cluster sums and how often each cluster was drawn
                g = len(rows)
                flat = (draws + g * np.arange(n_boot)[:, None]).ravel()
                counts = np.bincount(flat, minlength=n_boot * g).reshape(n_boot, g).astype(np.float64)
                sums = np.array([values[r].sum() for r in rows])
                sizes = np.array([len(r) for r in rows], dtype=np.float64)
                return (counts @ sums) / (counts @ sizes)
            return np.array([float(stat(values[np.concatenate([rows[g] for g in d])])) for d in draws])
    resampled = combine(*(col[idx] for col in columns))  # (n_boot, n)
    try:
        reps = np.asarray(stat(resampled, axis=1), dtype=np.float64)
        if reps.shape == (n_boot,):
            return reps
    except TypeError:
        pass  # a statistic without an ``axis`` argument: evaluate row by row
    return np.array([float(stat(row)) for row in resampled])


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    stat: Callable[..., object] = np.mean,
    clusters: Sequence[object] | np.ndarray | None = None,
) -> tuple[float, float, float]:
    """Percentile bootstrap confidence interval of a statistic of per-item values.

    Definition (Efron & Tibshirani 1993, percentile method): resample the N items
    with replacement ``n_boot`` times, compute ``stat`` on each resample, and take
    the ``alpha/2`` and ``1 - alpha/2`` quantiles of the replicates. The resampled
    units must be the independent ones: pass per-item metric values (e.g.
    :func:`onset_sync`'s per-clip ``f1``), not a pooled number, and with several seeds
    per clip pass ``clusters`` (the clip id of each row): the clips are resampled and
    all seeds of a drawn clip come along (the cluster bootstrap, see
    :func:`cluster_bootstrap_indices`); resampling the rows as if independent gives too
    narrow an interval when clips differ more than seeds.

    Args:
        values: per-item values, shape (N,), finite (drop undefined items first).
        n_boot: number of bootstrap resamples.
        alpha: 1 - confidence level (0.05 for a 95 % interval).
        seed: seed of the resampling, for reproducible tables.
        stat: statistic; called as ``stat(x, axis=1)`` if supported, else per row. With
            clusters of unequal sizes the statistic sees the rows of the drawn clusters
            (``np.mean``: the row mean, clips weighted by their rows; to weight clips
            equally pass per-clip means without ``clusters``).
        clusters: a cluster label (clip id) per value, shape (N,); None (default)
            resamples the values themselves.

    Returns:
        ``(point, lo, hi)``: ``stat`` on the original values and the interval.
    """
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    _check_boot_args(x, n_boot, alpha)
    reps = _bootstrap_stats((x,), stat, lambda a: a, n_boot, seed, clusters)
    lo, hi = np.quantile(reps, [alpha / 2, 1 - alpha / 2])
    return float(stat(x)), float(lo), float(hi)


def paired_bootstrap_ci(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    stat: Callable[..., object] = np.mean,
    clusters: Sequence[object] | np.ndarray | None = None,
) -> tuple[float, float, float]:
    """Paired percentile bootstrap interval of ``stat(a - b)`` over shared items.

    Definition: ``a[i]`` and ``b[i]`` are two methods' values on the same item i;
    items (pairs) are resampled together, which keeps the per-item correlation and
    gives a much tighter interval than two independent intervals. An interval that
    excludes 0 means the difference is significant at level ``alpha``. With several
    seeds per clip (row i = clip x seed in both methods) pass ``clusters``: the clips
    are resampled, every pair of a drawn clip comes along (see :func:`bootstrap_ci`).

    Args:
        a: per-item values of method A, shape (N,).
        b: per-item values of method B on the same items, shape (N,).
        n_boot: number of bootstrap resamples.
        alpha: 1 - confidence level.
        seed: seed of the resampling.
        stat: statistic of the differences (mean by default).
        clusters: the clip id of each pair, shape (N,); None (default) resamples pairs.

    Returns:
        ``(point, lo, hi)``: ``stat(a - b)`` and its interval.
    """
    xa = np.asarray(a, dtype=np.float64).reshape(-1)
    xb = np.asarray(b, dtype=np.float64).reshape(-1)
    if xa.shape != xb.shape:
        raise MetricError(f"paired values need equal lengths, got {xa.size} and {xb.size}")
    _check_boot_args(xa, n_boot, alpha)
    _check_boot_args(xb, n_boot, alpha)
    reps = _bootstrap_stats((xa, xb), stat, lambda u, v: u - v, n_boot, seed, clusters)
    lo, hi = np.quantile(reps, [alpha / 2, 1 - alpha / 2])
    return float(stat(xa - xb)), float(lo), float(hi)


def _check_boot_args(x: np.ndarray, n_boot: int, alpha: float) -> None:
    """Rejects empty or non-finite samples and out-of-range settings."""
    if x.size == 0:
        raise MetricError("bootstrap needs at least one value")
    if not np.all(np.isfinite(x)):
        raise MetricError("bootstrap values must be finite (drop undefined items first)")
    if n_boot < 1 or not 0 < alpha < 1:
        raise MetricError(f"need n_boot >= 1 and 0 < alpha < 1, got {n_boot}, {alpha}")


# ---------------------------------------------------------------------------
# Subsampling (m-out-of-n) intervals of set metrics
# ---------------------------------------------------------------------------


def subsample_indices(n: int, n_sub: int, m: int, seed: int) -> np.ndarray:
    """Indices of ``n_sub`` random subsets of ``m`` of ``n`` items, without replacement.

    Args:
        n: items (or clusters).
        n_sub: subsets.
        m: items per subset, 1 <= m <= n.
        seed: seed of ``numpy.random.default_rng``.

    Returns:
        int64 (n_sub, m): row ``s`` holds subset ``s``'s distinct indices (a random
        permutation's first ``m``, so a seed gives the same subsets whoever asks).
    """
    if n < 1 or n_sub < 1 or not 1 <= m <= n:
        raise MetricError(f"subsampling needs n >= 1, n_sub >= 1 and 1 <= m <= n, got {n}, {n_sub}, {m}")
    return np.argsort(np.random.default_rng(seed).random((n_sub, n)), axis=1)[:, :m].astype(np.int64)


def subsample_interval(point: float, replicates: Sequence[float] | np.ndarray, m: int, n: int,
                       alpha: float = 0.05) -> tuple[float, float]:
    """A subsampling interval around ``point`` from replicates on subsets of ``m`` of ``n`` units.

    Definition (subsampling, Politis & Romano 1994; Politis, Romano & Wolf 1999; scaled as
    the delete-d jackknife, Shao & Wu 1989): the spread of a statistic over subsets of
    ``m`` of the ``n`` units drawn without replacement, times ``sqrt(m / (n - m))``,
    estimates its spread at ``n`` (exactly for a mean: the finite-population correction;
    for any root-n-consistent statistic asymptotically; with ``m = n / 2`` the factor is
    1). The interval is ``point + sqrt(m / (n - m)) * [q(alpha/2), q(1 - alpha/2)]`` of the
    replicates' deviations from their median.

    Why not the percentile bootstrap of a set metric such as FAD: FAD's estimate is biased
    upward by a term that grows as the set shrinks (the covariance estimates'
    noise; at 160 vectors of 512-d it is most of the value). A bootstrap resample holds
    only ~63 % distinct items, so its FAD carries a larger bias than the point's and the
    whole replicate distribution sits above the point: the percentile interval can miss its
    own point (the bench's random retrieval: 0.000 outside [0.003, 0.020]). BCa does not
    rescue it: its bias correction ``z0 = Phi^-1(share of replicates below the point)`` is
    infinite when no replicate lies below. Subsets without replacement carry a bias too
    (at size ``m``), so their *location* is not used; only their spread around their own
    median is, which is why the interval contains its point by construction. What it
    covers is the estimator at this ``n``, the number a table reports, on another draw of
    the clips, not the population value: FAD's bias is handled by reporting its floor,
    FAD-infinity or KID beside it (:mod:`soundtrack.metrics.distribution`). At a true
    distance of 0 FAD fluctuates at rate 1/n rather than 1/sqrt(n), so the root-n scaling
    is conservative (wider) there.

    Args:
        point: the statistic on all ``n`` units.
        replicates: the statistic on each subset, finite.
        m: units per subset (1 <= m < n).
        n: units in the full set.
        alpha: 1 - confidence level.

    Returns:
        ``(lo, hi)`` with ``lo <= point <= hi``.
    """
    reps = np.asarray(replicates, dtype=np.float64).reshape(-1)
    if reps.size == 0 or not np.all(np.isfinite(reps)):
        raise MetricError("subsampling needs at least one finite replicate (drop undefined ones first)")
    if not 1 <= m < n or not 0 < alpha < 1:
        raise MetricError(f"need 1 <= m < n and 0 < alpha < 1, got m={m}, n={n}, alpha={alpha}")
    dev = reps - np.median(reps)
    q_lo, q_hi = np.quantile(dev, [alpha / 2, 1 - alpha / 2])
    scale = np.sqrt(m / (n - m))
    return float(point + scale * min(q_lo, 0.0)), float(point + scale * max(q_hi, 0.0))


def _resample_units(n: int, n_resamples: int, seed: int, fraction: float, resample: str,
                    clusters: Sequence[object] | np.ndarray | None) -> tuple[list[np.ndarray], int, int]:
    """Row indices of each resample, the units drawn per resample and the units in all."""
    rows = [np.array([i]) for i in range(n)] if clusters is None else _cluster_rows(clusters, n)
    g = len(rows)
    if resample == "subsample":
        m = int(round(fraction * g))
        if not 1 <= m < g:
            raise MetricError(f"subsampling {fraction} of {g} units leaves m={m}; need 1 <= m < {g} "
                              "(more clips, or another fraction)")
        draws = subsample_indices(g, n_resamples, m, seed)
    elif resample == "bootstrap":
        m = g
        draws = bootstrap_indices(g, n_resamples, seed)
    else:
        raise MetricError(f"resample must be 'subsample' or 'bootstrap', got {resample!r}")
    if clusters is None:
        return list(draws), m, g
    return [np.concatenate([rows[u] for u in d]) for d in draws], m, g


def _set_interval(point: float, reps: list[float], m: int, g: int, alpha: float, resample: str) -> tuple[float, float]:
    r = np.asarray(reps, dtype=np.float64)
    r = r[np.isfinite(r)]
    if r.size == 0:
        raise MetricError("the set metric is undefined (not finite) on every resample")
    if resample == "bootstrap":
        lo, hi = np.quantile(r, [alpha / 2, 1 - alpha / 2])
        return float(lo), float(hi)
    return subsample_interval(point, r, m, g, alpha)


def set_metric_ci(
    fn: Callable[[np.ndarray], float],
    n: int,
    n_resamples: int = 200,
    alpha: float = 0.05,
    seed: int = 0,
    fraction: float = 0.5,
    clusters: Sequence[object] | np.ndarray | None = None,
    resample: Literal["subsample", "bootstrap"] = "subsample",
) -> tuple[float, float, float]:
    """Interval of a set metric (FAD, KID, IS, CSD, ...) recomputed on subsets of the items.

    Definition: ``fn(np.arange(n))`` is the point; ``fn`` is recomputed on ``n_resamples``
    subsets of ``round(fraction * n)`` items drawn without replacement (clusters, with all
    their rows, when ``clusters`` is given) and the interval is
    :func:`subsample_interval` of those replicates, which contains the point and is not
    displaced by a set metric's size-dependent bias (why the percentile bootstrap fails
    for FAD: see there). ``resample="bootstrap"`` gives the plain percentile bootstrap
    over the same units instead (today's bench intervals), for comparison.

    Args:
        fn: the set metric of the items at the given row indices (an int array).
        n: items (rows).
        n_resamples: subsets (or bootstrap resamples).
        alpha: 1 - confidence level.
        seed: resampling seed (the same seed draws the same subsets whoever asks).
        fraction: share of the units per subset; 0.5 (half-sampling) makes the
            delete-d scaling factor 1.
        clusters: a clip id per row (windows or seeds of one clip); the clips are the
            units drawn. None: the rows are.
        resample: ``"subsample"`` (default) or ``"bootstrap"``.

    Returns:
        ``(point, lo, hi)``. Resamples on which ``fn`` is not finite are left out.
    """
    if not 0 < alpha < 1:
        raise MetricError(f"need 0 < alpha < 1, got {alpha}")
    point = float(fn(np.arange(n)))
    resamples, m, g = _resample_units(n, n_resamples, seed, fraction, resample, clusters)
    lo, hi = _set_interval(point, [float(fn(idx)) for idx in resamples], m, g, alpha, resample)
    return point, lo, hi


def paired_set_metric_ci(
    fn_a: Callable[[np.ndarray], float],
    fn_b: Callable[[np.ndarray], float],
    n: int,
    n_resamples: int = 200,
    alpha: float = 0.05,
    seed: int = 0,
    fraction: float = 0.5,
    clusters: Sequence[object] | np.ndarray | None = None,
    resample: Literal["subsample", "bootstrap"] = "subsample",
) -> tuple[float, float, float]:
    """Interval of the difference of two methods' set metric from shared resamples.

    Definition: the two methods scored the same ``n`` items (clips, in the same order);
    each replicate is ``fn_a(idx) - fn_b(idx)`` on the same subset ``idx`` (shared
    indices: the same resampled clips in both methods), so the clip-to-clip variation
    both methods share cancels, as in :func:`paired_bootstrap_ci`. Two separate
    intervals cannot be differenced: they ignore that correlation, and each set metric's
    replicates depend on which clips were drawn. Interval: :func:`subsample_interval` of
    the differences (``resample="bootstrap"``: their percentile interval). An interval
    excluding 0 means the difference is significant at level ``alpha``.

    Args:
        fn_a: method A's set metric of the items at the given row indices.
        fn_b: method B's set metric of the same items.
        n: items (rows), shared by both methods.
        n_resamples: subsets (or bootstrap resamples).
        alpha: 1 - confidence level.
        seed: resampling seed.
        fraction: share of the units per subset.
        clusters: a clip id per row; the clips are the units drawn.
        resample: ``"subsample"`` (default) or ``"bootstrap"``.

    Returns:
        ``(point, lo, hi)``: ``fn_a - fn_b`` on all items and its interval.
    """
    return set_metric_ci(lambda idx: float(fn_a(idx)) - float(fn_b(idx)), n, n_resamples=n_resamples,
                         alpha=alpha, seed=seed, fraction=fraction, clusters=clusters, resample=resample)
