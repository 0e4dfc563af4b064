"""Depth sequences: raw model output → one ``[0, 1]`` video of depth that guides the render.

Conventions (those of the SD1.5 depth ControlNet and of MiDaS):

* A depth model returns *relative inverse depth* ("disparity"): larger means nearer, with an unknown
  scale and offset.
* A :class:`DepthSequence` holds ``T x H x W`` float32 in ``[0, 1]`` with **near = bright (1)** and
  far = dark (0).

Temporal consistency. :func:`normalize_sequence` maps the whole sequence with **one** range, the
``low_pct``-th and ``high_pct``-th percentiles over all frames, so a surface that does not move keeps its
brightness from frame to frame. The common per-frame min-max (:func:`normalize_per_frame`, what
Make-Your-Video and most ControlNet preprocessors do per image) re-stretches every frame by its own
extremes: when the nearest object comes closer, everything else in that frame gets darker, and a single
noisy extreme pixel moves the whole frame. Percentiles instead of min/max keep a few outlier pixels
from setting the range. :func:`smooth_temporally` optionally low-passes each pixel over time with a
symmetric (zero-phase) Gaussian, which damps frame-to-frame jitter without delaying anything.
:func:`flicker` measures what is left: the mean absolute change between consecutive frames.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from storyreel.atomic_files import write_bytes

FORMAT_VERSION = 1
DEFAULT_LOW_PCT = 2.0
DEFAULT_HIGH_PCT = 98.0
_FLAT_RANGE = 1e-12
# How raw depth is brought to [0, 1] (a storyboard's ``depth_range``): one percentile range for the whole
# sequence (normalize_sequence), or each frame's own min and max (normalize_per_frame: Make-Your-Video's
# convention and that of the depth ControlNet's training images).
DEPTH_RANGE_SEQUENCE = "sequence"
DEPTH_RANGE_FRAME = "frame"
DEPTH_RANGES = (DEPTH_RANGE_SEQUENCE, DEPTH_RANGE_FRAME)


@dataclass
class DepthSequence:
    """``depth``: ``T x H x W`` float32 in ``[0, 1]``, near = bright; plays at ``fps`` frames per second.

    ``source`` says where it came from (clip path and time range, or an image sequence, and the model);
    ``settings`` how it was normalised and smoothed. Both are JSON-serialisable dicts.
    """

    depth: np.ndarray
    fps: float
    source: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)

    def __post_init__(self):
        depth = np.asarray(self.depth)
        if depth.ndim != 3:
            raise ValueError(f"depth must be T x H x W, got shape {depth.shape}")
        self.depth = np.ascontiguousarray(depth, dtype=np.float32)
        self.fps = float(self.fps)

    @property
    def num_frames(self) -> int:
        return int(self.depth.shape[0])

    @property
    def size(self) -> tuple[int, int]:
        """``(width, height)``, as the render's size is given."""
        return int(self.depth.shape[2]), int(self.depth.shape[1])

    def flicker(self) -> float:
        return flicker(self.depth)

    def metadata(self) -> dict:
        return {"format_version": FORMAT_VERSION, "fps": self.fps, "source": self.source, "settings": self.settings}

    def save_npz(self, path: str | os.PathLike) -> Path:
        """Write ``depth`` and the metadata (a JSON string) to ``path`` atomically; returns the path."""
        return save_npz(self, path)

    @classmethod
    def load_npz(cls, path: str | os.PathLike) -> "DepthSequence":
        return load_npz(path)


def _robust_range(raw: np.ndarray, low_pct: float, high_pct: float) -> tuple[float, float]:
    if not 0 <= low_pct < high_pct <= 100:
        raise ValueError(f"need 0 <= low_pct < high_pct <= 100, got {low_pct} and {high_pct}")
    low, high = np.percentile(raw, [low_pct, high_pct])
    return float(low), float(high)


def _check_raw(raw: np.ndarray) -> np.ndarray:
    raw = np.asarray(raw, dtype=np.float32)
    if raw.ndim != 3 or raw.shape[0] == 0:
        raise ValueError(f"expected T x H x W raw depth with T >= 1, got shape {raw.shape}")
    if not np.all(np.isfinite(raw)):
        raise ValueError("the depth model returned NaN or infinite values")
    return raw


def sequence_range(raw: np.ndarray, low_pct: float = DEFAULT_LOW_PCT,
                   high_pct: float = DEFAULT_HIGH_PCT) -> tuple[float, float]:
    """The raw values at the ``low_pct`` and ``high_pct`` percentiles over all frames together."""
    return _robust_range(_check_raw(raw), low_pct, high_pct)


def normalize_sequence(raw: np.ndarray, low_pct: float = DEFAULT_LOW_PCT,
                       high_pct: float = DEFAULT_HIGH_PCT) -> np.ndarray:
    """Map raw inverse depth (near = large) to ``[0, 1]`` with one range for the whole sequence.

    Values at or below the ``low_pct`` percentile (over all frames and pixels) become 0, at or above the
    ``high_pct`` percentile 1, linearly in between; the order of depths is kept. A flat input (no range)
    gives all zeros.
    """
    raw = _check_raw(raw)
    low, high = _robust_range(raw, low_pct, high_pct)
    if high - low <= _FLAT_RANGE * max(1.0, abs(high)):
        return np.zeros_like(raw)
    return np.clip((raw - low) / (high - low), 0.0, 1.0).astype(np.float32)


def normalize_per_frame(raw: np.ndarray) -> np.ndarray:
    """The baseline: every frame stretched by its own min and max to ``[0, 1]`` (flat frames → 0)."""
    raw = _check_raw(raw)
    low = raw.min(axis=(1, 2), keepdims=True)
    span = raw.max(axis=(1, 2), keepdims=True) - low
    safe = np.where(span > 0, span, 1.0)
    return np.where(span > 0, (raw - low) / safe, 0.0).astype(np.float32)


def gaussian_kernel(sigma: float) -> np.ndarray:
    """A normalised, symmetric Gaussian of standard deviation ``sigma`` (frames), radius ``ceil(3 sigma)``."""
    radius = max(1, int(np.ceil(3.0 * sigma)))
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    return kernel / kernel.sum()


def smooth_temporally(depth: np.ndarray, strength: float) -> np.ndarray:
    """Low-pass every pixel over time with a Gaussian of standard deviation ``strength`` frames.

    The kernel is symmetric and the ends are mirrored (``d[1], d[0] | d[0] ... d[T-1] | d[T-1], d[T-2]``),
    so nothing moves in time (zero phase) and a constant sequence is unchanged. ``strength=0`` returns a
    copy. The output is a weighted mean of the input frames, so it stays within their range.
    """
    depth = np.asarray(depth, dtype=np.float32)
    if depth.ndim != 3:
        raise ValueError(f"expected T x H x W depth, got shape {depth.shape}")
    if not strength >= 0:
        raise ValueError(f"smoothing strength must be >= 0, got {strength}")
    if strength == 0 or depth.shape[0] < 2:
        return depth.copy()
    kernel = gaussian_kernel(strength)
    radius = len(kernel) // 2
    count = depth.shape[0]
    # Mirror indices (edge sample repeated), folded until they fall inside [0, T).
    index = np.arange(-radius, count + radius)
    period = 2 * count
    index = np.mod(index, period)
    index = np.where(index >= count, period - 1 - index, index)
    padded = depth[index].astype(np.float64)
    out = np.zeros(depth.shape, dtype=np.float64)
    for offset, weight in enumerate(kernel):
        out += weight * padded[offset : offset + count]
    return out.astype(np.float32)


def flicker(depth: np.ndarray) -> float:
    """Mean absolute difference between consecutive frames (0 for fewer than two frames).

    On normalised ``[0, 1]`` sequences it reads as "average brightness change per frame"; it includes real
    motion, so compare it between normalisations of the same raw sequence, not between clips.
    """
    depth = np.asarray(depth, dtype=np.float32)
    if depth.ndim != 3:
        raise ValueError(f"expected T x H x W depth, got shape {depth.shape}")
    if depth.shape[0] < 2:
        return 0.0
    return float(np.mean(np.abs(np.diff(depth, axis=0)), dtype=np.float64))


def depth_from_raw(raw: np.ndarray, fps: float, source: dict | None = None, smoothing: float = 0.0,
                   low_pct: float = DEFAULT_LOW_PCT, high_pct: float = DEFAULT_HIGH_PCT,
                   depth_range: str = DEPTH_RANGE_SEQUENCE) -> DepthSequence:
    """Normalise raw inverse depth, optionally smooth it in time, and wrap it.

    ``depth_range`` ``sequence`` (the default) maps the whole sequence with one percentile range
    (:func:`normalize_sequence`); ``frame`` stretches each frame by its own min and max
    (:func:`normalize_per_frame`; the percentiles are not used). ``ValueError`` for another value."""
    if depth_range not in DEPTH_RANGES:
        raise ValueError(f"depth_range must be one of {', '.join(DEPTH_RANGES)}, got {depth_range!r}")
    raw = _check_raw(raw)
    if depth_range == DEPTH_RANGE_FRAME:
        depth = smooth_temporally(normalize_per_frame(raw), smoothing)
        settings = {"normalization": "per-frame-minmax", "depth_range": DEPTH_RANGE_FRAME,
                    "smoothing": float(smoothing), "convention": "near=1 far=0"}
        return DepthSequence(depth=depth, fps=fps, source=dict(source or {}), settings=settings)
    low, high = _robust_range(raw, low_pct, high_pct)
    depth = smooth_temporally(normalize_sequence(raw, low_pct, high_pct), smoothing)
    settings = {
        "normalization": "sequence-percentile",
        "low_pct": float(low_pct),
        "high_pct": float(high_pct),
        "raw_low": low,
        "raw_high": high,
        "smoothing": float(smoothing),
        "convention": "near=1 far=0",
    }
    return DepthSequence(depth=depth, fps=fps, source=dict(source or {}), settings=settings)


def save_npz(sequence: DepthSequence, path: str | os.PathLike) -> Path:
    """Write ``sequence`` to ``path`` atomically as an ``.npz`` of ``depth`` and ``metadata`` (JSON text)."""
    buffer = io.BytesIO()
    np.savez(buffer, depth=sequence.depth, metadata=np.array(json.dumps(sequence.metadata(), sort_keys=True)))
    write_bytes(path, buffer.getvalue())
    return Path(path)


def load_npz(path: str | os.PathLike) -> DepthSequence:
    """Read a file written by :func:`save_npz` (no pickles are loaded); ``ValueError`` names a bad file."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            depth = np.asarray(data["depth"])
            metadata = json.loads(str(data["metadata"][()]))
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise ValueError(f"{path}: not a depth sequence file ({type(exc).__name__}: {exc})") from exc
    if depth.ndim != 3 or depth.dtype != np.float32 or not isinstance(metadata, dict):
        raise ValueError(f"{path}: not a depth sequence file (depth {depth.shape} {depth.dtype})")
    if metadata.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: format version {metadata.get('format_version')}, expected {FORMAT_VERSION}")
    return DepthSequence(depth=depth, fps=metadata["fps"], source=metadata.get("source", {}),
                         settings=metadata.get("settings", {}))
