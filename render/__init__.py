"""Rendering: the depth-guided AnimateDiff + ControlNet model that renders each shot.

Stage five of storyboard → retrieval → structure → characters → **render**. This package owns the model
presets (:mod:`render.model_presets`: ``sd15``, ``tiny``, ``sd15-random``) and their loading
(:mod:`render.model_loading`)::

    from render import load_render_components

    components = load_render_components("tiny", device="cpu")      # or "sd15", "sd15-random"
    components.unet                # UNetMotionModel (SD1.5 UNet + AnimateDiff motion modules)
    components.controlnet          # the depth ControlNet
    components.record()            # preset, sources and config fingerprints, for reports

Heavy modules (torch, diffusers, transformers) are imported lazily, as in :mod:`retrieval`.
"""

from importlib import import_module

_EXPORTS = {
    "build_clip_tokenizer": "render.clip_tokenizer",
    "ComponentSource": "render.model_loading",
    "ModelConfigError": "render.model_loading",
    "RenderComponents": "render.model_loading",
    "RenderModelLoadError": "render.model_loading",
    "load_render_components": "render.model_loading",
    "read_config_file": "render.model_loading",
    "DEFAULT_PRESET": "render.model_presets",
    "PRESET_NAMES": "render.model_presets",
    "SCHEDULER_NAMES": "render.model_presets",
    "build_random_components": "render.model_presets",
    "build_tiny_components": "render.model_presets",
    "make_scheduler": "render.model_presets",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'render' has no attribute {name!r}")
