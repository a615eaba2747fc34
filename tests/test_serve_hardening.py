"""Hostile and edge inputs against the ingress app, below Ray.

The FastAPI app of :func:`soundtrack.serving.ingress.create_api` runs for real (in-process
over HTTP with Starlette's TestClient, as a raw ASGI call, or under uvicorn on 127.0.0.1),
with a small stand-in for the generator deployment (its ``info`` / ``generate`` handles:
the model is not what is tested). Every hostile file is a real file written with PyAV
(:mod:`media_factory`) and, where a header must lie, patched byte by byte. After each
refusal the same app instance must still answer a good request with 200.
"""

from __future__ import annotations

import asyncio
import json
import select
import socket
import struct
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from media_factory import mpegts_without_video_frames, write_av

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

HOST = "http://127.0.0.1:8000"  # TestClient's base URL: a loopback Host header, as a local client sends
GOOD_KEY = "k" * 8 + "-good-key-0123"  # 22 characters (keys must have >= 16)
OTHER_KEY = "o" * 8 + "-other-key-456"


# ----------------------------------------------------------------------------- the app


class _Handle:
    """What ``generator.<method>.remote(...)`` gives in Serve: an awaitable result."""

    def __init__(self, fn):
        self.fn = fn

    async def remote(self, *args):
        return self.fn(*args)


class FakeGenerator:
    """The generator deployment's two handles: ``info`` (a realistic card, with the private
    parts a real one has) and ``generate`` (silence of the clip's length)."""

    def __init__(self, info: dict | None = None):
        from soundtrack.serving.options import GenerationOutput

        self.jobs = []
        card = info or {"uri": "file:/srv/soundtrack/runs/train/tiny-abc/model", "fps": 10.0, "sr": 16000,
                        "frame_size": 32, "conditions": ["video", "music", "sfx"], "card": {"name": "tiny"}}

        def generate(job):
            self.jobs.append(job)
            return GenerationOutput(np.zeros(len(job.frames) * 1600, np.float32), 16000)

        self.info = _Handle(lambda: card)
        self.generate = _Handle(generate)


def _app(limits: dict | None = None, generator: FakeGenerator | None = None):
    from soundtrack.serving.ingress import SoundtrackService, create_api
    from soundtrack.serving.limits import ServeLimits

    service = SoundtrackService(generator or FakeGenerator(), "file:/srv/soundtrack/runs/train/tiny-abc/model",
                                ServeLimits.from_dict({"max_duration_s": 6, **(limits or {})}))
    return service, create_api(service)


def _client(app, **kw):
    from starlette.testclient import TestClient

    return TestClient(app, base_url=HOST, **kw)  # raise_server_exceptions: a 500 fails the test loudly


@pytest.fixture
def decodes(monkeypatch):
    """Paths handed to the frame decoder (``media.read_frames``, the ingress' only decode)."""
    from soundtrack.data import media

    seen = []
    real = media.read_frames

    def spy(path, *a, **kw):
        seen.append(Path(path))
        return real(path, *a, **kw)

    monkeypatch.setattr(media, "read_frames", spy)
    return seen


def _post(client, path: Path | None = None, data: dict | None = None, content: bytes | None = None,
          filename: str | None = None, **kw):
    files = {"video": (filename or path.name, path.read_bytes() if content is None else content)} \
        if (path is not None or content is not None) else None
    return client.post("/v1/soundtrack", files=files, data=data or {}, **kw)


def _good(client, media_dir, decodes=None, **kw):
    """A good request: it must succeed whatever came before (the service stays up)."""
    n = len(decodes) if decodes is not None else 0
    r = _post(client, media_dir / "good.mp4", {"num_steps": "2"}, **kw)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "audio/wav"
    if decodes is not None:
        assert len(decodes) == n + 1  # the good one is decoded
    return r


# ----------------------------------------------------------------------------- hostile files


def _patch_mkv_duration(src: Path, dst: Path, seconds: float) -> None:
    """A Matroska copy whose Segment Duration element (ID 0x4489) claims ``seconds``."""
    b = bytearray(src.read_bytes())
    i = b.find(b"\x44\x89")
    n = b[i + 2] & 0x7F  # EBML size byte 0x88 / 0x84: an 8- or 4-byte float follows
    assert b[i + 2] & 0x80 and n in (4, 8)
    b[i + 3 : i + 3 + n] = struct.pack(">d" if n == 8 else ">f", seconds * 1000.0)  # TimecodeScale 1 ms
    dst.write_bytes(bytes(b))


def _patch_mp4_durations(src: Path, dst: Path, seconds: float) -> None:
    """An mp4 copy whose mvhd, tkhd and mdhd durations (version 0 boxes) claim ``seconds``."""
    b = bytearray(src.read_bytes())
    movie_scale = 1000
    for box in (b"mvhd", b"tkhd", b"mdhd"):
        j = b.find(box)
        assert b[j + 4] == 0  # version 0: 32-bit times
        if box == b"tkhd":  # flags, creation, modification, track id, reserved, duration
            off, scale = j + 4 + 20, movie_scale
        else:  # flags, creation, modification, timescale, duration
            scale = struct.unpack(">I", b[j + 16 : j + 20])[0]
            movie_scale = scale if box == b"mvhd" else movie_scale
            off = j + 4 + 16
        b[off : off + 4] = struct.pack(">I", int(seconds * scale))
    dst.write_bytes(bytes(b))


def _patch_stsz_count(src: Path, dst: Path, count: int) -> None:
    """An mp4 copy whose first sample-size table (stsz) declares ``count`` samples (its entries unchanged)."""
    b = bytearray(src.read_bytes())
    j = b.find(b"stsz")  # type, version/flags, default sample size, sample count
    b[j + 12 : j + 16] = struct.pack(">I", count)
    dst.write_bytes(bytes(b))


def _iso_children(buf: bytes):
    pos = 0
    while pos + 8 <= len(buf):
        size, typ = struct.unpack(">I4s", buf[pos : pos + 8])
        assert size >= 8, "64-bit boxes are not needed for these small files"
        yield typ, buf[pos + 8 : pos + size]
        pos += size


def _with_external_dref(src: Path, dst: Path, url: str) -> None:
    """An mp4 copy whose video track's data reference points to ``url`` (not self-contained).

    The moov box is rebuilt with the new dref (sizes of every parent box updated); it comes
    after mdat in PyAV's mp4s, so no chunk offset moves.
    """
    data = src.read_bytes()
    containers = (b"moov", b"trak", b"mdia", b"minf", b"dinf")

    def rebuild(typ: bytes, payload: bytes) -> bytes:
        if typ in containers:
            payload = b"".join(rebuild(t, p) for t, p in _iso_children(payload))
        elif typ == b"dref":
            body = b"\x00\x00\x00\x00" + url.encode() + b"\x00"  # version 0, flags 0: the data is elsewhere
            entry = struct.pack(">I4s", 8 + len(body), b"url ") + body
            payload = b"\x00\x00\x00\x00" + struct.pack(">I", 1) + entry
        return struct.pack(">I4s", 8 + len(payload), typ) + payload

    top = list(_iso_children(data))
    assert [t for t, _ in top].index(b"moov") > [t for t, _ in top].index(b"mdat")
    dst.write_bytes(b"".join(rebuild(t, p) if t == b"moov" else struct.pack(">I4s", 8 + len(p), t) + p
                             for t, p in top))


def _many_streams(path: Path, n_audio: int) -> Path:
    """An mkv with one short video stream and ``n_audio`` AAC streams."""
    import av

    with av.open(str(path), "w") as c:
        vs = c.add_stream("libx264", rate=10)
        vs.width, vs.height, vs.pix_fmt = 32, 32, "yuv420p"
        auds = [c.add_stream("aac", rate=16000, layout="mono") for _ in range(n_audio)]
        for i in range(5):
            f = av.VideoFrame.from_ndarray(np.zeros((32, 32, 3), np.uint8), format="rgb24")
            f.pts = i
            for pkt in vs.encode(f):
                c.mux(pkt)
        for pkt in vs.encode():
            c.mux(pkt)
        for a in auds:
            af = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            af.sample_rate, af.pts = 16000, 0
            for pkt in [*a.encode(af), *a.encode()]:
                c.mux(pkt)
    return path


@pytest.fixture(scope="module")
def media_dir(tmp_path_factory):
    """Good files in every accepted container and hostile ones (written once for the module)."""
    import soundfile as sf
    from PIL import Image

    d = tmp_path_factory.mktemp("hardening")
    small = {"fps": 10.0, "size": (32, 48)}
    write_av(d / "good.mp4", 2.0, **small)
    # accepted containers and codecs (decoded for real)
    write_av(d / "good.mov", 1.0, **small, acodec="pcm_s16le")
    # libx265 corrupts its heap below 64x64 here (PyAV 18): the HEVC file is 64x64
    write_av(d / "good.mkv", 1.0, fps=10.0, size=(64, 64), vcodec="libx265", acodec="flac",
             video_options={"preset": "ultrafast", "x265-params": "log-level=error"})
    write_av(d / "good.webm", 1.0, **small, vcodec="libvpx", acodec="libopus", sr=48000)
    write_av(d / "good.avi", 1.0, **small, vcodec="mpeg4", acodec="libmp3lame")
    write_av(d / "good.ts", 1.0, **small)
    # limits: what the container holds, whatever its header says
    write_av(d / "long.mkv", 20.0, **small, acodec=None)
    _patch_mkv_duration(d / "long.mkv", d / "claims_1s.mkv", 1.0)
    write_av(d / "long.mp4", 20.0, **small, acodec=None)
    _patch_mp4_durations(d / "long.mp4", d / "claims_1s.mp4", 1.0)
    write_av(d / "fast.mp4", 2.0, fps=120.0, size=(32, 48), acodec=None)  # 240 frames in 2 s
    write_av(d / "late.mkv", 1.0, fps=10.0, size=(32, 48), acodec=None,
             frame_times=3600.0 + np.arange(10) / 10)  # timestamps start at one hour
    _many_streams(d / "streams.mkv", 9)  # 10 streams > 8
    write_av(d / "huge.mp4", 0.1, fps=10.0, size=(4096, 4096), acodec=None,
             picture=lambda i: np.zeros((4096, 4096, 3), np.uint8), video_options={"preset": "ultrafast"})
    mpegts_without_video_frames(d / "noframes.ts")
    # formats
    write_av(d / "flv.flv", 1.0, **small, format="flv")
    write_av(d / "mpeg2.mkv", 1.0, **small, vcodec="mpeg2video")
    write_av(d / "ac3.mkv", 1.0, **small, acodec="ac3", sr=48000)
    write_av(d / "audio.ogg", 1.0, vcodec=None, acodec="libopus", sr=48000)
    write_av(d / "audio.m4a", 1.0, vcodec=None, format="mp4")
    sf.write(d / "tone.wav", 0.1 * np.sin(np.arange(16000) / 5.0).astype(np.float32), 16000)
    Image.new("RGB", (32, 32), (200, 10, 10)).save(d / "still.png")
    # files that name other files or URLs (decord follows an HLS playlist to a local file)
    good = (d / "good.mp4").resolve()
    (d / "playlist.m3u8").write_text(f"#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:2.0,\n{good}\n#EXT-X-ENDLIST\n")
    (d / "bom.m3u8").write_bytes(b"\xef\xbb\xbf\n\n" + (d / "playlist.m3u8").read_bytes())
    (d / "concat.txt").write_text(f"ffconcat version 1.0\nfile {good}\n")
    (d / "session.sdp").write_text("v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=x\r\nc=IN IP4 127.0.0.1\r\n"
                                   "m=video 5004 RTP/AVP 96\r\n")
    (d / "manifest.mpd").write_text('<?xml version="1.0"?>\n<MPD><Period><AdaptationSet><Representation>'
                                    "<BaseURL>http://example.com/v.mp4</BaseURL></Representation></AdaptationSet>"
                                    "</Period></MPD>\n")
    (d / "urls.txt").write_text("http://example.com/a.mp4\nfile:///etc/passwd\n")
    _with_external_dref(d / "good.mp4", d / "dref.mp4", "http://example.com/elsewhere.mp4")
    _patch_stsz_count(d / "good.mp4", d / "stsz.mp4", 10_000_000)  # 16 bytes claim 40 MB of index
    return d


LIMIT_CASES = [  # (file, limits, status, error, words in the message)
    ("claims_1s.mkv", {}, 422, "video_too_long", "20.00 s"),
    ("claims_1s.mp4", {}, 422, "video_too_long", "20.00 s"),
    ("fast.mp4", {"max_video_frames": 100}, 422, "too_many_frames", "240 frames"),
    ("late.mkv", {}, 422, "video_too_long", "its first frame is at 3600.00 s"),
    ("streams.mkv", {}, 422, "too_many_streams", "10 streams"),
    ("huge.mp4", {}, 422, "video_too_large", "4096x4096"),
    ("good.mp4", {"max_packets": 10}, 422, "too_many_packets", "tables declare 53 samples"),  # 20 video + 33 audio
    ("long.mkv", {"max_packets": 50}, 422, "too_many_packets", "more than 50 packets"),  # counted by demuxing
    ("good.mp4", {"max_video_pixels": 1000}, 422, "video_too_large", "48x32"),
    ("noframes.ts", {}, 422, "no_frames", "no frames"),
    ("stsz.mp4", {}, 422, "too_many_packets", "samples, more than the limit of 100000"),
]


@pytest.mark.parametrize("name, limits, status, error, words", LIMIT_CASES, ids=[f"{c[0]}-{c[3]}" for c in LIMIT_CASES])
def test_limits_hold_on_what_the_container_holds_before_any_decode(media_dir, decodes, monkeypatch, name, limits,
                                                                    status, error, words):
    from soundtrack.data import media

    if name.startswith("claims_1s"):  # the header really lies: the old check read this duration
        assert abs(media.probe(media_dir / name, check_vfr=False).duration_s - 1.0) < 0.05
    opened = []
    if name == "stsz.mp4":  # refused from the box structure, before libavformat opens (and indexes) it
        monkeypatch.setattr(media, "count_packets", lambda *a, **kw: opened.append(a))
    _, app = _app(limits)
    client = _client(app)
    r = _post(client, media_dir / name, {"num_steps": "2"})
    assert r.status_code == status, r.text
    body = r.json()
    assert (body["error"], body["field"]) == (error, "video"), body
    assert words in body["message"], body["message"]
    assert decodes == [] and opened == []  # refused before a frame was decoded
    if limits:  # the limit that refused it is named
        assert body["limit"] == next(iter(limits.values()))
    if "max_packets" not in limits and "max_video_pixels" not in limits:
        monkeypatch.undo()  # the real count_packets (and decode spy off) for the good request
        _good(client, media_dir)


FORMAT_CASES = [  # (file, error, what the answer says was found)
    ("playlist.m3u8", "external_reference", "HLS playlist"),
    ("bom.m3u8", "external_reference", "HLS playlist"),
    ("concat.txt", "external_reference", "ffconcat"),
    ("session.sdp", "external_reference", "SDP"),
    ("manifest.mpd", "external_reference", "XML"),
    ("urls.txt", "external_reference", "URLs"),
    ("dref.mp4", "external_reference", "http://example.com/elsewhere.mp4"),
    ("flv.flv", "unsupported_container", "FLV"),
    ("audio.ogg", "unsupported_container", "Ogg"),
    ("mpeg2.mkv", "unsupported_codec", "mpeg2video"),
    ("ac3.mkv", "unsupported_codec", "ac3"),
    ("audio.m4a", "not_a_video", "no video stream"),
    ("tone.wav", "not_a_video", "WAV"),
    ("still.png", "not_a_video", "PNG"),
]


@pytest.mark.parametrize("name, error, words", FORMAT_CASES, ids=[c[0] for c in FORMAT_CASES])
def test_only_allowed_self_contained_containers_and_codecs(media_dir, decodes, name, error, words):
    _, app = _app()
    client = _client(app)
    r = _post(client, media_dir / name, {"num_steps": "2"}, filename="upload.mp4")  # the name proves nothing
    assert r.status_code == 415, r.text
    body = r.json()
    assert (body["error"], body["field"]) == (error, "video"), body
    assert words in json.dumps(body), body
    assert body["found"] and body["allowed"] or error == "not_a_video" and "streams" in body["found"], body
    if error == "unsupported_codec":
        assert "h264" in body["allowed"]["video"] and "aac" in body["allowed"]["audio"]
    assert decodes == []  # libavformat never followed the reference: nothing was decoded
    _good(client, media_dir, decodes)


def test_every_allowed_container_decodes(media_dir, decodes):
    gen = FakeGenerator()
    _, app = _app(generator=gen)
    client = _client(app)
    for name in ("good.mp4", "good.mov", "good.mkv", "good.webm", "good.avi", "good.ts"):
        r = _post(client, media_dir / name, {"num_steps": "2"})
        assert r.status_code == 200, (name, r.text)
        assert gen.jobs[-1].frames.shape[1:] == (32, 32, 3), name
    assert len(decodes) == 6


# ----------------------------------------------------------------------------- model card


def test_model_card_shows_no_paths_hosts_commands_tracebacks_or_credentials(media_dir, monkeypatch):
    host = "build-node-17"  # this machine's name, wherever it appears in a card
    monkeypatch.setattr(socket, "gethostname", lambda: host)
    info = {
        "uri": "file:/srv/soundtrack/runs/train/tiny-abc/model",
        "directory": "/srv/soundtrack/runs/train/tiny-abc/model",
        "device": "cpu", "fps": 10.0, "sr": 16000, "frame_size": 32, "conditions": ["video", "music", "sfx"],
        "card": {"name": "tiny", "trained": True, "source_model": "/home/alice/runs/train/tiny-abc/model"},
        "entry_card": {
            "stage": "train", "name": "tiny-abc", "status": "failed", "host": host, "command": "soundtrack train x",
            "python": "3.11.9", "traceback": 'Traceback (most recent call last):\n  File "/srv/x.py", line 1\n',
            "error": f"OSError: cannot write /srv/soundtrack/runs/train/tiny-abc/ckpt on {host}",
            "config": {"storage": "s3://AKIAXXXX:secretkey@soundtrack-runs/runs", "data": "C:\\Users\\bob\\set.csv",
                       "endpoint": "http://minio.internal:9000/", "notes": "see ~/notes.txt"},
            "upstream": [{"path": "/srv/soundtrack/runs/data/vgg", "name": "vgg", "status": "finished"}],
        },
    }
    service, app = _app(generator=FakeGenerator(info))
    client = _client(app)
    card = client.get("/v1/model").json()
    text = json.dumps(card)
    for secret in ("/srv", "/home", "alice", "bob", "C:\\\\", "~/", "AKIA", "secretkey", "minio.internal", "9000",
                   "Traceback", "soundtrack train x", host):
        assert secret not in text, (secret, text)
    assert "directory" not in card and "host" not in card["entry_card"] and "command" not in card["entry_card"]
    assert card["uri"] == "file:model" and card["card"]["source_model"] == "model"
    assert card["entry_card"]["upstream"][0] == {"path": "vgg", "name": "vgg", "status": "finished"}
    assert card["entry_card"]["config"]["storage"] == "s3://.../runs"
    assert (card["fps"], card["frame_size"], card["conditions"]) == (10.0, 32, ["video", "music", "sfx"])
    # the same URI elsewhere; the full card stays with the server (the ingress decodes with it)
    assert client.get("/v1/health").json()["model_uri"] == "file:model"
    assert _good(client, media_dir).headers["x-soundtrack-model"] == "file:model"
    assert asyncio.run(service.model_info())["directory"].startswith("/srv")


def test_api_description_does_not_show_the_keys(media_dir):
    _, app = _app({"api_keys": {GOOD_KEY: 5}})
    spec = _client(app).get("/openapi.json").json()  # exempt from the key: no secret in it
    assert GOOD_KEY not in json.dumps(spec) and "api_keys=1" in spec["info"]["description"]
    for code in ("401", "403", "408", "415", "421", "429", "503"):
        assert "application/json" in spec["paths"]["/v1/soundtrack"]["post"]["responses"][code]["content"]


# ----------------------------------------------------------------------------- Host, Origin


HOST_CASES = [  # (headers, status, error)
    ({"host": "evil.example"}, 421, "misdirected_host"),
    ({"host": "evil.example:8000"}, 421, "misdirected_host"),
    ({"host": "127.0.0.1.nip.io:8000"}, 421, "misdirected_host"),
    ({"host": "10.0.0.5:8000"}, 421, "misdirected_host"),
    ({"host": "local host"}, 400, "bad_host"),
    ({"host": "127.0.0.1:99999"}, 400, "bad_host"),
    ({"host": "user@127.0.0.1"}, 400, "bad_host"),
    ({"origin": "http://evil.example"}, 403, "cross_origin"),
    ({"origin": "null"}, 403, "cross_origin"),
    ({"origin": "http://localhost:8000"}, 403, "cross_origin"),  # another origin than 127.0.0.1:8000
    ({"origin": "http://127.0.0.1:3000"}, 403, "cross_origin"),
    ({"origin": "file://"}, 403, "cross_origin"),
    ({"sec-fetch-site": "cross-site"}, 403, "cross_origin"),
]


@pytest.mark.parametrize("headers, status, error", HOST_CASES, ids=[str(c[0]) for c in HOST_CASES])
def test_host_and_origin_are_checked_before_the_body(media_dir, decodes, headers, status, error):
    _, app = _app()
    client = _client(app)
    r = _post(client, media_dir / "good.mp4", {"num_steps": "2"}, headers=headers)
    assert r.status_code == status, r.text
    assert r.json()["error"] == error
    assert decodes == []
    _good(client, media_dir, decodes)


def test_hosts_that_pass(media_dir):
    _, app = _app({"allowed_hosts": ["Soundtrack.Example"]})
    client = _client(app)
    for headers in ({"host": "localhost:8000"}, {"host": "[::1]:8000"}, {"host": "127.0.0.1"},
                    {"origin": "http://127.0.0.1:8000"}, {"sec-fetch-site": "same-origin"},
                    {"host": "soundtrack.example"}, {"host": "soundtrack.example", "origin": "https://soundtrack.example"},
                    {"host": "soundtrack.example:8443", "origin": "https://soundtrack.example:8443"}):
        _good(client, media_dir, headers=headers)
    # a GET from another origin changes nothing (the browser will not show it the answer)
    assert client.get("/v1/health", headers={"origin": "http://evil.example"}).status_code == 200
    assert client.get("/v1/health", headers={"host": "evil.example"}).status_code == 421
    assert _client(_app({"allowed_hosts": ["*"]})[1]).get("/v1/health", headers={"host": "any.example"}).status_code == 200


def test_one_host_header_only():
    from soundtrack.serving.guard import RequestGuard
    from soundtrack.serving.limits import ServeLimits

    guard = RequestGuard(None, ServeLimits())
    twice = {"type": "http", "method": "POST", "path": "/v1/soundtrack",
             "headers": [(b"host", b"127.0.0.1"), (b"host", b"evil.example")]}
    assert guard.check(twice)[:2] == (400, {"error": "bad_host", "message": "the request needs exactly one Host "
                                            "header", "field": None, "limit": None})
    assert guard.check({**twice, "headers": []})[0] == 400
    assert guard.check({**twice, "headers": twice["headers"][:1]}) is None


# ----------------------------------------------------------------------------- API keys


def test_api_keys_and_quotas(media_dir, decodes):
    _, app = _app({"api_keys": {GOOD_KEY: 3, OTHER_KEY: None}})
    client = _client(app)
    bearer = {"authorization": f"Bearer {GOOD_KEY}"}
    refusals = [
        ({}, 401, "missing_api_key"),
        ({"authorization": "Bearer "}, 401, "missing_api_key"),
        ({"authorization": f"Basic {GOOD_KEY}"}, 401, "missing_api_key"),
        ({"authorization": f"Bearer {GOOD_KEY[:-1]}"}, 401, "bad_api_key"),
        ({"authorization": f"Bearer {GOOD_KEY}x"}, 401, "bad_api_key"),
        ({"x-api-key": "x" * 22}, 401, "bad_api_key"),
    ]
    for headers, status, error in refusals:
        r = _post(client, media_dir / "good.mp4", {"num_steps": "2"}, headers=headers)
        assert (r.status_code, r.json()["error"]) == (status, error), (headers, r.text)
        assert r.headers["www-authenticate"].startswith("Bearer")
        _good(client, media_dir, headers={"x-api-key": OTHER_KEY})  # no quota on this one
    assert decodes and len(decodes) == len(refusals)  # only the good requests were decoded
    assert client.get("/v1/health").status_code == 200  # exempt: the liveness probe
    assert client.get("/v1/model").status_code == 401
    # GOOD_KEY: 3 requests a minute, then 429 with Retry-After; the other key goes on
    assert client.get("/v1/model", headers=bearer).status_code == 200
    _good(client, media_dir, headers={"authorization": f"bearer {GOOD_KEY}"})
    _good(client, media_dir, headers={"x-api-key": GOOD_KEY})
    r = _post(client, media_dir / "good.mp4", {"num_steps": "2"}, headers=bearer)
    assert r.status_code == 429 and r.json()["error"] == "over_quota" and r.json()["limit"] == 3
    assert 50 <= int(r.headers["retry-after"]) <= 60
    _good(client, media_dir, headers={"x-api-key": OTHER_KEY})


def test_quota_window_and_constant_time_comparison(monkeypatch):
    from soundtrack.serving import guard
    from soundtrack.serving.limits import ServeLimits

    now = [1000.0]
    g = guard.RequestGuard(None, ServeLimits(api_keys={GOOD_KEY: 2, OTHER_KEY: 1, "z" * 20: None}),
                           clock=lambda: now[0])
    compared = []
    real = guard.hmac.compare_digest
    monkeypatch.setattr(guard.hmac, "compare_digest", lambda a, b: compared.append(len(a)) or real(a, b))

    def status(key):
        scope = {"type": "http", "method": "POST", "path": "/v1/soundtrack",
                 "headers": [(b"host", b"127.0.0.1:8000"), (b"x-api-key", key.encode())]}
        r = g.check(scope)
        return 200 if r is None else (r[0], r[2].get("Retry-After"))

    assert [status(GOOD_KEY), status(GOOD_KEY)] == [200, 200]
    assert status(GOOD_KEY) == (429, "60")
    now[0] += 59.5
    assert status(GOOD_KEY) == (429, "1")
    now[0] += 0.6  # the first request left the 60 s window
    assert status(GOOD_KEY) == 200
    assert status(OTHER_KEY) == 200 and status(OTHER_KEY)[0] == 429
    # every configured key is compared, as SHA-256 digests (equal lengths), whichever matches
    compared.clear()
    for key in (GOOD_KEY, "nope" * 5, "z" * 20):
        status(key)
    assert compared == [32] * 9
    for bad in (["short"], {GOOD_KEY: 0}, {GOOD_KEY: 1.5}, [GOOD_KEY, GOOD_KEY], ["x" * 15 + " "]):
        with pytest.raises(ValueError, match="api_keys"):
            ServeLimits(api_keys=bad)
    assert GOOD_KEY not in repr(ServeLimits(api_keys=[GOOD_KEY]))


# ----------------------------------------------------------------------------- slow uploads, budget


def _scope(headers: dict[str, str], method: str = "POST", path: str = "/v1/soundtrack") -> dict:
    hs = {"host": "127.0.0.1:8000", **headers}
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
            "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
            "headers": [(k.encode(), v.encode("latin-1")) for k, v in hs.items()],
            "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000)}


async def _call(app, scope: dict, receive) -> tuple[int, dict, dict]:
    """Runs one request through the ASGI app; ``(status, JSON body or {}, headers)``."""
    sent = []

    async def send(msg):
        sent.append(msg)

    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    headers = {k.decode(): v.decode() for k, v in start["headers"]}
    is_json = headers.get("content-type", "").startswith("application/json")
    return start["status"], json.loads(body) if is_json else {}, headers


def _multipart(parts: list[tuple[str, str | None, bytes]], boundary: str = "bNd") -> bytes:
    out = b""
    for name, filename, data in parts:
        fn = f'; filename="{filename}"' if filename else ""
        out += f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"{fn}\r\n\r\n'.encode() + data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


def _trickle(body: bytes, step: int, delay_s: float, then_stall: bool = False):
    """An ASGI receive that sends ``step`` bytes every ``delay_s`` seconds (and records each call)."""
    calls = []
    chunks = [body[i : i + step] for i in range(0, len(body), step)]

    async def receive():
        calls.append(time.monotonic())
        if len(calls) > 1:
            await asyncio.sleep(delay_s)
        if then_stall and len(calls) > 2:
            await asyncio.sleep(3600)  # a client that stops sending and keeps the connection open
        i = len(calls) - 1
        return {"type": "http.request", "body": chunks[i] if i < len(chunks) else b"", "more_body": i < len(chunks) - 1}

    return receive, calls


MP = "multipart/form-data; boundary=bNd"


@pytest.mark.parametrize("stall", [False, True], ids=["trickle", "stall"])
def test_slow_upload_gets_408_and_the_service_goes_on(media_dir, stall):
    _, app = _app({"min_upload_bytes_per_s": 16384, "upload_grace_s": 0.5})
    body = _multipart([("video", "v.mp4", (media_dir / "good.mp4").read_bytes())])
    receive, calls = _trickle(body, 50, 0.05, then_stall=stall)  # 1 KB/s, or nothing after 100 bytes
    t = time.monotonic()
    status, answer, _ = asyncio.run(_call(app, _scope({"content-type": MP, "content-length": str(len(body))}),
                                          receive))
    took = time.monotonic() - t
    assert status == 408 and answer["error"] == "upload_too_slow" and answer["limit"] == 16384, answer
    assert 0.5 <= took < 1.5 and len(calls) < 30, (took, len(calls))  # cut off at the end of the grace period
    _good(_client(app), media_dir)


def test_slow_upload_over_a_real_socket(media_dir):
    """uvicorn on 127.0.0.1 and a raw socket client that trickles its body."""
    import uvicorn

    _, app = _app({"min_upload_bytes_per_s": 16384, "upload_grace_s": 0.5})
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        body = _multipart([("video", "v.mp4", (media_dir / "good.mp4").read_bytes())])
        head = (f"POST /v1/soundtrack HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: {MP}\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        t = time.monotonic()
        with socket.create_connection(("127.0.0.1", port), timeout=5) as c:
            c.sendall(head)
            reply = b""
            for i in range(0, len(body), 20):  # 20 bytes every 50 ms: 400 B/s
                try:
                    c.sendall(body[i : i + 20])
                except OSError:  # the server answered and closed
                    break
                ready, _, _ = select.select([c], [], [], 0.05)
                if ready:
                    break
            while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
                part = c.recv(65536)
                if not part:
                    break
                reply += part
        took = time.monotonic() - t
        assert reply.startswith(b"HTTP/1.1 408"), reply[:300]
        assert json.loads(reply.split(b"\r\n\r\n", 1)[1])["error"] == "upload_too_slow"
        assert took < 3, took
        import httpx

        files = {"video": ("good.mp4", (media_dir / "good.mp4").read_bytes())}
        r = httpx.post(f"http://127.0.0.1:{port}/v1/soundtrack", files=files, data={"num_steps": "2"}, timeout=30)
        assert r.status_code == 200 and r.headers["content-type"] == "audio/wav", r.text
    finally:
        server.should_exit = True
        thread.join(10)


def test_inflight_upload_budget_gets_503_before_the_body_is_read(media_dir):
    service, app = _app({"max_upload_bytes": 65536, "max_inflight_upload_bytes": 100_000,
                         "min_upload_bytes_per_s": 0})
    body = _multipart([("video", "v.mp4", (media_dir / "good.mp4").read_bytes())])
    assert len(body) < 40_000

    async def scenario():
        release = asyncio.Event()
        first_calls = []

        async def first_receive():  # chunked (no length): reserves max_upload_bytes, then waits
            first_calls.append(1)
            if len(first_calls) == 1:
                return {"type": "http.request", "body": body[:100], "more_body": True}
            await release.wait()
            return {"type": "http.request", "body": body[100:], "more_body": False}

        second_calls = []

        async def second_receive():
            second_calls.append(1)
            return {"type": "http.request", "body": b"", "more_body": False}

        first = asyncio.create_task(_call(app, _scope({"content-type": MP}), first_receive))
        while not first_calls:
            await asyncio.sleep(0.01)
        assert service.budget.used == 65536
        # 65536 held + 40000 declared > 100000: refused unread, with Retry-After
        second = await _call(app, _scope({"content-type": MP, "content-length": "40000"}), second_receive)
        release.set()
        return await first, second, second_calls

    (s1, _, _), (s2, answer, headers), second_calls = asyncio.run(scenario())
    assert s2 == 503 and answer["error"] == "busy" and answer["limit"] == 100_000 and "bytes" in answer["message"]
    assert int(headers["retry-after"]) >= 1 and second_calls == []
    assert s1 == 200 and service.budget.used == 0 and service.pending == 0
    _good(_client(app), media_dir)  # a declared-length upload under the budget goes through


# ----------------------------------------------------------------------------- edge inputs


def _edge_cases(media_dir: Path) -> list[tuple[str, dict, int, str]]:
    """(name, request, status, error): ``request`` is TestClient.post keywords, or ``{"asgi": ...}``."""
    from soundtrack.serving.options import SoundtrackOptions

    fields = list(SoundtrackOptions.model_fields)
    good = (media_dir / "good.mp4").read_bytes()
    rng = np.random.default_rng(0)
    garbage = rng.integers(0, 256, 4096, dtype=np.uint8).tobytes()
    mp = {"content-type": MP}

    def form(*parts, boundary="bNd"):
        return {"content": _multipart(list(parts), boundary), "headers": {"content-type": MP}}

    return [
        ("empty body", {"content": b"", "headers": mp}, 400, "bad_multipart"),
        ("no content type", {"content": b"x"}, 415, "unsupported_media_type"),
        ("json body", {"json": {"seed": 1}}, 415, "unsupported_media_type"),
        ("urlencoded form", {"data": {"seed": "1"}}, 415, "unsupported_media_type"),
        ("missing boundary", {"content": b"--x--\r\n", "headers": {"content-type": "multipart/form-data"}}, 400,
         "bad_multipart"),
        ("empty boundary", {"content": b"--x--\r\n", "headers": {"content-type": "multipart/form-data; boundary="}},
         400, "bad_multipart"),
        ("other boundary", {"content": _multipart([("seed", None, b"1")], "zzz"), "headers": mp}, 400,
         "bad_multipart"),
        ("truncated body", {"content": _multipart([("video", "v.mp4", good)])[:-10], "headers": mp}, 400,
         "bad_multipart"),
        ("part without disposition", {"content": b"--bNd\r\nX: y\r\n\r\nabc\r\n--bNd--\r\n", "headers": mp}, 400,
         "bad_multipart"),
        ("garbage file", form(("video", "v.mp4", garbage)), 415, "not_a_video"),
        ("zero-length file", form(("video", "v.mp4", b"")), 415, "not_a_video"),
        ("mp4 magic then garbage", form(("video", "v.mp4", b"\x00\x00\x00\x18ftypisom" + garbage)), 415,
         "not_a_video"),
        ("mp4 cut in half", form(("video", "v.mp4", good[: len(good) // 2])), 415, "not_a_video"),
        ("text file", form(("video", "v.mp4", b"hello\n" * 100)), 415, "not_a_video"),
        ("no video part", form(("seed", None, b"1")), 422, "missing_field"),
        ("two video parts", form(("video", "a.mp4", good), ("video", "b.mp4", good)), 422, "duplicate_field"),
        ("unknown field", form(("cfg", None, b"3"), ("video", "v.mp4", good)), 422, "unknown_field"),
        ("NUL in a field name", form(("se\x00ed", None, b"3"), ("video", "v.mp4", good)), 422, "unknown_field"),
        ("huge text field", form(("prompt", None, b"a" * 2_000_000), ("video", "v.mp4", good)), 422,
         "field_too_long"),
        ("too many parts", form(*[(f, None, b"1") for f in fields], ("video", "v.mp4", good), ("seed", None, b"2")),
         422, "too_many_fields"),
        ("not UTF-8", form(("prompt", None, b"\xff\xfe"), ("video", "v.mp4", good)), 422, "bad_field"),
        ("NUL in seed", form(("seed", None, b"1\x00"), ("video", "v.mp4", good)), 422, "invalid_option"),
        ("unicode seed", form(("seed", None, "١٢".encode()), ("video", "v.mp4", good)), 422, "invalid_option"),
        ("emoji prompt", form(("prompt", None, "🎹 calm".encode()), ("video", "v.mp4", good)), 422,
         "invalid_option"),
        ("negative seed", form(("seed", None, b"-1"), ("video", "v.mp4", good)), 422, "invalid_option"),
        ("huge seed", form(("seed", None, b"9" * 40), ("video", "v.mp4", good)), 422, "invalid_option"),
        ("NaN seed", form(("seed", None, b"nan"), ("video", "v.mp4", good)), 422, "invalid_option"),
        ("NaN guidance", form(("guidance_scale", None, b"nan"), ("video", "v.mp4", good)), 422, "invalid_option"),
        ("inf guidance", form(("guidance_scale", None, b"inf"), ("video", "v.mp4", good)), 422, "invalid_option"),
        ("-inf guidance", form(("guidance_scale", None, b"-inf"), ("video", "v.mp4", good)), 422, "invalid_option"),
        ("1e309 guidance", form(("guidance_scale", None, b"1e309"), ("video", "v.mp4", good)), 422,
         "invalid_option"),
        ("negative guidance", form(("guidance_scale", None, b"-1"), ("video", "v.mp4", good)), 422,
         "invalid_option"),
        ("negative steps", form(("num_steps", None, b"-5"), ("video", "v.mp4", good)), 422, "invalid_option"),
        ("NaN steps", form(("num_steps", None, b"nan"), ("video", "v.mp4", good)), 422, "invalid_option"),
        ("huge steps", form(("num_steps", None, b"1e9"), ("video", "v.mp4", good)), 422, "invalid_option"),
        ("fractional steps", form(("num_steps", None, b"2.5"), ("video", "v.mp4", good)), 422, "invalid_option"),
        ("inf weight", form(("weight_music", None, b"inf"), ("video", "v.mp4", good)), 422, "invalid_option"),
        ("path as output", form(("output", None, b"../../etc/passwd"), ("video", "v.mp4", good)), 422,
         "invalid_option"),
        ("bad Content-Length", {"asgi": {"content-type": MP, "content-length": "abc"}}, 400, "bad_content_length"),
        ("negative Content-Length", {"asgi": {"content-type": MP, "content-length": "-1"}}, 400,
         "bad_content_length"),
        ("declared too large", {"asgi": {"content-type": MP, "content-length": str(2**40)}}, 413,
         "upload_too_large"),
    ]


def test_edge_inputs_answer_4xx_json_never_500(media_dir):
    _, app = _app()
    client = _client(app)
    for name, request, status, error in _edge_cases(media_dir):
        if "asgi" in request:
            got, body, _ = asyncio.run(_call(app, _scope(request["asgi"]), _trickle(b"", 1, 0)[0]))
        else:
            r = client.post("/v1/soundtrack", **request)
            got, body = r.status_code, r.json()  # every refusal is JSON
        assert (got, body.get("error")) == (status, error), (name, body)
        assert body["message"] and "/tmp" not in body["message"], (name, body)  # never the server's temp file
        _good(client, media_dir)


def test_odd_file_names_and_unicode_are_answered(media_dir):
    _, app = _app()
    client = _client(app)
    good = (media_dir / "good.mp4").read_bytes()
    for filename, expect in (("../../../etc/passwd.mp4", "passwd.soundtrack.wav"),
                             ("été\u0000夏.mp4", "_t___.soundtrack.wav"),  # raw UTF-8 and a NUL in the header
                             (".mp4", ".mp4.soundtrack.wav"), ("\t.mp4", "_.soundtrack.wav")):
        r = client.post("/v1/soundtrack", content=_multipart([("video", filename, good)]), headers={"content-type": MP})
        assert r.status_code == 200, (filename, r.text)
        assert r.headers["content-disposition"] == f'attachment; filename="{expect}"'
    # non-ASCII digits are digits to Python's int(): an accepted value, not an error
    r = _post(client, media_dir / "good.mp4", {"num_steps": "٣"})
    assert r.status_code == 200, r.text
