"""common.bundle: a bundle's root and scripts wherever it is run from, its saved training config, its start-up."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from monai.bundle import ConfigWorkflow

from common import bundle
from common.errors import InputError
from tests.shared_data import REPO


@pytest.fixture(autouse=True)
def no_active_bundle():
    bundle.activate(None)
    yield
    bundle.activate(None)


def tiny_bundle(root: Path, marker: str) -> Path:
    """A bundle folder whose scripts package says which bundle it is, and a config that records its root."""
    (root / "configs").mkdir(parents=True)
    (root / "scripts").mkdir()
    (root / "scripts" / "__init__.py").write_text(f"MARKER = {marker!r}\n")
    (root / "scripts" / "method.py").write_text("from . import MARKER\n\n\ndef which():\n    return MARKER\n")
    config = {
        "imports": ["$import common", "$from common.bundle import scripts", "$import scripts.method"],
        "bundle_root": "$common.bundle.bundle_root()",
        "run": ["$scripts.method.which()", "@bundle_root", "$common.bundle.save_training_config(@bundle_root)"],
    }
    (root / "configs" / "train.json").write_text(json.dumps(config))
    return root


def test_a_running_workflow_finds_its_own_bundle_and_scripts_from_any_folder(tmp_path, monkeypatch):
    first, second = tiny_bundle(tmp_path / "first", "one"), tiny_bundle(tmp_path / "second", "two")
    monkeypatch.chdir(tmp_path)  # neither bundle's folder
    for root, marker in ((first, "one"), (second, "two"), (first, "one")):  # another bundle's scripts are unloaded
        workflow = ConfigWorkflow(config_file=str(root / "configs" / "train.json"), workflow_type=None)
        workflow.initialize()
        which, found, saved = workflow.run()
        assert which == marker and found == str(root)
        assert json.loads(Path(saved).read_text())["bundle_root"] == "$common.bundle.bundle_root()"
        assert Path(sys.modules["scripts"].__file__).parent == root / "scripts"


def test_root_from_the_command_line_then_the_working_directory(tmp_path, monkeypatch):
    root = tiny_bundle(tmp_path / "b", "x")
    monkeypatch.setattr(sys, "argv", ["monai/bundle/__main__.py", "verify_net_in_out", "--config_file", "['c.json']"])
    monkeypatch.chdir(root)
    assert bundle.bundle_root() == str(root)  # c.json lies in the working directory, no configs/ above it
    monkeypatch.setattr(sys, "argv", ["x", "run", f"--config_file={root / 'configs' / 'train.json'}"])
    monkeypatch.chdir(tmp_path)
    assert bundle.bundle_root() == str(root)
    monkeypatch.setattr(sys, "argv", ["pytest"])
    assert bundle.bundle_root() == str(tmp_path)
    bundle.activate(root)
    assert bundle.bundle_root() == str(root)


def test_a_folder_without_scripts_is_named(tmp_path):
    with pytest.raises(InputError, match="has no scripts/ package"):
        bundle.import_scripts(tmp_path)


def test_training_config_prefers_what_training_saved(tmp_path):
    configs = REPO / "bundles" / "pig" / "configs"
    bundle.activate(configs.parent)
    default = bundle.TrainingConfig(tmp_path / "untrained")
    assert default.source == configs / "train.json" and default["channels"] == [32, 64, 64]
    saved = json.loads((configs / "train.json").read_text())
    saved.update(channels=[8, 16, 16], norm_num_groups=8, num_head_channels=8, bundle_root="/elsewhere")
    (tmp_path / "training_config.json").write_text(json.dumps(saved))
    trained = bundle.TrainingConfig(tmp_path)
    assert trained["channels"] == [8, 16, 16]
    assert trained["bundle_root"] == str(configs.parent)  # this machine's bundle, not the saving one's
    assert [b.resnets[0].out_channels for b in trained["network_def"].guider.down_blocks] == [8, 16, 16]
    with pytest.raises(InputError, match="has no key 'nope'"):
        trained["nope"]
    with pytest.raises(InputError, match="training config .* does not exist"):
        bundle.TrainingConfig(tmp_path / "x", name="missing.json")


def test_initialize_is_every_configs_start_up(monkeypatch):
    import torch

    monkeypatch.setattr(sys, "argv", ["pytest"])
    assert bundle.initialize(seed=3) is True
    first = torch.rand(2)
    bundle.initialize(seed=3)
    assert torch.equal(first, torch.rand(2))
    assert sys.excepthook.__module__ == "common.errors"
    sys.excepthook = sys.__excepthook__
