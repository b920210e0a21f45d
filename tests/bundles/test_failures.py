"""The failure-behaviour table of docs/operations.md, one test per row: each bad input or fault gives one ``error:``
sentence naming the file or key, exit status 2, and no partial output. Run through the PIG bundle as a user runs it,
both in this repository and exported outside it (``common.bundle_export``); the data, checkpoint and writer layers
are shared by every bundle."""

from __future__ import annotations

import os
import resource
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from tests.bundle_runner import run_bundle
from tests.shared_data import REPO, untrained_checkpoint, user_error

CONFIGS = REPO / "bundles" / "pig" / "configs"
TINY = REPO / "tests" / "configs" / "pig_tiny.json"


@pytest.fixture(autouse=True, params=["repository", "exported"])
def pig_bundle(request, monkeypatch):
    """Every row twice: the bundle in this repository, and the bundle exported to a folder outside it."""
    if request.param == "exported":
        monkeypatch.setattr(f"{__name__}.CONFIGS", request.getfixturevalue("exported_bundles")["pig"] / "configs")
    return request.param


def run(config: str, *overrides: str, file_size_limit: int | None = None) -> subprocess.CompletedProcess:
    """In this process, except under a file-size limit: those rows run the real command line in a subprocess, so the
    excepthook's exit status 2 and its single ``error:`` line are checked as a user meets them."""

    def limit_file_size():  # a full disk, as far as the process can tell: writes beyond the limit fail (EFBIG)
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))

    preexec = limit_file_size if file_size_limit else None
    return run_bundle([CONFIGS / config, TINY], *overrides, preexec_fn=preexec)


def train(tmp_path: Path, *overrides: str, **kwargs) -> subprocess.CompletedProcess:
    outputs = ("--output_dir", str(tmp_path / "out"), "--ckpt_dir", str(tmp_path / "models"))
    return run("train.json", *outputs, *overrides, **kwargs)


def generate(tmp_path: Path, *overrides: str, **kwargs) -> subprocess.CompletedProcess:
    outputs = ("--ckpt_dir", str(tmp_path / "models"), "--output_dir", str(tmp_path / "pairs"))
    return run("inference.json", *outputs, *overrides, **kwargs)


def pairs_folder(root: Path, names=("a", "b")) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for name in names:
        Image.fromarray(np.full((40, 40), 120, np.uint8)).save(root / "images" / f"{name}.png")
        Image.fromarray(np.zeros((40, 40), np.uint8)).save(root / "masks" / f"{name}.png")
    return root


def untrained_model(tmp_path: Path) -> Path:
    return untrained_checkpoint(tmp_path / "models", CONFIGS / "inference.json", TINY)


def nothing_written(tmp_path: Path) -> bool:
    return not (tmp_path / "out").exists() and not (tmp_path / "pairs").exists()


def test_missing_dataset_dir(tmp_path):
    result = train(tmp_path, "--dataset_dir", str(tmp_path / "nope"))
    assert str(tmp_path / "nope") in user_error(result)
    assert nothing_written(tmp_path) and not (tmp_path / "models").exists()


def test_misspelt_override_key(tmp_path):
    message = user_error(train(tmp_path, "--max_epoch", "1"))  # max_epochs
    assert "'--max_epoch'" in message
    assert nothing_written(tmp_path) and not (tmp_path / "models").exists()


def test_image_without_mask(tmp_path):
    data = pairs_folder(tmp_path / "data")
    os.remove(data / "masks" / "b.png")
    assert "b.png" in user_error(train(tmp_path, "--dataset_dir", str(data)))
    assert nothing_written(tmp_path) and not (tmp_path / "models").exists()


def test_corrupt_image_file(tmp_path):
    data = pairs_folder(tmp_path / "data")
    (data / "images" / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    message = user_error(train(tmp_path, "--dataset_dir", str(data)))
    assert "b.png" in message and "could not be read" in message
    assert nothing_written(tmp_path) and not (tmp_path / "models").exists()


def test_image_and_mask_of_different_shapes(tmp_path):
    data = pairs_folder(tmp_path / "data")
    Image.fromarray(np.zeros((30, 40), np.uint8)).save(data / "masks" / "b.png")
    message = user_error(train(tmp_path, "--dataset_dir", str(data)))
    assert "b.png" in message and "shape" in message
    assert nothing_written(tmp_path) and not (tmp_path / "models").exists()


def test_nan_intensities(tmp_path):
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    (data / "masks").mkdir()
    image = np.random.default_rng(0).random((32, 32, 1)).astype(np.float32)
    image[3, 4, 0] = np.nan
    nib.save(nib.Nifti1Image(image, np.eye(4)), data / "images" / "a.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((32, 32, 1), np.uint8), np.eye(4)), data / "masks" / "a.nii.gz")
    message = user_error(train(tmp_path, "--dataset_dir", str(data)))
    assert "a.nii.gz" in message and "NaN" in message
    assert nothing_written(tmp_path)


@pytest.mark.parametrize("value", ["0", "-3"])
def test_out_of_range_config_value(tmp_path, value):
    untrained_model(tmp_path)
    assert user_error(generate(tmp_path, "--num_pairs", value)) == (
        f"error: 'num_pairs' must be a positive integer, got {value}."
    )
    assert nothing_written(tmp_path)


def test_missing_checkpoint(tmp_path):
    assert "model.pt' does not exist" in user_error(generate(tmp_path))
    assert nothing_written(tmp_path)


def test_corrupt_checkpoint(tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "model.pt").write_bytes(b"not a checkpoint")
    assert "could not be read as plain weights" in user_error(generate(tmp_path))
    assert nothing_written(tmp_path)


def test_checkpoint_of_another_network(tmp_path):
    (tmp_path / "models").mkdir()
    torch.save(torch.nn.Linear(2, 2).state_dict(), tmp_path / "models" / "model.pt")
    assert "does not match the configured network" in user_error(generate(tmp_path))
    assert nothing_written(tmp_path)


def test_resuming_from_a_checkpoint_of_another_network(tmp_path):
    (tmp_path / "models").mkdir()
    torch.save({"network": torch.nn.Linear(2, 2).state_dict()}, tmp_path / "models" / "checkpoint_epoch=1.pt")
    message = user_error(train(tmp_path))
    assert "checkpoint_epoch=1.pt" in message and "different network configuration" in message
    assert not (tmp_path / "models" / "model.pt").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders; the full-disk rows cover writes")
def test_read_only_output_folder(tmp_path):
    untrained_model(tmp_path)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        result = run("inference.json", "--ckpt_dir", str(tmp_path / "models"), "--output_dir", str(locked / "pairs"))
        assert "could not write" in user_error(result)
    finally:
        locked.chmod(0o755)


def test_disk_full_while_checkpointing(tmp_path):
    message = user_error(train(tmp_path, "--preview_interval", "0", file_size_limit=100_000))
    assert "could not write checkpoint" in message and "disk full" in message
    leftovers = sorted(p.name for p in (tmp_path / "models").iterdir())
    assert leftovers == ["training_config.json", "training_data.json"], f"a partial checkpoint survived: {leftovers}"


def test_disk_full_while_generating(tmp_path):
    untrained_model(tmp_path)
    message = user_error(generate(tmp_path, "--num_pairs", "5", file_size_limit=600))
    assert "could not write" in message
    pairs = tmp_path / "pairs"
    assert not (pairs / "datalist.json").exists(), "the datalist is written last, only when every pair is"
    for path in pairs.rglob("*"):  # what survived is complete: no temp files, every PNG decodes
        assert not path.name.startswith("."), f"temporary file left: {path}"
        if path.is_file():
            Image.open(path).load()
