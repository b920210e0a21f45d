"""Micro-batching: one optimiser step on a batch whose activations never all live in memory at once.

A training step's peak memory is dominated by the activations kept for backward, which grow with the batch. Splitting
the prepared batch into chunks, running forward + backward per chunk with the loss weighted by the chunk's share, and
stepping the optimiser once gives the whole batch's gradient (up to float rounding) when

* the loss is a mean over samples of equally sized per-sample terms (MSE, the diffusion losses here), and
* no layer couples samples in the forward pass (GroupNorm, LayerNorm and attention are per sample; BatchNorm is not,
  and is refused).

Unlike MONAI's ``SupervisedTrainer(accumulation_steps=...)``, which accumulates over *engine iterations*, this keeps
one iteration = one optimiser step = one batch, so iteration budgets, EMA horizons, loss histories and checkpoints mean
the same with and without it. Timesteps and noise are drawn for the whole batch by ``prepare_batch`` before the split.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
from monai.engines.utils import IterationEvents
from monai.utils import CommonKeys as Keys
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = [
    "MicroBatchIteration",
    "accumulate_gradients",
    "split_along_batch",
    "map_tensors",
    "check_sample_independent",
]


def map_tensors(function: Callable[[torch.Tensor], Any], value: Any) -> Any:
    """``function`` applied to every tensor inside ``value`` (tuples, lists, dicts); anything else passed through."""
    if isinstance(value, torch.Tensor):
        return function(value)
    if isinstance(value, (list, tuple)):
        return type(value)(map_tensors(function, v) for v in value)
    if isinstance(value, dict):
        return {k: map_tensors(function, v) for k, v in value.items()}
    return value


def split_along_batch(value: Any, batch_size: int, start: int, stop: int) -> Any:
    """``value[start:stop]`` for every tensor of ``batch_size`` samples inside ``value``; anything else (scalars,
    per-batch constants) is passed whole to every chunk."""
    return map_tensors(lambda t: t[start:stop] if t.dim() > 0 and t.shape[0] == batch_size else t, value)


def _concatenate(parts: list[Any]) -> Any:
    first = parts[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(parts)
    if isinstance(first, (list, tuple)):
        return type(first)(_concatenate(list(group)) for group in zip(*parts))
    if isinstance(first, dict):
        return {k: _concatenate([p[k] for p in parts]) for k in first}
    return first


def check_sample_independent(network: torch.nn.Module) -> None:
    """Refuse networks whose forward pass mixes samples: their micro-batched gradient would differ."""
    for name, module in network.named_modules():
        if isinstance(module, _BatchNorm):
            raise ValueError(
                f"micro_batch_size needs a network without batch-coupled layers; '{name}' is "
                f"{type(module).__name__} (use GroupNorm/InstanceNorm or set micro_batch_size to null)."
            )


def accumulate_gradients(
    forward: Callable[..., Any],
    loss_function: Callable[[Any, torch.Tensor], torch.Tensor],
    inputs: torch.Tensor,
    targets: torch.Tensor,
    args: tuple = (),
    kwargs: dict | None = None,
    micro_batch_size: int | None = None,
    backward: Callable[[torch.Tensor], None] = torch.Tensor.backward,
    no_sync: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> tuple[Any, torch.Tensor]:
    """Forward + backward of ``loss_function(forward(inputs, *args, **kwargs), targets).mean()`` in chunks of
    ``micro_batch_size`` samples (the whole batch when ``None``), gradients summing to the whole batch's.

    Returns the (detached, re-assembled) prediction and the whole batch's loss. ``no_sync`` is entered for every chunk
    but the last, so a DistributedDataParallel network all-reduces its gradients once per step.
    """
    kwargs = kwargs or {}
    batch_size = inputs.shape[0]
    size = batch_size if micro_batch_size is None else micro_batch_size
    if size < 1:
        raise ValueError(f"micro_batch_size must be a positive number of samples, got {micro_batch_size}.")
    bounds = [(start, min(start + size, batch_size)) for start in range(0, batch_size, size)]
    predictions, total = [], inputs.new_zeros(())
    for index, (start, stop) in enumerate(bounds):
        chunk = [split_along_batch(v, batch_size, start, stop) for v in (inputs, targets, args, kwargs)]
        last = index == len(bounds) - 1
        with contextlib.nullcontext() if last else no_sync():
            prediction = forward(chunk[0], *chunk[2], **chunk[3])
            loss = loss_function(prediction, chunk[1]).mean() * ((stop - start) / batch_size)
            backward(loss)
        predictions.append(map_tensors(torch.Tensor.detach, prediction))
        total = total + loss.detach()
    return _concatenate(predictions), total


class MicroBatchIteration:
    """``iteration_update`` for a MONAI ``SupervisedTrainer``: its iteration, with forward + backward in chunks of
    ``micro_batch_size`` samples and one optimiser step (see the module docstring for when this is exact).

    ``micro_batch_size=None`` (or at least the batch size) runs the trainer's own iteration unchanged. The engine's
    events fire once per iteration, as in MONAI's: ``FORWARD_COMPLETED`` and ``LOSS_COMPLETED`` after the last chunk,
    with the whole batch's prediction and loss in ``engine.state.output``.
    """

    def __init__(self, micro_batch_size: int | None) -> None:
        if micro_batch_size is not None and micro_batch_size < 1:
            raise ValueError(f"micro_batch_size must be a positive number of samples or null, got {micro_batch_size}.")
        self.micro_batch_size = micro_batch_size
        self._checked = False

    def __call__(self, engine: Any, batchdata: Any) -> dict:
        if self.micro_batch_size is None:
            return engine._iteration(engine, batchdata)
        if batchdata is None:
            raise ValueError("Must provide batch data for current iteration.")
        if getattr(engine, "accumulation_steps", 1) > 1:
            raise ValueError("micro_batch_size and the trainer's accumulation_steps cannot be combined; use one.")
        if not self._checked:
            check_sample_independent(engine.network)
            self._checked = True
        batch = engine.prepare_batch(batchdata, engine.state.device, engine.non_blocking, **engine.to_kwargs)
        inputs, targets, args, kwargs = (*batch, (), {}) if len(batch) == 2 else batch
        engine.state.output = {Keys.IMAGE: inputs, Keys.LABEL: targets}
        engine.network.train()
        engine.optimizer.zero_grad(set_to_none=engine.optim_set_to_none)
        scaler = engine.scaler if engine.amp else None

        def forward(x, *a, **k):
            with torch.autocast("cuda", **engine.amp_kwargs) if scaler is not None else contextlib.nullcontext():
                return engine.inferer(x, engine.network, *a, **k)

        prediction, loss = accumulate_gradients(
            forward,
            engine.loss_function,
            inputs,
            targets,
            args,
            kwargs,
            self.micro_batch_size,
            backward=(lambda value: scaler.scale(value).backward()) if scaler is not None else torch.Tensor.backward,
            no_sync=getattr(engine.network, "no_sync", contextlib.nullcontext),
        )
        engine.state.output[Keys.PRED] = prediction
        engine.fire_event(IterationEvents.FORWARD_COMPLETED)
        engine.state.output[Keys.LOSS] = loss
        engine.fire_event(IterationEvents.LOSS_COMPLETED)
        engine.fire_event(IterationEvents.BACKWARD_COMPLETED)
        if scaler is not None:
            scaler.step(engine.optimizer)
            scaler.update()
        else:
            engine.optimizer.step()
        engine.fire_event(IterationEvents.MODEL_COMPLETED)
        return engine.state.output
