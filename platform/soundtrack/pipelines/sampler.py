"""Sampling of the latent soundtrack diffusion model (its training loss: :mod:`soundtrack.losses.diffusion`).

Reproducibility contract: a clip's output depends only on (model, clip, seed), never on the
other clips of a batch (bit for bit in :func:`sample_latents` and :func:`generate_video`;
within :data:`BATCH_TOLERANCE` in the batched :func:`generate_videos`).

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
* Batches of videos (:func:`generate_videos`, the serving path): the windows of several
  videos share one denoising loop whatever ``batch_invariant`` says; the noise is still
  each clip's own, and a video's waveform equals the video sampled alone within
  :data:`BATCH_TOLERANCE` (the contract is in :func:`generate_videos`).

Long videos: 10.24 s windows, the next starting 10.24 - 1.0 = 9.24 s later, each with the
conditions of its own time span (per-frame features linearly interpolated at the window's
frame times, last frame held past the end), joined with a 1 s equal-power crossfade and
trimmed to the video's length (:func:`join_windows`). :func:`generate_video` samples the
windows in groups of ``SamplerConfig.window_batch`` and adds each decoded window into one
preallocated output as soon as it is vocoded, so its memory does not grow with the
video's length beyond the output itself (4 bytes a sample: 38 MB for 10 minutes at
16 kHz) and the per-frame conditions; with ``batch_invariant=True`` the output does not
depend on the group size at all (each window is denoised alone either way).

NaN guard: the latents are checked after every denoising step and each window's
waveform after decoding; a non-finite value raises :class:`~soundtrack.errors.GeneratorError`
naming the clip, the window and the step. Nothing is ever replaced by a finite value: a
diverged model must not be scored or served as quiet audio.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import math
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from soundtrack.errors import GeneratorError, SoundtrackError
from soundtrack.models.unet import Conditions
from soundtrack.models.vae import decode_mel
from soundtrack.pipelines.guidance import guided_prediction, normalized_weights
from soundtrack.pipelines.schedulers import DEFAULT_SCHEDULE, DEFAULT_STEPS, NoiseSchedule, make_scheduler

log = logging.getLogger(__name__)


class GenerationCancelled(SoundtrackError):
    """A generation stopped because its ``should_stop`` hook answered True (a cancelled job).

    Not a :class:`~soundtrack.errors.GeneratorError`: nothing is wrong with the input or the
    model, and callers that turn generator errors into 4xx answers must not catch it as one.
    """


def _check_stop(should_stop: Callable[[], bool] | None, where: str) -> None:
    """Raise :class:`GenerationCancelled` when ``should_stop`` says so (``None``: never).

    Args:
        should_stop: the caller's hook (cheap: it is called before every denoising step).
        where: what was about to run, for the message and the log.
    """
    if should_stop is not None and should_stop():
        log.info("generation cancelled before %s", where)
        raise GenerationCancelled(f"the generation was cancelled before {where}")


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
        max_seconds: longest video accepted (s). 720 s: a 10-minute video with room for a
            container that runs a little over (a video of 600.05 s decodes to 6001 frames
            at 10 fps); generation time grows linearly with the length (65 windows for 10
            minutes), memory does not. A model directory keeps the value it was saved with.
        window_batch: windows of a long video sampled per group (>= 1). Memory holds one
            group's latents and conditions at a time; with ``batch_invariant=True`` the
            windows of a group are still denoised one by one, so the output does not depend
            on this value; with ``batch_invariant=False`` a group is one model batch (faster
            on a GPU; the output then differs at the 1e-6 level between group sizes).
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
    max_seconds: float = 720.0
    window_batch: int = 4

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


def _denoise(denoiser, scheduler, conds: Conditions, gens: Sequence[torch.Generator],
             shape: tuple[int, ...], cfg: SamplerConfig, labels: Sequence[str],
             should_stop: Callable[[], bool] | None = None) -> torch.Tensor:
    """The denoising loop for one group of clips (all rows sampled together).

    Args:
        denoiser: the latent denoiser.
        scheduler: a scheduler of its own (its timesteps are set here).
        conds: the rows' conditions (B examples).
        gens: one CPU generator per row (:func:`clip_generator`): it draws the row's
            initial noise, shape ``(1, *shape)``, and the row's noise of every stochastic
            step (diffusers draws a list of generators row by row, each ``(1, ...)``), so a
            row gets the same numbers whether it is alone or one of many.
        shape: (C, F_l, T_l) of one latent.
        cfg: sampler settings.
        labels: one name per row for the NaN guard's message.
        should_stop: called before every step (``None``: never); True stops the loop.

    Raises:
        GeneratorError: the latents of a row are not finite after a step (the message
            names the row's label and the step).
        GenerationCancelled: ``should_stop`` answered True.
    """
    device = next(denoiser.parameters()).device
    dtype = next(denoiser.parameters()).dtype
    # 1. timesteps of the sampler
    scheduler.set_timesteps(cfg.steps, device=device)
    # 2. initial noise, one generator per clip
    gens = list(gens)
    x = torch.cat([torch.randn((1, *shape), generator=g, dtype=torch.float32) for g in gens])
    x = (x * scheduler.init_noise_sigma).to(device=device, dtype=dtype)
    step_kwargs = {"eta": cfg.eta} if cfg.scheduler == "ddim" else {}
    generator = gens[0] if len(gens) == 1 else gens
    n_steps = len(scheduler.timesteps)
    for step, t in enumerate(scheduler.timesteps):
        if should_stop is not None:  # the cancellation hook: it reads no tensor, so outputs do not change
            _check_stop(should_stop, f"{labels[0]} denoising step {step + 1}/{n_steps}")
        # 3. scheduler-specific input scaling (identity for DDPM/DDIM/DPM-Solver)
        x_in = scheduler.scale_model_input(x, t)
        # 4. guided model output (unconditional + one pass per condition, one batch)
        out = guided_prediction(denoiser, x_in, t, conds, cfg.guidance_scale, cfg.weights,
                                cfg.attention, cfg.window_k, selector_tau=cfg.selector_tau)
        # 5. one sampler step; stochastic samplers draw from the clips' generators
        x = scheduler.step(out, t, x, generator=generator, **step_kwargs).prev_sample
        # 6. NaN guard: one reduction over the group's latents per step (on a GPU, one sync)
        if not bool(torch.isfinite(x).all()):
            _raise_non_finite(x, labels, step, n_steps, int(t))
    return x


def _raise_non_finite(x: torch.Tensor, labels: Sequence[str], step: int, n_steps: int, t: int) -> None:
    """Raise the NaN guard's :class:`GeneratorError` for the first row of ``x`` that is not finite."""
    bad = (~torch.isfinite(x)).flatten(1).sum(1)
    row = int(torch.nonzero(bad)[0, 0])
    raise GeneratorError(
        f"{labels[row]}: denoising step {step + 1}/{n_steps} (timestep {t}) gave {int(bad[row])} non-finite latent "
        f"values of {x[row].numel()}: the model diverged (check its training losses, or sample with fewer steps / "
        "a lower guidance_scale)")


@torch.no_grad()
def sample_latents(
    denoiser,
    conds: Conditions,
    keys: Sequence[str],
    seed: int,
    cfg: SamplerConfig = SamplerConfig(),
    scheduler=None,
    schedule: NoiseSchedule | None = None,
    labels: Sequence[str] | None = None,
    should_stop: Callable[[], bool] | None = None,
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
        labels: one name per clip for the NaN guard's message (None: ``clip '<key>'``).
        should_stop: cancellation hook called before every denoising step of every clip
            (``None``: never); True raises :class:`GenerationCancelled`.

    Returns:
        (B, C, F_l, T_l) latents.

    Raises:
        GeneratorError: a clip's latents are not finite after a denoising step (the
            message names the clip's label and the step).
        GenerationCancelled: ``should_stop`` answered True.
    """
    dcfg = denoiser.config
    if len(keys) != conds.batch_size:
        raise ValueError(f"{len(keys)} keys for {conds.batch_size} clips")
    if scheduler is None:
        scheduler = make_scheduler(cfg.scheduler, dcfg.prediction_type, schedule or DEFAULT_SCHEDULE)
    if scheduler.config.prediction_type != dcfg.prediction_type:
        raise ValueError(f"scheduler predicts {scheduler.config.prediction_type!r}, model {dcfg.prediction_type!r}")
    shape = (dcfg.latent_channels, *dcfg.latent_hw)
    labels = [f"clip {k!r}" for k in keys] if labels is None else list(labels)
    if len(labels) != len(keys):
        raise ValueError(f"{len(labels)} labels for {len(keys)} clips")
    if cfg.batch_invariant:
        parts = [
            _denoise(denoiser, copy.deepcopy(scheduler), conds.select([i]), [clip_generator(seed, keys[i])], shape,
                     cfg, [labels[i]], should_stop)
            for i in range(len(keys))
        ]
        return torch.cat(parts)
    return _denoise(denoiser, copy.deepcopy(scheduler), conds, [clip_generator(seed, k) for k in keys], shape, cfg,
                    labels, should_stop)


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

    Raises:
        GeneratorError: non-finite latents after a step, or a non-finite waveform (named).
    """
    latents = sample_latents(denoiser, conds, list(clip_ids), seed, cfg, schedule=schedule)
    mels = torch.cat([decode_mel(vae, latents[i : i + 1]) for i in range(len(latents))])
    wavs = vocoder(mels.float())
    for i, cid in enumerate(clip_ids):
        _check_waveform(wavs[i], f"clip {cid!r}")
    return wavs


def _check_waveform(wav: torch.Tensor, label: str) -> None:
    """The NaN guard after decoding: a window's waveform must be finite (latents were)."""
    bad = int((~torch.isfinite(wav)).sum())
    if bad:
        raise GeneratorError(f"{label}: decoding (VAE + vocoder) gave {bad} non-finite samples of {wav.numel()} from "
                             "finite latents: the VAE or the vocoder diverged (check their weights)")


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
    fades = equal_power_fades(fade)
    out = np.zeros(total, dtype=np.float32)
    for k, a in enumerate(arrs):
        add_window(out, a, k, len(arrs), hop, fades)
    return out


def add_window(out: np.ndarray, wav: np.ndarray, k: int, n_windows: int, hop: int,
               fades: tuple[np.ndarray, np.ndarray]) -> None:
    """Adds window ``k`` of ``n_windows``, faded, into the joined output ``out`` in place.

    The one join rule of :func:`join_windows` and :func:`generate_video`: window ``k`` starts
    at ``k * hop`` samples; all but the first fade in over the first ``len(fade)`` samples,
    all but the last fade out over their last ones; the part past ``len(out)`` is dropped.
    Adding the windows in order ``k = 0, 1, ...`` gives the same float32 sums whether the
    output is filled window by window or all at once.

    Args:
        out: float32 output (the video's length in samples), zeros where nothing was added yet.
        wav: the window (float32, the window length).
        k: window index.
        n_windows: windows in the video.
        hop: samples between window starts (window length - crossfade).
        fades: ``(fade_in, fade_out)`` of :func:`equal_power_fades` (length: the crossfade).
    """
    fade_in, fade_out = fades
    fade, n = len(fade_in), len(wav)
    a = np.array(wav, dtype=np.float32, copy=True)
    if k > 0 and fade:
        a[:fade] *= fade_in
    if k < n_windows - 1 and fade:
        a[n - fade :] *= fade_out
    start = k * hop
    stop = min(start + n, len(out))
    if stop > start:
        out[start:stop] += a[: stop - start]


def window_joins(duration_s: float, clip_s: float = 10.24, crossfade_s: float = 1.0,
                 sr: int = 16000) -> list[tuple[float, float]]:
    """The crossfades of a long video's soundtrack: ``(start_s, end_s)`` of each join.

    Join ``k`` (between windows ``k - 1`` and ``k``) spans window ``k``'s first
    ``crossfade_s`` seconds (:func:`window_starts`), cut at the video's end. A video of one
    window has none.

    Args:
        duration_s: video length (s).
        clip_s: window length (s).
        crossfade_s: crossfade (s).
        sr: sample rate (Hz) the windows are placed at.
    """
    fade = int(round(crossfade_s * sr))
    return [(s / sr, min(s + fade, int(round(duration_s * sr))) / sr)
            for s in window_starts(duration_s, clip_s, crossfade_s, sr)[1:]]


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
                   cfg: SamplerConfig = SamplerConfig(), schedule: NoiseSchedule | None = None,
                   progress: Callable[[int, int], None] | None = None,
                   should_stop: Callable[[], bool] | None = None) -> np.ndarray:
    """A soundtrack for a whole video of any length up to ``cfg.max_seconds``, in bounded memory.

    Steps: (1) window starts every ``clip - crossfade`` seconds; then per group of
    ``cfg.window_batch`` windows: (2) each window's conditions; (3) latents, window ``k``
    seeded by ``(seed, clip_id#k)`` (:func:`window_key`); (4) decode + vocode, window by
    window; (5) each window added into the preallocated output with its equal-power fades
    (:func:`add_window`), trimmed to ``duration_s``. Only one group's latents and waveforms
    exist at a time. After each group a log line (``window 7/20``; INFO when the video has
    more than one group, DEBUG otherwise) and ``progress(windows_done, n_windows)``.
    ``should_stop`` (a cancelled job) is asked before each window is denoised or decoded
    and before every denoising step; it only reads state of its own, so a hook that never
    answers True leaves the output bit-identical to no hook.

    Args:
        denoiser: the latent denoiser.
        vae: the mel VAE.
        vocoder: a vocoder.
        conds: the video's conditions, batch 1, per-frame tensors over the whole video.
        duration_s: the video's length (s).
        clip_id: the video's id (seeds the generators).
        seed: run seed.
        cfg: sampler settings (``window_batch``: windows per group).
        schedule: the model's noise schedule (None: the default).
        progress: called after each group with (windows done, windows in the video).
        should_stop: cancellation hook (``None``: never asked); called between windows and
            between denoising steps, True raises :class:`GenerationCancelled`.

    Returns:
        float32 waveform of ``round(duration_s * sr)`` samples.

    Raises:
        GeneratorError: non-finite latents after a denoising step or a non-finite decoded
            window (the message names the clip, the window and the step).
        GenerationCancelled: ``should_stop`` answered True (nothing is returned).
        ValueError: a batch other than 1, a length outside ``(0, max_seconds]`` or a
            ``window_batch`` below 1.
    """
    if conds.batch_size != 1:
        raise ValueError("generate_video takes the conditions of one video (batch 1)")
    if not 0 < duration_s <= cfg.max_seconds:
        raise ValueError(f"video length {duration_s} s outside (0, {cfg.max_seconds}] s")
    if int(cfg.window_batch) < 1:
        raise ValueError(f"window_batch must be >= 1, got {cfg.window_batch}")
    dcfg = denoiser.config
    sr = int(getattr(vocoder, "sample_rate", 16000))
    # 1. windows
    starts = window_starts(duration_s, dcfg.clip_seconds, cfg.crossfade_s, sr)
    n = len(starts)
    clip_n, fade = int(round(dcfg.clip_seconds * sr)), int(round(cfg.crossfade_s * sr))
    fades = equal_power_fades(fade)
    out = np.zeros(int(round(duration_s * sr)), dtype=np.float32)
    scheduler = make_scheduler(cfg.scheduler, dcfg.prediction_type, schedule or DEFAULT_SCHEDULE)
    group = int(cfg.window_batch)
    # progress is news only when there is more than one group (a bench clip of 10.3 s has
    # 2 windows, one group: a line per clip would flood a bench's log)
    level = logging.INFO if n > group else logging.DEBUG
    for g0 in range(0, n, group):
        ks = list(range(g0, min(g0 + group, n)))
        _check_stop(should_stop, f"clip {clip_id!r} window {g0 + 1}/{n}")
        # 2. this group's conditions, batched as examples
        batch = _cat_conditions([window_conditions(conds, starts[k] / sr, dcfg.clip_seconds, dcfg.fps) for k in ks])
        # 3. latents
        labels = [f"clip {clip_id!r} window {k + 1}/{n}" for k in ks]
        latents = sample_latents(denoiser, batch, [window_key(clip_id, k) for k in ks], seed, cfg,
                                 scheduler=scheduler, labels=labels, should_stop=should_stop)
        # 4. + 5. decode, vocode and join, window by window
        for j, k in enumerate(ks):
            _check_stop(should_stop, f"decoding {labels[j]}")
            wav = vocoder(decode_mel(vae, latents[j : j + 1]).float())[0]
            _check_waveform(wav, labels[j])
            add_window(out, _fit(wav, clip_n), k, n, clip_n - fade, fades)
        del batch, latents
        log.log(level, "clip %r: window %d/%d (%.0f of %.0f s)", clip_id, ks[-1] + 1, n,
                min((starts[ks[-1]] + clip_n) / sr, duration_s), duration_s)
        if progress is not None:
            progress(ks[-1] + 1, n)
    return out


# ----------------------------------------------------------------------------- batches of videos

#: The batched sampler's tolerance (:func:`generate_videos`): the largest absolute difference
#: allowed between a video's waveform sampled in a batch and the same request sampled alone,
#: on the platform's [-1, 1] waveform scale (-60 dB of full scale, 33 steps of 16-bit PCM).
#: Measured worst case 1.7e-4 (float rounding amplified by the decoder, see the contract in
#: :func:`generate_videos`), so the bound has about 6x margin; for waveforms that stay
#: within [-1, 1] before clipping the measured worst case is 2.1e-5 (50x).
BATCH_TOLERANCE = 1e-3


@dataclass(frozen=True)
class VideoRequest:
    """One video of a :func:`generate_videos` batch.

    Attributes:
        conds: the video's conditions, batch 1, per-frame tensors over the whole video
            (what :func:`generate_video` takes).
        duration_s: the video's length (s).
        clip_id: the video's id (with ``seed``, seeds the noise of each window).
        seed: the video's run seed (each video of a batch has its own).
    """

    conds: Conditions
    duration_s: float
    clip_id: str
    seed: int = 0


def batch_key(cfg: SamplerConfig, conds: Conditions) -> tuple:
    """What must be equal for two videos to share one denoising loop (a hashable key).

    Two requests with the same key run the same denoising schedule (sampler, number of
    steps, eta, the same timesteps), the same guidance (scale, the normalised weights of
    the same present conditions, attention method, window, selector) and have conditions
    that stack along the batch (the same feature widths and text length; every window of
    any video has ``ceil(clip_s * fps)`` frames, so the video's length does not matter).
    The key holds the effective values (``num_steps=None`` and the scheduler's default
    count are one key), so running a group with the first request's settings is exactly
    running each request with its own.

    Args:
        cfg: the request's sampler settings.
        conds: the request's conditions (batch 1).

    Raises:
        ValueError: guidance weights that :func:`~soundtrack.pipelines.guidance.normalized_weights`
            refuses (those of the present conditions sum to 0).
    """
    present = conds.present()
    weights = normalized_weights(present, cfg.weights)
    shapes = tuple((c, tuple(getattr(conds, c).shape[1 if c == "text" else 2 :]), getattr(conds, c).dtype)
                   for c in present)
    mask = None if conds.text_mask is None else tuple(conds.text_mask.shape[1:])
    return (cfg.scheduler, cfg.steps, float(cfg.eta), float(cfg.guidance_scale), tuple(sorted(weights.items())),
            cfg.attention, cfg.window_k, cfg.selector_tau, float(cfg.crossfade_s), shapes, mask,
            conds.shots is None)


@torch.no_grad()
def generate_videos(denoiser, vae, vocoder, requests: Sequence[VideoRequest], cfg: SamplerConfig = SamplerConfig(),
                    schedule: NoiseSchedule | None = None, max_rows: int | None = None,
                    should_stop: Callable[[], bool] | None = None) -> list[np.ndarray]:
    """Soundtracks of several videos through one denoising loop: :func:`generate_video` batched.

    Every window of every video (video by video, windows in order) is one row; the rows
    are denoised ``max_rows`` at a time, each group one loop whose model calls take all of
    its rows (and their guidance passes) as one batch, then decoded, vocoded and joined
    window by window into each video's own output, as :func:`generate_video` does.

    Contract:

    * Seeds: row (video ``v``, window ``k``) draws its initial noise and the noise of every
      stochastic step from its own generator, ``clip_generator(seed_v, window_key(clip_v,
      k))``, exactly as the video run alone draws it: no video's noise depends on the
      others, their order or the batch size.
    * Tolerance: a video's waveform here equals :func:`generate_video` on the same request
      (alone) within :data:`BATCH_TOLERANCE` (max absolute difference 1e-3 on the [-1, 1]
      waveform). The difference is float rounding only: CPU (and GPU) kernels are not
      batch-invariant, so a UNet forward over several videos' rows differs from one over a
      single video's in the last bits (latents: ~2e-6 relative). The VAE decoder turns that
      into ~3e-5 absolute error of a natural-log mel, i.e. a ~3e-5 relative error of the
      magnitudes the vocoder inverts, so the waveform's difference scales with its level.
      Measured on the tiny generator (CPU, 1 thread, 2 and 4 DPM-Solver++ steps, Griffin-Lim
      with 8 iterations; batches of 2, 3 and 6 videos of 1 and 2 windows; the decoder's
      output scaled to realistic levels): max absolute difference 2.1e-5 when the waveforms
      peak below 0.5 before clipping, 1.7e-4 when they peak at 2 to 18 (then clipped to
      [-1, 1]), relative to the pre-clip peak at most 3.2e-4 (median 1.3e-5). The bound
      assumes a model whose waveform is of the order of full scale: the untrained tiny
      model's raw decoder gives waveforms of ~1e7 before clipping, where the same 1e-5
      relative error moves samples near zero crossings by up to full scale.
    * Batching off: a batch of one is not this function's business; callers that want
      bit-identical outputs run :func:`generate_video` per video
      (:meth:`~soundtrack.pipelines.generator.SoundtrackGenerator.generate_batch` does so for
      a group of one, and serving with ``batching=False`` for every job).

    ``cfg.batch_invariant`` is not consulted: this function is the batched path (the rows
    of different videos share model calls by design); :func:`generate_video` keeps honouring it.

    Args:
        denoiser: the latent denoiser.
        vae: the mel VAE.
        vocoder: a vocoder.
        requests: the videos; all must have the same :func:`batch_key` under ``cfg``.
        cfg: sampler settings shared by the batch.
        schedule: the model's noise schedule (None: the default).
        max_rows: windows denoised per loop (None: ``cfg.window_batch`` per video, so the
            batch holds no more latents at a time than its videos sampled side by side).
        should_stop: cancellation hook called before every denoising step (``None``:
            never): True stops the whole batch (the caller asks it only when every request
            of the batch is cancelled). It reads no tensor, so outputs do not change.

    Returns:
        one float32 waveform of ``round(duration_s * sr)`` samples per request, in order.

    Raises:
        GeneratorError: non-finite latents after a denoising step or a non-finite decoded
            window (the message names the clip, the window and the step); the caller
            decides what happens to the other videos (the generator reruns each alone).
        ValueError: no requests, a request whose conditions are not batch 1, a length
            outside ``(0, max_seconds]``, requests of different :func:`batch_key`, or a
            ``max_rows`` below 1.
        GenerationCancelled: ``should_stop`` answered True.
    """
    if not requests:
        raise ValueError("generate_videos needs at least one request")
    keys = {batch_key(cfg, r.conds) for r in requests}
    if len(keys) != 1:
        raise ValueError(f"the {len(requests)} requests need {len(keys)} different denoising loops "
                         "(batch_key differs); group them by batch_key first")
    for r in requests:
        if r.conds.batch_size != 1:
            raise ValueError(f"clip {r.clip_id!r}: a request holds the conditions of one video (batch 1)")
        if not 0 < r.duration_s <= cfg.max_seconds:
            raise ValueError(f"clip {r.clip_id!r}: video length {r.duration_s} s outside (0, {cfg.max_seconds}] s")
    rows_per_loop = int(cfg.window_batch) * len(requests) if max_rows is None else int(max_rows)
    if rows_per_loop < 1:
        raise ValueError(f"max_rows must be >= 1, got {max_rows}")
    dcfg = denoiser.config
    sr = int(getattr(vocoder, "sample_rate", 16000))
    clip_n, fade = int(round(dcfg.clip_seconds * sr)), int(round(cfg.crossfade_s * sr))
    fades = equal_power_fades(fade)
    shape = (dcfg.latent_channels, *dcfg.latent_hw)
    scheduler = make_scheduler(cfg.scheduler, dcfg.prediction_type, schedule or DEFAULT_SCHEDULE)
    starts = [window_starts(r.duration_s, dcfg.clip_seconds, cfg.crossfade_s, sr) for r in requests]
    outs = [np.zeros(int(round(r.duration_s * sr)), dtype=np.float32) for r in requests]
    # video-major rows: each video's windows come in order k = 0, 1, ..., the order
    # add_window needs for the same float32 sums as generate_video
    rows = [(v, k) for v in range(len(requests)) for k in range(len(starts[v]))]
    for g0 in range(0, len(rows), rows_per_loop):
        group = rows[g0 : g0 + rows_per_loop]
        batch = _cat_conditions([window_conditions(requests[v].conds, starts[v][k] / sr, dcfg.clip_seconds, dcfg.fps)
                                 for v, k in group])
        gens = [clip_generator(requests[v].seed, window_key(requests[v].clip_id, k)) for v, k in group]
        labels = [f"clip {requests[v].clip_id!r} window {k + 1}/{len(starts[v])}" for v, k in group]
        latents = _denoise(denoiser, copy.deepcopy(scheduler), batch, gens, shape, cfg, labels, should_stop)
        # decode + vocode window by window, as generate_video (the decoders see batch 1)
        for j, (v, k) in enumerate(group):
            wav = vocoder(decode_mel(vae, latents[j : j + 1]).float())[0]
            _check_waveform(wav, labels[j])
            add_window(outs[v], _fit(wav, clip_n), k, len(starts[v]), clip_n - fade, fades)
        del batch, latents
        log.debug("batch of %d videos: windows %d-%d of %d sampled in one loop", len(requests), g0 + 1,
                  g0 + len(group), len(rows))
    return outs


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
