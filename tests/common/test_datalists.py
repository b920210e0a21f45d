"""common.datalists: the classes' names a generated datalist carries."""

from __future__ import annotations

import json

import numpy as np
import pytest

from common.data import DataError
from common.datalists import label_names
from tests.shared_data import REPO, config_parser


def test_defaults_name_every_class():
    assert label_names(2) == {"0": "background", "1": "foreground"}
    assert label_names(3) == {"0": "background", "1": "class_1", "2": "class_2"}


def test_a_class_map_file_or_mapping_names_the_classes(tmp_path):
    (tmp_path / "classmap.json").write_text(json.dumps({"0": "background", "1": "spleen", "3": "liver"}))
    assert label_names(4, tmp_path / "classmap.json") == {
        "0": "background",
        "1": "spleen",
        "2": "class_2",
        "3": "liver",
    }
    assert label_names(2, {"1": "lesion"}) == {"0": "background", "1": "lesion"}


@pytest.mark.parametrize(
    "names, message",
    [({"5": "x"}, "name class '5', outside 0..2"), ({"1": 3}, "must map class indices to strings")],
)
def test_bad_names_are_refused(names, message):
    with pytest.raises(DataError, match=message):
        label_names(3, names)


def test_ct_inference_names_the_organs_and_the_body_class(tmp_path):
    (tmp_path / "classmap.json").write_text(json.dumps({"1": "spleen", "2": "liver"}))
    parser = config_parser(REPO / "bundles" / "ct_semantic_synthesis" / "configs" / "inference.json")
    parser["ckpt_path"] = str(tmp_path / "untrained" / "model.pt")
    parser["num_classes"], parser["class_names_path"] = 3, str(tmp_path / "classmap.json")
    assert parser.get_parsed_content("label_names") == {"0": "background", "1": "spleen", "2": "liver", "3": "body"}


def test_a_monai_label_datastore_is_a_dataset(tmp_path):
    """Images at the top, ground truth in labels/final/ (MONAI Label's layout, and the generated folders'): only the
    annotated images are pairs, splits.json is honoured, the preview subfolder is not an image."""
    from PIL import Image

    from common.datalists import build_datalist

    (tmp_path / "labels" / "final").mkdir(parents=True)
    (tmp_path / "preview").mkdir()
    for name in ("a", "b", "c"):
        Image.fromarray(np.full((8, 8), 100, np.uint8)).save(tmp_path / f"{name}.png")
    for name in ("a", "c"):  # b is not annotated yet
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "labels" / "final" / f"{name}.png")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "preview" / "pairs.png")
    assert [d["name"] for d in build_datalist(tmp_path, None)] == ["a", "c"]
    assert build_datalist(tmp_path, None)[1]["label"] == str(tmp_path / "labels" / "final" / "c.png")
    (tmp_path / "splits.json").write_text(json.dumps({"train": ["c.png"], "test": ["a.png"]}))
    assert [d["name"] for d in build_datalist(tmp_path, "train")] == ["c"]
