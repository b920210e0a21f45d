"""The shared segmentation evaluation: metric conventions, aggregation, data pools, folds, resume, the bundle run."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.data import create_test_image_2d
from PIL import Image

from common import seg_eval
from common.data import load_dataset
from common.errors import InputError
from common.writers import PairWriter, write_datalist
from tests.bundle_runner import run_bundle
from tests.shared_data import REPO

EVALUATE = REPO / "bundles" / "pig" / "configs" / "evaluate.json"
TINY = REPO / "tests" / "configs" / "seg_eval_tiny.json"
TINY_NET = {"channels": (4, 8), "strides": (2,), "num_res_units": 0}
FAST = {"image_size": 32, "iterations": 2, "batch_size": 4, "network_kwargs": TINY_NET}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Two cores shared with a background training: competing torch threads make each step ~50x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def write_pairs(folder: Path, n: int, seed: int, empty: tuple[int, ...] = (), file_format: str = "png") -> list[str]:
    """n binary 32x32 disc pairs written by PairWriter (images/, labels/, datalist.json); ``empty`` get no lesion."""
    writer = PairWriter(folder, file_format=file_format)
    rng = np.random.RandomState(seed)
    items = []
    for i in range(n):
        image, seg = create_test_image_2d(
            32, 32, num_objs=1, rad_max=8, rad_min=5, noise_max=0.2, num_seg_classes=1, random_state=rng
        )
        label = np.zeros_like(seg) if i in empty else (seg > 0)
        items.append(writer.write(i, image * 2 - 1, label))
    write_datalist(folder / "datalist.json", items)
    return [writer.name(i) for i in range(n)]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("seg_eval")
    names = write_pairs(root / "real", 12, seed=0, empty=(3, 9))
    (root / "real" / "splits.json").write_text(json.dumps({"train": names[:8], "test": names[8:]}))
    # NIfTI labels hold class indices 0/1, which also pass as 3-class masks: only the evaluation's check catches that
    names = write_pairs(root / "indices", 4, seed=3, file_format="nifti")
    (root / "indices" / "splits.json").write_text(json.dumps({"train": names[:2], "test": names[2:]}))
    write_pairs(root / "syn_a", 5, seed=1)
    write_pairs(root / "syn_b", 3, seed=2, empty=(0,))
    return {"root": root, "real": root / "real", "syn_a": root / "syn_a", "syn_b": root / "syn_b"}


def masks(*blocks: tuple[int, slice, slice, int], n: int = 1, size: int = 16) -> np.ndarray:
    out = np.zeros((n, 1, size, size), np.int64)
    for i, rows, cols, value in blocks:
        out[i, 0, rows, cols] = value
    return out


# --------------------------------------------------------------------------------------------------------------------
# metrics and aggregation
# --------------------------------------------------------------------------------------------------------------------


def test_empty_mask_conventions():
    square = (slice(4, 8), slice(4, 8))
    # 0: perfect; 1: empty GT, empty prediction; 2: empty GT, false positive; 3: lesion missed entirely
    gt = masks((0, *square, 1), (3, *square, 1), n=4)
    pred = masks((0, *square, 1), (2, slice(1, 3), slice(1, 3), 1), n=4)
    records = seg_eval.pair_metrics(pred, gt)
    assert records[0]["1"]["dice"] == 1.0 and records[0]["1"]["hd95"] == 0.0
    assert all(v is None for k, v in records[1]["1"].items() if k in seg_eval.METRICS)
    assert records[2]["1"]["gt_empty"] and not records[2]["1"]["pred_empty"] and records[2]["1"]["dice"] is None
    missed = records[3]["1"]
    assert (missed["dice"], missed["iou"], missed["precision"], missed["recall"]) == (0.0, 0.0, 0.0, 0.0)
    assert missed["hd95"] is None and missed["assd"] is None

    summary = seg_eval.summarise_images([{"name": str(i), "classes": r} for i, r in enumerate(records)])
    assert summary["dice"] == 0.5 and summary["precision"] == 0.5  # over the two images with a lesion
    assert summary["hd95"] == 0.0 and summary["assd"] == 0.0  # the missed lesion is excluded...
    assert summary["hd95_missed"] == 1  # ...and counted
    assert (summary["empty_gt_images"], summary["empty_gt_pred_empty"]) == (2, 1)
    assert summary["empty_gt_pred_empty_fraction"] == 0.5
    # a segmenter that predicts nothing: distances undefined, not 0
    nothing = seg_eval.summarise_images(
        [{"name": "0", "classes": r} for r in seg_eval.pair_metrics(np.zeros_like(gt[:1]), gt[:1])]
    )
    assert nothing["dice"] == 0.0 and nothing["hd95"] is None and nothing["hd95_missed"] == 1
    assert nothing["empty_gt_pred_empty_fraction"] is None


def test_multiclass_per_class_dice_known_values():
    # image 0: class 1 (4x4) predicted 2 columns off -> Dice 2*8/32 = 0.5, HD95 2; class 2 exact -> 1
    gt = masks(
        (0, slice(2, 6), slice(2, 6), 1), (0, slice(10, 14), slice(10, 14), 2), (1, slice(2, 6), slice(2, 6), 1), n=2
    )
    pred = masks(
        (0, slice(2, 6), slice(4, 8), 1), (0, slice(10, 14), slice(10, 14), 2), (1, slice(2, 6), slice(2, 6), 1), n=2
    )
    records = seg_eval.pair_metrics(pred, gt, num_classes=3)
    assert records[0]["1"]["dice"] == pytest.approx(0.5) and records[0]["1"]["iou"] == pytest.approx(1 / 3)
    assert records[0]["1"]["hd95"] == pytest.approx(2.0)
    assert records[0]["2"]["dice"] == 1.0
    assert records[1]["2"]["gt_empty"] and records[1]["2"]["dice"] is None
    summary = seg_eval.summarise_images([{"name": str(i), "classes": r} for i, r in enumerate(records)], 3)
    assert summary["per_class"]["1"]["dice"] == pytest.approx(0.75)  # (0.5 + 1) / 2 images
    assert summary["per_class"]["2"]["dice"] == 1.0
    assert summary["dice"] == pytest.approx((0.75 + 1.0) / 2)  # mean over foreground classes
    assert summary["per_class"]["2"]["empty_gt_images"] == 1 and summary["per_class"]["2"]["empty_gt_pred_empty"] == 1
    assert summary["empty_gt_images"] == 0 and summary["empty_gt_pred_empty_fraction"] is None


def run(condition: str, seed: int, dice: float | None, fold: int | None = None) -> dict:
    metrics = {"dice": dice, "hd95_missed": 1, "per_class": {"1": {"dice": dice}}}
    return {"condition": condition, "seed": seed, "fold": fold, "metrics": metrics}


def test_aggregate_mean_std_and_paired_differences():
    runs = [
        run("real", 0, 0.2),
        run("real", 1, 0.4),
        run("real", 2, 0.6),
        run("syn", 0, 0.3),
        run("syn", 1, 0.6),
        run("syn", 2, None),
        run("once", 0, 0.5),
    ]
    agg = seg_eval.aggregate(runs)
    assert list(agg) == ["real", "syn", "once"]
    assert agg["real"]["runs"] == 3
    assert agg["real"]["metrics"]["dice"]["mean"] == pytest.approx(0.4)
    assert agg["real"]["metrics"]["dice"]["std"] == pytest.approx(0.2)  # sample std, ddof=1
    assert agg["syn"]["metrics"]["dice"] == pytest.approx({"mean": 0.45, "std": 0.15 * 2**0.5, "n": 2})
    assert agg["once"]["metrics"]["dice"] == {"mean": 0.5, "std": None, "n": 1}
    assert agg["real"]["per_class"]["1"]["dice"]["mean"] == pytest.approx(0.4)
    paired = seg_eval.paired_differences(runs, "real", keys=("dice",))
    assert paired["syn"]["dice"]["mean"] == pytest.approx(0.15) and paired["syn"]["dice"]["n"] == 2
    assert paired["syn"]["dice"]["std"] == pytest.approx(np.std([0.1, 0.2], ddof=1))


# --------------------------------------------------------------------------------------------------------------------
# data pools and splits
# --------------------------------------------------------------------------------------------------------------------


def test_merging_real_and_synthetic_gives_expected_counts(data):
    real = load_dataset(data["real"], split="train", image_size=32)
    syn = [seg_eval.load_synthetic(data[k], 32, 2) for k in ("syn_a", "syn_b")]
    assert [len(real), len(syn[0]), len(syn[1])] == [8, 5, 3]
    merged = seg_eval.merge_training_pairs(real, syn)
    assert len(merged) == 16 and set(merged[0]) == {"image", "label"}
    assert merged[8]["image"].shape == (1, 32, 32) and set(np.unique(merged[8]["label"])) <= {0, 1}
    assert len(seg_eval.merge_training_pairs(real, syn, use_real=False)) == 8
    assert len(seg_eval.merge_training_pairs(real, syn, max_synthetic=2)) == 8 + 2 + 2
    assert len(seg_eval.merge_training_pairs(real, [])) == 8


def test_kfold_splits_partition_without_overlap():
    pairs = [{"name": f"p{i}", "source": f"/d/p{i}.png", "slice": None} for i in range(10)]
    splits = seg_eval.kfold_splits(pairs, 3, seed=0)
    tests = [set(t) for _, t in splits]
    assert len(splits) == 3 and sorted(len(t) for t in tests) == [3, 3, 4]
    assert set().union(*tests) == set(range(10)) and sum(map(len, tests)) == 10  # a partition
    for train, test in splits:
        assert not set(train) & set(test) and set(train) | set(test) == set(range(10))
    assert splits == seg_eval.kfold_splits(pairs, 3, seed=0) != seg_eval.kfold_splits(pairs, 3, seed=1)
    # slices of a volume stay together ...
    volumes = [{"name": f"v{v}_s{k}", "source": f"/d/v{v}.nii.gz", "slice": k} for v in range(3) for k in range(4)]
    for _, test in seg_eval.kfold_splits(volumes, 3):
        assert len({volumes[i]["source"] for i in test}) == 1 and len(test) == 4
    # ... and one volume is cut into contiguous slabs
    one = [{"name": f"s{k}", "source": "/d/ct.nii.gz", "slice": k} for k in range(6)]
    assert [t for _, t in seg_eval.kfold_splits(one, 3)] == [[0, 1], [2, 3], [4, 5]]
    with pytest.raises(InputError, match="'folds'"):
        seg_eval.kfold_splits(pairs, 1)


# --------------------------------------------------------------------------------------------------------------------
# segmenter
# --------------------------------------------------------------------------------------------------------------------


def test_network_keys_and_sizes():
    small = {"unet": TINY_NET, "attention_unet": {"channels": (4, 8), "strides": (2,)}, "Swin-UNETR": {}}
    for key, kwargs in small.items():
        size = 64 if key == "Swin-UNETR" else 32
        model = seg_eval.build_segmenter(key, 3, size, network_kwargs=kwargs)
        assert model(torch.zeros(2, 1, size, size)).shape == (2, 3, size, size)  # training mode, as in training
    with pytest.raises(InputError, match="'network' must be one of 'unet', 'attention_unet', 'swin_unetr', got 'vnet'"):
        seg_eval.build_segmenter("vnet")
    for size in (48, 32):
        with pytest.raises(InputError, match="multiple of 32 and at least 64 for network 'swin_unetr'"):
            seg_eval.build_segmenter("swin_unetr", image_size=size)
    with pytest.raises(InputError, match="must be a multiple of 8 for network 'unet'"):
        seg_eval.build_segmenter("unet", image_size=60)
    with pytest.raises(InputError, match="'network_kwargs'"):
        seg_eval.build_segmenter("unet", network_kwargs={"depth": 3})


def test_training_is_seeded_and_saved_segmenter_predicts_the_same(data, tmp_path):
    pairs = load_dataset(data["real"], split="train", image_size=32)
    states = []
    for _ in range(2):
        torch.manual_seed(0)
        model = seg_eval.build_segmenter("unet", 2, 32, network_kwargs=TINY_NET)
        history = seg_eval.train_segmenter(model, pairs, iterations=3, batch_size=4, augment=True, seed=0)
        states.append(model.state_dict())
    assert history["final_loss"] > 0
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    seg_eval.save_segmenter(model, tmp_path / "seg.pt", "unet", 2, 32, TINY_NET)
    loaded = seg_eval.load_segmenter(tmp_path / "seg.pt")
    images = [p["image"] for p in pairs]
    assert np.array_equal(seg_eval.predict(model, images), seg_eval.predict(loaded, images))
    assert seg_eval.predict(model, images).shape == (8, 1, 32, 32)


def test_a_table_ii_augmentation_trains_seeded_and_differs_from_none(data):
    pairs = load_dataset(data["real"], split="train", image_size=32)
    states = []
    for augment in ("DeepStack", "DeepStack", False):
        torch.manual_seed(0)
        model = seg_eval.build_segmenter("unet", 2, 32, network_kwargs=TINY_NET)
        seg_eval.train_segmenter(model, pairs, iterations=3, batch_size=4, augment=augment, seed=0)
        states.append(model.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert any(not torch.equal(states[0][k], states[2][k]) for k in states[0])


# --------------------------------------------------------------------------------------------------------------------
# the workflow
# --------------------------------------------------------------------------------------------------------------------


@pytest.fixture
def count_trainings(monkeypatch) -> list[str]:
    calls: list[str] = []
    train = seg_eval.train_segmenter

    def counting(model, pairs, *args, **kwargs):
        calls.append(len(pairs))
        return train(model, pairs, *args, **kwargs)

    monkeypatch.setattr(seg_eval, "train_segmenter", counting)
    return calls


def test_resume_skips_finished_runs(data, tmp_path, count_trainings):
    out = tmp_path / "eval"
    conditions = {"real": {}, "real+synthetic": {"synthetic": [str(data["syn_a"])]}}
    kwargs = {
        "real": {"dataset_dir": data["real"]},
        "conditions": conditions,
        "seeds": [0, 1],
        "output_dir": out,
        **FAST,
    }
    results = seg_eval.run_segmentation_evaluation(**kwargs)
    assert count_trainings == [8, 8, 13, 13]
    assert sorted(p.name for p in (out / "runs").iterdir()) == [
        "real+synthetic__seed0.json",
        "real+synthetic__seed1.json",
        "real__seed0.json",
        "real__seed1.json",
    ]
    assert results["aggregate"]["real"]["runs"] == 2 and results["protocol"]["baseline"] == "real"
    assert json.loads((out / "results.json").read_text())["conventions"] == seg_eval.CONVENTIONS
    run = json.loads((out / "runs" / "real__seed1.json").read_text())
    assert run["test_pairs"] == 4 and len(run["per_image"]) == 4 and run["metrics"]["empty_gt_images"] == 1

    # a killed evaluation: one run missing, no summary yet -> exactly that run is trained again
    (out / "runs" / "real+synthetic__seed0.json").unlink()
    (out / "results.json").unlink()
    again = seg_eval.run_segmentation_evaluation(**kwargs)
    assert count_trainings[4:] == [13]
    assert again["aggregate"] == seg_eval.run_segmentation_evaluation(**kwargs)["aggregate"]
    assert len(count_trainings) == 5 and (out / "results.json").is_file()
    # changed settings never mix with old runs
    with pytest.raises(InputError, match="'iterations': 2 then, 3 now"):
        seg_eval.run_segmentation_evaluation(**{**kwargs, "iterations": 3})
    assert len(count_trainings) == 5, "a settings mismatch must be found before anything trains"


def test_bad_synthetic_folder_fails_before_any_training(data, tmp_path, count_trainings):
    (tmp_path / "empty_gen" / "images").mkdir(parents=True)
    (tmp_path / "empty_gen" / "labels").mkdir()
    conditions = {"real": {}, "syn": {"synthetic": [str(tmp_path / "empty_gen")]}}
    with pytest.raises(InputError, match="empty_gen"):
        seg_eval.run_segmentation_evaluation(
            {"dataset_dir": data["real"]}, conditions, seeds=[0], output_dir=tmp_path / "out", **FAST
        )
    assert count_trainings == [] and not (tmp_path / "out").exists()


def test_kfold_run_with_a_generator_per_fold(data, tmp_path, count_trainings):
    for fold in (0, 1):
        write_pairs(tmp_path / f"gen_{fold}", 2 + fold, seed=10 + fold)
    out = tmp_path / "cv"
    results = seg_eval.run_segmentation_evaluation(
        real={"dataset_dir": data["real"]},
        folds=2,
        seeds=[0],
        max_pairs=4,
        output_dir=out,
        save_models=True,
        conditions={"syn": {"real": False, "synthetic": [str(tmp_path / "gen_{fold}")]}},
        **FAST,
    )
    assert count_trainings == [2, 3]  # each fold trains on its own generator's pairs
    assert [(r["fold"], r["test_pairs"]) for r in results["runs"]] == [(0, 6), (1, 6)]
    assert (out / "runs" / "syn__seed0__fold1.pt").is_file()
    assert "2-fold cross-validation" in (out / "results.md").read_text()


@pytest.mark.parametrize(
    "change, message",
    [
        ({"network": "vnet"}, "'network' must be one of"),
        (
            {"conditions": {"real": {}, "syn": {"synthetic": ["/nonexistent/gen"]}}},
            "synthetic folder '/nonexistent/gen' of condition 'syn' does not exist",
        ),
        ({"num_classes": 3}, "has values [255] outside the expected 0..2 (num_classes=3)"),
        ({"num_classes": 3, "real": "indices"}, "'num_classes' is 3 but the masks of"),
        ({"real": {}}, "'dataset_dir' (or 'datalist') must be set"),
        ({"conditions": {"x": {"real": False}}}, "condition 'x' has no training data"),
        ({"conditions": {"a/b": {}}}, "condition name 'a/b'"),
        (
            {"conditions": {"x": {"augment": "RandomBlur"}}},
            "key 'augment' must be true, false or one of RandomContrast",
        ),
        ({"seeds": []}, "'seeds' must be a non-empty list"),
    ],
)
def test_bad_input_fails_before_any_output(data, tmp_path, change, message):
    kwargs = {
        "real": {"dataset_dir": data["real"]},
        "conditions": {"real": {}},
        "seeds": [0],
        "output_dir": tmp_path / "out",
        **FAST,
        **change,
    }
    if isinstance(kwargs["real"], str):
        kwargs["real"] = {"dataset_dir": data["root"] / kwargs["real"]}
    with pytest.raises(InputError) as err:
        seg_eval.run_segmentation_evaluation(**kwargs)
    assert message in str(err.value) and str(err.value).count(". ") == 0
    assert not (tmp_path / "out").exists()


def test_same_pairs_in_train_and_test_is_refused(data, tmp_path):
    """Without splits.json every split is the whole folder: testing on training pairs must not pass silently."""
    with pytest.raises(InputError, match="in both split 'train' and split 'test'"):
        seg_eval.run_segmentation_evaluation(
            {"dataset_dir": data["syn_a"]}, {"real": {}}, seeds=[0], output_dir=tmp_path / "out", **FAST
        )


def bundle(*overrides: str) -> subprocess.CompletedProcess:
    return run_bundle([EVALUATE, TINY], *overrides)


def test_bundle_end_to_end(data, tmp_path):
    out = tmp_path / "evaluation"
    synthetic = f"['{data['syn_a']}','{data['syn_b']}']"
    result = bundle("--dataset_dir", str(data["real"]), "--synthetic_dirs", synthetic, "--output_dir", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert list(results["aggregate"]) == ["real", "real+augment", "real+synthetic", "synthetic-only"]
    assert [(r["train_pairs_real"], r["train_pairs_synthetic"]) for r in results["runs"]] == [
        (8, 0),
        (8, 0),
        (8, 8),
        (0, 8),
    ]
    assert results["protocol"]["iterations"] == 3 and results["protocol"]["image_size"] == 32
    assert len(list((out / "runs").glob("*.json"))) == 4
    table = (out / "results.md").read_text().splitlines()
    assert any(line.startswith("| real+synthetic | 1 | ") for line in table)
    assert any("ΔDice vs real (paired)" in line for line in table)
    with Image.open(out / "results.png") as png:
        assert png.mode == "RGB" and png.size[0] >= 480

    bad = bundle("--dataset_dir", str(data["real"]), "--network", "vnet", "--output_dir", str(tmp_path / "bad"))
    assert bad.returncode == 2 and "Traceback" not in bad.stderr, bad.stderr[-3000:]
    assert bad.stderr.strip().splitlines()[-1].startswith("error: 'network' must be one of")
    assert not (tmp_path / "bad").exists()


# --------------------------------------------------------------------------------------------------------------------
# DiffBoost patch mixing
# --------------------------------------------------------------------------------------------------------------------


def write_versions(folder: Path, pairs: list[dict], n: int = 2, missing: str | None = None) -> Path:
    """A DiffBoost-style folder: n noisy copies of each real image, indexed by name in sources.json."""
    writer = PairWriter(folder)
    rng = np.random.RandomState(0)
    versions = {}
    for i, pair in enumerate(p for p in pairs if p["name"] != missing):
        versions[pair["name"]] = [i * n + k for k in range(n)]
        for k in range(n):
            noisy = np.clip(pair["image"] + rng.normal(0, 0.2, pair["image"].shape), -1, 1).astype(np.float32)
            writer.write(i * n + k, noisy, pair["label"])
    (folder / "sources.json").write_text(json.dumps({"samples_per_image": n, "versions": versions}))
    return folder


def test_patch_mixing_with_alpha_one_is_real_only_training(data):
    pairs = load_dataset(data["real"], split="train", image_size=32)
    versions = [np.stack([p["image"] + 0.5, p["image"] - 0.5]) for p in pairs]
    mixed = [{**p, "synthetic": v} for p, v in zip(pairs, versions)]
    states = []
    for pool, mix in ((pairs, None), (mixed, {"alpha": 1.0, "patch_size": 8}), (mixed, {"alpha": 0.0})):
        torch.manual_seed(0)
        model = seg_eval.build_segmenter("unet", 2, 32, network_kwargs=TINY_NET)
        seg_eval.train_segmenter(model, pool, iterations=3, batch_size=4, seed=0, patch_mix=mix)
        states.append(model.state_dict())
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])  # alpha = 1: only real patches
    assert any(not torch.equal(states[0][k], states[2][k]) for k in states[0])  # alpha = 0: only synthetic ones
    with pytest.raises(InputError, match="synthetic versions of every pair; '.*' has none"):
        seg_eval.train_segmenter(model, pairs, iterations=1, patch_mix={"alpha": 0.5})


@pytest.mark.parametrize("augment", ["RandomRotate", True])
def test_augmentation_moves_the_versions_with_the_real_image(data, augment):
    pairs = load_dataset(data["real"], split="train", image_size=32)
    same = [{**p, "synthetic": np.stack([p["image"]] * 2)} for p in pairs]
    dataset = seg_eval._training_dataset(same, augment, seed=0, with_versions=True)
    moved = 0
    for i, pair in enumerate(same):
        item = dataset[i]
        assert item["synthetic"].shape == (2, 1, 32, 32) and item["synthetic"].dtype == torch.float32
        assert torch.allclose(item["synthetic"], item["image"].expand(2, -1, -1, -1), atol=1e-5)
        moved += not np.allclose(item["image"].numpy(), pair["image"])
    assert moved > 0  # the augmentation did act on some pairs
    torch.manual_seed(0)
    model = seg_eval.build_segmenter("unet", 2, 32, network_kwargs=TINY_NET)
    mix = {"alpha": 0.5}
    history = seg_eval.train_segmenter(model, same, iterations=2, batch_size=4, augment=augment, patch_mix=mix)
    assert np.isfinite(history["final_loss"])


def test_a_diffboost_condition_runs_in_the_workflow_and_is_described(data, tmp_path):
    train = load_dataset(data["real"], split="train", image_size=32)
    folder = write_versions(tmp_path / "versions", train)
    out = tmp_path / "out"
    mix = {"folder": str(folder), "alpha": 0.5, "patch_size": 8, "mode": "logits"}
    results = seg_eval.run_segmentation_evaluation(
        real={"dataset_dir": data["real"]},
        conditions={
            "real": {},
            "diffboost": {"patch_mix": mix},
            "diffboost+mirror": {"patch_mix": mix, "augment": "RandomMirror"},
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
        seg_eval.run_segmentation_evaluation(
            real={"dataset_dir": data["real"]},
            conditions={"diffboost": {"patch_mix": {**mix, "folder": str(broken)}}},
            seeds=[0],
            output_dir=tmp_path / "out2",
            **FAST,
        )
    assert not (tmp_path / "out2").exists()
    with pytest.raises(InputError, match="'patch_mix' trains on the real pairs alone"):
        seg_eval.run_segmentation_evaluation(
            real={"dataset_dir": data["real"]},
            conditions={"x": {"patch_mix": mix, "synthetic": [str(folder)]}},
            seeds=[0],
            output_dir=tmp_path / "out3",
            **FAST,
        )
