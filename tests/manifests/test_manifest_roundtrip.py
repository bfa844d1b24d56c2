"""Shard + manifest write -> read round trips, verify, the Dataset, and WebDataset streaming."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from manifests.dataset import ManifestDataset, collate_samples, decode_png_rgb, encode_png_rgb
from manifests.reader import read_manifest, read_rejects, verify
from manifests.schema import MANIFEST_SCHEMA, N_AUS, N_LANDMARKS, make_sample_id
from manifests.shards import list_members
from manifests.writer import Sample, commit_unit, merge_rejects, unit_committed


def _sample(i: int, split: str = "train", stage: str = "original", label: int = 4) -> Sample:
    rng = np.random.default_rng(i)
    rgb = rng.integers(0, 256, size=(16, 16, 3), dtype=np.uint8)
    sid = make_sample_id(f"src{i}", stage, seed=i)
    row = {
        "sample_id": sid, "split": split, "source_id": f"src{i}", "source_sha256": f"{i:064x}",
        "stage": stage, "edit_kind": "none" if stage == "original" else "emotion",
        "label": label, "label_kind": "original" if stage == "original" else "target",
        "au_source": [i / 100.0] * N_AUS, "au_target": None if stage == "original" else [0.5] * N_AUS,
        "landmarks": [i + k / 4.0 for k in range(2 * N_LANDMARKS)], "landmark_source": "detector",
        "seed": i, "width": 16, "height": 16, "model_versions": "test", "run_id": "run-1",
        "quality": {"faces_found": 1, "detect_prob": 0.99},
    }
    return Sample(png=encode_png_rgb(rgb), row=row, meta={"label": label}), rgb


def _commit(root, unit, idx, split="train", rejects=None):
    pairs = [_sample(i, split=split, label=1 + i % 7) for i in idx]
    n = commit_unit(root, split=split, run_name="t", unit_id=unit, samples=[p[0] for p in pairs], rejects=rejects)
    return n, {p[0].row["sample_id"]: p[1] for p in pairs}


def test_commit_read_verify_round_trip(tmp_path):
    n1, images = _commit(tmp_path, "train-00000", range(0, 5),
                         rejects=[{"source_id": "bad", "stage": "align", "reason": "no_face", "detail": "x"}])
    n2, more = _commit(tmp_path, "test-00000", range(5, 8), split="test")
    images.update(more)
    assert (n1, n2) == (5, 3)
    assert unit_committed(tmp_path, "train-00000") and not unit_committed(tmp_path, "train-00001")
    table = read_manifest(tmp_path)
    assert table.schema.equals(MANIFEST_SCHEMA)
    assert table.num_rows == 8
    rows = {r["source_id"]: r for r in table.to_pylist()}
    assert rows["src3"]["landmark_source"] == "detector"
    assert rows["src3"]["landmarks"] == [3 + k / 4.0 for k in range(2 * N_LANDMARKS)]  # exact in float32
    assert (tmp_path / "shards/train/t-train-00000.tar").is_file()
    assert (tmp_path / "shards/test/t-test-00000.tar").is_file()
    report = verify(tmp_path)
    assert report.ok, report.summary()
    merge_rejects(tmp_path)
    rejects = read_rejects(tmp_path).to_pylist()
    assert rejects == [{"source_id": "bad", "stage": "align", "reason": "no_face", "detail": "x"}]
    # Each row's byte range decodes to exactly the pixels written.
    ds = ManifestDataset(tmp_path)
    for i in range(len(ds)):
        image, label, aus, row = ds[i]
        assert image.shape == (3, 16, 16) and image.dtype == torch.float32
        expected = torch.from_numpy(images[row["sample_id"]]).permute(2, 0, 1).float() / 255
        assert torch.equal(image, expected)
        assert label == row["label"] and aus.shape == (N_AUS,)


def test_dataset_filters_and_collate(tmp_path):
    _commit(tmp_path, "train-00000", range(0, 7))
    _commit(tmp_path, "test-00000", range(7, 10), split="test")
    assert len(ManifestDataset(tmp_path, split="test")) == 3
    assert len(ManifestDataset(tmp_path, split="train", label=[1, 2])) == 2
    assert len(ManifestDataset(tmp_path, stage="singan")) == 0
    loader = torch.utils.data.DataLoader(ManifestDataset(tmp_path), batch_size=4, collate_fn=collate_samples)
    images, labels, aus, rows = next(iter(loader))
    assert images.shape == (4, 3, 16, 16) and labels.shape == (4,) and len(rows) == 4


def test_verify_fails_on_tampered_shard(tmp_path):
    _commit(tmp_path, "train-00000", range(3))
    shard = tmp_path / "shards/train/t-train-00000.tar"
    row = read_manifest(tmp_path).to_pylist()[1]
    data = bytearray(shard.read_bytes())
    data[row["offset"] + 40] ^= 0xFF
    shard.write_bytes(bytes(data))
    report = verify(tmp_path)
    assert not report.ok
    assert any(row["sample_id"] in e and "sha256" in e for e in report.errors)


def test_verify_reports_orphans_missing_shards_and_duplicates(tmp_path):
    _commit(tmp_path, "train-00000", range(3))
    # An orphan: a shard whose manifest part was never written (crash between the two writes).
    orphan = tmp_path / "shards/train/t-train-00009.tar"
    orphan.write_bytes((tmp_path / "shards/train/t-train-00000.tar").read_bytes())
    report = verify(tmp_path)
    assert not report.ok and report.orphans == ["shards/train/t-train-00009.tar"]
    orphan.unlink()
    # A duplicated part repeats sample ids.
    part = tmp_path / "manifest/part-train-00000.parquet"
    (tmp_path / "manifest/part-copy.parquet").write_bytes(part.read_bytes())
    assert any("appears 2 times" in e for e in verify(tmp_path).errors)
    (tmp_path / "manifest/part-copy.parquet").unlink()
    (tmp_path / "shards/train/t-train-00000.tar").unlink()
    assert any("is missing" in e for e in verify(tmp_path).errors)


def test_commit_refuses_contract_breaks(tmp_path):
    sample, _ = _sample(0, label=9)
    with pytest.raises(ValueError, match="label=9"):
        commit_unit(tmp_path, split="train", run_name="t", unit_id="u", samples=[sample])
    sample, _ = _sample(0, split="test", stage="singan")
    with pytest.raises(ValueError, match="never expanded"):
        commit_unit(tmp_path, split="test", run_name="t", unit_id="u", samples=[sample])
    sample, _ = _sample(0)
    with pytest.raises(ValueError, match="unit is 'test'"):
        commit_unit(tmp_path, split="test", run_name="t", unit_id="u", samples=[sample])
    for update, message in (({"landmark_source": "dlib"}, "landmark_source='dlib'"),
                            ({"landmarks": [1.0] * 10}, "landmarks has 10 values"),
                            ({"landmark_source": "none"}, "landmarks is set"),
                            ({"landmarks": None}, "landmarks is null")):
        sample, _ = _sample(0)
        sample.row.update(update)
        with pytest.raises(ValueError, match=message):
            commit_unit(tmp_path, split="train", run_name="t", unit_id="u", samples=[sample])
    # Nothing was committed by the refused calls.
    assert read_manifest(tmp_path).num_rows == 0


def test_shards_are_deterministic_and_webdataset_compatible(tmp_path):
    _commit(tmp_path / "a", "train-00000", range(4))
    _commit(tmp_path / "b", "train-00000", range(4))
    shard_a = tmp_path / "a/shards/train/t-train-00000.tar"
    assert shard_a.read_bytes() == (tmp_path / "b/shards/train/t-train-00000.tar").read_bytes()
    names = sorted(list_members(shard_a))
    assert all(n.count(".") == 1 and n.split(".")[1] in ("png", "json") for n in names)

    import webdataset as wds

    samples = list(wds.WebDataset(str(shard_a), shardshuffle=False, empty_check=False))
    ids = read_manifest(tmp_path / "a").column("sample_id").to_pylist()
    assert [s["__key__"] for s in samples] == ids
    for s in samples:
        assert decode_png_rgb(s["png"]).shape == (16, 16, 3)
        assert json.loads(s["json"])["label"] in range(1, 8)


def test_crash_during_shard_write_leaves_no_half_shard(tmp_path, monkeypatch):
    import manifests.shards as shards

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    sample, _ = _sample(0)
    monkeypatch.setattr(shards.os, "fsync", boom)
    with pytest.raises(RuntimeError):
        commit_unit(tmp_path, split="train", run_name="t", unit_id="u", samples=[sample])
    monkeypatch.undo()
    assert not list((tmp_path / "shards").rglob("*.tar")) and not list((tmp_path / "shards").rglob(".tmp-*"))
    assert not (tmp_path / "manifest").exists() or not list((tmp_path / "manifest").glob("*.parquet"))


def test_a_row_that_cannot_be_written_leaves_no_orphan_shard(tmp_path):
    good, _ = _sample(1)
    bad, _ = _sample(2)
    bad.row["source_id"] = "happy/bad\udcff\udcfename"  # how os.listdir hands over a non-UTF-8 file name
    with pytest.raises(ValueError, match="not valid UTF-8"):
        commit_unit(tmp_path, split="train", run_name="t", unit_id="train-b0-0123456789", samples=[good, bad])
    assert not list(tmp_path.rglob("*.tar")) and not unit_committed(tmp_path, "train-b0-0123456789")
    assert verify(tmp_path).orphans == []


def test_a_failure_after_the_shard_removes_it(tmp_path, monkeypatch):
    import manifests.writer as writer

    def broken(table, path):
        raise OSError("disk full")

    monkeypatch.setattr(writer, "atomic_write_table", broken)
    with pytest.raises(OSError):
        commit_unit(tmp_path, split="train", run_name="t", unit_id="u", samples=[_sample(1)[0]])
    assert not list(tmp_path.rglob("*.tar"))


def test_reject_rows_with_undecodable_names_are_stored_escaped(tmp_path):
    from manifests.writer import write_rejects_part

    row = {"source_id": "happy/bad\udcffname", "stage": "ingest", "reason": "bad_file_name", "detail": "/x/bad\udcffname.png"}
    write_rejects_part(tmp_path, "ingest", [row])
    merge_rejects(tmp_path)
    (stored,) = read_rejects(tmp_path).to_pylist()
    assert stored["source_id"] == "happy/bad\\xffname" and stored["detail"] == "/x/bad\\xffname.png"


def test_retire_units_removes_parts_rejects_and_shards_not_in_the_plan(tmp_path):
    from manifests.writer import retire_units

    _commit(tmp_path, "train-b0-0000000000", range(0, 2),
            rejects=[{"source_id": "x", "stage": "align", "reason": "no_face", "detail": ""}])
    _commit(tmp_path, "train-b1-1111111111", range(2, 4))
    # a crash between shard and part left this one's shard only
    (tmp_path / "shards" / "train" / "t-train-b1-2222222222.tar").write_bytes(b"partial")
    assert retire_units(tmp_path, {"train-b1-1111111111"}) == ["train-b0-0000000000"]
    assert sorted(p.name for p in (tmp_path / "shards" / "train").iterdir()) == ["t-train-b1-1111111111.tar"]
    assert not (tmp_path / "rejects" / "part-train-b0-0000000000.parquet").exists()
    assert read_manifest(tmp_path).num_rows == 2 and verify(tmp_path).ok


def test_an_older_pyarrow_that_cannot_read_null_au_lists_is_named_as_the_cause(tmp_path, monkeypatch):
    """pyarrow 25 raised 'Expected all lists to be of size=17' on the null au_target of every original (apache/arrow
    #35692; seen on a GPU image): the error says which pyarrow to install instead of suggesting a damaged part."""
    import pyarrow as pa

    import manifests.reader as reader

    _commit(tmp_path, "train-00000", range(0, 3))  # originals: au_target is null

    class OldReader:
        def __init__(self, *args, **kwargs):
            pass

        def to_table(self, **kwargs):
            raise pa.ArrowInvalid("Expected all lists to be of size=17 but index 1 had size=0")

    monkeypatch.setattr(reader.ds, "dataset", OldReader)
    monkeypatch.setattr(reader.pa, "__version__", "25.0.1")
    with pytest.raises(reader.ManifestError, match=r"pyarrow 25.0.1 cannot read .*pip install 'pyarrow>=26'"):
        read_manifest(tmp_path)
    monkeypatch.setattr(reader.pa, "__version__", "26.0.1")  # a current pyarrow failing so is a damaged part
    with pytest.raises(reader.ManifestError, match="singanimation verify"):
        read_manifest(tmp_path)
