"""Shared building blocks of the paired-synthesis bundles.

Submodules load on first attribute access, so a bundle config needs only ``"$import common"`` and can then say
``common.data.load_dataset(...)`` (MONAI's config ``imports`` bind ``import a.b`` under the name ``a.b``, not ``a``).
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "augmentations",
    "checkpoints",
    "data",
    "diffboost",
    "distributed",
    "edges",
    "errors",
    "export",
    "filtering",
    "generation",
    "guidance",
    "guided_unet",
    "handlers",
    "losses",
    "metrics",
    "micro_batching",
    "noisy_segmenter",
    "overrides",
    "paired_model",
    "patch_mixing",
    "pix2pix",
    "provenance",
    "reconstruction_eval",
    "sampling",
    "schedulers",
    "seg_eval",
    "semantic_eval",
    "semantic_model",
    "task_conditioned",
    "text_conditioning",
    "text_edge_model",
    "training",
    "transforms",
    "writers",
]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
