"""Characters in a render: the real sampler reads row t of the TimeInv table at step t; several LoRAs at once."""

from __future__ import annotations

import pytest
import torch

from characters import CharacterSet, per_step_embeddings
from characters.character_file import Character
from characters.character_set import base_signature

FRAMES = 4
SIZE = 64


def random_character(components, name: str, token: str, seed: int, buckets: int = 1000, lora_scale: float = 0.05):
    """A character with distinct random table rows and a random LoRA on the UNet's spatial attention."""
    from characters.lora_targets import target_shapes

    generator = torch.Generator().manual_seed(seed)
    width = components.text_encoder.config.hidden_size
    lora = {}
    for module, (fan_in, fan_out) in target_shapes(components.unet).items():
        lora[f"unet.{module}.lora_A.weight"] = torch.randn(4, fan_in, generator=generator) * lora_scale
        lora[f"unet.{module}.lora_B.weight"] = torch.randn(fan_out, 4, generator=generator) * lora_scale
    table = torch.randn(buckets, width, generator=generator)
    return Character(name=name, token=token, class_word="rabbit", table=table, lora_state_dict=lora, lora_rank=4,
                     lora_alpha=4.0, base_signature=base_signature(components))


def condition():
    y = torch.linspace(0, 1, SIZE)[:, None].expand(SIZE, SIZE)
    return torch.stack([((y + 0.1 * t) % 1.0)[None].expand(3, -1, -1) for t in range(FRAMES)])


def test_a_render_at_timestep_t_reads_exactly_row_t(components):
    from render.sampler import StructureGuidedSampler

    prompt, negative = "a video of <hare> rabbit running, with <hare> again", "blurry"
    character = random_character(components, "hare", "<hare>", seed=0)
    sampler = StructureGuidedSampler(components)
    with CharacterSet(components) as characters:
        characters.add(character)
        token_id = characters["hare"].token_id
        embedding = components.text_encoder.get_input_embeddings()
        reads = []  # (token positions' embedding-layer output) per text-encoder call
        spy = embedding.register_forward_hook(
            lambda module, args, output: reads.append(output[args[0] == token_id].detach().clone()))
        unet_text = []
        unet_spy = components.unet.register_forward_pre_hook(
            lambda module, args, kwargs: unet_text.append(kwargs["encoder_hidden_states"].detach().clone()),
            with_kwargs=True)
        hook = per_step_embeddings(characters, sampler.encode_prompt, prompt, negative)
        steps_seen = []

        def instrumented(i, t):
            steps_seen.append((i, int(t), len(reads)))
            return hook(i, t)

        try:
            result = sampler(prompt, negative, conditioning=condition(), steps=4, guidance_scale=7.5, seed=0,
                             prompt_embeds_for_step=instrumented, output_type="latent")
        finally:
            spy.remove()
            unet_spy.remove()

    assert [i for i, _, _ in steps_seen] == [0, 1, 2, 3]
    assert [t for _, t, _ in steps_seen] == result.timesteps and len(set(result.timesteps)) == 4
    for (i, t, first), end in zip(steps_seen, [s[2] for s in steps_seen[1:]] + [len(reads)]):
        during = reads[first:end]
        assert len(during) == 1 and during[0].shape == (2, character.dim)  # the token twice in the prompt
        assert torch.equal(during[0], character.table[t].expand(2, -1)), f"step {i} (t={t}) did not read row {t}"
        # and that encoding is what the UNet was given as the conditional half of step i
        cond, uncond = hook(i, t)
        assert uncond is None  # the negative prompt has no token: the sampler keeps its own
        assert torch.equal(unet_text[i][FRAMES:], cond.expand(FRAMES, -1, -1))
    assert len(hook.cache) == 4
    # before the loop the sampler encoded the prompt outside any timestep: the time-averaged embedding
    torch.testing.assert_close(reads[0], character.time_average().expand(2, -1), rtol=0, atol=1e-6)


def test_buckets_share_encodings_across_steps(components):
    from render.sampler import StructureGuidedSampler

    character = random_character(components, "hare", "<hare>", seed=1, buckets=2)
    sampler = StructureGuidedSampler(components)
    calls = []
    with CharacterSet(components) as characters:
        characters.add(character)
        characters.observers.append(lambda token_id, rows: calls.append(rows.tolist()))
        hook = per_step_embeddings(characters, sampler.encode_prompt, "<hare> rabbit jumping", "<hare> blurry")
        result = sampler("<hare> rabbit jumping", "<hare> blurry", conditioning=condition(), steps=6, seed=0,
                         prompt_embeds_for_step=hook, output_type="latent")
    rows = [0 if t < 500 else 1 for t in result.timesteps]
    assert sorted(hook.cache) == sorted({((r,), (r,)) for r in rows}) and len(hook.cache) == 2
    assert calls == [[r] for r in dict.fromkeys(rows) for _ in range(2)]  # cond and uncond, once per row


def test_two_characters_in_a_shot_activate_both_adapters(components):
    from render.sampler import StructureGuidedSampler

    hare = random_character(components, "hare", "<hare>", seed=2)
    tortoise = random_character(components, "tortoise", "<tortoise>", seed=3)
    sampler = StructureGuidedSampler(components)
    base = sampler("a meadow", conditioning=condition(), steps=2, seed=0, output_type="latent").latents
    outputs = {}
    with CharacterSet(components) as characters:
        characters.add(hare)
        characters.add(tortoise)
        assert components.unet.active_adapters() == ["hare", "tortoise"]  # after add: every character at scale 1
        for scales in ({"hare": 1.0}, {"tortoise": 1.0}, {"hare": 1.0, "tortoise": 0.7}, {}):
            characters.activate(scales)
            assert characters.scales == scales
            outputs[tuple(scales)] = sampler("a meadow", conditioning=condition(), steps=2, seed=0,
                                             output_type="latent").latents
        characters.activate({"hare": 1.0, "tortoise": 0.7})
        assert sorted(components.unet.active_adapters()) == ["hare", "tortoise"]
        assert characters.characters_in("(<hare> rabbit)1.2 beside (<tortoise> turtle)") == ["hare", "tortoise"]
        with characters.at_timestep(981):
            text = sampler.encode_prompt("<tortoise> and <hare>")
        with pytest.raises(KeyError, match="no character named 'fox'"):
            characters.activate({"fox": 1.0})
    assert torch.equal(outputs[()], base)
    both, alone = outputs[("hare", "tortoise")], [outputs[("hare",)], outputs[("tortoise",)]]
    assert all(not torch.equal(both, o) and not torch.equal(o, base) for o in alone)
    assert text.shape == (1, 77, hare.dim)
    after = sampler("a meadow", conditioning=condition(), steps=2, seed=0, output_type="latent").latents
    assert torch.equal(after, base)


def test_compel_weighted_captions_carry_the_row_of_the_timestep(components):
    from render.prompt_weighting import WeightedPromptEncoder

    character = random_character(components, "hare", "<hare>", seed=4)
    with CharacterSet(components) as characters:
        characters.add(character)
        token_id = characters["hare"].token_id
        reads = []
        spy = components.text_encoder.get_input_embeddings().register_forward_hook(
            lambda module, args, output: reads.append(output[args[0] == token_id].detach().clone()))
        try:
            encoder = WeightedPromptEncoder(components.tokenizer, components.text_encoder)
            hook = per_step_embeddings(characters, encoder.encode, "(<hare> rabbit)1.3 sprinting across a meadow")
            early, _ = hook(0, torch.tensor(981))
            count = len(reads)
            late, _ = hook(1, torch.tensor(21))
            end = len(reads)
            pair = per_step_embeddings(characters, None, "(<hare> rabbit)1.3 sprinting " * 30, "<hare>, blurry",
                                       encode_pair=encoder.encode_pair)
            cond, uncond = pair(0, torch.tensor(981))
            assert cond.shape == uncond.shape and cond.shape[1] > 77  # a long prompt, both padded alike
            assert pair(1, torch.tensor(981))[0] is cond  # cached by row
        finally:
            spy.remove()
    token_reads = [r for r in reads[:count] if len(r)]
    assert token_reads and all(torch.equal(r, character.table[981].expand(len(r), -1)) for r in token_reads)
    token_reads = [r for r in reads[count:end] if len(r)]
    assert token_reads and all(torch.equal(r, character.table[21].expand(len(r), -1)) for r in token_reads)
    assert early.shape == late.shape and not torch.equal(early, late)
