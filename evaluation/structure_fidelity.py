"""Structure fidelity: does the render keep the footage's depth and motion? (what tau trades away)

No paper reports these per shot; the recipes are the standard ones:

* Depth fidelity: the shot's depth model runs on the rendered frames; each frame's raw depth is aligned to the
  guide depth (the depth the shot was rendered with, near = 1) by least-squares scale and shift, as monocular
  depth is evaluated (MiDaS), then ``abs_rel = mean |aligned - guide| / guide`` over the pixels whose guide is at
  least :data:`MIN_GUIDE` (the far background is 0 in a normalised guide, where a relative error means nothing)
  and ``correlation`` is Pearson's r of the two per frame; both are averaged over frames.
* Motion fidelity: dense optical flow (OpenCV's Farneback, no weights) between consecutive frames of the footage
  and of the render at the render's size; ``flow_correlation`` is the cosine of the two flow fields flattened
  (1: the same motion, 0: unrelated, negative: reversed), averaged over frame pairs, and ``flow_epe`` the mean
  end-point error between them in pixels per frame.
"""

from __future__ import annotations

import numpy as np

MIN_GUIDE = 0.1
RECIPE_DEPTH = ("per frame, least-squares scale+shift of the render's depth onto the guide depth; AbsRel over guide "
                f">= {MIN_GUIDE}, Pearson r over all pixels; means over frames")
RECIPE_MOTION = ("OpenCV Farneback flow of consecutive frames (pyr_scale 0.5, 3 levels, window 15, 3 iterations, "
                 "poly_n 5, poly_sigma 1.2) of footage and render; cosine of the flattened flow fields and mean "
                 "end-point error, means over frame pairs")
FARNEBACK = {"pyr_scale": 0.5, "levels": 3, "winsize": 15, "iterations": 3, "poly_n": 5, "poly_sigma": 1.2, "flags": 0}


def align_scale_shift(predicted: np.ndarray, target: np.ndarray) -> np.ndarray:
    """``s * predicted + t`` with ``s, t`` minimising the squared error to ``target`` over all pixels."""
    p, g = predicted.astype(np.float64).ravel(), target.astype(np.float64).ravel()
    design = np.stack([p, np.ones_like(p)], axis=1)
    (scale, shift), *_ = np.linalg.lstsq(design, g, rcond=None)
    return (scale * predicted.astype(np.float64) + shift).reshape(predicted.shape)


def depth_fidelity(rendered_depth: np.ndarray, guide_depth: np.ndarray) -> dict:
    """``{"abs_rel", "correlation"}`` of the render's depth (``T x H x W``, any scale) against the guide's."""
    rendered_depth, guide_depth = np.asarray(rendered_depth), np.asarray(guide_depth)
    if rendered_depth.shape != guide_depth.shape:
        raise ValueError(f"depth shapes differ: render {rendered_depth.shape}, guide {guide_depth.shape}")
    errors, correlations = [], []
    for predicted, guide in zip(rendered_depth, guide_depth):
        guide = guide.astype(np.float64)
        aligned = align_scale_shift(predicted, guide)
        valid = guide >= MIN_GUIDE
        if valid.any():
            errors.append(float(np.mean(np.abs(aligned[valid] - guide[valid]) / guide[valid])))
        if predicted.std() > 0 and guide.std() > 0:
            correlations.append(float(np.corrcoef(predicted.ravel(), guide.ravel())[0, 1]))
    return {"abs_rel": float(np.mean(errors)) if errors else None,
            "correlation": float(np.mean(correlations)) if correlations else None}


def optical_flow(frames: np.ndarray) -> np.ndarray:
    """Farneback flow between consecutive frames: ``T x H x W x 3`` uint8 → ``(T-1) x H x W x 2`` (pixels)."""
    import cv2

    grey = [cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY) for frame in np.asarray(frames)]
    return np.stack([cv2.calcOpticalFlowFarneback(a, b, None, **FARNEBACK) for a, b in zip(grey[:-1], grey[1:])])


def motion_fidelity(footage: np.ndarray, render: np.ndarray) -> dict:
    """``{"flow_correlation", "flow_epe"}`` of the render's motion against the footage's (same frame count and
    size)."""
    footage, render = np.asarray(footage), np.asarray(render)
    if footage.shape != render.shape:
        raise ValueError(f"frame shapes differ: footage {footage.shape}, render {render.shape}")
    if len(footage) < 2:
        return {"flow_correlation": None, "flow_epe": None}
    return flow_agreement(optical_flow(footage), optical_flow(render))


def flow_agreement(reference: np.ndarray, other: np.ndarray) -> dict:
    """The agreement of two flow fields ``P x H x W x 2``: the mean over pairs of the cosine of the flattened
    fields (a still pair of either is left out of it) and the mean end-point error."""
    cosines = []
    for a, b in zip(reference.astype(np.float64), other.astype(np.float64)):
        norm = np.linalg.norm(a) * np.linalg.norm(b)
        if norm > 0:
            cosines.append(float(np.sum(a * b) / norm))
    epe = float(np.mean(np.linalg.norm(reference - other, axis=-1)))
    return {"flow_correlation": float(np.mean(cosines)) if cosines else None, "flow_epe": epe}
