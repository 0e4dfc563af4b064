"""Distribution distance between rendered and real videos: FVD and KVD.

Recipes (Unterthiner et al. 2018, "Towards Accurate Generative Models of Video"; the FVD/KVD Animate-A-Story
reports on UCF-101):

* FVD: the Fréchet distance of Gaussians fitted to the two sets' video features,
  ``|mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2))`` (the matrix square root by ``scipy.linalg.sqrtm``,
  its imaginary round-off dropped, as every FID/FVD implementation does).
* KVD: the unbiased squared MMD with the polynomial kernel ``k(x, y) = (x.y / d + 1)^3`` (KID's kernel, which
  the FVD paper uses for KVD).

The features are the extractor's (:mod:`evaluation.metric_models`). The standard extractor is I3D on Kinetics-400
(:mod:`evaluation.i3d`: the time-mean of its 400 logits, from a safetensors conversion of pytorch-i3d's state dict,
:mod:`evaluation.i3d_conversion`); the ``real`` preset uses it when its weights are present and VideoMAE's pooled
features otherwise, and every result names its extractor (``video_features``). Both distances need many videos
per set (the papers use 2,048; with fewer than the feature dimension the covariances are singular and FVD is
biased upward), so every result records both set sizes.
"""

from __future__ import annotations

import numpy as np

RECIPE_FVD = "Frechet distance of Gaussians fitted to the two sets' video features (scipy sqrtm)"
RECIPE_KVD = "unbiased MMD^2 with the polynomial kernel (x.y/d + 1)^3"


def gaussian(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (``N - 1`` normalised) of ``N x D`` features."""
    features = np.asarray(features, dtype=np.float64)
    return features.mean(axis=0), np.atleast_2d(np.cov(features, rowvar=False))


def frechet_distance(mu_a: np.ndarray, sigma_a: np.ndarray, mu_b: np.ndarray, sigma_b: np.ndarray) -> float:
    """``|mu_a - mu_b|^2 + Tr(S_a + S_b - 2 sqrt(S_a S_b))``."""
    import warnings

    from scipy import linalg

    with warnings.catch_warnings():  # singular covariances (few videos) are reported in the result's note
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(sigma_a @ sigma_b)
        if not np.isfinite(covmean).all():  # a singular product: offset the diagonals, as FID's reference code does
            offset = np.eye(len(sigma_a)) * 1e-6
            covmean = linalg.sqrtm((sigma_a + offset) @ (sigma_b + offset))
    covmean = np.real(covmean)
    difference = mu_a - mu_b
    return float(difference @ difference + np.trace(sigma_a) + np.trace(sigma_b) - 2 * np.trace(covmean))


def fvd(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """The Fréchet distance of two sets of video features (``N x D`` and ``M x D``, at least 2 each)."""
    if len(features_a) < 2 or len(features_b) < 2:
        raise ValueError(f"FVD needs at least 2 videos in each set, got {len(features_a)} and {len(features_b)}")
    return frechet_distance(*gaussian(features_a), *gaussian(features_b))


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def kvd(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """The unbiased squared MMD of two sets of video features with the cubic polynomial kernel."""
    a, b = np.asarray(features_a, dtype=np.float64), np.asarray(features_b, dtype=np.float64)
    m, n = len(a), len(b)
    if m < 2 or n < 2:
        raise ValueError(f"KVD needs at least 2 videos in each set, got {m} and {n}")
    k_aa, k_bb, k_ab = polynomial_kernel(a, a), polynomial_kernel(b, b), polynomial_kernel(a, b)
    within_a = (k_aa.sum() - np.trace(k_aa)) / (m * (m - 1))
    within_b = (k_bb.sum() - np.trace(k_bb)) / (n * (n - 1))
    return float(within_a + within_b - 2 * k_ab.mean())


def clip_frames_feature(clip, frames: np.ndarray) -> np.ndarray:
    """A video feature from an image CLIP (the toy preset's FVD extractor): the mean of the frames' unit
    features, then the mean absolute change between consecutive frames' features (so motion counts)."""
    features = clip.encode_images(clip.prepare_frames(frames)).astype(np.float64)
    change = np.abs(np.diff(features, axis=0)).mean(axis=0) if len(features) > 1 else np.zeros(features.shape[1])
    return np.concatenate([features.mean(axis=0), change])


def distribution_record(rendered: np.ndarray, real: np.ndarray, extractor: str, real_source: str) -> dict:
    """FVD and KVD of two feature sets, with the set sizes, the extractor and where the real videos came from."""
    record = {"fvd": None, "kvd": None, "rendered_videos": len(rendered), "real_videos": len(real),
              "video_features": extractor, "real_source": real_source, "recipe": {"fvd": RECIPE_FVD,
                                                                                   "kvd": RECIPE_KVD}}
    if len(rendered) >= 2 and len(real) >= 2:
        record.update(fvd=fvd(rendered, real), kvd=kvd(rendered, real))
        if min(len(rendered), len(real)) <= np.asarray(rendered).shape[1]:
            record["note"] = "fewer videos than feature dimensions: the covariances are singular, FVD is biased up"
    else:
        record["note"] = "FVD and KVD need at least 2 videos in each set"
    return record
