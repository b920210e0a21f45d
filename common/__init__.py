"""The shared library of the paired-synthesis bundles (distribution ``monai-paired-synthesis``, import name ``common``).

It holds what two or more bundles share: data, transforms, the diffusion maths, schedulers, the sampler protocol and
generation, writers, metrics, training glue, the segmentation evaluation and the bundle plumbing. Each method's own
code lives in its bundle's ``scripts/`` package. Submodules load on first attribute access, so a bundle config needs
only ``"$import common"`` and can then say ``common.data.load_dataset(...)`` (MONAI's config ``imports`` bind
``import a.b`` under the name ``a.b``, not ``a``).
"""

from __future__ import annotations

from common.bundle import lazy_submodules

__version__ = "0.6.0"

__all__ = [
    "bundle",
    "bundle_export",
    "checkpoints",
    "comparison",
    "data",
    "datalists",
    "diffusion",
    "distributed",
    "errors",
    "evaluation",
    "export",
    "fid",
    "generation",
    "handlers",
    "metrics",
    "micro_batching",
    "overrides",
    "pix2pix",
    "progress",
    "provenance",
    "sampling",
    "schedulers",
    "training",
    "transforms",
    "writers",
]

__getattr__ = lazy_submodules(__name__)
