"""Contrastive pretraining pieces: encoders, MuVi's negatives, the loss, persistence, eval.

Fast and Ray-free: tiny models on synthetic tensors (32 x 32 frames). The HTSAT
checkpoint test and the sentence-encoder test load real models (several seconds each)
and are marked ``slow``.
"""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import pytest
import torch

from soundtrack.data.augment import ObjectiveConfig, crop_pair, equal_power_gains, make_batch, make_negatives
from soundtrack.data.features import log_mel
from soundtrack.losses.contrastive import aligned_similarity, contrastive_loss, pooled_similarity, position_similarity
from soundtrack.models import clap_adapter
from soundtrack.models.encoders import (
    ContrastiveConfig,
    ContrastiveModel,
    build_contrastive,
    count_parameters,
)

SR = 16000
N = 163840  # 10.24 s
STEP = 1600  # samples per video frame


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """One intra-op thread per test: the tensors are tiny, and on the 2 shared cores two
    spinning threads were measured 3.6x slower under load (0.34 vs 1.25 s a step)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _tiny(**kw) -> ContrastiveConfig:
    """Tiny preset on 32 x 32 test frames (no resize), no text branch unless asked."""
    return ContrastiveConfig.tiny(video_input_size=None, **{"use_text": False, **kw})


def _clip(rng: np.random.Generator, period: float = 0.5, size: int = 32) -> dict:
    """A synthetic clip whose video and audio share events: a flash and a click per beat."""
    beats = np.arange(0.2, 10.24, period)
    frames = rng.integers(0, 40, size=(103, size, size, 3), dtype=np.uint8)
    music = (0.01 * rng.standard_normal(N)).astype(np.float32)
    sfx = (0.01 * rng.standard_normal(N)).astype(np.float32)
    tone = np.sin(2 * np.pi * rng.uniform(200, 2000) * np.arange(800) / SR).astype(np.float32)
    for t in beats:
        frames[int(round(t * 10)) % 103] += 150
        s = int(t * SR)
        music[s : s + 800] += 0.5 * tone[: len(music[s : s + 800])]
    for t in rng.uniform(0.5, 9.5, size=4):
        frames[int(t * 10), : size // 2] = 255
        s = int(t * SR)
        sfx[s : s + 400] += rng.uniform(-0.8, 0.8, size=len(sfx[s : s + 400]))
    return {"frames": frames, "wav_music": music, "wav_sfx": sfx, "beat_times": beats,
            "caption": "a test clip", "source_id": f"src{rng.integers(1 << 30)}"}


# ----------------------------------------------------------------------------- negatives


def _ramp() -> np.ndarray:
    """A strictly positive, strictly increasing waveform: each sample names its index."""
    return (1.0 + np.arange(N, dtype=np.float64) / N).astype(np.float32)


@pytest.mark.parametrize("mode", ["off_beat", "whole_beats"])
def test_shift_is_beat_aware_and_cropped_inside(mode):
    cfg = ObjectiveConfig(shift_mode=mode)
    wav = _ramp()
    period = 0.5
    beats = np.arange(0.13, 10.24, period)
    signs = set()
    for seed in range(60):
        neg = make_negatives(wav, beats, np.random.default_rng(seed), cfg)
        assert neg["shift_kind"] == "beat" and neg["period_source"] == "beats"
        assert neg["beat_period_s"] == pytest.approx(period)
        o, d, length = neg["offset"], neg["shift"], cfg.crop_samples
        # Both windows are real audio of one length from inside the clip: no padding.
        assert o % STEP == 0 and 0 <= o and o + length <= N
        assert 0 <= o + d and o + d + length <= N
        assert neg["positive"].shape == neg["shifted"].shape == (length,)
        np.testing.assert_array_equal(neg["positive"], wav[o : o + length])
        np.testing.assert_array_equal(neg["shifted"], wav[o + d : o + d + length])
        assert np.all(neg["shifted"] > 0) and np.all(neg["positive"] > 0)
        beats_shifted = abs(d) / (period * SR)
        phase = beats_shifted % 1.0
        assert beats_shifted >= cfg.shift_k_min - 1e-3
        tol = 1.0 / (period * SR)  # one sample of rounding, in beats
        if mode == "whole_beats":
            assert min(phase, 1 - phase) <= tol  # a whole number of beats ...
        else:
            assert min(phase, 1 - phase) >= cfg.beat_margin - tol  # ... or clearly off-beat
        assert abs(phase - 0.5) >= cfg.half_beat_margin - tol  # never a half beat
        signs.add(int(np.sign(d)))
    assert signs == {-1, 1}


def test_shift_fallbacks():
    cfg = ObjectiveConfig()
    rng = np.random.default_rng(0)
    neg = make_negatives(_ramp(), [], rng, cfg)
    assert neg["period_source"] == "fallback" and neg["beat_period_s"] == cfg.fallback_beat_period_s
    # A clip barely longer than the window leaves no room for a shift: silence.
    short = _ramp()[: cfg.crop_samples + 100]
    neg = make_negatives(short, np.arange(0, 8, 0.5), rng, cfg)
    assert neg["shift_kind"] == "silence" and not np.any(neg["shifted"])
    np.testing.assert_array_equal(neg["positive"], short[: cfg.crop_samples])


def test_segment_replacement_keeps_borders_and_crossfades_at_equal_power():
    cfg = ObjectiveConfig()
    rng = np.random.default_rng(3)
    wav = {"music": _ramp(), "sfx": -_ramp()}
    donor = {"music": np.full(N, 5.0, np.float32), "sfx": np.full(N, -5.0, np.float32)}
    for seed in range(20):
        neg = make_negatives(wav, np.arange(0.1, 10, 0.6), np.random.default_rng(seed), cfg, donor=donor)
        length = cfg.crop_samples
        border = int(round(0.05 * length))
        start, stop = neg["replace_span"]
        assert border <= start < stop <= length - border
        assert cfg.replace_frac[0] * length - 1 <= stop - start <= cfg.replace_frac[1] * length + 1
        for stem in ("music", "sfx"):
            pos, rep = neg["positive"][stem], neg["replaced"][stem]
            np.testing.assert_array_equal(rep[:border], pos[:border])
            np.testing.assert_array_equal(rep[length - border :], pos[length - border :])
            np.testing.assert_array_equal(rep[:start], pos[:start])
            np.testing.assert_array_equal(rep[stop:], pos[stop:])
            fade = int(round(cfg.crossfade_s * SR))
            np.testing.assert_allclose(rep[start + fade : stop - fade], donor[stem][0], rtol=1e-6)
        g_o, g_n = neg["gain_orig"], neg["gain_new"]
        np.testing.assert_allclose(g_o**2 + g_n**2, 1.0, atol=1e-6)
        assert np.all(np.diff(g_n[start : start + fade]) > 0)  # fades in ...
        assert np.all(np.diff(g_n[stop - fade : stop]) < 0)  # ... and out
        assert neg["replace_kind"] == "donor"
    # Without another clip the segment becomes silence.
    neg = make_negatives(wav, None, rng, cfg, donor=None)
    start, stop = neg["replace_span"]
    assert neg["replace_kind"] == "silence" and not np.any(neg["replaced"]["music"][start + 800 : stop - 800])


def test_equal_power_gains_hand_case():
    g_o, g_n = equal_power_gains(10, 2, 8, 2)
    np.testing.assert_allclose(g_o**2 + g_n**2, 1.0, atol=1e-7)
    np.testing.assert_array_equal(g_o[[0, 1, 8, 9]], 1.0)
    np.testing.assert_array_equal(g_n[4:6], 1.0)
    np.testing.assert_allclose(g_n[2:4], np.sin(np.array([0.25, 0.75]) * np.pi / 2), rtol=1e-6)


def test_crop_pair_aligns_frames_and_audio():
    cfg = ObjectiveConfig()
    frames = np.arange(103, dtype=np.uint8)[:, None, None, None] * np.ones((1, 2, 2, 3), np.uint8)
    f, a = crop_pair(frames, _ramp(), 7, cfg)
    assert f.shape[0] == cfg.crop_frames == 80 and f[0, 0, 0, 0] == 7
    np.testing.assert_array_equal(a, _ramp()[7 * STEP : 7 * STEP + cfg.crop_samples])
    with pytest.raises(ValueError):
        crop_pair(frames, _ramp(), 30, cfg)  # 30 + 80 frames > 103
    with pytest.raises(ValueError):
        crop_pair(frames, _ramp(), 0, cfg, audio_shift=-1)


# ----------------------------------------------------------------------------- similarity


def test_position_aware_similarity_prefers_aligned_audio():
    # Hand-built per-frame embeddings: an event pattern on two axes of a 4-d space.
    t = 40
    events = np.zeros(t, bool)
    events[[3, 11, 19, 26, 33]] = True
    def embed(ev):
        x = np.where(ev[:, None], [1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0])
        return torch.tensor(x, dtype=torch.float32)[None]
    v = embed(events)
    aligned = embed(events)
    shifted = embed(np.roll(events, 2))
    assert float(aligned_similarity(v, aligned)) == pytest.approx(1.0)
    assert float(aligned_similarity(v, aligned)) > float(aligned_similarity(v, shifted))
    # Mean pooling cannot tell them apart (same events, different times).
    assert float(pooled_similarity(v, aligned)) == pytest.approx(float(pooled_similarity(v, shifted)))
    both = torch.cat([aligned, shifted])
    s = position_similarity(v, both)
    assert s.shape == (1, 2) and s[0, 0] > s[0, 1]


# ----------------------------------------------------------------------------- model + loss


def test_tiny_preset_size_and_adaptors():
    model = build_contrastive(ContrastiveConfig.tiny())
    assert count_parameters(model) < 1_000_000
    frames = torch.randint(0, 256, (2, 12, 32, 32, 3), dtype=torch.uint8)
    mel = torch.randn(2, 128, 120) - 5
    for adaptor in ("softmax_gated", "sigmoid_gated", "attention_pool", "mean"):
        m = build_contrastive(_tiny(video_adaptor=adaptor, temporal="transformer"))
        v = m.encode_video(frames)
        assert v.shape == (2, 12, 512)
        torch.testing.assert_close(v.norm(dim=-1), torch.ones(2, 12))
    a = m.encode_music(mel)
    assert a.shape == (2, 12, 512)
    # 1024 mel frames -> 103 steps, like the 103 frames of a 10.24 s clip.
    assert m.encode_sfx(torch.randn(1, 128, 1024)).shape == (1, 103, 512)


def test_paper_preset_builds_on_meta_device():
    with torch.device("meta"):
        model = build_contrastive("paper")
    params = list(model.parameters())
    assert all(p.device.type == "meta" for p in params)
    assert count_parameters(model) > 10 * count_parameters(build_contrastive("tiny"))


def test_loss_falls_on_a_fixed_batch():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    rows = [_clip(rng, period=p) for p in (0.4, 0.5, 0.6, 0.7)]
    cfg = ObjectiveConfig(crop_s=5.0)  # 5 s windows keep the test quick
    batch = make_batch(rows, cfg, rng)
    assert batch["frames"].shape == (4, 50, 32, 32, 3)
    assert batch["music"].shape == (4, 3, 128, 500) and batch["sfx"].shape == (4, 3, 128, 500)
    # The positive mel is exactly log_mel of the cropped waveform.
    o = int(batch["offset_frame"][0]) * STEP
    np.testing.assert_array_equal(batch["music"][0, 0].numpy(), log_mel(rows[0]["wav_music"][o : o + cfg.crop_samples]))
    model = build_contrastive(_tiny())
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss, logs = contrastive_loss(model, batch, cfg)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(logs["loss"])
    assert all(math.isfinite(x) for x in losses)
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:3]), losses
    assert set(logs) >= {"loss_video_music", "loss_video_sfx", "loss_music_sfx", "temperature", "sync_acc_music_shift"}


def test_separate_sync_loss_and_pooled_similarity_run():
    torch.manual_seed(1)
    rng = np.random.default_rng(1)
    cfg = ObjectiveConfig(sim="pooled", sync_loss="separate", sync_streams=("music",), crop_s=4.0)
    batch = make_batch([_clip(rng), _clip(rng)], cfg, rng)
    assert batch["sfx"].shape[1] == 1 and batch["music"].shape[1] == 3
    loss, logs = contrastive_loss(build_contrastive(_tiny()), batch, cfg)
    loss.backward()
    assert "loss_sync" in logs and math.isfinite(logs["loss"])
    with pytest.raises(ValueError):
        ObjectiveConfig(sim="pooled", sync_loss="joint")
    assert ObjectiveConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_save_load_round_trip(tmp_path):
    torch.manual_seed(0)
    model = build_contrastive(_tiny(use_text=True, video_adaptor="attention_pool"))
    with torch.no_grad():
        model.logit_scale.fill_(3.0)
    path = model.save(tmp_path / "enc")
    assert (path / "model.safetensors").is_file() and (path / "config.json").is_file()
    loaded = ContrastiveModel.load(path)
    assert loaded.cfg == model.cfg
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    model.eval(), loaded.eval()
    frames = torch.randint(0, 256, (1, 10, 32, 32, 3), dtype=torch.uint8)
    with torch.no_grad():
        assert torch.equal(model.encode_video(frames, "sfx"), loaded.encode_video(frames, "sfx"))


# ----------------------------------------------------------------------------- evaluation


def test_retrieval_and_sync_evaluation_shapes():
    from soundtrack.eval.retrieval import RetrievalConfig, evaluate_retrieval

    torch.manual_seed(0)
    rng = np.random.default_rng(5)
    rows = []
    for _ in range(4):
        r = _clip(rng)
        r["mel_music"], r["mel_sfx"] = log_mel(r["wav_music"]), log_mel(r["wav_sfx"])
        rows.append(r)
    cfg = RetrievalConfig(shifts_frames=(1, 10), streams=("music",), n_boot=100)
    out = evaluate_retrieval(build_contrastive(_tiny()), rows, cfg)
    res = out["music"]
    assert res["retrieval"]["p_at_1"]["n"] == 4 and 0 <= res["retrieval"]["p_at_1"]["value"] <= 1
    assert res["retrieval"]["p_at_10"]["value"] == 1.0  # pool of 4 < 10: always a hit
    assert -1 <= res["retrieval"]["sim"]["value"] <= 1
    for key in ("sync", "sync_control"):
        assert res[key]["per_clip"].shape == (4, 2)
        v = res[key]["shift_10"]
        assert 0 <= v["ci_low"] <= v["value"] <= v["ci_high"] <= 1


# ----------------------------------------------------------------------------- HTSAT


def test_upsample_16k_to_48k_matches_analytic_sine():
    t = np.arange(SR) / SR
    x = torch.tensor(np.sin(2 * np.pi * 1000 * t), dtype=torch.float32)[None]
    y = clap_adapter.upsample(x, 3)[0].numpy()
    ref = np.sin(2 * np.pi * 1000 * np.arange(3 * SR) / 48000)
    assert np.abs(y - ref)[3000:-3000].max() < 1e-3


def test_clap_state_reader_strips_prefixes(tmp_path):
    from safetensors.torch import save_file

    t = torch.arange(6.0).reshape(2, 3)
    save_file({"module.audio_branch.layers.0.w": t, "module.text_branch.w": t + 1}, str(tmp_path / "c.safetensors"))
    state = clap_adapter.load_clap_audio_state(tmp_path / "c.safetensors")
    assert list(state) == ["layers.0.w"] and torch.equal(state["layers.0.w"], t)
    torch.save({"state_dict": {"audio_branch.patch_embed.w": t}}, tmp_path / "c.ckpt")
    assert list(clap_adapter.load_clap_audio_state(tmp_path / "c.ckpt")) == ["patch_embed.w"]
    with pytest.raises(FileNotFoundError):
        clap_adapter.load_clap_audio_state(tmp_path / "missing.pt")


@pytest.mark.slow
def test_laion_clap_checkpoint_loads_through_our_loader(tmp_path):
    argv = list(sys.argv)
    torch.manual_seed(0)
    source = clap_adapter.create_htsat("tiny").eval()
    assert "torchvision" not in sys.modules and sys.argv == argv
    # LAION-CLAP's layout: a torch.save-d dict, DDP "module." prefixes, branch prefixes.
    state = {f"module.audio_branch.{k}": v for k, v in source.state_dict().items()}
    state["module.logit_scale_a"] = torch.tensor(2.0)
    state["module.text_branch.embeddings.position_ids"] = torch.arange(77)[None]
    ckpt = tmp_path / "clap.pt"
    torch.save({"epoch": 15, "name": "test", "state_dict": state}, ckpt)

    cfg = ContrastiveConfig.tiny(music_backbone="htsat", htsat_checkpoint=str(ckpt), use_text=False)
    model = build_contrastive(cfg).eval()
    loaded = model.music.htsat
    for k, v in source.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    assert count_parameters(model, trainable_only=True) < 1_000_000  # HTSAT frozen
    wav = 0.1 * torch.randn(1, 3 * SR)
    times = torch.arange(30, dtype=torch.float64) / 10 + 0.045
    with torch.no_grad():
        expected = clap_adapter.htsat_sequence(source, wav, times)
        got = clap_adapter.htsat_sequence(loaded, wav, times)
        assert torch.equal(expected, got)
        assert model.encode_music(wav).shape == (1, 30, 512)
    # A wrong-size checkpoint is refused, not partially loaded.
    bad = tmp_path / "bad.pt"
    torch.save({"state_dict": {k: v for k, v in list(state.items())[:10]}}, bad)
    with pytest.raises(ValueError):
        clap_adapter.load_htsat_weights(loaded, bad)


# ----------------------------------------------------------------------------- text


@pytest.mark.slow
def test_text_encoder_loads_offline_and_ranks_related_captions():
    model = build_contrastive(_tiny(use_text=True))
    caps = [
        "upbeat happy pop music with drums",
        "cheerful energetic song with a strong beat",
        "a car engine idling in an empty parking lot",
    ]
    base = model.text.sentence_embeddings(caps)
    assert base.shape == (3, 384)
    sims = base @ base.T
    assert sims[0, 1] > sims[0, 2] + 0.1
    out = model.encode_text(caps)
    assert out.shape == (3, 512)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(3))
    # Cached: the second call returns the same embeddings without re-encoding.
    assert torch.equal(model.text.sentence_embeddings(caps[:1])[0], base[0])


def test_crops_and_negatives_follow_the_seed_not_os_entropy():
    """The seed in run.json reproduces a batch: same (seed, clips, occurrence) -> the same crops
    and negatives; another seed, or the same batch met again -> other draws; no generator is refused."""
    from soundtrack.distributed.batches import batch_rng

    rows = [_clip(np.random.default_rng(i), period=p) for i, p in enumerate((0.4, 0.5, 0.6))]
    ids = ["a", "b", "c"]
    cfg = ObjectiveConfig(crop_s=4.0)

    def draw(seed, occurrence=0):
        b = make_batch(rows, cfg, batch_rng(seed, ids, occurrence))
        return b["offset_frame"].numpy() if torch.is_tensor(b["offset_frame"]) else np.asarray(b["offset_frame"]), b

    (o1, b1), (o2, b2) = draw(0), draw(0)
    np.testing.assert_array_equal(o1, o2)
    for k in ("music", "sfx"):
        np.testing.assert_array_equal(np.asarray(b1[k]), np.asarray(b2[k]))
    assert not np.array_equal(np.asarray(b1["music"]), np.asarray(draw(1)[1]["music"]))
    assert not np.array_equal(np.asarray(b1["music"]), np.asarray(draw(0, 1)[1]["music"]))
    with pytest.raises(ValueError, match="seeded"):
        make_batch(rows, cfg, None)
