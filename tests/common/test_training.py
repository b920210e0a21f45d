"""Training pieces: the noisy-pair batch of Alg. 1, timesteps, the iteration loader, the paired model forward."""

from __future__ import annotations

import torch
from torch import nn

from common.schedulers import build_scheduler
from common.training import iteration_loader, sample_timesteps, training_items
from tests.shared_data import bundle_module

PIG = bundle_module("pig", "pig")
PairedDiffusionModel, PairedDiffusionPrepareBatch = (PIG.PairedDiffusionModel, PIG.PairedDiffusionPrepareBatch)


class Recorder(nn.Module):
    """Returns zeros of ``out_channels`` and remembers its inputs."""

    def __init__(self, out_channels: int = 1) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.inputs: list[torch.Tensor] = []
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, inputs, timesteps):
        self.inputs.append(inputs.clone())
        return torch.zeros(inputs.shape[0], self.out_channels, *inputs.shape[2:]) + self.dummy


def test_prepare_batch_noises_both_streams_with_the_same_t():
    scheduler = build_scheduler("ddim", num_train_timesteps=50)
    prepare = PairedDiffusionPrepareBatch(scheduler, num_classes=2, antithetic=False)
    image = torch.rand(4, 1, 8, 8) * 2 - 1
    label = (torch.rand(4, 1, 8, 8) > 0.5).long()
    torch.manual_seed(0)
    inputs, targets, args, kwargs = prepare({"image": image, "label": label})
    assert inputs.shape == (4, 2, 8, 8) and targets.shape == (4, 2, 8, 8) and args == ()
    mask = label.float() * 2 - 1
    torch.testing.assert_close(kwargs["clean_mask"], mask)
    ab = scheduler.alphas_cumprod[kwargs["timesteps"]].view(-1, 1, 1, 1)
    # Eq. (9)-(10): x_t = sqrt(ab) x0 + sqrt(1-ab) eps_1, y_t = sqrt(ab) y0 + sqrt(1-ab) eps_2
    torch.testing.assert_close(inputs[:, :1], ab.sqrt() * mask + (1 - ab).sqrt() * targets[:, :1])
    torch.testing.assert_close(inputs[:, 1:], ab.sqrt() * image + (1 - ab).sqrt() * targets[:, 1:])
    assert not torch.allclose(targets[:, :1], targets[:, 1:])  # independent noise per stream


def test_prepare_batch_one_hot_for_multiclass():
    prepare = PairedDiffusionPrepareBatch(build_scheduler("ddim", num_train_timesteps=10), num_classes=4)
    label = torch.randint(0, 4, (2, 1, 8, 8))
    inputs, targets, _, kwargs = prepare({"image": torch.zeros(2, 1, 8, 8), "label": label})
    assert inputs.shape == (2, 5, 8, 8) and kwargs["clean_mask"].shape == (2, 4, 8, 8)
    assert torch.equal(kwargs["clean_mask"].argmax(1, keepdim=True), label)


def test_antithetic_timesteps_pair_up():
    torch.manual_seed(0)
    t = sample_timesteps(8, 1000, antithetic=True)
    assert torch.equal(t[:4] + t[4:], torch.full((4,), 999))
    assert sample_timesteps(5, 1000, antithetic=True).shape == (5,)
    t = sample_timesteps(10_000, 7, antithetic=False)
    assert t.min() == 0 and t.max() == 6


def test_iteration_loader_has_fixed_epoch_length():
    data = training_items([{"image": torch.zeros(1, 4, 4), "label": torch.zeros(1, 4, 4), "affine": None}] * 3)
    assert set(data[0]) == {"image", "label"}
    loader = iteration_loader(data, batch_size=4, iterations_per_epoch=5, seed=0)
    batches = list(loader)
    assert len(batches) == 5 and batches[0]["image"].shape == (4, 1, 4, 4)


def test_model_forward_conditions_image_model_on_clean_mask_or_guider_estimate():
    scheduler = build_scheduler("ddim", num_train_timesteps=10)
    guider, image_model = Recorder(1), Recorder(1)
    model = PairedDiffusionModel(guider, image_model)
    noisy = torch.randn(2, 2, 4, 4)
    clean = torch.ones(2, 1, 4, 4)
    out = model(noisy, torch.tensor([3, 7]), clean)
    assert out.shape == (2, 2, 4, 4)
    torch.testing.assert_close(guider.inputs[0], noisy)
    torch.testing.assert_close(image_model.inputs[0][:, :1], clean)
    torch.testing.assert_close(image_model.inputs[0][:, 1:], noisy[:, 1:])

    model = PairedDiffusionModel(
        Recorder(1),
        image_model,
        image_condition="guider_x0",
        alphas_cumprod=scheduler.alphas_cumprod,
        estimate_transform="none",
    )
    model(noisy, torch.tensor([3, 7]), clean)
    ab = scheduler.alphas_cumprod[torch.tensor([3, 7])].view(-1, 1, 1, 1)
    # zero predicted noise -> x0_hat = x_t / sqrt(ab)
    torch.testing.assert_close(image_model.inputs[1][:, :1], noisy[:, :1] / ab.sqrt())


def test_prepare_batch_targets_follow_the_prediction_type():
    scheduler = build_scheduler("ddim", num_train_timesteps=50, prediction_type="v_prediction")
    prepare = PairedDiffusionPrepareBatch(scheduler, num_classes=2, antithetic=False)
    image = torch.rand(3, 1, 8, 8) * 2 - 1
    label = (torch.rand(3, 1, 8, 8) > 0.5).long()
    inputs, targets, _, kwargs = prepare({"image": image, "label": label})
    ab = scheduler.alphas_cumprod[kwargs["timesteps"]].view(-1, 1, 1, 1)
    mask = kwargs["clean_mask"]
    # x_t = sqrt(ab) x0 + sqrt(1-ab) eps and v = sqrt(ab) eps - sqrt(1-ab) x0  =>  eps = sqrt(1-ab) x_t + sqrt(ab) v
    eps_mask = (1 - ab).sqrt() * inputs[:, :1] + ab.sqrt() * targets[:, :1]
    torch.testing.assert_close(targets[:, :1], ab.sqrt() * eps_mask - (1 - ab).sqrt() * mask, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(
        ab.sqrt() * inputs[:, 1:] - (1 - ab).sqrt() * targets[:, 1:], image, rtol=1e-4, atol=1e-4
    )


def _batch(n: int = 64) -> dict:
    label = (torch.rand(n, 1, 8, 8) > 0.5).long()
    return {"image": torch.rand(n, 1, 8, 8) * 2 - 1, "label": label}


def test_task_conditioned_batch_noises_the_chosen_half_and_drops_masks():
    TaskConditionedPrepareBatch = bundle_module("diffuse_expand", "diffuse_expand").TaskConditionedPrepareBatch

    torch.manual_seed(0)
    scheduler = build_scheduler("ddim", prediction_type="epsilon")
    batch = _batch(400)
    noisy, target, args, kwargs = TaskConditionedPrepareBatch(scheduler, condition_dropout=0.25)(batch)
    task, condition, t = kwargs["task"], kwargs["condition"], kwargs["timesteps"]
    mask = batch["label"].float() * 2 - 1
    clean = torch.where(task.view(-1, 1, 1, 1).bool(), batch["image"], mask)
    torch.testing.assert_close(noisy, scheduler.add_noise(clean, target, t))
    assert 0.4 < task.float().mean() < 0.6
    is_image = task == 1
    has_mask = (condition != 0).flatten(1).any(1)
    assert not has_mask[~is_image].any(), "mask samples must never see a mask condition"
    torch.testing.assert_close(condition[has_mask], mask[has_mask])
    assert 0.65 < has_mask[is_image].float().mean() < 0.85  # 1 - dropout
    assert args == ()


def test_noisy_segmenter_batch_and_loss_follow_eq_4():
    NoisySegmenterLoss = bundle_module("diffuse_expand", "diffuse_expand").NoisySegmenterLoss
    NoisySegmenterPrepareBatch = bundle_module("diffuse_expand", "diffuse_expand").NoisySegmenterPrepareBatch

    torch.manual_seed(0)
    noisy, target, _, kwargs = NoisySegmenterPrepareBatch(build_scheduler("ddim"))(_batch(16))
    assert set(target) == {"mask", "task"} and kwargs["timesteps"].shape == (16,)
    loss = NoisySegmenterLoss()
    logits, task_logit = torch.randn(16, 1, 8, 8), torch.randn(16)
    only_masks = {"mask": target["mask"], "task": torch.zeros(16)}
    # masks: the task BCE alone, whatever the segmentation logits
    expected = torch.nn.functional.binary_cross_entropy_with_logits(task_logit, torch.zeros(16))
    torch.testing.assert_close(loss((logits, task_logit), only_masks), expected)
    torch.testing.assert_close(loss((logits * 5, task_logit), only_masks), expected)
    # images: the segmentation terms count
    only_images = {"mask": target["mask"], "task": torch.ones(16)}
    assert loss((logits, task_logit), only_images) > expected


def test_semantic_batch_gives_the_hybrid_loss_everything_it_needs():
    HybridLoss = bundle_module("ct_semantic_synthesis", "semantic_synthesis").HybridLoss
    SemanticDiffusionPrepareBatch = bundle_module(
        "ct_semantic_synthesis", "semantic_synthesis"
    ).SemanticDiffusionPrepareBatch

    scheduler = build_scheduler("ddpm", num_train_timesteps=100)
    torch.manual_seed(0)
    batch = {"image": torch.rand(4, 1, 8, 8) * 2 - 1, "label": torch.randint(0, 3, (4, 1, 8, 8))}
    x_t, target, args, kwargs = SemanticDiffusionPrepareBatch(scheduler)(batch)
    assert args == () and set(kwargs) == {"timesteps", "label"} and kwargs["label"].dtype == torch.long
    assert set(target) == {"noise", "x0", "x_t", "timesteps"}
    assert torch.equal(target["x_t"], x_t) and torch.equal(target["timesteps"], kwargs["timesteps"])
    expected = scheduler.add_noise(batch["image"], target["noise"], kwargs["timesteps"])
    torch.testing.assert_close(x_t, expected)
    perfect = torch.cat([target["noise"], -torch.ones_like(x_t)], 1)  # true noise, posterior variance
    assert float(HybridLoss(scheduler)(perfect, target)) < 1e-6
    _, plain_target, _, _ = SemanticDiffusionPrepareBatch(scheduler, hybrid=False)(batch)
    assert isinstance(plain_target, torch.Tensor) and plain_target.shape == (4, 1, 8, 8)
