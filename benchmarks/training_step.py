"""Which training-step settings pay on this machine? Issue 8's "keep each only where the benchmark shows it helps".

    OMP_NUM_THREADS=2 python benchmarks/training_step.py --workdir runs/training_step --repeats 3

For every bundle's default generator, one training step (forward + loss + backward + optimiser, on a ``--size`` batch
the bundle's own ``prepare_batch`` made from its training config) is timed as shipped and with one setting changed:

* ``attention``: the other attention kernel (``use_flash_attention`` flipped: MONAI's explicit attention vs PyTorch's
  fused ``scaled_dot_product_attention``);
* ``channels_last``: network and image batches in channels-last memory format;
* ``fused_adam``: the config's optimiser class rebuilt with ``fused=True``;
* ``micro_batch``: the other micro-batching setting (``micro_batch_size`` of the config: the whole batch at once if the
  bundle ships chunks, else chunks of half the batch; common.micro_batching, same gradient, less activation memory);
* ``compile``: ``torch.compile`` of the network (compilation happens in the first calls, reported apart: one
  evaluation call plus the first training step, ``--warmup`` steps are not timed).

Networks are built from each bundle's config (``network_def`` through MONAI's ConfigParser, as throughput.py does),
so the benchmark follows the configs. Each (bundle, variant, repeat) runs in a fresh process (peak RSS is its own),
variants alternate in order between repeats, and the table reports medians. Every variant also returns the
network's output on the same batch from the same (randomised) weights; the largest difference from the shipped
setting shows that it computes the same function. One JSON per measurement in ``--workdir``, skipped when present;
the table goes to ``benchmarks/results/training_step.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.bundle_runner import cached_measurement  # noqa: E402
from benchmarks.throughput import BUNDLES, _parser, _rss_mb, _trainer, time_training_steps  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
VARIANTS = ("shipped", "attention", "channels_last", "fused_adam", "micro_batch", "compile")
CHECKED_OUTPUTS = 512  # output values compared between variants


def _channels_last(value):
    import torch

    if isinstance(value, torch.Tensor) and value.dim() == 4:
        return value.contiguous(memory_format=torch.channels_last)
    if isinstance(value, (list, tuple)):
        return type(value)(_channels_last(v) for v in value)
    if isinstance(value, dict):
        return {k: _channels_last(v) for k, v in value.items()}
    return value


def _randomise_zero_layers(network) -> None:
    """Zero-initialised layers (output convolutions, ControlNet's zero convolutions) drawn at random, so the output
    depends on every block and a variant that changed the function would show."""
    import torch

    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in network.parameters():
            if not parameter.any():
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)


def measure(bundle: str, variant: str, size: int, iterations: int, warmup: int, workdir: str) -> dict:
    import torch

    shipped_flash = _parser(bundle, BUNDLES[bundle][0], size, workdir)["use_flash_attention"]
    overrides = {"use_flash_attention": not shipped_flash} if variant == "attention" else {}
    torch.manual_seed(0)
    parser, trainer = _trainer(bundle, size, 1, workdir, **overrides)
    torch.manual_seed(1)
    batch = next(iter(trainer.data_loader))
    inputs, targets, args, kwargs = trainer.prepare_batch(batch, trainer.state.device, False)
    network, optimizer, loss_function = trainer.network, trainer.optimizer, trainer.loss_function
    _randomise_zero_layers(network)
    if variant == "channels_last":
        network = network.to(memory_format=torch.channels_last)
        inputs, targets, args, kwargs = _channels_last((inputs, targets, args, kwargs))
    if variant == "fused_adam":
        defaults = {k: v for k, v in optimizer.defaults.items() if k not in ("foreach", "fused")}
        optimizer = type(optimizer)(network.parameters(), **defaults, fused=True)
    if variant == "compile":
        network = torch.compile(network)
    start = time.perf_counter()
    network.eval()
    with torch.no_grad():
        output = _first_tensor(network(inputs, *args, **kwargs))
    network.train()
    evaluation_seconds = time.perf_counter() - start  # with compile: the inference graph's compilation
    micro_batch_size = parser.get("micro_batch_size")
    if variant == "micro_batch":
        micro_batch_size = None if micro_batch_size else max(1, inputs.shape[0] // 2)
    step = (network, optimizer, loss_function, inputs, targets, args, kwargs)
    times = time_training_steps(*step, iterations + warmup, micro_batch_size)
    return {
        "seconds_per_step": statistics.median(times[warmup:]),
        "first_calls_seconds": evaluation_seconds + times[0],
        "peak_rss_mb": _rss_mb(),
        "use_flash_attention": parser["use_flash_attention"],
        "micro_batch_size": micro_batch_size,
        "output": output.detach().float().flatten()[:CHECKED_OUTPUTS].tolist(),
    }


def _first_tensor(output):
    """The network's prediction, or the first tensor of a structured output (e.g. PIG's mask and image parts)."""
    if isinstance(output, dict):
        output = list(output.values())
    return _first_tensor(output[0]) if isinstance(output, (tuple, list)) else output


def run(bundle: str, variant: str, repeat: int, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--_measure", bundle, variant, "--size", str(args.size)]
    cmd += ["--iterations", str(args.iterations), "--warmup", str(args.warmup)]
    return cached_measurement(Path(args.workdir) / f"{bundle}_{variant}_{args.size}px_{repeat}.json", cmd)


def summarise(runs: dict[str, list[dict]]) -> dict:
    shipped = statistics.median(r["seconds_per_step"] for r in runs["shipped"])
    reference = runs["shipped"][0]["output"]
    rows = {}
    for variant, results in runs.items():
        seconds = statistics.median(r["seconds_per_step"] for r in results)
        rows[variant] = {
            "seconds_per_step": seconds,
            "speedup_over_shipped": shipped / seconds,
            "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in results),
            "first_calls_seconds": statistics.median(r["first_calls_seconds"] for r in results),
            "use_flash_attention": results[0]["use_flash_attention"],
            "micro_batch_size": results[0].get("micro_batch_size"),
            "max_abs_output_difference": max(abs(a - b) for a, b in zip(results[0]["output"], reference)),
        }
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="runs/training_step")
    parser.add_argument("--bundles", nargs="+", default=list(BUNDLES), choices=list(BUNDLES))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--output", default=str(RESULTS / "training_step.json"), help="the table as JSON")
    parser.add_argument("--_measure", nargs=2, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._measure:
        with tempfile.TemporaryDirectory() as workdir:
            print(json.dumps(measure(*args._measure, args.size, args.iterations, args.warmup, workdir)))
        return

    variants = ["shipped", *(v for v in args.variants if v != "shipped")]
    start = time.perf_counter()
    rows = {}
    for bundle in args.bundles:
        runs: dict[str, list[dict]] = {v: [] for v in variants}
        for r in range(args.repeats):
            for variant in variants if r % 2 == 0 else variants[::-1]:
                runs[variant].append(run(bundle, variant, r, args))
                print(f"{bundle} repeat {r + 1}/{args.repeats} {variant}: "
                      f"{runs[variant][-1]['seconds_per_step']:.3f} s/step", flush=True)  # fmt: skip
        rows[bundle] = summarise(runs)
    header = "| bundle | variant | s/step | speed-up over shipped | peak RSS MB | first calls s | max abs output diff |"
    lines = [header, "|---|---|---|---|---|---|---|"]
    for bundle, row in rows.items():
        for variant, r in row.items():
            kernel = "fused" if r["use_flash_attention"] else "explicit"
            name = f"{variant} ({kernel} attention)" if variant in ("shipped", "attention") else variant
            if variant in ("shipped", "micro_batch") and "micro_batch_size" in r:
                name += f", chunks of {r['micro_batch_size']}" if r["micro_batch_size"] else ", whole batch"
            lines.append(f"| {bundle} | {name} | {r['seconds_per_step']:.2f} | {r['speedup_over_shipped']:.2f} | "
                         f"{r['peak_rss_mb']:.0f} | {r['first_calls_seconds']:.1f} | "
                         f"{r['max_abs_output_difference']:.1e} |")  # fmt: skip
    lines.append(f"\nwall time of this invocation: {(time.perf_counter() - start) / 60:.1f} min")
    text = "\n".join(lines)
    print(text)
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    Path(args.workdir, "summary.md").write_text(text + "\n")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in vars(args).items() if k != "_measure"}
    Path(args.output).write_text(json.dumps({"settings": settings, "results": rows}, indent=2))


if __name__ == "__main__":
    main()
