"""The warp headroom tool's pieces: the renderer's expression lines, and the warp to the renderer's true landmarks."""
from __future__ import annotations

import numpy as np

from benchmarks.warp_headroom import expression_lines
from manifests.schema import AU_INDEX, N_AUS
from tasks.synthetic import RenderConfig, random_identity, render_face, render_landmarks68
from tasks.warp import warp_to_landmarks

RENDER = RenderConfig(64)


def aus(**values: float) -> np.ndarray:
    v = np.zeros(N_AUS)
    for name, value in values.items():
        v[AU_INDEX[name]] = value
    return v


def test_expression_lines_are_zero_without_a_change_and_darken_the_forehead_for_au01():
    identity = random_identity(3)
    np.testing.assert_array_equal(expression_lines(identity, aus(AU12=0.5), aus(AU12=0.5), RENDER), 0.0)
    lines = expression_lines(identity, aus(), aus(AU01=1.0), RENDER).mean(axis=-1)     # [S, S]
    brows_y = render_landmarks68(identity, aus(), RENDER)[17:27, 1].min()
    assert lines.min() < -3.0                                                # darker lines appear ...
    assert np.abs(lines[int(np.ceil(brows_y)):]).max() < 1.0                 # ... above the brows only


def test_the_warp_to_the_true_landmarks_moves_the_renderers_points_there():
    identity = random_identity(5)
    source, target = aus(), aus(AU26=1.0, AU12=0.8)
    image = render_face(identity, source, RENDER)
    goal = render_landmarks68(identity, target, RENDER)
    result = warp_to_landmarks(image, render_landmarks68(identity, source, RENDER), goal)
    np.testing.assert_allclose(result.landmarks, goal, atol=1e-3)
    assert result.fraction == 1.0
    # closer to the true re-render than the unedited face, where the mouth and jaw moved
    truth = render_face(identity, target, RENDER).astype(float)
    assert np.abs(result.image - truth).mean() < 0.8 * np.abs(image - truth).mean()
