"""Motion structure: the depth sequence of a retrieved clip segment that guides the render.

Stage two of storyboard → retrieval → **structure** → characters → render. A clip segment is resampled
to the render's frame count, framed exactly as the render frames it (:mod:`structure.framing`), run
through a DPT depth model (:mod:`structure.depth_models`, MiDaS DPT-Hybrid by default), normalised with
one range for the whole sequence (:mod:`structure.depth_sequence`), cached on disk
(:mod:`structure.depth_cache`) and turned into the depth ControlNet's input
(:mod:`structure.conditioning`)::

    from structure import controlnet_condition, extract_depth

    sequence = extract_depth(segment, frames=16, size=(512, 512), estimator="tiny", cache="depth-cache")
    condition = controlnet_condition(sequence)      # 16 x 3 x 512 x 512 in [0, 1], near = 1

Heavy modules (torch, transformers) are imported lazily, as in :mod:`retrieval`.
"""

from importlib import import_module

_EXPORTS = {
    "controlnet_condition": "structure.conditioning",
    "conditioning_frames": "structure.conditioning",
    "DepthCache": "structure.depth_cache",
    "DEFAULT_MODEL": "structure.depth_models",
    "DepthEstimator": "structure.depth_models",
    "DepthModelLoadError": "structure.depth_models",
    "load_depth_model": "structure.depth_models",
    "DepthSequence": "structure.depth_sequence",
    "flicker": "structure.depth_sequence",
    "load_npz": "structure.depth_sequence",
    "normalize_per_frame": "structure.depth_sequence",
    "normalize_sequence": "structure.depth_sequence",
    "smooth_temporally": "structure.depth_sequence",
    "DepthModel": "structure.extract",
    "extract_depth": "structure.extract",
    "extract_raw_depth": "structure.extract",
    "read_source_frames": "structure.extract",
    "cover_box": "structure.framing",
    "frame_image": "structure.framing",
    "frame_images": "structure.framing",
    "InvalidArgumentError": "structure.validation",
    "parse_size": "structure.validation",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'structure' has no attribute {name!r}")
