"""Rendering: the depth-guided AnimateDiff + ControlNet sampler and ``render-story``.

Stage five of storyboard → retrieval → structure → characters → **render**. This package owns the
structure-guided sampler (:mod:`render.sampler`: the tau window, per-step embeddings, context windows),
compel prompt weighting (:mod:`render.prompt_weighting`) and the story driver behind ``render-story``.
The models it renders with come from the model zoo (:mod:`storyreel.models`)::

    from render import StructureGuidedSampler
    from storyreel.models.loading import load_render_components

    components = load_render_components("tiny", device="cpu")      # or "sd15", "sd15-random"
    frames = StructureGuidedSampler(components)("a hare", conditioning=depth, steps=25, tau=0.5).frames

Heavy modules (torch, diffusers, transformers) are imported lazily, as in :mod:`retrieval`.
"""

from importlib import import_module

_EXPORTS = {
    "StructureGuidedSampler": "render.sampler",
    "WeightedPromptEncoder": "render.prompt_weighting",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'render' has no attribute {name!r}")
