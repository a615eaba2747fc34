"""Tests of ``soundtrack.data.importers``: published layouts -> segment table (unit, no Ray).

Matching looks only at file names, so SRC is a folder of empty placeholder files named as
the download tools name them; nothing is decoded.
"""

from __future__ import annotations

import math
import unicodedata
from pathlib import Path

import pandas as pd
import pytest

from soundtrack.data.importers import (
    LAYOUTS,
    REPORT_EXAMPLES,
    SEGMENT_COLUMNS,
    detect_layout,
    import_layout,
)
from soundtrack.data.manifest import SPLITS
from soundtrack.errors import ConfigError, ManifestError

VGGSOUND_CSV = (
    "---g-f_I2yQ,1,people marching,test\n"
    '-0vPFx-wRRI,30,"male speech, man speaking",train\n'
    "abcdefghijk,50,dog barking,train\n"
)

AUDIOSET_CSV = (
    "# Segments csv created Sun Mar  5 10:54:31 2017\n"
    "# num_ytids=3, num_segs=3, num_unique_labels=3, num_positive_labels=4\n"
    "# YTID, start_seconds, end_seconds, positive_labels\n"
    '--PJHxphWEs, 30.000, 40.000, "/m/09x0r,/t/dd00088"\n'
    '--ZhevVpy1s, 50.000, 60.000, "/m/012xff"\n'
    '--aE2O5G5WE, 0.000, 10.000, "/m/03fwl"\n'
    '--nothere00, 20.000, 30.000, "/m/03fwl"\n'
)


def _touch(src: Path, *names: str) -> Path:
    src.mkdir(parents=True, exist_ok=True)
    for name in names:
        p = src / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.touch()
    return src


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def _no_nan(df: pd.DataFrame) -> bool:
    return not any(isinstance(v, float) and math.isnan(v) for col in df.columns if col != "start_s" for v in df[col])


# --------------------------------------------------------------------------- layouts


def test_vggsound_rows_types_and_matching(tmp_path):
    src = _touch(tmp_path / "src", "---g-f_I2yQ.mp4", "-0vPFx-wRRI_000030.mp4", "stray.mkv")
    seg, rep = import_layout(_write(tmp_path / "vggsound.csv", VGGSOUND_CSV), src, layout="vggsound")
    assert list(seg.columns) == [*SEGMENT_COLUMNS, "label_class"]
    assert seg["start_s"].dtype == "float64"
    rows = seg.to_dict("records")
    # full video: the segment's times; cut file: starts at 0 and lasts the 10 s segment
    assert rows[0] == {"file": "---g-f_I2yQ.mp4", "start_s": 1.0, "end_s": 11.0, "caption": "", "split": "test",
                       "label_class": "people marching"}
    assert rows[1] == {"file": "-0vPFx-wRRI_000030.mp4", "start_s": 0.0, "end_s": 10.0, "caption": "",
                       "split": "train", "label_class": "male speech, man speaking"}
    assert all(isinstance(v, float) for v in seg["end_s"])
    assert rep["layout"] == "vggsound" and rep["rows"] == 3 and rep["segments"] == 2
    assert rep["unmatched_rows"] == {"count": 1, "examples": ["line 3: id abcdefghijk at 50-60 s"]}
    assert rep["unreferenced_files"] == {"count": 1, "examples": ["stray.mkv"]}
    assert rep["matched_by"] == {"id": 1, "id_start": 1}


def test_audioset_rows_labels_and_split_from_name(tmp_path):
    src = _touch(tmp_path / "src", "--PJHxphWEs_30.000_40.000.mp4", "--ZhevVpy1s_50000_60000.MKV", "--aE2O5G5WE.webm")
    seg, rep = import_layout(_write(tmp_path / "eval_segments.csv", AUDIOSET_CSV), src, layout="audioset")
    assert list(seg.columns) == [*SEGMENT_COLUMNS, "label_mids"]
    assert seg["file"].tolist() == ["--PJHxphWEs_30.000_40.000.mp4", "--ZhevVpy1s_50000_60000.MKV", "--aE2O5G5WE.webm"]
    assert seg["start_s"].tolist() == [0.0, 0.0, 0.0]
    assert seg["end_s"].tolist() == [10.0, 10.0, 10.0]
    assert seg["label_mids"].tolist() == [["/m/09x0r", "/t/dd00088"], ["/m/012xff"], ["/m/03fwl"]]
    assert seg["split"].tolist() == ["test"] * 3  # eval_segments.csv is AudioSet's evaluation set
    assert rep["unmatched_rows"]["count"] == 1 and rep["unmatched_rows"]["examples"][0].startswith("line 7:")
    assert rep["matched_by"] == {"id": 1, "id_start_end": 2}

    _, rep = import_layout(_write(tmp_path / "balanced_train_segments.csv", AUDIOSET_CSV), src, layout="audioset")
    seg, _ = import_layout(_write(tmp_path / "mine.csv", AUDIOSET_CSV), src, layout="audioset")
    assert seg["split"].tolist() == [None] * 3
    seg, _ = import_layout(tmp_path / "balanced_train_segments.csv", src)
    assert seg["split"].tolist() == ["train"] * 3


def test_generic_columns_typed_labels_and_none_not_nan(tmp_path):
    csv_text = (
        "ID,Start,end_seconds,caption,split,genre,bpm,energy\n"
        "001,0,10.24,a calm piano intro,train,,120,0.5\n"
        "002,,,,validation,rock,,1\n"
        "003,5,,upbeat,,pop,98,\n"
    )
    src = _touch(tmp_path / "src", "001.mp4", "002.mp4", "003.mov")
    seg, rep = import_layout(_write(tmp_path / "bgm.csv", csv_text), src, layout="generic")
    assert list(seg.columns) == [*SEGMENT_COLUMNS, "label_genre", "label_bpm", "label_energy"]
    assert seg["file"].tolist() == ["001.mp4", "002.mp4", "003.mov"]  # ids stay text: "001" is not 1
    assert seg["start_s"].tolist() == [0.0, 0.0, 5.0]
    assert seg["end_s"].tolist() == [10.24, None, None]
    assert seg["caption"].tolist() == ["a calm piano intro", "", "upbeat"]
    assert seg["split"].tolist() == ["train", "val", None]
    assert seg["label_genre"].tolist() == [None, "rock", "pop"]
    bpm = seg["label_bpm"].tolist()
    assert bpm == [120, None, 98] and all(isinstance(v, int) for v in bpm if v is not None)
    assert seg["label_energy"].tolist() == [0.5, 1.0, None]
    for col in ("end_s", "caption", "split", "label_genre", "label_bpm", "label_energy"):
        assert seg[col].dtype == object
    assert _no_nan(seg)
    assert rep["label_columns"] == ["label_genre", "label_bpm", "label_energy"]


def test_generic_file_column_paths(tmp_path):
    src = _touch(tmp_path / "src", "a/one.mp4", "b/two.mp4", "a/dup.mp4", "b/dup.mp4", "c/three.mp4")
    csv_text = (
        "file,caption\n"
        "a/one.mp4,by relative path\n"
        "two.mp4,by unique basename\n"
        f"{(src / 'c' / 'three.mp4').resolve()},by absolute path\n"
        "dup.mp4,ambiguous basename\n"
        "missing.mp4,not there\n"
    )
    seg, rep = import_layout(_write(tmp_path / "files.csv", csv_text), src.resolve())
    assert rep["layout"] == "generic"
    assert seg["file"].tolist() == ["a/one.mp4", "b/two.mp4", "c/three.mp4"]
    assert seg["start_s"].tolist() == [0.0] * 3 and seg["end_s"].tolist() == [None] * 3
    assert rep["ambiguous_rows"] == {"count": 1, "examples": ["line 5: file dup.mp4 -> a/dup.mp4, b/dup.mp4"]}
    assert rep["unmatched_rows"] == {"count": 1, "examples": ["line 6: file missing.mp4"]}
    assert rep["matched_by"] == {"path": 3}


# --------------------------------------------------------------------------- naming patterns


@pytest.mark.parametrize(
    "name, vid, start, end, want",
    [
        ("X.mp4", "X", 30, 40, (30.0, 40.0, "id")),  # full video: the times apply to it
        ("X_30.mp4", "X", 30, 40, (0.0, 10.0, "id_start")),  # cut file: starts at the segment start
        ("X_000030.mp4", "X", 30, 40, (0.0, 10.0, "id_start")),  # VGGSound's zero-padded seconds
        ("X_30_40.mp4", "X", 30, 40, (0.0, 10.0, "id_start_end")),
        ("X_30.000_40.000.mp4", "X", 30, 40, (0.0, 10.0, "id_start_end")),  # AudioSet tools' decimals
        ("X_30000_40000.mp4", "X", 30, 40, (0.0, 10.0, "id_start_end")),  # milliseconds
        ("X_30.MOV", "X", 30, 40, (0.0, 10.0, "id_start")),  # extension in any case
        ("deep/er/X_30.mkv", "X", 30, 40, (0.0, 10.0, "id_start")),  # anywhere under SRC
        ("X_000030.mp4", "X", 30, None, (0.0, None, "id_start")),  # no end published: to the end
        ("X_30_40.mp4", "X", 30, None, (0.0, 10.0, "id_start_end")),  # ... unless the name has it
        ("X_30_40.mp4", "X", None, None, (0.0, None, "id_start_end")),  # no times: the whole file
        ("ab_12_30.mp4", "ab_12", 30, 40, (0.0, 10.0, "id_start")),  # an id that ends in _<digits>
        ("ab_12.mp4", "ab_12", 30, 40, (30.0, 40.0, "id")),
        ("YabcdefghijK_30.000_40.000.mp4", "abcdefghijK", 30, 40, (0.0, 10.0, "Y+id_start_end")),
        ("Yabcdefghij.mp4", "Yabcdefghij", 30, 40, (30.0, 40.0, "id")),  # a real id starting with Y
    ],
)
def test_naming_patterns(tmp_path, name, vid, start, end, want):
    src = _touch(tmp_path / "src", name)
    row = f"{vid},{'' if start is None else start},{'' if end is None else end}\n"
    seg, rep = import_layout(_write(tmp_path / "seg.csv", "id,start_s,end_s\n" + row), src)
    assert rep["unmatched_rows"]["count"] == 0 and rep["ambiguous_rows"]["count"] == 0
    assert seg["file"].tolist() == [name]
    got = seg.iloc[0]
    assert got["start_s"] == pytest.approx(want[0])
    assert got["end_s"] is None if want[1] is None else got["end_s"] == pytest.approx(want[1])
    assert rep["matched_by"] == {want[2]: 1}


def test_times_in_the_name_must_be_the_rows(tmp_path):
    src = _touch(tmp_path / "src", "X_000050.mp4", "Y_10_20.mp4")
    seg, rep = import_layout(_write(tmp_path / "seg.csv", "id,start_s,end_s\nX,30,40\nY,10,25\n"), src)
    assert len(seg) == 0 and list(seg.columns) == list(SEGMENT_COLUMNS)
    assert rep["unmatched_rows"]["count"] == 2
    assert rep["unreferenced_files"] == {"count": 2, "examples": ["X_000050.mp4", "Y_10_20.mp4"]}


def test_cut_file_wins_over_full_video_and_ties_are_ambiguous(tmp_path):
    src = _touch(tmp_path / "src", "X.mp4", "X_000030.mp4", "Z.mp4", "Z.mkv", "a/W_5.mp4", "b/W_5.webm")
    seg, rep = import_layout(_write(tmp_path / "seg.csv", "id,start_s,end_s\nX,30,40\nZ,0,10\nW,5,15\n"), src)
    assert seg["file"].tolist() == ["X_000030.mp4"]
    assert rep["ambiguous_rows"]["count"] == 2
    assert rep["ambiguous_rows"]["examples"] == ["line 3: id Z at 0-10 s -> Z.mkv, Z.mp4",
                                                 "line 4: id W at 5-15 s -> a/W_5.mp4, b/W_5.webm"]
    assert "X.mp4" in rep["unreferenced_files"]["examples"]
    # without times the whole video is meant, so the full video wins
    seg, _ = import_layout(_write(tmp_path / "whole.csv", "id\nX\n"), src)
    assert seg["file"].tolist() == ["X.mp4"] and seg["end_s"].tolist() == [None]


def test_assume_cut_and_repeated_rows(tmp_path):
    src = _touch(tmp_path / "src", "---g-f_I2yQ.mp4")
    csv_path = _write(tmp_path / "v.csv", "---g-f_I2yQ,30,people marching,train\n---g-f_I2yQ,30,people marching,train\n")
    seg, rep = import_layout(csv_path, src, assume_cut=True)
    assert rep["layout"] == "vggsound" and rep["assume_cut"] is True
    assert seg[["start_s", "end_s"]].values.tolist() == [[0.0, 10.0]]
    assert rep["repeated_rows"] == {"count": 1, "examples": ["line 2: id ---g-f_I2yQ at 30-40 s"]}


def test_report_keeps_the_first_examples_and_the_full_count(tmp_path):
    src = _touch(tmp_path / "src")
    rows = "".join(f"id{i:02d},{i},dog barking,train\n" for i in range(REPORT_EXAMPLES + 5))
    seg, rep = import_layout(_write(tmp_path / "v.csv", rows), src)
    assert len(seg) == 0
    assert rep["unmatched_rows"]["count"] == REPORT_EXAMPLES + 5
    assert len(rep["unmatched_rows"]["examples"]) == REPORT_EXAMPLES
    assert rep["unmatched_rows"]["examples"][0] == "line 1: id id00 at 0-10 s"


def test_decomposed_unicode_names_match_composed_ids(tmp_path):
    nfd = unicodedata.normalize("NFD", "café_30.mp4")
    src = _touch(tmp_path / "src", nfd)
    seg, _ = import_layout(_write(tmp_path / "seg.csv", "id,start_s,end_s\ncafé,30,40\n"), src)
    assert seg["file"].tolist() == [unicodedata.normalize("NFC", "café_30.mp4")]  # as ingest's scan names it


# --------------------------------------------------------------------------- detection and errors


@pytest.mark.parametrize(
    "text, layout",
    [
        (VGGSOUND_CSV, "vggsound"),
        (AUDIOSET_CSV, "audioset"),
        ("".join(AUDIOSET_CSV.splitlines(keepends=True)[3:]), "audioset"),  # comment lines stripped
        ("\ufefffile,caption\nx.mp4,hi\n", "generic"),  # a byte-order mark is ignored
        ("\nvideo_id,label\nx,y\n", "generic"),
    ],
)
def test_auto_detection(tmp_path, text, layout):
    path = _write(tmp_path / "seg.csv", text)
    assert detect_layout(path) == layout
    _, rep = import_layout(path, _touch(tmp_path / "src"))
    assert rep["layout"] == layout


def test_undetectable_and_unknown_layouts(tmp_path):
    src = _touch(tmp_path / "src")
    with pytest.raises(ManifestError, match="cannot tell the layout"):
        import_layout(_write(tmp_path / "odd.csv", "name,colour\nx,red\n"), src)
    with pytest.raises(ManifestError, match="empty"):
        import_layout(_write(tmp_path / "empty.csv", "\n\n"), src)
    with pytest.raises(ConfigError, match="one of"):
        import_layout(tmp_path / "odd.csv", src, layout="kinetics")
    with pytest.raises(FileNotFoundError):
        import_layout(tmp_path / "odd.csv", tmp_path / "nowhere")
    assert sorted(LAYOUTS) == ["audioset", "generic", "vggsound"]


@pytest.mark.parametrize(
    "layout, text, line, problem",
    [
        ("vggsound", "a,1,dog,train\nb,2,cat\n", 2, "3 cells instead of 4"),
        ("vggsound", "youtube_id,start,label,split\n", 1, "'start' is not a number"),  # a header is no vggsound
        ("vggsound", "a,1,dog,validation\n", 1, "split 'validation'"),
        ("audioset", AUDIOSET_CSV.replace("50.000", "5O.000"), 5, "'5O.000' is not a number"),
        ("audioset", AUDIOSET_CSV.replace("60.000", "45.000"), 5, "not after"),
        ("audioset", VGGSOUND_CSV, 1, "is not a number"),  # the wrong layout named explicitly
        ("generic", "id,start_s\na,1\nb,2,3\n", 3, "3 cells but the header has 2"),
        ("generic", "id,split\na,dev\n", 2, "split 'dev'"),
        ("generic", "id,start_s,end_s\na,5,2\n", 2, "not after"),
        ("generic", "id,start,start_s\na,1,1\n", 1, "both give the start"),
        ("generic", "caption,label\nhi,x\n", 1, "no file or id column"),
        ("generic", 'id,caption\na,"unterminated\n', 2, "not valid CSV"),
    ],
)
def test_malformed_csv_names_the_line(tmp_path, layout, text, line, problem):
    path = _write(tmp_path / "bad.csv", text)
    with pytest.raises(ManifestError) as exc:
        import_layout(path, _touch(tmp_path / "src"), layout=layout)
    msg = str(exc.value)
    assert f"line {line}:" in msg and problem in msg and f"the {layout} layout expects" in msg


# --------------------------------------------------------------------------- the ingest hook's contract


def test_table_is_well_formed_for_ingest(tmp_path):
    src = _touch(tmp_path / "src", "---g-f_I2yQ.mp4", "sub/-0vPFx-wRRI_000030.MP4", "x.mkv", "Y_1.mp4")
    seg, _ = import_layout(_write(tmp_path / "vggsound.csv", VGGSOUND_CSV), src)
    gen, _ = import_layout(_write(tmp_path / "gen.csv", "file,id,start,end,mood\nx.mkv,,2,9.5,calm\n,Y,1,,\n"), src)
    for table in (seg, gen):
        assert len(table) > 0
        assert list(table.columns[: len(SEGMENT_COLUMNS)]) == list(SEGMENT_COLUMNS)
        assert all(c.startswith("label_") for c in table.columns[len(SEGMENT_COLUMNS):])
        assert table["start_s"].dtype == "float64"
        for r in table.to_dict("records"):
            assert not Path(r["file"]).is_absolute() and "\\" not in r["file"]
            assert (src / r["file"]).is_file()  # every file exists under SRC
            assert r["start_s"] >= 0 and (r["end_s"] is None or r["end_s"] > r["start_s"])
            assert r["split"] is None or r["split"] in SPLITS
            assert isinstance(r["caption"], str)
        assert _no_nan(table)
    assert gen.to_dict("records") == [
        {"file": "x.mkv", "start_s": 2.0, "end_s": 9.5, "caption": "", "split": None, "label_mood": "calm"},
        {"file": "Y_1.mp4", "start_s": 0.0, "end_s": None, "caption": "", "split": None, "label_mood": None},
    ]
