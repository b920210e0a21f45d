"""Pieces a MONAI ``SupervisedTrainer`` needs to train diffusion models; no custom training loop.

* :func:`iteration_loader` gives an iteration-based "epoch" (sampling with replacement), because datasets here range
  from 16 to 10^4 pairs and a fixed number of optimiser steps per epoch keeps checkpoints and logs comparable.
* :func:`noised`, :func:`sample_timesteps`, :func:`batch_noise_like`, :func:`batch_uniform`: the random draws of a
  training step, made for the global batch under DDP (:mod:`common.distributed`), from which each bundle's
  ``PrepareBatch`` builds its inputs and targets (:func:`common.diffusion.diffusion_target`).
* :func:`image_and_mask` reads a batch's image and mask; :func:`training_items` keeps only the tensors a batch needs
  (metadata such as affines may be ``None``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader

from common.distributed import GlobalBatchSampler, draw_global
from common.transforms import encode_mask

__all__ = [
    "iteration_loader",
    "training_items",
    "image_and_mask",
    "noised",
    "sample_timesteps",
    "batch_noise_like",
    "batch_uniform",
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


def image_and_mask(
    batchdata: Mapping[str, Any],
    device=None,
    non_blocking: bool = False,
    num_classes: int = 2,
    image_key: str = "image",
    label_key: str = "label",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A batch's image (float32), label map and encoded mask ({-1, 1}, :func:`common.transforms.encode_mask`)."""
    image = torch.as_tensor(batchdata[image_key]).to(device=device, dtype=torch.float32, non_blocking=non_blocking)
    label = torch.as_tensor(batchdata[label_key]).to(device=device, non_blocking=non_blocking)
    return image, label, encode_mask(label.long(), num_classes).to(image.dtype)


def noised(
    scheduler: Any, clean: torch.Tensor, antithetic: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The forward process of one training step: ``(x_t, noise, timesteps)`` for ``clean`` samples, with one uniform
    timestep and fresh Gaussian noise per sample (drawn for the global batch under DDP), ``x_t`` by the scheduler's
    ``add_noise`` (DDPM Eq. 4: sqrt(alpha_bar) x0 + sqrt(1 - alpha_bar) eps)."""
    timesteps = sample_timesteps(clean.shape[0], scheduler.num_train_timesteps, antithetic, clean.device)
    noise = batch_noise_like(clean)
    return scheduler.add_noise(original_samples=clean, noise=noise, timesteps=timesteps), noise, timesteps


def training_items(pairs: Sequence[Mapping[str, Any]], extra_keys: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Keep only ``image``, ``label`` (and ``extra_keys``, e.g. ``prompt``) of each pair so the default collate can
    stack them."""
    return [{"image": p["image"], "label": p["label"], **{k: p[k] for k in extra_keys}} for p in pairs]


def iteration_loader(
    dataset,
    batch_size: int,
    iterations_per_epoch: int,
    num_workers: int = 0,
    seed: int | None = None,
    weights: Sequence[float] | None = None,
    **kwargs: Any,
) -> DataLoader:
    """A DataLoader whose epoch is exactly ``iterations_per_epoch`` batches, drawn with replacement (uniformly, or in
    proportion to per-item ``weights``).

    ``batch_size`` is per process: under ``torchrun`` with N processes each step trains on a global batch of
    ``N * batch_size`` drawn from one seeded stream (:class:`common.distributed.GlobalBatchSampler`).
    """
    if batch_size < 1 or iterations_per_epoch < 1:
        raise ValueError(f"batch_size and iterations_per_epoch must be >= 1, got {batch_size}, {iterations_per_epoch}.")
    sampler = GlobalBatchSampler(len(dataset), batch_size, iterations_per_epoch, seed=seed, weights=weights)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers, **kwargs)
