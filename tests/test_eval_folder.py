"""``soundtrack eval``: scoring a folder of audio from any system (``soundtrack.eval.folder``).

Unit tier, no Ray: pairing by name, decoding and resampling, windows and common spans,
per-file errors, the visual-event detector, and the command end to end on small folders
written here (a few seconds of clicks, tones and noise; no model).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from soundtrack import cli
from soundtrack.data.media import write_mp4
from soundtrack.errors import MediaError, SoundtrackError
from soundtrack.eval.folder import (
    FolderError,
    FolderEvalConfig,
    Pair,
    default_out,
    evaluate_folder,
    fit_length,
    load_audio,
    pair_folders,
    score_pair,
    scored_windows,
    visual_events,
)

SR = 16000


def _touch(root: Path, *names: str) -> None:
    for n in names:
        p = root / n
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")


def _tone(seconds: float, hz: float = 440.0, sr: int = SR, amp: float = 0.3) -> np.ndarray:
    return (amp * np.sin(2 * np.pi * hz * np.arange(int(round(seconds * sr))) / sr)).astype(np.float32)


def _clicks(times, seconds: float, sr: int = SR) -> np.ndarray:
    wav = np.zeros(int(round(seconds * sr)), np.float32)
    rng = np.random.default_rng(0)
    for t in times:
        i = int(t * sr)
        n = min(800, len(wav) - i)
        wav[i:i + n] += (rng.standard_normal(n) * np.exp(-np.arange(n) / 120) * 0.5).astype(np.float32)
    return wav


def _flash_video(path: Path, frames_at, n: int = 30) -> None:
    frames = np.full((n, 32, 32, 3), 80, np.uint8)
    for i in frames_at:
        frames[i] = 255
    write_mp4(path, frames, 10.0)


# ----------------------------------------------------------------------------- pairing


def test_pairing_by_name_exact_loose_duplicates_and_leftovers(tmp_path):
    gen, ref, vid = tmp_path / "gen", tmp_path / "ref", tmp_path / "vid"
    _touch(gen, "a.wav", "b.flac", "b.mp3", "sub/Cello.wav", "only_gen.wav", "readme.md", ".hidden.wav",
           ".cache/x.wav", "clip.mp4")
    _touch(ref, "a.flac", "b.wav", "cello.wav", "only_ref.wav", "notes.txt")
    _touch(vid, "a.mp4", "sub/Cello.mkv", "clip.mp4", "stray.mov")
    p = pair_folders(gen, ref, vid)
    by = {x.key: x for x in p.pairs}
    assert sorted(by) == ["a", "b", "clip", "only_gen", "sub/Cello"]  # hidden files and folders skipped
    assert by["a"].ref.name == "a.flac" and by["a"].video.name == "a.mp4"
    assert by["b"].gen.name == "b.flac" and by["b"].ref.name == "b.wav"  # .flac before .mp3
    assert p.duplicates["generated"] == [{"key": "b", "kept": "b.flac", "dropped": "b.mp3"}]
    assert by["sub/Cello"].ref.name == "cello.wav" and by["sub/Cello"].video.name == "Cello.mkv"
    assert p.loose == [{"key": "sub/Cello", "role": "reference", "file": "cello.wav"}]
    assert by["clip"].gen.suffix == ".mp4" and by["clip"].ref is None  # a video with the soundtrack is generated audio
    assert p.no_ref == ["clip", "only_gen"] and p.ref_only == ["only_ref"]
    assert p.no_video == ["b", "only_gen"] and p.video_only == ["stray"]
    assert p.ignored["generated"] == ["readme.md"] and p.ignored["reference"] == ["notes.txt"]
    d = p.to_dict()
    assert d["pairs"] == 5 and d["with_ref"] == 3 and d["with_video"] == 3


def test_pairing_errors_name_the_problem(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FolderError, match="is empty"):
        pair_folders(tmp_path / "empty")
    with pytest.raises(FolderError, match="does not exist"):
        pair_folders(tmp_path / "nope")
    _touch(tmp_path / "txt", "a.txt", "b.csv")
    with pytest.raises(FolderError, match=r"has no audio file \(2 other files, e.g. 'a.txt', 'b.csv'\)"):
        pair_folders(tmp_path / "txt")
    _touch(tmp_path / "gen", "x1.wav", "x2.wav")
    _touch(tmp_path / "ref", "y1.wav", "y2.wav")
    with pytest.raises(FolderError, match=r"no generated file has a partner.*'x1', 'x2'.*'y1', 'y2'.*Rename"):
        pair_folders(tmp_path / "gen", tmp_path / "ref")
    _touch(tmp_path / "novid", "x1.wav")
    with pytest.raises(FolderError, match="has no video file"):
        pair_folders(tmp_path / "gen", video_dir=tmp_path / "novid")
    assert issubclass(FolderError, SoundtrackError)


# ----------------------------------------------------------------------------- loading, lengths, windows


def test_load_audio_downmixes_and_resamples_any_format(tmp_path):
    t44 = _tone(1.0, sr=44100)
    sf.write(tmp_path / "st.wav", np.stack([t44, 0.5 * t44], 1), 44100, subtype="PCM_24")
    a = load_audio(tmp_path / "st.wav")
    assert (a.orig_sr, a.channels) == (44100, 2) and a.wav.dtype == np.float32 and a.wav.ndim == 1
    assert len(a.wav) == SR and abs(a.seconds - 1.0) < 1e-9
    ref = _tone(1.0) * 0.75  # the mean of the two channels
    assert np.abs(a.wav[400:-400] - ref[400:-400]).max() < 0.02
    sf.write(tmp_path / "b.flac", _tone(0.5, sr=22050), 22050)
    assert len(load_audio(tmp_path / "b.flac").wav) == SR // 2
    write_mp4(tmp_path / "v.mp4", np.zeros((10, 32, 32, 3), np.uint8), 10.0, audio=_tone(1.0))
    v = load_audio(tmp_path / "v.mp4")  # a video's audio track, through PyAV
    assert abs(v.seconds - 1.0) < 0.1 and v.orig_sr == SR
    (tmp_path / "empty.wav").write_bytes(b"")
    (tmp_path / "bad.wav").write_bytes(b"RIFF....WAVEnot audio at all")
    x = _tone(0.5)
    x[100] = np.nan
    sf.write(tmp_path / "nan.wav", x, SR, subtype="FLOAT")
    sf.write(tmp_path / "none.wav", np.zeros(0, np.float32), SR)
    for name, reason, words in (("empty.wav", "empty", "empty file"), ("bad.wav", "unreadable", "not a readable audio"),
                                ("nan.wav", "unreadable", "1 non-finite"), ("none.wav", "too_short", "no audio samples")):
        with pytest.raises(MediaError, match=words) as e:
            load_audio(tmp_path / name)
        assert e.value.reason == reason and name in str(e.value)


def test_windows_cover_the_span_between_half_and_one_and_a_half_windows():
    w = 10 * SR
    assert scored_windows(int(1.5 * w), 10.0) == [(0, int(1.5 * w))]
    assert scored_windows(int(2.3 * w), 10.0) == [(0, w), (w, int(2.3 * w))]  # 0.3 joins the last
    assert scored_windows(int(2.6 * w), 10.0) == [(0, w), (w, 2 * w), (2 * w, int(2.6 * w))]
    assert scored_windows(5 * w, 0) == [(0, 5 * w)]
    for n in (SR, 3 * w + 1, int(7.49 * w)):
        spans = scored_windows(n, 10.0)
        assert spans[0][0] == 0 and spans[-1][1] == n and all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    assert fit_length(np.arange(3), 7).tolist() == [0, 1, 2, 0, 1, 2, 0]
    assert fit_length(np.arange(5), 2).tolist() == [0, 1]


def test_visual_events_find_flash_onsets_and_cuts():
    frames = np.full((40, 32, 32, 3), 60, np.uint8)
    for i in (5, 15, 25):  # one-frame flashes: the event is the flash's first frame, not its return
        frames[i] = 255
    frames[32:] = (200, 20, 20)  # a cut to another picture
    assert visual_events(frames, 10.0).tolist() == pytest.approx([0.5, 1.5, 2.5, 3.2])
    assert visual_events(np.full((20, 32, 32, 3), 60, np.uint8)).size == 0  # a still picture: no event


def test_score_pair_scores_the_common_span_and_keeps_going_on_errors(tmp_path):
    sf.write(tmp_path / "g.wav", _tone(3.0), SR)
    sf.write(tmp_path / "r.wav", _tone(2.0), SR)
    s = score_pair(Pair("g", tmp_path / "g.wav", tmp_path / "r.wav"), FolderEvalConfig(window_s=1.0))
    assert s.error is None and s.ref_error is None
    assert s.info["gen_s"] == 3.0 and s.info["ref_s"] == 2.0 and s.info["scored_s"] == 2.0 and s.info["windows"] == 2
    assert [(w["start_s"], w["end_s"]) for w in s.gen] == [(0.0, 1.0), (1.0, 2.0)] and len(s.ref) == 2
    assert all(w["melody_acc"] > 0.9 for w in s.gen) and np.isnan(s.gen[0]["f1"])  # no video: no sync
    assert s.dyn_gen.shape == s.dyn_ref.shape
    (tmp_path / "bad.wav").write_bytes(b"garbage")
    s = score_pair(Pair("g", tmp_path / "g.wav", tmp_path / "bad.wav"))
    assert s.error is None and "not a readable audio file" in s.ref_error and not s.ref
    assert np.isnan(s.gen[0]["melody_acc"]) and np.isfinite(s.gen[0]["onset_rate"])  # scored without it
    sf.write(tmp_path / "short.wav", _tone(0.2), SR)
    s = score_pair(Pair("g", tmp_path / "g.wav", tmp_path / "short.wav"))
    assert "common span of its inputs is 0.20 s" in s.error and "reference 0.20 s" in s.error and not s.gen


# ----------------------------------------------------------------------------- the command


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """gen / ref / vid: on-time and late clicks against flashing videos, a tone, noise, silence,
    a 44.1 kHz stereo file, a longer file, a broken file, an unmatched file."""
    root = tmp_path_factory.mktemp("evalfolder")
    gen, ref, vid = root / "gen", root / "ref", root / "vid"
    for d in (gen, ref, vid):
        d.mkdir()
    beats = np.arange(0.2, 3.0, 0.5)
    sf.write(gen / "ontime.wav", _clicks(beats, 3.0), SR)
    sf.write(gen / "late.wav", _clicks(beats + 0.25, 3.0), SR)
    sf.write(gen / "tone.wav", _tone(3.0), SR)
    sf.write(gen / "noise.wav", (0.1 * np.random.default_rng(0).standard_normal(3 * SR)).astype(np.float32), SR)
    sf.write(gen / "silence.wav", np.zeros(3 * SR, np.float32), SR)
    t44 = _tone(3.0, sr=44100)
    sf.write(gen / "stereo.wav", np.stack([t44, t44], 1), 44100)
    sf.write(gen / "longer.wav", _tone(4.0), SR)
    (gen / "broken.wav").write_bytes(b"RIFF0000WAVEbroken")
    sf.write(gen / "unpaired.wav", _tone(2.0), SR)
    for k in ("ontime", "late", "tone", "noise", "silence", "stereo", "longer"):
        sf.write(ref / f"{k}.flac", _clicks(beats, 3.0) if k in ("ontime", "late", "silence") else _tone(3.0), SR)
        _flash_video(vid / f"{k}.mp4", [int(round(b * 10)) for b in beats])
    sf.write(ref / "broken.wav", _tone(3.0), SR)
    return root


def test_cli_scores_a_folder_end_to_end(folders, capsys):
    out = folders / "out"
    code = cli.main(["eval", str(folders / "gen"), "--ref", str(folders / "ref"), "--videos", str(folders / "vid"),
                     "--out", str(out), "--n-boot", "50", "--window-s", "2"])
    printed = capsys.readouterr().out
    assert code == 0 and f"eval: {out}" in printed and "## Against the video's visual events" in printed
    for f in ("summary.md", "summary.json", "results.parquet", "results.csv", "windows.parquet", "set_metrics.csv",
              "eval.png"):
        assert (out / f).stat().st_size > 0, f
    t = pd.read_parquet(out / "results.parquet").set_index(["method", "clip_id"])
    gen = t.loc["generated"]
    assert len(gen) == 9 and gen.loc["broken", "failed"] and "not a readable audio file" in gen.loc["broken", "error"]
    assert not gen.drop("broken")["failed"].any()
    assert gen.loc["ontime", "f1"] > 0.8 and gen.loc["late", "f1"] < 0.3  # 0.25 s late misses every 0.1 s window
    assert gen.loc["stereo", "orig_sr"] == 44100 and gen.loc["stereo", "channels"] == 2
    assert gen.loc["stereo", "melody_acc"] > 0.95 and gen.loc["stereo", "dyn_r"] > 0.9
    assert gen.loc["longer", "scored_s"] == pytest.approx(3.0) and gen.loc["longer", "gen_s"] == 4.0
    assert gen.loc["silence", "level_db"] == -100.0 and gen.loc["silence", "onset_rate"] == 0.0
    assert np.isnan(gen.loc["unpaired", "melody_acc"]) and np.isfinite(gen.loc["unpaired", "onset_rate"])
    refs = t.loc["reference"]
    assert "broken" in refs.index and not refs.loc["broken", "failed"]  # its generation failed; the reference scores
    assert refs["melody_acc"].isna().all()  # never scored against itself
    w = pd.read_parquet(out / "windows.parquet")
    assert set(w[(w["method"] == "generated") & (w["clip_id"] == "tone")]["window"]) == {0}  # 3 s <= 1.5 x 2 s
    s = json.loads((out / "summary.json").read_text())
    assert s["files"] == 9 and s["scored"] == 8 and s["pairing"]["no_ref"] == ["unpaired"]
    assert s["silent"] == ["silence"] and s["length_mismatch"] == ["longer"]
    assert {"f1", "melody_acc", "csd", "dyn_macro"} <= set(s["scored_metrics"])
    assert s["skipped_metrics"]["fad"] == "needs --evaluator and --ref"
    assert s["methods"]["generated"]["failed"] == {"n": 1, "of": 9}
    assert "generated - reference" in s["paired_differences"]
    md = (out / "summary.md").read_text()
    for words in ("Not scored: is (needs --evaluator)", "Generated files without a reference (1): `unpaired`",
                  "Silent generated files", "## Failed files", "| `broken` |"):
        assert words in md, words


def test_cli_audio_alone_default_out_and_bad_input_exit_2(folders, tmp_path, capsys):
    code = cli.main(["eval", str(folders / "gen"), "--n-boot", "20", "--max-files", "3"])
    assert code == 0
    out = default_out(folders / "gen")
    assert out == folders / "eval-gen" and (out / "summary.md").exists()
    s = json.loads((out / "summary.json").read_text())
    assert s["files"] == 3 and set(s["scored_metrics"]) == {"onset_rate", "pche", "gps", "adv", "chroma_conc",
                                                           "flatness"}
    assert list(s["methods"]) == ["generated"] and s["inputs"]["reference"] is None
    capsys.readouterr()
    (tmp_path / "empty").mkdir()
    (tmp_path / "zz").mkdir()
    sf.write(tmp_path / "zz" / "zz.wav", _tone(1.0), SR)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.wav").write_bytes(b"nope")
    cases = [(["eval", str(tmp_path / "empty")], "is empty"),
             (["eval", str(tmp_path / "missing")], "does not exist"),
             (["eval", str(folders / "gen"), "--ref", str(tmp_path / "zz")], "no generated file has a partner"),
             (["eval", str(folders / "gen"), "--window-s", "0.4"], "window_s=0.4 (--window-s)"),
             (["eval", str(folders / "gen"), "--evaluator", str(tmp_path)], "not an evaluator directory"),
             (["eval", str(tmp_path / "bad")], "none of the 1 generated files")]
    for argv, words in cases:
        assert cli.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert words in err, (argv, err)


def test_evaluator_metrics_with_a_tiny_evaluator(folders, tmp_path):
    import torch

    from soundtrack.eval.scoring import Evaluator
    from soundtrack.models.encoders import ContrastiveConfig, build_contrastive

    torch.manual_seed(0)
    enc = build_contrastive(ContrastiveConfig.tiny(video_input_size=32, video_channels=(8, 16), video_dim=16,
                                                   audio_channels=16, audio_dim=16, embed_dim=32, use_text=False))
    Evaluator(enc, torch.randn(3, 280), torch.zeros(3), ["a", "b", "c"], {"val_accuracy": 0.5}).save(tmp_path / "ev")
    out = evaluate_folder(folders / "gen", folders / "ref", folders / "vid", tmp_path / "out", tmp_path / "ev",
                          FolderEvalConfig(window_s=2.0, n_boot=20, max_files=6))
    t = pd.read_parquet(out / "results.parquet")
    gen = t[(t["method"] == "generated") & ~t["failed"]]
    for m in ("kl", "sim", "p_at_1", "p_at_5"):
        assert gen[m].notna().all(), m
    assert t.loc[t["method"] == "reference", "kl"].isna().all()  # KL of the reference against itself: not scored
    s = json.loads((out / "summary.json").read_text())
    assert np.isfinite(s["methods"]["generated"]["is"]["mean"]) and "fad" in s["methods"]["generated"]
    sets = pd.read_csv(out / "set_metrics.csv")
    assert {"fad", "is", "fad_floor", "kid"} <= set(sets["metric"])  # the bench's FAD floor beside FAD
    assert not s["skipped_metrics"] and "Evaluator: encoders" in (out / "summary.md").read_text()


def test_backbone_fad_and_transcriber_without_an_evaluator(folders, tmp_path):
    """``--embedder``: FAD / KID on a standard backbone (a tiny VGGish in torchvggish's format),
    no evaluator needed; ``--transcriber basic_pitch``: note-level PCHE, and the table says so."""
    import torch

    from soundtrack.models.audio_embedders import VGGishNet

    torch.manual_seed(0)
    vgg = VGGishNet(conv=(2, 4, 4, 4, 8, 8), fc=(16, 16, 8))
    with torch.no_grad():  # positive last-layer biases: the final ReLU keeps most units alive
        vgg.embeddings[4].bias.add_(0.5)
    torch.save(vgg.state_dict(), tmp_path / "vggish.pth")
    cfg = FolderEvalConfig(window_s=2.0, n_boot=20, max_files=6, embedder=f"vggish:{tmp_path / 'vggish.pth'}",
                           transcriber="basic_pitch")
    out = evaluate_folder(folders / "gen", folders / "ref", None, tmp_path / "out", None, cfg)
    s = json.loads((out / "summary.json").read_text())
    assert {"fad", "fad_floor", "kid"} <= set(s["scored_metrics"]) and "is" in s["skipped_metrics"]
    assert np.isfinite(s["methods"]["generated"]["fad"]["mean"]) and s["fad_encoder"].startswith("vggish sha256:")
    md = (out / "summary.md").read_text()
    assert s["fad_encoder"] in md and "notes by basic-pitch" in md
    t = pd.read_parquet(out / "results.parquet")
    assert t.loc[t["method"] == "generated", "pche"].notna().any()
    with pytest.raises(FolderError, match="transcriber"):
        FolderEvalConfig(transcriber="crepe").check()
