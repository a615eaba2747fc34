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

Times are in seconds throughout; rates are per second.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence

import librosa
import numpy as np
import scipy.linalg

#: Default tolerance (s) for the papers' BCS / BHS / beat F1. MuVi (Appendix E) is the
#: only seed paper that states its tolerance: 100 ms, with exclusive pairs. Using it
#: keeps our numbers comparable with the published tables.
BEAT_TOLERANCE_S = 0.1

#: Default tolerance (s) for :func:`onset_sync`: 70 ms, mir_eval's beat F-measure
#: window (Dixon 2007), the stricter community convention for generic event
#: synchronisation reports.
SYNC_TOLERANCE_S = 0.07


# ---------------------------------------------------------------------------
# Event matching and onset extraction
# ---------------------------------------------------------------------------


def _as_times(times: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    """Validates an event-time array: 1-D, finite, float64 (seconds)."""
    arr = np.asarray(times, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains non-finite event times")
    return arr


def match_events(
    ref_times: Sequence[float] | np.ndarray,
    est_times: Sequence[float] | np.ndarray,
    window: float,
) -> list[tuple[int, int]]:
    """One-to-one maximum matching of reference and estimated events.

    Two events may be paired when ``|ref - est| <= window``; each event is used at
    most once, and the number of pairs is maximal (the same quantity as mir_eval's
    ``util.match_events``, which runs Hopcroft-Karp on the hit graph).

    For events on a line with an interval tolerance, a greedy sweep over both sorted
    lists is already a maximum matching, so no general graph algorithm is needed.
    Take the earliest unmatched reference ``r`` and estimate ``e``: if
    ``e < r - window`` then ``e`` is too early for every remaining reference (all are
    ``>= r``) and can be discarded; symmetrically for ``r < e - window``. Otherwise
    ``(r, e)`` belongs to some maximum matching: if an optimal matching pairs ``r``
    with ``e' >= e`` and ``e`` with ``r' >= r``, swapping to ``(r, e), (r', e')`` stays
    within the window because ``e' <= r + window <= r' + window`` and
    ``r' <= e + window <= e' + window``. Cost O(n log n) for the sorts.

    Args:
        ref_times: reference event times (s), any order.
        est_times: estimated event times (s), any order.
        window: matching tolerance (s), inclusive.

    Returns:
        List of ``(ref_index, est_index)`` pairs (indices into the inputs as given),
        sorted by reference index.
    """
    if window < 0:
        raise ValueError(f"window must be >= 0 s, got {window}")
    ref = _as_times(ref_times, "ref_times")
    est = _as_times(est_times, "est_times")
    ref_order = np.argsort(ref, kind="stable")
    est_order = np.argsort(est, kind="stable")
    pairs: list[tuple[int, int]] = []
    i = j = 0
    while i < ref.size and j < est.size:
        r = ref[ref_order[i]]
        e = est[est_order[j]]
        if abs(r - e) <= window:
            pairs.append((int(ref_order[i]), int(est_order[j])))
            i += 1
            j += 1
        elif e < r:
            j += 1  # e lies more than `window` before every remaining reference
        else:
            i += 1  # r lies more than `window` before every remaining estimate
    pairs.sort()
    return pairs


def onset_times(
    wav: np.ndarray,
    sr: int,
    *,
    hop_length: int = 160,
    n_fft: int = 1024,
    n_mels: int = 128,
    delta: float = 0.05,
    wait_s: float = 0.03,
    pre_max_s: float = 0.03,
    post_max_s: float = 0.0,
    pre_avg_s: float = 0.10,
    post_avg_s: float = 0.10,
) -> np.ndarray:
    """Onset times of an audio clip (librosa spectral-flux onsets, peak-picked).

    HPM (Appendix D.1) and LORIS adjust the onset detector's parameters so that long
    clips do not give sparse rhythm vectors, without publishing the values. Ours,
    relative to librosa's defaults:

    * ``hop_length=160`` (10 ms at 16 kHz, the platform's STFT hop) instead of 512,
      so onset times are quantised to 10 ms, well inside the 70-100 ms tolerances.
    * ``n_fft=1024``, ``n_mels=128``: the platform's mel front end (DESIGN.md).
    * ``delta=0.05`` instead of 0.07: the peak threshold above the local mean, in
      units of the envelope normalised to [0, 1]; lowered to avoid sparsity.
    * ``wait_s=0.03``: at least 30 ms between onsets (librosa's default time), so at
      most ~33 onsets/s.
    * Peak window: local maximum over [-30 ms, 0 ms], local mean over
      [-100 ms, +100 ms] (librosa's default times, converted at our hop).

    The envelope is normalised per call, so ``delta`` is relative to the clip's own
    strongest onset (a near-silent clip still yields onsets; report the onset rate).

    Args:
        wav: mono waveform, shape (n_samples,), float.
        sr: sample rate (Hz).
        hop_length: onset-envelope hop (samples).
        n_fft: STFT window (samples) of the mel spectrogram behind the envelope.
        n_mels: number of mel bands of that spectrogram.
        delta: peak-picking threshold (normalised envelope units).
        wait_s: minimum time between two onsets (s).
        pre_max_s: look-back of the local-maximum test (s).
        post_max_s: look-ahead of the local-maximum test (s).
        pre_avg_s: look-back of the local-mean threshold (s).
        post_avg_s: look-ahead of the local-mean threshold (s).

    Returns:
        Sorted onset times (s), shape (n_onsets,).
    """
    y = np.asarray(wav, dtype=np.float32).reshape(-1)
    if y.size < n_fft or not np.any(y):
        return np.zeros(0, dtype=np.float64)
    frames_per_s = sr / hop_length
    env = librosa.onset.onset_strength(
        y=y, sr=sr, hop_length=hop_length, n_fft=n_fft, n_mels=n_mels
    )
    # librosa wants these windows in frames; +1 on the look-ahead windows because
    # librosa's post windows exclude their end point.
    frames = librosa.onset.onset_detect(
        onset_envelope=env,
        sr=sr,
        hop_length=hop_length,
        units="frames",
        delta=delta,
        wait=max(0, int(round(wait_s * frames_per_s))),
        pre_max=max(0, int(round(pre_max_s * frames_per_s))),
        post_max=max(1, int(round(post_max_s * frames_per_s)) + 1),
        pre_avg=max(0, int(round(pre_avg_s * frames_per_s))),
        post_avg=max(1, int(round(post_avg_s * frames_per_s)) + 1),
    )
    return np.sort(librosa.frames_to_time(frames, sr=sr, hop_length=hop_length)).astype(np.float64)


def segment_onset_times(wav: np.ndarray, sr: int, n_segments: int, **onset_kwargs) -> np.ndarray:
    """Onsets detected separately in ``n_segments`` equal-length segments.

    Diff-BGM's ADV (supplement section 3) detects "remarkable accents" per
    equal-length segment, so that quiet passages are judged against their own
    loudness: :func:`onset_times` normalises its envelope per call, which gives
    exactly this local normalisation. An onset within about ``n_fft / 2`` samples
    (32 ms at 16 kHz) of a segment start has no "before" in its segment and is
    missed, so keep segments long (seconds).

    Args:
        wav: mono waveform, shape (n_samples,).
        sr: sample rate (Hz).
        n_segments: number of equal-length segments (>= 1).
        **onset_kwargs: forwarded to :func:`onset_times`.

    Returns:
        Sorted onset times (s) in clip time, shape (n_onsets,).
    """
    if n_segments < 1:
        raise ValueError(f"n_segments must be >= 1, got {n_segments}")
    y = np.asarray(wav).reshape(-1)
    bounds = np.linspace(0, y.size, n_segments + 1).astype(int)
    parts = [
        onset_times(y[a:b], sr, **onset_kwargs) + a / sr for a, b in zip(bounds[:-1], bounds[1:])
    ]
    return np.sort(np.concatenate(parts)) if parts else np.zeros(0)


# ---------------------------------------------------------------------------
# Rhythm synchronisation: onset_sync, BCS, BHS, F1, CSD, HSD
# ---------------------------------------------------------------------------


def onset_sync(
    ref_times: Sequence[float] | np.ndarray,
    est_times: Sequence[float] | np.ndarray,
    window: float = SYNC_TOLERANCE_S,
    duration: float | None = None,
) -> dict[str, float]:
    """Event synchronisation report: hit rate together with precision, F1 and rate.

    Definition: with ``M`` one-to-one matched pairs (:func:`match_events`, tolerance
    ``window``), ``hit_rate = recall = M / n_ref``, ``precision = M / n_est``,
    ``f1`` their harmonic mean. A hit rate alone is meaningless (emitting an onset
    every 10 ms hits everything), hence the report always carries precision, F1 and
    ``onset_rate = n_est / duration``. As in mir_eval's onset/beat F-measure, an empty
    reference or estimate gives 0 for all three scores.

    Args:
        ref_times: reference event times (s), e.g. video accents or real-music onsets.
        est_times: estimated event times (s), e.g. onsets of the generated music.
        window: matching tolerance (s); default 70 ms (mir_eval's beat window).
        duration: clip length (s) for the rates. If None, the last event time is
            used, a lower bound on the duration (so the rate is an upper bound);
            pass the real duration whenever it is known.

    Returns:
        Dict with ``hit_rate``, ``recall`` (same value), ``precision``, ``f1``,
        ``n_ref``, ``n_est``, ``n_matched``, ``onset_rate`` (estimated events per s),
        ``ref_rate`` (reference events per s), ``density_ratio`` (``n_est / n_ref``,
        MuVi's BCS as a fraction; nan without references), ``duration`` (s) and
        ``mean_abs_offset`` (s, over matched pairs; nan when none).
    """
    ref = _as_times(ref_times, "ref_times")
    est = _as_times(est_times, "est_times")
    pairs = match_events(ref, est, window)
    n_ref, n_est, n_match = ref.size, est.size, len(pairs)
    recall = n_match / n_ref if n_ref and n_est else 0.0
    precision = n_match / n_est if n_ref and n_est else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    if duration is None:
        duration = float(max(ref.max(initial=0.0), est.max(initial=0.0)))
    rate = (lambda n: n / duration if duration > 0 else float("nan"))
    offsets = [abs(ref[i] - est[j]) for i, j in pairs]
    return {
        "hit_rate": float(recall),
        "recall": float(recall),
        "precision": float(precision),
        "f1": float(f1),
        "n_ref": int(n_ref),
        "n_est": int(n_est),
        "n_matched": int(n_match),
        "onset_rate": float(rate(n_est)),
        "ref_rate": float(rate(n_ref)),
        "density_ratio": float(n_est / n_ref) if n_ref else float("nan"),
        "duration": float(duration),
        "mean_abs_offset": float(np.mean(offsets)) if offsets else float("nan"),
    }


def bcs(
    ref_beats: Sequence[float] | np.ndarray,
    gen_beats: Sequence[float] | np.ndarray,
    tolerance: float = BEAT_TOLERANCE_S,
) -> float:
    """Beat Coverage Score, HPM/LORIS definition: ``B_a / B_g`` (precision-like).

    ``B_a`` is the number of generated beats aligned one-to-one with a reference beat
    within ``tolerance`` (:func:`match_events`), ``B_g`` the number of generated beats.

    Why this definition: the original BCS (D2M-GAN, followed by MuVi section 4.1) is
    ``B_g / B_t``, the ratio of generated to reference beat counts, which is not a
    synchronisation measure at all and exceeds 100 % whenever the generator is
    busier than the reference (MuVi's tables report 97-106 %). HPM (Appendix D.1),
    following LORIS, replaces it by ``B_a / B_g``, bounded in [0, 1] and penalising
    spurious beats. HPM's prose calls BCS and BHS "recall and precision
    respectively", but its formula ``B_a / B_g`` is the precision of the generated
    beats; we follow the formula. MuVi's count ratio is still reported, as
    ``density_ratio``, by :func:`onset_sync`.

    Args:
        ref_beats: beat/onset times (s) of the reference (ground-truth) music.
        gen_beats: beat/onset times (s) of the generated music.
        tolerance: matching tolerance (s); default 100 ms (MuVi Appendix E).

    Returns:
        BCS in [0, 1]; 0 when either sequence is empty.
    """
    return onset_sync(ref_beats, gen_beats, window=tolerance)["precision"]


def bhs(
    ref_beats: Sequence[float] | np.ndarray,
    gen_beats: Sequence[float] | np.ndarray,
    tolerance: float = BEAT_TOLERANCE_S,
) -> float:
    """Beat Hit Score: ``B_a / B_t`` (recall-like), as in D2M-GAN, LORIS, HPM and MuVi.

    ``B_a`` is the number of one-to-one aligned beat pairs within ``tolerance``
    (exclusive pairing as in MuVi Appendix E), ``B_t`` the number of reference beats.
    Because pairs are exclusive, BHS cannot exceed 1 (HPM D.1's second issue).

    Args:
        ref_beats: beat/onset times (s) of the reference music.
        gen_beats: beat/onset times (s) of the generated music.
        tolerance: matching tolerance (s); default 100 ms (MuVi Appendix E).

    Returns:
        BHS in [0, 1]; 0 when either sequence is empty.
    """
    return onset_sync(ref_beats, gen_beats, window=tolerance)["recall"]


def beat_f1(bcs_value: float | np.ndarray, bhs_value: float | np.ndarray) -> float | np.ndarray:
    """F1 of BCS and BHS (HPM Appendix D.1): ``2 * BCS * BHS / (BCS + BHS)``.

    Since BCS is the precision and BHS the recall of the generated beats, this is
    the usual F-measure. Applied per clip (then averaged) it equals
    :func:`onset_sync`'s ``f1``; applied to dataset-mean BCS and BHS it gives the
    F1 of the means. HPM does not say which it reports; state which you use.

    Args:
        bcs_value: BCS value(s) in [0, 1].
        bhs_value: BHS value(s) in [0, 1], same shape.

    Returns:
        F1 value(s); 0 where both inputs are 0.
    """
    p = np.asarray(bcs_value, dtype=np.float64)
    r = np.asarray(bhs_value, dtype=np.float64)
    denom = p + r
    out = np.where(denom > 0, 2 * p * r / np.where(denom > 0, denom, 1.0), 0.0)
    return float(out) if out.ndim == 0 else out


def _stability_deviation(values: Sequence[float] | np.ndarray, ddof: int) -> float:
    """Std over repeated generations; mean over clips for a (clips, repeats) array."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim == 1:
        if arr.size <= ddof:
            raise ValueError(f"need more than {ddof} values for a standard deviation")
        return float(np.std(arr, ddof=ddof))
    if arr.ndim == 2:
        if arr.shape[1] <= ddof:
            raise ValueError(f"need more than {ddof} repeats per clip")
        return float(np.mean(np.std(arr, axis=1, ddof=ddof)))
    raise ValueError(f"expected a 1-D or (clips, repeats) array, got shape {arr.shape}")


def csd(bcs_values: Sequence[float] | np.ndarray, ddof: int = 0) -> float:
    """Coverage Standard Deviation: the standard deviation of BCS (HPM Appendix D.1).

    HPM defines CSD as "the standard deviation of BCS" to measure generation
    stability, without saying over what. We take the repeated generations of the
    same input: for a (clips, repeats) array, the std over repeats of each clip,
    averaged over clips (spread due to sampling noise only, not to clip
    difficulty); for a 1-D array, the std over all values (LORIS-style, which also
    mixes in clip-to-clip variation). ``ddof=0`` (numpy's default, the population
    std) unless asked otherwise.

    Args:
        bcs_values: per-generation BCS values, shape (n,) or (n_clips, n_repeats).
        ddof: delta degrees of freedom of the std.

    Returns:
        CSD (same units as BCS); lower is more stable.
    """
    return _stability_deviation(bcs_values, ddof)


def hsd(bhs_values: Sequence[float] | np.ndarray, ddof: int = 0) -> float:
    """Hit Standard Deviation: the standard deviation of BHS (HPM Appendix D.1).

    Same aggregation as :func:`csd`, applied to BHS values.

    Args:
        bhs_values: per-generation BHS values, shape (n,) or (n_clips, n_repeats).
        ddof: delta degrees of freedom of the std.

    Returns:
        HSD (same units as BHS); lower is more stable.
    """
    return _stability_deviation(bhs_values, ddof)


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
    1e-3 (the customary tolerance), otherwise a ValueError is raised because the
    result would be meaningless. A tiny negative total from round-off is clipped to
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
        raise ValueError(
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
        raise ValueError(f"method must be 'sqrtm' or 'eigh', got {method!r}")

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
            raise ValueError(
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
        raise ValueError(f"expected embeddings of shape (N >= 2, D), got {x.shape}")
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
            raise ValueError(f"fad needs two (N >= 2, D) arrays of equal D, got {a.shape} and {b.shape}")
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


def _as_prob_rows(p: np.ndarray, name: str) -> np.ndarray:
    """Validates class-probability rows (N, C) and renormalises each to sum 1."""
    x = np.atleast_2d(np.asarray(p, dtype=np.float64))
    if x.ndim != 2 or np.any(x < 0) or not np.all(np.isfinite(x)):
        raise ValueError(f"{name} must be non-negative finite probabilities of shape (N, C)")
    sums = x.sum(axis=1, keepdims=True)
    if np.any(sums <= 0):
        raise ValueError(f"{name} has a row with zero total probability")
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
        raise ValueError(f"p_ref {p.shape} and p_gen {q.shape} must have the same shape")
    q = np.maximum(q, eps)
    # 0 * log(0 / q) = 0 by convention; avoid evaluating log(0).
    terms = np.where(p > 0, p * (np.log(np.where(p > 0, p, 1.0)) - np.log(q)), 0.0)
    per_pair = terms.sum(axis=1)
    return float(per_pair.mean()) if reduce else per_pair


def inception_score(probs: np.ndarray, splits: int = 1) -> tuple[float, float]:
    """Inception Score (Salimans et al. 2016) of generated clips' class predictions.

    Definition: ``IS = exp(E_x KL(p(y|x) || p(y)))`` with ``p(y)`` the mean
    prediction over the set. The set is cut into ``splits`` equal chunks (in the
    given order, no shuffling), IS computed per chunk, and the mean and std over
    chunks returned, as in the reference implementation. The papers compute it on
    PANNs predictions (AudioLDM toolkit, 10 splits); we default to 1 split because
    our test sets are small and a chunk's marginal ``p(y)`` needs many clips.
    Natural log; IS ranges from 1 to the number of classes.

    Args:
        probs: class probabilities of the generated clips, shape (N, C); rows are
            renormalised to sum 1.
        splits: number of chunks (1 <= splits <= N).

    Returns:
        ``(mean, std)`` of the per-chunk scores (std 0 with one split).
    """
    p = _as_prob_rows(probs, "probs")
    n = p.shape[0]
    if not 1 <= splits <= n:
        raise ValueError(f"splits must be in [1, {n}], got {splits}")
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
# Control fidelity: melody accuracy, dynamics correlation
# ---------------------------------------------------------------------------


def _pitch_classes(x: np.ndarray, name: str) -> np.ndarray:
    """Frame-wise pitch classes from a (12, T) chroma or a (T,) index sequence."""
    a = np.asarray(x)
    if a.ndim == 1:
        return a.astype(np.int64)
    if a.ndim == 2 and a.shape[0] == 12:
        return np.argmax(a, axis=0)
    raise ValueError(f"{name} must be a (12, T) chroma or (T,) pitch classes, got {a.shape}")


def melody_accuracy(chroma_ref: np.ndarray, chroma_gen: np.ndarray) -> float:
    """Melody accuracy (HPM Appendix D.2, from Music ControlNet, Wu et al. 2023).

    Definition: the fraction of frames whose pitch class (argmax over the 12 chroma
    bins C, C#, ..., B) is the same in the melody control and in the chroma
    extracted from the generated audio. Either input may already be the (T,)
    sequence of pitch-class indices (the control is stored that way). If the
    lengths differ (a frame of padding at either end of the generated audio), the
    shorter length is used; pass equal hops and frame rates.

    Args:
        chroma_ref: control melody, (12, T) chroma or (T,) pitch classes 0-11.
        chroma_gen: chroma of the generated audio, (12, T') or (T',).

    Returns:
        Accuracy in [0, 1] (chance is about 1/12).
    """
    a = _pitch_classes(chroma_ref, "chroma_ref")
    b = _pitch_classes(chroma_gen, "chroma_gen")
    n = min(a.size, b.size)
    if n == 0:
        raise ValueError("melody_accuracy needs at least one frame")
    return float(np.mean(a[:n] == b[:n]))


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson r of two equal-length vectors; nan when either is constant."""
    xc = x - x.mean()
    yc = y - y.mean()
    denom = math.sqrt(float(xc @ xc) * float(yc @ yc))
    if denom == 0.0:
        return float("nan")
    return float(np.clip((xc @ yc) / denom, -1.0, 1.0))


def dynamics_correlation(
    dyn_ref_list: Sequence[np.ndarray], dyn_gen_list: Sequence[np.ndarray]
) -> dict[str, float]:
    """Dynamics correlation, micro and macro (HPM Appendix D.2, Music ControlNet).

    Definition: Pearson correlation between frame-wise dynamics values of the
    control (loudness curve, dB) and of the generated audio. Following HPM D.2 to
    the letter (and Music ControlNet, which HPM cites):

    * ``micro``: ``r`` computed for each generation separately, then averaged over
      generations. It asks whether relative dynamics are respected *within* a clip.
      Clips whose curve is constant (``r`` undefined) are left out and counted in
      ``n_clips - n_valid``.
    * ``macro``: all frames of all generations concatenated into one pair of vectors
      and a single ``r`` computed. It asks whether absolute levels are respected
      *across* generations.

    (Some write-ups swap the names; HPM D.2 says "Micro calculates r's for each
    generation separately, while macro collects input/generation dynamic values
    across all generations and computes a single r", which is what we do.) Pairs of
    unequal length are cut to the shorter one.

    Args:
        dyn_ref_list: per-clip control dynamics curves, each shape (T_i,).
        dyn_gen_list: per-clip dynamics of the generations, each shape (T_i',).

    Returns:
        Dict with ``micro``, ``macro`` (Pearson r in [-1, 1]; nan if undefined),
        ``n_clips`` and ``n_valid`` (clips entering the micro mean).
    """
    if len(dyn_ref_list) != len(dyn_gen_list) or not dyn_ref_list:
        raise ValueError("need the same, non-zero number of reference and generated curves")
    refs, gens, per_clip = [], [], []
    for r, g in zip(dyn_ref_list, dyn_gen_list):
        r = np.asarray(r, dtype=np.float64).reshape(-1)
        g = np.asarray(g, dtype=np.float64).reshape(-1)
        n = min(r.size, g.size)
        if n < 2:
            raise ValueError("each dynamics curve needs at least 2 frames")
        refs.append(r[:n])
        gens.append(g[:n])
        per_clip.append(_pearson(r[:n], g[:n]))
    valid = [c for c in per_clip if not math.isnan(c)]
    return {
        "micro": float(np.mean(valid)) if valid else float("nan"),
        "macro": _pearson(np.concatenate(refs), np.concatenate(gens)),
        "n_clips": len(per_clip),
        "n_valid": len(valid),
    }


# ---------------------------------------------------------------------------
# Music-structure statistics: PCHE, GPS, ADV
# ---------------------------------------------------------------------------


def _entropy_bits(hist: np.ndarray) -> float:
    """Shannon entropy (bits) of a non-negative histogram; nan if it is all zero."""
    total = hist.sum()
    if total <= 0:
        return float("nan")
    p = hist[hist > 0] / total
    return float(-(p * np.log2(p)).sum())


def pche(chroma: np.ndarray, window: int | None = None) -> float:
    """Pitch Class Histogram Entropy (Diff-BGM; MusDr, Wu & Yang 2020), from audio.

    Definition: the Shannon entropy, in bits, of the normalised 12-bin pitch-class
    histogram; 0 for a single pitch class, log2(12) = 3.585 for a uniform one
    (Diff-BGM's real BGM909 music: 2.717). Diff-BGM computes it from MIDI notes
    weighted by duration; we generate audio, so the histogram is the chroma energy
    summed over frames (a sustained pitch contributes in proportion to its
    duration and strength, the audio analogue of duration weighting). Use chroma
    without per-frame max normalisation if loudness should weigh in.

    Args:
        chroma: chroma, shape (12, T), non-negative (e.g. librosa ``chroma_stft``),
            or an already-summed histogram of shape (12,).
        window: if given, entropy of each non-overlapping block of ``window`` frames
            (MusDr's per-bar variant, ``window`` = frames per bar), averaged over
            blocks with any energy; None for one histogram over the whole clip.

    Returns:
        PCHE in bits, in [0, log2(12)]; nan if the chroma is all zero.
    """
    c = np.asarray(chroma, dtype=np.float64)
    if c.ndim == 1 and c.shape[0] == 12:
        return _entropy_bits(c)
    if c.ndim != 2 or c.shape[0] != 12 or np.any(c < 0):
        raise ValueError(f"chroma must be non-negative with shape (12, T), got {c.shape}")
    if window is None:
        return _entropy_bits(c.sum(axis=1))
    if window < 1:
        raise ValueError(f"window must be >= 1 frame, got {window}")
    blocks = [_entropy_bits(c[:, s : s + window].sum(axis=1)) for s in range(0, c.shape[1], window)]
    blocks = [b for b in blocks if not math.isnan(b)]
    return float(np.mean(blocks)) if blocks else float("nan")


def grooving_patterns(
    onset_times_s: Sequence[float] | np.ndarray,
    bar_duration: float,
    duration: float,
    positions_per_bar: int = 16,
    offset: float = 0.0,
) -> np.ndarray:
    """Audio grooving patterns: one binary onset-position vector per bar.

    Diff-BGM's GPS (from MusDr / the Jazz Transformer, Wu & Yang 2020) uses the
    grooving pattern of a MIDI bar: a binary vector over the bar's Q metrical
    positions, 1 where some note starts. We generate audio, not MIDI, so we build
    it from audio onsets: the time axis from ``offset`` is cut into bars of
    ``bar_duration`` seconds (e.g. 4 beats at the tempo from
    ``librosa.beat.beat_track``), each bar into ``positions_per_bar`` equal grid
    steps, and each onset is snapped to its nearest grid step (an onset snapping to
    the next bar's first step belongs to that bar). Only complete bars are kept: a
    cut-off last bar would have artificial silent positions.

    Args:
        onset_times_s: onset times (s).
        bar_duration: bar length (s).
        duration: clip length (s).
        positions_per_bar: grid resolution Q (16 = sixteenth notes in 4/4).
        offset: time of the first downbeat (s).

    Returns:
        Boolean array of shape (n_complete_bars, positions_per_bar).
    """
    if bar_duration <= 0 or positions_per_bar < 1:
        raise ValueError("bar_duration must be > 0 s and positions_per_bar >= 1")
    t = _as_times(onset_times_s, "onset_times_s")
    n_bars = max(0, int(math.floor((duration - offset) / bar_duration + 1e-9)))
    patterns = np.zeros((n_bars, positions_per_bar), dtype=bool)
    step = bar_duration / positions_per_bar
    grid = np.rint((t - offset) / step).astype(np.int64)
    grid = grid[(grid >= 0) & (grid < n_bars * positions_per_bar)]
    patterns[grid // positions_per_bar, grid % positions_per_bar] = True
    return patterns


def gps(patterns: np.ndarray, pairs: str = "all") -> float:
    """Grooving Pattern Similarity (Diff-BGM; MusDr, Wu & Yang 2020).

    Definition: for two bars' grooving patterns ``g_a, g_b`` over Q positions,
    ``GS(g_a, g_b) = 1 - (1/Q) * sum_q XOR(g_a[q], g_b[q])``; GPS is the mean GS
    over all pairs of bars of the clip (``pairs="all"``, the MusDr definition) or
    over consecutive bars only (``pairs="consecutive"``). Empty bars count like any
    other (two silent bars are identical). Build the patterns from audio onsets
    with :func:`grooving_patterns` (we generate audio, not MIDI).

    Args:
        patterns: binary array (n_bars, Q).
        pairs: ``"all"`` or ``"consecutive"``.

    Returns:
        GPS in [0, 1] (1 = every bar has the same rhythm; BGM909 real music: 0.708);
        nan with fewer than 2 bars.
    """
    g = np.asarray(patterns).astype(bool)
    if g.ndim != 2:
        raise ValueError(f"patterns must be (n_bars, Q), got {g.shape}")
    n_bars, q = g.shape
    if n_bars < 2:
        return float("nan")
    if pairs == "consecutive":
        xor = g[1:] ^ g[:-1]
        return float(1.0 - xor.mean())
    if pairs != "all":
        raise ValueError(f"pairs must be 'all' or 'consecutive', got {pairs!r}")
    ia, ib = np.triu_indices(n_bars, k=1)
    return float(1.0 - (g[ia] ^ g[ib]).mean())


def adv(accent_times: Sequence[float] | np.ndarray, threshold: float = 0.1) -> float:
    """Accent-Distance-Variance (Diff-BGM supplement section 3, eq. 2).

    Diff-BGM's ADV measures how regular the music's own accents are (small =
    rhythmic); it compares no video events. Following the text of eq. 2::

        ADV_raw = l * var(normalize(D)_deleted) / d_max
        ADV     = 2 * (sigmoid(ADV_raw) - 1/2)        # "half sigmoid, scaled by 2"

    * accents: detected per equal-length segment (:func:`segment_onset_times`);
    * ``D``: distances (s) between adjacent accents, ``d_max = max(D)`` (s);
    * ``normalize``: ``D / d_max`` (the paper does not say which normalisation; this
      one is scale-free and keeps the values in (0, 1]);
    * ``deleted``: normalised distances below ``threshold`` are removed (the paper
      drops small values "due to different forms of rhythmic presentation", e.g.
      flams and ornaments; its threshold is not published, ours is 0.1);
    * ``var``: population variance (numpy default);
    * ``l``: the number of detected accents (before deletion), which penalises
      dense, noisy accents as the paper intends.

    ``ADV_raw >= 0``, so ADV lies in [0, 1). Note ``ADV_raw`` has units 1/s (l and
    the variance are unitless, ``d_max`` is in seconds), as in the paper.

    Args:
        accent_times: accent/onset times of the music (s).
        threshold: deletion threshold on the normalised distances, in [0, 1).

    Returns:
        ADV in [0, 1); nan if fewer than 2 distances survive the deletion (no
        variance to measure).
    """
    t = np.sort(_as_times(accent_times, "accent_times"))
    if t.size < 3:
        return float("nan")
    d = np.diff(t)
    d_max = float(d.max())
    if d_max <= 0:
        return float("nan")
    kept = d / d_max
    kept = kept[kept >= threshold]
    if kept.size < 2:
        return float("nan")
    raw = t.size * float(np.var(kept)) / d_max
    return float(2.0 * (1.0 / (1.0 + math.exp(-raw)) - 0.5))


# ---------------------------------------------------------------------------
# Embedding similarity and retrieval: SIM, P@K
# ---------------------------------------------------------------------------


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
    pool_size: int = 32,
    seed: int = 0,
) -> dict[str, object]:
    """Retrieval precision P@K (Diff-BGM's video-music correspondence metric).

    Definition: query ``i`` (e.g. a video) has true partner ``cand_emb[i]`` (its
    generated music). Its retrieval pool is the partner plus ``pool_size - 1``
    negatives drawn without replacement from the other candidates, with a fixed
    seed so every method is scored on the same pools. Candidates are ranked by
    cosine similarity to the query; the hit is 1 when the partner is in the top
    ``k``. Ties count against the query (rank = 1 + number of negatives at least as
    similar as the partner, within 1e-9), so a collapsed encoder scores 0, not 100 %.
    P@K is the mean hit; chance level is ``k / pool_size``. With fewer candidates
    than ``pool_size`` the pool is all candidates.

    Args:
        query_emb: query embeddings, shape (N, D).
        cand_emb: candidate embeddings, shape (N, D), row i paired with query i.
        k: cut-off rank (>= 1).
        pool_size: candidates per query, partner included (>= 2).
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


def precision_at_k_from_similarity(sim_matrix: np.ndarray, k: int, pool_size: int = 32, seed: int = 0) -> dict[str, object]:
    """:func:`precision_at_k` from a precomputed (N, N) query x candidate similarity matrix.

    ``sim_matrix[i, j]`` is the similarity of query ``i`` to candidate ``j`` (partner:
    ``j = i``). Pools, tie rule and outputs are those of :func:`precision_at_k`, which
    calls this with the cosine matrix; computing the matrix once keeps the cost
    O(N^2) when the embeddings are wide (per-frame embeddings flattened).

    Args:
        sim_matrix: (N, N) similarities.
        k: cut-off rank (>= 1).
        pool_size: candidates per query, partner included (>= 2).
        seed: seed of the negative sampling.
    """
    sm = np.asarray(sim_matrix, dtype=np.float64)
    if sm.ndim != 2 or sm.shape[0] != sm.shape[1]:
        raise ValueError(f"need a square (N, N) similarity matrix, got {sm.shape}")
    n = sm.shape[0]
    if n < 2 or k < 1 or pool_size < 2:
        raise ValueError("need N >= 2 pairs, k >= 1 and pool_size >= 2")
    pool = min(pool_size, n)
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
        raise ValueError(f"features must be (N, D) and labels (N,), got {x.shape}, {y.shape}")
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
        raise ValueError("originality needs at least one class with >= 2 clips")
    values = list(per_class.values())
    out: dict[str, object] = {
        "originality": float(np.sum(values)),
        "originality_mean": float(np.mean(values)),
        "per_class_originality": per_class,
    }
    if predicted_labels is not None:
        pred = np.asarray(predicted_labels)
        if pred.shape != y.shape:
            raise ValueError("predicted_labels must have the same shape as labels")
        correct = pred == y
        out["recognizability"] = float(correct.mean())
        out["per_class_recognizability"] = {
            (cls.item() if hasattr(cls, "item") else cls): float(correct[y == cls].mean())
            for cls in np.unique(y)
        }
    return out


# ---------------------------------------------------------------------------
# Speed and statistics
# ---------------------------------------------------------------------------


def real_time_factor(audio_seconds: float, compute_seconds: float) -> float:
    """Seconds of audio generated per second of (wall-clock) compute.

    Definition: ``audio_seconds / compute_seconds``; > 1 is faster than real time.
    (Speech papers often quote the inverse, compute per audio second; ours grows
    with speed so that "higher is better" like the other throughput figures.)

    Args:
        audio_seconds: total duration of the generated audio (s).
        compute_seconds: wall-clock time spent generating it (s), > 0.

    Returns:
        The real-time factor (unitless).
    """
    if compute_seconds <= 0:
        raise ValueError(f"compute_seconds must be > 0, got {compute_seconds}")
    if audio_seconds < 0:
        raise ValueError(f"audio_seconds must be >= 0, got {audio_seconds}")
    return float(audio_seconds) / float(compute_seconds)


def _bootstrap_stats(
    columns: tuple[np.ndarray, ...],
    stat: Callable[..., object],
    combine: Callable[..., np.ndarray],
    n_boot: int,
    seed: int,
) -> np.ndarray:
    """Bootstrap replicates of ``stat(combine(*resampled columns))``."""
    n = columns[0].shape[0]
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
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
