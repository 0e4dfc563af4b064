"""Prompt weighting through compel on the tiny text encoder: direction, long prompts, equivalence."""

from __future__ import annotations

import pytest
import torch

from render.prompt_weighting import WeightedPromptEncoder
from render.sampler import StructureGuidedSampler


@pytest.fixture(scope="module")
def encoder(components):
    return WeightedPromptEncoder(components.tokenizer, components.text_encoder)


def token_position(components, prompt: str, word: str) -> int:
    ids = components.tokenizer(prompt).input_ids
    return ids.index(components.tokenizer.convert_tokens_to_ids(word + "</w>"))


def test_unweighted_prompt_is_the_plain_clip_encoding(components, encoder):
    plain = StructureGuidedSampler(components).encode_prompt("a rabbit in a sunny meadow")
    assert torch.equal(encoder.encode("a rabbit in a sunny meadow"), plain)


def test_upweighting_scales_the_token_away_from_the_empty_prompt(components, encoder):
    plain = encoder.encode("a rabbit in a meadow")
    empty = encoder.encode("")
    weighted = encoder.encode("a (rabbit)1.5 in a meadow")
    pos = token_position(components, "a rabbit in a meadow", "rabbit")
    expected = empty[0, pos] + 1.5 * (plain[0, pos] - empty[0, pos])
    assert torch.allclose(weighted[0, pos], expected, atol=1e-6)
    others = [i for i in range(plain.shape[1]) if i != pos]
    assert torch.equal(weighted[0, others], plain[0, others])  # only the weighted token moves
    direction = torch.nn.functional.cosine_similarity(weighted[0, pos] - plain[0, pos],
                                                      plain[0, pos] - empty[0, pos], dim=0)
    assert direction > 0.999
    assert torch.allclose(encoder.encode("a rabbit++ in a meadow"), encoder.encode("a (rabbit)1.21 in a meadow"))


def test_downweighting_moves_toward_the_prompt_without_the_word(encoder):
    plain = encoder.encode("a rabbit in a meadow")
    without = encoder.encode("a in a meadow")
    down = encoder.encode("a (rabbit)0.5 in a meadow")
    assert (down - without).norm() < (plain - without).norm()
    assert (down - plain).norm() > 0


def test_a_150_token_prompt_is_encoded_whole_and_renders(components, encoder):
    prompt = ", ".join(["a small brown rabbit"] * 37)  # 4 tokens and a comma each: 184 tokens
    assert len(components.tokenizer(prompt).input_ids) > 150
    cond, uncond = encoder.encode_pair(prompt, "blurry")
    assert cond.shape == uncond.shape and cond.shape[1] == 3 * 77  # three chunks, nothing truncated
    first_chunk = encoder.encode(", ".join(["a small brown rabbit"] * 10))
    assert not torch.equal(cond[:, 77:154], first_chunk[:, :77])  # the later chunks carry the rest
    condition = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    short = StructureGuidedSampler(components)(prompt, negative_prompt="blurry", conditioning=condition, steps=2,
                                               seed=0, output_type="latent").latents  # plain: truncated at 77
    whole = StructureGuidedSampler(components)(prompt_embeds=cond, negative_prompt_embeds=uncond,
                                               conditioning=condition, steps=2, seed=0, output_type="latent").latents
    assert torch.isfinite(whole).all() and not torch.allclose(short, whole)
