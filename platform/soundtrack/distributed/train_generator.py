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
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import ray
import ray.train
import torch
from ray.data.expressions import col
from ray.train import Checkpoint

from soundtrack.config import ConfigError, TrainSection, build, to_dict
from soundtrack.data.shards import decode_row, shard_files
from soundtrack.distributed.cluster import init_ray
from soundtrack.distributed.train import launch, repeat_stream, worker_start
from soundtrack.losses.diffusion import condition_dropout_mask, diffusion_loss
from soundtrack.losses.vae import vae_loss
from soundtrack.models.conditioning import video_conditions
from soundtrack.models.encoders import ContrastiveConfig, ContrastiveModel
from soundtrack.models.unet import Conditions, DenoiserConfig, SoundtrackDenoiser
from soundtrack.models.vae import (
    MelVAE,
    build_vae,
    encode_latents,
    fit_scaling_factor,
    load_vae,
    save_vae,
    vae_config,
)
from soundtrack.pipelines.generator import SoundtrackGenerator
from soundtrack.pipelines.sampler import SamplerConfig
from soundtrack.pipelines.schedulers import training_scheduler
from soundtrack.solvers.common import (
    MetricsWriter,
    average_gradients,
    broadcast_parameters,
    load_optimizer,
    load_trainer_state,
    save_optimizer,
    save_trainer_state,
    torch_threads,
    warmup_cosine,
)
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


# ----------------------------------------------------------------------------- phase 1: VAE


def _mels_from_batch(nb: dict, key: str, fmt) -> torch.Tensor:
    mels = []
    for raw, shape in zip(nb[key], nb[key + "__shape"]):
        m = np.frombuffer(raw, dtype=np.float16).reshape([int(s) for s in shape]).astype(np.float32)
        mels.append(fmt.from_features(m))
    return torch.stack([torch.as_tensor(m) for m in mels])


def vae_loop(config: dict) -> None:
    """Per-worker VAE training loop (Ray Train)."""

    sec = TrainSection(**config["section"])
    run_dir = Path(config["run_dir"])
    rank, world, ckpt = worker_start(sec.seed, sec.torch_threads)
    step = 0
    if ckpt is not None:
        with ckpt.as_directory() as d:
            vae = load_vae(os.path.join(d, "vae"))
            opt = torch.optim.AdamW(vae.parameters(), lr=sec.vae_lr)
            load_optimizer(opt, os.path.join(d, "optimizer.safetensors"))
            step = int(load_trainer_state(d)["step"])
    else:
        vae = build_vae(config["profile"], **config["vae"])
        opt = torch.optim.AdamW(vae.parameters(), lr=sec.vae_lr)
    assert isinstance(vae, MelVAE)
    broadcast_parameters(vae)
    vae.train()
    fmt = vae.mel
    writer = MetricsWriter(run_dir, resume_step=step, enabled=rank == 0, name="vae_metrics.jsonl")
    key = f"mel_{sec.target}"
    shard = ray.train.get_dataset_shard("train")
    gen = torch.Generator().manual_seed(sec.seed * 100 + rank)
    t_last = time.time()
    while step < sec.vae_steps:
        for nb in shard.iter_batches(batch_size=sec.vae_batch_size, batch_format="numpy", drop_last=True):
            if step >= sec.vae_steps:
                break
            lr = sec.vae_lr * warmup_cosine(step, sec.vae_steps, max(sec.vae_steps // 20, 1), 0.1)
            for g in opt.param_groups:
                g["lr"] = lr
            mel = _mels_from_batch(nb, key, fmt)
            loss, logs = vae_loss(vae, mel, kl_weight=sec.kl_weight, generator=gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            average_gradients(vae)
            opt.step()
            step += 1
            if step % sec.log_every == 0 or step == sec.vae_steps:
                el = time.time() - t_last
                t_last = time.time()
                writer.log(step, vae_loss=loss.item(), lr=lr, steps_per_s=round(sec.log_every / el, 4),
                           **{f"vae_{k}": float(v) for k, v in logs.items()})
                if rank == 0:
                    log.info(f"train[vae]: step {step}/{sec.vae_steps} loss {loss.item():.4f}")
            if step % sec.checkpoint_every == 0 or step == sec.vae_steps:
                with tempfile.TemporaryDirectory() as d:
                    if rank == 0:
                        save_vae(vae, os.path.join(d, "vae"))
                        save_optimizer(opt, os.path.join(d, "optimizer.safetensors"))
                        save_trainer_state(d, step=step, seed=sec.seed, phase="vae")
                    ray.train.report({"step": step, "loss": loss.item()},
                                     checkpoint=Checkpoint.from_directory(d) if rank == 0 else None)


# ----------------------------------------------------------------------------- phase 2: cache


CACHE_ARRAYS = ("latents", "video", "music", "sfx", "text")


class CacheEncoder:
    """Ray Data UDF: shard rows -> latents (frozen VAE) + condition tokens (frozen encoders)."""

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
        for name, t in (("latents", lat), ("video", conds.video), ("music", conds.music), ("sfx", conds.sfx),
                        ("text", conds.text)):
            if t is None:
                continue
            a = t.float().cpu().numpy()
            out[name] = np.asarray([x.tobytes() for x in a], dtype=object)
            out[name + "__shape"] = np.asarray([list(x.shape) for x in a], dtype=np.int64)
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


def _arrays(nb: dict, name: str) -> torch.Tensor | None:
    if name not in nb:
        return None
    xs = [np.frombuffer(raw, dtype=np.float32).reshape([int(s) for s in shape]) for raw, shape in
          zip(nb[name], nb[name + "__shape"])]
    return torch.from_numpy(np.stack(xs))


def unet_loop(config: dict) -> None:
    """Per-worker latent-diffusion training loop (Ray Train)."""

    sec = TrainSection(**config["section"])
    run_dir = Path(config["run_dir"])
    rank, world, ckpt = worker_start(sec.seed, sec.torch_threads)
    step = 0
    if ckpt is not None:
        with ckpt.as_directory() as d:
            model = SoundtrackDenoiser.load(os.path.join(d, "denoiser"))
            opt = _adamw(model, sec)
            load_optimizer(opt, os.path.join(d, "optimizer.safetensors"))
            step = int(load_trainer_state(d)["step"])
    else:
        dcfg = DenoiserConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in config["denoiser"].items()})
        model = SoundtrackDenoiser(dcfg)
        opt = _adamw(model, sec)
    broadcast_parameters(model)
    model.train()
    sched = training_scheduler(model.config.prediction_type)
    writer = MetricsWriter(run_dir, resume_step=step, enabled=rank == 0)
    shard = ray.train.get_dataset_shard("train")
    gen = torch.Generator().manual_seed(sec.seed * 1000 + rank * 7 + step)
    rng = np.random.default_rng([sec.seed, rank, step])
    first_attempt_marker = run_dir / ".fault_injected"
    t_last = time.time()
    while step < sec.unet_steps:
        for nb in shard.iter_batches(batch_size=sec.batch_size, batch_format="numpy", drop_last=True,
                                     local_shuffle_buffer_size=4 * sec.batch_size):
            if step >= sec.unet_steps:
                break
            if sec.fail_at_step is not None and step == sec.fail_at_step and not first_attempt_marker.exists():
                first_attempt_marker.write_text(str(step))
                os._exit(1)
            lr = sec.lr * warmup_cosine(step, sec.unet_steps, sec.warmup_steps, sec.min_lr_ratio)
            for g in opt.param_groups:
                g["lr"] = lr
            conds = Conditions(
                video=_arrays(nb, "video"), music=_arrays(nb, "music"), sfx=_arrays(nb, "sfx"),
                text=_arrays(nb, "text") if sec.use_text else None,
                shots=[json.loads(s) for s in nb["shots"]],
            )
            latents = _arrays(nb, "latents")
            drop = condition_dropout_mask(latents.shape[0], conds, rng, p_all=sec.p_drop_all, p_one=sec.p_keep_one,
                                          p_each=sec.p_drop_each)
            loss = diffusion_loss(model, sched, latents, conds, generator=gen, drop_mask=drop)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            average_gradients(model)
            torch.nn.utils.clip_grad_norm_(model.parameters(), sec.grad_clip)
            opt.step()
            step += 1
            if step % sec.log_every == 0 or step == sec.unet_steps:
                el = time.time() - t_last
                t_last = time.time()
                writer.log(step, loss=loss.item(), lr=lr, steps_per_s=round(sec.log_every / el, 4))
                if rank == 0:
                    log.info(f"train[unet]: step {step}/{sec.unet_steps} loss {loss.item():.4f} lr {lr:.2e}")
            if step % sec.checkpoint_every == 0 or step == sec.unet_steps:
                with tempfile.TemporaryDirectory() as d:
                    if rank == 0:
                        model.save(os.path.join(d, "denoiser"))
                        save_optimizer(opt, os.path.join(d, "optimizer.safetensors"))
                        save_trainer_state(d, step=step, seed=sec.seed, phase="unet")
                    ray.train.report({"step": step, "loss": loss.item()},
                                     checkpoint=Checkpoint.from_directory(d) if rank == 0 else None)


def _adamw(model, sec: TrainSection) -> torch.optim.Optimizer:
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=sec.lr,
                             betas=tuple(sec.betas), weight_decay=sec.weight_decay)


# ----------------------------------------------------------------------------- driver


def _final(result, sub: str, out: Path) -> Path:
    if result.error is not None:
        raise RuntimeError(f"training failed: {result.error}")
    out.mkdir(parents=True, exist_ok=True)
    with result.checkpoint.as_directory() as d:
        shutil.copytree(os.path.join(d, sub), out, dirs_exist_ok=True)
        shutil.copy2(os.path.join(d, "trainer_state.json"), out / "trainer_state.json")
    return out


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
    vae_kw = vae_config(profile, **sec.vae)  # validates the overrides before Ray starts
    del vae_kw
    init_ray()
    timings: dict[str, float] = {}
    reused = reused_parts(sec, features_dir, encoders_dir) if sec.reuse_vae_from else None

    # 1. VAE
    vae_final = reused["vae"] if reused else run_dir / "vae" / "final"
    cache_dir = reused["cache"] if reused else run_dir / "cache"
    t = time.time()
    if not (vae_final / "trainer_state.json").exists():
        key = f"mel_{sec.target}"
        ds = (ray.data.read_parquet(shard_files(features_dir), columns=["split", key, key + "__shape"])
              .filter(expr=col("split") == "train").materialize())
        n = ds.count()
        if n < sec.vae_batch_size:
            raise ConfigError(f"train.vae_batch_size={sec.vae_batch_size} exceeds the {n} training clips.")
        res = launch(vae_loop, {"section": to_dict(sec), "profile": profile, "vae": sec.vae, "run_dir": str(run_dir)},
                     run_dir / "vae",
                     datasets={"train": repeat_stream(ds, sec.vae_steps * sec.vae_batch_size * max(sec.num_workers, 1), n)},
                     num_workers=sec.num_workers, cpus_per_worker=sec.cpus_per_worker, max_failures=sec.max_failures)
        tmp = _final(res, "vae", run_dir / "vae" / "final.tmp")
        # Latent scale: unit variance over training latents (as Stable Diffusion / AudioLDM do).
        vae = load_vae(tmp)
        sample = ds.take_batch(batch_size=min(n, 64), batch_format="numpy")
        fit_scaling_factor(vae, _mels_from_batch(sample, key, vae.mel))
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
    if not (unet_final / "trainer_state.json").exists():
        cache = ray.data.read_parquet(str(cache_dir)).materialize()
        res = launch(unet_loop, {"section": to_dict(sec), "denoiser": dataclasses.asdict(dcfg), "run_dir": str(run_dir)},
                     run_dir / "unet", datasets={"train": repeat_stream(cache, sec.unet_steps * sec.batch_size * max(sec.num_workers, 1),
                                                     n_cache)},
                     num_workers=sec.num_workers, cpus_per_worker=sec.cpus_per_worker, max_failures=sec.max_failures)
        tmp = _final(res, "denoiser", run_dir / "unet" / "final.tmp")
        shutil.rmtree(unet_final, ignore_errors=True)
        os.replace(tmp, unet_final)
    timings["unet_s"] = round(time.time() - t, 1)

    # 4. export

    frame_size = int(read_card(features_dir).get("config", {}).get("featurize", {}).get("size", 112))
    model_dir = export_generator(run_dir / "model", profile, Path(encoders_dir), vae_final, unet_final, scfg, sec,
                                 card={"run": run_dir.name, "features": str(features_dir), "encoders": str(encoders_dir)},
                                 frame_size=frame_size)
    return {"model": str(model_dir), "cached_clips": n_cache, "timings": timings,
            "denoiser": {"prediction_type": dcfg.prediction_type, "attention": dcfg.attention, "window_k": dcfg.window_k,
                         "fusion": dcfg.fusion}}


def export_generator(out: Path, profile: str, encoders_dir: Path, vae_dir: Path, denoiser_dir: Path, scfg, sec,
                     card: dict, frame_size: int) -> Path:
    """Write the generator directory (the layout :class:`SoundtrackGenerator` loads), atomically."""
    conditions = ["video", "music", "sfx"] + (["text"] if sec.use_text else [])
    gen = SoundtrackGenerator(ContrastiveModel.load(encoders_dir), load_vae(vae_dir), SoundtrackDenoiser.load(denoiser_dir),
                              sec.vocoder, profile=profile, frame_size=frame_size, sampler=scfg,
                              conditions=conditions, card=card)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    gen.save(tmp)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out
