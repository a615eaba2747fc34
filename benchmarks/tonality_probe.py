"""How tonal is a generator's audio at different sampler settings? Chroma concentration and
spectral flatness (the bench's tonality measures) against the real mixes' band.

    .venv/bin/python benchmarks/tonality_probe.py --model /tmp/demo14/registry/demo/model \
        --features /tmp/demo14/features/<run> [--clips 6] [--out benchmarks/results/tonality_probe.json]

For the first ``--clips`` test clips (by clip id) it generates one soundtrack per setting
(seed 0) and reports the median per-clip ``chroma_conc`` and ``flatness``
(:mod:`soundtrack.metrics.tonality`, through :func:`soundtrack.eval.scoring.audio_descriptors`)
next to the same medians for the clips' real mixes, for the real mel vocoded with
Griffin-Lim (no VAE) and for the real mel through the model's VAE and the vocoder: the
last two say how much of the distance to the real mixes the vocoder and the VAE alone
account for. Settings: the model's own sampler defaults, and guidance scales 1 and 3, and
40 steps. Wall seconds per setting are recorded (not a speed benchmark).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from soundtrack.data.shards import load_split
from soundtrack.eval.reconstruction import HeldOutClips
from soundtrack.eval.scoring import audio_descriptors
from soundtrack.metrics import chroma_concentration, spectral_flatness
from soundtrack.models.vae import decode_mel, encode_latents
from soundtrack.pipelines.generator import SoundtrackGenerator

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("tonality_probe")

#: The sampler settings compared (``{}``: the model's stored defaults).
SETTINGS: tuple[dict[str, Any], ...] = ({}, {"guidance_scale": 1.0}, {"guidance_scale": 3.0}, {"num_steps": 40})


def tonality(wavs) -> dict[str, float]:
    """Median per-clip chroma concentration and spectral flatness of some waveforms (16 kHz)."""
    conc, flat = [], []
    for w in wavs:
        d = audio_descriptors(np.asarray(w, np.float32))
        conc.append(chroma_concentration(d["chroma"], level_db=d["level_db"]))
        flat.append(spectral_flatness(None, 16000, mag=d["spectrum"]))
    return {"chroma_conc": float(np.nanmedian(conc)), "flatness": float(np.nanmedian(flat)), "n": len(conc)}


def main(argv: list[str] | None = None) -> int:
    """The probe of the module docstring; ``argv`` as on the command line (``None``: ``sys.argv``)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="a generator directory")
    p.add_argument("--features", required=True, help="the featurize run of its data")
    p.add_argument("--clips", type=int, default=6)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "tonality_probe.json"))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    gen = SoundtrackGenerator.load(args.model)
    rows = load_split(args.features, "test", ["frames"], n=args.clips)
    clips = HeldOutClips(args.features, gen.vae.mel, split="test", n=args.clips)
    with torch.no_grad():
        vocoded = clips.vocoder(clips.mels).numpy()
        through_vae = clips.vocoder(decode_mel(gen.vae, encode_latents(gen.vae, clips.mels))).numpy()
    report: dict[str, Any] = {
        "command": " ".join(["python", *sys.argv]) if argv is None else " ".join(argv),
        "model": args.model, "features": args.features, "n_clips": len(rows),
        "references": {"real mix": tonality(clips.wavs), "real mel -> Griffin-Lim": tonality(vocoded),
                       "real mel -> VAE -> Griffin-Lim": tonality(through_vae)},
        "model_sampler": {k: v for k, v in gen.sampler_config().__dict__.items() if k in ("guidance_scale", "num_steps")},
        "settings": [],
    }
    for ov in SETTINGS:
        t0 = time.perf_counter()
        wavs = [gen.generate(r["frames"], seed=0, clip_id=r["clip_id"], **ov) for r in rows]
        res = {"overrides": ov, **tonality(wavs), "wall_s": round(time.perf_counter() - t0, 1)}
        report["settings"].append(res)
        log.info("%s: chroma_conc %.3f, flatness %.3f", ov or "model defaults", res["chroma_conc"], res["flatness"])
    Path(args.out).write_text(json.dumps(report, indent=2))
    log.info("references %s; wrote %s", report["references"], args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
