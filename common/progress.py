"""Progress bars with an ETA for the long runs (training epochs, generation batches), for a person at a terminal.

A bar is drawn only when it is asked for (the configs' ``progress`` key, ``--progress false`` turns it off), standard
error is a terminal and no ``CI`` variable is set: logs written to a file or a CI console keep their one line per
event and never fill with carriage-return redraws. Training uses ignite's ``ProgressBar`` (tqdm), generation tqdm.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import Any

from common.errors import as_flag

__all__ = ["show_progress", "TrainingProgress", "progress_iterable"]


def show_progress(enabled: Any = True) -> bool:
    """True when a bar is asked for, standard error is a terminal and the run is not in CI."""
    if not as_flag(enabled, "progress"):
        return False
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty()) and not os.environ.get("CI")


class TrainingProgress:
    """A training handler: ignite's ``ProgressBar`` over each epoch's iterations, with the loss and an ETA, when
    :func:`show_progress` allows; attaching it otherwise does nothing."""

    def __init__(self, enabled: Any = True) -> None:
        self.enabled = show_progress(enabled)
        self.bar = None

    def attach(self, engine: Any) -> None:
        if not self.enabled:
            return
        from ignite.handlers import ProgressBar

        self.bar = ProgressBar(persist=False)
        self.bar.attach(engine, output_transform=_loss)


def _loss(output: Any) -> dict[str, float]:
    first = output[0] if isinstance(output, list) else output
    loss = first.get("loss") if isinstance(first, dict) else None
    return {} if loss is None else {"loss": float(loss)}


def progress_iterable(items: Iterable, total: int, description: str, enabled: Any = True) -> Iterable:
    """``items`` wrapped in a tqdm bar (``total`` steps, ETA) when :func:`show_progress` allows, else as they are."""
    if not show_progress(enabled):
        return items
    from tqdm import tqdm

    return tqdm(items, total=total, desc=description, leave=False)
