"""Reference images of a character: found in a folder, decoded, converted to RGB and checked.

:func:`load_reference_images` takes every image file of a folder (``.png``, ``.jpg``, ``.jpeg``, ``.webp``,
``.bmp``, ``.gif``, ``.tif``, ``.tiff``; other files such as a README are ignored), in name order, and
returns them as ``H x W x 3`` uint8 RGB arrays:

* any size and mode: the EXIF orientation is applied; RGBA, LA and palette images with transparency are
  composited over white (a cut-out character stays on a plain background instead of black); grayscale,
  16-bit and float images are scaled to 8 bits; CMYK and the rest go through Pillow's RGB conversion;
  the first frame of an animated GIF is used;
* an image whose shorter side is smaller than the training resolution is refused
  (:class:`~characters.errors.ReferenceImageError` naming the file and both sizes): it would be upscaled;
* an empty folder, a missing folder and an image that cannot be decoded are refused, naming the
  folder or file;
* fewer than 3 images (the method wants 3 to 20) or more than 20 give a
  :class:`~characters.errors.ReferenceImageCountWarning` / ``UserWarning`` and training still runs.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from characters.errors import ReferenceImageCountWarning, ReferenceImageError
from storyreel.errors import first_line

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
MIN_IMAGES = 3
MAX_IMAGES = 20
BACKGROUND = (255, 255, 255)


@dataclass
class ReferenceImage:
    """One decoded reference image: ``pixels`` is ``H x W x 3`` uint8 RGB; ``mode`` the file's Pillow mode."""

    path: Path
    pixels: np.ndarray
    mode: str

    @property
    def size(self) -> tuple[int, int]:
        """``(width, height)``."""
        return int(self.pixels.shape[1]), int(self.pixels.shape[0])

    def sha256(self) -> str:
        """A digest of the decoded pixels (what training sees), for checkpoints and metadata."""
        digest = hashlib.sha256(f"{self.pixels.shape}".encode())
        digest.update(np.ascontiguousarray(self.pixels).tobytes())
        return digest.hexdigest()


def image_files(folder: str | os.PathLike) -> list[Path]:
    """The image files of ``folder`` in name order (not recursive); raises if it is not a folder."""
    folder = Path(folder)
    if not folder.exists():
        raise ReferenceImageError(folder, "no such folder")
    if not folder.is_dir():
        raise ReferenceImageError(folder, "not a folder; --images takes a folder of reference images")
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                  and not p.name.startswith("."))


def to_rgb(image) -> np.ndarray:
    """A Pillow image of any mode → ``H x W x 3`` uint8 RGB (transparency composited over white)."""
    from PIL import Image

    mode = image.mode
    if mode == "P" and "transparency" in image.info:
        image, mode = image.convert("RGBA"), "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*BACKGROUND, 255))
        return np.asarray(Image.alpha_composite(background, rgba).convert("RGB"))
    if mode in ("I", "F") or mode.startswith("I;16"):
        values = np.asarray(image, dtype=np.float64)
        if mode == "F":
            top = 1.0 if values.size and np.nanmax(values) <= 1.0 else 255.0
        else:
            top = 65535.0 if values.size and values.max() > 255 else 255.0
        grey = np.clip(np.nan_to_num(values) / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    return np.asarray(image.convert("RGB"))


def read_image(path: str | os.PathLike) -> ReferenceImage:
    """Decode one image file; :class:`ReferenceImageError` names the file when it cannot be decoded."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as image:
            image.seek(0)
            image.load()
            mode = image.mode
            image = ImageOps.exif_transpose(image)
            pixels = to_rgb(image)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        reason = first_line(exc, limit=None)
        raise ReferenceImageError(path, f"cannot decode the image ({reason})") from None
    if pixels.ndim != 3 or pixels.shape[2] != 3 or min(pixels.shape[:2]) == 0:
        raise ReferenceImageError(path, f"cannot decode the image (got an array of shape {pixels.shape})")
    return ReferenceImage(path, np.ascontiguousarray(pixels, dtype=np.uint8), mode)


def check_size(image: ReferenceImage, resolution: int) -> None:
    width, height = image.size
    if min(width, height) < resolution:
        raise ReferenceImageError(
            image.path, f"{width}x{height} is smaller than the training resolution {resolution}x{resolution} "
                        f"(the shorter side must be at least {resolution} pixels); use a larger image or a lower "
                        "--resolution")


def load_reference_images(folder: str | os.PathLike, resolution: int) -> list[ReferenceImage]:
    """Every image of ``folder``, decoded and checked against ``resolution`` (see the module docstring)."""
    files = image_files(folder)
    if not files:
        raise ReferenceImageError(
            folder, f"holds no reference images (expected {', '.join(IMAGE_SUFFIXES)} files, "
                    f"{MIN_IMAGES} to {MAX_IMAGES} of them)")
    images = [read_image(path) for path in files]
    for image in images:
        check_size(image, resolution)
    if len(images) < MIN_IMAGES:
        warnings.warn(ReferenceImageCountWarning(
            f"{folder}: only {len(images)} reference image{'s' if len(images) != 1 else ''}; the method wants "
            f"{MIN_IMAGES} to {MAX_IMAGES} (training goes on, but the character may not keep its identity)"),
            stacklevel=2)
    elif len(images) > MAX_IMAGES:
        warnings.warn(ReferenceImageCountWarning(
            f"{folder}: {len(images)} reference images; the method was made for {MIN_IMAGES} to {MAX_IMAGES} "
            "(training uses them all)"), stacklevel=2)
    return images
