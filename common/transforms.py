"""Array math shared by data loading, training and generation; no file I/O and no input validation beyond types.

* Intensities live in [-1, 1] everywhere in the models: :func:`uint8_to_unit`, :func:`window_to_unit` and
  :func:`percentile_to_unit` map the three kinds of source data there, :func:`to_uint8` maps back for PNG output.
* Masks are stored as integer class maps and enter a diffusion model through :func:`encode_mask` (one {-1, 1}
  channel for binary masks, one-hot otherwise); :func:`decode_mask` turns continuous model output back into classes.
* :func:`resize_image` / :func:`resize_label` and :func:`slice_affine` / :func:`resized_affine` keep 2D arrays cut
  from volumes together with an affine that is still correct for the stored (resized) array, so generated slices can
  be written as NIfTI with a sensible geometry.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from monai.data.meta_tensor import MetaTensor
from monai.networks.utils import one_hot
from monai.transforms import Resize, ScaleIntensityRange

from common.errors import InputError

__all__ = [
    "mask_channels",
    "encode_mask",
    "decode_mask",
    "to_uint8",
    "uint8_to_unit",
    "window_to_unit",
    "unit_to_window",
    "percentile_range",
    "scale_to_unit",
    "percentile_to_unit",
    "rgb_to_grey",
    "resize_image",
    "resize_label",
    "slice_affine",
    "resized_affine",
    "semantic_edges",
]

ArrayLike = torch.Tensor | np.ndarray


def mask_channels(num_classes: int) -> int:
    """Channels of an encoded mask: 1 for binary masks (foreground only), ``num_classes`` for one-hot labels."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
        raise InputError(f"num_classes must be an integer >= 2 (background + at least one class), got {num_classes!r}.")
    return 1 if num_classes == 2 else int(num_classes)


def encode_mask(label: torch.Tensor, num_classes: int = 2) -> torch.Tensor:
    """(B, 1, *spatial) class indices -> (B, C, *spatial) float in {-1, 1}, the form in which a mask is diffused.

    Binary masks use one foreground channel (C = 1); multi-class labels are one-hot (C = ``num_classes``), so that
    every class is a separate, equally scaled channel and the decoder can take an argmax.
    """
    channels = mask_channels(num_classes)
    label = torch.as_tensor(label)
    if label.ndim < 3 or label.shape[1] != 1:
        raise ValueError(f"encode_mask expects labels of shape (B, 1, *spatial), got {tuple(label.shape)}.")
    if channels == 1:
        return (label > 0).to(torch.float32) * 2.0 - 1.0
    label = label.long()
    if label.numel() and (int(label.min()) < 0 or int(label.max()) >= num_classes):
        raise ValueError(
            f"encode_mask got class indices {int(label.min())}..{int(label.max())} outside 0..{num_classes - 1}."
        )
    return one_hot(label, num_classes=num_classes, dim=1, dtype=torch.float32) * 2.0 - 1.0


def decode_mask(encoded: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`encode_mask` for noisy or continuous output: threshold at 0 (C == 1) or argmax (C > 1)."""
    encoded = torch.as_tensor(encoded)
    if encoded.ndim < 3:
        raise ValueError(f"decode_mask expects (B, C, *spatial), got {tuple(encoded.shape)}.")
    if encoded.shape[1] == 1:
        return (encoded > 0).to(torch.int64)
    return torch.argmax(encoded, dim=1, keepdim=True).to(torch.int64)


def to_uint8(image: ArrayLike) -> np.ndarray:
    """[-1, 1] -> uint8 0..255 (clipped, rounded; NaN -> 0) for PNG output and previews."""
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().float().numpy()
    array = np.nan_to_num(np.asarray(image, dtype=np.float32), nan=-1.0, posinf=1.0, neginf=-1.0)
    return np.rint((np.clip(array, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)


def uint8_to_unit(image: ArrayLike) -> ArrayLike:
    """8-bit intensities -> [-1, 1] with the fixed map x / 127.5 - 1, so brightness is comparable across images."""
    if isinstance(image, torch.Tensor):
        return image.to(torch.float32) / 127.5 - 1.0
    return np.asarray(image, dtype=np.float32) / np.float32(127.5) - np.float32(1.0)


def _scale(image: ArrayLike, low: float, high: float) -> ArrayLike:
    """MONAI's ScaleIntensityRange [low, high] -> [-1, 1] with clipping, returned as the input's type (numpy/tensor)."""
    out = ScaleIntensityRange(a_min=low, a_max=high, b_min=-1.0, b_max=1.0, clip=True, dtype=np.float32)(image)
    if isinstance(image, torch.Tensor):
        return out if isinstance(image, MetaTensor) or not isinstance(out, MetaTensor) else out.as_tensor()
    return np.asarray(out.detach().cpu().numpy() if isinstance(out, torch.Tensor) else out, dtype=np.float32)


def window_to_unit(image: ArrayLike, level: float, width: float) -> ArrayLike:
    """Clip to the intensity window (e.g. CT level 40, width 400 HU) and map it linearly onto [-1, 1]."""
    if not width > 0:
        raise ValueError(f"intensity window width must be > 0, got {width!r}.")
    low, high = float(level) - float(width) / 2.0, float(level) + float(width) / 2.0
    return _scale(image, low, high)


def unit_to_window(image: ArrayLike, level: float, width: float) -> ArrayLike:
    """The inverse of :func:`window_to_unit`: [-1, 1] back to the window's units (e.g. Hounsfield units). Values the
    window clipped when the model was trained stay at its bounds."""
    if not width > 0:
        raise ValueError(f"intensity window width must be > 0, got {width!r}.")
    return (image + 1.0) * (float(width) / 2.0) + (float(level) - float(width) / 2.0)


def percentile_range(image: ArrayLike, lower: float = 0.5, upper: float = 99.5) -> tuple[float, float]:
    """Robust (low, high) intensity bounds; falls back to the full min/max when the percentiles coincide."""
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    array = np.asarray(image)
    low, high = (float(v) for v in np.percentile(array, [lower, upper]))
    if high <= low:
        low, high = float(array.min()), float(array.max())
    return low, high


def scale_to_unit(image: ArrayLike, low: float, high: float) -> ArrayLike:
    """Clip to [low, high] and map linearly onto [-1, 1]; a degenerate range (high <= low) maps everything to -1."""
    if high <= low:
        if isinstance(image, torch.Tensor):
            return torch.full_like(image, -1.0, dtype=torch.float32)
        return np.full(np.shape(image), -1.0, dtype=np.float32)
    return _scale(image, low, high)


def percentile_to_unit(image: ArrayLike, lower: float = 0.5, upper: float = 99.5) -> np.ndarray:
    """Robust min-max to [-1, 1] between two percentiles, for data without a natural range (16-bit, MR, CT w/o window).

    Falls back to the full min/max when the percentiles coincide; a constant image maps to -1.
    """
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    array = np.asarray(image, dtype=np.float32)
    return scale_to_unit(array, *percentile_range(array, lower, upper))


def rgb_to_grey(image: np.ndarray, channel_axis: int = -1) -> np.ndarray:
    """RGB(A) -> luma (ITU-R 601-2 weights, as PIL's ``convert("L")``); alpha is dropped, integer dtypes are kept."""
    array = np.moveaxis(np.asarray(image), channel_axis, -1)
    grey = array[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    if np.issubdtype(array.dtype, np.integer):
        info = np.iinfo(array.dtype)
        return np.clip(np.rint(grey), info.min, info.max).astype(array.dtype)
    return grey.astype(array.dtype)


def _size_tuple(size: int | Sequence[int], ndim: int) -> tuple[int, ...]:
    return (int(size),) * ndim if isinstance(size, (int, np.integer)) else tuple(int(s) for s in size)


def resize_image(image: ArrayLike, size: int | Sequence[int]) -> np.ndarray:
    """(C, *spatial) image -> float32 array of ``size``: bilinear with anti-aliasing when shrinking.

    2D uses torch's antialiased bilinear filter (the PIL-style triangle filter): MONAI's Gaussian pre-smoothing
    convolves the full-size image with a kernel that grows with the shrink factor, and on ~600 ultrasound images
    that made loading cost more than a tiny training run. 3D keeps MONAI's ``Resize`` with Gaussian anti-aliasing,
    as torch has no antialiased trilinear mode.
    Interpolation is convex, so an input in [-1, 1] stays there (clipped anyway against rounding).
    """
    tensor = torch.as_tensor(np.asarray(image, dtype=np.float32))
    spatial = _size_tuple(size, tensor.ndim - 1)
    if tuple(tensor.shape[1:]) == spatial:
        return tensor.numpy().astype(np.float32, copy=True)
    if len(spatial) == 2:
        out = torch.nn.functional.interpolate(
            tensor[None], size=spatial, mode="bilinear", align_corners=False, antialias=True
        )[0]
    else:
        out = Resize(spatial_size=spatial, mode="trilinear", anti_aliasing=True)(tensor)
    return np.clip(np.asarray(out, dtype=np.float32), -1.0, 1.0)


def resize_label(label: ArrayLike, size: int | Sequence[int]) -> np.ndarray:
    """(C, *spatial) class map -> int64 array of ``size`` by pixel-centre nearest neighbour; classes stay intact."""
    tensor = torch.as_tensor(np.asarray(label, dtype=np.float32))
    spatial = _size_tuple(size, tensor.ndim - 1)
    if tuple(tensor.shape[1:]) != spatial:
        tensor = torch.as_tensor(Resize(spatial_size=spatial, mode="nearest-exact")(tensor))
    return np.rint(tensor.numpy()).astype(np.int64)


def slice_affine(affine: np.ndarray, slice_axis: int, index: int) -> np.ndarray:
    """Affine of slice ``index`` along ``slice_axis`` of a volume, for the 2D array stored as (rows, cols, 0).

    Columns are reordered to (in-plane axes in order, slice axis) and the origin moves to the slice.
    """
    affine = np.asarray(affine, dtype=np.float64)
    in_plane = [d for d in range(3) if d != slice_axis]
    out = np.eye(4)
    out[:, :3] = affine[:, [*in_plane, slice_axis]]
    out[:3, 3] = affine[:3, 3] + index * affine[:3, slice_axis]
    return out


def resized_affine(affine: np.ndarray, in_size: Sequence[int], out_size: Sequence[int]) -> np.ndarray:
    """Update an affine for a resize of its first ``len(in_size)`` axes (pixel centres, align_corners=False)."""
    out = np.asarray(affine, dtype=np.float64).copy()
    for axis, (n_in, n_out) in enumerate(zip(in_size, out_size)):
        scale = float(n_in) / float(n_out)
        out[:3, 3] += out[:3, axis] * (scale - 1.0) / 2.0
        out[:3, axis] *= scale
    return out


def semantic_edges(label: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) class indices -> (B, 1, H, W) float {0, 1}: 1 where a 4-neighbour has another class.

    The semantic edge map of the edge-guided CT model (paper 004): every boundary between two classes, on both sides.
    """
    label = torch.as_tensor(label)
    if label.ndim != 4 or label.shape[1] != 1:
        raise ValueError(f"semantic_edges expects labels of shape (B, 1, H, W), got {tuple(label.shape)}.")
    x = label.float()
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1), mode="replicate")
    centre = padded[..., 1:-1, 1:-1]
    neighbours = (padded[..., :-2, 1:-1], padded[..., 2:, 1:-1], padded[..., 1:-1, :-2], padded[..., 1:-1, 2:])
    edge = torch.zeros_like(centre, dtype=torch.bool)
    for n in neighbours:
        edge |= n != centre
    return edge.to(torch.float32)
