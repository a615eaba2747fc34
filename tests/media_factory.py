"""Writers and readers of real test media (encoded with PyAV), shared by the media tests.

Nothing here is a mock: every helper writes or damages a real file that libavformat and
libavcodec read back. Pictures can carry their source frame number as a grid of black and
white blocks (:func:`counter_frame` / :func:`read_counter`), robust to H.264 compression
and to a resize down to 32 px; audio is a tone whose pitch is a function of time
(:func:`tone`), so a decoded clip tells which source instant it came from.
"""

from __future__ import annotations

import fractions
from pathlib import Path
from typing import Callable

import av
import numpy as np

#: Counter grid: ``COUNTER_ROWS x COUNTER_COLS`` blocks, one bit each (frame numbers < 1024).
COUNTER_ROWS, COUNTER_COLS = 2, 5


def encoder_available(name: str) -> bool:
    """Whether this PyAV build can encode with codec ``name``.

    Args:
        name: an FFmpeg encoder name (``libmp3lame``, ``eac3``, ...).
    """
    try:
        av.codec.Codec(name, "w")
        return True
    except Exception:  # UnknownCodecError, or a decoder-only codec
        return False


def tone(seconds: float, sr: int, freq: float | Callable[[np.ndarray], np.ndarray] = 440.0, amp: float = 0.3) -> np.ndarray:
    """A sine of constant or time-varying pitch with continuous phase (no clicks at steps).

    Args:
        seconds: length (s).
        sr: sample rate (Hz).
        freq: pitch (Hz), or a function of time (s, array) giving the pitch at each sample.
        amp: amplitude (full scale = 1).

    Returns:
        float32 ``(round(seconds * sr),)``.
    """
    t = np.arange(int(round(seconds * sr))) / sr
    f = freq(t) if callable(freq) else np.full_like(t, float(freq))
    phase = 2 * np.pi * np.cumsum(f) / sr
    return (amp * np.sin(phase)).astype(np.float32)


def step_pitch(f0: float = 400.0, df: float = 40.0) -> Callable[[np.ndarray], np.ndarray]:
    """Pitch that steps every whole second: ``f0 + df * floor(t)`` Hz.

    Args:
        f0: pitch during the first second (Hz).
        df: step per second (Hz).
    """
    return lambda t: f0 + df * np.floor(t)


def counter_frame(n: int, size: tuple[int, int], base: tuple[int, int, int] = (40, 90, 160)) -> np.ndarray:
    """A picture whose block grid spells frame number ``n`` in binary (white block = 1).

    The grid covers the whole picture (``COUNTER_ROWS`` x ``COUNTER_COLS`` blocks, bit 0 at
    the top left, row-major), so it survives a resize to a few pixels per block.

    Args:
        n: the number to draw (0 <= n < 2 ** (rows * cols)).
        size: ``(height, width)`` px.
        base: RGB colour of the zero blocks (not pure black, so chroma is exercised).
    """
    h, w = size
    img = np.empty((h, w, 3), np.uint8)
    img[:] = base
    for b in range(COUNTER_ROWS * COUNTER_COLS):
        if (n >> b) & 1:
            r, c = divmod(b, COUNTER_COLS)
            img[r * h // COUNTER_ROWS : (r + 1) * h // COUNTER_ROWS, c * w // COUNTER_COLS : (c + 1) * w // COUNTER_COLS] = 255
    return img


def read_counter(img: np.ndarray) -> int:
    """The frame number :func:`counter_frame` drew, read at the centre of each block.

    Args:
        img: uint8 ``(H, W, 3)``, at any size.
    """
    h, w = img.shape[:2]
    gray = img.astype(np.float32).mean(axis=2)
    n = 0
    for b in range(COUNTER_ROWS * COUNTER_COLS):
        r, c = divmod(b, COUNTER_COLS)
        y, x = int((r + 0.5) * h / COUNTER_ROWS), int((c + 0.5) * w / COUNTER_COLS)
        if gray[y, x] > 200:  # white blocks are 255, zero blocks ~90 (luma of `base`)
            n |= 1 << b
    return n


def write_av(
    path: Path,
    seconds: float,
    *,
    fps: float = 25.0,
    size: tuple[int, int] = (48, 80),
    vcodec: str | None = "libx264",
    pix_fmt: str = "yuv420p",
    acodec: str | None = "aac",
    sr: int = 16000,
    layout: str = "mono",
    audio: np.ndarray | Callable[[np.ndarray], np.ndarray] | float = 440.0,
    frame_times: np.ndarray | None = None,
    picture: Callable[[int], np.ndarray] | None = None,
    rotation: float | None = None,
    video_options: dict | None = None,
    audio_options: dict | None = None,
    container_options: dict | None = None,
    format: str | None = None,
) -> Path:
    """Encode a test video: counter pictures and a tone (or any mono signal) on every channel.

    Args:
        path: output file; the extension picks the container unless ``format`` is given.
        seconds: length (s).
        fps: frame rate (frames/s) when ``frame_times`` is ``None``.
        size: ``(height, width)`` px.
        vcodec: video encoder, ``None`` for no video stream.
        pix_fmt: encoder pixel format (``yuv444p`` allows odd sizes with libx264).
        acodec: audio encoder, ``None`` for no audio stream.
        sr: audio sample rate (Hz).
        layout: channel layout (``mono``, ``stereo``, ``5.1``, ...).
        audio: a signal at ``sr`` (mono ``(N,)``, copied to every channel, or ``(channels, N)``),
            a pitch function of time (s) for :func:`tone`, or a constant pitch (Hz).
        frame_times: presentation time of each frame (s) for variable frame rate (written
            on a 1 ms time base); ``None``: ``i / fps``.
        picture: frame number -> uint8 ``(H, W, 3)``; default :func:`counter_frame`.
        rotation: display rotation written as the container's display matrix (degrees,
            counter-clockwise, what ``VideoFrame.rotation`` reads back), ``None`` for none.
        video_options: video encoder options.
        audio_options: audio encoder options.
        container_options: muxer options.
        format: container format name (e.g. ``avi``) instead of the extension's.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = size
    picture = picture or (lambda i: counter_frame(i, size))
    with av.open(str(path), mode="w", format=format, options=container_options or {}) as c:
        vs = ast = None
        if vcodec is not None:
            vs = c.add_stream(vcodec, rate=fractions.Fraction(fps).limit_denominator(1001))
            vs.width, vs.height = w, h
            vs.pix_fmt = pix_fmt
            vs.codec_context.thread_count = 1
            if video_options:
                vs.options = video_options
            if frame_times is not None:
                vs.codec_context.time_base = fractions.Fraction(1, 1000)
            if rotation is not None:
                vs.set_display_rotation(rotation)
        if acodec is not None:
            ast = c.add_stream(acodec, rate=sr, layout=layout)
            if audio_options:
                ast.options = audio_options
        if vs is not None:
            times = frame_times if frame_times is not None else np.arange(int(round(seconds * fps))) / fps
            for i, t in enumerate(times):
                frame = av.VideoFrame.from_ndarray(picture(i), format="rgb24")
                if frame_times is not None:
                    frame.pts, frame.time_base = int(round(t * 1000)), fractions.Fraction(1, 1000)
                else:
                    frame.pts = i
                for pkt in vs.encode(frame):
                    c.mux(pkt)
            for pkt in vs.encode():
                c.mux(pkt)
        if ast is not None:
            sig = audio if isinstance(audio, np.ndarray) else tone(seconds, sr, audio)
            n_ch = ast.codec_context.layout.nb_channels
            sig = np.broadcast_to(np.asarray(sig, np.float32).reshape(-1, sig.shape[-1]), (n_ch, sig.shape[-1]))
            step = 1024  # samples per frame handed to the encoder (PyAV re-frames to the codec's size)
            for k in range(0, sig.shape[1], step):
                block = np.ascontiguousarray(sig[:, k : k + step])
                af = av.AudioFrame.from_ndarray(block, format="fltp", layout=layout)
                af.sample_rate, af.pts = sr, k
                for pkt in ast.encode(af):
                    c.mux(pkt)
            for pkt in ast.encode():
                c.mux(pkt)
    return path


def packet_table(path: Path) -> list[dict]:
    """Every non-empty packet of a file: stream type, byte offset, size, time and duration (s).

    Args:
        path: the media file.
    """
    out = []
    with av.open(str(path)) as c:
        for pkt in c.demux():
            if not pkt.size:
                continue
            ts = pkt.pts if pkt.pts is not None else pkt.dts
            tb = float(pkt.time_base) if pkt.time_base else 0.0
            out.append({
                "type": pkt.stream.type, "pos": int(pkt.pos) if pkt.pos is not None else -1, "size": int(pkt.size),
                "t": None if ts is None else ts * tb, "dur": (pkt.duration or 0) * tb, "key": bool(pkt.is_keyframe),
            })
    return out


def damage_packets(src: Path, dst: Path, kind: str, t0: float, t1: float, n_bytes: int = 300, skip: int = 0,
                   seed: int = 0, max_packets: int | None = None) -> list[dict]:
    """Copy ``src`` to ``dst`` with the payload of some packets overwritten by random bytes.

    The packets are found by demuxing (``packet.pos`` is the payload's byte offset in mp4,
    mov and AVI; in mkv it points at the block header, so use those containers);
    ``skip`` bytes of each payload are kept. The container structure
    stays readable and only the codec data is garbage, as on a bad disk sector or a broken
    download.

    Args:
        src: the intact file.
        dst: the damaged copy.
        kind: ``"audio"`` or ``"video"``.
        t0: first packet time damaged (s, inclusive).
        t1: end of the damaged span (s, exclusive).
        n_bytes: bytes overwritten per packet (at most the payload).
        skip: bytes kept at the start of each payload.
        seed: random seed of the garbage.
        max_packets: damage at most this many packets.

    Returns:
        The damaged packets (rows of :func:`packet_table`).
    """
    data = bytearray(Path(src).read_bytes())
    rng = np.random.default_rng(seed)
    hit = []
    for p in packet_table(src):
        if p["type"] != kind or p["t"] is None or not (t0 <= p["t"] < t1) or p["pos"] < 0:
            continue
        if max_packets is not None and len(hit) >= max_packets:
            break
        k = min(n_bytes, p["size"])
        start = p["pos"] + skip
        data[start : start + k] = rng.integers(0, 256, k, dtype=np.uint8).tobytes()
        hit.append(p)
    Path(dst).write_bytes(bytes(data))
    return hit


def dominant_freq(x: np.ndarray, sr: int) -> float:
    """Frequency (Hz) of the strongest FFT bin of ``x`` (Hann window, zero-padded to 8x).

    Args:
        x: mono signal.
        sr: its sample rate (Hz).
    """
    n = len(x)
    spec = np.abs(np.fft.rfft(x * np.hanning(n), 8 * n))
    return float(np.argmax(spec) * sr / (8 * n))


def pitch_track(x: np.ndarray, sr: int, win_s: float = 0.04, hop_s: float = 0.005) -> tuple[np.ndarray, np.ndarray]:
    """Dominant frequency over time: ``(window centre times s, frequencies Hz)``.

    Args:
        x: mono signal.
        sr: its sample rate (Hz).
        win_s: analysis window (s).
        hop_s: hop between windows (s).
    """
    win, hop = int(win_s * sr), int(hop_s * sr)
    starts = np.arange(0, len(x) - win + 1, hop)
    frames = np.stack([x[s : s + win] for s in starts]) * np.hanning(win)
    spec = np.abs(np.fft.rfft(frames, 4 * win, axis=1))
    return (starts + win / 2) / sr, np.argmax(spec, axis=1) * sr / (4 * win)


def mpegts_without_video_frames(path: Path) -> Path:
    """An MPEG-TS whose program declares a video stream that never gets a frame (2 s of
    silent mp2 audio only): a container that probes as video and holds nothing to decode."""
    with av.open(str(path), "w", format="mpegts") as c:
        v = c.add_stream("libx264", rate=10)
        v.width, v.height, v.pix_fmt = 64, 64, "yuv420p"
        a = c.add_stream("mp2", rate=16000)
        a.layout = "mono"
        for k in range(0, 32000, 1152):  # 1152 samples per mp2 frame
            f = av.AudioFrame.from_ndarray(np.zeros((1, 1152), np.int16), format="s16", layout="mono")
            f.sample_rate, f.pts = 16000, k
            for p in a.encode(f):
                c.mux(p)
        for p in a.encode():
            c.mux(p)
    return path
