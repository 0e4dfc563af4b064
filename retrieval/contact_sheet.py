"""A picture of search results: one row per segment, a few of its frames, labelled."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

from storyreel import atomic_files, drawing


def draw_contact_sheet(segments: Sequence, out_path: str | Path, frames_per_row: int = 4, thumb_height: int = 96,
                       title: str | None = None) -> Path:
    """Draw ``segments`` (objects with ``read_frames``, ``score``, ``label``, ``path``, ``start``, ``end``)."""
    if not segments:
        raise ValueError("no segments to draw")
    font, small = drawing.font(14), drawing.font(12)
    rows = []
    for rank, segment in enumerate(segments, start=1):
        frames = segment.read_frames(num_frames=frames_per_row)
        height, width = frames.shape[1:3]
        thumb_width = max(1, round(width * thumb_height / height))
        thumbs = [np.asarray(Image.fromarray(f).resize((thumb_width, thumb_height), Image.Resampling.BILINEAR))
                  for f in frames]
        rows.append((rank, segment, np.concatenate(thumbs, axis=1)))
    gap, caption_h, title_h = 6, 36, 28 if title else 0
    sheet_w = max(strip.shape[1] for _, _, strip in rows) + 2 * gap
    sheet_h = title_h + sum(caption_h + strip.shape[0] + gap for _, _, strip in rows) + gap
    sheet = Image.new("RGB", (sheet_w, sheet_h), drawing.BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    y = gap
    if title:
        draw.text((gap, y), title, fill=drawing.TEXT, font=font)
        y += title_h
    for rank, segment, strip in rows:
        label = segment.label or "(no label)"
        draw.text((gap, y), f"#{rank}  {segment.score:.3f}  {label}", fill=drawing.TEXT, font=font)
        draw.text((gap, y + 17), f"{Path(segment.path).name}  {segment.start:.2f}-{segment.end:.2f} s",
                  fill=drawing.MUTED, font=small)
        y += caption_h
        sheet.paste(Image.fromarray(strip), (gap, y))
        y += strip.shape[0] + gap
    out_path = Path(out_path)
    with atomic_files.atomic_path(out_path) as tmp:
        sheet.save(tmp, format="PNG")
    return out_path
