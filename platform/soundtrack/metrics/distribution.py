"""Distribution metrics over encoder / classifier outputs: FAD, FD, KID, KL, IS, originality.

The functions take the arrays some encoder produced (VGGish, PANNs, CLAP, the platform's
own encoders), so the encoder is pluggable; name it with the number.

FAD done right. FAD's estimate from N vectors is biased upward by the noise of the two
covariance estimates, and the bias falls slowly with N: with fewer vectors than
dimensions (the bench: 160 windows of our 512-d encoder) two samples of one distribution
still score most of the total variance. A bare FAD is therefore not comparable across
set sizes or encoders; report beside it:

* its floor, :func:`fad_floor`: FAD between two disjoint halves of the reference set (and,
  given the generated set, the generated set's FAD at the same size, so the two numbers
  are comparable);
* :func:`kid` (Binkowski et al. 2018), unbiased at any N, with the subset size N;
* :func:`fad_infinity` (Chong & Forsyth 2020), FAD extrapolated to infinitely many
  vectors; valid only where FAD is linear in 1/N, i.e. with many more vectors than
  dimensions (it returns the check);
* an interval that contains its point, :func:`distance_ci` (subsampling; why not the
  percentile bootstrap: :func:`soundtrack.metrics.statistics.subsample_interval`).

Every row must be an independent draw for these estimators; windows of one clip are
not, so pass ``groups`` (the clip of each row) where a function takes it: halves and
subsets are then drawn by clip, and KID leaves out the pairs of rows of one clip.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
import scipy.linalg

from soundtrack.errors import MetricError
from soundtrack.metrics.statistics import _cluster_rows, subsample_indices, subsample_interval

log = logging.getLogger(__name__)

#: Inception score with ``splits="auto"``: at most this many chunks (the reference
#: implementation's 10) ...
IS_MAX_SPLITS = 10
#: ... and at least this many clips per chunk (a chunk's marginal p(y) is an average of
#: its clips' predictions; with a handful of clips it is noisy and IS drops).
IS_MIN_SPLIT = 50

# ---------------------------------------------------------------------------
# Distribution metrics: Frechet distance (FAD, FD), KL, IS
# ---------------------------------------------------------------------------


def frechet_distance(
    mu1: np.ndarray,
    sigma1: np.ndarray,
    mu2: np.ndarray,
    sigma2: np.ndarray,
    eps: float = 1e-6,
    method: str = "sqrtm",
) -> float:
    """Frechet distance between two Gaussians N(mu1, sigma1) and N(mu2, sigma2).

    Definition (Dowson & Landau 1982; used by FID, Heusel et al. 2017, and FAD,
    Kilgour et al. 2019)::

        d^2 = ||mu1 - mu2||^2 + Tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2))

    The matrix square root is ``scipy.linalg.sqrtm``. When it is not finite (a
    singular product, e.g. fewer samples than dimensions), ``eps`` is added to both
    diagonals and the root recomputed, the usual fallback. Round-off can leave a
    small imaginary part: it is dropped when its largest diagonal entry is below
    1e-3 (the customary tolerance), otherwise a MetricError (a ValueError) is raised
    because the result would be meaningless. A tiny negative total from round-off is clipped to
    0 (the distance is a sum of squares).

    ``method="eigh"`` computes the same trace without a general matrix square
    root: ``sigma1 sigma2`` is similar to the symmetric PSD matrix
    ``S = sigma1^(1/2) sigma2 sigma1^(1/2)``, so ``Tr((sigma1 sigma2)^(1/2))`` is the
    sum of the square roots of ``S``'s eigenvalues (negative round-off clipped to
    0). Two symmetric eigendecompositions are faster than ``sqrtm`` at PANNs'
    2048 dimensions (roughly 2x on our shared 2-core machines) and never produce
    an imaginary part; the tests check both methods agree.

    Args:
        mu1: mean of the first distribution, shape (D,).
        sigma1: covariance of the first distribution, shape (D, D).
        mu2: mean of the second distribution, shape (D,).
        sigma2: covariance of the second distribution, shape (D, D).
        eps: diagonal offset of the fallback (``sqrtm`` method only).
        method: ``"sqrtm"`` (scipy.linalg.sqrtm, the reference code's route) or
            ``"eigh"`` (symmetric eigendecompositions, for large D).

    Returns:
        The squared Frechet distance (the quantity FID/FAD report), >= 0.
    """
    mu1 = np.atleast_1d(np.asarray(mu1, dtype=np.float64))
    mu2 = np.atleast_1d(np.asarray(mu2, dtype=np.float64))
    sigma1 = np.atleast_2d(np.asarray(sigma1, dtype=np.float64))
    sigma2 = np.atleast_2d(np.asarray(sigma2, dtype=np.float64))
    d = mu1.shape[0]
    if mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise MetricError(
            f"shape mismatch: mu1 {mu1.shape}, mu2 {mu2.shape}, "
            f"sigma1 {sigma1.shape}, sigma2 {sigma2.shape}"
        )
    diff = mu1 - mu2
    if method == "eigh":
        # sigma1^(1/2) from the eigendecomposition of the symmetrised sigma1.
        w1, v1 = np.linalg.eigh((sigma1 + sigma1.T) / 2)
        root1 = (v1 * np.sqrt(np.clip(w1, 0.0, None))) @ v1.T
        inner = root1 @ sigma2 @ root1
        w = np.linalg.eigvalsh((inner + inner.T) / 2)
        tr_covmean = float(np.sqrt(np.clip(w, 0.0, None)).sum())
        value = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean
        return float(max(value, 0.0))
    if method != "sqrtm":
        raise MetricError(f"method must be 'sqrtm' or 'eigh', got {method!r}")

    def _sqrt_product(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        with warnings.catch_warnings():
            # sqrtm warns on (near-)singular input; we detect that case ourselves.
            warnings.simplefilter("ignore")
            return scipy.linalg.sqrtm(a @ b)

    covmean = _sqrt_product(sigma1, sigma2)
    if not np.all(np.isfinite(covmean)):
        offset = np.eye(d) * eps
        covmean = _sqrt_product(sigma1 + offset, sigma2 + offset)
    if np.iscomplexobj(covmean):
        max_imag = float(np.max(np.abs(np.diagonal(covmean).imag)))
        if max_imag > 1e-3:
            raise MetricError(
                f"sqrtm(sigma1 @ sigma2) has an imaginary component of {max_imag:.3g}; "
                "the covariances are too ill-conditioned (use more samples than dimensions)"
            )
        covmean = covmean.real
    value = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean)
    return float(max(value, 0.0))


def embedding_stats(emb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of an embedding set.

    Args:
        emb: embeddings, shape (N, D) with N >= 2 (one row per clip or frame).

    Returns:
        ``(mu, sigma)``: mean, shape (D,), and unbiased covariance (``ddof=1``, as
        numpy's ``np.cov`` and the FID/FAD reference code), shape (D, D).
    """
    x = np.asarray(emb, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise MetricError(f"expected embeddings of shape (N >= 2, D), got {x.shape}")
    return x.mean(axis=0), np.atleast_2d(np.cov(x, rowvar=False))


def fad(emb_a: np.ndarray, emb_b: np.ndarray, eps: float = 1e-6, method: str = "sqrtm") -> float:
    """Frechet Audio Distance (Kilgour et al. 2019) between two embedding sets.

    FAD is :func:`frechet_distance` between Gaussians fitted to the embeddings of
    the reference and the generated audio. The papers (HPM, MuVi via the AudioLDM
    toolkit) use VGGish embeddings (128-d, one per 0.96 s frame); the function takes
    any encoder's output, so name the encoder with the number.

    Args:
        emb_a: reference-set embeddings, shape (N_a, D).
        emb_b: generated-set embeddings, shape (N_b, D).
        eps: diagonal offset of the singular-covariance fallback.
        method: matrix-root method, see :func:`frechet_distance`, or ``"samples"``: the
            same distance computed in sample space, for sets smaller than the embedding
            width (see below).

    Returns:
        FAD (>= 0; 0 for identical sets).

    ``method="samples"``: with centred embeddings ``X_a`` (N_a, D), ``X_b`` (N_b, D) and
    sample covariances ``S = X^T X / (N - 1)``, the nonzero eigenvalues of ``S_a S_b``
    are those of ``A A^T`` with ``A = X_a X_b^T / sqrt((N_a - 1)(N_b - 1))``, so
    ``tr sqrt(S_a S_b)`` is the sum of the singular values of ``A`` (an N_a x N_b
    matrix). Exact, with no regularisation, and O(N^2 D) instead of O(D^3): at 160
    samples of 512-d it is ~100x faster than ``sqrtm``, which the bench's bootstrap
    intervals need.
    """
    if method == "samples":
        a = np.asarray(emb_a, dtype=np.float64)
        b = np.asarray(emb_b, dtype=np.float64)
        if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or len(a) < 2 or len(b) < 2:
            raise MetricError(f"fad needs two (N >= 2, D) arrays of equal D, got {a.shape} and {b.shape}")
        xa, xb = a - a.mean(0), b - b.mean(0)
        na, nb = len(a) - 1, len(b) - 1
        cross = np.linalg.svd(xa @ xb.T, compute_uv=False).sum() / np.sqrt(na * nb)
        val = float(np.sum((a.mean(0) - b.mean(0)) ** 2) + np.sum(xa * xa) / na + np.sum(xb * xb) / nb - 2 * cross)
        return max(val, 0.0)
    mu_a, sig_a = embedding_stats(emb_a)
    mu_b, sig_b = embedding_stats(emb_b)
    return frechet_distance(mu_a, sig_a, mu_b, sig_b, eps=eps, method=method)


def fd(emb_a: np.ndarray, emb_b: np.ndarray, eps: float = 1e-6, method: str = "sqrtm") -> float:
    """Frechet Distance over PANNs embeddings (MuVi Table 2, AudioLDM toolkit).

    Same formula as :func:`fad`; the papers call it FD when the embeddings come
    from the PANNs CNN14 classifier (2048-d) instead of VGGish.

    Args:
        emb_a: reference-set embeddings, shape (N_a, D).
        emb_b: generated-set embeddings, shape (N_b, D).
        eps: diagonal offset of the singular-covariance fallback.
        method: matrix-root method; ``"eigh"`` is much faster at 2048 dimensions.

    Returns:
        FD (>= 0; 0 for identical sets).
    """
    return fad(emb_a, emb_b, eps=eps, method=method)


# ---------------------------------------------------------------------------
# FAD done right: its floor, FAD-infinity, KID, an interval that contains its point
# ---------------------------------------------------------------------------


def _as_embeddings(x: np.ndarray, name: str) -> np.ndarray:
    """Validates an embedding set: finite, shape (N >= 2, D)."""
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] < 2 or not np.all(np.isfinite(a)):
        raise MetricError(f"{name} must be finite embeddings of shape (N >= 2, D), got {a.shape}")
    return a


def _embedding_pair(emb_a: np.ndarray, emb_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a, b = _as_embeddings(emb_a, "emb_a"), _as_embeddings(emb_b, "emb_b")
    if a.shape[1] != b.shape[1]:
        raise MetricError(f"the two embedding sets need the same width, got {a.shape[1]} and {b.shape[1]}")
    return a, b


def _units(groups: Sequence[object] | np.ndarray | None, n: int) -> list[np.ndarray]:
    """Row indices of each independent unit: every row alone, or every group's rows."""
    return [np.array([i]) for i in range(n)] if groups is None else _cluster_rows(groups, n)


def _rows(units: list[np.ndarray], chosen: np.ndarray) -> np.ndarray:
    return np.concatenate([units[u] for u in chosen])


def _fad_method(method: str, n: int, d: int) -> str:
    """``"auto"``: the sample-space root below D vectors (exact, O(N^2 D)), eigh above (O(D^3))."""
    if method != "auto":
        return method
    return "samples" if n < d else "eigh"


def _std(values: np.ndarray) -> float:
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def fad_floor(
    ref: np.ndarray,
    gen: np.ndarray | None = None,
    n_splits: int = 10,
    seed: int = 0,
    method: str = "auto",
    groups: Sequence[object] | np.ndarray | None = None,
    paired: bool = False,
    gen_groups: Sequence[object] | np.ndarray | None = None,
) -> dict[str, object]:
    """FAD's real-vs-real floor: FAD between two disjoint halves of the reference set.

    Definition (ours, after the real-vs-real baseline of FID tables): the reference
    set's units (rows, or clips with all their rows when ``groups`` is given) are
    split at random into two disjoint halves A and B of ``G // 2`` units, ``n_splits``
    times; the floor is the mean of ``fad(ref[A], ref[B])``. It is what two samples of
    one distribution score at this size: FAD's finite-sample bias plus nothing, so a
    method's FAD means something only against it. A half is half the size, and FAD's
    bias grows as the size falls, so the floor is compared with the generated set's FAD
    *at the same size*: given ``gen``, each split also scores ``fad(ref[A], gen[C])``
    with C the generated rows of the clips in B when ``paired`` (``gen[i]`` generated
    for ``ref[i]``, so C and A share no clip), otherwise as many of ``gen``'s units as a
    half has, drawn at random; ``excess`` is the mean of the per-split differences.

    Windows of one clip are alike; splitting them between A and B would make the halves
    closer than two sets of clips are, so pass ``groups`` (the clip of each row) for
    windowed embeddings.

    Args:
        ref: reference embeddings, shape (N, D).
        gen: generated embeddings, shape (N_g, D), or None for the floor alone.
        n_splits: random splits averaged.
        seed: seed of the splits (and of the generated subsets).
        method: FAD's matrix-root method (:func:`fad`), or ``"auto"``: ``"samples"``
            with fewer rows than dimensions, ``"eigh"`` otherwise.
        groups: the clip of each reference row, shape (N,), or None (rows independent).
        paired: ``gen`` is row-aligned with ``ref`` (same shape and clips): take its rows
            of the clips in B.
        gen_groups: the clip of each generated row when not paired.

    Returns:
        ``{"floor", "floor_std", "n" (units per half), "rows" (mean rows per half),
        "n_splits", "values"}`` and, with ``gen``, ``"fad"``, ``"fad_std"``, ``"excess"``
        (mean of fad - floor over splits), ``"fad_values"``.
    """
    r = _as_embeddings(ref, "ref")
    units = _units(groups, len(r))
    h = len(units) // 2
    if h < 1 or n_splits < 1:
        raise MetricError(f"the floor needs >= 2 reference units and n_splits >= 1, got {len(units)}, {n_splits}")
    splits = subsample_indices(len(units), n_splits, 2 * h, seed)
    method = _fad_method(method, len(r) // 2, r.shape[1])
    g = None
    if gen is not None:
        g = _as_embeddings(gen, "gen")
        if g.shape[1] != r.shape[1]:
            raise MetricError(f"ref and gen need the same width, got {r.shape[1]} and {g.shape[1]}")
        if paired and g.shape != r.shape:
            raise MetricError(f"paired gen must have ref's shape {r.shape}, got {g.shape}")
        if not paired:
            gen_units = _units(gen_groups, len(g))
            if len(gen_units) < h:
                raise MetricError(f"gen has {len(gen_units)} units, fewer than a reference half's {h}")
            gen_draws = subsample_indices(len(gen_units), n_splits, h, seed + 1)
    floors, fads, rows = [], [], []
    for s, split in enumerate(splits):
        rows_a, rows_b = _rows(units, split[:h]), _rows(units, split[h:])
        rows.append(len(rows_a))
        floors.append(fad(r[rows_a], r[rows_b], method=method))
        if g is not None:
            rows_g = rows_b if paired else _rows(gen_units, gen_draws[s])
            fads.append(fad(r[rows_a], g[rows_g], method=method))
    fl = np.asarray(floors)
    out: dict[str, object] = {"floor": float(fl.mean()), "floor_std": _std(fl), "n": h,
                              "rows": float(np.mean(rows)), "n_splits": n_splits, "values": fl.tolist()}
    if g is not None:
        fa = np.asarray(fads)
        out.update({"fad": float(fa.mean()), "fad_std": _std(fa), "excess": float((fa - fl).mean()),
                    "fad_values": fa.tolist()})
    return out


def fad_infinity(
    emb_a: np.ndarray,
    emb_b: np.ndarray,
    sizes: Sequence[int] | None = None,
    n_draws: int = 10,
    seed: int = 0,
    method: str = "auto",
) -> dict[str, object]:
    """FAD-infinity (Chong & Forsyth 2020): FAD extrapolated to infinitely many vectors.

    Definition (Chong & Forsyth, *Effectively Unbiased FID and Inception Score and
    where to find them*, CVPR 2020): to first order FAD's bias is linear in
    1/N, ``FAD_N = FAD_inf + k / N``; FAD is computed at several sizes N (here
    ``n_draws`` random subsets of N rows of *each* set, without replacement), a line is
    fitted by least squares to (1/N, FAD_N) and its intercept at 1/N = 0 is FAD-inf.
    The paper subsamples the generated set against fixed reference statistics from a
    large set; our sets are both small, so both are subsampled and the intercept
    removes both sets' 1/N terms.

    The expansion needs N well above the embedding width D. With fewer vectors than
    dimensions (160 windows of 512-d) FAD falls with N much more slowly than 1/N and
    the line extrapolates to a large positive value for two samples of one distribution:
    there, report :func:`kid` instead. A warning is logged when the smallest size is not
    above D; ``r2`` (of the line through the per-size means) shows the fit.

    Args:
        emb_a: reference embeddings, shape (N_a, D); rows independent.
        emb_b: generated embeddings, shape (N_b, D).
        sizes: subset sizes N (>= 2, at most min(N_a, N_b), at least two distinct);
            default 5 sizes evenly spaced from a quarter of min(N_a, N_b) to all of it.
        n_draws: random subsets per size.
        seed: subset seed.
        method: FAD's matrix-root method (:func:`fad`), or ``"auto"`` (see :func:`fad_floor`).

    Returns:
        ``{"fad_inf", "slope" (k), "stderr" (the intercept's least-squares standard
        error; the draws overlap, so a rough guide), "r2", "sizes", "fad_at_size" (mean
        per size), "n_a", "n_b", "dim", "n_over_dim" (smallest size / D)}``.
    """
    a, b = _embedding_pair(emb_a, emb_b)
    n, d = min(len(a), len(b)), a.shape[1]
    if sizes is None:
        sizes = np.linspace(max(2, n // 4), n, 5).round().astype(int)
    grid = np.array(sorted({int(s) for s in sizes}))
    if len(grid) < 2 or grid[0] < 2 or grid[-1] > n or n_draws < 1:
        raise MetricError(f"FAD-infinity needs >= 2 distinct sizes in [2, {n}] and n_draws >= 1, "
                          f"got {grid.tolist()}, {n_draws}")
    if grid[0] <= d:
        log.warning("FAD-infinity from %d..%d vectors of %d dimensions: FAD is not linear in 1/N with fewer "
                    "vectors than dimensions, so its extrapolation is not meaningful here (use kid)",
                    grid[0], grid[-1], d)
    method = _fad_method(method, int(grid[0]), d)
    rng = np.random.default_rng(seed)
    x, y = [], []
    for size in grid:
        for _ in range(n_draws):
            ia, ib = rng.choice(len(a), size, replace=False), rng.choice(len(b), size, replace=False)
            x.append(1.0 / size)
            y.append(fad(a[ia], b[ib], method=method))
    design = np.column_stack([np.ones(len(x)), x])
    yv = np.asarray(y)
    coef = np.linalg.lstsq(design, yv, rcond=None)[0]
    resid = yv - design @ coef
    dof = max(len(yv) - 2, 1)
    stderr = math.sqrt(float(resid @ resid) / dof * np.linalg.inv(design.T @ design)[0, 0])
    means = yv.reshape(len(grid), n_draws).mean(axis=1)
    fitted = coef[0] + coef[1] / grid
    ss_tot = float(((means - means.mean()) ** 2).sum())
    r2 = 1.0 - float(((means - fitted) ** 2).sum()) / ss_tot if ss_tot > 0 else 1.0
    return {"fad_inf": float(coef[0]), "slope": float(coef[1]), "stderr": stderr, "r2": r2,
            "sizes": grid.tolist(), "fad_at_size": means.tolist(), "n_a": len(a), "n_b": len(b), "dim": d,
            "n_over_dim": float(grid[0] / d)}


def _poly_mmd2_unbiased(x: np.ndarray, y: np.ndarray, gx: np.ndarray | None = None,
                        gy: np.ndarray | None = None) -> float:
    """Unbiased MMD^2 under k(u, v) = (u.v / d + 1)^3, pairs of one clip (equal codes) left out.

    Without codes each row is its own clip: the usual U-statistic (the diagonals out).
    """
    d = x.shape[1]
    kxx = (x @ x.T / d + 1.0) ** 3
    kyy = (y @ y.T / d + 1.0) ** 3
    kxy = (x @ y.T / d + 1.0) ** 3
    if gx is None and gy is None:
        m, n = len(x), len(y)
        return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
                     - 2.0 * kxy.mean())
    # a set without codes: each row its own clip, coded below 0 so it shares no clip with the other set
    gx = -1 - np.arange(len(x)) if gx is None else gx
    gy = -1 - np.arange(len(y)) if gy is None else gy
    masks = (gx[:, None] != gx[None, :], gy[:, None] != gy[None, :], gx[:, None] != gy[None, :])
    if not all(mk.any() for mk in masks):
        raise MetricError("KID needs rows of at least two clips in each set")
    return float(kxx[masks[0]].mean() + kyy[masks[1]].mean() - 2.0 * kxy[masks[2]].mean())


def _group_codes(groups_a: Sequence[object] | np.ndarray | None, groups_b: Sequence[object] | np.ndarray | None,
                 n_a: int, n_b: int) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Integer clip codes, one label space for both sets (the same clip id: the same code)."""
    if groups_a is None and groups_b is None:
        return None, None
    la = None if groups_a is None else np.asarray(groups_a).reshape(-1)
    lb = None if groups_b is None else np.asarray(groups_b).reshape(-1)
    for lab, n, name in ((la, n_a, "groups_a"), (lb, n_b, "groups_b")):
        if lab is not None and lab.shape[0] != n:
            raise MetricError(f"{name} needs one label per row: {lab.shape[0]} labels for {n} rows")
    if la is not None and lb is not None:
        _, codes = np.unique(np.concatenate([la.astype(object), lb.astype(object)]).astype(str), return_inverse=True)
        return codes[:n_a], codes[n_a:]
    if la is not None:
        return np.unique(la, return_inverse=True)[1], None
    return None, np.unique(lb, return_inverse=True)[1]


def kid(
    emb_a: np.ndarray,
    emb_b: np.ndarray,
    n_subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
    groups_a: Sequence[object] | np.ndarray | None = None,
    groups_b: Sequence[object] | np.ndarray | None = None,
) -> dict[str, float | int]:
    """Kernel Inception Distance (Binkowski et al. 2018), on any encoder's embeddings.

    Definition (Binkowski, Sutherland, Arbel & Gretton, *Demystifying MMD GANs*, ICLR
    2018): the squared maximum mean discrepancy between the two embedding
    distributions under the cubic polynomial kernel ``k(x, y) = (x.y / d + 1)^3`` (d the
    embedding width), estimated by the unbiased U-statistic ``MMD^2_u`` (Gretton et al.
    2012, *A Kernel Two-Sample Test*)::

        MMD^2_u = sum_{i != j} k(x_i, x_j) / (m (m - 1)) + sum_{i != j} k(y_i, y_j) / (n (n - 1))
                  - 2 sum_{i, j} k(x_i, y_j) / (m n)

    on ``n_subsets`` pairs of subsets of ``m = min(subset_size, N_a, N_b)`` units drawn
    without replacement from each set; KID is the mean over the subsets and ``kid_std``
    their std, as the paper reports (100 subsets of 1000). Unlike FAD the estimate is
    unbiased at any m: two samples of one distribution score ~0 (and may score below 0),
    so KID at m vectors is comparable with KID at another m. Report m with the number.
    ``kid_std`` is the spread over subsets, not a confidence interval (with
    ``m = N_a = N_b`` every subset is the whole set and it is 0); for an interval use
    :func:`distance_ci` with ``distance="kid"``.

    The U-statistic needs its pairs independent. Windows of one clip are not: their
    kernel values are high, which inflates the within-set sums (16 clips x 10 windows of
    512-d from one distribution: 0.70 on the windows, 0.003 with the clips given). Pass
    ``groups_a`` / ``groups_b`` (the clip of each row; one label space, so the real and the
    generated audio of one video share a label): every pair of rows with the same label
    is left out of all three sums (ours; the pairs kept are independent, so the estimate
    stays unbiased), and subsets are drawn by clip (``subset_size`` then counts clips).

    Args:
        emb_a: reference embeddings, shape (N_a, D).
        emb_b: generated embeddings, shape (N_b, D).
        n_subsets: subset pairs averaged.
        subset_size: units (rows, or clips given groups) per subset, capped at the smaller set.
        seed: subset seed.
        groups_a: the clip of each row of ``emb_a``, or None (rows independent).
        groups_b: the clip of each row of ``emb_b``, or None.

    Returns:
        ``{"kid", "kid_std", "subset_size" (m), "n_subsets" (1 when every subset is the
        whole set), "n_a", "n_b"}`` (``n_*``: units, i.e. rows or clips).
    """
    a, b = _embedding_pair(emb_a, emb_b)
    ga, gb = _group_codes(groups_a, groups_b, len(a), len(b))
    units_a, units_b = _units(ga, len(a)), _units(gb, len(b))
    m = min(int(subset_size), len(units_a), len(units_b))
    if m < 2 or n_subsets < 1:
        raise MetricError(f"KID needs subsets of >= 2 units and n_subsets >= 1, got {m}, {n_subsets}")

    def codes(g: np.ndarray | None, rows: np.ndarray) -> np.ndarray | None:
        return None if g is None else g[rows]

    if m == len(units_a) == len(units_b):  # every subset is the whole set (the estimate is order-free)
        values = np.array([_poly_mmd2_unbiased(a, b, ga, gb)])
    else:
        values = np.empty(n_subsets)
        draws = zip(subsample_indices(len(units_a), n_subsets, m, seed),
                    subsample_indices(len(units_b), n_subsets, m, seed + 1))
        for s, (da, db) in enumerate(draws):
            ra, rb = _rows(units_a, da), _rows(units_b, db)
            values[s] = _poly_mmd2_unbiased(a[ra], b[rb], codes(ga, ra), codes(gb, rb))
    return {"kid": float(values.mean()), "kid_std": _std(values), "subset_size": m,
            "n_subsets": len(values), "n_a": len(units_a), "n_b": len(units_b)}


def distance_ci(
    emb_a: np.ndarray,
    emb_b: np.ndarray,
    distance: Literal["fad", "kid"] | Callable[[np.ndarray, np.ndarray], float] | None = None,
    n_resamples: int = 100,
    alpha: float = 0.05,
    seed: int = 0,
    fraction: float = 0.5,
    paired: bool = False,
    groups_a: Sequence[object] | np.ndarray | None = None,
    groups_b: Sequence[object] | np.ndarray | None = None,
    method: str = "auto",
) -> tuple[float, float, float]:
    """An interval of FAD (or KID, or another set distance) that contains its point: subsampling.

    Definition: the point is the distance between the two sets; the replicates are the
    distance on ``n_resamples`` subsets of ``round(fraction * G)`` of each set's G units
    (rows, or clips with all their rows given ``groups_*``) drawn without replacement, the
    same units of both sets when ``paired``, independent subsets otherwise; the interval
    is :func:`~soundtrack.metrics.statistics.subsample_interval` (subsampling, Politis &
    Romano 1994, with the delete-d jackknife's scaling, Shao & Wu 1989), which explains
    why the percentile bootstrap misses FAD's point and why this interval contains it.
    It is an interval for FAD at this N on another draw of the clips; report the floor
    (:func:`fad_floor`) or :func:`kid` for the bias. For FAD the lower end is floored at
    0 (a squared distance); KID can be negative and is not floored.

    Args:
        emb_a: reference embeddings, shape (N_a, D).
        emb_b: generated embeddings, shape (N_b, D).
        distance: ``"fad"`` (None: the same; :func:`fad` with ``method``), ``"kid"``
            (:func:`kid` on the whole subsets, the clips passed on), or ``f(a, b) -> float``.
        n_resamples: subsets.
        alpha: 1 - confidence level.
        seed: subset seed.
        fraction: share of each set's units per subset (0.5: scaling factor 1).
        paired: the sets are row-aligned (``emb_b[i]`` generated for ``emb_a[i]``); the
            same rows are drawn from both (and KID leaves out a clip's real-generated pairs).
        groups_a: the clip of each row of ``emb_a`` (also of ``emb_b`` when paired).
        groups_b: the clip of each row of ``emb_b`` (unpaired only).
        method: FAD's matrix-root method (``"auto"``: see :func:`fad_floor`).

    Returns:
        ``(point, lo, hi)`` with ``lo <= point <= hi``.
    """
    a, b = _embedding_pair(emb_a, emb_b)
    if paired:
        if a.shape != b.shape or groups_b is not None:
            raise MetricError(f"paired sets must have one shape ({a.shape} vs {b.shape}) and share groups_a")
        # row i of both sets comes from one clip (video)
        groups_a = np.arange(len(a)) if groups_a is None else np.asarray(groups_a).reshape(-1)
        groups_b = groups_a
    if distance is None or (isinstance(distance, str) and distance == "fad"):
        root = _fad_method(method, int(fraction * min(len(a), len(b))), a.shape[1])

        def dist(ia: np.ndarray, ib: np.ndarray) -> float:
            return fad(a[ia], b[ib], method=root)
    elif isinstance(distance, str) and distance == "kid":
        ga = None if groups_a is None else np.asarray(groups_a).reshape(-1)
        gb = None if groups_b is None else np.asarray(groups_b).reshape(-1)

        def dist(ia: np.ndarray, ib: np.ndarray) -> float:
            return float(kid(a[ia], b[ib], groups_a=None if ga is None else ga[ia],
                             groups_b=None if gb is None else gb[ib])["kid"])
    elif callable(distance):

        def dist(ia: np.ndarray, ib: np.ndarray) -> float:
            return float(distance(a[ia], b[ib]))
    else:
        raise MetricError(f"distance must be 'fad', 'kid' or a function, got {distance!r}")
    units_a = _units(groups_a, len(a))
    m_a = int(round(fraction * len(units_a)))
    if not 1 <= m_a < len(units_a):
        raise MetricError(f"subsampling {fraction} of {len(units_a)} units leaves {m_a}; need 1 <= m < {len(units_a)}")
    draws_a = subsample_indices(len(units_a), n_resamples, m_a, seed)
    if paired:
        pairs = [(_rows(units_a, d), _rows(units_a, d)) for d in draws_a]
    else:
        units_b = _units(groups_b, len(b))
        m_b = int(round(fraction * len(units_b)))
        if not 1 <= m_b < len(units_b):
            raise MetricError(f"subsampling {fraction} of {len(units_b)} units leaves {m_b}; "
                              f"need 1 <= m < {len(units_b)}")
        draws_b = subsample_indices(len(units_b), n_resamples, m_b, seed + 1)
        pairs = [(_rows(units_a, da), _rows(units_b, db)) for da, db in zip(draws_a, draws_b)]
    point = dist(np.arange(len(a)), np.arange(len(b)))
    reps = np.array([dist(ia, ib) for ia, ib in pairs])
    reps = reps[np.isfinite(reps)]
    lo, hi = subsample_interval(point, reps, m_a, len(units_a), alpha)
    if distance is None or distance == "fad":
        lo = max(lo, 0.0)
    return point, lo, hi


def _as_prob_rows(p: np.ndarray, name: str) -> np.ndarray:
    """Validates class-probability rows (N, C) and renormalises each to sum 1."""
    x = np.atleast_2d(np.asarray(p, dtype=np.float64))
    if x.ndim != 2 or np.any(x < 0) or not np.all(np.isfinite(x)):
        raise MetricError(f"{name} must be non-negative finite probabilities of shape (N, C)")
    sums = x.sum(axis=1, keepdims=True)
    if np.any(sums <= 0):
        raise MetricError(f"{name} has a row with zero total probability")
    return x / sums


def kl_divergence(
    p_ref: np.ndarray, p_gen: np.ndarray, eps: float = 1e-6, reduce: bool = True
) -> float | np.ndarray:
    """Mean per-pair KL divergence ``KL(p_ref || p_gen)`` of classifier predictions.

    Definition (AudioLDM evaluation toolkit, used by MuVi and HPM with PANNs): for
    each reference clip and the clip generated for it, the classifier's class
    distributions ``p`` (reference) and ``q`` (generated) give
    ``KL(p || q) = sum_c p_c ln(p_c / q_c)`` (nats); the score is the mean over
    pairs. The direction is reference-first, as the toolkit's
    ``kl_div(log q, p)``: it penalises generated clips that miss classes the
    reference has. Rows are renormalised to sum 1 (sigmoid multi-label outputs such
    as PANNs' become distributions); ``q`` is floored at ``eps`` so a class absent
    from the generation gives a large, finite penalty.

    Args:
        p_ref: reference class probabilities, shape (N, C).
        p_gen: generated class probabilities for the same N clips, shape (N, C).
        eps: floor on ``q`` (probability units).
        reduce: if False, return the per-pair values (for bootstrapping).

    Returns:
        Mean KL in nats (0 for identical predictions), or the (N,) per-pair values.
    """
    p = _as_prob_rows(p_ref, "p_ref")
    q = _as_prob_rows(p_gen, "p_gen")
    if p.shape != q.shape:
        raise MetricError(f"p_ref {p.shape} and p_gen {q.shape} must have the same shape")
    q = np.maximum(q, eps)
    # 0 * log(0 / q) = 0 by convention; avoid evaluating log(0).
    terms = np.where(p > 0, p * (np.log(np.where(p > 0, p, 1.0)) - np.log(q)), 0.0)
    per_pair = terms.sum(axis=1)
    return float(per_pair.mean()) if reduce else per_pair


def inception_score_splits(n: int, max_splits: int = IS_MAX_SPLITS, min_split: int = IS_MIN_SPLIT) -> int:
    """The chunks :func:`inception_score` uses with ``splits="auto"``.

    Args:
        n: clips.
        max_splits: most chunks (10, the reference implementation's).
        min_split: fewest clips per chunk.

    Returns:
        ``max(1, min(max_splits, n // min_split))``: 10 from 500 clips on, 1 below 100.
    """
    return max(1, min(max_splits, n // min_split))


def inception_score(probs: np.ndarray, splits: int | Literal["auto"] = 1,
                    min_split: int = IS_MIN_SPLIT) -> tuple[float, float]:
    """Inception Score (Salimans et al. 2016) of generated clips' class predictions.

    Definition: ``IS = exp(E_x KL(p(y|x) || p(y)))`` with ``p(y)`` the mean
    prediction over the set. The set is cut into ``splits`` equal chunks (in the
    given order, no shuffling), IS computed per chunk, and the mean and std over
    chunks returned, as in the reference implementation. The papers compute it on
    PANNs predictions (AudioLDM toolkit, 10 splits). ``splits="auto"`` takes the
    standard 10 when the set allows chunks of at least ``min_split`` clips:
    ``min(10, N // min_split)``, at least 1 (:func:`inception_score_splits`). The
    default stays 1 split, the bench's so far. A chunk's marginal is estimated from
    its own clips, so IS depends on the chunk size: compare scores computed with the
    same number of clips per chunk. Natural log; IS ranges from 1 to the number of
    classes.

    Args:
        probs: class probabilities of the generated clips, shape (N, C); rows are
            renormalised to sum 1.
        splits: number of chunks (1 <= splits <= N), or ``"auto"``.
        min_split: fewest clips per chunk with ``splits="auto"``.

    Returns:
        ``(mean, std)`` of the per-chunk scores (std 0 with one split; the population
        std over chunks, as the reference implementation).
    """
    p = _as_prob_rows(probs, "probs")
    n = p.shape[0]
    if splits == "auto":
        splits = inception_score_splits(n, min_split=min_split)
    if not isinstance(splits, (int, np.integer)) or not 1 <= splits <= n:
        raise MetricError(f"splits must be 'auto' or an integer in [1, {n}], got {splits!r}")
    scores = []
    for chunk in np.array_split(p, splits):
        marginal = chunk.mean(axis=0)
        kl = np.where(
            chunk > 0,
            chunk * (np.log(np.where(chunk > 0, chunk, 1.0)) - np.log(np.where(marginal > 0, marginal, 1.0))),
            0.0,
        ).sum(axis=1)
        scores.append(math.exp(kl.mean()))
    return float(np.mean(scores)), float(np.std(scores))


# ---------------------------------------------------------------------------
# Originality vs recognizability (HPM 4.2.3)
# ---------------------------------------------------------------------------


def originality_recognizability(
    features: np.ndarray,
    labels: Sequence[object] | np.ndarray,
    predicted_labels: Sequence[object] | np.ndarray | None = None,
) -> dict[str, object]:
    """Originality vs recognizability (HPM section 4.2.3, after Boutin et al. 2022).

    Originality, HPM's formula::

        sigma_rho = sum_{j=1}^{n_c} sqrt( 1/(N-1) * sum_i (f(m_i^j) - mean_i f(m_i^j))^2 )

    i.e. for each style class ``j`` the sample standard deviation of the features
    ``f(m_i^j)`` of its N generated clips (a pretrained model's embedding of each
    mel spectrogram), summed over classes. The features are vectors, so the square
    is read as the squared Euclidean norm (the root mean squared distance to the
    class centroid, Boutin et al.'s intra-class variability). HPM's formula sums
    over classes while its Fig. 2 plots per-class scores and their average; we
    return the sum, the mean and the per-class values. Larger = more varied =
    more original.

    Recognizability: the accuracy of a one-shot style classifier on the generated
    clips (HPM: "the average accuracy across the test set"), computed from its
    predictions when given; the classifier itself is external.

    Args:
        features: embeddings of the generated clips, shape (N_total, D).
        labels: style class of each clip (the class it was generated for), (N_total,).
        predicted_labels: the one-shot classifier's predicted class per clip, or None.

    Returns:
        Dict with ``originality`` (HPM's sum over classes), ``originality_mean``
        (mean over classes), ``per_class_originality`` ({class: value}; classes
        with a single clip are skipped as the N-1 denominator is undefined), and,
        if predictions are given, ``recognizability`` (overall accuracy in [0, 1])
        and ``per_class_recognizability``.
    """
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels)
    if x.ndim != 2 or y.shape != (x.shape[0],):
        raise MetricError(f"features must be (N, D) and labels (N,), got {x.shape}, {y.shape}")
    per_class: dict[object, float] = {}
    for cls in np.unique(y):
        fx = x[y == cls]
        if fx.shape[0] < 2:
            continue
        sq = ((fx - fx.mean(axis=0)) ** 2).sum(axis=1)
        per_class[cls.item() if hasattr(cls, "item") else cls] = float(
            math.sqrt(sq.sum() / (fx.shape[0] - 1))
        )
    if not per_class:
        raise MetricError("originality needs at least one class with >= 2 clips")
    values = list(per_class.values())
    out: dict[str, object] = {
        "originality": float(np.sum(values)),
        "originality_mean": float(np.mean(values)),
        "per_class_originality": per_class,
    }
    if predicted_labels is not None:
        pred = np.asarray(predicted_labels)
        if pred.shape != y.shape:
            raise MetricError("predicted_labels must have the same shape as labels")
        correct = pred == y
        out["recognizability"] = float(correct.mean())
        out["per_class_recognizability"] = {
            (cls.item() if hasattr(cls, "item") else cls): float(correct[y == cls].mean())
            for cls in np.unique(y)
        }
    return out
