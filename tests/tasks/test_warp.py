"""The landmark warp: exact identity and locality, no folds, a painted mouth interior, specific rejects."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from models.au_shape import AU_NAMES, INNER_LIPS, default_au_shape_model, face_frame
from tasks.errors import RejectError
from tasks.openface import synthetic_landmarks68
from tasks.warp import (
    WarpConfig,
    WarpEditor,
    _lash_half_width,
    jacobian_det,
    plan_warp,
    polygon_mask,
    settle_crossed_lips,
    warp_to_landmarks,
)

SIZE = 128
FACE = synthetic_landmarks68((64.0, 58.0), 31.0).astype(np.float32)
CLOSED = FACE.copy()
CLOSED[[67, 66, 65], 1] = CLOSED[[61, 62, 63], 1]        # lips together: inner upper == inner lower
EDITOR = WarpEditor(default_au_shape_model())
LASH_HALF_WIDTH = _lash_half_width(FACE)   # the lash line _close_lids draws


def one_hot(name: str, value: float = 1.0) -> np.ndarray:
    v = np.zeros(17)
    v[AU_NAMES.index(name)] = value
    return v


@pytest.fixture(scope="module")
def crop(astronaut_rgb) -> np.ndarray:
    return np.ascontiguousarray(cv2.resize(astronaut_rgb, (SIZE, SIZE), interpolation=cv2.INTER_AREA))


def test_no_change_is_the_identity(crop):
    result = EDITOR.edit(crop, FACE, one_hot("AU12", 0.3), one_hot("AU12", 0.3))
    np.testing.assert_array_equal(result.image, crop)
    np.testing.assert_array_equal(result.landmarks, FACE)
    assert result.fraction == 1.0 and result.mouth_filled_px == 0.0


def test_pixels_away_from_the_moved_features_are_exactly_unchanged(crop):
    result = EDITOR.edit(crop, FACE, np.zeros(17), one_hot("AU01"))           # inner brows up
    changed = np.any(result.image != crop, axis=-1)
    assert changed.any()
    ys, xs = np.nonzero(changed)
    brow_y = FACE[[21, 22], 1].mean()
    assert ys.max() < FACE[[40, 41, 46, 47], 1].max(), "a brow raise changed pixels below the eyes"
    # the skin between the brows and the still forehead above them stretches, but the change is largest at the brows
    change_per_row = np.abs(result.image.astype(float) - crop).sum(axis=(1, 2))
    assert abs(int(np.argmax(change_per_row)) - brow_y) < 0.15 * 31
    assert not changed[int(FACE[:, 1].max()) + 2:].any()                      # nothing below the chin


# A raise keeps the forehead still; a frown's drawing together pulls it half way (_FOREHEAD_FOLLOW_X).
@pytest.mark.parametrize(("aus", "share"), [(("AU01", "AU02"), 0.15), (("AU04",), 0.5)])
def test_a_moved_brow_leaves_the_hairline_and_temples_in_place(crop, aus, share):
    # revisions 1-8 had no still points between the brows and the crop border: a brow raise moved the hairline
    goal = EDITOR.shape_model.target_landmarks(FACE, np.zeros(17), sum(one_hot(a) for a in aus))
    iod = face_frame(FACE).iod_px
    top = int(FACE[17:27, 1].min() - 0.6 * iod)                                # the hairline: above the still row
    rows = slice(int(FACE[17:27, 1].min()), int(FACE[36:48, 1].max()))          # temples: beside brows and eyes
    left, right = int(FACE[17, 0] - 0.5 * iod), int(FACE[26, 0] + 0.5 * iod)

    def change(config: WarpConfig) -> tuple[float, float, np.ndarray]:
        result = warp_to_landmarks(crop, FACE, goal, config)
        np.testing.assert_allclose(result.landmarks, goal, atol=1e-4)           # the brows moved all the way
        d = np.abs(result.image.astype(float) - crop).mean(axis=-1)
        return d[:top].mean(), max(d[rows, :left].max(), d[rows, right:].max()), d

    hairline, temples, d = change(WarpConfig())
    dragged, _, _ = change(WarpConfig(still_forehead_iod=0.0))
    assert hairline < share * dragged and temples == 0.0, (hairline, dragged, temples)
    assert d[top:rows.start].mean() > 2 * hairline                              # the brows changed most


def test_the_named_points_reach_their_targets(crop):
    model = default_au_shape_model()
    for name in ("AU12", "AU04", "AU26", "AU45"):
        result = EDITOR.edit(crop, FACE, np.zeros(17), one_hot(name))
        np.testing.assert_allclose(result.landmarks, model.target_landmarks(FACE, np.zeros(17), one_hot(name)), atol=1e-4)
        assert result.fraction == 1.0, name


def test_random_edits_never_fold(crop):
    rng = np.random.default_rng(0)
    model = default_au_shape_model()
    for points in (FACE, CLOSED):
        for _ in range(25):
            source, target = rng.uniform(0, 1, 17) * (rng.uniform(size=17) < 0.3), rng.uniform(0, 1, 17)
            goal = model.target_landmarks(points, source, target)
            plan = plan_warp(points, goal, SIZE)
            # the brow band's extra mesh points never cost motion: without them the warp gets no further
            assert plan.fraction >= plan_warp(points, goal, SIZE, WarpConfig(brow_band=False)).fraction
            det = jacobian_det(plan.field)
            outside_mouth = plan.opened < 0.01
            assert det[2:-2, 2:-2][outside_mouth[2:-2, 2:-2]].min() > 0.0
            assert plan.min_jacobian > 0.0 and 0.5 <= plan.fraction <= 1.0


def test_opening_a_closed_mouth_paints_a_dark_interior_not_stretched_lips(crop):
    result = EDITOR.edit(crop, CLOSED, np.zeros(17), one_hot("AU26"))
    assert result.mouth_filled_px > 20
    inner = polygon_mask(result.landmarks[list(INNER_LIPS)], SIZE) > 0.99
    lips_before = polygon_mask(CLOSED[48:60], SIZE) > 0.5
    luminance = lambda im: im.astype(float).mean(-1)  # noqa: E731
    # the lower part of the opening is cavity (upper teeth may show under the upper lip)
    rows = np.nonzero(inner.any(axis=1))[0]
    cavity = inner & (np.arange(SIZE)[:, None] > rows.min() + 0.5 * (rows.max() - rows.min()))
    assert luminance(result.image)[cavity].mean() < 0.6 * luminance(crop)[lips_before].mean()
    # the same edit without the fill stretches what was there instead
    plain = warp_to_landmarks(crop, CLOSED, result.landmarks, WarpConfig(fill_mouth=False))
    assert luminance(plain.image)[inner].mean() > luminance(result.image)[inner].mean()


def _open_mouth_with_teeth(teeth_px: float) -> np.ndarray:
    """A flat face with FACE's lips drawn: lip colour, and an open interior that shows a band of upper teeth
    teeth_px tall under the upper inner lip, dark below it."""
    image = np.full((SIZE, SIZE, 3), (200, 160, 140), np.uint8)
    lips = polygon_mask(FACE[48:60], SIZE)[..., None]
    inner = polygon_mask(FACE[list(INNER_LIPS)], SIZE)[..., None]
    rows = np.arange(SIZE, dtype=float)[:, None, None]
    upper = np.interp(np.arange(SIZE), FACE[60:65, 0], FACE[60:65, 1])[None, :, None]
    teeth = np.clip(upper + teeth_px - rows + 0.5, 0.0, 1.0)
    mouth = teeth * np.array([235.0, 230.0, 215.0]) + (1.0 - teeth) * np.array([45.0, 20.0, 25.0])
    out = image * (1.0 - lips) + np.array([170.0, 80.0, 80.0]) * lips
    out = out * (1.0 - inner) + mouth * inner
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def test_opening_an_open_mouth_keeps_the_teeth_with_the_upper_lip_and_shows_the_cavity_below():
    # the jaw drops: the upper teeth stay under the upper lip at their own height, the dark cavity grows under
    # them, the lower lip goes down (revision 9 stretched the whole source mouth, teeth included, into the opening)
    image = _open_mouth_with_teeth(3.0)
    result = EDITOR.edit(image, FACE, np.zeros(17), one_hot("AU26"))
    dst = result.landmarks
    assert dst[66, 1] - FACE[66, 1] > 5.0 and result.fraction == 1.0
    luminance = result.image.astype(float).mean(-1)
    column = luminance[:, 64]
    top = int(np.ceil(dst[62, 1]))
    assert np.all(column[top + 1:top + 3] > 200)                     # the teeth, where they were
    assert np.all(column[top + 4:int(dst[66, 1]) - 1] < 70)          # then the cavity, down to the lower lip
    teeth_rows = np.flatnonzero(luminance[int(FACE[62, 1]) - 2:int(dst[66, 1]) + 2, 60:69].mean(1) > 150)
    assert 2 <= teeth_rows.size <= 4                                 # 3 px of teeth, not stretched


def test_a_mouth_open_on_darkness_gets_painted_teeth_when_it_opens_wide():
    # no teeth showed in the source: the opening is painted as for a closed mouth (cavity, upper teeth)
    image = _open_mouth_with_teeth(0.0)
    result = EDITOR.edit(image, FACE, np.zeros(17), one_hot("AU26"))
    luminance = result.image.astype(float).mean(-1)
    top = int(np.ceil(result.landmarks[62, 1]))
    cavity = luminance[int(result.landmarks[66, 1]) - 2, 64]
    assert result.mouth_filled_px > 20 and cavity < 70 and luminance[top:top + 3, 64].max() > 2.0 * cavity


def test_pressed_lips_the_detector_crossed_open_as_far_as_lips_that_meet(crop):
    # CK+48 pressed lips come back from the detector with the lower inner lip 1-1.3 px above the upper one. Opening
    # them moved the lower lip through the upper one: on real faces the triangles between them flipped and the edit
    # was refused (5 of 120 faces for AU25); here the crossing ate half of the opening
    crossed = CLOSED.copy()
    crossed[[61, 62, 63], 1] += 0.7
    crossed[[67, 66, 65], 1] -= 0.7
    result = EDITOR.edit(crop, crossed, np.zeros(17), one_hot("AU25"))
    meeting = EDITOR.edit(crop, CLOSED, np.zeros(17), one_hot("AU25"))
    gap = lambda r: r.landmarks[[65, 66, 67], 1] - r.landmarks[[63, 62, 61], 1]  # noqa: E731
    assert result.fraction == 1.0 and result.mouth_filled_px > 5
    assert np.all(np.abs(gap(result) - gap(meeting)) < 0.3)
    settled = settle_crossed_lips(crossed)
    assert np.allclose(settled[[61, 62, 63], 1], settled[[67, 66, 65], 1])
    assert np.array_equal(np.delete(settled, [61, 62, 63, 65, 66, 67], 0), np.delete(crossed, [61, 62, 63, 65, 66, 67], 0))


def test_a_misread_mouth_is_not_settled():
    # lips crossed by a fifth of the eye distance are a misread mouth, not noise: left as the detector put them
    misread = CLOSED.copy()
    misread[[67, 66, 65], 1] -= 0.2 * face_frame(CLOSED).iod_px
    assert np.array_equal(settle_crossed_lips(misread), misread.astype(np.float64))


@pytest.mark.parametrize("height", [0.2, 0.5, 1.0, 3.0])
def test_polygon_mask_covers_the_polygons_area_even_for_slivers(height):
    # a thin opening must paint its own area, not a pixel-wide anti-aliased band (0.2 px came out 9x its area)
    box = np.array([[40.3, 60.2], [80.3, 60.2], [80.3, 60.2 + height], [40.3, 60.2 + height]])
    mask = polygon_mask(box, SIZE)
    row = 0.25                                                               # a 4 x 4 sample grid per pixel
    assert 40.0 * max(height - row, 0.0) <= mask.sum() <= 40.0 * (height + row)
    assert mask.max() <= min(1.0, height + row)
    triangle = np.array([[5.1, 5.2], [100.7, 19.9], [40.2, 110.3]])
    (ax, ay), (bx, by) = triangle[1] - triangle[0], triangle[2] - triangle[0]
    area = 0.5 * abs(ax * by - ay * bx)
    assert polygon_mask(triangle, SIZE).sum() == pytest.approx(area, rel=0.01)
    assert polygon_mask(box + 500.0, SIZE).sum() == 0.0                      # off the crop: nothing


def test_a_slight_lip_parting_darkens_the_lip_line_only_by_its_size(crop):
    # AU09 lifts the upper lip by 0.03 IOD (~1 px here): the opening is painted with about its own area
    result = EDITOR.edit(crop, CLOSED, np.zeros(17), one_hot("AU09"))
    opening = polygon_mask(result.landmarks[list(INNER_LIPS)], SIZE).sum()
    assert 0.0 < result.mouth_filled_px <= 1.1 * opening + 0.5
    assert result.mouth_filled_px < 0.25 * EDITOR.edit(crop, CLOSED, np.zeros(17), one_hot("AU26")).mouth_filled_px


def test_closing_an_open_mouth_meets_without_tearing(crop):
    model = default_au_shape_model()
    opened = model.target_landmarks(CLOSED, np.zeros(17), one_hot("AU26"))
    result = EDITOR.edit(crop, opened, one_hot("AU26"), np.zeros(17))
    assert result.fraction == 1.0 and result.mouth_filled_px < 5.0      # anti-aliased rim of the closed seam only
    gap = result.landmarks[[65, 66, 67], 1] - result.landmarks[[63, 62, 61], 1]
    assert np.all(np.abs(gap) < 0.5)


def test_a_blink_closes_the_eye(crop):
    result = EDITOR.edit(crop, FACE, np.zeros(17), one_hot("AU45"))
    lid_gap = result.landmarks[[41, 40, 47, 46], 1] - result.landmarks[[37, 38, 43, 44], 1]
    assert np.all(lid_gap >= -1e-4) and np.all(lid_gap < 0.5)
    assert result.fraction == 1.0


def _drawn_brows() -> np.ndarray:
    """Plain skin with two dark brows about 4 px thick drawn along FACE's brow points."""
    image = np.full((SIZE, SIZE, 3), (200, 160, 140), np.uint8)
    for brow in (range(17, 22), range(22, 27)):
        cv2.polylines(image, [np.round(FACE[list(brow)] * 16).astype(np.int32)], False, (60, 40, 30), 4, cv2.LINE_AA, shift=4)
    return image


@pytest.mark.parametrize("aus", [("AU01", "AU02"), ("AU04",)])
def test_a_moved_brow_keeps_its_thickness(aus):
    # brows move as a whole; a warp driven by the bare brow points stretched a raised brow about 20 % thicker
    image = _drawn_brows()
    target = sum(one_hot(a) for a in aus)
    result = EDITOR.edit(image, FACE, np.zeros(17), target)
    skin = np.mean((200, 160, 140))

    def ink(im: np.ndarray, x: int) -> float:   # how much darker than skin the column is, summed over the forehead
        return float(np.clip(skin - im[:60, x].astype(float).mean(-1), 0, None).sum())

    for i in (18, 19, 20, 23, 24, 25):
        x = int(round(FACE[i, 0]))
        assert 0.9 < ink(result.image, x) / ink(image, x) < 1.1, (aus, i)
    assert np.abs(result.landmarks[17:27] - FACE[17:27]).max() > 2.0      # and they did move


def _drawn_eyes() -> np.ndarray:
    """Plain skin with two open eyes drawn on FACE's eye points: white sclera, a dark iris at the centre."""
    skin = np.full((SIZE, SIZE, 3), (200, 160, 140), np.float64)
    eyes = np.full((SIZE, SIZE, 3), (245, 245, 240), np.uint8)
    opening = np.zeros((SIZE, SIZE), np.float64)
    for eye in (range(36, 42), range(42, 48)):
        outline = FACE[list(eye)]
        opening = np.maximum(opening, polygon_mask(outline, SIZE))
        centre = outline.mean(axis=0)
        cv2.circle(eyes, (int(round(centre[0])), int(round(centre[1]))), 3, (40, 30, 20), -1)
    return np.round(skin * (1 - opening[..., None]) + eyes * opening[..., None]).astype(np.uint8)


def _lid_band(landmarks: np.ndarray, half_width: float, size: int = SIZE, below: float | None = None) -> np.ndarray:
    """The band from `half_width` px above the right upper lid's edge to `below` px under it (default: as above)."""
    lid = landmarks[[36, 37, 38, 39]]
    below = half_width if below is None else below
    return polygon_mask(np.concatenate([lid - [0, half_width], (lid + [0, below])[::-1]]), size) > 0


def test_a_lowered_lid_slides_over_the_eye_instead_of_squeezing_it():
    image = _drawn_eyes()
    eye = list(range(36, 42))
    lowered = EDITOR.edit(image, FACE, np.zeros(17), one_hot("AU45", 0.4))
    lash = _lid_band(lowered.landmarks, LASH_HALF_WIDTH)
    still_open = (polygon_mask(lowered.landmarks[eye], SIZE) > 0.99) & (polygon_mask(FACE[eye], SIZE) > 0.99) & ~lash
    assert still_open.sum() >= 8 and lowered.lid_painted_px > 0
    # the part the lid leaves open (below the lash line at its new edge) shows the eye where it was, pixel for pixel
    np.testing.assert_array_equal(lowered.image[still_open], image[still_open])
    squeezed = warp_to_landmarks(image, FACE, lowered.landmarks, WarpConfig(close_lids=False)).image
    assert np.any(squeezed[still_open] != image[still_open])
    # the part it covers is lid skin, not sclera
    lower = EDITOR.edit(image, FACE, np.zeros(17), one_hot("AU45", 0.7))
    covered = (polygon_mask(FACE[eye], SIZE) > 0.99) & (polygon_mask(lower.landmarks[eye], SIZE) < 0.01)
    skin_only = covered & ~_lid_band(lower.landmarks, 1.5)
    assert skin_only.sum() >= 4
    np.testing.assert_allclose(lower.image[skin_only].mean(axis=0), (200, 160, 140), atol=6)


def test_a_closed_eye_shows_lid_skin_and_a_lash_line():
    image = _drawn_eyes()
    closed = EDITOR.edit(image, FACE, np.zeros(17), one_hot("AU45"))
    eye = list(range(36, 42))
    was_open = polygon_mask(FACE[eye], SIZE) > 0.99
    lum = closed.image.astype(float).mean(-1)
    skin_lum = np.mean((200, 160, 140))
    # no sclera or iris left: the old opening is skin-coloured except the lash line along the closed lid
    lash = _lid_band(closed.landmarks, LASH_HALF_WIDTH)
    bare = was_open & ~lash
    assert bare.sum() >= 10
    np.testing.assert_allclose(closed.image[bare].mean(axis=0), (200, 160, 140), atol=8)
    assert closed.image[was_open & lash].mean() < skin_lum - 40
    lid_row = int(round(closed.landmarks[[37, 38], 1].mean()))
    x = int(round(closed.landmarks[[37, 38], 0].mean()))
    assert lum[lid_row, x] < skin_lum - 40                  # the lashes at the lid's new edge
    # ... drawn opaque in the eye's own dark colour (the darkest tenth of its pixels), no lid skin showing through
    lash_colour = np.percentile(image[was_open].astype(float), 10, axis=0)
    column = closed.image[lid_row - 2:lid_row + 3, x].astype(float)
    np.testing.assert_allclose(column[np.argmin(column.mean(-1))], lash_colour, atol=4)
    opened = EDITOR.edit(image, FACE, np.zeros(17), one_hot("AU05"))    # a raised lid is left to the warp
    assert opened.lid_painted_px == 0.0


def _big_drawn_eyes(size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """A 256 px face (62 px between the eyes) of plain skin with two open eyes: white sclera, a dark iris."""
    face = synthetic_landmarks68((128.0, 116.0), 62.0).astype(np.float32)
    image = np.full((size, size, 3), (200, 160, 140), np.uint8)
    for eye in (range(36, 42), range(42, 48)):
        cv2.fillPoly(image, [np.round(face[list(eye)]).astype(np.int32)], (245, 245, 240))
        cv2.circle(image, tuple(int(v) for v in np.round(face[list(eye)].mean(axis=0))), 5, (40, 30, 20), -1)
    return image, face


def test_opening_a_closed_eye_paints_an_eyeball_not_stretched_lid_skin():
    """A closed eye (the editor's own blink, on a 256 px face) opened again: the uncovered opening shows a light
    sclera and a dark iris and pupil at its middle, with the lash line at the lid's new edge; without open_lids
    it is stretched lid skin."""
    (image, face), size, skin = _big_drawn_eyes(), 256, (200, 160, 140)
    closed = EDITOR.edit(image, face, np.zeros(17), one_hot("AU45"))
    # the lids go back where they were (the shape model's own reopening leaves the lower lid where they met)
    goal = closed.landmarks.copy()
    goal[36:48] = face[36:48]
    opened = warp_to_landmarks(closed.image, closed.landmarks, goal)
    assert opened.eye_painted_px > 100 and opened.fraction == 1.0
    eye = list(range(36, 42))
    lashes = _lid_band(opened.landmarks, _lash_half_width(face) + 1.0, size)
    inside = (polygon_mask(opened.landmarks[eye], size) > 0.99) & ~lashes
    lum = opened.image.astype(float).mean(-1)
    skin_lum = np.mean(skin)
    centre_x = opened.landmarks[[36, 39], 0].mean()
    width = opened.landmarks[39, 0] - opened.landmarks[36, 0]
    columns = np.arange(size)[None, :]
    iris = inside & (np.abs(columns - centre_x) <= 0.1 * width)
    sclera = inside & (np.abs(columns - centre_x) >= 0.3 * width)
    assert iris.sum() >= 6 and sclera.sum() >= 10
    assert lum[iris].mean() < skin_lum - 60               # dark iris and pupil in the middle
    assert lum[sclera].mean() > lum[iris].mean() + 80     # lighter sclera to the sides
    edge = np.round(opened.landmarks[[37, 38]].mean(axis=0)).astype(int)
    assert lum[edge[1], edge[0]] < skin_lum - 40          # the lashes at the lid's new edge
    stretched = warp_to_landmarks(closed.image, closed.landmarks, goal, WarpConfig(open_lids=False))
    assert stretched.eye_painted_px == 0.0
    stretched_lum = stretched.image.astype(float).mean(-1)
    assert np.abs(lum[sclera] - lum[iris].mean()).mean() > 2 * np.abs(stretched_lum[sclera] - stretched_lum[iris].mean()).mean()


def test_a_raised_lid_uncovers_the_eyeball_in_place():
    """An upper lid raised well above the iris (AU05-like): the eye the source showed stays where it was, pixel
    for pixel (the iris is not stretched upward), and the band the lid uncovers is the source eye's own sclera,
    not stretched lid skin."""
    image, face = _big_drawn_eyes()
    goal = face.copy()
    goal[[37, 38, 43, 44], 1] -= 0.15 * face_frame(face).iod_px
    raised = warp_to_landmarks(image, face, goal)
    assert raised.eye_painted_px > 50 and raised.fraction == 1.0
    eye, size = list(range(36, 42)), image.shape[0]
    half = _lash_half_width(face)
    new_lashes = _lid_band(raised.landmarks, half + 1.0, size)
    old_lashes = _lid_band(face, 1.0, size, below=2 * half + 1.0)
    kept = (polygon_mask(face[eye], size) > 0.99) & ~old_lashes & ~new_lashes
    assert kept.sum() >= 30
    np.testing.assert_array_equal(raised.image[kept], image[kept])
    uncovered = (polygon_mask(raised.landmarks[eye], size) > 0.99) & (polygon_mask(face[eye], size) < 0.01) & ~new_lashes
    columns = np.arange(size)[None, :]
    side = uncovered & (np.abs(columns - face[eye, 0].mean()) >= 6.5)   # beside the iris (radius 5)
    assert side.sum() >= 6
    np.testing.assert_allclose(raised.image[side].astype(float).mean(axis=0), (245, 245, 240), atol=35)
    stretched = warp_to_landmarks(image, face, goal, WarpConfig(open_lids=False))   # the iris drawn taller
    assert np.any(stretched.image[kept] != image[kept]) and stretched.eye_painted_px == 0.0


@pytest.mark.parametrize("config", [WarpConfig(open_lids=True), WarpConfig(open_lids=False)])
def test_opening_lids_leaves_faces_without_a_raised_lid_alone(crop, config):
    """Edits that raise no upper lid (a smile, a blink) give the same pixels with and without open_lids."""
    face = FACE
    for au in ("AU12", "AU45", "AU04"):
        a = warp_to_landmarks(crop, face, EDITOR.shape_model.target_landmarks(face, np.zeros(17), one_hot(au)),
                              config)
        b = warp_to_landmarks(crop, face, EDITOR.shape_model.target_landmarks(face, np.zeros(17), one_hot(au)),
                              WarpConfig(open_lids=not config.open_lids))
        np.testing.assert_array_equal(a.image, b.image)
        assert a.eye_painted_px == 0.0


def test_a_closing_lid_brings_down_the_skin_just_above_it():
    """Real lids sit under a shadowed fold: the closing lid carries that colour down, not a paler band.

    A 256 px face whose eye sockets are darker than the cheeks from each upper lid to 0.15 IOD above it.
    Closing the eye must fill the part of the old opening the lid slid over (above its lash line) with the
    socket's colour, the skin the lid brought down, not a paler band.
    """
    size, skin, socket = 256, (200, 160, 140), (90, 70, 60)
    face = synthetic_landmarks68((128.0, 116.0), 62.0).astype(np.float32)
    iod = face_frame(face).iod_px
    image = np.full((size, size, 3), skin, np.uint8)
    for eye in (range(36, 42), range(42, 48)):
        upper = face[list(eye)[:4]]
        cv2.fillPoly(image, [np.round(np.concatenate([upper, (upper - [0, 0.15 * iod])[::-1]])).astype(np.int32)], socket)
        cv2.fillPoly(image, [np.round(face[list(eye)]).astype(np.int32)], (245, 245, 240))
        cv2.circle(image, tuple(int(v) for v in np.round(face[list(eye)].mean(axis=0))), 5, (40, 30, 20), -1)
    closed = EDITOR.edit(image, face, np.zeros(17), one_hot("AU45"))
    eye = list(range(36, 42))
    old_lid, new_lid = face[eye[:4]], closed.landmarks[eye[:4]]
    swept = polygon_mask(np.concatenate([old_lid, (new_lid - [0, 2.0])[::-1]]), size) > 0.99
    region = (polygon_mask(face[eye], size) > 0.99) & swept     # the old opening the lid now hides, less its lashes
    assert region.sum() >= 20
    np.testing.assert_allclose(closed.image[region].mean(axis=0), socket, atol=10)


def test_impossible_motion_is_scaled_back_or_rejected(crop):
    goal = FACE.copy()
    goal[17:27, 1] += 60.0                                   # brows dragged through the eyes and mouth
    try:
        plan = plan_warp(FACE, goal, SIZE)
    except RejectError as err:
        assert err.reason == "warp_folds"
    else:
        assert plan.fraction < 1.0 and plan.min_jacobian > 0.0
    with pytest.raises(RejectError) as info:
        plan_warp(FACE, goal, SIZE, WarpConfig(min_fraction=0.99))
    assert info.value.reason == "warp_folds"


@pytest.mark.parametrize("target, reason", [
    (np.full(17, np.nan), "bad_au_target"),
    (one_hot("AU12", 1.5), "bad_au_target"),
    (-one_hot("AU12"), "bad_au_target"),
    (np.zeros(5), "bad_au_target"),
])
def test_bad_au_targets_are_specific_rejects(crop, target, reason):
    with pytest.raises(RejectError) as info:
        EDITOR.edit(crop, FACE, np.zeros(17), target)
    assert info.value.reason == reason and info.value.stage == "warp"


def test_bad_landmarks_are_specific_rejects(crop):
    line = np.stack([np.linspace(10, 110, 68), np.full(68, 60.0)], axis=1)   # collinear
    off = FACE + 200.0
    for points, reason in ((line, "landmarks_degenerate"), (off, "landmarks_off_crop"), (None, "landmarks_missing"),
                           (np.full((68, 2), np.nan), "landmarks_missing")):
        with pytest.raises(RejectError) as info:
            EDITOR.edit(crop, points, np.zeros(17), one_hot("AU12"))
        assert info.value.reason == reason


def test_batch_goes_on_past_a_bad_edit(crop):
    results = EDITOR.edit_batch([crop, crop, crop], [FACE, FACE, FACE], [None, None, None],
                                [one_hot("AU12"), one_hot("AU12", 7.0), one_hot("AU04")])
    assert isinstance(results[1], RejectError) and results[1].reason == "bad_au_target"
    assert not isinstance(results[0], RejectError) and not isinstance(results[2], RejectError)
    again = EDITOR.edit(crop, FACE, None, one_hot("AU12"))
    np.testing.assert_array_equal(again.image, results[0].image)      # deterministic


def test_the_version_names_the_shape_model_and_the_warp_revision():
    # outputs of different warp revisions (other pixels for the same points and AUs) must not share a version
    from tasks.warp import WARP_REVISION

    assert EDITOR.version == f"warp:{default_au_shape_model().version}:r{WARP_REVISION}"
    assert WARP_REVISION >= 4   # 2: the mouth fill by true area; 3: lids slide over the eye; 4: the brow band
