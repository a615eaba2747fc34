"""Reference outputs of the papers' own metric code, for ``tests/test_metric_fixes.py``.

    .venv/bin/python benchmarks/reference_metrics.py [--out tests/data/reference_metrics.json]

Runs, for real, the functions of

* LORIS (github.com/OpenGVLab/LORIS, ``beats_scores.py``): ``beat_detect`` and
  ``beat_scores`` on each clip of a fixed set of (real, generated) signal pairs, then the
  file's own ``__main__`` loop (means, stds with ``ddof=1``, F1 of the means) over the set;
* Diff-BGM (github.com/sizhelee/Diff-BGM, ``diffbgm/test.ipynb``): ``process_midi``,
  ``pitch_class_histogram_entropy``, ``grooving_pattern_similarity`` and ``cal_cps`` on a
  fixed set of MIDI-like note lists,

and writes their outputs to ``tests/data/reference_metrics.json``. The test recomputes the
same quantities with :mod:`soundtrack.metrics.modes` (``loris_*``, ``diffbgm_*``) on the
same signals and notes (this file's :func:`make_signal`, :data:`NOTE_LISTS`) and asserts
equality.

The papers' source text is read at run time from the local mirrors (``git show HEAD:...``,
``--loris`` / ``--diffbgm``); the functions are compiled from it unchanged. Only their I/O
is replaced, because the packages it needs are not installed here (nothing new is
installed for this script):

* LORIS: ``librosa.load`` / ``glob`` of its ``__main__`` loop are replaced by the
  in-memory signals (already at 22050 Hz, so no resampling enters); its
  ``librosa.onset.onset_detect(x, ...)`` passes the signal positionally, which librosa
  >= 0.10 rejects, so the ``librosa`` its functions see forwards that one argument as
  ``y=`` (all other arguments, the detector and its defaults are librosa's own).
* Diff-BGM: ``music21.converter.parse(path).flat.notesAndRests`` is replaced by a small
  stand-in stream built from the note list (``Note`` objects with music21's pitch names
  for MIDI input, C C# D E- E F F# G G# A B- B; ``Chord`` for notes sharing an onset;
  ``Rest`` in gaps; offsets in quarter notes), which is all ``process_midi`` reads.
  music21 would also quantise a real MIDI file's onsets; ours lie on a sixteenth grid.

Signals: seeded click tracks (decaying noise bursts, every third louder, over a faint
noise floor), white noise, harmonic tone sequences and silence, 22050 Hz mono float32.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import io
import json
import logging
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import librosa
import numpy as np
import scipy

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "data" / "reference_metrics.json"
LORIS_REPO = Path("/work/.mirror/OpenGVLab+LORIS/repo")
DIFFBGM_REPO = Path("/work/.mirror/sizhelee+Diff-BGM/repo")
SR = 22050  # LORIS's librosa.load rate

log = logging.getLogger("reference_metrics")

# ----------------------------------------------------------------------------- signals

#: Signal recipes by name: ``kind`` and its parameters (durations in s, levels in dBFS).
SIGNALS: dict[str, dict[str, Any]] = {
    "clicks_a": {"kind": "clicks", "seed": 1, "duration": 10.0, "n": 6, "floor_db": -50.0},
    "clicks_a_jitter": {"kind": "clicks", "seed": 1, "duration": 10.0, "n": 6, "floor_db": -50.0,
                        "jitter_s": 0.4, "jitter_seed": 2},
    "clicks_b": {"kind": "clicks", "seed": 6, "duration": 7.5, "n": 21, "floor_db": -45.0},
    "clicks_short": {"kind": "clicks", "seed": 7, "duration": 6.3, "n": 4, "floor_db": -60.0},
    "noise": {"kind": "noise", "seed": 3, "duration": 8.0, "level_db": -20.0},
    "tones_a": {"kind": "tones", "seed": 4, "duration": 8.0, "note_s": 0.9, "rest_p": 0.4},
    "tones_b": {"kind": "tones", "seed": 5, "duration": 8.0, "note_s": 0.7, "rest_p": 0.4},
    "silence": {"kind": "silence", "duration": 7.5},
}

#: LORIS pairs (real music, generated music); two generations are shorter than their
#: reference (``beat_scores`` cuts the reference), one is silent (no generated beats).
LORIS_PAIRS: list[tuple[str, str]] = [
    ("clicks_a", "clicks_a_jitter"),
    ("clicks_a", "noise"),
    ("tones_a", "tones_b"),
    ("clicks_b", "silence"),
    ("tones_a", "clicks_short"),
]


def make_signal(recipe: dict[str, Any], sr: int = SR) -> np.ndarray:
    """The mono float32 waveform of a :data:`SIGNALS` recipe (deterministic).

    Args:
        recipe: ``kind`` (``clicks``, ``noise``, ``tones``, ``silence``) and parameters
            (``tones``: a note every ``note_s`` s, silent with probability ``rest_p``).
        sr: sample rate (Hz).

    Returns:
        float32 array (round(duration * sr),).
    """
    n = int(round(recipe["duration"] * sr))
    kind = recipe["kind"]
    if kind == "silence":
        return np.zeros(n, dtype=np.float32)
    rng = np.random.default_rng(recipe["seed"])
    if kind == "noise":
        return (10 ** (recipe["level_db"] / 20) * rng.standard_normal(n)).astype(np.float32)
    if kind == "clicks":
        times = np.sort(rng.uniform(0.2, recipe["duration"] - 0.3, recipe["n"]))
        if "jitter_s" in recipe:
            jit = np.random.default_rng(recipe["jitter_seed"])
            times = np.clip(times + jit.uniform(-recipe["jitter_s"], recipe["jitter_s"], times.size),
                            0.0, recipe["duration"] - 0.1)
        y = 10 ** (recipe["floor_db"] / 20) * rng.standard_normal(n)
        burst = int(0.03 * sr)
        env = np.exp(-np.arange(burst) / (0.005 * sr))  # 5 ms decay
        for k, t in enumerate(times):
            i = int(t * sr)
            amp = 0.8 if k % 3 == 0 else 0.3
            seg = y[i:i + burst]
            seg += amp * env[: seg.size] * rng.standard_normal(seg.size)
        return y.astype(np.float32)
    if kind == "tones":
        step = int(round(recipe["note_s"] * sr))
        y = np.zeros(n)
        t = np.arange(step) / sr
        for start in range(0, n, step):
            midi = int(rng.integers(55, 80))
            f0 = 440.0 * 2 ** ((midi - 69) / 12)
            amp = float(rng.uniform(0.1, 0.5)) * float(rng.uniform() >= recipe.get("rest_p", 0.0))
            note = sum(np.sin(2 * np.pi * f0 * h * t) / h for h in (1, 2, 3)) * np.exp(-t / 0.15)
            seg = y[start:start + step]
            seg += amp * note[: seg.size]
        return y.astype(np.float32)
    raise ValueError(f"unknown signal kind {kind!r}")


# ----------------------------------------------------------------------------- note lists


def _random_notes(seed: int, beats: float, n: int) -> list[list[float]]:
    rng = np.random.default_rng(seed)
    on = np.sort(rng.integers(0, int(beats * 4), n)) / 4.0  # sixteenth grid
    dur = rng.integers(1, 8, n) / 4.0
    pitch = rng.integers(48, 84, n)
    return [[int(p), float(o), float(o + d)] for p, o, d in zip(pitch, on, dur)]


def _scale_and_chords(beats: int) -> list[list[float]]:
    scale = [60, 62, 64, 65, 67, 69, 71, 72]
    out = [[scale[k % 8], k * 0.5, k * 0.5 + 0.5] for k in range(beats * 2)]  # eighth notes
    chords = [(48, 52, 55), (53, 57, 60), (55, 59, 62), (48, 52, 55)]
    for b in range(0, beats, 4):  # a triad on every downbeat
        out += [[p, float(b), float(b + 4)] for p in chords[(b // 4) % 4]]
    return sorted(out, key=lambda x: (x[1], x[0]))


def _riff(beats: int) -> list[list[float]]:
    bar = [0.0, 0.75, 1.5, 2.0, 3.0, 3.5]  # one rhythm, every bar
    return [[64 + (k % 3), b + o, b + o + 0.25] for b in range(0, beats, 4) for k, o in enumerate(bar)]


#: MIDI-like note lists ``[pitch, onset, offset]``, times in quarter notes.
NOTE_LISTS: dict[str, list[list[float]]] = {
    "scale_chords_72": _scale_and_chords(72),
    "random_100": _random_notes(11, 100.0, 180),
    "random_70": _random_notes(12, 70.0, 60),
    "riff_40": _riff(40),
    "one_note": [[60, 0.0, 1.0]],
    "short_20": _random_notes(13, 20.0, 30),
}


# ----------------------------------------------------------------------------- LORIS


def _git_show(repo: Path, path: str) -> tuple[str, str]:
    """(file text at HEAD, HEAD commit) of a mirrored repository."""
    text = subprocess.run(["git", "-C", str(repo), "show", f"HEAD:{path}"], check=True,
                          capture_output=True, text=True).stdout
    commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], check=True,
                            capture_output=True, text=True).stdout.strip()
    return text, commit


class _OnsetShim:
    """librosa.onset for LORIS's code: forwards its positional signal as ``y=`` (librosa >= 0.10)."""

    @staticmethod
    def onset_detect(x, **kwargs):
        """librosa's onset_detect with ``x`` passed as ``y``."""
        return librosa.onset.onset_detect(y=x, **kwargs)


def run_loris(repo: Path) -> dict[str, Any]:
    """LORIS's ``beat_detect`` / ``beat_scores`` per clip and its ``__main__`` loop over the set."""
    src, commit = _git_show(repo, "beats_scores.py")
    head, main = src.split("if __name__ == '__main__':", 1)
    ns: dict[str, Any] = {"__name__": "loris_beats_scores"}
    exec(compile(head, "LORIS/beats_scores.py", "exec"), ns)  # defines parse_args, beat_detect, beat_scores
    ns["librosa"] = SimpleNamespace(onset=_OnsetShim)
    wavs = {name: make_signal(rec) for name, rec in SIGNALS.items()}
    bins = {name: [int(b) for b in ns["beat_detect"](w)] for name, w in wavs.items()}
    per_clip = []
    with contextlib.redirect_stdout(io.StringIO()):  # beat_scores prints per clip
        for ref, gen in LORIS_PAIRS:
            cover, hit = ns["beat_scores"](list(bins[ref]), list(bins[gen]))
            per_clip.append({"ref": ref, "gen": gen, "cover": float(cover), "hit": float(hit)})
    # The __main__ loop, on the same pairs: files come from memory instead of disk.
    files = {}
    for i, (ref, gen) in enumerate(LORIS_PAIRS):
        files[f"mem/gt_{i:02d}"] = wavs[ref]
        files[f"mem/generated_{i:02d}"] = wavs[gen]
    ns["parse_args"] = lambda: SimpleNamespace(path="mem")
    ns["glob"] = SimpleNamespace(glob=lambda pattern: [k for k in files if k.startswith(pattern.rstrip("*"))])
    ns["load"] = lambda path: (files[path], SR)
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        exec(compile(textwrap.dedent(main), "LORIS/beats_scores.py:__main__", "exec"), ns)
    keys = ("cover_score", "hit_score", "cover_std", "hit_std", "f1_score")
    return {
        "source": {"repo": "OpenGVLab/LORIS", "commit": commit, "file": "beats_scores.py"},
        "bins": bins,
        "per_clip": per_clip,
        "set": {k: float(ns[k]) for k in keys},
        "main_output_last_line": printed.getvalue().strip().splitlines()[-1],
    }


# ----------------------------------------------------------------------------- Diff-BGM

#: music21's pitch names for MIDI input, pitch class 0 = C (the names Diff-BGM's ``note2id`` expects).
M21_NAMES = ("C", "C#", "D", "E-", "E", "F", "F#", "G", "G#", "A", "B-", "B")


class _Rest:
    """Stand-in for music21.note.Rest (``offset`` in quarter notes)."""

    def __init__(self, offset: float):
        self.offset = offset


class _Note:
    """Stand-in for music21.note.Note: ``name`` (music21's MIDI spelling) and ``offset``."""

    def __init__(self, pitch: int, offset: float):
        self.name = M21_NAMES[pitch % 12]
        self.offset = offset


class _Chord:
    """Stand-in for music21.chord.Chord: ``notes`` sharing one ``offset``."""

    def __init__(self, pitches: list[int], offset: float):
        self.notes = [_Note(p, offset) for p in pitches]
        self.offset = offset


def _stream(notes: list[list[float]]) -> list[object]:
    """A flat, offset-ordered stand-in for ``music21.converter.parse(midi).flat.notesAndRests``."""
    by_onset: dict[float, list[int]] = {}
    ends: dict[float, float] = {}
    for p, on, off in notes:
        by_onset.setdefault(on, []).append(int(p))
        ends[on] = max(ends.get(on, on), off)
    out: list[object] = []
    last_end = 0.0
    for on in sorted(by_onset):
        if on > last_end:
            out.append(_Rest(last_end))
        ps = by_onset[on]
        out.append(_Note(ps[0], on) if len(ps) == 1 else _Chord(ps, on))
        last_end = max(last_end, ends[on])
    return out


def run_diffbgm(repo: Path) -> dict[str, Any]:
    """Diff-BGM's PCHE and GPS functions (``test.ipynb``) on :data:`NOTE_LISTS`."""
    nb_text, commit = _git_show(repo, "diffbgm/test.ipynb")
    wanted = {"process_midi", "pitch_class_histogram_entropy", "grooving_pattern_similarity", "cal_cps"}
    ns: dict[str, Any] = {"np": np}
    for cell in json.loads(nb_text)["cells"]:
        if cell["cell_type"] != "code":
            continue
        code = "".join(cell["source"])
        for node in ast.parse(code).body:
            if isinstance(node, ast.FunctionDef) and node.name in wanted:
                exec(compile(ast.get_source_segment(code, node), f"Diff-BGM/test.ipynb:{node.name}", "exec"), ns)
    missing = wanted - set(ns)
    if missing:
        raise RuntimeError(f"Diff-BGM's notebook no longer defines {sorted(missing)}")

    class _Score:
        """Stand-in for a parsed score: ``flat.notesAndRests`` of one note list."""

        def __init__(self, key: str):
            self.flat = SimpleNamespace(notesAndRests=_stream(NOTE_LISTS[key]))

    ns["ms21"] = SimpleNamespace(converter=SimpleNamespace(parse=_Score),
                                 note=SimpleNamespace(Note=_Note, Rest=_Rest))
    out: dict[str, Any] = {}
    for key in NOTE_LISTS:
        notes, _bar, pattern, _pattern_bar = ns["process_midi"](key)
        row: dict[str, Any] = {"n_groups": len(notes), "n_bars": len(pattern)}
        for metric, fn, arg in (("pche", "pitch_class_histogram_entropy", notes), ("gps", "cal_cps", pattern)):
            try:
                row[metric] = float(ns[fn](arg))
            except ZeroDivisionError:
                row[metric] = None
                row[f"{metric}_error"] = "ZeroDivisionError"
        out[key] = row
    return {"source": {"repo": "sizhelee/Diff-BGM", "commit": commit, "file": "diffbgm/test.ipynb"},
            "results": out}


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    """Runs both papers' code and writes the JSON."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--loris", type=Path, default=LORIS_REPO, help="git directory of the LORIS mirror")
    ap.add_argument("--diffbgm", type=Path, default=DIFFBGM_REPO, help="git directory of the Diff-BGM mirror")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    result = {
        "generated_by": "benchmarks/reference_metrics.py",
        "versions": {"python": sys.version.split()[0], "numpy": np.__version__, "scipy": scipy.__version__,
                     "librosa": librosa.__version__},
        "adaptations": [
            "LORIS: librosa.onset.onset_detect(x, ...) forwarded as y=x (librosa >= 0.10 takes no positional "
            "signal); librosa.load/glob of __main__ replaced by in-memory 22050 Hz signals",
            "Diff-BGM: music21.converter.parse(...).flat.notesAndRests replaced by a stand-in stream of "
            "Note/Chord/Rest objects (music21 MIDI pitch names, offsets in quarter notes)",
        ],
        "sr": SR,
        "signals": SIGNALS,
        "loris_pairs": LORIS_PAIRS,
        "notes": NOTE_LISTS,
        "loris": run_loris(args.loris),
        "diffbgm": run_diffbgm(args.diffbgm),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    log.info("LORIS set: %s", result["loris"]["set"])
    for key, row in result["diffbgm"]["results"].items():
        log.info("Diff-BGM %s: %s", key, row)
    log.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
