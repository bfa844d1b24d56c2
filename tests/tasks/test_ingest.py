"""Tests for tasks.ingest: RAF-DB, class-folder and CSV readers on tiny datasets built in tmp_path."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tasks.ingest import (
    DatasetError,
    IngestConfig,
    IngestResult,
    detect_layout,
    ingest_dataset,
    parse_emotion,
    read_class_folders,
    read_csv_list,
    read_rafdb,
)

_counter = iter(range(1_000_000))


def write_image(path: Path) -> Path:
    """A tiny image with unique pixels (so every file has its own sha256); format from the extension."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(next(_counter))
    Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).save(path)
    return path


def make_rafdb(root: Path, lines: list[str], image_dir: str = "aligned", skip: tuple[str, ...] = ()) -> Path:
    """RAF-DB basic layout; writes an image for every listed name that looks like one, except `skip`."""
    (root / "EmoLabel").mkdir(parents=True, exist_ok=True)
    (root / "EmoLabel" / "list_patition_label.txt").write_text("\n".join(lines) + "\n")
    (root / "Image" / image_dir).mkdir(parents=True, exist_ok=True)
    for line in lines:
        tokens = line.split()
        if not tokens or not tokens[0].endswith(".jpg") or tokens[0] in skip:
            continue
        stem = tokens[0].removesuffix(".jpg")
        name = f"{stem}_aligned.jpg" if image_dir == "aligned" else tokens[0]
        if not (root / "Image" / image_dir / name).exists():
            write_image(root / "Image" / image_dir / name)
    return root


def reasons_by_id(result: IngestResult) -> dict[str, list[str]]:
    table: dict[str, list[str]] = {}
    for row in result.rejects:
        table.setdefault(row["source_id"], []).append(row["reason"])
    return table


def assert_hashes_match(result: IngestResult) -> None:
    for record in result.records:
        assert Path(record.path).is_absolute()
        assert record.sha256 == hashlib.sha256(Path(record.path).read_bytes()).hexdigest()


def assert_reject_rows_complete(result: IngestResult) -> None:
    for row in result.rejects:
        assert set(row) == {"source_id", "stage", "reason", "detail"}
        assert row["stage"] == "ingest" and row["source_id"] and row["detail"]


BASIC_LINES = [
    "train_00002.jpg 4",
    "train_00001.jpg 5",
    "train_00003.jpg 7",
    "test_0002.jpg 4",
    "test_0001.jpg 1",
]


# ---------------------------------------------------------------- RAF-DB


def test_rafdb_aligned_reads_both_splits_with_stable_ids_and_hashes(tmp_path):
    root = make_rafdb(tmp_path / "basic", BASIC_LINES)

    result = read_rafdb(root, IngestConfig())

    assert result.layout == "rafdb" and result.rejects == []
    assert [(r.split, r.source_id, r.label) for r in result.records] == [
        ("train", "train_00001", 5), ("train", "train_00002", 4), ("train", "train_00003", 7),
        ("test", "test_0001", 1), ("test", "test_0002", 4),
    ]
    assert all(r.path.endswith(f"Image/aligned/{r.source_id}_aligned.jpg") for r in result.records)
    assert_hashes_match(result)
    counts = result.counts()
    assert counts["train"] == {1: 0, 2: 0, 3: 0, 4: 1, 5: 1, 6: 0, 7: 1}
    assert counts["test"] == {1: 1, 2: 0, 3: 0, 4: 1, 5: 0, 6: 0, 7: 0}
    assert ingest_dataset(root) == result  # auto layout finds RAF-DB and reads it identically


def test_rafdb_original_images_keep_the_same_source_ids(tmp_path):
    root = make_rafdb(tmp_path / "basic", BASIC_LINES, image_dir="original")

    result = read_rafdb(root, IngestConfig(image_dir="original"))

    assert [r.source_id for r in result.records] == [
        "train_00001", "train_00002", "train_00003", "test_0001", "test_0002"]
    assert all(r.path.endswith(f"Image/original/{r.source_id}.jpg") for r in result.records)
    assert_hashes_match(result)
    with pytest.raises(DatasetError, match="image_dir='original'"):  # default is aligned, which is absent
        read_rafdb(root, IngestConfig())


def test_rafdb_each_broken_line_gets_its_reason_and_the_rest_ingests(tmp_path):
    lines = [
        "train_00001.jpg 5",
        "train_00002.jpg",            # label_line_malformed
        "train_00003.jpg five",       # label_line_malformed
        "train_00004.jpg 0",          # bad_label
        "train_00005.jpg 12",         # bad_label
        "train_0006.jpg 4",           # bad_name: train needs 5 digits
        "train_00007.jpg 4",          # file_missing
        "train_00001.jpg 5",          # duplicate_entry (same label: first copy kept)
        "train_00008.jpg 3",          # duplicate_entry, conflicting labels: both copies rejected
        "train_00008.jpg 6",
        "train_00009.jpg 2",          # empty_file
        "train_00010.jpg 2",          # not_an_image
        "",
        "test_0001.jpg 1",
        "test_00002.jpg 1",           # bad_name: test needs 4 digits
        "train_00011.jpg 4",          # split_order: train after test
        "test_0003.jpg 7",
    ]
    root = make_rafdb(tmp_path / "basic", lines, skip=("train_00007.jpg",))
    (root / "Image/aligned/train_00009_aligned.jpg").write_bytes(b"")
    (root / "Image/aligned/train_00010_aligned.jpg").write_text("this is not a jpeg")

    result = read_rafdb(root, IngestConfig())

    assert [r.source_id for r in result.records] == ["train_00001", "test_0001", "test_0003"]
    assert reasons_by_id(result) == {
        "train_00002": ["label_line_malformed"],
        "train_00003": ["label_line_malformed"],
        "train_00004": ["bad_label"],
        "train_00005": ["bad_label"],
        "train_0006": ["bad_name"],
        "train_00007": ["file_missing"],
        "train_00001": ["duplicate_entry"],
        "train_00008": ["duplicate_entry", "duplicate_entry"],
        "train_00009": ["empty_file"],
        "train_00010": ["not_an_image"],
        "test_00002": ["bad_name"],
        "train_00011": ["split_order"],
    }
    assert_reject_rows_complete(result)
    split_order = next(r for r in result.rejects if r["reason"] == "split_order")
    assert "line 16" in split_order["detail"] and "line 14" in split_order["detail"]
    assert result.reject_counts()["duplicate_entry"] == 3
    assert_hashes_match(result)


def test_rafdb_compound_release_is_refused_by_its_labels(tmp_path):
    lines = [f"train_{i:04d}.jpg {label}" for i, label in enumerate(range(1, 12), start=1)]
    root = make_rafdb(tmp_path / "raf", lines)

    with pytest.raises(DatasetError, match="compound release") as error:
        read_rafdb(root, IngestConfig())
    assert "RAF-DB/basic" in str(error.value) and "labels 8..11" in str(error.value)


def test_rafdb_compound_release_is_refused_by_its_folder_name(tmp_path):
    root = make_rafdb(tmp_path / "compound", BASIC_LINES)

    with pytest.raises(DatasetError, match="compound release.*named 'compound'"):
        ingest_dataset(root)


def test_rafdb_single_stray_label_9_in_a_large_basic_file_is_only_a_bad_label(tmp_path):
    lines = [f"train_{i:05d}.jpg 4" for i in range(1, 151)] + ["train_00151.jpg 9"]
    root = make_rafdb(tmp_path / "basic", lines)

    result = read_rafdb(root, IngestConfig())

    assert len(result.records) == 150
    assert result.rejects == [
        {"source_id": "train_00151", "stage": "ingest", "reason": "bad_label", "detail": result.rejects[0]["detail"]}]


def test_rafdb_structural_problems_raise_dataset_error(tmp_path):
    with pytest.raises(DatasetError, match="not a RAF-DB root"):
        read_rafdb(tmp_path, IngestConfig())
    root = make_rafdb(tmp_path / "basic", ["garbage", "more garbage here"])
    with pytest.raises(DatasetError, match="no '<image name> <label>' lines"):
        read_rafdb(root, IngestConfig())


def test_rafdb_unlisted_images_are_reported_as_a_warning(tmp_path):
    root = make_rafdb(tmp_path / "basic", BASIC_LINES)
    write_image(root / "Image/aligned/train_09999_aligned.jpg")

    result = read_rafdb(root, IngestConfig())

    assert len(result.records) == 5
    assert any("train_09999_aligned.jpg" in w for w in result.warnings)


# ---------------------------------------------------------------- layout detection


def test_detect_layout(tmp_path):
    make_rafdb(tmp_path / "RAF-DB" / "basic", BASIC_LINES)
    write_image(tmp_path / "faces" / "happy" / "a.png")
    (tmp_path / "empty").mkdir()

    assert detect_layout(tmp_path / "RAF-DB" / "basic") == "rafdb"
    assert detect_layout(tmp_path / "faces") == "folders"
    with pytest.raises(DatasetError, match="basic"):  # the release's parent folder was given
        detect_layout(tmp_path / "RAF-DB")
    with pytest.raises(DatasetError, match="cannot tell the layout"):
        detect_layout(tmp_path / "empty")
    with pytest.raises(DatasetError, match="not a directory"):
        detect_layout(tmp_path / "missing")


# ---------------------------------------------------------------- class folders


def test_folders_without_split_level_match_synonyms_case_insensitively(tmp_path):
    root = tmp_path / "faces"
    for rel in ["Happy/a.jpg", "ANGRY/b.png", "sad/c.JPEG", "Surprised/d.png", "7/e.png",
                "Fearful/f.bmp", "disgusted/g.png", "afraid/deeper/h.png"]:
        write_image(root / rel)
    (root / "Happy" / ".DS_Store").write_bytes(b"\0\1")     # ignored silently
    (root / "__MACOSX" / "Happy").mkdir(parents=True)       # ignored silently
    (root / "__MACOSX" / "Happy" / "._a.jpg").write_bytes(b"\0\5\26\7")
    (root / "sad" / "notes.txt").write_text("labeller notes")  # rejected: not an image extension
    (root / "README.md").write_text("dataset readme")         # loose non-image in the root: ignored

    result = read_class_folders(root, IngestConfig())

    assert result.layout == "folders"
    assert [(r.source_id, r.label, r.split) for r in result.records] == [
        ("7/e", 7, "train"), ("ANGRY/b", 6, "train"), ("Fearful/f", 2, "train"), ("Happy/a", 4, "train"),
        ("Surprised/d", 1, "train"), ("afraid/deeper/h", 2, "train"), ("disgusted/g", 3, "train"),
        ("sad/c", 5, "train"),
    ]
    assert reasons_by_id(result) == {"sad/notes": ["not_an_image_ext"]}
    assert_hashes_match(result)
    as_test = read_class_folders(root, IngestConfig(default_split="test"))
    assert {r.split for r in as_test.records} == {"test"}
    assert ingest_dataset(root) == result


def test_folders_with_split_level_map_val_to_test_and_prefix_source_ids(tmp_path):
    root = tmp_path / "faces"
    for rel in ["train/happy/a.png", "train/neutral/b.png", "Test/sad/c.png", "val/anger/d.png"]:
        write_image(root / rel)
    write_image(root / "train" / "loose.png")  # no class folder: cannot be labelled

    result = ingest_dataset(root)

    assert [(r.source_id, r.split, r.label) for r in result.records] == [
        ("train/happy/a", "train", 4), ("train/neutral/b", "train", 7),
        ("Test/sad/c", "test", 5), ("val/anger/d", "test", 6),
    ]
    assert reasons_by_id(result) == {"train/loose": ["no_class_folder"]}
    assert result.counts()["test"][5] == 1


def test_folders_unknown_class_is_rejected_per_image_unless_mapped_or_dropped(tmp_path):
    root = tmp_path / "faces"
    for rel in ["happy/a.png", "Contempt/b.png", "Contempt/c.png"]:
        write_image(root / rel)

    rejected = read_class_folders(root, IngestConfig())
    assert [r.source_id for r in rejected.records] == ["happy/a"]
    assert reasons_by_id(rejected) == {"Contempt/b": ["unknown_class"], "Contempt/c": ["unknown_class"]}
    assert "class_map" in rejected.rejects[0]["detail"]
    assert rejected.unknown_classes == {"Contempt": 2}
    assert any("Contempt" in w and "2 images" in w for w in rejected.warnings)

    mapped = read_class_folders(root, IngestConfig(class_map=(("contempt", 3),)))
    assert [(r.source_id, r.label) for r in mapped.records] == [("Contempt/b", 3), ("Contempt/c", 3), ("happy/a", 4)]
    assert mapped.rejects == [] and mapped.unknown_classes == {}

    dropped = read_class_folders(root, IngestConfig(unknown_class="drop"))
    assert [r.source_id for r in dropped.records] == ["happy/a"]
    assert dropped.rejects == [] and dropped.unknown_classes == {"Contempt": 2}
    assert any("dropped" in w for w in dropped.warnings)


def test_folders_duplicate_stem_and_broken_file_are_rejected(tmp_path):
    root = tmp_path / "faces"
    write_image(root / "happy" / "a.jpg")
    write_image(root / "happy" / "a.png")   # same source_id happy/a: the second (sorted) is rejected
    (root / "sad").mkdir()
    (root / "sad" / "b.png").write_text("not a png")

    result = read_class_folders(root, IngestConfig())

    assert [r.path.endswith("a.jpg") for r in result.records] == [True]
    assert sorted(row["reason"] for row in result.rejects) == ["duplicate_entry", "not_an_image"]
    assert read_class_folders(root, IngestConfig(verify_images=False)).counts()["train"][5] == 1


def test_folders_structural_problems_raise_dataset_error(tmp_path):
    mixed = tmp_path / "mixed"
    write_image(mixed / "train" / "happy" / "a.png")
    write_image(mixed / "sad" / "b.png")
    with pytest.raises(DatasetError, match="mixes split folders"):
        read_class_folders(mixed, IngestConfig())

    zero_based = tmp_path / "zero_based"
    for rel in ["0/a.png", "1/b.png"]:
        write_image(zero_based / rel)
    with pytest.raises(DatasetError, match="0-based"):
        read_class_folders(zero_based, IngestConfig())
    remapped = read_class_folders(zero_based, IngestConfig(class_map={"0": 6, "1": 3}))
    assert [(r.source_id, r.label) for r in remapped.records] == [("0/a", 6), ("1/b", 3)]

    (tmp_path / "no_images" / "happy").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no images found"):
        read_class_folders(tmp_path / "no_images", IngestConfig())


# ---------------------------------------------------------------- CSV


def test_csv_list_reads_paths_labels_and_splits_and_rejects_bad_rows(tmp_path):
    data = tmp_path / "data"
    for name in ["imgs/a.jpg", "imgs/b.png", "imgs/c.png", "imgs/d.png", "imgs/e.png", "imgs/f.png",
                 "imgs/g.png", "imgs/h.png", "imgs/dup.png"]:
        write_image(data / name)
    outside = write_image(tmp_path / "elsewhere" / "z.png")
    (data / "labels.csv").write_text(
        "Path, Label ,split\n"
        "imgs/a.jpg,happy,train\n"
        "./imgs/b.png,7,test\n"
        f"{outside},Sad,\n"               # absolute path; empty split -> default
        "imgs/c.png,9,train\n"            # bad_label
        "imgs/d.png,contempt,train\n"     # unknown_class
        "imgs/e.png,4,holdout\n"          # bad_split
        "imgs/missing.png,4,train\n"      # file_missing
        "imgs/f.png\n"                    # csv_row_malformed
        "imgs/notes.txt,4,train\n"        # not_an_image_ext
        "imgs/dup.png,4,train\n"
        "imgs/dup.png,4,train\n"          # duplicate_entry
        "\n"
        "imgs/g.png,Fearful,val\n"        # val -> test
        "imgs/h.png,4,train,extra\n"      # csv_row_malformed (shifted columns)
    )

    result = read_csv_list(data / "labels.csv", IngestConfig())

    assert result.layout == "csv"
    assert [(r.source_id, r.split, r.label) for r in result.records] == [
        (str(outside.with_suffix("")), "train", 5), ("imgs/a", "train", 4), ("imgs/dup", "train", 4),
        ("imgs/b", "test", 7), ("imgs/g", "test", 2),
    ]
    assert reasons_by_id(result) == {
        "imgs/c": ["bad_label"], "imgs/d": ["unknown_class"], "imgs/e": ["bad_split"],
        "imgs/missing": ["file_missing"], "imgs/f": ["csv_row_malformed"], "imgs/notes": ["not_an_image_ext"],
        "imgs/dup": ["duplicate_entry"], "imgs/h": ["csv_row_malformed"],
    }
    assert result.unknown_classes == {"contempt": 1}
    assert_reject_rows_complete(result)
    assert_hashes_match(result)
    via_entry = ingest_dataset(data, IngestConfig(csv_path="labels.csv"))
    assert via_entry == result == ingest_dataset(data / "labels.csv")


def test_csv_same_file_under_two_spellings_is_one_record(tmp_path):
    image = write_image(tmp_path / "a.png")
    (tmp_path / "list.csv").write_text(f"path,label\na.png,happy\n{image},happy\n")

    result = read_csv_list(tmp_path / "list.csv", IngestConfig(default_split="test"))

    assert [(r.source_id, r.split) for r in result.records] == [("a", "test")]
    assert [row["reason"] for row in result.rejects] == ["duplicate_entry"]


def test_csv_structural_problems_raise_dataset_error(tmp_path):
    write_image(tmp_path / "a.png")
    cases = {
        "no_label.csv": ("path,split\na.png,train\n", "lacks column.*label"),
        "semicolon.csv": ("path;label\na.png;4\n", "another delimiter"),
        "empty.csv": ("", "empty"),
        "header_only.csv": ("path,label\n", "no rows"),
        "zero_based.csv": ("path,label\na.png,0\n", "0-based"),
    }
    for name, (text, message) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(DatasetError, match=message):
            read_csv_list(tmp_path / name, IngestConfig())
    with pytest.raises(DatasetError, match="does not exist"):
        read_csv_list(tmp_path / "absent.csv", IngestConfig())
    with pytest.raises(DatasetError, match="csv_path"):
        ingest_dataset(tmp_path, IngestConfig(layout="csv"))


# ---------------------------------------------------------------- labels and config


@pytest.mark.parametrize("value, expected", [
    ("Surprise", 1), ("surprised", 1), ("FEAR", 2), ("fearful", 2), ("afraid", 2), ("disgust", 3),
    ("Disgusted", 3), ("happy", 4), ("Happiness", 4), ("sad", 5), ("sadness", 5), ("angry", 6),
    ("Anger", 6), (" neutral ", 7), ("1", 1), ("07", 7), (4, 4), (np.int64(6), 6),
    ("0", None), ("8", None), (8, None), ("contempt", None), ("", None), (True, None), (4.0, None),
])
def test_parse_emotion(value, expected):
    assert parse_emotion(value) == expected


def test_parse_emotion_class_map_comes_first():
    assert parse_emotion("Contempt", (("contempt", 3),)) == 3
    assert parse_emotion("0", {"0": 6}) == 6
    assert parse_emotion(0, {"0": 6}) == 6
    assert parse_emotion("neutral", {"neutral": 5}) == 5


def test_config_validates_and_freezes_class_map():
    config = IngestConfig(class_map={"Contempt": 3, "07": 7})
    assert config.class_map == (("7", 7), ("contempt", 3))
    hash(config)  # frozen and hashable, so it can be a cached Prefect parameter
    with pytest.raises(ValueError, match="1..7"):
        IngestConfig(class_map={"contempt": 8})
    with pytest.raises(ValueError, match="layout"):
        IngestConfig(layout="imagenet")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="default_split"):
        IngestConfig(default_split="val")  # type: ignore[arg-type]


def test_byte_identical_images_keep_one_copy_and_the_test_copy_wins(tmp_path):
    from PIL import Image as PILImage

    from tasks.ingest import IngestConfig, ingest_dataset

    pixels = PILImage.new("RGB", (40, 40), (10, 200, 30))
    for rel in ("train/happy/a.png", "train/sad/b.png", "test/happy/c.png", "train/neutral/other.png"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (pixels if "other" not in rel else PILImage.new("RGB", (40, 40), (1, 2, 3))).save(tmp_path / rel)
    result = ingest_dataset(tmp_path, IngestConfig(layout="folders"))
    assert sorted(r.source_id for r in result.records) == ["test/happy/c", "train/neutral/other"]
    dupes = sorted(r["source_id"] for r in result.rejects if r["reason"] == "duplicate_image")
    assert dupes == ["train/happy/a", "train/sad/b"]
    assert all("test/happy/c" in r["detail"] for r in result.rejects if r["reason"] == "duplicate_image")
