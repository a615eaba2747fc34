"""The one YAML config loader (``soundtrack.config.load_yaml``) behind experiments, tune searches and benches."""

from __future__ import annotations

import pytest

from soundtrack.config import ExperimentConfig, SynthSection, load_config, load_yaml
from soundtrack.errors import ConfigError, ConfigFileNotFound


def _loaders():
    from soundtrack.eval.bench import load_bench_config
    from soundtrack.tuning.config import load_tune_config

    return {"config file": load_config, "tune config": load_tune_config, "bench config": load_bench_config}


def test_missing_file_is_a_config_error_and_a_file_not_found(tmp_path):
    for what, load in _loaders().items():
        with pytest.raises(ConfigFileNotFound, match=f"{what} .*nope.yaml does not exist.*for an example") as exc:
            load(tmp_path / "nope.yaml")
        assert isinstance(exc.value, FileNotFoundError) and isinstance(exc.value, ConfigError)


def test_bad_files_are_named(tmp_path):
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    (tmp_path / "bad.yaml").write_text("name: [unclosed\n")
    for load in _loaders().values():
        with pytest.raises(ConfigError, match=r"list.yaml: the top level must be a mapping.*got list"):
            load(tmp_path / "list.yaml")
        with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
            load(tmp_path / "bad.yaml")
        with pytest.raises(ConfigError, match="is not a file"):
            load(tmp_path)


def test_file_then_overrides_over_the_defaults(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text("n: 5\nseed: 3\n")
    sec = load_yaml(p, ["seed=4", "difficulty=hard"], SynthSection)
    assert sec == SynthSection(n=5, seed=4, difficulty="hard")
    assert load_yaml(None, (), SynthSection) == SynthSection()
    with pytest.raises(ConfigError, match=r"s.yaml: unknown key 'bogus'; allowed keys in the top level: n, seed"):
        load_yaml(p, ["bogus=1"], SynthSection)
    with pytest.raises(ConfigError, match="must look like section.key=value"):
        load_yaml(p, ["seed"], SynthSection)


def test_under_lays_deltas_beneath_the_file(tmp_path):
    p = tmp_path / "e.yaml"
    p.write_text("synth: {n: 7}\n")
    cfg = load_yaml(p, (), ExperimentConfig, under=lambda data, src: {"synth": {"n": 1, "seed": 9}})
    assert (cfg.synth.n, cfg.synth.seed) == (7, 9)
    assert load_config(p).synth.n == 7 and load_config(p).pretrain.batch_size == 16  # tiny's delta beneath
