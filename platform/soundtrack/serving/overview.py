"""What the web page's runs view and clip picker read from the run storage (no Ray, no torch).

Everything here reads through :class:`~soundtrack.storage.Store`, so a local runs folder and
an object store (``s3://``) give the same answers, and answers only what a client may see:
card fields are picked by name and passed through :func:`~soundtrack.serving.guard.scrub`
(no absolute paths, hosts, commands or tracebacks); names in URLs are checked against
:data:`NAME_RE` and must be listed before anything is read, so no path a client sends is
ever joined unchecked.

* ``tune/<run>/``: ``run.json`` (state, times, best trial), ``trials.csv`` (one row a trial)
  and its plots (``*.png``, :mod:`soundtrack.tuning.report`);
* ``bench/<run>/``: ``summary.json`` (per method and metric: mean and 95 % interval) and
  ``bench.png`` (:mod:`soundtrack.eval.bench`);
* ``registry/<name>``: the current card (:func:`soundtrack.stages.registry.read_card`);
* ``data/<run>/videos/*.mp4``: the test clips the page offers (a synthetic or imported set).
"""

from __future__ import annotations

import io
import json
import logging
import math
import re
from typing import Any

import pandas as pd

from soundtrack.errors import RegistryError, SoundtrackError
from soundtrack.serving.guard import scrub
from soundtrack.stages.registry import read_card as registry_card
from soundtrack.storage import RUN_CARD, Store

log = logging.getLogger(__name__)

#: A run, registry entry or clip file name as it may appear in a URL.
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
#: A plot a run view may show.
PLOT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}\.png")
#: Stages whose plots are served.
PLOT_STAGES = ("tune", "bench")
#: At most this many runs of a stage, trials of a search, clips offered (newest names last).
MAX_RUNS = 50
MAX_TRIALS = 500
MAX_CLIPS = 24
#: Bench metrics shown first in the page's table (the rest follow in summary order).
BENCH_FIRST = ("f1", "beat_f1", "bcs", "bhs", "melody_acc", "sim", "p_at_1", "fad", "kl", "is")
#: Card fields of a search run the page shows.
TUNE_CARD_FIELDS = ("status", "created_at", "started_at", "finished_at")
#: Registry card fields the page shows.
REGISTRY_FIELDS = ("name", "version", "created_at", "settings", "sampler", "score", "metrics", "params")


class OverviewError(SoundtrackError):
    """A runs-view or clip request for something that does not exist (404)."""


def _finite(v: Any) -> Any:
    """JSON has no NaN / inf: they become ``None``."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _names(store: Store, rel: str) -> list[str]:
    """The entries of ``rel`` whose names pass :data:`NAME_RE`, sorted (the last :data:`MAX_RUNS`)."""
    try:
        names = [n for n in store.listdir(rel) if NAME_RE.fullmatch(n)]
    except FileNotFoundError:
        return []
    return sorted(names)[-MAX_RUNS:]


def _files(store: Store, rel: str) -> list[str]:
    """The files directly in ``rel`` (:meth:`Store.listdir` lists folders only)."""
    try:
        return sorted(n for n, size in store.list(rel).items() if size >= 0 and "/" not in n)
    except FileNotFoundError:
        return []


def _plots(store: Store, rel: str) -> list[str]:
    return [n for n in _files(store, rel) if PLOT_RE.fullmatch(n)]


def _card(store: Store, rel: str) -> dict:
    try:
        return store.read_json(f"{rel}/{RUN_CARD}", {}) or {}
    except (OSError, ValueError):
        return {}


def tune_run(store: Store, name: str) -> dict[str, Any]:
    """One search: its state, best trial, trials table and plots.

    Args:
        store: the run storage.
        name: the run's folder under ``tune/``.

    Returns:
        ``{"name", "status", "created_at", ..., "best", "trials": {"columns", "rows", "n"},
        "plots"}``; ``rows`` hold at most :data:`MAX_TRIALS` trials (``n`` counts them all).
    """
    rel = f"tune/{name}"
    card = _card(store, rel)
    out: dict[str, Any] = {"name": name, **{k: card.get(k) for k in TUNE_CARD_FIELDS}}
    out["status"] = out["status"] or "-"
    best = (card.get("summary") or {}).get("best")
    out["best"] = scrub(best) if isinstance(best, dict) else None
    trials: dict[str, Any] = {"columns": [], "rows": [], "n": 0}
    try:
        df = pd.read_csv(io.BytesIO(store.read_bytes(f"{rel}/trials.csv")))
    except FileNotFoundError:
        df = None
    except (OSError, ValueError) as exc:  # a half-written or foreign file: the run is still listed
        log.warning("tune run %s: trials.csv unreadable (%s)", name, exc)
        df = None
    if df is not None:
        df = df.drop(columns=[c for c in ("error",) if c in df.columns])  # server-side messages
        trials = {"columns": [str(c) for c in df.columns], "n": int(len(df)),
                  "rows": [[_finite(v.item() if hasattr(v, "item") else v) for v in row]
                           for row in df.head(MAX_TRIALS).itertuples(index=False)]}
    out["trials"] = trials
    out["plots"] = _plots(store, rel)
    return out


def bench_run(store: Store, name: str) -> dict[str, Any]:
    """One bench: per method and metric the mean and 95 % interval, and its plots.

    Args:
        store: the run storage.
        name: the bench's folder under ``bench/``.

    Returns:
        ``{"name", "status", "clips", "seeds", "metrics", "rows": [{"method", "values":
        {metric: [mean, lo, hi]}}], "plots"}``; ``status`` is ``finished`` once its
        ``summary.json`` is written, else ``running``.
    """
    rel = f"bench/{name}"
    try:
        summary = json.loads(store.read_bytes(f"{rel}/summary.json"))
    except FileNotFoundError:
        summary = None
    except (OSError, ValueError) as exc:
        log.warning("bench %s: summary.json unreadable (%s)", name, exc)
        summary = None
    out: dict[str, Any] = {"name": name, "status": "finished" if summary else "running", "clips": None,
                           "seeds": None, "metrics": [], "rows": [], "plots": _plots(store, rel)}
    if not summary:
        return out
    methods = summary.get("methods") or {}
    seen: list[str] = []
    for per in methods.values():
        for m, v in (per or {}).items():
            if isinstance(v, dict) and "mean" in v and m not in seen:
                seen.append(m)
    out["metrics"] = [m for m in BENCH_FIRST if m in seen] + [m for m in seen if m not in BENCH_FIRST]
    for method, per in methods.items():
        vals = {}
        for m in out["metrics"]:
            v = (per or {}).get(m)
            if isinstance(v, dict):
                lo, hi = (list(v.get("ci95") or [None, None]) + [None, None])[:2]
                vals[m] = [_finite(v.get("mean")), _finite(lo), _finite(hi)]
        out["rows"].append({"method": str(method), "values": vals})
    out["clips"], out["seeds"] = summary.get("clips"), scrub(summary.get("seeds"))
    return out


def registry_entry(store: Store, name: str) -> dict[str, Any]:
    """A registry entry's current card, the fields of :data:`REGISTRY_FIELDS` only.

    Args:
        store: the run storage.
        name: the entry.
    """
    try:
        card = registry_card(name, store.root.uri)
    except RegistryError as exc:
        return {"name": name, "error": "unreadable card", "message": scrub(str(exc))}
    return scrub({"name": name, **{k: card[k] for k in REGISTRY_FIELDS if k in card}})


def runs_overview(store: Store) -> dict[str, list[dict]]:
    """``GET /v1/runs``: the searches, benches and registry entries under the storage root.

    Args:
        store: the run storage.

    Returns:
        ``{"tune": [tune_run...], "bench": [bench_run...], "registry": [registry_entry...]}``.
    """
    return {"tune": [tune_run(store, n) for n in _names(store, "tune")],
            "bench": [bench_run(store, n) for n in _names(store, "bench")],
            "registry": [registry_entry(store, n) for n in _names(store, "registry")]}


def plot_bytes(store: Store, stage: str, name: str, plot: str) -> bytes:
    """A run's plot (PNG bytes), only when the stage, run and file are all listed.

    Raises:
        OverviewError: an unknown stage, run or plot.
    """
    if stage not in PLOT_STAGES or not NAME_RE.fullmatch(name) or not PLOT_RE.fullmatch(plot):
        raise OverviewError(f"no plot {stage}/{name}/{plot}")
    if name not in _names(store, stage) or plot not in _plots(store, f"{stage}/{name}"):
        raise OverviewError(f"no plot {stage}/{name}/{plot}")
    return store.read_bytes(f"{stage}/{name}/{plot}")


def list_clips(store: Store) -> list[dict[str, str]]:
    """The clips the page offers: ``data/<run>/videos/*.mp4`` (at most :data:`MAX_CLIPS`).

    Returns:
        ``[{"run", "clip"}]`` in name order.
    """
    out = []
    for run in _names(store, "data"):
        files = [n for n in _files(store, f"data/{run}/videos") if NAME_RE.fullmatch(n) and n.endswith(".mp4")]
        out += [{"run": run, "clip": f} for f in files[: MAX_CLIPS - len(out)]]
        if len(out) >= MAX_CLIPS:
            break
    return out


def clip_bytes(store: Store, run: str, clip: str) -> bytes:
    """A test clip's bytes, only when :func:`list_clips` lists it.

    Raises:
        OverviewError: an unknown clip.
    """
    if {"run": run, "clip": clip} not in list_clips(store):
        raise OverviewError(f"no test clip {run}/{clip}")
    return store.read_bytes(f"data/{run}/videos/{clip}")
