"""The Dice filter (DiffuseExpand's Stage IV), for any bundle's generated pairs: keep a pair when a segmenter trained on
the real pairs agrees with its mask.

Dice loss ``1 - Dice(prediction, generated mask)`` (MONAI ``DiceLoss`` on the one-hot hard prediction, foreground
classes, smoothing 1e-5, so an empty prediction of an empty mask scores 0) below ``eta`` (DiffuseExpand: 0.065) ->
``kept``; with ``middle_band``, ``eta <= loss < 2 eta`` -> ``relabelled`` (the image kept with the segmenter's mask,
the DiffuseExpand authors' code); otherwise ``dropped``. The surviving pairs go to a new folder written like any
generated folder, built under a temporary name and moved into place at the end (a killed filter leaves no partial
output), with ``filter_report.json`` saying how many pairs fell in each class, each pair's loss and why. Each bundle's
``configs/filter.json`` runs it on that bundle's output.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import DiceLoss

from common.datalists import label_names
from common.errors import InputError, as_flag
from common.evaluation.segmenter import predict
from common.writers import PairWriter

__all__ = ["DECISIONS", "hard_dice_loss", "filter_decisions", "filter_pairs"]

logger = logging.getLogger(__name__)

DECISIONS = ("kept", "relabelled", "dropped")


def hard_dice_loss(prediction: Any, label: Any, num_classes: int = 2) -> np.ndarray:
    """Per-pair Dice loss (N,) between predicted and generated label maps (N, 1, H, W) of class indices."""
    pred = torch.as_tensor(np.asarray(prediction)).long()
    target = torch.as_tensor(np.asarray(label)).long()
    if pred.shape != target.shape or pred.ndim != 4:
        raise ValueError(
            f"prediction and label must both be (N, 1, H, W), got {tuple(pred.shape)} and {tuple(target.shape)}."
        )
    one_hot = F.one_hot(pred[:, 0], num_classes).permute(0, 3, 1, 2).float()
    loss = DiceLoss(include_background=False, to_onehot_y=True, reduction="none")(one_hot, target)
    return loss.flatten(1).mean(1).numpy()


def filter_decisions(losses: Sequence[float], eta: float = 0.065, middle_band: bool = False) -> list[str]:
    """``kept`` below ``eta``; ``relabelled`` in ``[eta, 2 eta)`` when ``middle_band``; else ``dropped``."""
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not eta > 0:
        raise InputError(f"'eta' must be a number > 0, got {eta!r}.")
    middle_band = as_flag(middle_band, "middle_band")
    decisions = []
    for loss in losses:
        if loss < eta:
            decisions.append("kept")
        elif middle_band and loss < 2 * eta:
            decisions.append("relabelled")
        else:
            decisions.append("dropped")
    return decisions


def filter_pairs(
    pairs: Sequence[Mapping[str, Any]],
    segmenter: torch.nn.Module,
    output_dir: str,
    eta: float = 0.065,
    middle_band: bool = False,
    num_classes: int = 2,
    device: str | torch.device = "cpu",
    source: str | None = None,
) -> dict[str, Any]:
    """Filter loaded generated ``pairs`` (``common.data.load_dataset`` of a PairWriter folder) into ``output_dir``.

    Returns the report also written to ``<output_dir>/filter_report.json``.
    """
    if not pairs:
        raise InputError(f"no generated pairs to filter{f' in {source!r}' if source else ''}.")
    images = np.stack([np.asarray(p["image"], np.float32) for p in pairs])
    labels = np.stack([np.asarray(p["label"], np.int64) for p in pairs])
    filter_decisions([], eta, middle_band)  # validate the settings before any work
    middle_band = as_flag(middle_band, "middle_band")
    predicted = predict(segmenter, images, device=device)
    losses = hard_dice_loss(predicted, labels, num_classes)
    decisions = filter_decisions(losses.tolist(), eta, middle_band)

    staging = output_dir.rstrip("/\\") + ".partial"
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    writer = PairWriter(staging, num_classes=num_classes)
    entries, written = [], 0
    for i, (pair, loss, decision) in enumerate(zip(pairs, losses, decisions)):
        entry = {"index": i, "source": str(pair.get("source", pair.get("name", i))), "dice_loss": round(float(loss), 5)}
        entry["decision"] = decision
        if decision != "dropped":
            label = labels[i] if decision == "kept" else predicted[i]
            writer.write(written, images[i], label)
            entry["written_as"] = writer.paths(written)[0]
            written += 1
        entries.append(entry)
    counts = Counter(decisions)
    report = {
        "eta": eta,
        "middle_band": middle_band,
        "rule": f"kept: dice loss < {eta}; "
        + (f"relabelled (image + segmenter mask): {eta} <= loss < {2 * eta}; " if middle_band else "")
        + "dropped: otherwise",
        "source": source,
        "total": len(pairs),
        **{name: counts.get(name, 0) for name in DECISIONS},
        "dice_loss_quantiles": {q: round(float(np.quantile(losses, q / 100)), 4) for q in (10, 25, 50, 75, 90)},
        "pairs": entries,
    }
    if written:
        writer.write_index(
            range(written),
            label_names(num_classes),
            description=f"{written} of {len(pairs)} generated pairs kept by the Dice filter (eta {eta})",
        )
    else:
        logger.warning("the filter kept no pairs (eta %s): every pair had a Dice loss >= eta", eta)
    with open(os.path.join(staging, "filter_report.json"), "w") as f:
        json.dump(report, f, indent=2)
    shutil.rmtree(output_dir, ignore_errors=True)
    os.replace(staging, output_dir)
    logger.info("filter: %s of %d pairs -> %s", dict(counts), len(pairs), output_dir)
    return report
