"""The CT bundle as the model card runs it: train on the NIfTI volume's train slab, synthesize its test slab and the
DICOM series (cross-scan), train Pix2Pix, evaluate, all through ``python -m monai.bundle run`` on tiny settings."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.bundle_runner import run_bundle
from tests.shared_data import DATA, REPO, needs

CONFIGS = REPO / "bundles" / "ct_semantic_synthesis" / "configs"
TINY = REPO / "tests" / "configs" / "ct_semantic_tiny.json"
CT = DATA / "ct_abdomen"
VOLUME = ("--image_path", str(CT / "ct.nii.gz"), "--label_path", str(CT / "labels.nii.gz"), "--num_classes", "14")
DICOM = ("--image_path", str(CT / "dicom"), "--label_path", str(CT / "dicom_labels.nii.gz"), "--num_classes", "14")

pytestmark = [needs("ct_abdomen", "ct.nii.gz"), needs("ct_abdomen", "dicom")]


def run_stage(config: str, *overrides: str) -> subprocess.CompletedProcess:
    return run_bundle([CONFIGS / config, TINY], *overrides)


@pytest.fixture(scope="module")
def stages(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ct")
    models = ("--ckpt_dir", str(root / "models"))
    segmenter = ("--segmenter_path", str(root / "organ_segmenter.pt"), "--fid", "False")
    methods = f"{{'mask_guided': '{root / 'gen'}', 'pix2pix': '{root / 'gen_p2p'}'}}"
    steps = [
        ("train.json", *VOLUME, *models, "--output_dir", str(root / "train")),
        ("inference.json", *VOLUME, *models, "--output_dir", str(root / "gen")),
        ("inference.json", *DICOM, *models, "--split", "all", "--output_dir", str(root / "gen_dicom")),
        (
            "train_pix2pix.json",
            *VOLUME,
            "--generator_path",
            str(root / "p2p.pt"),
            "--output_dir",
            str(root / "gen_p2p"),
        ),
        ("evaluate.json", *VOLUME, *segmenter, "--methods", methods, "--output_dir", str(root / "eval")),
        (
            "evaluate.json",
            *DICOM,
            *segmenter,
            "--split",
            "all",
            "--segmenter_image_path",
            str(CT / "ct.nii.gz"),
            "--segmenter_label_path",
            str(CT / "labels.nii.gz"),
            "--methods",
            f"{{'mask_guided': '{root / 'gen_dicom'}'}}",
            "--output_dir",
            str(root / "eval_dicom"),
        ),
    ]
    for config, *overrides in steps:
        result = run_stage(config, *overrides)
        assert result.returncode == 0, f"{config}: {result.stderr[-3000:]}"
    return root


def test_training_writes_weights_checkpoint_history_and_previews(stages):
    assert (stages / "models" / "model.pt").is_file()
    assert list((stages / "models").glob("checkpoint_*.pt"))
    summary = json.loads((stages / "models" / "training_data.json").read_text())
    assert summary["conditioning"] == "mask_guided"
    assert len((stages / "train" / "loss_history.csv").read_text().splitlines()) == 1 + 4
    assert sorted(p.name for p in (stages / "train" / "previews").iterdir()) == ["epoch_0001.png", "epoch_0002.png"]


def test_one_synthetic_slice_per_label_map_for_the_test_slab_and_the_dicom_series(stages):
    test_slab = json.loads((stages / "gen" / "datalist.json").read_text())["training"]
    dicom = json.loads((stages / "gen_dicom" / "datalist.json").read_text())["training"]
    pix2pix = json.loads((stages / "gen_p2p" / "datalist.json").read_text())["training"]
    assert 0 < len(test_slab) < 20 and len(dicom) == 20  # a slab of the volume; every labelled DICOM slice
    assert len(pix2pix) == len(test_slab)


def test_evaluation_reports_every_method_and_the_real_ceiling(stages):
    results = json.loads((stages / "eval" / "results.json").read_text())
    assert list(results["methods"]) == ["real", "mask_guided", "pix2pix"]
    for method in ("mask_guided", "pix2pix"):
        entry = results["methods"][method]
        assert entry["fid"] is None and entry["psnr"] > 0 and -1 <= entry["ssim"] <= 1
        assert entry["dice"]["per_organ"] and all(0 <= v <= 1 for v in entry["dice"]["per_organ"].values())
    table = (stages / "eval" / "results.md").read_text()
    assert table.splitlines()[0].startswith("| method | FID | PSNR | SSIM | Dice (mean) |")
    assert (stages / "eval" / "figure.png").is_file()
    cross = json.loads((stages / "eval_dicom" / "results.json").read_text())
    assert cross["slices"] == 20 and list(cross["methods"]) == ["real", "mask_guided"]
