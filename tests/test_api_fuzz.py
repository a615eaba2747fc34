"""The fuzzer of tests/api_fuzz.py against a small FastAPI app with planted faults (no Ray).

The served fuzz run (tests/test_serve.py) passes when it finds nothing; this shows that
"nothing" means something: each kind of fault the run looks for is planted once and found,
with the request that caused it, and a fixed seed repeats the same cases.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest
from api_fuzz import fuzz_api, summary
from fastapi import FastAPI, Request  # module level: the routes' annotations are resolved from here
from fastapi.responses import JSONResponse

ERROR = {"type": "object", "properties": {"error": {"type": "string"}, "message": {"type": "string"}},
         "required": ["error", "message"]}


def _faulty_app():
    api = FastAPI(title="faulty", version="1")

    @api.get("/items/{item_id}", responses={200: {"description": "an item", "content": {"application/json": {
        "schema": {"type": "object", "properties": {"id": {"type": "string"}}, "required": ["id"]}}}},
        404: {"description": "none", "content": {"application/json": {"schema": ERROR}}}})
    async def item(item_id: str):
        if item_id == "0":
            return JSONResponse({"error": "missing"}, status_code=404)  # no "message": the schema requires it
        if len(item_id) > 3:
            return JSONResponse({"error": "teapot", "message": "undeclared"}, status_code=418)
        return {"id": item_id}

    @api.post("/upload", openapi_extra={"requestBody": {"required": True, "content": {"multipart/form-data": {
        "schema": {"type": "object", "required": ["file"], "properties": {
            "file": {"type": "string", "format": "binary"}, "n": {"type": "integer", "minimum": 0}}}}}}},
        responses={200: {"description": "ok"}})
    async def upload(request: Request):
        form = await request.form()
        n = int(form.get("n", 0))  # a non-number: ValueError, answered 500 by Starlette
        return {"n": n, "size": len(await form["file"].read()) if "file" in form else 0}

    @api.get("/busy", responses={503: {"description": "busy", "headers": {"Retry-After": {"schema": {
        "type": "integer"}}}, "content": {"application/json": {"schema": ERROR}}}})
    async def busy():
        return JSONResponse({"error": "busy", "message": "later"}, status_code=503, headers={"Retry-After": "1"})

    return api


@pytest.fixture(scope="module")
def faulty_url():
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(_faulty_app(), host="127.0.0.1", port=port, log_level="critical",
                                           lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=5)


def test_planted_faults_are_found_with_their_requests(faulty_url):
    report = fuzz_api(faulty_url, max_examples=30, max_seconds=20.0, seed=0, uploads={"file": [b"abc"]})
    print("\n" + summary(report))
    found = {(f["operation"], f["status"], f["title"]) for f in report["failures"]}
    assert ("POST /upload", 500, "Server error") in found
    assert ("GET /items/{item_id}", 418, "Undocumented status code") in found
    assert ("GET /items/{item_id}", 404, "Response violates schema") in found
    # A declared 503 with Retry-After is load shedding, not a fault (allow_busy); the rest of the app is fine.
    assert report["operations"]["GET /busy"]["busy"] >= 1
    assert not [f for f in report["failures"] if f["operation"] == "GET /busy"]
    assert all(f["request"].startswith("curl ") for f in report["failures"])
    assert report["seconds"] < 20


def test_a_fixed_seed_repeats_the_run_and_the_bounds_hold(faulty_url):
    a = fuzz_api(faulty_url, max_examples=10, max_seconds=20.0, seed=3, modes=("positive",))
    b = fuzz_api(faulty_url, max_examples=10, max_seconds=20.0, seed=3, modes=("positive",))
    assert [(op, s["statuses"]) for op, s in a["operations"].items()] == \
        [(op, s["statuses"]) for op, s in b["operations"].items()]
    assert all(s["cases"] <= 10 for s in a["operations"].values())
    c = fuzz_api(faulty_url, max_examples=1000, max_seconds=1.0, seed=0)
    # the budget stops the runs, not the 1000 examples (no wall-time assertion: the flag says it)
    assert c["operations"]["GET /items/{item_id}"]["out_of_time"], summary(c)
    assert c["operations"]["GET /items/{item_id}"]["cases"] < 1000


# ----------------------------------------------------------------------------- the ingress, without Ray


class _Handle:
    def __init__(self, fn):
        self.fn = fn

    async def remote(self, *args):
        return self.fn(*args)


class _SilentGenerator:
    """The generator deployment's ``info`` and ``generate`` (silence of the clip's length)."""

    def __init__(self):
        import numpy as np

        from soundtrack.serving.options import GenerationOutput

        card = {"uri": "file:/srv/runs/m/model", "fps": 10.0, "sr": 16000, "frame_size": 32,
                "conditions": ["video", "music", "sfx"]}
        self.info = _Handle(lambda: card)
        self.generate = _Handle(lambda job: GenerationOutput(np.zeros(len(job.frames) * 1600, np.float32), 16000))


@pytest.fixture(scope="module")
def short_mp4(tmp_path_factory) -> bytes:
    import numpy as np

    from soundtrack.data import media

    frames = np.zeros((10, 32, 32, 3), np.uint8)
    frames[:, 8:16] = 200
    path = tmp_path_factory.mktemp("fuzz_media") / "short.mp4"
    media.write_mp4(path, frames, fps=10.0)  # 1 s
    return path.read_bytes()


@pytest.fixture
def ingress_url():
    """``start(limits)``: the ingress app of a config (no job storage) under uvicorn on 127.0.0.1."""
    from soundtrack.serving.ingress import SoundtrackService, create_api
    from soundtrack.serving.limits import ServeLimits

    servers = []

    def start(limits: dict) -> str:
        import uvicorn

        service = SoundtrackService(_SilentGenerator(), "file:/srv/runs/m/model",
                                    ServeLimits.from_dict({"max_duration_s": 6, **limits}))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(create_api(service), host="127.0.0.1", port=port,
                                               log_level="critical", lifespan="off"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        servers.append((server, thread))
        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        return f"http://127.0.0.1:{port}"

    yield start
    for server, thread in servers:
        server.should_exit = True
        thread.join(timeout=5)


@pytest.mark.parametrize("limits, headers", [
    ({}, None),  # no job storage: the job routes answer 404, as their declarations must say
    ({"api_keys": {"fuzz-key-0123456789": 40}}, {"X-API-Key": "fuzz-key-0123456789"}),  # 429 once 40 are used
    ({"api_keys": {"fuzz-key-0123456789": None}}, None),  # no key sent: 401 on every route but /v1/health
], ids=["no-storage", "quota", "no-key"])
def test_ingress_configs_answer_as_their_openapi_says(ingress_url, short_mp4, limits, headers):
    """The ingress app in configurations the served test does not run (no job storage, API
    keys and quotas), fuzzed like it: the guard's refusals are declared on every operation."""
    url = ingress_url(limits)
    report = fuzz_api(url, max_examples=10, max_seconds=10.0, seed=0, headers=headers,
                      uploads={"video": [short_mp4]})
    print("\n" + summary(report))
    assert not report["failures"] and not report["schema_errors"], summary(report)
    statuses = {status for s in report["operations"].values() for status in s["statuses"]}
    if limits and headers is None:
        assert 401 in statuses
    elif limits:
        assert 429 in statuses
    else:
        assert report["operations"]["POST /v1/jobs"]["statuses"].get(404)


def test_routing_refusals_and_a_deleted_job_match_their_declarations(tmp_path):
    """What the fuzz cannot be relied on to send: a ``/`` in a job id (schemathesis keeps a path
    parameter to one segment; Starlette decodes ``%2F`` and then no route matches), another
    method, and the answer to deleting an ended job (met only when a job of the run ends in time)."""
    import jsonschema
    from starlette.testclient import TestClient

    from soundtrack.serving.ingress import SoundtrackService, create_api
    from soundtrack.serving.limits import ServeLimits

    service = SoundtrackService(_SilentGenerator(), "file:/srv/runs/m/model", ServeLimits(), storage=str(tmp_path))
    client = TestClient(create_api(service), base_url="http://127.0.0.1:8000")
    spec = client.get("/openapi.json").json()
    job = spec["paths"]["/v1/jobs/{job_id}"]
    for method in ("get", "delete"):
        r = client.request(method, "/v1/jobs/a%2Fb")
        assert r.status_code == 404, r.text
        jsonschema.validate(r.json(), job[method]["responses"]["404"]["content"]["application/json"]["schema"])
        assert r.json()["error"] == "not_found" and "/openapi.json" in r.json()["message"]
    r = client.put("/v1/jobs/abc")
    assert r.status_code == 405 and r.json()["error"] == "method_not_allowed" and r.headers["allow"], r.text
    deleted = job["delete"]["responses"]["200"]["content"]["application/json"]["schema"]
    jsonschema.validate({"job_id": "0" * 32, "state": "deleted"}, deleted)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"job_id": "0" * 32, "state": "gone"}, deleted)
    # The guard's refusals are declared on every operation (e.g. a GET answers 421 to another Host).
    assert all({"400", "421"} <= set(op["responses"]) for ops in spec["paths"].values() for op in ops.values())
    assert "401" not in spec["paths"]["/v1/health"]["get"]["responses"]  # exempt from API keys
