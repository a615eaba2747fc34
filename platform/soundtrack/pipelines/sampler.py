"""Sampling of the latent soundtrack diffusion model (its training loss: :mod:`soundtrack.losses.diffusion`).

Reproducibility contract: a clip's output depends only on (model, clip, seed), never on the
other clips of a batch.

* Randomness: every clip has its own ``torch.Generator`` seeded from
  ``sha256(f"{seed}|{key}")`` (key = the clip id, plus ``#k`` for window ``k > 0`` of a long
  video); it draws the clip's initial noise and every stochastic step (DDPM, DDIM with
  eta > 0).
* Arithmetic: CPU kernels are not batch-invariant: on our machines a ``Linear`` over 1 row
  vs 8 rows, or a small convolution at batch 1 vs 2, differ in the last bits (~1e-6 after a
  UNet forward). With ``batch_invariant=True`` (default) each clip is therefore denoised on
  its own (its guidance passes still go through the model as one batch, the same batch
  whether the clip came alone or with others), with its own copy of the scheduler.
  ``batch_invariant=False`` batches all clips into each model call (faster on a GPU;
  results then depend on the batch at the 1e-6 level).

Long videos: 10.24 s windows, the next starting 10.24 - 1.0 = 9.24 s later, each with the
conditions of its own time span (per-frame features linearly interpolated at the window's
frame times, last frame held past the end), joined with a 1 s equal-power crossfade and
trimmed to the video's length (:func:`join_windows`).
"""

from __future__ import annotations

import copy
import hashlib
import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import torch

from soundtrack.models.unet import Conditions
from soundtrack.models.vae import decode_mel
from soundtrack.pipelines.guidance import guided_prediction
from soundtrack.pipelines.schedulers import DEFAULT_SCHEDULE, DEFAULT_STEPS, NoiseSchedule, make_scheduler

# ----------------------------------------------------------------------------- sampling


@dataclass(frozen=True)
class SamplerConfig:
    """How to sample.

    The settings a caller may change per call, and their valid values, are the knobs of
    :data:`soundtrack.pipelines.knobs.KNOBS` (the same names).

    Attributes:
        scheduler: ``"dpmsolver++"`` (tiny default), ``"ddim"`` (papers: 200 steps) or ``"ddpm"``.
        num_steps: denoising steps (None: 20 / 200 / 1000 for the three).
        guidance_scale: global CFG scale s (CCCG 2.5).
        weights: per-condition weights (None: equal over the present conditions).
        eta: DDIM eta (0 = deterministic).
        attention: attention method override (None: the model's).
        window_k: window size override (None: the model's).
        selector_tau: Diff-BGM's feature-selector switch timestep for this sampling (on the
            1000-step training scale: text tokens at ``t >= tau``, video tokens below;
            None: the model's own selector setting). Setting it turns the selector on; it
            only changes anything for a model with text tokens.
        batch_invariant: denoise each clip on its own (module docstring).
        crossfade_s: crossfade between windows of a long video (s).
        max_seconds: longest video accepted (s).
    """

    scheduler: str = "dpmsolver++"
    num_steps: int | None = None
    guidance_scale: float = 2.5
    weights: Mapping[str, float] | None = None
    eta: float = 0.0
    attention: str | None = None
    window_k: int | None = None
    selector_tau: int | None = None
    batch_invariant: bool = True
    crossfade_s: float = 1.0
    max_seconds: float = 600.0

    @property
    def steps(self) -> int:
        """The number of denoising steps."""
        return int(self.num_steps or DEFAULT_STEPS.get(self.scheduler, 20))


def seed_for(seed: int, key: str) -> int:
    """A 63-bit seed derived from (seed, key) with SHA-256 (stable across processes).

    Args:
        seed: the run's seed.
        key: the clip id (and window).
    """
    digest = hashlib.sha256(f"{int(seed)}|{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def clip_generator(seed: int, key: str) -> torch.Generator:
    """CPU ``torch.Generator`` of one clip (see :func:`seed_for`).

    Args:
        seed: the run's seed.
        key: the clip id (and window).
    """
    return torch.Generator(device="cpu").manual_seed(seed_for(seed, key))


def window_key(clip_id: str, window: int) -> str:
    """Generator key of window ``window`` of a clip (window 0 is the clip id itself, so a
    clip no longer than one window samples the same as :func:`sample_latents` on it).

    Args:
        clip_id: the clip id.
        window: window index.
    """
    return clip_id if window == 0 else f"{clip_id}#{window}"


def _denoise(denoiser, scheduler, conds: Conditions, keys: Sequence[str], seed: int,
             shape: tuple[int, ...], cfg: SamplerConfig) -> torch.Tensor:
    """The denoising loop for one group of clips (all rows sampled together)."""
    device = next(denoiser.parameters()).device
    dtype = next(denoiser.parameters()).dtype
    # 1. timesteps of the sampler
    scheduler.set_timesteps(cfg.steps, device=device)
    # 2. initial noise, one generator per clip
    gens = [clip_generator(seed, k) for k in keys]
    x = torch.cat([torch.randn((1, *shape), generator=g, dtype=torch.float32) for g in gens])
    x = (x * scheduler.init_noise_sigma).to(device=device, dtype=dtype)
    step_kwargs = {"eta": cfg.eta} if cfg.scheduler == "ddim" else {}
    generator = gens[0] if len(gens) == 1 else gens
    for t in scheduler.timesteps:
        # 3. scheduler-specific input scaling (identity for DDPM/DDIM/DPM-Solver)
        x_in = scheduler.scale_model_input(x, t)
        # 4. guided model output (unconditional + one pass per condition, one batch)
        out = guided_prediction(denoiser, x_in, t, conds, cfg.guidance_scale, cfg.weights,
                                cfg.attention, cfg.window_k, selector_tau=cfg.selector_tau)
        # 5. one sampler step; stochastic samplers draw from the clips' generators
        x = scheduler.step(out, t, x, generator=generator, **step_kwargs).prev_sample
    return x


@torch.no_grad()
def sample_latents(
    denoiser,
    conds: Conditions,
    keys: Sequence[str],
    seed: int,
    cfg: SamplerConfig = SamplerConfig(),
    scheduler=None,
    schedule: NoiseSchedule | None = None,
) -> torch.Tensor:
    """Samples latents for a batch of clips.

    Args:
        denoiser: a trained :class:`~soundtrack.models.unet.SoundtrackDenoiser` (eval mode).
        conds: the clips' conditions (B examples).
        keys: one generator key per clip (its clip id; see :func:`window_key`).
        seed: the run's seed.
        cfg: sampler settings.
        scheduler: a scheduler to use (None: ``make_scheduler(cfg.scheduler,
            denoiser.config.prediction_type, schedule)``); copied per clip, never mutated.
        schedule: the model's noise schedule (None: the default CCCG schedule); only used
            when ``scheduler`` is None.

    Returns:
        (B, C, F_l, T_l) latents.
    """
    dcfg = denoiser.config
    if len(keys) != conds.batch_size:
        raise ValueError(f"{len(keys)} keys for {conds.batch_size} clips")
    if scheduler is None:
        scheduler = make_scheduler(cfg.scheduler, dcfg.prediction_type, schedule or DEFAULT_SCHEDULE)
    if scheduler.config.prediction_type != dcfg.prediction_type:
        raise ValueError(f"scheduler predicts {scheduler.config.prediction_type!r}, model {dcfg.prediction_type!r}")
    shape = (dcfg.latent_channels, *dcfg.latent_hw)
    if cfg.batch_invariant:
        parts = [
            _denoise(denoiser, copy.deepcopy(scheduler), conds.select([i]), [keys[i]], seed, shape, cfg)
            for i in range(len(keys))
        ]
        return torch.cat(parts)
    return _denoise(denoiser, copy.deepcopy(scheduler), conds, list(keys), seed, shape, cfg)


@torch.no_grad()
def generate_clips(denoiser, vae, vocoder, conds: Conditions, clip_ids: Sequence[str], seed: int,
                   cfg: SamplerConfig = SamplerConfig(), schedule: NoiseSchedule | None = None) -> torch.Tensor:
    """Waveforms of one window-length clip per example: sample, decode, vocode.

    Args:
        denoiser: the latent denoiser.
        vae: the mel VAE (:func:`soundtrack.models.vae.decode_mel`).
        vocoder: a vocoder (``vocoder(mel) -> wav``).
        conds: conditions (B clips).
        clip_ids: one id per clip (seeds its generator).
        seed: run seed.
        cfg: sampler settings.
        schedule: the model's noise schedule (None: the default).

    Returns:
        (B, N) float32 waveforms at the vocoder's sample rate.
    """
    latents = sample_latents(denoiser, conds, list(clip_ids), seed, cfg, schedule=schedule)
    mels = torch.cat([decode_mel(vae, latents[i : i + 1]) for i in range(len(latents))])
    return vocoder(mels.float())


# ----------------------------------------------------------------------------- long videos


def window_starts(duration_s: float, clip_s: float = 10.24, crossfade_s: float = 1.0,
                  sr: int = 16000) -> list[int]:
    """Start samples of the windows covering a video.

    Window ``k`` starts at ``k * (clip - crossfade)`` samples; there are just enough windows
    for the last one to reach the end (one window for videos up to ``clip_s``).

    Args:
        duration_s: video length (s).
        clip_s: window length (s).
        crossfade_s: overlap between consecutive windows (s).
        sr: sample rate (Hz).

    Returns:
        start offsets in samples.
    """
    clip_n, fade_n = int(round(clip_s * sr)), int(round(crossfade_s * sr))
    total = int(round(duration_s * sr))
    if fade_n >= clip_n:
        raise ValueError("crossfade must be shorter than a window")
    hop = clip_n - fade_n
    n = 1 if total <= clip_n else 1 + math.ceil((total - clip_n) / hop)
    return [k * hop for k in range(n)]


def equal_power_fades(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Fade-in and fade-out gains over ``n`` samples with ``in^2 + out^2 = 1``.

    ``in = sin(pi/2 x)``, ``out = cos(pi/2 x)`` at ``x = (i + 1/2) / n``: the summed power of
    two uncorrelated signals stays constant through the crossfade.

    Args:
        n: crossfade length (samples).
    """
    x = (np.arange(n, dtype=np.float64) + 0.5) / max(n, 1)
    return np.sin(0.5 * np.pi * x).astype(np.float32), np.cos(0.5 * np.pi * x).astype(np.float32)


def join_windows(wavs: Sequence[np.ndarray | torch.Tensor], sr: int = 16000, crossfade_s: float = 1.0,
                 total_len: int | None = None) -> np.ndarray:
    """Joins consecutive windows with equal-power crossfades and trims to ``total_len``.

    Window ``k`` is placed at ``k * (len(window) - crossfade)`` samples; every overlap of
    ``crossfade`` samples is ``out * previous + in * next`` (:func:`equal_power_fades`).

    Args:
        wavs: windows, all of the same length.
        sr: sample rate (Hz).
        crossfade_s: overlap (s), 1.0 by default.
        total_len: output length in samples (None: the full joined length).

    Returns:
        float32 array (total_len,).

    Raises:
        ValueError: if the windows do not cover ``total_len`` samples.
    """
    arrs = [np.asarray(w.detach().cpu() if torch.is_tensor(w) else w, dtype=np.float32).reshape(-1) for w in wavs]
    if not arrs:
        raise ValueError("no windows to join")
    n = arrs[0].shape[0]
    if any(a.shape[0] != n for a in arrs):
        raise ValueError("all windows must have the same length")
    fade = int(round(crossfade_s * sr))
    if not 0 <= fade < n:
        raise ValueError(f"crossfade of {fade} samples does not fit windows of {n}")
    hop = n - fade
    full = hop * (len(arrs) - 1) + n
    total = full if total_len is None else int(total_len)
    if total > full:
        raise ValueError(f"{len(arrs)} windows cover {full} samples, {total} requested")
    fade_in, fade_out = equal_power_fades(fade)
    out = np.zeros(full, dtype=np.float32)
    for k, a in enumerate(arrs):
        a = a.copy()
        if k > 0 and fade:
            a[:fade] *= fade_in
        if k < len(arrs) - 1 and fade:
            a[n - fade :] *= fade_out
        out[k * hop : k * hop + n] += a
    return out[:total]


def window_conditions(conds: Conditions, start_s: float, clip_s: float = 10.24, fps: float = 10.0) -> Conditions:
    """The conditions of the window starting at ``start_s`` of a whole-video ``conds``.

    Per-frame tensors are resampled at the window's frame times ``start_s + j / fps``
    (``j < ceil(clip_s * fps)``) by linear interpolation between the video's frames
    (frame ``i`` at ``i / fps``), holding the last frame past the end (the data contract's
    padding). Text is shared by all windows. Shot starts are shifted into window frames and
    those inside ``(0, n)`` kept.

    Args:
        conds: conditions of the whole video (per-frame tensors (B, Tv_total, D)).
        start_s: window start (s).
        clip_s: window length (s).
        fps: frame rate.
    """
    n = int(math.ceil(round(clip_s * fps, 6)))
    tv = conds.n_frames
    out = {}
    if tv is not None:
        pos = np.clip(start_s * fps + np.arange(n, dtype=np.float64), 0.0, tv - 1)
        lo = np.floor(pos).astype(np.int64)
        hi = np.minimum(lo + 1, tv - 1)
        for c in ("video", "music", "sfx"):
            x = getattr(conds, c)
            if x is None:
                continue
            w = torch.as_tensor(pos - lo, dtype=x.dtype, device=x.device)[None, :, None]
            out[c] = x[:, torch.as_tensor(lo)] * (1 - w) + x[:, torch.as_tensor(hi)] * w
    shots = None
    if conds.shots is not None:
        shift = start_s * fps
        shots = [[float(s) - shift for s in seq if 0 < float(s) - shift < n] for seq in conds.shots]
    return Conditions(text=conds.text, text_mask=conds.text_mask, shots=shots, **out)


@torch.no_grad()
def generate_video(denoiser, vae, vocoder, conds: Conditions, duration_s: float, clip_id: str, seed: int,
                   cfg: SamplerConfig = SamplerConfig(), schedule: NoiseSchedule | None = None) -> np.ndarray:
    """A soundtrack for a whole video of any length up to ``cfg.max_seconds``.

    Steps: (1) window starts every ``clip - crossfade`` seconds; (2) each window's
    conditions; (3) latents per window, window ``k`` seeded by ``(seed, clip_id#k)``;
    (4) decode + vocode; (5) equal-power join, trimmed to ``duration_s``.

    Args:
        denoiser: the latent denoiser.
        vae: the mel VAE.
        vocoder: a vocoder.
        conds: the video's conditions, batch 1, per-frame tensors over the whole video.
        duration_s: the video's length (s).
        clip_id: the video's id (seeds the generators).
        seed: run seed.
        cfg: sampler settings.
        schedule: the model's noise schedule (None: the default).

    Returns:
        float32 waveform of ``round(duration_s * sr)`` samples.
    """
    if conds.batch_size != 1:
        raise ValueError("generate_video takes the conditions of one video (batch 1)")
    if not 0 < duration_s <= cfg.max_seconds:
        raise ValueError(f"video length {duration_s} s outside (0, {cfg.max_seconds}] s")
    dcfg = denoiser.config
    sr = int(getattr(vocoder, "sample_rate", 16000))
    # 1. windows
    starts = window_starts(duration_s, dcfg.clip_seconds, cfg.crossfade_s, sr)
    # 2. per-window conditions, batched as examples
    parts = [window_conditions(conds, s / sr, dcfg.clip_seconds, dcfg.fps) for s in starts]
    batch = _cat_conditions(parts)
    # 3. latents
    keys = [window_key(clip_id, k) for k in range(len(starts))]
    latents = sample_latents(denoiser, batch, keys, seed, cfg, schedule=schedule)
    # 4. decode + vocode, window by window
    wavs = [vocoder(decode_mel(vae, latents[i : i + 1]).float())[0] for i in range(len(starts))]
    # 5. join
    clip_n = int(round(dcfg.clip_seconds * sr))
    wavs = [_fit(w, clip_n) for w in wavs]
    return join_windows(wavs, sr, cfg.crossfade_s, int(round(duration_s * sr)))


def _fit(wav: torch.Tensor, n: int) -> np.ndarray:
    """Crops or zero-pads a window to exactly ``n`` samples (vocoders may round)."""
    a = wav.detach().cpu().numpy().astype(np.float32).reshape(-1)
    return a[:n] if a.shape[0] >= n else np.pad(a, (0, n - a.shape[0]))


def _cat_conditions(parts: Sequence[Conditions]) -> Conditions:
    """Concatenates batch-1 conditions along the batch (text shared, same shapes)."""
    out = {}
    for c in ("video", "music", "sfx", "text", "text_mask"):
        xs = [getattr(p, c) for p in parts]
        out[c] = None if xs[0] is None else torch.cat(xs)
    shots = None if parts[0].shots is None else [s for p in parts for s in p.shots]
    return Conditions(shots=shots, **out)
