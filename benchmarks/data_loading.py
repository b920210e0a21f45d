"""Start-up cost of loading a dataset into the bundles' cached 64x64 tensors, and how much of it is resizing (issue 8).

    OMP_NUM_THREADS=2 python benchmarks/data_loading.py --datasets busi cxr_lungs --repeats 3

Every bundle calls ``common.data.load_dataset`` once at start-up: decode each file, resize the image (anti-aliased)
and its mask to ``--image_size``. Two arms differ only in the 2D image resize:

* ``shipped``: ``common.transforms.resize_image`` (torch's antialiased bilinear filter);
* ``monai_gaussian``: MONAI ``Resize(mode="bilinear", anti_aliasing=True)`` (Gaussian pre-smoothing, then bilinear):
  what ``resize_image`` did before commit 9f27021.

One warm-up load per dataset fills the OS file cache; then the arms alternate, ``--repeats`` times each, in this
process (the import cost is the same for both and excluded). Reported: median seconds per load, the part spent inside
the image resize, and the ratio of the two arms' medians. Results: ``benchmarks/results/data_loading.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import common.data  # noqa: E402
from common.transforms import resize_image  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"


def monai_gaussian_resize(image, size) -> np.ndarray:
    """The resize of 2D images before 9f27021: MONAI's Gaussian anti-aliasing, then bilinear."""
    from monai.transforms import Resize

    tensor = torch.as_tensor(np.asarray(image, dtype=np.float32))
    spatial = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(tensor.shape[1:]) == spatial:
        return tensor.numpy().astype(np.float32, copy=True)
    out = Resize(spatial_size=spatial, mode="bilinear", anti_aliasing=True)(tensor)
    return np.clip(np.asarray(out, dtype=np.float32), -1.0, 1.0)


ARMS: dict[str, Callable] = {"shipped": resize_image, "monai_gaussian": monai_gaussian_resize}


def timed_load(dataset_dir: Path, split: str, image_size: int, resize: Callable) -> tuple[float, float, int]:
    """(total seconds, seconds inside the image resize, pairs) of one ``load_dataset`` call with ``resize``."""
    inside = [0.0]

    def counting(image, size):
        start = time.perf_counter()
        try:
            return resize(image, size)
        finally:
            inside[0] += time.perf_counter() - start

    original = common.data.resize_image
    common.data.resize_image = counting
    try:
        start = time.perf_counter()
        pairs = common.data.load_dataset(dataset_dir, split=split, image_size=image_size)
        total = time.perf_counter() - start
    finally:
        common.data.resize_image = original
    return total, inside[0], len(pairs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_root", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--datasets", nargs="+", default=["busi", "cxr_lungs"])
    parser.add_argument("--split", default="train")
    parser.add_argument("--image_size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be >= 1.")
    root = Path(args.data_root)
    rows = []
    for name in args.datasets:
        folder = root / name
        if not folder.is_dir():
            parser.error(f"dataset folder '{folder}' does not exist.")
        timed_load(folder, args.split, args.image_size, resize_image)  # warm-up: file cache, lazy imports
        samples: dict[str, list[tuple[float, float]]] = {arm: [] for arm in ARMS}
        pairs = 0
        for repeat in range(args.repeats):
            for arm, resize in ARMS.items():
                total, inside, pairs = timed_load(folder, args.split, args.image_size, resize)
                samples[arm].append((total, inside))
                print(f"{name} {arm} repeat {repeat}: {total:.2f} s ({inside:.2f} s resizing, {pairs} pairs)")
        medians = {
            arm: {
                "seconds": statistics.median(t for t, _ in values),
                "resize_seconds": statistics.median(r for _, r in values),
                "all_seconds": [t for t, _ in values],
            }
            for arm, values in samples.items()
        }
        rows.append(
            {
                "dataset": name,
                "pairs": pairs,
                **medians,
                "speed_up": medians["monai_gaussian"]["seconds"] / medians["shipped"]["seconds"],
            }
        )
    lines = [
        f"| dataset ({args.split}, {args.image_size}x{args.image_size}) | pairs | load s shipped | of which resize "
        "| load s MONAI Gaussian | of which resize | speed-up |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        s, g = r["shipped"], r["monai_gaussian"]
        lines.append(
            f"| {r['dataset']} | {r['pairs']} | {s['seconds']:.2f} | {s['resize_seconds']:.2f} | {g['seconds']:.2f} "
            f"| {g['resize_seconds']:.2f} | {r['speed_up']:.1f}x |"
        )
    table = "\n".join(lines)
    RESULTS.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in vars(args).items() if k != "data_root"}
    (RESULTS / "data_loading.json").write_text(json.dumps({"settings": settings, "rows": rows}, indent=2))
    print(f"\nMedians of {args.repeats} loads per arm:\n\n{table}")


if __name__ == "__main__":
    main()
