"""``use_flash_attention`` of every generator config reaches each attention block of the network it builds, and the
weights of the fused and the explicit kernel are interchangeable, so a checkpoint trained either way loads. Every
generator defaults to PyTorch's fused kernel (benchmarks/training_step.py): faster or level in every measured case
(DiffBoost 1.9x at 64x64, PIG 1.37x and DiffuseExpand 1.29x at 128x128, 0.91-1.04x elsewhere, within noise) and with
less peak memory."""

from __future__ import annotations

import pytest

from tests.shared_data import REPO, config_parser

# (bundle, config files, key overrides)
GENERATOR_CONFIGS = [
    ("pig", ["train.json"], {}),
    ("pig", ["inference.json"], {}),
    ("pig", ["train.json", "unconditional.json"], {}),
    ("diffuse_expand", ["train_dpm.json"], {}),
    ("diffuse_expand", ["inference.json"], {}),
    ("diffboost", ["train.json"], {}),
    ("diffboost", ["inference.json"], {}),
    ("ct_semantic_synthesis", ["inference.json"], {}),
    *[
        ("ct_semantic_synthesis", ["train.json"], {"conditioning": c})
        for c in ("conditional", "mask_guided", "edge_guided", "sdm")
    ],
]
IDS = ["/".join([c[0], *c[1], *c[2].values()]) for c in GENERATOR_CONFIGS]
# inference configs build the network their training config saved (common.bundle.TrainingConfig): the switch is a
# training setting
TRAINING_CONFIGS = [c for c in GENERATOR_CONFIGS if "inference.json" not in c[1]]
TRAINING_IDS = ["/".join([c[0], *c[1], *c[2].values()]) for c in TRAINING_CONFIGS]


def attention_flags(network) -> list[bool]:
    return [m.use_flash_attention for m in network.modules() if hasattr(m, "use_flash_attention")]


def build(bundle: str, names: list[str], overrides: dict):
    parser = config_parser(*(REPO / "bundles" / bundle / "configs" / n for n in names))
    for key, value in overrides.items():
        parser[key] = value
    return parser.get_parsed_content("network_def")


@pytest.mark.parametrize("bundle,names,overrides", TRAINING_CONFIGS, ids=TRAINING_IDS)
def test_the_attention_switch_reaches_every_block_and_keeps_the_weights(bundle, names, overrides):
    fused = build(bundle, names, {**overrides, "use_flash_attention": True})
    flags = attention_flags(fused)
    assert flags and all(flags), f"attention blocks {flags}"

    explicit = build(bundle, names, {**overrides, "use_flash_attention": False})
    assert not any(attention_flags(explicit))
    explicit.load_state_dict(fused.state_dict(), strict=True)


@pytest.mark.parametrize("bundle,names,overrides", GENERATOR_CONFIGS, ids=IDS)
def test_every_generator_defaults_to_the_fused_kernel(bundle, names, overrides):
    assert all(attention_flags(build(bundle, names, overrides)))
