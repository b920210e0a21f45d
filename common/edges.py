"""Edge maps for edge-conditioned synthesis (DiffBoost's ControlNet input, paper 003).

* :func:`canny_edges`: an offline Canny detector (Gaussian smoothing, Sobel gradients, non-maximum suppression,
  hysteresis between two thresholds relative to each image's strongest gradient), batched in torch. The paper used
  HED, a learned detector whose weights are not available offline; Canny is the usual weight-free stand-in.
* :func:`mask_edges`: the boundary of a segmentation mask, the edge map of the task fine-tuning stage (edges derived
  from the mask, so a generated image follows the real label it is paired with).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from monai.networks.layers import GaussianFilter

from common.transforms import semantic_edges

__all__ = ["canny_edges", "mask_edges"]

_SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])


def _check(image: torch.Tensor) -> torch.Tensor:
    image = torch.as_tensor(image)
    if image.ndim != 4 or image.shape[1] != 1:
        raise ValueError(f"edge detection expects (B, 1, H, W) images, got {tuple(image.shape)}.")
    return image.float()


def canny_edges(image: torch.Tensor, sigma: float = 1.0, low: float = 0.1, high: float = 0.25) -> torch.Tensor:
    """(B, 1, H, W) images -> (B, 1, H, W) float {0, 1} one-pixel-wide edges.

    ``low`` and ``high`` are fractions of each image's largest gradient magnitude: pixels above ``high`` are edges,
    pixels above ``low`` are edges when connected (8-neighbourhood) to one. A flat image has no edges.
    """
    if not 0.0 <= low <= high <= 1.0:
        raise ValueError(f"need 0 <= low <= high <= 1, got low={low}, high={high}.")
    x = _check(image)
    if sigma > 0:  # replicate the border first: zero padding would draw an edge around every image
        margin = math.ceil(4 * sigma)
        x = GaussianFilter(spatial_dims=2, sigma=sigma)(F.pad(x, (margin,) * 4, mode="replicate"))
        x = x[..., margin:-margin, margin:-margin]
    padded = F.pad(x, (1, 1, 1, 1), mode="replicate")
    sobel = _SOBEL_X.to(x)
    gx = F.conv2d(padded, sobel.view(1, 1, 3, 3))
    gy = F.conv2d(padded, sobel.t().contiguous().view(1, 1, 3, 3))
    magnitude = torch.hypot(gx, gy)
    # quantise relative to each image's peak so that float noise (which differs with batch size) cannot break the
    # ties between the two pixels either side of a step edge
    scale = magnitude.flatten(1).amax(dim=1).view(-1, 1, 1, 1)
    flat = scale <= 1e-6  # no gradient worth the name (images are in [-1, 1]): no edges
    magnitude = torch.round(magnitude / scale.clamp(min=1e-12) * 1e4) / 1e4

    # non-maximum suppression along the gradient direction, quantised to 0, 45, 90, 135 degrees
    angle = torch.rad2deg(torch.atan2(gy, gx)) % 180.0
    sector = torch.round(angle / 45.0).long() % 4
    offsets = ((0, 1), (1, 1), (1, 0), (1, -1))  # (dy, dx) of the neighbour along the gradient for each sector
    mag_padded = F.pad(magnitude, (1, 1, 1, 1))
    height, width = magnitude.shape[-2:]
    keep = torch.zeros_like(magnitude, dtype=torch.bool)
    for k, (dy, dx) in enumerate(offsets):
        ahead = mag_padded[..., 1 + dy : 1 + dy + height, 1 + dx : 1 + dx + width]
        behind = mag_padded[..., 1 - dy : 1 - dy + height, 1 - dx : 1 - dx + width]
        keep |= (sector == k) & (magnitude > ahead) & (magnitude >= behind)  # ties: keep the first of two
    thin = magnitude * keep

    peak = thin.flatten(1).amax(dim=1).view(-1, 1, 1, 1)
    strong = (thin >= high * peak) & ~flat
    weak = (thin >= low * peak) & ~flat
    edges = strong
    for _ in range(math.ceil(math.hypot(height, width))):  # grow strong edges along weak ones until stable
        grown = (F.max_pool2d(edges.float(), 3, stride=1, padding=1) > 0) & weak
        if torch.equal(grown, edges):
            break
        edges = grown
    return edges.float()


def mask_edges(label: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) class indices -> (B, 1, H, W) float {0, 1}: pixels on a class boundary (both sides)."""
    return semantic_edges(label)
