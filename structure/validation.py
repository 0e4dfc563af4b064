"""Checks of the arguments a user hands the structure stage, with errors that name the argument.

The command line prints these messages as ``error: --NAME: ...`` and exits with code 2; the Python API
raises :class:`InvalidArgumentError` (a ``ValueError``) whose ``argument`` says which parameter was wrong.
"""

from __future__ import annotations

import re

from storyreel.errors import StoryreelError

# The render works in SD1.5 latents, 8 pixels per latent cell.
SIZE_MULTIPLE = 8
_SIZE_PATTERN = re.compile(r"^\s*(\d+)\s*[xX×]\s*(\d+)\s*$")


class InvalidArgumentError(StoryreelError, ValueError):
    """A bad argument; ``argument`` is its name (``size``, ``frames``, ``start``, ``end``, ``source`` ...)."""

    def __init__(self, argument: str, detail: str):
        super().__init__(argument, detail)
        self.argument = argument
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.argument}: {self.detail}"


def parse_size(text: str) -> tuple[int, int]:
    """``"512x288"`` → ``(512, 288)`` (width, height); a single number means a square."""
    match = _SIZE_PATTERN.match(text)
    if match:
        return check_size((int(match.group(1)), int(match.group(2))))
    if text.strip().isdigit():
        return check_size((int(text), int(text)))
    raise InvalidArgumentError("size", f"expected WIDTHxHEIGHT such as 512x512, got {text!r}")


def check_size(size) -> tuple[int, int]:
    """A ``(width, height)`` pair of positive multiples of 8, the render's latent grid."""
    try:
        width, height = (int(v) for v in size)
    except (TypeError, ValueError):
        raise InvalidArgumentError("size", f"expected (width, height), got {size!r}") from None
    if width <= 0 or height <= 0:
        raise InvalidArgumentError("size", f"width and height must be positive, got {width}x{height}")
    if width % SIZE_MULTIPLE or height % SIZE_MULTIPLE:
        raise InvalidArgumentError(
            "size", f"width and height must be divisible by {SIZE_MULTIPLE} (the render's latent grid), "
                    f"got {width}x{height}"
        )
    return width, height


def check_frames(frames) -> int:
    """A frame count of at least 1."""
    if isinstance(frames, bool) or not isinstance(frames, int) or frames < 1:
        raise InvalidArgumentError("frames", f"must be a whole number of at least 1, got {frames!r}")
    return frames


def check_time_range(start: float, end: float) -> tuple[float, float]:
    """``0 <= start < end`` (seconds); the clip's own length is checked where the clip is opened."""
    start, end = float(start), float(end)
    if not start >= 0:
        raise InvalidArgumentError("start", f"must be 0 s or later, got {start:g} s")
    if not end > start:
        raise InvalidArgumentError("end", f"must be after start ({start:g} s), got {end:g} s")
    return start, end
