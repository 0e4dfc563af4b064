"""Which pixels of a toy-world frame show the figure, and in which colour: the measuring stick of the toy
render's functional tests (motion transfer, caption control, identity).

A toy scene is a background made of two colour gradients (sky from its top colour to its horizon colour,
ground from its horizon colour to its bottom colour, :data:`toy_world.scenes.PALETTES`) and one figure in one of
the flat :data:`toy_world.scenes.FIGURE_COLOURS` (the world's colours and the toy characters'). A pixel is the
figure's when its colour is farther than ``margin`` from both gradients of the scene's background and nearer to
some figure colour than to them; the figure's colour is the figure colour most of its pixels are nearest to. No
model is involved, so the measure cannot share a failure with the models it measures.
"""

from __future__ import annotations

import numpy as np

from toy_world.scenes import FIGURE_COLOURS, PALETTES

DEFAULT_MARGIN = 40.0  # RGB distance (0-441) beyond which a pixel is not the background's


def _distance_to_segment(pixels: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """RGB distance of each pixel (... x 3) to the segment from ``start`` to ``end``."""
    direction = end - start
    t = np.clip(((pixels - start) @ direction) / max(float(direction @ direction), 1e-6), 0.0, 1.0)
    return np.linalg.norm(pixels - (start + t[..., None] * direction), axis=-1)


def background_distance(frames: np.ndarray, background: str) -> np.ndarray:
    """Distance of each pixel of ``frames`` (... x H x W x 3 uint8) to the background's sky and ground gradients."""
    sky_top, sky_low, ground_far, ground_near = (np.asarray(c, dtype=np.float32) for c in PALETTES[background])
    pixels = np.asarray(frames, dtype=np.float32)
    return np.minimum(_distance_to_segment(pixels, sky_top, sky_low),
                      _distance_to_segment(pixels, ground_far, ground_near))


def colour_distances(frames: np.ndarray) -> np.ndarray:
    """Distance of each pixel to each figure colour: ``... x H x W x len(FIGURE_COLOURS)``."""
    pixels = np.asarray(frames, dtype=np.float32)[..., None, :]
    palette = np.asarray(list(FIGURE_COLOURS.values()), dtype=np.float32)
    return np.linalg.norm(pixels - palette, axis=-1)


def figure_mask(frames: np.ndarray, background: str, margin: float = DEFAULT_MARGIN) -> np.ndarray:
    """True where ``frames`` show the figure (see the module doc): ``... x H x W`` bool."""
    away = background_distance(frames, background)
    nearest_colour = colour_distances(frames).min(axis=-1)
    return (away > margin) & (nearest_colour < away)


def figure_colour(frames: np.ndarray, background: str, margin: float = DEFAULT_MARGIN) -> str | None:
    """The colour name most figure pixels of ``frames`` are nearest to (None: no figure pixel)."""
    mask = figure_mask(frames, background, margin)
    if not mask.any():
        return None
    nearest = colour_distances(frames)[mask].argmin(axis=-1)
    return list(FIGURE_COLOURS)[int(np.bincount(nearest, minlength=len(FIGURE_COLOURS)).argmax())]


def mask_iou(first: np.ndarray, second: np.ndarray) -> float:
    """Intersection over union of two boolean masks of the same shape (1.0 when both are empty)."""
    first, second = np.asarray(first, dtype=bool), np.asarray(second, dtype=bool)
    union = np.logical_or(first, second).sum()
    return 1.0 if union == 0 else float(np.logical_and(first, second).sum() / union)
