"""Cross-attention methods of the soundtrack UNet: global and Diff-BGM's segment-aware.

The condition tokens (see :class:`soundtrack.models.unet.SoundtrackDenoiser`) are one
sequence; each token has a *kind* (null, video, music, sfx, text) and a *time* in seconds
(video-derived tokens: frame ``j`` at ``j / fps``; text and the null token: NaN, meaning
"not tied to a time").

Methods:

* ``"global"``: every latent position attends to every token (AudioLDM-VA, the CCCG
  baseline with the text condition replaced by the video's).
* ``"segment"``: Diff-BGM's segment-aware cross-attention (Diff-BGM supplement eq. 1,
  ``Mask[i, j] = 1 iff k*g <= i, j < k*(g+1)``). The paper's mask is square because its
  music and video sequences have the same length; here they do not (a 10.24 s clip has
  103 frames at 10 fps and ``T_l`` latent columns, 64 for the tiny latent, fewer at the
  UNet's lower levels), so the rule is restated in time: ``k`` counts **video frames**;
  latent column ``i`` of ``T_l`` sits at ``t_i = (i + 1/2) D / T_l`` seconds for a clip of
  ``D`` seconds and belongs to segment ``floor(fps * t_i / k)``; a video-derived token of
  frame ``f = round(fps * time)`` belongs to segment ``floor(f / k)``; a column attends
  only to tokens of its own segment. With equal lengths and ``T_l = fps * D`` this is eq. 1.
  Text and null tokens are never masked.
* ``"dynamic"``: the segments are the video's shots (Diff-BGM's "dynamic" row of Tab. 2
  chooses k from the shot durations; we use the shot boundaries themselves, which is what
  that choice approximates): boundaries are the frame indices where a new shot starts
  (``features.shot_boundaries``; fractional frames allowed after windowing); the segment of
  a column or token is the number of boundaries at or before its frame position.

Every query position of a UNet level with hidden states ``(B, H_l * W_l, C)`` (row-major
over frequency x time) takes the column ``q mod W_l``; ``(H_l, W_l)`` is derived from the
top-level latent size by halving with ceiling until ``H_l * W_l`` equals the sequence length.

Diff-BGM's feature selector (supplement Sec. 2.1 / 3: language features for timesteps
1000..200, video features for 200..0) is :func:`feature_selector_keep`: at training timestep
``t >= tau`` only text tokens (and the null token) are visible, at ``t < tau`` only
video-derived ones. When an example has no text at all, its video tokens stay visible at
every step (the selector then does nothing), so a text-free model is unaffected.

Implementation notes: diffusers passes ``cross_attention_kwargs`` to every attention
layer's processor but silently drops keys that are not **named** parameters of the
processor's ``__call__`` (a bare ``**kwargs`` does not count), so
:class:`SoundtrackAttnProcessor` names each of its inputs. The same processor is installed
on the self-attention layers too (they receive the same kwargs); there it is plain
attention. A query row with no visible token (impossible with the always-visible null
token of our denoiser, possible for other callers) gets a zero attention output instead of
the NaN a fully masked softmax would give.
"""

from __future__ import annotations

import math
from typing import Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F

Method = Literal["global", "segment", "dynamic"]
METHODS = ("global", "segment", "dynamic")

# Token kinds (ids stored per token).
KIND_NULL, KIND_VIDEO, KIND_MUSIC, KIND_SFX, KIND_TEXT = 0, 1, 2, 3, 4
VIDEO_KINDS = (KIND_VIDEO, KIND_MUSIC, KIND_SFX)

# Floating-point slack when a column's frame position lands exactly on a segment edge
# (e.g. t = 3.2 s at 10 fps = frame 32.000000000000004 or 31.999999999999996).
_EPS = 1e-9


def column_times(n_columns: int, clip_seconds: float) -> np.ndarray:
    """Centre times (s) of ``n_columns`` equal latent columns over a clip: (i + 1/2) D / T_l.

    Args:
        n_columns: T_l.
        clip_seconds: D.

    Returns:
        float64 array (T_l,).
    """
    return (np.arange(n_columns, dtype=np.float64) + 0.5) * (float(clip_seconds) / n_columns)


def _segments_of_positions(pos: np.ndarray, k: int | str, shots: Sequence[float] | None) -> np.ndarray:
    """Segment id of frame positions ``pos`` (float frames) for fixed ``k`` or shots."""
    if k == "dynamic":
        bounds = np.sort(np.asarray([] if shots is None else shots, dtype=np.float64))
        return np.searchsorted(bounds, pos + _EPS, side="right")
    return np.floor((pos + _EPS) / int(k)).astype(np.int64)


def segment_mask(
    n_columns: int,
    clip_seconds: float,
    token_times: Sequence[float] | np.ndarray | torch.Tensor,
    k: int | str,
    shots: Sequence[float] | np.ndarray | None = None,
    fps: float = 10.0,
) -> torch.Tensor:
    """Segment-aware cross-attention mask between latent columns and tokens.

    Rule (module docstring): column ``i`` at ``t_i = (i + 1/2) D / T_l`` is in segment
    ``floor(fps t_i / k)``; a token at time ``s`` (frame ``round(fps s)``) is in segment
    ``floor(round(fps s) / k)``; with ``k = "dynamic"`` segments are the shots given by
    ``shots`` (start frames of new shots). Tokens with NaN time are visible to all columns.

    Args:
        n_columns: T_l, latent columns across the clip.
        clip_seconds: D, the clip length (s).
        token_times: (n_tokens,) times in seconds, NaN for time-free tokens.
        k: window size in video frames (4, 8, 16, 32 in Diff-BGM; any positive int) or
            ``"dynamic"``.
        shots: shot-start frame indices for ``k="dynamic"`` (None or empty: one segment).
        fps: video frame rate (frames/s).

    Returns:
        bool tensor (T_l, n_tokens), True where column i may attend to token j.
    """
    if k != "dynamic" and (not isinstance(k, (int, np.integer)) or k < 1):
        raise ValueError(f"k must be a positive int or 'dynamic', got {k!r}")
    times = np.asarray(token_times.detach().cpu() if torch.is_tensor(token_times) else token_times, dtype=np.float64)
    free = np.isnan(times)
    tok_frames = np.round(np.where(free, 0.0, times) * fps)
    col_pos = column_times(n_columns, clip_seconds) * fps
    col_seg = _segments_of_positions(col_pos, k, shots)
    tok_seg = _segments_of_positions(tok_frames, k, shots)
    mask = (col_seg[:, None] == tok_seg[None, :]) | free[None, :]
    return torch.from_numpy(mask)


def level_shape(n_queries: int, latent_hw: tuple[int, int]) -> tuple[int, int]:
    """(H_l, W_l) of the UNet level whose flattened size is ``n_queries``.

    Each level halves the previous one with ceiling (diffusers' stride-2 convolutions with
    padding 1), starting from the latent size.

    Args:
        n_queries: sequence length of the hidden states.
        latent_hw: (H, W) of the latent at the UNet input.

    Raises:
        ValueError: if no level has that size.
    """
    h, w = int(latent_hw[0]), int(latent_hw[1])
    while True:
        if h * w == n_queries:
            return h, w
        if h == 1 and w == 1:
            raise ValueError(f"no UNet level of latent {tuple(latent_hw)} has {n_queries} positions")
        h, w = -(-h // 2), -(-w // 2)


def feature_selector_keep(
    kinds: torch.Tensor,
    timesteps: torch.Tensor,
    has_text: torch.Tensor,
    tau: int = 200,
) -> torch.Tensor:
    """Diff-BGM's feature selector as a token mask (B, n_tokens).

    Example ``b`` with text: at ``t_b >= tau`` text and null tokens are visible, at
    ``t_b < tau`` video-derived and null tokens. Without text: everything stays visible.

    Args:
        kinds: (n_tokens,) token kinds.
        timesteps: (B,) training-scale timesteps (0..999).
        has_text: (B,) bool, whether the example has any text token.
        tau: switch timestep (200 in Diff-BGM).
    """
    kinds = kinds.to(timesteps.device)
    is_text = kinds == KIND_TEXT
    is_video = (kinds == KIND_VIDEO) | (kinds == KIND_MUSIC) | (kinds == KIND_SFX)
    early = (timesteps >= tau)[:, None]  # (B, 1): the noisy, "melody" phase
    keep = torch.where(early, ~is_video[None, :], ~is_text[None, :])
    return keep | ~has_text.to(timesteps.device)[:, None]


def column_masks(
    n_columns: int,
    clip_seconds: float,
    token_times: torch.Tensor,
    method: Method,
    window_k: int,
    shots: Sequence[Sequence[float] | None] | None,
    batch_size: int,
    fps: float,
) -> torch.Tensor | None:
    """Per-example (B, T_l, n_tokens) masks of a method, or None for ``"global"``.

    Args:
        n_columns: T_l at this level.
        clip_seconds: D.
        token_times: (n_tokens,) seconds (NaN = free).
        method: ``"global"``, ``"segment"`` or ``"dynamic"``.
        window_k: k for ``"segment"``.
        shots: per-example shot starts for ``"dynamic"`` (length B).
        batch_size: B.
        fps: video frame rate.
    """
    if method == "global":
        return None
    if method == "segment":
        m = segment_mask(n_columns, clip_seconds, token_times, int(window_k), fps=fps)
        return m.unsqueeze(0).expand(batch_size, -1, -1)
    if method == "dynamic":
        if shots is None:
            shots = [None] * batch_size
        if len(shots) != batch_size:
            raise ValueError(f"need one shot list per example ({batch_size}), got {len(shots)}")
        return torch.stack([segment_mask(n_columns, clip_seconds, token_times, "dynamic", s, fps) for s in shots])
    raise ValueError(f"unknown attention method {method!r} ({', '.join(METHODS)})")


class SoundtrackAttnProcessor:
    """Attention processor for every attention layer of the UNet (self and cross).

    Self-attention (``encoder_hidden_states is None``): plain scaled-dot-product attention.
    Cross-attention: the tokens visible to each query are ``token_keep[b]`` (per-example
    key mask: feature selector, padding) AND, for ``"segment"`` / ``"dynamic"``, the
    segment mask of the query's time column (module docstring).

    Args:
        method: default method (``"global"``, ``"segment"``, ``"dynamic"``).
        window_k: default window size k (video frames) of ``"segment"``.
        fps: video frame rate (frames/s) that token times refer to.
    """

    def __init__(self, method: Method = "global", window_k: int = 8, fps: float = 10.0):
        if method not in METHODS:
            raise ValueError(f"unknown attention method {method!r} ({', '.join(METHODS)})")
        self.method = method
        self.window_k = int(window_k)
        self.fps = float(fps)

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        token_times: np.ndarray | torch.Tensor | None = None,
        token_keep: torch.Tensor | None = None,
        shots: Sequence[Sequence[float] | None] | None = None,
        latent_hw: tuple[int, int] | None = None,
        clip_seconds: float | None = None,
        attention_method: Method | None = None,
        window_k: int | None = None,
    ) -> torch.Tensor:
        """Runs the layer.

        Args:
            attn: the diffusers ``Attention`` module.
            hidden_states: (B, N, C) or (B, C, H, W) queries.
            encoder_hidden_states: (B, n_tokens, D) condition tokens; None for self-attention.
            attention_mask: diffusers' additive mask (from ``encoder_attention_mask``).
            temb: time embedding (for spatial norms; unused by our UNet).
            token_times: (n_tokens,) seconds, NaN = never masked by time.
            token_keep: (B, n_tokens) bool key mask.
            shots: per-example shot starts (frames) for ``"dynamic"``.
            latent_hw: (H, W) of the UNet's input latent (to find each level's width).
            clip_seconds: clip length D (s).
            attention_method: overrides the processor's method for this call.
            window_k: overrides the processor's k for this call.

        Returns:
            the layer output, same shape as ``hidden_states``.
        """
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            b4, c4, h4, w4 = hidden_states.shape
            hidden_states = hidden_states.view(b4, c4, h4 * w4).transpose(1, 2)
        batch, n_queries, _ = hidden_states.shape
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        is_cross = encoder_hidden_states is not None
        context = encoder_hidden_states if is_cross else hidden_states
        if is_cross and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        n_keys = context.shape[1]

        # 1. Which keys each query may see (cross-attention only).
        keep = None
        if is_cross:
            method = attention_method or self.method
            k = int(window_k or self.window_k)
            if method != "global":
                if token_times is None or latent_hw is None or clip_seconds is None:
                    raise ValueError(f"attention {method!r} needs token_times, latent_hw and clip_seconds")
                h_l, w_l = level_shape(n_queries, latent_hw)
                cols = column_masks(w_l, clip_seconds, token_times, method, k, shots, batch, self.fps)
                cols = cols.to(hidden_states.device)
                # query q of the row-major (H_l, W_l) grid is in time column q mod W_l
                keep = cols.unsqueeze(1).expand(batch, h_l, w_l, n_keys).reshape(batch, n_queries, n_keys)
            if token_keep is not None:
                tk = token_keep.to(hidden_states.device).bool()[:, None, :]
                keep = tk.expand(batch, n_queries, n_keys) if keep is None else keep & tk

        # 2. Diffusers' own additive mask, if any.
        bias = None
        if attention_mask is not None:
            bias = attn.prepare_attention_mask(attention_mask, n_keys, batch)
            bias = bias.view(batch, attn.heads, -1, bias.shape[-1])

        # 3. Projections.
        query = attn.to_q(hidden_states)
        key = attn.to_k(context)
        value = attn.to_v(context)
        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        key = key.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        value = value.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        # 4. Attention with the combined mask; empty rows are opened, then zeroed.
        empty = None
        mask = None
        if keep is not None:
            empty = ~keep.any(dim=-1)  # (B, N)
            # (meta tensors have no values to test; shapes are all that matters there)
            if empty.device.type != "meta" and bool(empty.any()):
                keep = keep | empty[..., None]
            else:
                empty = None
            mask = keep[:, None]  # (B, 1, N, n_keys), broadcast over heads
            if bias is not None:
                mask = bias + torch.where(mask, 0.0, -math.inf).to(bias.dtype)
        elif bias is not None:
            mask = bias
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=0.0, is_causal=False)
        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
        if empty is not None:
            out = out.masked_fill(empty[..., None], 0.0)

        # 5. Output projection, residual, rescale (as diffusers' default processor).
        out = attn.to_out[0](out)
        out = attn.to_out[1](out)
        if input_ndim == 4:
            out = out.transpose(-1, -2).reshape(b4, c4, h4, w4)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor
