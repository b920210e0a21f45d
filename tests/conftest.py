"""Fixtures shared by several test modules."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.evaluation_data import write_pairs


@pytest.fixture(scope="module")
def one_thread():
    """Two cores shared with a background training: competing torch threads make each step ~50x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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


@pytest.fixture(scope="session")
def exported_bundles(tmp_path_factory) -> dict[str, Path]:
    """Every bundle exported (``common.bundle_export``) to a folder outside the repository, as people download it."""
    from common.bundle_export import export_bundle
    from tests.shared_data import REPO

    dist = tmp_path_factory.mktemp("dist")
    names = ("pig", "diffuse_expand", "diffboost", "ct_semantic_synthesis")
    return {name: export_bundle(REPO / "bundles" / name, dist) for name in names}
