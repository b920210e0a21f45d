"""Does adding PIG's generated pairs help a segmenter? One resumable command, on BUSI or on your own dataset.

    OMP_NUM_THREADS=2 python benchmarks/busi_downstream.py --workdir runs/busi_v2 --regimes 50 --subsets 0 1 \
        --seeds 0 1 --generator_iterations 2000 --checkpoints 250 500 1000 --seg_iterations 1000

For each few-shot regime n and each training subset s (a seeded subset of the train split: the generator and the
segmenter see the same n real pairs, never val or test):
  1. train PIG on those n pairs only (bundles/pig/configs/train.json, its current defaults, seed s), keeping every
     epoch checkpoint, and generate 4n pairs with the bundle's default sampler;
  2. generate 2n baseline pairs: PIG's image model fed the n REAL masks (configs/mask_conditioned.json);
  3. with --checkpoints: generate 4n pairs from the EMA weights of each earlier checkpoint too (time to a useful
     generator: those rows say how many CPU minutes of generator training the pairs need before they help);
  4. train a MONAI UNet (common.evaluation) per condition x --seeds, tested on the test split; besides the paper's
     rows, two levers on real + augmentation + PIG 2x: a quarter of each batch synthetic ('share25'), and the
     synthetic pairs left unaugmented ('noaugsyn'); and the Dice filter ('PIG-filtered', eta calibrated on the
     validation split, see filtered_set);
  5. score each set before any segmenter uses it (pair_quality.json): mask area, components, solidity, compactness,
     image statistics against the real subset's, and the alignment Dice of the real-only segmenter.
The table pools the subsets: every condition has seeds x subsets runs, compared with 'real' (and the augmentation
rows with 'real+augment') run by run, matched by seed and subset, with a 95% interval; Dice over lesion images and
over all images (both-empty = 1), and the share of empty-mask test images predicted empty.
Optionally (--fid) FID against the test images of PIG images vs an unconditional image-only model of the same U-Net
(configs/unconditional.json) sampled with the same number of DDIM steps, for the largest regime and subset 0.

Every stage is skipped when its output exists (generator checkpoints, complete pair folders, one JSON per segmenter
run), so a killed benchmark resumes. Results: ``benchmarks/results/downstream_<dataset folder name>.json`` (BUSI:
``downstream_busi.json``; another --dataset_dir gets its own file) and ``<workdir>/summary.md``. Costs on 2 CPU cores
(64x64): ~1-1.5 s per generator iteration alone, ~1 min per segmenter run of 1000 iterations.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.bundle_runner import bundle_parser, run_bundle  # noqa: E402
from common.evaluation.report import aggregate, paired_differences  # noqa: E402

CONFIGS = REPO / "bundles" / "pig" / "configs"
KEEP_ALL = REPO / "benchmarks" / "configs" / "keep_all_checkpoints.json"
RESULTS = REPO / "benchmarks" / "results"


def bundle(configs: list[str | Path], *overrides: str) -> None:
    run_bundle([c if isinstance(c, Path) else CONFIGS / c for c in configs], *overrides)


def complete(folder: Path, count: int) -> bool:
    datalist = folder / "datalist.json"
    return datalist.is_file() and len(json.loads(datalist.read_text())["training"]) >= count


def sampling(args: argparse.Namespace) -> list[str]:
    """The bundle's default sampler, or DDIM with --sampling_steps (as the FID baseline samples)."""
    if not args.sampling_steps:
        return []
    return ["--num_inference_steps", str(args.sampling_steps), "--sampling_method", "ddim"]


def checkpoint_weights(models: Path, iterations: int, args: argparse.Namespace) -> Path:
    """A ckpt_dir holding what training would have shipped after ``iterations``: the EMA weights of that epoch's
    checkpoint as model.pt, beside the run's training config and data summary."""
    epoch = iterations // args.iterations_per_epoch
    folder = models.parent / f"models_{iterations}it"
    if not (folder / "model.pt").is_file():
        import torch

        source = models / f"checkpoint_epoch={epoch}.pt"
        if not source.is_file():
            raise SystemExit(f"no checkpoint for {iterations} iterations ({source}); train with keep_all_checkpoints.")
        folder.mkdir(parents=True, exist_ok=True)
        for name in ("training_config.json", "training_data.json"):
            shutil.copy2(models / name, folder / name)
        ema = torch.load(source, map_location="cpu", weights_only=True)["ema"]
        torch.save(ema, folder / "model.partial.pt")
        (folder / "model.partial.pt").replace(folder / "model.pt")
    return folder


def generators(regime: int, subset: int, work: Path, args: argparse.Namespace) -> dict[str, Path]:
    """Train PIG on the subset's real pairs and write its pairs, the mask-conditioned baseline's and each
    checkpoint's."""
    models = work / "models"
    if not (models / "model.pt").is_file():
        epochs = max(1, round(args.generator_iterations / args.iterations_per_epoch))
        bundle(
            ["train.json", KEEP_ALL],
            *("--dataset_dir", args.dataset_dir, "--max_pairs", str(regime), "--seed", str(subset)),
            *("--output_dir", str(work / "train"), "--ckpt_dir", str(models)),
            *("--iterations_per_epoch", str(args.iterations_per_epoch), "--max_epochs", str(epochs)),
            *("--preview_interval", "4", "--progress", "false"),
        )
    folders = {"pig": work / "pig", "mask_conditioned": work / "mask_conditioned"}
    common = ["--seed", str(subset), "--progress", "false", *sampling(args)]
    if not complete(folders["pig"], 4 * regime):
        bundle(["inference.json"], "--ckpt_dir", str(models), "--output_dir", str(folders["pig"]),
               "--num_pairs", str(4 * regime), *common)  # fmt: skip
    if not complete(folders["mask_conditioned"], 2 * regime):
        bundle(
            ["inference.json", "mask_conditioned.json"],
            *("--dataset_dir", args.dataset_dir, "--max_pairs", str(regime), "--ckpt_dir", str(models)),
            *("--output_dir", str(folders["mask_conditioned"]), "--num_pairs", str(2 * regime), *common),
        )
    for iterations in args.checkpoints:
        folder = work / f"pig_{iterations}it"
        if not complete(folder, 4 * regime):
            weights = checkpoint_weights(models, iterations, args)
            bundle(["inference.json"], "--ckpt_dir", str(weights), "--output_dir", str(folder),
                   "--num_pairs", str(4 * regime), *common)  # fmt: skip
        folders[f"pig_{iterations}it"] = folder
    return folders


def conditions(regime: int, folders: dict[str, Path], checkpoints: list[int]) -> dict[str, dict]:
    pig, masked = str(folders["pig"]), str(folders["mask_conditioned"])
    result = {
        "real": {"real": True, "augment": False, "synthetic": []},
        "real+augment": {"real": True, "augment": True, "synthetic": []},
        "real+PIG-4x": {"real": True, "augment": False, "synthetic": [pig], "max_synthetic": 4 * regime},
        "real+maskcond-2x": {"real": True, "augment": False, "synthetic": [masked], "max_synthetic": 2 * regime},
        "real+augment+PIG-2x": {"real": True, "augment": True, "synthetic": [pig], "max_synthetic": 2 * regime},
    }
    # issue 27's levers on aug + PIG 2x: a fixed quarter of each batch synthetic, and the synthetic pairs not augmented
    both = {"real": True, "augment": True, "synthetic": [pig], "max_synthetic": 2 * regime}
    result["real+augment+PIG-2x-share25"] = {**both, "synthetic_share": 0.25}
    result["real+augment+PIG-2x-noaugsyn"] = {**both, "augment_synthetic": False}
    for iterations in checkpoints:
        early = str(folders[f"pig_{iterations}it"])
        result[f"real+PIG-4x-{iterations}it"] = {
            "real": True, "augment": False, "synthetic": [early], "max_synthetic": 4 * regime}  # fmt: skip
        result[f"real+augment+PIG-2x-{iterations}it"] = {
            "real": True, "augment": True, "synthetic": [early], "max_synthetic": 2 * regime}  # fmt: skip
    return result


def pair_quality(regime: int, subset: int, work: Path, folders: dict[str, Path], args: argparse.Namespace) -> dict:
    """What a set of pairs is worth before a segmenter trains on it: mask shape and image statistics beside the real
    subset's, and the alignment Dice of the real-only segmenter (first seed) on the generated images against their
    generated masks (the real pairs' own score beside it: what a perfect set would get)."""
    out = work / "pair_quality.json"
    if out.is_file():
        return json.loads(out.read_text())
    from common.data import load_dataset
    from common.evaluation.segmenter import load_segmenter
    from common.metrics import alignment_dice, pair_statistics
    from common.writers import PairWriter

    segmenter = load_segmenter(work / "evaluation" / "runs" / f"real__seed{args.seeds[0]}.pt")
    real = load_dataset(args.dataset_dir, split="train", image_size=64, max_pairs=regime, seed=subset)
    sets = {"real": ([p["image"] for p in real], [p["label"] for p in real])}
    for name, folder in folders.items():
        writer = PairWriter.existing(str(folder))
        count = len(json.loads((folder / "datalist.json").read_text())["training"])
        images, labels = zip(*(writer.read(i) for i in range(count)))
        sets[name] = (list(images), list(labels))
    result = {}
    for name, (images, labels) in sets.items():
        scores = {**pair_statistics(images, labels), **alignment_dice(segmenter, images, labels)}
        result[name] = {k: None if v != v else v for k, v in scores.items()}  # NaN (undefined) -> null
    out.write_text(json.dumps(result, indent=2))
    return result


def filtered_set(subset: int, work: Path, folders: dict[str, Path], args: argparse.Namespace) -> Path | None:
    """The PIG 4n set through the shared Dice filter (common.filtering, DiffuseExpand's Stage IV) with the real-only
    segmenter (first seed). eta is calibrated on the VALIDATION split only: the --filter_quantile quantile of that
    segmenter's Dice loss on the real validation pairs, so a generated pair passes when the segmenter agrees with its
    mask as well as it does with most real masks. None when the filter keeps fewer than 10 pairs."""
    out = work / "pig_filtered"
    report_file = out / "filter_report.json"
    if not report_file.is_file():
        import numpy as np

        from common.data import load_dataset
        from common.evaluation.conditions import load_synthetic
        from common.evaluation.segmenter import load_segmenter, predict
        from common.filtering import filter_pairs, hard_dice_loss

        segmenter = load_segmenter(work / "evaluation" / "runs" / f"real__seed{args.seeds[0]}.pt")
        val = load_dataset(args.dataset_dir, split="val", image_size=64)
        losses = hard_dice_loss(predict(segmenter, [p["image"] for p in val]), np.stack([p["label"] for p in val]))
        eta = max(float(np.quantile(losses, args.filter_quantile)), 1e-3)
        report = filter_pairs(load_synthetic(str(folders["pig"]), 64, 2), segmenter, str(out), eta=eta,
                              source=str(folders["pig"]))  # fmt: skip
        report["eta_rule"] = (
            f"quantile {args.filter_quantile} of the real-only segmenter's Dice loss on the {len(val)} real "
            f"validation pairs (subset {subset}, seed {args.seeds[0]})"
        )
        report_file.write_text(json.dumps(report, indent=2))
    report = json.loads(report_file.read_text())
    return out if report["kept"] + report["relabelled"] >= 10 else None


def minutes_of_training(work: Path, iterations: int) -> float | None:
    """CPU minutes the generator had trained after ``iterations`` (its loss history's clock)."""
    history = work / "train" / "loss_history.csv"
    if not history.is_file():
        return None
    rows = [line.split(",") for line in history.read_text().splitlines()[1:]]
    done = [float(r[3]) for r in rows if int(r[0]) <= iterations]
    return round(done[-1] / 60, 1) if done else None


def fid_comparison(work: Path, args: argparse.Namespace, regime: int) -> dict[str, float]:
    """FID and KID (Inception, offline) to the test images: PIG vs an unconditional model at equal DDIM steps."""
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
            *("--dataset_dir", args.dataset_dir, "--max_pairs", str(regime), "--seed", "0"),
            *("--output_dir", str(work / "train_unconditional"), "--ckpt_dir", str(models)),
            *("--iterations_per_epoch", str(args.iterations_per_epoch), "--max_epochs", str(epochs)),
        )
    parser = bundle_parser("pig", "train.json", "unconditional.json")
    net = load_weights(parser.get_parsed_content("network_def"), str(models / "model.pt")).eval()
    steps = args.sampling_steps or 20
    sampler = ImageSampler(parser.get_parsed_content("noise_scheduler"), steps)
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
    result = {  # FID and KID with the sample sizes they rest on (FID is biased upwards at a few hundred images)
        "sampling_steps": steps,
        "pig": fid_to_test.scores(pig),
        "unconditional_ddim": fid_to_test.scores(uncond.numpy()),
    }
    out.write_text(json.dumps(result, indent=2))
    return result


def pooled(results_per_subset: list[dict]) -> dict:
    """One table over every subset's runs: aggregate, and paired differences to 'real' and to 'real+augment'."""
    runs = [run for results in results_per_subset for run in results["runs"]]
    return {
        "runs": runs,
        "aggregate": aggregate(runs),
        "paired_vs_real": paired_differences(runs, "real"),
        "paired_vs_augment": paired_differences(runs, "real+augment"),
    }


def _cell(stats: dict | None, digits: int = 3) -> str:
    if not stats or stats.get("mean") is None:
        return "-"
    return f"{stats['mean']:.{digits}f}" + (f" ± {stats['std']:.{digits}f}" if stats.get("std") is not None else "")


def _delta(stats: dict | None) -> str:
    if not stats or stats.get("mean") is None:
        return "-"
    ci = stats.get("ci95")
    return f"{stats['mean']:+.3f}" + (f" [{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else "")


def table(regimes: dict[str, dict]) -> str:
    lines = [
        "| regime | condition | runs | Dice lesion images | Dice all images | empty GT predicted empty | "
        "Δ lesion vs reference [95% CI] | Δ all vs reference [95% CI] | reference |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for regime, result in regimes.items():
        for name, agg in result["aggregate"].items():
            reference = "real+augment" if "augment" in name and name != "real+augment" else "real"
            paired = result["paired_vs_augment" if reference == "real+augment" else "paired_vs_real"].get(name, {})
            metrics = agg["metrics"]
            empty = metrics.get("empty_gt_pred_empty_fraction")
            lines.append(
                f"| {regime} | {name} | {agg['runs']} | {_cell(metrics.get('dice'))} | "
                f"{_cell(metrics.get('dice_all'))} | {_cell(empty, 2)} | {_delta(paired.get('dice'))} | "
                f"{_delta(paired.get('dice_all'))} | {'-' if name == 'real' else reference} |"
            )
    return "\n".join(lines)


QUALITY = [("mask_area_mean", "mask area", 3), ("empty_fraction", "empty masks", 2),
           ("components_mean_nonempty", "components", 2), ("solidity_mean_nonempty", "solidity", 2),
           ("compactness_mean_nonempty", "compactness", 2), ("image_std", "image std", 3),
           ("dice_mean", "alignment Dice", 3), ("empty_predicted_empty", "empty found empty", 2)]  # fmt: skip


def quality_table(regimes: dict[str, dict]) -> str:
    """Pair quality per generated set, mean over the training subsets (the real subset's own row first)."""
    lines = ["| regime | set | " + " | ".join(q[1] for q in QUALITY) + " | kept by the filter |",
             "|---|---|" + "---|" * (len(QUALITY) + 1)]  # fmt: skip
    for regime, result in regimes.items():
        per_subset = list(result.get("pair_quality", {}).values())
        if not per_subset:
            continue
        for name in [n for n in per_subset[0] if n != "filter"]:
            cells = []
            for key, _, digits in QUALITY:
                values = [q[name][key] for q in per_subset if q.get(name, {}).get(key) is not None]
                cells.append(f"{sum(values) / len(values):.{digits}f}" if values else "-")
            kept = [q["filter"] for q in per_subset if "filter" in q] if name == "pig" else []
            filtered = ", ".join(f"{f['kept']}/{f['total']} (eta {f['eta']:.2f})" for f in kept) or "-"
            lines.append(f"| {regime} | {name} | " + " | ".join(cells) + f" | {filtered} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="runs/busi_downstream")
    parser.add_argument("--dataset_dir", default=str(REPO.parent / "shared" / "data" / "busi"))
    parser.add_argument("--regimes", type=int, nargs="+", default=[50, 100])
    parser.add_argument("--subsets", type=int, nargs="+", default=[0, 1], help="training subsets (= generator seeds)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="segmenter seeds per subset")
    parser.add_argument("--generator_iterations", type=int, default=2000)
    parser.add_argument("--iterations_per_epoch", type=int, default=250)
    parser.add_argument("--checkpoints", type=int, nargs="*", default=[], help="earlier generator iterations to score")
    parser.add_argument("--sampling_steps", type=int, default=None, help="DDIM steps (default: the bundle's sampler)")
    parser.add_argument("--seg_iterations", type=int, default=1000)
    parser.add_argument("--filter_quantile", type=float, default=0.75,
                        help="the Dice filter lever: eta = this quantile of the real-only segmenter's Dice loss on "
                        "the real validation pairs (0: no filter row)")  # fmt: skip
    parser.add_argument("--fid", action="store_true", help="also FID of PIG vs unconditional DDIM (largest regime)")
    parser.add_argument("--fid_images", type=int, default=256)
    args = parser.parse_args()
    from common.evaluation.protocol import run_segmentation_evaluation

    bad = [c for c in args.checkpoints if c % args.iterations_per_epoch or c >= args.generator_iterations]
    if bad:
        parser.error(f"--checkpoints {bad}: multiples of --iterations_per_epoch below --generator_iterations")
    root = Path(args.workdir).resolve()
    dataset = Path(args.dataset_dir).resolve().name
    results_file = RESULTS / f"downstream_{dataset}.json"
    start = time.perf_counter()
    previous = json.loads(results_file.read_text()) if results_file.is_file() else {}
    regimes = dict(previous.get("regimes", {}))
    for regime in args.regimes:
        per_subset, minutes, quality = [], {}, {}
        for subset in args.subsets:
            work = root / f"n{regime}" / f"subset{subset}"
            folders = generators(regime, subset, work, args)
            per_subset.append(
                run_segmentation_evaluation(
                    real={"dataset_dir": args.dataset_dir},
                    conditions=conditions(regime, folders, args.checkpoints),
                    seeds=args.seeds,
                    iterations=args.seg_iterations,
                    output_dir=str(work / "evaluation"),
                    max_pairs=regime,
                    subset_seed=subset,
                    baseline="real",
                    save_models=True,
                )
            )
            quality[subset] = pair_quality(regime, subset, work, folders, args)
            filtered = filtered_set(subset, work, folders, args) if args.filter_quantile else None
            if filtered is not None:  # the filter lever: a second pass trains only the new condition
                extra = conditions(regime, folders, args.checkpoints)
                kept = {"real": True, "augment": True, "synthetic": [str(filtered)], "max_synthetic": 2 * regime}
                extra["real+augment+PIG-filtered"] = kept
                per_subset[-1] = run_segmentation_evaluation(
                    real={"dataset_dir": args.dataset_dir}, conditions=extra, seeds=args.seeds,
                    iterations=args.seg_iterations, output_dir=str(work / "evaluation"), max_pairs=regime,
                    subset_seed=subset, baseline="real", save_models=True,
                )  # fmt: skip
                report = json.loads((filtered / "filter_report.json").read_text())
                quality[subset]["filter"] = {k: report[k] for k in ("eta", "eta_rule", "total", "kept", "dropped")}
            scored = [*args.checkpoints, args.generator_iterations]
            minutes[subset] = {it: minutes_of_training(work, it) for it in scored}
        result = pooled(per_subset)
        result["generator_minutes"] = minutes
        result["pair_quality"] = quality
        result["settings"] = {**vars(args), "regimes": [regime]}
        result["protocol"] = per_subset[0]["protocol"]
        result["runs"] = [{k: v for k, v in r.items() if k != "train_real_names"} for r in result["runs"]]
        regimes[str(regime)] = result
    summary = {"dataset": args.dataset_dir, "regimes": dict(sorted(regimes.items(), key=lambda i: int(i[0])))}
    if args.fid:
        summary["fid"] = fid_comparison(root / f"n{max(args.regimes)}" / f"subset{args.subsets[0]}", args,
                                        max(args.regimes))  # fmt: skip
    elif "fid" in previous:
        summary["fid"] = previous["fid"]
    text = table(summary["regimes"])
    text += "\n\nWhat each set is worth before training (mean over subsets; alignment Dice: the real-only segmenter "
    text += "on the generated image against its generated mask; on the real row it is its own training pairs):\n\n"
    text += quality_table(summary["regimes"])
    text += "\n\nGenerator CPU minutes at each scored iteration count (per subset): "
    text += json.dumps({r: v["generator_minutes"] for r, v in summary["regimes"].items()})
    if "fid" in summary:
        text += "\n\nFID to the test images: " + json.dumps(summary["fid"])
    text += f"\n\nwall time of this invocation: {(time.perf_counter() - start) / 60:.1f} min"
    root.mkdir(parents=True, exist_ok=True)
    (root / "summary.md").write_text(text + "\n")
    RESULTS.mkdir(parents=True, exist_ok=True)
    partial = results_file.with_suffix(".partial")
    partial.write_text(json.dumps(summary, indent=2, default=str))
    partial.replace(results_file)
    print(text)


if __name__ == "__main__":
    main()
