"""Synthetic AU renderer: determinism, identities, each AU moving its own region, and the dataset writer."""
from __future__ import annotations

import csv

import numpy as np
import pytest

from manifests.schema import AU_INDEX, AU_NAMES, EMOTIONS, N_AUS
from tasks.synthetic import (
    AU_REGIONS,
    RENDERED_AUS,
    RenderConfig,
    au_mask,
    au_region_masks,
    random_aus,
    random_identity,
    render_face,
    render_landmarks68,
    write_synthetic_dataset,
)
from tasks.targets import EMOTION_PROTOTYPES

CONFIG = RenderConfig(image_size_px=64)


def _aus(**values: float) -> np.ndarray:
    aus = np.zeros(N_AUS)
    for name, value in values.items():
        aus[AU_INDEX[name]] = value
    return aus


def _diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(a.astype(np.int16) - b.astype(np.int16)).sum(axis=-1)  # [S, S]


def test_render_is_deterministic_and_shaped():
    identity = random_identity(7)
    aus = _aus(AU12=0.4, AU25=0.7)
    first = render_face(identity, aus, CONFIG)
    assert first.shape == (64, 64, 3) and first.dtype == np.uint8
    assert np.array_equal(first, render_face(random_identity(7), aus.copy(), CONFIG))
    assert render_face(identity, aus, RenderConfig(image_size_px=96)).shape == (96, 96, 3)


def test_identities_differ_and_are_seeded():
    assert random_identity(3) == random_identity(3)
    images = [render_face(random_identity(seed), np.zeros(N_AUS), CONFIG) for seed in range(6)]
    for i in range(len(images)):
        for j in range(i + 1, len(images)):
            assert _diff(images[i], images[j]).mean() > 20, (i, j)
    styles = {random_identity(seed).hair_style for seed in range(40)}
    assert len(styles) >= 4


def test_unrendered_aus_are_ignored_and_bad_vectors_refused():
    identity = random_identity(1)
    neutral = render_face(identity, np.zeros(N_AUS), CONFIG)
    assert np.array_equal(neutral, render_face(identity, _aus(AU14=1.0, AU23=0.8, AU07=0.5), CONFIG))
    with pytest.raises(ValueError, match="shape"):
        render_face(identity, np.zeros(11), CONFIG)
    with pytest.raises(ValueError, match="AU12"):
        render_face(identity, _aus(AU12=1.5), CONFIG)
    with pytest.raises(ValueError, match="non-finite"):
        render_face(identity, _aus(AU12=float("nan")), CONFIG)


@pytest.mark.parametrize("seed", [0, 11, 23])
def test_each_au_changes_only_its_regions(seed):
    identity = random_identity(seed)
    neutral = render_face(identity, np.zeros(N_AUS), CONFIG)
    regions = au_region_masks(identity, CONFIG)
    for name in RENDERED_AUS:
        diff = _diff(render_face(identity, _aus(**{name: 1.0}), CONFIG), neutral)
        inside = au_mask([name], identity, CONFIG)
        assert diff[inside].mean() > 0.5, f"{name} barely changes its region"
        assert diff[~inside].sum() == 0, f"{name} changes pixels outside {AU_REGIONS[name]}"
        # Cross-checks with regions far from the AU: the mouth does not move the eyes and vice versa.
        if name in ("AU12", "AU15", "AU25", "AU26"):
            assert diff[regions["eyes"]].sum() == 0 and diff[regions["brows"]].sum() == 0
        if name in ("AU01", "AU02", "AU04", "AU05", "AU45"):
            assert diff[regions["mouth"]].sum() == 0


def test_intensity_moves_the_image_smoothly():
    identity = random_identity(5)
    steps = [render_face(identity, _aus(AU12=v), CONFIG) for v in np.linspace(0.0, 1.0, 6)]
    jumps = [_diff(a, b).sum() for a, b in zip(steps[:-1], steps[1:])]
    total = _diff(steps[0], steps[-1]).sum()
    assert all(j > 0 for j in jumps)
    assert max(jumps) < 0.5 * total  # no single fifth of the range does most of the change


def test_region_masks_are_inside_the_image_and_ordered():
    identity = random_identity(2)
    masks = au_region_masks(identity, CONFIG)
    rows = {name: np.nonzero(mask.any(axis=1))[0].mean() for name, mask in masks.items()}
    assert rows["brows"] < rows["eyes"] < rows["nose"] < rows["mouth"] < rows["jaw"]
    assert all(mask.any() and not mask.all() for mask in masks.values())


def test_random_aus_are_plausible_and_seeded():
    rng = np.random.default_rng(0)
    draws = np.stack([random_aus(rng) for _ in range(400)])
    assert draws.shape == (400, N_AUS)
    rendered = [AU_INDEX[a] for a in RENDERED_AUS]
    others = [i for i in range(N_AUS) if i not in rendered]
    assert np.all(draws[:, others] == 0.0)
    assert np.all((draws >= 0.0) & (draws <= 1.0))
    # Sparse (most AUs off in a face), yet every rendered AU is used across faces.
    assert 0.05 < (draws[:, rendered] > 0).mean() < 0.5
    assert np.all((draws[:, rendered] > 0).mean(axis=0) > 0.05)
    for a, b in (("AU05", "AU45"), ("AU12", "AU15")):
        assert not np.any((draws[:, AU_INDEX[a]] > 0) & (draws[:, AU_INDEX[b]] > 0))
    again = np.random.default_rng(0)
    assert np.array_equal(np.stack([random_aus(again) for _ in range(400)]), draws)


def _ground_truth(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_dataset_writer_folders_goes_through_ingest_and_openface(tmp_path):
    from tasks.ingest import ingest_dataset
    from tasks.openface import find_au_file, read_openface_csv

    written = write_synthetic_dataset(tmp_path / "ds", n_identities=5, per_identity=3, seed=4,
                                      config=RenderConfig(image_size_px=48))
    assert written.n_images == 15
    assert not set(written.identities["train"]) & set(written.identities["test"])
    assert len(written.identities["test"]) == 1 and len(written.identities["train"]) == 4
    ingested = ingest_dataset(written.images_root)
    assert not ingested.rejects
    assert {s: sum(c.values()) for s, c in ingested.counts().items()} == {"train": 12, "test": 3}
    truth = {row["name"]: row for row in _ground_truth(written.ground_truth_csv)}
    assert len(truth) == 15
    for record in ingested.records:
        stem = record.path.rsplit("/", 1)[-1].removesuffix(".png")
        row = truth[stem]
        assert record.split == row["split"] and record.label == int(row["label"])
        expected = np.array([float(row[name]) for name in AU_NAMES])
        reading = read_openface_csv(find_au_file(stem, written.openface_dir))
        np.testing.assert_allclose(reading.values, expected, atol=1e-6)
        # The CSV carries the face's exact 68 points (those of its identity and AUs).
        exact = render_landmarks68(random_identity(int(row["identity_seed"])), expected, RenderConfig(image_size_px=48))
        np.testing.assert_allclose(reading.landmarks68, exact, atol=1e-4)
        # Emotion faces show their own prototype: exactly its rendered AUs are on.
        on = {AU_NAMES[i] for i in np.nonzero(expected)[0]}
        assert on == set(EMOTION_PROTOTYPES[record.label]) & set(RENDERED_AUS)
        assert EMOTIONS[record.label] in record.path


def test_dataset_writer_rafdb_layout_and_determinism(tmp_path):
    from tasks.ingest import ingest_dataset

    a = write_synthetic_dataset(tmp_path / "a", 4, 2, seed=9, config=RenderConfig(image_size_px=32), layout="rafdb",
                                au_mode="random")
    b = write_synthetic_dataset(tmp_path / "b", 4, 2, seed=9, config=RenderConfig(image_size_px=32), layout="rafdb",
                                au_mode="random")
    ingested = ingest_dataset(a.images_root)
    assert ingested.layout == "rafdb" and not ingested.rejects and len(ingested.records) == 8
    assert a.ground_truth_csv.read_text() == b.ground_truth_csv.read_text()
    assert a.identities == b.identities
    with pytest.raises(FileExistsError):
        write_synthetic_dataset(tmp_path / "a", 4, 2, seed=9, config=RenderConfig(image_size_px=32))


# ---------------------------------------------------------------- exact landmarks


def test_landmarks_are_the_ibug_layout_on_the_image():
    for seed in range(6):
        points = render_landmarks68(random_identity(seed), np.zeros(N_AUS), CONFIG)
        assert points.shape == (68, 2) and points.dtype == np.float32
        assert ((points > 0) & (points < CONFIG.image_size_px - 1)).all()
        y = lambda group, points=points: points[group, 1].mean()  # noqa: E731
        assert y(slice(17, 27)) < y(slice(36, 48)) < points[30, 1] < y(slice(48, 68)) < points[8, 1]
        assert points[0, 0] < points[8, 0] < points[16, 0]                       # jaw: image-left to right
        assert points[17, 0] < points[21, 0] < points[22, 0] < points[26, 0]     # brows: outer-inner | inner-outer
        assert points[36, 0] < points[39, 0] < points[42, 0] < points[45, 0]     # eye corners
        assert points[48, 0] < points[51, 0] < points[54, 0] and points[51, 1] < points[57, 1]
        np.testing.assert_array_equal(points, render_landmarks68(random_identity(seed), np.zeros(N_AUS), CONFIG))


def _moved(seed: int, **aus: float) -> np.ndarray:
    """How each point moves [68, 2] (px, y down) when the AUs go from 0 to the given values."""
    identity = random_identity(seed)
    return render_landmarks68(identity, _aus(**aus), CONFIG) - render_landmarks68(identity, _aus(), CONFIG)


@pytest.mark.parametrize("seed", [0, 7])
def test_landmarks_move_the_way_each_au_moves_the_drawing(seed):
    inner_brows, outer_brows = [21, 22], [17, 26]
    upper_lids, lower_lids = [37, 38, 43, 44], [40, 41, 46, 47]
    corners = [48, 54]
    out_x = np.array([-1.0, 1.0])  # outward = away from the midline, for the image-left / right point
    d = _moved(seed, AU01=1.0)
    assert (d[inner_brows, 1] < -1.0).all() and np.abs(d[:17]).max() == 0 and np.abs(d[27:]).max() == 0
    d = _moved(seed, AU02=1.0)
    assert (d[outer_brows, 1] < -1.0).all() and (d[outer_brows, 1] < d[inner_brows, 1]).all()
    d = _moved(seed, AU04=1.0)
    assert (d[inner_brows, 1] > 1.0).all() and (d[inner_brows, 0] * out_x < 0).all()  # down and together
    d = _moved(seed, AU05=1.0)
    assert (d[upper_lids, 1] < -0.5).all() and np.abs(d[lower_lids]).max() == 0
    identity = random_identity(seed)
    closed = render_landmarks68(identity, _aus(AU45=1.0), CONFIG)
    np.testing.assert_allclose(closed[upper_lids], closed[lower_lids][[1, 0, 3, 2]], atol=1e-4)  # lids meet
    d = _moved(seed, AU12=1.0)
    assert (d[corners, 1] < -1.0).all() and (d[corners, 0] * out_x > 0.5).all()  # up and outward
    d = _moved(seed, AU15=1.0)
    assert (d[corners, 1] > 1.0).all()
    d = _moved(seed, AU25=1.0)
    opened = render_landmarks68(identity, _aus(AU25=1.0), CONFIG)
    assert opened[66, 1] - opened[62, 1] > 1.0 and np.abs(d[:17]).max() == 0  # lips part, jaw stays
    d = _moved(seed, AU26=1.0)
    assert d[8, 1] > 2.0 and d[57, 1] > 2.0 and abs(d[27, 1]) == 0  # chin and lower lip drop, the nose stays


def test_landmarks_land_on_the_drawn_features():
    """Read the unlit rendering's colour under the points: brows on brow, lips on lip, eye centres in the eye."""
    import dataclasses

    config = RenderConfig(image_size_px=128)
    for seed, aus in ((3, _aus()), (5, _aus(AU12=1.0, AU25=0.6)), (11, _aus(AU15=0.8, AU04=1.0, AU26=1.0))):
        identity = dataclasses.replace(random_identity(seed), light_strength=0.0)
        image = render_face(identity, aus, config).astype(np.float64)
        points = render_landmarks68(identity, aus, config)
        palette = identity.palette
        named = {"skin": palette.skin, "brow": palette.brow, "lips": palette.lips, "sclera": palette.sclera,
                 "iris": palette.iris, "hair": palette.hair}

        def nearest(xy, image=image, named=named) -> str:
            colour = image[int(round(xy[1])), int(round(xy[0]))]
            return min(named, key=lambda k: np.linalg.norm(colour - np.asarray(named[k])))

        for i in (18, 19, 20, 23, 24, 25):
            assert nearest(points[i]) in ("brow", "hair"), (seed, i, nearest(points[i]))  # hair: brow colour can match
        for upper, lower in ((51, 62), (57, 66)):  # the middle of the upper and of the lower lip
            assert nearest((points[upper] + points[lower]) / 2) == "lips", (seed, upper, lower)
        for corner, inward in ((48, 1.0), (54, -1.0)):  # lip just inside the corner, none just outside it
            inside = [nearest(points[corner] + [inward * dx, dy]) for dx in (1, 2, 3) for dy in (-2, -1, 0, 1, 2)]
            outside = [nearest(points[corner] - [inward * 2.5, dy]) for dy in (-1, 0, 1)]
            assert "lips" in inside and "lips" not in outside, (seed, corner, inside, outside)
        for eye in (slice(36, 42), slice(42, 48)):
            assert nearest(points[eye].mean(axis=0)) in ("sclera", "iris") or image[
                tuple(np.round(points[eye].mean(axis=0)[::-1]).astype(int))].sum() < 150  # the pupil
        assert nearest(points[30]) == "skin"
