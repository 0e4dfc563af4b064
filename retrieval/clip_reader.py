"""Reading frames from video files: decord first, PyAV where decord cannot open or stops decoding.

Frame times are seconds from the first frame of the video stream. The frame shown at time ``t`` is the
last frame whose timestamp is <= t (see :data:`retrieval.index_format.TIME_EPSILON`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from retrieval.frame_preprocessing import cover_crop
from retrieval.index_format import TIME_EPSILON, segment_sample_times
from storyreel.errors import StoryreelError, first_line

BACKENDS = ("auto", "decord", "pyav")
_DECORD_BATCH = 16


class VideoDecodeError(StoryreelError, RuntimeError):
    """A video that cannot be opened or decoded; the message names the file."""

    def __init__(self, path: str | Path, reason: str):
        super().__init__(str(path), reason)  # both in args, so the error pickles across processes
        self.path = str(path)
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclass(frozen=True)
class VideoInfo:
    path: str
    fps: float
    duration_s: float
    width: int
    height: int
    num_frames: int
    backend: str


class _DecordVideo:
    name = "decord"

    def __init__(self, path: Path):
        import decord

        try:
            self._reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=1)
            count = len(self._reader)
            if count == 0:
                raise VideoDecodeError(path, "no video frames")
            fps = float(self._reader.get_avg_fps()) or 30.0
            first = self._reader[0].asnumpy()
            stamps = np.asarray(self._reader.get_frame_timestamp(list(range(count))))[:, 0].astype(np.float64)
        except VideoDecodeError:
            raise
        except Exception as exc:  # decord raises its own DECORDError and plain RuntimeErrors
            raise VideoDecodeError(path, f"decord cannot open it ({first_line(exc)})") from exc
        stamps = stamps - stamps[0]
        plausible = (
            np.all(np.isfinite(stamps))
            and np.all(np.diff(stamps) >= 0)
            and abs(stamps[-1] - (count - 1) / fps) <= 0.5 * max(stamps[-1], 1.0 / fps) + 1.0
        )
        # Some AVI files report garbage timestamps through decord; frame index / fps is then exact.
        self.times = stamps if plausible else np.arange(count, dtype=np.float64) / fps
        self.path = path
        self.info = VideoInfo(
            path=str(path), fps=fps, duration_s=float(self.times[-1] + 1.0 / fps),
            width=int(first.shape[1]), height=int(first.shape[0]), num_frames=count, backend=self.name,
        )

    def _batch(self, indices: Sequence[int]) -> np.ndarray:
        try:
            return self._reader.get_batch(list(indices)).asnumpy()
        except Exception as exc:
            raise VideoDecodeError(self.path, f"decord failed at frame {indices[0]} ({first_line(exc)})") from exc

    def frames(self, start: float, end: float | None) -> Iterator[tuple[float, np.ndarray]]:
        lo = int(np.searchsorted(self.times, start - TIME_EPSILON, side="left"))
        hi = len(self.times) if end is None else int(np.searchsorted(self.times, end - TIME_EPSILON, side="left"))
        for first in range(lo, hi, _DECORD_BATCH):
            indices = list(range(first, min(hi, first + _DECORD_BATCH)))
            for index, frame in zip(indices, self._batch(indices)):
                yield float(self.times[index]), frame

    def frames_at(self, times: Sequence[float]) -> list[np.ndarray]:
        picks = np.searchsorted(self.times, np.asarray(times) + TIME_EPSILON, side="right") - 1
        picks = np.clip(picks, 0, len(self.times) - 1)
        unique = sorted(set(int(i) for i in picks))
        decoded = dict(zip(unique, self._batch(unique)))
        return [decoded[int(i)] for i in picks]

    def close(self) -> None:
        self._reader = None


class _PyAVVideo:
    name = "pyav"

    def __init__(self, path: Path):
        import av

        try:
            # HMDB51 files carry non-UTF-8 metadata that PyAV refuses by default.
            self._container = av.open(str(path), metadata_errors="replace")
        except Exception as exc:
            raise VideoDecodeError(path, f"cannot open it ({first_line(exc)})") from exc
        if not self._container.streams.video:
            self._container.close()
            raise VideoDecodeError(path, "has no video stream")
        stream = self._container.streams.video[0]
        self._stream = stream
        self._time_base = float(stream.time_base) if stream.time_base else 1.0 / 90000
        self._start_pts = stream.start_time or 0
        # AVI has no presentation timestamps: PyAV labels frames with packet (decode-order) times, which
        # run out of order with packed B-frames (DivX). Frames come out in display order, so the frame
        # index over the constant frame rate is the true time (it matches decord's frame times).
        self._index_timing = "avi" in (self._container.format.name or "").split(",")
        fps = float(stream.average_rate or stream.guessed_rate or 0) or 30.0
        if stream.duration:
            duration = float(stream.duration * stream.time_base)
        elif self._container.duration:
            duration = self._container.duration / 1_000_000
        else:
            duration = (stream.frames or 0) / fps
        self.path = path
        self.info = VideoInfo(
            path=str(path), fps=fps, duration_s=duration, width=int(stream.codec_context.width),
            height=int(stream.codec_context.height), num_frames=int(stream.frames or round(duration * fps)),
            backend=self.name,
        )

    def frames(self, start: float, end: float | None) -> Iterator[tuple[float, np.ndarray]]:
        if start > 0 and not self._index_timing:
            offset = self._start_pts + int(max(0.0, start - 1.0) / self._time_base)
            self._container.seek(offset, stream=self._stream, backward=True)
        index = 0
        try:
            for frame in self._container.decode(self._stream):
                if frame.pts is not None and not self._index_timing:
                    t = (frame.pts - self._start_pts) * self._time_base
                else:
                    t = index / self.info.fps
                index += 1
                if t < start - TIME_EPSILON:
                    continue
                if end is not None and t >= end - TIME_EPSILON:
                    break
                yield float(t), frame.to_ndarray(format="rgb24")
        except VideoDecodeError:
            raise
        except Exception as exc:
            raise VideoDecodeError(self.path, f"decoding stopped after {index} frames ({first_line(exc)})") from exc

    def frames_at(self, times: Sequence[float]) -> list[np.ndarray]:
        times = list(times)
        order = np.argsort(times, kind="stable")
        picked: list[np.ndarray | None] = [None] * len(times)
        previous: np.ndarray | None = None
        cursor = 0
        start = max(0.0, min(times) - 1.0)
        for t, frame in self.frames(start, None):
            while cursor < len(order) and t > times[order[cursor]] + TIME_EPSILON:
                picked[order[cursor]] = previous if previous is not None else frame
                cursor += 1
            if cursor == len(order):
                break
            previous = frame
        while cursor < len(order):  # times past the last frame show the last frame
            if previous is None:
                raise VideoDecodeError(self.path, "no frames could be decoded")
            picked[order[cursor]] = previous
            cursor += 1
        return picked  # type: ignore[return-value]

    def close(self) -> None:
        self._container.close()


def open_video(path: str | Path, backend: str = "auto"):
    """Open ``path`` with decord (or PyAV when decord cannot); raises :class:`VideoDecodeError`."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    path = Path(path)
    if not path.exists():
        raise VideoDecodeError(path, "no such file")
    if path.is_dir():
        raise VideoDecodeError(path, "is a folder, not a video file")
    if path.stat().st_size == 0:
        raise VideoDecodeError(path, "is empty (0 bytes)")
    if backend in ("auto", "decord"):
        try:
            return _DecordVideo(path)
        except VideoDecodeError:
            if backend == "decord":
                raise
    return _PyAVVideo(path)


def probe_video(path: str | Path, backend: str = "auto") -> VideoInfo:
    video = open_video(path, backend)
    try:
        return video.info
    finally:
        video.close()


def iter_frames(
    path: str | Path, start: float = 0.0, end: float | None = None, backend: str = "auto"
) -> tuple[VideoInfo, Iterator[tuple[float, np.ndarray]]]:
    """Open a video and return its info plus an iterator of ``(time_s, frame)`` in ``[start, end)``.

    With ``backend="auto"`` a decord failure part-way through continues with PyAV after the last frame
    decord delivered, so one decoder's bug does not lose the rest of the file.
    """
    video = open_video(path, backend)

    def generate():
        last = None
        try:
            for t, frame in video.frames(start, end):
                last = t
                yield t, frame
        except VideoDecodeError:
            if backend != "auto" or video.name != "decord":
                raise
            fallback = _PyAVVideo(Path(path))
            try:
                resume = start if last is None else last + TIME_EPSILON * 2
                for t, frame in fallback.frames(resume, end):
                    if last is None or t > last + TIME_EPSILON:
                        yield t, frame
            finally:
                fallback.close()
        finally:
            video.close()

    return video.info, generate()


def read_frames_at(path: str | Path, times: Sequence[float], backend: str = "auto") -> np.ndarray:
    """The frames shown at each of ``times`` (seconds), as a T x H x W x 3 uint8 array."""
    video = open_video(path, backend)
    try:
        try:
            frames = video.frames_at(times)
        except VideoDecodeError:
            if backend != "auto" or video.name != "decord":
                raise
            fallback = _PyAVVideo(Path(path))
            try:
                frames = fallback.frames_at(times)
            finally:
                fallback.close()
    finally:
        video.close()
    return np.stack(frames)


def read_segment_frames(
    path: str | Path,
    start: float,
    end: float,
    num_frames: int | None = None,
    fps: float | None = None,
    size: tuple[int, int] | None = None,
    backend: str = "auto",
) -> np.ndarray:
    """Frames of the segment ``[start, end)`` of a video, T x H x W x 3 uint8.

    Give ``num_frames`` (frames at the midpoints of equal slices, as the index samples them) or ``fps``
    (frames every 1/fps seconds from ``start``). ``size=(width, height)`` scales each frame to cover that
    size and center-crops it.
    """
    if (num_frames is None) == (fps is None):
        raise ValueError("give exactly one of num_frames or fps")
    if not end > start:
        raise ValueError(f"end ({end}) must be after start ({start})")
    if start < 0:
        raise ValueError(f"start ({start}) must not be negative")
    if num_frames is not None:
        if num_frames < 1:
            raise ValueError(f"num_frames must be at least 1, got {num_frames}")
        times = segment_sample_times(start, end, num_frames)
    else:
        if fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        count = max(1, math.floor((end - start) * fps + TIME_EPSILON))
        times = [start + i / fps for i in range(count)]
    frames = read_frames_at(path, times, backend)
    if size is not None:
        width, height = size
        frames = np.stack([cover_crop(frame, width, height) for frame in frames])
    return frames
