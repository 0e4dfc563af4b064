"""The ControlNet's strength per denoising step and per frame, with Animate-A-Story's structure window tau.

``controlnet_scale`` is one of

* a float: the same strength at every step and frame (diffusers' ``controlnet_conditioning_scale``);
* an array-like of shape ``(steps,)`` (per step) or ``(steps, frames)`` (per step and frame);
* a callable ``scale(step_index, frame_index) -> float``.

``tau`` keeps the ControlNet at step ``i`` only while ``(i + 1) / steps <= tau``: the steps diffusers keeps
with ``control_guidance_end=tau`` (and ``control_guidance_start=0``). :func:`step_scales` gives, per step,
``None`` (the ControlNet is not called: after tau, or every frame's scale is 0), a float (one strength for
every frame) or a 1-D tensor of per-frame strengths.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

ScaleSpec = float | Sequence | np.ndarray | torch.Tensor | Callable[[int, int], float]


def keeps_control(step_index: int, steps: int, tau: float) -> bool:
    """Whether step ``step_index`` of ``steps`` is inside the structure window (diffusers' control_guidance_end)."""
    return not (step_index / steps < 0.0 or (step_index + 1) / steps > tau)


def step_scales(controlnet_scale: ScaleSpec, tau: float, steps: int, num_frames: int) -> list:
    """Per step: ``None`` (skip the ControlNet), a float, or a ``(num_frames,)`` float tensor."""
    if not 0.0 <= float(tau) <= 1.0:
        raise ValueError(f"tau must be in [0, 1], got {tau}")
    table = _scale_table(controlnet_scale, steps, num_frames)
    result = []
    for i in range(steps):
        if not keeps_control(i, steps, tau):
            result.append(None)
            continue
        if table is None:  # a plain float
            result.append(None if float(controlnet_scale) == 0.0 else float(controlnet_scale))
            continue
        row = table[i]
        if bool((row == 0).all()):
            result.append(None)
        elif bool((row == row[0]).all()):
            result.append(float(row[0]))
        else:
            result.append(row.clone())
    return result


def _scale_table(spec: ScaleSpec, steps: int, num_frames: int) -> torch.Tensor | None:
    if isinstance(spec, (int, float)) and not isinstance(spec, bool):
        return None
    if callable(spec):
        values = [[float(spec(i, f)) for f in range(num_frames)] for i in range(steps)]
        return torch.tensor(values, dtype=torch.float64)
    table = torch.as_tensor(np.asarray(spec, dtype=np.float64))
    if table.ndim == 1:
        if table.shape[0] != steps:
            raise ValueError(f"controlnet_scale has {table.shape[0]} values for {steps} steps")
        return table[:, None].expand(steps, num_frames)
    if table.ndim == 2 and tuple(table.shape) == (steps, num_frames):
        return table
    raise ValueError(f"controlnet_scale of shape {tuple(table.shape)}: expected a float, ({steps},) per step, "
                     f"({steps}, {num_frames}) per step and frame, or a callable (step, frame) -> float")
