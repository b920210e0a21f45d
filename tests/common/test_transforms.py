"""Mask encoding, intensity maps and geometry helpers of common.transforms, against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from common.errors import InputError
from common.transforms import (
    decode_mask,
    encode_mask,
    mask_channels,
    percentile_to_unit,
    resize_image,
    resize_label,
    resized_affine,
    rgb_to_grey,
    slice_affine,
    to_uint8,
    uint8_to_unit,
    window_to_unit,
)
from tests.shared_data import bundle_module


def random_labels(num_classes: int, shape=(3, 1, 16, 12), seed: int = 0) -> torch.Tensor:
    return torch.randint(0, num_classes, shape, generator=torch.Generator().manual_seed(seed))


def test_mask_channels():
    assert mask_channels(2) == 1
    assert mask_channels(4) == 4
    assert mask_channels(14) == 14
    for bad in (1, 0, -3, True, 2.0, "2"):
        with pytest.raises(InputError, match="num_classes"):
            mask_channels(bad)
    assert issubclass(InputError, ValueError)


def test_encode_binary_is_one_channel_plus_minus_one_and_round_trips():
    label = random_labels(2)
    encoded = encode_mask(label, 2)
    assert encoded.shape == (3, 1, 16, 12) and encoded.dtype == torch.float32
    assert set(encoded.unique().tolist()) == {-1.0, 1.0}
    assert torch.equal(encoded, label.float() * 2 - 1)
    decoded = decode_mask(encoded)
    assert decoded.dtype == torch.int64 and torch.equal(decoded, label)
    # continuous model output: the sign decides, moderate noise does not flip it
    noisy = encoded + 0.9 * torch.rand_like(encoded) * -encoded.sign()
    assert torch.equal(decode_mask(noisy), label)


def test_encode_multiclass_is_one_hot_and_round_trips():
    label = random_labels(4, seed=1)
    encoded = encode_mask(label, 4)
    assert encoded.shape == (3, 4, 16, 12)
    assert set(encoded.unique().tolist()) == {-1.0, 1.0}
    assert torch.equal((encoded > 0).sum(dim=1), torch.ones(3, 16, 12, dtype=torch.long))
    assert torch.equal(encoded.argmax(dim=1, keepdim=True), label)
    assert torch.equal(decode_mask(encoded), label)
    noisy = encoded + 0.4 * torch.randn(encoded.shape, generator=torch.Generator().manual_seed(2))
    assert (decode_mask(noisy) == label).float().mean() > 0.9
    # CT-style 14 classes, every class present
    ct = torch.arange(14).view(1, 1, 2, 7)
    assert torch.equal(decode_mask(encode_mask(ct, 14)), ct)


def test_encode_rejects_bad_labels():
    with pytest.raises(ValueError, match="outside 0..3"):
        encode_mask(torch.full((1, 1, 4, 4), 4), 4)
    with pytest.raises(ValueError, match=r"\(B, 1"):
        encode_mask(torch.zeros(2, 3, 4, 4, dtype=torch.long), 3)
    with pytest.raises(ValueError, match="decode_mask"):
        decode_mask(torch.zeros(4, 4))


def test_to_uint8_range_rounding_and_clipping():
    values = torch.tensor([-5.0, -1.0, 0.0, 1.0, 7.0, float("nan"), 1 / 127.5 - 1])
    out = to_uint8(values)
    assert out.dtype == np.uint8
    assert out.tolist() == [0, 0, 128, 255, 255, 0, 1]
    assert to_uint8(np.linspace(-1, 1, 11)).min() == 0 and to_uint8(np.linspace(-1, 1, 11)).max() == 255
    every_byte = np.arange(256, dtype=np.uint8)
    assert np.array_equal(to_uint8(uint8_to_unit(every_byte)), every_byte)
    assert np.array_equal(to_uint8(uint8_to_unit(torch.as_tensor(every_byte))), every_byte)


def test_uint8_to_unit_is_a_fixed_map():
    out = uint8_to_unit(np.array([0, 51, 255], dtype=np.uint8))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [-1.0, 51 / 127.5 - 1, 1.0], atol=1e-6)


def test_window_to_unit_at_known_hu():
    hu = np.array([-1000, -160, -60, 40, 140, 240, 3000], dtype=np.int32)
    out = window_to_unit(hu, level=40, width=400)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    np.testing.assert_allclose(out, [-1, -1, -0.5, 0, 0.5, 1, 1], atol=1e-6)
    tensor_out = window_to_unit(torch.tensor([40.0, 440.0]), 40, 400)
    assert isinstance(tensor_out, torch.Tensor)
    np.testing.assert_allclose(tensor_out.numpy(), [0.0, 1.0], atol=1e-6)
    # brain window
    np.testing.assert_allclose(window_to_unit(np.array([0.0, 40.0, 80.0]), 40, 80), [-1, 0, 1], atol=1e-6)
    with pytest.raises(ValueError, match="width"):
        window_to_unit(hu, 40, 0)


def test_percentile_to_unit_is_robust_and_handles_constants():
    rng = np.random.default_rng(0)
    image = rng.normal(1000, 50, size=(64, 64)).astype(np.float32)
    image[0, 0] = 1e6  # a single hot pixel must not squash the rest
    out = percentile_to_unit(image)
    assert out.dtype == np.float32 and out.min() >= -1 and out.max() <= 1
    assert out.std() > 0.3
    assert np.all(percentile_to_unit(np.full((4, 4), 7, dtype=np.uint16)) == -1)
    sparse = np.zeros((100, 100), dtype=np.float32)
    sparse[:3, :3] = 5  # percentiles coincide: fall back to min/max
    assert percentile_to_unit(sparse).max() == 1


def test_rgb_to_grey_matches_pil():
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, size=(9, 7, 3), dtype=np.uint8)
    ours = rgb_to_grey(rgb)
    pil = np.asarray(Image.fromarray(rgb, "RGB").convert("L"))
    assert ours.dtype == np.uint8 and ours.shape == (9, 7)
    assert np.abs(ours.astype(int) - pil.astype(int)).max() <= 1
    rgba = np.concatenate([rgb, np.zeros((9, 7, 1), np.uint8)], axis=-1)
    assert np.array_equal(rgb_to_grey(rgba), ours)
    assert np.array_equal(rgb_to_grey(np.moveaxis(rgb, -1, 0), channel_axis=0), ours)


def test_resize_image_and_label():
    image = np.linspace(-1, 1, 40 * 60, dtype=np.float32).reshape(1, 40, 60)
    out = resize_image(image, (16, 24))
    assert out.shape == (1, 16, 24) and out.dtype == np.float32
    assert out.min() >= -1 and out.max() <= 1
    assert np.array_equal(resize_image(image, (40, 60)), image)
    label = np.kron(np.array([[0, 1], [2, 3]]), np.ones((8, 8), dtype=np.int64))[None]
    small = resize_label(label, 4)
    assert small.dtype == np.int64 and np.array_equal(small[0], np.kron([[0, 1], [2, 3]], np.ones((2, 2))))
    big = resize_label(np.array([[[0, 1], [2, 3]]]), (4, 4))
    assert np.array_equal(big[0], np.kron([[0, 1], [2, 3]], np.ones((2, 2))))


@pytest.mark.parametrize("shape,size", [((1, 64, 64), 8), ((1, 32, 32, 32), 4)])
def test_resize_image_averages_when_shrinking(shape, size):
    """Anti-aliasing: noise shrunk 8x is averaged (its spread collapses) rather than point-sampled (spread kept)."""
    noise = np.random.default_rng(0).uniform(-1, 1, shape).astype(np.float32)
    small = resize_image(noise, size)
    assert small.shape == (1, *(size,) * (len(shape) - 1))
    assert small.std() < 0.3 * noise.std()
    assert abs(small.mean() - noise.mean()) < 0.1


def test_slice_and_resized_affine():
    affine = np.array([[2.0, 0, 0, -10], [0, 3.0, 0, 20], [0, 0, 5.0, 30], [0, 0, 0, 1]])
    axial = slice_affine(affine, 2, 4)
    np.testing.assert_allclose(axial[:3, 3], [-10, 20, 50])
    np.testing.assert_allclose(axial[:3, :3], affine[:3, :3])
    sagittal = slice_affine(affine, 0, 1)
    np.testing.assert_allclose(sagittal[:3, :3], affine[:3, [1, 2, 0]])
    np.testing.assert_allclose(sagittal[:3, 3], [-8, 20, 30])
    # 4 voxels -> 2 voxels: spacing doubles, first centre moves by half an old voxel
    half = resized_affine(affine, (4, 6), (2, 3))
    np.testing.assert_allclose(np.diag(half)[:3], [4, 6, 5])
    np.testing.assert_allclose(half[:3, 3], [-9, 21.5, 30])
    # the physical extent (first edge to last edge) is preserved
    edge_before = affine[0, 3] - affine[0, 0] / 2
    edge_after = half[0, 3] - half[0, 0] / 2
    assert edge_before == pytest.approx(edge_after)


# ------------------------------------------------------------------------- semantic edges and the CT body class


def test_semantic_edges_mark_both_sides_of_every_class_boundary():
    from common.transforms import semantic_edges

    label = torch.zeros(1, 1, 8, 8, dtype=torch.long)
    label[..., 2:5, 2:5] = 1  # a 3x3 square: every pixel of it touches the outside except the centre
    label[..., 3, 3] = 2
    edges = semantic_edges(label)[0, 0]
    assert edges.dtype == torch.float32 and set(edges.unique().tolist()) == {0.0, 1.0}
    inner_ring = torch.zeros(8, 8, dtype=torch.bool)
    inner_ring[2:5, 2:5] = True  # the square (its centre is another class, so it is all edge)
    outer_ring = torch.zeros(8, 8, dtype=torch.bool)
    outer_ring[1:6, 2:5] = True
    outer_ring[2:5, 1:6] = True  # 4-neighbours of the square outside it
    assert torch.equal(edges.bool(), inner_ring | outer_ring)
    assert semantic_edges(torch.zeros(2, 1, 4, 4, dtype=torch.long)).sum() == 0
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        semantic_edges(torch.zeros(4, 4))


def ct_like_slice(size: int = 32) -> np.ndarray:
    """Air (-1) around an elliptical body (0.2) with a low-density hole (fat, -0.97) and a speck of noise outside."""
    yy, xx = np.mgrid[:size, :size]
    image = np.full((1, size, size), -1.0, np.float32)
    body = ((yy - size / 2) / (size * 0.35)) ** 2 + ((xx - size / 2) / (size * 0.45)) ** 2 <= 1
    image[0][body] = 0.2
    image[0, size // 2 - 1 : size // 2 + 1, size // 2 - 1 : size // 2 + 1] = -0.97  # below the threshold, inside
    image[0, 1, 1] = 0.5  # a one-pixel artefact in the air
    return image, body


def test_body_mask_keeps_the_largest_component_with_its_holes_filled():
    body_mask = bundle_module("ct_semantic_synthesis", "slices").body_mask

    image, body = ct_like_slice()
    mask = body_mask(image)
    assert mask.shape == (1, 32, 32) and mask.dtype == bool
    assert not mask[0, 1, 1]  # the speck is not the body
    assert mask[0, 16, 16]  # the hole is filled
    # opening trims the body's outline a little, never more than a pixel deep
    assert (mask[0] & ~body).sum() == 0 and (body & ~mask[0]).sum() < 0.1 * body.sum()
    assert body_mask(np.full((8, 8), -1.0)).sum() == 0  # all air: no body, 2D in, 2D out


def test_add_body_class_labels_body_outside_organs_as_a_new_class():
    add_body_class = bundle_module("ct_semantic_synthesis", "slices").add_body_class

    image, body = ct_like_slice()
    label = np.zeros((1, 32, 32), np.int64)
    label[0, 12:16, 12:16] = 2  # an organ inside the body
    pair = {"name": "s0", "image": image, "label": label}
    (out,) = add_body_class([pair], num_classes=3)
    assert pair["label"] is label and label.max() == 2  # the input is not modified
    assert set(np.unique(out["label"])) == {0, 2, 3}
    assert (out["label"][0, 12:16, 12:16] == 2).all()  # organs keep their class
    assert (out["label"][0][~body] == 0).all()  # air stays background
    assert (out["label"] == 3).sum() > 0.8 * (body.sum() - 16)
    with pytest.raises(InputError, match="s0.*class 2 >= num_classes 2"):
        add_body_class([pair], num_classes=2)
