"""The one place where a depth sequence becomes the depth ControlNet's conditioning input.

The SD1.5 depth ControlNets (``lllyasviel/control_v11f1p_sd15_depth``, Depth Anything's re-trained one)
take a 3-channel image with ``conditioning_channels=3`` in RGB order: the depth map repeated in all three
channels, near = white, values in ``[0, 1]`` (their preprocessors write an 8-bit grey image that the
pipeline's control image processor divides by 255, with no ``[-1, 1]`` rescaling: ``do_normalize=False``).

:func:`controlnet_condition` gives that as one ``T x 3 x H x W`` tensor. diffusers'
``AnimateDiffControlNetPipeline`` wants ``conditioning_frames`` as a *list* of ``T`` frames;
:func:`conditioning_frames` gives that list (``3 x H x W`` tensors), which the pipeline's
``VideoProcessor(do_normalize=False)`` turns back into the same values.
"""

from __future__ import annotations

import numpy as np
import torch

from structure.depth_sequence import DepthSequence


def _depth_array(depth: DepthSequence | np.ndarray | torch.Tensor) -> torch.Tensor:
    values = depth.depth if isinstance(depth, DepthSequence) else depth
    values = torch.as_tensor(np.asarray(values) if not isinstance(values, torch.Tensor) else values)
    if values.ndim != 3:
        raise ValueError(f"expected T x H x W depth, got shape {tuple(values.shape)}")
    values = values.to(torch.float32)
    if values.numel() and (values.min() < 0 or values.max() > 1 or not torch.isfinite(values).all()):
        raise ValueError("depth must be normalised to [0, 1] (near = 1) before it conditions the ControlNet; "
                         "use structure.depth_sequence.normalize_sequence")
    return values


def controlnet_condition(depth: DepthSequence | np.ndarray | torch.Tensor, dtype: torch.dtype = torch.float32,
                         device: str | torch.device | None = None) -> torch.Tensor:
    """``T x H x W`` depth in ``[0, 1]`` (near = 1) → ``T x 3 x H x W`` conditioning tensor in ``[0, 1]``."""
    values = _depth_array(depth)
    condition = values[:, None].expand(-1, 3, -1, -1).contiguous()
    return condition.to(device=device, dtype=dtype)


def conditioning_frames(depth: DepthSequence | np.ndarray | torch.Tensor, dtype: torch.dtype = torch.float32,
                        device: str | torch.device | None = None) -> list[torch.Tensor]:
    """The same as a list of ``T`` frames of ``3 x H x W``: the ``conditioning_frames`` of AnimateDiff + ControlNet."""
    return list(controlnet_condition(depth, dtype=dtype, device=device).unbind(0))
