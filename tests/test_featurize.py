"""The featurize stage below Ray: shard contents, bad clips, resume, run cards."""

import dataclasses
import json
import shutil

import numpy as np
import pandas as pd
import pytest

from soundtrack.config import FeaturizeSection
from soundtrack.data import features, media
from soundtrack.data import shards as pipeline
from soundtrack.data.manifest import read_manifest, write_manifest
from soundtrack.distributed import featurize
from soundtrack.stages.runs import UpstreamError
from soundtrack.storage import read_card

SECTION = FeaturizeSection(size=32, rows_per_shard=3)


@pytest.fixture(scope="module")
def seq_run(synth_small, tmp_path_factory):
    out = tmp_path_factory.mktemp("feat") / "run"
    summary = featurize.run_featurize(synth_small, out, SECTION, use_ray=False, progress=False)
    return out, summary


def test_every_clip_once_with_expected_shapes(synth_small, seq_run):
    out, summary = seq_run
    man = read_manifest(synth_small)
    df = pipeline.read_shards(out)
    assert sorted(df["clip_id"]) == sorted(man["clip_id"]) and summary["clips_out"] == len(man)
    row = pipeline.decode_row(df.iloc[0].to_dict())
    assert row["frames"].shape == (103, 32, 32, 3) and row["frames"].dtype == np.uint8
    for k in ("wav_mix", "wav_music", "wav_sfx"):
        assert row[k].shape == (163840,)
    for k in ("mel_mix", "mel_music", "mel_sfx"):
        assert row[k].shape == (128, 1024)
    assert row["chroma"].shape == (12, 1024) and row["melody"].shape == (1024,)
    assert row["dynamics_db"].shape == (1024,) and row["onset_env"].shape == (1024,)
    assert row["motion"].shape == (103,) and row["stems_source"] == "given"
    # label columns are copied through untouched (featurize never reads them)
    lab = man.set_index("clip_id").loc[row["clip_id"]]
    assert list(row["label_beat_times"]) == pytest.approx(list(lab["label_beat_times"]))


def test_shard_features_equal_direct_computation(synth_small, seq_run):
    """The glue stores what features.py computes on the decoded clip (float16 storage)."""
    out, _ = seq_run
    man = read_manifest(synth_small).set_index("clip_id")
    df = pipeline.read_shards(out)
    row = pipeline.decode_row(df.iloc[1].to_dict())
    src = man.loc[row["clip_id"]]
    music = media.load_wav(src["music_path"])[:163840]
    music = np.pad(music, (0, 163840 - len(music)))
    direct = features.log_mel(music, pipeline.feature_config(SECTION))
    np.testing.assert_allclose(row["mel_music"].astype(np.float32), direct, atol=0.02, rtol=0.01)
    frames = media.read_frames(src["video_path"], size=(32, 32), duration_s=10.24)
    np.testing.assert_array_equal(row["frames"], frames)


def test_bad_clip_is_recorded_and_run_goes_on(synth_small, tmp_path):
    man = read_manifest(synth_small).head(4).copy()
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"this is not a video at all")
    man.loc[man.index[1], "video_path"] = str(bad)
    write_manifest(man, tmp_path / "data" / "manifest.parquet")
    out = tmp_path / "feat"
    s = featurize.run_featurize(tmp_path / "data", out, SECTION, use_ray=False, progress=False)
    assert s["clips_out"] == 3 and s["clips_failed"] == 1
    errs = [json.loads(line) for line in (out / "errors.jsonl").read_text().splitlines()]
    assert errs[0]["clip_id"] == man.iloc[1]["clip_id"] and errs[0]["reason"] in ("not_video", "no_video_stream")


def test_resume_redoes_only_missing_shards(synth_small, seq_run, tmp_path):
    out0, _ = seq_run
    out = tmp_path / "resume"
    shutil.copytree(out0, out)
    # Pretend a kill after shard 1 was written but before its marker: marker gone, stale tmp left.
    (out / "done" / "shard-00001.json").unlink()
    (out / "shards" / "shard-00002.parquet.tmp999").write_bytes(b"half a file")
    before = {p.name: p.stat().st_mtime_ns for p in (out / "shards").glob("*.parquet")}
    s = featurize.run_featurize(synth_small, out, SECTION, use_ray=False, progress=False)
    assert s["shards_written_now"] == 1 and s["shards_skipped"] == s["shards"] - 1
    after = {p.name: p.stat().st_mtime_ns for p in (out / "shards").glob("*.parquet")}
    changed = [k for k in after if after[k] != before.get(k)]
    assert changed == ["shard-00001.parquet"]
    assert not list((out / "shards").glob("*.tmp*"))
    ids = pipeline.read_shards(out, columns=["clip_id"])["clip_id"]
    assert ids.is_unique and len(ids) == len(read_manifest(synth_small))


def test_stage_refuses_unfinished_data_run(synth_small, tmp_path):
    from soundtrack.stages.data import stage_featurize

    data = tmp_path / "data"
    shutil.copytree(synth_small, data, ignore=shutil.ignore_patterns("videos"))
    card = read_card(data)
    card["status"] = "running"
    (data / "run.json").write_text(json.dumps(card))
    with pytest.raises(UpstreamError, match="not 'finished'"):
        stage_featurize(data, SECTION, storage=tmp_path, use_ray=False, progress=False)


def test_stage_card_records_upstream_and_reuses(synth_small, stage_storage):
    """The stage through its stage function on the storage root of the stage tests (an
    ``s3://`` root: it works in a temp staging copy and publishes the run to the store)."""
    from soundtrack.stages.data import stage_featurize
    from soundtrack.storage import MARKER, staged

    out = stage_featurize(synth_small, SECTION, storage=stage_storage, use_ray=False, progress=False, limit=3)
    card = read_card(out)
    assert card["status"] == "finished" and card["upstream"]["data"]["status"] == "finished"
    assert card["summary"]["clips_out"] == 3
    staging = staged(out)
    if staging is not None:  # an object-store root: the run is in the store, published (marker last)
        assert staging.store.is_published(staging.rel) and read_card(staging.uri)["status"] == "finished"
        keys = staging.store.list(staging.rel, recursive=True)
        assert "run.json" in keys and MARKER in keys and any(k.startswith("shards/") for k in keys)
        assert "_LEASE.json" not in keys  # released
        shutil.rmtree(out)  # the local copy is gone: the reuse comes from the store
    again = stage_featurize(synth_small, SECTION, storage=stage_storage, use_ray=False, progress=False, limit=3)
    assert again == out and read_card(out)["attempts"] == 1  # reused, not re-run
    assert len(pipeline.read_shards(out, columns=["clip_id"])) == 3


def test_limit_is_part_of_the_run_name(synth_small, tmp_path):
    """A --limit run is another data set: neither a run of another limit nor the full run reuses it."""
    from soundtrack.stages.data import featurize_run_dir, stage_featurize

    three = stage_featurize(synth_small, SECTION, storage=tmp_path, use_ray=False, progress=False, limit=3)
    two = stage_featurize(synth_small, SECTION, storage=tmp_path, use_ray=False, progress=False, limit=2)
    assert two != three and read_card(two)["summary"]["clips_out"] == 2
    full = featurize_run_dir(tmp_path, synth_small, SECTION)
    assert full not in (two, three) and not full.exists()
    # infra keys (how the work is spread) stay out of the name
    spread = dataclasses.replace(SECTION, concurrency=7, num_cpus=0.5)
    assert featurize_run_dir(tmp_path, synth_small, spread, 3) == three


def test_manifest_contract_errors(tmp_path):
    from soundtrack.data.manifest import ManifestError

    df = pd.DataFrame({"clip_id": ["a"], "split": ["train"]})
    with pytest.raises(ManifestError, match="missing column"):
        write_manifest(df, tmp_path / "m.parquet")
    with pytest.raises(ManifestError, match="no manifest"):
        read_manifest(tmp_path / "nothing")
