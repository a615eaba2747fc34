"""The clip manifest: one parquet row per clip, written by ``synth`` and ``ingest``.

See ``docs/data-contracts.md`` for the columns. Splits are assigned per *source
video* (never per clip) so no source leaks between train, val and test.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pandas as pd

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


def validate_manifest(df: pd.DataFrame) -> pd.DataFrame:
    """Check columns, ids and splits; return the frame unchanged.

    Raises:
        ManifestError: naming the missing column, duplicate ids, a bad split value or a
            source shared between splits.
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise ManifestError(
            f"manifest is missing column(s) {missing}; required: {list(REQUIRED_COLUMNS)} "
            "(see docs/data-contracts.md). Re-create it with `soundtrack data synth` or `soundtrack data ingest`."
        )
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
    df.reset_index(drop=True).to_parquet(tmp, index=False)
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
        if v is None or (isinstance(v, float) and pd.isna(v)) or v == "":
            return None
        q = Path(v)
        return str(q if q.is_absolute() else base / q)

    for col in ("video_path", "music_path", "sfx_path"):
        df[col] = df[col].map(_abs)
    return df
