"""The sampler protocol every bundle's sampler implements, and the generic reverse-diffusion loops they share.

A *pair sampler* turns noise into pairs: ``sampler(model, mask_noise, image_noise, indices) -> (mask, image)``,
where ``indices`` are the pair numbers being generated (pair ``i`` is a function of ``(seed, i)`` only, see
:func:`common.generation.generate_pairs`), ``mask`` is the encoded mask ((B, C, H, W) in {-1, 1} or continuous, None
for an image-only model) and ``image`` the image in [-1, 1]. :func:`common.generation.generate_pairs` and
:class:`common.handlers.PairPreviewHandler` drive any object of this shape, so a method only writes its sampler:

* PIG's paired sampler (Alg. 2) and DiffuseExpand's two-phase sampler make the mask and the image from noise;
* :class:`ConditionedPairSampler` is the base of every sampler that makes an image *for a real pair* (a real mask,
  label map, edge map or prompt) and writes it with that pair's real label: PIG's mask-conditioned baseline, CT's
  label-map synthesis, DiffBoost's versions, Pix2Pix.

The loops work with any object that has ``set_timesteps``, ``timesteps``, ``alphas_cumprod`` and
``step(model_output, t, sample)``: MONAI's DDIM/DDPM and diffusers' schedulers (whose ``step`` returns an object with
``prev_sample``). Each stream gets its own copy of the scheduler, because multistep solvers keep a history.
"""

from __future__ import annotations

import abc
import copy
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from monai.inferers import Inferer

from common.errors import InputError
from common.transforms import encode_mask

__all__ = [
    "PairSampler",
    "SamplingInferer",
    "scheduler_step",
    "stream_scheduler",
    "timestep_batch",
    "ImageSampler",
    "ConditionedPairSampler",
]


@runtime_checkable
class PairSampler(Protocol):
    """What :func:`common.generation.generate_pairs` calls: noise of the pairs ``indices`` in, ``(mask, image)`` out."""

    def __call__(
        self,
        model: torch.nn.Module,
        mask_noise: torch.Tensor,
        image_noise: torch.Tensor,
        indices: Sequence[int] | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor]: ...


class SamplingInferer(Inferer):
    """A pair sampler in MONAI's ``Inferer`` shape (the bundles' ``inferer`` property): ``inferer(inputs, network)``
    where ``inputs`` is ``(mask_noise, image_noise)`` and ``indices`` names the pairs, as a MONAI workflow calls an
    inferer; :class:`common.generation.PairGenerator` drives it."""

    def __init__(self, sampler: PairSampler) -> None:
        if not isinstance(sampler, PairSampler):
            raise InputError(f"'sampler' must be a pair sampler (common.sampling.PairSampler), got {sampler!r}.")
        super().__init__()
        self.sampler = sampler

    def __call__(  # type: ignore[override]
        self,
        inputs: tuple[torch.Tensor, torch.Tensor],
        network: torch.nn.Module,
        indices: Sequence[int] | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        mask_noise, image_noise = inputs
        return self.sampler(network, mask_noise, image_noise, indices=indices)

    def pair_sampler(
        self,
        model: torch.nn.Module,
        mask_noise: torch.Tensor,
        image_noise: torch.Tensor,
        indices: Sequence[int] | None = None,
    ) -> tuple[torch.Tensor | None, torch.Tensor]:
        """This inferer in the pair-sampler call (:class:`PairSampler`), as generation drives samplers."""
        return self((mask_noise, image_noise), model, indices=indices)


def scheduler_step(
    scheduler: Any, model_output: torch.Tensor, timestep: torch.Tensor, sample: torch.Tensor
) -> torch.Tensor:
    """x_{t-1} from a scheduler's ``step``, whichever return convention it has (MONAI tuple or diffusers output)."""
    out = scheduler.step(model_output, timestep, sample)
    if isinstance(out, tuple):
        return out[0]
    return out.prev_sample


def stream_scheduler(scheduler: Any, num_inference_steps: int, device: torch.device) -> Any:
    """A private copy of ``scheduler`` set to ``num_inference_steps``: one per stream and per sampling run."""
    if num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}.")
    copied = copy.deepcopy(scheduler)
    copied.set_timesteps(num_inference_steps, device=device)
    return copied


def timestep_batch(t: Any, like: torch.Tensor) -> torch.Tensor:
    """The timestep ``t`` repeated for every sample of the batch ``like`` (what the networks take)."""
    return torch.full((like.shape[0],), int(t), device=like.device, dtype=torch.long)


class ImageSampler:
    """Single-stream reverse diffusion: ``denoiser(x_t, t) -> model output`` from noise to x_0 with any scheduler."""

    def __init__(self, scheduler: Any, num_inference_steps: int = 50) -> None:
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}.")
        self.scheduler = scheduler
        self.num_inference_steps = num_inference_steps

    @torch.no_grad()
    def __call__(self, denoiser: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], noise: torch.Tensor):
        scheduler = stream_scheduler(self.scheduler, self.num_inference_steps, noise.device)
        sample = noise * getattr(scheduler, "init_noise_sigma", 1.0)
        for t in scheduler.timesteps:
            sample = scheduler_step(scheduler, denoiser(sample, timestep_batch(t, sample)), t, sample)
        return sample


class ConditionedPairSampler(abc.ABC):
    """Base of the samplers that make pair ``i`` from real pair :meth:`source` ``(i)`` and keep its real label.

    Pair ``i`` comes from real pair ``(i // repeats) % len(labels)``: with ``repeats`` 1 generating N pairs cycles
    through the real pairs (the PIG paper fed its baselines the training masks that way); DiffBoost makes ``repeats``
    versions of every real image in a row. Subclasses implement :meth:`images`; ``images`` (the real images) are
    kept only when a subclass needs them (edge maps of the real image, Pix2Pix from edges).

    Args:
        labels: real label maps (class indices), each (1, H, W).
        num_classes: classes of the label maps (how the returned masks are encoded).
        images: the real images, (1, H, W) each, or None.
        repeats: consecutive pairs made from each real pair.
    """

    def __init__(
        self, labels: Sequence[Any], num_classes: int = 2, images: Sequence[Any] | None = None, repeats: int = 1
    ) -> None:
        if len(labels) == 0:
            raise InputError(f"{type(self).__name__} needs at least one label map.")
        if images is not None and len(images) != len(labels):
            raise InputError(f"{type(self).__name__} got {len(labels)} label maps but {len(images)} images.")
        if isinstance(repeats, bool) or not isinstance(repeats, (int, np.integer)) or repeats < 1:
            raise InputError(f"'repeats' must be a positive integer, got {repeats!r}.")
        self.labels = torch.stack([torch.as_tensor(np.asarray(m)) for m in labels]).long()
        self.real_images = (
            None if images is None else torch.stack([torch.as_tensor(np.asarray(x, np.float32)) for x in images])
        )
        self.num_classes = num_classes
        self.repeats = int(repeats)

    def source(self, index: int) -> int:
        """The real pair that pair ``index`` is made from."""
        return (index // self.repeats) % len(self.labels)

    @abc.abstractmethod
    def images(
        self,
        model: Any,
        labels: torch.Tensor,
        real_images: torch.Tensor | None,
        noise: torch.Tensor,
        indices: Sequence[int],
    ) -> torch.Tensor:
        """The images of pairs ``indices`` from their real pairs' ``labels`` (and ``real_images``) and ``noise``."""

    @torch.no_grad()
    def __call__(
        self, model: Any, mask_noise: torch.Tensor, image_noise: torch.Tensor, indices: Sequence[int] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        indices = list(range(image_noise.shape[0]) if indices is None else indices)
        chosen = [self.source(i) for i in indices]
        device = image_noise.device
        labels = self.labels[chosen].to(device)
        real = None if self.real_images is None else self.real_images[chosen].to(device)
        images = self.images(model, labels, real, image_noise, indices)
        return encode_mask(labels, self.num_classes).to(images.dtype), images
