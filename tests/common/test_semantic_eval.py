"""Scoring label-map -> image synthesis: paired metrics, per-organ Dice with the body class folded away, the table."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from common.errors import InputError
from common.semantic_eval import evaluate_semantic_synthesis, markdown_table
from common.writers import PairWriter

ORGANS = 3  # background + 2 organs; the body class is 3


def slices(count: int = 4, size: int = 16) -> list[dict]:
    """Label maps with two organs and a body; the image encodes the organ class as its intensity."""
    out = []
    for k in range(count):
        label = np.full((1, size, size), ORGANS, np.int64)  # body everywhere...
        label[0, :2] = 0  # ...but a strip of air
        label[0, 4 : 8 + k, 4:8] = 1
        label[0, 10:14, 6 : 10 + k % 2] = 2
        organs = np.where(label == ORGANS, 0, label)
        out.append({"name": f"s{k}", "image": (organs.astype(np.float32) - 1.0), "label": label})
    return out


def intensity_segmenter(images: torch.Tensor) -> torch.Tensor:
    """An oracle for ``slices``: intensity -1/0/1 -> class 0/1/2, as logits."""
    classes = torch.round(images + 1).clamp(0, ORGANS - 1).long()[:, 0]
    return torch.nn.functional.one_hot(classes, ORGANS).permute(0, 3, 1, 2).float() * 10


def write_method(folder, pairs, transform) -> str:
    writer = PairWriter(str(folder), num_classes=ORGANS + 1)
    for i, p in enumerate(pairs):
        writer.write(i, np.clip(transform(p["image"]), -1, 1), p["label"])
    return str(folder)


def test_scores_each_method_against_the_real_slices(tmp_path):
    pairs = slices()
    rng = np.random.default_rng(0)
    good = write_method(tmp_path / "good", pairs, lambda x: x + rng.normal(0, 0.05, x.shape))
    blank = write_method(tmp_path / "blank", pairs, lambda x: np.full_like(x, -1.0))
    results = evaluate_semantic_synthesis(
        pairs,
        {"good": good, "blank": blank},
        intensity_segmenter,
        organ_classes=ORGANS,
        model_classes=ORGANS + 1,
        output_dir=str(tmp_path / "eval"),
        class_names={"1": "liver", "2": "spleen"},
        fid=False,
        note="toy",
    )
    methods = results["methods"]
    assert list(methods) == ["real", "good", "blank"]
    assert methods["real"]["dice"]["per_organ"] == {"liver": 1.0, "spleen": 1.0}  # the body class is not an organ
    assert methods["good"]["dice"]["mean"] > 0.95 and methods["blank"]["dice"]["mean"] == pytest.approx(0.0)
    assert methods["good"]["psnr"] > methods["blank"]["psnr"] and methods["good"]["ssim"] > methods["blank"]["ssim"]
    assert methods["good"]["fid"] is None
    saved = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert saved["slices"] == 4 and saved["methods"]["good"]["psnr"] == pytest.approx(methods["good"]["psnr"])
    table = (tmp_path / "eval" / "results.md").read_text().splitlines()
    assert table[0] == "| method | FID | PSNR | SSIM | Dice (mean) | liver | spleen |"
    assert table[2].startswith("| real | - | - | - | 1.000 | 1.000 | 1.000 |")
    assert (tmp_path / "eval" / "figure.png").is_file()


def test_a_method_folder_missing_slices_is_refused(tmp_path):
    pairs = slices()
    partial = write_method(tmp_path / "partial", pairs[:2], lambda x: x)
    with pytest.raises(InputError, match="lacks 2 of the 4 synthetic slices"):
        evaluate_semantic_synthesis(
            pairs, {"partial": partial}, intensity_segmenter, ORGANS, ORGANS + 1, str(tmp_path / "eval"), fid=False
        )
    assert not (tmp_path / "eval" / "results.json").exists()


def test_markdown_table_dashes_missing_values():
    results = {
        "slices": 2,
        "methods": {"m": {"fid": None, "psnr": 12.345, "ssim": float("nan"), "dice": {"mean": 0.5, "per_organ": {}}}},
    }
    assert "| m | - | 12.35 | - | 0.500 |" in markdown_table(results)
