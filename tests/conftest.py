"""Shared fixtures. Environment first: Ray reads these at import / start-up."""

import os
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("NUMBA_CACHE_DIR", str(Path(__file__).resolve().parents[1] / ".cache" / "numba"))

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def synth_small(tmp_path_factory):
    """A small synthetic data set (8 clips of 10.24 s, medium), generated once per session."""
    from soundtrack.config import SynthSection
    from soundtrack.stages.data import stage_synth

    root = tmp_path_factory.mktemp("synth")
    return stage_synth(SynthSection(n=8, seed=0, difficulty="medium"), out=root / "data", storage=root, progress=False)
