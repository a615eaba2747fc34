"""How often does the Krumhansl-Kessler mode estimate agree with the clips' ``label_mode``,
with the chroma's low band removed at several cut-offs? (The choice of
``soundtrack.eval.scoring.KEY_MIN_HZ``.)

    .venv/bin/python benchmarks/mode_estimator.py --features /tmp/demo14/features/<run> \
        [--out benchmarks/results/mode_estimator.json]

Real mixes (``wav_mix``) of a synthetic featurize run: the ``val`` + ``test`` clips choose
the cut-off (0 / 150 / 200 / 300 Hz), the first 96 ``train`` clips (not used for the
choice) check it. Reported next to the share of major clips (what always answering
"major" would score).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from soundtrack.data.features import DEFAULT_CONFIG, magnitude_spectrogram
from soundtrack.data.shards import load_split
from soundtrack.eval.scoring import key_chroma
from soundtrack.metrics import estimate_mode

ROOT = Path(__file__).resolve().parents[1]
CUTOFFS_HZ = (0.0, 150.0, 200.0, 300.0)


def agreement(rows, min_hz: float) -> float:
    """Fraction of rows whose estimated mode (chroma above ``min_hz``) is their ``label_mode``."""
    hits = []
    for r in rows:
        w = np.asarray(r["wav_mix"], np.float32)
        hits.append(estimate_mode(key_chroma(w, magnitude_spectrogram(w, DEFAULT_CONFIG), min_hz)) == r["label_mode"])
    return float(np.mean(hits))


def main(argv: list[str] | None = None) -> int:
    """The measurement of the module docstring; ``argv`` as on the command line."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--features", required=True)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "mode_estimator.json"))
    args = p.parse_args(argv)
    cols, opt = ["wav_mix"], ("label_mode",)
    choose = (load_split(args.features, "val", cols, n=None, optional=opt)
              + load_split(args.features, "test", cols, n=None, optional=opt))
    check = load_split(args.features, "train", cols, n=96, optional=opt)
    report = {
        "command": " ".join(["python", *sys.argv]) if argv is None else " ".join(argv),
        "features": args.features,
        "choose": {"n": len(choose), "major_share": float(np.mean([r["label_mode"] == "major" for r in choose])),
                   "agreement_by_min_hz": {str(c): agreement(choose, c) for c in CUTOFFS_HZ}},
    }
    best = max(CUTOFFS_HZ, key=lambda c: report["choose"]["agreement_by_min_hz"][str(c)])
    report["chosen_min_hz"] = best
    report["check"] = {"n": len(check), "major_share": float(np.mean([r["label_mode"] == "major" for r in check])),
                       "agreement_by_min_hz": {str(c): agreement(check, c) for c in (0.0, best)}}
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
