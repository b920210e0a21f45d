"""The PIG bundle's configs: the default network, and the paper overlay is the paper's."""

from __future__ import annotations

import json

import torch
from monai.bundle import ConfigParser
from monai.networks.schedulers import DDIMScheduler

from tests.shared_data import REPO, config_parser

CONFIGS = REPO / "bundles" / "pig" / "configs"


def parser(*names) -> ConfigParser:
    return config_parser(*(CONFIGS / n for n in names))


def test_default_network_shapes():
    net = parser("inference.json").get_parsed_content("denoiser_def")
    noisy = torch.randn(2, 2, 64, 64)
    out = net(noisy, torch.tensor([0, 999]), clean_mask=torch.ones(2, 1, 64, 64))
    assert out.shape == (2, 2, 64, 64)


def test_paper_overlay_matches_the_paper(tmp_path):
    p = parser("train.json", "paper.json")
    assert p["image_size"] == 512 and p["num_train_timesteps"] == 1024
    scheduler = p.get_parsed_content("noise_scheduler")
    assert scheduler.clip_sample is False
    assert p["estimate_transform"] == "none"  # Algorithm 2 as written: the raw x0 estimate conditions the image model
    torch.testing.assert_close(scheduler.betas[[0, -1]], torch.tensor([1e-4, 0.02]))
    net = p.get_parsed_content("network_def")
    # the authors' U-Net: ch 32, ch_mult (1,1,2,2,4,4), 2 res blocks, attention only at 16x16 (the 6th level of 512)
    assert len(net.guider.down_blocks) == 6
    assert [b.resnets[0].out_channels for b in net.guider.down_blocks] == [32, 32, 64, 64, 128, 128]
    assert [len(b.resnets) for b in net.guider.down_blocks] == [2] * 6
    assert [hasattr(b, "attentions") for b in net.guider.down_blocks] == [False] * 5 + [True]

    # sampling a model trained with the overlay: the paper's 256 DDIM steps on its T = 1024 schedule
    (tmp_path / "training_config.json").write_text(json.dumps(p.get()))
    infer = parser("inference.json", "paper.json")
    infer["ckpt_path"] = str(tmp_path / "model.pt")
    assert infer["num_inference_steps"] == 256 and infer["sampling_method"] == "ddim"
    assert infer.get_parsed_content("image_size") == 512
    sampling = infer.get_parsed_content("sampling_scheduler")
    assert isinstance(sampling, DDIMScheduler)
    sampling.set_timesteps(256)
    assert sampling.timesteps[0] == 1020 and sampling.timesteps[-1] == 0
