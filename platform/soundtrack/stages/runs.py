"""Run directories and their cards (``run.json``) and metric logs (``metrics.jsonl``).

Every stage writes under ``<storage>/<stage>/<run name>/``:

- ``run.json``: the resolved config, the upstream runs it read (path, name, status),
  the code commit, the seed, the status (``running``, ``finished``, ``failed``) and
  timings (seconds per part of the stage), the number of attempts;
- ``metrics.jsonl``: one JSON object per line (step, metric values, wall time);
- ``losses.png``: a plot of the loss curves where the stage trains.

A later stage calls :func:`require_finished` on its inputs and refuses, with a clear
message, a run that did not finish.

On an object-store root (``s3://``) the run directory is a local staging copy
(:func:`soundtrack.storage.run_location`): :class:`Run` takes its lease in the store, pushes
``run.json`` there on every change, uploads what a failed launch made and publishes a
finished run (files, then the ``_COMPLETE`` marker).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform as _platform
import socket
import subprocess
import time
import traceback
from pathlib import Path
from typing import Any, Iterator

import matplotlib
import matplotlib.pyplot as plt

from soundtrack.errors import UpstreamError
from soundtrack.logs import RAY_LOG_ENV, route_ray_logs
from soundtrack.storage import (
    LEASE_HEARTBEAT_S,
    LEASE_TIMEOUT_S,
    METRICS,
    RUN_CARD,
    Lease,
    StagingSync,
    StorageRoot,
    Store,
    check_name,
    read_card,
    run_location,
    staged,
    write_json_atomic,
)

log = logging.getLogger(__name__)


def git_commit() -> str:
    """The commit of the source tree this package runs from (``+dirty`` when modified)."""
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        ).stdout.strip()
        if not sha:
            return "unknown"
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=here, capture_output=True, text=True, timeout=5
        ).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except Exception:
        return "unknown"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def require_finished(run_dir: str | os.PathLike, what: str = "upstream run") -> dict:
    """Return the card of a finished run, or raise naming the problem and the fix.

    Args:
        run_dir: the upstream run directory.
        what: how to call it in the message (e.g. ``"featurize run"``).

    Raises:
        UpstreamError: no card there, or its status is not ``finished``.
    """
    card = read_card(run_dir)
    if not card:
        raise UpstreamError(f"{what} {run_dir} has no {RUN_CARD}; run that stage first.")
    status = card.get("status")
    if status != "finished":
        cmd = card.get("command") or f"the {card.get('stage', '?')} stage"
        raise UpstreamError(
            f"{what} {run_dir} has status '{status}', not 'finished'; finish it first "
            f"(re-run `{cmd}` to resume it) before using it here."
        )
    return card


#: The file of a run directory that receives Ray's own log records.
RAY_LOG = "ray.log"


def _changed_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two JSON-able mappings (for log lines)."""
    if not (isinstance(a, dict) and isinstance(b, dict)):
        return [prefix.rstrip(".")] if a != b else []
    out = []
    for k in sorted(set(a) | set(b)):
        out += _changed_keys(a.get(k), b.get(k), f"{prefix}{k}.")
    return out


class Run:
    """A run directory with its card; use as a context manager around the stage's work.

    Entering takes the run directory's lease (:class:`soundtrack.storage.Lease`: a second
    launch of a live run is refused naming its owner; a dead owner's lease is taken over,
    which the log says: the stages apply the ``--resume`` policy before, in
    :func:`soundtrack.stages.base.prepare_run_dir`), then sets the status to ``running``
    (counting attempts, so a resumed run shows how often it was launched); leaving sets
    ``finished``, or ``failed`` with the error, and releases the lease.

    Args:
        root: storage root.
        stage: stage name (``data``, ``featurize``, ``pretrain``, ...).
        name: run name (from the config, see :func:`soundtrack.config.run_name`).
        config: the resolved config (JSON-able).
        upstream: input runs, ``{role: run_dir}``; each must be finished.
        seed: the run's seed.
        command: the command line that (re)starts this run, recorded for messages.
        run_dir: an explicit directory instead of ``<root>/<stage>/<name>``.
        identity: what defines the run (:func:`soundtrack.config.identity` of its sections):
            a relaunch must match it, while ``config`` (which also holds workers, CPUs,
            logging cadence) is the latest launch's. ``None``: the whole config must match.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        stage: str,
        name: str,
        config: dict | None = None,
        upstream: dict[str, str | os.PathLike] | None = None,
        seed: int | None = None,
        command: str | None = None,
        run_dir: str | os.PathLike | None = None,
        identity: dict | None = None,
        lease_heartbeat_s: float = LEASE_HEARTBEAT_S,
        lease_timeout_s: float = LEASE_TIMEOUT_S,
    ):
        check_name(stage, "stage name")
        check_name(name, "run name")
        self.identity = identity
        what = f"the {stage} stage's run directory"
        self.dir = (StorageRoot.parse(run_dir).local_path(what) if run_dir is not None
                    else run_location(root, stage, name))
        #: the object-store run this staging directory mirrors (None: a local run directory)
        self.staging = staged(self.dir)
        self._sync: StagingSync | None = None
        lease_store = self.staging.run_store() if self.staging is not None else Store(self.dir)
        self.lease = Lease(lease_store, heartbeat_s=lease_heartbeat_s, timeout_s=lease_timeout_s, command=command)
        self.stage = stage
        self.name = name
        self.config = config or {}
        self.upstream = {k: str(v) for k, v in (upstream or {}).items()}
        self.seed = seed
        self.command = command
        self._t0: float | None = None
        self.timings: dict[str, float] = {}

    # -- card -------------------------------------------------------------------------
    @property
    def card_path(self) -> Path:
        return self.dir / RUN_CARD

    @property
    def card(self) -> dict:
        return read_card(self.dir)

    @property
    def status(self) -> str | None:
        return self.card.get("status")

    def _update(self, **kw) -> dict:
        card = self.card
        card.update(kw)
        write_json_atomic(self.card_path, card)
        # a staged run's card goes to the store at once, but 'finished' only with the
        # published files (:meth:`__exit__`): a reader never sees it finished without them
        if self.staging is not None and kw.get("status") != "finished":
            self.staging.push_file(RUN_CARD)
        return card

    def start(self) -> "Run":
        """Check upstream runs, create the directory, take its lease and mark the run ``running``.

        Raises:
            UpstreamError: an upstream run that did not finish, or a run here with another identity.
            soundtrack.errors.LeaseHeldError: another live launch holds the run directory.
        """
        ups = {}
        for role, path in self.upstream.items():
            up = require_finished(path, what=f"{role} run")
            origin = staged(path)
            # a staged upstream is recorded by its location in the store, not the temp copy
            ups[role] = {"path": origin.uri if origin is not None else str(path), "name": up.get("name"),
                         "stage": up.get("stage"), "status": up.get("status"), "commit": up.get("commit")}
        self.dir.mkdir(parents=True, exist_ok=True)
        self.lease.acquire(take_over=True)
        try:
            if self.staging is not None:
                self.staging.unpublish()
            started = self._start(ups)
            if self.staging is not None:  # checkpoints reach the store while the run goes on
                self._sync = StagingSync(self.staging).start()
            return started
        except BaseException:
            self.lease.release()
            raise

    def _start(self, ups: dict) -> "Run":
        old = self.card
        if self.identity is not None and old.get("identity") is not None:
            if old["identity"] != self.identity:
                raise UpstreamError(
                    f"{self.dir} holds a run with another identity ({old['identity']} here, {self.identity} now); "
                    "use --force to start over or change the name."
                )
        elif old.get("config") and self.config and old["config"] != self.config:
            raise UpstreamError(
                f"{self.dir} holds a run with a different config; use --force to start over or change the name."
            )
        if old.get("config") and self.config and old["config"] != self.config:
            log.info("%s: relaunched with other infrastructure settings (same identity): %s", self.dir.name,
                     _changed_keys(old["config"], self.config))
        self.timings = dict(old.get("timings", {}))
        self._t0 = time.time()
        # Ray's own log lines of this run go to <run>/ray.log (the console keeps soundtrack's).
        os.environ[RAY_LOG_ENV] = str(self.dir / RAY_LOG)
        route_ray_logs()
        self._update(
            stage=self.stage,
            name=self.name,
            status="running",
            config=self.config,
            identity=self.identity,
            upstream=ups,
            commit=git_commit(),
            seed=self.seed,
            command=self.command,
            host=socket.gethostname(),
            python=_platform.python_version(),
            created_at=old.get("created_at", _now()),
            started_at=_now(),
            attempts=int(old.get("attempts", 0)) + 1,
            timings=self.timings,
            error=None,
        )
        return self

    @contextlib.contextmanager
    def timer(self, part: str) -> Iterator[None]:
        """Time a part of the stage (seconds accumulate across resumed attempts)."""
        t = time.time()
        try:
            yield
        finally:
            self.timings[part] = round(self.timings.get(part, 0.0) + time.time() - t, 3)
            self._update(timings=self.timings)

    def finish(self, **summary: Any) -> dict:
        """Mark the run ``finished`` and store a summary (counts, final metrics, outputs)."""
        total = time.time() - (self._t0 or time.time())
        self.timings["total_last_attempt"] = round(total, 3)
        return self._update(status="finished", finished_at=_now(), timings=self.timings, summary=summary)

    def fail(self, exc: BaseException) -> None:
        self._update(
            status="failed",
            failed_at=_now(),
            timings=self.timings,
            error=f"{type(exc).__name__}: {exc}",
            traceback=traceback.format_exc(limit=20),
        )

    def __enter__(self) -> "Run":
        return self.start()

    def __exit__(self, et, ev, tb) -> bool:
        if self._sync is not None:
            self._sync.stop()
        try:
            if ev is not None:
                self.fail(ev)
                if self.staging is not None:
                    try:  # what the failed attempt made, for --resume elsewhere (no marker)
                        if self._sync is not None:
                            self._sync.sync()  # what changed since the last pass
                        else:
                            self.staging.push()
                    except Exception as exc:  # never hide the stage's own error
                        log.warning("%s: could not upload the failed run to %s: %s", self.name, self.staging.uri, exc)
            else:
                if self.status == "running":
                    self.finish()
                if self.staging is not None:
                    self.staging.publish()
                    log.info("%s: published to %s", self.name, self.staging.uri)
        finally:
            self.lease.release()
        return False

    # -- metrics ----------------------------------------------------------------------
    def log(self, step: int | None = None, **metrics: Any) -> None:
        """Append one line of metrics (with wall time, s since the epoch) to metrics.jsonl."""
        rec = {"step": step, "time": round(time.time(), 3), **metrics}
        with open(self.dir / METRICS, "a") as f:
            f.write(json.dumps(rec, default=float) + "\n")


def read_metrics(run_dir: str | os.PathLike, name: str = METRICS) -> list[dict]:
    """All metric lines of a run (a torn last line from a killed run is skipped)."""
    p = Path(run_dir) / name
    out = []
    if p.exists():
        for line in p.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


def plot_losses(run_dir: str | os.PathLike, keys: list[str] | None = None, out: str = "losses.png",
                metrics_name: str = METRICS) -> Path | None:
    """Plot metric curves (every key containing ``loss`` by default) against step.

    Args:
        run_dir: run directory with a metrics.jsonl.
        keys: which metrics to plot.
        out: file name of the PNG inside the run directory.
        metrics_name: the metrics file to read.

    Returns:
        The PNG path, or ``None`` when there is nothing to plot.
    """
    recs = [r for r in read_metrics(run_dir, metrics_name) if r.get("step") is not None]
    if not recs:
        return None
    if keys is None:
        keys = sorted({k for r in recs for k in r if "loss" in k})
    if not keys:
        return None

    matplotlib.use("Agg")

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    for k in keys:
        pts = [(r["step"], r[k]) for r in recs if isinstance(r.get(k), (int, float))]
        if pts:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, label=k)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(Path(run_dir).name)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    p = Path(run_dir) / out
    fig.savefig(p)
    plt.close(fig)
    return p
