"""PIG on BUSI: does adding generated pairs help a segmenter? One resumable command (issue 3's benchmark).

    OMP_NUM_THREADS=2 python benchmarks/busi_downstream.py --workdir runs/busi_downstream --regimes 50 100 546

For each few-shot regime n (a seeded subset of the BUSI train split; seed 0, the same subset for the generator and the
segmenter, never val or test):
  1. train PIG on those n pairs only (bundles/pig/configs/train.json) and generate 4n pairs;
  2. generate 2n baseline pairs: PIG's image model fed the n REAL masks (configs/mask_conditioned.json);
  3. train a MONAI UNet (common.evaluation) on real / real+augment / real+PIG 1x, 2x, 4x / real+mask-conditioned 2x /
     real+augment+PIG 2x, over --seeds, and test on the BUSI test split.
Optionally (--fid) FID against the BUSI test images of PIG images vs an unconditional image-only model of the same
U-Net (configs/unconditional.json) sampled with the same number of DDIM steps, for the largest regime.

Every stage is skipped when its output exists (generator checkpoints, complete pair folders, one JSON per segmenter
run), so a killed benchmark resumes. ``<workdir>/summary.md`` and ``benchmarks/results/busi_downstream.json`` hold the
table. Costs on 2 CPU cores (64x64): ~3 s per generator iteration with the current PIG default (2.9-3.1 s in the
100-pair run, 3.1-3.3 s in the 546-pair one), ~1.5 min per segmenter run of 1500 iterations.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.bundle_runner import bundle_parser, run_bundle  # noqa: E402
from common.evaluation.protocol import run_segmentation_evaluation  # noqa: E402

CONFIGS = REPO / "bundles" / "pig" / "configs"
RESULTS = REPO / "benchmarks" / "results"
REPORTED = ("dice", "iou", "precision", "recall", "hd95", "assd")


def bundle(configs: list[str], *overrides: str) -> None:
    run_bundle([CONFIGS / c for c in configs], *overrides)


def complete(folder: Path, count: int) -> bool:
    datalist = folder / "datalist.json"
    return datalist.is_file() and len(json.loads(datalist.read_text())["training"]) >= count


def generators(regime: int, work: Path, args: argparse.Namespace) -> dict[str, Path]:
    """Train PIG on the regime's real pairs and write its pairs and the mask-conditioned baseline's."""
    models = work / "models"
    common = ["--ckpt_dir", str(models), "--seed", "0"]
    if not (models / "model.pt").is_file():
        epochs = max(1, round(args.generator_iterations / args.iterations_per_epoch))
        bundle(
            ["train.json"],
            "--dataset_dir",
            args.dataset_dir,
            "--max_pairs",
            str(regime),
            "--output_dir",
            str(work / "train"),
            "--iterations_per_epoch",
            str(args.iterations_per_epoch),
            "--max_epochs",
            str(epochs),
            "--preview_interval",
            "4",
            *common,
        )
    pig, masked = work / "pig", work / "mask_conditioned"
    steps = ["--num_inference_steps", str(args.sampling_steps), "--sampling_method", "ddim"]  # as the FID baseline
    if not complete(pig, 4 * regime):
        bundle(["inference.json"], "--output_dir", str(pig), "--num_pairs", str(4 * regime), *steps, *common)
    if not complete(masked, 2 * regime):
        bundle(
            ["inference.json", "mask_conditioned.json"],
            "--dataset_dir",
            args.dataset_dir,
            "--max_pairs",
            str(regime),
            "--output_dir",
            str(masked),
            "--num_pairs",
            str(2 * regime),
            *steps,
            *common,
        )
    return {"pig": pig, "mask_conditioned": masked}


def conditions(regime: int, folders: dict[str, Path]) -> dict[str, dict]:
    pig, masked = str(folders["pig"]), str(folders["mask_conditioned"])
    return {
        "real": {"real": True, "augment": False, "synthetic": []},
        "real+augment": {"real": True, "augment": True, "synthetic": []},
        "real+PIG-1x": {"real": True, "augment": False, "synthetic": [pig], "max_synthetic": regime},
        "real+PIG-2x": {"real": True, "augment": False, "synthetic": [pig], "max_synthetic": 2 * regime},
        "real+PIG-4x": {"real": True, "augment": False, "synthetic": [pig], "max_synthetic": 4 * regime},
        "real+maskcond-2x": {"real": True, "augment": False, "synthetic": [masked], "max_synthetic": 2 * regime},
        "real+augment+PIG-2x": {"real": True, "augment": True, "synthetic": [pig], "max_synthetic": 2 * regime},
    }


def fid_comparison(work: Path, args: argparse.Namespace, regime: int) -> dict[str, float]:
    """FID (Inception, offline) to the BUSI test images: PIG vs an unconditional model at equal DDIM steps."""
    import torch

    from common.checkpoints import load_weights
    from common.data import load_dataset
    from common.fid import ReferenceFID
    from common.sampling import ImageSampler
    from common.writers import PairWriter

    out = work / "fid.json"
    if out.is_file():
        return json.loads(out.read_text())
    models = work / "models_unconditional"
    if not (models / "model.pt").is_file():
        epochs = max(1, round(args.generator_iterations / args.iterations_per_epoch))
        bundle(
            ["train.json", "unconditional.json"],
            "--dataset_dir",
            args.dataset_dir,
            "--max_pairs",
            str(regime),
            "--output_dir",
            str(work / "train_unconditional"),
            "--ckpt_dir",
            str(models),
            "--iterations_per_epoch",
            str(args.iterations_per_epoch),
            "--max_epochs",
            str(epochs),
            "--seed",
            "0",
        )
    parser = bundle_parser("pig", "train.json", "unconditional.json")
    net = load_weights(parser.get_parsed_content("network_def"), str(models / "model.pt")).eval()
    sampler = ImageSampler(parser.get_parsed_content("noise_scheduler"), args.sampling_steps)
    count = args.fid_images
    generator = torch.Generator().manual_seed(1)
    uncond = torch.cat(
        [
            sampler(lambda x, t: net(x, t), torch.randn(16, 1, 64, 64, generator=generator))
            for _ in range((count + 15) // 16)
        ]
    )[:count].clamp(-1, 1)
    writer = PairWriter.existing(str(work / "pig"))
    pig = [writer.read(i)[0] for i in range(count)]
    test = [p["image"] for p in load_dataset(args.dataset_dir, split="test", image_size=64)]
    fid_to_test = ReferenceFID(test)
    result = {
        "images": count,
        "real_test_images": len(test),
        "sampling_steps": args.sampling_steps,
        "fid_pig": fid_to_test(pig),
        "fid_unconditional_ddim": fid_to_test(uncond.numpy()),
    }
    out.write_text(json.dumps(result, indent=2))
    return result


def table(all_results: dict[str, dict]) -> str:
    lines = [
        "| regime | condition | runs | " + " | ".join(REPORTED) + " | empty GT predicted empty |",
        "|---|---|---|" + "---|" * (len(REPORTED) + 1),
    ]
    for regime, results in all_results.items():
        for name, agg in results["aggregate"].items():
            cells = []
            metrics = agg["metrics"]
            for key in REPORTED:
                stats = metrics.get(key) or {}
                mean, std = stats.get("mean"), stats.get("std")
                cells.append("-" if mean is None else f"{mean:.3f} ± {std:.3f}" if std is not None else f"{mean:.3f}")
            empty = (metrics.get("empty_gt_pred_empty_fraction") or {}).get("mean")
            lines.append(
                f"| {regime} | {name} | {agg.get('runs', '-')} | "
                + " | ".join(cells)
                + f" | {'-' if empty is None else f'{empty:.2f}'} |"
            )
    return "\n".join(lines)


def merge_with_committed(path: Path, results: dict[str, dict], settings: dict) -> dict:
    """This invocation's regimes replace the same regimes of ``path``; the others are kept with the settings they ran
    with, so regimes run in different sessions (each one a long job) end up in one table."""
    previous = json.loads(path.read_text()) if path.is_file() else {}
    old_settings = previous.get("settings", {})
    if "regimes" in old_settings:  # one settings block for the whole file (written before regimes were merged)
        old_settings = {regime: old_settings for regime in previous.get("regimes", {})}
    merged = {
        "regimes": {**previous.get("regimes", {}), **results},
        "settings": {**old_settings, **{regime: settings for regime in results}},
    }
    if "fid" in previous:
        merged["fid"] = previous["fid"]
    merged["regimes"] = dict(sorted(merged["regimes"].items(), key=lambda item: int(item[0])))
    return merged


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="runs/busi_downstream")
    parser.add_argument("--dataset_dir", default=str(REPO.parent / "shared" / "data" / "busi"))
    parser.add_argument("--regimes", type=int, nargs="+", default=[50, 100, 546])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--generator_iterations", type=int, default=3000)
    parser.add_argument("--iterations_per_epoch", type=int, default=250)
    parser.add_argument("--sampling_steps", type=int, default=50)
    parser.add_argument("--seg_iterations", type=int, default=1500)
    parser.add_argument("--fid", action="store_true", help="also FID of PIG vs unconditional DDIM (largest regime)")
    parser.add_argument("--fid_images", type=int, default=256)
    args = parser.parse_args()
    root = Path(args.workdir).resolve()
    start = time.perf_counter()
    all_results = {}
    for regime in args.regimes:
        work = root / f"n{regime}"
        folders = generators(regime, work, args)
        all_results[str(regime)] = run_segmentation_evaluation(
            real={"dataset_dir": args.dataset_dir},
            conditions=conditions(regime, folders),
            seeds=args.seeds,
            iterations=args.seg_iterations,
            output_dir=str(work / "evaluation"),
            max_pairs=regime,
            subset_seed=0,
            baseline="real",
        )
    summary = merge_with_committed(RESULTS / "busi_downstream.json", all_results, vars(args))
    if args.fid:
        summary["fid"] = fid_comparison(root / f"n{max(args.regimes)}", args, max(args.regimes))
    text = table(summary["regimes"])
    if args.fid:
        text += "\n\nFID to BUSI test images: " + json.dumps(summary["fid"])
    text += f"\n\nwall time of this invocation: {(time.perf_counter() - start) / 60:.1f} min"
    (root / "summary.md").write_text(text + "\n")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "busi_downstream.json").write_text(json.dumps(summary, indent=2, default=str))
    print(text)


if __name__ == "__main__":
    main()
