"""The look of the pictures storyreel draws (contact sheets, story sheets): colours and fonts."""

from __future__ import annotations

from PIL import ImageFont

BACKGROUND = (24, 24, 28)
TEXT = (235, 235, 235)
MUTED = (150, 150, 160)


def font(size: int):
    """Pillow's default font at ``size`` pixels (its bitmap font where Pillow has no FreeType)."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow built without FreeType
        return ImageFont.load_default()
