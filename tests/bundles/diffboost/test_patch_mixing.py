"""DiffBoost's patch mask and mixing: statistics match alpha and patch size, the mixed input equals the formula."""

from __future__ import annotations

import pytest
import torch

from common.errors import InputError
from tests.shared_data import bundle_module

DIFFBOOST = bundle_module("diffboost", "diffboost")
PatchMixInferer, PatchMixPrepareBatch, mix, random_patch_mask = (
    DIFFBOOST.PatchMixInferer,
    DIFFBOOST.PatchMixPrepareBatch,
    DIFFBOOST.mix,
    DIFFBOOST.random_patch_mask,
)


@pytest.mark.parametrize("alpha", [0.2, 0.6, 0.9])
def test_mask_fraction_matches_alpha(alpha):
    masks = random_patch_mask(400, (64, 64), alpha, 16, torch.Generator().manual_seed(0))
    # 400 x 16 independent patches: the kept fraction is alpha within 4 standard errors
    assert abs(float(masks.mean()) - alpha) < 4 * (alpha * (1 - alpha) / 6400) ** 0.5


@pytest.mark.parametrize("patch_size", [1, 8, 16, 64])
def test_mask_is_constant_on_patches_of_the_given_size(patch_size):
    mask = random_patch_mask(8, (64, 64), 0.5, patch_size, torch.Generator().manual_seed(1))
    assert mask.shape == (8, 1, 64, 64) and set(mask.unique().tolist()) <= {0.0, 1.0}
    blocks = mask.unfold(2, patch_size, patch_size).unfold(3, patch_size, patch_size)
    assert torch.equal(blocks.amax(dim=(-1, -2)), blocks.amin(dim=(-1, -2)))
    if patch_size == 64:  # one patch: the whole image is real or synthetic (the paper's case-level selection)
        assert set(mask.flatten(1).mean(1).tolist()) <= {0.0, 1.0}


def test_extremes_and_non_dividing_patches():
    gen = torch.Generator().manual_seed(2)
    assert random_patch_mask(4, (20, 30), 1.0, 8, gen).min() == 1  # alpha = 1: real only
    assert random_patch_mask(4, (20, 30), 0.0, 8, gen).max() == 0  # alpha = 0: synthetic only
    mask = random_patch_mask(2, (20, 30), 0.5, 8, gen)
    assert mask.shape == (2, 1, 20, 30)
    with pytest.raises(InputError, match="'alpha' must be in"):
        random_patch_mask(1, (8, 8), 1.5, 4)
    with pytest.raises(InputError, match="'patch_size'"):
        random_patch_mask(1, (8, 8), 0.5, 0)


def batch(n: int = 3):
    torch.manual_seed(0)
    return {
        "image": torch.rand(4, 1, 16, 16),
        "synthetic": torch.rand(4, n, 1, 16, 16) + 10,
        "label": torch.randint(0, 2, (4, 1, 16, 16)),
    }


def test_prepare_batch_packs_real_one_synthetic_and_the_mask():
    data = batch()
    packed, label = PatchMixPrepareBatch(alpha=0.5, patch_size=4, seed=0)(data)
    assert packed.shape == (4, 3, 16, 16) and torch.equal(label, data["label"])
    real, chosen, mask = packed[:, :1], packed[:, 1:2], packed[:, 2:]
    assert torch.equal(real, data["image"]) and set(mask.unique().tolist()) <= {0.0, 1.0}
    for b in range(4):  # the synthetic channel is one of that image's own n versions
        assert any(torch.equal(chosen[b], s) for s in data["synthetic"][b])
    again, _ = PatchMixPrepareBatch(alpha=0.5, patch_size=4, seed=0)(data)
    assert torch.equal(packed, again)  # seeded
    with pytest.raises(InputError, match=r"'synthetic' must be \(B, n, C, H, W\)"):
        PatchMixPrepareBatch()({"image": data["image"], "synthetic": data["image"], "label": data["label"]})


def test_choices_cover_every_synthetic_version():
    data = batch(n=3)
    prepare = PatchMixPrepareBatch(alpha=0.0, patch_size=4, seed=3)
    seen = set()
    for _ in range(20):
        chosen = prepare(data)[0][:, 1:2]
        for b in range(4):
            seen |= {(b, k) for k in range(3) if torch.equal(chosen[b], data["synthetic"][b, k])}
    assert seen == {(b, k) for b in range(4) for k in range(3)}


def test_inferer_mixes_images_or_logits_by_the_formula():
    data = batch()
    packed, _ = PatchMixPrepareBatch(alpha=0.5, patch_size=4, seed=0)(data)
    real, synthetic, mask = packed[:, :1], packed[:, 1:2], packed[:, 2:]
    network = torch.nn.Conv2d(1, 2, 3, padding=1)
    with torch.no_grad():
        by_image = PatchMixInferer("image")(packed, network)
        by_logits = PatchMixInferer("logits")(packed, network)
    torch.testing.assert_close(by_image, network(mask * real + (1 - mask) * synthetic))
    torch.testing.assert_close(by_logits, mask * network(real) + (1 - mask) * network(synthetic))
    assert not torch.allclose(by_image, by_logits)  # a padded convolution is not pointwise: the two differ at seams
    torch.testing.assert_close(mix(real, synthetic, torch.ones_like(mask)), real)
    with pytest.raises(InputError, match="'mode'"):
        PatchMixInferer("features")
