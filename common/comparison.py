"""Synthetic images side by side with the real images they were made from (CT label maps, DiffBoost edge maps).

Both bundles generate pair ``i`` of a PairWriter folder from real pair ``i``'s condition and score it against that
real image: :func:`read_synthetic_images` reads a method's folder back (naming it if pairs are missing) and
:func:`save_comparison_figure` draws label | real | one column per method for a few evenly spaced pairs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image

from common.errors import InputError
from common.writers import PairWriter

__all__ = ["read_synthetic_images", "save_comparison_figure"]


def read_synthetic_images(folder: str, count: int, num_classes: int) -> np.ndarray:
    """Images (count, C, H, W) of pairs 0..count-1 of a PairWriter folder; names the folder if any is missing."""
    writer = PairWriter.existing(folder, num_classes)
    missing = [i for i in range(count) if not writer.is_complete(i)]
    if missing:
        raise InputError(
            f"method folder '{folder}' lacks {len(missing)} of the {count} synthetic images "
            f"(first: pair {missing[0]}); "
            "run the generation with the same real pairs first."
        )
    return np.stack([writer.read(i)[0] for i in range(count)])


def _palette(num_classes: int) -> np.ndarray:
    rng = np.random.default_rng(3)
    colours = rng.integers(40, 256, size=(num_classes, 3)).astype(np.uint8)
    colours[0] = 0
    return colours


def save_comparison_figure(
    path: str,
    real_pairs: Sequence[Mapping[str, Any]],
    synthetic: Mapping[str, np.ndarray],
    num_classes: int,
    slices: int = 4,
    scale: int = 2,
) -> None:
    """Rows of evenly spaced slices: label map | real | each method (greyscale, [-1, 1] -> 0..255)."""
    count = len(real_pairs)
    rows = sorted({int(round(k)) for k in np.linspace(0, count - 1, min(slices, count))})
    palette = _palette(num_classes)

    def grey(image: np.ndarray) -> np.ndarray:
        plane = np.clip((np.asarray(image)[0] + 1) * 127.5, 0, 255).astype(np.uint8)
        return np.repeat(plane[..., None], 3, axis=2)

    tiles = []
    for r in rows:
        label = palette[np.clip(np.asarray(real_pairs[r]["label"])[0], 0, num_classes - 1)]
        row = [label, grey(real_pairs[r]["image"])] + [grey(images[r]) for images in synthetic.values()]
        tiles.append(np.concatenate(row, axis=1))
    grid = np.concatenate(tiles, axis=0)
    picture = Image.fromarray(grid).resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST)
    tmp = path + ".tmp.png"
    picture.save(tmp)
    os.replace(tmp, path)
    with open(path + ".txt", "w") as f:
        f.write("columns: label | real | " + " | ".join(synthetic) + f"\nrows: slices {rows}\n")
