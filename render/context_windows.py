"""Overlapping context windows over the frames of a long shot, and their fusion weights.

The motion modules attend over at most ``window`` frames (16 for AnimateDiff); a longer shot is denoised
window by window (UNet *and* ControlNet on the window's frames and conditioning) and the noise
predictions are fused per frame with overlap weights, normalised by the summed weights::

    windows = context_windows(40, window=16, stride=8)   # [[0..15], [8..23], [16..31], [24..39]]
    weights = window_weights(16, "pyramid")              # 1, 2, ..., 8, 8, ..., 2, 1
"""

from __future__ import annotations

import torch

WEIGHTINGS = ("pyramid", "flat")


def context_windows(num_frames: int, window: int = 16, stride: int = 8) -> list[list[int]]:
    """Frame index lists of the windows: start 0, every ``stride`` frames, the last one ending at the last frame.

    ``num_frames <= window`` gives one window with every frame.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if window < 1 or stride < 1:
        raise ValueError(f"context window and stride must be >= 1, got window={window}, stride={stride}")
    if stride > window:
        raise ValueError(f"context stride {stride} is larger than the window {window}: frames would be skipped")
    if num_frames <= window:
        return [list(range(num_frames))]
    starts = list(range(0, num_frames - window + 1, stride))
    if starts[-1] + window < num_frames:
        starts.append(num_frames - window)
    return [list(range(start, start + window)) for start in starts]


def window_weights(length: int, weighting: str = "pyramid") -> torch.Tensor:
    """Per-position weights of a window (all > 0): ``pyramid`` (triangular, FreeNoise's) or ``flat``."""
    if weighting == "flat":
        return torch.ones(length)
    if weighting == "pyramid":
        return torch.tensor([float(min(i + 1, length - i)) for i in range(length)])
    raise ValueError(f"unknown context weighting {weighting!r}; choose one of {', '.join(WEIGHTINGS)}")
