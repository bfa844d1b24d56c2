"""fit-au-shape: recovery of a known basis, held-out bookkeeping, CSV / manifest inputs, the CLI, the real CSVs."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from flows.cli import main
from manifests.schema import AU_INTENSITY_MAX, N_AUS
from models.au_shape import AUShapeModel, default_au_shape_model
from tasks.au_shape import load_au_shape
from tasks.au_shape_fit import (
    POSE_COLUMNS,
    REGIONS,
    FitConfig,
    FitInputError,
    ShapeRows,
    evaluate,
    fit_au_shape,
    fit_scaled,
    fit_shape,
    holdout_folds,
    load_rows,
    read_openface_rows,
    save_au_shape,
    summarise_errors,
)
from tasks.openface import OpenFaceRow, synthetic_landmarks68, write_openface_csv

# ../shared/data relative to the repo root; SINGANIMATION_SHARED_DATA points a git worktree at it.
SHARED_OPENFACE = Path(os.environ.get("SINGANIMATION_SHARED_DATA",
                                      Path(__file__).resolve().parents[2] / ".." / "shared" / "data")) / "openface"
EYES = list(range(36, 48))


def _known_model(rng: np.random.Generator, still_eyes: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """A sparse random basis [17, 68, 2] (about 0.05 face units per unit AU) and pose terms [3, 68, 2]."""
    basis = rng.normal(0.0, 0.05, (N_AUS, 68, 2)) * (rng.random((N_AUS, 68, 1)) < 0.3)
    pose_terms = rng.normal(0.0, 0.2, (len(POSE_COLUMNS), 68, 2))
    if still_eyes:  # the face frame comes from the eye centres: keep it fixed so px -> face units is exact
        basis[:, EYES] = 0.0
        pose_terms[:, EYES] = 0.0
    return basis, pose_terms


def _synthetic(rng: np.random.Generator, basis: np.ndarray, pose_terms: np.ndarray, n_per_group: int,
               n_groups: int, noise: float) -> ShapeRows:
    template = synthetic_landmarks68((0.0, 0.0), 1.0)          # already in face units: eyes at (-/+0.5, 0)
    points, aus, pose, group = [], [], [], []
    for g in range(n_groups):
        neutral = template + rng.normal(0.0, 0.02, template.shape)
        neutral[EYES] = template[EYES]
        a = rng.random((n_per_group, N_AUS))
        p = rng.normal(0.0, 0.1, (n_per_group, len(POSE_COLUMNS)))
        eps = rng.normal(0.0, noise, (n_per_group, 68, 2))
        eps[:, EYES] = 0.0
        points.append(neutral + np.tensordot(a, basis, axes=([1], [0])) + np.tensordot(p, pose_terms, axes=([1], [0]))
                      + eps)
        aus.append(a)
        pose.append(p)
        group.append(np.full(n_per_group, g))
    return ShapeRows(points=np.concatenate(points), aus=np.concatenate(aus), pose=np.concatenate(pose),
                     group=np.concatenate(group), time=np.tile(np.arange(n_per_group, dtype=float), n_groups),
                     groups=[f"g{g}" for g in range(n_groups)])


def _write_csvs(folder: Path, rows: ShapeRows, seed: int = 0) -> list[Path]:
    """One FeatureExtraction CSV per group: points in px (rotated, scaled, moved), AUs 0..5, pose columns set."""
    rng = np.random.default_rng(seed)
    paths = []
    for g in np.unique(rows.group):
        idx = np.flatnonzero(rows.group == g)
        angle, scale, shift = rng.uniform(-0.3, 0.3), rng.uniform(30, 60), rng.uniform(100, 200, 2)
        rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
        of_rows = [OpenFaceRow(aus=rows.aus[i] * AU_INTENSITY_MAX, frame=k + 1,
                               landmarks68=shift + scale * rows.points[i] @ rot.T) for k, i in enumerate(idx)]
        path = write_openface_csv(folder / f"subject{g}.csv", of_rows)
        lines = path.read_text().splitlines()
        header = lines[0].split(", ")
        cols = [header.index(name) for name in POSE_COLUMNS]
        for k, i in enumerate(idx):
            cells = lines[k + 1].split(", ")
            for c, value in zip(cols, rows.pose[i]):
                cells[c] = repr(float(value))
            lines[k + 1] = ", ".join(cells)
        path.write_text("\n".join(lines) + "\n")
        paths.append(path)
    return paths


# ---------------------------------------------------------------------------------------------
# The fit finds a known basis
# ---------------------------------------------------------------------------------------------
def test_fit_recovers_known_basis_and_pose_terms():
    rng = np.random.default_rng(0)
    basis, pose_terms = _known_model(rng)
    rows = _synthetic(rng, basis, pose_terms, n_per_group=150, n_groups=2, noise=0.003)
    fit = fit_shape(rows.points, rows.aus, rows.pose, rows.group, ridge=1e-3)
    assert np.abs(fit.basis - basis).max() < 0.006
    assert np.abs(fit.pose_terms - pose_terms).max() < 0.03
    # Without pose terms the pose motion has nowhere to go but noise and the AU basis: worse.
    no_pose = fit_shape(rows.points, rows.aus, None, rows.group, ridge=1e-3)
    assert np.abs(no_pose.basis - basis).mean() > 3 * np.abs(fit.basis - basis).mean()


def test_residual_fit_shrinks_toward_the_prior_and_local_stays_on_its_points():
    rng = np.random.default_rng(1)
    default = default_au_shape_model().basis
    rows = _synthetic(rng, default, np.zeros((3, 68, 2)), n_per_group=40, n_groups=1, noise=0.01)
    heavy_full = fit_shape(rows.points, rows.aus, rows.pose, rows.group, ridge=1e6)
    heavy_residual = fit_shape(rows.points, rows.aus, rows.pose, rows.group, ridge=1e6, prior=default)
    assert np.abs(heavy_full.basis).max() < 1e-3             # toward 0
    assert np.abs(heavy_residual.basis - default).max() < 1e-3  # toward the FACS default
    support = np.linalg.norm(default, axis=-1) > 0
    local = fit_shape(rows.points, rows.aus, rows.pose, rows.group, ridge=1e-3, prior=default, support=support)
    assert np.all(local.basis[~support] == 0.0)
    assert np.abs(local.basis - default).max() < 0.05


def test_scaled_fit_recovers_each_aus_size_under_pose():
    rng = np.random.default_rng(9)
    default = default_au_shape_model().basis
    sizes = rng.uniform(0.5, 3.0, N_AUS)
    _, pose_terms = _known_model(rng)
    rows = _synthetic(rng, sizes[:, None, None] * default, pose_terms, n_per_group=150, n_groups=2, noise=0.002)
    fit = fit_scaled(rows.points, rows.aus, rows.pose, rows.group, 0.0, default)
    found = (fit.basis * default).sum(axis=(1, 2)) / (default ** 2).sum(axis=(1, 2))
    np.testing.assert_allclose(found, sizes, atol=0.1)
    np.testing.assert_allclose(fit.pose_terms, pose_terms, atol=0.03)
    pulled = fit_scaled(rows.points, rows.aus, rows.pose, rows.group, 1e6, default)
    np.testing.assert_allclose(pulled.basis, default, atol=1e-3)   # a huge ridge keeps the default's size


def test_one_standard_error_rule_prefers_the_conservative_model():
    rng = np.random.default_rng(10)
    rows = _synthetic(rng, default_au_shape_model().basis, np.zeros((3, 68, 2)), n_per_group=100, n_groups=2,
                      noise=0.01)
    best = evaluate(rows, FitConfig(choose="best"))
    one_se = evaluate(rows, FitConfig(choose="1se"))
    assert best["chosen"]["name"] == best["chosen"]["best"]
    error = {name: v["all_rows"]["face_units"]["all"] for name, v in one_se["table"].items()}
    assert error[best["chosen"]["name"]] == min(e for n, e in error.items() if n.startswith("fit:"))
    # The data follow the default: the one-parameter-per-AU model is as good as any, and is chosen.
    assert one_se["chosen"]["mode"] == "scaled" and one_se["chosen"]["ridge"] == 10.0
    chosen = one_se["chosen"]["name"]
    assert error[chosen] <= error[best["chosen"]["name"]] + one_se["table"][chosen]["se_of_difference_to_best"]


# ---------------------------------------------------------------------------------------------
# Held-out bookkeeping
# ---------------------------------------------------------------------------------------------
def test_block_folds_hold_each_row_out_once_with_a_gap():
    rng = np.random.default_rng(2)
    rows = _synthetic(rng, *_known_model(rng), n_per_group=120, n_groups=2, noise=0.0)
    rows.time = rng.permutation(len(rows)).astype(float)  # time order is not row order
    config = FitConfig(block_frames=10, gap_frames=2, folds=4)
    folds = holdout_folds(rows, config)
    held = np.concatenate([test for _, test in folds])
    assert sorted(held.tolist()) == list(range(len(rows)))
    for train, test in folds:
        assert not set(train) & set(test)
        for g in (0, 1):
            t_train = np.sort(rows.time[train][rows.group[train] == g])
            t_test = np.sort(rows.time[test][rows.group[test] == g])
            members = np.sort(rows.time[rows.group == g])
            rank = {t: k for k, t in enumerate(members)}
            gaps = np.abs(np.array([rank[t] for t in t_train])[:, None] - np.array([rank[t] for t in t_test])[None])
            assert gaps.min() > config.gap_frames
            assert len({rank[t] // 10 for t in t_test}) == len(t_test) // 10  # whole blocks


def test_file_folds_leave_one_subject_out_and_need_two():
    rng = np.random.default_rng(3)
    rows = _synthetic(rng, *_known_model(rng), n_per_group=30, n_groups=3, noise=0.0)
    folds = holdout_folds(rows, FitConfig(holdout="files"))
    assert [set(rows.group[test]) for _, test in folds] == [{0}, {1}, {2}]
    assert all(g not in set(rows.group[train]) for g, (train, _) in enumerate(folds))
    one = _synthetic(rng, *_known_model(rng), n_per_group=30, n_groups=1, noise=0.0)
    with pytest.raises(FitInputError, match="at least 2 subjects"):
        holdout_folds(one, FitConfig(holdout="files"))


def test_summarise_errors_regions_and_pixels():
    errors = np.zeros((4, 68))
    errors[:, list(REGIONS["mouth"])] = 0.1
    errors[:2, list(REGIONS["jaw"])] = 0.2
    out = summarise_errors(errors, iod_px=31.0)
    assert out["rows"] == 4
    assert out["face_units"]["mouth"] == pytest.approx(0.1)
    assert out["face_units"]["jaw"] == pytest.approx(0.1)
    assert out["face_units"]["brows"] == 0.0
    assert out["face_units"]["all"] == pytest.approx((20 * 0.1 + 17 * 0.1) / 68)
    assert out["px"]["mouth"] == pytest.approx(3.1)


def test_evaluate_when_the_data_follow_the_facs_default_exactly():
    rng = np.random.default_rng(4)
    rows = _synthetic(rng, default_au_shape_model().basis, np.zeros((3, 68, 2)), n_per_group=100, n_groups=2,
                      noise=0.0)
    result = evaluate(rows, FitConfig(ridge=1e-4, mode="full"))
    table = result["table"]
    assert result["held_out_rows"] == len(rows) and result["folds"] == 4  # 100 rows = 4 blocks of 25: fold 5 is empty
    assert table["mean_shape"]["all_rows"]["face_units"]["all"] > 0.01
    assert table["facs_default"]["all_rows"]["face_units"]["all"] < 1e-9
    assert table[result["chosen"]["name"]]["all_rows"]["face_units"]["all"] < 1e-4
    # Data that never change: the mean shape is exact, and every method agrees.
    still = _synthetic(rng, np.zeros((N_AUS, 68, 2)), np.zeros((3, 68, 2)), n_per_group=60, n_groups=1, noise=0.0)
    assert evaluate(still, FitConfig(ridge=1.0))["table"]["mean_shape"]["all_rows"]["face_units"]["all"] < 1e-12


# ---------------------------------------------------------------------------------------------
# Inputs: OpenFace CSVs, a prepared manifest
# ---------------------------------------------------------------------------------------------
def test_csv_rows_round_trip_through_pixels_and_recover_the_basis(tmp_path):
    rng = np.random.default_rng(5)
    basis, pose_terms = _known_model(rng, still_eyes=True)
    rows = _synthetic(rng, basis, pose_terms, n_per_group=150, n_groups=2, noise=0.002)
    _write_csvs(tmp_path, rows)
    loaded = load_rows([tmp_path], FitConfig())
    assert len(loaded) == len(rows) and loaded.pose is not None and len(loaded.groups) == 2
    np.testing.assert_allclose(loaded.points, rows.points, atol=1e-6)
    np.testing.assert_allclose(loaded.aus, rows.aus, atol=1e-9)
    result = fit_au_shape([tmp_path], FitConfig(ridge=1e-3, mode="full"))
    assert np.abs(result.model.basis - basis).max() < 0.006
    table = result.report["evaluation"]["table"]
    fitted = table[result.report["evaluation"]["chosen"]["name"]]["all_rows"]["face_units"]["all"]
    assert fitted < 0.2 * table["mean_shape"]["all_rows"]["face_units"]["all"]


def test_untrusted_rows_are_skipped_and_a_cut_off_last_line_is_tolerated(tmp_path):
    face = synthetic_landmarks68((100.0, 100.0), 40.0)
    rows = [OpenFaceRow(aus=[1.0] * N_AUS, frame=0, timestamp=0.04 * k, landmarks68=face) for k in range(6)]
    rows[1] = OpenFaceRow(aus=[1.0] * N_AUS, frame=0, timestamp=0.04, success=0, landmarks68=face)
    rows[2] = OpenFaceRow(aus=[1.0] * N_AUS, frame=0, timestamp=0.08, confidence=0.5, landmarks68=face)
    path = write_openface_csv(tmp_path / "cut.csv", rows)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) - len(data.splitlines()[-1]) // 2 - 1])  # half the last row, no newline
    skipped: dict[str, int] = {}
    read = read_openface_rows(path, 0.8, skipped)
    assert skipped == {"success=0": 1, "confidence<0.8": 1}
    assert len(read["faces"][0]["aus"]) == 3                      # rows 0, 3, 4; row 5 was cut off
    assert read["faces"][0]["time"] == pytest.approx([0.0, 0.12, 0.16])  # timestamps, though frame = 0 throughout
    assert "cut off" in read["note"]


def test_single_image_csvs_share_one_neutral_shape(tmp_path):
    rng = np.random.default_rng(11)
    basis, _ = _known_model(rng, still_eyes=True)
    rows = _synthetic(rng, basis, np.zeros((3, 68, 2)), n_per_group=1, n_groups=80, noise=0.002)
    for g in range(80):   # one FaceLandmarkImg-style CSV per photo, 80 people with slightly different faces
        write_openface_csv(tmp_path / f"img{g:03d}.csv",
                           [OpenFaceRow(aus=rows.aus[g] * AU_INTENSITY_MAX, landmarks68=100 + 40 * rows.points[g])],
                           variant="landmark_img")
    pooled = load_rows([tmp_path], FitConfig())
    assert pooled.groups == ["pooled: 80 inputs"] and len(pooled) == 80 and pooled.pose is not None
    per_file = load_rows([tmp_path], FitConfig(subjects="file"))
    assert len(per_file.groups) == 80
    with pytest.raises(FitInputError, match="no held-out fold"):
        fit_au_shape([tmp_path], FitConfig(subjects="file"))
    result = fit_au_shape([tmp_path], FitConfig(ridge=1e-3, mode="full", pose="none"))
    table = result.report["evaluation"]["table"]
    fitted = table[result.report["evaluation"]["chosen"]["name"]]["all_rows"]["face_units"]["all"]
    # Each person's own face differs by about 0.02 IOD per point (mean distance 0.02 * sqrt(pi / 2) = 0.025): the
    # fit cannot go below that floor, but gets close to it, well under the mean shape's error.
    assert fitted < 1.1 * 0.02 * np.sqrt(np.pi / 2) and fitted < 0.7 * table["mean_shape"]["all_rows"]["face_units"]["all"]


def _manifest(tmp_path: Path, rows: ShapeRows, monkeypatch, with_landmarks: bool = True) -> Path:
    """A hand-made prepared output: one original per row, landmarks in 128 px crop pixels."""
    import pyarrow as pa

    import manifests.reader
    import manifests.writer
    from manifests.dataset import encode_png_rgb
    from manifests.schema import MANIFEST_SCHEMA
    from manifests.writer import Sample, commit_unit

    if with_landmarks and "landmarks" not in MANIFEST_SCHEMA.names:
        # The landmarks columns (DESIGN.md) land from another branch; give this test the contract's schema.
        schema = MANIFEST_SCHEMA.append(pa.field("landmarks", pa.list_(pa.float32(), 136))).append(
            pa.field("landmark_source", pa.string()))
        monkeypatch.setattr(manifests.writer, "MANIFEST_SCHEMA", schema)
        monkeypatch.setattr(manifests.reader, "MANIFEST_SCHEMA", schema)
    png = encode_png_rgb(np.zeros((8, 8, 3), np.uint8))
    samples = []
    for i in range(len(rows)):
        crop = 64.0 + 31.0 * rows.points[i] + [0.0, -10.0]
        row = {"sample_id": f"s{i:04d}", "split": "train", "source_id": f"img{i:04d}", "source_sha256": "0" * 64,
               "stage": "original", "edit_kind": "none", "label": 4, "label_kind": "original",
               "au_source": rows.aus[i].astype(np.float32).tolist(), "width": 128, "height": 128,
               "model_versions": "t", "run_id": "r"}
        if with_landmarks:
            row.update(landmarks=crop.reshape(-1).astype(np.float32).tolist(), landmark_source="openface")
        elif "landmarks" in MANIFEST_SCHEMA.names:   # the column exists, the faces have none
            row.update(landmarks=None, landmark_source="none")
        samples.append(Sample(png, row))
    root = tmp_path / "prepared"
    commit_unit(root, split="train", run_name="t", unit_id="u0", samples=samples)
    return root


def test_prepared_manifest_input(tmp_path, monkeypatch):
    rng = np.random.default_rng(6)
    basis, _ = _known_model(rng, still_eyes=True)
    rows = _synthetic(rng, basis, np.zeros((3, 68, 2)), n_per_group=120, n_groups=1, noise=0.002)
    root = _manifest(tmp_path, rows, monkeypatch)
    result = fit_au_shape([root], FitConfig(ridge=1e-3, mode="full"))
    assert result.report["rows"] == 120 and result.report["pose_terms"] is False
    assert np.abs(result.model.basis - basis).max() < 0.01


def test_prepared_manifest_without_landmarks_is_a_clear_error(tmp_path, monkeypatch, capsys):
    from manifests.schema import MANIFEST_SCHEMA

    rng = np.random.default_rng(7)
    rows = _synthetic(rng, *_known_model(rng), n_per_group=10, n_groups=1, noise=0.0)
    root = _manifest(tmp_path, rows, monkeypatch, with_landmarks=False)
    assert main(["fit-au-shape", str(root), "--out", str(tmp_path / "m.json")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "m.json").exists()
    if "landmarks" in MANIFEST_SCHEMA.names:   # a manifest whose faces all have landmark_source 'none'
        assert "0 usable row(s)" in err and "'no_landmarks': 10" in err
    else:                                      # a manifest written before the landmarks column existed
        assert "landmark_columns_missing" in err and "no landmarks" in err


# ---------------------------------------------------------------------------------------------
# The CLI and the loader
# ---------------------------------------------------------------------------------------------
def test_cli_writes_a_loadable_model_and_prints_the_table(tmp_path, capsys):
    rng = np.random.default_rng(8)
    rows = _synthetic(rng, *_known_model(rng, still_eyes=True), n_per_group=60, n_groups=2, noise=0.002)
    _write_csvs(tmp_path / "csv", rows)
    out = tmp_path / "models" / "au_shape.json"
    report = tmp_path / "report.json"
    assert main(["fit-au-shape", str(tmp_path / "csv"), "--out", str(out), "--ridge", "0.1", "--holdout", "files",
                 "--report", str(report)]) == 0
    text = capsys.readouterr().out
    assert "(a) mean shape" in text and "(b) mean + FACS default" in text and "(c) fitted" in text
    assert "| AU01 |" in text and "wrote" in text
    model = AUShapeModel.from_json(json.loads(out.read_text()))
    assert model.name.startswith("fit:") and model.basis.shape == (N_AUS, 68, 2)
    assert load_au_shape(out).version == model.version
    assert dict(model.info)["fit"]["rows"] == 120
    assert not list(out.parent.glob(".tmp-*"))
    written = json.loads(report.read_text())
    assert written["rows"] == 120 and written["evaluation"]["holdout"] == "files" and len(written["au_signal"]) == N_AUS


@pytest.mark.parametrize("case, message", [
    ("aus_only", "landmark_columns_missing"),
    ("few_rows", "need at least 40"),
    ("missing", "no such file or folder"),
    ("empty_dir", "no *.csv inside"),
    ("untrusted", "confidence<0.8"),
])
def test_cli_bad_inputs_exit_2_with_one_line(tmp_path, capsys, case, message):
    face = synthetic_landmarks68((100.0, 100.0), 40.0)
    target = tmp_path / "in"
    target.mkdir()
    if case == "aus_only":
        write_openface_csv(target / "a.csv", [OpenFaceRow(aus=[1.0] * N_AUS, frame=k + 1) for k in range(50)],
                           variant="aus_only")
    elif case == "few_rows":
        write_openface_csv(target / "a.csv", [OpenFaceRow(aus=[1.0] * N_AUS, frame=k + 1, landmarks68=face)
                                              for k in range(5)])
    elif case == "untrusted":
        write_openface_csv(target / "a.csv", [OpenFaceRow(aus=[1.0] * N_AUS, frame=k + 1, confidence=0.3,
                                                          landmarks68=face) for k in range(50)])
    elif case == "missing":
        target = tmp_path / "nowhere"
    assert main(["fit-au-shape", str(target), "--out", str(tmp_path / "m.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and err.startswith("singanimation fit-au-shape: error:") and "\n" not in err
    assert not (tmp_path / "m.json").exists()


def test_load_au_shape_round_trip_and_errors(tmp_path):
    default = default_au_shape_model()
    path = save_au_shape(default, tmp_path / "default.json")
    assert load_au_shape(path).version == default.version
    with pytest.raises(FileNotFoundError, match="no such AU shape model"):
        load_au_shape(tmp_path / "absent.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not JSON"):
        load_au_shape(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text(json.dumps({"kind": "ganimation"}))
    with pytest.raises(ValueError, match="other.json: not an AU shape model"):
        load_au_shape(tmp_path / "other.json")


# ---------------------------------------------------------------------------------------------
# The real OpenFace CSVs (../shared/data/openface)
# ---------------------------------------------------------------------------------------------
needs_shared = pytest.mark.skipif(not SHARED_OPENFACE.is_dir(),
                                  reason=f"real OpenFace CSVs not present at {SHARED_OPENFACE} (../shared/data)")


@needs_shared
def test_real_csvs_are_read_whole():
    rows = load_rows([SHARED_OPENFACE], FitConfig())
    used = {Path(item["path"]).name: item["used"] for item in rows.inputs}
    assert used == {"facsvatar_jt_raw.csv": 474, "pyfeat_OpenFace_Test.csv": 100}
    assert rows.pose is not None and not rows.skipped
    jt = rows.time[rows.group == rows.groups.index(str(SHARED_OPENFACE / "facsvatar_jt_raw.csv"))]
    assert np.all(np.diff(jt) > 0)  # frame = 0 throughout; the timestamps order the rows


@needs_shared
def test_real_csvs_fit_beats_the_mean_shape_and_the_default_held_out():
    result = fit_au_shape([SHARED_OPENFACE], FitConfig())
    table = result.report["evaluation"]["table"]
    error = {name: value["all_rows"]["face_units"]["all"] for name, value in table.items()}
    chosen = error[result.report["evaluation"]["chosen"]["name"]]
    assert error["facs_default"] < error["mean_shape"]
    assert chosen < 0.6 * error["facs_default"]
