"""Ray Data UDFs that build contrastive training batches beside the trainer.

A lean module on purpose: Ray imports a UDF's module in every worker that runs it, so this
one imports only what building a batch needs (numpy, torch, :mod:`soundtrack.data.augment`,
the shard codec), not the training stage's models and plots.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from soundtrack.data.augment import STR_KEYS, make_batch, objective_config
from soundtrack.data.shards import decode_row


def _rows_from_batch(batch) -> list[dict]:
    recs = batch.to_dict("records") if hasattr(batch, "to_dict") else batch
    return [decode_row(r, keys=("frames", "wav_music", "wav_sfx", "beat_times")) for r in recs]


def _group_id(source: str) -> int:
    """Stable 62-bit id of a source video: clips of one source are not each other's negatives."""
    return int.from_bytes(hashlib.sha1(source.encode()).digest()[:8], "big") >> 2


def batch_rng(seed: int, clip_ids: list[str], occurrence: int = 0) -> np.random.Generator:
    """The random generator of one batch's crops and negatives: a function of the run's seed,
    the batch's clips (in order) and how often this builder met that exact batch before,
    never of OS entropy, so the seed in ``run.json`` reproduces a run. A clip met again in
    a later pass sits in another batch (the stream's block order is reshuffled each pass),
    so it draws other crops; a batch met again exactly draws with ``occurrence`` + 1.

    Args:
        seed: the run's seed.
        clip_ids: the batch's clip ids, in batch order.
        occurrence: how many times this batch (same clips, same order) was built before.
    """
    key = f"{int(seed)}|{int(occurrence)}|{','.join(clip_ids)}"
    return np.random.default_rng(int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little"))


class BatchPrep:
    """Ray Data UDF: shard rows -> one training batch (crops, negatives, mels) as numpy.

    Runs in Ray Data workers beside the trainer, so building crops and negatives (about
    as costly as the training step itself on CPU) overlaps the optimiser step.
    """

    def __init__(self, objective: dict, seed: int):
        self.ocfg = objective_config(objective)
        self.seed = int(seed)
        self._seen: dict[tuple[str, ...], int] = {}  # batch (clip ids) -> times built before

    def __call__(self, batch) -> dict[str, np.ndarray]:
        rows = _rows_from_batch(batch)
        ids = tuple(str(r["clip_id"]) for r in rows)
        occurrence = self._seen.get(ids, 0)
        self._seen[ids] = occurrence + 1
        b = make_batch(rows, self.ocfg, batch_rng(self.seed, list(ids), occurrence))
        out = {}
        for k, v in b.items():
            if k in STR_KEYS or (isinstance(v, list) and v and isinstance(v[0], str)):
                out[k] = np.asarray([str(x) for x in v])
            elif torch.is_tensor(v):
                out[k] = v.numpy()
            else:
                out[k] = np.asarray(v)
        # group ids from the source ids themselves, so they stay valid across batches
        out["group"] = np.asarray([_group_id(str(r.get("source_id", r.get("clip_id")))) for r in rows], np.int64)
        return out
