"""Held-out evaluation of the contrastive encoders: retrieval P@K, SIM, synchronisation.

Plain functions over a trained :class:`soundtrack.models.encoders.ContrastiveModel` and
decoded shard rows (``soundtrack.data.shards.decode_row``); no Ray.

* **P@K** (Diff-BGM): video -> audio retrieval in pools of 32 candidates (the true
  partner + 31 others drawn with a fixed seed), K = 1, 5, 10; computed by
  :func:`soundtrack.metrics.precision_at_k` on full 10.24 s clips.
* **SIM** (MuVi Sec. 4.1): mean cosine similarity of paired video and audio embeddings
  (:func:`soundtrack.metrics.sim`; position-aware with per-frame embeddings).
* **Synchronisation accuracy** (ours, in the spirit of MuVi's use of its pretrained
  encoders as a synchronisation metric): for each test clip, is the aligned
  (video, audio) window scored higher than the same video with the audio window
  shifted by ``s`` frames (s = 1, 2, 3, 5, 10 frames = 0.1-1 s)? Both windows are cut
  from the same 10.24 s waveform (:func:`soundtrack.data.augment.crop_pair`), so
  only the alignment differs. Both directions (+s and -s) are tested; a tie counts
  half. Chance is 0.5.
* **Audio-only control**: the same test with every query's video replaced by one fixed
  clip's frames. The video then carries no information about the audio, so the
  accuracy should be ~0.5; a value far from 0.5 means the score prefers some audio
  windows over others by themselves (e.g. window position), which would inflate the
  real synchronisation accuracy.

Every number comes with a percentile bootstrap 95 % interval over clips
(:func:`soundtrack.metrics.bootstrap_ci`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from soundtrack.data.augment import ObjectiveConfig, crop_pair
from soundtrack.data.features import log_mel
from soundtrack.losses.contrastive import aligned_similarity
from soundtrack.metrics import bootstrap_ci, precision_at_k, sim


@dataclass(frozen=True)
class RetrievalConfig:
    """Settings of the held-out evaluation.

    Attributes:
        ks: cut-off ranks of P@K.
        pool_size: candidates per query (the encoder evaluation's own pool; Diff-BGM retrieves among 60).
        seed: seed of the pool sampling (fixed so every method gets the same pools).
        sim: ``"position"`` (default: MuVi's position-aware similarity, the one the
            pretraining loss optimises; it compares the per-frame embeddings time step by
            time step, so clips are told apart by *when* their events happen) or
            ``"pooled"`` (cosine of mean-pooled clip vectors, CLIP style; it discards the
            timing, and on the synthetic set a tiny model's pooled P@1 stays near chance
            while its position-aware P@1 is far above it).
        shifts_frames: audio shifts (video frames) of the synchronisation test.
        crop_s: window length (s) of the synchronisation test; 8 s leaves 2.24 s of a
            10.24 s clip for shifts in both directions.
        n_boot: bootstrap resamples.
        alpha: 1 - confidence level of the intervals.
        batch_size: clips per encoder forward pass.
        streams: audio streams to evaluate (``"music"``, ``"sfx"``).
    """

    ks: tuple[int, ...] = (1, 5, 10)
    pool_size: int = 32
    seed: int = 0
    sim: Literal["pooled", "position"] = "position"
    shifts_frames: tuple[int, ...] = (1, 2, 3, 5, 10)
    crop_s: float = 8.0
    n_boot: int = 1000
    alpha: float = 0.05
    batch_size: int = 16
    streams: tuple[str, ...] = ("music", "sfx")

    def objective(self) -> ObjectiveConfig:
        """The crop settings as an :class:`ObjectiveConfig` (for :func:`crop_pair`)."""
        return ObjectiveConfig(crop_s=self.crop_s)


def _ci(values: np.ndarray, cfg: RetrievalConfig) -> dict[str, float]:
    point, lo, hi = bootstrap_ci(values, n_boot=cfg.n_boot, alpha=cfg.alpha, seed=cfg.seed)
    return {"value": point, "ci_low": lo, "ci_high": hi, "n": int(np.size(values))}


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _audio_input(model, stream: str, mels: Sequence[np.ndarray], wavs: Sequence[np.ndarray]) -> torch.Tensor:
    """The stacked input the stream's backbone takes (log-mels or 16 kHz waveforms)."""
    if model.audio_input(stream) == "mel":
        return torch.from_numpy(np.stack([np.asarray(m, dtype=np.float32) for m in mels]))
    return torch.from_numpy(np.stack([np.asarray(w, dtype=np.float32) for w in wavs]))


@torch.no_grad()
def _encode_audio(model, stream: str, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    enc = model.encode_music if stream == "music" else model.encode_sfx
    dev = _device(model)
    return torch.cat([enc(x[i : i + batch_size].to(dev)).cpu() for i in range(0, len(x), batch_size)])


@torch.no_grad()
def _encode_video(model, frames: torch.Tensor, batch_size: int) -> dict[str, torch.Tensor]:
    dev = _device(model)
    outs = [model.encode_video_both(frames[i : i + batch_size].to(dev)) for i in range(0, len(frames), batch_size)]
    return {"music": torch.cat([o[0].cpu() for o in outs]), "sfx": torch.cat([o[1].cpu() for o in outs])}


def embed_clips(model, rows: Sequence[Mapping[str, Any]], cfg: RetrievalConfig = RetrievalConfig()) -> dict[str, np.ndarray]:
    """Per-frame embeddings of full clips (stored mels, all frames).

    Args:
        model: a ContrastiveModel (put in eval mode here).
        rows: decoded shard rows with ``frames`` and, per stream ``s``, ``mel_s`` (conv
            backbone) or ``wav_s`` (HTSAT backbone).
        cfg: evaluation settings.

    Returns:
        Dict with ``video_music``, ``video_sfx`` and one entry per stream, each float32
        (N, T, E) with unit vectors per frame.
    """
    model.eval()
    frames = torch.from_numpy(np.stack([np.asarray(r["frames"]) for r in rows]))
    out = {f"video_{k}": v.numpy() for k, v in _encode_video(model, frames, cfg.batch_size).items()}
    for s in cfg.streams:
        x = _audio_input(model, s, [r.get(f"mel_{s}") for r in rows], [r.get(f"wav_{s}") for r in rows])
        a = _encode_audio(model, s, x, cfg.batch_size).numpy()
        t = min(a.shape[1], out[f"video_{s}"].shape[1])
        out[s] = a[:, :t]
        out[f"video_{s}"] = out[f"video_{s}"][:, :t]
    return out


def retrieval_metrics(video: np.ndarray, audio: np.ndarray, cfg: RetrievalConfig = RetrievalConfig()) -> dict[str, Any]:
    """P@K (video -> audio) and SIM of paired per-frame embeddings, with intervals.

    For ``sim="position"`` the clips are compared by MuVi's position-aware similarity:
    with unit per-frame vectors, the cosine of the flattened (T * E) vectors equals the
    mean over frames of the per-frame cosines, so :func:`precision_at_k` on flattened
    embeddings ranks by exactly that similarity.

    Args:
        video: (N, T, E) per-frame video embeddings (query i pairs with audio i).
        audio: (N, T, E) per-frame audio embeddings.
        cfg: evaluation settings.

    Returns:
        Dict ``{"p_at_1": {value, ci_low, ci_high, n}, ..., "sim": {...}, "ranks": (N,)}``.
    """
    v = np.asarray(video, dtype=np.float64)
    a = np.asarray(audio, dtype=np.float64)
    if cfg.sim == "position":
        q, c = v.reshape(len(v), -1), a.reshape(len(a), -1)
        per_pair = sim(v, a, reduce=False)
    else:
        q, c = v.mean(1), a.mean(1)
        per_pair = sim(q, c, reduce=False)
    out: dict[str, Any] = {}
    ranks = None
    for k in cfg.ks:
        res = precision_at_k(q, c, k=k, pool_size=cfg.pool_size, seed=cfg.seed)
        out[f"p_at_{k}"] = {**_ci(res["hits"].astype(np.float64), cfg), "chance": res["chance"]}
        ranks = res["ranks"]
    out["sim"] = _ci(per_pair, cfg)
    out["ranks"] = ranks
    return out


def sync_accuracy(
    model,
    rows: Sequence[Mapping[str, Any]],
    cfg: RetrievalConfig = RetrievalConfig(),
    stream: str = "music",
    control: bool = False,
) -> dict[str, Any]:
    """Synchronisation accuracy against audio shifted by whole frames.

    Per clip, the window starts at the middle of the allowed offsets (so shifts of up
    to half of the 2.24 s slack fit in both directions), the frames are cropped to it,
    and the audio is cropped at that offset (positive) and at offset +- s frames
    (negatives); the mels of all crops come from ``features.log_mel``. The score is the
    position-aware similarity of the video embedding (in the stream's space) with each
    audio embedding. A clip's accuracy at shift s is the mean over the feasible
    directions of 1 (positive higher), 0.5 (tie) or 0.

    Args:
        model: a ContrastiveModel.
        rows: decoded rows with ``frames`` and ``wav_<stream>``.
        cfg: evaluation settings.
        stream: ``"music"`` or ``"sfx"``.
        control: replace every query's video by the first clip's frames (audio-only
            control; expect ~0.5).

    Returns:
        Dict ``{"shift_<s>": {value, ci_low, ci_high, n}, ..., "mean": {...},
        "per_clip": (N, n_shifts) array}`` (NaN where no direction fitted).
    """
    model.eval()
    ocfg = cfg.objective()
    step = ocfg.samples_per_frame
    crops_frames, audio_crops, index = [], [], []
    for i, row in enumerate(rows):
        wav = np.asarray(row[f"wav_{stream}"], dtype=np.float32)
        frames = np.asarray(row["frames"])
        max_off_f = min((len(wav) - ocfg.crop_samples) // step, frames.shape[0] - ocfg.crop_frames)
        if max_off_f < 0:
            raise ValueError(f"clip {row.get('clip_id', i)} is shorter than the {cfg.crop_s} s window")
        o_f = max_off_f // 2
        f, pos = crop_pair(frames, wav, o_f, ocfg)
        crops_frames.append(f)
        entries = [(i, 0, 0)]
        audio_crops.append(pos)
        for j, s in enumerate(cfg.shifts_frames):
            for sign in (1, -1):
                lo = (o_f + sign * s) * step
                if 0 <= lo and lo + ocfg.crop_samples <= len(wav):
                    _, neg = crop_pair(frames, wav, o_f, ocfg, audio_shift=sign * s * step)
                    audio_crops.append(neg)
                    entries.append((i, j + 1, sign))
        index.extend(entries)
    if control:
        crops_frames = [crops_frames[0]] * len(crops_frames)
    video = _encode_video(model, torch.from_numpy(np.stack(crops_frames)), cfg.batch_size)[stream]
    mels = [log_mel(w, ocfg.features) for w in audio_crops] if model.audio_input(stream) == "mel" else None
    x = _audio_input(model, stream, mels or [], audio_crops)
    audio = _encode_audio(model, stream, x, cfg.batch_size)

    clip_idx = torch.tensor([e[0] for e in index])
    scores = aligned_similarity(video[clip_idx], audio).numpy()
    n, ns = len(rows), len(cfg.shifts_frames)
    pos_score = np.full(n, np.nan)
    wins = [[[] for _ in range(ns)] for _ in range(n)]
    for (i, j, _), sc in zip(index, scores):
        if j == 0:
            pos_score[i] = sc
    for (i, j, _), sc in zip(index, scores):
        if j > 0:
            wins[i][j - 1].append(1.0 if pos_score[i] > sc else 0.5 if pos_score[i] == sc else 0.0)
    per_clip = np.array([[np.mean(w) if w else np.nan for w in clip] for clip in wins], dtype=np.float64)
    out: dict[str, Any] = {"per_clip": per_clip}
    for j, s in enumerate(cfg.shifts_frames):
        col = per_clip[:, j]
        col = col[np.isfinite(col)]
        out[f"shift_{s}"] = _ci(col, cfg) if col.size else {"value": float("nan"), "n": 0}
    clip_mean = np.nanmean(per_clip, axis=1)
    out["mean"] = _ci(clip_mean[np.isfinite(clip_mean)], cfg)
    return out


def evaluate_retrieval(model, rows: Sequence[Mapping[str, Any]], cfg: RetrievalConfig = RetrievalConfig()) -> dict[str, Any]:
    """Every held-out number of the contrastive encoders, per audio stream.

    Args:
        model: a ContrastiveModel.
        rows: decoded held-out rows (``frames``, ``mel_*`` and ``wav_*`` per stream).
        cfg: evaluation settings.

    Returns:
        ``{stream: {"retrieval": retrieval_metrics(...), "sync": sync_accuracy(...),
        "sync_control": sync_accuracy(..., control=True)}}`` plus ``"n_clips"``.
    """
    emb = embed_clips(model, rows, cfg)
    out: dict[str, Any] = {"n_clips": len(rows)}
    for s in cfg.streams:
        out[s] = {
            "retrieval": retrieval_metrics(emb[f"video_{s}"], emb[s], cfg),
            "sync": sync_accuracy(model, rows, cfg, stream=s),
            "sync_control": sync_accuracy(model, rows, cfg, stream=s, control=True),
        }
    return out
