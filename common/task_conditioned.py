"""One denoiser for both halves of a pair (DiffuseExpand Stage I, paper Eq. 3).

A task label ``y1`` says what the network denoises: ``MASK_TASK`` (0) a mask from noise, ``IMAGE_TASK`` (1) an image
given a mask ``y2``. ``y1`` enters through the U-Net's class embedding (added to the time embedding, as in the authors'
code); the mask ``y2`` is concatenated to ``x_t`` as an extra input channel, so the image can follow the mask pixel by
pixel (the authors pooled it to 16x16 and added it to the time embedding, which loses the mask's geometry at CPU-scale
resolutions). "No mask" (the mask task, and the classifier-free dropout of the image task) is a constant channel of
``NULL_CONDITION`` = 0, a value no encoded mask takes ({-1, 1}).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["TaskConditionedDiffusionModel", "MASK_TASK", "IMAGE_TASK", "NULL_CONDITION"]

MASK_TASK, IMAGE_TASK = 0, 1
NULL_CONDITION = 0.0


class TaskConditionedDiffusionModel(nn.Module):
    """Wrap a MONAI ``DiffusionModelUNet`` (``in_channels = 2``, ``num_class_embeds = 2``) as ``eps(x_t, t, y1, y2)``.

    Args:
        unet: the denoiser; its first input channel is ``x_t``, the second the mask condition.
    """

    def __init__(self, unet: nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(
        self,
        x_t: torch.Tensor,
        timesteps: torch.Tensor,
        task: torch.Tensor | int,
        condition: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``condition``: the encoded mask ({-1, 1}) per sample, ``NULL_CONDITION`` where absent; None: all absent."""
        if condition is None:
            condition = torch.full_like(x_t, NULL_CONDITION)
        task = torch.as_tensor(task, device=x_t.device, dtype=torch.long).expand(x_t.shape[0])
        return self.unet(torch.cat([x_t, condition.to(x_t.dtype)], dim=1), timesteps, class_labels=task)
