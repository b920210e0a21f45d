"""Finding a dataset's image + mask files: folder pairs, MONAI decathlon datalists, MONAI Label datastores, splits (no
file is read here).

:func:`build_datalist` turns what a user points at (``dataset_dir``, a ``datalist`` JSON) into the sorted file-level
list ``[{"image", "label", "name"}, ...]`` that :func:`common.data.load_pairs` reads, checking on the way what can be
checked without decoding an image: folders, matching names, ``splits.json`` and datalist entries. Every problem is a
:class:`DataError`, one sentence naming the path or key.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pydicom
from monai.data import load_decathlon_datalist

from common.errors import InputError, first_line

__all__ = [
    "DataError",
    "RASTER_EXTENSIONS",
    "NIFTI_EXTENSIONS",
    "DICOM_EXTENSIONS",
    "MONAI_LABEL_FINAL",
    "DECATHLON_SPLIT_KEYS",
    "SPLIT_NAMES",
    "build_datalist",
    "file_format",
    "file_stem",
    "label_names",
]

logger = logging.getLogger(__name__)

RASTER_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
NIFTI_EXTENSIONS = (".nii.gz", ".nii")
DICOM_EXTENSIONS = (".dcm", ".dicom")
DECATHLON_SPLIT_KEYS = {"train": "training", "val": "validation", "test": "test"}
SPLIT_NAMES = tuple(DECATHLON_SPLIT_KEYS)
DATALIST_NAMES = ("dataset.json", "datalist.json")
MONAI_LABEL_FINAL = ("labels", "final")  # a MONAI Label datastore's ground-truth labels, named like their images


class DataError(InputError):
    """Bad user data or data settings. ``str(err)`` is one sentence naming the offending path or key.

    A subclass of :class:`common.errors.InputError` (itself a ``ValueError``), so bundles print it as a single
    ``error: ...`` line instead of a ConfigParser traceback.
    """


# --------------------------------------------------------------------------------------------------------------------
# finding files
# --------------------------------------------------------------------------------------------------------------------


def file_stem(path: str | os.PathLike) -> str:
    """File name without its (double) extension: ``a.nii.gz`` -> ``a``; folders keep their name."""
    name = Path(path).name
    lower = name.lower()
    for ext in (*NIFTI_EXTENSIONS, *RASTER_EXTENSIONS, *DICOM_EXTENSIONS):
        if lower.endswith(ext):
            return name[: -len(ext)]
    return name


def file_format(path: str | os.PathLike) -> str | None:
    """``"png"`` (any 2D raster), ``"nifti"`` or ``"dicom"`` (file or series folder) from the path; None if unknown."""
    lower = str(path).lower()
    if os.path.isdir(path):
        return "dicom"
    if lower.endswith(NIFTI_EXTENSIONS):
        return "nifti"
    if lower.endswith(DICOM_EXTENSIONS):
        return "dicom"
    if lower.endswith(RASTER_EXTENSIONS):
        return "png"
    return None


def _is_dicom_series_dir(path: Path) -> bool:
    """A sub-folder counts as a DICOM series if one of its first files is DICOM (by extension or preamble)."""
    files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))[:5]
    return any(p.suffix.lower() in DICOM_EXTENSIONS or pydicom.misc.is_dicom(str(p)) for p in files)


def _scan_folder(folder: Path, dataset_dir: Path) -> dict[str, Path]:
    """Supported files (and DICOM series sub-folders) of one folder, keyed by stem; duplicate stems are an error."""
    entries: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        if path.is_dir():
            if not _is_dicom_series_dir(path):
                continue
        elif file_format(path) is None:
            continue
        stem = file_stem(path)
        if stem in entries:
            raise DataError(
                f"dataset_dir '{dataset_dir}' has two entries named '{stem}' in '{folder}' "
                f"('{entries[stem].name}' and '{path.name}'); keep one file per case."
            )
        entries[stem] = path
    return entries


def _mask_folder(dataset_dir: Path, mask_dir: str | None) -> Path:
    if mask_dir is not None:
        folder = dataset_dir / mask_dir
        if not folder.is_dir():
            raise DataError(f"dataset_dir '{dataset_dir}' has no mask folder '{mask_dir}' (looked for '{folder}').")
        return folder
    for name in ("masks", "labels"):
        if (dataset_dir / name).is_dir():
            return dataset_dir / name
    raise DataError(f"dataset_dir '{dataset_dir}' has an images/ folder but neither masks/ nor labels/ next to it.")


def _read_json(path: Path, what: str) -> Any:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{what} '{path}' is not readable JSON ({first_line(exc)}).") from exc


def _split_names(dataset_dir: Path, split: str) -> list[str]:
    """Names listed for ``split`` in dataset_dir/splits.json, validated for shape."""
    path = dataset_dir / "splits.json"
    splits = _read_json(path, "splits file")
    if not isinstance(splits, Mapping) or not all(isinstance(v, list) for v in splits.values()):
        raise DataError(f"splits file '{path}' must map split names to lists of image file names.")
    if split not in splits:
        raise DataError(f"split '{split}' is not in splits file '{path}' (available: {', '.join(map(repr, splits))}).")
    names = [str(n) for n in splits[split]]
    if not names:
        raise DataError(f"split '{split}' in splits file '{path}' is empty.")
    return names


def _folder_datalist(dataset_dir: Path, split: str | None, mask_dir: str | None, datastore: bool = False) -> list[dict]:
    """images/ + masks/ (or labels/), or with ``datastore`` MONAI Label's layout: images in ``dataset_dir`` itself,
    ground truth in labels/final/; a datastore's images without a final label (not annotated yet) are skipped."""
    image_folder = dataset_dir if datastore else dataset_dir / "images"
    masks_folder = dataset_dir.joinpath(*MONAI_LABEL_FINAL) if datastore else _mask_folder(dataset_dir, mask_dir)
    images = _scan_folder(image_folder, dataset_dir)
    if datastore:
        labelled = set(_scan_folder(masks_folder, dataset_dir))
        unlabelled = sorted(set(images) - labelled)
        if unlabelled:
            logger.info(
                "%d image(s) of datastore %s have no final label yet and are skipped", len(unlabelled), dataset_dir
            )
        images = {stem: path for stem, path in images.items() if stem in labelled}
    if not images:
        raise DataError(
            f"dataset_dir '{dataset_dir}' has no images in '{image_folder}' "
            f"(expected {'/'.join(e[1:].upper() for e in RASTER_EXTENSIONS)}, NIfTI or DICOM files)."
        )
    masks = _scan_folder(masks_folder, dataset_dir)
    for stem, path in images.items():
        if stem not in masks:
            raise DataError(
                f"dataset_dir '{dataset_dir}' has an image '{path.name}' without a mask in '{masks_folder}'."
            )
    orphans = sorted(set(masks) - set(images))
    if orphans:
        logger.warning(
            "%d mask(s) in %s have no image and are ignored, e.g. %s.", len(orphans), masks_folder, orphans[0]
        )

    selected = sorted(images)
    has_splits = (dataset_dir / "splits.json").is_file()
    if split is not None and has_splits:
        by_name = {p.name: s for s, p in images.items()}
        wanted, missing = [], []
        for name in _split_names(dataset_dir, split):
            stem = by_name.get(name, name if name in images else None)
            (wanted if stem is not None else missing).append(stem if stem is not None else name)
        if missing:
            raise DataError(
                f"splits file '{dataset_dir / 'splits.json'}' lists {len(missing)} name(s) for split '{split}' "
                f"that are not in '{image_folder}', e.g. '{missing[0]}'."
            )
        selected = sorted(set(wanted))
    elif split is not None and split not in SPLIT_NAMES:
        raise DataError(
            f"split '{split}' is unknown for dataset_dir '{dataset_dir}' (no splits.json; use one of "
            f"{', '.join(map(repr, SPLIT_NAMES))} or None)."
        )
    elif split not in (None, "train"):
        logger.warning("%s has no splits.json: split '%s' uses all %d pairs.", dataset_dir, split, len(selected))
    return [{"image": str(images[s].resolve()), "label": str(masks[s].resolve()), "name": s} for s in selected]


def _decathlon_datalist(path: Path, split: str | None) -> list[dict]:
    content = _read_json(path, "datalist")
    if not isinstance(content, Mapping):
        raise DataError(f"datalist '{path}' must be a JSON object with keys such as 'training' and 'validation'.")
    if split is None:
        keys = [k for k in ("training", "validation") if k in content]
        if not keys:
            raise DataError(f"datalist '{path}' has neither a 'training' nor a 'validation' key.")
    else:
        key = DECATHLON_SPLIT_KEYS.get(split, split if split in DECATHLON_SPLIT_KEYS.values() else None)
        if key is None:
            raise DataError(
                f"split '{split}' is unknown for datalist '{path}' (use one of {', '.join(map(repr, SPLIT_NAMES))} "
                f"or None)."
            )
        if key not in content:
            available = ", ".join(repr(k) for k, v in content.items() if isinstance(v, list)) or "none"
            raise DataError(
                f"datalist '{path}' has no '{key}' key for split '{split}' (lists available: {available}); "
                f"use split='train' to read 'training' or add the key."
            )
        keys = [key]

    items: list[dict] = []
    for key in keys:
        raw = content[key]
        if not isinstance(raw, list):
            raise DataError(f"datalist '{path}' key '{key}' must be a list of {{'image', 'label'}} items.")
        for i, item in enumerate(raw):
            if not isinstance(item, Mapping) or "image" not in item or "label" not in item:
                raise DataError(f"datalist '{path}' item {i} of '{key}' needs both an 'image' and a 'label' entry.")
            for field in ("image", "label"):
                if not isinstance(item[field], (str, os.PathLike)):
                    raise DataError(
                        f"datalist '{path}' item {i} of '{key}' has a non-path '{field}' (expected one file or folder)."
                    )
        # MONAI's own resolver: relative paths against the JSON's folder, exactly as bundles from the model zoo do.
        for i, item in enumerate(load_decathlon_datalist(str(path), is_segmentation=True, data_list_key=key)):
            for field in ("image", "label"):
                if not os.path.exists(item[field]):
                    raise DataError(f"datalist '{path}' item {i} of '{key}' has a missing {field} '{item[field]}'.")
            image, label = str(Path(item["image"]).resolve()), str(Path(item["label"]).resolve())
            items.append({"image": image, "label": label, "name": str(item.get("name") or file_stem(image))})
    if not items:
        raise DataError(f"datalist '{path}' has no items for split '{split}'.")
    return sorted(items, key=lambda d: d["name"])


def build_datalist(
    dataset_dir: str | os.PathLike | None,
    split: str | None = "train",
    datalist: str | os.PathLike | None = None,
    mask_dir: str | None = None,
) -> list[dict]:
    """File-level datalist ``[{"image": abs path, "label": abs path, "name": str}, ...]`` sorted by name.

    Sources, in this order: the ``datalist`` JSON if given (a path, or a name relative to ``dataset_dir``); folder
    pairs ``dataset_dir/images`` + ``dataset_dir/masks`` (``labels/`` if there is no ``masks/``, or ``mask_dir``)
    matched by stem; a MONAI Label datastore (images in ``dataset_dir``, ground truth in ``labels/final/``, as the
    bundles write generated pairs; images without a final label are skipped); ``dataset_dir/dataset.json`` or
    ``datalist.json`` in MONAI decathlon format. Folder pairs and datastores honour ``dataset_dir/splits.json``;
    decathlon lists map train/val/test to training/validation/test, and ``split=None`` returns training + validation
    (decathlon test lists are conventionally unlabelled).
    """
    root = Path(dataset_dir).expanduser() if dataset_dir not in (None, "") else None
    if root is not None and not root.is_dir():
        what = "is not a folder" if root.exists() else "does not exist"
        raise DataError(f"dataset_dir '{root}' {what}.")
    if datalist not in (None, ""):
        path = Path(datalist).expanduser()
        if not path.is_file() and root is not None and (root / path).is_file():
            path = root / path
        if not path.is_file():
            raise DataError(f"datalist '{datalist}' does not exist.")
        return _decathlon_datalist(path.resolve(), split)
    if root is None:
        raise DataError("dataset_dir is not set and no datalist was given.")
    root = root.resolve()
    if (root / "images").is_dir():
        return _folder_datalist(root, split, mask_dir)
    if root.joinpath(*MONAI_LABEL_FINAL).is_dir():  # a MONAI Label datastore, e.g. a folder of generated pairs
        return _folder_datalist(root, split, mask_dir, datastore=True)
    for name in DATALIST_NAMES:
        if (root / name).is_file():
            return _decathlon_datalist(root / name, split)
    if not any(p for p in root.iterdir() if not p.name.startswith(".")):
        raise DataError(f"dataset_dir '{root}' is empty.")
    raise DataError(
        f"dataset_dir '{root}' has no images/ folder (with masks/ or labels/), no dataset.json or datalist.json, and "
        "no labels/final/ folder (a MONAI Label datastore)."
    )


def label_names(num_classes: int, names: Mapping[str, str] | str | os.PathLike | None = None) -> dict[str, str]:
    """Every class index ``"0" .. "K-1"`` with a name, for a datalist's ``labels`` (MONAI's decathlon convention).

    ``names``: a mapping (index -> name) or the path of a JSON class map such as a dataset's ``classmap.json``;
    classes it does not name are ``class_<k>``, class 0 ``background``; binary masks default to background /
    foreground. Raises :class:`DataError` for an unreadable file or an index outside 0..K-1.
    """
    if isinstance(names, (str, os.PathLike)):
        names = _read_json(Path(names), "class map")
    names = dict(names or {})
    if not all(isinstance(v, str) for v in names.values()):
        raise DataError(f"label names must map class indices to strings, got {names!r}.")
    unknown = [k for k in names if not str(k).isdigit() or int(k) >= num_classes]
    if unknown:
        raise DataError(
            f"label names name class {unknown[0]!r}, outside 0..{num_classes - 1} (num_classes={num_classes})."
        )
    default = {"0": "background", "1": "foreground"} if num_classes == 2 else {"0": "background"}
    return {str(k): names.get(str(k), names.get(k, default.get(str(k), f"class_{k}"))) for k in range(num_classes)}
