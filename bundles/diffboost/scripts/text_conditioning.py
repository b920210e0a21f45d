"""DiffBoost's text side (paper 003): "modality, organ, category" prompts, augmentation phrases, an offline encoder.

The paper encodes prompts with Stable Diffusion's CLIP text encoder. Offline, with no pretrained weights, the default
here is a small learned encoder over a closed prompt vocabulary: word embeddings + positions + one transformer layer,
trained with the diffusion model. It can only know words it was trained on, so the augmentation phrases are learned
from real, phrase-consistent augmentations during training (:data:`AUGMENTATION_PHRASES` pairs each phrase with the
MONAI transform that produces it); at generation the same phrases then ask for that variation.

With CLIP weights kept locally (a Hugging Face folder such as openai/clip-vit-base-patch32, downloaded beforehand),
:class:`ClipTokenizer` and :class:`ClipTextEncoder` replace the two: the CLIP text transformer stays frozen and a
trainable linear map takes its hidden states to the U-Net's cross-attention width (the bundles' ``clip_path``). They
need the optional ``transformers`` package (``requirements-clip.txt``) and never download anything.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from common.errors import InputError

__all__ = [
    "PAD",
    "UNKNOWN",
    "AUGMENTATION_PHRASES",
    "apply_phrase",
    "build_prompt",
    "attach_prompts",
    "PromptTokenizer",
    "LearnedTextEncoder",
    "ClipTokenizer",
    "ClipTextEncoder",
    "build_tokenizer",
    "build_text_encoder",
]

PAD, UNKNOWN = "<pad>", "<unk>"

# phrase -> what a training image gets when the phrase is appended (apply_phrase, used by
# scripts.diffboost.TextEdgePrepareBatch)
AUGMENTATION_PHRASES = {
    "enhanced contrast": "contrast x1.3 around the mean",
    "low contrast": "contrast x0.7 around the mean",
    "high brightness": "gamma 0.7",
    "low brightness": "gamma 1.5",
    "low resolution": "down-sampled by 2 and back",
}


def apply_phrase(image: torch.Tensor, phrase: str) -> torch.Tensor:
    """The appearance change a phrase names, on (B, C, H, W) images in [-1, 1] (result clipped to [-1, 1])."""
    if phrase in ("enhanced contrast", "low contrast"):
        mean = image.mean(dim=(-2, -1), keepdim=True)
        out = mean + (1.3 if phrase == "enhanced contrast" else 0.7) * (image - mean)
    elif phrase in ("high brightness", "low brightness"):
        gamma = 0.7 if phrase == "high brightness" else 1.5
        out = ((image + 1) / 2).clamp(0, 1) ** gamma * 2 - 1
    elif phrase == "low resolution":
        small = torch.nn.functional.avg_pool2d(image, 2, ceil_mode=True)
        out = torch.nn.functional.interpolate(small, size=image.shape[-2:], mode="bilinear", align_corners=False)
    else:
        raise InputError(f"unknown augmentation phrase {phrase!r}; choose one of {', '.join(AUGMENTATION_PHRASES)}.")
    return out.clamp(-1, 1)


def build_prompt(modality: str, organ: str, category: str, phrases: Sequence[str] = ()) -> str:
    """ "US, breast, benign" (+ ", enhanced contrast", ...): the paper's triplet plus augmentation phrases."""
    parts = [modality, organ, category, *phrases]
    if any(not isinstance(p, str) or not p.strip() for p in parts[:3]):
        raise InputError(f"a prompt needs a modality, an organ and a category, got {parts[:3]!r}.")
    return ", ".join(p.strip() for p in parts)


def attach_prompts(
    pairs: Sequence[dict],
    modality: str,
    organ: str,
    category: str | None = None,
    categories_csv: str | None = None,
    file_column: str = "file",
    category_column: str = "cls",
) -> list[dict]:
    """Copies of ``pairs`` with a ``prompt``: the category is ``category`` or, per image, the ``category_column`` of
    ``categories_csv`` on the row whose ``file_column`` names the image (BUSI's index.csv: ``file``, ``cls``)."""
    import csv
    import os

    lookup: dict[str, str] = {}
    if categories_csv is not None:
        if not os.path.isfile(categories_csv):
            raise InputError(f"'categories_csv' {categories_csv!r} does not exist.")
        with open(categories_csv, newline="") as handle:
            rows = list(csv.DictReader(handle))
        if rows and (file_column not in rows[0] or category_column not in rows[0]):
            raise InputError(f"'{categories_csv}' lacks the columns '{file_column}' and '{category_column}'.")
        lookup = {os.path.splitext(os.path.basename(r[file_column]))[0]: r[category_column] for r in rows}
    out = []
    for pair in pairs:
        stem = os.path.splitext(os.path.basename(str(pair.get("source") or pair.get("name", ""))))[0]
        found = lookup.get(stem, lookup.get(str(pair.get("name")), category))
        if found is None:
            raise InputError(f"no category for image '{pair.get('name', stem)}' in '{categories_csv}' and no default.")
        out.append({**pair, "prompt": build_prompt(modality, organ, found)})
    return out


def _words(prompt: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", prompt.lower())


class PromptTokenizer:
    """Word-level tokens over a fixed vocabulary (index 0 = padding, 1 = unknown), padded to ``max_length``."""

    def __init__(self, vocabulary: Iterable[str], max_length: int = 16) -> None:
        words = sorted({w for entry in vocabulary for w in _words(entry)})
        self.vocabulary = [PAD, UNKNOWN, *words]
        self.index = {w: i for i, w in enumerate(self.vocabulary)}
        if max_length < 1:
            raise InputError(f"'max_length' must be >= 1, got {max_length}.")
        self.max_length = int(max_length)

    @classmethod
    def for_prompts(cls, prompts: Iterable[str], max_length: int = 16) -> PromptTokenizer:
        """A vocabulary of every word in ``prompts`` and in the augmentation phrases."""
        return cls([*prompts, *AUGMENTATION_PHRASES], max_length)

    def __len__(self) -> int:
        return len(self.vocabulary)

    def __call__(self, prompts: str | Sequence[str]) -> torch.Tensor:
        """(B, max_length) long token ids; a prompt longer than ``max_length`` words is an error, not truncated."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        out = torch.zeros(len(prompts), self.max_length, dtype=torch.long)
        for row, prompt in enumerate(prompts):
            ids = [self.index.get(w, 1) for w in _words(prompt)]
            if len(ids) > self.max_length:
                raise InputError(f"prompt {prompt!r} has {len(ids)} words; the tokenizer takes {self.max_length}.")
            out[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out


class LearnedTextEncoder(nn.Module):
    """Token ids (B, L) -> context (B, L, dim) for the U-Net's cross-attention; trained from scratch."""

    def __init__(self, vocab_size: int, dim: int = 64, max_length: int = 16, num_layers: int = 1, heads: int = 4):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, dim, padding_idx=0)
        self.position = nn.Parameter(torch.zeros(1, max_length, dim))
        nn.init.normal_(self.position, std=0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=2 * dim, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        tokens = torch.as_tensor(tokens).long()
        if tokens.ndim != 2 or tokens.shape[1] > self.position.shape[1]:
            raise ValueError(f"tokens must be (B, <= {self.position.shape[1]}), got {tuple(tokens.shape)}.")
        x = self.embedding(tokens) + self.position[:, : tokens.shape[1]]
        padding = tokens == 0
        padding[:, 0] = False  # an all-padding prompt still attends to its first slot
        return self.norm(self.encoder(x, src_key_padding_mask=padding))


def _clip_folder(path: str | os.PathLike) -> tuple[Any, str]:
    """The ``transformers`` module and the checked folder, or an error that says what is missing."""
    folder = os.fspath(path)
    if not os.path.isfile(os.path.join(folder, "config.json")):
        raise InputError(
            f"clip_path '{folder}' is not a folder holding a CLIP text model (config.json); save one there first, "
            "e.g. CLIPTextModel and its tokenizer with save_pretrained (nothing is downloaded at run time)."
        )
    try:
        import transformers
    except ImportError as exc:
        raise InputError(
            "a CLIP text encoder needs the optional 'transformers' package: pip install -r requirements-clip.txt."
        ) from exc
    return transformers, folder


class ClipTokenizer:
    """Prompts -> (B, max_length) CLIP token ids, padded and truncated, from a tokenizer saved in ``path``."""

    def __init__(self, path: str | os.PathLike, max_length: int = 16) -> None:
        transformers, folder = _clip_folder(path)
        if max_length < 1:
            raise InputError(f"'max_length' must be >= 1, got {max_length}.")
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
        self.max_length = int(max_length)

    def __len__(self) -> int:
        return len(self.tokenizer)

    def __call__(self, prompts: str | Sequence[str]) -> torch.Tensor:
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        encoded = self.tokenizer(
            prompts, padding="max_length", max_length=self.max_length, truncation=True, return_tensors="pt"
        )
        return encoded["input_ids"].long()


class ClipTextEncoder(nn.Module):
    """Token ids (B, L) -> context (B, L, dim): a frozen pretrained CLIP text transformer + a trainable linear map.

    CLIP stays in eval mode (no dropout) and out of the gradient; only ``projection`` learns, so the U-Net can keep its
    own cross-attention width. Its weights are part of the state dict like any submodule's.
    """

    def __init__(self, path: str | os.PathLike, dim: int = 64) -> None:
        super().__init__()
        transformers, folder = _clip_folder(path)
        self.clip = transformers.CLIPTextModel.from_pretrained(folder, local_files_only=True)
        self.clip.requires_grad_(False).eval()
        self.projection = nn.Linear(self.clip.config.hidden_size, dim)

    def train(self, mode: bool = True) -> ClipTextEncoder:
        super().train(mode)
        self.clip.eval()
        return self

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            hidden = self.clip(input_ids=torch.as_tensor(tokens).long()).last_hidden_state
        return self.projection(hidden)


def build_tokenizer(clip_path: str | None, vocabulary: Sequence[str], max_length: int = 12) -> Any:
    """CLIP's tokenizer from a local folder when ``clip_path`` is set, else a :class:`PromptTokenizer` over the prompt
    ``vocabulary`` and the augmentation phrases (keep both the same from pretraining to generation)."""
    if clip_path:
        return ClipTokenizer(clip_path, max_length)
    return PromptTokenizer([*vocabulary, *AUGMENTATION_PHRASES], max_length)


def build_text_encoder(clip_path: str | None, text_dim: int = 64) -> nn.Module | None:
    """The frozen CLIP text model with a trainable projection when ``clip_path`` is set; None selects the learned
    encoder (:class:`LearnedTextEncoder`, built with the network)."""
    return ClipTextEncoder(clip_path, text_dim) if clip_path else None
