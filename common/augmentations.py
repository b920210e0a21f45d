"""The conventional augmentations of DiffBoost's Table II (paper 003), one MONAI dictionary transform each.

Images are (C, H, W) in [-1, 1], labels (1, H, W) class indices; spatial transforms move the label with nearest
neighbour interpolation, intensity transforms touch the image only. Ranges follow the batchgenerators/nnU-Net
defaults the paper's baselines come from (DeepStack, Zhang et al. 2020, stacks them all):

=================  ==============================================================================================
RandomContrast     scale around the image mean by a factor in [0.75, 1.25] (``RandScaleIntensityFixedMeand``)
RandomGamma        gamma in [0.7, 1.5] on the min-max normalised image (``RandAdjustContrastd``)
RandomBrightness   multiply by a factor in [0.75, 1.25] (``RandScaleIntensityd``)
RandomNoise        additive Gaussian noise, sigma 0.1 in [-1, 1] units (``RandGaussianNoised``)
RandomResolution   down-sample by 0.5-1 and back up (``RandSimulateLowResolutiond``)
RandomMirror       flip along each spatial axis (``RandFlipd``)
RandomRotate       rotate by up to 30 degrees (``RandRotated``)
RandomScale        zoom by 0.7-1.4, same size (``RandZoomd``)
DeepStack          all of the above in that order
=================  ==============================================================================================
"""

from __future__ import annotations

import math
from collections.abc import Callable

from monai.transforms import (
    RandAdjustContrastd,
    RandFlipd,
    RandGaussianNoised,
    RandRotated,
    RandScaleIntensityd,
    RandScaleIntensityFixedMeand,
    RandSimulateLowResolutiond,
    RandZoomd,
)

from common.errors import InputError

__all__ = ["AUGMENTATIONS", "conventional_augmentation"]

KEYS = ("image", "label")


def _builders(prob: float) -> dict[str, Callable[[], list]]:
    return {
        "RandomContrast": lambda: [RandScaleIntensityFixedMeand(keys="image", prob=prob, factors=0.25)],
        "RandomGamma": lambda: [RandAdjustContrastd(keys="image", prob=prob, gamma=(0.7, 1.5))],
        "RandomBrightness": lambda: [RandScaleIntensityd(keys="image", prob=prob, factors=0.25)],
        "RandomNoise": lambda: [RandGaussianNoised(keys="image", prob=prob, mean=0.0, std=0.1)],
        "RandomResolution": lambda: [
            RandSimulateLowResolutiond(keys="image", prob=prob, upsample_mode="bilinear", zoom_range=(0.5, 1.0))
        ],
        "RandomMirror": lambda: [
            RandFlipd(keys=KEYS, prob=prob, spatial_axis=0),
            RandFlipd(keys=KEYS, prob=prob, spatial_axis=1),
        ],
        "RandomRotate": lambda: [
            RandRotated(
                keys=KEYS, prob=prob, range_x=math.radians(30), mode=("bilinear", "nearest"), padding_mode="border"
            )
        ],
        "RandomScale": lambda: [
            RandZoomd(
                keys=KEYS, prob=prob, min_zoom=0.7, max_zoom=1.4, mode=("bilinear", "nearest"), padding_mode="edge"
            )
        ],
    }


AUGMENTATIONS = (*_builders(0.5), "DeepStack")


def conventional_augmentation(name: str, prob: float = 0.5) -> list:
    """The MONAI transforms of one Table II augmentation (``DeepStack``: all of them), each applied with ``prob``."""
    if not 0.0 <= float(prob) <= 1.0:
        raise InputError(f"augmentation 'prob' must be in [0, 1], got {prob!r}.")
    builders = _builders(float(prob))
    if name == "DeepStack":
        return [t for build in builders.values() for t in build()]
    if name not in builders:
        raise InputError(f"unknown augmentation {name!r}; choose one of {', '.join(AUGMENTATIONS)}.")
    return builders[name]()
