"""common.progress: bars with an ETA at a terminal, nothing in logs, CI or when switched off."""

from __future__ import annotations

import io
import sys

import pytest
import torch
from ignite.engine import Engine

from common import progress
from common.errors import InputError
from tests.shared_data import REPO, config_parser


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def at_a_terminal(monkeypatch) -> Terminal:
    """Standard error becomes a terminal (inside the test: pytest's capture would undo it in a fixture)."""
    stream = Terminal()
    monkeypatch.setattr(sys, "stderr", stream)
    monkeypatch.delenv("CI", raising=False)
    return stream


def test_bars_only_at_a_terminal_outside_ci_and_when_asked(monkeypatch):
    at_a_terminal(monkeypatch)
    assert progress.show_progress(True) and progress.show_progress("true")
    assert not progress.show_progress(False) and not progress.show_progress("false")
    with pytest.raises(InputError, match="'progress' must be true or false"):
        progress.show_progress("sometimes")
    monkeypatch.setenv("CI", "true")
    assert not progress.show_progress(True)
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # a log file
    monkeypatch.delenv("CI")
    assert not progress.show_progress(True)


def test_training_bar_shows_the_loss_and_an_eta(monkeypatch):
    terminal = at_a_terminal(monkeypatch)
    engine = Engine(lambda engine, batch: {"loss": torch.tensor(0.5)})
    handler = progress.TrainingProgress(True)
    handler.attach(engine)
    engine.run(range(4), max_epochs=1)
    assert handler.bar is not None and "loss=0.5" in terminal.getvalue() and "<" in terminal.getvalue()


def test_no_bar_when_off_or_not_a_terminal(monkeypatch):
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    engine = Engine(lambda engine, batch: {"loss": 1.0})
    for handler in (progress.TrainingProgress(True), progress.TrainingProgress(False)):
        handler.attach(engine)
        assert handler.bar is None
    items = [1, 2, 3]
    assert progress.progress_iterable(items, 3, "x") is items
    assert sys.stderr.getvalue() == ""


def test_generation_batches_get_a_bar(monkeypatch):
    terminal = at_a_terminal(monkeypatch)
    assert list(progress.progress_iterable(range(3), 3, "generating")) == [0, 1, 2]
    assert "generating" in terminal.getvalue() and "0/3" in terminal.getvalue()  # a total, hence an ETA


@pytest.mark.parametrize(
    "bundle, config",
    [("pig", "train.json"), ("diffuse_expand", "train_segmenter.json"), ("ct_semantic_synthesis", "train.json")],
)
def test_every_training_config_has_the_switch(bundle, config):
    parser = config_parser(REPO / "bundles" / bundle / "configs" / config)
    parser["progress"] = False
    handlers = parser.get_parsed_content("train#handlers")
    bars = [h for h in handlers if type(h).__name__ == "TrainingProgress"]
    assert len(bars) == 1 and bars[0].enabled is False
