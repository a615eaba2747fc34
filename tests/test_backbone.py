"""A diffusers AudioLDM / MusicLDM directory as the generator's backbone (``soundtrack.models.backbones``).

A tiny directory of the real layout is built in tmp (``model_index.json``, ``vae/``, ``unet/``,
``vocoder/``, ``scheduler/``, safetensors; no text encoder): an ``AutoencoderKL`` used with
AudioLDM's (B, 1, T, n_mels) orientation, a ``UNet2DConditionModel`` configured as AudioLDM's
(``simple_projection`` class embedding of a 512-d vector, concatenated; per-level
``cross_attention_dim``; 8 latent channels), a ``SpeechT5HifiGan`` on 64 mels at hop 160 and a
DDIM scheduler config. Then: loading and its refusals, the UNet as our denoiser (orientation,
exact pretrained start, fusion on the time rows), two fine-tuning steps of the diffusion
solver in this process, save -> ``SoundtrackGenerator.load`` -> generate from video frames, and
the train stage's backbone pieces (no Ray running). Clips are 2.56 s (a 64 x 16 latent; the
real 10.24 s gives 256 x 16) to stay small.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from soundtrack.config import TrainSection, to_dict
from soundtrack.errors import BackboneError, ConfigError
from soundtrack.models.backbones import (
    BackboneDenoiser,
    BackboneOptions,
    backbone_log_mels,
    load_denoiser,
    load_ldm_backbone,
)
from soundtrack.models.unet import CONDITIONS, Conditions
from soundtrack.pipelines.backbone import backbone_generator, backbone_noise_schedule

# diffusers' DPM-Solver calls np.array on a tensor (numpy 2 deprecation inside diffusers).
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

CLIP_S = 2.56  # 256 mel frames at hop 160
N_FRAMES = 25  # video frames generated from: 2.5 s, one window
CLASS_DIM = 512  # AudioLDM's CLAP width


def _write_tiny_ldm(root: Path, pipeline: str = "AudioLDMPipeline") -> Path:
    """A tiny pipeline directory of the AudioLDM / MusicLDM layout (random weights, seed 0)."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import SpeechT5HifiGan, SpeechT5HifiGanConfig

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        vae = AutoencoderKL(in_channels=1, out_channels=1, down_block_types=("DownEncoderBlock2D",) * 3,
                            up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(8, 16, 16),
                            layers_per_block=1, latent_channels=8, norm_num_groups=8, sample_size=64,
                            scaling_factor=0.9227914214134216)
        unet = UNet2DConditionModel(sample_size=64, in_channels=8, out_channels=8,
                                    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), block_out_channels=(16, 32),
                                    layers_per_block=1, norm_num_groups=8, cross_attention_dim=(16, 32),
                                    attention_head_dim=2, class_embed_type="simple_projection",
                                    projection_class_embeddings_input_dim=CLASS_DIM, class_embeddings_concat=True)
        vocoder = SpeechT5HifiGan(SpeechT5HifiGanConfig(
            model_in_dim=64, sampling_rate=16000, upsample_initial_channel=32, upsample_rates=[5, 4, 2, 2, 2],
            upsample_kernel_sizes=[16, 16, 8, 4, 4], resblock_kernel_sizes=[3], resblock_dilation_sizes=[[1]],
            normalize_before=False))
        with torch.no_grad():  # transformers' init (std 0.01) gives ~1e-9 output; 0.15 gives ~0.1
            for prm in vocoder.parameters():
                if prm.dim() > 1:
                    prm.normal_(0.0, 0.15)
    DDIMScheduler(num_train_timesteps=1000, beta_start=0.0015, beta_end=0.0195, beta_schedule="scaled_linear",
                  prediction_type="epsilon").save_pretrained(root / "scheduler")
    vae.save_pretrained(root / "vae", safe_serialization=True)
    unet.save_pretrained(root / "unet", safe_serialization=True)
    vocoder.save_pretrained(root / "vocoder", safe_serialization=True)
    # as on the hub: the text parts are listed, but their folders are not needed (none here)
    (root / "model_index.json").write_text(json.dumps({
        "_class_name": pipeline, "_diffusers_version": "0.21.0", "scheduler": ["diffusers", "DDIMScheduler"],
        "text_encoder": ["transformers", "ClapTextModelWithProjection"], "tokenizer": ["transformers", "RobertaTokenizerFast"],
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
        "vocoder": ["transformers", "SpeechT5HifiGan"]}))
    return root


@pytest.fixture(scope="module")
def ldm_dir(tmp_path_factory) -> Path:
    return _write_tiny_ldm(tmp_path_factory.mktemp("audioldm") / "tiny-audioldm")


@pytest.fixture(scope="module")
def encoders():
    """Tiny random contrastive encoders (32 px frames, 16-d video, 32-d music / sfx spaces)."""
    from soundtrack.models.encoders import ContrastiveConfig, build_contrastive

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        cfg = ContrastiveConfig.tiny(embed_dim=32, video_input_size=None, video_channels=(8, 16), video_dim=16,
                                     adaptor_groups=4, temporal_heads=4, audio_channels=16, audio_dim=16,
                                     use_text=False)
        return build_contrastive(cfg).eval()


@pytest.fixture(scope="module")
def clips():
    """4 synthetic clips of 2.56 s: frames (26, 32, 32, 3) uint8 and the 16 kHz mix."""
    from soundtrack.data import synth

    out = [synth.render_clip(synth.plan_clip(0, i, "easy", duration_s=CLIP_S), size=32, fps=10.0, sr=16000)
           for i in range(4)]
    return np.stack([o[0] for o in out]), np.stack([o[3] for o in out])


def _dims(encoders) -> dict:
    return {"video_dim": encoders.cfg.video_dim, "music_dim": encoders.cfg.embed_dim, "sfx_dim": encoders.cfg.embed_dim}


# ----------------------------------------------------------------------------- loading


def test_load_reads_the_parts_and_the_backbones_mel_format(ldm_dir):
    from diffusers import AutoencoderKL

    from soundtrack.models.vae import MelVAE, decode_mel, encode_latents

    bb = load_ldm_backbone(ldm_dir, clip_s=CLIP_S)
    assert bb.kind == "audioldm" and bb.prediction_type == "epsilon"
    fe = bb.mel.features
    # AudioLDM's front end: 16 kHz, STFT 1024 / hop 160, 64 bands up to 8 kHz, ln(max(., 1e-5))
    assert (fe.sr, fe.n_fft, fe.hop, fe.win, fe.n_mels, fe.fmin, fe.fmax, fe.log_floor) == (
        16000, 1024, 160, 1024, 64, 0.0, 8000.0, 1e-5)
    assert (bb.mel.n_mels, bb.mel.n_frames, bb.mel.pool_freq, bb.mel.pool_time) == (64, 256, 1, 1)
    schedule = backbone_noise_schedule(bb)
    assert (schedule.beta_schedule, schedule.beta_start, schedule.beta_end) == ("scaled_linear", 0.0015, 0.0195)
    assert isinstance(bb.vae, AutoencoderKL) and not isinstance(bb.vae, MelVAE)
    assert bb.vocoder.identity  # the vocoder takes the backbone's mel as it is
    # our layout in and out of the AudioLDM VAE: (B, n_mels, T) -> (B, 8, 16, 64) -> (B, 64, 256)
    mel = torch.randn(1, 64, 256) - 4.0
    with torch.no_grad():
        lat = encode_latents(bb.vae, mel)
        assert lat.shape == (1, 8, 16, 64) and decode_mel(bb.vae, lat).shape == (1, 64, 256)
    cfg = bb.denoiser_config(16, 32, 32)
    assert (cfg.latent_channels, cfg.latent_hw, cfg.clip_seconds, cfg.block_out_channels) == (8, (16, 64), CLIP_S, (16, 32))
    assert (cfg.prediction_type, cfg.token_sources, cfg.fusion) == ("epsilon", (), "add")
    with pytest.raises(ConfigError, match=r"train.denoiser keys \['attention'\] are set by the backbone"):
        bb.denoiser_config(16, 32, 32, overrides={"attention": "segment"})
    with pytest.raises(ConfigError, match="'concat' widens the UNet's conv_in"):
        bb.denoiser_config(16, 32, 32, overrides={"fusion": "concat"})


def test_a_directory_missing_a_part_or_of_another_pipeline_is_refused(ldm_dir, tmp_path):
    for part in ("unet", "vocoder"):
        d = tmp_path / f"no-{part}"
        shutil.copytree(ldm_dir, d)
        shutil.rmtree(d / part)
        with pytest.raises(BackboneError, match=rf"\(AudioLDMPipeline\) lacks {part}/\. Copy the complete pipeline"):
            load_ldm_backbone(d)
    # .bin weights only: named, and how to convert them once
    d = tmp_path / "bin-only"
    shutil.copytree(ldm_dir, d)
    (d / "unet" / "diffusion_pytorch_model.safetensors").rename(d / "unet" / "diffusion_pytorch_model.bin")
    with pytest.raises(BackboneError, match=r"lacks unet/diffusion_pytorch_model.safetensors.*safe_serialization=True"):
        load_ldm_backbone(d)
    # no index, AudioLDM 2, MusicLDM
    d = tmp_path / "no-index"
    shutil.copytree(ldm_dir, d)
    (d / "model_index.json").unlink()
    with pytest.raises(BackboneError, match="has no model_index.json, so it is not a diffusers pipeline directory"):
        load_ldm_backbone(d)
    (d / "model_index.json").write_text(json.dumps({"_class_name": "AudioLDM2Pipeline"}))
    with pytest.raises(BackboneError, match="AudioLDM2Pipeline directory, which is not supported as a backbone"):
        load_ldm_backbone(d)
    (d / "model_index.json").write_text(json.dumps({"_class_name": "MusicLDMPipeline"}))
    assert load_ldm_backbone(d, components=()).kind == "musicldm"
    with pytest.raises(BackboneError, match="is not a directory"):
        load_ldm_backbone(tmp_path / "nowhere")
    # a UNet of another kind: no CLAP class embedding, or a cross-attention that wants a context
    d = tmp_path / "other-unet"
    shutil.copytree(ldm_dir, d)
    unet_cfg = json.loads((d / "unet" / "config.json").read_text())
    for change, match in (({"class_embed_type": None}, "class_embed_type=None; an AudioLDM / MusicLDM UNet"),
                          ({"cross_attention_dim": 768}, r"one cross_attention_dim \(768\): it expects a token context")):
        (d / "unet" / "config.json").write_text(json.dumps({**unet_cfg, **change}))
        with pytest.raises(BackboneError, match=match):
            load_ldm_backbone(d, components=())


# ----------------------------------------------------------------------------- the denoiser


def test_the_pretrained_unet_is_the_denoiser_time_on_its_rows(ldm_dir, encoders):
    bb = load_ldm_backbone(ldm_dir, components=("unet",), clip_s=CLIP_S)
    cfg = bb.denoiser_config(**_dims(encoders))
    torch.manual_seed(1)
    den = BackboneDenoiser(cfg, bb.unet, BackboneOptions.from_dict({"class_source": "music"}))
    assert isinstance(den, BackboneDenoiser) and den.unet is bb.unet
    assert den.conditions_used == ("video", "music", "sfx")
    b, tv = 2, 26
    conds = Conditions(video=torch.randn(b, tv, 16), music=torch.randn(b, tv, 32), sfx=torch.randn(b, tv, 32))
    x, t = torch.randn(b, 8, 16, 64), torch.tensor([5, 700])
    seen = {}  # conv_in's input shape and its output after the fusion hook (hooks run in order)
    den.unet.conv_in.register_forward_hook(lambda m, a, o: seen.update(shape=tuple(a[0].shape), out=o.detach()))
    with torch.no_grad():
        out = den(x, t, conds)
        assert seen["shape"] == (b, 8, 64, 16)  # AudioLDM's orientation: time on the rows
        # step 0 is exactly the pretrained UNet, driven by the unit class vector
        labels = den.class_vector(conds, torch.zeros(b, 4, dtype=torch.bool))
        torch.testing.assert_close(labels.norm(dim=-1), torch.ones(b))
        ref = bb.unet(x.transpose(-1, -2), t, encoder_hidden_states=None, class_labels=labels).sample
        assert out.shape == x.shape and torch.equal(out, ref.transpose(-1, -2))
        # a dropped class source is the learned null vector, the same for every example
        drop = torch.zeros(b, 4, dtype=torch.bool)
        drop[:, CONDITIONS.index("music")] = True
        null = den.class_vector(conds, drop)
        assert torch.equal(null[0], null[1]) and not torch.allclose(null, labels)
        # fusion: with its input projection switched on, late video frames change only late rows
        torch.nn.init.normal_(den.fusion_in.weight)
        den(x, t, conds)
        before = seen["out"]
        late = dataclasses.replace(conds, video=conds.video.clone())
        late.video[:, 20:] += 5.0  # frames from 2.0 s on
        den(x, t, late)
        rows = (torch.arange(64) + 0.5) * CLIP_S / 64  # row times (s)
        changed = (seen["out"] - before).abs().amax(dim=(0, 1, 3)) > 1e-6
        assert changed[rows > 2.0].all() and not changed[rows < 1.9].any()


# ----------------------------------------------------------------------------- fine-tuning


def _cache_columns(bb, encoders, frames, mixes) -> dict:
    """Latent-cache rows as the train stage writes them: backbone latents + video conditions."""
    from soundtrack.data.shards import pack_column
    from soundtrack.models.conditioning import video_conditions
    from soundtrack.models.vae import encode_latents

    with torch.no_grad():
        lat = encode_latents(bb.vae, backbone_log_mels(mixes, bb.mel))
        conds = video_conditions(encoders, frames)
    cols = {}
    for name, arr in (("latents", lat), ("video", conds.video), ("music", conds.music), ("sfx", conds.sfx)):
        cols.update(pack_column(name, arr.float().numpy()))
    cols["shots"] = np.asarray([json.dumps(s) for s in conds.shots], dtype=object)
    return cols


def test_fine_tune_save_reload_and_generate_from_video(ldm_dir, encoders, clips, tmp_path):
    from soundtrack.pipelines.generator import SoundtrackGenerator
    from soundtrack.pipelines.sampler import SamplerConfig
    from soundtrack.solvers.base import LocalReporter, numpy_batches
    from soundtrack.solvers.diffusion import DiffusionSolver

    frames, mixes = clips
    bb = load_ldm_backbone(ldm_dir, clip_s=CLIP_S)
    cols = _cache_columns(bb, encoders, frames, mixes)
    assert cols["latents__shape"].tolist() == [[8, 16, 64]] * 4

    sec = TrainSection(backbone=str(ldm_dir), unet_steps=2, batch_size=2, lr=1e-3, warmup_steps=1, log_every=1,
                       checkpoint_every=2, torch_threads=None)
    config = {"section": to_dict(sec), "denoiser": dataclasses.asdict(bb.denoiser_config(**_dims(encoders)))}
    reporter = LocalReporter(tmp_path / "ckpt")
    solver = DiffusionSolver(config, tmp_path / "run")
    assert solver.schedule == backbone_noise_schedule(bb)  # the backbone's own schedule
    res = solver.fit(numpy_batches(cols, 2, seed=0), reporter)
    assert res["step"] == 2 and np.isfinite(res["loss"])
    assert solver.sched.config.prediction_type == "epsilon"

    den = load_denoiser(reporter.latest() / "denoiser")
    assert isinstance(den, BackboneDenoiser)
    tuned, orig = dict(den.unet.named_parameters()), dict(bb.unet.named_parameters())
    assert tuned.keys() == orig.keys()
    changed = [k for k in orig if not torch.equal(tuned[k], orig[k])]
    assert len(changed) > len(orig) // 2, f"only {len(changed)} of {len(orig)} UNet tensors changed"
    assert any(p.abs().sum() > 0 for p in den.fusion_blocks.parameters())  # zero-initialised, now trained

    gen = backbone_generator(bb, encoders, den, frame_size=32, sampler=SamplerConfig(num_steps=2), card={"test": True})
    gen.save(tmp_path / "model")
    assert (tmp_path / "model" / "vocoder" / "model.safetensors").is_file()
    loaded = SoundtrackGenerator.load(tmp_path / "model")
    assert isinstance(loaded.denoiser, BackboneDenoiser) and loaded.mel_format == bb.mel
    assert loaded.schedule == backbone_noise_schedule(bb) and loaded.conditions == ("video", "music", "sfx")
    assert loaded.card["backbone"]["kind"] == "audioldm" and loaded.vocoder.identity

    a, b = frames[0, :N_FRAMES], frames[1, :N_FRAMES]
    wav_a, wav_b = loaded.generate(a, seed=0), loaded.generate(b, seed=0)
    n = loaded.n_samples(N_FRAMES)
    assert n == 40000 and wav_a.shape == wav_b.shape == (n,)
    assert np.isfinite(wav_a).all() and np.isfinite(wav_b).all() and np.abs(wav_a).max() > 0
    assert np.abs(wav_a - wav_b).max() > 1e-4  # another video, another soundtrack (same seed)
    # the directory holds the whole model: every weight came back
    for mine, back in ((gen.vae, loaded.vae), (gen.denoiser, loaded.denoiser), (gen.vocoder.model, loaded.vocoder.model),
                       (gen.encoders, loaded.encoders)):
        want, got = mine.state_dict(), back.state_dict()
        assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)


def test_a_frozen_unet_trains_only_the_new_projections(ldm_dir, encoders):
    bb = load_ldm_backbone(ldm_dir, components=("unet",), clip_s=CLIP_S)
    den = bb.denoiser(bb.denoiser_config(**_dims(encoders)), {"trainable": "conditioning", "class_source": "video"})
    trainable = {n for n, p in den.named_parameters() if p.requires_grad}
    assert trainable and not any(n.startswith("unet.") for n in trainable)
    assert {"class_proj.1.weight", "class_null", "fusion_in.weight"} <= trainable
    with pytest.raises(ConfigError, match="class_source must be one of music, video, sfx, none"):
        bb.denoiser(bb.denoiser_config(**_dims(encoders)), {"class_source": "text"})


# ----------------------------------------------------------------------------- the train stage


def test_train_stage_takes_the_backbones_vae_mel_and_schedule(ldm_dir, encoders, clips, tmp_path):
    """``prepare_backbone_run`` and the cache encoder, called directly (Ray is imported, not started)."""
    from soundtrack.data.shards import pack_array, unpack_array
    from soundtrack.distributed.train_backbone import BackboneCacheEncoder, prepare_backbone_run
    from soundtrack.models.vae import encode_latents
    from soundtrack.storage import RUN_CARD

    features = tmp_path / "features"
    features.mkdir()
    (features / RUN_CARD).write_text(json.dumps({"config": {"featurize": {"sr": 16000, "clip_s": CLIP_S}}}))
    run_dir = tmp_path / "run"
    sec = TrainSection(backbone=str(ldm_dir), denoiser={"fusion_dim": 32}, backbone_options={"class_source": "sfx"})
    br = prepare_backbone_run(sec, features, encoders.cfg, run_dir)
    state = json.loads((run_dir / "backbone" / "vae" / "trainer_state.json").read_text())
    assert state["phase"] == "backbone" and (run_dir / "backbone" / "vae" / "config.json").is_file()
    assert br.reused == {"vae": run_dir / "backbone" / "vae", "cache": run_dir / "cache"}
    assert br.sec.vae_check_clips == 0 and br.sec.vocoder == str(ldm_dir.resolve() / "vocoder")
    assert br.sec.noise_schedule["beta_schedule"] == "scaled_linear" and br.denoiser.fusion_dim == 32
    assert br.export_kwargs() == {"mel_format": br.mel, "conditions": ["video", "music", "sfx"]}
    for bad, match in (({"use_text": True}, "use_text needs cross-attention tokens"),
                       ({"reuse_vae_from": str(tmp_path)}, "exclude each other"),
                       ({"denoiser": {"window_k": 4}}, r"keys \['window_k'\] are set by the backbone"),
                       ({"noise_schedule": {"beta_end": 0.02}}, "differs from the backbone's")):
        with pytest.raises(ConfigError, match=match):
            prepare_backbone_run(dataclasses.replace(sec, **bad), features, encoders.cfg, run_dir)

    encoders.save(tmp_path / "encoders")
    frames, mixes = clips
    rows = []
    for i in range(2):
        row = {"clip_id": f"c{i}", "split": "train", "caption": ""}
        row.update(pack_array("frames", frames[i]))
        row.update(pack_array("wav_mix", mixes[i]))
        rows.append(row)
    enc = BackboneCacheEncoder(str(br.reused["vae"]), str(tmp_path / "encoders"), "mix", False, None, str(ldm_dir))
    out = enc(pd.DataFrame(rows))
    assert out["latents__shape"].tolist() == [[8, 16, 64]] * 2
    got = np.frombuffer(out["latents"][0], dtype=np.float32).reshape(8, 16, 64)
    wav = unpack_array("wav_mix", rows[0]["wav_mix"], rows[0]["wav_mix__shape"])  # the 16-bit audio the shard holds
    with torch.no_grad():
        want = encode_latents(enc.vae, backbone_log_mels([wav], br.mel))[0].numpy()
    np.testing.assert_allclose(got, want, atol=1e-3)

    # the export: the reused backbone VAE, a (here untrained) backbone denoiser, its vocoder and mel
    from soundtrack.distributed.train_generator import export_generator, sampler_config
    from soundtrack.models.backbones import backbone_denoiser
    from soundtrack.pipelines.generator import SoundtrackGenerator

    backbone_denoiser(ldm_dir, br.denoiser, br.sec.backbone_options).save(tmp_path / "unet-final")
    out = export_generator(tmp_path / "model", "tiny", tmp_path / "encoders", br.reused["vae"], tmp_path / "unet-final",
                           sampler_config({}), br.sec, card={"run": "test"}, frame_size=32, **br.export_kwargs())
    gen = SoundtrackGenerator.load(out)
    assert gen.mel_format == br.mel and gen.conditions == ("video", "music", "sfx") and gen.vocoder.identity
    assert gen.schedule == backbone_noise_schedule(ldm_dir) and gen.denoiser.options.class_source == "sfx"
