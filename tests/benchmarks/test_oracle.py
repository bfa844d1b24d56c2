"""AU oracle training and evaluation on renders: shapes, error maths, checkpoints, and (slow) real quality."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks.au_oracle import AUOracle, AUOracleConfig
from benchmarks.oracle import (
    OracleTrainConfig,
    au_error,
    au_errors,
    constant_predictor_errors,
    images_to_tensor,
    load_oracle,
    predict_aus,
    render_heldout_set,
    render_training_set,
    save_oracle,
    small_oracle_config,
    train_oracle,
)
from manifests.schema import AU_INDEX, N_AUS
from models.checkpoints import CheckpointError
from tasks.synthetic import RENDERED_AUS, RenderConfig

pytestmark = pytest.mark.usefixtures("one_thread")


TINY = OracleTrainConfig(
    model=AUOracleConfig(image_size_px=32, stem_width=8, widths=(16, 16), hidden=32),
    render=RenderConfig(image_size_px=32, supersample=2),
    n_heldout=24, n_edit_pairs=16, epochs=4, batch_size=16, learning_rate=3e-3,
)


def _tiny_oracle(seed: int = 0) -> AUOracle:
    torch.manual_seed(seed)
    return AUOracle(TINY.model).eval()


def test_default_oracle_predicts_exactly_the_rendered_aus():
    assert AUOracleConfig().au_names == RENDERED_AUS


def test_config_checks():
    with pytest.raises(ValueError, match="image_size_px"):
        OracleTrainConfig(model=AUOracleConfig(image_size_px=64, widths=(16, 16)), render=RenderConfig(32))
    with pytest.raises(ValueError, match="does not move"):
        OracleTrainConfig(model=AUOracleConfig(image_size_px=32, au_names=("AU14",), widths=(8, 8)),
                          render=RenderConfig(32))
    assert small_oracle_config(64).widths == (32, 48, 64)
    assert small_oracle_config(128).downsample == 32
    with pytest.raises(ValueError):
        small_oracle_config(48)


def test_training_and_heldout_sets_are_seeded_and_use_different_identities():
    images, aus = render_training_set(6, 1, TINY)
    again, aus_again = render_training_set(6, 1, TINY)
    assert images.shape == (6, 32, 32, 3) and aus.shape == (6, N_AUS)
    assert np.array_equal(images, again) and np.array_equal(aus, aus_again)
    held_images, _ = render_heldout_set(6, 1, TINY)
    assert not any(np.array_equal(a, b) for a in images for b in held_images)


def test_au_error_is_the_mean_abs_difference_over_the_oracles_aus():
    oracle = _tiny_oracle()
    images, aus = render_training_set(5, 2, TINY)
    predicted = predict_aus(oracle, images)
    cols = [AU_INDEX[a] for a in TINY.model.au_names]
    others = [i for i in range(N_AUS) if i not in cols]
    assert np.all(np.isnan(predicted[:, others])) and not np.any(np.isnan(predicted[:, cols]))
    by_hand = np.abs(predicted[:, cols] - aus[:, cols]).mean(axis=1)
    np.testing.assert_allclose(au_errors(oracle, images, aus), by_hand, rtol=1e-12)
    assert au_error(oracle, images, aus) == pytest.approx(by_hand.mean())
    # Values in AUs the oracle does not predict do not count.
    noisy = aus.copy()
    noisy[:, others] = 0.9
    assert au_error(oracle, images, noisy) == pytest.approx(by_hand.mean())
    # uint8 images and [-1, 1] tensors are the same input.
    assert au_error(oracle, images_to_tensor(images), torch.from_numpy(aus)) == pytest.approx(by_hand.mean(), rel=1e-6)
    with pytest.raises(ValueError, match="targets"):
        au_error(oracle, images, aus[:, :11])
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        au_error(oracle, images_to_tensor(images) * 3, aus)


def test_constant_predictor_errors_by_hand():
    train = np.zeros((4, N_AUS))
    train[:, AU_INDEX["AU12"]] = [0.0, 0.0, 0.2, 1.0]
    test = np.zeros((2, N_AUS))
    test[:, AU_INDEX["AU12"]] = [0.0, 1.0]
    errors = constant_predictor_errors(train, test, ("AU12",))
    assert errors["mean_predictor_mae"] == pytest.approx((0.3 + 0.7) / 2)
    assert errors["median_predictor_mae"] == pytest.approx((0.1 + 0.9) / 2)


def test_tiny_training_run_reports_and_lowers_the_loss():
    oracle, report = train_oracle(TINY, n_train=96, seed=0)
    assert isinstance(oracle, AUOracle) and not oracle.training
    assert report["steps"] == 4 * (96 // 16)
    assert len(report["epoch_mse"]) == 4 and report["epoch_mse"][-1] < report["epoch_mse"][0]
    assert set(report["heldout_mae_per_au"]) == set(RENDERED_AUS)
    for key in ("heldout_mae", "mean_predictor_mae", "median_predictor_mae", "identity_error", "ceiling_error"):
        assert 0.0 <= report[key] <= 1.0, key
    assert report["ceiling_ratio"] == pytest.approx(report["ceiling_error"] / report["identity_error"])
    oracle_again, report_again = train_oracle(TINY, n_train=96, seed=0)
    assert report_again["epoch_mse"] == report["epoch_mse"]
    for p, q in zip(oracle.parameters(), oracle_again.parameters()):
        assert torch.equal(p, q)


def test_save_load_round_trip(tmp_path):
    oracle = _tiny_oracle(4)
    oracle.train()
    oracle(torch.rand(8, 3, 32, 32) * 2 - 1)  # move BatchNorm running stats off their defaults
    oracle.eval()
    path = save_oracle(oracle, tmp_path / "oracle", report={"heldout_mae": 0.1}, render=TINY.render)
    loaded = load_oracle(path)
    assert loaded.config == oracle.config and not loaded.training
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.equal(loaded(x), oracle(x))
    with pytest.raises(FileExistsError):
        save_oracle(oracle, path)
    with pytest.raises(CheckpointError):
        load_oracle(tmp_path / "missing")


@pytest.mark.slow
def test_oracle_learns_far_better_than_constant_predictors(tmp_path):
    torch.set_num_threads(2)
    config = OracleTrainConfig(model=small_oracle_config(64), render=RenderConfig(image_size_px=64), epochs=6)
    oracle, report = train_oracle(config, n_train=6000, seed=0)
    print({k: v for k, v in report.items() if k != "heldout_mae_per_au"})
    assert report["heldout_mae"] < 0.5 * report["mean_predictor_mae"]
    assert report["heldout_mae"] < 0.7 * report["median_predictor_mae"]
    assert max(report["heldout_mae_per_au"].values()) < report["median_predictor_mae"]
    # A perfect edit must score far better than no edit, or the oracle cannot judge edits.
    assert report["ceiling_ratio"] < 0.5
    loaded = load_oracle(save_oracle(oracle, tmp_path / "oracle", report=report, render=config.render))
    images, aus = render_heldout_set(50, 0, config)
    assert au_error(loaded, images, aus) == pytest.approx(au_error(oracle, images, aus))
