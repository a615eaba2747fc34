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
    init_ray(num_cpus=2)
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
        for k in (proxy.PROXY_CALLBACK_ENV, proxy.MAX_UPLOAD_ENV):
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
    while gen.stats.remote().result()["generating"]:
        assert time.monotonic() - t0 < 2.0, "the generator still works 2 s after the DELETE"
        time.sleep(0.05)
    latency = time.monotonic() - t0
    busy = gen.stats.remote().result()["busy_s"]
    time.sleep(1.0)
    after = gen.stats.remote().result()
    print(f"\njob cancel: the generator stopped {latency:.2f} s after the DELETE; busy_s {before['busy_s']:.2f} -> "
          f"{busy:.2f} s, then {after['busy_s']:.2f} s a second later; jobs ended {after['jobs']}")
    assert after["busy_s"] == busy and after["jobs"]["cancelled"] >= 1
    st = _job_poll(job_url, lambda st: st["state"] == "cancelled", timeout=10)[-1]
    assert st["progress"]["windows_done"] < 3
    r = requests.get(url + st["links"]["result"], timeout=10)
    assert r.status_code == 409 and r.json()["state"] == "cancelled"
    assert _post(url, media_files / "clip.mp4", {"num_steps": "2"}).status_code == 200


def test_service_still_answers_and_leaves_no_upload_files(served, media_files):
    import requests

    url = served[0]
    assert requests.get(url + "/v1/health", timeout=10).json()["pending"] == 0
    r = _post(url, media_files / "clip.mp4", {"num_steps": "2", "output": "mp4"})
    assert r.status_code == 200
    assert not list(Path(tempfile.gettempdir()).glob("soundtrack-upload-*"))
