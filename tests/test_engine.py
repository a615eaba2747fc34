"""The one shard codec, ``load_split``, the generate-and-score engine, the one bootstrap and
the tune objective, all below Ray (no cluster starts; nothing here is slow).

The objective tests pin a defect: a metric named in the objective that is missing or not
finite used to count as 0 (and ``ClipScores.set_metrics`` swallowed ``ValueError``), so a
trial without an evaluator, or with a set too small for FAD, scored instead of failing.
"""

from __future__ import annotations

import json
import logging
import math
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import click_track

from soundtrack.data import shards
from soundtrack.errors import CodecError, GeneratorError, ObjectiveError, SoundtrackError, TooFewClips
from soundtrack.eval.engine import (
    ClipRecord,
    ClipScores,
    evaluate_clips,
    objective_value,
    paired_objective_ci,
    per_clip_objective,
    run_jobs,
)
from soundtrack.metrics import (
    bootstrap_ci,
    bootstrap_indices,
    bootstrap_replicates,
    paired_bootstrap_ci,
    subsample_indices,
    subsample_interval,
)

# ----------------------------------------------------------------------------- the codec


def test_codec_round_trips_every_kind_of_column():
    rng = np.random.default_rng(0)
    wav = np.clip(rng.standard_normal(100) * 0.3, -1, 1).astype(np.float32)
    cases = {"frames": rng.integers(0, 255, (2, 4, 4, 3), dtype=np.uint8), "mel_music": rng.standard_normal((8, 5)),
             "latents": rng.standard_normal((4, 2, 3)).astype(np.float32), "video": rng.standard_normal((3, 16)),
             "shots": np.array([0, 7])}
    for name, a in cases.items():
        packed = shards.pack_array(name, a)
        assert set(packed) == {name, name + "__shape"} and packed[name + "__shape"] == list(np.shape(a))
        back = shards.unpack_array(name, packed[name], packed[name + "__shape"])
        assert back.dtype == np.dtype(shards.ARRAY_DTYPES[name])
        np.testing.assert_array_equal(back, np.asarray(a).astype(shards.ARRAY_DTYPES[name]))
    w = shards.pack_array("wav_mix", wav)  # waveforms: 16-bit PCM, back as float32 in [-1, 1]
    back = shards.unpack_array("wav_mix", w["wav_mix"], w["wav_mix__shape"])
    assert back.dtype == np.float32 and np.abs(back - wav).max() < 1 / 32767
    assert set(shards.CACHE_ARRAYS) <= set(shards.ARRAY_DTYPES) and set(shards.SHARD_ARRAYS) <= set(shards.ARRAY_DTYPES)


def test_a_column_without_a_dtype_raises_instead_of_guessing():
    with pytest.raises(CodecError, match=r"array column 'mel_bogus' has no storage dtype.*ARRAY_DTYPES"):
        shards.pack_array("mel_bogus", np.zeros(3))
    with pytest.raises(CodecError, match="'mel_bogus'"):
        shards.unpack_array("mel_bogus", b"\0" * 8, [2])
    with pytest.raises(CodecError):
        shards.unpack_column({"x": [b"\0" * 4], "x__shape": [[1]]}, "x")
    assert issubclass(CodecError, SoundtrackError)


def test_batch_decoders_follow_the_dtype_table(monkeypatch):
    """The VAE's and the UNet's batch decoders take the dtype from the one table: a column
    stored in another dtype decodes right (they used to hard-code float16 / float32)."""
    import torch

    from soundtrack.models.mel import MelFormat
    from soundtrack.solvers.diffusion import cached_array
    from soundtrack.solvers.vae import mels_from_batch

    rng = np.random.default_rng(1)
    for dt in ("float16", "float32"):
        monkeypatch.setitem(shards.ARRAY_DTYPES, "mel_music", dt)
        mels = [rng.standard_normal((128, 1024)).astype(np.float32) for _ in range(2)]
        nb = shards.pack_column("mel_music", mels)
        fmt = MelFormat()
        want = torch.stack([torch.as_tensor(fmt.from_features(m.astype(dt).astype(np.float32))) for m in mels])
        torch.testing.assert_close(mels_from_batch(nb, "mel_music", fmt), want)
    for dt in ("float32", "float16"):
        monkeypatch.setitem(shards.ARRAY_DTYPES, "latents", dt)
        lat = rng.standard_normal((3, 4, 2, 5)).astype(np.float32)
        got = cached_array(shards.pack_column("latents", lat), "latents")
        np.testing.assert_array_equal(got.numpy(), lat.astype(dt))
    assert cached_array({}, "text") is None


def test_cache_encoder_columns_are_what_the_solver_reads():
    """The latent cache is written with the codec (pack_column) and read with it (cached_array)."""
    from soundtrack.solvers.diffusion import cached_array

    x = np.random.default_rng(2).standard_normal((2, 21, 16)).astype(np.float32)
    col = shards.pack_column("video", x)
    assert col["video"].dtype == object and col["video__shape"].tolist() == [[21, 16], [21, 16]]
    assert col["video"][0] == x[0].tobytes()  # the bytes the cache always held
    np.testing.assert_array_equal(cached_array(col, "video").numpy(), x)


# ----------------------------------------------------------------------------- load_split


def _fake_run(tmp_path, splits):
    """A featurize run of two shards, clips deliberately out of order across them."""
    rng = np.random.default_rng(0)
    (tmp_path / "shards").mkdir(parents=True)
    ids = sorted(splits, reverse=True)
    for k, part in enumerate((ids[: len(ids) // 2], ids[len(ids) // 2:])):
        rows = [{"clip_id": c, "split": splits[c], **shards.pack_array("wav_mix", rng.uniform(-1, 1, 50)),
                 **shards.pack_array("frames", rng.integers(0, 255, (2, 4, 4, 3)))} for c in part]
        pq.write_table(pa.Table.from_pylist(rows), tmp_path / "shards" / f"shard-{k:05d}.parquet")
    return tmp_path


def test_load_split_sorts_takes_n_and_says_when_short(tmp_path, caplog):
    run = _fake_run(tmp_path, {"c3": "val", "c1": "val", "c2": "val", "c0": "test", "c4": "val"})
    rows = shards.load_split(run, "val", ["clip_id", "wav_mix"], 3)
    assert [r["clip_id"] for r in rows] == ["c1", "c2", "c3"]
    assert rows[0]["wav_mix"].dtype == np.float32 and "frames" not in rows[0]
    assert [r["clip_id"] for r in shards.load_split(run, "val")] == ["c1", "c2", "c3", "c4"]
    assert shards.load_split(run, "val")[0]["frames"].shape == (2, 4, 4, 3)
    with pytest.raises(TooFewClips, match=r"the test split of .* has 1 clip\(s\), 3 requested \(val_clips\)"):
        shards.load_split(run, "test", ["clip_id"], 3, hint="val_clips")
    with caplog.at_level(logging.INFO, logger="soundtrack.data.shards"):
        got = shards.load_split(run, "test", ["clip_id"], 3, too_few="fewer")
    assert [r["clip_id"] for r in got] == ["c0"] and "1 clip(s), 3 requested" in caplog.text


def test_load_split_optional_columns_are_read_where_the_shards_have_them(tmp_path):
    run = _fake_run(tmp_path, {"c1": "val", "c2": "val", "c3": "val", "c4": "val"})
    with pytest.raises(pa.ArrowInvalid, match="label_mode"):  # a required column no shard has: pyarrow names it
        shards.load_split(run, "val", ["clip_id", "label_mode"])
    rows = shards.load_split(run, "val", ["clip_id", "wav_mix"], optional=["label_mode", "melody"])
    assert [r["clip_id"] for r in rows] == ["c1", "c2", "c3", "c4"] and not any("label_mode" in r for r in rows)
    assert rows[0]["wav_mix"].dtype == np.float32
    # one shard (clips c3, c4) gains the label: its rows carry it, the other shard's are missing values
    f = tmp_path / "shards" / "shard-00000.parquet"
    t = pq.read_table(f)
    pq.write_table(t.append_column("label_mode", pa.array(["minor"] * t.num_rows)), f)
    got = {r["clip_id"]: r.get("label_mode") for r in shards.load_split(run, "val", ["clip_id"], optional=["label_mode"])}
    assert got["c3"] == got["c4"] == "minor" and all(v is None or v != v for v in (got["c1"], got["c2"]))


# ----------------------------------------------------------------------------- the bootstrap


def test_one_resampling_primitive_under_every_bootstrap():
    n, n_boot = 7, 50
    rng = np.random.default_rng(3)
    loop = [rng.integers(0, n, n) for _ in range(n_boot)]  # the loops the bench and the engine had
    np.testing.assert_array_equal(bootstrap_indices(n, n_boot, 3), np.stack(loop))
    assert [r.tolist() for r in bootstrap_replicates(n, n_boot, 3, lambda idx: idx)] == [r.tolist() for r in loop]
    kept = bootstrap_replicates(2, 40, 0, lambda idx: idx.tolist(), min_unique=2)
    assert 0 < len(kept) < 40 and all(len(set(k)) == 2 for k in kept)
    x = np.random.default_rng(4).standard_normal(9)
    y = np.random.default_rng(5).standard_normal(9)
    reps = [x[i].mean() for i in bootstrap_indices(9, 200, 0)]
    assert bootstrap_ci(x, n_boot=200)[1:] == pytest.approx(tuple(np.quantile(reps, [0.025, 0.975])))
    preps = [(x - y)[i].mean() for i in bootstrap_indices(9, 200, 0)]
    assert paired_bootstrap_ci(x, y, n_boot=200)[1:] == pytest.approx(tuple(np.quantile(preps, [0.025, 0.975])))


# ----------------------------------------------------------------------------- the objective


def _scores(n: int = 3, **per_clip) -> ClipScores:
    return ClipScores([f"c{i}" for i in range(n)], {k: list(v) for k, v in per_clip.items()}, gen_seconds=[0.1] * n)


def test_objective_metric_without_an_evaluator_raises_naming_it():
    s = _scores(f1=[0.5, 0.6, 0.7])
    assert objective_value(s, {"f1": 1.0}) == pytest.approx(0.6)
    with pytest.raises(ObjectiveError, match=r"objective metric 'sim' needs an evaluator"):
        objective_value(s, {"f1": 1.0, "sim": 1.0})  # was 0.6: sim counted as 0
    with pytest.raises(ObjectiveError, match=r"objective metric 'fad' needs an evaluator"):
        objective_value(s, {"f1": 1.0, "fad": -0.01})
    with pytest.raises(ObjectiveError, match=r"'sim' needs an evaluator"):
        per_clip_objective(s, {"sim": 1.0})
    assert issubclass(ObjectiveError, SoundtrackError)


def test_objective_metric_nan_on_every_clip_raises():
    s = _scores(f1=[0.5, 0.6, 0.7], melody_acc=[math.nan] * 3, beat_f1=[0.2, math.nan, 0.4])
    with pytest.raises(ObjectiveError, match=r"objective metric 'melody_acc' is undefined \(not finite\) on all 3"):
        objective_value(s, {"f1": 1.0, "melody_acc": 1.0})  # was 0.6
    # partly nan stays defined: the mean over the clips where it is
    assert objective_value(s, {"f1": 1.0, "beat_f1": 1.0}) == pytest.approx(0.6 + 0.3)
    assert per_clip_objective(s, {"f1": 1.0, "beat_f1": 1.0}).mean() == pytest.approx(0.9)


def test_set_metric_too_small_raises_only_when_the_objective_needs_it():
    """FAD on embeddings too short for one window raises ValueError inside set_metrics:
    that was swallowed (every set metric nan, counted 0); now it is nan only outside the objective."""
    e = np.random.default_rng(0).standard_normal((2, 1, 8)).astype(np.float32)  # 1 step < one FAD window
    probs = np.full((2, 3), 1 / 3, np.float32)
    s = ClipScores(["a", "b"], {"f1": [0.5, 0.7], "bcs": [0.2, 0.4], "bhs": [0.1, 0.3]}, list(e), list(e), list(e),
                   list(probs), [0.1, 0.1])
    vals = s.set_metrics(["fad", "csd", "is"])
    assert math.isnan(vals["fad"]) and math.isfinite(vals["csd"]) and math.isfinite(vals["is"])
    _, why = s.set_metric_values(["fad"])
    assert "undefined on 2 clip(s)" in why["fad"]
    assert objective_value(s, {"f1": 1.0, "csd": -1.0}) == pytest.approx(0.6 - vals["csd"])
    with pytest.raises(ObjectiveError, match=r"objective metric 'fad' is undefined on 2 clip\(s\)"):
        objective_value(s, {"f1": 1.0, "fad": -0.01})
    with pytest.raises(ObjectiveError, match=r"'p_at_1' needs a pool of at least 2 clips, got 1"):
        objective_value(s.subset([0]), {"p_at_1": 1.0})
    with pytest.raises(ObjectiveError, match="needs every clip's reference and generated dynamics"):
        objective_value(s, {"dyn_macro": 1.0})


def test_paired_objective_ci_set_path_uses_shared_subsets_and_contains_its_point():
    rng = np.random.default_rng(1)
    mk = lambda: ClipScores([f"c{i}" for i in range(8)], {"f1": list(rng.uniform(0, 1, 8))},  # noqa: E731
                            gen_seconds=[0.0] * 8, probs=list(rng.dirichlet(np.ones(3), 8).astype(np.float32)),
                            audio=list(rng.standard_normal((8, 30, 4)).astype(np.float32)),
                            ref_audio=list(rng.standard_normal((8, 30, 4)).astype(np.float32)),
                            video=list(rng.standard_normal((8, 30, 4)).astype(np.float32)))
    a, b = mk(), mk()
    obj = {"f1": 1.0, "is": 0.5, "fad": -0.1}
    got = paired_objective_ci(a, b, obj, n_boot=40, seed=2)
    diff = objective_value(a, obj) - objective_value(b, obj)
    reps = [objective_value(a.subset(i), obj) - objective_value(b.subset(i), obj) for i in subsample_indices(8, 40, 4, 2)]
    assert got["ci95"] == pytest.approx(list(subsample_interval(diff, np.asarray(reps), 4, 8)))
    assert got["n_boot"] == 40 and got["interval"] == "subsampling" and got["diff"] == pytest.approx(diff)
    assert got["ci95"][0] <= diff <= got["ci95"][1]


def test_trial_without_evaluator_fails_before_generating():
    class NoGen:
        sr = 16000

        def generate(self, *a, **k):  # pragma: no cover - must not be reached
            raise AssertionError("generated although the objective cannot be scored")

    with pytest.raises(ObjectiveError, match="'sim' needs an evaluator"):
        evaluate_clips(NoGen(), [{"clip_id": "a"}], {}, 0, None, {"f1": 1.0, "sim": 1.0})


def test_errored_trial_is_recorded_with_its_message():
    """An objective error in a trial is a Tune ERROR; the trials table keeps its message."""
    from soundtrack.distributed.tune import trials_table

    err = RuntimeError("Traceback (most recent call last):\n  ...\nsoundtrack.errors.ObjectiveError: objective metric "
                       "'sim' needs an evaluator (none was given)")
    grid = [SimpleNamespace(config={"guidance_scale": 2.5}, metrics={"score": 0.4, "clips": 2}, path="/x/trial_00001_a",
                            error=None),
            SimpleNamespace(config={"guidance_scale": 3.0}, metrics={}, path="/x/trial_00002_b", error=err)]
    df = trials_table(grid, None, {"guidance_scale": None}, val_clips=2)
    assert df["status"].tolist() == ["done", "error"] and df["complete"].tolist() == [True, False]
    assert df["error"].iloc[1].startswith("soundtrack.errors.ObjectiveError: objective metric 'sim'")
    assert not isinstance(df["error"].iloc[0], str) and math.isnan(df["score"].iloc[1])


# ----------------------------------------------------------------------------- run_jobs


def _same(a: dict, b: dict) -> bool:
    """Dict equality with nan == nan."""
    return a.keys() == b.keys() and all(
        (isinstance(a[k], float) and isinstance(b[k], float) and math.isnan(a[k]) and math.isnan(b[k])) or a[k] == b[k]
        for k in a)


def _clicks(times, sr=16000, dur=3.0):
    return click_track(times, sr, dur)


class _FakeGen:
    """Clicks on the source clip's events (a perfect generator), or nan."""

    sr = 16000

    def __init__(self, rows, nan=False):
        self.rows, self.nan, self.calls = rows, nan, 0

    def generate(self, frames, seed=0, clip_id="clip", **overrides):
        self.calls += 1
        src = next(r for r in self.rows.values() if r["frames"] is frames)
        w = _clicks(src["label_event_times"])
        return w * np.nan if self.nan else w


def _rows():
    ev = {"a": np.arange(0.25, 3.0, 0.5), "b": np.arange(0.4, 3.0, 0.7)}
    return {c: {"clip_id": c, "label_event_times": t, "frames": np.zeros((30, 8, 8, 3), np.uint8),
                "wav_mix": _clicks(t + 0.2)} for c, t in ev.items()}


def test_run_jobs_scores_kinds_and_caches(tmp_path):
    from soundtrack.eval.scoring import clip_metrics

    rows = _rows()
    gen = _FakeGen(rows)
    jobs = [{"clip_id": "a", "source": "a", "seed": 0, "kind": "generator"},
            {"clip_id": "a", "source": "b", "seed": 1, "kind": "generator"},
            {"clip_id": "a", "source": "a", "seed": 0, "kind": "ground_truth"},
            {"clip_id": "a", "source": "b", "seed": 2, "kind": "retrieval"}]
    recs = [list(run_jobs([j], rows, gen, {}, cache_dir=tmp_path / str(i)))[0] for i, j in enumerate(jobs)]
    own, other, gt, rr = recs
    assert own.metrics["f1"] > 0.9 > other.metrics["f1"] and own.gen_s > 0 and gt.gen_s == 0
    assert _same(gt.metrics, clip_metrics(rows["a"]["wav_mix"], rows["a"]))
    assert _same(rr.metrics, clip_metrics(rows["b"]["wav_mix"], rows["a"])) and rr.source == "b"
    calls = gen.calls
    again = list(run_jobs([jobs[0]], rows, gen, {}, cache_dir=tmp_path / "0", keep_audio=True))[0]
    assert again.cached and gen.calls == calls and again.wav.shape == (48000,) and again.dynamics is not None
    assert _same(again.to_dict(), dict(own.to_dict(), cached=True))
    assert _same(json.loads((tmp_path / "0" / "a_s0.json").read_text()), own.to_dict(cached=False))
    assert _same(ClipRecord.from_dict(own.to_dict(), cached=False).to_dict(), own.to_dict())


def test_a_cached_record_lacking_newer_metrics_is_rescored_from_its_audio(tmp_path):
    from soundtrack.eval.scoring import AUDIO_METRICS

    rows = _rows()
    rows["a"]["label_mode"] = "major"
    gen = _FakeGen(rows)
    job = {"clip_id": "a", "source": "a", "seed": 0, "kind": "generator"}
    first = list(run_jobs([job], rows, gen, {}, cache_dir=tmp_path))[0]
    path = tmp_path / "a_s0.json"
    old = json.loads(path.read_text())
    for m in ("chroma_conc", "flatness", "mode_match"):  # as written before these metrics existed
        del old[m]
    old["gen_s"] = 12.5
    path.write_text(json.dumps(old))
    calls = gen.calls
    again = list(run_jobs([job], rows, gen, {}, cache_dir=tmp_path, keep_audio=True))[0]
    assert again.cached and gen.calls == calls and again.gen_s == 12.5 and again.wav is not None
    assert set(AUDIO_METRICS) <= set(again.metrics) and _same(again.metrics, first.metrics)
    assert not math.isnan(again.metrics["mode_match"])
    assert _same(json.loads(path.read_text()), again.to_dict(cached=False))  # the cache file is brought up to date
    third = list(run_jobs([job], rows, gen, {}, cache_dir=tmp_path))[0]
    assert third.cached and third.wav is None and _same(third.metrics, first.metrics)


def test_non_finite_audio_is_a_failed_record_never_scored_or_cached(tmp_path):
    rows = _rows()
    recs = list(run_jobs([{"clip_id": "a", "seed": 0}, {"clip_id": "b", "seed": 1}], rows, _FakeGen(rows, nan=True),
                         {}, cache_dir=tmp_path))
    assert all(r.failed and r.metrics == {} for r in recs)  # the second job ran after the first failed
    assert "the generator audio of clip 'a' (seed 0, source 'a') has 48000 non-finite samples" in recs[0].error
    assert recs[0].to_dict()["failed"] is True and recs[0].to_dict()["error"] == recs[0].error
    assert not list(tmp_path.iterdir())  # nothing cached: a later run tries again
    # non-finite real audio is a damaged data set, not a model failure: it still raises
    rows["a"]["wav_mix"] = rows["a"]["wav_mix"] * np.nan
    with pytest.raises(GeneratorError, match=r"non-finite samples"):
        list(run_jobs([{"clip_id": "a", "seed": 0, "kind": "ground_truth"}], rows, None, {}))


def test_evaluate_clips_reports_each_batch_with_the_engine():
    rows = _rows()
    seen = []
    s = evaluate_clips(_FakeGen(rows), list(rows.values()), {}, 0, None, {"f1": 1.0}, batch_clips=1,
                       on_batch=lambda n, v, sc: seen.append((n, v)))
    assert [n for n, _ in seen] == [1, 2] and s.clip_ids == ["a", "b"]
    assert seen[-1][1] == pytest.approx(objective_value(s, {"f1": 1.0}))
    assert all(d is not None for d in s.dyn_gen) and all(d is None for d in s.dyn_ref)  # rows have no dynamics_db


# ----------------------------------------------------------------------------- diverged generators


class _PerClip:
    """Generates each clip with the generator named for it (a diverged one for some clips)."""

    sr = 16000

    def __init__(self, good, bad, bad_clips):
        self.good, self.bad, self.bad_clips = good, bad, set(bad_clips)

    def generate(self, frames, seed=0, clip_id="clip", **overrides):
        g = self.bad if clip_id in self.bad_clips else self.good
        return g.generate(frames, seed=seed, clip_id=clip_id, **overrides)


@pytest.fixture(scope="module")
def diverged():
    """A good and a diverged (NaN denoiser weights) untrained tiny generator, one torch thread."""
    import torch

    from soundtrack.pipelines.generator import build_tiny_generator

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    good = build_tiny_generator(None, seed=0, num_steps=2, gl_iterations=4)
    bad = build_tiny_generator(None, seed=0, num_steps=2, gl_iterations=4)
    with torch.no_grad():
        for p in bad.denoiser.parameters():
            p.fill_(float("nan"))
    yield good, bad
    torch.set_num_threads(before)


def _tiny_rows(n=3):
    """Three 3 s clips of 32 px frames with click mixes (the tiny generator's input)."""
    from soundtrack.data.features import DEFAULT_CONFIG, dynamics_db

    rows = {}
    for k in range(n):
        t = np.arange(0.25 + 0.1 * k, 3.0, 0.5)
        wav = _clicks(t + 0.05)
        frames = np.zeros((30, 32, 32, 3), np.uint8)
        frames[:, :, :, k % 3] = 60 + 40 * k
        rows[f"c{k}"] = {"clip_id": f"c{k}", "label_event_times": t, "frames": frames, "wav_mix": wav,
                         "melody": None, "dynamics_db": dynamics_db(wav, DEFAULT_CONFIG)}
    return rows


def test_a_diverged_generation_is_a_failed_clip_naming_step_and_window_the_others_are_scored(diverged, tmp_path):
    """A generator whose denoiser is NaN: GeneratorError names the denoising step and the
    window; run_jobs records that clip as failed (nothing cached) and scores the others, and
    evaluate_clips (a tune trial's loop) counts it, reports every clip and scores the rest."""
    good, bad = diverged
    rows = _tiny_rows()
    with pytest.raises(GeneratorError, match=r"clip 'c1' window 1/1: denoising step 1/2 \(timestep \d+\) gave 4096 "
                                             r"non-finite latent values of 4096: the model diverged"):
        bad.generate(rows["c1"]["frames"], seed=0, clip_id="c1")
    model = _PerClip(good, bad, ["c1"])
    jobs = [{"clip_id": c, "seed": 0} for c in rows]
    recs = list(run_jobs(jobs, rows, model, {}, cache_dir=tmp_path / "cache"))
    assert [r.failed for r in recs] == [False, True, False]
    assert "window 1/1: denoising step 1/2" in recs[1].error and recs[1].metrics == {}
    assert all(np.isfinite(recs[i].metrics["onset_rate"]) for i in (0, 2))
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["c0_s0.json", "c0_s0.wav", "c2_s0.json",
                                                                      "c2_s0.wav"]
    seen = []
    scores = evaluate_clips(model, list(rows.values()), {}, 0, None, {"onset_rate": 1.0}, batch_clips=2,
                            on_batch=lambda n, v, s: seen.append((n, v)))
    assert [n for n, _ in seen] == [2, 3] and scores.clip_ids == ["c0", "c2"] and list(scores.failed) == ["c1"]
    assert scores.n_processed == 3 and scores.means()["failed_clips"] == 1.0
    assert seen[-1][1] == pytest.approx(np.mean([recs[0].metrics["onset_rate"], recs[2].metrics["onset_rate"]]))
    # saved and loaded with the trial's artifacts; compared on the clips both arms scored
    from soundtrack.eval.engine import compare, load_scores, save_scores

    save_scores(scores, tmp_path / "trial")
    back = load_scores(tmp_path / "trial")
    assert back.failed == scores.failed and back.n_processed == 3
    everything = evaluate_clips(good, list(rows.values()), {}, 0, None, {"onset_rate": 1.0})
    cmp = compare(everything, back, {"onset_rate": 1.0})
    assert cmp["clips"] == 2 and cmp["failed"] == {"best": {}, "defaults": {"c1": scores.failed["c1"]}}
    # every clip failing leaves the objective undefined, with the reason
    with pytest.raises(ObjectiveError, match=r"undefined on 0 scored clips \(3 clip\(s\) failed; c0: clip 'c0' window"):
        evaluate_clips(bad, list(rows.values()), {}, 0, None, {"onset_rate": 1.0}, on_batch=lambda *a: None)


def test_the_bench_counts_a_failed_clip_and_scores_the_others(diverged, tmp_path):
    """The bench's path (run_chunk, then score_sets' evaluator step and tables) with one
    diverged clip: its row says failed with the error, the means cover the other clips, the
    summary and summary.md count it."""
    import torch

    from soundtrack.eval.bench import BenchConfig, MethodSpec, markdown, run_chunk, score_sets
    from soundtrack.eval.scoring import Evaluator
    from soundtrack.models.encoders import ContrastiveConfig, build_contrastive

    good, bad = diverged
    rows = _tiny_rows()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        enc = build_contrastive(ContrastiveConfig.tiny(video_input_size=32, video_channels=(8, 16), video_dim=16,
                                                       audio_channels=16, audio_dim=16, embed_dim=32, use_text=False))
        Evaluator(enc, torch.randn(3, 280), torch.zeros(3), ["a", "b", "c"], {}).save(tmp_path / "ev")
    methods = {"ours": MethodSpec()}
    cfg = BenchConfig(clips=3, seeds=(0,), n_boot=50)
    jobs = [{"clip_id": c, "source": c, "seed": 0, "kind": "generator"} for c in rows]
    recs = run_chunk(jobs, _PerClip(good, bad, ["c2"]), {}, str(tmp_path / "cache"), rows)
    assert [r.get("failed", False) for r in recs] == [False, False, True] and recs[2]["cached"] is False
    table, sets, summary = score_sets({"ours": recs}, methods, list(rows.values()), tmp_path / "ev", cfg,
                                      {"ours": tmp_path / "cache"})
    assert table["failed"].tolist() == [False, False, True]
    assert "denoising step 1/2" in table["error"].iloc[2] and np.isnan(table["sim"].iloc[2])
    assert summary["failed"]["ours"]["n"] == 1 and summary["failed"]["ours"]["of"] == 3
    assert summary["methods"]["ours"]["f1"]["n"] == 2 and summary["methods"]["ours"]["failed"] == {"n": 1, "of": 3}
    assert summary["methods"]["ours"]["onset_rate"]["mean"] == pytest.approx(table["onset_rate"].iloc[:2].mean())
    assert set(sets["n_clips"]) == {2}  # set metrics over the scored clips
    md = markdown(summary, methods)
    assert "## Failed samples" in md and "| ours | 1 | 3 | c2 (seed 0): clip 'c2' window 1/1: denoising step 1/2" in md


def test_a_clip_without_event_labels_has_nan_sync_metrics_not_zero():
    """Real videos have no synthetic event labels: the sync and beat metrics are undefined
    there (nan), never 0; onset_rate and the label-free metrics are scored."""
    rows = _rows()
    del rows["a"]["label_event_times"]
    rows["b"]["label_event_times"] = None
    recs = list(run_jobs([{"clip_id": c, "seed": 0, "kind": "ground_truth"} for c in ("a", "b")], rows, None, {}))
    for r in recs:
        assert all(math.isnan(r.metrics[m]) for m in ("f1", "precision", "hit_rate", "bcs", "bhs", "beat_f1"))
        assert r.metrics["onset_rate"] > 0 and math.isfinite(r.metrics["pche"])
    labelled = list(run_jobs([{"clip_id": "a", "seed": 0, "kind": "ground_truth"}], _rows(), None, {}))[0]
    assert labelled.metrics["onset_rate"] == recs[0].metrics["onset_rate"] and math.isfinite(labelled.metrics["f1"])
