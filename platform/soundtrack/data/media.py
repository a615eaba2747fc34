"""Decoding and encoding of video and audio files, shared by every stage.

Frames are read with decord (sampled by timestamp, so variable frame rate works), or
with PyAV when decord fails (damaged data) or the video carries a display rotation;
audio is decoded with PyAV (decord's ``AudioReader`` misreports durations and a fresh
machine has no ``ffmpeg`` binary for librosa's fallback, see MACHINE-NOTES), then
down-mixed to mono and resampled to the platform rate (16 kHz).

Decoding tolerates damage the way players do: a packet that fails to decode is skipped
and counted, and its time is filled with silence (audio) or the previous frame (video),
so audio and video stay in sync. :func:`decode_frames` and :func:`decode_audio` return a
:class:`DecodeReport` (bad packets, seconds lost) with the arrays; :func:`read_frames` and
:func:`read_audio` return the arrays alone.

Errors are :class:`MediaError` with a short machine-readable ``reason`` (used by the
ingest quarantine table and by the serving layer's 4xx answers) and a message that
says what is wrong and what to do.
"""

from __future__ import annotations

import fractions
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import av
import decord
import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from soundtrack.errors import MediaError

log = logging.getLogger(__name__)

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
    rotation: int = 0  # display rotation (degrees counter-clockwise); width/height are the displayed size

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

    The first video frame is decoded to read the display rotation (a phone's portrait
    video is stored landscape with a 90-degree matrix): ``width`` and ``height`` are the
    size the frames are shown at, which is what :func:`decode_frames` returns.

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
        rotation, width, height = 0, 0, 0
        if v is not None:
            width, height = int(v.codec_context.width), int(v.codec_context.height)
            v.codec_context.thread_count = 1  # cores are shared; one frame is decoded
            try:
                c.seek(0)
                rotation = _display_rotation(c, v)
            except av.error.FFmpegError:  # a file that cannot seek or decode: no rotation known
                rotation = 0
            if rotation in (90, 270):
                width, height = height, width
        return MediaInfo(
            path=str(path),
            container=c.format.name,
            has_video=v is not None,
            has_audio=a is not None,
            width=width,
            height=height,
            fps=fps,
            n_frames=int(v.frames) if v is not None and v.frames else 0,
            duration_s=dur,
            audio_sr=int(a.codec_context.sample_rate or 0) if a is not None else 0,
            audio_channels=int(a.codec_context.channels or 0) if a is not None else 0,
            vfr=vfr,
            rotation=rotation,
        )


# Tolerance (s) when matching an output time to a frame timestamp: decord's timestamps are
# float32 and i / fps is a float, so "pts <= t" allows this much rounding.
_TS_EPS_S = 1e-6
# Audio frames whose timestamp is off the running sample count by less than this (s) are
# joined end to end: container timestamps jitter (mkv/webm store whole ms), a lost packet
# leaves a gap of a whole codec frame (>= 2.5 ms Opus, usually 20-64 ms), so half a frame,
# at most 10 ms, separates jitter from loss.
_AUDIO_JITTER_S = 0.01
# Packets decoded at most (with failures skipped) to find a first frame, e.g. for the
# rotation: 256 packets are 10 s of 25 fps video, a damaged first GOP or two.
_FIRST_FRAME_PACKETS = 256


@dataclass(frozen=True)
class DecodeReport:
    """What a damage-tolerant decode skipped, as a player would.

    Undecodable packets are skipped; the time they covered is filled with silence (audio)
    or the previous frame (video), so timing downstream is unchanged.

    Args:
        bad_packets: packets of the decoded window that failed to decode (or to be read).
        lost_s: seconds of the window covered by them (length of the union of ``spans``).
        spans: the lost intervals ``(start s, end s)`` in source time, sorted, disjoint.
    """

    bad_packets: int = 0
    lost_s: float = 0.0
    spans: tuple[tuple[float, float], ...] = ()

    @classmethod
    def of(cls, bad_packets: int, spans) -> DecodeReport:
        """A report from a packet count and lost intervals (merged; empty ones dropped).

        Args:
            bad_packets: failed packets.
            spans: iterable of ``(start s, end s)``, may overlap.
        """
        merged: list[list[float]] = []
        for a, b in sorted((float(a), float(b)) for a, b in spans if b > a):
            if merged and a <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], b)
            else:
                merged.append([a, b])
        out = tuple((a, b) for a, b in merged)
        return cls(int(bad_packets), round(sum(b - a for a, b in out), 6), out)

    def merge(self, other: DecodeReport) -> DecodeReport:
        """Both reports together: packets added, lost time as the union (a second lost in
        the audio and the video counts once).

        Args:
            other: another stream's report for the same window.
        """
        return DecodeReport.of(self.bad_packets + other.bad_packets, self.spans + other.spans)


def _check_file(path: str | os.PathLike) -> str:
    p = str(path)
    if not Path(p).exists():
        raise MediaError("missing", f"{p} does not exist; check the path.")
    if Path(p).stat().st_size == 0:
        raise MediaError("empty", f"{p} is an empty file (0 bytes); re-export or remove it.")
    return p


def _packet_time(pkt) -> tuple[float | None, float]:
    """A packet's presentation time (s; decode time when it has none) and duration (s, 0 unknown)."""
    ts = pkt.pts if pkt.pts is not None else pkt.dts
    if ts is None or not pkt.time_base:
        return None, 0.0
    return float(ts * pkt.time_base), float((pkt.duration or 0) * pkt.time_base)


def _first_frame(container, stream, max_packets: int = _FIRST_FRAME_PACKETS):
    """The first frame of ``stream`` that decodes (failing packets skipped), or ``None``.

    Args:
        container: an open input container, read from its current position.
        stream: the stream to decode.
        max_packets: give up after this many packets.
    """
    try:
        for k, pkt in enumerate(container.demux(stream)):
            try:
                frames = pkt.decode()
            except av.error.FFmpegError:  # damaged packet: try the next one
                frames = []
            if frames:
                return frames[0]
            if k >= max_packets:
                break
    except av.error.FFmpegError:  # read error: the file ends in damage
        pass
    return None


def _display_rotation(container, stream) -> int:
    """Display rotation (degrees counter-clockwise, a multiple of 90 in [0, 360)) of a video stream.

    FFmpeg exposes the container's display matrix (mp4/mov ``tkhd`` matrix, mkv projection)
    as side data of every decoded frame, which PyAV reads as ``VideoFrame.rotation``; there
    is no stream-level reader, so the first decodable frame is decoded (a few ms).

    Args:
        container: an open input container (left positioned after that frame).
        stream: its video stream.
    """
    frame = _first_frame(container, stream)
    rot = int(frame.rotation) if frame is not None else 0
    return int(round(rot / 90.0)) % 4 * 90


def _rotate(img: np.ndarray, rotation: int) -> np.ndarray:
    # ``rotation`` is counter-clockwise (FFmpeg's av_display_rotation_get), like np.rot90's k.
    return np.ascontiguousarray(np.rot90(img, k=rotation // 90)) if rotation else img


def _n_out(duration_s: float, fps: float) -> int:
    """Frames of ``duration_s`` at ``fps``: a partial last frame counts, float noise does not.

    decord's timestamps are float32 (about 7 significant digits), so the end of a long video
    is off by up to ~1e-7 of its length: a 600 s file at 10 fps ends at 600.00006 s, 6000.0006
    frames, which a fixed 1e-3-frame tolerance turned into 6001 frames (and 0.1 s of audio
    too many). The tolerance grows with the count: 1e-3 frame, or 2e-6 of the count.
    """
    x = float(duration_s) * float(fps)
    return int(np.ceil(x - max(1e-3, 2e-6 * abs(x))))


def _decord_frames(p: str, fps: float, start_s: float, duration_s: float | None,
                   size: tuple[int, int] | None) -> np.ndarray:
    """decord's decode of :func:`decode_frames` (fast path: an intact, unrotated file).

    Raises:
        MediaError: ``too_short`` (the window gives no frame).
        Exception: decord cannot open or decode the file (``DECORDError``, ``RuntimeError``;
            the caller falls back to PyAV).
    """
    kw = {}
    if size is not None:
        kw = {"height": int(size[0]), "width": int(size[1])}
    vr = decord.VideoReader(p, ctx=decord.cpu(0), num_threads=1, **kw)
    n = len(vr)
    if n == 0:
        raise decord.DECORDError(f"{p}: decord found no video frames")
    # Frame timestamps (start times, s); decord gives (start, end) per frame.
    ts = np.asarray(vr.get_frame_timestamp(np.arange(n)))[:, 0]
    total = float(ts[-1] + (ts[-1] - ts[-2] if n > 1 else 1.0 / fps))
    if duration_s is None:
        duration_s = max(total - start_s, 0.0)
    t_out = _n_out(duration_s, fps)
    if t_out <= 0:
        raise MediaError("too_short", f"{p}: requested {duration_s:.3f} s gives no frame at {fps} fps.")
    times = start_s + np.arange(t_out) / fps
    idx = np.searchsorted(ts, times + _TS_EPS_S, side="right") - 1
    idx = np.clip(idx, 0, n - 1)
    frames = vr.get_batch(idx.tolist()).asnumpy()
    if frames.ndim != 4 or frames.shape[-1] != 3:  # e.g. decord's broken rotation path (4 channels)
        raise decord.DECORDError(f"{p}: decord returned frames of shape {frames.shape}")
    return np.ascontiguousarray(frames, dtype=np.uint8)


def _pyav_frames(p: str, fps: float, start_s: float, duration_s: float | None,
                 size: tuple[int, int] | None) -> tuple[np.ndarray, DecodeReport]:
    """PyAV's decode of :func:`decode_frames`: damaged packets skipped, rotation applied
    (:func:`_pyav_frame_stream`'s frames, stacked)."""
    t_out = None if duration_s is None else _n_out(duration_s, fps)
    if t_out is not None and t_out <= 0:
        raise MediaError("too_short", f"{p}: requested {duration_s:.3f} s gives no frame at {fps} fps.")
    end_s = None if duration_s is None else start_s + duration_s
    stats: dict = {}
    frames = list(_pyav_frame_stream(p, fps, start_s, t_out, size, end_s=end_s, stats=stats))
    return np.stack(frames).astype(np.uint8, copy=False), DecodeReport.of(stats["bad"], stats["spans"])


def decode_frames(
    path: str | os.PathLike,
    fps: float = FPS,
    start_s: float = 0.0,
    duration_s: float | None = None,
    size: tuple[int, int] | None = None,
) -> tuple[np.ndarray, DecodeReport]:
    """Decode frames sampled at a fixed rate, tolerating damage; report what was lost.

    Frame ``i`` is the source frame on screen at time ``start_s + i / fps`` (the last
    frame whose timestamp is <= that time), so variable-frame-rate sources are sampled
    correctly. Times past the end repeat the last frame (the caller pads audio the same way).

    An intact file without rotation is read with decord (fast). decord stops at the first
    undecodable packet and mishandles the display matrix, so a file it fails on, or one
    whose frames carry a rotation, is decoded with PyAV instead: undecodable packets are
    skipped and counted (the previous frame stays on screen for their time, which the
    report gives as lost), and the rotation is applied (a phone's portrait video comes out
    upright, ``size`` being the displayed ``(height, width)``).

    Args:
        path: the video file.
        fps: output frame rate (frames/s).
        start_s: clip start (s).
        duration_s: clip length (s); ``None`` reads to the end.
        size: ``(height, width)`` to resize to, or ``None`` for the (displayed) source size.

    Returns:
        ``(frames, report)``: uint8 ``(T, H, W, 3)`` with ``T = ceil(duration_s * fps)``
        (rounded to 1e-3 frames) and a :class:`DecodeReport`.

    Raises:
        MediaError: missing or empty file, no video stream, or no decodable frame.
    """
    p = _check_file(path)
    try:
        with av.open(p) as c:
            rotation = 0
            if c.streams.video:
                c.streams.video[0].codec_context.thread_count = 1  # cores are shared; one frame is decoded
                rotation = _display_rotation(c, c.streams.video[0])
    except av.error.FFmpegError:
        rotation = 0  # let decord (then PyAV) say what is wrong
    if rotation == 0:
        try:
            return _decord_frames(p, fps, start_s, duration_s, size), DecodeReport()
        except MediaError:
            raise
        except Exception as exc:  # decord raises DECORDError or a bare RuntimeError: any failure falls back
            log.info("%s: decord failed (%s); decoding with PyAV, skipping damaged packets", p, str(exc)[-200:])
    return _pyav_frames(p, fps, start_s, duration_s, size)


def read_frames(
    path: str | os.PathLike,
    fps: float = FPS,
    start_s: float = 0.0,
    duration_s: float | None = None,
    size: tuple[int, int] | None = None,
) -> np.ndarray:
    """The frames of :func:`decode_frames` without its report.

    Args:
        path: the video file.
        fps: output frame rate (frames/s).
        start_s: clip start (s).
        duration_s: clip length (s); ``None`` reads to the end.
        size: ``(height, width)`` to resize to, or ``None`` for the source size.

    Returns:
        uint8 array ``(T, H, W, 3)``.

    Raises:
        MediaError: no video stream or no decodable frame.
    """
    return decode_frames(path, fps=fps, start_s=start_s, duration_s=duration_s, size=size)[0]


def _resample(x: np.ndarray, sr_in: int, sr_out: int) -> np.ndarray:
    if sr_in == sr_out or x.size == 0:
        return x.astype(np.float32, copy=False)

    g = np.gcd(int(sr_in), int(sr_out))
    # Polyphase resampling: exact length ratio, anti-aliased, fast enough for 10 s clips.
    return resample_poly(x, sr_out // g, sr_in // g).astype(np.float32)


def _mono(frame) -> np.ndarray:
    """One decoded audio frame as mono float32 in [-1, 1] (channels averaged)."""
    arr = frame.to_ndarray()
    if arr.ndim == 1:
        arr = arr[None]
    if frame.format.is_planar:
        x = arr.astype(np.float32)
    else:  # packed: (1, n * ch) interleaved
        ch = len(frame.layout.channels)
        x = arr.reshape(-1, ch).T.astype(np.float32)
    if arr.dtype == np.uint8:  # unsigned 8-bit PCM is centred on 128
        x = (x - 128.0) / 128.0
    elif np.issubdtype(arr.dtype, np.integer):
        x /= float(np.iinfo(arr.dtype).max) + 1.0
    return x.mean(axis=0)


class _AudioTimeline:
    """Decoded audio frames laid out on the window's time line at the stream's rate.

    Frames are placed by their timestamps relative to ``start_s``; a gap (a packet lost to
    damage, or a hole in the source) is filled with silence and, when bad packets came
    before it, recorded as lost; overlaps are trimmed.
    """

    def __init__(self, start_s: float, end_s: float | None):
        self.start_s, self.end_s = start_s, end_s
        self.rate = 0
        self.chunks: list[np.ndarray] = []
        self.cursor = 0  # samples placed so far (window time * rate)
        self.last_n = 0  # samples of the last frame placed
        self.pending: list[tuple[float | None, float]] = []  # bad packets since the last good frame
        self.bad = 0
        self.spans: list[tuple[float, float]] = []

    def _lose(self, t0: float, t1: float) -> None:
        a = max(t0, self.start_s)
        b = t1 if self.end_s is None else min(t1, self.end_s)
        if b > a:
            self.spans.append((a, b))

    def bad_packet(self, t: float | None, d: float) -> None:
        """Count a packet that failed to decode (time ``t`` s, duration ``d`` s, 0 unknown)."""
        self.pending.append((t, d))
        if t is None or ((self.end_s is None or t < self.end_s) and t + d > self.start_s):
            self.bad += 1

    def add(self, x: np.ndarray, t: float | None, rate: int) -> None:
        """Place a decoded frame's mono samples ``x`` (``rate`` Hz) that start at ``t`` s."""
        if not self.rate:
            self.rate = int(rate)
        elif rate != self.rate:  # a mid-stream rate change: bring the frame to the first rate
            x = _resample(x, int(rate), self.rate)
        pos = self.cursor if t is None else int(round((t - self.start_s) * self.rate))
        tol = min(self.last_n // 2, int(_AUDIO_JITTER_S * self.rate)) if self.chunks else 0
        if pos > self.cursor + tol:  # a gap: silence for its time
            if self.pending:
                self._lose(self.start_s + self.cursor / self.rate, self.start_s + pos / self.rate)
            self.chunks.append(np.zeros(pos - self.cursor, np.float32))
            self.cursor = pos
        elif pos < self.cursor - tol or not self.chunks:  # overlap (or data before the window)
            x = x[max(self.cursor - pos, 0) :]
        self.pending = []
        if len(x):
            self.chunks.append(x.astype(np.float32, copy=False))
            self.cursor += len(x)
            self.last_n = len(x)

    def full(self) -> bool:
        """Whether the window is covered (decoding can stop)."""
        return self.end_s is not None and self.rate > 0 and self.cursor >= (self.end_s - self.start_s) * self.rate

    def finish(self, read_error: bool) -> tuple[np.ndarray, DecodeReport]:
        """The samples of the window (possibly shorter: the file ended) and the report."""
        rate = self.rate or 1
        t = self.start_s + self.cursor / rate
        if self.pending:  # bad packets at the end, nothing decoded after them
            self._lose(t, t + sum(d for _, d in self.pending))
        if read_error and self.end_s is not None:
            self._lose(t, self.end_s)
        y = np.concatenate(self.chunks) if self.chunks else np.zeros(0, np.float32)
        if self.end_s is not None:
            y = y[: int(round((self.end_s - self.start_s) * rate))]
        return y, DecodeReport.of(self.bad + int(read_error), self.spans)


def decode_audio(
    path: str | os.PathLike,
    sr: int = SAMPLE_RATE,
    start_s: float = 0.0,
    duration_s: float | None = None,
) -> tuple[np.ndarray, DecodeReport]:
    """Decode a container's first audio stream to mono float32 at ``sr``, tolerating damage.

    Multichannel audio is averaged to mono; any sample rate is resampled. WAV/FLAC and
    video containers both work. Packets that fail to decode are skipped and counted; the
    time they covered becomes silence (frames are placed by their timestamps), so the
    audio stays in sync with the video, and the report gives the seconds lost. The result
    may be shorter than ``duration_s`` when the file ends first; callers pad.

    Args:
        path: media file.
        sr: output sample rate (Hz).
        start_s: start (s).
        duration_s: length (s), ``None`` for all.

    Returns:
        ``(audio, report)``: float32 ``(N,)`` in [-1, 1] and a :class:`DecodeReport`.

    Raises:
        MediaError: the file has no audio stream (``no_audio``), or nothing of it can be
            read (``truncated``).
    """
    with _open(path) as c:
        if not c.streams.audio:
            raise MediaError("no_audio", f"{path} has no audio track; supply audio or stems.")
        st = c.streams.audio[0]
        end_s = None if duration_s is None else start_s + duration_s
        line = _AudioTimeline(start_s, end_s)
        if start_s > 1.0 and st.time_base:
            try:  # seek 1 s before the start (packet granularity); the time line cuts exactly
                c.seek(int((start_s - 1.0) / float(st.time_base)), stream=st, backward=True, any_frame=False)
            except av.error.FFmpegError:
                c.seek(0)  # no index (damaged file): read from the start
        read_error = None
        try:
            for pkt in c.demux(st):
                t, d = _packet_time(pkt)
                try:
                    frames = pkt.decode()  # the final empty packet flushes the decoder
                except av.error.FFmpegError:
                    if pkt.size:
                        line.bad_packet(t, d)
                    continue
                for frame in frames:
                    line.add(_mono(frame), float(frame.time) if frame.time is not None else None, frame.sample_rate)
                if line.full():
                    break
        except av.error.FFmpegError as exc:  # a read error: the data after it is lost
            read_error = exc
        if read_error is not None and not line.chunks:
            raise MediaError("truncated", f"{path}: audio could not be decoded ({read_error}).") from read_error
        y, report = line.finish(read_error is not None)
    return np.clip(_resample(y, line.rate or sr, sr), -1.0, 1.0), report


def read_audio(
    path: str | os.PathLike,
    sr: int = SAMPLE_RATE,
    start_s: float = 0.0,
    duration_s: float | None = None,
) -> np.ndarray:
    """The audio of :func:`decode_audio` without its report.

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
    return decode_audio(path, sr=sr, start_s=start_s, duration_s=duration_s)[0]


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
    frames: np.ndarray | Iterable[np.ndarray],
    fps: float = FPS,
    audio: np.ndarray | None = None,
    sr: int = SAMPLE_RATE,
    crf: int = 23,
) -> None:
    """Write H.264 (yuv420p) video with an optional AAC mono track, atomically.

    Frames are encoded one at a time, so ``frames`` may be a generator (a long video is
    then never held whole).

    Args:
        path: output ``.mp4``.
        frames: uint8 ``(T, H, W, 3)``, or an iterable of ``(H, W, 3)`` frames of one size;
            H and W must be even (yuv420p).
        fps: frame rate (frames/s).
        audio: float32 mono ``(N,)`` in [-1, 1], or ``None`` for a silent video with no track.
        sr: audio sample rate (Hz).
        crf: x264 constant rate factor (lower = better quality).
    """
    if isinstance(frames, np.ndarray):
        frames = np.asarray(frames, dtype=np.uint8)
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"frames must be (T, H, W, 3) uint8, got {frames.shape}")
    _encode_mp4(path, frames, fps, None if audio is None else (lambda n_frames: audio), sr, crf)


def mux_audio(video_in: str | os.PathLike, audio: np.ndarray, sr: int, out_path: str | os.PathLike) -> None:
    """Replace (or add) a video's soundtrack: re-encode its frames as H.264 with ``audio`` as AAC.

    The output keeps the source frame rate; the audio is trimmed or zero-padded to the video.
    Streamed: the source frames (those :func:`read_frames` gives at the source rate, odd
    sizes cropped to even) are decoded a few at a time and encoded one by one
    (:func:`read_frame_chunks`), so memory does not grow with the video's length.

    Args:
        video_in: the source video.
        audio: mono float32 soundtrack.
        sr: its sample rate (Hz).
        out_path: output ``.mp4``.
    """
    info = probe(video_in, check_vfr=False)
    fps = info.fps if info.fps > 0 else FPS
    # 4 source frames per decode call: 25 MB of RGB at 1080p; decord keeps its position
    _, chunks = read_frame_chunks(video_in, fps=fps, chunk_frames=4)

    def even_frames():
        for chunk in chunks:
            for img in chunk:  # yuv420p needs even sizes
                yield img[: img.shape[0] // 2 * 2, : img.shape[1] // 2 * 2]

    def fitted(n_frames: int) -> np.ndarray:
        n = int(round(n_frames / fps * sr))
        a = np.asarray(audio, np.float32).reshape(-1)
        if len(a) >= n:
            return a[:n]  # a view: a 10-minute track is 38 MB, not copied
        return np.concatenate([a, np.zeros(n - len(a), np.float32)])

    _encode_mp4(out_path, even_frames(), fps, fitted, sr)


# ----------------------------------------------------------------------------- streaming (long videos)


def read_frame_chunks(path: str | os.PathLike, fps: float = FPS, size: tuple[int, int] | None = None,
                      chunk_frames: int = 103) -> tuple[int | None, Iterator[np.ndarray]]:
    """The frames :func:`read_frames` gives for a whole video, decoded a chunk at a time.

    For a 10-minute video the frames at 112 px are 225 MB and at the source size
    gigabytes; this reads ``chunk_frames`` of them per step instead. The same rule as
    :func:`decode_frames`: an intact file without rotation is read with decord (one
    ``VideoReader``, the frame count known before any frame is decoded, the frames those
    of :func:`read_frames` exactly); a rotated file, or one decord cannot open, is decoded
    with PyAV frame by frame (damaged packets skipped, rotation applied) and its frame
    count is only known at the end. A decord failure in the middle of the file goes on
    with PyAV from that frame, for the frames still announced.

    Args:
        path: the video file.
        fps: output frame rate (frames/s).
        size: ``(height, width)`` to resize to, or ``None`` for the (displayed) source size.
        chunk_frames: frames per chunk (>= 1).

    Returns:
        ``(n_frames, chunks)``: the frame count (``ceil(duration * fps)``; ``None`` when only
        the decode can tell) and an iterator of uint8 ``(T_i, H, W, 3)`` chunks, in order.

    Raises:
        MediaError: missing or empty file, no video stream, or no decodable frame (at the
            call for the decord path, while iterating for the PyAV path).
    """
    if int(chunk_frames) < 1:
        raise ValueError(f"chunk_frames must be >= 1, got {chunk_frames}")
    p = _check_file(path)
    try:
        with av.open(p) as c:
            rotation = _display_rotation(c, c.streams.video[0]) if c.streams.video else 0
    except av.error.FFmpegError:
        rotation = 0  # let decord (then PyAV) say what is wrong
    if rotation == 0:
        try:
            kw = {} if size is None else {"height": int(size[0]), "width": int(size[1])}
            vr = decord.VideoReader(p, ctx=decord.cpu(0), num_threads=1, **kw)
            n = len(vr)
            if n == 0:
                raise decord.DECORDError(f"{p}: decord found no video frames")
            # the frame grid of _decord_frames: start times, the last frame lasting as the one before
            ts = np.asarray(vr.get_frame_timestamp(np.arange(n)))[:, 0]
            t_out = _n_out(float(ts[-1] + (ts[-1] - ts[-2] if n > 1 else 1.0 / fps)), fps)
            if t_out <= 0:
                raise MediaError("too_short", f"{p}: the video gives no frame at {fps} fps.")
            idx = np.clip(np.searchsorted(ts, np.arange(t_out) / fps + _TS_EPS_S, side="right") - 1, 0, n - 1)
            return t_out, _decord_chunks(p, vr, idx, fps, size, int(chunk_frames))
        except (decord.DECORDError, RuntimeError) as exc:  # decord raises both
            log.info("%s: decord failed (%s); decoding with PyAV, skipping damaged packets", p, str(exc)[-200:])
    return None, _batched(_pyav_frame_stream(p, fps, 0.0, None, size), int(chunk_frames))


def _decord_chunks(p: str, vr, idx: np.ndarray, fps: float, size: tuple[int, int] | None,
                   chunk: int) -> Iterator[np.ndarray]:
    """decord's chunks of :func:`read_frame_chunks`; PyAV for the rest after a decord failure."""
    for i in range(0, len(idx), chunk):
        try:
            frames = vr.get_batch(idx[i : i + chunk].tolist()).asnumpy()
            if frames.ndim != 4 or frames.shape[-1] != 3:
                raise decord.DECORDError(f"{p}: decord returned frames of shape {frames.shape}")
        except (decord.DECORDError, RuntimeError) as exc:  # decord raises both
            log.info("%s: decord failed at frame %d (%s); decoding the rest with PyAV", p, i, str(exc)[-200:])
            rest = _pyav_frame_stream(p, fps, i / fps, len(idx) - i, size)
            yield from _batched(rest, chunk)
            return
        yield np.ascontiguousarray(frames, dtype=np.uint8)


def _batched(frames: Iterator[np.ndarray], chunk: int) -> Iterator[np.ndarray]:
    """Consecutive frames stacked into chunks of ``chunk`` (the last one shorter)."""
    buf: list[np.ndarray] = []
    for f in frames:
        buf.append(f)
        if len(buf) == chunk:
            yield np.stack(buf)
            buf = []
    if buf:
        yield np.stack(buf)


def _pyav_frame_stream(p: str, fps: float, start_s: float, n_frames: int | None, size: tuple[int, int] | None,
                       end_s: float | None = None, stats: dict | None = None) -> Iterator[np.ndarray]:
    """Frames sampled at ``fps`` from ``start_s`` on, decoded with PyAV one at a time.

    Decodes from the key frame before ``start_s`` and yields, for each output time, the last
    frame whose timestamp is <= it; a frame lost to a bad packet therefore leaves the
    previous frame on screen, as in a player. Rotation is applied.

    Args:
        p: the video file.
        fps: output frame rate (frames/s).
        start_s: first output time (s).
        n_frames: how many frames (None: to the end, the last frame lasting its duration,
            like decord).
        size: ``(height, width)`` after rotation, or ``None`` for the source size.
        end_s: end of the window the loss is counted in (s; None: ``n_frames`` decides).
        stats: filled, when the stream ends, with ``bad`` (undecodable packets that overlap
            the window) and ``spans`` (the seconds they covered, source time).

    Raises:
        MediaError: no video stream, or no decodable frame.
    """
    with _open(p) as c:
        if not c.streams.video:
            raise MediaError("no_video_stream", f"{p} has no video stream; the file must contain video frames.")
        st = c.streams.video[0]
        st.codec_context.thread_count = 1  # one decoder thread, like decord's num_threads=1: cores are shared
        rotation = _display_rotation(c, st)
        rate = st.average_rate or st.guessed_rate
        frame_s = 1.0 / float(rate) if rate else 1.0 / fps  # a packet's duration when the container has none
        if end_s is None and n_frames is not None:
            end_s = start_s + n_frames / fps
        try:  # to the key frame at or before the start
            c.seek(int(max(start_s, 0.0) / float(st.time_base)) if st.time_base else 0, stream=st, backward=True)
        except av.error.FFmpegError:
            c.seek(0)  # no index (damaged file): read from the start
        h = w = 0
        if size is not None:  # resize before rotating: a quarter turn swaps the sides
            h, w = (int(size[1]), int(size[0])) if rotation in (90, 270) else (int(size[0]), int(size[1]))
        kw = {} if size is None else {"width": w, "height": h, "interpolation": "BILINEAR"}
        done, bad, spans = 0, 0, []
        cur = cur_img = None
        cur_t = cur_end = None

        def lose(t0: float, t1: float) -> None:
            a, b = max(t0, start_s), t1 if end_s is None else min(t1, end_s)
            if b > a:
                spans.append((a, b))

        read_error = None
        try:
            for pkt in c.demux(st):
                t, d = _packet_time(pkt)
                try:
                    decoded = pkt.decode()  # the final empty packet flushes the decoder
                except av.error.FFmpegError:
                    if not pkt.size:
                        continue
                    if t is None or ((end_s is None or t < end_s) and t + (d or frame_s) > start_s):
                        bad += 1
                        if t is not None:
                            lose(t, t + (d or frame_s))
                    continue
                for fr in decoded:
                    ft = float(fr.time) if fr.time is not None else (cur_t + frame_s if cur_t is not None else start_s)
                    if cur is None:
                        cur = fr  # times before the first frame show it (as decord clips to frame 0)
                    while (n_frames is None or done < n_frames) and start_s + done / fps + _TS_EPS_S < ft:
                        if cur_img is None:
                            cur_img = _rotate(cur.to_ndarray(format="rgb24", **kw), rotation)
                        yield cur_img
                        done += 1
                    if cur is not fr:
                        cur, cur_img = fr, None
                    cur_t = ft
                    cur_end = ft + (float(fr.duration * fr.time_base) if fr.duration and fr.time_base else frame_s)
                if n_frames is not None and done >= n_frames:
                    break
        except av.error.FFmpegError as exc:  # a read error: the data after it is lost
            read_error = exc
        if cur is None:
            raise MediaError("truncated", f"{p}: no video frame could be decoded ({read_error or 'no frame'}); "
                                          "the file is cut short or damaged: re-copy or re-encode it.")
        if read_error is not None:
            bad += 1
            lose(cur_end, end_s if end_s is not None else cur_end)
            log.info("%s: read error after %.2f s (%s); the rest shows the last frame", p, cur_end, read_error)
        if bad:
            log.info("%s: %d damaged video packet(s) skipped", p, bad)
        if stats is not None:
            stats.update(bad=bad, spans=spans)
        total = n_frames if n_frames is not None else max(_n_out(max(cur_end - start_s, 0.0), fps), done, 1)
        while done < total:  # times past the end repeat the last frame (audio is padded the same way)
            if cur_img is None:
                cur_img = _rotate(cur.to_ndarray(format="rgb24", **kw), rotation)
            yield cur_img
            done += 1


def _encode_mp4(path: str | os.PathLike, frames: Iterable[np.ndarray], fps: float,
                audio_for: Callable[[int], np.ndarray] | None, sr: int = SAMPLE_RATE, crf: int = 23) -> None:
    """H.264 (yuv420p) + optional AAC mono, written atomically, frames encoded one by one.

    Args:
        path: output ``.mp4``.
        frames: uint8 ``(H, W, 3)`` frames, all of one even size.
        fps: frame rate (frames/s).
        audio_for: ``fn(frames written) -> float32 mono audio`` (called after the video:
            the track can be fitted to the frame count), or ``None`` for no audio track.
        sr: audio sample rate (Hz).
        crf: x264 constant rate factor (lower = better quality).

    Raises:
        ValueError: no frame, or frames of another shape than the first.
    """
    it = iter(frames)
    first = next(it, None)
    if first is None:
        raise ValueError("no frames to write")
    shape = np.shape(first)
    if len(shape) != 3 or shape[-1] != 3:
        raise ValueError(f"frames must be (H, W, 3) uint8, got {shape}")
    p = Path(path)
    tmp = p.with_name(p.name + ".tmp" + p.suffix)
    rate = fractions.Fraction(fps).limit_denominator(1000)
    try:
        with av.open(str(tmp), mode="w") as c:
            vs = c.add_stream("libx264", rate=rate)
            vs.width, vs.height = int(shape[1]), int(shape[0])
            vs.pix_fmt = "yuv420p"
            vs.options = {"crf": str(crf), "preset": "veryfast"}
            vs.codec_context.thread_count = 1
            ast = None
            if audio_for is not None:
                ast = c.add_stream("aac", rate=int(sr))
                ast.layout = "mono"
            n = 0
            for img in _chain(first, it):
                if np.shape(img) != shape:
                    raise ValueError(f"frame {n} has shape {np.shape(img)}, the first {shape}")
                vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(img, dtype=np.uint8), format="rgb24")
                vf.pts = n
                for pkt in vs.encode(vf):
                    c.mux(pkt)
                n += 1
            for pkt in vs.encode():
                c.mux(pkt)
            if ast is not None:
                a = np.asarray(audio_for(n), np.float32).reshape(-1)
                # AAC encoder wants planar float frames of 1024 samples; clipped a frame at a
                # time, so the track is never copied whole
                step = 1024
                for k in range(0, len(a), step):
                    chunk = np.clip(a[k : k + step], -1, 1)[None, :]
                    af = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk), format="fltp", layout="mono")
                    af.sample_rate = int(sr)
                    af.pts = k
                    for pkt in ast.encode(af):
                        c.mux(pkt)
                for pkt in ast.encode():
                    c.mux(pkt)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, p)


def _chain(first: np.ndarray, rest: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    """``first`` then the rest of the iterator."""
    yield first
    yield from rest



# ----------------------------------------------------------------------------- untrusted files (no decoding)
#
# A file from outside (an HTTP upload) is looked at in three steps that decode nothing:
# :func:`sniff` names the format from its first bytes (before libavformat sees the file:
# its probing would follow an HLS playlist or a concat script to other files and URLs),
# :func:`iso_bmff_scan` lists what an mp4/mov points to outside itself (and the samples
# its tables declare), and
# :func:`count_packets` demuxes every packet (no decoding) to learn what the container really
# holds: streams, codecs, picture sizes, packet counts and timestamps. The caller (the
# serving ingress) decides on those facts before any frame is decoded.

#: Bytes read by :func:`sniff` (enough for an ``ftyp`` box, two MPEG-TS packets, a text line).
SNIFF_BYTES = 4096


@dataclass(frozen=True)
class Sniffed:
    """What a file's first bytes say it is (see :func:`sniff`).

    Attributes:
        kind: short format name (``mp4``, ``matroska``, ``mpegts``, ``avi``, ``ogg``, ``flv``,
            ``png``, ``wav``, ``hls``, ``text``, ``empty``, ``unknown``, ...).
        category: ``video_container`` (a container that may hold video), ``image``,
            ``audio``, ``references`` (a playlist, concat script, session description or
            manifest that names other files or URLs), ``text``, ``empty`` or ``unknown``.
        demuxer: the libavformat demuxer that reads a ``video_container`` (to open it with
            that demuxer and no other), else ``None``.
        description: human words for messages (``"an HLS playlist (#EXTM3U)"``).
    """

    kind: str
    category: str
    demuxer: str | None
    description: str


# ISO base media (mp4, mov, 3gp, m4v): the box types a file may start with.
_ISO_FIRST_BOXES = (b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot", b"styp", b"sidx")
# ftyp brands of still-image files in the same box format (HEIF, AVIF).
_ISO_IMAGE_BRANDS = (b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1", b"avif", b"avis")
# Formats whose text names other resources; libavformat's probing would open them.
_REFERENCE_PREFIXES = (
    (b"#EXTM3U", "hls", "an HLS playlist (#EXTM3U)"),
    (b"ffconcat", "concat", "an ffconcat script"),
    (b"v=0", "sdp", "an SDP session description"),
    (b"[playlist]", "pls", "a PLS playlist"),
    (b"<?xml", "xml", "an XML document (a DASH manifest or a playlist)"),
    (b"<MPD", "dash", "a DASH manifest"),
    (b"<smil", "smil", "a SMIL playlist"),
    (b"#EXT", "hls", "an extended M3U playlist"),
)
# (magic at offset 0, kind, category, demuxer, description); RIFF and ftyp are handled apart.
_MAGIC = (
    (b"\x1aE\xdf\xa3", "matroska", "video_container", "matroska", "a Matroska / WebM container"),
    (b"OggS", "ogg", "video_container", "ogg", "an Ogg container"),
    (b"FLV\x01", "flv", "video_container", "flv", "a Flash video (FLV) container"),
    (b"0&\xb2u\x8ef\xcf\x11", "asf", "video_container", "asf", "an ASF / WMV container"),
    (b"\x00\x00\x01\xba", "mpeg", "video_container", "mpeg", "an MPEG program stream"),
    (b"\x00\x00\x01\xb3", "mpegvideo", "video_container", "mpegvideo", "a raw MPEG video elementary stream"),
    (b"\x00\x00\x00\x01", "h264_annexb", "video_container", "h264", "a raw H.264/H.265 elementary stream"),
    (b"\x89PNG", "png", "image", None, "a PNG image"),
    (b"\xff\xd8\xff", "jpeg", "image", None, "a JPEG image"),
    (b"GIF8", "gif", "image", None, "a GIF image"),
    (b"BM", "bmp", "image", None, "a BMP image"),
    (b"II*\x00", "tiff", "image", None, "a TIFF image"),
    (b"MM\x00*", "tiff", "image", None, "a TIFF image"),
    (b"ID3", "mp3", "audio", None, "an MP3 audio file"),
    (b"fLaC", "flac", "audio", None, "a FLAC audio file"),
    (b"caff", "caf", "audio", None, "a Core Audio (CAF) file"),
    (b"#!AMR", "amr", "audio", None, "an AMR audio file"),
    (b"MThd", "midi", "audio", None, "a MIDI file"),
    (b".snd", "au", "audio", None, "an AU audio file"),
)


def _looks_like_text(head: bytes) -> bool:
    """Whether ``head`` is text (UTF-8 with no control bytes besides tab and line ends).

    Args:
        head: a file's first bytes.
    """
    try:
        s = head.decode("utf-8")
    except UnicodeDecodeError:  # maybe cut in a multi-byte character at the end
        try:
            s = head[:-3].decode("utf-8")
        except UnicodeDecodeError:
            return False
    return all(c.isprintable() or c in "\t\r\n\f" for c in s)


def sniff(path: str | os.PathLike) -> Sniffed:
    """Names a file's format from its first :data:`SNIFF_BYTES` bytes, without libavformat.

    Args:
        path: the file.

    Returns:
        a :class:`Sniffed`.

    Raises:
        MediaError: ``missing`` when the file does not exist.
    """
    p = Path(path)
    if not p.exists():
        raise MediaError("missing", f"{p} does not exist; check the path.")
    with open(p, "rb") as f:
        head = f.read(SNIFF_BYTES)
    if not head:
        return Sniffed("empty", "empty", None, "an empty file (0 bytes)")
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")  # a UTF-8 byte-order mark or blank lines before a playlist
    for prefix, kind, what in _REFERENCE_PREFIXES:
        if text[: len(prefix)].upper() == prefix.upper():
            return Sniffed(kind, "references", None, what)
    if len(head) >= 12 and head[4:8] in _ISO_FIRST_BOXES:
        brand = head[8:12] if head[4:8] == b"ftyp" else b""
        if brand in _ISO_IMAGE_BRANDS:
            return Sniffed("heif", "image", None, f"a HEIF/AVIF image (brand {brand.decode('latin-1')!r})")
        return Sniffed("mp4", "video_container", "mov", "an MP4 / QuickTime container")
    if head[:4] == b"RIFF" and len(head) >= 12:
        sub = head[8:12]
        if sub == b"AVI ":
            return Sniffed("avi", "video_container", "avi", "an AVI container")
        if sub == b"WAVE":
            return Sniffed("wav", "audio", None, "a WAV audio file")
        if sub == b"WEBP":
            return Sniffed("webp", "image", None, "a WebP image")
        return Sniffed("riff", "unknown", None, f"a RIFF file of type {sub.decode('latin-1')!r}")
    # MPEG-TS: 188-byte packets starting with the sync byte 0x47; M2TS (Blu-ray): 192-byte
    # packets (a 4-byte time code before each TS packet)
    if head[0] == 0x47 and (len(head) <= 188 or head[188] == 0x47):
        return Sniffed("mpegts", "video_container", "mpegts", "an MPEG transport stream")
    if len(head) > 196 and head[4] == 0x47 and head[196] == 0x47:
        return Sniffed("mpegts", "video_container", "mpegts", "an MPEG transport stream (M2TS)")
    for magic, kind, category, demuxer, what in _MAGIC:
        if head.startswith(magic):
            return Sniffed(kind, category, demuxer, what)
    if head[:2] in (b"\xff\xfb", b"\xff\xf3", b"\xff\xf2", b"\xff\xf1", b"\xff\xf9"):  # MPEG audio / ADTS AAC frame sync
        return Sniffed("mpeg_audio", "audio", None, "a raw MP3 / AAC audio stream")
    if _looks_like_text(head):
        if b"://" in head:  # a list of URLs is a playlist to libavformat's probes
            return Sniffed("url_list", "references", None, "text naming URLs")
        return Sniffed("text", "text", None, "a text file")
    return Sniffed("unknown", "unknown", None, f"unrecognised bytes (starting {head[:8].hex(' ')})")


# Boxes of an mp4/mov on the way to the data references (moov > trak > mdia > minf > dinf > dref)
# and to the sample tables (... > minf > stbl > stsz / stz2; fragments: moof > traf > trun).
_ISO_CONTAINER_BOXES = (b"moov", b"trak", b"mdia", b"minf", b"dinf", b"stbl", b"moof", b"traf")


@dataclass(frozen=True)
class IsoScan:
    """What :func:`iso_bmff_scan` read from an mp4 / mov box structure.

    Attributes:
        references: one description per reference to data outside the file (empty for a
            self-contained file).
        declared_samples: samples the sample tables and fragments declare, all tracks
            (libavformat allocates an index entry for each when it opens the file).
    """

    references: tuple[str, ...] = ()
    declared_samples: int = 0


def _iso_boxes(buf: bytes, start: int, end: int) -> Iterator[tuple[bytes, int, int]]:
    """``(type, payload start, box end)`` of the boxes in ``buf[start:end]`` (clamped to ``end``).

    Args:
        buf: bytes holding the boxes.
        start: where the first box header starts.
        end: where the enclosing box (or the buffer) ends.
    """
    pos = start
    while pos + 8 <= end:
        size = int.from_bytes(buf[pos : pos + 4], "big")
        typ = bytes(buf[pos + 4 : pos + 8])
        header = 8
        if size == 1 and pos + 16 <= end:  # 64-bit size follows the type
            size, header = int.from_bytes(buf[pos + 8 : pos + 16], "big"), 16
        elif size == 0:  # the box runs to the end of its parent
            size = end - pos
        if size < header:  # malformed: stop (libavformat will say what it makes of it)
            return
        yield typ, pos + header, min(pos + size, end)
        pos += size


def _dref_entries(buf: bytes, start: int, end: int) -> Iterator[str]:
    """The external entries of one ``dref`` box (entries without the self-contained flag).

    Args:
        buf: bytes holding the box.
        start: its payload start.
        end: its end.
    """
    for typ, body, stop in _iso_boxes(buf, start + 8, end):  # version/flags (4 B), entry count (4 B)
        flags = int.from_bytes(buf[body + 1 : body + 4], "big") if body + 4 <= stop else 0
        if typ in (b"url ", b"urn ") and flags & 1:  # 0x000001: the media data is in this file
            continue
        location = bytes(buf[body + 4 : stop]).split(b"\0")[0].decode("utf-8", "replace")[:120]
        yield f"data reference {typ.decode('latin-1')!r}" + (f" to {location!r}" if location else "")


def _u32(buf: bytes, pos: int, end: int) -> int:
    """The big-endian 32-bit number at ``pos`` (0 past ``end``).

    Args:
        buf: the bytes.
        pos: its offset.
        end: the end of the box it belongs to.
    """
    return int.from_bytes(buf[pos : pos + 4], "big") if pos + 4 <= end else 0


def _iso_walk(buf: bytes, start: int, end: int, refs: list[str]) -> int:
    """Collects the references into ``refs`` and returns the declared samples of ``buf[start:end]``.

    Args:
        buf: bytes holding the boxes.
        start: where the first box header starts.
        end: where the enclosing box ends.
        refs: list the reference descriptions are appended to.
    """
    samples = 0
    for typ, body, stop in _iso_boxes(buf, start, end):
        if typ == b"rmra":
            refs.append("a reference movie (rmra) naming other movies")
        elif typ == b"cmov":
            refs.append("a compressed movie header (cmov)")
        elif typ == b"dref":
            refs.extend(_dref_entries(buf, body, stop))
        elif typ == b"stsz":  # version/flags, default sample size, sample count
            samples += _u32(buf, body + 8, stop)
        elif typ in (b"stz2", b"trun"):  # stz2: version/flags, field size, count; trun: version/flags, count
            samples += _u32(buf, body + (8 if typ == b"stz2" else 4), stop)
        elif typ in _ISO_CONTAINER_BOXES:
            samples += _iso_walk(buf, body, stop, refs)
    return samples


def iso_bmff_scan(path: str | os.PathLike) -> IsoScan:
    """Reads an mp4 / mov box structure (``moov`` and ``moof`` boxes) without libavformat.

    Finds data references (``dref`` entries without the self-contained flag: a track whose
    samples live in another file or at a URL), reference movies (``rmra``) and compressed
    movie headers (``cmov``: their inside cannot be checked without inflating them), and
    sums the samples the tables declare. libavformat does not follow data references by
    default (``enable_drefs``), but a file that has them is not a self-contained upload; and
    it allocates an index entry per declared sample when it opens the file, so a few bytes of
    ``stsz`` can claim millions of samples: the caller compares the count with its limit first.

    Args:
        path: the file (any format: a file that is not ISO base media gives an empty scan).

    Returns:
        an :class:`IsoScan`.
    """
    refs: list[str] = []
    samples = 0
    size = Path(path).stat().st_size
    with open(path, "rb") as f:
        pos = 0
        while pos + 8 <= size:  # top-level boxes, skipped by seeking (mdat can be most of the file)
            f.seek(pos)
            head = f.read(16)
            if len(head) < 8:
                break
            box, typ, header = int.from_bytes(head[:4], "big"), head[4:8], 8
            if box == 1 and len(head) == 16:
                box, header = int.from_bytes(head[8:16], "big"), 16
            elif box == 0:
                box = size - pos
            if box < header:
                break
            if typ in (b"moov", b"moof"):
                f.seek(pos)
                buf = f.read(min(box, size - pos))  # at most the file: the upload limit bounds it
                samples += _iso_walk(buf, header, len(buf), refs) if typ == b"moov" else \
                    _iso_walk(buf, 0, len(buf), refs)
            pos += box
    return IsoScan(tuple(refs), samples)


@dataclass(frozen=True)
class StreamCount:
    """One stream of :func:`count_packets`.

    Attributes:
        index: the stream's index in the container.
        type: ``video``, ``audio``, ``subtitle``, ``data`` or ``attachment``.
        codec: the codec name (``h264``, ``aac``; ``none`` when the container names none).
        width: picture width from the codec parameters (px; 0 for other streams or unknown).
        height: picture height (px; 0 likewise).
        packets: non-empty packets demuxed.
        first_s: earliest packet timestamp (presentation, else decode time; s from 0 in
            stream time); ``None`` when no packet had one.
        end_s: latest packet timestamp plus its duration (s from 0); ``None`` likewise.
    """

    index: int
    type: str
    codec: str
    width: int
    height: int
    packets: int
    first_s: float | None
    end_s: float | None


@dataclass(frozen=True)
class PacketCount:
    """What :func:`count_packets` found in a container.

    Attributes:
        container: libavformat's demuxer name (``mov,mp4,m4a,3gp,3g2,mj2``, ``matroska,webm``).
        streams: per stream, in container order.
        packets: non-empty packets demuxed, all streams.
        complete: False when counting stopped at ``max_packets`` (the file holds more).
        read_error: the demuxer's error when the file ends in damage (counted up to it).
    """

    container: str
    streams: tuple[StreamCount, ...]
    packets: int
    complete: bool
    read_error: str | None = None


def _codec_name(stream) -> str:
    """A stream's codec name (``av1``, ``mp3``: the codec's, not its decoder's ``libdav1d``, ``mp3float``).

    Args:
        stream: a PyAV stream.
    """
    cc = stream.codec_context
    if cc is None:  # data and attachment streams have no codec context
        return "none"
    try:
        codec = cc.codec
        name = codec.canonical_name if codec is not None else None
    except Exception:  # no decoder for the codec id: PyAV raises instead of returning None
        name = None
    return str(name or cc.name or "none")


def count_packets(path: str | os.PathLike, demuxer: str | None = None, max_packets: int | None = None) -> PacketCount:
    """Demuxes a container without decoding: its streams, codecs, picture sizes and packets.

    What a container declares (its duration, a frame count) can be anything; this counts
    what it holds. Nested resources are refused: the file is opened with libavformat's
    ``protocol_whitelist`` set to ``file`` (no network protocol for anything the demuxer
    opens) and, for mp4/mov, external data references off (``enable_drefs=0``).

    Args:
        path: the file.
        demuxer: the libavformat demuxer to read it with (e.g. ``mov``, ``matroska``, from
            :func:`sniff`) instead of letting libavformat probe the format.
        max_packets: stop after this many non-empty packets (``complete`` is then False).

    Returns:
        a :class:`PacketCount`.

    Raises:
        MediaError: ``missing``, ``empty``, or ``not_video`` when the demuxer cannot open it.
    """
    p = _check_file(path)
    options = {"protocol_whitelist": "file"}
    if demuxer == "mov":
        options["enable_drefs"] = "0"
    try:
        c = av.open(p, format=demuxer, options=options)
    except Exception as exc:  # PyAV raises several InvalidDataError subclasses, ValueError for a bad format
        raise MediaError("not_video", f"{p} is not a readable {demuxer or 'media'} container "
                                      f"({type(exc).__name__}: {exc}).") from exc
    with c:
        streams = list(c.streams)
        n = len(streams)
        counts, firsts, ends = [0] * n, [None] * n, [None] * n
        tbs = [float(s.time_base) if s.time_base else 0.0 for s in streams]  # s per tick, per stream
        total, complete, read_error = 0, True, None
        try:
            for pkt in c.demux():
                if not pkt.size:  # the empty packets that end each stream
                    continue
                i = pkt.stream.index
                if i >= n:  # a stream that appeared while demuxing (mpegts can add them): not counted
                    continue
                counts[i] += 1
                total += 1
                ts = pkt.pts if pkt.pts is not None else pkt.dts
                if ts is not None and tbs[i]:
                    t = ts * tbs[i]
                    end = t + (pkt.duration or 0) * tbs[i]
                    firsts[i] = t if firsts[i] is None else min(firsts[i], t)
                    ends[i] = end if ends[i] is None else max(ends[i], end)
                if max_packets is not None and total >= max_packets:
                    complete = False
                    break
        except av.error.FFmpegError as exc:  # damage: what came before it is counted
            read_error = f"{type(exc).__name__}: {exc}"
        out = []
        for s in streams:
            cc = s.codec_context
            is_video = s.type == "video" and cc is not None
            out.append(StreamCount(
                index=int(s.index), type=str(s.type), codec=_codec_name(s),
                width=int(cc.width or 0) if is_video else 0, height=int(cc.height or 0) if is_video else 0,
                packets=counts[s.index], first_s=firsts[s.index], end_s=ends[s.index]))
        return PacketCount(container=str(c.format.name), streams=tuple(out), packets=total, complete=complete,
                           read_error=read_error)
