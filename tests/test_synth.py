"""Tests of the embedded synthetic data set (``soundtrack.data.synth``).

They read back the session's medium-difficulty set of 8 full-length clips (10.24 s,
seed 0: the ``synth_small`` fixture of conftest.py, ~2 s to make) through the shared
media readers.
"""

from __future__ import annotations

import dataclasses
import math
import os

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from soundtrack.data import synth
from soundtrack.data.manifest import REQUIRED_COLUMNS, read_manifest
from soundtrack.data.media import probe, read_audio, read_frames

N_CLIPS = 8
SR = 16000


@pytest.fixture(scope="module")
def dataset(synth_small):
    manifest = synth_small / "manifest.parquet"
    return synth_small, manifest, pd.read_parquet(manifest)


# ----------------------------------------------------------------------------- config


def test_difficulty_presets_differ_and_bad_name_raises():
    presets = {name: synth.difficulty_preset(name) for name in synth.DIFFICULTIES}
    assert presets["medium"] == synth.SynthConfig()  # medium is the default
    assert len({dataclasses.astuple(c) for c in presets.values()}) == 3
    easy, med, hard = presets["easy"], presets["medium"], presets["hard"]
    # Each difficulty knob grows from easy to hard; the SNR falls.
    for knob in ("n_distractors", "n_distractor_flashes", "n_accents", "n_offscreen_sfx", "n_cuts"):
        assert getattr(easy, knob)[1] <= getattr(med, knob)[1] <= getattr(hard, knob)[1], knob
        assert getattr(easy, knob)[1] < getattr(hard, knob)[1], knob
    assert easy.snr_db[0] > med.snr_db[0] > hard.snr_db[0]
    with pytest.raises(ValueError) as err:
        synth.difficulty_preset("impossible")
    for name in synth.DIFFICULTIES:
        assert name in str(err.value)
    with pytest.raises(dataclasses.FrozenInstanceError):
        med.snr_db = (0.0, 1.0)  # type: ignore[misc]
    with pytest.raises(ValueError, match="n_accents"):
        synth.SynthConfig(n_accents=(3, 1))


def test_plans_are_deterministic_and_events_sit_on_beats():
    for diff in synth.DIFFICULTIES:
        for i in range(6):
            a, b = synth.plan_clip(5, i, diff), synth.plan_clip(5, i, diff)
            assert a.labels() == b.labels() and a.caption == b.caption
            beats = a.beat_times
            lo, hi = synth.difficulty_preset(diff).tempo_range
            assert lo <= a.tempo <= hi
            # Ground truth is stored to 1 ms.
            for times in (beats, a.event_times, a.sfx_times, a.accent_times, a.distractor_times):
                assert np.allclose(np.asarray(times) * 1000, np.round(np.asarray(times) * 1000), atol=1e-6)
            assert np.all(np.diff(beats) > 0) and beats[0] >= 0 and beats[-1] < a.duration_s
            assert np.allclose(np.diff(beats), 60.0 / a.tempo, atol=0.0011)
            # Bounces, flashes and cuts are exactly on beats; bounces every hit_every beats.
            assert np.all(np.isin(a.event_times, beats))
            assert np.allclose(np.diff(a.bounce_times), a.hit_every * 60.0 / a.tempo, atol=0.0011)
            # Unmatched accents are not visual events; distractor flashes avoid the beats.
            assert not np.any(np.isin(a.accent_times, a.event_times))
            if len(a.distractor_times):
                assert np.min(np.abs(a.distractor_times[:, None] - beats[None, :])) >= 0.079
            # Off-screen sounds are part of the sfx onsets but never at a bounce.
            assert np.all(np.isin(a.offscreen_sfx_times, a.sfx_times))
            assert not np.any(np.isin(a.offscreen_sfx_times, a.bounce_times))
        # The song does not depend on the difficulty (only the extras do).
        e, h = synth.plan_clip(5, 0, "easy"), synth.plan_clip(5, 0, "hard")
        assert (e.tempo, e.key, e.mood, e.style) == (h.tempo, h.key, h.mood, h.style)
        assert np.array_equal(e.beat_times, h.beat_times)
    p = synth.plan_clip(0, 3)
    assert f"{int(p.tempo)} bpm" in p.caption and f" in {p.key} " in p.caption
    assert p.mode in p.caption and synth.MOODS[p.mood].adjective in p.caption


def test_easy_has_no_distractors_and_hard_has_them():
    easy = [synth.plan_clip(0, i, "easy") for i in range(8)]
    hard = [synth.plan_clip(0, i, "hard") for i in range(8)]
    assert all(not p.distractors and not len(p.accent_times) and not len(p.offscreen_sfx_times) for p in easy)
    assert all(len(p.distractors) >= 2 and len(p.cut_times) >= 1 for p in hard)
    assert max(p.snr_db for p in hard) < min(p.snr_db for p in easy)


# ----------------------------------------------------------------------------- files


def test_manifest_columns_and_labels(dataset):
    out, manifest, df = dataset
    assert manifest == out / "manifest.parquet"
    label_cols = [c for c in df.columns if c.startswith("label_")]
    assert list(df.columns) == list(REQUIRED_COLUMNS) + label_cols
    for col in ("label_tempo", "label_key", "label_mode", "label_mood", "label_style", "label_difficulty",
                "label_beat_times", "label_event_times", "label_sfx_times", "label_accent_times",
                "label_distractor_times", "label_offscreen_sfx_times"):
        assert col in df.columns, col
    assert len(df) == N_CLIPS
    assert df["source_id"].tolist() == [f"synth{i:05d}" for i in range(N_CLIPS)]
    assert df["clip_id"].tolist() == [f"synth{i:05d}__0000" for i in range(N_CLIPS)]
    assert set(df["split"]) <= {"train", "val", "test"}
    assert df["split"].value_counts().to_dict() == {"train": 6, "val": 1, "test": 1}
    assert (df["start_s"] == 0.0).all() and (df["pad_s"] == 0.0).all() and (df["duration_s"] == 10.24).all()
    assert (df["label_difficulty"] == "medium").all()
    assert all(len(c) > 40 for c in df["caption"])
    # Label lists come back from parquet as arrays of floats, ms precision.
    for v in df["label_beat_times"]:
        assert np.asarray(v).dtype == np.float64 and len(v) >= 13  # >= 80 bpm over ~10 s
    # The shared reader validates the contract and resolves the relative paths.
    m = read_manifest(out)
    for col in ("video_path", "music_path", "sfx_path"):
        assert all(os.path.exists(p) for p in m[col])
    meta = pd.read_parquet(out / "metadata.parquet")
    assert meta["source_id"].tolist() == df["source_id"].tolist()
    assert meta["label_tempo"].tolist() == df["label_tempo"].tolist()


def test_mp4_and_wav_formats(dataset):
    out, _, df = dataset
    r = df.iloc[0]
    info = probe(out / r.video_path)
    assert info.has_video and info.has_audio and (info.width, info.height) == (128, 128)
    assert abs(info.fps - 10.0) < 1e-6
    frames = read_frames(out / r.video_path, fps=10.0, duration_s=10.24)
    assert frames.shape == (103, 128, 128, 3) and frames.dtype == np.uint8
    audio = read_audio(out / r.video_path, sr=SR)
    assert abs(len(audio) - 163840) <= 1024  # +- one AAC frame
    for col in ("music_path", "sfx_path"):
        inf = sf.info(str(out / r[col]))
        assert (inf.samplerate, inf.channels, inf.frames, inf.subtype) == (SR, 1, 163840, "PCM_16")
    # The mix in the mp4 is music + sfx + noise at the labelled SNR.
    music, _ = sf.read(str(out / r.music_path), dtype="float32")
    sfx, _ = sf.read(str(out / r.sfx_path), dtype="float32")
    n = min(len(audio), len(music))
    sig = (music + sfx)[:n]
    resid = audio[:n] - sig
    snr = 10 * math.log10(np.mean(sig**2) / np.mean(resid**2))
    assert abs(snr - r.label_snr_db) < 3.0  # AAC coding noise adds a little


def test_deterministic_prefix_and_resume(dataset, tmp_path):
    out, _, df = dataset
    other = tmp_path / "prefix"
    synth.generate_dataset(other, 4, seed=0, difficulty="medium", workers=1, progress=False)
    small = pd.read_parquet(other / "manifest.parquet")
    meta_a = pd.read_parquet(out / "metadata.parquet").drop(columns=["split"]).head(4)
    meta_b = pd.read_parquet(other / "metadata.parquet").drop(columns=["split"])
    pd.testing.assert_frame_equal(meta_a, meta_b)  # n=4 gives the first 4 clips of n=8
    assert small["caption"].tolist() == df["caption"].head(4).tolist()
    for i in range(4):
        for suffix in (".music.wav", ".sfx.wav"):
            a = (out / "videos" / f"synth{i:05d}{suffix}").read_bytes()
            b = (other / "videos" / f"synth{i:05d}{suffix}").read_bytes()
            assert a == b, (i, suffix)
    # Resume: complete clips are not rewritten; a missing file is re-made identically.
    mp4, mwav, _ = synth.clip_paths(other, "synth00001")
    before = {p: p.stat().st_mtime_ns for p in (other / "videos").iterdir()}
    wav_bytes = mwav.read_bytes()
    mwav.unlink()
    synth.generate_dataset(other, 4, seed=0, difficulty="medium", workers=1, progress=False)
    assert mwav.read_bytes() == wav_bytes
    for p, t in before.items():
        if p.name.startswith("synth00001"):
            continue
        assert p.stat().st_mtime_ns == t, p
    assert not list((other / "videos").glob("*.tmp*"))
    # A folder made with other settings is refused, not silently mixed.
    with pytest.raises(ValueError, match="other settings"):
        synth.generate_dataset(other, 4, seed=1, difficulty="medium", workers=1, progress=False)


# ----------------------------------------------------------------------------- correspondence


def test_beats_tracked_from_decoded_mp4_audio(dataset):
    """librosa's beat tracker on the decoded AAC mix finds the ground-truth beats.

    Settings are those featurize uses (sr 16 kHz, hop 160), otherwise librosa's defaults
    (no start_bpm hint). mir_eval's convention drops beats before 5 s (the tracker's
    warm-up); it is applied to both reference and estimate alike with ``trim_beats``.
    """
    import librosa
    import mir_eval

    out, _, df = dataset
    scores = []
    for _, r in df.iterrows():
        y = read_audio(out / r.video_path, sr=SR)
        _, est = librosa.beat.beat_track(y=y, sr=SR, hop_length=160, units="time")
        ref = np.asarray(r.label_beat_times)
        scores.append(mir_eval.beat.f_measure(mir_eval.beat.trim_beats(ref), mir_eval.beat.trim_beats(est),
                                              f_measure_threshold=0.07))
    assert np.mean(scores) >= 0.9, scores


def test_sfx_onsets_sit_on_collisions(dataset):
    import librosa

    out, _, df = dataset
    hits, n_bounce, good, n_on = 0, 0, 0, 0
    for _, r in df.iterrows():
        y, _ = sf.read(str(out / r.sfx_path), dtype="float32")
        on = librosa.onset.onset_detect(y=y, sr=SR, hop_length=160, units="time", backtrack=False)
        bounces = np.asarray(r.label_bounce_times)
        sfx_t = np.asarray(r.label_sfx_times)
        hits += int(np.sum(np.min(np.abs(bounces[:, None] - on[None, :]), axis=1) <= 0.05))
        n_bounce += len(bounces)
        good += int(np.sum(np.min(np.abs(on[:, None] - sfx_t[None, :]), axis=1) <= 0.05))
        n_on += len(on)
    assert hits / n_bounce >= 0.9, (hits, n_bounce)  # every collision makes a sound
    assert good / n_on >= 0.9, (good, n_on)  # and the stem has no other onsets than the labelled ones


def test_motion_energy_peaks_at_visual_events(dataset):
    out, _, df = dataset
    ev_energy, other_energy = [], []
    for _, r in df.iterrows():
        f = read_frames(out / r.video_path, fps=10.0).astype(np.float32)
        energy = np.abs(np.diff(f, axis=0)).mean(axis=(1, 2, 3))  # energy[j]: change into frame j+1
        ev_frames = {int(math.ceil(t * 10 - 1e-9)) for t in r.label_event_times}
        is_ev = np.zeros(len(energy), bool)
        for j in ev_frames:  # the first frame at or after the event shows it
            if 1 <= j <= len(energy):
                is_ev[j - 1] = True
        ev_energy.append(energy[is_ev].mean())
        other_energy.append(energy[~is_ev].mean())
        flashes = [int(math.ceil(t * 10 - 1e-9)) for t in list(r.label_flash_times) + list(r.label_cut_times)]
        for j in flashes:  # a flash or a cut is among the largest changes of its clip
            assert energy[j - 1] >= np.percentile(energy, 90)
    ratio = np.array(ev_energy) / np.array(other_energy)
    assert np.all(ratio > 1.1) and ratio.mean() > 1.4, ratio
