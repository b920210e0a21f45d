"""Safe, explicit checkpoint loading for inference and fine-tuning."""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
from torch import nn

from common.errors import InputError, first_line

__all__ = ["load_weights", "load_pretrained"]


def load_weights(network: nn.Module, path: str, key: str = "network", strict: bool = True) -> nn.Module:
    """Load ``path`` into ``network`` with ``weights_only=True`` (no pickled code runs).

    Accepts a bare state dict (what MONAI's ``CheckpointSaver`` writes for a single object, e.g. ``model.pt``) or a
    dict of several objects (a full training checkpoint), from which ``key`` is taken. Raises :class:`InputError`
    naming the file when it is missing, unreadable, or made for another network.
    """
    if not os.path.isfile(path):
        raise InputError(f"checkpoint '{path}' does not exist; train the model first or set 'ckpt_path'.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt/truncated file or a pickle that is not plain weights
        raise InputError(f"checkpoint '{path}' could not be read as plain weights ({type(exc).__name__}).") from exc
    if not isinstance(state, Mapping):
        raise InputError(f"checkpoint '{path}' does not hold a state dict.")
    if key in state and isinstance(state[key], Mapping):
        state = state[key]
    try:
        network.load_state_dict(state, strict=strict)
    except RuntimeError as exc:
        raise InputError(f"checkpoint '{path}' does not match the configured network ({first_line(exc)}).") from exc
    return network


def load_pretrained(network: nn.Module, path: str | None, key: str = "network") -> nn.Module:
    """``network`` with the weights of ``path`` (:func:`load_weights`), or unchanged when ``path`` is None or empty:
    the training configs' ``pretrained_weights`` (fine-tuning) versus training from scratch."""
    return load_weights(network, path, key) if path else network
