"""The one way frames become CLIP inputs: resize the shorter side, then center-crop a square.

Index building and frame queries both go through :func:`square_crop` so that a segment's own frames
embed to exactly the vector stored in the index.
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def cover_crop(frame: np.ndarray, width: int, height: int) -> np.ndarray:
    """Scale ``frame`` (H x W x 3 uint8) to cover ``width`` x ``height``, then center-crop to exactly that."""
    if frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"expected an H x W x 3 frame, got shape {tuple(frame.shape)}")
    src_h, src_w = frame.shape[:2]
    scale = max(width / src_w, height / src_h)
    new_w, new_h = max(width, round(src_w * scale)), max(height, round(src_h * scale))
    image = Image.fromarray(frame)
    if (new_w, new_h) != (src_w, src_h):
        image = image.resize((new_w, new_h), Image.Resampling.BICUBIC, reducing_gap=3.0)
    left, top = (new_w - width) // 2, (new_h - height) // 2
    return np.asarray(image.crop((left, top, left + width, top + height)))


def square_crop(frame: np.ndarray, size: int) -> np.ndarray:
    """Resize so the shorter side is ``size``, then center-crop size x size (CLIP's framing)."""
    return cover_crop(frame, size, size)


def change_thumbnail(frame: np.ndarray, size: int = 24) -> np.ndarray:
    """A small RGB float32 thumbnail in [0, 1] for cut detection and motion scores.

    Colour is kept: two scenes of equal brightness but different colour must still read as a cut.
    """
    image = Image.fromarray(frame).resize((size, size), Image.Resampling.BILINEAR, reducing_gap=2.0)
    return np.asarray(image, dtype=np.float32) / 255.0
