"""The storage layer below Ray: roots and names, atomic objects, publication by marker,
leases and registry publication, each against a local temp dir AND a real S3 server
(moto in server mode on loopback, ``tests/s3_server.py``)."""

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from soundtrack.errors import LeaseHeldError, NotPublishedError, RegistryError, StorageError
from soundtrack.storage import (
    LEASE,
    MARKER,
    StorageRoot,
    Store,
    check_name,
    fetch_published,
    fetch_run,
    join,
    local_root,
    run_location,
    staged,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path):
    """A storage root: a local temp dir, or ``s3://<fresh bucket>/runs`` (one fixture, both kinds)."""
    if request.param == "local":
        return str(tmp_path / "runs")
    return request.getfixturevalue("s3_root")


# ----------------------------------------------------------------------------- roots and names


def test_roots_parse_without_losing_slashes():
    r = StorageRoot.parse("s3://bucket/a/b/")
    assert (r.scheme, r.path, r.uri, r.is_local) == ("s3", "bucket/a/b", "s3://bucket/a/b", False)
    assert StorageRoot.parse("gcs://b/p").uri == "gs://b/p"
    assert StorageRoot.parse("file:///data/runs") == StorageRoot("file", "/data/runs")
    assert StorageRoot.parse("runs/").uri == "runs"
    assert join("s3://bucket/runs", "train", "x") == "s3://bucket/runs/train/x"
    assert join("runs", "train") == str(Path("runs", "train"))
    with pytest.raises(StorageError, match="lost a slash"):
        StorageRoot.parse(str(Path("s3://bucket/runs")))  # what Path() makes of a URI
    with pytest.raises(StorageError, match="names no bucket"):
        StorageRoot.parse("s3://")
    with pytest.raises(StorageError, match="unknown scheme 'http'"):
        StorageRoot.parse("http://example.com/x")
    with pytest.raises(StorageError, match="leaves the storage root"):
        StorageRoot.parse("s3://bucket/a/../../etc")
    with pytest.raises(StorageError, match="the pretrain stage does not support an object-store"):
        local_root("s3://bucket/runs", "the pretrain stage")


@pytest.mark.parametrize("bad", ["", ".", "..", "../x", "a/b", "/abs", "a\\b", "a\x00b", "x..y", "~root"])
def test_unsafe_names_are_refused(bad):
    with pytest.raises(StorageError, match="single folder name|empty"):
        check_name(bad, "experiment name")
    assert check_name("tiny-exp_1.v2") == "tiny-exp_1.v2"


def test_unsafe_names_never_reach_the_disk(tmp_path):
    from soundtrack.stages.registry import register
    from soundtrack.stages.runs import Run

    with pytest.raises(StorageError, match="run name '../escape'"):
        Run(tmp_path / "runs", "train", "../escape")
    with pytest.raises(RegistryError, match="registry name '../x'"):
        register("../x", tmp_path / "nomodel", {}, {}, storage=tmp_path / "runs")
    with pytest.raises(StorageError, match="leaves the storage root"):
        Store(tmp_path / "runs").write_bytes("../../escaped", b"x")
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- objects, publication


def test_objects_and_directories(root, tmp_path):
    st = Store(root)
    assert not st.exists("a") and st.read_json("a/x.json", default=None) is None
    st.write_json("a/x.json", {"k": 1})
    st.write_bytes("a/b/y.bin", b"\x00\x01")
    assert st.read_json("a/x.json") == {"k": 1} and st.read_bytes("a/b/y.bin") == b"\x00\x01"
    assert st.exists("a") and st.is_file("a/x.json") and not st.is_file("a")
    assert st.listdir("a") == ["b"] and st.list("a", recursive=True)["b/y.bin"] == 2
    assert st.create_bytes("a/once", b"1") and not st.create_bytes("a/once", b"2")
    assert st.read_bytes("a/once") == b"1"
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "w.txt").write_text("weights")
    st.upload_dir(src, "up")
    out = st.download_dir("up", tmp_path / "down")
    assert (out / "sub" / "w.txt").read_text() == "weights"
    st.delete("a")
    assert not st.exists("a") and st.exists("up")
    with pytest.raises(FileNotFoundError):
        st.read_bytes("a/x.json")


def test_exclusive_create_has_one_winner_under_a_race(root):
    st = Store(root)
    wins, barrier = [], threading.Barrier(8)

    def go(i):
        barrier.wait()
        if st.create_bytes("race/obj", str(i).encode()):
            wins.append(i)

    threads = [threading.Thread(target=go, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1 and st.read_bytes("race/obj") == str(wins[0]).encode()


def test_publication_by_marker(root, tmp_path):
    st = Store(root)
    src = tmp_path / "run"
    (src / "model").mkdir(parents=True)
    (src / "model" / "w.bin").write_bytes(b"w" * 1000)
    (src / "run.json").write_text("{}")
    st.upload_dir(src, "features/f1")  # the bytes are there, the marker is not: not published
    with pytest.raises(NotPublishedError, match="no _COMPLETE marker"):
        st.read_manifest("features/f1")
    with pytest.raises(NotPublishedError):
        fetch_published(st, "features/f1")
    doc = st.publish("features/f1", local=src)
    assert set(doc["files"]) == {"model/w.bin", "run.json"} and doc["files"]["model/w.bin"]["size"] == 1000
    assert st.read_manifest("features/f1")["files"] == doc["files"]
    local = fetch_published(st, "features/f1")
    assert (local / "model" / "w.bin").read_bytes() == b"w" * 1000
    st.write_bytes("features/f1/model/w.bin", b"short")  # a torn / replaced object
    with pytest.raises(NotPublishedError, match="model/w.bin is missing or of another size"):
        st.read_manifest("features/f1")
    st.write_bytes("features/f1/model/w.bin", b"x" * 1000)  # same size, other bytes
    if not st.is_local:
        with pytest.raises(NotPublishedError, match="sha256"):
            st.download_published("features/f1", tmp_path / "again")
    st.unpublish("features/f1")
    assert not st.is_published("features/f1")


# ----------------------------------------------------------------------------- leases


def _foreign(st, rel, age_s, host="other-host", pid=12345):
    """A lease written by another owner, its heartbeat ``age_s`` old."""
    now = time.time()
    st.write_json(f"{rel}/{LEASE}", {"format": "soundtrack-lease/1", "token": "theirs", "command": "soundtrack train x",
                                     "owner": {"host": host, "pid": pid, "user": "them"}, "started_at": now - age_s,
                                     "heartbeat_at": now - age_s, "heartbeat_s": 10, "timeout_s": 60})


def test_lease_refuses_a_live_owner_and_takes_over_a_dead_one(root, caplog):
    st = Store(root)
    _foreign(st, "train/r1", age_s=1)
    with pytest.raises(LeaseHeldError, match="leased by other-host pid 12345 .user them., running `soundtrack train x`"):
        st.lease("train/r1").acquire(take_over=True)
    _foreign(st, "train/r1", age_s=120)  # its heartbeat stopped two minutes ago
    with pytest.raises(LeaseHeldError, match="dead owner, other-host pid 12345.*heartbeat is 120 s old.*--resume"):
        st.lease("train/r1").acquire()
    lease = st.lease("train/r1", heartbeat_s=0.1).acquire(take_over=True)
    assert lease.previous["owner"]["host"] == "other-host"
    assert "took over the lease of other-host pid 12345" in caplog.text
    first = st.read_json(f"train/r1/{LEASE}")
    assert first["owner"]["host"] == socket.gethostname() and first["owner"]["pid"] == os.getpid()
    time.sleep(0.5)
    assert st.read_json(f"train/r1/{LEASE}")["heartbeat_at"] > first["heartbeat_at"]  # the thread renews it
    with pytest.raises(LeaseHeldError, match="already leased by this process"):
        st.lease("train/r1").acquire(take_over=True)
    lease.release()
    assert not st.is_file(f"train/r1/{LEASE}")


def test_same_host_dead_pid_is_dead_at_once_and_a_lost_lease_is_noticed(root):
    st = Store(root)
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    _foreign(st, "tune/t", age_s=0, host=socket.gethostname(), pid=proc.pid)  # fresh heartbeat, process gone
    doc = st.read_json(f"tune/t/{LEASE}")
    doc["owner"]["pid_ns"] = os.stat("/proc/self/ns/pid").st_ino
    st.write_json(f"tune/t/{LEASE}", doc)
    lease = st.lease("tune/t", heartbeat_s=0.1).acquire(take_over=True)
    assert lease.previous["owner"]["pid"] == proc.pid
    _foreign(st, "tune/t", age_s=0)  # someone else took it (this owner was considered dead)
    time.sleep(0.5)
    assert lease.lost and not lease.held
    lease.release()
    assert st.read_json(f"tune/t/{LEASE}")["token"] == "theirs"  # not deleted: not ours any more


# ----------------------------------------------------------------------------- registry


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from soundtrack.pipelines.generator import build_tiny_generator

    d = tmp_path_factory.mktemp("tiny") / "model"
    build_tiny_generator(d, seed=0)
    return d


class _Killed(Exception):
    pass


def test_registry_publication_killed_at_every_step_keeps_the_previous_entry(root, tiny_model):
    from soundtrack.stages.models import resolve_model_uri
    from soundtrack.stages.registry import STEPS, has_entry, read_card, register

    with pytest.raises(Exception, match="no registry entry 'best'.*holds no registry entries"):
        resolve_model_uri("registry:best", root)
    register("best", tiny_model, {"num_steps": 3}, {"metrics": {"gen": 1}}, storage=root)
    assert read_card("best", root)["metrics"] == {"gen": 1} and has_entry("best", root)
    expect = 1
    for i, step in enumerate(STEPS):
        def kill(s, at=step):
            if s == at:
                raise _Killed(at)

        with pytest.raises(_Killed):
            register("best", tiny_model, {"num_steps": 4 + i}, {"metrics": {"gen": 2 + i}}, storage=root, on_step=kill)
        if STEPS.index(step) >= STEPS.index("pointed"):
            expect = 2 + i  # killed after the pointer moved: the new entry, complete
        card = read_card("best", root)
        assert card["metrics"]["gen"] == expect, step  # else the previous entry, loadable
        model = resolve_model_uri("registry:best", root)
        assert json.loads((model / "generator.json").read_text())["sampler"]["num_steps"] == card["settings"]["num_steps"]
    st = Store(root)
    # the pointed version losing its marker (a store that lost objects): readers fall back
    ptr = st.read_json("registry/best/CURRENT")
    st.unpublish(f"registry/best/versions/{ptr['version']}")
    fallback = read_card("best", root)
    assert fallback["version"] == ptr["previous"][0]
    model = resolve_model_uri("registry:best", root)
    assert json.loads((model / "generator.json").read_text())["sampler"]["num_steps"] == fallback["settings"]["num_steps"]
    assert len(st.listdir("registry/best/versions")) <= 3  # old versions are cleaned up


def test_registry_reads_the_older_plain_layout(tmp_path, tiny_model):
    import shutil

    from soundtrack.stages.models import resolve_model_uri
    from soundtrack.stages.registry import read_card, register

    storage = tmp_path / "runs"
    shutil.copytree(tiny_model, storage / "registry" / "old" / "model")
    (storage / "registry" / "old" / "card.json").write_text('{"name": "old"}')
    assert resolve_model_uri("registry:old", storage) == storage / "registry" / "old" / "model"
    with pytest.raises(_Killed):  # the first versioned publication killed: the old layout still loads
        register("old", tiny_model, {}, {"metrics": {"v": 2}}, storage=storage,
                 on_step=lambda s: (_ for _ in ()).throw(_Killed()) if s == "sealed" else None)
    assert resolve_model_uri("registry:old", storage) == storage / "registry" / "old" / "model"
    assert read_card("old", storage) == {"name": "old"}
    register("old", tiny_model, {}, {"metrics": {"v": 2}}, storage=storage)  # replaces it with a version
    model = resolve_model_uri("registry:old", storage)
    assert model.parent.parent.name == "versions" and read_card("old", storage)["metrics"] == {"v": 2}
    prev = json.loads((model.parent / "card.previous.json").read_text())
    assert prev == {"name": "old"}


def test_registry_publication_sigkilled_in_a_subprocess(tmp_path, tiny_model):
    """A real SIGKILL after the new version is written but before its marker and pointer."""
    from soundtrack.stages.registry import read_card, register

    storage = tmp_path / "runs"
    register("best", tiny_model, {"num_steps": 3}, {"metrics": {"gen": 1}}, storage=storage)
    code = ("import os, signal, sys\n"
            "from soundtrack.stages.registry import register\n"
            "def kill(step):\n"
            "    if step == 'written':\n"
            "        os.kill(os.getpid(), signal.SIGKILL)\n"
            f"register('best', {str(tiny_model)!r}, {{'num_steps': 5}}, {{'metrics': {{'gen': 2}}}}, "
            f"storage={str(storage)!r}, on_step=kill)\n")
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == -signal.SIGKILL, res.stderr[-2000:]
    versions = list((storage / "registry" / "best" / "versions").iterdir())
    assert len(versions) == 2 and sum((v / MARKER).exists() for v in versions) == 1  # one torn, unpublished
    assert read_card("best", storage)["metrics"] == {"gen": 1}


def test_a_stage_refuses_an_object_store_root_before_writing(s3_root):
    """The issue's bug: ``--storage s3://...`` wrote to a local folder ``s3:``. Stages not yet
    on the storage layer refuse it with a clear error; nothing lands locally (the fixture asserts)."""
    from soundtrack.stages.bench import ensure_evaluator
    from soundtrack.stages.catalog import remove_run
    from soundtrack.stages.runs import Run

    with pytest.raises(StorageError, match=r"the evaluator \(bench\) does not support an object-store storage root"):
        ensure_evaluator("experiments/eval_encoders.yaml", s3_root)  # before its pretrain run starts
    with pytest.raises(StorageError, match="runs rm does not support an object-store"):
        remove_run("x", s3_root)
    with pytest.raises(StorageError, match="lost a slash"):
        Run("runs", "train", "x", run_dir=Path(s3_root) / "train" / "x")


# ----------------------------------------------------------------------------- staging (stages on an object store)


def test_staging_pulls_pushes_and_publishes(s3_root):
    """A stage on an object-store root works in a temp staging copy: an empty store drops a
    stale copy, an unfinished run is pulled back (what --resume continues from), a published
    one is downloaded verified, and only published runs are fetched as upstreams."""
    import tempfile

    local = run_location(s3_root, "features", "r1")
    assert local.is_relative_to(Path(tempfile.gettempdir()) / "soundtrack-stage") and local.name == "r1"
    st = staged(local)
    assert st is not None and st.rel == "features/r1" and st.uri == f"{s3_root}/features/r1"
    assert staged(Path(tempfile.gettempdir()) / "elsewhere" / "x" / "y") is None
    assert run_location("runs", "features", "r1") == Path("runs/features/r1")  # a local root: the run itself

    (local / "shards").mkdir(parents=True)
    (local / "stale.txt").write_text("from another run")
    assert st.pull() == "empty" and not local.exists()  # not in the store: the stale copy goes

    (local / "shards").mkdir(parents=True)
    (local / "run.json").write_text(json.dumps({"status": "running", "attempts": 1}))
    (local / "shards" / "shard-00000.parquet").write_bytes(b"shard zero")
    st.push()
    assert not st.store.is_published(st.rel)
    with pytest.raises(NotPublishedError, match="not published"):
        fetch_run(st.uri)  # an unfinished upstream is never trusted

    # --resume on a host that has only part of it (another host, or a lost temp dir)
    (local / "shards" / "shard-00000.parquet").unlink()
    (local / "run.json").write_text(json.dumps({"status": "stale"}))
    (local / "shards" / "shard-00001.parquet").write_bytes(b"made here after the last upload")
    assert st.pull() == "partial"
    assert (local / "shards" / "shard-00000.parquet").read_bytes() == b"shard zero"
    assert (local / "shards" / "shard-00001.parquet").exists()  # local progress is kept
    assert json.loads((local / "run.json").read_text())["status"] == "running"  # the store's card wins

    doc = st.publish()
    assert set(doc["files"]) == {"run.json", "shards/shard-00000.parquet", "shards/shard-00001.parquet"}
    assert st.store.is_published(st.rel) and (local / MARKER).is_file()
    assert fetch_run(st.uri) == local and st.pull() == "published"  # the marker matches: nothing downloaded
    import shutil

    shutil.rmtree(local)
    assert fetch_run(st.uri) == local and (local / "shards" / "shard-00000.parquet").read_bytes() == b"shard zero"
    # a file changed in the store behind its marker is refused (sha256 from the manifest)
    st.store.write_bytes("features/r1/shards/shard-00000.parquet", b"shard ZERO")
    shutil.rmtree(local)
    with pytest.raises(NotPublishedError, match="sha256"):
        fetch_run(st.uri)
    with pytest.raises(StorageError, match="<stage>/<run name>"):
        fetch_run(s3_root.split("/runs")[0] + "/r1")
    st.delete()
    assert not st.store.exists(st.rel) and not local.exists()


def test_staging_sync_uploads_changes_pointers_last_and_never_the_card(s3_root):
    """What a running staged run uploads between publications (:class:`StagingSync`): new
    and changed files once each, Ray's snapshot files after the files of the same pass, never
    ``run.json`` (its 'finished' must not reach the store before the files), nothing published."""
    from soundtrack.storage import StagingSync

    local = run_location(s3_root, "pretrain", "r")
    st = staged(local)
    (local / "ray" / "checkpoint_000001").mkdir(parents=True)
    (local / "ray" / "checkpoint_000001" / "model.safetensors").write_bytes(b"w" * 10)
    (local / "ray" / "checkpoint_manager_snapshot.json").write_text('{"checkpoint_000001": 1}')
    (local / "metrics.jsonl").write_text('{"step": 1}\n')
    (local / "run.json").write_text('{"status": "finished"}')
    order = []

    class Recording(type(st)):
        def push_file(self, name):
            order.append(name)
            super().push_file(name)

    sync = StagingSync(Recording(st.local, st.store, st.rel), interval_s=0)
    assert sync.sync() == 3
    assert order[-1] == "ray/checkpoint_manager_snapshot.json" and "run.json" not in order
    store = Store(s3_root)
    assert store.read_bytes("pretrain/r/ray/checkpoint_000001/model.safetensors") == b"w" * 10
    assert not store.is_file("pretrain/r/run.json") and not store.is_published("pretrain/r")
    assert sync.sync() == 0  # nothing changed: nothing sent again
    (local / "metrics.jsonl").write_text('{"step": 1}\n{"step": 2}\n')
    assert sync.sync() == 1 and store.read_bytes("pretrain/r/metrics.jsonl").count(b"step") == 2
    # the thread: a file written while it runs reaches the store within a few passes
    sync = StagingSync(st, interval_s=0.05).start()
    try:
        (local / "late.txt").write_text("x")
        deadline = time.time() + 10
        while not store.is_file("pretrain/r/late.txt") and time.time() < deadline:
            time.sleep(0.05)
    finally:
        sync.stop()
    assert store.is_file("pretrain/r/late.txt") and sync.passes >= 1


def test_run_on_an_object_store_root_leases_and_publishes_there(s3_root):
    """A :class:`Run` on an ``s3://`` root: its lease and card are in the store while it runs,
    a failed launch uploads what it made (no marker), a finished one is published (marker
    last); --resume after the local copy is lost starts from the store; ``runs ls`` lists it."""
    import shutil

    from soundtrack.stages.base import prepare_run_dir
    from soundtrack.stages.catalog import list_runs
    from soundtrack.stages.runs import Run, UpstreamError

    store = Store(s3_root)
    run = Run(s3_root, "data", "x", config={"a": 1}, command="soundtrack data synth")
    assert run.staging is not None and run.dir == run_location(s3_root, "data", "x")
    with pytest.raises(RuntimeError, match="boom"):
        with run:
            assert store.is_file(f"data/x/{LEASE}") and not (run.dir / LEASE).exists()
            assert json.loads(store.read_bytes("data/x/run.json"))["status"] == "running"
            (run.dir / "part.bin").write_bytes(b"half of it")
            raise RuntimeError("boom")
    assert json.loads(store.read_bytes("data/x/run.json"))["status"] == "failed"
    assert store.read_bytes("data/x/part.bin") == b"half of it"
    assert not store.is_published("data/x") and not store.is_file(f"data/x/{LEASE}")
    assert [(r.stage, r.name, r.status) for r in list_runs(s3_root)] == [("data", "x", "failed")]

    shutil.rmtree(run.dir)  # the relaunch runs elsewhere: the store has what it needs
    with pytest.raises(UpstreamError, match="--resume"):
        prepare_run_dir(run.dir, "data", force=False, resume=False)
    assert (run.dir / "part.bin").read_bytes() == b"half of it"  # pulled before the policy looked
    assert prepare_run_dir(run.dir, "data", force=False, resume=True) is False
    with Run(s3_root, "data", "x", config={"a": 1}) as again:
        (again.dir / "rest.bin").write_bytes(b"the rest")
        again.log(step=1, loss=0.5)
        again.finish(clips=2)
    assert store.is_published("data/x") and not store.is_file(f"data/x/{LEASE}")
    card = json.loads(store.read_bytes("data/x/run.json"))
    assert card["status"] == "finished" and card["attempts"] == 2
    assert {"run.json", "part.bin", "rest.bin", "metrics.jsonl"} <= set(store.read_manifest("data/x")["files"])
    [info] = list_runs(s3_root, "data")
    assert info.status == "finished" and info.path == f"{s3_root}/data/x" and info.size_mb >= 0
    shutil.rmtree(run.dir)
    assert prepare_run_dir(run.dir, "data", force=False, resume=False) is True  # reused from the store
    assert (run.dir / "rest.bin").read_bytes() == b"the rest"
    assert prepare_run_dir(run.dir, "data", force=True, resume=False) is False
    assert not store.exists("data/x")  # --force removed it in the store too


def test_synth_then_featurize_by_uri_on_an_object_store(s3_root):
    """Data synth and featurize on an ``s3://`` root (below Ray): synth publishes its run,
    featurize takes the data run by its URI (downloaded, verified) and publishes the features."""
    import shutil

    from soundtrack.config import FeaturizeSection, SynthSection
    from soundtrack.data import shards as pipeline
    from soundtrack.stages.data import stage_featurize, stage_synth
    from soundtrack.storage import read_card

    data = stage_synth(SynthSection(n=2, seed=1), storage=s3_root,
                       workers=1, progress=False)
    store = Store(s3_root)
    assert store.is_published(f"data/{data.name}") and read_card(f"{s3_root}/data/{data.name}")["status"] == "finished"
    shutil.rmtree(data)  # only the store has it now
    feats = stage_featurize(f"{s3_root}/data/{data.name}", FeaturizeSection(size=32, rows_per_shard=2),
                            storage=s3_root, use_ray=False, progress=False, limit=2)
    assert (data / "manifest.parquet").is_file()  # the upstream was fetched to its staging copy
    card = read_card(f"{s3_root}/features/{feats.name}")
    assert card["status"] == "finished" and card["upstream"]["data"]["path"] == f"{s3_root}/data/{data.name}"
    assert store.is_published(f"features/{feats.name}")
    assert len(pipeline.read_shards(feats, columns=["clip_id"])) == 2

    # What a featurize actor on another node does (its node has neither the data nor the
    # run): it downloads the data run from the store, writes its shard into its own staging
    # copy and uploads it at once, the marker after the file.
    from soundtrack.data.manifest import read_manifest
    from soundtrack.distributed.featurize import ShardWriter
    from soundtrack.storage import staged

    section = FeaturizeSection(size=32, rows_per_shard=1)
    specs = pipeline.plan_shards(read_manifest(data), 1)
    shutil.rmtree(data)
    other = feats.with_name("other-node-run")
    run_uri = f"{s3_root}/features/{other.name}"
    writer = ShardWriter(str(other), dataclasses.asdict(section), run_uri=run_uri,
                         data_uri=f"{s3_root}/data/{data.name}")
    assert (data / "manifest.parquet").is_file() and staged(other).uri == run_uri
    out = writer(specs[0])
    assert out["n_out"] == 1
    names = sorted(store.list(f"features/{other.name}", recursive=True))
    assert names == ["done", "done/shard-00000.json", "shards", "shards/shard-00000.parquet"] or names == [
        "done/shard-00000.json", "shards/shard-00000.parquet"]
    shutil.rmtree(other)  # the driver's node: it pulls what the actors uploaded
    assert staged(other).pull() == "partial" and pipeline.completed_shards(other).keys() == {0}


def test_catalog_lists_versioned_entries_and_never_removes_a_leased_run(tmp_path, tiny_model):
    from soundtrack.stages.catalog import list_runs, remove_run
    from soundtrack.stages.registry import register

    storage = tmp_path / "runs"
    register("best", tiny_model, {}, {"metrics": {}}, storage=storage)
    (info,) = list_runs(storage, "registry")
    assert (info.name, info.status) == ("best", "registered")
    _foreign(Store(storage), "train/r1", age_s=1)
    Store(storage).write_json("train/r1/run.json", {"status": "running"})
    with pytest.raises(LeaseHeldError, match="leased by other-host"):
        remove_run("r1", storage)
    assert (storage / "train" / "r1").is_dir()
