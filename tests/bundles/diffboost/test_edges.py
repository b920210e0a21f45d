"""Edge maps of known shapes: where Canny puts the edges of a square, what it ignores, and mask boundaries; HED's
weight layout, loading and side-output fusion."""

from __future__ import annotations

import pytest
import torch

from common.errors import InputError
from tests.shared_data import bundle_module

EDGES = bundle_module("diffboost", "edges")
HEDEdges, canny_edges, mask_edges = (EDGES.HEDEdges, EDGES.canny_edges, EDGES.mask_edges)


def square(size: int = 32, lo: int = 8, hi: int = 24) -> torch.Tensor:
    image = -torch.ones(1, 1, size, size)
    image[..., lo:hi, lo:hi] = 1.0
    return image


def test_canny_finds_the_outline_of_a_square_and_nothing_else():
    edges = canny_edges(square())[0, 0]
    assert set(edges.unique().tolist()) == {0.0, 1.0}
    ys, xs = torch.nonzero(edges, as_tuple=True)
    # every edge pixel lies within one pixel of the square's boundary (rows/cols 7.5 and 23.5)
    near = (
        ((ys - 7.5).abs() <= 1.5) | ((ys - 23.5).abs() <= 1.5) | ((xs - 7.5).abs() <= 1.5) | ((xs - 23.5).abs() <= 1.5)
    )
    assert bool(near.all())
    assert edges[12:20, 12:20].sum() == 0 and edges[:4].sum() == 0  # flat inside and outside
    # each side is found along its whole straight part, one or two pixels wide (not a thick band)
    for row in range(10, 22):
        assert 1 <= edges[row, 5:11].sum() <= 2 and 1 <= edges[row, 21:27].sum() <= 2


def test_canny_of_a_flat_image_is_empty_and_the_batch_is_independent():
    batch = torch.cat([square(), torch.zeros(1, 1, 32, 32)])
    edges = canny_edges(batch)
    assert edges.shape == (2, 1, 32, 32) and edges[1].sum() == 0
    torch.testing.assert_close(edges[:1], canny_edges(square()))


def test_thresholds_control_how_much_is_kept():
    torch.manual_seed(0)
    noisy = square() + 0.3 * torch.randn(1, 1, 32, 32)
    loose, strict = canny_edges(noisy, low=0.05, high=0.1), canny_edges(noisy, low=0.3, high=0.6)
    assert loose.sum() > strict.sum() > 0
    assert bool((strict <= loose).all())  # stricter thresholds keep a subset
    with pytest.raises(ValueError, match="low <= high"):
        canny_edges(square(), low=0.5, high=0.2)
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        canny_edges(torch.zeros(32, 32))


def test_mask_edges_are_the_label_boundary():
    label = (square() > 0).long()
    edges = mask_edges(label)[0, 0]
    assert edges[8:24, 8:24].sum() == edges[8:24, 8:24].numel() - 14 * 14  # the inner ring of the square
    assert edges[7, 8:24].sum() == 16 and edges[0].sum() == 0  # and the outer ring, nothing far away


def test_hed_parameters_follow_controlnets_annotator_layout():
    state = HEDEdges().state_dict()
    expected = {"norm": (1, 3, 1, 1)}
    for number, (a, b, layers) in enumerate([(3, 64, 2), (64, 128, 2), (128, 256, 3), (256, 512, 3), (512, 512, 3)], 1):
        for i in range(layers):
            expected[f"block{number}.convs.{i}.weight"] = (b, a if i == 0 else b, 3, 3)
            expected[f"block{number}.convs.{i}.bias"] = (b,)
        expected[f"block{number}.projection.weight"] = (1, b, 1, 1)
        expected[f"block{number}.projection.bias"] = (1,)
    assert {k: tuple(v.shape) for k, v in state.items()} == expected


def test_hed_fuses_the_five_side_outputs_by_mean_and_sigmoid(tmp_path):
    state = {k: torch.zeros_like(v) for k, v in HEDEdges().state_dict().items()}
    # side 1 passes the red channel through (0..255), sides 2-5 are constants 1, 2, 3, 4
    state["block1.convs.0.weight"][0, 0, 1, 1] = 1.0
    state["block1.convs.1.weight"][0, 0, 1, 1] = 1.0
    state["block1.projection.weight"][0, 0] = 1.0
    for number in range(2, 6):
        state[f"block{number}.projection.bias"][0] = float(number - 1)
    state["norm"][:] = 100.0  # the annotator's mean subtraction
    path = tmp_path / "hed.pth"
    torch.save(state, path)
    detector = HEDEdges(path)
    image = torch.rand(2, 1, 16, 16) * 2 - 1
    expected = torch.sigmoid((torch.relu((image + 1) * 127.5 - 100) + 1 + 2 + 3 + 4) / 5)
    edges = detector(image)
    torch.testing.assert_close(edges, expected)
    assert edges.shape == (2, 1, 16, 16) and not detector.train().training  # always a fixed detector


def test_hed_weights_that_are_missing_or_of_another_layout_are_named(tmp_path):
    with pytest.raises(InputError, match="HED weights '.*nope.pth' do not exist"):
        HEDEdges(tmp_path / "nope.pth")
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(InputError, match="other.pth' do not fit ControlNet's HED layout"):
        HEDEdges(tmp_path / "other.pth")
