"""``soundtrack train``: the soundtrack generator (mel VAE, then latent diffusion) on Ray Train.

Fixed phases, each resumable on its own, Ray only at the edges:

1. **VAE** (Ray Train): :class:`~soundtrack.models.vae.MelVAE` on the training clips'
   log-mels (the profile's mel format; the tiny profile pools 128x1024 to 64x256), L1 +
   small KL. Checkpoints under ``<run>/vae/ray``; the final VAE (with its latent scaling
   factor fitted on training mels) in ``<run>/vae/final``.
2. **Cache** (Ray Data): an actor pool encodes every training clip once: its latents
   (frozen VAE) and its condition tokens from the frozen pretrained encoders
   (:func:`soundtrack.models.conditioning.video_conditions`: per-frame video features and
   the video's projections into the music and sound-effect spaces, plus shots). Written
   as parquet shards in ``<run>/cache`` so the UNet never re-encodes.
3. **UNet** (Ray Train): :class:`~soundtrack.models.unet.SoundtrackDenoiser` on the cache
   with per-example condition dropout (all dropped 10 %, exactly one kept 5 % per
   condition, otherwise each dropped at 10 %), AdamW, warm-up + cosine. Checkpoints
   under ``<run>/unet/ray``.
4. **Export**: encoders + VAE + denoiser + inference defaults as one generator
   directory ``<run>/model`` (:class:`soundtrack.pipelines.generator.SoundtrackGenerator`),
   the target of ``train:<run>`` model URIs.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import ray
import ray.train
import torch
from ray.data.expressions import col

from soundtrack.config import ConfigError, TrainSection, build, to_dict
from soundtrack.data.shards import CACHE_ARRAYS, decode_row, pack_column, shard_files
from soundtrack.distributed.cluster import init_ray
from soundtrack.distributed.train import launch, repeat_stream
from soundtrack.models.conditioning import video_conditions
from soundtrack.models.encoders import ContrastiveConfig, ContrastiveModel
from soundtrack.models.unet import DenoiserConfig, SoundtrackDenoiser
from soundtrack.models.vae import (
    encode_latents,
    fit_scaling_factor,
    load_vae,
    save_vae,
    vae_config,
)
from soundtrack.pipelines.generator import SoundtrackGenerator
from soundtrack.pipelines.sampler import SamplerConfig
from soundtrack.pipelines.schedulers import NoiseSchedule
from soundtrack.solvers import solver_class
from soundtrack.solvers.base import LocalReporter, numpy_batches
from soundtrack.solvers.common import (
    torch_threads,
)
from soundtrack.solvers.vae import mels_from_batch
from soundtrack.storage import read_card

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------- configs


def denoiser_config(profile: str, overrides: dict[str, Any], encoders_cfg, use_text: bool):
    """The :class:`DenoiserConfig` of a profile, with condition sizes taken from the encoders.

    Raises:
        ConfigError: an unknown key or bad value (named ``train.denoiser.<key>``).
    """
    base = DenoiserConfig.preset(profile)
    dims = {"video_dim": encoders_cfg.video_dim, "music_dim": encoders_cfg.embed_dim,
            "sfx_dim": encoders_cfg.embed_dim, "text_dim": encoders_cfg.embed_dim}
    if not use_text:
        dims["token_sources"] = tuple(s for s in base.token_sources if s != "text")
    base = dataclasses.replace(base, **dims)
    return build(DenoiserConfig, overrides, src="train.denoiser", prefix="train.denoiser.", base=base)


def sampler_config(overrides: dict[str, Any]):
    """Inference defaults stored with the model (:class:`SamplerConfig` + overrides)."""
    return build(SamplerConfig, overrides, src="train.sampler", prefix="train.sampler.")


def noise_schedule(overrides: dict[str, Any]) -> NoiseSchedule:
    """The training noise schedule (:class:`NoiseSchedule` + ``train.noise_schedule``), saved with the model.

    Raises:
        ConfigError: an unknown key or a bad value (named ``train.noise_schedule.<key>``).
    """
    try:
        return build(NoiseSchedule, overrides, src="train.noise_schedule", prefix="train.noise_schedule.")
    except ValueError as exc:  # NoiseSchedule's own checks (ConfigError is a ValueError too)
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"train.noise_schedule: {exc}") from exc


# ----------------------------------------------------------------------------- phase 1: VAE


# ----------------------------------------------------------------------------- phase 2: cache


class CacheEncoder:
    """Ray Data UDF: shard rows -> latents (frozen VAE) + condition tokens (frozen encoders).

    The arrays (:data:`soundtrack.data.shards.CACHE_ARRAYS`) are stored with the shard
    codec (:func:`soundtrack.data.shards.pack_column`, dtypes from ``ARRAY_DTYPES``).
    """

    def __init__(self, vae_dir: str, encoders_dir: str, target: str, use_text: bool, threads: int | None):
        torch_threads(threads)
        self.vae = load_vae(vae_dir).eval()
        self.encoders = ContrastiveModel.load(encoders_dir).eval()
        self.key = f"mel_{target}"
        self.use_text = use_text

    @torch.no_grad()
    def __call__(self, batch) -> dict[str, np.ndarray]:
        rows = [decode_row(r, keys=("frames", self.key)) for r in batch.to_dict("records")]
        fmt = self.vae.mel
        mel = torch.stack([torch.as_tensor(fmt.from_features(r[self.key].astype(np.float32))) for r in rows])
        lat = encode_latents(self.vae, mel)  # mean of the posterior, scaled
        frames = np.stack([r["frames"] for r in rows])
        conds = video_conditions(self.encoders, frames, [r.get("caption") or "" for r in rows], self.use_text)
        out: dict[str, Any] = {"clip_id": np.asarray([r["clip_id"] for r in rows]),
                               "shots": np.asarray([json.dumps([float(x) for x in s]) for s in conds.shots])}
        arrays = {"latents": lat, "video": conds.video, "music": conds.music, "sfx": conds.sfx, "text": conds.text}
        for name in CACHE_ARRAYS:
            if arrays[name] is not None:
                out.update(pack_column(name, arrays[name].float().cpu().numpy()))
        return out


def build_cache(features_dir: Path, vae_dir: Path, encoders_dir: Path, out: Path, sec: TrainSection) -> int:
    """Encode the training split once into ``out`` (parquet); returns the number of clips."""

    done = out / "_done.json"
    if done.exists():
        return int(json.loads(done.read_text())["clips"])
    shutil.rmtree(out, ignore_errors=True)
    key = f"mel_{sec.target}"
    cols = ["clip_id", "split", "caption", "frames", "frames__shape", key, key + "__shape"]
    ds = ray.data.read_parquet(shard_files(features_dir), columns=cols).filter(expr=col("split") == "train")
    ds = ds.map_batches(
        CacheEncoder, batch_size=16, batch_format="pandas",
        fn_constructor_kwargs={"vae_dir": str(vae_dir), "encoders_dir": str(encoders_dir), "target": sec.target,
                               "use_text": sec.use_text, "threads": sec.torch_threads},
        compute=ray.data.ActorPoolStrategy(size=1), num_cpus=1.0,
    )
    ds.write_parquet(str(out))
    n = ray.data.read_parquet(str(out), columns=["clip_id"]).count()
    done.write_text(json.dumps({"clips": n}))  # written last: its presence means the cache is complete
    return n


# ----------------------------------------------------------------------------- phase 3: UNet


# ----------------------------------------------------------------------------- driver


def _export_checkpoint(checkpoint_dir: str | os.PathLike, sub: str, out: Path) -> Path:
    """Copy a checkpoint's model folder and trainer state to ``out`` (what later phases load)."""
    out.mkdir(parents=True, exist_ok=True)
    shutil.copytree(os.path.join(checkpoint_dir, sub), out, dirs_exist_ok=True)
    shutil.copy2(os.path.join(checkpoint_dir, "trainer_state.json"), out / "trainer_state.json")
    return out


def _run_phase(solver: str, config: dict, sec: TrainSection, run_dir: Path, phase: str, ray_dataset,
               local_frame) -> Path:
    """One training phase: the solver on Ray Train (``num_workers >= 1``) or in this process (0).

    In this process (a Tune trial, a quick test) the phase's rows are read into memory and
    iterated in seeded random order (:func:`soundtrack.solvers.base.numpy_batches`);
    checkpoints go to ``<run>/<phase>/checkpoints``. Either way the last checkpoint is
    exported to ``<run>/<phase>/final.tmp``, whose path is returned.

    Args:
        solver: a key of :data:`soundtrack.solvers.SOLVERS`.
        config: the solver's settings.
        sec: the training section (workers, CPUs, failures).
        run_dir: the training run's directory.
        phase: ``vae`` or ``unet`` (sub-directory and checkpoint folder).
        ray_dataset: returns the Ray Data stream of every epoch (Ray Train path).
        local_frame: returns the phase's rows as a pandas DataFrame (in-process path).
    """
    tmp_out = run_dir / phase / "final.tmp"
    cls = solver_class(solver)
    sub = cls.model_subdir
    if sec.num_workers == 0:
        frame = local_frame()
        columns = {c: frame[c].to_numpy() for c in frame.columns}
        s = cls(config, run_dir)
        reporter = LocalReporter(run_dir / phase / "checkpoints")
        result = s.fit(numpy_batches(columns, s.batch_size, seed=s.seed), reporter)
        log.info("%s: %d steps in process %d", s.name, result["step"] - result["start_step"], result["pid"])
        return _export_checkpoint(reporter.latest(), sub, tmp_out)
    res = launch(solver, config, run_dir / phase, log_dir=run_dir, datasets={"train": ray_dataset()},
                 num_workers=sec.num_workers, cpus_per_worker=sec.cpus_per_worker, max_failures=sec.max_failures)
    if res.error is not None:
        raise RuntimeError(f"training failed: {res.error}")
    with res.checkpoint.as_directory() as d:
        return _export_checkpoint(d, sub, tmp_out)


#: TrainSection fields a reused VAE + cache must share with the run that reuses them.
_VAE_FIELDS = ("target", "vae", "vae_steps", "vae_batch_size", "vae_lr", "kl_weight", "use_text")


def reused_parts(sec: TrainSection, features_dir: Path, encoders_dir: Path) -> dict[str, Path]:
    """The VAE and latent cache of ``sec.reuse_vae_from``, checked to match this run.

    Raises:
        ConfigError: the run is missing, unfinished, or was trained on other data, encoders
            or VAE settings (the message names the field that differs).
    """
    src = Path(sec.reuse_vae_from).resolve()
    vae, cache = src / "vae" / "final", src / "cache"
    if not (vae / "trainer_state.json").exists() or not (cache / "_done.json").exists():
        raise ConfigError(f"train.reuse_vae_from={src}: no finished VAE and latent cache there "
                          f"({vae} or {cache / '_done.json'} is missing); finish that training run first")
    card = read_card(src)
    other = card.get("config", {}).get("train", {})
    mine = to_dict(sec)
    for k in _VAE_FIELDS:
        if k in other and other[k] != mine[k]:
            raise ConfigError(f"train.reuse_vae_from={src}: its train.{k}={other[k]!r} differs from this run's "
                              f"{mine[k]!r}; a reused VAE/cache must come from the same VAE settings")
    up = card.get("upstream", {})
    for key, mine_path in (("features", Path(features_dir)), ("pretrain", Path(encoders_dir).parent)):
        theirs = up.get(key, {})
        theirs = theirs.get("path") if isinstance(theirs, dict) else theirs
        if theirs and Path(theirs).resolve().name != mine_path.resolve().name:
            raise ConfigError(f"train.reuse_vae_from={src}: trained on {key} {theirs}, this run uses {mine_path}; "
                              "the latent cache holds that data's encodings, so it cannot be reused")
    return {"vae": vae, "cache": cache}


def run_train(profile: str, sec: TrainSection, features_dir: Path, encoders_dir: Path, run_dir: Path) -> dict:
    """All phases; each skips itself when its output is complete (so a re-launch resumes).

    Args:
        profile: ``tiny`` or ``paper``.
        sec: training settings.
        features_dir: a finished featurize run.
        encoders_dir: the pretrained contrastive encoders (``<pretrain run>/model``).
        run_dir: this run's directory.

    Returns:
        A summary (phase timings, sizes, output paths).
    """

    run_dir = Path(run_dir).resolve()
    enc_json = json.loads((Path(encoders_dir) / "config.json").read_text())
    enc_cfg = ContrastiveConfig.from_dict(enc_json.get("config", enc_json))
    dcfg = denoiser_config(profile, sec.denoiser, enc_cfg, sec.use_text)
    scfg = sampler_config(sec.sampler)
    noise_schedule(sec.noise_schedule)  # checked before Ray starts; the solver and the export read it
    vae_kw = vae_config(profile, **sec.vae)  # validates the overrides before Ray starts
    del vae_kw
    init_ray()
    timings: dict[str, float] = {}
    # what each phase did on this launch: "trained", "done before" (its final output was
    # complete: a re-launch) or "reused" (another run's VAE and cache)
    phases: dict[str, str] = {}
    reused = reused_parts(sec, features_dir, encoders_dir) if sec.reuse_vae_from else None

    # 1. VAE
    vae_final = reused["vae"] if reused else run_dir / "vae" / "final"
    cache_dir = reused["cache"] if reused else run_dir / "cache"
    t = time.time()
    phases["vae"] = "reused" if reused else "done before"
    if not (vae_final / "trainer_state.json").exists():
        phases["vae"] = "trained"
        key = f"mel_{sec.target}"
        ds = (ray.data.read_parquet(shard_files(features_dir), columns=["split", key, key + "__shape"])
              .filter(expr=col("split") == "train").materialize())
        n = ds.count()
        if n < sec.vae_batch_size:
            raise ConfigError(f"train.vae_batch_size={sec.vae_batch_size} exceeds the {n} training clips.")
        tmp = _run_phase("vae", {"section": to_dict(sec), "profile": profile, "vae": sec.vae}, sec, run_dir, "vae",
                         lambda: repeat_stream(ds, sec.vae_steps * sec.vae_batch_size * max(sec.num_workers, 1), n),
                         lambda: ds.to_pandas())
        # Latent scale: unit variance over training latents (as Stable Diffusion / AudioLDM do).
        vae = load_vae(tmp)
        sample = ds.take_batch(batch_size=min(n, 64), batch_format="numpy")
        fit_scaling_factor(vae, mels_from_batch(sample, key, vae.mel))
        save_vae(vae, tmp)
        shutil.rmtree(vae_final, ignore_errors=True)
        os.replace(tmp, vae_final)
    timings["vae_s"] = round(time.time() - t, 1)

    # 2. cache
    t = time.time()
    n_cache = build_cache(features_dir, vae_final, Path(encoders_dir), cache_dir, sec)
    timings["cache_s"] = round(time.time() - t, 1)
    if n_cache < sec.batch_size:
        raise ConfigError(f"train.batch_size={sec.batch_size} exceeds the {n_cache} cached training clips.")

    # 3. UNet
    t = time.time()
    unet_final = run_dir / "unet" / "final"
    phases["unet"] = "done before"
    if not (unet_final / "trainer_state.json").exists():
        phases["unet"] = "trained"
        tmp = _run_phase("diffusion", {"section": to_dict(sec), "denoiser": dataclasses.asdict(dcfg)}, sec, run_dir,
                         "unet", lambda: repeat_stream(ray.data.read_parquet(str(cache_dir)).materialize(),
                                                       sec.unet_steps * sec.batch_size * max(sec.num_workers, 1),
                                                       n_cache),
                         lambda: pq.read_table(str(cache_dir)).to_pandas())
        shutil.rmtree(unet_final, ignore_errors=True)
        os.replace(tmp, unet_final)
    timings["unet_s"] = round(time.time() - t, 1)

    # 4. export

    frame_size = int(read_card(features_dir).get("config", {}).get("featurize", {}).get("size", 112))
    model_dir = export_generator(run_dir / "model", profile, Path(encoders_dir), vae_final, unet_final, scfg, sec,
                                 card={"run": run_dir.name, "features": str(features_dir), "encoders": str(encoders_dir)},
                                 frame_size=frame_size)
    return {"model": str(model_dir), "cached_clips": n_cache, "timings": timings, "phases": phases,
            "denoiser": {"prediction_type": dcfg.prediction_type, "attention": dcfg.attention, "window_k": dcfg.window_k,
                         "fusion": dcfg.fusion}}


def export_generator(out: Path, profile: str, encoders_dir: Path, vae_dir: Path, denoiser_dir: Path, scfg, sec,
                     card: dict, frame_size: int) -> Path:
    """Write the generator directory (the layout :class:`SoundtrackGenerator` loads), atomically."""
    conditions = ["video", "music", "sfx"] + (["text"] if sec.use_text else [])
    gen = SoundtrackGenerator(ContrastiveModel.load(encoders_dir), load_vae(vae_dir), SoundtrackDenoiser.load(denoiser_dir),
                              sec.vocoder, profile=profile, frame_size=frame_size, sampler=scfg,
                              conditions=conditions, card=card, schedule=noise_schedule(sec.noise_schedule))
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    gen.save(tmp)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out
