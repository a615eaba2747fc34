"""The feature-shard codec: one clip -> one shard row, shards on disk, and back.

A featurize run's directory holds ``shards/shard-XXXXX.parquet`` (written through a
temporary name and ``os.replace``) and ``done/shard-XXXXX.json`` markers written last;
readers trust only shards with a marker. Shape of a run::

    manifest rows ─(sorted by clip_id, chunked)─> shard specs ──> shard files
                                                  (skip finished)   (decode + features,
                                                                     write parquet atomically)

* The manifest is sorted by ``clip_id`` and cut into shards of ``rows_per_shard`` clips,
  so shard *k* always holds the same clips for a given manifest and config.
* :func:`write_shard` decodes every clip with decord / PyAV, computes its features
  (``soundtrack.data.features``) and writes the shard; only its small summary returns.
  :mod:`soundtrack.distributed.featurize` runs it over a Ray Data actor pool.
* A re-run skips shards whose marker exists, so a run killed at any point resumes with
  every clip written exactly once. A clip that fails to decode is recorded in the marker
  and in ``errors.jsonl``; it never stops the run.
* Layout: a shard holds one row group per split (splits in sorted order, clip-id order
  inside each; :func:`write_table_by_split`), so a reader of one split skips
  the other splits' row groups from their statistics without decoding a byte of them.
  :func:`read_shards` / :func:`load_split` read through a pyarrow dataset scan with the
  ``split`` filter and the requested columns only (older shards of one mixed row group
  are read too: their other splits' rows are dropped per batch, never concatenated).
* Integrity: a shard is written with a CRC in every page header (:data:`PARQUET_WRITE`),
  which :func:`read_shards` verifies, and its marker records its ``bytes`` and ``sha256``
  (:func:`completed_shards` redoes a shard whose file is missing or of another size). A
  truncated or garbled shard is an :class:`~soundtrack.errors.IntegrityError` naming it;
  a full disk while writing one a :class:`~soundtrack.errors.DiskFullError`, with neither
  the shard nor its marker left (the finished shards stay).

**The array codec** (one for every parquet table of arrays: feature shards and the
latent cache of :mod:`soundtrack.distributed.train_generator`): an array column is stored
as raw bytes plus a shape, ``<name>`` and ``<name>__shape``. Its storage dtype is never
stored with it; it comes from one table, :data:`ARRAY_DTYPES` (shard columns and latent-cache
columns alike), so an encoder and a decoder cannot disagree, and a column missing from the
table raises :class:`soundtrack.errors.CodecError` instead of being guessed. ``int16``
columns are waveforms: floats in [-1, 1] stored as 16-bit PCM and decoded back to float32.
:func:`pack_array` / :func:`unpack_array` code one array, :func:`pack_column` /
:func:`unpack_column` a column of a numpy batch (many rows), :func:`decode_row` a whole
shard row, and :func:`load_split` reads a split's clips decoded (what evaluation reads).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from soundtrack.config import FeaturizeSection, config_hash, identity
from soundtrack.data import media
from soundtrack.data.features import FeatureConfig, featurize_clip
from soundtrack.data.integrity import file_record, write_file
from soundtrack.data.manifest import clean, records
from soundtrack.errors import CodecError, IntegrityError, TooFewClips

log = logging.getLogger(__name__)

#: Array columns of a feature shard, in :func:`featurize_row`'s order.
SHARD_ARRAYS: tuple[str, ...] = ("frames", "wav_mix", "wav_music", "wav_sfx", "mel_mix", "mel_music", "mel_sfx",
                                 "chroma", "melody", "dynamics_db", "onset_env", "beat_times", "motion", "shots")
#: Array columns of a latent-cache row (:class:`soundtrack.distributed.train_generator.CacheEncoder`):
#: the clip's VAE latents and its condition tokens.
CACHE_ARRAYS: tuple[str, ...] = ("latents", "video", "music", "sfx", "text")
#: Storage dtype of every array column, shard and latent cache (the codec's one table).
#: Shards: 16-bit audio and float16 mels halve the shard size with no loss that matters
#: for training; frames stay uint8. Latent cache: float32, what the UNet trains on.
ARRAY_DTYPES: dict[str, str] = {
    "frames": "uint8",
    "wav_mix": "int16",
    "wav_music": "int16",
    "wav_sfx": "int16",
    "mel_mix": "float16",
    "mel_music": "float16",
    "mel_sfx": "float16",
    "chroma": "float16",
    "melody": "int8",
    "dynamics_db": "float32",
    "onset_env": "float32",
    "beat_times": "float32",
    "motion": "float32",
    "shots": "int32",
    "latents": "float32",
    "video": "float32",
    "music": "float32",
    "sfx": "float32",
    "text": "float32",
}
#: Suffix of an array column's shape column.
SHAPE = "__shape"
#: Parquet writer options of a shard: a CRC in every page header, which :func:`read_shards`
#: verifies, so a garbled page is an error rather than wrong numbers.
PARQUET_WRITE = {"write_page_checksum": True}
#: What to do with a shard that fails its check.
SHARD_HINT = ("delete it and its marker done/{name}.json, then run `soundtrack data featurize` again (finished shards "
              "are kept), or featurize again with --force")
ID_COLUMNS = ("clip_id", "source_id", "split", "caption", "start_s", "duration_s", "pad_s", "stems_source")


# ----------------------------------------------------------------------------- the array codec


def _dtype(name: str) -> str:
    """The storage dtype of array column ``name`` (from :data:`ARRAY_DTYPES`, never guessed)."""
    try:
        return ARRAY_DTYPES[name]
    except KeyError:
        raise CodecError(f"array column {name!r} has no storage dtype; add it to soundtrack.data.shards.ARRAY_DTYPES "
                         f"(known: {', '.join(ARRAY_DTYPES)})") from None


def pack_array(name: str, a: Any) -> dict[str, Any]:
    """One array as the two stored columns of ``name``: bytes in its dtype and its shape.

    Args:
        name: the column (a key of :data:`ARRAY_DTYPES`).
        a: the array (array-like). For ``int16`` columns, a float waveform in [-1, 1]
            (clipped, stored as 16-bit PCM).

    Returns:
        ``{name: bytes, name + "__shape": list of ints}``.

    Raises:
        CodecError: ``name`` has no storage dtype.
    """
    dt = _dtype(name)
    a = np.asarray(a)
    if dt == "int16":  # float waveform in [-1, 1] -> 16-bit PCM
        a = np.round(np.clip(a, -1, 1) * 32767.0)
    a = np.ascontiguousarray(a.astype(dt))
    return {name: a.tobytes(), name + SHAPE: list(a.shape)}


def unpack_array(name: str, raw: bytes, shape: Sequence[int]) -> np.ndarray:
    """The array :func:`pack_array` stored (read-only; ``int16`` waveforms as float32 in [-1, 1]).

    Args:
        name: the column (a key of :data:`ARRAY_DTYPES`).
        raw: its stored bytes.
        shape: its stored shape.

    Raises:
        CodecError: ``name`` has no storage dtype.
    """
    dt = _dtype(name)
    a = np.frombuffer(raw, dtype=dt).reshape([int(s) for s in shape])
    if dt == "int16":
        a = a.astype(np.float32) / 32767.0
    return a


def pack_column(name: str, arrays: Iterable[Any]) -> dict[str, np.ndarray]:
    """Many rows' arrays as the two columns of a numpy batch (object array of bytes, int64 shapes)."""
    packed = [pack_array(name, a) for a in arrays]
    return {name: np.asarray([p[name] for p in packed], dtype=object),
            name + SHAPE: np.asarray([p[name + SHAPE] for p in packed], dtype=np.int64)}


def unpack_column(batch: Mapping[str, Any], name: str) -> list[np.ndarray]:
    """Every row's array of column ``name`` in a numpy batch (Ray Data or in-memory rows)."""
    return [unpack_array(name, raw, shape) for raw, shape in zip(batch[name], batch[name + SHAPE])]


# ----------------------------------------------------------------------------- one clip


def feature_config(section: FeaturizeSection):
    """The :class:`soundtrack.data.features.FeatureConfig` matching a featurize section."""
    names = {f.name for f in dataclasses.fields(FeatureConfig)}
    kw = {k: v for k, v in dataclasses.asdict(section).items() if k in names}
    if "control_source" in names:  # which waveform HPM's controls (chroma, dynamics, beats) come from
        kw["control_source"] = section.features_from
    return FeatureConfig(**kw)


def _fit(x: np.ndarray, n: int) -> np.ndarray:
    """Trim or zero-pad a waveform to exactly ``n`` samples."""
    if len(x) >= n:
        return x[:n]
    return np.concatenate([x, np.zeros(n - len(x), np.float32)])


def decode_clip(row: dict, section: FeaturizeSection) -> dict[str, Any]:
    """Decode one manifest row: frames at ``fps``, mix and stems at ``sr``, fitted to the clip.

    Damaged packets are skipped by the decoders (silence / the previous frame for their
    time, so audio and video stay in sync); the clip is refused only when the time lost
    (union of its audio and video losses) exceeds ``section.max_lost_fraction`` of its
    length.

    Args:
        row: a manifest row (absolute paths).
        section: featurize settings.

    Returns:
        ``frames`` uint8 (T, size, size, 3), ``mix`` and optionally ``music``/``sfx`` float32
        (N,), ``lost_s`` (float, s of the clip lost to damage) and ``bad_packets`` (int).

    Raises:
        MediaError: ``damaged`` when too much of the clip is lost, or what the decoders raise.
    """
    dur = float(row["duration_s"])
    start = float(row["start_s"])
    n = int(round(section.clip_s * section.sr))
    t_frames = int(np.ceil(round(section.clip_s * section.fps, 6)))
    frames, v_report = media.decode_frames(
        row["video_path"], fps=section.fps, start_s=start, duration_s=dur, size=(section.size, section.size),
    )
    mix, a_report = media.decode_audio(row["video_path"], sr=section.sr, start_s=start, duration_s=dur)
    report = v_report.merge(a_report)
    limit_s = section.max_lost_fraction * dur
    if report.lost_s > limit_s:
        raise media.MediaError(
            "damaged",
            f"{row['video_path']}: {report.lost_s:.2f} s of the clip at {start:.2f}-{start + dur:.2f} s are lost to "
            f"{report.bad_packets} damaged packet(s) (video {v_report.lost_s:.2f} s, audio {a_report.lost_s:.2f} s), "
            f"above max_lost_fraction={section.max_lost_fraction} of its {dur:.2f} s ({limit_s:.2f} s); "
            "re-download or re-encode the source, or raise featurize.max_lost_fraction to keep such clips.",
        )
    if len(frames) < t_frames:  # short (padded) video: hold the last frame
        frames = np.concatenate([frames, np.repeat(frames[-1:], t_frames - len(frames), axis=0)])
    out: dict[str, Any] = {"frames": frames[:t_frames], "mix": _fit(mix, n)}
    for stem in ("music", "sfx"):
        p = clean(row.get(f"{stem}_path"))
        if p:
            w = media.load_wav(p, sr=section.sr)
            s0 = int(round(start * section.sr))
            out[stem] = _fit(w[s0 : s0 + int(round(dur * section.sr))], n)
    # Padding (pad_s) is implicit: _fit pads audio with zeros, frames hold the last image.
    out["lost_s"] = float(report.lost_s)
    out["bad_packets"] = int(report.bad_packets)
    return out


def featurize_row(row: dict, section: FeaturizeSection, fcfg=None) -> dict[str, Any]:
    """Decode and featurize one manifest row into one shard row (arrays packed as bytes).

    Besides the arrays and :data:`ID_COLUMNS`, the row records the scalars ``lost_s``
    (float, s of the clip lost to damaged packets) and ``bad_packets`` (int).

    Args:
        row: a manifest row (absolute paths).
        section: featurize settings.
        fcfg: feature config (built from ``section`` when ``None``).

    Raises:
        MediaError: the clip cannot be decoded, or is ``damaged`` (see :func:`decode_clip`).
    """
    fcfg = fcfg or feature_config(section)
    dec = decode_clip(row, section)
    feats = featurize_clip(dec["frames"], dec["mix"], dec.get("music"), dec.get("sfx"), fcfg)
    arrays = {
        "frames": dec["frames"],
        "wav_mix": dec["mix"],
        "wav_music": dec.get("music") if dec.get("music") is not None else feats.get("wav_music"),
        "wav_sfx": dec.get("sfx") if dec.get("sfx") is not None else feats.get("wav_sfx"),
    }
    for k in SHARD_ARRAYS:
        if k not in arrays and k in feats:
            arrays[k] = feats[k]
    out: dict[str, Any] = {c: row.get(c) for c in ID_COLUMNS if c in row}
    out["stems_source"] = feats.get("stems_source", "given" if "music" in dec else "separated")
    out["lost_s"] = float(dec["lost_s"])
    out["bad_packets"] = int(dec["bad_packets"])
    for k, a in arrays.items():
        if a is not None:
            out.update(pack_array(k, a))
    for c, v in row.items():
        if c.startswith("label_"):
            out[c] = v.tolist() if isinstance(v, np.ndarray) else v
    return out


def decode_row(row: dict, keys: Iterable[str] | None = None) -> dict[str, Any]:
    """Turn a shard row back into numpy arrays (waveforms as float32 in [-1, 1]).

    Args:
        row: one row read from a shard (dict-like).
        keys: array columns to decode (default: all present).
    """
    out = {k: v for k, v in row.items() if not (k in ARRAY_DTYPES or k.endswith(SHAPE))}
    for k in keys or ARRAY_DTYPES:
        if k not in row or row[k] is None:
            continue
        out[k] = unpack_array(k, row[k], row[k + SHAPE])
    return out


# ----------------------------------------------------------------------------- shards


def plan_shards(manifest: pd.DataFrame, rows_per_shard: int) -> list[dict]:
    """Cut a manifest (sorted by clip_id) into shard specs ``{shard, clip_ids, rows}``."""
    df = manifest.sort_values("clip_id").reset_index(drop=True)
    recs = records(df)  # None for every missing value: NaN would survive JSON as a truthy float
    out = []
    for k in range(0, len(recs), rows_per_shard):
        rows = recs[k : k + rows_per_shard]
        out.append({"shard": k // rows_per_shard, "clip_ids": [r["clip_id"] for r in rows], "rows": json.dumps(rows, default=_json_default)})
    return out


def _json_default(o):
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    return str(o)


def shard_paths(out_dir: Path, shard: int) -> tuple[Path, Path]:
    return out_dir / "shards" / f"shard-{shard:05d}.parquet", out_dir / "done" / f"shard-{shard:05d}.json"


def write_shard(out_dir: str | os.PathLike, spec: dict, section: FeaturizeSection, fcfg=None, node_id: str = "") -> dict:
    """Featurize and write one shard atomically; return its summary (what the driver sees).

    Args:
        out_dir: the featurize run directory.
        spec: one item of :func:`plan_shards`.
        section: featurize settings.
        fcfg: feature config (built from ``section`` when ``None``).
        node_id: the cluster node writing it (recorded in the marker; "" outside Ray).
    """
    out_dir = Path(out_dir)
    t0 = time.time()
    rows, errors = [], []
    for r in json.loads(spec["rows"]):
        try:
            rows.append(featurize_row(r, section, fcfg))
        except Exception as exc:  # one bad clip never stops the run: record it and go on
            reason = getattr(exc, "reason", type(exc).__name__)
            errors.append({"clip_id": r["clip_id"], "video_path": r["video_path"], "reason": reason, "message": str(exc)})
    pq_path, done_path = shard_paths(out_dir, int(spec["shard"]))
    kept = "the shards already finished are kept; this one is redone by the next run"
    record: dict[str, Any] = {}
    if rows:
        table = pa.Table.from_pylist(rows)
        write_file(pq_path, lambda tmp: write_table_by_split(table, tmp), f"shard {int(spec['shard'])}", kept)
        record = file_record(pq_path)
    summary = {
        "shard": int(spec["shard"]),
        "n_in": len(spec["clip_ids"]),
        "n_out": len(rows),
        "n_failed": len(errors),
        "clip_ids": [r["clip_id"] for r in rows],
        "errors": errors,
        "seconds": round(time.time() - t0, 3),
        "host": os.uname().nodename,
        "node_id": node_id,
        "pid": os.getpid(),
        **({"bytes": record["size"], "sha256": record["sha256"]} if record else {}),
    }
    text = json.dumps(summary)
    # The marker goes last: its presence means the shard is complete.
    write_file(done_path, lambda tmp: tmp.write_text(text), f"the marker of shard {int(spec['shard'])}", kept)
    return summary


def write_table_by_split(table: pa.Table, path: str | os.PathLike) -> None:
    """Write a shard table with one row group per split (splits in sorted order, rows in
    their order inside each), page checksums on (:data:`PARQUET_WRITE`).

    A reader of one split then prunes the others' row groups by their ``split``
    statistics (min = max = that split) and never decodes them.

    Args:
        table: the shard's rows (a ``split`` column).
        path: the file to write.
    """
    if "split" not in table.column_names:
        pq.write_table(table, str(path), **PARQUET_WRITE)
        return
    splits = sorted(str(s) for s in pc.unique(table["split"]).to_pylist() if s is not None)
    with pq.ParquetWriter(str(path), table.schema, **PARQUET_WRITE) as writer:
        for name in splits:
            writer.write_table(table.filter(pc.equal(table["split"], name)))
        rest = table.filter(pc.is_null(table["split"]))
        if rest.num_rows:
            writer.write_table(rest)


def warm_up(fcfg=None) -> float:
    """Run the feature code once on noise so numba compiles before timing starts (s spent)."""
    fcfg = fcfg or FeatureConfig()
    t = time.time()
    rng = np.random.default_rng(0)
    n = int(fcfg.sr * 2.0)
    featurize_clip(rng.integers(0, 255, (4, 16, 16, 3), dtype=np.uint8), (rng.standard_normal(n) * 0.1).astype(np.float32), None, None, fcfg)
    return time.time() - t


def completed_shards(out_dir: str | os.PathLike) -> dict[int, dict]:
    """Summaries of the shards whose ``done`` marker exists and whose file is whole.

    A torn marker, or a marker whose shard file is missing or of another size than the
    marker records (``bytes``; markers written before it are trusted), counts as not done
    (logged): the next run writes that shard again.
    """
    out = {}
    root = Path(out_dir)
    d = root / "done"
    if d.exists():
        for p in sorted(d.glob("shard-*.json")):
            try:
                s = json.loads(p.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError):  # a torn marker counts as not done
                continue
            shard_file = shard_paths(root, int(s["shard"]))[0]
            if s.get("n_out") and "bytes" in s:
                size = shard_file.stat().st_size if shard_file.is_file() else None
                if size != s["bytes"]:
                    log.warning("%s: its marker records %s bytes, the file has %s; the shard is written again",
                                shard_file, s["bytes"], "none (missing)" if size is None else size)
                    continue
            out[int(s["shard"])] = s
    return out


def featurize_id(manifest_path: Path, section: FeaturizeSection, limit: int | None = None) -> str:
    """Identity of a featurize run: the manifest's content hash, the section's identity
    (:func:`soundtrack.config.identity`: infra keys such as ``concurrency`` left out) and
    the clip limit (``-l<N>``: a run of the first N clips is another data set than the full one).

    Args:
        manifest_path: the data run's ``manifest.parquet``.
        section: featurize settings.
        limit: ``--limit`` (``None``: every clip).
    """
    h = hashlib.sha1(Path(manifest_path).read_bytes()).hexdigest()[:8]
    return f"{h}-{config_hash(identity(section))}" + (f"-l{int(limit)}" if limit is not None else "")


#: How :func:`read_shards` scans a shard: the page CRCs verified (a garbled page is an error).
_SCAN_FORMAT = pads.ParquetFileFormat(
    default_fragment_scan_options=pads.ParquetFragmentScanOptions(page_checksum_verification=True))


def scan_shard(path: str | os.PathLike, columns: Sequence[str] | None = None, split: str | None = None) -> pa.Table:
    """One shard's rows of ``split``, only ``columns``: a pyarrow dataset scan with the split
    filter, so row groups of other splits are pruned by their statistics (never read) and
    unrequested columns never leave the file; page CRCs are verified.

    Args:
        path: the ``.parquet`` file.
        columns: columns to read (``None``: all).
        split: keep only this split (``None``: all rows).

    Raises:
        IntegrityError: the shard is truncated or garbled (a failed page CRC included).
        pyarrow.ArrowInvalid: a requested column the shard lacks (pyarrow names it).
    """
    p = Path(path)
    have = set(read_shard_schema(p).names)
    try:
        dataset = pads.dataset(str(p), format=_SCAN_FORMAT)
        return dataset.to_table(columns=None if columns is None else list(columns),
                                filter=None if split is None else pc.field("split") == split)
    except (pa.ArrowException, OSError, ValueError) as exc:
        if columns is not None and not set(columns) <= have:
            raise  # a column the shard lacks: pyarrow names it
        raise _corrupt(p, exc) from exc


def read_shards(run_dir: str | os.PathLike, split: str | None = None, columns: list[str] | None = None,
                optional: Sequence[str] = ()) -> pd.DataFrame:
    """Read a featurize run's shards into pandas (small runs, tests, evaluation).

    Only what is asked is read (:func:`scan_shard`): the rows of ``split`` (other splits'
    row groups are skipped by their statistics) and the requested columns.

    Args:
        run_dir: featurize run directory.
        split: keep only this split.
        columns: columns to read (array columns bring their ``__shape`` column along); a
            column no shard has raises (pyarrow names it).
        optional: further columns read from the shards that have them (with ``columns``
            given): a shard without one gives missing values (None / nan) in it, and a
            column no shard has is absent from the frame (e.g. a label only some data
            sets carry).

    Raises:
        FileNotFoundError: the run has no shards.
        IntegrityError: a truncated or garbled shard (named).
    """
    files = sorted((Path(run_dir) / "shards").glob("shard-*.parquet"))
    if not files:
        raise FileNotFoundError(f"no shards in {run_dir}/shards; run `soundtrack data featurize` first.")

    def wanted(names: Sequence[str]) -> list[str]:
        return list(names) + [c + SHAPE for c in names if c in ARRAY_DTYPES]

    def table(f: Path) -> pd.DataFrame:
        cols = None
        if columns is not None:
            have = set(read_shard_schema(f).names)
            cols = list(dict.fromkeys(["clip_id", "split", *wanted(columns)]))
            cols += [c for c in wanted(optional) if c in have and c not in cols]
        return scan_shard(f, cols, split)

    tables = [table(f) for f in files]
    kept = [t for t in tables if t.num_rows] or tables[:1]  # shards without a row of the split add nothing
    return pd.concat([t.to_pandas() for t in kept], ignore_index=True)


def load_split(run_dir: str | os.PathLike, split: str, columns: Sequence[str] | None = None, n: int | None = None,
               too_few: Literal["raise", "fewer"] = "raise", hint: str = "",
               optional: Sequence[str] = ()) -> list[dict[str, Any]]:
    """The decoded clips of one split: sorted by clip id, the first ``n``.

    The one way evaluation reads clips (tune trials and arms, the bench, encoder
    evaluation, the evaluator's classifier), so every caller sees the same clips in the
    same order.

    Args:
        run_dir: a finished featurize run.
        split: ``train``, ``val`` or ``test``.
        columns: columns to read (array columns are decoded, ``clip_id`` and ``split``
            always come along); ``None``: every column.
        n: how many clips (``None``: all of the split).
        too_few: what a split with fewer than ``n`` clips does: ``raise``
            :class:`soundtrack.errors.TooFewClips` (with both numbers), or return the
            ``fewer`` clips it has, with a log line.
        hint: appended to the message (e.g. which setting asks for ``n``).
        optional: columns read where the shards have them (:func:`read_shards`): a
            clip whose shard lacks one has no such key, or None / nan in it.

    Returns:
        One dict per clip (:func:`decode_row`).

    Raises:
        TooFewClips: fewer than ``n`` clips and ``too_few="raise"``.
        FileNotFoundError: the run has no shards.
    """
    df = read_shards(run_dir, split=split, columns=None if columns is None else list(columns), optional=optional)
    df = df.sort_values("clip_id", kind="stable").reset_index(drop=True)
    if n is not None:
        if len(df) < n:
            msg = f"the {split} split of {run_dir} has {len(df)} clip(s), {n} requested" + (f" ({hint})" if hint else "")
            if too_few == "raise":
                raise TooFewClips(msg)
            log.info("%s; using those %d", msg, len(df))
        df = df.head(n)
    return [decode_row(r) for r in df.to_dict("records")]


def shard_files(run_dir: str | os.PathLike) -> list[str]:
    """Paths of a featurize run's shard files (for ``ray.data.read_parquet``), each footer read
    first, so a truncated shard is a clear error here rather than a failed Ray Data task.

    Raises:
        IntegrityError: a shard whose footer is not readable (names it and what to do).
    """
    files = sorted((Path(run_dir) / "shards").glob("shard-*.parquet"))
    for f in files:
        read_shard_schema(f)
    return [str(p) for p in files]


def _corrupt(path: Path, exc: BaseException) -> IntegrityError:
    """The error of a shard that cannot be read (for ``raise ... from exc``)."""
    name = path.name.removesuffix(".parquet")
    return IntegrityError(f"{path} (a feature shard, {path.stat().st_size if path.exists() else 0} bytes) is not "
                          f"readable ({type(exc).__name__}: {exc}); it is truncated or garbled: "
                          + SHARD_HINT.format(name=name))


def read_shard_schema(path: str | os.PathLike) -> pa.Schema:
    """The schema of a shard file, read from its footer (cheap).

    Args:
        path: the ``.parquet`` file.

    Raises:
        IntegrityError: the footer is not readable (a truncated or garbled shard).
    """
    p = Path(path)
    try:
        return pq.read_schema(p)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise _corrupt(p, exc) from exc
