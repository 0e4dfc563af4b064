"""The one registry of model presets: what each ``--models`` name means for every stage.

Every command that takes ``--models`` accepts these names with the same meaning:

================== ==================================== ===================== ==============================
preset             render components                    depth (structure)     CLIP (retrieval)
================== ==================================== ===================== ==============================
``sd15``           SD1.5 + AnimateDiff v1-5-3 + depth   ``dpt-hybrid``        ``ViT-B-32:laion2b_s34b_b79k``
                   ControlNet v1.1, from the hub
``tiny``           the same architectures at toy size,  ``tiny``              ``tiny``
                   seeded random weights, built in code
``toy``            the same architectures at toy size,  ``toy``               ``toy``
                   trained here on the toy world
                   (``storyreel/models/toy_weights``)
``sd15-random``    every component at its real size,    ``dpt-hybrid-random`` ``ViT-B-32`` (random weights)
                   seeded random weights, built in code
``sd15-lightning`` ``sd15`` with AnimateDiff-Lightning  ``dpt-hybrid``        ``ViT-B-32:laion2b_s34b_b79k``
                   (4-step motion adapter, one file)
``sd15-lcm``       ``sd15`` with AnimateLCM (motion     ``dpt-hybrid``        ``ViT-B-32:laion2b_s34b_b79k``
                   adapter + its LoRA on the UNet)
================== ==================================== ===================== ==============================

Each preset also gives the render's defaults, used by every shot whose storyboard does not set them
(:meth:`ModelPreset.shot_defaults`, :meth:`storyboard.Storyboard.all_shot_settings`):

================== ========================================= ===== ========
preset             scheduler                                 steps guidance
================== ========================================= ===== ========
``sd15``, ``tiny``, ``ddim``                                    25    7.5
``sd15-random``
``toy``            ``ddim``                                  20    4.0
``sd15-lightning`` ``euler``, ``timestep_spacing="trailing"`` 4     1.0 (no classifier-free guidance)
``sd15-lcm``       ``lcm``                                   6     1.5
================== ========================================= ===== ========

All use linear betas (:mod:`storyreel.models.schedulers`). The few-step values are the model cards':
AnimateDiff-Lightning's diffusers example (``EulerDiscreteScheduler`` with ``timestep_spacing="trailing"``,
``beta_schedule="linear"``, ``guidance_scale=1.0``, as many steps as the checkpoint was distilled for) and
AnimateLCM's (``LCMScheduler`` with ``beta_schedule="linear"``, its LoRA at 0.8, 6 steps; guidance 1.5 as in
diffusers' AnimateDiff guide, where the model card's example uses 2.0). A storyboard's own ``steps``,
``guidance`` or ``scheduler`` still wins.

A weights file inside a hub repository is written ``org/name/file.safetensors`` (:func:`parse_hub_file`
splits it; a plain ``org/name`` is a whole diffusers-format repository). ``sd15`` is every command's
default. A stage with one model also takes its own model values (an open_clip
``NAME:TAG`` for build-index and search-clips, a depth model id or folder for extract-depth); the render
takes a TOML file to replace components (:mod:`storyreel.models.loading`).

This module imports neither torch nor diffusers: the storyboard checks scheduler names against it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from storyreel.errors import StoryreelError
from storyreel.weights_policy import PICKLE_REFUSAL, is_pickle_checkpoint

SD15 = "sd15"
TINY = "tiny"
TOY = "toy"
SD15_RANDOM = "sd15-random"
SD15_LIGHTNING = "sd15-lightning"
SD15_LCM = "sd15-lcm"

SD15_BASE_ID = "stable-diffusion-v1-5/stable-diffusion-v1-5"
MOTION_ADAPTER_ID = "guoyww/animatediff-motion-adapter-v1-5-3"
CONTROLNET_ID = "lllyasviel/control_v11f1p_sd15_depth"
# AnimateDiff-Lightning: one safetensors file per step count, loaded into a plain MotionAdapter().
LIGHTNING_REPO_ID = "ByteDance/AnimateDiff-Lightning"
LIGHTNING_STEPS = 4
LIGHTNING_MOTION_ADAPTER = f"{LIGHTNING_REPO_ID}/animatediff_lightning_{LIGHTNING_STEPS}step_diffusers.safetensors"
# AnimateLCM: a diffusers-format motion adapter repository, and in it the LoRA for the SD1.5 UNet.
ANIMATELCM_REPO_ID = "wangfuyun/AnimateLCM"
ANIMATELCM_LORA = f"{ANIMATELCM_REPO_ID}/AnimateLCM_sd15_t2v_lora.safetensors"
ANIMATELCM_LORA_SCALE = 0.8  # the model card's set_adapters(["lcm-lora"], [0.8])

# The models some stories add (render-story --sparsectrl, --ip-adapter, --i2vgen; fetch-models --with).
SPARSECTRL_RGB_ID = "guoyww/animatediff-sparsectrl-rgb"  # keyframe shots and generated transitions
I2VGEN_XL_ID = "ali-vilab/i2vgen-xl"  # render-story --animator i2vgen-xl
IP_ADAPTER_ID = "h94/IP-Adapter"  # SD1.5 adapters in models/, their CLIP image encoder in models/image_encoder/
IP_ADAPTER_FOLDER = "models"
IP_ADAPTER_FILES = {"base": "ip-adapter_sd15.safetensors", "plus": "ip-adapter-plus_sd15.safetensors",
                    "plus-face": "ip-adapter-plus-face_sd15.safetensors"}
I2VGEN_PARTS = ("unet", "vae", "text_encoder", "tokenizer", "image_encoder", "feature_extractor", "scheduler")

SCHEDULER_NAMES = ("ddim", "euler", "dpmpp_2m", "lcm")
DEFAULT_SCHEDULER = "ddim"
DEFAULT_STEPS = 25
DEFAULT_GUIDANCE = 7.5
WEIGHTS_SUFFIX = ".safetensors"

# The named depth models of the structure stage that live on the hub: name -> (repository, revision). Intel's
# dpt-hybrid-midas holds only a pickle checkpoint on its main branch; refs/pr/5 is the safetensors conversion.
DEPTH_MODEL_REPOS: dict[str, tuple[str, str | None]] = {
    "dpt-hybrid": ("Intel/dpt-hybrid-midas", "refs/pr/5"),
    "dpt-large": ("Intel/dpt-large", None),
    "depth-anything-v2": ("depth-anything/Depth-Anything-V2-Small-hf", None),
}


class UnknownPresetError(StoryreelError, ValueError):
    """A ``--models`` value that names no preset."""


class UnknownSchedulerError(StoryreelError, ValueError):
    """A scheduler name that is not one of :data:`SCHEDULER_NAMES`."""


class HubFileError(StoryreelError, ValueError):
    """A hub value that is neither a repository id (``org/name``) nor a safetensors file in one."""


@dataclass(frozen=True)
class HubFile:
    """One weights file of a hub repository: ``repo_id`` ``org/name``, ``filename`` inside it."""

    repo_id: str
    filename: str

    def __str__(self) -> str:
        return f"{self.repo_id}/{self.filename}"


def parse_hub_file(value: str) -> HubFile | None:
    """``org/name/dir/file.safetensors`` → :class:`HubFile`; a repository id ``org/name`` → None.

    :class:`HubFileError` for anything else (a pickle checkpoint, a path inside a repository that is not a
    ``.safetensors`` file, an empty part): only safetensors are loaded.
    """
    parts = value.split("/")
    if any(not part.strip() for part in parts) or len(parts) < 2:
        raise HubFileError(f"{value!r} is neither a hub repository id (org/name) nor a file in one "
                           f"(org/name/file{WEIGHTS_SUFFIX})")
    if len(parts) == 2:
        return None
    if not parts[-1].lower().endswith(WEIGHTS_SUFFIX):
        reason = PICKLE_REFUSAL if is_pickle_checkpoint(parts[-1]) else "only safetensors are loaded"
        raise HubFileError(f"{value!r}: a weights file in a hub repository must be a {WEIGHTS_SUFFIX} file "
                           f"({reason})")
    return HubFile("/".join(parts[:2]), "/".join(parts[2:]))


@dataclass(frozen=True)
class ModelPreset:
    """What one preset name means for every stage.

    ``render`` says how the render's six components come: ``hub`` (the ids below, from the hub or its
    cache), ``tiny`` (toy size, seeded random weights), ``random`` (real size, seeded random weights) or
    ``toy`` (toy size, trained on the toy world: :mod:`storyreel.models.toy_weights`, sha256-checked).
    ``architecture`` groups presets whose models have the same shapes: a character trained on one preset
    loads on every preset of its architecture.

    Hub components: ``base`` (a diffusers SD1.5 repository), ``controlnet`` (a repository) and
    ``motion_adapter``, either a repository or one safetensors file in one (``org/name/file.safetensors``,
    loaded into a plain ``MotionAdapter()``: :attr:`motion_adapter_file`). ``lora`` is a LoRA file for the
    UNet (``org/name/file.safetensors``: :attr:`lora_file`), applied at ``lora_scale``.

    Render defaults, for every shot whose storyboard does not set them (:meth:`shot_defaults`): the
    ``scheduler`` name, ``scheduler_config`` (overrides of its configuration, such as trailing timestep
    spacing: they belong to the model, so they apply to whichever scheduler a storyboard picks), ``steps``
    and ``guidance``.
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
    lora: str | None = None
    lora_scale: float = 1.0
    scheduler_config: Mapping[str, object] = field(default_factory=dict, hash=False)
    steps: int = DEFAULT_STEPS
    guidance: float = DEFAULT_GUIDANCE

    def __post_init__(self):
        if self.scheduler not in SCHEDULER_NAMES:
            raise UnknownSchedulerError(f"preset {self.name!r}: unknown scheduler {self.scheduler!r}; "
                                        f"choose one of {', '.join(SCHEDULER_NAMES)}")
        if self.lora is not None and parse_hub_file(self.lora) is None:
            raise HubFileError(f"preset {self.name!r}: lora {self.lora!r} must be a file (org/name/file"
                               f"{WEIGHTS_SUFFIX})")
        for value in (self.base, self.motion_adapter, self.controlnet):
            if value is not None:
                parse_hub_file(value)  # a repository or a safetensors file
        object.__setattr__(self, "scheduler_config", MappingProxyType(dict(self.scheduler_config)))

    @property
    def motion_adapter_file(self) -> HubFile | None:
        """The motion adapter's single weights file, or None when ``motion_adapter`` is a repository."""
        return parse_hub_file(self.motion_adapter) if self.motion_adapter is not None else None

    @property
    def lora_file(self) -> HubFile | None:
        """The UNet LoRA's file, or None when the preset has none."""
        return parse_hub_file(self.lora) if self.lora is not None else None

    def shot_defaults(self) -> dict[str, object]:
        """``{"steps", "guidance", "scheduler"}``: what a shot renders with unless its storyboard says
        otherwise (``Storyboard.all_shot_settings(model_defaults=...)``)."""
        return {"steps": self.steps, "guidance": self.guidance, "scheduler": self.scheduler}


PRESETS: dict[str, ModelPreset] = {preset.name: preset for preset in (
    ModelPreset(SD15, "SD1.5 + AnimateDiff + depth ControlNet from the hub, DPT-Hybrid depth, CLIP ViT-B-32",
                architecture="sd15", render="hub", depth_model="dpt-hybrid", clip_model="ViT-B-32:laion2b_s34b_b79k",
                base=SD15_BASE_ID, motion_adapter=MOTION_ADAPTER_ID, controlnet=CONTROLNET_ID),
    ModelPreset(TINY, "the same architectures at toy size with seeded random weights (tests, demo)",
                architecture="tiny", render="tiny", depth_model="tiny", clip_model="tiny"),
    ModelPreset(SD15_RANDOM, "every model at its real size with seeded random weights (benchmarks, no downloads)",
                architecture="sd15", render="random", depth_model="dpt-hybrid-random", clip_model="ViT-B-32"),
    ModelPreset(SD15_LIGHTNING, "sd15 with the AnimateDiff-Lightning 4-step motion adapter: Euler (trailing), "
                                "4 steps, no classifier-free guidance",
                architecture="sd15", render="hub", depth_model="dpt-hybrid", clip_model="ViT-B-32:laion2b_s34b_b79k",
                base=SD15_BASE_ID, motion_adapter=LIGHTNING_MOTION_ADAPTER, controlnet=CONTROLNET_ID,
                scheduler="euler", scheduler_config={"timestep_spacing": "trailing"}, steps=LIGHTNING_STEPS,
                guidance=1.0),
    ModelPreset(SD15_LCM, "sd15 with the AnimateLCM motion adapter and its LoRA: LCM scheduler, 6 steps, "
                          "guidance 1.5",
                architecture="sd15", render="hub", depth_model="dpt-hybrid", clip_model="ViT-B-32:laion2b_s34b_b79k",
                base=SD15_BASE_ID, motion_adapter=ANIMATELCM_REPO_ID, controlnet=CONTROLNET_ID,
                lora=ANIMATELCM_LORA, lora_scale=ANIMATELCM_LORA_SCALE, scheduler="lcm", steps=6, guidance=1.5),
    ModelPreset(TOY, "the same architectures at toy size, trained here on the procedural toy world (make toy-world): "
                     "the demo and the functional tests",
                architecture="toy", render="toy", depth_model="toy", clip_model="toy", steps=20, guidance=4.0),
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
