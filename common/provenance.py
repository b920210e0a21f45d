"""What a generator was trained on, stored next to its weights.

Training writes ``training_data.json`` beside the checkpoint (how many pairs, from where, which file format, the
image size and classes, and an affine for NIfTI sources). Generation reads it so pairs are written in the format of
the data the model learned from (NIfTI in, NIfTI out) without the user repeating the dataset path, and the model card
can say what data a checkpoint saw.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from common.distributed import is_main_process
from common.writers import atomic_write_bytes

__all__ = ["write_training_data_summary", "read_training_data_summary", "resolve_file_format", "training_affine"]

SUMMARY_NAME = "training_data.json"


def write_training_data_summary(pairs: Sequence[Mapping[str, Any]], ckpt_dir: str, **settings: Any) -> str:
    """Summarise loaded pairs (from ``common.data.load_dataset``) into ``<ckpt_dir>/training_data.json`` (written by
    the main process only under DDP)."""
    formats = Counter(p.get("format", "png") for p in pairs)
    affine = next((p.get("affine") for p in pairs if p.get("affine") is not None), None)
    first = pairs[0]["image"] if pairs else None
    summary = {
        "num_pairs": len(pairs),
        "format": formats.most_common(1)[0][0] if formats else "png",
        "formats": dict(formats),
        "image_shape": list(np.shape(first)) if first is not None else None,
        "sources": sorted({os.path.dirname(str(p.get("source", ""))) for p in pairs})[:10],
        "affine": np.asarray(affine).tolist() if affine is not None else None,
        **settings,
    }
    path = os.path.join(ckpt_dir, SUMMARY_NAME)
    if not is_main_process():
        return path
    os.makedirs(ckpt_dir, exist_ok=True)
    atomic_write_bytes(path, json.dumps(summary, indent=2, default=str).encode())
    return path


def read_training_data_summary(ckpt_dir: str) -> dict[str, Any]:
    """The summary written by training, or an empty dict for checkpoints trained elsewhere."""
    path = os.path.join(ckpt_dir, SUMMARY_NAME)
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return json.load(f)


def resolve_file_format(
    file_format: str, ckpt_dir: str | None = None, pairs: Sequence[Mapping[str, Any]] | None = None
) -> str:
    """``"auto"`` -> ``"nifti"`` for NIfTI/DICOM sources, else ``"png"``; other values pass. The source: ``pairs``
    when the generation is conditioned on them (their most common format), else the model's training data."""
    if file_format != "auto":
        return file_format
    if pairs:
        source = Counter(p.get("format", "png") for p in pairs).most_common(1)[0][0]
    else:
        source = read_training_data_summary(ckpt_dir).get("format", "png") if ckpt_dir else "png"
    return "nifti" if source in ("nifti", "dicom") else "png"


def training_affine(ckpt_dir: str) -> list | None:
    """The affine of the training data's first slice (NIfTI/DICOM sources), for writing generated pairs with the
    source's geometry; None for 2D sources or checkpoints trained elsewhere."""
    return read_training_data_summary(ckpt_dir).get("affine")
