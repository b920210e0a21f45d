"""DiffBoost's patch mixing of real and synthetic images for segmentation training (paper 003, Alg. 1).

Per step and per real image x0, one of its n synthetic versions x_i is chosen and a random patch mask m is drawn:
a (ceil(H / p), ceil(W / p)) matrix of U(0, 1) values, 1 where the value is below alpha, enlarged by nearest
neighbour to (H, W). The segmenter is trained with the real label on

* ``"image"`` mixing (the paper): ``C(m x0 + (1 - m) x_i)``;
* ``"logits"`` mixing (the authors' code): ``m C(x0) + (1 - m) C(x_i)``.

alpha = 1 keeps the real image only, alpha = 0 the synthetic one; the expected real fraction is alpha.

With MONAI's ``SupervisedTrainer``, :class:`PatchMixPrepareBatch` draws the synthetic choice and the mask and packs
``[x0, x_i, m]`` along channels; :class:`PatchMixInferer` unpacks them and mixes images or logits. One mechanism, the
mode is the inferer's. Validation uses a plain inferer on real images.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from monai.engines import PrepareBatch
from monai.inferers import Inferer

from common.errors import InputError

__all__ = ["MIX_MODES", "random_patch_mask", "mix", "PatchMixPrepareBatch", "PatchMixInferer"]

MIX_MODES = ("image", "logits")


def _check(alpha: float, patch_size: int) -> None:
    if not 0.0 <= float(alpha) <= 1.0:
        raise InputError(f"'alpha' must be in [0, 1], got {alpha!r}.")
    if isinstance(patch_size, bool) or not isinstance(patch_size, int) or patch_size < 1:
        raise InputError(f"'patch_size' must be a positive integer, got {patch_size!r}.")


def random_patch_mask(
    batch: int,
    size: tuple[int, int],
    alpha: float,
    patch_size: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """(batch, 1, H, W) float {0, 1} masks, constant on ``patch_size`` squares, each square 1 with probability alpha.

    Squares at the right and bottom edges are cropped when ``patch_size`` does not divide the image.
    """
    _check(alpha, patch_size)
    height, width = size
    rows, cols = math.ceil(height / patch_size), math.ceil(width / patch_size)
    coarse = torch.rand((batch, 1, rows, cols), generator=generator, device=generator.device if generator else None)
    keep = (coarse < alpha).to(torch.float32)
    full = keep.repeat_interleave(patch_size, dim=2).repeat_interleave(patch_size, dim=3)
    return full[..., :height, :width].to(device or full.device)


def mix(real: torch.Tensor, synthetic: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``mask * real + (1 - mask) * synthetic`` (mask broadcast over channels)."""
    return mask * real + (1.0 - mask) * synthetic


class PatchMixPrepareBatch(PrepareBatch):
    """Batches of ``{"image": x0 (B, C, H, W), "synthetic": (B, n, C, H, W), "label"}`` -> ``(cat[x0, x_i, m], label)``.

    ``synthetic`` holds each real image's n generated versions (n >= 1); one is chosen per image and step. Draws come
    from ``generator`` (seeded once) so a run is reproducible without touching the global RNG.
    """

    def __init__(self, alpha: float = 0.6, patch_size: int = 16, seed: int = 0) -> None:
        _check(alpha, patch_size)
        self.alpha = float(alpha)
        self.patch_size = int(patch_size)
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, batchdata: Mapping[str, Any], device=None, non_blocking: bool = False, **kwargs: Any):
        real = torch.as_tensor(batchdata["image"]).float()
        synthetic = torch.as_tensor(batchdata["synthetic"]).float()
        if (
            synthetic.ndim != real.ndim + 1
            or synthetic.shape[0] != real.shape[0]
            or synthetic.shape[2:] != real.shape[1:]
        ):
            raise InputError(
                f"'synthetic' must be (B, n, C, H, W) matching 'image' {tuple(real.shape)}, "
                f"got {tuple(synthetic.shape)}."
            )
        batch, count = synthetic.shape[:2]
        choice = torch.randint(0, count, (batch,), generator=self.generator)
        chosen = synthetic[torch.arange(batch), choice]
        mask = random_patch_mask(batch, tuple(real.shape[2:]), self.alpha, self.patch_size, self.generator)
        packed = torch.cat([real, chosen, mask], dim=1).to(device=device, non_blocking=non_blocking)
        label = torch.as_tensor(batchdata["label"]).to(device=device, non_blocking=non_blocking)
        return packed, label


class PatchMixInferer(Inferer):
    """Unpack ``cat[x0, x_i, m]`` and return the segmenter's logits on the mixed image, or the mixed logits."""

    def __init__(self, mode: str = "image") -> None:
        if mode not in MIX_MODES:
            raise InputError(f"'mode' must be one of {MIX_MODES}, got {mode!r}.")
        self.mode = mode

    def __call__(self, inputs: torch.Tensor, network: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        channels = (inputs.shape[1] - 1) // 2
        if inputs.shape[1] != 2 * channels + 1 or channels < 1:
            raise InputError(f"PatchMixInferer expects cat[real, synthetic, mask] channels, got {inputs.shape[1]}.")
        real, synthetic, mask = torch.split(inputs, [channels, channels, 1], dim=1)
        if self.mode == "image":
            return network(mix(real, synthetic, mask), *args, **kwargs)
        both = network(torch.cat([real, synthetic]), *args, **kwargs)
        real_logits, synthetic_logits = both.chunk(2)
        return mix(real_logits, synthetic_logits, mask)
