"""Pix2Pix (Isola et al., CVPR 2017): the conditional-GAN baseline that maps a label map or an edge map to an image.

Two bundles compare their diffusion models against it: the abdominal-CT semantic synthesis bundle (one-hot label map
-> CT slice, paper Table 2) and DiffBoost (edge map -> image, paper Table I). Both need the same thing, a generator
that turns a condition into an image in [-1, 1], so it lives here once and is built from MONAI pieces:

* generator: a 2D MONAI ``UNet`` followed by ``tanh`` (:func:`build_generator`); instance norm rather than the paper's
  batch norm, which is what batch norm does at the paper's batch size 1 and keeps results independent of the batch;
* discriminator: a conditional PatchGAN, MONAI ``PatchDiscriminator`` on ``cat[condition, image]``
  (:func:`build_discriminator`, :func:`discriminate`);
* loss: :class:`Pix2PixLoss`, the paper's objective, MONAI ``PatchAdversarialLoss`` (BCE by default) plus
  ``l1_weight`` (100) times the L1 distance to the real image;
* :func:`train_pix2pix` (a fixed number of alternating Adam steps), :func:`save_pix2pix` /
  :func:`load_pix2pix_generator`, :func:`generate_with_pix2pix`, and :func:`fit_pix2pix` (train once, then load).

What the generator sees is up to the caller: ``condition_fn(labels, images)`` builds it from a batch, e.g.
:func:`mask_condition` for label maps, :func:`edge_condition` (Canny edges of the image) for DiffBoost.
"""

from __future__ import annotations

import inspect
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.data import Dataset
from monai.losses import PatchAdversarialLoss
from monai.networks.nets import PatchDiscriminator, UNet
from torch import nn

from common.errors import InputError
from common.sampling import ConditionedPairSampler
from common.training import iteration_loader, training_items
from common.transforms import encode_mask, mask_channels
from common.writers import atomic_path

__all__ = [
    "CRITERIA",
    "build_generator",
    "build_discriminator",
    "discriminate",
    "mask_condition",
    "edge_condition",
    "Pix2PixLoss",
    "train_pix2pix",
    "save_pix2pix",
    "load_pix2pix_generator",
    "generate_with_pix2pix",
    "fit_pix2pix",
    "fit_label_to_image",
    "Pix2PixSampler",
]

logger = logging.getLogger(__name__)

CRITERIA = ("bce", "least_squares", "hinge")

ConditionFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _positive_int(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InputError(f"'{key}' must be a positive integer, got {value!r}.")
    return int(value)


# --------------------------------------------------------------------------------------------------------------------
# networks
# --------------------------------------------------------------------------------------------------------------------


def build_generator(
    in_channels: int,
    out_channels: int = 1,
    channels: Sequence[int] = (32, 64, 128, 256),
    num_res_units: int = 1,
    dropout: float = 0.0,
) -> nn.Sequential:
    """``nn.Sequential(UNet, Tanh)``: a 2D MONAI U-Net (stride 2 per level) whose output lies in [-1, 1].

    ``dropout`` (pix2pix: 0.5) is MONAI's, applied in every block and only in training mode. Images must be
    multiples of ``2 ** (len(channels) - 1)`` pixels on each side.
    """
    channels = tuple(_positive_int(c, "channels") for c in channels)
    if len(channels) < 2:
        raise InputError(f"'channels' must list at least two levels, got {channels!r}.")
    if not 0.0 <= float(dropout) < 1.0:
        raise InputError(f"'dropout' must be in [0, 1), got {dropout!r}.")
    unet = UNet(
        spatial_dims=2,
        in_channels=_positive_int(in_channels, "in_channels"),
        out_channels=_positive_int(out_channels, "out_channels"),
        channels=channels,
        strides=(2,) * (len(channels) - 1),
        num_res_units=int(num_res_units),
        dropout=float(dropout),
    )
    return nn.Sequential(unet, nn.Tanh())


def build_discriminator(in_channels: int, channels: int = 32, num_layers_d: int = 3) -> PatchDiscriminator:
    """Conditional PatchGAN: MONAI ``PatchDiscriminator`` (2D, batch norm, LeakyReLU 0.2) giving one logit per patch.

    ``in_channels`` = condition channels + image channels, since it judges ``cat[condition, image]``
    (:func:`discriminate`). With the defaults a 64x64 input gives 6x6 patch logits, a 32x32 input 2x2.
    """
    return PatchDiscriminator(
        spatial_dims=2,
        in_channels=_positive_int(in_channels, "in_channels"),
        channels=_positive_int(channels, "channels"),
        num_layers_d=_positive_int(num_layers_d, "num_layers_d"),
        out_channels=1,
    )


def discriminate(discriminator: nn.Module, condition: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """Patch logits (B, 1, h, w) of ``discriminator`` on ``cat[condition, image]``.

    ``PatchDiscriminator`` returns its intermediate features with the logits last; a network returning a tensor
    works too.
    """
    out = discriminator(torch.cat([condition, image], dim=1))
    return out[-1] if isinstance(out, (list, tuple)) else out


def mask_condition(num_classes: int = 2) -> ConditionFn:
    """A ``condition_fn`` for label-map -> image: the encoded mask (1 channel {-1, 1} if binary, else one-hot)."""

    def condition(labels: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        return encode_mask(labels, num_classes).to(images.device)

    return condition


def edge_condition(edge_detector: Callable[[torch.Tensor], torch.Tensor]) -> ConditionFn:
    """A ``condition_fn`` for edge map -> image (DiffBoost Table I): ``edge_detector(images)``, 1 channel.

    Pass the DiffBoost generator's own detector (Canny or HED, ``scripts.edges``), so both models are asked to rebuild
    an image from the same input.
    """

    def condition(labels: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return edge_detector(images)

    return condition


def _downsampling(generator: nn.Module) -> int:
    factor = 1
    for module in generator.modules():
        if isinstance(module, UNet):
            factor = max(factor, int(np.prod([int(np.max(s)) for s in module.strides])))
    return factor


def _check_size(generator: nn.Module, height: int, width: int) -> None:
    factor = _downsampling(generator)
    if height % factor or width % factor:
        raise InputError(
            f"image size {height}x{width} must be a multiple of {factor} on each side for this generator "
            f"(its U-Net downsampling factor); choose another image size or fewer 'channels'."
        )


# --------------------------------------------------------------------------------------------------------------------
# loss
# --------------------------------------------------------------------------------------------------------------------


class Pix2PixLoss(nn.Module):
    """The pix2pix objective on patch logits.

    * generator: ``adv(D(c, G(c)) -> real) + l1_weight * |G(c) - x|_1`` (mean over pixels);
    * discriminator: ``0.5 * (adv(D(c, x) -> real) + adv(D(c, G(c).detach()) -> fake))``.

    ``adv`` is MONAI ``PatchAdversarialLoss``: ``"bce"`` (the paper's, sigmoid + BCE = BCE with logits, mean over
    patches), ``"least_squares"`` (on raw logits, targets 1/0) or ``"hinge"``.
    """

    def __init__(self, l1_weight: float = 100.0, criterion: str = "bce") -> None:
        super().__init__()
        if (
            isinstance(l1_weight, bool)
            or not isinstance(l1_weight, (int, float, np.integer, np.floating))
            or not l1_weight >= 0.0
        ):
            raise InputError(f"'l1_weight' must be a number >= 0, got {l1_weight!r}.")
        if criterion not in CRITERIA:
            raise InputError(f"'criterion' must be one of {', '.join(map(repr, CRITERIA))}, got {criterion!r}.")
        self.l1_weight = float(l1_weight)
        self.adversarial = PatchAdversarialLoss(criterion=criterion, no_activation_leastsq=True)

    def generator_loss(
        self, fake_logits: torch.Tensor, fake: torch.Tensor, real: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """``{"loss", "adversarial", "l1"}``; ``loss`` = adversarial + l1_weight * l1 is minimised by G."""
        adversarial = self.adversarial(fake_logits, target_is_real=True, for_discriminator=False)
        l1 = torch.mean(torch.abs(fake - real))
        return {"loss": adversarial + self.l1_weight * l1, "adversarial": adversarial, "l1": l1}

    def discriminator_loss(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
        """Half the sum of the real and fake terms (the paper halves D's objective to slow D relative to G)."""
        real = self.adversarial(real_logits, target_is_real=True, for_discriminator=True)
        fake = self.adversarial(fake_logits, target_is_real=False, for_discriminator=True)
        return 0.5 * (real + fake)


# --------------------------------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------------------------------


def _condition(condition_fn: ConditionFn, labels: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    condition = torch.as_tensor(condition_fn(labels, images)).to(device=images.device, dtype=torch.float32)
    batch, _, height, width = images.shape
    if condition.ndim != 4 or condition.shape[0] != batch or tuple(condition.shape[2:]) != (height, width):
        raise InputError(
            f"'condition_fn' must return (B, C, H, W) = ({batch}, C, {height}, {width}), got {tuple(condition.shape)}."
        )
    return condition


def train_pix2pix(
    generator: nn.Module,
    discriminator: nn.Module,
    pairs: Sequence[Mapping[str, Any]],
    condition_fn: ConditionFn,
    iterations: int,
    batch_size: int = 16,
    lr: float = 2e-4,
    betas: tuple[float, float] = (0.5, 0.999),
    l1_weight: float = 100.0,
    seed: int = 0,
    device: str | torch.device = "cpu",
    log_every: int = 250,
    criterion: str = "bce",
) -> dict[str, float]:
    """Train both networks in place for exactly ``iterations`` alternating Adam steps (D, then G) on paired batches.

    ``pairs`` hold ``"image"`` (1, H, W) in [-1, 1] and ``"label"`` (1, H, W) class indices; batches are drawn with
    replacement by :func:`common.training.iteration_loader`, so the budget does not depend on the dataset size.
    ``condition_fn(labels (B,1,H,W) long, images (B,1,H,W) float) -> (B, C, H, W)`` is the generator's input.

    A plain loop rather than MONAI's ``GanTrainer``: that engine feeds the generator latent codes from
    ``g_prepare_batch(num_latents, ...)`` and calls ``g_loss_function(fake)`` without the batch, so neither the
    condition nor the real image for the L1 term reaches the generator step except through side channels.
    The loader order and dropout draw from ``seed`` (global RNG state is restored afterwards), so a fixed seed and
    fixed initial weights give identical weights. Returns the means over the last 10 % of steps of
    ``generator_loss`` (adversarial + l1_weight * L1), ``adversarial_loss``, ``discriminator_loss`` and ``l1``, and
    the wall time in ``seconds``; both networks are left in eval mode.
    """
    if not pairs:
        raise InputError("no training pairs for pix2pix: 'pairs' is empty.")
    iterations = _positive_int(iterations, "iterations")
    batch_size = _positive_int(batch_size, "batch_size")
    if not callable(condition_fn):
        raise InputError(f"'condition_fn' must be callable, got {type(condition_fn).__name__}.")
    loss = Pix2PixLoss(l1_weight=l1_weight, criterion=criterion)
    device = torch.device(device)
    generator = generator.to(device).train()
    discriminator = discriminator.to(device).train()
    g_optimizer = torch.optim.Adam(generator.parameters(), lr=lr, betas=tuple(betas))
    d_optimizer = torch.optim.Adam(discriminator.parameters(), lr=lr, betas=tuple(betas))
    loader = iteration_loader(Dataset(data=training_items(pairs)), batch_size, iterations, seed=seed)
    history: dict[str, list[float]] = {"generator_loss": [], "adversarial_loss": [], "discriminator_loss": [], "l1": []}
    checked = False
    start = time.perf_counter()
    rng_devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=rng_devices):
        torch.manual_seed(seed)
        for step, batch in enumerate(loader, start=1):
            images = torch.as_tensor(batch["image"]).to(device=device, dtype=torch.float32)
            labels = torch.as_tensor(batch["label"]).to(device=device).long()
            condition = _condition(condition_fn, labels, images)
            if not checked:
                _check_size(generator, *images.shape[2:])
                checked = True
            fake = generator(condition)

            discriminator.requires_grad_(True)
            d_optimizer.zero_grad(set_to_none=True)
            d_loss = loss.discriminator_loss(
                discriminate(discriminator, condition, images), discriminate(discriminator, condition, fake.detach())
            )
            d_loss.backward()
            d_optimizer.step()

            discriminator.requires_grad_(False)  # G's step needs gradients through D, not for D's weights
            g_optimizer.zero_grad(set_to_none=True)
            g_terms = loss.generator_loss(discriminate(discriminator, condition, fake), fake, images)
            g_terms["loss"].backward()
            g_optimizer.step()

            history["generator_loss"].append(float(g_terms["loss"].detach()))
            history["adversarial_loss"].append(float(g_terms["adversarial"].detach()))
            history["discriminator_loss"].append(float(d_loss.detach()))
            history["l1"].append(float(g_terms["l1"].detach()))
            if log_every and step % log_every == 0:
                logger.info(
                    "pix2pix iteration %d/%d G %.4f D %.4f L1 %.4f",
                    step,
                    iterations,
                    history["generator_loss"][-1],
                    history["discriminator_loss"][-1],
                    history["l1"][-1],
                )
    discriminator.requires_grad_(True)
    generator.eval()
    discriminator.eval()
    tail = max(1, iterations // 10)
    result = {key: float(np.mean(values[-tail:])) for key, values in history.items()}
    result["seconds"] = time.perf_counter() - start
    return result


# --------------------------------------------------------------------------------------------------------------------
# save, load, generate
# --------------------------------------------------------------------------------------------------------------------


def save_pix2pix(generator: nn.Module, path: str | os.PathLike, **config: Any) -> None:
    """Save the generator's weights with the :func:`build_generator` keyword arguments that rebuild it (atomic).

    ``config`` is checked against :func:`build_generator` now, so a wrong key fails here rather than at load time.
    """
    try:
        inspect.signature(build_generator).bind(**config)
    except TypeError as exc:
        raise InputError(f"pix2pix generator config {config!r} does not fit build_generator ({exc}).") from exc
    config = {k: list(v) if isinstance(v, (tuple, list)) else v for k, v in config.items()}
    payload = {"config": config, "state_dict": generator.state_dict()}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_pix2pix_generator(path: str | os.PathLike, device: str | torch.device = "cpu") -> nn.Module:
    """A generator saved by :func:`save_pix2pix`, in eval mode on ``device``."""
    if not os.path.isfile(path):
        raise InputError(f"pix2pix generator weights '{os.fspath(path)}' do not exist.")
    payload = torch.load(path, map_location="cpu", weights_only=True)
    generator = build_generator(**payload["config"])
    generator.load_state_dict(payload["state_dict"])
    return generator.to(torch.device(device)).eval()


def generate_with_pix2pix(
    generator: nn.Module, conditions: Any, batch_size: int = 16, device: str | torch.device = "cpu"
) -> torch.Tensor:
    """Images (N, C_out, H, W) in [-1, 1] on the CPU for conditions (N, C, H, W), in eval mode without gradients.

    The generator's training/eval mode is restored afterwards.
    """
    batch_size = _positive_int(batch_size, "batch_size")
    x = conditions if isinstance(conditions, torch.Tensor) else torch.as_tensor(np.asarray(conditions))
    if x.ndim != 4:
        raise InputError(f"'conditions' must have shape (N, C, H, W), got {tuple(x.shape)}.")
    _check_size(generator, *x.shape[2:])
    device = torch.device(device)
    was_training = generator.training
    generator = generator.to(device).eval()
    try:
        with torch.no_grad():
            out = [
                generator(x[i : i + batch_size].to(device=device, dtype=torch.float32)).cpu()
                for i in range(0, len(x), batch_size)
            ]
    finally:
        generator.train(was_training)
    if not out:
        unets = [m for m in generator.modules() if isinstance(m, UNet)]
        channels = unets[0].out_channels if unets else 1
        return torch.zeros((0, channels, *x.shape[2:]), dtype=torch.float32)
    return torch.cat(out)


def fit_pix2pix(
    path: str | os.PathLike,
    pairs: Sequence[Mapping[str, Any]],
    condition_fn: ConditionFn,
    condition_channels: int,
    iterations: int,
    channels: Sequence[int] = (32, 64, 128, 256),
    discriminator_channels: int = 32,
    batch_size: int = 16,
    lr: float = 2e-4,
    l1_weight: float = 100.0,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> nn.Module:
    """A condition -> image pix2pix: loaded from ``path`` when it exists (a rerun does not retrain), else trained on
    ``pairs`` with ``condition_fn`` (``condition_channels`` channels) and saved there. Returns the generator in eval
    mode."""
    if os.path.isfile(path):
        logger.info("pix2pix generator found at %s; not retraining.", os.fspath(path))
        return load_pix2pix_generator(path, device)
    config = {"in_channels": int(condition_channels), "out_channels": 1, "channels": list(channels)}
    torch.manual_seed(seed)
    generator = build_generator(**config)
    discriminator = build_discriminator(config["in_channels"] + 1, channels=discriminator_channels)
    stats = train_pix2pix(
        generator,
        discriminator,
        pairs,
        condition_fn,
        iterations=iterations,
        batch_size=batch_size,
        lr=lr,
        l1_weight=l1_weight,
        seed=seed,
        device=device,
    )
    logger.info("pix2pix trained: %s", {k: round(v, 4) for k, v in stats.items()})
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    save_pix2pix(generator, path, **config)
    return generator


def fit_label_to_image(
    path: str | os.PathLike, pairs: Sequence[Mapping[str, Any]], num_classes: int, iterations: int, **kwargs: Any
) -> nn.Module:
    """:func:`fit_pix2pix` from the encoded label map (:func:`mask_condition`); ``kwargs`` as there."""
    condition = mask_condition(num_classes)
    return fit_pix2pix(path, pairs, condition, mask_channels(num_classes), iterations, **kwargs)


class Pix2PixSampler(ConditionedPairSampler):
    """The pair-sampler protocol (:mod:`common.sampling`) for a condition -> image generator.

    Pair ``i`` is the image made from real pair ``i % len(labels)``: from its encoded label map by default, or from
    ``condition_fn(labels, images)`` (e.g. :func:`edge_condition`, which needs ``images``); the written pair keeps the
    real label. The noise is ignored: pix2pix without dropout at test time is deterministic.
    """

    def __init__(
        self,
        labels: Sequence[Any],
        num_classes: int,
        images: Sequence[Any] | None = None,
        condition_fn: ConditionFn | None = None,
    ) -> None:
        if condition_fn is not None and images is None:
            raise InputError("Pix2PixSampler: a 'condition_fn' needs the real 'images' it is computed from.")
        super().__init__(labels, num_classes, images)
        self.condition_fn = condition_fn or mask_condition(num_classes)

    def images(self, model, labels, real_images, noise, indices) -> torch.Tensor:
        images = torch.zeros_like(noise) if real_images is None else real_images
        return model(_condition(self.condition_fn, labels, images).to(noise.dtype))
