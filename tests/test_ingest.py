"""Tests of ``soundtrack.data.ingest`` on real (tiny) media files written with PyAV.

One folder of odd-but-valid and broken videos is built once per module (64x64 px,
10 fps, a few seconds each) and ingested once; smaller runs cover options. Nothing is
mocked: files are encoded with libx264/AAC, VP9/Opus, VP8/Vorbis, MPEG-4/PCM, then some
are cut, emptied or replaced by text so that the quarantine sees real damage.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from media_factory import encoder_available, write_av

from soundtrack.config import FeaturizeSection
from soundtrack.data import manifest as manifest_mod
from soundtrack.data import media
from soundtrack.data.ingest import QUARANTINE_REASONS, IngestLimits, ingest, source_id_for
from soundtrack.data.shards import plan_shards, write_shard

CLIP_S = 10.24
FPS = 10  # test videos' frame rate (frames/s)


def _make_video(
    path: Path,
    seconds: float,
    size: tuple[int, int] = (64, 64),
    vcodec: str = "libx264",
    acodec: str | None = "aac",
    sr: int = 16000,
    layout: str = "mono",
    vfr: bool = False,
    container_options: dict | None = None,
    video: bool = True,
    video_options: dict | None = None,
    audio_options: dict | None = None,
) -> Path:
    """A moving gradient with a 440 Hz tone (amplitude 0.3) on every channel (``media_factory.write_av``).

    Args:
        path: output file; the extension picks the container.
        seconds: length (s).
        size: (height, width) in px.
        vcodec: video encoder name.
        acodec: audio encoder name, ``None`` for no audio track.
        sr: audio sample rate (Hz).
        layout: audio channel layout (``mono``, ``stereo``, ``5.1``).
        vfr: alternate 50 ms and 150 ms frame intervals (mean 10 fps) on a 1 ms time base.
        container_options: muxer options (e.g. ``movflags=faststart``).
        video: write a video stream.
        video_options: video encoder options.
        audio_options: audio encoder options.
    """
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]

    def gradient(i: int) -> np.ndarray:
        img = np.empty((h, w, 3), np.uint8)
        img[..., 0] = (xx * 4 + i * 7) % 256
        img[..., 1] = (yy * 4) % 256
        img[..., 2] = (i * 13) % 256
        return img

    n = int(round(seconds * FPS))
    times = np.concatenate([[0.0], np.cumsum(np.where(np.arange(n - 1) % 2 == 0, 0.05, 0.15))]) if vfr else None
    return write_av(path, seconds, fps=FPS, size=size, vcodec=vcodec if video else None, acodec=acodec, sr=sr,
                    layout=layout, audio=440.0, frame_times=times, picture=gradient, video_options=video_options,
                    audio_options=audio_options, container_options=container_options)


def _cut_in_half(src: Path, dst: Path) -> Path:
    data = src.read_bytes()
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(data[: len(data) // 2])
    return dst


# name -> (video encoder, audio encoder, rate Hz, muxer options). "live" drops the duration
# from the header (as browser recordings do), so ingest must measure it.
WEBM_CODECS = {
    "vp9.webm": ("libvpx-vp9", "libopus", 48000, {}),
    "vp8.webm": ("libvpx", "vorbis", 44100, {}),
    "live.webm": ("libvpx-vp9", "libopus", 48000, {"live": "1"}),
}
VPX_OPTS = {"deadline": "realtime", "cpu-used": "8"}  # fastest libvpx settings: 64 px frames need no quality

# Expected outcome of the main run. Good files: relative path -> clip count.
GOOD = {
    "main.mp4": 2,  # 25 s -> 2 x 10.24 s, remainder dropped
    "sub/stereo 44k.mkv": 2,  # 21 s
    "sub/surround.mp4": 1,  # 11 s, 5.1 at 48 kHz
    "apple.MOV": 1,  # upper-case extension, MPEG-4 + PCM at 8 kHz
    "vfr.mp4": 1,  # 12 s, irregular timestamps
    "names/clip ä 1.mp4": 1,  # spaces and non-ASCII
}
# Bad files: relative path -> quarantine reason.
BAD = {
    "bad/truncated.mp4": "truncated",  # moov box at the end, lost by the cut
    "bad/truncated faststart.mp4": "truncated",  # index intact, data missing
    "bad/truncated.mkv": "truncated",
    "bad/no audio.mp4": "no_audio",
    "bad/notes.mp4": "not_video",  # a text file
    "bad/playlist.mp4": "external_reference",  # an HLS playlist naming main.mp4: never followed
    "bad/sound.mp4": "not_video",  # a WAV file
    "bad/audio only.mp4": "no_video_stream",  # real mp4 holding only AAC
    "bad/empty.mp4": "empty",
    "bad/tiny.mp4": "bad_resolution",  # 8x8 px
    "bad/blip.mp4": "too_short",  # 0.5 s < min_clip_s
    "bad/stem.mp4": "bad_sidecar",  # its music stem is garbage
    "versions/short copy.mp4": "duplicate_file",  # byte copy of short.mp4 (sorted after it, so the copy goes)
}


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """The source folder of the main run (about 1.5 s to encode)."""
    src = tmp_path_factory.mktemp("ingest_src")
    _make_video(src / "main.mp4", 25.0)
    sf.write(str(src / "main.music.wav"), np.zeros(25 * 16000, np.float32), 16000)
    sf.write(str(src / "main.sfx.wav"), np.zeros(25 * 16000, np.float32), 16000)
    _make_video(src / "sub/stereo 44k.mkv", 21.0, sr=44100, layout="stereo")
    _make_video(src / "sub/surround.mp4", 11.0, sr=48000, layout="5.1")
    _make_video(src / "apple.MOV", 11.0, vcodec="mpeg4", acodec="pcm_s16le", sr=8000)
    _make_video(src / "vfr.mp4", 12.0, vfr=True)
    _make_video(src / "names/clip ä 1.mp4", 11.0)
    _make_video(src / "short.mp4", 4.0)
    for name, (vc, ac, sr, mux) in WEBM_CODECS.items():
        if encoder_available(vc) and encoder_available(ac):
            _make_video(
                src / "web" / name, 11.0, vcodec=vc, acodec=ac, sr=sr, layout="stereo",
                video_options=VPX_OPTS, audio_options={"strict": "experimental"}, container_options=mux,
            )  # fmt: skip
    # Broken files.
    _cut_in_half(src / "main.mp4", src / "bad/truncated.mp4")
    fast = _make_video(src / "faststart.tmp.mp4", 25.0, container_options={"movflags": "faststart"})
    _cut_in_half(fast, src / "bad/truncated faststart.mp4")
    fast.unlink()
    _cut_in_half(src / "sub/stereo 44k.mkv", src / "bad/truncated.mkv")
    _make_video(src / "bad/no audio.mp4", 11.0, acodec=None)
    (src / "bad/notes.mp4").write_text("this is a shopping list, not a video\n")
    (src / "bad/playlist.mp4").write_text(f"#EXTM3U\n#EXTINF:25.0,\n{src / 'main.mp4'}\n#EXT-X-ENDLIST\n")
    sf.write(str(src / "bad/sound.mp4"), np.zeros(16000, np.float32), 16000, format="WAV")
    _make_video(src / "bad/audio only.mp4", 3.0, video=False)
    (src / "bad/empty.mp4").write_bytes(b"")
    _make_video(src / "bad/tiny.mp4", 11.0, size=(8, 8))
    _make_video(src / "bad/blip.mp4", 0.5)
    _make_video(src / "bad/stem.mp4", 11.0)
    (src / "bad/stem.music.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEgarbage")
    (src / "versions").mkdir()
    shutil.copyfile(src / "short.mp4", src / "versions/short copy.mp4")
    # Not videos by extension: ignored by the scan, never quarantined.
    (src / "readme.txt").write_text("notes")
    return src


@pytest.fixture(scope="module")
def meta_csv(tree, tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("ingest_meta") / "meta.csv"
    pd.DataFrame(
        {
            "file": ["main.mp4", "sub/stereo 44k.mkv", "clip ä 1.mp4", "gone.mp4"],
            "caption": ["a drum solo", "rain on a roof", "", "missing video"],
            "genre": ["jazz", "ambient", "pop", "rock"],
            "bpm": [120, 60, 100, 90],
        }
    ).to_csv(p, index=False)
    return p


@pytest.fixture(scope="module")
def run(tree, meta_csv, tmp_path_factory):
    """The main ingest run."""
    return ingest(tree, tmp_path_factory.mktemp("ingest_out"), metadata_csv=meta_csv)


def _good_expected(tree: Path) -> dict[str, int]:
    exp = dict(GOOD)
    for name in WEBM_CODECS:
        if (tree / "web" / name).exists():
            exp[f"web/{name}"] = 1
    return exp


def _rel(tree: Path, video_path: str) -> str:
    return Path(video_path).relative_to(tree).as_posix()


def test_good_videos_become_consecutive_clips(run, tree):
    m = run.manifest
    manifest_mod.validate_manifest(m)
    counts = m.groupby(m["video_path"].map(lambda p: _rel(tree, p))).size().to_dict()
    assert counts == _good_expected(tree)
    main = m[m["video_path"] == str(tree / "main.mp4")].sort_values("start_s")
    assert main["start_s"].tolist() == [0.0, CLIP_S]
    assert (m["duration_s"] == CLIP_S).all() and (m["pad_s"] == 0.0).all()
    for _, row in m.iterrows():
        assert Path(row["video_path"]).is_absolute() and Path(row["video_path"]).exists()
        assert row["clip_id"] == f"{row['source_id']}__{int(round(row['start_s'] / CLIP_S)):04d}"
    # Written file equals the returned frame.
    pd.testing.assert_frame_equal(pd.read_parquet(run.manifest_path), m)


def test_odd_media_recorded_as_is(run, tree):
    m = run.manifest.set_index(run.manifest["video_path"].map(lambda p: _rel(tree, p)))
    assert m.loc["sub/stereo 44k.mkv", "src_audio_sr"].tolist() == [44100, 44100]
    assert m.loc["sub/stereo 44k.mkv", "src_audio_channels"].tolist() == [2, 2]
    assert (m.loc["sub/surround.mp4", "src_audio_sr"], m.loc["sub/surround.mp4", "src_audio_channels"]) == (48000, 6)
    assert m.loc["apple.MOV", "src_audio_sr"] == 8000
    assert m.loc["apple.MOV", "src_container"] == "mov,mp4,m4a,3gp,3g2,mj2"
    assert bool(m.loc["vfr.mp4", "src_vfr"]) and not bool(m.loc["main.mp4", "src_vfr"].iloc[0])
    assert m.loc["sub/stereo 44k.mkv", "src_container"].iloc[0] == "matroska,webm"


@pytest.mark.parametrize("name", sorted(WEBM_CODECS))
def test_webm(run, tree, name):
    vc, ac, _, _ = WEBM_CODECS[name]
    if not (encoder_available(vc) and encoder_available(ac)):
        pytest.skip(f"this PyAV build has no {vc}/{ac} encoder, so no {name} test file can be made")
    rows = run.manifest[run.manifest["video_path"] == str(tree / "web" / name)]
    assert len(rows) == 1 and rows["src_container"].iloc[0] == "matroska,webm"
    # Measured from the packets when the header has none (live.webm).
    assert rows["src_duration_s"].iloc[0] == pytest.approx(11.0, abs=0.05)


@pytest.mark.parametrize("rel,reason", sorted(BAD.items()))
def test_bad_files_quarantined(run, tree, rel, reason):
    q = run.quarantine
    hit = q[q["path"] == str(tree / rel)]
    assert len(hit) == 1, f"{rel} not quarantined; quarantine:\n{q[['path', 'reason']]}"
    assert hit["reason"].iloc[0] == reason, hit["message"].iloc[0]
    assert hit["reason"].iloc[0] in QUARANTINE_REASONS
    assert str(tree / rel) in hit["message"].iloc[0]  # the message names the file
    assert not run.manifest["video_path"].eq(str(tree / rel)).any()


def test_quarantine_and_summary_files(run, tree):
    q = pd.read_parquet(run.quarantine_path)
    assert list(q.columns) == ["path", "reason", "message"] and len(q) == len(BAD)
    summary = json.loads(run.summary_path.read_text(encoding="utf-8"))
    assert summary == run.summary
    assert summary["quarantined"]["total"] == len(BAD)
    expected = {}
    for reason in BAD.values():
        expected[reason] = expected.get(reason, 0) + 1
    assert summary["quarantined"]["by_reason"] == expected
    assert sum(s["clips"] for s in summary["splits"].values()) == summary["n_clips"] == len(run.manifest)
    assert summary["n_sources"] == len(_good_expected(tree))
    assert summary["media"]["vfr_sources"] == 1
    assert summary["warnings"] == []


def test_short_video_reported_not_quarantined(run):
    assert run.summary["short"] == [{"path": "short.mp4", "duration_s": 4.0, "included": False}]
    assert not run.quarantine["path"].str.endswith("/short.mp4").any()
    assert not run.manifest["video_path"].str.endswith("/short.mp4").any()


def test_pad_short_includes_one_padded_clip(tree, tmp_path, caplog):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copyfile(tree / "short.mp4", src / "short.mp4")
    with caplog.at_level("INFO", logger="soundtrack"):
        res = ingest(src, tmp_path / "out", pad_short=True)
    assert len(res.manifest) == 1
    row = res.manifest.iloc[0]
    assert row["start_s"] == 0.0 and row["duration_s"] == pytest.approx(4.0)
    assert row["pad_s"] == pytest.approx(CLIP_S - 4.0)
    assert res.summary["short"] == [{"path": "short.mp4", "duration_s": 4.0, "included": True}]
    assert "ingest: 1/1 files (100%)" in caplog.text  # progress is logged (the CLI prints it on stderr)


def test_sidecar_stems_and_metadata(run, tree):
    m = run.manifest
    main = m[m["video_path"] == str(tree / "main.mp4")]
    assert (main["music_path"] == str(tree / "main.music.wav")).all()
    assert (main["sfx_path"] == str(tree / "main.sfx.wav")).all()
    assert main["caption"].tolist() == ["a drum solo"] * 2
    assert main["label_genre"].tolist() == ["jazz"] * 2 and main["label_bpm"].tolist() == [120, 120]
    uni = m[m["video_path"] == str(tree / "names/clip ä 1.mp4")]  # matched by basename
    assert uni["label_genre"].tolist() == ["pop"] and uni["caption"].tolist() == [""]
    other = m[m["video_path"] == str(tree / "vfr.mp4")]
    assert other["caption"].tolist() == [""] and other["music_path"].isna().all()
    assert other["label_genre"].isna().all()
    assert run.summary["metadata"]["unmatched_rows"] == ["gone.mp4"]
    assert run.summary["metadata"]["matched"] == 3


def test_missing_stems_are_none_and_every_clip_featurizes(run, tree, tmp_path):
    """A stem-less video in a manifest where another video has stems: its stem paths are None
    (never NaN, which once made featurize fail 11 of 13 real clips with `load_wav(nan)`)."""
    m = manifest_mod.read_manifest(run.out_dir)
    rows = {r["video_path"]: r for r in manifest_mod.records(m)}
    assert rows[str(tree / "main.mp4")]["music_path"] == str(tree / "main.music.wav")
    assert rows[str(tree / "vfr.mp4")]["music_path"] is None and rows[str(tree / "vfr.mp4")]["sfx_path"] is None
    assert all(v is None or v == v for r in rows.values() for v in r.values() if not isinstance(v, list))  # no NaN
    pick = m[m["video_path"].isin([str(tree / "main.mp4"), str(tree / "vfr.mp4")])].drop_duplicates("video_path")
    assert pick["music_path"].map(lambda v: v is None).sum() == 1
    for sub in ("shards", "done"):
        (tmp_path / sub).mkdir()
    summary = write_shard(tmp_path, plan_shards(pick, 4)[0], FeaturizeSection(size=32, rows_per_shard=4))
    assert summary["n_failed"] == 0, summary["errors"]
    assert summary["n_out"] == 2


def test_metadata_without_file_column_is_an_error(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "meta.csv").write_text("name,caption\na.mp4,hello\n")
    with pytest.raises(ValueError, match="'file' column"):
        ingest(tmp_path / "src", tmp_path / "out", metadata_csv=tmp_path / "meta.csv")


def test_too_long_by_limit(tree, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copyfile(tree / "main.mp4", src / "long.mp4")
    res = ingest(src, tmp_path / "out", limits=IngestLimits(max_duration_s=20.0))
    assert res.quarantine["reason"].tolist() == ["too_long"] and len(res.manifest) == 0


def test_require_audio_false_keeps_silent_video(tree, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copyfile(tree / "bad/no audio.mp4", src / "silent.mp4")
    res = ingest(src, tmp_path / "out", require_audio=False)
    assert len(res.manifest) == 1 and len(res.quarantine) == 0
    assert res.manifest["src_audio_channels"].tolist() == [0]


def test_splits_by_source_and_deterministic(tree, tmp_path):
    fractions_ = (0.34, 0.33, 0.33)
    a = ingest(tree, tmp_path / "a", splits=fractions_, seed=3)
    b = ingest(tree, tmp_path / "b", splits=fractions_, seed=3)
    pd.testing.assert_frame_equal(a.manifest, b.manifest)
    assert (tmp_path / "a/manifest.parquet").read_bytes() == (tmp_path / "b/manifest.parquet").read_bytes()
    m = a.manifest
    assert m.groupby("source_id")["split"].nunique().max() == 1  # every source in one split
    by_split = {s: set(m.loc[m["split"] == s, "source_id"]) for s in manifest_mod.SPLITS}
    assert not by_split["train"] & by_split["val"]
    assert not by_split["train"] & by_split["test"] and not by_split["val"] & by_split["test"]
    # The split is a function of the source alone: adding or removing other files changes nothing.
    for sid, split in m.groupby("source_id")["split"].first().items():
        assert split == manifest_mod.split_for_source(sid, fractions_, 3)


def test_source_ids_are_safe_and_unique():
    names = ["a b.mp4", "a-b.mp4", "A B.mp4", "sub/a b.mp4", "clip ä 1.mp4", "clip a 1.mp4", "x__y.mkv"]
    ids = [source_id_for(n) for n in names]
    assert len(set(ids)) == len(ids)
    for sid in ids:
        assert "__" not in sid and all(ch.isascii() and (ch.isalnum() or ch == "-") for ch in sid), sid
    # NFC and NFD spellings of the same name (macOS) give the same id.
    assert source_id_for("clip \u00e4.mp4") == source_id_for("clip a\u0308.mp4")


@pytest.mark.parametrize(
    "rel,sr,duration_s",
    [("sub/stereo 44k.mkv", 44100, 21.0), ("sub/surround.mp4", 48000, 11.0), ("apple.MOV", 8000, 11.0)],
)
def test_read_audio_downmixes_and_resamples(tree, rel, sr, duration_s):
    clip = media.read_audio(tree / rel, sr=16000, start_s=0.0, duration_s=CLIP_S)
    assert clip.dtype == np.float32 and clip.ndim == 1 and len(clip) == int(CLIP_S * 16000)
    # Every channel holds the 0.3-amplitude tone, so the mono mix keeps an RMS near 0.21.
    assert 0.15 < float(np.sqrt(np.mean(clip[1600:] ** 2))) < 0.25
    whole = media.read_audio(tree / rel, sr=16000)
    assert abs(len(whole) - duration_s * 16000) < 0.05 * 16000  # within 50 ms (codec priming/padding)


def test_vfr_frames_sampled_by_time(tree):
    frames = media.read_frames(tree / "vfr.mp4", fps=10.0, start_s=0.0, duration_s=CLIP_S)
    assert frames.shape == (103, 64, 64, 3)


def test_rerun_checks_only_new_or_changed_files(tree, tmp_path):
    """The probe cache makes ingest resumable: an identical re-run checks nothing again, a
    touched file is checked again, and the manifest is the same either way."""
    import os

    out = tmp_path / "out"
    first = ingest(tree, out)
    assert first.summary["checked_now"] == first.summary["n_files"] - 1  # the duplicate is never probed
    again = ingest(tree, out)
    assert again.summary["checked_now"] == 0
    pd.testing.assert_frame_equal(first.manifest, again.manifest)
    # a torn cache file (a kill while writing it) is checked again, not trusted
    cache = sorted((out / "probe").glob("*.json"))
    cache[0].write_text("{")
    assert ingest(tree, out).summary["checked_now"] == 1
    st = (tree / "vfr.mp4").stat()
    os.utime(tree / "vfr.mp4", ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    try:
        third = ingest(tree, out)
    finally:
        os.utime(tree / "vfr.mp4", ns=(st.st_atime_ns, st.st_mtime_ns))
    assert third.summary["checked_now"] == 1
    pd.testing.assert_frame_equal(first.manifest, third.manifest)


def test_split_by_time_holds_out_later_clips_of_each_video(tmp_path):
    from soundtrack.data.ingest import split_by_time

    src = tmp_path / "src"
    _make_video(src / "a.mp4", 31.0)  # 3 clips
    _make_video(src / "b.mp4", 21.0)  # 2 clips: too few to hold any out
    res = ingest(src, tmp_path / "out", split_by="time")
    m = res.manifest.sort_values("start_s")
    a = m[m["video_path"] == str(src / "a.mp4")]
    assert a["split"].tolist() == ["train", "val", "test"]
    assert a["source_id"].tolist() == [f"{source_id_for('a.mp4')}.{s}" for s in ("train", "val", "test")]
    assert (m[m["video_path"] == str(src / "b.mp4")]["split"] == "train").all()
    assert any("split_by=time" in w for w in res.summary["warnings"])
    manifest_mod.validate_manifest(res.manifest)  # still one split per (new) source
    rows = [{"source_id": "s", "start_s": float(k), "split": "train"} for k in range(20)]
    got = [r["split"] for r in split_by_time(rows, (0.8, 0.1, 0.1))]
    assert got == ["train"] * 16 + ["val"] * 2 + ["test"] * 2
    with pytest.raises(ValueError, match="split_by must be one of source, time"):
        ingest(src, tmp_path / "out2", split_by="clip")


def test_too_small_folder_names_the_numbers_and_the_ways_out(tmp_path):
    from soundtrack.config import DataSection
    from soundtrack.errors import TooFewClips
    from soundtrack.stages.data import check_splits, ingest_run_dir, stage_ingest_source

    src = tmp_path / "src"
    _make_video(src / "a.mp4", 31.0)
    _make_video(src / "b.mp4", 11.0)
    data = DataSection(source=str(src), use_ray=False)
    with pytest.raises(TooFewClips) as err:
        stage_ingest_source(data, storage=tmp_path / "runs")
    msg = str(err.value)
    assert "4 clip(s) from 2 video(s)" in msg and "data.split_by=time" in msg and "data.splits" in msg
    out = ingest_run_dir(tmp_path / "runs", data)
    assert (out / "manifest.parquet").exists()  # the ingest itself is kept (and found again)
    timed = DataSection(source=str(src), use_ray=False, split_by="time")
    d2 = stage_ingest_source(timed, storage=tmp_path / "runs")
    assert d2 != out and check_splits(d2, src, timed)["test"] == {"videos": 1, "clips": 1}
    # the run name follows the folder's content: a new file gives a new ingest
    _make_video(src / "c.mp4", 11.0)
    assert ingest_run_dir(tmp_path / "runs", timed) != d2


def test_published_segments_cut_inside_their_spans(tmp_path):
    """A published segment list (VGGSound layout, full-length downloads): clips inside the spans,
    the layout's labels and splits, val drawn from its train sources."""
    from soundtrack.data.importers import import_layout

    src = tmp_path / "src"
    _make_video(src / "abcdefghijk.mp4", 41.0)
    _make_video(src / "zyxwvutsrqp.mp4", 25.0)
    _make_video(src / "unlisted.mp4", 11.0)
    csv = tmp_path / "vggsound.csv"
    csv.write_text('abcdefghijk,20,"dog barking",train\nzyxwvutsrqp,3,rain,test\nmissing_id_x,0,cat,train\n')
    seg, report = import_layout(csv, src, "vggsound")
    assert report["unmatched_rows"]["count"] == 1
    res = ingest(src, tmp_path / "out", segments=seg, splits=(0.5, 0.5, 0.0))
    m = res.manifest.set_index("video_path")
    a, z = m.loc[str(src / "abcdefghijk.mp4")], m.loc[str(src / "zyxwvutsrqp.mp4")]
    # a 10 s span inside a longer video gives one whole 10.24 s clip from the span's start
    assert (a["start_s"], a["duration_s"], a["pad_s"]) == (20.0, CLIP_S, 0.0)
    assert a["label_class"] == "dog barking" and z["label_class"] == "rain" and z["split"] == "test"
    assert a["split"] in ("train", "val")  # the layout publishes no val: drawn from train by the hash
    assert res.summary["segments"]["unlisted_files"] == 1 and str(src / "unlisted.mp4") not in m.index
