"""``model(x_t, t, label)`` for every conditioning: what reaches the network, and the output the hybrid loss needs."""

from __future__ import annotations

import pytest
import torch

from common.transforms import encode_mask, semantic_edges
from tests.shared_data import bundle_module

SEMANTIC_SYNTHESIS = bundle_module("ct_semantic_synthesis", "semantic_synthesis")
SEMANTIC_CONDITIONINGS, SemanticDiffusionModel, build_semantic_model = (
    SEMANTIC_SYNTHESIS.SEMANTIC_CONDITIONINGS,
    SEMANTIC_SYNTHESIS.SemanticDiffusionModel,
    SEMANTIC_SYNTHESIS.build_semantic_model,
)


TINY = {"channels": (8, 16), "norm_num_groups": 8, "num_head_channels": 8}


def labels(batch: int = 2, size: int = 16, classes: int = 4) -> torch.Tensor:
    label = torch.zeros(batch, 1, size, size, dtype=torch.long)
    label[:, :, 2:10, 2:10] = 1
    label[:, :, 4:6, 4:12] = 2
    label[-1, :, 10:14, 10:14] = classes - 1
    return label


@pytest.mark.parametrize("conditioning", SEMANTIC_CONDITIONINGS)
def test_every_conditioning_predicts_epsilon_and_variance(conditioning):
    torch.manual_seed(0)
    model = build_semantic_model(conditioning, 4, **TINY)
    out = model(torch.randn(2, 1, 16, 16), torch.tensor([1, 500]), labels())
    assert out.shape == (2, 2, 16, 16)
    assert build_semantic_model(conditioning, 4, learn_variance=False, **TINY)(
        torch.randn(1, 1, 16, 16), torch.tensor([3]), labels(1)
    ).shape == (1, 1, 16, 16)


class Recorder(torch.nn.Module):
    """Stands in for the network and records what it was called with."""

    def forward(self, x, timesteps, guide=None, seg=None):
        self.x, self.guide, self.seg = x, guide, seg
        return torch.zeros(x.shape[0], 2, *x.shape[2:])


@pytest.mark.parametrize("conditioning", SEMANTIC_CONDITIONINGS)
def test_the_label_reaches_the_network_as_the_paper_describes(conditioning):
    net = Recorder()
    model = SemanticDiffusionModel(net, conditioning, num_classes=4)
    x_t, label = torch.randn(2, 1, 16, 16), labels()
    model(x_t, torch.tensor([1, 2]), label)
    one_hot = encode_mask(label, 4)
    if conditioning in ("conditional", "edge_guided"):
        torch.testing.assert_close(net.x, torch.cat([x_t, one_hot], 1))
    else:
        torch.testing.assert_close(net.x, x_t)
    if conditioning == "mask_guided":
        torch.testing.assert_close(net.guide, one_hot)
    if conditioning == "edge_guided":
        torch.testing.assert_close(net.guide, semantic_edges(label) * 2 - 1)
    if conditioning == "sdm":
        torch.testing.assert_close(net.seg, (one_hot + 1) / 2)  # SPADE takes a {0, 1} one-hot map


def test_a_binary_label_map_is_one_channel():
    model = build_semantic_model("conditional", 2, **TINY)
    assert model.network.conv_in.in_channels == 2
    assert model(torch.randn(1, 1, 16, 16), torch.tensor([3]), labels(1).clamp(max=1)).shape == (1, 2, 16, 16)


def test_unknown_conditioning_is_refused():
    with pytest.raises(ValueError, match="conditioning must be one of"):
        SemanticDiffusionModel(Recorder(), "oasis", 4)
