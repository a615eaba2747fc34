"""The latent denoiser: a diffusers ``UNet2DConditionModel`` conditioned on the video.

Latents are ``(B, C, F_l, T_l)`` (frequency = height, **time = width**; see
:mod:`soundtrack.models.vae`). Conditions come from the input video (and an optional
prompt), bundled in :class:`Conditions`:

* ``video`` (B, Tv, Dv): per-frame video embeddings at ``fps`` (10) frames per second;
* ``music`` / ``sfx`` (B, Tv, D): the video's per-frame projections into the music and
  sound-effect spaces of the contrastive pretraining (CCCG's two condition streams);
* ``text`` (B, Lt, Dt) or (B, Dt): optional caption / prompt tokens (``text_mask`` marks
  real tokens when captions have different lengths).

Two ways into the UNet, both switchable in :class:`DenoiserConfig`:

1. **Cross-attention tokens** (``token_sources``): each condition goes through its own
   ``LayerNorm + Linear`` to ``cross_attention_dim`` plus a learned type embedding; all are
   concatenated into one sequence ``[null | video | music | sfx | text]`` with a per-token
   kind and time (frame ``j`` at ``j / fps`` s; text and null: NaN). The single learned
   *null* token is always visible, so no query ever has an empty key set (segment masks,
   feature selector). The attention method (global / segment-aware / shot-based) is
   applied by :class:`soundtrack.modules.attention.SoundtrackAttnProcessor`.
2. **Channel-wise fusion** (MuVi Sec. 3.3, ``fusion``): per-frame features of
   ``fusion_sources`` are each projected (``LayerNorm + Linear`` to ``fusion_dim``), summed,
   passed through SiLU, and **linearly interpolated from the frame times to the latent
   column times** ``(i + 1/2) D / W`` of each level. They enter (a) at the input: ``"add"``
   adds ``Linear(fusion_dim -> C_0)`` of them to ``conv_in``'s output (forward hook);
   ``"concat"`` concatenates them, broadcast over frequency, as ``fusion_dim`` extra input
   channels of ``conv_in``; and (b) in both modes, before **every residual block** of the
   down, mid and up path: a per-block ``Linear(fusion_dim -> C_in)`` (zero-initialised, as
   ControlNet's zero convolutions, so training starts from the plain UNet) is added to the
   block's input, broadcast over frequency (forward pre-hooks on each ``ResnetBlock2D``).
   The hooks are small callable objects, not closures, so ``copy.deepcopy`` (EMA copies)
   keeps them pointing at the copy's own projections.

Condition dropout (classifier-free guidance): ``drop_mask`` (B, 4) over
``CONDITIONS = ("video", "music", "sfx", "text")``. A dropped condition keeps its token
positions (so segment masks are unchanged) but its tokens' content is replaced by a learned
per-condition null vector; in the fusion stream its projection is replaced by a learned
null vector (MuVi's learnable unconditional embedding). So "unconditional" is a learned
input, not an absent one.

The wrapper :class:`SoundtrackDenoiser` has a frozen :class:`DenoiserConfig` and
``forward(latents, t, conds, drop_mask=None, attention=None, window_k=None)``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from diffusers.models.resnet import ResnetBlock2D

from soundtrack.data.integrity import (
    load_safetensors,
    save_safetensors,
    verify_directory,
    write_file,
    write_manifest,
)
from soundtrack.errors import IntegrityError
from soundtrack.modules.attention import (
    KIND_MUSIC,
    KIND_NULL,
    KIND_SFX,
    KIND_TEXT,
    KIND_VIDEO,
    METHODS,
    SoundtrackAttnProcessor,
    column_times,
    feature_selector_keep,
)
from soundtrack.modules.state import strip_module_prefix
from soundtrack.profiles import model_preset
from soundtrack.storage import read_json_object

#: Condition names, in the column order of every drop mask.
CONDITIONS: tuple[str, ...] = ("video", "music", "sfx", "text")
_KIND = {"video": KIND_VIDEO, "music": KIND_MUSIC, "sfx": KIND_SFX, "text": KIND_TEXT}
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
FUSION_MODES = ("none", "add", "concat")

CONFIG_FILE = "denoiser_config.json"
WEIGHTS_FILE = "denoiser.safetensors"
#: What to do with a denoiser folder that fails its check.
LOAD_HINT = "save the denoiser again (re-export the model, resume its training run, or copy it again)"


# ----------------------------------------------------------------------------- conditions


@dataclass
class Conditions:
    """The conditions of a batch; every field is optional.

    Attributes:
        video: (B, Tv, Dv) per-frame video embeddings (frame j at j / fps s).
        music: (B, Tv, Dm) the video's per-frame projection into the music space.
        sfx: (B, Tv, Ds) the video's per-frame projection into the sound-effect space.
        text: (B, Lt, Dt) caption / prompt tokens, or (B, Dt) one pooled vector.
        text_mask: (B, Lt) bool, True for real text tokens (None: all real).
        shots: per-example shot-start frame indices (list of B sequences) for the
            shot-based ("dynamic") attention; may be fractional after windowing.
    """

    video: torch.Tensor | None = None
    music: torch.Tensor | None = None
    sfx: torch.Tensor | None = None
    text: torch.Tensor | None = None
    text_mask: torch.Tensor | None = None
    shots: list[Sequence[float]] | None = None

    def __post_init__(self) -> None:
        if self.text is not None and self.text.dim() == 2:
            self.text = self.text.unsqueeze(1)

    def present(self) -> tuple[str, ...]:
        """Names of the conditions that are given, in :data:`CONDITIONS` order."""
        return tuple(c for c in CONDITIONS if getattr(self, c) is not None)

    @property
    def batch_size(self) -> int:
        """B (0 when nothing is given)."""
        for c in CONDITIONS:
            x = getattr(self, c)
            if x is not None:
                return int(x.shape[0])
        return 0 if self.shots is None else len(self.shots)

    @property
    def n_frames(self) -> int | None:
        """Tv, the frame count of the video-derived conditions (None without them)."""
        for c in ("video", "music", "sfx"):
            x = getattr(self, c)
            if x is not None:
                return int(x.shape[1])
        return None

    def _map(self, fn_tensor, fn_list) -> "Conditions":
        out = {c: (None if getattr(self, c) is None else fn_tensor(getattr(self, c))) for c in CONDITIONS}
        out["text_mask"] = None if self.text_mask is None else fn_tensor(self.text_mask)
        out["shots"] = None if self.shots is None else fn_list(self.shots)
        return Conditions(**out)

    def select(self, index: Sequence[int] | slice) -> "Conditions":
        """The examples at ``index`` (a slice or a list of ints).

        Args:
            index: which examples.
        """
        if isinstance(index, slice):
            return self._map(lambda x: x[index], lambda s: list(s[index]))
        idx = list(index)
        return self._map(lambda x: x[idx], lambda s: [s[i] for i in idx])

    def repeat(self, n: int) -> "Conditions":
        """The batch tiled ``n`` times: examples ``[0..B) + [0..B) + ...``.

        Args:
            n: copies.
        """
        return self._map(lambda x: x.repeat(n, *([1] * (x.dim() - 1))), lambda s: list(s) * n)

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "Conditions":
        """Moves the tensors (``text_mask`` keeps its bool dtype).

        Args:
            device: target device.
            dtype: target float dtype (None: unchanged).
        """
        out = self._map(lambda x: x.to(device=device, dtype=dtype if (dtype and x.is_floating_point()) else x.dtype),
                        lambda s: s)
        return out


# ----------------------------------------------------------------------------- config


@dataclass(frozen=True)
class DenoiserConfig:
    """Every size and switch of :class:`SoundtrackDenoiser` (immutable; saved as JSON).

    Attributes:
        profile: ``"tiny"`` or ``"paper"`` (informational after construction).
        latent_channels: C of the VAE latent.
        latent_hw: (F_l, T_l) of the latent of one clip.
        clip_seconds: D, the clip length the latent spans (s).
        fps: video frame rate of the per-frame conditions (frames/s).
        block_out_channels: UNet channels per level.
        attention_levels: per level, whether it has transformer (self + cross attention)
            layers. The tiny profile has none at the full-resolution level (MACHINE-NOTES:
            attention there is 6x the cost of the rest of the UNet on 2 cores).
        layers_per_block: residual layers per down block (up blocks have one more).
        head_channels: channels per attention head (heads = channels // head_channels).
        norm_num_groups: GroupNorm groups.
        cross_attention_dim: width of the condition tokens.
        prediction_type: ``"epsilon"``, ``"v_prediction"`` or ``"sample"``.
        attention: cross-attention method: ``"global"``, ``"segment"``, ``"dynamic"``.
        window_k: k of ``"segment"`` (video frames; Diff-BGM's best is 8).
        feature_selector: Diff-BGM's selector (text tokens at t >= tau, video ones below).
        selector_tau: the switch timestep (200 of 1000 in Diff-BGM).
        fusion: channel-wise fusion ``"none"``, ``"add"`` or ``"concat"`` (module doc).
        fusion_dim: width of the fused per-frame stream.
        fusion_sources: conditions fused channel-wise (video-derived ones only).
        token_sources: conditions given to cross-attention as tokens.
        video_dim: Dv.
        music_dim: Dm.
        sfx_dim: Ds.
        text_dim: Dt.
        num_train_timesteps: training timesteps (1000); ``selector_tau`` is on this scale.
    """

    profile: str = "tiny"
    latent_channels: int = 4
    latent_hw: tuple[int, int] = (32, 128)
    clip_seconds: float = 10.24
    fps: float = 10.0
    block_out_channels: tuple[int, ...] = (16, 32, 64, 64)
    attention_levels: tuple[bool, ...] = (False, False, True, True)
    layers_per_block: int = 1
    head_channels: int = 8
    norm_num_groups: int = 8
    cross_attention_dim: int = 64
    prediction_type: str = "v_prediction"
    attention: str = "segment"
    window_k: int = 8
    feature_selector: bool = False
    selector_tau: int = 200
    fusion: str = "add"
    fusion_dim: int = 32
    fusion_sources: tuple[str, ...] = ("video", "music", "sfx")
    token_sources: tuple[str, ...] = ("video", "music", "sfx", "text")
    video_dim: int = 64
    music_dim: int = 512
    sfx_dim: int = 512
    text_dim: int = 512
    num_train_timesteps: int = 1000

    def __post_init__(self) -> None:
        if len(self.attention_levels) != len(self.block_out_channels):
            raise ValueError("attention_levels needs one entry per block_out_channels level")
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {self.prediction_type!r}")
        if self.attention not in METHODS:
            raise ValueError(f"attention must be one of {METHODS}, got {self.attention!r}")
        if self.fusion not in FUSION_MODES:
            raise ValueError(f"fusion must be one of {FUSION_MODES}, got {self.fusion!r}")
        if self.window_k < 1:
            raise ValueError(f"window_k must be >= 1, got {self.window_k}")
        if any(c not in ("video", "music", "sfx") for c in self.fusion_sources):
            raise ValueError(f"fusion_sources must be video-derived (video, music, sfx), got {self.fusion_sources}")
        if any(c not in CONDITIONS for c in self.token_sources):
            raise ValueError(f"token_sources must be among {CONDITIONS}, got {self.token_sources}")
        for c in self.block_out_channels:
            if c % self.norm_num_groups or c % self.head_channels:
                raise ValueError(f"channels {c} must be divisible by norm_num_groups and head_channels")
        if not any(self.attention_levels):
            raise ValueError("at least one UNet level needs attention (the condition tokens enter there)")

    # -- presets (values: the ``models.denoiser`` block of ``soundtrack/profiles/<name>.yaml``)

    @classmethod
    def tiny(cls, **overrides: Any) -> "DenoiserConfig":
        """2-core preset: 4 x 32 x 128 latent (the tiny VAE's, one down-sampling), channels
        (16, 32, 64, 64), attention at the two lowest levels, channel-wise fusion on,
        v-prediction (the same as the field defaults).

        Args:
            **overrides: fields to change.
        """
        return cls.preset("tiny", **overrides)

    @classmethod
    def paper(cls, **overrides: Any) -> "DenoiserConfig":
        """CCCG / AudioLDM preset: 8 x 32 x 256 latent (128 x 1024 mel, 4x VAE), 4 encoder
        blocks (128, 256, 384, 640) each with 2 residual layers and a spatial transformer,
        32 channels per head (AudioLDM), epsilon prediction (AudioLDM, CCCG), 512-d tokens
        (the contrastive space), no channel-wise fusion (CCCG conditions by attention only).

        Args:
            **overrides: fields to change.
        """
        return cls.preset("paper", **overrides)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "DenoiserConfig":
        """The denoiser of a profile (:func:`soundtrack.profiles.model_preset`), then ``overrides``.

        Args:
            name: profile (``"tiny"`` or ``"paper"``).
            **overrides: fields to change.

        Raises:
            ConfigError: an unknown profile (a ``ValueError``, naming the allowed ones).
        """
        return dataclasses.replace(cls(**model_preset(name, "denoiser")), **overrides)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DenoiserConfig":
        """Inverse of :meth:`to_dict` (lists become tuples; unknown keys are an error).

        Args:
            d: field values.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown DenoiserConfig keys: {sorted(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

    def cond_dim(self, name: str) -> int:
        """Input width of condition ``name``.

        Args:
            name: one of :data:`CONDITIONS`.
        """
        return int(getattr(self, f"{name}_dim"))


def build_unet(cfg: DenoiserConfig) -> UNet2DConditionModel:
    """The diffusers UNet of a :class:`DenoiserConfig` (attention processors not yet set).

    Levels with ``attention_levels[i]`` use ``CrossAttnDownBlock2D`` / ``CrossAttnUpBlock2D``
    (each residual layer followed by a spatial transformer: self-attention, cross-attention,
    feed-forward), others ``DownBlock2D`` / ``UpBlock2D``; the mid block always has
    cross-attention. Head counts are ``channels // head_channels`` (diffusers' argument
    ``attention_head_dim`` is, historically, the number of heads).

    Args:
        cfg: the configuration.
    """
    n = len(cfg.block_out_channels)
    down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in cfg.attention_levels)
    up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(cfg.attention_levels))
    heads = tuple(max(1, c // cfg.head_channels) for c in cfg.block_out_channels)
    extra_in = cfg.fusion_dim if cfg.fusion == "concat" else 0
    return UNet2DConditionModel(
        sample_size=tuple(cfg.latent_hw),
        in_channels=cfg.latent_channels + extra_in,
        out_channels=cfg.latent_channels,
        down_block_types=down,
        mid_block_type="UNetMidBlock2DCrossAttn",
        up_block_types=up,
        block_out_channels=tuple(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block,
        norm_num_groups=cfg.norm_num_groups,
        cross_attention_dim=cfg.cross_attention_dim,
        attention_head_dim=heads if n > 1 else heads[0],
    )


# ----------------------------------------------------------------------------- fusion


class _FusionContext:
    """Per-forward state shared by the fusion hooks: the fused frames and their
    interpolations to each level width (cleared after every forward).

    Not re-entrant: one forward at a time per denoiser instance (use one instance per
    thread; Ray actors and processes each have their own)."""

    def __init__(self) -> None:
        self.frames: torch.Tensor | None = None  # (B, Tv, fusion_dim)
        self.clip_seconds: float = 10.24
        self.fps: float = 10.0
        self.cache: dict[int, torch.Tensor] = {}

    def at_width(self, width: int) -> torch.Tensor:
        """Fused features at the ``width`` column times: (B, width, fusion_dim)."""
        if width not in self.cache:
            self.cache[width] = interpolate_frames(self.frames, width, self.clip_seconds, self.fps)
        return self.cache[width]


def interpolate_frames(frames: torch.Tensor, n_columns: int, clip_seconds: float, fps: float) -> torch.Tensor:
    """Per-frame features (B, Tv, D) -> values at the column centres (B, n_columns, D).

    Frame ``j`` is at ``j / fps`` s; column ``i`` at ``(i + 1/2) D / n_columns`` s; values
    are linearly interpolated in time and held beyond the first / last frame.

    Args:
        frames: per-frame features.
        n_columns: latent columns.
        clip_seconds: D.
        fps: frame rate.
    """
    tv = frames.shape[1]
    pos = np.clip(column_times(n_columns, clip_seconds) * fps, 0.0, tv - 1)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, tv - 1)
    w = torch.as_tensor(pos - lo, dtype=frames.dtype, device=frames.device)[None, :, None]
    lo_t = torch.as_tensor(lo, device=frames.device)
    hi_t = torch.as_tensor(hi, device=frames.device)
    return frames[:, lo_t] * (1 - w) + frames[:, hi_t] * w


def _add_fused(ctx: _FusionContext, proj: nn.Linear, x: torch.Tensor, time_axis: int) -> torch.Tensor:
    """``x + proj(fused)`` at each time position, broadcast over frequency.

    Args:
        ctx: the fusion stream of this forward.
        proj: the level's projection (fusion_dim -> channels).
        x: a (B, C, H, W) feature map.
        time_axis: -1 when time is the width (our layout), -2 when it is the height (a
            time-as-height UNet: AudioLDM / MusicLDM, :mod:`soundtrack.models.backbones`).
    """
    add = proj(ctx.at_width(x.shape[time_axis])).transpose(1, 2)  # (B, C, T)
    add = add.unsqueeze(2) if time_axis == -1 else add.unsqueeze(-1)
    return x + add.to(x.dtype)


class AddFusionHook:
    """Forward pre-hook of a ``ResnetBlock2D``: adds ``proj(fused)`` to its input.

    Args:
        ctx: the fusion stream, read at call time.
        proj: the block's projection.
        time_axis: -1 (time is the width) or -2 (time is the height).
    """

    def __init__(self, ctx: _FusionContext, proj: nn.Linear, time_axis: int = -1):
        self.ctx = ctx
        self.proj = proj
        self.time_axis = time_axis

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict):
        if self.ctx.frames is None:
            return None
        x = _add_fused(self.ctx, self.proj, args[0] if args else kwargs["input_tensor"], self.time_axis)
        if args:
            return (x, *args[1:]), kwargs
        return args, {**kwargs, "input_tensor": x}


class InputFusionHook:
    """Forward hook of ``conv_in`` (``"add"`` mode): adds ``proj(fused)`` to its output.

    Args:
        ctx: the fusion stream, read at call time.
        proj: the input projection.
        time_axis: -1 (time is the width) or -2 (time is the height).
    """

    def __init__(self, ctx: _FusionContext, proj: nn.Linear, time_axis: int = -1):
        self.ctx = ctx
        self.proj = proj
        self.time_axis = time_axis

    def __call__(self, module: nn.Module, args: tuple, output: torch.Tensor):
        if self.ctx.frames is None:
            return None
        return _add_fused(self.ctx, self.proj, output, self.time_axis)


# ----------------------------------------------------------------------------- denoiser


class SoundtrackDenoiser(nn.Module):
    """UNet + condition tokenizer + channel-wise fusion (module docstring).

    Args:
        cfg: the configuration (frozen).
    """

    def __init__(self, cfg: DenoiserConfig):
        super().__init__()
        self.config = cfg
        self.unet = build_unet(cfg)
        self.unet.set_attn_processor(SoundtrackAttnProcessor(cfg.attention, cfg.window_k, cfg.fps))
        d = cfg.cross_attention_dim

        # Tokens: one projection, one null (dropped) vector per condition; one type
        # embedding per kind; one always-visible null token.
        self.token_proj = nn.ModuleDict(
            {c: nn.Sequential(nn.LayerNorm(cfg.cond_dim(c)), nn.Linear(cfg.cond_dim(c), d)) for c in cfg.token_sources}
        )
        self.token_null = nn.ParameterDict({c: nn.Parameter(torch.randn(d) * 0.02) for c in cfg.token_sources})
        self.type_embed = nn.Embedding(len(CONDITIONS) + 1, d)
        nn.init.normal_(self.type_embed.weight, std=0.02)
        self.null_token = nn.Parameter(torch.randn(d) * 0.02)

        # Channel-wise fusion.
        self._fusion = _FusionContext()
        self._fusion.clip_seconds, self._fusion.fps = cfg.clip_seconds, cfg.fps
        if cfg.fusion != "none":
            self._build_fusion(cfg, input_hook=cfg.fusion == "add")

    def _build_fusion(self, cfg: DenoiserConfig, time_axis: int = -1, input_hook: bool = True,
                      zero_input: bool = False) -> None:
        """MuVi's channel-wise fusion modules and their hooks on ``self.unet``: a projection
        and a learned null per fused condition, a zero-initialised projection into every
        ``ResnetBlock2D`` (so fusion starts as a no-op there) and, with ``input_hook``, one
        into ``conv_in``'s output.

        Args:
            cfg: the denoiser config (``fusion_dim``, ``fusion_sources``).
            time_axis: -1 (time is the latent's width) or -2 (its height, a backbone UNet).
            input_hook: also fuse into ``conv_in`` (``"add"`` mode).
            zero_input: zero-initialise that input projection too (a pretrained UNet then
                starts exactly as it was).
        """
        f = cfg.fusion_dim
        self.fusion_proj = nn.ModuleDict(
            {c: nn.Sequential(nn.LayerNorm(cfg.cond_dim(c)), nn.Linear(cfg.cond_dim(c), f)) for c in cfg.fusion_sources}
        )
        self.fusion_null = nn.ParameterDict({c: nn.Parameter(torch.randn(f) * 0.02) for c in cfg.fusion_sources})
        resnets = [m for m in self.unet.modules() if isinstance(m, ResnetBlock2D)]
        self.fusion_blocks = nn.ModuleList(nn.Linear(f, r.in_channels) for r in resnets)
        for proj, resnet in zip(self.fusion_blocks, resnets):
            nn.init.zeros_(proj.weight)
            nn.init.zeros_(proj.bias)
            resnet.register_forward_pre_hook(AddFusionHook(self._fusion, proj, time_axis), with_kwargs=True)
        if input_hook:
            self.fusion_in = nn.Linear(f, int(self.unet.config.block_out_channels[0]))
            if zero_input:
                nn.init.zeros_(self.fusion_in.weight)
                nn.init.zeros_(self.fusion_in.bias)
            self.unet.conv_in.register_forward_hook(InputFusionHook(self._fusion, self.fusion_in, time_axis))

    # -- conditioning ---------------------------------------------------------------

    def _check(self, latents: torch.Tensor, conds: Conditions) -> None:
        b = latents.shape[0]
        for c in CONDITIONS:
            x = getattr(conds, c)
            if x is None:
                continue
            if x.shape[0] != b:
                raise ValueError(f"conds.{c} has batch {x.shape[0]}, latents {b}")
            if x.shape[-1] != self.config.cond_dim(c):
                raise ValueError(f"conds.{c} has width {x.shape[-1]}, config says {self.config.cond_dim(c)}")
        tv = [getattr(conds, c).shape[1] for c in ("video", "music", "sfx") if getattr(conds, c) is not None]
        if len(set(tv)) > 1:
            raise ValueError(f"video-derived conditions have different frame counts: {tv}")

    def tokens(
        self, conds: Conditions, drop: torch.Tensor
    ) -> tuple[torch.Tensor, np.ndarray, torch.Tensor, torch.Tensor]:
        """Builds the token sequence.

        Args:
            conds: the conditions (B examples).
            drop: (B, 4) bool drop mask over :data:`CONDITIONS`.

        Returns:
            ``(tokens (B, n, D), times (n,) float64 numpy seconds with NaN, kinds (n,)
            long CPU tensor, keep (B, n) bool)``; ``keep`` is False only for padded text
            tokens. Times and kinds are layout metadata, kept off the model's device (so
            the model also runs on the meta device).
        """
        b = drop.shape[0]
        dev = self.null_token.device
        seq = [self.null_token.expand(b, 1, -1) + self.type_embed.weight[KIND_NULL]]
        times = [np.full(1, np.nan)]
        kinds = [torch.full((1,), KIND_NULL, dtype=torch.long, device="cpu")]
        keep = [torch.ones(b, 1, dtype=torch.bool, device=dev)]
        for i, c in enumerate(CONDITIONS):
            x = getattr(conds, c)
            if x is None or c not in self.config.token_sources:
                continue
            n = x.shape[1]
            tok = self.token_proj[c](x.to(self.null_token.dtype))
            tok = torch.where(drop[:, i, None, None].to(dev), self.token_null[c].expand_as(tok), tok)
            seq.append(tok + self.type_embed.weight[_KIND[c]])
            if c == "text":
                times.append(np.full(n, np.nan))
                m = conds.text_mask
                keep.append(torch.ones(b, n, dtype=torch.bool, device=dev) if m is None else m.to(dev).bool())
            else:
                times.append(np.arange(n, dtype=np.float64) / self.config.fps)
                keep.append(torch.ones(b, n, dtype=torch.bool, device=dev))
            kinds.append(torch.full((n,), _KIND[c], dtype=torch.long, device="cpu"))
        return torch.cat(seq, 1), np.concatenate(times), torch.cat(kinds), torch.cat(keep, 1)

    def fused_frames(self, conds: Conditions, drop: torch.Tensor) -> torch.Tensor | None:
        """The fused per-frame stream (B, Tv, fusion_dim), or None without fusion sources.

        Args:
            conds: the conditions.
            drop: (B, 4) bool drop mask.
        """
        if self.config.fusion == "none":
            return None
        total = None
        for i, c in enumerate(CONDITIONS):
            x = getattr(conds, c)
            if x is None or c not in self.config.fusion_sources:
                continue
            h = self.fusion_proj[c](x.to(self.null_token.dtype))
            h = torch.where(drop[:, i, None, None].to(h.device), self.fusion_null[c].expand_as(h), h)
            total = h if total is None else total + h
        return None if total is None else F.silu(total)

    # -- forward ----------------------------------------------------------------------

    def _prepare(self, latents: torch.Tensor, t: torch.Tensor | int, conds: Conditions,
                 drop_mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Checks the inputs; returns the (B,) timesteps and the (B, 4) bool drop mask."""
        b = latents.shape[0]
        self._check(latents, conds)
        t = torch.as_tensor(t, device=latents.device)
        if t.dim() == 0:
            t = t.expand(b)
        drop = torch.zeros(b, len(CONDITIONS), dtype=torch.bool) if drop_mask is None else drop_mask.bool()
        return t, drop.to(latents.device)

    def forward(
        self,
        latents: torch.Tensor,
        t: torch.Tensor | int,
        conds: Conditions,
        drop_mask: torch.Tensor | None = None,
        attention: str | None = None,
        window_k: int | None = None,
        selector_tau: int | None = None,
    ) -> torch.Tensor:
        """Predicts ``config.prediction_type`` (noise, velocity or clean latent).

        Args:
            latents: noisy latents (B, C, F_l, T_l).
            t: training-scale timesteps, (B,) or a scalar.
            conds: the conditions.
            drop_mask: (B, 4) bool over :data:`CONDITIONS`, True = dropped (None: keep all).
            attention: overrides ``config.attention`` for this call.
            window_k: overrides ``config.window_k`` for this call.
            selector_tau: turns the feature selector on with this switch timestep for
                this call (None: ``config.feature_selector`` / ``config.selector_tau``).

        Returns:
            the UNet output, shape of ``latents``.
        """
        t, drop = self._prepare(latents, t, conds, drop_mask)

        # 1. Condition tokens and the visibility of each token per example.
        tokens, times, kinds, keep = self.tokens(conds, drop)
        if self.config.feature_selector or selector_tau is not None:
            tau = self.config.selector_tau if selector_tau is None else int(selector_tau)
            has_text = (keep & (kinds.to(keep.device) == KIND_TEXT)[None, :]).any(dim=1)
            keep = keep & feature_selector_keep(kinds, t, has_text, tau)

        # 2. Channel-wise fusion stream (read by the hooks during the UNet call).
        fused = self.fused_frames(conds, drop)
        sample = latents
        if fused is not None and self.config.fusion == "concat":
            extra = interpolate_frames(fused, latents.shape[-1], self.config.clip_seconds, self.config.fps)
            extra = extra.transpose(1, 2).unsqueeze(2).expand(-1, -1, latents.shape[2], -1)
            sample = torch.cat([latents, extra.to(latents.dtype)], dim=1)

        # 3. UNet with our processor's named inputs.
        kwargs = dict(
            token_times=times,
            token_keep=keep,
            shots=conds.shots,
            latent_hw=(latents.shape[2], latents.shape[3]),
            clip_seconds=self.config.clip_seconds,
            attention_method=attention,
            window_k=window_k,
        )
        self._fusion.frames, self._fusion.cache = fused, {}
        try:
            out = self.unet(sample, t, encoder_hidden_states=tokens, cross_attention_kwargs=kwargs).sample
        finally:
            self._fusion.frames, self._fusion.cache = None, {}
        return out

    # -- persistence ------------------------------------------------------------------

    def save(self, directory: str | os.PathLike) -> Path:
        """Writes ``denoiser_config.json``, ``denoiser.safetensors`` and the weights' manifest
        (last), each through a temporary name and a rename.

        Args:
            directory: output folder (created).

        Returns:
            the folder.

        Raises:
            soundtrack.errors.DiskFullError: no space (the files of an earlier save stay whole).
        """
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        text = json.dumps(self.config.to_dict(), indent=2)
        write_file(path / CONFIG_FILE, lambda tmp: tmp.write_text(text), "the denoiser's config")
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        save_safetensors(state, path / WEIGHTS_FILE, what="the denoiser's weights")
        write_manifest(path)
        return path

    @classmethod
    def load(cls, directory: str | os.PathLike, device: str | torch.device = "cpu") -> "SoundtrackDenoiser":
        """Inverse of :meth:`save` (a folder of either kind, ours or a fine-tuned backbone:
        :func:`soundtrack.models.backbones.load_denoiser`), the weights checked first.

        Args:
            directory: folder written by :meth:`save`.
            device: where to put the weights.

        Raises:
            soundtrack.errors.IntegrityError: a missing, truncated or garbled file (named).
        """
        path = Path(directory)
        cfg = DenoiserConfig.from_dict(read_denoiser_config(path))
        model = cls(cfg)
        model.load_state_dict(strip_module_prefix(read_denoiser_weights(path, device)))
        return model.to(device)


def read_denoiser_config(directory: str | os.PathLike) -> dict[str, Any]:
    """The ``denoiser_config.json`` of a saved denoiser folder, after the folder's weights are checked.

    Args:
        directory: the folder.

    Raises:
        soundtrack.errors.IntegrityError: a file that fails the manifest, or an unreadable config.
    """
    path = Path(directory)
    verify_directory(path, required=(WEIGHTS_FILE,), what="denoiser", hint=LOAD_HINT)
    return read_json_object(path / CONFIG_FILE, IntegrityError, "the denoiser's config", LOAD_HINT)


def read_denoiser_weights(directory: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """The ``denoiser.safetensors`` tensors of a saved denoiser folder (a corrupt file as a clear error).

    Args:
        directory: the folder (checked by :func:`read_denoiser_config` first).
        device: where the tensors go.

    Raises:
        soundtrack.errors.IntegrityError: a missing or unreadable weights file.
    """
    return load_safetensors(Path(directory) / WEIGHTS_FILE, device, "the denoiser's weights", LOAD_HINT)


def count_parameters(module: nn.Module) -> int:
    """Number of parameters of a module.

    Args:
        module: any module.
    """
    return sum(p.numel() for p in module.parameters())
