"""Consistent self-attention (render.consistent_attention): which layers it replaces, the tokens it adds, the bank
it records, and that it changes nothing at rate 0 (tiny models)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from render.consistent_attention import (
    ConsistencyBudgetError,
    ConsistencyController,
    ConsistencySettings,
    TokenBank,
    attend_with_extra_tokens,
    bank_bytes,
    consistency_layers,
    consistent_self_attention,
    evenly_spaced,
    frames_within_budget,
    layer_tokens,
)
from render.sampler import StructureGuidedSampler
from structure.conditioning import controlnet_condition

SIZE, FRAMES, STEPS = 32, 6, 4


@pytest.fixture(scope="module", autouse=True)
def quiet_threads(one_thread):
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def cond():
    y, x = np.mgrid[0:SIZE, 0:SIZE] / (SIZE - 1)
    return controlnet_condition(np.stack([0.6 * ((x + 0.05 * t) % 1.0) + 0.2 * y for t in range(FRAMES)])
                                .astype(np.float32))


def sample(components, cond, controller=None, prompt="a knight riding a horse", seed=3, guidance=7.5):
    sampler = StructureGuidedSampler(components)
    args = dict(conditioning=cond, steps=STEPS, guidance_scale=guidance, seed=seed, output_type="latent")
    if controller is None:
        return sampler(prompt, "blurry", **args).latents
    with consistent_self_attention(components.unet, controller):
        return sampler(prompt, "blurry", **args).latents


def controller(settings=None, record=True, banks=(), halves=2, seed=3):
    settings = settings or ConsistencySettings(rate=0.5, until=0.6, bank_frames=2)
    recording = TokenBank("ref", STEPS, halves, [], settings.rate) if record else None
    return ConsistencyController(settings, STEPS, halves, seed, record=recording, banks=banks)


def test_only_the_up_blocks_spatial_self_attention_is_replaced(components):
    layers = consistency_layers(components.unet)
    assert layers and all(name.startswith("up_blocks.") and name.endswith(".attn1") for name in layers)
    assert not any("motion_modules" in name for name in layers)
    before = dict(components.unet.attn_processors)
    with consistent_self_attention(components.unet, controller()):
        during = components.unet.attn_processors
        changed = {name for name in before if during[name] is not before[name]}
        assert changed == {f"{name}.processor" for name in layers}
    after = components.unet.attn_processors
    assert all(after[name] is before[name] for name in before)  # every processor put back


def test_rate_zero_and_no_bank_are_bit_identical_to_the_plain_render(components, cond):
    plain = sample(components, cond)
    assert torch.equal(sample(components, cond, controller(ConsistencySettings(rate=0.0))), plain)
    assert torch.equal(sample(components, cond, controller(record=False)), plain)  # nothing to attend to
    assert torch.equal(sample(components, cond, controller(ConsistencySettings(until=0.0))), plain)  # no step
    assert not torch.equal(sample(components, cond, controller()), plain)  # the mechanism does something


def test_the_bank_holds_the_configured_steps_frames_and_tokens(components, cond):
    settings = ConsistencySettings(rate=0.5, until=0.6, bank_frames=3)
    control = controller(settings)
    sample(components, cond, control)
    bank = control.recording
    layers = consistency_layers(components.unet)
    active = [i for i in range(STEPS) if i / STEPS < 0.6]
    assert active == [0, 1, 2]
    assert set(bank.tokens) == {(step, layer) for step in active for layer in layers}
    assert bank.frames == evenly_spaced(FRAMES, 3) == [0, 2, 5]
    for (_, layer), tokens in bank.tokens.items():
        own, channels = layer_tokens(components.unet, layer, SIZE, SIZE)
        assert tokens.shape == (2, 3 * round(0.5 * own), channels)
    # the size stated before the render is the size recorded (float32 here)
    assert bank.nbytes == bank_bytes(components.unet, SIZE, SIZE, settings, STEPS, 2, element_size=4)


def test_the_processor_attends_to_the_expected_number_of_extra_tokens(components, cond):
    """Count them: a reference render adds bank_frames * round(rate * N) tokens per layer; a shot attending to two
    banks adds both."""
    for rate in (0.25, 0.5, 1.0):
        control = controller(ConsistencySettings(rate=rate, bank_frames=2))
        seen = []
        handles = [module.register_forward_hook(lambda m, args, out, name=name, seen=seen: seen.append(name))
                   for name, module in consistency_layers(components.unet).items()]
        try:
            sample(components, cond, control)
        finally:
            for handle in handles:
                handle.remove()
        for layer, (own, extra) in control.key_tokens.items():
            assert (own, extra) == (layer_tokens(components.unet, layer, SIZE, SIZE)[0], 2 * round(rate * own))
        assert set(control.key_tokens) == set(consistency_layers(components.unet)) == set(seen)
    first, second = controller(), controller(ConsistencySettings(rate=0.25, bank_frames=1), seed=9)
    sample(components, cond, first)
    sample(components, cond, second)
    both = controller(record=False, banks=(first.recording, second.recording))
    sample(components, cond, both)
    for own, extra in both.key_tokens.values():
        assert extra == 2 * round(0.5 * own) + round(0.25 * own)


def test_extra_token_attention_against_an_independent_computation(components):
    torch.manual_seed(1)
    name, attn = next(iter(consistency_layers(components.unet).items()))
    channels = attn.to_q.in_features
    hidden, extra = torch.randn(3, 10, channels), torch.randn(3, 4, channels)
    got = attend_with_extra_tokens(attn, hidden, extra)
    # softmax(q k^T / sqrt(d)) v per head, keys and values from [own tokens; extra tokens], then the output layer
    context = torch.cat([hidden, extra], dim=1)
    q, k, v = (attn.to_q(hidden).detach().numpy(), attn.to_k(context).detach().numpy(),
               attn.to_v(context).detach().numpy())
    d = q.shape[-1] // attn.heads
    heads = []
    for h in range(attn.heads):
        qh, kh, vh = (x[..., h * d:(h + 1) * d].astype(np.float64) for x in (q, k, v))
        scores = qh @ kh.transpose(0, 2, 1) / math.sqrt(d)
        weights = np.exp(scores - scores.max(-1, keepdims=True))
        heads.append((weights / weights.sum(-1, keepdims=True)) @ vh)
    expected = attn.to_out[0](torch.from_numpy(np.concatenate(heads, -1)).float()).detach()
    assert torch.allclose(got.detach(), expected, atol=1e-5)


def test_motion_modules_and_cross_attention_are_untouched(components):
    """With CSA installed, a motion module's attention and a cross-attention give what they give without it."""
    unet = components.unet
    motion = next(m for n, m in unet.named_modules() if "motion_modules" in n and n.endswith("attn1"))
    cross = next(m for n, m in unet.named_modules() if n.startswith("up_blocks") and n.endswith("attn2")
                 and "motion_modules" not in n)
    torch.manual_seed(2)
    x_motion = torch.randn(4, 6, motion.to_q.in_features)
    x_cross, text = torch.randn(12, 16, cross.to_q.in_features), torch.randn(12, 77, cross.to_k.in_features)
    control = controller()
    control.step = 0
    with torch.no_grad():
        before = motion(x_motion), cross(x_cross, encoder_hidden_states=text)
        with consistent_self_attention(unet, control):
            control.step = 0
            during = motion(x_motion), cross(x_cross, encoder_hidden_states=text)
    assert torch.equal(before[0], during[0]) and torch.equal(before[1], during[1])
    assert not control.key_tokens  # neither reached the CSA processors


def test_a_bank_round_trips_through_its_file_and_steers_like_the_live_one(components, cond, tmp_path):
    reference = controller()
    sample(components, cond, reference)
    path = tmp_path / "bank.safetensors"
    reference.recording.save(path)
    loaded = TokenBank.load(path)
    assert loaded.frames == reference.recording.frames and set(loaded.tokens) == set(reference.recording.tokens)
    assert all(torch.equal(loaded.tokens[k], reference.recording.tokens[k]) for k in loaded.tokens)
    live = sample(components, cond, controller(record=False, banks=(reference.recording,)), prompt="a rabbit", seed=5)
    from_file = sample(components, cond, controller(record=False, banks=(loaded,)), prompt="a rabbit", seed=5)
    plain = sample(components, cond, prompt="a rabbit", seed=5)
    assert torch.equal(live, from_file) and not torch.equal(live, plain)


def test_a_bank_serves_a_render_without_guidance_and_other_step_counts(components, cond):
    reference = controller()
    sample(components, cond, reference)
    control = ConsistencyController(ConsistencySettings(), 8, 1, 0, banks=(reference.recording,))
    latents = StructureGuidedSampler(components)("a rabbit", conditioning=cond, steps=8, guidance_scale=1.0, seed=1,
                                                 output_type="latent").latents
    with consistent_self_attention(components.unet, control):
        steered = StructureGuidedSampler(components)("a rabbit", conditioning=cond, steps=8, guidance_scale=1.0,
                                                     seed=1, output_type="latent").latents
    assert control.key_tokens and not torch.equal(latents, steered)
    assert reference.recording.entry(5, 8, next(iter(consistency_layers(components.unet)))) is not None  # 5*4//8=2


def test_the_budget_keeps_fewer_frames_or_refuses(components):
    from storyreel.models.loading import load_render_components

    unet = load_render_components("sd15-random", device="meta", dtype=torch.float16).unet
    settings = ConsistencySettings(rate=0.5, until=0.6, bank_frames=4, budget_mb=1024)
    one = bank_bytes(unet, 512, 512, settings, 25, 2, frames=1)
    assert one == 15 * 2 * 2 * (3 * 128 * 1280 + 3 * 512 * 640 + 3 * 2048 * 320)  # 15 active steps, fp16, CFG
    assert bank_bytes(unet, 512, 512, settings, 25, 2) == 4 * one
    assert frames_within_budget(unet, 512, 512, settings, 25, 2) == 4
    tight = ConsistencySettings(rate=0.5, until=0.6, bank_frames=4, budget_mb=500)
    assert frames_within_budget(unet, 512, 512, tight, 25, 2) == 2
    with pytest.raises(ConsistencyBudgetError, match="budget_mb 100"):
        frames_within_budget(unet, 512, 512, ConsistencySettings(budget_mb=100), 25, 2)


def test_a_long_shot_records_from_its_first_window_and_every_window_attends(components):
    """20 frames in windows of 8 (stride 4): the bank's frames come from the first window, and each step's UNet
    calls (one per window) all attend to it."""
    frames = 20
    y, x = np.mgrid[0:SIZE, 0:SIZE] / (SIZE - 1)
    long_cond = controlnet_condition(np.stack([0.6 * ((x + 0.02 * t) % 1.0) + 0.2 * y for t in range(frames)])
                                     .astype(np.float32))
    control = controller(ConsistencySettings(rate=0.5, until=1.0, bank_frames=2))
    calls = []
    handle = next(iter(consistency_layers(components.unet).values())).register_forward_hook(
        lambda module, args, out: calls.append(control.step))
    try:
        with consistent_self_attention(components.unet, control):
            result = StructureGuidedSampler(components)("a rabbit", "blurry", conditioning=long_cond, steps=STEPS,
                                                        seed=2, output_type="latent", context_window=8,
                                                        context_stride=4)
    finally:
        handle.remove()
    windows = len(result.windows)
    assert windows > 1 and calls == [step for step in range(STEPS) for _ in range(windows)]
    assert control.recording.frames == [0, 7]  # evenly spaced over the first window's 8 frames
    assert {step for step, _ in control.recording.tokens} == set(range(STEPS))


def test_the_bank_is_kept_in_the_dtype_asked_for_and_matches_its_stated_size(components, cond):
    """Under fp16 autocast on CUDA the hidden states reaching attn1 are float32 (LayerNorm); the bank is stored in
    the UNet's dtype, so its size is the one stated before the render (measured on an H200: 787.5 MiB recorded
    against 393.75 stated before this)."""
    settings = ConsistencySettings(rate=0.5, until=0.6, bank_frames=2)
    control = ConsistencyController(settings, STEPS, 2, 0, record=TokenBank("ref", STEPS, 2, [], 0.5),
                                    bank_dtype=torch.float16)
    sample(components, cond, control)
    assert {t.dtype for t in control.recording.tokens.values()} == {torch.float16}
    assert control.recording.nbytes == bank_bytes(components.unet, SIZE, SIZE, settings, STEPS, 2, element_size=2)


@pytest.mark.parametrize("preset", ["tiny", "toy"])
def test_the_stated_token_counts_and_bank_size_are_what_the_layers_see(preset):
    """Layer by layer, the token count stated before a render (from the VAE factor and the UNet's down and up
    samplers) is the one the layer sees, on a non-square frame; and so the bank is the size stated."""
    from storyreel.models.loading import load_render_components

    components = load_render_components(preset, device="cpu")
    height, width = 64, 48
    settings = ConsistencySettings(rate=0.5, until=1.0, bank_frames=2)
    control = ConsistencyController(settings, 2, 2, 0, record=TokenBank("ref", 2, 2, [], 0.5))
    y, x = np.mgrid[0:height, 0:width] / 63
    depth = controlnet_condition(np.stack([(x + 0.1 * t + y) % 1.0 for t in range(4)]).astype(np.float32))
    with consistent_self_attention(components.unet, control):
        StructureGuidedSampler(components)("a hare", "", conditioning=depth, steps=2, seed=0, output_type="latent")
    factor = components.vae_scale_factor
    for layer, (own, _) in control.key_tokens.items():
        assert own == layer_tokens(components.unet, layer, height, width, factor)[0]
    assert control.recording.nbytes == bank_bytes(components.unet, height, width, settings, 2, 2, element_size=4,
                                                  vae_scale_factor=factor)
