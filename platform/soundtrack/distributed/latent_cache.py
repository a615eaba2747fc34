"""The latent cache's Ray Data UDF: shard rows -> latents (frozen VAE) + condition tokens.

Apart from :mod:`soundtrack.distributed.train_generator` (which maps it over the training
split in ``build_cache``) so that :mod:`soundtrack.distributed.train_backbone` can subclass
it without an import cycle.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import torch

from soundtrack.data.shards import CACHE_ARRAYS, decode_row, pack_column
from soundtrack.models.conditioning import video_conditions
from soundtrack.models.encoders import ContrastiveModel
from soundtrack.models.vae import encode_latents, load_vae
from soundtrack.solvers.common import torch_threads


class CacheEncoder:
    """Ray Data UDF: shard rows -> latents (frozen VAE) + condition tokens (frozen encoders).

    The arrays (:data:`soundtrack.data.shards.CACHE_ARRAYS`) are stored with the shard
    codec (:func:`soundtrack.data.shards.pack_column`, dtypes from ``ARRAY_DTYPES``).
    The actor's resources are ``train.cache_workers`` / ``cache_cpus`` / ``cache_gpus``
    (``build_cache``); with a GPU the frozen models run on ``device="cuda"`` (the GPU Ray
    assigned the actor: it sets ``CUDA_VISIBLE_DEVICES``).

    Args:
        vae_dir: the final VAE.
        encoders_dir: the pretrained encoders.
        target: ``mix`` or ``music`` (the stored mel column).
        use_text: encode captions too.
        threads: torch threads.
        device: ``cpu`` or ``cuda``.
    """

    def __init__(self, vae_dir: str, encoders_dir: str, target: str, use_text: bool, threads: int | None,
                 device: str = "cpu"):
        torch_threads(threads)
        self.device = torch.device(device)
        self.vae = load_vae(vae_dir).eval().to(self.device)
        self.encoders = ContrastiveModel.load(encoders_dir).eval().to(self.device)
        self.key = f"mel_{target}"
        self.use_text = use_text

    @torch.no_grad()
    def __call__(self, batch) -> dict[str, np.ndarray]:
        rows = [decode_row(r, keys=("frames", self.key)) for r in batch.to_dict("records")]
        lat = encode_latents(self.vae, self.mels(rows).to(self.device))  # mean of the posterior, scaled
        frames = np.stack([r["frames"] for r in rows])
        conds = video_conditions(self.encoders, torch.from_numpy(frames).to(self.device), [r.get("caption") or "" for r in rows], self.use_text)
        out: dict[str, Any] = {"clip_id": np.asarray([r["clip_id"] for r in rows]),
                               "shots": np.asarray([json.dumps([float(x) for x in s]) for s in conds.shots])}
        arrays = {"latents": lat, "video": conds.video, "music": conds.music, "sfx": conds.sfx, "text": conds.text}
        for name in CACHE_ARRAYS:
            if arrays[name] is not None:
                out.update(pack_column(name, arrays[name].float().cpu().numpy()))
        return out

    def mels(self, rows: list[dict]) -> torch.Tensor:
        """The rows' stored log-mels in the VAE's format (B, n_mels, T); a backbone run's
        encoder computes them from the audio instead (``train_backbone.BackboneCacheEncoder``)."""
        fmt = self.vae.mel
        return torch.stack([torch.as_tensor(fmt.from_features(r[self.key].astype(np.float32))) for r in rows])
