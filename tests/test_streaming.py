"""Streaming training inputs below Ray: the per-epoch shuffle of a worker's rows
(:mod:`soundtrack.distributed.batches`), what a resumed worker draws, and the background
batch builder. The Ray path itself (``ray.train.get_dataset_shard`` once per epoch into
:class:`EpochBatches`) runs in tests/test_pretrain_ray.py and tests/test_multinode.py."""

from __future__ import annotations

import itertools
import threading
import time

import numpy as np
import pandas as pd
import pytest

from soundtrack.distributed.batches import EpochBatches, epoch_seed, prefetched, rows_of, shuffled_batches

N_CLIPS, BATCH = 48, 4


def _blocks() -> list[pd.DataFrame]:
    """One epoch of a worker's rows as the blocks Ray Data hands over (three shard files)."""
    ids = [f"c{i:03d}" for i in range(N_CLIPS)]
    return [pd.DataFrame({"clip_id": ids[k:k + 16], "source_id": [f"s{i // 4}" for i in range(k, k + 16)]})
            for k in range(0, N_CLIPS, 16)]


def _epochs(n: int, buffer: int, seed: int = 0, first: int = 0) -> tuple[list[list[list[str]]], EpochBatches]:
    """``n`` epochs of batches (clip ids), as a solver's passes draw them."""
    eb = EpochBatches(_blocks, lambda rows: [r["clip_id"] for r in rows], batch_size=BATCH, buffer_size=buffer,
                      seed=seed, rank=0, first_epoch=lambda: first)
    return [list(eb()) for _ in range(n)], eb


@pytest.mark.parametrize("buffer", [N_CLIPS, 8], ids=["whole-epoch", "windowed"])
def test_each_epoch_covers_every_clip_once_and_regroups_them(buffer):
    epochs, eb = _epochs(3, buffer)
    assert eb.epochs == [0, 1, 2]
    for batches in epochs:
        assert all(len(b) == BATCH for b in batches)
        flat = [c for b in batches for c in b]
        assert sorted(flat) == [f"c{i:03d}" for i in range(N_CLIPS)]  # every clip exactly once
    # the batch compositions change from epoch to epoch: a clip meets other negatives
    groups = [{frozenset(b) for b in batches} for batches in epochs]
    assert groups[0] != groups[1] and groups[1] != groups[2]
    pairs = [{frozenset(p) for b in batches for p in itertools.combinations(b, 2)} for batches in epochs]
    assert len(pairs[0] & pairs[1]) < len(pairs[0]) / 2  # most batch-mates are new
    # and the order is not the stream's order
    assert [c for b in epochs[0] for c in b] != [f"c{i:03d}" for i in range(N_CLIPS)]


def test_the_order_is_a_function_of_seed_epoch_and_rank_and_a_resume_draws_its_epoch_again():
    a, _ = _epochs(3, N_CLIPS, seed=5)
    b, _ = _epochs(3, N_CLIPS, seed=5)
    assert a == b  # reproduced from the run's seed
    other, _ = _epochs(1, N_CLIPS, seed=6)
    assert other[0] != a[0]
    # a worker restarted in epoch 2 (Solver.epoch_at of its checkpoint's step) draws epoch 2's
    # order from its start, then goes on with epoch 3 as an uninterrupted run would
    resumed, eb = _epochs(2, N_CLIPS, seed=5, first=2)
    assert eb.epochs == [2, 3] and resumed[0] == a[2]
    assert len({epoch_seed(5, e, r) for e in range(4) for r in range(3)}) == 12


def test_a_last_short_batch_is_dropped_and_a_whole_epoch_buffer_is_a_permutation():
    rng = np.random.default_rng(0)
    got = list(shuffled_batches(range(10), 4, 100, rng))
    assert [len(b) for b in got] == [4, 4] and len(set(sum(got, []))) == 8
    # with the whole epoch in the buffer every position is reachable for every row (not windowed)
    first = {next(shuffled_batches(range(10), 10, 100, np.random.default_rng(s)))[0] for s in range(200)}
    assert first == set(range(10))


def test_rows_of_every_block_format():
    frame = pd.DataFrame({"clip_id": ["a", "b"], "x": [1, 2]})
    assert rows_of(frame) == [{"clip_id": "a", "x": 1}, {"clip_id": "b", "x": 2}]
    assert rows_of({"clip_id": np.asarray(["a", "b"]), "x": np.asarray([1, 2])})[1]["x"] == 2
    assert rows_of([{"clip_id": "a"}]) == [{"clip_id": "a"}]


def test_prefetched_builds_ahead_raises_the_producers_error_and_stops_when_closed():
    made: list[int] = []

    def items():
        for i in range(1000):
            made.append(i)
            yield i

    it = prefetched(items, depth=2)
    assert next(it) == 0
    time.sleep(0.2)
    assert 2 <= len(made) <= 5  # built ahead, bounded by the depth
    it.close()
    time.sleep(0.3)
    n = len(made)
    time.sleep(0.2)
    assert len(made) == n < 1000  # the producer stopped
    assert not [t for t in threading.enumerate() if t.name == "batch-prefetch" and t.is_alive()]

    def broken():
        yield 1
        raise ValueError("bad row")

    with pytest.raises(ValueError, match="bad row"):
        list(prefetched(broken))
