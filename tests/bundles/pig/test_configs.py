"""The PIG bundle's configs: train and inference build the same network, and the paper overlay is the paper's."""

from __future__ import annotations

import pytest
import torch
from monai.bundle import ConfigParser
from monai.networks.schedulers import DDIMScheduler

from tests.shared_data import REPO, config_parser

CONFIGS = REPO / "bundles" / "pig" / "configs"
NETWORK_KEYS = (
    "image_size",
    "num_classes",
    "image_channels",
    "num_train_timesteps",
    "beta_start",
    "beta_end",
    "channels",
    "attention_levels",
    "num_res_blocks",
    "num_head_channels",
    "use_flash_attention",
    "norm_num_groups",
    "image_condition",
    "estimate_transform",
    "prediction_type",
    "noise_scheduler",
    "network_def",
)


def parser(*names) -> ConfigParser:
    return config_parser(*(CONFIGS / n for n in names))


def test_train_and_inference_define_the_same_network():
    train, infer = parser("train.json"), parser("inference.json")
    for key in NETWORK_KEYS:
        assert train[key] == infer[key], f"'{key}' differs between train.json and inference.json"


def test_default_network_shapes():
    net = parser("inference.json").get_parsed_content("network_def")
    noisy = torch.randn(2, 2, 64, 64)
    out = net(noisy, torch.tensor([0, 999]), clean_mask=torch.ones(2, 1, 64, 64))
    assert out.shape == (2, 2, 64, 64)


@pytest.mark.parametrize("base", ["train.json", "inference.json"])
def test_paper_overlay_matches_the_paper(base):
    p = parser(base, "paper.json")
    assert p["image_size"] == 512 and p["num_train_timesteps"] == 1024
    scheduler = p.get_parsed_content("noise_scheduler")
    assert scheduler.clip_sample is False
    torch.testing.assert_close(scheduler.betas[[0, -1]], torch.tensor([1e-4, 0.02]))
    if base == "inference.json":
        assert p["num_inference_steps"] == 256 and p["sampling_method"] == "ddim"
        assert isinstance(p.get_parsed_content("sampling_scheduler"), DDIMScheduler)
        scheduler.set_timesteps(256)
        assert scheduler.timesteps[0] == 1020 and scheduler.timesteps[-1] == 0
    net = p.get_parsed_content("network_def")
    # the authors' U-Net: ch 32, ch_mult (1,1,2,2,4,4), 2 res blocks, attention only at 16x16 (the 6th level of 512)
    assert len(net.guider.down_blocks) == 6
    assert [b.resnets[0].out_channels for b in net.guider.down_blocks] == [32, 32, 64, 64, 128, 128]
    assert [len(b.resnets) for b in net.guider.down_blocks] == [2] * 6
    assert [hasattr(b, "attentions") for b in net.guider.down_blocks] == [False] * 5 + [True]
