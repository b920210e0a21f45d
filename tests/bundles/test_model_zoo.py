"""Model-zoo compliance of every bundle: the folder layout, ``verify_metadata`` against the schema shipped in the repo
(offline), and ``verify_net_in_out`` + ``ckpt_export`` (TorchScript) for every network a bundle ships."""

from __future__ import annotations

import json

import pytest
import torch
from monai.bundle import ckpt_export, verify_metadata, verify_net_in_out

from common.bundle import activate
from common.export import PackedInputs, pack_inputs
from tests.shared_data import REPO, config_parser

BUNDLES = ["pig", "diffuse_expand", "diffboost", "ct_semantic_synthesis"]
SCHEMA = REPO / "bundles" / "meta_schema.json"

# (bundle, config holding the network, exported (packed-input) net id, the network it wraps, its (in, out) channels
# when it is not the network metadata.json describes)
NETWORKS = [
    ("pig", "inference.json", "export_network_def", "network_def", None),
    ("diffuse_expand", "inference.json", "export_network_def", "network_def", None),
    ("diffuse_expand", "inference.json", "export_segmenter_def", "segmenter_def", (2, 1)),
    ("diffboost", "inference.json", "export_network_def", "network_def", None),
    ("ct_semantic_synthesis", "inference.json", "export_network_def", "network_def", None),
]


def io_overrides(channels: tuple[int, int] | None) -> dict[str, int]:
    """verify_net_in_out reads the shapes from metadata; override them for a bundle's second network."""
    if channels is None:
        return {}
    return {
        "_meta_#network_data_format#inputs#image#num_channels": channels[0],
        "_meta_#network_data_format#outputs#pred#num_channels": channels[1],
    }


def configs(bundle: str):
    return REPO / "bundles" / bundle / "configs"


@pytest.mark.parametrize("bundle", BUNDLES)
def test_layout_and_metadata(bundle):
    root = REPO / "bundles" / bundle
    for path in ["configs/metadata.json", "configs/inference.json", "configs/logging.conf",
                 "configs/multi_gpu_train.json", "docs/README.md", "docs/data_license.txt"]:  # fmt: skip
        assert (root / path).is_file(), f"{bundle}: {path} is missing"
    assert list((root / "configs").glob("train*.json")), f"{bundle}: no training config"
    verify_metadata(meta_file=str(configs(bundle) / "metadata.json"), filepath=str(SCHEMA))


def test_schema_rejects_incomplete_metadata(tmp_path):
    metadata = json.loads((configs("pig") / "metadata.json").read_text())
    del metadata["network_data_format"]["inputs"]["image"]["num_channels"]
    broken = tmp_path / "metadata.json"
    broken.write_text(json.dumps(metadata))
    with pytest.raises(ValueError, match="num_channels"):
        verify_metadata(meta_file=str(broken), filepath=str(SCHEMA))


def example_input(layout, channels: int, size: int = 64) -> torch.Tensor:
    """A packed input with meaningful values: random images, timestep 500, task 1, a few tokens."""
    generator = torch.Generator().manual_seed(0)
    args = []
    for entry in layout:
        if entry[1] == "scalar":
            args.append(torch.tensor([500 if entry[0] == "timesteps" else 1]))
        elif entry[1] == "sequence":
            args.append(torch.tensor([[1, 2, 3] + [0] * (entry[2] - 3)]))
        else:
            args.append(torch.rand((1, entry[1], size, size), generator=generator) * 2 - 1)
    packed = pack_inputs(layout, *args)
    assert packed.shape[1] == channels
    return packed


@pytest.mark.parametrize("bundle,config,net_id,wrapped,io", NETWORKS, ids=[f"{n[0]}-{n[2]}" for n in NETWORKS])
def test_verify_net_in_out_and_torchscript_export(bundle, config, net_id, wrapped, io, tmp_path):
    config_file, meta_file = str(configs(bundle) / config), str(configs(bundle) / "metadata.json")
    activate(configs(bundle).parent)  # as MONAI's CLI from the bundle folder: its scripts and bundle_root
    verify_net_in_out(net_id=net_id, config_file=config_file, meta_file=meta_file, device="cpu", **io_overrides(io))

    parser = config_parser(configs(bundle) / config)
    torch.manual_seed(1)
    trained = parser.get_parsed_content(wrapped).eval()
    ckpt = tmp_path / "model.pt"
    torch.save(trained.state_dict(), ckpt)  # what training writes: the bare network's state dict
    exported = tmp_path / "model.ts"
    ckpt_export(
        net_id=net_id, filepath=str(exported), ckpt_file=str(ckpt), config_file=config_file, meta_file=meta_file,
        use_trace=True, input_shape=[1, io[0], 64, 64] if io else None,
    )  # fmt: skip

    wrapper = parser.get_parsed_content(net_id)
    reference = PackedInputs(trained, wrapper.layout, wrapper.output)  # the trained weights, not a reload of them
    described = json.loads((configs(bundle) / "metadata.json").read_text())["network_data_format"]["inputs"]
    packed = example_input(wrapper.layout, io[0] if io else described["image"]["num_channels"])
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.load(str(exported))(packed), reference(packed), rtol=1e-4, atol=1e-4)


def test_pix2pix_generator_exports_by_scripting(tmp_path):
    config_file = str(configs("ct_semantic_synthesis") / "train_pix2pix.json")
    activate(configs("ct_semantic_synthesis").parent)
    meta_file = str(configs("ct_semantic_synthesis") / "metadata.json")
    parser = config_parser(config_file)
    generator = parser.get_parsed_content("generator_def").eval()
    classes = parser.get_parsed_content("model_classes")
    io = io_overrides((classes, 1))
    verify_net_in_out(net_id="generator_def", config_file=config_file, meta_file=meta_file, device="cpu", **io)
    ckpt = tmp_path / "generator.pt"
    torch.save({"config": {}, "state_dict": generator.state_dict()}, ckpt)  # common.pix2pix.save_pix2pix's layout
    exported = tmp_path / "generator.ts"
    ckpt_export(
        net_id="generator_def", filepath=str(exported), ckpt_file=str(ckpt), config_file=config_file,
        meta_file=meta_file, key_in_ckpt="state_dict",
    )  # fmt: skip
    x = torch.rand(2, classes, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.load(str(exported))(x), generator(x))
