"""Classifier-free and classifier guidance for diffusion sampling, in one parameterisation-agnostic form.

Guidance acts on the noise estimate: Dhariwal & Nichol (2021) turn a classifier ``p(y | x_t)`` into

    eps_hat = eps - s * sqrt(1 - alpha_bar_t) * grad_x log p(y | x_t)

which is the score of ``p(x_t) p(y | x_t)^s``. The networks here may predict epsilon, the velocity or x0, so
:func:`to_epsilon` / :func:`from_epsilon` convert a model output to epsilon and back; the guided output then goes to
any scheduler (MONAI's DDIM/DDPM or diffusers' DPM-Solver++) in the parameterisation it was configured with.

DiffuseExpand (Lemma 3.3) adds a temperature tau on the classifier logits, ``log p(y | f(x_t) / tau)``, which keeps
the probabilities normalised where a plain scale ``s`` does not. Its guidance sums two terms: the task head
(``log p(y1 | x_t)``, "is this a mask or an image") and the pixel-wise segmentation of the image given the mask being
followed (``log p(y2 = mask | x_t, y1)``, a Bernoulli log-likelihood summed over pixels).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from common.paired_model import PREDICTION_TYPES, predict_x0

__all__ = [
    "to_epsilon",
    "from_epsilon",
    "classifier_free",
    "bernoulli_log_likelihood",
    "log_likelihood_gradient",
    "apply_classifier_guidance",
]


def _alpha(alpha_bar: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(alpha_bar, device=like.device).to(like.dtype).reshape(-1, *([1] * (like.ndim - 1)))


def to_epsilon(
    sample: torch.Tensor, model_output: torch.Tensor, alpha_bar: torch.Tensor, prediction_type: str = "epsilon"
) -> torch.Tensor:
    """The noise estimate implied by a model output of any parameterisation at ``x_t = sample``."""
    if prediction_type == "epsilon":
        return model_output
    a = _alpha(alpha_bar, sample)
    x0 = predict_x0(sample, model_output, alpha_bar, prediction_type)
    return (sample - a.sqrt() * x0) / (1 - a).sqrt()


def from_epsilon(
    sample: torch.Tensor, eps: torch.Tensor, alpha_bar: torch.Tensor, prediction_type: str = "epsilon"
) -> torch.Tensor:
    """The inverse of :func:`to_epsilon`: express a (guided) noise estimate as ``prediction_type``."""
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got '{prediction_type}'.")
    if prediction_type == "epsilon":
        return eps
    a = _alpha(alpha_bar, sample)
    x0 = (sample - (1 - a).sqrt() * eps) / a.sqrt()
    if prediction_type == "sample":
        return x0
    return a.sqrt() * eps - (1 - a).sqrt() * x0


def classifier_free(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """``uncond + scale * (cond - uncond)``: scale 1 is the conditional model, 0 the unconditional one.

    Linear in the output, so it holds for epsilon, velocity and x0 predictions alike."""
    return uncond + scale * (cond - uncond)


def bernoulli_log_likelihood(logits: torch.Tensor, target: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Per-sample ``sum log p(target | sigmoid(logits / temperature))`` over all non-batch dimensions.

    ``target`` holds probabilities in [0, 1] (a binary mask, or the task label 0/1); shape broadcastable to logits.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}.")
    scaled = logits / temperature
    target = torch.as_tensor(target, dtype=scaled.dtype, device=scaled.device).expand_as(scaled)
    return -F.binary_cross_entropy_with_logits(scaled, target, reduction="none").flatten(1).sum(1)


def log_likelihood_gradient(
    log_likelihood: Callable[[torch.Tensor], torch.Tensor], sample: torch.Tensor
) -> torch.Tensor:
    """``grad_x sum_b log_likelihood(x)_b`` at ``x = sample``: per-sample gradients, as samples are independent."""
    with torch.enable_grad():
        x = sample.detach().requires_grad_(True)
        total = log_likelihood(x).sum()
        (grad,) = torch.autograd.grad(total, x)
    return grad.detach()


def apply_classifier_guidance(
    eps: torch.Tensor, gradient: torch.Tensor, alpha_bar: torch.Tensor, scale: float = 1.0
) -> torch.Tensor:
    """``eps - scale * sqrt(1 - alpha_bar) * grad log p(y | x_t)`` (Dhariwal & Nichol, Alg. 2 for DDIM)."""
    return eps - scale * (1 - _alpha(alpha_bar, eps)).sqrt() * gradient
