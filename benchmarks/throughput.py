"""Training and sampling throughput of the PIG bundle against a bare loop of the same network (issue 8).

    python benchmarks/throughput.py --sizes 64 128 --iterations 40 --repeats 3 --out benchmarks/results/throughput.json

Every measurement runs in a fresh subprocess (clean peak RSS, no warm caches shared), bundle and bare alternating,
``--repeats`` times; the table reports medians, and the overhead ratios are taken between measurements of one
invocation on the same machine.

* training, bundle: ``train.json``'s own trainer (data loader, prepare_batch, EMA, stats/TensorBoard/loss-history
  handlers, checkpoint at the epoch end) for ``--iterations`` steps on the embedded synthetic data; per-iteration times
  from ignite events after ``--warmup`` steps, split into data, forward (incl. noising), backward, optimiser and
  handlers. Previews are off (they are periodic validation, reported by their own line).
* training, bare: the same network, loss and Adam step on pre-made tensors.
* sampling, bundle: ``common.generation.generate_pairs`` with ``inference.json``'s sampler (writer, datalist, preview).
* sampling, bare: the sampler's network evaluations (guider + image model per step) on pre-made tensors.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
CONFIGS = REPO / "bundles" / "pig" / "configs"


def _parser(config: str, size: int, workdir: str, **overrides):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(CONFIGS / config))
    parser.update(
        {
            "image_size": size,
            "output_dir": os.path.join(workdir, "out"),
            "ckpt_dir": os.path.join(workdir, "models"),
            **overrides,
        }
    )
    return parser


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def train_bundle(size: int, iterations: int, warmup: int, workdir: str) -> dict:
    from ignite.engine import Events
    from monai.engines.utils import IterationEvents

    parser = _parser(
        "train.json",
        size,
        workdir,
        iterations_per_epoch=iterations + warmup,
        max_epochs=1,
        preview_interval=0,
        resume=False,
    )
    parser.get_parsed_content("train#pairs")
    trainer = parser.get_parsed_content("train#trainer")
    marks: list[dict[str, float]] = []

    def mark(name):
        def record(engine):
            if name == "batch_start":
                marks.append({})
            marks[-1][name] = time.perf_counter()

        return record

    trainer.add_event_handler(Events.GET_BATCH_STARTED, mark("batch_start"))
    trainer.add_event_handler(Events.GET_BATCH_COMPLETED, mark("batch_done"))
    trainer.add_event_handler(IterationEvents.FORWARD_COMPLETED, mark("forward"))
    trainer.add_event_handler(IterationEvents.BACKWARD_COMPLETED, mark("backward"))
    trainer.add_event_handler(IterationEvents.MODEL_COMPLETED, mark("optimizer"))
    trainer.run()
    steps = [m for m in marks if "optimizer" in m][warmup:]
    ends = [marks[i + 1]["batch_start"] for i in range(warmup, len(marks) - 1) if "batch_start" in marks[i + 1]]
    phases = {
        "data": [m["batch_done"] - m["batch_start"] for m in steps],
        "forward": [m["forward"] - m["batch_done"] for m in steps],
        "backward": [m["backward"] - m["forward"] for m in steps],
        "optimizer": [m["optimizer"] - m["backward"] for m in steps],
        "handlers": [e - m["optimizer"] for m, e in zip(steps, ends)],
    }
    per_iter = [e - m["batch_start"] for m, e in zip(steps, ends)]
    batch = parser["batch_size"]
    return {
        "seconds_per_iteration": statistics.median(per_iter),
        "samples_per_second": batch / statistics.median(per_iter),
        "phases_median_s": {k: statistics.median(v) for k, v in phases.items()},
        "peak_rss_mb": _rss_mb(),
    }


def train_bare(size: int, iterations: int, warmup: int, workdir: str) -> dict:
    import torch

    parser = _parser("train.json", size, workdir)
    net = parser.get_parsed_content("network_def").train()
    optimizer = torch.optim.Adam(net.parameters(), lr=parser["learning_rate"])
    batch, channels = parser["batch_size"], parser.get_parsed_content("mask_channels") + parser["image_channels"]
    inputs, targets = torch.randn(batch, channels, size, size), torch.randn(batch, channels, size, size)
    clean = torch.ones(batch, channels - parser["image_channels"], size, size)
    timesteps = torch.randint(0, parser["num_train_timesteps"], (batch,))
    times = []
    for i in range(iterations + warmup):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.mse_loss(net(inputs, timesteps, clean), targets)
        loss.backward()
        optimizer.step()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return {
        "seconds_per_iteration": statistics.median(times),
        "samples_per_second": batch / statistics.median(times),
        "peak_rss_mb": _rss_mb(),
    }


def sample_bundle(size: int, pairs: int, steps: int, workdir: str) -> dict:
    from common.generation import generate_pairs

    parser = _parser("inference.json", size, workdir, num_inference_steps=steps)
    net = parser.get_parsed_content("network_def").eval()
    start = time.perf_counter()
    generate_pairs(
        net,
        parser.get_parsed_content("sampler"),
        os.path.join(workdir, "pairs"),
        pairs,
        size,
        batch_size=parser["batch_size"],
        seed=0,
    )
    seconds = time.perf_counter() - start
    return {"pairs_per_second": pairs / seconds, "peak_rss_mb": _rss_mb()}


def sample_bare(size: int, pairs: int, steps: int, workdir: str) -> dict:
    import torch

    parser = _parser("inference.json", size, workdir)
    net = parser.get_parsed_content("network_def").eval()
    batch = parser["batch_size"]
    x, y = torch.randn(batch, 1, size, size), torch.randn(batch, 1, size, size)
    t = torch.full((batch,), 500)
    start = time.perf_counter()
    with torch.no_grad():
        for _ in range((pairs + batch - 1) // batch):
            for _ in range(steps):
                net.guider_noise(x, y, t)
                net.image_noise(x, y, t)
    seconds = time.perf_counter() - start
    return {"pairs_per_second": pairs / seconds, "peak_rss_mb": _rss_mb()}


MODES = {
    "train_bundle": train_bundle,
    "train_bare": train_bare,
    "sample_bundle": sample_bundle,
    "sample_bare": sample_bare,
}


def measure(mode: str, size: int, args: argparse.Namespace) -> dict:
    """Run one measurement in a subprocess and return its JSON."""
    cmd = [
        sys.executable,
        __file__,
        "--_mode",
        mode,
        "--sizes",
        str(size),
        "--iterations",
        str(args.iterations),
        "--warmup",
        str(args.warmup),
        "--pairs",
        str(args.pairs),
        "--steps",
        str(args.steps),
    ]
    out = subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--iterations", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--pairs", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=None)
    parser.add_argument("--_mode", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._mode:
        with tempfile.TemporaryDirectory() as workdir:
            size = args.sizes[0]
            kwargs = (
                {"iterations": args.iterations, "warmup": args.warmup}
                if args._mode.startswith("train")
                else {"pairs": args.pairs, "steps": args.steps}
            )
            print(json.dumps(MODES[args._mode](size, workdir=workdir, **kwargs)))
        return

    rows = {}
    for size in args.sizes:
        runs = {mode: [] for mode in MODES}
        for r in range(args.repeats):
            order = list(MODES) if r % 2 == 0 else list(MODES)[::-1]
            for mode in order:
                runs[mode].append(measure(mode, size, args))
                print(f"size {size} repeat {r + 1}/{args.repeats} {mode}: {runs[mode][-1]}", flush=True)
        med = {
            m: {k: statistics.median(v[k] for v in vals) for k in vals[0] if not isinstance(vals[0][k], dict)}
            for m, vals in runs.items()
        }
        phases = {
            k: statistics.median(v["phases_median_s"][k] for v in runs["train_bundle"])
            for k in runs["train_bundle"][0]["phases_median_s"]
        }
        rows[size] = {
            "train_samples_per_s_bundle": med["train_bundle"]["samples_per_second"],
            "train_samples_per_s_bare": med["train_bare"]["samples_per_second"],
            "train_overhead_ratio": med["train_bare"]["samples_per_second"] / med["train_bundle"]["samples_per_second"],
            "sample_pairs_per_s_bundle": med["sample_bundle"]["pairs_per_second"],
            "sample_pairs_per_s_bare": med["sample_bare"]["pairs_per_second"],
            "sample_overhead_ratio": med["sample_bare"]["pairs_per_second"] / med["sample_bundle"]["pairs_per_second"],
            "train_peak_rss_mb": med["train_bundle"]["peak_rss_mb"],
            "train_phase_seconds": phases,
        }
    lines = [
        "| size | train samples/s bundle | bare | overhead | pairs/s bundle | bare | overhead | train RSS MB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for size, r in rows.items():
        lines.append(
            f"| {size} | {r['train_samples_per_s_bundle']:.1f} | {r['train_samples_per_s_bare']:.1f} | "
            f"{r['train_overhead_ratio']:.2f} | {r['sample_pairs_per_s_bundle']:.2f} | "
            f"{r['sample_pairs_per_s_bare']:.2f} | {r['sample_overhead_ratio']:.2f} | "
            f"{r['train_peak_rss_mb']:.0f} |"
        )
    for size, r in rows.items():
        lines.append(
            f"\nsize {size}, bundle iteration by phase (median s): "
            + ", ".join(f"{k} {v:.4f}" for k, v in r["train_phase_seconds"].items())
        )
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"settings": vars(args), "results": rows}, indent=2))


if __name__ == "__main__":
    main()
