"""A real 3-node local Ray cluster (ray.cluster_utils.Cluster): featurize across nodes, then
a 2-worker Ray Train pretraining step on those features, one worker per node.

One Ray session for the module: a head with 0 CPUs (it only schedules) and two 1-CPU nodes.
"""

import json

import numpy as np
import pytest

from soundtrack.config import FeaturizeSection, PretrainSection
from soundtrack.data import shards as pipeline
from soundtrack.data.manifest import read_manifest
from soundtrack.distributed import featurize

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TINY_MODEL = {"video_input_size": 32, "video_channels": [8, 16], "video_dim": 16, "audio_channels": 16,
              "audio_dim": 16, "embed_dim": 32, "use_text": False}


@pytest.fixture(scope="module")
def cluster():
    import os
    import shutil
    import tempfile

    from soundtrack.env import apply_env_defaults, worker_env

    apply_env_defaults()
    import ray
    from ray.cluster_utils import Cluster

    # A private RAY_TMPDIR (short: Ray puts sockets under it): Cluster() otherwise writes
    # /tmp/ray/ray_current_cluster, which every address-less ray.init() on the machine then
    # joins, and its shutdown deletes that file whoever wrote it last.
    old_tmp = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = tmp = tempfile.mkdtemp(prefix="rmn", dir="/tmp")
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})  # the head only schedules
    c.add_node(num_cpus=1)
    c.add_node(num_cpus=1)
    c.wait_for_nodes()
    # RAY_ADDRESS for every worker: Train V2's PlacementGroupCleaner looks the controller up
    # through the state API at address "auto", which on a shared machine may pick another
    # user's Ray, find no such actor there, and remove our training placement group.
    ray.init(address=c.address, include_dashboard=False,
             runtime_env={"env_vars": {**worker_env(), "RAY_ADDRESS": c.address}})
    yield c
    ray.shutdown()
    c.shutdown()
    if old_tmp is None:
        os.environ.pop("RAY_TMPDIR", None)
    else:
        os.environ["RAY_TMPDIR"] = old_tmp
    shutil.rmtree(tmp, ignore_errors=True)


def _cpu_nodes() -> set[str]:
    import ray

    return {n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU", 0) > 0}


@pytest.fixture(scope="module")
def features(cluster, synth_small, tmp_path_factory):
    """One featurize run across the two CPU nodes, shared by the tests below."""
    from ray.data import DataContext

    out = tmp_path_factory.mktemp("mn") / "features"
    sec = FeaturizeSection(size=32, rows_per_shard=2, num_cpus=1.0, concurrency=2)
    # Ray Data hands shards to pool actors as soon as ONE is up; on a loaded 2-core machine
    # the first actor can finish all 4 shards before the second has imported librosa.
    # Waiting for the whole pool makes "both nodes featurized" a property, not a race.
    ctx = DataContext.get_current()
    old_wait = ctx.wait_for_min_actors_s
    ctx.wait_for_min_actors_s = 180
    try:
        summary = featurize.run_featurize(synth_small, out, sec, use_ray=True, progress=False)
    finally:
        ctx.wait_for_min_actors_s = old_wait
    return out, summary


def test_featurize_spreads_over_nodes(cluster, synth_small, features):
    import ray

    out, summary = features
    assert len([n for n in ray.nodes() if n["Alive"]]) == 3
    assert summary["clips_out"] == len(read_manifest(synth_small))
    nodes = {d["node_id"] for d in pipeline.completed_shards(out).values()}
    assert nodes == _cpu_nodes() and len(nodes) == 2  # both 1-CPU nodes wrote shards


def _probed_train_loop():
    """The Ray Train worker of every solver (``solver_worker``), unchanged, with probes around it in each worker process.

    The probe wraps the reporter's ``prepare`` (Ray Train's ``prepare_model``: DDP with 2
    workers) and registers a DDP communication hook on the wrapper: it records each
    gradient bucket before the all-reduce (the local gradient) and after it, plus the
    weights right after wrapping (DDP's broadcast) and at the end. Returned as a closure
    so cloudpickle ships it by value (the test module is not importable on workers).
    """

    def loop(config: dict) -> None:
        import json
        import os
        from pathlib import Path

        import numpy as np
        import ray
        import ray.train
        import torch
        from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

        from soundtrack.distributed import train as launcher

        ctx = ray.train.get_context()
        rank = ctx.get_world_rank()
        probe_dir = Path(config["run_dir"]) / "probe"
        probe_dir.mkdir(parents=True, exist_ok=True)

        def flat(ts) -> np.ndarray:
            return torch.cat([t.detach().reshape(-1) for t in ts]).numpy().copy()

        real = launcher.RayTrainReporter.prepare
        rec: dict = {"pre": [], "post": []}

        def hook(state, bucket):
            rec["pre"].append(bucket.buffer().detach().clone().numpy())

            def done(fut):
                out = fut.value()[0] if isinstance(fut.value(), list) else fut.value()
                rec["post"].append(out.detach().clone().numpy())
                return out

            return allreduce_hook(state, bucket).then(done)

        def prepare(self, module):
            wrapped = real(self, module)
            rec["ddp"] = isinstance(wrapped, torch.nn.parallel.DistributedDataParallel)
            wrapped.register_comm_hook(None, hook)
            rec["model"] = wrapped
            rec["init"] = flat(wrapped.parameters())  # after DDP's broadcast of rank 0's weights
            return wrapped

        launcher.RayTrainReporter.prepare = prepare
        try:
            launcher.solver_worker(config)
        finally:
            launcher.RayTrainReporter.prepare = real
        np.savez(probe_dir / f"rank{rank}.npz", pre=np.stack(rec["pre"]), post=np.stack(rec["post"]),
                 init=rec["init"], final=flat(rec["model"].parameters()))
        info = {"rank": rank, "world": ctx.get_world_size(), "local_rank": ctx.get_local_rank(),
                "node_rank": ctx.get_node_rank(), "node_id": ray.get_runtime_context().get_node_id(),
                "pid": os.getpid(), "steps": len(rec["pre"]), "ddp": rec["ddp"]}
        (probe_dir / f"rank{rank}.json").write_text(json.dumps(info))

    return loop


def test_two_worker_pretraining_across_nodes(cluster, features, tmp_path):
    """featurize (across nodes) -> pretrain with 2 Ray Train workers, one per CPU node,
    gradients all-reduced over gloo between the nodes."""
    import ray

    from soundtrack.config import to_dict
    from soundtrack.distributed import train_pretrain as pretrain
    from soundtrack.distributed.train import launch
    from soundtrack.models.encoders import ContrastiveModel
    from soundtrack.stages.runs import read_metrics

    feats, _ = features
    steps = 3
    # 0.5 CPU per worker + a 0.25-CPU batch-building actor: fits 2 x 1 CPU without deadlock.
    sec = PretrainSection(model=TINY_MODEL, batch_size=2, steps=steps, warmup_steps=1, checkpoint_every=steps,
                          log_every=1, num_workers=2, cpus_per_worker=0.5, torch_threads=1, prep_workers=1,
                          prep_cpus=0.25, eval_split="train")
    mcfg = pretrain.model_config("tiny", sec.model)
    raw = pretrain.train_dataset(feats, "train").materialize()
    n_train = raw.count()
    assert n_train >= sec.batch_size * sec.num_workers
    run_dir = (tmp_path / "run").resolve()
    result = launch(
        "contrastive",
        {"section": to_dict(sec), "model": mcfg.to_dict(), "objective": sec.objective, "n_train": n_train},
        run_dir,
        worker=_probed_train_loop(),
        datasets={"train": pretrain.prepared_dataset(raw, sec, n_train)},
        prep=pretrain.worker_prep(sec),
        num_workers=sec.num_workers,
        cpus_per_worker=sec.cpus_per_worker,
        max_failures=0,  # a failure must fail the test, not be retried away
        placement_strategy="SPREAD",
    )
    assert result.checkpoint is not None  # a failed run raises (Train V2): it would fail the test here

    # both workers ran to the end, each on its own CPU node
    infos = [json.loads((run_dir / "probe" / f"rank{r}.json").read_text()) for r in range(2)]
    assert [i["rank"] for i in infos] == [0, 1] and all(i["world"] == 2 for i in infos)
    assert all(i["steps"] == steps and i["ddp"] for i in infos)  # one gradient bucket a step, through DDP
    worker_nodes = {i["node_id"] for i in infos}
    assert len(worker_nodes) == 2 and worker_nodes == _cpu_nodes()
    assert len({i["pid"] for i in infos}) == 2

    # gradients were averaged across the two nodes: each rank's local gradient differed
    # (different data), after the all-reduce both hold exactly their mean, and the weights
    # stay identical on both ranks while training moved them
    p0, p1 = (np.load(run_dir / "probe" / f"rank{r}.npz") for r in range(2))
    assert np.array_equal(p0["init"], p1["init"])  # rank 0's weights broadcast to rank 1
    for s in range(steps):
        assert not np.allclose(p0["pre"][s], p1["pre"][s]), f"step {s + 1}: identical local gradients"
        np.testing.assert_allclose(p0["post"][s], (p0["pre"][s] + p1["pre"][s]) / 2, rtol=1e-5, atol=1e-7)
        assert np.array_equal(p0["post"][s], p1["post"][s])
    assert np.array_equal(p0["final"], p1["final"])
    assert not np.allclose(p0["final"], p0["init"])

    # rank 0 logged each step once, and its reported checkpoint holds the workers' final weights
    ms = read_metrics(run_dir)
    assert [m["step"] for m in ms] == list(range(1, steps + 1))
    assert all(np.isfinite(m["loss"]) for m in ms)
    assert result.metrics["step"] == steps
    with result.checkpoint.as_directory() as d:
        ck = ContrastiveModel.load(d)
    ck_flat = np.concatenate([p.detach().reshape(-1).numpy() for p in ck.parameters()])
    assert np.array_equal(ck_flat, p0["final"])
    assert ray.is_initialized() and len(_cpu_nodes()) == 2  # the cluster survived the run


def test_worker_built_batches_regroup_the_clips_every_epoch(cluster):
    """``batch_prep: worker``: the rows of each epoch reach the batches through a seeded
    shuffle buffer, so a clip's batch mates (its negatives) change from epoch to epoch; the
    stream's consecutive rows (what ``map_batches`` batches, ``batch_prep: ray_data``) keep
    each block's clips together every epoch."""
    import ray

    from soundtrack.distributed.train import prepped_batches, repeat_stream

    n, b, epochs = 16, 4, 3
    raw = ray.data.from_items([{"clip_id": f"c{i:02d}"} for i in range(n)], override_num_blocks=4).materialize()
    stream = repeat_stream(raw, n * epochs, n, seed=0)

    def groups(batches) -> list[frozenset]:
        return [frozenset(x) for x in batches]

    worker = groups(prepped_batches(stream.iterator(), {"seed": 0, "shuffle_buffer": n}, b, rank=0,
                                    builder=lambda df: list(df["clip_id"])))
    plain = groups(list(bt["clip_id"]) for bt in stream.iter_batches(batch_size=b, batch_format="pandas"))
    assert len(worker) >= n * epochs // b - 1
    # every clip seen about once per epoch, and the groups vary: few repeated batches
    assert len(set(worker)) >= 0.75 * len(worker), worker
    assert len(set(plain)) <= n // b, plain  # block order shuffled, batches the same 4 groups
    again = groups(prepped_batches(stream.iterator(), {"seed": 0, "shuffle_buffer": n}, b, rank=0,
                                   builder=lambda df: list(df["clip_id"])))
    assert again == worker  # seeded: the run's seed reproduces it
