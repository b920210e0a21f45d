"""Table II's conventional augmentations: each does what its name says, to the image and (if spatial) the label."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.transforms import Compose

from common.errors import InputError
from tests.shared_data import bundle_module

AUGMENTATIONS = bundle_module("diffboost", "augmentations")
AUGMENTATIONS, conventional_augmentation = (AUGMENTATIONS.AUGMENTATIONS, AUGMENTATIONS.conventional_augmentation)


SPATIAL = {"RandomMirror", "RandomRotate", "RandomScale"}


def sample() -> dict:
    yy, xx = np.mgrid[:32, :32]
    image = ((xx + 2 * yy) / 93.0 * 2 - 1).astype(np.float32)[None]  # a ramp: any spatial change shows
    label = np.zeros((1, 32, 32), np.int64)
    label[0, 4:14, 6:20] = 1
    return {"image": torch.as_tensor(image), "label": torch.as_tensor(label)}


@pytest.mark.parametrize("name", AUGMENTATIONS)
def test_each_augmentation_changes_what_it_should(name):
    transform = Compose(conventional_augmentation(name, prob=1.0))
    transform.set_random_state(seed=0)
    original = sample()
    changed_image = changed_label = False
    for _ in range(5):
        out = transform(sample())
        image, label = torch.as_tensor(out["image"]), torch.as_tensor(out["label"])
        assert image.shape == (1, 32, 32) and label.shape == (1, 32, 32)
        assert set(label.unique().tolist()) <= {0, 1}  # labels stay class indices
        changed_image |= not torch.allclose(image, original["image"])
        changed_label |= not torch.equal(label.long(), original["label"])
    assert changed_image
    assert changed_label == (name in SPATIAL or name == "DeepStack")  # intensity transforms leave the label alone


def test_mirror_moves_image_and_label_together():
    transform = Compose(conventional_augmentation("RandomMirror", prob=1.0))
    out = transform(sample())
    flipped = sample()
    assert torch.equal(torch.as_tensor(out["label"]).long(), flipped["label"].flip(1).flip(2))
    assert torch.allclose(torch.as_tensor(out["image"]), flipped["image"].flip(1).flip(2))


@pytest.mark.parametrize("name", AUGMENTATIONS)
def test_every_image_key_gets_the_same_draw(name):
    """DiffBoost's versions (n channels of one image) must move and change exactly as the real image does."""
    transform = Compose(conventional_augmentation(name, prob=1.0, image_keys=("image", "synthetic")))
    transform.set_random_state(seed=0)
    for _ in range(3):
        pair = sample()
        out = transform({**pair, "synthetic": pair["image"].repeat(3, 1, 1)})
        image, versions = torch.as_tensor(out["image"]), torch.as_tensor(out["synthetic"])
        assert versions.shape == (3, 32, 32)
        assert not torch.allclose(image, pair["image"])
        assert torch.allclose(versions, image.expand(3, -1, -1), atol=1e-5)


def test_deepstack_is_all_of_them_and_errors_are_clear():
    assert len(conventional_augmentation("DeepStack")) == sum(
        len(conventional_augmentation(n)) for n in AUGMENTATIONS if n != "DeepStack"
    )
    with pytest.raises(InputError, match="unknown augmentation 'RandomBlur'; choose one of RandomContrast"):
        conventional_augmentation("RandomBlur")
    with pytest.raises(InputError, match="'prob' must be in"):
        conventional_augmentation("RandomGamma", prob=2)
