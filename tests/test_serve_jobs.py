"""Jobs of long videos below Ray: the job store (local temp dir and S3), the cancellation
hook of the sampler on the tiny generator, and the job routes of the real ingress app with a
small stand-in for the generator deployment (the real Serve run is in test_serve.py).
"""

from __future__ import annotations

import asyncio
import io
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

HOST = "http://127.0.0.1:8000"  # TestClient's base URL: a loopback Host header


class Clock:
    """A wall clock the test moves by hand (epoch s)."""

    def __init__(self, t: float = 1_800_000_000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def _input_dir(tmp_path: Path, data: bytes = b"video bytes") -> Path:
    d = tmp_path / "in"
    d.mkdir(exist_ok=True)
    (d / "input").write_bytes(data)
    return d


@pytest.fixture(params=["local", "s3"])
def job_root(request, tmp_path):
    """A storage root for the jobs: a local temp dir, and an S3 bucket (the moto server)."""
    if request.param == "local":
        return str(tmp_path / "runs")
    return request.getfixturevalue("s3_root")


# ----------------------------------------------------------------------------- the store


def test_job_store_lifecycle(job_root, tmp_path):
    """create -> progress -> done -> result -> expired (410) -> swept (404), on a local root
    and on S3, with a clock moved by hand."""
    from soundtrack.serving.jobs import JOBS_DIR, JobError, JobStore
    from soundtrack.storage import Store

    clock = Clock()
    js = JobStore(job_root, clock=clock)
    job_id = js.new_id()
    assert len(job_id) == 32 and job_id != js.new_id()
    doc = js.create(job_id, _input_dir(tmp_path), {"seed": "3"}, "wav", "clip", ttl_s=100, owner="a")
    assert doc["state"] == "queued" and doc["attempt"] == 1
    raw = Store(job_root)
    assert raw.read_bytes(f"{JOBS_DIR}/{job_id}/input") == b"video bytes"  # the upload, as received
    assert raw.read_json(f"{JOBS_DIR}/{job_id}/job.json")["options"] == {"seed": "3"}
    st = js.status(job_id)
    assert st["state"] == "queued" and st["progress"] == {"windows_done": 0, "n_windows": None, "fraction": 0.0}
    assert st["created_at"].endswith("Z") and "owner" not in st and "options" not in st  # no internals
    # the generator's side: progress of attempt 1 (a record of another attempt is ignored)
    clock.t += 5
    js.update(job_id, 1, state="running", started_at=clock())
    js.write_progress(job_id, 1, 1, 3)
    st = js.status(job_id)
    assert st["state"] == "running" and st["progress"] == {"windows_done": 1, "n_windows": 3, "fraction": 0.3333}
    js.write_progress(job_id, 2, 2, 3)
    assert js.status(job_id)["progress"]["windows_done"] == 0  # not this attempt's
    js.write_progress(job_id, 1, 3, 3)
    js.write_result(job_id, "wav", b"RIFF....")
    clock.t += 5
    js.finish(job_id, 1, "done", ttl_s=100, seconds=4.2)
    st = js.status(job_id)
    assert st["state"] == "done" and st["progress"]["fraction"] == 1.0 and st["seconds"] == 4.2
    assert js.read_result(job_id, "wav") == b"RIFF...."
    # retention: 100 s after the end it answers 410, and the sweep removes it (then 404)
    clock.t += 99
    assert js.sweep(60, {}) == ([], [])
    clock.t += 1
    with pytest.raises(JobError) as info:
        js.status(job_id)
    assert (info.value.status, info.value.code, info.value.state) == (410, "job_expired", "done")
    assert js.sweep(60, {})[0] == [job_id]
    with pytest.raises(JobError) as info:
        js.status(job_id)
    assert info.value.status == 404
    assert not raw.exists(f"{JOBS_DIR}/{job_id}")


@pytest.mark.parametrize("bad", ["", "x", "0" * 31, "0" * 33, "A" * 32, "../" + "0" * 29, "0" * 16 + "/" + "0" * 15,
                                 "..", "%2e%2e", "0" * 31 + "\x00", "g" * 32, 5, None])
def test_bad_job_ids_are_404_before_any_storage_access(tmp_path, bad):
    from soundtrack.serving.jobs import JobError, JobStore, check_job_id

    js = JobStore(tmp_path / "runs")
    (tmp_path / "secret.json").write_text("{}")
    for call in (check_job_id, js.read, js.status, js.cancel_marked, js.delete, js.mark_cancelled):
        with pytest.raises(JobError) as info:
            call(bad)
        assert info.value.status == 404 and info.value.code == "no_such_job"
    assert not (tmp_path / "runs").exists()  # nothing was created for a bad id
    assert (tmp_path / "secret.json").exists()


def test_cancel_marker_claims_and_stop_check(tmp_path):
    """The cancel marker shows at once as ``cancelled``; a later claim supersedes an attempt
    (its writes are dropped); the stop hook reads the store at most every ``poll_s``."""
    from soundtrack.serving.jobs import JobStore

    clock = Clock()
    js = JobStore(tmp_path / "runs", clock=clock)
    job_id = js.new_id()
    js.create(job_id, _input_dir(tmp_path), {}, "mp4", "v", ttl_s=100, owner="a")
    stop = js.stop_check(job_id, 1, poll_s=0.2)
    assert stop() is False
    js.mark_cancelled(job_id)
    assert js.status(job_id)["state"] == "cancelled"  # while the generation winds down
    assert stop() is False  # within the poll interval: no read
    time.sleep(0.25)
    assert stop() is True and stop() is True
    # claims: attempt 2 taken once; attempt 1 then writes nothing and stops
    other = js.new_id()
    js.create(other, _input_dir(tmp_path), {}, "wav", "v", ttl_s=100, owner="a")
    stop1 = js.stop_check(other, 1, poll_s=0)
    assert not js.superseded(other, 1) and not stop1()
    assert js.claim(other, 2, "b") is True and js.claim(other, 2, "c") is False
    assert js.superseded(other, 1) and stop1()
    assert js.update(other, 1, state="running") is None and js.read(other)["state"] == "queued"
    assert js.update(other, 2, state="running", attempt=2)["state"] == "running"


def test_sweep_finds_orphans_and_removes_interrupted_creations(tmp_path):
    from soundtrack.serving.jobs import JOBS_DIR, JobStore

    clock = Clock()
    js = JobStore(tmp_path / "runs", clock=clock)
    alive, orphan = js.new_id(), js.new_id()
    for j in (alive, orphan):
        js.create(j, _input_dir(tmp_path), {}, "wav", "v", ttl_s=1000, owner="a")
    half = js.new_id()  # a POST interrupted between the upload and job.json
    (tmp_path / "runs" / JOBS_DIR / half).mkdir(parents=True)
    (tmp_path / "runs" / JOBS_DIR / half / "input").write_bytes(b"x")
    (tmp_path / "runs" / JOBS_DIR / "not-a-job").mkdir()  # never touched
    clock.t += 61
    js.update(alive, 1, heartbeat_at=clock())
    seen: dict[str, float] = {}
    removed, orphans = js.sweep(60, seen)
    assert removed == [] and orphans == [(orphan, 1)] and seen == {half: clock()}
    clock.t += 60
    assert js.sweep(60, seen)[0] == [] and half in seen  # a POST may still be storing it
    clock.t += 1
    removed, _ = js.sweep(60, seen)  # without job.json for more than job_stale_s: removed
    assert removed == [half] and seen == {}
    assert sorted(p.name for p in (tmp_path / "runs" / JOBS_DIR).iterdir()) == sorted([alive, orphan, "not-a-job"])


# ----------------------------------------------------------------------------- the cancellation hook


@pytest.fixture(scope="module")
def tiny():
    import torch

    torch.set_num_threads(1)
    from soundtrack.pipelines.generator import build_tiny_generator

    return build_tiny_generator(seed=0)


def _frames(n: int, size: int = 32) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, (n, size, size, 3), dtype=np.uint8)


def test_should_stop_stops_between_windows_and_steps_and_changes_nothing_otherwise(tiny):
    """A 25 s video (3 windows, 2 steps each): a hook that never fires leaves the waveform
    bit-identical to no hook; one that fires at its k-th call stops the sampler there: no
    further denoiser call runs (between the steps of window 1, between windows 1 and 2)."""
    from soundtrack.pipelines.sampler import GenerationCancelled

    frames = _frames(250)
    calls = {"forward": 0}
    handle = tiny.denoiser.register_forward_hook(lambda *a: calls.__setitem__("forward", calls["forward"] + 1))
    try:
        base = tiny.generate(frames, seed=1, num_steps=2)
        per_run = calls["forward"]
        assert per_run % 6 == 0  # 3 windows x 2 steps, the same number of denoiser calls each
        per_step = per_run // 6
        progress = []
        same = tiny.generate(frames, seed=1, num_steps=2, should_stop=lambda: False,
                             progress=lambda d, n: progress.append((d, n)))
        assert np.array_equal(base, same) and progress == [(3, 3)] and len(base) == 25 * 16000

        def stop_at(k):
            seen = []

            def hook():
                seen.append(calls["forward"])
                return len(seen) >= k

            calls["forward"] = 0
            with pytest.raises(GenerationCancelled, match="cancelled before"):
                tiny.generate(frames, seed=1, num_steps=2, should_stop=hook)
            return calls["forward"], len(seen)

        # hook calls: 1 before the group, then one before each step (w1 s1, w1 s2, w2 s1, ...)
        assert stop_at(1) == (0, 1)  # before anything
        assert stop_at(3) == (1 * per_step, 3)  # between step 1 and step 2 of window 1
        assert stop_at(4) == (2 * per_step, 4)  # window 1 denoised, window 2 not started
        assert stop_at(7) == (5 * per_step, 7)  # between the two steps of window 3
        # the model is not held after a stop: the next call runs and gives the same waveform
        assert np.array_equal(tiny.generate(frames, seed=1, num_steps=2), base)
    finally:
        handle.remove()


def test_should_stop_latency_with_a_job_store_marker(tiny, tmp_path):
    """The generator's hook from the job store: DELETE's marker written from another thread
    stops a running generation within a poll interval plus a denoising step."""
    from soundtrack.pipelines.sampler import GenerationCancelled
    from soundtrack.serving.jobs import JobStore

    js = JobStore(tmp_path / "runs")
    job_id = js.new_id()
    js.create(job_id, _input_dir(tmp_path), {}, "wav", "v", ttl_s=100, owner="a")
    stopped = {}

    def run():
        try:
            tiny.generate(_frames(250), seed=1, num_steps=40, should_stop=js.stop_check(job_id, 1))
        except GenerationCancelled:
            stopped["t"] = time.monotonic()

    th = threading.Thread(target=run)
    th.start()
    time.sleep(1.0)
    t0 = time.monotonic()
    js.mark_cancelled(job_id)
    th.join(30)
    assert "t" in stopped, "the generation ran to its end"
    latency = stopped["t"] - t0
    print(f"\nstop latency after the cancel marker: {latency:.3f} s (poll {js.stop_poll_s} s)")
    assert latency < 2.0


# ----------------------------------------------------------------------------- the routes


class _Handle:
    """What ``generator.<method>.remote(...)`` gives in Serve: an awaitable result."""

    def __init__(self, fn):
        self.fn = fn

    async def remote(self, *args):
        out = self.fn(*args)
        return await out if asyncio.iscoroutine(out) else out


class FakeGenerator:
    """``info``, ``generate`` (silence) and ``run_job``: silence after ``steps`` ticks of
    ``tick_s``, writing progress and honouring the job store's cancel marker like the real one."""

    def __init__(self, store_root, steps: int = 3, tick_s: float = 0.05):
        from soundtrack.serving.jobs import JobOutcome, JobStore
        from soundtrack.serving.options import GenerationOutput

        self.store = JobStore(store_root)
        self.runs: list[str] = []
        card = {"uri": "file:/srv/runs/m/model", "fps": 10.0, "sr": 16000, "frame_size": 32,
                "conditions": ["video", "music", "sfx"], "sampler": {"max_seconds": 720.0}, "clip_s": 10.24}

        async def run_job(req):
            self.runs.append(req.job_id)
            stop = self.store.stop_check(req.job_id, req.attempt, poll_s=0)
            for i in range(steps):
                if stop():
                    return JobOutcome("cancelled")
                await asyncio.sleep(tick_s)
                self.store.write_progress(req.job_id, req.attempt, i + 1, steps)
            return JobOutcome("done", np.zeros(len(req.frames) * 1600, np.float32), 16000, None, steps * tick_s, steps)

        self.info = _Handle(lambda: card)
        self.generate = _Handle(lambda job: GenerationOutput(np.zeros(len(job.frames) * 1600, np.float32), 16000))
        self.run_job = _Handle(run_job)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    from soundtrack.data import media

    d = tmp_path_factory.mktemp("job_media")
    frames = np.zeros((250, 32, 32, 3), np.uint8)
    frames[:, 8:16] = 200
    media.write_mp4(d / "long.mp4", frames, fps=10.0)  # 25 s: over the 6 s of the sync route
    media.write_mp4(d / "short.mp4", frames[:30], fps=10.0)
    return d


def _app(tmp_path, generator=None, **limits):
    from soundtrack.serving.ingress import SoundtrackService, create_api
    from soundtrack.serving.limits import ServeLimits

    root = str(tmp_path / "runs")
    gen = generator or FakeGenerator(root)
    lim = ServeLimits.from_dict({"max_duration_s": 6, "max_job_duration_s": 30, **limits})
    service = SoundtrackService(gen, "file:/srv/runs/m/model", lim, storage=root)
    return service, create_api(service), gen


def _submit(client, path: Path, data: dict | None = None):
    return client.post("/v1/jobs", files={"video": (path.name, path.read_bytes())}, data=data or {})


def _wait(client, url: str, states=("done", "failed", "cancelled"), timeout: float = 20.0) -> dict:
    t = time.monotonic()
    while time.monotonic() - t < timeout:
        st = client.get(url).json()
        if st["state"] in states:
            return st
        time.sleep(0.02)
    raise AssertionError(f"{url} still {st['state']} after {timeout} s")


def test_job_routes_submit_poll_result(tmp_path, videos):
    import soundfile as sf
    from starlette.testclient import TestClient

    service, app, gen = _app(tmp_path)
    with TestClient(app, base_url=HOST) as client:
        # the sync route refuses the 25 s video; the job route takes it
        r = client.post("/v1/soundtrack", files={"video": ("long.mp4", (videos / "long.mp4").read_bytes())})
        assert r.status_code == 422 and r.json()["error"] == "video_too_long"
        r = _submit(client, videos / "long.mp4", {"seed": "4", "num_steps": "2"})
        assert r.status_code == 202, r.text
        body = r.json()
        job_id = body["job_id"]
        assert body["state"] == "queued" and r.headers["location"] == f"/v1/jobs/{job_id}"
        assert body["links"] == {"self": f"/v1/jobs/{job_id}", "result": f"/v1/jobs/{job_id}/result",
                                 "cancel": f"/v1/jobs/{job_id}"}
        early = client.get(f"/v1/jobs/{job_id}/result")
        if early.status_code != 200:  # the fake may already be done; if not: 409 naming the state
            assert early.status_code == 409 and early.json()["state"] in ("queued", "running"), early.text
        st = _wait(client, f"/v1/jobs/{job_id}")
        assert st["state"] == "done" and st["progress"] == {"windows_done": 3, "n_windows": 3, "fraction": 1.0}, st
        assert st["expires_at"] > st["finished_at"] >= st["started_at"] >= st["created_at"]
        r = client.get(f"/v1/jobs/{job_id}/result")
        assert r.status_code == 200 and r.headers["content-type"] == "audio/wav"
        assert r.headers["content-disposition"] == 'attachment; filename="long.soundtrack.wav"'
        x, sr = sf.read(io.BytesIO(r.content))
        assert sr == 16000 and len(x) == 25 * 16000
        assert gen.runs == [job_id]
        # mp4 output: both results are stored, the route gives the mp4
        r = _submit(client, videos / "short.mp4", {"output": "mp4"})
        mp4_id = r.json()["job_id"]
        st = _wait(client, f"/v1/jobs/{mp4_id}")
        assert st["state"] == "done", st
        r = client.get(f"/v1/jobs/{mp4_id}/result")
        assert r.status_code == 200 and r.headers["content-type"] == "video/mp4" and r.content[4:8] == b"ftyp"
        assert service.jobs.store.read_result(mp4_id, "wav")[:4] == b"RIFF"
        # bad and unknown ids: 404 JSON on every route, never a path
        for bad in ("nope", "0" * 32, "..%2F..%2Fetc", job_id.upper()):
            for method, path in (("get", ""), ("get", "/result"), ("delete", "")):
                r = getattr(client, method)(f"/v1/jobs/{bad}{path}")
                assert r.status_code == 404, (bad, path, r.text)
                assert r.headers["content-type"] == "application/json"
        # DELETE of a finished job removes it
        r = client.delete(f"/v1/jobs/{job_id}")
        assert r.status_code == 200 and r.json() == {"job_id": job_id, "state": "deleted"}
        assert client.get(f"/v1/jobs/{job_id}").status_code == 404
        # the form's checks are the sync route's: a bad option is 422 naming it, no job stored
        r = _submit(client, videos / "short.mp4", {"num_steps": "0"})
        assert r.status_code == 422 and r.json()["field"] == "num_steps"
        assert client.get("/v1/health").json()["jobs"] == 0
    assert sorted(p.name for p in (tmp_path / "runs" / "serve_jobs").iterdir()) == [mp4_id]
    assert not list(Path(tempfile.gettempdir()).glob("soundtrack-upload-*"))
    assert not list(Path(tempfile.gettempdir()).glob("soundtrack-job-*"))


def test_job_routes_cancel_limits_and_expiry(tmp_path, videos):
    from starlette.testclient import TestClient

    root = str(tmp_path / "runs")
    gen = FakeGenerator(root, steps=400, tick_s=0.05)  # 20 s unless cancelled
    _, app, _ = _app(tmp_path, gen, max_jobs=1, job_ttl_s=1.0, max_job_duration_s=20, retry_after_s=4)
    with TestClient(app, base_url=HOST) as client:
        # longer than max_job_duration_s: 422 at the POST, before anything runs
        r = _submit(client, videos / "long.mp4")
        assert r.status_code == 422 and r.json()["error"] == "video_too_long" and r.json()["limit"] == 20
        r = _submit(client, videos / "short.mp4")
        job_id = r.json()["job_id"]
        _wait(client, f"/v1/jobs/{job_id}", states=("running",))
        # max_jobs=1: the next one is refused before its body is read
        r = _submit(client, videos / "short.mp4")
        assert r.status_code == 503 and r.headers["retry-after"] == "4" and r.json()["limit"] == 1
        assert client.get(f"/v1/jobs/{job_id}/result").status_code == 409
        t0 = time.monotonic()
        r = client.delete(f"/v1/jobs/{job_id}")
        assert r.status_code == 200 and r.json()["state"] == "cancelled"
        st = _wait(client, f"/v1/jobs/{job_id}", states=("cancelled",))
        r = client.get(f"/v1/jobs/{job_id}/result")
        assert r.status_code == 409 and r.json()["state"] == "cancelled"
        # the run ends (the place is free again) within a tick of the fake
        while client.get("/v1/health").json()["jobs"]:
            assert time.monotonic() - t0 < 2.0
            time.sleep(0.02)
        assert st["progress"]["windows_done"] < 400
        # job_ttl_s = 1 s after it ended: 410; a POST sweeps it away (404)
        time.sleep(1.1)
        r = client.get(f"/v1/jobs/{job_id}")
        assert r.status_code == 410 and r.json()["error"] == "job_expired"
        assert client.get(f"/v1/jobs/{job_id}/result").status_code == 410
        _submit(client, videos / "short.mp4", {"seed": "1"})  # sweeps (in the background)
        t = time.monotonic()
        while client.get(f"/v1/jobs/{job_id}").status_code != 404:
            assert time.monotonic() - t < 5
            time.sleep(0.05)


def test_orphaned_job_is_taken_over_by_another_replica(tmp_path, videos):
    """Two services on one store: the first stores a job and stops (its task cancelled, as a
    replica that goes away); the second's sweep finds its heartbeat stale, claims attempt 2
    and runs it to the end from the stored upload."""
    from starlette.testclient import TestClient

    root = str(tmp_path / "runs")
    gen = FakeGenerator(root, steps=400, tick_s=0.05)
    first, app1, _ = _app(tmp_path, gen, job_stale_s=0.6)
    with TestClient(app1, base_url=HOST) as c1:
        job_id = _submit(c1, videos / "short.mp4").json()["job_id"]
        _wait(c1, f"/v1/jobs/{job_id}", states=("running",))
        first.jobs.tasks[job_id].cancel()  # the replica is gone: no more heartbeats
        t = time.monotonic()
        while c1.get("/v1/health").json()["jobs"]:
            assert time.monotonic() - t < 5
            time.sleep(0.02)
    gen2 = FakeGenerator(root, steps=3, tick_s=0.01)
    second, app2, _ = _app(tmp_path, gen2, job_stale_s=0.6)
    with TestClient(app2, base_url=HOST) as c2:
        time.sleep(0.7)
        out = c2.portal.call(second.jobs.sweep)
        assert out["resumed"] == [job_id]
        st = _wait(c2, f"/v1/jobs/{job_id}")
        assert st["state"] == "done" and gen2.runs == [job_id], st
        assert second.jobs.store.read(job_id)["attempt"] == 2


def test_openapi_documents_the_job_routes(tmp_path):
    from starlette.testclient import TestClient

    from soundtrack.serving.options import SoundtrackOptions

    _, app, _ = _app(tmp_path)
    spec = TestClient(app, base_url=HOST).get("/openapi.json").json()
    post = spec["paths"]["/v1/jobs"]["post"]
    form = post["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert set(form["properties"]) == {"video", *SoundtrackOptions.model_fields}  # the sync route's form
    assert "Location" in post["responses"]["202"]["headers"] and "Retry-After" in post["responses"]["503"]["headers"]
    assert {"202", "413", "415", "422", "503"} <= set(post["responses"])
    job = spec["paths"]["/v1/jobs/{job_id}"]
    assert {"200", "404", "410"} <= set(job["get"]["responses"]) and {"200", "404"} <= set(job["delete"]["responses"])
    result = spec["paths"]["/v1/jobs/{job_id}/result"]["get"]["responses"]
    assert {"200", "404", "409", "410"} <= set(result) and set(result["200"]["content"]) == {"audio/wav", "video/mp4"}
    status = job["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert status["properties"]["state"]["enum"] == ["queued", "running", "done", "failed", "cancelled"]
