"""A real 3-node local Ray cluster (ray.cluster_utils.Cluster): featurize across nodes."""

import pytest

from soundtrack.config import FeaturizeSection
from soundtrack.data import pipeline
from soundtrack.data.manifest import read_manifest

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def cluster():
    from soundtrack.raycluster import set_ray_env

    set_ray_env()
    import ray
    from ray.cluster_utils import Cluster

    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})  # the head only schedules
    c.add_node(num_cpus=1)
    c.add_node(num_cpus=1)
    c.wait_for_nodes()
    ray.init(address=c.address, include_dashboard=False)
    yield c
    ray.shutdown()
    c.shutdown()


def test_featurize_spreads_over_nodes(cluster, synth_small, tmp_path):
    import ray

    assert len([n for n in ray.nodes() if n["Alive"]]) == 3
    sec = FeaturizeSection(size=32, rows_per_shard=2, num_cpus=1.0, concurrency=2)
    s = pipeline.run_featurize(synth_small, tmp_path / "mn", sec, use_ray=True, progress=False)
    assert s["clips_out"] == len(read_manifest(synth_small))
    nodes = {d["node_id"] for d in pipeline.completed_shards(tmp_path / "mn").values()}
    worker_nodes = {n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU", 0) > 0}
    assert nodes == worker_nodes and len(nodes) == 2  # both 1-CPU nodes wrote shards
