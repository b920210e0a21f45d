"""All the diffusion maths of the bundles in one place, after openai/guided-diffusion's ``gaussian_diffusion.py``.

Notation: ``alpha_bar`` is the cumulative product of ``1 - beta`` at timestep t (a scalar or one value per sample),
``x_t = sqrt(alpha_bar) x0 + sqrt(1 - alpha_bar) eps``.

* Parameterisations: a network predicts the noise (``epsilon``, DDPM), the velocity
  ``v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x0`` (``v_prediction``) or the clean sample (``sample``);
  :func:`predict_x0`, :func:`to_epsilon` and :func:`from_epsilon` convert between them, :func:`diffusion_target` is
  what a network learns to predict under a scheduler.
* Guidance (Dhariwal & Nichol 2021; Ho & Salimans 2022): :func:`classifier_free`, :func:`log_likelihood_gradient`,
  :func:`apply_classifier_guidance` act on the noise estimate, so they work with any parameterisation and scheduler.
* Posterior, reverse-process and variational-bound terms with a learned (log-range) variance (Nichol & Dhariwal
  2021): :class:`GaussianDiffusionTerms` and its helpers :func:`normal_kl`, :func:`discretized_gaussian_log_likelihood`.
  MONAI has no variational-bound loss, and its ``DDPMScheduler(variance_type="learned_range")`` interpolates the
  variances linearly, whereas improved DDPM interpolates the *log*-variances; these are improved DDPM's, in float64.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch

from common.schedulers import prediction_type

__all__ = [
    "PREDICTION_TYPES",
    "predict_x0",
    "to_epsilon",
    "from_epsilon",
    "diffusion_target",
    "classifier_free",
    "log_likelihood_gradient",
    "apply_classifier_guidance",
    "normal_kl",
    "approx_standard_normal_cdf",
    "discretized_gaussian_log_likelihood",
    "GaussianDiffusionTerms",
]

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


# --------------------------------------------------------------------------------------------------------------------
# parameterisations
# --------------------------------------------------------------------------------------------------------------------


def predict_x0(
    sample: torch.Tensor, model_output: torch.Tensor, alpha_bar: torch.Tensor, prediction_type: str = "epsilon"
) -> torch.Tensor:
    """The clean-sample estimate from a network output at ``x_t = sample``; ``alpha_bar`` is a scalar or (B,).

    ``epsilon``: x0_hat = (x_t - sqrt(1 - alpha_bar) eps) / sqrt(alpha_bar) (PIG Eq. 6; DDPM), whose error is
    amplified by 1/sqrt(alpha_bar) (x156 at t = T for the linear schedule);
    ``v_prediction``: x0_hat = sqrt(alpha_bar) x_t - sqrt(1 - alpha_bar) v, bounded at every t;
    ``sample``: the output is x0_hat.
    """
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got '{prediction_type}'.")
    alpha_bar = torch.as_tensor(alpha_bar, device=sample.device).to(sample.dtype)
    alpha_bar = alpha_bar.reshape(-1, *([1] * (sample.ndim - 1)))
    if prediction_type == "epsilon":
        return (sample - (1 - alpha_bar).sqrt() * model_output) / alpha_bar.sqrt()
    if prediction_type == "v_prediction":
        return alpha_bar.sqrt() * sample - (1 - alpha_bar).sqrt() * model_output
    return model_output


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
    x0 = predict_x0(sample, eps, a, "epsilon")
    if prediction_type == "sample":
        return x0
    return a.sqrt() * eps - (1 - a).sqrt() * x0


def diffusion_target(scheduler: Any, clean: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """What a denoiser learns to predict under ``scheduler``: the noise (DDPM), the velocity, or the clean sample."""
    kind = prediction_type(scheduler)
    if kind == "v_prediction":
        return scheduler.get_velocity(clean, noise, timesteps)
    if kind == "sample":
        return clean
    return noise


# --------------------------------------------------------------------------------------------------------------------
# guidance
# --------------------------------------------------------------------------------------------------------------------


def classifier_free(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """``uncond + scale * (cond - uncond)``: scale 1 is the conditional model, 0 the unconditional one.

    Linear in the output, so it holds for epsilon, velocity and x0 predictions alike."""
    return uncond + scale * (cond - uncond)


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


# --------------------------------------------------------------------------------------------------------------------
# posterior and variational bound (improved DDPM)
# --------------------------------------------------------------------------------------------------------------------

_BIN_HALF_WIDTH = 1.0 / 255.0  # data in [-1, 1] quantised to 256 levels: bins of width 2/255
_LOG_FLOOR = 1e-12


def normal_kl(
    mean1: torch.Tensor | float,
    logvar1: torch.Tensor | float,
    mean2: torch.Tensor | float,
    logvar2: torch.Tensor | float,
) -> torch.Tensor:
    """Elementwise KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))) in nats (diagonal Gaussians, broadcasting)."""
    ref = next(x for x in (mean1, logvar1, mean2, logvar2) if isinstance(x, torch.Tensor))
    mean1, logvar1, mean2, logvar2 = (
        torch.as_tensor(x, dtype=ref.dtype, device=ref.device) for x in (mean1, logvar1, mean2, logvar2)
    )
    return 0.5 * (logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2) - 1.0)


def approx_standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    """The standard normal CDF by the tanh approximation improved DDPM uses (absolute error < 2e-4)."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def discretized_gaussian_log_likelihood(x: torch.Tensor, means: torch.Tensor, log_scales: torch.Tensor) -> torch.Tensor:
    """Elementwise log P(bin of x) under N(means, exp(log_scales)^2), the decoder of improved DDPM at t = 0.

    ``x`` holds data in [-1, 1] on the 256 bin centres ``-1 + 2k/255``; a bin spans ``x +- 1/255``, except that the
    first bin extends to -inf and the last to +inf, so the 256 probabilities sum to 1.
    """
    inv_std = torch.exp(-log_scales)
    centred = x - means
    cdf_upper = approx_standard_normal_cdf(inv_std * (centred + _BIN_HALF_WIDTH))
    cdf_lower = approx_standard_normal_cdf(inv_std * (centred - _BIN_HALF_WIDTH))
    log_first = torch.log(cdf_upper.clamp(min=_LOG_FLOOR))  # P(X <= x + 1/255)
    log_last = torch.log((1.0 - cdf_lower).clamp(min=_LOG_FLOOR))  # P(X > x - 1/255)
    log_interior = torch.log((cdf_upper - cdf_lower).clamp(min=_LOG_FLOOR))
    return torch.where(x < -0.999, log_first, torch.where(x > 0.999, log_last, log_interior))


def _mean_over_non_batch(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], -1).mean(dim=1)


class GaussianDiffusionTerms:
    """The posterior, reverse-process and variational-bound terms of a DDPM with learned (log-range) variance.

    Args:
        betas: the 1-D noise schedule beta_0..beta_{T-1} (index t is the 0-based timestep, as in MONAI); kept in
            float64. Results are returned in the dtype of the input tensors.

    Attributes (float64, shape (T,)): ``betas``, ``alphas``, ``alphas_cumprod``, ``alphas_cumprod_prev``,
    ``posterior_variance`` (beta_tilde_t, 0 at t = 0), ``posterior_log_variance_clipped`` (its log, with the t = 0
    value replaced by the t = 1 value; for T = 1, log beta_0), ``posterior_mean_coef1`` (of x0),
    ``posterior_mean_coef2`` (of x_t).
    """

    def __init__(self, betas: torch.Tensor) -> None:
        betas = torch.as_tensor(betas).detach().to(dtype=torch.float64, device="cpu")
        if betas.ndim != 1 or betas.numel() == 0:
            raise ValueError(f"betas must be a non-empty 1-D tensor, got shape {tuple(betas.shape)}.")
        if not bool(((betas > 0) & (betas <= 1)).all()):
            raise ValueError("betas must lie in (0, 1].")
        self.betas = betas
        self.num_timesteps = betas.numel()
        self.alphas = 1.0 - betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        self.alphas_cumprod_prev = torch.cat([betas.new_ones(1), self.alphas_cumprod[:-1]])
        self.posterior_variance = betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        if self.num_timesteps > 1:
            clipped = torch.cat([self.posterior_variance[1:2], self.posterior_variance[1:]])
            self.posterior_log_variance_clipped = torch.log(clipped)
        else:
            self.posterior_log_variance_clipped = torch.log(betas)
        self.posterior_mean_coef1 = betas * torch.sqrt(self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (
            (1.0 - self.alphas_cumprod_prev) * torch.sqrt(self.alphas) / (1.0 - self.alphas_cumprod)
        )

    @classmethod
    def from_scheduler(cls, scheduler: Any) -> GaussianDiffusionTerms:
        """From any scheduler with a ``betas`` tensor (MONAI's, :func:`common.schedulers.build_scheduler`'s)."""
        return cls(scheduler.betas)

    @staticmethod
    def _extract(values: torch.Tensor, t: torch.Tensor | int, like: torch.Tensor) -> torch.Tensor:
        """``values[t]`` as ``like``'s dtype/device, shaped (B, 1, ..., 1) for a (B,) ``t`` or () for a scalar ``t``."""
        t = torch.as_tensor(t, device="cpu").long()
        out = values[t.cpu()].to(dtype=like.dtype, device=like.device)
        if t.ndim == 0:
            return out
        return out.reshape(-1, *([1] * (like.ndim - 1)))

    def q_posterior(
        self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor | int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean, variance and clipped log variance of q(x_{t-1} | x_t, x0), all of ``x_t``'s shape."""
        mean = (
            self._extract(self.posterior_mean_coef1, t, x_t) * x0
            + self._extract(self.posterior_mean_coef2, t, x_t) * x_t
        )
        var = self._extract(self.posterior_variance, t, x_t).expand_as(x_t)
        log_var = self._extract(self.posterior_log_variance_clipped, t, x_t).expand_as(x_t)
        return mean, var, log_var

    def predict_x0_from_eps(self, x_t: torch.Tensor, t: torch.Tensor | int, eps: torch.Tensor) -> torch.Tensor:
        """x0 = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t) (:func:`predict_x0`)."""
        return predict_x0(x_t, eps, self._extract(self.alphas_cumprod, t, x_t), "epsilon")

    def model_log_variance(self, v_output: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        """log Sigma = v log(beta_t) + (1 - v) log(beta_tilde_t), v = (v_output + 1) / 2 (v_output in [-1, 1])."""
        frac = (v_output + 1.0) / 2.0
        max_log = self._extract(torch.log(self.betas), t, v_output)
        min_log = self._extract(self.posterior_log_variance_clipped, t, v_output)
        return frac * max_log + (1.0 - frac) * min_log

    def p_mean_log_variance(
        self, model_output: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor | int, clip_x0: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mean, log variance and x0 estimate of p(x_{t-1} | x_t).

        ``model_output`` has 2C channels for C-channel ``x_t``: the eps prediction, then the variance output in [-1, 1].
        ``clip_x0`` clamps the x0 estimate to [-1, 1] before it enters the posterior mean.
        """
        channels = x_t.shape[1]
        if model_output.shape[1] != 2 * channels:
            raise ValueError(
                f"model_output needs 2 x {channels} channels (eps, variance), got {model_output.shape[1]}."
            )
        eps, v_output = torch.split(model_output, channels, dim=1)
        x0 = self.predict_x0_from_eps(x_t, t, eps)
        if clip_x0:
            x0 = x0.clamp(-1.0, 1.0)
        mean, _, _ = self.q_posterior(x0, x_t, t)
        return mean, self.model_log_variance(v_output, t), x0

    def vlb_terms(
        self, model_output: torch.Tensor, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor | int
    ) -> torch.Tensor:
        """Per-sample variational-bound term L_t in bits per dimension, shape (B,).

        t > 0: KL(q(x_{t-1} | x_t, x0) || p(x_{t-1} | x_t)) averaged over non-batch dims, / log 2;
        t = 0: -log p(x0 | x_1) under the discretized Gaussian decoder (log scale = 0.5 log variance), / log 2.
        """
        t = torch.as_tensor(t, device="cpu").long()
        if t.ndim == 0:
            t = t.expand(x_t.shape[0])
        true_mean, _, true_log_var = self.q_posterior(x0, x_t, t)
        mean, log_var, _ = self.p_mean_log_variance(model_output, x_t, t)
        kl = _mean_over_non_batch(normal_kl(true_mean, true_log_var, mean, log_var)) / math.log(2.0)
        nll = -_mean_over_non_batch(discretized_gaussian_log_likelihood(x0, mean, 0.5 * log_var)) / math.log(2.0)
        return torch.where(t.to(kl.device) == 0, nll, kl)
