"""Run bundle configs the way a user does (``python -m monai.bundle run`` in a subprocess), for the benchmark scripts:
each stage gets a fresh process, exactly the command is printed, and a failing stage stops the benchmark."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

__all__ = ["run_bundle"]


def run_bundle(configs: Sequence[str | Path], *overrides: str) -> None:
    """``python -m monai.bundle run --config_file [configs...] overrides...`` from the repository root."""
    files = "[" + ",".join(f"'{c}'" for c in configs) + "]"
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", files, *overrides]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=REPO, check=True)
