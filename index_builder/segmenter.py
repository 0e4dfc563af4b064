"""Cut a stream of decoded frames into fixed windows that never span a scene cut.

Frames arrive one at a time (memory stays bounded by one window of frames). A cut is a frame whose
small colour thumbnail differs from the previous one by more than ``cut_threshold`` and by more than
``cut_ratio`` times the scene's recent typical change (fast motion raises the typical change, so it
does not read as a cut). Within each scene, windows of ``window_s`` start every ``stride_s``; a scene
shorter than one window gives one segment covering it (if at least ``min_scene_s`` long, or if it is the
only scene of the clip).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Callable

import numpy as np

from retrieval.frame_preprocessing import change_thumbnail
from retrieval.index_format import TIME_EPSILON, segment_sample_times


@dataclass(frozen=True)
class SegmentSettings:
    window_s: float = 2.0
    stride_s: float = 1.0
    frames_per_segment: int = 8
    cut_threshold: float = 0.12
    cut_ratio: float = 4.0
    min_scene_s: float = 0.5

    def __post_init__(self):
        if self.window_s <= 0 or self.stride_s <= 0:
            raise ValueError("window and stride must be positive")
        if self.frames_per_segment < 1:
            raise ValueError("frames per segment must be at least 1")


@dataclass
class Segment:
    start: float
    end: float
    frames: np.ndarray  # frames_per_segment x S x S x 3, already framed for the embedder
    motion: float  # mean absolute colour change per second (channels in [0, 1])
    scene_start: float = 0.0  # where the cut-free scene holding the segment starts (a cut or the first frame)


class _Frame:
    __slots__ = ("time", "raw", "change", "_prepared")

    def __init__(self, time: float, raw: np.ndarray, change: float):
        self.time, self.raw, self.change, self._prepared = time, raw, change, None

    def prepared(self, prepare: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        if self._prepared is None:
            self._prepared = prepare(self.raw)
            self.raw = None  # keep only the small framed copy
        return self._prepared


class SceneAwareSegmenter:
    """Feed ``push(time, frame)`` for every decoded frame, then ``finish(end_time)``."""

    def __init__(self, settings: SegmentSettings, prepare: Callable[[np.ndarray], np.ndarray]):
        self.settings = settings
        self.prepare = prepare
        self.cuts: list[float] = []  # times of the first frame after each detected cut
        self._buffer: deque[_Frame] = deque()
        self._previous_thumb: np.ndarray | None = None
        self._recent_changes: deque[float] = deque(maxlen=15)
        self._scene_start: float | None = None
        self._next_window: float = 0.0
        self._scene_windows = 0
        self._emitted = 0

    # -- cut detection -----------------------------------------------------------------------
    def _is_cut(self, change: float) -> bool:
        s = self.settings
        typical = float(np.median(self._recent_changes)) if self._recent_changes else 0.0
        return change > s.cut_threshold and change > s.cut_ratio * max(typical, 0.005)

    # -- stream ------------------------------------------------------------------------------
    def push(self, time: float, frame: np.ndarray) -> list[Segment]:
        thumb = change_thumbnail(frame)
        change = 0.0 if self._previous_thumb is None else float(np.abs(thumb - self._previous_thumb).mean())
        self._previous_thumb = thumb
        out: list[Segment] = []
        if self._scene_start is None:
            self._start_scene(time)
        elif self._is_cut(change):
            self.cuts.append(time)
            out += self._close_scene(time, only_scene=False)
            self._start_scene(time)
            change = 0.0
        else:
            self._recent_changes.append(change)
        self._buffer.append(_Frame(time, frame, change))
        window = self.settings.window_s
        while time >= self._next_window + window - TIME_EPSILON:
            out.append(self._emit(self._next_window, self._next_window + window))
            self._scene_windows += 1
            self._next_window += self.settings.stride_s
            self._prune()
        return out

    def finish(self, end_time: float) -> list[Segment]:
        if self._scene_start is None:
            return []
        out = self._close_scene(end_time, only_scene=not self.cuts)
        if not out and self._emitted == 0 and self._buffer:
            out = [self._emit(self._scene_start, end_time)]  # a clip always gives at least one segment
        self._buffer.clear()
        return out

    # -- internals ---------------------------------------------------------------------------
    def _start_scene(self, time: float) -> None:
        self._scene_start = time
        self._next_window = time
        self._scene_windows = 0
        self._recent_changes.clear()
        self._buffer.clear()

    def _close_scene(self, end: float, only_scene: bool) -> list[Segment]:
        s = self.settings
        out = []
        if self._scene_windows == 0:
            long_enough = end - self._scene_start >= s.min_scene_s - TIME_EPSILON
            if self._buffer and (long_enough or only_scene):
                out.append(self._emit(self._scene_start, end))
            return out
        while self._next_window + s.window_s <= end + TIME_EPSILON:
            out.append(self._emit(self._next_window, self._next_window + s.window_s))
            self._next_window += s.stride_s
        return out

    def _prune(self) -> None:
        # Keep the last frame at or before the next window's start: it is shown at that start.
        while len(self._buffer) > 1 and self._buffer[1].time <= self._next_window + TIME_EPSILON:
            self._buffer.popleft()

    def _emit(self, start: float, end: float) -> Segment:
        frames = list(self._buffer)
        times = np.array([f.time for f in frames])
        wanted = np.array(segment_sample_times(start, end, self.settings.frames_per_segment)) + TIME_EPSILON
        picks = np.searchsorted(times, wanted, side="right") - 1
        picked = np.stack([frames[max(0, int(i))].prepared(self.prepare) for i in picks])
        inside = [f.change for f in frames if start + TIME_EPSILON < f.time < end - TIME_EPSILON]
        motion = float(sum(inside) / max(end - start, 1e-6))
        self._emitted += 1
        return Segment(start=float(start), end=float(end), frames=picked, motion=motion,
                       scene_start=float(self._scene_start))


def scene_ends(segments: list[Segment], cuts: list[float], end_time: float) -> list[float]:
    """Where the scene of each segment ends: the first cut after the scene's start, or ``end_time``."""
    ends = []
    for segment in segments:
        later = [cut for cut in cuts if cut > segment.scene_start + TIME_EPSILON]
        ends.append(float(min(later)) if later else float(end_time))
    return ends
