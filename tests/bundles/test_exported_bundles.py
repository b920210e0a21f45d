"""Every bundle runs outside this repository, as people download it: exported with ``common.bundle_export``, run from
its own folder with ``python -m monai.bundle run --config_file configs/<stage>.json``, with the shared library
pip-installed from the repository (a fresh wheel, into a folder of its own) and the repository itself not importable.
Train (2 iterations), inference (2 pairs) and evaluation (2 segmenter iterations) of every bundle."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.evaluation_data import write_pairs
from tests.shared_data import REPO

pytestmark = pytest.mark.slow

TINY = REPO / "tests" / "configs"
SEGMENTER = ("--network_kwargs", "{'channels': [4, 8], 'strides': [2], 'num_res_units': 0}", "--batch_size", "4")
QUICK = ("--max_epochs", "1", "--iterations_per_epoch", "2")


@pytest.fixture(scope="module")
def library(tmp_path_factory) -> Path:
    """The shared library as pip installs it from the repository: a wheel built now, installed into its own folder."""
    target = tmp_path_factory.mktemp("site")
    command = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target"]
    subprocess.run([*command, str(target), str(REPO)], check=True, capture_output=True, cwd=target)
    return target


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, Path]:
    """This module's own export: its runs write models and outputs into the bundle folders, which the session's
    ``exported_bundles`` (the failure table runs against it) must not see."""
    from common.bundle_export import export_bundle

    dist = tmp_path_factory.mktemp("dist_runs")
    return {
        name: export_bundle(REPO / "bundles" / name, dist)
        for name in ("pig", "diffuse_expand", "diffboost", "ct_semantic_synthesis")
    }


@pytest.fixture(scope="module")
def real_pairs(tmp_path_factory) -> Path:
    """A user's small labelled dataset: 12 disc pairs with a train/test split."""
    folder = tmp_path_factory.mktemp("data") / "discs"
    names = write_pairs(folder, 12, seed=0, empty=(3,))
    (folder / "splits.json").write_text(json.dumps({"train": names[:8], "val": names[8:10], "test": names[8:]}))
    return folder


def run(bundle: Path, library: Path, configs: list[str], *overrides: str) -> subprocess.CompletedProcess:
    """``python -m monai.bundle run`` from inside the exported bundle; only installed packages are importable."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["PYTHONPATH"] = str(library)
    files = "[" + ",".join(f"'{c}'" for c in configs) + "]"
    command = [sys.executable, "-m", "monai.bundle", "run", "--config_file", files, *overrides]
    result = subprocess.run(command, cwd=bundle, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{configs}: {result.stderr[-3000:]}"
    return result


def evaluate(bundle: Path, library: Path, real_pairs: Path, *overrides: str) -> dict:
    """The bundle's evaluate.json on the user's pairs with a tiny segmenter; returns results.json."""
    data = ("--dataset_dir", str(real_pairs), "--image_size", "32", "--iterations", "2", "--seeds", "[0]")
    run(bundle, library, ["configs/evaluate.json"], *data, *SEGMENTER, *overrides)
    return json.loads((bundle / "outputs" / "evaluation" / "results.json").read_text())


def test_the_export_is_the_model_zoo_layout(exported_bundles):
    for name, folder in exported_bundles.items():
        assert sorted(p.name for p in folder.iterdir()) == ["LICENSE", "configs", "docs", "scripts"]
        assert not list(folder.rglob("__pycache__")) and not (folder / "models").exists()
        with zipfile.ZipFile(folder.parent / f"{name}.zip") as archive:
            names = archive.namelist()
        assert f"{name}/configs/metadata.json" in names and f"{name}/scripts/__init__.py" in names
        assert all(n.startswith(f"{name}/") for n in names)


def test_the_library_comes_from_the_installed_wheel_not_the_repository(exported_bundles, library):
    code = "import common, json, os, sys; print(common.__file__); print(common.__version__)\n"
    code += "print(json.dumps([os.path.abspath(p) for p in sys.path]))"
    env = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "PYTHONPATH": str(library)}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=exported_bundles["pig"], env=env, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert Path(out[0]).is_relative_to(library)
    metadata = json.loads((exported_bundles["pig"] / "configs" / "metadata.json").read_text())
    assert out[1] == metadata["version"] == metadata["required_packages_version"]["monai-paired-synthesis"]
    assert str(REPO) not in json.loads(out[2])  # the bundle folder and installed packages only


def test_the_wheel_ships_the_bundles_and_exports_them_without_the_repository(library, tmp_path):
    """``pip install monai-paired-synthesis`` alone: ``python -m common.bundle_export <name>`` from any folder finds the
    shipped bundle, checks its metadata against the shipped Model Zoo schema and writes the same export."""
    from common.bundle_export import METADATA_SCHEMA, export_bundle

    assert (library / "common" / "schemas" / METADATA_SCHEMA.name).is_file()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["PYTHONPATH"] = str(library)
    command = [sys.executable, "-m", "common.bundle_export", "ct_semantic_synthesis", str(tmp_path / "dist")]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    shipped = Path(result.stdout.strip().splitlines()[-1])
    reference = export_bundle(REPO / "bundles" / "ct_semantic_synthesis", tmp_path / "reference", zip_archive=False)
    files = sorted(str(p.relative_to(reference)) for p in reference.rglob("*") if p.is_file())
    assert files == sorted(str(p.relative_to(shipped)) for p in shipped.rglob("*") if p.is_file())
    config = Path("configs") / "inference.json"
    assert (shipped / config).read_bytes() == (reference / config).read_bytes()


def test_pig_runs_outside_the_repository(exported, library, real_pairs):
    bundle = exported["pig"]
    tiny = str(TINY / "pig_tiny.json")
    run(bundle, library, ["configs/train.json", tiny], *QUICK)
    run(bundle, library, ["configs/inference.json", tiny], "--num_pairs", "2")
    generated = bundle / "outputs" / "generated"
    assert len(json.loads((generated / "datalist.json").read_text())["training"]) == 2
    assert (bundle / "models" / "model.pt").is_file() and (generated / "preview" / "pairs.png").is_file()
    results = evaluate(bundle, library, real_pairs)
    assert list(results["aggregate"]) == [
        "real",
        "real+augment",
        "real+synthetic",
        "real+augment+synthetic",
        "synthetic-only",
    ]
    assert results["go_no_go"]["decision"] == "undecided"  # one seed: no interval, no decision


def test_diffuse_expand_runs_outside_the_repository(exported, library, real_pairs):
    bundle = exported["diffuse_expand"]
    tiny = str(TINY / "diffuse_expand_tiny.json")
    run(bundle, library, ["configs/train_dpm.json", tiny], *QUICK)
    run(bundle, library, ["configs/train_segmenter.json", tiny], "--segmenter_max_epochs", "1")
    run(bundle, library, ["configs/inference.json", tiny], "--num_pairs", "2", "--classifier_guidance", "True")
    run(bundle, library, ["configs/filter.json", tiny], "--eta", "0.99")
    filtered = bundle / "outputs" / "filtered"
    assert json.loads((filtered / "filter_report.json").read_text())["total"] == 2
    results = evaluate(bundle, library, real_pairs, "--synthetic_dirs", f"['{bundle / 'outputs' / 'generated'}']")
    assert results["runs"][-1]["train_pairs_synthetic"] == 2


def test_diffboost_runs_outside_the_repository(exported, library, real_pairs):
    bundle = exported["diffboost"]
    tiny = str(TINY / "diffboost_tiny.json")
    run(bundle, library, ["configs/train.json", tiny], *QUICK)
    source = f"[{{'dataset_dir': '{real_pairs}', 'modality': 'US', 'organ': 'breast', 'category': 'benign'}}]"
    run(bundle, library, ["configs/inference.json", tiny], "--sources", source, "--augment_ratio", "1")
    versions = bundle / "outputs" / "versions"
    assert len(json.loads((versions / "sources.json").read_text())["versions"]) == 8
    results = evaluate(bundle, library, real_pairs, "--augmentations", "['RandomGamma']", "--network", "unet")
    assert list(results["aggregate"]) == ["baseline", "RandomGamma", "DiffBoost"]


def test_ct_semantic_synthesis_runs_outside_the_repository(exported, library):
    bundle = exported["ct_semantic_synthesis"]
    tiny = str(TINY / "ct_semantic_tiny.json")
    run(bundle, library, ["configs/train.json", tiny], *QUICK)
    run(bundle, library, ["configs/inference.json", tiny])
    run(bundle, library, ["configs/evaluate.json", tiny], "--segmenter_iterations", "2")
    results = json.loads((bundle / "outputs" / "evaluation" / "results.json").read_text())
    assert "mask_guided" in results["methods"] and results["methods"]["mask_guided"]["psnr"] is not None
