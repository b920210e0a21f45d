"""Output writers: round trips, kill safety (atomic files, resumable pairs), datalists MONAI reads, preview grids."""

from __future__ import annotations

import json
import math
import os

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import load_decathlon_datalist
from PIL import Image

from common import writers
from common.data import load_pairs
from common.errors import InputError, OutputError
from common.writers import PairWriter, atomic_path, atomic_write_bytes, save_preview_grid, write_datalist

H, W = 6, 9  # non-square, so a transposed write would show


def _image(seed: int = 0) -> np.ndarray:
    """Values on the 8-bit grid, so a PNG round trip is exact."""
    return np.random.RandomState(seed).randint(0, 256, (H, W)).astype(np.float32) / 127.5 - 1.0


def _label(num_classes: int, seed: int = 0) -> np.ndarray:
    label = np.random.RandomState(seed + 1).randint(0, num_classes, (H, W))
    label[0, :num_classes] = np.arange(num_classes)  # every class present
    return label


def _files(folder) -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, f), folder) for d, _, fs in os.walk(folder) for f in fs)


def test_png_binary_round_trip(tmp_path):
    writer = PairWriter(str(tmp_path), "png", num_classes=2)
    image, label = _image(), _label(2)
    out = writer.write(3, torch.from_numpy(image)[None], torch.from_numpy(label)[None])
    assert out == {"image": "pair_000003.png", "label": "labels/final/pair_000003.png"}
    assert writer.paths(3) == (out["image"], out["label"]) and writer.is_complete(3)
    with Image.open(tmp_path / out["image"]) as im:
        assert im.mode == "L" and im.size == (W, H)
        np.testing.assert_array_equal(np.asarray(im), np.rint((image + 1) * 127.5).astype(np.uint8))
    with Image.open(tmp_path / out["label"]) as im:
        on_disk = np.asarray(im)
    assert on_disk.dtype == np.uint8 and set(np.unique(on_disk)) == {0, 255}
    np.testing.assert_array_equal(on_disk, label * 255)
    read_image, read_label = writer.read(3)
    assert read_image.shape == read_label.shape == (1, H, W)
    np.testing.assert_allclose(read_image[0], image, atol=1e-6)
    np.testing.assert_array_equal(read_label[0], label)
    # the project's own loader reads the pair back as written (0/255 -> class 1, x / 127.5 - 1)
    (pair,) = load_pairs([{"image": str(tmp_path / out["image"]), "label": str(tmp_path / out["label"])}], None)
    np.testing.assert_allclose(pair["image"][0], image, atol=1e-6)
    np.testing.assert_array_equal(pair["label"][0], label)


def test_png_multiclass_keeps_indices(tmp_path):
    writer = PairWriter(str(tmp_path), "png", num_classes=4)
    label = _label(4)
    out = writer.write(0, _image(), label)
    with Image.open(tmp_path / out["label"]) as im:
        np.testing.assert_array_equal(np.asarray(im), label.astype(np.uint8))
    np.testing.assert_array_equal(writer.read(0)[1][0], label)


def test_nifti_round_trip_keeps_values_and_affine(tmp_path):
    affine = np.array([[0, -0.8, 0, 10.0], [0.7, 0, 0, -4.0], [0, 0, 2.5, 33.0], [0, 0, 0, 1]])
    writer = PairWriter(str(tmp_path), "nifti", num_classes=3, affine=affine.tolist())
    image = np.random.RandomState(0).uniform(-1, 1, (H, W)).astype(np.float32)
    label = _label(3)
    out = writer.write(1, image, label)
    assert out["image"] == "pair_000001.nii.gz"
    img, lab = nib.load(tmp_path / out["image"]), nib.load(tmp_path / out["label"])
    assert img.get_data_dtype() == np.float32 and lab.get_data_dtype() == np.uint8
    assert img.shape == lab.shape == (H, W, 1)
    np.testing.assert_array_equal(np.asarray(img.dataobj)[:, :, 0], image)
    np.testing.assert_array_equal(np.asarray(lab.dataobj)[:, :, 0], label)
    np.testing.assert_allclose(img.affine, affine, atol=1e-5)
    np.testing.assert_allclose(lab.affine, affine, atol=1e-5)
    np.testing.assert_array_equal(writer.read(1)[0][0], image)
    (pair,) = load_pairs([{"image": str(tmp_path / out["image"]), "label": str(tmp_path / out["label"])}], None, 3)
    np.testing.assert_array_equal(pair["label"][0], label)
    np.testing.assert_allclose(pair["affine"], affine, atol=1e-5)


def test_nifti_in_hounsfield_units_with_each_pairs_geometry_read_back_by_monai(tmp_path):
    """CT pairs: the training window inverted (HU, clipped to the window's bounds), each pair with its own slice's
    affine, as MONAI's LoadImage (the reader every MONAI / nnU-Net pipeline starts with) sees them."""
    from monai.transforms import LoadImage

    writer = PairWriter(str(tmp_path), "nifti", num_classes=3, intensity_window=(40, 400))
    image = np.linspace(-1.0, 1.0, H * W, dtype=np.float32).reshape(H, W)
    image[0, 0], image[0, 1] = 1.7, -3.0  # beyond the window: written as its bounds
    slices = [np.diag([0.8, 0.8, 2.5, 1.0]) for _ in range(2)]
    for k, affine in enumerate(slices):
        affine[2, 3] = 2.5 * k  # the slice position along z
        writer.write(k, image, _label(3), affine=affine)
    loader = LoadImage(image_only=True)
    for k, affine in enumerate(slices):
        hu = loader(str(tmp_path / writer.paths(k)[0]))
        expected = np.clip(image, -1, 1) * 200 + 40  # level 40, width 400: [-1, 1] -> [-160, 240] HU
        np.testing.assert_allclose(np.asarray(hu)[:, :, 0], expected, atol=1e-3)
        assert float(hu.max()) == pytest.approx(240.0) and float(hu.min()) == pytest.approx(-160.0)
        np.testing.assert_allclose(hu.meta["original_affine"], affine, atol=1e-5)
        np.testing.assert_array_equal(np.asarray(loader(str(tmp_path / writer.paths(k)[1])))[:, :, 0], _label(3))
    np.testing.assert_allclose(writer.read(1)[0][0], np.clip(image, -1, 1), atol=1e-5)  # back to the model's range
    with pytest.raises(InputError, match="intensity_window"):
        PairWriter(str(tmp_path), "nifti", intensity_window=(40, 0))


def test_write_index_makes_a_datalist_a_monai_label_datastore_and_a_preview(tmp_path):
    writer = PairWriter(str(tmp_path), "png")
    for i in range(3):
        writer.write(i, _image(i), _label(2, i))
    (tmp_path / writers.DATASTORE_FILE).write_text(
        json.dumps({"name": "mine", "images_dir": ".", "labels_dir": "labels", "objects": {"case_7": {"image": {}}}})
    )  # a user's datastore the pairs are added to: its own images stay listed
    paths = writer.write_index([0, 2], {"0": "background", "1": "lesion"}, description="two pairs")
    datalist = json.loads((tmp_path / "datalist.json").read_text())
    assert datalist["labels"] == {"0": "background", "1": "lesion"} and datalist["numTraining"] == 2
    labels = [e["label"] for e in datalist["training"]]
    assert labels == ["labels/final/pair_000000.png", "labels/final/pair_000002.png"]
    index = json.loads((tmp_path / writers.DATASTORE_FILE).read_text())
    assert sorted(index["objects"]) == ["case_7", "pair_000000", "pair_000002"] and index["name"] == "mine"
    final = index["objects"]["pair_000002"]["labels"]["final"]
    assert final["ext"] == ".png" and final["info"]["label_names"] == {"lesion": 1}
    assert paths["preview"] == str(tmp_path / "preview" / "pairs.png") and os.path.isfile(paths["preview"])
    (tmp_path / writers.DATASTORE_FILE).write_text("{not json")
    with pytest.raises(OutputError, match="datastore"):
        writer.write_index([0], {"0": "background", "1": "lesion"})


def test_nifti_default_affine_and_reproducible_bytes(tmp_path):
    first = PairWriter(str(tmp_path / "a"), "nifti").write(0, _image(), _label(2))
    PairWriter(str(tmp_path / "b"), "nifti").write(0, _image(), _label(2))
    np.testing.assert_array_equal(nib.load(tmp_path / "a" / first["label"]).affine, np.eye(4))
    for rel in first.values():  # a rerun reproduces identical files (no names or times in the gzip header)
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()


def test_kill_leftovers_are_detected_and_removed(tmp_path):
    writer = PairWriter(str(tmp_path), "png")
    writer.write(0, _image(0), _label(2, 0))
    writer.write(1, _image(1), _label(2, 1))
    os.remove(tmp_path / "labels" / "final" / "pair_000001.png")  # killed after the image, before the label
    dying = []  # contexts entered but never left, like a process that died inside the block
    for rel in ("pair_000002.png", "labels/final/pair_000002.png", "datalist.json"):
        dying.append(atomic_path(tmp_path / rel))
        with open(dying[-1].__enter__(), "wb") as f:
            f.write(b"half")
    for folder in ("labels/final", "."):
        (tmp_path / folder / "leftover").touch()
    (tmp_path / "notes.txt").write_text("user file")
    assert writer.is_complete(0) and not writer.is_complete(1) and not writer.is_complete(2)

    assert writer.remove_partial() == 4  # three tmp files + the image without a label
    assert _files(tmp_path) == sorted(
        [
            "pair_000000.png",
            "labels/final/pair_000000.png",
            "notes.txt",
            "labels/final/leftover",
            "leftover",
        ]
    )
    assert writer.remove_partial() == 0
    writer.write(1, _image(1), _label(2, 1))
    assert writer.is_complete(1)


def test_tmp_names_keep_extension_and_are_recognised(tmp_path):
    for name, ext in (("pair_000001.png", ".png"), ("pair_000001.nii.gz", ".nii.gz"), ("datalist.json", ".json")):
        with atomic_path(tmp_path / name) as tmp:
            base = os.path.basename(tmp)
            assert os.path.dirname(tmp) == str(tmp_path) and base.startswith(f".{name}.tmp-") and base.endswith(ext)
            assert writers._is_tmp_name(base) and not writers._is_tmp_name(name)
            open(tmp, "wb").close()


def test_overwrite_killed_mid_pair_is_incomplete(tmp_path, monkeypatch):
    writer = PairWriter(str(tmp_path), "png")
    writer.write(0, _image(0), _label(2, 0))

    def killed(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(writers.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        writer.write(0, _image(1), _label(2, 1))
    monkeypatch.undo()
    assert not writer.is_complete(0)  # never a new image beside the old label
    assert _files(tmp_path) == ["pair_000000.png"]  # old image, no tmp
    assert writer.remove_partial() == 1


def test_atomic_path_crash_leaves_nothing(tmp_path):
    target = tmp_path / "sub" / "out.nii.gz"
    with pytest.raises(RuntimeError, match="boom"), atomic_path(target) as tmp:
        with open(tmp, "wb") as f:
            f.write(b"partial")
        raise RuntimeError("boom")
    assert _files(tmp_path) == []
    atomic_write_bytes(target, b"old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        open(tmp, "wb").close()
        raise RuntimeError("boom")
    assert target.read_bytes() == b"old" and _files(tmp_path) == ["sub/out.nii.gz"]
    atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new" and _files(tmp_path) == ["sub/out.nii.gz"]


def test_write_datalist_relative_and_readable_by_monai(tmp_path):
    data_dir = tmp_path / "out"
    writer = PairWriter(str(data_dir), "png")
    relative = [writer.write(i, _image(i), _label(2, i)) for i in range(2)]
    absolute = [{k: str(data_dir / v) for k, v in item.items()} for item in relative]
    labels = {"0": "background", "1": "foreground"}
    cases = (  # (datalist path, items, expected prefix); relative items are taken as relative to the JSON's folder
        (data_dir / "datalist.json", [relative[0], absolute[1]], ""),
        (tmp_path / "lists" / "train.json", absolute, "../out/"),
    )
    for path, items, prefix in cases:
        write_datalist(str(path), items, numTraining=np.int64(2), labels=labels, description="two pairs")
        data = json.loads(path.read_text())
        assert data["numTraining"] == 2 and data["labels"] == labels and data["description"] == "two pairs"
        assert data["training"] == [
            {"image": f"{prefix}pair_00000{i}.png", "label": f"{prefix}labels/final/pair_00000{i}.png"}
            for i in range(2)
        ]
        loaded = load_decathlon_datalist(str(path), data_list_key="training")
        assert len(loaded) == 2
        for i, entry in enumerate(loaded):
            for key, rel in zip(("image", "label"), writer.paths(i)):
                assert os.path.isabs(entry[key]) and os.path.samefile(entry[key], data_dir / rel)
    assert not [f for f in _files(tmp_path) if ".tmp-" in f]
    with pytest.raises(ValueError, match="training"):
        write_datalist(str(tmp_path / "x.json"), relative, training=[])


@pytest.mark.parametrize("num_classes", [2, 3])
def test_preview_grid_layout_and_overlay(tmp_path, num_classes):
    n, columns = 5, 2
    images = torch.from_numpy(np.stack([_image(i) for i in range(n)]))[:, None]
    labels = np.zeros((n, H, W), dtype=np.int64)
    labels[:, 1:5, 2:8] = 1
    if num_classes == 3:
        labels[:, 2:4, 5:8] = 2
    path = tmp_path / "preview.png"
    save_preview_grid(str(path), images, labels, num_classes=num_classes, max_pairs=16, columns=columns)
    rows = math.ceil(n / columns)
    with Image.open(path) as im:
        assert im.mode == "RGB"
        assert im.size == (columns * 3 * W + (columns - 1) * 4, rows * H + (rows - 1) * 4)
        grid = np.asarray(im)
    assert os.listdir(tmp_path) == ["preview.png"]
    # second row, first column: pair 2
    y, x = H + 4, 0
    grey = np.rint((images[2, 0].numpy() + 1) * 127.5).astype(np.uint8)
    np.testing.assert_array_equal(grid[y : y + H, x : x + W], np.repeat(grey[..., None], 3, -1))
    mask_panel = grid[y : y + H, x + W : x + 2 * W]
    overlay = grid[y : y + H, x + 2 * W : x + 3 * W].astype(int)
    assert (mask_panel[labels[2] == 0] == 0).all() and (mask_panel[labels[2] > 0] > 0).any(axis=-1).all()
    assert (np.abs(overlay - grey[..., None]).sum(-1)[labels[2] > 0] > 0).all()
    np.testing.assert_array_equal(overlay[labels[2] == 0], np.repeat(grey[labels[2] == 0][:, None], 3, -1))
    if num_classes == 3:
        assert not np.array_equal(mask_panel[1, 2], mask_panel[3, 7])  # class 1 and class 2 get distinct colours
    save_preview_grid(str(path), images, labels, num_classes=num_classes, max_pairs=3, columns=4)
    with Image.open(path) as im:
        assert im.size == (3 * 3 * W + 2 * 4, H)


def test_bad_arguments_raise_value_error_naming_them(tmp_path):
    with pytest.raises(ValueError, match=r"'file_format'.*'png', 'nifti'.*'jpeg'"):
        PairWriter(str(tmp_path), "jpeg")
    with pytest.raises(ValueError, match="'num_classes'"):
        PairWriter(str(tmp_path), num_classes=1)
    with pytest.raises(ValueError, match="'affine'"):
        PairWriter(str(tmp_path), "nifti", affine=np.eye(3))
    writer = PairWriter(str(tmp_path), "png", num_classes=2)
    bad = _label(2)
    bad[0, 0] = 2
    with pytest.raises(ValueError, match=r"values \[2\] outside 0..1 \(num_classes=2\)"):
        writer.write(0, _image(), bad)
    with pytest.raises(ValueError, match=r"values \[-1\]"):
        writer.write(0, _image(), -np.ones((H, W), dtype=np.int64))
    with pytest.raises(ValueError, match="shape"):
        writer.write(0, _image(), _label(2)[:, :-1])
    assert _files(tmp_path) == []  # rejected before anything was written
