"""The profiles as data (``platform/soundtrack/profiles/<name>.yaml``): what they hold, who reads them.

Every model preset and every stage delta comes from those files; these tests pin a few
known values (the behaviour test's sha256 pins the rest) and check that the files ship.
"""

from __future__ import annotations

import tomllib
import typing
from pathlib import Path

import pytest

from soundtrack.config import Profile, load_config
from soundtrack.errors import ConfigError
from soundtrack.profiles import MODELS, SECTIONS, available_profiles, load_profile, model_preset, stage_deltas

REPO = Path(__file__).resolve().parents[1]


def test_profile_files_are_the_profiles_the_config_allows():
    assert available_profiles() == tuple(sorted(typing.get_args(Profile))) == ("paper", "tiny")
    for name in available_profiles():
        prof = load_profile(name)
        assert set(prof) <= {*SECTIONS, "models"}
        assert set(prof["models"]) == set(MODELS), name  # every model has a preset in every profile


def test_stage_deltas_known_values():
    assert stage_deltas("paper")["pretrain"]["batch_size"] == 256
    assert stage_deltas("paper")["train"]["lr"] == 3e-5 and isinstance(stage_deltas("paper")["train"]["lr"], float)
    assert stage_deltas("paper")["train"]["torch_threads"] is None
    assert stage_deltas("tiny")["synth"] == {"n": 320}
    assert stage_deltas("tiny")["train"]["lr"] == 1e-3
    assert "models" not in stage_deltas("tiny")
    # ... and load_config applies them under the file's own values
    assert load_config(None, ["profile=paper"]).pretrain.batch_size == 256
    assert load_config(None, ["profile=paper"]).featurize.size == 224
    assert load_config(None, ["profile=paper", "pretrain.batch_size=8"]).pretrain.batch_size == 8
    assert load_config().synth.n == 320 and load_config().pretrain.steps == 160


def test_model_presets_known_values():
    from soundtrack.models.encoders import ContrastiveConfig
    from soundtrack.models.mel import MelFormat
    from soundtrack.models.unet import DenoiserConfig
    from soundtrack.models.vae import vae_config

    tiny, paper = vae_config("tiny"), vae_config("paper")
    assert tiny["block_out_channels"] == (16, 32) and tiny["latent_channels"] == 4
    assert tiny["down_block_types"] == ("DownEncoderBlock2D",) * 2
    # overriding the channels alone builds matching block types (it raised IndexError before)
    three = vae_config("tiny", block_out_channels=(16, 32, 64))
    assert three["down_block_types"] == ("DownEncoderBlock2D",) * 3 and three["up_block_types"] == ("UpDecoderBlock2D",) * 3
    assert DenoiserConfig.tiny().latent_hw == (32, 128)
    assert tiny["mid_block_add_attention"] is False and tiny["sample_size"] == 64
    assert paper["block_out_channels"] == (128, 256, 512) and paper["latent_channels"] == 8
    assert paper["down_block_types"] == ("DownEncoderBlock2D",) * 3
    assert vae_config("tiny", latent_channels=2)["latent_channels"] == 2
    assert (MelFormat.tiny().n_mels, MelFormat.tiny().n_frames) == (64, 256)
    assert (MelFormat.paper().n_mels, MelFormat.paper().n_frames) == (128, 1024)
    den = DenoiserConfig.paper()
    assert den.block_out_channels == (128, 256, 384, 640) and den.prediction_type == "epsilon"
    assert den.fusion == "none" and den.profile == "paper" and den.latent_hw == (32, 256)
    assert DenoiserConfig.preset("tiny", window_k=4).window_k == 4
    enc = ContrastiveConfig.paper(dropout=0.2)
    assert enc.temporal == "transformer" and enc.video_channels == (64, 128, 256, 384) and enc.dropout == 0.2
    # the dataclass defaults are the tiny preset (their docstrings say so)
    assert DenoiserConfig.tiny() == DenoiserConfig()
    assert ContrastiveConfig.tiny() == ContrastiveConfig()
    assert MelFormat.paper() == MelFormat()


def test_unknown_profile_names_the_allowed_ones():
    from soundtrack.models.unet import DenoiserConfig
    from soundtrack.models.vae import vae_config

    for call in (lambda: load_profile("huge"), lambda: vae_config("huge"), lambda: DenoiserConfig.preset("huge")):
        with pytest.raises(ConfigError, match="allowed profiles: paper, tiny"):
            call()
    with pytest.raises(ValueError):  # ConfigError is a ValueError, as these raised before
        vae_config("huge")
    with pytest.raises(ConfigError, match="allowed: mel, vae"):
        model_preset("tiny", "vocoder")
    with pytest.raises(ConfigError, match="'profile' has value 'huge'"):
        load_config(None, ["profile=huge"])


def test_callers_get_copies():
    prof = load_profile("tiny")
    prof["train"]["lr"] = 1.0
    prof["models"]["vae"].clear()
    assert load_profile("tiny")["train"]["lr"] == 1e-3
    assert model_preset("tiny", "vae")["latent_channels"] == 4


def test_profile_files_ship_with_the_package():
    data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert "*.yaml" in data["soundtrack.profiles"]
    assert sorted(p.stem for p in (REPO / "platform" / "soundtrack" / "profiles").glob("*.yaml")) == \
        list(available_profiles())
