"""The render's noise schedulers: built in code for every preset (they are not part of the checkpoints).

:func:`make_scheduler` starts from SD1.5's scheduler values (``scaled_linear`` betas 0.00085-0.012, 1000
training steps, ``steps_offset`` 1, ``clip_sample`` False, ``set_alpha_to_one`` False) with one change:
``beta_schedule="linear"``. AnimateDiff's motion modules were trained and are sampled with linear betas
over the same range (AnimateDiff's ``configs/inference/inference-v3.yaml`` and its training configs), and
diffusers' AnimateDiff documentation recommends ``linear`` because the motion adapters are sensitive to
the beta schedule. ``make_scheduler(name, SD15_SCHEDULER_CONFIG)`` gives SD1.5's own schedule instead.
Timestep spacing is each scheduler's diffusers default: for DDIM, ``leading`` with ``steps_offset`` 1
(981, 961, ..., 1 for 50 steps), the timesteps of the original AnimateDiff scripts and of
Make-Your-Video's DDIM sampler. The scheduler names are the registry's (:data:`SCHEDULER_NAMES`).

``lcm`` is diffusers' ``LCMScheduler`` on the same values, which is what AnimateLCM's model card builds
(``LCMScheduler.from_config(<SD1.5 scheduler config>, beta_schedule="linear")``: ``steps_offset`` 1,
``set_alpha_to_one`` False). :func:`preset_scheduler` adds a preset's own configuration overrides, such as
AnimateDiff-Lightning's ``timestep_spacing="trailing"`` (its 4 Euler steps are then 999, 749, 499, 249).
"""

from __future__ import annotations

import inspect

from storyreel.models.presets import (
    DEFAULT_SCHEDULER,
    SCHEDULER_NAMES,
    ModelPreset,
    UnknownSchedulerError,
    get_preset,
)

# stable-diffusion-v1-5 scheduler/scheduler_config.json without its PNDM-only key (skip_prk_steps).
SD15_SCHEDULER_CONFIG = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "steps_offset": 1,
    "clip_sample": False,
    "set_alpha_to_one": False,
    "trained_betas": None,
}
# What the render samples with: SD1.5's values with AnimateDiff's linear betas (see the module docstring).
RENDER_SCHEDULER_CONFIG = {**SD15_SCHEDULER_CONFIG, "beta_schedule": "linear"}


def check_scheduler_name(name: str) -> str:
    """``name`` when it is one of :data:`SCHEDULER_NAMES`; :class:`UnknownSchedulerError` names them
    otherwise (no diffusers import, so a bad name fails before anything is loaded)."""
    if name not in SCHEDULER_NAMES:
        raise UnknownSchedulerError(f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULER_NAMES)}")
    return name


def make_scheduler(name: str = DEFAULT_SCHEDULER, base_config: dict | None = None, **overrides):
    """A diffusers scheduler: ``ddim`` | ``euler`` | ``dpmpp_2m`` (DPM-Solver++ 2M) | ``lcm``.

    ``base_config`` defaults to :data:`RENDER_SCHEDULER_CONFIG` (SD1.5's values with AnimateDiff's linear
    betas); pass :data:`SD15_SCHEDULER_CONFIG` for SD1.5's scaled-linear schedule, or any scheduler's
    config. Keys a scheduler does not take (``clip_sample`` for DPM-Solver, say) are dropped; keyword
    ``overrides`` win over both. An unknown name raises :class:`UnknownSchedulerError` (a ``ValueError``).
    """
    check_scheduler_name(name)
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler, LCMScheduler

    classes = {"ddim": (DDIMScheduler, {}),
               "euler": (EulerDiscreteScheduler, {}),
               "dpmpp_2m": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2}),
               "lcm": (LCMScheduler, {})}
    cls, fixed = classes[name]
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    base = dict(RENDER_SCHEDULER_CONFIG if base_config is None else base_config)
    config = {key: value for key, value in {**base, **fixed, **overrides}.items() if key in accepted}
    return cls(**config)


def preset_scheduler(preset: str | ModelPreset, name: str | None = None, base_config: dict | None = None):
    """The scheduler a shot renders with on ``preset`` (a name or a :class:`ModelPreset`): ``name`` (the
    shot's ``scheduler``; None: the preset's own) with the preset's ``scheduler_config`` overrides.

    The overrides belong to the model (AnimateDiff-Lightning was distilled on trailing timesteps), so they
    apply to whichever scheduler is named, where it takes them. Unknown preset or scheduler names raise
    :class:`~storyreel.models.presets.UnknownPresetError` or :class:`UnknownSchedulerError` before diffusers
    is imported.
    """
    spec = preset if isinstance(preset, ModelPreset) else get_preset(preset)
    chosen = check_scheduler_name(spec.scheduler if name is None else name)
    return make_scheduler(chosen, base_config, **dict(spec.scheduler_config))
