"""Decoding and encoding of video and audio files, shared by every stage.

Frames are read with decord (sampled by timestamp, so variable frame rate works);
audio is decoded with PyAV (decord's ``AudioReader`` misreports durations and a fresh
machine has no ``ffmpeg`` binary for librosa's fallback, see MACHINE-NOTES), then
down-mixed to mono and resampled to the platform rate (16 kHz).

Errors are :class:`MediaError` with a short machine-readable ``reason`` (used by the
ingest quarantine table and by the serving layer's 4xx answers) and a message that
says what is wrong and what to do.
"""

from __future__ import annotations

import fractions
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import av
import decord
import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from soundtrack.errors import MediaError

#: Platform audio rate (Hz) and video rate (frames/s) used everywhere downstream.
SAMPLE_RATE = 16000
FPS = 10.0

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".mov", ".m4v", ".avi")


@dataclass(frozen=True)
class MediaInfo:
    """What :func:`probe` learned about a container."""

    path: str
    container: str
    has_video: bool
    has_audio: bool
    width: int
    height: int
    fps: float  # average frame rate (frames/s)
    n_frames: int  # frames counted in the container index (0 when unknown)
    duration_s: float  # container duration (s); stream durations when the container has none
    audio_sr: int
    audio_channels: int
    vfr: bool  # True when frame intervals vary by more than 10 %

    def to_dict(self) -> dict:
        return asdict(self)


def _open(path: str | os.PathLike):
    p = Path(path)
    if not p.exists():
        raise MediaError("missing", f"{p} does not exist; check the path.")
    if p.stat().st_size == 0:
        raise MediaError("empty", f"{p} is an empty file (0 bytes); re-export or remove it.")
    try:
        return av.open(str(p))
    except Exception as exc:  # PyAV raises several InvalidDataError subclasses
        raise MediaError(
            "not_video",
            f"{p} is not a readable media container ({type(exc).__name__}: {exc}); "
            "convert it to mp4/mkv/webm/mov or remove it.",
        ) from exc


def probe(path: str | os.PathLike, check_vfr: bool = True) -> MediaInfo:
    """Read a container's streams and metadata without decoding the whole file.

    Args:
        path: the media file.
        check_vfr: demux up to 60 video packets to detect variable frame rate.

    Returns:
        A :class:`MediaInfo`.

    Raises:
        MediaError: the file is missing, empty or not a media container.
    """
    with _open(path) as c:
        v = c.streams.video[0] if c.streams.video else None
        a = c.streams.audio[0] if c.streams.audio else None
        dur = float(c.duration) / 1e6 if c.duration else 0.0
        if dur <= 0:
            for s in (v, a):
                if s is not None and s.duration and s.time_base:
                    dur = max(dur, float(s.duration * s.time_base))
        fps = 0.0
        vfr = False
        if v is not None:
            rate = v.average_rate or v.guessed_rate or v.base_rate
            fps = float(rate) if rate else 0.0
            if check_vfr and v.time_base:
                pts = []
                for pkt in c.demux(v):
                    if pkt.pts is not None:
                        pts.append(pkt.pts)
                    if len(pts) >= 60:
                        break
                if len(pts) > 3:
                    d = np.diff(np.sort(np.asarray(pts, dtype=np.float64))) * float(v.time_base)
                    d = d[d > 0]
                    if d.size > 2 and np.median(d) > 0:
                        vfr = bool((d.max() - d.min()) > 0.1 * np.median(d))
        return MediaInfo(
            path=str(path),
            container=c.format.name,
            has_video=v is not None,
            has_audio=a is not None,
            width=int(v.codec_context.width) if v is not None else 0,
            height=int(v.codec_context.height) if v is not None else 0,
            fps=fps,
            n_frames=int(v.frames) if v is not None and v.frames else 0,
            duration_s=dur,
            audio_sr=int(a.codec_context.sample_rate or 0) if a is not None else 0,
            audio_channels=int(a.codec_context.channels or 0) if a is not None else 0,
            vfr=vfr,
        )


def read_frames(
    path: str | os.PathLike,
    fps: float = FPS,
    start_s: float = 0.0,
    duration_s: float | None = None,
    size: tuple[int, int] | None = None,
) -> np.ndarray:
    """Decode frames sampled at a fixed rate with decord.

    Frame ``i`` is the source frame on screen at time ``start_s + i / fps`` (the last
    frame whose timestamp is <= that time), so variable-frame-rate sources are sampled
    correctly. Times past the end repeat the last frame (the caller pads audio the same way).

    Args:
        path: the video file.
        fps: output frame rate (frames/s).
        start_s: clip start (s).
        duration_s: clip length (s); ``None`` reads to the end.
        size: ``(height, width)`` to resize to, or ``None`` for the source size.

    Returns:
        uint8 array ``(T, H, W, 3)`` with ``T = ceil(duration_s * fps)`` (rounded to 1e-6).

    Raises:
        MediaError: no video stream or no decodable frame.
    """
    p = str(path)
    if not Path(p).exists():
        raise MediaError("missing", f"{p} does not exist; check the path.")
    if Path(p).stat().st_size == 0:
        raise MediaError("empty", f"{p} is an empty file (0 bytes); re-export or remove it.")
    kw = {}
    if size is not None:
        kw = {"height": int(size[0]), "width": int(size[1])}
    try:
        vr = decord.VideoReader(p, ctx=decord.cpu(0), num_threads=1, **kw)
    except Exception as exc:
        raise MediaError(
            "no_video_stream",
            f"{p}: no decodable video stream ({exc}); the file must contain video frames.",
        ) from exc
    n = len(vr)
    if n == 0:
        raise MediaError("no_video_stream", f"{p} has no video frames; supply a video with frames.")
    # Frame timestamps (start times, s); decord gives (start, end) per frame.
    ts = np.asarray(vr.get_frame_timestamp(np.arange(n)))[:, 0]
    total = float(ts[-1] + (ts[-1] - ts[-2] if n > 1 else 1.0 / fps))
    if duration_s is None:
        duration_s = max(total - start_s, 0.0)
    t_out = int(np.ceil(round(duration_s * fps, 3)))  # decord timestamps are float32: ~1e-6 s error
    if t_out <= 0:
        raise MediaError("too_short", f"{p}: requested {duration_s:.3f} s gives no frame at {fps} fps.")
    times = start_s + np.arange(t_out) / fps
    idx = np.searchsorted(ts, times + 1e-6, side="right") - 1
    idx = np.clip(idx, 0, n - 1)
    try:
        frames = vr.get_batch(idx.tolist()).asnumpy()
    except Exception as exc:
        raise MediaError("truncated", f"{p}: frames could not be decoded ({exc}); the file may be cut short.") from exc
    return np.ascontiguousarray(frames, dtype=np.uint8)


def _resample(x: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    if sr_in == sr_out or x.size == 0:
        return x.astype(np.float32, copy=False)

    g = np.gcd(int(sr_in), int(sr_out))
    # Polyphase resampling: exact length ratio, anti-aliased, fast enough for 10 s clips.
    return resample_poly(x, sr_out // g, sr_in // g).astype(np.float32)


def read_audio(
    path: str | os.PathLike,
    sr: int = SAMPLE_RATE,
    start_s: float = 0.0,
    duration_s: float | None = None,
) -> np.ndarray:
    """Decode a container's first audio stream to mono float32 at ``sr``.

    Multichannel audio is averaged to mono; any sample rate is resampled. WAV/FLAC and
    video containers both work. The result may be shorter than ``duration_s`` when the
    file ends first; callers pad.

    Args:
        path: media file.
        sr: output sample rate (Hz).
        start_s: start (s).
        duration_s: length (s), ``None`` for all.

    Returns:
        float32 array ``(N,)`` in [-1, 1].

    Raises:
        MediaError: the file has no audio stream (``no_audio``) or cannot be decoded.
    """
    with _open(path) as c:
        if not c.streams.audio:
            raise MediaError("no_audio", f"{path} has no audio track; supply audio or stems.")
        st = c.streams.audio[0]
        chunks = []
        in_sr = int(st.codec_context.sample_rate or 0)
        try:
            if start_s > 1.0 and st.time_base:
                # Seek a little before the start (keyframe granularity), then cut exactly.
                c.seek(int(max(start_s - 1.0, 0) / float(st.time_base)), stream=st, backward=True, any_frame=False)
            first_t = None
            end_s = None if duration_s is None else start_s + duration_s
            for frame in c.decode(st):
                arr = frame.to_ndarray()
                in_sr = frame.sample_rate
                if arr.ndim == 1:
                    arr = arr[None]
                if frame.format.is_planar:
                    x = arr.astype(np.float32)
                else:  # packed: (1, n * ch) interleaved
                    ch = len(frame.layout.channels)
                    x = arr.reshape(-1, ch).T.astype(np.float32)
                if np.issubdtype(arr.dtype, np.integer):
                    x /= float(np.iinfo(arr.dtype).max) + 1.0
                t = float(frame.pts * frame.time_base) if frame.pts is not None else None
                if first_t is None:
                    first_t = t if t is not None else 0.0
                chunks.append(x.mean(axis=0))
                if end_s is not None and t is not None and t > end_s + 0.5:
                    break
        except Exception as exc:
            if not chunks:
                raise MediaError("truncated", f"{path}: audio could not be decoded ({exc}).") from exc
        if not chunks:
            return np.zeros(0, np.float32)
        y = np.concatenate(chunks)
        t0 = first_t or 0.0
        off = int(round((start_s - t0) * in_sr))
        if off > 0:
            y = y[off:]
        elif off < 0:  # stream starts after start_s (encoder delay): pad the gap with silence
            y = np.concatenate([np.zeros(-off, np.float32), y])
        if duration_s is not None:
            y = y[: int(round(duration_s * in_sr))]
    return np.clip(_resample(y, in_sr, sr), -1.0, 1.0)


def load_wav(path: str | os.PathLike, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Read a WAV/FLAC file as mono float32 at ``sr`` (soundfile, downmix, resample).

    Args:
        path: audio file.
        sr: output sample rate (Hz).
    """
    try:
        x, in_sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as exc:
        raise MediaError("unreadable", f"{path}: not a readable audio file ({exc}).") from exc
    return _resample(x.mean(axis=1), int(in_sr), sr)


def write_wav(path: str | os.PathLike, audio: np.ndarray, sr: int = SAMPLE_RATE) -> None:
    """Write mono float audio as 16-bit PCM WAV, atomically (temp file then rename)."""
    p = Path(path)
    tmp = p.with_name(p.name + ".tmp.wav")
    sf.write(str(tmp), np.clip(np.asarray(audio, np.float32), -1, 1), int(sr), subtype="PCM_16")
    os.replace(tmp, p)


def write_mp4(
    path: str | os.PathLike,
    frames: np.ndarray,
    fps: float = FPS,
    audio: np.ndarray | None = None,
    sr: int = SAMPLE_RATE,
    crf: int = 23,
) -> None:
    """Write H.264 (yuv420p) video with an optional AAC mono track, atomically.

    Args:
        path: output ``.mp4``.
        frames: uint8 ``(T, H, W, 3)``; H and W must be even (yuv420p).
        fps: frame rate (frames/s).
        audio: float32 mono ``(N,)`` in [-1, 1], or ``None`` for a silent video with no track.
        sr: audio sample rate (Hz).
        crf: x264 constant rate factor (lower = better quality).
    """
    frames = np.asarray(frames, dtype=np.uint8)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be (T, H, W, 3) uint8, got {frames.shape}")
    p = Path(path)
    tmp = p.with_name(p.name + ".tmp" + p.suffix)
    rate = fractions.Fraction(fps).limit_denominator(1000)
    with av.open(str(tmp), mode="w") as c:
        vs = c.add_stream("libx264", rate=rate)
        vs.width, vs.height = int(frames.shape[2]), int(frames.shape[1])
        vs.pix_fmt = "yuv420p"
        vs.options = {"crf": str(crf), "preset": "veryfast"}
        vs.codec_context.thread_count = 1
        ast = None
        if audio is not None:
            ast = c.add_stream("aac", rate=int(sr))
            ast.layout = "mono"
        for i, img in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(img, format="rgb24")
            vf.pts = i
            for pkt in vs.encode(vf):
                c.mux(pkt)
        for pkt in vs.encode():
            c.mux(pkt)
        if ast is not None:
            a = np.clip(np.asarray(audio, np.float32), -1, 1)
            # AAC encoder wants planar float frames of 1024 samples.
            step = 1024
            for k in range(0, len(a), step):
                chunk = a[k : k + step][None, :]
                af = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk), format="fltp", layout="mono")
                af.sample_rate = int(sr)
                af.pts = k
                for pkt in ast.encode(af):
                    c.mux(pkt)
            for pkt in ast.encode():
                c.mux(pkt)
    os.replace(tmp, p)


def mux_audio(video_in: str | os.PathLike, audio: np.ndarray, sr: int, out_path: str | os.PathLike) -> None:
    """Replace (or add) a video's soundtrack: re-encode its frames as H.264 with ``audio`` as AAC.

    The output keeps the source frame rate; the audio is trimmed or zero-padded to the video.

    Args:
        video_in: the source video.
        audio: mono float32 soundtrack.
        sr: its sample rate (Hz).
        out_path: output ``.mp4``.
    """
    info = probe(video_in, check_vfr=False)
    fps = info.fps if info.fps > 0 else FPS
    frames = read_frames(video_in, fps=fps)
    if frames.shape[1] % 2 or frames.shape[2] % 2:  # yuv420p needs even sizes
        frames = frames[:, : frames.shape[1] // 2 * 2, : frames.shape[2] // 2 * 2]
    n = int(round(len(frames) / fps * sr))
    a = np.zeros(n, np.float32)
    a[: min(n, len(audio))] = audio[:n]
    write_mp4(out_path, frames, fps=fps, audio=a, sr=sr)
