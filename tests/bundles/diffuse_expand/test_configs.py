"""The DiffuseExpand configs: the default networks and sampler, and the paper overlay is the paper's."""

from __future__ import annotations

import pytest
import torch
from monai.bundle import ConfigParser

from tests.shared_data import REPO, config_parser

CONFIGS = REPO / "bundles" / "diffuse_expand" / "configs"


def parser(*names) -> ConfigParser:
    return config_parser(*(CONFIGS / n for n in names))


def test_default_networks_shapes():
    p = parser("inference.json")
    dpm, segmenter = p.get_parsed_content("denoiser_def"), p.get_parsed_content("segmenter_def")
    x = torch.randn(2, 1, 64, 64)
    t = torch.tensor([0, 999])
    assert dpm(x, t, task=1, condition=torch.ones_like(x)).shape == (2, 1, 64, 64)
    assert dpm(x, t, task=torch.tensor([0, 1])).shape == (2, 1, 64, 64)
    logits, task = segmenter(x, t)
    assert logits.shape == (2, 1, 64, 64) and task.shape == (2,)


def test_default_sampler_is_dpm_solver_pp_without_classifier_guidance():
    """CF only by default: the CPU-scale ablation measured the best FID there (model card); paper.json adds CG."""
    p = parser("inference.json")
    scheduler = p.get_parsed_content("sampling_scheduler")
    assert type(scheduler).__name__ == "DPMSolverMultistepScheduler"
    assert scheduler.config.algorithm_type == "dpmsolver++" and scheduler.config.prediction_type == "v_prediction"
    assert p["classifier_guidance"] is False and p["temperature"] == 1.0


@pytest.mark.parametrize("base", ["train_dpm.json", "train_segmenter.json", "inference.json"])
def test_paper_overlay_matches_the_paper(base):
    p = parser(base, "paper.json")
    assert p["image_size"] == 256 and p["num_train_timesteps"] == 1000 and p["prediction_type"] == "epsilon"
    if base == "train_dpm.json":
        assert p["learning_rate"] == 1e-4 and p["batch_size"] == 16
        assert p["iterations_per_epoch"] * p["max_epochs"] == 30000
    if base == "train_segmenter.json":
        assert p["segmenter_learning_rate"] == 3e-4 and p["segmenter_batch_size"] == 8
        assert p["segmenter_iterations_per_epoch"] * p["segmenter_max_epochs"] == 10000
        assert p["segmenter_channels"] == [64, 128, 128, 256]
    if base == "inference.json":
        assert p["classifier_guidance"] is True and p["classifier_scale"] == 1.0
        scheduler = p.get_parsed_content("sampling_scheduler")
        assert scheduler.config.solver_order == 3 and scheduler.config.thresholding is True
        assert p["num_inference_steps"] == 30
