"""cluster.yaml and the Serve config files against Ray's own schemas, offline.

The cluster config goes through what `ray up` does before it talks to a cloud:
``prepare_config`` (merge with the provider's defaults) then ``validate_config`` (Ray's
JSON schema plus its cross-field checks). No cloud credentials exist here and no cloud is
contacted. Broken variants must be rejected with Ray's own message.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def _load(name: str) -> dict:
    return yaml.safe_load((REPO / name).read_text())


def _check(cfg: dict) -> dict:
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(cfg))
    validate_config(prepared)
    return prepared


@pytest.fixture(scope="module")
def cluster() -> dict:
    return _load("cluster.yaml")


def test_cluster_yaml_validates_offline(cluster):
    prepared = _check(cluster)
    types = prepared["available_node_types"]
    assert prepared["provider"]["type"] == "aws"
    assert prepared["head_node_type"] == "head" and types["head"]["resources"].get("GPU", 0) == 0
    # A CPU worker group for data and a GPU group for training and serving, both autoscaled.
    assert types["cpu_worker"]["resources"]["CPU"] > 0 and "GPU" not in types["cpu_worker"]["resources"]
    assert types["gpu_worker"]["resources"]["GPU"] >= 1
    assert types["gpu_worker"]["node_config"]["InstanceType"].startswith("g5.")
    for t in ("cpu_worker", "gpu_worker"):
        assert 0 <= types[t]["min_workers"] < types[t]["max_workers"] <= prepared["max_workers"]
    assert prepared["idle_timeout_minutes"] > 0


def _commands(prepared: dict) -> dict[str, list[str]]:
    """Every command list of a prepared config, by where it runs."""
    out = {k: prepared[k] for k in ("initialization_commands", "setup_commands", "head_setup_commands",
                                    "worker_setup_commands", "head_start_ray_commands", "worker_start_ray_commands")}
    for name, t in prepared["available_node_types"].items():
        for k in ("initialization_commands", "worker_setup_commands"):
            if k in t:
                out[f"{name}.{k}"] = t[k]
    return out


def test_cluster_yaml_runs_the_project_image_and_installs_nothing_at_boot(cluster):
    import ray

    prepared = _check(cluster)
    docker = prepared["docker"]
    cpu_image = docker["image"]
    gpu_image = prepared["available_node_types"]["gpu_worker"]["docker"]["worker_image"]
    for image, variant in ((cpu_image, "cpu"), (gpu_image, "gpu")):
        name, _, tag = image.rpartition(":")
        assert name.endswith("/soundtrack") and tag == f"0.1.0-{variant}", image  # the Dockerfile's VARIANT builds
    assert "--gpus all" in prepared["available_node_types"]["gpu_worker"]["docker"]["worker_run_options"]
    assert docker["pull_before_run"] is True
    text = "\n".join(c for cmds in _commands(prepared).values() for c in cmds)
    assert "pip install" not in text and "curl" not in text  # the image holds every package
    assert f"ray.__version__ == '{ray.__version__}'" in "\n".join(prepared["setup_commands"])
    assert "torch.cuda.is_available()" in "\n".join(prepared["available_node_types"]["gpu_worker"]["worker_setup_commands"])
    # Every node starts Ray with token authentication and the proxy's upload limit in its environment.
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = "\n".join(prepared[key])
        assert "RAY_AUTH_MODE=token" in start and "disabled" not in start
        assert "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH=soundtrack.serving.proxy:proxy_middlewares" in start
        assert "ray start" in start
    assert "--dashboard-host=127.0.0.1" in "\n".join(prepared["head_start_ray_commands"])
    assert prepared["file_mounts"] == {"~/.ray": "~/.ray"}  # the auth token, at Ray's default path


def test_cluster_nodes_require_imdsv2_and_encrypted_disks(cluster):
    prepared = _check(cluster)
    for name, t in prepared["available_node_types"].items():
        node = t["node_config"]
        assert node["MetadataOptions"]["HttpTokens"] == "required", name
        assert node["MetadataOptions"]["HttpPutResponseHopLimit"] <= 2, name
        assert node["BlockDeviceMappings"] and all(b["Ebs"]["Encrypted"] is True for b in node["BlockDeviceMappings"]), name
        assert node["IamInstanceProfile"]["Arn"].startswith("arn:aws:iam::"), name  # no keys on the nodes


def test_cluster_storage_is_the_object_store_and_named_files_exist(cluster):
    text = (REPO / "cluster.yaml").read_text()
    assert "/mnt/efs" not in text
    uris = set(re.findall(r"--storage (\w+://\S+)", text))
    assert uris == {"s3://soundtrack-runs/runs"} and not re.search(r"--storage [/~]", text)
    serve = _load("serve/config.cluster.yaml")
    assert serve["applications"][0]["args"]["storage"] in uris
    for path in ("serve/config.cluster.yaml", "cluster.yaml", "README.md", "Dockerfile"):
        for ref in set(re.findall(r"(?<![\w/.])((?:experiments|serve|deploy/kuberay|tests)/[\w./-]+\.(?:yaml|py))", (REPO / path).read_text())):
            assert (REPO / ref).is_file(), f"{path} names {ref}, which does not exist"
    for stage in ("pretrain", "train", "tune", "bench"):
        assert f"soundtrack {stage} experiments/{stage}_paper.yaml --storage s3://soundtrack-runs/runs" in text


def test_raw_dict_without_prepare_fails_on_an_internal_key(cluster):
    from ray.autoscaler._private.util import validate_config

    with pytest.raises(RuntimeError, match="cluster_synced_files"):
        validate_config(copy.deepcopy(cluster))


def _broken(cluster, edit):
    cfg = copy.deepcopy(cluster)
    edit(cfg)
    return cfg


@pytest.mark.parametrize(
    "edit, exc, message",
    [
        (lambda c: c.update(max_worker=3), "ValidationError",
         r"Additional properties are not allowed \('max_worker' was unexpected\)"),
        (lambda c: c.update(max_workers="eight"), "ValidationError", r"'eight' is not of type 'integer'"),
        (lambda c: c["available_node_types"]["gpu_worker"]["resources"].update(GPU=0.5), "ValidationError",
         r"0.5 is not of type 'integer'"),
        (lambda c: c["available_node_types"]["gpu_worker"].pop("node_config"), "ValidationError",
         r"'node_config' is a required property"),
        (lambda c: c.update(head_node_type="gpu_head"), "ValueError",
         r"`head_node_type` must be one of `available_node_types`"),
        (lambda c: c["available_node_types"]["cpu_worker"].update(min_workers=9), "ValueError",
         r"max_workers` is smaller than the sum of `min_workers"),
    ],
    ids=["unknown-key", "wrong-type", "fractional-gpu", "missing-node-config", "unknown-head-type",
         "min-over-max"],
)
def test_broken_cluster_configs_are_rejected_with_rays_message(cluster, edit, exc, message):
    with pytest.raises(Exception, match=message) as info:
        _check(_broken(cluster, edit))
    assert type(info.value).__name__ == exc


@pytest.mark.parametrize("name", ["serve/config.yaml", "serve/config.cluster.yaml"])
def test_serve_configs_match_serves_schema(name):
    from ray.serve.schema import ServeDeploySchema

    from soundtrack.serving.app import load_serve_config
    from soundtrack.serving.limits import GENERATOR_NAME, INGRESS_NAME

    raw = _load(name)
    ServeDeploySchema.model_validate(raw)
    cfg = load_serve_config(REPO / name)
    assert cfg["http_options"]["host"] == "127.0.0.1" and cfg["http_options"]["request_timeout_s"] > 0
    (app,) = raw["applications"]
    assert app["import_path"] == "soundtrack.serving.app:build_app" and "working_dir" not in app.get("runtime_env", {})
    assert cfg["args"]["model_uri"] == "registry:best"
    gen = cfg["deployment_options"][GENERATOR_NAME]
    auto = gen["autoscaling_config"]
    assert auto["min_replicas"] == 1 and auto["max_replicas"] >= 2 and auto["target_ongoing_requests"] > 0
    assert gen["max_ongoing_requests"] >= cfg["args"]["max_batch_size"]
    for dep in (INGRESS_NAME, GENERATOR_NAME):
        opts = cfg["deployment_options"][dep]
        assert opts["max_queued_requests"] > 0 and opts["backpressure_config"]["retry_after_s"] > 0
        assert 0 < opts["ray_actor_options"]["num_cpus"]


def test_local_serve_config_fits_two_cores():
    from soundtrack.serving.app import load_serve_config
    from soundtrack.serving.limits import GENERATOR_NAME, INGRESS_NAME

    cfg = load_serve_config(REPO / "serve/config.yaml")
    gen = cfg["deployment_options"][GENERATOR_NAME]
    ing = cfg["deployment_options"][INGRESS_NAME]
    need = gen["autoscaling_config"]["max_replicas"] * gen["ray_actor_options"]["num_cpus"]
    assert need + ing["ray_actor_options"]["num_cpus"] <= 2
    assert gen["autoscaling_config"]["max_replicas"] == 2


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda r: r["applications"][0]["deployments"][1]["autoscaling_config"].update(max_replicas="two"),
         r"(?s)autoscaling_config does not match Ray Serve's schema.*max_replicas"),
        (lambda r: r["applications"][0]["deployments"][1].update(max_ongoing_request=3),
         r"unknown keys \['max_ongoing_request'\]"),
        (lambda r: r["http_options"].update(port="http"), r"(?s)does not match Ray Serve's schema.*http_options.port"),
        (lambda r: r["applications"][0]["deployments"][0]["backpressure_config"].update(status_code=500),
         r"(?s)does not match Ray Serve's schema.*backpressure_config.status_code.*503 or 429"),
    ],
    ids=["autoscaling-type", "unknown-deployment-key", "port-type", "backpressure-code"],
)
def test_broken_serve_configs_are_rejected_with_serves_message(tmp_path, edit, message):
    from soundtrack.serving.app import load_serve_config

    raw = _load("serve/config.yaml")
    edit(raw)
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(raw))
    with pytest.raises(ValueError, match=message):
        load_serve_config(bad)
