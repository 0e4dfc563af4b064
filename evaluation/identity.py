"""Identity: does a character look like its reference images, and like itself from shot to shot?

Recipes:

* CLIP-I and DINO-I (DreamVideo's ``cal_metric_DreamVideo.py``; the Sem/ID pair of Animate-A-Story): the cosine
  of each reference image's feature with the normalised mean of the shot's frame features, averaged over the
  reference images. CLIP ViT-B/32 features for CLIP-I (semantic: "a brown teddy bear"), DINO ViT-S/16 features
  for DINO-I (instance: *this* teddy bear).
* Across shots (no paper reports it per story; StoryDiffusion's "character similarity" is the same cosine
  between images of one story): for a character seen in several shots, the mean cosine of the shots' mean
  DINO features over every pair of its shots.
"""

from __future__ import annotations

from itertools import combinations

import numpy as np

from evaluation.text_alignment import mean_feature, unit

RECIPE_REFERENCE = ("mean over reference images of the cosine of the reference feature and the normalised mean "
                    "frame feature (DreamVideo CLIP-I / DINO-I)")
RECIPE_ACROSS_SHOTS = "mean cosine of the shots' normalised mean DINO features over every pair of the character's shots"


def reference_similarity(reference_features: np.ndarray, frame_features: np.ndarray) -> float:
    """CLIP-I or DINO-I of one shot: mean over references of ``cos(reference, mean frame feature)``."""
    return float(np.mean(unit(reference_features) @ mean_feature(frame_features)))


def across_shots(shot_features: dict[str, np.ndarray]) -> dict:
    """A character's similarity to itself between shots: ``{"mean", "pairs": {"a|b": cosine}}``; ``mean`` is
    None with fewer than two shots."""
    means = {shot: mean_feature(features) for shot, features in shot_features.items()}
    pairs = {f"{a}|{b}": float(means[a] @ means[b]) for a, b in combinations(sorted(means), 2)}
    return {"mean": float(np.mean(list(pairs.values()))) if pairs else None, "pairs": pairs}
