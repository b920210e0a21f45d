"""MONAI Label reads what the bundles write, checked with the real ``monailabel`` package (requirements-monailabel.txt,
installed without its server dependencies): its ``LocalDatastore`` over a folder of generated pairs lists every pair
as labelled with the class names, and ``apps/monailabel/synthetic_pairs.py`` adds synthetic pairs to an annotated
datastore whose own images stay as they were."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
from PIL import Image

from tests.bundle_runner import run_bundle
from tests.shared_data import REPO

EXTRA = "monailabel is a test extra: pip install --no-deps -r requirements-monailabel.txt"
LocalDatastore = pytest.importorskip("monailabel.datastore.local", reason=EXTRA).LocalDatastore

PIG = REPO / "bundles" / "pig"
TINY = REPO / "tests" / "configs" / "pig_tiny.json"


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("pig_for_monai_label")
    result = run_bundle([PIG / "configs" / "train.json", TINY], "--output_dir", str(root / "train"),
                        "--ckpt_dir", str(root / "models"))  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return root / "models"


def synthetic_pairs_app():
    path = REPO / "apps" / "monailabel" / "synthetic_pairs.py"
    spec = importlib.util.spec_from_file_location("synthetic_pairs", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_local_datastore_lists_every_generated_pair_as_labelled_with_its_class_names(models, tmp_path):
    out = tmp_path / "generated"
    result = run_bundle([PIG / "configs" / "inference.json", TINY], "--ckpt_dir", str(models),
                        "--output_dir", str(out), "--label_names", "{'1': 'lesion'}")  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    datastore = LocalDatastore(str(out), extensions=("*.png",), auto_reload=False)
    ids = [f"pair_{i:06d}" for i in range(5)]
    assert sorted(datastore.list_images()) == ids  # the preview is not an image of the datastore
    assert sorted(datastore.get_labeled_images()) == ids and datastore.get_unlabeled_images() == []
    assert datastore.get_label_info("pair_000003", "final")["label_names"] == {"lesion": 1}
    for item in datastore.datalist():
        assert np.asarray(Image.open(item["label"])).shape == np.asarray(Image.open(item["image"])).shape
    assert json.loads((out / "datalist.json").read_text())["labels"] == {"0": "background", "1": "lesion"}


def test_the_app_adds_synthetic_pairs_to_an_annotated_datastore(models, tmp_path):
    studies = tmp_path / "studies"
    (studies / "labels" / "final").mkdir(parents=True)
    for name in ("case_a", "case_b", "case_c"):  # two annotated images, one waiting for annotation
        Image.fromarray(np.full((32, 32), 90, np.uint8)).save(studies / f"{name}.png")
    for name in ("case_a", "case_b"):
        Image.fromarray(np.zeros((32, 32), np.uint8)).save(studies / "labels" / "final" / f"{name}.png")
    before = LocalDatastore(str(studies), extensions=("*.png",), auto_reload=False)
    assert sorted(before.get_labeled_images()) == ["case_a", "case_b"]

    app = synthetic_pairs_app()
    code = app.main(["--datastore", str(studies), "--bundle", str(PIG), "--num_pairs", "4",
                     "--ckpt_path", str(models / "model.pt"), "--label_names", '{"1": "lesion"}'])  # fmt: skip
    assert code == 0
    datastore = LocalDatastore(str(studies), extensions=("*.png",), auto_reload=False)
    synthetic = [f"pair_{i:06d}" for i in range(4)]
    assert sorted(datastore.get_labeled_images()) == ["case_a", "case_b", *synthetic]
    assert datastore.get_unlabeled_images() == ["case_c"]
    assert datastore.get_image_info("pair_000001")["synthetic"] is True
    assert "synthetic" not in datastore.get_image_info("case_a")

    from common.data import load_dataset  # a segmenter trained on the datastore starts from real + synthetic pairs

    assert sorted(p["name"] for p in load_dataset(dataset_dir=str(studies), split=None, image_size=32)) == [
        "case_a", "case_b", *synthetic]  # fmt: skip
    assert app.main(["--datastore", str(studies), "--bundle", str(tmp_path), "--num_pairs", "1"]) == 2
