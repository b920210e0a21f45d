"""DiffuseExpand ablation at CPU scale, in the layout of the paper's Table 1 (issue 4's benchmark). Resumable.

    OMP_NUM_THREADS=2 python benchmarks/diffuse_expand_ablation.py --workdir runs/diffuse_expand_ablation

On one dataset (default ../shared/data/cxr_lungs, the paper's COVID-19 X-ray collection; train split only):
  1. Stage I  (train_dpm.json) and Stage II (train_segmenter.json) on the real training pairs;
  2. Stage III (inference.json) once per guidance setting, the same seeds for all: CF (classifier-free only, no
     segmenter), CF+CG at tau 1, 1/2, 1/3 (s = 1);
  3. Stage IV (filter.json) on each CF+CG set: CF+CG+CS at tau 1, 1/2, 1/3, for each of --etas (default the paper's
     0.065; a set the filter empties is reported with its count and left out of FID and Dice);
  4. FID of every set against the real training images (offline Inception, requirements-fid.txt), how many pairs the
     filter kept, and the downstream Dice (common.evaluation: MONAI UNet on real + each set, --seeds, test split).

Every stage is skipped when its output exists, so a killed run resumes. Results: <workdir>/summary.md and
benchmarks/results/diffuse_expand_ablation.json. ``--extra_config`` adds an overlay to every stage (tests use a tiny
one to smoke-test the script).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from fractions import Fraction
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.bundle_runner import run_bundle  # noqa: E402

CONFIGS = REPO / "bundles" / "diffuse_expand" / "configs"
RESULTS = REPO / "benchmarks" / "results"
TAUS = ("1", "1/2", "1/3")
PAPER_ETA = 0.065


def tau_name(tau: str) -> str:
    return "tau" + tau.replace("/", "over")


def stage(config: str, extra: list[str], *overrides: str) -> None:
    run_bundle([CONFIGS / config, *extra], *overrides)


def complete(folder: Path, count: int | None = None) -> bool:
    datalist = folder / "datalist.json"
    if not datalist.is_file():
        return False
    return count is None or len(json.loads(datalist.read_text())["training"]) >= count


def filtered_name(tau: str, eta: float) -> str:
    """CF+CG+CS_tau1 at the paper's eta, CF+CG+CS_tau1_eta0.3 at another."""
    return f"CF+CG+CS_{tau_name(tau)}" + ("" if eta == PAPER_ETA else f"_eta{eta:g}")


def settings(guidance_loss: str = "structure", guide_mask_phase: bool = False) -> dict[str, dict[str, str]]:
    """Condition name -> inference overrides (CF: no segmenter; CF+CG: s = 1 with temperature tau, the mask term of
    ``guidance_loss``, the mask phase guided or not)."""
    out = {"CF": {"classifier_guidance": "False"}}
    for tau in TAUS:
        out[f"CF+CG_{tau_name(tau)}"] = {
            "classifier_guidance": "True",
            "temperature": str(float(Fraction(tau))),
            "guidance_loss": guidance_loss,
            "guide_mask_phase": str(guide_mask_phase),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="runs/diffuse_expand_ablation")
    parser.add_argument("--dataset_dir", default=str(REPO.parent / "shared" / "data" / "cxr_lungs"))
    parser.add_argument("--dpm_iterations", type=int, default=3000)
    parser.add_argument("--segmenter_iterations", type=int, default=1000)
    parser.add_argument("--iterations_per_epoch", type=int, default=250)
    parser.add_argument("--num_pairs", type=int, default=138, help="pairs per set (default: 2x the 69 train pairs)")
    parser.add_argument("--sampling_steps", type=int, default=20)
    parser.add_argument(
        "--etas",
        type=float,
        nargs="+",
        default=[PAPER_ETA],
        help="Stage IV thresholds: one CF+CG+CS row per tau and eta (the paper's 0.065 can keep nothing at CPU scale)",
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--seg_iterations", type=int, default=1000)
    parser.add_argument(
        "--guidance_loss",
        default="structure",
        choices=["structure", "pixel_sum"],
        help="the mask term of classifier guidance (the committed results before 0.6.0: pixel_sum)",
    )
    parser.add_argument("--guide_mask_phase", action="store_true", help="also guide the mask phase (before 0.6.0)")
    parser.add_argument("--extra_config", nargs="*", default=[])
    parser.add_argument("--no_fid", action="store_true")
    args = parser.parse_args()
    root = Path(args.workdir).resolve()
    extra = [str(Path(p).resolve()) for p in args.extra_config]
    data = ["--dataset_dir", args.dataset_dir]
    start = time.perf_counter()

    models = root / "models"
    if not (models / "dpm" / "model.pt").is_file():
        epochs = max(1, round(args.dpm_iterations / args.iterations_per_epoch))
        stage(
            "train_dpm.json",
            extra,
            *data,
            "--ckpt_dir",
            str(models / "dpm"),
            "--output_dir",
            str(root / "train_dpm"),
            "--iterations_per_epoch",
            str(args.iterations_per_epoch),
            "--max_epochs",
            str(epochs),
        )
    if not (models / "segmenter" / "model.pt").is_file():
        epochs = max(1, round(args.segmenter_iterations / args.iterations_per_epoch))
        stage(
            "train_segmenter.json",
            extra,
            *data,
            "--ckpt_dir",
            str(models / "segmenter"),
            "--output_dir",
            str(root / "train_segmenter"),
            "--segmenter_iterations_per_epoch",
            str(args.iterations_per_epoch),
            "--segmenter_max_epochs",
            str(epochs),
        )

    folders: dict[str, Path] = {}
    for condition, overrides in settings(args.guidance_loss, args.guide_mask_phase).items():
        out = root / "sets" / condition
        if not complete(out, args.num_pairs):
            flat = [x for key, value in overrides.items() for x in (f"--{key}", value)]
            stage(
                "inference.json",
                extra,
                "--ckpt_dir",
                str(models / "dpm"),
                "--segmenter_ckpt_path",
                str(models / "segmenter" / "model.pt"),
                "--output_dir",
                str(out),
                "--num_pairs",
                str(args.num_pairs),
                "--num_inference_steps",
                str(args.sampling_steps),
                *flat,
            )
        folders[condition] = out
    for tau, eta in ((tau, eta) for eta in args.etas for tau in TAUS):
        source = folders[f"CF+CG_{tau_name(tau)}"]
        out = root / "sets" / filtered_name(tau, eta)
        if not (out / "filter_report.json").is_file():
            stage(
                "filter.json",
                extra,
                *data,
                "--generated_dir",
                str(source),
                "--output_dir",
                str(out),
                "--filter_segmenter_path",
                str(models / "filter_segmenter.pt"),
                "--eta",
                str(eta),
            )
        folders[out.name] = out

    summary = {"settings": vars(args), "sets": {}}
    from common.data import load_dataset
    from common.evaluation.conditions import load_synthetic
    from common.evaluation.protocol import run_segmentation_evaluation

    real = load_dataset(args.dataset_dir, split="train", image_size=64)
    fid_to_real = None  # every set against the same real images: their features once, when a set needs them
    for condition, folder in folders.items():
        entry: dict = {"folder": str(folder)}
        report = folder / "filter_report.json"
        if report.is_file():
            stats = json.loads(report.read_text())
            entry["kept"] = f"{stats['kept']}/{stats['total']}"
        if complete(folder) and not args.no_fid:
            fid_file = folder / "fid.json"
            if not fid_file.is_file():
                from common.fid import ReferenceFID

                fid_to_real = fid_to_real or ReferenceFID([p["image"] for p in real])
                images = [p["image"] for p in load_synthetic(folder, 64, 2)]
                fid_file.write_text(json.dumps({"fid": fid_to_real(images)}))
            entry["fid_vs_real_train"] = json.loads(fid_file.read_text())["fid"]
        summary["sets"][condition] = entry

    conditions = {"origin": {"real": True, "augment": False, "synthetic": []}}
    for condition, folder in folders.items():
        if complete(folder):
            conditions[condition] = {"real": True, "augment": False, "synthetic": [str(folder)]}
    summary["segmentation"] = run_segmentation_evaluation(
        real={"dataset_dir": args.dataset_dir},
        conditions=conditions,
        seeds=args.seeds,
        iterations=args.seg_iterations,
        output_dir=str(root / "evaluation"),
        baseline="origin",
    )

    aggregate = summary["segmentation"]["aggregate"]
    lines = ["| condition | pairs kept | FID vs real train | Dice (test, mean ± std) | HD95 |", "|---|---|---|---|---|"]
    for condition in ["origin", *folders]:
        entry = summary["sets"].get(condition, {})
        metrics = aggregate.get(condition, {}).get("metrics", {})
        dice, hd = metrics.get("dice", {}), metrics.get("hd95", {})
        fid = entry.get("fid_vs_real_train")
        dice_cell = "-" if dice.get("mean") is None else f"{dice['mean']:.3f} ± {dice.get('std') or 0:.3f}"
        hd_cell = "-" if hd.get("mean") is None else f"{hd['mean']:.2f}"
        fid_cell = "-" if fid is None else f"{fid:.1f}"
        lines.append(f"| {condition} | {entry.get('kept', '-')} | {fid_cell} | {dice_cell} | {hd_cell} |")
    text = "\n".join(lines) + f"\n\nwall time of this invocation: {(time.perf_counter() - start) / 60:.1f} min\n"
    (root / "summary.md").write_text(text)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "diffuse_expand_ablation.json").write_text(json.dumps(summary, indent=2, default=str))
    print(text)


if __name__ == "__main__":
    main()
