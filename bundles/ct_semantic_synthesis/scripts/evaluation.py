"""Evaluate label-map -> image synthesis against the real images of the same label maps (paper 004, Tables 1-2).

For each method (a PairWriter folder whose pair ``i`` was synthesized from real slice ``i``'s label map):

* FID of the synthetic vs the real slices (offline Inception, optional extra; ``None`` when it is not installed);
* PSNR and SSIM of each synthetic slice against its real slice (``common.metrics.paired_image_metrics``);
* per-organ Dice of an organ segmenter applied to the synthetic slices, against the label map they were made from.
  The paper used TotalSegmentator; offline, a MONAI UNet trained on the real training slices (organ classes only,
  the body class folded into background) plays its part, and its Dice on the real test slices is reported as the
  "real" row: the ceiling a perfect synthesis would reach.

Writes ``results.json``, ``results.md`` (methods x metrics x organs, the paper's Table 1 layout) and ``figure.png``
(label | real | one column per method, a few slices).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from common.comparison import read_synthetic_images, save_comparison_figure
from common.errors import InputError
from common.evaluation.segmenter import load_or_train_segmenter
from common.fid import ReferenceFID
from common.metrics import alignment_dice, paired_image_metrics
from common.writers import atomic_write_bytes

__all__ = [
    "evaluate_semantic_synthesis",
    "organ_segmenter",
    "build_organ_scorer",
    "TotalSegmentatorSegmenter",
    "volume_affine",
]

logger = logging.getLogger(__name__)


def _organ_only(label: np.ndarray, organ_classes: int) -> np.ndarray:
    """Fold the extra body class (and anything beyond the organ classes) into background."""
    label = np.asarray(label, np.int64)
    return np.where(label >= organ_classes, 0, label)


def organ_segmenter(
    path: str,
    train_pairs: Sequence[Mapping[str, Any]],
    organ_classes: int,
    image_size: int = 64,
    iterations: int = 1500,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> torch.nn.Module:
    """The stand-in for TotalSegmentator: a MONAI UNet on the real training slices' organ classes (the body class
    folded into background), cached at ``path`` (:func:`common.evaluation.segmenter.load_or_train_segmenter`)."""
    pairs = [{"image": p["image"], "label": _organ_only(p["label"], organ_classes)} for p in train_pairs]
    return load_or_train_segmenter(path, pairs, "unet", organ_classes, image_size, iterations, seed, device)


def build_organ_scorer(
    kind: str,
    path: str,
    train_slices: Sequence[Mapping[str, Any]],
    test_slices: Sequence[Mapping[str, Any]],
    organ_classes: int,
    class_names: Mapping[str, str] | None = None,
    intensity_window: Sequence[float] = (40, 400),
    image_size: int = 64,
    iterations: int = 1500,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> Any:
    """The organ segmenter that scores synthetic slices: ``"unet"`` (:func:`organ_segmenter`, trained on the real
    ``train_slices``) or ``"totalsegmentator"`` (:class:`TotalSegmentatorSegmenter` on the ``test_slices``' volume,
    when TotalSegmentator and its weights are installed)."""
    if kind == "totalsegmentator":
        affines = [p["affine"] for p in test_slices]
        return TotalSegmentatorSegmenter(affines, dict(class_names or {}), tuple(intensity_window), str(device))
    if kind != "unet":
        raise InputError(f"'organ_segmenter' must be 'unet' or 'totalsegmentator', got {kind!r}.")
    return organ_segmenter(
        path, train_slices, organ_classes, image_size=image_size, iterations=iterations, seed=seed, device=device
    )


def volume_affine(affines: Sequence[Any]) -> np.ndarray:
    """The 4x4 affine of slices stacked as (rows, cols, slice) from their 2D slice affines (``common.data`` pairs).

    The slices must be one evenly spaced run (a slab or a whole series), else the stack is not a volume.
    """
    stack = [np.asarray(a, dtype=np.float64) for a in affines if a is not None]
    if len(stack) < 2 or len(stack) != len(affines):
        raise InputError("TotalSegmentator needs at least two slices that all carry an affine (volumes, not 2D files).")
    steps = np.diff(np.stack([a[:3, 3] for a in stack]), axis=0)
    if not np.allclose(steps, steps[0], atol=1e-3):
        raise InputError("the slices are not one contiguous, evenly spaced run; TotalSegmentator needs a volume.")
    affine = np.eye(4)
    affine[:3, :2] = stack[0][:3, :2]
    affine[:3, 2] = steps[0]
    affine[:3, 3] = stack[0][:3, 3]
    return affine


class TotalSegmentatorSegmenter:
    """The paper's organ segmenter, when a user has TotalSegmentator and its weights installed (never required).

    Called like any segmenter of :func:`common.metrics.alignment_dice`, but on all slices at once
    (``whole_volume``): the windowed slices go back to HU (``level + x * width / 2``; values outside the window are
    lost, as in the synthetic images), are stacked into one NIfTI volume with ``volume_affine(affines)``, segmented
    by TotalSegmentator's "total" task (restricted to the named organs), and its labels are mapped to this dataset's
    classes by name (``class_names``: index -> TotalSegmentator name, e.g. ct_abdomen/classmap.json). Returns one-hot
    logits (B, organ_classes, H, W).
    """

    whole_volume = True

    def __init__(
        self,
        affines: Sequence[Any],
        class_names: Mapping[str, str],
        intensity_window: Sequence[float] = (40, 400),
        device: str = "cpu",
        fast: bool = False,
    ) -> None:
        try:
            from totalsegmentator.map_to_binary import class_map
            from totalsegmentator.python_api import totalsegmentator
        except ImportError as exc:
            raise InputError(
                "TotalSegmentator is not installed (pip install TotalSegmentator and put its weights where it looks, "
                "TOTALSEG_HOME_DIR); the default organ segmenter needs neither."
            ) from exc
        self._run = totalsegmentator
        ids = {name: int(i) for i, name in class_map["total"].items()}
        self.mapping: dict[int, int] = {}
        for index, name in class_names.items():
            if int(index) == 0:
                continue
            if name not in ids:
                raise InputError(f"class {index} '{name}' is not a TotalSegmentator 'total' class; rename it.")
            self.mapping[ids[name]] = int(index)
        if not self.mapping:
            raise InputError("'class_names' names no organ for TotalSegmentator.")
        self.organ_classes = max(self.mapping.values()) + 1
        self.roi_subset = sorted(name for index, name in class_names.items() if int(index) > 0)
        self.affine = volume_affine(affines)
        self.level, self.width = (float(v) for v in intensity_window)
        self.device = "gpu" if str(device).startswith("cuda") else "cpu"
        self.fast = fast

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        import nibabel as nib

        hu = self.level + images[:, 0].detach().cpu().numpy().astype(np.float32) * self.width / 2
        volume = nib.Nifti1Image(np.ascontiguousarray(np.transpose(hu, (1, 2, 0))), self.affine)
        segmentation = self._run(
            volume,
            None,
            ml=True,
            task="total",
            roi_subset=self.roi_subset,
            device=self.device,
            fast=self.fast,
            quiet=True,
        )
        found = np.asarray(segmentation.dataobj).astype(np.int64)
        ours = np.zeros_like(found)
        for source, target in self.mapping.items():
            ours[found == source] = target
        labels = torch.as_tensor(np.transpose(ours, (2, 0, 1)))
        return torch.nn.functional.one_hot(labels, self.organ_classes).permute(0, 3, 1, 2).float()


def _reference_fid(real: np.ndarray) -> ReferenceFID | None:
    """FID against the real slices, their features extracted once for all methods; None without the optional wheel."""
    try:
        return ReferenceFID(real)
    except InputError as exc:  # the optional Inception weights are not installed
        logger.warning("FID skipped: %s", exc)
        return None


def evaluate_semantic_synthesis(
    real_pairs: Sequence[Mapping[str, Any]],
    methods: Mapping[str, str],
    segmenter: torch.nn.Module,
    organ_classes: int,
    model_classes: int,
    output_dir: str,
    class_names: Mapping[str, str] | None = None,
    fid: bool = True,
    figure_slices: int = 4,
    note: str = "",
) -> dict[str, Any]:
    """Score every method folder against ``real_pairs`` (the slices whose label maps were synthesized)."""
    if not real_pairs:
        raise InputError("no real slices to compare against.")
    if not methods:
        raise InputError("'methods' must name at least one folder of synthetic slices.")
    real = np.stack([np.asarray(p["image"], np.float32) for p in real_pairs])
    organs = np.stack([_organ_only(p["label"], organ_classes) for p in real_pairs])
    names = dict(class_names or {})
    results: dict[str, Any] = {"slices": len(real_pairs), "organ_classes": organ_classes, "note": note, "methods": {}}

    def organ_dice(images: np.ndarray) -> dict[str, Any]:
        batch = len(images) if getattr(segmenter, "whole_volume", False) else 16
        scores = alignment_dice(segmenter, images, organs, num_classes=organ_classes, batch_size=batch)
        per_organ = {}
        for c in range(1, organ_classes):
            value = scores.get(f"dice_mean_class{c}")
            if value is not None and not math.isnan(value):
                per_organ[names.get(str(c), f"class_{c}")] = round(float(value), 4)
        return {"mean": scores.get("dice_mean"), "per_organ": per_organ}

    results["methods"]["real"] = {"fid": None, "psnr": None, "ssim": None, "dice": organ_dice(real)}
    fid_to_real = _reference_fid(real) if fid else None
    synthetic: dict[str, np.ndarray] = {}
    for method, folder in methods.items():
        images = read_synthetic_images(folder, len(real_pairs), model_classes)
        synthetic[method] = images
        paired = paired_image_metrics(images, real)
        results["methods"][method] = {
            "folder": os.path.abspath(folder),
            "fid": fid_to_real(images) if fid_to_real is not None else None,
            "psnr": paired["psnr_mean"],
            "psnr_std": paired["psnr_std"],
            "ssim": paired["ssim_mean"],
            "ssim_std": paired["ssim_std"],
            "dice": organ_dice(images),
        }
        logger.info("%s: %s", method, {k: results["methods"][method][k] for k in ("fid", "psnr", "ssim")})
    os.makedirs(output_dir, exist_ok=True)
    atomic_write_bytes(
        os.path.join(output_dir, "results.json"), json.dumps(results, indent=2, default=float).encode("utf-8")
    )
    atomic_write_bytes(os.path.join(output_dir, "results.md"), markdown_table(results).encode("utf-8"))
    save_comparison_figure(os.path.join(output_dir, "figure.png"), real_pairs, synthetic, model_classes, figure_slices)
    return results


def _cell(value: Any, digits: int = 3) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def markdown_table(results: Mapping[str, Any]) -> str:
    """Methods x (FID, PSNR, SSIM, mean Dice, Dice per organ), organs present in the slices only."""
    organs: list[str] = []
    for entry in results["methods"].values():
        organs += [o for o in entry["dice"]["per_organ"] if o not in organs]
    head = ["method", "FID", "PSNR", "SSIM", "Dice (mean)", *organs]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method, entry in results["methods"].items():
        per_organ = entry["dice"]["per_organ"]
        cells = [
            method,
            _cell(entry["fid"], 1),
            _cell(entry["psnr"], 2),
            _cell(entry["ssim"]),
            _cell(entry["dice"]["mean"]),
            *[_cell(per_organ.get(o)) for o in organs],
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        f"{results['slices']} slices. FID/PSNR/SSIM against the real slice of the same label map; Dice of the organ "
        "segmenter on each image vs the label map it came from (the 'real' row: the segmenter on the real slices). "
        + results.get("note", "")
    )
    return "\n".join(lines) + "\n"
