"""Guidance maths: parameterisation round trips, the tempered classifier gradient, classifier-free mixing."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from common.diffusion import (
    apply_classifier_guidance,
    classifier_free,
    from_epsilon,
    log_likelihood_gradient,
    to_epsilon,
)
from common.schedulers import build_scheduler
from tests.shared_data import bundle_module

DIFFUSE_EXPAND = bundle_module("diffuse_expand", "diffuse_expand")
bernoulli_log_likelihood = DIFFUSE_EXPAND.bernoulli_log_likelihood


class ToySegmenter(nn.Module):
    """A small smooth (tanh) convolutional segmenter with a task logit, in float64 for finite differences."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1).double()
        self.conv2 = nn.Conv2d(4, 1, 3, padding=1).double()
        self.linear = nn.Linear(4, 1).double()

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.tanh(self.conv1(x))
        return self.conv2(h) * 3, self.linear(h.mean(dim=(2, 3))).squeeze(1)


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction", "sample"])
def test_epsilon_round_trip_for_each_parameterisation(kind):
    scheduler = build_scheduler("ddim", prediction_type=kind)
    x0, eps = torch.randn(3, 1, 8, 8, dtype=torch.float64), torch.randn(3, 1, 8, 8, dtype=torch.float64)
    t = torch.tensor([10, 500, 990])
    alpha_bar = scheduler.alphas_cumprod.double()[t]
    x_t = alpha_bar.sqrt().view(-1, 1, 1, 1) * x0 + (1 - alpha_bar).sqrt().view(-1, 1, 1, 1) * eps
    output = {"epsilon": eps, "v_prediction": scheduler.get_velocity(x0, eps, t), "sample": x0}[kind]
    torch.testing.assert_close(to_epsilon(x_t, output, alpha_bar, kind), eps)
    torch.testing.assert_close(from_epsilon(x_t, eps, alpha_bar, kind), output)


def test_classifier_free_interpolates_and_extrapolates():
    cond, uncond = torch.full((2,), 3.0), torch.full((2,), 1.0)
    assert torch.equal(classifier_free(cond, uncond, 1.0), cond)
    assert torch.equal(classifier_free(cond, uncond, 0.0), uncond)
    assert torch.equal(classifier_free(cond, uncond, 2.0), torch.full((2,), 5.0))


def test_tempered_log_likelihood_is_the_bernoulli_log_probability():
    logits, target = torch.randn(2, 1, 4, 4, dtype=torch.float64), (torch.rand(2, 1, 4, 4) > 0.5).double()
    for tau in (1.0, 0.5, 1 / 3):
        p = torch.sigmoid(logits / tau)
        expected = (target * p.log() + (1 - target) * (1 - p).log()).flatten(1).sum(1)
        torch.testing.assert_close(bernoulli_log_likelihood(logits, target, tau), expected)
    with pytest.raises(ValueError, match="temperature"):
        bernoulli_log_likelihood(logits, target, 0.0)


def test_structure_loss_is_area_normalised_and_rewards_the_mask():
    """The authors' guidance loss: perfect logits score near 0, wrong ones near -2 (BCE + IoU terms), and the value
    does not grow with the image size as the pixel sum does."""
    structure = DIFFUSE_EXPAND.structure_log_likelihood
    scores = {}
    for size in (16, 64):
        mask = torch.zeros(1, 1, size, size, dtype=torch.float64)
        mask[..., size // 4 : size // 2, size // 4 : size // 2] = 1
        right, wrong = 20 * (2 * mask - 1), -20 * (2 * mask - 1)
        scores[size] = (structure(right, mask).item(), structure(wrong, mask).item())
        summed = bernoulli_log_likelihood(wrong, mask).item()
        assert summed < -15 * size * size  # the pixel sum grows with the area...
    assert scores[16] == pytest.approx(scores[64], abs=0.05)  # ...the structure loss does not
    assert scores[64][0] > -0.01 and scores[64][1] < -1.5
    logits = torch.zeros(1, 1, 16, 16, dtype=torch.float64, requires_grad=True)
    mask = torch.zeros(1, 1, 16, 16, dtype=torch.float64)
    mask[..., 4:8, 4:8] = 1
    (grad,) = torch.autograd.grad(structure(logits, mask).sum(), logits)
    assert (grad[mask > 0] > 0).all() and (grad[mask == 0] < 0).all()  # ascent raises the mask, lowers the rest
    with pytest.raises(ValueError, match="temperature"):
        structure(logits, mask, 0.0)


@pytest.mark.parametrize("tau", [1.0, 0.5, 1 / 3])
def test_guidance_gradient_matches_finite_differences(tau):
    segmenter = ToySegmenter()
    x = torch.randn(2, 1, 5, 5, dtype=torch.float64)
    t = torch.zeros(2, dtype=torch.long)
    mask = (torch.rand(2, 1, 5, 5) > 0.5).double()

    def log_likelihood(z: torch.Tensor) -> torch.Tensor:
        logits, task = segmenter(z, t)
        return bernoulli_log_likelihood(task[:, None], torch.ones(2, 1), tau) + bernoulli_log_likelihood(
            logits, mask, tau
        )

    grad = log_likelihood_gradient(log_likelihood, x)
    h = 1e-6
    numeric = torch.zeros_like(x)
    with torch.no_grad():
        for idx in range(x.numel()):
            step = torch.zeros_like(x).flatten()
            step[idx] = h
            step = step.view_as(x)
            numeric.view(-1)[idx] = (log_likelihood(x + step) - log_likelihood(x - step)).sum() / (2 * h)
    torch.testing.assert_close(grad, numeric, rtol=1e-6, atol=1e-8)


def test_tau_one_scale_one_is_plain_classifier_guidance():
    """tau = 1, s = 1 is Dhariwal & Nichol: eps - sqrt(1 - alpha_bar) grad log p(y | x_t), log p from softmax."""
    segmenter = ToySegmenter()
    x = torch.randn(2, 1, 6, 6, dtype=torch.float64)
    t = torch.zeros(2, dtype=torch.long)
    mask = (torch.rand(2, 1, 6, 6) > 0.5).long()
    eps, alpha_bar = torch.randn_like(x), torch.tensor(0.3, dtype=torch.float64)

    def tempered(z):
        return bernoulli_log_likelihood(segmenter(z, t)[0], mask, 1.0)

    ours = apply_classifier_guidance(eps, log_likelihood_gradient(tempered, x), alpha_bar, scale=1.0)

    # independent reference: a 2-class softmax classifier per pixel with logits (0, f), its log-probability of the mask
    z = x.clone().requires_grad_(True)
    logits = segmenter(z, t)[0]
    two_class = torch.cat([torch.zeros_like(logits), logits], dim=1)
    log_p = F.log_softmax(two_class, dim=1).gather(1, mask).sum()
    (reference_grad,) = torch.autograd.grad(log_p, z)
    torch.testing.assert_close(ours, eps - (1 - alpha_bar).sqrt() * reference_grad)


def test_temperature_differs_from_scale_as_lemma_3_3_says():
    """1/tau = s >= 1: the tempered gradient exceeds the s-scaled one where the target logit is low, not where high."""
    logit = torch.linspace(-6, 6, 25, dtype=torch.float64).requires_grad_(True)
    s = 3.0
    (scaled,) = torch.autograd.grad(s * F.logsigmoid(logit).sum(), logit)
    (tempered,) = torch.autograd.grad(F.logsigmoid(logit * s).sum(), logit)
    low, high = logit < -1, logit > 1
    assert (tempered[low] > scaled[low]).all()
    assert (tempered[high] < scaled[high]).all()
    expected = F.logsigmoid(s * logit.detach()).sum()[None]
    torch.testing.assert_close(bernoulli_log_likelihood(logit[None].detach(), torch.ones(1, 25), 1 / s), expected)
