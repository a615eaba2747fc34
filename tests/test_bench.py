"""The bench runner: config checks, per-clip scoring and the summary (unit), and a real bench
on local Ray (integration).

The integration test runs real Ray tasks that generate with an untrained tiny generator
on real decoded clips, scores them, then re-runs and must take every sample from the cache.
"""

import json
import math
import shutil

import numpy as np
import pytest
import yaml
from conftest import click_track

from soundtrack.config import ConfigError, FeaturizeSection


def _write(tmp_path, data, name="b.yaml"):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data))
    return p


def test_config_errors_name_the_problem(tmp_path):
    from soundtrack.eval.bench import load_bench_config

    with pytest.raises(ConfigError, match="'methods' is empty"):
        load_bench_config(_write(tmp_path, {"name": "x"}))
    with pytest.raises(ConfigError, match="allowed values: 'ground_truth', 'retrieval', 'generator'"):
        load_bench_config(_write(tmp_path, {"methods": {"a": {"kind": "magic"}}}))
    with pytest.raises(ConfigError, match="'nope' .* is not a method"):
        load_bench_config(_write(tmp_path, {"baseline": "nope", "methods": {"a": {"kind": "ground_truth"}}}))
    with pytest.raises(ConfigError, match="unknown key 'methods.a.smapler'"):
        load_bench_config(_write(tmp_path, {"methods": {"a": {"smapler": {}}}}))
    with pytest.raises(ConfigError, match="takes only 'kind' and 'label'"):
        load_bench_config(_write(tmp_path, {"methods": {"a": {"kind": "ground_truth", "sampler": {"num_steps": 2}}}}))
    # a sampler override is checked at load time, with the sampler knobs' one message
    with pytest.raises(ConfigError, match=r"methods.a.sampler: guidance_scale must be a finite number in \[0, 30\]"):
        load_bench_config(_write(tmp_path, {"methods": {"a": {"sampler": {"guidance_scale": 99}}}}))
    with pytest.raises(ConfigError, match=r"methods.a.sampler: unknown generation option\(s\) \['cfg_scale'\]"):
        load_bench_config(_write(tmp_path, {"methods": {"a": {"sampler": {"cfg_scale": 2}}}}))
    cfg, methods = load_bench_config(REPO_BENCH)
    assert cfg.clips == 16 and "ground_truth" in methods and methods["global"].train


from pathlib import Path  # noqa: E402

REPO_BENCH = Path(__file__).resolve().parents[1] / "experiments" / "bench_demo.yaml"


def test_derangement_has_no_fixed_point_and_is_seeded():
    from soundtrack.eval.bench import derangement

    for n in (2, 3, 16):
        for seed in range(5):
            p = derangement(n, seed)
            assert sorted(p) == list(range(n)) and all(p[i] != i for i in range(n))
    assert derangement(16, 0) == derangement(16, 0) and derangement(16, 0) != derangement(16, 1)


def test_spec_hash_changes_with_settings_not_label(tmp_path):
    from soundtrack.eval.bench import MethodSpec, spec_hash

    a = spec_hash(MethodSpec(label="x", sampler={"guidance_scale": 2.0}), None)
    assert a == spec_hash(MethodSpec(label="y", sampler={"guidance_scale": 2.0}), None)
    assert a != spec_hash(MethodSpec(sampler={"guidance_scale": 3.0}), None)
    assert a != spec_hash(MethodSpec(sampler={"guidance_scale": 2.0}, video="other"), None)


@pytest.mark.integration
def test_bench_on_local_ray_scores_and_caches(synth_small, tmp_path, stage_storage):
    """The bench on the storage root of the stage tests (an ``s3://`` root): it reads a
    published featurize run and a registry model from the store, works in a staging copy
    and publishes its outputs (samples cache included, what the re-run reuses)."""
    import ray
    import soundfile as sf
    import torch

    from soundtrack.data.shards import decode_row, read_shards
    from soundtrack.distributed.featurize import run_featurize
    from soundtrack.eval.bench import load_bench_config
    from soundtrack.eval.scoring import Evaluator, clip_metrics
    from soundtrack.models.encoders import ContrastiveConfig, build_contrastive
    from soundtrack.pipelines.generator import build_tiny_generator
    from soundtrack.stages.bench import run_bench
    from soundtrack.stages.registry import register
    from soundtrack.stages.runs import Run
    from soundtrack.storage import StorageRoot, Store, staged

    with Run(stage_storage, "features", "f", config={"featurize": {"size": 32}}) as run:
        feats = run.dir
        run_featurize(synth_small, feats, FeaturizeSection(size=32, rows_per_shard=4), use_ray=False, progress=False)
        run.finish()
    remote = not StorageRoot.parse(stage_storage).is_local
    if remote:  # only the store has the features now: the bench fetches the published run
        shutil.rmtree(feats)
    build_tiny_generator(tmp_path / "gen", num_steps=2, gl_iterations=4)
    register("gen", tmp_path / "gen", {}, {"purpose": "bench test"}, storage=stage_storage)
    enc = build_contrastive(ContrastiveConfig.tiny(video_input_size=32, video_channels=(8, 16), video_dim=16,
                                                   audio_channels=16, audio_dim=16, embed_dim=32, use_text=False))
    torch.manual_seed(0)
    Evaluator(enc, torch.randn(3, 280), torch.zeros(3), ["a", "b", "c"], {"val_accuracy": float("nan")}).save(tmp_path / "ev")
    from soundtrack.models.audio_embedders import VGGishNet

    # FAD on a standard backbone: a tiny VGGish in torchvggish's state-dict format
    vgg = VGGishNet(conv=(2, 4, 4, 4, 8, 8), fc=(16, 16, 8))
    with torch.no_grad():  # positive last-layer biases: the final ReLU keeps most units alive
        vgg.embeddings[4].bias.add_(0.5)
    torch.save(vgg.state_dict(), tmp_path / "vggish.pth")
    cfg_path = _write(tmp_path, {
        "modes": ["loris", "muvi", "diffbgm"], "embedder": f"vggish:{tmp_path / 'vggish.pth'}",
        "name": "t", "model": "registry:gen", "evaluator": str(tmp_path / "ev"),
        "data": f"{stage_storage}/features/f" if remote else str(feats),
        "split": "train", "clips": 3, "seeds": [0, 1], "clips_per_task": 2, "cpus_per_task": 0.5, "n_boot": 100,
        "baseline": "gen", "pairs": [["ground_truth", "random_retrieval"]],
        "methods": {"ground_truth": {"kind": "ground_truth"}, "random_retrieval": {"kind": "retrieval"},
                    "gen": {"sampler": {"guidance_scale": 2.0}}, "gen_other": {"video": "other"}}})
    cfg, methods = load_bench_config(cfg_path)
    try:
        out = run_bench(cfg, methods, storage=stage_storage, progress=False)
        import pandas as pd

        if remote:  # the outputs are published in the store, the samples cache with them
            staging = staged(out)
            assert staging is not None and Store(stage_storage).is_published("bench/t")
            keys = staging.store.list(staging.rel, recursive=True)
            assert "results.parquet" in keys and any(k.startswith("cache/gen-") for k in keys)

        table = pd.read_parquet(out / "results.parquet")
        assert len(table) == 4 * 3 * 2  # methods x clips x seeds, each once
        assert not table.duplicated(["method", "clip_id", "seed"]).any()
        gens = table[table["method"] == "gen"]
        assert (gens["gen_s"] > 0).all()
        # ground truth's scores are those of the real mix, computed directly
        rows = {r["clip_id"]: decode_row(r) for r in read_shards(feats, split="train").to_dict("records")}
        gt = table[(table["method"] == "ground_truth") & (table["seed"] == 0)].iloc[0]
        direct = clip_metrics(np.asarray(rows[gt["clip_id"]]["wav_mix"], np.float32), rows[gt["clip_id"]])
        assert gt["f1"] == pytest.approx(direct["f1"]) and gt["onset_rate"] == pytest.approx(direct["onset_rate"])
        # the web page's runs view reads the bench's table from the store (s3:// here)
        from soundtrack.serving.overview import bench_run

        view = bench_run(Store(stage_storage), "t")
        assert view["status"] == "finished" and {r["method"] for r in view["rows"]} == set(table["method"])
        f1 = {r["method"]: r["values"]["f1"] for r in view["rows"]}
        assert f1["ground_truth"][0] == pytest.approx(table[table["method"] == "ground_truth"]["f1"].mean())
        assert "bench.png" in view["plots"]
        # random retrieval uses another clip's real audio, never the clip's own
        rr = table[table["method"] == "random_retrieval"]
        assert (rr["source"] != rr["clip_id"]).all()
        # the generator depends on the seed; the cached waveform is what was scored
        summ = json.loads((out / "summary.json").read_text())
        cache = out / summ["cache"]["gen"]
        w0, _ = sf.read(str(cache / f"{gens.iloc[0]['clip_id']}_s0.wav"))
        w1, _ = sf.read(str(cache / f"{gens.iloc[0]['clip_id']}_s1.wav"))
        assert not np.allclose(w0, w1)
        assert "gen - ground_truth" not in summ["paired_differences"]
        assert "ground_truth - random_retrieval" in summ["paired_differences"]
        assert {"f1", "precision", "onset_rate"} <= set(summ["paired_differences"]["ground_truth - gen"])
        md = (out / "summary.md").read_text()
        assert "| method | f1 ↑ | precision ↑ |" in md and "| ground_truth - random_retrieval |" in md
        # the comparison modes score the real mix against itself at their ceilings
        assert summ["modes"]["loris"]["ground_truth"]["bcs"] == 1.0 and summ["modes"]["muvi"]["ground_truth"]["bhs"] == 100
        assert summ["modes"]["diffbgm"]["ground_truth"]["pche_abs_diff"] == 0.0
        assert "## Comparison modes" in md and "**diffbgm**" in md
        # FAD on the backbone: 0 for the real mixes themselves, and the tables name the encoder
        assert summ["fad_encoder"].startswith("vggish sha256:") and summ["fad_encoder"] in md
        assert summ["methods"]["ground_truth"]["fad"]["mean"] == pytest.approx(0.0, abs=1e-6)
        assert summ["methods"]["gen"]["fad"]["mean"] > 1e3 * max(summ["methods"]["ground_truth"]["fad"]["mean"], 1e-12)
        assert (out / "bench.png").stat().st_size > 10_000
        # a re-run takes every sample from the cache and gives the same table
        mtimes = {p: p.stat().st_mtime_ns for p in cache.glob("*.wav")}
        out2 = run_bench(cfg, methods, storage=stage_storage, progress=False)
        t2 = pd.read_parquet(out2 / "results.parquet")
        assert {p: p.stat().st_mtime_ns for p in cache.glob("*.wav")} == mtimes
        pd.testing.assert_frame_equal(table.sort_values(["method", "clip_id", "seed"]).reset_index(drop=True),
                                      t2.sort_values(["method", "clip_id", "seed"]).reset_index(drop=True))
    finally:
        ray.shutdown()


def _clicks(times, sr=16000, dur=10.24):
    return click_track(times, sr, dur)


def test_clip_metrics_reward_clicks_on_the_events_not_beside_them():
    from soundtrack.eval.scoring import clip_metrics

    events = np.arange(0.5, 10.0, 0.5)
    row = {"label_event_times": events}
    on = clip_metrics(_clicks(events), row)
    off = clip_metrics(_clicks(events + 0.25), row)  # every click between two events
    assert on["f1"] > 0.9 and on["precision"] > 0.9 and abs(on["onset_rate"] - len(events) / 10.24) < 0.3
    assert off["f1"] < 0.1 and off["hit_rate"] < 0.1
    assert np.isnan(on["melody_acc"]) and np.isnan(on["dyn_r"])  # no reference controls in the row


def test_clip_metrics_tonality_and_mode_match_follow_the_row():
    from soundtrack.errors import MetricError
    from soundtrack.eval.scoring import AUDIO_METRICS, CLIP_METRICS, DIRECTION, clip_metrics

    sr, dur = 16000, 1.0
    t = np.arange(int(sr * dur)) / sr

    def triad(notes):
        return sum(np.sin(2 * np.pi * 440.0 * 2 ** ((m - 69) / 12) * t) for m in notes) * np.clip((dur - t) / 0.05, 0, 1)

    wav = np.concatenate([triad(c) for c in ((48, 60, 64, 67), (53, 65, 69, 72), (55, 67, 71, 74), (48, 60, 64, 67))])
    wav = (0.2 * wav / np.abs(wav).max()).astype(np.float32)
    row = {"label_event_times": np.arange(0.0, 4.0, 1.0)}
    old = clip_metrics(wav, row)  # a data set without label_mode: nan, not a crash
    assert set(old) == set(AUDIO_METRICS) and set(AUDIO_METRICS) <= set(CLIP_METRICS) <= set(DIRECTION)
    assert math.isnan(old["mode_match"]) and math.isnan(clip_metrics(wav, {**row, "label_mode": float("nan")})["mode_match"])
    assert clip_metrics(wav, {**row, "label_mode": "major"})["mode_match"] == 1.0
    assert clip_metrics(wav, {**row, "label_mode": "minor"})["mode_match"] == 0.0
    assert 0.1 < old["chroma_conc"] < 1.0 and 0.0 <= old["flatness"] < 1e-3
    noise = (0.1 * np.random.default_rng(0).standard_normal(len(wav))).astype(np.float32)
    loud = clip_metrics(noise, row)
    assert loud["chroma_conc"] < old["chroma_conc"] / 5 and loud["flatness"] > 0.5
    with pytest.raises(MetricError, match="unknown mode label 'lydian'"):
        clip_metrics(wav, {**row, "label_mode": "lydian"})



def _table(rng, methods, clips=10, seeds=(0, 1)):
    """A per-clip results table in the bench's layout: every per-clip metric, random values."""
    import pandas as pd

    from soundtrack.eval.scoring import CLIP_METRICS

    recs = []
    for key, (conc, flat, match) in methods.items():
        for seed in seeds:
            for c in range(clips):
                rec = {"method": key, "label": key, "clip_id": f"c{c:02d}", "seed": seed}
                rec.update({m: float(rng.uniform()) for m in CLIP_METRICS})
                # the ground truth scores the same audio for every seed
                jitter = 0.0 if key == "ground_truth" else rng.normal(0, 0.002)
                rec.update(chroma_conc=conc + 0.004 * c + jitter, flatness=flat + 0.003 * c + jitter,
                           mode_match=float(match[c % len(match)]))
                recs.append(rec)
    return pd.DataFrame.from_records(recs)


def test_summary_tonality_band_verdicts_and_paired_mode_match():
    import pandas as pd

    from soundtrack.eval.bench import BenchConfig, MethodSpec, markdown, summarize

    methods = {"ground_truth": MethodSpec(kind="ground_truth"), "ours": MethodSpec(),
               "other_video": MethodSpec(video="other"), "noisy": MethodSpec(label="noise-like")}
    rng = np.random.default_rng(0)
    table = _table(rng, {"ground_truth": (0.05, 0.02, [1, 1, 0, 1]), "ours": (0.055, 0.025, [1, 1, 1, 0]),
                         "other_video": (0.05, 0.02, [0, 1, 0, 0]), "noisy": (0.005, 0.5, [0, 1])})
    cfg = BenchConfig(pairs=(("ours", "other_video"),), n_boot=200)
    summ = summarize(table, pd.DataFrame(columns=["method", "metric", "value", "ci_low", "ci_high", "n_clips"]),
                     methods, cfg)
    ton = summ["tonality"]
    gt_conc = 0.05 + 0.004 * np.arange(10)
    assert ton["reference"] == "ground_truth" and ton["percentiles"] == [5.0, 95.0]
    assert ton["band"]["chroma_conc"] == pytest.approx(list(np.percentile(gt_conc, [5, 95])))
    assert ton["methods"]["ours"]["chroma_conc"]["inside"] is True
    assert ton["methods"]["ours"]["flatness"]["inside"] is True
    assert ton["methods"]["noisy"]["chroma_conc"]["inside"] is False
    assert ton["methods"]["noisy"]["flatness"]["inside"] is False and ton["methods"]["noisy"]["flatness"]["in_band_frac"] == 0
    assert ton["methods"]["noisy"]["chroma_conc"]["median"] == pytest.approx(0.005 + 0.004 * 4.5, abs=0.003)
    assert ton["methods"]["ours"]["chroma_conc"]["n"] == 20
    # the paired interval of mode_match (and of sync f1) comes with the pairs
    d = summ["paired_differences"]["ours - other_video"]
    assert {"mode_match", "f1", "chroma_conc", "flatness"} <= set(d)
    assert d["mode_match"]["mean"] == pytest.approx(0.8 - 0.3) and d["mode_match"]["n"] == 20  # 8/10 vs 3/10 match
    lo, hi = d["mode_match"]["ci95"]
    assert lo <= 0.5 <= hi and lo > 0
    json.dumps(summ)  # summary.json is written from this
    md = markdown(dict(summ, bench="t", clips=10, split="test", seeds=[0, 1], wall_s=1.0), methods)
    section = md.split("## Tonality")[1]
    noisy_line = next(x for x in section.splitlines() if x.startswith("| noise-like |"))
    ours_line = next(x for x in section.splitlines() if x.startswith("| ours |"))
    assert noisy_line.count("| no (0 % of clips) |") == 2 and ours_line.count("| yes (") == 2
    assert "mode_match" in md.split("## Paired differences")[1].splitlines()[2]
    # without a ground_truth method: medians, no band or verdicts
    no_gt = {k: v for k, v in methods.items() if k != "ground_truth"}
    ton2 = summarize(table[table["method"] != "ground_truth"], pd.DataFrame(columns=["method", "metric"]), no_gt,
                     BenchConfig(n_boot=50))["tonality"]
    assert ton2["reference"] is None and ton2["band"]["flatness"] is None
    assert ton2["methods"]["ours"]["flatness"]["inside"] is None and ton2["methods"]["ours"]["flatness"]["n"] == 20
    assert "no band of real mixes" in markdown(dict(summ, tonality=ton2), no_gt)
    # results tabulated before these metrics existed: absent, not a crash
    old = table.drop(columns=["chroma_conc", "flatness", "mode_match"])
    summ_old = summarize(old, pd.DataFrame(columns=["method", "metric"]), methods, BenchConfig(n_boot=50))
    assert summ_old["tonality"]["band"]["chroma_conc"] is None
    assert summ_old["methods"]["ours"]["mode_match"]["n"] == 0 and "mode_match" not in summ_old["paired_differences"]


def test_paired_set_metric_differences_come_from_shared_subsets():
    """A set metric's paired difference: per-subset differences of the two methods on the same
    subsets of the same clips, its interval containing the point; seeds whose clips differ are
    left out, and a method compared with itself gives exactly 0."""
    from soundtrack.eval.bench import paired_set_differences
    from soundtrack.eval.scoring import SET_METRICS

    rng = np.random.default_rng(0)
    ids = [f"c{i}" for i in range(8)]

    def entry(shift, ids=ids):
        reps = [{m: float(shift + rng.normal(0, 0.1)) for m in SET_METRICS} for _ in range(40)]
        return {"ids": ids, "m": 4, "point": {m: float(shift) for m in SET_METRICS}, "reps": reps}

    set_reps = {("a", 0): entry(1.0), ("b", 0): entry(0.2), ("a", 1): entry(1.0), ("b", 1): entry(0.2, ids[:7])}
    d = paired_set_differences("a", "b", set_reps, [0, 1])
    lo, hi = d["fad"]["ci95"]
    assert d["fad"]["mean"] == pytest.approx(0.8) and lo <= 0.8 <= hi and lo > 0.3 and d["fad"]["n"] == 8
    same = paired_set_differences("a", "a", set_reps, [0, 1])
    assert same["fad"]["mean"] == 0.0 and same["fad"]["ci95"] == [0.0, 0.0] and same["fad"]["n"] == 16
