"""Pieces a MONAI ``SupervisedTrainer`` needs to train paired diffusion models; no custom training loop.

* :class:`PairedDiffusionPrepareBatch` turns a batch of (image, label) into the noisy pair, the timesteps and the noise
  targets of Alg. 1 (both streams noised with the same t, independent noise).
* :func:`iteration_loader` gives an iteration-based "epoch" (sampling with replacement), because datasets here range
  from 16 to 10^4 pairs and a fixed number of optimiser steps per epoch keeps checkpoints and logs comparable.
* :func:`training_items` keeps only the tensors a batch needs (metadata such as affines may be ``None``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from monai.engines import PrepareBatch
from torch.utils.data import DataLoader, RandomSampler

from common.schedulers import prediction_type
from common.transforms import encode_mask

__all__ = ["PairedDiffusionPrepareBatch", "iteration_loader", "training_items", "sample_timesteps"]


def sample_timesteps(batch_size: int, num_train_timesteps: int, antithetic: bool, device=None) -> torch.Tensor:
    """Uniform timesteps in [0, T); ``antithetic`` pairs t with T-1-t (authors' code) to lower the loss variance."""
    if not antithetic:
        return torch.randint(0, num_train_timesteps, (batch_size,), device=device)
    half = torch.randint(0, num_train_timesteps, ((batch_size + 1) // 2,), device=device)
    return torch.cat([half, num_train_timesteps - 1 - half])[:batch_size]


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
        kind = prediction_type(self.scheduler)
        if kind == "v_prediction":
            return self.scheduler.get_velocity(clean, noise, timesteps)
        if kind == "sample":
            return clean
        return noise

    def __call__(
        self, batchdata: Mapping[str, torch.Tensor], device=None, non_blocking: bool = False, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor, tuple, dict]:
        image = torch.as_tensor(batchdata[self.image_key]).to(
            device=device, dtype=torch.float32, non_blocking=non_blocking
        )
        label = torch.as_tensor(batchdata[self.label_key]).to(device=device, non_blocking=non_blocking)
        mask = encode_mask(label.long(), self.num_classes).to(image.dtype)
        timesteps = sample_timesteps(image.shape[0], self.scheduler.num_train_timesteps, self.antithetic, image.device)
        mask_noise, image_noise = torch.randn_like(mask), torch.randn_like(image)
        noisy_mask = self.scheduler.add_noise(original_samples=mask, noise=mask_noise, timesteps=timesteps)
        noisy_image = self.scheduler.add_noise(original_samples=image, noise=image_noise, timesteps=timesteps)
        inputs = torch.cat([noisy_mask, noisy_image], dim=1)
        targets = torch.cat(
            [self.target(mask, mask_noise, timesteps), self.target(image, image_noise, timesteps)], dim=1
        )
        return inputs, targets, (), {"timesteps": timesteps, "clean_mask": mask}


def training_items(pairs: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Keep only ``image`` and ``label`` of each loaded pair so the default collate can stack them."""
    return [{"image": p["image"], "label": p["label"]} for p in pairs]


def iteration_loader(
    dataset, batch_size: int, iterations_per_epoch: int, num_workers: int = 0, seed: int | None = None, **kwargs: Any
) -> DataLoader:
    """A DataLoader whose epoch is exactly ``iterations_per_epoch`` batches, drawn with replacement."""
    if batch_size < 1 or iterations_per_epoch < 1:
        raise ValueError(f"batch_size and iterations_per_epoch must be >= 1, got {batch_size}, {iterations_per_epoch}.")
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    sampler = RandomSampler(
        dataset, replacement=True, num_samples=batch_size * iterations_per_epoch, generator=generator
    )
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers, **kwargs)
