"""Validation clips while a character trains: what the render would make of it so far.

A clip is sampled with diffusers' ``AnimateDiffControlNetPipeline`` on the components being trained (the
render's own sampler equals that pipeline step for step, see ``tests/test_sampler.py``; the characters
stage sits below the render and does not import it). The character's tokens read their TimeInv row of
each timestep, as in a render: the embeddings of step ``i + 1`` are handed to the pipeline through its
``callback_on_step_end`` at the end of step ``i``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

VALIDATION_GUIDANCE = 7.5


@torch.no_grad()
def render_validation_clip(components, character_set, prompt: str, negative_prompt: str, condition: torch.Tensor, *,
                           steps: int, seed: int, guidance_scale: float = VALIDATION_GUIDANCE,
                           autocast_dtype: torch.dtype | None = None) -> np.ndarray:
    """``frames x H x W x 3`` uint8 (as the render's sampler gives them): ``prompt`` rendered over ``condition``
    (``frames x 3 x H x W`` depth in [0, 1]) with every character token of ``character_set`` at its row for each
    step's timestep."""
    from diffusers import AnimateDiffControlNetPipeline

    from characters.character_set import per_step_embeddings

    pipe = AnimateDiffControlNetPipeline(**components.pipeline_kwargs())
    pipe.set_progress_bar_config(disable=True)
    device = components.device

    def encode(text: str) -> torch.Tensor:
        return pipe.encode_prompt(text, device, 1, False)[0]

    embeds_for_step = per_step_embeddings(character_set, encode, prompt, negative_prompt)
    plain_negative = encode(negative_prompt)
    pipe.scheduler.set_timesteps(steps, device=device)
    timesteps = pipe.scheduler.timesteps
    frames = condition.shape[0]
    cfg = guidance_scale > 1

    def embeds(index: int) -> tuple[torch.Tensor, torch.Tensor]:
        cond, uncond = embeds_for_step(index, timesteps[index])
        return cond, plain_negative if uncond is None else uncond

    def next_step_embeds(pipeline, index: int, timestep, tensors: dict) -> dict:
        if index + 1 >= len(timesteps):
            return {}
        cond, uncond = embeds(index + 1)
        batch = torch.cat([uncond, cond]) if cfg else cond
        return {"prompt_embeds": batch.repeat_interleave(frames, dim=0)}

    cond, uncond = embeds(0)
    autocast = (torch.autocast(device.type, dtype=autocast_dtype)
                if autocast_dtype is not None and device.type == "cuda" else contextlib.nullcontext())
    with autocast:
        video = pipe(prompt_embeds=cond, negative_prompt_embeds=uncond, conditioning_frames=list(condition),
                     num_frames=frames, height=condition.shape[-2], width=condition.shape[-1],
                     num_inference_steps=steps, guidance_scale=guidance_scale,
                     generator=torch.Generator(device="cpu").manual_seed(seed), output_type="pt",
                     callback_on_step_end=next_step_embeds, callback_on_step_end_tensor_inputs=["prompt_embeds"])
    frames = video.frames[0].permute(0, 2, 3, 1).float().cpu().numpy()  # T x H x W x 3 in [0, 1]
    return (frames * 255).round().astype(np.uint8)


def make_validator(components, folder: Path, prompt: str, negative_prompt: str, condition: torch.Tensor, steps: int,
                   seed: int, fps: float, echo: Callable[[str], None]):
    """A ``validate(trainer, step)`` callback for :func:`characters.training.train_character`: renders
    ``prompt`` with the character as trained so far into ``folder/step-NNNNNNN.gif``, with its untrained table
    rows derived as the character file will have them (:meth:`CharacterTrainer.untrained_rows_derived`)."""
    from storyreel.video_files import write_gif

    def validate(trainer, step: int) -> None:
        with trainer.untrained_rows_derived():
            frames = render_validation_clip(components, trainer.character_set, prompt, negative_prompt, condition,
                                            steps=steps, seed=seed, autocast_dtype=trainer.autocast_dtype)
        path = write_gif(frames, Path(folder) / f"step-{step:07d}.gif", fps)
        echo(f"validation clip at step {step}: {path}")

    return validate
