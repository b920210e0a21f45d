"""Semantic CT synthesis at CPU scale, in the layout of the paper's Tables 1-2 (issue 5's benchmark). Resumable.

    OMP_NUM_THREADS=2 python benchmarks/ct_semantic_synthesis.py --workdir runs/ct_semantic_synthesis

On ../shared/data/ct_abdomen (TotalSegmentator's public test CT; labels are that model's predictions):
  1. train the conditional, mask-guided and edge-guided DDPMs and the SDM baseline (train.json, hybrid loss) on the
     TRAIN slab of the NIfTI volume, snapshotting the EMA weights at each budget in --iterations (the paper's
     50k/100k/150k study of Table 1, scaled down), and the Pix2Pix baseline (train_pix2pix.json);
  2. synthesize one slice per label map of the TEST slab (contiguous, 2-slice gaps; never random slices) and of the
     DICOM series (cross-scan: another scanner, contrast-enhanced, 0.98 mm in-plane vs 3 mm), with inference.json at
     --sampling_steps learned-variance ancestral steps;
  3. score every method with evaluate.json (FID when the optional Inception weights are installed, PSNR, SSIM,
     per-organ Dice of a MONAI UNet trained on the real train slab; its Dice on the real slices is the 'real' row).

Every stage is skipped when its output exists, so a killed run resumes. Results: <workdir>/summary.md (one table per
budget and test set), <workdir>/eval_*/figure.png, and benchmarks/results/ct_semantic_synthesis.json.
``--extra_config`` adds an overlay to every stage (e.g. ``tests/configs/ct_semantic_tiny.json`` for a smoke run).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.bundle_runner import run_bundle  # noqa: E402

CONFIGS = REPO / "bundles" / "ct_semantic_synthesis" / "configs"
RESULTS = REPO / "benchmarks" / "results"
DIFFUSION = ("conditional", "mask_guided", "edge_guided", "sdm")
NUM_CLASSES = "14"  # classmap.json: background + 13 organs


def stage(config: str, extra: list[str], *overrides: str) -> None:
    run_bundle([CONFIGS / config, *extra], *overrides)


def evaluated_methods(folder: Path) -> set[str]:
    """The methods (and the 'real' ceiling row) an evaluation folder holds results for; empty when none."""
    results = folder / "results.json"
    return set(json.loads(results.read_text())["methods"]) if results.is_file() else set()


def complete(folder: Path) -> bool:
    return (folder / "datalist.json").is_file()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="runs/ct_semantic_synthesis")
    parser.add_argument("--ct_dir", default=str(REPO.parent / "shared" / "data" / "ct_abdomen"))
    parser.add_argument("--methods", nargs="+", default=[*DIFFUSION, "pix2pix"])
    parser.add_argument("--iterations", nargs="+", type=int, default=[500, 1500], help="snapshot budgets")
    parser.add_argument("--iterations_per_epoch", type=int, default=100)
    parser.add_argument("--pix2pix_iterations", type=int, default=1500)
    parser.add_argument("--sampling_steps", type=int, default=50)
    parser.add_argument("--segmenter_iterations", type=int, default=1500)
    parser.add_argument("--fid", action="store_true", help="FID too (needs requirements-fid.txt)")
    parser.add_argument("--extra_config", nargs="*", default=[])
    args = parser.parse_args()
    work = Path(args.workdir).resolve()
    ct = Path(args.ct_dir).resolve()
    extra = [str(Path(p).resolve()) for p in args.extra_config]
    budgets = sorted(set(args.iterations))
    if any(b % args.iterations_per_epoch for b in budgets):
        parser.error("every --iterations budget must be a multiple of --iterations_per_epoch.")
    train_volume = ["--image_path", str(ct / "ct.nii.gz"), "--label_path", str(ct / "labels.nii.gz")]
    dicom = ["--image_path", str(ct / "dicom"), "--label_path", str(ct / "dicom_labels.nii.gz")]
    scans = {"test_slab": [*train_volume, "--split", "test"], "cross_scan": [*dicom, "--split", "all"]}
    common_args = ["--num_classes", NUM_CLASSES]
    start = time.perf_counter()

    folders: dict[tuple[str, int, str], Path] = {}
    for method in [m for m in args.methods if m in DIFFUSION]:
        models = work / method / "models"
        for budget in budgets:
            snapshot = work / method / f"model_it{budget}.pt"
            if not snapshot.is_file():
                stage(
                    "train.json",
                    extra,
                    *train_volume,
                    *common_args,
                    "--conditioning",
                    method,
                    "--ckpt_dir",
                    str(models),
                    "--output_dir",
                    str(work / method / "train"),
                    "--iterations_per_epoch",
                    str(args.iterations_per_epoch),
                    "--max_epochs",
                    str(budget // args.iterations_per_epoch),
                )
                partial = snapshot.with_suffix(".partial")
                shutil.copyfile(models / "model.pt", partial)
                os.replace(partial, snapshot)
            for scan, scan_args in scans.items():
                out = work / method / f"generated_it{budget}_{scan}"
                folders[(method, budget, scan)] = out
                if not complete(out):
                    stage(
                        "inference.json",
                        extra,
                        *scan_args,
                        *common_args,
                        "--conditioning",
                        method,
                        "--ckpt_path",
                        str(snapshot),
                        "--num_inference_steps",
                        str(args.sampling_steps),
                        "--output_dir",
                        str(out),
                    )
    if "pix2pix" in args.methods:
        for scan, scan_args in scans.items():
            out = work / "pix2pix" / f"generated_{scan}"
            folders[("pix2pix", budgets[-1], scan)] = out
            if not complete(out):
                target = dict(zip(scan_args[::2], scan_args[1::2]))
                stage(
                    "train_pix2pix.json",
                    extra,
                    *train_volume,
                    *common_args,
                    "--generate_image_path",
                    target["--image_path"],
                    "--generate_label_path",
                    target["--label_path"],
                    "--generate_split",
                    target["--split"],
                    "--pix2pix_iterations",
                    str(args.pix2pix_iterations),
                    "--generator_path",
                    str(work / "pix2pix" / "generator.pt"),
                    "--output_dir",
                    str(out),
                )

    notes = {
        "test_slab": "Test slab of the training volume (non-contrast abdomen + pelvis, 3 mm).",
        "cross_scan": "Cross-scan: a different scanner and contrast phase (contrast-enhanced upper abdomen DICOM, "
        "0.98 mm in-plane) than the training volume; the organ segmenter is still trained on the training volume.",
    }
    tables, summary = [], {}
    for budget in budgets:
        for scan, scan_args in scans.items():
            methods = {m: str(f) for (m, b, s), f in folders.items() if b == budget and s == scan}
            if not methods:
                continue
            out = work / f"eval_it{budget}_{scan}"
            if evaluated_methods(out) != set(methods) | {"real"}:  # new or changed methods: score again
                stage(
                    "evaluate.json",
                    extra,
                    *scan_args,
                    *common_args,
                    "--segmenter_image_path",
                    str(ct / "ct.nii.gz"),
                    "--segmenter_label_path",
                    str(ct / "labels.nii.gz"),
                    "--segmenter_path",
                    str(work / "organ_segmenter.pt"),
                    "--segmenter_iterations",
                    str(args.segmenter_iterations),
                    "--class_names_path",
                    str(ct / "classmap.json"),
                    "--fid",
                    str(bool(args.fid)),
                    "--note",
                    notes[scan],
                    "--methods",
                    repr(methods),
                    "--output_dir",
                    str(out),
                )
            summary[f"it{budget}_{scan}"] = json.loads((out / "results.json").read_text())
            tables.append(f"### {budget} iterations, {scan}\n\n" + (out / "results.md").read_text())

    settings = {k: v for k, v in vars(args).items() if k not in ("workdir", "ct_dir")}
    header = (
        "# Semantic CT synthesis at CPU scale\n\n"
        f"`python benchmarks/ct_semantic_synthesis.py {' '.join(sys.argv[1:])}`\n\n"
        f"Settings: {json.dumps(settings)}. Wall time of this invocation: {time.perf_counter() - start:.0f} s "
        "(stages found complete were skipped).\n\n"
    )
    (work / "summary.md").write_text(header + "\n".join(tables))
    if not extra:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "ct_semantic_synthesis.json").write_text(
            json.dumps({"settings": settings, "results": summary}, indent=2, default=float)
        )
    print((work / "summary.md").read_text())


if __name__ == "__main__":
    main()
