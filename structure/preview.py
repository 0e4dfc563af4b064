"""Looking at depth: a colourised depth GIF and a strip of frames over their depth, written atomically.

The colour map is *inferno* (dark purple = far, yellow-white = near): perceptually uniform and readable
in greyscale. It is built from nine of matplotlib's inferno samples, linearly interpolated into a
256-entry table, so matplotlib is not needed. The GIF uses that table as its palette, so every frame
shows a depth value in exactly the same colour (no per-frame palette quantisation).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from storyreel.atomic_files import atomic_path
from structure.depth_sequence import DepthSequence

# matplotlib's inferno at 0, 1/8, ..., 1.
INFERNO_ANCHORS = np.array([
    (0, 0, 4), (31, 12, 72), (85, 15, 109), (136, 34, 106), (186, 54, 85),
    (227, 89, 51), (249, 142, 9), (249, 203, 53), (252, 255, 164),
], dtype=np.float64)


def colormap_table(anchors: np.ndarray = INFERNO_ANCHORS, entries: int = 256) -> np.ndarray:
    """An ``entries x 3`` uint8 table interpolating ``anchors`` (evenly spaced over [0, 1])."""
    positions = np.linspace(0.0, 1.0, len(anchors))
    x = np.linspace(0.0, 1.0, entries)
    table = np.stack([np.interp(x, positions, anchors[:, channel]) for channel in range(3)], axis=1)
    return np.round(table).astype(np.uint8)


INFERNO = colormap_table()


def depth_to_indices(depth: np.ndarray) -> np.ndarray:
    """``[0, 1]`` depth → uint8 table indices 0..255 (values outside are clipped)."""
    return np.round(np.clip(np.asarray(depth, dtype=np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)


def colorize(depth: np.ndarray, table: np.ndarray = INFERNO) -> np.ndarray:
    """``... x H x W`` depth in ``[0, 1]`` → ``... x H x W x 3`` uint8 colours (near = bright)."""
    return table[depth_to_indices(depth)]


def _depth_values(depth: DepthSequence | np.ndarray) -> np.ndarray:
    values = depth.depth if isinstance(depth, DepthSequence) else np.asarray(depth, dtype=np.float32)
    if values.ndim != 3 or values.shape[0] == 0:
        raise ValueError(f"expected T x H x W depth, got shape {values.shape}")
    return values


def save_depth_gif(depth: DepthSequence | np.ndarray, path: str | os.PathLike, fps: float | None = None,
                   table: np.ndarray = INFERNO) -> Path:
    """Write the colourised depth as a looping GIF at ``fps`` (default: the sequence's own)."""
    values = _depth_values(depth)
    fps = fps or (depth.fps if isinstance(depth, DepthSequence) else 8.0)
    palette = table.reshape(-1).tolist()
    frames = []
    for indices in depth_to_indices(values):
        frame = Image.frombytes("P", (indices.shape[1], indices.shape[0]), np.ascontiguousarray(indices).tobytes())
        frame.putpalette(palette)
        frames.append(frame)
    with atomic_path(path) as tmp:
        frames[0].save(tmp, format="GIF", save_all=True, append_images=frames[1:], loop=0,
                       duration=max(20, int(round(1000.0 / fps))), optimize=False, disposal=1)
    return Path(path)


def _pick_columns(count: int, max_columns: int) -> list[int]:
    if count <= max_columns:
        return list(range(count))
    return sorted(set(int(round(i)) for i in np.linspace(0, count - 1, max_columns)))


def save_strip(frames: np.ndarray, depth: DepthSequence | np.ndarray, path: str | os.PathLike,
               max_columns: int = 8, cell_height: int = 160, gap: int = 4, table: np.ndarray = INFERNO) -> Path:
    """A PNG with the frames on top and their colourised depth below, at most ``max_columns`` columns.

    ``frames`` are the framed ``T x H x W x 3`` uint8 frames the depth was estimated on (same T, H, W).
    """
    values = _depth_values(depth)
    frames = np.asarray(frames)
    if frames.shape[:3] != values.shape or frames.shape[3:] != (3,) or frames.dtype != np.uint8:
        raise ValueError(f"frames {frames.shape} {frames.dtype} do not match depth {values.shape}")
    columns = _pick_columns(len(values), max_columns)
    height, width = values.shape[1:]
    cell_h = min(cell_height, height)
    cell_w = max(1, round(width * cell_h / height))
    sheet = Image.new("RGB", (len(columns) * (cell_w + gap) - gap, 2 * cell_h + gap), (255, 255, 255))
    colours = colorize(values[columns], table)
    for column, (index, colour) in enumerate(zip(columns, colours)):
        x = column * (cell_w + gap)
        for row, picture in enumerate((frames[index], colour)):
            cell = Image.fromarray(picture).resize((cell_w, cell_h), Image.Resampling.BILINEAR)
            sheet.paste(cell, (x, row * (cell_h + gap)))
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG")
    return Path(path)
