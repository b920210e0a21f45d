"""How good is a PIG checkpoint's x0 estimate at each noise level, and what do its samples look like?

    python benchmarks/pig_checkpoint_diagnostics.py --ckpt runs/busi/models/checkpoint_epoch=3.pt \
        --prediction_type epsilon --dataset_dir ../shared/data/busi

1. For real pairs noised to t in --timesteps: the networks' output error (MSE to their target) and the mean absolute
   error of the resulting x0 estimate for mask and image (the guider's x0_hat is what conditions the image model).
2. --samples pairs drawn with --steps DDIM steps: range of the raw output and the cheap distribution checks
   (common.metrics.pair_statistics) next to those of the real pairs.
Works with a full training checkpoint (``--key ema`` or ``network``) or a bare model.pt.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.bundle_runner import bundle_parser  # noqa: E402
from common.bundle import import_scripts  # noqa: E402
from common.checkpoints import load_weights  # noqa: E402
from common.data import load_dataset  # noqa: E402
from common.diffusion import predict_x0  # noqa: E402
from common.metrics import compare_statistics, pair_statistics  # noqa: E402
from common.transforms import decode_mask, encode_mask  # noqa: E402

PIG = import_scripts(REPO / "bundles" / "pig").pig
PairedSampler, PairedDiffusionPrepareBatch = PIG.PairedSampler, PIG.PairedDiffusionPrepareBatch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--key", default="ema", help="entry of a full checkpoint: ema or network")
    parser.add_argument("--prediction_type", default="v_prediction")
    parser.add_argument("--dataset_dir", default=str(REPO.parent / "shared" / "data" / "busi"))
    parser.add_argument("--timesteps", type=int, nargs="+", default=[50, 300, 600, 900, 999])
    parser.add_argument("--pairs", type=int, default=16, help="real pairs for the per-t check")
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--steps", type=int, default=25)
    args = parser.parse_args()
    torch.manual_seed(0)

    config = bundle_parser("pig", "train.json")
    config["prediction_type"] = args.prediction_type
    net = load_weights(config.get_parsed_content("network_def", lazy=False), args.ckpt, key=args.key).eval()
    scheduler = config.get_parsed_content("noise_scheduler", lazy=False)
    prepare = PairedDiffusionPrepareBatch(scheduler)

    real = load_dataset(args.dataset_dir, split="train", image_size=config["image_size"])
    batch = real[: args.pairs]
    image = torch.stack([torch.as_tensor(p["image"]) for p in batch])
    mask = encode_mask(torch.stack([torch.as_tensor(p["label"]) for p in batch]))
    print("| t | output MSE mask | output MSE image | x0 MAE mask | x0 MAE image |\n|---|---|---|---|---|")
    for t in args.timesteps:
        tt = torch.full((len(batch),), t)
        noise_x, noise_y = torch.randn_like(mask), torch.randn_like(image)
        x_t, y_t = scheduler.add_noise(mask, noise_x, tt), scheduler.add_noise(image, noise_y, tt)
        with torch.no_grad():
            out_x, out_y = net.guider_noise(x_t, y_t, tt), net.image_noise(mask, y_t, tt)
        ab = scheduler.alphas_cumprod[t]
        mse_x = (out_x - prepare.target(mask, noise_x, tt)).pow(2).mean()
        mse_y = (out_y - prepare.target(image, noise_y, tt)).pow(2).mean()
        mae_x = (predict_x0(x_t, out_x, ab, args.prediction_type) - mask).abs().mean()
        mae_y = (predict_x0(y_t, out_y, ab, args.prediction_type) - image).abs().mean()
        print(f"| {t} | {mse_x:.4f} | {mse_y:.4f} | {mae_x:.3f} | {mae_y:.3f} |")

    generator = torch.Generator().manual_seed(0)
    shape = (args.samples, 1, *image.shape[-2:])
    x0, y0 = PairedSampler(scheduler, args.steps)(
        net, torch.randn(shape, generator=generator), torch.randn(shape, generator=generator)
    )
    print(
        f"\nraw samples ({args.steps} DDIM steps): mask std {x0.std():.2f}, image std {y0.std():.2f}, "
        f"max |image| {y0.abs().max():.1f}\n"
    )
    stats = {
        "real train": pair_statistics([p["image"] for p in real], [p["label"] for p in real]),
        "generated": pair_statistics(y0.clamp(-1, 1).numpy(), decode_mask(x0).numpy()),
    }
    print(compare_statistics(stats))


if __name__ == "__main__":
    main()
