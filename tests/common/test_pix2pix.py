"""The pix2pix baseline: network shapes, the loss against hand-computed values, learning, determinism, save/load."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from common import pix2pix
from common.errors import InputError
from common.transforms import encode_mask
from tests.shared_data import bundle_module

TINY_G = {"channels": (8, 16), "num_res_units": 0}
TINY_D = {"channels": 8, "num_layers_d": 2}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Two cores shared with a background training: competing torch threads make each step much slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def box_pairs(n: int, size: int = 16, num_classes: int = 2, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Pairs whose image is the mask itself in {-1, 1}: a mapping a conditional generator can learn in seconds."""
    rng = np.random.RandomState(seed)
    pairs = []
    for _ in range(n):
        label = np.zeros((1, size, size), np.int64)
        for cls in range(1, num_classes):
            y, x = rng.randint(0, size - 6, 2)
            h, w = rng.randint(3, 7, 2)
            label[0, y : y + h, x : x + w] = cls
        image = (label > 0).astype(np.float32) * 2 - 1
        pairs.append({"image": image, "label": label})
    return pairs


def stacked(pairs, key: str) -> torch.Tensor:
    return torch.as_tensor(np.stack([p[key] for p in pairs]))


def tiny_networks(seed: int = 0, condition_channels: int = 1) -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(seed)
    generator = pix2pix.build_generator(condition_channels, **TINY_G)
    discriminator = pix2pix.build_discriminator(condition_channels + 1, **TINY_D)
    return generator, discriminator


# --------------------------------------------------------------------------------------------------------------------
# networks
# --------------------------------------------------------------------------------------------------------------------


def test_generator_shape_and_tanh_range():
    generator = pix2pix.build_generator(2, channels=(8, 16), num_res_units=1)
    x = torch.randn(3, 2, 32, 32) * 50  # large inputs saturate a network without a final tanh far outside [-1, 1]
    with torch.no_grad():
        out = generator(x)
    assert out.shape == (3, 1, 32, 32)
    assert float(out.min()) >= -1.0 and float(out.max()) <= 1.0
    assert float(out.std()) > 0
    # the default four levels downsample by 8: 16x16 works, 20x20 is refused with the size named
    default = pix2pix.build_generator(1)
    assert pix2pix.generate_with_pix2pix(default, torch.zeros(2, 1, 16, 16)).shape == (2, 1, 16, 16)
    with pytest.raises(InputError, match="20x20"):
        pix2pix.generate_with_pix2pix(default, torch.zeros(1, 1, 20, 20))


def test_discriminator_gives_conditional_patch_logits():
    discriminator = pix2pix.build_discriminator(3, channels=8, num_layers_d=3).eval()
    condition, image = torch.randn(4, 2, 32, 32), torch.randn(4, 1, 32, 32)
    logits = pix2pix.discriminate(discriminator, condition, image)
    assert logits.shape == (4, 1, 2, 2)
    features = discriminator(torch.cat([condition, image], dim=1))
    assert isinstance(features, list) and len(features) > 1
    torch.testing.assert_close(logits, features[-1])
    # the condition matters: the same image under another condition is judged differently
    assert not torch.allclose(logits, pix2pix.discriminate(discriminator, -condition, image))


def test_mask_condition_encodes_binary_and_multiclass_labels():
    labels = torch.tensor([[[[0, 1], [2, 0]]]])
    binary = pix2pix.mask_condition(2)(labels.clamp(max=1), torch.zeros(1, 1, 2, 2))
    torch.testing.assert_close(binary, torch.tensor([[[[-1.0, 1.0], [1.0, -1.0]]]]))
    onehot = pix2pix.mask_condition(3)(labels, torch.zeros(1, 1, 2, 2))
    assert onehot.shape == (1, 3, 2, 2)
    torch.testing.assert_close(onehot.argmax(dim=1, keepdim=True), labels)


# --------------------------------------------------------------------------------------------------------------------
# loss
# --------------------------------------------------------------------------------------------------------------------


def test_losses_equal_hand_computed_values():
    loss = pix2pix.Pix2PixLoss()  # BCE, l1_weight 100 (the paper)
    real_logits = torch.zeros(1, 1, 1, 2)  # sigmoid 1/2
    fake_logits = torch.full((1, 1, 1, 2), math.log(3.0))  # sigmoid 3/4
    fake = torch.tensor([[[[0.5, -0.5]]]])
    real = torch.zeros(1, 1, 1, 2)
    g = loss.generator_loss(fake_logits, fake, real)
    # G: -log(3/4) + 100 * mean(|0.5|, |-0.5|)
    assert float(g["adversarial"]) == pytest.approx(math.log(4.0 / 3.0), abs=1e-6)
    assert float(g["l1"]) == pytest.approx(0.5, abs=1e-7)
    assert float(g["loss"]) == pytest.approx(math.log(4.0 / 3.0) + 50.0, abs=1e-5)
    # D: 0.5 * (-log(1/2) - log(1 - 3/4)) = 0.5 * (log 2 + log 4)
    d = loss.discriminator_loss(real_logits, fake_logits)
    assert float(d) == pytest.approx(1.5 * math.log(2.0), abs=1e-6)


def test_losses_match_bce_with_logits_and_weighted_l1():
    gen = torch.Generator().manual_seed(0)
    real_logits, fake_logits = torch.randn(2, 3, 1, 5, 5, generator=gen) * 3
    fake, real = torch.rand(2, 3, 1, 16, 16, generator=gen) * 2 - 1
    loss = pix2pix.Pix2PixLoss(l1_weight=7.0)
    g = loss.generator_loss(fake_logits, fake, real)
    expected_adv = F.binary_cross_entropy_with_logits(fake_logits, torch.ones_like(fake_logits))
    torch.testing.assert_close(g["adversarial"], expected_adv)
    torch.testing.assert_close(g["loss"], expected_adv + 7.0 * F.l1_loss(fake, real))
    expected_d = 0.5 * (
        F.binary_cross_entropy_with_logits(real_logits, torch.ones_like(real_logits))
        + F.binary_cross_entropy_with_logits(fake_logits, torch.zeros_like(fake_logits))
    )
    torch.testing.assert_close(loss.discriminator_loss(real_logits, fake_logits), expected_d)
    with pytest.raises(InputError, match="criterion"):
        pix2pix.Pix2PixLoss(criterion="wasserstein")
    with pytest.raises(InputError, match="l1_weight"):
        pix2pix.Pix2PixLoss(l1_weight=-1.0)


# --------------------------------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------------------------------


def eval_l1(generator, pairs) -> float:
    conditions = encode_mask(stacked(pairs, "label"), 2)
    return float((pix2pix.generate_with_pix2pix(generator, conditions) - stacked(pairs, "image")).abs().mean())


def test_training_learns_an_identity_mapping():
    pairs = box_pairs(16)
    generator, discriminator = tiny_networks()
    before = eval_l1(generator, pairs)
    result = pix2pix.train_pix2pix(
        generator, discriminator, pairs, pix2pix.mask_condition(2), iterations=80, batch_size=8, lr=1e-3
    )
    after = eval_l1(generator, pairs)
    assert set(result) == {"generator_loss", "adversarial_loss", "discriminator_loss", "l1", "seconds"}
    assert all(math.isfinite(v) for v in result.values())
    assert before > 0.8  # untrained: far from the target
    assert after < 0.5 * before, (before, after)
    assert result["l1"] < 0.5 * before
    assert result["generator_loss"] == pytest.approx(result["adversarial_loss"] + 100.0 * result["l1"], rel=1e-5)
    assert not generator.training and not discriminator.training


def test_training_is_deterministic_for_a_seed():
    pairs = box_pairs(8)
    initial = tiny_networks()
    rng_before = torch.random.get_rng_state()

    def run(seed: int) -> dict[str, torch.Tensor]:
        generator, discriminator = copy.deepcopy(initial)
        pix2pix.train_pix2pix(
            generator, discriminator, pairs, pix2pix.mask_condition(2), iterations=6, batch_size=4, seed=seed
        )
        return generator.state_dict()

    first, second, other = run(0), run(0), run(1)
    assert torch.equal(torch.random.get_rng_state(), rng_before)  # the global RNG is left alone
    for key in first:
        torch.testing.assert_close(first[key], second[key], rtol=0, atol=0)
    assert any(not torch.equal(first[key], other[key]) for key in first)  # the seed does steer the run


def test_training_with_one_hot_label_maps():
    pairs = box_pairs(4, num_classes=3)
    generator, discriminator = tiny_networks(condition_channels=3)
    result = pix2pix.train_pix2pix(
        generator, discriminator, pairs, pix2pix.mask_condition(3), iterations=2, batch_size=2
    )
    assert math.isfinite(result["generator_loss"])
    out = pix2pix.generate_with_pix2pix(generator, encode_mask(stacked(pairs, "label"), 3))
    assert out.shape == (4, 1, 16, 16)


@pytest.mark.parametrize("bad", [0, -3, 2.5, "10", True])
def test_bad_iterations_and_batch_size_are_named(bad):
    generator, discriminator = tiny_networks()
    pairs = box_pairs(2)
    with pytest.raises(InputError, match="'iterations'"):
        pix2pix.train_pix2pix(generator, discriminator, pairs, pix2pix.mask_condition(2), iterations=bad)
    with pytest.raises(InputError, match="'batch_size'"):
        pix2pix.train_pix2pix(generator, discriminator, pairs, pix2pix.mask_condition(2), 2, batch_size=bad)


def test_empty_pairs_and_bad_condition_are_input_errors():
    generator, discriminator = tiny_networks()
    with pytest.raises(InputError, match="pairs"):
        pix2pix.train_pix2pix(generator, discriminator, [], pix2pix.mask_condition(2), iterations=1)
    with pytest.raises(InputError, match="condition_fn"):
        pix2pix.train_pix2pix(
            generator, discriminator, box_pairs(2), lambda labels, images: images[:, 0], iterations=1, batch_size=2
        )


# --------------------------------------------------------------------------------------------------------------------
# save, load, generate
# --------------------------------------------------------------------------------------------------------------------


def test_save_load_round_trip(tmp_path):
    pairs = box_pairs(4)
    generator, discriminator = tiny_networks()
    pix2pix.train_pix2pix(generator, discriminator, pairs, pix2pix.mask_condition(2), iterations=2, batch_size=2)
    path = tmp_path / "models" / "pix2pix.pt"
    pix2pix.save_pix2pix(generator, path, in_channels=1, **TINY_G)
    assert path.is_file() and [p.name for p in path.parent.iterdir()] == ["pix2pix.pt"]  # no temporary left
    loaded = pix2pix.load_pix2pix_generator(path)
    assert not loaded.training
    conditions = encode_mask(stacked(pairs, "label"), 2)
    expected = pix2pix.generate_with_pix2pix(generator, conditions)
    torch.testing.assert_close(pix2pix.generate_with_pix2pix(loaded, conditions), expected, rtol=0, atol=0)
    # batching does not change the result (instance norm is per sample)
    torch.testing.assert_close(pix2pix.generate_with_pix2pix(loaded, conditions, batch_size=3), expected)
    assert float(expected.abs().max()) <= 1.0

    missing = tmp_path / "nowhere" / "g.pt"
    with pytest.raises(InputError, match=str(missing)):
        pix2pix.load_pix2pix_generator(missing)
    with pytest.raises(InputError, match="config"):
        pix2pix.save_pix2pix(generator, tmp_path / "bad.pt", in_channels=1, widths=(8, 16))
    assert not (tmp_path / "bad.pt").exists()


def test_generate_restores_training_mode():
    generator = pix2pix.build_generator(1, **TINY_G).train()
    out = pix2pix.generate_with_pix2pix(generator, np.zeros((2, 1, 16, 16), np.float32))
    assert out.shape == (2, 1, 16, 16) and not out.requires_grad
    assert generator.training
    with pytest.raises(InputError, match="'batch_size'"):
        pix2pix.generate_with_pix2pix(generator, torch.zeros(1, 1, 16, 16), batch_size=0)


def test_fit_label_to_image_trains_once_and_the_sampler_writes_pairs(tmp_path):
    from common.generation import generate_pairs
    from common.writers import PairWriter

    pairs = box_pairs(4, size=32)  # the 3-layer PatchGAN needs at least 32x32
    path = tmp_path / "p2p" / "generator.pt"
    kwargs = {"iterations": 2, "channels": (8, 16), "discriminator_channels": 8, "batch_size": 2}
    generator = pix2pix.fit_label_to_image(path, pairs, 2, **kwargs)
    assert path.is_file()
    stamp = path.stat().st_mtime_ns
    again = pix2pix.fit_label_to_image(path, pairs, 2, **kwargs)  # loaded, not retrained
    assert path.stat().st_mtime_ns == stamp
    for a, b in zip(generator.state_dict().values(), again.state_dict().values()):
        torch.testing.assert_close(a, b)

    sampler = pix2pix.Pix2PixSampler([p["label"] for p in pairs], num_classes=2)
    generate_pairs(again, sampler, str(tmp_path / "out"), num_pairs=3, image_size=32, batch_size=2, num_classes=2)
    writer = PairWriter(str(tmp_path / "out"), num_classes=2)
    for i in range(3):
        image, label = writer.read(i)
        np.testing.assert_array_equal(label, np.asarray(pairs[i]["label"]))  # pair i is label map i, unchanged
    with pytest.raises(InputError, match="at least one label map"):
        pix2pix.Pix2PixSampler([], 2)


def test_edge_to_image_pix2pix_sees_the_canny_edges_of_the_real_image(tmp_path):
    canny_edges = bundle_module("diffboost", "edges").canny_edges
    from common.generation import generate_pairs
    from common.writers import PairWriter

    pairs = box_pairs(4, size=32)
    images = stacked(pairs, "image")
    condition = pix2pix.edge_condition(canny_edges)
    torch.testing.assert_close(condition(stacked(pairs, "label"), images), canny_edges(images))

    path = tmp_path / "edges" / "generator.pt"
    kwargs = {"channels": (8, 16), "discriminator_channels": 8, "batch_size": 2}
    generator = pix2pix.fit_pix2pix(path, pairs, condition, 1, 2, **kwargs)
    assert generator(torch.zeros(1, 1, 32, 32)).shape == (1, 1, 32, 32)  # one input channel: the edge map
    stamp = path.stat().st_mtime_ns
    pix2pix.fit_pix2pix(path, pairs, condition, 1, 2, **kwargs)
    assert path.stat().st_mtime_ns == stamp  # loaded, not retrained

    class ShowCondition(torch.nn.Module):
        """Outputs its input mapped to [-1, 1]: the written image is the condition the sampler built."""

        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(()))

        def forward(self, x):
            return x * 2 - 1 + self.weight

    sampler = pix2pix.Pix2PixSampler(
        [p["label"] for p in pairs], 2, images=[p["image"] for p in pairs], condition_fn=condition
    )
    generate_pairs(ShowCondition(), sampler, str(tmp_path / "out"), num_pairs=4, image_size=32, batch_size=3)
    writer = PairWriter(str(tmp_path / "out"), num_classes=2)
    for i in range(4):
        image, label = writer.read(i)
        expected = canny_edges(torch.as_tensor(pairs[i]["image"])[None])[0].numpy() * 2 - 1
        np.testing.assert_allclose(image, expected, atol=1 / 127)  # 8-bit PNG
        np.testing.assert_array_equal(label, pairs[i]["label"])
    with pytest.raises(InputError, match="needs the real 'images'"):
        pix2pix.Pix2PixSampler([p["label"] for p in pairs], 2, condition_fn=condition)
    with pytest.raises(InputError, match="4 label maps but 1 images"):
        pix2pix.Pix2PixSampler([p["label"] for p in pairs], 2, images=[pairs[0]["image"]])
