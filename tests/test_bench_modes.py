"""The bench's comparison modes (loris / muvi / diffbgm columns), below Ray."""

from __future__ import annotations

import numpy as np
import pytest

from soundtrack.config import ConfigError
from soundtrack.eval.bench import (
    MODES,
    BenchConfig,
    MethodSpec,
    _mode_lines,
    load_bench_config,
    mode_scores,
    modes_summary,
)

SR = 16000


def _clicks(bpm: float, seconds: float = 6.0, phase: float = 0.0) -> np.ndarray:
    y = np.zeros(int(seconds * SR), np.float32)
    for t in np.arange(phase, seconds, 60.0 / bpm):
        i = int(t * SR)
        y[i:i + 400] += np.hanning(800)[400:].astype(np.float32) * np.sin(2 * np.pi * 1000 * np.arange(400) / SR)
    return y


def test_modes_score_real_music_against_itself_at_their_ceilings_and_noise_lower():
    refs = [_clicks(120), _clicks(100, phase=0.2), _clicks(140, phase=0.1)]
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(3, 5, 8))
    same = mode_scores(MODES, refs, refs, emb, emb,
                       {"pche": [1.0, 2.0, 3.0], "gps": [0.5] * 3, "si": [0.2] * 3},
                       {"pche": [1.0, 2.0, 3.0], "gps": [0.5] * 3, "si": [0.2] * 3})
    assert same["loris"]["bcs"] == 1.0 and same["loris"]["bhs"] == 1.0
    assert same["muvi"]["bhs"] == 100.0 and same["muvi"]["bcs"] == 100.0
    assert same["diffbgm"]["p_at_1"] == 1.0 and same["diffbgm"]["pche_abs_diff"] == 0.0
    assert same["diffbgm"]["pool_size"] == 3 and same["loris"]["n_clips"] == 3
    # other clips' beats (tempo and phase differ) match fewer of the real beats
    other = mode_scores(("muvi", "diffbgm"), refs[1:] + refs[:1], refs, emb[[1, 2, 0]], emb,
                        {"pche": [2.0, 3.0, 1.0], "gps": [0.5] * 3, "si": [0.2] * 3},
                        {"pche": [1.0, 2.0, 3.0], "gps": [0.5] * 3, "si": [0.2] * 3})
    assert other["muvi"]["bhs"] < 60.0
    assert other["diffbgm"]["pche_abs_diff"] == 0.0 and other["diffbgm"]["pche_clip_abs_diff"] == pytest.approx(4 / 3)
    with pytest.raises(ConfigError, match="unknown comparison mode"):
        mode_scores(("audiobox",), refs, refs)


def test_modes_summary_and_table(tmp_path):
    cfg = BenchConfig(seeds=(0, 1), modes=("loris", "muvi"))
    reps = {("gt", 0): {"loris": {"bcs": 1.0, "bhs": 1.0, "f1": 1.0, "csd": 0.0, "hsd": 0.0, "n_clips": 4.0},
                        "muvi": {"bcs": 100.0, "bhs": 100.0, "n_clips": 4.0}},
            ("gt", 1): {"loris": {"bcs": 0.8, "bhs": 1.0, "f1": 0.9, "csd": 0.0, "hsd": 0.0, "n_clips": 4.0},
                        "muvi": {"bcs": 80.0, "bhs": 90.0, "n_clips": 4.0}}}
    out = modes_summary(reps, {"gt": MethodSpec(kind="ground_truth")}, cfg)
    assert out["loris"]["gt"]["bcs"] == pytest.approx(0.9) and out["muvi"]["gt"]["seeds"] == 2
    text = "\n".join(_mode_lines(out, {"gt": "ground truth"}))
    assert "**loris**: LORIS" in text and "| ground truth | 0.900 |" in text and "N = 4 clips" in text
    assert "| ground truth | 90.0 | 95.0 |" in text
    path = tmp_path / "b.yaml"
    path.write_text("name: b\nmodes: [muvi, audiobox]\nmethods: {gt: {kind: ground_truth}}\n")
    with pytest.raises(ConfigError, match="audiobox"):
        load_bench_config(path)
