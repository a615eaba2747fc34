"""`make demo`'s chain timed from an empty storage root: total and per step.

    .venv/bin/python benchmarks/demo_time.py [--storage DIR] [--keep]

Runs ``soundtrack demo --storage DIR`` in a subprocess (DIR must be empty or missing; a
temporary directory by default, deleted afterwards unless ``--keep``), so nothing finished
earlier is reused. Reads the ``demo.json`` the demo writes (its per-step times) and writes
``benchmarks/results/demo.json``: the command, wall time of the whole process (Python and
Ray start-up included), the demo's own step times, the commit and the machine's load
averages before and after (the aim is <= 30 min on 2 cores; a busy machine is slower, so
read the load before comparing).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
AIM_S = 30 * 60  # the aim for the chain on 2 cores, after set-up (s)


def main() -> None:
    from soundtrack.stages.runs import git_commit

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--storage", help="an empty or missing storage root (default: a temporary directory)")
    ap.add_argument("--keep", action="store_true", help="keep the storage root afterwards")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "demo.json"))
    args = ap.parse_args()

    storage = Path(args.storage) if args.storage else Path(tempfile.mkdtemp(prefix="soundtrack-demo-"))
    if storage.exists() and any(storage.iterdir()):
        sys.exit(f"demo_time: {storage} is not empty; the demo would reuse finished stages. "
                 "Give an empty or missing --storage.")
    cmd = [str(ROOT / ".venv" / "bin" / "soundtrack"), "demo", "--storage", str(storage)]
    print("demo_time: soundtrack " + " ".join(cmd[1:]), file=sys.stderr, flush=True)
    load0, t = os.getloadavg(), time.time()
    try:
        subprocess.run(cmd, cwd=ROOT, check=True)
        wall = time.time() - t
        load1 = os.getloadavg()
        demo = json.loads((storage / "demo" / "demo" / "demo.json").read_text())
    finally:
        if not args.keep and not args.storage:
            shutil.rmtree(storage, ignore_errors=True)
    result = {
        "command": "python benchmarks/demo_time.py",
        "what": "soundtrack demo (make demo's chain) from an empty storage root, .venv already installed",
        "commit": git_commit(),
        "cpus": os.cpu_count(),
        "wall_s": round(wall, 1),
        "chain_s": demo["total_s"],
        "steps_s": demo["steps_s"],
        "aim_s": AIM_S,
        "within_aim": bool(wall <= AIM_S),
        "load_avg_1_5_15_before": [round(x, 2) for x in load0],
        "load_avg_1_5_15_after": [round(x, 2) for x in load1],
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
