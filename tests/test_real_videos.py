"""Bring your own videos, end to end on one real local Ray: a folder of real media that the
test encodes with PyAV (five containers, six audio codecs, several sample rates, stems on
one video, damaged packets, rotation, variable frame rate, 5.1 audio) -> ingest (Ray probe
tasks, nothing quarantined) -> featurize (Ray Data, every clip written, lost seconds
recorded) -> pretrain + train at debug size through ``data.source`` -> generate a
soundtrack for one video -> a bench row scored with the metrics that need no synthetic
labels."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import yaml
from media_factory import damage_packets, encoder_available, step_pitch, write_av

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SECONDS = 31.0  # 3 clips of 10.24 s per video: split_by=time holds one out for val and one for test
VPX = {"deadline": "realtime", "cpu-used": "8"}
TINY_MODEL = {"video_input_size": 32, "video_channels": [8, 16], "video_dim": 16, "audio_channels": 16,
              "audio_dim": 16, "embed_dim": 32, "use_text": False}


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """Six videos as users bring them (about 10 s to encode)."""
    src = tmp_path_factory.mktemp("my_videos")
    pitch = step_pitch()
    # a phone video: portrait display matrix, AAC stereo at 44.1 kHz, 30 fps
    write_av(src / "phone.mp4", SECONDS, fps=30, acodec="aac", sr=44100, layout="stereo", audio=pitch, rotation=90)
    # a concert recording: 5.1 AC-3 at 48 kHz in Matroska
    write_av(src / "concert.mkv", SECONDS, fps=25, acodec="ac3", sr=48000, layout="5.1", audio=pitch)
    # a browser export: VP9 + Opus in WebM
    write_av(src / "web export.webm", SECONDS, fps=24, vcodec="libvpx-vp9", acodec="libopus", sr=48000,
             layout="stereo", audio=pitch, video_options=VPX)
    # a camera file: MPEG-4 Part 2 + 16-bit PCM at 8 kHz in QuickTime, with sidecar stems
    write_av(src / "camera.MOV", SECONDS, fps=25, vcodec="mpeg4", acodec="pcm_s16le", sr=8000, audio=pitch)
    t = np.arange(int(SECONDS * 16000)) / 16000
    sf.write(str(src / "camera.music.wav"), (0.2 * np.sin(2 * np.pi * 330 * t)).astype(np.float32), 16000)
    sf.write(str(src / "camera.sfx.wav"), np.zeros_like(t, dtype=np.float32), 16000)
    # a trailer: MPEG-4 + MP3 in AVI whose first audio packets and a stretch of the middle are damaged
    clean = tmp_path_factory.mktemp("clean") / "trailer.avi"
    acodec = "libmp3lame" if encoder_available("libmp3lame") else "mp2"
    write_av(clean, SECONDS, fps=25, vcodec="mpeg4", acodec=acodec, sr=44100, layout="stereo", audio=pitch)
    tmp = clean.with_name("half.avi")
    assert damage_packets(clean, tmp, "audio", 0.0, 0.05, skip=8)
    assert damage_packets(tmp, src / "trailer.avi", "audio", 14.0, 15.0, skip=8, seed=1)
    # a screen recording: variable frame rate (50 / 150 ms intervals)
    times = np.cumsum(np.where(np.arange(int(SECONDS * 10)) % 2, 0.15, 0.05)) - 0.05
    write_av(src / "screen vfr.mp4", SECONDS, frame_times=times[times < SECONDS - 0.2], audio=pitch)
    return src


@pytest.fixture(scope="module")
def ray_local():
    from soundtrack.distributed.cluster import init_ray

    ray = init_ray(num_cpus=2)
    yield ray
    ray.shutdown()


def _experiment(tmp_path: Path, folder: Path) -> Path:
    cfg = {
        "name": "byov", "profile": "tiny", "storage": str(tmp_path / "runs"),
        "data": {"source": str(folder), "split_by": "time", "concurrency": 4},
        "featurize": {"size": 32, "rows_per_shard": 4},
        "pretrain": {"model": TINY_MODEL, "batch_size": 2, "steps": 4, "warmup_steps": 1, "checkpoint_every": 2,
                     "log_every": 1, "evaluation": {"n_boot": 50, "crop_s": 8.0}},
        "train": {"vae_steps": 4, "vae_batch_size": 2, "unet_steps": 4, "batch_size": 2, "checkpoint_every": 2,
                  "log_every": 1, "warmup_steps": 1, "vae_min_chroma_ratio": 0.0, "vae_min_onset_ratio": 0.0,
                  "sampler": {"num_steps": 3}},
    }
    p = tmp_path / "byov.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def test_bring_your_own_videos_end_to_end(folder, ray_local, tmp_path):
    from soundtrack import api
    from soundtrack.data import media
    from soundtrack.data.manifest import read_manifest
    from soundtrack.data.shards import read_shards
    from soundtrack.stages.data import features_for, stage_ingest_source

    exp = _experiment(tmp_path, folder)
    cfg = api.experiment(exp)

    # 1. ingest: one Ray task per file, none quarantined, the odd media recorded as found
    data_dir = stage_ingest_source(cfg.data, storage=cfg.storage)
    summary = json.loads((data_dir / "ingest.json").read_text())
    quarantine = pd.read_parquet(data_dir / "quarantine.parquet")
    assert quarantine.empty, quarantine.to_dict("records")
    assert summary["n_files"] == 6 and summary["n_clips"] == 18  # (split_by=time: 3 sources per video)
    assert {s: v["clips"] for s, v in summary["splits"].items()} == {"train": 6, "val": 6, "test": 6}
    man = read_manifest(data_dir)
    by_file = {Path(p).name: g for p, g in man.groupby("video_path")}
    assert by_file["phone.mp4"][["src_width", "src_height"]].iloc[0].tolist() == [48, 80]  # displayed: portrait
    assert by_file["concert.mkv"]["src_audio_channels"].iloc[0] == 6
    assert bool(by_file["screen vfr.mp4"]["src_vfr"].iloc[0])
    assert by_file["camera.MOV"]["music_path"].notna().all()
    assert by_file["phone.mp4"]["music_path"].map(lambda v: v is None).all()  # None, never NaN

    # 2. featurize on Ray Data: every clip written, the lost seconds recorded
    feats = features_for(cfg, None)
    fcard = json.loads((feats / "run.json").read_text())
    assert fcard["summary"]["clips_out"] == 18 and fcard["summary"]["clips_failed"] == 0
    assert (feats / "errors.jsonl").read_text() == ""
    shards = read_shards(feats, columns=["lost_s", "bad_packets", "stems_source", "frames"])
    shards["file"] = shards["clip_id"].map(dict(zip(man["clip_id"], man["video_path"].map(lambda p: Path(p).name))))
    damaged = shards[shards["file"] == "trailer.avi"]
    assert (damaged["bad_packets"] > 0).any() and (damaged["lost_s"] > 0).any()
    assert (shards.loc[shards["file"] != "trailer.avi", "lost_s"] == 0).all()
    assert set(shards.loc[shards["file"] == "camera.MOV", "stems_source"]) == {"given"}
    phone = shards[shards["file"] == "phone.mp4"].iloc[0]
    assert list(phone["frames__shape"]) == [103, 32, 32, 3]

    # 3. pretrain + train through data.source (the README's "bring your own videos" command)
    run = api.train(exp)
    card = json.loads((run / "model" / "generator.json").read_text())["card"]
    assert card["data"]["kind"] == "folder" and card["data"]["source"] == str(folder)
    assert card["data"]["split_by"] == "time" and card["data"]["clips_featurized"] == 18

    # 4. a soundtrack for one of the videos, muxed back into it
    out = tmp_path / "phone_scored.mp4"
    res = api.generate(folder / "phone.mp4", f"train:{run.name}", out, seed=0, storage=cfg.storage)
    info = media.probe(out)
    assert info.has_audio and abs(info.duration_s - SECONDS) < 0.5
    wav = media.read_audio(out)
    assert abs(len(wav) / 16000 - res.duration_s) < 0.1 and np.isfinite(wav).all()

    # 5. a bench row on the real clips, scored with the metrics that need no synthetic labels
    # (the evaluator: tiny encoders the test builds, as tests/test_bench.py does; training the
    # default experiments/eval_encoders.yaml is the bench's own test's business)
    import torch

    from soundtrack.eval.scoring import Evaluator
    from soundtrack.models.encoders import ContrastiveConfig, build_contrastive

    enc = build_contrastive(ContrastiveConfig.tiny(video_input_size=32, video_channels=(8, 16), video_dim=16,
                                                   audio_channels=16, audio_dim=16, embed_dim=32, use_text=False))
    torch.manual_seed(0)
    Evaluator(enc, torch.randn(3, 280), torch.zeros(3), ["a", "b", "c"], {"val_accuracy": float("nan")}).save(
        tmp_path / "ev")
    bench = tmp_path / "bench.yaml"
    bench.write_text(yaml.safe_dump({
        "name": "byov_bench", "model": f"train:{run.name}", "evaluator": str(tmp_path / "ev"), "data": str(feats),
        "split": "test", "clips": 2,
        "seeds": [0], "clips_per_task": 2, "cpus_per_task": 0.5, "n_boot": 50, "baseline": "ours",
        "methods": {"ground_truth": {"kind": "ground_truth"}, "ours": {}}}))
    bench_dir = api.bench(bench, storage=cfg.storage)
    table = pd.read_parquet(bench_dir / "results.parquet")
    ours = table[table["method"] == "ours"]
    assert len(ours) == 2 and ours["onset_rate"].notna().all() and not ours["failed"].any()
    assert ours["f1"].isna().all()  # sync against video events needs the synthetic event labels: not scored
