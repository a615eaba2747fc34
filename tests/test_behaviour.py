"""Behaviour pin: a committed tiny model and video give the committed WAV bytes.

The fixture (``tests/data/behaviour``) was built on main before the layered-package move
(``python tests/data/behaviour/make.py``); a refactor that is meant to keep outputs must
keep this SHA-256. A change meant to alter outputs rebuilds the fixture and says so.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent / "data" / "behaviour"


def _make_module():
    spec = importlib.util.spec_from_file_location("behaviour_make", HERE / "make.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_committed_model_and_video_give_the_committed_wav_hash(tmp_path):
    expected = json.loads((HERE / "expected.json").read_text())
    before = torch.get_num_threads()
    try:
        digest = _make_module().generate_hash(HERE / "model", HERE / "video.mp4", tmp_path / "out.wav")
    finally:
        torch.set_num_threads(before)
    assert digest == expected["wav_sha256"], "generated WAV bytes changed for the pinned model, video and seed"
