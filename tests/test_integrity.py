"""Integrity of what the platform writes and reads (issue 16), below Ray.

* Weight manifests (``weights.sha256.json``): every weights folder a save writes lists the
  sha256 and size of its weight files; a load checks them, naming the file, the expected
  and found hash prefixes and what to do; a folder saved before manifests loads, logged once.
* Paths: every path a model directory names stays inside it (no absolute path, ``..`` or
  symlink leading out).
* Corrupt reads: a truncated or garbled shard or checkpoint is a clear
  :class:`~soundtrack.errors.SoundtrackError`; on resume a corrupt newest checkpoint falls
  back to the previous one.
* A full disk, produced for real: the process's file-size limit (``RLIMIT_FSIZE``, with
  ``SIGXFSZ`` ignored) makes a write past it fail with ``EFBIG`` in the OS, and, where this
  process may mount, a small tmpfs gives a real ``ENOSPC``. Nothing half-written is left
  under a final name and the previous good state stays.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import logging
import os
import resource
import shutil
import signal
import subprocess
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from soundtrack.config import FeaturizeSection, TrainSection, to_dict
from soundtrack.data import shards
from soundtrack.data.integrity import (
    MANIFEST_FILE,
    contained,
    sha256_file,
    verify_directory,
    write_file,
)
from soundtrack.errors import DiskFullError, GeneratorError, IntegrityError, SoundtrackError, TrainingError
from soundtrack.models.encoders import ContrastiveConfig, ContrastiveModel, build_contrastive
from soundtrack.models.unet import DenoiserConfig
from soundtrack.pipelines.generator import GENERATOR_FILE, SoundtrackGenerator, build_tiny_generator
from soundtrack.solvers.base import STARTS_FILE, LocalReporter, numpy_batches
from soundtrack.solvers.common import CHECKPOINT_MANIFEST, older_checkpoints
from soundtrack.solvers.diffusion import DiffusionSolver

PARTS = ("encoders", "vae", "denoiser")


# ----------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def file_size_limit(nbytes: int):
    """A real OS write failure: files of this process cannot grow past ``nbytes`` (EFBIG)."""
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills the process
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)


@pytest.fixture
def small_disk(tmp_path):
    """A 3 MiB tmpfs (a real ENOSPC), or skip where this process may not mount."""
    d = tmp_path / "disk"
    d.mkdir()
    try:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(d)], capture_output=True, timeout=20)
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.skip(f"cannot mount a tmpfs here ({exc})")
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
    try:
        yield d
    finally:
        if subprocess.run(["umount", str(d)], capture_output=True, timeout=20).returncode != 0:
            subprocess.run(["umount", "-l", str(d)], capture_output=True, timeout=20)


def _flip(path: Path, at: float = 0.5) -> None:
    """Garble one byte of a file (same size, other bytes)."""
    data = bytearray(path.read_bytes())
    i = int(len(data) * at)
    data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _leftovers(root: Path) -> list[str]:
    """Temporary names left anywhere under (or beside) ``root``."""
    here = [root, *root.rglob("*")] if root.exists() else []
    beside = list(root.parent.glob(f".{root.name}.*"))
    return sorted(str(p) for p in here + beside if ".tmp" in p.name or ".old" in p.name or ".staging" in p.name)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("model") / "model"
    gen = build_tiny_generator(root, seed=0, num_steps=2, gl_iterations=2)
    return gen, root


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# ----------------------------------------------------------------------------- manifests


def test_every_weights_folder_of_a_model_directory_has_a_manifest_that_matches(tiny_model):
    _, root = tiny_model
    for part in PARTS:
        doc = json.loads((root / part / MANIFEST_FILE).read_text())
        assert doc["format"] == "soundtrack-weights/1" and doc["algorithm"] == "sha256"
        weights = sorted(p.name for p in (root / part).glob("*.safetensors"))
        assert sorted(doc["files"]) == weights and weights
        for name, rec in doc["files"].items():
            assert rec == {"sha256": sha256_file(root / part / name), "size": (root / part / name).stat().st_size}
        assert verify_directory(root / part) is True


@pytest.mark.parametrize("part,damage", [("denoiser", "flip"), ("vae", "truncate"), ("encoders", "delete")])
def test_a_damaged_weight_file_is_refused_naming_it_and_the_hashes(tiny_model, tmp_path, part, damage):
    _, src = tiny_model
    root = _copy(src, tmp_path / "m")
    weights = next((root / part).glob("*.safetensors"))
    expected = json.loads((root / part / MANIFEST_FILE).read_text())["files"][weights.name]["sha256"]
    {"flip": _flip, "truncate": _truncate, "delete": Path.unlink}[damage](weights)
    with pytest.raises(GeneratorError) as info:
        SoundtrackGenerator.load(root)
    msg = str(info.value)
    assert f"the {part}/ part" in msg
    if damage == "delete":  # the layout check names it first
        assert f"lacks ['{weights.name}']" in msg
    else:
        assert str(weights) in msg
        assert f"{expected[:12]}... expected" in msg and f"{sha256_file(weights)[:12]}... found" in msg
        assert ("truncated" if damage == "truncate" else "garbled") in msg
    assert "re-export" in msg or "copy" in msg


def test_a_directory_saved_before_manifests_loads_and_is_logged_once(tiny_model, tmp_path, caplog):
    gen, src = tiny_model
    root = _copy(src, tmp_path / "old")
    for part in PARTS:
        (root / part / MANIFEST_FILE).unlink()
    with caplog.at_level(logging.WARNING, logger="soundtrack.data.integrity"):
        a = SoundtrackGenerator.load(root)
        SoundtrackGenerator.load(root)
    lines = [r.getMessage() for r in caplog.records if "loaded unverified" in r.getMessage()]
    assert len(lines) == len(PARTS) and all(MANIFEST_FILE in ln for ln in lines)  # once per folder, not per load
    assert a.to_dict() == gen.to_dict()


def test_the_encoders_alone_check_their_weights(tmp_path):
    model = build_contrastive(ContrastiveConfig.tiny(embed_dim=32, video_input_size=None, video_channels=(8, 16),
                                                     video_dim=16, adaptor_groups=4, temporal_heads=4,
                                                     audio_channels=16, audio_dim=16))
    d = model.save(tmp_path / "enc")
    assert json.loads((d / MANIFEST_FILE).read_text())["files"].keys() == {"model.safetensors"}
    ContrastiveModel.load(d)
    _flip(d / "model.safetensors", 0.9)
    with pytest.raises(IntegrityError, match=r"model\.safetensors \(contrastive encoders\) fails its check: sha256 "):
        ContrastiveModel.load(d)
    # No manifest (an old folder) and a torn file: still a clear error, not a safetensors traceback.
    (d / MANIFEST_FILE).unlink()
    _truncate(d / "model.safetensors")
    with pytest.raises(IntegrityError, match=r"not a readable safetensors file .*truncated or garbled"):
        ContrastiveModel.load(d)


def test_a_manifest_that_omits_a_file_the_loader_reads_is_refused(tiny_model, tmp_path):
    _, src = tiny_model
    root = _copy(src, tmp_path / "m")
    (root / "vae" / MANIFEST_FILE).write_text(json.dumps({"format": "soundtrack-weights/1", "files": {}}))
    with pytest.raises(GeneratorError, match=r"does not list \['diffusion_pytorch_model.safetensors'\]"):
        SoundtrackGenerator.load(root)
    (root / "vae" / MANIFEST_FILE).write_text("{not json")
    with pytest.raises(GeneratorError, match="not readable JSON"):
        SoundtrackGenerator.load(root)


# ----------------------------------------------------------------------------- paths


@pytest.mark.parametrize("vocoder", ["/abs/vocoder", "../vocoder", "sub/../../x"])
def test_a_vocoder_path_leaving_the_directory_is_refused(tiny_model, tmp_path, vocoder):
    _, src = tiny_model
    root = _copy(src, tmp_path / "m")
    doc = json.loads((root / GENERATOR_FILE).read_text())
    (root / GENERATOR_FILE).write_text(json.dumps({**doc, "vocoder": vocoder}))
    with pytest.raises(GeneratorError, match="must be relative to it, without '..'"):
        SoundtrackGenerator.load(root)


def test_a_symlink_leading_out_of_the_model_directory_is_refused(tiny_model, tmp_path):
    _, src = tiny_model
    root = _copy(src, tmp_path / "m")
    outside = _copy(root / "denoiser", tmp_path / "elsewhere")
    shutil.rmtree(root / "denoiser")
    (root / "denoiser").symlink_to(outside, target_is_directory=True)
    with pytest.raises(GeneratorError, match=r"the denoiser/ part 'denoiser' resolves to .*elsewhere, outside"):
        SoundtrackGenerator.load(root)
    # A file linked out of a part is refused too; a link that stays inside is fine.
    (root / "denoiser").unlink()
    _copy(outside, root / "denoiser")
    (root / "denoiser" / "denoiser.safetensors").unlink()
    (root / "denoiser" / "denoiser.safetensors").symlink_to(outside / "denoiser.safetensors")
    with pytest.raises(GeneratorError, match="outside the directory"):
        SoundtrackGenerator.load(root)
    assert contained(root, "denoiser/x") == root / "denoiser" / "x"


# ----------------------------------------------------------------------------- shards


def _rows(n: int, start: int = 0, nbytes: int = 1000) -> list[dict]:
    rng = np.random.default_rng(start)
    out = []
    for i in range(start, start + n):
        row = {"clip_id": f"c{i:03d}", "split": "train", "source_id": f"s{i}"}
        row.update(shards.pack_array("frames", rng.integers(0, 255, (nbytes // 12, 2, 2, 3), dtype=np.uint8)))
        out.append(row)
    return out


def _spec(shard: int, rows: list[dict]) -> dict:
    return {"shard": shard, "clip_ids": [r["clip_id"] for r in rows],
            "rows": json.dumps([{"clip_id": r["clip_id"], "video_path": "x.mp4"} for r in rows])}


@pytest.fixture
def shard_run(tmp_path, monkeypatch):
    """A featurize run directory whose rows come from memory (the write path is the real one)."""
    out = tmp_path / "feats"
    for sub in ("shards", "done"):
        (out / sub).mkdir(parents=True)
    made: dict[str, dict] = {}
    monkeypatch.setattr(shards, "featurize_row", lambda r, section, fcfg=None: made[r["clip_id"]])

    def write(shard: int, rows: list[dict]) -> dict:
        made.update({r["clip_id"]: r for r in rows})
        return shards.write_shard(out, _spec(shard, rows), FeaturizeSection(), fcfg=object())

    return out, write


def test_a_shard_marker_records_the_shards_size_and_sha256_and_a_mismatch_is_redone(shard_run):
    out, write = shard_run
    summary = write(0, _rows(3))
    f = out / "shards" / "shard-00000.parquet"
    assert summary["bytes"] == f.stat().st_size and summary["sha256"] == sha256_file(f)
    assert pq.ParquetFile(f).metadata.num_rows == 3
    assert set(shards.completed_shards(out)) == {0}
    _truncate(f)
    assert shards.completed_shards(out) == {}  # the next run writes it again


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_a_corrupt_shard_is_a_clear_error_naming_it(shard_run, damage):
    out, write = shard_run
    write(0, _rows(4, nbytes=20000))
    f = out / "shards" / "shard-00000.parquet"
    (_truncate if damage == "truncate" else _flip)(f)
    with pytest.raises(IntegrityError) as info:
        shards.read_shards(out)
    msg = str(info.value)
    assert str(f) in msg and "truncated or garbled" in msg and "done/shard-00000.json" in msg and "--force" in msg
    with pytest.raises(IntegrityError):
        shards.load_split(out, "train", ["frames"])
    if damage == "truncate":  # the footer is gone: caught before Ray Data reads the files
        with pytest.raises(IntegrityError, match="shard-00000.parquet"):
            shards.shard_files(out)


def test_shards_read_back_and_a_missing_column_is_still_named_by_pyarrow(shard_run):
    out, write = shard_run
    write(0, _rows(2))
    write(1, _rows(2, start=2))
    df = shards.read_shards(out, columns=["frames"])
    assert df["clip_id"].tolist() == ["c000", "c001", "c002", "c003"]
    assert len(shards.shard_files(out)) == 2
    with pytest.raises(pa.ArrowInvalid, match="nope"):
        shards.read_shards(out, columns=["nope"])


def _split_rows(n: int, nbytes: int = 20000) -> list[dict]:
    """Clips alternating train / val (interleaved clip ids), each with frames and wav_mix."""
    rows = _rows(n, nbytes=nbytes)
    rng = np.random.default_rng(7)
    for i, r in enumerate(rows):
        r["split"] = "train" if i % 2 == 0 else "val"
        r.update(shards.pack_array("wav_mix", rng.uniform(-1, 1, nbytes // 2)))
    return rows


def _garble_chunk(path: Path, row_group: int, column: str) -> None:
    """Garble the middle byte of one column chunk of one row group (its pages' CRC no longer holds)."""
    md = pq.ParquetFile(path).metadata
    names = [md.schema.column(j).name for j in range(md.num_columns)]
    chunk = md.row_group(row_group).column(names.index(column))
    start = chunk.dictionary_page_offset if chunk.has_dictionary_page else chunk.data_page_offset
    data = bytearray(path.read_bytes())
    data[start + chunk.total_compressed_size // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _row_group_splits(path: Path) -> list[set[str]]:
    f = pq.ParquetFile(path)
    return [set(f.read_row_group(i, columns=["split"])["split"].to_pylist()) for i in range(f.num_row_groups)]


def test_a_shard_holds_one_row_group_per_split_and_a_reader_never_decodes_another_split(shard_run):
    out, write = shard_run
    write(0, _split_rows(8))
    f = out / "shards" / "shard-00000.parquet"
    assert _row_group_splits(f) == [{"train"}, {"val"}]  # sorted splits, one row group each
    _garble_chunk(f, 1, "frames")  # the val rows' frames are undecodable now
    train = shards.read_shards(out, split="train", columns=["frames"])
    assert train["clip_id"].tolist() == ["c000", "c002", "c004", "c006"] and set(train["split"]) == {"train"}
    rows = shards.load_split(out, "train", ["frames"])  # decodes every row it returns: none is val
    assert [r["clip_id"] for r in rows] == ["c000", "c002", "c004", "c006"] and rows[0]["frames"].dtype == np.uint8
    with pytest.raises(IntegrityError, match="shard-00000.parquet"):  # the damage is real: reading val finds it
        shards.read_shards(out, split="val", columns=["frames"])


def test_a_reader_never_decodes_a_column_it_was_not_asked_for(shard_run):
    out, write = shard_run
    write(0, _split_rows(8))
    f = out / "shards" / "shard-00000.parquet"
    _garble_chunk(f, 0, "wav_mix")  # the train rows' mix is undecodable now
    rows = shards.load_split(out, "train", ["frames"])
    assert len(rows) == 4 and "wav_mix" not in rows[0] and "frames" in rows[0]
    with pytest.raises(IntegrityError, match="shard-00000.parquet"):
        shards.load_split(out, "train", ["wav_mix"])
    assert len(shards.load_split(out, "val", ["wav_mix"])) == 4  # the val rows' mix is intact


# ----------------------------------------------------------------------------- checkpoints


def _cache(n: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    out = {}
    for name, shape in (("latents", (4, 8, 32)), ("video", (21, 16)), ("music", (21, 32)), ("sfx", (21, 32))):
        out[name] = np.asarray([rng.standard_normal(shape).astype(np.float32).tobytes() for _ in range(n)], dtype=object)
        out[name + "__shape"] = np.asarray([list(shape)] * n)
    out["shots"] = np.asarray([json.dumps([0.0])] * n, dtype=object)
    return out


def _solver(steps: int, run_dir: Path) -> DiffusionSolver:
    sec = TrainSection(unet_steps=steps, batch_size=2, lr=1e-3, warmup_steps=1, log_every=1, checkpoint_every=2,
                       torch_threads=1)
    den = DenoiserConfig.tiny(latent_hw=(8, 32), latent_channels=4, video_dim=16, music_dim=32, sfx_dim=32,
                              text_dim=32, token_sources=("video", "music", "sfx"))
    return DiffusionSolver({"section": to_dict(sec), "denoiser": dataclasses.asdict(den)}, run_dir)


@pytest.fixture(scope="module")
def _trained_to_four(tmp_path_factory):
    before = torch.get_num_threads()
    run_dir = tmp_path_factory.mktemp("run")
    _solver(4, run_dir).fit(numpy_batches(_cache(4), batch_size=2, seed=0), LocalReporter(run_dir / "ckpt"))
    torch.set_num_threads(before)
    return run_dir


@pytest.fixture
def two_checkpoints(_trained_to_four, tmp_path):
    """A diffusion run to step 4 (a copy per test): checkpoints at steps 2 and 4 (the reporter keeps two)."""
    before = torch.get_num_threads()
    run_dir = _copy(_trained_to_four, tmp_path / "run")
    reporter = LocalReporter(run_dir / "ckpt")
    assert [p.name for p in reporter._checkpoints()] == ["checkpoint_00000002", "checkpoint_00000004"]
    yield run_dir, reporter, numpy_batches(_cache(4), batch_size=2, seed=0)
    torch.set_num_threads(before)


def _last_start(run_dir: Path) -> dict:
    return json.loads((run_dir / STARTS_FILE).read_text().splitlines()[-1])


def test_a_checkpoint_lists_its_own_files_and_its_models(two_checkpoints):
    _, reporter, _ = two_checkpoints
    ck = reporter.latest()
    own = json.loads((ck / CHECKPOINT_MANIFEST).read_text())["files"]
    assert set(own) == {"optimizer.safetensors", "trainer_state.json"}
    assert set(json.loads((ck / "denoiser" / MANIFEST_FILE).read_text())["files"]) == {"denoiser.safetensors"}


@pytest.mark.parametrize("damage", ["optimizer garbled", "trainer state torn", "weights torn, no manifests"])
def test_a_corrupt_latest_checkpoint_falls_back_to_the_previous_one(two_checkpoints, caplog, damage):
    run_dir, reporter, batches = two_checkpoints
    latest = reporter.latest()
    if damage == "optimizer garbled":
        _flip(latest / "optimizer.safetensors")
    elif damage == "trainer state torn":
        _truncate(latest / "trainer_state.json")
    else:  # a checkpoint written before manifests, its weights torn: safetensors' error becomes ours
        (latest / CHECKPOINT_MANIFEST).unlink()
        (latest / "denoiser" / MANIFEST_FILE).unlink()
        _truncate(latest / "denoiser" / "denoiser.safetensors")
    with caplog.at_level(logging.WARNING, logger="soundtrack.solvers.base"):
        res = _solver(4, run_dir).fit(batches, reporter)  # steps 3 and 4 again, from step 2
    assert (res["start_step"], res["step"]) == (2, 4)
    assert _last_start(run_dir)["restored_step"] == 2
    assert any("resuming from the previous good one" in r.getMessage() and latest.name in r.getMessage()
               for r in caplog.records)
    assert reporter.latest() == latest and verify_directory(latest, name=CHECKPOINT_MANIFEST)  # written anew


def test_no_checkpoint_that_passes_is_a_clear_training_error(two_checkpoints):
    run_dir, reporter, batches = two_checkpoints
    for ck in reporter._checkpoints():
        _flip(ck / "optimizer.safetensors")
    with pytest.raises(TrainingError, match=r"cannot resume: no checkpoint passes its check .*checkpoint_00000004.*"
                                            r"checkpoint_00000002.*--force"):
        _solver(4, run_dir).fit(batches, reporter)


def test_a_half_copied_checkpoint_is_never_restored(two_checkpoints):
    run_dir, reporter, batches = two_checkpoints
    half = reporter.dir / "checkpoint_00000009.tmp"  # a copy killed after its trainer state
    half.mkdir()
    (half / "trainer_state.json").write_text(json.dumps({"step": 9}))
    assert reporter.latest().name == "checkpoint_00000004"


# ----------------------------------------------------------------------------- a full disk (RLIMIT_FSIZE: EFBIG)


def test_disk_full_writing_a_checkpoint_keeps_the_previous_one(two_checkpoints):
    run_dir, reporter, batches = two_checkpoints
    before = {p.name: sha256_file(p / "optimizer.safetensors") for p in reporter._checkpoints()}
    denoiser_bytes = (reporter.latest() / "denoiser" / "denoiser.safetensors").stat().st_size
    with file_size_limit(denoiser_bytes // 2):
        with pytest.raises(TrainingError, match=r"writing the checkpoint of step 5 failed .*disk is full.*the last "
                                                r"good checkpoint \(step 4\) is kept") as info:
            _solver(5, run_dir).fit(batches, reporter)
    assert isinstance(info.value.__cause__, DiskFullError) and info.value.__cause__.errno == errno.EFBIG
    assert {p.name: sha256_file(p / "optimizer.safetensors") for p in reporter._checkpoints()} == before
    assert _leftovers(reporter.dir) == []
    res = _solver(5, run_dir).fit(batches, reporter)  # space again: resumes from step 4
    assert (res["start_step"], res["step"]) == (4, 5)


def test_disk_full_while_the_reporter_copies_a_checkpoint_leaves_no_half_copy(two_checkpoints, tmp_path):
    _, reporter, _ = two_checkpoints
    src = tmp_path / "new"
    src.mkdir()
    (src / "trainer_state.json").write_text(json.dumps({"step": 8}))
    (src / "big.safetensors").write_bytes(os.urandom(300_000))
    with file_size_limit(100_000), pytest.raises(DiskFullError, match=r"checkpoint of step 8 .*checkpoint_00000004 "
                                                                      r"is kept"):
        reporter.report({"step": 8, "loss": 0.0}, str(src))
    assert sorted(p.name for p in reporter.dir.iterdir()) == ["checkpoint_00000002", "checkpoint_00000004"]


def test_disk_full_writing_a_shard_leaves_no_partial_shard_or_marker(shard_run):
    out, write = shard_run
    write(0, _rows(2, nbytes=2000))
    good = sha256_file(out / "shards" / "shard-00000.parquet")
    with file_size_limit(50_000), pytest.raises(DiskFullError, match=r"writing shard 1 .*disk is full") as info:
        write(1, _rows(4, start=2, nbytes=40_000))
    assert info.value.errno == errno.EFBIG and isinstance(info.value, SoundtrackError) and isinstance(info.value, OSError)
    assert sorted(p.name for p in (out / "shards").iterdir()) == ["shard-00000.parquet"]
    assert sorted(p.name for p in (out / "done").iterdir()) == ["shard-00000.json"]
    assert sha256_file(out / "shards" / "shard-00000.parquet") == good
    assert set(shards.completed_shards(out)) == {0} and len(shards.read_shards(out)) == 2


def test_disk_full_saving_over_a_model_directory_keeps_the_previous_model(tiny_model, tmp_path):
    gen, src = tiny_model
    root = _copy(src, tmp_path / "m")
    before = {p.relative_to(root): sha256_file(p) for p in root.rglob("*") if p.is_file()}
    other = build_tiny_generator(None, seed=1, num_steps=2, gl_iterations=2)
    denoiser_bytes = (root / "denoiser" / "denoiser.safetensors").stat().st_size
    with file_size_limit(denoiser_bytes // 2), pytest.raises(DiskFullError, match=r"the previous model directory is "
                                                                                  r"unchanged"):
        other.save(root)  # the encoders and the VAE fit, the denoiser does not
    assert {p.relative_to(root): sha256_file(p) for p in root.rglob("*") if p.is_file()} == before
    assert _leftovers(root) == []
    assert SoundtrackGenerator.load(root).to_dict() == gen.to_dict()


def test_disk_full_writing_one_file_keeps_the_old_file(tmp_path):
    f = tmp_path / "a.bin"
    f.write_bytes(b"old")
    with file_size_limit(1000), pytest.raises(DiskFullError, match=r"a\.bin.*nothing half-written"):
        write_file(f, lambda tmp: tmp.write_bytes(os.urandom(5000)))
    assert f.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["a.bin"]


# ----------------------------------------------------------------------------- a full disk (tmpfs: ENOSPC)


def test_a_really_full_disk_saving_a_model_keeps_the_previous_one(tiny_model, small_disk):
    gen, src = tiny_model
    root = _copy(src, small_disk / "m")  # ~2.2 MB of a 3 MiB disk: a second copy does not fit
    before = {p.relative_to(root): sha256_file(p) for p in root.rglob("*") if p.is_file()}
    with pytest.raises(DiskFullError, match="disk is full") as info:
        build_tiny_generator(None, seed=1, num_steps=2, gl_iterations=2).save(root)
    assert info.value.errno == errno.ENOSPC
    assert {p.relative_to(root): sha256_file(p) for p in root.rglob("*") if p.is_file()} == before
    assert _leftovers(root) == [] and sorted(p.name for p in small_disk.iterdir()) == ["m"]
    assert SoundtrackGenerator.load(root).to_dict() == gen.to_dict()


def test_older_checkpoints_beside_a_ray_checkpoint_newest_first(tmp_path):
    """What the Ray Train reporter falls back to: the siblings of the restored checkpoint."""
    def ck(name: str, state: str) -> Path:
        d = tmp_path / "ray" / name
        d.mkdir(parents=True)
        (d / "trainer_state.json").write_text(state)
        return d

    a = ck("checkpoint_2026-01-01_00-00-01.000001", json.dumps({"step": 2}))
    b = ck("checkpoint_2026-01-01_00-00-02.000002", json.dumps({"step": 4}))
    c = ck("checkpoint_2026-01-01_00-00-03.000003", '{"step": 6')  # torn
    ck("checkpoint_2026-01-01_00-00-04.000004.tmp", json.dumps({"step": 8}))
    assert older_checkpoints(b) == [str(a)]
    assert older_checkpoints(c) == [str(b), str(a)]
    assert older_checkpoints(a) == []
