"""Tests for tasks.openface: every OpenFace CSV variant, each reject reason, face/frame choice, the pkl allow-list."""
from __future__ import annotations

import io
import json
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

from manifests.schema import AU_NAMES
from tasks.errors import RejectError
from tasks.openface import (
    OPENFACE_LAYOUTS,
    AUReading,
    OpenFaceConfig,
    OpenFaceRow,
    detect_openface_layout,
    find_au_file,
    inspect_au,
    landmarks5_from_68,
    read_ganimation_pkl,
    read_openface_csv,
    synthetic_landmarks68,
    write_openface_csv,
)

# Column counts of real OpenFace outputs (RecorderCSV 2.x; FeatureExtraction 1.0; the 2016 AU file).
EXPECTED_COLUMNS = {
    "feature_extraction": 714,
    "landmark_img": 711,
    "feature_extraction_pre2": 431,
    "aus_only": 40,
    "aus_only_img": 37,
    "aus_only_pre2": 39,
    "aus_only_v0": 24,
}
READABLE = [v for v in EXPECTED_COLUMNS if v != "aus_only_v0"]  # v0 lacks AU07_r, AU23_r, AU45_r
# Intensities 0..5 with both ends and values that are not exact in binary.
KNOWN = np.array([0.0, 0.37, 1.2, 2.05, 3.33, 4.99, 5.0, 0.01, 1.0, 2.5, 0.6, 3.9, 4.2, 0.15, 2.71, 1.62, 0.88])


def expected(intensities) -> np.ndarray:
    return (np.asarray(intensities, dtype=np.float64) / 5.0).astype(np.float32)


def header_of(path: Path) -> list[str]:
    first = path.read_bytes().decode("utf-8-sig").splitlines()[0]
    return [c.strip() for c in first.split(",")]


def set_cell(path: Path, column: str, value: str, row: int = 0) -> None:
    """Rewrite one cell, found by column name, in a ", "-separated file."""
    lines = path.read_text().splitlines()
    header = [c.strip() for c in lines[0].split(",")]
    cells = lines[1 + row].split(", ")
    cells[header.index(column)] = value
    lines[1 + row] = ", ".join(cells)
    path.write_text("\n".join(lines) + "\n")


def drop_column(path: Path, column: str) -> None:
    lines = [line.split(", ") for line in path.read_text().splitlines()]
    j = lines[0].index(column)
    path.write_text("\n".join(", ".join(c[:j] + c[j + 1:]) for c in lines) + "\n")


def reject_of(fn, *args, **kwargs) -> RejectError:
    with pytest.raises(RejectError) as info:
        fn(*args, **kwargs)
    assert info.value.stage == "openface"
    return info.value


# ---------------------------------------------------------------------------------------------
# Layouts and round trips
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", list(EXPECTED_COLUMNS))
def test_writer_layouts_have_openface_column_counts(variant, tmp_path):
    path = write_openface_csv(tmp_path / "a.csv", [OpenFaceRow(aus=KNOWN)], variant=variant)
    header = header_of(path)
    assert len(header) == EXPECTED_COLUMNS[variant] == len(OPENFACE_LAYOUTS[variant])
    assert len(set(header)) == len(header)
    assert detect_openface_layout(header) == variant
    data = path.read_text().splitlines()[1].split(", ")
    assert len(data) == len(header)
    assert "AU28_r" not in header  # OpenFace has AU28 presence only
    if variant != "aus_only_v0":
        assert [c for c in header if c.endswith("_r")] == [f"{n}_r" for n in sorted(AU_NAMES)]
        assert "AU28_c" in header and len([c for c in header if c.endswith("_c")]) == 18


def test_layout_heads_match_each_tool():
    assert OPENFACE_LAYOUTS["feature_extraction"][:5] == ("frame", "face_id", "timestamp", "confidence", "success")
    assert OPENFACE_LAYOUTS["landmark_img"][:2] == ("face", "confidence")
    assert OPENFACE_LAYOUTS["feature_extraction_pre2"][:4] == ("frame", "timestamp", "confidence", "success")
    full = OPENFACE_LAYOUTS["feature_extraction"]
    assert {"x_0", "x_67", "y_0", "y_67", "X_67", "gaze_angle_y", "eye_lmk_Z_55", "pose_Rz", "p_33"} <= set(full)
    # GANimation's pkl took columns 2:19 of the FaceLandmarkImg -aus file: exactly the 17 intensities.
    assert OPENFACE_LAYOUTS["aus_only_img"][2:19] == tuple(f"{n}_r" for n in AU_NAMES)


@pytest.mark.parametrize("crlf", [False, True])
@pytest.mark.parametrize("sep", [", ", ","])
@pytest.mark.parametrize("variant", READABLE)
def test_every_variant_round_trips_known_values(variant, sep, crlf, tmp_path):
    path = write_openface_csv(tmp_path / "x.csv", [OpenFaceRow(aus=KNOWN, confidence=0.93, face_id=0, frame=1)],
                              variant=variant, sep=sep, crlf=crlf)
    raw = path.read_bytes()
    assert (b"\r\n" in raw) == crlf
    assert (b", " in raw) == (sep == ", ")
    reading = read_openface_csv(path)
    assert isinstance(reading, AUReading)
    assert reading.values.dtype == np.float32 and reading.values.shape == (17,)
    np.testing.assert_array_equal(reading.values, expected(KNOWN))
    assert reading.rule == "single_row"
    assert reading.row_indices == (0,)
    assert reading.confidence == pytest.approx(0.93)
    has_face = "face_id" in OPENFACE_LAYOUTS[variant] or "face" in OPENFACE_LAYOUTS[variant]
    assert reading.face_id == (0 if has_face else None)
    assert reading.frame == (1 if "frame" in OPENFACE_LAYOUTS[variant] else None)


def test_bom_extra_columns_and_mapping_rows(tmp_path):
    aus = {name: float(v) for name, v in zip(AU_NAMES, KNOWN)}
    path = write_openface_csv(tmp_path / "b.csv", [{"aus": aus, "confidence": 0.9}], variant="feature_extraction",
                              extra_columns=3, bom=True, crlf=True)
    assert path.read_bytes().startswith(b"\xef\xbb\xbf")
    assert len(header_of(path)) == 714 + 3
    assert detect_openface_layout(header_of(path)) == "feature_extraction+3 extra columns"
    np.testing.assert_array_equal(read_openface_csv(path).values, expected(KNOWN))


def test_trailing_separator_on_every_line_is_accepted(tmp_path):
    path = write_openface_csv(tmp_path / "t.csv", [OpenFaceRow(aus=KNOWN)], variant="aus_only", sep=",")
    path.write_text("".join(line + ",\n" for line in path.read_text().splitlines()))
    np.testing.assert_array_equal(read_openface_csv(path).values, expected(KNOWN))


def test_columns_are_read_by_name_not_position(tmp_path):
    path = write_openface_csv(tmp_path / "p.csv", [OpenFaceRow(aus=KNOWN)], variant="feature_extraction")
    rows = [line.split(", ") for line in path.read_text().splitlines()]
    order = np.random.default_rng(0).permutation(len(rows[0]))
    shuffled = tmp_path / "shuffled.csv"
    shuffled.write_text("\n".join(", ".join(r[j] for j in order) for r in rows) + "\n")
    assert header_of(shuffled)[:5] != header_of(path)[:5]
    assert detect_openface_layout(header_of(shuffled)) == "unknown"
    np.testing.assert_array_equal(read_openface_csv(shuffled).values, expected(KNOWN))


# ---------------------------------------------------------------------------------------------
# Rejects
# ---------------------------------------------------------------------------------------------
def good_file(tmp_path: Path, variant: str = "aus_only") -> Path:
    return write_openface_csv(tmp_path / "face.csv", [OpenFaceRow(aus=KNOWN)], variant=variant)


def test_missing_file(tmp_path):
    err = reject_of(read_openface_csv, tmp_path / "nope.csv")
    assert err.reason == "au_file_missing" and "nope.csv" in err.detail


@pytest.mark.parametrize("content", [b"", b"  \n\r\n", b"\xef\xbb\xbf"])
def test_empty_file(content, tmp_path):
    path = tmp_path / "e.csv"
    path.write_bytes(content)
    assert reject_of(read_openface_csv, path).reason == "au_file_empty"


def test_header_only_file_is_empty(tmp_path):
    path = good_file(tmp_path)
    path.write_text(path.read_text().splitlines()[0] + "\n")
    err = reject_of(read_openface_csv, path)
    assert err.reason == "au_file_empty" and "no data rows" in err.detail


@pytest.mark.parametrize("content", [
    b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",              # an image saved as .csv
    "frame, confidence, AU01_r\n1, 0.9, é\n".encode("latin-1"),  # not UTF-8
    b"hello world\nthis is not a table\n",
    b"name,age\nbob,3\n",                                 # a CSV, but not OpenFace's
])
def test_not_an_openface_csv_is_malformed(content, tmp_path):
    path = tmp_path / "m.csv"
    path.write_bytes(content)
    err = reject_of(read_openface_csv, path)
    assert err.reason == "au_file_malformed" and "m.csv" in err.detail


def test_ragged_row_is_malformed(tmp_path):
    path = good_file(tmp_path)
    lines = path.read_text().splitlines()
    path.write_text(lines[0] + "\n" + lines[1].rsplit(", ", 1)[0] + "\n")
    err = reject_of(read_openface_csv, path)
    assert err.reason == "au_file_malformed"
    assert "line 2" in err.detail and "39 fields" in err.detail and "40" in err.detail


def test_repeated_header_column_is_malformed(tmp_path):
    path = good_file(tmp_path)
    path.write_text(path.read_text().replace("AU02_r", "AU01_r", 1))
    err = reject_of(read_openface_csv, path)
    assert err.reason == "au_file_malformed" and "AU01_r" in err.detail


def test_non_numeric_value_is_malformed(tmp_path):
    path = good_file(tmp_path)
    set_cell(path, "AU12_r", "abc")
    err = reject_of(read_openface_csv, path)
    assert err.reason == "au_file_malformed"
    assert "AU12_r" in err.detail and "'abc'" in err.detail and "line 2" in err.detail


@pytest.mark.parametrize("column", ["AU12_r", "AU45_r", "confidence"])
def test_missing_column(column, tmp_path):
    path = good_file(tmp_path)
    drop_column(path, column)
    err = reject_of(read_openface_csv, path)
    assert err.reason == "au_columns_missing" and column in err.detail


def test_2016_openface_au_file_is_missing_three_aus(tmp_path):
    path = good_file(tmp_path, "aus_only_v0")
    err = reject_of(read_openface_csv, path)
    assert err.reason == "au_columns_missing"
    for column in ("AU07_r", "AU23_r", "AU45_r"):
        assert column in err.detail
    assert "AU01_r" not in err.detail


@pytest.mark.parametrize("text", ["nan", "-nan", "-nan(ind)", ""])
def test_nan_value(text, tmp_path):
    path = good_file(tmp_path)
    set_cell(path, "AU06_r", text)
    err = reject_of(read_openface_csv, path)
    assert err.reason == "au_value_nan" and "AU06_r" in err.detail and "line 2" in err.detail


@pytest.mark.parametrize("text", ["5.3", "-0.2", "inf", "1e3"])
def test_out_of_range_value_is_not_clipped(text, tmp_path):
    path = good_file(tmp_path)
    set_cell(path, "AU25_r", text)
    err = reject_of(read_openface_csv, path)
    assert err.reason == "au_value_out_of_range" and "AU25_r" in err.detail and text in err.detail


def test_unsuccessful_row_is_not_trusted(tmp_path):
    path = write_openface_csv(tmp_path / "s.csv", [OpenFaceRow(aus=KNOWN, success=0)], variant="aus_only")
    err = reject_of(read_openface_csv, path)
    assert err.reason == "au_no_trusted_row" and "success=0" in err.detail


def test_low_confidence_row_is_not_trusted_and_threshold_is_configurable(tmp_path):
    path = write_openface_csv(tmp_path / "c.csv", [OpenFaceRow(aus=KNOWN, confidence=0.5)], variant="aus_only_img")
    err = reject_of(read_openface_csv, path)
    assert err.reason == "au_no_trusted_row" and "confidence=0.5 < 0.8" in err.detail
    reading = read_openface_csv(path, OpenFaceConfig(min_confidence=0.4))
    np.testing.assert_array_equal(reading.values, expected(KNOWN))


def test_success_must_be_zero_or_one(tmp_path):
    path = good_file(tmp_path)
    set_cell(path, "success", "2")
    assert reject_of(read_openface_csv, path).reason == "au_file_malformed"


# ---------------------------------------------------------------------------------------------
# Several faces
# ---------------------------------------------------------------------------------------------
FACE_AUS = [np.full(17, 1.0), np.full(17, 2.0), np.full(17, 3.0)]
CENTRES = [(60.0, 70.0), (200.0, 80.0), (330.0, 60.0)]


def three_faces(tmp_path: Path, variant: str = "landmark_img", confidences=(0.99, 0.85, 0.9), successes=(1, 1, 1)) -> Path:
    rows = [OpenFaceRow(aus=FACE_AUS[i], face_id=i, confidence=confidences[i], success=successes[i],
                        landmarks68=synthetic_landmarks68(CENTRES[i], 40.0)) for i in range(3)]
    return write_openface_csv(tmp_path / "multi.csv", rows, variant=variant)


def aligner_points(face: int, noise_px: float = 2.0) -> np.ndarray:
    """Stand-in for MTCNN's 5 points on a face: close to, not equal to, OpenFace's."""
    points = landmarks5_from_68(synthetic_landmarks68(CENTRES[face], 40.0))
    return points + np.random.default_rng(face).uniform(-noise_px, noise_px, size=(5, 2))


def test_synthetic_landmarks_give_known_five_points():
    points = landmarks5_from_68(synthetic_landmarks68((100.0, 50.0), 40.0))
    np.testing.assert_allclose(points, [[80, 50], [120, 50], [100, 74], [82, 94], [118, 94]], atol=1e-9)


@pytest.mark.parametrize("variant", ["landmark_img", "feature_extraction"])
def test_multi_face_picks_the_face_matching_the_aligner_landmarks(variant, tmp_path):
    path = three_faces(tmp_path, variant)
    reading = read_openface_csv(path, face_landmarks5=aligner_points(2))
    assert reading.rule == "landmark_match"
    assert reading.face_id == 2 and reading.row_indices == (2,)
    np.testing.assert_array_equal(reading.values, expected(FACE_AUS[2]))
    assert "same eye order" in reading.detail


def test_landmark_match_accepts_the_other_eye_order(tmp_path):
    path = three_faces(tmp_path)
    swapped = aligner_points(1)[[1, 0, 2, 4, 3]]
    reading = read_openface_csv(path, face_landmarks5=swapped)
    assert reading.rule == "landmark_match" and reading.face_id == 1
    assert "eye order swapped" in reading.detail


def test_multi_face_without_landmarks_takes_the_most_confident(tmp_path):
    path = three_faces(tmp_path, confidences=(0.85, 0.97, 0.9))
    reading = read_openface_csv(path)
    assert reading.rule == "most_confident" and reading.face_id == 1
    np.testing.assert_array_equal(reading.values, expected(FACE_AUS[1]))
    assert "no aligner landmarks" in reading.detail


def test_multi_face_in_an_aus_only_file_falls_back_to_most_confident(tmp_path):
    path = three_faces(tmp_path, "aus_only_img")
    reading = read_openface_csv(path, face_landmarks5=aligner_points(2))
    assert reading.rule == "most_confident" and reading.face_id == 0
    assert "no 2D landmark columns" in reading.detail


def test_landmarks_matching_no_face_reject_unless_limit_disabled(tmp_path):
    path = three_faces(tmp_path)
    far = aligner_points(2) + [0.0, 45.0]  # the right place horizontally, a face height too low
    err = reject_of(read_openface_csv, path, face_landmarks5=far)
    assert err.reason == "au_face_mismatch" and "face 2" in err.detail
    reading = read_openface_csv(path, OpenFaceConfig(max_landmark_error_iod=None), face_landmarks5=far)
    assert reading.face_id == 2


def test_matched_face_untrusted_is_rejected_not_swapped_for_another(tmp_path):
    path = three_faces(tmp_path, "feature_extraction", successes=(1, 1, 0))
    err = reject_of(read_openface_csv, path, face_landmarks5=aligner_points(2))
    assert err.reason == "au_no_trusted_row" and "face 2" in err.detail and "success=0" in err.detail


def test_multi_face_all_untrusted(tmp_path):
    path = three_faces(tmp_path, confidences=(0.2, 0.3, 0.1))
    assert reject_of(read_openface_csv, path).reason == "au_no_trusted_row"


# ---------------------------------------------------------------------------------------------
# Videos
# ---------------------------------------------------------------------------------------------
VIDEO_AUS = np.array([np.full(17, 1.0), np.full(17, 2.0), np.full(17, 5.0), np.full(17, 4.0), np.full(17, 3.5)])
VIDEO_AUS[:, 3] = [0.1, 0.4, 0.2, 0.3, 0.5]


def video(tmp_path: Path, variant: str = "feature_extraction") -> Path:
    # Frame 3 failed tracking and frame 4 is low confidence: neither may count.
    rows = [OpenFaceRow(aus=VIDEO_AUS[i], frame=i + 1, confidence=0.3 if i == 3 else 0.95, success=0 if i == 2 else 1)
            for i in range(5)]
    return write_openface_csv(tmp_path / "video.csv", rows, variant=variant)


@pytest.mark.parametrize("variant", ["feature_extraction", "feature_extraction_pre2", "aus_only"])
def test_video_median_over_trusted_frames(variant, tmp_path):
    reading = read_openface_csv(video(tmp_path, variant))
    assert reading.rule == "video_median"
    assert reading.row_indices == (0, 1, 4) and reading.frame is None
    np.testing.assert_array_equal(reading.values, expected(np.median(VIDEO_AUS[[0, 1, 4]], axis=0)))
    assert reading.values[0] == np.float32(2.0 / 5.0)  # not 3.0, which frames 3 and 4 would pull it to
    assert "3 trusted of 5" in reading.detail


def test_video_frame_rule(tmp_path):
    reading = read_openface_csv(video(tmp_path), OpenFaceConfig(video_rule="frame", frame_index=2))
    assert reading.rule == "video_frame" and reading.frame == 2 and reading.row_indices == (1,)
    np.testing.assert_array_equal(reading.values, expected(VIDEO_AUS[1]))


def test_video_frame_rule_missing_or_untrusted_frame(tmp_path):
    path = video(tmp_path)
    err = reject_of(read_openface_csv, path, OpenFaceConfig(video_rule="frame", frame_index=9))
    assert err.reason == "au_frame_missing" and "frame=9" in err.detail
    err = reject_of(read_openface_csv, path, OpenFaceConfig(video_rule="frame", frame_index=3))
    assert err.reason == "au_no_trusted_row" and "frame 3" in err.detail
    image = three_faces(tmp_path)
    err = reject_of(read_openface_csv, image, OpenFaceConfig(video_rule="frame", frame_index=1))
    assert err.reason == "au_frame_missing" and "no frame column" in err.detail


def test_video_checks_only_the_rows_it_uses(tmp_path):
    path = video(tmp_path)
    set_cell(path, "AU09_r", "nan", row=2)  # an untrusted frame: ignored
    assert read_openface_csv(path).rule == "video_median"
    set_cell(path, "AU09_r", "nan", row=4)  # a trusted frame: rejected, not skipped
    err = reject_of(read_openface_csv, path)
    assert err.reason == "au_value_nan" and "line 6" in err.detail


def test_multi_face_video(tmp_path):
    rows = []
    for frame in (1, 2, 3):
        for face, (centre, conf) in enumerate([((60.0, 70.0), 0.9), ((200.0, 80.0), 0.97)]):
            rows.append(OpenFaceRow(aus=np.full(17, face + frame * 0.5), frame=frame, face_id=face, confidence=conf,
                                    landmarks68=synthetic_landmarks68(centre, 40.0)))
    path = write_openface_csv(tmp_path / "vm.csv", rows, variant="feature_extraction")
    confident = read_openface_csv(path)
    assert confident.rule == "video_median" and confident.face_id == 1 and confident.row_indices == (1, 3, 5)
    np.testing.assert_array_equal(confident.values, expected(np.full(17, 2.0)))
    assert "most confident" in confident.detail
    matched = read_openface_csv(path, face_landmarks5=aligner_points(0))
    assert matched.face_id == 0 and matched.row_indices == (0, 2, 4) and "matches" in matched.detail
    np.testing.assert_array_equal(matched.values, expected(np.full(17, 1.0)))


def test_duplicate_rows_for_one_face_and_frame_are_malformed(tmp_path):
    rows = [OpenFaceRow(aus=KNOWN, frame=1), OpenFaceRow(aus=KNOWN, frame=1)]
    path = write_openface_csv(tmp_path / "d.csv", rows, variant="aus_only_pre2")
    assert reject_of(read_openface_csv, path).reason == "au_file_malformed"


# ---------------------------------------------------------------------------------------------
# GANimation pkl
# ---------------------------------------------------------------------------------------------
class _Py2Pickler(pickle._Pickler):
    """Writes str and bytes as Python 2 wrote its `str` (SHORT_BINSTRING / BINSTRING), like GANimation's pkl."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj) -> None:
        raw = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)
        self.memoize(obj)

    dispatch[str] = save_py2_str
    dispatch[bytes] = save_py2_str


def py2_pickle(obj) -> bytes:
    buffer = io.BytesIO()
    _Py2Pickler(buffer, protocol=2).dump(obj)
    # numpy 1.x (all Python 2 numpy) lived at numpy.core; numpy 2 pickles say numpy._core.
    return buffer.getvalue().replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")


PKL_AUS = {"N_0000000356_00190": KNOWN, "N_0000000437_00540": KNOWN[::-1].copy(), "train_00001_aligned": np.full(17, 5.0)}


def test_reads_a_python2_style_pickle_of_numpy_arrays(tmp_path):
    data = py2_pickle(PKL_AUS)
    assert b"numpy.core.multiarray\n_reconstruct" in data and b"_codecs" not in data
    assert data[:2] == b"\x80\x02"
    path = tmp_path / "aus_openface.pkl"
    path.write_bytes(data)
    table = read_ganimation_pkl(path)
    assert set(table) == set(PKL_AUS)
    for stem, values in PKL_AUS.items():
        assert table[stem].dtype == np.float32 and table[stem].shape == (17,)
        np.testing.assert_array_equal(table[stem], expected(values))


@pytest.mark.parametrize("protocol", [2, 5])
def test_reads_python3_pickles(protocol, tmp_path):
    content = {stem: np.asarray(v, dtype=np.float64) for stem, v in PKL_AUS.items()}
    content["as_list"] = [float(v) for v in KNOWN]
    path = tmp_path / "aus.pkl"
    path.write_bytes(pickle.dumps(content, protocol=protocol))
    table = read_ganimation_pkl(path)
    np.testing.assert_array_equal(table["N_0000000356_00190"], expected(KNOWN))
    np.testing.assert_array_equal(table["as_list"], expected(KNOWN))


class _RunsShell:
    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


class _Evaluates:
    def __init__(self, code: str):
        self.code = code

    def __reduce__(self):
        return eval, (self.code,)


def test_malicious_pickle_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"x": _RunsShell(f"touch '{marker}'")}, protocol=2)
    # The payload is real: the standard loader runs it.
    proof = tmp_path / "proof"
    pickle.loads(pickle.dumps(_RunsShell(f"touch '{proof}'"), protocol=2))
    assert proof.exists()
    path = tmp_path / "evil.pkl"
    path.write_bytes(payload)
    err = reject_of(read_ganimation_pkl, path)
    assert err.reason == "au_pkl_forbidden_global" and "system" in err.detail
    assert not marker.exists()


@pytest.mark.parametrize("payload_kind", ["eval", "numpy_other", "codecs_other"])
def test_other_globals_are_refused(payload_kind, tmp_path):
    marker = tmp_path / "marker"
    if payload_kind == "eval":
        payload = py2_pickle({"k": _Evaluates(f"open({str(marker)!r}, 'w').close()")})
    elif payload_kind == "numpy_other":
        payload = pickle.dumps({"k": np.load}, protocol=2)
    else:  # _codecs.encode is allowed only for latin1, the way Python 3 writes bytes
        payload = b"\x80\x02c_codecs\nencode\nX\x03\x00\x00\x00abcX\x05\x00\x00\x00rot13\x86R."
    path = tmp_path / "bad.pkl"
    path.write_bytes(payload)
    assert reject_of(read_ganimation_pkl, path).reason == "au_pkl_forbidden_global"
    assert not marker.exists()


@pytest.mark.parametrize(("content", "reason"), [
    ([KNOWN], "au_file_malformed"),
    ({}, "au_file_empty"),
    ({"a": KNOWN[:16]}, "au_value_shape"),
    ({"a": KNOWN.reshape(1, 17)}, "au_value_shape"),
    ({"a": np.where(np.arange(17) == 4, np.nan, KNOWN)}, "au_value_nan"),
    ({"a": np.where(np.arange(17) == 4, 5.5, KNOWN)}, "au_value_out_of_range"),
    ({"a": np.array(["x"] * 17)}, "au_pkl_forbidden_global"),  # string dtype: refused before it is built
])
def test_bad_pkl_content(content, reason, tmp_path):
    path = tmp_path / "bad.pkl"
    path.write_bytes(py2_pickle(content))
    err = reject_of(read_ganimation_pkl, path)
    assert err.reason == reason
    if reason.startswith("au_value"):
        assert "'a'" in err.detail


@pytest.mark.parametrize(("data", "reason"), [(b"", "au_file_empty"), (b"not a pickle at all", "au_file_malformed"),
                                              (pickle.dumps({"a": KNOWN}, protocol=2)[:-20], "au_file_malformed")])
def test_unreadable_pkl_bytes(data, reason, tmp_path):
    path = tmp_path / "x.pkl"
    path.write_bytes(data)
    assert reject_of(read_ganimation_pkl, path).reason == reason
    assert reject_of(read_ganimation_pkl, tmp_path / "missing.pkl").reason == "au_file_missing"


# ---------------------------------------------------------------------------------------------
# Finding files, inspection, config
# ---------------------------------------------------------------------------------------------
def test_find_au_file_patterns(tmp_path):
    for name in ("train_00001.csv", "train_00002_aligned.csv", "train_00004.csv", "train_00004_aligned.csv"):
        (tmp_path / name).write_text("x")
    assert find_au_file("train_00001", tmp_path) == tmp_path / "train_00001.csv"
    assert find_au_file("train_00002", tmp_path) == tmp_path / "train_00002_aligned.csv"
    assert find_au_file("train_00001_aligned", tmp_path) == tmp_path / "train_00001.csv"
    assert find_au_file("train_00002_aligned", tmp_path) == tmp_path / "train_00002_aligned.csv"
    assert find_au_file("train_00003", tmp_path) is None
    assert find_au_file("train_00004", tmp_path) == tmp_path / "train_00004.csv"
    reverse = ("{stem}_aligned.csv", "{stem}.csv")
    assert find_au_file("train_00004", tmp_path, reverse) == tmp_path / "train_00004_aligned.csv"
    (tmp_path / "processed").mkdir()
    (tmp_path / "processed" / "test_0001.csv").write_text("x")
    assert find_au_file("test_0001", tmp_path, ("processed/{stem}.csv",)) == tmp_path / "processed" / "test_0001.csv"
    with pytest.raises(ValueError):
        find_au_file("a", tmp_path, ("{name}.csv",))


def test_inspect_au_csv_ok_and_rejected(tmp_path):
    path = write_openface_csv(tmp_path / "ok.csv", [OpenFaceRow(aus=KNOWN)], variant="aus_only_img", sep=",")
    report = inspect_au(path)
    json.dumps(report)
    assert report["ok"] is True and report["layout"] == "aus_only_img" and report["n_columns"] == 37
    assert report["rule"] == "single_row" and report["row_indices"] == [0] and report["n_rows"] == 1
    assert list(report["aus"]) == list(AU_NAMES)
    assert report["aus"]["AU04"] == pytest.approx(float(expected(KNOWN)[2]))
    path.write_text(path.read_text().replace("\n0,0.98,", "\n0,0.1,"))
    bad = inspect_au(path)
    json.dumps(bad)
    assert bad == {"path": str(path), "ok": False, "stage": "openface", "reason": "au_no_trusted_row",
                   "detail": bad["detail"]}
    assert "confidence=0.1" in bad["detail"]


def test_inspect_au_pkl(tmp_path):
    path = tmp_path / "aus_openface.pkl"
    path.write_bytes(py2_pickle(PKL_AUS))
    report = inspect_au(path)
    json.dumps(report)
    assert report["ok"] is True and report["n_keys"] == 3
    assert report["aus"]["train_00001_aligned"]["AU45"] == pytest.approx(1.0)
    path.write_bytes(pickle.dumps({"x": _RunsShell("true")}, protocol=2))
    assert inspect_au(path)["reason"] == "au_pkl_forbidden_global"


def test_config_validation_and_json_round_trip():
    config = OpenFaceConfig(min_confidence=0.9, video_rule="frame", frame_index=4, csv_patterns=["{stem}.csv"])
    assert config.csv_patterns == ("{stem}.csv",)
    text = json.dumps(config.to_json())
    assert OpenFaceConfig.from_json(json.loads(text)) == config
    hash(config)
    for bad in (dict(video_rule="frame"), dict(min_confidence=1.5), dict(video_rule="mean"),
                dict(csv_patterns=("{image}.csv",)), dict(csv_patterns=()), dict(max_landmark_error_iod=0.0)):
        with pytest.raises(ValueError):
            OpenFaceConfig(**bad)


def test_bad_aligner_landmarks_are_a_caller_error(tmp_path):
    path = three_faces(tmp_path)
    with pytest.raises(ValueError):
        read_openface_csv(path, face_landmarks5=np.zeros((4, 2)))


# ---------------------------------------------------------------------------------------------
# Landmarks of the row the AUs came from
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["landmark_img", "feature_extraction"])
def test_reading_carries_the_68_points_of_the_chosen_row(variant, tmp_path):
    path = three_faces(tmp_path, variant)
    reading = read_openface_csv(path, face_landmarks5=aligner_points(2))
    assert reading.face_id == 2
    np.testing.assert_allclose(reading.landmarks68, synthetic_landmarks68(CENTRES[2], 40.0), atol=1e-9)
    shown = reading.to_json()["landmarks"]
    assert shown["count"] == 68 and shown["source"] == "openface"
    np.testing.assert_allclose(shown["bbox_xyxy"], [*synthetic_landmarks68(CENTRES[2], 40.0).min(axis=0),
                                                    *synthetic_landmarks68(CENTRES[2], 40.0).max(axis=0)])


def test_no_landmarks_without_columns_or_for_a_median_over_frames(tmp_path):
    aus = np.linspace(0.0, 4.0, 17)
    only_aus = write_openface_csv(tmp_path / "aus.csv", [{"aus": aus}], variant="aus_only")
    reading = read_openface_csv(only_aus)
    assert reading.landmarks68 is None and "no 2D landmark columns" in reading.landmarks_note
    assert inspect_au(only_aus)["landmarks"] == {"count": 0, "source": None, "note": reading.landmarks_note}
    video = write_openface_csv(tmp_path / "video.csv", [{"aus": aus, "frame": f} for f in (1, 2, 3)])
    reading = read_openface_csv(video)
    assert reading.rule == "video_median" and reading.landmarks68 is None and "median over 3 rows" in reading.landmarks_note
    one_frame = read_openface_csv(video, OpenFaceConfig(video_rule="frame", frame_index=2))
    assert one_frame.landmarks68.shape == (68, 2) and one_frame.row_indices == (1,)


def test_nan_landmark_cells_stay_nan(tmp_path):
    path = write_openface_csv(tmp_path / "nan.csv", [{"aus": np.zeros(17)}])
    text = path.read_text().splitlines()
    header = [c.strip() for c in text[0].split(",")]
    cells = [c.strip() for c in text[1].split(",")]
    cells[header.index("x_40")] = "-nan"
    path.write_text(", ".join(header) + "\n" + ", ".join(cells) + "\n")
    reading = read_openface_csv(path)
    assert np.isnan(reading.landmarks68[40, 0]) and np.isfinite(np.delete(reading.landmarks68, 40, axis=0)).all()
    assert "1 point(s) are nan" in reading.landmarks_note
    assert reading.to_json()["landmarks"]["count"] == 67


def test_real_openface_csv_landmarks(shared_data):
    """py-feat's real OpenFace output: one frame's 68 points are a face (eyes level, mouth under the nose)."""
    reading = read_openface_csv(shared_data / "openface" / "pyfeat_OpenFace_Test.csv",
                                OpenFaceConfig(video_rule="frame", frame_index=5))
    points = reading.landmarks68
    assert points.shape == (68, 2) and np.isfinite(points).all()
    assert points[36:48, 1].mean() < points[30, 1] < points[48:68, 1].mean() < points[8, 1]
    eye_distance = np.linalg.norm(points[42:48].mean(axis=0) - points[36:42].mean(axis=0))
    assert 20 < eye_distance < 200


def test_one_bad_pkl_entry_rejects_only_that_entry(tmp_path):
    from tasks.openface import load_ganimation_pkl

    path = tmp_path / "aus_openface.pkl"
    path.write_bytes(py2_pickle({"good": KNOWN, "nan": np.where(np.arange(17) == 4, np.nan, KNOWN), "also_good": KNOWN}))
    table = load_ganimation_pkl(path)
    assert sorted(table.values) == ["also_good", "good"]
    assert table.bad["nan"].reason == "au_value_nan" and "'nan'" in table.bad["nan"].detail
    assert table.lookup(["missing", "good"]) is table.values["good"]
    assert table.lookup(["nan"]).reason == "au_value_nan" and table.lookup(["x"]) is None
    report = inspect_au(path)
    assert report["ok"] and report["n_bad"] == 1 and report["bad_entries"]["nan"]["reason"] == "au_value_nan"


class _HugeArray:
    """Pickles as numpy.ndarray((n,), dtype object): only allow-listed globals, tiny file, huge allocation."""

    def __init__(self, n):
        self.n = n

    def __reduce__(self):
        return np.ndarray, ((self.n,), np.dtype(object))


@pytest.mark.parametrize("dtype_kind", ["object", "float"])
def test_pkl_bounds_refuse_before_allocating(dtype_kind, tmp_path):
    import tracemalloc

    n = 20_000_000  # 160 MB of pointers / floats if it were built
    payload = (pickle.dumps({"a": _HugeArray(n)}, protocol=2) if dtype_kind == "object"
               else pickle.dumps({"a": np.zeros(MAX_ELEMENTS_PROBE)}, protocol=2))
    path = tmp_path / "hostile.pkl"
    path.write_bytes(payload)
    tracemalloc.start()
    try:
        err = reject_of(read_ganimation_pkl, path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert err.reason == "au_pkl_forbidden_global", err
    assert peak < 20_000_000, peak
    if dtype_kind == "object":
        assert len(payload) < 200 and "dtype object" in err.detail


MAX_ELEMENTS_PROBE = 5000  # one array above MAX_PKL_ARRAY_ELEMENTS (4096)


def test_frames_all_zero_with_advancing_timestamps_are_ordered_by_timestamp(tmp_path):
    # A FACSvatar-style fork writes frame = 0 on every row; the timestamps tell the rows apart.
    rows = [OpenFaceRow(aus=VIDEO_AUS[i], frame=0, timestamp=0.04 * i, confidence=0.95) for i in range(len(VIDEO_AUS))]
    path = write_openface_csv(tmp_path / "v.csv", rows)
    reading = read_openface_csv(path)
    assert reading.rule == "video_median" and reading.row_indices == tuple(range(len(VIDEO_AUS)))
    assert "numbered by timestamp" in reading.detail
    # the same file with equal timestamps is still refused: nothing tells its rows apart
    same = write_openface_csv(tmp_path / "same.csv", [OpenFaceRow(aus=KNOWN, frame=0, timestamp=0.0)] * 3)
    assert "several rows for one frame" in reject_of(read_openface_csv, same).detail


def test_cut_off_last_line_is_skipped_and_said(tmp_path):
    path = write_openface_csv(tmp_path / "v.csv", [OpenFaceRow(aus=KNOWN, frame=f) for f in (1, 2, 3)])
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 40])  # mid-row, no final newline
    reading = read_openface_csv(path)
    assert reading.row_indices == (0, 1) and "cut off" in reading.detail


REAL_FACSVATAR = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "openface" / "facsvatar_jt_raw.csv"


@pytest.mark.skipif(not REAL_FACSVATAR.is_file(), reason="../shared/data (real OpenFace CSVs) is not present")
def test_real_facsvatar_file_with_frame_zero_is_read():
    reading = read_openface_csv(REAL_FACSVATAR)
    assert reading.rule == "video_median" and len(reading.row_indices) == 474
    assert "numbered by timestamp" in reading.detail and "line 476 was cut off" in reading.detail
