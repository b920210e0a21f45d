"""The shared segmentation evaluation: metric conventions, aggregation, data pools, folds, resume, the bundle run."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
import torch
from PIL import Image

from common.data import load_dataset
from common.errors import InputError
from common.evaluation import conditions, protocol, report, scores, segmenter
from tests.bundle_runner import run_bundle
from tests.evaluation_data import FAST, TINY_NET, write_pairs
from tests.shared_data import REPO

EVALUATE = REPO / "bundles" / "pig" / "configs" / "evaluate.json"
TINY = REPO / "tests" / "configs" / "seg_eval_tiny.json"


pytestmark = pytest.mark.usefixtures("one_thread")


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
    records = scores.pair_metrics(pred, gt)
    assert records[0]["1"]["dice"] == 1.0 and records[0]["1"]["hd95"] == 0.0
    assert all(v is None for k, v in records[1]["1"].items() if k in scores.METRICS)
    assert records[2]["1"]["gt_empty"] and not records[2]["1"]["pred_empty"] and records[2]["1"]["dice"] is None
    missed = records[3]["1"]
    assert (missed["dice"], missed["iou"], missed["precision"], missed["recall"]) == (0.0, 0.0, 0.0, 0.0)
    assert missed["hd95"] is None and missed["assd"] is None

    summary = scores.summarise_images([{"name": str(i), "classes": r} for i, r in enumerate(records)])
    assert summary["dice"] == 0.5 and summary["precision"] == 0.5  # over the two images with a lesion
    assert summary["hd95"] == 0.0 and summary["assd"] == 0.0  # the missed lesion is excluded...
    assert summary["hd95_missed"] == 1  # ...and counted
    assert (summary["empty_gt_images"], summary["empty_gt_pred_empty"]) == (2, 1)
    assert summary["empty_gt_pred_empty_fraction"] == 0.5
    # over all four images: 1 (perfect) + 1 (both empty) + 0 (false positive) + 0 (missed), the other convention
    assert summary["dice_all"] == 0.5 and summary["per_class"]["1"]["dice_all"] == 0.5
    # a segmenter that predicts nothing: distances undefined, not 0
    nothing = scores.summarise_images(
        [{"name": "0", "classes": r} for r in scores.pair_metrics(np.zeros_like(gt[:1]), gt[:1])]
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
    records = scores.pair_metrics(pred, gt, num_classes=3)
    assert records[0]["1"]["dice"] == pytest.approx(0.5) and records[0]["1"]["iou"] == pytest.approx(1 / 3)
    assert records[0]["1"]["hd95"] == pytest.approx(2.0)
    assert records[0]["2"]["dice"] == 1.0
    assert records[1]["2"]["gt_empty"] and records[1]["2"]["dice"] is None
    summary = scores.summarise_images([{"name": str(i), "classes": r} for i, r in enumerate(records)], 3)
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
    agg = report.aggregate(runs)
    assert list(agg) == ["real", "syn", "once"]
    assert agg["real"]["runs"] == 3
    assert agg["real"]["metrics"]["dice"]["mean"] == pytest.approx(0.4)
    assert agg["real"]["metrics"]["dice"]["std"] == pytest.approx(0.2)  # sample std, ddof=1
    syn = agg["syn"]["metrics"]["dice"]
    assert (syn["mean"], syn["std"], syn["n"]) == pytest.approx((0.45, 0.15 * 2**0.5, 2))
    half = 12.7062 * 0.15 * 2**0.5 / 2**0.5  # Student's t(0.975, 1 dof) x std / sqrt(n)
    assert syn["ci95"] == pytest.approx([0.45 - half, 0.45 + half], rel=1e-4)
    assert agg["once"]["metrics"]["dice"] == {"mean": 0.5, "std": None, "n": 1, "ci95": None}
    assert agg["real"]["per_class"]["1"]["dice"]["mean"] == pytest.approx(0.4)
    paired = report.paired_differences(runs, "real", keys=("dice",))
    assert paired["syn"]["dice"]["mean"] == pytest.approx(0.15) and paired["syn"]["dice"]["n"] == 2
    assert paired["syn"]["dice"]["std"] == pytest.approx(np.std([0.1, 0.2], ddof=1))


def test_paired_differences_match_seed_and_training_subset():
    """Two training subsets x two seeds: a run is compared with the baseline of the same seed AND subset."""
    runs = []
    for subset, offset in ((0, 0.0), (1, 0.3)):  # subset 1 is easier for every condition
        for seed in (0, 1):
            base = offset + 0.1 * seed
            runs += [{**run("real", seed, base), "subset": subset}, {**run("syn", seed, base + 0.05), "subset": subset}]
    paired = report.paired_differences(runs, "real", keys=("dice",))["syn"]["dice"]
    assert paired["n"] == 4 and paired["mean"] == pytest.approx(0.05) and paired["std"] == pytest.approx(0, abs=1e-12)
    spread = report.aggregate(runs)["syn"]["metrics"]["dice"]
    assert spread["std"] > 0.1  # the unpaired spread holds the subset and seed variance the pairing removes


def test_go_no_go_uses_the_interval_of_the_paired_difference():
    def runs(deltas):
        out = []
        for seed, delta in enumerate(deltas):
            for name, value in (
                ("real+augment", 0.5 + 0.05 * seed),
                ("real+augment+synthetic", 0.5 + 0.05 * seed + delta),
            ):
                out.append(
                    {"condition": name, "seed": seed, "fold": None, "metrics": {"dice": value, "dice_all": value}}
                )
        return out

    use = report.go_no_go(runs([0.03, 0.04, 0.05]), "real+augment+synthetic", "real+augment", "val")
    assert use["decision"] == "use" and use["sentence"].startswith("Use them") and use["delta"]["ci95"][0] > 0
    worse = report.go_no_go(runs([-0.03, -0.04, -0.05]), "real+augment+synthetic", "real+augment", "val")
    assert worse["decision"] == "do not use"
    unclear = report.go_no_go(runs([0.05, -0.04, 0.01]), "real+augment+synthetic", "real+augment", "test")
    assert unclear["decision"] == "no gain shown" and "--test_split val" in unclear["sentence"]
    assert report.go_no_go(runs([0.05]), "real+augment+synthetic", "real+augment", "val")["decision"] == "undecided"


# --------------------------------------------------------------------------------------------------------------------
# data pools and splits
# --------------------------------------------------------------------------------------------------------------------


def test_merging_real_and_synthetic_gives_expected_counts(data):
    real = load_dataset(data["real"], split="train", image_size=32)
    syn = [conditions.load_synthetic(data[k], 32, 2) for k in ("syn_a", "syn_b")]
    assert [len(real), len(syn[0]), len(syn[1])] == [8, 5, 3]
    merged = conditions.merge_training_pairs(real, syn)
    assert len(merged) == 16 and set(merged[0]) == {"image", "label"}
    assert merged[8]["image"].shape == (1, 32, 32) and set(np.unique(merged[8]["label"])) <= {0, 1}
    assert len(conditions.merge_training_pairs(real, syn, use_real=False)) == 8
    assert len(conditions.merge_training_pairs(real, syn, max_synthetic=2)) == 8 + 2 + 2
    assert len(conditions.merge_training_pairs(real, [])) == 8


def test_synthetic_share_and_unaugmented_synthetic_pairs(data):
    """The levers of a synthetic condition: a fixed synthetic share per batch whatever the pool sizes, and the
    conventional augmentation applied to the real pairs only."""
    from common.training import iteration_loader

    real = load_dataset(data["real"], split="train", image_size=32)
    folder = str(data["syn_a"])
    quarter = conditions.PairsCondition(synthetic=[folder], synthetic_share=0.25, image_size=32)
    setup = quarter.setup(real, None, seed=0)
    assert (setup.real_pairs, setup.synthetic_pairs) == (8, 5) and len(setup.sample_weights) == 13
    loader = iteration_loader(setup.dataset, 4, 500, seed=0, weights=setup.sample_weights)
    drawn = torch.tensor(list(loader.sampler))
    assert (drawn >= 8).float().mean() == pytest.approx(0.25, abs=0.03)  # 5 of 13 in the pool, a quarter drawn
    assert quarter.settings()["synthetic_share"] == 0.25 and "0.25 of each batch synthetic" in quarter.describe()
    assert "synthetic_share" not in conditions.PairsCondition(synthetic=[folder]).settings()  # old run files match

    plain = conditions.PairsCondition(synthetic=[folder], augment=True, augment_synthetic=False, image_size=32)
    dataset = plain.setup(real, None, seed=0).dataset
    synthetic = conditions.load_synthetic(folder, 32, 2)
    for k in range(5):  # the synthetic items come back exactly as loaded
        np.testing.assert_array_equal(np.asarray(dataset[8 + k]["image"]), synthetic[k]["image"])
    assert any(not np.array_equal(np.asarray(dataset[i]["image"]), real[i]["image"]) for i in range(8))
    assert "synthetic pairs not augmented" in plain.describe()
    batch = next(iter(iteration_loader(dataset, 13, 1, seed=0)))  # real and synthetic items collate together
    assert batch["image"].shape == (13, 1, 32, 32)
    with pytest.raises(InputError, match="synthetic_share"):
        conditions.PairsCondition(synthetic=[folder], synthetic_share=1.0)
    with pytest.raises(InputError, match="augment_synthetic"):
        conditions.as_conditions({"x": {"synthetic": [folder], "augment_synthetic": "no"}})


def test_kfold_splits_partition_without_overlap():
    pairs = [{"name": f"p{i}", "source": f"/d/p{i}.png", "slice": None} for i in range(10)]
    splits = protocol.kfold_splits(pairs, 3, seed=0)
    tests = [set(t) for _, t in splits]
    assert len(splits) == 3 and sorted(len(t) for t in tests) == [3, 3, 4]
    assert set().union(*tests) == set(range(10)) and sum(map(len, tests)) == 10  # a partition
    for train, test in splits:
        assert not set(train) & set(test) and set(train) | set(test) == set(range(10))
    assert splits == protocol.kfold_splits(pairs, 3, seed=0) != protocol.kfold_splits(pairs, 3, seed=1)
    # slices of a volume stay together ...
    volumes = [{"name": f"v{v}_s{k}", "source": f"/d/v{v}.nii.gz", "slice": k} for v in range(3) for k in range(4)]
    for _, test in protocol.kfold_splits(volumes, 3):
        assert len({volumes[i]["source"] for i in test}) == 1 and len(test) == 4
    # ... and one volume is cut into contiguous slabs
    one = [{"name": f"s{k}", "source": "/d/ct.nii.gz", "slice": k} for k in range(6)]
    assert [t for _, t in protocol.kfold_splits(one, 3)] == [[0, 1], [2, 3], [4, 5]]
    with pytest.raises(InputError, match="'folds'"):
        protocol.kfold_splits(pairs, 1)


# --------------------------------------------------------------------------------------------------------------------
# segmenter
# --------------------------------------------------------------------------------------------------------------------


def test_network_keys_and_sizes():
    small = {"unet": TINY_NET, "attention_unet": {"channels": (4, 8), "strides": (2,)}, "Swin-UNETR": {}}
    for key, kwargs in small.items():
        size = 64 if key == "Swin-UNETR" else 32
        model = segmenter.build_segmenter(key, 3, size, network_kwargs=kwargs)
        assert model(torch.zeros(2, 1, size, size)).shape == (2, 3, size, size)  # training mode, as in training
    with pytest.raises(InputError, match="'network' must be one of 'unet', 'attention_unet', 'swin_unetr', got 'vnet'"):
        segmenter.build_segmenter("vnet")
    for size in (48, 32):
        with pytest.raises(InputError, match="multiple of 32 and at least 64 for network 'swin_unetr'"):
            segmenter.build_segmenter("swin_unetr", image_size=size)
    with pytest.raises(InputError, match="must be a multiple of 8 for network 'unet'"):
        segmenter.build_segmenter("unet", image_size=60)
    with pytest.raises(InputError, match="'network_kwargs'"):
        segmenter.build_segmenter("unet", network_kwargs={"depth": 3})


def test_training_is_seeded_and_saved_segmenter_predicts_the_same(data, tmp_path):
    pairs = load_dataset(data["real"], split="train", image_size=32)
    states = []
    for _ in range(2):
        torch.manual_seed(0)
        model = segmenter.build_segmenter("unet", 2, 32, network_kwargs=TINY_NET)
        history = segmenter.train_segmenter(model, pairs, iterations=3, batch_size=4, augment=True, seed=0)
        states.append(model.state_dict())
    assert history["final_loss"] > 0
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    segmenter.save_segmenter(model, tmp_path / "seg.pt", "unet", 2, 32, TINY_NET)
    loaded = segmenter.load_segmenter(tmp_path / "seg.pt")
    images = [p["image"] for p in pairs]
    assert np.array_equal(segmenter.predict(model, images), segmenter.predict(loaded, images))
    assert segmenter.predict(model, images).shape == (8, 1, 32, 32)


# --------------------------------------------------------------------------------------------------------------------
# the workflow
# --------------------------------------------------------------------------------------------------------------------


@pytest.fixture
def count_trainings(monkeypatch) -> list[str]:
    calls: list[str] = []
    train = segmenter.train_segmenter

    def counting(model, *args, dataset=None, **kwargs):
        calls.append(len(dataset))
        return train(model, *args, dataset=dataset, **kwargs)

    monkeypatch.setattr(protocol, "train_segmenter", counting)
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
    results = protocol.run_segmentation_evaluation(**kwargs)
    assert count_trainings == [8, 8, 13, 13]
    assert sorted(p.name for p in (out / "runs").iterdir()) == [
        "real+synthetic__seed0.json",
        "real+synthetic__seed1.json",
        "real__seed0.json",
        "real__seed1.json",
    ]
    assert results["aggregate"]["real"]["runs"] == 2 and results["protocol"]["baseline"] == "real"
    assert json.loads((out / "results.json").read_text())["conventions"] == scores.CONVENTIONS
    run = json.loads((out / "runs" / "real__seed1.json").read_text())
    assert run["test_pairs"] == 4 and len(run["per_image"]) == 4 and run["metrics"]["empty_gt_images"] == 1

    # a killed evaluation: one run missing, no summary yet -> exactly that run is trained again
    (out / "runs" / "real+synthetic__seed0.json").unlink()
    (out / "results.json").unlink()
    again = protocol.run_segmentation_evaluation(**kwargs)
    assert count_trainings[4:] == [13]
    assert again["aggregate"] == protocol.run_segmentation_evaluation(**kwargs)["aggregate"]
    assert len(count_trainings) == 5 and (out / "results.json").is_file()
    # changed settings never mix with old runs
    with pytest.raises(InputError, match="'iterations': 2 then, 3 now"):
        protocol.run_segmentation_evaluation(**{**kwargs, "iterations": 3})
    assert len(count_trainings) == 5, "a settings mismatch must be found before anything trains"


def test_bad_synthetic_folder_fails_before_any_training(data, tmp_path, count_trainings):
    (tmp_path / "empty_gen" / "images").mkdir(parents=True)
    (tmp_path / "empty_gen" / "labels").mkdir()
    conditions = {"real": {}, "syn": {"synthetic": [str(tmp_path / "empty_gen")]}}
    with pytest.raises(InputError, match="empty_gen"):
        protocol.run_segmentation_evaluation(
            {"dataset_dir": data["real"]}, conditions, seeds=[0], output_dir=tmp_path / "out", **FAST
        )
    assert count_trainings == [] and not (tmp_path / "out").exists()


def test_kfold_run_with_a_generator_per_fold(data, tmp_path, count_trainings):
    for fold in (0, 1):
        write_pairs(tmp_path / f"gen_{fold}", 2 + fold, seed=10 + fold)
    out = tmp_path / "cv"
    results = protocol.run_segmentation_evaluation(
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
            "condition 'syn': synthetic folder '/nonexistent/gen' does not exist",
        ),
        ({"num_classes": 3}, "has values [255] outside the expected 0..2 (num_classes=3)"),
        ({"num_classes": 3, "real": "indices"}, "'num_classes' is 3 but the masks of"),
        ({"real": {}}, "'dataset_dir' (or 'datalist') must be set"),
        ({"conditions": {"x": {"real": False}}}, "condition 'x': a condition without real pairs needs 'synthetic'"),
        ({"conditions": {"a/b": {}}}, "condition name 'a/b'"),
        (
            {"conditions": {"x": {"augment": "RandomBlur"}}},
            "condition 'x' key 'augment' must be true or false, got 'RandomBlur'",
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
        protocol.run_segmentation_evaluation(**kwargs)
    assert message in str(err.value) and str(err.value).count(". ") == 0
    assert not (tmp_path / "out").exists()


def test_same_pairs_in_train_and_test_is_refused(data, tmp_path):
    """Without splits.json every split is the whole folder: testing on training pairs must not pass silently."""
    with pytest.raises(InputError, match="in both split 'train' and split 'test'"):
        protocol.run_segmentation_evaluation(
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
    assert list(results["aggregate"]) == [
        "real", "real+augment", "real+synthetic", "real+augment+synthetic", "synthetic-only"]  # fmt: skip
    assert [(r["train_pairs_real"], r["train_pairs_synthetic"]) for r in results["runs"]] == [
        (8, 0),
        (8, 0),
        (8, 8),
        (8, 8),
        (0, 8),
    ]
    assert results["protocol"]["iterations"] == 3 and results["protocol"]["image_size"] == 32
    assert len(list((out / "runs").glob("*.json"))) == 5
    table = (out / "results.md").read_text().splitlines()
    assert table[2].startswith("**Decision: undecided.**")  # the go / no-go first: one seed gives no interval
    assert any(line.startswith("| real+synthetic | 1 | ") for line in table)
    assert any("ΔDice lesion vs real [95% CI]" in line and "Dice (all images)" in line for line in table)
    with Image.open(out / "results.png") as png:
        assert png.mode == "RGB" and png.size[0] >= 480

    bad = bundle("--dataset_dir", str(data["real"]), "--network", "vnet", "--output_dir", str(tmp_path / "bad"))
    assert bad.returncode == 2 and "Traceback" not in bad.stderr, bad.stderr[-3000:]
    assert bad.stderr.strip().splitlines()[-1].startswith("error: 'network' must be one of")
    assert not (tmp_path / "bad").exists()
