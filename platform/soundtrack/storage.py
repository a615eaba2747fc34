"""File primitives every layer may use: atomic JSON writes and reading a run card.

A run directory's card (``run.json``) and metrics log (``metrics.jsonl``) are written by
:class:`soundtrack.stages.runs.Run`; lower layers (training loops, the Tune wiring) only
read cards and write files atomically, through these functions.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

RUN_CARD = "run.json"
METRICS = "metrics.jsonl"


def atomic_write(path: str | os.PathLike, write: Callable[[Path], Any]) -> None:
    """Write a file through a temporary name beside it and a rename, so a reader (or a kill)
    never sees half a file.

    Args:
        path: the final file.
        write: ``write(tmp_path)`` writes the content to the temporary path (the process id
            is in its name, so concurrent writers never share one).
    """
    path = Path(path)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    write(tmp)
    os.replace(tmp, path)


def write_json_atomic(path: str | os.PathLike, data: Any) -> None:
    """Write ``data`` as JSON through a temporary file and a rename (a kill never leaves half a file).

    Args:
        path: the JSON file.
        data: anything ``json.dumps`` takes (other objects are written with ``str``).
    """
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=str)))


def read_json_object(path: str | os.PathLike, error: type[Exception] = ValueError, what: str = "",
                     hint: str = "") -> dict:
    """A JSON file that must hold an object, or ``error`` naming the file and the problem.

    Args:
        path: the file.
        error: the exception class raised (e.g. the caller's :class:`SoundtrackError` subclass).
        what: what the file is, for the message (e.g. ``"the scheduler config"``).
        hint: what to do, appended to the message.
    """
    path = Path(path)
    name = f"{path} ({what})" if what else str(path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise error(f"{name} is not readable JSON ({exc}){'; ' + hint if hint else ''}") from exc
    if not isinstance(doc, dict):
        raise error(f"{name} must hold a JSON object, got {type(doc).__name__}")
    return doc


def read_card(run_dir: str | os.PathLike) -> dict:
    """Read a run's ``run.json`` (``{}`` when there is none)."""
    p = Path(run_dir) / RUN_CARD
    if not p.exists():
        return {}
    return json.loads(p.read_text())
