"""Quality per network evaluation of PIG's paired sampler: DDIM vs DPM-Solver++ at several step counts (issue 8).

    OMP_NUM_THREADS=2 python benchmarks/sampling_steps.py --ckpt_dir runs/busi_downstream/n50/models \\
        --max_pairs 50 --workdir runs/sampling_steps --steps 5 10 20 50 --num_pairs 128

For every (method, steps), ``inference.json`` samples ``--num_pairs`` pairs from the same noise seeds with the trained
checkpoint, and the pairs are scored:

* FID of the images against the BUSI test images (the optional Inception wheel; ``--no_fid`` skips it). With 128
  images FID is biased upwards; compare rows, not with published values;
* alignment Dice: a UNet trained on the generator's own real pairs (cached) segments the generated images, scored
  against the generated masks (pairs with a foreground mask; ``common.metrics.alignment_dice``);
* the DESIGN §5 statistics against those real pairs (mask area, empty-mask fraction, image mean/std);
* seconds per pair and network evaluations per pair (2 per step: the guider and the image model).

One JSON per (method, steps) in ``--workdir``, skipped when present; ``<workdir>/summary.md`` and
``benchmarks/results/sampling_steps.json`` hold the table.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
METHODS = ("ddim", "dpmsolver++")


def sample(args: argparse.Namespace, method: str, steps: int, out: Path) -> dict:
    """Generate with the bundle's own inference config, in this process, and return generate_pairs' summary."""
    from benchmarks.bundle_runner import bundle_parser

    parser = bundle_parser("pig", "inference.json")
    parser.update(
        {
            "ckpt_dir": str(Path(args.ckpt_dir).resolve()),
            "output_dir": str(out),
            "num_pairs": args.num_pairs,
            "num_inference_steps": steps,
            "sampling_method": method,
            "seed": args.seed,
        }
    )
    parser.get_parsed_content("network")  # loading the checkpoint is not sampling time
    return parser.get_parsed_content("run")[0]


def score(args: argparse.Namespace, out: Path, real: list, fid, segmenter) -> dict:
    """Distribution checks and alignment Dice of the pairs in ``out``; ``fid``: a ``ReferenceFID`` of the test images
    (or None)."""
    import numpy as np

    from common.metrics import alignment_dice, pair_statistics
    from common.writers import PairWriter

    writer = PairWriter.existing(str(out))
    images, labels = map(np.stack, zip(*(writer.read(i) for i in range(args.num_pairs))))
    fake = pair_statistics(images, labels)
    truth = pair_statistics([p["image"] for p in real], [p["label"] for p in real])
    aligned = alignment_dice(segmenter, images.astype(np.float32), labels)
    result = {
        "alignment_dice": aligned["dice_mean"],
        "empty_predicted_empty": aligned["empty_predicted_empty"],
        **{f"{k}": v for k, v in fake.items()},
        **{f"real_{k}": v for k, v in truth.items()},
    }
    if fid is not None:
        result["fid"] = fid(images.astype(np.float32))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt_dir", required=True, help="a trained PIG bundle's ckpt_dir (model.pt)")
    parser.add_argument("--dataset_dir", default=str(REPO.parent / "shared" / "data" / "busi"))
    parser.add_argument("--max_pairs", type=int, default=None, help="the real subset the generator was trained on")
    parser.add_argument("--workdir", default="runs/sampling_steps")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--steps", type=int, nargs="+", default=[5, 10, 20, 50])
    parser.add_argument("--num_pairs", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--segmenter_iterations", type=int, default=1500)
    parser.add_argument("--no_fid", action="store_true")
    args = parser.parse_args()

    import numpy as np

    from common.data import load_dataset
    from common.evaluation.segmenter import load_or_train_segmenter
    from common.fid import ReferenceFID

    work = Path(args.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    real = load_dataset(args.dataset_dir, split="train", image_size=64, max_pairs=args.max_pairs, seed=0)
    test_images = np.stack([p["image"] for p in load_dataset(args.dataset_dir, split="test", image_size=64)])
    fid = None if args.no_fid else ReferenceFID(test_images)  # every row against the same test images
    segmenter = load_or_train_segmenter(
        str(work / "segmenter.pt"), real, iterations=args.segmenter_iterations, seed=args.seed
    )
    rows = {}
    for method in args.methods:
        for steps in args.steps:
            result_file = work / f"{method}_{steps}.json"
            if not result_file.is_file():
                out = work / f"{method}_{steps}"
                summary = sample(args, method, steps, out)
                row = {
                    "method": method,
                    "steps": steps,
                    "network_evaluations_per_pair": 2 * steps,
                    "seconds_per_pair": summary["seconds_per_pair"] if summary["generated"] else None,
                    **score(args, out, real, fid, segmenter),
                }
                tmp = result_file.with_suffix(".partial")
                tmp.write_text(json.dumps(row, indent=1, default=float))
                os.replace(tmp, result_file)
            rows[f"{method}@{steps}"] = json.loads(result_file.read_text())
            print(rows[f"{method}@{steps}"], flush=True)

    columns = ["method", "steps", "network_evaluations_per_pair", "seconds_per_pair", "fid", "alignment_dice",
               "mask_area_mean", "empty_fraction", "image_mean", "image_std"]  # fmt: skip
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows.values():
        cells = [row.get(c) for c in columns]
        lines.append("| " + " | ".join(f"{c:.3f}" if isinstance(c, float) else str(c) for c in cells) + " |")
    first = next(iter(rows.values()))
    lines.append(
        f"\nreal pairs: mask_area_mean {first['real_mask_area_mean']:.3f}, empty_fraction "
        f"{first['real_empty_fraction']:.3f}, image_mean {first['real_image_mean']:.3f}, image_std "
        f"{first['real_image_std']:.3f}; {args.num_pairs} pairs per row; checkpoint {args.ckpt_dir}"
    )
    lines.append(f"\nwall time of this invocation: {(time.perf_counter() - start) / 60:.1f} min")
    text = "\n".join(lines)
    print(text)
    (work / "summary.md").write_text(text + "\n")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "sampling_steps.json").write_text(json.dumps({"settings": vars(args), "rows": rows}, indent=2))


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(REPO))
    main()
