"""The generator container, model URIs and the ``soundtrack generate`` command.

Runs on an untrained tiny generator (``build_tiny_generator``): the soundtracks are noise,
but lengths, determinism, file formats, the model directory, URIs and error messages are
the real thing. Videos are real H.264 mp4s written with ``media.write_mp4``.

Length rule under test (documented in ``soundtrack.pipelines.generator``): a video decoded at
10 fps into ``T`` frames gets ``round(T / 10 * 16000)`` samples; a 13.7 s video has 137
frames, so 219 200 samples = round(13.7 * 16000).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile as sf
import torch

from soundtrack import cli
from soundtrack.data import media
from soundtrack.pipelines.generator import (
    GENERATOR_FILE,
    OVERRIDES,
    GeneratorError,
    SoundtrackGenerator,
    build_tiny_generator,
)
from soundtrack.stages.models import ModelURIError, load_generator, resolve_model_uri, split_uri
from soundtrack.stages.runs import UpstreamError

# diffusers' DPM-Solver calls np.array on a tensor (numpy 2 deprecation inside diffusers).
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

REPO = Path(__file__).resolve().parents[1]
SR = 16000
ODD_S = 13.7  # two windows (10.24 s + 3.46 s after the 1 s crossfade), not a multiple of anything
ODD_N = round(ODD_S * SR)  # 219 200 samples
CUT_FRAME = 60  # the test video cuts to a new background colour at 6.0 s


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One intra-op thread: with two on a busy 2-core machine torch ran 10-40x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _frames(n: int, size: int = 64) -> np.ndarray:
    """A bouncing white square on a dark blue background that cuts to orange at CUT_FRAME."""
    out = np.zeros((n, size, size, 3), np.uint8)
    for i in range(n):
        out[i] = (20, 30, 120) if i < CUT_FRAME else (200, 120, 30)
        # Position bounces between 0 and size - 12 px at 3 px per frame.
        span = size - 12
        x = abs((3 * i) % (2 * span) - span)
        out[i, 26:38, x : x + 12] = 255
    return out


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """(generator, its saved directory): untrained tiny model, seed 0."""
    d = tmp_path_factory.mktemp("tiny") / "model"
    return build_tiny_generator(d, seed=0), d


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """13.7 s, 64 x 64, 10 fps mp4s without and with an AAC track, and their frames."""
    d = tmp_path_factory.mktemp("videos")
    frames = _frames(int(round(ODD_S * 10)))
    rng = np.random.default_rng(1)
    media.write_mp4(d / "silent.mp4", frames, 10.0)
    media.write_mp4(d / "with_audio.mp4", frames, 10.0, audio=(0.1 * rng.standard_normal(ODD_N)).astype(np.float32))
    return {"silent": d / "silent.mp4", "audio": d / "with_audio.mp4", "frames": frames, "dir": d}


@pytest.fixture(scope="module")
def soundtrack_seed1(model, videos):
    """The soundtrack of the silent test video, seed 1, from ``generate_file``."""
    gen, _ = model
    out = videos["dir"] / "seed1.wav"
    res = gen.generate_file(videos["silent"], out, seed=1)
    wav, sr = sf.read(str(out), dtype="float32")
    return res, wav, sr


# ----------------------------------------------------------------------------- container


def test_save_load_round_trip_gives_identical_output(model, tmp_path):
    gen, d = model
    loaded = SoundtrackGenerator.load(d)
    assert loaded.to_dict() == gen.to_dict()
    doc = json.loads((d / GENERATOR_FILE).read_text())
    assert doc["format"] == "soundtrack-generator/1" and doc["fps"] == 10.0 and doc["sr"] == SR
    assert doc["conditions"] == ["video", "music", "sfx"] and doc["card"]["trained"] is False
    frames = _frames(31)  # 3.1 s: one window
    a = gen.generate(frames, seed=3)
    b = loaded.generate(frames, seed=3)
    assert a.dtype == np.float32 and a.shape == (round(3.1 * SR),)
    assert np.array_equal(a, b)
    # A second save of the loaded model is the same directory again.
    again = loaded.save(tmp_path / "copy")
    assert json.loads((again / GENERATOR_FILE).read_text()) == doc


def test_conditions_streams_shots_and_chunked_encoding(model):
    gen, _ = model
    frames = _frames(250)  # 25 s: three encoder chunks of 103 frames
    conds = gen.conditions_from_frames(frames)
    assert conds.video.shape == (1, 250, 16) and conds.music.shape == (1, 250, 32) and conds.sfx.shape == (1, 250, 32)
    assert conds.text is None
    assert CUT_FRAME in conds.shots[0]  # the colour cut is a shot boundary for "dynamic" attention
    # Chunks with context give the one-pass vectors (conv temporal model: finite reach).
    x = torch.from_numpy(np.ascontiguousarray(frames[:, ::2, ::2]))  # 32 px = frame_size: no resize
    small = gen.conditions_from_frames(frames[:, ::2, ::2]).video
    with torch.no_grad():
        whole = gen.encoders.video_features(x[None])
    assert torch.allclose(small, whole, atol=1e-5)


def test_generate_is_deterministic_and_seed_dependent(model):
    gen, _ = model
    frames = _frames(25)
    a, b = gen.generate(frames, seed=5), gen.generate(frames, seed=5)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, gen.generate(frames, seed=6))
    assert not np.array_equal(a, gen.generate(frames, seed=5, clip_id="other"))
    # A one-frame video is valid input: 0.1 s of sound.
    assert gen.generate(_frames(1), seed=0).shape == (1600,)


def test_text_conditioning_from_a_caption(tmp_path):
    """A model built with text: the caption becomes one text token and changes the output."""
    gen = build_tiny_generator(tmp_path / "text", seed=0, use_text=True)
    assert gen.conditions == ("video", "music", "sfx", "text")
    frames = _frames(12)
    conds = gen.conditions_from_frames(frames, caption="a calm piano over a bouncing ball")
    assert conds.text.shape == (1, 1, 32)
    with_text = gen.generate(frames, seed=0, caption="a calm piano over a bouncing ball")
    assert not np.array_equal(with_text, gen.generate(frames, seed=0))
    loaded = SoundtrackGenerator.load(tmp_path / "text")
    assert np.array_equal(with_text, loaded.generate(frames, seed=0, caption="a calm piano over a bouncing ball"))


def test_overrides_are_checked_and_applied(model):
    gen, _ = model
    with pytest.raises(ValueError, match="unknown generation option.*guidance_scale.*window_k"):
        gen.generate(_frames(5), steps=3)
    with pytest.raises(GeneratorError, match="num_steps must be an integer >= 1"):
        gen.sampler_config(num_steps=0)
    with pytest.raises(GeneratorError, match="scheduler must be one of"):
        gen.sampler_config(scheduler="euler")
    with pytest.raises(GeneratorError, match="weights name unknown conditions"):
        gen.sampler_config(weights={"speech": 1.0})
    cfg = gen.sampler_config(guidance_scale=1.0, weights={"video": 1}, num_steps=2, scheduler="ddim",
                             attention="dynamic", window_k=4)
    assert (cfg.guidance_scale, cfg.num_steps, cfg.scheduler, cfg.attention, cfg.window_k) == (1.0, 2, "ddim", "dynamic", 4)
    assert set(OVERRIDES) == {"guidance_scale", "weights", "num_steps", "scheduler", "attention", "window_k",
                              "selector_tau"}
    for bad, words in (({"guidance_scale": 30.5}, "guidance_scale must be a finite number in [0, 30]"),
                       ({"guidance_scale": "3"}, "guidance_scale must be a finite number"),
                       ({"weights": {"video": -1}}, "weights['video'] must be a finite number in [0, 10]"),
                       ({"weights": {"video": 0, "music": 0}}, "weights must not all be 0"),
                       ({"window_k": True}, "window_k must be an integer >= 1 (video frames)"),
                       ({"attention": "local"}, "attention must be one of global, segment, dynamic")):
        with pytest.raises(GeneratorError) as info:
            gen.sampler_config(**bad)
        assert words in str(info.value), str(info.value)
    frames = _frames(12)
    base = gen.generate(frames, seed=0)
    assert not np.array_equal(base, gen.generate(frames, seed=0, num_steps=2))
    assert not np.array_equal(base, gen.generate(frames, seed=0, attention="dynamic", guidance_scale=4.0))
    with pytest.raises(GeneratorError, match="trained without text"):
        gen.generate(frames, caption="a calm piano")
    with pytest.raises(GeneratorError, match="uint8 array"):
        gen.generate(frames.astype(np.float32))
    with pytest.raises(GeneratorError, match="no frames"):
        gen.generate(frames[:0])
    saved = gen.sampler
    try:
        gen.sampler = dataclasses.replace(saved, max_seconds=1.0)
        with pytest.raises(GeneratorError, match="longer than this model's limit"):
            gen.generate(frames)
    finally:
        gen.sampler = saved


def test_hifigan_vocoder_is_copied_into_the_model_dir(model, tmp_path):
    """A HiFi-GAN vocoder folder travels with the model (the registry copies model dirs)."""
    from transformers import SpeechT5HifiGan, SpeechT5HifiGanConfig

    gen, _ = model
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        # A tiny random HiFi-GAN on the tiny mel (64 bands), hop 160 = 5 * 4 * 8.
        hifi = SpeechT5HifiGan(SpeechT5HifiGanConfig(
            model_in_dim=64, sampling_rate=SR, upsample_initial_channel=16, upsample_rates=[5, 4, 8],
            upsample_kernel_sizes=[11, 8, 16], resblock_kernel_sizes=[3], resblock_dilation_sizes=[[1, 3]],
            normalize_before=False))
    hifi.save_pretrained(tmp_path / "hifigan")
    with_hifi = SoundtrackGenerator(gen.encoders, gen.vae, gen.denoiser, str(tmp_path / "hifigan"),
                                    profile="tiny", frame_size=gen.frame_size, sampler=gen.sampler)
    frames = _frames(20)
    wav = with_hifi.generate(frames, seed=0)
    assert wav.shape == (round(2.0 * SR),)
    with_hifi.save(tmp_path / "model")
    shutil.rmtree(tmp_path / "hifigan")
    doc = json.loads((tmp_path / "model" / GENERATOR_FILE).read_text())
    assert doc["vocoder"] == "vocoder" and (tmp_path / "model" / "vocoder" / "config.json").is_file()
    assert np.array_equal(SoundtrackGenerator.load(tmp_path / "model").generate(frames, seed=0), wav)
    shutil.rmtree(tmp_path / "model" / "vocoder")
    with pytest.raises(GeneratorError, match="vocoder folder .* is missing"):
        SoundtrackGenerator.load(tmp_path / "model")


def test_load_names_the_missing_part(model, tmp_path):
    _, d = model
    with pytest.raises(GeneratorError, match="no generator.json"):
        SoundtrackGenerator.load(tmp_path)
    broken = tmp_path / "broken"
    shutil.copytree(d, broken)
    shutil.rmtree(broken / "denoiser")
    with pytest.raises(GeneratorError, match="denoiser/ part is missing"):
        SoundtrackGenerator.load(broken)
    shutil.copytree(d / "denoiser", broken / "denoiser")
    (broken / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(GeneratorError, match=r"vae/ part lacks \['diffusion_pytorch_model.safetensors'\]"):
        SoundtrackGenerator.load(broken)
    doc = json.loads((d / GENERATOR_FILE).read_text())
    (broken / GENERATOR_FILE).write_text(json.dumps({**doc, "format": "other/9"}))
    with pytest.raises(GeneratorError, match="format 'other/9'"):
        SoundtrackGenerator.load(broken)


# ----------------------------------------------------------------------------- files


def test_generate_file_odd_length_wav_with_and_without_audio(model, videos, soundtrack_seed1, tmp_path):
    gen, _ = model
    res, wav, sr = soundtrack_seed1
    frames = media.read_frames(videos["silent"], size=(gen.frame_size, gen.frame_size))
    assert len(frames) == 137
    assert sr == SR and wav.shape == (ODD_N,) == (gen.n_samples(137),) and res.n_samples == ODD_N
    assert res.duration_s == pytest.approx(ODD_S) and res.real_time_factor > 0
    # The file holds generate()'s output (16-bit rounding: 1/32768).
    direct = gen.generate(frames, seed=1)
    assert np.abs(direct - wav).max() <= 1.0 / 32768 + 1e-7
    # An existing audio track is ignored: same frames, same soundtrack.
    out2 = tmp_path / "with_audio.wav"
    gen.generate_file(videos["audio"], out2, seed=1)
    assert np.array_equal(sf.read(str(out2), dtype="float32")[0], wav)


def test_generate_file_mp4_carries_the_soundtrack(model, videos, soundtrack_seed1, tmp_path):
    gen, _ = model
    _, wav, _ = soundtrack_seed1
    out = tmp_path / "scored.mp4"
    res = gen.generate_file(videos["silent"], out, seed=1)
    info = media.probe(out)
    assert info.has_video and info.has_audio and info.n_frames == 137
    assert info.duration_s == pytest.approx(ODD_S, abs=1e-3)
    # AAC pads its last 1024-sample frame; the container's duration marks the real end.
    track = media.read_audio(out, duration_s=info.duration_s)
    assert track.shape == wav.shape == (res.n_samples,)
    assert np.corrcoef(track, wav)[0, 1] > 0.9  # the track is this soundtrack (lossy AAC)


# ----------------------------------------------------------------------------- URIs


def _train_run(storage: Path, name: str, status: str, model_dir: Path | None) -> Path:
    """The training stage's layout: <storage>/train/<name>/{run.json, model/}."""
    run = storage / "train" / name
    run.mkdir(parents=True)
    (run / "run.json").write_text(json.dumps({"stage": "train", "name": name, "status": status,
                                              "command": f"soundtrack train experiments/{name}.yaml"}))
    if model_dir is not None:
        shutil.copytree(model_dir, run / "model")
    return run


def test_model_uris(model, tmp_path):
    _, d = model
    storage = tmp_path / "runs"
    run = _train_run(storage, "gen-tiny-s0-abc123", "finished", d)
    _train_run(storage, "gen-tiny-s1-def456", "running", d)
    assert resolve_model_uri("train:gen-tiny-s0-abc123", storage) == run / "model"
    assert resolve_model_uri("train:gen-tiny-s0", storage) == run / "model"  # unique prefix
    with pytest.raises(ModelURIError, match="ambiguous.*gen-tiny-s0-abc123, gen-tiny-s1-def456"):
        resolve_model_uri("train:gen-tiny", storage)
    with pytest.raises(ModelURIError, match="no training run 'nope'.*available.*gen-tiny-s0-abc123"):
        resolve_model_uri("train:nope", storage)
    with pytest.raises(UpstreamError, match="status 'running', not 'finished'.*soundtrack train"):
        resolve_model_uri("train:gen-tiny-s1", storage)
    entry = storage / "registry" / "best"
    shutil.copytree(d, entry / "model")
    shutil.copytree(d, storage / "registry" / "flat")  # a model dir as the entry itself
    assert resolve_model_uri("registry:best", storage) == entry / "model"
    assert resolve_model_uri("registry:flat", storage) == storage / "registry" / "flat"
    with pytest.raises(ModelURIError, match="no registry entry 'worst'.*best, flat"):
        resolve_model_uri("registry:worst", storage)
    assert resolve_model_uri(f"file:{d}") == d and resolve_model_uri(str(d)) == d
    with pytest.raises(ModelURIError, match="unknown model URI scheme 'hf'.*train, registry, file"):
        resolve_model_uri("hf:org/model", storage)
    with pytest.raises(ModelURIError, match="no generator.json"):
        resolve_model_uri(f"file:{tmp_path}", storage)
    with pytest.raises(ModelURIError, match="single folder names"):
        resolve_model_uri("train:../registry/best", storage)
    with pytest.raises(ModelURIError, match="does not exist"):
        resolve_model_uri(str(tmp_path / "missing"), storage)
    assert split_uri("C:/models/x") == ("file", "C:/models/x")  # a drive letter is not a scheme
    gen = load_generator("registry:best", storage)
    assert gen.directory == entry / "model" and gen.card["name"] == "tiny-untrained"


# ----------------------------------------------------------------------------- command


def _cli(*args: str) -> subprocess.Popen:
    """Starts ``python -m soundtrack.cli generate ARGS`` (one torch thread)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "soundtrack.cli", "generate", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)


def test_cli_generate_file_uri_and_train_run(model, videos, soundtrack_seed1, tmp_path):
    """Two real processes (run side by side: each spends most of its time importing)."""
    _, d = model
    _, wav, _ = soundtrack_seed1
    out = tmp_path / "out.wav"
    storage = tmp_path / "runs"
    _train_run(storage, "gen-tiny-s0-abc123", "finished", d)
    out_mp4 = tmp_path / "sub" / "scored.mp4"
    procs = [
        _cli("--video", str(videos["silent"]), "--model", f"file:{d}", "--out", str(out), "--seed", "1"),
        _cli("--video", str(videos["audio"]), "--model", "train:gen-tiny-s0", "--out", str(out_mp4),
             "--storage", str(storage), "--num-steps", "2", "--guidance-scale", "3.0", "--seed", "7"),
    ]
    results = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=300)
        results.append((p.returncode, stdout, stderr))
    (code, stdout, stderr), (code2, _, stderr2) = results
    assert code == 0, stderr
    assert str(out) in stdout and "real-time factor" in stdout and "2 windows" in stdout
    assert np.array_equal(sf.read(str(out), dtype="float32")[0], wav)  # same model, seed: same soundtrack
    assert code2 == 0, stderr2
    info = media.probe(out_mp4)
    assert info.has_audio and info.n_frames == 137
    assert len(media.read_audio(out_mp4, duration_s=info.duration_s)) == ODD_N


@pytest.fixture(scope="module")
def bad_inputs(videos):
    """Files the command must refuse, each with the words its message must contain."""
    d = videos["dir"]
    rng = np.random.default_rng(2)
    tone = (0.1 * rng.standard_normal(2 * SR)).astype(np.float32)
    # Audio-only mp4 container (AAC, no video stream), written with PyAV.
    with av.open(str(d / "audio_only.m4a"), "w", format="mp4") as c:
        st = c.add_stream("aac", rate=SR)
        st.layout = "mono"
        for k in range(0, len(tone), 1024):
            fr = av.AudioFrame.from_ndarray(np.ascontiguousarray(tone[None, k : k + 1024]), format="fltp", layout="mono")
            fr.sample_rate, fr.pts = SR, k
            for pkt in st.encode(fr):
                c.mux(pkt)
        for pkt in st.encode():
            c.mux(pkt)
    media.write_wav(d / "tone.wav", tone)
    shutil.copy(d / "tone.wav", d / "renamed_wav.mp4")
    # A truncated mp4: the first half of a real one (its index, at the end, is lost).
    data = videos["audio"].read_bytes()
    (d / "truncated.mp4").write_bytes(data[: len(data) // 2])
    (d / "notes.mp4").write_text("this is a text file, not a video\n")
    (d / "empty.mp4").write_bytes(b"")
    return {
        "audio_only.m4a": "no video stream",
        "renamed_wav.mp4": "no video stream",
        "truncated.mp4": "not a readable media container",
        "notes.mp4": "not a readable media container",
        "empty.mp4": "empty file",
        "missing.mp4": "does not exist",
    }


def test_cli_bad_inputs_exit_2_with_a_message(model, videos, bad_inputs, tmp_path, capsys):
    """Each bad input: exit status 2 from the command's ``main`` and a message naming it.

    A video of zero frames cannot be written with PyAV (an encoder that received no frame
    leaves no file), so the no-frames cases are files without a video stream (audio-only
    m4a, a WAV renamed .mp4), an empty file and a truncated mp4; a one-frame video is
    valid input (test_generate_is_deterministic_and_seed_dependent).
    """
    _, d = model
    _train_run(tmp_path, "half-done", "failed", d)
    out = str(tmp_path / "x.wav")
    for name, words in bad_inputs.items():
        code = cli.main(["generate", "--video", str(videos["dir"] / name), "--model", str(d), "--out", out])
        err = capsys.readouterr().err
        assert code == 2, name
        assert words in err and name in err, (name, err)
    cases = [
        (["--model", "s3:bucket/model"], "unknown model URI scheme 's3'"),
        (["--model", "train:none", "--storage", str(tmp_path)], "no training run 'none'"),
        (["--model", "train:half", "--storage", str(tmp_path)], "status 'failed', not 'finished'"),
        (["--model", str(tmp_path)], "no generator.json"),
        (["--model", str(d), "--out", str(tmp_path / "x.flac")], "must end with .wav"),
        (["--model", str(d), "--num-steps", "0"], "num_steps must be an integer >= 1"),
        (["--model", str(d), "--guidance-scale", "31"], "guidance_scale must be a finite number in [0, 30]"),
        (["--model", str(d), "--prompt", "calm piano"], "trained without text"),
    ]
    for extra, words in cases:
        args = ["generate", "--video", str(videos["silent"]), "--out", out, *extra]
        if "--out" in extra:
            args = ["generate", "--video", str(videos["silent"]), *extra]
        code = cli.main(args)
        err = capsys.readouterr().err
        assert code == 2 and words in err, (extra, err)
    assert not Path(out).exists()


def test_non_finite_output_raises_instead_of_being_silenced(tmp_path):
    """A diverged model (NaN weights) raises GeneratorError naming the clip, the window and the
    denoising step, at the first step whose latents are not finite; nothing is nan_to_num-ed."""
    gen = build_tiny_generator(None, seed=0, num_steps=2)
    with torch.no_grad():
        next(gen.denoiser.parameters()).fill_(float("nan"))
    with pytest.raises(GeneratorError, match=r"clip 'diverged' window 1/1: denoising step 1/2 \(timestep \d+\) gave "
                                             r"4096 non-finite latent values of 4096: the model diverged"):
        gen.generate(_frames(20), seed=0, clip_id="diverged")
    # A model that diverges only late: step 2 of 3, in the second window of a two-window video.
    gen = build_tiny_generator(None, seed=0, num_steps=3)
    real, calls = gen.denoiser.forward, []

    def late(*args, **kwargs):
        out = real(*args, **kwargs)
        calls.append(1)
        # the window 2 / step 2 forwards: each step runs one guided batch (one forward call)
        return out * float("nan") if len(calls) == 3 + 2 else out

    gen.denoiser.forward = late
    with pytest.raises(GeneratorError, match=r"clip 'late' window 2/2: denoising step 2/3 \(timestep \d+\)"):
        gen.generate(_frames(110), seed=0, clip_id="late")
    # The decoder is guarded too: finite latents, a NaN VAE.
    gen = build_tiny_generator(None, seed=0, num_steps=2)
    with torch.no_grad():
        for prm in gen.vae.decoder.parameters():
            prm.fill_(float("nan"))
    with pytest.raises(GeneratorError, match=r"clip 'vae' window 1/1: decoding \(VAE \+ vocoder\) gave \d+ non-finite"):
        gen.generate(_frames(20), seed=0, clip_id="vae")


def test_knob_table_matches_the_code_it_describes():
    """The knob table (torch-free, read by the Serve ingress) names the same schedulers,
    attention methods and conditions as the modules that implement them, and every knob is
    a SamplerConfig field (the generator.json key)."""
    from soundtrack.models.unet import CONDITIONS
    from soundtrack.modules.attention import METHODS
    from soundtrack.pipelines.knobs import KNOBS
    from soundtrack.pipelines.sampler import SamplerConfig
    from soundtrack.pipelines.schedulers import SCHEDULER_KINDS

    assert KNOBS["scheduler"].choices == SCHEDULER_KINDS
    assert KNOBS["attention"].choices == METHODS
    assert KNOBS["weights"].choices == CONDITIONS
    assert set(KNOBS) <= {f.name for f in dataclasses.fields(SamplerConfig)}
