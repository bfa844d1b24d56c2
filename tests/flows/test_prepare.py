"""The prepare flow end to end on real faces: outputs, rejects, report, resume after a crash, verify."""
from __future__ import annotations

import shutil

import pyarrow.compute as pc
import pytest

from flows.prepare import ConfigMismatch, PrepareSettings, prepare
from manifests.dataset import ManifestDataset
from manifests.reader import read_manifest, read_rejects, verify
from manifests.schema import MANIFEST_SCHEMA
from tasks.align import AlignConfig
from tasks.ingest import IngestConfig
from tasks.prepare import AUConfig
from tasks.sample_data import build_sample_dataset


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    return build_sample_dataset(tmp_path_factory.mktemp("sample"))


def _settings(sample, out, **kw) -> PrepareSettings:
    return PrepareSettings(dataset=sample["images"], out=str(out), run_name="t", ingest=IngestConfig(layout="folders"),
                           align=AlignConfig(image_size_px=64), aus=AUConfig(path=sample["openface"]), unit_size=3, **kw)


def _comparable(out):
    # run_id names the flow run that wrote a row, so it differs between runs by design.
    return read_manifest(out).drop(["run_id"]).to_pylist()


@pytest.fixture(scope="module")
def clean_run(sample, tmp_path_factory):
    out = tmp_path_factory.mktemp("clean")
    summary = prepare(_settings(sample, out))
    return out, summary


def test_prepare_writes_verified_manifest_shards_rejects_and_report(sample, clean_run):
    out, summary = clean_run
    assert summary["verify_ok"] and verify(out).ok
    table = read_manifest(out)
    assert table.schema.equals(MANIFEST_SCHEMA)
    assert table.num_rows == sample["faces"] == summary["written"]
    assert set(table.column("stage").to_pylist()) == {"original"}
    assert sorted(set(table.column("split").to_pylist())) == ["test", "train"]
    assert all(len(a) == 17 for a in table.column("au_source").to_pylist())
    reasons = {(r["source_id"], r["reason"]) for r in read_rejects(out).to_pylist()}
    assert ("train/neutral/gradient_no_face", "no_face") in reasons
    assert any(sid == "train/happy/truncated" and reason == "corrupt_image" for sid, reason in reasons)
    assert ("train/surprise/grace_hopper_no_csv", "au_file_missing") in reasons
    report = (out / "report.md").read_text()
    assert "no_face" in report and "Happiness" in report
    assert (out / "contact_sheet.png").stat().st_size > 1000
    assert (out / "run_config.json").is_file()
    images = ManifestDataset(out, split="train")
    image, label, aus, row = images[0]
    assert image.shape == (3, 64, 64) and row["split"] == "train"


def test_interrupted_run_resumes_to_the_same_manifest(sample, clean_run, tmp_path, monkeypatch):
    import tasks.prepare as prep

    real_commit, calls = prep.commit_unit, {"n": 0}

    def crash_on_third(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("simulated crash")  # not retried, like a killed process
        return real_commit(*args, **kwargs)

    monkeypatch.setattr(prep, "commit_unit", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        prepare(_settings(sample, tmp_path))
    monkeypatch.setattr(prep, "commit_unit", real_commit)
    partial = read_manifest(tmp_path).num_rows
    assert 0 < partial < clean_run[1]["written"]
    summary = prepare(_settings(sample, tmp_path))
    assert summary["skipped_units"] == 2
    assert _comparable(tmp_path) == _comparable(clean_run[0])
    assert verify(tmp_path).ok
    # A third run does nothing new and duplicates nothing.
    again = prepare(_settings(sample, tmp_path))
    assert again["written"] == 0 and _comparable(tmp_path) == _comparable(clean_run[0])


def test_rerun_with_other_settings_is_refused(sample, clean_run, tmp_path):
    shutil.copy(clean_run[0] / "run_config.json", tmp_path / "run_config.json")
    with pytest.raises(ConfigMismatch):
        prepare(_settings(sample, tmp_path).model_copy(update={"unit_size": 5}))


def test_missing_aus_can_be_kept(sample, tmp_path):
    settings = _settings(sample, tmp_path).model_copy(update={"aus": AUConfig(path=sample["openface"], missing="keep")})
    prepare(settings)
    table = read_manifest(tmp_path, filter=pc.field("source_id") == "train/surprise/grace_hopper_no_csv")
    assert table.num_rows == 1 and table.column("au_source").to_pylist() == [None]


def test_landmarks_from_both_sources_on_real_photos(clean_run):
    """CSVs with landmark columns give OpenFace's points (mapped through the alignment), the aus_only CSVs the
    detector's; the sample CSVs' points were found by the detector in each photo, so both agree on the crop."""
    import numpy as np

    from manifests.dataset import decode_png_rgb
    from manifests.shards import read_member
    from tasks.landmarks import LandmarkDetector, check_landmarks

    out, _ = clean_run
    rows = read_manifest(out).to_pylist()
    assert {r["landmark_source"] for r in rows} == {"openface", "detector"}
    detector = LandmarkDetector()
    for row in rows:
        points = check_landmarks(row["landmarks"], 64)
        assert "landmarks:auto/dlib-" in row["model_versions"]
        if row["landmark_source"] == "openface":
            crop = decode_png_rgb(read_member(out / row["shard"], row["offset"], row["size"]))
            # Found at 128 px in the photo's own alignment, mapped to the photo and into this 64 px crop.
            error_px = np.linalg.norm(points - detector.detect(crop), axis=1)
            assert np.median(error_px) < 1.5 and error_px[36:68].mean() < 2.0, row["source_id"]
