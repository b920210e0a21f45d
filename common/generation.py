"""Generate N paired samples to disk, resumably: the workflow behind every bundle's ``inference.json``.

Pair ``i`` is made from noise seeded by ``(seed, i)``, so a pair does not depend on which batch it fell in or on whether
the run was interrupted: a rerun after a kill generates exactly the missing pairs and reproduces the same files. The
datalist is written last and names only complete pairs.

:class:`PairGenerator` is the same job in the shape of a MONAI inference workflow (the ``evaluator`` the bundles'
``inference.json`` runs): a ``dataset`` of pair requests ``{"index": i}`` and an ``inferer``
(:class:`common.sampling.SamplingInferer`), so ``ConfigWorkflow(..., workflow_type="infer").check_properties()`` finds
every property MONAI defines for inference.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Sequence
from typing import Any, Callable

import numpy as np
import torch

from common.datalists import label_names
from common.errors import InputError
from common.progress import progress_iterable
from common.transforms import decode_mask, mask_channels
from common.writers import PairWriter

__all__ = ["PairGenerator", "generate_pairs", "pair_noise", "pair_requests", "validate_count"]

logger = logging.getLogger(__name__)

_SEED_STRIDE = 1_000_003


def validate_count(value: Any, key: str) -> int:
    """A positive integer from a config/CLI value, or an :class:`InputError` naming ``key``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < 1:
        raise InputError(f"'{key}' must be a positive integer, got {value!r}.")
    return int(value)


def pair_noise(indices: list[int], shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Standard normal noise of ``shape`` per pair index, reproducible per (seed, index) and on any device."""
    return torch.stack(
        [torch.randn(shape, generator=torch.Generator().manual_seed(seed * _SEED_STRIDE + i)) for i in indices]
    )


def _sampler_name(sampler: Any) -> str:
    """The sampler's class, also behind a :class:`common.sampling.SamplingInferer` (``inferer.pair_sampler``)."""
    inferer = getattr(sampler, "__self__", None)
    return type(getattr(inferer, "sampler", sampler)).__name__


def _affine_per_pair(affine: Any) -> Callable[[int], Any]:
    """Pair index -> its affine, from one affine for all pairs or a sequence of one per source pair (None entries:
    no geometry, identity)."""
    if isinstance(affine, (list, tuple)) and affine and (affine[0] is None or np.ndim(affine[0]) == 2):
        per_pair = list(affine)
        return lambda index: per_pair[index % len(per_pair)]
    return lambda index: affine


def pair_requests(num_pairs: int) -> list[dict[str, int]]:
    """The inference dataset: one request ``{"index": i}`` per pair to generate, ``i = 0 .. num_pairs - 1``."""
    return [{"index": i} for i in range(validate_count(num_pairs, "num_pairs"))]


def generate_pairs(
    model: torch.nn.Module,
    sampler: Callable[..., tuple[torch.Tensor, torch.Tensor]],
    output_dir: str,
    num_pairs: int | None = None,
    image_size: int | tuple[int, int] = 64,
    batch_size: int = 16,
    seed: int = 0,
    num_classes: int = 2,
    image_channels: int = 1,
    file_format: str = "png",
    affine: Any = None,
    intensity_window: Sequence[float] | None = None,
    device: str | torch.device | None = None,
    class_names: dict[str, str] | str | None = None,
    preview_pairs: int = 16,
    progress: bool = True,
    indices: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Sample ``num_pairs`` (mask, image) pairs, write them with :class:`PairWriter`, then a datalist and a preview.

    ``sampler(model, mask_noise, image_noise, indices=...)`` returns the continuous (mask, image) of those pair
    indices (see :mod:`common.sampling`). ``progress``: a bar with an ETA over the batches, at a terminal only
    (:mod:`common.progress`). ``class_names``: the classes' names for the datalist (a mapping or a JSON class map,
    :func:`common.datalists.label_names`). ``indices``: which pairs to generate (default ``0 .. num_pairs - 1``); the
    datalist names exactly these.

    ``affine``: the NIfTI geometry, one 4x4 for every pair or one per source pair (a sequence, pair ``i`` takes entry
    ``i mod len``: a conditioned sampler makes pair ``i`` for source pair ``i mod N``); ``intensity_window``: the
    window the model was trained with, so NIfTI images are written in its units (:class:`PairWriter`).

    Returns a summary: pairs requested, generated in this run, already present, paths and seconds per pair.
    """
    if indices is None:
        indices = range(validate_count(num_pairs, "num_pairs"))
    requested = sorted({int(i) for i in indices})
    if not requested or requested[0] < 0:
        raise InputError(f"the pairs to generate must be non-negative indices, got {list(indices)[:5]!r}.")
    num_pairs = len(requested)
    batch_size = validate_count(batch_size, "batch_size")
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    affine_of = _affine_per_pair(affine)
    writer = PairWriter(output_dir, file_format, num_classes, intensity_window=intensity_window)
    cleaned = writer.remove_partial() if os.path.isdir(output_dir) else 0
    missing = [i for i in requested if not writer.is_complete(i)]
    logger.info(
        "generating %d of %d pairs into %s (%d already complete, %d partial files removed)",
        len(missing),
        num_pairs,
        output_dir,
        num_pairs - len(missing),
        cleaned,
    )
    model = model.to(device).eval()
    start = time.perf_counter()
    num_batches = math.ceil(len(missing) / batch_size)
    for b in progress_iterable(range(num_batches), num_batches, "generating", progress):
        indices = missing[b * batch_size : (b + 1) * batch_size]
        mask_noise = pair_noise(indices, (mask_channels(num_classes), *size), seed).to(device)
        image_noise = pair_noise(indices, (image_channels, *size), seed + 1).to(device)
        masks, images = sampler(model, mask_noise, image_noise, indices=indices)
        if masks is None:
            raise InputError(
                f"the sampler {_sampler_name(sampler)} generates images without masks; it cannot write pairs."
            )
        labels = decode_mask(masks).cpu()
        images = images.clamp(-1.0, 1.0).cpu()
        for j, index in enumerate(indices):
            writer.write(index, images[j], labels[j], affine=affine_of(index))
        elapsed = time.perf_counter() - start
        done = b * batch_size + len(indices)
        logger.info(
            "batch %d/%d: %d/%d pairs, %.1f s (%.2f s/pair)",
            b + 1,
            num_batches,
            done,
            len(missing),
            elapsed,
            elapsed / done,
        )
    written = writer.write_index(
        requested,
        label_names(num_classes, class_names),
        description=f"{num_pairs} synthetic pairs, seed {seed}",
        preview_pairs=preview_pairs,
    )
    seconds = time.perf_counter() - start
    summary = {
        "num_pairs": num_pairs,
        "generated": len(missing),
        "already_complete": num_pairs - len(missing),
        "output_dir": os.path.abspath(output_dir),
        **{key: os.path.abspath(path) for key, path in written.items()},
        "seconds": round(seconds, 2),
        "seconds_per_pair": round(seconds / max(len(missing), 1), 3),
    }
    logger.info("generation done: %s", summary)
    return summary


class PairGenerator:
    """The inference workflow's engine: generates the pairs of ``dataset`` (:func:`pair_requests`) with ``inferer``
    (:class:`common.sampling.SamplingInferer`) and ``network``; ``run()`` is :func:`generate_pairs` over them, with
    ``settings`` its other arguments (output_dir, image_size, batch_size, seed, file_format, ...)."""

    def __init__(self, network: torch.nn.Module, inferer: Any, dataset: Sequence[dict[str, int]], **settings: Any):
        try:
            self.indices = [int(request["index"]) for request in dataset]
        except (KeyError, TypeError, ValueError) as error:
            raise InputError(
                f"'dataset' must hold pair requests {{'index': i}} (pair_requests), got {error}."
            ) from None
        self.network = network
        self.inferer = inferer
        self.settings = settings

    def run(self) -> dict[str, Any]:
        return generate_pairs(self.network, self.inferer.pair_sampler, indices=self.indices, **self.settings)
