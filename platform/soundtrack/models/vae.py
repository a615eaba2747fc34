"""Mel VAE: a diffusers ``AutoencoderKL`` over one-channel log-mel spectrograms.

Layout: a mel batch is ``(B, 1, n_mels, T)``: frequency is the image height, **time the
width** (the ``(n_mels, T)`` orientation of ``features.log_mel``). Latents are
``(B, C, n_mels / f, T / f)`` for a down-sampling factor ``f``; latent column ``i`` covers
the clip's ``[i, i + 1) * D / T_l`` seconds, which the UNet's attention masks rely on.

Profiles (see :func:`vae_config`):

* ``paper``: AudioLDM's VAE shape (the latent-diffusion ``AutoencoderKL`` AudioLDM and
  MusicLDM ship): channels (128, 256, 512), 2 residual layers per block, 2 down-samplings
  (4x in time and frequency), **8 latent channels** (AudioLDM's ``z_channels: 8``), self-
  attention in the mid block. 128 x 1024 mel -> 8 x 32 x 256 latent.
* ``tiny``: channels (16, 32), 1 layer per block, ONE down-sampling (2x), 4 latent
  channels, no mid-block attention. 64 x 256 pooled mel (:meth:`MelFormat.tiny`) ->
  4 x 32 x 128 latent: 80 ms per latent column, as many numbers as the mel. 0.16 M
  parameters. Chosen by measurement (``benchmarks/vae_recon.py``, 32 val clips): the
  earlier (16, 32, 64) VAE (two down-samplings, 4 x 16 x 64) kept the onsets but its chroma
  agreement with the input audio was at chance after its 300 steps (17 % of the mel ->
  vocoder ceiling); trained 3x longer it reached 58 % (4 latent channels) and 78 % (8),
  in 380 s each; this one reaches 96 % in 450 steps (167 s). The full-resolution level
  (64 x 256) dominates the cost, so it gets the fewest channels.

Normalisation (stored in the model's config, so a saved VAE carries it): the natural-log
mel is mapped affinely to roughly [-1, 1] by a fixed min-max,
``(mel - (mel_max + mel_min) / 2) / ((mel_max - mel_min) / 2)``, with ``mel_min = ln(1e-5)``
(the log floor: silence -> -1) and ``mel_max = 3.0`` (a little above the loudest magnitude
mel of full-scale music at this front end, ~ln 10). Fixed rather than fitted: the same
numbers then hold for every data set and the floor maps to exactly -1. Louder input simply
exceeds 1 (nothing is clipped).

Latent scale: ``encode_latents`` returns ``(z - shift_factor) * scaling_factor`` (the
diffusers convention); a freshly built VAE has ``scaling_factor = 1``; after training call
:func:`fit_scaling_factor` so that latents have unit standard deviation (Stable Diffusion's
0.18215 was found the same way).

External checkpoints: a plain ``AutoencoderKL`` loaded from an AudioLDM / MusicLDM folder
(``vae/``) is accepted by :func:`encode_latents` / :func:`decode_mel`: those models take
``(B, 1, T, n_mels)`` un-normalised log-mels, so the mel is transposed (and not normalised)
on the way in and the latent transposed back to ``(B, C, F_l, T_l)``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Literal

import torch
from diffusers import AutoencoderKL
from diffusers.configuration_utils import register_to_config
from safetensors import SafetensorError

from soundtrack.data.integrity import convert_write_errors, verify_directory, write_manifest
from soundtrack.errors import IntegrityError, SoundtrackError
from soundtrack.models.mel import MelFormat
from soundtrack.profiles import model_preset

Profile = Literal["tiny", "paper"]

#: ln(1e-5): the log-mel floor of the front end.
LOG_FLOOR = -11.512925464970229


class MelVAE(AutoencoderKL):
    """``AutoencoderKL`` that also stores its mel format and normalisation in its config.

    Every argument of ``AutoencoderKL`` is accepted; the extra ones below are saved in
    ``config.json`` by ``save_pretrained`` and restored by ``MelVAE.from_pretrained``.

    Args:
        mel_format: :meth:`MelFormat.to_dict` of the mel this VAE encodes.
        mel_min: log-mel value mapped to -1 (natural-log units).
        mel_max: log-mel value mapped to +1 (natural-log units).
        **kwargs: ``AutoencoderKL`` arguments.
    """

    @register_to_config
    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        down_block_types: tuple[str, ...] = ("DownEncoderBlock2D",),
        up_block_types: tuple[str, ...] = ("UpDecoderBlock2D",),
        block_out_channels: tuple[int, ...] = (64,),
        layers_per_block: int = 1,
        act_fn: str = "silu",
        latent_channels: int = 4,
        norm_num_groups: int = 32,
        sample_size: int = 64,
        scaling_factor: float = 1.0,
        shift_factor: float | None = None,
        latents_mean: tuple[float] | None = None,
        latents_std: tuple[float] | None = None,
        force_upcast: bool = False,
        use_quant_conv: bool = True,
        use_post_quant_conv: bool = True,
        mid_block_add_attention: bool = True,
        mel_format: dict | None = None,
        mel_min: float = LOG_FLOOR,
        mel_max: float = 3.0,
    ):
        super().__init__(
            in_channels=in_channels,
            out_channels=out_channels,
            down_block_types=tuple(down_block_types),
            up_block_types=tuple(up_block_types),
            block_out_channels=tuple(block_out_channels),
            layers_per_block=layers_per_block,
            act_fn=act_fn,
            latent_channels=latent_channels,
            norm_num_groups=norm_num_groups,
            sample_size=sample_size,
            scaling_factor=scaling_factor,
            shift_factor=shift_factor,
            latents_mean=latents_mean,
            latents_std=latents_std,
            force_upcast=force_upcast,
            use_quant_conv=use_quant_conv,
            use_post_quant_conv=use_post_quant_conv,
            mid_block_add_attention=mid_block_add_attention,
        )
        if not mel_max > mel_min:
            raise ValueError(f"need mel_max > mel_min, got {mel_min}, {mel_max}")

    @property
    def mel(self) -> MelFormat:
        """The :class:`MelFormat` this VAE encodes."""
        return MelFormat.from_dict(self.config.mel_format) if self.config.mel_format else MelFormat()

    @property
    def downsample(self) -> int:
        """Down-sampling factor of the latent in time and frequency."""
        return 2 ** (len(self.config.block_out_channels) - 1)


def vae_config(profile: Profile | str = "tiny", **overrides: Any) -> dict[str, Any]:
    """``MelVAE`` constructor arguments for a profile (see the module docstring).

    Args:
        profile: ``"tiny"`` or ``"paper"``.
        **overrides: arguments to change (e.g. ``latent_channels=8``).

    Returns:
        dict of keyword arguments for :class:`MelVAE`: the profile's ``models.vae`` block
        (``soundtrack/profiles/<name>.yaml``: channels, layers, latent channels, groups,
        mid-block attention) over the settings every profile shares, and its mel format.

    Raises:
        ConfigError: an unknown profile (a ``ValueError``, naming the allowed ones).
    """
    cfg: dict[str, Any] = model_preset(profile, "vae")
    fmt = MelFormat.preset(profile)
    cfg.update(in_channels=1, out_channels=1, sample_size=fmt.n_mels, scaling_factor=1.0,
               mel_format=fmt.to_dict())
    cfg.update(overrides)
    # One encoder / decoder block per channel entry: the block types follow the *final*
    # ``block_out_channels``, so overriding the channels alone (e.g. ``(16, 32)``: one
    # down-sampling) builds a consistent model; explicit block types still win.
    n = len(cfg["block_out_channels"])
    if "down_block_types" not in overrides:
        cfg["down_block_types"] = ("DownEncoderBlock2D",) * n
    if "up_block_types" not in overrides:
        cfg["up_block_types"] = ("UpDecoderBlock2D",) * n
    if isinstance(cfg.get("mel_format"), MelFormat):
        cfg["mel_format"] = cfg["mel_format"].to_dict()
    return cfg


def build_vae(profile: Profile | str = "tiny", **overrides: Any) -> MelVAE:
    """Builds a randomly initialised :class:`MelVAE` of a profile.

    Works under ``with torch.device("meta"):`` (shapes only, no memory).

    Args:
        profile: ``"tiny"`` or ``"paper"``.
        **overrides: constructor arguments to change (see :func:`vae_config`).
    """
    return MelVAE(**vae_config(profile, **overrides))


#: The weights file ``save_pretrained`` writes (and the manifest must list).
VAE_WEIGHTS = "diffusion_pytorch_model.safetensors"
#: What to do with a VAE folder that fails its check.
LOAD_HINT = "save the VAE again (re-export the model, resume its training run, copy it again or re-download it)"


def load_vae(directory: str | os.PathLike) -> AutoencoderKL:
    """Loads a VAE saved with ``save_pretrained`` (ours, or an AudioLDM/MusicLDM ``vae/``),
    after checking its weights against the folder's manifest (a folder without one, e.g. a
    downloaded ``vae/``, loads unverified, logged once).

    Args:
        directory: local folder with ``config.json`` and ``diffusion_pytorch_model.safetensors``.

    Returns:
        a :class:`MelVAE` when the folder holds one, else a plain ``AutoencoderKL``.

    Raises:
        soundtrack.errors.IntegrityError: a missing, truncated or garbled file (named).
    """
    verify_directory(directory, required=(VAE_WEIGHTS,), what="VAE", hint=LOAD_HINT)
    config = os.path.join(directory, "config.json")
    try:
        with open(config) as fh:
            cls_name = json.load(fh).get("_class_name")
        cls = MelVAE if cls_name == "MelVAE" else AutoencoderKL
        return cls.from_pretrained(directory)
    except SoundtrackError:
        raise
    except (OSError, ValueError, AttributeError, SafetensorError) as exc:  # missing / torn / garbled files
        raise IntegrityError(f"{directory}: the VAE does not load ({type(exc).__name__}: {exc}); {LOAD_HINT}") from exc


def save_vae(vae: AutoencoderKL, directory: str | os.PathLike) -> None:
    """Saves config and weights (safetensors) with diffusers' ``save_pretrained``, then the
    weights' manifest.

    ``save_pretrained`` writes into a hidden staging folder inside ``directory``; each file
    is then renamed into place, so an earlier save's files stay whole when a write fails.

    Args:
        vae: the model.
        directory: output folder (created).

    Raises:
        soundtrack.errors.DiskFullError: no space (the staging folder is removed).
    """
    out = Path(directory)
    stage = out / f".staging{os.getpid()}"
    try:
        with convert_write_errors(out, "the VAE"):
            out.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(stage, ignore_errors=True)
            vae.save_pretrained(stage, safe_serialization=True)
            for f in sorted(stage.iterdir(), key=lambda p: p.name == "config.json"):  # the weights first
                os.replace(f, out / f.name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    write_manifest(out)


# ----------------------------------------------------------------------------- helpers


def _is_ours(vae: AutoencoderKL) -> bool:
    return isinstance(vae, MelVAE)


def _as_image(mel: torch.Tensor) -> torch.Tensor:
    """(B, F, T) or (B, 1, F, T) -> (B, 1, F, T)."""
    if mel.dim() == 3:
        return mel.unsqueeze(1)
    if mel.dim() == 4 and mel.shape[1] == 1:
        return mel
    raise ValueError(f"mel must be (B, F, T) or (B, 1, F, T), got {tuple(mel.shape)}")


def normalize_mel(vae: AutoencoderKL, mel: torch.Tensor) -> torch.Tensor:
    """Log-mel (natural log) -> the VAE's input range (~[-1, 1]); identity for external VAEs.

    Args:
        vae: the VAE (its config holds ``mel_min`` / ``mel_max``).
        mel: log-mel tensor, any shape.
    """
    if not _is_ours(vae):
        return mel
    lo, hi = float(vae.config.mel_min), float(vae.config.mel_max)
    return (mel - 0.5 * (hi + lo)) / (0.5 * (hi - lo))


def denormalize_mel(vae: AutoencoderKL, x: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`normalize_mel`.

    Args:
        vae: the VAE.
        x: normalised mel, any shape.
    """
    if not _is_ours(vae):
        return x
    lo, hi = float(vae.config.mel_min), float(vae.config.mel_max)
    return x * (0.5 * (hi - lo)) + 0.5 * (hi + lo)


def vae_input(vae: AutoencoderKL, mel: torch.Tensor) -> torch.Tensor:
    x = normalize_mel(vae, _as_image(mel))
    # AudioLDM/MusicLDM VAEs see time as the height: (B, 1, T, F).
    return x if _is_ours(vae) else x.transpose(-1, -2)


def encode_latents(
    vae: AutoencoderKL,
    mel: torch.Tensor,
    sample: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Log-mel -> scaled latents ``(z - shift_factor) * scaling_factor``, (B, C, F_l, T_l).

    Args:
        vae: the VAE (ours, or an external AudioLDM-layout ``AutoencoderKL``).
        mel: log-mel (B, n_mels, T) or (B, 1, n_mels, T), natural-log units, in the VAE's
            mel format.
        sample: draw from the posterior (True) or take its mean (False, default: the
            latent the diffusion model learns is then a deterministic function of the clip).
        generator: RNG for ``sample=True``.

    Returns:
        latents with time as the last axis.
    """
    dist = vae.encode(vae_input(vae, mel)).latent_dist
    z = dist.sample(generator=generator) if sample else dist.mode()
    if not _is_ours(vae):
        z = z.transpose(-1, -2)
    shift = vae.config.shift_factor or 0.0
    return (z - shift) * vae.config.scaling_factor


def decode_mel(vae: AutoencoderKL, latents: torch.Tensor) -> torch.Tensor:
    """Scaled latents (B, C, F_l, T_l) -> log-mel (B, n_mels, T), natural-log units.

    Args:
        vae: the VAE used by :func:`encode_latents`.
        latents: scaled latents.
    """
    shift = vae.config.shift_factor or 0.0
    z = latents / vae.config.scaling_factor + shift
    if not _is_ours(vae):
        z = z.transpose(-1, -2)
    x = vae.decode(z).sample
    if not _is_ours(vae):
        x = x.transpose(-1, -2)
    return denormalize_mel(vae, x).squeeze(1)


@torch.no_grad()
def fit_scaling_factor(vae: MelVAE, mels: torch.Tensor, batch_size: int = 8) -> float:
    """Sets ``scaling_factor`` to 1 / std of the (unscaled) latents of ``mels``.

    Args:
        vae: a trained VAE (its config is updated in place).
        mels: representative log-mels (N, n_mels, T).
        batch_size: encoding batch size.

    Returns:
        the new scaling factor.
    """
    vae.register_to_config(scaling_factor=1.0, shift_factor=None)
    chunks = [encode_latents(vae, mels[i : i + batch_size]) for i in range(0, len(mels), batch_size)]
    std = float(torch.cat(chunks).float().std())
    factor = 1.0 / max(std, 1e-8)
    vae.register_to_config(scaling_factor=factor)
    return factor


def config_latent_shape(cfg: dict[str, Any]) -> tuple[int, int, int]:
    """(C, F_l, T_l) of one clip's latent for :func:`vae_config` arguments (no model built).

    Args:
        cfg: ``MelVAE`` constructor arguments (with ``mel_format``).
    """
    fmt = MelFormat.from_dict(cfg["mel_format"]) if cfg.get("mel_format") else MelFormat()
    f = 2 ** (len(cfg["block_out_channels"]) - 1)
    return int(cfg.get("latent_channels", 4)), -(-fmt.n_mels // f), -(-fmt.n_frames // f)


def latent_shape(vae: AutoencoderKL, n_mels: int, n_frames: int) -> tuple[int, int, int]:
    """(C, F_l, T_l) of the latent of an ``n_mels x n_frames`` mel.

    Args:
        vae: the VAE.
        n_mels: mel bands.
        n_frames: mel frames.
    """
    f = 2 ** (len(vae.config.block_out_channels) - 1)
    return int(vae.config.latent_channels), -(-n_mels // f), -(-n_frames // f)
