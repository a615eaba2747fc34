"""The embedded synthetic data set: procedural videos whose soundtracks truly correspond.

Every clip is a small "room" (background, floor, side walls) with a moving object that
bounces against the floor or between the walls, plus a soundtrack synthesised with numpy.
Picture and sound are tied together on purpose, so that models can learn the
correspondence and metrics can measure it:

* **Rhythm.** The music has a fixed tempo (80-160 bpm); the object hits the floor/wall
  exactly on a beat, once per beat or once every 2 beats, so a faster tempo means faster
  motion. A kick drum plays on every beat, so a beat tracker finds the beats; the last
  beat is at least 150 ms before the clip end. Measured: ``librosa.beat.beat_track``
  (sr 16 kHz, hop 160, no tempo hint) on the decoded mp4 audio of 256 medium clips reaches
  a mean mir_eval beat F-measure of 0.97 (70 ms window, beats before 5 s trimmed).
* **Events.** Bounces, full-frame flashes and camera cuts land exactly on beats (flashes
  and cuts on downbeats, with a crash cymbal in the music). At a bounce the object
  squashes and glows, the struck floor/wall lights up in the object's colour and a ring
  spreads from the contact point. Ground truth is stored to 1 ms and the audio onsets
  are placed on the very samples of those (rounded) times.
* **Mood.** The palette (warm/bright, pale/cool, dark/cold, dark/red, pastel) picks the
  mode (major/minor) and the timbre (bright or soft harmonics, echo).
* **Style.** Instrument and pattern set: ``piano`` (block chords), ``guitar`` (plucked
  arpeggios), ``electronic`` (FM synth, clap), ``chiptune`` (pulse waves).
* **Key.** The root note of the scale.
* **Sound effects.** A separate stem: an impact at every bounce (thud for a ball, knock
  for a box) and a whoosh at every camera cut.

Difficulty knobs (fields of :class:`SynthConfig`, chosen by :func:`difficulty_preset`)
keep benchmarks from saturating: silent distractor objects that move and flash, musical
accents without a visual event, sound effects with no visible cause (off screen),
background noise at a given SNR, and camera cuts.

Determinism: clip ``i`` depends only on ``(seed, i, difficulty)``. The scene and the music
(tempo, key, mood, style, object, melody) come from ``np.random.default_rng([seed, i])``
and do not depend on the difficulty, so the same clip index at ``easy`` and ``hard`` has
the same song and scene (only the bounce rate may differ: ``easy`` bounces on every beat);
the difficulty extras come from ``default_rng([seed, i, 1])``
and the noises of the drums, sound effects and background from ``default_rng([seed, i, k])``
for k = 2, 3, 4.

On-disk layout written by :func:`generate_dataset`::

    out_dir/videos/synth00000.mp4        H.264 + AAC (the mix: music + sfx + noise)
    out_dir/videos/synth00000.music.wav  16 kHz mono PCM16 music stem
    out_dir/videos/synth00000.sfx.wav    16 kHz mono PCM16 sound-effect stem
    out_dir/metadata.parquet             every label and scene parameter per clip
    out_dir/manifest.parquet             the manifest contract (docs/data-contracts.md)
    out_dir/synth.json                   the settings the folder was made with

The mix equals ``music + sfx + noise`` (clipped to [-1, 1]); the stems are stored at the
level they have in the mix.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import multiprocessing
import os
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from soundtrack.data.manifest import write_manifest
from soundtrack.data.media import write_mp4, write_wav

log = logging.getLogger(__name__)

__all__ = [
    "DIFFICULTIES",
    "KEY_NAMES",
    "MOODS",
    "STYLES",
    "ClipPlan",
    "SynthConfig",
    "clip_paths",
    "difficulty_preset",
    "generate_dataset",
    "plan_clip",
    "render_clip",
]

#: Bump when the rendering changes, so an old folder is not silently mixed with new clips.
SYNTH_VERSION = 1

DIFFICULTIES = ("easy", "medium", "hard")
KEY_NAMES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
STYLES = ("piano", "guitar", "electronic", "chiptune")

# Scale steps (semitones above the root).
_SCALES = {"major": (0, 2, 4, 5, 7, 9, 11), "minor": (0, 2, 3, 5, 7, 8, 10)}
# Chord progressions as 0-based scale degrees, one chord per 4-beat bar.
_PROGRESSIONS = {
    "major": ((0, 4, 5, 3), (0, 3, 4, 3), (5, 3, 0, 4), (0, 5, 3, 4)),
    "minor": ((0, 5, 2, 6), (0, 3, 4, 0), (0, 6, 5, 6), (0, 3, 6, 2)),
}


@dataclass(frozen=True)
class _Mood:
    mode: str  # "major" / "minor"
    brightness: float  # 0..1: harmonic richness of the tonal instruments
    echo: float  # 0..1: gain of the feedback echo on tonal instruments
    adjective: str  # for captions
    palettes: tuple[tuple[str, tuple[int, int, int]], ...]  # (caption name, RGB background)


#: Mood -> mode, timbre and palette. Warm/bright palettes are major with bright timbre,
#: dark/cold ones minor with soft timbre; "tense" (dark red) is minor but harsh.
MOODS: dict[str, _Mood] = {
    "happy": _Mood(
        "major", 0.85, 0.0, "cheerful",
        (("warm yellow", (250, 205, 95)), ("orange", (250, 165, 80)), ("golden", (235, 190, 60))),
    ),
    "calm": _Mood(
        "major", 0.3, 0.15, "gentle",
        (("pale blue", (170, 210, 235)), ("mint green", (170, 228, 200)), ("soft sky blue", (195, 220, 245))),
    ),
    "sad": _Mood(
        "minor", 0.25, 0.2, "melancholic",
        (("dark navy", (35, 50, 85)), ("cold grey", (62, 68, 82)), ("deep teal", (28, 62, 72))),
    ),
    "tense": _Mood(
        "minor", 0.9, 0.0, "tense",
        (("dark red", (95, 20, 25)), ("blood red", (70, 12, 18)), ("rust brown", (80, 38, 15))),
    ),
    "dreamy": _Mood(
        "major", 0.35, 0.45, "dreamy",
        (("lavender", (200, 172, 232)), ("pastel pink", (236, 182, 214)), ("periwinkle", (182, 186, 236))),
    ),
}

_STYLE_WORDS = {"piano": "piano", "guitar": "acoustic guitar", "electronic": "electronic synth", "chiptune": "chiptune"}

# Object colours (caption name -> RGB); one is chosen that contrasts with the background.
_COLOURS = (
    ("red", (225, 40, 40)),
    ("blue", (40, 90, 235)),
    ("green", (40, 185, 70)),
    ("yellow", (248, 220, 40)),
    ("white", (248, 248, 248)),
    ("purple", (150, 60, 205)),
    ("orange", (252, 140, 30)),
    ("cyan", (40, 215, 225)),
    ("black", (22, 22, 22)),
)


# --------------------------------------------------------------------------- config


@dataclass(frozen=True)
class SynthConfig:
    """Difficulty knobs of the synthetic set (one frozen value per clip set).

    Ranges are inclusive ``(low, high)`` pairs; each clip draws its own value in the range.

    Args:
        difficulty: preset name stored in ``label_difficulty`` (any string for custom mixes).
        tempo_range: tempo in bpm (integer draw); 80-160 keeps beat trackers in range.
        hit_every: choices for the number of beats between bounces of the main object.
        n_flashes: full-frame flashes (visual events on downbeats, with a crash cymbal).
        n_cuts: camera cuts (visual events on downbeats, with a whoosh and a crash).
        n_distractors: silent distractor objects that drift around the room.
        distractor_speed_hz: highest oscillation frequency of a distractor's path (Hz).
        n_distractor_flashes: distractor flashes (silent, off the beat).
        n_accents: musical accents (crash + chord stab) with no visual event.
        accent_offbeat: accents may also fall on the off-beat eighth notes.
        n_offscreen_sfx: sound effects with no visible collision, at random times.
        snr_db: background-noise signal-to-noise ratio of the mix (dB).
    """

    difficulty: str = "medium"
    tempo_range: tuple[int, int] = (80, 160)
    hit_every: tuple[int, ...] = (1, 2)
    n_flashes: tuple[int, int] = (0, 2)
    n_cuts: tuple[int, int] = (0, 1)
    n_distractors: tuple[int, int] = (1, 1)
    distractor_speed_hz: float = 0.3
    n_distractor_flashes: tuple[int, int] = (1, 2)
    n_accents: tuple[int, int] = (1, 3)
    accent_offbeat: bool = False
    n_offscreen_sfx: tuple[int, int] = (1, 2)
    snr_db: tuple[float, float] = (15.0, 25.0)

    def __post_init__(self):
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.name in ("difficulty", "accent_offbeat", "hit_every", "distractor_speed_hz"):
                continue
            if len(v) != 2 or v[0] > v[1]:
                raise ValueError(f"SynthConfig.{f.name} must be a (low, high) pair with low <= high, got {v!r}")
            if f.name != "snr_db" and v[0] < 0:
                raise ValueError(f"SynthConfig.{f.name} must be non-negative, got {v!r}")
        if not self.hit_every or min(self.hit_every) < 1:
            raise ValueError(f"SynthConfig.hit_every must hold positive beat counts, got {self.hit_every!r}")
        if self.tempo_range[0] < 40 or self.tempo_range[1] > 240:
            raise ValueError(f"SynthConfig.tempo_range must lie within 40-240 bpm, got {self.tempo_range!r}")
        if self.distractor_speed_hz < 0:
            raise ValueError(f"SynthConfig.distractor_speed_hz must be >= 0, got {self.distractor_speed_hz}")

    def to_dict(self) -> dict:
        """Plain JSON-able dict (tuples become lists)."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}


def difficulty_preset(name: str) -> SynthConfig:
    """The knob values of a named difficulty.

    ``easy``: one bounce per beat, no distractors, no cuts, no unmatched accents or
    off-screen sounds, nearly no noise. ``medium`` (default): one distractor, a cut at
    most, a few accents and off-screen sounds, 15-25 dB SNR. ``hard``: 2-3 faster
    distractors with several silent flashes, 1-2 cuts, many accents (also off the beat),
    several off-screen sounds, 3-10 dB SNR.

    Args:
        name: ``easy``, ``medium`` or ``hard``.

    Returns:
        The :class:`SynthConfig` of that preset.

    Raises:
        ValueError: unknown name (the message lists the allowed ones).
    """
    if name == "easy":
        return SynthConfig(
            difficulty="easy", hit_every=(1,), n_flashes=(0, 1), n_cuts=(0, 0), n_distractors=(0, 0),
            distractor_speed_hz=0.0, n_distractor_flashes=(0, 0), n_accents=(0, 0), accent_offbeat=False,
            n_offscreen_sfx=(0, 0), snr_db=(35.0, 45.0),
        )
    if name == "medium":
        return SynthConfig(difficulty="medium")
    if name == "hard":
        return SynthConfig(
            difficulty="hard", hit_every=(1, 2), n_flashes=(0, 2), n_cuts=(1, 2), n_distractors=(2, 3),
            distractor_speed_hz=0.6, n_distractor_flashes=(3, 5), n_accents=(3, 6), accent_offbeat=True,
            n_offscreen_sfx=(2, 4), snr_db=(3.0, 10.0),
        )
    raise ValueError(f"unknown difficulty {name!r}; allowed: {', '.join(DIFFICULTIES)}")


def _as_config(difficulty: str | SynthConfig) -> SynthConfig:
    return difficulty if isinstance(difficulty, SynthConfig) else difficulty_preset(difficulty)


# --------------------------------------------------------------------------- plan


@dataclass
class _Distractor:
    shape: str
    colour: str
    rgb: tuple[int, int, int]
    radius: float  # px at size 128
    centre: tuple[float, float]  # px at size 128
    amp: tuple[float, float]  # px at size 128
    freq: tuple[float, float]  # Hz
    phase: tuple[float, float]  # rad


@dataclass
class ClipPlan:
    """Everything that defines one clip: labels, scene and score (times in s, to 1 ms).

    Geometry is in pixels of a 128 x 128 frame and is scaled to the rendered size.
    """

    index: int
    seed: int
    source_id: str
    difficulty: str
    duration_s: float
    tempo: float  # bpm
    beat_times: np.ndarray
    key: str
    key_pc: int  # pitch class of the root, 0 = C
    mode: str
    mood: str
    style: str
    progression: tuple[int, ...]
    melody: list[tuple[float, float, int, float]]  # (start s, length s, midi, velocity)
    hit_every: int
    hit_phase: int  # first bouncing beat index
    bounce_times: np.ndarray
    flash_times: np.ndarray
    cut_times: np.ndarray
    accent_times: np.ndarray
    distractor_times: np.ndarray
    offscreen_sfx_times: np.ndarray
    offscreen_sfx_kinds: list[str]
    snr_db: float
    motion: str  # "floor" (bounces on the floor) or "walls" (between the side walls)
    shape: str  # "ball" or "box"
    colour: str
    rgb: tuple[int, int, int]
    radius: float
    height: float  # floor bounce height / wall-bounce vertical drift amplitude (px)
    drift: tuple[float, float, float]  # (amplitude px, period s, phase rad) of the secondary axis
    palette: str
    bg_rgb: tuple[int, int, int]
    cut_palette: str
    cut_bg_rgb: tuple[int, int, int]
    distractors: list[_Distractor] = field(default_factory=list)
    caption: str = ""

    @property
    def event_times(self) -> np.ndarray:
        """Visual events (bounces, flashes, cuts), sorted, unique."""
        return np.unique(np.concatenate([self.bounce_times, self.flash_times, self.cut_times]))

    @property
    def sfx_times(self) -> np.ndarray:
        """Sound-effect onsets: impacts at bounces, whooshes at cuts, off-screen sounds."""
        return np.unique(np.concatenate([self.bounce_times, self.cut_times, self.offscreen_sfx_times]))

    @property
    def downbeat_times(self) -> np.ndarray:
        return self.beat_times[::4]

    def labels(self) -> dict:
        """The ``label_*`` columns of the manifest (lists are python lists of floats)."""

        def lst(a):
            return [float(x) for x in np.asarray(a, dtype=np.float64)]

        return {
            "label_tempo": float(self.tempo),
            "label_key": self.key,
            "label_mode": self.mode,
            "label_mood": self.mood,
            "label_style": self.style,
            "label_difficulty": self.difficulty,
            "label_beat_times": lst(self.beat_times),
            "label_downbeat_times": lst(self.downbeat_times),
            "label_event_times": lst(self.event_times),
            "label_bounce_times": lst(self.bounce_times),
            "label_flash_times": lst(self.flash_times),
            "label_cut_times": lst(self.cut_times),
            "label_sfx_times": lst(self.sfx_times),
            "label_offscreen_sfx_times": lst(self.offscreen_sfx_times),
            "label_accent_times": lst(self.accent_times),
            "label_distractor_times": lst(self.distractor_times),
            "label_hit_every": int(self.hit_every),
            "label_snr_db": float(self.snr_db),
            "label_n_distractors": len(self.distractors),
            "label_object": f"{self.colour} {self.shape}",
            "label_motion": self.motion,
            "label_palette": self.palette,
        }

    def metadata(self) -> dict:
        """Labels plus the scene parameters (for ``metadata.parquet``)."""
        row = {"source_id": self.source_id, "clip_id": f"{self.source_id}__0000", "index": self.index,
               "seed": self.seed, "caption": self.caption}
        row.update(self.labels())
        row.update({
            "key_pc": self.key_pc,
            "progression": [int(d) for d in self.progression],
            "object_rgb": [int(c) for c in self.rgb],
            "object_radius_px": float(self.radius),
            "background_rgb": [int(c) for c in self.bg_rgb],
            "cut_palette": self.cut_palette,
            "offscreen_sfx_kinds": list(self.offscreen_sfx_kinds),
            "distractors": json.dumps([dataclasses.asdict(d) for d in self.distractors]),
        })
        return row


def _ms(x) -> np.ndarray:
    """Round times to 1 ms (the stored precision) and sort."""
    return np.sort(np.round(np.asarray(x, dtype=np.float64), 3))


def _pick_times(rng: np.random.Generator, candidates: np.ndarray, k: int, min_gap: float) -> np.ndarray:
    """Choose up to ``k`` candidate times, in random order, at least ``min_gap`` s apart."""
    chosen: list[float] = []
    for t in rng.permutation(np.asarray(candidates, dtype=np.float64)):
        if len(chosen) >= k:
            break
        if all(abs(t - c) >= min_gap for c in chosen):
            chosen.append(float(t))
    return _ms(chosen)


def _free_times(rng: np.random.Generator, k: int, lo: float, hi: float, avoid: np.ndarray,
                min_dist: float, min_gap: float) -> np.ndarray:
    """Up to ``k`` random times in [lo, hi) at least ``min_dist`` s from ``avoid`` and ``min_gap`` apart."""
    out: list[float] = []
    avoid = np.asarray(avoid, dtype=np.float64)
    for _ in range(200):  # rejection sampling; 200 tries is plenty for <= 6 times in 10 s
        if len(out) >= k:
            break
        t = round(float(rng.uniform(lo, hi)), 3)
        if avoid.size and np.min(np.abs(avoid - t)) < min_dist:
            continue
        if any(abs(t - o) < min_gap for o in out):
            continue
        out.append(t)
    return _ms(out)


def _contrast_colour(rng: np.random.Generator, bg, exclude=()) -> tuple[str, tuple[int, int, int]]:
    order = rng.permutation(len(_COLOURS))
    bg = np.asarray(bg, dtype=np.float64)
    for j in order:
        name, rgb = _COLOURS[j]
        if name in exclude:
            continue
        if np.linalg.norm(np.asarray(rgb, dtype=np.float64) - bg) > 150:  # RGB distance: clearly visible
            return name, rgb
    name, rgb = _COLOURS[order[0]]
    return name, rgb


def _caption(p: ClipPlan) -> str:
    rate = p.tempo / 60.0 / p.hit_every  # bounces per second
    speed = "slowly" if rate < 0.9 else ("steadily" if rate < 1.6 else "quickly")
    verb = "bounces on the floor" if p.motion == "floor" else "bounces between the walls"
    art = "an" if p.palette[0] in "aeiou" else "a"
    art_obj = "an" if p.colour[0] in "aeiou" else "a"
    parts = [f"{art_obj} {p.colour} {p.shape} {verb} {speed} in {art} {p.palette} room"]
    if p.distractors:
        d = p.distractors[0]
        what = f"a small {d.colour} {'circle' if d.shape == 'ball' else 'square'}"
        n_more = len(p.distractors) - 1
        more = "" if not n_more else (" and another shape" if n_more == 1 else f" and {n_more} other shapes")
        parts.append(f" while {what}{more} {'drift' if n_more else 'drifts'}")
    extras = []
    if len(p.flash_times):
        extras.append("a flash of light" if len(p.flash_times) == 1 else "flashes of light")
    if len(p.cut_times):
        extras.append("a camera cut" if len(p.cut_times) == 1 else "camera cuts")
    if extras:
        parts.append(", with " + " and ".join(extras))
    mood = MOODS[p.mood]
    music = f"{mood.adjective} {p.mode} {_STYLE_WORDS[p.style]} music in {p.key} at {int(round(p.tempo))} bpm"
    return "".join(parts) + "; " + music


_END_GAP_S = 0.15  # minimum time from the last beat to the clip end (s)


def plan_clip(seed: int, index: int, difficulty: str | SynthConfig = "medium", duration_s: float = 10.24) -> ClipPlan:
    """Draw the scene, score and labels of clip ``index`` (no rendering; cheap).

    Args:
        seed: data set seed.
        index: clip index (``source_id = f"synth{index:05d}"``).
        difficulty: preset name or a :class:`SynthConfig`.
        duration_s: clip length (s).

    Returns:
        The :class:`ClipPlan`.
    """
    cfg = _as_config(difficulty)
    rng = np.random.default_rng([seed, index])  # scene + music: independent of the difficulty
    drng = np.random.default_rng([seed, index, 1])  # difficulty extras
    dur = float(duration_s)

    # ---- music: tempo, beat grid, key, mood, style. Draw order is fixed (determinism).
    u_tempo, u_phase, u_every, u_hitphase = rng.random(4)
    lo, hi = cfg.tempo_range
    tempo = float(lo + min(int(u_tempo * (hi - lo + 1)), hi - lo))
    period = 60.0 / tempo
    # The beat grid's phase is drawn through the gap after the last beat: the clip ends
    # _END_GAP_S to one beat after its last beat, so every labelled beat is fully audible
    # (a kick cut off after a few ms is not heard as a beat, and trackers drop it).
    tail = _END_GAP_S + u_phase * (period - _END_GAP_S)
    last = dur - tail
    t0 = last - math.floor(last / period) * period  # first beat (s), in [0, period)
    beats = _ms(t0 + period * np.arange(int(math.floor((last - t0) / period + 1e-9)) + 1))
    beats = beats[(beats >= 0) & (beats <= dur - _END_GAP_S + 1e-9)]
    key_pc = int(rng.integers(12))
    mood = list(MOODS)[int(rng.integers(len(MOODS)))]
    style = STYLES[int(rng.integers(len(STYLES)))]
    mode = MOODS[mood].mode
    progs = _PROGRESSIONS[mode]
    progression = progs[int(rng.integers(len(progs)))]
    hit_every = int(cfg.hit_every[min(int(u_every * len(cfg.hit_every)), len(cfg.hit_every) - 1)])
    hit_phase = min(int(u_hitphase * hit_every), hit_every - 1)

    # ---- melody: one note per beat (sometimes two eighths), chord tones on strong beats.
    scale = _SCALES[mode]
    melody: list[tuple[float, float, int, float]] = []
    deg = int(rng.integers(0, 5))  # scale-degree index (0..11: two octaves above the root)
    rests = rng.random(len(beats))
    split = rng.random(len(beats))
    steps = rng.integers(-2, 3, size=(len(beats), 2))
    for k, tb in enumerate(beats):
        chord = progression[(k // 4) % 4]
        if k % 4 == 0:
            deg = chord + 7 * (1 if deg >= 7 else 0)  # land on the chord root on downbeats
        elif rests[k] < 0.25:
            continue
        else:
            deg = int(np.clip(deg + steps[k, 0], 0, 11))
        midi = 60 + key_pc + 12 * (deg // 7) + scale[deg % 7]  # from middle C (MIDI 60) up
        if split[k] < 0.3 and k % 4 != 3:
            d2 = int(np.clip(deg + steps[k, 1], 0, 11))
            midi2 = 60 + key_pc + 12 * (d2 // 7) + scale[d2 % 7]
            melody.append((float(tb), period * 0.5, midi, 0.8))
            melody.append((round(float(tb) + period / 2, 3), period * 0.5, midi2, 0.55))
        else:
            melody.append((float(tb), period * (0.9 if k % 4 != 3 else 1.0), midi, 0.8 if k % 2 == 0 else 0.7))

    # ---- scene: object, motion, palette.
    motion = "floor" if rng.random() < 0.5 else "walls"
    shape = "ball" if rng.random() < 0.6 else "box"
    pal = MOODS[mood].palettes
    pi = int(rng.integers(len(pal)))
    palette, bg = pal[pi]
    cut_palette, cut_bg = pal[(pi + 1 + int(rng.integers(len(pal) - 1))) % len(pal)]
    jitter = rng.integers(-12, 13, size=3)  # small per-clip colour variation (RGB units)
    bg = tuple(int(np.clip(c + j, 0, 255)) for c, j in zip(bg, jitter))
    cut_bg = tuple(int(np.clip(c + j, 0, 255)) for c, j in zip(cut_bg, jitter))
    colour, rgb = _contrast_colour(rng, bg)
    radius = float(rng.uniform(7.0, 11.0))
    height = float(rng.uniform(35.0, 65.0)) if motion == "floor" else float(rng.uniform(4.0, 18.0))
    drift = (float(rng.uniform(5.0, 30.0)), float(rng.uniform(3.0, 8.0)), float(rng.uniform(0, 2 * np.pi)))

    bounce_times = beats[hit_phase::hit_every]

    # ---- difficulty extras (their own stream, so the song above never changes).
    def draw(rng_range):
        return int(drng.integers(rng_range[0], rng_range[1] + 1))

    downbeats = beats[::4]
    n_fl, n_cut, n_dis, n_dfl, n_acc, n_off = (draw(cfg.n_flashes), draw(cfg.n_cuts), draw(cfg.n_distractors),
                                               draw(cfg.n_distractor_flashes), draw(cfg.n_accents),
                                               draw(cfg.n_offscreen_sfx))
    snr = round(float(drng.uniform(cfg.snr_db[0], cfg.snr_db[1])), 2)
    cut_cands = downbeats[(downbeats >= 2.0) & (downbeats <= dur - 1.5)]
    cut_times = _pick_times(drng, cut_cands, n_cut, min_gap=2.5)
    fl_cands = downbeats[(downbeats >= 0.5) & (downbeats <= dur - 0.5)]
    fl_cands = fl_cands[~np.isin(fl_cands, cut_times)]
    flash_times = _pick_times(drng, fl_cands, n_fl, min_gap=1.5)
    events = np.unique(np.concatenate([bounce_times, flash_times, cut_times]))
    acc_cands = beats[~np.isin(beats, events)]
    if cfg.accent_offbeat and len(beats) > 1:
        offbeats = _ms((beats[:-1] + beats[1:]) / 2)
        acc_cands = np.concatenate([acc_cands, offbeats])
    acc_cands = acc_cands[(acc_cands >= 0.3) & (acc_cands <= dur - 0.3)]
    accent_times = _pick_times(drng, acc_cands, n_acc, min_gap=0.9)
    distractor_times = _free_times(drng, n_dfl, 0.3, dur - 0.3, avoid=beats, min_dist=0.08, min_gap=0.6)
    offscreen = _free_times(drng, n_off, 0.3, dur - 0.4, avoid=np.concatenate([bounce_times, cut_times]),
                            min_dist=0.15, min_gap=0.5)
    off_kinds = [("thud", "knock", "clang")[int(drng.integers(3))] for _ in range(len(offscreen))]
    distractors = []
    used = {colour}
    for _ in range(n_dis):
        dname, drgb = _contrast_colour(drng, bg, exclude=used)
        used.add(dname)
        r = float(drng.uniform(4.0, 7.0))
        # Distractors drift inside the room without touching the floor or walls (no collisions).
        cx, cy = float(drng.uniform(44, 84)), float(drng.uniform(35, 70))
        ax, ay = float(drng.uniform(8, 28)), float(drng.uniform(5, 25))  # 84 + 28 + 7 < 120 (right wall)
        fmax = max(cfg.distractor_speed_hz, 0.05)
        distractors.append(_Distractor(
            shape="ball" if drng.random() < 0.5 else "box", colour=dname, rgb=drgb, radius=r,
            centre=(cx, cy), amp=(ax, ay),
            freq=(float(drng.uniform(0.3, 1.0) * fmax), float(drng.uniform(0.3, 1.0) * fmax)),
            phase=(float(drng.uniform(0, 2 * np.pi)), float(drng.uniform(0, 2 * np.pi))),
        ))
    if not distractors:
        distractor_times = _ms([])

    p = ClipPlan(
        index=index, seed=seed, source_id=f"synth{index:05d}", difficulty=cfg.difficulty, duration_s=dur,
        tempo=tempo, beat_times=beats, key=KEY_NAMES[key_pc], key_pc=key_pc, mode=mode, mood=mood, style=style,
        progression=tuple(progression), melody=melody, hit_every=hit_every, hit_phase=hit_phase,
        bounce_times=bounce_times, flash_times=flash_times, cut_times=cut_times, accent_times=accent_times,
        distractor_times=distractor_times, offscreen_sfx_times=offscreen, offscreen_sfx_kinds=off_kinds,
        snr_db=snr, motion=motion, shape=shape, colour=colour, rgb=tuple(rgb), radius=radius, height=height,
        drift=drift, palette=palette, bg_rgb=bg, cut_palette=cut_palette, cut_bg_rgb=cut_bg,
        distractors=distractors,
    )
    p.caption = _caption(p)
    return p


# --------------------------------------------------------------------------- audio


def _midi_hz(m: float) -> float:
    return 440.0 * 2.0 ** ((m - 69) / 12.0)


def _env(n: int, sr: int, attack_s: float = 0.003, release_s: float = 0.03) -> np.ndarray:
    """Linear attack and release ramps (avoid clicks) over a flat body."""
    e = np.ones(n, dtype=np.float64)
    a = max(1, min(n, int(attack_s * sr)))
    r = max(1, min(n - a, int(release_s * sr))) if n > a else 0
    e[:a] = np.linspace(0.0, 1.0, a, endpoint=False)
    if r:
        e[n - r:] *= np.linspace(1.0, 0.0, r)
    return e


def _additive(f: float, n: int, sr: int, amps: np.ndarray, decays: np.ndarray, stretch: float = 0.0) -> np.ndarray:
    """Sum of decaying partials k*f (k = 1..K), optionally stretched (string inharmonicity)."""
    t = np.arange(n) / sr
    k = np.arange(1, len(amps) + 1, dtype=np.float64)
    fk = k * f * np.sqrt(1.0 + stretch * k * k)
    keep = fk < 0.45 * sr  # no partial above ~Nyquist (aliasing)
    fk, amps, decays = fk[keep], amps[keep], decays[keep]
    y = (amps[:, None] * np.exp(-decays[:, None] * t[None, :]) * np.sin(2 * np.pi * fk[:, None] * t[None, :])).sum(0)
    return y


def _instrument(kind: str, midi: int, n: int, sr: int, bright: float) -> np.ndarray:
    """One note of a tonal instrument, peak ~1, length ``n`` samples."""
    f = _midi_hz(midi)
    t = np.arange(n) / sr
    if kind == "piano":
        K = 10
        k = np.arange(1, K + 1)
        amps = k ** -(2.4 - 1.4 * bright)  # brighter = flatter spectrum
        decays = 1.2 + 0.5 * k * (1.0 + f / 600.0)  # higher partials and notes die faster (1/s)
        y = _additive(f, n, sr, amps, decays, stretch=0.0003)
        y *= _env(n, sr, 0.002, 0.04)
    elif kind == "pluck":
        K = 16
        k = np.arange(1, K + 1)
        amps = np.abs(np.sin(np.pi * k * 0.18)) / k ** (1.6 - 0.8 * bright)  # plucked at 18 % of the string
        decays = 2.0 + 0.8 * k ** 1.3 * (1.4 - bright)
        y = _additive(f, n, sr, amps, decays)
        y *= _env(n, sr, 0.001, 0.03)
    elif kind == "fm":
        index = (0.8 + 3.5 * bright) * np.exp(-t / 0.18)  # modulation index decays: bright attack, mellow tail
        y = np.sin(2 * np.pi * f * t + index * np.sin(2 * np.pi * 2.0 * f * t))
        y *= np.exp(-t / 0.6) * _env(n, sr, 0.004, 0.04)
    elif kind == "pulse":
        K = 30
        k = np.arange(1, K + 1)
        duty = 0.25 + 0.25 * (1 - bright)  # 25 % (buzzy) to 50 % (hollow square)
        amps = np.abs(np.sin(np.pi * k * duty)) / k
        y = _additive(f, n, sr, amps, np.full(K, 1.5))
        y *= _env(n, sr, 0.002, 0.02)
    elif kind == "bass":
        y = np.sin(2 * np.pi * f * t) + 0.35 * np.sin(4 * np.pi * f * t) + 0.12 * np.sin(6 * np.pi * f * t)
        y = np.tanh(1.5 * y) * np.exp(-t / 0.5) * _env(n, sr, 0.004, 0.03)
    elif kind == "fmbass":
        index = 2.5 * np.exp(-t / 0.08)
        y = np.sin(2 * np.pi * f * t + index * np.sin(2 * np.pi * f * t)) * np.exp(-t / 0.4) * _env(n, sr, 0.003, 0.03)
    elif kind == "tri":
        ph = (f * t) % 1.0
        y = (4 * np.abs(ph - 0.5) - 1) * _env(n, sr, 0.002, 0.02)
    else:  # pragma: no cover - internal
        raise ValueError(kind)
    peak = np.max(np.abs(y)) or 1.0
    return y / peak


def _noise_band(rng: np.random.Generator, n: int, sr: int, lo: float, hi: float) -> np.ndarray:
    """White noise band-limited to [lo, hi] Hz by an FFT mask, peak 1."""
    spec = np.fft.rfft(rng.standard_normal(n))
    fr = np.fft.rfftfreq(n, 1.0 / sr)
    spec[(fr < lo) | (fr > hi)] = 0
    y = np.fft.irfft(spec, n)
    return y / (np.max(np.abs(y)) or 1.0)


def _drum_kit(rng: np.random.Generator, sr: int, style: str) -> dict[str, np.ndarray]:
    """Percussion templates (peak ~1) for one clip: kick, snare/clap, hat, crash."""

    def tt(sec):
        return np.arange(int(sec * sr)) / sr

    t = tt(0.35)
    f_lo, f_hi, dec = (45.0, 110.0, 0.22) if style != "chiptune" else (60.0, 160.0, 0.12)
    fk = f_lo + f_hi * np.exp(-t / 0.035)  # pitch sweep (Hz) gives the kick its punch
    kick = np.sin(2 * np.pi * np.cumsum(fk) / sr) * np.exp(-t / dec)
    if style == "chiptune":
        kick = np.sign(kick) * np.exp(-t / dec)
    click = _noise_band(rng, len(t), sr, 1000, 6000) * np.exp(-t / 0.004)
    kick = kick + 0.5 * click
    t = tt(0.25)
    if style == "electronic":
        burst = _noise_band(rng, len(t), sr, 800, 4000)
        env = np.zeros(len(t))
        for d in (0.0, 0.011, 0.022):  # three quick claps (s)
            i = int(d * sr)
            env[i:] += np.exp(-(t[: len(t) - i]) / (0.012 if d < 0.02 else 0.08))
        snare = burst * env
    else:
        snare = 0.8 * _noise_band(rng, len(t), sr, 1500, 7500) * np.exp(-t / 0.07)
        snare += 0.6 * np.sin(2 * np.pi * 185 * t) * np.exp(-t / 0.05)
    t = tt(0.08)
    hat = _noise_band(rng, len(t), sr, 5000, 7900) * np.exp(-t / 0.02)
    t = tt(1.2)
    crash = _noise_band(rng, len(t), sr, 2500, 7900) * np.exp(-t / 0.45)
    crash *= _env(len(t), sr, 0.001, 0.05)
    kit = {"kick": kick, "snare": snare, "hat": hat, "crash": crash}
    return {k: v / (np.max(np.abs(v)) or 1.0) for k, v in kit.items()}


def _add(buf: np.ndarray, wave: np.ndarray, t: float, sr: int, gain: float = 1.0) -> None:
    """Mix ``wave`` into ``buf`` starting at sample round(t * sr) (cut at the end)."""
    i = int(round(t * sr))
    if i >= len(buf) or i + len(wave) <= 0:
        return
    j = min(len(buf), i + len(wave))
    buf[i:j] += gain * wave[: j - i]


def _chord_midis(key_pc: int, mode: str, degree: int, base: int) -> list[int]:
    scale = _SCALES[mode]
    out = []
    for d in (degree, degree + 2, degree + 4):
        out.append(base + key_pc + 12 * (d // 7) + scale[d % 7])
    return out


# Linear gains of the music layers. Tuned so that every beat has nearly the same onset
# strength: librosa's beat tracker drops leading/trailing beats weaker than the RMS beat
# strength, so strongly accented beats (or a loud backbeat) cost the weaker ones.
_LEVELS = {"kick": 1.0, "snare": 0.35, "crash": 0.25, "drums": 0.85, "tonal": 0.45, "chord": 0.25, "melody": 0.35}


def render_music(p: ClipPlan, sr: int = 16000, rng: np.random.Generator | None = None) -> np.ndarray:
    """Synthesise the music stem of a plan.

    Drums: kick on every beat, snare (clap) on beats 2 and 4, hats on eighths, crash at
    flashes, cuts and accents. Tonal: bass on every beat, chords/arpeggios per style,
    melody. Every onset sits on the sample of its (ms-rounded) time.

    Args:
        p: the clip plan.
        sr: sample rate (Hz).
        rng: noise source for the drums (default: ``default_rng([seed, index, 2])``).

    Returns:
        float32 ``(round(duration_s * sr),)``, peak 0.5.
    """
    if rng is None:
        rng = np.random.default_rng([p.seed, p.index, 2])
    n = int(round(p.duration_s * sr))
    mood = MOODS[p.mood]
    bright = mood.brightness
    period = 60.0 / p.tempo
    beats = p.beat_times
    drums = np.zeros(n)
    tonal = np.zeros(n)
    kit = _drum_kit(rng, sr, p.style)
    cache: dict[tuple[str, int, int], np.ndarray] = {}

    def note(kind, midi, t, length_s, vel):
        ln = int(round((length_s + 0.05) * sr))  # + 50 ms of release tail
        key = (kind, int(midi), ln)
        if key not in cache:
            cache[key] = _instrument(kind, int(midi), ln, sr, bright)
        _add(tonal, cache[key], t, sr, vel)

    # Drums. The kick on every beat is the backbone of beat tracking; off-beat hats are
    # kept quiet so the eighth-note pulse never outweighs the beat.
    hat_gain = 0.12 if p.tempo >= 100 else 0.07
    for k, tb in enumerate(beats):
        _add(drums, kit["kick"], tb, sr, _LEVELS["kick"])
        if k % 2 == 1:
            _add(drums, kit["snare"], tb, sr, _LEVELS["snare"])
        _add(drums, kit["hat"], tb, sr, hat_gain)
        if k + 1 < len(beats):
            _add(drums, kit["hat"], round((tb + beats[k + 1]) / 2, 3), sr, hat_gain * 0.7)
    for tc in np.concatenate([p.flash_times, p.cut_times, p.accent_times]):
        _add(drums, kit["crash"], tc, sr, _LEVELS["crash"])

    # Bass: chord root on every beat (octave 2).
    bass_kind = {"electronic": "fmbass", "chiptune": "tri"}.get(p.style, "bass")
    for k, tb in enumerate(beats):
        deg = p.progression[(k // 4) % 4]
        root = _chord_midis(p.key_pc, p.mode, deg, 36)[0]
        note(bass_kind, root, tb, period * 0.85, 0.55 if k % 4 == 0 else 0.45)

    # Harmony by style.
    for k, tb in enumerate(beats):
        deg = p.progression[(k // 4) % 4]
        chord = _chord_midis(p.key_pc, p.mode, deg, 60)
        nxt = beats[k + 1] if k + 1 < len(beats) else tb + period
        half = round((tb + nxt) / 2, 3)
        if p.style == "piano":
            for m in chord:  # block chord on every beat (pulsing), a little louder on 1 and 3
                note("piano", m, tb, period, _LEVELS["chord"] * (1.0 if k % 2 == 0 else 0.85))
        elif p.style == "guitar":
            arp = chord + [chord[1] + 12] if (k // 4) % 2 == 0 else [chord[0] + 12] + chord[::-1]
            note("pluck", arp[(2 * k) % 4], tb, period * 1.5, 0.35)
            note("pluck", arp[(2 * k + 1) % 4], half, period, 0.2)
        elif p.style == "electronic":
            for m in chord:  # short stabs on every beat
                note("fm", m, tb, period * 0.45, 0.2)
        else:  # chiptune: fast arpeggio, quieter off the beat
            note("pulse", chord[k % 3], tb, period * 0.45, 0.22)
            note("pulse", chord[(k + 1) % 3] + 12, half, period * 0.4, 0.12)

    lead = {"piano": "piano", "guitar": "pluck", "electronic": "fm", "chiptune": "pulse"}[p.style]
    for t, ln, m, v in p.melody:
        note(lead, m, t, ln, _LEVELS["melody"] * v)

    # Musical accents with no visual event: a loud chord stab (plus the crash above).
    for ta in p.accent_times:
        k = int(np.clip(np.searchsorted(beats, ta + 1e-6) - 1, 0, len(beats) - 1))
        deg = p.progression[(k // 4) % 4]
        for m in _chord_midis(p.key_pc, p.mode, deg, 60):
            note(lead, m, ta, period, 0.45)

    if mood.echo > 0:
        # A 3-tap echo (gains g, g^2, g^3) on the tonal layers only, keeping drum onsets crisp.
        # The delay is one beat, so echoes reinforce the beat instead of adding off-beat onsets.
        d = int(round(period * sr))
        wet = tonal.copy()
        g = mood.echo
        for tap in range(1, 4):
            s = d * tap
            if s >= n:
                break
            wet[s:] += (g ** tap) * tonal[: n - s]
        tonal = wet

    music = (_LEVELS["drums"] * drums / (np.max(np.abs(drums)) or 1.0)
             + _LEVELS["tonal"] * tonal / (np.max(np.abs(tonal)) or 1.0))
    music *= 0.5 / (np.max(np.abs(music)) or 1.0)  # peak 0.5: room for sfx and noise in the mix
    return music.astype(np.float32)


def _sfx_sound(kind: str, rng: np.random.Generator, sr: int, size: float = 1.0) -> np.ndarray:
    """One sound effect, peak 1. ``size`` > 1 lowers the pitch (bigger object)."""
    if kind == "thud":  # soft ball impact: falling sine + a short low noise burst
        t = np.arange(int(0.25 * sr)) / sr
        f = (70.0 + 160.0 * np.exp(-t / 0.02)) / size
        y = np.sin(2 * np.pi * np.cumsum(f) / sr) * np.exp(-t / 0.06)
        y += 0.6 * _noise_band(rng, len(t), sr, 200, 2500) * np.exp(-t / 0.008)
    elif kind == "knock":  # hard box impact: a few inharmonic wood modes + click
        t = np.arange(int(0.2 * sr)) / sr
        y = np.zeros(len(t))
        for fm, a, d in ((420.0, 1.0, 0.045), (1130.0, 0.6, 0.03), (2210.0, 0.35, 0.02)):
            y += a * np.sin(2 * np.pi * fm / size * t) * np.exp(-t / d)
        y += 0.7 * _noise_band(rng, len(t), sr, 1500, 7000) * np.exp(-t / 0.003)
    elif kind == "clang":  # metal: long inharmonic partials
        t = np.arange(int(0.6 * sr)) / sr
        y = np.zeros(len(t))
        for fm, a, d in ((523.0, 1.0, 0.35), (1412.0, 0.7, 0.25), (2633.0, 0.5, 0.18), (3901.0, 0.3, 0.1)):
            y += a * np.sin(2 * np.pi * fm * t) * np.exp(-t / d)
        y += 0.5 * _noise_band(rng, len(t), sr, 2000, 7500) * np.exp(-t / 0.004)
    elif kind == "whoosh":  # cut: band noise with a fast attack and a falling band centre
        t = np.arange(int(0.45 * sr)) / sr
        lo = _noise_band(rng, len(t), sr, 300, 1500)
        hi = _noise_band(rng, len(t), sr, 1500, 5000)
        mix = np.exp(-t / 0.1)  # bright at the onset, darker as it fades
        y = (mix * hi + (1 - mix) * lo) * np.exp(-t / 0.13) * _env(len(t), sr, 0.006, 0.05)
    else:  # pragma: no cover - internal
        raise ValueError(kind)
    y *= _env(len(y), sr, 0.0005, 0.02)
    return y / (np.max(np.abs(y)) or 1.0)


def render_sfx(p: ClipPlan, sr: int = 16000, rng: np.random.Generator | None = None) -> np.ndarray:
    """Synthesise the sound-effect stem: impacts at bounces, whooshes at cuts, off-screen sounds.

    Args:
        p: the clip plan.
        sr: sample rate (Hz).
        rng: noise source (default: ``default_rng([seed, index, 3])``).

    Returns:
        float32 ``(round(duration_s * sr),)``; each effect peaks near 0.35.
    """
    if rng is None:
        rng = np.random.default_rng([p.seed, p.index, 3])
    n = int(round(p.duration_s * sr))
    out = np.zeros(n)
    size = p.radius / 9.0  # bigger object, lower impact
    impact = _sfx_sound("thud" if p.shape == "ball" else "knock", rng, sr, size)
    gains = 0.3 + 0.06 * rng.random(len(p.bounce_times))  # slight per-hit variation
    for tb, g in zip(p.bounce_times, gains):
        _add(out, impact, tb, sr, g)
    for tc in p.cut_times:
        _add(out, _sfx_sound("whoosh", rng, sr), tc, sr, 0.32)
    for to, kind in zip(p.offscreen_sfx_times, p.offscreen_sfx_kinds):
        _add(out, _sfx_sound(kind, rng, sr), to, sr, 0.3)
    return out.astype(np.float32)


def _background_noise(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """Pink-ish room noise (1/f power) with unit RMS."""
    spec = np.fft.rfft(rng.standard_normal(n))
    fr = np.fft.rfftfreq(n, 1.0 / sr)
    spec /= np.sqrt(np.maximum(fr, 20.0))  # 1/f power below Nyquist, flat under 20 Hz
    y = np.fft.irfft(spec, n)
    return y / (np.sqrt(np.mean(y * y)) or 1.0)


# --------------------------------------------------------------------------- video


def _draw(img: np.ndarray, cx: float, cy: float, rx: float, ry: float, shape: str, rgb, alpha: float = 1.0) -> None:
    """Alpha-blend an anti-aliased ellipse (``ball``) or rectangle (``box``) into ``img`` in place."""
    h, w, _ = img.shape
    x0, x1 = max(int(cx - rx - 2), 0), min(int(cx + rx + 3), w)
    y0, y1 = max(int(cy - ry - 2), 0), min(int(cy + ry + 3), h)
    if x0 >= x1 or y0 >= y1:
        return
    dx = (np.arange(x0, x1) - cx)[None, :] / rx
    dy = (np.arange(y0, y1) - cy)[:, None] / ry
    d = np.sqrt(dx * dx + dy * dy) if shape == "ball" else np.maximum(np.abs(dx), np.abs(dy))
    cov = np.clip((1.0 - d) * min(rx, ry) + 0.5, 0.0, 1.0) * alpha  # ~1 px soft edge
    patch = img[y0:y1, x0:x1]
    patch += (np.asarray(rgb, dtype=np.float32) - patch) * cov[..., None]


def _ring(img: np.ndarray, cx: float, cy: float, radius: float, width: float, rgb, alpha: float) -> None:
    """Alpha-blend a circle outline (impact ring)."""
    h, w, _ = img.shape
    x0, x1 = max(int(cx - radius - width - 2), 0), min(int(cx + radius + width + 3), w)
    y0, y1 = max(int(cy - radius - width - 2), 0), min(int(cy + radius + width + 3), h)
    if x0 >= x1 or y0 >= y1:
        return
    dx = (np.arange(x0, x1) - cx)[None, :]
    dy = (np.arange(y0, y1) - cy)[:, None]
    d = np.abs(np.sqrt(dx * dx + dy * dy) - radius)
    cov = np.clip(width / 2 + 0.5 - d, 0.0, 1.0) * alpha
    patch = img[y0:y1, x0:x1]
    patch += (np.asarray(rgb, dtype=np.float32) - patch) * cov[..., None]


_WALL = 8.0  # side wall thickness (px at 128)
_FLOOR_Y = 114.0  # floor top (px at 128)


def _room(size: int, bg, mirror: bool) -> np.ndarray:
    """Background: vertical gradient, darker side walls and floor; ``mirror`` shades the walls differently."""
    s = size / 128.0
    bg = np.asarray(bg, dtype=np.float32)
    grad = np.linspace(1.08, 0.88, size, dtype=np.float32)[:, None, None]  # lighter ceiling
    img = np.clip(np.broadcast_to(bg, (size, size, 3)) * grad, 0, 255).copy()
    wall = int(round(_WALL * s))
    floor = int(round(_FLOOR_Y * s))
    lw, rw = (0.7, 0.8) if not mirror else (0.8, 0.7)  # light from one side (flips with the view)
    img[:, :wall] *= lw
    img[:, size - wall:] *= rw
    img[floor:] = bg * 0.55
    img[floor:floor + max(1, int(round(s)))] = bg * 0.35  # floor edge line
    return img


def _object_pos(p: ClipPlan, t: np.ndarray):
    """Main object centre ``(x, y)`` at times ``t`` (s), in pixels of the 128-px world (before mirroring)."""
    period = 60.0 / p.tempo
    T = period * p.hit_every  # seconds between bounces
    first = p.beat_times[p.hit_phase] if len(p.beat_times) > p.hit_phase else p.beat_times[0]
    u = (t - first) / T
    amp, per, ph = p.drift
    r = p.radius
    if p.motion == "floor":
        frac = u - np.floor(u)
        y_c = _FLOOR_Y - r
        y = y_c - p.height * 4.0 * frac * (1.0 - frac)  # parabola: fastest at the floor contact
        amp = min(amp, 64.0 - _WALL - r - 6.0)
        x = 64.0 + amp * np.sin(2 * np.pi * t / per + ph)
    else:
        v = np.mod(u, 2.0)
        xl, xr = _WALL + r, 128.0 - _WALL - r
        x = xl + (xr - xl) * np.where(v < 1.0, v, 2.0 - v)  # hits the left wall at even bounces
        y = 64.0 + p.height * np.sin(2 * np.pi * t / per + ph)
    return x, y


def render_video(p: ClipPlan, size: int = 128, fps: float = 10.0) -> np.ndarray:
    """Draw the frames of a plan with numpy.

    Frame ``i`` shows time ``i / fps``. At each bounce the object squashes and glows, the
    struck floor/wall lights up in the object's colour for 150 ms and an impact ring
    spreads for 300 ms; a flash brightens the whole frame; a cut switches to another
    background colour and mirrors the view; distractors drift and flash silently.

    Args:
        p: the clip plan.
        size: frame height and width (pixels, even).
        fps: frames per second.

    Returns:
        uint8 ``(ceil(duration_s * fps), size, size, 3)``.
    """
    n_frames = int(math.ceil(round(p.duration_s * fps, 6)))
    s = size / 128.0
    t = np.arange(n_frames) / fps
    rooms = [_room(size, p.bg_rgb, False), _room(size, p.cut_bg_rgb, True)]
    xs, ys = _object_pos(p, t)
    hits = p.bounce_times
    frames = np.empty((n_frames, size, size, 3), dtype=np.uint8)
    white = (255, 255, 255)
    for i in range(n_frames):
        ti = t[i]
        view = int(np.sum(p.cut_times <= ti + 1e-9)) % 2  # each cut toggles background + mirror
        img = rooms[view].copy()

        def X(x):  # world -> view x (mirrored after odd cuts)
            return ((127.0 - x) if view else x) * s

        for d in p.distractors:
            dx = d.centre[0] + d.amp[0] * np.sin(2 * np.pi * d.freq[0] * ti + d.phase[0])
            dy = d.centre[1] + d.amp[1] * np.sin(2 * np.pi * d.freq[1] * ti + d.phase[1])
            lit = np.any((ti >= p.distractor_times) & (ti - p.distractor_times < 0.2))
            rr = d.radius * (1.5 if lit else 1.0) * s
            _draw(img, X(dx), dy * s, rr, rr, d.shape, white if lit else d.rgb)

        r = p.radius
        rx = ry = r
        cx, cy = float(xs[i]), float(ys[i])
        glow = 0.0
        dt_hit = ti - hits
        near = np.abs(dt_hit)
        if hits.size and near.min() < 0.06:  # squash within 60 ms of a contact
            sq = 1.0 - 0.3 * (1.0 - near.min() / 0.06)
            if p.motion == "floor":
                ry, rx = r * sq, r / math.sqrt(sq)
                cy = _FLOOR_Y - ry
            else:
                rx, ry = r * sq, r / math.sqrt(sq)
                cx = _WALL + rx if cx < 64 else 128.0 - _WALL - rx
        after = dt_hit[(dt_hit >= 0) & (dt_hit < 0.3)]
        if after.size:
            a = float(after.min())  # seconds since the latest contact
            glow = 0.75 * (1.0 - a / 0.2) if a < 0.2 else 0.0
            hb = float(ti - a)  # that contact's time: ring at the contact point
            hx, hy = _object_pos(p, np.array([hb]))
            # The struck floor / wall lights up for 150 ms (a large, unmistakable change).
            if p.motion == "floor":
                px, py = float(hx[0]), _FLOOR_Y
                lx, ly, sx, sy = 64.0, (_FLOOR_Y + 128.0) / 2, 64.0, (128.0 - _FLOOR_Y) / 2
            else:
                px, py = (_WALL if float(hx[0]) < 64 else 128.0 - _WALL), float(hy[0])
                lx, ly, sx, sy = (_WALL / 2 if px < 64 else 128.0 - _WALL / 2), _FLOOR_Y / 2, _WALL / 2, _FLOOR_Y / 2
            # Drawn in the object's colour, which contrasts with the background by construction.
            if a < 0.15:
                _draw(img, X(lx), ly * s, sx * s, sy * s, "box", p.rgb, 0.9 * (1.0 - a / 0.15))
            _ring(img, X(px), py * s, (r * (1.2 + 3.5 * a / 0.3)) * s, 2.5 * s, p.rgb, 0.9 * (1.0 - a / 0.3))
        rgb = np.asarray(p.rgb, dtype=np.float32)
        rgb = rgb + (255.0 - rgb) * glow
        _draw(img, X(cx), cy * s, rx * s, ry * s, p.shape, rgb)

        fl = ti - p.flash_times
        fl = fl[(fl >= 0) & (fl < 0.3)]
        if fl.size:  # full-frame flash, decaying over ~0.1 s
            img += (255.0 - img) * (0.75 * math.exp(-float(fl.min()) / 0.1))
        frames[i] = np.clip(img + 0.5, 0, 255).astype(np.uint8)
    return frames


# --------------------------------------------------------------------------- render + files


def render_clip(p: ClipPlan, size: int = 128, fps: float = 10.0, sr: int = 16000):
    """Render a plan to frames and audio.

    Args:
        p: the clip plan.
        size: frame size (pixels).
        fps: frame rate (frames/s).
        sr: audio sample rate (Hz).

    Returns:
        ``(frames, music, sfx, mix)``: uint8 ``(T, size, size, 3)`` and three float32
        ``(N,)`` arrays with ``mix = clip(music + sfx + noise)``.
    """
    music = render_music(p, sr)
    sfx = render_sfx(p, sr)
    sig = music.astype(np.float64) + sfx
    nrng = np.random.default_rng([p.seed, p.index, 4])
    noise = _background_noise(nrng, len(sig), sr)
    p_sig = float(np.mean(sig * sig))
    noise *= math.sqrt(p_sig / (10.0 ** (p.snr_db / 10.0)))  # scale to the plan's SNR (dB)
    mix = np.clip(sig + noise, -1.0, 1.0).astype(np.float32)
    frames = render_video(p, size, fps)
    return frames, music, sfx, mix


def clip_paths(out_dir: str | os.PathLike, source_id: str) -> tuple[Path, Path, Path]:
    """``(mp4, music wav, sfx wav)`` paths of a clip under ``out_dir/videos``."""
    v = Path(out_dir) / "videos"
    return v / f"{source_id}.mp4", v / f"{source_id}.music.wav", v / f"{source_id}.sfx.wav"


def _clip_done(out_dir: Path, source_id: str) -> bool:
    # Every file is written to a temporary name and renamed, so existence means complete.
    return all(q.exists() and q.stat().st_size > 0 for q in clip_paths(out_dir, source_id))


def _write_clip(job: tuple) -> tuple[int, float]:
    """Worker: plan, render and write one clip. Returns (index, seconds)."""
    out_dir, seed, index, cfg, duration_s, fps, size, sr = job

    t_start = time.perf_counter()
    p = plan_clip(seed, index, cfg, duration_s)
    frames, music, sfx, mix = render_clip(p, size, fps, sr)
    mp4, mwav, swav = clip_paths(out_dir, p.source_id)
    write_wav(mwav, music, sr)
    write_wav(swav, sfx, sr)
    write_mp4(mp4, frames, fps, mix, sr)  # last: its presence marks the clip complete
    return index, time.perf_counter() - t_start


def _assign_splits(n: int, seed: int) -> list[str]:
    """80/10/10 train/val/test by a seeded permutation of the n clip indices.

    The split of a clip depends on ``n`` (the content does not): val and test get
    ``round(0.1 n)`` clips each (at least one each once n >= 3).
    """
    perm = np.random.default_rng([seed, 7919]).permutation(n)
    n_val = int(round(0.1 * n))
    n_test = int(round(0.1 * n))
    if n >= 3:
        n_val, n_test = max(n_val, 1), max(n_test, 1)
    splits = ["train"] * n
    for j, idx in enumerate(perm):
        if j < n_val:
            splits[idx] = "val"
        elif j < n_val + n_test:
            splits[idx] = "test"
    return splits


def _check_settings(out_dir: Path, settings: dict) -> None:
    f = out_dir / "synth.json"
    if f.exists():
        old = json.loads(f.read_text())
        if old != settings:
            diff = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
            raise ValueError(
                f"{out_dir} already holds a synthetic set made with other settings ({', '.join(diff)} differ); "
                "use another --out folder or delete this one."
            )
        return
    tmp = f.with_name(f.name + ".tmp")
    tmp.write_text(json.dumps(settings, indent=2, sort_keys=True))
    os.replace(tmp, f)


def generate_dataset(
    out_dir: str | os.PathLike,
    n: int,
    seed: int = 0,
    difficulty: str | SynthConfig = "medium",
    duration_s: float = 10.24,
    fps: int = 10,
    size: int = 128,
    sr: int = 16000,
    workers: int | None = None,
    progress: bool = True,
) -> Path:
    """Generate (or complete) the synthetic set in ``out_dir``.

    Clips whose mp4 and both WAVs already exist are skipped (resume); each file is
    written under a temporary name and renamed, so a killed run leaves no half files.
    The metadata and the manifest are rewritten for all ``n`` clips at the end.

    Args:
        out_dir: output folder (created).
        n: number of clips (source videos), indices ``0..n-1``.
        seed: data set seed.
        difficulty: ``easy``, ``medium``, ``hard`` or a :class:`SynthConfig`.
        duration_s: clip length (s).
        fps: video frame rate (frames/s).
        size: frame height and width (pixels, even).
        sr: audio sample rate (Hz).
        workers: processes (``None``: ``os.cpu_count()``; 1 runs in this process).
        progress: print a line per 10 % to stderr.

    Returns:
        Path of ``out_dir/manifest.parquet``.

    Raises:
        ValueError: bad arguments, an unknown difficulty, or a folder made with other settings.
    """
    cfg = _as_config(difficulty)
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if size % 2 or size < 16:
        raise ValueError(f"size must be an even number >= 16 (H.264 yuv420p), got {size}")
    if duration_s <= 1.0:
        raise ValueError(f"duration_s must be > 1 s, got {duration_s}")
    out = Path(out_dir)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    _check_settings(out, {
        "version": SYNTH_VERSION, "seed": int(seed), "config": cfg.to_dict(), "duration_s": float(duration_s),
        "fps": float(fps), "size": int(size), "sr": int(sr),
    })
    for stale in (out / "videos").glob("*.tmp*"):  # leftovers of a killed run
        stale.unlink(missing_ok=True)

    todo = [i for i in range(n) if not _clip_done(out, f"synth{i:05d}")]
    jobs = [(str(out), int(seed), i, cfg, float(duration_s), float(fps), int(size), int(sr)) for i in todo]
    workers = (os.cpu_count() or 1) if workers is None else max(1, int(workers))
    t0 = time.perf_counter()
    done = n - len(todo)

    def report(k):
        # One line each time another tenth of the clips is done (and at the end).
        if progress and (k == n or (10 * k) // n > (10 * (k - 1)) // n):
            log.info(f"synth: {k}/{n} clips ({100 * k // n}%), {time.perf_counter() - t0:.1f} s")

    if progress and done:
        log.info(f"synth: {done}/{n} clips already in {out} (resuming)")
    if jobs:
        if workers == 1 or len(jobs) == 1:
            for j in jobs:
                _write_clip(j)
                done += 1
                report(done)
        else:
            # fork is fast and needs no `if __name__ == "__main__"` guard in the caller's
            # script; but forking a process that runs other threads (a Ray driver, a web
            # server) can deadlock a child, so then the workers are spawned instead.
            method = "fork" if threading.active_count() == 1 and sys.platform.startswith("linux") else "spawn"
            ctx = multiprocessing.get_context(method)
            with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=ctx) as ex:
                futs = [ex.submit(_write_clip, j) for j in jobs]
                for fut in as_completed(futs):
                    fut.result()
                    done += 1
                    report(done)

    # Metadata + manifest (cheap: plans are re-drawn, nothing is rendered).
    splits = _assign_splits(n, seed)
    meta_rows, man_rows = [], []
    for i in range(n):
        p = plan_clip(seed, i, cfg, duration_s)
        mp4, mwav, swav = clip_paths(out, p.source_id)
        m = p.metadata()
        m["split"] = splits[i]
        meta_rows.append(m)
        row = {
            "clip_id": f"{p.source_id}__0000",
            "source_id": p.source_id,
            "split": splits[i],
            "video_path": str(mp4.relative_to(out)),
            "start_s": 0.0,
            "duration_s": float(duration_s),
            "pad_s": 0.0,
            "music_path": str(mwav.relative_to(out)),
            "sfx_path": str(swav.relative_to(out)),
            "caption": p.caption,
        }
        row.update(p.labels())
        man_rows.append(row)
    meta = pd.DataFrame(meta_rows)
    tmp = out / "metadata.parquet.tmp"
    meta.to_parquet(tmp, index=False)
    os.replace(tmp, out / "metadata.parquet")
    manifest = pd.DataFrame(man_rows)
    path = out / "manifest.parquet"
    write_manifest(manifest, path)
    return path
