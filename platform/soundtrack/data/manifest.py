"""The clip manifest: one parquet row per clip, written by ``synth`` and ``ingest``.

See ``docs/data-contracts.md`` for the columns. Splits are assigned per *source
video* (never per clip) so no source leaks between train, val and test.

Missing values are typed and explicit: a nullable column (a stem path, a label a video
lacks) holds ``None``, never ``NaN``. pandas turns ``None`` in a text column into ``NaN``
(and ``NaN`` is truthy: a stem path of ``NaN`` once sent every stem-less clip of a real
folder to ``load_wav(nan)``), so the manifest is written with an explicit arrow schema
(:data:`ARROW_TYPES`: text columns as nullable strings) and read back through
:func:`records`, the one way a row leaves a manifest frame, which maps every missing value
to ``None``.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from soundtrack.errors import ManifestError

REQUIRED_COLUMNS: dict[str, str] = {
    "clip_id": "str",
    "source_id": "str",
    "split": "str",
    "video_path": "str",
    "start_s": "float",
    "duration_s": "float",
    "pad_s": "float",
    "music_path": "str or null",
    "sfx_path": "str or null",
    "caption": "str",
}
#: Arrow storage type of every contract column (``src_*`` and ``label_*`` columns are inferred).
ARROW_TYPES: dict[str, pa.DataType] = {
    "clip_id": pa.string(), "source_id": pa.string(), "split": pa.string(), "video_path": pa.string(),
    "start_s": pa.float64(), "duration_s": pa.float64(), "pad_s": pa.float64(),
    "music_path": pa.string(), "sfx_path": pa.string(), "caption": pa.string(),
}
#: Columns that may hold ``None`` (everything else of the contract must be set).
NULLABLE = ("music_path", "sfx_path")
SPLITS = ("train", "val", "test")
MANIFEST_NAME = "manifest.parquet"


def split_for_source(source_id: str, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1), seed: int = 0) -> str:
    """Deterministic split of a source by hashing ``(seed, source_id)``.

    Args:
        source_id: the source video's id.
        fractions: train, val, test fractions (sum to 1).
        seed: changes the assignment.
    """
    if len(fractions) != 3 or abs(sum(fractions) - 1.0) > 1e-6 or min(fractions) < 0:
        raise ValueError(f"split fractions must be three non-negative numbers summing to 1, got {fractions}")
    h = hashlib.sha1(f"{seed}:{source_id}".encode()).digest()
    u = int.from_bytes(h[:8], "big") / 2**64
    if u < fractions[0]:
        return "train"
    if u < fractions[0] + fractions[1]:
        return "val"
    return "test"


def is_missing(v) -> bool:
    """True for ``None``, ``NaN``, ``pd.NA`` and ``NaT`` (a scalar; lists and arrays are values)."""
    if v is None:
        return True
    if isinstance(v, (list, tuple, dict)) or hasattr(v, "shape"):
        return False
    try:
        return bool(pd.isna(v))
    except (TypeError, ValueError):
        return False


def clean(v):
    """A manifest cell as a plain value: ``None`` for any missing value, numpy scalars as Python ones."""
    if is_missing(v):
        return None
    return v.item() if hasattr(v, "item") and getattr(v, "shape", None) == () else v


def records(df: pd.DataFrame) -> list[dict]:
    """The rows of a manifest frame as dicts with ``None`` for every missing value (never ``NaN``).

    Args:
        df: a manifest (or any part of one).
    """
    return [{k: clean(v) for k, v in r.items()} for r in df.to_dict("records")]


def validate_manifest(df: pd.DataFrame) -> pd.DataFrame:
    """Check columns, ids, splits and missing values; return the frame unchanged.

    Raises:
        ManifestError: naming the missing column, duplicate ids, a bad split value, a
            source shared between splits, or a missing value in a column that needs one.
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ManifestError(
            f"manifest is missing column(s) {missing}; required: {list(REQUIRED_COLUMNS)} "
            "(see docs/data-contracts.md). Re-create it with `soundtrack data synth` or `soundtrack data ingest`."
        )
    for c in REQUIRED_COLUMNS:
        if c in NULLABLE or c == "caption":
            continue
        holes = df.loc[df[c].map(is_missing), "clip_id"].tolist() if len(df) else []
        if holes:
            raise ManifestError(f"manifest column {c!r} has missing values (clip(s) {holes[:3]}); every clip needs "
                                f"one (see docs/data-contracts.md).")
    dup = df["clip_id"][df["clip_id"].duplicated()].tolist()
    if dup:
        raise ManifestError(f"manifest has duplicate clip_id values, e.g. {dup[:3]}; clip ids must be unique.")
    bad = sorted(set(df["split"]) - set(SPLITS))
    if bad:
        raise ManifestError(f"manifest has split value(s) {bad}; allowed: {list(SPLITS)}.")
    per_source = df.groupby("source_id")["split"].nunique()
    leak = per_source[per_source > 1].index.tolist()
    if leak:
        raise ManifestError(f"source(s) {leak[:3]} appear in more than one split; splits must be by source video.")
    return df


def write_manifest(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Validate and write a manifest atomically (temp file, then rename)."""
    validate_manifest(df)
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    df = df.reset_index(drop=True).copy()
    df["caption"] = df["caption"].map(lambda v: "" if is_missing(v) else str(v))
    for c in NULLABLE:  # None stays None (object column), never a NaN float
        df[c] = pd.Series([None if is_missing(v) else str(v) for v in df[c]], dtype=object)
    fields = []
    inferred = pa.Schema.from_pandas(df, preserve_index=False)
    for f in inferred:
        fields.append(pa.field(f.name, ARROW_TYPES.get(f.name, f.type), nullable=True))
    pa_table = pa.Table.from_pandas(df, schema=pa.schema(fields), preserve_index=False)
    pq.write_table(pa_table, tmp)
    os.replace(tmp, p)
    return p


def read_manifest(path: str | os.PathLike) -> pd.DataFrame:
    """Read a manifest (a file, or a data directory holding ``manifest.parquet``).

    Relative ``video_path``/stem paths are resolved against the manifest's folder.

    Raises:
        ManifestError: no manifest there, or it breaks the contract.
    """
    p = Path(path)
    if p.is_dir():
        p = p / MANIFEST_NAME
    if not p.exists():
        raise ManifestError(
            f"no manifest at {p}; create one with `soundtrack data synth --out DIR` or "
            "`soundtrack data ingest SRC --out DIR`."
        )
    df = pd.read_parquet(p)
    validate_manifest(df)
    base = p.parent.resolve()

    def _abs(v):
        if is_missing(v) or v == "":
            return None
        q = Path(v)
        return str(q if q.is_absolute() else base / q)

    for col in ("video_path", "music_path", "sfx_path"):
        # object dtype: pandas' string dtype would turn the None of a stem-less clip into NaN
        df[col] = pd.Series([_abs(v) for v in df[col]], index=df.index, dtype=object)
    return df
