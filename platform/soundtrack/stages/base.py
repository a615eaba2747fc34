"""What every stage shares: the command line it records and the --force / --resume policy."""

from __future__ import annotations

import logging
import shlex
import shutil
import sys
from pathlib import Path

from soundtrack.stages.runs import UpstreamError
from soundtrack.storage import read_card

log = logging.getLogger(__name__)


def _command() -> str:
    return " ".join(shlex.quote(a) for a in ["soundtrack", *sys.argv[1:]]) if sys.argv else "soundtrack"


def _prepare_run_dir(out: Path, stage: str, force: bool, resume: bool) -> bool:
    """Apply --force / --resume to a run directory; True when the run is already finished."""
    if force and out.exists():
        shutil.rmtree(out)
    card = read_card(out)
    if card.get("status") == "finished":
        print(f"{stage}: {out} is already finished; reusing it (--force to redo)", file=sys.stderr)
        return True
    if card and not resume:
        raise UpstreamError(
            f"{stage} run {out} exists with status '{card.get('status')}' (an earlier launch stopped); "
            f"pass --resume to continue from its last checkpoint, or --force to start over."
        )
    return False
