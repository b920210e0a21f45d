"""PIG: paired image generation with a diffusion guider (Zhang et al., MICCAI 2025), the whole algorithm in one module.

Notation follows the paper: ``x`` is the mask stream, ``y`` the image stream.

* :class:`PairedDiffusionModel` holds the two denoisers. The *diffusion guider* model_x predicts the mask's noise
  from the noisy pair ``[x_t, y_t]`` (Alg. 1 line 5); the conditional image model model_y predicts the image's noise
  from ``[x_cond, y_t]`` (Alg. 1 line 6), ``x_cond`` being the clean mask in training and the guider's estimate x0_hat
  (Eq. 6) when sampling. Both inputs join by channel concatenation. One ``nn.Module`` lets a stock MONAI
  ``SupervisedTrainer`` (one network, one optimizer, one checkpoint) train them jointly: the forward pass returns
  ``cat([eps_x, eps_y])``, so an MSE against ``cat([eps_1, eps_2])`` is the sum of both losses of Alg. 1 (up to the
  channel-count weighting of the mean; the parameters are disjoint, so with Adam it equals two separate trainings).
* :class:`PairedDiffusionPrepareBatch` is the training step of Alg. 1: one timestep t for both streams, independent
  noise, x_t and y_t by Eqs. (9)-(10), targets the two noises (or velocities).
* :class:`PairedSampler` is Alg. 2: per step the guider gives x0_hat (Eq. 6) and moves the mask to x_{t-1} (Eq. 7,
  sigma = 0: DDIM), then the image model, conditioned on x0_hat, moves the image to y_{t-1}. Any scheduler works
  (MONAI's DDIM, diffusers' DPM-Solver++), see :mod:`common.sampling`.
* :func:`build_paired_model` is the network every config builds: two MONAI ``DiffusionModelUNet`` of one width.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.engines import PrepareBatch
from monai.networks.nets import DiffusionModelUNet
from torch import nn

from common.diffusion import diffusion_target, predict_x0
from common.sampling import scheduler_step, stream_scheduler, timestep_batch
from common.schedulers import prediction_type
from common.training import batch_noise_like, image_and_mask, sample_timesteps
from common.transforms import mask_channels

__all__ = [
    "PairedDiffusionModel",
    "build_paired_model",
    "unet_settings",
    "binarize_mask_estimate",
    "PairedDiffusionPrepareBatch",
    "PairedSampler",
    "IMAGE_CONDITIONS",
    "ESTIMATE_TRANSFORMS",
]

logger = logging.getLogger(__name__)

IMAGE_CONDITIONS = ("mask", "guider_x0")
ESTIMATE_TRANSFORMS = ("clamp", "binarize", "none")


# --------------------------------------------------------------------------------------------------------------------
# the two denoisers
# --------------------------------------------------------------------------------------------------------------------


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

    def condition_from_estimate(self, x0_hat: torch.Tensor, transform: str | None = None) -> torch.Tensor:
        """Map a guider x0 estimate to the image model's condition by ``transform`` (default: the model's
        ``estimate_transform``)."""
        transform = self.estimate_transform if transform is None else transform  # both checked on construction
        if transform == "binarize":
            return binarize_mask_estimate(x0_hat)
        if transform == "clamp":
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


def unet_settings(
    in_channels: int,
    channels: Sequence[int],
    attention_levels: Sequence[bool],
    num_res_blocks: int,
    num_head_channels: int,
    norm_num_groups: int,
    use_flash_attention: bool,
) -> dict[str, Any]:
    """The ``DiffusionModelUNet`` / ``ControlNet`` arguments every network of this bundle shares (PIG's two denoisers
    and the baselines' U-Nets), from the config keys of the same names."""
    return {
        "spatial_dims": 2,
        "in_channels": in_channels,
        "channels": tuple(channels),
        "attention_levels": tuple(attention_levels),
        "num_res_blocks": num_res_blocks,
        "num_head_channels": num_head_channels,
        "norm_num_groups": norm_num_groups,
        "use_flash_attention": use_flash_attention,
    }


def build_paired_model(
    num_classes: int = 2,
    image_channels: int = 1,
    channels: Sequence[int] = (32, 64, 64),
    attention_levels: Sequence[bool] = (False, False, True),
    num_res_blocks: int = 1,
    num_head_channels: int = 32,
    norm_num_groups: int = 32,
    use_flash_attention: bool = True,
    image_condition: str = "mask",
    estimate_transform: str = "clamp",
    scheduler: Any = None,
) -> PairedDiffusionModel:
    """Guider and image model as two MONAI ``DiffusionModelUNet`` of the same width, each taking the concatenated
    ``mask_channels(num_classes) + image_channels`` inputs; ``scheduler`` (the training scheduler) is needed only for
    ``image_condition="guider_x0"`` (its alpha_bar table and parameterisation)."""
    masks = mask_channels(num_classes)
    unet = unet_settings(
        masks + image_channels, channels, attention_levels, num_res_blocks, num_head_channels, norm_num_groups,
        use_flash_attention,
    )  # fmt: skip
    return PairedDiffusionModel(
        guider=DiffusionModelUNet(out_channels=masks, **unet),
        image_model=DiffusionModelUNet(out_channels=image_channels, **unet),
        mask_channels=masks,
        image_channels=image_channels,
        image_condition=image_condition,
        alphas_cumprod=None if scheduler is None else scheduler.alphas_cumprod,
        estimate_transform=estimate_transform,
        prediction_type=prediction_type(scheduler) if scheduler is not None else "epsilon",
    )


# --------------------------------------------------------------------------------------------------------------------
# Alg. 1: the training step
# --------------------------------------------------------------------------------------------------------------------


class PairedDiffusionPrepareBatch(PrepareBatch):
    """Batch -> (cat[x_t, y_t], targets, (), {"timesteps", "clean_mask"}) for :class:`PairedDiffusionModel`.

    Targets are ``cat[eps_1, eps_2]`` (Alg. 1) for an ``epsilon`` scheduler, the velocities for ``v_prediction``,
    the clean pair for ``sample``.

    Args:
        scheduler: the training scheduler (its ``add_noise`` implements Eq. (9)-(10)).
        num_classes: label classes; the mask enters as 1 channel ({-1,1}) for 2 classes, one-hot otherwise.
        antithetic: draw timesteps in antithetic pairs (t, T-1-t).
        image_key, label_key: batch keys.
    """

    def __init__(
        self,
        scheduler: Any,
        num_classes: int = 2,
        antithetic: bool = True,
        image_key: str = "image",
        label_key: str = "label",
    ) -> None:
        self.scheduler = scheduler
        self.num_classes = num_classes
        self.antithetic = antithetic
        self.image_key = image_key
        self.label_key = label_key

    def target(self, clean: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """What the networks learn to predict: the noise (paper), the velocity, or the clean sample."""
        return diffusion_target(self.scheduler, clean, noise, timesteps)

    def __call__(
        self, batchdata: Mapping[str, torch.Tensor], device=None, non_blocking: bool = False, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor, tuple, dict]:
        image, _, mask = image_and_mask(
            batchdata, device, non_blocking, self.num_classes, self.image_key, self.label_key
        )
        timesteps = sample_timesteps(image.shape[0], self.scheduler.num_train_timesteps, self.antithetic, image.device)
        mask_noise, image_noise = batch_noise_like(mask), batch_noise_like(image)
        noisy_mask = self.scheduler.add_noise(original_samples=mask, noise=mask_noise, timesteps=timesteps)
        noisy_image = self.scheduler.add_noise(original_samples=image, noise=image_noise, timesteps=timesteps)
        inputs = torch.cat([noisy_mask, noisy_image], dim=1)
        targets = torch.cat(
            [self.target(mask, mask_noise, timesteps), self.target(image, image_noise, timesteps)], dim=1
        )
        return inputs, targets, (), {"timesteps": timesteps, "clean_mask": mask}


# --------------------------------------------------------------------------------------------------------------------
# Alg. 2: the sampler
# --------------------------------------------------------------------------------------------------------------------


class PairedSampler:
    """Generate (mask, image) pairs from noise with a :class:`PairedDiffusionModel` (PIG Alg. 2).

    Args:
        scheduler: a configured scheduler; ``set_timesteps(num_inference_steps)`` is called on a copy per stream.
        num_inference_steps: sampling steps (the paper: 256 DDIM steps of T=1024).
        progress_every: log a line every this many steps (0 = silent).
        estimate_transform: how x0_hat is mapped before it conditions the image model (``"none"``: Alg. 2 as
            written); None: the model's own setting (:class:`PairedDiffusionModel`).
    """

    def __init__(
        self,
        scheduler: Any,
        num_inference_steps: int = 50,
        progress_every: int = 0,
        estimate_transform: str | None = None,
    ) -> None:
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}.")
        if estimate_transform is not None and estimate_transform not in ESTIMATE_TRANSFORMS:
            raise ValueError(f"estimate_transform must be one of {ESTIMATE_TRANSFORMS}, got '{estimate_transform}'.")
        self.scheduler = scheduler
        self.num_inference_steps = num_inference_steps
        self.progress_every = progress_every
        self.estimate_transform = estimate_transform

    @torch.no_grad()
    def __call__(
        self, model: PairedDiffusionModel, mask_noise: torch.Tensor, image_noise: torch.Tensor, indices=None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run Alg. 2 from (x_T, y_T) = (mask_noise, image_noise); returns the continuous (x_0, y_0).

        ``indices`` (the pair numbers being generated) is part of the sampler interface and unused here."""
        device = mask_noise.device
        mask_scheduler = stream_scheduler(self.scheduler, self.num_inference_steps, device)
        image_scheduler = stream_scheduler(self.scheduler, self.num_inference_steps, device)
        alphas_cumprod = mask_scheduler.alphas_cumprod.to(device)
        x_t = mask_noise * getattr(mask_scheduler, "init_noise_sigma", 1.0)
        y_t = image_noise * getattr(image_scheduler, "init_noise_sigma", 1.0)
        timesteps = mask_scheduler.timesteps
        parameterisation = prediction_type(mask_scheduler)
        for i, t in enumerate(timesteps):
            t_batch = timestep_batch(t, x_t)
            eps_x = model.guider_noise(x_t, y_t, t_batch)
            x0_hat = predict_x0(x_t, eps_x, alphas_cumprod[int(t)], parameterisation)
            x_t = scheduler_step(mask_scheduler, eps_x, t, x_t)
            eps_y = model.image_noise(model.condition_from_estimate(x0_hat, self.estimate_transform), y_t, t_batch)
            y_t = scheduler_step(image_scheduler, eps_y, t, y_t)
            if self.progress_every and (i + 1) % self.progress_every == 0:
                logger.info("sampling step %d/%d (t=%d)", i + 1, len(timesteps), int(t))
        return x_t, y_t
