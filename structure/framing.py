"""The render's framing: how a source picture of any shape becomes a ``width x height`` render frame.

One rule, used for everything the render sees: take the largest centred box of the source that has the
target's aspect ratio (a *cover* crop: nothing is letterboxed, the excess is cut equally from both sides),
then resample that box to exactly ``width x height``. :func:`cover_box` computes the box in source pixel
coordinates (fractional, so no rounding shifts the picture) and :func:`frame_image` applies it to

* colour frames, ``H x W x 3`` uint8, resampled bicubic (as the render's VAE input is prepared), and
* depth maps and other float fields, ``H x W`` float32, resampled bilinear (no overshoot past the
  input's range, so a normalised depth map stays in ``[0, 1]``).

Frames and depth maps of the same source size get exactly the same box, so a depth map framed here lines
up pixel for pixel with the frame framed here. The structure stage frames the video frames first and
estimates depth on the framed frames (see :mod:`structure.extract`), so the depth model only ever sees
what the render will show; ``render/`` frames its own inputs (reference images, init frames) with the
same function.

This is not :func:`retrieval.frame_preprocessing.cover_crop` (CLIP's framing for the index, which rounds
the crop to whole pixels of the scaled frame); the two agree to within a pixel.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class CropBox:
    """A box in source pixel coordinates: ``left <= x < right``, ``top <= y < bottom`` (may be fractional)."""

    left: float
    top: float
    right: float
    bottom: float

    @property
    def width(self) -> float:
        return self.right - self.left

    @property
    def height(self) -> float:
        return self.bottom - self.top

    def as_tuple(self) -> tuple[float, float, float, float]:
        return (self.left, self.top, self.right, self.bottom)


def cover_box(source_size: tuple[int, int], target_size: tuple[int, int]) -> CropBox:
    """The centred box of a ``source_size = (width, height)`` picture with the aspect of ``target_size``.

    The box is as large as the source allows: its full width or its full height.

    Example: a 320x240 frame framed for a 512x288 render keeps the full width and the middle 180 rows
    (``CropBox(0, 30, 320, 210)``).
    """
    source_w, source_h = (int(v) for v in source_size)
    target_w, target_h = (int(v) for v in target_size)
    if min(source_w, source_h, target_w, target_h) <= 0:
        raise ValueError(f"sizes must be positive, got source {source_size} and target {target_size}")
    scale = max(target_w / source_w, target_h / source_h)  # source pixels → target pixels
    crop_w, crop_h = min(source_w, target_w / scale), min(source_h, target_h / scale)
    left, top = (source_w - crop_w) / 2, (source_h - crop_h) / 2
    return CropBox(left, top, left + crop_w, top + crop_h)


def frame_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Frame one picture for a ``size = (width, height)`` render: cover crop, then resample.

    ``image`` is an ``H x W x 3`` uint8 frame (returns uint8, bicubic) or an ``H x W`` float map such as
    a depth map (returns float32, bilinear). Both kinds get the same box for the same ``H x W``.
    """
    image = np.asarray(image)
    width, height = (int(v) for v in size)
    if image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8:
        picture, resample = Image.fromarray(image), Image.Resampling.BICUBIC
    elif image.ndim == 2 and np.issubdtype(image.dtype, np.floating):
        picture, resample = Image.fromarray(np.ascontiguousarray(image, dtype=np.float32)), Image.Resampling.BILINEAR
    else:
        raise ValueError(
            f"expected an H x W x 3 uint8 frame or an H x W float map, got shape {image.shape} {image.dtype}"
        )
    box = cover_box((image.shape[1], image.shape[0]), (width, height))
    framed = picture.resize((width, height), resample, box=box.as_tuple())
    return np.asarray(framed, dtype=np.uint8 if image.ndim == 3 else np.float32)


def frame_images(images: Iterable[np.ndarray], size: tuple[int, int]) -> np.ndarray:
    """:func:`frame_image` over a sequence; returns ``T x H x W x 3`` uint8 or ``T x H x W`` float32."""
    framed = [frame_image(image, size) for image in images]
    if not framed:
        raise ValueError("no images to frame")
    return np.stack(framed)
