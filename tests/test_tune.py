"""``soundtrack tune``: config checks, space mapping, a search hard-killed mid-way and resumed
(every trial exactly once, the searcher still TPE with its history), and the registry entry
it writes loading through the model-URI loader and generating with the tuned settings."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from soundtrack.config import ConfigError, FeaturizeSection

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- fast checks


def _write(tmp_path, data, name="t.yaml"):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data))
    return p


def test_config_errors_name_key_and_choices(tmp_path):
    from soundtrack.tuning.config import load_tune_config

    base = {"name": "t", "model": "file:/x"}
    with pytest.raises(ConfigError, match=r"unknown parameter 'search.params.cfg'.*allowed: guidance_scale"):
        load_tune_config(_write(tmp_path, {**base, "search": {"params": {"cfg": {"low": 1}}}}))
    with pytest.raises(ConfigError, match=r"objective.fad = 1.0: fad is lower-is-better"):
        load_tune_config(_write(tmp_path, {**base, "objective": {"fad": 1.0}}))
    with pytest.raises(ConfigError, match=r"unknown metric 'objective.bogus'"):
        load_tune_config(_write(tmp_path, {**base, "objective": {"bogus": 1.0}}))
    with pytest.raises(ConfigError, match=r"search.scheduler.*allowed values: 'asha', 'fifo'"):
        load_tune_config(_write(tmp_path, {**base, "search": {"scheduler": "hyperband"}}))
    with pytest.raises(ConfigError, match=r"default of search.params.guidance_scale"):
        load_tune_config(_write(tmp_path, {**base, "search": {"params": {"guidance_scale": {"low": 3.0, "high": 5.0}}}}))
    # a range reaching outside the sampler knob's bounds names the range and the bounds
    with pytest.raises(ConfigError, match=r"search.params.guidance_scale has range \[1.0, 40.0\].*guidance_scale must "
                                          r"be a finite number in \[0, 30\].*got 40.0"):
        load_tune_config(_write(tmp_path, {**base, "search": {"params": {"guidance_scale": {"high": 40.0}}}}))
    with pytest.raises(ConfigError, match=r"search.params.train_window_k has choices \[0, 8\].*window_k must be an "
                                          r"integer >= 1"):
        load_tune_config(_write(tmp_path, {**base, "model": "train:x", "search": {
            "space": "training", "params": {"train_window_k": {"choices": [0, 8]}}}}))
    with pytest.raises(ConfigError, match=r"training space needs 'model: train:<run>'"):
        load_tune_config(_write(tmp_path, {**base, "search": {"space": "training"}}))
    with pytest.raises(ConfigError, match=r"unknown key 'train.bogus'"):
        load_tune_config(_write(tmp_path, {**base, "train": {"bogus": 1}}))
    cfg = load_tune_config(_write(tmp_path, base))
    from soundtrack.tuning.config import tune_run_dir

    # named by the config, never the clock; any setting changes the name
    assert tune_run_dir(cfg) == tune_run_dir(load_tune_config(_write(tmp_path, base)))
    assert tune_run_dir(cfg) != tune_run_dir(load_tune_config(_write(tmp_path, base), ["search.scheduler=fifo"]))


def test_space_maps_to_generator_settings():
    from soundtrack.pipelines.generator import GeneratorError, apply_overrides
    from soundtrack.pipelines.sampler import SamplerConfig
    from soundtrack.tuning.space import inert_params, sampling_overrides, training_changes

    conds = ("video", "music", "sfx")
    o = sampling_overrides({"guidance_scale": 4.0, "window_k": "dynamic", "weight_video": 0.5, "weight_text": 0.9,
                            "selector_tau": 300, "num_steps": 15}, conds)
    assert o == {"guidance_scale": 4.0, "attention": "dynamic", "num_steps": 15,
                 "weights": {"video": 0.5, "music": 1.0, "sfx": 1.0}}  # text settings: no text condition
    assert sampling_overrides({"window_k": 16, "selector_tau": 300}, conds + ("text",)) == {
        "attention": "segment", "window_k": 16, "selector_tau": 300}
    assert set(inert_params({"weight_text": 0, "selector_tau": 0, "guidance_scale": 0}, conds)) == {
        "weight_text", "selector_tau"}
    assert training_changes({"lr": 1e-3, "train_window_k": 4}) == {"lr": 1e-3, "denoiser": {"attention": "segment",
                                                                                            "window_k": 4}}
    assert apply_overrides(SamplerConfig(), {"selector_tau": 250}).selector_tau == 250
    with pytest.raises(GeneratorError, match=r"selector_tau must be an integer in \[0, 1000\] \(a timestep"):
        apply_overrides(SamplerConfig(), {"selector_tau": 5000})


def test_selector_tau_override_switches_text_and_video_tokens():
    """τ per call: above it only text (and null) tokens are visible, below it only video ones."""
    import torch

    from soundtrack.models.unet import Conditions, DenoiserConfig, SoundtrackDenoiser

    torch.manual_seed(0)
    cfg = DenoiserConfig.tiny(latent_hw=(16, 64), block_out_channels=(16, 32, 32),
                              attention_levels=(False, True, True), cross_attention_dim=32,
                              fusion="none", video_dim=8, music_dim=8, sfx_dim=8, text_dim=8)
    den = SoundtrackDenoiser(cfg).eval()
    for p in den.parameters():  # random (not zero-initialised) weights everywhere
        p.data.normal_(0, 0.05)
    c = Conditions(video=torch.randn(1, 103, 8), music=torch.randn(1, 103, 8), sfx=torch.randn(1, 103, 8),
                   text=torch.randn(1, 1, 8))
    c_other_text = Conditions(video=c.video, music=c.music, sfx=c.sfx, text=torch.randn(1, 1, 8))
    x = torch.randn(1, 4, 16, 64)
    with torch.no_grad():
        early = [den(x, 500, cc, selector_tau=200) for cc in (c, c_other_text)]
        late = [den(x, 100, cc, selector_tau=200) for cc in (c, c_other_text)]
        off = [den(x, 100, cc) for cc in (c, c_other_text)]
    assert not torch.allclose(early[0], early[1])  # t >= τ: text is read
    torch.testing.assert_close(late[0], late[1])  # t < τ: text is hidden
    assert not torch.allclose(off[0], off[1])  # no override: the model's setting (selector off)


# ----------------------------------------------------------------------------- search on Ray


@pytest.fixture(scope="module")
def inputs(synth_small, tmp_path_factory):
    """Features of the 8 synthetic clips (relabelled 4 val / 4 test), an untrained tiny
    generator, and a throwaway evaluator (untrained tiny encoders + a random probe)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch

    from soundtrack.distributed.featurize import run_featurize
    from soundtrack.eval.scoring import Evaluator
    from soundtrack.models.encoders import ContrastiveConfig, build_contrastive
    from soundtrack.pipelines.generator import build_tiny_generator
    from soundtrack.stages.runs import Run

    root = tmp_path_factory.mktemp("tune")
    feats = root / "features"
    with Run(root, "features", "f", run_dir=feats, config={"featurize": {"size": 32}}) as run:
        run_featurize(synth_small, feats, FeaturizeSection(size=32, rows_per_shard=8), use_ray=False, progress=False)
        run.finish()
    ids = []
    for f in sorted((feats / "shards").glob("shard-*.parquet")):
        ids += pq.read_table(f, columns=["clip_id"]).column("clip_id").to_pylist()
    order = {c: i for i, c in enumerate(sorted(ids))}
    for f in sorted((feats / "shards").glob("shard-*.parquet")):
        t = pq.read_table(f)
        split = ["val" if order[c] < 4 else "test" for c in t.column("clip_id").to_pylist()]
        t = t.set_column(t.schema.get_field_index("split"), "split", pa.array(split))
        pq.write_table(t, f)
    gen = build_tiny_generator(root / "model", num_steps=2, gl_iterations=4)
    gen.card["features"] = str(feats)
    gen.save(root / "model")
    enc = build_contrastive(ContrastiveConfig.tiny(video_input_size=32, video_channels=(8, 16), video_dim=16,
                                                   audio_channels=16, audio_dim=16, embed_dim=32, use_text=False),
                            load_pretrained=False)
    from soundtrack.eval.scoring import clip_statistics

    n_feat = len(clip_statistics(np.zeros(16000, np.float32)))
    g = torch.Generator().manual_seed(0)
    Evaluator(enc, torch.randn(3, n_feat, generator=g), torch.zeros(3), ["a", "b", "c"]).save(root / "evaluator")
    return root


def _cfg(root: Path, **search) -> Path:
    data = {
        "name": "t", "model": f"file:{root / 'model'}", "evaluator": str(root / "evaluator"),
        "val_clips": 2, "test_clips": 2, "batch_clips": 1, "registry": "tuned",
        "objective": {"f1": 1.0, "sim": 1.0, "fad": -0.01},
        "search": {"num_samples": 5, "n_startup_trials": 2, "grace_clips": 1, "max_concurrent": 2,
                   "params": {"num_steps": {"low": 1, "high": 3, "step": 1, "default": 2}}, **search},
    }
    p = root / "tune.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def _env(root: Path) -> dict:
    import tempfile

    env = dict(os.environ)
    # a private Ray temp dir, short: Ray's socket paths must fit in 107 bytes
    env.update(RAY_TMPDIR=tempfile.mkdtemp(prefix="rt", dir="/tmp"), PYTHONUNBUFFERED="1")
    env.pop("RAY_ADDRESS", None)  # a private local Ray, never a running cluster
    return env


def _soundtrack(*args) -> list[str]:
    return [sys.executable, "-m", "soundtrack.cli", *map(str, args)]


@pytest.mark.integration
@pytest.mark.slow
def test_search_killed_and_resumed_keeps_every_trial_once_and_tpe_history(inputs, module_stage_storage):
    """On the stage tests' storage root (an ``s3://`` root): Tune's experiment lives in the
    run's staging directory, the run's card and lease in the store; the resumed search is
    published there."""
    from optuna.samplers import TPESampler

    from soundtrack.distributed.tune import load_searcher
    from soundtrack.storage import Store, read_card, staged
    from soundtrack.tuning.config import load_tune_config, tune_run_dir

    root = inputs
    cfg_path = _cfg(root)
    storage = module_stage_storage
    run_dir = tune_run_dir(load_tune_config(cfg_path, [f"storage={storage}"]))
    log = open(root / "first.log", "w")
    proc = subprocess.Popen(_soundtrack("tune", cfg_path, "--storage", storage), cwd=REPO, env=_env(root),
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    exp = run_dir / "tune"
    try:
        deadline = time.time() + 240
        while time.time() < deadline:
            done = sorted((run_dir / "trials").glob("*/done.json"))
            states = list(exp.glob("experiment_state-*.json")) + list(exp.glob("searcher-state-*.pkl"))
            # two trials finished and an experiment checkpoint written after them
            if len(done) >= 2 and states and min(p.stat().st_mtime for p in states) > sorted(
                    p.stat().st_mtime for p in done)[1]:
                break
            assert proc.poll() is None, (root / "first.log").read_text()[-3000:]
            time.sleep(0.5)
        else:
            pytest.fail("the search did not finish two trials in time:\n" + (root / "first.log").read_text()[-3000:])
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray it started, hard
        except ProcessLookupError:
            pass
        proc.wait()
    assert read_card(run_dir)["status"] == "running"
    staging = staged(run_dir)
    if staging is not None:  # what a --resume on another host would read first
        assert read_card(staging.uri)["status"] == "running" and not Store(storage).is_published(staging.rel)
    before = load_searcher(run_dir)
    hist_before = {tid: t.params for tid, t in before._ot_trials.items()}
    finished_before = {p.parent.name for p in (run_dir / "trials").glob("*/done.json")}
    assert len(hist_before) >= 2

    # relaunching without --resume refuses, naming the flags
    r = subprocess.run(_soundtrack("tune", cfg_path, "--storage", storage), cwd=REPO, env=_env(root),
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--resume" in r.stderr and "--force" in r.stderr

    r = subprocess.run(_soundtrack("tune", cfg_path, "--storage", storage, "--resume"), cwd=REPO, env=_env(root),
                       capture_output=True, text=True, timeout=400, start_new_session=True)
    assert r.returncode == 0, r.stderr[-4000:]
    assert "resuming" in r.stderr

    import pandas as pd

    df = pd.read_csv(run_dir / "trials.csv")
    assert len(df) == 5 and df["trial_id"].is_unique  # every trial exactly once
    assert set(hist_before) <= set(df["trial_id"])  # trials known before the kill kept their ids
    assert finished_before <= set(df["trial_id"])
    # trial 0 is the paper defaults (CFG 2.5, k = 8, equal weights)
    first = df.iloc[0]
    assert first["param_guidance_scale"] == 2.5 and str(first["param_window_k"]) == "8"
    assert first["param_weight_video"] == first["param_weight_music"] == first["param_weight_sfx"] == 1.0
    assert "param_weight_text" not in df  # inert for a model without text: left out, and said so
    # the web page's runs view reads the finished search from the store (s3:// here)
    from soundtrack.serving.overview import runs_overview

    seen = {r["name"]: r for r in runs_overview(Store(storage))["tune"]}
    view = seen[run_dir.name]
    assert view["status"] == "finished" and view["trials"]["n"] == 5 and "history.png" in view["plots"]
    assert [row[view["trials"]["columns"].index("trial_id")] for row in view["trials"]["rows"]] == list(df["trial_id"])
    after = load_searcher(run_dir)
    study = after._ot_study
    assert isinstance(study.sampler, TPESampler)  # not a fallback to random search
    assert len(study.trials) == 5 and set(after._ot_trials) == set(df["trial_id"])
    for tid, params in hist_before.items():  # the history from before the kill is in the same study
        assert after._ot_trials[tid].params == params
    assert all(t.state.name in ("COMPLETE", "PRUNED") for t in study.trials)
    # each trial's artifacts are kept
    for tid in df["trial_id"]:
        d = run_dir / "trials" / tid
        assert (d / "config.json").exists() and (d / "per_clip.csv").exists()
    for name in ("history.png", "importance.png", "score_vs_cfg.png", "score_vs_window.png", "comparison.json"):
        assert (run_dir / name).exists(), name
    comp = json.loads((run_dir / "comparison.json").read_text())
    assert {"val", "test"} <= set(comp) and comp["test"]["clips"] == 2
    assert "ci95" in comp["test"]["objective"]["best_minus_defaults"]
    card = read_card(run_dir)
    assert card["status"] == "finished" and card["attempts"] == 2
    assert card["summary"]["trials"] == 5
    if staging is not None:  # published: trials, report and card, the marker last
        store = Store(storage)
        assert store.is_published(staging.rel) and read_card(staging.uri)["attempts"] == 2
        assert store.is_file(f"{staging.rel}/trials.csv") and store.is_file(f"{staging.rel}/comparison.json")


@pytest.mark.integration
@pytest.mark.slow
def test_registry_entry_loads_and_generates_with_tuned_settings(inputs, module_stage_storage):
    from soundtrack.stages.models import load_generator
    from soundtrack.stages.registry import read_card as registry_card
    from soundtrack.storage import Store, is_uri, read_card, run_uri
    from soundtrack.tuning.config import load_tune_config, tune_run_dir

    root = inputs
    storage = module_stage_storage
    run_dir = tune_run_dir(load_tune_config(_cfg(root), [f"storage={storage}"]))
    if read_card(run_dir).get("status") != "finished":  # run alone: the resume test has not searched yet
        res = subprocess.run(_soundtrack("tune", str(_cfg(root)), "--storage", str(storage), "--resume"),
                             cwd=REPO, env=_env(root), capture_output=True, text=True, timeout=900)
        assert res.returncode == 0, res.stderr[-3000:]
    assert read_card(run_dir)["status"] == "finished"
    card = registry_card("tuned", storage)
    summary = read_card(run_dir)["summary"]
    assert card["search"]["trial_id"] == summary["best"]["trial_id"]
    assert card["search"]["run_dir"] == run_uri(run_dir)  # the run's URI in the store, not its temp copy
    assert card["metrics"]["test"]["clips"] == 2 and card["created_at"]
    from soundtrack.stages.models import resolve_model_uri

    entry = resolve_model_uri("registry:tuned", storage)  # the published version CURRENT names
    if is_uri(storage):  # downloaded from the store, verified against that version's marker
        store = Store(storage)
        version = json.loads(store.read_bytes("registry/tuned/CURRENT"))["version"]
        assert store.is_published(f"registry/tuned/versions/{version}") and (entry.parent / "_COMPLETE").is_file()
    else:
        assert entry.parent.parent.name == "versions" and (entry.parent / "_COMPLETE").is_file()
    assert list((entry / "denoiser").glob("*.safetensors"))
    gen = load_generator("registry:tuned", storage=storage)
    settings = card["config"]["settings"]
    assert gen.sampler.guidance_scale == pytest.approx(settings["guidance_scale"])
    assert gen.sampler.num_steps == settings["num_steps"]
    frames = np.random.default_rng(0).integers(0, 255, (30, 32, 32, 3), dtype=np.uint8)
    wav = gen.generate(frames, seed=0, clip_id="x")
    assert wav.shape == (48000,) and np.isfinite(wav).all()
    # the defaults ARE the tuned settings: the same as passing them explicitly to the source model
    src = load_generator(f"file:{root / 'model'}")
    np.testing.assert_array_equal(wav, src.generate(frames, seed=0, clip_id="x", **settings))
    # a finished search relaunched with another registry name publishes it there without searching again
    attempts = read_card(run_dir)["attempts"]
    res = subprocess.run(_soundtrack("tune", str(_cfg(root)), "--storage", str(storage), "--set", "registry=tuned_again"),
                         cwd=REPO, env=_env(root), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    again = registry_card("tuned_again", storage)
    assert again["search"]["trial_id"] == card["search"]["trial_id"] and again["search"]["run_dir"] == run_uri(run_dir)
    assert read_card(run_dir)["attempts"] == attempts  # reused, not searched again
    assert {p["name"] for p in read_card(run_dir)["summary"]["published"]} == {"tuned", "tuned_again"}


@pytest.fixture(scope="module")
def base_run(inputs):
    """A finished training run on the tune fixtures, trained in this process (no Ray Train):
    2 VAE steps, its latent cache (Ray Data), 2 UNet steps; the base of a training-space search."""
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray

    from soundtrack.config import TrainSection, to_dict
    from soundtrack.distributed.train_generator import run_train
    from soundtrack.pipelines.generator import SoundtrackGenerator
    from soundtrack.stages.runs import Run

    root = inputs
    # The tune fixture's clips are all val/test: train the base on a copy labelled "train"
    # (same folder name, which is what a reused cache is checked against).
    feats = root / "train_copy" / "features"
    shutil.copytree(root / "features", feats)
    for f in sorted((feats / "shards").glob("shard-*.parquet")):
        t = pq.read_table(f)
        pq.write_table(t.set_column(t.schema.get_field_index("split"), "split", pa.array(["train"] * t.num_rows)), f)
    pre = root / "pre"
    with Run(root, "pretrain", "pre", run_dir=pre, config={"pretrain": {"note": "the tiny generator's encoders"}}) as r:
        SoundtrackGenerator.load(root / "model").encoders.save(pre / "model")
        r.finish()
    sec = TrainSection(vae_steps=2, vae_batch_size=2, unet_steps=2, batch_size=2, num_workers=0, log_every=1,
                       checkpoint_every=2, torch_threads=1, vae={"block_out_channels": [8, 16, 16]},
                       vae_check_clips=0,  # every clip of this copy is "train": no held-out clips to check on
                       denoiser={"block_out_channels": [16, 32, 32], "attention_levels": [False, True, True],
                                 "cross_attention_dim": 32, "fusion_dim": 16})
    run_dir = root / "runs_train" / "train" / "base"  # a storage root of its own: model URI train:base
    try:
        with Run(root / "runs_train", "train", "base", run_dir=run_dir, config={"profile": "tiny", "train": to_dict(sec)},
                 upstream={"features": feats, "pretrain": pre}) as r:
            r.finish(**run_train("tiny", sec, feats, pre / "model", run_dir))
    finally:
        ray.shutdown()
    assert not (run_dir / "unet" / "ray").exists()  # in process: no Ray Train run directory
    return run_dir


@pytest.mark.integration
@pytest.mark.slow
def test_training_space_trial_runs_its_solver_in_the_trial_process(inputs, base_run, monkeypatch):
    import pandas as pd

    pytest.importorskip("mlflow", reason="the 'tracking' extra (mlflow-skinny) tests the MLflow path")
    from mlflow.tracking import MlflowClient

    root = inputs
    mlruns = root / "mlruns"
    cfg = root / "tune_train.yaml"
    cfg.write_text(yaml.safe_dump({
        "name": "tt", "model": f"train:{base_run.name}", "evaluator": str(root / "evaluator"),
        "features": str(root / "features"),  # its val clips (the base trained on a copy labelled train)
        "val_clips": 2, "batch_clips": 2, "final_eval": False, "registry": "",
        "train": {"unet_steps": 2, "num_workers": 0, "log_every": 1, "checkpoint_every": 2,
                  "tracking": {"tensorboard": True}},  # the trial's own solver logs to TensorBoard
        "tracking": {"tensorboard": True, "mlflow_uri": mlruns.as_uri(), "mlflow_experiment": "tt"},  # Ray's callbacks
        "search": {"space": "training", "num_samples": 1, "scheduler": "fifo",
                   "params": {"lr": {"low": 1e-4, "high": 1e-3, "default": 5e-4}, "p_drop_all": None,
                              "p_drop_each": None, "p_keep_one": None, "train_window_k": None}}}))
    storage = base_run.parents[1]
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3: a local file store is opt-in
    env = _env(root)
    r = subprocess.run(_soundtrack("tune", cfg, "--storage", storage), cwd=REPO, env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]
    (run_dir,) = (storage / "tune").iterdir()
    df = pd.read_csv(run_dir / "trials.csv")
    assert len(df) == 1 and df["complete"].all()
    # the trial process ran the training loop itself: same pid, and no Ray Train run under the trial
    assert int(df["trial_pid"].iloc[0]) == int(df["train_pid"].iloc[0]) > 0
    (trial,) = (run_dir / "trials").iterdir()
    state = json.loads((trial / "train" / "unet" / "final" / "trainer_state.json").read_text())
    assert state["pid"] == int(df["trial_pid"].iloc[0]) and state["step"] == 2
    assert not (trial / "train" / "unet" / "ray").exists() and (trial / "train" / "unet" / "checkpoints").is_dir()
    # tracking: the trial's UNet steps in TensorBoard (the solver), the trial's reports through
    # Ray Tune's TBXLoggerCallback (its folder under <run>/tune) and MLflowLoggerCallback (one run)
    assert list((trial / "train").glob("tensorboard/metrics/events.out.tfevents.*"))
    assert list((run_dir / "tune").glob("*/events.out.tfevents.*"))
    client = MlflowClient(tracking_uri=mlruns.as_uri())
    (mlrun,) = client.search_runs([client.get_experiment_by_name("tt").experiment_id])
    assert "score" in mlrun.data.metrics and "lr" in mlrun.data.params
