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

import pyarrow.parquet as pq
import ray
import ray.train
from ray.data.expressions import col

from soundtrack.config import ConfigError, TrainSection, build, to_dict
from soundtrack.data.shards import shard_files
from soundtrack.distributed.cluster import init_ray
from soundtrack.distributed.latent_cache import CacheEncoder
from soundtrack.distributed.train import check_precision, launch, local_device, repeat_stream
from soundtrack.distributed.train_backbone import BackboneCacheEncoder, prepare_backbone_run
from soundtrack.eval.reconstruction import HeldOutClips, check_floor, reconstruction_quality
from soundtrack.models.backbones import load_denoiser
from soundtrack.models.encoders import ContrastiveConfig, ContrastiveModel
from soundtrack.models.unet import DenoiserConfig
from soundtrack.models.vae import (
    config_latent_shape,
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
from soundtrack.solvers.tracking import tracking_config
from soundtrack.solvers.vae import mels_from_batch
from soundtrack.storage import atomic_write, read_card

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------- configs


def denoiser_config(profile: str, overrides: dict[str, Any], encoders_cfg, use_text: bool,
                    vae_kwargs: dict[str, Any] | None = None):
    """The :class:`DenoiserConfig` of a profile, with condition sizes taken from the encoders
    and the latent's channels and shape from the VAE (so ``train.vae`` alone changes both;
    ``train.denoiser`` still wins).

    Args:
        profile: ``tiny`` or ``paper``.
        overrides: ``train.denoiser``.
        encoders_cfg: the conditioning encoders' :class:`ContrastiveConfig`.
        use_text: whether text tokens are a source.
        vae_kwargs: the VAE's :func:`vae_config` arguments (``None``: the preset's latent).

    Raises:
        ConfigError: an unknown key or bad value (named ``train.denoiser.<key>``).
    """
    base = DenoiserConfig.preset(profile)
    dims = {"video_dim": encoders_cfg.video_dim, "music_dim": encoders_cfg.embed_dim,
            "sfx_dim": encoders_cfg.embed_dim, "text_dim": encoders_cfg.embed_dim}
    if vae_kwargs is not None:
        c, h, w = config_latent_shape(vae_kwargs)
        dims.update(latent_channels=c, latent_hw=(h, w))
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


# ----------------------------------------------------------------------------- phase 2: cache


def build_cache(features_dir: Path, vae_dir: Path, encoders_dir: Path, out: Path, sec: TrainSection) -> int:
    """Encode the training split once into ``out`` (parquet); returns the number of clips."""

    done = out / "_done.json"
    if done.exists():
        return int(json.loads(done.read_text())["clips"])
    shutil.rmtree(out, ignore_errors=True)
    key = f"mel_{sec.target}"
    encoder, extra = CacheEncoder, {}
    if sec.backbone:  # hook: the backbone's mel, computed from the audio (distributed/train_backbone.py)
        encoder, extra, key = BackboneCacheEncoder, {"backbone": sec.backbone}, f"wav_{sec.target}"
    cols = ["clip_id", "split", "caption", "frames", "frames__shape", key, key + "__shape"]
    ds = ray.data.read_parquet(shard_files(features_dir), columns=cols).filter(expr=col("split") == "train")
    ds = ds.map_batches(
        encoder, batch_size=16, batch_format="pandas",
        fn_constructor_kwargs={"vae_dir": str(vae_dir), "encoders_dir": str(encoders_dir), "target": sec.target,
                               "use_text": sec.use_text, "threads": sec.torch_threads,
                               "device": "cuda" if sec.cache_gpus > 0 else "cpu", **extra},
        compute=ray.data.ActorPoolStrategy(size=sec.cache_workers), num_cpus=sec.cache_cpus,
        **({"num_gpus": sec.cache_gpus} if sec.cache_gpus > 0 else {}),
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
        reporter = LocalReporter(run_dir / phase / "checkpoints", device=local_device(sec.gpus_per_worker))
        result = s.fit(numpy_batches(columns, s.batch_size, seed=s.seed), reporter)
        log.info("%s: %d steps in process %d", s.name, result["step"] - result["start_step"], result["pid"])
        return _export_checkpoint(reporter.latest(), sub, tmp_out)
    res = launch(solver, config, run_dir / phase, log_dir=run_dir, datasets={"train": ray_dataset()},
                 num_workers=sec.num_workers, cpus_per_worker=sec.cpus_per_worker,
                 gpus_per_worker=sec.gpus_per_worker, max_failures=sec.max_failures)
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


def vae_quality(sec: TrainSection, features_dir: Path, vae_dir: Path) -> dict | None:
    """Measures a finished VAE's reconstruction on held-out clips and applies the floor.

    The numbers are stored beside the VAE (``<vae>/quality.json``, atomically), so a
    re-launch (e.g. with another floor) or a run reusing this VAE does not measure again.

    Args:
        sec: training settings (``vae_check_clips``, ``vae_min_chroma_ratio``,
            ``vae_min_onset_ratio``).
        features_dir: the featurize run (its ``val`` split is read).
        vae_dir: the final VAE directory.

    Returns:
        :func:`soundtrack.eval.reconstruction.reconstruction_quality`'s dict, or ``None`` when
        ``vae_check_clips`` is 0.

    Raises:
        VAEQualityError: the VAE is below the floor (the message says what to change).
    """
    if sec.vae_check_clips <= 0:
        return None
    path = Path(vae_dir) / "quality.json"
    quality = json.loads(path.read_text()) if path.exists() else None
    if quality is None or quality.get("clips_requested") != sec.vae_check_clips:
        vae = load_vae(vae_dir)
        clips = HeldOutClips(str(features_dir), vae.mel, split="val", n=sec.vae_check_clips)
        quality = {**reconstruction_quality(vae, clips), "clips_requested": sec.vae_check_clips}
        text = json.dumps(quality, indent=2)
        atomic_write(path, lambda tmp: tmp.write_text(text))
    log.info("VAE reconstruction on %d %s clips: chroma %.3f (%.0f%% of the vocoder ceiling %.3f), onset F1 %.3f "
             "(%.0f%% of %.3f), log-mel L1 %.3f", quality["n_clips"], quality["split"], quality["chroma_agreement"],
             100 * quality["chroma_ratio"], quality["ceiling"]["chroma_agreement"], quality["onset_f1"],
             100 * quality["onset_ratio"], quality["ceiling"]["onset_f1"], quality["l1"])
    check_floor(quality, sec.vae_min_chroma_ratio, sec.vae_min_onset_ratio)
    return quality


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
    vae_kw = vae_config(profile, **sec.vae)  # validates the overrides before Ray starts
    dcfg = denoiser_config(profile, sec.denoiser, enc_cfg, sec.use_text, vae_kwargs=vae_kw)
    scfg = sampler_config(sec.sampler)
    noise_schedule(sec.noise_schedule)  # checked before Ray starts; the solver and the export read it
    check_precision(sec.precision, sec.gpus_per_worker)
    tracking_config(sec.tracking, "train.tracking")  # a bad key fails before Ray starts
    init_ray()
    timings: dict[str, float] = {}
    # what each phase did on this launch: "trained", "done before" (its final output was
    # complete: a re-launch) or "reused" (another run's VAE and cache)
    phases: dict[str, str] = {}
    reused = reused_parts(sec, features_dir, encoders_dir) if sec.reuse_vae_from else None
    # -- hook: train.backbone (distributed/train_backbone.py): its VAE stands in as a reused one
    # (no VAE phase, no VAE check), the cache gets its mel, the UNet phase fine-tunes its UNet.
    backbone = None
    if sec.backbone:
        backbone = prepare_backbone_run(sec, features_dir, enc_cfg, run_dir)
        sec, dcfg, reused = backbone.sec, backbone.denoiser, backbone.reused
    # -- end hook

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
                         lambda: repeat_stream(ds, sec.vae_steps * sec.vae_batch_size * max(sec.num_workers, 1)
                                                 * sec.grad_accum_steps, n),
                         lambda: ds.to_pandas())
        # Latent scale: unit variance over training latents (as Stable Diffusion / AudioLDM do).
        vae = load_vae(tmp)
        sample = ds.take_batch(batch_size=min(n, 64), batch_format="numpy")
        fit_scaling_factor(vae, mels_from_batch(sample, key, vae.mel))
        save_vae(vae, tmp)
        shutil.rmtree(vae_final, ignore_errors=True)
        os.replace(tmp, vae_final)
    timings["vae_s"] = round(time.time() - t, 1)

    # 1b. VAE quality: its reconstruction is the ceiling of everything the UNet can produce,
    # so a VAE below the floor is refused here, before any latent is cached.
    t = time.time()
    quality = vae_quality(sec, features_dir, vae_final)
    timings["vae_check_s"] = round(time.time() - t, 1)

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
                                                       sec.unet_steps * sec.batch_size * max(sec.num_workers, 1)
                                                       * sec.grad_accum_steps,
                                                       n_cache),
                         lambda: pq.read_table(str(cache_dir)).to_pandas())
        shutil.rmtree(unet_final, ignore_errors=True)
        os.replace(tmp, unet_final)
    timings["unet_s"] = round(time.time() - t, 1)

    # 4. export

    frame_size = int(read_card(features_dir).get("config", {}).get("featurize", {}).get("size", 112))
    model_dir = export_generator(run_dir / "model", profile, Path(encoders_dir), vae_final, unet_final, scfg, sec,
                                 card={"run": run_dir.name, "features": str(features_dir), "encoders": str(encoders_dir),
                                       "data": data_card(features_dir), "vae_quality": quality},
                                 frame_size=frame_size, **(backbone.export_kwargs() if backbone else {}))
    return {"model": str(model_dir), "cached_clips": n_cache, "timings": timings, "phases": phases,
            "vae_quality": quality,
            "denoiser": {"prediction_type": dcfg.prediction_type, "attention": dcfg.attention, "window_k": dcfg.window_k,
                         "fusion": dcfg.fusion}}


def data_card(features_dir: str | os.PathLike) -> dict:
    """What a model card says about its training data: the data run, where its videos came
    from (a user's folder or the synthetic set), and the clips per split that were featurized.

    Args:
        features_dir: the featurize run the model trained on.
    """
    fcard = read_card(features_dir)
    up = fcard.get("upstream", {}).get("data", {})
    dcard = read_card(up["path"]) if up.get("path") else {}
    cfg = dcard.get("config", {})
    summary = dcard.get("summary", {})
    out = {"run": up.get("name"), "path": up.get("path"),
           "kind": "synthetic" if "synth" in cfg else ("folder" if "src" in cfg else "unknown"),
           "source": cfg.get("src") if "src" in cfg else "soundtrack synthetic set " + json.dumps(cfg.get("synth", {})),
           "clips_featurized": fcard.get("summary", {}).get("clips_out")}
    if "splits" in summary and isinstance(summary["splits"], dict):
        out["splits"] = summary["splits"]
    if "quarantined" in summary:
        out["quarantined"] = summary["quarantined"]
    if summary.get("params", {}).get("split_by"):
        out["split_by"] = summary["params"]["split_by"]
    return out


def export_generator(out: Path, profile: str, encoders_dir: Path, vae_dir: Path, denoiser_dir: Path, scfg, sec,
                     card: dict, frame_size: int, mel_format=None, conditions=None) -> Path:
    """Write the generator directory (the layout :class:`SoundtrackGenerator` loads), atomically.

    ``mel_format`` (None: the VAE's own) and ``conditions`` (None: video, music, sfx, and text
    with ``use_text``) are given by a ``train.backbone`` run.
    """
    conditions = conditions or ["video", "music", "sfx"] + (["text"] if sec.use_text else [])
    gen = SoundtrackGenerator(ContrastiveModel.load(encoders_dir), load_vae(vae_dir), load_denoiser(denoiser_dir),
                              sec.vocoder, profile=profile, frame_size=frame_size, sampler=scfg,
                              conditions=conditions, card=card, schedule=noise_schedule(sec.noise_schedule),
                              mel_format=mel_format)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    gen.save(tmp)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out
