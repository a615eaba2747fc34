"""Contrastive training batches built beside the trainer, from a per-epoch shuffled stream.

A lean module on purpose: Ray imports it in every training worker, so it imports only what
building a batch needs (numpy, torch, :mod:`soundtrack.data.augment`, the shard codec), not
the training stage's models and plots; and no Ray: every function here is plain Python
over iterables, so the epoch logic is tested without a cluster.

What pretraining uses (``pretrain.batch_prep: worker``, the default): the materialised
training rows streamed once through all epochs (:func:`soundtrack.distributed.train.repeat_stream`:
block order reshuffled), each worker drawing its rows at random from Ray Data's local
shuffle buffer (``pretrain.shuffle_buffer`` rows, seeded by the run's seed and the rank) and
:class:`BatchPrep` building the crops and negatives in a background thread
(:func:`prefetched`, :func:`soundtrack.distributed.train.prepped_batches`): every epoch
groups the clips into other batches, so a clip meets other negatives each epoch. (Before,
a Ray Data ``map_batches`` batched the stream's consecutive rows, so the clips of one shard
met each other every epoch; ``batch_prep: ray_data`` keeps that path for comparison.)

Also here, built and tested but NOT wired in: a per-epoch stream, one new iteration of the
dataset shard per epoch, not materialised (:class:`EpochBatches`, :func:`shuffled_batches`
seeded by :func:`epoch_seed` of run seed, epoch and rank, each epoch yielding each clip
exactly once). Ray Data's ``streaming_split`` makes every worker start each epoch together,
and a version wired in hung the multi-node test (suspected: a prefetch thread asking for
the next epoch while its peer waited in DDP's all-reduce); the single-stream path above
has no such barrier. Resume with it would start the epoch of the checkpoint's step again
(``Solver.epoch_at``).
"""

from __future__ import annotations

import hashlib
import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import numpy as np
import torch

from soundtrack.data.augment import STR_KEYS, make_batch, objective_config
from soundtrack.data.shards import decode_row

T = TypeVar("T")


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
    a later epoch sits in another batch (each epoch's shuffle regroups the clips), so it
    draws other crops; a batch met again exactly draws with ``occurrence`` + 1.

    Args:
        seed: the run's seed.
        clip_ids: the batch's clip ids, in batch order.
        occurrence: how many times this batch (same clips, same order) was built before.
    """
    key = f"{int(seed)}|{int(occurrence)}|{','.join(clip_ids)}"
    return np.random.default_rng(int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little"))


class BatchPrep:
    """Shard rows -> one training batch (crops, negatives, mels) as numpy.

    In the Ray path it runs as a Ray Data UDF beside the trainer, so building crops and
    negatives (about as costly as the training step itself on CPU) overlaps the optimiser
    step; in this process it is called on each in-memory batch.

    Args:
        objective: the objective's overrides (:func:`soundtrack.data.augment.objective_config`).
        seed: the run's seed (of every batch's crops and negatives, :func:`batch_rng`).
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


def epoch_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """The seed of one worker's shuffle in one epoch: a function of the run's seed, the
    epoch and the worker's rank only (never OS entropy), so ``run.json``'s seed reproduces it.

    Args:
        seed: the run's seed.
        epoch: the epoch (0-based).
        rank: the worker's rank.
    """
    key = f"shuffle|{int(seed)}|{int(epoch)}|{int(rank)}"
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little")


def shuffled_batches(rows: Iterable[T], batch_size: int, buffer_size: int,
                     rng: np.random.Generator) -> Iterator[list[T]]:
    """Batches of ``batch_size`` rows drawn at random from a shuffle buffer over a row stream.

    The buffer fills to ``buffer_size`` rows; from then on each incoming row sends one row,
    chosen at random from the buffer, to the batch being built; at the end the buffer is
    drained in a random order. Every row goes out exactly once (but for a last batch short
    of ``batch_size``, which is dropped); with ``buffer_size`` at least the stream's length
    the order is a uniform random permutation.

    Args:
        rows: the stream (one epoch).
        batch_size: rows per batch.
        buffer_size: rows held (>= 1; the memory bound of the shuffle).
        rng: the epoch's generator (:func:`epoch_seed`).
    """
    buffer: list[T] = []
    batch: list[T] = []
    cap = max(int(buffer_size), 1)

    def take(row: T) -> list[T] | None:
        batch.append(row)
        if len(batch) < batch_size:
            return None
        out = batch[:]
        batch.clear()
        return out

    for row in rows:
        buffer.append(row)
        if len(buffer) < cap:
            continue
        i = int(rng.integers(len(buffer)))
        buffer[i], buffer[-1] = buffer[-1], buffer[i]
        full = take(buffer.pop())
        if full is not None:
            yield full
    for i in rng.permutation(len(buffer)):
        full = take(buffer[int(i)])
        if full is not None:
            yield full


class _Raised:
    """An exception of the producer thread, handed to the consumer."""

    def __init__(self, exc: BaseException):
        self.exc = exc


_END = object()


def prefetched(make: Callable[[], Iterable[T]], depth: int = 2) -> Iterator[T]:
    """The items of ``make()``, produced in a background thread up to ``depth`` ahead.

    The producer's exception is raised in the consumer; a consumer that stops early (closes
    the generator) stops the producer at its next item.

    Args:
        make: builds the iterable (called in the thread).
        depth: items produced ahead (>= 1).
    """
    q: queue.Queue = queue.Queue(maxsize=max(int(depth), 1))
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in make():
                if not put(item):
                    return
        except BaseException as exc:  # handed to the consumer, which raises it
            put(_Raised(exc))
            return
        put(_END)

    thread = threading.Thread(target=produce, name="batch-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is _END:
                return
            if isinstance(item, _Raised):
                raise item.exc
            yield item
    finally:
        stop.set()


class EpochBatches:
    """A solver's ``batches`` callable over a streamed shard: each call is the next epoch.

    Each call iterates ``blocks()`` (one pass over this worker's rows: Ray Data batches,
    pandas frames or lists of row dicts), shuffles the rows (:func:`shuffled_batches`,
    seeded by :func:`epoch_seed` of ``seed``, the epoch and ``rank``) and maps ``prep``
    over each batch in a background thread (:func:`prefetched`).

    Args:
        blocks: returns one epoch's row blocks (called once per epoch).
        prep: one batch's rows (list of dicts) -> the solver's batch.
        batch_size: rows per batch.
        buffer_size: rows of the shuffle buffer.
        seed: the run's seed.
        rank: this worker's rank.
        first_epoch: returns the epoch of the first call (read when it is made: the
            solver's ``epoch_at(start_step)``, known once it has restored its checkpoint).
        depth: batches built ahead.

    Attributes:
        epochs: the epochs started so far (in order).
    """

    def __init__(self, blocks: Callable[[], Iterable[Any]], prep: Callable[[list[dict]], Any], batch_size: int,
                 buffer_size: int, seed: int, rank: int = 0, first_epoch: Callable[[], int] = lambda: 0,
                 depth: int = 2):
        self.blocks, self.prep = blocks, prep
        self.batch_size, self.buffer_size = int(batch_size), int(buffer_size)
        self.seed, self.rank, self.first_epoch, self.depth = int(seed), int(rank), first_epoch, int(depth)
        self.epochs: list[int] = []

    def rows(self) -> Iterator[dict]:
        """One epoch's rows, block by block."""
        for block in self.blocks():
            yield from rows_of(block)

    def __call__(self) -> Iterator[Any]:
        epoch = self.epochs[-1] + 1 if self.epochs else int(self.first_epoch())
        self.epochs.append(epoch)
        rng = np.random.default_rng(epoch_seed(self.seed, epoch, self.rank))

        def make() -> Iterator[Any]:
            for batch in shuffled_batches(self.rows(), self.batch_size, self.buffer_size, rng):
                yield self.prep(batch)

        return prefetched(make, self.depth)


def rows_of(block: Any) -> list[dict]:
    """The rows of one block: a pandas frame, a numpy batch (dict of columns) or a list of dicts."""
    if hasattr(block, "to_dict") and not isinstance(block, dict):
        return block.to_dict("records")
    if isinstance(block, dict):
        n = len(next(iter(block.values()))) if block else 0
        return [{k: v[i] for k, v in block.items()} for i in range(n)]
    return list(block)
