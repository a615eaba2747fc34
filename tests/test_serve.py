"""The Ray Serve application for real: one local Ray, ``serve.run`` on 127.0.0.1, real HTTP.

The served model is an untrained tiny generator built and saved by the test (its sound is
noise; the plumbing is what is tested). The deployment is configured small on purpose
(upload limit 4 MiB, 6 s videos, one generator replica with a queue of one) so that every
refusal can be provoked cheaply. After each refusal the service must go on answering.
"""

from __future__ import annotations

import io
import json
import os
import select
import socket
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from media_factory import mpegts_without_video_frames

pytestmark = [pytest.mark.slow, pytest.mark.integration]

APP_LIMIT = 4 * 2**20  # the ingress' max_upload_bytes
PROXY_LIMIT = 2 * APP_LIMIT  # the proxy middleware's limit (larger, so both layers can be seen)
MAX_STEPS = 50


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _moving_square(n: int, size: int = 64) -> np.ndarray:
    frames = np.zeros((n, size, size, 3), np.uint8)
    frames[:] = (20, 30, 60)
    for i in range(n):
        x = int((size - 12) * abs(np.sin(i / 6.0)))
        frames[i, 20:32, x : x + 12] = (250, 200, 40)
    return frames


def _serve_processes() -> dict[str, "object"]:
    """The HTTP proxy and the replicas of this test's Ray (children of this process's raylet)."""
    import psutil

    found = {}
    for p in psutil.Process().children(recursive=True):
        try:
            title = (p.cmdline() or [""])[0]
        except psutil.Error:
            continue
        if title.startswith("ray::ProxyActor"):
            found["proxy"] = p
        elif title.startswith("ray::ServeReplica:soundtrack:SoundtrackIngress"):
            found["ingress"] = p
        elif title.startswith("ray::ServeReplica:soundtrack:SoundtrackGenerator"):
            found["generator"] = p
    return found


def _rss_mib(procs: dict) -> dict[str, float]:
    return {k: p.memory_info().rss / 2**20 for k, p in procs.items()}


def _generator_stops(gen, t0: float, after: str, within_s: float = 2.0) -> float:
    """Waits until the generator replica has no generation in progress, at most ``within_s``
    after ``t0`` (what stopped it: ``after``), and checks that its busy time then stays put.

    Returns:
        seconds from ``t0`` to the stop.
    """
    while gen.stats.remote().result()["generating"]:
        assert time.monotonic() - t0 < within_s, f"the generator still works {within_s:g} s after {after}"
        time.sleep(0.05)
    latency = time.monotonic() - t0
    busy = gen.stats.remote().result()["busy_s"]
    time.sleep(1.0)
    assert gen.stats.remote().result()["busy_s"] == busy  # no work goes on unseen
    return latency


@pytest.fixture(scope="module")
def media_files(tmp_path_factory):
    """Real inputs: a silent mp4, a long mp4, a stream without frames, an audio file, junk."""
    import soundfile as sf

    from soundtrack.data import media

    d = tmp_path_factory.mktemp("serve_media")
    media.write_mp4(d / "clip.mp4", _moving_square(30), fps=10.0)  # 3.0 s, no audio track
    media.write_mp4(d / "long.mp4", _moving_square(80, 16), fps=10.0)  # 8.0 s > the 6 s limit
    mpegts_without_video_frames(d / "noframes.ts")
    sf.write(d / "tone.wav", 0.1 * np.sin(np.arange(16000) / 5.0).astype(np.float32), 16000)
    (d / "notes.mp4").write_text("these are not video bytes\n" * 50)
    from PIL import Image

    Image.new("RGB", (32, 32), (200, 10, 10)).save(d / "still.png")
    return d


@pytest.fixture(scope="module")
def served(tmp_path_factory, media_files):
    """A real Serve application on a free 127.0.0.1 port; yields (url, port, model_dir)."""
    import torch

    torch.set_num_threads(1)
    from soundtrack.distributed.cluster import init_ray
    from soundtrack.pipelines.generator import build_tiny_generator
    from soundtrack.serving import proxy
    from soundtrack.serving.app import build_app
    from soundtrack.serving.limits import GENERATOR_NAME

    root = tmp_path_factory.mktemp("serve_model")
    gen = build_tiny_generator(root / "model", seed=0)
    # The decoder's output at a trained model's level (peaks < 0.5): the raw untrained one
    # reaches ~1e7 before the [-1, 1] clip, where a batch's 1e-5 rounding flips samples at
    # zero crossings by full scale (tests/test_batched_generation.py says more).
    with torch.no_grad():
        gen.vae.decoder.conv_out.weight.mul_(0.15)
        gen.vae.decoder.conv_out.bias.mul_(0.15)
    gen.save(root / "model")
    # The proxy reads its middlewares from the environment of the Ray it runs in.
    os.environ[proxy.PROXY_CALLBACK_ENV] = proxy.PROXY_CALLBACK
    os.environ[proxy.MAX_UPLOAD_ENV] = str(PROXY_LIMIT)
    import ray
    from ray import serve

    if ray.is_initialized():
        ray.shutdown()
    # Prometheus (test_prometheus_metrics_...): replicas report every second, not every 10 s
    os.environ["RAY_metrics_report_interval_ms"] = "1000"
    init_ray(num_cpus=2, metrics_export_port=_free_port())
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port, "request_timeout_s": 60})
    app = build_app({
        "model_uri": f"file:{root / 'model'}",
        "storage": str(root),
        "max_batch_size": 2,
        "batch_wait_timeout_s": 1.0,
        "limits": {"max_upload_bytes": APP_LIMIT, "max_duration_s": 6, "max_pending": 6, "max_steps": MAX_STEPS,
                   "retry_after_s": 3},
        # A tiny queue: one replica, two requests in progress, one waiting.
        "deployment_options": {GENERATOR_NAME: {"num_replicas": 1, "max_ongoing_requests": 2,
                                                "max_queued_requests": 1}},
    })
    serve.run(app, name="soundtrack", route_prefix="/")
    try:
        yield f"http://127.0.0.1:{port}", port, root / "model"
    finally:
        serve.shutdown()
        ray.shutdown()
        for k in (proxy.PROXY_CALLBACK_ENV, proxy.MAX_UPLOAD_ENV, "RAY_metrics_report_interval_ms"):
            os.environ.pop(k, None)


def _post(url, path: Path | None = None, data: dict | None = None, timeout: float = 120, filename: str | None = None,
          **kw):
    import requests

    files = {"video": (filename or path.name, path.read_bytes())} if path is not None else None
    return requests.post(url + "/v1/soundtrack", files=files, data=data or {}, timeout=timeout, **kw)


def _wav(content: bytes):
    import soundfile as sf

    x, sr = sf.read(io.BytesIO(content), dtype="int16")
    return x, sr


# ----------------------------------------------------------------------------- good requests


def test_wav_for_a_silent_mp4(served, media_files, tmp_path):
    from soundtrack.data import media
    from soundtrack.pipelines.generator import SoundtrackGenerator

    url, _, model_dir = served
    clip = media_files / "clip.mp4"
    assert not media.probe(clip).has_audio  # a video without a soundtrack is the normal input
    r = _post(url, clip, {"seed": "3", "num_steps": "2", "guidance_scale": "2.0", "weight_video": "1", "weight_music": "0.5",
                          "weight_sfx": "0.5"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "audio/wav"
    assert r.headers["x-soundtrack-seed"] == "3" and "clip.soundtrack.wav" in r.headers["content-disposition"]
    x, sr = _wav(r.content)
    assert sr == 16000 and x.ndim == 1 and len(x) == 48000  # 30 frames at 10 fps = 3.0 s
    # The service's answer is exactly what the library writes for the same video, seed and options.
    gen = SoundtrackGenerator.load(model_dir)
    gen.generate_file(clip, tmp_path / "local.wav", seed=3, num_steps=2, guidance_scale=2.0,
                      weights={"video": 1.0, "music": 0.5, "sfx": 0.5})
    local, _ = _wav((tmp_path / "local.wav").read_bytes())
    assert np.abs(local.astype(int) - x.astype(int)).max() <= 1
    # Same request again: same soundtrack.
    again = _post(url, clip, {"seed": "3", "num_steps": "2", "guidance_scale": "2.0", "weight_video": "1",
                              "weight_music": "0.5", "weight_sfx": "0.5"})
    assert again.status_code == 200 and again.content == r.content


def test_mp4_output_carries_the_new_track(served, media_files, tmp_path):
    from soundtrack.data import media

    url, _, _ = served
    r = _post(url, media_files / "clip.mp4", {"seed": "1", "num_steps": "2", "output": "mp4"}, filename="été 夏.mp4")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "video/mp4"
    assert r.headers["content-disposition"] == 'attachment; filename="_t___.soundtrack.mp4"'  # ASCII only
    out = tmp_path / "out.mp4"
    out.write_bytes(r.content)
    info = media.probe(out)
    assert info.has_video and info.has_audio and (info.width, info.height) == (64, 64)
    audio = media.read_audio(out)
    assert abs(len(audio) / 16000 - 3.0) < 0.2 and np.isfinite(audio).all()
    assert media.read_frames(out).shape[0] == 30


def test_concurrent_requests_are_batched_without_changing_outputs(served, media_files):
    """Two requests sent together share one ``@serve.batch`` call, go through ONE denoising
    loop, and give what they give alone within ``BATCH_TOLERANCE`` (the sampler's contract;
    the 16-bit WAV adds up to 2 LSB), byte for byte when not batched.

    Whether two concurrent requests reach the generator within the batch window
    (``batch_wait_timeout_s`` = 1 s here) depends on the scheduler: on a loaded 2-core
    machine the ingress can decode one upload long after the other, and Serve's router
    (cached queue lengths) can answer one of the pair with 503 + Retry-After. So the pair
    is sent up to six times and at least one pair must be batched; every 200 reply,
    batched or not, must equal the request's answer alone.
    """
    from soundtrack.pipelines.sampler import BATCH_TOLERANCE

    url, _, _ = served
    clip = media_files / "clip.mp4"
    alone = {s: _post(url, clip, {"seed": str(s), "num_steps": "2"}) for s in (5, 6)}
    for s in (5, 6):
        assert alone[s].status_code == 200 and alone[s].headers["x-soundtrack-batch-size"] == "1"
    assert alone[5].content != alone[6].content
    sizes = []
    for _ in range(6):
        with ThreadPoolExecutor(2) as ex:
            together = dict(zip((5, 6), ex.map(lambda s: _post(url, clip, {"seed": str(s), "num_steps": "2"}), (5, 6))))
        if any(together[s].status_code == 503 for s in (5, 6)):
            # Serve's router works from cached replica queue lengths: on a loaded machine it
            # can still count the previous requests and refuse one of the pair with the
            # documented backpressure answer. A client retries after Retry-After; so do we.
            assert all(together[s].status_code in (200, 503) for s in (5, 6)), [together[s].text for s in (5, 6)]
            assert all(together[s].headers.get("retry-after") for s in (5, 6) if together[s].status_code == 503)
            sizes.append(("503", "503"))
            time.sleep(2)
            continue
        batch = tuple(together[s].headers.get("x-soundtrack-batch-size") for s in (5, 6))
        for s in (5, 6):
            assert together[s].status_code == 200, together[s].text
            (got, _), (want, _) = _wav(together[s].content), _wav(alone[s].content)
            if batch == ("1", "1"):  # not batched: the very same computation
                assert together[s].content == alone[s].content
            else:  # one denoising loop over both: equal within the sampler's stated contract
                diff = np.abs(got.astype(np.int32) - want.astype(np.int32)).max()  # 16-bit samples
                assert got.shape == want.shape and diff <= BATCH_TOLERANCE * 32768 + 2, diff
        sizes.append(batch)
        if sizes[-1] == ("2", "2"):  # one @serve.batch call answered both
            break
    assert sizes[-1] == ("2", "2"), f"no concurrent pair was batched; batch sizes per attempt: {sizes}"
    assert all(set(p) <= {"1", "2"} and p.count("2") in (0, 2) for p in sizes if p != ("503", "503")), sizes


# ----------------------------------------------------------------------------- metadata


def test_health_and_model_card(served):
    import requests

    url, _, model_dir = served
    h = requests.get(url + "/v1/health", timeout=10).json()
    # no absolute path leaves the service: the URI's directory by its last component
    assert h["status"] == "ok" and h["model_uri"] == f"file:{model_dir.name}" and str(model_dir) not in json.dumps(h)
    card = requests.get(url + "/v1/model", timeout=10).json()
    assert str(model_dir.parent) not in json.dumps(card) and "directory" not in card
    assert card["card"]["name"] == "tiny-untrained" and card["card"]["trained"] is False
    assert card["sr"] == 16000 and card["fps"] == 10.0 and card["conditions"] == ["video", "music", "sfx"]
    assert card["noise_schedule"]["beta_schedule"] == "linear" and card["noise_schedule"]["num_train_timesteps"] == 1000
    assert card["uri"] == f"file:{model_dir.name}" and card["batching"]["max_batch_size"] == 2


def test_openapi_documents_the_endpoints(served):
    import requests

    from soundtrack.serving.options import SoundtrackOptions

    url, _, _ = served
    spec = requests.get(url + "/openapi.json", timeout=10).json()
    assert {"get"} <= set(spec["paths"]["/v1/health"]) and {"get"} <= set(spec["paths"]["/v1/model"])
    post = spec["paths"]["/v1/soundtrack"]["post"]
    form = post["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert form["required"] == ["video"] and form["properties"]["video"]["format"] == "binary"
    assert set(form["properties"]) == {"video", *SoundtrackOptions.model_fields}  # documented == accepted
    assert form["properties"]["num_steps"]["maximum"] == MAX_STEPS
    assert form["properties"]["guidance_scale"]["maximum"] == 30 and form["properties"]["output"]["enum"] == ["wav", "mp4"]
    assert set(post["responses"]["200"]["content"]) == {"audio/wav", "video/mp4"}
    for code in ("400", "413", "415", "422", "503"):
        assert "application/json" in post["responses"][code]["content"]
    assert "Retry-After" in post["responses"]["503"]["headers"]


# ----------------------------------------------------------------------------- refusals


def _raw_request(port: int, headers: str, body_first: bytes = b"", stream_total: int = 0, chunked: bool = False,
                 timeout: float = 10.0) -> tuple[bytes, int, float]:
    """Sends a request by hand; streams up to ``stream_total`` bytes of body (1 MiB chunks)
    while watching for a reply, and stops sending as soon as one arrives.

    Returns:
        (the reply's first bytes, body bytes sent, seconds until the reply).
    """
    s = socket.create_connection(("127.0.0.1", port))
    t0 = time.time()
    sent = 0

    def frame(b: bytes) -> bytes:
        return f"{len(b):x}\r\n".encode() + b + b"\r\n" if chunked else b

    reply = b""
    try:
        s.sendall(headers.encode())
        if body_first:
            s.sendall(frame(body_first))
            sent += len(body_first)
        chunk = b"\0" * 2**20
        while sent < stream_total and time.time() - t0 < timeout:
            r, w, _ = select.select([s], [s], [], 1.0)
            if r:
                break
            if w:
                s.sendall(frame(chunk))
                sent += len(chunk)
        s.settimeout(max(timeout - (time.time() - t0), 1.0))
        while not _complete(reply):
            part = s.recv(65536)
            if not part:
                break
            reply += part
    except (BrokenPipeError, ConnectionResetError):
        s.settimeout(2.0)
        try:
            reply += s.recv(65536)
        except OSError:
            pass
    finally:
        s.close()
    return reply, sent, time.time() - t0


def _complete(reply: bytes) -> bool:
    """Whether ``reply`` holds a whole HTTP response (headers and Content-Length bytes of body)."""
    if b"\r\n\r\n" not in reply:
        return False
    head, body = reply.split(b"\r\n\r\n", 1)
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            return len(body) >= int(v)
    return True


def _json_body(reply: bytes) -> dict:
    return json.loads(reply.split(b"\r\n\r\n", 1)[1])


def _multipart_head(boundary: str = "XbOuNdArY") -> tuple[str, bytes]:
    part = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"video\"; filename=\"big.mp4\"\r\n"
            "Content-Type: video/mp4\r\n\r\n").encode()
    return f"multipart/form-data; boundary={boundary}", part


def _status(reply: bytes) -> int:
    return int(reply.split(b" ", 2)[1]) if reply.startswith(b"HTTP/1.1 ") else -1


def test_413_declared_length_is_refused_before_the_body_is_read(served):
    _, port, _ = served
    ctype, part = _multipart_head()
    # 200 MB declared, 64 KiB sent: the reply comes without the server waiting for the body.
    head = (f"POST /v1/soundtrack HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {200 * 2**20}\r\n\r\n")
    reply, sent, secs = _raw_request(port, head, part + b"\0" * 65536)
    assert _status(reply) == 413 and secs < 5
    assert sent < 100_000
    body = _json_body(reply)  # refused by the proxy's middleware, before Serve reads the body
    assert body["error"] == "upload_too_large" and body["limit"] == PROXY_LIMIT
    # Declared just over the ingress' limit (the proxy's is higher): the ingress refuses on the header.
    head = (f"POST /v1/soundtrack HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {APP_LIMIT + 2**20}\r\n\r\n")
    reply, sent, secs = _raw_request(port, head, part)
    assert _status(reply) == 413 and secs < 5
    body = _json_body(reply)
    assert body["error"] == "upload_too_large" and body["limit"] == APP_LIMIT
    assert f"declares {APP_LIMIT + 2**20} bytes" in body["message"]


def test_oversized_uploads_do_not_grow_proxy_or_replica_memory(served, media_files):
    _, port, _ = served
    procs = _serve_processes()
    assert set(procs) == {"proxy", "ingress", "generator"}
    ctype, part = _multipart_head()
    before = _rss_mib(procs)
    # 200 MB declared and streamed as fast as the server takes it.
    head = (f"POST /v1/soundtrack HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {200 * 2**20}\r\n\r\n")
    reply, sent, secs = _raw_request(port, head, part, stream_total=200 * 2**20)
    assert _status(reply) == 413 and sent < 100 * 2**20, (reply[:200], sent)
    # 200 MB streamed chunked, with no length: cut off at the limit while streaming.
    head = (f"POST /v1/soundtrack HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {ctype}\r\n"
            "Transfer-Encoding: chunked\r\n\r\n")
    reply, sent_chunked, secs = _raw_request(port, head, part, stream_total=200 * 2**20, chunked=True)
    assert _status(reply) == 413 and sent_chunked < 100 * 2**20, (reply[:200], sent_chunked)
    time.sleep(1.0)
    after = _rss_mib(procs)
    growth = {k: after[k] - before[k] for k in before}
    print(f"\noversized uploads: sent {sent / 2**20:.1f} MiB (declared) and {sent_chunked / 2**20:.1f} MiB (chunked) "
          f"of 200 MiB each; RSS growth MiB {growth}")
    # Bounded by the limits (4 MiB ingress, 8 MiB proxy), far below the 400 MB offered.
    assert all(g < 40 for g in growth.values()), (growth, before, after)
    # And the service still answers.
    r = _post(served[0], media_files / "clip.mp4", {"num_steps": "2"})
    assert r.status_code == 200


@pytest.mark.parametrize("name, code, error", [
    ("notes.mp4", 415, "not_a_video"),
    ("tone.wav", 415, "not_a_video"),
    ("still.png", 415, "not_a_video"),
    ("noframes.ts", 422, "no_frames"),
    ("long.mp4", 422, "video_too_long"),
])
def test_bad_files_get_their_status(served, media_files, name, code, error):
    url = served[0]
    r = _post(url, media_files / name, {"num_steps": "2"})
    assert r.status_code == code, r.text
    body = r.json()
    assert body["error"] == error and body["field"] == "video"
    if error == "video_too_long":
        assert body["limit"] == 6 and "6 s" in body["message"]
    assert _post(url, media_files / "clip.mp4", {"num_steps": "2"}).status_code == 200


def test_not_multipart_and_missing_video(served):
    import requests

    url = served[0]
    r = requests.post(url + "/v1/soundtrack", json={"seed": 1}, timeout=30)
    assert r.status_code == 415 and r.json()["error"] == "unsupported_media_type"
    r = requests.post(url + "/v1/soundtrack", files={"seed": (None, "1")}, timeout=30)
    assert r.status_code == 422 and r.json()["field"] == "video"
    r = requests.post(url + "/v1/soundtrack", files={"video": ("empty.mp4", b"")}, timeout=30)
    assert r.status_code == 415 and "empty" in r.json()["message"]


@pytest.mark.parametrize("data, field, words", [
    ({"guidance": "3"}, "guidance", "unknown form field"),
    ({"guidance_scale": "99"}, "guidance_scale", "guidance_scale must be a finite number in [0, 30]"),
    ({"guidance_scale": "nan"}, "guidance_scale", "finite"),
    ({"num_steps": "0"}, "num_steps", "num_steps must be an integer >= 1, got 0"),
    ({"num_steps": str(MAX_STEPS + 1)}, "num_steps", f"at most {MAX_STEPS}"),
    ({"num_steps": "2.5"}, "num_steps", "integer"),
    ({"seed": "-1"}, "seed", "greater than or equal to 0"),
    ({"weight_music": "11"}, "weight_music", "weights['music'] must be a finite number in [0, 10]"),
    ({"weight_video": "0", "weight_sfx": "0"}, "weight_video", "all be 0"),
    ({"weight_text": "1"}, "weight_text", "no 'text' condition"),
    ({"prompt": "calm piano"}, "prompt", "without text conditioning"),
    ({"output": "flac"}, "output", "'wav' or 'mp4'"),
])
def test_bad_options_get_422_naming_the_field(served, media_files, data, field, words):
    r = _post(served[0], media_files / "clip.mp4", data)
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["field"] == field and words in body["message"], body


def test_full_queue_gets_503_with_retry_after(served, media_files):
    url = served[0]
    clip = media_files / "clip.mp4"
    with ThreadPoolExecutor(10) as ex:
        replies = list(ex.map(lambda s: _post(url, clip, {"seed": str(s), "num_steps": "12"}), range(10)))
    codes = [r.status_code for r in replies]
    assert set(codes) <= {200, 503} and codes.count(200) >= 1 and codes.count(503) >= 1, codes
    messages = set()
    for r in replies:
        if r.status_code == 503:
            assert int(r.headers["retry-after"]) >= 1
            body = r.json()
            assert body["error"] == "busy"
            messages.add("generator" if "generator's queue" in body["message"] else "ingress")
    # Both guards fired: the ingress' in-flight counter and Serve's max_queued_requests.
    assert messages == {"generator", "ingress"}, messages
    assert _post(url, clip, {"num_steps": "2"}).status_code == 200


# ----------------------------------------------------------------------------- jobs


def _job_poll(job_url: str, until, timeout: float = 60.0) -> list[dict]:
    """GETs a job every 50 ms until ``until(status)``; returns every status seen."""
    import requests

    seen, t = [], time.monotonic()
    while time.monotonic() - t < timeout:
        seen.append(requests.get(job_url, timeout=10).json())
        if until(seen[-1]):
            return seen
        time.sleep(0.05)
    raise AssertionError(f"job still {seen[-1]['state']} after {timeout} s: {seen[-1]}")


def test_job_for_a_long_video_goes_queued_running_done(served, tmp_path):
    """A 25 s video (over the 6 s of POST /v1/soundtrack; 3 windows) as a job: 202 + Location,
    queued -> running -> done, progress to 3/3 windows, and the result is the library's WAV."""
    import requests

    from soundtrack.data import media
    from soundtrack.pipelines.generator import SoundtrackGenerator

    url, _, model_dir = served
    video = tmp_path / "long25.mp4"
    media.write_mp4(video, _moving_square(250), fps=10.0)
    r = requests.post(url + "/v1/jobs", files={"video": ("long25.mp4", video.read_bytes())},
                      data={"seed": "2", "num_steps": "2"}, timeout=60)
    assert r.status_code == 202, r.text
    job_url = url + r.headers["location"]
    seen = [r.json()] + _job_poll(job_url, lambda st: st["state"] not in ("queued", "running"))
    states = [st["state"] for st in seen]
    assert states[0] == "queued" and "running" in states and states[-1] == "done", states
    assert states == sorted(states, key=["queued", "running", "done"].index)  # never back
    assert seen[-1]["progress"] == {"windows_done": 3, "n_windows": 3, "fraction": 1.0}
    res = requests.get(url + seen[-1]["links"]["result"], timeout=30)
    assert res.status_code == 200 and res.headers["content-type"] == "audio/wav"
    x, sr = _wav(res.content)
    assert sr == 16000 and len(x) == 25 * 16000  # the video's length
    local = SoundtrackGenerator.load(model_dir).generate_file(video, tmp_path / "local.wav", seed=2, num_steps=2)
    want, _ = _wav(local.out_path.read_bytes())
    assert np.abs(want.astype(int) - x.astype(int)).max() <= 1  # what `soundtrack generate` writes


def test_cancelled_job_stops_the_generator_and_the_service_goes_on(served, media_files, tmp_path):
    """DELETE of a running job: answered at once with state cancelled; the generator's
    busy_s stops growing within 2 s (the should_stop hook between denoising steps), the
    result is 409, and a synchronous request right after succeeds."""
    import requests
    from ray import serve

    from soundtrack.data import media
    from soundtrack.serving.limits import GENERATOR_NAME

    url = served[0]
    gen = serve.get_deployment_handle(GENERATOR_NAME, app_name="soundtrack")
    video = tmp_path / "long25.mp4"
    media.write_mp4(video, _moving_square(250), fps=10.0)
    r = requests.post(url + "/v1/jobs", files={"video": ("long25.mp4", video.read_bytes())},
                      data={"num_steps": str(MAX_STEPS)}, timeout=60)  # 3 x 50 steps: far longer than the test
    assert r.status_code == 202, r.text
    job_url = url + r.headers["location"]
    _job_poll(job_url, lambda st: st["progress"]["n_windows"] is not None)  # the generator has started it
    time.sleep(0.5)
    before = gen.stats.remote().result()
    assert before["generating"] == 1 and before["busy_s"] > 0
    t0 = time.monotonic()
    r = requests.delete(job_url, timeout=10)
    assert r.status_code == 200 and r.json()["state"] == "cancelled", r.text
    latency = _generator_stops(gen, t0, "the DELETE")  # and busy_s stays put a second later
    after = gen.stats.remote().result()
    print(f"\njob cancel: the generator stopped {latency:.2f} s after the DELETE; busy_s {before['busy_s']:.2f} -> "
          f"{after['busy_s']:.2f} s; jobs ended {after['jobs']}")
    assert after["jobs"]["cancelled"] >= 1
    st = _job_poll(job_url, lambda st: st["state"] == "cancelled", timeout=10)[-1]
    assert st["progress"]["windows_done"] < 3
    r = requests.get(url + st["links"]["result"], timeout=10)
    assert r.status_code == 409 and r.json()["state"] == "cancelled"
    assert _post(url, media_files / "clip.mp4", {"num_steps": "2"}).status_code == 200


# ----------------------------------------------------------------------------- the web page


def _runs_for_the_page(root: Path) -> None:
    """A search, a bench and a registry entry in the served storage root, in the formats their
    stages write (the entry by the registry's own register): the
    search's trials.csv and plots by the tune stage's own report writer, the bench's
    summary.json as the bench writes it (the numbers are fixed here: test_tune and test_bench
    read their real runs through the same /v1/runs code, soundtrack.serving.overview)."""
    import pandas as pd
    from optuna.distributions import CategoricalDistribution, FloatDistribution

    from soundtrack.stages.registry import register
    from soundtrack.tuning.report import write_report

    run = root / "tune" / "page-search-1a2b3c4d"
    run.mkdir(parents=True)
    df = pd.DataFrame({"order": [1, 2, 3], "trial_id": ["t0", "t1", "t2"], "status": ["done"] * 3,
                       "param_guidance_scale": [2.5, 4.0, 6.5], "param_window_k": [8, 4, 4],
                       "score": [0.91, 1.12, 1.05], "clips": [4, 4, 2], "complete": [True, True, False],
                       "time_s": [10.0, 11.5, 6.0]})
    write_report(df, run, {"guidance_scale": FloatDistribution(1.0, 10.0),
                           "window_k": CategoricalDistribution([4, 8])}, "sampling")
    (run / "run.json").write_text(json.dumps({"stage": "tune", "name": run.name, "status": "finished",
                                              "started_at": "2026-12-02T10:00:00+0000",
                                              "finished_at": "2026-12-02T10:05:00+0000", "host": "secret-host",
                                              "summary": {"best": {"score": 1.12, "trial_id": "t1"}}}))
    register("page-best", root / "model", {"guidance_scale": 4.0, "num_steps": 20},
             {"purpose": "the web page's test"}, storage=str(root))
    bench = root / "bench" / "page-bench"
    bench.mkdir(parents=True)
    stat = lambda m, lo, hi: {"mean": m, "ci95": [lo, hi], "n": 4, "clips": 4}  # noqa: E731
    (bench / "summary.json").write_text(json.dumps({"bench": "page-bench", "clips": 4, "seeds": [0], "methods": {
        "ground_truth": {"f1": stat(0.65, 0.56, 0.71), "beat_f1": stat(0.95, 0.89, 0.99)},
        "tuned": {"f1": stat(0.69, 0.61, 0.76), "beat_f1": stat(0.88, 0.78, 0.95)}}}))


def test_web_page_generates_plays_cancels_and_browses_runs(served, media_files, tmp_path):
    """The page in a real headless chromium (selenium): upload a real mp4 through the file
    input, set the controls built from the OpenAPI description, wait for the job; the page
    decodes the returned WAV with Web Audio (its length and RMS checked here against the
    service's own WAV), plays it and the muxed MP4, and draws the mel-spectrogram with the
    rhythm curve and beats; Cancel on a long job stops the generator within 2 s; the runs view
    lists a search with its trials and plots and a bench table. Screenshots: test-artifacts/."""
    import requests
    from browser import console, have_browser, screenshot, start_browser, wait_for
    from ray import serve
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    from soundtrack.data import media
    from soundtrack.serving.limits import GENERATOR_NAME

    if not have_browser():  # `make test` installs them (make browser); a bare pytest may lack them
        pytest.skip("chromium / chromedriver not installed: run `make browser`")
    url, _, model_dir = served
    _runs_for_the_page(model_dir.parent)
    long_video = tmp_path / "long25.mp4"
    media.write_mp4(long_video, _moving_square(250), fps=10.0)
    gen = serve.get_deployment_handle(GENERATOR_NAME, app_name="soundtrack")
    driver = start_browser(tmp_path / "profile")
    try:
        driver.get(url + "/")
        wait_for(driver, "window.soundtrackPage && window.soundtrackPage.ready", timeout=30)
        # the page's own files only (CSP): every resource it loaded is from this service
        loaded = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
        assert loaded and all(u.startswith(url) for u in loaded), loaded
        # 1. upload a real mp4, set steps, seed and output, generate
        driver.find_element(By.ID, "video-file").send_keys(str(media_files / "clip.mp4"))
        steps = driver.find_element(By.ID, "opt-num_steps")
        assert steps.get_attribute("max") == str(MAX_STEPS) or int(float(steps.get_attribute("max"))) >= MAX_STEPS
        steps.send_keys("2")
        seed = driver.find_element(By.ID, "opt-seed")
        seed.clear()
        seed.send_keys("3")
        Select(driver.find_element(By.ID, "opt-output")).select_by_value("mp4")
        driver.find_element(By.ID, "generate").click()
        decoded = wait_for(driver, "window.soundtrackPage.drawn && window.soundtrackPage.decoded", timeout=120)
        page = driver.execute_script("return window.soundtrackPage")
        assert page["states"][-1] == "done" and page["error"] is None, page
        # the service's own WAV of that job, for the length and level the browser decoded
        res = requests.get(f"{url}/v1/jobs/{page['job']}/result", params={"kind": "wav"}, timeout=30)
        x, sr = _wav(res.content)
        rms = float(np.sqrt(np.mean((x / 32768.0) ** 2)))
        print(f"\nweb page: decoded {decoded['duration']:.3f} s at {decoded['sampleRate']} Hz, RMS "
              f"{decoded['rms']:.4f} (server WAV {len(x) / sr:.3f} s, RMS {rms:.4f}); drawn {page['drawn']}")
        assert decoded["sampleRate"] == sr == 16000 and decoded["length"] == len(x) == 3 * 16000
        assert decoded["rms"] > 1e-3 and abs(decoded["rms"] - rms) < 1e-3 * max(1.0, rms)
        # the spectrogram is drawn: many colours on the canvas, the curve and the beats on it
        colours = driver.execute_script("""
            const c = document.getElementById('spectrogram'), d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            const seen = new Set(); for (let i = 0; i < d.length; i += 4 * 7) seen.add(d[i] << 16 | d[i + 1] << 8 | d[i + 2]);
            return seen.size;""")
        fps = float(requests.get(url + "/v1/model", timeout=10).json()["fps"])
        assert colours > 50 and page["drawn"]["rows"] == 64, (colours, page["drawn"])
        assert page["drawn"]["rhythm"] == round(3.0 * fps), (fps, page["drawn"])  # a point a frame
        # the muxed video plays in the page and both downloads are offered
        assert driver.execute_script("return !document.getElementById('muxed').hidden")
        wait_for(driver, "document.getElementById('muxed').readyState >= 1 && "
                         "document.getElementById('muxed').duration > 2.9", timeout=20)
        assert driver.execute_script("return document.getElementById('audio').duration") == pytest.approx(3.0, abs=0.05)
        assert driver.find_element(By.ID, "download-mp4").get_attribute("href").startswith("blob:")
        screenshot(driver, "serve_page_result")
        # 2. a long job, cancelled from the page: the generator stops within 2 s
        driver.find_element(By.ID, "video-file").send_keys(str(long_video))
        steps.clear()
        steps.send_keys(str(MAX_STEPS))  # 3 windows x 50 steps: far longer than the test
        Select(driver.find_element(By.ID, "opt-output")).select_by_value("wav")
        driver.find_element(By.ID, "generate").click()
        wait_for(driver, "/windows/.test(document.getElementById('status').textContent)", timeout=60)
        time.sleep(0.5)
        before = gen.stats.remote().result()
        assert before["generating"] == 1, before
        screenshot(driver, "serve_page_running")
        t0 = time.monotonic()
        driver.find_element(By.ID, "cancel").click()
        latency = _generator_stops(gen, t0, "Cancel on the page")
        wait_for(driver, "window.soundtrackPage.states.includes('cancelled')", timeout=10)
        print(f"web page: Cancel stopped the generator {latency:.2f} s after the click")
        # 3. the runs view: the search (trials and its plots) and the bench table
        driver.find_element(By.ID, "tab-runs").click()
        runs = wait_for(driver, "window.soundtrackPage.runs", timeout=30)
        assert runs["tune"] >= 1 and runs["bench"] >= 1 and runs["registry"] >= 1, runs
        card = driver.find_element(By.ID, "runs-registry").text
        assert "page-best" in card and '"guidance_scale": 4' in card and str(model_dir) not in driver.page_source
        tune = driver.find_element(By.ID, "runs-tune")
        assert "page-search-1a2b3c4d" in tune.text and "secret-host" not in driver.page_source
        assert len(tune.find_elements(By.CSS_SELECTOR, "tr")) == 1 + 3  # header + 3 trials
        wait_for(driver, "Array.from(document.querySelectorAll('#runs-tune img')).length >= 2 && "
                         "Array.from(document.querySelectorAll('#runs-tune img')).every(i => i.complete && i.naturalWidth > 0)",
                 timeout=20)
        bench = driver.find_element(By.ID, "runs-bench")
        assert "page-bench" in bench.text and "tuned" in bench.text and "0.6900 [0.6100, 0.7600]" in bench.text
        screenshot(driver, "serve_page_runs")
        errors = [m for m in console(driver) if m.startswith("SEVERE")]
        assert not errors, errors  # nothing failed to load, no script error
    finally:
        driver.quit()


def test_prometheus_metrics_show_serve_and_service_answers(served, media_files):
    """Ray's metrics port (``soundtrack serve --metrics-port``) exports Serve's request counts
    and the service's own answers by route, status and error code (a 415 refusal, a 200)."""
    import requests

    from soundtrack.distributed.cluster import metrics_url

    url = served[0]
    assert _post(url, media_files / "notes.mp4").status_code == 415
    assert requests.get(url + "/v1/health", timeout=10).status_code == 200
    where = metrics_url()
    assert where is not None and where.startswith("http://127.0.0.1:")
    want = ('ray_soundtrack_http_answers_total{', 'route="/v1/soundtrack"', 'status="415"', 'route="/v1/health"')
    deadline, text = time.monotonic() + 60, ""
    while time.monotonic() < deadline:  # Ray's agent exports what replicas report every few seconds
        text = requests.get(where, timeout=10).text
        answers = [ln for ln in text.splitlines() if ln.startswith("ray_soundtrack_http_answers_total{")]
        if (any('status="415"' in ln and 'route="/v1/soundtrack"' in ln for ln in answers)
                and any('route="/v1/health"' in ln and 'code="ok"' in ln for ln in answers)
                and "ray_serve_num_http_requests" in text):
            break
        time.sleep(2)
    else:
        pytest.fail(f"metrics never showed {want}; soundtrack lines: "
                    f"{[ln for ln in text.splitlines() if 'soundtrack_' in ln][:10]}")
    refusal = next(ln for ln in answers if 'status="415"' in ln)
    assert 'code="not_a_video"' in refusal, refusal  # the error code of the answer's JSON
    assert float(refusal.rsplit(" ", 1)[1]) >= 1
    assert "ray_soundtrack_http_answer_seconds_bucket" in text and "ray_soundtrack_uploads_in_flight" in text


def test_a_client_that_goes_away_stops_its_generation(served, media_files, tmp_path):
    """POST /v1/soundtrack, then the client closes its socket while the generator samples: the
    proxy cancels the request, the ingress marks its token, and the generation stops at its
    next denoising step (requests_cancelled counts it: it did not run to its end) within 2 s;
    the service then answers the next request."""
    import requests
    from ray import serve

    from soundtrack.data import media
    from soundtrack.serving.limits import GENERATOR_NAME

    url, port, _ = served
    gen = serve.get_deployment_handle(GENERATOR_NAME, app_name="soundtrack")
    video = tmp_path / "near_limit.mp4"
    media.write_mp4(video, _moving_square(55), fps=10.0)  # 5.5 s, under the 6 s limit; 50 steps: seconds
    req = requests.Request("POST", url + "/v1/soundtrack", files={"video": ("near_limit.mp4", video.read_bytes())},
                           data={"num_steps": str(MAX_STEPS), "seed": "1"}).prepare()
    head = "".join(f"{k}: {v}\r\n" for k, v in req.headers.items())
    before = gen.stats.remote().result()
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    try:
        sock.sendall(f"POST /v1/soundtrack HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{head}\r\n".encode() + req.body)
        deadline = time.monotonic() + 60
        while not gen.stats.remote().result()["generating"]:
            assert time.monotonic() < deadline, "the generation never started"
            time.sleep(0.05)
        time.sleep(0.3)
    finally:
        sock.close()  # the client goes away mid-generation
    latency = _generator_stops(gen, time.monotonic(), "the client went away")
    after = gen.stats.remote().result()
    print(f"\nclient gone: the generator stopped {latency:.2f} s after the socket closed")
    assert after["requests_cancelled"] == before["requests_cancelled"] + 1  # stopped, not finished
    assert _post(url, media_files / "clip.mp4", {"num_steps": "2"}).status_code == 200


def test_service_still_answers_and_leaves_no_upload_files(served, media_files):
    import requests

    url = served[0]
    assert requests.get(url + "/v1/health", timeout=10).json()["pending"] == 0
    r = _post(url, media_files / "clip.mp4", {"num_steps": "2", "output": "mp4"})
    assert r.status_code == 200
    assert not list(Path(tempfile.gettempdir()).glob("soundtrack-upload-*"))


# ----------------------------------------------------------------------------- fuzz


def test_openapi_fuzz_finds_no_5xx_and_every_answer_matches_the_schema(served, tmp_path):
    """Every operation of /openapi.json, fuzzed from its own description (tests/api_fuzz.py):
    schema-valid and schema-violating requests on loopback, bounded in count and time, with a
    fixed seed. No answer is a 5xx (but the declared 503 + Retry-After of a full job queue),
    each matches its declared status, media type, body and headers, and a schema-violating
    request is refused. A real 1 s mp4 in some uploads, and the job ids of 202 answers in
    later paths, take cases past the first refusal (generation, job status, result, delete)."""
    import requests
    from api_fuzz import fuzz_api, summary

    from soundtrack.data import media

    url = served[0]
    media.write_mp4(tmp_path / "short.mp4", _moving_square(10, 32), fps=10.0)  # 1 s: cheap to generate for
    uploads_dir = Path(tempfile.gettempdir())
    before = set(uploads_dir.glob("soundtrack-upload-*"))
    t0 = time.monotonic()
    report = fuzz_api(url, max_examples=25, max_seconds=30.0, seed=0,
                      uploads={"video": [(tmp_path / "short.mp4").read_bytes()]}, upload_fields={"num_steps": 2})
    took = time.monotonic() - t0
    print("\n" + summary(report))
    assert not report["schema_errors"], report["schema_errors"]
    assert not report["failures"], summary(report)
    expected = {f"{m.upper()} {p}" for p, ops in requests.get(url + "/openapi.json", timeout=10).json()["paths"].items()
                for m in ops}
    assert set(report["operations"]) == expected  # every operation the document has was fuzzed
    starved = [op for op, s in report["operations"].items() if s["cases"] == 0]
    assert not starved, f"operations that got no case: {starved}"
    assert report["cases"] >= 2 * len(expected), report["cases"]
    print(f"fuzz: {report['cases']} cases in {took:.1f} s (budget {30.0:g} s, enforced by the fuzzer)")
    # The service goes on answering, and none of the uploads left a file behind: a folder that
    # is new and stays (another process's upload in flight on this shared machine goes in a moment)
    assert requests.get(url + "/v1/health", timeout=10).json()["pending"] == 0
    left = set(uploads_dir.glob("soundtrack-upload-*")) - before
    deadline = time.monotonic() + 5
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left &= set(uploads_dir.glob("soundtrack-upload-*"))
    assert not left, left
