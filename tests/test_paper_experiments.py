"""The ``experiments/*_paper.yaml`` files: each loads with its stage's own loader, and together
they fit the data they make and the cluster they run on. Fast: configs only, no data, no training.

The bug this guards against (issue 16): the README's scale-out command ran the paper profile on
the frozen default synthetic set, 64 clips of which 52 are training clips, below the profile's
pretrain batch of 256, so the stage stopped before training.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from soundtrack.config import ExperimentConfig, SynthSection, identity, load_config

REPO = Path(__file__).resolve().parents[1]
PAPER = sorted((REPO / "experiments").glob("*_paper.yaml"))


def _splits(synth: SynthSection) -> dict[str, int]:
    """Clips per split of a synthetic set (the synth stage's own assignment)."""
    from soundtrack.data.synth import _assign_splits

    names = _assign_splits(synth.n, synth.seed)
    return {s: names.count(s) for s in ("train", "val", "test")}


def _load(path: Path):
    """The file loaded by the loader of the stage it is for (its name's prefix)."""
    stage = path.stem.removesuffix("_paper")
    if stage == "tune":
        from soundtrack.tuning.config import load_tune_config

        return load_tune_config(path)
    if stage == "bench":
        from soundtrack.eval.bench import load_bench_config

        return load_bench_config(path)[0]
    return load_config(path)


def _fit_problems(cfg: ExperimentConfig) -> list[str]:
    """What in an experiment does not fit its own data: a global batch above the training clips
    (the stages stop on it before training)."""
    n = _splits(cfg.synth)
    out = []
    for key, per_worker, workers in (("pretrain.batch_size", cfg.pretrain.batch_size, cfg.pretrain.num_workers),
                                     ("train.vae_batch_size", cfg.train.vae_batch_size, cfg.train.num_workers),
                                     ("train.batch_size", cfg.train.batch_size, cfg.train.num_workers)):
        total = per_worker * max(workers, 1)
        if total > n["train"]:
            out.append(f"{key}={per_worker} x {max(workers, 1)} worker(s) = {total} > {n['train']} training clips")
    return out


def _upstream(cfg: ExperimentConfig) -> dict:
    """What names an experiment's synth, featurize and pretrain runs (their identities)."""
    return {"profile": cfg.profile, **{s: identity(getattr(cfg, s)) for s in ("synth", "data", "featurize", "pretrain")}}


def test_every_stage_has_a_paper_experiment():
    stages = {p.stem.removesuffix("_paper") for p in PAPER}
    assert {"pretrain", "train", "tune", "bench", "eval_encoders"} <= stages, stages


@pytest.mark.parametrize("path", PAPER, ids=lambda p: p.name)
def test_paper_experiment_loads_with_its_stage_loader(path):
    cfg = _load(path)
    assert cfg.name == path.stem
    if hasattr(cfg, "profile"):  # bench configs carry no profile: their model's experiment does
        assert cfg.profile == "paper"
    assert "storage" not in yaml.safe_load(path.read_text()), "storage comes from --storage (the cluster's bucket)"
    for ref in re.findall(r"(?:experiments|serve)/[\w.-]+\.yaml", path.read_text()):
        assert (REPO / ref).is_file(), f"{path.name} names {ref}, which does not exist"


def test_the_old_scale_out_command_was_the_bug_and_the_checker_sees_it():
    """The frozen default set under the paper profile's batch: what the README's command ran."""
    assert _splits(SynthSection())["train"] == 52
    bad = load_config(None, ["profile=paper", "synth.n=64"])
    assert _fit_problems(bad) == ["pretrain.batch_size=256 x 1 worker(s) = 256 > 52 training clips"]


@pytest.mark.parametrize("path", [p for p in PAPER if p.stem.startswith(("pretrain", "train", "eval_encoders"))],
                         ids=lambda p: p.name)
def test_paper_batches_fit_the_training_clips(path):
    cfg = load_config(path)
    assert _fit_problems(cfg) == []
    assert cfg.train.vae_check_clips <= _splits(cfg.synth)["val"]  # the VAE check on its full count


def test_the_paper_profile_alone_fits_its_batches():
    """`--set profile=paper` on any experiment (the tiny ones too) no longer stops on the data."""
    assert _fit_problems(load_config(None, ["profile=paper"])) == []
    assert _fit_problems(load_config(REPO / "experiments" / "pretrain_tiny.yaml", ["profile=paper"])) == []
    cfg = load_config(None, ["profile=paper"])
    assert cfg.synth.size >= cfg.featurize.size  # frames are never upscaled for featurizing


def test_train_reuses_the_pretrain_experiments_runs():
    pre = load_config(REPO / "experiments" / "pretrain_paper.yaml")
    train = load_config(REPO / "experiments" / "train_paper.yaml")
    assert _upstream(train) == _upstream(pre)
    raw = {n: yaml.safe_load((REPO / "experiments" / f"{n}.yaml").read_text()) for n in ("pretrain_paper", "train_paper")}
    assert raw["train_paper"]["pretrain"] == raw["pretrain_paper"]["pretrain"]  # key for key, workers too
    # the batches CCCG trained with, counted globally (what the run names count)
    assert pre.pretrain.batch_size * pre.pretrain.num_workers == 256
    assert train.train.batch_size * train.train.num_workers == 32


def test_the_evaluator_is_trained_apart_from_the_generators_conditioner():
    ev = load_config(REPO / "experiments" / "eval_encoders_paper.yaml")
    pre = load_config(REPO / "experiments" / "pretrain_paper.yaml")
    assert ev.synth.seed != pre.synth.seed and ev.pretrain.seed != pre.pretrain.seed


def test_tune_and_bench_clips_fit_their_models_data():
    from soundtrack.eval.bench import load_bench_config
    from soundtrack.tuning.config import load_tune_config

    tune = load_tune_config(REPO / "experiments" / "tune_paper.yaml")
    model = load_config(REPO / tune.model)
    n = _splits(model.synth)
    assert model.profile == "paper" and tune.model == "experiments/train_paper.yaml"
    assert tune.val_clips <= n["val"] and tune.test_clips <= n["test"]
    assert tune.search.grace_clips <= tune.val_clips and tune.batch_clips <= tune.val_clips
    assert tune.registry_name == "best"  # what serve/config.cluster.yaml and the RayService serve

    bench, methods = load_bench_config(REPO / "experiments" / "bench_paper.yaml")
    model = load_config(REPO / bench.model)
    evaluator = load_config(REPO / bench.evaluator)
    assert model.profile == evaluator.profile == "paper"
    assert bench.clips <= _splits(model.synth)[bench.split]
    assert _fit_problems(evaluator) == []
    assert bench.baseline in methods


def test_paper_workers_fit_the_cluster():
    cluster = yaml.safe_load((REPO / "cluster.yaml").read_text())
    node = cluster["available_node_types"]["gpu_worker"]
    nodes, cpus, gpus = node["max_workers"], node["resources"]["CPU"], node["resources"]["GPU"]
    for name in ("pretrain_paper", "train_paper", "eval_encoders_paper"):
        cfg = load_config(REPO / "experiments" / f"{name}.yaml")
        sections = (cfg.pretrain, cfg.train) if name == "train_paper" else (cfg.pretrain,)
        for sec in sections:  # one GPU worker per gpu_worker node, with CPUs left for Ray Data
            assert 1 <= sec.num_workers <= nodes and sec.cpus_per_worker < cpus, name
            assert sec.gpus_per_worker == gpus, name
    from soundtrack.tuning.config import load_tune_config

    search = load_tune_config(REPO / "experiments" / "tune_paper.yaml").search
    assert search.gpus_per_trial == gpus and search.cpus_per_trial <= cpus
