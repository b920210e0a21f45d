"""Run bundle configs the way a user does (``python -m monai.bundle run`` in a subprocess), for the benchmark scripts:
each stage gets a fresh process, exactly the command is printed, and a failing stage stops the benchmark."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

__all__ = ["bundle_parser", "cached_measurement", "run_bundle"]


def bundle_parser(bundle: str, *configs: str):
    """A MONAI ``ConfigParser`` over ``bundles/<bundle>/configs/<configs...>`` (later files override), parsed in this
    process with the bundle active (:func:`common.bundle.activate`: its ``scripts`` and ``bundle_root``)."""
    from monai.bundle import ConfigParser

    from common.bundle import activate

    folder = REPO / "bundles" / bundle
    activate(folder)
    parser = ConfigParser()
    parser.read_config([str(folder / "configs" / c) for c in configs])
    return parser


def run_bundle(configs: Sequence[str | Path], *overrides: str) -> None:
    """``python -m monai.bundle run --config_file [configs...] overrides...`` from the repository root."""
    files = "[" + ",".join(f"'{c}'" for c in configs) + "]"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", files, *overrides]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=REPO, check=True)


def cached_measurement(result: Path, cmd: Sequence[str]) -> dict:
    """The JSON a measuring subprocess prints on its last line, kept in ``result`` (written atomically) and read from
    there on reruns: every measurement gets a fresh process (its own peak RSS, no shared caches) and a killed
    benchmark resumes."""
    if result.is_file():
        return json.loads(result.read_text())
    out = subprocess.run(list(cmd), cwd=REPO, check=True, capture_output=True, text=True).stdout
    data = json.loads(out.strip().splitlines()[-1])
    result.parent.mkdir(parents=True, exist_ok=True)
    tmp = result.with_suffix(".partial")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, result)
    return data
