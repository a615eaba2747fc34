"""``soundtrack eval``: score a folder of generated audio from any system, as the bench would.

audioldm_eval and av-benchmark take folders; so does this. Nothing here needs the audio
to come from this platform: any WAV / FLAC / MP3 / OGG / M4A file (or a video whose
audio track is the soundtrack) at any rate, any channel count and any length is read,
down-mixed to mono and resampled to 16 kHz (:func:`load_audio`), then scored with the
bench's per-clip metrics (:func:`soundtrack.eval.scoring.clip_metrics`), its set
metrics (:func:`soundtrack.eval.scoring.set_metrics`) and its summary
(:func:`soundtrack.eval.bench.summarize`: means with 95 % bootstrap intervals over
files, paired differences, the tonality band). No Ray: one process, file by file.

**Pairing by name** (:func:`pair_folders`). Every file under a folder (recursively;
hidden files and folders skipped) is known by its *key*: its path relative to the
folder without the extension, ``sub/x`` for ``sub/x.wav``. A generated file is paired
with the reference (``--ref``) and the video (``--videos``) of the same key, whatever
their extensions (``x.wav`` with ``x.flac`` and ``x.mp4``). A key with no exact partner
is matched loosely when exactly one unmatched file on each side has the same file stem
ignoring case and subfolders (``Sub/X.wav`` with ``x.flac``); such matches are listed.
Two files of one key in one folder (``x.wav`` and ``x.mp3``): the first extension in
:data:`AUDIO_EXTENSIONS` (then :data:`~soundtrack.data.media.VIDEO_EXTENSIONS`) order is
used, the other reported as a duplicate. Generated files without a reference or video,
references and videos without a generated file, and files of other types are reported
(``summary.md``, ``summary.json``), never silently dropped; a ``--ref`` or
``--videos`` folder sharing no name with the generated one is an error naming examples
from both sides.

**Lengths** (:func:`scored_windows`). A pair is scored on its *common span*: the first
``min(generated, reference, video)`` seconds of whatever inputs it has, so every metric
of a row describes the same audio and the reference row (the reference audio scored
the same way) covers the same seconds (the paired differences are on equal spans). The
span is cut into windows of ``window_s`` (10.24 s, the platform's clip, the length the
papers' per-clip metrics and the evaluation encoders are defined on); a remainder of at
least half a window is a window of its own, a shorter one joins the last window, so
every window lasts between half and one and a half ``window_s`` (a file up to 1.5 x
10.24 s is one window). ``window_s=0`` scores every span whole. A file's value of a
metric is the duration-weighted mean over its windows (``windows.parquet`` keeps the
windows); means and intervals are over files, the independent units (per-file metrics:
the percentile bootstrap of :func:`~soundtrack.eval.bench.summarize`; set metrics: the
bench's subsampling interval over halves of the files, none below 4 files). Spans shorter
than :data:`MIN_SECONDS` are per-file errors.

**What is scored with which inputs** (:data:`METRIC_INPUTS`):

* always (the audio alone): ``onset_rate``, ``pche``, ``gps``, ``adv``, ``chroma_conc``,
  ``flatness``;
* with ``--ref``: ``melody_acc`` (the reference's chroma-argmax melody against the
  generated one; the bench's shard rows hold the music stem's, here the reference file
  is the control as given), ``dyn_r`` (its dynamics curve), ``mode_match`` (the
  generated audio's Krumhansl-Kessler mode equals the reference's estimated mode; nan
  where the reference has no key) and the set metric ``dyn_macro``;
* with ``--videos``: ``f1``, ``precision``, ``hit_rate``, ``bcs``, ``bhs``, ``beat_f1`` and
  the set metrics ``csd`` / ``hsd``, against the video's *detected* visual events
  (:func:`visual_events`: shot cuts plus the onsets of the motion-energy curve, never
  the audio); a window where no visual event is detected has nan for them (nothing to be in
  sync with);
* with ``--evaluator DIR`` (the evaluation encoders and style classifier of
  :class:`soundtrack.eval.scoring.Evaluator`, e.g. the bench's ``runs/eval/<name>``):
  ``is``; with ``--ref`` also ``kl`` and ``fad`` (the generated windows' embeddings
  against their references' windows, with FAD's real-vs-real floor ``fad_floor``,
  ``fad_excess`` and ``kid`` beside it, as the bench reports them); with ``--videos``
  also ``sim``, ``p_at_1`` and ``p_at_5`` (video -> audio retrieval in a pool of the
  folder's windows, the bench's pool size). For the
  evaluator each window is cut or repeat-padded (tiled, the way CLAP's ``repeatpad``
  fills short clips) to exactly ``window_s`` (10.24 s when 0), its frames likewise.
  Without an evaluator these are skipped with a note.

With ``--ref`` the reference folder is also scored as a method of its own (kind
``ground_truth``: its audio-alone and video metrics, not those against itself), which
gives the paired differences ``generated - reference`` and the real audio's tonality
band.

**Errors.** A missing or empty folder, one without audio files, or ``--ref`` /
``--videos`` sharing no name with it raise :class:`FolderError` (the command exits
with status 2 and the message). A file that cannot be read or scored (empty, not
audio, non-finite samples, too short) is a *failed* row with its error; the other
files are scored as usual, and the failures are listed in ``summary.md``. An unreadable
reference or video leaves its generated file scored without it (``ref_error`` /
``video_error``).

Outputs in ``out`` (default :func:`default_out`, ``<GEN_DIR>/../eval-<GEN_DIR name>``:
beside the folder, not inside it, so a second run does not find its own outputs):
``results.parquet`` / ``results.csv`` (one row per method x file, failed ones
included), ``windows.parquet`` (one row per method x window), ``set_metrics.csv``,
``summary.json``, ``summary.md`` and ``eval.png``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import scipy.signal
import soundfile as sf

import soundtrack.metrics as M
from soundtrack.data.features import motion_energy, shot_boundaries
from soundtrack.data.media import VIDEO_EXTENSIONS, decode_audio, load_wav, probe, read_frames
from soundtrack.errors import ConfigError, MediaError, MetricError, SoundtrackError
from soundtrack.eval.bench import BenchConfig, MethodSpec, summarize
from soundtrack.eval.scoring import (
    DIRECTION,
    FLOOR_METRICS,
    SET_METRICS,
    Evaluator,
    ScoringConfig,
    analysis_description,
    audio_descriptors,
    clip_metrics,
    key_chroma,
    pair_similarity,
    set_metrics,
)
from soundtrack.models.audio_embedders import AudioEmbedder, load_embedder
from soundtrack.storage import atomic_write

log = logging.getLogger(__name__)

#: Rate every file is resampled to (Hz): the scoring front end's.
SR = ScoringConfig().sr
#: Audio files read, in the order that settles two files of one key (``x.wav`` wins over ``x.mp3``).
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".m4a", ".aac", ".aif", ".aiff", ".wma")
#: Formats libsndfile reads (:func:`soundtrack.data.media.load_wav`); the others go through PyAV.
SOUNDFILE_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".aif", ".aiff")
#: A generated file may also be a video whose audio track is the soundtrack (``soundtrack generate --out x.mp4``).
GENERATED_EXTENSIONS = AUDIO_EXTENSIONS + VIDEO_EXTENSIONS
#: The platform's clip length (s): the default window.
DEFAULT_WINDOW_S = 10.24
#: Shortest common span scored (s): below it onsets, beats and chroma statistics say nothing.
MIN_SECONDS = 0.5
#: A file whose RMS level over its span is below this (dBFS) is flagged as silent.
SILENT_DB = -60.0
#: Visual events: a rise of the motion energy must reach this fraction of the curve's median...
MOTION_PROMINENCE = 0.25
#: ...and at least this much (mean luma change per pixel, 0-1): half a grey level, above codec noise.
MOTION_FLOOR = 0.002
#: Visual events closer than this (s) are one event (a cut is also a motion peak).
EVENT_MERGE_S = 0.15

#: Which inputs each metric needs (``ref``: ``--ref``, ``videos``: ``--videos``, ``evaluator``: ``--evaluator``).
METRIC_INPUTS: dict[str, tuple[str, ...]] = {
    "onset_rate": (), "pche": (), "gps": (), "adv": (), "chroma_conc": (), "flatness": (),
    "melody_acc": ("ref",), "dyn_r": ("ref",), "mode_match": ("ref",), "dyn_macro": ("ref",),
    "f1": ("videos",), "precision": ("videos",), "hit_rate": ("videos",), "bcs": ("videos",), "bhs": ("videos",),
    "beat_f1": ("videos",), "csd": ("videos",), "hsd": ("videos",),
    "is": ("evaluator",), "kl": ("evaluator", "ref"), "fad": ("evaluator", "ref"), "fad_floor": ("evaluator", "ref"),
    "fad_excess": ("evaluator", "ref"), "kid": ("evaluator", "ref"),
    "sim": ("evaluator", "videos"), "p_at_1": ("evaluator", "videos"), "p_at_5": ("evaluator", "videos"),
}
#: Metrics a standard backbone (``--embedder``) can score instead of the evaluator.
BACKBONE_METRICS = ("fad", "fad_floor", "fad_excess", "kid")


def metric_inputs(m: str, given: set[str]) -> tuple[str, ...]:
    """The inputs metric ``m`` needs (:data:`METRIC_INPUTS`), given what there is: with an
    ``--embedder``, FAD and KID need it instead of the evaluator."""
    need = METRIC_INPUTS[m]
    if m in BACKBONE_METRICS and "embedder" in given:
        need = tuple("embedder" if x == "evaluator" else x for x in need)
    return need


#: Metrics of the reference method that compare it with itself (left nan: 1.0 or 0 by construction).
SELF_METRICS = ("melody_acc", "dyn_r", "mode_match", "dyn_macro", "kl", "fad", "fad_floor", "fad_excess", "kid")
#: The tables of ``summary.md``: a title and its metrics (only those the inputs allow are shown).
TABLES = (
    ("The audio alone", ("onset_rate", "pche", "gps", "adv", "chroma_conc", "flatness")),
    ("Against the reference (--ref)", ("melody_acc", "dyn_r", "mode_match", "dyn_macro")),
    ("Against the video's visual events (--videos)", ("f1", "precision", "hit_rate", "bcs", "bhs", "beat_f1",
                                                      "csd", "hsd")),
    ("With the evaluator (--evaluator) or a backbone (--embedder: FAD, KID)", ("kl", "fad", "fad_floor", "fad_excess",
                                                                               "kid", "is", "sim", "p_at_1", "p_at_5")),
)
#: Metrics the plot shows first, when scored.
PLOT_METRICS = ("f1", "beat_f1", "melody_acc", "dyn_r", "onset_rate", "chroma_conc", "flatness", "sim", "kl", "pche")
_FLAG = {"ref": "--ref", "videos": "--videos", "evaluator": "--evaluator", "embedder": "--embedder"}


class FolderError(SoundtrackError, ValueError):
    """A folder that cannot be scored: missing, empty, without audio files, or sharing no
    name with the folder it is paired with (the message names it and what to do)."""


@dataclass(frozen=True)
class FolderEvalConfig:
    """Settings of a folder evaluation.

    Args:
        window_s: window length (s); 0 scores each common span whole (module docstring).
        n_boot: bootstrap resamples of the intervals (set metrics: a fifth, at least 50).
        fps: frame rate the videos are sampled at (frames/s).
        frame_size: frames are resized to this square size (the featurizer's default).
        pool_size: retrieval pool of P@K; None: the bench's, ``min(60, windows)``.
        max_files: score only the first N generated files by key (None: all).
        transcriber / beat_tracker / key_estimator: the per-window analysers
            (:class:`~soundtrack.eval.scoring.ScoringConfig`; ``basic_pitch`` and ``madmom``
            come with the ``analysis`` extra, madmom's models are CC BY-NC-SA).
        embedder: a standard audio backbone from local weights for FAD / KID
            (:func:`soundtrack.models.audio_embedders.load_embedder` spec, e.g.
            ``vggish:/path/vggish.pth``); with it FAD needs no evaluator. None: FAD on the
            evaluator's encoders.
    """

    window_s: float = DEFAULT_WINDOW_S
    n_boot: int = 1000
    fps: float = 10.0
    frame_size: int = 112
    pool_size: int | None = None
    max_files: int | None = None
    transcriber: str = "chroma"
    beat_tracker: str = "librosa"
    key_estimator: str = "krumhansl"
    embedder: str | None = None

    @property
    def scoring(self) -> ScoringConfig:
        """The per-window scoring settings (its analysers)."""
        return ScoringConfig(transcriber=self.transcriber, beat_tracker=self.beat_tracker,
                             key_estimator=self.key_estimator)

    def check(self) -> None:
        """Raise :class:`FolderError` for settings that cannot work.

        Raises:
            FolderError: a negative or too short window, fewer than 10 resamples, a bad frame rate or size.
        """
        if not math.isfinite(self.window_s) or self.window_s < 0 or 0 < self.window_s < 2 * MIN_SECONDS:
            raise FolderError(f"window_s={self.window_s} (--window-s): use 0 (whole files) or a window of at least "
                              f"{2 * MIN_SECONDS} s (default {DEFAULT_WINDOW_S})")
        if self.n_boot < 10:
            raise FolderError(f"n_boot={self.n_boot} (--n-boot): at least 10 bootstrap resamples are needed (default 1000)")
        if not self.fps > 0 or self.frame_size < 8:
            raise FolderError(f"fps={self.fps}, frame_size={self.frame_size}: need fps > 0 and frame_size >= 8")
        if self.max_files is not None and self.max_files < 1:
            raise FolderError(f"max_files={self.max_files} (--max-files): give at least 1 (or none for all files)")
        try:
            self.scoring
        except ConfigError as exc:
            raise FolderError(f"{exc} (--transcriber / --beat-tracker / --key-estimator)") from None


# ----------------------------------------------------------------------------- pairing


@dataclass(frozen=True)
class Pair:
    """One generated file and what it is scored against.

    Args:
        key: its path relative to the generated folder, without the extension.
        gen: the generated file.
        ref: the reference file of the same key (None: none given or found).
        video: the video of the same key (None: none given or found).
    """

    key: str
    gen: Path
    ref: Path | None = None
    video: Path | None = None


@dataclass
class Pairing:
    """What :func:`pair_folders` found.

    Attributes:
        pairs: one per generated file, in key order.
        ignored: per folder role (``generated``, ``reference``, ``videos``), files of other types.
        duplicates: per role, keys with several files: ``{"key", "kept", "dropped"}``.
        no_ref: generated keys without a reference (only with a reference folder).
        ref_only: reference files without a generated file.
        no_video: generated keys without a video (only with a video folder).
        video_only: videos without a generated file.
        loose: matches by the loose rule: ``{"key", "role", "file"}``.
    """

    pairs: list[Pair]
    ignored: dict[str, list[str]] = field(default_factory=dict)
    duplicates: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    no_ref: list[str] = field(default_factory=list)
    ref_only: list[str] = field(default_factory=list)
    no_video: list[str] = field(default_factory=list)
    video_only: list[str] = field(default_factory=list)
    loose: list[dict[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready report (``summary.json``'s ``pairing``)."""
        return {"pairs": len(self.pairs), "with_ref": sum(p.ref is not None for p in self.pairs),
                "with_video": sum(p.video is not None for p in self.pairs), "ignored": self.ignored,
                "duplicates": self.duplicates, "no_ref": self.no_ref, "ref_only": self.ref_only,
                "no_video": self.no_video, "video_only": self.video_only, "loose": self.loose}


def _key(path: Path, root: Path) -> str:
    return path.relative_to(root).with_suffix("").as_posix()


def scan_folder(folder: str | os.PathLike, extensions: Sequence[str], role: str,
                exclude: Path | None = None) -> tuple[dict[str, Path], list[str], list[dict[str, str]]]:
    """The files of one folder by key (module docstring), recursively.

    Args:
        folder: the folder.
        extensions: accepted extensions (lower case, with the dot), in preference order.
        role: ``generated``, ``reference`` or ``videos`` (for messages).
        exclude: a folder inside ``folder`` to skip (the outputs).

    Returns:
        ``(files, ignored, duplicates)``: ``{key: path}`` of accepted files, the relative
        paths of the other files, and ``{"key", "kept", "dropped"}`` per key with several files.

    Raises:
        FolderError: the folder does not exist, is a file, or holds no file at all.
    """
    root = Path(folder)
    if not root.exists():
        raise FolderError(f"{role} folder {root} does not exist; check the path")
    if not root.is_dir():
        raise FolderError(f"{role} folder {root} is a file, not a folder; pass the folder that holds the files")
    exclude = exclude.resolve() if exclude is not None else None
    found: dict[str, list[Path]] = {}
    ignored: list[str] = []
    rank = {e: i for i, e in enumerate(extensions)}
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        # hidden folders (.git, .ipynb_checkpoints) and the outputs are not inputs
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")
                             and (exclude is None or (here / d).resolve() != exclude))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            p = here / name
            if p.suffix.lower() in rank:
                found.setdefault(_key(p, root), []).append(p)
            else:
                ignored.append(p.relative_to(root).as_posix())
    if not found and not ignored:
        raise FolderError(f"{role} folder {root} is empty; put the {role} files in it (or check the path)")
    files, dups = {}, []
    for key in sorted(found):
        ps = sorted(found[key], key=lambda p: (rank[p.suffix.lower()], p.name))
        files[key] = ps[0]
        if len(ps) > 1:
            dups.append({"key": key, "kept": ps[0].name, "dropped": ", ".join(p.name for p in ps[1:])})
    return files, ignored, dups


def _loose(key: str) -> str:
    return key.rsplit("/", 1)[-1].casefold()


def match_keys(gen_keys: Sequence[str], others: Mapping[str, Path]) -> tuple[dict[str, Path], list[str], list[str],
                                                                            list[str]]:
    """Match generated keys to another folder's files: exact key first, then loose (module docstring).

    Args:
        gen_keys: the generated files' keys.
        others: ``{key: path}`` of the reference or video folder.

    Returns:
        ``(matched, loose_keys, unmatched_gen, unmatched_other)``: ``{gen key: path}``, the
        generated keys matched loosely, and the keys left over on each side.
    """
    matched = {k: others[k] for k in gen_keys if k in others}
    rest_gen = [k for k in gen_keys if k not in matched]
    rest_other = [k for k in others if k not in matched]
    by_gen: dict[str, list[str]] = {}
    by_other: dict[str, list[str]] = {}
    for k in rest_gen:
        by_gen.setdefault(_loose(k), []).append(k)
    for k in rest_other:
        by_other.setdefault(_loose(k), []).append(k)
    loose = []
    for name, ks in by_gen.items():
        if len(ks) == 1 and len(by_other.get(name, [])) == 1:  # unique on both sides, or no match
            matched[ks[0]] = others[by_other[name][0]]
            loose.append(ks[0])
    used = {p for p in matched.values()}
    return (matched, sorted(loose), sorted(k for k in gen_keys if k not in matched),
            sorted(k for k in rest_other if others[k] not in used))


def _examples(keys: Sequence[str], n: int = 3) -> str:
    return ", ".join(repr(k) for k in list(keys)[:n]) + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


def pair_folders(gen_dir: str | os.PathLike, ref_dir: str | os.PathLike | None = None,
                 video_dir: str | os.PathLike | None = None, exclude: Path | None = None) -> Pairing:
    """Pair every generated file with its reference and video by name (module docstring).

    Args:
        gen_dir: the generated audio.
        ref_dir: the reference audio (optional).
        video_dir: the videos (optional).
        exclude: a folder to skip while scanning (the outputs).

    Returns:
        the :class:`Pairing`.

    Raises:
        FolderError: a folder that is missing or empty, a generated folder without audio
            files, a reference folder without audio or a video folder without videos, or
            one sharing no name with the generated folder (examples of both sides given).
    """
    gens, ign, dups = scan_folder(gen_dir, GENERATED_EXTENSIONS, "generated", exclude)
    out = Pairing(pairs=[], ignored={"generated": ign}, duplicates={"generated": dups})
    if not gens:
        raise FolderError(f"generated folder {gen_dir} has no audio file ({len(ign)} other files, e.g. "
                          f"{_examples(ign)}); expected {', '.join(AUDIO_EXTENSIONS)} or a video with an audio "
                          f"track ({', '.join(VIDEO_EXTENSIONS)})")
    refs: dict[str, Path] = {}
    vids: dict[str, Path] = {}
    for role, folder, exts, what in (("reference", ref_dir, AUDIO_EXTENSIONS + VIDEO_EXTENSIONS, "audio"),
                                     ("videos", video_dir, VIDEO_EXTENSIONS, "video")):
        if folder is None:
            continue
        files, ign, dups = scan_folder(folder, exts, role, exclude)
        out.ignored[role], out.duplicates[role] = ign, dups
        if not files:
            raise FolderError(f"{role} folder {folder} has no {what} file ({len(ign)} other files, e.g. "
                              f"{_examples(ign)}); expected {', '.join(exts)}")
        matched, loose, no_match, only = match_keys(list(gens), files)
        if not matched:
            raise FolderError(
                f"no generated file has a partner in {role} folder {folder}: files are paired by name without the "
                f"extension (x.wav with x.flac / x.mp4), relative to each folder. Generated: {_examples(list(gens))}; "
                f"{role}: {_examples(list(files))}. Rename one side to match the other")
        out.loose += [{"key": k, "role": role, "file": matched[k].name} for k in loose]
        if role == "reference":
            refs, out.no_ref, out.ref_only = matched, no_match, only
        else:
            vids, out.no_video, out.video_only = matched, no_match, only
    out.pairs = [Pair(k, gens[k], refs.get(k), vids.get(k)) for k in sorted(gens)]
    for what, keys in (("generated files have no reference", out.no_ref),
                       ("reference files have no generated file", out.ref_only),
                       ("generated files have no video", out.no_video),
                       ("videos have no generated file", out.video_only)):
        if keys:
            log.warning("%d %s (paired by name): %s", len(keys), what, _examples(keys))
    return out


# ----------------------------------------------------------------------------- loading


@dataclass(frozen=True)
class Audio:
    """A decoded file: mono float32 at :data:`SR`, and what it was.

    Args:
        wav: the samples (N,).
        orig_sr: the file's sample rate (Hz; 0 unknown).
        channels: the file's channel count (0 unknown).
    """

    wav: np.ndarray
    orig_sr: int
    channels: int

    @property
    def seconds(self) -> float:
        """Duration at :data:`SR` (s)."""
        return len(self.wav) / SR


def load_audio(path: str | os.PathLike, sr: int = SR) -> Audio:
    """Any audio file (or a video's audio track) as mono float32 at ``sr``.

    libsndfile formats (WAV, FLAC, OGG, AIFF) are read with soundfile
    (:func:`soundtrack.data.media.load_wav`: channels averaged, polyphase resampling);
    everything else, and a file soundfile refuses, with PyAV
    (:func:`soundtrack.data.media.decode_audio`, which also tolerates damaged packets).

    Args:
        path: the file.
        sr: output rate (Hz).

    Returns:
        the :class:`Audio`.

    Raises:
        MediaError: an empty file, a file neither reader can decode, no audio track, no
            samples, or non-finite samples (the message names the file and what to do).
    """
    p = Path(path)
    wav, orig_sr, channels, first = None, 0, 0, None
    if p.suffix.lower() in SOUNDFILE_EXTENSIONS:
        try:
            info = sf.info(str(p))
            wav, orig_sr, channels = load_wav(p, sr), int(info.samplerate), int(info.channels)
        except (RuntimeError, MediaError) as exc:  # soundfile's errors are RuntimeErrors; PyAV may still read it
            first = exc
    if wav is None:
        try:
            wav = decode_audio(p, sr)[0]
            meta = probe(p, check_vfr=False)
            orig_sr, channels = meta.audio_sr, meta.audio_channels
        except MediaError as exc:
            if exc.reason in ("empty", "missing", "no_audio"):
                raise
            why = type(exc.__cause__).__name__ if exc.__cause__ is not None else exc.reason
            if first is not None:  # libsndfile's own words ("Format not recognised") say most
                why = f"{str(first).rsplit(': ', 1)[-1].rstrip('.')}; PyAV: {why}"
            raise MediaError("unreadable", f"{p} is not a readable audio file ({why}); re-export it as WAV or "
                             "FLAC, or remove it") from exc
    wav = np.asarray(wav, np.float32).reshape(-1)
    if wav.size == 0:
        raise MediaError("too_short", f"{p} has no audio samples; re-export it or remove it")
    bad = int(np.count_nonzero(~np.isfinite(wav)))
    if bad:
        raise MediaError("unreadable", f"{p} has {bad} non-finite (NaN / inf) samples of {wav.size}; it is not "
                         "scored (a diverged generation?); regenerate it or remove it")
    return Audio(wav, orig_sr, channels)


def visual_events(frames: np.ndarray, fps: float = 10.0) -> np.ndarray:
    """The video's visual events (s): shot cuts plus the onsets of its motion.

    Cuts: :func:`soundtrack.data.features.shot_boundaries`. Motion onsets: peaks of the
    rise of :func:`soundtrack.data.features.motion_energy` (mean luma change from the
    previous frame), ``o[i] = max(0, m[i] - m[i - 1])``, at least :data:`MOTION_PROMINENCE`
    of the curve's median and :data:`MOTION_FLOOR` high, two frames apart: where the
    picture starts changing more (a flash's first frame, not its return; an impact; a
    sudden move). Events closer than :data:`EVENT_MERGE_S` are one (the earlier). Frame
    ``i`` is at ``i / fps``. A detector, not a label: on the synthetic set it recovers the
    labelled bounces, flashes and cuts with F1 about 0.7 at 0.1 s (rises chosen over the
    peaks of ``m`` itself, F1 0.48, and the thresholds, on 16 clips of seed 1;
    ``benchmarks/eval_folder.py`` measures 16 clips of seed 2), so sync scores against it
    are lower than against labels, for real and generated audio alike.

    Args:
        frames: uint8 RGB frames (F, H, W, 3) at ``fps``.
        fps: their frame rate.

    Returns:
        sorted event times (s), float64.
    """
    m = motion_energy(frames).astype(np.float64)
    cuts = shot_boundaries(frames)
    rises = np.zeros(0, np.int64)
    if len(m) >= 3:
        onset = np.zeros_like(m)
        onset[1:] = np.maximum(np.diff(m), 0.0)
        height = max(MOTION_PROMINENCE * float(np.median(m[1:])), MOTION_FLOOR)
        rises, _ = scipy.signal.find_peaks(onset, height=height, distance=2)
    times = np.sort(np.concatenate([cuts, rises]).astype(np.float64)) / fps
    keep: list[float] = []
    for t in times:
        if not keep or t - keep[-1] >= EVENT_MERGE_S:
            keep.append(float(t))
    return np.asarray(keep, np.float64)


def scored_windows(n_samples: int, window_s: float, sr: int = SR) -> list[tuple[int, int]]:
    """The windows ``(start, end)`` (samples) a span of ``n_samples`` is scored in (module docstring).

    Args:
        n_samples: the common span's length.
        window_s: window length (s); 0: the span whole.
        sr: sample rate (Hz).

    Returns:
        consecutive, non-overlapping windows covering the span, each between half and one
        and a half windows long (one window when the span is at most 1.5 windows).
    """
    w = int(round(window_s * sr))
    if w <= 0 or n_samples <= 1.5 * w:
        return [(0, int(n_samples))]
    k, rest = divmod(int(n_samples), w)
    out = [(i * w, (i + 1) * w) for i in range(k)]
    if rest >= w / 2:
        out.append((k * w, int(n_samples)))
    else:  # a short remainder joins the last window
        out[-1] = (out[-1][0], int(n_samples))
    return out


def fit_length(x: np.ndarray, n: int) -> np.ndarray:
    """``x`` cut or repeat-padded (tiled) along its first axis to exactly ``n`` entries.

    Args:
        x: samples (N,) or frames (F, ...), N >= 1.
        n: the length wanted.
    """
    x = np.asarray(x)
    if len(x) >= n:
        return x[:n]
    return x[np.arange(n) % len(x)]


# ----------------------------------------------------------------------------- scoring one pair


def _level_db(wav: np.ndarray) -> float:
    rms = float(np.sqrt(np.mean(np.square(wav, dtype=np.float64)))) if len(wav) else 0.0
    return 20.0 * math.log10(max(rms, 1e-5))  # floor -100 dBFS: digital silence


def _reference_row(desc: Mapping[str, np.ndarray], ref: np.ndarray) -> dict[str, Any]:
    """The shard-like row a generated window is scored against: the reference's melody,
    dynamics and mode (None where it has no key)."""
    try:
        mode = M.estimate_mode(key_chroma(ref, desc["spectrum"]), level_db=desc["level_db"])
    except MetricError:  # a silent or flat reference has no key: mode_match is nan
        mode = None
    return {"melody": desc["melody"], "dynamics_db": desc["dynamics"], "label_mode": mode}


@dataclass
class PairScores:
    """One pair's windows, scored.

    Attributes:
        info: the per-file columns (file names, durations, source rate and channels, errors).
        gen: per window, the generated audio's metrics (empty when it failed).
        ref: per window, the reference audio's metrics (empty without a usable reference).
        error: why the generated file was not scored (None: it was).
        ref_error: why the reference was not used (None: it was, or there is none).
        dyn_gen / dyn_ref: the dynamics curves over the span (``dyn_macro``).
        emb: evaluator arrays of the windows: ``audio`` / ``probs`` (generated), ``ref_audio``
            / ``ref_probs`` (reference), ``video``; only those that exist.
    """

    info: dict[str, Any]
    gen: list[dict[str, float]] = field(default_factory=list)
    ref: list[dict[str, float]] = field(default_factory=list)
    error: str | None = None
    ref_error: str | None = None
    dyn_gen: np.ndarray | None = None
    dyn_ref: np.ndarray | None = None
    emb: dict[str, np.ndarray] = field(default_factory=dict)


def _read_inputs(pair: Pair, cfg: FolderEvalConfig, res: PairScores) -> tuple[Audio | None, Audio | None,
                                                                            np.ndarray | None, np.ndarray | None]:
    """Decode the pair's files; each failure is recorded on ``res`` and the others are kept."""
    gen = ref = frames = events = None
    info = res.info
    try:
        gen = load_audio(pair.gen)
        info.update(gen_s=gen.seconds, orig_sr=gen.orig_sr, channels=gen.channels)
    except MediaError as exc:
        res.error = str(exc)
    if pair.ref is not None:
        try:
            ref = load_audio(pair.ref)
            info.update(ref_s=ref.seconds, ref_orig_sr=ref.orig_sr, ref_channels=ref.channels)
        except MediaError as exc:
            res.ref_error = str(exc)
    if pair.video is not None:
        try:
            frames = read_frames(pair.video, fps=cfg.fps, size=(cfg.frame_size, cfg.frame_size))
            events = visual_events(frames, cfg.fps)
            info.update(video_s=len(frames) / cfg.fps, n_events=len(events))
        except (MediaError, ValueError) as exc:  # ValueError: frames of an unexpected shape
            info["video_error"] = str(exc)
            frames = None
    return gen, ref, frames, events


def score_pair(pair: Pair, cfg: FolderEvalConfig = FolderEvalConfig(),
               evaluator: Evaluator | None = None, embedder: AudioEmbedder | None = None) -> PairScores:
    """Read one pair and score its common span window by window (module docstring).

    The reference is scored first, each window's melody, dynamics and mode becoming the
    row the generated window is scored against; a reference that fails is dropped whole
    (its error kept), so every generated window is scored against the same inputs.

    Args:
        pair: the generated file, its reference and video (either may be None).
        cfg: settings.
        evaluator: the evaluator (None: no evaluator arrays).
        embedder: the standard backbone of ``--embedder`` (None: none); its window
            embeddings go to ``emb["bb_audio"]`` / ``emb["bb_ref"]``.

    Returns:
        the :class:`PairScores`; a file that cannot be read or scored has its ``error``
        (the generated one) or ``ref_error`` / ``info["video_error"]``, and the rest goes on.
    """
    res = PairScores({"file": pair.gen.name, "ref_file": pair.ref.name if pair.ref else None,
                      "video_file": pair.video.name if pair.video else None})
    info = res.info
    gen, ref, frames, events = _read_inputs(pair, cfg, res)
    lengths = [len(a.wav) for a in (gen, ref) if a is not None]
    if frames is not None:
        lengths.append(int(round(len(frames) / cfg.fps * SR)))
    n = min(lengths) if lengths else 0
    info["scored_s"] = n / SR
    if gen is None and ref is None:
        return res
    if n < MIN_SECONDS * SR:
        why = (f"the common span of its inputs is {n / SR:.2f} s ("
               + ", ".join(f"{what} {info[k]:.2f} s" for what, k in (("generated", "gen_s"), ("reference", "ref_s"),
                                                                       ("video", "video_s")) if k in info)
               + f"), shorter than the {MIN_SECONDS} s scored; use longer files")
        res.error = res.error or why
        res.ref_error = res.ref_error or (why if ref is not None else None)
        info["ref_error"] = res.ref_error
        return res
    spans = scored_windows(n, cfg.window_s)
    info["windows"] = len(spans)
    rows: list[dict[str, Any]] = []
    for a, b in spans:
        row: dict[str, Any] = {}
        if events is not None:
            inside = events[(events >= a / SR) & (events < b / SR)] - a / SR
            row["label_event_times"] = inside if len(inside) else None  # no visual event: nothing to sync to
        rows.append(row)
    gen_rows: list[dict[str, Any]] = [dict(r) for r in rows]
    if ref is not None:
        dyn = []
        try:
            for (a, b), row, grow in zip(spans, rows, gen_rows):
                r = ref.wav[a:b]
                desc = audio_descriptors(r, SR, scoring=cfg.scoring)
                res.ref.append({"start_s": a / SR, "end_s": b / SR, **clip_metrics(r, row, cfg.scoring, desc=desc),
                                "level_db": _level_db(r)})
                grow.update(_reference_row(desc, r))
                dyn.append(desc["dynamics"])
            res.dyn_ref = np.concatenate(dyn)
        except (SoundtrackError, ValueError) as exc:
            res.ref_error = f"{pair.ref}: scoring failed at {a / SR:.1f}-{b / SR:.1f} s ({exc})"
            res.ref, res.dyn_ref, ref = [], None, None
            gen_rows = [dict(r) for r in rows]
    info["ref_error"] = res.ref_error
    if gen is not None and res.error is None:
        dyn = []
        try:
            for (a, b), grow in zip(spans, gen_rows):
                g = gen.wav[a:b]
                desc = audio_descriptors(g, SR, scoring=cfg.scoring)
                res.gen.append({"start_s": a / SR, "end_s": b / SR, **clip_metrics(g, grow, cfg.scoring, desc=desc),
                                "level_db": _level_db(g)})
                dyn.append(desc["dynamics"])
            res.dyn_gen = np.concatenate(dyn)
        except (SoundtrackError, ValueError) as exc:
            res.error = f"{pair.gen}: scoring failed at {a / SR:.1f}-{b / SR:.1f} s ({exc})"
            res.gen, res.dyn_gen = [], None
    if evaluator is not None and (res.gen or res.ref):
        res.emb = _embed(evaluator, spans, gen if res.gen else None, ref if res.ref else None, frames, cfg)
    if embedder is not None and (res.gen or res.ref):
        n_win = int(round((cfg.window_s or DEFAULT_WINDOW_S) * SR))
        for name, audio in (("bb_audio", gen if res.gen else None), ("bb_ref", ref if res.ref else None)):
            if audio is not None:  # every window fitted to one length: the same number of backbone windows each
                res.emb[name] = np.stack(embedder.embed([fit_length(audio.wav[a:b], n_win) for a, b in spans], SR))
    return res


def _embed(ev: Evaluator, spans: Sequence[tuple[int, int]], gen: Audio | None, ref: Audio | None,
           frames: np.ndarray | None, cfg: FolderEvalConfig) -> dict[str, np.ndarray]:
    """The evaluator's arrays of one pair's windows, each window fitted to ``window_s`` (module docstring)."""
    n = int(round((cfg.window_s or DEFAULT_WINDOW_S) * SR))
    n_frames = int(math.ceil(round(n / SR * cfg.fps, 3)))
    out: dict[str, np.ndarray] = {}
    for name, audio in (("", gen), ("ref_", ref)):
        if audio is not None:
            wavs = [fit_length(audio.wav[a:b], n) for a, b in spans]
            out[f"{name}audio"], out[f"{name}probs"] = ev.audio_frames(wavs), ev.classify(wavs)
    if frames is not None:
        clips = []
        for a, b in spans:
            fa = min(int(math.floor(a / SR * cfg.fps + 1e-6)), len(frames) - 1)
            fb = max(int(math.ceil(b / SR * cfg.fps - 1e-6)), fa + 1)
            clips.append(fit_length(frames[fa:fb], n_frames))
        out["video"] = ev.video_frames(clips)
    return out


# ----------------------------------------------------------------------------- the folder


def default_out(gen_dir: str | os.PathLike) -> Path:
    """Where the outputs go without ``--out``: ``<GEN_DIR>/../eval-<GEN_DIR name>``.

    Args:
        gen_dir: the generated folder.
    """
    p = Path(gen_dir).resolve()
    return p.parent / f"eval-{p.name or 'root'}"


def _weighted(rows: Sequence[Mapping[str, float]], m: str) -> float:
    """Duration-weighted mean of a metric over a file's windows (finite values only)."""
    v = np.asarray([float(r.get(m, math.nan)) for r in rows], float)
    w = np.asarray([r["end_s"] - r["start_s"] for r in rows], float)
    ok = np.isfinite(v)
    return float(np.sum(v[ok] * w[ok]) / np.sum(w[ok])) if ok.any() else math.nan


def _evaluator_windows(files: Sequence[PairScores], method: str,
                       pool_size: int | None) -> list[dict[str, np.ndarray]]:
    """Per file of one method, its windows' ``sim``, ``kl``, ``p_at_1`` / ``p_at_5``.

    ``kl``: KL(reference || generated) of the style predictions (generated windows with a
    reference). ``sim`` and the P@K hits: the window's video against its audio, the pool
    being every window of the method that has a video.
    """
    akey, pkey = ("audio", "probs") if method == "generated" else ("ref_audio", "ref_probs")
    out: list[dict[str, np.ndarray]] = [{} for _ in files]
    for i, f in enumerate(files):
        if method == "generated" and "ref_probs" in f.emb and pkey in f.emb:
            out[i]["kl"] = np.asarray(M.kl_divergence(f.emb["ref_probs"], f.emb[pkey], reduce=False), float)
    with_video = [i for i, f in enumerate(files) if "video" in f.emb and akey in f.emb]
    if not with_video:
        return out
    a = np.concatenate([files[i].emb[akey] for i in with_video])
    v = np.concatenate([files[i].emb["video"] for i in with_video])
    t = min(a.shape[1], v.shape[1])
    a, v = a[:, :t], v[:, :t]
    cols = {"sim": np.asarray(M.sim(v, a, reduce=False), float)}
    if len(a) >= 2:  # retrieval needs a pool
        ps = pair_similarity(v, a)
        for k in (1, 5):
            pool = None if pool_size is None else min(pool_size, len(a))
            cols[f"p_at_{k}"] = M.precision_at_k_from_similarity(ps, k, pool_size=pool)["hits"].astype(float)
    start = 0
    for i in with_video:
        n = len(files[i].emb[akey])
        for m, col in cols.items():
            out[i][m] = col[start:start + n]
        start += n
    return out


def _set_rows(method: str, label: str, files: Sequence[PairScores], per_file: pd.DataFrame, given: set[str],
              n_boot: int) -> tuple[list[dict], dict[str, str]]:
    """Set metrics of one method (:func:`soundtrack.eval.scoring.set_metrics`) with the
    bench's intervals, and why any is undefined.

    ``csd`` / ``hsd`` come from the files' ``bcs`` / ``bhs``; ``dyn_macro`` from the files
    with both dynamics curves; ``fad`` (and, point values only, FAD's real-vs-real floor and
    KID, :data:`~soundtrack.eval.scoring.FLOOR_METRICS`) from the generated windows of the
    files with a reference against those references' windows; ``is`` from the style
    predictions. Interval: the bench's subsampling interval over files
    (:func:`soundtrack.metrics.subsample_interval`: half the files without replacement,
    since FAD's bias grows as a set shrinks); none below 4 files.
    """
    gen = method == "generated"
    akey, pkey = ("audio", "probs") if gen else ("ref_audio", "ref_probs")
    wanted = [m for m in SET_METRICS if set(metric_inputs(m, given)) <= given and not (not gen and m in SELF_METRICS)]
    if not files or not wanted:
        return [], {}
    cols = {k: per_file[k].to_numpy(float) for k in ("bcs", "bhs") if "videos" in given and k in per_file.columns}
    dyn = gen and "ref" in given
    emb = "evaluator" in given and all(pkey in f.emb for f in files)
    backbone = "embedder" in given
    fad = (emb or backbone) and gen and "fad" in wanted
    rkey = "bb_ref" if backbone else "ref_audio"  # the windows FAD compares (backbone's or evaluator's)

    def compute(idx: np.ndarray, floors: bool = False) -> dict[str, float]:
        c = {k: v[idx][np.isfinite(v[idx])] for k, v in cols.items()}
        c = c if len(c) == 2 and all(len(v) for v in c.values()) else {}
        chosen = [files[i] for i in idx]
        with_dyn = [f for f in chosen if f.dyn_gen is not None and f.dyn_ref is not None] if dyn else []
        paired = [f for f in chosen if rkey in f.emb] if fad else []  # FAD on the files with a reference
        bb = backbone and bool(paired)
        try:
            return set_metrics(c, np.concatenate([f.emb[akey] for f in paired]) if paired and not bb else None, None,
                               np.concatenate([f.emb["ref_audio"] for f in paired]) if paired and not bb else None,
                               np.concatenate([f.emb[pkey] for f in chosen]) if emb else None,
                               [f.dyn_ref for f in with_dyn] if with_dyn else None,
                               [f.dyn_gen for f in with_dyn] if with_dyn else None, floors=floors,
                               fad_audio=np.concatenate([f.emb["bb_audio"] for f in paired]) if bb else None,
                               fad_ref=np.concatenate([f.emb["bb_ref"] for f in paired]) if bb else None)
        except (MetricError, ValueError) as exc:  # e.g. FAD's covariance on too few windows
            return {**{m: math.nan for m in (*SET_METRICS, *FLOOR_METRICS)}, "_why": str(exc)}

    n = len(files)
    point = compute(np.arange(n), floors=fad)
    why = {m: f"failed: {point['_why']}" for m in wanted if "_why" in point}
    m_sub = n // 2
    reps = ([compute(idx) for idx in M.subsample_indices(n, max(50, n_boot // 5), m_sub, 0)] if m_sub >= 2 else [])
    rows = []
    for m in wanted:
        v = np.asarray([r[m] for r in reps], float)
        v = v[np.isfinite(v)]
        ok = len(v) and math.isfinite(point[m])
        lo, hi = M.subsample_interval(point[m], v, m_sub, n) if ok else (math.nan, math.nan)
        if not math.isfinite(point[m]) and m not in why:
            why[m] = "is undefined on these files (too few, or no finite per-file values)"
        rows.append({"method": method, "label": label, "seed": 0, "metric": m, "value": float(point[m]),
                     "ci_low": float(lo), "ci_high": float(hi), "n_clips": n,
                     "interval": "subsampling" if ok else "none"})
    for m in FLOOR_METRICS if fad else ():
        rows.append({"method": method, "label": label, "seed": 0, "metric": m, "value": float(point.get(m, math.nan)),
                     "ci_low": math.nan, "ci_high": math.nan, "n_clips": n, "interval": "none"})
    return rows, why


def _tables(scored: Sequence[tuple[str, PairScores]], methods: Mapping[str, MethodSpec], given: set[str],
            cfg: FolderEvalConfig) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, dict[str, str]]:
    """The per-file, per-window and set-metric tables of every method, and the undefined set metrics' reasons."""
    records, window_rows, set_rows, why = [], [], [], {}
    for key_m, spec in methods.items():
        gen = key_m == "generated"
        ok = [(k, s) for k, s in scored if (s.gen if gen else s.ref)]
        ev_cols = (_evaluator_windows([s for _, s in ok], key_m, cfg.pool_size) if "evaluator" in given
                   else [{} for _ in ok])
        extra = dict(zip([k for k, _ in ok], ev_cols))
        file_rows = []
        for k, s in scored:
            if not gen and s.info.get("ref_file") is None:
                continue  # no reference for this file: no reference row
            base = {"method": key_m, "label": spec.label, "clip_id": k, "seed": 0, **s.info}
            wins = s.gen if gen else s.ref
            if not wins:
                records.append({**base, "failed": True, "error": s.error if gen else s.ref_error})
                continue
            for w_i, w in enumerate(wins):
                w.update({m: float(col[w_i]) for m, col in extra[k].items()})
                for m in SELF_METRICS if not gen else ():
                    w.pop(m, None)
                window_rows.append({"method": key_m, "clip_id": k, "window": w_i, **w})
            names = [m for m in dict.fromkeys(x for w in wins for x in w) if m not in ("start_s", "end_s")]
            rec = {**base, "failed": False, "error": None, **{m: _weighted(wins, m) for m in names}}
            records.append(rec)
            file_rows.append(rec)
        rows, w_why = _set_rows(key_m, spec.label, [s for _, s in ok], pd.DataFrame.from_records(file_rows), given,
                                cfg.n_boot)
        set_rows += rows
        why.update({f"{key_m} {m}": v for m, v in w_why.items()})
    set_table = pd.DataFrame.from_records(set_rows, columns=["method", "label", "seed", "metric", "value", "ci_low",
                                                             "ci_high", "n_clips", "interval"])
    return pd.DataFrame.from_records(records), pd.DataFrame.from_records(window_rows), set_table, why


def evaluate_folder(gen_dir: str | os.PathLike, ref_dir: str | os.PathLike | None = None,
                    video_dir: str | os.PathLike | None = None, out: str | os.PathLike | None = None,
                    evaluator: str | os.PathLike | None = None, cfg: FolderEvalConfig = FolderEvalConfig(),
                    command: str = "") -> Path:
    """Score a folder of generated audio (module docstring) and write the outputs.

    Args:
        gen_dir: the generated audio (any system's).
        ref_dir: reference audio paired by name (optional).
        video_dir: videos paired by name (optional).
        out: output folder (default :func:`default_out`).
        evaluator: an evaluator directory (optional; without it FAD, KL, IS, SIM, P@K are skipped).
        cfg: settings.
        command: the command line, printed in ``summary.md``.

    Returns:
        the output folder.

    Raises:
        FolderError: bad settings or folders (:func:`pair_folders`), or no generated file
            that could be scored (the first errors given).
        FileNotFoundError: ``evaluator`` is not an evaluator directory.
    """
    t_start = time.time()
    cfg.check()
    out = Path(out) if out is not None else default_out(gen_dir)
    ev = Evaluator.load(evaluator) if evaluator is not None else None  # before any scoring: fail fast
    embedder = load_embedder(cfg.embedder) if cfg.embedder else None
    pairing = pair_folders(gen_dir, ref_dir, video_dir, exclude=out)
    pairs = pairing.pairs[:cfg.max_files] if cfg.max_files else pairing.pairs
    given = {k for k, v in (("ref", ref_dir), ("videos", video_dir), ("evaluator", ev), ("embedder", embedder))
             if v is not None}
    scored: list[tuple[str, PairScores]] = []
    for i, pair in enumerate(pairs):
        s = score_pair(pair, cfg, ev, embedder)
        scored.append((pair.key, s))
        state = f"failed: {s.error}" if s.error else f"{s.info.get('windows', 0)} window(s), {s.info['scored_s']:.1f} s"
        log.info("eval %d/%d %s: %s", i + 1, len(pairs), pair.key, state)
    if not any(s.gen for _, s in scored):
        errs = "; ".join(f"{k}: {s.error}" for k, s in scored[:3])
        raise FolderError(f"none of the {len(scored)} generated files in {gen_dir} could be scored ({errs})")
    gen_name = Path(gen_dir).resolve().name
    methods = {"generated": MethodSpec(kind="generator", label=gen_name)}
    if ref_dir is not None:
        ref_name = Path(ref_dir).resolve().name
        methods["reference"] = MethodSpec(kind="ground_truth",
                                          label=ref_name if "ref" in ref_name.lower() else f"{ref_name} (reference)")
    table, windows, set_table, why = _tables(scored, methods, given, cfg)
    bench_cfg = BenchConfig(name=f"eval-{gen_name}", n_boot=cfg.n_boot,
                            baseline="reference" if "reference" in methods else None)
    summary = summarize(table, set_table, methods, bench_cfg)
    scored_metrics = [m for m in METRIC_INPUTS if set(metric_inputs(m, given)) <= given]
    gen_rows = table[(table["method"] == "generated") & ~table["failed"].astype(bool)]
    summary.update({
        "eval": bench_cfg.name, "command": command, "wall_s": round(time.time() - t_start, 1),
        "inputs": {name: str(Path(p).resolve()) if p is not None else None for name, p in
                   (("generated", gen_dir), ("reference", ref_dir), ("videos", video_dir), ("evaluator", evaluator))},
        "settings": {"window_s": cfg.window_s, "n_boot": cfg.n_boot, "sr": SR, "fps": cfg.fps,
                     "frame_size": cfg.frame_size, "min_seconds": MIN_SECONDS, "max_files": cfg.max_files,
                     "transcriber": cfg.transcriber, "beat_tracker": cfg.beat_tracker,
                     "key_estimator": cfg.key_estimator, "embedder": cfg.embedder},
        "analysis": analysis_description(cfg.scoring),
        "fad_encoder": (embedder.identity if embedder is not None
                        else f"evaluator encoders {ev.card.get('encoders')}" if ev is not None else None),
        "files": len(scored), "scored": int(len(gen_rows)), "windows": int(sum(len(s.gen) for _, s in scored)),
        "pairing": pairing.to_dict(), "scored_metrics": scored_metrics,
        "skipped_metrics": {m: "needs " + " and ".join(_FLAG[x] for x in metric_inputs(m, given))
                            for m in METRIC_INPUTS if m not in scored_metrics},
        "undefined_set_metrics": why,
        "silent": sorted(gen_rows.loc[gen_rows["level_db"] < SILENT_DB, "clip_id"].astype(str)),
        "length_mismatch": sorted(k for k, s in scored if "ref_s" in s.info and "gen_s" in s.info
                                  and abs(s.info["ref_s"] - s.info["gen_s"]) > 0.1),
        "evaluator_card": ev.card if ev is not None else {},
    })
    write_outputs(out, table, windows, set_table, summary, methods)
    log.info("eval: %d of %d files scored in %.0f s -> %s", summary["scored"], summary["files"],
             time.time() - t_start, out)
    return out


# ----------------------------------------------------------------------------- reports


def _cell(d: Mapping[str, Any] | None, digits: int = 3) -> str:
    """``mean [lo, hi]`` of a summary entry; the mean alone without an interval (one file); – when undefined."""
    if not d or not math.isfinite(d.get("mean", math.nan)):
        return "–"
    lo, hi = d.get("ci95", [math.nan, math.nan])
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return f"{d['mean']:.{digits}f}"
    return f"{d['mean']:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def _num(x: Any, fmt: str = ".2f") -> str:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return "–"
    return format(v, fmt) if math.isfinite(v) else "–"


def _list(keys: Sequence[str], n: int = 10) -> str:
    return ", ".join(f"`{k}`" for k in keys[:n]) + (f" and {len(keys) - n} more" if len(keys) > n else "")


def markdown(summary: Mapping[str, Any], table: pd.DataFrame, methods: Mapping[str, MethodSpec]) -> str:
    """The Markdown report: inputs, metric tables (mean [95 % interval over files]), paired
    differences, tonality, pairing report, per-file table and errors.

    Args:
        summary: what :func:`evaluate_folder` put in ``summary.json``.
        table: the per-file results.
        methods: the methods (``generated``, and ``reference`` with a reference folder).
    """
    arrow = {1: " ↑", -1: " ↓", 0: ""}
    inp, st, pr = summary["inputs"], summary["settings"], summary["pairing"]
    labels = summary["labels"]
    lines = [f"# soundtrack eval `{summary.get('eval')}`", ""]
    if summary.get("command"):
        lines += [f"Command: `{summary['command']}`  ", ""]
    win = f"windows of {st['window_s']} s" if st["window_s"] else "whole spans"
    lines += [f"Generated: `{inp['generated']}`, {summary['files']} files ({summary['scored']} scored, "
              f"{summary['windows']} {win}); reference: {'`' + inp['reference'] + '`' if inp['reference'] else 'none'}; "
              f"videos: {'`' + inp['videos'] + '`' if inp['videos'] else 'none'}; evaluator: "
              f"{'`' + inp['evaluator'] + '`' if inp['evaluator'] else 'none'}. Wall time {summary.get('wall_s')} s.", "",
              f"Every file is resampled to {st['sr']} Hz mono and scored on the common span of its inputs (generated, "
              "reference, video: the shortest), in windows; a file's value is the duration-weighted mean over its "
              "windows. Each cell: mean over files [95 % bootstrap interval over files]; a cell without interval "
              "has one file. Sync metrics (f1, precision, hit_rate, bcs, bhs, beat_f1) are against the video's "
              "detected visual events (shot cuts and motion onsets, 0.1 s tolerance), never the reference "
              "audio. csd, hsd, dyn_macro, fad and is are set-level (interval: the bench's subsampling interval, "
              "recomputed on halves of the files; none below 4 files); fad_floor (FAD between two halves of the "
              "references), fad_excess and kid are point values."
              + (f" FAD / KID encoder: {summary['fad_encoder']}." if summary.get("fad_encoder") else "")
              + (f" {summary['analysis']}" if summary.get("analysis") else ""), ""]
    per = summary["methods"]
    scored = set(summary["scored_metrics"])
    for title, cols in TABLES:
        cols = [c for c in cols if c in scored]
        if not cols:
            continue
        lines += [f"## {title}", "", "| method | " + " | ".join(f"{c}{arrow[DIRECTION.get(c, 0)]}" for c in cols) + " |",
                  "|---|" + "---|" * len(cols)]
        for key in methods:
            cells = [_cell(per[key].get(c)) for c in cols]
            if any(c != "–" for c in cells):  # the reference's row of the metrics against itself is left out
                lines.append(f"| {labels.get(key, key)} | " + " | ".join(cells) + " |")
        lines.append("")
    skipped = summary.get("skipped_metrics") or {}
    if skipped:
        by_need: dict[str, list[str]] = {}
        for m, need in skipped.items():
            by_need.setdefault(need, []).append(m)
        lines += ["Not scored: " + "; ".join(f"{', '.join(ms)} ({need})" for need, ms in by_need.items()) + ".", ""]
    undefined = summary.get("undefined_set_metrics") or {}
    if undefined:
        lines += ["Undefined set metrics: " + "; ".join(f"{k} {v}" for k, v in undefined.items()) + ".", ""]
    diffs = summary.get("paired_differences") or {}
    if diffs:
        cols = [c for c in ("f1", "precision", "beat_f1", "onset_rate", "chroma_conc", "flatness", "sim", "p_at_1")
                if c in scored]  # not melody_acc, dyn_r...: the reference is not scored against itself
        lines += ["## Paired differences (generated - reference, same files and spans; 95 % paired bootstrap "
                  "interval)", "", "| a - b | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
        for name, d in diffs.items():
            lines.append(f"| {name} | " + " | ".join(_cell(d.get(c)) for c in cols) + " |")
        lines.append("")
    ton = summary.get("tonality") or {}
    if ton.get("methods"):
        band = ton.get("band") or {}
        lines += ["## Tonality", "", "Median per-file chroma concentration and spectral flatness (non-silent "
                  "frames)" + (", and whether it lies in the reference files' 5th-95th percentile band "
                               + "; ".join(f"{m} [{b[0]:.3f}, {b[1]:.3f}]" for m, b in band.items() if b)
                               if ton.get("reference") else "; no reference folder, so no band") + ".", "",
                  "| method | chroma_conc median | in band | flatness median | in band |", "|---|---|---|---|---|"]
        for key in methods:
            t = ton["methods"].get(key, {})
            cells = []
            for m in ("chroma_conc", "flatness"):
                d = t.get(m, {})
                inside = d.get("inside")
                cells += [_num(d.get("median"), ".3f"), "–" if inside is None else
                          ("yes" if inside else "no") + f" ({100 * d.get('in_band_frac', 0):.0f} % of files)"]
            lines.append(f"| {labels.get(key, key)} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## Pairing", "", f"Files are paired by name without the extension, relative to each folder "
              f"(`x.wav` with `x.flac` and `x.mp4`); failing that, by file stem ignoring case and subfolders when "
              f"unique on both sides. {pr['pairs']} generated files, {pr['with_ref']} with a reference, "
              f"{pr['with_video']} with a video.", ""]
    notes = [("Generated files without a reference", pr["no_ref"]), ("Reference files without a generated file",
             pr["ref_only"]), ("Generated files without a video", pr["no_video"]),
             ("Videos without a generated file", pr["video_only"])]
    notes += [(f"Ignored in the {role} folder (not audio/video)", v) for role, v in pr["ignored"].items()]
    for what, keys in notes:
        if keys:
            lines.append(f"- {what} ({len(keys)}): {_list(keys)}")
    for role, dups in pr["duplicates"].items():
        for d in dups:
            lines.append(f"- Duplicate in the {role} folder: `{d['key']}` uses {d['kept']}, not {d['dropped']}")
    for m in pr["loose"]:
        lines.append(f"- Matched loosely ({m['role']}): `{m['key']}` with {m['file']}")
    if summary.get("silent"):
        lines.append(f"- Silent generated files (RMS below {SILENT_DB:.0f} dBFS): {_list(summary['silent'])}")
    if summary.get("length_mismatch"):
        lines.append(f"- Generated and reference lengths differ by more than 0.1 s (scored on the shorter): "
                     f"{_list(summary['length_mismatch'])}")
    lines.append("")
    gen_rows = table[table["method"] == "generated"]
    show = [c for c in ("melody_acc", "f1", "onset_rate", "chroma_conc", "flatness") if c in scored][:4]
    lines += ["## Files", "", "| file | seconds (gen / ref / video) | source | scored s | windows | level dBFS | "
              + " | ".join(show) + " | error |", "|---|---|---|---|---|---|" + "---|" * len(show) + "---|"]
    for _, r in gen_rows.head(40).iterrows():
        secs = " / ".join(_num(r.get(c), ".2f") for c in ("gen_s", "ref_s", "video_s"))
        src = f"{int(r['orig_sr'])} Hz x {int(r['channels'])}" if _num(r.get("orig_sr")) != "–" else "–"
        errs = [str(r.get(c)) for c in ("error", "ref_error", "video_error") if isinstance(r.get(c), str)]
        lines.append(f"| `{r['clip_id']}` | {secs} | {src} | {_num(r.get('scored_s'))} | {_num(r.get('windows'), '.0f')} "
                     f"| {_num(r.get('level_db'), '.1f')} | " + " | ".join(_num(r.get(c), ".3f") for c in show)
                     + f" | {'; '.join(errs).replace('|', '/')} |")
    if len(gen_rows) > 40:
        lines.append(f"| ... {len(gen_rows) - 40} more in results.parquet | | | | | |" + " |" * len(show) + " |")
    lines.append("")
    failed = {k: v for k, v in (summary.get("failed") or {}).items() if v.get("n")}
    if failed:
        lines += ["## Failed files", "", "Not scored (each recorded with its error, in the Files table above and "
                  "results.parquet; the other files were scored as usual and the means cover them):", ""]
        for key, d in failed.items():
            lines.append(f"- {labels.get(key, key)}: {d['n']} of {d['of']}")
        lines.append("")
    card = summary.get("evaluator_card") or {}
    if card:
        lines += [f"Evaluator: encoders {card.get('encoders')}; {card.get('label')} classifier held-out accuracy "
                  f"{_num(card.get('val_accuracy'))} (majority class {_num(card.get('majority_baseline'))}): KL and IS "
                  "are only as informative as that.", ""]
    return "\n".join(lines)


def plot(summary: Mapping[str, Any], table: pd.DataFrame, methods: Mapping[str, MethodSpec], path: Path) -> Path:
    """Per metric, every file's value (dots) and the mean with its 95 % interval, per method.

    Args:
        summary: the summary (``methods``, ``labels``, ``scored_metrics``).
        table: the per-file results.
        methods: the methods, in row order.
        path: the PNG to write (atomically).
    """
    matplotlib.use("Agg")
    scored = [m for m in PLOT_METRICS if m in summary["scored_metrics"] and m in table.columns][:6]
    keys = list(methods)
    fig, axes = plt.subplots(1, len(scored), figsize=(2.8 * len(scored), 0.45 * len(keys) + 1.8), sharey=True,
                             squeeze=False)
    rng = np.random.default_rng(0)
    for ax, m in zip(axes[0], scored):
        for y, key in enumerate(keys):
            sub = table[(table["method"] == key) & ~table["failed"].astype(bool)]
            v = sub[m].to_numpy(float) if m in sub.columns else np.zeros(0)
            v = v[np.isfinite(v)]
            colour = "0.55" if methods[key].kind != "generator" else "tab:blue"
            ax.scatter(v, y + rng.uniform(-0.15, 0.15, len(v)), s=10, color=colour, alpha=0.6)
            d = summary["methods"][key].get(m, {})
            if math.isfinite(d.get("mean", math.nan)):
                lo, hi = d["ci95"]
                ax.errorbar([d["mean"]], [y], xerr=[[max(d["mean"] - lo, 0) if math.isfinite(lo) else 0],
                                                    [max(hi - d["mean"], 0) if math.isfinite(hi) else 0]],
                            fmt="D", color="black", capsize=3, ms=4)
        direction = DIRECTION.get(m, 0)
        ax.set_title(m + (" (higher better)" if direction == 1 else " (lower better)" if direction == -1 else ""),
                     fontsize=9)
        ax.grid(axis="x", alpha=0.3)
    axes[0][0].set_yticks(range(len(keys)), [summary["labels"].get(k, k) for k in keys], fontsize=8)
    axes[0][0].invert_yaxis()
    fig.suptitle(f"soundtrack eval {summary.get('eval')}: {summary.get('scored')} files (dots: files; diamond: mean, "
                 "95 % interval)", fontsize=10)
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, dpi=120, format="png"))
    plt.close(fig)
    return path


def write_outputs(out: Path, table: pd.DataFrame, windows: pd.DataFrame, set_table: pd.DataFrame,
                  summary: dict, methods: Mapping[str, MethodSpec]) -> None:
    """results.parquet/csv, windows.parquet, set_metrics.csv, summary.json, summary.md and
    eval.png in ``out`` (created), each written atomically.

    Args:
        out: the output folder.
        table: one row per method x file.
        windows: one row per method x window.
        set_table: set metrics with their intervals.
        summary: the summary.
        methods: the methods.
    """
    out.mkdir(parents=True, exist_ok=True)
    # object columns mixing None and str are fine for parquet; event-time arrays are not kept
    atomic_write(out / "results.parquet", lambda p: table.to_parquet(p, index=False))
    atomic_write(out / "results.csv", lambda p: table.to_csv(p, index=False))
    atomic_write(out / "windows.parquet", lambda p: windows.to_parquet(p, index=False))
    atomic_write(out / "set_metrics.csv", lambda p: set_table.to_csv(p, index=False))
    atomic_write(out / "summary.json", lambda p: p.write_text(json.dumps(summary, indent=2, default=float)))
    atomic_write(out / "summary.md", lambda p: p.write_text(markdown(summary, table, methods)))
    plot(summary, table, methods, out / "eval.png")
