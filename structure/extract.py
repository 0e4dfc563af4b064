"""From a retrieved clip segment (or images) to the depth sequence that guides the render.

The pipeline, for a video source:

1. sample ``frames`` frames over ``[start, end)`` at the midpoints of equal slices (as the index samples
   segments), whatever the clip's own frame rate: the range is resampled to the render's frame count
   and then plays at the render's ``fps`` (a shot's :class:`retrieval.footage.Footage` is a range of the
   shot's own duration, so its motion keeps its real speed), or, for footage that plays back and forth
   (``pingpong_s``), walk the range forwards and back at its own speed;
2. decode them at full resolution (``retrieval.clip_reader``) and frame them for the render with
   :func:`structure.framing.frame_image` (cover crop to ``size``);
3. estimate raw inverse depth on the framed frames (the model resizes to its own input size and the
   depth comes back at ``size``), or take it from the :class:`~structure.depth_cache.DepthCache`;
4. normalise with one robust range for the whole sequence (``depth_range="sequence"``, the default) or
   each frame by its own min and max (``depth_range="frame"``), and optionally smooth it in time
   (:func:`structure.depth_sequence.depth_from_raw`).

Sources: a :class:`retrieval.footage.Footage`, a :class:`retrieval.ClipSegment` or any object with
``path``, ``start`` and ``end`` (and optionally ``pingpong_s``); a
``(path, start, end)`` tuple; a bare video path (the whole clip); or a sequence of images (PIL images or
``H x W x 3`` uint8 arrays, or one ``N x H x W x 3`` array), one depth frame per image, e.g. the
pseudo-videos that character training makes from reference images.

The depth model is a :class:`DepthModel`: any callable from ``N x H x W x 3`` uint8 frames to
``N x h x w`` relative inverse depth (near = large), such as :class:`structure.depth_models.DepthEstimator`
or a deterministic stand-in in tests. Its output is resized to the frames' size if it differs (it must
cover the same picture), and it needs a ``fingerprint`` string to be cached.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F

from retrieval.clip_reader import VideoDecodeError, probe_video, read_frames_at
from retrieval.footage import footage_sample_times
from structure.depth_cache import DepthCache, images_key_record, video_key_record
from structure.depth_sequence import (
    DEFAULT_HIGH_PCT,
    DEFAULT_LOW_PCT,
    DEPTH_RANGE_SEQUENCE,
    DEPTH_RANGES,
    DepthSequence,
    depth_from_raw,
)
from structure.framing import frame_image
from structure.validation import InvalidArgumentError, check_frames, check_size, check_time_range

DEFAULT_FRAMES = 16
DEFAULT_FPS = 8.0
DEFAULT_SIZE = (512, 512)


@runtime_checkable
class DepthModel(Protocol):
    """``N x H x W x 3`` uint8 frames → ``N x h x w`` float relative inverse depth (near = large).

    Cached results are keyed on the model's ``fingerprint`` (a string that changes when its output would).
    """

    def __call__(self, frames: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class VideoRange:
    """A time range of a video file, in seconds from its first frame."""

    path: str
    start: float
    end: float
    pingpong_s: float | None = None
    """None: the range plays once, spread over the frames; seconds: it plays forwards and back at its own
    speed for this long (:func:`retrieval.footage.footage_sample_times`)."""

    def sample_times(self, frames: int) -> list[float]:
        return footage_sample_times(self.start, self.end, frames, self.pingpong_s)


@dataclass
class RawDepth:
    """The depth model's output at the render size (``T x H x W`` float32, near = large) and its origin."""

    values: np.ndarray
    source: dict
    cached: bool = False


# -- sources -----------------------------------------------------------------------------------------
def _is_path(value: Any) -> bool:
    return isinstance(value, (str, os.PathLike))


def resolve_source(source) -> VideoRange | list[np.ndarray]:
    """A :class:`VideoRange` for a video source, or the list of ``H x W x 3`` uint8 images."""
    if hasattr(source, "path") and hasattr(source, "start") and hasattr(source, "end"):
        return _video_range(source.path, source.start, source.end, getattr(source, "pingpong_s", None))
    if isinstance(source, tuple) and len(source) == 3 and _is_path(source[0]):
        return _video_range(*source)
    if _is_path(source):
        path = Path(source)
        duration = probe_video(path).duration_s
        return _video_range(path, 0.0, duration)
    return _images(source)


def _video_range(path, start, end, pingpong_s: float | None = None) -> VideoRange:
    try:
        start, end = float(start), float(end)
    except (TypeError, ValueError):
        raise InvalidArgumentError(
            "start", f"start and end must be numbers of seconds, got {start!r} and {end!r}"
        ) from None
    start, end = check_time_range(start, end)
    return VideoRange(str(path), start, end, None if pingpong_s is None else float(pingpong_s))


def _images(source) -> list[np.ndarray]:
    from PIL import Image

    if isinstance(source, np.ndarray):
        source = list(source) if source.ndim == 4 else [source]
    elif isinstance(source, Image.Image):
        source = [source]
    elif not isinstance(source, (list, tuple)):
        raise InvalidArgumentError(
            "source", f"expected a clip segment, (path, start, end), a video path or a list of images, "
                      f"got {type(source).__name__}"
        )
    images = []
    for index, image in enumerate(source):
        if isinstance(image, Image.Image):
            image = np.asarray(image.convert("RGB"))
        image = np.asarray(image)
        if image.ndim == 2 and image.dtype == np.uint8:
            image = np.repeat(image[:, :, None], 3, axis=2)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or min(image.shape[:2]) == 0:
            raise InvalidArgumentError(
                "source", f"image {index} must be an H x W x 3 uint8 array or a PIL image, "
                          f"got shape {image.shape} {image.dtype}"
            )
        images.append(image)
    if not images:
        raise InvalidArgumentError("source", "the image list is empty")
    return images


def check_within_clip(video: VideoRange) -> None:
    """Raise :class:`InvalidArgumentError` (``start``/``end``) for a range outside the clip."""
    info = probe_video(video.path)  # raises VideoDecodeError naming the file if it cannot be opened
    slack = max(1e-3, 1.0 / info.fps)  # a range may end on the last frame's end
    name = Path(video.path).name
    if video.start >= info.duration_s:
        raise InvalidArgumentError(
            "start", f"{video.start:g} s is past the end of '{name}' ({info.duration_s:.2f} s long)"
        )
    if video.end > info.duration_s + slack:
        raise InvalidArgumentError(
            "end", f"{video.end:g} s is past the end of '{name}' ({info.duration_s:.2f} s long)"
        )


def read_source_frames(source, frames: int | None = None, size: tuple[int, int] = DEFAULT_SIZE) -> np.ndarray:
    """The source's frames as the render frames them: ``T x H x W x 3`` uint8 at ``size = (W, H)``."""
    size = check_size(size)
    resolved = resolve_source(source)
    if isinstance(resolved, VideoRange):
        count = check_frames(DEFAULT_FRAMES if frames is None else frames)
        check_within_clip(resolved)
        return _read_video_frames(resolved, count, size)
    _check_image_count(resolved, frames)
    return np.stack([frame_image(image, size) for image in resolved])


def _read_video_frames(video: VideoRange, frames: int, size: tuple[int, int]) -> np.ndarray:
    decoded = read_frames_at(video.path, video.sample_times(frames))
    return np.stack([frame_image(frame, size) for frame in decoded])


def _check_image_count(images: list[np.ndarray], frames: int | None) -> None:
    if frames is not None:
        check_frames(frames)
        if frames != len(images):
            raise InvalidArgumentError(
                "frames", f"an image sequence gives one depth frame per image: {len(images)} images, "
                          f"but frames={frames}"
            )


# -- depth -------------------------------------------------------------------------------------------
def _model_fingerprint(estimator) -> str | None:
    fingerprint = getattr(estimator, "fingerprint", None)
    return str(fingerprint) if fingerprint else None


def _model_name(estimator) -> str:
    return str(getattr(estimator, "name", None) or getattr(estimator, "__name__", None) or type(estimator).__name__)


def _run_model(estimator: DepthModel, frames: np.ndarray) -> np.ndarray:
    """Run ``estimator`` and bring its output to the frames' size (plain resize: same picture)."""
    raw = np.asarray(estimator(frames), dtype=np.float32)
    count, height, width = frames.shape[:3]
    if raw.ndim != 3 or raw.shape[0] != count:
        raise ValueError(f"the depth model returned shape {raw.shape} for {count} frames; expected {count} x h x w")
    if raw.shape[1:] != (height, width):
        resized = F.interpolate(torch.from_numpy(raw)[:, None], size=(height, width), mode="bilinear",
                                align_corners=False, antialias=True)
        raw = resized[:, 0].numpy()
    return np.ascontiguousarray(raw, dtype=np.float32)


def _resolve_estimator(estimator):
    if estimator is None or isinstance(estimator, str):
        from structure.depth_models import DEFAULT_MODEL, load_depth_model

        return load_depth_model(estimator or DEFAULT_MODEL)
    if not callable(estimator):
        raise InvalidArgumentError("estimator", f"expected a model spec or a callable, got {type(estimator).__name__}")
    return estimator


def extract_raw_depth(source, frames: int | None = None, size: tuple[int, int] = DEFAULT_SIZE,
                      estimator: DepthModel | str | None = None, cache: DepthCache | str | os.PathLike | None = None
                      ) -> RawDepth:
    """Raw inverse depth of ``source`` at ``size``, from ``cache`` when it holds it (see the module doc).

    ``frames`` defaults to 16 for a video and to one per image for images. ``estimator`` is a
    :class:`DepthModel` or a model spec for :func:`structure.depth_models.load_depth_model` (default:
    DPT-Hybrid). ``cache`` is a :class:`DepthCache` or its folder; None computes every time.

    Raises :class:`~structure.validation.InvalidArgumentError` naming ``size``, ``frames``, ``start``,
    ``end`` or ``source`` for bad input, and :class:`retrieval.clip_reader.VideoDecodeError` naming the
    file for a video that cannot be read.
    """
    size = check_size(size)
    resolved = resolve_source(source)
    if isinstance(resolved, VideoRange):
        count = check_frames(DEFAULT_FRAMES if frames is None else frames)
        if not Path(resolved.path).is_file():
            raise VideoDecodeError(resolved.path, "no such file" if not Path(resolved.path).exists() else "not a file")
    else:
        _check_image_count(resolved, frames)
        count = len(resolved)
    estimator = _resolve_estimator(estimator)
    if cache is not None and not isinstance(cache, DepthCache):
        cache = DepthCache(cache)
    fingerprint = _model_fingerprint(estimator)
    if cache is not None and fingerprint is None:
        raise InvalidArgumentError("estimator", "a cached depth model needs a 'fingerprint' attribute "
                                                "(a string that changes when its output would); or pass cache=None")
    record = None
    if isinstance(resolved, VideoRange):
        description = {"kind": "video", "path": str(Path(resolved.path).resolve()), "start": resolved.start,
                       "end": resolved.end, "sample_times": [round(t, 6) for t in resolved.sample_times(count)]}
        if resolved.pingpong_s is not None:
            description["pingpong_s"] = resolved.pingpong_s
        if cache is not None:
            record = video_key_record(resolved.path, resolved.start, resolved.end, count, size, fingerprint,
                                      pingpong_s=resolved.pingpong_s)
    else:
        description = {"kind": "images", "count": count}
        if cache is not None:
            record = images_key_record(resolved, size, fingerprint)
            description["sha256"] = record["sha256"]
    description.update({"frames": count, "size": list(size),
                        "model": {"name": _model_name(estimator), "fingerprint": fingerprint}})

    if record is not None:
        raw = cache.load(record)
        if raw is not None:
            return RawDepth(raw, description, cached=True)
    if isinstance(resolved, VideoRange):
        check_within_clip(resolved)
        framed = _read_video_frames(resolved, count, size)
    else:
        framed = np.stack([frame_image(image, size) for image in resolved])
    raw = _run_model(estimator, framed)
    if not np.all(np.isfinite(raw)):
        raise ValueError(f"the depth model '{_model_name(estimator)}' returned NaN or infinite values")
    if record is not None:
        cache.store(record, raw)
    return RawDepth(raw, description)


def extract_depth(source, frames: int | None = None, size: tuple[int, int] = DEFAULT_SIZE,
                  estimator: DepthModel | str | None = None, cache: DepthCache | str | os.PathLike | None = None,
                  smoothing: float = 0.0, fps: float = DEFAULT_FPS, low_pct: float = DEFAULT_LOW_PCT,
                  high_pct: float = DEFAULT_HIGH_PCT, depth_range: str = DEPTH_RANGE_SEQUENCE) -> DepthSequence:
    """The :class:`DepthSequence` of ``source`` for a ``size = (W, H)`` render of ``frames`` frames at ``fps``.

    Depth is ``T x H x W`` float32 in ``[0, 1]``, near = bright, normalised with one percentile range
    (``low_pct``, ``high_pct``) over the whole sequence (``depth_range="sequence"``) or by each frame's own
    min and max (``depth_range="frame"``, Make-Your-Video's convention), and smoothed over time by a Gaussian
    of ``smoothing`` frames (0: none). See :func:`extract_raw_depth` for the other arguments and errors;
    :class:`~structure.validation.InvalidArgumentError` names ``depth_range`` for another value.
    """
    if depth_range not in DEPTH_RANGES:
        raise InvalidArgumentError("depth_range", f"must be one of {', '.join(DEPTH_RANGES)}, got {depth_range!r}")
    if not (isinstance(fps, (int, float)) and fps > 0):
        raise InvalidArgumentError("fps", f"must be a positive number, got {fps!r}")
    if not (isinstance(smoothing, (int, float)) and smoothing >= 0):
        raise InvalidArgumentError("smoothing", f"must be 0 or more (frames), got {smoothing!r}")
    raw = extract_raw_depth(source, frames=frames, size=size, estimator=estimator, cache=cache)
    return depth_from_raw(raw.values, fps=fps, source=raw.source, smoothing=smoothing, low_pct=low_pct,
                          high_pct=high_pct, depth_range=depth_range)
