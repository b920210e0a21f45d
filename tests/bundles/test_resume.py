"""Resume after a real SIGKILL: training continues from the last checkpoint with its iteration and optimizer state;
generation writes only the missing pairs; no datalist ever names a missing or partial file."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import torch
from PIL import Image

from tests.bundle_runner import bundle_command, run_bundle
from tests.shared_data import REPO, untrained_checkpoint

CONFIGS = REPO / "bundles" / "pig" / "configs"
TINY = REPO / "tests" / "configs" / "pig_tiny.json"


def command(config: str, *overrides: str) -> list[str]:
    return bundle_command([CONFIGS / config, TINY], *overrides)


def rerun(config: str, *overrides: str) -> subprocess.CompletedProcess:
    """The same command again, after the kill (in this process: nothing about it needs a fresh interpreter)."""
    return run_bundle([CONFIGS / config, TINY], *overrides)


def kill_when(cmd: list[str], ready, timeout: float = 240) -> None:
    """Start ``cmd``, SIGKILL it (no cleanup handlers run) as soon as ``ready()`` holds."""
    process = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            assert process.poll() is None, "the run ended before it could be killed; make it longer"
            assert time.monotonic() < deadline, "timed out waiting to kill"
            time.sleep(0.02)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()


def checkpoint_epochs(folder: Path) -> list[int]:
    return sorted(int(m.group(1)) for p in folder.glob("checkpoint_epoch=*.pt") if (m := re.search(r"=(\d+)", p.name)))


def test_killed_training_resumes_iteration_and_optimizer_state(tmp_path):
    models = tmp_path / "models"
    epochs, per_epoch = 12, 2
    args = (
        "train.json", "--output_dir", str(tmp_path / "out"), "--ckpt_dir", str(models), "--preview_interval", "0",
        "--max_epochs", str(epochs), "--iterations_per_epoch", str(per_epoch),
    )  # fmt: skip
    kill_when(command(*args), lambda: any(e >= 2 for e in checkpoint_epochs(models)))
    assert not (models / "model.pt").exists(), "killed before the end"
    killed_at = max(checkpoint_epochs(models))
    state = torch.load(models / f"checkpoint_epoch={killed_at}.pt", weights_only=True)  # complete, loadable
    assert state["trainer"]["iteration"] == killed_at * per_epoch

    again = rerun(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    log = again.stdout + again.stderr
    assert f"resuming from {models / f'checkpoint_epoch={killed_at}.pt'}" in log
    completed = [int(e) for e in re.findall(r"Epoch\[(\d+)\] Complete", log)]
    assert completed == list(range(killed_at + 1, epochs + 1)), "the rerun must continue after the checkpoint"
    final = torch.load(models / f"checkpoint_epoch={epochs}.pt", weights_only=True)
    assert final["trainer"]["iteration"] == epochs * per_epoch
    # Adam's step count continued from the checkpoint: it counts every iteration of both runs once
    steps = {int(s["step"]) for s in final["optimizer"]["state"].values()}
    assert steps == {epochs * per_epoch}
    assert checkpoint_epochs(models) == [epochs], "older checkpoints are pruned"
    assert (models / "model.pt").is_file()
    with open(tmp_path / "out" / "loss_history.csv") as f:
        history = list(csv.DictReader(f))
    iterations = [int(row["iteration"]) for row in history]
    assert iterations == list(range(1, epochs * per_epoch + 1)), "one history row per iteration, none repeated"
    seconds = [float(row["seconds"]) for row in history]
    assert seconds == sorted(seconds), "elapsed time continues across the resume"


def test_keep_checkpoints_zero_keeps_every_epoch(tmp_path):
    models = tmp_path / "models"
    args = ("--output_dir", str(tmp_path / "out"), "--ckpt_dir", str(models), "--preview_interval", "0")
    result = rerun("train.json", *args, "--max_epochs", "3", "--iterations_per_epoch", "2", "--keep_checkpoints", "0")
    assert result.returncode == 0, result.stderr[-3000:]
    assert checkpoint_epochs(models) == [1, 2, 3]


def test_killed_generation_writes_only_the_missing_pairs(tmp_path):
    untrained_checkpoint(tmp_path / "models", CONFIGS / "inference.json", TINY)
    pairs, total = tmp_path / "pairs", 96
    args = (
        "inference.json", "--ckpt_dir", str(tmp_path / "models"), "--output_dir", str(pairs),
        "--num_pairs", str(total), "--batch_size", "4", "--num_inference_steps", "10",
    )  # fmt: skip
    labels = pairs / "labels" / "final"
    kill_when(command(*args), lambda: labels.is_dir() and len(list(labels.glob("pair_*.png"))) >= 8)
    assert not (pairs / "datalist.json").exists(), "a datalist before all pairs are written"
    before = {p.name: p.stat().st_mtime_ns for p in pairs.glob("pair_*.png")}
    assert 8 <= len(before) < total

    again = rerun(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    done = re.search(r"'already_complete': (\d+)", again.stdout + again.stderr)
    assert done and int(done.group(1)) >= len(before) - 1  # a pair whose label was not yet written is redone
    unchanged = [n for n, t in before.items() if (pairs / n).stat().st_mtime_ns == t]
    assert len(unchanged) >= len(before) - 1, "complete pairs were rewritten"
    datalist = json.loads((pairs / "datalist.json").read_text())["training"]
    assert len(datalist) == total
    for item in datalist:
        for key in ("image", "label"):
            Image.open(pairs / item[key]).load()
    assert not [p for p in pairs.rglob(".*")], "temporary files left behind"
    assert sorted(p.name for p in pairs.glob("pair_*")) == sorted(os.listdir(labels))
