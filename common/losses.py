"""The improved-DDPM hybrid loss and a learned-variance ancestral sampler (Nichol & Dhariwal 2021).

The abdominal-CT semantic synthesis paper trains its DDPM "as in [improved DDPM]": T=1000 linear betas, an extra
output channel per image channel that sets the reverse variance, and the hybrid loss L_simple + lambda * L_vlb
(lambda = 0.001). MONAI has no variational-bound loss, and its ``DDPMScheduler(variance_type="learned_range")``
interpolates the *variances* linearly, whereas improved DDPM interpolates the *log*-variances:
``log Sigma = v log(beta_t) + (1 - v) log(beta_tilde_t)`` with ``v = (out + 1) / 2``. This module implements the
improved-DDPM version, in float64, so that a model trained here is sampled with the variance it learned.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from monai.networks.schedulers import Scheduler
from torch import nn

__all__ = [
    "normal_kl",
    "approx_standard_normal_cdf",
    "discretized_gaussian_log_likelihood",
    "GaussianDiffusionTerms",
    "HybridLoss",
    "LearnedVarianceScheduler",
]

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
        """From any scheduler with a ``betas`` tensor (MONAI's, :func:`common.schedulers.build_scheduler`'s, ours)."""
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
        """x0 = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t)."""
        alpha_bar = self._extract(self.alphas_cumprod, t, x_t)
        return (x_t - torch.sqrt(1.0 - alpha_bar) * eps) / torch.sqrt(alpha_bar)

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


class HybridLoss(nn.Module):
    """Improved DDPM's L_hybrid = L_simple + lambda * L_vlb for a network predicting (eps, variance) as 2C channels.

    ``forward(model_output, target)`` with ``target`` a dict (a MONAI ``SupervisedTrainer`` calls
    ``loss_function(pred, targets)``; the batch preparation must put these in ``targets``):

    * ``"noise"``: the true eps (B, C, ...); ``"x0"``: the clean data in [-1, 1]; ``"x_t"``: the noised input the
      network saw; ``"timesteps"``: the (B,) 0-based timesteps.

    Returns ``MSE(eps_pred, eps) + vlb_weight * scale * mean_b(L_t)`` where L_t is
    :meth:`GaussianDiffusionTerms.vlb_terms` (bits/dim) computed with the eps prediction detached, so that the VLB
    trains only the variance channels (improved DDPM's stop-gradient). L_vlb is the *sum* of the T terms L_0..L_{T-1},
    and with timesteps drawn uniformly T * L_t is its unbiased one-sample estimate, hence ``scale = T`` by default
    (``scale_vlb_by_timesteps=True``): for T = 1000 and lambda = 0.001 the VLB weight per sample is 1, exactly the
    ``num_timesteps / 1000`` rescaling of openai/improved-diffusion. ``scale_vlb_by_timesteps=False`` gives the literal
    ``MSE + vlb_weight * mean(L_t)`` (1000x weaker for T = 1000).

    Args:
        scheduler_or_betas: a scheduler with ``betas`` (the training scheduler) or the 1-D betas themselves.
        vlb_weight: lambda (the paper and improved DDPM: 0.001).
        scale_vlb_by_timesteps: multiply the per-sample VLB term by T (see above).
    """

    def __init__(self, scheduler_or_betas: Any, vlb_weight: float = 0.001, scale_vlb_by_timesteps: bool = True) -> None:
        super().__init__()
        if vlb_weight < 0:
            raise ValueError(f"vlb_weight must be >= 0, got {vlb_weight}.")
        if hasattr(scheduler_or_betas, "betas"):
            self.terms = GaussianDiffusionTerms.from_scheduler(scheduler_or_betas)
        else:
            self.terms = GaussianDiffusionTerms(scheduler_or_betas)
        self.vlb_weight = float(vlb_weight)
        self.scale_vlb_by_timesteps = bool(scale_vlb_by_timesteps)

    @property
    def vlb_multiplier(self) -> float:
        """The factor in front of mean_b(L_t): ``vlb_weight`` times T if ``scale_vlb_by_timesteps``."""
        return self.vlb_weight * (self.terms.num_timesteps if self.scale_vlb_by_timesteps else 1)

    def forward(self, model_output: torch.Tensor, target: dict[str, torch.Tensor]) -> torch.Tensor:
        missing = {"noise", "x0", "x_t", "timesteps"} - set(target)
        if missing:
            raise KeyError(f"HybridLoss target dict lacks {sorted(missing)}.")
        noise = target["noise"]
        channels = noise.shape[1]
        if model_output.shape[1] != 2 * channels:
            raise ValueError(
                f"model_output needs 2 x {channels} channels (eps, variance), got {model_output.shape[1]}."
            )
        eps_pred, v_output = torch.split(model_output, channels, dim=1)
        loss = F.mse_loss(eps_pred, noise)
        if self.vlb_multiplier == 0:
            return loss
        frozen = torch.cat([eps_pred.detach(), v_output], dim=1)
        vlb = self.terms.vlb_terms(frozen, target["x0"], target["x_t"], target["timesteps"])
        return loss + self.vlb_multiplier * vlb.mean()


class LearnedVarianceScheduler(Scheduler):
    """Ancestral DDPM sampling with improved DDPM's learned log-range variance and timestep respacing.

    The training chain (``betas``, ``alphas``, ``alphas_cumprod``; ``add_noise``) is MONAI's ``Scheduler``, so it is
    identical to a MONAI ``DDPMScheduler`` with the same schedule. ``set_timesteps(n)`` keeps the timesteps
    ``s_i = round(i (T - 1) / (n - 1))``, i = 0..n-1 (improved DDPM's single-section respacing: evenly from 0 to T-1
    inclusive; ``n = 1`` keeps T-1), and builds the respaced chain ``beta'_i = 1 - alpha_bar[s_i] / alpha_bar[s_{i-1}]``
    (alpha_bar[s_{-1}] = 1) in float64: ``step_betas``, ``step_alphas_cumprod`` (= alpha_bar at the kept timesteps)
    and ``step_terms`` (its :class:`GaussianDiffusionTerms`), so the posterior and the variance interpolation use the
    respaced beta' and beta_tilde'. With n = T it is the full chain. ``timesteps`` lists the kept *original* indices in
    descending order: they are what the network is given and what ``step`` takes.

    ``step(model_output, timestep, sample)`` expects 2C channels (eps, variance output in [-1, 1]) and returns
    ``(x_{t-1}, x0_estimate)``: the posterior mean from the eps prediction plus ``exp(0.5 log Sigma) z``, except at the
    last step (no noise). ``clip_sample`` clamps the x0 estimate to [-1, 1].
    """

    prediction_type = "epsilon"
    init_noise_sigma = 1.0

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        schedule: str = "linear_beta",
        clip_sample: bool = False,
        **schedule_args,
    ) -> None:
        if schedule in ("linear_beta", "scaled_linear_beta", "sigmoid_beta"):
            schedule_args.update(beta_start=beta_start, beta_end=beta_end)
        super().__init__(num_train_timesteps=num_train_timesteps, schedule=schedule, **schedule_args)
        self.clip_sample = bool(clip_sample)
        self.full_terms = GaussianDiffusionTerms(self.betas)
        self.set_timesteps(num_train_timesteps)

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        """Respace to ``num_inference_steps`` evenly spaced timesteps from T-1 down to 0 (see the class docstring)."""
        num_train = self.num_train_timesteps
        if not 1 <= num_inference_steps <= num_train:
            raise ValueError(f"num_inference_steps must be in [1, {num_train}], got {num_inference_steps}.")
        if num_inference_steps == 1:
            kept = torch.tensor([num_train - 1], dtype=torch.long)
        else:
            stride = (num_train - 1) / (num_inference_steps - 1)
            kept = torch.tensor([round(i * stride) for i in range(num_inference_steps)], dtype=torch.long)
        alpha_bar = self.full_terms.alphas_cumprod[kept]
        previous = torch.cat([alpha_bar.new_ones(1), alpha_bar[:-1]])
        self.num_inference_steps = num_inference_steps
        self.step_betas = 1.0 - alpha_bar / previous
        self.step_terms = GaussianDiffusionTerms(self.step_betas)
        self.step_alphas_cumprod = self.step_terms.alphas_cumprod
        self.kept_timesteps = kept
        self._step_index = {int(s): i for i, s in enumerate(kept.tolist())}
        self.timesteps = kept.flip(0).to(device)

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One ancestral step from the original timestep ``timestep`` to the previous kept one."""
        original = int(timestep)
        if original not in self._step_index:
            raise ValueError(f"timestep {original} is not in the respaced schedule {self.kept_timesteps.tolist()}.")
        index = self._step_index[original]
        mean, log_var, x0 = self.step_terms.p_mean_log_variance(model_output, sample, index, clip_x0=self.clip_sample)
        if index == 0:
            return mean, x0
        noise = torch.randn(sample.shape, generator=generator, dtype=sample.dtype, device=sample.device)
        return mean + torch.exp(0.5 * log_var) * noise, x0
