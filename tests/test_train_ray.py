"""The generator's training stage on a real local Ray: VAE -> cache -> UNet -> export,
a worker killed mid-UNet recovers, a re-launch skips finished phases, and the exported
model generates through the model-URI loader."""

import dataclasses
import json

import numpy as np
import pytest

from soundtrack.config import FeaturizeSection, TrainSection
from soundtrack.eval.reconstruction import VAEQualityError
from soundtrack.stages.runs import read_metrics

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def staged_runs(storage: str, stage: str) -> list:
    """The staging directories of ``stage``'s runs of an object-store root."""
    from soundtrack.storage import run_location

    d = run_location(storage, stage, "x").parent
    return sorted(d.iterdir()) if d.is_dir() else []


@pytest.fixture(scope="module")
def parts(synth_small, tmp_path_factory):
    from soundtrack.distributed.featurize import run_featurize
    from soundtrack.models.encoders import ContrastiveConfig, build_contrastive
    from soundtrack.stages.runs import Run

    root = tmp_path_factory.mktemp("tr")
    feats = root / "features"
    with Run(root, "features", "f", run_dir=feats, config={"featurize": {"size": 32}}) as run:
        run_featurize(synth_small, feats, FeaturizeSection(size=32, rows_per_shard=4), use_ray=False, progress=False)
        run.finish()
    pre = root / "pre"
    with Run(root, "pretrain", "pre", run_dir=pre, config={"pretrain": {"note": "untrained tiny encoders"}}) as run:
        build_contrastive(ContrastiveConfig.tiny(video_input_size=32, video_channels=(8, 16), video_dim=16,
                                                 audio_channels=16, audio_dim=16, embed_dim=32, use_text=False)
                          ).save(pre / "model")
        run.finish()
    return root, feats, pre


def test_train_recovers_resumes_and_generates(parts, stage_storage):
    """The train stage on the stage tests' storage root (an ``s3://`` root): its upstream
    runs are published there and named by URI (downloaded, verified), the run works in its
    staging directory, a failed attempt leaves its card in the store, and the finished run is
    published (model, checkpoints, cards; marker last)."""
    from soundtrack.config import ExperimentConfig
    from soundtrack.distributed.cluster import init_ray
    from soundtrack.distributed.train_generator import run_train
    from soundtrack.stages.train import stage_train
    from soundtrack.storage import Store, read_card, staged

    root, feats, pre = parts
    store = Store(stage_storage)
    store.publish("features/f", feats)
    store.publish("pretrain/pre", pre)
    sec = TrainSection(vae_steps=4, vae_batch_size=2, unet_steps=6, batch_size=2, checkpoint_every=2, log_every=1,
                       warmup_steps=1, fail_at_step=3, sampler={"num_steps": 3},
                       features=f"{stage_storage}/features/f", pretrain=f"{stage_storage}/pretrain/pre")
    cfg = ExperimentConfig(name="tr", profile="tiny", storage=stage_storage, train=sec)
    ray = init_ray(num_cpus=2)
    try:
        # a 4-step VAE is far below the default floor: refused before any latent is cached
        with pytest.raises(VAEQualityError, match=r"loses the music on 1 val clips: .*ceiling.*train\.vae_steps"):
            stage_train(cfg)
        (run_dir,) = (p for p in staged_runs(stage_storage, "train"))
        staging = staged(run_dir)
        assert staging is not None and staging.uri == f"{stage_storage}/train/{run_dir.name}"
        assert not (run_dir / "cache").exists()
        assert json.loads(store.read_bytes(f"{staging.rel}/run.json"))["status"] == "failed"  # said in the store
        assert not store.is_published(staging.rel)
        refused = json.loads((run_dir / "vae" / "final" / "quality.json").read_text())
        assert refused["n_clips"] == 1
        assert refused["chroma_ratio"] < sec.vae_min_chroma_ratio or refused["onset_ratio"] < sec.vae_min_onset_ratio
        # the floor is an infrastructure key: lowering it resumes the same run, the VAE is kept
        sec = dataclasses.replace(sec, vae_min_chroma_ratio=0.0, vae_min_onset_ratio=0.0)
        cfg = dataclasses.replace(cfg, train=sec)
        assert stage_train(cfg, resume=True) == run_dir
        card = read_card(run_dir)
        s1 = card["summary"]
        vae_state = json.loads((run_dir / "vae" / "final" / "trainer_state.json").read_text())
        assert stage_train(cfg) == run_dir  # a re-launch of a finished run reuses it
        assert read_card(run_dir)["attempts"] == card["attempts"] == 2
        # below the stage: every phase of the finished run is found done
        s2 = run_train("tiny", sec, run_dir.parents[1] / "features" / "f", run_dir.parents[1] / "pretrain" / "pre" / "model",
                       run_dir)
    finally:
        ray.shutdown()
    assert card["upstream"]["features"]["path"] == f"{stage_storage}/features/f"  # recorded by URI, not the temp copy
    assert store.is_published(staging.rel) and not store.is_file(f"{staging.rel}/_LEASE.json")
    assert json.loads(store.read_bytes(f"{staging.rel}/run.json"))["status"] == "finished"
    assert store.is_file(f"{staging.rel}/model/generator.json")
    assert (run_dir / ".fault_injected").read_text() == "3"  # a UNet worker really died at step 3
    assert [m["step"] for m in read_metrics(run_dir)] == [1, 2, 3, 4, 5, 6]  # each step once, in order
    assert [m["step"] for m in read_metrics(run_dir, "vae_metrics.jsonl")] == [1, 2, 3, 4]
    assert vae_state["step"] == 4 and s1["cached_clips"] == 6
    assert s1["phases"] == {"vae": "done before", "unet": "trained"}
    assert s1["vae_quality"] == {**refused} and s1["vae_quality"]["ceiling"]["chroma_agreement"] > 0.15
    assert s2["phases"] == {"vae": "done before", "unet": "done before"}  # skipped, not retrained
    assert [m["step"] for m in read_metrics(run_dir)] == [1, 2, 3, 4, 5, 6]  # and no step ran again
    vae_cfg = json.loads((run_dir / "model" / "vae" / "config.json").read_text())
    assert vae_cfg["scaling_factor"] != 1.0  # fitted on training latents

    # the exported generator loads through the one model loader and generates
    from soundtrack.stages.models import load_generator

    gen = load_generator(f"file:{run_dir / 'model'}")
    # and through a train: URI on the object store (the published run, found by a prefix)
    assert load_generator(f"train:{run_dir.name[:6]}", stage_storage).to_dict() == gen.to_dict()
    frames = np.random.default_rng(0).integers(0, 255, (37, 32, 32, 3), dtype=np.uint8)  # 3.7 s
    wav = gen.generate(frames, seed=1, clip_id="x")
    assert wav.shape == (round(3.7 * 16000),) and np.isfinite(wav).all()
    np.testing.assert_array_equal(wav, gen.generate(frames, seed=1, clip_id="x"))
