"""common.data on small files written to tmp and on the shared real datasets (skipped when those are absent).

Geometry is checked against independent reads (PIL, nibabel, pydicom) rather than against the loader itself: a
flipped or transposed mask trains a generator on misaligned pairs without any error, so alignment must be tested.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, UltrasoundImageStorage, generate_uid

from common.data import DataError, build_datalist, load_dataset, load_pairs, subset_indices, synthetic_pairs
from common.errors import InputError
from common.transforms import window_to_unit
from tests.shared_data import DATA, needs

# --------------------------------------------------------------------------------------------------------------------
# writers for tmp fixtures
# --------------------------------------------------------------------------------------------------------------------


def write_png(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    (Image.fromarray(array, mode) if mode else Image.fromarray(array)).save(path)
    return path


def write_nifti(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), str(path))
    return path


def write_dicom(
    path: Path,
    pixels: np.ndarray,
    position=(-100.0, -80.0, 20.0),
    spacing=(0.5, 0.5),
    instance: int = 1,
    intercept: float = -1024.0,
) -> Path:
    """A minimal CT slice: uint16 (rows, cols) stored values, HU = stored + intercept, axial LPS orientation."""
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelSpacing = list(spacing)
    ds.ImagePositionPatient = list(position)
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.InstanceNumber = instance
    ds.RescaleSlope, ds.RescaleIntercept = 1, intercept
    ds.PixelData = np.ascontiguousarray(pixels, dtype=np.uint16).tobytes()
    ds.save_as(str(path), enforce_file_format=True)
    return path


def pattern(rows: int = 40, cols: int = 60) -> tuple[np.ndarray, np.ndarray]:
    """A non-square uint8 image whose bright rectangle is exactly its 0/255 mask: detects transposes and flips."""
    mask = np.zeros((rows, cols), dtype=np.uint8)
    mask[5:12, 30:50] = 255
    image = np.full((rows, cols), 51, dtype=np.uint8)
    image[mask > 0] = 204
    return image, mask


def make_png_dataset(root: Path, names=("case_b", "case_a", "case_c"), mask_folder: str = "masks") -> Path:
    image, mask = pattern()
    for name in names:
        write_png(root / "images" / f"{name}.png", image)
        write_png(root / mask_folder / f"{name}.png", mask)
    return root


def unique_labels(pairs) -> set[int]:
    return set(np.unique(np.concatenate([p["label"].ravel() for p in pairs])).tolist())


def world_centroid(pairs, label_value: int) -> np.ndarray:
    """Mean RAS position (mm) of all voxels with ``label_value`` over loaded slices, via each slice's affine."""
    points = []
    for p in pairs:
        rc = np.argwhere(p["label"][0] == label_value)
        if len(rc):
            homogeneous = np.c_[rc, np.zeros(len(rc)), np.ones(len(rc))]
            points.append((p["affine"] @ homogeneous.T).T[:, :3])
    return np.concatenate(points).mean(axis=0)


# --------------------------------------------------------------------------------------------------------------------
# folder pairs on tmp files
# --------------------------------------------------------------------------------------------------------------------


def test_folder_pairs_png_datalist_and_pixels(tmp_path):
    root = make_png_dataset(tmp_path / "ds")
    (root / "images" / "readme.txt").write_text("ignored")
    (root / "images" / ".DS_Store").write_text("ignored")
    datalist = build_datalist(root)
    assert [d["name"] for d in datalist] == ["case_a", "case_b", "case_c"]
    assert all(os.path.isabs(d["image"]) and os.path.isabs(d["label"]) for d in datalist)
    assert datalist[0]["label"] == str((root / "masks" / "case_a.png").resolve())

    pairs = load_pairs(datalist, image_size=None)
    image, mask = pattern()
    p = pairs[0]
    assert p["image"].shape == (1, 40, 60) and p["image"].dtype == np.float32  # (1, rows, cols): no transpose
    assert p["label"].shape == (1, 40, 60) and p["label"].dtype == np.int64
    assert np.array_equal(p["label"][0], (mask > 0).astype(np.int64))
    np.testing.assert_allclose(p["image"][0], image / 127.5 - 1, atol=1e-6)  # fixed 8-bit map, no min-max
    assert (p["format"], p["slice"], p["affine"]) == ("png", None, None)
    assert p["source"] == datalist[0]["image"] and p["name"] == "case_a"

    resized = load_pairs(datalist[:1], image_size=(20, 30))[0]
    assert resized["image"].shape == (1, 20, 30) and resized["label"].shape == (1, 20, 30)
    assert resized["image"].min() >= -1 and resized["image"].max() <= 1
    assert unique_labels([resized]) == {0, 1}
    assert resized["label"][0, 2:6, 15:25].all() and not resized["label"][0, 10:].any()
    assert load_pairs(datalist[:1], image_size=16)[0]["image"].shape == (1, 16, 16)


def test_folder_pairs_colour_images_become_grey_and_labels_folder_is_a_fallback(tmp_path):
    image, mask = pattern()
    rgb = np.stack([image, image // 2, np.full_like(image, 9)], axis=-1)
    write_png(tmp_path / "images" / "x.png", rgb)
    write_png(tmp_path / "labels" / "x.png", (mask > 0).astype(np.uint8))
    pairs = load_pairs(build_datalist(tmp_path), image_size=None)
    expected = np.asarray(Image.fromarray(rgb).convert("L")) / 127.5 - 1
    assert pairs[0]["image"].shape == (1, 40, 60)
    np.testing.assert_allclose(pairs[0]["image"][0], expected, atol=1e-6)
    assert unique_labels(pairs) == {0, 1}


def test_splits_json_is_honoured(tmp_path):
    root = make_png_dataset(tmp_path, names=("a", "b", "c", "d"))
    (root / "splits.json").write_text(json.dumps({"train": ["a.png", "c.png"], "val": ["b.png"], "test": ["d.png"]}))
    assert [d["name"] for d in build_datalist(root, "train")] == ["a", "c"]
    assert [d["name"] for d in build_datalist(root, "val")] == ["b"]
    assert [d["name"] for d in build_datalist(root, None)] == ["a", "b", "c", "d"]
    assert [d["name"] for d in build_datalist(tmp_path, split="test")] == ["d"]


def test_nifti_2d_folder_pairs(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.normal(300, 40, size=(20, 30)).astype(np.float32)
    mask = np.zeros((20, 30), np.uint8)
    mask[2:8, 10:25] = 1
    affine = np.diag([0.8, 0.8, 2.0, 1.0])
    affine[:3, 3] = [10, 20, 30]
    write_nifti(tmp_path / "images" / "flat.nii.gz", image, affine)
    write_nifti(tmp_path / "masks" / "flat.nii.gz", mask, affine)
    write_nifti(tmp_path / "images" / "thin.nii", image[..., None], affine)  # (X, Y, 1) is 2D too
    write_nifti(tmp_path / "masks" / "thin.nii.gz", mask[..., None] * 255, affine)
    pairs = load_pairs(build_datalist(tmp_path), image_size=None)
    assert [p["name"] for p in pairs] == ["flat", "thin"]
    for p in pairs:
        assert p["format"] == "nifti" and p["slice"] is None
        assert p["image"].shape == (1, 20, 30)
        assert p["image"].min() == pytest.approx(-1) and p["image"].max() == pytest.approx(1)  # percentile map
        assert np.array_equal(p["label"][0], mask.astype(np.int64))
        np.testing.assert_allclose(p["affine"], affine)
    small = load_pairs(build_datalist(tmp_path)[:1], image_size=(10, 15))[0]
    np.testing.assert_allclose(np.diag(small["affine"])[:3], [1.6, 1.6, 2.0])  # affine follows the resize


def test_nifti_volume_is_reoriented_to_ras_and_label_stays_aligned(tmp_path):
    """Image stored LAS, its label stored RAS (flipped data, flipped affine): same world geometry, must align."""
    rng = np.random.default_rng(1)
    volume = rng.integers(0, 1000, size=(8, 9, 5)).astype(np.int16)
    label = (volume > 600).astype(np.uint8)
    las = np.diag([-2.0, 2.0, 3.0, 1.0])
    las[:3, 3] = [14.0, -5.0, 7.0]
    ras = las @ np.array([[-1, 0, 0, 7], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])  # x index flipped
    write_nifti(tmp_path / "images" / "vol.nii.gz", volume, las)
    write_nifti(tmp_path / "masks" / "vol.nii.gz", label[::-1].copy(), ras)
    pairs = load_pairs(build_datalist(tmp_path), image_size=None)
    assert [p["name"] for p in pairs] == [f"vol_s{k:03d}" for k in range(5)]
    assert [p["slice"] for p in pairs] == list(range(5))
    for k, p in enumerate(pairs):
        assert p["image"].shape == (1, 8, 9)
        ras_slice = volume[::-1, :, k]  # LAS -> RAS flips x
        assert np.array_equal(p["label"][0], (ras_slice > 600).astype(np.int64))
        assert np.array_equal(
            np.argsort(p["image"][0], axis=None, kind="stable"),
            np.argsort(ras_slice.astype(np.float32), axis=None, kind="stable"),
        )
        np.testing.assert_allclose(p["affine"][:3, 3], [0.0, -5.0, 7.0 + 3 * k])
        np.testing.assert_allclose(np.diag(p["affine"])[:3], [2.0, 2.0, 3.0])
    # sagittal slicing: slices along x, arrays (y, z)
    sagittal = load_pairs(build_datalist(tmp_path), image_size=None, slice_axis=0)
    assert len(sagittal) == 8 and sagittal[0]["image"].shape == (1, 9, 5)
    assert np.array_equal(sagittal[2]["label"][0], (volume[::-1][2] > 600).astype(np.int64))


def test_single_file_dicom_folder_pairs_keep_display_order(tmp_path):
    image, mask = pattern()
    stored = image.astype(np.uint16) * 4 + 1000  # HU = stored - 1024
    write_dicom(tmp_path / "images" / "slice1.dcm", stored)
    write_png(tmp_path / "masks" / "slice1.png", mask)
    pairs = load_pairs(build_datalist(tmp_path), image_size=None, intensity_window=(40, 400))
    p = pairs[0]
    assert p["format"] == "dicom" and p["slice"] is None and p["affine"].shape == (4, 4)
    assert p["image"].shape == (1, 40, 60)  # (rows, cols), aligned with the PNG mask drawn on the displayed image
    hu = stored.astype(np.float32) - 1024
    np.testing.assert_allclose(p["image"][0], window_to_unit(hu, 40, 400), atol=1e-5)
    assert np.array_equal(p["label"][0], (mask > 0).astype(np.int64))
    # without a window: 16-bit data gets the percentile map
    plain = load_pairs(build_datalist(tmp_path), image_size=None)[0]
    assert plain["image"].min() == pytest.approx(-1) and plain["image"].max() == pytest.approx(1)


def test_colour_ultrasound_dicom_becomes_grey(tmp_path):
    rgb = np.random.default_rng(3).integers(0, 256, size=(30, 50, 3)).astype(np.uint8)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UltrasoundImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = UltrasoundImageStorage, meta.MediaStorageSOPInstanceUID, "US"
    ds.Rows, ds.Columns = 30, 50
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = rgb.tobytes()
    (tmp_path / "images").mkdir()
    ds.save_as(str(tmp_path / "images" / "us.dcm"), enforce_file_format=True)
    write_png(tmp_path / "masks" / "us.png", pattern(30, 50)[1])
    with pytest.warns(UserWarning, match="ImageOrientationPatient"):  # MONAI's notice: no geometry in the file
        p = load_pairs(build_datalist(tmp_path), image_size=None)[0]
    expected = np.asarray(Image.fromarray(rgb).convert("L")) / 127.5 - 1  # uint8 colour -> 8-bit luma, fixed map
    np.testing.assert_allclose(p["image"][0], expected, atol=1e-6)
    assert p["format"] == "dicom" and p["affine"] is None


def test_dicom_series_folder_pairs_with_nifti_label(tmp_path):
    """images/case/ holds a 4-slice series (descending z by instance number); the label NIfTI is written from the
    DICOM geometry by hand (LPS -> RAS), so the loader's series handling is checked independently."""
    rows, cols, n = 12, 16, 4
    spacing, dz, origin = 0.5, 2.5, np.array([-100.0, -80.0, 20.0])
    rng = np.random.default_rng(2)
    stored = rng.integers(900, 1300, size=(n, rows, cols)).astype(np.uint16)
    for k in range(n):  # instance 1 is the highest slice, as in the shared series
        z = origin[2] - k * dz
        write_dicom(tmp_path / "images" / "case" / f"im{k}.dcm", stored[k], (origin[0], origin[1], z), instance=k + 1)
    hu = stored.astype(np.float32) - 1024  # (k, row, col)
    label_lps = (hu > 100).astype(np.uint8)  # voxel (k, r, c)
    # RAS voxel grid: i = col (x_ras = -(x0 + c*s)), j = row, slice index = z ascending
    affine = np.diag([-spacing, -spacing, dz, 1.0])
    affine[:3, 3] = [-origin[0], -origin[1], origin[2] - (n - 1) * dz]
    # array index (i, j, m) with i = col, j = row, m = ascending z -> k = n - 1 - m
    label_xyz = np.transpose(label_lps[::-1], (2, 1, 0))
    write_nifti(tmp_path / "masks" / "case.nii.gz", label_xyz.copy(), affine)
    pairs = load_pairs(build_datalist(tmp_path), image_size=None, intensity_window=(100, 400))
    assert [p["name"] for p in pairs] == [f"case_s{m:03d}" for m in range(n)]
    for m, p in enumerate(pairs):
        k = n - 1 - m
        assert p["format"] == "dicom"
        assert p["affine"][2, 3] == pytest.approx(origin[2] - k * dz)  # ascending z after RAS
        # RAS in-plane: x_ras grows to the patient's right = decreasing column; y_ras anterior = decreasing row
        expected_hu = hu[k][::-1, ::-1].T
        np.testing.assert_allclose(p["image"][0], window_to_unit(expected_hu, 100, 400), atol=1e-5)
        assert np.array_equal(p["label"][0], (expected_hu > 100).astype(np.int64))


# --------------------------------------------------------------------------------------------------------------------
# decathlon JSON
# --------------------------------------------------------------------------------------------------------------------


def test_decathlon_json_relative_paths_and_split_keys(tmp_path):
    make_png_dataset(tmp_path / "data", names=("p1", "p2", "p3"))
    spec = {
        "training": [
            {"image": "data/images/p2.png", "label": "data/masks/p2.png"},
            {"image": "data/images/p1.png", "label": "data/masks/p1.png"},
        ],
        "validation": [{"image": "data/images/p3.png", "label": "data/masks/p3.png"}],
        "test": ["data/images/p3.png"],
    }
    (tmp_path / "dataset.json").write_text(json.dumps(spec))
    train = build_datalist(tmp_path, "train")
    assert [d["name"] for d in train] == ["p1", "p2"]
    assert train[0]["image"] == str((tmp_path / "data" / "images" / "p1.png").resolve())
    assert [d["name"] for d in build_datalist(tmp_path, "val")] == ["p3"]
    assert [d["name"] for d in build_datalist(tmp_path, None)] == ["p1", "p2", "p3"]
    # explicit datalist argument, also relative to dataset_dir, and without dataset_dir
    (tmp_path / "other.json").write_text(json.dumps({"training": spec["validation"]}))
    assert [d["name"] for d in build_datalist(tmp_path, "train", datalist="other.json")] == ["p3"]
    assert [d["name"] for d in build_datalist(None, "train", datalist=str(tmp_path / "other.json"))] == ["p3"]
    pairs = load_dataset(None, "train", image_size=32, datalist=str(tmp_path / "dataset.json"))
    assert len(pairs) == 2 and pairs[0]["image"].shape == (1, 32, 32)


# --------------------------------------------------------------------------------------------------------------------
# DataError cases: one sentence naming the path or key
# --------------------------------------------------------------------------------------------------------------------


def assert_data_error(func, *fragments: str, **kwargs) -> DataError:
    with pytest.raises(DataError) as info:
        func(**kwargs)
    message = str(info.value)
    for fragment in fragments:
        assert str(fragment) in message, f"{fragment!r} not in {message!r}"
    assert "\n" not in message and message.endswith(".")
    assert isinstance(info.value, InputError) and isinstance(info.value, ValueError)
    return info.value


def test_errors_for_dataset_dir(tmp_path):
    missing = tmp_path / "nope"
    assert_data_error(lambda: build_datalist(missing), f"dataset_dir '{missing}'", "does not exist")
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    assert_data_error(lambda: build_datalist(a_file), str(a_file), "not a folder")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_data_error(lambda: build_datalist(empty), str(empty), "is empty")
    (empty / "notes.txt").write_text("x")
    assert_data_error(lambda: build_datalist(empty), str(empty), "no images/ folder")
    no_images = tmp_path / "no_images"
    (no_images / "images").mkdir(parents=True)
    (no_images / "masks").mkdir()
    (no_images / "images" / "readme.txt").write_text("x")
    assert_data_error(lambda: build_datalist(no_images), str(no_images / "images"), "no images")
    no_masks = tmp_path / "no_masks"
    write_png(no_masks / "images" / "a.png", np.zeros((4, 4), np.uint8))
    assert_data_error(lambda: build_datalist(no_masks), str(no_masks), "neither masks/ nor labels/")
    assert_data_error(lambda: build_datalist(None), "dataset_dir is not set")


def test_error_image_without_mask(tmp_path):
    root = make_png_dataset(tmp_path / "busi", names=("a", "b"))
    write_png(root / "images" / "lonely.png", np.zeros((4, 4), np.uint8))
    err = assert_data_error(lambda: build_datalist(root), "image 'lonely.png' without a mask", str(root / "masks"))
    assert str(err) == f"dataset_dir '{root}' has an image 'lonely.png' without a mask in '{root / 'masks'}'."


def test_error_duplicate_stems(tmp_path):
    root = make_png_dataset(tmp_path, names=("a",))
    write_png(root / "images" / "a.jpg", np.zeros((4, 4), np.uint8))
    assert_data_error(lambda: build_datalist(root), "'a'", "a.jpg", "a.png")


def test_errors_for_splits(tmp_path):
    root = make_png_dataset(tmp_path / "ds", names=("a", "b"))
    assert_data_error(lambda: build_datalist(root, "trian"), "split 'trian'", str(root))
    splits = root / "splits.json"
    splits.write_text(json.dumps({"train": ["a.png", "ghost.png"], "val": ["b.png"], "test": []}))
    assert_data_error(lambda: build_datalist(root, "train"), str(splits), "'ghost.png'", "split 'train'")
    assert_data_error(lambda: build_datalist(root, "holdout"), "split 'holdout'", str(splits), "'val'")
    assert_data_error(lambda: build_datalist(root, "test"), "split 'test'", "is empty")
    splits.write_text("{not json")
    assert_data_error(lambda: build_datalist(root, "train"), str(splits), "JSON")
    splits.write_text(json.dumps(["a.png"]))
    assert_data_error(lambda: build_datalist(root, "train"), str(splits), "lists of image file names")


def test_errors_for_decathlon_json(tmp_path):
    make_png_dataset(tmp_path / "data", names=("p1",))
    path = tmp_path / "dataset.json"
    path.write_text(json.dumps({"training": [{"image": "data/images/p1.png", "label": "data/masks/p1.png"}]}))
    assert_data_error(lambda: build_datalist(tmp_path, "val"), str(path), "'validation'", "'training'", "split 'val'")
    assert_data_error(lambda: build_datalist(tmp_path, "fold3"), "split 'fold3'", str(path))
    assert_data_error(lambda: build_datalist(tmp_path, datalist="missing.json"), "datalist 'missing.json'")
    path.write_text(json.dumps({"training": [{"image": "data/images/p1.png"}]}))
    assert_data_error(lambda: build_datalist(tmp_path), str(path), "item 0 of 'training'", "'label'")
    path.write_text(json.dumps({"training": [{"image": "data/images/gone.png", "label": "data/masks/p1.png"}]}))
    assert_data_error(lambda: build_datalist(tmp_path), str(path), str(tmp_path / "data" / "images" / "gone.png"))
    path.write_text("[1, 2")
    assert_data_error(lambda: build_datalist(tmp_path), str(path), "JSON")


def test_errors_for_unreadable_files(tmp_path):
    image, mask = pattern()
    good_mask = write_png(tmp_path / "m.png", mask)
    for name in ("broken.png", "broken.nii.gz", "broken.dcm"):
        bad = tmp_path / name
        bad.write_bytes(b"this is not an image at all" * 10)
        assert_data_error(
            lambda: load_pairs([{"image": str(bad), "label": str(good_mask)}]), f"image '{bad}'", "could not be read"
        )
    good = write_png(tmp_path / "i.png", image)
    bad_mask = tmp_path / "bad_mask.png"
    bad_mask.write_bytes(b"\x89PNG truncated")
    assert_data_error(lambda: load_pairs([{"image": str(good), "label": str(bad_mask)}]), f"mask '{bad_mask}'")
    gone = tmp_path / "gone.png"
    assert_data_error(lambda: load_pairs([{"image": str(gone), "label": str(good_mask)}]), str(gone), "does not exist")
    assert_data_error(lambda: load_pairs([{"image": str(good)}]), "item 0", "'label'")


def test_errors_for_bad_contents(tmp_path):
    image, mask = pattern()
    img = write_png(tmp_path / "i.png", image)
    small_mask = write_png(tmp_path / "small.png", mask[:20])
    assert_data_error(
        lambda: load_pairs([{"image": str(img), "label": str(small_mask)}]),
        str(img),
        str(small_mask),
        "(40, 60)",
        "(20, 60)",
    )

    nan_image = image.astype(np.float32)
    nan_image[3, 3] = np.nan
    nan_path = write_nifti(tmp_path / "nan.nii.gz", nan_image)
    nifti_mask = write_nifti(tmp_path / "nm.nii.gz", (mask > 0).astype(np.uint8))
    assert_data_error(lambda: load_pairs([{"image": str(nan_path), "label": str(nifti_mask)}]), str(nan_path), "NaN")

    three = write_png(tmp_path / "three.png", (mask > 0).astype(np.uint8) * 2)
    err = assert_data_error(
        lambda: load_pairs([{"image": str(img), "label": str(three)}]),
        f"mask '{three}'",
        "[0, 2]",
        "{0, 1} or {0, 255}",
    )
    assert "num_classes=2" in str(err)
    mixed = mask.copy()
    mixed[0, 0] = 1
    mixed_path = write_png(tmp_path / "mixed.png", mixed)
    assert_data_error(lambda: load_pairs([{"image": str(img), "label": str(mixed_path)}]), "[0, 1, 255]")
    multi = mask.copy() // 255 * 5
    multi_path = write_png(tmp_path / "multi.png", multi)
    assert_data_error(
        lambda: load_pairs([{"image": str(img), "label": str(multi_path)}], num_classes=4),
        f"mask '{multi_path}'",
        "[5]",
        "0..3",
        "num_classes=4",
    )
    fractional = write_nifti(tmp_path / "frac.nii.gz", (mask > 0).astype(np.float32) * 0.5)
    image_nifti = write_nifti(tmp_path / "img.nii.gz", image.astype(np.float32))
    assert_data_error(
        lambda: load_pairs([{"image": str(image_nifti), "label": str(fractional)}]), str(fractional), "non-integer"
    )

    rgb_mask = write_png(tmp_path / "rgb_mask.png", np.stack([mask] * 3, axis=-1))
    assert_data_error(
        lambda: load_pairs([{"image": str(img), "label": str(rgb_mask)}]), f"mask '{rgb_mask}'", "3 channels"
    )


def test_errors_for_misaligned_volumes(tmp_path):
    volume = np.arange(6 * 7 * 4, dtype=np.int16).reshape(6, 7, 4)
    write_nifti(tmp_path / "images" / "v.nii.gz", volume, np.diag([2.0, 2.0, 3.0, 1.0]))
    shifted = np.diag([2.0, 2.0, 3.0, 1.0])
    shifted[2, 3] = 30.0  # label placed 10 slices higher: same shape, wrong place
    write_nifti(tmp_path / "masks" / "v.nii.gz", np.zeros((6, 7, 4), np.uint8), shifted)
    assert_data_error(
        lambda: load_pairs(build_datalist(tmp_path)),
        str(tmp_path / "images" / "v.nii.gz"),
        str(tmp_path / "masks" / "v.nii.gz"),
        "not aligned",
    )


def test_errors_for_settings(tmp_path):
    root = make_png_dataset(tmp_path)
    datalist = build_datalist(root)
    assert_data_error(lambda: load_pairs(datalist, num_classes=1), "num_classes")
    assert_data_error(lambda: load_pairs(datalist, image_size=0), "image_size")
    assert_data_error(lambda: load_pairs(datalist, image_size=(8, 8, 8)), "image_size")
    assert_data_error(lambda: load_pairs(datalist, slice_axis=3), "slice_axis")
    assert_data_error(lambda: load_pairs(datalist, intensity_window=(40, 0)), "intensity_window")
    assert_data_error(lambda: load_dataset(str(root), max_pairs=0), "max_pairs")
    assert_data_error(lambda: load_dataset(None, num_synthetic=0), "num_synthetic")
    assert_data_error(lambda: build_datalist(root, mask_dir="segs"), "'segs'", str(root))


# --------------------------------------------------------------------------------------------------------------------
# synthetic default, subsets, load_dataset
# --------------------------------------------------------------------------------------------------------------------


def test_synthetic_pairs_are_deterministic_and_well_formed():
    first, again, other = synthetic_pairs(6, 64, seed=3), synthetic_pairs(6, 64, seed=3), synthetic_pairs(6, 64, 4)
    for a, b in zip(first, again):
        assert np.array_equal(a["image"], b["image"]) and np.array_equal(a["label"], b["label"])
    assert not np.array_equal(first[0]["image"], other[0]["image"])
    for p in first:
        assert p["image"].shape == (1, 64, 64) and p["image"].dtype == np.float32
        assert p["label"].shape == (1, 64, 64) and p["label"].dtype == np.int64
        assert p["image"].min() >= -1 and p["image"].max() <= 1
        levels = (p["image"] + 1) * 127.5
        np.testing.assert_allclose(levels, np.rint(levels), atol=1e-3)  # 8-bit grid, like a PNG
        assert set(np.unique(p["label"]).tolist()) == {0, 1}
        assert 0.01 < p["label"].mean() < 0.6
        assert p["image"][p["label"] == 1].mean() > p["image"][p["label"] == 0].mean() + 0.3  # discs are visible
        assert (p["format"], p["source"], p["slice"], p["affine"]) == ("png", "synthetic", None, None)
    assert len({p["name"] for p in first}) == 6
    for size in (32, 48, 128, (40, 56)):
        pairs = synthetic_pairs(2, size, seed=0)
        expected = (size, size) if isinstance(size, int) else size
        assert pairs[0]["image"].shape == (1, *expected) and pairs[0]["label"].any()


def test_subset_indices_are_seeded_sorted_and_nested():
    assert subset_indices(10, None) == list(range(10)) == subset_indices(10, 50)
    five = subset_indices(100, 5, seed=7)
    assert five == subset_indices(100, 5, seed=7) and five == sorted(five) and len(set(five)) == 5
    assert five != subset_indices(100, 5, seed=8)
    assert set(five) <= set(subset_indices(100, 20, seed=7))


def test_load_dataset_synthetic_default_and_max_pairs(caplog):
    for unset in (None, "", "None"):
        pairs = load_dataset(unset, num_synthetic=12, image_size=32, seed=1)
        assert len(pairs) == 12 and pairs[0]["source"] == "synthetic"
    with caplog.at_level(logging.INFO, logger="common.data"):
        subset = load_dataset(None, num_synthetic=12, image_size=32, max_pairs=4, seed=1)

    def names(seed: int) -> list[str]:
        return [p["name"] for p in load_dataset(None, num_synthetic=12, image_size=32, max_pairs=4, seed=seed)]

    assert [p["name"] for p in subset] == names(1)
    assert [p["name"] for p in subset] != names(2)
    assert len(subset) == 4
    assert any("Loaded 4 pairs" in r.getMessage() and "synthetic" in r.getMessage() for r in caplog.records)


def test_load_dataset_max_pairs_on_files_matches_pair_level_subset(tmp_path):
    root = make_png_dataset(tmp_path, names=tuple(f"c{i:02d}" for i in range(15)))
    everything = load_dataset(str(root), split=None, image_size=16)
    subset = load_dataset(str(root), split=None, image_size=16, max_pairs=6, seed=5)
    expected = [everything[i]["name"] for i in subset_indices(len(everything), 6, seed=5)]
    assert [p["name"] for p in subset] == expected


# --------------------------------------------------------------------------------------------------------------------
# shared real data
# --------------------------------------------------------------------------------------------------------------------


@needs("busi")
def test_busi_splits_and_values():
    root = DATA / "busi"
    sizes = {split: len(build_datalist(root, split)) for split in ("train", "val", "test")}
    assert sizes == {"train": 546, "val": 78, "test": 156}
    names = [{d["name"] for d in build_datalist(root, split)} for split in ("train", "val", "test")]
    assert not (names[0] & names[1] or names[0] & names[2] or names[1] & names[2])
    assert len(build_datalist(root, None)) == 780

    pairs = load_dataset(root, "train", image_size=64, max_pairs=12, seed=0)
    assert len(pairs) == 12
    for p in pairs:
        assert p["image"].shape == (1, 64, 64) and -1 <= p["image"].min() and p["image"].max() <= 1
        assert set(np.unique(p["label"]).tolist()) <= {0, 1}
    assert unique_labels(pairs) == {0, 1}
    normal = [d for d in build_datalist(root, "val") if d["name"].startswith("normal")][:3]
    assert normal and all(not p["label"].any() for p in load_pairs(normal, image_size=64))
    lesion = [d for d in build_datalist(root, "val") if d["name"].startswith("malignant")][:2]
    assert all(p["label"].any() for p in load_pairs(lesion, image_size=64))


@needs("cxr_lungs")
def test_cxr_lungs_binary_masks_and_four_class_labels():
    root = DATA / "cxr_lungs"
    binary = load_dataset(root, "val", image_size=64, num_classes=2)
    assert len(binary) == 10 and unique_labels(binary) == {0, 1}
    assert all(Path(d["label"]).parent.name == "masks" for d in build_datalist(root, "val"))
    labels = build_datalist(root, "val", mask_dir="labels")
    assert all(Path(d["label"]).parent.name == "labels" for d in labels)
    four = load_dataset(root, "val", image_size=64, num_classes=4)  # labels/ picked automatically for 4 classes
    assert unique_labels(four) == {0, 1, 2, 3}
    raw = np.asarray(Image.open(labels[0]["label"]))
    kept = load_pairs(labels[:1], image_size=None, num_classes=4)[0]
    assert np.array_equal(kept["label"][0], raw.astype(np.int64))  # no remapping, no transpose
    assert_data_error(
        lambda: load_pairs(build_datalist(root, "val")[:1], num_classes=4), "mask '", "masks", "[255]", "0..3"
    )


@needs("ct_abdomen", "ct.nii.gz")
def test_ct_nifti_volume_via_decathlon_json(tmp_path):
    ct_dir = DATA / "ct_abdomen"
    spec = {"training": [{"image": str(ct_dir / "ct.nii.gz"), "label": str(ct_dir / "labels.nii.gz")}]}
    (tmp_path / "dataset.json").write_text(json.dumps(spec))
    pairs = load_dataset(tmp_path, "train", image_size=None, num_classes=14, intensity_window=(40, 400))
    assert len(pairs) == 112
    assert [p["name"] for p in pairs[:2]] == ["ct_s000", "ct_s001"] and pairs[5]["slice"] == 5
    assert all(p["image"].shape == (1, 122, 101) and p["format"] == "nifti" for p in pairs)

    raw_ct = nib.load(str(ct_dir / "ct.nii.gz"))
    raw_labels = np.asarray(nib.load(str(ct_dir / "labels.nii.gz")).dataobj)
    assert nib.aff2axcodes(raw_ct.affine) == ("R", "A", "S")  # stored RAS: the loader must not move anything
    assert unique_labels(pairs) == set(np.unique(raw_labels).tolist())
    assert max(unique_labels(pairs)) == 13
    for k in (0, 40, 80):
        assert np.array_equal(pairs[k]["label"][0], raw_labels[:, :, k].astype(np.int64))
        hu = np.asarray(raw_ct.dataobj)[:, :, k]
        np.testing.assert_allclose(pairs[k]["image"][0], window_to_unit(hu, 40, 400), atol=1e-5)
        np.testing.assert_allclose(pairs[k]["affine"][:3, 3], raw_ct.affine[:3, 3] + [0, 0, 3.0 * k])

    # anatomy: non-contrast liver is soft tissue; liver and right kidney lie on the patient's right (+x in RAS)
    hu_est = np.concatenate([(p["image"][p["label"] == 6] * 200 + 40) for p in pairs])
    assert 20 < hu_est.mean() < 90
    assert world_centroid(pairs, 6)[0] > world_centroid(pairs, 1)[0] + 100  # liver right of spleen
    assert world_centroid(pairs, 2)[0] > world_centroid(pairs, 3)[0] + 100  # right kidney right of left kidney

    resized = load_pairs(
        build_datalist(tmp_path), image_size=64, num_classes=14, intensity_window=(40, 400), skip_empty_slices=True
    )
    assert 0 < len(resized) < 112 and all(p["label"].any() for p in resized)
    assert resized[0]["image"].shape == (1, 64, 64) and unique_labels(resized) <= set(range(14))


@needs("ct_abdomen", "dicom")
def test_ct_dicom_series_is_geometrically_aligned_with_its_label(tmp_path):
    ct_dir = DATA / "ct_abdomen"
    spec = {"training": [{"image": str(ct_dir / "dicom"), "label": str(ct_dir / "dicom_labels.nii.gz")}]}
    (tmp_path / "datalist.json").write_text(json.dumps(spec))
    pairs = load_dataset(tmp_path, "train", image_size=None, num_classes=14, intensity_window=(40, 400))
    assert len(pairs) == 20 and all(p["image"].shape == (1, 512, 512) for p in pairs)
    assert all(p["format"] == "dicom" for p in pairs) and pairs[0]["name"] == "dicom_s000"
    raw_labels = nib.load(str(ct_dir / "dicom_labels.nii.gz"))
    assert nib.aff2axcodes(raw_labels.affine) == ("L", "A", "S")  # label file is LAS, the series is LPS
    assert unique_labels(pairs) == set(np.unique(np.asarray(raw_labels.dataobj)).tolist())

    # 1) image geometry against pydicom directly: slice m sits at the file whose z matches the slice's affine, and
    #    RAS (x right, y anterior) is the displayed DICOM (rows posterior, cols left) flipped twice and transposed.
    by_z = {}
    for path in (ct_dir / "dicom").iterdir():
        ds = pydicom.dcmread(str(path))
        by_z[round(float(ds.ImagePositionPatient[2]), 2)] = ds
    for m in (0, 7, 19):
        ds = by_z[round(float(pairs[m]["affine"][2, 3]), 2)]
        hu = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        np.testing.assert_allclose(pairs[m]["image"][0], window_to_unit(hu[::-1, ::-1].T, 40, 400), atol=1e-5)
    assert pairs[0]["affine"][2, 3] < pairs[-1]["affine"][2, 3]  # ascending z (instance numbers descend)

    # 2) label geometry against the image content: organs must land on the right tissue
    def mean_hu(label_value: int, flip_axis: int | None = None) -> float:
        values = []
        for p in pairs:
            mask = p["label"][0] == label_value
            if flip_axis is not None:
                mask = np.flip(mask, flip_axis)
            values.append(p["image"][0][mask] * 200 + 40)
        return float(np.concatenate(values).mean())

    liver, aorta, spleen = mean_hu(6), mean_hu(8), mean_hu(1)
    assert 60 < liver < 200 and 60 < spleen < 200  # contrast-enhanced parenchyma
    assert aorta > 120 and aorta > liver + 30  # contrast-filled aorta (mean ~177 HU raw, ~149 after the window clip)
    for axis in (0, 1):  # a left-right or antero-posterior flip would put the liver on other tissue
        assert mean_hu(6, axis) < liver - 40
    assert world_centroid(pairs, 6)[0] > world_centroid(pairs, 1)[0] + 100  # liver on the patient's right


# ------------------------------------------------------------------------------------------- contiguous slabs


def volume_slices(count: int, source: str = "ct.nii.gz") -> list[dict]:
    return [{"name": f"{source}_{k}", "slice": k, "source": source} for k in range(count)]


def test_slab_split_is_contiguous_ordered_and_gapped():
    from common.data import slab_split

    pairs = volume_slices(50)[::-1]  # any input order
    slabs = {s: [p["slice"] for p in slab_split(pairs, s)] for s in ("train", "val", "test")}
    # the fractions apply to the 46 slices the two gaps leave: 32 + 5 (4.6) + 9 (9.2)
    assert slabs["train"] == list(range(0, 32))
    assert slabs["val"] == list(range(34, 39))
    assert slabs["test"] == list(range(41, 50))
    for a, b in (("train", "val"), ("val", "test")):
        assert min(slabs[b]) - max(slabs[a]) == 3  # two slices left out between neighbours
    custom = slab_split(volume_slices(10), "test", {"train": 0.5, "test": 0.5}, gap=0)
    assert [p["slice"] for p in custom] == [5, 6, 7, 8, 9]


def test_slab_split_splits_each_volume_on_its_own():
    from common.data import slab_split

    pairs = volume_slices(20, "a") + volume_slices(10, "b")
    test = slab_split(pairs, "test", gap=0)
    expected = [("a", 16), ("a", 17), ("a", 18), ("a", 19), ("b", 8), ("b", 9)]
    assert [(p["source"], p["slice"]) for p in test] == expected


def test_slab_split_errors_name_the_problem():
    from common.data import slab_split

    with pytest.raises(DataError, match="split 'holdout'"):
        slab_split(volume_slices(10), "holdout")
    with pytest.raises(DataError, match="sum to <= 1"):
        slab_split(volume_slices(10), "train", {"train": 0.8, "test": 0.4})
    with pytest.raises(DataError, match="'img3' is a 2D image"):
        slab_split([{"name": "img3", "slice": None}], "train")
    with pytest.raises(DataError, match="'test' slab is empty"):
        slab_split(volume_slices(4), "test")


@needs("ct_abdomen", "ct.nii.gz")
def test_volume_slabs_of_the_abdominal_ct_do_not_overlap():
    from common.data import load_volume_slices

    ct = DATA / "ct_abdomen"
    kwargs = {"image_size": 32, "num_classes": 14, "intensity_window": (40, 400)}
    slabs = {s: load_volume_slices(ct / "ct.nii.gz", ct / "labels.nii.gz", s, **kwargs) for s in ("train", "test")}
    train, test = ({p["slice"] for p in slabs[s]} for s in ("train", "test"))
    assert len(train) > 3 * len(test) > 0 and max(train) + 2 < min(test)
    every = load_volume_slices(ct / "ct.nii.gz", ct / "labels.nii.gz", "all", **kwargs)
    assert len(every) > len(train) + len(test)
    assert all(p["image"].shape == (1, 32, 32) and -1 <= p["image"].min() <= p["image"].max() <= 1 for p in every)
    with pytest.raises(DataError, match="'label_path'.*missing.nii.gz"):
        load_volume_slices(ct / "ct.nii.gz", ct / "missing.nii.gz", "train", **kwargs)
