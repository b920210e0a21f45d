"""The CT bundle's data: axial slices of a volume (or 2D pairs) with the paper's extra "body" class.

Every CT config reads its slices the same way, so the choice lives here once (:func:`load_slices`): a volume and its
label volume (``image_path`` + ``label_path``: a NIfTI file or DICOM series folder, sliced axially, one contiguous slab
per split) when ``image_path`` is set, else 2D pairs from ``dataset_dir`` / ``datalist`` (the embedded synthetic discs
when both are unset). The paper adds a "body" class by thresholding and morphology (:func:`add_body_class`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from common.data import load_dataset, load_volume_slices
from common.datalists import label_names
from common.errors import InputError

__all__ = ["load_slices", "body_mask", "add_body_class", "label_names_with_body"]


def load_slices(
    image_path: str | None = None,
    label_path: str | None = None,
    dataset_dir: str | None = None,
    datalist: str | None = None,
    split: str | None = "train",
    image_size: int = 64,
    num_classes: int = 2,
    intensity_window: Sequence[float] | None = (40, 400),
    body_threshold: float | None = -0.95,
    num_synthetic: int = 64,
    seed: int = 0,
) -> list[dict]:
    """Slices of ``split`` with the body class added as class ``num_classes`` (``body_threshold`` None: no body
    class): from the volume when ``image_path`` is set, else from ``dataset_dir`` / ``datalist`` (embedded synthetic
    discs when neither is set, drawn with ``seed``)."""
    if image_path:
        window = tuple(intensity_window) if intensity_window is not None else None
        slices = load_volume_slices(
            image_path, label_path, split=split, image_size=image_size, num_classes=num_classes, intensity_window=window
        )
    else:
        slices = load_dataset(
            dataset_dir=dataset_dir,
            datalist=datalist,
            split=split,
            image_size=image_size,
            num_classes=num_classes,
            num_synthetic=num_synthetic,
            seed=seed,
        )
    if body_threshold is None:
        return slices
    return add_body_class(slices, num_classes, threshold=body_threshold)


def body_mask(image: np.ndarray, threshold: float = -0.95, opening: int = 1) -> np.ndarray:
    """The patient's body in a windowed CT slice (values in [-1, 1]): threshold, open, largest component, fill holes.

    (scipy.ndimage: MONAI's KeepLargestConnectedComponent needs scikit-image, which nothing else here uses.)

    With the abdominal window (level 40, width 400) -1 is <= -160 HU; ``threshold`` -0.95 keeps tissue above -150 HU
    (fat included, air and most of the table out). Returns bool (H, W) or (1, H, W) like ``image``.
    """
    from scipy import ndimage

    array = np.asarray(image)
    plane = array[0] if array.ndim == 3 else array
    body = plane > threshold
    if opening:
        body = ndimage.binary_opening(body, iterations=opening)
    components, count = ndimage.label(body)
    if count:
        sizes = np.bincount(components.ravel())[1:]
        body = ndimage.binary_fill_holes(components == 1 + int(np.argmax(sizes)))
    return body[None] if array.ndim == 3 else body


def add_body_class(pairs: Sequence[dict], num_classes: int, threshold: float = -0.95) -> list[dict]:
    """Label the body outside every organ as a new class ``num_classes`` (paper 004's extra "body" class).

    Returns new pair dicts (the input is not modified) whose labels have ``num_classes + 1`` classes.
    """
    out = []
    for pair in pairs:
        label = np.asarray(pair["label"])
        if label.size and int(label.max()) >= num_classes:
            raise InputError(
                f"label of '{pair.get('name', '?')}' has class {int(label.max())} >= num_classes {num_classes}."
            )
        body = body_mask(pair["image"], threshold)
        out.append({**pair, "label": np.where((label == 0) & body, num_classes, label).astype(np.int64)})
    return out


def label_names_with_body(names: Mapping[str, str] | str | None, num_classes: int) -> dict[str, str]:
    """The organ names (a mapping or a class map such as ``classmap.json``, :func:`common.datalists.label_names`) and
    ``body`` for the added class ``num_classes``: the names of the ``num_classes + 1`` classes the model writes."""
    organs = label_names(num_classes, names)
    return {**organs, str(num_classes): "body"}
