"""check_override_keys: the command line is parsed as MONAI's CLI parses it; a key no config defines is named."""

from __future__ import annotations

import json
import os

import pytest

from common.errors import InputError
from common.overrides import check_override_keys, dropped_none_overrides, parse_run_arguments, unknown_override_keys

MONAI_MAIN = os.path.join("site-packages", "monai", "bundle", "__main__.py")


@pytest.fixture
def configs(tmp_path):
    base = tmp_path / "train.json"
    base.write_text(
        json.dumps({"max_epochs": 2, "net": {"_target_": "torch.nn.Identity"}, "data": {"size": 8}, "limit": None})
    )
    overlay = tmp_path / "overlay.json"
    overlay.write_text(json.dumps({"lr": 0.1}))
    return f"['{base}','{overlay}']"


def test_parses_like_the_monai_cli():
    arguments = parse_run_arguments(["training", "--config_file", "['a.json','b.json']", "--x#y=3", "--lr", "1e-4"])
    assert arguments == {"run_id": "training", "config_file": ["a.json", "b.json"], "x#y": 3, "lr": 1e-4}


def test_known_keys_pass(configs):
    arguments = parse_run_arguments(["--config_file", configs, "--max_epochs", "3", "--lr", "1", "--data#size", "4"])
    assert unknown_override_keys(arguments) == []


def test_unknown_keys_are_listed(configs):
    arguments = parse_run_arguments(["--config_file", configs, "--max_epoch", "3", "--data#sise", "4"])
    assert unknown_override_keys(arguments) == ["max_epoch", "data#sise"]


def test_a_new_argument_of_a_component_is_allowed(configs):
    assert unknown_override_keys(parse_run_arguments(["--config_file", configs, "--net#inplace", "1"])) == []
    assert unknown_override_keys(parse_run_arguments(["--config_file", configs, "--net::inplace", "1"])) == []


def test_args_file_counts_as_command_line(tmp_path, configs):
    args_file = tmp_path / "args.json"
    args_file.write_text(json.dumps({"config_file": json.loads(configs.replace("'", '"')), "max_epoch": 1}))
    assert unknown_override_keys(parse_run_arguments(["--args_file", str(args_file)])) == ["max_epoch"]


def test_check_raises_one_sentence_naming_the_key(configs):
    argv = [MONAI_MAIN, "run", "--config_file", configs, "--max_epoch", "3"]
    with pytest.raises(InputError, match=r"unknown config key '--max_epoch'"):
        check_override_keys(argv)
    assert check_override_keys([MONAI_MAIN, "run", "--config_file", configs, "--max_epochs", "3"])


def test_check_ignores_other_programs(configs):
    assert check_override_keys(["pytest", "--config_file", configs, "--max_epoch", "3"])


def test_none_overrides_that_monai_would_drop_are_listed(configs):
    arguments = parse_run_arguments(["--config_file", configs, "--max_epochs", "None", "--limit", "None", "--lr", "1"])
    assert arguments["max_epochs"] is None  # what python-fire gives MONAI, which then ignores it
    assert dropped_none_overrides(arguments) == ["max_epochs"]  # "limit" is None in the config anyway


def test_check_refuses_a_none_override_that_would_be_ignored(configs):
    with pytest.raises(InputError, match=r"'--max_epochs None' would be ignored"):
        check_override_keys([MONAI_MAIN, "run", "--config_file", configs, "--max_epochs", "None"])
    assert check_override_keys([MONAI_MAIN, "run", "--config_file", configs, "--limit", "None"])
