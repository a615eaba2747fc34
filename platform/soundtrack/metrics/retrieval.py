"""Embedding similarity and retrieval (MuVi SIM, Diff-BGM P@K)."""

from __future__ import annotations

import logging

import numpy as np

from soundtrack.errors import MetricError

log = logging.getLogger(__name__)

#: Diff-BGM's retrieval pool: each generated piece is ranked among 60 real-music
#: candidates (``diffbgm/test.ipynb``: ``sample(range(500), 60)``, the partner put in if
#: missing). P@K's default pool is ``min(POOL_SIZE, N)``.
POOL_SIZE = 60


def _unit(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm along the last axis (zero rows stay zero)."""
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.where(norm > 0, norm, 1.0)


def sim(
    video_emb: np.ndarray, music_emb: np.ndarray, percent: bool = False, reduce: bool = True
) -> float | np.ndarray:
    """SIM: mean cosine similarity of paired video and music embeddings (MuVi 4.1).

    MuVi's SIM is the similarity of its contrastively pretrained video and music
    encoders, a reference-free measure of video-music agreement. With per-clip
    embeddings (N, D) it is the cosine of each pair; with per-frame embeddings
    (N, T, D) it is MuVi's position-aware similarity, the cosine at each time
    position averaged over positions; then the mean over pairs. MuVi reports it "on
    a percentage scale" (x 100, e.g. 19.18): ``percent=True``. Values depend on the
    encoder, so compare SIM only between runs that used the same encoder weights.

    Args:
        video_emb: video embeddings, (N, D) or (N, T, D).
        music_emb: music embeddings of the same pairs, same shape.
        percent: multiply by 100.
        reduce: if False, return the (N,) per-pair values.

    Returns:
        Mean cosine similarity in [-1, 1] (or [-100, 100]), or per-pair values.
    """
    v = np.asarray(video_emb, dtype=np.float64)
    m = np.asarray(music_emb, dtype=np.float64)
    if v.shape != m.shape or v.ndim not in (2, 3):
        raise ValueError(f"need equal (N, D) or (N, T, D) shapes, got {v.shape} and {m.shape}")
    cos = (_unit(v) * _unit(m)).sum(axis=-1)
    per_pair = cos.mean(axis=1) if cos.ndim == 2 else cos
    if percent:
        per_pair = per_pair * 100.0
    return float(per_pair.mean()) if reduce else per_pair


def precision_at_k(
    query_emb: np.ndarray,
    cand_emb: np.ndarray,
    k: int,
    pool_size: int | None = None,
    seed: int = 0,
) -> dict[str, object]:
    """Retrieval precision P@K (Diff-BGM's video-music correspondence metric).

    Definition: query ``i`` has true partner ``cand_emb[i]``. Its retrieval pool is the
    partner plus ``pool_size - 1`` negatives drawn without replacement from the other
    candidates, with a fixed seed so every method is scored on the same pools.
    Candidates are ranked by cosine similarity to the query; the hit is 1 when the
    partner is in the top ``k``. Ties count against the query (rank = 1 + number of
    negatives at least as similar as the partner, within 1e-9), so a collapsed encoder
    scores 0, not 100 %. P@K is the mean hit; chance level is ``k / pool_size``.

    Pool: a fixed size, ``min(60, N)`` by default (:data:`POOL_SIZE`), logged, and
    returned as ``pool_size``. Diff-BGM (``diffbgm/test.ipynb``) ranks each *generated*
    piece's music features among 60 *real-music* candidates sampled from 500 (the true
    partner swapped in when the sample misses it) with an unseeded ``random.sample``
    and a stable sort (ties broken by pool order); for that comparison pass the
    generated music as ``query_emb`` and the real music as ``cand_emb``
    (:func:`soundtrack.metrics.modes.diffbgm_scores`). A pool that grows with the
    number of clips makes P@K values of test sets of different sizes incomparable
    (chance level ``k / N``); with N >= 60 the pool is 60 whatever N is.

    Args:
        query_emb: query embeddings, shape (N, D).
        cand_emb: candidate embeddings, shape (N, D), row i paired with query i.
        k: cut-off rank (>= 1).
        pool_size: candidates per query, partner included (>= 2); None for
            ``min(POOL_SIZE, N)``. A value above N is cut to N, with a warning.
        seed: seed of the negative sampling.

    Returns:
        Dict with ``p_at_k`` (fraction in [0, 1]), ``hits`` ((N,) bool, for
        bootstrapping), ``ranks`` ((N,) int, 1 = best, so any other K can be read
        off), ``pool_size`` (as used) and ``chance`` (``k / pool_size``).
    """
    q = _unit(np.asarray(query_emb, dtype=np.float64))
    c = _unit(np.asarray(cand_emb, dtype=np.float64))
    if q.ndim != 2 or q.shape != c.shape:
        raise ValueError(f"need equal (N, D) shapes, got {q.shape} and {c.shape}")
    return precision_at_k_from_similarity(q @ c.T, k, pool_size=pool_size, seed=seed)


def precision_at_k_from_similarity(sim_matrix: np.ndarray, k: int, pool_size: int | None = None,
                                   seed: int = 0) -> dict[str, object]:
    """:func:`precision_at_k` from a precomputed (N, N) query x candidate similarity matrix.

    ``sim_matrix[i, j]`` is the similarity of query ``i`` to candidate ``j`` (partner:
    ``j = i``). Pools, tie rule and outputs are those of :func:`precision_at_k`, which
    calls this with the cosine matrix; computing the matrix once keeps the cost
    O(N^2) when the embeddings are wide (per-frame embeddings flattened).

    Args:
        sim_matrix: (N, N) similarities.
        k: cut-off rank (>= 1).
        pool_size: candidates per query, partner included (>= 2); None for
            ``min(POOL_SIZE, N)``. A value above N is cut to N with a warning (the pool
            then follows the clip count, which is what made old tables incomparable).
        seed: seed of the negative sampling.

    Returns:
        Dict with ``p_at_k``, ``hits`` (N,), ``ranks`` (N,), ``pool_size`` and
        ``chance`` (see :func:`precision_at_k`).

    Raises:
        MetricError: a non-square matrix, N < 2, k < 1 or a pool size below 2.
    """
    sm = np.asarray(sim_matrix, dtype=np.float64)
    if sm.ndim != 2 or sm.shape[0] != sm.shape[1]:
        raise MetricError(f"need a square (N, N) similarity matrix, got {sm.shape}")
    n = sm.shape[0]
    pool = min(POOL_SIZE, n) if pool_size is None else int(pool_size)
    if n < 2 or k < 1 or pool < 2:
        raise MetricError(f"need N >= 2 pairs, k >= 1 and pool_size >= 2; got N={n}, k={k}, pool_size={pool}")
    if pool > n:
        log.warning("P@%d: pool_size %d > N=%d candidates; using %d (the pool follows the clip count)", k, pool, n, n)
        pool = n
    log.info("P@%d: pool of %d candidates per query (N=%d, seed=%d, chance %.3f)", k, pool, n, seed, min(1.0, k / pool))
    rng = np.random.default_rng(seed)
    ranks = np.empty(n, dtype=np.int64)
    for i in range(n):
        # Sample from the N-1 other indices: draw from 0..N-2 and skip over i.
        neg = rng.choice(n - 1, size=pool - 1, replace=False)
        neg = neg + (neg >= i)
        sims = sm[i, np.concatenate(([i], neg))]
        # A negative within 1e-9 (cosine units) of the partner is a tie: equal
        # vectors can differ in the last bits of their computed similarity.
        ranks[i] = 1 + int(np.count_nonzero(sims[1:] >= sims[0] - 1e-9))
    hits = ranks <= k
    return {
        "p_at_k": float(hits.mean()),
        "hits": hits,
        "ranks": ranks,
        "pool_size": pool,
        "chance": min(1.0, k / pool),
    }
