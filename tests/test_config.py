"""Typed configs: YAML deltas over frozen defaults, and errors that name the key."""

import dataclasses

import pytest

from soundtrack.config import ConfigError, ExperimentConfig, load_config, run_name


def _write(tmp_path, text):
    p = tmp_path / "exp.yaml"
    p.write_text(text)
    return p


def test_defaults_and_deltas(tmp_path):
    cfg = load_config(_write(tmp_path, "name: x\nsynth:\n  n: 5\n"))
    assert cfg.name == "x" and cfg.synth.n == 5
    assert cfg.synth.difficulty == ExperimentConfig().synth.difficulty  # untouched keys keep defaults
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.synth.n = 3  # type: ignore[misc]


def test_unknown_key_names_key_and_allowed(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(_write(tmp_path, "synth:\n  nn: 5\n"))
    msg = str(e.value)
    assert "synth.nn" in msg and "difficulty" in msg and "exp.yaml" in msg


def test_bad_literal_lists_allowed_values(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(_write(tmp_path, "synth:\n  difficulty: brutal\n"))
    assert "'easy'" in str(e.value) and "'hard'" in str(e.value) and "brutal" in str(e.value)


def test_bad_type(tmp_path):
    with pytest.raises(ConfigError, match="featurize.size"):
        load_config(_write(tmp_path, "featurize:\n  size: big\n"))
    with pytest.raises(ConfigError, match="profile"):
        load_config(_write(tmp_path, "profile: huge\n"))


def test_profile_and_overrides(tmp_path):
    paper = load_config(_write(tmp_path, "profile: paper\n"))
    assert paper.featurize.size == 224
    cfg = load_config(_write(tmp_path, "profile: paper\nfeaturize: {size: 96}\n"), ["synth.n=7"])
    assert cfg.featurize.size == 96 and cfg.synth.n == 7  # the YAML wins over the profile


def test_run_name_stable_and_config_dependent():
    a = ExperimentConfig()
    b = dataclasses.replace(a, synth=dataclasses.replace(a.synth, n=3))
    assert run_name("r", a.synth) == run_name("r", ExperimentConfig().synth)
    assert run_name("r", a.synth) != run_name("r", b.synth)


def test_run_identity_leaves_out_infra_and_counts_the_global_batch(tmp_path):
    """Scaling out at the same global batch (or changing the logging cadence) keeps the run's
    name; changing the global batch or the math changes it; the upstream names count."""
    from soundtrack.config import PretrainSection, TrainSection, identity

    one = PretrainSection(batch_size=16, num_workers=1)
    two = PretrainSection(batch_size=8, num_workers=2, cpus_per_worker=0.5, log_every=3, checkpoint_every=7,
                          prep_workers=2, max_failures=5, fail_at_step=4, torch_threads=1)
    assert identity(one) == identity(two) == {"batch_size": 16}
    assert run_name("p", one, "feats-a") == run_name("p", two, "feats-a")
    assert run_name("p", one, "feats-a") != run_name("p", PretrainSection(batch_size=16, num_workers=2), "feats-a")
    assert run_name("p", one, "feats-a") != run_name("p", one, "feats-b")
    assert run_name("p", one) != run_name("p", dataclasses.replace(one, lr=3e-4))
    # a key at its default is not in the identity (adding a field later keeps existing names)
    assert identity(PretrainSection()) == {} and identity(TrainSection()) == {}
    # 4 x 2 workers = the default global batch 8 (absent); the VAE's 2 x 2 = 4 is not the default 8
    assert identity(TrainSection(batch_size=4, vae_batch_size=2, num_workers=2)) == {"vae_batch_size": 4}
    # GPUs, the latent-cache pass's resources and accumulation are infrastructure; accumulation
    # counts in the global batch (1 GPU x 2 micro-batches of 8 = 2 workers x 8); precision is math
    gpu = PretrainSection(batch_size=8, num_workers=1, grad_accum_steps=2, gpus_per_worker=1.0)
    assert identity(gpu) == identity(one) and run_name("p", gpu, "feats-a") == run_name("p", one, "feats-a")
    assert identity(TrainSection(cache_workers=4, cache_cpus=2.0, cache_gpus=0.5, gpus_per_worker=1.0)) == {}
    assert identity(dataclasses.replace(one, precision="bf16")) == {"batch_size": 16, "precision": "bf16"}
    # the tune run: storage, registry name and CPUs per trial are infrastructure too
    from soundtrack.tuning.config import TuneConfig, tune_run_dir

    base = TuneConfig(model="train:x", storage=str(tmp_path))
    other = dataclasses.replace(base, registry="elsewhere", keep_wavs="none",
                                search=dataclasses.replace(base.search, cpus_per_trial=0.5, max_concurrent=3))
    assert tune_run_dir(base) == tune_run_dir(other)
    assert tune_run_dir(base) != tune_run_dir(dataclasses.replace(base, val_clips=3))


def test_demo_config_loads():
    from conftest import REPO

    cfg = load_config(REPO / "experiments" / "demo.yaml")
    assert cfg.profile == "tiny" and cfg.synth.n > 0


def test_fixed_length_tuples_are_coerced_element_by_element(tmp_path):
    from soundtrack.config import load_config

    p = tmp_path / "e.yaml"
    p.write_text("pretrain:\n  betas: [0.9, 0.98]\n")
    assert load_config(p).pretrain.betas == (0.9, 0.98)
    p.write_text("pretrain:\n  betas: [0.9, fast]\n")
    with pytest.raises(ConfigError, match=r"pretrain.betas\[1\]"):
        load_config(p)
