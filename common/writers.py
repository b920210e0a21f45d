"""Writing generated pairs, datalists and previews so that a killed run never leaves a file that looks finished.

Every file is written under a temporary name in its final folder and ``os.replace``d into place (atomic on POSIX and
Windows), so a reader sees either the old file, the complete new file, or nothing. Temporary names look like
``.<final name>.tmp-<pid>-<8 hex><extension>``: hidden, never matching a final name, and keeping the real extension
so Pillow and nibabel pick the right encoder. A pair's label is written after its image, so "label exists" means the
pair is complete and a rerun after a kill can regenerate exactly the missing pairs.
"""

from __future__ import annotations

import colorsys
import contextlib
import json
import logging
import math
import os
import posixpath
import re
import secrets
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import nibabel as nib
import numpy as np
import torch
from PIL import Image

from common.datalists import MONAI_LABEL_FINAL
from common.errors import WRITE_ERRNOS, InputError, OutputError
from common.transforms import unit_to_window, window_to_unit

__all__ = [
    "PREVIEW_FILE",
    "DATASTORE_FILE",
    "PairWriter",
    "write_datalist",
    "save_preview_grid",
    "atomic_write_bytes",
    "atomic_path",
]

logger = logging.getLogger(__name__)

_EXTENSIONS = {"png": ".png", "nifti": ".nii.gz"}
PREVIEW_FILE = ("preview", "pairs.png")  # in a subfolder: MONAI Label lists every image file at a datastore's top
DATASTORE_FILE = "datastore_v2.json"  # MONAI Label's LocalDatastore index (its 0.8 format)
_COMPRESSION_SUFFIXES = (".gz", ".bz2", ".xz", ".zst")
_TMP_RE = re.compile(r"^\..*\.tmp-\d+-[0-9a-f]{8}(\.[A-Za-z0-9]+)*$")
_MAX_TMP_STEM = 200  # keeps ".<stem>.tmp-<pid>-<hex><ext>" under the usual 255-byte file name limit
_GAP = 4  # pixels between triplets in a preview grid
# Distinct colours (Trubetskoy's list, greys removed) for classes 1..; class 0 (background) is never coloured.
_CLASS_COLOURS = [
    (230, 25, 75),
    (60, 180, 75),
    (0, 130, 200),
    (255, 225, 25),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
    (0, 128, 128),
    (220, 190, 255),
    (170, 110, 40),
    (128, 0, 0),
    (170, 255, 195),
    (128, 128, 0),
    (255, 215, 180),
    (0, 0, 128),
]
_OVERLAY_ALPHA = 0.4


# --------------------------------------------------------------------------------------------------------------------
# atomic files
# --------------------------------------------------------------------------------------------------------------------


def _extension(name: str) -> str:
    """``.png``, ``.json``; compressed files keep both suffixes (``.nii.gz``) so writers still recognise the type."""
    root, ext = os.path.splitext(name)
    if ext.lower() in _COMPRESSION_SUFFIXES:
        inner = os.path.splitext(root)[1]
        return inner + ext if inner else ext
    return ext


def _tmp_name(name: str) -> str:
    return f".{name[:_MAX_TMP_STEM]}.tmp-{os.getpid()}-{secrets.token_hex(4)}{_extension(name)}"


def _is_tmp_name(name: str) -> bool:
    return _TMP_RE.match(name) is not None


def _fsync_file(path: str) -> None:
    """Flush the data to disk before the rename, so a power loss cannot leave a renamed but empty file."""
    with open(path, "r+b") as f:
        os.fsync(f.fileno())


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path in ``path``'s folder; on success it replaces ``path``, on any error it is removed.

    The temporary name keeps the extension of ``path`` (``.nii.gz`` included), so format-sniffing writers such as
    ``nib.save`` or ``PIL.Image.save`` work on it. Parent folders are created. An existing ``path`` is untouched
    unless the block completes.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, _tmp_name(os.path.basename(path)))
    try:
        yield tmp
        _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        if isinstance(exc, OSError) and exc.errno in WRITE_ERRNOS:
            raise OutputError(f"could not write '{path}' ({exc.strerror}); is the disk full?") from exc
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_path`)."""
    with atomic_path(path) as tmp, open(tmp, "xb") as f:
        f.write(data)


# --------------------------------------------------------------------------------------------------------------------
# array helpers
# --------------------------------------------------------------------------------------------------------------------


def _to_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _plane(x: Any, what: str) -> np.ndarray:
    """(H, W) from (H, W) or (1, H, W)."""
    arr = _to_numpy(x)
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2:
        raise ValueError(f"{what} must have shape (H, W) or (1, H, W), got {tuple(arr.shape)}.")
    return arr


def _batch(x: Any, what: str) -> np.ndarray:
    """(N, H, W) from (N, H, W) or (N, 1, H, W)."""
    arr = _to_numpy(x)
    if arr.ndim == 4 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 3:
        raise ValueError(f"'{what}' must have shape (N, H, W) or (N, 1, H, W), got {tuple(arr.shape)}.")
    return arr


def _unit_to_uint8(image: np.ndarray) -> np.ndarray:
    """[-1, 1] -> 0..255, the inverse of the loaders' x / 127.5 - 1 (values outside [-1, 1] are clipped)."""
    image = np.nan_to_num(image.astype(np.float32), nan=-1.0, posinf=1.0, neginf=-1.0)
    return np.rint((np.clip(image, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)


def _check_num_classes(num_classes: Any) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or not 2 <= num_classes <= 256:
        raise InputError(
            f"'num_classes' must be an integer in 2..256 (labels are stored as uint8), got {num_classes!r}."
        )
    return int(num_classes)


def _check_affine(affine: Any) -> np.ndarray:
    if affine is None:
        return np.eye(4)
    try:
        arr = np.asarray(_to_numpy(affine), dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(f"'affine' must be a 4x4 matrix of numbers, got {affine!r}.") from exc
    if arr.shape != (4, 4) or not np.isfinite(arr).all():
        raise InputError(f"'affine' must be a finite 4x4 matrix, got shape {arr.shape}.")
    return arr


def _check_window(window: Any) -> tuple[float, float] | None:
    if window is None:
        return None
    try:
        level, width = (float(v) for v in window)
    except (TypeError, ValueError):
        raise InputError(f"'intensity_window' must be (level, width) or None, got {window!r}.") from None
    if not width > 0:
        raise InputError(f"'intensity_window' width must be > 0, got {width!r}.")
    return level, width


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


# --------------------------------------------------------------------------------------------------------------------
# pairs
# --------------------------------------------------------------------------------------------------------------------


class PairWriter:
    """Writes generated pairs in MONAI Label's datastore layout: the image as ``<output_dir>/<name>`` and its label as
    ``<output_dir>/labels/final/<name>``, so MONAI Label's ``LocalDatastore`` (and ``monailabel start_server --studies
    <output_dir>``) lists every pair as labelled, and ``common.data`` reads the folder back as a dataset.

    ``file_format="png"``: the image is an 8-bit greyscale PNG (``rint((x + 1) * 127.5)``, the inverse of the loaders'
    ``x / 127.5 - 1``); the label is a greyscale PNG with 0/255 for binary masks (``num_classes == 2``, visible in any
    viewer and read back as {0, 1} by ``common.data``) and raw class indices 0..K-1 for multi-class.
    ``file_format="nifti"``: ``.nii.gz`` with the image as float32 and the label as uint8 class indices, both as
    single-slice volumes of shape (H, W, 1) with the pair's affine (``affine``, or the one given to :meth:`write`;
    identity if None) in the sform and qform. A 3D single-slice volume keeps the slice's full world geometry in every
    reader (ITK drops out-of-plane geometry of 2D NIfTI files); an affine maps (row, col, 0) to RAS mm like the
    affines ``common.data`` returns. ``intensity_window=(level, width)``: the window the model was trained with (CT:
    40 / 400 HU); NIfTI images are then written in its units (Hounsfield units), values outside it clipped to its
    bounds; without it they stay in [-1, 1]. Affines and windows are ignored for PNG.

    Pair ``index`` is named ``f"pair_{index:06d}"`` plus the extension. Writes are atomic and the label goes last, so
    :meth:`is_complete` is exact after a kill and :meth:`remove_partial` clears what a killed run left behind.
    Not meant for several processes writing into one ``output_dir`` at once.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        file_format: str = "png",
        num_classes: int = 2,
        affine: Any = None,
        intensity_window: Sequence[float] | None = None,
    ) -> None:
        if file_format not in _EXTENSIONS:
            allowed = ", ".join(repr(k) for k in _EXTENSIONS)
            raise InputError(f"'file_format' must be one of {allowed}, got {file_format!r}.")
        self.output_dir = os.fspath(output_dir)
        self.file_format = file_format
        self.extension = _EXTENSIONS[file_format]
        self.num_classes = _check_num_classes(num_classes)
        self.affine = _check_affine(affine)
        self.intensity_window = _check_window(intensity_window)
        self.image_dir = self.output_dir
        self.label_dir = os.path.join(self.output_dir, *MONAI_LABEL_FINAL)
        self._pair_re = re.compile(rf"^pair_\d{{6,}}{re.escape(self.extension)}$")

    @classmethod
    def existing(cls, output_dir: str | os.PathLike, num_classes: int = 2) -> PairWriter:
        """The writer of a folder written before, to read its pairs: the file format and the intensity window come
        from its ``datalist.json`` (PNG without one)."""
        path = os.path.join(os.fspath(output_dir), "datalist.json")
        file_format, window = "png", None
        if os.path.isfile(path):
            try:
                with open(path) as f:
                    datalist = json.load(f)
                first = datalist["training"][0]["image"] if datalist.get("training") else ""
            except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as error:
                raise InputError(f"'{path}' is not a datalist of generated pairs ({error}).") from None
            file_format = next((k for k, ext in _EXTENSIONS.items() if first.endswith(ext)), "png")
            window = datalist.get("intensity_window")
        return cls(output_dir, file_format, num_classes, intensity_window=window)

    def name(self, index: int) -> str:
        """File name (shared by image and label) of pair ``index``."""
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or index < 0:
            raise ValueError(f"pair index must be a non-negative integer, got {index!r}.")
        return f"pair_{int(index):06d}{self.extension}"

    def paths(self, index: int) -> tuple[str, str]:
        """Image and label paths relative to ``output_dir``, with "/" so datalists are portable across systems."""
        name = self.name(index)
        return name, posixpath.join(*MONAI_LABEL_FINAL, name)

    def _absolute(self, index: int) -> tuple[str, str]:
        name = self.name(index)
        return os.path.join(self.image_dir, name), os.path.join(self.label_dir, name)

    def is_complete(self, index: int) -> bool:
        """True when both files of pair ``index`` exist (the label is written last, after the image)."""
        image_path, label_path = self._absolute(index)
        return os.path.isfile(label_path) and os.path.isfile(image_path)

    def _image_array(self, image: Any, index: int) -> np.ndarray:
        arr = _plane(image, f"image of pair {index}")
        if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.number):
            raise ValueError(f"image of pair {index} must be numeric, got dtype {arr.dtype}.")
        arr = arr.astype(np.float32)
        if not np.isfinite(arr).all():
            raise ValueError(f"image of pair {index} has {int((~np.isfinite(arr)).sum())} NaN or infinite value(s).")
        return arr

    def _label_array(self, label: Any, index: int, shape: tuple[int, ...]) -> np.ndarray:
        arr = _plane(label, f"label of pair {index}")
        if arr.shape != shape:
            raise ValueError(f"label of pair {index} has shape {arr.shape} but its image has shape {shape}.")
        if arr.dtype == np.bool_:
            arr = arr.astype(np.uint8)
        if not np.issubdtype(arr.dtype, np.number):
            raise ValueError(f"label of pair {index} must hold class indices, got dtype {arr.dtype}.")
        if np.issubdtype(arr.dtype, np.floating) and not (np.isfinite(arr).all() and np.array_equal(arr, np.rint(arr))):
            raise ValueError(f"label of pair {index} has non-integer values; expected class indices.")
        values = np.unique(arr)
        bad = values[(values < 0) | (values >= self.num_classes)]
        if bad.size:
            shown = ", ".join(str(int(v)) for v in bad[:8]) + (", ..." if bad.size > 8 else "")
            raise ValueError(
                f"label of pair {index} has values [{shown}] outside 0..{self.num_classes - 1} "
                f"(num_classes={self.num_classes})."
            )
        return arr.astype(np.uint8)

    def _save_png(self, array: np.ndarray, path: str) -> None:
        with atomic_path(path) as tmp:
            Image.fromarray(np.ascontiguousarray(array)).save(tmp, format="PNG")

    def _save_nifti(self, array: np.ndarray, path: str, dtype: type, affine: np.ndarray) -> None:
        img = nib.Nifti1Image(np.ascontiguousarray(array[:, :, None], dtype=dtype), affine)
        img.set_data_dtype(dtype)
        img.set_sform(affine, code=1)
        img.set_qform(affine, code=1)
        img.header.set_xyzt_units("mm")
        with atomic_path(path) as tmp:
            nib.save(img, tmp)

    def write(self, index: int, image: Any, label: Any, affine: Any = None) -> dict[str, str]:
        """Write pair ``index``: image in [-1, 1] and label class indices, each (H, W) or (1, H, W), torch or numpy;
        ``affine``: this pair's geometry (NIfTI), else the writer's.

        Both arrays are checked before anything touches the disk. An existing label is deleted first, so a kill while
        overwriting leaves an incomplete pair, never a new image next to an old label.
        Returns ``{"image": rel_path, "label": rel_path}`` relative to ``output_dir``.
        """
        img = self._image_array(image, index)
        lab = self._label_array(label, index, img.shape)
        affine = self.affine if affine is None else _check_affine(affine)
        image_path, label_path = self._absolute(index)
        os.makedirs(self.image_dir, exist_ok=True)
        os.makedirs(self.label_dir, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.remove(label_path)
        if self.file_format == "png":
            self._save_png(_unit_to_uint8(img), image_path)
            self._save_png(lab * np.uint8(255) if self.num_classes == 2 else lab, label_path)
        else:
            if self.intensity_window is not None:
                img = unit_to_window(np.clip(img, -1.0, 1.0), *self.intensity_window)
            self._save_nifti(img, image_path, np.float32, affine)
            self._save_nifti(lab, label_path, np.uint8, affine)
        rel_image, rel_label = self.paths(index)
        return {"image": rel_image, "label": rel_label}

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Pair ``index`` as written: image float32 (1, H, W) in [-1, 1] and label int64 (1, H, W) class indices."""
        image_path, label_path = self._absolute(index)
        if not self.is_complete(index):
            raise FileNotFoundError(f"pair {index} is not complete in '{self.output_dir}' (missing '{label_path}').")
        if self.file_format == "png":
            with Image.open(image_path) as im:
                image = np.asarray(im, dtype=np.float32) / np.float32(127.5) - np.float32(1.0)
            with Image.open(label_path) as im:
                label = np.asarray(im).astype(np.int64)
            if self.num_classes == 2:
                label = (label > 0).astype(np.int64)
        else:
            image = np.asarray(nib.load(image_path).dataobj, dtype=np.float32)[:, :, 0]
            if self.intensity_window is not None:
                image = window_to_unit(image, *self.intensity_window)
            label = np.asarray(nib.load(label_path).dataobj).astype(np.int64)[:, :, 0]
        return image[None], label[None]

    def write_index(
        self,
        indices: Sequence[int],
        labels: Mapping[str, str],
        description: str = "",
        preview_pairs: int = 16,
        **datalist_extra: Any,
    ) -> dict[str, str]:
        """Index the complete pairs ``indices`` once they are written: the MONAI datalist ``datalist.json`` (decathlon
        format, ``labels`` = class index -> name), MONAI Label's datastore index (every pair labelled ``final``,
        with the label names as MONAI Label apps give them, name -> index; pairs of another datastore index in this
        folder are kept) and a preview grid. Returns the three paths."""
        items = [dict(zip(("image", "label"), self.paths(i))) for i in indices]
        datalist = os.path.join(self.output_dir, "datalist.json")
        if self.intensity_window is not None and self.file_format == "nifti":  # what readers need to map HU back
            datalist_extra["intensity_window"] = list(self.intensity_window)
        write_datalist(
            datalist, items, key="training", numTraining=len(items), labels=dict(labels), description=description,
            **datalist_extra,
        )  # fmt: skip
        datastore = os.path.join(self.output_dir, DATASTORE_FILE)
        index = _read_datastore(datastore, description)
        names = {name: int(k) for k, name in labels.items() if int(k) > 0}
        stamp = int(time.time())
        for i in indices:
            name = self.name(i)
            data = {"ext": self.extension, "info": {"ts": stamp, "name": name, "synthetic": True}}
            final = {"ext": self.extension, "info": {"ts": stamp, "name": name, "label_names": names}}
            index["objects"][name[: -len(self.extension)]] = {"image": data, "labels": {"final": final}}
        atomic_write_bytes(datastore, (json.dumps(index, indent=2) + "\n").encode("utf-8"))
        preview = os.path.join(self.output_dir, *PREVIEW_FILE)
        shown = list(indices)[:preview_pairs]
        if shown:
            os.makedirs(os.path.dirname(preview), exist_ok=True)
            images, masks = zip(*(self.read(i) for i in shown))
            save_preview_grid(preview, np.stack(images), np.stack(masks), self.num_classes, max_pairs=preview_pairs)
        return {"datalist": datalist, "datastore": datastore, "preview": preview}

    def remove_partial(self) -> int:
        """Delete temporary files left by a kill and images whose label is missing; return how many were removed.

        Only this writer's own names are touched: ``.*.tmp-<pid>-<hex>*`` in ``output_dir`` and ``labels/final/``,
        and ``pair_NNNNNN<ext>`` images without a label. Call it before writing, not while another
        process writes into the same ``output_dir``.
        """
        removed = 0
        for folder in dict.fromkeys((self.output_dir, self.image_dir, self.label_dir)):
            if not os.path.isdir(folder):
                continue
            for entry in os.scandir(folder):
                if _is_tmp_name(entry.name) and entry.is_file(follow_symlinks=False):
                    os.remove(entry.path)
                    logger.debug("removed temporary file %s", entry.path)
                    removed += 1
        if os.path.isdir(self.image_dir):
            for entry in os.scandir(self.image_dir):
                if self._pair_re.match(entry.name) and not os.path.isfile(os.path.join(self.label_dir, entry.name)):
                    os.remove(entry.path)
                    logger.debug("removed image without a label %s", entry.path)
                    removed += 1
        return removed


# --------------------------------------------------------------------------------------------------------------------
# datalist
# --------------------------------------------------------------------------------------------------------------------


def _relative(value: Any, base: str) -> Any:
    if isinstance(value, (list, tuple)):
        return [_relative(v, base) for v in value]
    if isinstance(value, (str, os.PathLike)):
        value = os.fspath(value)
        if os.path.isabs(value):
            return os.path.relpath(value, base).replace(os.sep, "/")
    return value


def _read_datastore(path: str, description: str) -> dict[str, Any]:
    """An existing MONAI Label datastore index to add pairs to, or a new one."""
    if os.path.isfile(path):
        try:
            with open(path) as f:
                index = json.load(f)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise OutputError(f"the MONAI Label datastore index '{path}' is not readable JSON ({error}).") from None
        if isinstance(index, dict) and isinstance(index.get("objects"), dict):
            return index
        raise OutputError(f"'{path}' is not a MONAI Label datastore index (no 'objects' mapping).")
    return {"name": "synthetic-pairs", "description": description, "images_dir": ".", "labels_dir": "labels",
            "objects": {}}  # fmt: skip


def write_datalist(
    path: str | os.PathLike, items: Sequence[Mapping[str, Any]], key: str = "training", **extra: Any
) -> None:
    """Write a MONAI decathlon-style datalist ``{**extra, key: [{"image": rel, "label": rel, ...}, ...]}``.

    ``monai.data.load_decathlon_datalist`` and MONAI Label read it unchanged. Absolute ``image``/``label`` paths
    are made relative to the JSON's folder so the folder can be moved or shared; relative paths are taken to be
    relative to it already. ``extra`` holds the decathlon metadata (``numTraining``, ``labels``, ``description``...),
    written before the list so a person sees it first. Atomic.
    """
    if key in extra:
        raise ValueError(f"'{key}' is both the datalist key and an extra field.")
    base = os.path.dirname(os.path.abspath(os.fspath(path)))
    entries = []
    for i, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise ValueError(f"datalist item {i} must be a dict with 'image' and 'label', got {type(item).__name__}.")
        entries.append({k: _relative(v, base) if k in ("image", "label") else v for k, v in item.items()})
    text = json.dumps({**extra, key: entries}, indent=2, default=_json_default) + "\n"
    atomic_write_bytes(path, text.encode("utf-8"))


# --------------------------------------------------------------------------------------------------------------------
# preview
# --------------------------------------------------------------------------------------------------------------------


def _palette(num_classes: int) -> np.ndarray:
    """(num_classes, 3) uint8: black background, then distinct colours (golden-ratio hues past the fixed list)."""
    colours = [(0, 0, 0)]
    for k in range(1, num_classes):
        if k <= len(_CLASS_COLOURS):
            colours.append(_CLASS_COLOURS[k - 1])
        else:
            r, g, b = colorsys.hsv_to_rgb((k * 0.618033988749895) % 1.0, 0.85, 0.95)
            colours.append((round(r * 255), round(g * 255), round(b * 255)))
    return np.asarray(colours, dtype=np.uint8)


def _outline(label: np.ndarray) -> np.ndarray:
    """Foreground pixels with a 4-neighbour of another class."""
    padded = np.pad(label, 1, mode="edge")
    centre = padded[1:-1, 1:-1]
    edge = np.zeros(label.shape, dtype=bool)
    for dy, dx in ((0, 1), (2, 1), (1, 0), (1, 2)):
        edge |= padded[dy : dy + label.shape[0], dx : dx + label.shape[1]] != centre
    return edge & (label > 0)


def save_preview_grid(
    path: str | os.PathLike,
    images: Any,
    labels: Any,
    num_classes: int = 2,
    max_pairs: int = 16,
    columns: int = 4,
) -> None:
    """Save an RGB PNG to look at: per pair a triplet image | mask | overlay, ``columns`` triplets per row.

    The mask panel is white on black for binary masks and class colours for multi-class; the overlay blends the class
    colour over the image (40 %) and draws each region's outline in full colour, so thin structures stay visible.
    With n = min(N, max_pairs), c = min(columns, n) and r = ceil(n / c), the PNG is
    ``c * 3 * W + (c - 1) * 4`` wide and ``r * H + (r - 1) * 4`` high (4 white pixels between triplets).
    images: (N, 1, H, W) or (N, H, W) in [-1, 1]; labels: same layout, class indices. Atomic.
    """
    imgs, labs = _batch(images, "images"), _batch(labels, "labels")
    if imgs.shape != labs.shape:
        raise ValueError(f"'images' {tuple(imgs.shape)} and 'labels' {tuple(labs.shape)} must have the same (N, H, W).")
    for key, value in (("max_pairs", max_pairs), ("columns", columns)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"'{key}' must be a positive integer, got {value!r}.")
    if imgs.shape[0] == 0:
        raise ValueError("no pairs to preview: 'images' is empty.")
    num_classes = _check_num_classes(num_classes)
    n = min(imgs.shape[0], int(max_pairs))
    cols = min(int(columns), n)
    rows = math.ceil(n / cols)
    height, width = imgs.shape[1:]
    grid = np.full((rows * height + (rows - 1) * _GAP, cols * 3 * width + (cols - 1) * _GAP, 3), 255, np.uint8)
    palette = _palette(num_classes)
    mask_palette = palette.copy()
    if num_classes == 2:
        mask_palette[1] = 255
    for i in range(n):
        grey = np.repeat(_unit_to_uint8(imgs[i])[..., None], 3, axis=-1)
        label = np.clip(np.rint(np.nan_to_num(labs[i].astype(np.float64))), 0, num_classes - 1).astype(np.int64)
        colour = palette[label]
        foreground = (label > 0)[..., None]
        blended = np.rint(grey * (1.0 - _OVERLAY_ALPHA) + colour * _OVERLAY_ALPHA).astype(np.uint8)
        overlay = np.where(foreground, blended, grey)
        edge = _outline(label)
        overlay[edge] = colour[edge]
        y = (i // cols) * (height + _GAP)
        x = (i % cols) * (3 * width + _GAP)
        grid[y : y + height, x : x + width] = grey
        grid[y : y + height, x + width : x + 2 * width] = mask_palette[label]
        grid[y : y + height, x + 2 * width : x + 3 * width] = overlay
    with atomic_path(path) as tmp:
        Image.fromarray(grid).save(tmp, format="PNG")
