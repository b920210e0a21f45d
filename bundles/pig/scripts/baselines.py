"""The PIG paper's comparison models (Tables 1-2), behind the pair-sampler protocol of :mod:`common.sampling`.

* :class:`MaskConditionedSampler`: "real masks in, images out" (LDM / SegGuidedDiff / ControlNet were fed the training
  masks): PIG's own image model conditioned on given masks instead of the guider's estimate.
* :class:`UnconditionalSampler`: an unconditional image-only DDPM/DDIM (Table 1), for FID only.
* :class:`MaskControlNet` (Table 2's ControlNet): a MONAI ``ControlNet`` on the real mask steering a FROZEN
  unconditional image U-Net (``configs/unconditional.json``'s model, trained first on the same images), the recipe of
  Zhang et al. 2023 at this scale; ``configs/controlnet.json`` trains it, ``mask_conditioned.json`` samples it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from monai.engines import DiffusionPrepareBatch, PrepareBatch, VPredictionPrepareBatch
from monai.networks.nets import ControlNet, DiffusionModelUNet
from torch import nn

from common.checkpoints import load_weights
from common.diffusion import diffusion_target
from common.sampling import ConditionedPairSampler, ImageSampler
from common.schedulers import prediction_type
from common.training import image_and_mask, noised
from common.transforms import encode_mask, mask_channels

__all__ = [
    "MaskConditionedSampler",
    "UnconditionalSampler",
    "image_prepare_batch",
    "MaskControlNet",
    "build_mask_controlnet",
    "freeze_image_model",
    "MaskConditionedPrepareBatch",
]


class MaskConditionedSampler(ConditionedPairSampler):
    """Images for the given real masks from PIG's image model; pair ``i`` uses ``masks[i % len(masks)]``.

    Args:
        masks: label maps (class indices), each (1, H, W), e.g. ``[p["label"] for p in load_dataset(...)]``.
        scheduler, num_inference_steps: as for :class:`scripts.pig.PairedSampler`.
        num_classes: to encode the masks as the model saw them in training.
    """

    def __init__(self, masks: Sequence[Any], scheduler: Any, num_inference_steps: int = 50, num_classes: int = 2):
        super().__init__(masks, num_classes)
        self.image_sampler = ImageSampler(scheduler, num_inference_steps)

    def images(self, model, labels, real_images, noise, indices) -> torch.Tensor:
        condition = encode_mask(labels, self.num_classes).to(noise.dtype)
        return self.image_sampler(lambda y_t, t: model.image_noise(condition, y_t, t), noise)


class UnconditionalSampler:
    """An image-only model behind the pair-sampler protocol; returns ``(None, image)``: there is no mask, so previews
    show an empty one and :func:`common.generation.generate_pairs` refuses to write pairs (benchmarks use its images
    for FID)."""

    def __init__(self, scheduler: Any, num_inference_steps: int = 50) -> None:
        self.image_sampler = ImageSampler(scheduler, num_inference_steps)

    @torch.no_grad()
    def __call__(self, model, mask_noise: torch.Tensor, image_noise: torch.Tensor, indices=None):
        return None, self.image_sampler(lambda y_t, t: model(y_t, t), image_noise)


def image_prepare_batch(scheduler: Any) -> DiffusionPrepareBatch:
    """MONAI's stock batch preparation for the unconditional image model: noise (epsilon) or velocity targets,
    following the training scheduler's ``prediction_type``."""
    if prediction_type(scheduler) == "v_prediction":
        return VPredictionPrepareBatch(scheduler, scheduler.num_train_timesteps)
    return DiffusionPrepareBatch(scheduler.num_train_timesteps)


class MaskControlNet(nn.Module):
    """``forward(y_t, t, mask)``: the image U-Net's prediction for ``y_t`` with the ControlNet's residuals from the
    encoded mask added to its skip connections and middle block (MONAI's ``ControlNet`` + ``DiffusionModelUNet``).
    ``image_noise(mask, y_t, t)`` is the same call in the argument order of PIG's image model, so
    :class:`MaskConditionedSampler` samples either."""

    def __init__(self, unet: DiffusionModelUNet, controlnet: ControlNet, conditioning_scale: float = 1.0) -> None:
        super().__init__()
        self.unet = unet
        self.controlnet = controlnet
        self.conditioning_scale = conditioning_scale
        self.mask_channels = controlnet.controlnet_cond_embedding.conv_in.conv.in_channels

    def forward(self, y_t: torch.Tensor, timesteps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        down, middle = self.controlnet(y_t, timesteps, controlnet_cond=mask, conditioning_scale=self.conditioning_scale)
        return self.unet(y_t, timesteps, down_block_additional_residuals=down, mid_block_additional_residual=middle)

    def image_noise(self, mask: torch.Tensor, y_t: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        return self(y_t, timesteps, mask)


def build_mask_controlnet(
    num_classes: int = 2,
    image_channels: int = 1,
    channels: Sequence[int] = (32, 64, 64),
    attention_levels: Sequence[bool] = (False, False, True),
    num_res_blocks: int = 1,
    num_head_channels: int = 32,
    norm_num_groups: int = 32,
    use_flash_attention: bool = True,
    conditioning_channels: Sequence[int] = (16,),
) -> MaskControlNet:
    """The unconditional image U-Net of ``configs/unconditional.json`` (same settings) and a ControlNet of the same
    encoder on the encoded mask; the ControlNet starts as a copy of the U-Net's encoder (its zero convolutions keep
    the start a no-op)."""
    shared = {
        "spatial_dims": 2,
        "in_channels": image_channels,
        "channels": tuple(channels),
        "attention_levels": tuple(attention_levels),
        "num_res_blocks": num_res_blocks,
        "num_head_channels": num_head_channels,
        "norm_num_groups": norm_num_groups,
        "use_flash_attention": use_flash_attention,
    }
    unet = DiffusionModelUNet(out_channels=image_channels, **shared)
    controlnet = ControlNet(
        conditioning_embedding_in_channels=mask_channels(num_classes),
        conditioning_embedding_num_channels=tuple(conditioning_channels),
        **shared,
    )
    controlnet.load_state_dict(unet.state_dict(), strict=False)
    return MaskControlNet(unet, controlnet)


def freeze_image_model(model: MaskControlNet, weights: str) -> MaskControlNet:
    """Load the trained unconditional image model (``weights``: configs/unconditional.json's model.pt) into the
    ControlNet baseline's U-Net, freeze it, and start the ControlNet from its encoder: only the ControlNet trains."""
    load_weights(model.unet, weights)
    model.controlnet.load_state_dict(model.unet.state_dict(), strict=False)
    model.unet.requires_grad_(False)
    return model


class MaskConditionedPrepareBatch(PrepareBatch):
    """Batch -> ``(y_t, target, (timesteps, encoded mask), {})`` for a mask-conditioned image model such as
    :class:`MaskControlNet` (SimpleInferer calls ``network(y_t, timesteps, mask)``); the target follows the
    scheduler's parameterisation (noise, velocity or sample)."""

    def __init__(self, scheduler: Any, num_classes: int = 2, antithetic: bool = True) -> None:
        self.scheduler = scheduler
        self.num_classes = num_classes
        self.antithetic = antithetic

    def __call__(
        self, batchdata: Mapping[str, torch.Tensor], device=None, non_blocking: bool = False, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor, tuple, dict]:
        image, _, mask = image_and_mask(batchdata, device, non_blocking, self.num_classes)
        noisy, noise, timesteps = noised(self.scheduler, image, self.antithetic)
        return noisy, diffusion_target(self.scheduler, image, noise, timesteps), (timesteps, mask), {}
