"""Validation clips of character training: diffusers' pipeline with the character's row of each step, equal
to what the render's sampler makes of the same character."""

from __future__ import annotations

import contextlib

import numpy as np
from test_characters_render import FRAMES, SIZE, condition, random_character

from characters import CharacterSet, per_step_embeddings


def test_a_validation_clip_equals_the_render_sampler_with_per_step_rows(components, tmp_path):
    from characters.validation import make_validator, render_validation_clip
    from render.sampler import StructureGuidedSampler

    prompt, negative = "a video of <hare> rabbit running", "blurry"
    with CharacterSet(components) as characters:
        characters.add(random_character(components, "hare", "<hare>", seed=0))
        clip = render_validation_clip(components, characters, prompt, negative, condition(), steps=4, seed=3)
        sampler = StructureGuidedSampler(components)
        hook = per_step_embeddings(characters, sampler.encode_prompt, prompt, negative)
        kwargs = {"conditioning": condition(), "steps": 4, "guidance_scale": 7.5, "seed": 3, "output_type": "np"}
        rendered = np.asarray(sampler(prompt, negative, prompt_embeds_for_step=hook, **kwargs).frames)
        averaged = np.asarray(sampler(prompt, negative, **kwargs).frames)  # the token's time average throughout

        lines = []
        trainer = type("Trainer", (), {"character_set": characters, "autocast_dtype": None,
                                       "untrained_rows_derived": lambda self: contextlib.nullcontext()})()
        make_validator(components, tmp_path, prompt, negative, condition(), 4, 3, 8.0, lines.append)(trainer, 7)

    assert clip.shape == (FRAMES, SIZE, SIZE, 3)
    assert clip.dtype == np.uint8 and rendered.dtype == np.uint8
    assert np.abs(clip.astype(int) - rendered).max() <= 1  # rounding of floats equal to 1e-4
    assert np.abs(clip.astype(int) - averaged).max() > 2  # per-step rows, not one embedding, reached the pipeline
    assert (tmp_path / "step-0000007.gif").is_file() and lines == [
        f"validation clip at step 7: {tmp_path / 'step-0000007.gif'}"]
