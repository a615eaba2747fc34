"""Contrastive video-sound-music objective: similarities and InfoNCE (no Ray).

Objective (CCCG supplement Sec. 6.2 + MuVi Sec. 3.2):

* Symmetric InfoNCE (CLIP) between video and music, video and sound effects and,
  optionally, music and sound effects and text and music, with one learnable
  temperature (``ContrastiveModel.logit_scale``: log(1/T), T starts at 0.07, 1/T clamped
  to 100 as in CLIP).
* MuVi's position-aware similarity ``s(v, a) = (1/T) sum_t cos(v_t, a_t)`` between the
  per-frame video embeddings and the per-step audio embeddings (so a temporally shifted
  audio scores lower than the aligned one), with MuVi's two extra negatives per positive
  (a beat-aware temporal shift and a random segment replacement) as extra columns.

The batches (crops and those negatives, with the paper details we had to choose) come
from :mod:`soundtrack.data.augment`; its :class:`~soundtrack.data.augment.ObjectiveConfig`
holds the settings of both.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from soundtrack.data.augment import VARIANTS, ObjectiveConfig

# ----------------------------------------------------------------------------- negatives


# ----------------------------------------------------------------------------- batches


# ----------------------------------------------------------------------------- similarity


def position_similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """MuVi's position-aware similarity of every pair: mean over steps of the cosine.

    Args:
        a: (Na, T, E) per-step unit vectors.
        b: (Nb, T, E) per-step unit vectors.

    Returns:
        (Na, Nb) matrix ``S[i, j] = (1/T) sum_t <a_i,t, b_j,t>``.
    """
    t = min(a.shape[1], b.shape[1])
    return torch.einsum("ite,jte->ij", a[:, :t], b[:, :t]) / t


def aligned_similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Position-aware similarity of matching rows only: (N, T, E) x (N, T, E) -> (N,)."""
    t = min(a.shape[1], b.shape[1])
    return (a[:, :t] * b[:, :t]).sum(-1).mean(-1)


def pooled_similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine of mean-pooled clip vectors of every pair: (Na, T, E) x (Nb, T, E) -> (Na, Nb)."""
    return F.normalize(a.mean(1), dim=-1) @ F.normalize(b.mean(1), dim=-1).T


def _soft_targets(group: torch.Tensor | None, n: int, device) -> torch.Tensor:
    """Target distribution per row: uniform over the items of the same group (identity if None)."""
    if group is None:
        return torch.eye(n, device=device)
    same = (group[:, None] == group[None, :]).to(torch.float32).to(device)
    return same / same.sum(1, keepdim=True)


def info_nce(logits: torch.Tensor, group: torch.Tensor | None = None, extra_row_logits: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric InfoNCE (CLIP) over a square logit matrix.

    Args:
        logits: (N, N) scaled similarities; entry (i, j) pairs query i with candidate j,
            the diagonal holds the positives.
        group: (N,) ids; items of one group (e.g. clips of one source, identical
            captions) are all positives of each other (soft targets) instead of
            false negatives.
        extra_row_logits: (N, K) extra negatives appended to each row of the
            row-to-column direction only (MuVi's shifted/replaced audio).

    Returns:
        Scalar loss: mean of the row-wise and column-wise cross-entropies.
    """
    n = logits.shape[0]
    target = _soft_targets(group, n, logits.device)
    rows = logits
    row_target = target
    if extra_row_logits is not None:
        rows = torch.cat([logits, extra_row_logits], dim=1)
        row_target = torch.cat([target, torch.zeros_like(extra_row_logits)], dim=1)
    loss_rows = -(row_target * F.log_softmax(rows, dim=1)).sum(1).mean()
    loss_cols = -(target * F.log_softmax(logits.T, dim=1)).sum(1).mean()
    return 0.5 * (loss_rows + loss_cols)


# ----------------------------------------------------------------------------- loss


def _encode_stream(model, stream: str, batch: Mapping[str, Any], device) -> torch.Tensor:
    """Per-step embeddings (B, V, T, E) of all variants of one stream."""
    kind = model.audio_input(stream)
    key = stream if kind == "mel" else f"{stream}_wav"
    if key not in batch:
        raise KeyError(f"batch lacks {key!r}: the {stream} backbone takes {kind} input (set keep_wav=True)")
    x = batch[key].to(device)
    b, v = x.shape[:2]
    enc = model.encode_music if stream == "music" else model.encode_sfx
    z = enc(x.flatten(0, 1))
    return z.view(b, v, *z.shape[1:])


def contrastive_loss(model, batch: Mapping[str, Any], cfg: ObjectiveConfig = ObjectiveConfig()) -> tuple[torch.Tensor, dict[str, float]]:
    """The pretraining loss of one batch from :func:`make_batch`.

    ``loss = w_vm L(video, music) + w_vs L(video, sfx) + w_ms L(music, sfx)
    + w_tm L(text, music) [+ w_sync * mean over sync streams of L_sync]`` where each L is
    the symmetric InfoNCE with the model's temperature, on position-aware (``sim=
    "position"``) or pooled similarities. With ``sync_loss="joint"`` each video row of a
    video-audio term also contains that clip's shifted and replaced audio as negatives
    (MuVi Eq. 2); with ``"separate"`` L_sync is the cross-entropy of the positive in a
    softmax over [positive, shifted, replaced] position-aware scores of each clip.

    Args:
        model: a :class:`soundtrack.models.encoders.ContrastiveModel`.
        batch: output of :func:`make_batch`.
        cfg: objective config (the same one that built the batch).

    Returns:
        ``(loss, logs)``: scalar tensor with gradient and a dict of floats (each term,
        the temperature, in-batch top-1 accuracies, and the fraction of clips whose
        positive beats both its negatives, per stream).
    """
    device = model.logit_scale.device
    scale = model.scale()
    group = batch.get("group")
    group = group.to(device) if group is not None else None
    v_music, v_sfx = model.encode_video_both(batch["frames"].to(device))
    video = {"music": v_music, "sfx": v_sfx}
    audio = {s: _encode_stream(model, s, batch, device) for s in cfg.streams}
    sim_fn = position_similarity if cfg.sim == "position" else pooled_similarity
    weights = {"music": cfg.w_video_music, "sfx": cfg.w_video_sfx}

    total = torch.zeros((), device=device)
    logs: dict[str, float] = {}
    sync_terms = []
    for s in cfg.streams:
        v, a = video[s], audio[s]
        pos = a[:, 0]
        sims = sim_fn(v, pos)
        extra = None
        if s in cfg.sync_streams and cfg.sync_loss != "none" and a.shape[1] == len(VARIANTS):
            neg = torch.stack([aligned_similarity(v, a[:, k]) for k in (1, 2)], dim=1)  # (B, 2)
            neg_d = neg.detach()
            pos_pa = aligned_similarity(v, pos)
            if cfg.sync_loss == "joint":
                extra = scale * neg
            else:
                three = scale * torch.cat([pos_pa[:, None], neg], dim=1)
                sync_terms.append(F.cross_entropy(three, torch.zeros(len(three), dtype=torch.long, device=device)))
            beats = pos_pa.detach()[:, None] > neg_d
            logs[f"sync_acc_{s}_shift"] = float(beats[:, 0].float().mean())
            logs[f"sync_acc_{s}_replace"] = float(beats[:, 1].float().mean())
            logs[f"sim_{s}_shifted"] = float(neg_d[:, 0].mean())
            logs[f"sim_{s}_replaced"] = float(neg_d[:, 1].mean())
        term = info_nce(scale * sims, group, extra)
        logs[f"loss_video_{s}"] = float(term.detach())
        sims_d = sims.detach()
        logs[f"acc_video_{s}"] = float((sims_d.argmax(1) == torch.arange(len(sims_d), device=device)).float().mean())
        logs[f"sim_{s}_positive"] = float(sims_d.diagonal().mean())
        total = total + weights[s] * term
    if cfg.w_music_sfx > 0 and {"music", "sfx"} <= set(cfg.streams):
        term = info_nce(scale * sim_fn(audio["music"][:, 0], audio["sfx"][:, 0]), group)
        logs["loss_music_sfx"] = float(term.detach())
        total = total + cfg.w_music_sfx * term
    if cfg.w_text_music > 0 and "music" in cfg.streams:
        text = model.encode_text(batch["caption"])
        music_clip = F.normalize(audio["music"][:, 0].mean(1), dim=-1)
        captions = batch["caption"]
        cid = {c: k for k, c in enumerate(dict.fromkeys(captions))}
        text_group = torch.tensor([cid[c] for c in captions], device=device)
        term = info_nce(scale * text @ music_clip.T, text_group)
        logs["loss_text_music"] = float(term.detach())
        total = total + cfg.w_text_music * term
    if sync_terms:
        term = torch.stack(sync_terms).mean()
        logs["loss_sync"] = float(term.detach())
        total = total + cfg.w_sync * term
    logs["loss"] = float(total.detach())
    logs["temperature"] = float(1.0 / scale.detach())
    return total, logs


