"""GANimation losses as pure functions: WGAN-GP critic, AU regression, cycle L1, attention L1 + TV."""
from __future__ import annotations

import dataclasses
from typing import Callable

import torch
import torch.nn.functional as F


@dataclasses.dataclass(frozen=True)
class LossWeights:
    """Weights of each loss term; every term below is batch-size independent (a mean over samples).

    au_regression: the paper writes 4000, but the official code applies it to an MSE that is already
        a mean and divides by the batch again (4000 / 25 = 160 at its batch of 25); the replicate uses
        160 on a plain mean. We use 160 on the plain mean, so the weight no longer depends on batch size.
    attention_tv: total variation of A as the sum of ABSOLUTE neighbour differences over the pixels of
        each image, averaged over the batch, weight 1e-4 per image. The official code sums absolute
        differences over the whole batch and weights that by 1e-5 (= 2.5e-4 per image at its batch of
        25). The paper's equation squares them (lambda_TV * E[sum_ij (A[i+1,j] - A[i,j])^2 + (A[i,j+1] -
        A[i,j])^2], as transcribed in a public review of the paper; the PDF itself was not at hand). We
        keep the absolute form because it is what the published code trains with (and what imported
        weights were trained with), and the paper's weight 1e-4 per image so the weight does not depend
        on batch size. The
        per-image sum grows with resolution (x4 per doubling), as in the official code.
    """

    adversarial: float = 1.0
    gradient_penalty: float = 10.0
    au_regression: float = 160.0
    cycle: float = 10.0
    attention: float = 0.1
    attention_tv: float = 1e-4
    # Not in the paper (0 = off): L1 between the colour map C and the input, which keeps C in the
    # input's colours where attention lets it through, against colour texture that fools the AU head.
    colour_identity: float = 0.0


def critic_wasserstein(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    """Critic's WGAN loss: push real scores up and fake scores down (means over all patches)."""
    return fake_scores.mean() - real_scores.mean()


def generator_adversarial(fake_scores: torch.Tensor) -> torch.Tensor:
    return -fake_scores.mean()


def gradient_penalty(
    critic_realness: Callable[[torch.Tensor], torch.Tensor],
    real: torch.Tensor,
    fake: torch.Tensor,
    alpha: torch.Tensor,
) -> torch.Tensor:
    """WGAN-GP: mean over samples of (||d critic / d x||_2 - 1)^2 at x = alpha * real + (1 - alpha) * fake.

    alpha: [B] or [B, 1, 1, 1] mixing weights drawn by the caller (so randomness stays an argument).
    The project adds this penalty to the WGAN + AU loss and takes ONE critic Adam step (as
    ganimation_replicate and standard WGAN-GP do); the official GANimation code instead takes a second,
    separate Adam step on the penalty alone after the WGAN + AU step.
    """
    alpha = alpha.reshape(-1, *([1] * (real.ndim - 1))).to(real.dtype)
    mixed = (alpha * real.detach() + (1.0 - alpha) * fake.detach()).requires_grad_(True)
    scores = critic_realness(mixed)
    (grad,) = torch.autograd.grad(scores.sum(), mixed, create_graph=True)
    norms = grad.flatten(1).norm(2, dim=1)  # [B]
    return ((norms - 1.0) ** 2).mean()


def au_regression(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error over samples and AUs ([B, n_aus] each)."""
    return F.mse_loss(predicted, target)


def cycle_l1(reconstructed: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """Mean absolute error between G(G(x, y_target), y_source) and x."""
    return (reconstructed - source).abs().mean()


def attention_l1(attention: torch.Tensor) -> torch.Tensor:
    """Mean of A ([B, 1, H, W], values >= 0): pushes A down so the generator cannot just copy the input."""
    return attention.mean()


def attention_tv(attention: torch.Tensor) -> torch.Tensor:
    """Total variation of A: per image, the sum of |neighbour differences| (both axes), averaged over B."""
    dx = (attention[..., :, 1:] - attention[..., :, :-1]).abs().flatten(1).sum(1)
    dy = (attention[..., 1:, :] - attention[..., :-1, :]).abs().flatten(1).sum(1)
    return (dx + dy).mean()


def teacher_l1(edited: torch.Tensor, teacher: torch.Tensor, has_teacher: torch.Tensor) -> torch.Tensor:
    """Mean absolute error between G(x, y_target) and a teacher's edit of the same (x, y_target) pair, over the
    faces that have a teacher (has_teacher [B] bool); 0 when none has one. Not in the paper: the supervised
    term of the warp teacher (tasks.train_ganimation)."""
    if not bool(has_teacher.any()):
        return edited.sum() * 0.0
    return (edited[has_teacher] - teacher[has_teacher]).abs().mean()


def critic_loss(
    real_scores: torch.Tensor,
    fake_scores: torch.Tensor,
    real_aus_predicted: torch.Tensor,
    real_aus: torch.Tensor,
    penalty: torch.Tensor,
    weights: LossWeights,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Total critic loss and its unweighted terms (WGAN, GP, AU regression on real images)."""
    terms = {
        "d_wasserstein": critic_wasserstein(real_scores, fake_scores),
        "d_gp": penalty,
        "d_au": au_regression(real_aus_predicted, real_aus),
    }
    total = (weights.adversarial * terms["d_wasserstein"] + weights.gradient_penalty * penalty
             + weights.au_regression * terms["d_au"])
    return total, terms


def generator_loss(
    fake_scores: torch.Tensor,
    fake_aus_predicted: torch.Tensor,
    target_aus: torch.Tensor,
    reconstructed: torch.Tensor,
    source: torch.Tensor,
    attentions: tuple[torch.Tensor, ...],
    weights: LossWeights,
    colour: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Total generator loss and its unweighted terms.

    colour: the forward edit's colour map C; with weights.colour_identity > 0 the term mean |C - source|
        is added (reported as g_colour).

    attentions: the masks whose L1 and TV are penalised; the official code penalises both the
        forward mask and the cycle's mask, summing their terms.
    """
    terms = {
        "g_adversarial": generator_adversarial(fake_scores),
        "g_au": au_regression(fake_aus_predicted, target_aus),
        "g_cycle": cycle_l1(reconstructed, source),
        "g_attention": sum(attention_l1(a) for a in attentions),
        "g_tv": sum(attention_tv(a) for a in attentions),
    }
    total = (weights.adversarial * terms["g_adversarial"] + weights.au_regression * terms["g_au"]
             + weights.cycle * terms["g_cycle"] + weights.attention * terms["g_attention"]
             + weights.attention_tv * terms["g_tv"])
    if weights.colour_identity:
        if colour is None:
            raise ValueError("colour_identity > 0 needs the colour map")
        terms["g_colour"] = (colour - source).abs().mean()
        total = total + weights.colour_identity * terms["g_colour"]
    return total, terms
