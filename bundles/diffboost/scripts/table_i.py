"""Score images rebuilt from a condition against the real images they were rebuilt from (DiffBoost paper Table I).

Each method is a PairWriter folder whose pair ``i`` was made from real pair ``i``'s condition (for DiffBoost: the
Canny edges of the real image, given to the pretrained text + edge generator and to Pix2Pix alike). Every image is
compared with its real counterpart on a [0, 1] intensity range, the paper's convention ("data range is between 0-1"),
by :func:`common.metrics.paired_image_metrics`: MAE, MSE, RMSE, SSIM, MS-SSIM (and PSNR), mean ± std over images.

Writes ``results.json``, ``results.md`` (the paper's Table I layout) and ``figure.png`` (label | real | methods).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from common.comparison import read_synthetic_images, save_comparison_figure
from common.errors import InputError
from common.metrics import paired_image_metrics
from common.writers import atomic_write_bytes

__all__ = ["TABLE_I_METRICS", "evaluate_reconstructions", "markdown_table", "setup_note"]

logger = logging.getLogger(__name__)

# (key of paired_image_metrics, column title, lower is better)
TABLE_I_METRICS = (
    ("mae", "MAE", True),
    ("mse", "MSE", True),
    ("rmse", "RMSE", True),
    ("ssim", "SSIM", False),
    ("ms_ssim", "MS-SSIM", False),
)


def evaluate_reconstructions(
    real_pairs: Sequence[Mapping[str, Any]],
    methods: Mapping[str, str],
    output_dir: str,
    num_classes: int = 2,
    figure_images: int = 4,
    note: str = "",
) -> dict[str, Any]:
    """Score every method folder against ``real_pairs`` (pair ``i`` of each folder rebuilt from real pair ``i``)."""
    if not real_pairs:
        raise InputError("no real images to compare against.")
    if not methods:
        raise InputError("'methods' must name at least one folder of rebuilt images.")
    real = np.stack([np.asarray(p["image"], np.float32) for p in real_pairs])
    results: dict[str, Any] = {"images": len(real_pairs), "value_range": [0.0, 1.0], "note": note, "methods": {}}
    rebuilt: dict[str, np.ndarray] = {}
    for method, folder in methods.items():
        images = read_synthetic_images(folder, len(real_pairs), num_classes)
        rebuilt[method] = images
        results["methods"][method] = {"folder": os.path.abspath(folder), **paired_image_metrics(images, real)}
        means = {key: round(results["methods"][method][f"{key}_mean"], 4) for key, *_ in TABLE_I_METRICS}
        logger.info("%s: %s", method, means)
    os.makedirs(output_dir, exist_ok=True)
    atomic_write_bytes(
        os.path.join(output_dir, "results.json"), json.dumps(results, indent=2, default=float).encode("utf-8")
    )
    atomic_write_bytes(os.path.join(output_dir, "results.md"), markdown_table(results).encode("utf-8"))
    save_comparison_figure(os.path.join(output_dir, "figure.png"), real_pairs, rebuilt, num_classes, figure_images)
    return results


def markdown_table(results: Mapping[str, Any]) -> str:
    """Methods x (MAE, MSE, RMSE, SSIM, MS-SSIM), mean ± std over images, best value of each column in bold."""
    methods = results["methods"]
    best = {}
    for key, _, lower in TABLE_I_METRICS:
        values = [entry[f"{key}_mean"] for entry in methods.values()]
        best[key] = min(values) if lower else max(values)
    head = ["method", *(f"{title} {'↓' if lower else '↑'}" for _, title, lower in TABLE_I_METRICS)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method, entry in methods.items():
        cells = [method]
        for key, _, _ in TABLE_I_METRICS:
            text = f"{entry[f'{key}_mean']:.4f} ± {entry[f'{key}_std']:.4f}"
            cells.append(f"**{text}**" if len(methods) > 1 and entry[f"{key}_mean"] == best[key] else text)
        lines.append("| " + " | ".join(cells) + " |")
    scales = {int(entry["ms_ssim_scales"]) for entry in methods.values()}
    lines += [
        "",
        f"{results['images']} held-out images, each rebuilt from its own condition and compared with it on [0, 1]; "
        f"mean ± std over images; MS-SSIM over {', '.join(map(str, sorted(scales)))} scale(s). "
        + results.get("note", ""),
    ]
    return "\n".join(lines).rstrip() + "\n"


def setup_note(hed_weights: str | None, sampling_method: str, num_inference_steps: int, pix2pix_iterations: int) -> str:
    """The line under the table saying how both methods were run."""
    edges = "HED" if hed_weights else "Canny"
    return (
        f"Edges: {edges} of the real image. DiffBoost: {sampling_method}, {num_inference_steps} steps, the prompt "
        f"alone. Pix2Pix: {pix2pix_iterations} iterations on the pooled train split."
    )
