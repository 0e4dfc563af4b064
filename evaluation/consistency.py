"""Temporal consistency within a shot: subject consistency, frame-to-frame similarity and flicker.

Recipes:

* Subject consistency (VBench, ``subject_consistency``): with unit DINO features ``f_i`` of the frames, each
  frame ``i > 0`` scores ``(max(0, cos(f_{i-1}, f_i)) + max(0, cos(f_0, f_i))) / 2`` and the shot scores the
  mean. VBench's background consistency is the same formula on CLIP features; it is reported as
  ``clip_consistency``.
* Frame-to-frame similarity (DreamVideo's temporal consistency): the mean cosine of consecutive frames' features.
* Flicker (VBench, ``temporal_flickering``, no model): ``(255 - mean |frame_{i+1} - frame_i|) / 255`` over all
  pixels and channels of uint8 frames, 1 for a still video; the raw mean absolute difference is kept too.
"""

from __future__ import annotations

import numpy as np

from evaluation.text_alignment import unit

RECIPE_SUBJECT = "VBench subject consistency: mean over i>0 of (max(0,cos(f[i-1],f[i])) + max(0,cos(f[0],f[i])))/2"
RECIPE_FRAME_TO_FRAME = "mean cosine of consecutive frames' features (DreamVideo temporal consistency)"
RECIPE_FLICKER = "VBench temporal flickering: (255 - mean |frame[i+1] - frame[i]|) / 255 on uint8 frames"


def subject_consistency(frame_features: np.ndarray) -> float:
    """VBench's subject (DINO) or background (CLIP) consistency of one shot's ``N x D`` frame features."""
    features = unit(frame_features)
    if len(features) < 2:
        return 1.0
    previous = np.sum(features[1:] * features[:-1], axis=1)
    first = features[1:] @ features[0]
    return float(np.mean((np.maximum(previous, 0) + np.maximum(first, 0)) / 2))


def frame_to_frame(frame_features: np.ndarray) -> float:
    """The mean cosine of consecutive frames."""
    features = unit(frame_features)
    if len(features) < 2:
        return 1.0
    return float(np.mean(np.sum(features[1:] * features[:-1], axis=1)))


def mean_absolute_difference(frames: np.ndarray) -> float:
    """Mean ``|frame[i+1] - frame[i]|`` over pixels and channels of ``T x H x W x 3`` uint8 frames (0-255)."""
    frames = np.asarray(frames)
    if len(frames) < 2:
        return 0.0
    return float(np.mean(np.abs(np.diff(frames.astype(np.int16), axis=0))))


def flicker_score(frames: np.ndarray) -> float:
    """VBench's temporal flickering score: ``(255 - mean absolute difference) / 255``; 1 is a still video."""
    return (255.0 - mean_absolute_difference(frames)) / 255.0
