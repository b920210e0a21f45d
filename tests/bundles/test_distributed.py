"""Every bundle's ``multi_gpu_train.json`` under ``torchrun`` with 2 CPU processes (gloo): the ranks end with identical
weights, equal to a single-process run on the same global batch, and only rank 0 writes logs and checkpoints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser

from tests.bundle_runner import bundle_command, run_bundle
from tests.shared_data import REPO

# (bundle, training config, tiny overlay, its batch-size key, loss is a mean over samples). DDP averages the ranks'
# losses, which equals the global-batch loss only for per-sample means; DiffuseExpand's Stage II loss averages its
# Dice + BCE over the image samples of the batch, a count that differs between the halves, so there only rank
# agreement is checked.
CASES = [
    ("pig", "train.json", "pig_tiny.json", "batch_size", True),
    ("diffuse_expand", "train_dpm.json", "diffuse_expand_tiny.json", "batch_size", True),
    ("diffuse_expand", "train_segmenter.json", "diffuse_expand_tiny.json", "segmenter_batch_size", False),
    ("diffboost", "train.json", "diffboost_tiny.json", "batch_size", True),
    ("ct_semantic_synthesis", "train.json", "ct_semantic_tiny.json", "batch_size", True),
]
# one epoch of 2 optimiser steps on a global batch of 4, no previews; each process saves its weights when done
SHORT = {"max_epochs": 1, "iterations_per_epoch": 2, "preview_interval": 0}
SAVE_WEIGHTS = {
    "finalize": [
        "$torch.save(@network.state_dict(), "
        "os.path.join(@output_dir, 'weights_rank' + str(common.distributed.rank()) + '.pt'))",
        "$common.distributed.destroy_process_group()",
    ]
}


def overrides(root: Path, batch: tuple[str, int]) -> list[str]:
    """Output folders and ``batch`` = (batch-size key, value) on the command line; only keys the configs define are
    accepted there (common.overrides)."""
    return ["--output_dir", str(root / "out"), "--ckpt_dir", str(root / "models"), f"--{batch[0]}", str(batch[1])]


def learning_rate(configs: list[Path]) -> float:
    parser = ConfigParser()
    parser.read_config([str(c) for c in configs])
    return float(parser.get_parsed_content("optimizer#lr"))  # the value, without building the network


@pytest.mark.parametrize("bundle,train,tiny,batch_key,per_sample_loss", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_two_processes_match_one_process_on_the_global_batch(bundle, train, tiny, batch_key, per_sample_loss, tmp_path):
    configs = REPO / "bundles" / bundle / "configs"
    overlay = tmp_path / "short.json"
    overlay.write_text(json.dumps({**SHORT, **SAVE_WEIGHTS}))
    base = [configs / train, REPO / "tests" / "configs" / tiny, overlay]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    ddp_files = [*base[:2], configs / "multi_gpu_train.json", overlay]
    cmd = bundle_command(ddp_files, *overrides(tmp_path / "ddp", (batch_key, 2)), python=torchrun)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # two processes on two cores
    ddp = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert ddp.returncode == 0, ddp.stderr[-4000:]
    single = run_bundle(base, *overrides(tmp_path / "single", (batch_key, 4)))
    assert single.returncode == 0, single.stderr[-4000:]

    rank0, rank1 = (torch.load(tmp_path / "ddp" / "out" / f"weights_rank{r}.pt", weights_only=True) for r in (0, 1))
    reference = torch.load(tmp_path / "single" / "out" / "weights_rank0.pt", weights_only=True)
    assert rank0.keys() == rank1.keys() == reference.keys()
    # Adam moves a weight by about lr per step whatever its gradient's size, so where a gradient is near zero (the
    # zero-initialised output convolutions) summation-order noise between an all-reduce and one batch can change that
    # move by a fraction of lr; a wrong data split or missing synchronisation changes it by ~2 lr on many weights.
    atol = 0.1 * learning_rate(base) * SHORT["iterations_per_epoch"]
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), f"ranks differ in {key}"
        if per_sample_loss:
            torch.testing.assert_close(rank0[key], reference[key], rtol=1e-4, atol=atol, msg=f"DDP != 1 proc: {key}")
    # rank 0 alone writes: one TensorBoard file, checkpoints loadable by a single process
    assert len(list((tmp_path / "ddp" / "out").glob("events.out.tfevents.*"))) == 1
    checkpoint = next((tmp_path / "ddp" / "models").glob("checkpoint_*.pt"))
    assert set(torch.load(checkpoint, weights_only=True)["network"]) == set(rank0)
