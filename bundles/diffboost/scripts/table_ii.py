"""DiffBoost's Table II as conditions of the shared segmentation evaluation (:mod:`common.evaluation.protocol`).

The rows: the segmenter trained on the real pairs alone (baseline), with each conventional augmentation
(:mod:`scripts.augmentations`), and with DiffBoost's patch mixing of the generated versions into the real images
(:class:`PatchMixCondition`, paper Alg. 1); ``DiffBoost+<augmentation>`` rows (not in the paper) transform the real
image, its label and its versions with one random draw before the mixing.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.transforms import Lambdad, SqueezeDimd

from common.errors import InputError
from common.evaluation.conditions import PairsCondition, TrainingCondition, TrainingSetup, fold_folders
from common.evaluation.segmenter import training_dataset

from .augmentations import AUGMENTATIONS, conventional_augmentation
from .diffboost import MIX_MODES, PatchMixInferer, PatchMixPrepareBatch, load_versions

__all__ = ["TableIIAugmentation", "PatchMixCondition", "table_ii_conditions"]


class TableIIAugmentation:
    """One of Table II's conventional augmentations as the ``augment`` of a condition: ``image_keys -> transforms``."""

    def __init__(self, name: str) -> None:
        if name not in AUGMENTATIONS:
            raise InputError(f"unknown augmentation {name!r}; choose one of {', '.join(AUGMENTATIONS)}.")
        self.name = name

    def __call__(self, image_keys: Sequence[str]) -> list:
        return conventional_augmentation(self.name, image_keys=tuple(image_keys))

    def __repr__(self) -> str:
        return self.name


def _versions_first(versions: torch.Tensor) -> torch.Tensor:
    """(n, H, W) versions-as-channels back to the (n, 1, H, W) that :class:`PatchMixPrepareBatch` stacks."""
    return versions[:, None]


class PatchMixCondition(TrainingCondition):
    """The real pairs, each step mixing one of every image's generated versions into it patch-wise (paper Alg. 1).

    Args:
        folder: a :func:`scripts.diffboost.generate_versions` folder (``sources.json``) made from the same real
            training pairs; ``{fold}`` is formatted per fold (one generation per fold).
        alpha, patch_size, mode: the patch mask and where it mixes (``"image"``, the paper; ``"logits"``, the
            authors' code).
        augment: the name of a Table II augmentation applied to the real image, its label and its versions alike.
        num_classes: how the versions' labels are read.
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        alpha: float = 0.6,
        patch_size: int = 16,
        mode: str = "image",
        augment: str | None = None,
        num_classes: int = 2,
    ) -> None:
        if not isinstance(folder, (str, os.PathLike)):
            raise InputError("'patch_mix' needs a 'folder' of DiffBoost versions (sources.json).")
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= alpha <= 1.0:
            raise InputError(f"'patch_mix.alpha' must be a number in [0, 1], got {alpha!r}.")
        if isinstance(patch_size, bool) or not isinstance(patch_size, (int, np.integer)) or patch_size < 1:
            raise InputError(f"'patch_mix.patch_size' must be a positive integer, got {patch_size!r}.")
        if mode not in MIX_MODES:
            raise InputError(f"'patch_mix.mode' must be one of {', '.join(MIX_MODES)}, got {mode!r}.")
        folder = os.fspath(folder)
        self.folder = folder if "{fold}" in folder else str(Path(folder).resolve())
        self.alpha, self.patch_size, self.mode = float(alpha), int(patch_size), mode
        self.augment = TableIIAugmentation(augment) if augment else None
        self.num_classes = num_classes
        self._versions: dict[str, dict[str, np.ndarray]] = {}

    def settings(self) -> dict[str, Any]:
        mix = {"alpha": self.alpha, "patch_size": self.patch_size, "mode": self.mode, "folder": self.folder}
        augment = self.augment.name if self.augment else False
        return {"real": True, "synthetic": [], "augment": augment, "max_synthetic": None, "patch_mix": mix}

    def describe(self) -> str:
        parts = ["real"] + ([f"{self.augment.name} augmentation"] if self.augment else [])
        parts.append(
            f"DiffBoost patch mixing ({self.mode}, alpha {self.alpha}, patch {self.patch_size}) with `{self.folder}`"
        )
        return ", ".join(parts)

    def _versions_of(self, fold: int | None) -> dict[str, np.ndarray]:
        folder = self.folder.format(fold=fold) if "{fold}" in self.folder else self.folder
        if folder not in self._versions:
            self._versions[folder] = load_versions(folder, self.num_classes)
        return self._versions[folder]

    def check(self, folds: int | None, splits: Sequence[tuple[int | None, list, list]]) -> None:
        for folder in fold_folders(self.folder, folds, "patch_mix folder"):
            if not os.path.isfile(os.path.join(folder, "sources.json")):
                raise InputError(f"patch_mix folder '{folder}' has no sources.json.")
        for fold, train_real, _ in splits:
            self._with_versions(train_real, fold)  # fails now, not hours in, if a real pair has no versions

    def _with_versions(self, pairs: Sequence[Mapping[str, Any]], fold: int | None) -> list[dict]:
        versions = self._versions_of(fold)
        missing = [p["name"] for p in pairs if p["name"] not in versions]
        if missing:
            raise InputError(
                f"{len(missing)} real training pair(s) have no synthetic versions (first: '{missing[0]}'); generate "
                "them from the same training pairs."
            )
        return [{"image": p["image"], "label": p["label"], "synthetic": versions[p["name"]]} for p in pairs]

    def setup(self, train_real: Sequence[Mapping[str, Any]], fold: int | None, seed: int) -> TrainingSetup:
        pool = self._with_versions(train_real, fold)
        dataset = training_dataset(
            pool,
            self.augment or False,
            seed,
            image_keys=("image", "synthetic"),
            prepare=[SqueezeDimd(keys="synthetic", dim=1)],  # versions as the channels of one 2D image
            finish=[Lambdad(keys="synthetic", func=_versions_first)],
        )
        return TrainingSetup(
            dataset,
            real_pairs=len(pool),
            synthetic_pairs=0,
            prepare_batch=PatchMixPrepareBatch(self.alpha, self.patch_size, seed=seed),
            inferer=PatchMixInferer(self.mode),
        )


def table_ii_conditions(
    augmentations: Sequence[str],
    patch_mix: Mapping[str, Any],
    diffboost_with: Sequence[str] = (),
    num_classes: int = 2,
) -> dict[str, TrainingCondition]:
    """The rows of Table II: ``baseline``, one row per augmentation name, ``DiffBoost`` (patch mixing with
    ``patch_mix`` = ``{"folder", "alpha", "patch_size", "mode"}``) and ``DiffBoost+<name>`` per ``diffboost_with``."""
    rows: dict[str, TrainingCondition] = {"baseline": PairsCondition()}
    for name in augmentations:
        rows[name] = PairsCondition(augment=TableIIAugmentation(name))
    unknown = sorted(set(patch_mix) - {"folder", "alpha", "patch_size", "mode"})
    if unknown:
        raise InputError(f"'patch_mix' has unknown key '{unknown[0]}' (allowed: alpha, folder, mode, patch_size).")
    rows["DiffBoost"] = PatchMixCondition(**patch_mix, num_classes=num_classes)
    for name in diffboost_with:
        rows[f"DiffBoost+{name}"] = PatchMixCondition(**patch_mix, augment=name, num_classes=num_classes)
    return rows
