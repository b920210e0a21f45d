"""Does PyTorch's fused attention (MONAI ``use_flash_attention=True``) pay on the CPU? Issue 8's memory goal.

    OMP_NUM_THREADS=2 python benchmarks/attention_kernel.py --repeats 3

For each bundle generator with attention (DiffBoost: self-attention at 32x32 = 1024 tokens; PIG: 16x16, one of its
two U-Nets) one training
step (forward + backward + Adam, batch 16, 64x64) is timed with MONAI's explicit attention and with
``torch.nn.functional.scaled_dot_product_attention``, each in a fresh process so peak RSS is that variant's own.
The script also reports the largest difference of the two kernels' predictions from the same (randomised) weights
and batch: they compute the same function. Medians over ``--repeats`` processes; results in
``benchmarks/results/attention_kernel.json``.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
RESULTS = REPO / "benchmarks" / "results"
GENERATORS = ("diffboost", "pig")


def build(generator: str, flash: bool, batch: int | None = None):
    """The bundle's default generator network (channels (32, 64, 64), its attention levels) and one call on a batch."""
    import torch
    from monai.networks.nets import DiffusionModelUNet

    from common.text_edge_model import build_text_edge_model

    torch.manual_seed(0)
    batch, size = 16 if batch is None else batch, 64
    x = torch.randn(batch, 1 if generator == "diffboost" else 2, size, size)  # PIG: mask + image channels
    t = torch.randint(0, 1000, (batch,))
    if generator == "diffboost":
        net = perturbed(build_text_edge_model(64, use_flash_attention=flash))
        tokens = torch.randint(0, 64, (batch, 16))
        edges = (torch.rand(batch, 1, size, size) > 0.9).float()
        return net, lambda: net(x, t, tokens, edges)
    net = DiffusionModelUNet(  # one of PIG's two U-Nets (guider and image model are alike)
        spatial_dims=2,
        in_channels=2,
        out_channels=1,
        channels=(32, 64, 64),
        attention_levels=(False, False, True),
        num_res_blocks=1,
        num_head_channels=32,
        use_flash_attention=flash,
    )
    return perturbed(net), lambda: net(x, t)


def perturbed(net):
    """The network with its zero-initialised layers (output and ControlNet convolutions) drawn at random, so that its
    output depends on the attention and the two kernels can be compared."""
    import torch

    with torch.no_grad():
        for parameter in net.parameters():
            if not parameter.any():
                parameter.normal_(std=0.05)
    return net


def largest_difference(generator: str) -> float:
    """max |explicit - fused| of the two kernels' predictions, same weights and batch (4 samples)."""
    import torch

    outputs = []
    for flash in (False, True):
        net, call = build(generator, flash, batch=4)
        with torch.no_grad():
            outputs.append(call())
    return (outputs[0] - outputs[1]).abs().max().item()


def measure(generator: str, flash: bool, iterations: int, warmup: int) -> dict:
    """Seconds per training step and this process's peak RSS."""
    import torch

    net, call = build(generator, flash)
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-4)
    times = []
    for i in range(warmup + iterations):
        start = time.perf_counter()
        loss = call().square().mean()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return {
        "seconds_per_step": statistics.median(times),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--generators", nargs="+", default=list(GENERATORS), choices=GENERATORS)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--_measure", nargs=2, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._measure:
        generator, flash = args._measure[0], args._measure[1] == "True"
        print(json.dumps(measure(generator, flash, args.iterations, args.warmup)))
        return

    summary: dict = {"settings": {k: v for k, v in vars(args).items() if k != "_measure"}, "generators": {}}
    for generator in args.generators:
        runs: dict[str, list[dict]] = {"explicit": [], "fused": []}
        for _ in range(args.repeats):
            for name, flash in (("explicit", False), ("fused", True)):
                cmd = [sys.executable, __file__, "--_measure", generator, str(flash)]
                cmd += ["--iterations", str(args.iterations), "--warmup", str(args.warmup)]
                out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
                runs[name].append(json.loads(out.strip().splitlines()[-1]))
        row = {}
        for name, results in runs.items():
            row[name] = {
                "seconds_per_step": statistics.median(r["seconds_per_step"] for r in results),
                "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in results),
            }
        row["max_abs_output_difference"] = largest_difference(generator)
        row["speedup"] = row["explicit"]["seconds_per_step"] / row["fused"]["seconds_per_step"]
        summary["generators"][generator] = row
        print(f"{generator}: {json.dumps(row)}", flush=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "attention_kernel.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
