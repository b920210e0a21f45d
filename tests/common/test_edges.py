"""Edge maps of known shapes: where Canny puts the edges of a square, what it ignores, and mask boundaries."""

from __future__ import annotations

import pytest
import torch

from common.edges import canny_edges, mask_edges


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
