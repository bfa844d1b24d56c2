"""prepare_unit's landmark columns: each source (OpenFace CSV, detector, none), the mapping into the crop, the rejects."""
from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest

from manifests.reader import read_manifest, read_rejects
from manifests.schema import AU_INTENSITY_MAX, AU_NAMES
from tasks.align import AlignConfig
from tasks.ingest import ingest_dataset
from tasks.openface import OpenFaceRow, read_openface_csv, write_openface_csv
from tasks.prepare import AUConfig, plan_units, prepare_unit
from tasks.synthetic import RenderConfig, random_identity, render_landmarks68, write_synthetic_dataset

SOURCE_PX, CROP_PX = 48, 64  # the drawn faces are pre-aligned 48 px images, prepared (align none) to 64 px crops


@pytest.fixture(scope="module")
def drawn(tmp_path_factory):
    return write_synthetic_dataset(tmp_path_factory.mktemp("drawn"), n_identities=3, per_identity=2, seed=1,
                                   config=RenderConfig(image_size_px=SOURCE_PX))


def _prepare(drawn, out: Path, landmarks: str, csv_dir: Path | None = None):
    records = ingest_dataset(drawn.images_root).records
    for unit in plan_units(records, 100, "test"):
        prepare_unit(unit, out, run_name="t", run_id="r", align=AlignConfig(mode="none", image_size_px=CROP_PX),
                     aus=AUConfig(path=str(csv_dir or drawn.openface_dir)), landmarks=landmarks)
    rows = {r["source_id"].rsplit("/", 1)[-1]: r for r in read_manifest(out).to_pylist()}
    rejects = {r["source_id"].rsplit("/", 1)[-1]: r for r in read_rejects(out).to_pylist()}
    return rows, rejects


def _truth(drawn) -> dict[str, np.ndarray]:
    """stem -> the exact 68 points of that drawn face, in the 64 px crop's pixels."""
    out = {}
    with open(drawn.ground_truth_csv, newline="") as f:
        for row in csv.DictReader(f):
            aus = np.array([float(row[name]) for name in AU_NAMES])
            points = render_landmarks68(random_identity(int(row["identity_seed"])), aus, RenderConfig(SOURCE_PX))
            out[row["name"]] = (points + 0.5) * CROP_PX / SOURCE_PX - 0.5  # cv2.resize's pixel-centre mapping
    return out


def test_openface_points_are_scaled_into_the_resized_crop(drawn, tmp_path):
    """align none + a 48 -> 64 px resize: the CSV's points (in the 48 px image) land on the exact 64 px points."""
    rows, rejects = _prepare(drawn, tmp_path, "auto")
    assert not rejects and len(rows) == drawn.n_images
    truth = _truth(drawn)
    for stem, row in rows.items():
        assert row["landmark_source"] == "openface" and "landmarks:auto/dlib-" in row["model_versions"]
        np.testing.assert_allclose(np.reshape(row["landmarks"], (68, 2)), truth[stem], atol=1e-3)


def test_detector_and_none_sources(drawn, tmp_path):
    rows, rejects = _prepare(drawn, tmp_path / "detector", "detector")
    assert not rejects and {r["landmark_source"] for r in rows.values()} == {"detector"}
    # align none: the crops are framed their own way, so dlib's face detector finds each face's box.
    assert all(len(r["landmarks"]) == 136 and "landmarks:detector/dlib-20.0.1-sp68-" in r["model_versions"]
               and "-find-box;" in r["model_versions"] for r in rows.values())
    rows, rejects = _prepare(drawn, tmp_path / "none", "none")
    assert not rejects and all(r["landmarks"] is None and r["landmark_source"] == "none" for r in rows.values())
    assert all("landmarks:none;" in r["model_versions"] for r in rows.values())


def _edited_csvs(drawn, tmp_path: Path, edits: dict[int, str]) -> tuple[Path, dict[int, str]]:
    """A copy of the CSV folder where the i-th file is rewritten: "off" = points moved off the image,
    "aus_only" = no landmark columns. Returns the folder and {i: stem}."""
    csv_dir = tmp_path / "openface"
    shutil.copytree(drawn.openface_dir, csv_dir)
    paths = sorted(csv_dir.glob("*.csv"))
    for i, how in edits.items():
        reading = read_openface_csv(paths[i])
        if how == "off":  # the CSV of another, bigger image: its face sits 300 px to the right
            row = OpenFaceRow(aus=reading.values * AU_INTENSITY_MAX, landmarks68=reading.landmarks68 + [300.0, 0.0])
            write_openface_csv(paths[i], [row], variant="landmark_img")
        else:
            write_openface_csv(paths[i], [OpenFaceRow(aus=reading.values * AU_INTENSITY_MAX)], variant="aus_only")
    return csv_dir, {i: paths[i].stem for i in edits}


def test_points_off_the_crop_and_missing_points_are_rejected_and_the_run_goes_on(drawn, tmp_path):
    csv_dir, stems = _edited_csvs(drawn, tmp_path, {0: "off", 1: "aus_only"})
    rows, rejects = _prepare(drawn, tmp_path / "openface-only", "openface", csv_dir)
    assert rejects[stems[0]]["reason"] == "landmarks_off_crop" and rejects[stems[0]]["stage"] == "landmarks"
    assert "does the CSV describe this image?" in rejects[stems[0]]["detail"]
    assert rejects[stems[1]]["reason"] == "landmarks_missing"
    assert "no 2D landmark columns" in rejects[stems[1]]["detail"]
    assert len(rows) == drawn.n_images - 2 and all(r["landmark_source"] == "openface" for r in rows.values())
    # auto: a CSV without points falls back to the detector; points that describe another image still reject.
    rows, rejects = _prepare(drawn, tmp_path / "auto", "auto", csv_dir)
    assert set(rejects) == {stems[0]} and rows[stems[1]]["landmark_source"] == "detector"


def test_a_gan_pkl_has_no_points_so_auto_uses_the_detector(drawn, tmp_path):
    import pickle

    table = {}
    for path in sorted(drawn.openface_dir.glob("*.csv")):
        table[path.stem] = read_openface_csv(path).values * AU_INTENSITY_MAX
    pkl = tmp_path / "aus_openface.pkl"
    pkl.write_bytes(pickle.dumps(table, protocol=2))
    records = ingest_dataset(drawn.images_root).records
    for unit in plan_units(records, 100, "test"):
        prepare_unit(unit, tmp_path / "out", run_name="t", run_id="r",
                     align=AlignConfig(mode="none", image_size_px=CROP_PX), aus=AUConfig(path=str(pkl)), landmarks="auto")
    rows = read_manifest(tmp_path / "out").to_pylist()
    assert len(rows) == drawn.n_images and {r["landmark_source"] for r in rows} == {"detector"}


def test_auto_keeps_a_face_the_detector_cannot_read_without_landmarks():
    """Landmarks are optional in auto (only the warp editor needs them); asked for explicitly, they are required."""
    from types import SimpleNamespace

    from tasks.errors import RejectError
    from tasks.prepare import source_landmarks

    class Blind:
        def detect(self, crop):
            raise RejectError("landmarks", "landmarks_no_face", "dlib found no face")

    face = SimpleNamespace(crop=np.zeros((32, 32, 3), np.uint8), transform=None)
    assert source_landmarks(face, None, "auto", Blind()) == (None, "none")
    with pytest.raises(RejectError) as err:
        source_landmarks(face, None, "detector", Blind())
    assert err.value.reason == "landmarks_no_face"
