"""The AU shape model: FACS directions, symmetry, frame invariance, lids and lips that meet but never cross."""
from __future__ import annotations

import json

import numpy as np
import pytest

from models.au_shape import (
    AU_NAMES,
    MIRROR,
    ORDERED_PAIRS,
    AUShapeModel,
    default_au_shape_model,
    face_frame,
    keep_order,
)
from tasks.openface import synthetic_landmarks68

MODEL = default_au_shape_model()
FACE = synthetic_landmarks68((64.0, 58.0), 31.0).astype(np.float32)  # a level frontal face, IOD 31 px (a 128 px crop's)


def one_hot(name: str, value: float = 1.0) -> np.ndarray:
    v = np.zeros(17)
    v[AU_NAMES.index(name)] = value
    return v


def moved(name: str, value: float = 1.0, face: np.ndarray = FACE) -> np.ndarray:
    """[68, 2] px motion of each point for one AU from neutral."""
    return MODEL.target_landmarks(face, np.zeros(17), one_hot(name, value)) - face


def test_the_project_au_order():
    from manifests.schema import AU_NAMES as CONTRACT

    assert AU_NAMES == CONTRACT


def test_mirror_is_an_involution_and_the_basis_is_symmetric():
    assert all(MIRROR[MIRROR[i]] == i for i in range(68))
    basis = MODEL.basis
    for i in range(68):
        j = MIRROR[i]
        np.testing.assert_allclose(basis[:, j, 0], -basis[:, i, 0], atol=1e-12)
        np.testing.assert_allclose(basis[:, j, 1], basis[:, i, 1], atol=1e-12)


@pytest.mark.parametrize("name, checks", [
    ("AU01", [(21, "up"), (22, "up")]),
    ("AU02", [(17, "up"), (26, "up")]),
    ("AU04", [(21, "down"), (22, "down"), (21, "right"), (22, "left")]),     # inner brows down and together
    ("AU05", [(37, "up"), (44, "up")]),
    ("AU12", [(48, "up"), (54, "up"), (48, "left"), (54, "right")]),       # corners up and outward
    ("AU15", [(48, "down"), (54, "down")]),
    ("AU20", [(48, "left"), (54, "right")]),
    ("AU25", [(57, "down"), (66, "down")]),
    ("AU26", [(8, "down"), (57, "down")]),
    ("AU45", [(37, "down"), (38, "down"), (43, "down"), (44, "down")]),
])
def test_named_points_move_the_way_facs_says(name, checks):
    motion = moved(name)
    for point, direction in checks:
        dx, dy = motion[point]
        value = {"up": -dy, "down": dy, "left": -dx, "right": dx}[direction]
        assert value > 0.5, f"{name}: point {point} should move {direction}, moved ({dx:.2f}, {dy:.2f}) px"


def test_unnamed_regions_stay_put():
    assert np.abs(moved("AU12")[17:48]).max() == 0.0     # a smile moves no brow, nose or eye point
    assert np.abs(moved("AU01")[48:68]).max() == 0.0     # a brow raise moves no mouth point


def test_displacement_follows_the_face_frame():
    angle = np.deg2rad(20.0)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    centre = np.array([64.0, 64.0])
    turned = (FACE - centre) @ rot.T + centre
    for name in ("AU12", "AU04", "AU26"):
        np.testing.assert_allclose(moved(name, face=turned), moved(name) @ rot.T, atol=1e-4)
    bigger = (FACE - centre) * 2.0 + centre
    np.testing.assert_allclose(moved("AU12", face=bigger), 2.0 * moved("AU12"), atol=1e-4)


def test_linear_and_relative_to_the_source():
    half = MODEL.target_landmarks(FACE, np.zeros(17), one_hot("AU12", 0.5)) - FACE
    np.testing.assert_allclose(half, 0.5 * moved("AU12"), atol=1e-4)
    same = MODEL.target_landmarks(FACE, one_hot("AU12", 0.4), one_hot("AU12", 0.4))
    np.testing.assert_allclose(same, FACE, atol=1e-4)


def test_a_blink_closes_the_eye_without_passing_the_lower_lid():
    target = MODEL.target_landmarks(FACE, np.zeros(17), one_hot("AU45"))
    for upper, lower in ((37, 41), (38, 40), (43, 47), (44, 46)):
        assert target[upper, 1] <= target[lower, 1] + 1e-4
        assert target[lower, 1] - target[upper, 1] < 0.5          # closed
        assert FACE[lower, 1] - FACE[upper, 1] > 2.0               # it was open


def test_keep_order_leaves_pairs_that_were_already_crossed():
    before = face_frame(FACE).to_face(FACE)
    crossed = before.copy()
    crossed[62, 1], crossed[66, 1] = before[66, 1] + 0.01, before[62, 1]   # detector noise: lips swapped
    out = keep_order(crossed + 0.0, crossed)
    np.testing.assert_array_equal(out, crossed)
    pushed = before.copy()
    pushed[37, 1] += 1.0                                                    # upper lid driven far past the lower
    out = keep_order(pushed, before)
    assert out[37, 1] <= out[41, 1]
    for upper, lower in ORDERED_PAIRS:
        assert out[upper, 1] <= out[lower, 1] + 1e-12 or before[upper, 1] > before[lower, 1]


@pytest.mark.parametrize("narrowing", ["corners above the upper lid", "lower lid above the corners"])
def test_a_narrowed_eye_closes_between_its_lids_never_raising_the_upper_or_dropping_the_lower(narrowing):
    """Squinted CK+48 peaks: the line through the eye's corners is not between the lids. Clamping the closed lids
    to that line lifted the upper lid (commanded -0.42 px 'down' on one face) or pulled the lower lid down; a blink
    must close the eye between where its lids were."""
    before = face_frame(FACE).to_face(FACE)
    gap = before[41, 1] - before[37, 1]
    if narrowing == "corners above the upper lid":
        before[[36, 39], 1] = before[37, 1] - 0.5 * gap
    else:
        before[[36, 39], 1] = before[41, 1] + 0.5 * gap
    pushed = before.copy()
    pushed[37, 1] += 2.0 * gap          # AU45 drives the upper lid well past the lower one
    out = keep_order(pushed, before)
    assert out[37, 1] == out[41, 1]     # closed
    assert before[37, 1] <= out[37, 1] <= before[41, 1]


def test_json_round_trip_and_version():
    text = MODEL.dumps()
    again = AUShapeModel.from_json(json.loads(text))
    np.testing.assert_allclose(again.basis, MODEL.basis, atol=1e-6)
    assert again.version == MODEL.version and again.name == "facs-default-v1"
    other = AUShapeModel(basis=MODEL.basis * 1.1, name="facs-default-v1")
    assert other.version != MODEL.version
    with pytest.raises(ValueError, match="not an AU shape model"):
        AUShapeModel.from_json({"kind": "ganimation"})
    with pytest.raises(ValueError, match="AU order"):
        AUShapeModel.from_json({**json.loads(text), "au_names": list(reversed(AU_NAMES))})
    with pytest.raises(ValueError, match="basis must be"):
        AUShapeModel(basis=np.zeros((17, 5, 2)), name="x")


def test_degenerate_face_frame():
    flat = np.zeros((68, 2))
    with pytest.raises(ValueError, match="degenerate face"):
        face_frame(flat)
