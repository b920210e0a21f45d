"""Paired image + mask data for the synthesis bundles: load the files once, validate, normalise.

The files come from :func:`common.datalists.build_datalist` (folder pairs, decathlon datalists, splits). Bundles call
:func:`load_dataset`; it returns plain dicts of numpy arrays (image float32 (1, H, W) in [-1, 1], label
int64 (1, H, W) class indices) that a MONAI ``Dataset``/``CacheDataset`` can wrap. Everything is read and checked up
front so that a bad file fails at start-up with one sentence naming it (:class:`DataError`), not hours into training.

Geometry conventions:

* 2D files (PNG/JPEG/BMP/TIFF, single DICOM files, NIfTI with one slice) keep their stored pixel order: rows x
  columns as a viewer shows them, so a PNG mask drawn over a DICOM image stays aligned.
* Volumes (3D NIfTI, DICOM series folders) are reoriented to RAS with MONAI's ``Orientation`` and cut into 2D slices
  along ``slice_axis``; image and label must then have the same RAS affine (checked), and every slice carries a 4x4
  affine that is correct for the stored, resized array.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from monai.data import NibabelReader, PILReader, PydicomReader, create_test_image_2d
from monai.data.meta_tensor import MetaTensor
from monai.transforms import LoadImage, Orientation

from common.datalists import (
    DataError,
    build_datalist,
    file_format,
    file_stem,
)
from common.errors import first_line
from common.transforms import (
    percentile_range,
    resize_image,
    resize_label,
    resized_affine,
    rgb_to_grey,
    scale_to_unit,
    slice_affine,
    uint8_to_unit,
    window_to_unit,
)

__all__ = [
    "DataError",  # of common.datalists, raised here too
    "build_datalist",  # of common.datalists: the files load_pairs reads
    "load_pairs",
    "synthetic_pairs",
    "load_dataset",
    "subset_indices",
    "file_format",
    "slab_split",
    "load_volume_slices",
]

logger = logging.getLogger(__name__)

_RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))
_FORMAT_NAMES = {"png": "a PNG/JPEG/BMP/TIFF image", "nifti": "NIfTI", "dicom": "DICOM"}


# --------------------------------------------------------------------------------------------------------------------
# loading and validation
# --------------------------------------------------------------------------------------------------------------------


def _to_grey(image: Any) -> Any:
    """PIL converter for images: colour and palette modes to 8-bit luma; 16-bit and float modes are kept."""
    return image.convert("L") if image.mode in ("RGB", "RGBA", "RGBX", "LA", "P", "PA", "CMYK", "YCbCr") else image


@lru_cache(maxsize=None)
def _loader(fmt: str, role: str) -> LoadImage:
    """One ``LoadImage`` per format and role; dtype=None keeps the stored dtype (uint8 decides the intensity map)."""
    if fmt == "png":
        # reverse_indexing=False: arrays are (rows, cols) like the file as displayed, not MONAI's (x, y).
        reader = PILReader(reverse_indexing=False, converter=_to_grey if role == "image" else None)
    elif fmt == "nifti":
        reader = NibabelReader()
    else:
        # swap_ij=False keeps (rows, cols) for single files; for series the RAS reorientation makes it irrelevant.
        reader = PydicomReader(swap_ij=False, prune_metadata=False)
    return LoadImage(reader=reader, image_only=True, ensure_channel_first=True, dtype=None)


def _read(path: str, role: str) -> tuple[MetaTensor, str]:
    if not os.path.exists(path):
        raise DataError(f"{role} '{path}' does not exist.")
    fmt = file_format(path)
    if fmt is None:
        raise DataError(
            f"{role} '{path}' has an unsupported file type "
            f"(expected PNG/JPEG/BMP/TIFF, NIfTI, DICOM or a DICOM folder)."
        )
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            warnings.filterwarnings("ignore", message=".*nvImageCodec")  # optional GPU decoder; pydicom decodes
            data = _loader(fmt, role)(path)
    except Exception as exc:  # readers raise many types (OSError, ImageFileError, InvalidDicomError, IndexError...)
        raise DataError(f"{role} '{path}' could not be read as {_FORMAT_NAMES[fmt]} ({first_line(exc)}).") from exc
    if fmt == "dicom" and not os.path.isdir(path) and data.ndim == 4 and int(_dicom_tag(data, "00280002", 1)) > 1:
        # single-file colour DICOM (e.g. ultrasound): samples are the last axis of the stored (rows, cols, samples)
        data = MetaTensor(rgb_to_grey(np.asarray(data.array)[0])[None], meta=data.meta)
    return data, fmt


def _dicom_tag(data: MetaTensor, tag: str, default: Any) -> Any:
    value = data.meta.get(tag)
    if isinstance(value, Mapping) and value.get("Value"):
        return value["Value"][0]
    return default


def _has_geometry(data: MetaTensor, fmt: str) -> bool:
    """NIfTI always has an affine; DICOM only with position/orientation tags (often absent in ultrasound files)."""
    if fmt == "nifti":
        return True
    return fmt == "dicom" and "00200037" in data.meta and "00200032" in data.meta


def _spatial_kind(data: MetaTensor, fmt: str, role: str, path: str, is_dir: bool) -> tuple[str, int | None]:
    """("2d", squeezed axis or None) or ("3d", None) from the loaded spatial shape."""
    shape = tuple(data.shape[1:])
    if len(shape) == 2:
        return "2d", None
    if len(shape) == 3 and fmt != "png":
        singletons = [i for i, n in enumerate(shape) if n == 1]
        if len(singletons) == 1:
            return "2d", singletons[0]
        if fmt == "dicom" and not is_dir:
            raise DataError(
                f"{role} '{path}' is a multi-frame DICOM file; put one frame per file in a series folder instead."
            )
        return "3d", None
    raise DataError(f"{role} '{path}' has spatial shape {shape}; expected a 2D image or a 3D volume.")


def _orient(data: MetaTensor) -> MetaTensor:
    return Orientation(axcodes="RAS", labels=_RAS_LABELS)(data)


def _check_image_values(image: np.ndarray, path: str) -> None:
    if np.issubdtype(image.dtype, np.floating) and not np.isfinite(image).all():
        bad = int((~np.isfinite(image)).sum())
        raise DataError(f"image '{path}' has {bad} NaN or infinite value(s).")


def _intensity_map(
    image: np.ndarray, intensity_window: tuple[float, float] | None
) -> Callable[[np.ndarray], np.ndarray]:
    """The file's map to [-1, 1], fixed once per file so all slices of a volume share one scale.

    Returned as a function so volumes are converted slice by slice (a float32 copy of a whole CT is not needed).
    """
    if intensity_window is not None:
        level, width = intensity_window
        return lambda x: np.asarray(window_to_unit(x.astype(np.float32), level, width), dtype=np.float32)
    if image.dtype == np.uint8:
        return uint8_to_unit
    low, high = percentile_range(image)
    return lambda x: np.asarray(scale_to_unit(x.astype(np.float32), low, high), dtype=np.float32)


def _class_map(label: np.ndarray, num_classes: int, path: str) -> np.ndarray:
    """Validate mask values and return class indices (binary 255 -> 1; multi-class kept as is)."""
    if label.dtype == np.bool_:
        label = label.astype(np.uint8)
    if np.issubdtype(label.dtype, np.floating):
        if not np.isfinite(label).all() or not np.array_equal(label, np.rint(label)):
            raise DataError(f"mask '{path}' has non-integer values; expected class indices.")
    values = np.unique(label)
    shown = ", ".join(str(int(v)) for v in values[:12]) + (", ..." if len(values) > 12 else "")
    if num_classes == 2:
        present = {int(v) for v in values}
        if present <= {0, 1}:
            return label.astype(np.uint8)
        if present <= {0, 255}:
            return (label == 255).astype(np.uint8)
        raise DataError(
            f"mask '{path}' has values [{shown}] but a binary mask (num_classes=2) must be {{0, 1}} or {{0, 255}}."
        )
    bad = values[(values < 0) | (values >= num_classes)]
    if len(bad):
        bad_shown = ", ".join(str(int(v)) for v in bad[:12]) + (", ..." if len(bad) > 12 else "")
        raise DataError(
            f"mask '{path}' has values [{bad_shown}] outside the expected 0..{num_classes - 1} "
            f"(num_classes={num_classes})."
        )
    # compact until slicing: a whole CT label volume in int64 would be 8x the stored size
    return label.astype(np.uint8 if num_classes <= 256 else np.int32)


def _image_size(image_size: int | Sequence[int] | None) -> tuple[int, int] | None:
    if image_size is None:
        return None
    size = (image_size, image_size) if isinstance(image_size, (int, np.integer)) else tuple(image_size)
    if len(size) != 2 or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s > 0 for s in size):
        raise DataError(f"image_size must be a positive integer or (height, width), got {image_size!r}.")
    return int(size[0]), int(size[1])


def _affines_match(a: np.ndarray, b: np.ndarray) -> bool:
    """Same grid within 1% of the smallest voxel size (header float32 rounding passes, flips and shifts do not)."""
    spacing = np.linalg.norm(a[:3, :3], axis=0)
    tol = 0.01 * float(spacing[spacing > 0].min()) if np.any(spacing > 0) else 1e-3
    return bool(np.allclose(a[:3], b[:3], rtol=0.0, atol=tol))


def _pair_from_2d(
    image: np.ndarray, label: np.ndarray, affine: np.ndarray | None, size: tuple[int, int] | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    if size is None or tuple(image.shape[1:]) == size:
        return image.astype(np.float32), label.astype(np.int64), affine
    new_affine = resized_affine(affine, image.shape[1:], size) if affine is not None else None
    return resize_image(image, size), resize_label(label, size), new_affine


def _load_one(
    item: Mapping[str, Any],
    index: int,
    size: tuple[int, int] | None,
    num_classes: int,
    slice_axis: int,
    skip_empty_slices: bool,
    intensity_window: tuple[float, float] | None,
) -> list[dict]:
    if not isinstance(item, Mapping) or "image" not in item or "label" not in item:
        raise DataError(f"datalist item {index} needs both an 'image' and a 'label' entry.")
    image_path, label_path = str(item["image"]), str(item["label"])
    name = str(item.get("name") or file_stem(image_path))
    image, fmt = _read(image_path, "image")
    label, label_fmt = _read(label_path, "mask")
    if image.shape[0] != 1:
        raise DataError(f"image '{image_path}' has {image.shape[0]} channels; expected a greyscale image.")
    if label.shape[0] != 1:
        raise DataError(
            f"mask '{label_path}' has {label.shape[0]} channels; expected a single-channel label map "
            f"(e.g. a greyscale or palette PNG)."
        )
    kind, squeeze_axis = _spatial_kind(image, fmt, "image", image_path, os.path.isdir(image_path))
    label_kind, label_squeeze = _spatial_kind(label, label_fmt, "mask", label_path, os.path.isdir(label_path))

    if kind == "3d" and label_kind == "3d":
        # Volumes are compared and sliced in RAS, so a LPS DICOM series and a LAS NIfTI label land on one grid.
        image, label = _orient(image), _orient(label)
        img_aff, lab_aff = image.affine.numpy(), label.affine.numpy()
        if image.shape[1:] == label.shape[1:] and not _affines_match(img_aff, lab_aff):
            raise DataError(
                f"image '{image_path}' and mask '{label_path}' have the same shape but different geometry "
                f"(RAS affines differ: origin {np.round(img_aff[:3, 3], 2).tolist()} vs "
                f"{np.round(lab_aff[:3, 3], 2).tolist()}), so they are not aligned."
            )
    affine = np.asarray(image.affine.numpy(), dtype=np.float64) if _has_geometry(image, fmt) else None
    image_array, label_array = np.asarray(image.array), np.asarray(label.array)
    if squeeze_axis is not None:
        image_array = np.squeeze(image_array, axis=1 + squeeze_axis)
        affine = slice_affine(affine, squeeze_axis, 0) if affine is not None else None
    if label_squeeze is not None:
        label_array = np.squeeze(label_array, axis=1 + label_squeeze)
    if image_array.shape[1:] != label_array.shape[1:]:
        raise DataError(
            f"image '{image_path}' has shape {tuple(image_array.shape[1:])} but its mask '{label_path}' has shape "
            f"{tuple(label_array.shape[1:])}."
        )

    _check_image_values(image_array, image_path)
    to_unit = _intensity_map(image_array, intensity_window)
    label_array = _class_map(label_array, num_classes, label_path)
    base = {"name": name, "format": fmt, "source": image_path}

    if kind == "2d":
        img, lab, aff = _pair_from_2d(to_unit(image_array), label_array, affine, size)
        return [{**base, "image": img, "label": lab, "slice": None, "affine": aff}]

    pairs = []
    for k in range(image_array.shape[1 + slice_axis]):
        lab2d = np.take(label_array, k, axis=1 + slice_axis)
        if skip_empty_slices and not lab2d.any():
            continue
        img2d = to_unit(np.take(image_array, k, axis=1 + slice_axis))
        aff2d = slice_affine(affine, slice_axis, k)
        img, lab, aff = _pair_from_2d(img2d, lab2d, aff2d, size)
        pairs.append({**base, "name": f"{name}_s{k:03d}", "image": img, "label": lab, "slice": k, "affine": aff})
    return pairs


def load_pairs(
    datalist: Sequence[Mapping[str, Any]],
    image_size: int | tuple[int, int] | None = 64,
    num_classes: int = 2,
    slice_axis: int = 2,
    skip_empty_slices: bool = False,
    intensity_window: tuple[float, float] | None = None,
) -> list[dict]:
    """Load, validate, normalise and resize every pair once, so training only indexes cached arrays.

    Returns ``[{"image": float32 (1, H, W) in [-1, 1], "label": int64 (1, H, W), "name", "format", "source",
    "slice", "affine"}]``. 2D files give one pair; volumes give one pair per slice along ``slice_axis`` (after RAS
    reorientation), named ``f"{stem}_s{k:03d}"``; ``skip_empty_slices`` drops volume slices with an all-zero label.
    Intensities: ``intensity_window=(level, width)`` clips and scales (CT); else uint8 -> x / 127.5 - 1; else a
    0.5/99.5 percentile min-max per file. ``affine`` maps (row, col, 0) of the stored array to RAS mm (None for
    PNG-like files).
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
        raise DataError(f"num_classes must be an integer >= 2, got {num_classes!r}.")
    if slice_axis not in (0, 1, 2, -1, -2, -3):
        raise DataError(f"slice_axis must be 0, 1 or 2 (2 = axial in RAS), got {slice_axis!r}.")
    slice_axis %= 3
    if intensity_window is not None:
        if len(intensity_window) != 2 or not float(intensity_window[1]) > 0:
            raise DataError(f"intensity_window must be (level, width) with width > 0, got {intensity_window!r}.")
        intensity_window = (float(intensity_window[0]), float(intensity_window[1]))
    size = _image_size(image_size)
    pairs: list[dict] = []
    for index, item in enumerate(datalist):
        pairs.extend(_load_one(item, index, size, int(num_classes), slice_axis, skip_empty_slices, intensity_window))
    return pairs


# --------------------------------------------------------------------------------------------------------------------
# synthetic default and the bundle entry point
# --------------------------------------------------------------------------------------------------------------------


def synthetic_pairs(num_pairs: int = 64, image_size: int | tuple[int, int] = 64, seed: int = 0) -> list[dict]:
    """Discs in noise from MONAI's ``create_test_image_2d``: a dataset-free default that exercises the whole pipeline.

    Intensities are quantised to 8 bits and mapped like a PNG (x / 127.5 - 1), so the model sees the same value grid
    as with real 8-bit data; radii scale with the image so that 32x32 and larger work.
    """
    height, width = _image_size(image_size) or (64, 64)
    if num_pairs < 1:
        raise DataError(f"num_synthetic must be >= 1, got {num_pairs!r}.")
    if min(height, width) < 16:
        raise DataError(f"image_size must be at least 16 for synthetic pairs, got {image_size!r}.")
    side = min(height, width)
    rad_max = max(3, side // 6)
    rad_min = max(2, side // 16)
    rng = np.random.RandomState(seed)
    pairs = []
    for i in range(num_pairs):
        image, seg = create_test_image_2d(
            height,
            width,
            num_objs=4,
            rad_max=rad_max,
            rad_min=rad_min,
            noise_max=0.3,
            num_seg_classes=1,
            random_state=rng,
        )
        pixels = np.rint(image * 255.0).astype(np.uint8)
        pairs.append(
            {
                "image": uint8_to_unit(pixels)[None],
                "label": (seg > 0).astype(np.int64)[None],
                "name": f"synthetic_{i:04d}",
                "format": "png",
                "source": "synthetic",
                "slice": None,
                "affine": None,
            }
        )
    return pairs


def subset_indices(n: int, max_pairs: int | None, seed: int = 0) -> list[int]:
    """Seeded subset of ``range(n)`` in original order; nested across sizes (the first k of one permutation)."""
    if max_pairs is None or max_pairs >= n:
        return list(range(n))
    return sorted(int(i) for i in np.random.default_rng(seed).permutation(n)[:max_pairs])


def _is_unset(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.strip() in ("", "None", "none", "null"))


def load_dataset(
    dataset_dir: str | os.PathLike | None = None,
    split: str | None = "train",
    image_size: int | tuple[int, int] | None = 64,
    num_classes: int = 2,
    datalist: str | os.PathLike | None = None,
    num_synthetic: int = 64,
    max_pairs: int | None = None,
    seed: int = 0,
    slice_axis: int = 2,
    skip_empty_slices: bool = False,
    intensity_window: tuple[float, float] | None = None,
    mask_dir: str | None = None,
) -> list[dict]:
    """What bundle configs call: real pairs from ``dataset_dir``/``datalist``, else :func:`synthetic_pairs`.

    ``max_pairs`` keeps a seeded random subset for few-shot regimes (same seed, same pairs; smaller subsets are
    contained in larger ones). With ``num_classes > 2`` and both ``masks/`` and ``labels/`` present, ``labels/`` is
    used (masks/ is the binary convention), unless ``mask_dir`` says otherwise.
    """
    if max_pairs is not None and (
        isinstance(max_pairs, bool) or not isinstance(max_pairs, (int, np.integer)) or max_pairs < 1
    ):
        raise DataError(f"max_pairs must be a positive integer or None, got {max_pairs!r}.")
    split = None if _is_unset(split) else split
    if _is_unset(dataset_dir) and _is_unset(datalist):
        pairs = synthetic_pairs(num_synthetic, image_size if image_size is not None else 64, seed)
        source, total = "synthetic discs (no dataset_dir)", len(pairs)
        pairs = [pairs[i] for i in subset_indices(total, max_pairs, seed)]
    else:
        root = None if _is_unset(dataset_dir) else Path(dataset_dir)
        if mask_dir is None and root is not None and num_classes > 2 and (root / "labels").is_dir():
            mask_dir = "labels"
        items = build_datalist(root, split, None if _is_unset(datalist) else datalist, mask_dir)
        source = str(datalist) if not _is_unset(datalist) else str(root)
        if max_pairs is not None and all(file_format(d["image"]) == "png" for d in items):
            # One pair per 2D raster file: subsetting the file list gives the same pairs without loading the rest.
            total = len(items)
            items = [items[i] for i in subset_indices(total, max_pairs, seed)]
            pairs = load_pairs(items, image_size, num_classes, slice_axis, skip_empty_slices, intensity_window)
        else:
            pairs = load_pairs(items, image_size, num_classes, slice_axis, skip_empty_slices, intensity_window)
            total = len(pairs)
            pairs = [pairs[i] for i in subset_indices(total, max_pairs, seed)]
    if not pairs:
        raise DataError(f"no pairs left from '{source}' (split {split!r}) after skipping empty slices.")
    formats = ", ".join(f"{n} {f}" for f, n in Counter(p["format"] for p in pairs).items())
    subset = f" (seeded subset of {total}, seed {seed})" if len(pairs) < total else ""
    logger.info("Loaded %d pairs%s [%s] from %s, split %s.", len(pairs), subset, formats, source, split)
    return pairs


def slab_split(
    pairs: Sequence[Mapping[str, Any]],
    split: str,
    fractions: Mapping[str, float] | None = None,
    gap: int = 2,
) -> list[dict]:
    """One contiguous slab of a volume's slices: neighbouring slices are nearly identical, so a random slice split
    leaks the test set into training. Slices keep their volume order; ``gap`` slices are left out between slabs.

    ``fractions`` (default train 0.7, val 0.1, test 0.2, in that order along the slice axis) must sum to <= 1.
    Pairs of several volumes are split per volume (each volume contributes its slab of each split).
    """
    fractions = dict(fractions or {"train": 0.7, "val": 0.1, "test": 0.2})
    if split not in fractions:
        raise DataError(f"split '{split}' is not one of the slabs {list(fractions)}.")
    if any(f < 0 for f in fractions.values()) or sum(fractions.values()) > 1 + 1e-9:
        raise DataError(f"slab fractions must be >= 0 and sum to <= 1, got {fractions}.")
    by_volume: dict[str, list[Mapping[str, Any]]] = {}
    for pair in pairs:
        if pair.get("slice") is None:
            raise DataError(f"slab_split needs slices of volumes; '{pair.get('name', '?')}' is a 2D image.")
        by_volume.setdefault(str(pair.get("source", "")), []).append(pair)
    chosen: list[dict] = []
    for slices in by_volume.values():
        slices = sorted(slices, key=lambda p: p["slice"])
        usable, start = max(0, len(slices) - gap * (len(fractions) - 1)), 0  # fractions of what the gaps leave
        for name, fraction in fractions.items():
            count = int(round(fraction * usable))
            if name == split:
                chosen.extend(dict(p) for p in slices[start : start + count])
            start += count + gap
    if not chosen:
        raise DataError(f"the '{split}' slab is empty: too few slices ({len(pairs)}) for fractions {fractions}.")
    return chosen


def load_volume_slices(
    image: str | os.PathLike,
    label: str | os.PathLike,
    split: str | None = "train",
    image_size: int | tuple[int, int] | None = 64,
    num_classes: int = 2,
    intensity_window: tuple[float, float] | None = None,
    skip_empty_slices: bool = True,
    slab_fractions: Mapping[str, float] | None = None,
    gap: int = 2,
) -> list[dict]:
    """Axial slices of one volume (NIfTI file or DICOM series folder) with its label volume, as one contiguous slab
    (:func:`slab_split`; ``split="all"`` or ``None`` keeps every slice, e.g. another scan used only for testing).
    Slices without any label are dropped by default."""
    for key, path in (("image_path", image), ("label_path", label)):
        if path is None or not os.path.exists(path):
            raise DataError(f"'{key}' {path!r} does not exist.")
    pairs = load_pairs(
        [{"image": str(image), "label": str(label)}],
        image_size=image_size,
        num_classes=num_classes,
        skip_empty_slices=skip_empty_slices,
        intensity_window=intensity_window,
    )
    if split is None or split == "all":
        return pairs
    chosen = slab_split(pairs, split, slab_fractions, gap)
    logger.info(
        "Slab '%s': %d of %d slices (%s ... %s).", split, len(chosen), len(pairs), chosen[0]["name"], chosen[-1]["name"]
    )
    return chosen
