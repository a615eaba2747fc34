"""The web page's server side below Ray: the runs view and clip picker (what they read and
refuse), the result analysis, the page's files and their security headers, the service's
metrics middleware and the graceful-shutdown check. The page in a real browser is in
test_serve.py (test_web_page_generates_plays_cancels_and_browses_runs)."""

from __future__ import annotations

import base64
import json
import math

import numpy as np
import pytest

from soundtrack.serving import overview
from soundtrack.serving.analysis import MAX_COLUMNS, mel_image, rhythm_curve, soundtrack_analysis
from soundtrack.storage import Store


def _tune_run(root, name="search-1", rows=3, card=None):
    d = root / "tune" / name
    d.mkdir(parents=True)
    lines = ["order,trial_id,status,error,param_guidance_scale,score,clips,complete,time_s"]
    for i in range(rows):
        score = "nan" if i == rows - 1 else f"{1 + i / 10}"
        lines.append(f"{i + 1},t{i},done,Traceback at /srv/secret/x.py,{2 + i},{score},4,True,1.5")
    (d / "trials.csv").write_text("\n".join(lines) + "\n")
    (d / "history.png").write_bytes(b"\x89PNG fake")
    (d / "notes.txt").write_text("not a plot")
    (d / "run.json").write_text(json.dumps(card or {"status": "finished", "host": "secret-host", "command": "x",
                                                    "summary": {"best": {"score": 1.1, "path": "/srv/runs/x"}}}))
    return d


def test_tune_run_reads_trials_drops_errors_and_non_finite(tmp_path):
    _tune_run(tmp_path)
    view = overview.tune_run(Store(tmp_path), "search-1")
    assert view["status"] == "finished" and view["trials"]["n"] == 3
    assert "error" not in view["trials"]["columns"]  # server-side messages are not shown
    score = view["trials"]["columns"].index("score")
    assert [r[score] for r in view["trials"]["rows"]] == [1.0, 1.1, None]  # NaN -> null (JSON has no NaN)
    assert view["plots"] == ["history.png"]  # PNGs only
    assert "/srv" not in json.dumps(view) and "secret-host" not in json.dumps(view)
    json.dumps(view, allow_nan=False)


def test_a_run_without_its_files_is_still_listed(tmp_path):
    (tmp_path / "tune" / "half-written").mkdir(parents=True)
    (tmp_path / "bench" / "running").mkdir(parents=True)
    (tmp_path / "tune" / "..hidden").mkdir(parents=True)
    out = overview.runs_overview(Store(tmp_path))
    assert [r["name"] for r in out["tune"]] == ["half-written"] and out["tune"][0]["trials"]["n"] == 0
    assert out["bench"][0]["status"] == "running" and out["bench"][0]["rows"] == []
    assert out["registry"] == []


def test_bench_run_rows_metrics_first_and_intervals(tmp_path):
    d = tmp_path / "bench" / "b"
    d.mkdir(parents=True)
    (d / "summary.json").write_text(json.dumps({"clips": 8, "seeds": [0, 1], "methods": {
        "gt": {"zz_extra": {"mean": 2.0, "ci95": [1.0, 3.0]}, "f1": {"mean": 0.5, "ci95": [0.4, 0.6]}},
        "ours": {"f1": {"mean": float("nan"), "ci95": [float("nan"), float("nan")]}, "not_a_metric": 3}}}))
    (d / "bench.png").write_bytes(b"png")
    view = overview.bench_run(Store(tmp_path), "b")
    assert view["metrics"] == ["f1", "zz_extra"] and view["plots"] == ["bench.png"]
    rows = {r["method"]: r["values"] for r in view["rows"]}
    assert rows["gt"]["f1"] == [0.5, 0.4, 0.6] and rows["ours"]["f1"] == [None, None, None]
    assert "zz_extra" not in rows["ours"]


@pytest.mark.parametrize("stage,name,plot", [
    ("tune", "search-1", "../../../etc/passwd"), ("tune", "..", "history.png"), ("tune", "search-1", "notes.txt"),
    ("train", "search-1", "history.png"), ("tune", "other", "history.png"), ("tune", "search-1", "missing.png"),
    ("tune", "search-1/../search-1", "history.png"),
])
def test_plots_are_served_only_when_listed(tmp_path, stage, name, plot):
    _tune_run(tmp_path)
    with pytest.raises(overview.OverviewError):
        overview.plot_bytes(Store(tmp_path), stage, name, plot)


def test_clips_are_listed_and_served_only_from_data_runs(tmp_path):
    v = tmp_path / "data" / "synth-a" / "videos"
    v.mkdir(parents=True)
    (v / "c1.mp4").write_bytes(b"mp4 bytes")
    (v / "c2.mkv").write_bytes(b"not offered")
    store = Store(tmp_path)
    assert overview.list_clips(store) == [{"run": "synth-a", "clip": "c1.mp4"}]
    assert overview.clip_bytes(store, "synth-a", "c1.mp4") == b"mp4 bytes"
    for run, clip in (("synth-a", "c2.mkv"), ("synth-a", "../videos/c1.mp4"), ("..", "c1.mp4")):
        with pytest.raises(overview.OverviewError):
            overview.clip_bytes(store, run, clip)


def test_registry_cards_are_scrubbed(tmp_path):
    from soundtrack.pipelines.generator import build_tiny_generator
    from soundtrack.stages.registry import register

    build_tiny_generator(tmp_path / "m", seed=0).save(tmp_path / "m")
    register("best", tmp_path / "m", {"guidance_scale": 3.0}, {"purpose": "test", "command": "secret --cmd"},
             storage=str(tmp_path / "runs"))
    (entry,) = overview.runs_overview(Store(tmp_path / "runs"))["registry"]
    assert entry["name"] == "best" and entry["settings"]["guidance_scale"] == 3.0
    text = json.dumps(entry)
    assert str(tmp_path) not in text and "secret --cmd" not in text and "source_model" not in entry


def test_mel_image_is_bounded_and_levels_decode(tmp_path):
    sr = 16000
    t = np.arange(600 * sr) / sr  # ten minutes
    wav = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    m = mel_image(wav, sr)
    levels = np.frombuffer(base64.b64decode(m["levels_b64"]), np.uint8).reshape(m["n_mels"], m["columns"])
    assert m["columns"] <= MAX_COLUMNS and m["columns"] * m["hop_s"] >= 599  # the whole track in 800 columns
    assert levels.max() == 255 and levels.min() < 100  # the tone's band is the loudest, others far below
    band = levels.mean(axis=1).argmax()
    assert 0 < band < m["n_mels"] - 1
    short = mel_image(wav[:sr], sr)
    assert short["hop_s"] == pytest.approx(0.01) and short["columns"] == 101  # 10 ms hop for short tracks
    silent = mel_image(np.zeros(sr, np.float32), sr)
    assert np.frombuffer(base64.b64decode(silent["levels_b64"]), np.uint8).max() == 0


def test_rhythm_curve_keeps_a_one_frame_flash_when_pooled():
    frames = np.zeros((6000, 8, 8, 3), np.uint8)  # 10 min at 10 fps
    frames[3001] = 255  # one flash
    r = rhythm_curve(frames, fps=10.0)
    assert len(r["values"]) <= MAX_COLUMNS and r["step_s"] == pytest.approx(0.8)
    peak = int(np.argmax(r["values"]))
    assert r["values"][peak] == pytest.approx(1.0) and peak * r["step_s"] <= 300.1 < (peak + 1) * r["step_s"]


def test_analysis_refuses_non_finite_samples_and_reports_rms():
    wav = np.full(16000, 0.5, np.float32)
    a = soundtrack_analysis(wav, 16000, None, 10.0)
    assert a["rms"] == pytest.approx(0.5) and a["rhythm"] is None and a["seconds"] == 1.0
    wav[3] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        soundtrack_analysis(wav, 16000, None, 10.0)


def test_page_files_and_security_headers():
    from soundtrack.serving.ingress import UI_ASSETS, UI_CSP, _ui_response, ui_asset

    html = ui_asset("index.html").decode()
    assert 'src="ui/app.js"' in html and 'href="ui/app.css"' in html
    for name in UI_ASSETS:  # no other origin anywhere in the page (it must work offline)
        text = ui_asset(name).decode()
        assert "http://" not in text and "https://" not in text and "//cdn" not in text, name
    r = _ui_response("app.js")
    assert r.headers["content-security-policy"] == UI_CSP and "default-src 'self'" in UI_CSP
    assert r.media_type.startswith("text/javascript") and r.headers["x-content-type-options"] == "nosniff"


def test_graceful_shutdown_is_at_least_the_request_timeout():
    import yaml

    from soundtrack.serving.app import check_graceful_shutdown
    from soundtrack.serving.limits import DEFAULT_REQUEST_TIMEOUT_S, GENERATOR_NAME

    assert min(check_graceful_shutdown({}, DEFAULT_REQUEST_TIMEOUT_S).values()) >= DEFAULT_REQUEST_TIMEOUT_S
    with pytest.raises(ValueError, match="graceful_shutdown_timeout_s.*shorter than the request timeout"):
        check_graceful_shutdown({GENERATOR_NAME: {"graceful_shutdown_timeout_s": 20}}, 120)
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    for path, app_path in ((repo / "serve/config.yaml", ("applications",)),
                           (repo / "serve/config.cluster.yaml", ("applications",))):
        cfg = yaml.safe_load(path.read_text())
        timeout = cfg["http_options"]["request_timeout_s"]
        deps = {d["name"]: d for d in cfg[app_path[0]][0]["deployments"]}
        check_graceful_shutdown(deps, timeout)  # every shipped config keeps requests through a scale-down
        assert all(d["graceful_shutdown_timeout_s"] >= timeout for d in deps.values()), path


def test_metrics_middleware_counts_answers_by_route_and_code():
    """The ASGI layer on a real FastAPI app (no Ray: the counts are read from the recorder)."""
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from soundtrack.serving.metrics import AnswerMetrics, ServiceMetrics

    seen = []

    class Recorder(ServiceMetrics):
        def record(self, route, status, code, seconds):
            seen.append((route, status, code))
            assert seconds >= 0 and math.isfinite(seconds)

    app = FastAPI()

    @app.get("/v1/things/{thing_id}")
    async def thing(thing_id: str):
        from fastapi.responses import JSONResponse

        if thing_id == "bad":
            return JSONResponse({"error": "no_thing"}, status_code=404, headers={"X-Soundtrack-Error": "no_thing"})
        return {"id": thing_id}

    app.add_middleware(AnswerMetrics, metrics=Recorder())
    client = TestClient(app)
    client.get("/v1/things/a")
    client.get("/v1/things/bad")
    client.get("/nowhere")
    assert seen == [("/v1/things/{thing_id}", 200, None), ("/v1/things/{thing_id}", 404, "no_thing"),
                    ("other", 404, None)]
    assert ServiceMetrics()._metrics() is None  # outside a Ray worker: nothing is recorded, nothing fails


def test_model_card_with_non_finite_numbers_is_still_json():
    """A card's NaN (a metric of a diverged trial) made GET /v1/model answer 500 (found by the
    page on the demo's registry model): non-finite floats become null."""
    from soundtrack.serving.guard import public_model_info

    out = public_model_info({"uri": "registry:best", "card": {"metrics": {"kl": float("nan"), "f1": 0.5,
                                                                          "fad": float("inf")}}})
    assert out["card"]["metrics"] == {"kl": None, "f1": 0.5, "fad": None}
    json.dumps(out, allow_nan=False)
