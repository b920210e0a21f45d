"""The PIG paper's comparison models (Tables 1-2), behind the pair-sampler protocol of :mod:`common.sampling`.

* :class:`MaskConditionedSampler`: "real masks in, images out" (LDM / SegGuidedDiff / ControlNet were fed the training
  masks): PIG's own image model conditioned on given masks instead of the guider's estimate.
* :class:`UnconditionalSampler`: an unconditional image-only DDPM/DDIM (Table 1), for FID only.
* :class:`MaskControlNet` (Table 2's ControlNet): a MONAI ``ControlNet`` on the real mask steering a FROZEN
  unconditional image U-Net (``configs/unconditional.json``'s model, trained first on the same images), the recipe of
  Zhang et al. 2023 at this scale; ``configs/controlnet.json`` trains it, ``mask_conditioned.json`` samples it.
* :class:`LatentMaskDiffusion` (Table 2's LDM): a MONAI ``AutoencoderKL`` trained first on the images
  (``configs/ldm_autoencoder.json``, L1 + KL), frozen, and a ``DiffusionModelUNet`` in its latent space conditioned on
  the mask resized to the latent grid (``configs/ldm.json``); ``mask_conditioned.json`` samples it too.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.engines import DiffusionPrepareBatch, PrepareBatch, VPredictionPrepareBatch
from monai.networks.nets import AutoencoderKL, ControlNet, DiffusionModelUNet
from torch import nn

from common.checkpoints import load_weights
from common.diffusion import diffusion_target
from common.sampling import ConditionedPairSampler, ImageSampler
from common.schedulers import prediction_type
from common.training import image_and_mask, noised
from common.transforms import encode_mask, mask_channels

from .pig import unet_settings

__all__ = [
    "MaskConditionedSampler",
    "UnconditionalSampler",
    "image_prepare_batch",
    "MaskControlNet",
    "build_mask_controlnet",
    "freeze_image_model",
    "MaskConditionedPrepareBatch",
    "build_autoencoder",
    "AutoencoderLoss",
    "ReconstructionPrepareBatch",
    "LatentMaskDiffusion",
    "build_latent_mask_diffusion",
    "freeze_autoencoder",
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
        if hasattr(model, "sample_for_masks"):  # a model that samples elsewhere (the LDM's latent space)
            return model.sample_for_masks(condition, noise, self.image_sampler)
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
    encoder on the encoded mask (:func:`freeze_image_model` loads the U-Net and starts the ControlNet from it)."""
    shared = unet_settings(
        image_channels, channels, attention_levels, num_res_blocks, num_head_channels, norm_num_groups,
        use_flash_attention,
    )  # fmt: skip
    unet = DiffusionModelUNet(out_channels=image_channels, **shared)
    controlnet = ControlNet(
        conditioning_embedding_in_channels=mask_channels(num_classes),
        conditioning_embedding_num_channels=tuple(conditioning_channels),
        **shared,
    )
    return MaskControlNet(unet, controlnet)


def freeze_image_model(model: MaskControlNet, weights: str) -> MaskControlNet:
    """Load the trained unconditional image model (``weights``: configs/unconditional.json's model.pt) into the
    ControlNet baseline's U-Net, freeze it, and start the ControlNet as a copy of its encoder (the ControlNet's zero
    convolutions keep the start a no-op): only the ControlNet trains."""
    load_weights(model.unet, weights)
    model.controlnet.load_state_dict(model.unet.state_dict(), strict=False)
    model.unet.requires_grad_(False)
    return model


class MaskConditionedPrepareBatch(PrepareBatch):
    """Batch -> ``(x_t, target, (timesteps, encoded mask), {})`` for a mask-conditioned model such as
    :class:`MaskControlNet` (SimpleInferer calls ``network(x_t, timesteps, mask)``); the target follows the
    scheduler's parameterisation (noise, velocity or sample). ``encode``: where the diffusion runs, e.g. the frozen
    autoencoder's latent space of :class:`LatentMaskDiffusion` (``model.encode``); None: the image itself."""

    def __init__(
        self, scheduler: Any, num_classes: int = 2, antithetic: bool = True, encode: Callable | None = None
    ) -> None:
        self.scheduler = scheduler
        self.num_classes = num_classes
        self.antithetic = antithetic
        self.encode = encode

    def __call__(
        self, batchdata: Mapping[str, torch.Tensor], device=None, non_blocking: bool = False, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor, tuple, dict]:
        image, _, mask = image_and_mask(batchdata, device, non_blocking, self.num_classes)
        if self.encode is not None:
            with torch.no_grad():
                image = self.encode(image)
        noisy, noise, timesteps = noised(self.scheduler, image, self.antithetic)
        return noisy, diffusion_target(self.scheduler, image, noise, timesteps), (timesteps, mask), {}


# --------------------------------------------------------------------------------------------------------------------
# Table 2's LDM: an autoencoder, then mask-conditioned diffusion in its latent space
# --------------------------------------------------------------------------------------------------------------------


def build_autoencoder(
    image_channels: int = 1,
    channels: Sequence[int] = (32, 64),
    latent_channels: int = 3,
    norm_num_groups: int = 32,
) -> AutoencoderKL:
    """A small MONAI ``AutoencoderKL``: one downsampling per extra level (64x64 -> 32x32 with two levels)."""
    return AutoencoderKL(
        spatial_dims=2, in_channels=image_channels, out_channels=image_channels, channels=tuple(channels),
        latent_channels=latent_channels, num_res_blocks=1, attention_levels=(False,) * len(channels),
        norm_num_groups=norm_num_groups, with_encoder_nonlocal_attn=False, with_decoder_nonlocal_attn=False,
    )  # fmt: skip


class AutoencoderLoss(nn.Module):
    """L1 reconstruction + ``kl_weight`` x the KL term of the latent (the LDM's first stage without its perceptual and
    adversarial terms, which need pretrained or extra networks)."""

    def __init__(self, kl_weight: float = 1e-6) -> None:
        super().__init__()
        self.kl_weight = kl_weight

    def forward(self, output: tuple[torch.Tensor, torch.Tensor, torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        reconstruction, z_mu, z_sigma = output
        kl = 0.5 * (z_mu.pow(2) + z_sigma.pow(2) - torch.log(z_sigma.pow(2) + 1e-12) - 1).flatten(1).sum(1).mean()
        return F.l1_loss(reconstruction, target) + self.kl_weight * kl


class ReconstructionPrepareBatch(PrepareBatch):
    """Batch -> ``(image, image, (), {})``: the autoencoder learns to give its input back."""

    def __call__(self, batchdata: Mapping[str, torch.Tensor], device=None, non_blocking: bool = False, **kwargs: Any):
        image = torch.as_tensor(batchdata["image"]).to(device=device, dtype=torch.float32, non_blocking=non_blocking)
        return image, image, (), {}


class LatentMaskDiffusion(nn.Module):
    """``forward(z_t, t, mask)``: the latent U-Net's prediction for ``z_t`` given the encoded mask resized to the
    latent grid (concatenated channels). ``encode`` / ``decode`` map images to the scaled latent and back through the
    frozen autoencoder; :meth:`sample_for_masks` is what :class:`MaskConditionedSampler` calls."""

    def __init__(self, autoencoder: AutoencoderKL, unet: DiffusionModelUNet, scale_factor: float = 1.0) -> None:
        super().__init__()
        self.autoencoder = autoencoder
        self.unet = unet
        self.register_buffer("scale_factor", torch.tensor(float(scale_factor)))
        self.latent_channels = unet.out_channels
        self.mask_channels = unet.in_channels - unet.out_channels

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        z_mu, _ = self.autoencoder.encode(image)
        return z_mu * self.scale_factor

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        return self.autoencoder.decode(latent / self.scale_factor)

    def forward(self, z_t: torch.Tensor, timesteps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        condition = F.adaptive_avg_pool2d(mask, z_t.shape[-2:])
        return self.unet(torch.cat([z_t, condition], dim=1), timesteps)

    def sample_for_masks(self, mask: torch.Tensor, noise: torch.Tensor, image_sampler: ImageSampler) -> torch.Tensor:
        """Images for encoded masks: reverse diffusion in the latent, then the decoder. The latent noise is the image
        noise rearranged (pixel unshuffle, still i.i.d. normal), so pair ``i``'s image depends on its noise alone."""
        with torch.no_grad():
            latent_size = self.encode(torch.zeros_like(noise[:1])).shape[-2:]
        factor = noise.shape[-1] // latent_size[-1]
        latent_noise = F.pixel_unshuffle(noise, factor)[:, : self.latent_channels]
        latent = image_sampler(lambda z_t, t: self(z_t, t, mask), latent_noise)
        return self.decode(latent)


def build_latent_mask_diffusion(
    num_classes: int = 2,
    image_channels: int = 1,
    autoencoder_channels: Sequence[int] = (32, 64),
    latent_channels: int = 3,
    channels: Sequence[int] = (32, 64, 64),
    attention_levels: Sequence[bool] = (False, False, True),
    num_res_blocks: int = 1,
    num_head_channels: int = 32,
    norm_num_groups: int = 32,
    use_flash_attention: bool = True,
) -> LatentMaskDiffusion:
    """The autoencoder of ``configs/ldm_autoencoder.json`` (same settings) and a latent U-Net of PIG's width."""
    autoencoder = build_autoencoder(image_channels, autoencoder_channels, latent_channels, norm_num_groups)
    settings = unet_settings(
        latent_channels + mask_channels(num_classes), channels, attention_levels, num_res_blocks, num_head_channels,
        norm_num_groups, use_flash_attention,
    )  # fmt: skip
    unet = DiffusionModelUNet(out_channels=latent_channels, **settings)
    return LatentMaskDiffusion(autoencoder, unet)


def freeze_autoencoder(model: LatentMaskDiffusion, weights: str, images: Sequence[Any] = ()) -> LatentMaskDiffusion:
    """Load and freeze the trained autoencoder; with training ``images``, set the latent scale to 1 / std of their
    latents (Rombach et al.: unit-variance latents suit the noise schedule)."""
    load_weights(model.autoencoder, weights)
    model.autoencoder.requires_grad_(False)
    if len(images):
        with torch.no_grad():
            batch = torch.stack([torch.as_tensor(x, dtype=torch.float32) for x in images[:64]])
            model.scale_factor.fill_(1.0 / float(model.autoencoder.encode(batch)[0].std()))
    return model
