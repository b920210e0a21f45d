"""The two denoisers of paired image generation (PIG, Alg. 1-2) as one module.

Notation follows the paper: ``x`` is the mask stream, ``y`` the image stream.

* ``guider`` (model_x, the diffusion guider) predicts the mask noise from ``[x_t, y_t]``.
* ``image_model`` (model_y) predicts the image noise from ``[x_cond, y_t]`` where ``x_cond`` is the clean mask during
  training and the guider's x0 estimate during sampling.

Keeping both in one ``nn.Module`` lets a stock MONAI ``SupervisedTrainer`` (one network, one optimizer, one checkpoint)
train them jointly: the forward pass returns ``cat([eps_x, eps_y])`` so an MSE against ``cat([eps_1, eps_2])`` is
the sum of both losses of the paper (up to the channel-count weighting of the mean).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "PairedDiffusionModel",
    "predict_x0",
    "binarize_mask_estimate",
    "IMAGE_CONDITIONS",
    "ESTIMATE_TRANSFORMS",
    "PREDICTION_TYPES",
]

IMAGE_CONDITIONS = ("mask", "guider_x0")
ESTIMATE_TRANSFORMS = ("clamp", "binarize", "none")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def predict_x0(
    sample: torch.Tensor, model_output: torch.Tensor, alpha_bar: torch.Tensor, prediction_type: str = "epsilon"
) -> torch.Tensor:
    """The clean-sample estimate from a network output; ``alpha_bar`` is a scalar or (B,).

    ``epsilon``: Eq. (6), x0_hat = (x_t - sqrt(1 - alpha_bar) eps) / sqrt(alpha_bar) -- the paper's parameterisation,
    whose error is amplified by 1/sqrt(alpha_bar) (x156 at t = T for the linear schedule);
    ``v_prediction``: x0_hat = sqrt(alpha_bar) x_t - sqrt(1 - alpha_bar) v, bounded at every t;
    ``sample``: the output is x0_hat.
    """
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got '{prediction_type}'.")
    alpha_bar = alpha_bar.to(sample.dtype).reshape(-1, *([1] * (sample.ndim - 1)))
    if prediction_type == "epsilon":
        return (sample - (1 - alpha_bar).sqrt() * model_output) / alpha_bar.sqrt()
    if prediction_type == "v_prediction":
        return alpha_bar.sqrt() * sample - (1 - alpha_bar).sqrt() * model_output
    return model_output


def binarize_mask_estimate(x0_hat: torch.Tensor, kernel_size: int = 5, weight: float = 0.75) -> torch.Tensor:
    """The authors' per-step mask binarisation: smooth with a ``kernel_size`` average pool, then threshold each sample
    at ``weight * max + (1 - weight) * min`` of the smoothed map; returns values in {-1, 1}."""
    smooth = F.avg_pool2d(x0_hat, kernel_size, stride=1, padding=kernel_size // 2, count_include_pad=False)
    flat = smooth.flatten(1)
    hi = flat.max(dim=1).values.view(-1, *([1] * (x0_hat.ndim - 1)))
    lo = flat.min(dim=1).values.view(-1, *([1] * (x0_hat.ndim - 1)))
    threshold = weight * hi + (1 - weight) * lo
    return torch.where(smooth > threshold, 1.0, -1.0).to(x0_hat.dtype)


class PairedDiffusionModel(nn.Module):
    """Diffusion guider + conditional image denoiser, joined by channel concatenation.

    Args:
        guider: network with ``mask_channels + image_channels`` inputs and ``mask_channels`` outputs (model_x).
        image_model: network with ``mask_channels + image_channels`` inputs and ``image_channels`` outputs (model_y).
        mask_channels: channels of the encoded mask (1 for binary, K for one-hot with K classes).
        image_channels: image channels (1 for greyscale).
        image_condition: what conditions ``image_model`` during training: ``"mask"`` (the clean mask, the paper) or
            ``"guider_x0"`` (the guider's one-step x0 estimate, detached, as the authors' code optionally does so that
            training matches what the image model sees when sampling).
        alphas_cumprod: the training scheduler's alpha_bar table, needed only for ``"guider_x0"``.
        prediction_type: what the networks predict (the scheduler's ``prediction_type``), needed only for
            ``"guider_x0"``.
        estimate_transform: how the guider's x0 estimate is mapped before it conditions the image model: ``"clamp"``
            to [-1, 1] (default: the image model was trained on {-1, 1} masks, and early estimates are far outside),
            ``"binarize"`` (the authors' code, :func:`binarize_mask_estimate`), or ``"none"`` (Alg. 2 verbatim).
    """

    def __init__(
        self,
        guider: nn.Module,
        image_model: nn.Module,
        mask_channels: int = 1,
        image_channels: int = 1,
        image_condition: str = "mask",
        alphas_cumprod: torch.Tensor | None = None,
        estimate_transform: str = "clamp",
        prediction_type: str = "epsilon",
    ) -> None:
        super().__init__()
        if image_condition not in IMAGE_CONDITIONS:
            raise ValueError(f"image_condition must be one of {IMAGE_CONDITIONS}, got '{image_condition}'.")
        if image_condition == "guider_x0" and alphas_cumprod is None:
            raise ValueError("image_condition 'guider_x0' needs the scheduler's alphas_cumprod.")
        if estimate_transform not in ESTIMATE_TRANSFORMS:
            raise ValueError(f"estimate_transform must be one of {ESTIMATE_TRANSFORMS}, got '{estimate_transform}'.")
        self.guider = guider
        self.image_model = image_model
        self.mask_channels = mask_channels
        self.image_channels = image_channels
        self.image_condition = image_condition
        self.estimate_transform = estimate_transform
        self.prediction_type = prediction_type
        if alphas_cumprod is not None:
            self.register_buffer("alphas_cumprod", alphas_cumprod.detach().clone().float(), persistent=False)
        else:
            self.alphas_cumprod = None

    def guider_noise(self, x_t: torch.Tensor, y_t: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """model_x(x_t, y_t, t): the mask's noise (Alg. 1 line 5, Alg. 2 line 4), or velocity / x0 (prediction_type)."""
        return self.guider(torch.cat([x_t, y_t], dim=1), timesteps)

    def image_noise(self, x_cond: torch.Tensor, y_t: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """model_y(x_cond, y_t, t): the image's noise given a (clean or estimated) mask (Alg. 2 line 6)."""
        return self.image_model(torch.cat([x_cond, y_t], dim=1), timesteps)

    def condition_from_estimate(self, x0_hat: torch.Tensor) -> torch.Tensor:
        """Map a guider x0 estimate to the image model's condition (see ``estimate_transform``)."""
        if self.estimate_transform == "binarize":
            return binarize_mask_estimate(x0_hat)
        if self.estimate_transform == "clamp":
            return x0_hat.clamp(-1.0, 1.0)
        return x0_hat

    def forward(self, noisy_pair: torch.Tensor, timesteps: torch.Tensor, clean_mask: torch.Tensor) -> torch.Tensor:
        """Training forward: ``noisy_pair = cat([x_t, y_t])`` -> ``cat([eps_x, eps_y])``."""
        x_t, y_t = noisy_pair[:, : self.mask_channels], noisy_pair[:, self.mask_channels :]
        eps_x = self.guider_noise(x_t, y_t, timesteps)
        if self.image_condition == "mask":
            x_cond = clean_mask
        else:
            alpha_bar = self.alphas_cumprod.to(x_t.device)[timesteps]  # type: ignore[index]
            x_cond = self.condition_from_estimate(predict_x0(x_t, eps_x.detach(), alpha_bar, self.prediction_type))
        eps_y = self.image_noise(x_cond, y_t, timesteps)
        return torch.cat([eps_x, eps_y], dim=1)
