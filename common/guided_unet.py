"""A diffusion U-Net with an optional guide encoder: the three conditionings of semantic CT synthesis (paper 004).

* conditional DDPM:  ``GuidedDiffusionUNet(in_channels=1 + K, guide_channels=0)``, called with ``x_t ⊕ mask``;
* mask-guided DDPM:  ``in_channels=1, guide_channels=K``, called with ``x_t`` and ``guide=mask``: a separate
  U-Net-like encoder of the mask whose feature maps before each downsampling are concatenated into the main U-Net's
  encoder and decoder at the matching resolution (Fig. 2b, SPADE-like);
* edge-guided DDPM:  ``in_channels=1 + K, guide_channels=1``, called with ``x_t ⊕ mask`` and ``guide=edge map``
  (Fig. 2c: the combination of the two).

MONAI's ``DiffusionModelUNet`` has no entry point for per-resolution features, so this network is assembled from its
blocks (``DiffusionUNetResnetBlock``, ``AttnMidBlock``, the sinusoidal time embedding) with one skip per resolution.
Guide features are as wide as the main features at each level, so group normalisation always divides the channels.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks import Convolution
from monai.networks.nets.diffusion_model_unet import AttnMidBlock, DiffusionUNetResnetBlock, get_timestep_embedding
from torch import nn

__all__ = ["GuidedDiffusionUNet", "CONDITIONINGS", "conditioning_channels"]

CONDITIONINGS = ("conditional", "mask_guided", "edge_guided")


def conditioning_channels(conditioning: str, label_channels: int, image_channels: int = 1) -> dict[str, int]:
    """``in_channels`` and ``guide_channels`` of :class:`GuidedDiffusionUNet` for a conditioning name."""
    if conditioning not in CONDITIONINGS:
        raise ValueError(f"conditioning must be one of {CONDITIONINGS}, got '{conditioning}'.")
    if conditioning == "conditional":
        return {"in_channels": image_channels + label_channels, "guide_channels": 0}
    if conditioning == "mask_guided":
        return {"in_channels": image_channels, "guide_channels": label_channels}
    return {"in_channels": image_channels + label_channels, "guide_channels": 1}


def _conv(in_channels: int, out_channels: int, groups: int, strides: int = 1) -> Convolution:
    return Convolution(
        spatial_dims=2,
        in_channels=in_channels,
        out_channels=out_channels,
        strides=strides,
        kernel_size=3,
        act="SWISH",
        norm=("group", {"num_groups": groups}),
        adn_ordering="NDA",
    )


class _GuideEncoder(nn.Module):
    """The U-Net-like encoder of the guide: one feature map per resolution, taken before each downsampling."""

    def __init__(self, in_channels: int, channels: Sequence[int], groups: int) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_channels, channels[0], 3, padding=1)
        self.levels = nn.ModuleList(
            [nn.Sequential(_conv(c_in, c, groups), _conv(c, c, groups)) for c_in, c in zip(channels, channels)]
        )
        self.downs = nn.ModuleList(
            [_conv(c, c_next, groups, strides=2) for c, c_next in zip(channels[:-1], channels[1:])]
        )

    def forward(self, guide: torch.Tensor) -> list[torch.Tensor]:
        features, h = [], self.stem(guide)
        for i, level in enumerate(self.levels):
            h = level(h)
            features.append(h)
            if i < len(self.downs):
                h = self.downs[i](h)
        return features


class GuidedDiffusionUNet(nn.Module):
    """``(x, timesteps, guide=None) -> prediction``, a 2D diffusion U-Net with an optional guide branch.

    Args:
        in_channels: channels of ``x`` (the noisy image, plus any concatenated condition).
        out_channels: output channels (2 x image channels for a learned variance: epsilon and the interpolation).
        channels: width per resolution; each level but the last halves the resolution.
        guide_channels: channels of the guide map (0: no guide encoder).
        num_res_blocks: residual blocks per level in the encoder and the decoder.
        norm_num_groups: group-norm groups (must divide every width).
        num_head_channels: channels per attention head in the middle block.
        use_flash_attention: PyTorch's fused attention in the middle block (same function, less memory).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        channels: Sequence[int] = (32, 64, 64),
        guide_channels: int = 0,
        num_res_blocks: int = 1,
        norm_num_groups: int = 32,
        num_head_channels: int = 32,
        use_flash_attention: bool = False,
    ) -> None:
        super().__init__()
        channels = list(channels)
        if any(c % norm_num_groups for c in channels):
            raise ValueError(
                f"every width in channels {channels} must be divisible by norm_num_groups {norm_num_groups}."
            )
        self.channels = channels
        self.guide_channels = guide_channels
        temb = 4 * channels[0]
        self.time_embed = nn.Sequential(nn.Linear(channels[0], temb), nn.SiLU(), nn.Linear(temb, temb))
        self.conv_in = nn.Conv2d(in_channels, channels[0], 3, padding=1)
        self.guide = _GuideEncoder(guide_channels, channels, norm_num_groups) if guide_channels else None
        extra = channels if guide_channels else [0] * len(channels)

        def blocks(first_in: int, width: int) -> nn.ModuleList:
            return nn.ModuleList(
                [
                    DiffusionUNetResnetBlock(
                        2, first_in if k == 0 else width, temb, width, norm_num_groups=norm_num_groups
                    )
                    for k in range(num_res_blocks)
                ]
            )

        previous = [channels[0], *channels[:-1]]
        self.encoder = nn.ModuleList([blocks(p + g, c) for p, g, c in zip(previous, extra, channels)])
        self.downs = nn.ModuleList([nn.Conv2d(c, c, 3, stride=2, padding=1) for c in channels[:-1]])
        self.middle = AttnMidBlock(
            2,
            channels[-1],
            temb,
            norm_num_groups=norm_num_groups,
            num_head_channels=num_head_channels,
            use_flash_attention=use_flash_attention,
        )
        self.decoder = nn.ModuleList([blocks(2 * c + g, c) for c, g in zip(channels, extra)])
        self.ups = nn.ModuleList(
            [
                nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c, c_prev, 3, padding=1))
                for c_prev, c in zip(channels[:-1], channels[1:])
            ]
        )
        self.out = nn.Sequential(
            nn.GroupNorm(norm_num_groups, channels[0]), nn.SiLU(), nn.Conv2d(channels[0], out_channels, 3, padding=1)
        )
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, guide: torch.Tensor | None = None) -> torch.Tensor:
        if (guide is None) != (self.guide is None):
            raise ValueError(
                f"this network was built with guide_channels={self.guide_channels}: "
                + ("pass the guide map." if guide is None else "it takes no guide map.")
            )
        factor = 2 ** (len(self.channels) - 1)
        if x.shape[-1] % factor or x.shape[-2] % factor:
            raise ValueError(f"spatial size {tuple(x.shape[-2:])} must be divisible by {factor}.")
        emb = self.time_embed(get_timestep_embedding(timesteps, self.channels[0]).to(x.dtype))
        guides = self.guide(guide) if self.guide is not None else [None] * len(self.channels)
        h, skips = self.conv_in(x), []
        for level, resnets in enumerate(self.encoder):
            if guides[level] is not None:
                h = torch.cat([h, guides[level]], dim=1)
            for block in resnets:
                h = block(h, emb)
            skips.append(h)
            if level < len(self.downs):
                h = self.downs[level](h)
        h = self.middle(h, emb)
        for level in reversed(range(len(self.channels))):
            parts = [h, skips[level]] + ([guides[level]] if guides[level] is not None else [])
            h = torch.cat(parts, dim=1)
            for block in self.decoder[level]:
                h = block(h, emb)
            if level > 0:
                h = self.ups[level - 1](h)
        return self.out(h)
