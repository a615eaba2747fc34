"""Fast tests of the generator core: mel VAE, vocoders, UNet + attention, guidance, sampling.

Everything runs in-process on tiny sizes (no Ray). Hand-worked cases are spelled out in
the comments so a reader can check the numbers.
"""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest
import torch

from soundtrack.data.features import log_mel
from soundtrack.losses.diffusion import condition_dropout_mask, diffusion_loss
from soundtrack.losses.vae import vae_loss
from soundtrack.models.mel import MelFormat
from soundtrack.models.unet import CONDITIONS, Conditions, DenoiserConfig, SoundtrackDenoiser, build_unet
from soundtrack.models.vae import build_vae, decode_mel, encode_latents, load_vae, save_vae
from soundtrack.models.vocoder import GriffinLimVocoder, HiFiGANVocoder, load_vocoder
from soundtrack.modules.attention import (
    KIND_MUSIC,
    KIND_NULL,
    KIND_TEXT,
    KIND_VIDEO,
    SoundtrackAttnProcessor,
    column_times,
    feature_selector_keep,
    level_shape,
    segment_mask,
)
from soundtrack.pipelines.guidance import guided_prediction, normalized_weights
from soundtrack.pipelines.sampler import (
    SamplerConfig,
    equal_power_fades,
    join_windows,
    sample_latents,
    window_conditions,
    window_starts,
)
from soundtrack.pipelines.schedulers import alphas_cumprod, make_scheduler, training_scheduler, x0_error_gain

# diffusers' DPM-Solver calls np.array on a tensor (numpy 2 deprecation inside diffusers).
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

FPS = 10.0
D = 10.24


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One intra-op thread: on a 2-core machine shared with other jobs, two OpenMP threads
    made a tiny UNet training step 10-40x slower (barrier waits whenever one thread is
    descheduled) than one thread (0.13 s)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
TV = 103  # frames of a 10.24 s clip at 10 fps


def _tokens_times(n_text: int = 2) -> np.ndarray:
    """[null] + frames 0..102 + n_text text tokens, as the denoiser lays them out."""
    return np.concatenate([[np.nan], np.arange(TV) / FPS, [np.nan] * n_text])


def _small_cfg(**kw) -> DenoiserConfig:
    """The tiny profile on an 8 x 32 latent (faster tests; same code path)."""
    return DenoiserConfig.tiny(latent_hw=(8, 32), **kw)


def _conds(b: int, gen: torch.Generator, text: bool = True) -> Conditions:
    return Conditions(
        video=torch.randn(b, TV, 64, generator=gen),
        music=torch.randn(b, TV, 512, generator=gen),
        sfx=torch.randn(b, TV, 512, generator=gen),
        text=torch.randn(b, 3, 512, generator=gen) if text else None,
    )


def _wake_fusion(model: SoundtrackDenoiser) -> None:
    """Fusion projections start at zero (ControlNet style); give them weights so the
    fused stream matters in tests of untrained models."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.fusion_blocks.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)


# ----------------------------------------------------------------------------- attention masks


def test_segment_mask_hand_worked_k8():
    # D = 10.24 s, T_l = 8 columns of 1.28 s: centres 0.64, 1.92, 3.20, 4.48, 5.76, 7.04,
    # 8.32, 9.60 s = frame positions 6.4, 19.2, 32, 44.8, 57.6, 70.4, 83.2, 96;
    # k = 8 -> segments floor(pos / 8) = 0, 2, 4, 5, 7, 8, 10, 12.
    np.testing.assert_allclose(column_times(8, D), [0.64, 1.92, 3.2, 4.48, 5.76, 7.04, 8.32, 9.6])
    times = _tokens_times()
    m = segment_mask(8, D, times, 8).numpy()
    assert m.shape == (8, 1 + TV + 2)
    expected_frames = {
        0: range(0, 8),
        1: range(16, 24),
        2: range(32, 40),  # t = 3.2 s is exactly frame 32: segment 4, not 3
        3: range(40, 48),
        4: range(56, 64),
        5: range(64, 72),
        6: range(80, 88),
        7: range(96, 103),  # segment 12 = frames 96..103, the clip ends at 102
    }
    for col, frames in expected_frames.items():
        seen = set(np.flatnonzero(m[col, 1 : 1 + TV]))
        assert seen == set(frames), (col, sorted(seen))
        assert m[col, 0] and m[col, -1] and m[col, -2]  # null and text never masked


def test_segment_mask_matches_formula_for_all_k():
    times = _tokens_times(0)
    for k in (4, 8, 16, 32):
        for n_cols in (64, 32, 16, 8, 3):
            m = segment_mask(n_cols, D, times, k).numpy()
            for i in range(n_cols):
                seg = math.floor(round(FPS * (i + 0.5) * D / n_cols, 9) / k)
                for j in range(TV):
                    assert m[i, 1 + j] == (j // k == seg)
    # k = 4, column 2 of 8 (frame 32): frames 32..35
    m = segment_mask(8, D, times, 4).numpy()
    assert set(np.flatnonzero(m[2, 1:])) == {32, 33, 34, 35}


def test_segment_mask_dynamic_shots():
    # Shots start at frames 30 and 75: shot 0 = frames 0..29, 1 = 30..74, 2 = 75..102.
    # Column positions (frames) 6.4, 19.2, 32, 44.8, 57.6, 70.4, 83.2, 96 -> shots
    # 0, 0, 1, 1, 1, 1, 2, 2.
    times = _tokens_times()
    m = segment_mask(8, D, times, "dynamic", shots=[30, 75]).numpy()
    shot_of_col = [0, 0, 1, 1, 1, 1, 2, 2]
    ranges = [range(0, 30), range(30, 75), range(75, 103)]
    for col, s in enumerate(shot_of_col):
        assert set(np.flatnonzero(m[col, 1 : 1 + TV])) == set(ranges[s])
        assert m[col, 0] and m[col, -1]
    # No shots: one segment, everything visible; fractional boundaries (windowed videos).
    assert segment_mask(8, D, times, "dynamic", shots=[]).all()
    m = segment_mask(8, D, times, "dynamic", shots=[32.5]).numpy()
    assert not m[2, 1 + 33] and m[3, 1 + 33] and m[2, 1 + 32]  # column 2 is at frame 32 < 32.5


def test_level_shape_and_selector():
    assert level_shape(16 * 64, (16, 64)) == (16, 64)
    assert level_shape(8 * 32, (16, 64)) == (8, 32)
    assert level_shape(4 * 16, (16, 64)) == (4, 16)
    assert level_shape(3 * 2, (5, 3)) == (3, 2)  # ceil halving
    with pytest.raises(ValueError):
        level_shape(7, (16, 64))
    kinds = torch.tensor([KIND_NULL, KIND_VIDEO, KIND_MUSIC, KIND_TEXT])
    keep = feature_selector_keep(kinds, torch.tensor([999, 200, 199, 999]), torch.tensor([True, True, True, False]))
    assert keep.tolist() == [
        [True, False, False, True],  # t >= tau: text (and null)
        [True, False, False, True],  # t = tau counts as early
        [True, True, True, False],  # t < tau: video-derived
        [True, True, True, True],  # no text: video always
    ]


def test_processor_is_reshape_aware():
    """Perturbing one frame token changes only the queries of that frame's segment, at a
    lower UNet level whose width is derived from the sequence length."""
    from diffusers.models.attention_processor import Attention

    torch.manual_seed(0)
    attn = Attention(query_dim=16, cross_attention_dim=12, heads=2, dim_head=8)
    proc = SoundtrackAttnProcessor("segment", window_k=16)
    attn.set_processor(proc)
    h_l, w_l = 2, 8  # level 1 of a (4, 16) latent
    hidden = torch.randn(1, h_l * w_l, 16)
    times = torch.as_tensor(_tokens_times(1))
    tokens = torch.randn(1, len(times), 12)
    kw = dict(token_times=times, latent_hw=(4, 16), clip_seconds=D)
    base = attn(hidden, tokens, **kw)
    bumped = tokens.clone()
    bumped[0, 1 + 40] += 5.0  # frame 40 -> segment 2 of k = 16 (frames 32..47)
    out = attn(hidden, bumped, **kw)
    changed = (out - base).abs().amax(-1).reshape(h_l, w_l) > 1e-6
    # columns of width 1.28 s: positions 6.4, 19.2, 32, 44.8, ... -> segment 2 = cols 2, 3
    expected = torch.zeros(h_l, w_l, dtype=torch.bool)
    expected[:, 2:4] = True
    assert torch.equal(changed, expected)
    # the null / text tokens reach every query
    bumped = tokens.clone()
    bumped[0, -1] += 5.0
    assert ((attn(hidden, bumped, **kw) - base).abs().amax(-1) > 1e-6).all()


def test_denoiser_passes_named_kwargs(caplog):
    """The attention method reaches the processors (no kwarg silently dropped)."""
    gen = torch.Generator().manual_seed(0)
    model = SoundtrackDenoiser(_small_cfg()).eval()
    x = torch.randn(2, 4, 8, 32, generator=gen)
    conds = _conds(2, gen)
    with caplog.at_level(logging.WARNING), torch.no_grad():
        seg = model(x, torch.tensor([10, 900]), conds)
        glob = model(x, torch.tensor([10, 900]), conds, attention="global")
        seg4 = model(x, torch.tensor([10, 900]), conds, window_k=4)
    assert not [r for r in caplog.records if "cross_attention_kwargs" in r.getMessage()]
    assert (seg - glob).abs().max() > 1e-4
    assert (seg - seg4).abs().max() > 1e-4


# ----------------------------------------------------------------------------- guidance / dropout


def test_guidance_one_hot_equals_single_condition_pass():
    gen = torch.Generator().manual_seed(0)
    model = SoundtrackDenoiser(_small_cfg(attention="dynamic", feature_selector=True)).eval()
    _wake_fusion(model)
    b = 3
    conds = _conds(b, gen)
    conds.shots = [[20, 50], [], [70.5]]
    x = torch.randn(b, 4, 8, 32, generator=gen)
    t = torch.tensor([999, 500, 100])
    with torch.no_grad():
        for c in CONDITIONS:
            guided = guided_prediction(model, x, t, conds, scale=1.0, weights={c: 1.0})
            drop = torch.ones(b, len(CONDITIONS), dtype=torch.bool)
            drop[:, CONDITIONS.index(c)] = False
            direct = model(x, t, conds, drop)
            torch.testing.assert_close(guided, direct, atol=1e-5, rtol=1e-5)
        # and the formula with two weighted conditions, s = 2.5
        g = guided_prediction(model, x, t, conds, scale=2.5, weights={"video": 3.0, "text": 1.0})
        u = model(x, t, conds, torch.ones(b, 4, dtype=torch.bool))
        only = {}
        for c in ("video", "text"):
            d = torch.ones(b, 4, dtype=torch.bool)
            d[:, CONDITIONS.index(c)] = False
            only[c] = model(x, t, conds, d)
        ref = u + 2.5 * (0.75 * (only["video"] - u) + 0.25 * (only["text"] - u))
        torch.testing.assert_close(g, ref, atol=1e-5, rtol=1e-5)
    assert normalized_weights(("video", "music"), None) == {"video": 0.5, "music": 0.5}


def test_condition_dropout_frequencies():
    rng = np.random.default_rng(0)
    n = 100_000
    conds = ("video", "music", "sfx", "text")
    m = condition_dropout_mask(n, conds, rng).numpy()
    assert m.shape == (n, 4)
    kept = ~m
    # P(all dropped) = 0.10 + 0.70 * 0.1^4; P(only c kept) = 0.05 + 0.70 * 0.9 * 0.1^3;
    # P(c dropped) = 0.10 + 3 * 0.05 + 0.70 * 0.1.
    expect_all = 0.10 + 0.70 * 1e-4
    expect_one = 0.05 + 0.70 * 0.9 * 1e-3
    expect_drop = 0.10 + 3 * 0.05 + 0.70 * 0.1

    def close(freq, p):
        assert abs(freq - p) < 5 * math.sqrt(p * (1 - p) / n), (freq, p)

    close((kept.sum(1) == 0).mean(), expect_all)
    for j in range(4):
        only_j = (kept[:, j]) & (kept.sum(1) == 1)
        close(only_j.mean(), expect_one)
        close(m[:, j].mean(), expect_drop)
    # absent conditions are always dropped, rates are configurable
    m2 = condition_dropout_mask(20_000, ("video",), np.random.default_rng(1), p_all=0.5, p_one=0.0, p_each=0.0).numpy()
    assert m2[:, 1:].all()
    assert abs(m2[:, 0].mean() - 0.5) < 5 * math.sqrt(0.25 / 20_000)


# ----------------------------------------------------------------------------- sampling


def test_sampling_is_batch_independent():
    gen = torch.Generator().manual_seed(0)
    model = SoundtrackDenoiser(_small_cfg(attention="dynamic")).eval()
    _wake_fusion(model)
    conds = _conds(3, gen, text=False)
    conds.shots = [[20], [40, 80], []]
    ids = ["clip-a", "clip-b", "clip-c"]
    for sc in (SamplerConfig(num_steps=3), SamplerConfig(scheduler="ddpm", num_steps=3)):
        batch = sample_latents(model, conds, ids, seed=11, cfg=sc)
        alone = sample_latents(model, conds.select([1]), ids[1:2], seed=11, cfg=sc)
        assert torch.equal(batch[1], alone[0])
        other_seed = sample_latents(model, conds.select([1]), ids[1:2], seed=12, cfg=sc)
        assert not torch.equal(other_seed[0], alone[0])
    assert torch.isfinite(batch).all()


def test_diffusion_loss_falls():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    cfg = _small_cfg(prediction_type="v_prediction")
    model = SoundtrackDenoiser(cfg)
    sched = training_scheduler(cfg.prediction_type)
    latents = torch.randn(4, 4, 8, 32, generator=gen)
    conds = _conds(4, gen)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(40):
        # the same noise and timesteps every step: a fixed regression problem
        loss = diffusion_loss(model, sched, latents, conds, generator=torch.Generator().manual_seed(5))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < 0.6 * np.mean(losses[:5]), losses


def test_epsilon_vs_v_error_gain_at_t999(capsys):
    """Probe: how an output error at t = 999 is amplified in the clean-latent estimate."""
    ab = alphas_cumprod()
    assert ab[-1].item() == pytest.approx(2.569e-5, rel=1e-3)
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(1, 4, 8, 32, generator=gen)
    noise = torch.randn(1, 4, 8, 32, generator=gen)
    delta = 0.01 * torch.randn(1, 4, 8, 32, generator=gen)
    measured = {}
    for pt in ("epsilon", "v_prediction", "sample"):
        sched = make_scheduler("ddim", pt)
        sched.set_timesteps(200)
        t = sched.timesteps[0]
        assert int(t) == 999  # trailing spacing starts at the end of the schedule
        xt = sched.add_noise(x0, noise, t.reshape(1))
        exact = {"epsilon": noise, "v_prediction": sched.get_velocity(x0, noise, t.reshape(1)), "sample": x0}[pt]
        clean = sched.step(exact, t, xt).pred_original_sample
        perturbed = make_scheduler("ddim", pt)
        perturbed.set_timesteps(200)
        noisy = perturbed.step(exact + delta, t, xt).pred_original_sample
        measured[pt] = ((noisy - clean).norm() / delta.norm()).item()
        assert measured[pt] == pytest.approx(x0_error_gain(999, pt), rel=1e-3)
    with capsys.disabled():
        print(f"\n[probe] x0 error gain at t=999: epsilon {measured['epsilon']:.1f}x, "
              f"v {measured['v_prediction']:.3f}x, sample {measured['sample']:.3f}x")
    assert measured["epsilon"] > 150 and measured["v_prediction"] < 1.01


def test_join_windows_equal_power_and_length():
    sr = 16000
    fade_in, fade_out = equal_power_fades(sr)
    np.testing.assert_allclose(fade_in**2 + fade_out**2, 1.0, atol=1e-6)
    assert fade_in[0] < 1e-3 and fade_out[-1] < 1e-3
    # windows of 10.24 s, 1 s overlap: hop 9.24 s = 147 840 samples
    assert window_starts(10.24) == [0]
    assert window_starts(10.25) == [0, 147_840]
    assert window_starts(25.0) == [0, 147_840, 295_680]
    rng = np.random.default_rng(0)
    n = 163_840
    wins = [rng.standard_normal(n).astype(np.float32) for _ in range(3)]
    total = 400_000
    out = join_windows(wins, sr, 1.0, total)
    assert out.shape == (total,)
    np.testing.assert_array_equal(out[:147_840], wins[0][:147_840])  # untouched before the fade
    ov = slice(147_840, 163_840)
    np.testing.assert_allclose(out[ov], wins[0][ov] * fade_out + wins[1][:sr] * fade_in, atol=1e-6)
    # equal power: uncorrelated unit-variance windows keep unit power through the fade
    assert abs(np.mean(out[ov] ** 2) - 1.0) < 0.05
    # coherent (equal) signals peak at sqrt(2) mid-fade, the equal-power signature
    ones = join_windows([np.ones(n, np.float32)] * 2, sr, 1.0)
    assert ones.shape == (2 * n - sr,)
    assert ones[147_840 + sr // 2] == pytest.approx(math.sqrt(2), abs=1e-3)
    with pytest.raises(ValueError):
        join_windows(wins[:1], sr, 1.0, n + 1)


def test_window_conditions_interpolate_and_shift_shots():
    video = torch.arange(300, dtype=torch.float32).reshape(1, 300, 1).repeat(1, 1, 64)
    conds = Conditions(video=video, shots=[[50, 120.0, 250]])
    w = window_conditions(conds, 9.24)  # starts at frame 92.4
    assert w.video.shape == (1, 103, 64)
    np.testing.assert_allclose(w.video[0, :3, 0].numpy(), [92.4, 93.4, 94.4], atol=1e-4)
    assert w.shots == [[pytest.approx(27.6)]]  # 120 - 92.4; 50 and 250 fall outside
    late = window_conditions(conds, 25.0)  # frames 250.. 352, held at 299 past the end
    assert late.video[0, -1, 0].item() == 299.0


# ----------------------------------------------------------------------------- VAE / UNet sizes


def test_vae_tiny_shapes_and_roundtrip(tmp_path):
    torch.manual_seed(0)
    vae = build_vae("tiny").eval()
    fmt = vae.mel
    assert (fmt.n_mels, fmt.n_frames) == (64, 256)
    mel = torch.randn(2, 64, 256) - 5.0
    with torch.no_grad():
        z = encode_latents(vae, mel)
        assert z.shape == (2, 4, 32, 128)  # one down-sampling: the latent keeps pitch
        assert decode_mel(vae, z).shape == (2, 64, 256)
    loss, stats = vae_loss(vae, mel, generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert set(stats) == {"recon", "kl"} and math.isfinite(loss.item())
    save_vae(vae, tmp_path / "vae")
    again = load_vae(tmp_path / "vae")
    assert type(again).__name__ == "MelVAE" and again.mel == fmt
    with torch.no_grad():
        torch.testing.assert_close(decode_mel(again, z), decode_mel(vae, z))


def test_external_audioldm_layout_vae_and_scaling():
    """A plain AutoencoderKL (AudioLDM/MusicLDM layout: time as height) round-trips to
    (B, C, F_l, T_l) latents; fit_scaling_factor gives unit-std latents."""
    from diffusers import AutoencoderKL

    from soundtrack.models.vae import fit_scaling_factor

    torch.manual_seed(0)
    ext = AutoencoderKL(in_channels=1, out_channels=1, down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16),
                        latent_channels=8, norm_num_groups=4).eval()
    mel = torch.randn(2, 64, 128) - 5.0
    with torch.no_grad():
        z = encode_latents(ext, mel)
        assert z.shape == (2, 8, 32, 64)  # (C, F/2, T/2): time back on the last axis
        assert decode_mel(ext, z).shape == (2, 64, 128)
    vae = build_vae("tiny").eval()
    factor = fit_scaling_factor(vae, mel)
    assert vae.config.scaling_factor == factor
    with torch.no_grad():
        assert encode_latents(vae, mel).std().item() == pytest.approx(1.0, rel=1e-4)


def test_generate_video_windows_and_length():
    from soundtrack.pipelines.sampler import generate_video

    torch.manual_seed(0)
    vae = build_vae("tiny").eval()
    model = SoundtrackDenoiser(DenoiserConfig.tiny()).eval()  # latent 4 x 16 x 64 = the tiny VAE's
    gen = torch.Generator().manual_seed(0)
    conds = Conditions(video=torch.randn(1, 121, 64, generator=gen))  # 12.1 s of frames
    voc = GriffinLimVocoder(vae.mel, n_iter=2)
    cfg = SamplerConfig(num_steps=2)
    wav = generate_video(model, vae, voc, conds, 12.0, "vid", seed=3, cfg=cfg)
    assert wav.shape == (192_000,) and np.isfinite(wav).all()  # 2 windows, trimmed to 12 s
    again = generate_video(model, vae, voc, conds, 12.0, "vid", seed=3, cfg=cfg)
    np.testing.assert_array_equal(wav, again)


def test_paper_vae_and_unet_build_on_meta():
    with torch.device("meta"):
        vae = build_vae("paper")
        den = SoundtrackDenoiser(DenoiserConfig.paper())
        z = encode_latents(vae, torch.empty(1, 128, 1024))
        out = den(torch.empty(1, 8, 32, 256), torch.tensor([5]),
                  Conditions(video=torch.empty(1, TV, 512), music=torch.empty(1, TV, 512), sfx=torch.empty(1, TV, 512)))
    assert z.shape == (1, 8, 32, 256) and z.device.type == "meta"
    assert out.shape == (1, 8, 32, 256)
    assert den.unet.config.block_out_channels == (128, 256, 384, 640)
    n_vae = sum(p.numel() for p in vae.parameters())
    n_unet = sum(p.numel() for p in den.parameters())
    assert 20e6 < n_vae < 200e6 and 50e6 < n_unet < 1e9


def test_tiny_unet_has_no_full_resolution_attention():
    unet = build_unet(DenoiserConfig.tiny())
    assert unet.down_blocks[0].__class__.__name__ == "DownBlock2D"
    assert unet.up_blocks[-1].__class__.__name__ == "UpBlock2D"


def test_denoiser_save_load(tmp_path):
    gen = torch.Generator().manual_seed(0)
    model = SoundtrackDenoiser(_small_cfg(fusion="concat")).eval()
    _wake_fusion(model)
    model.save(tmp_path / "den")
    again = SoundtrackDenoiser.load(tmp_path / "den").eval()
    assert again.config == model.config
    x = torch.randn(1, 4, 8, 32, generator=gen)
    conds = _conds(1, gen)
    with torch.no_grad():
        torch.testing.assert_close(again(x, 3, conds), model(x, 3, conds))


# ----------------------------------------------------------------------------- vocoders


def _tone(seconds: float = 2.56, sr: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (0.3 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)


def _spectral_convergence(a: torch.Tensor, b: torch.Tensor) -> float:
    """||A - B||_F / ||A||_F of linear mel magnitudes."""
    return float((a.exp() - b.exp()).norm() / a.exp().norm())


def test_griffinlim_inverts_tone():
    wav = _tone()
    for fmt, max_sc, max_hz in ((MelFormat.paper(), 0.15, 3.0), (MelFormat.tiny(), 0.2, 40.0)):
        mel = fmt.from_features(log_mel(wav))[None]
        out = GriffinLimVocoder(fmt, n_iter=32)(mel)
        assert out.shape == (1, wav.shape[0])
        again = fmt.from_features(log_mel(out[0].numpy()))[None]
        assert _spectral_convergence(mel, again) < max_sc
        spec = np.abs(np.fft.rfft(out[0].numpy()[4000:20000] * np.hanning(16000)))
        peak_hz = np.argmax(spec) * 16000 / 16000
        assert abs(peak_hz - 440.0) <= max_hz, peak_hz
    # deterministic
    mel = MelFormat.paper().from_features(log_mel(wav[:8000]))[None]
    assert torch.equal(load_vocoder("griffinlim")(mel), load_vocoder("griffinlim")(mel))


def test_hifigan_loads_from_directory(tmp_path):
    from transformers import SpeechT5HifiGan, SpeechT5HifiGanConfig

    torch.manual_seed(0)
    for n_mels, fmt in ((128, MelFormat.paper()), (64, MelFormat.tiny())):
        cfg = SpeechT5HifiGanConfig(
            model_in_dim=n_mels, sampling_rate=16000, upsample_initial_channel=32,
            upsample_rates=[5, 4, 8], upsample_kernel_sizes=[11, 8, 16],
            resblock_kernel_sizes=[3], resblock_dilation_sizes=[[1, 3]], normalize_before=False,
        )
        d = tmp_path / f"vocoder{n_mels}"
        SpeechT5HifiGan(cfg).save_pretrained(d)
        voc = load_vocoder(str(d), fmt)
        assert isinstance(voc, HiFiGANVocoder)
        assert voc.identity == (n_mels == 128)  # same bank and grid -> fed as is
        mel = fmt.from_features(log_mel(_tone(1.28)))[None]  # 128 frames at 10 ms
        wav = voc(mel)
        assert wav.shape == (1, 128 * 160) and torch.isfinite(wav).all()


def test_noise_schedule_is_saved_with_the_model_and_used_by_the_sampler(tmp_path, caplog):
    """A model saved with a non-default schedule loads it back (scheduler/scheduler_config.json,
    diffusers' format) and samples on it; a directory without the file (every model saved
    before) loads with the default schedule and says so."""
    import shutil

    from diffusers import DDPMScheduler

    from soundtrack.errors import GeneratorError
    from soundtrack.pipelines.generator import SoundtrackGenerator, build_tiny_generator
    from soundtrack.pipelines.schedulers import DEFAULT_SCHEDULE, NoiseSchedule

    custom = NoiseSchedule(num_train_timesteps=1000, beta_start=0.001, beta_end=0.03, beta_schedule="scaled_linear")
    built = build_tiny_generator(tmp_path / "model", seed=0, num_steps=2, gl_iterations=2, schedule=custom)
    path = tmp_path / "model" / "scheduler" / "scheduler_config.json"
    assert path.is_file()
    pt = built.denoiser.config.prediction_type
    saved = DDPMScheduler.from_pretrained(tmp_path / "model" / "scheduler")  # a plain diffusers config
    assert saved.config.prediction_type == pt and saved.config.beta_schedule == "scaled_linear"

    gen = SoundtrackGenerator.load(tmp_path / "model")
    assert gen.schedule == custom
    sched = gen.make_scheduler()
    torch.testing.assert_close(sched.alphas_cumprod, saved.alphas_cumprod)
    torch.testing.assert_close(sched.betas, make_scheduler("dpmsolver++", pt, custom).betas)
    default = make_scheduler("dpmsolver++", pt)
    assert not torch.allclose(sched.alphas_cumprod, default.alphas_cumprod)
    assert (sched.config.beta_start, sched.config.beta_end) == (0.001, 0.03)
    assert torch.allclose(alphas_cumprod(custom).float(), saved.alphas_cumprod, atol=1e-6)

    # the sampler runs on the loaded schedule: the same output as the in-memory model's, and
    # not the output of the same weights on the default schedule
    frames = np.random.default_rng(0).integers(0, 255, (12, 32, 32, 3), dtype=np.uint8)
    wav = gen.generate(frames, seed=0)
    np.testing.assert_array_equal(wav, built.generate(frames, seed=0))
    old = tmp_path / "old"
    shutil.copytree(tmp_path / "model", old)
    shutil.rmtree(old / "scheduler")
    with caplog.at_level(logging.INFO, logger="soundtrack.pipelines.generator"):
        legacy = SoundtrackGenerator.load(old)
    assert legacy.schedule == DEFAULT_SCHEDULE
    assert any("has no scheduler/scheduler_config.json" in r.getMessage() and "default noise schedule" in r.getMessage()
               for r in caplog.records)
    assert not np.array_equal(wav, legacy.generate(frames, seed=0))
    legacy.schedule = custom
    np.testing.assert_array_equal(wav, legacy.generate(frames, seed=0))

    # a re-save keeps the schedule; a file that disagrees with the denoiser is refused
    gen.save(tmp_path / "again")
    assert SoundtrackGenerator.load(tmp_path / "again").schedule == custom
    doc = json.loads(path.read_text())
    path.write_text(json.dumps({**doc, "prediction_type": "sample" if pt != "sample" else "epsilon"}))
    with pytest.raises(GeneratorError, match="prediction_type"):
        SoundtrackGenerator.load(tmp_path / "model")
    path.unlink()
    with pytest.raises(GeneratorError, match="scheduler/ part lacks scheduler_config.json"):
        SoundtrackGenerator.load(tmp_path / "model")


def test_vae_floor_names_the_numbers_and_what_to_change():
    from soundtrack.eval.reconstruction import VAEQualityError, check_floor

    q = {"split": "val", "n_clips": 16, "l1": 0.44, "chroma_agreement": 0.094, "onset_f1": 0.63,
         "ceiling": {"chroma_agreement": 0.531, "onset_f1": 0.878}, "chroma_ratio": 0.094 / 0.531,
         "onset_ratio": 0.63 / 0.878, "latent_shape": [4, 16, 64]}
    with pytest.raises(VAEQualityError) as e:
        check_floor(q, min_chroma_ratio=0.8, min_onset_ratio=0.8)
    msg = str(e.value)
    assert "chroma agreement 0.094 is 18% of the mel -> vocoder ceiling 0.531" in msg
    assert "onset F1 0.630 is 72%" in msg and "train.vae_steps" in msg and "train.vae_min_chroma_ratio" in msg
    check_floor(q, min_chroma_ratio=0.15, min_onset_ratio=0.7)  # above both floors: no error
    with pytest.raises(VAEQualityError, match="onset F1"):
        check_floor(q, min_chroma_ratio=0.15, min_onset_ratio=0.75)
