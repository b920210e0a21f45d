"""Quality of PIG's pairs against CPU minutes of training, for the default config and candidate overlays (issue 8).

    OMP_NUM_THREADS=2 python benchmarks/time_to_quality.py --workdir runs/time_to_quality --max_pairs 50 \\
        --arms default fast=path/to/overlay.json --epochs 12 --iterations_per_epoch 100

Each arm trains ``bundles/pig/configs/train.json`` (+ its overlay) on the same real pairs, one epoch per bundle run
(training resumes from the last checkpoint, so the curve costs no extra training), and after every epoch samples
``--num_pairs`` pairs from the EMA weights and scores them against the real pairs with the DESIGN §5 checks:

* ``area_w1``: Wasserstein-1 distance between the generated and real mask-area distributions;
* ``empty_gap``, ``mean_gap``, ``std_gap``: |generated - real| of the empty-mask fraction and image mean / std;
* ``fid`` against the real training images when the optional Inception wheel is installed (biased upwards at 64
  images: compare arms, not published values).

The x axis is training minutes: per epoch, the iterations' time as recorded by the trainer's own loss history
(start-up, sampling and scoring excluded; the median iteration times the count, so a paused or preempted iteration
does not count). "Minutes to quality" is the first point where every check is within ``--tolerance``. One JSON per
(arm, epoch) in ``--workdir``, skipped when present.

A training run that already happened can be scored instead of training again: ``--checkpoints DIR`` reads the full
checkpoints ``checkpoint_epoch=N.pt`` kept in DIR (their EMA weights, as the bundle's ``model.pt``) and the epoch times
from ``--loss_history`` (that run's ``loss_history.csv``); one arm. An epoch whose checkpoint was not kept adds its
minutes but no point; the curve ends where the loss history does.
Train with ``--keep_checkpoints 0`` to keep them all; the all-pair curve in README was scored from busi_downstream.py's
546-pair generator, whose checkpoints were copied aside as they appeared (that run kept only the latest):

    python benchmarks/time_to_quality.py --workdir runs/time_to_quality_546 --arms default --epochs 8 \
        --iterations_per_epoch 250 --checkpoints runs/n546_checkpoints \
        --loss_history runs/busi_downstream/n546/train/loss_history.csv --fid --output time_to_quality_546.json
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.bundle_runner import run_bundle  # noqa: E402

CONFIGS = REPO / "bundles" / "pig" / "configs"
RESULTS = REPO / "benchmarks" / "results"
CHECKS = ("area_w1", "empty_gap", "mean_gap", "std_gap")


def epoch_record(history: Path, epoch: int) -> tuple[float, float]:
    """(training seconds of ``epoch``, its mean loss) from the trainer's loss history: the median time between
    consecutive iterations times their count, so neither the start-up that one-epoch-per-run repeats (imports, data
    loading) nor a pause (a job stopped while CI ran) is counted. Needs two or more iterations per epoch (main checks
    it)."""
    rows = [r for r in csv.DictReader(history.open()) if int(r["epoch"]) == epoch]
    if len(rows) < 2:
        raise SystemExit(f"{history} holds {len(rows)} iteration(s) of epoch {epoch}; at least 2 are needed.")
    seconds = [float(r["seconds"]) for r in rows]
    step = statistics.median(b - a for a, b in zip(seconds, seconds[1:]))
    return step * len(rows), sum(float(r["loss"]) for r in rows) / len(rows)


def train_epoch(root: Path, epoch: int, overlays: list[Path], data: list[str], args: argparse.Namespace) -> dict:
    """Train the arm up to ``epoch`` (the bundle resumes from its last checkpoint); the weights to sample from."""
    outputs = ["--ckpt_dir", str(root / "models"), "--output_dir", str(root / "train")]
    schedule = ["--iterations_per_epoch", str(args.iterations_per_epoch), "--max_epochs", str(epoch)]
    schedule += ["--preview_interval", "0", "--seed", "0"]
    run_bundle([CONFIGS / "train.json", *overlays], *data, *outputs, *schedule)
    seconds, loss = epoch_record(root / "train" / "loss_history.csv", epoch)
    return {"ckpt_dir": root / "models", "ckpt_path": root / "models" / "model.pt", "seconds": seconds, "loss": loss}


def kept_epoch(root: Path, epoch: int, args: argparse.Namespace) -> dict | None:
    """The EMA weights of a kept full checkpoint of ``epoch``, saved as a bare state dict like the bundle's
    ``model.pt``; only the epoch's time and loss when its checkpoint was not kept, None when the run never trained it.
    """
    import torch

    history = Path(args.loss_history)
    if not any(int(r["epoch"]) == epoch for r in csv.DictReader(history.open())):
        return None
    checkpoint = Path(args.checkpoints) / f"checkpoint_epoch={epoch}.pt"
    if not checkpoint.is_file():
        seconds, loss = epoch_record(history, epoch)
        return {"seconds": seconds, "loss": loss}
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    if "ema" not in state:
        raise SystemExit(f"{checkpoint} holds no 'ema' weights (keys: {sorted(state)}).")
    weights = root / "models" / f"ema_epoch={epoch}.pt"
    weights.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state["ema"], weights.with_suffix(".partial"))
    os.replace(weights.with_suffix(".partial"), weights)
    seconds, loss = epoch_record(history, epoch)
    return {"ckpt_dir": Path(args.checkpoints), "ckpt_path": weights, "seconds": seconds, "loss": loss}


def quality(generated: Path, real: list, num_pairs: int, fid=None) -> dict:
    """DESIGN §5's checks of ``num_pairs`` generated pairs against ``real``; ``fid``: a ``ReferenceFID`` of them."""
    import numpy as np
    from scipy.stats import wasserstein_distance

    from common.metrics import pair_statistics
    from common.writers import PairWriter

    writer = PairWriter.existing(str(generated))
    images, labels = map(np.stack, zip(*(writer.read(i) for i in range(num_pairs))))
    real_images, real_labels = np.stack([p["image"] for p in real]), np.stack([p["label"] for p in real])
    fake, truth = pair_statistics(images, labels), pair_statistics(real_images, real_labels)
    area = lambda labels: (labels.reshape(len(labels), -1) > 0).mean(axis=1)  # noqa: E731
    result = {
        "area_w1": float(wasserstein_distance(area(labels), area(real_labels))),
        "empty_gap": abs(fake["empty_fraction"] - truth["empty_fraction"]),
        "mean_gap": abs(fake["image_mean"] - truth["image_mean"]),
        "std_gap": abs(fake["image_std"] - truth["image_std"]),
        "mask_area_mean": fake["mask_area_mean"],
        "empty_fraction": fake["empty_fraction"],
    }
    if fid is not None:
        result["fid"] = fid(images.astype(np.float32))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="runs/time_to_quality")
    parser.add_argument("--dataset_dir", default=str(REPO.parent / "shared" / "data" / "busi"))
    parser.add_argument("--max_pairs", type=int, default=None, help="few-shot: a seeded subset of the train split")
    parser.add_argument("--arms", nargs="+", default=["default"], help="'default' or name=overlay.json")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--iterations_per_epoch", type=int, default=100)
    parser.add_argument("--num_pairs", type=int, default=64)
    parser.add_argument("--steps", type=int, default=25, help="DDIM steps of the evaluation samples")
    parser.add_argument("--tolerance", type=float, default=0.03, help="every check within this counts as 'quality'")
    parser.add_argument("--fid", action="store_true", help="also FID (needs requirements-fid.txt)")
    parser.add_argument("--summarise_only", action="store_true",
                        help="tabulate the epochs already measured in --workdir (up to --epochs) and train nothing: "
                             "a curve cut short by a time budget is reported as far as it got")  # fmt: skip
    parser.add_argument(
        "--checkpoints",
        default=None,
        help="score the full checkpoints (checkpoint_epoch=N.pt) kept in this folder instead of training",
    )
    parser.add_argument("--loss_history", default=None, help="with --checkpoints: the loss_history.csv of that run")
    parser.add_argument("--output", default="time_to_quality.json", help="result file name in benchmarks/results")
    args = parser.parse_args()
    if args.checkpoints and (not args.loss_history or len(args.arms) != 1):
        parser.error("--checkpoints needs --loss_history and exactly one arm.")
    if args.iterations_per_epoch < 2:
        parser.error("--iterations_per_epoch must be at least 2: an epoch's time is measured between its iterations.")

    from common.data import load_dataset

    work = Path(args.workdir).resolve()
    start = time.perf_counter()
    real = (
        None
        if args.summarise_only
        else load_dataset(args.dataset_dir, split="train", image_size=64, max_pairs=args.max_pairs, seed=0)
    )
    fid = None
    if args.fid and real is not None:  # every point is scored against the same real images: their features once
        import numpy as np

        from common.fid import ReferenceFID

        fid = ReferenceFID(np.stack([p["image"] for p in real]).astype(np.float32))
    data = ["--dataset_dir", args.dataset_dir] + (["--max_pairs", str(args.max_pairs)] if args.max_pairs else [])
    curves: dict[str, list[dict]] = {}
    for arm in args.arms:
        name, _, overlay = arm.partition("=")
        overlays = [Path(overlay).resolve()] if overlay else []  # applied to training and sampling alike
        root, minutes = work / name, 0.0
        curves[name] = []
        for epoch in range(1, args.epochs + 1):
            result_file = root / f"epoch_{epoch:03d}.json"
            if args.checkpoints and not result_file.is_file():
                weights = kept_epoch(root, epoch, args)
                if weights is None:
                    print(f"{args.loss_history} has no epoch {epoch}: the curve stops there.")
                    break
                if "ckpt_path" not in weights:  # trained, but its checkpoint was not kept: its minutes still count
                    minutes += weights["seconds"] / 60
                    continue
            elif args.summarise_only and not result_file.is_file():
                break
            elif not result_file.is_file():
                weights = train_epoch(root, epoch, overlays, data, args)
            if not result_file.is_file():
                samples = root / f"samples_{epoch:03d}"
                sampling = ["--num_pairs", str(args.num_pairs), "--num_inference_steps", str(args.steps)]
                sampling += ["--sampling_method", "ddim"]
                outputs = ["--ckpt_dir", str(weights["ckpt_dir"]), "--ckpt_path", str(weights["ckpt_path"])]
                run_bundle([CONFIGS / "inference.json", *overlays], *outputs, "--output_dir", str(samples), *sampling)
                row = {"epoch": epoch, "iterations": epoch * args.iterations_per_epoch,
                       "epoch_seconds": weights["seconds"], "loss": weights["loss"],
                       **quality(samples, real, args.num_pairs, fid)}  # fmt: skip
                root.mkdir(parents=True, exist_ok=True)
                tmp = result_file.with_suffix(".partial")
                tmp.write_text(json.dumps(row, indent=1))
                os.replace(tmp, result_file)
            row = json.loads(result_file.read_text())
            minutes += row["epoch_seconds"] / 60
            curves[name].append({**row, "minutes": minutes})
            print(name, curves[name][-1], flush=True)

    lines = []
    for name, rows in curves.items():
        if len(rows) < args.epochs:
            lines += [f"(arm {name}: {len(rows)} of {args.epochs} epochs measured)", ""]
        reached = next((r for r in rows if all(r[c] <= args.tolerance for c in CHECKS)), None)
        when = f"{reached['minutes']:.1f} min ({reached['iterations']} iterations)" if reached else "not reached"
        lines += [f"## {name}: all checks within {args.tolerance} at {when}", ""]
        columns = ["iterations", "minutes", "loss", *CHECKS, "mask_area_mean", "empty_fraction"]
        columns += ["fid"] if args.fid else []
        lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        for r in rows:
            lines.append(
                "| " + " | ".join(f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c]) for c in columns) + " |"
            )
        lines.append("")
    lines.append(f"wall time of this invocation: {(time.perf_counter() - start) / 60:.1f} min")
    text = "\n".join(lines)
    print(text)
    work.mkdir(parents=True, exist_ok=True)
    (work / "summary.md").write_text(text + "\n")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / args.output).write_text(json.dumps({"settings": vars(args), "curves": curves}, indent=2))


if __name__ == "__main__":
    main()
