"""The paired sampler (PIG Alg. 2) against the paper's equations, oracles and the scheduler grid."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from common.diffusion import predict_x0
from common.errors import InputError
from common.schedulers import UniformDDIMScheduler, build_scheduler
from tests.shared_data import bundle_module

PIG = bundle_module("pig", "pig")
PairedDiffusionModel, binarize_mask_estimate, PairedSampler = (
    PIG.PairedDiffusionModel,
    PIG.binarize_mask_estimate,
    PIG.PairedSampler,
)


def linear_alpha_bar(num_train_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> torch.Tensor:
    """alpha_bar_t from the paper's linear beta schedule, computed independently of MONAI."""
    betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float64)
    return torch.cumprod(1 - betas, dim=0)


class AffineNet(nn.Module):
    """A deterministic 'denoiser': a fixed mix of the two input channels and the timestep."""

    def __init__(self, a: float, b: float, c: float) -> None:
        super().__init__()
        self.a, self.b, self.c = a, b, c
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, inputs: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        t = timesteps.to(inputs.dtype).view(-1, 1, 1, 1)
        return self.a * inputs[:, :1] + self.b * inputs[:, 1:2] + self.c * t / 100


class OracleNet(nn.Module):
    """The exact noise of a one-sample dataset: eps = (z_t - sqrt(ab) z*) / sqrt(1 - ab), from the noisy channel."""

    def __init__(self, target: torch.Tensor, alpha_bar: torch.Tensor, channel: int, expected_condition=None) -> None:
        super().__init__()
        self.register_buffer("target", target)
        self.alpha_bar = alpha_bar.float()
        self.channel = channel
        self.expected_condition = expected_condition
        self.conditions: list[torch.Tensor] = []
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, inputs: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        if self.expected_condition is not None:
            self.conditions.append(inputs[:, :1].clone())
        ab = self.alpha_bar[timesteps].view(-1, 1, 1, 1)
        z_t = inputs[:, self.channel : self.channel + 1]
        return (z_t - ab.sqrt() * self.target) / (1 - ab).sqrt()


def test_uniform_ddim_grid_matches_authors_code():
    scheduler = build_scheduler("ddim", num_train_timesteps=1024)
    scheduler.set_timesteps(256)
    assert scheduler.timesteps.tolist() == list(range(1020, -1, -4))
    assert float(scheduler.final_alpha_cumprod) == 1.0
    # every step lands exactly on the next evaluated timestep
    scheduler.set_timesteps(50)
    steps = scheduler.timesteps.tolist()
    stride = 1024 // 50
    assert all(a - b == stride for a, b in zip(steps, steps[1:]))


def test_uniform_ddim_rejects_bad_step_count():
    scheduler = build_scheduler("ddim", num_train_timesteps=100)
    with pytest.raises(ValueError, match="num_inference_steps"):
        scheduler.set_timesteps(0)
    with pytest.raises(ValueError, match="must be one of"):
        build_scheduler("euler")


def test_build_scheduler_does_not_clip():
    assert build_scheduler("ddim").clip_sample is False
    assert build_scheduler("ddpm").clip_sample is False


def test_alpha_bar_is_the_papers_linear_schedule():
    scheduler = build_scheduler("ddim", num_train_timesteps=1024)
    torch.testing.assert_close(scheduler.alphas_cumprod.double(), linear_alpha_bar(1024), rtol=1e-5, atol=1e-6)


def test_sampler_update_equals_eq_6_and_7():
    """Alg. 2 written out by hand with the paper's equations equals the sampler, step by step."""
    T, n = 40, 5
    guider, image_model = AffineNet(0.3, -0.2, 0.5), AffineNet(0.4, 0.1, -0.3)
    model = PairedDiffusionModel(guider, image_model, estimate_transform="none")
    sampler = PairedSampler(build_scheduler("ddim", num_train_timesteps=T), num_inference_steps=n)
    g = torch.Generator().manual_seed(0)
    x_T, y_T = torch.randn(2, 1, 6, 6, generator=g), torch.randn(2, 1, 6, 6, generator=g)
    x_out, y_out = sampler(model, x_T, y_T)

    ab = linear_alpha_bar(T).float()
    x, y = x_T.clone(), y_T.clone()
    for t in range(T - T // n, -1, -(T // n)):
        tt = torch.full((2,), t)
        ab_t = ab[t]
        ab_prev = ab[t - T // n] if t - T // n >= 0 else torch.tensor(1.0)
        eps_x = guider(torch.cat([x, y], 1), tt)
        x0 = (x - (1 - ab_t).sqrt() * eps_x) / ab_t.sqrt()  # Eq. (6)
        x_next = ab_prev.sqrt() * x0 + (1 - ab_prev).sqrt() * eps_x  # Eq. (7), sigma = 0
        eps_y = image_model(torch.cat([x0, y], 1), tt)  # model_y conditioned on x0_hat
        y0 = (y - (1 - ab_t).sqrt() * eps_y) / ab_t.sqrt()
        y = ab_prev.sqrt() * y0 + (1 - ab_prev).sqrt() * eps_y
        x = x_next
    torch.testing.assert_close(x_out, x, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(y_out, y, rtol=1e-4, atol=1e-4)


def test_the_samplers_estimate_transform_overrides_the_models():
    """Sampling a model trained with "clamp" as Alg. 2 is written ("none") equals sampling a "none" model."""
    guider, image_model = AffineNet(0.3, -0.2, 2.5), AffineNet(0.4, 0.1, -0.3)  # estimates far outside [-1, 1]
    scheduler = build_scheduler("ddim", num_train_timesteps=40)
    noise = torch.randn(2, 1, 6, 6, generator=torch.Generator().manual_seed(0)), torch.randn(2, 1, 6, 6)
    clamped = PairedDiffusionModel(guider, image_model, estimate_transform="clamp")
    raw = PairedDiffusionModel(guider, image_model, estimate_transform="none")
    as_written = PairedSampler(scheduler, 5, estimate_transform="none")(clamped, *noise)
    torch.testing.assert_close(as_written, PairedSampler(scheduler, 5)(raw, *noise))
    assert not torch.allclose(as_written[1], PairedSampler(scheduler, 5)(clamped, *noise)[1])
    with pytest.raises(ValueError, match="estimate_transform must be one of"):
        PairedSampler(scheduler, 5, estimate_transform="round")


@pytest.mark.parametrize("estimate_transform", ["none", "clamp", "binarize"])
def test_oracle_denoisers_return_the_single_training_pair(estimate_transform):
    T = 100
    scheduler = build_scheduler("ddim", num_train_timesteps=T)
    ab = scheduler.alphas_cumprod
    g = torch.Generator().manual_seed(1)
    mask = torch.where(torch.rand(1, 1, 8, 8, generator=g) > 0.5, 1.0, -1.0)
    mask[..., 2:6, 2:6] = 1.0  # a blob large enough to survive the binarisation's 5x5 smoothing
    mask[..., :2, :] = -1.0
    image = torch.rand(1, 1, 8, 8, generator=g) * 2 - 1
    guider = OracleNet(mask, ab, channel=0)
    image_model = OracleNet(image, ab, channel=1, expected_condition=mask)
    model = PairedDiffusionModel(guider, image_model, estimate_transform=estimate_transform)
    x0, y0 = PairedSampler(scheduler, num_inference_steps=10)(model, torch.randn(1, 1, 8, 8), torch.randn(1, 1, 8, 8))
    torch.testing.assert_close(x0, mask, atol=1e-3, rtol=0)
    torch.testing.assert_close(y0, image, atol=1e-3, rtol=0)
    # the image model was conditioned on the guider's estimate, which the oracle makes exact (Alg. 2 line 6)
    if estimate_transform != "binarize":
        for condition in image_model.conditions:
            torch.testing.assert_close(condition, mask, atol=1e-3, rtol=0)


def test_predict_x0_inverts_forward_noising():
    ab = torch.tensor([0.9, 0.1])
    x0, eps = torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4)
    x_t = ab.sqrt().view(-1, 1, 1, 1) * x0 + (1 - ab).sqrt().view(-1, 1, 1, 1) * eps
    torch.testing.assert_close(predict_x0(x_t, eps, ab), x0, rtol=1e-5, atol=1e-5)


def test_binarize_mask_estimate_thresholds_per_sample():
    est = -torch.ones(2, 1, 16, 16)
    est[0, :, 4:12, 4:12] = 3.0  # strong square
    est[1, :, 0:8, :] = 0.2  # weak half: per-sample threshold still separates it
    out = binarize_mask_estimate(est)
    assert set(out.unique().tolist()) <= {-1.0, 1.0}
    assert out[0, 0, 8, 8] == 1 and out[0, 0, 0, 0] == -1
    assert out[1, 0, 2, 8] == 1 and out[1, 0, 14, 8] == -1


def test_paired_model_validates_options():
    with pytest.raises(ValueError, match="image_condition"):
        PairedDiffusionModel(nn.Identity(), nn.Identity(), image_condition="text")
    with pytest.raises(ValueError, match="alphas_cumprod"):
        PairedDiffusionModel(nn.Identity(), nn.Identity(), image_condition="guider_x0")
    with pytest.raises(ValueError, match="estimate_transform"):
        PairedDiffusionModel(nn.Identity(), nn.Identity(), estimate_transform="round")


def test_uniform_ddim_is_a_monai_ddim():
    from monai.networks.schedulers import DDIMScheduler

    assert issubclass(UniformDDIMScheduler, DDIMScheduler)


def test_image_sampler_with_oracle_returns_target():
    from common.sampling import ImageSampler

    T = 100
    scheduler = build_scheduler("ddim", num_train_timesteps=T)
    target = torch.rand(1, 1, 8, 8) * 2 - 1
    oracle = OracleNet(target, scheduler.alphas_cumprod, channel=0)
    out = ImageSampler(scheduler, num_inference_steps=10)(lambda x, t: oracle(x, t), torch.randn(1, 1, 8, 8))
    torch.testing.assert_close(out, target, atol=1e-3, rtol=0)


def test_mask_conditioned_sampler_cycles_real_masks_and_conditions_on_them():
    MaskConditionedSampler = bundle_module("pig", "baselines").MaskConditionedSampler

    T = 100
    scheduler = build_scheduler("ddim", num_train_timesteps=T)
    masks = [torch.zeros(1, 8, 8, dtype=torch.long), torch.ones(1, 8, 8, dtype=torch.long)]
    image = torch.rand(1, 1, 8, 8) * 2 - 1
    image_model = OracleNet(image, scheduler.alphas_cumprod, channel=1, expected_condition=True)
    model = PairedDiffusionModel(AffineNet(0, 0, 0), image_model)
    sampler = MaskConditionedSampler(masks, scheduler, num_inference_steps=5)
    cond, out = sampler(model, torch.randn(3, 1, 8, 8), torch.randn(3, 1, 8, 8), indices=[0, 1, 2])
    assert cond[:, 0, 0, 0].tolist() == [-1.0, 1.0, -1.0]  # masks 0, 1, 0 encoded in {-1, 1}
    torch.testing.assert_close(out, image.expand(3, -1, -1, -1), atol=1e-3, rtol=0)
    torch.testing.assert_close(image_model.conditions[0], cond)


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction", "sample"])
def test_predict_x0_for_each_parameterisation(kind):
    scheduler = build_scheduler("ddim", num_train_timesteps=100, prediction_type=kind)
    x0, eps = torch.randn(2, 1, 4, 4), torch.randn(2, 1, 4, 4)
    t = torch.tensor([10, 90])
    x_t = scheduler.add_noise(x0, eps, t)
    output = {"epsilon": eps, "v_prediction": scheduler.get_velocity(x0, eps, t), "sample": x0}[kind]
    torch.testing.assert_close(predict_x0(x_t, output, scheduler.alphas_cumprod[t], kind), x0, rtol=1e-4, atol=1e-4)


class VelocityOracle(nn.Module):
    """The exact velocity of a one-sample dataset: v = sqrt(ab) eps - sqrt(1-ab) z*, eps recovered from z_t."""

    def __init__(self, target: torch.Tensor, alpha_bar: torch.Tensor, channel: int) -> None:
        super().__init__()
        self.eps_oracle = OracleNet(target, alpha_bar, channel)

    def forward(self, inputs, timesteps):
        ab = self.eps_oracle.alpha_bar[timesteps].view(-1, 1, 1, 1)
        eps = self.eps_oracle(inputs, timesteps)
        return ab.sqrt() * eps - (1 - ab).sqrt() * self.eps_oracle.target


def test_v_prediction_oracles_return_the_single_training_pair():
    scheduler = build_scheduler("ddim", num_train_timesteps=100, prediction_type="v_prediction")
    ab = scheduler.alphas_cumprod
    mask = torch.where(torch.rand(1, 1, 8, 8) > 0.5, 1.0, -1.0)
    image = torch.rand(1, 1, 8, 8) * 2 - 1
    model = PairedDiffusionModel(VelocityOracle(mask, ab, 0), VelocityOracle(image, ab, 1), estimate_transform="none")
    x0, y0 = PairedSampler(scheduler, num_inference_steps=10)(model, torch.randn(1, 1, 8, 8), torch.randn(1, 1, 8, 8))
    torch.testing.assert_close(x0, mask, atol=1e-3, rtol=0)
    torch.testing.assert_close(y0, image, atol=1e-3, rtol=0)


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction"])
def test_dpm_solver_pp_from_diffusers_drives_the_paired_sampler(kind):
    """DPM-Solver++ (diffusers) behind the same sampler interface: same schedule, oracle denoisers recover the pair."""
    T = 100
    dpm = build_scheduler("dpmsolver++", num_train_timesteps=T, prediction_type=kind)
    ddim = build_scheduler("ddim", num_train_timesteps=T, prediction_type=kind)
    torch.testing.assert_close(dpm.alphas_cumprod.float(), ddim.alphas_cumprod.float(), rtol=1e-5, atol=1e-6)
    ab = ddim.alphas_cumprod
    mask = torch.where(torch.rand(1, 1, 8, 8) > 0.5, 1.0, -1.0)
    image = torch.rand(1, 1, 8, 8) * 2 - 1
    net = OracleNet if kind == "epsilon" else VelocityOracle
    model = PairedDiffusionModel(net(mask, ab, 0), net(image, ab, 1), estimate_transform="none")
    sampler = PairedSampler(dpm, num_inference_steps=8)
    x0, y0 = sampler(model, torch.randn(1, 1, 8, 8), torch.randn(1, 1, 8, 8))
    torch.testing.assert_close(x0, mask, atol=1e-3, rtol=0)
    torch.testing.assert_close(y0, image, atol=1e-3, rtol=0)
    # the multistep history lives in per-stream copies: the configured scheduler is untouched and reusable
    assert getattr(dpm, "num_inference_steps", None) is None


class TaskOracle(nn.Module):
    """Exact noise for a one-pair dataset, per task: task 0 -> the mask, task 1 -> the image; records conditions."""

    def __init__(self, mask: torch.Tensor, image: torch.Tensor, alpha_bar: torch.Tensor) -> None:
        super().__init__()
        self.mask, self.image, self.alpha_bar = mask, image, alpha_bar.float()
        self.conditions: list[torch.Tensor | None] = []
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x_t, timesteps, task, condition=None):
        self.conditions.append(None if condition is None else condition.clone())
        target = self.image if int(torch.as_tensor(task).flatten()[0]) == 1 else self.mask
        ab = self.alpha_bar[timesteps].view(-1, 1, 1, 1)
        return (x_t - ab.sqrt() * target) / (1 - ab).sqrt()


class MeanClassifier(nn.Module):
    """log p(y1 = image | x) grows with the mean of x; the mask logits are 0 (no pixel preference)."""

    def forward(self, x, t):
        return torch.zeros_like(x), 10 * x.mean(dim=(1, 2, 3))


@pytest.mark.parametrize("method", ["ddim", "dpmsolver++"])
def test_two_phase_sampler_with_oracles_returns_the_pair_and_conditions_on_its_mask(method):
    TwoPhaseSampler = bundle_module("diffuse_expand", "diffuse_expand").TwoPhaseSampler

    mask = torch.where(torch.rand(1, 1, 8, 8) > 0.5, 1.0, -1.0)
    image = torch.rand(1, 1, 8, 8) * 2 - 1
    scheduler = build_scheduler(method)
    oracle = TaskOracle(mask, image, scheduler.alphas_cumprod)
    out_mask, out_image = TwoPhaseSampler(scheduler, num_inference_steps=10)(
        oracle, torch.randn(1, 1, 8, 8), torch.randn(1, 1, 8, 8)
    )
    torch.testing.assert_close(out_mask, mask)
    torch.testing.assert_close(out_image, image, atol=1e-3, rtol=0)
    assert oracle.conditions[0] is None and len(oracle.conditions) == 20
    assert all(torch.equal(c, mask) for c in oracle.conditions[10:])


def test_two_phase_classifier_guidance_pushes_towards_the_class():
    TwoPhaseSampler = bundle_module("diffuse_expand", "diffuse_expand").TwoPhaseSampler

    torch.manual_seed(0)
    mask = torch.ones(2, 1, 8, 8)
    scheduler = build_scheduler("ddim")

    def oracle(x_t, timesteps, task, condition=None):  # predicts no noise: guidance effects accumulate
        return torch.zeros_like(x_t)

    noise = torch.randn(2, 1, 8, 8)
    plain = TwoPhaseSampler(scheduler, 10).phase(oracle, noise, task=1, condition=mask)
    off = TwoPhaseSampler(scheduler, 10, classifier=MeanClassifier(), classifier_scale=0.0).phase(
        oracle, noise, 1, mask
    )
    guided = TwoPhaseSampler(scheduler, 10, classifier=MeanClassifier(), classifier_scale=2.0).phase(
        oracle, noise, 1, mask
    )
    torch.testing.assert_close(off, plain)
    assert (guided.mean(dim=(1, 2, 3)) > plain.mean(dim=(1, 2, 3)) + 0.05).all()


def test_two_phase_guidance_leaves_the_mask_phase_alone_unless_asked():
    """The authors' code guides the image phase only; guide_mask_phase adds log p(y1 = mask | x_t) to the mask phase."""
    TwoPhaseSampler = bundle_module("diffuse_expand", "diffuse_expand").TwoPhaseSampler
    scheduler = build_scheduler("ddim")

    def oracle(x_t, timesteps, task, condition=None):
        return torch.zeros_like(x_t)

    noise = torch.randn(2, 1, 8, 8)
    plain = TwoPhaseSampler(scheduler, 10).phase(oracle, noise, task=0)
    default = TwoPhaseSampler(scheduler, 10, classifier=MeanClassifier(), classifier_scale=2.0).phase(oracle, noise, 0)
    asked = TwoPhaseSampler(scheduler, 10, classifier=MeanClassifier(), classifier_scale=2.0, guide_mask_phase=True)
    torch.testing.assert_close(default, plain)
    assert (asked.phase(oracle, noise, 0).mean(dim=(1, 2, 3)) < plain.mean(dim=(1, 2, 3)) - 0.05).all()  # y1 = 0
    with pytest.raises(InputError, match="guidance_loss"):
        TwoPhaseSampler(scheduler, 10, guidance_loss="sum")


def test_label_conditioned_sampler_cycles_label_maps_and_uses_the_learned_variance():
    LearnedVarianceScheduler = bundle_module("ct_semantic_synthesis", "semantic_synthesis").LearnedVarianceScheduler
    LabelConditionedSampler = bundle_module("ct_semantic_synthesis", "semantic_synthesis").LabelConditionedSampler
    from common.transforms import encode_mask

    seen = []

    def model(x_t, t, label):
        seen.append(label.clone())
        # a constant "noise" guess and the posterior variance: the scheduler turns it into x0 = -1 images
        ab = scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
        eps = (x_t + ab.sqrt()) / (1 - ab).sqrt()
        return torch.cat([eps, -torch.ones_like(x_t)], 1)

    scheduler = LearnedVarianceScheduler(num_train_timesteps=50)
    labels = [torch.full((1, 4, 4), k) for k in range(3)]
    sampler = LabelConditionedSampler(labels, scheduler, num_inference_steps=5, num_classes=3)
    torch.manual_seed(0)
    masks, images = sampler(model, None, torch.randn(4, 1, 4, 4), indices=[0, 1, 2, 4])
    assert [int(m[0, 0, 0]) for m in seen[0]] == [0, 1, 2, 1]  # pair i uses labels[i % 3]
    assert len(seen) == 5 and all(torch.equal(s, seen[0]) for s in seen)
    torch.testing.assert_close(masks, encode_mask(torch.stack(labels)[[0, 1, 2, 1]], 3))
    torch.testing.assert_close(images, torch.full_like(images, -1.0), atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="at least one label map"):
        LabelConditionedSampler([], scheduler)


def test_every_bundles_sampler_implements_the_sampler_protocol():
    """What generate_pairs and the preview handler call: ``sampler(model, mask_noise, image_noise, indices=...)``."""
    import inspect

    from common.pix2pix import Pix2PixSampler
    from common.sampling import PairSampler

    scheduler = build_scheduler("ddim", num_train_timesteps=10)
    labels = [torch.zeros(1, 4, 4, dtype=torch.long)]
    samplers = [
        PairedSampler(scheduler, 2),
        bundle_module("pig", "baselines").MaskConditionedSampler(labels, scheduler, 2),
        bundle_module("pig", "baselines").UnconditionalSampler(scheduler, 2),
        bundle_module("diffuse_expand", "diffuse_expand").TwoPhaseSampler(scheduler, 2),
        bundle_module("ct_semantic_synthesis", "semantic_synthesis").LabelConditionedSampler(labels, scheduler, 2),
        Pix2PixSampler(labels, num_classes=2),
    ]
    for sampler in samplers:
        assert isinstance(sampler, PairSampler), type(sampler).__name__
        parameters = list(inspect.signature(sampler.__call__).parameters)
        assert parameters == ["model", "mask_noise", "image_noise", "indices"], type(sampler).__name__
