"""Scores of a trained segmenter on real test pairs, under explicit conventions for empty masks (DESIGN §5).

Per image and foreground class: MONAI's Dice, IoU, Precision, Recall, HD95 and ASSD (:func:`pair_metrics`,
:func:`evaluate_segmenter`), summarised per run (:func:`summarise_images`) following :data:`CONVENTIONS`, which
results.json and results.md repeat: overlap metrics over test images whose ground truth contains the class,
HD95/ASSD only where the prediction does too (missed lesions counted separately), and empty ground truth reported as a
count of correct empty predictions, because BUSI's normal images would otherwise score Dice 0 or 1 and dominate the
seed spread.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.metrics import ConfusionMatrixMetric, DiceMetric, HausdorffDistanceMetric, MeanIoU, SurfaceDistanceMetric
from monai.networks.utils import one_hot

from common.evaluation.segmenter import DEFAULTS, predict, stack_images

__all__ = [
    "METRICS",
    "DISTANCES",
    "ALL_IMAGES",
    "CONVENTIONS",
    "pair_metrics",
    "evaluate_segmenter",
    "summarise_images",
]

METRICS = ("dice", "iou", "precision", "recall", "hd95", "assd")
DISTANCES = ("hd95", "assd")
ALL_IMAGES = ("dice_all",)  # over every test image, empty ground truth included

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
    "all_images": (
        "'dice_all' is Dice averaged over ALL test images: an image whose ground truth and prediction are both empty "
        "scores 1, an empty ground truth with a predicted lesion scores 0, otherwise its Dice. It charges false "
        "positives on normal images, which the lesion-image mean ('dice') does not see; report both."
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
        "Per condition: mean and sample standard deviation (ddof=1; null for a single run) over runs (seeds x folds x "
        "training subsets); runs in which a metric is undefined are left out and 'n' says how many remain. "
        "'paired_vs_baseline' gives per-run differences to the baseline condition matched by seed, fold and training "
        "subset: their mean, std and the 95% confidence interval of the mean (Student's t over the pairs)."
    ),
}


def pair_metrics(prediction: Any, ground_truth: Any, num_classes: int = 2) -> list[dict[str, dict[str, Any]]]:
    """Per image and foreground class: MONAI Dice, IoU, Precision, Recall, HD95, ASSD under :data:`CONVENTIONS`.

    Returns ``[{"1": {"gt_empty", "pred_empty", "dice", ..., "assd"}, "2": {...}}, ...]``; a metric is ``None`` where
    the convention leaves it out (empty ground truth; distances with an empty prediction).
    """
    pred = stack_images(prediction, "prediction").long()
    gt = stack_images(ground_truth, "ground_truth").long()
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
                if not gt_any[i, c] or (name in DISTANCES and not pred_any[i, c]):
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
            "dice_all": _mean([float(e["pred_empty"]) if e["gt_empty"] else e["dice"] for e in entries]),
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
        **{name: _mean([per_class[c][name] for c in classes]) for name in (*METRICS, *ALL_IMAGES)},
        "test_images": len(per_image),
        "hd95_missed": sum(per_class[c]["hd95_missed"] for c in classes),
        "empty_gt_images": n_empty,
        "empty_gt_pred_empty": correct,
        "empty_gt_pred_empty_fraction": correct / n_empty if n_empty else None,
        "per_class": per_class,
    }
