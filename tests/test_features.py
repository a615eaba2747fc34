"""Tests of soundtrack.data.features: each feature against a direct librosa / scipy / numpy
computation on the same input, plus behaviour on signals whose answer is known."""

from dataclasses import replace

import librosa
import numpy as np
import pytest
import scipy.ndimage
import scipy.signal

from soundtrack.data import features as F

CFG = F.DEFAULT_CONFIG
SR = CFG.sr


def _tone(freq_hz: float, seconds: float, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (amp * np.sin(2 * np.pi * freq_hz * t)).astype(np.float32)


def _clicks(seconds: float, period_s: float, amp: float = 0.9) -> np.ndarray:
    """Short decaying noise bursts every ``period_s`` seconds (a metronome)."""
    rng = np.random.default_rng(3)
    x = np.zeros(int(seconds * SR), dtype=np.float32)
    burst = (rng.standard_normal(320) * np.exp(-np.arange(320) / 40.0)).astype(np.float32)
    for start in np.arange(0.25, seconds - 0.05, period_s):
        i = int(round(start * SR))
        x[i : i + 320] += amp * burst[: len(x) - i]
    return x


@pytest.fixture(scope="module")
def music_clip() -> np.ndarray:
    """A 10.24 s 'song': A-minor arpeggio tones with a 2 Hz amplitude swell plus a little noise."""
    rng = np.random.default_rng(0)
    n = CFG.n_samples
    t = np.arange(n) / SR
    notes = np.array([220.0, 261.63, 329.63, 440.0])
    f = notes[(t * 4).astype(int) % 4]
    phase = 2 * np.pi * np.cumsum(f) / SR
    env = 0.3 + 0.2 * np.sin(2 * np.pi * 0.2 * t)
    return (env * np.sin(phase) + 0.01 * rng.standard_normal(n)).astype(np.float32)


@pytest.fixture(scope="module")
def click_clip() -> np.ndarray:
    """10.24 s of clicks at 120 bpm (every 0.5 s from 0.25 s) over a quiet tone."""
    return _clicks(CFG.clip_s, 0.5) + _tone(330.0, CFG.clip_s, amp=0.05)


# ----------------------------------------------------------------------------- config / frames


def test_clip_geometry_and_exact_frame_count(music_clip):
    assert CFG.n_samples == 163840 and CFG.n_frames == 1024 and CFG.n_video_frames == 103
    assert music_clip.shape == (163840,)
    mag = F.magnitude_spectrogram(music_clip)
    assert mag.shape == (513, 1025)  # librosa's centred frames: one more than we keep
    assert F.log_mel(music_clip, mag=mag).shape == (128, 1024)
    assert F.chroma(music_clip, mag=mag).shape == (12, 1024)
    assert F.dynamics_db(music_clip, mag=mag).shape == (1024,)
    assert F.onset_envelope(music_clip, mag=mag).shape == (1024,)
    # A length that is not a multiple of the hop still gives len // hop frames.
    assert F.log_mel(music_clip[:16079]).shape == (128, 100)


def test_config_rejects_bad_values():
    with pytest.raises(ValueError):
        replace(CFG, savgol_window=100)  # even window
    with pytest.raises(ValueError):
        replace(CFG, control_source="sfx")
    with pytest.raises(ValueError):
        replace(CFG, fmax=9000.0)
    with pytest.raises(ValueError):
        replace(CFG, mel_power=1.5)
    with pytest.raises(ValueError):
        F.log_mel(np.zeros((2, 100), np.float32))


# ----------------------------------------------------------------------------- audio vs librosa


@pytest.mark.parametrize("power", [1.0, 2.0])
def test_log_mel_equals_librosa(music_clip, power):
    cfg = replace(CFG, mel_power=power)
    ours = F.log_mel(music_clip, cfg)
    ref = librosa.feature.melspectrogram(
        y=music_clip, sr=SR, n_fft=1024, hop_length=160, win_length=1024, n_mels=128,
        fmin=0.0, fmax=8000.0, power=power,
    )[:, :1024]
    ref = np.log(np.maximum(ref, 1e-5))
    assert ours.dtype == np.float32 and ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, atol=2e-4, rtol=1e-5)
    assert ours.min() >= np.log(1e-5) - 1e-6


def test_chroma_equals_librosa_and_pure_tone_melody(music_clip):
    ours = F.chroma(music_clip)
    ref = librosa.feature.chroma_stft(
        y=music_clip, sr=SR, n_fft=1024, hop_length=160, win_length=1024, tuning=0.0
    )[:, :1024]
    np.testing.assert_allclose(ours, ref, atol=1e-5)
    # With per-clip tuning estimation (librosa's default) it is librosa's default chroma.
    ref_est = librosa.feature.chroma_stft(y=music_clip, sr=SR, n_fft=1024, hop_length=160)[:, :1024]
    np.testing.assert_allclose(F.chroma(music_clip, replace(CFG, chroma_tuning=None)), ref_est, atol=1e-5)

    # A pure tone's dominant pitch class is its own: A4 (440 Hz) -> 9, C4 (261.63 Hz) -> 0,
    # F#3 (185 Hz) -> 6, in every frame.
    for freq, pitch_class in ((440.0, 9), (261.63, 0), (185.0, 6)):
        mel_line = F.melody(F.chroma(_tone(freq, 1.0)))
        assert mel_line.dtype == np.int64 and mel_line.shape == (100,)
        assert np.all(mel_line == pitch_class), (freq, np.bincount(mel_line))


def test_dynamics_equals_numpy_rms_and_savgol(music_clip):
    ours = F.dynamics_db(music_clip)
    # Direct: centred frames of the zero-padded signal, Hann-weighted mean square, dB, smoothing.
    half = CFG.n_fft // 2
    padded = np.pad(music_clip.astype(np.float64), half)
    frames = np.lib.stride_tricks.sliding_window_view(padded, CFG.n_fft)[:: CFG.hop][:1024]
    w = scipy.signal.get_window("hann", CFG.n_fft, fftbins=True)
    mean_square = (frames**2 * w**2).sum(axis=1) / (w**2).sum()
    raw = 10 * np.log10(np.maximum(mean_square, CFG.dyn_amin))
    ref = scipy.signal.savgol_filter(raw, CFG.savgol_window, CFG.savgol_order, mode="interp")
    np.testing.assert_allclose(F.frame_energy_db(music_clip), raw, atol=1e-3)
    np.testing.assert_allclose(ours, ref, atol=1e-3)

    # Level calibration: a full-scale sine is -3.01 dBFS; silence sits at the -80 dB floor.
    assert abs(np.median(F.frame_energy_db(_tone(1000.0, 1.0, amp=1.0))) + 3.0103) < 0.01
    np.testing.assert_allclose(F.dynamics_db(np.zeros(16000, np.float32)), -80.0, atol=1e-4)


def test_onset_envelope_equals_librosa(click_clip):
    ours = F.onset_envelope(click_clip)
    ref = librosa.onset.onset_strength(
        y=click_clip, sr=SR, n_fft=1024, hop_length=160, win_length=1024, n_mels=128, fmin=0.0, fmax=8000.0
    )[:1024]
    assert ours.dtype == np.float32 and ours.shape == (1024,)
    np.testing.assert_allclose(ours, ref, atol=1e-3, rtol=1e-4)
    # Peaks sit on the clicks (0.25 s + k * 0.5 s -> frame 25 + 50 k), within 2 frames (20 ms).
    peaks = np.flatnonzero(ours > 0.5 * ours.max())
    assert np.all(np.min(np.abs(peaks[:, None] - (25 + 50 * np.arange(20))[None]), axis=1) <= 2)


def test_beat_times_equal_librosa_and_find_the_metronome(click_clip):
    env = F.onset_envelope(click_clip)
    ours = F.beat_times(env)
    _, ref = librosa.beat.beat_track(onset_envelope=env, sr=SR, hop_length=160, units="time")
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, atol=1e-6)
    np.testing.assert_allclose(F.beat_times(wav=click_clip), ours)
    # 120 bpm clicks: every beat within 30 ms of a click, and most clicks found.
    clicks = 0.25 + 0.5 * np.arange(20)
    assert np.all(np.min(np.abs(ours[:, None] - clicks[None]), axis=1) < 0.03)
    assert len(ours) >= 15
    assert F.beat_times(np.zeros(1024, np.float32)).shape == (0,)


# ----------------------------------------------------------------------------- video


def _square_video(positions: list[int], size: int = 32) -> np.ndarray:
    """Grey background, one white 6x6 square whose left edge is at ``positions[i]`` in frame i."""
    frames = np.full((len(positions), size, size, 3), 60, dtype=np.uint8)
    for i, x in enumerate(positions):
        frames[i, 10:16, x : x + 6] = 255
    return frames


def test_motion_energy_static_zero_and_peak_at_jump():
    static = np.repeat(_square_video([5]), 20, axis=0)
    m = F.motion_energy(static)
    assert m.dtype == np.float32 and m.shape == (20,) and np.all(m == 0)

    # Moves 1 px per frame, then jumps by 12 px into frame 10.
    pos = [2 + i for i in range(10)] + [23 + i for i in range(6)]
    m = F.motion_energy(_square_video(pos))
    assert m[0] == 0 and int(np.argmax(m)) == 10
    # Direct check of one entry: mean |luma difference| / 255.
    v = _square_video(pos).astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    assert abs(m[10] - np.abs(v[10] - v[9]).mean() / 255) < 1e-6


def test_shot_boundaries_cut_static_flash_and_motion():
    rng = np.random.default_rng(0)
    a = np.zeros((8, 24, 24, 3), np.uint8)
    a[..., 0] = rng.integers(150, 200, (8, 24, 24))  # reddish shot
    b = np.zeros((6, 24, 24, 3), np.uint8)
    b[..., 2] = rng.integers(100, 140, (6, 24, 24))  # bluish shot
    assert F.shot_boundaries(np.concatenate([a, b])).tolist() == [8]
    assert F.shot_boundaries(np.repeat(a[:1], 12, axis=0)).tolist() == []
    assert F.shot_boundaries(_square_video([2 + 2 * i for i in range(12)])).tolist() == []
    flash = np.repeat(a[:1], 12, axis=0)
    flash[4] = 250  # a white frame ...
    flash[5] = np.clip(a[0].astype(int) + 60, 0, 255)  # ... fading back over 2 frames:
    flash[6] = np.clip(a[0].astype(int) + 30, 0, 255)  # not a new shot
    assert F.shot_boundaries(flash).tolist() == []
    no_persist = replace(CFG, shot_persist_s=0.0)
    assert F.shot_boundaries(flash, cfg=no_persist).tolist() == [4, 5, 6, 7]
    # Histograms: direct per-frame count of the 8-level joint RGB cells.
    h = F._colour_histograms(a, 8)
    q = a[0].astype(int) // 32
    direct = np.bincount(((q[..., 0] * 8 + q[..., 1]) * 8 + q[..., 2]).ravel(), minlength=512) / (24 * 24)
    np.testing.assert_allclose(h[0], direct)
    np.testing.assert_allclose(F._colour_histograms(a, 50).sum(axis=1), 1.0)
    # A cut on the very last frame has nothing to persist into and still counts.
    assert F.shot_boundaries(np.concatenate([a, b[:1]])).tolist() == [8]


# ----------------------------------------------------------------------------- stems / clip


def test_median_filter_equals_scipy():
    x = np.random.default_rng(1).random((40, 70)).astype(np.float32)
    for k in (1, 4, 31):
        np.testing.assert_array_equal(
            F.median_filter_axis(x, k, axis=1), scipy.ndimage.median_filter(x, size=(1, k), mode="reflect")
        )
        np.testing.assert_array_equal(
            F.median_filter_axis(x, k, axis=0), scipy.ndimage.median_filter(x, size=(k, 1), mode="reflect")
        )


def test_separate_stems_lengths_sum_and_split():
    tone = _tone(440.0, 3.0, amp=0.3)
    clicks = _clicks(3.0, 0.5)
    mix = tone + clicks
    music, sfx = F.separate_stems(mix)
    assert music.shape == sfx.shape == mix.shape and music.dtype == sfx.dtype == np.float32
    np.testing.assert_allclose(music + sfx, mix, atol=1e-6)
    # The steady tone goes mostly to music, the clicks mostly to sfx.
    assert np.dot(music, tone) / np.dot(tone, tone) > 0.8
    assert np.dot(sfx, clicks) / np.dot(clicks, clicks) > 0.6
    # Same harmonic part as librosa's own HPSS on the same STFT.
    spec = librosa.stft(mix, n_fft=1024, hop_length=256)
    harm, _ = librosa.decompose.hpss(spec, kernel_size=31)
    np.testing.assert_allclose(music, librosa.istft(harm, hop_length=256, length=len(mix)), atol=1e-5)


def test_featurize_clip_given_stems(music_clip, click_clip):
    frames = np.random.default_rng(2).integers(0, 256, (103, 32, 32, 3), dtype=np.uint8)
    mix = music_clip + click_clip
    out = F.featurize_clip(frames, mix, music_clip, click_clip)
    assert out["stems_source"] == "given"
    for k in ("mel_mix", "mel_music", "mel_sfx"):
        assert out[k].shape == (128, 1024) and out[k].dtype == np.float32
    np.testing.assert_array_equal(out["mel_sfx"], F.log_mel(click_clip))
    # Musical controls come from the music stem by default ...
    np.testing.assert_array_equal(out["chroma"], F.chroma(music_clip))
    np.testing.assert_array_equal(out["melody"], F.melody(F.chroma(music_clip)))
    np.testing.assert_array_equal(out["dynamics_db"], F.dynamics_db(music_clip))
    np.testing.assert_array_equal(out["onset_env"], F.onset_envelope(music_clip))
    np.testing.assert_array_equal(out["beat_times"], F.beat_times(out["onset_env"]))
    assert out["motion"].shape == (103,) and out["shots"].dtype == np.int64
    # ... or from the mix when configured.
    mix_cfg = replace(CFG, control_source="mix")
    out_mix = F.featurize_clip(frames, mix, music_clip, click_clip, mix_cfg)
    np.testing.assert_array_equal(out_mix["onset_env"], F.onset_envelope(mix))
    np.testing.assert_array_equal(out_mix["mel_music"], out["mel_music"])


def test_featurize_clip_fallbacks_and_errors(music_clip, click_clip):
    frames = np.zeros((103, 16, 16, 3), np.uint8)
    mix = music_clip + click_clip
    out = F.featurize_clip(frames, mix)
    assert out["stems_source"] == "hpss"
    np.testing.assert_allclose(out["wav_music"] + out["wav_sfx"], mix, atol=1e-6)
    np.testing.assert_array_equal(out["mel_music"], F.log_mel(out["wav_music"]))
    np.testing.assert_array_equal(out["chroma"], F.chroma(out["wav_music"]))
    np.testing.assert_array_equal(out["onset_env"], F.onset_envelope(mix))  # drums stay in the mix
    out_h = F.featurize_clip(frames, mix, cfg=replace(CFG, hpss_rhythm_from_mix=False))
    np.testing.assert_array_equal(out_h["onset_env"], F.onset_envelope(out_h["wav_music"]))
    assert np.all(out["motion"] == 0) and out["shots"].size == 0

    out = F.featurize_clip(frames, mix, music=music_clip)
    assert out["stems_source"] == "residual"
    np.testing.assert_allclose(out["wav_sfx"], click_clip, atol=1e-6)
    with pytest.raises(ValueError):
        F.featurize_clip(frames, mix, music_clip[:-1], click_clip)
