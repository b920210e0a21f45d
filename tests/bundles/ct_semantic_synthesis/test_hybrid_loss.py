"""The improved-DDPM terms, hybrid loss and learned-variance sampler against closed forms and brute force."""

from __future__ import annotations

import math

import pytest
import torch
from monai.networks.schedulers import DDPMScheduler

from common.diffusion import (
    GaussianDiffusionTerms,
    approx_standard_normal_cdf,
    discretized_gaussian_log_likelihood,
    normal_kl,
)
from common.sampling import ImageSampler
from common.schedulers import build_scheduler, prediction_type
from tests.shared_data import bundle_module

SEMANTIC_SYNTHESIS = bundle_module("ct_semantic_synthesis", "semantic_synthesis")
HybridLoss, LearnedVarianceScheduler = (SEMANTIC_SYNTHESIS.HybridLoss, SEMANTIC_SYNTHESIS.LearnedVarianceScheduler)


BIN_CENTRES = torch.linspace(-1.0, 1.0, 256, dtype=torch.float64)


def linear_betas(num_train_timesteps: int = 1000) -> torch.Tensor:
    return torch.linspace(1e-4, 0.02, num_train_timesteps, dtype=torch.float64)


def bayes_posterior(betas: torch.Tensor, t: int, x0: float, x_t: float) -> tuple[float, float]:
    """q(x_{t-1} | x_t, x0) ∝ N(x_t; sqrt(a_t) x_{t-1}, b_t) N(x_{t-1}; sqrt(ab_{t-1}) x0, 1 - ab_{t-1}), precisions."""
    if t == 0:  # q(x_{-1} | x_0, x0) is a point mass at x0
        return x0, 0.0
    alpha_bar = torch.cumprod(1 - betas, 0)
    prev = float(alpha_bar[t - 1])
    beta, alpha = float(betas[t]), 1 - float(betas[t])
    precision = alpha / beta + 1 / (1 - prev)
    mean = (math.sqrt(alpha) * x_t / beta + math.sqrt(prev) * x0 / (1 - prev)) / precision
    return mean, 1 / precision


def gaussian_log_pdf(x: torch.Tensor, mean: float, var: float) -> torch.Tensor:
    return -0.5 * (math.log(2 * math.pi * var) + (x - mean) ** 2 / var)


# ---------------------------------------------------------------------------------------------------- normal_kl


@pytest.mark.parametrize("m1,s1,m2,s2", [(0.0, 1.0, 0.0, 1.0), (0.3, 0.5, -0.7, 1.3), (2.0, 2.0, 1.0, 0.4)])
def test_normal_kl_closed_form_and_numerical_integration(m1, s1, m2, s2):
    kl = normal_kl(torch.tensor(m1, dtype=torch.float64), 2 * math.log(s1), m2, 2 * math.log(s2))
    closed = math.log(s2 / s1) + (s1**2 + (m1 - m2) ** 2) / (2 * s2**2) - 0.5
    assert float(kl) == pytest.approx(closed, abs=1e-12)
    grid = torch.linspace(-30, 30, 600_001, dtype=torch.float64)
    log_p, log_q = gaussian_log_pdf(grid, m1, s1**2), gaussian_log_pdf(grid, m2, s2**2)
    brute = torch.trapezoid(log_p.exp() * (log_p - log_q), grid)
    assert float(kl) == pytest.approx(float(brute), abs=1e-8)


def test_normal_kl_of_identical_gaussians_is_zero_and_elementwise():
    mean, logvar = torch.randn(2, 3, 4, dtype=torch.float64), torch.randn(2, 3, 4, dtype=torch.float64)
    assert torch.allclose(normal_kl(mean, logvar, mean, logvar), torch.zeros_like(mean), atol=1e-14)
    assert normal_kl(mean, logvar, mean + 0.1, logvar).shape == (2, 3, 4)
    assert bool((normal_kl(mean, logvar, mean + 0.1, logvar - 0.2) > 0).all())


# ------------------------------------------------------------------------------- discretized likelihood (t = 0)


def test_approx_cdf_is_close_to_exact_cdf():
    x = torch.linspace(-6, 6, 1201, dtype=torch.float64)
    assert float((approx_standard_normal_cdf(x) - torch.special.ndtr(x)).abs().max()) < 2e-4


@pytest.mark.parametrize("mean,scale", [(0.0, 0.3), (0.9, 0.05), (-1.4, 0.7), (0.2, 3.0), (0.1, 0.002)])
def test_discretized_bins_sum_to_one(mean, scale):
    means = torch.full_like(BIN_CENTRES, mean)
    log_scales = torch.full_like(BIN_CENTRES, math.log(scale))
    probs = discretized_gaussian_log_likelihood(BIN_CENTRES, means, log_scales).exp()
    assert float(probs.sum()) == pytest.approx(1.0, abs=1e-9)


@pytest.mark.parametrize("k", [0, 1, 77, 128, 254, 255])
def test_narrow_gaussian_on_bin_centre_has_log_likelihood_zero(k):
    x = BIN_CENTRES[k : k + 1]
    log_lik = discretized_gaussian_log_likelihood(x, x.clone(), torch.full_like(x, math.log(1e-4)))
    assert float(log_lik) == pytest.approx(0.0, abs=1e-9)
    # and a neighbouring bin gets (almost) nothing
    other = BIN_CENTRES[(k + 1) % 256 : (k + 1) % 256 + 1]
    assert float(discretized_gaussian_log_likelihood(other, x, torch.full_like(x, math.log(1e-4)))) < -20


@pytest.mark.parametrize("k,mean,scale", [(100, -0.2, 0.05), (200, 0.55, 0.02), (0, -0.95, 0.1), (255, 0.97, 0.1)])
def test_discretized_bin_against_exact_cdf(k, mean, scale):
    x = BIN_CENTRES[k]
    upper = torch.special.ndtr((x + 1 / 255 - mean) / scale) if k < 255 else torch.tensor(1.0, dtype=torch.float64)
    lower = torch.special.ndtr((x - 1 / 255 - mean) / scale) if k > 0 else torch.tensor(0.0, dtype=torch.float64)
    exact = float(upper - lower)
    got = float(discretized_gaussian_log_likelihood(x.view(1), torch.tensor([mean]), torch.tensor([math.log(scale)])))
    assert exact > 0.01
    assert math.exp(got) == pytest.approx(exact, abs=1e-3)


# --------------------------------------------------------------------------------------------- posterior terms


@pytest.mark.parametrize("t", [1, 2, 3])
def test_posterior_matches_bayes_rule_on_a_grid(t):
    betas = torch.tensor([0.05, 0.1, 0.2, 0.3], dtype=torch.float64)
    terms = GaussianDiffusionTerms(betas)
    x0, x_t = 0.4, -0.8
    alpha_bar = torch.cumprod(1 - betas, 0)
    grid = torch.linspace(-12, 12, 400_001, dtype=torch.float64)
    log_density = gaussian_log_pdf(x_t - math.sqrt(1 - betas[t]) * grid, 0.0, float(betas[t])) + gaussian_log_pdf(
        grid, math.sqrt(alpha_bar[t - 1]) * x0, 1 - float(alpha_bar[t - 1])
    )
    weights = (log_density - log_density.max()).exp()
    weights = weights / torch.trapezoid(weights, grid)
    brute_mean = float(torch.trapezoid(weights * grid, grid))
    brute_var = float(torch.trapezoid(weights * (grid - brute_mean) ** 2, grid))

    x0_tensor = torch.full((1, 1, 1, 1), x0, dtype=torch.float64)
    x_t_tensor = torch.full((1, 1, 1, 1), x_t, dtype=torch.float64)
    mean, var, log_var = terms.q_posterior(x0_tensor, x_t_tensor, torch.tensor([t]))
    assert float(mean) == pytest.approx(brute_mean, abs=1e-8)
    assert float(var) == pytest.approx(brute_var, rel=1e-7)
    assert float(log_var) == pytest.approx(math.log(brute_var), abs=1e-7)
    closed_mean, closed_var = bayes_posterior(betas, t, x0, x_t)
    assert float(mean) == pytest.approx(closed_mean, abs=1e-12)
    assert float(var) == pytest.approx(closed_var, rel=1e-12)


def test_posterior_at_t0_is_x0_and_log_variance_is_clipped():
    terms = GaussianDiffusionTerms(linear_betas())
    x0, x_t = torch.randn(2, 1, 3, 3, dtype=torch.float64), torch.randn(2, 1, 3, 3, dtype=torch.float64)
    mean, var, log_var = terms.q_posterior(x0, x_t, torch.tensor([0, 0]))
    assert torch.allclose(mean, x0, atol=1e-15)
    assert float(var.abs().max()) == 0.0
    assert torch.allclose(log_var, torch.log(terms.posterior_variance[1]).expand_as(log_var))
    assert float(terms.posterior_log_variance_clipped[0]) == float(terms.posterior_log_variance_clipped[1])
    assert mean.shape == var.shape == log_var.shape == x0.shape


def test_predict_x0_from_eps_inverts_forward_process():
    terms = GaussianDiffusionTerms(linear_betas())
    x0, eps = torch.rand(3, 2, 4, 4, dtype=torch.float64) * 2 - 1, torch.randn(3, 2, 4, 4, dtype=torch.float64)
    t = torch.tensor([0, 500, 999])
    ab = terms.alphas_cumprod[t].view(-1, 1, 1, 1)
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
    assert torch.allclose(terms.predict_x0_from_eps(x_t, t, eps), x0, atol=1e-9)


def test_model_log_variance_interpolates_in_log_space_unlike_monai_learned_range():
    monai = DDPMScheduler(1000, variance_type="learned_range", clip_sample=False)
    terms = GaussianDiffusionTerms.from_scheduler(monai)
    t = 2  # early, where beta_tilde is well below beta, so the two means differ
    beta, beta_tilde = float(terms.betas[t]), float(terms.posterior_variance[t])
    ones = torch.ones(1, 1, 2, 2, dtype=torch.float64)
    assert torch.allclose(terms.model_log_variance(ones, t), torch.full_like(ones, math.log(beta)))
    assert torch.allclose(terms.model_log_variance(-ones, t), torch.full_like(ones, math.log(beta_tilde)))
    mid = terms.model_log_variance(0 * ones, t)
    assert torch.allclose(mid, torch.full_like(ones, 0.5 * (math.log(beta) + math.log(beta_tilde))))
    # the ends agree with MONAI's learned_range, the midpoint does not: geometric vs arithmetic mean of the variances
    # (MONAI works in float32, which near t = 0 costs ~1e-4 relative)
    assert float(monai._get_variance(t, torch.tensor(1.0))) == pytest.approx(beta, rel=1e-3)
    assert float(monai._get_variance(t, torch.tensor(-1.0))) == pytest.approx(beta_tilde, rel=1e-3)
    monai_mid = float(monai._get_variance(t, torch.tensor(0.0)))
    assert monai_mid == pytest.approx((beta + beta_tilde) / 2, rel=1e-3)
    assert float(mid.exp()[0, 0, 0, 0]) == pytest.approx(math.sqrt(beta * beta_tilde), rel=1e-12)
    assert float(mid.exp()[0, 0, 0, 0]) < monai_mid * (1 - 1e-2)
    # per-sample timesteps broadcast over the batch; at t = 0 the lower end is the clipped value
    per_sample = terms.model_log_variance(-torch.ones(2, 1, 1, 1, dtype=torch.float64), torch.tensor([0, 7]))
    assert float(per_sample[0]) == pytest.approx(math.log(float(terms.posterior_variance[1])))
    assert float(per_sample[1]) == pytest.approx(math.log(float(terms.posterior_variance[7])))


# -------------------------------------------------------------------------------------------------- vlb terms


def noisy_batch(terms: GaussianDiffusionTerms, t: torch.Tensor, channels: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x0 = BIN_CENTRES[torch.randint(0, 256, (len(t), channels, 3, 3), generator=g)]
    eps = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    ab = terms.alphas_cumprod[t].view(-1, 1, 1, 1)
    return x0, eps, ab.sqrt() * x0 + (1 - ab).sqrt() * eps


def test_vlb_terms_at_t0_are_the_decoder_nll_and_at_t_positive_the_kl():
    betas = linear_betas()
    terms = GaussianDiffusionTerms(betas)
    t = torch.tensor([0, 3, 400, 999])
    x0, eps, x_t = noisy_batch(terms, t)
    g = torch.Generator().manual_seed(1)
    eps_pred = eps + 0.3 * torch.randn(eps.shape, generator=g, dtype=torch.float64)
    v = torch.rand(eps.shape, generator=g, dtype=torch.float64) * 2 - 1
    got = terms.vlb_terms(torch.cat([eps_pred, v], 1), x0, x_t, t)
    assert got.shape == (4,)

    for b, step in enumerate(t.tolist()):
        ab = float(terms.alphas_cumprod[step])
        x0_pred = (x_t[b] - math.sqrt(1 - ab) * eps_pred[b]) / math.sqrt(ab)
        post_var = bayes_posterior(betas, max(step, 1), 0.0, 0.0)[1]  # clipped at t = 0
        log_var = (v[b] + 1) / 2 * math.log(float(betas[step])) + (1 - v[b]) / 2 * math.log(post_var)
        model_mean = torch.tensor(
            [
                bayes_posterior(betas, step, a, c)[0]
                for a, c in zip(x0_pred.flatten().tolist(), x_t[b].flatten().tolist())
            ],
            dtype=torch.float64,
        ).view_as(x0_pred)
        if step == 0:
            expected = -discretized_gaussian_log_likelihood(x0[b], model_mean, 0.5 * log_var).mean() / math.log(2)
        else:
            true_mean = torch.tensor(
                [
                    bayes_posterior(betas, step, a, c)[0]
                    for a, c in zip(x0[b].flatten().tolist(), x_t[b].flatten().tolist())
                ],
                dtype=torch.float64,
            ).view_as(x0_pred)
            kl = normal_kl(true_mean, math.log(post_var), model_mean, log_var)
            expected = kl.mean() / math.log(2)
        assert float(got[b]) == pytest.approx(float(expected), rel=1e-8, abs=1e-12)


def test_vlb_terms_vanish_for_the_true_eps_and_posterior_variance():
    terms = GaussianDiffusionTerms(linear_betas())
    t = torch.tensor([1, 2, 50, 999])
    x0, eps, x_t = noisy_batch(terms, t, seed=3)
    got = terms.vlb_terms(torch.cat([eps, -torch.ones_like(eps)], 1), x0, x_t, t)
    assert float(got.abs().max()) < 1e-9
    # but not for another variance (v = +1: beta_t instead of beta_tilde_t; the two converge as t grows, so at t = 999
    # the KL is ~1e-13 and only the early steps are checked) or another mean
    assert bool((terms.vlb_terms(torch.cat([eps, torch.ones_like(eps)], 1), x0, x_t, t)[:3] > 1e-6).all())
    assert bool((terms.vlb_terms(torch.cat([eps + 0.1, -torch.ones_like(eps)], 1), x0, x_t, t) > 1e-6).all())
    # scalar t works too
    assert terms.vlb_terms(torch.cat([eps, -torch.ones_like(eps)], 1), x0, x_t, 5).shape == (4,)


# -------------------------------------------------------------------------------------------------- HybridLoss


def hybrid_inputs(terms: GaussianDiffusionTerms, dtype=torch.float64):
    t = torch.tensor([0, 10, 600])
    x0, eps, x_t = noisy_batch(terms, t, channels=1, seed=5)
    g = torch.Generator().manual_seed(6)
    output = torch.cat([eps + 0.2 * torch.randn(eps.shape, generator=g, dtype=eps.dtype), torch.zeros_like(eps)], 1)
    output = output.to(dtype).requires_grad_(True)
    target = {"noise": eps.to(dtype), "x0": x0.to(dtype), "x_t": x_t.to(dtype), "timesteps": t}
    return output, target


def test_hybrid_loss_value_and_stop_gradient():
    loss_fn = HybridLoss(linear_betas(), vlb_weight=0.001)
    output, target = hybrid_inputs(loss_fn.terms)
    loss = loss_fn(output, target)
    mse = torch.nn.functional.mse_loss(output[:, :1], target["noise"])
    vlb = loss_fn.terms.vlb_terms(output.detach(), target["x0"], target["x_t"], target["timesteps"]).mean()
    assert float(loss) == pytest.approx(float(mse + 0.001 * 1000 * vlb), rel=1e-12)
    assert float(vlb) > 0

    (grad,) = torch.autograd.grad(loss, output)
    (mse_grad,) = torch.autograd.grad(torch.nn.functional.mse_loss(output[:, :1], target["noise"]), output)
    assert torch.allclose(grad[:, :1], mse_grad[:, :1], atol=0, rtol=0)  # the VLB adds nothing to the eps channels
    assert float(grad[:, 1:].abs().min()) > 0  # ... and trains every variance output


def test_hybrid_loss_weight_options():
    scheduler = build_scheduler("ddpm", num_train_timesteps=1000)
    output, target = hybrid_inputs(GaussianDiffusionTerms.from_scheduler(scheduler))
    mse = torch.nn.functional.mse_loss(output[:, :1], target["noise"])
    assert float(HybridLoss(scheduler, vlb_weight=0.0)(output, target)) == float(mse)
    full = HybridLoss(scheduler, vlb_weight=0.001)
    literal = HybridLoss(scheduler, vlb_weight=0.001, scale_vlb_by_timesteps=False)
    assert full.vlb_multiplier == pytest.approx(1.0) and literal.vlb_multiplier == pytest.approx(0.001)
    assert float(full(output, target) - mse) == pytest.approx(1000 * float(literal(output, target) - mse), rel=1e-9)
    # float32 network outputs work and agree with float64
    out32, target32 = hybrid_inputs(full.terms, dtype=torch.float32)
    assert float(full(out32, target32)) == pytest.approx(float(full(output, target)), rel=1e-4)
    with pytest.raises(KeyError):
        full(output, {"noise": target["noise"]})
    with pytest.raises(ValueError):
        full(output[:, :1], target)


# ------------------------------------------------------------------------------------- LearnedVarianceScheduler


def test_scheduler_full_chain_equals_monai_and_respacing_keeps_alpha_bar():
    scheduler = LearnedVarianceScheduler()
    monai = DDPMScheduler(1000, clip_sample=False)
    assert torch.equal(scheduler.betas, monai.betas) and torch.equal(scheduler.alphas_cumprod, monai.alphas_cumprod)
    assert prediction_type(scheduler) == "epsilon"
    # n = T: the full chain
    assert scheduler.timesteps.tolist() == list(range(999, -1, -1))
    assert torch.allclose(scheduler.step_betas, monai.betas.double(), rtol=0, atol=1e-13)
    assert torch.allclose(scheduler.step_alphas_cumprod, torch.cumprod(1 - monai.betas.double(), 0), atol=1e-13)

    scheduler.set_timesteps(10)
    assert scheduler.timesteps.tolist() == [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]
    full = torch.cumprod(1 - monai.betas.double(), 0)
    assert torch.allclose(scheduler.step_alphas_cumprod, full[scheduler.timesteps.flip(0)], rtol=1e-12)
    assert float(scheduler.step_betas[0]) == pytest.approx(float(monai.betas[0]))
    assert float(scheduler.step_betas[1]) == pytest.approx(1 - float(full[111] / full[0]))
    scheduler.set_timesteps(7)
    steps = scheduler.timesteps.tolist()
    assert steps[0] == 999 and steps[-1] == 0 and len(set(steps)) == 7
    assert steps == sorted(steps, reverse=True) and max(abs(a - b - 999 / 6) for a, b in zip(steps, steps[1:])) <= 1
    for n in (0, 1001):
        with pytest.raises(ValueError):
            scheduler.set_timesteps(n)


def test_step_with_full_chain_and_posterior_variance_equals_monai_ddpm():
    scheduler = LearnedVarianceScheduler()
    monai = DDPMScheduler(1000, clip_sample=False)  # fixed_small: the posterior variance
    sample, eps = torch.randn(1, 1, 4, 4), torch.randn(1, 1, 4, 4)
    # MONAI computes (1 - alpha_bar_prev) / (1 - alpha_bar_t) in float32: near t = 0 that ratio loses ~1e-4 to
    # cancellation (ours is float64), hence the looser tolerance there
    for t, atol in ((500, 1e-5), (3, 2e-4)):
        ours, ours_x0 = scheduler.step(
            torch.cat([eps, -torch.ones_like(eps)], 1), t, sample, generator=torch.Generator().manual_seed(0)
        )
        theirs, theirs_x0 = monai.step(eps, t, sample, generator=torch.Generator().manual_seed(0))
        assert torch.allclose(ours, theirs, atol=atol) and torch.allclose(ours_x0, theirs_x0, atol=1e-5)


def test_respaced_step_mean_and_variance():
    scheduler = LearnedVarianceScheduler(clip_sample=False)
    scheduler.set_timesteps(10)
    ab = torch.cumprod(1 - scheduler.betas.double(), 0)
    t, prev = 444, 333
    beta = 1 - float(ab[t] / ab[prev])
    beta_tilde = beta * (1 - float(ab[prev])) / (1 - float(ab[t]))
    sample = torch.randn(1, 1, 3, 3, dtype=torch.float64)
    eps = torch.randn(1, 1, 3, 3, dtype=torch.float64)
    v = 0.3
    x0 = (sample - math.sqrt(1 - float(ab[t])) * eps) / math.sqrt(float(ab[t]))
    # posterior of the respaced chain by Bayes' rule with q(x_t | x_prev) = N(sqrt(1 - beta) x_prev, beta)
    betas_2 = torch.tensor([1 - float(ab[prev]), beta], dtype=torch.float64)  # a 2-step chain with the same alpha_bar
    mean = torch.tensor(
        [bayes_posterior(betas_2, 1, a, c)[0] for a, c in zip(x0.flatten().tolist(), sample.flatten().tolist())]
    )
    assert bayes_posterior(betas_2, 1, 0.0, 0.0)[1] == pytest.approx(beta_tilde, rel=1e-12)
    log_var = (v + 1) / 2 * math.log(beta) + (1 - v) / 2 * math.log(beta_tilde)
    z = torch.randn(sample.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    expected = mean.view_as(sample) + math.exp(0.5 * log_var) * z
    got, got_x0 = scheduler.step(
        torch.cat([eps, torch.full_like(eps, v)], 1), t, sample, generator=torch.Generator().manual_seed(4)
    )
    assert torch.allclose(got_x0, x0, atol=1e-10)
    assert torch.allclose(got, expected, atol=1e-10)
    with pytest.raises(ValueError):
        scheduler.step(torch.cat([eps, eps], 1), 445, sample)


def test_last_step_adds_no_noise():
    scheduler = LearnedVarianceScheduler()
    scheduler.set_timesteps(10)
    sample, output = torch.randn(2, 1, 3, 3), torch.randn(2, 2, 3, 3)
    a, _ = scheduler.step(output, 0, sample, generator=torch.Generator().manual_seed(0))
    b, _ = scheduler.step(output, 0, sample, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    c, _ = scheduler.step(output, 111, sample, generator=torch.Generator().manual_seed(0))
    d, _ = scheduler.step(output, 111, sample, generator=torch.Generator().manual_seed(1))
    assert not torch.allclose(c, d)


class OracleDenoiser:
    """eps = (x_t - sqrt(ab_t) x*) / sqrt(1 - ab_t) of a one-sample dataset, at the ORIGINAL timestep t; v = -1."""

    def __init__(self, target: torch.Tensor, alphas_cumprod: torch.Tensor) -> None:
        self.target, self.alphas_cumprod, self.seen = target, alphas_cumprod, []

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.seen.append(int(t[0]))
        ab = self.alphas_cumprod[t].to(x_t.dtype).view(-1, 1, 1, 1)
        eps = (x_t - ab.sqrt() * self.target) / (1 - ab).sqrt()
        return torch.cat([eps, -torch.ones_like(eps)], 1)


def test_oracle_sampling_with_ten_respaced_steps_returns_the_data_point():
    scheduler = LearnedVarianceScheduler()
    target = torch.rand(1, 1, 4, 4, dtype=torch.float64) * 2 - 1
    denoiser = OracleDenoiser(target, torch.cumprod(1 - scheduler.betas.double(), 0))
    scheduler.set_timesteps(10)
    g = torch.Generator().manual_seed(0)
    sample = torch.randn(1, 1, 4, 4, generator=g, dtype=torch.float64)
    for t in scheduler.timesteps:
        sample, _ = scheduler.step(denoiser(sample, t.view(1)), t, sample, generator=g)
    assert torch.allclose(sample, target, atol=1e-8)
    assert denoiser.seen == [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]


def test_through_image_sampler():
    scheduler = LearnedVarianceScheduler()
    target = torch.rand(2, 1, 4, 4) * 2 - 1
    denoiser = OracleDenoiser(target, scheduler.alphas_cumprod)
    noise = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    out = ImageSampler(scheduler, num_inference_steps=10)(denoiser, noise)
    assert out.shape == noise.shape and out.dtype == torch.float32
    assert torch.allclose(out, target, atol=1e-4)
    assert denoiser.seen == [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]
    assert scheduler.timesteps.numel() == 1000  # ImageSampler respaced a copy
