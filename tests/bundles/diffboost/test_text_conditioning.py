"""DiffBoost's prompts, tokenizers, text encoders (learned, or CLIP from a local folder) and text+edge generator."""

from __future__ import annotations

import pytest
import torch

from common.errors import InputError
from tests.shared_data import bundle_module, tiny_clip_folder

TEXT_CONDITIONING = bundle_module("diffboost", "text_conditioning")
AUGMENTATION_PHRASES, ClipTextEncoder, ClipTokenizer, LearnedTextEncoder, PromptTokenizer, build_prompt = (
    TEXT_CONDITIONING.AUGMENTATION_PHRASES,
    TEXT_CONDITIONING.ClipTextEncoder,
    TEXT_CONDITIONING.ClipTokenizer,
    TEXT_CONDITIONING.LearnedTextEncoder,
    TEXT_CONDITIONING.PromptTokenizer,
    TEXT_CONDITIONING.build_prompt,
)
DIFFBOOST = bundle_module("diffboost", "diffboost")
build_text_edge_model = DIFFBOOST.build_text_edge_model


PROMPTS = [build_prompt("US", "breast", c) for c in ("benign", "malignant", "normal")]


def test_prompts_follow_the_paper_triplet_plus_phrases():
    assert build_prompt("US", "Breast", "benign") == "US, Breast, benign"
    assert build_prompt("CT", "abdomen", "normal", ["enhanced contrast"]) == "CT, abdomen, normal, enhanced contrast"
    with pytest.raises(InputError, match="modality, an organ and a category"):
        build_prompt("US", "", "benign")


def test_tokenizer_pads_marks_unknown_words_and_refuses_long_prompts():
    tokenizer = PromptTokenizer.for_prompts(PROMPTS, max_length=8)
    assert {"us", "breast", "benign", "enhanced", "contrast", "resolution"} <= set(tokenizer.vocabulary)
    ids = tokenizer(["US, breast, benign", "MR, breast, benign"])
    assert ids.shape == (2, 8) and ids.dtype == torch.long
    assert (ids[0, :3] > 1).all() and (ids[0, 3:] == 0).all()  # three known words, then padding
    assert ids[1, 0] == 1 and torch.equal(ids[1, 1:], ids[0, 1:])  # "mr" is unknown, the rest identical
    assert torch.equal(tokenizer("us breast BENIGN"), ids[:1])  # case and punctuation do not matter
    with pytest.raises(InputError, match="has 9 words; the tokenizer takes 8"):
        tokenizer("one two three four five six seven eight nine")
    assert set(AUGMENTATION_PHRASES) and all(isinstance(v, str) for v in AUGMENTATION_PHRASES.values())


def test_text_encoder_context_depends_on_the_words_not_the_padding_length():
    torch.manual_seed(0)
    tokenizer = PromptTokenizer.for_prompts(PROMPTS, max_length=8)
    encoder = LearnedTextEncoder(len(tokenizer), dim=16, max_length=8, heads=2).eval()
    context = encoder(tokenizer(PROMPTS))
    assert context.shape == (3, 8, 16)
    assert not torch.allclose(context[0], context[1])
    with pytest.raises(ValueError, match="tokens must be"):
        encoder(torch.zeros(1, 9, dtype=torch.long))


def tiny_model(vocab: int, text_encoder: torch.nn.Module | None = None):
    torch.manual_seed(0)
    return build_text_edge_model(
        vocab,
        channels=(8, 16),
        attention_levels=(False, True),
        num_head_channels=8,
        norm_num_groups=8,
        text_dim=16,
        max_length=8,
        text_encoder=text_encoder,
    )


def test_generator_shapes_and_controlnet_starts_as_a_no_op():
    tokenizer = PromptTokenizer.for_prompts(PROMPTS, max_length=8)
    model = tiny_model(len(tokenizer)).eval()
    x, t, tokens = torch.randn(2, 1, 16, 16), torch.tensor([5, 700]), tokenizer(PROMPTS[:2])
    edges = (torch.rand(2, 1, 16, 16) > 0.8).float()
    out = model(x, t, tokens, edges)
    assert out.shape == (2, 1, 16, 16)
    # ControlNet's zero convolutions: at initialisation the edges change nothing, the text does
    torch.testing.assert_close(out, model(x, t, tokens, torch.zeros_like(edges)))
    shared = {k: v for k, v in model.unet.state_dict().items() if k in model.controlnet.state_dict()}
    assert shared and all(torch.equal(v, model.controlnet.state_dict()[k]) for k, v in shared.items())


def test_after_a_training_step_the_edges_steer_the_output():
    tokenizer = PromptTokenizer.for_prompts(PROMPTS, max_length=8)
    model = tiny_model(len(tokenizer))
    x, t, tokens = torch.randn(2, 1, 16, 16), torch.tensor([5, 700]), tokenizer(PROMPTS[:2])
    edges = (torch.rand(2, 1, 16, 16) > 0.8).float()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(3):
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(x, t, tokens, edges), torch.randn_like(x)).backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        assert not torch.allclose(model(x, t, tokens, edges), model(x, t, tokens, torch.zeros_like(edges)))
        assert not torch.allclose(model(x, t, tokens, edges), model(x, t, tokenizer(PROMPTS[1:]), edges))


def test_phrases_change_appearance_as_named():
    apply_phrase = bundle_module("diffboost", "text_conditioning").apply_phrase

    ramp = torch.linspace(-0.8, 0.8, 64).view(1, 1, 8, 8)
    spread = lambda x: float(x.std())  # noqa: E731
    assert spread(apply_phrase(ramp, "enhanced contrast")) > spread(ramp) > spread(apply_phrase(ramp, "low contrast"))
    assert apply_phrase(ramp, "high brightness").mean() > ramp.mean() > apply_phrase(ramp, "low brightness").mean()
    low_res = apply_phrase(ramp, "low resolution")
    assert low_res.shape == ramp.shape and not torch.allclose(low_res, ramp)
    for phrase in AUGMENTATION_PHRASES:
        out = apply_phrase(ramp, phrase)
        assert out.min() >= -1 and out.max() <= 1
    with pytest.raises(InputError, match="unknown augmentation phrase 'sepia'"):
        apply_phrase(ramp, "sepia")


def test_prepare_batch_edges_tokens_and_phrases():
    canny_edges = bundle_module("diffboost", "edges").canny_edges
    mask_edges = bundle_module("diffboost", "edges").mask_edges
    from common.schedulers import build_scheduler

    TextEdgePrepareBatch = bundle_module("diffboost", "diffboost").TextEdgePrepareBatch

    scheduler = build_scheduler("ddpm", num_train_timesteps=100)
    tokenizer = PromptTokenizer.for_prompts(PROMPTS, max_length=8)
    label = torch.zeros(4, 1, 16, 16, dtype=torch.long)
    label[:, :, 4:12, 4:12] = 1
    batch = {"image": torch.rand(4, 1, 16, 16) * 2 - 1, "label": label, "prompt": PROMPTS + PROMPTS[:1]}
    x_t, target, args, kwargs = TextEdgePrepareBatch(scheduler, tokenizer, "mask", phrase_probability=0.0)(batch)
    assert x_t.shape == (4, 1, 16, 16) and args == () and set(kwargs) == {"timesteps", "tokens", "edges"}
    assert torch.equal(kwargs["edges"], mask_edges(label))
    assert torch.equal(kwargs["tokens"], tokenizer(batch["prompt"]))
    # with phrases always on, every prompt grows by one phrase (two words) and the edges stay those of the mask
    _, _, _, phrased = TextEdgePrepareBatch(scheduler, tokenizer, "mask", phrase_probability=1.0)(batch)
    assert ((phrased["tokens"] > 0).sum(1) == 5).all() and torch.equal(phrased["edges"], kwargs["edges"])
    # image edges: Canny by default, or the edge detector given (HED when a user has its weights)
    _, _, _, canny = TextEdgePrepareBatch(scheduler, tokenizer, "image", phrase_probability=1.0)(batch)
    assert torch.equal(canny["edges"], canny_edges(batch["image"]))  # from the image before its phrase change
    detector = TextEdgePrepareBatch(scheduler, tokenizer, "image", edge_detector=lambda x: (x > 0).float())
    assert torch.equal(detector(batch)[3]["edges"], (batch["image"] > 0).float())
    with pytest.raises(InputError, match="'edge_source'"):
        TextEdgePrepareBatch(scheduler, tokenizer, "hed")


def test_attach_prompts_reads_categories_per_image(tmp_path):
    attach_prompts = bundle_module("diffboost", "text_conditioning").attach_prompts

    csv_path = tmp_path / "index.csv"
    csv_path.write_text("file,cls\nbenign_001.png,benign\nnormal_002.png,normal\n")
    pairs = [{"name": "benign_001", "source": "/x/images/benign_001.png"}, {"name": "normal_002", "source": None}]
    out = attach_prompts(pairs, "US", "breast", categories_csv=str(csv_path))
    assert [p["prompt"] for p in out] == ["US, breast, benign", "US, breast, normal"] and "prompt" not in pairs[0]
    fixed = attach_prompts(pairs, "X-ray", "chest", category="lungs")
    assert {p["prompt"] for p in fixed} == {"X-ray, chest, lungs"}
    with pytest.raises(InputError, match="no category for image 'other'"):
        attach_prompts([{"name": "other"}], "US", "breast", categories_csv=str(csv_path))
    with pytest.raises(InputError, match="lacks the columns 'file' and 'category'"):
        attach_prompts(pairs, "US", "breast", categories_csv=str(csv_path), category_column="category")


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    return tiny_clip_folder(tmp_path_factory.mktemp("clip"))


def test_clip_tokenizer_pads_and_truncates_to_max_length(clip_folder):
    tokenizer = ClipTokenizer(clip_folder, max_length=12)
    # 8 tokens: start, "u" "s", ",", "breast", ",", "benign", end (whole words where the tiny BPE has merges)
    ids = tokenizer(["US, breast, benign", "US, breast, benign, enhanced contrast"])
    start, end = tokenizer.tokenizer.bos_token_id, tokenizer.tokenizer.eos_token_id
    assert ids.shape == (2, 12) and ids.dtype == torch.long and (ids[:, 0] == start).all()
    assert (ids[0, 7:] == end).all() and (ids[0, :7] != end).all()  # closed, then padded with the end token
    assert ids[1, -1] == end and (ids[1, :11] != end).all()  # too long: truncated, still closed by the end token
    assert len(tokenizer) == len(tokenizer.tokenizer) and torch.equal(tokenizer("US, breast, benign"), ids[:1])


def test_clip_encoder_is_frozen_clip_plus_a_trained_projection(clip_folder):
    from transformers import CLIPTextModel

    tokenizer = ClipTokenizer(clip_folder, max_length=8)
    encoder = ClipTextEncoder(clip_folder, dim=16).train()
    assert not encoder.clip.training  # no dropout in the frozen part, even in train mode
    tokens = tokenizer(PROMPTS)
    reference = CLIPTextModel.from_pretrained(clip_folder).eval()(input_ids=tokens).last_hidden_state
    torch.testing.assert_close(encoder(tokens), encoder.projection(reference))

    model = tiny_model(len(tokenizer), text_encoder=encoder)
    clip_before = {k: v.clone() for k, v in encoder.clip.state_dict().items()}
    projection_before = encoder.projection.weight.detach().clone()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    x = torch.randn(3, 1, 16, 16)
    for _ in range(3):  # output and attention projections start at zero: the context gets a gradient from step 3 on
        optimizer.zero_grad()
        torch.nn.functional.mse_loss(model(x, torch.tensor([1, 5, 9]), tokens, torch.zeros_like(x)), x).backward()
        optimizer.step()
    assert all(torch.equal(clip_before[k], v) for k, v in encoder.clip.state_dict().items())
    assert not torch.equal(projection_before, encoder.projection.weight)


def test_clip_errors_name_the_folder_and_the_missing_extra(tmp_path, clip_folder, monkeypatch):
    with pytest.raises(InputError, match=f"clip_path '{tmp_path}' is not a folder holding a CLIP text model"):
        ClipTokenizer(tmp_path)
    monkeypatch.setitem(__import__("sys").modules, "transformers", None)  # as if not installed
    with pytest.raises(InputError, match="pip install -r requirements-clip.txt"):
        ClipTextEncoder(clip_folder)
