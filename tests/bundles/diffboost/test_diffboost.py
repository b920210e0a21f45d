"""DiffBoost generation: which prompt and mask each version gets, the folder index, and reading versions back."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from common.errors import InputError
from common.schedulers import build_scheduler
from tests.shared_data import bundle_module

DIFFBOOST = bundle_module("diffboost", "diffboost")
TextEdgeSampler, generate_versions, load_versions = (
    DIFFBOOST.TextEdgeSampler,
    DIFFBOOST.generate_versions,
    DIFFBOOST.load_versions,
)
EDGES = bundle_module("diffboost", "edges")
canny_edges, mask_edges = (EDGES.canny_edges, EDGES.mask_edges)
TEXT_CONDITIONING = bundle_module("diffboost", "text_conditioning")
PromptTokenizer = TEXT_CONDITIONING.PromptTokenizer


def pairs(count: int = 3, size: int = 16) -> list[dict]:
    out = []
    for i in range(count):
        label = np.zeros((1, size, size), np.int64)
        label[0, 2 + i : 8 + i, 3:9] = 1
        out.append(
            {
                "name": f"img{i}",
                "image": np.zeros((1, size, size), np.float32),
                "label": label,
                "prompt": f"US, breast, {'benign' if i % 2 else 'malignant'}",
            }
        )
    return out


class Recorder(torch.nn.Module):
    """Records what the sampler asks for; predicts zero noise."""

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.calls = []

    def forward(self, x_t, t, tokens, edges, conditioning_scale=1.0):
        self.calls.append((tokens.clone(), edges.clone()))
        return torch.zeros_like(x_t) + self.weight


def test_sampler_gives_each_version_its_prompt_phrase_and_mask_edges():
    real = pairs()
    tokenizer = PromptTokenizer.for_prompts([p["prompt"] for p in real])
    sampler = TextEdgeSampler(
        real,
        tokenizer,
        build_scheduler("ddim", num_train_timesteps=20),
        2,
        samples_per_image=3,
        phrases=["enhanced contrast", "low resolution"],
    )
    assert [sampler.prompt(j) for j in range(3)] == [
        "US, breast, malignant",
        "US, breast, malignant, enhanced contrast",
        "US, breast, malignant, low resolution",
    ]
    model = Recorder()
    masks, images = sampler(model, None, torch.randn(2, 1, 16, 16), indices=[1, 5])  # img0 v1, img1 v2
    tokens, edges = model.calls[0]
    assert torch.equal(tokens, tokenizer([sampler.prompt(1), sampler.prompt(5)]))
    labels = torch.as_tensor(np.stack([real[0]["label"], real[1]["label"]]))
    assert torch.equal(edges, mask_edges(labels))
    assert torch.equal((masks > 0).long(), labels) and images.shape == (2, 1, 16, 16)
    with pytest.raises(InputError, match="pair 'x' has no 'prompt'"):
        TextEdgeSampler([{"name": "x", "label": real[0]["label"]}], tokenizer, None)


def test_image_edge_source_steers_with_canny_edges_of_the_real_image():
    real = pairs()
    for i, p in enumerate(real):  # an image whose edges differ from its mask's boundary
        p["image"] = -np.ones((1, 16, 16), np.float32)
        p["image"][0, 4:12, 1 + i : 6 + i] = 1.0
    tokenizer = PromptTokenizer.for_prompts([p["prompt"] for p in real])
    scheduler = build_scheduler("ddim", num_train_timesteps=20)
    sampler = TextEdgeSampler(real, tokenizer, scheduler, 2, samples_per_image=1, edge_source="image")
    model = Recorder()
    masks, _ = sampler(model, None, torch.randn(2, 1, 16, 16), indices=[2, 0])
    _, edges = model.calls[0]
    images = torch.as_tensor(np.stack([real[2]["image"], real[0]["image"]]))
    assert torch.equal(edges, canny_edges(images)) and edges.sum() > 0
    assert not torch.equal(edges, mask_edges(torch.as_tensor(np.stack([real[2]["label"], real[0]["label"]]))))
    assert torch.equal((masks > 0).long()[0], torch.as_tensor(real[2]["label"]))  # still written with the real mask
    threshold = TextEdgeSampler(real, tokenizer, scheduler, 2, 1, edge_source="image", edge_detector=lambda x: x > 0)
    threshold(model, None, torch.randn(1, 1, 16, 16), indices=[1])
    assert torch.equal(model.calls[-1][1], torch.as_tensor(real[1]["image"] > 0).float()[None])  # a given detector
    with pytest.raises(InputError, match="'edge_source' must be 'image' or 'mask'"):
        TextEdgeSampler(real, tokenizer, scheduler, edge_source="hed")


def test_image_edges_are_detected_per_batch_once_per_real_image():
    """An edge network over every training image at once would need gigabytes; the sampler runs it on the batch."""
    real = pairs()
    for seed, p in enumerate(real):
        p["image"] = np.random.default_rng(seed).uniform(-1, 1, (1, 16, 16)).astype(np.float32)
    seen = []

    def detector(images):
        seen.append(images.shape[0])
        return (images > 0).float()

    tokenizer = PromptTokenizer.for_prompts([p["prompt"] for p in real])
    scheduler = build_scheduler("ddim", num_train_timesteps=20)
    sampler = TextEdgeSampler(real, tokenizer, scheduler, 2, 2, edge_source="image", edge_detector=detector)
    assert seen == []  # nothing at construction
    model = Recorder()
    sampler(model, None, torch.randn(3, 1, 16, 16), indices=[0, 1, 4])  # real images 0, 0, 2
    assert seen == [2]
    expected = torch.as_tensor(np.stack([real[i]["image"] for i in (0, 0, 2)]) > 0).float()
    assert torch.equal(model.calls[0][1], expected)


def test_generated_folder_indexes_versions_by_real_name(tmp_path):
    real = pairs()
    tokenizer = PromptTokenizer.for_prompts([p["prompt"] for p in real])
    sampler = TextEdgeSampler(real, tokenizer, build_scheduler("ddim", num_train_timesteps=20), 2, samples_per_image=2)
    out = tmp_path / "gen"
    generate_versions(Recorder(), sampler, real, str(out), image_size=16, batch_size=4, seed=0)
    sources = json.loads((out / "sources.json").read_text())
    assert sources["versions"] == {"img0": [0, 1], "img1": [2, 3], "img2": [4, 5]}
    assert len(json.loads((out / "datalist.json").read_text())["training"]) == 6
    versions = load_versions(str(out))
    assert set(versions) == {"img0", "img1", "img2"} and versions["img1"].shape == (2, 1, 16, 16)
    with pytest.raises(InputError, match="no sources.json"):
        load_versions(str(tmp_path))
