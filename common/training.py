"""Pieces a MONAI ``SupervisedTrainer`` needs to train paired diffusion models; no custom training loop.

* :class:`PairedDiffusionPrepareBatch` turns a batch of (image, label) into the noisy pair, the timesteps and the noise
  targets of Alg. 1 (both streams noised with the same t, independent noise).
* :func:`iteration_loader` gives an iteration-based "epoch" (sampling with replacement), because datasets here range
  from 16 to 10^4 pairs and a fixed number of optimiser steps per epoch keeps checkpoints and logs comparable.
* :class:`TaskConditionedPrepareBatch` and :class:`NoisySegmenterPrepareBatch` (DiffuseExpand Stages I and II) draw
  per sample whether the mask or the image is noised (``y1`` ~ Bernoulli(0.5)).
* :func:`training_items` keeps only the tensors a batch needs (metadata such as affines may be ``None``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.engines import PrepareBatch
from torch.utils.data import DataLoader

from common.distributed import GlobalBatchSampler, draw_global
from common.errors import InputError
from common.schedulers import prediction_type
from common.task_conditioned import NULL_CONDITION
from common.transforms import encode_mask

__all__ = [
    "PairedDiffusionPrepareBatch",
    "TaskConditionedPrepareBatch",
    "NoisySegmenterPrepareBatch",
    "SemanticDiffusionPrepareBatch",
    "TextEdgePrepareBatch",
    "iteration_loader",
    "training_items",
    "sample_timesteps",
    "batch_noise_like",
    "batch_uniform",
    "diffusion_target",
]


def sample_timesteps(batch_size: int, num_train_timesteps: int, antithetic: bool, device=None) -> torch.Tensor:
    """Uniform timesteps in [0, T); ``antithetic`` pairs t with T-1-t (authors' code) to lower the loss variance.
    Under DDP the draw is for the global batch (:func:`common.distributed.draw_global`)."""

    def draw(n: int) -> torch.Tensor:
        if not antithetic:
            return torch.randint(0, num_train_timesteps, (n,), device=device)
        half = torch.randint(0, num_train_timesteps, ((n + 1) // 2,), device=device)
        return torch.cat([half, num_train_timesteps - 1 - half])[:n]

    return draw_global(draw, batch_size)


def batch_noise_like(x: torch.Tensor) -> torch.Tensor:
    """Gaussian noise shaped like the batch ``x``, drawn for the global batch under DDP."""
    return draw_global(lambda n: torch.randn((n, *x.shape[1:]), dtype=x.dtype, device=x.device), x.shape[0])


def batch_uniform(batch_size: int, device=None) -> torch.Tensor:
    """One U[0, 1) number per sample (task coins, condition dropout), drawn for the global batch under DDP."""
    return draw_global(lambda n: torch.rand(n, device=device), batch_size)


def diffusion_target(scheduler: Any, clean: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """What a denoiser learns to predict under ``scheduler``: the noise (DDPM), the velocity, or the clean sample."""
    kind = prediction_type(scheduler)
    if kind == "v_prediction":
        return scheduler.get_velocity(clean, noise, timesteps)
    if kind == "sample":
        return clean
    return noise


def _image_and_mask(batchdata: Mapping[str, Any], device, non_blocking: bool, num_classes: int, keys: tuple[str, str]):
    image = torch.as_tensor(batchdata[keys[0]]).to(device=device, dtype=torch.float32, non_blocking=non_blocking)
    label = torch.as_tensor(batchdata[keys[1]]).to(device=device, non_blocking=non_blocking)
    return image, label, encode_mask(label.long(), num_classes).to(image.dtype)


class PairedDiffusionPrepareBatch(PrepareBatch):
    """Batch -> (cat[x_t, y_t], targets, (), {"timesteps", "clean_mask"}) for :class:`PairedDiffusionModel`.

    Targets are ``cat[eps_1, eps_2]`` (Alg. 1) for an ``epsilon`` scheduler, the velocities for ``v_prediction``,
    the clean pair for ``sample``.

    Args:
        scheduler: the training scheduler (its ``add_noise`` implements Eq. (9)-(10)).
        num_classes: label classes; the mask enters as 1 channel ({-1,1}) for 2 classes, one-hot otherwise.
        antithetic: draw timesteps in antithetic pairs (t, T-1-t).
        image_key, label_key: batch keys.
    """

    def __init__(
        self,
        scheduler: Any,
        num_classes: int = 2,
        antithetic: bool = True,
        image_key: str = "image",
        label_key: str = "label",
    ) -> None:
        self.scheduler = scheduler
        self.num_classes = num_classes
        self.antithetic = antithetic
        self.image_key = image_key
        self.label_key = label_key

    def target(self, clean: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """What the networks learn to predict: the noise (paper), the velocity, or the clean sample."""
        return diffusion_target(self.scheduler, clean, noise, timesteps)

    def __call__(
        self, batchdata: Mapping[str, torch.Tensor], device=None, non_blocking: bool = False, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor, tuple, dict]:
        image, _, mask = _image_and_mask(
            batchdata, device, non_blocking, self.num_classes, (self.image_key, self.label_key)
        )
        timesteps = sample_timesteps(image.shape[0], self.scheduler.num_train_timesteps, self.antithetic, image.device)
        mask_noise, image_noise = batch_noise_like(mask), batch_noise_like(image)
        noisy_mask = self.scheduler.add_noise(original_samples=mask, noise=mask_noise, timesteps=timesteps)
        noisy_image = self.scheduler.add_noise(original_samples=image, noise=image_noise, timesteps=timesteps)
        inputs = torch.cat([noisy_mask, noisy_image], dim=1)
        targets = torch.cat(
            [self.target(mask, mask_noise, timesteps), self.target(image, image_noise, timesteps)], dim=1
        )
        return inputs, targets, (), {"timesteps": timesteps, "clean_mask": mask}


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
        image, label, mask = _image_and_mask(batchdata, device, non_blocking, 2, ("image", "label"))
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
        timesteps = sample_timesteps(batch, self.scheduler.num_train_timesteps, self.antithetic, image.device)
        noise = batch_noise_like(clean)
        noisy = self.scheduler.add_noise(original_samples=clean, noise=noise, timesteps=timesteps)
        return task, is_image, clean, noise, noisy, timesteps, mask, label


class TaskConditionedPrepareBatch(_TaskBatch):
    """Stage I batches for :class:`common.task_conditioned.TaskConditionedDiffusionModel` (paper Eq. 3).

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
    """Stage II batches for :class:`common.noisy_segmenter.NoisySegmenter` (paper Eq. 4).

    Returns ``(x_t, {"mask": 0/1 float, "task": y1 float}, (), {"timesteps"})``.
    """

    def __call__(self, batchdata: Mapping[str, Any], device=None, non_blocking: bool = False, **kwargs: Any):
        task, _, _, _, noisy, timesteps, _, label = self.noised(batchdata, device, non_blocking)
        target = {"mask": label.to(noisy.dtype), "task": task.to(noisy.dtype)}
        return noisy, target, (), {"timesteps": timesteps}


class SemanticDiffusionPrepareBatch(PrepareBatch):
    """Label map -> image batches for :class:`common.semantic_model.SemanticDiffusionModel` (paper 004).

    Returns ``(x_t, target, (), {"timesteps", "label"})``. ``target`` is the noise (for a plain MSE) or, with
    ``hybrid=True``, the dict :class:`common.losses.HybridLoss` needs: ``{"noise", "x0", "x_t", "timesteps"}``.
    """

    def __init__(self, scheduler: Any, hybrid: bool = True, antithetic: bool = True) -> None:
        self.scheduler = scheduler
        self.hybrid = hybrid
        self.antithetic = antithetic

    def __call__(self, batchdata: Mapping[str, Any], device=None, non_blocking: bool = False, **kwargs: Any):
        image = torch.as_tensor(batchdata["image"]).to(device=device, dtype=torch.float32, non_blocking=non_blocking)
        label = torch.as_tensor(batchdata["label"]).to(device=device, non_blocking=non_blocking).long()
        timesteps = sample_timesteps(image.shape[0], self.scheduler.num_train_timesteps, self.antithetic, image.device)
        noise = batch_noise_like(image)
        noisy = self.scheduler.add_noise(original_samples=image, noise=noise, timesteps=timesteps)
        target: Any = diffusion_target(self.scheduler, image, noise, timesteps)
        if self.hybrid:
            target = {"noise": noise, "x0": image, "x_t": noisy, "timesteps": timesteps}
        return noisy, target, (), {"timesteps": timesteps, "label": label}


class TextEdgePrepareBatch(PrepareBatch):
    """Prompt + edge -> image batches for :class:`common.text_edge_model.TextEdgeDiffusionModel` (DiffBoost).

    Batches hold ``image``, ``label`` and ``prompt`` (strings). Edges come from the image (``edge_source="image"``:
    pretraining; ``edge_detector``, Canny when None, e.g. :class:`common.edges.HEDEdges`) or from the mask boundary
    (``"mask"``: task fine-tuning), always from the unaugmented image.
    With probability ``phrase_probability`` an image gets one random augmentation phrase appended to its prompt and
    the appearance change the phrase names (:func:`common.text_conditioning.apply_phrase`), so the offline encoder
    learns what the phrases mean. Returns ``(x_t, target, (), {"timesteps", "tokens", "edges"})``.
    """

    def __init__(
        self,
        scheduler: Any,
        tokenizer: Any,
        edge_source: str = "mask",
        phrase_probability: float = 0.3,
        antithetic: bool = True,
        seed: int = 0,
        edge_detector: Any = None,
    ) -> None:
        from common.edges import canny_edges

        if edge_source not in ("image", "mask"):
            raise InputError(f"'edge_source' must be 'image' or 'mask', got {edge_source!r}.")
        if not 0.0 <= phrase_probability <= 1.0:
            raise InputError(f"'phrase_probability' must be in [0, 1], got {phrase_probability!r}.")
        self.scheduler = scheduler
        self.tokenizer = tokenizer
        self.edge_source = edge_source
        self.edge_detector = edge_detector or canny_edges
        self.phrase_probability = float(phrase_probability)
        self.antithetic = antithetic
        self.random = np.random.default_rng(seed)

    def __call__(self, batchdata: Mapping[str, Any], device=None, non_blocking: bool = False, **kwargs: Any):
        from common.edges import mask_edges
        from common.text_conditioning import AUGMENTATION_PHRASES, apply_phrase

        image = torch.as_tensor(batchdata["image"]).float().clone()  # the phrase changes below must not reach the batch
        label = torch.as_tensor(batchdata["label"]).long()
        prompts = list(batchdata["prompt"])
        with torch.no_grad():
            edges = self.edge_detector(image) if self.edge_source == "image" else mask_edges(label)
        phrases = list(AUGMENTATION_PHRASES)
        coins = draw_global(lambda n: self.random.random(n), image.shape[0])
        picks = draw_global(lambda n: self.random.integers(len(phrases), size=n), image.shape[0])
        for i in range(image.shape[0]):
            if coins[i] < self.phrase_probability:
                phrase = phrases[int(picks[i])]
                image[i : i + 1] = apply_phrase(image[i : i + 1], phrase)
                prompts[i] = f"{prompts[i]}, {phrase}"
        image = image.to(device=device, non_blocking=non_blocking)
        timesteps = sample_timesteps(image.shape[0], self.scheduler.num_train_timesteps, self.antithetic, image.device)
        noise = batch_noise_like(image)
        noisy = self.scheduler.add_noise(original_samples=image, noise=noise, timesteps=timesteps)
        target = diffusion_target(self.scheduler, image, noise, timesteps)
        tokens = self.tokenizer(prompts).to(image.device)
        return noisy, target, (), {"timesteps": timesteps, "tokens": tokens, "edges": edges.to(image.device)}


def training_items(pairs: Sequence[Mapping[str, Any]], extra_keys: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Keep only ``image``, ``label`` (and ``extra_keys``, e.g. ``prompt``) of each pair so the default collate can
    stack them."""
    return [{"image": p["image"], "label": p["label"], **{k: p[k] for k in extra_keys}} for p in pairs]


def iteration_loader(
    dataset, batch_size: int, iterations_per_epoch: int, num_workers: int = 0, seed: int | None = None, **kwargs: Any
) -> DataLoader:
    """A DataLoader whose epoch is exactly ``iterations_per_epoch`` batches, drawn with replacement.

    ``batch_size`` is per process: under ``torchrun`` with N processes each step trains on a global batch of
    ``N * batch_size`` drawn from one seeded stream (:class:`common.distributed.GlobalBatchSampler`).
    """
    if batch_size < 1 or iterations_per_epoch < 1:
        raise ValueError(f"batch_size and iterations_per_epoch must be >= 1, got {batch_size}, {iterations_per_epoch}.")
    sampler = GlobalBatchSampler(len(dataset), batch_size, iterations_per_epoch, seed=seed)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers, **kwargs)
