"""Ingest a folder of real videos into a clip manifest (``soundtrack data ingest``).

The folder is scanned recursively for video containers (mp4, mkv, webm, mov, ...; the
extension is matched case-insensitively). Every file is probed and checked; a file that
cannot be used goes to the quarantine table with a reason code and a message saying what
to do, and never stops the run. Usable videos are cut into consecutive, non-overlapping
clips of ``clip_s`` seconds and assigned to train/val/test **by source video** (a hash of
the source id, itself derived from the path relative to the source folder, so the split
never leaks a source and does not change when other files are added).

Outputs in ``out``:

- ``manifest.parquet``: one row per clip (contract in ``docs/data-contracts.md``), with
  absolute ``video_path`` and, besides the contract's columns, the source's media facts as
  ``src_*`` columns (container, size, fps, vfr, duration, audio rate and channels) recorded
  as found: down-mixing and resampling happen at decode time in ``media.read_audio``.
- ``quarantine.parquet``: ``path, reason, message`` for every rejected file
  (reason codes in :data:`QUARANTINE_REASONS`).
- ``ingest.json``: the parameters and a summary (counts per split and per quarantine
  reason, short videos, media statistics, warnings).

Re-running on the same folder with the same arguments writes the same manifest.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import time
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import av
import pandas as pd
import soundfile as sf
from av.stream import Disposition

from soundtrack.data import manifest as manifest_mod
from soundtrack.data import media

log = logging.getLogger(__name__)

#: Quarantine reason codes and what each means (``media.probe`` raises ``missing``,
#: ``empty`` and ``not_video``; the others are ingest's own checks).
QUARANTINE_REASONS: dict[str, str] = {
    "empty": "the file has 0 bytes",
    "not_video": "the file is not a video container (text, audio-only format, ...)",
    "external_reference": "a playlist, concat script or manifest naming other files or URLs (never followed)",
    "no_video_stream": "a media container without a video stream",
    "truncated": "the file ends before its header says it does, or its data cannot be decoded",
    "unreadable": "the file or one of its streams cannot be opened or decoded",
    "missing": "the file disappeared while ingesting",
    "no_audio": "the video has no audio track (required for training data)",
    "bad_resolution": "frame size outside the limits",
    "too_long": "duration above limits.max_duration_s",
    "too_short": "duration below min_clip_s",
    "bad_sidecar": "a sidecar stem (<name>.music.wav / <name>.sfx.wav) cannot be read",
    "duplicate_file": "byte-identical copy of another file (would leak between splits)",
    "duplicate_clip_id": "its clip ids collide with another source's",
}

MANIFEST_NAME = manifest_mod.MANIFEST_NAME
QUARANTINE_NAME = "quarantine.parquet"
SUMMARY_NAME = "ingest.json"
#: Per-file check results of this output folder (``<sha1 of the relative path>.json``): a re-run
#: (after a kill, or with files added) re-checks only files that are new or changed.
PROBE_DIR = "probe"

#: Sidecar stem kinds, looked up as ``<video stem>.<kind>.wav`` next to the video.
STEM_KINDS = ("music", "sfx")

# Containers libavformat reports for real video files; an audio-only format (wav, mp3,
# flac, ogg) that merely carries a video extension is "not_video", not "no_video_stream".
_VIDEO_FORMAT_NAMES = ("mov", "mp4", "m4a", "3gp", "3g2", "mj2", "matroska", "webm", "avi")

# Slack (s) when counting whole clips: container durations are rounded to the time base
# (e.g. 20.479999 s for 2 x 10.24 s), which must not lose a clip.
_CLIP_COUNT_SLACK_S = 1e-3


@dataclass(frozen=True)
class IngestLimits:
    """Bounds outside which a video is quarantined rather than ingested.

    Args:
        max_duration_s: longest accepted video (s); default 4 h.
        min_side_px: smallest accepted frame width or height (px).
        max_side_px: largest accepted frame width or height (px).
        max_missing_s: a file whose decodable data ends more than this many seconds before
            the duration in its header is ``truncated``.
        tail_check_s: how far before the claimed end (s) the truncation check seeks to.
    """

    max_duration_s: float = 4 * 3600.0
    min_side_px: int = 16
    max_side_px: int = 8192
    max_missing_s: float = 2.0
    tail_check_s: float = 3.0


@dataclass
class IngestResult:
    """What :func:`ingest` wrote.

    Args:
        out_dir: the output folder.
        manifest_path: ``out/manifest.parquet``.
        quarantine_path: ``out/quarantine.parquet``.
        summary_path: ``out/ingest.json``.
        manifest: the manifest rows (one per clip).
        quarantine: the quarantined files (``path, reason, message``).
        summary: the content of ``ingest.json``.
    """

    out_dir: Path
    manifest_path: Path
    quarantine_path: Path
    summary_path: Path
    manifest: pd.DataFrame
    quarantine: pd.DataFrame
    summary: dict = field(default_factory=dict)

    @property
    def n_clips(self) -> int:
        """Number of clips in the manifest."""
        return len(self.manifest)


# --------------------------------------------------------------------------- naming


def _nfc(text: str) -> str:
    # macOS stores names decomposed (NFD); normalise so ids do not depend on the filesystem.
    return unicodedata.normalize("NFC", text)


def source_id_for(rel_path: str) -> str:
    """Filesystem-safe, unique id of a source video from its path relative to SRC.

    The readable part is an ASCII slug of the path (accents folded, other characters
    turned into ``-``, at most 48 characters); a 10-hex-digit hash of the full
    (NFC-normalised) relative path keeps ids unique when slugs coincide. The slug never
    contains ``__``, the separator of clip ids.

    Args:
        rel_path: POSIX path of the video relative to the source folder.

    Returns:
        For example ``"sub-clip-a-1-mp4-3f9c2a1b0e"`` for ``"sub/clip ä 1.mp4"``.
    """
    rel = _nfc(rel_path)
    ascii_text = unicodedata.normalize("NFKD", rel).encode("ascii", "ignore").decode("ascii")
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_text.lower()).strip("-")[:48].strip("-") or "video"
    digest = hashlib.sha1(rel.encode("utf-8")).hexdigest()[:10]
    return f"{slug}-{digest}"


def clip_id_for(source_id: str, k: int) -> str:
    """Clip id ``<source_id>__<k:04d>`` (the contract's form).

    Args:
        source_id: from :func:`source_id_for`.
        k: clip index within the source, from 0.
    """
    return f"{source_id}__{k:04d}"


def _label_column(name: str) -> str:
    col = re.sub(r"\W+", "_", str(name).strip()).strip("_") or "unnamed"
    return col if col.startswith("label_") else f"label_{col}"


# --------------------------------------------------------------------------- scanning


def _scan(src: Path, skip: Path | None, extensions: tuple[str, ...]) -> list[tuple[Path, str]]:
    """Video files under ``src`` as ``(path, relative POSIX path)``, sorted by the latter.

    Args:
        src: folder walked recursively (symlinked folders are not followed), or one file.
        skip: a folder not to walk (the output folder when it lies inside ``src``).
        extensions: lower-case extensions taken as videos, matched case-insensitively.
    """
    exts = tuple(e.lower() for e in extensions)
    if src.is_file():
        return [(src, _nfc(src.name))] if src.suffix.lower() in exts else []
    found = []
    skip_abs = os.path.abspath(skip) if skip is not None else None
    # followlinks=False: a symlinked directory loop must not make the scan endless.
    for dirpath, dirnames, filenames in os.walk(src, followlinks=False):
        if skip_abs is not None:
            # Never ingest our own output folder when it lives inside SRC.
            dirnames[:] = [d for d in dirnames if os.path.abspath(os.path.join(dirpath, d)) != skip_abs]
        dirnames.sort()
        for name in filenames:
            if os.path.splitext(name)[1].lower() in exts:
                p = Path(dirpath) / name
                found.append((p, _nfc(p.relative_to(src).as_posix())))
    found.sort(key=lambda t: t[1])
    return found


def folder_fingerprint(src: str | os.PathLike) -> str:
    """A 12-hex-digit hash of a folder's listing: every file's relative path, size and mtime.

    What names an ingest of a configured folder (``data.source``): adding, removing,
    replacing or touching a file gives a new ingest; an unchanged folder finds its earlier one.

    Args:
        src: the folder (or one file).
    """
    root = Path(src).absolute()
    h = hashlib.sha1()
    paths = [root] if root.is_file() else sorted(q for q in root.rglob("*") if q.is_file())
    for q in paths:
        try:
            st = q.stat()
        except OSError:
            continue
        rel = q.name if q == root else q.relative_to(root).as_posix()
        h.update(f"{_nfc(rel)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode("utf-8"))
    return h.hexdigest()[:12]


def _file_sha1(path: Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):  # 1 MiB reads
            h.update(block)
    return h.hexdigest()


def _find_duplicate_files(files: list[tuple[Path, str]]) -> dict[str, str]:
    """Map the relative path of each byte-identical copy to the first copy's (sorted order).

    Only files whose size equals another file's size are hashed, so a folder of distinct
    videos costs one ``stat`` per file. Empty files are left to the ``empty`` check.

    Args:
        files: ``(path, relative path)`` pairs in sorted order, from :func:`_scan`.
    """
    by_size: dict[int, list[tuple[Path, str]]] = {}
    for p, rel in files:
        try:
            size = p.stat().st_size
        except OSError:
            continue
        if size > 0:
            by_size.setdefault(size, []).append((p, rel))
    dup_of: dict[str, str] = {}
    for group in by_size.values():
        if len(group) < 2:
            continue
        first_by_hash: dict[str, str] = {}
        for p, rel in group:  # group keeps the sorted order, so the kept copy is stable
            try:
                digest = _file_sha1(p)
            except OSError:
                continue
            if digest in first_by_hash:
                dup_of[rel] = first_by_hash[digest]
            else:
                first_by_hash[digest] = rel
    return dup_of


# --------------------------------------------------------------------------- metadata


def _is_missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _load_metadata(
    csv_path: str | os.PathLike | None, src: Path, rels: list[str]
) -> tuple[dict[str, dict], list[str], dict]:
    """Read the optional metadata CSV and match its rows to the scanned videos.

    Args:
        csv_path: CSV with a ``file`` column (path relative to SRC, or a basename), an
            optional ``caption`` column and any other columns (become ``label_<col>``).
        src: the source folder (to relativise absolute ``file`` values).
        rels: relative paths of the scanned videos.

    Returns:
        ``(rows by relative path, label column names in CSV order, report for ingest.json)``.

    Raises:
        ValueError: the CSV has no ``file`` column (a configuration error, not a file problem).
    """
    if csv_path is None:
        return {}, [], {"csv": None}
    # Types are inferred per column (numbers stay numbers); only ``file`` is forced to text.
    df = pd.read_csv(csv_path, dtype={"file": str}, keep_default_na=False, na_values=[""])
    df.columns = [str(c).strip() for c in df.columns]
    if "file" not in df.columns:
        raise ValueError(
            f"metadata CSV {csv_path} has no 'file' column (columns: {list(df.columns)}); add one "
            "holding each video's path relative to SRC or its file name."
        )
    other = [c for c in df.columns if c not in ("file", "caption")]
    labels = [_label_column(c) for c in other]
    rel_set = set(rels)
    by_base: dict[str, list[str]] = {}
    for r in rels:
        by_base.setdefault(r.rsplit("/", 1)[-1], []).append(r)
    src_abs = os.path.abspath(src)
    out: dict[str, dict] = {}
    unmatched, ambiguous, repeated = [], [], []
    for row in df.to_dict("records"):  # python values per column dtype (iterrows would upcast ints)
        raw = row["file"]
        if _is_missing(raw):
            continue
        key = _nfc(str(raw).strip().replace("\\", "/"))
        if os.path.isabs(key) and os.path.abspath(key).startswith(src_abs + os.sep):
            key = _nfc(Path(os.path.abspath(key)).relative_to(src_abs).as_posix())
        while key.startswith("./"):
            key = key[2:]
        if key in rel_set:
            rel = key
        elif "/" not in key and len(by_base.get(key, [])) == 1:
            rel = by_base[key][0]
        elif "/" not in key and len(by_base.get(key, [])) > 1:
            ambiguous.append(str(raw))
            continue
        else:
            unmatched.append(str(raw))
            continue
        if rel in out:
            repeated.append(str(raw))  # the first row for a video wins
            continue
        values = {lab: (None if _is_missing(row[c]) else row[c]) for c, lab in zip(other, labels)}
        caption = row.get("caption")
        out[rel] = {"caption": "" if _is_missing(caption) else str(caption), "labels": values}
    report = {
        "csv": os.path.abspath(csv_path),
        "rows": int(len(df)),
        "matched": len(out),
        "label_columns": labels,
        "unmatched_rows": unmatched,
        "ambiguous_basenames": ambiguous,
        "repeated_rows": repeated,
    }
    return out, labels, report


# --------------------------------------------------------------------------- checks


class _Reject(Exception):
    """A quarantine decision (reason code + human message) raised by the checks below."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


def _sniff(path: Path) -> str | None:
    """Name the real container from the first bytes, or ``None`` if unrecognised."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError:
        return None
    if len(head) >= 8 and head[4:8] in (b"ftyp", b"moov", b"mdat", b"wide", b"free", b"skip"):
        return "MP4/MOV"
    if head[:4] == b"\x1a\x45\xdf\xa3":
        return "MKV/WebM"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "AVI"
    return None


def _describe_non_video(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError:
        return "unreadable bytes"
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "a WAV audio file"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return "binary data of an unknown format"
    if all(ch.isprintable() or ch in "\r\n\t" for ch in text):
        return "a text file"
    return "data of an unknown format"


def _probe(path: Path) -> media.MediaInfo:
    """``media.probe`` with a sharper reason for files libav cannot open.

    An mp4 cut short loses its index (the ``moov`` box is written last), so libavformat
    refuses it like any non-media file; its first bytes still say "mp4", which is how a
    truncated video is told apart from a text file named ``.mp4``.

    Args:
        path: the video file.

    Raises:
        _Reject: the reason and message for the quarantine table.
    """
    # A playlist or concat script names other files or URLs, which the decoders would
    # follow (decord reads the mp4 an #EXTM3U file names): refused before libav opens it.
    try:
        sniffed = media.sniff(path)
    except media.MediaError as exc:
        raise _Reject(exc.reason, exc.message) from exc
    except OSError as exc:
        raise _Reject("unreadable", f"{path} could not be read ({exc}); check the file.") from exc
    if sniffed.category == "references":
        raise _Reject("external_reference", f"{path} is {sniffed.description}, which names other files or URLs; "
                                            "give the video files themselves.")
    try:
        return media.probe(path)
    except media.MediaError as exc:
        if exc.reason == "not_video":
            kind = _sniff(path)
            if kind is not None:
                raise _Reject(
                    "truncated",
                    f"{path} starts like an {kind} file but cannot be opened (its index is missing, "
                    "typically a copy or download cut short); re-copy or re-download it.",
                ) from exc
            raise _Reject(
                "not_video",
                f"{path} is {_describe_non_video(path)}, not a video; remove it or give it its real extension.",
            ) from exc
        raise _Reject(exc.reason, exc.message) from exc
    except Exception as exc:  # probe must never stop the run: anything else is unreadable
        raise _Reject(
            "unreadable", f"{path} could not be probed ({type(exc).__name__}: {exc}); check the file."
        ) from exc


def _is_attached_picture(stream) -> bool:
    # Audio files with cover art expose the picture as a one-frame "video" stream.

    try:
        return bool(stream.disposition & Disposition.attached_pic)
    except (AttributeError, TypeError):
        return False


def _tail_end(container, streams: list, video, start_s: float, decode: bool) -> tuple[float, int, str | None]:
    """Read from ``start_s`` (s) to the end; return (end time s, decode errors, first error).

    With ``decode`` every packet is decoded and the end is that of the last decoded frame
    (video: its time plus its duration; audio: plus samples / rate). Without it packets
    are only demuxed (cheap; used to measure a file whose header has no duration).

    Args:
        container: an open PyAV input container.
        streams: the streams to read (the video stream first, then optionally audio).
        video: the video stream (to tell video frames from audio frames).
        start_s: where to seek to (s); the demuxer lands on the key frame before it.
        decode: decode the packets (True) or only demux them (False).
    """
    try:
        container.seek(int(start_s * av.time_base), backward=True)  # container seek: AV_TIME_BASE units (us)
    except Exception:
        container.seek(0)  # some damaged files cannot seek (no index): read from the start
    end, errors, first_error = 0.0, 0, None
    try:
        for pkt in container.demux(*streams):
            if not decode:
                t = pkt.pts if pkt.pts is not None else pkt.dts
                if pkt.size and t is not None and pkt.time_base is not None:
                    end = max(end, float((t + (pkt.duration or 0)) * pkt.time_base))
                continue
            try:
                frames = pkt.decode()  # the final empty packet flushes frames still held back
            except Exception as exc:  # corrupt data: count it and carry on to find the real end
                errors += 1
                first_error = first_error or f"{type(exc).__name__}: {exc}"
                continue
            for fr in frames:
                if fr.time is None:
                    continue
                if pkt.stream is video:
                    dur = float(fr.duration * fr.time_base) if fr.duration and fr.time_base else 0.0
                else:
                    dur = fr.samples / float(fr.sample_rate)
                end = max(end, float(fr.time) + dur)
    except Exception as exc:  # a read error (data missing): the end is where reading stopped
        errors += 1
        first_error = first_error or f"{type(exc).__name__}: {exc}"
    return end, errors, first_error


def _verify_decodable(
    path: Path, claim_s: float, limits: IngestLimits, check_audio: bool = True,
    head_packets: int = 256, head_s: float = 10.0,
) -> tuple[float, str | None]:
    """Check that a video decodes at its start and all the way to the end its header claims.

    In one open of the container:

    1. a video frame and (with ``check_audio``) an audio frame must decode near the start:
       like a player, undecodable packets at the start are skipped (and counted in the
       warning), and the stream is rejected only when none of its first ``head_packets``
       packets, or of its first ``head_s`` seconds, gives a frame (a damaged first packet
       of an AVI's MP3 track plays fine and must not quarantine the video);
    2. everything from ``limits.tail_check_s`` before the claimed end (in practice from the
       key frame before that point) is decoded; the last decoded frame must end within
       ``limits.max_missing_s`` of the claimed duration.

    When the header has no duration (``claim_s <= 0``, e.g. a live-recorded webm) the whole
    file is first demuxed, without decoding, to measure it.

    Args:
        path: the video.
        claim_s: duration from the header (s), ``<= 0`` when unknown.
        limits: the tail window and the tolerated shortfall.
        check_audio: also decode the audio track (off when audio is not required, so an
            undecodable audio codec does not reject a video used without its sound).
        head_packets: packets of each stream tried for a first frame (256 are about 10 s
            of 25 fps video, 5 s of 48 kHz AAC).
        head_s: stream time (s) from the first packet tried for a first frame.

    Returns:
        ``(duration s, warning or None)``: the claimed duration (or the measured one when
        the header had none) and a note when packets at the start were skipped or a few
        tail packets failed to decode although the data reaches the end.

    Raises:
        _Reject: ``no_video_stream``, ``truncated`` or ``unreadable``.
    """
    try:
        container = av.open(str(path))
    except Exception as exc:
        raise _Reject("unreadable", f"{path} cannot be opened ({exc}); re-copy or re-encode it.") from exc
    with container as c:
        videos = [s for s in c.streams.video if not _is_attached_picture(s)]
        if not videos:
            raise _Reject(
                "no_video_stream", f"{path} has only a still picture (cover art), no video stream; remove it."
            )
        v = videos[0]
        # One decoder thread: the machine's cores are shared and the tail is short.
        v.codec_context.thread_count = 1
        a = c.streams.audio[0] if c.streams.audio and check_audio else None
        streams = [v] + ([a] if a is not None else [])
        head_notes = []
        for st in streams:
            what = "video" if st is v else "audio"
            n_tried, n_bad, first_bad, decoded, t_first = 0, 0, None, False, None
            try:
                c.seek(0)
                for pkt in c.demux(st):
                    n_tried += 1
                    ts = pkt.pts if pkt.pts is not None else pkt.dts
                    t = float(ts * pkt.time_base) if ts is not None and pkt.time_base else None
                    t_first = t if t_first is None else t_first
                    try:
                        decoded = bool(pkt.decode())
                    except av.error.FFmpegError as exc:  # damaged packet: a player skips it
                        n_bad += 1
                        first_bad = first_bad or f"{type(exc).__name__}: {exc}"
                    if decoded or n_tried >= head_packets or (t is not None and t - t_first > head_s):
                        break
            except Exception as exc:  # a read (demux) error before any frame decoded
                raise _Reject(
                    "unreadable", f"{path}: the start of its {what} stream cannot be read ({exc}); re-encode the file."
                ) from exc
            if not decoded and n_bad:
                raise _Reject(
                    "unreadable",
                    f"{path}: none of the first {n_tried} {what} packets decodes ({n_bad} failed, first: {first_bad}); "
                    "the stream is damaged at the start: re-encode or re-download the file.",
                )
            if not decoded:
                raise _Reject("truncated", f"{path}: its {what} stream holds no decodable frame; re-export the file.")
            if n_bad:
                head_notes.append(f"{n_bad} damaged {what} packet(s) at the start skipped (first: {first_bad})")
        if claim_s <= 0:
            claim_s, _, _ = _tail_end(c, streams, v, 0.0, decode=False)
            if claim_s <= 0:
                raise _Reject("truncated", f"{path}: no timed packet could be read; re-export the file.")
        start = max(0.0, claim_s - limits.tail_check_s)
        end, errors, first_error = _tail_end(c, streams, v, start, decode=True)
    missing = claim_s - end
    if missing > limits.max_missing_s:
        detail = f" ({errors} read/decode error(s), first: {first_error})" if errors else ""
        raise _Reject(
            "truncated",
            f"{path}: the header says {claim_s:.2f} s but decodable data ends at {end:.2f} s{detail}; "
            "the file was cut short or damaged at the end: re-copy or re-download it.",
        )
    notes = list(head_notes)
    if errors:
        notes.append(
            f"{errors} packet(s) near the end failed to decode (first: {first_error}) "
            f"but data reaches {end:.2f} s"
        )
    return claim_s, "; ".join(notes) or None


def _check_duration(path: Path, duration: float, min_clip_s: float, limits: IngestLimits) -> None:
    """Reject absurd durations: ``too_long`` above the limit, ``too_short`` below ``min_clip_s``.

    Args:
        path: the video (named in the message).
        duration: its duration (s).
        min_clip_s: shortest usable video (s).
        limits: holds ``max_duration_s``.
    """
    if duration > limits.max_duration_s:
        raise _Reject(
            "too_long",
            f"{path} lasts {duration:.0f} s, above the {limits.max_duration_s:.0f} s limit; "
            "split it into parts or raise limits.max_duration_s.",
        )
    if duration < min_clip_s:
        raise _Reject(
            "too_short",
            f"{path} lasts {duration:.2f} s, below min_clip_s={min_clip_s} s; remove it or lower min_clip_s.",
        )


def _stem_lookup(directory: Path) -> dict[str, str]:
    """Lower-cased NFC file names of ``directory`` -> real names (cached per directory state).

    Keyed by the directory's mtime so a Ray worker reused for a later ingest never sees a
    stale listing; one ``listdir`` per folder instead of one per video.
    """
    try:
        key = (str(directory), os.stat(directory).st_mtime_ns)
    except OSError:
        return {}
    if key not in _LISTINGS:
        try:
            _LISTINGS[key] = {_nfc(n).lower(): n for n in os.listdir(directory)}
        except OSError:
            _LISTINGS[key] = {}
        while len(_LISTINGS) > 256:  # bounded: a worker may see thousands of folders
            _LISTINGS.pop(next(iter(_LISTINGS)))
    return _LISTINGS[key]


_LISTINGS: dict[tuple[str, int], dict[str, str]] = {}


def _check_stem(path: Path, video: Path) -> float:
    """Open a sidecar WAV and read its last block; return its duration (s).

    Args:
        path: the stem file.
        video: the video it belongs to (named in the message).

    Raises:
        _Reject: ``bad_sidecar`` naming the stem.
    """
    try:
        with sf.SoundFile(str(path)) as f:
            if f.frames <= 0 or f.samplerate <= 0:
                raise ValueError("no audio frames")
            # Reading the last 1024 frames catches a header that promises more than the file has.
            f.seek(max(0, f.frames - 1024))
            f.read(1024, dtype="float32")
            return f.frames / f.samplerate
    except Exception as exc:
        raise _Reject(
            "bad_sidecar",
            f"{video} skipped: its sidecar stem {path} cannot be read ({exc}); fix or remove the stem.",
        ) from exc


# --------------------------------------------------------------------------- main


def check_file(path: str, rel: str, min_clip_s: float = 1.0, limits: dict | None = None,
               require_audio: bool = True) -> dict:
    """Every ingest check of one video file; the result is JSON-able (it crosses Ray and the probe cache).

    Probe, stream and resolution checks, the decodability of start and end, the duration
    bounds, and the sidecar stems. Never raises: a file that cannot be used comes back with
    ``ok: False`` and the quarantine reason and message.

    Args:
        path: the video file (absolute).
        rel: its POSIX path relative to SRC (named in warnings).
        min_clip_s: shortest usable video (s).
        limits: :class:`IngestLimits` as a dict (``None``: the defaults).
        require_audio: quarantine videos without an audio track.

    Returns:
        ``{"rel", "ok": True, "info": MediaInfo dict, "duration_s", "stems": {kind: path or None},
        "warnings": [...]}`` or ``{"rel", "ok": False, "reason", "message"}``.
    """
    lim = IngestLimits(**(limits or {}))
    p = Path(path)
    warnings: list[str] = []
    try:
        info = _probe(p)
        if not info.has_video:
            fmt = info.container.split(",")
            if not any(f in _VIDEO_FORMAT_NAMES for f in fmt):
                raise _Reject(
                    "not_video",
                    f"{p} is a '{info.container}' audio file, not a video; remove it or give it its real extension.",
                )
            raise _Reject(
                "no_video_stream",
                f"{p} ({info.container}) has no video stream" + (", only audio" if info.has_audio else "")
                + "; remove it or replace it with the video.",
            )
        w, h = info.width, info.height
        if not (lim.min_side_px <= w <= lim.max_side_px and lim.min_side_px <= h <= lim.max_side_px):
            raise _Reject(
                "bad_resolution",
                f"{p} is {w}x{h} px; accepted sides are {lim.min_side_px}-{lim.max_side_px} px: "
                "re-encode it at a usual size or remove it.",
            )
        if require_audio and (not info.has_audio or info.audio_sr <= 0 or info.audio_channels <= 0):
            raise _Reject(
                "no_audio",
                f"{p} has no audio track; training needs the soundtrack: use a version with audio, "
                "or ingest with require_audio=False for video-only use.",
            )
        claim = float(info.duration_s) if info.duration_s and math.isfinite(info.duration_s) else 0.0
        if claim > 0:  # cheap checks before decoding anything
            _check_duration(p, claim, min_clip_s, lim)
        duration, tail_warning = _verify_decodable(p, claim, lim, check_audio=require_audio)
        if tail_warning:
            warnings.append(f"{rel}: {tail_warning}")
        if claim <= 0:  # the header had no duration: check the measured one
            _check_duration(p, duration, min_clip_s, lim)
        stems: dict[str, str | None] = {}
        names = _stem_lookup(p.parent)
        for kind in STEM_KINDS:
            found = names.get(_nfc(f"{p.stem}.{kind}.wav").lower())
            if found is None:
                stems[kind] = None
                continue
            stem_path = p.parent / found
            stem_s = _check_stem(stem_path, p)
            if stem_s < duration - lim.max_missing_s:
                warnings.append(f"{rel}: {kind} stem lasts {stem_s:.2f} s, video {duration:.2f} s")
            stems[kind] = str(stem_path.absolute())
    except _Reject as rej:
        return {"rel": rel, "ok": False, "reason": rej.reason, "message": rej.message}
    except Exception as exc:  # one odd file must never stop the run
        return {"rel": rel, "ok": False, "reason": "unreadable",
                "message": f"{p} failed an ingest check ({type(exc).__name__}: {exc}); inspect or re-encode it."}
    return {"rel": rel, "ok": True, "info": info.to_dict(), "duration_s": float(duration), "stems": stems,
            "warnings": warnings}


#: A mapper runs :func:`check_file` over ``(path, rel)`` items and yields each result as it
#: finishes, in any order: :func:`serial_map` here, Ray tasks in ``soundtrack.distributed.ingest``.
Mapper = Callable[[Sequence[tuple[str, str]], Mapping[str, Any]], Iterator[dict]]


def serial_map(items: Sequence[tuple[str, str]], kwargs: Mapping[str, Any]) -> Iterator[dict]:
    """:func:`check_file` on each ``(path, rel)`` in turn, in this process.

    Args:
        items: the files to check.
        kwargs: :func:`check_file`'s other arguments.
    """
    for path, rel in items:
        yield check_file(path, rel, **kwargs)


def _probe_key(path: Path, kwargs: Mapping[str, Any]) -> dict | None:
    """What a cached check depends on: the file's size and mtime and the check's arguments."""
    try:
        st = path.stat()
    except OSError:
        return None
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns,
            "args": hashlib.sha1(json.dumps(kwargs, sort_keys=True).encode()).hexdigest()[:12]}


def _probe_path(out: Path, rel: str) -> Path:
    return out / PROBE_DIR / f"{hashlib.sha1(rel.encode('utf-8')).hexdigest()[:20]}.json"


class _Progress:
    """About one log line per 10 % of the files (rate and time left), and the last file."""

    def __init__(self, n: int, cached: int):
        self.n, self.t0, self.done, self.cached = n, time.monotonic(), cached, cached
        self.step = max(1, math.ceil(n / 10))

    def tick(self, n_bad: int) -> None:
        self.done += 1
        if self.done % self.step and self.done != self.n:
            return
        rate = (self.done - self.cached) / max(time.monotonic() - self.t0, 1e-9)
        left = (self.n - self.done) / rate if rate > 0 else 0.0
        log.info(f"ingest: {self.done}/{self.n} files ({100 * self.done // max(self.n, 1)}%), {n_bad} quarantined, "
                 f"{self.cached} from an earlier run, {rate:.1f} files/s, ~{left:.0f} s left")


def _write_parquet(df: pd.DataFrame, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    df.to_parquet(tmp, index=False)
    os.replace(tmp, path)  # atomic: readers never see half a file


def _spans(duration: float, clip_s: float, pad_short: bool,
           segments: list[dict] | None) -> tuple[list[tuple[float, float, float, dict | None]], bool]:
    """The clips of one video: ``[(start s, duration s, pad s, segment row or None)]`` and whether it is short.

    Without ``segments``: consecutive clips from 0 s (the remainder dropped); a video shorter
    than a clip gives one padded clip with ``pad_short``, none otherwise. With ``segments``
    (rows of an imported layout, :mod:`soundtrack.data.importers`): consecutive clips inside
    each ``[start_s, end_s)`` span (``end_s`` None: to the end); a span shorter than one clip
    (VGGSound's 10 s segments against 10.24 s clips) gives one clip, extended past the span's
    end while the video lasts, else zero-padded.
    """
    slack = _CLIP_COUNT_SLACK_S
    if segments is None:
        n = int(math.floor((duration + slack) / clip_s))
        if n == 0:
            return ([(0.0, duration, clip_s - duration, None)] if pad_short else []), True
        return [(k * clip_s, clip_s, 0.0, None) for k in range(n)], False
    out = []
    for seg in segments:
        s0 = max(0.0, float(seg.get("start_s") or 0.0))
        end = seg.get("end_s")
        s1 = min(duration, float(end)) if end is not None else duration
        if s1 - s0 <= 0:
            continue
        n = int(math.floor((s1 - s0 + slack) / clip_s))
        if n >= 1:
            out += [(s0 + k * clip_s, clip_s, 0.0, seg) for k in range(n)]
        elif duration - s0 + slack >= clip_s:  # short span inside a longer video: take a whole clip
            out.append((s0, clip_s, 0.0, seg))
        else:
            real = duration - s0
            out.append((s0, real, clip_s - real, seg))
    return out, False


SPLIT_BY = ("source", "time")


def split_by_time(rows: list[dict], fractions: tuple[float, float, float]) -> list[dict]:
    """Split each video's clips by time: its first clips train, the next val, the last test.

    The fallback for folders with too few videos to hold whole videos out. Per source with
    ``n`` clips in time order: ``n_test = round(n * f_test)`` and ``n_val = round(n * f_val)``,
    each at least 1 when its fraction is above 0 and the video has at least 3 clips (a video
    of 1-2 clips stays in train); the rest trains. ``source_id`` becomes
    ``<source>.<split>`` so the manifest's rule "a source in one split only" still holds for
    what is a source now: a contiguous stretch of one video.

    Args:
        rows: manifest rows (``source_id``, ``start_s``, ``split``), any order.
        fractions: train, val, test fractions.

    Returns:
        The rows with ``split`` and ``source_id`` rewritten, in the input order.
    """
    by_src: dict[str, list[dict]] = {}
    for r in rows:
        by_src.setdefault(r["source_id"], []).append(r)
    _, f_val, f_test = fractions
    for sid, part in by_src.items():
        part.sort(key=lambda r: r["start_s"])
        n = len(part)
        n_test = max(int(round(n * f_test)), 1 if f_test > 0 and n >= 3 else 0)
        n_val = max(int(round(n * f_val)), 1 if f_val > 0 and n >= 3 else 0)
        n_train = max(n - n_val - n_test, 0)
        for i, r in enumerate(part):
            split = "train" if i < n_train else ("val" if i < n_train + n_val else "test")
            r["split"], r["source_id"] = split, f"{sid}.{split}"
    return rows


def ingest(
    src: str | os.PathLike,
    out: str | os.PathLike,
    clip_s: float = 10.24,
    pad_short: bool = False,
    min_clip_s: float = 1.0,
    splits: tuple[float, float, float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    metadata_csv: str | os.PathLike | None = None,
    limits: IngestLimits = IngestLimits(),
    require_audio: bool = True,
    extensions: tuple[str, ...] = media.VIDEO_EXTENSIONS,
    segments: pd.DataFrame | None = None,
    mapper: Mapper | None = None,
    split_by: str = "source",
) -> IngestResult:
    """Scan ``src`` for videos, quarantine bad files, cut clips and write the manifest.

    Each video of duration ``D`` gives ``floor(D / clip_s)`` consecutive clips starting at
    ``k * clip_s``; the remainder shorter than a clip is dropped. A video shorter than one
    clip (but at least ``min_clip_s``) is listed under ``short`` in ``ingest.json`` and
    skipped, or, with ``pad_short``, becomes one clip with ``duration_s = D`` and
    ``pad_s = clip_s - D`` (so ``duration_s + pad_s == clip_s``).

    The per-file checks (:func:`check_file`) run through ``mapper`` (serially by default;
    ``soundtrack.distributed.ingest`` runs one Ray task per file) and each result is kept
    in ``out/probe/``, so a killed run resumes where it stopped and a re-run re-checks
    only new or changed files.

    Args:
        src: folder scanned recursively (or a single video file).
        out: output folder (created); if inside ``src`` it is not scanned.
        clip_s: clip length (s).
        pad_short: include videos shorter than one clip as one zero-padded clip.
        min_clip_s: videos shorter than this (s) are quarantined as ``too_short``.
        splits: train, val, test fractions of *source videos* (sum to 1).
        seed: changes the split assignment (deterministic for a given seed).
        metadata_csv: optional CSV with a ``file`` column (path relative to ``src`` or a
            basename), an optional ``caption`` column and other columns copied to
            ``label_<col>``.
        limits: resolution, duration and truncation bounds.
        require_audio: quarantine videos without an audio track (``no_audio``).
        extensions: file extensions taken as videos (case-insensitive).
        segments: an imported layout's segment table (``file`` relative to ``src``,
            ``start_s``, ``end_s``, ``caption``, ``split``, ``label_*``;
            :func:`soundtrack.data.importers.import_layout`): only the files it names are
            ingested, cut inside its spans, with its captions, labels and (when given) splits;
            a table that publishes train and test only (VGGSound, AudioSet) has its val
            sources drawn from its train sources by the split hash.
        mapper: how the per-file checks run (:data:`Mapper`; ``None``: :func:`serial_map`).
        split_by: ``source`` (default: whole videos per split, nothing leaks) or ``time``,
            the documented fallback for folders with too few videos to hold some out:
            :func:`split_by_time` keeps the start of every video for training and holds out
            its later clips (``source_id`` becomes ``<source>.<split>``).

    Returns:
        An :class:`IngestResult` (paths, manifest and quarantine frames, summary).

    Raises:
        FileNotFoundError: ``src`` does not exist.
        ValueError: bad parameters or a metadata CSV without a ``file`` column.
    """
    src_p = Path(src).absolute()
    out_p = Path(out).absolute()
    if not src_p.exists():
        raise FileNotFoundError(f"source folder {src_p} does not exist")
    if not clip_s > 0:
        raise ValueError(f"clip_s must be > 0 s, got {clip_s}")
    if not 0 < min_clip_s <= clip_s:
        raise ValueError(f"min_clip_s must be in (0, clip_s={clip_s}] s, got {min_clip_s}")
    splits = tuple(float(x) for x in splits)
    manifest_mod.split_for_source("check", splits, seed)  # raises ValueError on bad fractions early
    if split_by not in SPLIT_BY:
        raise ValueError(f"split_by must be one of {', '.join(SPLIT_BY)}, got {split_by!r}")

    files = _scan(src_p, out_p, extensions)
    seg_rows: dict[str, list[dict]] | None = None
    unlisted: list[str] = []
    if segments is not None:
        seg_rows = {}
        for r in manifest_mod.records(segments):
            seg_rows.setdefault(_nfc(str(r["file"])), []).append(r)
        unlisted = [rel for _, rel in files if rel not in seg_rows]
        files = [(p, rel) for p, rel in files if rel in seg_rows]
    rels = [rel for _, rel in files]
    meta, label_cols, meta_report = _load_metadata(metadata_csv, src_p, rels)
    if seg_rows is not None:
        for c in segments.columns:
            if c.startswith("label_") and c not in label_cols:
                label_cols.append(c)
    dup_of = _find_duplicate_files(files)
    log.info(f"ingest: {len(files)} video file(s) under {src_p}")

    # 1. per-file checks: cached results of an earlier run, the rest through the mapper
    kwargs = {"min_clip_s": float(min_clip_s), "limits": asdict(limits), "require_audio": bool(require_audio)}
    (out_p / PROBE_DIR).mkdir(parents=True, exist_ok=True)
    results: dict[str, dict] = {}
    todo: list[tuple[str, str]] = []
    keys: dict[str, dict | None] = {}
    for path, rel in files:
        if rel in dup_of:
            results[rel] = {"rel": rel, "ok": False, "reason": "duplicate_file",
                            "message": f"{path} is byte-identical to {dup_of[rel]}; remove the copy "
                                       "(it would leak between splits)."}
            continue
        keys[rel] = _probe_key(path, kwargs)
        cache = _probe_path(out_p, rel)
        if keys[rel] is not None and cache.is_file():
            try:
                doc = json.loads(cache.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):  # a torn cache file: check again
                doc = {}
            if doc.get("key") == keys[rel]:
                results[rel] = doc["result"]
                continue
        todo.append((str(path), rel))
    prog = _Progress(len(files), cached=len(results))
    n_bad = sum(1 for r in results.values() if not r["ok"])
    for res in (mapper or serial_map)(todo, kwargs):
        rel = res["rel"]
        results[rel] = res
        n_bad += int(not res["ok"])
        if keys.get(rel) is not None:
            cache = _probe_path(out_p, rel)
            tmp = cache.with_name(cache.name + ".tmp")
            tmp.write_text(json.dumps({"key": keys[rel], "result": res}), encoding="utf-8")
            os.replace(tmp, cache)  # atomic: a kill leaves the old result or the new one
        prog.tick(n_bad)

    # 2. clips, ids and splits, in sorted file order (the manifest never depends on task order)
    rows: list[dict] = []
    quarantine: list[dict] = []
    short: list[dict] = []
    warnings: list[str] = []
    seen_clip_ids: dict[str, str] = {}
    stats = {"containers": Counter(), "audio_sr": Counter(), "audio_channels": Counter(), "vfr": 0}
    publishes_val = seg_rows is not None and any(r.get("split") == "val" for v in seg_rows.values() for r in v)
    for path, rel in files:
        res = results[rel]
        if not res["ok"]:
            quarantine.append({"path": str(path.absolute()), "reason": res["reason"], "message": res["message"]})
            continue
        warnings += res.get("warnings", [])
        info = media.MediaInfo(**res["info"])
        duration, stems = float(res["duration_s"]), res["stems"]
        spans, is_short = _spans(duration, clip_s, pad_short, None if seg_rows is None else seg_rows[rel])
        if is_short:
            short.append({"path": rel, "duration_s": round(duration, 3), "included": bool(pad_short)})
        if not spans:  # reported in ingest.json, neither quarantined nor clipped
            continue
        source_id = source_id_for(rel)
        ids = [clip_id_for(source_id, k) for k in range(len(spans))]
        clash = next((cid for cid in ids if cid in seen_clip_ids), None)
        if clash is not None:
            quarantine.append({"path": str(path.absolute()), "reason": "duplicate_clip_id",
                               "message": f"{path}: clip id {clash} is already used by {seen_clip_ids[clash]}; "
                                          "rename one of the files."})
            continue
        split = manifest_mod.split_for_source(source_id, splits, seed)
        published = sorted({sp["split"] for _, _, _, sp in spans if sp is not None and sp.get("split")})
        if published:  # the layout's own split wins (one per source: splits never share a video)
            split = published[0]
            if len(published) > 1:
                warnings.append(f"{rel}: segments in splits {published}; all its clips go to {split}")
            if split == "train" and not publishes_val and splits[1] > 0:
                # VGGSound / AudioSet publish train and test only: val is drawn from their train
                # sources by the same hash, with probability f_val / (f_train + f_val)
                f_tr = splits[0] / (splits[0] + splits[1])
                split = manifest_mod.split_for_source(source_id, (f_tr, 1.0 - f_tr, 0.0), seed)
        m = meta.get(rel, {"caption": "", "labels": {}})
        for cid, (start, dur, pad, seg) in zip(ids, spans):
            seen_clip_ids[cid] = rel
            row = {
                "clip_id": cid,
                "source_id": source_id,
                "split": split,
                "video_path": str(path.absolute()),
                "start_s": round(float(start), 6),
                "duration_s": round(float(dur), 6),
                "pad_s": round(float(pad), 6),
                "music_path": stems["music"],
                "sfx_path": stems["sfx"],
                "caption": (seg.get("caption") or "") if seg is not None and seg.get("caption") else m["caption"],
                "src_container": info.container,
                "src_width": int(info.width),
                "src_height": int(info.height),
                "src_fps": float(info.fps),
                "src_vfr": bool(info.vfr),
                "src_duration_s": round(float(duration), 6),
                "src_audio_sr": int(info.audio_sr),
                "src_audio_channels": int(info.audio_channels),
            }
            for lab in label_cols:
                v = seg.get(lab) if seg is not None else None
                row[lab] = v if v is not None else m["labels"].get(lab)
            rows.append(row)
        stats["containers"][info.container] += 1
        stats["audio_sr"][str(info.audio_sr)] += 1
        stats["audio_channels"][str(info.audio_channels)] += 1
        stats["vfr"] += int(info.vfr)

    columns = list(manifest_mod.REQUIRED_COLUMNS) + [
        "src_container", "src_width", "src_height", "src_fps", "src_vfr",
        "src_duration_s", "src_audio_sr", "src_audio_channels",
    ] + label_cols  # fmt: skip
    if split_by == "time":
        rows = split_by_time(rows, splits)
        warnings.append("split_by=time: val and test clips are later moments of the training videos; "
                        "their scores measure fit to these videos, not generalisation to new ones")
    mdf = pd.DataFrame(rows, columns=columns)
    qdf = pd.DataFrame(quarantine, columns=["path", "reason", "message"])

    out_p.mkdir(parents=True, exist_ok=True)
    manifest_path = manifest_mod.write_manifest(mdf, out_p / MANIFEST_NAME)
    quarantine_path = out_p / QUARANTINE_NAME
    _write_parquet(qdf, quarantine_path)

    per_split = {}
    for s in manifest_mod.SPLITS:
        part = mdf[mdf["split"] == s]
        per_split[s] = {
            "sources": int(part["source_id"].nunique()),
            "clips": int(len(part)),
            "hours": round(float((part["duration_s"]).sum()) / 3600.0, 4),
        }
    summary = {
        "src": str(src_p),
        "out": str(out_p),
        "params": {
            "clip_s": clip_s,
            "pad_short": pad_short,
            "min_clip_s": min_clip_s,
            "splits": list(splits),
            "seed": seed,
            "require_audio": require_audio,
            "extensions": list(extensions),
            "split_by": split_by,
            "limits": asdict(limits),
        },
        "n_files": len(files),
        "n_sources": int(mdf["source_id"].nunique()),
        "n_clips": int(len(mdf)),
        "splits": per_split,
        "quarantined": {"total": len(qdf), "by_reason": dict(sorted(Counter(qdf["reason"]).items()))},
        "short": short,
        "media": {
            "containers": dict(sorted(stats["containers"].items())),
            "audio_sr": dict(sorted(stats["audio_sr"].items(), key=lambda kv: int(kv[0]))),
            "audio_channels": dict(sorted(stats["audio_channels"].items(), key=lambda kv: int(kv[0]))),
            "vfr_sources": stats["vfr"],
        },
        "metadata": meta_report,
        "segments": None if seg_rows is None else {"files": len(seg_rows), "unlisted_files": len(unlisted),
                                                   "unlisted_examples": unlisted[:5]},
        "checked_now": len(todo),
        "warnings": warnings,
    }
    summary_path = out_p / SUMMARY_NAME
    tmp = summary_path.with_name(summary_path.name + ".tmp")
    tmp.write_text(json.dumps(summary, indent=2, ensure_ascii=False), encoding="utf-8")
    os.replace(tmp, summary_path)

    log.info(f"ingest: {len(mdf)} clips from {summary['n_sources']} videos "
        f"(train {per_split['train']['clips']}, val {per_split['val']['clips']}, test {per_split['test']['clips']}), "
        f"{len(short)} short, {len(qdf)} quarantined -> {out_p}")
    if len(mdf) == 0:
        log.warning(f"ingest: no usable clip; see {quarantine_path}")
    return IngestResult(out_p, manifest_path, quarantine_path, summary_path, mdf, qdf, summary)
