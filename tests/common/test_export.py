"""PackedInputs: one packed tensor in, the wrapped network's arguments out; state dicts without a prefix."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from common.export import PackedInputs, pack_inputs

LAYOUT = [["x_t", 2], ["timesteps", "scalar"], ["tokens", "sequence", 5], ["label", 1]]


class Recorder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, x_t, timesteps, tokens, label):
        self.seen = (x_t, timesteps, tokens, label)
        return x_t * self.scale, timesteps


def test_pack_then_unpack_returns_the_arguments():
    x_t, label = torch.randn(3, 2, 8, 8), torch.randint(0, 4, (3, 1, 8, 8)).float()
    timesteps, tokens = torch.tensor([0, 17, 999]), torch.tensor([[1, 2, 3, 0, 0], [4, 0, 0, 0, 0], [5, 6, 7, 8, 9]])
    packed = pack_inputs(LAYOUT, x_t, timesteps, tokens, label)
    wrapper = PackedInputs(Recorder(), LAYOUT, output=0)
    assert packed.shape == (3, wrapper.in_channels, 8, 8) == (3, 5, 8, 8)
    out = wrapper(packed)
    seen = wrapper.network.seen
    assert torch.equal(seen[0], x_t) and torch.equal(out, x_t)
    assert torch.equal(seen[1], timesteps) and seen[1].dtype == torch.long
    assert torch.equal(seen[2], tokens) and torch.equal(seen[3], label)


def test_state_dict_is_the_wrapped_networks():
    network = Recorder()
    wrapper = PackedInputs(network, LAYOUT)
    assert list(wrapper.state_dict()) == list(network.state_dict()) == ["scale"]
    wrapper.load_state_dict({"scale": torch.tensor([3.0])})
    assert network.scale.item() == 3.0


def test_bad_layout_is_rejected():
    with pytest.raises(ValueError, match="layout entry"):
        PackedInputs(Recorder(), [["x_t", "image"]])


def test_wrong_channel_count_names_the_layout():
    with pytest.raises(ValueError, match=r"has 4 channels, expected 5 \(x_t, timesteps, tokens, label\)"):
        PackedInputs(Recorder(), LAYOUT)(torch.zeros(1, 4, 8, 8))


def test_state_dict_of_a_network_with_its_own_network_attribute():
    class Outer(nn.Module):  # like SemanticDiffusionModel, whose keys start with "network."
        def __init__(self) -> None:
            super().__init__()
            self.network = Recorder()

    outer = Outer()
    wrapper = PackedInputs(outer, LAYOUT)
    assert list(wrapper.state_dict()) == ["network.scale"]
    wrapper.load_state_dict({"network.scale": torch.tensor([2.0])})
    assert outer.network.scale.item() == 2.0
