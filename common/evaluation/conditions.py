"""What a segmenter trains on in one row of the evaluation table: a *training condition*.

The protocol (:mod:`common.evaluation.protocol`) knows nothing of any method: it hands each condition the real training
pairs of a split and gets back what to train on (:class:`TrainingSetup`). A condition is any
:class:`TrainingCondition`; a bundle passes its own as objects (DiffBoost's patch mixing, its Table II augmentations),
and a plain mapping from a config is read as the common :class:`PairsCondition`:

    {"real": true, "synthetic": ["outputs/generated"], "augment": false, "max_synthetic": null}

real pairs (or not), merged with PairWriter folders of synthetic pairs, optionally with conventional augmentation.
"""

from __future__ import annotations

import abc
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from monai.data import Dataset
from torch.utils.data import ConcatDataset

from common.data import load_dataset, subset_indices
from common.errors import InputError
from common.evaluation.segmenter import training_dataset
from common.training import training_items

__all__ = [
    "TrainingSetup",
    "TrainingCondition",
    "PairsCondition",
    "as_conditions",
    "fold_folders",
    "load_synthetic",
    "merge_training_pairs",
]

_CONDITION_KEYS = {"real", "synthetic", "augment", "max_synthetic", "synthetic_share", "augment_synthetic"}
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


@dataclass
class TrainingSetup:
    """What one run trains on: a dataset (and, when a condition needs them, its own batch preparation and inferer)."""

    dataset: Dataset
    real_pairs: int
    synthetic_pairs: int
    prepare_batch: Any = None
    inferer: Any = None
    notes: dict[str, Any] = field(default_factory=dict)
    sample_weights: list[float] | None = None  # per dataset item: how often batches draw it (None: uniformly)


class TrainingCondition(abc.ABC):
    """One row of the table. The protocol calls :meth:`check` once before anything trains (bad folders fail at
    start-up, not hours in), then :meth:`setup` per run; :meth:`settings` is stored in every run file, so a changed
    condition is never mixed with old runs, and :meth:`describe` is its line in results.md."""

    uses_real: bool = True

    @abc.abstractmethod
    def settings(self) -> dict[str, Any]:
        """A JSON-able description of everything that changes what the segmenter is trained on."""

    @abc.abstractmethod
    def describe(self) -> str:
        """One line for a person."""

    def check(self, folds: int | None, splits: Sequence[tuple[int | None, list, list]]) -> None:
        """Validate and load what the condition needs for every ``(fold, train_real, test_real)`` split."""

    @abc.abstractmethod
    def setup(self, train_real: Sequence[Mapping[str, Any]], fold: int | None, seed: int) -> TrainingSetup:
        """The training data of one run from the real training pairs of its split."""


def fold_folders(entry: str | os.PathLike, folds: int | None, what: str) -> list[str]:
    """The folder(s) an entry names: one, or one per fold when it contains ``{fold}`` (a generator per fold)."""
    entry = os.fspath(entry)
    if "{fold}" not in entry:
        return [entry]
    if folds is None:
        raise InputError(f"{what} '{entry}' has '{{fold}}' but 'folds' is None.")
    return [entry.format(fold=f) for f in range(folds)]


def _for_fold(entry: str, fold: int | None) -> str:
    return str(Path(entry.format(fold=fold)).resolve()) if "{fold}" in entry else entry


def load_synthetic(folder: str | os.PathLike, image_size: int | Sequence[int], num_classes: int) -> list[dict]:
    """All pairs of a folder written by :class:`common.writers.PairWriter` (images, labels/final/, datalist.json)."""
    if not os.path.isdir(folder):
        raise InputError(f"synthetic folder '{folder}' does not exist (set 'synthetic_dirs' to PairWriter folders).")
    return load_dataset(dataset_dir=folder, split=None, image_size=image_size, num_classes=num_classes)


def merge_training_pairs(
    real: Sequence[Mapping[str, Any]],
    synthetic: Sequence[Sequence[Mapping[str, Any]]],
    use_real: bool = True,
    max_synthetic: int | None = None,
    seed: int = 0,
) -> list[dict]:
    """The training pool of one condition: real pairs (if ``use_real``) followed by every synthetic set.

    ``max_synthetic`` keeps a seeded subset of that many pairs per synthetic set (nested across sizes). The pool is
    sampled uniformly, so the synthetic share of a batch equals its share of the pool.
    """
    pool = training_items(real) if use_real else []
    for pairs in synthetic:
        keep = subset_indices(len(pairs), max_synthetic, seed)
        pool.extend(training_items([pairs[i] for i in keep]))
    return pool


def _no_augmentation(image_keys: Sequence[str]) -> list:
    """An augmentation of no transforms: items typed as augmented ones (tensors), so the two collate together."""
    return []


class PairsCondition(TrainingCondition):
    """Real pairs and/or synthetic PairWriter folders, optionally augmented on the fly.

    Args:
        real: train on the real pairs of the split.
        synthetic: PairWriter folders merged into the pool; ``{fold}`` in a path is formatted per fold.
        augment: False, True (conventional augmentation, :func:`common.evaluation.segmenter.augmentation`) or a
            function ``image_keys -> MONAI transforms`` whose ``name`` says what it is.
        max_synthetic: a seeded subset of at most this many pairs per synthetic folder.
        synthetic_share: the expected share of synthetic pairs in a batch (e.g. 0.25), whatever their share of the
            pool; None: draw the pool uniformly (the share is then the pool's).
        augment_synthetic: with ``augment``, augment the synthetic pairs too (default) or the real ones only.
        image_size, num_classes: how the synthetic pairs are loaded (the protocol sets them).
        subset_seed: the seed of the ``max_synthetic`` subset.
    """

    def __init__(
        self,
        real: bool = True,
        synthetic: Sequence[str | os.PathLike] | str | None = (),
        augment: bool | Callable[[Sequence[str]], list] = False,
        max_synthetic: int | None = None,
        image_size: int = 64,
        num_classes: int = 2,
        subset_seed: int = 0,
        synthetic_share: float | None = None,
        augment_synthetic: bool = True,
    ) -> None:
        if not isinstance(real, bool):
            raise InputError(f"'real' must be true or false, got {real!r}.")
        if not isinstance(augment, bool) and not callable(augment):
            raise InputError(
                f"'augment' must be true, false or a function returning MONAI transforms, got {augment!r}."
            )
        if max_synthetic is not None and (
            isinstance(max_synthetic, bool) or not isinstance(max_synthetic, (int, np.integer)) or max_synthetic < 1
        ):
            raise InputError(f"'max_synthetic' must be a positive integer or null, got {max_synthetic!r}.")
        if synthetic_share is not None and (
            isinstance(synthetic_share, bool)
            or not isinstance(synthetic_share, (int, float))
            or not 0 < synthetic_share < 1
            or not real
        ):
            raise InputError(
                "'synthetic_share' must be a number strictly between 0 and 1 (with real pairs), "
                f"got {synthetic_share!r}."
            )
        if not isinstance(augment_synthetic, bool):
            raise InputError(f"'augment_synthetic' must be true or false, got {augment_synthetic!r}.")
        synthetic = [synthetic] if isinstance(synthetic, (str, os.PathLike)) else list(synthetic or [])
        for entry in synthetic:
            if not isinstance(entry, (str, os.PathLike)):
                raise InputError(f"synthetic entry {entry!r} is not a folder path.")
        if not real and not synthetic:
            raise InputError("a condition without real pairs needs 'synthetic' folders: it has no training data.")
        self.uses_real = real
        self.folders = [os.fspath(s) if "{fold}" in os.fspath(s) else str(Path(s).resolve()) for s in synthetic]
        self.augment = augment
        self.augment_name = (
            "augmentation" if augment is True else getattr(augment, "name", None) or getattr(augment, "__name__", None)
        )
        self.max_synthetic = max_synthetic
        self.synthetic_share = None if synthetic_share is None else float(synthetic_share)
        self.augment_synthetic = augment_synthetic
        self.image_size, self.num_classes, self.subset_seed = image_size, num_classes, subset_seed
        self._loaded: dict[str, list[dict]] = {}

    @classmethod
    def from_spec(cls, name: str, spec: Mapping[str, Any], **protocol: Any) -> PairsCondition:
        """A condition from its config mapping (keys ``real``, ``synthetic``, ``augment`` (bool), ``max_synthetic``)."""
        unknown = sorted(set(spec) - _CONDITION_KEYS)
        if unknown:
            raise InputError(
                f"condition '{name}' has unknown key '{unknown[0]}' (allowed: {', '.join(sorted(_CONDITION_KEYS))}; "
                "other kinds of conditions are passed as objects by the bundle that defines them)."
            )
        augment = spec.get("augment", False)
        if not isinstance(augment, bool):
            raise InputError(f"condition '{name}' key 'augment' must be true or false, got {augment!r}.")
        try:
            return cls(
                real=spec.get("real", True),
                synthetic=spec.get("synthetic") or [],
                augment=augment,
                max_synthetic=spec.get("max_synthetic"),
                synthetic_share=spec.get("synthetic_share"),
                augment_synthetic=spec.get("augment_synthetic", True),
                **protocol,
            )
        except InputError as exc:
            raise InputError(f"condition '{name}': {exc}") from exc

    def settings(self) -> dict[str, Any]:
        settings = {
            "real": self.uses_real,
            "synthetic": self.folders,
            "augment": self.augment if isinstance(self.augment, bool) else self.augment_name,
            "max_synthetic": self.max_synthetic,
        }
        if self.synthetic_share is not None:  # only when set: run files made before these levers stay valid
            settings["synthetic_share"] = self.synthetic_share
        if not self.augment_synthetic:
            settings["augment_synthetic"] = False
        return settings

    def describe(self) -> str:
        parts = ["real" if self.uses_real else "no real"] + ([self.augment_name] if self.augment else [])
        limit = f" (≤ {self.max_synthetic})" if self.max_synthetic else ""
        levers = [f"{self.synthetic_share:g} of each batch synthetic"] if self.synthetic_share is not None else []
        levers += ["synthetic pairs not augmented"] if self.augment and not self.augment_synthetic else []
        return ", ".join(parts + [f"synthetic `{s}`{limit}" for s in self.folders] + levers)

    def check(self, folds: int | None, splits: Sequence[tuple[int | None, list, list]]) -> None:
        for entry in self.folders:
            for folder in fold_folders(entry, folds, "synthetic folder"):
                if not os.path.isdir(folder):
                    raise InputError(f"synthetic folder '{folder}' does not exist.")
            for fold, _, _ in splits:
                folder = _for_fold(entry, fold)
                if folder not in self._loaded:
                    self._loaded[folder] = load_synthetic(folder, self.image_size, self.num_classes)

    def setup(self, train_real: Sequence[Mapping[str, Any]], fold: int | None, seed: int) -> TrainingSetup:
        synthetic = []
        for entry in self.folders:
            folder = _for_fold(entry, fold)
            if folder not in self._loaded:
                self._loaded[folder] = load_synthetic(folder, self.image_size, self.num_classes)
            synthetic.append(self._loaded[folder])
        pool = merge_training_pairs(train_real, synthetic, self.uses_real, self.max_synthetic, self.subset_seed)
        real = len(train_real) if self.uses_real else 0
        if self.augment and not self.augment_synthetic and len(pool) > real:
            unchanged = training_dataset(pool[real:], _no_augmentation, seed)  # typed like the augmented items
            dataset = ConcatDataset([training_dataset(pool[:real], self.augment, seed), unchanged])  # real first
        else:
            dataset = training_dataset(pool, self.augment, seed)
        weights = None
        if self.synthetic_share is not None and 0 < real < len(pool):
            share, count = self.synthetic_share, len(pool) - real
            weights = [(1 - share) / real] * real + [share / count] * count
        return TrainingSetup(dataset, real, len(pool) - real, sample_weights=weights)


def as_conditions(
    conditions: Mapping[str, Mapping[str, Any] | TrainingCondition], **protocol: Any
) -> dict[str, TrainingCondition]:
    """Config conditions as objects: mappings become :class:`PairsCondition` (``protocol``: image_size, num_classes,
    subset_seed), objects pass through; names are checked (they name files under runs/)."""
    if not isinstance(conditions, Mapping) or not conditions:
        raise InputError("'conditions' must be a non-empty mapping of name -> {'real', 'synthetic', 'augment'}.")
    checked: dict[str, TrainingCondition] = {}
    for name, spec in conditions.items():
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise InputError(
                f"condition name {name!r} must start with a letter or digit and use only letters, digits and _.+- "
                f"(it names files under runs/)."
            )
        if isinstance(spec, TrainingCondition):
            checked[name] = spec
        elif isinstance(spec, Mapping):
            checked[name] = PairsCondition.from_spec(name, spec, **protocol)
        else:
            raise InputError(f"condition '{name}' must be a mapping with keys 'real', 'synthetic', 'augment'.")
    return checked
