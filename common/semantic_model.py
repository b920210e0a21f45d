"""Label map -> image diffusion models behind one call, ``model(x_t, timesteps, label)`` (semantic CT synthesis).

The conditioning decides how the label map (class indices, (B, 1, H, W)) reaches the network:

* ``conditional``:  one-hot ({-1, 1}) concatenated to ``x_t`` (paper 004, Fig. 2a);
* ``mask_guided``:  one-hot through the guide encoder of :class:`common.guided_unet.GuidedDiffusionUNet` (Fig. 2b);
* ``edge_guided``:  one-hot concatenated, the semantic edge map ({-1, 1}) through the guide encoder (Fig. 2c);
* ``sdm``:          MONAI's ``SPADEDiffusionModelUNet`` with the one-hot map ({0, 1}) as its SPADE input (the SDM
                    baseline).

Samplers and training only ever pass the label map, so every conditioning uses the same workflow code.
"""

from __future__ import annotations

import torch
from torch import nn

from common.guided_unet import CONDITIONINGS, GuidedDiffusionUNet, conditioning_channels
from common.transforms import encode_mask, mask_channels, semantic_edges

__all__ = ["SemanticDiffusionModel", "SEMANTIC_CONDITIONINGS", "build_semantic_model"]

SEMANTIC_CONDITIONINGS = (*CONDITIONINGS, "sdm")


class SemanticDiffusionModel(nn.Module):
    """Wrap a denoiser so it takes ``(x_t, timesteps, label)``.

    Args:
        network: a :class:`common.guided_unet.GuidedDiffusionUNet` built for ``conditioning`` (see
            :func:`common.guided_unet.conditioning_channels`) or, for ``"sdm"``, a ``SPADEDiffusionModelUNet`` with
            ``label_nc = num_classes``.
        conditioning: one of :data:`SEMANTIC_CONDITIONINGS`.
        num_classes: classes of the label map (background and any extra "body" class included); a binary map is
            one {-1, 1} channel, more classes are one-hot (:func:`common.transforms.encode_mask`).
    """

    def __init__(self, network: nn.Module, conditioning: str, num_classes: int) -> None:
        super().__init__()
        if conditioning not in SEMANTIC_CONDITIONINGS:
            raise ValueError(f"conditioning must be one of {SEMANTIC_CONDITIONINGS}, got '{conditioning}'.")
        self.network = network
        self.conditioning = conditioning
        self.num_classes = num_classes

    def forward(self, x_t: torch.Tensor, timesteps: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        label = torch.as_tensor(label, device=x_t.device).long()
        one_hot = encode_mask(label, self.num_classes).to(x_t.dtype)
        if self.conditioning == "conditional":
            return self.network(torch.cat([x_t, one_hot], dim=1), timesteps)
        if self.conditioning == "mask_guided":
            return self.network(x_t, timesteps, guide=one_hot)
        if self.conditioning == "edge_guided":
            edges = semantic_edges(label).to(x_t.dtype) * 2 - 1
            return self.network(torch.cat([x_t, one_hot], dim=1), timesteps, guide=edges)
        return self.network(x_t, timesteps, seg=(one_hot + 1) / 2)


def build_semantic_model(
    conditioning: str,
    num_classes: int,
    channels: tuple[int, ...] = (32, 64, 64),
    num_res_blocks: int = 1,
    norm_num_groups: int = 32,
    num_head_channels: int = 32,
    learn_variance: bool = True,
    spade_intermediate_channels: int = 32,
    use_flash_attention: bool = False,
) -> SemanticDiffusionModel:
    """The denoiser of a conditioning at a given width: 2 output channels (epsilon + variance) with a learned variance.

    ``sdm`` uses MONAI's ``SPADEDiffusionModelUNet`` (attention at the lowest resolution, like the guided U-Net's
    middle block), the others :class:`common.guided_unet.GuidedDiffusionUNet`.
    """
    out_channels = 2 if learn_variance else 1
    if conditioning == "sdm":
        from monai.networks.nets import SPADEDiffusionModelUNet

        network: nn.Module = SPADEDiffusionModelUNet(
            spatial_dims=2,
            in_channels=1,
            out_channels=out_channels,
            label_nc=mask_channels(num_classes),
            num_res_blocks=num_res_blocks,
            channels=tuple(channels),
            attention_levels=tuple([False] * (len(channels) - 1) + [True]),
            norm_num_groups=norm_num_groups,
            num_head_channels=num_head_channels,
            spade_intermediate_channels=spade_intermediate_channels,
            use_flash_attention=use_flash_attention,
        )
    else:
        network = GuidedDiffusionUNet(
            out_channels=out_channels,
            channels=channels,
            num_res_blocks=num_res_blocks,
            norm_num_groups=norm_num_groups,
            num_head_channels=num_head_channels,
            use_flash_attention=use_flash_attention,
            **conditioning_channels(conditioning, mask_channels(num_classes)),
        )
    return SemanticDiffusionModel(network, conditioning, num_classes)
