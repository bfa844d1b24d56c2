"""How each Action Unit moves the 68 facial landmarks: a linear model in a face frame normalised by the eyes."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

# The project's 17 AUs (manifests.schema.AU_NAMES; repeated here so models/ imports nothing of the project).
AU_NAMES: tuple[str, ...] = (
    "AU01", "AU02", "AU04", "AU05", "AU06", "AU07", "AU09", "AU10", "AU12",
    "AU14", "AU15", "AU17", "AU20", "AU23", "AU25", "AU26", "AU45",
)
N_AUS = len(AU_NAMES)
N_LANDMARKS = 68

# iBUG 300-W / OpenFace 68-point order: jaw 0-16, brows 17-26, nose 27-35, eyes 36-47, outer lips 48-59,
# inner lips 60-67. "Left" below means the image's left (the subject's right side).
RIGHT_EYE = tuple(range(36, 42))   # image-left eye: 36 outer corner, 37-38 upper lid, 39 inner corner, 40-41 lower lid
LEFT_EYE = tuple(range(42, 48))    # image-right eye: 42 inner corner, 43-44 upper lid, 45 outer corner, 46-47 lower lid
OUTER_LIPS = tuple(range(48, 60))
INNER_LIPS = tuple(range(60, 68))  # 60 / 64 inner corners, 61-63 upper inner lip, 65-67 lower inner lip

# Each point's mirror image across the face's midline (midline points map to themselves).
MIRROR: tuple[int, ...] = (
    tuple(16 - i for i in range(17))                                    # jaw
    + (26, 25, 24, 23, 22, 21, 20, 19, 18, 17)                          # brows
    + (27, 28, 29, 30, 35, 34, 33, 32, 31)                              # nose
    + (45, 44, 43, 42, 47, 46, 39, 38, 37, 36, 41, 40)                  # eyes
    + (54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55)                  # outer lips
    + (64, 63, 62, 61, 60, 67, 66, 65)                                  # inner lips
)
# The image-left half (the subject's right): jaw, brow, nostril, eye and lip points left of the midline.
LEFT_HALF: frozenset[int] = frozenset((*range(0, 8), *range(17, 22), 31, 32, *range(36, 42), 48, 49, 50, 58, 59, 60, 61, 67))

# Pairs that must not cross: (point that stays above, point that stays below). An eye closes, lips meet,
# but a lid never passes the other lid and a lip never passes the other lip.
ORDERED_PAIRS: tuple[tuple[int, int], ...] = (
    (37, 41), (38, 40), (44, 46), (43, 47),         # upper lid above lower lid
    (61, 67), (62, 66), (63, 65),                   # upper inner lip above lower inner lip
    (50, 61), (51, 62), (52, 63),                   # outer upper lip above inner upper lip
    (67, 59), (66, 57), (65, 55),                   # inner lower lip above outer lower lip
)

# ---------------------------------------------------------------------------------------------------------
# The default model, authored from FACS (Ekman, Friesen & Hager, FACS Manual 2002: "appearance changes" of
# each AU). Units: the inter-ocular distance (IOD, eye centre to eye centre; about 31 px in a 128 px crop of
# this project). One entry = (out, down) at full intensity (OpenFace 5 / 5), written for the image-left half
# and the midline; "out" points away from the midline (mirrored onto the other half), "down" toward the chin.
# Typical adult sizes in IOD for scale: eye opening 0.16, eye width 0.48, brow above the eye 0.3, mouth width 0.8.
#
# | AU   | name                 | what the points do at full intensity                                  | the warp cannot show |
# |------|----------------------|------------------------------------------------------------------------|----------------------|
# | AU01 | inner brow raiser    | inner brow up 0.17 (and slightly in), fading to 0.01 at the outer end | forehead wrinkles (centre) |
# | AU02 | outer brow raiser    | outer brow up 0.17, fading to 0.02 at the inner end, slight arch out   | forehead wrinkles (sides) |
# | AU04 | brow lowerer         | inner brow down 0.11 and in 0.09, outer end down 0.03; lids down 0.015 | vertical furrows between the brows |
# | AU05 | upper lid raiser     | upper lids up 0.06 (more white above the iris)                         | - |
# | AU06 | cheek raiser         | lower lids up 0.035, outer eye corners up 0.01, upper cheek contour up | crow's feet, cheek bulge, infraorbital furrow |
# | AU07 | lid tightener        | lower lids up 0.05 and straightened, upper lids down 0.015             | lid bulge |
# | AU09 | nose wrinkler        | nostril wings up 0.045, upper lip up 0.04, inner brows down 0.04      | wrinkles across the nose root (mostly texture) |
# | AU10 | upper lip raiser     | upper lip centre up 0.08, corners up 0.03, nostril wings up 0.02       | deepened nasolabial furrow |
# | AU12 | lip corner puller    | mouth corners up 0.12 and out 0.11, the lips' sides follow             | nasolabial furrow, cheek bulge |
# | AU14 | dimpler              | mouth corners tightened sideways 0.03, up 0.01                         | the dimple itself (mostly texture) |
# | AU15 | lip corner depressor | mouth corners down 0.09 (and out 0.02), lip sides follow               | chin-boss wrinkling |
# | AU17 | chin raiser          | chin up 0.04, lower lip pushed up 0.05, corners down 0.015             | chin wrinkling ("orange peel") |
# | AU20 | lip stretcher        | mouth corners out 0.11 (slightly down), lips flattened                 | skin stretch lines beside the mouth |
# | AU23 | lip tightener        | corners in 0.05, red of the lips narrowed 0.02 above and below         | lip rolling / bulge above the lip |
# | AU25 | lips part            | lower lip down 0.10, upper inner lip up 0.02 (mouth interior filled)   | teeth and tongue are drawn, not seen |
# | AU26 | jaw drop             | chin down 0.28, lower lip down 0.24, corners down 0.09 and in 0.04     | - |
# | AU45 | blink                | upper lids down 0.17 (onto the lower lid), lower lids up 0.03          | lashes meeting |
# ---------------------------------------------------------------------------------------------------------
FACS_DEFAULT: dict[str, dict[int, tuple[float, float]]] = {
    "AU01": {21: (-0.02, -0.17), 20: (-0.01, -0.12), 19: (0.0, -0.07), 18: (0.0, -0.03), 17: (0.0, -0.01)},
    "AU02": {17: (0.02, -0.17), 18: (0.01, -0.16), 19: (0.0, -0.12), 20: (0.0, -0.06), 21: (0.0, -0.02)},
    "AU04": {21: (-0.09, 0.11), 20: (-0.06, 0.09), 19: (-0.04, 0.07), 18: (-0.02, 0.05), 17: (0.0, 0.03),
             37: (0.0, 0.015), 38: (0.0, 0.015)},
    "AU05": {37: (0.0, -0.06), 38: (0.0, -0.06), 36: (0.0, -0.01), 39: (0.0, -0.005)},
    "AU06": {40: (0.0, -0.035), 41: (0.0, -0.035), 36: (0.0, -0.01), 1: (0.0, -0.015), 2: (0.0, -0.015),
             3: (0.0, -0.01)},
    "AU07": {40: (0.0, -0.05), 41: (0.0, -0.05), 36: (0.0, -0.01), 37: (0.0, 0.015), 38: (0.0, 0.015)},
    "AU09": {31: (0.01, -0.045), 32: (0.0, -0.04), 33: (0.0, -0.035), 30: (0.0, -0.02), 29: (0.0, -0.015),
             50: (0.0, -0.04), 51: (0.0, -0.04), 49: (0.0, -0.03), 61: (0.0, -0.03), 62: (0.0, -0.03),
             21: (-0.02, 0.04), 20: (-0.01, 0.02), 40: (0.0, -0.02), 41: (0.0, -0.02)},
    "AU10": {50: (0.0, -0.08), 51: (0.0, -0.08), 49: (0.0, -0.06), 61: (0.0, -0.07), 62: (0.0, -0.07),
             48: (0.0, -0.03), 60: (0.0, -0.03), 31: (0.0, -0.02), 32: (0.0, -0.02), 33: (0.0, -0.02)},
    "AU12": {48: (0.11, -0.12), 60: (0.10, -0.11), 49: (0.05, -0.06), 59: (0.05, -0.05), 61: (0.05, -0.05),
             67: (0.05, -0.05), 50: (0.02, -0.02), 58: (0.02, -0.02), 51: (0.0, -0.01), 57: (0.0, -0.01),
             62: (0.0, -0.01), 66: (0.0, -0.01), 3: (0.01, -0.01), 4: (0.01, -0.01)},
    "AU14": {48: (0.03, -0.01), 60: (0.03, -0.01), 49: (0.01, 0.0), 59: (0.01, 0.0)},
    "AU15": {48: (0.02, 0.09), 60: (0.02, 0.08), 59: (0.01, 0.05), 49: (0.01, 0.04), 67: (0.01, 0.04),
             61: (0.01, 0.03), 58: (0.0, 0.02), 50: (0.0, 0.015)},
    "AU17": {8: (0.0, -0.04), 7: (0.0, -0.03), 57: (0.0, -0.05), 58: (0.0, -0.045), 59: (0.0, -0.03),
             66: (0.0, -0.04), 67: (0.0, -0.03), 51: (0.0, -0.015), 62: (0.0, -0.02), 61: (0.0, -0.015),
             48: (0.0, 0.015), 60: (0.0, 0.01)},
    "AU20": {48: (0.11, 0.02), 60: (0.10, 0.02), 49: (0.05, 0.0), 59: (0.05, 0.01), 61: (0.05, 0.0),
             67: (0.05, 0.005), 50: (0.02, 0.01), 58: (0.02, 0.0), 4: (0.01, 0.0), 5: (0.01, 0.0)},
    "AU23": {48: (-0.05, 0.0), 60: (-0.04, 0.0), 49: (-0.02, 0.015), 50: (-0.01, 0.02), 51: (0.0, 0.02),
             59: (-0.02, -0.015), 58: (-0.01, -0.02), 57: (0.0, -0.02)},
    "AU25": {66: (0.0, 0.11), 67: (0.0, 0.09), 57: (0.0, 0.08), 58: (0.0, 0.075), 59: (0.0, 0.05),
             61: (0.0, -0.015), 62: (0.0, -0.02), 60: (0.0, 0.01), 48: (0.0, 0.005)},
    "AU26": {8: (0.0, 0.28), 7: (-0.01, 0.26), 6: (-0.01, 0.21), 5: (-0.015, 0.14), 4: (-0.01, 0.08),
             3: (0.0, 0.03), 2: (0.0, 0.01), 57: (0.0, 0.24), 58: (-0.01, 0.23), 59: (-0.02, 0.17),
             66: (0.0, 0.24), 67: (-0.02, 0.2), 48: (-0.04, 0.09), 60: (-0.04, 0.09)},
    "AU45": {37: (0.0, 0.17), 38: (0.0, 0.17), 40: (0.0, -0.03), 41: (0.0, -0.03)},
}


def _side(index: int) -> float:
    """-1 for points on the image's left half, +1 on the right, 0 on the midline (face-frame x sign)."""
    if MIRROR[index] == index:
        return 0.0
    return -1.0 if index in LEFT_HALF else 1.0


def _authored_basis(table: dict[str, dict[int, tuple[float, float]]]) -> np.ndarray:
    """The (out, down) table -> basis [17, 68, 2] in face-frame units (x to the image's right, y down)."""
    basis = np.zeros((N_AUS, N_LANDMARKS, 2), np.float64)
    for a, name in enumerate(AU_NAMES):
        for index, (out, down) in table.get(name, {}).items():
            if MIRROR[index] == index:
                if out != 0.0:
                    raise ValueError(f"{name}: midline point {index} cannot move 'out'")
                basis[a, index] = (0.0, down)
                continue
            if _side(index) > 0:
                raise ValueError(f"{name}: author the image-left half only (point {index} is on the right)")
            for point in (index, MIRROR[index]):
                basis[a, point] = (_side(point) * out, down)
    return basis


@dataclass(frozen=True)
class FaceFrame:
    """A similarity frame per face: origin between the eye centres, x along the eyes, unit = inter-ocular distance."""

    origin: np.ndarray   # [2] crop px
    x_axis: np.ndarray   # [2] unit vector from the image-left eye to the image-right eye
    iod_px: float        # eye centre to eye centre

    @property
    def y_axis(self) -> np.ndarray:
        return np.array([-self.x_axis[1], self.x_axis[0]])  # x rotated +90 deg: "down" for a level face

    def to_face(self, points: np.ndarray) -> np.ndarray:
        """[..., 2] crop px -> face units."""
        rel = np.asarray(points, np.float64) - self.origin
        return np.stack([rel @ self.x_axis, rel @ self.y_axis], axis=-1) / self.iod_px

    def vectors_to_px(self, vectors: np.ndarray) -> np.ndarray:
        """[..., 2] displacements in face units -> crop px."""
        v = np.asarray(vectors, np.float64)
        return self.iod_px * (v[..., :1] * self.x_axis + v[..., 1:] * self.y_axis)


def face_frame(landmarks: np.ndarray) -> FaceFrame:
    """The face frame of 68 points [68, 2]; ValueError when the eyes coincide."""
    points = np.asarray(landmarks, np.float64)
    if points.shape != (N_LANDMARKS, 2):
        raise ValueError(f"landmarks must be [68, 2], got {points.shape}")
    left, right = points[list(RIGHT_EYE)].mean(0), points[list(LEFT_EYE)].mean(0)
    axis = right - left
    iod = float(np.hypot(*axis))
    if not np.isfinite(iod) or iod < 1e-3:
        raise ValueError(f"degenerate face: eye centres {left} and {right} coincide")
    return FaceFrame(origin=(left + right) / 2.0, x_axis=axis / iod, iod_px=iod)


@dataclass(frozen=True)
class AUShapeModel:
    """Linear AU -> landmark displacement model.

    basis: [17, 68, 2] displacement of each point (face units, x along the eyes to the image's right, y down)
           per unit of AU intensity (0..1, OpenFace's 0..5 / 5).
    name:  what made it ("facs-default-v1", or "fit:<hash>" for a fitted one); recorded in model_versions.
    """

    basis: np.ndarray
    name: str
    info: tuple[tuple[str, Any], ...] = ()   # free-form provenance (fit data, errors), JSON-able

    def __post_init__(self) -> None:
        if self.basis.shape != (N_AUS, N_LANDMARKS, 2):
            raise ValueError(f"basis must be [17, 68, 2], got {self.basis.shape}")
        if not np.all(np.isfinite(self.basis)):
            raise ValueError("basis has non-finite values")

    def displacement(self, aus: np.ndarray) -> np.ndarray:
        """AU intensities [..., 17] -> displacement [..., 68, 2] in face units."""
        return np.tensordot(np.asarray(aus, np.float64), self.basis, axes=([-1], [0]))

    def target_landmarks(self, landmarks: np.ndarray, au_source: np.ndarray, au_target: np.ndarray) -> np.ndarray:
        """Where the 68 points [68, 2] (crop px) go when the face's AUs change from au_source to au_target.

        target = source + D(target) - D(source), in the face's own frame, then lids and lips are kept from
        crossing (an eye or mouth closes at most until its two edges meet).
        """
        frame = face_frame(landmarks)
        before = frame.to_face(landmarks)
        moved = keep_order(before + self.displacement(au_target) - self.displacement(au_source), before)
        # Add the motion to the given points, so points that do not move keep their exact coordinates.
        return (np.asarray(landmarks, np.float64) + frame.vectors_to_px(moved - before)).astype(np.float32)

    @property
    def version(self) -> str:
        digest = hashlib.sha256(np.ascontiguousarray(self.basis, np.float64).tobytes()).hexdigest()[:12]
        return f"{self.name}-{digest}"

    def to_json(self) -> dict[str, Any]:
        return {"kind": "au_shape", "format": 1, "name": self.name, "au_names": list(AU_NAMES),
                "basis": np.round(self.basis, 6).tolist(), "info": dict(self.info)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AUShapeModel:
        if data.get("kind") != "au_shape" or data.get("format") != 1:
            raise ValueError("not an AU shape model file (expected kind 'au_shape', format 1)")
        if tuple(data.get("au_names", ())) != AU_NAMES:
            raise ValueError(f"AU order differs from the project's: {data.get('au_names')}")
        info = tuple(sorted(data.get("info", {}).items()))
        return cls(basis=np.asarray(data["basis"], np.float64), name=str(data["name"]), info=info)

    def dumps(self) -> str:
        return json.dumps(self.to_json(), sort_keys=True)


# Each eye: (outer corner, inner corner, (upper, lower) lid pairs).
EYE_LIDS: tuple[tuple[int, int, tuple[tuple[int, int], ...]], ...] = (
    (36, 39, ((37, 41), (38, 40))),
    (45, 42, ((44, 46), (43, 47))),
)
_SEAM = 0.005   # face units: a closed eye's lid line sits this far above the line through its corners


def keep_order(points_face: np.ndarray, before: np.ndarray) -> np.ndarray:
    """Clamp [68, 2] face-frame points so the edit makes no ORDERED_PAIRS pair cross: the upper point stays at or
    above the lower one (they may meet: a closed eye, closed lips); where they would cross, both go to their mean
    height, and for a lid pair no lower than just above the line through the eye's corners (a closed eye's lid
    line joins its corners; the lids never fold past them). Pairs already crossed in `before` (detector noise on a
    half-hidden lip) are left as the edit put them."""
    out = np.array(points_face, np.float64, copy=True)
    corner_line = {}
    for outer, inner, pairs in EYE_LIDS:
        for upper, _ in pairs:
            t = (out[upper, 0] - out[outer, 0]) / (out[inner, 0] - out[outer, 0] or 1e-9)
            corner_line[upper] = out[outer, 1] + t * (out[inner, 1] - out[outer, 1]) - _SEAM
    for upper, lower in ORDERED_PAIRS:
        if before[upper, 1] <= before[lower, 1] and out[upper, 1] > out[lower, 1]:
            mid = 0.5 * (out[upper, 1] + out[lower, 1])
            if upper in corner_line:
                top, bottom = before[upper, 1], before[lower, 1]
                if top <= corner_line[upper] <= bottom:
                    mid = min(mid, corner_line[upper])
                # A narrowed eye (a squint: the corner line is not between its lids): the lids meet between
                # where they were, so the upper lid never rises and the lower never drops to close it.
                mid = min(max(mid, top), bottom)
            out[upper, 1] = out[lower, 1] = mid
    return out


def default_au_shape_model() -> AUShapeModel:
    """The FACS-authored model (table above)."""
    return AUShapeModel(basis=_authored_basis(FACS_DEFAULT), name="facs-default-v1")
