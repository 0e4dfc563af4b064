"""Depth normalisation where it matters: one range per sequence against per-frame min-max, on approaching figures.

When a figure walks towards the camera its inverse depth grows from frame to frame. Per-frame min-max
(``depth_range: frame``) stretches every frame by its own nearest and farthest pixel, so the ground and the sky,
which do not move, change brightness as the figure comes closer: flicker that is not motion, and that the
ControlNet reads as the scene moving. One range for the sequence (``depth_range: sequence``, the default) keeps
still things still. Measured on held-out clips whose action is ``approach``, for the ground-truth inverse depth
and for the toy DPT's:

* ``background_flicker``: the mean absolute change between consecutive frames over the pixels that are
  background in both (ground-truth masks). Nothing there moves, so every bit of it is normalisation flicker;
* ``flicker``: :func:`structure.depth_sequence.flicker` over whole frames (real motion included);
* ``figure_separation``: the mean normalised depth of the figure minus that of the background, averaged over
  frames: how much of the [0, 1] range is left to tell the figure from its ground.
"""

from __future__ import annotations

import numpy as np

from toy_world.scenes import FPS
from toy_world.world_files import WorldClip

RANGES = ("sequence", "frame")
APPROACH = "approach"


def _scene_frames(clip: WorldClip) -> int:
    return clip.spec.cut_frame(FPS) or len(clip.frames)


def approaching_clips(clips: list[WorldClip]) -> list[WorldClip]:
    """The clips whose (first) scene is a figure approaching the camera."""
    return [clip for clip in clips if clip.spec.action == APPROACH]


def normalisation_figures(depth: np.ndarray, mask: np.ndarray) -> dict[str, float]:
    """``background_flicker``, ``flicker`` and ``figure_separation`` (module doc) of normalised ``depth``
    (T x H x W in [0, 1]) with the figure's ``mask`` (T x H x W bool)."""
    from structure.depth_sequence import flicker

    still = ~mask[1:] & ~mask[:-1]
    change = np.abs(np.diff(depth.astype(np.float64), axis=0))
    separation = [float(frame[figure].mean() - frame[~figure].mean())
                  for frame, figure in zip(depth, mask) if figure.any() and (~figure).any()]
    return {"background_flicker": float(change[still].mean()), "flicker": flicker(depth),
            "figure_separation": float(np.mean(separation))}


def normalised_depths(clip: WorldClip, depth_of=None) -> dict[str, np.ndarray]:
    """The depth of ``clip``'s first scene normalised each way (:data:`RANGES`); ``depth_of(frames)`` gives raw
    inverse depth (default: the ground truth)."""
    from structure.depth_sequence import depth_from_raw

    end = _scene_frames(clip)
    raw = clip.inverse_depth[:end] if depth_of is None else depth_of(clip.frames[:end])
    raw = np.asarray(raw, dtype=np.float32)
    return {name: depth_from_raw(raw, fps=FPS, depth_range=name).depth for name in RANGES}


def compare_normalisations(clips: list[WorldClip], depth_of=None) -> dict:
    """The figures of both normalisations, averaged over ``clips`` (their first scene); ``depth_of`` as in
    :func:`normalised_depths`."""
    per_range = {name: [] for name in RANGES}
    for clip in clips:
        for name, depth in normalised_depths(clip, depth_of).items():
            per_range[name].append(normalisation_figures(depth, clip.mask[: len(depth)]))
    figures = {name: {key: float(np.mean([row[key] for row in rows])) for key in rows[0]}
               for name, rows in per_range.items() if rows}
    figures["clips"] = len(clips)
    return figures


def background_levels(clip: WorldClip, depths: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The mean of ``depths`` (:func:`normalised_depths` of ``clip``), in each frame, over the pixels the figure
    never covers (what the chart draws)."""
    still = ~clip.mask[: _scene_frames(clip)].any(axis=0)
    return {name: depth[:, still].mean(axis=1) for name, depth in depths.items()}


def normalisation_chart(clip: WorldClip, path, depth_of=None) -> None:
    """A PNG: the clip's first and last frames, their depth with each normalisation, and the background's
    mean depth over time for both (ground truth dashed, ``depth_of``'s solid when given)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from storyreel.atomic_files import atomic_path

    end = _scene_frames(clip)
    truth = normalised_depths(clip)
    shown = truth if depth_of is None else normalised_depths(clip, depth_of)
    figure = plt.figure(figsize=(9, 4.2))
    grid = figure.add_gridspec(2, 4, width_ratios=(1, 1, 1, 2.4))
    for row, frame in enumerate((0, end - 1)):
        panels = [("footage", clip.frames[frame], None)]
        panels += [(f"depth: {name}", shown[name][frame], "gray") for name in RANGES]
        for column, (title, image, cmap) in enumerate(panels):
            axis = figure.add_subplot(grid[row, column])
            axis.imshow(image, cmap=cmap, vmin=0, vmax=1 if cmap else None)
            axis.set_xticks([]), axis.set_yticks([])
            axis.set_title(f"{title}, frame {frame}", fontsize=7)
    axis = figure.add_subplot(grid[:, 3])
    sources = [("ground truth", truth, "--")] + ([("toy DPT", shown, "-")] if depth_of is not None else [])
    for label, depths, style in sources:
        levels = background_levels(clip, depths)
        for name, colour in zip(RANGES, ("tab:blue", "tab:red")):
            axis.plot(np.arange(len(levels[name])) / FPS, levels[name], style, color=colour,
                      label=f"{label}, {name} range")
    axis.set_xlabel("seconds")
    axis.set_ylabel("mean depth of the still background")
    axis.set_title("a figure approaching the camera", fontsize=9)
    axis.legend(fontsize=7)
    figure.tight_layout()
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=110)
    plt.close(figure)
