"""The rank-splitting rule of common.distributed, checked without a process group by faking rank and world size."""

from __future__ import annotations

import torch

from common import distributed
from common.training import iteration_loader, sample_timesteps


def as_rank(monkeypatch, rank: int, world: int) -> None:
    monkeypatch.setattr(distributed, "rank", lambda: rank)
    monkeypatch.setattr(distributed, "world_size", lambda: world)


def test_not_distributed_is_plain():
    assert distributed.world_size() == 1 and distributed.rank() == 0 and distributed.is_main_process()
    net = torch.nn.Linear(2, 2)
    assert distributed.wrap_ddp(net) is net
    assert distributed.local_device() == torch.device("cuda:0" if torch.cuda.is_available() else "cpu")


def test_rank_batches_are_shares_of_the_single_process_global_batches(monkeypatch):
    dataset = list(range(100))
    as_rank(monkeypatch, 0, 1)
    single = [b.tolist() for b in iteration_loader(dataset, batch_size=6, iterations_per_epoch=5, seed=3)]
    shares = []
    for r in range(3):
        as_rank(monkeypatch, r, 3)
        shares.append([b.tolist() for b in iteration_loader(dataset, batch_size=2, iterations_per_epoch=5, seed=3)])
    assert len(single) == 5 and all(len(batch) == 2 for rank_batches in shares for batch in rank_batches)
    for k, batch in enumerate(single):
        assert [batch[i] for i in range(6)] == [shares[i % 3][k][i // 3] for i in range(6)]


def test_random_draws_are_split_by_rank(monkeypatch):
    torch.manual_seed(0)
    whole = sample_timesteps(8, 1000, antithetic=True)
    assert torch.equal(whole[:4], 999 - whole[4:])
    rows = []
    for r in range(2):
        as_rank(monkeypatch, r, 2)
        torch.manual_seed(0)
        rows.append(sample_timesteps(4, 1000, antithetic=True))
    assert torch.equal(torch.stack(rows, 1).flatten(), whole)


def test_non_main_ranks_drop_log_writers(monkeypatch, tmp_path):
    from monai.handlers import StatsHandler, TensorBoardStatsHandler

    from common.handlers import handlers_for_rank

    ema, stats, board = object(), StatsHandler(), TensorBoardStatsHandler(log_dir=str(tmp_path))
    assert handlers_for_rank([ema, stats, board]) == [ema, stats, board]
    as_rank(monkeypatch, 1, 2)
    assert handlers_for_rank([ema, stats, board]) == [ema]
    assert not list(tmp_path.glob("events.out.tfevents.*")), "rank 1 left an event file"
