"""GANimation loss terms checked against hand computations on tiny tensors."""
from __future__ import annotations

import math

import pytest
import torch

from models.ganimation_losses import (
    LossWeights,
    attention_l1,
    attention_tv,
    au_regression,
    critic_loss,
    critic_wasserstein,
    cycle_l1,
    generator_adversarial,
    generator_loss,
    gradient_penalty,
)


def test_default_weights_are_the_documented_choices():
    w = LossWeights()
    assert (w.gradient_penalty, w.au_regression, w.cycle, w.attention, w.attention_tv, w.adversarial) == (
        10.0, 160.0, 10.0, 0.1, 1e-4, 1.0)


def test_wasserstein_terms():
    real = torch.tensor([1.0, 2.0, 3.0])
    fake = torch.tensor([0.5, -0.5])
    assert critic_wasserstein(real, fake).item() == pytest.approx(0.0 - 2.0)
    assert generator_adversarial(fake).item() == pytest.approx(0.0)
    assert generator_adversarial(real).item() == pytest.approx(-2.0)


def test_gradient_penalty_with_a_linear_critic():
    # f(x) = sum(w * x): the gradient is w everywhere, |w| = 3, so the penalty is (3 - 1)^2 = 4.
    w = torch.tensor([[[[1.0, 2.0], [2.0, 0.0]]]])
    real, fake = torch.randn(4, 1, 2, 2), torch.randn(4, 1, 2, 2)
    gp = gradient_penalty(lambda x: (x * w).flatten(1).sum(1), real, fake, torch.rand(4))
    assert gp.item() == pytest.approx(4.0)


def test_gradient_penalty_with_a_quadratic_critic():
    # f(x) = sum(x^2): gradient 2x at the mix. Sample 0: alpha 0.5 mixes (1,1) and (3,3) into (2,2),
    # gradient (4,4), norm 4*sqrt(2). Sample 1: alpha 1 keeps (0.3,0.4), gradient (0.6,0.8), norm 1.
    real = torch.tensor([[1.0, 1.0], [0.3, 0.4]])
    fake = torch.tensor([[3.0, 3.0], [9.0, 9.0]])
    gp = gradient_penalty(lambda x: (x ** 2).sum(1), real, fake, torch.tensor([0.5, 1.0]))
    assert gp.item() == pytest.approx(((4 * math.sqrt(2) - 1) ** 2 + 0.0) / 2, rel=1e-6)


def test_gradient_penalty_reaches_the_critic_weights():
    weight = torch.tensor([2.0, 0.0], requires_grad=True)
    gp = gradient_penalty(lambda x: x @ weight, torch.ones(3, 2), torch.zeros(3, 2), torch.rand(3))
    gp.backward()  # d/dw (|w| - 1)^2 = 2 (|w| - 1) w / |w| = (2, 0)
    torch.testing.assert_close(weight.grad, torch.tensor([2.0, 0.0]))


def test_au_cycle_and_attention_terms():
    assert au_regression(torch.tensor([[0.0, 1.0], [2.0, 2.0]]),
                         torch.tensor([[1.0, 1.0], [0.0, 2.0]])).item() == pytest.approx((1 + 0 + 4 + 0) / 4)
    assert cycle_l1(torch.tensor([1.0, -1.0, 0.5, 0.0]),
                    torch.tensor([0.0, 0.0, 0.0, 0.0])).item() == pytest.approx(2.5 / 4)
    attention = torch.tensor([[[[0.0, 1.0, 0.0], [0.0, 0.0, 0.0]]],
                              [[[0.5, 0.5, 0.5], [0.5, 0.5, 0.5]]]])  # [2, 1, 2, 3]
    assert attention_l1(attention).item() == pytest.approx(4.0 / 12)
    # Image 0: horizontal |1-0| + |0-1| = 2, vertical |0-1| = 1 -> 3. Image 1: flat -> 0. Mean 1.5.
    assert attention_tv(attention).item() == pytest.approx(1.5)


def test_total_critic_loss_weights_its_terms():
    w = LossWeights(adversarial=2.0, gradient_penalty=10.0, au_regression=100.0)
    total, terms = critic_loss(torch.tensor([1.0]), torch.tensor([0.0]), torch.tensor([[0.5]]),
                               torch.tensor([[0.0]]), torch.tensor(0.3), w)
    # 2 * (0 - 1) + 10 * 0.3 + 100 * 0.25
    assert total.item() == pytest.approx(-2.0 + 3.0 + 25.0)
    assert terms["d_au"].item() == pytest.approx(0.25) and terms["d_wasserstein"].item() == pytest.approx(-1.0)


def test_total_generator_loss_weights_its_terms():
    w = LossWeights(adversarial=1.0, au_regression=2.0, cycle=3.0, attention=0.5, attention_tv=0.25)
    a_edit = torch.tensor([[[[1.0, 0.0]]]])  # mean 0.5, tv 1
    a_cycle = torch.tensor([[[[1.0, 1.0]]]])  # mean 1, tv 0
    total, terms = generator_loss(
        fake_scores=torch.tensor([2.0]), fake_aus_predicted=torch.tensor([[1.0]]), target_aus=torch.tensor([[0.0]]),
        reconstructed=torch.tensor([0.5]), source=torch.tensor([0.0]), attentions=(a_edit, a_cycle), weights=w)
    # -2 + 2 * 1 + 3 * 0.5 + 0.5 * (0.5 + 1) + 0.25 * (1 + 0)
    assert total.item() == pytest.approx(-2 + 2 + 1.5 + 0.75 + 0.25)
    assert terms["g_attention"].item() == pytest.approx(1.5) and terms["g_tv"].item() == pytest.approx(1.0)


def test_colour_identity_term_is_off_by_default_and_weighted_when_on():
    inputs = dict(fake_scores=torch.tensor([2.0]), fake_aus_predicted=torch.tensor([[1.0]]),
                  target_aus=torch.tensor([[0.0]]), reconstructed=torch.tensor([0.5]), source=torch.tensor([0.0, 1.0]),
                  attentions=(torch.ones(1, 1, 1, 2),))
    colour = torch.tensor([0.5, 0.0])  # |C - source| = 0.5, 1 -> mean 0.75
    base, terms = generator_loss(**inputs, weights=LossWeights(), colour=colour)
    assert "g_colour" not in terms
    total, terms = generator_loss(**inputs, weights=LossWeights(colour_identity=2.0), colour=colour)
    assert terms["g_colour"].item() == pytest.approx(0.75) and total.item() == pytest.approx(base.item() + 1.5)
    with pytest.raises(ValueError, match="colour"):
        generator_loss(**inputs, weights=LossWeights(colour_identity=2.0))
