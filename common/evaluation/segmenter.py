"""The downstream segmenter: build, train, predict, save and load a MONAI segmentation network (DESIGN §5).

A MONAI segmenter (``UNet`` by default; ``AttentionUnet`` and ``SwinUNETR`` by key) is trained for a fixed number of
optimiser steps with DiceCE + Adam in a MONAI ``SupervisedTrainer``. The same pieces serve the evaluation protocol
(:mod:`common.evaluation.protocol`), DiffuseExpand's Dice filter and the CT bundle's organ scorer
(:func:`load_or_train_segmenter`), and the generation metrics' alignment Dice.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from ignite.engine import Events
from monai.data import Dataset
from monai.engines import SupervisedTrainer, default_prepare_batch
from monai.inferers import SimpleInferer
from monai.losses import DiceCELoss
from monai.networks.nets import AttentionUnet, SwinUNETR, UNet
from monai.transforms import (
    Compose,
    EnsureTyped,
    RandAdjustContrastd,
    RandAffined,
    RandFlipd,
    RandGaussianNoised,
    RandScaleIntensityFixedMeand,
)

from common.errors import InputError
from common.training import iteration_loader, training_items
from common.writers import atomic_path

__all__ = [
    "NETWORKS",
    "DEFAULTS",
    "network_key",
    "build_segmenter",
    "save_segmenter",
    "load_segmenter",
    "load_or_train_segmenter",
    "augmentation",
    "training_dataset",
    "train_segmenter",
    "predict",
    "stack_images",
]

logger = logging.getLogger(__name__)

# Architectures sized for CPU at 64x64 (≈0.4-1.6 M parameters). network_kwargs override any of these.
NETWORKS: dict[str, dict[str, Any]] = {
    "unet": {"channels": (16, 32, 64, 128), "strides": (2, 2, 2), "num_res_units": 2},
    "attention_unet": {"channels": (16, 32, 64, 128), "strides": (2, 2, 2)},
    "swin_unetr": {"feature_size": 12},
}
_NETWORK_CLASSES: dict[str, type[torch.nn.Module]] = {
    "unet": UNet,
    "attention_unet": AttentionUnet,
    "swin_unetr": SwinUNETR,
}
# DESIGN §5 measured 1500 iterations of a MONAI UNet at 64² (BUSI, 50 real pairs: Dice ~0.33); batch 16 and Adam 1e-3
# are the usual MONAI tutorial values and take ~0.06 s per step on one CPU thread.
DEFAULTS: dict[str, Any] = {
    "network": "unet",
    "image_size": 64,
    "num_classes": 2,
    "iterations": 1500,
    "batch_size": 16,
    "lr": 1e-3,
    "seeds": (0, 1, 2),
    "eval_batch_size": 32,
}


def network_key(network: Any) -> str:
    key = str(network).strip().lower().replace("-", "_") if isinstance(network, str) else None
    if key not in NETWORKS:
        allowed = ", ".join(repr(k) for k in NETWORKS)
        raise InputError(f"'network' must be one of {allowed}, got {network!r}.")
    return key


def _size(image_size: Any) -> tuple[int, int]:
    size = (image_size, image_size) if isinstance(image_size, (int, np.integer)) else tuple(image_size or ())
    if len(size) != 2 or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s > 0 for s in size):
        raise InputError(f"'image_size' must be a positive integer or (height, width), got {image_size!r}.")
    return int(size[0]), int(size[1])


def build_segmenter(
    network: str = "unet",
    num_classes: int = 2,
    image_size: int | Sequence[int] = 64,
    in_channels: int = 1,
    network_kwargs: Mapping[str, Any] | None = None,
) -> torch.nn.Module:
    """A 2D MONAI segmenter with ``num_classes`` output logits, checked against ``image_size`` before any training.

    The size check matters because a U-Net whose strides do not divide the image fails only at the first forward
    pass, and SwinUNETR needs multiples of 32 (patch 2, four merges).
    """
    key = network_key(network)
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
        raise InputError(f"'num_classes' must be an integer >= 2 (background included), got {num_classes!r}.")
    height, width = _size(image_size)
    kwargs = {**NETWORKS[key], **dict(network_kwargs or {})}
    if key == "swin_unetr":
        # patch 2 and four merges: 32x smaller; at 32x32 the 1x1 bottleneck cannot be instance-normalised in training
        if height % 32 or width % 32 or min(height, width) < 64:
            raise InputError(
                f"'image_size' {height}x{width} must be a multiple of 32 and at least 64 for network 'swin_unetr'."
            )
    else:
        factor = int(np.prod([s if isinstance(s, (int, np.integer)) else max(s) for s in kwargs.get("strides", ())]))
        if height % factor or width % factor:
            raise InputError(
                f"'image_size' {height}x{width} must be a multiple of {factor} for network '{key}' "
                f"(its downsampling factor); choose another image_size or network_kwargs."
            )
    try:
        return _NETWORK_CLASSES[key](spatial_dims=2, in_channels=in_channels, out_channels=int(num_classes), **kwargs)
    except (TypeError, ValueError, AssertionError) as exc:
        given = dict(network_kwargs or {})
        raise InputError(f"'network_kwargs' {given!r} do not fit network '{key}' ({exc}).") from exc


def save_segmenter(
    model: torch.nn.Module,
    path: str | os.PathLike,
    network: str,
    num_classes: int,
    image_size: int | Sequence[int],
    network_kwargs: Mapping[str, Any] | None = None,
) -> None:
    """Save weights with what :func:`load_segmenter` needs to rebuild the network (atomic)."""
    payload = {
        "network": network_key(network),
        "num_classes": int(num_classes),
        "image_size": list(_size(image_size)),
        "network_kwargs": dict(network_kwargs or {}),
        "state_dict": model.state_dict(),
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_segmenter(path: str | os.PathLike, device: str | torch.device = "cpu") -> torch.nn.Module:
    """A segmenter saved by :func:`save_segmenter`, in eval mode on ``device``."""
    if not os.path.isfile(path):
        raise InputError(f"segmenter weights '{path}' do not exist.")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    model = build_segmenter(
        payload["network"], payload["num_classes"], payload["image_size"], network_kwargs=payload["network_kwargs"]
    )
    model.load_state_dict(payload["state_dict"])
    return model.to(torch.device(device)).eval()


def augmentation(image_keys: Sequence[str] = ("image",)) -> list[Callable]:
    """Conventional on-the-fly augmentation of cached (1, H, W) pairs in [-1, 1] (MONAI dictionary transforms).

    Left-right flip, ±15° rotation with ±10 % zoom (label by nearest neighbour), gamma 0.7-1.5, contrast ×(1 ± 0.2)
    around the mean and Gaussian noise σ 0.05: mild enough to keep ultrasound and X-ray plausible. No up-down flip,
    which no scanner produces. ``image_keys``: every image moved and changed alike (one draw), e.g. DiffBoost versions.
    """
    images = list(image_keys)
    keys = [*images, "label"]
    return [
        RandFlipd(keys=keys, prob=0.5, spatial_axis=1),
        RandAffined(
            keys=keys,
            prob=0.5,
            rotate_range=math.radians(15),
            scale_range=(0.1, 0.1),
            mode=("bilinear",) * len(images) + ("nearest",),
            padding_mode="border",
        ),
        RandAdjustContrastd(keys=images, prob=0.3, gamma=(0.7, 1.5)),
        RandScaleIntensityFixedMeand(keys=images, prob=0.3, factors=0.2),
        RandGaussianNoised(keys=images, prob=0.2, mean=0.0, std=0.05),
    ]


def training_dataset(
    pairs: Sequence[Mapping[str, Any]],
    augment: bool | Callable[[Sequence[str]], list] = False,
    seed: int = 0,
    image_keys: Sequence[str] = ("image",),
    prepare: Sequence[Callable] = (),
    finish: Sequence[Callable] = (),
) -> Dataset:
    """A MONAI ``Dataset`` of the pairs' ``image_keys`` and labels, augmented on the fly.

    ``augment``: False, True (:func:`augmentation`) or a function ``image_keys -> MONAI dictionary transforms`` (e.g.
    one of DiffBoost's Table II augmentations). Every key in ``image_keys`` is moved and changed alike (one draw), so a
    condition can carry images aligned with the real one (DiffBoost's versions); ``prepare`` / ``finish`` are
    transforms around the augmentation that bring such extra keys to a 2D image's (C, H, W) form and back.
    """
    items = training_items(pairs, extra_keys=tuple(k for k in image_keys if k != "image"))
    if not augment:
        return Dataset(data=items)
    images = list(image_keys)
    transforms = augmentation(images) if augment is True else list(augment(images))
    transform = Compose(
        [
            EnsureTyped(keys=[*images, "label"], track_meta=False),
            *prepare,
            *transforms,
            *finish,
            EnsureTyped(keys=images, dtype=torch.float32, track_meta=False),
            EnsureTyped(keys="label", dtype=torch.long, track_meta=False),
        ]
    )
    transform.set_random_state(seed=seed)
    return Dataset(data=items, transform=transform)


def train_segmenter(
    model: torch.nn.Module,
    pairs: Sequence[Mapping[str, Any]] = (),
    iterations: int = DEFAULTS["iterations"],
    batch_size: int = DEFAULTS["batch_size"],
    lr: float = DEFAULTS["lr"],
    augment: bool | Callable[[Sequence[str]], list] = False,
    seed: int = 0,
    device: str | torch.device = "cpu",
    handlers: Sequence[Any] = (),
    log_every: int = 250,
    prepare_batch: Any = None,
    inferer: Any = None,
    dataset: Dataset | None = None,
    sample_weights: Sequence[float] | None = None,
) -> dict[str, float]:
    """Train ``model`` in place for exactly ``iterations`` Adam steps of DiceCE on batches drawn with replacement
    (uniformly, or in proportion to ``sample_weights``, one per item).

    ``pairs`` are the training pairs, transformed by ``augment`` (:func:`training_dataset`); a condition that needs
    more (DiffBoost's patch mixing) passes its own ``dataset``, ``prepare_batch`` and ``inferer`` instead.

    A MONAI ``SupervisedTrainer`` runs one "epoch" of ``iterations`` batches from :func:`common.training.
    iteration_loader`, so the step count does not depend on the dataset size (16 or 1000 pairs get the same budget)
    and MONAI/ignite ``handlers`` (TensorBoard, checkpoints) attach as usual. Returns the mean loss of the last 10 %
    of steps and the wall time, to spot an under-trained segmenter.
    """
    if dataset is None and not pairs:
        raise InputError("no training pairs for the segmenter.")
    for key, value in (("iterations", iterations), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise InputError(f"'{key}' must be a positive integer, got {value!r}.")
    device = torch.device(device)
    model = model.to(device).train()
    if dataset is None:
        dataset = training_dataset(pairs, augment, seed)
    loader = iteration_loader(dataset, batch_size, int(iterations), seed=seed, weights=sample_weights)
    trainer = SupervisedTrainer(
        device=device,
        max_epochs=1,
        train_data_loader=loader,
        network=model,
        optimizer=torch.optim.Adam(model.parameters(), lr=lr),
        loss_function=DiceCELoss(to_onehot_y=True, softmax=True),
        prepare_batch=prepare_batch or default_prepare_batch,
        inferer=inferer or SimpleInferer(),
        train_handlers=list(handlers),
        amp=False,
        decollate=False,
    )
    losses: list[float] = []

    @trainer.on(Events.ITERATION_COMPLETED)
    def _record(engine: Any) -> None:
        losses.append(float(engine.state.output["loss"].detach()))
        if log_every and engine.state.iteration % log_every == 0:
            logger.info("segmenter iteration %d/%d loss %.4f", engine.state.iteration, iterations, losses[-1])

    start = time.perf_counter()
    trainer.run()
    model.eval()
    tail = losses[-max(1, len(losses) // 10) :]
    return {"final_loss": float(np.mean(tail)), "seconds": time.perf_counter() - start}


def stack_images(images: Any, what: str) -> torch.Tensor:
    """(N, 1, H, W) float tensor from a batch array or a sequence of (1, H, W) / (H, W) arrays."""
    if isinstance(images, torch.Tensor):
        x = images
    elif isinstance(images, np.ndarray):
        x = torch.from_numpy(images)
    else:
        x = torch.stack([torch.as_tensor(np.asarray(i)) for i in images]) if len(images) else torch.empty(0, 1, 1, 1)
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4 or x.shape[1] != 1:
        raise ValueError(f"'{what}' must have shape (N, 1, H, W) or (N, H, W), got {tuple(x.shape)}.")
    return x


@torch.no_grad()
def predict(
    model: torch.nn.Module,
    images: Any,
    batch_size: int = DEFAULTS["eval_batch_size"],
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Argmax class indices int64 (N, 1, H, W) for images in [-1, 1], (N, 1, H, W) or a list of (1, H, W)."""
    x = stack_images(images, "images").float()
    device = torch.device(device)
    model = model.to(device).eval()
    out = [
        model(x[i : i + batch_size].to(device)).argmax(dim=1, keepdim=True).cpu() for i in range(0, len(x), batch_size)
    ]
    return torch.cat(out).numpy().astype(np.int64) if out else np.zeros((0, *x.shape[1:]), np.int64)


def load_or_train_segmenter(
    path: str,
    pairs: Sequence[Mapping[str, Any]],
    network: str = "unet",
    num_classes: int = 2,
    image_size: int = 64,
    iterations: int = 1500,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> torch.nn.Module:
    """A segmenter trained on real ``pairs`` once and cached: loaded from ``path`` when it exists, else trained and
    saved there (atomically) first. DiffuseExpand's filter and the CT bundle's organ segmenter use it."""
    if os.path.isfile(path):
        logger.info("segmenter: loading %s", path)
        return load_segmenter(path, device)
    logger.info("segmenter: training on %d real pairs for %d iterations -> %s", len(pairs), iterations, path)
    torch.manual_seed(seed)
    model = build_segmenter(network, num_classes, image_size)
    stats = train_segmenter(model, pairs, iterations=iterations, seed=seed, device=device)
    logger.info("segmenter trained: final loss %.4f in %.0f s", stats["final_loss"], stats["seconds"])
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_segmenter(model, path, network, num_classes, image_size)
    return model.eval()
