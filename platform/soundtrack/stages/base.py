"""What every stage shares: the command line it records and the --force / --resume policy."""

from __future__ import annotations

import logging
import shlex
import shutil
import sys
from pathlib import Path

from soundtrack.stages.runs import UpstreamError
from soundtrack.storage import check_not_leased, read_card, staged

log = logging.getLogger(__name__)


def command_line() -> str:
    """The command that launched this process, as recorded in run cards (``soundtrack ...``)."""
    return " ".join(shlex.quote(a) for a in ["soundtrack", *sys.argv[1:]]) if sys.argv else "soundtrack"


def prepare_run_dir(out: Path, stage: str, force: bool, resume: bool, needs_resume_flag: bool = True,
                    what_resumes: str = "from its last checkpoint") -> bool:
    """The --force / --resume policy of every stage, written once.

    ``out`` may be the staging directory of an object-store run
    (:func:`soundtrack.storage.run_location`): the lease and card checks then read the store,
    ``force`` deletes the run there too, and the staging copy is pulled from the store
    (:meth:`soundtrack.storage.Staging.pull`) before the policy looks at it.

    ``force`` deletes the directory; a finished run is reused (True is returned); an
    unfinished one continues only with ``resume`` when ``needs_resume_flag`` (training and
    search stages: a silent restart would hide a crash), or always (data stages, whose
    finished pieces are kept by construction).

    Args:
        out: the run directory.
        stage: the stage's name, for messages.
        force: start over.
        resume: continue an unfinished run.
        needs_resume_flag: refuse an unfinished run without ``resume``.
        what_resumes: how the message describes a resumed run.

    Returns:
        True when the run is finished and should be reused as it is.

    Raises:
        UpstreamError: an unfinished run without ``resume`` (the message names both flags).
        soundtrack.errors.LeaseHeldError: another live launch holds the run (a second
            launch of one config is refused, whatever the flags; a finished run is still reused).
    """
    staging = staged(out)
    if staging is not None:
        # an object-store run: its card and lease are in the store, the stage works in the
        # staging copy, brought in step with the store first (what --resume continues from)
        if force or read_card(staging.uri).get("status") != "finished":
            check_not_leased(staging.uri, what=f"{stage} run")
        if force:
            staging.delete()
        staging.pull()
    else:
        if force or read_card(out).get("status") != "finished":
            check_not_leased(out, what=f"{stage} run")
        if force and out.exists():
            shutil.rmtree(out)
    card = read_card(out)
    if card.get("status") == "finished":
        log.info("%s: %s is already finished; reusing it (--force to redo)", stage, out)
        return True
    if card and needs_resume_flag and not resume:
        raise UpstreamError(
            f"{stage} run {out} exists with status '{card.get('status')}' (an earlier launch stopped); "
            f"pass --resume to continue {what_resumes}, or --force to start over."
        )
    return False
