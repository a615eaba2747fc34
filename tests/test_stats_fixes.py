"""Evaluation a researcher can publish (issue 15): FAD against its floor, FAD-infinity and
KID beside it, intervals that contain their point, paired set-metric intervals from shared
indices, Inception score over 10 splits, and the clip-level bootstrap for several seeds per
clip. Small, seeded simulations; low-dimensional embeddings so each test stays fast.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
from sklearn.metrics.pairwise import polynomial_kernel

import soundtrack.metrics as M
from soundtrack.errors import MetricError

# ---------------------------------------------------------------------------
# FAD's interval: subsampling contains the point; the percentile bootstrap need not
# ---------------------------------------------------------------------------


def test_fad_interval_contains_its_point_on_same_distribution_and_permuted_sets():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((60, 16)), rng.standard_normal((60, 16))
    point, lo, hi = M.distance_ci(a, b, n_resamples=60)
    assert point == pytest.approx(M.fad(a, b))
    assert lo <= point <= hi and hi > lo

    # the second set is a permutation of the first: FAD 0; every interval must hold 0
    perm = a[rng.permutation(len(a))]
    for paired in (False, True):
        point, lo, hi = M.distance_ci(a, perm, n_resamples=60, paired=paired)
        assert point == pytest.approx(0.0, abs=1e-8)
        assert lo == 0.0 <= point <= hi and hi > 0
    # the bug it fixes: bootstrap resamples repeat clips, so every replicate is above 0
    fn = lambda idx: M.fad(a[idx], perm[idx])  # noqa: E731
    boot = M.set_metric_ci(fn, len(a), n_resamples=60, resample="bootstrap")
    assert boot[0] == pytest.approx(0.0, abs=1e-8) and boot[1] > 0.0
    sub = M.set_metric_ci(fn, len(a), n_resamples=60)
    assert sub[1] <= sub[0] <= sub[2]


def test_fad_subsampling_interval_covers_the_estimator_where_the_bootstrap_does_not():
    # FAD of two N(0, I) samples of 40 (its floor): the estimator's mean at n = 40 is the target
    rng = np.random.default_rng(1)
    d, n, reps = 4, 40, 60
    target = np.mean([M.fad(rng.standard_normal((n, d)), rng.standard_normal((n, d)), method="eigh")
                      for _ in range(1000)])
    sub = boot = 0
    for r in range(reps):
        a, b = rng.standard_normal((n, d)), rng.standard_normal((n, d))
        _, lo, hi = M.distance_ci(a, b, n_resamples=80, seed=r)
        sub += lo <= target <= hi
        ia, ib = M.bootstrap_indices(n, 80, r), M.bootstrap_indices(n, 80, r + 1000)
        blo, bhi = np.quantile([M.fad(a[i], b[j], method="eigh") for i, j in zip(ia, ib)], [0.025, 0.975])
        boot += blo <= target <= bhi
    assert sub / reps >= 0.9
    assert boot / reps <= 0.85


def test_subsample_interval_scaling_matches_the_mean_standard_error():
    # delete-d scaling: half-samples' spread of the mean equals the mean's standard error
    x = np.random.default_rng(2).standard_normal(400)
    idx = M.subsample_indices(400, 2000, 200, 0)
    assert all(len(set(row)) == 200 for row in idx[:20])
    lo, hi = M.subsample_interval(x.mean(), x[idx].mean(axis=1), 200, 400)
    se = x.std(ddof=1) / np.sqrt(400)
    assert (hi - lo) / (2 * 1.96 * se) == pytest.approx(1.0, abs=0.1)
    with pytest.raises(MetricError):
        M.subsample_interval(0.0, [1.0], 400, 400)


# ---------------------------------------------------------------------------
# The floor, FAD-infinity, KID
# ---------------------------------------------------------------------------


def test_floor_is_the_fad_of_two_same_distribution_samples_and_gen_is_scored_at_its_size():
    rng = np.random.default_rng(3)
    d, n = 8, 200
    scale = np.linspace(0.5, 2.0, d)
    ref = rng.standard_normal((n, d)) * scale
    out = M.fad_floor(ref, n_splits=20)
    fresh = np.mean([M.fad(rng.standard_normal((n // 2, d)) * scale, rng.standard_normal((n // 2, d)) * scale)
                     for _ in range(40)])
    assert out["n"] == 100 and out["rows"] == 100 and len(out["values"]) == 20
    assert out["floor"] == pytest.approx(fresh, rel=0.2)

    same = rng.standard_normal((n, d)) * scale  # a "generator" sampling the reference distribution
    worse = same + 0.5
    at_floor, above = M.fad_floor(ref, same, paired=True), M.fad_floor(ref, worse, paired=True)
    assert abs(at_floor["excess"]) < 3 * at_floor["floor_std"]
    assert above["excess"] > 1.0 and above["fad"] > above["floor"]  # ||shift||^2 = 2
    unpaired = M.fad_floor(ref, worse[:150])
    assert unpaired["fad"] > unpaired["floor"] + 1.0


def test_floor_splits_clips_not_windows():
    # 40 clips x 5 windows with a strong clip effect: windows of one clip are alike
    rng = np.random.default_rng(4)
    clips, win, d = 40, 5, 6

    def windowed():
        return (np.repeat(rng.standard_normal((clips, d)) * 2.0, win, axis=0)
                + 0.3 * rng.standard_normal((clips * win, d)))

    ref, groups = windowed(), np.repeat(np.arange(clips), win)
    by_clip = M.fad_floor(ref, groups=groups, n_splits=20)
    by_row = M.fad_floor(ref, n_splits=20)
    fresh = np.mean([M.fad(windowed()[: clips // 2 * win], windowed()[: clips // 2 * win]) for _ in range(20)])
    assert by_clip["n"] == 20 and by_clip["rows"] == 100
    assert by_clip["floor"] == pytest.approx(fresh, rel=0.3)
    assert by_row["floor"] < 0.5 * by_clip["floor"]  # halves sharing clips look closer than they are


def test_fad_infinity_removes_the_bias_where_fad_is_linear_in_one_over_n(caplog):
    rng = np.random.default_rng(5)
    d, n = 8, 300
    a, b = rng.standard_normal((n, d)), rng.standard_normal((n, d))
    same = M.fad_infinity(a, b)
    assert same["sizes"] == [75, 131, 188, 244, 300] and same["n_over_dim"] > 1
    assert abs(same["fad_inf"]) < 0.3 * M.fad(a, b)
    shifted = M.fad_infinity(a, b + 1.0)  # true FAD: ||mu_a - mu_b||^2 = 8
    assert shifted["fad_inf"] == pytest.approx(8.0, abs=1.0)
    assert shifted["fad_inf"] > 10 * abs(same["fad_inf"])
    # fewer vectors than dimensions: the extrapolation is flagged
    with caplog.at_level(logging.WARNING, logger="soundtrack.metrics.distribution"):
        M.fad_infinity(rng.standard_normal((40, 64)), rng.standard_normal((40, 64)), n_draws=2)
    assert "not linear in 1/N" in caplog.text


def _mmd2_reference(x: np.ndarray, y: np.ndarray) -> float:
    """The unbiased MMD^2 written out pair by pair, kernel from scikit-learn."""
    d = x.shape[1]
    kxx, kyy = (polynomial_kernel(u, degree=3, gamma=1.0 / d, coef0=1) for u in (x, y))
    kxy = polynomial_kernel(x, y, degree=3, gamma=1.0 / d, coef0=1)
    m = len(x)
    off = ~np.eye(m, dtype=bool)
    return kxx[off].sum() / (m * (m - 1)) + kyy[off].sum() / (m * (m - 1)) - 2 * kxy.mean()


def test_kid_is_the_unbiased_polynomial_mmd_and_is_near_zero_for_one_distribution():
    rng = np.random.default_rng(6)
    x, y = rng.standard_normal((30, 5)), rng.standard_normal((30, 5)) + 0.2
    out = M.kid(x, y)
    assert out["kid"] == pytest.approx(_mmd2_reference(x, y), rel=1e-9)
    assert out["subset_size"] == 30 and out["n_subsets"] == 1 and out["kid_std"] == 0.0
    sub = M.kid(x, rng.standard_normal((50, 5)), n_subsets=20, subset_size=20)
    assert sub["subset_size"] == 20 and sub["n_subsets"] == 20 and sub["kid_std"] > 0

    # unbiased: the mean over independent pairs of same-distribution samples is ~0 ...
    d, n, reps = 8, 40, 60
    kids = np.array([M.kid(rng.standard_normal((n, d)), rng.standard_normal((n, d)))["kid"] for _ in range(reps)])
    assert abs(kids.mean()) < 3 * kids.std(ddof=1) / np.sqrt(reps)
    assert (kids < 0).any()
    # ... while FAD of the same samples sits well above 0 (its bias)
    fads = np.array([M.fad(rng.standard_normal((n, d)), rng.standard_normal((n, d))) for _ in range(20)])
    assert fads.mean() > 10 * fads.std(ddof=1) / np.sqrt(20)
    shifted = np.array([M.kid(rng.standard_normal((n, d)), rng.standard_normal((n, d)) + 0.7)["kid"]
                        for _ in range(10)])
    assert shifted.mean() > 10 * kids.std(ddof=1)
    _, lo, hi = M.distance_ci(x, y, distance=lambda u, v: M.kid(u, v)["kid"], n_resamples=40)
    assert lo <= out["kid"] <= hi


def test_kid_over_windows_leaves_out_pairs_of_one_clip():
    # 30 clips x 4 windows, one distribution, a strong clip effect: same-clip window pairs
    # inflate the within-set sums unless they are left out
    rng = np.random.default_rng(11)
    clips, win, d, reps = 30, 4, 6, 30
    groups = np.repeat(np.arange(clips), win)

    def windowed():
        return np.repeat(rng.standard_normal((clips, d)) * 1.5, win, axis=0) + 0.3 * rng.standard_normal((clips * win, d))

    naive, by_clip = [], []
    for _ in range(reps):
        ref, gen = windowed(), windowed()
        naive.append(M.kid(ref, gen)["kid"])
        by_clip.append(M.kid(ref, gen, groups_a=groups, groups_b=groups)["kid"])
    naive, by_clip = np.array(naive), np.array(by_clip)
    assert abs(by_clip.mean()) < 3 * by_clip.std(ddof=1) / np.sqrt(reps)
    assert naive.mean() > 10 * by_clip.std(ddof=1) / np.sqrt(reps)
    sub = M.kid(ref, gen, n_subsets=5, subset_size=10, groups_a=groups, groups_b=[f"g{c}" for c in groups])
    assert sub["subset_size"] == 10 and sub["n_a"] == clips and sub["n_subsets"] == 5
    one_side = M.kid(ref, gen, groups_b=groups)  # only the generated rows grouped
    assert np.isfinite(one_side["kid"])
    point, lo, hi = M.distance_ci(ref, gen, distance="kid", paired=True, groups_a=groups, n_resamples=30)
    assert point == pytest.approx(M.kid(ref, gen, groups_a=groups, groups_b=groups)["kid"])
    assert lo <= point <= hi


# ---------------------------------------------------------------------------
# Paired set-metric intervals from shared indices
# ---------------------------------------------------------------------------


def test_paired_set_metric_interval_uses_shared_indices_and_is_tighter():
    rng = np.random.default_rng(7)
    n, d = 60, 6
    ref = rng.standard_normal((n, d)) * 2.0
    gen_a = ref + 0.6 * rng.standard_normal((n, d))  # clip i generated for ref i
    gen_b = gen_a + 0.2 * rng.standard_normal((n, d)) + 0.3
    seen: list[tuple[str, tuple[int, ...]]] = []

    def fad_of(gen, name):
        def fn(idx):
            seen.append((name, tuple(idx)))
            return M.fad(ref[idx], gen[idx])
        return fn

    point, lo, hi = M.paired_set_metric_ci(fad_of(gen_a, "a"), fad_of(gen_b, "b"), n, n_resamples=100)
    assert point == pytest.approx(M.fad(ref, gen_a) - M.fad(ref, gen_b))
    assert lo <= point <= hi and hi < 0  # B is worse, and the paired interval says so
    a_idx = [i for name, i in seen if name == "a"]
    assert a_idx == [i for name, i in seen if name == "b"] and len(a_idx) == 101
    # the same subsets for both methods: separate intervals (other draws for B) are wider
    _, alo, ahi = M.set_metric_ci(lambda i: M.fad(ref[i], gen_a[i]), n, n_resamples=100, seed=0)
    _, blo, bhi = M.set_metric_ci(lambda i: M.fad(ref[i], gen_b[i]), n, n_resamples=100, seed=1)
    assert hi - lo < 0.8 * np.hypot(ahi - alo, bhi - blo)
    assert M.paired_set_metric_ci(fad_of(gen_a, "a"), fad_of(gen_a, "a"), n, n_resamples=10) == (0.0, 0.0, 0.0)


def test_set_metric_ci_draws_whole_clips():
    groups = np.repeat(np.arange(10), 3)
    rows = []
    M.set_metric_ci(lambda idx: rows.append(idx) or float(len(idx)), 30, n_resamples=5, clusters=groups)
    assert all(len(r) == 15 and sorted(np.bincount(groups[r])[np.bincount(groups[r]) > 0]) == [3] * 5
               for r in rows[1:])
    with pytest.raises(MetricError):
        M.set_metric_ci(lambda idx: 0.0, 1, resample="subsample")


# ---------------------------------------------------------------------------
# Inception score: 10 splits where the set allows
# ---------------------------------------------------------------------------


def test_inception_score_auto_splits():
    probs = np.random.default_rng(8).dirichlet(np.full(6, 0.3), size=500)
    assert [M.inception_score_splits(n) for n in (20, 99, 100, 499, 500, 5000)] == [1, 1, 2, 9, 10, 10]
    mean, std = M.inception_score(probs, splits="auto")
    chunks = [M.inception_score(c)[0] for c in np.array_split(probs, 10)]
    assert (mean, std) == pytest.approx((np.mean(chunks), np.std(chunks)))
    assert std > 0
    assert M.inception_score(probs[:60], splits="auto") == M.inception_score(probs[:60], splits=1)
    assert M.inception_score(probs[:60], splits="auto", min_split=20) == M.inception_score(probs[:60], splits=3)
    with pytest.raises(MetricError):
        M.inception_score(probs, splits="ten")


# ---------------------------------------------------------------------------
# Clip-level (cluster) bootstrap
# ---------------------------------------------------------------------------


def _clustered(rng, reps, clips, seeds, clip_sd, seed_sd):
    """(reps, clips * seeds) values: a per-clip effect shared by its seeds plus seed noise; mean 0."""
    clip = rng.normal(0, clip_sd, (reps, clips, 1))
    return (clip + rng.normal(0, seed_sd, (reps, clips, seeds))).reshape(reps, clips * seeds)


def test_cluster_bootstrap_coverage_near_nominal_row_bootstrap_far_below():
    rng = np.random.default_rng(9)
    reps, clips, seeds = 200, 16, 4
    ids = np.repeat(np.arange(clips), seeds)
    values = _clustered(rng, reps, clips, seeds, 1.0, 0.5)
    by_row = np.array([M.bootstrap_ci(v, n_boot=400, seed=r)[1:] for r, v in enumerate(values)])
    by_clip = np.array([M.bootstrap_ci(v, n_boot=400, seed=r, clusters=ids)[1:] for r, v in enumerate(values)])
    row_cov = np.mean((by_row[:, 0] <= 0) & (0 <= by_row[:, 1]))
    clip_cov = np.mean((by_clip[:, 0] <= 0) & (0 <= by_clip[:, 1]))
    assert 0.88 <= clip_cov <= 0.99
    assert row_cov <= 0.8

    # paired differences: the clip effect lives in the difference
    a = _clustered(rng, reps, clips, seeds, 0.0, 0.3)
    b = a - _clustered(rng, reps, clips, seeds, 1.0, 0.5)
    pr = np.array([M.paired_bootstrap_ci(x, y, n_boot=400, seed=r)[1:] for r, (x, y) in enumerate(zip(a, b))])
    pc = np.array([M.paired_bootstrap_ci(x, y, n_boot=400, seed=r, clusters=ids)[1:]
                   for r, (x, y) in enumerate(zip(a, b))])
    assert 0.88 <= np.mean((pc[:, 0] <= 0) & (0 <= pc[:, 1])) <= 0.99
    assert np.mean((pr[:, 0] <= 0) & (0 <= pr[:, 1])) <= 0.8


def test_cluster_bootstrap_agrees_with_row_bootstrap_on_singletons_and_across_paths():
    rng = np.random.default_rng(10)
    x = rng.standard_normal(30)
    assert M.bootstrap_ci(x, seed=3, clusters=np.arange(30)) == M.bootstrap_ci(x, seed=3)
    assert M.paired_bootstrap_ci(x, x[::-1], seed=3, clusters=np.arange(30)) == M.paired_bootstrap_ci(x, x[::-1], seed=3)
    # the order of the rows does not change which clips are drawn
    ids = np.repeat(np.array(list("abcdefghij")), 3)
    order = rng.permutation(30)
    assert M.bootstrap_ci(x[order], clusters=ids[order]) == pytest.approx(M.bootstrap_ci(x, clusters=ids))
    # unequal clip sizes: the vectorised mean equals the row-by-row path
    uneven = np.repeat(np.arange(8), [1, 2, 3, 4, 5, 6, 4, 5])
    fast = M.bootstrap_ci(x, seed=1, clusters=uneven)
    slow = M.bootstrap_ci(x, seed=1, clusters=uneven, stat=lambda v: float(np.mean(v)))
    assert fast == pytest.approx(slow)
    with pytest.raises(MetricError):
        M.bootstrap_ci(x, clusters=ids[:10])


def test_bootstrap_replicates_carry_all_rows_of_a_drawn_clip():
    ids = np.repeat([7, 3, 5, 1], 2)
    idx = M.cluster_bootstrap_indices(ids, 50, 0)
    assert all(len(r) == 8 and (np.bincount(ids[r], minlength=8)[[7, 3, 5, 1]] % 2 == 0).all() for r in idx)
    got = M.bootstrap_replicates(8, 50, 0, lambda r: r, clusters=ids)
    assert all(np.array_equal(g, i) for g, i in zip(got, idx))
    pairs = np.array([0, 0, 1, 1])  # two clips: about half the resamples draw one clip twice
    two = M.bootstrap_replicates(4, 50, 0, lambda r: r, min_unique=2, clusters=pairs)
    assert all(len(np.unique(pairs[r])) == 2 for r in two) and 10 < len(two) < 40
    assert M.bootstrap_replicates(8, 5, 0, len) == [8] * 5  # today's behaviour without clusters
