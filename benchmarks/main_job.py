"""Time the README's main job: PIG trained on the embedded default, then 16 pairs generated (two processes).

    python benchmarks/main_job.py --workdir runs/main_job --repeats 3

Each repeat runs exactly the README's two ``python -m monai.bundle run`` commands (fresh processes, a fresh
``bundle_root`` under ``--workdir`` so nothing is resumed) and records the wall time of each; a repeat's result file
is kept and skipped on rerun, so a killed benchmark resumes. Writes the medians, the per-repeat times and the machine
to ``benchmarks/results/main_job.json``. The goal (issue 24): training <= 5 minutes on 2 CPU cores, with a preview of
aligned pairs (look at ``<workdir>/repeat_0/outputs/generated/preview.png``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "bundles" / "pig" / "configs"


def cpu_model() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        return next(line.split(":", 1)[1].strip() for line in lines if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def timed(command: list[str]) -> float:
    print("+", " ".join(command), flush=True)
    start = time.perf_counter()
    subprocess.run(command, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def one_repeat(root: Path) -> dict:
    run = [sys.executable, "-m", "monai.bundle", "run", "--bundle_root", str(root), "--config_file"]
    return {
        "train_seconds": timed([*run, str(CONFIGS / "train.json")]),
        "inference_seconds": timed([*run, str(CONFIGS / "inference.json")]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="runs/main_job")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", default=str(REPO / "benchmarks" / "results" / "main_job.json"))
    args = parser.parse_args()
    work = Path(args.workdir).resolve()
    repeats = []
    for k in range(args.repeats):
        result = work / f"repeat_{k}.json"
        if not result.is_file():
            measured = one_repeat(work / f"repeat_{k}")
            result.parent.mkdir(parents=True, exist_ok=True)
            result.write_text(json.dumps(measured))
        repeats.append(json.loads(result.read_text()))
    summary = {
        "command": "python benchmarks/main_job.py " + " ".join(sys.argv[1:]),
        "machine": {
            "cpu_count": os.cpu_count(),
            "processor": cpu_model(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "python": platform.python_version(),
        },
        "date": time.strftime("%Y-%m-%d"),
        "median_train_seconds": round(statistics.median(r["train_seconds"] for r in repeats), 1),
        "median_inference_seconds": round(statistics.median(r["inference_seconds"] for r in repeats), 1),
        "repeats": repeats,
    }
    Path(args.output).write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
