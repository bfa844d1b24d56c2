"""A bad-input corpus through `prepare` and `inspect-au`, generated at test time.

Three shared prepare runs (class folders through MTCNN, RAF-DB through align none with an AU pickle, a CSV
list) hold one file per kind of bad input next to good ones. Each case asserts its exact reject (stage,
reason, words of the detail); the good items of the same run must be written and the output must verify.
Refusals (the run cannot start) and AU-file checks (`inspect-au`) follow.
"""
from __future__ import annotations

import os
import pickle
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from flows.prepare import PrepareSettings, prepare
from manifests.reader import read_manifest, read_rejects, verify
from tasks.align import AlignConfig
from tasks.ingest import DatasetError, IngestConfig
from tasks.openface import OpenFaceRow, inspect_au, write_openface_csv
from tasks.prepare import AUConfig, AUSourceError
from tasks.sample_data import astronaut_rgb, grace_hopper_rgb
from tasks.synthetic import RenderConfig, random_aus, random_identity, render_face

AUS = np.array([0.5, 1.0, 0.0, 2.0, 1.5, 0.2, 0.0, 0.3, 2.5, 0.1, 0.0, 0.4, 0.0, 0.2, 1.0, 0.5, 0.1])


def _png(path: Path, rgb: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path)
    return path


def _au_csv(path: Path, **row) -> Path:
    return write_openface_csv(path, [OpenFaceRow(**{"aus": AUS, **row})], variant="aus_only_img")


def _huge_png_header(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height pixels (no real pixel data: never decoded)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")


# ------------------------------------------------------------------ run 1: class folders, MTCNN, OpenFace CSVs

# source id -> (stage, reason, words the detail must contain)
FOLDER_REJECTS = {
    "empty_file": ("happy/empty", "ingest", "empty_file", "0 bytes"),
    "text_named_jpg": ("happy/text", "ingest", "not_an_image", "not a readable image"),
    "truncated_png": ("happy/truncated", "load", "corrupt_image", "truncated"),
    "not_image_extension": ("happy/notes", "ingest", "not_an_image_ext", "'.txt'"),
    "unknown_class_folder": ("unicorn/x", "ingest", "unknown_class", "class 'unicorn'"),
    "image_outside_class_folder": ("loose", "ingest", "no_class_folder", "not inside a class folder"),
    "byte_identical_copy": ("neutral/grace_copy", "ingest", "duplicate_image", "same bytes as neutral/grace"),
    "directory_link_loop": ("happy/loopdir", "ingest", "symlink_into_tree", "not followed"),
    "self_referencing_link": ("happy/self", "ingest", "symlink_loop", "points back at itself"),
    "dangling_link": ("happy/dangling", "ingest", "symlink_broken", "does not exist"),
    "non_utf8_file_name": ("happy/bad\\xff\\xfename", "ingest", "bad_file_name", "not valid UTF-8"),
    "fifo_in_class_folder": ("happy/fifo", "ingest", "not_a_regular_file", "not a regular file"),
    "huge_pixel_count": ("happy/huge", "ingest", "image_too_large", "64 MP cap"),
    "tiny_image": ("happy/tiny", "load", "image_too_small", "shorter side < 32"),
    "no_face": ("happy/flat", "align", "no_face", "found no face"),
    "face_out_of_frame": ("happy/tight", "align", "face_out_of_frame", "outside the"),
    "float_pixels": ("happy/float", "load", "unsupported_mode", "mode 'F'"),
    "au_csv_missing": ("happy/no_csv", "openface", "au_file_missing", "no AU CSV for happy/no_csv"),
    "au_csv_empty": ("happy/csv_empty", "openface", "au_file_empty", "file is empty"),
    "au_csv_header_only": ("happy/csv_header", "openface", "au_file_empty", "header only"),
    "au_value_nan": ("happy/csv_nan", "openface", "au_value_nan", "AU04_r"),
    "au_value_out_of_range": ("happy/csv_range", "openface", "au_value_out_of_range", "outside 0..5"),
    "au_columns_missing": ("happy/csv_cols", "openface", "au_columns_missing", "missing column(s)"),
    "au_csv_binary": ("happy/csv_binary", "openface", "au_file_malformed", "NUL bytes"),
    "au_low_confidence": ("happy/csv_lowconf", "openface", "au_no_trusted_row", "confidence=0.3 < 0.8"),
    "same_stem_two_classes_one_au_file_a": ("happy/twin", "openface", "au_file_ambiguous", "several images named 'twin'"),
    "same_stem_two_classes_one_au_file_b": ("sad/twin", "openface", "au_file_ambiguous", "several images named 'twin'"),
}
# Odd but usable inputs: each must come out as a written sample.
FOLDER_GOOD = {
    "plain_photo": "happy/astronaut",
    "jpeg_photo": "neutral/grace",
    "animated_gif_frame0": "surprise/anim",
    "same_stem_matched_by_relative_path_a": "fear/rel",
    "same_stem_matched_by_relative_path_b": "angry/rel",
}


def _build_folders(root: Path) -> tuple[Path, Path]:
    data, aus = root / "data", root / "aus"
    face = cv2.resize(astronaut_rgb(), (256, 256), interpolation=cv2.INTER_AREA)
    variant = iter(range(1, 100))

    def another_face() -> np.ndarray:  # byte-distinct copies, so none is a duplicate_image
        return np.clip(face.astype(np.int16) + next(variant), 0, 255).astype(np.uint8)

    _png(data / "happy" / "astronaut.png", another_face())
    _au_csv(aus / "astronaut.csv")
    grace = cv2.resize(grace_hopper_rgb(), (256, 300), interpolation=cv2.INTER_AREA)
    (data / "neutral").mkdir(parents=True)
    Image.fromarray(grace).save(data / "neutral" / "grace.jpg", quality=92)
    _au_csv(aus / "grace.csv")
    (data / "neutral" / "grace_copy.jpg").write_bytes((data / "neutral" / "grace.jpg").read_bytes())
    frames = [Image.fromarray(another_face()), Image.fromarray(np.zeros((256, 256, 3), np.uint8))]
    (data / "surprise").mkdir()
    frames[0].save(data / "surprise" / "anim.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    _au_csv(aus / "anim.csv")
    for cls in ("fear", "angry"):
        _png(data / cls / "rel.png", another_face())
        _au_csv(aus / cls / "rel.csv")

    happy = data / "happy"
    (happy / "empty.jpg").write_bytes(b"")
    (happy / "text.jpg").write_text("hello, I am not a picture\n")
    whole = (happy / "astronaut.png").read_bytes()
    (happy / "truncated.png").write_bytes(whole[: len(whole) // 2])
    (happy / "notes.txt").write_text("not an image")
    _png(data / "unicorn" / "x.png", another_face())
    _png(data / "loose.png", another_face())
    os.symlink(".", happy / "loopdir")
    os.symlink("self.png", happy / "self.png")
    os.symlink("nothing_here.png", happy / "dangling.png")
    with open(os.fsencode(happy) + b"/bad\xff\xfename.png", "wb") as handle:
        handle.write(whole)
    os.mkfifo(happy / "fifo.png")
    (happy / "huge.png").write_bytes(_huge_png_header(10_000, 10_000))
    _png(happy / "tiny.png", np.full((20, 20, 3), 128, np.uint8))
    _png(happy / "flat.png", np.tile(np.linspace(0, 255, 200, dtype=np.uint8)[None, :, None], (200, 1, 3)))
    tight = cv2.resize(astronaut_rgb()[70:170, 160:280], (96, 80))
    _png(happy / "tight.png", tight)
    Image.fromarray(np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64), mode="F").save(happy / "float.tif")
    for stem in ("no_csv", "csv_empty", "csv_header", "csv_nan", "csv_range", "csv_cols", "csv_binary", "csv_lowconf"):
        _png(happy / f"{stem}.png", another_face())
    (aus / "csv_empty.csv").write_bytes(b"")
    (aus / "csv_header.csv").write_text("face, confidence, " + ", ".join(f"{a}_r" for a in
                                        ("AU01", "AU02")) + "\n")
    _au_csv(aus / "csv_nan.csv", aus=np.where(np.arange(17) == 2, np.nan, AUS))
    _au_csv(aus / "csv_range.csv", aus=np.where(np.arange(17) == 5, 7.0, AUS))
    (aus / "csv_cols.csv").write_text("frame, confidence, AU01_r\n1, 0.9, 1.0\n")
    (aus / "csv_binary.csv").write_bytes(b"\x00\x01\x02binary\x00")
    _au_csv(aus / "csv_lowconf.csv", confidence=0.3)
    _png(happy / "twin.png", another_face())
    _png(data / "sad" / "twin.png", another_face())
    _au_csv(aus / "twin.csv")
    return data, aus


@pytest.fixture(scope="module")
def folders_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus-folders")
    data, aus = _build_folders(root)
    out = root / "out"
    summary = prepare(PrepareSettings(dataset=str(data), out=str(out), run_name="corpus",
                                      ingest=IngestConfig(layout="folders"), align=AlignConfig(image_size_px=64),
                                      aus=AUConfig(path=str(aus)), unit_size=8))
    return out, summary


def _rejects_by_source(out: Path) -> dict[str, list[dict]]:
    rows: dict[str, list[dict]] = {}
    for row in read_rejects(out).to_pylist():
        rows.setdefault(row["source_id"], []).append(row)
    return rows


def _assert_reject(out: Path, source_id: str, stage: str, reason: str, words: str) -> None:
    found = _rejects_by_source(out).get(source_id)
    assert found, f"no reject for {source_id!r}; rejects: {sorted(_rejects_by_source(out))}"
    assert {(r["stage"], r["reason"]) for r in found} == {(stage, reason)}, found  # conflicting copies: one row each
    assert all(words in r["detail"] for r in found), found


@pytest.mark.parametrize("kind", sorted(FOLDER_REJECTS))
def test_folder_corpus_reject(folders_run, kind):
    out, summary = folders_run
    _assert_reject(out, *FOLDER_REJECTS[kind])
    assert summary["verify_ok"] and verify(out).ok


@pytest.mark.parametrize("kind", sorted(FOLDER_GOOD))
def test_folder_corpus_good_items_are_written(folders_run, kind):
    out, summary = folders_run
    written = set(read_manifest(out).column("source_id").to_pylist())
    assert FOLDER_GOOD[kind] in written
    assert written == set(FOLDER_GOOD.values()) and summary["written"] == len(FOLDER_GOOD)
    assert verify(out).ok


def test_folder_corpus_accounts_for_every_entry(folders_run):
    out, _ = folders_run
    expected = {case[0] for case in FOLDER_REJECTS.values()}
    assert set(_rejects_by_source(out)) == expected  # nothing else rejected, nothing skipped silently
    quality = read_manifest(out).column("quality").to_pylist()
    assert all(q["out_of_frame"] is not None and q["out_of_frame"] < 0.4 for q in quality)


# ------------------------------------------------------------------ run 2: RAF-DB basic, align none, AU pickle

RAFDB_REJECTS = {
    "stray_compound_label": ("train_00002", "ingest", "bad_label", "label 8 is outside 1..7"),
    "malformed_label_line": ("train_00006", "ingest", "label_line_malformed", "is not '<image name> <integer label>'"),
    "bad_image_name": ("train_7", "ingest", "bad_name", "neither train_NNNNN.jpg"),
    "listed_image_missing": ("train_00008", "ingest", "file_missing", "does not exist"),
    "conflicting_duplicate_lines": ("train_00009", "ingest", "duplicate_entry", "conflicting labels/splits"),
    "train_line_after_test": ("train_00012", "ingest", "split_order", "train line after the first test line"),
    "pkl_entry_nan": ("train_00003", "openface", "au_value_nan", "'train_00003': AU02 is NaN"),
    "pkl_entry_out_of_range": ("train_00005", "openface", "au_value_out_of_range", "outside 0..5"),
    "pkl_entry_missing": ("train_00004", "openface", "au_file_missing", "no entry for 'train_00004_aligned'"),
    "pre_aligned_not_square": ("train_00011", "align", "not_square", "aspect"),
}
RAFDB_GOOD = ("train_00001", "train_00010", "test_0001")


def _rafdb_face(index: int, shape=(100, 100)) -> np.ndarray:
    rgb = render_face(random_identity(index), random_aus(np.random.default_rng(index)), RenderConfig(image_size_px=100))
    return cv2.resize(rgb, (shape[1], shape[0]))


@pytest.fixture(scope="module")
def rafdb_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus-rafdb") / "RAF-DB"
    labels = root / "EmoLabel" / "list_patition_label.txt"
    labels.parent.mkdir(parents=True)
    labels.write_text("\n".join([
        "train_00001.jpg 4", "train_00002.jpg 8", "train_00003.jpg 5", "train_00004.jpg 3", "train_00005.jpg 6",
        "train_00006.jpg", "train_7.jpg 4", "train_00008.jpg 2", "train_00009.jpg 4", "train_00009.jpg 5",
        "train_00010.jpg 1", "train_00011.jpg 7", "test_0001.jpg 7", "train_00012.jpg 4",
    ]) + "\n")
    images = root / "Image" / "aligned"
    images.mkdir(parents=True)
    for i in (1, 2, 3, 4, 5, 6, 9, 10, 12):
        Image.fromarray(_rafdb_face(i)).save(images / f"train_{i:05d}_aligned.jpg")
    Image.fromarray(_rafdb_face(11, (100, 60))).save(images / "train_00011_aligned.jpg")
    Image.fromarray(_rafdb_face(50)).save(images / "test_0001_aligned.jpg")
    table = {f"train_{i:05d}": AUS for i in (1, 10, 11)} | {"test_0001": AUS}
    table["train_00003"] = np.where(np.arange(17) == 1, np.nan, AUS)
    table["train_00005"] = np.where(np.arange(17) == 0, 6.5, AUS)
    pkl = root.parent / "aus_openface.pkl"
    pkl.write_bytes(pickle.dumps(table, protocol=2))
    out = root.parent / "out"
    summary = prepare(PrepareSettings(dataset=str(root), out=str(out), run_name="raf",
                                      ingest=IngestConfig(layout="rafdb"), align=AlignConfig(mode="none", image_size_px=32),
                                      aus=AUConfig(path=str(pkl)), unit_size=4))
    return out, summary


@pytest.mark.parametrize("kind", sorted(RAFDB_REJECTS))
def test_rafdb_corpus_reject(rafdb_run, kind):
    out, summary = rafdb_run
    _assert_reject(out, *RAFDB_REJECTS[kind])
    assert summary["verify_ok"] and verify(out).ok
    assert set(read_manifest(out).column("source_id").to_pylist()) == set(RAFDB_GOOD)


# ------------------------------------------------------------------ run 3: CSV list, align none, no AUs

CSV_REJECTS = {
    "csv_row_extra_fields": ("a", "ingest", "csv_row_malformed", "quote paths that contain commas"),
    "csv_bad_split": ("img/two", "ingest", "bad_split", "split 'holdout'"),
    "csv_unknown_label_name": ("img/three", "ingest", "unknown_class", "class 'contempt'"),
    "csv_label_out_of_range": ("img/four", "ingest", "bad_label", "label '9'"),
    "csv_path_not_an_image": ("img/readme", "ingest", "not_an_image_ext", "does not end in an image extension"),
}


@pytest.fixture(scope="module")
def csv_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus-csv")
    for i, name in enumerate(("one", "two", "three", "four")):
        _png(root / "img" / f"{name}.png", _rafdb_face(200 + i, (64, 64)))
    (root / "labels.csv").write_text("path,label,split\nimg/one.png,happy,train\na,b,4,train\n"
                                     "img/two.png,4,holdout\nimg/three.png,contempt,train\nimg/four.png,9,train\n"
                                     "img/readme.txt,4,train\n")
    out = root.parent / (root.name + "-out")
    summary = prepare(PrepareSettings(dataset=str(root), out=str(out), run_name="csv",
                                      ingest=IngestConfig(layout="csv", csv_path="labels.csv"),
                                      align=AlignConfig(mode="none", image_size_px=32), unit_size=4))
    return out, summary


@pytest.mark.parametrize("kind", sorted(CSV_REJECTS))
def test_csv_corpus_reject(csv_run, kind):
    out, summary = csv_run
    _assert_reject(out, *CSV_REJECTS[kind])
    assert summary["verify_ok"] and verify(out).ok
    assert read_manifest(out).column("source_id").to_pylist() == ["img/one"]


# ------------------------------------------------------------------ refusals: the run does not start

def _tiny_dataset(root: Path) -> Path:
    _png(root / "data" / "happy" / "a.png", _rafdb_face(300, (64, 64)))
    return root / "data"


def _settings(data: Path, out: Path, **kw) -> PrepareSettings:
    return PrepareSettings(dataset=str(data), out=str(out), ingest=IngestConfig(layout="folders"),
                           align=AlignConfig(mode="none", image_size_px=32), **kw)


def test_refuses_out_inside_the_dataset_root(tmp_path):
    data = _tiny_dataset(tmp_path)
    with pytest.raises(ValueError, match="is inside the dataset root"):
        _settings(data, data / "prepared")


def test_refuses_aus_pointing_at_a_single_csv(tmp_path):
    data = _tiny_dataset(tmp_path)
    one = _au_csv(tmp_path / "all.csv")
    with pytest.raises(AUSourceError, match="is a single CSV"):
        prepare(_settings(data, tmp_path / "out", aus=AUConfig(path=str(one))))
    assert not (tmp_path / "out" / "manifest").exists()


def test_refuses_aus_folder_matching_no_image(tmp_path):
    data = _tiny_dataset(tmp_path)
    _au_csv(tmp_path / "aus" / "somebody_else.csv")
    with pytest.raises(AUSourceError, match=r"holds no AU file for any of the 1 images \(for happy/a it looked for a.csv"):
        prepare(_settings(data, tmp_path / "out", aus=AUConfig(path=str(tmp_path / "aus"))))


def test_refuses_aus_path_that_does_not_exist(tmp_path):
    data = _tiny_dataset(tmp_path)
    # refused by the start checks (flows._run.StartError), before the output folder is touched
    with pytest.raises(ValueError, match="does not exist"):
        prepare(_settings(data, tmp_path / "out", aus=AUConfig(path=str(tmp_path / "typo"))))
    assert not (tmp_path / "out").exists()


def test_refuses_the_rafdb_compound_release(tmp_path):
    root = tmp_path / "RAF"
    (root / "Image" / "aligned").mkdir(parents=True)
    (root / "EmoLabel").mkdir()
    (root / "EmoLabel" / "list_patition_label.txt").write_text(
        "\n".join(f"train_{i:05d}.jpg {8 + i % 4 if i % 2 else 1 + i % 7}" for i in range(1, 21)) + "\n")
    with pytest.raises(DatasetError, match="looks like the RAF-DB compound release"):
        prepare(PrepareSettings(dataset=str(root), out=str(tmp_path / "out"), ingest=IngestConfig(layout="rafdb"),
                                align=AlignConfig(mode="none")))


# ------------------------------------------------------------------ inspect-au on hostile or odd AU files

class _HugeObjectArray:
    def __reduce__(self):
        return np.ndarray, ((300_000_000,), np.dtype(object))


class _RunsCode:
    def __reduce__(self):
        return os.system, ("echo pwned",)


@pytest.mark.parametrize(("kind", "payload", "words"), [
    ("pkl_huge_object_array", lambda: pickle.dumps({"a": _HugeObjectArray()}, protocol=2), "dtype object"),
    ("pkl_calls_os_system", lambda: pickle.dumps({"a": _RunsCode()}, protocol=2), "system"),
    ("pkl_oversized_array", lambda: pickle.dumps({"a": np.zeros(10_000)}, protocol=2), "10000 elements"),
])
def test_inspect_au_refuses_hostile_pickles_before_building_them(tmp_path, kind, payload, words):
    path = tmp_path / f"{kind}.pkl"
    path.write_bytes(payload())
    report = inspect_au(path)
    assert not report["ok"] and report["reason"] == "au_pkl_forbidden_global" and words in report["detail"]


def test_inspect_au_orders_frame_zero_rows_by_timestamp(tmp_path):
    rows = [OpenFaceRow(aus=AUS, frame=0, timestamp=0.04 * i) for i in range(5)]
    report = inspect_au(write_openface_csv(tmp_path / "fork.csv", rows))
    assert report["ok"] and report["rule"] == "video_median" and "numbered by timestamp" in report["detail"]


def test_inspect_au_skips_a_cut_off_last_line(tmp_path):
    path = write_openface_csv(tmp_path / "cut.csv", [OpenFaceRow(aus=AUS, frame=f) for f in (1, 2, 3)])
    path.write_bytes(path.read_bytes()[:-30])
    report = inspect_au(path)
    assert report["ok"] and "was cut off" in report["detail"] and report["n_rows"] == 2
