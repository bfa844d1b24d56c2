"""The landmark-driven AU editor: move the 68 points the way the target AUs move them and warp the crop to match."""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from scipy.spatial import Delaunay

from models.au_shape import INNER_LIPS, LEFT_EYE, ORDERED_PAIRS, OUTER_LIPS, RIGHT_EYE, AUShapeModel, face_frame
from tasks.errors import RejectError
from tasks.landmarks import check_landmarks

STAGE = "warp"
# Bumped when the same landmarks and AUs give other pixels, so model_versions and sample ids tell outputs of
# different revisions apart. 2: a newly opened mouth is painted by its true area (1: OpenCV's anti-aliased
# polygon fill, which drew a dark rim round every opening and a bar across slightly parted lips). 3: a closing
# eye is drawn as a lid sliding over a still eyeball (lid skin and a lash line painted over the covered part)
# instead of the eye's own pixels squeezed into the smaller opening. 4: brows move as a whole (mesh points above and
# below each moving brow point), so a raised brow no longer comes out thicker. 5: the lowered lid takes the colour of
# the skin just above it, column by column, and also covers the lashes just above the old lid line (4 painted one
# flat colour, which left a pale strip inside dark sockets). 6: a narrowed eye's blink closes between its lids. 7: an
# upper lid that goes up uncovers a still eyeball (sclera, iris, pupil painted) instead of stretching lid skin
# into the opening, and the opening eye's own triangles are not held to the fold check (their inside is painted).
# 8: the lash line at a moved lid's new edge is drawn opaque (3-7 blended a fifth of the lid skin into it). 9: the
# forehead above the brows stays still (a moved brow dragged the hairline and temples along). 10: a mouth that is
# already open opens as a jaw does: the upper teeth stay under the upper lip at their own height, the rest goes down
# with the lower lip, and the gap between is painted cavity (9 stretched the source's open mouth, teeth and all,
# over the whole new opening and painted only its rim). 11: inner lips the detector crossed by a little (pressed
# lips) are settled to meet before the edit (10 moved the lower lip through the upper one: folds, refusals).
WARP_REVISION = 11

# Anchors every this many px along the crop border hold the frame in place (zero displacement).
_BORDER_ANCHOR_STEP_FRACTION = 1.0 / 8.0
# Target points closer than this (px) to a point kept earlier are left out of the triangulation (a lip corner on
# top of the other); lids and lips that meet are kept this far apart instead, so each side keeps its own skin.
_MIN_VERTEX_GAP_PX = 0.3
# Displacements below this (px) are set to exactly zero, so pixels away from the moved features keep their
# exact values (bilinear sampling at integer positions returns the pixel itself).
_ZERO_DISPLACEMENT_PX = 0.02


@dataclass(frozen=True)
class WarpConfig:
    """How the dense warp is built.

    smooth_iod:     Gaussian sigma, in inter-ocular distances, that softens the creases of the piecewise-affine
                    warp along triangle edges (0 = none); kept only where the smoothed warp still does not fold.
    min_jacobian:   every triangle's area ratio (source / target) must stay above this outside the newly opened
                    mouth (positive = no fold); otherwise the edit is scaled back until it does.
    fraction_steps: bisection steps when scaling back (the achieved fraction is recorded).
    min_fraction:   below this achieved fraction the edit is rejected (warp_folds) rather than kept.
    fill_mouth:     paint the newly exposed mouth interior (dark, shaded toward the corners, upper teeth)
                    instead of stretching lip skin into it; a mouth already open keeps its upper teeth under the
                    upper lip at their height and what lies below them on the lower lip, with cavity between.
    close_lids:     an upper lid that comes down slides over the eye: the part of the eye it still leaves open is
                    kept in place (not squeezed), and the part it covers (plus a margin fading out above the old
                    lid line, where the old lashes were) is painted column by column with the skin just above
                    the lid, with the lash line at its new edge.
    open_lids:      an upper lid that goes up uncovers a still eyeball: the eyeball the source showed stays in
                    place and what the lid uncovers (with the old lash line) is painted as sclera, iris and pupil
                    (colours from the source's own eye when it shows one, else defaults), not stretched lid skin.
    brow_band:      brows move as a whole (mesh points above and below each brow point move with it), so a
                    raised or lowered brow keeps its thickness.
    still_forehead_iod: a still mesh point this many inter-ocular distances above each brow point (and one beside
                    each brow's outer end): the skin between brow and forehead stretches or bunches, the hairline
                    and temples stay (0 = off, as revisions 1-8, where a moved brow dragged the forehead along).
    """

    smooth_iod: float = 0.04
    min_jacobian: float = 0.05
    fraction_steps: int = 6
    min_fraction: float = 0.5
    fill_mouth: bool = True
    close_lids: bool = True
    open_lids: bool = True
    brow_band: bool = True
    still_forehead_iod: float = 0.4

    def __post_init__(self) -> None:
        if not 0.0 <= self.smooth_iod <= 0.5:
            raise ValueError(f"smooth_iod must be in [0, 0.5], got {self.smooth_iod}")
        if not 0.0 < self.min_jacobian < 1.0:
            raise ValueError(f"min_jacobian must be in (0, 1), got {self.min_jacobian}")
        if self.fraction_steps < 0:
            raise ValueError(f"fraction_steps must be >= 0, got {self.fraction_steps}")
        if not 0.0 <= self.min_fraction <= 1.0:
            raise ValueError(f"min_fraction must be in [0, 1], got {self.min_fraction}")
        if self.still_forehead_iod != 0.0 and not 0.3 <= self.still_forehead_iod <= 2.0:
            raise ValueError(f"still_forehead_iod must be 0 (off) or in [0.3, 2], got {self.still_forehead_iod}")


@dataclass
class WarpResult:
    image: np.ndarray        # uint8 [S, S, 3]
    landmarks: np.ndarray    # float32 [68, 2]: where the points are in the edited image
    fraction: float          # share of the planned landmark motion achieved (1 = all of it)
    min_jacobian: float      # smallest det(Jacobian) of the warp outside the filled mouth and eyes (> 0: no fold)
    mouth_filled_px: float   # area painted as mouth interior (px)
    lid_painted_px: float = 0.0   # area of the eyes painted as lid skin where an upper lid came down (px)
    eye_painted_px: float = 0.0   # area painted as eyeball where an upper lid went up (px)


def border_anchors(size_px: int, outside_px: float = 0.0) -> np.ndarray:
    """Points on a square ring [K, 2] that the warp keeps fixed: the crop border, pushed outside_px beyond it (room
    for a point that moves out of the frame, e.g. a dropped chin in a tight crop)."""
    step = max(1.0, size_px * _BORDER_ANCHOR_STEP_FRACTION)
    lo, hi = -0.5 - outside_px, size_px - 0.5 + outside_px   # pixel-centre coordinates: the crop spans -0.5 .. S - 0.5
    ticks = np.unique(np.append(np.arange(lo, hi, step), hi))
    ring = [(t, lo) for t in ticks] + [(t, hi) for t in ticks] + [(lo, t) for t in ticks] + [(hi, t) for t in ticks]
    ring += [(lo, lo), (hi, lo), (lo, hi), (hi, hi)]
    return np.unique(np.asarray(ring, np.float64), axis=0)


_LID_PAIRS = frozenset(ORDERED_PAIRS[:4])
# Lips that touch are given this much of a seam in the source and the target, so the triangles that span them
# have an area on both sides and a mouth that opens maps a thin source band onto the opening (painted over).
_LIP_SEAM_PX = 1.0
# A pair crossed by more than this in the source (detector noise) is left as it is, in source and target alike.
_CROSSED_PX = 0.5


def _open_seams(points: np.ndarray, source: np.ndarray) -> np.ndarray:
    """Lids / lips that meet are kept a seam apart (upper above), so the triangulation keeps an (empty) seam
    between them and each side warps its own skin; pairs the source already has crossed are not touched."""
    out = points.copy()
    for upper, lower in ORDERED_PAIRS:
        if source[upper, 1] > source[lower, 1] + _CROSSED_PX:
            continue
        seam = _MIN_VERTEX_GAP_PX if (upper, lower) in _LID_PAIRS else _LIP_SEAM_PX
        if out[lower, 1] - out[upper, 1] < seam:
            mid = 0.5 * (out[upper, 1] + out[lower, 1])
            out[upper, 1], out[lower, 1] = mid - 0.5 * seam, mid + 0.5 * seam
    return out


# Brows move as a whole: each brow point that moves carries a point above and below it (along the face's
# vertical) with the same motion, so the skin stretches or bunches between the brow and the eye or forehead, not
# across the brow (a brow moved by its bare points came out thicker when raised, thinner when lowered, and the
# detector saw a quarter of a frown's drawing together).
_BROW_BAND_IOD = (0.05, 0.07)   # above, below the brow points (the 68-point brow lies along the brow's top half)
# ... but the point below takes at most this share of the room between the brow and the nearest other landmark (eye,
# nose root, jaw), in the source and the target, so a brow lowered onto a deep-set eye leaves the skin room to bunch.
_BROW_BAND_ROOM = 0.35
BROWS = tuple(range(17, 27))
# A still forehead point is kept only while the brow's target, with the band above it, stays this far below it.
_STILL_MARGIN_IOD = 0.1
_TEMPLE_IOD = 0.3   # still temple points: this far out from each brow's outer end, along the eyes' axis
# The forehead points take this share of their brow point's motion along the eyes' axis (none of the vertical): a
# frown's brows drawn together pull the skin above them part of the way (0 cost real-face AU04 3 of 120 faces).
_FOREHEAD_FOLLOW_X = 0.5
_NOT_BROWS = tuple(i for i in range(68) if not 17 <= i <= 26)


def _brow_band(src: np.ndarray, dst: np.ndarray, size_px: int) -> tuple[np.ndarray, np.ndarray]:
    """Extra mesh vertices [<= 20, 2] (source, target) above and below each brow point that moves, moving with it
    (those that would leave the crop are left out)."""
    frame = face_frame(src)
    up = -frame.y_axis
    above, below = _BROW_BAND_IOD
    brows = list(BROWS)

    def room(points: np.ndarray) -> np.ndarray:   # [10] px from each brow point to the nearest other landmark
        return np.hypot(*(points[brows][:, None, :] - points[list(_NOT_BROWS)][None, :, :]).transpose(2, 0, 1)).min(1)

    down = np.minimum(below * frame.iod_px, _BROW_BAND_ROOM * np.minimum(room(src), room(dst)))
    offsets = np.concatenate([np.tile(above * frame.iod_px * up, (len(brows), 1)), -down[:, None] * up[None, :]])
    band_src, band_dst = src[brows * 2] + offsets, dst[brows * 2] + offsets
    inside = np.all((band_src > 0.5) & (band_src < size_px - 1.5) & (band_dst > 0.5) & (band_dst < size_px - 1.5), axis=1)
    moving = np.tile(np.hypot(*(dst[brows] - src[brows]).T) > _ZERO_DISPLACEMENT_PX, 2)   # a still brow adds nothing
    return band_src[inside & moving], band_dst[inside & moving]


@dataclass
class _Mesh:
    """A triangulation of the target points with the source position of every vertex."""

    tri: Delaunay
    src: np.ndarray          # [V, 2] where each vertex comes from
    dst: np.ndarray          # [V, 2] where each vertex goes
    hidden: np.ndarray       # [T] bool: triangles of the mouth interior (filled, not checked for folds)
    area_ratio: np.ndarray   # [T] signed source area / target area (the affine map's Jacobian determinant)
    area_dst: np.ndarray     # [T] signed target area (px^2)


def _opening_eyes(src: np.ndarray, dst: np.ndarray) -> list[list[int]]:
    """The eyes [6 point indices each] whose upper lid goes up far enough for _open_lids to paint them."""
    return [list(eye) for lid, eye in _UPPER_LIDS
            if float(np.mean(src[list(lid[1:3]), 1] - dst[list(lid[1:3]), 1])) >= _LID_DOWN_MIN_PX]


def _still_forehead(src: np.ndarray, dst: np.ndarray, size_px: int,
                    above_iod: float) -> tuple[np.ndarray, np.ndarray]:
    """Mesh vertices [<= 12, 2] (source, target) where the forehead and temples stay while the brows move: one
    above_iod above each brow point (along the face's vertical; it keeps none of the brow's vertical motion and
    _FOREHEAD_FOLLOW_X of its motion along the eyes) and a fixed one _TEMPLE_IOD out from each brow's outer end, so
    the hairline and the sides of the head do not follow the brows (without them the triangles from a moved brow
    to the crop border dragged the forehead along). A forehead point the brow's target (with its band) would come
    within _STILL_MARGIN_IOD of is left out, as is a temple point that close to any target point, or one off the
    crop."""
    if above_iod <= 0:
        return np.zeros((0, 2)), np.zeros((0, 2))
    frame = face_frame(src)
    up, brows = -frame.y_axis, list(BROWS)
    margin = _STILL_MARGIN_IOD * frame.iod_px
    forehead = src[brows] + above_iod * frame.iod_px * up
    keep_forehead = (forehead - dst[brows]) @ up >= _BROW_BAND_IOD[0] * frame.iod_px + margin
    temples = np.stack([src[BROWS[0]] - _TEMPLE_IOD * frame.iod_px * frame.x_axis,
                        src[BROWS[-1]] + _TEMPLE_IOD * frame.iod_px * frame.x_axis])
    keep_temples = np.hypot(*(temples[:, None, :] - dst[None, :, :]).transpose(2, 0, 1)).min(1) >= margin
    shift = _FOREHEAD_FOLLOW_X * ((dst[brows] - src[brows]) @ frame.x_axis)[:, None] * frame.x_axis[None, :]
    points_src = np.concatenate([forehead[keep_forehead], temples[keep_temples]])
    points_dst = np.concatenate([(forehead + shift)[keep_forehead], temples[keep_temples]])
    on_crop = np.all((np.minimum(points_src, points_dst) > 0.5) & (np.maximum(points_src, points_dst) < size_px - 1.5),
                     axis=1)
    return points_src[on_crop], points_dst[on_crop]


def _mesh(src: np.ndarray, dst: np.ndarray, size_px: int, brow_band: bool = True,
          painted_eyes: tuple[list[int], ...] = (), still_forehead_iod: float = 0.0) -> _Mesh:
    beyond = max(0.0, float(-np.min(dst) - 0.5), float(np.max(dst) - (size_px - 0.5)))
    anchors = border_anchors(size_px, outside_px=2.0 + 2.0 * beyond if beyond > 0 else 0.0)
    src, dst = _open_seams(src, src), _open_seams(dst, src)
    # Points that land on top of an earlier one (closer than the gap) carry no extra information: leave them out.
    close = np.hypot(*(dst[:, None, :] - dst[None, :, :]).transpose(2, 0, 1)) < _MIN_VERTEX_GAP_PX * 0.5
    keep = [i for i in range(len(dst)) if not close[i, :i].any()]
    band_src, band_dst = _brow_band(src, dst, size_px) if brow_band else (np.zeros((0, 2)), np.zeros((0, 2)))
    still_src, still_dst = _still_forehead(src, dst, size_px, still_forehead_iod)
    vertices_dst = np.concatenate([dst[keep], band_dst, still_dst, anchors])
    vertices_src = np.concatenate([src[keep], band_src, still_src, anchors])
    tri = Delaunay(vertices_dst)
    simplices = tri.simplices
    inner = np.zeros(len(vertices_dst), bool)
    inner[[k for k, i in enumerate(keep) if i in INNER_LIPS]] = True
    hidden = inner[simplices].all(axis=1)
    for eye in painted_eyes:   # an opening eye's interior is painted (_open_lids), so its triangles may stretch
        in_eye = np.zeros(len(vertices_dst), bool)
        in_eye[[k for k, i in enumerate(keep) if i in eye]] = True
        hidden |= in_eye[simplices].all(axis=1)

    def signed_area(v: np.ndarray) -> np.ndarray:
        a, b, c = v[simplices[:, 0]], v[simplices[:, 1]], v[simplices[:, 2]]
        return 0.5 * ((b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0]))

    area_dst = signed_area(vertices_dst)
    area_src = signed_area(vertices_src)
    ratio = np.where(np.abs(area_dst) > 1e-12, area_src / np.where(np.abs(area_dst) > 1e-12, area_dst, 1.0), 1.0)
    return _Mesh(tri, vertices_src, vertices_dst, hidden, ratio, area_dst)


def _worst_ratio(mesh: _Mesh) -> float:
    """Smallest source/target area ratio over the triangles that are checked (> 0 everywhere: no fold).
    Slivers thinner than half a pixel in the target (the seam kept between lips or lids that meet) are not
    judged: they hold at most a row of pixel centres, sampled from the seam itself."""
    a = mesh.dst[mesh.tri.simplices]                                          # [T, 3, 2]
    edges = a - np.roll(a, 1, axis=1)                                         # [T, 3, 2]
    longest = np.hypot(edges[..., 0], edges[..., 1]).max(axis=1)             # [T]
    judged = ~mesh.hidden & (2.0 * np.abs(mesh.area_dst) / np.maximum(longest, 1e-9) > 0.5)
    return float(mesh.area_ratio[judged].min()) if judged.any() else 1.0


def _mesh_field(mesh: _Mesh, size_px: int) -> np.ndarray:
    """The piecewise-affine backward displacement u [S, S, 2]: output pixel x samples the input at x + u(x).

    Each triangle with a moving corner is rasterised (its index into a label image) and its affine map applied to
    its pixels; pixels of still triangles keep u = 0 exactly."""
    simplices = mesh.tri.simplices
    moving = np.hypot(*(mesh.src - mesh.dst).T) > 1e-9
    active = np.flatnonzero(moving[simplices].any(axis=1))
    field = np.zeros((size_px, size_px, 2), np.float64)
    if active.size == 0:
        return field
    labels = np.full((size_px, size_px), -1, np.int32)
    shift = 4
    for k in active:
        corners = np.round(mesh.dst[simplices[k]] * (1 << shift)).astype(np.int32)
        cv2.fillConvexPoly(labels, corners, int(k), lineType=cv2.LINE_8, shift=shift)
    # Affine map of each active triangle, target -> source: [x_s, y_s] = M @ [x, y, 1], M = S inv(D).
    corners_dst = np.concatenate([mesh.dst[simplices[active]], np.ones((active.size, 3, 1))], axis=2)  # [A, 3, 3]
    corners_src = mesh.src[simplices[active]]                                                           # [A, 3, 2]
    maps = np.zeros((len(simplices), 2, 3))
    maps[active] = np.einsum("akd,akj->adj", corners_src, np.linalg.pinv(corners_dst).transpose(0, 2, 1))
    ys, xs = np.nonzero(labels >= 0)
    m = maps[labels[ys, xs]]                                                   # [P, 2, 3]
    source = m[:, :, 0] * xs[:, None] + m[:, :, 1] * ys[:, None] + m[:, :, 2]
    field[ys, xs] = source - np.stack([xs, ys], axis=1)
    return field


def jacobian_det(field: np.ndarray) -> np.ndarray:
    """det of d(x + u(x))/dx on the pixel grid [S, S] (central differences)."""
    dux_dy, dux_dx = np.gradient(field[..., 0])
    duy_dy, duy_dx = np.gradient(field[..., 1])
    return (1.0 + dux_dx) * (1.0 + duy_dy) - dux_dy * duy_dx


def _polygon_area(points: np.ndarray) -> float:
    x, y = np.asarray(points, np.float64).T
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def polygon_mask(points: np.ndarray, size_px: int, samples: int = 4) -> np.ndarray:
    """Area coverage [S, S] float in 0..1 of a filled polygon (sub-pixel vertices, pixel centres at integers).

    Each pixel inside the polygon's bounding box is sampled on a samples x samples grid (even-odd rule), so the
    mask sums to the polygon's area within a sample's size even for a sliver a fraction of a pixel thin (a
    line-anti-aliased fill paints a pixel-wide band there: a 0.2 px opening came out 9x its area)."""
    points = np.asarray(points, np.float64)
    mask = np.zeros((size_px, size_px), np.float32)
    lo = np.clip(np.floor(points.min(axis=0) + 0.5).astype(int), 0, size_px - 1)
    hi = np.clip(np.ceil(points.max(axis=0) - 0.5).astype(int), 0, size_px - 1)
    if np.any(hi < lo):
        return mask
    offsets = (np.arange(samples) + 0.5) / samples - 0.5
    xs = (np.arange(lo[0], hi[0] + 1)[:, None] + offsets[None, :]).ravel()   # [W * k]
    ys = (np.arange(lo[1], hi[1] + 1)[:, None] + offsets[None, :]).ravel()   # [H * k]
    px, py = np.meshgrid(xs, ys)                                             # [H * k, W * k]
    inside = np.zeros(px.shape, bool)
    for (ax, ay), (bx, by) in zip(points, np.roll(points, -1, axis=0)):
        crosses = (ay > py) != (by > py)
        if not crosses.any():
            continue
        x_at = ax + (py - ay) * (bx - ax) / np.where(by != ay, by - ay, 1.0)
        inside ^= crosses & (px < x_at)
    h, w = hi[1] - lo[1] + 1, hi[0] - lo[0] + 1
    mask[lo[1]:hi[1] + 1, lo[0]:hi[0] + 1] = inside.reshape(h, samples, w, samples).mean(axis=(1, 3))
    return mask


def _sample(image: np.ndarray, field: np.ndarray) -> np.ndarray:
    size = image.shape[0]
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    still = np.hypot(field[..., 0], field[..., 1]) < _ZERO_DISPLACEMENT_PX
    map_x = np.where(still, xs, xs + field[..., 0].astype(np.float32))
    map_y = np.where(still, ys, ys + field[..., 1].astype(np.float32))
    return cv2.remap(image, map_x, map_y, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)


_UPPER_INNER = (60, 61, 62, 63, 64)   # the inner lip lines, corner to corner
_LOWER_INNER = (60, 67, 66, 65, 64)


def _line_y(points: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """The height at each x of the line through points [K, 2] (a lid, a lip): piecewise linear, held flat beyond
    its ends."""
    order = np.argsort(points[:, 0])
    return np.interp(xs, points[order, 0], points[order, 1])


def _lip_colour(image: np.ndarray, src: np.ndarray) -> np.ndarray:
    """Mean RGB [3] of the source's lips (between the outer and the inner lip line); the image's median where
    the lips cover no area."""
    size = image.shape[0]
    lips = polygon_mask(src[list(OUTER_LIPS)], size) * (1.0 - polygon_mask(src[list(INNER_LIPS)], size))
    weight = lips.sum()
    if weight > 1:
        return (image.reshape(-1, 3).astype(np.float64) * lips.reshape(-1, 1)).sum(0) / weight
    return np.median(image.reshape(-1, 3), axis=0).astype(np.float64)


def _mouth_interior(image: np.ndarray, src: np.ndarray, dst: np.ndarray, region: np.ndarray,
                    teeth_on: bool = True) -> np.ndarray:
    """Colours [S, S, 3] for a newly opened mouth: a dark cavity from the lips' own colour, darker toward the
    corners, with a band of upper teeth under the upper lip when the opening is tall enough (and teeth_on is set:
    not when the source's own teeth are carried down with the upper lip)."""
    size = image.shape[0]
    lip_colour = _lip_colour(image, src)
    gray = bool(np.all(image[..., 0] == image[..., 1]) and np.all(image[..., 1] == image[..., 2]))
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    left, right = dst[60], dst[64]
    centre_x, half_width = 0.5 * (left[0] + right[0]), max(1.0, 0.5 * abs(right[0] - left[0]))
    across = np.clip(np.abs(xs - centre_x) / half_width, 0.0, 1.0)
    shade = 1.0 - 0.55 * across ** 2                                          # darker toward the corners
    cavity = lip_colour * 0.28
    colours = cavity[None, None, :] * shade[..., None]
    # Upper teeth: below the upper inner lip (60..64), as tall as 40 % of the opening (at most 0.1 IOD).
    upper_y, lower_y = _line_y(dst[list(_UPPER_INNER)], xs), _line_y(dst[list(_LOWER_INNER)], xs)
    opening = np.maximum(lower_y - upper_y, 0.0)
    iod = face_frame(dst).iod_px
    tooth_height = np.minimum(0.4 * opening, 0.1 * iod) * (1.0 - across ** 4)
    below_lip = ys - upper_y
    teeth = np.clip(np.minimum(below_lip + 0.5, tooth_height - below_lip + 0.5), 0.0, 1.0) * (opening > 0.12 * iod)
    teeth = teeth if teeth_on else np.zeros_like(teeth)
    # Off-white, no brighter than the face's own light, in the shadow of the upper lip at the top, darker toward
    # the corners and the biting edge, with faint gaps between incisor-wide teeth (about 0.11 IOD).
    face_light = float(np.percentile(image.reshape(-1, 3).mean(-1), 90))
    tooth_colour = (np.array([222.0, 214.0, 196.0]) if not gray else np.full(3, 214.0)) * min(1.0, face_light / 230.0)
    depth = np.clip(below_lip / np.maximum(tooth_height, 1e-6), 0.0, 1.0)             # 0 at the lip, 1 at the edge
    vertical = 0.82 + 0.18 * np.sin(np.pi * np.clip(0.15 + 0.85 * depth, 0.0, 1.0))
    tooth_width = 0.11 * iod
    gap = np.abs(((xs - centre_x) / tooth_width + 0.5) % 1.0 - 0.5) * tooth_width     # px to the nearest tooth gap
    gaps = 1.0 - 0.22 * np.clip(1.0 - gap / 0.6, 0.0, 1.0)
    shade_teeth = (1.0 - 0.5 * across ** 2) * vertical * gaps
    teeth_colours = tooth_colour[None, None, :] * shade_teeth[..., None]
    colours = colours * (1.0 - teeth[..., None]) + teeth_colours * teeth[..., None]
    if gray:
        colours = np.repeat(colours.mean(-1, keepdims=True), 3, axis=-1)
    return np.where(region[..., None] > 0, colours, 0.0)


# Upper lids from the outer to the inner corner, with the eye outline each belongs to.
_UPPER_LIDS = (((36, 37, 38, 39), RIGHT_EYE), ((45, 44, 43, 42), LEFT_EYE))
_LID_DOWN_MIN_PX = 0.25        # an upper lid that comes down (or goes up) less than this (mean, px) is left to the warp
_LASH_WIDTH_IOD = 0.05         # the lash line drawn at a lowered lid's edge (about 2 px at 128 px)
_LASH_PERCENTILE = 10.0        # the lash line's colour: this percentile of the eye's (or old lash line's) pixels,
                               # drawn opaque once the lid has moved the line's width (r8; r3-r7 let a fifth of the
                               # lid skin through, which in shadowed CK+48 sockets read as a slit still open)
_LID_MARGIN_IOD = 0.04         # a lowered lid's skin also covers this far above the old lid line (fading out), and
                               # is sampled 1 px above that


def _lid_skin(window: np.ndarray, lid: np.ndarray, above_px: float, box: tuple[slice, slice]) -> np.ndarray:
    """The colour a lowered lid takes, column by column [1, w, 3]: the skin `above_px` over the source lid line in
    the warped window (the lid's own skin, which the warp has brought down with it), averaged over 3 columns. A
    lid in a shadowed socket stays as dark as the socket, a lit one as light as its skin, instead of one flat
    colour from a wider band, which painted a pale strip across dark sockets."""
    xs = np.arange(box[1].start, box[1].stop, dtype=np.float64)
    rows = _line_y(lid, xs) - above_px - box[0].start
    rows = np.clip(np.round(rows).astype(int), 0, window.shape[0] - 1)
    colours = window[rows, np.arange(window.shape[1])].astype(np.float32)[None]
    return cv2.blur(colours, (3, 1), borderType=cv2.BORDER_REPLICATE).astype(np.float64)


def _above_lid(lid: np.ndarray, margin: float, box: tuple[slice, slice]) -> np.ndarray:
    """Weights in the box [h, w]: 1 on the lid line, fading linearly to 0 at `margin` px above it, the margin
    tapering to nothing at the eye's corners."""
    ys = np.arange(box[0].start, box[0].stop, dtype=np.float64)[:, None]
    xs = np.arange(box[1].start, box[1].stop, dtype=np.float64)[None, :]
    left, right = lid[:, 0].min(), lid[:, 0].max()
    t = np.clip((xs - left) / max(right - left, 1e-6), 0.0, 1.0)
    local = margin * np.sin(np.pi * t) ** 0.5
    above = _line_y(lid, xs) - ys
    weight = np.where((above >= 0.0) & (local > 1e-6), 1.0 - above / np.maximum(local, 1e-6), 0.0)
    return np.clip(weight, 0.0, 1.0)


def _lash_half_width(src: np.ndarray) -> float:
    """Half the width (px) of the lash line drawn at a moved lid's edge."""
    return 0.5 * max(0.8, _LASH_WIDTH_IOD * face_frame(src).iod_px)


def _eye_box(src: np.ndarray, dst: np.ndarray, eye: list[int], half: float, size: int,
             above: float = 0.0) -> tuple[slice, slice]:
    """The box (rows, columns) holding an eye's source and target outlines, its lash line and `above` px more."""
    corners = np.concatenate([src[eye], dst[eye]])
    lo = np.clip(np.floor(corners.min(axis=0) - half - 1.0 - [0.0, above]).astype(int), 0, size - 1)
    hi = np.clip(np.ceil(corners.max(axis=0) + half + 1.0).astype(int), 0, size - 1)
    return slice(lo[1], hi[1] + 1), slice(lo[0], hi[0] + 1)


def _along_lid(lid: np.ndarray, above: float, below: float, size: int) -> np.ndarray:
    """Coverage [S, S] of the band from `above` px over a lid line to `below` px under it."""
    return polygon_mask(np.concatenate([lid - [0.0, above], (lid + [0.0, below])[::-1]]), size)


def _close_lids(image: np.ndarray, out: np.ndarray, src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, float]:
    """An upper lid that comes down (AU45, AU07, AU04's lid drop) slides over a still eyeball: the part of the eye
    it leaves open shows the eye where it was (not squeezed into the smaller opening), and the part it covers
    shows lid skin with the lash line at the lid's new edge. Returns (image [S, S, 3], painted px); `out` itself
    when no lid comes down."""
    size = image.shape[0]
    result, painted = out, 0.0
    for lid_idx, eye in _UPPER_LIDS:
        lid_idx, eye = list(lid_idx), list(eye)
        down = float(np.mean(dst[lid_idx[1:3], 1] - src[lid_idx[1:3], 1]))
        if down < _LID_DOWN_MIN_PX:
            continue
        if painted == 0.0:
            result = out.astype(np.float64)
        half = _lash_half_width(src)
        margin = min(_LID_MARGIN_IOD * face_frame(src).iod_px, down)
        # Everything below happens inside the eye's box (both outlines and the lash line), a few px wide.
        box = _eye_box(src, dst, eye, half, size, above=margin + 1.0)
        window, source = result[box], image[box].astype(np.float64)
        src_eye = polygon_mask(src[eye], size)
        open_now = np.minimum(src_eye, polygon_mask(dst[eye], size))[box][..., None]
        window[:] = window * (1.0 - open_now) + source * open_now
        covered = polygon_mask(np.concatenate([src[lid_idx], dst[lid_idx[::-1]]]), size)[box]
        # The lid's skin covers what the lid now hides, and (fading out) the lashes just above the old lid line.
        skin = _lid_skin(window, src[lid_idx], margin + 1.0, box)
        paint = np.maximum(covered, _above_lid(src[lid_idx], margin, box))[..., None]
        window[:] = window * (1.0 - paint) + skin * paint
        lash = _along_lid(dst[lid_idx], half, half, size)
        eye_pixels = image[src_eye > 0.5].astype(np.float64)
        lash_colour = (np.percentile(eye_pixels, _LASH_PERCENTILE, axis=0) if len(eye_pixels) >= 4
                       else 0.4 * skin.mean(axis=(0, 1)))
        # The lid-skin paint covers the lashes the warp brought down with the lid; redraw them (opaque) in proportion
        # to how much of the lash line's width the lid came down (a lid that drops a fraction of a pixel keeps its own).
        alpha = (min(1.0, down / (2.0 * half)) * lash)[box][..., None]
        window[:] = window * (1.0 - alpha) + lash_colour * alpha
        painted += float(covered.sum())
    return result, painted


_IRIS_RADIUS_WIDTH = 0.21     # iris radius / eye width (corner to corner): an adult iris is ~12 mm across, the eye ~28 mm
_IRIS_RADIUS_RANGE = (0.12, 0.35)   # an iris radius measured on the source eye is kept within this share of its width
_PUPIL_RADIUS_IRIS = 0.35     # pupil radius / iris radius in ordinary light
_EYE_SEEN_MIN_PX = 6.0        # a source eye showing less eyeball than this (px) gives no colours; defaults are used
_SCLERA = np.array([232.0, 228.0, 222.0])   # a lit sclera, slightly warm (defaults: only when the source eye is closed)
_SCLERA_FROM_WHITE = 0.6      # a default sclera is this much _SCLERA and the rest the lid skin (shadowed in a dark socket)
_SCLERA_CORNER_SHADE = 0.3    # the sclera darkens by this fraction toward the corners
_IRIS_ON_LID = 0.85           # the iris centre sits this many radii above the lower lid (the lid hides its bottom rim)
_IRIS_DARKNESS = 0.3          # a default iris is this fraction of the lid skin's colour (dark brown on most skins)


def _disc(centre: np.ndarray, radius: float, box: tuple[slice, slice], soft_px: float = 0.5) -> np.ndarray:
    """Coverage [h, w] of a disc in the box, with a soft_px anti-aliased rim."""
    ys = np.arange(box[0].start, box[0].stop, dtype=np.float64)[:, None]
    xs = np.arange(box[1].start, box[1].stop, dtype=np.float64)[None, :]
    distance = np.hypot(xs - centre[0], ys - centre[1])
    return np.clip((radius - distance) / (2.0 * soft_px) + 0.5, 0.0, 1.0)


def _eyeball(image: np.ndarray, src: np.ndarray, dst: np.ndarray, eye: list[int], seen: np.ndarray,
             box: tuple[slice, slice], skin: np.ndarray) -> np.ndarray:
    """Colours [h, w, 3] of the still eyeball behind an eye's lids: sclera, shaded toward the corners, with an iris
    and pupil whose bottom rests on the lower lid (where it sits when the eye looks ahead). The colours come from
    the eyeball the source already shows (`seen`: its open part, lashes excluded), else from defaults; so does
    the iris's place along the eye (where the source eye is darkest)."""
    outer, inner = src[eye[0]], src[eye[3]]
    width = float(np.hypot(*(inner - outer)))
    radius = _IRIS_RADIUS_WIDTH * width
    pixels = image[box][seen > 0.5].astype(np.float64)
    shows_eye = len(pixels) >= _EYE_SEEN_MIN_PX
    centre_y = None
    if shows_eye:
        brightness = pixels.mean(axis=1)
        sclera = pixels[brightness >= np.percentile(brightness, 80)].mean(axis=0)
        iris = pixels[brightness <= np.percentile(brightness, 20)].mean(axis=0)
        xs = np.nonzero(seen > 0.5)[1] + box[1].start
        darkness = np.clip(sclera.mean() - brightness, 0.0, None)
        centre_x = float((xs * darkness).sum() / darkness.sum()) if darkness.sum() > 0 else 0.5 * (outer[0] + inner[0])
        # The iris as wide as the source shows it: the run of columns, through its centre, darker than halfway
        # between sclera and iris (an iris the lids cut still shows its full width across its middle).
        halfway = 0.5 * (sclera.mean() + iris.mean())
        columns = np.unique(xs)
        dark = np.array([brightness[xs == c].min() for c in columns]) < halfway
        at = int(np.argmin(np.abs(columns - centre_x)))
        if dark[at]:
            lo, hi = at, at
            while lo > 0 and dark[lo - 1]:
                lo -= 1
            while hi < len(columns) - 1 and dark[hi + 1]:
                hi += 1
            radius = float(np.clip(0.5 * (columns[hi] - columns[lo] + 1), _IRIS_RADIUS_RANGE[0] * width,
                                   _IRIS_RADIUS_RANGE[1] * width))
            # Where the iris shows its full width, its centre is in sight: the middle of those rows.
            ys = np.nonzero(seen > 0.5)[0] + box[0].start
            rows = np.unique(ys)
            wide = [r for r in rows if (brightness[ys == r] < halfway).sum() >= 1.6 * radius]
            if wide:
                centre_y = 0.5 * (min(wide) + max(wide))
    else:
        sclera = _SCLERA_FROM_WHITE * _SCLERA + (1.0 - _SCLERA_FROM_WHITE) * skin
        iris = _IRIS_DARKNESS * skin
        centre_x = 0.5 * float(outer[0] + inner[0])
    # The eyeball does not move with the lids: its iris rests on the source's lower lid; a closed source eye
    # shows no lower lid of its own, so the target's is used.
    lids = src if shows_eye else dst
    lower = [eye[0], eye[5], eye[4], eye[3]]
    if centre_y is None:
        centre_y = float(_line_y(lids[lower], np.array([centre_x]))[0]) - _IRIS_ON_LID * radius
    centre = np.array([centre_x, centre_y])
    h, w = box[0].stop - box[0].start, box[1].stop - box[1].start
    xs = np.arange(box[1].start, box[1].stop, dtype=np.float64)[None, :, None]
    along = np.clip(np.abs(xs - centre_x) / max(0.5 * width, 1e-6), 0.0, 1.0)
    colours = np.broadcast_to(sclera, (h, w, 3)) * (1.0 - _SCLERA_CORNER_SHADE * along ** 2)
    iris_cover = _disc(centre, radius, box)[..., None]
    colours = colours * (1.0 - iris_cover) + iris * iris_cover
    pupil_cover = _disc(centre, _PUPIL_RADIUS_IRIS * radius, box)[..., None]
    return colours * (1.0 - pupil_cover) + 0.35 * iris * pupil_cover


def _open_lids(image: np.ndarray, out: np.ndarray, src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, float]:
    """An upper lid that goes up (a closed eye opening, AU05) uncovers a still eyeball, as `_close_lids` covers
    one: the eyeball the source already showed stays where it was (not stretched), and what the lid uncovers,
    with the band of the old lash line, is painted as eyeball (sclera, iris, pupil); the lashes themselves go up
    with the lid in the warp. Returns (image [S, S, 3], painted px); `out` itself when no lid goes up."""
    size = image.shape[0]
    result, painted = out, 0.0
    opening = _opening_eyes(src, dst)
    for lid_idx, eye in _UPPER_LIDS:
        lid_idx, eye = list(lid_idx), list(eye)
        if eye not in opening:
            continue
        if painted == 0.0:
            result = out.astype(np.float64)
        half = _lash_half_width(src)
        box = _eye_box(src, dst, eye, half, size)
        window, source = result[box], image[box].astype(np.float64)
        # The source's lashes: a band of the lash width below its upper lid line.
        lashes = _along_lid(src[lid_idx], 0.0, 2.0 * half, size)[box]
        seen = np.clip(polygon_mask(src[eye], size)[box] - lashes, 0.0, 1.0)
        open_now = polygon_mask(dst[eye], size)[box]
        keep = np.minimum(seen, open_now)
        paint = np.clip(open_now - keep, 0.0, 1.0)
        top = box[0].start
        skin = np.median(image[max(top - 3, 0):top + 1, box[1]].reshape(-1, 3).astype(np.float64), axis=0)
        eyeball = _eyeball(image, src, dst, eye, seen, box, skin)
        window[:] = window * (1.0 - keep[..., None]) + source * keep[..., None]
        window[:] = window * (1.0 - paint[..., None]) + eyeball * paint[..., None]
        # The lash line at the lid's new edge (the paint covered the half of it the warp brought inside the eye).
        lash = _along_lid(dst[lid_idx], half, half, size)
        lash_pixels = image[_along_lid(src[lid_idx], half, half, size) > 0.5].astype(np.float64)
        lash_colour = np.percentile(lash_pixels, _LASH_PERCENTILE, axis=0) if len(lash_pixels) >= 4 else 0.4 * skin
        alpha = lash[box][..., None]
        window[:] = window * (1.0 - alpha) + lash_colour * alpha
        painted += float(paint.sum())
    return result, painted


@dataclass
class WarpPlan:
    """The dense warp for one edit, before any pixel is touched."""

    fraction: float          # share of the planned motion kept (1 = all)
    landmarks: np.ndarray    # [68, 2] where the points go
    field: np.ndarray        # [S, S, 2] backward displacement: output pixel x samples the input at x + field[x]
    opened: np.ndarray       # [S, S] 0..1: the target mouth interior (painted, exempt from the fold check)
    min_jacobian: float      # smallest triangle area ratio outside the painted mouth and eyes (> 0: no fold)


def plan_warp(src: np.ndarray, dst: np.ndarray, size_px: int, config: WarpConfig = WarpConfig()) -> WarpPlan:
    """The fold-free warp moving the 68 points src -> dst [68, 2], scaled back (bisection) if the full motion folds.

    Piecewise-affine over a Delaunay triangulation of the moved points and the crop border: pixels in triangles
    whose corners do not move keep their exact values. No triangle may flip or collapse (source/target area ratio
    > min_jacobian) except inside the newly opened mouth and an opening eye (both painted). RejectError
    warp_folds below config.min_fraction.
    """
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    best = None
    fraction, low, high = 1.0, 0.0, 1.0
    for _ in range(config.fraction_steps + 1):
        goal = src + fraction * (dst - src)
        eyes = tuple(_opening_eyes(src, goal)) if config.open_lids else ()
        mesh = _mesh(src, goal, size_px, config.brow_band, eyes, config.still_forehead_iod)
        worst = _worst_ratio(mesh)
        if worst <= config.min_jacobian and config.brow_band:   # the band's extra points can pinch a low brow
            mesh = _mesh(src, goal, size_px, brow_band=False, painted_eyes=eyes,
                         still_forehead_iod=config.still_forehead_iod)
            worst = _worst_ratio(mesh)
        if worst > config.min_jacobian:
            best = (fraction, goal, mesh, worst, eyes)
            low = fraction
            if fraction == 1.0:
                break
        else:
            high = fraction
        fraction = 0.5 * (low + high)
    if best is None or best[0] < config.min_fraction:
        achieved = 0.0 if best is None else best[0]
        raise RejectError(STAGE, "warp_folds",
                          f"the landmark motion folds the image even when scaled back to {achieved:.2f} of it")
    fraction, goal, mesh, worst, eyes = best
    field = _mesh_field(mesh, size_px)
    mouth = goal[list(INNER_LIPS)]
    opened = (polygon_mask(mouth, size_px) if config.fill_mouth and _polygon_area(mouth) >= 1.0
              else np.zeros((size_px, size_px), np.float32))   # lips that meet leave no interior to paint
    if config.smooth_iod > 0:
        # Soften the creases along triangle edges; kept only where the smoothed warp still does not fold.
        sigma = config.smooth_iod * face_frame(src).iod_px
        smoothed = np.stack([cv2.GaussianBlur(field[..., k], (0, 0), sigma) for k in range(2)], axis=-1)
        exempt = opened.copy()
        for eye in eyes:
            exempt = np.maximum(exempt, polygon_mask(goal[eye], size_px))
        if float(jacobian_det(smoothed)[exempt < 0.01].min(initial=1.0)) > config.min_jacobian:
            field = smoothed
    return WarpPlan(fraction=float(fraction), landmarks=goal.astype(np.float32), field=field, opened=opened,
                    min_jacobian=worst)


_SPLIT_SAMPLES = 24        # rows sampled across the source opening to find where its upper part ends
_TEETH_OVER_LIPS = 1.15    # the source's upper part shows teeth when it is this much brighter than the lips
_TEETH_MIN_LEVELS = 15.0   # ... and at least this many grey levels brighter
_WIDER_PX = 0.25           # a column whose opening grows less than this keeps the warp's own mapping


def _luminance_at(image: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    grey = image.astype(np.float32).mean(-1)
    return cv2.remap(grey, xs.astype(np.float32), ys.astype(np.float32), cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_REPLICATE)


def _upper_share(image: np.ndarray, src: np.ndarray) -> tuple[float, bool]:
    """Where the source's open mouth divides into what hangs from the upper jaw (upper teeth) and what goes down
    with the lower one, as a share of the opening's height, one share for the whole mouth: the first row, from the
    top, of the opening's middle 60 % (averaged across it) that is darker than the lips, i.e. cavity; 1 when no
    row is (teeth down to the lower lip: all of it hangs from the upper jaw). Also whether the upper part shows
    teeth (brighter than the lips) rather than cavity."""
    left, right = src[60, 0], src[64, 0]
    xs = left + (right - left) * np.linspace(0.2, 0.8, 9)
    up, lo = _line_y(src[list(_UPPER_INNER)], xs), _line_y(src[list(_LOWER_INNER)], xs)
    shares = (np.arange(_SPLIT_SAMPLES) + 0.5) / _SPLIT_SAMPLES
    grid_y = up[None, :] + shares[:, None] * np.maximum(lo - up, 0.0)[None, :]
    profile = _luminance_at(image, np.broadcast_to(xs, grid_y.shape), grid_y).mean(axis=1)
    lips = float(_lip_colour(image, src).mean())
    dark = np.flatnonzero(profile < lips)
    first_dark = int(dark[0]) if dark.size else _SPLIT_SAMPLES
    upper = profile[:first_dark]
    teeth = bool(upper.size > 0 and upper.mean() > _TEETH_OVER_LIPS * lips and upper.mean() - lips > _TEETH_MIN_LEVELS)
    return first_dark / _SPLIT_SAMPLES, teeth


def _carry_open_mouth(image: np.ndarray, src: np.ndarray, plan: WarpPlan) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    """A source mouth that is already open, opening further, as a jaw opens: what hangs from the upper jaw (the
    upper teeth) stays under the upper lip at its own height, the rest goes down with the lower lip at its own
    height, and only the gap between them is new cavity (to paint). Returns the carried colours [S, S, 3], their
    weight [S, S], the weight of pixels that keep the plain warp's sample [S, S] (columns whose opening does not
    grow), and whether the carried upper part shows teeth (then none are painted). A closed source carries
    nothing: its whole opening is painted."""
    size = image.shape[0]
    nothing = np.zeros((size, size), np.float32)
    ys, xs = np.nonzero(plan.opened > 0)
    if ys.size == 0 or _polygon_area(src[list(INNER_LIPS)]) < 1.0:
        return np.zeros((size, size, 3), np.float32), nothing, nothing, False
    share, teeth = _upper_share(image, src)
    dst = plan.landmarks.astype(np.float64)
    x_src = xs + plan.field[ys, xs, 0].astype(np.float64)
    up_s, lo_s = _line_y(src[list(_UPPER_INNER)], x_src), _line_y(src[list(_LOWER_INNER)], x_src)
    up_d, lo_d = _line_y(dst[list(_UPPER_INNER)], xs), _line_y(dst[list(_LOWER_INNER)], xs)
    open_s, open_d = np.maximum(lo_s - up_s, 0.0), np.maximum(lo_d - up_d, 0.0)
    wider = open_d > open_s + _WIDER_PX
    below_upper, above_lower = ys - up_d, lo_d - ys
    upper_h = share * open_s if teeth else np.zeros_like(open_s)   # no teeth above: painted, teeth and all
    lower_h = (1.0 - share) * open_s
    w_upper = np.clip(upper_h - below_upper + 0.5, 0.0, 1.0) * (upper_h > 0)
    w_lower = np.clip(lower_h - above_lower + 0.5, 0.0, 1.0) * (lower_h > 0)
    w_lower = np.minimum(w_lower, 1.0 - w_upper)
    map_x = np.zeros((size, size), np.float32)
    map_up, map_lo = np.zeros((size, size), np.float32), np.zeros((size, size), np.float32)
    map_x[ys, xs] = x_src
    map_up[ys, xs] = up_s + below_upper
    map_lo[ys, xs] = lo_s - above_lower

    def sample(map_y: np.ndarray) -> np.ndarray:
        return cv2.remap(image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE).astype(np.float32)

    weight_up, weight_lo, keep = nothing.copy(), nothing.copy(), nothing.copy()
    weight_up[ys, xs] = np.where(wider, w_upper, 0.0)
    weight_lo[ys, xs] = np.where(wider, w_lower, 0.0)
    keep[ys, xs] = np.where(wider, 0.0, 1.0)
    carried = sample(map_up) * weight_up[..., None] + sample(map_lo) * weight_lo[..., None]
    return carried, weight_up + weight_lo, keep, teeth


def warp_to_landmarks(image: np.ndarray, src: np.ndarray, dst: np.ndarray, config: WarpConfig = WarpConfig()) -> WarpResult:
    """Warp an aligned crop so its 68 points move from src to dst [68, 2] (see plan_warp), painting a newly
    opened mouth as mouth interior."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or image.shape[0] != image.shape[1]:
        raise ValueError(f"image must be a square uint8 RGB crop, got {image.dtype} {image.shape}")
    size = image.shape[0]
    plan = plan_warp(src, dst, size, config)
    out = _sample(image, plan.field)
    filled = 0.0
    inner = list(INNER_LIPS)
    mouth_moved = np.abs(plan.landmarks[inner] - np.asarray(src, np.float64)[inner]).max() > 0.01
    if config.fill_mouth and mouth_moved and plan.opened.sum() > 0:
        carried, carried_w, keep, teeth_shown = _carry_open_mouth(image, np.asarray(src, np.float64), plan)
        carried_w, keep = carried_w * plan.opened, keep * plan.opened
        fill = np.clip(plan.opened - carried_w - keep, 0.0, 1.0)
        blended = out.astype(np.float64) * (1.0 - carried_w - fill)[..., None] + carried * plan.opened[..., None]
        if fill.sum() > 0:
            colours = _mouth_interior(image, np.asarray(src, np.float64), plan.landmarks.astype(np.float64), fill,
                                      teeth_on=not teeth_shown)
            blended = blended + colours * fill[..., None]
            filled = float(fill.sum())
        out = np.clip(np.round(blended), 0, 255).astype(np.uint8)
    eyes = 0.0
    if config.open_lids:
        opened, eyes = _open_lids(image, out, np.asarray(src, np.float64), plan.landmarks.astype(np.float64))
        if opened is not out:
            out = np.clip(np.round(opened), 0, 255).astype(np.uint8)
    lids = 0.0
    if config.close_lids:
        closed, lids = _close_lids(image, out, np.asarray(src, np.float64), plan.landmarks.astype(np.float64))
        if closed is not out:
            out = np.clip(np.round(closed), 0, 255).astype(np.uint8)
    return WarpResult(image=out, landmarks=plan.landmarks, fraction=plan.fraction, min_jacobian=plan.min_jacobian,
                      mouth_filled_px=filled, lid_painted_px=lids, eye_painted_px=eyes)


_INNER_LIP_PAIRS = tuple(pair for pair in ORDERED_PAIRS if pair[0] in INNER_LIPS and pair[1] in INNER_LIPS)
# Inner lips that the detector crossed by at most this (in inter-ocular distances, about 2.5 px at 128 px) are
# pressed lips read with noise: before an edit both go to their mean height (lips that meet). A mouth crossed by more
# is misread and left as it is (an edit that opens it then folds and is refused).
_SETTLE_CROSSED_LIPS_IOD = 0.08


def settle_crossed_lips(points: np.ndarray) -> np.ndarray:
    """[68, 2] with each inner-lip pair (upper above lower) that the detector crossed, by no more than
    _SETTLE_CROSSED_LIPS_IOD, put at its mean height. Opening crossed lips moved the lower lip through the upper
    one: the triangles between them flipped and the edit was refused (5 of 120 real faces for AU25)."""
    out = np.array(points, np.float64, copy=True)
    limit = _SETTLE_CROSSED_LIPS_IOD * face_frame(out).iod_px
    for upper, lower in _INNER_LIP_PAIRS:
        if 0.0 < out[upper, 1] - out[lower, 1] <= limit:
            out[upper, 1] = out[lower, 1] = 0.5 * (out[upper, 1] + out[lower, 1])
    return out


def check_au_vector(values, name: str) -> np.ndarray:
    """17 finite AU intensities in 0..1, or RejectError bad_au_target / bad_au_source."""
    array = np.asarray(values, np.float64) if values is not None else None
    reason = "bad_au_target" if name == "target" else "bad_au_source"
    if array is None or array.shape != (17,):
        raise RejectError(STAGE, reason, f"AU {name} must be 17 values, got {None if array is None else array.shape}")
    if not np.all(np.isfinite(array)):
        raise RejectError(STAGE, reason, f"AU {name} has NaN or infinite values: {array.round(3).tolist()}")
    if array.min() < 0.0 or array.max() > 1.0:
        raise RejectError(STAGE, reason, f"AU {name} outside 0..1 (OpenFace 0..5 / 5): {array.round(3).tolist()}")
    return array


class WarpEditor:
    """Edits aligned faces toward AU targets by moving their landmarks (AU shape model) and warping the pixels."""

    def __init__(self, shape_model: AUShapeModel, config: WarpConfig = WarpConfig()):
        self.shape_model = shape_model
        self.config = config

    @property
    def version(self) -> str:
        return f"warp:{self.shape_model.version}:r{WARP_REVISION}"

    def edit(self, image: np.ndarray, landmarks: np.ndarray, au_source, au_target) -> WarpResult:
        """One edit; RejectError for bad AU vectors, bad landmarks or a warp that would fold."""
        target = check_au_vector(au_target, "target")
        source = np.zeros(17) if au_source is None else check_au_vector(au_source, "source")
        points = settle_crossed_lips(check_landmarks(landmarks, image.shape[0]))
        try:
            goal = self.shape_model.target_landmarks(points, source, target)
        except ValueError as err:
            raise RejectError(STAGE, "landmarks_degenerate", str(err)) from err
        return warp_to_landmarks(image, points, goal, self.config)

    def edit_batch(self, images, landmarks, au_sources, au_targets) -> list[WarpResult | RejectError]:
        """Edits in order; a bad one becomes its RejectError in the list and the others go on."""
        results: list[WarpResult | RejectError] = []
        for image, points, source, target in zip(images, landmarks, au_sources, au_targets, strict=True):
            try:
                results.append(self.edit(image, points, source, target))
            except RejectError as err:
                results.append(err)
        return results
