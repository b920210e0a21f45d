"""Micro-batching: the chunked step gives the whole batch's gradient and optimiser step, and refuses what it cannot."""

from __future__ import annotations

import copy

import pytest
import torch
from ignite.engine import Events
from monai.engines import SupervisedTrainer
from monai.networks.nets import DiffusionModelUNet
from torch import nn

from common.micro_batching import MicroBatchIteration, accumulate_gradients, split_along_batch


def small_unet() -> nn.Module:
    torch.manual_seed(0)
    return DiffusionModelUNet(
        spatial_dims=2,
        in_channels=1,
        out_channels=1,
        channels=(8, 8),
        attention_levels=(False, True),
        num_res_blocks=1,
        num_head_channels=8,
        norm_num_groups=8,
    )


def gradients(network: nn.Module) -> list[torch.Tensor]:
    return [p.grad.clone() for p in network.parameters()]


def test_chunked_gradient_equals_the_whole_batch_gradient_with_unequal_chunks():
    network = small_unet()
    inputs, targets = torch.randn(7, 1, 8, 8), torch.randn(7, 1, 8, 8)
    timesteps = torch.randint(0, 1000, (7,))
    whole = nn.functional.mse_loss(network(inputs, timesteps), targets)
    whole.backward()
    expected = gradients(network)
    network.zero_grad()
    prediction, loss = accumulate_gradients(
        network, nn.MSELoss(), inputs, targets, kwargs={"timesteps": timesteps}, micro_batch_size=3
    )
    torch.testing.assert_close(loss, whole.detach())
    assert prediction.shape == (7, 1, 8, 8) and not prediction.requires_grad
    for got, want in zip(gradients(network), expected):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


def test_no_sync_is_entered_for_every_chunk_but_the_last():
    entered = []

    class Recorder:
        def __enter__(self):
            entered.append(True)

        def __exit__(self, *exc):
            return False

    network = nn.Linear(2, 1)
    inputs, targets = torch.randn(5, 2), torch.randn(5, 1)
    accumulate_gradients(network, nn.MSELoss(), inputs, targets, micro_batch_size=2, no_sync=Recorder)
    assert len(entered) == 2  # chunks of 2, 2, 1: all-reduce only on the last


def test_split_passes_per_batch_constants_whole():
    value = {"t": torch.arange(6), "scale": torch.tensor(2.0), "table": torch.zeros(3, 4), "name": "x"}
    part = split_along_batch(value, 6, 2, 4)
    assert part["t"].tolist() == [2, 3] and part["scale"] == 2.0 and part["table"].shape == (3, 4)
    assert part["name"] == "x"


def trainer(network: nn.Module, iteration_update=None) -> SupervisedTrainer:
    generator = torch.Generator().manual_seed(0)
    image, label = (torch.randn(6, 1, 8, 8, generator=generator) for _ in range(2))
    data = [{"image": image, "label": label}]
    return SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=data,
        network=network,
        optimizer=torch.optim.SGD(network.parameters(), lr=0.1),
        loss_function=nn.MSELoss(),
        prepare_batch=lambda batch, device, non_blocking, **kw: (
            batch["image"],
            batch["label"],
            (torch.full((6,), 10),),
            {},
        ),
        iteration_update=iteration_update,
        decollate=False,
    )


def test_trainer_step_with_micro_batches_matches_the_plain_trainer():
    plain, chunked = small_unet(), small_unet()
    reference = trainer(plain)
    micro = trainer(chunked, MicroBatchIteration(micro_batch_size=4))
    losses = []
    micro.add_event_handler(Events.ITERATION_COMPLETED, lambda engine: losses.append(engine.state.output["loss"]))
    reference.run()
    micro.run()
    assert micro.state.iteration == 1 and len(losses) == 1
    torch.testing.assert_close(losses[0], reference.state.output["loss"], rtol=1e-5, atol=1e-7)
    for a, b in zip(chunked.parameters(), plain.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_none_runs_the_trainers_own_iteration():
    network = small_unet()
    start = copy.deepcopy(network.state_dict())
    engine = trainer(network, MicroBatchIteration(None))
    engine.run()
    assert any(not torch.equal(start[k], v) for k, v in network.state_dict().items())


def test_batch_norm_is_refused_naming_the_layer():
    network = nn.Sequential(nn.Conv2d(1, 1, 1), nn.BatchNorm2d(1))
    with pytest.raises(ValueError, match="'1' is BatchNorm2d"):
        trainer(network, MicroBatchIteration(2)).run()


@pytest.mark.parametrize("size", [0, -3])
def test_micro_batch_size_must_be_positive(size):
    with pytest.raises(ValueError, match="micro_batch_size must be a positive"):
        MicroBatchIteration(size)
