"""68-point landmarks: the detector on real aligned faces, the checks' reject reasons, mapping through the alignment."""
from __future__ import annotations

import math

import numpy as np
import pytest

from tasks.align import AlignConfig, FaceAligner
from tasks.errors import RejectError
from tasks.landmarks import (
    FACE_BOX_FRAC,
    N_LANDMARKS,
    LandmarkDetector,
    aligned_box_frac,
    check_landmarks,
    default_predictor_path,
    flatten_landmarks,
    landmarks_to_crop,
    landmarks_to_source,
    unflatten_landmarks,
)
from tasks.openface import landmarks5_from_68, synthetic_landmarks68


@pytest.fixture(scope="module")
def detector():
    return LandmarkDetector()


@pytest.fixture(scope="module")
def aligned(astronaut_rgb, grace_hopper_rgb):
    """{size: [astronaut, grace hopper] AlignedFace} at three crop sizes."""
    return {size: FaceAligner(AlignConfig(image_size_px=size), device="cpu").align([astronaut_rgb, grace_hopper_rgb])
            for size in (64, 128, 256)}


def test_default_predictor_path_is_the_packaged_model():
    path = default_predictor_path()
    assert path.name == "shape_predictor_68_face_landmarks.dat" and path.stat().st_size > 90e6


def test_missing_model_package_is_a_clear_error(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="face-recognition-models"):
        default_predictor_path()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        LandmarkDetector(predictor_path="/nonexistent/sp68.dat")


@pytest.mark.parametrize("size", [64, 128, 256])
def test_detector_on_real_faces_agrees_with_the_aligner(detector, aligned, size):
    """The 68 points' eye centres, nose tip and mouth corners land where MTCNN put its five points
    (measured: at most 2.3 px at 128 px on these two photos)."""
    for face in aligned[size]:
        points = detector.detect(face.crop)
        assert points.shape == (N_LANDMARKS, 2) and points.dtype == np.float32
        error_128px = np.linalg.norm(landmarks5_from_68(points) - face.landmarks5_crop, axis=1) * 128 / size
        assert error_128px.max() < 3.5, error_128px
        check_landmarks(points, size)  # a real face passes every check
        # The iBUG layout: brows above eyes above the nose tip above the mouth above the chin.
        y = lambda group, points=points: points[group, 1].mean()  # noqa: E731
        assert y(slice(17, 27)) < y(slice(36, 48)) < points[30, 1] < y(slice(48, 68)) < points[8, 1]
        assert points[36, 0] < points[39, 0] < points[42, 0] < points[45, 0]  # image-left eye first


def test_detector_on_ck48_faces(shared_data, detector):
    """12 CK+48 subjects (48 px grey, upsampled, aligned by MTCNN): every face passes the checks, and the
    68 points' eye centres, nose tip and mouth corners lie near MTCNN's five points (measured: mean per
    face 1.0-5.2 px, median 2.6 px; these blurry, often wide-open-mouthed faces are harder than the photos)."""
    from tests.conftest import load_ck48_faces

    faces = load_ck48_faces(shared_data / "ck48", 12)
    means = []
    # CK+48 crops are cut tight, so most of an MTCNN crop lies outside them: allow it here (prepare rejects it)
    aligner = FaceAligner(AlignConfig(image_size_px=128, max_out_of_frame=1.0), device="cpu")
    for face in aligner.align([rgb for _, rgb in faces]):
        points = check_landmarks(detector.detect(face.crop), 128)
        means.append(np.linalg.norm(landmarks5_from_68(points) - face.landmarks5_crop, axis=1).mean())
    assert len(means) == 12 and max(means) < 6.0 and np.median(means) < 3.5, np.round(means, 2)


def test_other_template_margins_get_a_rescaled_box(astronaut_rgb):
    assert aligned_box_frac(0.15) == pytest.approx(FACE_BOX_FRAC)
    wide = aligned_box_frac(0.4)  # more border: a smaller face about the crop centre
    assert wide[2] - wide[0] == pytest.approx((FACE_BOX_FRAC[2] - FACE_BOX_FRAC[0]) * 1.3 / 1.8)
    face = FaceAligner(AlignConfig(image_size_px=128, margin=0.4), device="cpu").align([astronaut_rgb])[0]
    points = LandmarkDetector(box_frac=wide).detect(face.crop)
    assert np.linalg.norm(landmarks5_from_68(points) - face.landmarks5_crop, axis=1).max() < 3.5


def test_find_box_for_crops_framed_another_way(aligned):
    """A pre-aligned crop framed its own way (the aligned face shrunk to 60% on a wider canvas): the fixed
    box misses it, dlib's face detector finds it, and the points land where they do on the aligned crop."""
    import cv2

    face = aligned[128][0]
    reference = LandmarkDetector().detect(face.crop)
    small = cv2.resize(face.crop, (77, 77), interpolation=cv2.INTER_AREA)
    canvas = cv2.copyMakeBorder(small, 10, 41, 35, 16, cv2.BORDER_REPLICATE)          # 128 x 128, face off-centre
    expected = (reference + 0.5) * 77 / 128 - 0.5 + [35.0, 10.0]
    found = LandmarkDetector(face_box="find").detect(canvas)
    assert np.linalg.norm(found - expected, axis=1).mean() < 1.5
    assert np.linalg.norm(LandmarkDetector().detect(canvas) - expected, axis=1).mean() > 3.0
    with pytest.raises(RejectError) as info:
        LandmarkDetector(face_box="find").detect(np.full((128, 128, 3), 128, np.uint8))
    assert info.value.reason == "landmarks_no_face" and info.value.stage == "landmarks"


def test_face_finder_is_built_once_per_thread(aligned, monkeypatch):
    import dlib

    import tasks.landmarks as lm

    built = []
    real = dlib.get_frontal_face_detector
    monkeypatch.setattr(dlib, "get_frontal_face_detector", lambda: built.append(1) or real())
    monkeypatch.setattr(lm, "_FACE_DETECTORS", {})
    finder = LandmarkDetector(face_box="find")
    for face in aligned[128] * 2:
        finder.detect(face.crop)
    assert len(built) == 1


def test_detect_batch_and_one_model_per_process(detector, aligned):
    import tasks.landmarks as lm

    crops = [face.crop for face in aligned[128]]
    batch = detector.detect_batch(crops)
    for crop, points in zip(crops, batch):
        np.testing.assert_array_equal(points, detector.detect(crop))
    LandmarkDetector().detect(crops[0])
    assert len(lm._PREDICTORS) == 1


def test_detect_from_several_threads_gives_the_same_points(detector, aligned):
    from concurrent.futures import ThreadPoolExecutor

    crops = [face.crop for face in aligned[128]] * 4
    expected = [detector.detect(crop) for crop in crops]
    with ThreadPoolExecutor(max_workers=4) as pool:
        for got, want in zip(pool.map(detector.detect, crops), expected):
            np.testing.assert_array_equal(got, want)


def test_detector_refuses_non_crops(detector):
    with pytest.raises(ValueError, match="uint8"):
        detector.detect(np.zeros((64, 64, 3), np.float32))
    with pytest.raises(ValueError, match="square"):
        detector.detect(np.zeros((64, 80, 3), np.uint8))


def _face(size_px: int = 128) -> np.ndarray:
    return synthetic_landmarks68((size_px / 2, size_px * 0.42), 0.25 * size_px).astype(np.float32)


def test_check_landmarks_accepts_a_face_and_the_flat_manifest_layout():
    points = _face()
    np.testing.assert_array_equal(check_landmarks(points, 128), points)
    np.testing.assert_array_equal(check_landmarks(flatten_landmarks(points), 128), points)
    np.testing.assert_array_equal(unflatten_landmarks(flatten_landmarks(points)), points)
    assert flatten_landmarks(None) is None and unflatten_landmarks(None) is None
    jaw_past_edge = points.copy()
    jaw_past_edge[8, 1] = 128 + 10  # the chin 10 px below a tight crop: within the jaw tolerance (19.2 px)
    check_landmarks(jaw_past_edge, 128)


@pytest.mark.parametrize("make, reason, detail", [
    (lambda p: None, "landmarks_missing", "no landmarks"),
    (lambda p: p[:60], "landmarks_missing", "shape"),
    (lambda p: np.where(np.arange(68)[:, None] == 40, np.nan, p), "landmarks_missing", "point 40"),
    (lambda p: p + [0.0, 100.0], "landmarks_off_crop", "outside the 128 px crop"),
    (lambda p: np.where(np.arange(68)[:, None] == 51, [64.0, -9.0], p), "landmarks_off_crop", "point 51"),
    (lambda p: np.where(np.arange(68)[:, None] == 8, [64.0, 160.0], p), "landmarks_off_crop", "point 8 (jaw)"),
    (lambda p: np.stack([p[:, 0], np.full(68, 60.0)], axis=1), "landmarks_degenerate", "collinear"),
    (lambda p: 64.0 + (p - p.mean(axis=0)) * 0.02, "landmarks_degenerate", "collapsed"),
    (lambda p: np.concatenate([p[:36], np.full((12, 2), 64.0), p[48:]]), "landmarks_degenerate", "eye centres"),
])
def test_check_landmarks_reject_reasons(make, reason, detail):
    with pytest.raises(RejectError) as info:
        check_landmarks(make(_face()), 128)
    assert info.value.stage == "landmarks" and info.value.reason == reason
    assert detail in info.value.detail


def test_landmarks_round_trip_through_a_known_similarity():
    """Source points -> crop with a rotation + scale + shift -> back: exact, and distances scale as they should."""
    angle, scale = math.radians(12.0), 0.37
    transform = np.array([[scale * math.cos(angle), -scale * math.sin(angle), -20.5],
                          [scale * math.sin(angle), scale * math.cos(angle), 7.25]])
    source = synthetic_landmarks68((300.0, 250.0), 140.0)
    crop = landmarks_to_crop(source, transform)
    assert crop.shape == (68, 2) and crop.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(crop[45] - crop[36]), scale * np.linalg.norm(source[45] - source[36]),
                               rtol=1e-5)
    np.testing.assert_allclose(landmarks_to_source(crop, transform), source, atol=1e-3)
    # The point (x, y) = (10, 0) goes to scale * (cos, sin) * 10 + shift.
    np.testing.assert_allclose(landmarks_to_crop(np.array([[10.0, 0.0]]), transform)[0],
                               [10 * scale * math.cos(angle) - 20.5, 10 * scale * math.sin(angle) + 7.25], rtol=1e-6)
    with pytest.raises(ValueError, match="transform"):
        landmarks_to_crop(source, np.eye(3))


def test_detector_points_survive_the_round_trip_through_the_photo(detector, aligned, astronaut_rgb):
    """Crop points mapped back into the photo and through the aligner's transform land where they started."""
    face = aligned[128][0]
    points = detector.detect(face.crop)
    in_photo = landmarks_to_source(points, face.transform)
    assert (in_photo[:, 0] > 0).all() and (in_photo[:, 0] < astronaut_rgb.shape[1]).all()
    np.testing.assert_allclose(landmarks_to_crop(in_photo, face.transform), points, atol=1e-3)
