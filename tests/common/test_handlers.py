"""LossHistoryHandler: one row per iteration, also across a resume that repeats iterations after the checkpoint;
TrainingCheckpointer: how many checkpoints it keeps; EMAHandler: a resumed run continues the momentum warm-up, and the
power schedule averages the run so far with EDM2's weights."""

from __future__ import annotations

import csv

import pytest
import torch
from ignite.engine import Engine, Events
from ignite.handlers import EMAHandler as IgniteEMAHandler

from common.errors import InputError
from common.handlers import EMAHandler, LossHistoryHandler, TrainingCheckpointer


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


def checkpointed_run(ckpt_dir, max_epochs: int, **kwargs) -> list[str]:
    """Train a one-parameter model ``max_epochs`` epochs with a TrainingCheckpointer; the checkpoint files left."""
    network = torch.nn.Linear(1, 1)
    optimizer = torch.optim.SGD(network.parameters(), lr=0.1)
    engine = Engine(lambda engine, batch: {"loss": 0.0})
    TrainingCheckpointer(str(ckpt_dir), network, optimizer, **kwargs).attach(engine)
    engine.run(range(2), max_epochs=max_epochs)
    return sorted(p.name for p in ckpt_dir.glob("checkpoint_*.pt"))


@pytest.mark.parametrize(
    "n_saved, kept",
    [(1, [4]), (2, [3, 4]), (None, [1, 2, 3, 4])],
)
def test_checkpointer_keeps_the_n_saved_latest_also_across_a_resume(tmp_path, n_saved, kept):
    ckpt_dir = tmp_path / "models"
    checkpointed_run(ckpt_dir, 2, n_saved=n_saved)  # a first run, then a resumed one that knows nothing of its files
    assert checkpointed_run(ckpt_dir, 4, n_saved=n_saved) == [f"checkpoint_epoch={e}.pt" for e in kept]
    assert (ckpt_dir / "model.pt").is_file()


@pytest.mark.parametrize("n_saved", [0, -1, 1.5, True])
def test_checkpointer_refuses_a_bad_n_saved(tmp_path, n_saved):
    with pytest.raises(InputError, match="'n_saved'"):
        TrainingCheckpointer(str(tmp_path), torch.nn.Linear(1, 1), None, n_saved=n_saved)


LINEAR_WARMUP = {"momentum": 0.001, "momentum_warmup": 0.1, "warmup_iters": 5}


def ema_momenta(
    handler_class, max_epochs: int, start_iteration: int = 0, per_epoch: int = 3, settings: dict = LINEAR_WARMUP
) -> list[float]:
    """The EMA momentum used at every iteration of a run that starts (resumes) at ``start_iteration``."""
    engine = Engine(lambda engine, batch: None)
    handler_class(torch.nn.Linear(1, 1), **settings).attach(engine)

    @engine.on(Events.STARTED)
    def restore(engine):
        engine.state.iteration = start_iteration
        engine.state.epoch = start_iteration // per_epoch

    momenta = []
    engine.add_event_handler(Events.ITERATION_COMPLETED, lambda e: momenta.append(e.state.ema_momentum))
    engine.run(range(per_epoch), max_epochs=max_epochs)
    return momenta


def test_ema_warmup_follows_the_trainer_iteration_across_a_resume():
    uninterrupted = ema_momenta(EMAHandler, max_epochs=3)
    assert uninterrupted == ema_momenta(IgniteEMAHandler, max_epochs=3)  # same schedule as ignite's in one run
    assert uninterrupted[0] == pytest.approx(0.1) and uninterrupted[4:] == pytest.approx([0.001] * 5)
    resumed = ema_momenta(EMAHandler, max_epochs=3, start_iteration=3)
    assert resumed == pytest.approx(uninterrupted[3:])
    # ignite's own handler restarts the warm-up after a resume: the case this class exists for
    assert ema_momenta(IgniteEMAHandler, max_epochs=3, start_iteration=3)[0] == pytest.approx(0.1)


def test_power_ema_is_the_power_function_average_of_the_run_so_far():
    """EDM2's schedule: after t iterations the EMA weights iteration s by (s^(p+1) - (s-1)^(p+1)) / t^(p+1) (these
    sum to one), whatever t is; here the weight takes the value s at iteration s."""
    power, iterations = 3.0, 12
    model = torch.nn.Linear(1, 1, bias=False)
    handler = EMAHandler(model, momentum=1e-9, power=power)
    engine = Engine(lambda engine, batch: model.weight.data.fill_(float(engine.state.iteration)))
    handler.attach(engine)
    engine.run(range(iterations), max_epochs=1)
    s = torch.arange(1, iterations + 1, dtype=torch.float64)
    weights = (s ** (power + 1) - (s - 1) ** (power + 1)) / iterations ** (power + 1)
    assert handler.ema_model.weight.item() == pytest.approx(float((weights * s).sum()), rel=1e-6)


def test_power_ema_momentum_is_floored_and_continues_across_a_resume():
    def momenta(start_iteration: int) -> list[float]:
        power = {"momentum": 0.45, "power": 7}
        return ema_momenta(EMAHandler, max_epochs=4, start_iteration=start_iteration, per_epoch=5, settings=power)

    uninterrupted = momenta(0)
    assert uninterrupted[0] == 1.0  # the first average is the network itself
    assert uninterrupted[12] == pytest.approx(1 - (1 - 1 / 13) ** 8)  # 0.473, falling with the iteration
    assert uninterrupted[13:] == [0.45] * 7  # floored at momentum from iteration 14 (1 - (13/14)^8 = 0.447)
    assert momenta(10) == pytest.approx(uninterrupted[10:])


@pytest.mark.parametrize("bad", [{"power": 7, "momentum_warmup": 0.1, "warmup_iters": 5}, {"power": -1}])
def test_power_ema_rejects_conflicting_or_negative_settings(bad):
    with pytest.raises(ValueError, match="'power'"):
        EMAHandler(torch.nn.Linear(1, 1), momentum=0.001, **bad)
