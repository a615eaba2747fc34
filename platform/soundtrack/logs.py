"""Logging set-up: a console a person can read, and Ray's own lines in a log file.

Every module logs through ``logging.getLogger(__name__)`` (all under the ``soundtrack``
logger). :func:`setup_console` (called by the command line) prints soundtrack's records
on stderr as plain lines; :func:`route_ray_logs` (called when a stage starts Ray) sends
the records of Ray's own loggers to a file instead, keeping only their errors on the
console. Library code never configures logging: a notebook or another program that
imports soundtrack keeps its own set-up.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

#: Loggers whose records go to the Ray log file (their children follow them).
RAY_LOGGERS = ("ray", "ray.data", "ray.train", "ray.tune", "ray.serve", "filelock")
#: Environment variable naming the Ray log file; :func:`route_ray_logs`'s default.
RAY_LOG_ENV = "SOUNDTRACK_RAY_LOG"

_console: logging.Handler | None = None


class _Stderr(logging.StreamHandler):
    """A handler writing to whatever ``sys.stderr`` is at emit time (pytest swaps it per test)."""

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it
        pass


def setup_console(verbose: bool = False, exclusive: bool = False) -> None:
    """Print soundtrack's log records on stderr, one plain line each (idempotent).

    Args:
        verbose: also print DEBUG records.
        exclusive: stop the records at the ``soundtrack`` logger (Ray workers, whose root
            logger prints to stderr too: each line would reach the driver twice).
    """
    global _console
    root = logging.getLogger("soundtrack")
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    if exclusive:
        root.propagate = False
    if _console is None:
        _console = _Stderr()
        _console.setFormatter(logging.Formatter("%(message)s"))
        root.addHandler(_console)


def route_ray_logs(path: str | os.PathLike | None = None) -> Path | None:
    """Send the records of Ray's loggers in this process to ``path`` (errors stay on the console).

    Args:
        path: the log file (default: ``$SOUNDTRACK_RAY_LOG``; without either, nothing changes).

    Returns:
        the log file, or ``None`` when none was given.
    """
    path = path or os.environ.get(RAY_LOG_ENV)
    if not path:
        return None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    errors = _Stderr()
    errors.setLevel(logging.ERROR)
    for name in RAY_LOGGERS:
        lg = logging.getLogger(name)
        for h in list(lg.handlers):
            lg.removeHandler(h)
        lg.addHandler(handler)
        if name == "ray":
            lg.addHandler(errors)
        lg.propagate = False
    return path


#: Ray loggers whose INFO lines (checkpoint reports, dataset plans) a worker keeps in its own
#: log file instead of forwarding them to the driver's console. Serve's are not among them:
#: changing them in Serve replicas coincided with 503s in tests/test_serve.py.
WORKER_QUIET_LOGGERS = ("ray.train", "ray.data", "ray.tune")


def quiet_ray_worker() -> None:
    """Runtime-env hook of every Ray worker: soundtrack's own records printed once (Ray
    forwards a worker's stderr to the driver), Ray Train/Data/Tune at WARNING."""
    setup_console(exclusive=True)
    for name in WORKER_QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
