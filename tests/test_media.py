"""Tests of ``soundtrack.data.media`` decoding on real files encoded with PyAV (no mocks).

A codec matrix (every audio codec PyAV encodes, in the containers that carry it, at
several rates), odd frame sizes, variable frame rate, 5.1 down-mixing, display rotation,
packets damaged in the middle and at the start, and the A/V sync of a clip through
ingest and featurize: each frame draws its source frame number as blocks and the audio
is a tone whose pitch steps every second, so a decoded clip tells where it came from.
"""

from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pandas as pd
import pytest
from media_factory import (
    damage_packets,
    dominant_freq,
    encoder_available,
    packet_table,
    pitch_track,
    read_counter,
    step_pitch,
    tone,
    write_av,
)

from soundtrack.config import FeaturizeSection
from soundtrack.data import media
from soundtrack.data.ingest import ingest
from soundtrack.data.shards import decode_clip, decode_row, plan_shards, read_shards, write_shard
from soundtrack.distributed.featurize import run_featurize
from soundtrack.errors import MediaError

SR = media.SAMPLE_RATE
VPX = {"deadline": "realtime", "cpu-used": "8"}  # fastest libvpx settings: tiny frames need no quality
# Video encoder per container (AVI: MPEG-4 part 2, the classic pairing; WebM only takes VPx).
VIDEO_FOR = {"mp4": ("libx264", None), "mov": ("libx264", None), "mkv": ("libx264", None),
             "avi": ("mpeg4", None), "webm": ("libvpx", VPX)}

# (audio encoder, container, sample rate Hz, layout, tone Hz). The native Vorbis encoder is
# experimental and stereo-only; Opus decodes at 48 kHz whatever it was fed.
CODECS = [
    ("aac", "mp4", 44100, "stereo", 523.0),
    ("aac", "mov", 22050, "mono", 440.0),
    ("aac", "mkv", 8000, "mono", 700.0),
    ("libmp3lame", "mp4", 48000, "stereo", 330.0),
    ("libmp3lame", "avi", 44100, "stereo", 610.0),
    ("libmp3lame", "mkv", 22050, "mono", 880.0),
    ("ac3", "mkv", 48000, "stereo", 392.0),
    ("ac3", "avi", 44100, "stereo", 466.0),
    ("ac3", "mp4", 32000, "mono", 587.0),
    ("eac3", "mp4", 48000, "stereo", 659.0),
    ("eac3", "mkv", 32000, "mono", 740.0),
    ("libopus", "webm", 48000, "stereo", 494.0),
    ("libopus", "mkv", 24000, "mono", 554.0),
    ("vorbis", "webm", 44100, "stereo", 415.0),
    ("vorbis", "mkv", 22050, "stereo", 622.0),
    ("flac", "mkv", 96000, "stereo", 349.0),
    ("flac", "mp4", 8000, "mono", 784.0),
    ("pcm_s16le", "avi", 8000, "mono", 311.0),
    ("pcm_s16le", "mov", 44100, "stereo", 932.0),
    ("pcm_s24le", "mkv", 48000, "stereo", 370.0),
    ("pcm_f32le", "mov", 16000, "mono", 1047.0),
    ("pcm_u8", "avi", 11025, "mono", 450.0),
]


STEP_S = 1.75  # the matrix tone jumps a fifth (x 1.5) at this time (s): a mark to check alignment by


def _write_codec_case(path: Path, acodec: str, sr: int, layout: str, freq: float, seconds: float = 3.0) -> Path:
    for name in (acodec, VIDEO_FOR[path.suffix[1:]][0]):
        if not encoder_available(name):
            pytest.skip(f"this PyAV build has no {name} encoder")
    vcodec, vopts = VIDEO_FOR[path.suffix[1:]]
    aopts = {"strict": "experimental"} if acodec == "vorbis" else None
    return write_av(path, seconds, fps=25, size=(32, 32), vcodec=vcodec, video_options=vopts,
                    acodec=acodec, sr=sr, layout=layout, audio=lambda t: np.where(t < STEP_S, freq, 1.5 * freq),
                    audio_options=aopts)


def _step_position(y: np.ndarray, freq: float) -> float:
    """Where (s into ``y``) the pitch goes from ``freq`` to ``1.5 * freq``."""
    t, f = pitch_track(y, SR, win_s=0.02, hop_s=0.002)
    return float(t[np.argmax(f > 1.25 * freq)])


@pytest.mark.parametrize("acodec,container,sr,layout,freq", CODECS, ids=[f"{c[0]}-{c[1]}-{c[2]}" for c in CODECS])
def test_audio_codec_matrix(tmp_path, acodec, container, sr, layout, freq):
    """Every codec decodes to mono 16 kHz of the right length, start and pitch, whole or windowed."""
    path = _write_codec_case(tmp_path / f"a.{container}", acodec, sr, layout, freq)
    info = media.probe(path)
    assert info.has_audio and info.audio_channels == (2 if layout == "stereo" else 1)
    y, report = media.decode_audio(path)
    assert report == media.DecodeReport()
    # Encoders pad the last frame (AAC at 8 kHz: up to 128 ms); MP3 in AVI keeps LAME's 25 ms delay.
    assert 2.995 < len(y) / SR < 3.13, len(y) / SR
    onset = np.argmax(np.abs(y) > 0.1) / SR
    assert onset < 0.035, onset  # the tone starts at 0 s (within the codec delay)
    assert dominant_freq(y[SR // 2 : int(1.6 * SR)], SR) == pytest.approx(freq, abs=2.0)
    assert dominant_freq(y[int(1.9 * SR) : int(2.9 * SR)], SR) == pytest.approx(1.5 * freq, abs=3.0)
    assert 0.2 < np.abs(y[SR // 2 : int(1.6 * SR)]).max() < 0.4  # amplitude 0.3 kept by resampling and downmix
    # The step is at 1.75 s, late by the encoder delay where the container cannot say it
    # (AVI: LAME's 26 ms, AC-3's 6 ms; mp4 edit lists and mkv codec delays undo it).
    assert _step_position(y, freq) == pytest.approx(STEP_S, abs=0.03)
    win, rep = media.decode_audio(path, start_s=1.5, duration_s=1.0)  # past 1 s: the seeking path
    assert len(win) == SR and rep.bad_packets == 0
    # The window is cut at 1.5 s of the source: the step is where the whole decode has it,
    # 1.5 s earlier (mkv/webm store whole milliseconds, the analysis hop is 2 ms).
    assert _step_position(win, freq) == pytest.approx(_step_position(y, freq) - 1.5, abs=0.003)
    assert np.array_equal(media.read_audio(path, start_s=1.5, duration_s=1.0), win)


def test_surround_downmixed_to_mono_mean(tmp_path):
    """A 5.1 track: each channel's own tone reaches the mono mix at 1/6 of its level."""
    freqs = [300.0, 500.0, 700.0, 60.0, 900.0, 1100.0]  # in FFmpeg's 5.1 order: FL FR FC LFE BL BR
    sig = np.stack([tone(3.0, 48000, f) for f in freqs])
    for acodec, container in (("aac", "mp4"), ("ac3", "mkv"), ("flac", "mkv")):
        path = write_av(tmp_path / f"s51-{acodec}.{container}", 3.0, size=(32, 32), acodec=acodec, sr=48000,
                        layout="5.1", audio=sig)
        assert media.probe(path).audio_channels == 6
        y = media.read_audio(path)[SR // 2 : 5 * SR // 2]
        spec = np.abs(np.fft.rfft(y * np.hanning(len(y)))) / (np.hanning(len(y)).sum() / 2)
        # The LFE channel carries 60 Hz only; AC-3 low-passes it, so only the 5 full-band ones are checked.
        for ch, f in zip(("FL", "FR", "FC", "LFE", "BL", "BR"), freqs):
            if f < 100:
                continue
            level = spec[int(round(f * len(y) / SR))]
            assert level == pytest.approx(0.3 / 6, rel=0.25), (acodec, ch, f, level)


@pytest.mark.parametrize("vcodec,pix_fmt,container,size", [
    ("libx264", "yuv420p", "mp4", (50, 90)),
    ("libx264", "yuv444p", "mp4", (51, 91)),  # 4:4:4 allows odd sides
    ("ffv1", "yuv444p", "mkv", (45, 77)),
    ("mjpeg", "yuvj444p", "avi", (33, 65)),
], ids=["h264-90x50", "h264-444-91x51", "ffv1-77x45", "mjpeg-65x33"])
def test_odd_frame_sizes(tmp_path, vcodec, pix_fmt, container, size):
    """Odd and small frame sizes decode at their size and resize, frame numbers intact."""
    if not encoder_available(vcodec):
        pytest.skip(f"this PyAV build has no {vcodec} encoder")
    path = write_av(tmp_path / f"odd.{container}", 2.0, fps=25, size=size, vcodec=vcodec, pix_fmt=pix_fmt, acodec=None)
    info = media.probe(path)
    assert (info.height, info.width) == size
    frames = media.read_frames(path)
    assert frames.shape == (20, *size, 3)
    assert [read_counter(f) for f in frames] == [int(i * 2.5 + 1e-6) for i in range(20)]
    small = media.read_frames(path, size=(32, 32), start_s=0.5, duration_s=1.0)
    assert small.shape == (10, 32, 32, 3)
    assert [read_counter(f) for f in small] == [int((0.5 + i / 10) * 25 + 1e-6) for i in range(10)]


def _expected_counters(frame_times: np.ndarray, times: np.ndarray) -> list[int]:
    """The frame on screen at each time: the last one whose timestamp is <= it (or the first)."""
    return [max(int(np.searchsorted(frame_times, t + 1e-6, side="right")) - 1, 0) for t in times]


@pytest.mark.parametrize("vfr", [False, True], ids=["cfr-25fps", "vfr"])
def test_decord_and_pyav_sample_the_same_frames(tmp_path, vfr):
    """Both decoders (decord's fast path, PyAV's tolerant one) show frame = last pts <= t, VFR included."""
    if vfr:  # intervals of 20, 60 and 130 ms in turn: 70 ms on average, ~14 fps
        frame_times = np.cumsum([0.0] + [(0.02, 0.06, 0.13)[i % 3] for i in range(59)])
    else:
        frame_times = np.arange(60) / 25.0
    path = write_av(tmp_path / "v.mp4", 0.0, size=(48, 80), frame_times=frame_times, acodec=None)
    assert media.probe(path).vfr == vfr
    for start, dur in ((0.0, 2.0), (0.55, 1.2)):
        times = start + np.arange(int(np.ceil(dur * 10))) / 10
        want = _expected_counters(frame_times, times)
        fast = media.read_frames(path, fps=10, start_s=start, duration_s=dur)
        tolerant, report = media._pyav_frames(str(path), 10, start, dur, None)
        assert report.bad_packets == 0
        assert [read_counter(f) for f in fast] == want
        assert [read_counter(f) for f in tolerant] == want
        assert np.abs(fast.astype(int) - tolerant).max() <= 2  # same pixels: one YUV->RGB conversion
    # To the end: T = ceil(duration * fps), the last frame held for its duration.
    whole = media.read_frames(path, fps=10)
    whole_pyav, _ = media._pyav_frames(str(path), 10, 0.0, None, None)
    assert len(whole) == len(whole_pyav)


@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_display_rotation_applied(tmp_path, rotation):
    """A display matrix (a phone's portrait video) gives upright frames and the displayed size."""
    plain = write_av(tmp_path / "plain.mp4", 1.0, fps=10, size=(48, 80), acodec="aac")
    turned = write_av(tmp_path / f"rot{rotation}.mp4", 1.0, fps=10, size=(48, 80), acodec="aac", rotation=rotation)
    info = media.probe(turned)
    assert info.rotation == rotation and media.probe(plain).rotation == 0
    assert (info.height, info.width) == ((80, 48) if rotation in (90, 270) else (48, 80))
    want = np.rot90(media.read_frames(plain), k=rotation // 90, axes=(1, 2))  # counter-clockwise
    frames, report = media.decode_frames(turned)
    assert frames.shape == want.shape and report.bad_packets == 0
    assert np.abs(frames.astype(int) - want).max() <= 2
    small = media.read_frames(turned, size=(40, 24))  # (height, width) of the displayed picture
    assert small.shape == (10, 40, 24, 3)
    upright = np.rot90(small, k=-(rotation // 90), axes=(1, 2))
    assert [read_counter(f) for f in upright] == list(range(10))


# ----------------------------------------------------------------------------- damage


def test_damaged_audio_packets_become_counted_silence(tmp_path):
    """Garbage in ~0.3 s of AAC packets: skipped, silent for their time, the rest intact and in place."""
    src = write_av(tmp_path / "ok.mp4", 8.0, size=(32, 32), acodec="aac", sr=44100, layout="stereo",
                   audio=step_pitch())
    hit = damage_packets(src, tmp_path / "bad.mp4", "audio", 4.0, 4.3)
    assert len(hit) >= 10
    clean, _ = media.decode_audio(src, start_s=2.0, duration_s=4.0)
    y, report = media.decode_audio(tmp_path / "bad.mp4", start_s=2.0, duration_s=4.0)
    assert len(y) == len(clean) == 4 * SR  # the time line is kept: nothing shifts after the damage
    t0, t1 = hit[0]["t"], hit[-1]["t"] + hit[-1]["dur"]
    assert report.bad_packets == len(hit)
    assert report.lost_s == pytest.approx(t1 - t0, abs=0.03)  # one AAC frame of decoder smearing
    (a, b), = report.spans
    assert a == pytest.approx(t0, abs=0.03) and b == pytest.approx(t1, abs=0.03)
    lost = slice(int((a - 2.0) * SR) + 400, int((b - 2.0) * SR) - 400)
    assert np.abs(y[lost]).max() < 1e-3  # silence where the packets were
    keep = np.ones(len(y), bool)
    keep[int((a - 2.05) * SR) : int((b - 1.95) * SR)] = False  # 50 ms of overlap-add around the hole
    np.testing.assert_allclose(y[keep], clean[keep], atol=2e-3)


def test_damaged_video_packets_hold_the_previous_frame(tmp_path):
    """Garbage in 0.5 s of H.264 packets: decord fails, PyAV skips them and holds the last good frame."""
    # A key frame every second and no B-frames, so only frames from 3.0 s to the next key
    # frame depend on the damaged ones (with B-frames the two before 3.0 s would too).
    src = write_av(tmp_path / "ok.mp4", 6.0, fps=25, size=(48, 80), acodec="aac", video_options={"g": "25", "bf": "0"})
    hit = damage_packets(src, tmp_path / "bad.mp4", "video", 3.0, 3.5)
    assert len(hit) == 13
    frames, report = media.decode_frames(tmp_path / "bad.mp4", fps=10, start_s=1.0, duration_s=4.0)
    assert frames.shape == (40, 48, 80, 3)
    assert report.bad_packets == 13 and report.lost_s == pytest.approx(0.52, abs=1e-6)
    assert report.spans == ((3.0, 3.52),)
    got = [read_counter(f) for f in frames]
    for i, n in enumerate(got):
        t = 1.0 + i / 10
        if t < 3.0 or t >= 4.0:  # outside the damaged group of pictures (key frames every second)
            assert n == int(t * 25 + 1e-6), (t, n)
        elif t < 3.52:
            assert n == 74, (t, n)  # the last frame before the damage (2.96 s) stays on screen
    _, a_report = media.decode_audio(tmp_path / "bad.mp4", start_s=1.0, duration_s=4.0)
    assert a_report.bad_packets == 0


def test_decode_clip_records_loss_and_refuses_badly_damaged_clips(tmp_path):
    """A clip keeps its loss as lost_s / bad_packets; past max_lost_fraction it is refused as damaged."""
    src = write_av(tmp_path / "ok.mp4", 10.24, fps=25, size=(48, 80), acodec="aac", video_options={"g": "25"})
    light = tmp_path / "light.mp4"
    damage_packets(src, light, "audio", 2.0, 2.5)
    damage_packets(light, light, "video", 2.2, 2.7)  # overlaps the audio loss: counted once
    heavy = tmp_path / "heavy.mp4"
    damage_packets(src, heavy, "audio", 1.0, 5.0)
    section = FeaturizeSection(size=32)
    row = {"clip_id": "x__0000", "start_s": 0.0, "duration_s": 10.24, "pad_s": 0.0}
    dec = decode_clip({**row, "video_path": str(light)}, section)
    assert dec["frames"].shape == (103, 32, 32, 3) and dec["mix"].shape == (163840,)
    assert dec["lost_s"] == pytest.approx(0.7, abs=0.05) and dec["bad_packets"] > 20
    assert decode_clip({**row, "video_path": str(src)}, section)["lost_s"] == 0.0
    with pytest.raises(MediaError) as err:
        decode_clip({**row, "video_path": str(heavy)}, section)
    assert err.value.reason == "damaged" and "max_lost_fraction=0.25" in err.value.message
    assert decode_clip({**row, "video_path": str(heavy)}, FeaturizeSection(size=32, max_lost_fraction=0.5))["lost_s"] > 3.9


@pytest.mark.parametrize("acodec", ["libmp3lame", "ac3"])
def test_damaged_first_audio_packet_in_avi_is_ingested(tmp_path, acodec):
    """ffmpeg plays an AVI whose first audio packet is garbage; ingest must not quarantine it."""
    src = write_av(tmp_path / "src" / "ok.avi", 11.0, fps=25, size=(32, 32), vcodec="mpeg4", acodec=acodec,
                   sr=44100, layout="stereo")
    bad = tmp_path / "src" / "first.avi"
    hit = damage_packets(src, bad, "audio", -1.0, 0.01, max_packets=1)
    assert hit and hit[0]["t"] == 0.0
    src.unlink()
    res = ingest(tmp_path / "src", tmp_path / "out", clip_s=10.24)
    assert res.quarantine.empty, res.quarantine.to_dict("records")
    assert res.n_clips == 1
    assert any("damaged audio packet(s) at the start skipped" in w for w in res.summary["warnings"])
    y, report = media.decode_audio(bad, duration_s=10.24)
    assert len(y) == 163840 and 1 <= report.bad_packets <= 4 and 0 < report.lost_s < 0.15


def test_damaged_clip_is_recorded_by_write_shard(tmp_path):
    """write_shard keeps the lightly damaged clip (with its loss) and lists the refused one in the marker."""
    src = write_av(tmp_path / "ok.mp4", 10.24, fps=25, size=(48, 80), acodec="aac")
    hit = damage_packets(src, tmp_path / "light.mp4", "audio", 3.0, 3.2)
    damage_packets(src, tmp_path / "heavy.mp4", "audio", 2.0, 6.0)
    rows = [{"clip_id": f"{name}__0000", "source_id": name, "split": "train", "video_path": str(tmp_path / f"{name}.mp4"),
             "start_s": 0.0, "duration_s": 10.24, "pad_s": 0.0, "music_path": None, "sfx_path": None, "caption": ""}
            for name in ("heavy", "light")]
    out = tmp_path / "feat"
    for sub in ("shards", "done"):
        (out / sub).mkdir(parents=True)
    summary = write_shard(out, plan_shards(pd.DataFrame(rows), 4)[0], FeaturizeSection(size=32))
    assert summary["n_out"] == 1 and [e["reason"] for e in summary["errors"]] == ["damaged"]
    row = read_shards(out).iloc[0]
    assert row["clip_id"] == "light__0000" and row["bad_packets"] == len(hit) >= 3
    assert row["lost_s"] == pytest.approx(sum(h["dur"] for h in hit), abs=0.07)  # one AAC frame (64 ms)
    assert json.loads((out / "done" / "shard-00000.json").read_text())["errors"][0]["clip_id"] == "heavy__0000"


# ----------------------------------------------------------------------------- A/V sync

AV_FPS = 25.0  # source frame rate (frames/s), deliberately not the platform's 10 fps


def _video_source_times(frames: np.ndarray) -> np.ndarray:
    """Source time (s) of each decoded frame from the frame number it draws."""
    return np.array([read_counter(f) for f in frames]) / AV_FPS


def _audio_source_offset(wav: np.ndarray, start_s: float) -> float:
    """Where in the source (s) a clip's audio begins, from its pitch steps (400 + 40 * second Hz).

    Each step from second s-1 to s sits at source time s; its position in the clip gives
    ``s - position``. The steps' median is returned.
    """
    t, f = pitch_track(wav, SR)
    sec = np.round((f - 400.0) / 40.0)
    offsets = []
    for j in np.flatnonzero(np.diff(sec) == 1):  # window j still in second s-1, j+1 in second s
        s = sec[j + 1]
        if np.all(sec[max(j - 8, 0) : j + 1] == s - 1) and np.all(sec[j + 1 : j + 10] == s):
            offsets.append(s - (t[j] + t[j + 1]) / 2)
    assert len(offsets) >= 8, (start_s, offsets)
    return float(np.median(offsets))


def test_av_sync_through_ingest_and_featurize(tmp_path):
    """35 s at 25 fps with time-coded frames and a pitch-stepped tone: every clip's frames and audio
    come from the same instant (within one 10 fps frame) after ingest -> featurize -> shards."""
    write_av(tmp_path / "src" / "timecoded.mp4", 35.0, fps=AV_FPS, size=(64, 112), acodec="aac", sr=44100,
             layout="stereo", audio=step_pitch(400.0, 40.0))
    res = ingest(tmp_path / "src", tmp_path / "data", clip_s=10.24, splits=(1.0, 0.0, 0.0))
    assert res.quarantine.empty and list(res.manifest["start_s"]) == [0.0, 10.24, 20.48]
    run_featurize(tmp_path / "data", tmp_path / "feat", FeaturizeSection(size=32, rows_per_shard=3),
                  use_ray=False, progress=False)
    df = read_shards(tmp_path / "feat").sort_values("start_s")
    assert len(df) == 3
    for rec in df.to_dict("records"):
        row = decode_row(rec, keys=["frames", "wav_mix"])
        start = float(row["start_s"])
        assert row["lost_s"] == 0.0 and row["bad_packets"] == 0
        frames, wav = row["frames"], row["wav_mix"]
        assert frames.shape == (103, 32, 32, 3) and wav.shape == (163840,)
        # Video: frame i shows the source frame on screen at start + i / 10 s.
        v_src = _video_source_times(frames)
        clip_t = np.arange(len(frames)) / 10.0
        v_offset = v_src - clip_t  # in (start - 1/25, start]
        assert np.all(v_offset <= start + 1e-6) and np.all(v_offset > start - 1 / AV_FPS - 1e-6), (start, v_offset)
        a_offset = _audio_source_offset(wav, start)
        assert abs(a_offset - start) < 0.03, (start, a_offset)
        assert abs(a_offset - float(np.median(v_offset))) < 0.1, (start, a_offset, np.median(v_offset))


def test_packet_table_positions_are_payloads(tmp_path):
    """The damage helper's premise: packet.pos is the payload's offset in the files damaged above
    (in mkv it is not: it points at the block header)."""
    for container, vcodec, acodec in (("mp4", "libx264", "aac"), ("avi", "mpeg4", "libmp3lame"), ("avi", "mpeg4", "ac3")):
        path = write_av(tmp_path / f"p-{acodec}.{container}", 1.0, size=(32, 32), vcodec=vcodec, acodec=acodec,
                        sr=44100)
        data = path.read_bytes()
        with av.open(str(path)) as c:
            for pkt in c.demux():
                if pkt.size and pkt.pos is not None and pkt.pos >= 0:
                    assert data[pkt.pos : pkt.pos + pkt.size] == bytes(pkt), (container, pkt)
        assert packet_table(path)


def test_frame_count_ignores_float32_timestamp_noise_of_long_videos():
    """A 10-minute 10 fps file ends at 600.00006 s in decord's float32 timestamps: 6000
    frames, not 6001 (benchmarks/serve_load.py --phases long_job got 600.1 s of audio)."""
    from soundtrack.data.media import _n_out

    assert _n_out(float(np.float32(600.0) + np.float32(6e-5)), 10.0) == 6000
    assert _n_out(3.0000004, 10.0) == 30 and _n_out(3.05, 10.0) == 31  # a partial last frame counts
    assert _n_out(7200.0005, 25.0) == 180000 and _n_out(0.1, 10.0) == 1
