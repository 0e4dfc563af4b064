"""Decode one video into segments: the work each isolated worker process does (reader → mapper stage).

Imports no torch: workers start fast and a decoder crash takes down only the worker.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial

import numpy as np

from index_builder.segmenter import SceneAwareSegmenter, SegmentSettings, scene_ends
from index_builder.sources import VideoJob
from retrieval.clip_reader import VideoDecodeError, iter_frames
from retrieval.frame_preprocessing import square_crop


@dataclass(frozen=True)
class DecodeSettings:
    segments: SegmentSettings
    image_size: int
    backend: str = "auto"


@dataclass
class DecodedVideo:
    job: VideoJob
    fps: float
    width: int
    height: int
    duration_s: float
    backend: str
    starts: list[float] = field(default_factory=list)
    ends: list[float] = field(default_factory=list)
    motions: list[float] = field(default_factory=list)
    scene_starts: list[float] = field(default_factory=list)  # the cut-free scene holding each segment
    scene_ends: list[float] = field(default_factory=list)
    frames: np.ndarray | None = None  # segments x frames x S x S x 3 uint8
    warning: str | None = None  # decoding stopped early; the segments before it are kept

    @property
    def num_segments(self) -> int:
        return len(self.starts)


def decode_video(job: VideoJob, settings: DecodeSettings) -> DecodedVideo:
    """Segments of ``job`` with their framed frames; raises VideoDecodeError if nothing usable decodes."""
    start = job.start or 0.0
    info, frames = iter_frames(job.path, start=start, end=job.end, backend=settings.backend)
    segmenter = SceneAwareSegmenter(settings.segments, partial(square_crop, size=settings.image_size))
    segments, last_time, warning = [], None, None
    try:
        for time, frame in frames:
            last_time = time
            segments.extend(segmenter.push(time, frame))
    except VideoDecodeError as exc:
        if last_time is None:
            raise
        warning = exc.reason
    if last_time is None:
        raise VideoDecodeError(job.path,
                               "no frames in the requested time range" if job.start or job.end else "no frames")
    end = last_time + 1.0 / info.fps
    if job.end is not None:
        end = min(end, job.end)
    segments.extend(segmenter.finish(end))
    if not segments:
        raise VideoDecodeError(job.path, warning or "too short to give a segment")
    return DecodedVideo(
        job=job, fps=info.fps, width=info.width, height=info.height, duration_s=info.duration_s,
        backend=info.backend, starts=[s.start for s in segments], ends=[s.end for s in segments],
        motions=[s.motion for s in segments], scene_starts=[s.scene_start for s in segments],
        scene_ends=scene_ends(segments, segmenter.cuts, end), frames=np.stack([s.frames for s in segments]),
        warning=warning,
    )
