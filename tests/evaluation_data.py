"""Small segmentation datasets and settings shared by the evaluation tests (common and DiffBoost's Table II)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from monai.data import create_test_image_2d

from common.writers import PairWriter, write_datalist

__all__ = ["TINY_NET", "FAST", "write_pairs"]

TINY_NET = {"channels": (4, 8), "strides": (2,), "num_res_units": 0}
FAST = {"image_size": 32, "iterations": 2, "batch_size": 4, "network_kwargs": TINY_NET}


def write_pairs(folder: Path, n: int, seed: int, empty: tuple[int, ...] = (), file_format: str = "png") -> list[str]:
    """n binary 32x32 disc pairs written by PairWriter (MONAI Label's datastore layout) with a datalist.json;
    ``empty`` get no lesion."""
    writer = PairWriter(folder, file_format=file_format)
    rng = np.random.RandomState(seed)
    items = []
    for i in range(n):
        image, seg = create_test_image_2d(
            32, 32, num_objs=1, rad_max=8, rad_min=5, noise_max=0.2, num_seg_classes=1, random_state=rng
        )
        label = np.zeros_like(seg) if i in empty else (seg > 0)
        items.append(writer.write(i, image * 2 - 1, label))
    write_datalist(folder / "datalist.json", items)
    return [writer.name(i) for i in range(n)]
