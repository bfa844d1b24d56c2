"""Tests for tasks/align.py: template, face choice, MTCNN alignment under image transforms, batching, mode none."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from tasks.align import (
    AlignConfig,
    AlignedFace,
    FaceAligner,
    fit_similarity,
    load_image_rgb,
    select_face,
    template_landmarks5,
)
from tasks.errors import RejectError

CROP_PX = 160  # re-detection on the crop needs more pixels than the 128 px default gives MTCNN
MIRROR_CROP = np.array([[-1.0, 0.0, CROP_PX - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
EYES, NOSE_MOUTH = slice(0, 2), slice(2, 5)


@pytest.fixture(scope="module")
def aligner() -> FaceAligner:
    return FaceAligner(AlignConfig(image_size_px=CROP_PX), device="cpu")


@pytest.fixture(scope="module")
def faces(astronaut_rgb: np.ndarray, grace_hopper_rgb: np.ndarray) -> dict[str, np.ndarray]:
    return {"astronaut": astronaut_rgb, "grace_hopper": grace_hopper_rgb}


@pytest.fixture(scope="module")
def reference(aligner: FaceAligner, faces: dict[str, np.ndarray]) -> dict[str, AlignedFace]:
    """Alignment of the untouched photos, which every transformed copy is compared against."""
    results = aligner.align(list(faces.values()))
    assert all(isinstance(r, AlignedFace) for r in results), results
    return dict(zip(faces, results))


# -- image transforms, each returning the image and the 3x3 map original px -> transformed px ----

def _homogeneous(affine: np.ndarray) -> np.ndarray:
    return np.vstack([affine, [0.0, 0.0, 1.0]])


def _rotate(image: np.ndarray, degrees: float) -> tuple[np.ndarray, np.ndarray]:
    height_px, width_px = image.shape[:2]
    affine = cv2.getRotationMatrix2D((width_px / 2, height_px / 2), degrees, 1.0)
    return cv2.warpAffine(image, affine, (width_px, height_px), borderMode=cv2.BORDER_REPLICATE), _homogeneous(affine)


def _scale(image: np.ndarray, factor: float) -> tuple[np.ndarray, np.ndarray]:
    interpolation = cv2.INTER_AREA if factor < 1 else cv2.INTER_CUBIC
    scaled = cv2.resize(image, None, fx=factor, fy=factor, interpolation=interpolation)
    offset = 0.5 * factor - 0.5  # cv2.resize pixel-centre convention
    return scaled, np.array([[factor, 0, offset], [0, factor, offset], [0, 0, 1.0]])


def _pad_into_big_canvas(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Face small in a 1400 px canvas: also exercises the downscale-for-detection path (> 1024 px)."""
    canvas = np.full((1400, 1400, 3), 90, dtype=np.uint8)
    top, left = 700, 800
    canvas[top:top + image.shape[0], left:left + image.shape[1]] = image
    return canvas, np.array([[1.0, 0, left], [0, 1.0, top], [0, 0, 1.0]])


def _flip(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.ascontiguousarray(image[:, ::-1]), np.array([[-1.0, 0, image.shape[1] - 1], [0, 1.0, 0], [0, 0, 1.0]])


GEOMETRIC = {
    "flip": _flip,
    "rotate+20": lambda im: _rotate(im, 20),
    "rotate-20": lambda im: _rotate(im, -20),
    "scale0.5": lambda im: _scale(im, 0.5),
    "scale2": lambda im: _scale(im, 2.0),
    "padded": _pad_into_big_canvas,
}


def _write_grey_png(image: np.ndarray, path: Path) -> np.ndarray:
    Image.fromarray(image).convert("L").save(path)
    return np.eye(3)


def _write_rgba_png(image: np.ndarray, path: Path) -> np.ndarray:
    alpha = np.full(image.shape[:2], 255, dtype=np.uint8)
    alpha[:, :40] = 0  # a transparent strip on the left, composited onto grey by the loader
    Image.fromarray(np.dstack([image, alpha]), mode="RGBA").save(path)
    return np.eye(3)


def _write_16bit_png(image: np.ndarray, path: Path) -> np.ndarray:
    bgr16 = image[..., ::-1].astype(np.uint16) * 257  # full 16-bit range: 255 -> 65535
    assert cv2.imwrite(str(path), bgr16)
    return np.eye(3)


def _write_exif_rotated_jpeg(image: np.ndarray, path: Path) -> np.ndarray:
    """Pixels stored turned 90 degrees counter-clockwise, EXIF orientation 6 says: turn clockwise to view."""
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(np.ascontiguousarray(np.rot90(image))).save(path, quality=95, exif=exif)
    return np.eye(3)  # once the loader honours the tag, the picture is the original again


FILE_ROUND_TRIPS = {
    "grey.png": _write_grey_png,
    "rgba.png": _write_rgba_png,
    "16bit.png": _write_16bit_png,
    "exif6.jpg": _write_exif_rotated_jpeg,
}


def _crop_px(aligned: AlignedFace, points_src: np.ndarray) -> np.ndarray:
    """Map source points [N, 2] into crop pixels with the face's transform."""
    return points_src @ aligned.transform[:, :2].T.astype(np.float64) + aligned.transform[:, 2]


def _redetect(aligner: FaceAligner, crop: np.ndarray) -> np.ndarray:
    """MTCNN's landmarks [5, 2] on the crop itself (the face must be found there again)."""
    boxes, probs, points = aligner._mtcnn.detect(crop, landmarks=True)
    assert boxes is not None, "no face re-detected in the aligned crop"
    best = int(np.argmax(np.asarray(probs, dtype=np.float64)))
    return np.asarray(points[best], dtype=np.float64)


def _assert_on_template(aligner: FaceAligner, aligned: AlignedFace) -> None:
    """The eyes (within 5 px of 160) and nose/mouth (within 12 px, they also carry the expression)
    sit where the template puts them, as MTCNN sees them in the crop."""
    found = _redetect(aligner, aligned.crop)
    error_px = np.linalg.norm(found - aligner.template, axis=1)  # [5]
    assert error_px[EYES].max() < 5.0, error_px
    assert error_px[NOSE_MOUTH].max() < 12.0, error_px
    # and the recorded landmarks5_crop are where the face really landed
    assert np.linalg.norm(found - aligned.landmarks5_crop, axis=1).max() < 8.0


# -- template and helpers ---------------------------------------------------------------------------

def test_template_is_arcface_at_margin_zero_and_shrinks_about_centre_with_margin() -> None:
    arcface = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                        [41.5493, 92.3655], [70.7299, 92.2041]])
    np.testing.assert_allclose(template_landmarks5(112, margin=0.0), arcface, atol=1e-4)
    tight, loose = template_landmarks5(128, margin=0.0), template_landmarks5(128, margin=0.15)
    centre = 63.5
    np.testing.assert_allclose(loose - centre, (tight - centre) / 1.3, atol=1e-4)
    assert template_landmarks5(128).dtype == np.float32 and template_landmarks5(128).shape == (5, 2)


def test_fit_similarity_recovers_a_known_rotation_scale_shift() -> None:
    angle, scale = np.deg2rad(17.0), 0.6
    truth = np.array([[scale * np.cos(angle), -scale * np.sin(angle), 12.0],
                      [scale * np.sin(angle), scale * np.cos(angle), -7.0]])
    src = np.array([[10.0, 20.0], [50.0, 22.0], [30.0, 40.0], [15.0, 60.0], [45.0, 61.0]])
    dst = src @ truth[:, :2].T + truth[:, 2]
    np.testing.assert_allclose(fit_similarity(src, dst), truth, atol=1e-9)


def test_select_face_policies_and_threshold() -> None:
    boxes = np.array([[0, 0, 100, 100], [0, 0, 50, 50], [0, 0, 200, 200]], dtype=np.float32)
    probs = np.array([0.95, 0.999, 0.85], dtype=np.float32)  # the biggest box is below threshold
    assert select_face(boxes, probs, "largest", 0.9) == (0, 2)
    assert select_face(boxes, probs, "most_confident", 0.9) == (1, 2)
    assert select_face(boxes, probs, "largest", 0.8) == (2, 3)
    assert select_face(boxes, probs, "largest", 0.9999) == (None, 0)


@pytest.mark.parametrize("bad", [
    {"mode": "dlib"}, {"face_policy": "first"}, {"image_size_px": 8}, {"min_face_prob": 1.5},
    {"batch_size": 0}, {"margin": -0.5}, {"min_face_size_px": 5},
])
def test_config_rejects_nonsense(bad: dict) -> None:
    with pytest.raises(ValueError):
        AlignConfig(**bad)


# -- MTCNN alignment ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["astronaut", "grace_hopper"])
def test_reference_crop_puts_landmarks_on_template(aligner, reference, name) -> None:
    aligned = reference[name]
    assert aligned.crop.shape == (CROP_PX, CROP_PX, 3) and aligned.crop.dtype == np.uint8
    assert aligned.faces_found == 1 and aligned.prob >= 0.9
    assert aligned.transform.shape == (2, 3) and aligned.landmarks5_src.shape == (5, 2)
    x1, y1, x2, y2 = aligned.box
    assert np.all((aligned.landmarks5_src >= [x1, y1]) & (aligned.landmarks5_src <= [x2, y2]))
    np.testing.assert_allclose(aligned.landmarks5_crop, _crop_px(aligned, aligned.landmarks5_src), atol=1e-3)
    _assert_on_template(aligner, aligned)


def test_default_config_gives_128px_crops(astronaut_rgb) -> None:
    (aligned,) = FaceAligner(device="cpu").align([astronaut_rgb])
    assert aligned.crop.shape == (128, 128, 3)


@pytest.mark.parametrize("name", ["astronaut", "grace_hopper"])
def test_alignment_survives_geometric_transforms(aligner, faces, reference, name) -> None:
    """Flip, +-20 degrees, 0.5x, 2x, small face in a big canvas: the same face points land on the
    same crop pixels (mirrored for the flip) within 4 px of 160, and the crop looks the same."""
    transformed = {kind: make(faces[name]) for kind, make in GEOMETRIC.items()}
    results = aligner.align([image for image, _ in transformed.values()])
    ref = reference[name]
    ref_points = np.hstack([ref.landmarks5_src, np.ones((5, 1))]).T  # [3, 5] homogeneous
    for (kind, (_, to_transformed)), aligned in zip(transformed.items(), results):
        assert isinstance(aligned, AlignedFace), (kind, aligned)
        crop_fix = MIRROR_CROP if kind == "flip" else np.eye(3)
        landed = (_homogeneous(aligned.transform) @ to_transformed @ ref_points)[:2].T
        expected = (crop_fix @ _homogeneous(ref.transform) @ ref_points)[:2].T
        assert np.linalg.norm(landed - expected, axis=1).max() < 4.0, kind
        ref_crop = ref.crop[:, ::-1] if kind == "flip" else ref.crop
        assert _blurred_mean_abs_diff(aligned.crop, ref_crop) < 15.0, kind
        _assert_on_template(aligner, aligned)


@pytest.mark.parametrize("name", ["astronaut", "grace_hopper"])
def test_alignment_through_files_grey_rgba_16bit_exif(aligner, faces, reference, tmp_path, name) -> None:
    images = []
    for filename, write in FILE_ROUND_TRIPS.items():
        write(faces[name], tmp_path / filename)
        images.append(load_image_rgb(tmp_path / filename))
    for filename, image, aligned in zip(FILE_ROUND_TRIPS, images, aligner.align(images)):
        assert image.shape == faces[name].shape, filename
        assert isinstance(aligned, AlignedFace), (filename, aligned)
        ref = reference[name]
        landed = _crop_px(aligned, ref.landmarks5_src.astype(np.float64))
        assert np.linalg.norm(landed - ref.landmarks5_crop, axis=1).max() < 4.0, filename
        _assert_on_template(aligner, aligned)


def test_blurred_difference_separates_different_faces(reference) -> None:
    """The crop-similarity threshold used above is meaningful: two different people exceed it by far."""
    assert _blurred_mean_abs_diff(reference["astronaut"].crop, reference["grace_hopper"].crop) > 40.0


def test_no_face_and_low_confidence_are_rejected(aligner, grace_hopper_rgb) -> None:
    flat = np.full((300, 300, 3), 128, dtype=np.uint8)
    noise = np.random.default_rng(0).integers(0, 256, (300, 300, 3), dtype=np.uint8)
    for result in aligner.align([flat, noise]):
        assert isinstance(result, RejectError)
        assert (result.stage, result.reason) == ("align", "no_face")
    strict = FaceAligner(AlignConfig(image_size_px=CROP_PX, min_face_prob=1.0), device="cpu")
    (result,) = strict.align([grace_hopper_rgb])
    assert isinstance(result, RejectError) and result.reason == "low_face_confidence"
    assert "min_face_prob" in result.detail


def test_face_policy_with_two_faces(astronaut_rgb, grace_hopper_rgb) -> None:
    """Grace Hopper big on the left, the astronaut at half size on the right."""
    small = cv2.resize(astronaut_rgb, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_AREA)
    canvas = np.full((600, 512 + small.shape[1], 3), 128, dtype=np.uint8)
    canvas[:, :512] = grace_hopper_rgb
    canvas[:small.shape[0], 512:] = small
    largest, confident = (
        FaceAligner(AlignConfig(face_policy=policy), device="cpu").align([canvas])[0]
        for policy in ("largest", "most_confident")
    )
    assert largest.faces_found == confident.faces_found == 2
    assert largest.box[2] < 512  # Grace Hopper's box, the bigger one
    assert confident.box[0] > 512 and confident.prob > largest.prob  # the astronaut scores higher here


def test_mixed_size_batch_preserves_order_and_matches_single_runs(astronaut_rgb, grace_hopper_rgb) -> None:
    batched = FaceAligner(AlignConfig(image_size_px=CROP_PX, batch_size=2), device="cpu")
    small_astronaut, _ = _scale(astronaut_rgb, 0.5)
    tiny = np.zeros((20, 40, 3), dtype=np.uint8)
    flat = np.full((300, 200, 3), 200, dtype=np.uint8)
    images = [astronaut_rgb, flat, grace_hopper_rgb, tiny, small_astronaut, astronaut_rgb]
    results = batched.align(images)
    assert len(results) == len(images)
    assert [type(r).__name__ for r in results] == [
        "AlignedFace", "RejectError", "AlignedFace", "RejectError", "AlignedFace", "AlignedFace"]
    assert results[1].reason == "no_face" and results[3].reason == "image_too_small"
    for i in (0, 2, 4):
        (alone,) = batched.align([images[i]])
        np.testing.assert_allclose(results[i].landmarks5_src, alone.landmarks5_src, atol=0.05)
        assert np.abs(results[i].crop.astype(int) - alone.crop).max() <= 2
    # the two astronaut copies came back as themselves, not as a neighbour's result
    np.testing.assert_allclose(results[0].landmarks5_src, results[5].landmarks5_src, atol=0.05)
    assert results[4].box[2] < 300 and results[2].box[3] > 300


def _place(image: np.ndarray, scale: float, tx: float, ty: float, side_px: int = 512) -> np.ndarray:
    affine = np.float32([[scale, 0, tx], [0, scale, ty]])
    return cv2.warpAffine(image, affine, (side_px, side_px), borderMode=cv2.BORDER_CONSTANT, borderValue=(90, 90, 90))


def test_faces_at_the_frame_edge_do_not_suppress_each_other_across_a_batch(astronaut_rgb, grace_hopper_rgb) -> None:
    """facenet-pytorch 2.5.3 offsets boxes per image assuming coordinates >= 0: a box at the bottom-right
    corner of image i and a box reaching -100 px in image i+1 overlapped, so one face vanished (rejected)
    and the other moved ~45 px in a batch, while each alone was fine. Batched must equal one at a time."""
    # max_out_of_frame=1: the cut face is mostly outside its frame; this test is about the suppression only
    aligner = FaceAligner(AlignConfig(image_size_px=128, batch_size=8, max_out_of_frame=1.0), device="cpu")
    corner_face = _place(astronaut_rgb, 0.5, 512 - 135, 512 - 87.5)   # small face, box ends past 512 px
    cut_face = _place(grace_hopper_rgb, 1.0, -180, -145)                # face cut at the top-left: box < 0
    big_photo = cv2.resize(grace_hopper_rgb, (1024, 1200), interpolation=cv2.INTER_CUBIC)
    images = [corner_face, cut_face, astronaut_rgb, big_photo]
    batched = aligner.align(images)
    for i, image in enumerate(images):
        (alone,) = aligner.align([image])
        assert isinstance(alone, AlignedFace) and isinstance(batched[i], AlignedFace), (i, alone, batched[i])
        assert batched[i].box.min() < 0 or i != 1  # the case the library got wrong really is present
        np.testing.assert_allclose(batched[i].landmarks5_src, alone.landmarks5_src, atol=1e-3)
        # float noise between batch shapes (~1e-5 px in the transform) may flip a rounding, nothing more
        assert np.abs(batched[i].crop.astype(int) - alone.crop.astype(int)).max() <= 1


def test_per_image_nms_keeps_boxes_of_different_images_apart() -> None:
    import torch
    from facenet_pytorch.models.utils import detect_face

    from tasks.align import install_per_image_nms

    install_per_image_nms()
    # image 0: box at the batch's largest coordinate; image 1: the same size box reaching -101 px.
    boxes = torch.tensor([[400.0, 400.0, 500.0, 500.0], [-101.0, -101.0, -1.0, -1.0]])
    scores, idxs = torch.tensor([0.9, 0.8]), torch.tensor([0, 1])
    assert sorted(detect_face.batched_nms(boxes, scores, idxs, 0.7).tolist()) == [0, 1]
    assert sorted(detect_face.batched_nms_numpy(boxes, scores, idxs, 0.7, "Min").tolist()) == [0, 1]
    # within one image, suppression still happens
    same = torch.tensor([0, 0])
    assert detect_face.batched_nms(boxes[[0, 0]], scores, same, 0.7).tolist() == [0]


def test_non_rgb_uint8_arrays_are_a_caller_error(aligner) -> None:
    with pytest.raises(ValueError, match="uint8"):
        aligner.align([np.zeros((64, 64, 3), dtype=np.float32)])
    with pytest.raises(ValueError, match="uint8"):
        aligner.align([np.zeros((64, 64), dtype=np.uint8)])


# -- mode "none" -------------------------------------------------------------------------------------

def test_mode_none_resizes_validates_and_never_builds_mtcnn(astronaut_rgb) -> None:
    aligner = FaceAligner(AlignConfig(mode="none", image_size_px=128))
    assert aligner._mtcnn is None
    square = cv2.resize(astronaut_rgb, (100, 100), interpolation=cv2.INTER_AREA)
    nearly_square = np.ascontiguousarray(astronaut_rgb[:, :500])  # 500x512: centre-cropped
    wide = np.ascontiguousarray(astronaut_rgb[:300])              # 512x300: rejected
    tiny = square[:20, :20]
    ok, cropped, rejected, too_small = aligner.align([square, nearly_square, wide, tiny])

    assert ok.crop.shape == (128, 128, 3) and ok.crop.dtype == np.uint8
    np.testing.assert_array_equal(ok.crop, cv2.resize(square, (128, 128), interpolation=cv2.INTER_CUBIC))
    assert ok.landmarks5_src is None and ok.prob is None and ok.box is None
    # the recorded transform maps source pixel centres onto crop pixel centres
    np.testing.assert_allclose(ok.transform @ [99.5, 99.5, 1.0], [127.5, 127.5], atol=1e-4)

    np.testing.assert_array_equal(
        cropped.crop, cv2.resize(astronaut_rgb[6:506, :500], (128, 128), interpolation=cv2.INTER_AREA))
    np.testing.assert_allclose(cropped.transform @ [0.0 - 0.5, 6.0 - 0.5, 1.0], [-0.5, -0.5], atol=1e-4)
    assert isinstance(rejected, RejectError) and rejected.reason == "not_square"
    assert isinstance(too_small, RejectError) and too_small.reason == "image_too_small"


def _blurred_mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    """Mean |a - b| (0..255) after a 3 px blur, so a 1 px shift of fine texture does not dominate."""
    blur = lambda image: cv2.GaussianBlur(image.astype(np.float32), (0, 0), 3)
    return float(np.abs(blur(a) - blur(b)).mean())


def test_out_of_frame_share_is_recorded_and_rejected_above_the_limit(astronaut_rgb) -> None:
    from tasks.align import MAX_OUT_OF_FRAME, out_of_frame_share

    assert out_of_frame_share(np.array([[1.0, 0, 0], [0, 1.0, 0]]), (64, 64), 64) == 0.0
    assert out_of_frame_share(np.array([[1.0, 0, 32], [0, 1.0, 0]]), (64, 64), 64) == 0.5  # left half from x < 0
    tolerant = FaceAligner(AlignConfig(image_size_px=64, max_out_of_frame=1.0), device="cpu")
    whole, = tolerant.align([astronaut_rgb])
    assert whole.out_of_frame == 0.0
    tight = cv2.resize(astronaut_rgb[70:170, 160:280], (96, 80))  # an already-cropped face, like CK+ crops
    cropped, = tolerant.align([tight])
    assert cropped.out_of_frame > MAX_OUT_OF_FRAME
    strict, = FaceAligner(AlignConfig(image_size_px=64), device="cpu").align([tight])
    assert isinstance(strict, RejectError) and strict.reason == "face_out_of_frame" and "--align none" in strict.detail
