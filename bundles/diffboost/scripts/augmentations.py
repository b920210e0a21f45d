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

``image_keys`` names every image the augmentation must treat alike: DiffBoost's patch mixing passes its generated
versions (``"synthetic"``, versions as channels) with the real image, so one draw rotates the real image, its label
and its versions together and the mixed patches stay aligned.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from monai.data.meta_obj import get_track_meta
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
from monai.utils import convert_to_tensor

from common.errors import InputError

__all__ = ["AUGMENTATIONS", "conventional_augmentation"]


class _OneDrawLowResolutiond(RandSimulateLowResolutiond):
    """``RandSimulateLowResolutiond`` with one zoom factor for all keys (MONAI 1.6 draws it again per key)."""

    def __call__(self, data):
        d = dict(data)
        self.randomize(None)
        if self._do_transform:
            self.sim_lowres_tfm.randomize()
        for key in self.key_iterator(d):
            if self._do_transform:
                d[key] = self.sim_lowres_tfm(d[key], randomize=False)
            else:
                d[key] = convert_to_tensor(d[key], track_meta=get_track_meta(), dtype=torch.float32)
        return d


def _builders(prob: float, images: tuple[str, ...]) -> dict[str, Callable[[], list]]:
    keys = (*images, "label")
    modes = ("bilinear",) * len(images) + ("nearest",)
    return {
        "RandomContrast": lambda: [RandScaleIntensityFixedMeand(keys=images, prob=prob, factors=0.25)],
        "RandomGamma": lambda: [RandAdjustContrastd(keys=images, prob=prob, gamma=(0.7, 1.5))],
        "RandomBrightness": lambda: [RandScaleIntensityd(keys=images, prob=prob, factors=0.25)],
        "RandomNoise": lambda: [RandGaussianNoised(keys=images, prob=prob, mean=0.0, std=0.1)],
        "RandomResolution": lambda: [
            _OneDrawLowResolutiond(keys=images, prob=prob, upsample_mode="bilinear", zoom_range=(0.5, 1.0))
        ],
        "RandomMirror": lambda: [
            RandFlipd(keys=keys, prob=prob, spatial_axis=0),
            RandFlipd(keys=keys, prob=prob, spatial_axis=1),
        ],
        "RandomRotate": lambda: [
            RandRotated(keys=keys, prob=prob, range_x=math.radians(30), mode=modes, padding_mode="border")
        ],
        "RandomScale": lambda: [
            RandZoomd(keys=keys, prob=prob, min_zoom=0.7, max_zoom=1.4, mode=modes, padding_mode="edge")
        ],
    }


AUGMENTATIONS = (*_builders(0.5, ("image",)), "DeepStack")


def conventional_augmentation(name: str, prob: float = 0.5, image_keys: tuple[str, ...] = ("image",)) -> list:
    """The MONAI transforms of one Table II augmentation (``DeepStack``: all of them), each applied with ``prob`` to
    ``image_keys`` (and, if spatial, to ``"label"`` by nearest neighbour)."""
    if not 0.0 <= float(prob) <= 1.0:
        raise InputError(f"augmentation 'prob' must be in [0, 1], got {prob!r}.")
    builders = _builders(float(prob), tuple(image_keys))
    if name == "DeepStack":
        return [t for build in builders.values() for t in build()]
    if name not in builders:
        raise InputError(f"unknown augmentation {name!r}; choose one of {', '.join(AUGMENTATIONS)}.")
    return builders[name]()
