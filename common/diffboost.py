"""DiffBoost's generation step (paper 003, Alg. 1 line 1): n synthetic versions of every real training image.

Version k of real image i is pair ``i * n + k`` of a PairWriter folder, drawn from the image's own prompt plus the
k-th augmentation phrase (k = 0: the prompt alone) and the edges of its real mask, and written with that real mask.
``sources.json`` in the folder maps each real image name to its n pair indices, so segmentation training can find an
image's versions by name whatever subset or fold it trains on (:func:`load_versions`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from common.edges import canny_edges, mask_edges
from common.errors import InputError
from common.generation import generate_pairs
from common.sampling import ImageSampler
from common.text_conditioning import AUGMENTATION_PHRASES
from common.transforms import encode_mask
from common.writers import PairWriter, atomic_write_bytes

__all__ = ["DEFAULT_VOCABULARY", "load_prompted_sources", "TextEdgeSampler", "generate_versions", "load_versions"]

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
    from common.data import load_dataset, load_volume_slices
    from common.text_conditioning import attach_prompts

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


class TextEdgeSampler:
    """Pair-sampler interface: pair j is version ``j % n`` of real pair ``j // n`` (prompt + phrase, edges).

    ``edge_source`` says which edges steer it, as in training (``common.training.TextEdgePrepareBatch``): ``"mask"``
    (the real mask's boundary: task versions that follow their label) or ``"image"`` (edges of the real image by
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
            raise InputError(f"pair '{missing[0]}' has no 'prompt' (common.text_conditioning.attach_prompts).")
        self.labels = torch.stack([torch.as_tensor(np.asarray(p["label"])) for p in pairs]).long()
        self.edge_source, self.edge_detector = edge_source, edge_detector or canny_edges
        self.images = (
            torch.stack([torch.as_tensor(np.asarray(p["image"], np.float32)) for p in pairs])
            if edge_source == "image"
            else None
        )
        self.prompts = [p["prompt"] for p in pairs]
        self.phrases = ["", *(AUGMENTATION_PHRASES if phrases is None else phrases)]
        self.n = int(samples_per_image)
        if self.n < 1:
            raise InputError(f"'samples_per_image' must be >= 1, got {samples_per_image!r}.")
        self.tokenizer = tokenizer
        self.num_classes = num_classes
        self.conditioning_scale = conditioning_scale
        self.image_sampler = ImageSampler(scheduler, num_inference_steps)

    def prompt(self, index: int) -> str:
        """The prompt of pair ``index``: the real image's prompt plus phrase ``index % n`` (cycling the phrases)."""
        phrase = self.phrases[(index % self.n) % len(self.phrases)]
        base = self.prompts[index // self.n]
        return f"{base}, {phrase}" if phrase else base

    @torch.no_grad()
    def edges(self, real: Sequence[int]) -> torch.Tensor:
        """Edge maps of real pairs ``real`` (repeats allowed), computed per batch: an edge network such as HED over
        every training image at once would hold gigabytes of activations."""
        unique, inverse = torch.unique(torch.as_tensor(list(real)), return_inverse=True)
        if self.edge_source == "image":
            return self.edge_detector(self.images[unique])[inverse]
        return mask_edges(self.labels[unique])[inverse]

    @torch.no_grad()
    def __call__(self, model: Any, mask_noise: torch.Tensor, image_noise: torch.Tensor, indices=None):
        if indices is None:
            indices = range(image_noise.shape[0])
        device = image_noise.device
        real = [i // self.n for i in indices]
        labels = self.labels[real].to(device)
        tokens = self.tokenizer([self.prompt(i) for i in indices]).to(device)
        edges = self.edges(real).to(device=device, dtype=image_noise.dtype)
        images = self.image_sampler(
            lambda x_t, t: model(x_t, t, tokens, edges, conditioning_scale=self.conditioning_scale), image_noise
        )
        return encode_mask(labels, self.num_classes).to(images.dtype), images


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
    summary = generate_pairs(model, sampler, output_dir, num_pairs=len(pairs) * sampler.n, **kwargs)
    sources = {
        "samples_per_image": sampler.n,
        "versions": {name: [i * sampler.n + k for k in range(sampler.n)] for i, name in enumerate(names)},
        "prompts": [sampler.prompt(j) for j in range(len(pairs) * sampler.n)],
    }
    atomic_write_bytes(os.path.join(output_dir, SOURCES), json.dumps(sources, indent=1).encode("utf-8"))
    return summary


def load_versions(folder: str, num_classes: int = 2) -> dict[str, np.ndarray]:
    """Real image name -> its synthetic versions, (n, 1, H, W) float32 in [-1, 1], from a :func:`generate_versions`
    folder."""
    path = os.path.join(folder, SOURCES)
    if not os.path.isfile(path):
        raise InputError(f"'{folder}' has no {SOURCES}: it is not a complete DiffBoost generation folder.")
    sources = json.loads(open(path).read())
    writer = PairWriter(folder, num_classes=num_classes)
    return {name: np.stack([writer.read(j)[0] for j in indices]) for name, indices in sources["versions"].items()}
