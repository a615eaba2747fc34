"""Bootstrap confidence intervals of per-item metric values (percentile and paired).

One resampling primitive serves every bootstrap of the platform: :func:`bootstrap_indices`
draws the resamples (``numpy.random.default_rng(seed).integers(0, n, (n_boot, n))``, so
a seed gives the same resampled item sets whoever asks), :func:`bootstrap_replicates`
evaluates any function of the item indices on each of them (set metrics, an objective
recomputed on the resampled clips), and :func:`bootstrap_ci` / :func:`paired_bootstrap_ci`
are the vectorised per-item statistics on top.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np

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
        raise ValueError(f"bootstrap needs n >= 1 items and n_boot >= 1 resamples, got {n}, {n_boot}")
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def bootstrap_replicates(n: int, n_boot: int, seed: int, fn: Callable[[np.ndarray], T],
                         min_unique: int = 1) -> list[T]:
    """``fn(idx)`` on every bootstrap resample ``idx`` of :func:`bootstrap_indices`.

    For statistics that are not a vectorisable function of per-item values: set-level
    metrics (FAD, IS, CSD, ...) or an objective recomputed on the resampled clips.

    Args:
        n: items.
        n_boot: resamples drawn.
        seed: resampling seed.
        fn: called with each resample's indices, an int array (n,) with repeats.
        min_unique: resamples with fewer distinct items are skipped (not redrawn), e.g.
            2 for a set metric undefined on one repeated clip.

    Returns:
        ``fn``'s results in resample order (at most ``n_boot``; fewer when skipped).
    """
    out = []
    for idx in bootstrap_indices(n, n_boot, seed):
        if min_unique > 1 and len(np.unique(idx)) < min_unique:
            continue
        out.append(fn(idx))
    return out


def _bootstrap_stats(
    columns: tuple[np.ndarray, ...],
    stat: Callable[..., object],
    combine: Callable[..., np.ndarray],
    n_boot: int,
    seed: int,
) -> np.ndarray:
    """Bootstrap replicates of ``stat(combine(*resampled columns))``."""
    idx = bootstrap_indices(columns[0].shape[0], n_boot, seed)
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
) -> tuple[float, float, float]:
    """Percentile bootstrap confidence interval of a statistic of per-item values.

    Definition (Efron & Tibshirani 1993, percentile method): resample the N items
    with replacement ``n_boot`` times, compute ``stat`` on each resample, and take
    the ``alpha/2`` and ``1 - alpha/2`` quantiles of the replicates. The items are
    the independent units (clips, or clip x seed), so pass per-item metric values
    (e.g. :func:`onset_sync`'s per-clip ``f1``), not a pooled number.

    Args:
        values: per-item values, shape (N,), finite (drop undefined items first).
        n_boot: number of bootstrap resamples.
        alpha: 1 - confidence level (0.05 for a 95 % interval).
        seed: seed of the resampling, for reproducible tables.
        stat: statistic; called as ``stat(x, axis=1)`` if supported, else per row.

    Returns:
        ``(point, lo, hi)``: ``stat`` on the original values and the interval.
    """
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    _check_boot_args(x, n_boot, alpha)
    reps = _bootstrap_stats((x,), stat, lambda a: a, n_boot, seed)
    lo, hi = np.quantile(reps, [alpha / 2, 1 - alpha / 2])
    return float(stat(x)), float(lo), float(hi)


def paired_bootstrap_ci(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    n_boot: int = 1000,
    alpha: float = 0.05,
    seed: int = 0,
    stat: Callable[..., object] = np.mean,
) -> tuple[float, float, float]:
    """Paired percentile bootstrap interval of ``stat(a - b)`` over shared items.

    Definition: ``a[i]`` and ``b[i]`` are two methods' values on the same item i;
    items (pairs) are resampled together, which keeps the per-item correlation and
    gives a much tighter interval than two independent intervals. An interval that
    excludes 0 means the difference is significant at level ``alpha``.

    Args:
        a: per-item values of method A, shape (N,).
        b: per-item values of method B on the same items, shape (N,).
        n_boot: number of bootstrap resamples.
        alpha: 1 - confidence level.
        seed: seed of the resampling.
        stat: statistic of the differences (mean by default).

    Returns:
        ``(point, lo, hi)``: ``stat(a - b)`` and its interval.
    """
    xa = np.asarray(a, dtype=np.float64).reshape(-1)
    xb = np.asarray(b, dtype=np.float64).reshape(-1)
    if xa.shape != xb.shape:
        raise ValueError(f"paired values need equal lengths, got {xa.size} and {xb.size}")
    _check_boot_args(xa, n_boot, alpha)
    _check_boot_args(xb, n_boot, alpha)
    reps = _bootstrap_stats((xa, xb), stat, lambda u, v: u - v, n_boot, seed)
    lo, hi = np.quantile(reps, [alpha / 2, 1 - alpha / 2])
    return float(stat(xa - xb)), float(lo), float(hi)


def _check_boot_args(x: np.ndarray, n_boot: int, alpha: float) -> None:
    """Rejects empty or non-finite samples and out-of-range settings."""
    if x.size == 0:
        raise ValueError("bootstrap needs at least one value")
    if not np.all(np.isfinite(x)):
        raise ValueError("bootstrap values must be finite (drop undefined items first)")
    if n_boot < 1 or not 0 < alpha < 1:
        raise ValueError(f"need n_boot >= 1 and 0 < alpha < 1, got {n_boot}, {alpha}")
