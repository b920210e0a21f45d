"""Scoring label-map -> image synthesis: paired metrics, per-organ Dice with the body class folded away, the table."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from common.errors import InputError
from common.writers import PairWriter
from tests.shared_data import bundle_module

EVALUATION = bundle_module("ct_semantic_synthesis", "evaluation")
evaluate_semantic_synthesis, markdown_table, volume_affine = (
    EVALUATION.evaluate_semantic_synthesis,
    EVALUATION.markdown_table,
    EVALUATION.volume_affine,
)


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
    with pytest.raises(InputError, match="lacks 2 of the 4 synthetic images"):
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


# ------------------------------------------------------------------------------------------------ TotalSegmentator


def slice_affines(count: int, step: float = 3.0) -> list[np.ndarray]:
    out = []
    for k in range(count):
        a = np.diag([1.5, 1.5, 1.0, 1.0])
        a[:3, 3] = [10.0, 20.0, 30.0 + step * k]
        out.append(a)
    return out


def test_volume_affine_stacks_an_evenly_spaced_run():
    affine = volume_affine(slice_affines(4))
    np.testing.assert_allclose(affine[:3, 2], [0, 0, 3.0])
    np.testing.assert_allclose(affine[:3, 3], [10, 20, 30])
    np.testing.assert_allclose(affine[:3, :2], np.diag([1.5, 1.5, 1.0])[:, :2])
    uneven = slice_affines(4)
    uneven[3][2, 3] += 1.0
    with pytest.raises(InputError, match="not one contiguous, evenly spaced run"):
        volume_affine(uneven)
    with pytest.raises(InputError, match="at least two slices"):
        volume_affine([None, None])


def test_totalsegmentator_hook_converts_stacks_and_maps_classes(monkeypatch):
    import sys
    import types

    calls = {}

    def fake_totalsegmentator(image, output, ml, task, roi_subset, device, fast, quiet):
        import nibabel as nib

        calls.update(affine=image.affine, data=np.asarray(image.dataobj), roi_subset=roi_subset, task=task)
        hu = np.asarray(image.dataobj)
        labels = np.where(hu > 100, 5, np.where(hu > 50, 1, 0))  # TotalSegmentator ids: 5 liver, 1 spleen
        return nib.Nifti1Image(labels.astype(np.uint8), image.affine)

    package = types.ModuleType("totalsegmentator")
    api = types.ModuleType("totalsegmentator.python_api")
    api.totalsegmentator = fake_totalsegmentator
    mapping = types.ModuleType("totalsegmentator.map_to_binary")
    mapping.class_map = {"total": {1: "spleen", 5: "liver", 52: "aorta"}}
    monkeypatch.setitem(sys.modules, "totalsegmentator", package)
    monkeypatch.setitem(sys.modules, "totalsegmentator.python_api", api)
    monkeypatch.setitem(sys.modules, "totalsegmentator.map_to_binary", mapping)
    TotalSegmentatorSegmenter = bundle_module("ct_semantic_synthesis", "evaluation").TotalSegmentatorSegmenter

    segmenter = TotalSegmentatorSegmenter(slice_affines(3), {"0": "background", "1": "liver", "2": "spleen"})
    images = torch.zeros(3, 1, 4, 5)
    images[:, :, :2] = 1.0  # 240 HU: "liver"
    images[:, :, 2:, :2] = 0.1  # 60 HU: "spleen"
    logits = segmenter(images)
    assert logits.shape == (3, 3, 4, 5)
    classes = logits.argmax(1)
    assert (classes[:, :2] == 1).all() and (classes[:, 2:, :2] == 2).all() and (classes[:, 2:, 2:] == 0).all()
    assert calls["data"].shape == (4, 5, 3) and calls["task"] == "total" and calls["roi_subset"] == ["liver", "spleen"]
    np.testing.assert_allclose(calls["data"][0, 0, 0], 240.0)  # level 40 + 1.0 * 400 / 2
    np.testing.assert_allclose(calls["affine"][:3, 2], [0, 0, 3.0])
    with pytest.raises(InputError, match="class 1 'kidney' is not a TotalSegmentator 'total' class"):
        TotalSegmentatorSegmenter(slice_affines(3), {"1": "kidney"})


def test_without_totalsegmentator_the_error_says_how_to_get_it(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "totalsegmentator", None)
    TotalSegmentatorSegmenter = bundle_module("ct_semantic_synthesis", "evaluation").TotalSegmentatorSegmenter

    with pytest.raises(InputError, match="TotalSegmentator is not installed"):
        TotalSegmentatorSegmenter(slice_affines(3), {"1": "liver"})
