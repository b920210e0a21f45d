"""The Model Zoo's CI (its ``ci/verify_bundle.py``) reproduced offline on every exported bundle, step by step:
the bundle directory, version and changelog, ``verify_metadata`` against the Zoo's schema (meta_schema_20240725.json,
shipped in ``common/schemas``), ``verify_net_in_out`` with the Zoo's default ``net_id`` (``network_def``) and config
(``configs/inference.json``), ``ckpt_export`` of ``models/model.pt``; then MONAI's ``check_properties()`` for the
training and inference workflows, as the Zoo's ``ci/verify_properties.py`` creates them.

One documented override (docs/operations.md): MONAI's ``DiffusionModelUNet`` cannot be scripted, so the bundles belong
in the Zoo's ``exclude_verify_torchscript_list`` and export to TorchScript by tracing (``--use_trace True``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigWorkflow, ckpt_export, verify_net_in_out

import common
from common.bundle import activate
from common.bundle_export import METADATA_SCHEMA, check_metadata, export_bundle
from common.errors import InputError
from common.export import PackedInputs, pack_inputs
from tests.shared_data import REPO, config_parser, untrained_checkpoint

BUNDLES = ["pig", "diffuse_expand", "diffboost", "ct_semantic_synthesis"]
# the workflows MONAI's check_properties() knows (train / infer); evaluate.json, filter.json and train_pix2pix.json
# are custom workflows (a segmentation benchmark, a filter, a GAN loop), documented in docs/operations.md
WORKFLOWS = {
    "pig": {"train.json": "train", "inference.json": "infer"},
    "diffuse_expand": {"train_dpm.json": "train", "train_segmenter.json": "train", "inference.json": "infer"},
    "diffboost": {"train.json": "train", "inference.json": "infer"},
    "ct_semantic_synthesis": {"train.json": "train", "inference.json": "infer"},
}


@pytest.fixture(scope="module")
def zoo_bundles(tmp_path_factory) -> dict[str, Path]:
    """Every bundle exported as submitted to the Zoo, with ``models/model.pt`` (the Zoo's CI exports that file) and
    the weights inference.json reads (untrained weights of the shipped configs: the Zoo would download real ones from
    large_files.yml)."""
    dist = tmp_path_factory.mktemp("zoo")
    bundles = {name: export_bundle(REPO / "bundles" / name, dist, zip_archive=False) for name in BUNDLES}
    for name, folder in bundles.items():
        inference = folder / "configs" / "inference.json"
        untrained_checkpoint(folder / "models", inference)
        read_by_inference = Path(config_parser(inference).get_parsed_content("ckpt_path"))
        if not read_by_inference.is_file():
            untrained_checkpoint(read_by_inference.parent, inference)
    activate(None)
    return bundles


@pytest.mark.parametrize("bundle", BUNDLES)
def test_directory_version_and_metadata(zoo_bundles, bundle):
    folder = zoo_bundles[bundle]
    for path in ["LICENSE", "docs/README.md", "configs/metadata.json", "configs/inference.json",
                 "configs/logging.conf", "configs/multi_gpu_train.json"]:  # fmt: skip
        assert (folder / path).is_file(), f"{bundle}: {path} is missing"
    assert "Apache License" in (folder / "LICENSE").read_text()
    metadata = json.loads((folder / "configs" / "metadata.json").read_text())
    assert metadata["version"] in metadata["changelog"], "the Zoo requires the version in the changelog"
    assert metadata["version"] == common.__version__ == metadata["required_packages_version"]["monai-paired-synthesis"]
    assert metadata["schema"].endswith(METADATA_SCHEMA.name)
    check_metadata(folder / "configs" / "metadata.json")


def test_schema_rejects_incomplete_metadata(tmp_path):
    metadata = json.loads((REPO / "bundles" / "pig" / "configs" / "metadata.json").read_text())
    del metadata["network_data_format"]["inputs"]["image"]["num_channels"]
    broken = tmp_path / "metadata.json"
    broken.write_text(json.dumps(metadata))
    with pytest.raises(InputError, match="num_channels"):
        check_metadata(broken)


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


@pytest.mark.parametrize("bundle", BUNDLES)
def test_zoo_ci_network_steps(zoo_bundles, bundle, tmp_path):
    """verify_data_shape and verify_torchscript as the Zoo's CI calls them: no net_id or bundle activation of ours,
    the bundle's own folder as bundle_root, from another working directory."""
    folder = zoo_bundles[bundle]
    meta_file, config_file = str(folder / "configs" / "metadata.json"), str(folder / "configs" / "inference.json")
    verify_net_in_out(net_id="network_def", meta_file=meta_file, config_file=config_file, bundle_root=str(folder))

    exported = tmp_path / "model.ts"
    ckpt_export(
        net_id="network_def", filepath=str(exported), ckpt_file=str(folder / "models" / "model.pt"),
        meta_file=meta_file, config_file=config_file, bundle_root=str(folder), use_trace=True,
    )  # fmt: skip

    parser = config_parser(config_file)
    parser["ckpt_path"] = str(folder / "models" / "model.pt")
    wrapper = parser.get_parsed_content("network_def")
    assert isinstance(wrapper, PackedInputs)
    trained = parser.get_parsed_content("network").eval()  # the denoiser inference samples with, weights loaded
    described = json.loads(Path(meta_file).read_text())["network_data_format"]["inputs"]["image"]["num_channels"]
    packed = example_input(wrapper.layout, described)
    with torch.no_grad():
        reference = PackedInputs(trained, wrapper.layout, wrapper.output)(packed)
        torch.testing.assert_close(torch.jit.load(str(exported))(packed), reference, rtol=1e-4, atol=1e-4)
    activate(None)


def test_scripting_fails_hence_the_documented_override(zoo_bundles, tmp_path):
    """Why the bundles need the Zoo's exclude_verify_torchscript_list: scripting MONAI's DiffusionModelUNet fails.
    When this test fails, MONAI can script it and the override can go."""
    folder = zoo_bundles["pig"]
    with pytest.raises(RuntimeError):
        ckpt_export(
            net_id="network_def", filepath=str(tmp_path / "model.ts"), ckpt_file=str(folder / "models" / "model.pt"),
            meta_file=str(folder / "configs" / "metadata.json"), config_file=str(folder / "configs" / "inference.json"),
            bundle_root=str(folder),
        )  # fmt: skip


@pytest.mark.parametrize(
    "bundle,config",
    [(b, c) for b in BUNDLES for c in WORKFLOWS[b]],
    ids=[f"{b}-{c}" for b in BUNDLES for c in WORKFLOWS[b]],
)
def test_check_properties_clean(zoo_bundles, bundle, config):
    folder = zoo_bundles[bundle]
    workflow = ConfigWorkflow(
        config_file=str(folder / "configs" / config), meta_file=str(folder / "configs" / "metadata.json"),
        logging_file=str(folder / "configs" / "logging.conf"), workflow_type=WORKFLOWS[bundle][config],
        bundle_root=str(folder),
    )  # fmt: skip
    workflow.initialize()
    assert workflow.check_properties() == []
    if WORKFLOWS[bundle][config] == "infer":
        assert len(workflow.dataset) == len(workflow.evaluator.indices) > 0
        assert workflow.inferer.sampler is workflow.evaluator.inferer.sampler
    else:
        assert workflow.max_epochs >= 1 and len(workflow.train_dataset) > 0


# a bundle's second network: (bundle, config holding it, net id, key in the checkpoint, trace?)
SECOND_NETWORKS = [
    ("diffuse_expand", "inference.json", "export_segmenter_def", None, True),
    ("ct_semantic_synthesis", "train_pix2pix.json", "generator_def", "state_dict", False),
]


@pytest.mark.parametrize("bundle,config,net_id,key,trace", SECOND_NETWORKS, ids=[n[2] for n in SECOND_NETWORKS])
def test_second_networks_verify_and_export(zoo_bundles, bundle, config, net_id, key, trace, tmp_path):
    """Described by ``<net_id>_data_format`` in metadata.json (the schema's pattern for more networks)."""
    folder = zoo_bundles[bundle]
    meta_file, config_file = str(folder / "configs" / "metadata.json"), str(folder / "configs" / config)
    described = json.loads(Path(meta_file).read_text())[f"{net_id}_data_format"]
    io = {
        "_meta_#network_data_format#inputs#image#num_channels": described["inputs"]["image"]["num_channels"],
        "_meta_#network_data_format#outputs#pred#num_channels": described["outputs"]["pred"]["num_channels"],
    }
    verify_net_in_out(net_id=net_id, meta_file=meta_file, config_file=config_file, bundle_root=str(folder), **io)
    parser = config_parser(config_file)
    torch.manual_seed(1)
    network = parser.get_parsed_content(net_id).eval()
    ckpt = tmp_path / "net.pt"
    torch.save({key: network.state_dict()} if key else network.state_dict(), ckpt)
    exported = tmp_path / "net.ts"
    ckpt_export(
        net_id=net_id, filepath=str(exported), ckpt_file=str(ckpt), config_file=config_file, meta_file=meta_file,
        bundle_root=str(folder), use_trace=trace, key_in_ckpt=key or "",
        input_shape=[1, described["inputs"]["image"]["num_channels"], 64, 64] if trace else None,
    )  # fmt: skip
    x = torch.rand(2, described["inputs"]["image"]["num_channels"], 64, 64) * 2 - 1
    if trace:
        x[:, 1] = 500.0  # the timestep plane
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.load(str(exported))(x), network(x), rtol=1e-4, atol=1e-4)
    activate(None)
