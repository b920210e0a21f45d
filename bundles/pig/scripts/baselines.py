"""The PIG paper's comparison models (Tables 1-2), behind the pair-sampler protocol of :mod:`common.sampling`.

* :class:`MaskConditionedSampler`: "real masks in, images out" (LDM / SegGuidedDiff / ControlNet were fed the training
  masks): PIG's own image model conditioned on given masks instead of the guider's estimate.
* :class:`UnconditionalSampler`: an unconditional image-only DDPM/DDIM (Table 1), for FID only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from monai.engines import DiffusionPrepareBatch, VPredictionPrepareBatch

from common.sampling import ConditionedPairSampler, ImageSampler
from common.schedulers import prediction_type
from common.transforms import encode_mask

__all__ = ["MaskConditionedSampler", "UnconditionalSampler", "image_prepare_batch"]


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
