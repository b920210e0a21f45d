"""Where the project's real datasets are (../shared/data, or $PAIRED_SYNTH_DATA), and a skip marker for their tests."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from monai.bundle import ConfigParser

__all__ = ["DATA", "REPO", "needs", "config_parser", "untrained_checkpoint", "user_error"]

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """../shared/data relative to the repo root, or $PAIRED_SYNTH_DATA."""
    override = os.environ.get("PAIRED_SYNTH_DATA")
    return Path(override) if override else REPO.parent / "shared" / "data"


DATA = shared_data_dir()


def needs(*parts: str):
    """Skip the test, with the path in the reason, when ``DATA/parts`` is absent."""
    path = DATA.joinpath(*parts)
    return pytest.mark.skipif(
        not path.exists(), reason=f"shared dataset '{path}' is absent (set PAIRED_SYNTH_DATA to its folder)"
    )


def config_parser(*files) -> ConfigParser:
    """A MONAI ``ConfigParser`` over config files read in order (later files override earlier keys)."""
    parser = ConfigParser()
    parser.read_config([str(f) for f in files])
    return parser


def untrained_checkpoint(ckpt_dir: Path, *config_files) -> Path:
    """What training leaves in ``ckpt_dir``, without training: the configured ``network_def``'s weights as model.pt."""
    import torch

    network = config_parser(*config_files).get_parsed_content("network_def")
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    torch.save(network.state_dict(), ckpt_dir / "model.pt")
    return ckpt_dir / "model.pt"


def user_error(result: subprocess.CompletedProcess) -> str:
    """The one-sentence error a user sees: exit status 2, no traceback, a single ``error:`` line, printed last."""
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and result.stderr.strip().splitlines()[-1] == errors[0], result.stderr[-3000:]
    print(errors[0])  # shown with pytest -s: the messages of the README's failure table
    return errors[0]
