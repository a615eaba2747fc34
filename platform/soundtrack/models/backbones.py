"""A diffusers AudioLDM / MusicLDM directory as the generator's backbone, fine-tuned on video.

For users who have the weights: :func:`load_ldm_backbone` reads a local diffusers pipeline
directory (``AudioLDMPipeline`` / ``MusicLDMPipeline.save_pretrained`` layout) and gives
its VAE, HiFi-GAN vocoder, UNet, scheduler config and mel format; :class:`BackboneDenoiser`
makes the pretrained UNet our denoiser, conditioned on the video instead of on text.
Nothing is downloaded; the text encoder and tokenizer are not needed (and not read). The
pipeline-level half (the noise schedule as a ``NoiseSchedule``, a ``SoundtrackGenerator``
of the backbone) is :mod:`soundtrack.pipelines.backbone` (models do not import pipelines).

Directory layout (what is checked, and why)::

    model_index.json   ``_class_name`` tells AudioLDM ("AudioLDMPipeline") from MusicLDM
                       ("MusicLDMPipeline"); AudioLDM 2 is refused (see below)
    vae/               AutoencoderKL: config.json + diffusion_pytorch_model.safetensors
    unet/              UNet2DConditionModel: config.json + diffusion_pytorch_model.safetensors
    vocoder/           SpeechT5HifiGan: config.json + model.safetensors
    scheduler/         scheduler_config.json (the betas and prediction type the UNet was
                       trained with; fine-tuning must keep them)
    text_encoder/, tokenizer/, feature_extractor/   not used

Weights must be safetensors (the platform never unpickles); a checkpoint that only has
``.bin`` files can be re-saved once with ``save_pretrained(..., safe_serialization=True)``.

What the AudioLDM / MusicLDM UNet accepts (read from diffusers' pipelines and their
conversion scripts): latents ``(B, 8, T_l, F_l)`` with **time as the height** (10.24 s ->
1024 x 64 mel -> 256 x 16 latent, VAE factor 4), ``encoder_hidden_states=None`` (its
``cross_attention_dim`` is the per-level channel list, so the "cross"-attention layers
attend to the feature map itself: there is no token context to give it), and
``class_labels``: the unit-norm 512-d CLAP embedding (``class_embed_type =
"simple_projection"``, a Linear into the time-embedding width, concatenated to it:
AudioLDM's FiLM conditioning). So the video enters through two doors:

1. **Class embedding (global)**: the per-frame condition named by
   :attr:`BackboneOptions.class_source` (default ``"music"``: the video's projection into
   the music space of our contrastive pretraining, the counterpart of AudioLDM's CLAP
   audio embedding) is mean-pooled over frames, projected by ``LayerNorm + Linear`` into
   the 512-d CLAP input and L2-normalised, as the pipelines normalise CLAP vectors. A
   dropped condition (classifier-free guidance) is a learned unit null vector (AudioLDM
   uses the CLAP vector of an empty prompt, which we do not have). ``"video"`` or
   ``"sfx"`` pool those streams instead; ``"none"`` always feeds the null vector.
2. **Channel-wise fusion (temporal)**: our MuVi-style hooks (:mod:`soundtrack.models.unet`)
   are generic over the UNet's ``ResnetBlock2D`` blocks (down, mid and up) and its
   ``conv_in``, so they work on this UNet unchanged except for the axis: the fused
   per-frame stream is interpolated to the latent **rows** (time) and broadcast over the
   columns (frequency). Every fusion projection, ``conv_in``'s included, starts at zero,
   so step 0 of fine-tuning is exactly the pretrained UNet driven by the class vector.
   ``fusion: "add"`` (default) or ``"none"``; ``"concat"`` would change ``conv_in``'s input
   width and is refused.

Cross-attention tokens (our segment / dynamic attention) do not apply: this UNet has no
context input, and turning its self-attention layers into cross-attention would discard
what they learned. A UNet with a single ``cross_attention_dim`` (one that needs a context)
is not an AudioLDM / MusicLDM UNet and is refused.

Why AudioLDM 2 is refused: its ``AudioLDM2UNet2DConditionModel`` takes two cross-attention
contexts produced by a GPT-2 "language model" from CLAP and Flan-T5 features and has no
class embedding; conditioning it on video means replacing that whole context path, which
is not a wiring job.

Mel format: derived from the vocoder (:func:`backbone_mel_format`): ``sampling_rate``,
``hop = prod(upsample_rates)``, ``n_mels = model_in_dim``, n_fft 1024, fmin 0, fmax sr/2,
natural log with floor 1e-5 (AudioLDM's ``TacotronSTFT``; ``vocoder/soundtrack_mel.json``
overrides, as for :class:`~soundtrack.models.vocoder.HiFiGANVocoder`). For AudioLDM and
MusicLDM: 16 kHz, hop 160, 64 mels. Training latents are computed from the shards'
16 kHz audio in that format (:func:`backbone_log_mels`), not from the stored 128-band mels.

Training (:class:`BackboneOptions.trainable`): ``"all"`` fine-tunes the UNet with the new
projections; ``"conditioning"`` freezes the UNet and trains only the projections (class
projection, null vector, fusion), ControlNet-style and much cheaper in optimiser memory.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers import AutoencoderKL, UNet2DConditionModel

from soundtrack.config import from_mapping
from soundtrack.data.features import FeatureConfig, log_mel
from soundtrack.data.integrity import write_file
from soundtrack.errors import BackboneError, ConfigError
from soundtrack.models.mel import MelFormat
from soundtrack.models.unet import (
    CONDITIONS,
    Conditions,
    DenoiserConfig,
    SoundtrackDenoiser,
    _FusionContext,
    read_denoiser_config,
    read_denoiser_weights,
)
from soundtrack.models.vocoder import MEL_SIDECAR, HiFiGANVocoder, VocoderMel
from soundtrack.modules.state import strip_module_prefix
from soundtrack.storage import read_json_object

log = logging.getLogger(__name__)

#: Pipeline class (``model_index.json``'s ``_class_name``) -> backbone kind.
PIPELINES: dict[str, str] = {"AudioLDMPipeline": "audioldm", "MusicLDMPipeline": "musicldm"}
#: Pipelines recognised but refused, with the reason.
UNSUPPORTED: dict[str, str] = {
    "AudioLDM2Pipeline": (
        "its AudioLDM2UNet2DConditionModel is conditioned by two cross-attention contexts from a GPT-2 "
        "language model over CLAP and Flan-T5 features and has no class embedding, so there is no "
        "input a video condition can take over without rebuilding that path"),
}
#: diffusers' scheduler config file name (``scheduler/``).
SCHEDULER_FILE = "scheduler_config.json"
#: Part folder -> files that must be in it (safetensors weights only).
PART_FILES: dict[str, tuple[str, ...]] = {
    "vae": ("config.json", "diffusion_pytorch_model.safetensors"),
    "unet": ("config.json", "diffusion_pytorch_model.safetensors"),
    "vocoder": ("config.json", "model.safetensors"),
    "scheduler": (SCHEDULER_FILE,),
}
COMPONENTS = ("vae", "unet", "vocoder")
CLASS_SOURCES = ("music", "video", "sfx", "none")
TRAINABLE = ("all", "conditioning")
#: DenoiserConfig fields a backbone run may set (``train.denoiser``); the rest is the backbone's.
DENOISER_OVERRIDES = ("fusion", "fusion_dim", "fusion_sources")

#: Marker file of a saved :class:`BackboneDenoiser` (its presence makes
#: :meth:`SoundtrackDenoiser.load` build one).
BACKBONE_FILE = "backbone.json"
BACKBONE_FORMAT = "soundtrack-backbone/1"


# ----------------------------------------------------------------------------- options


@dataclass(frozen=True)
class BackboneOptions:
    """How the video conditions a backbone UNet and what fine-tuning trains (module doc).

    Attributes:
        class_source: the per-frame condition pooled into the UNet's class embedding
            (``"music"``, ``"video"``, ``"sfx"``) or ``"none"`` (the learned null vector
            only; the video then enters by fusion alone).
        trainable: ``"all"`` (UNet + new projections) or ``"conditioning"`` (the new
            projections only; the UNet is frozen).
    """

    class_source: str = "music"
    trainable: str = "all"

    def __post_init__(self) -> None:
        if self.class_source not in CLASS_SOURCES:
            raise ConfigError(f"train.backbone_options.class_source must be one of {', '.join(CLASS_SOURCES)}, "
                              f"got {self.class_source!r}")
        if self.trainable not in TRAINABLE:
            raise ConfigError(f"train.backbone_options.trainable must be one of {', '.join(TRAINABLE)}, "
                              f"got {self.trainable!r}")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None) -> "BackboneOptions":
        """Options from a mapping (``train.backbone_options``); missing keys keep the defaults.

        Args:
            d: field -> value.

        Raises:
            ConfigError: an unknown key or a bad value.
        """
        return from_mapping(cls, d, "train.backbone_options key(s)")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------- the directory


def _read_json(path: Path, what: str) -> dict:
    return read_json_object(path, BackboneError, what, hint="copy the pipeline directory again.")


def inspect_ldm_directory(directory: str | os.PathLike) -> str:
    """Checks that a directory is a usable AudioLDM / MusicLDM pipeline and names its kind.

    Only files are checked (no weights are read).

    Args:
        directory: the local pipeline directory.

    Returns:
        ``"audioldm"`` or ``"musicldm"``.

    Raises:
        BackboneError: not a directory, no ``model_index.json``, an unsupported or unknown
            pipeline, or missing parts (every missing folder / file is named).
    """
    root = Path(directory)
    save_hint = ("a diffusers AudioLDM / MusicLDM pipeline directory, as written by "
                 "AudioLDMPipeline.save_pretrained(dir, safe_serialization=True) or a local copy of a hub "
                 "checkpoint such as cvssp/audioldm-s-full-v2 or ucsd-reach/musicldm")
    if not root.is_dir():
        raise BackboneError(f"train.backbone={root} is not a directory; give {save_hint}.")
    index_path = root / "model_index.json"
    if not index_path.is_file():
        raise BackboneError(f"{root} has no model_index.json, so it is not a diffusers pipeline directory; "
                            f"give {save_hint}.")
    index = _read_json(index_path, "the pipeline index")
    name = str(index.get("_class_name"))
    if name in UNSUPPORTED:
        raise BackboneError(f"{root} is an {name} directory, which is not supported as a backbone: "
                            f"{UNSUPPORTED[name]}. Use an AudioLDM or MusicLDM checkpoint.")
    if name not in PIPELINES:
        raise BackboneError(f"{root}: model_index.json names the pipeline {name!r}; supported backbones are "
                            f"{', '.join(PIPELINES)}.")
    missing: list[str] = []
    for part, files in PART_FILES.items():
        if not (root / part).is_dir():
            missing.append(f"{part}/")
            continue
        # a weights file may also be sharded (``<name>.index.json`` + shards, save_pretrained's way)
        missing += [f"{part}/{f}" for f in files
                    if not ((root / part / f).is_file() or (root / part / f"{f}.index.json").is_file())]
    if missing:
        bins = [p for p in missing if p.endswith(".safetensors")
                and any((root / p).parent.glob("*.bin"))]
        hint = (" The .bin weights found there are not read (the platform never unpickles): re-save the "
                "pipeline once with save_pretrained(dir, safe_serialization=True)." if bins else
                " Copy the complete pipeline (vae/, unet/, vocoder/, scheduler/; text_encoder/ and tokenizer/ "
                "are not needed).")
        raise BackboneError(f"{root} ({name}) lacks {', '.join(missing)}.{hint}")
    return PIPELINES[name]


def backbone_mel_format(vocoder_dir: str | os.PathLike, clip_s: float = 10.24) -> MelFormat:
    """The log-mel format a backbone's vocoder (and so its VAE) works on.

    Read from the vocoder's ``config.json`` (``sampling_rate``, ``upsample_rates``,
    ``model_in_dim``) with AudioLDM's STFT defaults (module docstring), overridden by
    ``soundtrack_mel.json`` in the folder when present.

    Args:
        vocoder_dir: the ``vocoder/`` folder.
        clip_s: clip length (s) of the generator's windows.

    Raises:
        BackboneError: a vocoder on log10 mels (SpeechT5's TTS features, not AudioLDM's).
    """
    folder = Path(vocoder_dir)
    cfg = _read_json(folder / "config.json", "the vocoder config")
    try:
        sr = int(cfg["sampling_rate"])
        expected: dict[str, Any] = dict(sr=sr, hop=int(np.prod(cfg["upsample_rates"])), n_mels=int(cfg["model_in_dim"]),
                                        fmax=sr / 2)
    except (KeyError, TypeError, ValueError) as exc:
        raise BackboneError(f"{folder / 'config.json'} is not a SpeechT5HifiGan config ({exc!r} missing or bad)") from exc
    sidecar = folder / MEL_SIDECAR
    if sidecar.is_file():
        expected.update(_read_json(sidecar, "the vocoder's mel definition"))
    vm = VocoderMel(**expected)
    if vm.log_base != "e":
        raise BackboneError(f"{folder}: the vocoder takes log{vm.log_base} mels; AudioLDM / MusicLDM vocoders take "
                            "natural-log mels (set log_base 'e' in soundtrack_mel.json if that is what it is)")
    feats = FeatureConfig(sr=vm.sr, n_fft=vm.n_fft, hop=vm.hop, win=vm.n_fft, n_mels=vm.n_mels, fmin=vm.fmin,
                          fmax=vm.fmax, log_floor=vm.log_floor, clip_s=float(clip_s))
    return MelFormat(feats)


def backbone_log_mels(wavs: Sequence[np.ndarray] | np.ndarray, fmt: MelFormat) -> torch.Tensor:
    """Log-mels of waveforms in a backbone's format: what its VAE encodes for training.

    ``features.log_mel`` with the format's front end (for AudioLDM: 64 Slaney bands of the
    1024-point STFT magnitude at hop 160, ``ln(max(., 1e-5))``), one clip at a time.

    Args:
        wavs: mono float waveforms at ``fmt.sr`` (all of the same length).
        fmt: the backbone's mel format (:func:`backbone_mel_format`).

    Returns:
        float32 (B, n_mels, N // hop).
    """
    return torch.stack([torch.from_numpy(log_mel(np.asarray(w, dtype=np.float32), fmt.features)) for w in wavs])


def read_scheduler_config(directory: str | os.PathLike) -> dict[str, Any]:
    """The backbone's ``scheduler/scheduler_config.json`` (its training betas and prediction
    type; :func:`soundtrack.pipelines.backbone.backbone_noise_schedule` makes the schedule).

    Args:
        directory: the pipeline directory.

    Raises:
        BackboneError: unreadable, or explicit ``trained_betas`` (not supported).
    """
    path = Path(directory) / "scheduler" / SCHEDULER_FILE
    doc = _read_json(path, "the scheduler config")
    if doc.get("trained_betas") is not None:
        raise BackboneError(f"{path} gives explicit trained_betas, which this platform does not support")
    return doc


def check_unet_config(config: Mapping[str, Any], where: str = "the UNet") -> None:
    """Checks that a UNet config is an AudioLDM / MusicLDM one (module docstring).

    Args:
        config: ``UNet2DConditionModel`` config.
        where: name for the message.

    Raises:
        BackboneError: no ``simple_projection`` class embedding, or a cross-attention
            that needs a context.
    """
    if config.get("class_embed_type") != "simple_projection" or not config.get("projection_class_embeddings_input_dim"):
        raise BackboneError(f"{where} has class_embed_type={config.get('class_embed_type')!r}; an AudioLDM / MusicLDM "
                            "UNet takes its CLAP vector through a 'simple_projection' class embedding, which is where "
                            "the pooled video condition goes")
    cad = config.get("cross_attention_dim")
    if isinstance(cad, int):
        raise BackboneError(f"{where} has one cross_attention_dim ({cad}): it expects a token context, which "
                            "AudioLDM / MusicLDM UNets do not (their value is the per-level channel list)")


# ----------------------------------------------------------------------------- the backbone


@dataclass
class LDMBackbone:
    """A loaded AudioLDM / MusicLDM directory (what :func:`load_ldm_backbone` returns).

    Attributes:
        directory: the pipeline directory.
        kind: ``"audioldm"`` or ``"musicldm"``.
        mel: its mel format (the generator encodes and decodes in it).
        scheduler_config: its ``scheduler_config.json`` (the training betas;
            :func:`soundtrack.pipelines.backbone.backbone_noise_schedule`).
        prediction_type: what its UNet predicts (``scheduler_config.json``; diffusers'
            default ``"epsilon"`` when absent).
        unet_config: its UNet's config (read even when the UNet is not loaded).
        vae: the VAE (None when not loaded).
        unet: the UNet (None when not loaded).
        vocoder: the vocoder, a :class:`~soundtrack.models.vocoder.HiFiGANVocoder` in
            :attr:`mel` (None when not loaded).
    """

    directory: Path
    kind: str
    mel: MelFormat
    scheduler_config: dict[str, Any]
    prediction_type: str
    unet_config: dict[str, Any]
    vae: AutoencoderKL | None = None
    unet: UNet2DConditionModel | None = None
    vocoder: HiFiGANVocoder | None = None

    @property
    def vae_dir(self) -> Path:
        """The ``vae/`` folder."""
        return self.directory / "vae"

    @property
    def vocoder_dir(self) -> Path:
        """The ``vocoder/`` folder (a generator's vocoder spec)."""
        return self.directory / "vocoder"

    def denoiser_config(self, video_dim: int, music_dim: int, sfx_dim: int, fps: float = 10.0,
                        overrides: Mapping[str, Any] | None = None) -> DenoiserConfig:
        """The :class:`DenoiserConfig` of a denoiser on this backbone.

        The UNet's sizes, prediction type and latent grid come from the backbone (in our
        (F_l, T_l) layout); the condition widths from the encoders; no cross-attention
        tokens (module docstring); fusion ``"add"`` with 64 channels from every
        video-derived stream unless ``overrides`` say otherwise.

        Args:
            video_dim: width of the video features (the encoders' ``video_dim``).
            music_dim: width of the music projection (the encoders' ``embed_dim``).
            sfx_dim: width of the sound-effect projection.
            fps: video frame rate of the conditions (frames/s).
            overrides: ``train.denoiser`` (only :data:`DENOISER_OVERRIDES`).

        Raises:
            ConfigError: another key, or ``fusion: concat``.
        """
        overrides = dict(overrides or {})
        bad = sorted(set(overrides) - set(DENOISER_OVERRIDES))
        if bad:
            raise ConfigError(f"train.denoiser keys {bad} are set by the backbone (train.backbone={self.directory}); "
                              f"with a backbone only {', '.join(DENOISER_OVERRIDES)} may be given")
        if overrides.get("fusion") == "concat":
            raise ConfigError("train.denoiser.fusion: 'concat' widens the UNet's conv_in, which a pretrained backbone "
                              "cannot take; use 'add' or 'none'")
        uc = self.unet_config
        blocks = tuple(int(c) for c in uc["block_out_channels"])
        levels = tuple("CrossAttn" in str(t) for t in uc["down_block_types"])
        if not any(levels):
            raise BackboneError(f"{self.directory}/unet has no attention level ({uc['down_block_types']}); "
                                "not an AudioLDM / MusicLDM UNet")
        heads = uc.get("num_attention_heads") or uc.get("attention_head_dim") or 8
        heads = tuple(heads) if isinstance(heads, (list, tuple)) else (heads,) * len(blocks)
        # informational here (the UNet is not rebuilt from it), but DenoiserConfig checks it
        head_channels = math.gcd(*[c // max(int(h), 1) for c, h in zip(blocks, heads)])
        if any(c % head_channels for c in blocks):
            head_channels = math.gcd(*blocks)
        f = 2 ** (len(self._vae_block_channels()) - 1)
        n_mels, n_frames = self.mel.n_mels, self.mel.n_frames
        if n_mels % f or n_frames % f:
            raise ConfigError(f"a {n_mels} x {n_frames} mel is not a whole number of {f} x {f} VAE cells; choose a clip "
                              f"length whose frame count ({n_frames}) is a multiple of {f}")
        cfg = DenoiserConfig(
            profile=self.kind, latent_channels=int(uc["in_channels"]), latent_hw=(n_mels // f, n_frames // f),
            clip_seconds=float(self.mel.features.clip_s), fps=float(fps), block_out_channels=blocks,
            attention_levels=levels, layers_per_block=int(uc["layers_per_block"]),
            head_channels=head_channels, norm_num_groups=int(uc["norm_num_groups"]),
            prediction_type=self.prediction_type, attention="global", fusion="add", fusion_dim=64,
            fusion_sources=("video", "music", "sfx"), token_sources=(), video_dim=int(video_dim),
            music_dim=int(music_dim), sfx_dim=int(sfx_dim), text_dim=int(music_dim),
            num_train_timesteps=int(self.scheduler_config.get("num_train_timesteps", 1000)),
        )
        changes = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
        try:
            return dataclasses.replace(cfg, **changes)
        except ValueError as exc:
            raise ConfigError(f"train.denoiser: {exc}") from exc

    def _vae_block_channels(self) -> list:
        if self.vae is not None:
            return list(self.vae.config.block_out_channels)
        return list(_read_json(self.vae_dir / "config.json", "the VAE config")["block_out_channels"])

    def denoiser(self, cfg: DenoiserConfig, options: BackboneOptions | Mapping[str, Any] | None = None
                 ) -> "BackboneDenoiser":
        """Our denoiser around this backbone's (loaded) UNet.

        Args:
            cfg: from :meth:`denoiser_config`.
            options: class source and what trains.
        """
        if self.unet is None:
            raise BackboneError("the backbone was loaded without its UNet (components=...); load it with 'unet'")
        opts = options if isinstance(options, BackboneOptions) else BackboneOptions.from_dict(options)
        return BackboneDenoiser(cfg, self.unet, opts, kind=self.kind, source=str(self.directory))


def load_ldm_backbone(directory: str | os.PathLike, components: Sequence[str] = COMPONENTS, clip_s: float = 10.24,
                      device: str | torch.device = "cpu") -> LDMBackbone:
    """Loads an AudioLDM / MusicLDM pipeline directory from a local path (module docstring).

    Every part is checked (:func:`inspect_ldm_directory`) and the configs are read and
    cross-checked (the UNet's kind, VAE latent channels = UNet input channels, a one-channel
    VAE, the vocoder's mel) whichever ``components`` are loaded.

    Args:
        directory: the pipeline directory.
        components: weights to load, among ``"vae"``, ``"unet"``, ``"vocoder"``.
        clip_s: clip length (s) of the generator's windows (AudioLDM's default 10.24 s:
            a 1024 x 64 mel, a 256 x 16 latent).
        device: where the loaded models go.

    Returns:
        an :class:`LDMBackbone`.

    Raises:
        BackboneError: a missing or unsupported part (the message names it and what to do).
    """
    root = Path(directory).resolve()
    kind = inspect_ldm_directory(root)
    unknown = sorted(set(components) - set(COMPONENTS))
    if unknown:
        raise ValueError(f"unknown components {unknown}; choose among {', '.join(COMPONENTS)}")
    unet_cfg = _read_json(root / "unet" / "config.json", "the UNet config")
    vae_cfg = _read_json(root / "vae" / "config.json", "the VAE config")
    check_unet_config(unet_cfg, f"{root}/unet")
    mel = backbone_mel_format(root / "vocoder", clip_s)
    if int(vae_cfg.get("latent_channels", -1)) != int(unet_cfg.get("in_channels", -2)):
        raise BackboneError(f"{root}: the VAE makes {vae_cfg.get('latent_channels')}-channel latents, the UNet takes "
                            f"{unet_cfg.get('in_channels')} channels; the parts do not belong together")
    if int(vae_cfg.get("in_channels", 1)) != 1:
        raise BackboneError(f"{root}/vae takes {vae_cfg.get('in_channels')} input channels; a mel VAE takes 1")
    sched = read_scheduler_config(root)
    bb = LDMBackbone(root, kind, mel, sched, str(sched.get("prediction_type") or "epsilon"), unet_cfg)
    kw = dict(local_files_only=True, use_safetensors=True)
    if "vae" in components:
        bb.vae = AutoencoderKL.from_pretrained(root / "vae", **kw).to(device).eval()
    if "unet" in components:
        bb.unet = UNet2DConditionModel.from_pretrained(root / "unet", **kw).to(device)
    if "vocoder" in components:
        bb.vocoder = HiFiGANVocoder(root / "vocoder", mel, device=device)
    log.info("backbone %s (%s): %d x %d mel at %d Hz, predicts %s; loaded %s", root, kind, mel.n_mels, mel.n_frames,
             mel.sr, bb.prediction_type, ", ".join(components) or "configs")
    return bb


# ----------------------------------------------------------------------------- the denoiser


def conditions_used(cfg: DenoiserConfig, options: BackboneOptions) -> tuple[str, ...]:
    """The conditions a backbone denoiser reads: its class source and fusion sources, in
    :data:`~soundtrack.models.unet.CONDITIONS` order (what a generator should feed it; a
    condition it does not read would only dilute the guidance).

    Args:
        cfg: the denoiser config.
        options: the backbone options.
    """
    used = set(cfg.fusion_sources if cfg.fusion != "none" else ())
    if options.class_source != "none":
        used.add(options.class_source)
    return tuple(c for c in CONDITIONS if c in used)


class BackboneDenoiser(SoundtrackDenoiser):
    """A pretrained AudioLDM / MusicLDM UNet as our denoiser (module docstring).

    Same interface as :class:`~soundtrack.models.unet.SoundtrackDenoiser` (``forward``,
    ``save``, ``load``, ``config``); latents in and out are in our (B, C, F_l, T_l) layout
    and transposed to the UNet's (B, C, T_l, F_l) around the call. ``attention``,
    ``window_k`` and ``selector_tau`` are accepted and ignored (no tokens).
    :class:`SoundtrackDenoiser`'s constructor is not run (it builds a UNet); the token
    machinery it would add does not apply here.

    Args:
        cfg: the configuration (:meth:`LDMBackbone.denoiser_config`).
        unet: the pretrained UNet (used as it is, not copied).
        options: class source and what trains.
        kind: ``"audioldm"`` or ``"musicldm"`` (recorded).
        source: the pipeline directory it came from (recorded).
    """

    def __init__(self, cfg: DenoiserConfig, unet: UNet2DConditionModel, options: BackboneOptions | None = None,
                 kind: str = "audioldm", source: str = ""):
        nn.Module.__init__(self)
        check_unet_config(unet.config)
        if cfg.token_sources:
            raise ConfigError(f"a backbone UNet takes no cross-attention tokens; got token_sources={cfg.token_sources}")
        if cfg.fusion == "concat":
            raise ConfigError("fusion 'concat' widens conv_in; a backbone takes 'add' or 'none'")
        if cfg.latent_channels != unet.config.in_channels or tuple(cfg.block_out_channels) != tuple(
                unet.config.block_out_channels):
            raise ConfigError(f"the denoiser config (latent_channels {cfg.latent_channels}, channels "
                              f"{cfg.block_out_channels}) does not describe this UNet ({unet.config.in_channels}, "
                              f"{tuple(unet.config.block_out_channels)}); build it with LDMBackbone.denoiser_config")
        self.config = cfg
        self.options = options or BackboneOptions()
        if not conditions_used(cfg, self.options):
            raise ConfigError("with class_source 'none' and fusion 'none' the video conditions nothing; keep one")
        self.kind, self.source = str(kind), str(source)
        self.unet = unet
        # fused_frames() casts its inputs to null_token's dtype; there are no tokens here, so an
        # empty buffer carries the dtype (and follows .to()).
        self.register_buffer("null_token", torch.zeros(0), persistent=False)

        # 1. Class embedding: pooled condition -> the 512-d CLAP input, unit norm.
        class_dim = int(unet.config.projection_class_embeddings_input_dim)
        src = self.options.class_source
        if src != "none":
            width = cfg.cond_dim(src)
            self.class_proj = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, class_dim))
        self.class_null = nn.Parameter(F.normalize(torch.randn(class_dim), dim=0))

        # 2. Channel-wise fusion on the rows (time) of every ResnetBlock2D and of conv_in,
        # all zero-initialised: step 0 is the pretrained UNet.
        self._fusion = _FusionContext()
        self._fusion.clip_seconds, self._fusion.fps = cfg.clip_seconds, cfg.fps
        if cfg.fusion == "add":
            self._build_fusion(cfg, time_axis=-2, zero_input=True)
        self.unet.requires_grad_(self.options.trainable == "all")

    @property
    def conditions_used(self) -> tuple[str, ...]:
        """The conditions this denoiser reads (:func:`conditions_used`)."""
        return conditions_used(self.config, self.options)

    def class_vector(self, conds: Conditions, drop: torch.Tensor) -> torch.Tensor:
        """The UNet's ``class_labels``: (B, 512) unit vectors (module docstring).

        Args:
            conds: the conditions.
            drop: (B, 4) bool drop mask over :data:`~soundtrack.models.unet.CONDITIONS`.
        """
        b = drop.shape[0]
        null = F.normalize(self.class_null, dim=0).expand(b, -1)
        src = self.options.class_source
        x = None if src == "none" else getattr(conds, src)
        if x is None:
            return null
        v = F.normalize(self.class_proj(x.to(self.class_null.dtype).mean(dim=1)), dim=-1)
        dropped = drop[:, CONDITIONS.index(src)].to(v.device)
        return torch.where(dropped[:, None], null, v)

    def forward(self, latents: torch.Tensor, t: torch.Tensor | int, conds: Conditions,
                drop_mask: torch.Tensor | None = None, *token_options: Any, **token_kwargs: Any) -> torch.Tensor:
        """Predicts ``config.prediction_type`` (the backbone's) for (B, C, F_l, T_l) latents.

        Args:
            latents: noisy latents in our layout.
            t: training-scale timesteps, (B,) or a scalar.
            conds: the conditions.
            drop_mask: (B, 4) bool, True = dropped (None: keep all).
            *token_options: ``attention``, ``window_k``, ``selector_tau`` of the token UNet's
                forward, by position: ignored (this UNet takes no condition tokens).
            **token_kwargs: the same by name: ignored.

        Returns:
            the UNet output in our layout, shape of ``latents``.
        """
        del token_options, token_kwargs
        t, drop = self._prepare(latents, t, conds, drop_mask)
        labels = self.class_vector(conds, drop)
        fused = self.fused_frames(conds, drop)
        sample = latents.transpose(-1, -2)  # AudioLDM / MusicLDM put time on the rows
        self._fusion.frames, self._fusion.cache = fused, {}
        try:
            out = self.unet(sample, t, encoder_hidden_states=None, class_labels=labels.to(sample.dtype)).sample
        finally:
            self._fusion.frames, self._fusion.cache = None, {}
        return out.transpose(-1, -2)

    # -- persistence ------------------------------------------------------------------

    def save(self, directory: str | os.PathLike) -> Path:
        """Writes ``denoiser_config.json``, ``backbone.json`` (kind, source, options and the
        UNet's config) and ``denoiser.safetensors`` (every weight, the UNet's included).

        Args:
            directory: output folder (created).

        Returns:
            the folder.
        """
        path = super().save(directory)  # config and every weight (the UNet's included)
        unet_cfg = {k: v for k, v in dict(self.unet.config).items() if not k.startswith("_")}
        doc = {"format": BACKBONE_FORMAT, "kind": self.kind, "source": self.source,
               "options": self.options.to_dict(), "unet_config": unet_cfg}
        text = json.dumps(doc, indent=2, default=list)
        write_file(path / BACKBONE_FILE, lambda tmp: tmp.write_text(text), "the backbone denoiser's description")
        return path

    @classmethod
    def load(cls, directory: str | os.PathLike, device: str | torch.device = "cpu") -> "BackboneDenoiser":
        """Inverse of :meth:`save` (no access to the original pipeline directory).

        Args:
            directory: folder written by :meth:`save`.
            device: where to put the weights.

        Raises:
            BackboneError: a ``backbone.json`` of another format.
        """
        path = Path(directory)
        doc = _read_json(path / BACKBONE_FILE, "the backbone denoiser description")
        if doc.get("format") != BACKBONE_FORMAT:
            raise BackboneError(f"{path / BACKBONE_FILE} has format {doc.get('format')!r}, expected {BACKBONE_FORMAT!r}")
        cfg = DenoiserConfig.from_dict(read_denoiser_config(path))  # the weights are checked first
        unet = UNet2DConditionModel.from_config(doc["unet_config"])
        model = cls(cfg, unet, BackboneOptions.from_dict(doc.get("options")), kind=doc.get("kind", "audioldm"),
                    source=doc.get("source", ""))
        model.load_state_dict(strip_module_prefix(read_denoiser_weights(path, device)))
        return model.to(device)


def load_denoiser(directory: str | os.PathLike, device: str | torch.device = "cpu") -> SoundtrackDenoiser:
    """Loads a saved denoiser of either kind: ours, or a fine-tuned backbone (its folder has
    ``backbone.json``). What every loader of a model directory calls.

    Args:
        directory: folder written by :meth:`SoundtrackDenoiser.save` or :meth:`BackboneDenoiser.save`.
        device: where to put the weights.
    """
    path = Path(directory)
    if (path / BACKBONE_FILE).is_file():
        return BackboneDenoiser.load(path, device=device)
    return SoundtrackDenoiser.load(path, device=device)


def backbone_denoiser(directory: str | os.PathLike, cfg: DenoiserConfig,
                      options: BackboneOptions | Mapping[str, Any] | None = None) -> BackboneDenoiser:
    """A :class:`BackboneDenoiser` on the pretrained UNet of a pipeline directory (what the
    diffusion solver trains when ``train.backbone`` is set).

    Args:
        directory: the pipeline directory.
        cfg: the denoiser config (:meth:`LDMBackbone.denoiser_config`).
        options: ``train.backbone_options``.
    """
    bb = load_ldm_backbone(directory, components=("unet",), clip_s=cfg.clip_seconds)
    return bb.denoiser(cfg, options)
