"""Every bundle defines its network once, in its training config: inference builds the network the trained model was
trained with (``common.bundle.TrainingConfig`` over the saved ``training_config.json``), or the training config's
default before any training, so a ``--channels`` override needs no repeating at inference."""

from __future__ import annotations

import json

import pytest

from tests.shared_data import REPO, config_parser

# (bundle, training config, tiny overlay, inference key, inference key of the checkpoint path)
NETWORKS = [
    ("pig", "train.json", "pig_tiny.json", "network_def", "ckpt_path"),
    ("diffuse_expand", "train_dpm.json", "diffuse_expand_tiny.json", "network_def", "ckpt_path"),
    ("diffuse_expand", "train_segmenter.json", "diffuse_expand_tiny.json", "segmenter_def", "segmenter_ckpt_path"),
    ("diffboost", "train.json", "diffboost_tiny.json", "network_def", "ckpt_path"),
    ("ct_semantic_synthesis", "train.json", "ct_semantic_tiny.json", "network_def", "ckpt_path"),
]
IDS = [f"{n[0]}-{n[3]}" for n in NETWORKS]


def shapes(network) -> dict:
    return {k: tuple(v.shape) for k, v in network.state_dict().items()}


def configs(bundle: str):
    return REPO / "bundles" / bundle / "configs"


@pytest.mark.parametrize("bundle,train,tiny,key,ckpt_key", NETWORKS, ids=IDS)
def test_before_training_inference_builds_the_training_configs_network(bundle, train, tiny, key, ckpt_key, tmp_path):
    trained = config_parser(configs(bundle) / train).get_parsed_content(key)
    inference = config_parser(configs(bundle) / "inference.json")
    inference[ckpt_key] = str(tmp_path / "nothing_here" / "model.pt")
    assert shapes(inference.get_parsed_content(key)) == shapes(trained)


@pytest.mark.parametrize("bundle,train,tiny,key,ckpt_key", NETWORKS, ids=IDS)
def test_inference_builds_the_network_the_model_was_trained_with(bundle, train, tiny, key, ckpt_key, tmp_path):
    training = config_parser(configs(bundle) / train, REPO / "tests" / "configs" / tiny)
    (tmp_path / "training_config.json").write_text(json.dumps(training.get()))  # what training saves
    inference = config_parser(configs(bundle) / "inference.json")
    inference[ckpt_key] = str(tmp_path / "model.pt")
    built = shapes(inference.get_parsed_content(key))
    assert built == shapes(training.get_parsed_content(key))
    assert built != shapes(config_parser(configs(bundle) / train).get_parsed_content(key))  # the overrides count
    if key == "network_def":
        assert inference.get_parsed_content("image_size") == training.get_parsed_content("image_size")
