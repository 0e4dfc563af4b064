"""The one registry of model presets: what each ``--models`` name means for every stage.

Every command that takes ``--models`` accepts these names with the same meaning:

=============== ==================================== ===================== ==============================
preset          render components                    depth (structure)     CLIP (retrieval)
=============== ==================================== ===================== ==============================
``sd15``        SD1.5 + AnimateDiff v1-5-3 + depth   ``dpt-hybrid``        ``ViT-B-32:laion2b_s34b_b79k``
                ControlNet v1.1, from the hub
``tiny``        the same architectures at toy size,  ``tiny``              ``tiny``
                seeded random weights, built in code
``sd15-random`` every component at its real size,    ``dpt-hybrid-random`` ``ViT-B-32`` (random weights)
                seeded random weights, built in code
=============== ==================================== ===================== ==============================

``sd15`` is every command's default. A stage with one model also takes its own model values (an open_clip
``NAME:TAG`` for build-index and search-clips, a depth model id or folder for extract-depth); the render
takes a TOML file to replace components (:mod:`storyreel.models.loading`).

This module imports neither torch nor diffusers: the storyboard checks scheduler names against it.
"""

from __future__ import annotations

from dataclasses import dataclass

from storyreel.errors import StoryreelError

SD15 = "sd15"
TINY = "tiny"
SD15_RANDOM = "sd15-random"

SD15_BASE_ID = "stable-diffusion-v1-5/stable-diffusion-v1-5"
MOTION_ADAPTER_ID = "guoyww/animatediff-motion-adapter-v1-5-3"
CONTROLNET_ID = "lllyasviel/control_v11f1p_sd15_depth"

SCHEDULER_NAMES = ("ddim", "euler", "dpmpp_2m")
DEFAULT_SCHEDULER = "ddim"


class UnknownPresetError(StoryreelError, ValueError):
    """A ``--models`` value that names no preset."""


@dataclass(frozen=True)
class ModelPreset:
    """What one preset name means for every stage.

    ``render`` says how the render's six components come: ``hub`` (the ids below, from the hub or its
    cache), ``tiny`` (toy size, seeded random weights) or ``random`` (real size, seeded random weights).
    ``architecture`` groups presets whose models have the same shapes: a character trained on one preset
    loads on every preset of its architecture.
    """

    name: str
    summary: str
    architecture: str
    render: str
    depth_model: str
    clip_model: str
    scheduler: str = DEFAULT_SCHEDULER
    base: str | None = None
    motion_adapter: str | None = None
    controlnet: str | None = None


PRESETS: dict[str, ModelPreset] = {preset.name: preset for preset in (
    ModelPreset(SD15, "SD1.5 + AnimateDiff + depth ControlNet from the hub, DPT-Hybrid depth, CLIP ViT-B-32",
                architecture="sd15", render="hub", depth_model="dpt-hybrid", clip_model="ViT-B-32:laion2b_s34b_b79k",
                base=SD15_BASE_ID, motion_adapter=MOTION_ADAPTER_ID, controlnet=CONTROLNET_ID),
    ModelPreset(TINY, "the same architectures at toy size with seeded random weights (tests, demo)",
                architecture="tiny", render="tiny", depth_model="tiny", clip_model="tiny"),
    ModelPreset(SD15_RANDOM, "every model at its real size with seeded random weights (benchmarks, no downloads)",
                architecture="sd15", render="random", depth_model="dpt-hybrid-random", clip_model="ViT-B-32"),
)}
PRESET_NAMES = tuple(PRESETS)
DEFAULT_PRESET = SD15


def get_preset(name: str) -> ModelPreset:
    """The preset called ``name``; :class:`UnknownPresetError` names the known ones."""
    try:
        return PRESETS[name]
    except KeyError:
        raise UnknownPresetError(f"unknown model preset {name!r}; use one of {', '.join(PRESET_NAMES)}") from None


def same_architecture(first: str, second: str) -> bool:
    """True when models of presets ``first`` and ``second`` have the same shapes (unknown names never match
    another name)."""
    if first == second:
        return True
    if first not in PRESETS or second not in PRESETS:
        return False
    return PRESETS[first].architecture == PRESETS[second].architecture
