"""Generated CT as a clinical pipeline reads it (MONAI's LoadImage): trained on a NIfTI volume, inference writes
NIfTI by default, the image in Hounsfield units (the training window inverted), each slice with its source slice's
geometry, and a datalist naming the organs from the source's class map. A small synthetic CT volume stands in for a
scan, so this runs everywhere (the real-scan run is tests/bundles/ct_semantic_synthesis/test_workflows.py)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from monai.transforms import LoadImage

from common.data import load_volume_slices
from tests.bundle_runner import run_bundle
from tests.shared_data import REPO

CONFIGS = REPO / "bundles" / "ct_semantic_synthesis" / "configs"
TINY = REPO / "tests" / "configs" / "ct_semantic_tiny.json"


@pytest.fixture(scope="module")
def scan(tmp_path_factory):
    """A 32 x 32 x 20 'abdomen' in HU: air, a body disc of soft tissue, two organs; 0.9 mm pixels, 2.5 mm slices,
    an oblique-free but offset RAS affine."""
    root = tmp_path_factory.mktemp("scan")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:32, :32]
    body = (yy - 16) ** 2 + (xx - 16) ** 2 < 14**2
    organ_1 = (yy - 12) ** 2 + (xx - 11) ** 2 < 4**2
    organ_2 = (yy - 20) ** 2 + (xx - 21) ** 2 < 3**2
    image = np.where(body, 40.0, -1000.0)[..., None].repeat(20, axis=2) + rng.normal(0, 10, (32, 32, 20))
    label = np.zeros((32, 32, 20), np.uint8)
    label[organ_1, :] = 1
    label[organ_2, :] = 2
    image[label == 1] = 120.0
    image[label == 2] = -30.0
    affine = np.diag([0.9, 0.9, 2.5, 1.0])
    affine[:3, 3] = [-14.0, -20.0, 300.0]
    nib.save(nib.Nifti1Image(image.astype(np.float32), affine), root / "ct.nii.gz")
    nib.save(nib.Nifti1Image(label, affine), root / "labels.nii.gz")
    (root / "classmap.json").write_text(json.dumps({"1": "liver", "2": "spleen"}))
    return root


@pytest.fixture(scope="module")
def generated(scan, tmp_path_factory):
    root = tmp_path_factory.mktemp("ct_outputs")
    volume = ("--image_path", str(scan / "ct.nii.gz"), "--label_path", str(scan / "labels.nii.gz"),
              "--num_classes", "3")  # fmt: skip
    models = ("--ckpt_dir", str(root / "models"))
    for config, *extra in [
        ("train.json", "--output_dir", str(root / "train")),
        ("inference.json", "--output_dir", str(root / "gen"), "--class_names_path", str(scan / "classmap.json")),
    ]:
        result = run_bundle([CONFIGS / config, TINY], *volume, *models, *extra)
        assert result.returncode == 0, f"{config}: {result.stderr[-3000:]}"
    return root / "gen"


def test_nifti_in_hounsfield_units_with_the_source_slices_geometry(scan, generated):
    datalist = json.loads((generated / "datalist.json").read_text())
    assert datalist["intensity_window"] == [40, 400]
    assert datalist["labels"] == {"0": "background", "1": "liver", "2": "spleen", "3": "body"}
    items = datalist["training"]
    assert items and all(item["image"].endswith(".nii.gz") and item["label"].endswith(".nii.gz") for item in items)
    sources = load_volume_slices(str(scan / "ct.nii.gz"), str(scan / "labels.nii.gz"), split="test", image_size=32,
                                 num_classes=3, intensity_window=(40, 400))  # fmt: skip
    assert len(sources) == len(items)
    loader = LoadImage(image_only=True)
    for item, source in zip(items, sources):
        image = loader(str(generated / item["image"]))
        label = loader(str(generated / item["label"]))
        assert image.shape == label.shape == (32, 32, 1)
        assert -160.0 - 1e-3 <= float(image.min()) and float(image.max()) <= 240.0 + 1e-3  # HU, clipped to the window
        assert float(image.max()) - float(image.min()) > 20.0  # HU, not [-1, 1]
        np.testing.assert_allclose(image.meta["original_affine"], source["affine"], atol=1e-4)
        written, organs = np.asarray(label)[..., 0], source["label"][0]
        np.testing.assert_array_equal(np.where(written == 3, 0, written), organs)  # the organs, plus the body class
        assert (written == 3).any() and not (organs[written == 3] > 0).any()
