"""``storyboard.png``: one row per shot: retrieved frames, their depth, rendered frames and the caption."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

from storyreel import atomic_files, drawing


@dataclass
class SheetRow:
    """One shot's row. ``retrieved`` and ``rendered``: N x H x W x 3 uint8; ``depth``: N x H x W in [0, 1]."""

    title: str
    caption: str
    source: str
    retrieved: np.ndarray | None
    depth: np.ndarray | None
    rendered: np.ndarray
    prompt: str = ""  # the render prompt (caption with weights and style), drawn under the source line


def pick_frames(frames: np.ndarray, count: int) -> np.ndarray:
    """``count`` frames spread evenly over ``frames`` (first and last included)."""
    if len(frames) <= count:
        return frames
    return frames[np.linspace(0, len(frames) - 1, count).round().astype(int)]


def depth_to_rgb(depth: np.ndarray) -> np.ndarray:
    """N x H x W depth in [0, 1] (near = 1) → N x H x W x 3 uint8 with a small blue-to-yellow colormap."""
    d = np.clip(np.asarray(depth, dtype=np.float32), 0, 1)[..., None]
    far, mid, near = np.array([20, 24, 80]), np.array([200, 60, 110]), np.array([250, 230, 90])
    low = far + (mid - far) * np.clip(d * 2, 0, 1)
    rgb = np.where(d < 0.5, low, mid + (near - mid) * np.clip(d * 2 - 1, 0, 1))
    return rgb.round().astype(np.uint8)


def _strip(frames: np.ndarray | None, count: int, thumb: int) -> Image.Image:
    width = count * thumb + (count - 1) * 2
    strip = Image.new("RGB", (width, thumb), (40, 40, 46))
    if frames is None or len(frames) == 0:
        ImageDraw.Draw(strip).text((4, thumb // 2 - 6), "(none)", fill=drawing.MUTED, font=drawing.font(12))
        return strip
    for i, frame in enumerate(pick_frames(frames, count)):
        image = Image.fromarray(frame)
        image.thumbnail((thumb, thumb), Image.Resampling.BILINEAR)
        x = i * (thumb + 2) + (thumb - image.width) // 2
        strip.paste(image, (x, (thumb - image.height) // 2))
    return strip


def draw_story_sheet(rows: Sequence[SheetRow], out_path: str | Path, title: str | None = None,
                     frames_per_part: int = 3, thumb: int = 96) -> Path:
    """Draw the storyboard sheet and write it (atomically) to ``out_path`` as PNG."""
    if not rows:
        raise ValueError("no shots to draw")
    font, small = drawing.font(14), drawing.font(12)
    gap, title_h, label_h = 8, 28 if title else 0, 16
    header_h = 52 if any(row.prompt for row in rows) else 36
    part_w = frames_per_part * thumb + (frames_per_part - 1) * 2
    sheet_w = 3 * part_w + 4 * gap
    row_h = header_h + label_h + thumb + gap
    sheet = Image.new("RGB", (sheet_w, title_h + len(rows) * row_h + gap), drawing.BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    y = gap
    if title:
        draw.text((gap, y), title, fill=drawing.TEXT, font=font)
        y += title_h
    for row in rows:
        heading = _fit(draw, row.title + "  " + row.caption, font, sheet_w - 2 * gap)
        draw.text((gap, y), heading, fill=drawing.TEXT, font=font)
        draw.text((gap, y + 17), _fit(draw, row.source, small, sheet_w - 2 * gap), fill=drawing.MUTED, font=small)
        if row.prompt:
            draw.text((gap, y + 33), _fit(draw, "caption: " + row.prompt, small, sheet_w - 2 * gap), fill=drawing.MUTED,
                      font=small)
        y += header_h
        parts = [("retrieved", row.retrieved), ("depth", None if row.depth is None else depth_to_rgb(row.depth)),
                 ("rendered", row.rendered)]
        for i, (label, frames) in enumerate(parts):
            x = gap + i * (part_w + gap)
            draw.text((x, y), label, fill=drawing.MUTED, font=small)
            sheet.paste(_strip(frames, frames_per_part, thumb), (x, y + label_h))
        y += label_h + thumb + gap
    out_path = Path(out_path)
    with atomic_files.atomic_path(out_path) as tmp:
        sheet.save(tmp, format="PNG")
    return out_path


def _fit(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> str:
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"
