"""DiffBoost's stages in sequence through ``python -m monai.bundle run`` on BUSI, tiny: pretrain on the pooled train
splits, fine-tune on the task, generate versions, evaluate Table II's layout with patch mixing; and Table I (held-out
images rebuilt from their edges by the pretrained generator and by Pix2Pix)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.bundle_runner import run_bundle
from tests.shared_data import DATA, REPO, needs

CONFIGS = REPO / "bundles" / "diffboost" / "configs"
TINY = REPO / "tests" / "configs" / "diffboost_tiny.json"

pytestmark = [needs("busi"), needs("cxr_lungs"), needs("ct_abdomen", "ct.nii.gz")]


def run_stage(*configs: str, overrides: tuple[str, ...]) -> subprocess.CompletedProcess:
    return run_bundle([*(CONFIGS / c for c in configs), TINY], "--data_root", str(DATA), *overrides)


@pytest.fixture(scope="module")
def stages(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("diffboost")
    seg = ("--network", "unet", "--network_kwargs", "{'channels': [4, 8], 'strides': [2], 'num_res_units': 0}")
    steps = [
        (("train.json", "pretrain.json"), ("--ckpt_dir", str(root / "pretrain"), "--output_dir", str(root / "p_out"))),
        (
            ("train.json", "busi.json"),
            (
                "--pretrained_weights",
                str(root / "pretrain" / "model.pt"),
                "--ckpt_dir",
                str(root / "finetune"),
                "--output_dir",
                str(root / "f_out"),
            ),
        ),
        (
            ("inference.json", "busi.json"),
            ("--ckpt_path", str(root / "finetune" / "model.pt"), "--output_dir", str(root / "versions")),
        ),
        (
            ("evaluate.json", "busi.json"),
            ("--versions_dir", str(root / "versions"), "--output_dir", str(root / "eval"), *seg),
        ),
        (
            ("inference.json", "pretrain.json", "table_i.json"),
            (
                "--ckpt_path",
                str(root / "pretrain" / "model.pt"),
                "--table_i_dir",
                str(root / "table_i"),
                "--pix2pix_path",
                str(root / "pix2pix" / "generator.pt"),
            ),
        ),
    ]
    for configs, overrides in steps:
        result = run_stage(*configs, overrides=overrides)
        assert result.returncode == 0, f"{configs}: {result.stderr[-3000:]}"
    return root


def test_pretraining_pools_train_splits_of_every_dataset_with_their_prompts(stages):
    summary = json.loads((stages / "pretrain" / "training_data.json").read_text())
    assert summary["stage"] == "pretrain" and summary["edge_source"] == "image"
    prompts = set(summary["prompts"])
    assert {"X-ray, chest, lungs", "CT, abdomen, organs"} <= prompts
    assert {p for p in prompts if p.startswith("US, breast")} <= {
        f"US, breast, {c}" for c in ("benign", "malignant", "normal")
    }
    busi_train = len(json.loads((DATA / "busi" / "splits.json").read_text())["train"])
    assert summary["num_pairs"] > busi_train  # pooled: more than BUSI's train split alone


def test_fine_tuning_starts_from_pretraining_and_generation_indexes_versions(stages):
    summary = json.loads((stages / "finetune" / "training_data.json").read_text())
    assert summary["edge_source"] == "mask" and summary["pretrained_weights"].endswith("model.pt")
    assert summary["num_pairs"] == 6  # the few-shot subset of the tiny overlay
    sources = json.loads((stages / "versions" / "sources.json").read_text())
    assert sources["samples_per_image"] == 2 and len(sources["versions"]) == 6
    assert len(json.loads((stages / "versions" / "datalist.json").read_text())["training"]) == 12


def test_evaluation_reports_table_ii_conditions(stages):
    results = json.loads((stages / "eval" / "results.json").read_text())
    assert list(results["aggregate"]) == ["baseline", "RandomGamma", "DeepStack", "DiffBoost"]
    assert "DiffBoost patch mixing (image, alpha 0.6, patch 8)" in (stages / "eval" / "results.md").read_text()


def test_table_i_scores_both_generators_on_every_held_out_image(stages):
    results = json.loads((stages / "table_i" / "results.json").read_text())
    held_out = sum(len(json.loads((DATA / d / "splits.json").read_text())["val"]) for d in ("busi", "cxr_lungs"))
    assert results["images"] > held_out  # + the CT volume's val slab
    assert list(results["methods"]) == ["DiffBoost generator (pretrained)", "Pix2Pix"]
    for entry in results["methods"].values():
        assert 0 <= entry["mae_mean"] <= 1
        assert entry["rmse_mean"] ** 2 <= entry["mse_mean"] + 1e-9  # per-image RMSE averaged: Jensen
    assert (stages / "pix2pix" / "generator.pt").is_file()
    assert "| method | MAE ↓ | MSE ↓ | RMSE ↓ | SSIM ↑ | MS-SSIM ↑ |" in (stages / "table_i" / "results.md").read_text()
