"""The downstream segmentation protocol (DESIGN §5): what do synthetic pairs do for a segmenter trained on them?

One protocol for every bundle: a segmenter (:mod:`common.evaluation.segmenter`) is trained for a fixed number of
optimiser steps on each *condition* (:mod:`common.evaluation.conditions`: real pairs alone, with augmentation, merged
with synthetic folders, synthetic only, or any condition object a bundle passes in), for several seeds and either a
fixed train/test split or k folds, and scored on the real test pairs (:mod:`common.evaluation.scores`). Each
(condition, seed, fold) run is written to ``output_dir/runs/`` as soon as it finishes and skipped when present, so a
killed evaluation continues where it stopped; ``results.json``, ``results.md`` and ``results.png``
(:mod:`common.evaluation.report`) are written last.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import monai
import numpy as np
import torch
from monai.data import partition_dataset

from common.data import load_dataset, subset_indices
from common.errors import InputError
from common.evaluation.conditions import TrainingCondition, as_conditions
from common.evaluation.report import aggregate, go_no_go, paired_differences, save_bar_chart, write_markdown
from common.evaluation.scores import CONVENTIONS, evaluate_segmenter, summarise_images
from common.evaluation.segmenter import DEFAULTS, build_segmenter, network_key, save_segmenter, train_segmenter
from common.writers import atomic_write_bytes

__all__ = ["kfold_splits", "run_segmentation_evaluation"]

logger = logging.getLogger(__name__)

_REAL_KEYS = {"dataset_dir", "datalist", "mask_dir", "slice_axis", "skip_empty_slices", "intensity_window", "split"}


def kfold_splits(pairs: Sequence[Mapping[str, Any]], folds: int, seed: int = 0) -> list[tuple[list[int], list[int]]]:
    """``folds`` (train indices, test indices) pairs whose test sets partition ``pairs`` with no overlap.

    Slices of one volume never straddle folds when there are at least ``folds`` volumes (grouped by source file,
    shuffled with MONAI's ``partition_dataset``); with fewer volumes, folds are contiguous slabs of the slice order,
    so neighbouring, near-identical slices stay on one side (DESIGN §5: split by patient or contiguous slab).
    """
    if isinstance(folds, bool) or not isinstance(folds, (int, np.integer)) or folds < 2:
        raise InputError(f"'folds' must be None or an integer >= 2, got {folds!r}.")
    if folds > len(pairs):
        raise InputError(f"'folds' is {folds} but there are only {len(pairs)} pairs to split.")
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(pairs):
        key = str(p.get("source")) if p.get("slice") is not None else f"{p.get('source')}#{p.get('name', i)}#{i}"
        groups.setdefault(key, []).append(i)
    if len(groups) >= folds:
        parts = partition_dataset(list(groups), num_partitions=int(folds), shuffle=True, seed=int(seed))
        tests = [sorted(i for g in part for i in groups[g]) for part in parts]
    else:
        order = sorted(range(len(pairs)), key=lambda i: (str(pairs[i].get("source")), pairs[i].get("slice") or 0))
        tests = [sorted(int(i) for i in chunk) for chunk in np.array_split(order, folds)]
    every = set(range(len(pairs)))
    return [(sorted(every - set(test)), test) for test in tests]


def _positive_int(key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InputError(f"'{key}' must be a positive integer, got {value!r}.")
    return int(value)


def _check_real(real: Any, folds: int | None) -> dict[str, Any]:
    if not isinstance(real, Mapping):
        raise InputError("'real' must be a mapping of load_dataset arguments such as {'dataset_dir': ...}.")
    unknown = sorted(set(real) - _REAL_KEYS)
    if unknown:
        raise InputError(f"'real' has unknown key '{unknown[0]}' (allowed: {', '.join(sorted(_REAL_KEYS))}).")
    real = {k: v for k, v in real.items() if v is not None and v != ""}
    # absolute, so a run resumed from another working directory sees the same settings (a datalist may also be a
    # name inside dataset_dir, which load_dataset resolves)
    if "dataset_dir" in real:
        real["dataset_dir"] = str(Path(os.fspath(real["dataset_dir"])).expanduser().resolve())
    if "datalist" in real and Path(os.fspath(real["datalist"])).expanduser().is_file():
        real["datalist"] = str(Path(os.fspath(real["datalist"])).expanduser().resolve())
    if "dataset_dir" not in real and "datalist" not in real:
        raise InputError("'dataset_dir' (or 'datalist') must be set: the evaluation needs real pairs to test on.")
    if folds is None and "split" in real:
        raise InputError(
            "'real' key 'split' chooses the pairs to cross-validate and needs 'folds'; "
            "use 'train_split' and 'test_split' for a fixed split."
        )
    return real


def _check_classes(pairs: Sequence[Mapping[str, Any]], num_classes: int, source: str) -> None:
    highest = max(int(np.max(p["label"])) for p in pairs)
    if highest < num_classes - 1:
        raise InputError(
            f"'num_classes' is {num_classes} but the masks of '{source}' only contain classes 0..{highest}; "
            f"set num_classes to the number of classes in the masks, background included."
        )


def _pair_key(pair: Mapping[str, Any]) -> tuple[str, Any]:
    return str(pair.get("source")), pair.get("slice")


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=lambda v: os.fspath(v) if isinstance(v, os.PathLike) else str(v)))


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _run_id(condition: str, seed: int, fold: int | None) -> str:
    return f"{condition}__seed{seed}" + (f"__fold{fold}" if fold is not None else "")


def _read_run(path: Path, settings: Mapping[str, Any]) -> dict[str, Any] | None:
    """A finished run, or None if absent; a run made with other settings is an error, never silently mixed in."""
    if not path.is_file():
        return None
    try:
        run = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"run file '{path}' is not readable JSON ({exc}); delete it to rerun that run.") from exc
    stored = run.get("settings", {})
    changed = [k for k in settings if stored.get(k) != settings[k]]
    if changed:
        key = changed[0]
        raise InputError(
            f"run file '{path}' was made with different settings ('{key}': {stored.get(key)!r} then, "
            f"{settings[key]!r} now); use another output_dir or delete the runs/ folder."
        )
    return run


def run_segmentation_evaluation(
    real: Mapping[str, Any],
    conditions: Mapping[str, Mapping[str, Any] | TrainingCondition],
    seeds: Sequence[int] | int = DEFAULTS["seeds"],
    folds: int | None = None,
    network: str = DEFAULTS["network"],
    image_size: int = DEFAULTS["image_size"],
    num_classes: int = DEFAULTS["num_classes"],
    iterations: int = DEFAULTS["iterations"],
    batch_size: int = DEFAULTS["batch_size"],
    lr: float = DEFAULTS["lr"],
    output_dir: str | os.PathLike = "outputs/evaluation",
    device: str | torch.device = "cpu",
    max_pairs: int | None = None,
    subset_seed: int = 0,
    train_split: str = "train",
    test_split: str = "test",
    network_kwargs: Mapping[str, Any] | None = None,
    baseline: str | None = None,
    save_models: bool = False,
    eval_batch_size: int = DEFAULTS["eval_batch_size"],
    decision: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Train and score a segmenter per (condition, seed, fold); write ``runs/*.json`` then results.json/.md/.png.

    ``real``: :func:`common.data.load_dataset` arguments (``dataset_dir`` or ``datalist``, ``mask_dir``, ...; ``split``
    only with ``folds``, to pick the pairs to cross-validate). With ``folds=None`` the segmenter trains on
    ``train_split`` and is tested on ``test_split``; with ``folds=k`` on k-1 folds and tested on the k-th. ``max_pairs``
    keeps a seeded subset of the real training pairs, drawn with ``subset_seed`` and independent of the training seed so
    that every seed sees the pairs the generator was trained on (use the generator's seed; train.json's default is 0).
    ``conditions``: name -> a :class:`common.evaluation.conditions.TrainingCondition`, or a mapping ``{"real": bool,
    "synthetic": [PairWriter folders, '{fold}' formatted per fold], "augment": bool, "max_synthetic": int | None}``
    read as a :class:`~common.evaluation.conditions.PairsCondition`. Finished runs under
    ``output_dir/runs`` are reused, so a killed evaluation resumes; ``save_models`` also keeps each trained segmenter
    as ``runs/<run>.pt``. ``decision``: ``[candidate, reference]`` conditions (e.g. real + augmentation + synthetic
    against real + augmentation) for a go / no-go on the synthetic pairs (:func:`common.evaluation.report.go_no_go`),
    written first in results.md and as ``go_no_go`` in results.json.
    """
    seeds = [seeds] if isinstance(seeds, (int, np.integer)) and not isinstance(seeds, bool) else list(seeds or [])
    if not seeds or not all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in seeds):
        raise InputError(f"'seeds' must be a non-empty list of integers, got {seeds!r}.")
    if len(set(seeds)) != len(seeds):
        raise InputError(f"'seeds' has duplicates: {seeds!r}.")
    if folds is not None and (isinstance(folds, bool) or not isinstance(folds, (int, np.integer)) or folds < 2):
        raise InputError(f"'folds' must be None or an integer >= 2, got {folds!r}.")
    iterations, batch_size = _positive_int("iterations", iterations), _positive_int("batch_size", batch_size)
    if max_pairs is not None:
        _positive_int("max_pairs", max_pairs)
    network = network_key(network)
    build_segmenter(network, num_classes, image_size, network_kwargs=network_kwargs)  # fails now, not after loading
    real = _check_real(real, folds)
    conditions = as_conditions(conditions, image_size=image_size, num_classes=num_classes, subset_seed=subset_seed)
    baseline = baseline if baseline is not None else ("real" if "real" in conditions else next(iter(conditions)))
    if baseline not in conditions:
        raise InputError(f"'baseline' '{baseline}' is not one of the conditions ({', '.join(conditions)}).")
    if decision is not None:
        if isinstance(decision, str) or len(decision) != 2 or any(name not in conditions for name in decision):
            raise InputError(
                f"'decision' must name two of the conditions ({', '.join(conditions)}) as [candidate, reference], "
                f"got {decision!r}."
            )
    device = torch.device(device)
    source = str(real.get("datalist") or real.get("dataset_dir"))

    # real data, loaded once: a fixed split, or the pool the folds are cut from
    load_kwargs = {k: v for k, v in real.items() if k != "split"}
    if folds is None:
        train_real = load_dataset(
            **load_kwargs,
            split=train_split,
            image_size=image_size,
            num_classes=num_classes,
            max_pairs=max_pairs,
            seed=subset_seed,
        )
        test_real = load_dataset(**load_kwargs, split=test_split, image_size=image_size, num_classes=num_classes)
        shared = {_pair_key(p) for p in train_real} & {_pair_key(p) for p in test_real}
        if shared:
            raise InputError(
                f"'{source}' has {len(shared)} pair(s) in both split '{train_split}' and split '{test_split}' "
                f"(e.g. '{sorted(shared)[0][0]}'); give it a splits.json or use 'folds'."
            )
        _check_classes(train_real + test_real, num_classes, source)
        splits = [(None, train_real, test_real)]
    else:
        pool = load_dataset(**load_kwargs, split=real.get("split"), image_size=image_size, num_classes=num_classes)
        _check_classes(pool, num_classes, source)
        splits = []
        for fold, (train_idx, test_idx) in enumerate(kfold_splits(pool, folds, seed=subset_seed)):
            keep = subset_indices(len(train_idx), max_pairs, subset_seed)
            splits.append((fold, [pool[train_idx[i]] for i in keep], [pool[i] for i in test_idx]))

    # what every condition needs, loaded once and before any training, so that a bad folder fails at start-up
    for name, condition in conditions.items():
        try:
            condition.check(folds, splits)
        except InputError as exc:
            raise InputError(f"condition '{name}': {exc}") from exc

    common_settings = {
        "real": real,
        "train_split": train_split if folds is None else None,
        "test_split": test_split if folds is None else None,
        "folds": folds,
        "max_pairs": max_pairs,
        "subset_seed": subset_seed,
        "network": network,
        "network_kwargs": dict(network_kwargs or {}),
        "image_size": image_size,
        "num_classes": num_classes,
        "iterations": iterations,
        "batch_size": batch_size,
        "lr": lr,
    }
    output_dir = Path(output_dir)
    runs_dir = output_dir / "runs"
    # every run file is checked before anything trains: a settings mismatch must not surface hours in
    plan = []
    for condition, spec in conditions.items():
        settings = _jsonable({**common_settings, "condition": spec.settings()})
        for seed in seeds:
            for fold, train_real, test_real in splits:
                run_id = _run_id(condition, int(seed), fold)
                path = runs_dir / f"{run_id}.json"
                plan.append(
                    (
                        condition,
                        spec,
                        settings,
                        int(seed),
                        fold,
                        train_real,
                        test_real,
                        run_id,
                        path,
                        _read_run(path, settings),
                    )
                )
    runs: list[dict[str, Any]] = []
    trained = 0
    for condition, spec, settings, seed, fold, train_real, test_real, run_id, path, run in plan:
        if run is not None:
            run["metrics"] = summarise_images(run["per_image"], num_classes)  # today's conventions on stored images
            run["subset"] = subset_seed
            logger.info("run %s: already done, skipped (Dice %s).", run_id, _fmt(run["metrics"]["dice"]))
            if save_models and not (runs_dir / f"{run_id}.pt").is_file():
                logger.warning(
                    "run %s was made without save_models, so it has no weights; delete %s to train it again.",
                    run_id,
                    path,
                )
            runs.append(run)
            continue
        training = spec.setup(train_real, fold, seed)
        logger.info(
            "run %s: training %s for %d iterations on %d real and %d synthetic pairs (%s).",
            run_id,
            network,
            iterations,
            training.real_pairs,
            training.synthetic_pairs,
            spec.describe(),
        )
        torch.manual_seed(seed)
        model = build_segmenter(network, num_classes, image_size, network_kwargs=network_kwargs)
        history = train_segmenter(
            model,
            iterations=iterations,
            batch_size=batch_size,
            lr=lr,
            seed=seed,
            device=device,
            dataset=training.dataset,
            prepare_batch=training.prepare_batch,
            inferer=training.inferer,
            sample_weights=training.sample_weights,
        )
        per_image = evaluate_segmenter(model, test_real, num_classes, eval_batch_size, device)
        metrics = summarise_images(per_image, num_classes)
        if save_models:
            save_segmenter(model, runs_dir / f"{run_id}.pt", network, num_classes, image_size, network_kwargs)
        run = _jsonable(
            {
                "condition": condition,
                "seed": seed,
                "fold": fold,
                "subset": subset_seed,
                "settings": settings,
                "threads": torch.get_num_threads(),
                "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
                "train_pairs_real": training.real_pairs,
                "train_pairs_synthetic": training.synthetic_pairs,
                "test_pairs": len(test_real),
                **history,
                "metrics": metrics,
                "per_image": per_image,
                # to audit "no leakage": the generator must have seen exactly these real pairs
                "train_real_names": [str(p.get("name")) for p in train_real] if spec.uses_real else [],
            }
        )
        atomic_write_bytes(path, (json.dumps(run, indent=1) + "\n").encode("utf-8"))
        trained += 1
        logger.info("run %s: Dice %s, %.0f s.", run_id, _fmt(metrics["dice"]), history["seconds"])
        runs.append(run)

    summary_runs = [
        {k: v for k, v in r.items() if k not in ("per_image", "settings", "train_real_names")} for r in runs
    ]
    results = _jsonable(
        {
            "protocol": {
                **common_settings,
                "seeds": seeds,
                "baseline": baseline,
                "device": str(device),
                "conditions": {name: spec.settings() for name, spec in conditions.items()},
                "condition_descriptions": {name: spec.describe() for name, spec in conditions.items()},
                "loss": "DiceCELoss(softmax)",
                "optimizer": "Adam",
                "threads": torch.get_num_threads(),
                "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
                "versions": {"torch": torch.__version__, "monai": monai.__version__},
            },
            "conventions": CONVENTIONS,
            "aggregate": aggregate(summary_runs),
            "paired_vs_baseline": paired_differences(summary_runs, baseline),
            "go_no_go": go_no_go(summary_runs, *decision, split=str(test_split if folds is None else "folds"))
            if decision
            else None,
            "runs": summary_runs,
        }
    )
    # the summary files last: their presence means every run is in
    save_bar_chart(output_dir / "results.png", results["aggregate"], baseline)
    write_markdown(output_dir / "results.md", results)
    atomic_write_bytes(output_dir / "results.json", (json.dumps(results, indent=2) + "\n").encode("utf-8"))
    if results["go_no_go"]:
        logger.info("go / no-go: %s", results["go_no_go"]["sentence"])
    logger.info(
        "segmentation evaluation: %d run(s) trained, %d reused; results in %s.",
        trained,
        len(runs) - trained,
        output_dir,
    )
    return results
