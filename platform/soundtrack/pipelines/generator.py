"""The soundtrack generator as one object: conditioning encoders, VAE, denoiser, vocoder.

:class:`SoundtrackGenerator` is the model container every consumer uses (the generate
command, the benchmark, the serving layer); in the manner of audiocraft's ``MusicGen`` it
holds the parts and the inference defaults and exposes one public :meth:`~SoundtrackGenerator.generate`.

Pipeline of a call (plain PyTorch, no Ray):

1. frames (uint8, 10 fps) are resized to ``frame_size`` (the size the training frames had);
2. conditions (:meth:`~SoundtrackGenerator.conditions_from_frames`, through
   :func:`soundtrack.models.conditioning.video_conditions`, the training stage's
   function): the contrastive video encoder's per-frame features (``video`` tokens, 10 per second) and the video's
   per-frame projections into the music and sound-effect spaces (``music`` / ``sfx``),
   the caption's text embedding when the model uses text, and the shot boundaries for
   the shot-based ("dynamic") attention;
3. :func:`soundtrack.pipelines.sampler.generate_video`: 10.24 s windows, each denoised in
   latent space, decoded to a mel by the VAE and vocoded, joined with 1 s crossfades.

Long videos in bounded memory (:meth:`~SoundtrackGenerator.generate_file`): the frames are
decoded in chunks (``media.read_frame_chunks``) and turned into conditions chunk by chunk
(:meth:`~SoundtrackGenerator.conditions_from_chunks`: the per-frame condition vectors,
a few hundred bytes a frame, are all that is kept), the windows are sampled in groups of
``sampler.window_batch`` into one preallocated waveform, and an ``.mp4`` is re-encoded
frame by frame (``media.mux_audio``). What grows with the length is the waveform (64 kB a
second) and the condition vectors; ``benchmarks/long_video.py`` measures the peak.

Output length: a video of ``T`` frames at ``fps`` (10) lasts ``T / fps`` seconds by the
platform's frame convention (frame ``i`` is on screen over ``[i / fps, (i + 1) / fps)``),
and the soundtrack has exactly ``round(T / fps * sr)`` samples. For a file,
``media.read_frames`` gives ``T = ceil(duration * fps)``, so the soundtrack covers the
video's duration rounded up to the next 0.1 s (a 13.7 s video: 137 frames, 219 200
samples; a 13.72 s one: 138 frames, 220 800 samples).

Model directory (written by :meth:`~SoundtrackGenerator.save`, read by
:meth:`~SoundtrackGenerator.load`; the training stage writes it, the registry copies it)::

    <model dir>/
      generator.json   format, profile, fps, sr, clip_s, frame_size, mel_format, sampler,
                       vocoder, vocoder_options, conditions, card (free-form metadata)
      encoders/        ContrastiveModel.save  (config.json, model.safetensors)
      vae/             save_vae               (config.json, diffusion_pytorch_model.safetensors)
      denoiser/        SoundtrackDenoiser.save (denoiser_config.json, denoiser.safetensors)
      scheduler/       the noise schedule the denoiser was trained with (scheduler_config.json,
                       diffusers' DDPMScheduler config; schedulers.save_schedule). Optional: a
                       directory saved without it loads with schedulers.DEFAULT_SCHEDULE.
      vocoder/         only for a HiFi-GAN vocoder: a copy of its folder ("vocoder": "vocoder")

``generator.json`` is written last: a directory without it is an unfinished save.
Nothing is pickled; loading never runs code from the directory.

Integrity (:mod:`soundtrack.data.integrity`): every weights folder (``encoders/``, ``vae/``,
``denoiser/``, ``vocoder/``) holds ``weights.sha256.json``, the sha256 and size of each of
its weight files, written after them; :meth:`~SoundtrackGenerator.load` checks each file
against it (a directory saved before manifests existed loads unverified, logged once).
Every path the directory names (the parts, ``generator.json``'s ``vocoder``) must stay
inside it: an absolute path, a ``..`` or a symlink leading out is refused. A save builds
a new directory beside the old one and swaps it in, so a full disk leaves the previous
model as it was.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from soundtrack.data import media
from soundtrack.data.features import DEFAULT_CONFIG as FEATURES
from soundtrack.data.features import shot_boundaries
from soundtrack.data.integrity import (
    MANIFEST_FILE,
    contained,
    convert_write_errors,
    read_manifest,
    staged_directory,
    verify_directory,
    write_file,
    write_manifest,
)
from soundtrack.errors import GeneratorError, IntegrityError
from soundtrack.metrics import real_time_factor
from soundtrack.models.backbones import load_denoiser
from soundtrack.models.conditioning import video_conditions
from soundtrack.models.encoders import (
    ContrastiveConfig,
    ContrastiveModel,
    build_contrastive,
)
from soundtrack.models.mel import MelFormat
from soundtrack.models.unet import (
    CONDITIONS,
    Conditions,
    DenoiserConfig,
    SoundtrackDenoiser,
)
from soundtrack.models.vae import build_vae, latent_shape, load_vae, save_vae
from soundtrack.models.vocoder import load_vocoder
from soundtrack.pipelines.knobs import KNOBS, check_knob
from soundtrack.pipelines.sampler import (
    GenerationCancelled,
    SamplerConfig,
    VideoRequest,
    batch_key,
    generate_video,
    generate_videos,
    window_starts,
)
from soundtrack.pipelines.schedulers import (
    DEFAULT_SCHEDULE,
    SCHEDULE_FILE,
    NoiseSchedule,
    load_schedule,
    make_scheduler,
    save_schedule,
)

log = logging.getLogger(__name__)

GENERATOR_FORMAT = "soundtrack-generator/1"
GENERATOR_FILE = "generator.json"

#: Part folder -> files that must be in it (what each part's own ``save`` writes).
PART_FILES: dict[str, tuple[str, ...]] = {
    "encoders": ("config.json", "model.safetensors"),
    "vae": ("config.json", "diffusion_pytorch_model.safetensors"),
    "denoiser": ("denoiser_config.json", "denoiser.safetensors"),
}
#: The folder of the noise schedule (optional: older model directories lack it).
SCHEDULE_DIR = "scheduler"
#: What to do with a model directory whose files fail their check.
_REPAIR_HINT = ("copy it again from where it came from (the registry entry, the training run), re-export it from "
                "its training run's checkpoints, or re-train it")
REQUIRED_KEYS = ("format", "profile", "fps", "sr", "clip_s", "frame_size", "mel_format", "sampler", "vocoder",
                 "conditions")

#: Sampler settings a caller may change per call (``generate(..., **overrides)``): the knobs of
#: :data:`soundtrack.pipelines.knobs.KNOBS`.
OVERRIDES = tuple(KNOBS)

#: Output file types of :meth:`SoundtrackGenerator.generate_file`.
OUTPUT_SUFFIXES = (".wav", ".mp4")

#: Video frames encoded per pass of the video encoder (one training clip, 10.24 s at
#: 10 fps) and the context frames added on each side so that the frames kept see the
#: same neighbours as inside one long pass (see :meth:`SoundtrackGenerator.encode_video`).
ENCODE_CHUNK_FRAMES = 103
ENCODE_CONTEXT_FRAMES = 8


# ----------------------------------------------------------------------------- helpers


def _layout_hint() -> str:
    parts = ", ".join(f"{p}/" for p in PART_FILES)
    return f"a model directory holds {GENERATOR_FILE} and {parts} (written by SoundtrackGenerator.save)"


def check_model_dir(path: str | os.PathLike) -> dict[str, Any]:
    """Checks that a directory is a complete generator model directory and reads its JSON.

    Only file existence and the JSON document are checked (cheap: no weights are read).

    Args:
        path: the directory.

    Returns:
        the parsed ``generator.json``.

    Raises:
        GeneratorError: not a directory, no or bad ``generator.json``, wrong format, a
            missing key or a missing part (each message names which).
    """
    root = Path(path)
    if not root.is_dir():
        raise GeneratorError(f"{root} is not a directory; {_layout_hint()}.")
    doc_path = root / GENERATOR_FILE
    if not doc_path.is_file():
        raise GeneratorError(f"{root} is not a generator model directory: it has no {GENERATOR_FILE}; "
                             f"{_layout_hint()}.")
    try:
        doc = json.loads(doc_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise GeneratorError(f"{doc_path} is not readable JSON ({exc}); re-save the model.") from exc
    if not isinstance(doc, dict) or doc.get("format") != GENERATOR_FORMAT:
        found = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise GeneratorError(f"{doc_path} has format {found!r}, expected {GENERATOR_FORMAT!r}; "
                             "it was written by another program or version.")
    missing = [k for k in REQUIRED_KEYS if k not in doc]
    if missing:
        raise GeneratorError(f"{doc_path} lacks the keys {missing}; re-save the model with SoundtrackGenerator.save.")
    for part, files in PART_FILES.items():
        folder = contained(root, part, f"the {part}/ part", GeneratorError)
        if not folder.is_dir():
            raise GeneratorError(f"{root}: the {part}/ part is missing; {_layout_hint()}.")
        for f in (*files, MANIFEST_FILE):
            contained(root, f"{part}/{f}", f"the file {part}/{f}", GeneratorError)
        absent = [f for f in files if not (folder / f).is_file()]
        if absent:
            raise GeneratorError(f"{root}: the {part}/ part lacks {absent}; the save was interrupted or the "
                                 "copy is incomplete: copy or save the model again.")
    schedule = contained(root, SCHEDULE_DIR, f"the {SCHEDULE_DIR}/ part", GeneratorError)
    if schedule.is_dir() and not contained(root, f"{SCHEDULE_DIR}/{SCHEDULE_FILE}", f"the file {SCHEDULE_DIR}/"
                                           f"{SCHEDULE_FILE}", GeneratorError).is_file():
        raise GeneratorError(f"{root}: the {SCHEDULE_DIR}/ part lacks {SCHEDULE_FILE}; the copy is incomplete: "
                             "copy or save the model again.")
    vocoder = str(doc["vocoder"])
    if not _is_griffinlim(vocoder):
        folder = contained(root, vocoder, f"{GENERATOR_FILE}'s vocoder", GeneratorError)
        if not folder.is_dir():
            raise GeneratorError(f"{root}: the vocoder folder {vocoder}/ named in {GENERATOR_FILE} is missing; copy "
                                 "it with the model (or save the model again).")
    return doc


def _is_griffinlim(vocoder: str) -> bool:
    return vocoder.lower() in ("griffinlim", "griffin-lim", "gl")


def _staged_save_is_safe(root: Path) -> bool:
    """Whether :meth:`SoundtrackGenerator.save` may build ``root`` beside it and swap it in:
    ``root`` is absent or holds nothing but a model directory's own entries."""
    if not root.exists():
        return True
    own = {GENERATOR_FILE, *PART_FILES, SCHEDULE_DIR, "vocoder"}
    return root.is_dir() and not root.is_symlink() and all(
        p.name in own or p.name.startswith(GENERATOR_FILE + ".tmp") for p in root.iterdir())


def _sampler_from_dict(d: Mapping[str, Any]) -> SamplerConfig:
    names = {f.name for f in dataclasses.fields(SamplerConfig)}
    unknown = set(d) - names
    if unknown:
        raise GeneratorError(f"unknown sampler keys {sorted(unknown)} in {GENERATOR_FILE} (allowed: {sorted(names)})")
    return SamplerConfig(**dict(d))


def _sampler_to_dict(cfg: SamplerConfig) -> dict[str, Any]:
    d = dataclasses.asdict(cfg)
    d["weights"] = None if cfg.weights is None else {k: float(v) for k, v in cfg.weights.items()}
    return d


def apply_overrides(cfg: SamplerConfig, overrides: Mapping[str, Any]) -> SamplerConfig:
    """The sampler settings with per-call overrides applied (``None`` values are ignored).

    Each value is checked by :func:`soundtrack.pipelines.knobs.check_knob`, the one
    definition of the knobs' validity (Serve and tune check with it too).

    Args:
        cfg: the model's defaults.
        overrides: any of :data:`OVERRIDES`.

    Returns:
        a new :class:`SamplerConfig`.

    Raises:
        GeneratorError: an unknown name or a bad value (the message lists the allowed ones).
    """
    unknown = sorted(set(overrides) - set(OVERRIDES))
    if unknown:
        raise GeneratorError(f"unknown generation option(s) {unknown}; allowed: {', '.join(OVERRIDES)}")
    changes = {name: check_knob(name, value) for name, value in overrides.items() if value is not None}
    return dataclasses.replace(cfg, **changes)


def _resize_frames(frames: np.ndarray, size: int) -> np.ndarray:
    """uint8 (T, H, W, 3) -> uint8 (T, size, size, 3): area averaging when shrinking,
    bilinear when enlarging (frames read by ``generate_file`` already have the size)."""
    t, h, w, _ = frames.shape
    if (h, w) == (size, size):
        return frames
    mode = "area" if h >= size and w >= size else "bilinear"
    kw = {} if mode == "area" else {"align_corners": False}
    out = np.empty((t, size, size, 3), np.uint8)
    # 32 frames at a time: float copies of full-HD frames are 25 MB each.
    for i in range(0, t, 32):
        x = torch.from_numpy(np.ascontiguousarray(frames[i : i + 32])).permute(0, 3, 1, 2).float()
        x = F.interpolate(x, size=(size, size), mode=mode, **kw)
        out[i : i + 32] = x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return out


# ----------------------------------------------------------------------------- container


@dataclass(frozen=True)
class GenerationRequest:
    """One video of :meth:`SoundtrackGenerator.generate_batch` (the arguments of :meth:`~SoundtrackGenerator.generate`).

    Attributes:
        frames: uint8 (T, H, W, 3) RGB frames at ``fps`` (10) frames per second.
        seed: run seed.
        clip_id: the video's id (with the seed, it seeds the noise of each window).
        caption: a text prompt (models with text conditioning only).
        overrides: sampler settings for this request (the ``**overrides`` of ``generate``).
        should_stop: this request's cancellation hook (``None``: none; see
            :meth:`SoundtrackGenerator.generate_batch`).
    """

    frames: np.ndarray
    seed: int = 0
    clip_id: str = "clip"
    caption: str | None = None
    overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    should_stop: Callable[[], bool] | None = dataclasses.field(default=None, compare=False)


@dataclass(frozen=True)
class _Checked:
    """A request of :meth:`SoundtrackGenerator.generate_batch` that passed its checks."""

    index: int  # position in the batch
    cfg: SamplerConfig
    conds: Conditions  # batch 1, the whole video
    n_frames: int
    duration_s: float


@dataclass(frozen=True)
class GenerationResult:
    """What :meth:`SoundtrackGenerator.generate_file` wrote.

    Attributes:
        out_path: the ``.wav`` or ``.mp4`` written.
        n_samples: soundtrack length (samples at ``sr``).
        sr: sample rate (Hz).
        duration_s: soundtrack length (s).
        seconds: wall time of decoding + generation + writing (s).
        real_time_factor: seconds of audio per second of compute (above 1: faster than real time),
            the platform's one definition (:func:`soundtrack.metrics.real_time_factor`).
        windows: the sampler's windows (:func:`~soundtrack.pipelines.sampler.window_starts`).
    """

    out_path: Path
    n_samples: int
    sr: int
    duration_s: float
    seconds: float
    real_time_factor: float
    windows: int = 1


class SoundtrackGenerator:
    """Conditioning encoders + mel VAE + latent denoiser + vocoder + inference defaults.

    Calls are serialised by a lock: the denoiser keeps per-forward state (its fusion
    hooks), so one instance runs one generation at a time; use one instance per worker.

    Args:
        encoders: the contrastive model (:class:`~soundtrack.models.encoders.ContrastiveModel`).
        vae: the mel VAE (``MelVAE`` or an AudioLDM-layout ``AutoencoderKL``).
        denoiser: the latent denoiser.
        vocoder: ``"griffinlim"`` or the folder of a saved ``SpeechT5HifiGan``.
        profile: ``"tiny"`` or ``"paper"`` (informational).
        frame_size: frames are resized to ``frame_size x frame_size`` pixels before the
            video encoder (the size of the training frames: ``featurize.size``).
        sampler: inference defaults (steps, guidance, ...); per-call overrides in :meth:`generate`.
        mel_format: the mel the VAE decodes (None: the VAE's own).
        conditions: the conditions the generator feeds the denoiser (None: the video-derived
            ones the denoiser takes, plus ``"text"`` when both the encoders and the
            denoiser have text).
        card: free-form metadata (training run, data, metrics), saved as it is.
        vocoder_options: extra vocoder arguments (``{"n_iter": 16}`` for Griffin-Lim).
        schedule: the noise schedule the denoiser was trained with (None: the default CCCG
            schedule); every sampler of the model is built on it.
        device: where the models run.
    """

    def __init__(
        self,
        encoders,
        vae,
        denoiser: SoundtrackDenoiser,
        vocoder: str | os.PathLike = "griffinlim",
        *,
        profile: str = "tiny",
        frame_size: int = 112,
        sampler: SamplerConfig | None = None,
        mel_format: MelFormat | None = None,
        conditions: Sequence[str] | None = None,
        card: Mapping[str, Any] | None = None,
        vocoder_options: Mapping[str, Any] | None = None,
        schedule: NoiseSchedule | None = None,
        device: str | torch.device = "cpu",
    ):
        self.device = torch.device(device)
        self.encoders = encoders.to(self.device).eval()
        self.vae = vae.to(self.device).eval()
        self.denoiser = denoiser.to(self.device).eval()
        self.profile = str(profile)
        self.frame_size = int(frame_size)
        self.sampler = sampler or SamplerConfig()
        self.mel_format = mel_format or getattr(vae, "mel", None) or MelFormat()
        self.card = dict(card or {})
        self.vocoder_spec = str(vocoder)
        self.vocoder_options = dict(vocoder_options or {})
        self.schedule = schedule or DEFAULT_SCHEDULE
        dcfg = denoiser.config
        self.fps = float(dcfg.fps)
        self.clip_s = float(dcfg.clip_seconds)
        self.sr = int(self.mel_format.sr)
        if conditions is None:
            sources = set(dcfg.token_sources) | set(dcfg.fusion_sources if dcfg.fusion != "none" else ())
            conditions = [c for c in ("video", "music", "sfx") if c in sources]
            if encoders.text is not None and "text" in dcfg.token_sources:
                conditions.append("text")
        self.conditions = tuple(conditions)
        self._check()
        self.vocoder = load_vocoder(self.vocoder_spec, self.mel_format, **self.vocoder_options)
        if int(getattr(self.vocoder, "sample_rate", self.sr)) != self.sr:
            raise GeneratorError(f"vocoder {self.vocoder_spec!r} outputs {self.vocoder.sample_rate} Hz, "
                                 f"the mel format is {self.sr} Hz; use a vocoder of the same rate")
        self._lock = threading.Lock()
        #: The model directory this generator was loaded from or saved to (None: in memory).
        self.directory: Path | None = None

    # -- consistency ------------------------------------------------------------------

    def _check(self) -> None:
        """Every part must agree on sizes and time grids (the message names the mismatch)."""
        dcfg, ecfg = self.denoiser.config, self.encoders.cfg
        bad = [c for c in self.conditions if c not in CONDITIONS]
        if bad or len(set(self.conditions)) != len(self.conditions) or not self.conditions:
            raise GeneratorError(f"conditions must be distinct names among {CONDITIONS}, got {list(self.conditions)}")
        if self.frame_size < 8:
            raise GeneratorError(f"frame_size must be >= 8 pixels, got {self.frame_size}")
        if abs(ecfg.fps - self.fps) > 1e-9:
            raise GeneratorError(f"encoders run at {ecfg.fps} fps, the denoiser at {self.fps} fps; they must match")
        widths = {"video": ecfg.video_dim, "music": ecfg.embed_dim, "sfx": ecfg.embed_dim, "text": ecfg.embed_dim}
        for c in self.conditions:
            if c == "text" and self.encoders.text is None:
                raise GeneratorError("conditions include 'text' but the encoders were built with use_text=False")
            if dcfg.cond_dim(c) != widths[c]:
                raise GeneratorError(f"the encoders give {c} vectors of width {widths[c]}, the denoiser expects "
                                     f"{dcfg.cond_dim(c)} ({c}_dim); build the denoiser with {c}_dim={widths[c]}")
        vae_mel = getattr(self.vae, "mel", None)
        if vae_mel is not None and vae_mel != self.mel_format:
            raise GeneratorError(f"mel format {self.mel_format.to_dict()} differs from the VAE's {vae_mel.to_dict()}")
        if abs(self.mel_format.features.clip_s - self.clip_s) > 1e-9:
            raise GeneratorError(f"the mel format spans {self.mel_format.features.clip_s} s, the denoiser "
                                 f"{self.clip_s} s per clip; they must match")

        lat = latent_shape(self.vae, self.mel_format.n_mels, self.mel_format.n_frames)
        want = (dcfg.latent_channels, *dcfg.latent_hw)
        if tuple(lat) != tuple(want):
            raise GeneratorError(f"the VAE makes latents {tuple(lat)} from a {self.mel_format.n_mels} x "
                                 f"{self.mel_format.n_frames} mel, the denoiser expects {want}")
        if not isinstance(self.schedule, NoiseSchedule):
            raise GeneratorError(f"schedule must be a NoiseSchedule, got {type(self.schedule).__name__}")
        # The stored defaults must pass the same checks as per-call overrides.
        apply_overrides(SamplerConfig(), {k: getattr(self.sampler, k) for k in OVERRIDES})
        if self.sampler.max_seconds <= 0 or not 0 <= self.sampler.crossfade_s < self.clip_s:
            raise GeneratorError(f"sampler needs max_seconds > 0 and 0 <= crossfade_s < {self.clip_s} s, got "
                                 f"{self.sampler.max_seconds}, {self.sampler.crossfade_s}")
        wb = self.sampler.window_batch
        if isinstance(wb, bool) or not isinstance(wb, int) or wb < 1:
            raise GeneratorError(f"sampler.window_batch must be an integer >= 1 (windows sampled per group), got {wb!r}")

    # -- conditions -------------------------------------------------------------------

    @staticmethod
    def _check_frames(frames) -> np.ndarray:
        arr = np.asarray(frames)
        if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] != 3:
            raise GeneratorError(f"frames must be a uint8 array (T, H, W, 3) of RGB frames at 10 fps, got "
                                 f"{arr.dtype} {arr.shape}")
        if arr.shape[0] < 1 or arr.shape[1] < 1 or arr.shape[2] < 1:
            raise GeneratorError(f"the video has no frames (shape {arr.shape}); supply at least one frame")
        return arr

    def _check_caption(self, caption: str | None) -> None:
        if caption and "text" not in self.conditions:
            raise GeneratorError("this model was trained without text conditioning; drop the prompt/caption "
                                 f"(its conditions: {', '.join(self.conditions)})")

    @torch.no_grad()
    def encode_video(self, frames: np.ndarray, caption: str | None = None) -> Conditions:
        """Per-frame video features, their music / sound-effect projections, and the text.

        Computed by :func:`soundtrack.models.conditioning.video_conditions`, the function
        the training stage caches its conditions with, so training and inference see the
        same tokens. Long videos are encoded in chunks of :data:`ENCODE_CHUNK_FRAMES`
        frames (one training clip) with :data:`ENCODE_CONTEXT_FRAMES` extra frames on each
        side that are encoded but not kept. Why: memory stays bounded for a 10-minute
        video, and each kept frame sees at least 0.8 s of context on both sides, more than
        the conv temporal model's reach (the frame difference looks 1 frame back, each
        temporal block ``kernel // 2`` frames), so chunks give the vectors of one long pass
        up to float rounding; a transformer temporal model sees at most a training clip
        plus context, as in training, instead of positions it never saw. The same chunks
        as :meth:`conditions_from_chunks` (one code path).

        Args:
            frames: uint8 (T, frame_size, frame_size, 3) at ``fps``.
            caption: text for the text tokens (None: no text).

        Returns:
            :class:`~soundtrack.models.unet.Conditions` (batch 1) with ``video`` (1, T,
            video_dim), ``music`` and ``sfx`` (1, T, E), ``text`` (1, 1, E) or None; no shots.
        """
        enc = self._stream_conditions([np.asarray(frames)], caption, resize=False, shots=False)
        return Conditions(text=enc.text, video=enc.video, music=enc.music, sfx=enc.sfx)

    def _encode_context(self) -> int:
        """Context frames on each side of an encoder chunk: :data:`ENCODE_CONTEXT_FRAMES`, or
        more when the temporal model reaches further or a cut must persist longer (shots)."""
        ecfg = self.encoders.cfg
        reach = 1 + (ecfg.temporal_layers * (ecfg.temporal_kernel // 2) if ecfg.temporal == "conv" else 0)
        return max(ENCODE_CONTEXT_FRAMES, reach, FEATURES.shot_persist_frames)

    @torch.no_grad()
    def _stream_conditions(self, chunks: Iterable[np.ndarray], caption: str | None, resize: bool = True,
                           shots: bool = True, n_frames: int | None = None) -> Conditions:
        """The one chunked encoder under :meth:`encode_video` and :meth:`conditions_from_chunks`.

        Frames arrive in chunks of any size and are buffered; encoder chunk ``[s, s + 103)``
        is encoded, with ``ctx`` frames of context on each side, as soon as frame
        ``s + 103 + ctx`` has arrived (or the stream ended), then the frames no later chunk
        needs are dropped: the buffer never holds more than ``103 + 2 ctx`` frames plus the
        incoming chunk. The chunks are those of one in-memory pass over the whole video.

        Shot starts: :func:`soundtrack.data.features.shot_boundaries` on each encoder chunk
        with its context (``ctx`` frames before, at least the cut-persistence frames after),
        keeping the cuts inside the chunk. A video of at most 103 frames is one scan, the
        whole-video result; a longer one differs from one whole-video scan only where the
        scan's reference frame at a chunk start would have been a transient (a flash just
        before the chunk), since each chunk's scan starts from ``ctx`` frames earlier.
        """
        ctx = self._encode_context()
        size = self.frame_size
        parts: dict[str, list[torch.Tensor]] = {"video": [], "music": [], "sfx": []}
        cuts: list[float] = []
        text = None
        buf: np.ndarray | None = None
        buf0 = 0  # video frame index of buf[0]
        seen = 0  # frames received so far
        start = 0  # next encoder chunk

        def encode(stop: int, hi: int) -> None:
            nonlocal text
            lo = max(0, start - ctx)
            seg = np.ascontiguousarray(buf[lo - buf0 : hi - buf0])
            x = torch.from_numpy(seg if seg.flags.writeable else seg.copy()).to(self.device)[None]
            first = start == 0
            c = video_conditions(self.encoders, x, captions=[caption] if caption and first else None,
                                 use_text=bool(caption) and first, shots=[[]])
            for name in parts:
                parts[name].append(getattr(c, name)[:, start - lo : stop - lo])
            text = c.text if first else text
            if shots:
                cuts.extend(float(lo + i) for i in shot_boundaries(seg) if start <= lo + i < stop)

        for arr in chunks:
            arr = self._check_frames(arr)
            if resize:
                arr = _resize_frames(arr, size)
            buf = arr if buf is None else np.concatenate([buf, arr])
            seen += arr.shape[0]
            while seen >= start + ENCODE_CHUNK_FRAMES + ctx:
                encode(start + ENCODE_CHUNK_FRAMES, start + ENCODE_CHUNK_FRAMES + ctx)
                start += ENCODE_CHUNK_FRAMES
                drop = max(0, start - ctx) - buf0
                if drop > 0:
                    buf, buf0 = buf[drop:], buf0 + drop
        if seen == 0:
            raise GeneratorError("the video has no frames; supply at least one frame")
        if n_frames is not None and seen != n_frames:
            raise GeneratorError(f"the video decoder gave {seen} frames, {n_frames} were announced; the file may be "
                                 "cut short or damaged: re-export it")
        while start < seen:
            stop = min(start + ENCODE_CHUNK_FRAMES, seen)
            encode(stop, min(seen, stop + ctx))
            start = stop
        return Conditions(text=text, shots=[cuts] if shots else None,
                          **{name: torch.cat(v, dim=1) for name, v in parts.items()})

    @torch.no_grad()
    def conditions_from_frames(self, frames: np.ndarray, caption: str | None = None) -> Conditions:
        """The denoiser's conditions for a whole video (batch 1).

        Args:
            frames: uint8 (T, H, W, 3) RGB frames at ``fps`` (10) frames per second; any
                size (resized to ``frame_size``).
            caption: a text prompt for models that use text (None or "": no text).

        Returns:
            :class:`~soundtrack.models.unet.Conditions` with per-frame ``video``,
            ``music``, ``sfx`` (those in :attr:`conditions`), ``text`` (1, 1, E) when a
            caption is given, and ``shots`` (shot-start frame indices of the whole video,
            ``features.shot_boundaries`` chunk by chunk, see :meth:`conditions_from_chunks`;
            the sampler shifts them into each window).

        Raises:
            GeneratorError: bad frames, or a caption for a model without text.
        """
        return self.conditions_from_chunks([self._check_frames(frames)], caption)

    @torch.no_grad()
    def conditions_from_chunks(self, chunks: Iterable[np.ndarray], caption: str | None = None,
                               n_frames: int | None = None) -> Conditions:
        """The denoiser's conditions of a video given as consecutive chunks of frames.

        The same conditions as :meth:`conditions_from_frames` on the frames concatenated,
        in memory that does not grow with the video: frames are encoded in chunks of
        :data:`ENCODE_CHUNK_FRAMES` with :data:`ENCODE_CONTEXT_FRAMES` of context (see
        :meth:`encode_video`) as they arrive and dropped, and only the per-frame condition
        vectors and the shot starts are kept. Shot starts come from
        :func:`soundtrack.data.features.shot_boundaries` run on each encoder chunk with its
        context: for a video of at most 103 frames that is the whole-video scan; for a longer
        one the scan restarts 8 frames before each chunk, so a flash right before a chunk
        start can be read as a cut there (a whole-video scan would need every frame kept).

        Args:
            chunks: uint8 (T_i, H, W, 3) RGB frames at ``fps``, consecutive, any sizes
                (resized to ``frame_size``).
            caption: a text prompt for models that use text (None or "": no text).
            n_frames: the frame count the chunks must add up to (None: not checked).

        Returns:
            :class:`~soundtrack.models.unet.Conditions` as :meth:`conditions_from_frames`.

        Raises:
            GeneratorError: bad frames, no frames, fewer or more frames than ``n_frames``,
                or a caption for a model without text.
        """
        return self._chunk_conditions(chunks, caption, n_frames)[0]

    def _chunk_conditions(self, chunks: Iterable[np.ndarray], caption: str | None,
                          n_frames: int | None) -> tuple[Conditions, int]:
        """:meth:`conditions_from_chunks` and the number of frames the chunks held."""
        self._check_caption(caption)
        enc = self._stream_conditions(chunks, caption or None, n_frames=n_frames)
        kw = {c: getattr(enc, c) for c in ("video", "music", "sfx") if c in self.conditions}
        return Conditions(text=enc.text, shots=enc.shots, **kw), int(enc.video.shape[1])

    # -- generation -------------------------------------------------------------------

    def sampler_config(self, **overrides: Any) -> SamplerConfig:
        """The model's sampler defaults with per-call overrides (see :data:`OVERRIDES`).

        Args:
            **overrides: guidance_scale, weights, num_steps, scheduler, attention, window_k, selector_tau.
        """
        return apply_overrides(self.sampler, overrides)

    def make_scheduler(self, **overrides: Any):
        """The diffusers scheduler :meth:`generate` samples with: the sampler of
        :meth:`sampler_config` on the model's noise schedule (:attr:`schedule`).

        Args:
            **overrides: sampler settings (see :meth:`sampler_config`).
        """
        cfg = self.sampler_config(**overrides)
        return make_scheduler(cfg.scheduler, self.denoiser.config.prediction_type, self.schedule)

    def n_samples(self, n_frames: int) -> int:
        """Soundtrack length (samples) of a video of ``n_frames`` frames: ``round(T / fps * sr)``.

        Args:
            n_frames: T.
        """
        return int(round(n_frames / self.fps * self.sr))

    def generate(self, frames: np.ndarray, seed: int = 0, clip_id: str = "clip", caption: str | None = None,
                 progress: Callable[[int, int], None] | None = None,
                 should_stop: Callable[[], bool] | None = None, **overrides: Any) -> np.ndarray:
        """A soundtrack for a video of any length up to ``sampler.max_seconds``.

        Deterministic: the output depends only on (model, frames, caption, seed, clip_id,
        settings). Windows of ``clip_s`` seconds with crossfades, see
        :func:`~soundtrack.pipelines.sampler.generate_video`.

        Args:
            frames: uint8 (T, H, W, 3) RGB frames at ``fps`` (10) frames per second.
            seed: run seed.
            clip_id: the video's id (with the seed, it seeds the noise of each window).
            caption: a text prompt (models with text conditioning only).
            progress: called after each group of windows with (windows done, windows).
            should_stop: a cancellation hook (``None``: none), asked between windows and
                between denoising steps (see
                :func:`~soundtrack.pipelines.sampler.generate_video`); True stops the call
                with :class:`~soundtrack.pipelines.sampler.GenerationCancelled`. A hook that
                answers False leaves the output bit-identical.
            **overrides: sampler settings for this call: guidance_scale, weights
                (per-condition dict), num_steps, scheduler, attention, window_k.

        Returns:
            float32 (round(T / fps * sr),) mono waveform at ``sr`` (16 kHz), in [-1, 1].

        Raises:
            GeneratorError: bad frames or options, a video longer than ``max_seconds``, or
                a diverged model: non-finite latents or audio (the message names the clip,
                the window and the denoising step).
            GenerationCancelled: ``should_stop`` answered True.
        """
        cfg = self.sampler_config(**overrides)
        arr = self._check_frames(frames)
        self._check_caption(caption)
        return self._generate([arr], arr.shape[0], seed, clip_id, caption, cfg, progress, should_stop)

    def _check_length(self, n_frames: int, cfg: SamplerConfig) -> float:
        """The video's length (s), or :class:`GeneratorError` when it exceeds ``max_seconds``."""
        duration = n_frames / self.fps
        if duration > cfg.max_seconds:
            raise GeneratorError(f"the video lasts {duration:.1f} s, longer than this model's limit of "
                                 f"{cfg.max_seconds:.0f} s (sampler.max_seconds); cut it into parts")
        return duration

    def _generate(self, chunks: Iterable[np.ndarray], n_frames: int | None, seed: int, clip_id: str,
                  caption: str | None, cfg: SamplerConfig, progress: Callable[[int, int], None] | None,
                  should_stop: Callable[[], bool] | None = None) -> np.ndarray:
        """:meth:`generate` on frames given as consecutive chunks adding up to ``n_frames``
        (None: known once decoded; the length limit is then checked before sampling);
        ``should_stop``: the cancellation hook of :meth:`generate`."""
        if n_frames is not None:
            self._check_length(n_frames, cfg)
        with self._lock, torch.inference_mode():
            conds, n_frames = self._chunk_conditions(chunks, caption, n_frames)
            duration = self._check_length(n_frames, cfg)
            wav = generate_video(self.denoiser, self.vae, self.vocoder, conds, duration, str(clip_id), int(seed), cfg,
                                 schedule=self.schedule, progress=progress, should_stop=should_stop)
        return self._finish(wav, n_frames, clip_id)

    def _finish(self, wav: np.ndarray, n_frames: int, clip_id: str) -> np.ndarray:
        """The sampler's waveform as :meth:`generate` returns it: exactly ``n_samples(n_frames)``
        samples, refused when not finite, clipped to [-1, 1] (in place)."""
        n = self.n_samples(n_frames)
        wav = np.asarray(wav, dtype=np.float32).reshape(-1)[:n]
        if wav.shape[0] < n:  # generate_video already trims to round(duration * sr); defensive
            wav = np.pad(wav, (0, n - wav.shape[0]))
        bad = int((~np.isfinite(wav)).sum())
        if bad:  # never silenced: a diverged model must not be scored (or served) as quiet audio
            raise GeneratorError(f"the generated soundtrack of clip {clip_id!r} has {bad} non-finite samples of "
                                 f"{wav.shape[0]}: the model diverged (check its training losses, or sample with "
                                 "fewer steps / a lower guidance_scale)")
        # The platform's audio contract is [-1, 1]; a trained model stays inside, an
        # untrained one (tests) may not. In place: a 10-minute soundtrack is 38 MB.
        return np.clip(wav, -1.0, 1.0, out=wav)

    def generate_batch(self, requests: Sequence[GenerationRequest],
                       max_rows: int | None = None) -> list[np.ndarray | GeneratorError]:
        """Soundtracks of several videos, the compatible ones through one denoising loop.

        Steps: (1) each request is checked as :meth:`generate` checks it (options, frames,
        caption, length) and its conditions are encoded; a request that fails gets its
        :class:`GeneratorError` and takes no further part. (2) The others are grouped by
        :func:`~soundtrack.pipelines.sampler.batch_key` (same sampler, steps, guidance,
        attention and condition shapes: the same denoising loop); durations may differ.
        (3) A group of two or more is sampled by
        :func:`~soundtrack.pipelines.sampler.generate_videos` (one loop over all its
        windows, each request's noise from its own seed and clip id); a group of one by
        :func:`~soundtrack.pipelines.sampler.generate_video`, the call :meth:`generate`
        makes. (4) If a group's batched loop raises (a diverged request's NaN guard, out of
        memory), its requests are rerun one by one, so each gets its own waveform or error.

        Outputs: a request in a group of one (a batch of one, or one whose options no
        other request shares) is bit-identical to :meth:`generate`; one sampled in a
        larger group equals it within
        :data:`~soundtrack.pipelines.sampler.BATCH_TOLERANCE` (the contract of
        :func:`~soundtrack.pipelines.sampler.generate_videos`). Non-finite output still
        raises, per request (its error in the list, the message :meth:`generate` gives).

        Cancellation: a request's ``should_stop`` (a client that went away) stops its own
        loop when it runs alone, and a group's loop once every request of the group asks
        to stop (a request still wanted keeps its batch mates running); a stopped request's
        entry is the :class:`~soundtrack.pipelines.sampler.GenerationCancelled` raised.

        Args:
            requests: the videos (frames, seed, clip id, caption and per-request overrides).
            max_rows: windows denoised per loop (None: ``sampler.window_batch`` per request
                of the group, see :func:`~soundtrack.pipelines.sampler.generate_videos`).

        Returns:
            per request, in order: its float32 waveform (as :meth:`generate` returns it),
            the :class:`GeneratorError` it raised, or :class:`GenerationCancelled`. Guidance weights that leave no present
            condition weighted (which :meth:`generate` refuses with a ``ValueError`` from
            the sampler) are that request's :class:`GeneratorError` here.

        Raises:
            Exception: anything but a :class:`GeneratorError` raised by a request run alone
                (in the one-by-one fallback), as :meth:`generate` would raise it.
        """
        results: list[np.ndarray | GeneratorError | GenerationCancelled | None] = [None] * len(requests)
        groups: dict[tuple, list[_Checked]] = {}  # batch_key -> the checked requests sharing it, in order
        with self._lock, torch.inference_mode():
            # 1. per-request checks and conditions, in generate's order (the same messages)
            for i, req in enumerate(requests):
                try:
                    cfg = self.sampler_config(**dict(req.overrides))
                    arr = self._check_frames(req.frames)
                    self._check_caption(req.caption)
                    self._check_length(arr.shape[0], cfg)
                    conds, n_frames = self._chunk_conditions([arr], req.caption, arr.shape[0])
                    duration = self._check_length(n_frames, cfg)
                    try:
                        key = batch_key(cfg, conds)
                    except ValueError as exc:  # weights only on conditions the model lacks
                        raise GeneratorError(f"clip {req.clip_id!r}: {exc}") from exc
                except GeneratorError as exc:
                    results[i] = exc
                    continue
                groups.setdefault(key, []).append(_Checked(i, cfg, conds, n_frames, duration))
            log.debug("batch of %d requests: %d refused, %d denoising loop(s) of %s requests", len(requests),
                      sum(isinstance(r, GeneratorError) for r in results), len(groups),
                      [len(g) for g in groups.values()])
            # 2. + 3. one loop per group
            for group in groups.values():
                wavs: list[np.ndarray | GeneratorError] | None = None
                if len(group) > 1:
                    videos = [VideoRequest(c.conds, c.duration_s, str(requests[c.index].clip_id),
                                           int(requests[c.index].seed)) for c in group]
                    stops = [requests[c.index].should_stop for c in group]
                    group_stop = (lambda s=stops: all(f() for f in s)) if all(stops) else None
                    try:
                        # the key guarantees that the first request's settings are every one's
                        wavs = list(generate_videos(self.denoiser, self.vae, self.vocoder, videos, group[0].cfg,
                                                    schedule=self.schedule, max_rows=max_rows,
                                                    should_stop=group_stop))
                    except GenerationCancelled as exc:  # every request of the group went away
                        wavs = [exc] * len(group)
                    except Exception as exc:  # 4. rerun alone: each request gets its own result or error
                        log.warning("batched sampling of %d requests failed (%s: %s); running them one by one",
                                    len(group), type(exc).__name__, exc)
                if wavs is None:
                    wavs = [self._sample_alone(requests[c.index], c) for c in group]
                # the finishing checks of generate, per request (a non-finite waveform is its error)
                for c, wav in zip(group, wavs):
                    try:
                        results[c.index] = wav if isinstance(wav, (GeneratorError, GenerationCancelled)) else self._finish(
                            wav, c.n_frames, requests[c.index].clip_id)
                    except GeneratorError as exc:
                        results[c.index] = exc
        return results

    def _sample_alone(self, req: GenerationRequest, checked: "_Checked") -> np.ndarray | GeneratorError | \
            GenerationCancelled:
        """One request of :meth:`generate_batch` through :meth:`generate`'s sampler call (lock held)."""
        try:
            return generate_video(self.denoiser, self.vae, self.vocoder, checked.conds, checked.duration_s,
                                  str(req.clip_id), int(req.seed), checked.cfg, schedule=self.schedule,
                                  should_stop=req.should_stop)
        except (GeneratorError, GenerationCancelled) as exc:
            return exc

    def generate_file(self, video_path: str | os.PathLike, out_path: str | os.PathLike, seed: int = 0,
                      caption: str | None = None, clip_id: str = "clip",
                      progress: Callable[[int, int], None] | None = None, **overrides: Any) -> GenerationResult:
        """Decodes a video, generates its soundtrack and writes a ``.wav`` or a new ``.mp4``.

        The video needs no audio track (a silent video is the normal input; an existing
        track is ignored and, for ``.mp4`` output, replaced). Memory does not grow with the
        video's length beyond the soundtrack and the per-frame conditions: frames are
        decoded and encoded in chunks of :data:`ENCODE_CHUNK_FRAMES`
        (``media.read_frame_chunks``, the frames ``media.read_frames`` gives), windows are
        sampled in groups of ``sampler.window_batch``, and an ``.mp4`` is re-encoded one
        source frame at a time (``media.mux_audio``).

        Args:
            video_path: the input video (mp4, mkv, webm, mov, ...).
            out_path: ``.wav`` (16-bit PCM, ``sr``) or ``.mp4`` (the input's frames
                re-encoded as H.264 with the soundtrack as AAC).
            seed: run seed.
            caption: a text prompt (models with text conditioning only).
            clip_id: seeds the noise with ``seed`` (the default matches :meth:`generate`'s).
            progress: called after each group of windows with (windows done, windows).
            **overrides: sampler settings (see :meth:`generate`).

        Returns:
            a :class:`GenerationResult`.

        Raises:
            GeneratorError: an unsupported output type, a bad option, a video longer than
                ``max_seconds`` (before any frame is decoded; for a rotated or damaged file,
                whose frame count only the decode tells, before sampling) or a diverged model.
            soundtrack.data.media.MediaError: the input is missing, empty, not a video,
                has no video frames or is truncated.
        """
        t0 = time.perf_counter()
        out = Path(out_path)
        if out.suffix.lower() not in OUTPUT_SUFFIXES:
            raise GeneratorError(f"output {out} must end with {' or '.join(OUTPUT_SUFFIXES)}")
        cfg = self.sampler_config(**overrides)  # reject bad options before the decoding work
        self._check_caption(caption)
        info = media.probe(video_path, check_vfr=False)
        if not info.has_video:
            raise media.MediaError("no_video_stream", f"{video_path} has no video stream (an audio-only file?); "
                                   "supply a video with frames.")
        n_frames, chunks = media.read_frame_chunks(video_path, fps=self.fps, size=(self.frame_size, self.frame_size),
                                                   chunk_frames=ENCODE_CHUNK_FRAMES)
        wav = self._generate(chunks, n_frames, seed, clip_id, caption, cfg, progress)
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.suffix.lower() == ".wav":
            media.write_wav(out, wav, self.sr)
        else:
            media.mux_audio(video_path, wav, self.sr, out)
        seconds = time.perf_counter() - t0
        dur = wav.shape[0] / self.sr
        windows = len(window_starts(dur, self.clip_s, cfg.crossfade_s, self.sr))
        return GenerationResult(out, int(wav.shape[0]), self.sr, dur, seconds, real_time_factor(dur, max(seconds, 1e-9)),
                                windows)

    # -- persistence ------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The ``generator.json`` document (vocoder as given to the constructor)."""
        return {
            "format": GENERATOR_FORMAT,
            "profile": self.profile,
            "fps": self.fps,
            "sr": self.sr,
            "clip_s": self.clip_s,
            "frame_size": self.frame_size,
            "mel_format": self.mel_format.to_dict(),
            "sampler": _sampler_to_dict(self.sampler),
            "vocoder": self.vocoder_spec,
            "vocoder_options": self.vocoder_options,
            "conditions": list(self.conditions),
            "card": self.card,
        }

    def save(self, directory: str | os.PathLike) -> Path:
        """Writes the model directory (layout in the module docstring); ``generator.json`` last.

        A HiFi-GAN vocoder folder is copied into ``vocoder/`` so the directory is
        self-contained (the registry copies it elsewhere). Every weights folder gets its
        manifest (``weights.sha256.json``: the sha256 and size of each weight file, checked
        by :meth:`load`). A new directory, or one that holds only a model directory's own
        entries, is built under a hidden temporary name beside it and swapped in when
        complete: a failed save (a full disk) leaves the previous directory as it was. Any
        other existing directory is written in place, its ``generator.json`` removed first,
        so a failed save reads as unfinished.

        Args:
            directory: output directory (created; existing parts are overwritten).

        Returns:
            the directory.

        Raises:
            soundtrack.errors.DiskFullError: no space (nothing half-written is published).
            soundtrack.errors.WriteError: another failed write.
            soundtrack.errors.IntegrityError: the HiFi-GAN vocoder folder to copy fails its manifest.
        """
        root = Path(directory)
        if _staged_save_is_safe(root):
            with staged_directory(root, "the model directory", "the previous model directory is unchanged") as tmp:
                self._write(tmp)
            return root
        root.mkdir(parents=True, exist_ok=True)
        done = root / GENERATOR_FILE
        if done.exists():
            done.unlink()  # the directory is incomplete until the new document is written
        with convert_write_errors(root, "the model directory",
                                  f"it has no {GENERATOR_FILE}, so it reads as an unfinished save"):
            self._write(root)
        return root

    def _write(self, root: Path) -> None:
        """The parts, the vocoder copy and ``generator.json`` (last) into ``root``."""
        self.encoders.save(root / "encoders")
        save_vae(self.vae, root / "vae")
        self.denoiser.save(root / "denoiser")
        save_schedule(self.schedule, self.denoiser.config.prediction_type, root / SCHEDULE_DIR)
        doc = self.to_dict()
        if not _is_griffinlim(self.vocoder_spec):
            # A loaded model's spec is relative to its directory; the vocoder knows its folder.
            src = Path(getattr(self.vocoder, "directory", self.vocoder_spec)).resolve()
            dst = (root / "vocoder").resolve()
            if src != dst:
                verify_directory(src, what="the HiFi-GAN vocoder", hint="copy or download the vocoder again")
                if dst.exists():
                    shutil.rmtree(dst)
                shutil.copytree(src, dst)  # links are followed: the copy is self-contained
            if read_manifest(dst) is None:
                write_manifest(dst)
            doc["vocoder"] = "vocoder"
        text = json.dumps(doc, indent=2)
        write_file(root / GENERATOR_FILE, lambda tmp: tmp.write_text(text), GENERATOR_FILE)

    @classmethod
    def load(cls, directory: str | os.PathLike, device: str | torch.device = "cpu") -> "SoundtrackGenerator":
        """Loads a model directory written by :meth:`save` (validated first).

        Args:
            directory: the model directory.
            device: where the models run.

        Raises:
            GeneratorError: not a model directory, a missing part (named), a wrong format
                or parts that do not fit together.
        """
        root = Path(directory)
        doc = check_model_dir(root)
        try:
            mel_format = MelFormat.from_dict(doc["mel_format"])
            sampler = _sampler_from_dict(doc["sampler"])
        except (TypeError, ValueError) as exc:
            raise GeneratorError(f"{root / GENERATOR_FILE}: bad mel_format or sampler ({exc})") from exc
        parts = {}
        for part, loader in (("encoders", lambda p: ContrastiveModel.load(p, map_location=device)),
                             ("vae", load_vae),
                             ("denoiser", lambda p: load_denoiser(p, device=device))):
            try:
                parts[part] = loader(root / part)
            except IntegrityError as exc:  # a file that fails its manifest, a torn or garbled file
                raise GeneratorError(f"{root}: the {part}/ part fails its integrity check: {exc} (for the whole "
                                     f"model: {_REPAIR_HINT})") from exc
            except Exception as exc:  # mismatched shapes, bad configs
                raise GeneratorError(f"{root}: the {part}/ part does not load ({type(exc).__name__}: {exc}); "
                                     "save or copy the model again.") from exc
        schedule = cls._load_schedule(root, parts["denoiser"].config.prediction_type)
        vocoder = str(doc["vocoder"])
        if not _is_griffinlim(vocoder):
            folder = contained(root, vocoder, f"{GENERATOR_FILE}'s vocoder", GeneratorError)  # checked before, too
            try:
                verify_directory(folder, what="the generator's vocoder", hint=_REPAIR_HINT)
            except IntegrityError as exc:
                raise GeneratorError(f"{root}: the {vocoder}/ part fails its integrity check: {exc}") from exc
            vocoder = str(folder)
        gen = cls(parts["encoders"], parts["vae"], parts["denoiser"], vocoder, profile=doc["profile"],
                  frame_size=int(doc["frame_size"]), sampler=sampler, mel_format=mel_format,
                  conditions=doc["conditions"], card=doc.get("card") or {},
                  vocoder_options=doc.get("vocoder_options") or {}, schedule=schedule, device=device)
        gen.vocoder_spec = str(doc["vocoder"])  # keep the relative name for a re-save
        for key, have in (("fps", gen.fps), ("sr", gen.sr), ("clip_s", gen.clip_s)):
            if abs(float(doc[key]) - float(have)) > 1e-9:
                raise GeneratorError(f"{root / GENERATOR_FILE}: {key} = {doc[key]} but the parts say {have}")
        gen.directory = root
        return gen

    @staticmethod
    def _load_schedule(root: Path, prediction_type: str) -> NoiseSchedule:
        """The model's noise schedule from ``scheduler/``; the default when the directory has none."""
        folder = root / SCHEDULE_DIR
        if not (folder / SCHEDULE_FILE).is_file():
            log.info("%s has no %s/%s (saved before models kept their schedule): using the default noise "
                     "schedule, %s", root, SCHEDULE_DIR, SCHEDULE_FILE, DEFAULT_SCHEDULE.describe())
            return DEFAULT_SCHEDULE
        try:
            schedule, saved_pt = load_schedule(folder)
        except (TypeError, ValueError) as exc:
            raise GeneratorError(f"{folder / SCHEDULE_FILE}: bad noise schedule ({exc}); save the model again.") from exc
        if saved_pt is not None and saved_pt != prediction_type:
            raise GeneratorError(f"{folder / SCHEDULE_FILE} says prediction_type {saved_pt!r}, the denoiser "
                                 f"{prediction_type!r}; the parts do not belong together: save the model again.")
        return schedule


# ----------------------------------------------------------------------------- tiny model


def build_tiny_generator(directory: str | os.PathLike | None = None, seed: int = 0, use_text: bool = False,
                         num_steps: int = 4, gl_iterations: int = 8,
                         schedule: NoiseSchedule | None = None) -> SoundtrackGenerator:
    """An **untrained** tiny generator (random weights) for tests and serving tests.

    Its output is noise-like and means nothing; it exercises the real code paths (the
    tiny mel format, 64 x 256 per 10.24 s; a 4 x 16 x 64 latent; windows, crossfades,
    guidance) at a cost of about 1 s per 10 s window on one core. Sizes: frames of
    32 px, a 32-d shared space, 16-d video features, a UNet with channels (16, 32, 32);
    ``num_steps`` DPM-Solver++ steps and ``gl_iterations`` Griffin-Lim iterations by
    default (both stored as inference defaults in the model directory).

    Args:
        directory: where to save it (None: not saved).
        seed: seed of the random weights (the global torch RNG is left untouched).
        use_text: build the text branch (loads the packaged sentence encoder, ~8 s, on
            the first caption).
        num_steps: default sampling steps.
        gl_iterations: Griffin-Lim iterations of the vocoder.
        schedule: the noise schedule (None: the default).

    Returns:
        the generator (saved to ``directory`` when given).
    """
    frame_size = 32
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        ecfg = ContrastiveConfig.tiny(
            embed_dim=32, video_input_size=None, video_channels=(8, 16), video_dim=16, adaptor_groups=4,
            temporal_heads=4, audio_channels=16, audio_dim=16, use_text=use_text,
        )
        encoders = build_contrastive(ecfg)
        vae = build_vae("tiny", block_out_channels=(8, 16, 16))
        conds = ("video", "music", "sfx", "text") if use_text else ("video", "music", "sfx")
        dcfg = DenoiserConfig.tiny(
            latent_channels=int(vae.config.latent_channels), latent_hw=(16, 64),
            block_out_channels=(16, 32, 32), attention_levels=(False, True, True), cross_attention_dim=32,
            fusion_dim=16,
            token_sources=conds, video_dim=ecfg.video_dim, music_dim=ecfg.embed_dim,
            sfx_dim=ecfg.embed_dim, text_dim=ecfg.embed_dim,
        )
        denoiser = SoundtrackDenoiser(dcfg)
    gen = SoundtrackGenerator(
        encoders, vae, denoiser, "griffinlim", profile="tiny", frame_size=frame_size,
        sampler=SamplerConfig(num_steps=int(num_steps)), conditions=conds,
        card={"name": "tiny-untrained", "trained": False, "seed": int(seed),
              "note": "random weights: for tests of the code paths only"},
        vocoder_options={"n_iter": int(gl_iterations)}, schedule=schedule,
    )
    if directory is not None:
        gen.save(directory)
        gen.directory = Path(directory)
    return gen
