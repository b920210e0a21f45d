"""Training and sampling throughput of every bundle's default generator against a bare loop of the same network
(issue 8). One resumable command:

    OMP_NUM_THREADS=2 python benchmarks/throughput.py --workdir runs/throughput --sizes 64 128 --repeats 3

Every measurement runs in a fresh subprocess (clean peak RSS, no caches shared), bundle and bare alternating in order
from repeat to repeat; the table reports medians over ``--repeats``, and each overhead ratio is taken between
measurements of the same invocation on the same machine. One JSON per (bundle, size, mode, repeat) in ``--workdir``,
skipped when present, so a killed run resumes.

* training, bundle: the bundle's own training config (data loader, prepare_batch, EMA, stats/TensorBoard/loss-history
  handlers, checkpoint at the epoch end) on its embedded synthetic data; per-iteration times from ignite events after
  ``--warmup`` steps, split into data, forward (incl. noising), backward, optimiser and handlers. Previews are off
  (periodic validation). The epoch-end checkpoint is reported separately.
* training, bare: the same network, loss and optimiser step on one batch the bundle's own ``prepare_batch`` made.
* sampling, bundle: the inference config's ``run`` (sampler, writer, datalist, preview) with untrained weights, timed
  on the second run in the process (the first pays one-off start-up, like the bare replay's untimed warm-up call; its
  rate is reported as ``first_run``).
* sampling, bare: every network call the bundle's sampler made, replayed on the same tensors (with gradients where the
  sampler took them, e.g. DiffuseExpand's classifier guidance).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
RESULTS = REPO / "benchmarks" / "results"

from benchmarks.bundle_runner import cached_measurement  # noqa: E402

# bundle -> (training config, inference config, inference overrides that keep one run to a few batches)
BUNDLES = {
    "pig": ("train.json", "inference.json", {}),
    "diffuse_expand": ("train_dpm.json", "inference.json", {}),
    "diffboost": ("train.json", "inference.json", {"num_synthetic": 8, "augment_ratio": 2}),
    "ct_semantic_synthesis": ("train.json", "inference.json", {"num_synthetic": 16}),
}
MODES = ("train_bundle", "train_bare", "sample_bundle", "sample_bare")


def _parser(bundle: str, config: str, size: int, workdir: str, **overrides):
    from benchmarks.bundle_runner import bundle_parser

    parser = bundle_parser(bundle, config)
    parser.update({"image_size": size, "output_dir": os.path.join(workdir, "out"), **overrides})
    return parser


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _trainer(bundle: str, size: int, iterations: int, workdir: str, **overrides):
    parser = _parser(
        bundle,
        BUNDLES[bundle][0],
        size,
        workdir,
        ckpt_dir=os.path.join(workdir, "models"),
        iterations_per_epoch=iterations,
        max_epochs=1,
        preview_interval=0,
        resume=False,
        **overrides,
    )
    parser.get_parsed_content("initialize")
    return parser, parser.get_parsed_content("train#trainer")


def train_bundle(bundle: str, size: int, iterations: int, warmup: int, workdir: str) -> dict:
    from ignite.engine import Events
    from monai.engines.utils import IterationEvents

    parser, trainer = _trainer(bundle, size, iterations + warmup, workdir)
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
    epoch_end = {}
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: epoch_end.setdefault("start", time.perf_counter()))
    trainer.add_event_handler(Events.COMPLETED, lambda e: epoch_end.setdefault("end", time.perf_counter()))
    trainer.run()
    steps = marks[warmup:-1]
    ends = [marks[i + 1]["batch_start"] for i in range(warmup, len(marks) - 1)]
    phases = {
        "data": [m["batch_done"] - m["batch_start"] for m in steps],
        "forward": [m["forward"] - m["batch_done"] for m in steps],
        "backward": [m["backward"] - m["forward"] for m in steps],
        "optimizer": [m["optimizer"] - m["backward"] for m in steps],
        "handlers": [e - m["optimizer"] for m, e in zip(steps, ends)],
    }
    per_iter = statistics.median(e - m["batch_start"] for m, e in zip(steps, ends))
    return {
        "seconds_per_iteration": per_iter,
        "samples_per_second": parser["batch_size"] / per_iter,
        "phases_median_s": {k: statistics.median(v) for k, v in phases.items()},
        "epoch_end_seconds": epoch_end["end"] - epoch_end["start"],
        "peak_rss_mb": _rss_mb(),
    }


def time_training_steps(
    network, optimizer, loss_function, inputs, targets, args, kwargs, count: int, micro_batch_size: int | None = None
) -> list[float]:
    """Seconds of each of ``count`` training steps (zero grad, forward, loss, backward, optimiser) on one batch;
    forward + backward in chunks of ``micro_batch_size`` samples, as the bundle's trainer (common.micro_batching)."""
    from common.micro_batching import accumulate_gradients

    times = []
    for _ in range(count):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        accumulate_gradients(network, loss_function, inputs, targets, args, kwargs, micro_batch_size)
        optimizer.step()
        times.append(time.perf_counter() - start)
    return times


def train_bare(bundle: str, size: int, iterations: int, warmup: int, workdir: str) -> dict:
    """The trainer's network, loss and optimiser on one pre-made batch: what the bundle would cost with free I/O."""
    parser, trainer = _trainer(bundle, size, 1, workdir)
    batch = next(iter(trainer.data_loader))
    inputs, targets, args, kwargs = trainer.prepare_batch(batch, trainer.state.device, False)
    network, optimizer, loss_function = trainer.network, trainer.optimizer, trainer.loss_function
    network.train()
    step = (network, optimizer, loss_function, inputs, targets, args, kwargs)
    micro = parser.get("micro_batch_size")
    per_iter = statistics.median(time_training_steps(*step, iterations + warmup, micro)[warmup:])
    return {
        "seconds_per_iteration": per_iter,
        "samples_per_second": parser["batch_size"] / per_iter,
        "peak_rss_mb": _rss_mb(),
    }


def _sampling_run(bundle: str, size: int, steps: int, workdir: str, record: bool):
    """Parse the inference config with untrained checkpoints in place. With ``record``, hooks keep every outermost
    network call the sampler makes (whichever submodule it calls: PIG's calls the guider and the image model)."""
    import torch

    _, config, overrides = BUNDLES[bundle]
    parser = _parser(bundle, config, size, workdir, num_inference_steps=steps, **overrides)
    checkpoints = {"network_def": "ckpt_path", "segmenter_def": "segmenter_ckpt_path"}
    for net_id, key in checkpoints.items():
        if net_id in parser.config and key in parser.config:
            path = os.path.join(workdir, f"{net_id}.pt")
            torch.save(parser.get_parsed_content(net_id).state_dict(), path)
            parser[key] = path
    calls: list[tuple] = []
    handles, depth = [], [0]

    def enter(module, args, kwargs):
        if depth[0] == 0:
            keep = lambda v: v.detach().clone() if torch.is_tensor(v) else v  # noqa: E731
            calls.append((module, tuple(map(keep, args)), {k: keep(v) for k, v in kwargs.items()},
                          torch.is_grad_enabled()))  # fmt: skip
        depth[0] += 1

    def leave(module, args, kwargs, output):
        depth[0] -= 1

    for net_id in ("network", "classifier") if record else ():
        module = parser.get_parsed_content(net_id) if net_id in parser.config else None
        if isinstance(module, torch.nn.Module):
            for sub in module.modules():
                handles.append(sub.register_forward_pre_hook(enter, with_kwargs=True))
                handles.append(sub.register_forward_hook(leave, with_kwargs=True))
    return parser, calls, handles


def _generated(output_dir: str) -> int:
    return len(list(Path(output_dir, "labels", "final").glob("pair_*")))


def sample_bundle(bundle: str, size: int, steps: int, workdir: str) -> dict:
    """Two runs of the inference config in one process, each into its own folder: the first pays what a process pays
    once (lazy imports, the CPU kernels picked for these shapes), as the bare replay's warm-up call does; the second,
    timed, is the rate a long run settles at. The first run's rate is reported too (``first_run_pairs_per_second``)."""
    parser, _, _ = _sampling_run(bundle, size, steps, workdir, record=False)
    timed_output = parser["output_dir"]
    rates = []
    for output_dir in (os.path.join(workdir, "first_run"), timed_output):
        parser["output_dir"] = output_dir  # re-parses the config: a new sampler, writer and network
        parser.get_parsed_content("network")  # checkpoint loading is start-up, not sampling
        start = time.perf_counter()
        parser.get_parsed_content("run")
        rates.append(_generated(output_dir) / (time.perf_counter() - start))
    return {
        "pairs": _generated(timed_output),
        "pairs_per_second": rates[1],
        "first_run_pairs_per_second": rates[0],
        "peak_rss_mb": _rss_mb(),
    }


def sample_bare(bundle: str, size: int, steps: int, workdir: str) -> dict:
    """Replay the bundle sampler's network calls on the recorded tensors (the floor a sampler can reach)."""
    import torch

    parser, calls, handles = _sampling_run(bundle, size, steps, workdir, record=True)
    parser.get_parsed_content("run")  # records the calls (not timed)
    for handle in handles:
        handle.remove()
    first = {}
    for call in calls:
        first.setdefault(id(call[0]), call)

    def replay(module, args, kwargs, with_grad):
        if with_grad:  # classifier guidance: the gradient of the logits with respect to the input
            leaf = args[0].clone().requires_grad_(True)
            out = module(leaf, *args[1:], **kwargs)
            out = out[0] if isinstance(out, tuple) else out
            torch.autograd.grad(out.float().sum(), leaf)
        else:
            with torch.no_grad():
                module(*args, **kwargs)

    for call in first.values():  # warm-up
        replay(*call)
    start = time.perf_counter()
    for call in calls:
        replay(*call)
    seconds = time.perf_counter() - start
    pairs = _generated(parser["output_dir"])
    return {"pairs": pairs, "pairs_per_second": pairs / seconds, "network_calls": len(calls), "peak_rss_mb": _rss_mb()}


RUNNERS = {
    "train_bundle": train_bundle,
    "train_bare": train_bare,
    "sample_bundle": sample_bundle,
    "sample_bare": sample_bare,
}


def measure(bundle: str, mode: str, size: int, repeat: int, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--_measure", bundle, mode, str(size), "--iterations", str(args.iterations),
           "--warmup", str(args.warmup), "--steps", str(args.steps)]  # fmt: skip
    return cached_measurement(Path(args.workdir) / f"{bundle}_{size}_{mode}_{repeat}.json", cmd)


def summarise(runs: dict[str, list[dict]]) -> dict:
    med = {m: {k: statistics.median(r[k] for r in runs[m]) for k in runs[m][0] if not isinstance(runs[m][0][k], dict)}
           for m in runs}  # fmt: skip
    return {
        "train_samples_per_s_bundle": med["train_bundle"]["samples_per_second"],
        "train_samples_per_s_bare": med["train_bare"]["samples_per_second"],
        "train_overhead_ratio": med["train_bare"]["samples_per_second"] / med["train_bundle"]["samples_per_second"],
        "epoch_end_seconds": med["train_bundle"]["epoch_end_seconds"],
        "sample_pairs_per_s_bundle": med["sample_bundle"]["pairs_per_second"],
        "sample_pairs_per_s_bundle_first_run": med["sample_bundle"]["first_run_pairs_per_second"],
        "sample_pairs_per_s_bare": med["sample_bare"]["pairs_per_second"],
        "sample_overhead_ratio": med["sample_bare"]["pairs_per_second"] / med["sample_bundle"]["pairs_per_second"],
        "network_calls": med["sample_bare"]["network_calls"],
        "train_peak_rss_mb": med["train_bundle"]["peak_rss_mb"],
        "train_phase_seconds": {
            k: statistics.median(r["phases_median_s"][k] for r in runs["train_bundle"])
            for k in runs["train_bundle"][0]["phases_median_s"]
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="runs/throughput")
    parser.add_argument("--bundles", nargs="+", default=list(BUNDLES), choices=list(BUNDLES))
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10, help="sampling steps per pair")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", default="throughput.json", help="result file name in benchmarks/results")
    parser.add_argument("--_measure", nargs=3, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._measure:
        bundle, mode, size = args._measure
        with tempfile.TemporaryDirectory() as workdir:
            train = {"iterations": args.iterations, "warmup": args.warmup}
            kwargs = train if mode.startswith("train") else {"steps": args.steps}
            print(json.dumps(RUNNERS[mode](bundle, int(size), workdir=workdir, **kwargs)))
        return

    start = time.perf_counter()
    rows = {}
    for bundle in args.bundles:
        for size in args.sizes:
            runs: dict[str, list[dict]] = {mode: [] for mode in MODES}
            for r in range(args.repeats):
                for mode in MODES if r % 2 == 0 else MODES[::-1]:
                    runs[mode].append(measure(bundle, mode, size, r, args))
                    print(f"{bundle} {size} repeat {r + 1}/{args.repeats} {mode}: {runs[mode][-1]}", flush=True)
            rows[f"{bundle}@{size}"] = summarise(runs)
    lines = [
        "| bundle | size | train samples/s bundle | bare | overhead | epoch-end s | pairs/s bundle | bare | overhead "
        "| pairs/s bundle, first run | train peak RSS MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, r in rows.items():
        bundle, size = key.split("@")
        lines.append(
            f"| {bundle} | {size} | {r['train_samples_per_s_bundle']:.1f} | {r['train_samples_per_s_bare']:.1f} | "
            f"{r['train_overhead_ratio']:.2f} | {r['epoch_end_seconds']:.2f} | {r['sample_pairs_per_s_bundle']:.2f} | "
            f"{r['sample_pairs_per_s_bare']:.2f} | {r['sample_overhead_ratio']:.2f} | "
            f"{r['sample_pairs_per_s_bundle_first_run']:.2f} | {r['train_peak_rss_mb']:.0f} |"
        )
    lines.append("\nbundle iteration by phase (median seconds):\n")
    for key, r in rows.items():
        lines.append(f"- {key}: " + ", ".join(f"{k} {v:.4f}" for k, v in r["train_phase_seconds"].items()))
    lines.append(f"\nwall time of this invocation: {(time.perf_counter() - start) / 60:.1f} min")
    text = "\n".join(lines)
    print(text)
    Path(args.workdir, "summary.md").write_text(text + "\n")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / args.output).write_text(json.dumps({"settings": vars(args), "results": rows}, indent=2))


if __name__ == "__main__":
    main()
