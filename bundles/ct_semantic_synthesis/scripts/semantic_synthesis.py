"""Semantic image synthesis for abdominal CT (Zhuang et al., DGM4MICCAI 2023): the algorithm in one module.

A CT slice is synthesized from a multi-organ label map (plus a "body" class, :mod:`scripts.slices`) by a DDPM that
sees the map in one of three ways (paper Fig. 2), all behind one call ``model(x_t, timesteps, label)``
(:class:`SemanticDiffusionModel`):

* ``conditional``:  the one-hot map ({-1, 1}) concatenated to ``x_t`` (Fig. 2a);
* ``mask_guided``:  the map through a separate U-Net-like guide encoder whose feature maps, taken before each
  downsampling, are concatenated into the main U-Net's encoder and decoder at the matching resolution (Fig. 2b,
  SPADE-like: :class:`GuidedDiffusionUNet`);
* ``edge_guided``:  the map concatenated and its semantic edge map ({-1, 1}) through the guide encoder (Fig. 2c);
* ``sdm``:          the SDM baseline, MONAI's ``SPADEDiffusionModelUNet`` with the one-hot map ({0, 1}) as its SPADE
  input.

Training follows improved DDPM (Nichol & Dhariwal 2021), as the paper says: T = 1000 linear betas, an extra output
channel per image channel that sets the reverse variance, and the hybrid loss L_simple + lambda L_vlb
(:class:`HybridLoss`, lambda = 0.001) on :class:`SemanticDiffusionPrepareBatch` batches. Sampling is ancestral with
the learned variance on a respaced schedule (:class:`LearnedVarianceScheduler`, :class:`LabelConditionedSampler`).
The posterior and variational-bound terms are :class:`common.diffusion.GaussianDiffusionTerms`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.engines import PrepareBatch
from monai.networks.blocks import Convolution
from monai.networks.nets.diffusion_model_unet import AttnMidBlock, DiffusionUNetResnetBlock, get_timestep_embedding
from monai.networks.schedulers import Scheduler
from torch import nn

from common.diffusion import GaussianDiffusionTerms, diffusion_target
from common.sampling import ConditionedPairSampler, ImageSampler
from common.training import noised
from common.transforms import encode_mask, mask_channels, semantic_edges

__all__ = [
    "CONDITIONINGS",
    "SEMANTIC_CONDITIONINGS",
    "conditioning_channels",
    "GuidedDiffusionUNet",
    "SemanticDiffusionModel",
    "build_semantic_model",
    "SemanticDiffusionPrepareBatch",
    "HybridLoss",
    "LearnedVarianceScheduler",
    "LabelConditionedSampler",
]


# --------------------------------------------------------------------------------------------------------------------
# the guided U-Net (Fig. 2)
# --------------------------------------------------------------------------------------------------------------------


CONDITIONINGS = ("conditional", "mask_guided", "edge_guided")


def conditioning_channels(conditioning: str, label_channels: int, image_channels: int = 1) -> dict[str, int]:
    """``in_channels`` and ``guide_channels`` of :class:`GuidedDiffusionUNet` for a conditioning name."""
    if conditioning not in CONDITIONINGS:
        raise ValueError(f"conditioning must be one of {CONDITIONINGS}, got '{conditioning}'.")
    if conditioning == "conditional":
        return {"in_channels": image_channels + label_channels, "guide_channels": 0}
    if conditioning == "mask_guided":
        return {"in_channels": image_channels, "guide_channels": label_channels}
    return {"in_channels": image_channels + label_channels, "guide_channels": 1}


def _conv(in_channels: int, out_channels: int, groups: int, strides: int = 1) -> Convolution:
    return Convolution(
        spatial_dims=2,
        in_channels=in_channels,
        out_channels=out_channels,
        strides=strides,
        kernel_size=3,
        act="SWISH",
        norm=("group", {"num_groups": groups}),
        adn_ordering="NDA",
    )


class _GuideEncoder(nn.Module):
    """The U-Net-like encoder of the guide: one feature map per resolution, taken before each downsampling."""

    def __init__(self, in_channels: int, channels: Sequence[int], groups: int) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_channels, channels[0], 3, padding=1)
        self.levels = nn.ModuleList(
            [nn.Sequential(_conv(c_in, c, groups), _conv(c, c, groups)) for c_in, c in zip(channels, channels)]
        )
        self.downs = nn.ModuleList(
            [_conv(c, c_next, groups, strides=2) for c, c_next in zip(channels[:-1], channels[1:])]
        )

    def forward(self, guide: torch.Tensor) -> list[torch.Tensor]:
        features, h = [], self.stem(guide)
        for i, level in enumerate(self.levels):
            h = level(h)
            features.append(h)
            if i < len(self.downs):
                h = self.downs[i](h)
        return features


class GuidedDiffusionUNet(nn.Module):
    """``(x, timesteps, guide=None) -> prediction``, a 2D diffusion U-Net with an optional guide branch.

    Args:
        in_channels: channels of ``x`` (the noisy image, plus any concatenated condition).
        out_channels: output channels (2 x image channels for a learned variance: epsilon and the interpolation).
        channels: width per resolution; each level but the last halves the resolution.
        guide_channels: channels of the guide map (0: no guide encoder).
        num_res_blocks: residual blocks per level in the encoder and the decoder.
        norm_num_groups: group-norm groups (must divide every width).
        num_head_channels: channels per attention head in the middle block.
        use_flash_attention: PyTorch's fused attention in the middle block (same function, less memory).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        channels: Sequence[int] = (32, 64, 64),
        guide_channels: int = 0,
        num_res_blocks: int = 1,
        norm_num_groups: int = 32,
        num_head_channels: int = 32,
        use_flash_attention: bool = False,
    ) -> None:
        super().__init__()
        channels = list(channels)
        if any(c % norm_num_groups for c in channels):
            raise ValueError(
                f"every width in channels {channels} must be divisible by norm_num_groups {norm_num_groups}."
            )
        self.channels = channels
        self.guide_channels = guide_channels
        temb = 4 * channels[0]
        self.time_embed = nn.Sequential(nn.Linear(channels[0], temb), nn.SiLU(), nn.Linear(temb, temb))
        self.conv_in = nn.Conv2d(in_channels, channels[0], 3, padding=1)
        self.guide = _GuideEncoder(guide_channels, channels, norm_num_groups) if guide_channels else None
        extra = channels if guide_channels else [0] * len(channels)

        def blocks(first_in: int, width: int) -> nn.ModuleList:
            return nn.ModuleList(
                [
                    DiffusionUNetResnetBlock(
                        2, first_in if k == 0 else width, temb, width, norm_num_groups=norm_num_groups
                    )
                    for k in range(num_res_blocks)
                ]
            )

        previous = [channels[0], *channels[:-1]]
        self.encoder = nn.ModuleList([blocks(p + g, c) for p, g, c in zip(previous, extra, channels)])
        self.downs = nn.ModuleList([nn.Conv2d(c, c, 3, stride=2, padding=1) for c in channels[:-1]])
        self.middle = AttnMidBlock(
            2,
            channels[-1],
            temb,
            norm_num_groups=norm_num_groups,
            num_head_channels=num_head_channels,
            use_flash_attention=use_flash_attention,
        )
        self.decoder = nn.ModuleList([blocks(2 * c + g, c) for c, g in zip(channels, extra)])
        self.ups = nn.ModuleList(
            [
                nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c, c_prev, 3, padding=1))
                for c_prev, c in zip(channels[:-1], channels[1:])
            ]
        )
        self.out = nn.Sequential(
            nn.GroupNorm(norm_num_groups, channels[0]), nn.SiLU(), nn.Conv2d(channels[0], out_channels, 3, padding=1)
        )
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, guide: torch.Tensor | None = None) -> torch.Tensor:
        if (guide is None) != (self.guide is None):
            raise ValueError(
                f"this network was built with guide_channels={self.guide_channels}: "
                + ("pass the guide map." if guide is None else "it takes no guide map.")
            )
        factor = 2 ** (len(self.channels) - 1)
        if x.shape[-1] % factor or x.shape[-2] % factor:
            raise ValueError(f"spatial size {tuple(x.shape[-2:])} must be divisible by {factor}.")
        emb = self.time_embed(get_timestep_embedding(timesteps, self.channels[0]).to(x.dtype))
        guides = self.guide(guide) if self.guide is not None else [None] * len(self.channels)
        h, skips = self.conv_in(x), []
        for level, resnets in enumerate(self.encoder):
            if guides[level] is not None:
                h = torch.cat([h, guides[level]], dim=1)
            for block in resnets:
                h = block(h, emb)
            skips.append(h)
            if level < len(self.downs):
                h = self.downs[level](h)
        h = self.middle(h, emb)
        for level in reversed(range(len(self.channels))):
            parts = [h, skips[level]] + ([guides[level]] if guides[level] is not None else [])
            h = torch.cat(parts, dim=1)
            for block in self.decoder[level]:
                h = block(h, emb)
            if level > 0:
                h = self.ups[level - 1](h)
        return self.out(h)


# --------------------------------------------------------------------------------------------------------------------
# the three conditionings and SDM behind one call
# --------------------------------------------------------------------------------------------------------------------


SEMANTIC_CONDITIONINGS = (*CONDITIONINGS, "sdm")


class SemanticDiffusionModel(nn.Module):
    """Wrap a denoiser so it takes ``(x_t, timesteps, label)``.

    Args:
        network: a :class:`GuidedDiffusionUNet` built for ``conditioning`` (see
            :func:`conditioning_channels`) or, for ``"sdm"``, a ``SPADEDiffusionModelUNet`` with
            ``label_nc = num_classes``.
        conditioning: one of :data:`SEMANTIC_CONDITIONINGS`.
        num_classes: classes of the label map (background and any extra "body" class included); a binary map is
            one {-1, 1} channel, more classes are one-hot (:func:`common.transforms.encode_mask`).
    """

    def __init__(self, network: nn.Module, conditioning: str, num_classes: int) -> None:
        super().__init__()
        if conditioning not in SEMANTIC_CONDITIONINGS:
            raise ValueError(f"conditioning must be one of {SEMANTIC_CONDITIONINGS}, got '{conditioning}'.")
        self.network = network
        self.conditioning = conditioning
        self.num_classes = num_classes

    def forward(self, x_t: torch.Tensor, timesteps: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        label = torch.as_tensor(label, device=x_t.device).long()
        one_hot = encode_mask(label, self.num_classes).to(x_t.dtype)
        if self.conditioning == "conditional":
            return self.network(torch.cat([x_t, one_hot], dim=1), timesteps)
        if self.conditioning == "mask_guided":
            return self.network(x_t, timesteps, guide=one_hot)
        if self.conditioning == "edge_guided":
            edges = semantic_edges(label).to(x_t.dtype) * 2 - 1
            return self.network(torch.cat([x_t, one_hot], dim=1), timesteps, guide=edges)
        return self.network(x_t, timesteps, seg=(one_hot + 1) / 2)


def build_semantic_model(
    conditioning: str,
    num_classes: int,
    channels: tuple[int, ...] = (32, 64, 64),
    num_res_blocks: int = 1,
    norm_num_groups: int = 32,
    num_head_channels: int = 32,
    learn_variance: bool = True,
    spade_intermediate_channels: int = 32,
    use_flash_attention: bool = False,
) -> SemanticDiffusionModel:
    """The denoiser of a conditioning at a given width: 2 output channels (epsilon + variance) with a learned variance.

    ``sdm`` uses MONAI's ``SPADEDiffusionModelUNet`` (attention at the lowest resolution, like the guided U-Net's
    middle block), the others :class:`GuidedDiffusionUNet`.
    """
    out_channels = 2 if learn_variance else 1
    if conditioning == "sdm":
        from monai.networks.nets import SPADEDiffusionModelUNet

        network: nn.Module = SPADEDiffusionModelUNet(
            spatial_dims=2,
            in_channels=1,
            out_channels=out_channels,
            label_nc=mask_channels(num_classes),
            num_res_blocks=num_res_blocks,
            channels=tuple(channels),
            attention_levels=tuple([False] * (len(channels) - 1) + [True]),
            norm_num_groups=norm_num_groups,
            num_head_channels=num_head_channels,
            spade_intermediate_channels=spade_intermediate_channels,
            use_flash_attention=use_flash_attention,
        )
    else:
        network = GuidedDiffusionUNet(
            out_channels=out_channels,
            channels=channels,
            num_res_blocks=num_res_blocks,
            norm_num_groups=norm_num_groups,
            num_head_channels=num_head_channels,
            use_flash_attention=use_flash_attention,
            **conditioning_channels(conditioning, mask_channels(num_classes)),
        )
    return SemanticDiffusionModel(network, conditioning, num_classes)


# --------------------------------------------------------------------------------------------------------------------
# training: improved DDPM's hybrid loss
# --------------------------------------------------------------------------------------------------------------------


class SemanticDiffusionPrepareBatch(PrepareBatch):
    """Label map -> image batches for :class:`SemanticDiffusionModel` (paper 004).

    Returns ``(x_t, target, (), {"timesteps", "label"})``. ``target`` is the noise (for a plain MSE) or, with
    ``hybrid=True``, the dict :class:`HybridLoss` needs: ``{"noise", "x0", "x_t", "timesteps"}``.
    """

    def __init__(self, scheduler: Any, hybrid: bool = True, antithetic: bool = True) -> None:
        self.scheduler = scheduler
        self.hybrid = hybrid
        self.antithetic = antithetic

    def __call__(self, batchdata: Mapping[str, Any], device=None, non_blocking: bool = False, **kwargs: Any):
        image = torch.as_tensor(batchdata["image"]).to(device=device, dtype=torch.float32, non_blocking=non_blocking)
        label = torch.as_tensor(batchdata["label"]).to(device=device, non_blocking=non_blocking).long()
        noisy, noise, timesteps = noised(self.scheduler, image, self.antithetic)
        target: Any = diffusion_target(self.scheduler, image, noise, timesteps)
        if self.hybrid:
            target = {"noise": noise, "x0": image, "x_t": noisy, "timesteps": timesteps}
        return noisy, target, (), {"timesteps": timesteps, "label": label}


class HybridLoss(nn.Module):
    """Improved DDPM's L_hybrid = L_simple + lambda * L_vlb for a network predicting (eps, variance) as 2C channels.

    ``forward(model_output, target)`` with ``target`` a dict (a MONAI ``SupervisedTrainer`` calls
    ``loss_function(pred, targets)``; the batch preparation must put these in ``targets``):

    * ``"noise"``: the true eps (B, C, ...); ``"x0"``: the clean data in [-1, 1]; ``"x_t"``: the noised input the
      network saw; ``"timesteps"``: the (B,) 0-based timesteps.

    Returns ``MSE(eps_pred, eps) + vlb_weight * scale * mean_b(L_t)`` where L_t is
    :meth:`GaussianDiffusionTerms.vlb_terms` (bits/dim) computed with the eps prediction detached, so that the VLB
    trains only the variance channels (improved DDPM's stop-gradient). L_vlb is the *sum* of the T terms L_0..L_{T-1},
    and with timesteps drawn uniformly T * L_t is its unbiased one-sample estimate, hence ``scale = T`` by default
    (``scale_vlb_by_timesteps=True``): for T = 1000 and lambda = 0.001 the VLB weight per sample is 1, exactly the
    ``num_timesteps / 1000`` rescaling of openai/improved-diffusion. ``scale_vlb_by_timesteps=False`` gives the literal
    ``MSE + vlb_weight * mean(L_t)`` (1000x weaker for T = 1000).

    Args:
        scheduler_or_betas: a scheduler with ``betas`` (the training scheduler) or the 1-D betas themselves.
        vlb_weight: lambda (the paper and improved DDPM: 0.001).
        scale_vlb_by_timesteps: multiply the per-sample VLB term by T (see above).
    """

    def __init__(self, scheduler_or_betas: Any, vlb_weight: float = 0.001, scale_vlb_by_timesteps: bool = True) -> None:
        super().__init__()
        if vlb_weight < 0:
            raise ValueError(f"vlb_weight must be >= 0, got {vlb_weight}.")
        if hasattr(scheduler_or_betas, "betas"):
            self.terms = GaussianDiffusionTerms.from_scheduler(scheduler_or_betas)
        else:
            self.terms = GaussianDiffusionTerms(scheduler_or_betas)
        self.vlb_weight = float(vlb_weight)
        self.scale_vlb_by_timesteps = bool(scale_vlb_by_timesteps)

    @property
    def vlb_multiplier(self) -> float:
        """The factor in front of mean_b(L_t): ``vlb_weight`` times T if ``scale_vlb_by_timesteps``."""
        return self.vlb_weight * (self.terms.num_timesteps if self.scale_vlb_by_timesteps else 1)

    def forward(self, model_output: torch.Tensor, target: dict[str, torch.Tensor]) -> torch.Tensor:
        missing = {"noise", "x0", "x_t", "timesteps"} - set(target)
        if missing:
            raise KeyError(f"HybridLoss target dict lacks {sorted(missing)}.")
        noise = target["noise"]
        channels = noise.shape[1]
        if model_output.shape[1] != 2 * channels:
            raise ValueError(
                f"model_output needs 2 x {channels} channels (eps, variance), got {model_output.shape[1]}."
            )
        eps_pred, v_output = torch.split(model_output, channels, dim=1)
        loss = F.mse_loss(eps_pred, noise)
        if self.vlb_multiplier == 0:
            return loss
        frozen = torch.cat([eps_pred.detach(), v_output], dim=1)
        vlb = self.terms.vlb_terms(frozen, target["x0"], target["x_t"], target["timesteps"])
        return loss + self.vlb_multiplier * vlb.mean()


# --------------------------------------------------------------------------------------------------------------------
# sampling: ancestral steps with the learned variance
# --------------------------------------------------------------------------------------------------------------------


class LearnedVarianceScheduler(Scheduler):
    """Ancestral DDPM sampling with improved DDPM's learned log-range variance and timestep respacing.

    The training chain (``betas``, ``alphas``, ``alphas_cumprod``; ``add_noise``) is MONAI's ``Scheduler``, so it is
    identical to a MONAI ``DDPMScheduler`` with the same schedule. ``set_timesteps(n)`` keeps the timesteps
    ``s_i = round(i (T - 1) / (n - 1))``, i = 0..n-1 (improved DDPM's single-section respacing: evenly from 0 to T-1
    inclusive; ``n = 1`` keeps T-1), and builds the respaced chain ``beta'_i = 1 - alpha_bar[s_i] / alpha_bar[s_{i-1}]``
    (alpha_bar[s_{-1}] = 1) in float64: ``step_betas``, ``step_alphas_cumprod`` (= alpha_bar at the kept timesteps)
    and ``step_terms`` (its :class:`GaussianDiffusionTerms`), so the posterior and the variance interpolation use the
    respaced beta' and beta_tilde'. With n = T it is the full chain. ``timesteps`` lists the kept *original* indices in
    descending order: they are what the network is given and what ``step`` takes.

    ``step(model_output, timestep, sample)`` expects 2C channels (eps, variance output in [-1, 1]) and returns
    ``(x_{t-1}, x0_estimate)``: the posterior mean from the eps prediction plus ``exp(0.5 log Sigma) z``, except at the
    last step (no noise). ``clip_sample`` clamps the x0 estimate to [-1, 1].
    """

    prediction_type = "epsilon"
    init_noise_sigma = 1.0

    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
        schedule: str = "linear_beta",
        clip_sample: bool = False,
        **schedule_args,
    ) -> None:
        if schedule in ("linear_beta", "scaled_linear_beta", "sigmoid_beta"):
            schedule_args.update(beta_start=beta_start, beta_end=beta_end)
        super().__init__(num_train_timesteps=num_train_timesteps, schedule=schedule, **schedule_args)
        self.clip_sample = bool(clip_sample)
        self.full_terms = GaussianDiffusionTerms(self.betas)
        self.set_timesteps(num_train_timesteps)

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        """Respace to ``num_inference_steps`` evenly spaced timesteps from T-1 down to 0 (see the class docstring)."""
        num_train = self.num_train_timesteps
        if not 1 <= num_inference_steps <= num_train:
            raise ValueError(f"num_inference_steps must be in [1, {num_train}], got {num_inference_steps}.")
        if num_inference_steps == 1:
            kept = torch.tensor([num_train - 1], dtype=torch.long)
        else:
            stride = (num_train - 1) / (num_inference_steps - 1)
            kept = torch.tensor([round(i * stride) for i in range(num_inference_steps)], dtype=torch.long)
        alpha_bar = self.full_terms.alphas_cumprod[kept]
        previous = torch.cat([alpha_bar.new_ones(1), alpha_bar[:-1]])
        self.num_inference_steps = num_inference_steps
        self.step_betas = 1.0 - alpha_bar / previous
        self.step_terms = GaussianDiffusionTerms(self.step_betas)
        self.step_alphas_cumprod = self.step_terms.alphas_cumprod
        self.kept_timesteps = kept
        self._step_index = {int(s): i for i, s in enumerate(kept.tolist())}
        self.timesteps = kept.flip(0).to(device)

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | torch.Tensor,
        sample: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One ancestral step from the original timestep ``timestep`` to the previous kept one."""
        original = int(timestep)
        if original not in self._step_index:
            raise ValueError(f"timestep {original} is not in the respaced schedule {self.kept_timesteps.tolist()}.")
        index = self._step_index[original]
        mean, log_var, x0 = self.step_terms.p_mean_log_variance(model_output, sample, index, clip_x0=self.clip_sample)
        if index == 0:
            return mean, x0
        noise = torch.randn(sample.shape, generator=generator, dtype=sample.dtype, device=sample.device)
        return mean + torch.exp(0.5 * log_var) * noise, x0


class LabelConditionedSampler(ConditionedPairSampler):
    """Images for given label maps with a ``model(x_t, t, label)``: pair ``i`` is the image for
    ``labels[i % len(labels)]``, written next to the label map it was made from."""

    def __init__(self, labels: Sequence[Any], scheduler: Any, num_inference_steps: int = 50, num_classes: int = 2):
        super().__init__(labels, num_classes)
        self.image_sampler = ImageSampler(scheduler, num_inference_steps)

    def images(self, model, labels, real_images, noise, indices) -> torch.Tensor:
        return self.image_sampler(lambda x_t, t: model(x_t, t, labels), noise)
