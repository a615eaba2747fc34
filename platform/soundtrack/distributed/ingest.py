"""``soundtrack data ingest`` on Ray: one probe task per file, a bounded number in flight.

The checks themselves are :func:`soundtrack.data.ingest.check_file` (plain Python, also
run serially); this module only fans them out, so a folder of 10,000 files is not probed
one by one on the driver. At most ``concurrency`` tasks are in flight: the object store
and the scheduler never hold 10,000 pending tasks, and the driver's progress lines and the
probe cache (written by the driver as results arrive) advance steadily, which is what
makes a killed ingest resume where it stopped.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import ray

from soundtrack.data.ingest import check_file
from soundtrack.distributed.cluster import init_ray

log = logging.getLogger(__name__)


@ray.remote(max_retries=1)
def _check_task(path: str, rel: str, kwargs: dict) -> dict:
    """One file's checks in a Ray worker (retried once if the worker dies)."""
    return check_file(path, rel, **kwargs)


class RayMapper:
    """A :data:`soundtrack.data.ingest.Mapper` running each file's checks as a Ray task.

    Args:
        concurrency: tasks in flight (``None``: four per CPU, so workers never wait on the
            driver between files; at least 1).
        num_cpus: CPUs each task reserves (probing is mostly I/O and one decoder thread).
        address: the cluster to join (``None``: a private local Ray, or ``RAY_ADDRESS``).
    """

    def __init__(self, concurrency: int | None = None, num_cpus: float = 1.0, address: str | None = None):
        self.concurrency = concurrency
        self.num_cpus = float(num_cpus)
        self.address = address

    def __call__(self, items: Sequence[tuple[str, str]], kwargs: Mapping[str, Any]) -> Iterator[dict]:
        """Yield each file's result as its task finishes (any order).

        Args:
            items: ``(path, relative path)`` of the files to check.
            kwargs: :func:`check_file`'s other arguments.
        """
        if not items:
            return
        init_ray(address=self.address)
        cpus = float(ray.cluster_resources().get("CPU", 1.0))
        limit = self.concurrency or max(1, int(4 * cpus / max(self.num_cpus, 1e-3)))
        task = _check_task.options(num_cpus=self.num_cpus)
        kw = ray.put(dict(kwargs))
        pending: dict[ray.ObjectRef, tuple[str, str]] = {}
        queue = list(items)
        log.info("ingest: %d file(s) to check on Ray, %d task(s) at a time", len(queue), limit)
        while queue or pending:
            while queue and len(pending) < limit:
                path, rel = queue.pop(0)
                pending[task.remote(path, rel, kw)] = (path, rel)
            refs = list(pending)
            done, _ = ray.wait(refs, num_returns=1)
            if len(refs) > 1:  # take every other finished result too: one driver round trip, not one per file
                more, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
                done = list(dict.fromkeys([*done, *more]))
            for ref in done:
                path, rel = pending.pop(ref)
                try:
                    yield ray.get(ref)
                except ray.exceptions.RayError as exc:  # the task's worker died twice: quarantine, go on
                    yield {"rel": rel, "ok": False, "reason": "unreadable",
                           "message": f"{path}: its check crashed its worker twice ({type(exc).__name__}); "
                                      "inspect or re-encode the file."}
