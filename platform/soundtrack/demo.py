"""``soundtrack demo``: the whole chain on the embedded default, ending with Ray Serve and a bench."""

from __future__ import annotations

import dataclasses
import logging
import os
import textwrap
import time
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np

from soundtrack.config import (
    ExperimentConfig,
)
from soundtrack.data.features import DEFAULT_CONFIG, log_mel
from soundtrack.data.manifest import read_manifest
from soundtrack.data.media import read_audio
from soundtrack.eval.bench import load_bench_config
from soundtrack.serving.local import serve_demo
from soundtrack.stages.bench import ensure_evaluator, run_bench
from soundtrack.stages.data import stage_featurize, stage_synth
from soundtrack.stages.models import load_generator, resolve_model_uri
from soundtrack.stages.pretrain import stage_pretrain
from soundtrack.stages.train import stage_train
from soundtrack.stages.tune import stage_tune
from soundtrack.storage import write_json_atomic
from soundtrack.tuning.config import load_tune_config

log = logging.getLogger(__name__)


#: The experiment files the demo chains (resolved in the repository, not the working directory).
EXPERIMENTS = Path(__file__).resolve().parents[2] / "experiments"


def plot_spectrograms(real: np.ndarray, generated: np.ndarray, path: Path, title: str = "") -> Path:
    """Log-mel spectrograms of a clip's real soundtrack above the generated one, same scale.

    Args:
        real: the video's own audio (mono, ``DEFAULT_CONFIG.sr``).
        generated: the generated soundtrack (mono, same rate).
        path: output PNG.
        title: figure title.

    Returns:
        ``path``.
    """
    matplotlib.use("Agg")
    mels = [log_mel(np.asarray(w, dtype=np.float32)) for w in (real, generated)]
    lo, hi = max(min(float(m.min()) for m in mels), -11.5), max(float(m.max()) for m in mels)
    hop_s = DEFAULT_CONFIG.hop / DEFAULT_CONFIG.sr
    fig, axes = plt.subplots(2, 1, figsize=(10, 5.8), sharex=True)
    fig.subplots_adjust(top=0.84, hspace=0.3)  # room for a two-line title
    for ax, m, name in zip(axes, mels, ("real soundtrack (the video's audio)", "generated (served over HTTP)")):
        im = ax.imshow(m, origin="lower", aspect="auto", vmin=lo, vmax=hi, cmap="magma",
                       extent=(0, m.shape[1] * hop_s, 0, m.shape[0]))
        ax.set_ylabel("mel band")
        ax.set_title(name, fontsize=9)
    axes[-1].set_xlabel("time (s)")
    fig.colorbar(im, ax=axes, label="ln mel magnitude", fraction=0.03)
    fig.suptitle(textwrap.fill(title, 110), fontsize=9)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def stage_demo(cfg: ExperimentConfig, experiments: str | Path = EXPERIMENTS) -> dict[str, Path]:
    """The whole chain on the embedded default, each stage resumable and reused when finished.

    synth -> featurize -> pretrain -> train -> evaluation encoders + classifier (trained
    apart) -> tune (small sampling search) -> registry entry ``demo`` -> one generation from
    the registry -> Ray Serve answering one real HTTP request -> bench (small).

    Args:
        cfg: the demo experiment (``experiments/demo.yaml``).
        experiments: the folder with ``eval_encoders_demo.yaml``, ``tune_demo.yaml`` and
            ``bench_small.yaml``.

    Returns:
        ``{artifact: path}``, in the order they were made.
    """
    experiments = Path(experiments)
    arts: dict[str, Path] = {}
    times: dict[str, float] = {}

    def step(name: str):
        times[name] = time.time()
        log.info(f"\n=== demo: {name} ===")

    step("synth")
    data = stage_synth(cfg.synth, storage=cfg.storage)
    arts["data set (mp4 + stems + manifest)"] = data
    step("featurize")
    feats = stage_featurize(data, cfg.featurize, storage=cfg.storage)
    arts["feature shards (parquet)"] = feats / "shards"
    step("pretrain")
    pcfg = dataclasses.replace(cfg, pretrain=dataclasses.replace(cfg.pretrain, features=str(feats)))
    pre = stage_pretrain(pcfg, resume=True)
    arts["contrastive encoders (safetensors)"] = pre / "model"
    arts["pretrain evaluation (json, png)"] = pre / "eval.json"
    step("train")
    tcfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, features=str(feats), pretrain=str(pre)))
    tr = stage_train(tcfg, resume=True)
    arts["generator (model URI train:<run>)"] = tr / "model"
    arts["training losses (png)"] = tr / "losses.png"

    step("evaluator")

    ev = ensure_evaluator(str(experiments / "eval_encoders_demo.yaml"), cfg.storage)
    arts["evaluation encoders + style classifier (trained apart)"] = ev

    step("tune")

    tune_cfg = load_tune_config(experiments / "tune_demo.yaml",
                                [f"model=train:{tr.name}", f"evaluator={ev}", f"storage={cfg.storage}"])
    tune_dir = stage_tune(tune_cfg, resume=True, src=str(experiments / "tune_demo.yaml"))
    arts["search report (trials.csv, plots)"] = tune_dir
    registry_uri = f"registry:{tune_cfg.registry_name}"

    arts[f"registry entry ({registry_uri})"] = resolve_model_uri(registry_uri, cfg.storage).parent

    step("generate + serve")

    man = read_manifest(data)
    clip = man[man["split"] == "test"].sort_values("clip_id").iloc[0]
    out_dir = Path(cfg.storage) / "demo" / cfg.name
    out_dir.mkdir(parents=True, exist_ok=True)
    gen = load_generator(registry_uri, cfg.storage)
    res = gen.generate_file(clip["video_path"], out_dir / f"{clip['clip_id']}.soundtrack.mp4", seed=0,
                            clip_id=clip["clip_id"])
    arts["generated soundtrack for a test video (mp4)"] = Path(getattr(res, "out_path", out_dir))
    # the registry model behind Ray Serve on 127.0.0.1: one real HTTP request answered (WAV and MP4)

    served = serve_demo(registry_uri, cfg.storage, clip["video_path"], out_dir / "served")
    arts["served over HTTP (wav)"] = Path(served["wav"])
    arts["served over HTTP (mp4)"] = Path(served["mp4"])
    arts["served vs real soundtrack (png)"] = plot_spectrograms(
        read_audio(clip["video_path"], sr=DEFAULT_CONFIG.sr), read_audio(served["wav"], sr=DEFAULT_CONFIG.sr),
        out_dir / "spectrograms.png", title=f"test clip {clip['clip_id']} ({clip['caption']})")

    step("bench")

    bcfg, methods = load_bench_config(experiments / "bench_small.yaml",
                                      [f"model={registry_uri}", f"methods.untuned.uri=train:{tr.name}",
                                       f"evaluator={ev}"])
    bench = run_bench(bcfg, methods, storage=cfg.storage,
                      command=f"soundtrack bench experiments/bench_small.yaml --set model={registry_uri} "
                              f"--set methods.untuned.uri=train:{tr.name} --set evaluator={ev}")
    arts["bench tables (md, csv, parquet) and plot"] = bench / "summary.md"
    names = list(times) + ["end"]
    times["end"] = time.time()
    steps_s = {a: round(times[b] - times[a], 1) for a, b in zip(names, names[1:])}
    log.info("\ndemo stage times (s): " + ", ".join(f"{a} {v:.0f}" for a, v in steps_s.items()))
    # A record of this pass (a re-run reuses finished stages, so its times are small); the
    # load averages say how busy the cores were.
    record = {"total_s": round(times["end"] - times["synth"], 1), "steps_s": steps_s,
              "load_avg_1_5_15_end": [round(x, 2) for x in os.getloadavg()], "cpus": os.cpu_count(),
              "artifacts": {k: str(v) for k, v in arts.items()}}
    arts["stage times (json)"] = out_dir / "demo.json"
    write_json_atomic(out_dir / "demo.json", record)
    return arts
