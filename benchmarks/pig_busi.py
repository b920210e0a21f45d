"""Train PIG on the BUSI train split, generate pairs, and summarise what came out (resumable, one command).

    python benchmarks/pig_busi.py --workdir runs/pig_busi --epochs 16 --iterations_per_epoch 250 --num_pairs 64

Steps are skipped when their output exists (training also resumes from its last checkpoint after a kill). Prints and
writes ``<workdir>/summary.md``: the loss curve per epoch with wall-clock minutes, and the cheap distribution checks
(mask area, empty-mask fraction, components, image mean/std) of generated vs real training pairs.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.bundle_runner import run_bundle  # noqa: E402
from common.data import load_dataset  # noqa: E402
from common.metrics import compare_statistics, pair_statistics  # noqa: E402
from common.writers import PairWriter  # noqa: E402

CONFIGS = REPO / "bundles" / "pig" / "configs"


def bundle(config: str, *overrides: str) -> None:
    run_bundle([CONFIGS / config], *overrides)


def loss_curve(history: Path) -> list[tuple[int, float, float]]:
    """(epoch, mean loss, minutes at epoch end) from the trainer's loss_history.csv."""
    losses, seconds = defaultdict(list), {}
    with open(history) as f:
        for row in csv.DictReader(f):
            losses[int(row["epoch"])].append(float(row["loss"]))
            seconds[int(row["epoch"])] = float(row["seconds"])
    return [(e, float(np.mean(v)), seconds[e] / 60) for e, v in sorted(losses.items())]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="runs/pig_busi")
    parser.add_argument("--dataset_dir", default=str(REPO.parent / "shared" / "data" / "busi"))
    parser.add_argument("--epochs", type=int, default=16)
    parser.add_argument("--iterations_per_epoch", type=int, default=250)
    parser.add_argument("--num_pairs", type=int, default=64)
    parser.add_argument("--num_inference_steps", type=int, default=50)
    parser.add_argument("--max_pairs", default=None, help="few-shot: train on a seeded subset of this many pairs")
    args = parser.parse_args()
    work = Path(args.workdir).resolve()
    models, train_out, generated = work / "models", work / "train", work / "generated"
    common = ["--ckpt_dir", str(models)]

    start = time.perf_counter()
    if not (models / "model.pt").is_file():
        extra = ["--max_pairs", args.max_pairs] if args.max_pairs else []
        bundle(
            "train.json",
            "--dataset_dir",
            args.dataset_dir,
            "--output_dir",
            str(train_out),
            *common,
            "--iterations_per_epoch",
            str(args.iterations_per_epoch),
            "--max_epochs",
            str(args.epochs),
            *extra,
        )
    bundle(
        "inference.json",
        *common,
        "--output_dir",
        str(generated),
        "--num_pairs",
        str(args.num_pairs),
        "--num_inference_steps",
        str(args.num_inference_steps),
        "--sampling_method",
        "ddim",
    )

    real = load_dataset(
        args.dataset_dir, split="train", image_size=64, max_pairs=int(args.max_pairs) if args.max_pairs else None
    )
    writer = PairWriter.existing(str(generated))
    fake = [writer.read(i) for i in range(args.num_pairs)]
    stats = {
        "real train": pair_statistics([p["image"] for p in real], [p["label"] for p in real]),
        "PIG": pair_statistics([f[0] for f in fake], [f[1] for f in fake]),
    }
    curve = loss_curve(train_out / "loss_history.csv")
    lines = ["## Loss curve (mean MSE per epoch)", "", "| epoch | iterations | loss | minutes |", "|---|---|---|---|"]
    lines += [f"| {e} | {e * args.iterations_per_epoch} | {loss:.4f} | {m:.1f} |" for e, loss, m in curve]
    lines += [
        "",
        f"## Generated ({args.num_pairs} pairs, {args.num_inference_steps} DDIM steps) vs real",
        "",
        compare_statistics(stats),
        "",
        f"benchmark wall time this invocation: {(time.perf_counter() - start) / 60:.1f} min",
    ]
    summary = "\n".join(lines)
    (work / "summary.md").write_text(summary + "\n")
    (work / "summary.json").write_text(json.dumps({"loss_curve": curve, "statistics": stats}, indent=2))
    print(summary)


if __name__ == "__main__":
    main()
