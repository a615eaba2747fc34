"""Turn a public data set's published segment list into a segment table for ``ingest``.

Public audio-visual data sets publish *which part of which video* they use as a CSV of
video ids with start/end seconds, labels and sometimes captions or splits; the videos
themselves are downloaded separately, by tools that each name the files their own way.
:func:`import_layout` reads such a CSV in one of the :data:`LAYOUTS`, matches every row
to a local file under SRC by name only (nothing is decoded), and returns

- the **segment table** (:data:`SEGMENT_COLUMNS` plus ``label_<name>`` columns), one row
  per matched segment in CSV order: ``file`` (POSIX path relative to SRC, NFC), ``start_s``
  (float, s), ``end_s`` (float, or ``None`` = to the end of the video), ``caption`` (str,
  ``""`` when none), ``split`` (``train``/``val``/``test``, or ``None`` when the layout
  publishes none) and the labels (``None`` when missing, never NaN; object dtype);
- a **report** dict: counts and the first examples of unmatched rows, ambiguous rows,
  repeated rows and local videos that no segment uses. These never raise: a partial
  download is the normal case.

A file that does not follow the layout (wrong column count, a time that is not a number,
an unknown split) raises :class:`~soundtrack.errors.ManifestError` naming the line and the
layout expected.

Layouts (``layout=`` names):

- ``vggsound``: VGGSound's ``vggsound.csv`` (https://www.robots.ox.ac.uk/~vgg/data/vggsound/,
  also github.com/hche11/VGGSound ``data/vggsound.csv``). No header; rows
  ``youtube_id,start_seconds,label,split`` with ``split`` ``train`` or ``test``; labels that
  contain commas are quoted. Every segment is 10 s: ``end_s = start_seconds + 10``. Label
  column ``label_class`` (str).
- ``audioset``: AudioSet's ``balanced_train_segments.csv``, ``unbalanced_train_segments.csv``
  and ``eval_segments.csv`` (https://research.google.com/audioset/download.html). Lines
  starting with ``#`` are comments (the files open with three); then rows
  ``YTID, start_seconds, end_seconds, positive_labels`` with a space after each comma and
  ``positive_labels`` a quoted, comma-separated list of ontology MIDs
  (``"/m/09x0r,/t/dd00088"``). Label column ``label_mids`` (list[str]). The rows carry no
  split; the file name does: ``eval_segments*`` gives ``test``, ``*train_segments*`` gives
  ``train``, any other name ``None``.
- ``generic``: a header row, then one row per segment. Columns (names matched
  case-insensitively): ``file`` or ``path`` (a local path: relative to SRC, absolute
  inside SRC, or a basename unique under SRC, as ``ingest --metadata`` matches them) and/or
  ``id`` (also ``video_id``, ``youtube_id``, ``ytid``: a published id, matched by the naming
  patterns below); a row uses ``file`` when it is not empty, else ``id``. Optional
  ``start_s`` (also ``start``, ``start_seconds``), ``end_s`` (also ``end``, ``end_seconds``),
  ``caption``, ``split`` (``train``, ``val``/``valid``/``validation``, ``test``). Every other
  column becomes ``label_<column>`` (the name slugged as ``ingest`` does), its values ints
  when every non-empty value is an integer, floats when every one is a number, else text.
  A row without times means the whole video.

Automatic detection (``layout="auto"``), from the first non-blank line:

1. it starts with ``#``: ``audioset``;
2. one of its cells is a ``generic`` file or id column name (``file``, ``path``, ``id``,
   ``video_id``, ``youtube_id``, ``ytid``): ``generic``;
3. four cells, the 2nd and 3rd numbers: ``audioset`` (the comment lines stripped);
4. four cells, the 2nd a number and the 4th ``train`` or ``test``: ``vggsound``;
5. otherwise :class:`~soundtrack.errors.ManifestError` asking for ``layout=``.

Naming patterns (how a published id ``X`` with segment start ``S`` and end ``E`` is found
under SRC, recursively, with any extension of :data:`soundtrack.data.media.VIDEO_EXTENSIONS`
in any case):

- ``X.mp4``: the full video; the segment's times apply to it.
- ``X_<S>.mp4`` and ``X_<S>_<E>.mp4``: the segment already cut (the file starts at ``S``),
  so the table gets ``start_s = 0`` and ``end_s = E - S``. ``S``/``E`` are digits with an
  optional decimal part: zero-padded seconds (``X_000030``, VGGSound's downloads), decimal
  seconds (``X_30.000_40.000``, AudioSet tools), or integer milliseconds (``X_30000_40000``)
  -- an integer is read as seconds first and as milliseconds only when seconds do not fit
  the row. The times in the name must equal the row's (within 1 ms), so ``X_000050.mp4``
  is not the segment of ``X`` at 30 s.
- ``YX...``: any of the above with a ``Y`` in front when ``X`` is an 11-character YouTube
  id (the DCASE / PANNs convention); used only when no file matches without it.

When several files fit a row, the cut segment wins over the full video (for a row without
times the full video wins); two files at the same rank make the row *ambiguous*: it is
left out and reported. ``assume_cut=True`` treats files named by the id alone as already
cut too, for copies cut to their segment but saved as ``X.mp4``.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import re
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from soundtrack.data import media
from soundtrack.data.manifest import SPLITS
from soundtrack.errors import ConfigError, ManifestError

log = logging.getLogger(__name__)

#: The segment table's fixed columns, in order; ``label_<name>`` columns follow.
SEGMENT_COLUMNS: tuple[str, ...] = ("file", "start_s", "end_s", "caption", "split")

#: VGGSound's segment length (s): its CSV gives only the start.
VGGSOUND_SEGMENT_S = 10.0

#: How many examples each report list keeps (the count is always complete).
REPORT_EXAMPLES = 10

# Times in file names are printed with 3 decimals at most (ms); 1 ms absorbs the rounding.
_TIME_TOLERANCE_S = 1e-3

_VGGSOUND_FORM = "no header, rows youtube_id,start_seconds,label,split (split train or test)"
_AUDIOSET_FORM = "'#' comment lines, then rows YTID, start_seconds, end_seconds, \"positive_labels\""
_GENERIC_FORM = "a header row with a file or id column, optional start_s, end_s, caption, split, other columns labels"

_FILE_COLUMNS = ("file", "path")
_ID_COLUMNS = ("id", "video_id", "youtube_id", "ytid")
_START_COLUMNS = ("start_s", "start", "start_seconds")
_END_COLUMNS = ("end_s", "end", "end_seconds")

_SPLIT_NAMES = {**{s: s for s in SPLITS}, "valid": "val", "validation": "val"}

# AudioSet publishes its split as the file: eval_segments.csv is the evaluation set.
_AUDIOSET_SPLIT_BY_NAME = (("eval_segments", "test"), ("train_segments", "train"))

_NUMBER = r"\d+(?:\.\d+)?"
_ONE_TIME = re.compile(rf"(.+)_({_NUMBER})")
_TWO_TIMES = re.compile(rf"(.+)_({_NUMBER})_({_NUMBER})")
_YOUTUBE_ID = re.compile(r"[A-Za-z0-9_-]{11}")
_INT = re.compile(r"[+-]?\d+")
_FLOAT = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")


@dataclass(frozen=True)
class PublishedRow:
    """One segment as a layout publishes it, before it is matched to a local file.

    Args:
        line: the CSV line it came from (1-based, for messages).
        id: the published id, matched by the naming patterns (``None`` when ``file`` is set).
        file: a local path, matched as a path (``None`` when ``id`` is set).
        start_s: segment start (s) in the full video; ``None`` when the layout gives no times.
        end_s: segment end (s); ``None`` = to the end of the video.
        caption: free text, ``""`` when none.
        split: ``train``, ``val``, ``test`` or ``None``.
        labels: ``label_<name>`` -> value (``None`` when missing).
    """

    line: int
    id: str | None
    file: str | None
    start_s: float | None
    end_s: float | None
    caption: str = ""
    split: str | None = None
    labels: dict = field(default_factory=dict)


@dataclass
class ParsedLayout:
    """What a layout parser read from a CSV.

    Args:
        layout: the layout's name in :data:`LAYOUTS`.
        rows: the published segments in CSV order.
        label_columns: the ``label_<name>`` columns every row's ``labels`` has, in order.
    """

    layout: str
    rows: list[PublishedRow]
    label_columns: list[str]


# --------------------------------------------------------------------------- reading


def _nfc(text: str) -> str:
    # macOS stores names decomposed (NFD); ingest normalises the same way, so paths agree.
    return unicodedata.normalize("NFC", text)


def _bad(path: Path, line: int, layout: str, problem: str, form: str) -> ManifestError:
    return ManifestError(
        f"{path} line {line}: {problem}; the {layout} layout expects {form} "
        f"(pass layout= one of {sorted(LAYOUTS)} if this file has another layout)."
    )


def _read_rows(path: Path, layout: str, form: str, comments: bool) -> Iterator[tuple[int, list[str]]]:
    """Non-blank CSV records of ``path`` as ``(line number, stripped NFC cells)``.

    Args:
        path: the CSV file (UTF-8, a byte-order mark is ignored).
        layout: layout name, for messages.
        form: the layout's expected form, for messages.
        comments: skip records whose first cell starts with ``#``.
    """
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            # skipinitialspace: AudioSet writes ", " between cells, before quoted label lists.
            reader = csv.reader(f, skipinitialspace=True, strict=True)
            while True:
                try:
                    cells = next(reader)
                except StopIteration:
                    return
                except csv.Error as exc:
                    raise _bad(path, reader.line_num, layout, f"not valid CSV ({exc})", form) from exc
                cells = [_nfc(c.strip()) for c in cells]
                if not any(cells):
                    continue
                if comments and cells[0].startswith("#"):
                    continue
                yield reader.line_num, cells
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{path} is not UTF-8 text ({exc}); save it as UTF-8.") from exc


def _seconds(text: str, what: str, path: Path, line: int, layout: str, form: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise _bad(path, line, layout, f"{what} {text!r} is not a number", form) from None
    if not math.isfinite(value) or value < 0:
        raise _bad(path, line, layout, f"{what} {text!r} is not a finite number of seconds >= 0", form)
    return value


def _label_column(name: str) -> str:
    # The same slug as ingest's metadata CSV, so a column gets the same name either way.
    col = re.sub(r"\W+", "_", str(name).strip()).strip("_") or "unnamed"
    return col if col.startswith("label_") else f"label_{col}"


# --------------------------------------------------------------------------- layouts


def parse_vggsound(path: str | os.PathLike) -> ParsedLayout:
    """Read VGGSound's ``vggsound.csv``.

    Layout: no header; rows ``youtube_id,start_seconds,label,split`` (``split`` is ``train``
    or ``test``; a label holding a comma is quoted). Segments are
    :data:`VGGSOUND_SEGMENT_S` long. Source: https://www.robots.ox.ac.uk/~vgg/data/vggsound/.

    Args:
        path: the CSV file.

    Returns:
        Rows with ``id``, ``start_s``, ``end_s = start_s + 10``, ``split`` and the label
        ``label_class`` (str).

    Raises:
        ManifestError: a row with other than 4 cells, a start that is not a number, a split
            other than train/test.
    """
    path = Path(path)
    rows = []
    for line, cells in _read_rows(path, "vggsound", _VGGSOUND_FORM, comments=True):
        if len(cells) != 4:
            raise _bad(path, line, "vggsound", f"{len(cells)} cells instead of 4", _VGGSOUND_FORM)
        ytid, start_text, label, split = cells
        if not ytid:
            raise _bad(path, line, "vggsound", "empty youtube_id", _VGGSOUND_FORM)
        start = _seconds(start_text, "start_seconds", path, line, "vggsound", _VGGSOUND_FORM)
        if split.lower() not in ("train", "test"):
            raise _bad(path, line, "vggsound", f"split {split!r} is not train or test", _VGGSOUND_FORM)
        rows.append(PublishedRow(line=line, id=ytid, file=None, start_s=start, end_s=start + VGGSOUND_SEGMENT_S,
                                 split=split.lower(), labels={"label_class": label or None}))
    return ParsedLayout("vggsound", rows, ["label_class"])


def _audioset_split(path: Path) -> str | None:
    name = path.name.lower()
    for part, split in _AUDIOSET_SPLIT_BY_NAME:
        if part in name:
            return split
    return None


def parse_audioset(path: str | os.PathLike) -> ParsedLayout:
    """Read an AudioSet segments CSV (balanced / unbalanced train, eval).

    Layout: lines starting with ``#`` are comments; rows
    ``YTID, start_seconds, end_seconds, positive_labels`` (a space after each comma;
    ``positive_labels`` a quoted, comma-separated list of MIDs such as ``/m/09x0r``).
    Source: https://research.google.com/audioset/download.html.

    Args:
        path: the CSV file. Its name gives the split: ``eval_segments`` -> ``test``,
            ``train_segments`` -> ``train``, otherwise ``None``.

    Returns:
        Rows with ``id``, ``start_s``, ``end_s``, ``split`` and the label ``label_mids``
        (list[str], ``None`` when the list is empty).

    Raises:
        ManifestError: a row with other than 4 cells, a time that is not a number, an end
            not after the start.
    """
    path = Path(path)
    split = _audioset_split(path)
    rows = []
    for line, cells in _read_rows(path, "audioset", _AUDIOSET_FORM, comments=True):
        if len(cells) != 4:
            raise _bad(path, line, "audioset", f"{len(cells)} cells instead of 4", _AUDIOSET_FORM)
        ytid, start_text, end_text, labels = cells
        if not ytid:
            raise _bad(path, line, "audioset", "empty YTID", _AUDIOSET_FORM)
        start = _seconds(start_text, "start_seconds", path, line, "audioset", _AUDIOSET_FORM)
        end = _seconds(end_text, "end_seconds", path, line, "audioset", _AUDIOSET_FORM)
        if end <= start:
            raise _bad(path, line, "audioset", f"end_seconds {end_text} is not after start_seconds {start_text}",
                       _AUDIOSET_FORM)
        mids = [m.strip() for m in labels.split(",") if m.strip()]
        rows.append(PublishedRow(line=line, id=ytid, file=None, start_s=start, end_s=end, split=split,
                                 labels={"label_mids": mids or None}))
    return ParsedLayout("audioset", rows, ["label_mids"])


def _typed(values: list[str]) -> list:
    """A label column's cells as ints, floats or text (all non-empty ones alike), ``""`` -> None."""
    present = [v for v in values if v != ""]
    if present and all(_INT.fullmatch(v) for v in present):
        return [int(v) if v != "" else None for v in values]
    if present and all(_FLOAT.fullmatch(v) for v in present):
        return [float(v) if v != "" else None for v in values]
    return [v if v != "" else None for v in values]


def parse_generic(path: str | os.PathLike) -> ParsedLayout:
    """Read a CSV with a header naming its columns (any data set converted by hand).

    Layout: a header row with ``file``/``path`` and/or ``id``/``video_id``/``youtube_id``/
    ``ytid``; optional ``start_s``/``start``/``start_seconds``, ``end_s``/``end``/
    ``end_seconds``, ``caption``, ``split``; every other column becomes ``label_<column>``.
    Names are matched case-insensitively. A row uses ``file`` when it is not empty, else
    ``id``. Empty start and end mean the whole video; an end without a start starts at 0.

    Args:
        path: the CSV file.

    Returns:
        The rows, label values typed per column (ints, floats or text; ``None`` when empty).

    Raises:
        ManifestError: no file/id column, two columns for the same role, a row with another
            cell count than the header or neither file nor id, a bad time or split.
    """
    path = Path(path)
    records = _read_rows(path, "generic", _GENERIC_FORM, comments=False)
    first = next(records, None)
    if first is None:
        return ParsedLayout("generic", [], [])
    header_line, header = first
    roles: dict[str, int] = {}
    labels: list[tuple[str, int]] = []
    for i, name in enumerate(header):
        key = name.lower()
        role = next((r for r, names in (("file", _FILE_COLUMNS), ("id", _ID_COLUMNS), ("start", _START_COLUMNS),
                                        ("end", _END_COLUMNS), ("caption", ("caption",)), ("split", ("split",)))
                     if key in names), None)
        if role is None:
            labels.append((_label_column(name), i))
        elif role in roles:
            raise _bad(path, header_line, "generic",
                       f"columns {header[roles[role]]!r} and {name!r} both give the {role}", _GENERIC_FORM)
        else:
            roles[role] = i
    if "file" not in roles and "id" not in roles:
        raise _bad(path, header_line, "generic", f"the header {header} has no file or id column", _GENERIC_FORM)
    label_names = [n for n, _ in labels]
    repeated = sorted({n for n in label_names if label_names.count(n) > 1})
    if repeated:
        raise _bad(path, header_line, "generic", f"several columns become {repeated}; rename them", _GENERIC_FORM)

    def cell(cells: list[str], role: str) -> str:
        return cells[roles[role]] if role in roles else ""

    rows, raw_labels = [], []
    for line, cells in records:
        if len(cells) != len(header):
            raise _bad(path, line, "generic", f"{len(cells)} cells but the header has {len(header)}", _GENERIC_FORM)
        file, vid = cell(cells, "file"), cell(cells, "id")
        if not file and not vid:
            raise _bad(path, line, "generic", "neither file nor id is given", _GENERIC_FORM)
        start_text, end_text = cell(cells, "start"), cell(cells, "end")
        start = _seconds(start_text, "start", path, line, "generic", _GENERIC_FORM) if start_text else None
        end = _seconds(end_text, "end", path, line, "generic", _GENERIC_FORM) if end_text else None
        if end is not None:
            start = 0.0 if start is None else start
            if end <= start:
                raise _bad(path, line, "generic", f"end {end_text} is not after start {start_text or 0}",
                           _GENERIC_FORM)
        split_text = cell(cells, "split")
        split = _SPLIT_NAMES.get(split_text.lower()) if split_text else None
        if split_text and split is None:
            raise _bad(path, line, "generic", f"split {split_text!r} is not one of {sorted(_SPLIT_NAMES)}",
                       _GENERIC_FORM)
        rows.append(PublishedRow(line=line, id=None if file else vid, file=file or None, start_s=start, end_s=end,
                                 caption=cell(cells, "caption"), split=split))
        raw_labels.append([cells[i] for _, i in labels])
    columns = [_typed([r[k] for r in raw_labels]) for k in range(len(labels))]
    rows = [PublishedRow(line=r.line, id=r.id, file=r.file, start_s=r.start_s, end_s=r.end_s, caption=r.caption,
                         split=r.split, labels={n: col[j] for n, col in zip(label_names, columns)})
            for j, r in enumerate(rows)]
    return ParsedLayout("generic", rows, label_names)


#: Layout name -> parser. A new layout is one parser returning a :class:`ParsedLayout`
#: (add a clause to :func:`detect_layout` if its first line can tell it apart).
LAYOUTS: dict[str, Callable[[str | os.PathLike], ParsedLayout]] = {
    "vggsound": parse_vggsound,
    "audioset": parse_audioset,
    "generic": parse_generic,
}


def _is_number(text: str) -> bool:
    return _FLOAT.fullmatch(text) is not None


def detect_layout(csv_path: str | os.PathLike) -> str:
    """Name the layout of ``csv_path`` from its first non-blank line (rule in the module doc).

    Args:
        csv_path: the CSV file.

    Returns:
        A key of :data:`LAYOUTS`.

    Raises:
        ManifestError: the file is empty or its first line fits no layout.
    """
    path = Path(csv_path)
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        first = next((ln for ln in f if ln.strip()), None)
    if first is None:
        raise ManifestError(f"{path} is empty: no layout to detect.")
    if first.lstrip().startswith("#"):
        return "audioset"
    cells = [c.strip() for c in next(csv.reader([first], skipinitialspace=True))]
    if any(c.lower() in _FILE_COLUMNS + _ID_COLUMNS for c in cells):
        return "generic"
    if len(cells) == 4 and _is_number(cells[1]) and _is_number(cells[2]):
        return "audioset"
    if len(cells) == 4 and _is_number(cells[1]) and cells[3].lower() in ("train", "test"):
        return "vggsound"
    raise ManifestError(
        f"{path}: cannot tell the layout from its first line {first.strip()!r}. Pass layout= one of "
        f"{sorted(LAYOUTS)}: vggsound is {_VGGSOUND_FORM}; audioset is {_AUDIOSET_FORM}; generic is {_GENERIC_FORM}."
    )


# --------------------------------------------------------------------------- matching


@dataclass(frozen=True)
class _NameParse:
    """One reading of a local file's name: which id it names and which times it carries."""

    rel: str
    kind: str  # "id" (full video), "id_start" or "id_start_end" (an already cut segment)
    y_prefix: bool
    start: str | None = None
    end: str | None = None

    @property
    def pattern(self) -> str:
        return ("Y+" if self.y_prefix else "") + self.kind


def _scan_videos(src: Path) -> list[str]:
    """Relative POSIX paths (NFC) of the video files under ``src``, sorted."""
    exts = tuple(e.lower() for e in media.VIDEO_EXTENSIONS)
    found = []
    # followlinks=False: a symlinked directory loop must not make the scan endless.
    for dirpath, dirnames, filenames in os.walk(src, followlinks=False):
        dirnames.sort()
        for name in filenames:
            if os.path.splitext(name)[1].lower() in exts:
                found.append(_nfc((Path(dirpath) / name).relative_to(src).as_posix()))
    return sorted(found)


def _name_parses(rel: str) -> list[tuple[str, _NameParse]]:
    """Every ``(id, reading)`` a file name allows (an id may itself end in ``_<digits>``)."""
    stem = os.path.splitext(rel.rsplit("/", 1)[-1])[0]
    # The Y-prefixed readings only count when what follows is an 11-character YouTube id.
    variants = [(stem, False), (stem[1:], True)] if stem.startswith("Y") else [(stem, False)]
    out = []
    for text, y in variants:
        if not y or _YOUTUBE_ID.fullmatch(text):
            out.append((text, _NameParse(rel, "id", y)))
        m = _ONE_TIME.fullmatch(text)
        if m and (not y or _YOUTUBE_ID.fullmatch(m.group(1))):
            out.append((m.group(1), _NameParse(rel, "id_start", y, m.group(2))))
        m = _TWO_TIMES.fullmatch(text)
        if m and float(m.group(3)) > float(m.group(2)) and (not y or _YOUTUBE_ID.fullmatch(m.group(1))):
            out.append((m.group(1), _NameParse(rel, "id_start_end", y, m.group(2), m.group(3))))
    return out


_NO_MATCH = object()


def _cut_end(p: _NameParse, start: float, end: float | None):
    """The file's end (s, or None) when its name's times are the row's, else ``_NO_MATCH``.

    An integer is read as seconds first, then as milliseconds; a decimal only as seconds.
    """
    units = (1.0,) if "." in (p.start or "") + (p.end or "") else (1.0, 1e-3)
    for scale in units:
        if abs(float(p.start) * scale - start) > _TIME_TOLERANCE_S:
            continue
        file_end = float(p.end) * scale if p.end is not None else None
        if end is not None and file_end is not None and abs(file_end - end) > _TIME_TOLERANCE_S:
            continue
        return file_end
    return _NO_MATCH


@dataclass
class _Match:
    rel: str | None = None
    start_s: float = 0.0
    end_s: float | None = None
    pattern: str = ""
    candidates: list[str] = field(default_factory=list)  # set when ambiguous


def _match_path(row: PublishedRow, src_abs: str, rel_set: set[str], by_base: dict[str, list[str]]) -> _Match:
    key = _nfc(row.file.replace("\\", "/"))
    if os.path.isabs(key) and os.path.abspath(key).startswith(src_abs + os.sep):
        key = _nfc(Path(os.path.abspath(key)).relative_to(src_abs).as_posix())
    while key.startswith("./"):
        key = key[2:]
    start = 0.0 if row.start_s is None else row.start_s
    if key in rel_set:
        return _Match(key, start, row.end_s, "path")
    hits = by_base.get(key, []) if "/" not in key else []
    if len(hits) == 1:
        return _Match(hits[0], start, row.end_s, "path")
    return _Match(candidates=hits)


def _match_id(row: PublishedRow, index: dict[str, list[_NameParse]], assume_cut: bool) -> _Match:
    full, cut = {False: [], True: []}, {False: [], True: []}
    for p in index.get(row.id, []):
        if p.kind == "id":
            full[p.y_prefix].append((p, None))
        elif row.start_s is None:
            cut[p.y_prefix].append((p, None))
        else:
            file_end = _cut_end(p, row.start_s, row.end_s)
            if file_end is not _NO_MATCH:
                cut[p.y_prefix].append((p, file_end))
    # Without times the row means the whole video; with times the cut segment is the exact one.
    order = (full, cut) if row.start_s is None else (cut, full)
    for y in (False, True):
        for tier in order:
            hits = tier[y]
            rels = sorted({p.rel for p, _ in hits})
            if not rels:
                continue
            if len(rels) > 1:
                return _Match(candidates=rels)
            p, file_end = hits[0]
            if row.start_s is None:
                return _Match(p.rel, 0.0, None, p.pattern)
            if p.kind == "id" and not assume_cut:
                return _Match(p.rel, row.start_s, row.end_s, p.pattern)
            # An already cut file starts at the segment's start.
            end = row.end_s if row.end_s is not None else file_end
            return _Match(p.rel, 0.0, None if end is None else end - row.start_s, p.pattern)
    return _Match()


def _describe(row: PublishedRow) -> str:
    what = f"file {row.file}" if row.file is not None else f"id {row.id}"
    if row.start_s is not None:
        what += f" at {row.start_s:g}-{row.end_s:g} s" if row.end_s is not None else f" from {row.start_s:g} s"
    return f"line {row.line}: {what}"


def _listing(items: list[str]) -> dict:
    return {"count": len(items), "examples": items[:REPORT_EXAMPLES]}


def _table(records: list[dict], label_columns: list[str]) -> pd.DataFrame:
    # Built column by column: a list of dicts would turn a float column with None into NaN.
    data = {"file": pd.Series([r["file"] for r in records], dtype=object),
            "start_s": pd.Series([r["start_s"] for r in records], dtype="float64")}
    for col in ("end_s", "caption", "split", *label_columns):
        data[col] = pd.Series([r[col] for r in records], dtype=object)
    return pd.DataFrame(data)


def import_layout(
    csv_path: str | os.PathLike,
    src: str | os.PathLike,
    layout: str = "auto",
    *,
    assume_cut: bool = False,
) -> tuple[pd.DataFrame, dict]:
    """Read a published segment list and match its rows to the videos under ``src``.

    Args:
        csv_path: the CSV in one of the :data:`LAYOUTS`.
        src: the folder holding the downloaded videos (walked recursively).
        layout: a key of :data:`LAYOUTS`, or ``"auto"`` to detect it (:func:`detect_layout`).
        assume_cut: treat files named by the id alone (``X.mp4``) as already cut to their
            segment (start 0), as the files whose names carry the times are.

    Returns:
        ``(segments, report)``: the segment table (:data:`SEGMENT_COLUMNS` then the
        ``label_*`` columns, CSV order, one row per matched segment, ``file`` relative to
        ``src``) and a report: ``layout``, ``csv``, ``src``, ``rows``, ``segments``,
        ``video_files``, ``label_columns``, ``matched_by`` (segments per naming pattern),
        and ``unmatched_rows``, ``ambiguous_rows``, ``repeated_rows``, ``unreferenced_files``
        each as ``{"count", "examples"}``.

    Raises:
        FileNotFoundError: ``csv_path`` or ``src`` does not exist (or ``src`` is no folder).
        ConfigError: ``layout`` is not ``auto`` or a key of :data:`LAYOUTS`.
        ManifestError: the CSV does not follow the layout (the message names the line).
    """
    csv_path, src = Path(csv_path), Path(src)
    if not csv_path.is_file():
        raise FileNotFoundError(f"segment list {csv_path} does not exist.")
    if not src.is_dir():
        raise FileNotFoundError(f"{src} is not a folder; give the folder holding the downloaded videos.")
    if layout != "auto" and layout not in LAYOUTS:
        raise ConfigError(f"layout {layout!r} is unknown; use 'auto' or one of {sorted(LAYOUTS)}.")
    name = detect_layout(csv_path) if layout == "auto" else layout
    parsed = LAYOUTS[name](csv_path)

    rels = _scan_videos(src)
    index: dict[str, list[_NameParse]] = {}
    by_base: dict[str, list[str]] = {}
    for rel in rels:
        by_base.setdefault(rel.rsplit("/", 1)[-1], []).append(rel)
        for vid, p in _name_parses(rel):
            index.setdefault(vid, []).append(p)
    src_abs, rel_set = os.path.abspath(src), set(rels)

    records, seen = [], set()
    unmatched, ambiguous, repeated = [], [], []
    patterns: Counter = Counter()
    for row in parsed.rows:
        m = _match_path(row, src_abs, rel_set, by_base) if row.file is not None else _match_id(row, index, assume_cut)
        if m.rel is None:
            if m.candidates:
                ambiguous.append(f"{_describe(row)} -> {', '.join(m.candidates[:3])}"
                                 + (f" (+{len(m.candidates) - 3})" if len(m.candidates) > 3 else ""))
            else:
                unmatched.append(_describe(row))
            continue
        key = (m.rel, round(m.start_s, 3), None if m.end_s is None else round(m.end_s, 3))
        if key in seen:
            repeated.append(_describe(row))  # the first row for a segment wins
            continue
        seen.add(key)
        patterns[m.pattern] += 1
        records.append({"file": m.rel, "start_s": float(m.start_s), "end_s": m.end_s, "caption": row.caption,
                        "split": row.split, **{c: row.labels.get(c) for c in parsed.label_columns}})
    used = {r["file"] for r in records}
    unreferenced = [r for r in rels if r not in used]
    segments = _table(records, parsed.label_columns)

    report = {
        "layout": name,
        "csv": os.path.abspath(csv_path),
        "src": src_abs,
        "rows": len(parsed.rows),
        "segments": len(segments),
        "video_files": len(rels),
        "label_columns": list(parsed.label_columns),
        "assume_cut": bool(assume_cut),
        "matched_by": dict(sorted(patterns.items())),
        "unmatched_rows": _listing(unmatched),
        "ambiguous_rows": _listing(ambiguous),
        "repeated_rows": _listing(repeated),
        "unreferenced_files": _listing(unreferenced),
    }
    log.info("%s (%s): %d of %d rows matched to %d of %d videos under %s", csv_path, name, len(segments),
             len(parsed.rows), len(used), len(rels), src)
    if unmatched or ambiguous:
        log.warning("%s: %d rows have no local video, %d match several (see the report's examples)", csv_path,
                    len(unmatched), len(ambiguous))
    return segments, report
