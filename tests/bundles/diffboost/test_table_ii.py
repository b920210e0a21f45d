"""DiffBoost's Table II rows as conditions of the shared evaluation: Table II augmentations and patch mixing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from common.data import load_dataset
from common.errors import InputError
from common.evaluation import protocol, segmenter
from common.writers import PairWriter
from tests.evaluation_data import FAST, TINY_NET
from tests.shared_data import bundle_module

TABLE_II = bundle_module("diffboost", "table_ii")
PatchMixCondition, TableIIAugmentation = TABLE_II.PatchMixCondition, TABLE_II.TableIIAugmentation

pytestmark = pytest.mark.usefixtures("one_thread")


def write_versions(folder: Path, pairs: list[dict], n: int = 2, missing: str | None = None, noise: float = 0.2) -> Path:
    """A DiffBoost-style folder: n noisy copies of each real image, indexed by name in sources.json."""
    writer = PairWriter(folder)
    rng = np.random.RandomState(0)
    versions = {}
    for i, pair in enumerate(p for p in pairs if p["name"] != missing):
        versions[pair["name"]] = [i * n + k for k in range(n)]
        for k in range(n):
            noisy = np.clip(pair["image"] + rng.normal(0, noise, pair["image"].shape), -1, 1).astype(np.float32)
            writer.write(i * n + k, noisy, pair["label"])
    (folder / "sources.json").write_text(json.dumps({"samples_per_image": n, "versions": versions}))
    return folder


def train_with(condition, pairs) -> dict:
    torch.manual_seed(0)
    model = segmenter.build_segmenter("unet", 2, 32, network_kwargs=TINY_NET)
    setup = condition.setup(pairs, None, seed=0)
    segmenter.train_segmenter(
        model,
        iterations=3,
        batch_size=4,
        seed=0,
        dataset=setup.dataset,
        prepare_batch=setup.prepare_batch,
        inferer=setup.inferer,
    )
    return model.state_dict()


def test_patch_mixing_with_alpha_one_is_real_only_training(data, tmp_path):
    pairs = load_dataset(data["real"], split="train", image_size=32)
    folder = write_versions(tmp_path / "versions", pairs)
    torch.manual_seed(0)
    model = segmenter.build_segmenter("unet", 2, 32, network_kwargs=TINY_NET)
    segmenter.train_segmenter(model, pairs, iterations=3, batch_size=4, seed=0)
    real_only = model.state_dict()
    alpha_one = train_with(PatchMixCondition(folder, alpha=1.0, patch_size=8), pairs)
    alpha_zero = train_with(PatchMixCondition(folder, alpha=0.0), pairs)
    assert all(torch.equal(real_only[k], alpha_one[k]) for k in real_only)  # alpha = 1: only real patches
    assert any(not torch.equal(real_only[k], alpha_zero[k]) for k in real_only)  # alpha = 0: only synthetic ones
    missing = write_versions(tmp_path / "missing", pairs, missing=pairs[0]["name"])
    with pytest.raises(InputError, match=f"have no synthetic versions \\(first: '{pairs[0]['name']}'\\)"):
        PatchMixCondition(missing).setup(pairs, None, seed=0)
    with pytest.raises(InputError, match="'patch_mix.alpha' must be a number in"):
        PatchMixCondition(folder, alpha=1.5)


@pytest.mark.parametrize("augment", ["RandomRotate", True])
def test_augmentation_moves_the_versions_with_the_real_image(data, augment, tmp_path):
    pairs = load_dataset(data["real"], split="train", image_size=32)
    same = [{**p, "synthetic": np.stack([p["image"]] * 2)} for p in pairs]
    folder = write_versions(tmp_path / "versions", pairs, noise=0.0)
    condition = PatchMixCondition(folder, alpha=0.5)
    condition.augment = TableIIAugmentation(augment) if isinstance(augment, str) else augment
    setup = condition.setup(pairs, None, seed=0)
    dataset = setup.dataset
    moved = 0
    for i, pair in enumerate(same):
        item = dataset[i]
        assert item["synthetic"].shape == (2, 1, 32, 32) and item["synthetic"].dtype == torch.float32
        assert torch.allclose(item["synthetic"], item["image"].expand(2, -1, -1, -1), atol=1e-5)
        moved += not np.allclose(item["image"].numpy(), pair["image"])
    assert moved > 0  # the augmentation did act on some pairs
    torch.manual_seed(0)
    model = segmenter.build_segmenter("unet", 2, 32, network_kwargs=TINY_NET)
    history = segmenter.train_segmenter(
        model, iterations=2, batch_size=4, dataset=dataset, prepare_batch=setup.prepare_batch, inferer=setup.inferer
    )
    assert np.isfinite(history["final_loss"])


def test_a_diffboost_condition_runs_in_the_workflow_and_is_described(data, tmp_path):
    train = load_dataset(data["real"], split="train", image_size=32)
    folder = write_versions(tmp_path / "versions", train)
    out = tmp_path / "out"
    mix = {"folder": str(folder), "alpha": 0.5, "patch_size": 8, "mode": "logits"}
    results = protocol.run_segmentation_evaluation(
        real={"dataset_dir": data["real"]},
        conditions={
            "real": {},
            "diffboost": PatchMixCondition(**mix),
            "diffboost+mirror": PatchMixCondition(**mix, augment="RandomMirror"),
        },
        seeds=[0],
        output_dir=out,
        **FAST,
    )
    assert list(results["aggregate"]) == ["real", "diffboost", "diffboost+mirror"]
    report = (out / "results.md").read_text()
    assert "DiffBoost patch mixing (logits, alpha 0.5, patch 8)" in report
    assert "RandomMirror augmentation, DiffBoost patch mixing" in report
    broken = write_versions(tmp_path / "broken", train, missing=train[0]["name"])
    with pytest.raises(InputError, match=f"have no synthetic versions \\(first: '{train[0]['name']}'\\)"):
        protocol.run_segmentation_evaluation(
            real={"dataset_dir": data["real"]},
            conditions={"diffboost": PatchMixCondition(**{**mix, "folder": str(broken)})},
            seeds=[0],
            output_dir=tmp_path / "out2",
            **FAST,
        )
    assert not (tmp_path / "out2").exists()
    with pytest.raises(InputError, match="condition 'x' has unknown key 'patch_mix'"):
        protocol.run_segmentation_evaluation(
            real={"dataset_dir": data["real"]},
            conditions={"x": {"patch_mix": mix, "synthetic": [str(folder)]}},
            seeds=[0],
            output_dir=tmp_path / "out3",
            **FAST,
        )


def test_a_table_ii_augmentation_trains_seeded_and_differs_from_none(data):
    pairs = load_dataset(data["real"], split="train", image_size=32)
    states = []
    for augment in (TableIIAugmentation("DeepStack"), TableIIAugmentation("DeepStack"), False):
        torch.manual_seed(0)
        model = segmenter.build_segmenter("unet", 2, 32, network_kwargs=TINY_NET)
        segmenter.train_segmenter(model, pairs, iterations=3, batch_size=4, augment=augment, seed=0)
        states.append(model.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert any(not torch.equal(states[0][k], states[2][k]) for k in states[0])
