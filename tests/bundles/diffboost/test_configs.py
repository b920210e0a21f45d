"""The DiffBoost configs: stage overlays, Table I and II layouts, a training step, the optional CLIP encoder."""

from __future__ import annotations

import json

import pytest
import torch
from monai.bundle import ConfigParser

from tests.shared_data import REPO, config_parser, tiny_clip_folder

CONFIGS = REPO / "bundles" / "diffboost" / "configs"


def parser(*names) -> ConfigParser:
    return config_parser(*(CONFIGS / n for n in names))


def test_stage_overlays_set_edges_sources_and_weights():
    pretrain = parser("train.json", "pretrain.json")
    assert pretrain["edge_source"] == "image" and pretrain["stage"] == "pretrain"
    assert [s.get("modality") for s in pretrain["sources"]] == ["US", "X-ray", "CT"]
    assert pretrain["split"] == "train"  # never val or test images
    finetune = parser("train.json", "busi.json")
    weights = finetune.get_parsed_content("pretrained_weights")
    assert finetune["edge_source"] == "mask" and weights.endswith("pretrain/model.pt")
    assert parser("inference.json", "busi.json").get_parsed_content("ckpt_path").endswith("finetune/model.pt")


def test_table_i_rebuilds_held_out_images_from_image_edges_with_the_pretrained_weights():
    table_i = parser("inference.json", "pretrain.json", "table_i.json")
    assert table_i.get_parsed_content("ckpt_path").endswith("pretrain/model.pt")
    assert table_i["split"] == "val" and table_i["samples_per_image"] == 1  # held out; the prompt alone
    assert table_i["edge_source"] == "image"
    methods = table_i.get_parsed_content("methods")
    assert list(methods) == ["DiffBoost generator (pretrained)", "Pix2Pix"]
    assert len(set(methods.values())) == 2
    assert parser("inference.json")["edge_source"] == "mask"  # task versions still follow their masks


def test_evaluation_has_every_table_ii_row():
    conditions = parser("evaluate.json", "busi.json").get_parsed_content("conditions")
    assert list(conditions) == [
        "baseline",
        "RandomContrast",
        "RandomGamma",
        "RandomBrightness",
        "RandomNoise",
        "RandomResolution",
        "RandomMirror",
        "RandomRotate",
        "RandomScale",
        "DeepStack",
        "DiffBoost",
    ]
    assert conditions["DiffBoost"].settings()["patch_mix"]["alpha"] == pytest.approx(0.6)
    assert conditions["RandomGamma"].settings()["augment"] == "RandomGamma"


def test_diffboost_with_adds_combined_rows_that_keep_the_paper_mixing():
    p = parser("evaluate.json", "busi.json")
    p["diffboost_with"] = ["RandomRotate", "DeepStack"]
    conditions = p.get_parsed_content("conditions")
    assert list(conditions)[-3:] == ["DiffBoost", "DiffBoost+RandomRotate", "DiffBoost+DeepStack"]
    combined = conditions["DiffBoost+RandomRotate"].settings()
    assert combined["augment"] == "RandomRotate"
    assert combined["patch_mix"] == conditions["DiffBoost"].settings()["patch_mix"]


def test_one_generator_training_step_moves_the_weights():
    p = parser("train.json")
    p["num_synthetic"] = 4
    p["batch_size"] = 2
    trainer = p.get_parsed_content("train#trainer")
    batch = next(iter(p.get_parsed_content("train#dataloader")))
    x_t, target, args, kwargs = trainer.prepare_batch(batch)
    network = p.get_parsed_content("network")
    loss = trainer.loss_function(network(x_t, *args, **kwargs), target)
    loss.backward()
    assert torch.isfinite(loss) and any(q.grad is not None and q.grad.abs().sum() > 0 for q in network.parameters())


def test_clip_path_swaps_in_a_frozen_pretrained_text_encoder(tmp_path):
    folder = str(tiny_clip_folder(tmp_path / "clip"))
    p = parser("train.json")
    p["clip_path"], p["num_synthetic"], p["batch_size"] = folder, 4, 2
    network = p.get_parsed_content("network")
    # the configs' classes come from the bundle's own scripts package: compare by name
    assert type(network.text_encoder).__name__ == "ClipTextEncoder"
    assert type(p.get_parsed_content("tokenizer")).__name__ == "ClipTokenizer"
    trainer = p.get_parsed_content("train#trainer")
    x_t, target, args, kwargs = trainer.prepare_batch(next(iter(p.get_parsed_content("train#dataloader"))))
    assert kwargs["tokens"].shape == (2, p["max_prompt_length"])
    loss = trainer.loss_function(network(x_t, *args, **kwargs), target)
    assert torch.isfinite(loss)
    (tmp_path / "finetune").mkdir()
    (tmp_path / "finetune" / "training_config.json").write_text(json.dumps(p.get()))  # what training saves
    infer = parser("inference.json")
    infer["ckpt_path"] = str(tmp_path / "finetune" / "model.pt")
    assert type(infer.get_parsed_content("tokenizer")).__name__ == "ClipTokenizer"
    assert infer.get_parsed_content("network_def").state_dict().keys() == network.state_dict().keys()
