"""DiffBoost (Zhang et al., IEEE TMI 2024): text- and edge-guided diffusion augmentation, the algorithm in one module.

* **Generator**: :class:`TextEdgeDiffusionModel`, ``model(x_t, timesteps, tokens, edges)``. The prompt tokens
  ("modality, organ, category" + augmentation phrases, :mod:`scripts.text_conditioning`) go through the text encoder
  into the U-Net's cross-attention (``DiffusionModelUNet(with_conditioning=True)``); the edge map
  (:mod:`scripts.edges`) goes through MONAI's ``ControlNet``, whose residuals are added to the U-Net's skip
  connections and middle block. The paper fine-tunes Stable Diffusion's ControlNet; here both are pixel-space MONAI
  networks trained from scratch (pretrained weights load by state dict), the ControlNet starting as a copy of the
  U-Net's encoder with zero-initialised output convolutions, as ControlNet does. :class:`TextEdgePrepareBatch` is its
  training step (pretraining with image edges, task fine-tuning with mask-boundary edges).
* **Generation** (Alg. 1 line 1): :func:`generate_versions` writes n synthetic versions of every real training image
  (:class:`TextEdgeSampler`): version k of real image i is pair ``i * n + k``, drawn from the image's own prompt plus
  the k-th augmentation phrase (k = 0: the prompt alone) and the edges of its real mask, and written with that real
  mask. ``sources.json`` maps each real image name to its n pair indices, so segmentation training finds an image's
  versions by name whatever subset or fold it trains on (:func:`load_versions`).
* **Patch mixing** (Alg. 1): per step and per real image x0, one of its n versions x_i is chosen and a random patch
  mask m is drawn: a (ceil(H / p), ceil(W / p)) matrix of U(0, 1) values, 1 where the value is below alpha, enlarged
  by nearest neighbour to (H, W). The segmenter is trained with the real label on ``"image"`` mixing (the paper)
  ``C(m x0 + (1 - m) x_i)`` or ``"logits"`` mixing (the authors' code) ``m C(x0) + (1 - m) C(x_i)``; alpha = 1 keeps
  the real image only, alpha = 0 the synthetic one. :class:`PatchMixPrepareBatch` draws the choice and the mask and
  packs ``[x0, x_i, m]`` along channels; :class:`PatchMixInferer` unpacks them and mixes images or logits.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.engines import PrepareBatch
from monai.inferers import Inferer
from monai.networks.nets import ControlNet, DiffusionModelUNet
from torch import nn

from common.data import load_dataset, load_volume_slices
from common.diffusion import diffusion_target
from common.distributed import draw_global
from common.errors import InputError
from common.generation import PairGenerator, generate_pairs
from common.sampling import ConditionedPairSampler, ImageSampler
from common.training import noised
from common.writers import PairWriter, atomic_write_bytes

from .edges import canny_edges, mask_edges
from .text_conditioning import AUGMENTATION_PHRASES, LearnedTextEncoder, apply_phrase, attach_prompts

__all__ = [
    "TextEdgeDiffusionModel",
    "build_text_edge_model",
    "TextEdgePrepareBatch",
    "DEFAULT_VOCABULARY",
    "load_prompted_sources",
    "TextEdgeSampler",
    "generate_versions",
    "VersionGenerator",
    "load_versions",
    "MIX_MODES",
    "random_patch_mask",
    "mix",
    "PatchMixPrepareBatch",
    "PatchMixInferer",
]


# --------------------------------------------------------------------------------------------------------------------
# the generator and its training step
# --------------------------------------------------------------------------------------------------------------------


class TextEdgeDiffusionModel(nn.Module):
    """Denoiser ``(x_t, timesteps, tokens, edges) -> prediction``; ``conditioning_scale`` weights the edge branch."""

    def __init__(self, unet: DiffusionModelUNet, controlnet: ControlNet, text_encoder: nn.Module) -> None:
        super().__init__()
        self.unet = unet
        self.controlnet = controlnet
        self.text_encoder = text_encoder

    def forward(
        self,
        x_t: torch.Tensor,
        timesteps: torch.Tensor,
        tokens: torch.Tensor,
        edges: torch.Tensor,
        conditioning_scale: float = 1.0,
    ) -> torch.Tensor:
        context = self.text_encoder(tokens.to(x_t.device))
        down, middle = self.controlnet(
            x_t, timesteps, controlnet_cond=edges.to(x_t), conditioning_scale=conditioning_scale, context=context
        )
        return self.unet(
            x_t, timesteps, context=context, down_block_additional_residuals=down, mid_block_additional_residual=middle
        )


def build_text_edge_model(
    vocab_size: int,
    channels: Sequence[int] = (32, 64, 64),
    attention_levels: Sequence[bool] = (False, True, True),
    num_res_blocks: int = 1,
    num_head_channels: int = 32,
    norm_num_groups: int = 32,
    text_dim: int = 64,
    max_length: int = 16,
    edge_embedding_channels: Sequence[int] = (16,),
    use_flash_attention: bool = False,
    text_encoder: nn.Module | None = None,
) -> TextEdgeDiffusionModel:
    """The generator at a given width; one greyscale channel in and out, edges as one channel at image size.

    ``edge_embedding_channels`` of length 1 keeps the edge embedding at image resolution (pixel-space diffusion; the
    latent-space default of MONAI downsamples it 8x). ``use_flash_attention`` selects PyTorch's fused attention (the
    same function without keeping each attention matrix for the backward pass; benchmarks/training_step.py).
    ``text_encoder``: tokens -> (B, L, text_dim) context, e.g. :class:`scripts.text_conditioning.ClipTextEncoder`;
    None: a :class:`scripts.text_conditioning.LearnedTextEncoder` over ``vocab_size`` words.
    """
    shared = {
        "spatial_dims": 2,
        "in_channels": 1,
        "channels": tuple(channels),
        "attention_levels": tuple(attention_levels),
        "num_res_blocks": num_res_blocks,
        "num_head_channels": num_head_channels,
        "norm_num_groups": norm_num_groups,
        "with_conditioning": True,
        "cross_attention_dim": text_dim,
        "use_flash_attention": use_flash_attention,
    }
    unet = DiffusionModelUNet(out_channels=1, **shared)
    controlnet = ControlNet(
        conditioning_embedding_in_channels=1,
        conditioning_embedding_num_channels=tuple(edge_embedding_channels),
        **shared,
    )
    # ControlNet starts as a copy of the U-Net's encoder (its zero convolutions keep the start a no-op)
    controlnet.load_state_dict(unet.state_dict(), strict=False)
    if text_encoder is None:
        text_encoder = LearnedTextEncoder(vocab_size, text_dim, max_length)
    return TextEdgeDiffusionModel(unet, controlnet, text_encoder)


class TextEdgePrepareBatch(PrepareBatch):
    """Prompt + edge -> image batches for :class:`TextEdgeDiffusionModel` (DiffBoost).

    Batches hold ``image``, ``label`` and ``prompt`` (strings). Edges come from the image (``edge_source="image"``:
    pretraining; ``edge_detector``, Canny when None, e.g. :class:`scripts.edges.HEDEdges`) or from the mask boundary
    (``"mask"``: task fine-tuning), always from the unaugmented image.
    With probability ``phrase_probability`` an image gets one random augmentation phrase appended to its prompt and
    the appearance change the phrase names (:func:`scripts.text_conditioning.apply_phrase`), so the offline encoder
    learns what the phrases mean. Returns ``(x_t, target, (), {"timesteps", "tokens", "edges"})``.
    """

    def __init__(
        self,
        scheduler: Any,
        tokenizer: Any,
        edge_source: str = "mask",
        phrase_probability: float = 0.3,
        antithetic: bool = True,
        seed: int = 0,
        edge_detector: Any = None,
    ) -> None:
        if edge_source not in ("image", "mask"):
            raise InputError(f"'edge_source' must be 'image' or 'mask', got {edge_source!r}.")
        if not 0.0 <= phrase_probability <= 1.0:
            raise InputError(f"'phrase_probability' must be in [0, 1], got {phrase_probability!r}.")
        self.scheduler = scheduler
        self.tokenizer = tokenizer
        self.edge_source = edge_source
        self.edge_detector = edge_detector or canny_edges
        self.phrase_probability = float(phrase_probability)
        self.antithetic = antithetic
        self.random = np.random.default_rng(seed)

    def __call__(self, batchdata: Mapping[str, Any], device=None, non_blocking: bool = False, **kwargs: Any):
        image = torch.as_tensor(batchdata["image"]).float().clone()  # the phrase changes below must not reach the batch
        label = torch.as_tensor(batchdata["label"]).long()
        prompts = list(batchdata["prompt"])
        with torch.no_grad():
            edges = self.edge_detector(image) if self.edge_source == "image" else mask_edges(label)
        phrases = list(AUGMENTATION_PHRASES)
        coins = draw_global(lambda n: self.random.random(n), image.shape[0])
        picks = draw_global(lambda n: self.random.integers(len(phrases), size=n), image.shape[0])
        for i in range(image.shape[0]):
            if coins[i] < self.phrase_probability:
                phrase = phrases[int(picks[i])]
                image[i : i + 1] = apply_phrase(image[i : i + 1], phrase)
                prompts[i] = f"{prompts[i]}, {phrase}"
        image = image.to(device=device, non_blocking=non_blocking)
        noisy, noise, timesteps = noised(self.scheduler, image, self.antithetic)
        target = diffusion_target(self.scheduler, image, noise, timesteps)
        tokens = self.tokenizer(prompts).to(image.device)
        return noisy, target, (), {"timesteps": timesteps, "tokens": tokens, "edges": edges.to(image.device)}


# --------------------------------------------------------------------------------------------------------------------
# generation: n versions of every real image (Alg. 1 line 1)
# --------------------------------------------------------------------------------------------------------------------


# every word the bundle's datasets and phrases use; one fixed vocabulary keeps the text encoder's shape the same from
# pretraining to fine-tuning to generation (extend it for new datasets before pretraining)
DEFAULT_VOCABULARY = (
    "US, breast, benign, malignant, normal",
    "X-ray, chest, lungs",
    "CT, abdomen, organs, normal",
    "MR, prostate, normal",
    "synthetic, phantom, disc",
)

_SOURCE_KEYS = {
    "dataset_dir",
    "datalist",
    "image_path",
    "label_path",
    "modality",
    "organ",
    "category",
    "categories_csv",
    "max_pairs",
    "intensity_window",
}

SOURCES = "sources.json"


def load_prompted_sources(
    sources: Sequence[Mapping[str, Any]] | None,
    split: str = "train",
    image_size: int = 64,
    seed: int = 0,
    num_synthetic: int = 32,
) -> list[dict]:
    """Pairs with prompts from one or several datasets (DiffBoost pools its pretraining set), binary masks.

    Each source is ``{"dataset_dir" | "datalist" | "image_path" + "label_path", "modality", "organ", "category" or
    "categories_csv", optional "max_pairs", "intensity_window"}``; a volume (``image_path``) contributes its
    ``split`` slab. Labels are binarised (any class -> 1): DiffBoost's tasks are binary. ``sources`` None or empty:
    the embedded synthetic discs ("synthetic, phantom, disc").
    """
    if not sources:
        pairs = load_dataset(split=split, image_size=image_size, num_synthetic=num_synthetic, seed=seed)
        return attach_prompts(pairs, "synthetic", "phantom", category="disc")
    out: list[dict] = []
    for number, source in enumerate(sources):
        unknown = sorted(set(source) - _SOURCE_KEYS)
        if unknown:
            raise InputError(
                f"source {number} has unknown key '{unknown[0]}' (allowed: {', '.join(sorted(_SOURCE_KEYS))})."
            )
        for key in ("modality", "organ"):
            if not source.get(key):
                raise InputError(f"source {number} needs '{key}' for its prompts.")
        if source.get("image_path"):
            window = source.get("intensity_window")
            pairs = load_volume_slices(
                source["image_path"],
                source.get("label_path"),
                split=split,
                image_size=image_size,
                num_classes=256,
                intensity_window=tuple(window) if window else None,
            )
        else:
            pairs = load_dataset(
                dataset_dir=source.get("dataset_dir"),
                datalist=source.get("datalist"),
                split=split,
                image_size=image_size,
                max_pairs=source.get("max_pairs"),
                seed=seed,
            )
        pairs = [{**p, "label": (np.asarray(p["label"]) > 0).astype(np.int64)} for p in pairs]
        out += attach_prompts(
            pairs,
            source["modality"],
            source["organ"],
            category=source.get("category"),
            categories_csv=source.get("categories_csv"),
        )
    return out


class TextEdgeSampler(ConditionedPairSampler):
    """Pair j is version ``j % n`` of real pair ``j // n``: its prompt plus phrase ``j % n`` and its edges (paper Alg. 1
    line 1), written with the real mask.

    ``edge_source`` says which edges steer it, as in training (:class:`TextEdgePrepareBatch`): ``"mask"`` (the real
    mask's boundary: task versions that follow their label) or ``"image"`` (edges of the real image by
    ``edge_detector``, Canny when None: what the pretrained generator learned from, and how paper Table I rebuilds
    held-out images from their edges).
    """

    def __init__(
        self,
        pairs: Sequence[Mapping[str, Any]],
        tokenizer: Any,
        scheduler: Any,
        num_inference_steps: int = 50,
        samples_per_image: int = 4,
        phrases: Sequence[str] | None = None,
        num_classes: int = 2,
        conditioning_scale: float = 1.0,
        edge_source: str = "mask",
        edge_detector: Any = None,
    ) -> None:
        if not pairs:
            raise InputError("TextEdgeSampler needs at least one real pair.")
        if edge_source not in ("image", "mask"):
            raise InputError(f"'edge_source' must be 'image' or 'mask', got {edge_source!r}.")
        missing = [p.get("name", "?") for p in pairs if "prompt" not in p]
        if missing:
            raise InputError(f"pair '{missing[0]}' has no 'prompt' (scripts.text_conditioning.attach_prompts).")
        if isinstance(samples_per_image, bool) or not isinstance(samples_per_image, int) or samples_per_image < 1:
            raise InputError(f"'samples_per_image' must be >= 1, got {samples_per_image!r}.")
        images = [p["image"] for p in pairs] if edge_source == "image" else None
        super().__init__([p["label"] for p in pairs], num_classes, images, repeats=samples_per_image)
        self.edge_source, self.edge_detector = edge_source, edge_detector or canny_edges
        self.prompts = [p["prompt"] for p in pairs]
        self.phrases = ["", *(AUGMENTATION_PHRASES if phrases is None else phrases)]
        self.tokenizer = tokenizer
        self.conditioning_scale = conditioning_scale
        self.image_sampler = ImageSampler(scheduler, num_inference_steps)

    def prompt(self, index: int) -> str:
        """The prompt of pair ``index``: the real image's prompt plus phrase ``index % n`` (cycling the phrases)."""
        phrase = self.phrases[(index % self.repeats) % len(self.phrases)]
        base = self.prompts[self.source(index)]
        return f"{base}, {phrase}" if phrase else base

    @torch.no_grad()
    def edges(self, real: Sequence[int]) -> torch.Tensor:
        """Edge maps of real pairs ``real`` (repeats allowed), computed once per distinct pair and per batch: an edge
        network such as HED over every training image at once would hold gigabytes of activations."""
        unique, inverse = torch.unique(torch.as_tensor(list(real)), return_inverse=True)
        if self.edge_source == "image":
            return self.edge_detector(self.real_images[unique])[inverse]
        return mask_edges(self.labels[unique])[inverse]

    def images(self, model, labels, real_images, noise, indices) -> torch.Tensor:
        tokens = self.tokenizer([self.prompt(i) for i in indices]).to(noise.device)
        edges = self.edges([self.source(i) for i in indices]).to(device=noise.device, dtype=noise.dtype)
        return self.image_sampler(
            lambda x_t, t: model(x_t, t, tokens, edges, conditioning_scale=self.conditioning_scale), noise
        )


def generate_versions(
    model: Any, sampler: TextEdgeSampler, pairs: Sequence[Mapping[str, Any]], output_dir: str, **kwargs: Any
) -> dict[str, Any]:
    """Write ``len(pairs) * n`` pairs with :func:`common.generation.generate_pairs` and the ``sources.json`` index.

    ``kwargs`` go to ``generate_pairs`` (image_size, batch_size, seed, num_classes, device, ...). Reruns write only the
    missing pairs; ``sources.json`` is written last and atomically, so its presence means the folder is complete.
    """
    names = [str(p.get("name", i)) for i, p in enumerate(pairs)]
    if len(set(names)) != len(names):
        raise InputError("real pair names must be unique to index their synthetic versions.")
    affine = kwargs.pop("affine", None)
    per_pair = isinstance(affine, (list, tuple)) and affine and (affine[0] is None or np.ndim(affine[0]) == 2)
    if per_pair:  # one per real pair: one per version
        affine = [a for a in affine for _ in range(sampler.repeats)]
    summary = generate_pairs(
        model, sampler, output_dir, num_pairs=len(pairs) * sampler.repeats, affine=affine, **kwargs
    )
    sources = {
        "samples_per_image": sampler.repeats,
        "versions": {name: [i * sampler.repeats + k for k in range(sampler.repeats)] for i, name in enumerate(names)},
        "prompts": [sampler.prompt(j) for j in range(len(pairs) * sampler.repeats)],
    }
    atomic_write_bytes(os.path.join(output_dir, SOURCES), json.dumps(sources, indent=1).encode("utf-8"))
    return summary


class VersionGenerator(PairGenerator):
    """The inference workflow's engine (MONAI's ``evaluator``): :func:`generate_versions` for ``pairs``, whose
    ``dataset`` must request every version (``pair_requests(len(pairs) * samples_per_image)``): the ``sources.json``
    index that patch-mixed training reads covers them all."""

    def __init__(self, network: Any, inferer: Any, dataset: Any, pairs: Sequence[Mapping[str, Any]], **settings: Any):
        super().__init__(network, inferer, dataset, **settings)
        expected = list(range(len(pairs) * inferer.sampler.repeats))
        if self.indices != expected:
            raise InputError(
                f"'dataset' must request all {len(expected)} versions (pair_requests(len(pairs) * samples_per_image)), "
                f"got {len(self.indices)} requests."
            )
        self.pairs = pairs

    def run(self) -> dict[str, Any]:
        return generate_versions(self.network, self.inferer.sampler, self.pairs, **self.settings)


def load_versions(folder: str, num_classes: int = 2) -> dict[str, np.ndarray]:
    """Real image name -> its synthetic versions, (n, 1, H, W) float32 in [-1, 1], from a :func:`generate_versions`
    folder."""
    path = os.path.join(folder, SOURCES)
    if not os.path.isfile(path):
        raise InputError(f"'{folder}' has no {SOURCES}: it is not a complete DiffBoost generation folder.")
    sources = json.loads(open(path).read())
    writer = PairWriter.existing(folder, num_classes)
    return {name: np.stack([writer.read(j)[0] for j in indices]) for name, indices in sources["versions"].items()}


# --------------------------------------------------------------------------------------------------------------------
# patch mixing (Alg. 1)
# --------------------------------------------------------------------------------------------------------------------


MIX_MODES = ("image", "logits")


def _check(alpha: float, patch_size: int) -> None:
    if not 0.0 <= float(alpha) <= 1.0:
        raise InputError(f"'alpha' must be in [0, 1], got {alpha!r}.")
    if isinstance(patch_size, bool) or not isinstance(patch_size, int) or patch_size < 1:
        raise InputError(f"'patch_size' must be a positive integer, got {patch_size!r}.")


def random_patch_mask(
    batch: int,
    size: tuple[int, int],
    alpha: float,
    patch_size: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """(batch, 1, H, W) float {0, 1} masks, constant on ``patch_size`` squares, each square 1 with probability alpha.

    Squares at the right and bottom edges are cropped when ``patch_size`` does not divide the image.
    """
    _check(alpha, patch_size)
    height, width = size
    rows, cols = math.ceil(height / patch_size), math.ceil(width / patch_size)
    coarse = torch.rand((batch, 1, rows, cols), generator=generator, device=generator.device if generator else None)
    keep = (coarse < alpha).to(torch.float32)
    full = keep.repeat_interleave(patch_size, dim=2).repeat_interleave(patch_size, dim=3)
    return full[..., :height, :width].to(device or full.device)


def mix(real: torch.Tensor, synthetic: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``mask * real + (1 - mask) * synthetic`` (mask broadcast over channels)."""
    return mask * real + (1.0 - mask) * synthetic


class PatchMixPrepareBatch(PrepareBatch):
    """Batches of ``{"image": x0 (B, C, H, W), "synthetic": (B, n, C, H, W), "label"}`` -> ``(cat[x0, x_i, m], label)``.

    ``synthetic`` holds each real image's n generated versions (n >= 1); one is chosen per image and step. Draws come
    from ``generator`` (seeded once) so a run is reproducible without touching the global RNG.
    """

    def __init__(self, alpha: float = 0.6, patch_size: int = 16, seed: int = 0) -> None:
        _check(alpha, patch_size)
        self.alpha = float(alpha)
        self.patch_size = int(patch_size)
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, batchdata: Mapping[str, Any], device=None, non_blocking: bool = False, **kwargs: Any):
        real = torch.as_tensor(batchdata["image"]).float()
        synthetic = torch.as_tensor(batchdata["synthetic"]).float()
        if (
            synthetic.ndim != real.ndim + 1
            or synthetic.shape[0] != real.shape[0]
            or synthetic.shape[2:] != real.shape[1:]
        ):
            raise InputError(
                f"'synthetic' must be (B, n, C, H, W) matching 'image' {tuple(real.shape)}, "
                f"got {tuple(synthetic.shape)}."
            )
        batch, count = synthetic.shape[:2]
        choice = torch.randint(0, count, (batch,), generator=self.generator)
        chosen = synthetic[torch.arange(batch), choice]
        mask = random_patch_mask(batch, tuple(real.shape[2:]), self.alpha, self.patch_size, self.generator)
        packed = torch.cat([real, chosen, mask], dim=1).to(device=device, non_blocking=non_blocking)
        label = torch.as_tensor(batchdata["label"]).to(device=device, non_blocking=non_blocking)
        return packed, label


class PatchMixInferer(Inferer):
    """Unpack ``cat[x0, x_i, m]`` and return the segmenter's logits on the mixed image, or the mixed logits."""

    def __init__(self, mode: str = "image") -> None:
        if mode not in MIX_MODES:
            raise InputError(f"'mode' must be one of {MIX_MODES}, got {mode!r}.")
        self.mode = mode

    def __call__(self, inputs: torch.Tensor, network: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        channels = (inputs.shape[1] - 1) // 2
        if inputs.shape[1] != 2 * channels + 1 or channels < 1:
            raise InputError(f"PatchMixInferer expects cat[real, synthetic, mask] channels, got {inputs.shape[1]}.")
        real, synthetic, mask = torch.split(inputs, [channels, channels, 1], dim=1)
        if self.mode == "image":
            return network(mix(real, synthetic, mask), *args, **kwargs)
        both = network(torch.cat([real, synthetic]), *args, **kwargs)
        real_logits, synthetic_logits = both.chunk(2)
        return mix(real_logits, synthetic_logits, mask)
