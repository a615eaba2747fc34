"""Builds the behaviour fixture: a tiny model directory, a fixed video, and the SHA-256 of
the WAV the model generates for that video and seed.

Run once from main BEFORE a refactor that must not change outputs (``python
tests/data/behaviour/make.py``); ``tests/test_behaviour.py`` then checks that the same
model, video and seed still give the same bytes. Re-run it only when a change is meant to
change outputs, and say so in the commit.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import torch

from soundtrack.data import media
from soundtrack.pipelines.generator import SoundtrackGenerator, build_tiny_generator

HERE = Path(__file__).resolve().parent
SEED = 7  # generation seed
SECONDS = 4.0  # one window; 10 fps


def frames(n: int = int(SECONDS * 10), size: int = 48) -> np.ndarray:
    """A white square bouncing on a dark background that cuts to orange at frame 25."""
    out = np.zeros((n, size, size, 3), np.uint8)
    span = size - 10
    for i in range(n):
        out[i] = (20, 30, 120) if i < 25 else (200, 120, 30)
        x = abs((4 * i) % (2 * span) - span)
        out[i, 20:30, x : x + 10] = 255
    return out


def generate_hash(model_dir: Path, video: Path, out_wav: Path) -> str:
    """Loads ``model_dir``, writes the soundtrack of ``video`` (seed ``SEED``) and hashes the WAV."""
    torch.set_num_threads(1)  # torch's CPU kernels are deterministic for a fixed thread count
    gen = SoundtrackGenerator.load(model_dir)
    gen.generate_file(video, out_wav, seed=SEED)
    return hashlib.sha256(out_wav.read_bytes()).hexdigest()


def main() -> int:
    model = HERE / "model"
    build_tiny_generator(model, seed=0)
    video = HERE / "video.mp4"
    media.write_mp4(video, frames(), 10.0)
    digest = generate_hash(model, video, Path("/tmp/behaviour.wav"))
    (HERE / "expected.json").write_text(json.dumps({"seed": SEED, "wav_sha256": digest}, indent=2) + "\n")
    print(digest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
