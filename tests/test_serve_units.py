"""The serving layer's parts below Ray: arguments, limits, options, the streaming multipart
reader and the proxy's body limit (fast; the real Serve run is in test_serve.py)."""

from __future__ import annotations

import asyncio

import pytest


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    import torch

    torch.set_num_threads(1)
    from soundtrack.pipelines.generator import build_tiny_generator

    d = tmp_path_factory.mktemp("units") / "model"
    build_tiny_generator(d, seed=0)
    return d


def test_build_app_accepts_the_config_and_rejects_bad_arguments(model_dir, tmp_path):
    from soundtrack.serving.app import build_app, load_serve_config
    from soundtrack.serving.limits import DEFAULT_CONFIG
    from soundtrack.stages.models import ModelURIError

    cfg = load_serve_config(DEFAULT_CONFIG)
    app = build_app({**cfg["args"], "model_uri": f"file:{model_dir}", "deployment_options": cfg["deployment_options"]})
    assert type(app).__name__ == "Application"
    ok = {"model_uri": f"file:{model_dir}"}
    cases = [
        ({"modle_uri": "x"}, ValueError, "'modle_uri': Extra inputs are not permitted"),
        ({**ok, "max_batch_size": 0}, ValueError, "'max_batch_size'"),
        ({**ok, "device": "tpu"}, ValueError, "'device'"),
        ({**ok, "limits": {"max_upload": 1}}, ValueError, r"unknown serve limit\(s\) \['max_upload'\]"),
        ({**ok, "limits": {"max_steps": -3}}, ValueError, "max_steps must be a positive number"),
        ({**ok, "max_batch_size": 16}, ValueError, r"max_ongoing_requests \(4\) is below max_batch_size \(16\)"),
        ({**ok, "deployment_options": {"Generator": {}}}, ValueError, r"unknown deployments \['Generator'\]"),
        ({**ok, "deployment_options": {"SoundtrackGenerator": {"replicas": 2}}}, ValueError, "replicas"),
        ({"model_uri": "registry:best", "storage": str(tmp_path)}, ModelURIError, "no registry entry 'best'"),
        ({"model_uri": "s3x:model"}, ModelURIError, "unknown model URI scheme"),
    ]
    for args, exc, words in cases:
        with pytest.raises(exc, match=words):
            build_app(args)


def test_limits_and_options():
    from soundtrack.serving.limits import ServeLimits
    from soundtrack.serving.options import SoundtrackOptions, parse_options
    from soundtrack.serving.upload import UploadError

    lim = ServeLimits.from_dict({"max_steps": 8})
    assert lim.max_steps == 8 and lim.max_upload_bytes == ServeLimits().max_upload_bytes
    with pytest.raises(ValueError, match="must be an integer"):
        ServeLimits(max_pending=2.5)
    model = {"conditions": ["video", "music", "sfx"]}
    opts = parse_options({"guidance_scale": "3", "weight_music": "0.5", "num_steps": "4", "seed": "7",
                          "output": "mp4"}, lim, model)
    assert opts.overrides() == {"guidance_scale": 3.0, "num_steps": 4, "weights": {"music": 0.5}}
    assert (opts.seed, opts.output) == (7, "mp4")
    assert parse_options({"prompt": "  "}, lim, model).prompt is None  # an empty prompt is no prompt
    with pytest.raises(UploadError) as info:
        parse_options({"num_steps": "9"}, lim, model)
    assert (info.value.status, info.value.field, info.value.limit) == (422, "num_steps", 8)
    assert set(SoundtrackOptions.model_fields) == {"guidance_scale", "weight_video", "weight_music", "weight_sfx",
                                                   "weight_text", "num_steps", "seed", "prompt", "output"}


def test_one_knob_table_gives_serve_api_and_tune_the_same_bounds_and_messages(tmp_path):
    """A bad sampler value gets the same message from the Python API, the Serve form and a
    tune config; the form's OpenAPI bounds are the table's."""
    import yaml

    from soundtrack.config import ConfigError
    from soundtrack.pipelines.generator import GeneratorError, apply_overrides
    from soundtrack.pipelines.knobs import KNOBS
    from soundtrack.pipelines.sampler import SamplerConfig
    from soundtrack.serving.limits import ServeLimits
    from soundtrack.serving.options import options_form_schema, parse_options
    from soundtrack.serving.upload import UploadError
    from soundtrack.tuning.config import load_tune_config

    lim, model = ServeLimits(), {"conditions": ["video", "music", "sfx"]}

    def tune_error(params):
        p = tmp_path / "t.yaml"
        p.write_text(yaml.safe_dump({"name": "t", "model": "file:/x", "search": {"params": params}}))
        with pytest.raises(ConfigError) as info:
            load_tune_config(p)
        return str(info.value)

    cases = [  # (Python API override, Serve form field, tune parameter spec)
        ({"guidance_scale": 40.0}, ("guidance_scale", "40"), {"guidance_scale": {"high": 40.0}}),
        ({"weights": {"music": 12.0}}, ("weight_music", "12"), {"weight_music": {"high": 12.0}}),
        ({"selector_tau": 1200}, None, {"selector_tau": {"high": 1200}}),
        ({"num_steps": 0}, ("num_steps", "0"), {"num_steps": {"low": 0, "high": 20, "default": 10}}),
        ({"window_k": 0}, None, {"window_k": {"choices": [0, 8], "default": 8}}),
    ]
    for override, form, params in cases:
        with pytest.raises(GeneratorError) as api:
            apply_overrides(SamplerConfig(), override)
        message = str(api.value)
        name = next(iter(override))
        assert message.startswith(f"{name}") and KNOBS[name].rule() in message, message
        if form is not None:
            with pytest.raises(UploadError) as served:
                parse_options(dict([form]), lim, model)
            assert (served.value.status, served.value.field) == (422, form[0])
            assert served.value.message == f"form field {form[0]!r}: {message}"
        tuned = tune_error(params)
        assert message in tuned and f"search.params.{next(iter(params))}" in tuned, tuned
    # the schema's bounds are the table's
    props = options_form_schema(lim)["properties"]
    assert (props["guidance_scale"]["minimum"], props["guidance_scale"]["maximum"]) == (
        KNOBS["guidance_scale"].low, KNOBS["guidance_scale"].high)
    assert (props["weight_text"]["minimum"], props["weight_text"]["maximum"]) == (KNOBS["weights"].low,
                                                                                KNOBS["weights"].high)
    assert props["num_steps"]["minimum"] == KNOBS["num_steps"].low and props["num_steps"]["maximum"] == lim.max_steps


def _body(parts: list[tuple[str, str | None, bytes]], boundary: str = "bNd") -> bytes:
    out = b""
    for name, filename, data in parts:
        fn = f'; filename="{filename}"' if filename else ""
        out += f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"{fn}\r\n\r\n'.encode() + data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


async def _chunks(data: bytes, n: int = 7):
    for i in range(0, len(data), n):
        yield data[i : i + n]


def _read(data: bytes, dest, **kw):
    from soundtrack.serving.upload import read_multipart

    kw.setdefault("max_bytes", 10_000)
    kw.setdefault("allowed_fields", {"seed", "num_steps"})
    return asyncio.run(read_multipart(_chunks(data), b"bNd", dest, **kw))


def test_streaming_multipart_reader(tmp_path):
    from soundtrack.serving.upload import UploadError, multipart_boundary

    assert multipart_boundary("multipart/form-data; boundary=bNd") == b"bNd"
    with pytest.raises(UploadError) as info:
        multipart_boundary("application/json")
    assert info.value.status == 415
    video = bytes(range(256)) * 10
    up = _read(_body([("seed", None, b"4"), ("video", "a b.mp4", video)]), tmp_path / "v")
    assert up.fields == {"seed": "4"} and up.filename == "a b.mp4" and up.file_bytes == len(video)
    assert (tmp_path / "v").read_bytes() == video  # streamed to disk in 7-byte chunks, intact
    bad = [
        (_body([("video", "a.mp4", video)]), {"max_bytes": 1000}, 413, None),
        (_body([("cfg", None, b"1"), ("video", "a.mp4", b"x")]), {}, 422, "cfg"),
        (_body([("seed", None, b"1"), ("seed", None, b"2")]), {}, 422, "seed"),
        (_body([("seed", None, b"1" * 100)]), {"max_field_bytes": 10}, 422, "seed"),
        (_body([("video", "a.mp4", b"x")])[:-8], {}, 400, None),  # no closing boundary
    ]
    for data, kw, status, field in bad:
        with pytest.raises(UploadError) as info:
            _read(data, tmp_path / "w", **kw)
        assert (info.value.status, info.value.field) == (status, field), info.value.message


def test_proxy_body_limit_middleware():
    """The real middleware around a real ASGI app (Starlette), driven over HTTP in-process."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from soundtrack.serving.proxy import BodyLimitMiddleware, proxy_middlewares

    seen = []

    async def echo(request: Request):
        n = 0
        async for chunk in request.stream():
            n += len(chunk)
        seen.append(n)
        return JSONResponse({"bytes": n})

    app = BodyLimitMiddleware(Starlette(routes=[Route("/", echo, methods=["POST"])]), max_body_bytes=1000)
    client = TestClient(app)
    assert client.post("/", content=b"x" * 1000).json() == {"bytes": 1000}
    r = client.post("/", content=b"x" * 1001)  # declared length over the limit: refused unread
    assert r.status_code == 413 and r.json()["limit"] == 1000 and seen == [1000]

    def gen():
        for _ in range(50):
            yield b"y" * 100

    r = client.post("/", content=gen())  # chunked, no length: cut off while streaming
    assert r.status_code == 413 and "longer" in r.json()["message"]
    assert len(proxy_middlewares()) == 1
