"""The Dice filter (DiffuseExpand's Stage IV, shared by every bundle): it keeps exactly the pairs under eta, and writes
its folder whole."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from common.errors import InputError
from common.filtering import filter_decisions, filter_pairs, hard_dice_loss
from common.writers import PairWriter
from tests.shared_data import bundle_module


def test_diffuse_expand_stage_iv_is_the_shared_filter():
    assert bundle_module("diffuse_expand", "diffuse_expand").filter_pairs is filter_pairs


class ThresholdSegmenter(nn.Module):
    """Predicts foreground exactly where the image is > 0."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fg = (x > 0).float()
        return torch.cat([1 - fg, fg], dim=1)


def pair(image_fg: np.ndarray, label: np.ndarray) -> dict:
    return {"image": np.where(image_fg, 0.5, -0.5).astype(np.float32)[None], "label": label.astype(np.int64)[None]}


def square(r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
    m = np.zeros((16, 16), bool)
    m[r0:r1, c0:c1] = True
    return m


@pytest.fixture
def pairs() -> list[dict]:
    ten = square(0, 2, 0, 5)  # 10 pixels
    shifted = ten.copy()
    shifted[0, 0], shifted[2, 0] = False, True  # 9 of 10 shared -> Dice 0.9
    big = square(0, 10, 0, 10)  # 100 pixels
    inner = big.copy()
    inner[0, :2] = False  # 98 pixels inside -> Dice 196/198
    return [
        pair(ten, ten),  # loss 0
        pair(ten, shifted),  # loss 0.1
        pair(ten, square(10, 12, 10, 15)),  # disjoint: loss 1
        pair(np.zeros((16, 16), bool), np.zeros((16, 16), bool)),  # empty/empty: loss 0
        pair(big, inner),  # loss 2/198
    ]


def test_hard_dice_loss_values(pairs):
    images = np.stack([p["image"] for p in pairs])
    labels = np.stack([p["label"] for p in pairs])
    predicted = (images > 0).astype(np.int64)
    np.testing.assert_allclose(hard_dice_loss(predicted, labels), [0, 0.1, 1, 0, 2 / 198], atol=1e-4)


def test_filter_keeps_exactly_the_pairs_under_eta(pairs, tmp_path):
    out = tmp_path / "filtered"
    report = filter_pairs(pairs, ThresholdSegmenter(), str(out), eta=0.065)
    assert [p["decision"] for p in report["pairs"]] == ["kept", "dropped", "dropped", "kept", "kept"]
    assert (report["kept"], report["relabelled"], report["dropped"], report["total"]) == (3, 0, 2, 5)
    datalist = json.loads((out / "datalist.json").read_text())
    assert len(datalist["training"]) == 3
    writer = PairWriter(str(out))
    for written, source in zip(range(3), (0, 3, 4)):
        image, label = writer.read(written)
        np.testing.assert_array_equal(label, pairs[source]["label"])
    assert json.loads((out / "filter_report.json").read_text())["kept"] == 3
    assert (out / "preview" / "pairs.png").is_file() and not (tmp_path / "filtered.partial").exists()


def test_middle_band_keeps_the_image_with_the_segmenters_mask(pairs, tmp_path):
    out = tmp_path / "filtered"
    report = filter_pairs(pairs, ThresholdSegmenter(), str(out), eta=0.065, middle_band=True)
    assert [p["decision"] for p in report["pairs"]] == ["kept", "relabelled", "dropped", "kept", "kept"]
    image, label = PairWriter(str(out)).read(1)  # the relabelled pair is the second written
    np.testing.assert_array_equal(label, (pairs[1]["image"] > 0).astype(np.int64))


def test_rerun_replaces_the_previous_output(pairs, tmp_path):
    out = tmp_path / "filtered"
    filter_pairs(pairs, ThresholdSegmenter(), str(out), eta=2.0)
    assert len(list(out.glob("pair_*"))) == 5
    filter_pairs(pairs, ThresholdSegmenter(), str(out), eta=0.065)
    assert len(list(out.glob("pair_*"))) == 3


def test_bad_filter_settings_are_named():
    with pytest.raises(InputError, match="'eta'"):
        filter_decisions([0.1], eta=0)
    with pytest.raises(InputError, match="'middle_band'"):
        filter_decisions([0.1], eta=0.1, middle_band="yes")
    with pytest.raises(InputError, match="no generated pairs"):
        filter_pairs([], ThresholdSegmenter(), "unused")
