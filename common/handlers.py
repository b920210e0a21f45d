"""Ignite handlers shared by the bundles' training configs.

* :class:`TrainingCheckpointer` checkpoints (atomically, with ignite's ``Checkpoint``) and resumes (reading the
  checkpoint once) the engine it is attached to, so a config can save the trainer's own state (iteration,
  optimizer) without the circular reference ``trainer -> handlers -> trainer``.
* :class:`EMAHandler` is ignite's EMA whose momentum follows the trainer's iteration (a resumed run continues the
  warm-up instead of starting it again), optionally as a power-function average that scales with the run's length.
* :class:`LossHistoryHandler` keeps a CSV of the loss per iteration with wall-clock time (loss curves for the notes).
* :class:`PairPreviewHandler` samples a few pairs every few epochs and saves a preview grid: the "validation samples"
  of a generator, which a person can look at while it trains.
* :func:`handlers_for_rank` keeps the log and preview writers on rank 0 under DDP (``multi_gpu_train.json``).
"""

from __future__ import annotations

import csv
import glob
import logging
import os
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any, Callable

import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint, DiskSaver
from ignite.handlers import EMAHandler as _IgniteEMAHandler

from common.distributed import is_main_process
from common.errors import InputError, OutputError, first_line
from common.generation import pair_noise
from common.transforms import decode_mask, mask_channels
from common.writers import atomic_path, save_preview_grid

__all__ = [
    "EMAHandler",
    "TrainingCheckpointer",
    "LossHistoryHandler",
    "PairPreviewHandler",
    "latest_checkpoint",
    "handlers_for_rank",
]

logger = logging.getLogger(__name__)


def _checkpoints_by_epoch(ckpt_dir: str, prefix: str = "checkpoint") -> list[str]:
    """Paths of the ``<prefix>_epoch=N.pt`` checkpoints in ``ckpt_dir``, oldest epoch first."""
    found = []
    for path in glob.glob(os.path.join(ckpt_dir, f"{prefix}_*.pt")):
        match = re.search(r"=(\d+)\.pt$", path)
        if match:
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def latest_checkpoint(ckpt_dir: str, prefix: str = "checkpoint") -> str | None:
    """Path of the checkpoint with the highest epoch (``<prefix>_epoch=N.pt``) in ``ckpt_dir``, or None."""
    paths = _checkpoints_by_epoch(ckpt_dir, prefix)
    return paths[-1] if paths else None


class _AtomicDiskSaver(DiskSaver):
    """ignite's atomic ``DiskSaver`` (temp file + rename: a kill or a full disk never leaves a truncated checkpoint
    under the real name; MONAI's ``CheckpointSaver`` writes in place) whose write failures name the file."""

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        try:
            super().__call__(checkpoint, filename, metadata)
        except Exception as exc:
            path = os.path.join(self.dirname, filename)
            raise OutputError(f"could not write checkpoint '{path}' ({first_line(exc)}); is the disk full?") from exc


def _load_resumable(path: str, network: torch.nn.Module) -> Mapping:
    """The checkpoint left in ``ckpt_dir``, read once, after checking it is plain weights of this very network."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InputError(f"checkpoint '{path}' could not be read ({first_line(exc)}); delete it to restart.") from exc
    weights = state.get("network") if isinstance(state, Mapping) else None
    expected = network.state_dict()
    if not isinstance(weights, Mapping) or {k: tuple(v.shape) for k, v in weights.items()} != {
        k: tuple(v.shape) for k, v in expected.items()
    }:
        raise InputError(
            f"checkpoint '{path}' in ckpt_dir was written by a different network configuration; "
            "choose another ckpt_dir or set resume to false."
        )
    return state


class EMAHandler(_IgniteEMAHandler):
    """``ignite.handlers.EMAHandler`` whose momentum follows the trainer's iteration, with an optional power-function
    schedule.

    ignite schedules its linear warm-up by counting its own calls, which start from zero in every process: a run resumed
    from a checkpoint (the EMA weights restored with it) would warm up again, weighting the newest weights by up to
    ``momentum_warmup`` (0.1) instead of ``momentum`` (0.001), so the shipped EMA weights of a resumed run would differ
    from an uninterrupted one. Here the warm-up is indexed by ``engine.state.iteration``.

    ``power`` replaces the linear warm-up by the power-function average of Karras et al. 2024 (EDM2):
    ``momentum_t = max(momentum, 1 - (1 - 1/t) ** (power + 1))`` at iteration t, which weights iteration s by about
    ``(s / t) ** power``: the average spans a fixed fraction of the run so far (relative width ~0.1 at power 7), so a
    300-iteration CPU run and a 100k-iteration GPU run both average over their own recent past. A constant momentum of
    0.001 instead averages over the last ~1000 iterations, most of a short run, and keeps its early, poor weights.
    ``momentum`` stays the floor (reached at t ~ (power + 1) / momentum).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        momentum: float = 0.0002,
        momentum_warmup: float | None = None,
        warmup_iters: int | None = None,
        power: float | None = None,
        handle_buffers: str = "copy",
    ) -> None:
        if power is not None and (momentum_warmup is not None or warmup_iters is not None):
            raise ValueError("EMAHandler: give 'power' or 'momentum_warmup' + 'warmup_iters', not both.")
        if power is not None and not power >= 0:
            raise ValueError(f"EMAHandler: 'power' must be >= 0, got {power}.")
        super().__init__(model, momentum, momentum_warmup, warmup_iters, handle_buffers)
        self.power = power

    def attach(self, engine: Engine, name: str = "ema_momentum", warn_if_exists: bool = True, event=None) -> None:
        event = Events.ITERATION_COMPLETED if event is None else event
        engine.add_event_handler(event, self._follow_iteration, name)  # registered first: runs before ignite's update
        super().attach(engine, name=name, warn_if_exists=warn_if_exists, event=event)

    def _follow_iteration(self, engine: Engine, name: str) -> None:
        if self.power is not None:
            iteration = max(engine.state.iteration, 1)
            setattr(engine.state, name, max(self.momentum, 1.0 - (1.0 - 1.0 / iteration) ** (self.power + 1)))
        scheduler = getattr(self, "momentum_scheduler", None)
        if scheduler is not None:
            scheduler.event_index = engine.state.iteration - 1  # the scheduler adds one, then reads its value


class TrainingCheckpointer:
    """Save network + optimizer + trainer state (+ ``extra``, e.g. the EMA weights) every ``save_interval`` epochs,
    keeping the ``n_saved`` latest (None: all, e.g. to score every epoch afterwards); save ``final_model`` (default:
    the trained network; pass the EMA copy to ship EMA weights) alone as ``final_filename`` when training completes;
    resume from the last full checkpoint when ``resume`` and one exists.

    Every file is written to a temporary name and renamed, so a killed run resumes from its last complete checkpoint.
    Under DDP only rank 0 writes; every rank resumes.
    """

    def __init__(
        self,
        ckpt_dir: str,
        network: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        save_interval: int = 1,
        resume: bool = True,
        final_filename: str = "model.pt",
        final_model: torch.nn.Module | None = None,
        extra: dict[str, Any] | None = None,
        n_saved: int | None = 1,
    ) -> None:
        if n_saved is not None and (isinstance(n_saved, bool) or not isinstance(n_saved, int) or n_saved < 1):
            raise InputError(
                f"'n_saved' (checkpoints to keep) must be a positive integer or None (all), got {n_saved!r}."
            )
        self.ckpt_dir = ckpt_dir
        self.n_saved = n_saved
        self.network = network
        self.optimizer = optimizer
        self.save_interval = save_interval
        self.resume = resume
        self.final_filename = final_filename
        self.final_model = final_model
        self.extra = extra or {}

    def attach(self, engine: Engine) -> None:
        # MONAI engines attach handlers before they set engine.network, hence network/optimizer as arguments
        state = {"network": self.network, "optimizer": self.optimizer, "trainer": engine, **self.extra}
        previous = latest_checkpoint(self.ckpt_dir) if self.resume else None
        if previous is not None:
            checkpoint = _load_resumable(previous, self.network)
            logger.info("resuming from %s", previous)
            engine.add_event_handler(Events.STARTED, self._restore, state, checkpoint, previous)
        saver = Checkpoint(
            state,
            _AtomicDiskSaver(self.ckpt_dir, require_empty=False, atomic=True),
            filename_pattern="checkpoint_epoch={global_step}.{ext}",
            n_saved=self.n_saved,
            global_step_transform=lambda engine, _: engine.state.epoch,
        )
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=max(1, int(self.save_interval))), saver)
        engine.add_event_handler(Events.EPOCH_COMPLETED(every=max(1, int(self.save_interval))), self.prune)
        engine.add_event_handler(Events.COMPLETED, self.save_final)

    @staticmethod
    def _restore(engine: Engine, state: dict[str, Any], checkpoint: Mapping, path: str) -> None:
        """Load every object's state when the run starts; the configured max_epochs wins over the saved one."""
        max_epochs = engine.state.max_epochs
        Checkpoint.load_objects(to_load=state, checkpoint=checkpoint)
        if max_epochs is not None and engine.state.epoch > max_epochs:
            raise InputError(
                f"checkpoint '{path}' has {engine.state.epoch} epochs, more than max_epochs={max_epochs}; "
                "raise max_epochs or choose another ckpt_dir."
            )
        engine.state.max_epochs = max_epochs

    def prune(self, engine: Engine) -> None:
        """Keep the ``n_saved`` newest checkpoints, also counting those a killed earlier run left (which ignite's own
        bookkeeping does not know about)."""
        if not is_main_process() or self.n_saved is None:
            return
        for path in _checkpoints_by_epoch(self.ckpt_dir)[: -self.n_saved]:
            os.remove(path)

    def save_final(self, engine: Engine) -> None:
        """The shipped weights alone (a bare state dict, what inference loads), written atomically on rank 0."""
        if not is_main_process():
            return
        model = self.final_model or self.network
        path = os.path.join(self.ckpt_dir, self.final_filename)
        try:
            with atomic_path(path) as tmp:
                torch.save(getattr(model, "module", model).state_dict(), tmp)
        except OSError as exc:
            raise OutputError(f"could not write '{path}' ({first_line(exc)}); is the disk full?") from exc


class LossHistoryHandler:
    """Append ``iteration,epoch,loss,seconds`` per iteration to a CSV, flushed every epoch.

    On resume the history continues: rows a killed run wrote after its last checkpoint (iterations this run trains
    again) are dropped once, atomically, and ``seconds`` carries on from the last kept row: one run.
    """

    HEADER = ("iteration", "epoch", "loss", "seconds")

    def __init__(self, path: str, output_transform: Callable[[Any], float] | None = None) -> None:
        self.path = path
        self.output_transform = output_transform or (
            lambda out: out[0]["loss"] if isinstance(out, list) else out["loss"]
        )
        self._rows: list[tuple] = []
        self._start = time.perf_counter()
        self._seconds_offset = 0.0
        self._reconciled = False

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._record)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self._flush)

    def _record(self, engine: Engine) -> None:
        if not self._reconciled:
            self._reconcile(first_iteration=engine.state.iteration)
        loss = self.output_transform(engine.state.output)
        loss = float(loss.item() if torch.is_tensor(loss) else loss)
        seconds = self._seconds_offset + time.perf_counter() - self._start
        self._rows.append((engine.state.iteration, engine.state.epoch, f"{loss:.6f}", f"{seconds:.2f}"))

    def _reconcile(self, first_iteration: int) -> None:
        """Keep only the existing rows before ``first_iteration`` (the first iteration this run records)."""
        self._reconciled = True
        if not os.path.exists(self.path):
            return
        with open(self.path, newline="") as f:
            rows = [row for row in csv.reader(f)][1:]
        kept = [row for row in rows if len(row) == len(self.HEADER) and int(row[0]) < first_iteration]
        if kept:
            self._seconds_offset = float(kept[-1][3])
        if len(kept) != len(rows):
            with atomic_path(self.path) as tmp, open(tmp, "w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(self.HEADER)
                writer.writerows(kept)

    def _flush(self, engine: Engine) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        new_file = not os.path.exists(self.path)
        with open(self.path, "a", newline="") as f:
            writer = csv.writer(f)
            if new_file:
                writer.writerow(self.HEADER)
            writer.writerows(self._rows)
        self._rows.clear()


class PairPreviewHandler:
    """Every ``interval`` epochs, sample ``num_pairs`` fixed-seed pairs with ``model`` (the network being trained, or
    its EMA copy to see what will ship) and save a preview grid."""

    def __init__(
        self,
        model: torch.nn.Module,
        sampler: Callable,
        path_pattern: str,
        image_size: int = 64,
        num_classes: int = 2,
        image_channels: int = 1,
        num_pairs: int = 8,
        interval: int = 1,
        seed: int = 0,
    ) -> None:
        self.sampler = sampler
        self.model = model
        self.path_pattern = path_pattern
        self.size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        self.num_classes = num_classes
        self.image_channels = image_channels
        self.num_pairs = num_pairs
        self.interval = interval
        self.seed = seed

    def attach(self, engine: Engine) -> None:
        if self.interval > 0 and self.num_pairs > 0:
            engine.add_event_handler(Events.EPOCH_COMPLETED(every=self.interval), self)

    @torch.no_grad()
    def __call__(self, engine: Engine) -> None:
        network = self.model
        was_training = network.training
        network.eval()
        device = next(network.parameters()).device
        indices = list(range(self.num_pairs))
        mask_noise = pair_noise(indices, (mask_channels(self.num_classes), *self.size), self.seed).to(device)
        image_noise = pair_noise(indices, (self.image_channels, *self.size), self.seed + 1).to(device)
        # an ancestral sampler draws from the global RNG: keep training's random stream as if no preview ran
        # (previews on or off, and on rank 0 only under DDP, never change what training draws)
        devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            masks, images = self.sampler(getattr(network, "module", network), mask_noise, image_noise, indices=indices)
        path = self.path_pattern.format(epoch=engine.state.epoch)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        labels = decode_mask(masks).cpu() if masks is not None else torch.zeros_like(images[:, :1], dtype=torch.long)
        save_preview_grid(
            path, images.clamp(-1, 1).cpu(), labels, num_classes=self.num_classes, max_pairs=self.num_pairs
        )
        logger.info("preview of %d sampled pairs written to %s", self.num_pairs, path)
        network.train(was_training)


def _log_writers() -> tuple[type, ...]:
    from monai.handlers import MLFlowHandler, StatsHandler, TensorBoardStatsHandler

    from common.progress import TrainingProgress

    return (
        StatsHandler,
        TensorBoardStatsHandler,
        MLFlowHandler,
        LossHistoryHandler,
        PairPreviewHandler,
        TrainingProgress,
    )


def handlers_for_rank(handlers: Sequence[Any]) -> list[Any]:
    """The handlers this rank attaches: all on rank 0; elsewhere all but the log/preview writers (EMA and the
    checkpointer stay: every rank must resume from the checkpoint, and ignite saves on rank 0 only)."""
    if is_main_process():
        return list(handlers)
    writers = _log_writers()
    for handler in handlers:
        if isinstance(handler, writers):
            _discard_event_file(handler)
    return [h for h in handlers if not isinstance(h, writers)]


def _discard_event_file(handler: Any) -> None:
    """A TensorBoard handler opens its event file when constructed; close and delete this process's empty one."""
    writer = getattr(handler, "_writer", None)
    if writer is None or not getattr(handler, "internal_writer", False):
        return
    writer.close()
    for path in glob.glob(os.path.join(writer.log_dir, f"events.out.tfevents.*.{os.getpid()}.*")):
        os.remove(path)
