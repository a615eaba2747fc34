"""The evaluator's further classifier heads (mood), below Ray: fitting, persistence, mood_acc."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from soundtrack.errors import MetricError
from soundtrack.eval.scoring import (
    CLIP_METRICS,
    EVALUATOR_CLIP_METRICS,
    ClassifierHead,
    Evaluator,
    _fit_head,
    evaluator_metrics,
    head_input,
    tonal_statistics,
)
from soundtrack.models.encoders import ContrastiveConfig, build_contrastive

SR = 16000


def _encoders():
    torch.manual_seed(0)
    return build_contrastive(ContrastiveConfig.tiny(video_input_size=32, video_channels=(8, 16), video_dim=16,
                                                    audio_channels=16, audio_dim=16, embed_dim=32, use_text=False))


def _tone(midi: float, seconds: float = 2.0, bright: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    f = 440.0 * 2 ** ((midi - 69) / 12)
    return (0.3 * sum(bright ** k * np.sin(2 * np.pi * f * (k + 1) * t) for k in range(6))).astype(np.float32)


def _evaluator(bias_mood: torch.Tensor, features: str = "clip") -> Evaluator:
    """A style classifier of 3 classes and a mood head whose bias alone decides (zero weights)."""
    n = head_input(_tone(60, 0.5), features).size
    head = ClassifierHead("mood", torch.zeros(3, n), bias_mood, ["calm", "happy", "sad"], torch.zeros(n),
                          torch.ones(n), {"val_accuracy": 0.4, "majority_baseline": 0.3}, features)
    return Evaluator(_encoders(), torch.randn(3, 280), torch.zeros(3), ["a", "b", "c"],
                     {"label": "style", "val_accuracy": 0.9}, heads={"mood": head})


def test_mood_acc_is_one_zero_or_nan_per_clip():
    ev = _evaluator(torch.tensor([0.0, 5.0, 0.0]))  # always predicts "happy"
    wavs = [_tone(60), _tone(64), _tone(67)]
    frames = [np.zeros((20, 32, 32, 3), np.uint8)] * 3
    out = evaluator_metrics(ev, wavs, wavs, frames, moods=["happy", "sad", None])
    assert out["mood_acc"][:2].tolist() == [1.0, 0.0] and math.isnan(out["mood_acc"][2])
    # without labels (real videos) or without a mood head: nan, never 0
    assert np.isnan(evaluator_metrics(ev, wavs, wavs, frames)["mood_acc"]).all()
    plain = Evaluator(ev.encoders, ev.weight, ev.bias, ev.classes, ev.card)
    assert np.isnan(evaluator_metrics(plain, wavs, wavs, frames, moods=["happy"] * 3)["mood_acc"]).all()
    assert "mood_acc" in CLIP_METRICS and "mood_acc" in EVALUATOR_CLIP_METRICS


def test_heads_survive_save_and_load(tmp_path):
    ev = _evaluator(torch.tensor([3.0, 0.0, 0.0]), features="clip+tonal")
    ev.save(tmp_path / "ev")
    doc = json.loads((tmp_path / "ev" / "evaluator.json").read_text())
    assert doc["heads"]["mood"]["features"] == "clip+tonal"
    back = Evaluator.load(tmp_path / "ev")
    assert list(back.heads) == ["mood"] and back.heads["mood"].classes == ["calm", "happy", "sad"]
    wavs = [_tone(60), _tone(62)]
    np.testing.assert_allclose(back.classify(wavs, label="mood"), ev.classify(wavs, label="mood"), atol=1e-6)
    np.testing.assert_allclose(back.classify_all(wavs)["mood"], ev.classify(wavs, label="mood"), atol=1e-6)
    assert back.classify(wavs, label="mood").argmax(-1).tolist() == [0, 0]
    with pytest.raises(MetricError, match="no 'tempo' classifier"):
        back.classify(wavs, label="tempo")


def test_old_evaluator_without_heads_loads(tmp_path):
    Evaluator(_encoders(), torch.randn(3, 280), torch.zeros(3), ["a", "b", "c"], {}).save(tmp_path / "ev")
    doc = json.loads((tmp_path / "ev" / "evaluator.json").read_text())
    del doc["heads"]  # as written before heads existed
    (tmp_path / "ev" / "evaluator.json").write_text(json.dumps(doc))
    assert Evaluator.load(tmp_path / "ev").heads == {}


def test_fit_head_learns_a_separable_label_and_refuses_one_class():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 1, (30, 5)), rng.normal(4, 1, (30, 5))])
    y = ["calm"] * 30 + ["tense"] * 30
    idx = rng.permutation(60)
    data = {"train": (x[idx[:40]], [y[i] for i in idx[:40]]),
            "val": (x[idx[40:]], [y[i] for i in idx[40:]] + [])}
    w, b, classes, mean, std, card = _fit_head(data, "mood", seed=0)
    assert classes == ["calm", "tense"] and card["val_accuracy"] > 0.9 and card["val_clips"] == 20
    # unlabelled clips (None / nan) are left out, not counted as a class
    data["train"] = (np.concatenate([data["train"][0], x[:2]]), data["train"][1] + [None, float("nan")])
    assert _fit_head(data, "mood", seed=0)[4].shape == (5,)
    with pytest.raises(MetricError, match="at least two"):
        _fit_head({"train": (x[:5], ["calm"] * 5), "val": (x[:2], ["calm"] * 2)}, "mood", seed=0)


def test_tonal_statistics_see_mode_and_brightness():
    """The mood features move with what defines the synthetic set's moods: mode and brightness."""
    def progression(third: int, bright: float) -> np.ndarray:
        # I - IV - V - I (major) or i - iv - v - i (minor) on C, triads with the tonic doubled
        chords = [(0, third, 7), (5, 5 + third, 12), (7, 7 + third, 14), (0, third, 7)]
        return np.concatenate([sum(_tone(60 + m, 0.5, bright) for m in (*c, 0)) for c in chords])

    major, minor = tonal_statistics(progression(4, 0.3)), tonal_statistics(progression(3, 0.3))
    assert major[14] > 0 > minor[14]  # best-major minus best-minor correlation

    def chord(root: int, third: int, bright: float) -> np.ndarray:
        return sum(_tone(m, 2.0, bright) for m in (root, root + third, root + 7))

    dull, bright = tonal_statistics(chord(60, 4, 0.1)), tonal_statistics(chord(60, 4, 0.9))
    assert bright[15] > dull[15] and bright[17] > dull[17]  # log centroid, share above 2 kHz
    assert tonal_statistics(np.zeros(SR, np.float32)).shape == (50,)
