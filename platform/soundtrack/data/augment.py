"""Batches for contrastive video-sound-music training: crops and MuVi's negatives (no Ray).

The loss that consumes these batches is :mod:`soundtrack.losses.contrastive`.

Objective (CCCG supplement Sec. 6.2 + MuVi Sec. 3.2):

* Symmetric InfoNCE (CLIP) between video and music, video and sound effects and,
  optionally, music and sound effects and text and music, with one learnable
  temperature (``ContrastiveModel.logit_scale``: log(1/T), T starts at 0.07, 1/T clamped
  to 100 as in CLIP).
* MuVi's position-aware similarity ``s(v, a) = (1/T) sum_t cos(v_t, a_t)`` between the
  per-frame video embeddings and the per-step audio embeddings (so a temporally shifted
  audio scores lower than the aligned one), and its two extra negatives per positive:
  a beat-aware **temporal shift** of the audio and a **random segment replacement**
  (:func:`make_negatives`), with silence when a negative cannot be built.

Crops, not padding: a clip is 10.24 s. The positive is a window of ``crop_s`` (8 s by
default) at a frame-aligned offset ``o`` (the video frames are cropped to the same
window, :func:`crop_pair`), and the shifted negative is the window at ``o + shift`` of
the same 10.24 s waveform, so both are real audio of equal length: no zero padding or
silence tells the model which one is shifted. Every crop's mel is computed with
:func:`soundtrack.data.features.log_mel`, exactly like the stored mels.

Paper details that are not recoverable (the MuVi text we have lost its equations) and
our choices, each a field of :class:`ObjectiveConfig`:

* Shift amount. MuVi: shifting by whole beats "may not significantly affect the
  synchronization" of music with a stable tempo, so the shift is derived from the beat
  period ``T_b`` of the clip (Ellis' dynamic-programming tracker, our
  ``features.beat_times``); "k is a random positive integer" keeping the shift inside the
  clip; "we also intentionally skipped the half-beat areas to avoid backbeat
  synchronization". Our reading (``shift_mode="off_beat"``, default): shift
  ``+-(k + phi) T_b`` with integer ``k >= shift_k_min`` (1) and a beat phase ``phi`` drawn
  uniformly from ``[m, 0.5 - h] U [0.5 + h, 1 - m]`` (``beat_margin`` m = 0.125,
  ``half_beat_margin`` h = 0.125): never (near) a whole beat, never (near) a half beat.
  ``shift_mode="whole_beats"`` gives the literal alternative ``+-k T_b`` (a whole number
  of beats, never a half beat), which MuVi's text argues is a weak negative for steady
  music: keep it for ablations.
* Beat period: MuVi takes "the minimum BPM and its corresponding minimal cycle"; with
  one tracked beat sequence per clip we use the median inter-beat interval
  (``beat_period_stat``; ``"max"`` = slowest local tempo is the literal minimum BPM),
  and ``fallback_beat_period_s`` (0.5 s = 120 BPM, the tracker's prior) when a clip has
  fewer than 2 beats or an implausible period.
* Replacement: segment length uniform in ``replace_frac`` (20-50 %) of the window (the
  paper's bounds are lost), 5 % of the window kept at both ends (MuVi), source = the
  same stem of another clip in the batch at a random offset, joined with an
  equal-power (sine/cosine) crossfade of ``crossfade_s`` (50 ms, ours) inside the
  segment. Without another clip (batch of one) the segment is silence (MuVi: "by other
  music segment or silence").
* Sound effects get the same window offsets, shift and replacement plan as the music
  (the whole soundtrack is shifted or spliced), so both streams' negatives are built
  from one plan.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from soundtrack.config import build
from soundtrack.data.features import DEFAULT_CONFIG as DEFAULT_FEATURES
from soundtrack.data.features import FeatureConfig, log_mel

#: Order of the audio variants along axis 1 of the batch tensors.
VARIANTS = ("positive", "shifted", "replaced")


STREAMS = ("music", "sfx")


@dataclass(frozen=True)
class ObjectiveConfig:
    """Crops, negatives and loss weights of the contrastive pretraining.

    Attributes:
        crop_s: window length (s) cut from each 10.24 s clip for the positive and the
            negatives; shorter than the clip so that shifted windows stay inside it.
        fps: video frame rate (frames/s); crop offsets are whole frames.
        features: mel parameters (must match the stored mels: 16 kHz, hop 160, 128 mels).
        streams: audio streams to encode (``"music"``, ``"sfx"``); a row provides them as
            ``wav_music`` / ``wav_sfx``.
        sync_streams: streams that get the shifted and replaced negatives.
        shift_mode: ``"off_beat"`` (default, MuVi's reading, see the module docstring) or
            ``"whole_beats"``.
        shift_k_min: smallest whole number of beats in a shift (MuVi: "k is a random
            positive integer").
        beat_margin: off-beat shifts keep this fraction of a beat away from whole beats.
        half_beat_margin: half-width (beats) of the skipped area around half beats.
        beat_period_stat: statistic of the inter-beat intervals giving T_b.
        fallback_beat_period_s: T_b (s) for clips without a usable beat track.
        min_beat_period_s: tracked periods below this (s) are implausible -> fallback.
        max_beat_period_s: tracked periods above this (s) are implausible -> fallback.
        min_shift_s: shortest allowed shift (s); one video frame at 10 fps.
        shift_tries: random draws before the shifted negative falls back to silence.
        replace_frac: (min, max) replaced segment length as a fraction of the window.
        replace_border_frac: fraction of the window kept unchanged at each end (MuVi 5 %).
        crossfade_s: equal-power crossfade length (s) at each join.
        replace_silence_prob: probability of replacing with silence even when another
            clip is available (0: always splice another clip when possible).
        sim: similarity of the cross-clip InfoNCE: ``"position"`` (MuVi's per-step
            cosine averaged over time) or ``"pooled"`` (cosine of mean-pooled clip
            vectors, CLIP/CCCG).
        sync_loss: how the shifted/replaced negatives enter: ``"joint"`` (MuVi Eq. 2:
            two extra columns in each video row of the video->audio softmax),
            ``"separate"`` (an extra 3-way softmax over [positive, shifted, replaced]
            per clip, weight ``w_sync``) or ``"none"``.
        w_video_music: weight of the video-music InfoNCE.
        w_video_sfx: weight of the video-sound-effect InfoNCE.
        w_music_sfx: weight of the music-sound-effect InfoNCE (CCCG aligns all three).
        w_text_music: weight of the caption-music InfoNCE (0: text branch unused).
        w_sync: weight of the separate sync term (``sync_loss="separate"`` only).
        keep_wav: also put the cropped waveforms in the batch (needed by HTSAT backbones).
    """

    crop_s: float = 8.0
    fps: float = 10.0
    features: FeatureConfig = DEFAULT_FEATURES
    streams: tuple[str, ...] = STREAMS
    sync_streams: tuple[str, ...] = STREAMS
    shift_mode: Literal["off_beat", "whole_beats"] = "off_beat"
    shift_k_min: int = 1
    beat_margin: float = 0.125
    half_beat_margin: float = 0.125
    beat_period_stat: Literal["median", "max", "min"] = "median"
    fallback_beat_period_s: float = 0.5
    min_beat_period_s: float = 0.2
    max_beat_period_s: float = 2.0
    min_shift_s: float = 0.1
    shift_tries: int = 64
    replace_frac: tuple[float, float] = (0.2, 0.5)
    replace_border_frac: float = 0.05
    crossfade_s: float = 0.05
    replace_silence_prob: float = 0.0
    sim: Literal["position", "pooled"] = "position"
    sync_loss: Literal["joint", "separate", "none"] = "joint"
    w_video_music: float = 1.0
    w_video_sfx: float = 1.0
    w_music_sfx: float = 0.5
    w_text_music: float = 0.0
    w_sync: float = 1.0
    keep_wav: bool = False

    def __post_init__(self) -> None:
        if self.shift_mode not in ("off_beat", "whole_beats"):
            raise ValueError(f"unknown shift_mode {self.shift_mode!r}")
        if self.shift_mode == "whole_beats" and self.shift_k_min < 1:
            raise ValueError("whole-beat shifts need shift_k_min >= 1 (k = 0 is no shift)")
        if self.beat_margin < 0 or self.half_beat_margin < 0:
            raise ValueError("beat_margin and half_beat_margin must be >= 0")
        if self.beat_margin + self.half_beat_margin >= 0.5:
            raise ValueError("need beat_margin + half_beat_margin < 0.5 (some off-beat phase must remain)")
        lo, hi = self.replace_frac
        if not 0 < lo <= hi < 1 - 2 * self.replace_border_frac:
            raise ValueError(f"replace_frac {self.replace_frac} must fit inside the unchanged borders")
        if self.sync_loss == "joint" and self.sim != "position":
            raise ValueError("sync_loss='joint' needs sim='position' (the negatives are position-aware)")
        if self.sync_loss not in ("joint", "separate", "none"):
            raise ValueError(f"unknown sync_loss {self.sync_loss!r}")
        for s in (*self.streams, *self.sync_streams):
            if s not in STREAMS:
                raise ValueError(f"unknown stream {s!r} (music, sfx)")
        if not set(self.sync_streams) <= set(self.streams):
            raise ValueError("sync_streams must be a subset of streams")
        if abs(self.features.sr / self.fps - round(self.features.sr / self.fps)) > 1e-9:
            raise ValueError("sr / fps must be a whole number of samples per frame")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (the nested feature config as a dict)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ObjectiveConfig":
        """Inverse of :meth:`to_dict` (lists become tuples; unknown keys are an error).

        Args:
            d: field values; ``features`` may be a dict of ``FeatureConfig`` fields.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown ObjectiveConfig keys: {sorted(unknown)}")
        kw = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        if isinstance(kw.get("features"), Mapping):
            feats = {k: tuple(v) if isinstance(v, list) else v for k, v in kw["features"].items()}
            kw["features"] = FeatureConfig(**feats)
        return cls(**kw)

    @property
    def sr(self) -> int:
        """Audio sample rate (Hz)."""
        return self.features.sr

    @property
    def samples_per_frame(self) -> int:
        """Samples per video frame (1600 at 16 kHz, 10 fps)."""
        return int(round(self.sr / self.fps))

    @property
    def crop_samples(self) -> int:
        """Window length in samples (128 000 for 8 s)."""
        return int(round(self.crop_s * self.sr))

    @property
    def crop_frames(self) -> int:
        """Video frames in a window: ceil(crop_s * fps) (80 for 8 s)."""
        return int(math.ceil(round(self.crop_s * self.fps, 6)))


def beat_period(beat_times: np.ndarray | Sequence[float] | None, cfg: ObjectiveConfig) -> tuple[float, str]:
    """Beat period T_b (s) of a clip from its tracked beats, or the fallback.

    Args:
        beat_times: beat positions (s), increasing.
        cfg: objective config (``beat_period_stat``, bounds, fallback).

    Returns:
        ``(period_s, source)`` with source ``"beats"`` or ``"fallback"``.
    """
    bt = np.asarray(beat_times if beat_times is not None else [], dtype=np.float64).reshape(-1)
    if bt.size >= 2:
        ibi = np.diff(bt)
        ibi = ibi[ibi > 0]
        if ibi.size:
            stat = {"median": np.median, "max": np.max, "min": np.min}[cfg.beat_period_stat]
            period = float(stat(ibi))
            if cfg.min_beat_period_s <= period <= cfg.max_beat_period_s:
                return period, "beats"
    return float(cfg.fallback_beat_period_s), "fallback"


def _draw_phase(rng: np.random.Generator, cfg: ObjectiveConfig) -> float:
    """Beat phase of a shift: 0 (whole beats) or uniform on the off-beat set."""
    if cfg.shift_mode == "whole_beats":
        return 0.0
    m, h = cfg.beat_margin, cfg.half_beat_margin
    width = 0.5 - h - m  # length of each of the two allowed intervals
    u = rng.uniform(0.0, 2 * width)
    return m + u if u < width else 0.5 + h + (u - width)


def _offset_range(shift: int, max_offset: int, step: int) -> tuple[int, int]:
    """Frame offsets o_f (o = o_f * step) with 0 <= o <= max_offset and 0 <= o + shift <= max_offset."""
    # A negative shift needs o >= -shift, i.e. o_f >= ceil(-shift / step).
    lo = -(shift // step) if shift < 0 else 0
    hi = min(max_offset // step, (max_offset - shift) // step)
    return lo, hi


def sample_shift(
    period_s: float, max_offset: int, rng: np.random.Generator, cfg: ObjectiveConfig
) -> tuple[int, float] | None:
    """Draws a beat-aware shift that fits inside the clip.

    Args:
        period_s: beat period T_b (s).
        max_offset: largest window offset (samples): clip length minus window length.
        rng: random generator.
        cfg: objective config.

    Returns:
        ``(shift_samples, shift_in_beats)`` or None when no allowed shift fits.
    """
    sr, step = cfg.sr, cfg.samples_per_frame
    k_max = int(math.floor(max_offset / (period_s * sr)))
    if k_max < cfg.shift_k_min:
        return None
    for _ in range(cfg.shift_tries):
        k = int(rng.integers(cfg.shift_k_min, k_max + 1))
        beats = k + _draw_phase(rng, cfg)
        if beats <= 0:
            continue
        sign = 1 if rng.random() < 0.5 else -1
        shift = sign * int(round(beats * period_s * sr))
        if abs(shift) < cfg.min_shift_s * sr:
            continue
        lo, hi = _offset_range(shift, max_offset, step)
        if lo <= hi:
            return shift, sign * beats
    return None


def equal_power_gains(length: int, start: int, stop: int, fade: int) -> tuple[np.ndarray, np.ndarray]:
    """Gains of the original and the inserted signal for a spliced segment.

    Outside ``[start, stop)`` the original has gain 1 and the insert 0; inside, the
    insert has gain 1 except for ``fade`` samples at each join, where the gains follow
    ``cos`` / ``sin`` of a quarter period so that ``g_orig**2 + g_new**2 == 1`` (equal
    power: the loudness of two uncorrelated signals stays constant through the join).

    Args:
        length: window length (samples).
        start: first replaced sample.
        stop: one past the last replaced sample.
        fade: crossfade length (samples) at each join, inside the segment.

    Returns:
        ``(g_orig, g_new)``, float32 arrays (length,).
    """
    g_orig = np.ones(length, dtype=np.float64)
    g_new = np.zeros(length, dtype=np.float64)
    g_orig[start:stop] = 0.0
    g_new[start:stop] = 1.0
    fade = min(fade, (stop - start) // 2)
    if fade > 0:
        u = (np.arange(fade) + 0.5) / fade * (np.pi / 2)  # quarter period, sample centres
        g_orig[start : start + fade], g_new[start : start + fade] = np.cos(u), np.sin(u)
        g_orig[stop - fade : stop], g_new[stop - fade : stop] = np.sin(u), np.cos(u)
    return g_orig.astype(np.float32), g_new.astype(np.float32)


def _as_stems(wav: np.ndarray | Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], bool]:
    """Mapping of stems (all the same length) and whether the input was a bare array."""
    if isinstance(wav, Mapping):
        stems = {k: np.asarray(v, dtype=np.float32) for k, v in wav.items()}
        bare = False
    else:
        stems, bare = {"wav": np.asarray(wav, dtype=np.float32)}, True
    lengths = {v.shape for v in stems.values()}
    if len(lengths) != 1 or any(v.ndim != 1 for v in stems.values()):
        raise ValueError(f"stems must be mono and of equal length, got shapes {sorted(lengths)}")
    return stems, bare


def make_negatives(
    wav: np.ndarray | Mapping[str, np.ndarray],
    beat_times: np.ndarray | Sequence[float] | None,
    rng: np.random.Generator,
    cfg: ObjectiveConfig = ObjectiveConfig(),
    donor: np.ndarray | Mapping[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Positive window and MuVi's two negatives of one clip, cut from the full waveform.

    Plan: draw the beat-aware shift (:func:`sample_shift`), then a frame-aligned offset
    ``o`` such that both ``[o, o + L)`` and ``[o + shift, o + shift + L)`` lie inside the
    clip; the positive is the first window, the shifted negative the second. The
    replaced negative is the positive with one segment spliced in from ``donor`` (same
    stem, random offset) or, without a donor, silence. A negative that cannot be built
    is silence (MuVi). The same plan is applied to every stem.

    Args:
        wav: one waveform (N,) or a mapping of stems (e.g. ``{"music": ..., "sfx": ...}``)
            of equal length, at ``cfg.sr``.
        beat_times: the clip's beats (s) (``beat_times`` of the shard row).
        rng: random generator.
        cfg: objective config.
        donor: another clip's waveform(s) with the same stem names, or None.

    Returns:
        Dict with ``positive``, ``shifted``, ``replaced`` (arrays (L,), or mappings of
        them when ``wav`` was a mapping), ``offset`` (samples), ``offset_frame``,
        ``crop_len``, ``beat_period_s``, ``period_source``, ``shift`` (samples; 0 when
        silent), ``shift_s``, ``shift_beats``, ``shift_kind`` (``"beat"`` or
        ``"silence"``), ``replace_span`` ((start, stop) samples within the window),
        ``replace_kind`` (``"donor"`` or ``"silence"``), ``donor_offset`` and the gains
        ``gain_orig`` / ``gain_new`` (L,).
    """
    stems, bare = _as_stems(wav)
    n = next(iter(stems.values())).shape[0]
    length, step, sr = cfg.crop_samples, cfg.samples_per_frame, cfg.sr
    max_offset = n - length
    if max_offset < 0:
        raise ValueError(f"clip of {n} samples is shorter than the {length}-sample window")

    period, period_source = beat_period(beat_times, cfg)
    drawn = sample_shift(period, max_offset, rng, cfg)
    if drawn is None:
        shift, beats, shift_kind = 0, 0.0, "silence"
        lo, hi = 0, max_offset // step
    else:
        (shift, beats), shift_kind = drawn, "beat"
        lo, hi = _offset_range(shift, max_offset, step)
    offset_frame = int(rng.integers(lo, hi + 1))
    offset = offset_frame * step

    positive = {k: v[offset : offset + length].copy() for k, v in stems.items()}
    if shift_kind == "beat":
        shifted = {k: v[offset + shift : offset + shift + length].copy() for k, v in stems.items()}
    else:
        shifted = {k: np.zeros(length, dtype=np.float32) for k in stems}

    # Random replacement inside the kept borders.
    border = int(round(cfg.replace_border_frac * length))
    seg = int(round(rng.uniform(*cfg.replace_frac) * length))
    seg = min(seg, length - 2 * border)
    start = int(rng.integers(border, length - border - seg + 1))
    stop = start + seg
    fade = int(round(cfg.crossfade_s * sr))
    g_orig, g_new = equal_power_gains(length, start, stop, fade)
    donor_stems = None
    if donor is not None and not rng.random() < cfg.replace_silence_prob:
        donor_stems, _ = _as_stems(donor if not bare or isinstance(donor, Mapping) else {"wav": donor})
        if set(donor_stems) != set(stems) or next(iter(donor_stems.values())).shape[0] < seg:
            donor_stems = None
    if donor_stems is not None:
        dn = next(iter(donor_stems.values())).shape[0]
        donor_offset = int(rng.integers(0, dn - seg + 1))
        replace_kind = "donor"
    else:
        donor_offset, replace_kind = -1, "silence"
    replaced = {}
    for k, pos in positive.items():
        insert = np.zeros(length, dtype=np.float32)
        if donor_stems is not None:
            insert[start:stop] = donor_stems[k][donor_offset : donor_offset + seg]
        replaced[k] = (g_orig * pos + g_new * insert).astype(np.float32)

    def out(d: dict[str, np.ndarray]):
        return d["wav"] if bare else d

    return {
        "positive": out(positive),
        "shifted": out(shifted),
        "replaced": out(replaced),
        "offset": offset,
        "offset_frame": offset_frame,
        "crop_len": length,
        "beat_period_s": period,
        "period_source": period_source,
        "shift": shift,
        "shift_s": shift / sr,
        "shift_beats": beats,
        "shift_kind": shift_kind,
        "replace_span": (start, stop),
        "replace_kind": replace_kind,
        "donor_offset": donor_offset,
        "gain_orig": g_orig,
        "gain_new": g_new,
    }


def crop_pair(
    frames: np.ndarray,
    wav: np.ndarray | Mapping[str, np.ndarray],
    offset_frame: int,
    cfg: ObjectiveConfig = ObjectiveConfig(),
    audio_shift: int = 0,
) -> tuple[np.ndarray, np.ndarray | dict[str, np.ndarray]]:
    """Crops frames and audio to the same window (no padding; out of range is an error).

    Args:
        frames: (F, H, W, 3) frames of the clip at ``cfg.fps``.
        wav: waveform (N,) or mapping of stems at ``cfg.sr``.
        offset_frame: window start in video frames (start time offset_frame / fps).
        cfg: objective config (window length, rates).
        audio_shift: extra audio offset (samples) for a shifted copy; the frames are
            not shifted.

    Returns:
        ``(frames[offset_frame : offset_frame + crop_frames], audio window(s))``.
    """
    nf = cfg.crop_frames
    if offset_frame < 0 or offset_frame + nf > frames.shape[0]:
        raise ValueError(f"frame window [{offset_frame}, {offset_frame + nf}) outside the {frames.shape[0]} frames")
    stems, bare = _as_stems(wav)
    start = offset_frame * cfg.samples_per_frame + audio_shift
    n = next(iter(stems.values())).shape[0]
    if start < 0 or start + cfg.crop_samples > n:
        raise ValueError(f"audio window [{start}, {start + cfg.crop_samples}) outside the {n} samples")
    crops = {k: v[start : start + cfg.crop_samples] for k, v in stems.items()}
    return frames[offset_frame : offset_frame + nf], (crops["wav"] if bare else crops)


def _row_stems(row: Mapping[str, Any], cfg: ObjectiveConfig) -> dict[str, np.ndarray]:
    missing = [f"wav_{s}" for s in cfg.streams if row.get(f"wav_{s}") is None]
    if missing:
        raise KeyError(f"row {row.get('clip_id', '?')} lacks {missing} (decode it with decode_row)")
    return {s: np.asarray(row[f"wav_{s}"], dtype=np.float32) for s in cfg.streams}


def make_batch(
    rows: Sequence[Mapping[str, Any]], cfg: ObjectiveConfig = ObjectiveConfig(), rng: np.random.Generator | None = None
) -> dict[str, Any]:
    """Turns decoded shard rows into one training batch (crops, negatives, mels).

    Each clip's replacement donor is another clip of the batch, chosen at random.

    Args:
        rows: dicts from ``soundtrack.data.shards.decode_row`` with ``frames``,
            ``wav_music``, ``wav_sfx``, ``beat_times`` and optionally ``caption`` and
            ``source_id``.
        cfg: objective config.
        rng: a seeded random generator (required: a run must reproduce from its seed).

    Returns:
        Dict with ``frames`` (uint8 tensor (B, crop_frames, H, W, 3)); per stream ``s``
        ``s`` = float32 mels (B, V, n_mels, crop_samples // hop) with V = 3 variants
        (positive, shifted, replaced; :data:`VARIANTS`) for streams in
        ``sync_streams`` and V = 1 otherwise, and ``s_wav`` (B, V, L) when
        ``keep_wav``; ``caption`` (list[str]); ``group`` (int64 (B,): equal for clips of
        the same source, which are not negatives of each other); ``shift_s``,
        ``offset_frame`` (tensors (B,)); ``shift_kind`` and ``replace_kind`` (lists).
    """
    if rng is None:  # crops and negatives must follow the run's seed (see distributed.batches.batch_rng)
        raise ValueError("make_batch needs a seeded numpy Generator (rng); OS entropy would make runs irreproducible")
    if not rows:
        raise ValueError("empty batch")
    b = len(rows)
    stems = [_row_stems(r, cfg) for r in rows]
    frames, mels, wavs = [], {s: [] for s in cfg.streams}, {s: [] for s in cfg.streams}
    shift_s, offsets, shift_kind, replace_kind = [], [], [], []
    for i, row in enumerate(rows):
        donor = stems[(i + 1 + int(rng.integers(b - 1))) % b] if b > 1 else None
        neg = make_negatives(stems[i], row.get("beat_times"), rng, cfg, donor=donor)
        f, _ = crop_pair(np.asarray(row["frames"]), stems[i], neg["offset_frame"], cfg)
        frames.append(np.ascontiguousarray(f))
        for s in cfg.streams:
            variants = VARIANTS if s in cfg.sync_streams else VARIANTS[:1]
            w = [neg[v][s] for v in variants]
            mels[s].append(np.stack([log_mel(x, cfg.features) for x in w]))
            if cfg.keep_wav:
                wavs[s].append(np.stack(w))
        shift_s.append(neg["shift_s"])
        offsets.append(neg["offset_frame"])
        shift_kind.append(neg["shift_kind"])
        replace_kind.append(neg["replace_kind"])
    sources = [str(r.get("source_id", r.get("clip_id", i))) for i, r in enumerate(rows)]
    ids = {s: k for k, s in enumerate(dict.fromkeys(sources))}
    batch: dict[str, Any] = {
        "frames": torch.from_numpy(np.stack(frames)),
        "caption": [str(r.get("caption") or "") for r in rows],
        "group": torch.tensor([ids[s] for s in sources], dtype=torch.int64),
        "shift_s": torch.tensor(shift_s, dtype=torch.float32),
        "offset_frame": torch.tensor(offsets, dtype=torch.int64),
        "shift_kind": shift_kind,
        "replace_kind": replace_kind,
    }
    for s in cfg.streams:
        batch[s] = torch.from_numpy(np.stack(mels[s]))
        if cfg.keep_wav:
            batch[f"{s}_wav"] = torch.from_numpy(np.stack(wavs[s]))
    return batch


def replace_config(cfg: ObjectiveConfig, **changes: Any) -> ObjectiveConfig:
    """``dataclasses.replace`` for :class:`ObjectiveConfig` (validates again).

    Args:
        cfg: base config.
        **changes: fields to change.
    """
    return dataclasses.replace(cfg, **changes)


#: make_batch outputs that are lists of strings (kept as numpy string arrays in Ray Data).
STR_KEYS = ("caption", "shift_kind", "replace_kind")


def objective_config(overrides: Mapping[str, Any]) -> ObjectiveConfig:
    """The :class:`ObjectiveConfig` with the experiment's overrides (named ``pretrain.objective.<key>``)."""
    return build(ObjectiveConfig, dict(overrides), src="pretrain.objective", prefix="pretrain.objective.")
