"""Edge maps for edge-conditioned synthesis (DiffBoost's ControlNet input, paper 003).

* :func:`canny_edges`: an offline Canny detector (Gaussian smoothing, Sobel gradients, non-maximum suppression,
  hysteresis between two thresholds relative to each image's strongest gradient), batched in torch. The paper used
  HED, a learned detector whose weights are not available offline; Canny is the usual weight-free stand-in.
* :class:`HEDEdges`: HED (Xie & Tu, ICCV 2015) in the layout of ControlNet's annotator, for a user who has its weights
  (``ControlNetHED.pth``): five VGG-style stages, a 1x1 side output after each, side outputs upsampled to the image
  size, averaged and squashed by a sigmoid into soft edges in [0, 1].
* :func:`mask_edges`: the boundary of a segmentation mask, the edge map of the task fine-tuning stage (edges derived
  from the mask, so a generated image follows the real label it is paired with).
"""

from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F
from monai.networks.layers import GaussianFilter
from torch import nn

from common.errors import InputError
from common.transforms import semantic_edges

__all__ = ["canny_edges", "mask_edges", "HEDEdges", "edge_detector"]

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


class _HEDStage(nn.Module):
    """``layers`` 3x3 convolutions with ReLU (after a 2x2 max-pool when ``pool``) and a 1x1 side output."""

    def __init__(self, in_channels: int, out_channels: int, layers: int, pool: bool) -> None:
        super().__init__()
        self.pool = pool
        widths = [in_channels] + [out_channels] * layers
        self.convs = nn.Sequential(*(nn.Conv2d(a, b, 3, padding=1) for a, b in zip(widths[:-1], widths[1:])))
        self.projection = nn.Conv2d(out_channels, 1, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.pool:
            x = F.max_pool2d(x, 2, 2)
        for conv in self.convs:
            x = F.relu(conv(x))
        return x, self.projection(x)


class HEDEdges(nn.Module):
    """(B, 1, H, W) images in [-1, 1] -> (B, 1, H, W) soft HED edges in [0, 1], from user-supplied weights.

    Parameter names follow ControlNet's HED annotator (``norm``, ``block{1..5}.convs.{i}``, ``block{1..5}.projection``),
    so its ``ControlNetHED.pth`` loads as is (strictly: a file for another layout is refused). The network expects RGB
    in 0..255, so a greyscale image is repeated over three channels at that scale. Frozen, in eval mode; the output is
    on the input's device.
    """

    STAGES = ((3, 64, 2), (64, 128, 2), (128, 256, 3), (256, 512, 3), (512, 512, 3))

    def __init__(self, weights_path: str | os.PathLike | None = None) -> None:
        super().__init__()
        self.norm = nn.Parameter(torch.zeros(1, 3, 1, 1))
        for number, (a, b, layers) in enumerate(self.STAGES, start=1):
            self.add_module(f"block{number}", _HEDStage(a, b, layers, pool=number > 1))
        if weights_path is not None:
            path = os.fspath(weights_path)
            if not os.path.isfile(path):
                raise InputError(f"HED weights '{path}' do not exist (ControlNet's annotator file ControlNetHED.pth).")
            try:
                self.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            except (RuntimeError, KeyError, TypeError) as exc:
                raise InputError(f"HED weights '{path}' do not fit ControlNet's HED layout: {exc}") from exc
        self.requires_grad_(False).eval()

    def train(self, mode: bool = True) -> HEDEdges:
        return super().train(False)  # a fixed detector: never in training mode

    @torch.no_grad()
    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = _check(image)
        device = x.device
        height, width = x.shape[-2:]
        h = ((x.clamp(-1, 1) + 1) * 127.5).repeat(1, 3, 1, 1).to(self.norm.device) - self.norm
        sides = []
        for number in range(1, len(self.STAGES) + 1):
            h, side = getattr(self, f"block{number}")(h)
            sides.append(F.interpolate(side, size=(height, width), mode="bilinear", align_corners=False))
        return torch.sigmoid(torch.stack(sides).mean(dim=0)).to(device)


def edge_detector(hed_weights: str | os.PathLike | None = None, device: str | torch.device = "cpu"):
    """The image edge detector of a run: HED from ``hed_weights`` (ControlNet's ``ControlNetHED.pth``, the paper's
    detector) on ``device``, or Canny (:func:`canny_edges`) when no weights are given."""
    return HEDEdges(hed_weights).to(device) if hed_weights else canny_edges
