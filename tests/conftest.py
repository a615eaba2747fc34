"""Shared fixtures. Environment first: Ray reads it at import / start-up.

Importing :mod:`soundtrack` applies the platform's environment defaults (the one table,
``soundtrack.env.ENV_DEFAULTS``) before any test imports Ray. ``MPLBACKEND`` is the tests'
own: no display here (the platform's plots pick Agg themselves).
"""

import contextlib
import os
import shutil
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


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch intra-op thread for a module (``pytest.mark.usefixtures``): with two on a busy
    2-core machine the tiny models ran 10-40x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def synth_small(tmp_path_factory):
    """A small synthetic data set (8 clips of 10.24 s, medium), generated once per session."""
    from soundtrack.config import SynthSection
    from soundtrack.stages.data import stage_synth

    root = tmp_path_factory.mktemp("synth")
    return stage_synth(SynthSection(n=8, seed=0, difficulty="medium"), out=root / "data", storage=root, progress=False)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A moto S3 server on 127.0.0.1 for the session, the ``AWS_*`` variables pointing at it."""
    pytest.importorskip("moto.server", reason="moto[server] (the test extra) runs the S3 tests")
    from s3_server import S3Server

    server = S3Server(tmp_path_factory.mktemp("aws"))
    yield server
    server.stop()


def _snapshot(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()} if folder.is_dir() else set()


@contextlib.contextmanager
def _checked_s3_root(server, home: Path, mp: pytest.MonkeyPatch):
    """A fresh bucket's ``s3://<bucket>/runs``; afterwards asserts that nothing landed on local
    disk outside temp dirs (see :func:`s3_root`) and drops the bucket's staging copies."""
    home.mkdir()
    mp.setenv("HOME", str(home))
    cwd = Path.cwd()
    before = _snapshot(cwd)
    bucket = server.new_bucket()
    yield f"s3://{bucket}/runs"
    assert _snapshot(cwd) - before == set(), "files written to the working directory"
    assert not (cwd / "s3:").exists()
    # per-user caches (numba's compiled code, matplotlib's font list) are not run data
    assert sorted(p.name for p in home.iterdir() if p.name not in (".cache", ".config")) == [], "files written to HOME"
    # the stages' staging copies of this bucket's runs live under the temp dir: drop them
    from soundtrack.storage import run_location

    shutil.rmtree(run_location(f"s3://{bucket}/runs", "x", "x").parents[1], ignore_errors=True)


@pytest.fixture
def s3_root(s3_server, tmp_path, monkeypatch):
    """``s3://<fresh bucket>/runs`` on the test server: the storage root of the S3 stage tests.

    Asserts afterwards that nothing landed on local disk outside temp dirs: the working
    directory and ``HOME`` (a temp dir for the test) get no new entries (but the per-user
    caches ``.cache``, ``.config`` of numba and matplotlib), and no ``s3:`` folder appears
    (what ``Path("s3://...")`` would write).
    """
    with _checked_s3_root(s3_server, tmp_path / "home", monkeypatch) as root:
        yield root


@pytest.fixture
def stage_storage(s3_root):
    """The storage root of the stage tests: ``s3://<fresh bucket>/runs`` on the loopback S3
    server (:func:`s3_root`, which asserts that nothing lands on local disk outside temp
    dirs). One fixture for every stage test that takes a storage root, so each runs once,
    against the object store (a local root is the same code without the staging step)."""
    return s3_root


@pytest.fixture(scope="module")
def module_stage_storage(s3_server, tmp_path_factory):
    """:func:`stage_storage` shared by the tests of one module (a search killed and resumed,
    then its registry entry), with the same checks at the module's end."""
    with pytest.MonkeyPatch.context() as mp, _checked_s3_root(s3_server, tmp_path_factory.mktemp("m") / "home", mp) as root:
        yield root
