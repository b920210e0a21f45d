"""DiffuseExpand's four stages in sequence through ``python -m monai.bundle run``, as the model card tells a user."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.bundle_runner import run_bundle
from tests.shared_data import REPO

CONFIGS = REPO / "bundles" / "diffuse_expand" / "configs"
TINY = REPO / "tests" / "configs" / "diffuse_expand_tiny.json"


def run_stage(config: str, *overrides: str) -> subprocess.CompletedProcess:
    return run_bundle([CONFIGS / config, TINY], *overrides)


@pytest.fixture(scope="module")
def four_stages(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("diffuse_expand")
    stages = [
        ("train_dpm.json", "--output_dir", str(root / "dpm_out"), "--ckpt_dir", str(root / "dpm")),
        ("train_segmenter.json", "--output_dir", str(root / "seg_out"), "--ckpt_dir", str(root / "segmenter")),
        (
            "inference.json",
            "--ckpt_dir",
            str(root / "dpm"),
            "--classifier_guidance",
            "True",
            "--segmenter_ckpt_path",
            str(root / "segmenter" / "model.pt"),
            "--output_dir",
            str(root / "generated"),
        ),
        (
            "filter.json",
            "--generated_dir",
            str(root / "generated"),
            "--output_dir",
            str(root / "filtered"),
            "--filter_segmenter_path",
            str(root / "filter_segmenter.pt"),
            "--eta",
            "0.9",
        ),
    ]
    for config, *overrides in stages:
        result = run_stage(config, *overrides)
        assert result.returncode == 0, f"{config}: {result.stderr[-3000:]}"
    return root


def test_training_stages_write_weights_history_and_previews(four_stages):
    for stage in ("dpm", "segmenter"):
        assert (four_stages / stage / "model.pt").is_file()
        assert list((four_stages / stage).glob("checkpoint_*.pt")), f"no resumable {stage} checkpoint"
    assert len((four_stages / "seg_out" / "loss_history.csv").read_text().splitlines()) == 1 + 4
    assert sorted(p.name for p in (four_stages / "dpm_out" / "previews").iterdir()) == [
        "epoch_0001.png",
        "epoch_0002.png",
    ]


def test_sampling_writes_pairs_and_the_filter_reports_every_pair(four_stages):
    generated = json.loads((four_stages / "generated" / "datalist.json").read_text())["training"]
    assert len(generated) == 5
    report = json.loads((four_stages / "filtered" / "filter_report.json").read_text())
    assert report["total"] == 5 and report["kept"] + report["relabelled"] + report["dropped"] == 5
    assert [p["decision"] == "kept" for p in report["pairs"]] == [p["dice_loss"] < 0.9 for p in report["pairs"]]
    assert (four_stages / "filter_segmenter.pt").is_file()
    if report["kept"]:
        kept = json.loads((four_stages / "filtered" / "datalist.json").read_text())["training"]
        assert len(kept) == report["kept"]
        assert all((four_stages / "filtered" / item["label"]).is_file() for item in kept)


def test_sampling_without_a_trained_segmenter_fails_cleanly(four_stages, tmp_path):
    result = run_stage(
        "inference.json",
        "--ckpt_dir",
        str(four_stages / "dpm"),
        "--classifier_guidance",
        "True",
        "--segmenter_ckpt_path",
        str(tmp_path / "missing.pt"),
        "--output_dir",
        str(tmp_path / "out"),
    )
    assert result.returncode == 2 and "missing.pt" in result.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "out").exists()


def test_classifier_free_only_sampling_needs_no_segmenter(four_stages, tmp_path):
    result = run_stage(
        "inference.json",
        "--ckpt_dir",
        str(four_stages / "dpm"),
        "--classifier_guidance",
        "False",
        "--segmenter_ckpt_path",
        str(tmp_path / "missing.pt"),
        "--cfg_scale",
        "2.0",
        "--num_pairs",
        "2",
        "--output_dir",
        str(tmp_path / "cf"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(json.loads((tmp_path / "cf" / "datalist.json").read_text())["training"]) == 2
