"""A segmenter of noisy inputs for classifier guidance (DiffuseExpand Stage II, paper Eq. 4).

``f_psi(x_t, t)`` segments a noisy image (time-conditioned MONAI ``DiffusionModelUNet``, one logit channel) and a small
head ``g_omega`` says whether ``x_t`` is a noisy image or a noisy mask (``y1``). The paper feeds ``g_omega`` the
segmentation logits only; here it sees ``[x_t, logits]``, which can only help it tell masks from images.
Loss (Eq. 4): for images Dice + BCE on the mask plus BCE on ``y1``; for masks BCE on ``y1`` only.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from monai.networks.blocks import Convolution
from torch import nn

__all__ = ["NoisySegmenter", "NoisySegmenterLoss"]


class NoisySegmenter(nn.Module):
    """``(x_t, t) -> (mask logits (B, 1, H, W), task logit (B,))``.

    Args:
        unet: time-conditioned network with 1 input and 1 output channel (e.g. ``DiffusionModelUNet``).
        head_channels: width of the task head (two stride-2 convolutions, global pooling, a linear layer).
    """

    def __init__(self, unet: nn.Module, head_channels: int = 16) -> None:
        super().__init__()
        self.unet = unet
        self.task_head = nn.Sequential(
            Convolution(2, 2, head_channels, strides=2, kernel_size=3, act="SWISH", norm=None),
            Convolution(2, head_channels, 2 * head_channels, strides=2, kernel_size=3, act="SWISH", norm=None),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(2 * head_channels, 1),
        )

    def forward(self, x_t: torch.Tensor, timesteps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.unet(x_t, timesteps)
        task = self.task_head(torch.cat([x_t, logits], dim=1)).squeeze(1)
        return logits, task


class NoisySegmenterLoss(nn.Module):
    """Eq. 4 over a batch mixing both tasks: ``mean_images(Dice + BCE) + mean_all(BCE(y1))``.

    ``target``: ``{"mask": (B, 1, H, W) in {0, 1}, "task": (B,) in {0, 1}}`` (1 = image, whose mask is segmented).
    """

    def __init__(self) -> None:
        super().__init__()
        self.dice = DiceLoss(sigmoid=True, reduction="none")

    def forward(
        self, prediction: tuple[torch.Tensor, torch.Tensor], target: Mapping[str, torch.Tensor]
    ) -> torch.Tensor:
        logits, task_logit = prediction
        mask, task = target["mask"].to(logits.dtype), target["task"].to(logits.dtype)
        task_loss = F.binary_cross_entropy_with_logits(task_logit, task)
        per_sample = self.dice(logits, mask).flatten(1).mean(1) + F.binary_cross_entropy_with_logits(
            logits, mask, reduction="none"
        ).flatten(1).mean(1)
        images = task.sum()
        segmentation_loss = (per_sample * task).sum() / images.clamp(min=1.0)
        return segmentation_loss + task_loss
