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
