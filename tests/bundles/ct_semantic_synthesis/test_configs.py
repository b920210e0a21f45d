"""The CT bundle's configs: every conditioning builds and trains a step; paper.json is the paper's."""

from __future__ import annotations

import pytest
import torch

from tests.shared_data import REPO, config_parser

CONFIGS = REPO / "bundles" / "ct_semantic_synthesis" / "configs"
TINY = REPO / "tests" / "configs" / "ct_semantic_tiny.json"


@pytest.mark.parametrize("conditioning", ["conditional", "mask_guided", "edge_guided", "sdm"])
def test_each_conditioning_trains_one_step_with_the_hybrid_loss(conditioning):
    p = config_parser(CONFIGS / "train.json", TINY)
    p["conditioning"] = conditioning
    p["num_classes"] = 4
    p["num_synthetic"] = 4
    trainer = p.get_parsed_content("train#trainer")
    assert type(trainer.loss_function).__name__ == "HybridLoss"
    assert trainer.loss_function.vlb_weight == pytest.approx(0.001)
    batch = next(iter(p.get_parsed_content("train#dataloader")))
    assert int(batch["label"].max()) <= 4  # organ classes 0..3 + the body class 4
    x_t, target, args, kwargs = trainer.prepare_batch(batch)
    network = p.get_parsed_content("network")
    before = [q.detach().clone() for q in network.parameters()]
    loss = trainer.loss_function(network(x_t, *args, **kwargs), target)
    loss.backward()
    p.get_parsed_content("optimizer").step()
    assert torch.isfinite(loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, network.parameters()))


def test_paper_overlay_is_the_paper():
    paper = config_parser(CONFIGS / "train.json", CONFIGS / "paper.json")
    assert paper["image_size"] == 256 and paper["num_train_timesteps"] == 1000 and paper["batch_size"] == 16
    assert paper["learning_rate"] == pytest.approx(1e-4) and paper["vlb_weight"] == pytest.approx(0.001)
    assert paper["iterations_per_epoch"] * paper["max_epochs"] == 150_000
    assert config_parser(CONFIGS / "train_pix2pix.json", CONFIGS / "paper.json")[
        "pix2pix_learning_rate"
    ] == pytest.approx(5e-4)
