"""Where the project's real datasets are (../shared/data, or $PAIRED_SYNTH_DATA), a skip marker for their tests, and
small helpers the test modules share (config parsers, checkpoints, a tiny local CLIP folder)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from monai.bundle import ConfigParser

__all__ = [
    "DATA",
    "REPO",
    "needs",
    "config_parser",
    "untrained_checkpoint",
    "user_error",
    "tiny_clip_folder",
    "bundle_module",
]

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
    """A MONAI ``ConfigParser`` over config files read in order (later files override earlier keys), with the bundle
    of the first file active (:func:`common.bundle.activate`), as a run of that bundle would have it."""
    from common.bundle import activate

    first = Path(files[0]).resolve()
    activate(first.parent.parent if first.parent.name == "configs" else None)
    parser = ConfigParser()
    parser.read_config([str(f) for f in files])
    return parser


def untrained_checkpoint(ckpt_dir: Path, *config_files) -> Path:
    """What training leaves in ``ckpt_dir``, without training: the configured ``network_def``'s weights as model.pt."""
    import torch

    parser = config_parser(*config_files)
    if "ckpt_path" in parser:  # inference builds the network saved beside the weights (common.bundle.TrainingConfig)
        parser["ckpt_path"] = str(ckpt_dir / "model.pt")
    network = parser.get_parsed_content("network_def")
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


def tiny_clip_folder(folder: Path) -> Path:
    """A randomly initialised CLIP text model (1 layer, width 32) and a character-level BPE tokenizer saved with
    ``save_pretrained`` into ``folder``: the layout of a real downloaded CLIP, without a download."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    vocab: dict[str, int] = {}
    for char in "abcdefghijklmnopqrstuvwxyz0123456789,-":
        vocab[char] = len(vocab)
        vocab[char + "</w>"] = len(vocab)
    merges = []
    for word in ("breast", "benign", "contrast"):  # a few whole words, so tokens are not only characters
        parts = [*word[:-1], word[-1] + "</w>"]
        while len(parts) > 1:
            merges.append((parts[0], parts[1]))
            vocab.setdefault(parts[0] + parts[1], len(vocab))
            parts = [parts[0] + parts[1], *parts[2:]]
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges)
    config = CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=1,
        num_attention_heads=4,
        max_position_embeddings=32,
        bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=vocab["<|endoftext|>"],
    )
    CLIPTextModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def bundle_module(bundle: str, module: str):
    """``bundles/<bundle>/scripts/<module>.py`` imported for a test, whatever other bundle was imported before.

    Every bundle's method package is named ``scripts`` (the Model Zoo's convention), so tests load each one under its
    own name, ``_<bundle>_scripts``: the packages of several bundles then live side by side in one test process, and
    their relative imports (``from .edges import ...``) resolve inside their own bundle.
    """
    import importlib
    import importlib.util
    import sys

    alias = f"_{bundle}_scripts"
    if alias not in sys.modules:
        folder = REPO / "bundles" / bundle / "scripts"
        spec = importlib.util.spec_from_file_location(
            alias, folder / "__init__.py", submodule_search_locations=[str(folder)]
        )
        package = importlib.util.module_from_spec(spec)
        sys.modules[alias] = package
        spec.loader.exec_module(package)
    return importlib.import_module(f"{alias}.{module}")
