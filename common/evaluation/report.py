"""The evaluation's report: statistics over runs and the files a person reads (results.md, results.png).

:func:`aggregate` gives mean, sample std and count of every metric per condition over its runs (seeds x folds);
:func:`paired_differences` the same for per-run differences to a baseline matched by seed and fold, so that seed
spread cancels out; :func:`write_markdown` and :func:`save_bar_chart` (Pillow, no matplotlib) draw them.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import stats as scipy_stats

from common.evaluation.scores import ALL_IMAGES, DISTANCES, METRICS
from common.writers import atomic_path, atomic_write_bytes

__all__ = ["PAIRED", "aggregate", "paired_differences", "go_no_go", "write_markdown", "save_bar_chart"]


def _stats(values: Sequence[float | None]) -> dict[str, Any]:
    """Mean, sample std, count and the 95% confidence interval of the mean (Student's t; null below 2 values)."""
    kept = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    mean = float(np.mean(kept)) if kept else None
    std = float(np.std(kept, ddof=1)) if len(kept) > 1 else None
    half = float(scipy_stats.t.ppf(0.975, len(kept) - 1) * std / math.sqrt(len(kept))) if std is not None else None
    return {
        "mean": mean,
        "std": std,
        "n": len(kept),
        "ci95": [mean - half, mean + half] if half is not None else None,
    }


def _numeric_keys(metrics: Mapping[str, Any]) -> list[str]:
    return [k for k, v in metrics.items() if v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))]


def aggregate(runs: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Mean, sample std (ddof=1) and count of every metric per condition, over its runs (seeds x folds).

    ``runs``: ``[{"condition", "seed", "fold", "metrics": summarise_images(...)}, ...]``; conditions keep the order in
    which they first appear.
    """
    by_condition: dict[str, list[Mapping[str, Any]]] = {}
    for run in runs:
        by_condition.setdefault(run["condition"], []).append(run["metrics"])
    result = {}
    for condition, metrics in by_condition.items():
        keys = _numeric_keys(metrics[0])
        classes = list(metrics[0].get("per_class", {}))
        result[condition] = {
            "runs": len(metrics),
            "metrics": {k: _stats([m.get(k) for m in metrics]) for k in keys},
            "per_class": {
                c: {
                    k: _stats([m["per_class"][c].get(k) for m in metrics])
                    for k in _numeric_keys(metrics[0]["per_class"][c])
                }
                for c in classes
            },
        }
    return result


PAIRED = (*METRICS, *ALL_IMAGES, "empty_gt_pred_empty_fraction")


def _pairing(run: Mapping[str, Any]) -> tuple[Any, Any, Any]:
    """What two runs share when they are paired: training seed, fold and real training subset."""
    return run["seed"], run["fold"], run.get("subset")


def paired_differences(
    runs: Sequence[Mapping[str, Any]], baseline: str, keys: Sequence[str] = PAIRED
) -> dict[str, dict[str, Any]]:
    """Per condition, stats (with a 95% interval) of (condition - baseline) over runs matched by seed, fold and
    training subset: the spread of seeds and subsets cancels out."""
    base = {_pairing(r): r["metrics"] for r in runs if r["condition"] == baseline}
    conditions = list(dict.fromkeys(r["condition"] for r in runs if r["condition"] != baseline))
    result = {}
    for condition in conditions:
        matched = [
            (r["metrics"], base[_pairing(r)]) for r in runs if r["condition"] == condition and _pairing(r) in base
        ]
        result[condition] = {
            k: _stats([m[k] - b[k] if m.get(k) is not None and b.get(k) is not None else None for m, b in matched])
            for k in keys
        }
    return result


def go_no_go(
    runs: Sequence[Mapping[str, Any]], candidate: str, reference: str, split: str, key: str = "dice_all"
) -> dict[str, Any]:
    """Should the synthetic pairs be used? ``candidate`` (e.g. real + augmentation + synthetic) against ``reference``
    (real + augmentation), run by run (:func:`paired_differences`), on ``key`` (Dice over all images by default: it
    charges false positives on normal images). Use them only when the 95% interval of the paired difference lies
    above 0; below 0, do not; spanning 0, the gain is not shown, so do not rely on them."""
    paired = paired_differences(runs, reference, keys=(key, "dice")).get(candidate)
    if paired is None:
        raise ValueError(f"no runs of '{candidate}' paired with '{reference}'.")
    stats, lesion = paired[key], paired["dice"]
    where = f"on split '{split}'" + (" (decide on a validation split: --test_split val)" if split == "test" else "")
    if stats["n"] < 2 or stats["ci95"] is None:
        decision, sentence = "undecided", f"{stats['n']} paired run(s): no interval; run more seeds before deciding."
    else:
        low, high = stats["ci95"]
        delta = f"{stats['mean']:+.3f} {key} [95% CI {low:+.3f}, {high:+.3f}] over {stats['n']} paired runs"
        if low > 0:
            decision, sentence = "use", f"Use them: {candidate} beats {reference} {where} by {delta}."
        elif high < 0:
            decision = "do not use"
            sentence = f"Do not use them: {candidate} is worse than {reference} {where}: {delta}."
        else:
            decision = "no gain shown"
            sentence = (
                f"No gain shown: {candidate} vs {reference} {where}: {delta}; the interval spans 0, so do not rely on "
                "the synthetic pairs for this dataset (more seeds narrow the interval)."
            )
    return {
        "candidate": candidate, "reference": reference, "split": split, "metric": key, "decision": decision,
        "sentence": sentence, "delta": stats, "delta_lesion_dice": lesion,
    }  # fmt: skip


# --------------------------------------------------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------------------------------------------------


def _cell(stats: Mapping[str, Any], runs: int, digits: int = 3) -> str:
    """``mean ± std``; ``(n=k)`` when the metric was undefined in some of the condition's runs."""
    if stats.get("mean") is None:
        return "n/a"
    text = f"{stats['mean']:.{digits}f}" + ("" if stats.get("std") is None else f" ± {stats['std']:.{digits}f}")
    return text + (f" (n={stats['n']})" if stats["n"] < runs else "")


def _interval(stats: Mapping[str, Any], digits: int = 3) -> str:
    """``+0.041 [+0.012, +0.070]`` (mean of paired differences and its 95% interval)."""
    if stats.get("mean") is None:
        return "n/a"
    text = f"{stats['mean']:+.{digits}f}"
    low_high = stats.get("ci95")
    return text + (f" [{low_high[0]:+.{digits}f}, {low_high[1]:+.{digits}f}]" if low_high else "")


def _table(
    aggregated: Mapping[str, Any], paired: Mapping[str, Any] | None, baseline: str, part: str | None
) -> list[str]:
    header = [
        "condition",
        "runs",
        "Dice (lesion images)",
        "Dice (all images)",
        "IoU",
        "Precision",
        "Recall",
        "HD95 (px)",
        "ASSD (px)",
        "missed (no HD95)",
        "empty GT → empty pred",
    ]
    if paired is not None:
        header += [f"ΔDice lesion vs {baseline} [95% CI]", f"ΔDice all vs {baseline} [95% CI]"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for condition, summary in aggregated.items():
        stats = summary["metrics"] if part is None else summary["per_class"][part]
        empty = stats["empty_gt_images"]["mean"]
        cells = [condition, str(summary["runs"])]
        runs = summary["runs"]
        cells += [_cell(stats[m], runs, 2 if m in DISTANCES else 3) for m in ("dice", "dice_all", *METRICS[1:])]
        cells.append(_cell(stats["hd95_missed"], runs, 1))
        cells.append(
            "none in test set" if not empty else f"{_cell(stats['empty_gt_pred_empty_fraction'], runs, 2)} of {empty:g}"
        )
        if paired is not None:
            for key in ("dice", "dice_all"):
                cells.append("—" if condition == baseline else _interval(paired[condition][key]))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def write_markdown(path: str | os.PathLike, results: Mapping[str, Any]) -> None:
    """``results.md``: condition × metrics (mean ± std over runs), per-class tables for multi-class, conventions."""
    protocol, aggregated = results["protocol"], results["aggregate"]
    baseline = protocol["baseline"]
    split = (
        f"{protocol['folds']}-fold cross-validation"
        if protocol["folds"]
        else f"trained on split '{protocol['train_split']}', tested on split '{protocol['test_split']}'"
    )
    pairs = f"at most {protocol['max_pairs']}" if protocol["max_pairs"] else "all"
    source = protocol["real"].get("datalist") or protocol["real"].get("dataset_dir")
    lines = ["# Downstream segmentation evaluation", ""]
    if results.get("go_no_go"):
        lines += [f"**Decision: {results['go_no_go']['decision']}.** {results['go_no_go']['sentence']}", ""]
    lines += [
        f"{protocol['network']} segmenter, {protocol['image_size']}² images, {protocol['num_classes']} classes, "
        f"{protocol['iterations']} iterations of batch {protocol['batch_size']} (Adam lr {protocol['lr']}, DiceCE); "
        f"{pairs} real training pairs (subset seed {protocol['subset_seed']}); {split}; "
        f"seeds {', '.join(map(str, protocol['seeds']))}. Data: `{source}`.",
        "",
        "Foreground mean over classes, mean ± std over runs:",
        "",
        *_table(aggregated, results["paired_vs_baseline"], baseline, None),
    ]
    classes = list(next(iter(aggregated.values()))["per_class"]) if aggregated else []
    if len(classes) > 1:
        for c in classes:
            lines += ["", f"Class {c}:", "", *_table(aggregated, None, baseline, c)]
    lines += ["", "Conditions:", ""]
    for name, description in protocol["condition_descriptions"].items():
        lines.append(f"- **{name}**: {description}")
    lines += ["", "Conventions:", ""] + [f"- {k}: {v}" for k, v in results["conventions"].items()]
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode("utf-8"))


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _text(
    draw: ImageDraw.ImageDraw,
    xy: tuple[float, float],
    text: str,
    font: Any,
    align: str = "centre",
    valign: str = "top",
    fill: Any = (0, 0, 0),
) -> None:
    """Text placed by its bounding box (bitmap fonts have no anchors)."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    width, height = right - left, bottom - top
    x = xy[0] - {"left": 0, "centre": width / 2, "right": width}[align] - left
    y = xy[1] - {"top": 0, "middle": height / 2, "bottom": height}[valign] - top
    draw.text((x, y), text, font=font, fill=fill)


def save_bar_chart(
    path: str | os.PathLike,
    aggregated: Mapping[str, Any],
    baseline: str | None = None,
    metric: str = "dice",
    title: str = "Dice on the test set (images with a lesion): mean ± std over runs",
) -> None:
    """A PNG bar chart of ``metric`` per condition with ±1 std error bars, drawn with Pillow (no matplotlib)."""
    names = list(aggregated)
    width, height = max(480, 110 * len(names) + 90), 380
    left, right, top, bottom = 60, 20, 48, 70
    plot_w, plot_h = width - left - right, height - top - bottom
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    font, title_font = _font(12), _font(15)

    def y_of(value: float) -> float:
        return top + plot_h * (1.0 - min(max(value, 0.0), 1.0))

    _text(draw, (width / 2, 12), title, title_font)
    for k in range(6):
        value = k / 5
        draw.line((left, y_of(value), width - right, y_of(value)), fill=(225, 225, 225))
        _text(draw, (left - 6, y_of(value)), f"{value:.1f}", font, align="right", valign="middle")
    draw.line((left, top, left, top + plot_h), fill=(0, 0, 0))
    draw.line((left, top + plot_h, width - right, top + plot_h), fill=(0, 0, 0))
    slot = plot_w / max(len(names), 1)
    bar = min(60.0, slot * 0.6)
    for i, name in enumerate(names):
        stats = aggregated[name]["metrics"][metric]
        centre = left + slot * (i + 0.5)
        mean, std = stats["mean"], stats["std"]
        colour = (120, 120, 120) if name == baseline else (31, 119, 180)
        if mean is None:
            _text(draw, (centre, top + plot_h - 4), "n/a", font, valign="bottom")
        else:
            draw.rectangle((centre - bar / 2, y_of(mean), centre + bar / 2, y_of(0.0)), fill=colour)
            upper = mean
            if std is not None:
                low, high = y_of(mean - std), y_of(mean + std)
                draw.line((centre, low, centre, high), fill=(0, 0, 0), width=2)
                for y in (low, high):
                    draw.line((centre - bar / 5, y, centre + bar / 5, y), fill=(0, 0, 0), width=2)
                upper = mean + std
            _text(draw, (centre, y_of(upper) - 4), f"{mean:.3f}", font, valign="bottom")
        words, lines = name.replace("+", "+ ").split(" "), [""]
        for word in words:  # wrap long condition names at "+" so they fit under their bar
            candidate = lines[-1] + word
            if lines[-1] and draw.textlength(candidate, font=font) > slot - 6:
                lines.append(word)
            else:
                lines[-1] = candidate
        for j, line in enumerate(lines):
            _text(draw, (centre, top + plot_h + 8 + 15 * j), line, font)
        _text(
            draw,
            (centre, top + plot_h + 8 + 15 * len(lines)),
            f"{aggregated[name]['runs']} run(s)",
            font,
            fill=(110, 110, 110),
        )
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
