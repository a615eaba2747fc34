"""Long videos in bounded memory, and the bench's long videos (issue 17): unit tier, no Ray.

Runs on the untrained tiny generator (``build_tiny_generator``): the soundtracks are noise,
but the window groups, the incremental join, the chunked decode and encode, the streamed
mux and the long-video jobs are the real code paths. Memory itself is measured by
``benchmarks/long_video.py`` (a test never asserts on time or memory).
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest
import soundfile as sf
import torch

from soundtrack.data import media
from soundtrack.data.features import shot_boundaries
from soundtrack.errors import GeneratorError
from soundtrack.models.vae import decode_mel
from soundtrack.pipelines.generator import SoundtrackGenerator, build_tiny_generator
from soundtrack.pipelines.sampler import (
    SamplerConfig,
    _cat_conditions,
    _fit,
    generate_video,
    join_windows,
    sample_latents,
    window_conditions,
    window_joins,
    window_key,
    window_starts,
)

# diffusers' DPM-Solver calls np.array on a tensor (numpy 2 deprecation inside diffusers).
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

SR = 16000


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One intra-op thread: with two on a busy 2-core machine torch ran 10-40x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def gen():
    return build_tiny_generator(None, seed=0, num_steps=2, gl_iterations=4)


def _frames(n: int, size: int = 32) -> np.ndarray:
    """A bouncing square; a cut at frame 60, a 3-frame flash at 200, a cut at 230."""
    out = np.zeros((n, size, size, 3), np.uint8)
    for i in range(n):
        out[i] = (20, 30, 120) if i < 60 else (200, 120, 30) if i < 230 else (10, 200, 10)
        span = size - 8
        x = abs((3 * i) % (2 * span) - span)
        out[i, 12:20, x : x + 8] = 255
    out[200:203] = 250
    return out


# ----------------------------------------------------------------------------- sampling in groups


def test_window_groups_change_nothing_and_report_progress(gen, caplog):
    """4 windows sampled in groups of 1, 3 or 4 give the same bits (each window is denoised
    alone, seeded by its own key); a log line and a progress call per group."""
    frames = _frames(290)  # 29 s: 4 windows
    assert len(window_starts(29.0)) == 4
    base = gen.sampler
    outs, calls = {}, {}
    try:
        for wb in (1, 3, 4):
            gen.sampler = dataclasses.replace(base, window_batch=wb)
            calls[wb] = []
            with caplog.at_level(logging.INFO, logger="soundtrack.pipelines.sampler"):
                caplog.clear()
                outs[wb] = gen.generate(frames, seed=2, clip_id="long", progress=lambda d, n, wb=wb: calls[wb].append((d, n)))
            if wb == 3:
                lines = [r.getMessage() for r in caplog.records]
                assert lines == ["clip 'long': window 3/4 (29 of 29 s)", "clip 'long': window 4/4 (29 of 29 s)"], lines
        np.testing.assert_array_equal(outs[1], outs[3])
        np.testing.assert_array_equal(outs[1], outs[4])
        assert calls == {1: [(1, 4), (2, 4), (3, 4), (4, 4)], 3: [(3, 4), (4, 4)], 4: [(4, 4)]}
    finally:
        gen.sampler = base
    # batched model calls (a GPU's choice): the same up to CPU batch non-invariance, 1e-6 on
    # the latents (seen: 3e-6). Read through a linear "vocoder" (the mel itself): the untrained
    # tiny VAE + Griffin-Lim turn 1e-6 into audible differences, which says nothing of the sampler.
    conds = gen.conditions_from_frames(frames)
    got = {}
    with torch.inference_mode():
        for wb in (1, 4):
            cfg = dataclasses.replace(base, window_batch=wb, batch_invariant=False)
            got[wb] = generate_video(gen.denoiser, gen.vae, _MelAsAudio(), conds, 29.0, "long", 2, cfg,
                                     schedule=gen.schedule)
    assert np.abs(got[4] - got[1]).max() <= 1e-4 * np.abs(got[1]).max()
    with pytest.raises(GeneratorError, match="window_batch must be an integer >= 1"):
        SoundtrackGenerator(gen.encoders, gen.vae, gen.denoiser, sampler=SamplerConfig(window_batch=0),
                            frame_size=gen.frame_size)
    assert SamplerConfig().max_seconds >= 600.0  # a 10-minute video is allowed by default


class _MelAsAudio:
    """A linear stand-in vocoder: the decoded mel's values as the window's first samples."""

    sample_rate = SR

    def __call__(self, mel: torch.Tensor) -> torch.Tensor:
        return mel.reshape(mel.shape[0], -1)


def test_incremental_join_is_the_join_of_all_windows(gen):
    """The preallocated, window-by-window output equals sampling every window in one batch and
    joining them at the end (the earlier algorithm), bit for bit."""
    conds = gen.conditions_from_frames(_frames(250))
    cfg = dataclasses.replace(gen.sampler, window_batch=2)
    with torch.inference_mode():
        got = generate_video(gen.denoiser, gen.vae, gen.vocoder, conds, 25.0, "v", 5, cfg, schedule=gen.schedule)
        dcfg = gen.denoiser.config
        starts = window_starts(25.0, dcfg.clip_seconds, cfg.crossfade_s, SR)
        batch = _cat_conditions([window_conditions(conds, s / SR, dcfg.clip_seconds, dcfg.fps) for s in starts])
        lat = sample_latents(gen.denoiser, batch, [window_key("v", k) for k in range(len(starts))], 5, cfg,
                             schedule=gen.schedule)
        wavs = [_fit(gen.vocoder(decode_mel(gen.vae, lat[i : i + 1]).float())[0], int(round(dcfg.clip_seconds * SR)))
                for i in range(len(starts))]
    np.testing.assert_array_equal(got, join_windows(wavs, SR, cfg.crossfade_s, 25 * SR))
    assert window_joins(25.0) == [(9.24, 10.24), (18.48, 19.48)]


# ----------------------------------------------------------------------------- chunked decode and encode


def test_frame_chunks_are_read_frames(tmp_path):
    frames = _frames(137, size=48)
    media.write_mp4(tmp_path / "v.mp4", frames, 10.0)
    for size, fps in ((None, 10.0), ((32, 32), 10.0), ((32, 32), 7.0)):
        whole = media.read_frames(tmp_path / "v.mp4", fps=fps, size=size)
        for chunk in (1, 7, 103, 500):
            n, chunks = media.read_frame_chunks(tmp_path / "v.mp4", fps=fps, size=size, chunk_frames=chunk)
            parts = list(chunks)
            assert n == len(whole) and all(len(p) <= chunk for p in parts)
            np.testing.assert_array_equal(np.concatenate(parts), whole)
    with pytest.raises(media.MediaError, match="does not exist"):
        media.read_frame_chunks(tmp_path / "missing.mp4")


def test_frame_chunks_of_a_rotated_or_variable_rate_video_are_read_frames(gen, tmp_path):
    """A rotated phone video goes through PyAV frame by frame (its count known at the end);
    a variable-frame-rate one through decord: the chunks are read_frames' frames either way,
    and generate_file gives generate()'s soundtrack of them."""
    from media_factory import write_av

    rot = write_av(tmp_path / "rot.mp4", 3.2, fps=25.0, size=(48, 80), acodec=None, rotation=90)
    rng = np.random.default_rng(0)
    vfr = write_av(tmp_path / "vfr.mp4", 3.0, size=(48, 80), acodec=None,
                   frame_times=np.cumsum(rng.uniform(0.02, 0.09, 50)) - 0.02)
    for path, known in ((rot, False), (vfr, True)):
        for size in (None, (32, 32)):
            whole = media.read_frames(path, fps=10.0, size=size)
            n, chunks = media.read_frame_chunks(path, fps=10.0, size=size, chunk_frames=7)
            assert (n == len(whole)) if known else n is None
            np.testing.assert_array_equal(np.concatenate(list(chunks)), whole)
    assert media.read_frames(rot).shape[1:3] == (80, 48)  # upright: the displayed size
    res = gen.generate_file(rot, tmp_path / "rot.wav", seed=4)
    direct = gen.generate(media.read_frames(rot, fps=10.0, size=(32, 32)), seed=4)
    assert res.n_samples == len(direct) == 32 * 1600
    assert np.abs(sf.read(str(tmp_path / "rot.wav"), dtype="float32")[0] - direct).max() <= 1 / 32768 + 1e-7


def test_conditions_from_chunks_are_the_one_pass_conditions(gen):
    """Chunks of any size give the conditions of the whole array (one code path); the shots of
    a 283-frame video (cuts at 60 and 230, a flash at 200) are the whole-video scan's."""
    frames = _frames(283, size=64)
    whole = gen.conditions_from_frames(frames)
    assert whole.shots == [[60.0, 230.0]]
    small = frames[:, ::2, ::2]
    assert [float(s) for s in shot_boundaries(small)] == whole.shots[0]
    for chunk in (1, 13, 103, 110):
        got = gen.conditions_from_chunks((frames[i : i + chunk] for i in range(0, len(frames), chunk)), n_frames=283)
        for c in ("video", "music", "sfx"):
            torch.testing.assert_close(getattr(got, c), getattr(whole, c), rtol=0, atol=0)
        assert got.shots == whole.shots
    with pytest.raises(GeneratorError, match="gave 283 frames, 300 were announced"):
        gen.conditions_from_chunks([frames], n_frames=300)


def test_mux_is_streamed_and_gives_the_old_file(gen, tmp_path):
    """The streamed mux writes the bytes the whole-array mux wrote (frames of read_frames at the
    source rate, odd sizes cropped to even, audio fitted); write_mp4 takes a generator."""
    frames = _frames(47, size=64)[:, :50, :62]  # 50 x 62 pixels
    src = tmp_path / "src.mp4"
    media.write_mp4(src, (f for f in frames), 10.0)  # a generator of frames
    assert media.probe(src).n_frames == 47
    wav = (0.1 * np.random.default_rng(0).standard_normal(80_000)).astype(np.float32)  # 5 s for 4.7 s: trimmed
    media.mux_audio(src, wav, SR, tmp_path / "new.mp4")
    old = media.read_frames(src, fps=10.0)
    fitted = np.zeros(round(47 / 10 * SR), np.float32)
    fitted[:] = wav[: len(fitted)]
    media.write_mp4(tmp_path / "old.mp4", old, fps=10.0, audio=fitted, sr=SR)
    assert (tmp_path / "new.mp4").read_bytes() == (tmp_path / "old.mp4").read_bytes()
    info = media.probe(tmp_path / "new.mp4")
    assert info.has_audio and info.n_frames == 47 and (info.width, info.height) == (62, 50)


def test_generate_file_refuses_a_too_long_video_before_decoding(gen, tmp_path, monkeypatch):
    media.write_mp4(tmp_path / "v.mp4", _frames(30), 10.0)
    base = gen.sampler
    decoded = []
    monkeypatch.setattr(media, "read_frames", lambda *a, **k: decoded.append(1))  # the whole-video decode is gone
    try:
        gen.sampler = dataclasses.replace(base, max_seconds=2.0)
        with pytest.raises(GeneratorError, match=r"lasts 3.0 s, longer than this model's limit of 2 s"):
            gen.generate_file(tmp_path / "v.mp4", tmp_path / "o.wav")
    finally:
        gen.sampler = base
    res = gen.generate_file(tmp_path / "v.mp4", tmp_path / "o.wav", seed=1)
    assert res.windows == 1 and res.n_samples == 3 * SR and not decoded


# ----------------------------------------------------------------------------- the bench's long videos


def _clip_rows(n: int, sources: list[str], starts: list[float]) -> dict[str, dict]:
    """Decoded rows of 10.24 s clips: frames at 32 px, a click mix, ids in playing order."""
    from conftest import click_track

    from soundtrack.data.features import DEFAULT_CONFIG, dynamics_db

    rows = {}
    for k in range(n):
        cid = f"{sources[k]}__{k:04d}"
        wav = click_track(np.arange(0.3 + 0.1 * k, 10.2, 0.5), SR, 10.24)
        frames = _frames(103)
        frames[:, :4] = 40 * k  # each clip's own top band
        rows[cid] = {"clip_id": cid, "source_id": sources[k], "start_s": starts[k], "frames": frames, "wav_mix": wav,
                     "label_event_times": np.arange(0.3 + 0.1 * k, 10.2, 0.5), "melody": None,
                     "dynamics_db": dynamics_db(wav, DEFAULT_CONFIG)}
    return rows


def test_long_video_groups_and_timeline():
    from soundtrack.eval.bench import long_video_groups, long_video_id, long_video_jobs
    from soundtrack.eval.engine import long_video_row

    # source a: 3 consecutive clips then a gap; source b: 2 consecutive
    rows = _clip_rows(6, ["a", "a", "a", "a", "b", "b"], [0.0, 10.24, 20.48, 40.0, 0.0, 10.24])
    ids = sorted(rows)
    assert long_video_groups(list(rows.values()), 5, 2, "source") == [ids[0:2], ids[4:6]]
    assert long_video_groups(list(rows.values()), 5, 3, "source") == [ids[0:3]]
    assert long_video_groups(list(rows.values()), 1, 3, "montage") == [ids[0:3]]
    assert long_video_groups(list(rows.values()), 5, 3, "montage") == [ids[0:3], ids[3:6]]
    row = long_video_row(rows, ids[0:3])
    assert row["duration_s"] == pytest.approx(30.72) and len(row["frames"]) == 308  # ceil(30.72 * 10)
    assert row["offsets_s"] == pytest.approx([0.0, 10.24, 20.48])
    # frame j shows the clip playing at j / 10 s: frame 103 (10.3 s) is clip 1's frame 0
    np.testing.assert_array_equal(row["frames"][102], rows[ids[0]]["frames"][102])
    np.testing.assert_array_equal(row["frames"][103], rows[ids[1]]["frames"][0])
    np.testing.assert_array_equal(row["frames"][204], rows[ids[1]]["frames"][101])  # 20.4 s: clip 1 at 10.16 s
    np.testing.assert_array_equal(row["frames"][205], rows[ids[2]]["frames"][0])  # 20.5 s: clip 2 at 0.02 s
    jobs = long_video_jobs([ids[0:3]], rows, [0, 1], "generator", 10.24, 1.0)
    assert [j["seed"] for j in jobs] == [0, 1] and jobs[0]["clip_id"] == long_video_id(ids[0:3]) == f"{ids[0]}+3"
    assert jobs[0]["joins"] == [pytest.approx([9.24, 10.24]), pytest.approx([18.48, 19.48]),
                                pytest.approx([27.72, 28.72])]


def test_bench_scores_long_videos_at_their_joins(gen, tmp_path):
    """Long-video jobs through the bench's chunk and scoring: the generator's track and the
    ground truth's, both with seam ratios, in the summary, long_videos.csv and summary.md."""
    from soundtrack.eval.bench import (
        BenchConfig,
        MethodSpec,
        long_video_jobs,
        markdown,
        run_chunk,
        score_sets,
        write_outputs,
    )
    from soundtrack.metrics import SEAM_METRICS

    rows = _clip_rows(3, ["a"] * 3, [0.0, 10.24, 20.48])
    ids = sorted(rows)
    methods = {"ground_truth": MethodSpec(kind="ground_truth"), "ours": MethodSpec()}
    cfg = BenchConfig(clips=3, seeds=(0,), n_boot=50, long_videos=1, long_clips=3)
    ev = _evaluator(tmp_path / "ev")
    results, caches = {}, {}
    for key, spec in methods.items():
        jobs = [{"clip_id": c, "source": c, "seed": 0, "kind": spec.kind} for c in ids]
        jobs += long_video_jobs([ids], rows, cfg.seeds, spec.kind, 10.24, 1.0)
        caches[key] = tmp_path / "cache" / key
        results[key] = run_chunk(jobs, gen if spec.kind == "generator" else None, {}, str(caches[key]), rows)
    table, _, summary = score_sets(results, methods, list(rows.values()), ev, cfg, caches)
    assert len(table) == 6 and not table["failed"].any()  # the clips; long videos are apart
    long = summary["long_videos"]
    assert long["videos"] == 1 and set(long["methods"]) == {"ground_truth", "ours"}
    rec = next(r for r in long["records"] if r["method"] == "ours")
    assert set(SEAM_METRICS) <= set(rec) and rec["n_joins"] == 3
    assert rec["audio_s"] == pytest.approx(30.8) and rec["gen_s"] > 0  # 308 frames of 0.1 s
    assert all(np.isfinite(r["flux_ratio"]) and r["flux_ratio"] > 0 for r in long["records"])
    md = markdown(summary, methods)
    assert "## Long videos: window joins" in md and "| ours | 1 | 3 |" in md
    (tmp_path / "out").mkdir()
    write_outputs(tmp_path / "out", table, _, summary, methods, cfg)
    assert (tmp_path / "out" / "long_videos.csv").read_text().count("\n") == 3  # header + 2 tracks
    # the cache: a second run reads the long tracks back
    again = run_chunk(long_video_jobs([ids], rows, cfg.seeds, "generator", 10.24, 1.0), gen, {},
                      str(caches["ours"]), rows)
    assert again[0]["cached"] and again[0]["flux_ratio"] == pytest.approx(rec["flux_ratio"])


def _evaluator(path):
    """An evaluator with random weights on 32 px frames (no training: the scoring path only)."""
    from soundtrack.eval.scoring import Evaluator
    from soundtrack.models.encoders import ContrastiveConfig, build_contrastive

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        enc = build_contrastive(ContrastiveConfig.tiny(video_input_size=32, video_channels=(8, 16), video_dim=16,
                                                       audio_channels=16, audio_dim=16, embed_dim=32, use_text=False))
        Evaluator(enc, torch.randn(3, 280), torch.zeros(3), ["a", "b", "c"], {"val_accuracy": float("nan")}).save(path)
    return path


def test_bench_stage_builds_long_jobs_for_own_video_generators_and_the_ground_truth(gen, tmp_path):
    """The stage's long-video jobs: each generator method with its own video and the ground
    truth get them (at the model's window and crossfade); a control (video: other) and the
    retrieval baseline do not; none without long_videos."""
    from soundtrack.eval.bench import BenchConfig, MethodSpec
    from soundtrack.stages.bench import long_jobs

    gen.save(tmp_path / "model")
    rows = _clip_rows(5, ["s"] * 5, [0.0, 10.24, 20.48, 30.72, 40.96])
    methods = {"ground_truth": MethodSpec(kind="ground_truth"), "random_retrieval": MethodSpec(kind="retrieval"),
               "ours": MethodSpec(), "ours_other": MethodSpec(video="other")}
    models = {"ground_truth": None, "random_retrieval": None, "ours": str(tmp_path / "model"),
              "ours_other": str(tmp_path / "model")}
    cfg = BenchConfig(clips=5, seeds=(0, 3), long_videos=2, long_clips=2)
    jobs = long_jobs(cfg, methods, models, list(rows.values()))
    assert sorted(jobs) == ["ground_truth", "ours"]
    assert [(j["clip_id"], j["seed"]) for j in jobs["ours"]] == [("s__0000+2", 0), ("s__0000+2", 3),
                                                                ("s__0002+2", 0), ("s__0002+2", 3)]
    assert jobs["ours"][0]["kind"] == "generator" and jobs["ground_truth"][0]["kind"] == "ground_truth"
    # 20.48 s of audio -> 205 frames -> 20.5 s: windows at 0, 9.24, 18.48 s
    assert jobs["ours"][0]["joins"] == [pytest.approx([9.24, 10.24]), pytest.approx([18.48, 19.48])]
    assert jobs["ground_truth"][0]["joins"] == jobs["ours"][0]["joins"]
    assert long_jobs(BenchConfig(clips=5), methods, models, list(rows.values())) == {}
