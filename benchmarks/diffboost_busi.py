"""DiffBoost on BUSI at CPU scale: the paper's Table II layout, the alpha / patch-size ablation of its Fig. 6, and
its Table I (issue 6's benchmark). Resumable.

    OMP_NUM_THREADS=2 python benchmarks/diffboost_busi.py --workdir runs/diffboost_busi

1. pretrain the text + edge generator on the pooled train splits (BUSI, chest X-rays, CT train slab; pretrain.json);
2. fine-tune it on the BUSI train pairs (--max_pairs: a seeded few-shot subset, the same one every later stage uses);
3. generate --augment_ratio versions of every one of those pairs (inference.json);
4. Table II: AttentionUnet on the real pairs alone, with each conventional augmentation, DeepStack, and DiffBoost
   patch mixing (alpha 0.6, patch 16), --seeds, tested on the BUSI test split (evaluate.json);
   --diffboost_with adds rows of DiffBoost combined with named augmentations (not in the paper);
5. ablation: DiffBoost at alpha in --alphas (patch 16) and patch size in --patch_sizes (alpha 0.6);
6. Table I: the pooled val images rebuilt from their Canny edges by the pretrained generator and by Pix2Pix trained
   --pix2pix_iterations on the same pooled train split (table_i.json), MAE / MSE / RMSE / SSIM / MS-SSIM.

Stages are skipped when their outputs exist (generator checkpoints, sources.json, one JSON per segmenter run), so a
rerun with more --seeds trains only the new runs.
Results: <workdir>/summary.md and benchmarks/results/diffboost_busi.json. ``--extra_config`` adds an overlay to
every stage: with tests/configs/diffboost_tiny.json and tiny budgets it is a smoke run of about a minute.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.bundle_runner import run_bundle  # noqa: E402

CONFIGS = REPO / "bundles" / "diffboost" / "configs"
RESULTS = REPO / "benchmarks" / "results"


def stage(configs: list[str], extra: list[str], *overrides: str) -> None:
    run_bundle([*(CONFIGS / c for c in configs), *extra], *overrides)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="runs/diffboost_busi")
    parser.add_argument("--data_root", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--max_pairs", type=int, default=None, help="few-shot subset of the BUSI train split")
    parser.add_argument("--pretrain_iterations", type=int, default=1000)
    parser.add_argument("--finetune_iterations", type=int, default=1000)
    parser.add_argument("--iterations_per_epoch", type=int, default=250)
    parser.add_argument("--augment_ratio", type=int, default=4)
    parser.add_argument("--sampling_steps", type=int, default=25)
    parser.add_argument("--seg_iterations", type=int, default=1500)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--ablation_seeds", type=int, nargs="+", default=None, help="default: --seeds")
    parser.add_argument("--network", default="attention_unet")
    parser.add_argument(
        "--diffboost_with", nargs="*", default=[], help="Table II augmentations to also combine with DiffBoost"
    )
    parser.add_argument("--alphas", type=float, nargs="*", default=[0.0, 0.2, 0.4, 0.8, 1.0])
    parser.add_argument("--patch_sizes", type=int, nargs="*", default=[4, 8, 32, 64])
    parser.add_argument("--pix2pix_iterations", type=int, default=1500, help="Table I baseline; 0 skips Table I")
    parser.add_argument("--extra_config", nargs="*", default=[])
    args = parser.parse_args()
    work = Path(args.workdir).resolve()
    extra = [str(Path(p).resolve()) for p in args.extra_config]
    data = ["--data_root", str(Path(args.data_root).resolve())]
    task = ["--max_pairs", str(args.max_pairs) if args.max_pairs else "None"]
    start = time.perf_counter()

    for name, configs, iterations, more in (
        ("pretrain", ["train.json", "pretrain.json"], args.pretrain_iterations, []),
        (
            "finetune",
            ["train.json", "busi.json"],
            args.finetune_iterations,
            [*task, "--pretrained_weights", str(work / "pretrain" / "model.pt")],
        ),
    ):
        if not (work / name / "model.pt").is_file():
            stage(
                configs,
                extra,
                *data,
                *more,
                "--ckpt_dir",
                str(work / name),
                "--output_dir",
                str(work / f"{name}_out"),
                "--iterations_per_epoch",
                str(args.iterations_per_epoch),
                "--max_epochs",
                str(max(1, iterations // args.iterations_per_epoch)),
            )
    versions = work / "versions"
    if not (versions / "sources.json").is_file():
        stage(
            ["inference.json", "busi.json"],
            extra,
            *data,
            *task,
            "--ckpt_path",
            str(work / "finetune" / "model.pt"),
            "--augment_ratio",
            str(args.augment_ratio),
            "--num_inference_steps",
            str(args.sampling_steps),
            "--output_dir",
            str(versions),
        )

    def evaluate(name: str, conditions: dict | None, seeds: list[int], *more: str) -> dict:
        out = work / name
        overrides = [
            *data,
            *task,
            "--versions_dir",
            str(versions),
            "--network",
            args.network,
            "--iterations",
            str(args.seg_iterations),
            "--seeds",
            repr(seeds),
            "--output_dir",
            str(out),
            *more,
        ]
        if conditions is not None:  # paired differences against the first condition
            overrides += ["--conditions", repr(conditions), "--baseline", next(iter(conditions))]
        # always invoked: the workflow skips every (condition, seed) run already on disk, so adding seeds resumes
        stage(["evaluate.json", "busi.json"], extra, *overrides)
        return json.loads((out / "results.json").read_text())

    table = evaluate("table_ii", None, args.seeds, "--diffboost_with", repr(args.diffboost_with))
    ablation = {}
    if args.alphas or args.patch_sizes:
        mixes = {f"alpha{a:g}": {"alpha": a, "patch_size": 16} for a in args.alphas}
        mixes.update({f"patch{p}": {"alpha": 0.6, "patch_size": p} for p in args.patch_sizes})
        conditions = {name: {"patch_mix": {"folder": str(versions), **mix}} for name, mix in mixes.items()}
        ablation = evaluate("ablation", conditions, args.ablation_seeds or args.seeds)

    table_i = {}
    if args.pix2pix_iterations > 0:  # last: Table II is what a cut-short run should have
        stage(
            ["inference.json", "pretrain.json", "table_i.json"],
            extra,
            *data,
            "--ckpt_path",
            str(work / "pretrain" / "model.pt"),
            "--num_inference_steps",
            str(args.sampling_steps),
            "--pix2pix_iterations",
            str(args.pix2pix_iterations),
            "--pix2pix_path",
            str(work / "pix2pix" / "generator.pt"),
            "--table_i_dir",
            str(work / "table_i"),
        )
        table_i = json.loads((work / "table_i" / "results.json").read_text())

    settings = {k: v for k, v in vars(args).items() if k not in ("workdir", "data_root")}
    header = (
        "# DiffBoost on BUSI at CPU scale\n\n"
        f"`python benchmarks/diffboost_busi.py {' '.join(sys.argv[1:])}`\n\n"
        f"Settings: {json.dumps(settings)}. Wall time of this invocation: {time.perf_counter() - start:.0f} s "
        "(stages found complete were skipped).\n\n"
    )
    parts = ["## Table II layout\n", (work / "table_ii" / "results.md").read_text()]
    if ablation:
        parts += ["\n## Ablation (Fig. 6 b, c): DiffBoost patch mixing (alpha 0.6 / patch 16 is in Table II)\n"]
        parts.append((work / "ablation" / "results.md").read_text())
    if table_i:
        parts += ["\n## Table I layout: held-out images rebuilt from their edges\n"]
        parts.append((work / "table_i" / "results.md").read_text())
    (work / "summary.md").write_text(header + "\n".join(parts))
    if not extra:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "diffboost_busi.json").write_text(
            json.dumps(
                {"settings": settings, "table_ii": table, "ablation": ablation, "table_i": table_i},
                indent=2,
                default=float,
            )
        )
    print((work / "summary.md").read_text())


if __name__ == "__main__":
    main()
