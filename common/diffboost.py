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

from common.edges import mask_edges
from common.errors import InputError
from common.generation import generate_pairs
from common.sampling import ImageSampler
from common.text_conditioning import AUGMENTATION_PHRASES
from common.transforms import encode_mask
from common.writers import PairWriter, atomic_write_bytes

__all__ = ["TextEdgeSampler", "generate_versions", "load_versions"]

SOURCES = "sources.json"


class TextEdgeSampler:
    """Pair-sampler interface: pair j is version ``j % n`` of real pair ``j // n`` (prompt + phrase, mask edges)."""

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
    ) -> None:
        if not pairs:
            raise InputError("TextEdgeSampler needs at least one real pair.")
        missing = [p.get("name", "?") for p in pairs if "prompt" not in p]
        if missing:
            raise InputError(f"pair '{missing[0]}' has no 'prompt' (common.text_conditioning.attach_prompts).")
        self.labels = torch.stack([torch.as_tensor(np.asarray(p["label"])) for p in pairs]).long()
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
    def __call__(self, model: Any, mask_noise: torch.Tensor, image_noise: torch.Tensor, indices=None):
        if indices is None:
            indices = range(image_noise.shape[0])
        device = image_noise.device
        labels = self.labels[[i // self.n for i in indices]].to(device)
        tokens = self.tokenizer([self.prompt(i) for i in indices]).to(device)
        edges = mask_edges(labels).to(image_noise.dtype)
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
