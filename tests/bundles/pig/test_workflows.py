"""The PIG bundle end to end through ``python -m monai.bundle run``, as a user runs it."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.bundle_runner import run_bundle
from tests.shared_data import REPO, needs

CONFIGS = REPO / "bundles" / "pig" / "configs"
TINY = REPO / "tests" / "configs" / "pig_tiny.json"


def run_stage(config: str, *overrides: str) -> subprocess.CompletedProcess:
    return run_bundle([CONFIGS / config, TINY], *overrides)


def digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("pair_*"))}


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pig")
    result = run_stage("train.json", "--output_dir", str(root / "train"), "--ckpt_dir", str(root / "models"))
    assert result.returncode == 0, result.stderr[-3000:]
    return root


def test_training_writes_checkpoints_history_and_previews(trained):
    assert (trained / "models" / "model.pt").is_file()
    assert list((trained / "models").glob("checkpoint_*.pt")), "no resumable checkpoint"
    summary = json.loads((trained / "models" / "training_data.json").read_text())
    assert summary["num_pairs"] == 8 and summary["format"] == "png"
    history = (trained / "train" / "loss_history.csv").read_text().splitlines()
    assert history[0] == "iteration,epoch,loss,seconds" and len(history) == 1 + 4
    assert sorted(p.name for p in (trained / "train" / "previews").iterdir()) == ["epoch_0001.png", "epoch_0002.png"]
    assert list((trained / "train").glob("events.out.tfevents.*")), "no TensorBoard events"


def test_inference_writes_binary_pairs_datalist_and_preview(trained):
    out = trained / "gen_a"
    result = run_stage(
        "inference.json", "--ckpt_dir", str(trained / "models"), "--output_dir", str(out), "--batch_size", "2"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    datalist = json.loads((out / "datalist.json").read_text())
    assert len(datalist["training"]) == 5
    for item in datalist["training"]:
        assert not os.path.isabs(item["image"]) and not os.path.isabs(item["label"])
        image = np.asarray(Image.open(out / item["image"]))
        label = np.asarray(Image.open(out / item["label"]))
        assert image.shape == label.shape == (32, 32) and image.dtype == np.uint8
        assert set(np.unique(label)) <= {0, 255}, "masks must be strictly binary"
    assert (out / "preview" / "pairs.png").is_file()
    from monai.data import load_decathlon_datalist

    loaded = load_decathlon_datalist(str(out / "datalist.json"), data_list_key="training", base_dir=str(out))
    assert all(os.path.isfile(d["image"]) and os.path.isfile(d["label"]) for d in loaded)


def test_the_shared_dice_filter_runs_on_pigs_pairs(trained):
    """configs/filter.json (common.filtering, DiffuseExpand's Stage IV) on PIG's output: a report for every pair and a
    folder of the kept ones."""
    generated, filtered = trained / "gen_for_filter", trained / "filtered"
    result = run_stage("inference.json", "--ckpt_dir", str(trained / "models"), "--output_dir", str(generated))
    assert result.returncode == 0, result.stderr[-3000:]
    result = run_stage(
        "filter.json", "--generated_dir", str(generated), "--output_dir", str(filtered), "--eta", "0.99",
        "--filter_segmenter_path", str(trained / "filter_segmenter.pt"), "--filter_iterations", "3",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((filtered / "filter_report.json").read_text())
    assert report["total"] == 5 and report["kept"] + report["dropped"] == 5 and len(report["pairs"]) == 5
    if report["kept"]:
        assert len(json.loads((filtered / "datalist.json").read_text())["training"]) == report["kept"]


def test_same_seed_same_pairs_and_resume_writes_only_missing(trained):
    a, b = trained / "gen_seed_a", trained / "gen_seed_b"
    for out in (a, b):
        result = run_stage(
            "inference.json",
            "--ckpt_dir",
            str(trained / "models"),
            "--output_dir",
            str(out),
            "--seed",
            "7",
            "--batch_size",
            "5",
        )
        assert result.returncode == 0, result.stderr[-3000:]
    assert digest(a) == digest(b)
    assert digest(a / "labels" / "final") == digest(b / "labels" / "final")
    # a killed run: pair 3 lost its label (written last), pair 4 is gone entirely
    (b / "labels" / "final" / "pair_000003.png").unlink()
    (b / "pair_000004.png").unlink()
    (b / "labels" / "final" / "pair_000004.png").unlink()
    result = run_stage(
        "inference.json",
        "--ckpt_dir",
        str(trained / "models"),
        "--output_dir",
        str(b),
        "--seed",
        "7",
        "--batch_size",
        "5",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "generating 2 of 5 pairs" in result.stdout + result.stderr
    assert digest(a / "labels" / "final") == digest(b / "labels" / "final")
    other = trained / "gen_seed_c"
    assert (
        run_stage(
            "inference.json",
            "--ckpt_dir",
            str(trained / "models"),
            "--output_dir",
            str(other),
            "--seed",
            "8",
            "--batch_size",
            "5",
        ).returncode
        == 0
    )
    assert digest(other) != digest(a)


def run_overlay(configs: list[str], *overrides: str) -> subprocess.CompletedProcess:
    """The base config, the tiny overlay, then the method overlays (which must win over the tiny settings)."""
    return run_bundle([CONFIGS / configs[0], TINY, *(CONFIGS / c for c in configs[1:])], *overrides)


def test_mask_conditioned_baseline_uses_the_real_training_masks(trained):
    from common.data import load_dataset

    out = trained / "gen_mask_conditioned"
    result = run_overlay(
        ["inference.json", "mask_conditioned.json"],
        "--ckpt_dir",
        str(trained / "models"),
        "--output_dir",
        str(out),
        "--num_pairs",
        "10",
        "--num_synthetic",
        "8",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    real = load_dataset(None, image_size=32, num_synthetic=8)
    for i in range(10):
        label = np.asarray(Image.open(out / "labels" / "final" / f"pair_{i:06d}.png")) // 255
        assert np.array_equal(label, real[i % 8]["label"][0]), f"pair {i} is not conditioned on real mask {i % 8}"


def test_unconditional_baseline_trains_and_samples_images(tmp_path):
    import torch
    from monai.bundle import ConfigParser

    from common.checkpoints import load_weights
    from common.sampling import ImageSampler

    result = run_overlay(
        ["train.json", "unconditional.json"],
        "--output_dir",
        str(tmp_path / "train"),
        "--ckpt_dir",
        str(tmp_path / "models"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "train.json"), str(TINY), str(CONFIGS / "unconditional.json")])
    net = load_weights(parser.get_parsed_content("network_def"), str(tmp_path / "models" / "model.pt"))
    assert net.in_channels == 1 and net.out_channels == 1
    images = ImageSampler(parser.get_parsed_content("noise_scheduler"), 3)(
        lambda x, t: net(x, t), torch.randn(2, 1, 32, 32)
    )
    assert images.shape == (2, 1, 32, 32) and torch.isfinite(images).all()
    assert (tmp_path / "train" / "previews" / "epoch_0002.png").is_file()


def test_controlnet_baseline_trains_on_the_frozen_image_model_and_samples_for_real_masks(tmp_path):
    """Table 2's ControlNet: the unconditional model first, then a ControlNet on the mask with that model frozen (its
    weights stay bit-identical), then images for the real training masks through mask_conditioned.json."""
    import torch

    from common.data import load_dataset

    models = tmp_path / "models_unconditional"
    stages = [
        (["train.json", "unconditional.json"], "--ckpt_dir", str(models)),
        (["train.json", "controlnet.json"], "--ckpt_dir", str(tmp_path / "models_controlnet"),
         "--image_model_weights", str(models / "model.pt")),
        (["inference.json", "mask_conditioned.json"], "--ckpt_dir", str(tmp_path / "models_controlnet"),
         "--output_dir", str(tmp_path / "gen"), "--num_pairs", "4", "--num_synthetic", "8"),
    ]  # fmt: skip
    for configs, *overrides in stages:
        result = run_overlay(configs, "--output_dir", str(tmp_path / "out"), *overrides)
        assert result.returncode == 0, f"{configs}: {result.stderr[-3000:]}"
    frozen = torch.load(models / "model.pt", weights_only=True)
    trained = torch.load(tmp_path / "models_controlnet" / "model.pt", weights_only=True)
    assert all(torch.equal(trained[f"unet.{k}"], v) for k, v in frozen.items())  # only the ControlNet learned
    assert any(k.startswith("controlnet.") for k in trained)
    real = load_dataset(None, image_size=32, num_synthetic=8)
    for i in range(4):
        label = np.asarray(Image.open(tmp_path / "gen" / "labels" / "final" / f"pair_{i:06d}.png")) // 255
        assert np.array_equal(label, real[i]["label"][0])


def test_ldm_baseline_trains_in_the_frozen_autoencoders_latent_and_samples_for_real_masks(tmp_path):
    """Table 2's LDM: the autoencoder first, then mask-conditioned diffusion in its latent space with it frozen,
    then images (decoded, image-sized) for the real training masks through mask_conditioned.json."""
    import torch

    from common.data import load_dataset

    autoencoder = tmp_path / "models_ldm_autoencoder"
    small = ("--autoencoder_channels", "[8, 16]")
    stages = [
        (["train.json", "ldm_autoencoder.json"], "--ckpt_dir", str(autoencoder), *small),
        (["train.json", "ldm.json"], "--ckpt_dir", str(tmp_path / "models_ldm"),
         "--autoencoder_weights", str(autoencoder / "model.pt"), *small),
        (["inference.json", "mask_conditioned.json"], "--ckpt_dir", str(tmp_path / "models_ldm"),
         "--num_pairs", "3", "--num_synthetic", "8"),
    ]  # fmt: skip
    for configs, *overrides in stages:
        result = run_overlay(configs, "--output_dir", str(tmp_path / configs[-1].split(".")[0]), *overrides)
        assert result.returncode == 0, f"{configs}: {result.stderr[-3000:]}"
    first = torch.load(autoencoder / "model.pt", weights_only=True)
    second = torch.load(tmp_path / "models_ldm" / "model.pt", weights_only=True)
    assert all(torch.equal(second[f"autoencoder.{k}"], v) for k, v in first.items())  # the autoencoder stayed frozen
    assert float(second["scale_factor"]) > 0 and float(second["scale_factor"]) != 1.0
    generated = tmp_path / "mask_conditioned"
    real = load_dataset(None, image_size=32, num_synthetic=8)
    for i in range(3):
        image = np.asarray(Image.open(generated / f"pair_{i:06d}.png"))
        label = np.asarray(Image.open(generated / "labels" / "final" / f"pair_{i:06d}.png")) // 255
        assert image.shape == (32, 32) and np.array_equal(label, real[i]["label"][0])


@needs("cxr_lungs", "labels")
def test_multiclass_label_maps_train_and_generate(tmp_path):
    from tests.shared_data import DATA

    common = ["--num_classes", "4", "--ckpt_dir", str(tmp_path / "models")]
    result = run_stage(
        "train.json",
        "--dataset_dir",
        str(DATA / "cxr_lungs"),
        "--max_pairs",
        "8",
        "--output_dir",
        str(tmp_path / "train"),
        *common,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "gen"
    result = run_stage("inference.json", "--output_dir", str(out), "--num_pairs", "3", *common)
    assert result.returncode == 0, result.stderr[-3000:]
    for i in range(3):
        label = np.asarray(Image.open(out / "labels" / "final" / f"pair_{i:06d}.png"))
        assert label.shape == (32, 32) and set(np.unique(label)) <= {0, 1, 2, 3}
    labels = json.loads((out / "datalist.json").read_text())["labels"]
    assert labels == {"0": "background", **{str(k): f"class_{k}" for k in range(1, 4)}}


@needs("ct_abdomen", "ct.nii.gz")
def test_nifti_volume_in_nifti_pairs_out(tmp_path):
    import nibabel as nib

    from tests.shared_data import DATA

    datalist = tmp_path / "ct.json"
    datalist.write_text(
        json.dumps(
            {
                "training": [
                    {
                        "image": str(DATA / "ct_abdomen" / "ct.nii.gz"),
                        "label": str(DATA / "ct_abdomen" / "labels.nii.gz"),
                    }
                ]
            }
        )
    )
    common = ["--num_classes", "14", "--ckpt_dir", str(tmp_path / "models")]
    result = run_stage(
        "train.json", "--datalist", str(datalist), "--max_pairs", "8", "--output_dir", str(tmp_path / "train"), *common
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((tmp_path / "models" / "training_data.json").read_text())["format"] == "nifti"
    out = tmp_path / "gen"
    result = run_stage("inference.json", "--output_dir", str(out), "--num_pairs", "2", *common)
    assert result.returncode == 0, result.stderr[-3000:]
    items = json.loads((out / "datalist.json").read_text())["training"]
    assert all(item["image"].endswith(".nii.gz") and item["label"].endswith(".nii.gz") for item in items)
    label = np.asarray(nib.load(str(out / items[0]["label"])).dataobj)
    assert label.dtype == np.uint8 and label.max() <= 13


def test_inference_with_ddim_the_papers_sampler(trained):
    out = trained / "gen_ddim"
    result = run_stage(
        "inference.json",
        "--ckpt_dir",
        str(trained / "models"),
        "--output_dir",
        str(out),
        "--sampling_method",
        "ddim",
        "--num_pairs",
        "2",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert len(json.loads((out / "datalist.json").read_text())["training"]) == 2
