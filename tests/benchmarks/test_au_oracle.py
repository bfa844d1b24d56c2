"""AU oracle network: shapes, output range, config validation, seeded init, input checks."""
from __future__ import annotations

import pytest
import torch

from benchmarks.au_oracle import AUOracle, AUOracleConfig

pytestmark = pytest.mark.usefixtures("one_thread")


TINY = AUOracleConfig(image_size_px=32, au_names=("AU01", "AU12", "AU45"), stem_width=4, widths=(8, 8), hidden=16)


def test_output_shape_and_range():
    torch.manual_seed(0)
    oracle = AUOracle(TINY).eval()
    out = oracle(torch.rand(5, 3, 32, 32) * 2 - 1)
    assert out.shape == (5, 3)
    assert torch.all((out >= 0) & (out <= 1))


def test_default_config_builds_for_128px():
    config = AUOracleConfig()
    assert config.image_size_px == 128 and config.n_aus == 11 and config.downsample == 32
    out = AUOracle(config).eval()(torch.zeros(2, 3, 128, 128))
    assert out.shape == (2, 11)


def test_seeded_init_is_reproducible_and_eval_is_batch_independent():
    torch.manual_seed(3)
    a = AUOracle(TINY).eval()
    torch.manual_seed(3)
    b = AUOracle(TINY).eval()
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    assert torch.equal(a(x), b(x))
    # In eval mode BatchNorm uses running statistics: one image scores the same alone or in a batch.
    torch.testing.assert_close(a(x[:1]), a(x)[:1])


def test_input_checks():
    oracle = AUOracle(TINY)
    with pytest.raises(ValueError, match=r"\[B, 3, 32, 32\]"):
        oracle(torch.zeros(2, 3, 64, 64))
    with pytest.raises(ValueError, match=r"\[B, 3, 32, 32\]"):
        oracle(torch.zeros(3, 32, 32))


@pytest.mark.parametrize("kwargs, match", [
    ({"image_size_px": 40}, "multiple of"),
    ({"au_names": ()}, "empty"),
    ({"au_names": ("AU01", "AU01")}, "repeats"),
    ({"widths": ()}, "at least one stage"),
    ({"hidden": 0}, "hidden"),
])
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AUOracleConfig(**kwargs)


def test_a_few_steps_lower_the_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    oracle = AUOracle(TINY)
    x = torch.rand(16, 3, 32, 32) * 2 - 1
    y = torch.rand(16, 3)
    optimizer = torch.optim.Adam(oracle.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = torch.nn.functional.mse_loss(oracle(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
