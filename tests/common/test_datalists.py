"""common.datalists: the classes' names a generated datalist carries."""

from __future__ import annotations

import json

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
