"""Experiment tracking offline: MONAI's ``--tracking mlflow`` records the run in a local store, next to TensorBoard."""

from __future__ import annotations

import pytest

from tests.bundle_runner import run_bundle
from tests.shared_data import REPO

mlflow = pytest.importorskip("mlflow", reason="tracking extra not installed (pip install -r requirements-tracking.txt)")


def test_mlflow_tracking_writes_a_local_run_with_the_loss_curve(tmp_path):
    files = [REPO / "bundles/pig/configs/train.json", REPO / "tests/configs/pig_tiny.json"]
    out = tmp_path / "out"
    result = run_bundle(files, "--output_dir", str(out), "--ckpt_dir", str(tmp_path / "models"),
                        "--preview_interval", "0", "--tracking", "mlflow")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]

    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{out / 'mlruns.db'}")
    experiment = client.get_experiment_by_name("monai_experiment")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    history = client.get_metric_history(run.info.run_id, "train_loss")
    assert len(history) == 4  # 2 epochs x 2 iterations (tests/configs/pig_tiny.json)
    assert run.data.params["max_epochs"] == "2"
    assert list(out.glob("events.out.tfevents.*")), "TensorBoard events are written too"
