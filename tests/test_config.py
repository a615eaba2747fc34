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
