"""prepare on a dataset that grows or is edited in place: an incremental update, correct by construction."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from flows.prepare import ConfigMismatch, PrepareSettings, prepare
from manifests.reader import read_manifest, verify
from tasks.align import AlignConfig
from tasks.ingest import IngestConfig
from tasks.synthetic import RenderConfig, random_aus, random_identity, render_face

CLASSES = ("happy", "sad", "neutral", "angry")


def _write_faces(root, indices):
    rng = np.random.default_rng(0)
    for i in indices:
        folder = root / CLASSES[i % len(CLASSES)]
        folder.mkdir(parents=True, exist_ok=True)
        rgb = render_face(random_identity(i), random_aus(rng), RenderConfig(image_size_px=48))
        Image.fromarray(rgb).save(folder / f"face_{i:03d}.png")


def _settings(dataset, out) -> PrepareSettings:
    return PrepareSettings(dataset=str(dataset), out=str(out), run_name="inc", ingest=IngestConfig(layout="folders"),
                           align=AlignConfig(mode="none", image_size_px=32), unit_size=4)


def _rows(out):
    # where a sample sits (shard, offset) and which run wrote it differ between a resumed and a clean run
    table = read_manifest(out).drop(["run_id", "shard", "offset"])
    return sorted(table.to_pylist(), key=lambda r: r["sample_id"])


def test_growth_computes_only_the_new_sources(tmp_path):
    data, out = tmp_path / "data", tmp_path / "out"
    _write_faces(data, range(40))
    first = prepare(_settings(data, out))
    assert first["written"] == 40 and first["verify_ok"]
    old_units = first["units"]

    _write_faces(data, range(40, 44))  # 10% more images
    second = prepare(_settings(data, out))
    assert second["skipped_units"] == old_units and second["retired_units"] == 0
    assert second["written"] == 4 and second["units"] > old_units  # only the new sources' work
    assert verify(out).ok
    table = read_manifest(out)
    assert table.num_rows == 44 and len(set(table.column("sample_id").to_pylist())) == 44
    config = json.loads((out / "run_config.json").read_text())
    assert config["inputs"]["sources"] == 44 and config["inputs"]["previous_fingerprint"] == first["inputs_fingerprint"]

    clean = tmp_path / "clean"
    prepare(_settings(data, clean))
    assert _rows(out) == _rows(clean)  # the same samples as a clean run on the grown dataset


def test_dataset_edited_in_place_is_updated_not_corrupted(tmp_path):
    data, out = tmp_path / "data", tmp_path / "out"
    _write_faces(data, range(24))
    prepare(_settings(data, out))
    changed, deleted = data / "happy" / "face_000.png", data / "sad" / "face_001.png"
    Image.fromarray(np.full((48, 48, 3), 30, np.uint8)).save(changed)
    deleted.unlink()

    summary = prepare(_settings(data, out))
    assert summary["verify_ok"] and verify(out).ok
    assert 1 <= summary["retired_units"] <= 2 and summary["written"] < 23  # only the units that held them
    table = read_manifest(out)
    ids = table.column("source_id").to_pylist()
    assert len(ids) == 23 == len(set(ids)) and "sad/face_001" not in ids
    assert len(set(table.column("sample_id").to_pylist())) == 23
    clean = tmp_path / "clean"
    prepare(_settings(data, clean))
    assert _rows(out) == _rows(clean)


def test_relative_dataset_paths_from_two_folders_do_not_merge(tmp_path, monkeypatch):
    out = tmp_path / "out"
    for name, faces in (("a", range(4)), ("b", range(10, 14))):
        _write_faces(tmp_path / name / "data", faces)
    monkeypatch.chdir(tmp_path / "a")
    settings = _settings("data", out)
    assert settings.dataset == str(tmp_path / "a" / "data")
    prepare(settings)
    monkeypatch.chdir(tmp_path / "b")
    with pytest.raises(ConfigMismatch):
        prepare(_settings("data", out))
    assert read_manifest(out).num_rows == 4 and verify(out).ok
