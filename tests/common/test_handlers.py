"""LossHistoryHandler: one row per iteration, also across a resume that repeats iterations after the checkpoint."""

from __future__ import annotations

import csv

from ignite.engine import Engine, Events

from common.handlers import LossHistoryHandler


def run(path, max_epochs: int, start_iteration: int = 0, per_epoch: int = 3) -> None:
    engine = Engine(lambda engine, batch: {"loss": float(engine.state.iteration)})
    LossHistoryHandler(str(path)).attach(engine)

    @engine.on(Events.STARTED)
    def restore(engine):  # what a checkpoint restore does to the engine's counters
        engine.state.iteration = start_iteration
        engine.state.epoch = start_iteration // per_epoch

    engine.run(range(per_epoch), max_epochs=max_epochs)


def read(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_history_has_one_row_per_iteration(tmp_path):
    path = tmp_path / "history.csv"
    run(path, max_epochs=2)
    rows = read(path)
    assert [int(r["iteration"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    assert [int(r["epoch"]) for r in rows] == [1, 1, 1, 2, 2, 2]
    assert [float(r["loss"]) for r in rows] == [1, 2, 3, 4, 5, 6]


def test_resume_drops_rows_after_the_checkpoint_and_continues_the_clock(tmp_path):
    path = tmp_path / "history.csv"
    run(path, max_epochs=3)  # a run that flushed epoch 3 but whose last checkpoint was epoch 1
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    rows[3][3] = "100.00"  # the last row kept (iteration 3) says 100 s had elapsed
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(rows)

    run(path, max_epochs=3, start_iteration=3)
    rows = read(path)
    assert [int(r["iteration"]) for r in rows] == list(range(1, 10))
    assert all(float(r["seconds"]) >= 100 for r in rows[3:]), "seconds continue from the last kept row"


def test_resume_after_a_clean_end_keeps_everything(tmp_path):
    path = tmp_path / "history.csv"
    run(path, max_epochs=1)
    run(path, max_epochs=2, start_iteration=3)
    assert [int(r["iteration"]) for r in read(path)] == [1, 2, 3, 4, 5, 6]
