"""DiffuseExpand (Shao et al. 2023): expanding a segmentation dataset with diffusion, its four stages in one module.

* **Stage I** (paper Eq. 3): one denoiser for both halves of a pair, :class:`TaskConditionedDiffusionModel`. A task
  label ``y1`` says what it denoises: ``MASK_TASK`` (0) a mask from noise, ``IMAGE_TASK`` (1) an image given a mask
  ``y2``. ``y1`` enters through the U-Net's class embedding (added to the time embedding, as in the authors' code);
  the mask ``y2`` is concatenated to ``x_t`` as an extra input channel, so the image can follow the mask pixel by
  pixel (the authors pooled it to 16x16 and added it to the time embedding, which loses the mask's geometry at
  CPU-scale resolutions). "No mask" (the mask task, and the classifier-free dropout of the image task) is a constant
  channel of ``NULL_CONDITION`` = 0, a value no encoded mask takes ({-1, 1}). :class:`TaskConditionedPrepareBatch`
  draws ``y1`` ~ Bernoulli(0.5) per sample and drops the mask with probability 0.5 (classifier-free guidance).
* **Stage II** (Eq. 4): :class:`NoisySegmenter`, a time-conditioned segmenter of noisy images f_psi(x_t, t) with a
  head g_omega telling noisy images from noisy masks (``y1``), trained by :class:`NoisySegmenterLoss` (Dice + BCE on
  the mask of images, BCE on ``y1`` for all) on :class:`NoisySegmenterPrepareBatch` batches. The paper feeds g_omega
  the segmentation logits only; here it sees ``[x_t, logits]``, which can only help it tell masks from images.
* **Stage III** (Lemma 3.3): :class:`TwoPhaseSampler` draws a mask from noise, then an image given that mask, with
  any scheduler (the paper: DPM-Solver++), classifier-free guidance and classifier guidance from the Stage II
  segmenter with a temperature tau on its logits (:func:`bernoulli_log_likelihood`).
* **Stage IV** (shared with every bundle: :mod:`common.filtering`, re-exported here): :func:`filter_pairs` keeps a
  generated pair when a segmenter trained on the real pairs agrees with its mask, Dice loss below ``eta`` (paper
  0.065) -> ``kept``; with ``middle_band``, ``eta <= loss < 2 eta`` -> ``relabelled`` (the image kept with the
  segmenter's mask, the authors' code); otherwise ``dropped``; ``filter_report.json`` says why for each pair.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from monai.engines import PrepareBatch
from monai.losses import DiceLoss
from monai.networks.blocks import Convolution
from torch import nn

from common.checkpoints import load_weights
from common.diffusion import (
    apply_classifier_guidance,
    classifier_free,
    diffusion_target,
    from_epsilon,
    log_likelihood_gradient,
    to_epsilon,
)
from common.errors import InputError, as_flag
from common.filtering import DECISIONS, filter_decisions, filter_pairs, hard_dice_loss
from common.sampling import scheduler_step, stream_scheduler, timestep_batch
from common.schedulers import prediction_type
from common.training import batch_uniform, image_and_mask, noised

__all__ = [
    "MASK_TASK",
    "IMAGE_TASK",
    "NULL_CONDITION",
    "TaskConditionedDiffusionModel",
    "TaskConditionedPrepareBatch",
    "NoisySegmenter",
    "NoisySegmenterLoss",
    "NoisySegmenterPrepareBatch",
    "bernoulli_log_likelihood",
    "structure_log_likelihood",
    "GUIDANCE_LOSSES",
    "TwoPhaseSampler",
    "guidance_classifier",
    "DECISIONS",
    "hard_dice_loss",
    "filter_decisions",
    "filter_pairs",
]

MASK_TASK, IMAGE_TASK = 0, 1
NULL_CONDITION = 0.0


# --------------------------------------------------------------------------------------------------------------------
# Stage I: one denoiser for masks and images (Eq. 3)
# --------------------------------------------------------------------------------------------------------------------


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


class _TaskBatch(PrepareBatch):
    """Shared by the DiffuseExpand stages: per sample ``y1`` ~ Bernoulli(``image_probability``) picks whether the
    clean sample is the image (``y1 = 1``) or the mask (``y1 = 0``); both are noised with one uniform t."""

    def __init__(self, scheduler: Any, image_probability: float = 0.5, antithetic: bool = True) -> None:
        if not 0.0 <= image_probability <= 1.0:
            raise ValueError(f"image_probability must be in [0, 1], got {image_probability}.")
        self.scheduler = scheduler
        self.image_probability = image_probability
        self.antithetic = antithetic

    def noised(self, batchdata: Mapping[str, Any], device, non_blocking: bool):
        image, label, mask = image_and_mask(batchdata, device, non_blocking, num_classes=2)
        if image.shape[1] != mask.shape[1]:
            raise ValueError(
                f"mask/image tasks share one network: the image must have {mask.shape[1]} channel(s) like the "
                f"binary mask, got {image.shape[1]}."
            )
        if label.max() > 1 or label.min() < 0:
            raise ValueError("DiffuseExpand models binary masks: labels must be 0/1 (set num_classes=2).")
        batch = image.shape[0]
        task = (batch_uniform(batch, image.device) < self.image_probability).long()
        is_image = task.view(-1, *([1] * (image.ndim - 1))).bool()
        clean = torch.where(is_image, image, mask)
        noisy, noise, timesteps = noised(self.scheduler, clean, self.antithetic)
        return task, is_image, clean, noise, noisy, timesteps, mask, label


class TaskConditionedPrepareBatch(_TaskBatch):
    """Stage I batches for :class:`TaskConditionedDiffusionModel` (paper Eq. 3).

    Image samples carry their mask as condition, dropped (set to ``NULL_CONDITION``) with probability
    ``condition_dropout`` for classifier-free guidance (authors' code: 0.5); mask samples never have one.
    Returns ``(x_t, target, (), {"timesteps", "task", "condition"})``.
    """

    def __init__(
        self, scheduler: Any, condition_dropout: float = 0.5, image_probability: float = 0.5, antithetic: bool = True
    ) -> None:
        super().__init__(scheduler, image_probability, antithetic)
        if not 0.0 <= condition_dropout <= 1.0:
            raise ValueError(f"condition_dropout must be in [0, 1], got {condition_dropout}.")
        self.condition_dropout = condition_dropout

    def __call__(self, batchdata: Mapping[str, Any], device=None, non_blocking: bool = False, **kwargs: Any):
        task, is_image, clean, noise, noisy, timesteps, mask, _ = self.noised(batchdata, device, non_blocking)
        keep = batch_uniform(task.shape[0], noisy.device) >= self.condition_dropout
        keep = keep.view(-1, *([1] * (noisy.ndim - 1))) & is_image
        condition = torch.where(keep, mask, torch.full_like(mask, NULL_CONDITION))
        target = diffusion_target(self.scheduler, clean, noise, timesteps)
        return noisy, target, (), {"timesteps": timesteps, "task": task, "condition": condition}


class NoisySegmenterPrepareBatch(_TaskBatch):
    """Stage II batches for :class:`NoisySegmenter` (paper Eq. 4).

    Returns ``(x_t, {"mask": 0/1 float, "task": y1 float}, (), {"timesteps"})``.
    """

    def __call__(self, batchdata: Mapping[str, Any], device=None, non_blocking: bool = False, **kwargs: Any):
        task, _, _, _, noisy, timesteps, _, label = self.noised(batchdata, device, non_blocking)
        target = {"mask": label.to(noisy.dtype), "task": task.to(noisy.dtype)}
        return noisy, target, (), {"timesteps": timesteps}


# --------------------------------------------------------------------------------------------------------------------
# Stage II: the noisy segmenter (Eq. 4)
# --------------------------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------------------------
# Stage III: mask, then image, with guidance (Lemma 3.3)
# --------------------------------------------------------------------------------------------------------------------


def bernoulli_log_likelihood(logits: torch.Tensor, target: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Per-sample ``sum log p(target | sigmoid(logits / temperature))`` over all non-batch dimensions.

    ``target`` holds probabilities in [0, 1] (a binary mask, or the task label 0/1); shape broadcastable to logits.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}.")
    scaled = logits / temperature
    target = torch.as_tensor(target, dtype=scaled.dtype, device=scaled.device).expand_as(scaled)
    return -F.binary_cross_entropy_with_logits(scaled, target, reduction="none").flatten(1).sum(1)


def structure_log_likelihood(
    logits: torch.Tensor, target: torch.Tensor, temperature: float = 1.0, boundary_kernel: int = 31
) -> torch.Tensor:
    """Per-sample ``-(weighted BCE + weighted IoU)`` of the mask logits against ``target`` (N, 1, H, W) in [0, 1],
    each AVERAGED over the image with boundary weights ``1 + 5 |avg_pool(target) - target|`` (PraNet's structure
    loss): the guidance loss of the DiffuseExpand authors' code. Unlike :func:`bernoulli_log_likelihood`, which sums
    over pixels (~H x W times stronger: 4096x at 64x64), its scale does not grow with the image size."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}.")
    scaled = logits / temperature
    target = torch.as_tensor(target, dtype=scaled.dtype, device=scaled.device).expand_as(scaled)
    pad = boundary_kernel // 2
    weight = 1 + 5 * (F.avg_pool2d(target, boundary_kernel, stride=1, padding=pad) - target).abs()
    bce = F.binary_cross_entropy_with_logits(scaled, target, reduction="none")
    weighted_bce = (weight * bce).flatten(1).sum(1) / weight.flatten(1).sum(1)
    probability = torch.sigmoid(scaled)
    inter = (probability * target * weight).flatten(1).sum(1)
    union = ((probability + target) * weight).flatten(1).sum(1)
    weighted_iou = 1 - (inter + 1) / (union - inter + 1)
    return -(weighted_bce + weighted_iou)


GUIDANCE_LOSSES = {"structure": structure_log_likelihood, "pixel_sum": bernoulli_log_likelihood}


class TwoPhaseSampler:
    """A mask from noise, then an image given that mask, with one task-conditioned model (DiffuseExpand Stage III).

    Works with :class:`TaskConditionedDiffusionModel` and any scheduler (the paper: diffusers'
    DPM-Solver++). Optional guidance, each step, on the noise estimate (:mod:`common.diffusion`):

    * classifier-free: ``cfg_scale`` on the image phase (1 = the conditional model alone, one network call);
    * classifier guidance from a :class:`NoisySegmenter` with scale ``classifier_scale`` (s)
      and temperature ``temperature`` (tau) on its logits (Lemma 3.3): the image phase follows ``log p(y1 = image |
      x_t) + log p(y2 = the mask | x_t)``. ``guidance_loss`` says how the mask term is measured: ``"structure"``
      (default, the authors' code: :func:`structure_log_likelihood`, averaged over the image) or ``"pixel_sum"``
      (the paper's Bernoulli log-likelihood summed over pixels). ``guide_mask_phase``: also guide the mask phase
      towards ``log p(y1 = mask | x_t)`` (the authors' code does not).

    Returns ``(mask, image)``: the mask binarised to {-1, 1} (it conditions the image phase that way, as in
    training), the image continuous.
    """

    def __init__(
        self,
        scheduler: Any,
        num_inference_steps: int = 30,
        cfg_scale: float = 1.0,
        classifier: Any = None,
        classifier_scale: float = 1.0,
        temperature: float = 1.0,
        guidance_loss: str = "structure",
        guide_mask_phase: bool = False,
    ) -> None:
        if guidance_loss not in GUIDANCE_LOSSES:
            raise InputError(f"'guidance_loss' must be one of {sorted(GUIDANCE_LOSSES)}, got {guidance_loss!r}.")
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}.")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}.")
        self.scheduler = scheduler
        self.num_inference_steps = num_inference_steps
        self.cfg_scale = cfg_scale
        self.classifier = classifier
        self.classifier_scale = classifier_scale
        self.temperature = temperature
        self.mask_term = GUIDANCE_LOSSES[guidance_loss]
        self.guide_mask_phase = as_flag(guide_mask_phase, "guide_mask_phase")

    def log_likelihood(
        self, x_t: torch.Tensor, timesteps: torch.Tensor, task: int, condition: torch.Tensor | None
    ) -> torch.Tensor:
        """Per-sample ``log p(y1 = task | x_t) [+ log p(y2 = condition | x_t)]`` under the tempered classifier."""
        logits, task_logit = self.classifier(x_t, timesteps)
        target = torch.full_like(task_logit, float(task))
        total = bernoulli_log_likelihood(task_logit[:, None], target[:, None], self.temperature)
        if condition is not None:
            total = total + self.mask_term(logits, (condition > 0).to(logits.dtype), self.temperature)
        return total

    def _guided(self, model, x_t, t_batch, task, condition, alpha_bar, kind) -> torch.Tensor:
        out = model(x_t, t_batch, task, condition)
        if condition is not None and self.cfg_scale != 1.0:
            out = classifier_free(out, model(x_t, t_batch, task, None), self.cfg_scale)
        if self.classifier is None or self.classifier_scale == 0 or (condition is None and not self.guide_mask_phase):
            return out
        grad = log_likelihood_gradient(lambda x: self.log_likelihood(x, t_batch, task, condition), x_t)
        eps = apply_classifier_guidance(to_epsilon(x_t, out, alpha_bar, kind), grad, alpha_bar, self.classifier_scale)
        return from_epsilon(x_t, eps, alpha_bar, kind)

    def phase(self, model, noise: torch.Tensor, task: int, condition: torch.Tensor | None = None) -> torch.Tensor:
        """Reverse diffusion of one task from ``noise``; ``condition`` is the mask for the image task."""
        scheduler = stream_scheduler(self.scheduler, self.num_inference_steps, noise.device)
        alphas_cumprod = scheduler.alphas_cumprod.to(noise.device)
        kind = prediction_type(scheduler)
        x_t = noise * getattr(scheduler, "init_noise_sigma", 1.0)
        for t in scheduler.timesteps:
            t_batch = timestep_batch(t, x_t)
            out = self._guided(model, x_t, t_batch, task, condition, alphas_cumprod[int(t)], kind)
            x_t = scheduler_step(scheduler, out, t, x_t)
        return x_t

    @torch.no_grad()
    def __call__(
        self, model, mask_noise: torch.Tensor, image_noise: torch.Tensor, indices=None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        mask = torch.where(self.phase(model, mask_noise, MASK_TASK) > 0, 1.0, -1.0).to(mask_noise.dtype)
        image = self.phase(model, image_noise, IMAGE_TASK, mask)
        return mask, image


def guidance_classifier(
    segmenter: nn.Module, path: str, enabled: bool = True, device: str | torch.device = "cpu"
) -> nn.Module | None:
    """The trained Stage II segmenter for classifier guidance, in eval mode on ``device``; None when guidance is off
    (the weights are then never read, so sampling works before Stage II was trained)."""
    if not as_flag(enabled, "classifier_guidance"):
        return None
    return load_weights(segmenter, path).to(device).eval()
