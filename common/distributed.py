"""Multi-process training under ``torchrun`` (DDP), used by every bundle's ``configs/multi_gpu_train.json`` overlay.

One rule makes a run with N processes equal to a one-process run on the same global batch: every random draw a
training step makes (the batch indices, timesteps, noise, task coins) is drawn for the GLOBAL batch, identically on
every rank (same seed, same call order), and each rank keeps its rows ``rank::world_size``. With one process these
helpers reduce to the plain draws, so single-process training is unchanged. Rank 0 alone writes logs, previews and
checkpoints (ignite's savers already save on rank 0 only; :func:`common.handlers.handlers_for_rank` drops the log
writers elsewhere).
NCCL on GPUs, gloo on CPU.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import Sampler

__all__ = [
    "world_size",
    "rank",
    "is_main_process",
    "init_process_group",
    "destroy_process_group",
    "local_device",
    "wrap_ddp",
    "draw_global",
    "GlobalBatchSampler",
]


def world_size() -> int:
    """Number of training processes (1 when not distributed)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank (0 when not distributed)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main_process() -> bool:
    """True on the process that writes files and logs."""
    return rank() == 0


def init_process_group(backend: str | None = None) -> None:
    """Join the ``torchrun`` process group (env:// rendezvous): NCCL with CUDA, gloo on CPU. No-op if already joined
    or when not launched by torchrun (``WORLD_SIZE`` unset), so the overlay also runs as a single process."""
    if dist.is_initialized() or "WORLD_SIZE" not in os.environ:
        return
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend=backend)


def destroy_process_group() -> None:
    """Leave the process group (the overlay's ``finalize``); no-op when not distributed."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def local_device() -> torch.device:
    """``cuda:LOCAL_RANK`` with CUDA, else the CPU."""
    if torch.cuda.is_available():
        return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
    return torch.device("cpu")


def wrap_ddp(network: torch.nn.Module, find_unused_parameters: bool = False) -> torch.nn.Module:
    """``DistributedDataParallel`` around ``network`` when distributed (weights broadcast from rank 0), else as is.

    Only the trainer gets the wrapper: the optimizer, EMA and checkpointer keep the plain module, whose parameters
    are the same tensors, so checkpoints stay loadable by single-process inference.
    """
    if world_size() == 1:
        return network
    device = next(network.parameters()).device
    device_ids = [device] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(
        network, device_ids=device_ids, find_unused_parameters=find_unused_parameters
    )


def draw_global(draw: Callable[[int], Any], local_batch: int) -> Any:
    """``draw(n)`` for the global batch of ``local_batch * world_size`` rows, keeping this rank's rows.

    ``draw`` returns a tensor or array whose first axis is the batch. Every rank makes the same draw (same seed and
    call order), so the union of the ranks' rows is exactly what one process with the global batch would draw.
    """
    world = world_size()
    if world == 1:
        return draw(local_batch)
    return draw(local_batch * world)[rank() :: world]


class GlobalBatchSampler(Sampler[int]):
    """Indices drawn uniformly (or in proportion to ``weights``) with replacement for ``iterations`` global batches
    of ``batch_size * world_size``; this rank yields positions ``rank::world_size`` of the global stream, so its k-th
    batch of ``batch_size`` is its share of global batch k (the DDP counterpart of ``RandomSampler(replacement=True)``).
    Every epoch draws anew from the seeded generator."""

    def __init__(
        self,
        dataset_size: int,
        batch_size: int,
        iterations: int,
        seed: int | None = None,
        weights: Sequence[float] | None = None,
    ) -> None:
        if dataset_size < 1:
            raise ValueError("the training dataset is empty.")
        if weights is not None and (len(weights) != dataset_size or min(weights) < 0 or not sum(weights) > 0):
            raise ValueError(f"'weights' must be {dataset_size} non-negative numbers with a positive sum.")
        self.weights = torch.as_tensor(weights, dtype=torch.float64) if weights is not None else None
        self.dataset_size = dataset_size
        self.batch_size = batch_size
        self.iterations = iterations
        self.generator = torch.Generator().manual_seed(seed) if seed is not None else None

    def __len__(self) -> int:
        return self.batch_size * self.iterations

    def __iter__(self):
        world = world_size()
        total = self.batch_size * world * self.iterations
        if self.weights is None:
            stream = torch.randint(self.dataset_size, (total,), generator=self.generator)
        else:  # item i drawn with probability weights[i] / sum(weights)
            stream = torch.multinomial(self.weights, total, replacement=True, generator=self.generator)
        return iter(stream[rank() :: world].tolist())
