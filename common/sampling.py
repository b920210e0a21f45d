"""The paired sampler of PIG (Alg. 2), independent of the noise scheduler.

Each step: the guider predicts the mask noise from (x_t, y_t); Eq. (6) turns it into the mask estimate x0_hat and the
scheduler moves the mask to x_{t-1}; the image model, conditioned on x0_hat, predicts the image noise and the scheduler
moves the image to y_{t-1}. With MONAI's DDIM (eta=0) the scheduler step is exactly Eq. (7) with sigma_t = 0.

Any object with ``set_timesteps``, ``timesteps``, ``alphas_cumprod`` and ``step(model_output, t, sample)`` works:
MONAI's DDIM/DDPM/PNDM and diffusers' schedulers (whose ``step`` returns an object with ``prev_sample``). Each stream
gets its own deep copy of the scheduler, because multistep solvers keep a history of model outputs.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import numpy as np
import torch

from common.guidance import (
    apply_classifier_guidance,
    bernoulli_log_likelihood,
    classifier_free,
    from_epsilon,
    log_likelihood_gradient,
    to_epsilon,
)
from common.paired_model import PairedDiffusionModel, predict_x0
from common.schedulers import prediction_type
from common.task_conditioned import IMAGE_TASK, MASK_TASK
from common.transforms import encode_mask

__all__ = [
    "PairedSampler",
    "MaskConditionedSampler",
    "UnconditionalSampler",
    "ImageSampler",
    "TwoPhaseSampler",
    "LabelConditionedSampler",
    "scheduler_step",
]

logger = logging.getLogger(__name__)


def scheduler_step(
    scheduler: Any, model_output: torch.Tensor, timestep: torch.Tensor, sample: torch.Tensor
) -> torch.Tensor:
    """x_{t-1} from a scheduler's ``step``, whichever return convention it has (MONAI tuple or diffusers output)."""
    out = scheduler.step(model_output, timestep, sample)
    if isinstance(out, tuple):
        return out[0]
    return out.prev_sample


class PairedSampler:
    """Generate (mask, image) pairs from noise with a :class:`PairedDiffusionModel` (PIG Alg. 2).

    Args:
        scheduler: a configured scheduler; ``set_timesteps(num_inference_steps)`` is called on a copy per stream.
        num_inference_steps: sampling steps (the paper: 256 DDIM steps of T=1024).
        progress_every: log a line every this many steps (0 = silent).
    """

    def __init__(self, scheduler: Any, num_inference_steps: int = 50, progress_every: int = 0) -> None:
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}.")
        self.scheduler = scheduler
        self.num_inference_steps = num_inference_steps
        self.progress_every = progress_every

    def _stream_scheduler(self, device: torch.device) -> Any:
        scheduler = copy.deepcopy(self.scheduler)
        scheduler.set_timesteps(self.num_inference_steps, device=device)
        return scheduler

    @torch.no_grad()
    def __call__(
        self, model: PairedDiffusionModel, mask_noise: torch.Tensor, image_noise: torch.Tensor, indices=None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run Alg. 2 from (x_T, y_T) = (mask_noise, image_noise); returns the continuous (x_0, y_0).

        ``indices`` (the pair numbers being generated) is part of the sampler interface and unused here."""
        device = mask_noise.device
        mask_scheduler = self._stream_scheduler(device)
        image_scheduler = self._stream_scheduler(device)
        alphas_cumprod = mask_scheduler.alphas_cumprod.to(device)
        x_t = mask_noise * getattr(mask_scheduler, "init_noise_sigma", 1.0)
        y_t = image_noise * getattr(image_scheduler, "init_noise_sigma", 1.0)
        timesteps = mask_scheduler.timesteps
        parameterisation = prediction_type(mask_scheduler)
        for i, t in enumerate(timesteps):
            t_batch = torch.full((x_t.shape[0],), int(t), device=device, dtype=torch.long)
            eps_x = model.guider_noise(x_t, y_t, t_batch)
            x0_hat = predict_x0(x_t, eps_x, alphas_cumprod[int(t)], parameterisation)
            x_t = scheduler_step(mask_scheduler, eps_x, t, x_t)
            eps_y = model.image_noise(model.condition_from_estimate(x0_hat), y_t, t_batch)
            y_t = scheduler_step(image_scheduler, eps_y, t, y_t)
            if self.progress_every and (i + 1) % self.progress_every == 0:
                logger.info("sampling step %d/%d (t=%d)", i + 1, len(timesteps), int(t))
        return x_t, y_t


class ImageSampler:
    """Single-stream reverse diffusion: ``denoiser(x_t, t) -> eps`` from noise to x_0 with any scheduler.

    The baselines of the PIG paper use it: an unconditional image model (DDPM with 1000 steps, DDIM with fewer), and
    the image model conditioned on a fixed real mask (SegGuidedDiff-style), see :class:`MaskConditionedSampler`.
    """

    def __init__(self, scheduler: Any, num_inference_steps: int = 50) -> None:
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}.")
        self.scheduler = scheduler
        self.num_inference_steps = num_inference_steps

    @torch.no_grad()
    def __call__(self, denoiser, noise: torch.Tensor) -> torch.Tensor:
        scheduler = copy.deepcopy(self.scheduler)
        scheduler.set_timesteps(self.num_inference_steps, device=noise.device)
        sample = noise * getattr(scheduler, "init_noise_sigma", 1.0)
        for t in scheduler.timesteps:
            t_batch = torch.full((sample.shape[0],), int(t), device=noise.device, dtype=torch.long)
            sample = scheduler_step(scheduler, denoiser(sample, t_batch), t, sample)
        return sample


class MaskConditionedSampler:
    """The "real masks in, images out" baseline: PIG's image model conditioned on given masks instead of the guider.

    Pair ``i`` uses ``masks[i % len(masks)]``, so generating N pairs cycles through the real training masks (the paper's
    LDM / SegGuidedDiff / ControlNet baselines were fed the training-set masks the same way).

    Args:
        masks: label maps (class indices), each (1, H, W), e.g. ``[p["label"] for p in load_dataset(...)]``.
        scheduler, num_inference_steps: as for :class:`PairedSampler`.
        num_classes: to encode the masks as the model saw them in training.
    """

    def __init__(self, masks, scheduler: Any, num_inference_steps: int = 50, num_classes: int = 2) -> None:
        if len(masks) == 0:
            raise ValueError("MaskConditionedSampler needs at least one mask.")
        self.masks = torch.stack([torch.as_tensor(m) for m in masks]).long()
        self.num_classes = num_classes
        self.image_sampler = ImageSampler(scheduler, num_inference_steps)

    @torch.no_grad()
    def __call__(
        self, model: PairedDiffusionModel, mask_noise: torch.Tensor, image_noise: torch.Tensor, indices=None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if indices is None:
            indices = range(image_noise.shape[0])
        chosen = self.masks[[i % len(self.masks) for i in indices]].to(image_noise.device)
        condition = encode_mask(chosen, self.num_classes).to(image_noise.dtype)
        image = self.image_sampler(lambda y_t, t: model.image_noise(condition, y_t, t), image_noise)
        return condition, image


class LabelConditionedSampler:
    """Images for given label maps with a ``model(x_t, t, label)`` (semantic synthesis, paper 004).

    Pair ``i`` is the image for ``labels[i % len(labels)]``; returns ``(encoded labels, images)`` so
    :func:`common.generation.generate_pairs` writes each synthetic image next to the label map it was made from.
    """

    def __init__(self, labels, scheduler: Any, num_inference_steps: int = 50, num_classes: int = 2) -> None:
        if len(labels) == 0:
            raise ValueError("LabelConditionedSampler needs at least one label map.")
        self.labels = torch.stack([torch.as_tensor(np.asarray(m)) for m in labels]).long()
        self.num_classes = num_classes
        self.image_sampler = ImageSampler(scheduler, num_inference_steps)

    @torch.no_grad()
    def __call__(self, model, mask_noise: torch.Tensor, image_noise: torch.Tensor, indices=None):
        if indices is None:
            indices = range(image_noise.shape[0])
        chosen = self.labels[[i % len(self.labels) for i in indices]].to(image_noise.device)
        image = self.image_sampler(lambda x_t, t: model(x_t, t, chosen), image_noise)
        return encode_mask(chosen, self.num_classes).to(image.dtype), image


class UnconditionalSampler:
    """The unconditional image-only baseline (PIG paper, Table 1) behind the pair-sampler interface.

    Returns ``(None, image)``: the model generates no mask, so previews show an empty mask and
    :func:`common.generation.generate_pairs` refuses to write pairs from it (benchmarks use its images for FID).
    """

    def __init__(self, scheduler: Any, num_inference_steps: int = 50) -> None:
        self.image_sampler = ImageSampler(scheduler, num_inference_steps)

    @torch.no_grad()
    def __call__(
        self, model, mask_noise: torch.Tensor, image_noise: torch.Tensor, indices=None
    ) -> tuple[None, torch.Tensor]:
        return None, self.image_sampler(lambda y_t, t: model(y_t, t), image_noise)


class TwoPhaseSampler:
    """A mask from noise, then an image given that mask, with one task-conditioned model (DiffuseExpand Stage III).

    Works with :class:`common.task_conditioned.TaskConditionedDiffusionModel` and any scheduler (the paper: diffusers'
    DPM-Solver++). Optional guidance, each step, on the noise estimate (:mod:`common.guidance`):

    * classifier-free: ``cfg_scale`` on the image phase (1 = the conditional model alone, one network call);
    * classifier guidance from a :class:`common.noisy_segmenter.NoisySegmenter` with scale ``classifier_scale`` (s)
      and temperature ``temperature`` (tau) on its logits (Lemma 3.3): the mask phase follows ``log p(y1 = mask |
      x_t)``, the image phase ``log p(y1 = image | x_t) + log p(y2 = the mask | x_t)``, Bernoulli over pixels.

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
    ) -> None:
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

    def log_likelihood(
        self, x_t: torch.Tensor, timesteps: torch.Tensor, task: int, condition: torch.Tensor | None
    ) -> torch.Tensor:
        """Per-sample ``log p(y1 = task | x_t) [+ log p(y2 = condition | x_t)]`` under the tempered classifier."""
        logits, task_logit = self.classifier(x_t, timesteps)
        target = torch.full_like(task_logit, float(task))
        total = bernoulli_log_likelihood(task_logit[:, None], target[:, None], self.temperature)
        if condition is not None:
            total = total + bernoulli_log_likelihood(logits, (condition > 0).to(logits.dtype), self.temperature)
        return total

    def _guided(self, model, x_t, t_batch, task, condition, alpha_bar, kind) -> torch.Tensor:
        out = model(x_t, t_batch, task, condition)
        if condition is not None and self.cfg_scale != 1.0:
            out = classifier_free(out, model(x_t, t_batch, task, None), self.cfg_scale)
        if self.classifier is None or self.classifier_scale == 0:
            return out
        grad = log_likelihood_gradient(lambda x: self.log_likelihood(x, t_batch, task, condition), x_t)
        eps = apply_classifier_guidance(to_epsilon(x_t, out, alpha_bar, kind), grad, alpha_bar, self.classifier_scale)
        return from_epsilon(x_t, eps, alpha_bar, kind)

    def phase(self, model, noise: torch.Tensor, task: int, condition: torch.Tensor | None = None) -> torch.Tensor:
        """Reverse diffusion of one task from ``noise``; ``condition`` is the mask for the image task."""
        scheduler = copy.deepcopy(self.scheduler)
        scheduler.set_timesteps(self.num_inference_steps, device=noise.device)
        alphas_cumprod = scheduler.alphas_cumprod.to(noise.device)
        kind = prediction_type(scheduler)
        x_t = noise * getattr(scheduler, "init_noise_sigma", 1.0)
        for t in scheduler.timesteps:
            t_batch = torch.full((x_t.shape[0],), int(t), device=x_t.device, dtype=torch.long)
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
