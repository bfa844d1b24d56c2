"""Procedural faces whose pixels carry exact AU ground truth: the synthetic AU benchmark's renderer and writer."""
from __future__ import annotations

import functools
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from manifests.schema import AU_INDEX, AU_INTENSITY_MAX, AU_NAMES, EMOTIONS, N_AUS, stable_hash
from tasks.targets import nearest_emotion, prototype_vector

# The AUs whose intensity moves visible geometry; every other AU in AU_NAMES is ignored by render_face.
RENDERED_AUS: tuple[str, ...] = (
    "AU01", "AU02", "AU04", "AU05", "AU06", "AU09", "AU12", "AU15", "AU25", "AU26", "AU45",
)
RENDERED_INDEX: np.ndarray = np.array([AU_INDEX[name] for name in RENDERED_AUS], dtype=np.int64)  # [11]

# Face regions (boxes in the face frame, see au_region_masks) and the regions each rendered AU changes.
# Pixels outside an AU's regions do not change when only that AU changes.
REGION_NAMES: tuple[str, ...] = ("brows", "eyes", "nose", "cheeks", "mouth", "jaw")
AU_REGIONS: dict[str, tuple[str, ...]] = {
    "AU01": ("brows",),              # inner brow raiser; central forehead lines
    "AU02": ("brows",),              # outer brow raiser; lateral forehead lines
    "AU04": ("brows",),              # brows lowered and drawn together; glabella lines
    "AU05": ("eyes",),               # upper lids raised: white shows above the iris
    "AU06": ("eyes", "cheeks"),      # cheeks raised: lower lids up, crow's feet, infraorbital fold
    "AU09": ("nose", "cheeks"),      # nose wrinkled: bridge lines, nostrils lifted and flared, folds
    "AU12": ("mouth", "cheeks"),     # lip corners pulled up and out; nasolabial folds deepen
    "AU15": ("mouth", "cheeks"),     # lip corners pulled down (the nasolabial folds follow the corners)
    "AU25": ("mouth",),              # lips part, teeth show
    "AU26": ("mouth", "jaw", "cheeks"),  # jaw drops: lower lip, corners and chin move down
    "AU45": ("eyes",),               # eyes close
}

HAIR_STYLES: tuple[str, ...] = ("short", "long", "bangs", "buzz", "bun")

_SKIN_TONES = np.array([
    (255, 224, 196), (241, 194, 167), (234, 192, 134), (224, 172, 105), (198, 134, 66),
    (161, 102, 59), (141, 85, 36), (110, 68, 40), (92, 56, 32), (255, 205, 148),
], dtype=np.float64)
_HAIR_COLOURS = np.array([
    (20, 18, 18), (45, 30, 22), (80, 52, 32), (120, 84, 50), (180, 140, 90),
    (220, 190, 130), (150, 60, 30), (160, 160, 160), (235, 235, 230),
], dtype=np.float64)
_IRIS_COLOURS = np.array([(60, 40, 25), (95, 65, 40), (70, 110, 150), (80, 120, 80), (120, 110, 90)],
                         dtype=np.float64)

Colour = tuple[float, float, float]


@dataclass(frozen=True)
class RenderConfig:
    """How faces are drawn. Geometry is drawn at supersample x the output size, then area-downsampled."""

    image_size_px: int = 128
    supersample: int = 4
    face_scale_frac: float = 0.34   # face half-width as a fraction of the image side (before identity jitter)
    eye_y_frac: float = 0.42        # where the eyes sit, as a fraction of the image height (aligned crops)

    def __post_init__(self) -> None:
        if not isinstance(self.image_size_px, int) or not 16 <= self.image_size_px <= 2048:
            raise ValueError(f"RenderConfig.image_size_px={self.image_size_px!r}: must be an int in 16..2048")
        if not isinstance(self.supersample, int) or not 1 <= self.supersample <= 8:
            raise ValueError(f"RenderConfig.supersample={self.supersample!r}: must be an int in 1..8")
        if not 0.15 <= self.face_scale_frac <= 0.45:
            raise ValueError(f"RenderConfig.face_scale_frac={self.face_scale_frac}: must be in 0.15..0.45")
        if not 0.3 <= self.eye_y_frac <= 0.6:
            raise ValueError(f"RenderConfig.eye_y_frac={self.eye_y_frac}: must be in 0.3..0.6")


@dataclass(frozen=True)
class FaceShape:
    """Identity geometry in the face frame: x right, y down, unit = face half-width, origin at the face centre."""

    top_half_height: float      # centre -> crown
    bottom_half_height: float   # centre -> chin
    jaw_width: float            # 1 = round jaw, smaller = narrower chin
    jaw_exponent: float         # how low the jaw starts narrowing
    eye_y: float
    eye_x: float                # distance of each eye centre from the midline
    eye_half_width: float
    upper_lid: float            # upper lid height over the eye centre line (neutral)
    lower_lid: float            # lower lid depth under the centre line (neutral)
    iris_radius: float
    eye_tilt: float             # outer corner offset in y (negative = upturned)
    gaze: float                 # iris offset towards the outer corner, in eye half-widths
    brow_y: float
    brow_inner_x: float
    brow_outer_x: float
    brow_arch: float
    brow_droop: float
    brow_thickness: float
    nose_tip_y: float
    nose_half_width: float
    mouth_y: float
    mouth_half_width: float
    upper_lip: float
    lower_lip: float
    teeth_height: float


@dataclass(frozen=True)
class Palette:
    skin: Colour
    hair: Colour
    brow: Colour
    iris: Colour
    lips: Colour
    sclera: Colour
    background_a: Colour
    background_b: Colour
    clothes: Colour


@dataclass(frozen=True)
class Pose:
    center_x_frac: float   # offset of the face centre from the image centre, fraction of the side
    center_y_frac: float
    scale: float           # multiplies RenderConfig.face_scale_frac
    roll_deg: float


@dataclass(frozen=True)
class Identity:
    """Everything about a face that does not change with expression; random_identity(seed) draws one."""

    seed: int
    shape: FaceShape
    palette: Palette
    pose: Pose
    hair_style: str
    hairline_gap: float       # hairline height above the brows
    hair_volume: float
    hair_phase: float         # phase of the fringe's wave
    light_angle_deg: float    # direction the light comes from
    light_strength: float     # relative brightness change across the image (0 = flat)
    background_angle_deg: float
    wrinkle_depth: float      # how dark expression lines get at full intensity


def _mix(a: Colour, b: Colour, t: float) -> Colour:
    return tuple(float(x + (y - x) * t) for x, y in zip(a, b))  # type: ignore[return-value]


def _scale(colour: Colour, k: float) -> Colour:
    return tuple(float(min(255.0, c * k)) for c in colour)  # type: ignore[return-value]


def _jitter_colour(rng: np.random.Generator, base: np.ndarray, spread: float) -> Colour:
    return tuple(float(v) for v in np.clip(base + rng.uniform(-spread, spread, 3), 0, 255))  # type: ignore[return-value]


def random_identity(seed: int) -> Identity:
    """A random face identity, fully determined by `seed` (any non-negative int)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"identity seed must be a non-negative int, got {seed!r}")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x5EED_FACE]))
    u = rng.uniform

    eye_half_width = u(0.16, 0.2)
    upper_lid = eye_half_width * u(0.42, 0.52)
    eye_y = u(-0.26, -0.18)
    nose_tip_y = u(0.14, 0.22)
    mouth_y = nose_tip_y + u(0.3, 0.36)
    shape = FaceShape(
        top_half_height=u(1.22, 1.36),
        bottom_half_height=mouth_y + u(0.62, 0.74),
        jaw_width=u(0.55, 0.85),
        jaw_exponent=u(1.2, 2.0),
        eye_y=eye_y,
        eye_x=u(0.36, 0.42),
        eye_half_width=eye_half_width,
        upper_lid=upper_lid,
        lower_lid=eye_half_width * u(0.28, 0.36),
        # Larger than the neutral upper lid so the lid cuts the iris; AU05 then shows white above it.
        iris_radius=min(upper_lid * u(1.08, 1.25), 0.6 * eye_half_width),
        eye_tilt=u(-0.035, 0.02),
        gaze=u(-0.12, 0.12),
        brow_y=eye_y - u(0.2, 0.25),
        brow_inner_x=u(0.11, 0.16),
        brow_outer_x=u(0.56, 0.66),
        brow_arch=u(0.02, 0.06),
        brow_droop=u(-0.01, 0.04),
        brow_thickness=u(0.035, 0.06),
        nose_tip_y=nose_tip_y,
        nose_half_width=u(0.09, 0.13),
        mouth_y=mouth_y,
        mouth_half_width=u(0.24, 0.31),
        upper_lip=u(0.035, 0.06),
        lower_lip=u(0.05, 0.08),
        teeth_height=u(0.035, 0.05),
    )

    skin = _jitter_colour(rng, _SKIN_TONES[rng.integers(len(_SKIN_TONES))], 10)
    hair = _jitter_colour(rng, _HAIR_COLOURS[rng.integers(len(_HAIR_COLOURS))], 12)
    # Brows are darker than light hair so they stay visible on any skin.
    brow = _mix(hair, (25.0, 20.0, 18.0), u(0.35, 0.7))
    lips = _mix(_scale(skin, 0.8), (170.0, 60.0, 70.0), u(0.25, 0.55))
    bg_a = tuple(float(v) for v in rng.uniform(20, 235, 3))
    bg_b = _mix(bg_a, tuple(float(v) for v in rng.uniform(20, 235, 3)), u(0.3, 0.8))  # type: ignore[arg-type]
    palette = Palette(
        skin=skin, hair=hair, brow=brow,
        iris=_jitter_colour(rng, _IRIS_COLOURS[rng.integers(len(_IRIS_COLOURS))], 15),
        lips=lips, sclera=_jitter_colour(rng, np.array([238.0, 236.0, 230.0]), 8),
        background_a=bg_a, background_b=bg_b,  # type: ignore[arg-type]
        clothes=tuple(float(v) for v in rng.uniform(15, 240, 3)),  # type: ignore[arg-type]
    )
    pose = Pose(center_x_frac=u(-0.025, 0.025), center_y_frac=u(-0.02, 0.02), scale=u(0.94, 1.06),
                roll_deg=u(-3.0, 3.0))
    hair_style = HAIR_STYLES[int(rng.integers(len(HAIR_STYLES)))]
    return Identity(
        seed=int(seed), shape=shape, palette=palette, pose=pose, hair_style=hair_style,
        hairline_gap=u(0.5, 0.58) if hair_style == "bangs" else u(0.55, 0.75),
        hair_volume=u(0.04, 0.16), hair_phase=u(0, 2 * math.pi),
        light_angle_deg=u(0, 360), light_strength=u(0.0, 0.22),
        background_angle_deg=u(0, 360), wrinkle_depth=u(0.6, 0.7),
    )


# ---------------------------------------------------------------- drawing primitives

_SHIFT_BITS = 4  # cv2 sub-pixel precision: coordinates carry 4 fractional bits


class _Canvas:
    """A supersampled RGB image plus the face-frame -> pixel transform."""

    def __init__(self, identity: Identity, config: RenderConfig):
        side = config.image_size_px * config.supersample
        self.side = side
        pose = identity.pose
        self.unit_px = config.face_scale_frac * pose.scale * side   # pixels per face unit
        # The eyes land on eye_y_frac whatever the identity's eye height, as in an aligned crop.
        center_y = (config.eye_y_frac + pose.center_y_frac) * side - identity.shape.eye_y * self.unit_px
        center_x = (0.5 + pose.center_x_frac) * side
        angle = math.radians(pose.roll_deg)
        rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
        self.matrix = rot * self.unit_px               # [2, 2]
        self.offset = np.array([center_x, center_y])   # [2]
        self.image = np.zeros((side, side, 3), np.uint8)

    def to_px(self, points: np.ndarray) -> np.ndarray:
        """Face-frame points [N, 2] -> fixed-point pixel coordinates [N, 2] int32 for cv2 with shift."""
        px = points @ self.matrix.T + self.offset
        return np.round(px * (1 << _SHIFT_BITS)).astype(np.int32)

    def fill(self, points: np.ndarray, colour: Colour) -> None:
        cv2.fillPoly(self.image, [self.to_px(points)], colour, lineType=cv2.LINE_AA, shift=_SHIFT_BITS)

    def stroke(self, points: np.ndarray, colour: Colour, width: float, closed: bool = False) -> None:
        thickness = max(1, int(round(width * self.unit_px)))
        cv2.polylines(self.image, [self.to_px(points)], closed, colour, thickness=thickness,
                      lineType=cv2.LINE_AA, shift=_SHIFT_BITS)

    def faint_stroke(self, points: np.ndarray, skin: Colour, ink: Colour, opacity: float, width: float) -> None:
        """An expression line drawn over skin: its colour moves continuously from skin (0) to ink (1)."""
        if opacity > 0.0:
            self.stroke(points, _mix(skin, ink, min(1.0, opacity)), width)


def _ellipse(center: tuple[float, float], axes: tuple[float, float], angle_deg: float = 0.0,
             start_deg: float = 0.0, end_deg: float = 360.0, n: int = 48) -> np.ndarray:
    """Points [n, 2] on an ellipse arc in the face frame."""
    t = np.radians(np.linspace(start_deg, end_deg, n, endpoint=end_deg - start_deg < 360))
    a = math.radians(angle_deg)
    x, y = axes[0] * np.cos(t), axes[1] * np.sin(t)
    return np.stack([center[0] + x * math.cos(a) - y * math.sin(a),
                     center[1] + x * math.sin(a) + y * math.cos(a)], axis=1)


def _quad(p0, p1, p2, n: int = 24) -> np.ndarray:
    """Quadratic curve [n, 2] from p0 to p2 that passes through p1 at its middle."""
    p0, p1, p2 = (np.asarray(p, np.float64) for p in (p0, p1, p2))
    control = 2.0 * p1 - 0.5 * (p0 + p2)
    t = np.linspace(0.0, 1.0, n)[:, None]
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * control + t ** 2 * p2


def _band(center_line: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """Closed polygon around a polyline [N, 2] with per-point widths [N]."""
    tangent = np.gradient(center_line, axis=0)
    tangent /= np.linalg.norm(tangent, axis=1, keepdims=True) + 1e-12
    normal = np.stack([-tangent[:, 1], tangent[:, 0]], axis=1)
    half = (widths / 2.0)[:, None]
    return np.concatenate([center_line + normal * half, (center_line - normal * half)[::-1]])


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


# ---------------------------------------------------------------- expression geometry


@dataclass(frozen=True)
class _Expression:
    """The rendered AUs of one face, by name (0..1)."""

    au01: float
    au02: float
    au04: float
    au05: float
    au06: float
    au09: float
    au12: float
    au15: float
    au25: float
    au26: float
    au45: float

    @classmethod
    def from_vector(cls, aus: np.ndarray) -> "_Expression":
        return cls(*(float(aus[AU_INDEX[name]]) for name in RENDERED_AUS))

    @property
    def jaw_drop(self) -> float:
        return 0.2 * self.au26


def _check_aus(aus: np.ndarray) -> np.ndarray:
    aus = np.asarray(aus, dtype=np.float64)
    if aus.shape != (N_AUS,):
        raise ValueError(f"AU vector must have shape ({N_AUS},) in AU_NAMES order, got {aus.shape}")
    if not np.all(np.isfinite(aus)):
        raise ValueError(f"AU vector has non-finite values: {aus.tolist()}")
    bad = [(AU_NAMES[i], float(v)) for i, v in enumerate(aus) if not 0.0 <= v <= 1.0]
    if bad:
        raise ValueError(f"AU intensities must be in 0..1 (OpenFace value / 5); out of range: {bad}")
    return aus


def _face_outline(s: FaceShape, drop: float, t: np.ndarray | None = None) -> np.ndarray:
    """Outline points [N, 2] at angles t (radians; 0 = right, pi/2 = chin); default 120 around the face."""
    if t is None:
        t = np.linspace(0.0, 2.0 * math.pi, 120, endpoint=False)
    cx, cy = np.cos(t), np.sin(t)
    lower = np.clip(cy, 0.0, 1.0)
    upper = np.clip(-cy, 0.0, 1.0)
    x = cx * (1.0 - (1.0 - s.jaw_width) * lower ** s.jaw_exponent) * (1.0 - 0.08 * upper ** 2)
    y = np.where(cy < 0, cy * s.top_half_height, cy * s.bottom_half_height)
    # The jaw drop stretches the face below the mouth: the chin moves by the full drop.
    y = y + drop * _smoothstep((y - s.mouth_y) / (s.bottom_half_height - s.mouth_y))
    return np.stack([x, y], axis=1)


@functools.lru_cache(maxsize=32)
def _background(identity: Identity, config: RenderConfig) -> np.ndarray:
    """The supersampled background [side, side, 3]: a two-colour linear gradient (cached: identities repeat)."""
    n, side = config.image_size_px, config.image_size_px * config.supersample
    a = math.radians(identity.background_angle_deg)
    grid = (np.arange(n, dtype=np.float32) + 0.5) / n - 0.5
    ramp = np.clip(0.5 + grid[None, :] * math.cos(a) + grid[:, None] * math.sin(a), 0.0, 1.0)  # [n, n]
    ca = np.asarray(identity.palette.background_a, np.float32)
    cb = np.asarray(identity.palette.background_b, np.float32)
    small = ca + (cb - ca) * ramp[..., None]  # [n, n, 3]
    image = cv2.resize(np.round(small).astype(np.uint8), (side, side), interpolation=cv2.INTER_LINEAR)
    image.flags.writeable = False
    return image


def _hairline(identity: Identity, x: np.ndarray) -> np.ndarray:
    s = identity.shape
    top = s.brow_y - identity.hairline_gap
    temple = s.eye_y - 0.08
    y = top + (temple - top) * np.clip(np.abs(x) / 0.97, 0.0, 1.0) ** 3
    if identity.hair_style == "bangs":
        y = y + 0.025 * np.sin(x * 22.0 + identity.hair_phase) * (np.abs(x) < 0.8)
    return y


def _hair_cap(identity: Identity) -> np.ndarray:
    s = identity.shape
    temple = s.eye_y - 0.08
    top = -s.top_half_height - identity.hair_volume
    width = 1.05 + 0.5 * identity.hair_volume
    theta = np.linspace(0.0, math.pi, 48)
    outer = np.stack([width * np.cos(theta), temple - (temple - top) * np.sin(theta)], axis=1)
    sideburn = 0.12 if identity.hair_style != "bun" else 0.05
    left = np.array([[-width, temple + sideburn], [-0.93, temple + sideburn]])
    right = np.array([[0.93, temple + sideburn], [width, temple + sideburn]])
    x = np.linspace(-0.95, 0.95, 48)
    inner = np.stack([x, _hairline(identity, x)], axis=1)
    return np.concatenate([right[::-1], outer, left, inner, right])


def _draw_back(canvas: _Canvas, identity: Identity, expr: _Expression) -> None:
    s, p = identity.shape, identity.palette
    chin = s.bottom_half_height
    canvas.fill(_ellipse((0.0, chin + 1.15), (2.0, 0.8)), p.clothes)
    if identity.hair_style == "long":
        theta = np.linspace(0.0, math.pi, 40)
        top = -s.top_half_height - identity.hair_volume - 0.06
        arc = np.stack([1.22 * np.cos(theta), -0.1 + (top + 0.1) * np.sin(theta)], axis=1)
        sides = np.array([[-1.25, chin + 0.55], [1.25, chin + 0.55]])
        canvas.fill(np.concatenate([arc, sides]), _scale(p.hair, 0.85))
    if identity.hair_style == "bun":
        canvas.fill(_ellipse((0.0, -s.top_half_height - 0.12), (0.3, 0.26)), p.hair)
    neck = np.array([[-0.42, s.mouth_y], [0.42, s.mouth_y], [0.46, chin + 1.0], [-0.46, chin + 1.0]])
    canvas.fill(neck, _scale(p.skin, 0.86))
    # Shadow the chin casts on the neck; it follows the jaw.
    canvas.fill(_ellipse((0.0, chin + expr.jaw_drop - 0.02), (0.42, 0.16)), _scale(p.skin, 0.72))
    for side in (-1.0, 1.0):
        ear = _ellipse((side * 0.97, s.eye_y + 0.14), (0.13, 0.23), angle_deg=side * 8.0)
        canvas.fill(ear, _scale(p.skin, 0.95))
        canvas.stroke(_ellipse((side * 0.99, s.eye_y + 0.14), (0.06, 0.14), side * 8.0, -80, 80, 20),
                      _scale(p.skin, 0.75), 0.018)


def _draw_forehead(canvas: _Canvas, identity: Identity, expr: _Expression) -> None:
    s, p = identity.shape, identity.palette
    ink = _scale(p.skin, 0.55)
    depth = identity.wrinkle_depth
    for k in range(3):
        y = s.brow_y - 0.27 - 0.07 * k
        # Central lines come with the inner brow raise, lateral ones with the outer.
        centre = _quad((-0.2, y + 0.01), (0.0, y - 0.02 * expr.au01), (0.2, y + 0.01), 12)
        canvas.faint_stroke(centre, p.skin, ink, depth * expr.au01 * (1.0 - 0.2 * k), 0.014)
        for side in (-1.0, 1.0):
            lateral = _quad((side * 0.22, y + 0.01), (side * 0.38, y - 0.02 * expr.au02), (side * 0.55, y + 0.03), 12)
            canvas.faint_stroke(lateral, p.skin, ink, depth * expr.au02 * (1.0 - 0.2 * k), 0.014)
    for side in (-1.0, 1.0):
        glabella = _quad((side * 0.05, s.brow_y - 0.04), (side * 0.06, s.brow_y + 0.04), (side * 0.045, s.brow_y + 0.11), 10)
        canvas.faint_stroke(glabella, p.skin, ink, depth * expr.au04, 0.016)


def _eye_curves(s: FaceShape, side: float, expr: _Expression,
                t: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x [N], upper lid y [N], lower lid y [N]) at t (-1 inner corner .. 1 outer corner; default 25 steps)."""
    if t is None:
        t = np.linspace(-1.0, 1.0, 25)
    x = side * (s.eye_x + t * s.eye_half_width)
    base = s.eye_y + (t + 1.0) / 2.0 * s.eye_tilt
    f_up = (1.0 - t ** 2) ** 0.75 * (1.0 - 0.12 * t)
    f_lo = (1.0 - t ** 2) ** 0.9 * (1.0 + 0.1 * t)
    upper_open = base - s.upper_lid * (1.0 + 0.8 * expr.au05) * f_up
    lower_open = base + s.lower_lid * (1.0 - 0.7 * expr.au06) * f_lo
    closed = base + 0.3 * s.lower_lid * f_lo
    upper = upper_open + (closed - upper_open) * expr.au45
    lower = lower_open + (closed - lower_open) * expr.au45
    return x, upper, lower


def _draw_eyes(canvas: _Canvas, identity: Identity, expr: _Expression) -> None:
    s, p = identity.shape, identity.palette
    lash = _mix(p.brow, (10.0, 8.0, 8.0), 0.6)
    for side in (-1.0, 1.0):
        x, upper, lower = _eye_curves(s, side, expr)
        upper_pts = np.stack([x, upper], axis=1)
        lower_pts = np.stack([x, lower], axis=1)
        canvas.fill(np.concatenate([upper_pts, lower_pts[::-1]]), p.sclera)
        r = s.iris_radius
        iris_c = (side * (s.eye_x + s.gaze * s.eye_half_width), s.eye_y + s.eye_tilt / 2 - 0.1 * s.upper_lid)
        canvas.fill(_ellipse(iris_c, (r, r)), p.iris)
        canvas.fill(_ellipse(iris_c, (0.45 * r, 0.45 * r)), (15.0, 12.0, 12.0))
        canvas.fill(_ellipse((iris_c[0] + 0.35 * r, iris_c[1] - 0.35 * r), (0.18 * r, 0.18 * r), n=16),
                    (250.0, 250.0, 250.0))
        # Skin over everything outside the lids clips the iris to the eye opening. It is plain skin so that
        # moving lids change only the opening, never the skin around it.
        reach = r + 0.06
        canvas.fill(np.concatenate([upper_pts, (upper_pts - [0, reach])[::-1]]), p.skin)
        canvas.fill(np.concatenate([lower_pts, (lower_pts + [0, reach])[::-1]]), p.skin)
        neutral_x, neutral_up, _ = _eye_curves(s, side, _Expression(*([0.0] * len(RENDERED_AUS))))
        crease = np.stack([neutral_x, neutral_up - 0.9 * s.upper_lid - 0.03], axis=1)[3:-3]
        canvas.stroke(crease, _mix(p.skin, _scale(p.skin, 0.6), 0.5), 0.012)
        canvas.stroke(lower_pts, _mix(p.skin, lash, 0.35), 0.01)
        canvas.stroke(upper_pts, lash, 0.024)
        _draw_cheek_lines(canvas, identity, expr, side, x, lower)


def _draw_cheek_lines(canvas: _Canvas, identity: Identity, expr: _Expression, side: float,
                      x: np.ndarray, lower: np.ndarray) -> None:
    s, p = identity.shape, identity.palette
    ink = _scale(p.skin, 0.58)
    depth = identity.wrinkle_depth
    outer = np.array([side * (s.eye_x + s.eye_half_width + 0.035), s.eye_y + s.eye_tilt])
    for angle in (-28.0, 0.0, 28.0):
        a = math.radians(angle)
        direction = np.array([side * math.cos(a), math.sin(a)])
        line = np.stack([outer + direction * 0.015, outer + direction * 0.085])
        canvas.faint_stroke(line, p.skin, ink, depth * expr.au06, 0.013)
    # The infraorbital fold: a faint arc under the eye that rises and deepens as the cheek lifts.
    t = np.linspace(-0.7, 1.0, 16)
    fold_x = side * (s.eye_x + t * s.eye_half_width)
    base = s.eye_y + s.lower_lid + 0.1 - 0.07 * expr.au06
    fold = np.stack([fold_x, base + 0.03 * (1.0 - t ** 2) + (t + 1) / 2 * s.eye_tilt], axis=1)
    canvas.faint_stroke(fold, p.skin, ink, 0.12 + depth * 0.6 * expr.au06, 0.014)


def _brow_line(s: FaceShape, side: float, expr: _Expression, n: int = 20) -> np.ndarray:
    """The brow's centre line [n, 2] from its inner to its outer end."""
    inner = (side * (s.brow_inner_x - 0.05 * expr.au04),
             s.brow_y - 0.13 * expr.au01 + 0.1 * expr.au04)
    peak = (side * (0.45 * s.brow_inner_x + 0.55 * s.brow_outer_x),
            s.brow_y - s.brow_arch - 0.05 * expr.au01 - 0.07 * expr.au02 + 0.07 * expr.au04)
    outer = (side * s.brow_outer_x, s.brow_y + s.brow_droop - 0.12 * expr.au02 + 0.04 * expr.au04)
    return _quad(inner, peak, outer, n)


def _draw_brows(canvas: _Canvas, identity: Identity, expr: _Expression) -> None:
    s, p = identity.shape, identity.palette
    for side in (-1.0, 1.0):
        line = _brow_line(s, side, expr)
        widths = s.brow_thickness * np.linspace(1.15, 0.45, len(line))
        canvas.fill(_band(line, widths), p.brow)


def _nose_lift(expr: _Expression) -> tuple[float, float]:
    """(upward shift of the nose wings, flare factor) for AU09."""
    return 0.035 * expr.au09, 1.0 + 0.2 * expr.au09


def _mouth_corner(s: FaceShape, expr: _Expression) -> tuple[float, float]:
    """(half width, y) of the mouth corners."""
    half_width = s.mouth_half_width * (1.0 + 0.16 * expr.au12 - 0.06 * expr.au15)
    y = s.mouth_y - 0.09 * expr.au12 + 0.075 * expr.au15 + 0.35 * expr.jaw_drop
    return half_width, y


def _nose_tip_y(s: FaceShape, expr: _Expression) -> float:
    """Centre height of the drawn nose tip (AU09 lifts it a little)."""
    return s.nose_tip_y - 0.4 * _nose_lift(expr)[0]


def _draw_nose(canvas: _Canvas, identity: Identity, expr: _Expression) -> None:
    s, p = identity.shape, identity.palette
    lift, flare = _nose_lift(expr)
    ink = _scale(p.skin, 0.55)
    depth = identity.wrinkle_depth
    # Nasolabial folds first: the nose wings and the lips are drawn over their ends.
    corner_w, corner_y = _mouth_corner(s, expr)
    fold_opacity = 0.12 + depth * (0.55 * expr.au12 + 0.45 * expr.au09)
    for side in (-1.0, 1.0):
        start = (side * (s.nose_half_width * flare + 0.03), s.nose_tip_y - lift)
        end = (side * (corner_w + 0.05), corner_y + 0.02)
        mid = (side * (0.5 * (start[0] * side + end[0] * side) + 0.06), 0.5 * (start[1] + end[1]))
        canvas.faint_stroke(_quad(start, mid, end, 16), p.skin, ink, fold_opacity, 0.016)
    light_side = 1.0 if math.cos(math.radians(identity.light_angle_deg)) < 0 else -1.0
    bridge = _quad((light_side * 0.07, s.eye_y + 0.08), (light_side * 0.08, 0.5 * (s.eye_y + s.nose_tip_y)),
                   (light_side * s.nose_half_width * 0.8, s.nose_tip_y - 0.07), 14)
    canvas.stroke(bridge, _mix(p.skin, ink, 0.3), 0.014)
    for k in range(3):
        y = s.eye_y + 0.1 + 0.045 * k
        wrinkle = _quad((-0.065, y + 0.01), (0.0, y - 0.012), (0.065, y + 0.01), 10)
        canvas.faint_stroke(wrinkle, p.skin, ink, depth * expr.au09 * (1.0 - 0.15 * k), 0.013)
    for side in (-1.0, 1.0):
        bunny = np.array([[side * 0.07, s.eye_y + 0.12], [side * 0.11, s.eye_y + 0.2]])
        canvas.faint_stroke(bunny, p.skin, ink, depth * expr.au09, 0.012)
    tip_y = _nose_tip_y(s, expr)
    canvas.fill(_ellipse((0.0, tip_y - 0.02), (s.nose_half_width * 0.55, 0.05)), _scale(p.skin, 1.04))
    for side in (-1.0, 1.0):
        wing_c = (side * s.nose_half_width * 0.78 * flare, s.nose_tip_y - lift - 0.005)
        canvas.stroke(_ellipse(wing_c, (0.05 * flare, 0.045), 0, -110 if side > 0 else 110,
                               100 if side > 0 else 290, 20), _mix(p.skin, ink, 0.6), 0.014)
        nostril_c = (side * s.nose_half_width * 0.48 * flare, s.nose_tip_y - lift + 0.012)
        canvas.fill(_ellipse(nostril_c, (0.034 * flare, 0.017), side * 15.0, n=20), _scale(p.skin, 0.42))


def _mouth_curves(s: FaceShape, expr: _Expression, q: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Lip curves at q (-1 left corner .. 1 right corner; default 31 steps): x and the four lip edges' y."""
    half_width, corner_y = _mouth_corner(s, expr)
    if q is None:
        q = np.linspace(-1.0, 1.0, 31)
    x = q * half_width
    bulge = 1.0 - q ** 2
    line = s.mouth_y + (corner_y - s.mouth_y) * q ** 2
    inner_up = line - 0.02 * expr.au25 * bulge
    inner_lo = line + (0.07 * expr.au25 + expr.jaw_drop) * bulge ** 0.8
    cupid = 1.0 - 0.3 * np.exp(-((x / 0.05) ** 2))
    outer_up = inner_up - s.upper_lip * (1.0 - 0.3 * expr.au12) * bulge ** 0.5 * cupid
    outer_lo = inner_lo + s.lower_lip * (1.0 - 0.25 * expr.au12) * bulge ** 0.6
    return {"q": q, "x": x, "inner_up": inner_up, "inner_lo": inner_lo, "outer_up": outer_up, "outer_lo": outer_lo}


def _draw_mouth(canvas: _Canvas, identity: Identity, expr: _Expression) -> None:
    s, p = identity.shape, identity.palette
    m = _mouth_curves(s, expr)
    x, q = m["x"], m["q"]
    neutral_lip_top = _mouth_curves(s, _Expression(*([0.0] * len(RENDERED_AUS))))["outer_up"][15]
    pts = {k: np.stack([x, m[k]], axis=1) for k in ("inner_up", "inner_lo", "outer_up", "outer_lo")}
    ink = _scale(p.skin, 0.6)
    for side in (-1.0, 1.0):
        philtrum = np.array([[side * 0.035, s.nose_tip_y + 0.05], [side * 0.045, neutral_lip_top - 0.005]])
        canvas.stroke(philtrum, _mix(p.skin, ink, 0.25), 0.012)
    canvas.fill(np.concatenate([pts["outer_up"], pts["outer_lo"][::-1]]), p.lips)
    canvas.fill(np.concatenate([pts["inner_up"], pts["inner_lo"][::-1]]), (70.0, 20.0, 28.0))
    teeth = (235.0, 232.0, 220.0)
    front = np.abs(q) <= 0.75
    teeth_lo = np.minimum(m["inner_up"] + s.teeth_height * (1.0 - q ** 2) ** 0.5, m["inner_lo"])
    canvas.fill(np.concatenate([pts["inner_up"][front], np.stack([x, teeth_lo], 1)[front][::-1]]), teeth)
    lower_teeth_h = 0.6 * s.teeth_height * min(1.0, 2.0 * expr.au26) * (1.0 - q ** 2) ** 0.5
    lower_top = np.maximum(m["inner_lo"] - lower_teeth_h, teeth_lo)
    front = np.abs(q) <= 0.6
    if expr.au26 > 0:
        canvas.fill(np.concatenate([np.stack([x, lower_top], 1)[front], pts["inner_lo"][front][::-1]]),
                    _scale(teeth, 0.92))
    lip_ink = _scale(p.lips, 0.5)
    canvas.stroke(pts["inner_up"], lip_ink, 0.014)
    canvas.stroke(pts["inner_lo"], _mix(p.lips, lip_ink, 0.6), 0.01)
    depth = identity.wrinkle_depth
    corner_w, corner_y = m["x"][-1], m["inner_up"][-1]
    for side in (-1.0, 1.0):
        c = np.array([side * corner_w, corner_y])
        dimple = _quad(c + [side * 0.02, -0.005], c + [side * 0.045, -0.03], c + [side * 0.05, -0.065], 10)
        canvas.faint_stroke(dimple, p.skin, ink, depth * expr.au12, 0.014)
        marionette = _quad(c + [side * 0.015, 0.015], c + [side * 0.03, 0.06], c + [side * 0.035, 0.11], 10)
        canvas.faint_stroke(marionette, p.skin, ink, depth * expr.au15, 0.014)
    chin_crease = _quad((-0.1, m["outer_lo"][15] + 0.09), (0.0, m["outer_lo"][15] + 0.07),
                        (0.1, m["outer_lo"][15] + 0.09), 12)
    canvas.stroke(chin_crease, _mix(p.skin, ink, 0.22), 0.014)


def _draw_hair_front(canvas: _Canvas, identity: Identity) -> None:
    p = identity.palette
    colour = _mix(p.skin, p.hair, 0.5) if identity.hair_style == "buzz" else p.hair
    canvas.fill(_hair_cap(identity), colour)
    if identity.hair_style in ("buzz",):
        return
    strand = _mix(p.hair, (0.0, 0.0, 0.0), 0.25)
    top = -identity.shape.top_half_height - 0.5 * identity.hair_volume
    for x0 in np.linspace(-0.7, 0.7, 6):
        start = (x0, float(_hairline(identity, np.array([x0]))[0]) - 0.04)
        canvas.stroke(_quad(start, (0.75 * x0, 0.5 * (start[1] + top)), (0.4 * x0, top + 0.12), 12), strand, 0.012)


def _apply_lighting(image: np.ndarray, identity: Identity) -> np.ndarray:
    n = image.shape[0]
    a = math.radians(identity.light_angle_deg)
    grid = (np.arange(n, dtype=np.float32) + 0.5) / n - 0.5
    # Brighter towards the light: gain runs 1 - strength .. 1 + strength across the image.
    gain = 1.0 - 2.0 * identity.light_strength * (grid[None, :] * math.cos(a) + grid[:, None] * math.sin(a))
    lit = image.astype(np.float32) * gain[..., None]
    return np.clip(np.round(lit), 0, 255).astype(np.uint8)


def render_face(identity: Identity, aus: np.ndarray, config: RenderConfig = RenderConfig()) -> np.ndarray:
    """RGB uint8 [S, S, 3] of `identity` showing `aus` ([17] in AU_NAMES order, 0..1).

    Only RENDERED_AUS move the face; the other entries are accepted and ignored. Pure function of
    (identity, aus, config): the same inputs give the same bytes.
    """
    expr = _Expression.from_vector(_check_aus(aus))
    canvas = _Canvas(identity, config)
    canvas.image[:] = _background(identity, config)
    _draw_back(canvas, identity, expr)
    canvas.fill(_face_outline(identity.shape, expr.jaw_drop), identity.palette.skin)
    _draw_forehead(canvas, identity, expr)
    _draw_eyes(canvas, identity, expr)
    _draw_brows(canvas, identity, expr)
    _draw_nose(canvas, identity, expr)
    _draw_mouth(canvas, identity, expr)
    _draw_hair_front(canvas, identity)
    small = cv2.resize(canvas.image, (config.image_size_px, config.image_size_px), interpolation=cv2.INTER_AREA)
    return _apply_lighting(small, identity)


# ---------------------------------------------------------------- landmarks

# Where the iBUG points sit on the drawn curves. Eyes: t = -1 inner corner .. 1 outer corner;
# lids at the thirds. Mouth: q = -1 image-left corner .. 1 image-right corner.
_EYE_T = np.array([1.0, 1.0 / 3.0, -1.0 / 3.0, -1.0])    # outer corner, upper lid (outer, inner), inner corner
_OUTER_LIP_Q = np.array([-1.0, -2.0 / 3.0, -1.0 / 3.0, 0.0, 1.0 / 3.0, 2.0 / 3.0, 1.0])   # points 48..54
_INNER_LIP_Q = np.array([-1.0, -0.5, 0.0, 0.5, 1.0])                                          # points 60..64


def _face_landmarks68(identity: Identity, expr: _Expression) -> np.ndarray:
    """The 68 iBUG 300-W points [68, 2] of the drawn face, in the face frame, from the drawing's own curves."""
    s = identity.shape
    out = np.empty((68, 2))
    # Jaw 0..16: the face outline from the image-left side at eye height, round the chin (8), to the right.
    reach = math.asin(min(0.99, -s.eye_y / s.top_half_height))
    out[0:17] = _face_outline(s, expr.jaw_drop, np.linspace(math.pi + reach, -reach, 17))
    # Brows 17..26: the drawn centre lines; image-left brow outer -> inner, image-right inner -> outer.
    out[17:22] = _brow_line(s, -1.0, expr, 5)[::-1]
    out[22:27] = _brow_line(s, 1.0, expr, 5)
    # Nose: bridge 27..30 from eye height to the tip; base 31..35 left wing, nostril, centre, nostril, wing.
    lift, flare = _nose_lift(expr)
    tip = _nose_tip_y(s, expr) - 0.02  # the drawn tip ellipse's centre
    out[27:31] = np.stack([np.zeros(4), np.linspace(s.eye_y, tip, 4)], axis=1)
    base_y = s.nose_tip_y - lift
    out[31:36] = [[-0.78 * s.nose_half_width * flare, base_y + 0.02], [-0.48 * s.nose_half_width * flare, base_y + 0.03],
                  [0.0, base_y + 0.035],
                  [0.48 * s.nose_half_width * flare, base_y + 0.03], [0.78 * s.nose_half_width * flare, base_y + 0.02]]
    # Eyes 36..47: corners and lids at the thirds of the drawn lid curves.
    for side, start in ((-1.0, 36), (1.0, 42)):
        x, upper, lower = _eye_curves(s, side, expr, _EYE_T)  # outer, upper outer, upper inner, inner
        if side < 0:   # image-left eye: outer corner, upper lid outer -> inner, inner corner, lower inner -> outer
            ring = [(x[0], upper[0]), (x[1], upper[1]), (x[2], upper[2]), (x[3], upper[3]),
                    (x[2], lower[2]), (x[1], lower[1])]
        else:          # image-right eye: inner corner, upper lid inner -> outer, outer corner, lower outer -> inner
            ring = [(x[3], upper[3]), (x[2], upper[2]), (x[1], upper[1]), (x[0], upper[0]),
                    (x[1], lower[1]), (x[2], lower[2])]
        out[start:start + 6] = ring
    # Mouth: outer 48..59 (corners 48, 54; upper lip left -> right, lower lip right -> left), inner 60..67.
    outer = _mouth_curves(s, expr, _OUTER_LIP_Q)
    out[48:55] = np.stack([outer["x"], outer["outer_up"]], axis=1)
    out[55:60] = np.stack([outer["x"], outer["outer_lo"]], axis=1)[5:0:-1]
    inner = _mouth_curves(s, expr, _INNER_LIP_Q)
    out[60:65] = np.stack([inner["x"], inner["inner_up"]], axis=1)
    out[65:68] = np.stack([inner["x"], inner["inner_lo"]], axis=1)[3:0:-1]
    return out


def render_landmarks68(identity: Identity, aus: np.ndarray, config: RenderConfig = RenderConfig()) -> np.ndarray:
    """The exact 68 iBUG 300-W points (OpenFace's order) of render_face(identity, aus, config):
    float32 [68, 2] x, y in output pixels (pixel centres), computed from the same curves it draws.

    Jaw 0-16 (the outline), brows 17-26 (centre lines), nose 27-35, eyes 36-47 (lid edges), lips 48-67
    (lip edges; the drawn lips meet at the corners, so 48/60 and 54/64 coincide). They move with the
    rendered AUs: brows with AU01/02/04, lids with AU05/AU06/AU45, nose base with AU09, mouth corners
    with AU12/15, lips and jaw with AU25/26.
    """
    expr = _Expression.from_vector(_check_aus(aus))
    canvas = _Canvas(identity, RenderConfig(config.image_size_px, 1, config.face_scale_frac, config.eye_y_frac))
    points = _face_landmarks68(identity, expr) @ canvas.matrix.T + canvas.offset
    # Drawing at supersample k then area-downsampling shifts coordinates by (k - 1) / (2k) pixels.
    return (points - (config.supersample - 1) / (2 * config.supersample)).astype(np.float32)


# ---------------------------------------------------------------- regions


def _region_boxes(identity: Identity) -> dict[str, tuple[float, float, float, float]]:
    """Face-frame boxes (x0, y0, x1, y1) that contain every pixel an AU of that region can move."""
    s = identity.shape
    eye_outer = s.eye_x + s.eye_half_width
    mouth_w = s.mouth_half_width * 1.16 + 0.1
    return {
        "brows": (-s.brow_outer_x - 0.08, s.brow_y - 0.5, s.brow_outer_x + 0.08, s.brow_y + 0.2),
        "eyes": (-eye_outer - 0.13, s.eye_y - 1.8 * s.upper_lid - 0.05,
                 eye_outer + 0.13, s.eye_y + s.lower_lid + 0.19),
        "nose": (-s.nose_half_width * 1.2 - 0.1, s.eye_y + 0.06, s.nose_half_width * 1.2 + 0.1, s.nose_tip_y + 0.08),
        "cheeks": (-mouth_w - 0.2, s.eye_y + 0.03, mouth_w + 0.2, s.mouth_y + 0.1),
        "mouth": (-mouth_w - 0.06, s.mouth_y - 0.2, mouth_w + 0.06, s.mouth_y + 0.4),
        "jaw": (-1.05, s.mouth_y - 0.1, 1.05, s.bottom_half_height + 0.4),
    }


def au_region_masks(identity: Identity, config: RenderConfig = RenderConfig()) -> dict[str, np.ndarray]:
    """Boolean masks [S, S] of each face region in output pixels (a pixel-rounded box, rotated with the face)."""
    n = config.image_size_px
    # The same face-frame transform as render_face, at output resolution (supersample 1).
    canvas = _Canvas(identity, RenderConfig(n, 1, config.face_scale_frac, config.eye_y_frac))
    masks = {}
    for name, (x0, y0, x1, y1) in _region_boxes(identity).items():
        corners = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])
        # Drawing at supersample k then area-downsampling shifts coordinates by (k - 1) / (2k) pixels.
        px = corners @ canvas.matrix.T + canvas.offset - (config.supersample - 1) / (2 * config.supersample)
        mask = np.zeros((n, n), np.uint8)
        cv2.fillPoly(mask, [np.round(px).astype(np.int32)], 1)
        masks[name] = mask.astype(bool)
    return masks


def au_mask(au_names: tuple[str, ...] | list[str], identity: Identity, config: RenderConfig = RenderConfig()) -> np.ndarray:
    """Pixels [S, S] that the given AUs can change (union of their regions)."""
    unknown = [a for a in au_names if a not in AU_REGIONS]
    if unknown:
        raise ValueError(f"not rendered AUs {unknown}; rendered: {RENDERED_AUS}")
    masks = au_region_masks(identity, config)
    out = np.zeros((config.image_size_px, config.image_size_px), bool)
    for name in au_names:
        for region in AU_REGIONS[name]:
            out |= masks[region]
    return out


# ---------------------------------------------------------------- random expressions


# Pairs that cancel or hide each other (closed eyes hide the upper-lid raise; corners cannot go up and down):
# random_aus keeps only the stronger of each pair so every AU it sets is visible in the image.
_EXCLUSIVE_PAIRS: tuple[tuple[str, str], ...] = (("AU05", "AU45"), ("AU12", "AU15"))


def random_aus(
    rng: np.random.Generator,
    *,
    active_prob: float = 0.3,
    prototype_prob: float = 0.35,
    au_names: tuple[str, ...] = RENDERED_AUS,
) -> np.ndarray:
    """A plausible random AU vector [17] (0..1), zero outside au_names.

    With probability prototype_prob a jittered emotion prototype (intensity 0.2..0.9), otherwise each AU
    independently active with probability active_prob at intensity U(0.1, 1).
    """
    unknown = [a for a in au_names if a not in AU_INDEX]
    if unknown:
        raise ValueError(f"unknown AU name(s) {unknown}")
    if not (0.0 <= active_prob <= 1.0 and 0.0 <= prototype_prob <= 1.0):
        raise ValueError(f"active_prob={active_prob}, prototype_prob={prototype_prob}: must be in 0..1")
    idx = np.array([AU_INDEX[a] for a in au_names], dtype=np.int64)
    if rng.random() < prototype_prob:
        emotion = int(rng.integers(1, len(EMOTIONS) + 1))
        aus = prototype_vector(emotion, rng, intensity_range=(0.2, 0.9), jitter=0.1, au_names=au_names)
    else:
        aus = np.zeros(N_AUS, np.float64)
        active = rng.random(len(idx)) < active_prob
        values = rng.uniform(0.1, 1.0, len(idx))
        aus[idx[active]] = values[active]
    for a, b in _EXCLUSIVE_PAIRS:
        ia, ib = AU_INDEX[a], AU_INDEX[b]
        if aus[ia] > 0 and aus[ib] > 0:
            aus[ib if aus[ia] >= aus[ib] else ia] = 0.0
    return aus


# ---------------------------------------------------------------- dataset writer


@dataclass
class SyntheticDataset:
    """What write_synthetic_dataset wrote: ingest images_root with the given layout, AUs from openface_dir."""

    images_root: Path
    openface_dir: Path
    ground_truth_csv: Path
    layout: str
    n_images: int
    identities: dict[str, list[int]]                                       # split -> identity seeds
    counts: dict[str, dict[str, int]] = field(default_factory=dict)        # split -> emotion name -> images


def identity_seed(dataset_seed: int, index: int) -> int:
    """Seed of the index-th identity of a synthetic dataset."""
    return int(stable_hash(["synthetic-identity", int(dataset_seed), int(index)], 12), 16)


def _face_aus(rng: np.random.Generator, au_mode: str) -> tuple[np.ndarray, int]:
    """(AUs [17], label) of one face: an emotion prototype over the rendered AUs, or random AUs."""
    if au_mode == "emotion":
        label = int(rng.integers(1, len(EMOTIONS) + 1))
        return prototype_vector(label, rng, au_names=RENDERED_AUS), label
    aus = random_aus(rng)
    return aus, nearest_emotion(aus, RENDERED_AUS)


def _save_rgb(path: Path, image: np.ndarray) -> None:
    """PNG (lossless) or, for the RAF-DB layout, JPEG at quality 95 as RAF-DB ships."""
    path.parent.mkdir(parents=True, exist_ok=True)
    params = [cv2.IMWRITE_JPEG_QUALITY, 95] if path.suffix == ".jpg" else []
    if not cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR), params):
        raise OSError(f"could not write {path}")


def write_synthetic_dataset(
    root: str | os.PathLike,
    n_identities: int,
    per_identity: int,
    seed: int,
    config: RenderConfig = RenderConfig(),
    layout: Literal["folders", "rafdb"] = "folders",
    *,
    test_fraction: float = 0.25,
    au_mode: Literal["emotion", "random"] = "emotion",
    openface_variant: str = "landmark_img",
) -> SyntheticDataset:
    """Render a labelled dataset with OpenFace-format AU CSVs (exact AUs x 5) that goes through the real ingest.

    root/images/: layout "folders" = <split>/<Emotion>/<name>.png; "rafdb" = RAF-DB basic
        (EmoLabel/list_patition_label.txt + Image/aligned/<name>_aligned.jpg, JPEG as RAF-DB ships).
    root/openface/<image stem>.csv: one OpenFace row per image (the exact AUs x 5 and the face's exact 68
        landmarks, render_landmarks68, in x_0..x_67, y_0..y_67).
    root/ground_truth.csv: name, split, identity_seed, label, the 17 AUs (0..1).
    The last round(test_fraction * n_identities) identities are test only: no identity is in both splits.
    au_mode "emotion": each face shows a jittered EMFACS prototype (over RENDERED_AUS), labelled by it;
    "random": random_aus, labelled by the nearest prototype.
    """
    from tasks.openface import OpenFaceRow, write_openface_csv

    if n_identities < 2 or per_identity < 1:
        raise ValueError(f"need n_identities >= 2 (train and test) and per_identity >= 1, got {n_identities}, {per_identity}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction={test_fraction}: must be in (0, 1)")
    if layout not in ("folders", "rafdb"):
        raise ValueError(f"layout={layout!r}: must be 'folders' or 'rafdb'")
    if au_mode not in ("emotion", "random"):
        raise ValueError(f"au_mode={au_mode!r}: must be 'emotion' or 'random'")
    root = Path(root)
    images_root, openface_dir = root / "images", root / "openface"
    if images_root.exists() and any(images_root.iterdir()):
        raise FileExistsError(f"{images_root} is not empty; synthetic datasets are written once")
    n_test = min(n_identities - 1, max(1, round(test_fraction * n_identities)))
    split_of = ["train"] * (n_identities - n_test) + ["test"] * n_test
    counters = {"train": 0, "test": 0}
    counts: dict[str, Counter] = {"train": Counter(), "test": Counter()}
    identities: dict[str, list[int]] = {"train": [], "test": []}
    truth_lines = ["name,split,identity_seed,label," + ",".join(AU_NAMES)]
    rafdb_lines: list[str] = []
    for i in range(n_identities):
        split = split_of[i]
        id_seed = identity_seed(seed, i)
        identities[split].append(id_seed)
        identity = random_identity(id_seed)
        for k in range(per_identity):
            rng = np.random.default_rng(int(stable_hash(["synthetic-face", int(seed), i, k], 15), 16))
            aus, label = _face_aus(rng, au_mode)
            counters[split] += 1
            if layout == "folders":
                path = images_root / split / EMOTIONS[label] / f"{split}_id{i:05d}_{k:03d}.png"
            else:
                name = f"{split}_{counters[split]:0{5 if split == 'train' else 4}d}"  # RAF-DB's digit counts
                path = images_root / "Image" / "aligned" / f"{name}_aligned.jpg"
                rafdb_lines.append(f"{name}.jpg {label}")
            _save_rgb(path, render_face(identity, aus, config))
            write_openface_csv(openface_dir / f"{path.stem}.csv",
                               [OpenFaceRow(aus=aus * AU_INTENSITY_MAX,
                                            landmarks68=render_landmarks68(identity, aus, config))],
                               variant=openface_variant)
            truth_lines.append(f"{path.stem},{split},{id_seed},{label}," + ",".join(repr(float(v)) for v in aus))
            counts[split][EMOTIONS[label]] += 1
    if layout == "rafdb":
        # RAF-DB lists every train line before the first test line.
        rafdb_lines.sort(key=lambda line: (not line.startswith("train_"), line))
        label_file = images_root / "EmoLabel" / "list_patition_label.txt"
        label_file.parent.mkdir(parents=True, exist_ok=True)
        label_file.write_text("\n".join(rafdb_lines) + "\n")
    truth_csv = root / "ground_truth.csv"
    truth_csv.write_text("\n".join(truth_lines) + "\n")
    return SyntheticDataset(
        images_root=images_root, openface_dir=openface_dir, ground_truth_csv=truth_csv, layout=layout,
        n_images=counters["train"] + counters["test"], identities=identities,
        counts={split: dict(sorted(c.items())) for split, c in counts.items()},
    )
