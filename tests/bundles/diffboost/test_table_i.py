"""Table I scoring: rebuilt images against the real images they came from, on the paper's [0, 1] range."""

from __future__ import annotations

import json

import numpy as np
import pytest

from common.errors import InputError
from common.writers import PairWriter
from tests.shared_data import bundle_module

TABLE_I = bundle_module("diffboost", "table_i")
evaluate_reconstructions = TABLE_I.evaluate_reconstructions


def real_pairs(count: int = 5, size: int = 32) -> list[dict]:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(count):
        label = np.zeros((1, size, size), np.int64)
        label[0, 8:20, 10:22] = 1
        image = np.clip(rng.normal(0, 0.4, (1, size, size)), -1, 1)
        image = (np.rint((image + 1) * 127.5) / 127.5 - 1).astype(np.float32)  # on the 8-bit PNG grid: copies are exact
        out.append({"image": image, "label": label})
    return out


def write_method(folder, pairs, images) -> str:
    writer = PairWriter(str(folder), num_classes=2)
    for i, (pair, image) in enumerate(zip(pairs, images)):
        writer.write(i, image, pair["label"])
    return str(folder)


def test_exact_copy_scores_perfectly_and_a_constant_offset_scores_its_size(tmp_path):
    pairs = real_pairs()
    exact = write_method(tmp_path / "exact", pairs, [p["image"] for p in pairs])
    # a shift of 26 PNG steps (26 / 127.5 in [-1, 1]), so the written images carry it exactly
    shifted_images = [np.clip(p["image"] + 26 / 127.5, -1, 1) for p in pairs]
    shifted = write_method(tmp_path / "shifted", pairs, shifted_images)
    out = tmp_path / "table"
    results = evaluate_reconstructions(pairs, {"copy": exact, "shifted": shifted}, str(out), note="unit test")

    copy = results["methods"]["copy"]
    assert copy["mae_mean"] == pytest.approx(0, abs=1e-7) and copy["ssim_mean"] == pytest.approx(1, abs=1e-4)
    assert copy["ms_ssim_mean"] == pytest.approx(1, abs=1e-4)
    expected_mae = np.mean([np.abs(s - p["image"]).mean() / 2 for s, p in zip(shifted_images, pairs)])
    assert results["methods"]["shifted"]["mae_mean"] == pytest.approx(expected_mae, rel=1e-4)
    assert results["methods"]["shifted"]["ssim_mean"] < copy["ssim_mean"]
    assert results["images"] == 5 and results["value_range"] == [0.0, 1.0]

    assert json.loads((out / "results.json").read_text())["methods"]["shifted"]["rmse_mean"] > 0
    table = (out / "results.md").read_text()
    assert "| method | MAE ↓ | MSE ↓ | RMSE ↓ | SSIM ↑ | MS-SSIM ↑ |" in table
    copy_row = next(line for line in table.splitlines() if line.startswith("| copy"))
    assert copy_row.count("**") == 10  # best in all five columns
    assert "unit test" in table and (out / "figure.png").is_file()


def test_missing_images_and_empty_inputs_are_named(tmp_path):
    pairs = real_pairs(4)
    partial = write_method(tmp_path / "partial", pairs[:2], [p["image"] for p in pairs[:2]])
    with pytest.raises(InputError, match="partial' lacks 2 of the 4 synthetic images"):
        evaluate_reconstructions(pairs, {"partial": partial}, str(tmp_path / "out"))
    assert not (tmp_path / "out" / "results.json").exists()
    with pytest.raises(InputError, match="at least one folder"):
        evaluate_reconstructions(pairs, {}, str(tmp_path / "out"))
    with pytest.raises(InputError, match="no real images"):
        evaluate_reconstructions([], {"partial": partial}, str(tmp_path / "out"))
