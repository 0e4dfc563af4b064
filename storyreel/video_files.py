"""Video files of a render: H.264 MP4 (PyAV, yuv420p), GIF (Pillow), reading MP4s back and joining shots.

Every writer goes through :func:`storyreel.atomic_files.atomic_path`, so a killed run leaves the old file or
the new one, never half of one.
"""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path
from typing import Sequence

import numpy as np

from storyreel.atomic_files import atomic_path


def _check_frames(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) == 0:
        raise ValueError(f"expected T x H x W x 3 frames (T >= 1), got shape {frames.shape}")
    if frames.dtype != np.uint8:
        raise ValueError(f"expected uint8 frames, got {frames.dtype}")
    return np.ascontiguousarray(frames)


def fps_fraction(fps: float) -> Fraction:
    """``fps`` as an exact fraction (8 → 8/1, 29.97 → 2997/100), as PyAV wants a stream's rate."""
    if not fps > 0:
        raise ValueError(f"fps must be positive, got {fps!r}")
    return Fraction(fps).limit_denominator(1001)


def write_mp4(frames: np.ndarray, path: str | os.PathLike, fps: float, crf: int = 18) -> Path:
    """Write ``frames`` (T x H x W x 3 uint8, even H and W) as H.264 yuv420p at ``fps``; the same frames
    always give the same file."""
    import av

    frames = _check_frames(frames)
    height, width = frames.shape[1:3]
    if height % 2 or width % 2:
        raise ValueError(f"H.264 yuv420p needs an even width and height, got {width}x{height}")
    path = Path(path)
    with atomic_path(path) as tmp:
        with av.open(str(tmp), mode="w", format="mp4") as container:
            stream = container.add_stream("libx264", rate=fps_fraction(fps))
            stream.width, stream.height = width, height
            stream.pix_fmt = "yuv420p"
            # A story must be reproducible, and x264 was not: its frame threads made other decisions on a
            # busy machine (one thread never did); left to the encoder, the RGB -> yuv420p conversion
            # differed from call to call (up to 23 grey levels once decoded); and with the same YUV input
            # in one thread, its macroblock tree gave other files for short clips when the heap was laid
            # out differently (8 frames of 64x64: 3 files in 200 encodes, up to 27 grey levels apart once
            # decoded; 1 file in 400 with mbtree=0). All three are fixed here.
            stream.options = {"crf": str(crf), "preset": "medium", "threads": "1", "x264-params": "mbtree=0"}
            for frame in frames:
                yuv = av.VideoFrame.from_ndarray(frame, format="rgb24").reformat(format="yuv420p")
                for packet in stream.encode(yuv):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
    return path


def write_gif(frames: np.ndarray, path: str | os.PathLike, fps: float) -> Path:
    """Write ``frames`` as a looping GIF at ``fps`` (GIF stores delays in 10 ms steps)."""
    from PIL import Image

    frames = _check_frames(frames)
    images = [Image.fromarray(frame) for frame in frames]
    path = Path(path)
    with atomic_path(path) as tmp:
        images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:],
                       duration=max(10, round(1000 / fps)), loop=0, disposal=2)
    return path


def read_video(path: str | os.PathLike) -> tuple[np.ndarray, float]:
    """All frames of a video file (T x H x W x 3 uint8) and its frame rate."""
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.base_rate or 0)
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
    if not frames:
        raise ValueError(f"{path}: no video frames")
    return np.stack(frames), fps


def _resize(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    if (frames.shape[2], frames.shape[1]) == size:
        return frames
    return np.stack([np.asarray(Image.fromarray(f).resize(size, Image.Resampling.BILINEAR)) for f in frames])


def join_shots(shots: Sequence[np.ndarray], fps: float, crossfade: float = 0.0) -> np.ndarray:
    """Concatenate shots (resized to the first one's size), with a linear crossfade of ``crossfade`` seconds.

    A crossfade of ``n`` frames overlaps the last ``n`` frames of a shot with the first ``n`` of the next
    (``n`` at most the shorter shot's length minus one), so the story is ``sum(T) - n * (shots - 1)`` long.
    """
    if crossfade < 0:
        raise ValueError(f"crossfade must be 0 or more seconds, got {crossfade!r}")
    return join_story(shots, fps, [crossfade] * max(0, len(shots) - 1))


def join_story(shots: Sequence[np.ndarray], fps: float, boundaries: Sequence[float | np.ndarray]) -> np.ndarray:
    """Join shots (resized to the first one's size) with one boundary between each two: a number of seconds
    crossfaded as :func:`join_shots` does (0: a cut), or a transition clip (frames) put between them."""
    if not shots:
        raise ValueError("no shots to join")
    if len(boundaries) != len(shots) - 1:
        raise ValueError(f"{len(boundaries)} boundaries for {len(shots)} shots")
    size = (shots[0].shape[2], shots[0].shape[1])
    clips = [_resize(_check_frames(s), size) for s in shots]
    story = clips[0]
    for clip, boundary in zip(clips[1:], boundaries):
        if isinstance(boundary, np.ndarray):
            story = np.concatenate([story, _resize(_check_frames(boundary), size), clip])
            continue
        if boundary < 0:
            raise ValueError(f"crossfade must be 0 or more seconds, got {boundary!r}")
        n = min(round(boundary * fps), len(story) - 1, len(clip) - 1)
        if n <= 0:
            story = np.concatenate([story, clip])
            continue
        weights = (np.arange(1, n + 1, dtype=np.float32) / (n + 1))[:, None, None, None]
        blend = story[-n:].astype(np.float32) * (1 - weights) + clip[:n].astype(np.float32) * weights
        story = np.concatenate([story[:-n], np.clip(blend + 0.5, 0, 255).astype(np.uint8), clip[n:]])
    return story
