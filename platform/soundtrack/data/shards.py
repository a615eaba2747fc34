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

Array columns are stored as raw bytes plus a shape (``<name>`` and ``<name>__shape``);
:func:`decode_row` turns a shard row back into numpy arrays.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from soundtrack.config import FeaturizeSection, config_hash
from soundtrack.data import media
from soundtrack.data.features import FeatureConfig, featurize_clip

#: Storage dtype of each array column (why: 16-bit audio and float16 mels halve the
#: shard size with no loss that matters for training; frames stay uint8).
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
}
ID_COLUMNS = ("clip_id", "source_id", "split", "caption", "start_s", "duration_s", "pad_s", "stems_source")


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


def decode_clip(row: dict, section: FeaturizeSection) -> dict[str, np.ndarray]:
    """Decode one manifest row: frames at ``fps``, mix and stems at ``sr``, fitted to the clip.

    Args:
        row: a manifest row (absolute paths).
        section: featurize settings.

    Returns:
        ``frames`` uint8 (T, size, size, 3), ``mix`` and optionally ``music``/``sfx`` float32 (N,).
    """
    dur = float(row["duration_s"])
    pad = float(row.get("pad_s") or 0.0)
    n = int(round(section.clip_s * section.sr))
    t_frames = int(np.ceil(round(section.clip_s * section.fps, 6)))
    frames = media.read_frames(
        row["video_path"], fps=section.fps, start_s=float(row["start_s"]), duration_s=dur,
        size=(section.size, section.size),
    )
    if len(frames) < t_frames:  # short (padded) video: hold the last frame
        frames = np.concatenate([frames, np.repeat(frames[-1:], t_frames - len(frames), axis=0)])
    frames = frames[:t_frames]
    out = {"frames": frames}
    out["mix"] = _fit(media.read_audio(row["video_path"], sr=section.sr, start_s=float(row["start_s"]), duration_s=dur), n)
    for stem in ("music", "sfx"):
        p = row.get(f"{stem}_path")
        if p:
            w = media.load_wav(p, sr=section.sr)
            s0 = int(round(float(row["start_s"]) * section.sr))
            out[stem] = _fit(w[s0 : s0 + int(round(dur * section.sr))], n)
    del pad  # padding is implicit: _fit pads audio with zeros, frames hold the last image
    return out


def featurize_row(row: dict, section: FeaturizeSection, fcfg=None) -> dict[str, Any]:
    """Decode and featurize one manifest row into one shard row (arrays packed as bytes)."""
    fcfg = fcfg or feature_config(section)
    dec = decode_clip(row, section)
    feats = featurize_clip(dec["frames"], dec["mix"], dec.get("music"), dec.get("sfx"), fcfg)
    arrays = {
        "frames": dec["frames"],
        "wav_mix": dec["mix"],
        "wav_music": dec.get("music") if dec.get("music") is not None else feats.get("wav_music"),
        "wav_sfx": dec.get("sfx") if dec.get("sfx") is not None else feats.get("wav_sfx"),
    }
    for k in ARRAY_DTYPES:
        if k not in arrays and k in feats:
            arrays[k] = feats[k]
    out: dict[str, Any] = {c: row.get(c) for c in ID_COLUMNS if c in row}
    out["stems_source"] = feats.get("stems_source", "given" if "music" in dec else "separated")
    for k, a in arrays.items():
        if a is None:
            continue
        a = np.asarray(a)
        dt = ARRAY_DTYPES[k]
        if dt == "int16":  # float waveform in [-1, 1] -> 16-bit PCM
            a = np.round(np.clip(a, -1, 1) * 32767.0)
        a = np.ascontiguousarray(a.astype(dt))
        out[k] = a.tobytes()
        out[k + "__shape"] = list(a.shape)
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
    out = {k: v for k, v in row.items() if not (k in ARRAY_DTYPES or k.endswith("__shape"))}
    for k in keys or ARRAY_DTYPES:
        if k not in row or row[k] is None:
            continue
        a = np.frombuffer(row[k], dtype=ARRAY_DTYPES[k]).reshape([int(s) for s in row[k + "__shape"]])
        if ARRAY_DTYPES[k] == "int16":
            a = a.astype(np.float32) / 32767.0
        out[k] = a
    return out


# ----------------------------------------------------------------------------- shards


def plan_shards(manifest: pd.DataFrame, rows_per_shard: int) -> list[dict]:
    """Cut a manifest (sorted by clip_id) into shard specs ``{shard, clip_ids, rows}``."""
    df = manifest.sort_values("clip_id").reset_index(drop=True)
    recs = df.to_dict("records")
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
    if rows:
        table = pa.Table.from_pylist(rows)
        tmp = pq_path.with_name(pq_path.name + f".tmp{os.getpid()}")
        pq.write_table(table, tmp)
        os.replace(tmp, pq_path)
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
    }
    tmp = done_path.with_name(done_path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(summary))
    os.replace(tmp, done_path)  # the marker goes last: its presence means the shard is complete
    return summary


def warm_up(fcfg=None) -> float:
    """Run the feature code once on noise so numba compiles before timing starts (s spent)."""
    fcfg = fcfg or FeatureConfig()
    t = time.time()
    rng = np.random.default_rng(0)
    n = int(fcfg.sr * 2.0)
    featurize_clip(rng.integers(0, 255, (4, 16, 16, 3), dtype=np.uint8), (rng.standard_normal(n) * 0.1).astype(np.float32), None, None, fcfg)
    return time.time() - t


def completed_shards(out_dir: str | os.PathLike) -> dict[int, dict]:
    """Summaries of the shards whose ``done`` marker exists."""
    out = {}
    d = Path(out_dir) / "done"
    if d.exists():
        for p in sorted(d.glob("shard-*.json")):
            try:
                s = json.loads(p.read_text())
            except json.JSONDecodeError:  # a torn marker counts as not done
                continue
            out[int(s["shard"])] = s
    return out


def featurize_id(manifest_path: Path, section: FeaturizeSection) -> str:
    """Identity of a featurize run: the manifest's content hash plus the section's hash."""
    h = hashlib.sha1(Path(manifest_path).read_bytes()).hexdigest()[:8]
    return f"{h}-{config_hash(section)}"


def read_shards(run_dir: str | os.PathLike, split: str | None = None, columns: list[str] | None = None) -> pd.DataFrame:
    """Read a featurize run's shards into pandas (small runs, tests, evaluation).

    Args:
        run_dir: featurize run directory.
        split: keep only this split.
        columns: columns to read (array columns bring their ``__shape`` column along).
    """
    files = sorted((Path(run_dir) / "shards").glob("shard-*.parquet"))
    if not files:
        raise FileNotFoundError(f"no shards in {run_dir}/shards; run `soundtrack data featurize` first.")
    cols = None
    if columns is not None:
        cols = list(columns) + [c + "__shape" for c in columns if c in ARRAY_DTYPES]
        cols = list(dict.fromkeys(["clip_id", "split", *cols]))
    df = pd.concat([pq.read_table(f, columns=cols).to_pandas() for f in files], ignore_index=True)
    if split is not None:
        df = df[df["split"] == split].reset_index(drop=True)
    return df


def shard_files(run_dir: str | os.PathLike) -> list[str]:
    """Paths of a featurize run's shard files (for ``ray.data.read_parquet``)."""
    return [str(p) for p in sorted((Path(run_dir) / "shards").glob("shard-*.parquet"))]
