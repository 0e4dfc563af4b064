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
"""

from __future__ import annotations

import inspect

from storyreel.models.presets import DEFAULT_SCHEDULER, SCHEDULER_NAMES

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


def make_scheduler(name: str = DEFAULT_SCHEDULER, base_config: dict | None = None, **overrides):
    """A diffusers scheduler: ``ddim`` | ``euler`` | ``dpmpp_2m`` (DPM-Solver++ 2M).

    ``base_config`` defaults to :data:`RENDER_SCHEDULER_CONFIG` (SD1.5's values with AnimateDiff's linear
    betas); pass :data:`SD15_SCHEDULER_CONFIG` for SD1.5's scaled-linear schedule, or any scheduler's
    config. Keys a scheduler does not take (``clip_sample`` for DPM-Solver, say) are dropped; keyword
    ``overrides`` win over both.
    """
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler

    classes = {"ddim": (DDIMScheduler, {}),
               "euler": (EulerDiscreteScheduler, {}),
               "dpmpp_2m": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2})}
    if name not in classes:
        raise ValueError(f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULER_NAMES)}")
    cls, fixed = classes[name]
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    base = dict(RENDER_SCHEDULER_CONFIG if base_config is None else base_config)
    config = {key: value for key, value in {**base, **fixed, **overrides}.items() if key in accepted}
    return cls(**config)

