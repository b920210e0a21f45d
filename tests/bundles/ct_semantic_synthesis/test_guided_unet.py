"""The three conditionings' network: shapes, where the guide enters, and the errors a wrong call gets."""

from __future__ import annotations

import pytest
import torch

from tests.shared_data import bundle_module

SEMANTIC_SYNTHESIS = bundle_module("ct_semantic_synthesis", "semantic_synthesis")
CONDITIONINGS, GuidedDiffusionUNet, conditioning_channels = (
    SEMANTIC_SYNTHESIS.CONDITIONINGS,
    SEMANTIC_SYNTHESIS.GuidedDiffusionUNet,
    SEMANTIC_SYNTHESIS.conditioning_channels,
)


def tiny(conditioning: str, label_channels: int = 3, out_channels: int = 2) -> GuidedDiffusionUNet:
    torch.manual_seed(0)
    net = GuidedDiffusionUNet(
        out_channels=out_channels,
        channels=(8, 16, 16),
        norm_num_groups=8,
        num_head_channels=8,
        **conditioning_channels(conditioning, label_channels),
    )
    # MONAI's residual blocks and our output conv start at zero (an identity-like start); randomise them so every
    # input path can show in the output
    with torch.no_grad():
        for p in net.parameters():
            if not p.any():
                p.normal_(std=0.1)
    return net


def test_conditioning_channels_follow_the_paper_figure_2():
    assert conditioning_channels("conditional", 5) == {"in_channels": 6, "guide_channels": 0}
    assert conditioning_channels("mask_guided", 5) == {"in_channels": 1, "guide_channels": 5}
    assert conditioning_channels("edge_guided", 5) == {"in_channels": 6, "guide_channels": 1}
    with pytest.raises(ValueError, match="conditioning must be one of"):
        conditioning_channels("spade", 5)


@pytest.mark.parametrize("conditioning", CONDITIONINGS)
def test_output_shape_for_each_conditioning(conditioning):
    net = tiny(conditioning)
    x = torch.randn(2, net.conv_in.in_channels, 16, 16)
    guide = torch.randn(2, net.guide_channels, 16, 16) if net.guide_channels else None
    out = net(x, torch.tensor([3, 40]), guide=guide)
    assert out.shape == (2, 2, 16, 16)


def test_output_starts_at_zero_so_training_starts_from_a_unit_variance_guess():
    net = GuidedDiffusionUNet(in_channels=1, out_channels=2, channels=(8, 16), norm_num_groups=8, num_head_channels=8)
    assert torch.count_nonzero(net(torch.randn(1, 1, 8, 8), torch.tensor([5]))) == 0


def test_guide_features_enter_every_resolution_of_encoder_and_decoder():
    net = tiny("mask_guided")
    # each encoder level's first block takes main + guide features, each decoder level's takes h + skip + guide
    widths = net.channels
    previous = [widths[0], *widths[:-1]]
    for level, blocks in enumerate(net.encoder):
        assert blocks[0].norm1.num_channels == previous[level] + widths[level]
    for level, blocks in enumerate(net.decoder):
        assert blocks[0].norm1.num_channels == 3 * widths[level]
    assert [f.shape[-1] for f in net.guide(torch.zeros(1, 3, 16, 16))] == [16, 8, 4]


def test_the_guide_changes_the_prediction_and_the_time_matters():
    net = tiny("mask_guided")
    x, t = torch.randn(1, 1, 16, 16), torch.tensor([10])
    guide = torch.randn(1, 3, 16, 16)
    out = net(x, t, guide=guide)
    assert not torch.allclose(out, net(x, t, guide=-guide))
    assert not torch.allclose(out, net(x, torch.tensor([900]), guide=guide))


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="pass the guide map"):
        tiny("mask_guided")(torch.randn(1, 1, 16, 16), torch.tensor([1]))
    with pytest.raises(ValueError, match="takes no guide map"):
        tiny("conditional")(torch.randn(1, 4, 16, 16), torch.tensor([1]), guide=torch.randn(1, 3, 16, 16))
    with pytest.raises(ValueError, match="divisible by 4"):
        tiny("conditional")(torch.randn(1, 4, 18, 18), torch.tensor([1]))
    with pytest.raises(ValueError, match="norm_num_groups"):
        GuidedDiffusionUNet(1, 2, channels=(12, 16), norm_num_groups=8)
