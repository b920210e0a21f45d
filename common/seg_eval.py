"""Downstream segmentation evaluation (DESIGN §5): what do synthetic pairs do for a segmenter trained on them?

One protocol for every bundle. A MONAI segmenter (``UNet`` by default; ``AttentionUnet`` and ``SwinUNETR`` by key) is
trained for a fixed number of optimiser steps with DiceCE + Adam on each *condition* (real pairs alone, real with
conventional augmentation, real merged with synthetic folders, synthetic only), for several seeds and either a fixed
train/test split or k folds, and scored on the real test pairs with MONAI metrics. Each (condition, seed, fold) run is
written to ``output_dir/runs/`` as soon as it finishes and skipped when present, so a killed evaluation continues where
it stopped; ``results.json``, ``results.md`` and ``results.png`` are written last.

Empty masks are handled by an explicit convention (``CONVENTIONS``, also written into ``results.json`` and
``results.md``): overlap metrics over test images whose ground truth contains the class, HD95/ASSD only where the
prediction does too (missed lesions counted separately), and empty ground truth reported as a count of correct empty
predictions, because BUSI's normal images would otherwise score Dice 0 or 1 and dominate the seed spread.

The pieces are reusable on their own: :func:`build_segmenter`, :func:`train_segmenter`, :func:`predict`,
:func:`save_segmenter`/:func:`load_segmenter` (the generation metrics' "alignment Dice" needs a segmenter trained on
real data), :func:`pair_metrics`, :func:`evaluate_segmenter`, :func:`summarise_images`, :func:`aggregate`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Events
from monai.data import Dataset, partition_dataset
from monai.engines import SupervisedTrainer, default_prepare_batch
from monai.inferers import SimpleInferer
from monai.losses import DiceCELoss
from monai.metrics import ConfusionMatrixMetric, DiceMetric, HausdorffDistanceMetric, MeanIoU, SurfaceDistanceMetric
from monai.networks.nets import AttentionUnet, SwinUNETR, UNet
from monai.networks.utils import one_hot
from monai.transforms import (
    Compose,
    EnsureTyped,
    Lambdad,
    RandAdjustContrastd,
    RandAffined,
    RandFlipd,
    RandGaussianNoised,
    RandScaleIntensityFixedMeand,
    SqueezeDimd,
)
from PIL import Image, ImageDraw, ImageFont

from common.augmentations import AUGMENTATIONS, conventional_augmentation
from common.data import load_dataset, subset_indices
from common.diffboost import load_versions
from common.errors import InputError
from common.patch_mixing import MIX_MODES, PatchMixInferer, PatchMixPrepareBatch
from common.training import iteration_loader, training_items
from common.writers import atomic_path, atomic_write_bytes

__all__ = [
    "NETWORKS",
    "DEFAULTS",
    "METRICS",
    "CONVENTIONS",
    "build_segmenter",
    "save_segmenter",
    "load_segmenter",
    "load_or_train_segmenter",
    "augmentation",
    "train_segmenter",
    "predict",
    "pair_metrics",
    "evaluate_segmenter",
    "summarise_images",
    "aggregate",
    "paired_differences",
    "kfold_splits",
    "load_synthetic",
    "merge_training_pairs",
    "run_segmentation_evaluation",
    "write_markdown",
    "save_bar_chart",
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
METRICS = ("dice", "iou", "precision", "recall", "hd95", "assd")
_DISTANCES = ("hd95", "assd")
_CONDITION_KEYS = {"real", "synthetic", "augment", "max_synthetic", "patch_mix"}
_REAL_KEYS = {"dataset_dir", "datalist", "mask_dir", "slice_axis", "skip_empty_slices", "intensity_window", "split"}
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")

CONVENTIONS: dict[str, str] = {
    "classes": (
        "Metrics are computed per foreground class (1..K-1) on argmax predictions at image_size resolution; "
        "'dice', 'iou', 'precision', 'recall', 'hd95', 'assd' are the mean over foreground classes of the per-class "
        "means ('per_class' has each class; for binary masks both are the lesion class)."
    ),
    "overlap": (
        "Dice, IoU, Precision and Recall are averaged over test images whose ground truth contains the class; "
        "images with an empty ground truth are excluded from these means."
    ),
    "empty_prediction": (
        "On an image whose ground truth contains the class but whose prediction does not, Dice, IoU, Precision and "
        "Recall are 0 (a missed lesion counts as a failure, not as undefined)."
    ),
    "distances": (
        "HD95 (MONAI HausdorffDistanceMetric, percentile 95) and ASSD (SurfaceDistanceMetric, symmetric) are in pixels "
        "of the image_size grid and averaged over images where both ground truth and prediction contain the class; "
        "an image with a non-empty ground truth and an empty prediction is excluded from these means and counted in "
        "'hd95_missed', so read HD95/ASSD together with that count (null when every prediction was empty)."
    ),
    "empty_ground_truth": (
        "Test images with no foreground in the ground truth are counted in 'empty_gt_images'; 'empty_gt_pred_empty' "
        "counts those whose prediction is empty too, and 'empty_gt_pred_empty_fraction' is their ratio (null when the "
        "test set has no such image). 'per_class' gives the same counts per class."
    ),
    "aggregation": (
        "Per condition: mean and sample standard deviation (ddof=1; null for a single run) over runs (seeds x folds); "
        "runs in which a metric is undefined are left out and 'n' says how many remain. 'paired_vs_baseline' is the "
        "mean ± std of per-run differences to the baseline condition matched by seed and fold."
    ),
}


# --------------------------------------------------------------------------------------------------------------------
# segmenter
# --------------------------------------------------------------------------------------------------------------------


def _network_key(network: Any) -> str:
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
    key = _network_key(network)
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
        "network": _network_key(network),
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


# --------------------------------------------------------------------------------------------------------------------
# training and prediction
# --------------------------------------------------------------------------------------------------------------------


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


def _check_patch_mix(spec: Any, where: str) -> dict[str, Any]:
    """``{"alpha": [0, 1], "patch_size": int >= 1, "mode": "image" | "logits"}`` with the paper's defaults filled in."""
    if not isinstance(spec, Mapping):
        raise InputError(f"'{where}' must be a mapping with 'alpha', 'patch_size', 'mode'.")
    unknown = sorted(set(spec) - {"alpha", "patch_size", "mode", "folder"})
    if unknown:
        raise InputError(f"'{where}' has unknown key '{unknown[0]}' (allowed: alpha, folder, mode, patch_size).")
    mix = {"alpha": 0.6, "patch_size": 16, "mode": "image", **{k: v for k, v in spec.items() if k != "folder"}}
    alpha = mix["alpha"]
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= alpha <= 1.0:
        raise InputError(f"'{where}.alpha' must be a number in [0, 1], got {alpha!r}.")
    _positive_int(f"{where}.patch_size", mix["patch_size"])
    if mix["mode"] not in MIX_MODES:
        raise InputError(f"'{where}.mode' must be one of {', '.join(MIX_MODES)}, got {mix['mode']!r}.")
    return mix


def _augmentation_name(augment: bool | str) -> str:
    return "augmentation" if augment is True else f"{augment} augmentation"


def _versions_first(versions: torch.Tensor) -> torch.Tensor:
    """(n, H, W) versions-as-channels back to the (n, 1, H, W) that :class:`PatchMixPrepareBatch` stacks."""
    return versions[:, None]


def _training_dataset(
    pairs: Sequence[Mapping[str, Any]], augment: bool | str, seed: int, with_versions: bool = False
) -> Dataset:
    """``augment``: False, True (:func:`augmentation`) or a name from :data:`common.augmentations.AUGMENTATIONS`.

    ``with_versions`` keeps each pair's DiffBoost versions (``"synthetic"``, (n, 1, H, W)); a Table II augmentation
    then moves them with the real image (one random draw), as n channels of one 2D image.
    """
    items = training_items(pairs, extra_keys=("synthetic",) if with_versions else ())
    if not augment:
        return Dataset(data=items)
    images = ("image", "synthetic") if with_versions else ("image",)
    transforms = augmentation(images) if augment is True else conventional_augmentation(augment, image_keys=images)
    versions_in = [SqueezeDimd(keys="synthetic", dim=1)] if with_versions else []
    versions_out = [Lambdad(keys="synthetic", func=_versions_first)] if with_versions else []
    transform = Compose(
        [
            EnsureTyped(keys=[*images, "label"], track_meta=False),
            *versions_in,
            *transforms,
            *versions_out,
            EnsureTyped(keys=list(images), dtype=torch.float32, track_meta=False),
            EnsureTyped(keys="label", dtype=torch.long, track_meta=False),
        ]
    )
    transform.set_random_state(seed=seed)
    return Dataset(data=items, transform=transform)


def train_segmenter(
    model: torch.nn.Module,
    pairs: Sequence[Mapping[str, Any]],
    iterations: int = DEFAULTS["iterations"],
    batch_size: int = DEFAULTS["batch_size"],
    lr: float = DEFAULTS["lr"],
    augment: bool | str = False,
    seed: int = 0,
    device: str | torch.device = "cpu",
    handlers: Sequence[Any] = (),
    log_every: int = 250,
    patch_mix: Mapping[str, Any] | None = None,
) -> dict[str, float]:
    """Train ``model`` in place for exactly ``iterations`` Adam steps of DiceCE on batches drawn with replacement.

    ``patch_mix`` (``{"alpha", "patch_size", "mode"}``) trains DiffBoost-style (:mod:`common.patch_mixing`): every pair
    then carries ``"synthetic"``, its (n, 1, H, W) generated versions, and each step mixes one of them into the real
    image patch-wise (or mixes the logits, ``mode="logits"``); a named ``augment`` transforms the real image and its
    versions alike before mixing.

    A MONAI ``SupervisedTrainer`` runs one "epoch" of ``iterations`` batches from :func:`common.training.
    iteration_loader`, so the step count does not depend on the dataset size (16 or 1000 pairs get the same budget)
    and MONAI/ignite ``handlers`` (TensorBoard, checkpoints) attach as usual. Returns the mean loss of the last 10 %
    of steps and the wall time, to spot an under-trained segmenter.
    """
    if not pairs:
        raise InputError("no training pairs for the segmenter.")
    for key, value in (("iterations", iterations), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise InputError(f"'{key}' must be a positive integer, got {value!r}.")
    device = torch.device(device)
    model = model.to(device).train()
    prepare_batch: Any = default_prepare_batch
    inferer: Any = SimpleInferer()
    if patch_mix:
        mix = _check_patch_mix(patch_mix, "patch_mix")
        missing = [p.get("name", "?") for p in pairs if "synthetic" not in p]
        if missing:
            raise InputError(f"patch mixing needs the synthetic versions of every pair; '{missing[0]}' has none.")
        dataset = _training_dataset(pairs, augment, seed, with_versions=True)
        prepare_batch = PatchMixPrepareBatch(mix["alpha"], mix["patch_size"], seed=seed)
        inferer = PatchMixInferer(mix["mode"])
    else:
        dataset = _training_dataset(pairs, augment, seed)
    loader = iteration_loader(dataset, batch_size, int(iterations), seed=seed)
    trainer = SupervisedTrainer(
        device=device,
        max_epochs=1,
        train_data_loader=loader,
        network=model,
        optimizer=torch.optim.Adam(model.parameters(), lr=lr),
        loss_function=DiceCELoss(to_onehot_y=True, softmax=True),
        prepare_batch=prepare_batch,
        inferer=inferer,
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


def _stack(images: Any, what: str) -> torch.Tensor:
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
    x = _stack(images, "images").float()
    device = torch.device(device)
    model = model.to(device).eval()
    out = [
        model(x[i : i + batch_size].to(device)).argmax(dim=1, keepdim=True).cpu() for i in range(0, len(x), batch_size)
    ]
    return torch.cat(out).numpy().astype(np.int64) if out else np.zeros((0, *x.shape[1:]), np.int64)


# --------------------------------------------------------------------------------------------------------------------
# metrics
# --------------------------------------------------------------------------------------------------------------------


def pair_metrics(prediction: Any, ground_truth: Any, num_classes: int = 2) -> list[dict[str, dict[str, Any]]]:
    """Per image and foreground class: MONAI Dice, IoU, Precision, Recall, HD95, ASSD under :data:`CONVENTIONS`.

    Returns ``[{"1": {"gt_empty", "pred_empty", "dice", ..., "assd"}, "2": {...}}, ...]``; a metric is ``None`` where
    the convention leaves it out (empty ground truth; distances with an empty prediction).
    """
    pred = _stack(prediction, "prediction").long()
    gt = _stack(ground_truth, "ground_truth").long()
    if pred.shape != gt.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and ground truth {tuple(gt.shape)} differ in shape.")
    for name, t in (("prediction", pred), ("ground_truth", gt)):
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= num_classes):
            raise ValueError(f"'{name}' has class indices outside 0..{num_classes - 1}.")
    if len(pred) == 0:
        return []
    p, g = one_hot(pred, num_classes, dim=1), one_hot(gt, num_classes, dim=1)
    with warnings.catch_warnings():
        # MONAI warns on every empty mask; the convention below decides what empty masks mean.
        warnings.simplefilter("ignore")
        values = {}
        for name, metric in (
            ("dice", DiceMetric(include_background=False, reduction="none", ignore_empty=True)),
            ("iou", MeanIoU(include_background=False, reduction="none", ignore_empty=True)),
            ("hd95", HausdorffDistanceMetric(include_background=False, percentile=95, reduction="none")),
            ("assd", SurfaceDistanceMetric(include_background=False, symmetric=True, reduction="none")),
        ):
            metric(p, g)
            values[name] = metric.aggregate().cpu().numpy()
        confusion = ConfusionMatrixMetric(
            include_background=False, metric_name=("precision", "recall"), reduction="none"
        )
        confusion(p, g)
        precision, recall = (v.cpu().numpy() for v in confusion.aggregate())
        values["precision"], values["recall"] = precision, recall
    gt_any = g[:, 1:].flatten(2).any(-1).numpy()
    pred_any = p[:, 1:].flatten(2).any(-1).numpy()
    records = []
    for i in range(len(pred)):
        record = {}
        for c in range(num_classes - 1):
            entry: dict[str, Any] = {"gt_empty": not gt_any[i, c], "pred_empty": not pred_any[i, c]}
            for name in METRICS:
                value = float(values[name][i, c])
                if not gt_any[i, c] or (name in _DISTANCES and not pred_any[i, c]):
                    value = None
                elif not pred_any[i, c]:
                    value = 0.0  # overlap metrics of a missed lesion (MONAI gives NaN precision for 0/0)
                entry[name] = value
            record[str(c + 1)] = entry
        records.append(record)
    return records


def evaluate_segmenter(
    model: torch.nn.Module,
    pairs: Sequence[Mapping[str, Any]],
    num_classes: int = 2,
    batch_size: int = DEFAULTS["eval_batch_size"],
    device: str | torch.device = "cpu",
) -> list[dict[str, Any]]:
    """Predict every test pair and score it: ``[{"name": ..., "classes": pair_metrics record}, ...]``."""
    prediction = predict(model, [p["image"] for p in pairs], batch_size=batch_size, device=device)
    records = pair_metrics(prediction, [p["label"] for p in pairs], num_classes)
    return [{"name": str(p.get("name", i)), "classes": r} for i, (p, r) in enumerate(zip(pairs, records))]


def _mean(values: Sequence[float | None]) -> float | None:
    kept = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(kept)) if kept else None


def summarise_images(per_image: Sequence[Mapping[str, Any]], num_classes: int = 2) -> dict[str, Any]:
    """One run's metrics from :func:`evaluate_segmenter` records, following :data:`CONVENTIONS`."""
    classes = [str(c) for c in range(1, num_classes)]
    per_class: dict[str, dict[str, Any]] = {}
    for c in classes:
        entries = [r["classes"][c] for r in per_image]
        gt_empty = [e for e in entries if e["gt_empty"]]
        correct = sum(e["pred_empty"] for e in gt_empty)
        per_class[c] = {
            **{name: _mean([e[name] for e in entries]) for name in METRICS},
            "gt_nonempty_images": len(entries) - len(gt_empty),
            "hd95_missed": sum(not e["gt_empty"] and e["pred_empty"] for e in entries),
            "empty_gt_images": len(gt_empty),
            "empty_gt_pred_empty": correct,
            "empty_gt_pred_empty_fraction": correct / len(gt_empty) if gt_empty else None,
        }
    image_gt_empty = [all(r["classes"][c]["gt_empty"] for c in classes) for r in per_image]
    image_pred_empty = [all(r["classes"][c]["pred_empty"] for c in classes) for r in per_image]
    n_empty = sum(image_gt_empty)
    correct = sum(g and p for g, p in zip(image_gt_empty, image_pred_empty))
    return {
        **{name: _mean([per_class[c][name] for c in classes]) for name in METRICS},
        "test_images": len(per_image),
        "hd95_missed": sum(per_class[c]["hd95_missed"] for c in classes),
        "empty_gt_images": n_empty,
        "empty_gt_pred_empty": correct,
        "empty_gt_pred_empty_fraction": correct / n_empty if n_empty else None,
        "per_class": per_class,
    }


def _stats(values: Sequence[float | None]) -> dict[str, Any]:
    kept = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return {
        "mean": float(np.mean(kept)) if kept else None,
        "std": float(np.std(kept, ddof=1)) if len(kept) > 1 else None,
        "n": len(kept),
    }


def _numeric_keys(metrics: Mapping[str, Any]) -> list[str]:
    return [k for k, v in metrics.items() if v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))]


def aggregate(runs: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Mean, sample std (ddof=1) and count of every metric per condition, over its runs (seeds x folds).

    ``runs``: ``[{"condition", "seed", "fold", "metrics": summarise_images(...)}, ...]``; conditions keep the order in
    which they first appear.
    """
    by_condition: dict[str, list[Mapping[str, Any]]] = {}
    for run in runs:
        by_condition.setdefault(run["condition"], []).append(run["metrics"])
    result = {}
    for condition, metrics in by_condition.items():
        keys = _numeric_keys(metrics[0])
        classes = list(metrics[0].get("per_class", {}))
        result[condition] = {
            "runs": len(metrics),
            "metrics": {k: _stats([m.get(k) for m in metrics]) for k in keys},
            "per_class": {
                c: {
                    k: _stats([m["per_class"][c].get(k) for m in metrics])
                    for k in _numeric_keys(metrics[0]["per_class"][c])
                }
                for c in classes
            },
        }
    return result


def paired_differences(
    runs: Sequence[Mapping[str, Any]], baseline: str, keys: Sequence[str] = METRICS
) -> dict[str, dict[str, Any]]:
    """Per condition, stats of (condition - baseline) over runs matched by (seed, fold): seed spread cancels out."""
    base = {(r["seed"], r["fold"]): r["metrics"] for r in runs if r["condition"] == baseline}
    conditions = list(dict.fromkeys(r["condition"] for r in runs if r["condition"] != baseline))
    result = {}
    for condition in conditions:
        matched = [
            (r["metrics"], base[(r["seed"], r["fold"])])
            for r in runs
            if r["condition"] == condition and (r["seed"], r["fold"]) in base
        ]
        result[condition] = {
            k: _stats([m[k] - b[k] if m.get(k) is not None and b.get(k) is not None else None for m, b in matched])
            for k in keys
        }
    return result


# --------------------------------------------------------------------------------------------------------------------
# data for the conditions
# --------------------------------------------------------------------------------------------------------------------


def kfold_splits(pairs: Sequence[Mapping[str, Any]], folds: int, seed: int = 0) -> list[tuple[list[int], list[int]]]:
    """``folds`` (train indices, test indices) pairs whose test sets partition ``pairs`` with no overlap.

    Slices of one volume never straddle folds when there are at least ``folds`` volumes (grouped by source file,
    shuffled with MONAI's ``partition_dataset``); with fewer volumes, folds are contiguous slabs of the slice order,
    so neighbouring, near-identical slices stay on one side (DESIGN §5: split by patient or contiguous slab).
    """
    if isinstance(folds, bool) or not isinstance(folds, (int, np.integer)) or folds < 2:
        raise InputError(f"'folds' must be None or an integer >= 2, got {folds!r}.")
    if folds > len(pairs):
        raise InputError(f"'folds' is {folds} but there are only {len(pairs)} pairs to split.")
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(pairs):
        key = str(p.get("source")) if p.get("slice") is not None else f"{p.get('source')}#{p.get('name', i)}#{i}"
        groups.setdefault(key, []).append(i)
    if len(groups) >= folds:
        parts = partition_dataset(list(groups), num_partitions=int(folds), shuffle=True, seed=int(seed))
        tests = [sorted(i for g in part for i in groups[g]) for part in parts]
    else:
        order = sorted(range(len(pairs)), key=lambda i: (str(pairs[i].get("source")), pairs[i].get("slice") or 0))
        tests = [sorted(int(i) for i in chunk) for chunk in np.array_split(order, folds)]
    every = set(range(len(pairs)))
    return [(sorted(every - set(test)), test) for test in tests]


def load_synthetic(folder: str | os.PathLike, image_size: int | Sequence[int], num_classes: int) -> list[dict]:
    """All pairs of a folder written by :class:`common.writers.PairWriter` (images/, labels/, datalist.json)."""
    if not os.path.isdir(folder):
        raise InputError(f"synthetic folder '{folder}' does not exist (set 'synthetic_dirs' to PairWriter folders).")
    return load_dataset(dataset_dir=folder, split=None, image_size=image_size, num_classes=num_classes)


def _with_versions(pairs: Sequence[Mapping[str, Any]], versions: Mapping[str, np.ndarray]) -> list[dict]:
    """Real training pairs with their DiffBoost versions attached as ``"synthetic"`` (matched by name)."""
    missing = [p["name"] for p in pairs if p["name"] not in versions]
    if missing:
        raise InputError(
            f"{len(missing)} real training pair(s) have no synthetic versions (first: '{missing[0]}'); generate "
            "them from the same training pairs."
        )
    return [
        {"image": p["image"], "label": p["label"], "name": p["name"], "synthetic": versions[p["name"]]} for p in pairs
    ]


def merge_training_pairs(
    real: Sequence[Mapping[str, Any]],
    synthetic: Sequence[Sequence[Mapping[str, Any]]],
    use_real: bool = True,
    max_synthetic: int | None = None,
    seed: int = 0,
) -> list[dict]:
    """The training pool of one condition: real pairs (if ``use_real``) followed by every synthetic set.

    ``max_synthetic`` keeps a seeded subset of that many pairs per synthetic set (nested across sizes). The pool is
    sampled uniformly, so the synthetic share of a batch equals its share of the pool.
    """
    pool = training_items(real) if use_real else []
    for pairs in synthetic:
        keep = subset_indices(len(pairs), max_synthetic, seed)
        pool.extend(training_items([pairs[i] for i in keep]))
    return pool


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


# --------------------------------------------------------------------------------------------------------------------
# the workflow
# --------------------------------------------------------------------------------------------------------------------


def _positive_int(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InputError(f"'{key}' must be a positive integer, got {value!r}.")
    return int(value)


def _check_conditions(conditions: Any, folds: int | None) -> dict[str, dict[str, Any]]:
    if not isinstance(conditions, Mapping) or not conditions:
        raise InputError("'conditions' must be a non-empty mapping of name -> {'real', 'synthetic', 'augment'}.")
    checked = {}
    for name, spec in conditions.items():
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise InputError(
                f"condition name {name!r} must start with a letter or digit and use only letters, digits and _.+- "
                f"(it names files under runs/)."
            )
        if not isinstance(spec, Mapping):
            raise InputError(f"condition '{name}' must be a mapping with keys 'real', 'synthetic', 'augment'.")
        unknown = sorted(set(spec) - _CONDITION_KEYS)
        if unknown:
            raise InputError(
                f"condition '{name}' has unknown key '{unknown[0]}' (allowed: {', '.join(sorted(_CONDITION_KEYS))})."
            )
        synthetic = spec.get("synthetic") or []
        synthetic = [synthetic] if isinstance(synthetic, (str, os.PathLike)) else list(synthetic)
        if not isinstance(spec.get("real", True), bool):
            raise InputError(f"condition '{name}' key 'real' must be true or false, got {spec['real']!r}.")
        augment = spec.get("augment", False)
        if not isinstance(augment, bool) and augment not in AUGMENTATIONS:
            raise InputError(
                f"condition '{name}' key 'augment' must be true, false or one of {', '.join(AUGMENTATIONS)}, "
                f"got {augment!r}."
            )
        max_synthetic = spec.get("max_synthetic")
        if max_synthetic is not None:
            _positive_int(f"{name}.max_synthetic", max_synthetic)
        folders = []
        for entry in synthetic:
            if not isinstance(entry, (str, os.PathLike)):
                raise InputError(f"condition '{name}' has a synthetic entry {entry!r} that is not a folder path.")
            entry = os.fspath(entry)
            if "{fold}" in entry and folds is None:
                raise InputError(
                    f"synthetic folder '{entry}' of condition '{name}' has '{{fold}}' but 'folds' is None."
                )
            formatted = [entry.format(fold=f) for f in range(folds)] if "{fold}" in entry else [entry]
            for folder in formatted:
                if not os.path.isdir(folder):
                    raise InputError(f"synthetic folder '{folder}' of condition '{name}' does not exist.")
            folders.append(entry if "{fold}" in entry else str(Path(entry).resolve()))
        use_real = spec.get("real", True)
        if not use_real and not folders:
            raise InputError(f"condition '{name}' has no training data: 'real' is false and 'synthetic' is empty.")
        checked[name] = {
            "real": use_real,
            "synthetic": folders,
            "augment": spec.get("augment", False),
            "max_synthetic": max_synthetic,
        }
        if spec.get("patch_mix") is not None:  # only when given, so earlier run files keep matching their settings
            checked[name]["patch_mix"] = _check_condition_patch_mix(name, spec, folds)
    return checked


def _check_condition_patch_mix(name: str, spec: Mapping[str, Any], folds: int | None) -> dict[str, Any]:
    mix = _check_patch_mix(spec["patch_mix"], f"{name}.patch_mix")
    folder = spec["patch_mix"].get("folder")
    if not isinstance(folder, (str, os.PathLike)):
        raise InputError(f"condition '{name}' key 'patch_mix' needs a 'folder' of DiffBoost versions (sources.json).")
    folder = os.fspath(folder)
    if "{fold}" in folder and folds is None:
        raise InputError(f"patch_mix folder '{folder}' of condition '{name}' has '{{fold}}' but 'folds' is None.")
    for each in [folder.format(fold=f) for f in range(folds)] if "{fold}" in folder else [folder]:
        if not os.path.isfile(os.path.join(each, "sources.json")):
            raise InputError(f"patch_mix folder '{each}' of condition '{name}' has no sources.json.")
    if spec.get("synthetic") or not spec.get("real", True):
        raise InputError(f"condition '{name}': 'patch_mix' trains on the real pairs alone (no 'synthetic' folders).")
    return {**mix, "folder": folder if "{fold}" in folder else str(Path(folder).resolve())}


def _check_real(real: Any, folds: int | None) -> dict[str, Any]:
    if not isinstance(real, Mapping):
        raise InputError("'real' must be a mapping of load_dataset arguments such as {'dataset_dir': ...}.")
    unknown = sorted(set(real) - _REAL_KEYS)
    if unknown:
        raise InputError(f"'real' has unknown key '{unknown[0]}' (allowed: {', '.join(sorted(_REAL_KEYS))}).")
    real = {k: v for k, v in real.items() if v is not None and v != ""}
    # absolute, so a run resumed from another working directory sees the same settings (a datalist may also be a
    # name inside dataset_dir, which load_dataset resolves)
    if "dataset_dir" in real:
        real["dataset_dir"] = str(Path(os.fspath(real["dataset_dir"])).expanduser().resolve())
    if "datalist" in real and Path(os.fspath(real["datalist"])).expanduser().is_file():
        real["datalist"] = str(Path(os.fspath(real["datalist"])).expanduser().resolve())
    if "dataset_dir" not in real and "datalist" not in real:
        raise InputError("'dataset_dir' (or 'datalist') must be set: the evaluation needs real pairs to test on.")
    if folds is None and "split" in real:
        raise InputError(
            "'real' key 'split' chooses the pairs to cross-validate and needs 'folds'; "
            "use 'train_split' and 'test_split' for a fixed split."
        )
    return real


def _check_classes(pairs: Sequence[Mapping[str, Any]], num_classes: int, source: str) -> None:
    highest = max(int(np.max(p["label"])) for p in pairs)
    if highest < num_classes - 1:
        raise InputError(
            f"'num_classes' is {num_classes} but the masks of '{source}' only contain classes 0..{highest}; "
            f"set num_classes to the number of classes in the masks, background included."
        )


def _pair_key(pair: Mapping[str, Any]) -> tuple[str, Any]:
    return str(pair.get("source")), pair.get("slice")


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=lambda v: os.fspath(v) if isinstance(v, os.PathLike) else str(v)))


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _run_id(condition: str, seed: int, fold: int | None) -> str:
    return f"{condition}__seed{seed}" + (f"__fold{fold}" if fold is not None else "")


def _read_run(path: Path, settings: Mapping[str, Any]) -> dict[str, Any] | None:
    """A finished run, or None if absent; a run made with other settings is an error, never silently mixed in."""
    if not path.is_file():
        return None
    try:
        run = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"run file '{path}' is not readable JSON ({exc}); delete it to rerun that run.") from exc
    stored = run.get("settings", {})
    changed = [k for k in settings if stored.get(k) != settings[k]]
    if changed:
        key = changed[0]
        raise InputError(
            f"run file '{path}' was made with different settings ('{key}': {stored.get(key)!r} then, "
            f"{settings[key]!r} now); use another output_dir or delete the runs/ folder."
        )
    return run


def run_segmentation_evaluation(
    real: Mapping[str, Any],
    conditions: Mapping[str, Mapping[str, Any]],
    seeds: Sequence[int] | int = DEFAULTS["seeds"],
    folds: int | None = None,
    network: str = DEFAULTS["network"],
    image_size: int = DEFAULTS["image_size"],
    num_classes: int = DEFAULTS["num_classes"],
    iterations: int = DEFAULTS["iterations"],
    batch_size: int = DEFAULTS["batch_size"],
    lr: float = DEFAULTS["lr"],
    output_dir: str | os.PathLike = "outputs/evaluation",
    device: str | torch.device = "cpu",
    max_pairs: int | None = None,
    subset_seed: int = 0,
    train_split: str = "train",
    test_split: str = "test",
    network_kwargs: Mapping[str, Any] | None = None,
    baseline: str | None = None,
    save_models: bool = False,
    eval_batch_size: int = DEFAULTS["eval_batch_size"],
) -> dict[str, Any]:
    """Train and score a segmenter per (condition, seed, fold); write ``runs/*.json`` then results.json/.md/.png.

    ``real``: :func:`common.data.load_dataset` arguments (``dataset_dir`` or ``datalist``, ``mask_dir``, ...; ``split``
    only with ``folds``, to pick the pairs to cross-validate). With ``folds=None`` the segmenter trains on
    ``train_split`` and is tested on ``test_split``; with ``folds=k`` on k-1 folds and tested on the k-th. ``max_pairs``
    keeps a seeded subset of the real training pairs, drawn with ``subset_seed`` and independent of the training seed so
    that every seed sees the pairs the generator was trained on (use the generator's seed; train.json's default is 0).
    ``conditions``: name -> ``{"real": bool, "synthetic": [PairWriter folders, '{fold}' formatted per fold],
    "augment": bool or a Table II name (common.augmentations), "max_synthetic": int | None}``. Finished runs under
    ``output_dir/runs`` are reused, so a killed evaluation resumes; ``save_models`` also keeps each trained segmenter
    as ``runs/<run>.pt``.
    """
    seeds = [seeds] if isinstance(seeds, (int, np.integer)) and not isinstance(seeds, bool) else list(seeds or [])
    if not seeds or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in seeds):
        raise InputError(f"'seeds' must be a non-empty list of integers, got {seeds!r}.")
    if len(set(seeds)) != len(seeds):
        raise InputError(f"'seeds' has duplicates: {seeds!r}.")
    if folds is not None and (isinstance(folds, bool) or not isinstance(folds, (int, np.integer)) or folds < 2):
        raise InputError(f"'folds' must be None or an integer >= 2, got {folds!r}.")
    iterations, batch_size = _positive_int("iterations", iterations), _positive_int("batch_size", batch_size)
    if max_pairs is not None:
        _positive_int("max_pairs", max_pairs)
    network = _network_key(network)
    build_segmenter(network, num_classes, image_size, network_kwargs=network_kwargs)  # fails now, not after loading
    real = _check_real(real, folds)
    conditions = _check_conditions(conditions, folds)
    baseline = baseline if baseline is not None else ("real" if "real" in conditions else next(iter(conditions)))
    if baseline not in conditions:
        raise InputError(f"'baseline' '{baseline}' is not one of the conditions ({', '.join(conditions)}).")
    device = torch.device(device)
    source = str(real.get("datalist") or real.get("dataset_dir"))

    # real data, loaded once: a fixed split, or the pool the folds are cut from
    load_kwargs = {k: v for k, v in real.items() if k != "split"}
    if folds is None:
        train_real = load_dataset(
            **load_kwargs,
            split=train_split,
            image_size=image_size,
            num_classes=num_classes,
            max_pairs=max_pairs,
            seed=subset_seed,
        )
        test_real = load_dataset(**load_kwargs, split=test_split, image_size=image_size, num_classes=num_classes)
        shared = {_pair_key(p) for p in train_real} & {_pair_key(p) for p in test_real}
        if shared:
            raise InputError(
                f"'{source}' has {len(shared)} pair(s) in both split '{train_split}' and split '{test_split}' "
                f"(e.g. '{sorted(shared)[0][0]}'); give it a splits.json or use 'folds'."
            )
        _check_classes(train_real + test_real, num_classes, source)
        splits = [(None, train_real, test_real)]
    else:
        pool = load_dataset(**load_kwargs, split=real.get("split"), image_size=image_size, num_classes=num_classes)
        _check_classes(pool, num_classes, source)
        splits = []
        for fold, (train_idx, test_idx) in enumerate(kfold_splits(pool, folds, seed=subset_seed)):
            keep = subset_indices(len(train_idx), max_pairs, subset_seed)
            splits.append((fold, [pool[train_idx[i]] for i in keep], [pool[i] for i in test_idx]))

    # synthetic sets, loaded once and before any training so that a bad folder fails at start-up
    synthetic_cache: dict[str, list[dict]] = {}

    def folder_of(entry: str, fold: int | None) -> str:
        return str(Path(entry.format(fold=fold)).resolve()) if "{fold}" in entry else entry

    for spec in conditions.values():
        for entry in spec["synthetic"]:
            for fold, _, _ in splits:
                folder = folder_of(entry, fold)
                if folder not in synthetic_cache:
                    synthetic_cache[folder] = load_synthetic(folder, image_size, num_classes)

    versions_cache: dict[str, dict[str, np.ndarray]] = {}
    for spec in conditions.values():
        if spec.get("patch_mix"):
            for fold, train_real, _ in splits:
                folder = folder_of(spec["patch_mix"]["folder"], fold)
                if folder not in versions_cache:
                    versions_cache[folder] = load_versions(folder, num_classes)
                _with_versions(train_real, versions_cache[folder])  # fails now, not hours in, if one is missing

    common_settings = {
        "real": real,
        "train_split": train_split if folds is None else None,
        "test_split": test_split if folds is None else None,
        "folds": folds,
        "max_pairs": max_pairs,
        "subset_seed": subset_seed,
        "network": network,
        "network_kwargs": dict(network_kwargs or {}),
        "image_size": image_size,
        "num_classes": num_classes,
        "iterations": iterations,
        "batch_size": batch_size,
        "lr": lr,
    }
    output_dir = Path(output_dir)
    runs_dir = output_dir / "runs"
    # every run file is checked before anything trains: a settings mismatch must not surface hours in
    plan = []
    for condition, spec in conditions.items():
        settings = _jsonable({**common_settings, "condition": spec})
        for seed in seeds:
            for fold, train_real, test_real in splits:
                run_id = _run_id(condition, int(seed), fold)
                path = runs_dir / f"{run_id}.json"
                plan.append(
                    (
                        condition,
                        spec,
                        settings,
                        int(seed),
                        fold,
                        train_real,
                        test_real,
                        run_id,
                        path,
                        _read_run(path, settings),
                    )
                )
    runs: list[dict[str, Any]] = []
    trained = 0
    for condition, spec, settings, seed, fold, train_real, test_real, run_id, path, run in plan:
        if run is not None:
            logger.info("run %s: already done, skipped (Dice %s).", run_id, _fmt(run["metrics"]["dice"]))
            if save_models and not (runs_dir / f"{run_id}.pt").is_file():
                logger.warning(
                    "run %s was made without save_models, so it has no weights; delete %s to train it again.",
                    run_id,
                    path,
                )
            runs.append(run)
            continue
        synthetic = [synthetic_cache[folder_of(entry, fold)] for entry in spec["synthetic"]]
        pool = merge_training_pairs(train_real, synthetic, spec["real"], spec["max_synthetic"], subset_seed)
        if spec.get("patch_mix"):
            pool = _with_versions(train_real, versions_cache[folder_of(spec["patch_mix"]["folder"], fold)])
        n_real = len(train_real) if spec["real"] else 0
        logger.info(
            "run %s: training %s for %d iterations on %d pairs (%d real, %d synthetic)%s.",
            run_id,
            network,
            iterations,
            len(pool),
            n_real,
            len(pool) - n_real,
            "" if not spec["augment"] else " with " + _augmentation_name(spec["augment"]),
        )
        torch.manual_seed(seed)
        model = build_segmenter(network, num_classes, image_size, network_kwargs=network_kwargs)
        history = train_segmenter(
            model, pool, iterations, batch_size, lr, spec["augment"], seed, device, patch_mix=spec.get("patch_mix")
        )
        per_image = evaluate_segmenter(model, test_real, num_classes, eval_batch_size, device)
        metrics = summarise_images(per_image, num_classes)
        if save_models:
            save_segmenter(model, runs_dir / f"{run_id}.pt", network, num_classes, image_size, network_kwargs)
        run = _jsonable(
            {
                "condition": condition,
                "seed": seed,
                "fold": fold,
                "settings": settings,
                "train_pairs_real": n_real,
                "train_pairs_synthetic": len(pool) - n_real,
                "test_pairs": len(test_real),
                **history,
                "metrics": metrics,
                "per_image": per_image,
                # to audit "no leakage": the generator must have seen exactly these real pairs
                "train_real_names": [str(p.get("name")) for p in train_real] if spec["real"] else [],
            }
        )
        atomic_write_bytes(path, (json.dumps(run, indent=1) + "\n").encode("utf-8"))
        trained += 1
        logger.info("run %s: Dice %s, %.0f s.", run_id, _fmt(metrics["dice"]), history["seconds"])
        runs.append(run)

    summary_runs = [
        {k: v for k, v in r.items() if k not in ("per_image", "settings", "train_real_names")} for r in runs
    ]
    results = _jsonable(
        {
            "protocol": {
                **common_settings,
                "seeds": seeds,
                "baseline": baseline,
                "device": str(device),
                "conditions": conditions,
                "loss": "DiceCELoss(softmax)",
                "optimizer": "Adam",
            },
            "conventions": CONVENTIONS,
            "aggregate": aggregate(summary_runs),
            "paired_vs_baseline": paired_differences(summary_runs, baseline),
            "runs": summary_runs,
        }
    )
    # the summary files last: their presence means every run is in
    save_bar_chart(output_dir / "results.png", results["aggregate"], baseline)
    write_markdown(output_dir / "results.md", results)
    atomic_write_bytes(output_dir / "results.json", (json.dumps(results, indent=2) + "\n").encode("utf-8"))
    logger.info(
        "segmentation evaluation: %d run(s) trained, %d reused; results in %s.",
        trained,
        len(runs) - trained,
        output_dir,
    )
    return results


# --------------------------------------------------------------------------------------------------------------------
# reports
# --------------------------------------------------------------------------------------------------------------------


def _cell(stats: Mapping[str, Any], runs: int, digits: int = 3) -> str:
    """``mean ± std``; ``(n=k)`` when the metric was undefined in some of the condition's runs."""
    if stats.get("mean") is None:
        return "n/a"
    text = f"{stats['mean']:.{digits}f}" + ("" if stats.get("std") is None else f" ± {stats['std']:.{digits}f}")
    return text + (f" (n={stats['n']})" if stats["n"] < runs else "")


def _table(
    aggregated: Mapping[str, Any], paired: Mapping[str, Any] | None, baseline: str, part: str | None
) -> list[str]:
    header = [
        "condition",
        "runs",
        "Dice",
        "IoU",
        "Precision",
        "Recall",
        "HD95 (px)",
        "ASSD (px)",
        "missed (no HD95)",
        "empty GT → empty pred",
    ]
    if paired is not None:
        header.append(f"ΔDice vs {baseline} (paired)")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for condition, summary in aggregated.items():
        stats = summary["metrics"] if part is None else summary["per_class"][part]
        empty = stats["empty_gt_images"]["mean"]
        cells = [condition, str(summary["runs"])]
        runs = summary["runs"]
        cells += [_cell(stats[m], runs, 2 if m in _DISTANCES else 3) for m in METRICS]
        cells.append(_cell(stats["hd95_missed"], runs, 1))
        cells.append(
            "none in test set" if not empty else f"{_cell(stats['empty_gt_pred_empty_fraction'], runs, 2)} of {empty:g}"
        )
        if paired is not None:
            cells.append("—" if condition == baseline else _cell(paired[condition]["dice"], runs))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def write_markdown(path: str | os.PathLike, results: Mapping[str, Any]) -> None:
    """``results.md``: condition × metrics (mean ± std over runs), per-class tables for multi-class, conventions."""
    protocol, aggregated = results["protocol"], results["aggregate"]
    baseline = protocol["baseline"]
    split = (
        f"{protocol['folds']}-fold cross-validation"
        if protocol["folds"]
        else f"trained on split '{protocol['train_split']}', tested on split '{protocol['test_split']}'"
    )
    pairs = f"at most {protocol['max_pairs']}" if protocol["max_pairs"] else "all"
    source = protocol["real"].get("datalist") or protocol["real"].get("dataset_dir")
    lines = [
        "# Downstream segmentation evaluation",
        "",
        f"{protocol['network']} segmenter, {protocol['image_size']}² images, {protocol['num_classes']} classes, "
        f"{protocol['iterations']} iterations of batch {protocol['batch_size']} (Adam lr {protocol['lr']}, DiceCE); "
        f"{pairs} real training pairs (subset seed {protocol['subset_seed']}); {split}; "
        f"seeds {', '.join(map(str, protocol['seeds']))}. Data: `{source}`.",
        "",
        "Foreground mean over classes, mean ± std over runs:",
        "",
        *_table(aggregated, results["paired_vs_baseline"], baseline, None),
    ]
    classes = list(next(iter(aggregated.values()))["per_class"]) if aggregated else []
    if len(classes) > 1:
        for c in classes:
            lines += ["", f"Class {c}:", "", *_table(aggregated, None, baseline, c)]
    lines += ["", "Conditions:", ""]
    for name, spec in protocol["conditions"].items():
        augment = spec["augment"]
        parts = ["real" if spec["real"] else "no real"] + ([_augmentation_name(augment)] if augment else [])
        if spec.get("patch_mix"):
            mix = spec["patch_mix"]
            parts.append(
                f"DiffBoost patch mixing ({mix['mode']}, alpha {mix['alpha']}, patch {mix['patch_size']}) with "
                f"`{mix['folder']}`"
            )
        parts += [
            f"synthetic `{s}`" + (f" (≤ {spec['max_synthetic']})" if spec["max_synthetic"] else "")
            for s in spec["synthetic"]
        ]
        lines.append(f"- **{name}**: {', '.join(parts)}")
    lines += ["", "Conventions:", ""] + [f"- {k}: {v}" for k, v in results["conventions"].items()]
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode("utf-8"))


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _text(
    draw: ImageDraw.ImageDraw,
    xy: tuple[float, float],
    text: str,
    font: Any,
    align: str = "centre",
    valign: str = "top",
    fill: Any = (0, 0, 0),
) -> None:
    """Text placed by its bounding box (bitmap fonts have no anchors)."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    width, height = right - left, bottom - top
    x = xy[0] - {"left": 0, "centre": width / 2, "right": width}[align] - left
    y = xy[1] - {"top": 0, "middle": height / 2, "bottom": height}[valign] - top
    draw.text((x, y), text, font=font, fill=fill)


def save_bar_chart(
    path: str | os.PathLike,
    aggregated: Mapping[str, Any],
    baseline: str | None = None,
    metric: str = "dice",
    title: str = "Dice on the test set (images with a lesion): mean ± std over runs",
) -> None:
    """A PNG bar chart of ``metric`` per condition with ±1 std error bars, drawn with Pillow (no matplotlib)."""
    names = list(aggregated)
    width, height = max(480, 110 * len(names) + 90), 380
    left, right, top, bottom = 60, 20, 48, 70
    plot_w, plot_h = width - left - right, height - top - bottom
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    font, title_font = _font(12), _font(15)

    def y_of(value: float) -> float:
        return top + plot_h * (1.0 - min(max(value, 0.0), 1.0))

    _text(draw, (width / 2, 12), title, title_font)
    for k in range(6):
        value = k / 5
        draw.line((left, y_of(value), width - right, y_of(value)), fill=(225, 225, 225))
        _text(draw, (left - 6, y_of(value)), f"{value:.1f}", font, align="right", valign="middle")
    draw.line((left, top, left, top + plot_h), fill=(0, 0, 0))
    draw.line((left, top + plot_h, width - right, top + plot_h), fill=(0, 0, 0))
    slot = plot_w / max(len(names), 1)
    bar = min(60.0, slot * 0.6)
    for i, name in enumerate(names):
        stats = aggregated[name]["metrics"][metric]
        centre = left + slot * (i + 0.5)
        mean, std = stats["mean"], stats["std"]
        colour = (120, 120, 120) if name == baseline else (31, 119, 180)
        if mean is None:
            _text(draw, (centre, top + plot_h - 4), "n/a", font, valign="bottom")
        else:
            draw.rectangle((centre - bar / 2, y_of(mean), centre + bar / 2, y_of(0.0)), fill=colour)
            upper = mean
            if std is not None:
                low, high = y_of(mean - std), y_of(mean + std)
                draw.line((centre, low, centre, high), fill=(0, 0, 0), width=2)
                for y in (low, high):
                    draw.line((centre - bar / 5, y, centre + bar / 5, y), fill=(0, 0, 0), width=2)
                upper = mean + std
            _text(draw, (centre, y_of(upper) - 4), f"{mean:.3f}", font, valign="bottom")
        words, lines = name.replace("+", "+ ").split(" "), [""]
        for word in words:  # wrap long condition names at "+" so they fit under their bar
            candidate = lines[-1] + word
            if lines[-1] and draw.textlength(candidate, font=font) > slot - 6:
                lines.append(word)
            else:
                lines[-1] = candidate
        for j, line in enumerate(lines):
            _text(draw, (centre, top + plot_h + 8 + 15 * j), line, font)
        _text(
            draw,
            (centre, top + plot_h + 8 + 15 * len(lines)),
            f"{aggregated[name]['runs']} run(s)",
            font,
            fill=(110, 110, 110),
        )
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
