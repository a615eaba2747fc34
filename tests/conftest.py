"""Shared fixtures. Environment first: Ray reads it at import / start-up.

Importing :mod:`soundtrack` applies the platform's environment defaults (the one table,
``soundtrack.env.ENV_DEFAULTS``) before any test imports Ray. ``MPLBACKEND`` is the tests'
own: no display here (the platform's plots pick Agg themselves).
"""

import os
from pathlib import Path

import soundtrack  # noqa: F401  (applies soundtrack.env.ENV_DEFAULTS)

os.environ.setdefault("MPLBACKEND", "Agg")

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def click_track(times, sr: int = 16000, dur: float = 10.24):
    """A float32 waveform of ``dur`` s with a decaying noise click (50 ms, 0.5 peak) at each time (s)."""
    import numpy as np

    wav = np.zeros(int(sr * dur), np.float32)
    rng = np.random.default_rng(0)
    for t in times:
        i = int(t * sr)
        n = min(800, len(wav) - i)
        wav[i:i + n] += (rng.standard_normal(n) * np.exp(-np.arange(n) / 120)).astype(np.float32) * 0.5
    return wav


@pytest.fixture(scope="session")
def synth_small(tmp_path_factory):
    """A small synthetic data set (8 clips of 10.24 s, medium), generated once per session."""
    from soundtrack.config import SynthSection
    from soundtrack.stages.data import stage_synth

    root = tmp_path_factory.mktemp("synth")
    return stage_synth(SynthSection(n=8, seed=0, difficulty="medium"), out=root / "data", storage=root, progress=False)
