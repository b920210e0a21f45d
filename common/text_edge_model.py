"""DiffBoost's generator (paper 003): a text-conditioned diffusion U-Net steered by an edge map through ControlNet.

``model(x_t, timesteps, tokens, edges)``: the prompt tokens go through the text encoder into the U-Net's
cross-attention (``DiffusionModelUNet(with_conditioning=True)``); the edge map goes through MONAI's ``ControlNet``,
whose residuals are added to the U-Net's skip connections and middle block. The paper fine-tunes Stable Diffusion's
ControlNet; here both are pixel-space MONAI networks trained from scratch (pretrained weights load by state dict), and
the ControlNet starts as a copy of the U-Net's encoder with zero-initialised output convolutions, as ControlNet does.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.nets import ControlNet, DiffusionModelUNet
from torch import nn

from common.text_conditioning import LearnedTextEncoder

__all__ = ["TextEdgeDiffusionModel", "build_text_edge_model"]


class TextEdgeDiffusionModel(nn.Module):
    """Denoiser ``(x_t, timesteps, tokens, edges) -> prediction``; ``conditioning_scale`` weights the edge branch."""

    def __init__(self, unet: DiffusionModelUNet, controlnet: ControlNet, text_encoder: nn.Module) -> None:
        super().__init__()
        self.unet = unet
        self.controlnet = controlnet
        self.text_encoder = text_encoder

    def forward(
        self,
        x_t: torch.Tensor,
        timesteps: torch.Tensor,
        tokens: torch.Tensor,
        edges: torch.Tensor,
        conditioning_scale: float = 1.0,
    ) -> torch.Tensor:
        context = self.text_encoder(tokens.to(x_t.device))
        down, middle = self.controlnet(
            x_t, timesteps, controlnet_cond=edges.to(x_t), conditioning_scale=conditioning_scale, context=context
        )
        return self.unet(
            x_t, timesteps, context=context, down_block_additional_residuals=down, mid_block_additional_residual=middle
        )


def build_text_edge_model(
    vocab_size: int,
    channels: Sequence[int] = (32, 64, 64),
    attention_levels: Sequence[bool] = (False, True, True),
    num_res_blocks: int = 1,
    num_head_channels: int = 32,
    norm_num_groups: int = 32,
    text_dim: int = 64,
    max_length: int = 16,
    edge_embedding_channels: Sequence[int] = (16,),
    use_flash_attention: bool = False,
    text_encoder: nn.Module | None = None,
) -> TextEdgeDiffusionModel:
    """The generator at a given width; one greyscale channel in and out, edges as one channel at image size.

    ``edge_embedding_channels`` of length 1 keeps the edge embedding at image resolution (pixel-space diffusion; the
    latent-space default of MONAI downsamples it 8x). ``use_flash_attention`` selects PyTorch's fused attention (the
    same function without keeping each attention matrix for the backward pass; benchmarks/training_step.py).
    ``text_encoder``: tokens -> (B, L, text_dim) context, e.g. ``common.text_conditioning.ClipTextEncoder``; None: a
    :class:`~common.text_conditioning.LearnedTextEncoder` over ``vocab_size`` words.
    """
    common = {
        "spatial_dims": 2,
        "in_channels": 1,
        "channels": tuple(channels),
        "attention_levels": tuple(attention_levels),
        "num_res_blocks": num_res_blocks,
        "num_head_channels": num_head_channels,
        "norm_num_groups": norm_num_groups,
        "with_conditioning": True,
        "cross_attention_dim": text_dim,
        "use_flash_attention": use_flash_attention,
    }
    unet = DiffusionModelUNet(out_channels=1, **common)
    controlnet = ControlNet(
        conditioning_embedding_in_channels=1,
        conditioning_embedding_num_channels=tuple(edge_embedding_channels),
        **common,
    )
    # ControlNet starts as a copy of the U-Net's encoder (its zero convolutions keep the start a no-op)
    controlnet.load_state_dict(unet.state_dict(), strict=False)
    if text_encoder is None:
        text_encoder = LearnedTextEncoder(vocab_size, text_dim, max_length)
    return TextEdgeDiffusionModel(unet, controlnet, text_encoder)
