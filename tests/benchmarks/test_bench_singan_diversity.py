"""Issue 14's benchmark helpers: the bench-only landmark check, the stand-in warp edit, sample metrics and
saved one-face banks (tiny seeded models)."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

pytest.importorskip("dlib")

from benchmarks.bench_singan import load_saved_bank, sample_metrics, train_saved_bank  # noqa: E402
from benchmarks.landmarks_bench import face_box, landmark_shift_px, landmarks68, local_warp_edit  # noqa: E402
from models.singan import preset, regenerate  # noqa: E402


@pytest.fixture(scope="module")
def face64(astronaut_rgb) -> np.ndarray:
    from tasks.align import AlignConfig, FaceAligner

    return FaceAligner(AlignConfig(image_size_px=64), device="cpu").align([astronaut_rgb])[0].crop


def test_landmark_shift_measures_a_known_translation(face64):
    assert landmark_shift_px([face64], face64) == [0.0]
    right = np.roll(face64, 2, axis=1)  # the whole face 2 px to the right
    shift = landmark_shift_px([right], face64)[0]
    assert 1.5 < shift < 2.5
    points = landmarks68(face64, face_box(face64))
    assert points.shape == (68, 2) and points[36, 0] < points[45, 0]  # right eye corner left of the left one


def test_warp_edit_moves_the_mouth_corners_up_and_little_else(face64):
    edited = local_warp_edit(face64, "smile")
    box = face_box(face64)
    before, after = landmarks68(face64, box), landmarks68(edited, box)
    assert (after[[48, 54], 1] - before[[48, 54], 1]).mean() < -0.8  # up (y grows downwards)
    assert np.abs(after[:17] - before[:17]).mean() < 0.5  # the jaw line stays
    assert np.array_equal(edited, local_warp_edit(face64, "smile"))  # deterministic


def test_sample_metrics_of_copies_and_of_noisy_samples(face64):
    copies = sample_metrics(np.stack([face64] * 3), face64)
    assert copies["blurred_diversity"] == 0.0 and copies["ssim"] == pytest.approx(1.0)
    assert copies["landmark_px"] == 0.0 and copies["landmark_within_2px"] == 1.0
    rng = np.random.default_rng(0)
    noisy = np.stack([np.clip(face64 + rng.normal(0, 12, face64.shape), 0, 255).astype(np.uint8) for _ in range(3)])
    m = sample_metrics(noisy, face64)
    assert m["raw_diversity"] > 4 * m["blurred_diversity"] > 0  # grain: the blur removes most of it
    assert m["ssim"] < 0.9 and m["realism"] > copies["realism"]


def test_saved_bank_round_trip(tmp_path):
    cfg = dataclasses.replace(preset("tiny"), iters_per_scale=2)
    image = np.random.default_rng(1).integers(0, 256, (20, 20, 3), dtype=np.uint8)
    meta = train_saved_bank(image, cfg, 5, tmp_path / "b.pt")
    assert meta["cpu_s"] > 0 and meta["seed"] == 5
    bank, meta2 = load_saved_bank(tmp_path / "b.pt")
    assert meta2["cpu_s"] == meta["cpu_s"] and bank.config == cfg
    x = torch.from_numpy(image).permute(2, 0, 1).float() / 127.5 - 1
    a = regenerate(bank, 0, x, 0, 2, [1, 2])
    assert a.shape == (2, 3, 20, 20)
    assert train_saved_bank(image, cfg, 6, tmp_path / "b.pt")["seed"] == 5  # an existing bank is kept
