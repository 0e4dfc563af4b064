"""The structure-guided sampler: equal to diffusers' AnimateDiff + ControlNet pipeline, the tau window skips the
ControlNet, per-step text embeddings, long shots in context windows, and control strength schedules."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from render.context_windows import context_windows, window_weights
from render.control_schedule import step_scales
from render.sampler import StructureGuidedSampler, sample_video
from structure.conditioning import controlnet_condition

PROMPT = "a knight riding a horse"
NEGATIVE = "blurry, low quality"
SIZE = 32
FRAMES = 6
STEPS = 4


def _depth(frames: int, size: int = SIZE, shift: float = 0.0) -> np.ndarray:
    """A moving ramp with a near square: T x H x W in [0, 1]."""
    y, x = np.mgrid[0:size, 0:size] / (size - 1)
    depth = []
    for t in range(frames):
        d = 0.6 * ((x + 0.05 * t + shift) % 1.0) + 0.2 * y
        lo = (t * 2) % (size // 2)
        d[lo:lo + size // 4, lo:lo + size // 4] = 1.0
        depth.append(d)
    return np.stack(depth).astype(np.float32)


@pytest.fixture(scope="module", autouse=True)
def seeded_global_rng(one_thread):
    """The global RNG state the tests start from (after the one-thread set-up of tests/conftest.py)."""
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def cond():
    return controlnet_condition(_depth(FRAMES))


class CallCounter:
    """Counts forward calls of a module (and records the batch size of each) with a forward hook."""

    def __init__(self, module):
        self.calls = []
        self.handle = module.register_forward_hook(lambda mod, args, out: self.calls.append(args[0].shape[0]))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def _sample(components, cond, **kwargs):
    args = dict(conditioning=cond, steps=STEPS, guidance_scale=7.5, seed=3)
    args.update(kwargs)
    return StructureGuidedSampler(components)(PROMPT, NEGATIVE, **args)


def _pipe(tiny_pipeline, cond, output_type="pt", **kwargs):
    return tiny_pipeline(PROMPT, negative_prompt=NEGATIVE, conditioning_frames=list(cond), num_frames=cond.shape[0],
                    height=SIZE, width=SIZE, num_inference_steps=STEPS, guidance_scale=7.5,
                    generator=torch.Generator().manual_seed(3), output_type=output_type, **kwargs).frames


# -- 1. equivalence with diffusers -----------------------------------------------------------------------
def test_tau_one_reproduces_the_diffusers_pipeline(components, tiny_pipeline, cond):
    reference = _pipe(tiny_pipeline, cond)[0].permute(0, 2, 3, 1)  # F x H x W x 3
    with CallCounter(components.controlnet) as counter:
        ours = _sample(components, cond, generator=torch.Generator().manual_seed(3), seed=None)
    assert ours.frames.shape == (FRAMES, SIZE, SIZE, 3)
    assert (ours.frames - reference).abs().max().item() < 1e-4
    assert len(counter.calls) == STEPS == ours.controlnet_calls
    assert counter.calls == [2 * FRAMES] * STEPS  # [uncond, cond] x frames in one batch
    latents = _pipe(tiny_pipeline, cond, output_type="latent")
    assert (_sample(components, cond, output_type="latent").latents - latents).abs().max().item() < 1e-4
    assert ours.timesteps == [int(t) for t in components.scheduler.timesteps]


def test_eta_and_no_guidance_match_the_pipeline(components, tiny_pipeline, cond):
    reference = _pipe(tiny_pipeline, cond, output_type="latent", eta=1.0)
    ours = _sample(components, cond, eta=1.0, output_type="latent").latents
    assert (ours - reference).abs().max().item() < 1e-4
    plain = tiny_pipeline(PROMPT, conditioning_frames=list(cond), num_frames=FRAMES, height=SIZE, width=SIZE,
                     num_inference_steps=STEPS, guidance_scale=1.0, generator=torch.Generator().manual_seed(3),
                     output_type="latent").frames
    with CallCounter(components.controlnet) as counter:
        ours = _sample(components, cond, guidance_scale=1.0, output_type="latent").latents
    assert (ours - plain).abs().max().item() < 1e-4
    assert counter.calls == [FRAMES] * STEPS  # no unconditional half


def test_same_seed_same_video_other_seed_differs(components, cond):
    first = _sample(components, cond, output_type="np").frames
    again = _sample(components, cond, output_type="np").frames
    other = _sample(components, cond, seed=4, output_type="np").frames
    assert first.dtype == np.uint8 and first.shape == (FRAMES, SIZE, SIZE, 3)
    assert np.array_equal(first, again)
    assert np.abs(first.astype(int) - other.astype(int)).max() > 0


# -- 2. the structure window tau -------------------------------------------------------------------------
def test_tau_half_reproduces_control_guidance_end_with_fewer_controlnet_calls(components, tiny_pipeline, cond):
    with CallCounter(components.controlnet) as counter:
        reference = _pipe(tiny_pipeline, cond, output_type="latent", control_guidance_end=0.5)
    assert len(counter.calls) == STEPS  # diffusers still calls it, with scale 0
    with CallCounter(components.controlnet) as counter:
        ours = _sample(components, cond, tau=0.5, output_type="latent")
    assert len(counter.calls) == ours.controlnet_calls == STEPS // 2
    assert (ours.latents - reference).abs().max().item() < 1e-4


@pytest.mark.parametrize("tau, steps, calls", [(0.0, 4, 0), (1.0, 4, 4), (0.3, 10, 3), (0.5, 5, 2), (0.25, 4, 1),
                                               (0.75, 4, 3), (0.99, 3, 2)])
def test_controlnet_calls_follow_tau(components, tau, steps, calls):
    cond = controlnet_condition(_depth(4))
    with CallCounter(components.controlnet) as counter:
        result = _sample(components, cond, tau=tau, steps=steps, output_type="latent")
    assert len(counter.calls) == result.controlnet_calls == calls


def test_tau_and_depth_change_the_output(components, cond):
    full = _sample(components, cond, output_type="latent").latents
    half = _sample(components, cond, tau=0.5, output_type="latent").latents
    none = _sample(components, cond, tau=0.0, output_type="latent").latents
    other_depth = _sample(components, controlnet_condition(_depth(FRAMES, shift=0.5)), output_type="latent").latents
    assert (full - half).abs().max().item() > 1e-3
    assert (half - none).abs().max().item() > 1e-3
    assert (full - other_depth).abs().max().item() > 1e-3
    # without the ControlNet, depth no longer matters
    none_other = _sample(components, controlnet_condition(_depth(FRAMES, shift=0.5)), tau=0.0,
                         output_type="latent").latents
    assert torch.equal(none, none_other)


def test_bad_inputs_are_refused(components, cond):
    with pytest.raises(ValueError, match="tau"):
        _sample(components, cond, tau=1.5)
    with pytest.raises(ValueError, match="T x 3 x H x W"):
        _sample(components, cond[:, :1])
    with pytest.raises(ValueError, match="frames"):
        _sample(components, cond, num_frames=FRAMES + 1)
    with pytest.raises(ValueError, match="multiples"):
        _sample(components, cond, height=36, width=36)


# -- 3. per-step text embeddings -------------------------------------------------------------------------
def test_per_step_embeddings_hook_sees_every_timestep_and_steers(components, cond):
    sampler = StructureGuidedSampler(components)
    base = sampler.encode_prompt(PROMPT)
    other = sampler.encode_prompt("a dragon flying over the sea")
    seen = []

    def constant(i, t):
        return base, None

    def per_timestep(i, t):
        seen.append((i, int(t)))
        return (base if int(t) > 500 else other), None

    plain = _sample(components, cond, output_type="latent")
    assert torch.equal(_sample(components, cond, prompt_embeds_for_step=constant, output_type="latent").latents,
                       plain.latents)
    steered = _sample(components, cond, prompt_embeds_for_step=per_timestep, output_type="latent")
    assert [t for _, t in seen] == [int(t) for t in components.scheduler.timesteps] == plain.timesteps
    assert [i for i, _ in seen] == list(range(STEPS))
    assert (steered.latents - plain.latents).abs().max().item() > 1e-3
    # an unconditional embedding from the hook replaces the negative prompt's
    swapped = _sample(components, cond, prompt_embeds_for_step=lambda i, t: (base, other[0]), output_type="latent")
    assert (swapped.latents - plain.latents).abs().max().item() > 1e-3


def test_prompt_embeds_equal_prompt(components, cond):
    sampler = StructureGuidedSampler(components)
    plain = _sample(components, cond, output_type="latent").latents
    given = sampler(conditioning=cond, steps=STEPS, seed=3, prompt_embeds=sampler.encode_prompt(PROMPT),
                    negative_prompt_embeds=sampler.encode_prompt(NEGATIVE), output_type="latent").latents
    assert torch.equal(plain, given)


# -- 4. long shots in context windows --------------------------------------------------------------------
def test_context_windows_cover_every_frame():
    windows = context_windows(40, window=16, stride=8)
    assert [w[0] for w in windows] == [0, 8, 16, 24] and windows[-1][-1] == 39
    assert all(len(w) == 16 for w in windows)
    assert set().union(*windows) == set(range(40))
    assert [w[0] for w in context_windows(20, 16, 8)] == [0, 4]
    assert context_windows(8, 16, 8) == [list(range(8))]
    assert window_weights(6).tolist() == [1, 2, 3, 3, 2, 1]
    with pytest.raises(ValueError):
        context_windows(40, 16, 20)


def test_long_shot_runs_in_windows_through_unet_and_controlnet(components):
    frames, steps = 40, 2
    cond = controlnet_condition(_depth(frames, size=16))
    with CallCounter(components.controlnet) as control, CallCounter(components.unet) as unet:
        result = sample_video(components, PROMPT, NEGATIVE, conditioning=cond, steps=steps, seed=0,
                              context_window=16, context_stride=8, output_type="latent")
    assert result.windows == context_windows(40, 16, 8)
    assert result.latents.shape == (1, 4, frames, 2, 2)
    assert torch.isfinite(result.latents).all()
    assert control.calls == [2 * 16] * (4 * steps)  # each window's frames, [uncond, cond]
    assert len(unet.calls) == 4 * steps
    # frames past the first window are still steered by their own depth
    shifted = cond.clone()
    shifted[32:] = controlnet_condition(_depth(8, size=16, shift=0.5))
    moved = sample_video(components, PROMPT, NEGATIVE, conditioning=shifted, steps=steps, seed=0,
                         output_type="latent").latents
    diff = (moved - result.latents).abs().amax(dim=(0, 1, 3, 4))
    assert diff[32:].min() > 0 and diff[:16].max() == 0  # the first window never sees those frames


def test_short_shot_equals_the_unwindowed_path(components, cond):
    plain = _sample(components, cond, output_type="latent", context_window=64).latents
    windowed = _sample(components, cond, output_type="latent", context_window=FRAMES, context_stride=2).latents
    assert torch.equal(plain, windowed)
    # overlapping windows fuse to a different (finite) result
    split = _sample(components, cond, output_type="latent", context_window=4, context_stride=2)
    assert split.windows == [[0, 1, 2, 3], [2, 3, 4, 5]]
    assert torch.isfinite(split.latents).all() and not torch.equal(split.latents, plain)


# -- 5. control strength schedules -----------------------------------------------------------------------
def test_scale_schedules(components, cond):
    plain = _sample(components, cond, output_type="latent").latents
    ones = _sample(components, cond, controlnet_scale=np.ones((STEPS, FRAMES)), output_type="latent").latents
    assert torch.equal(plain, ones)
    half = _sample(components, cond, controlnet_scale=0.5, output_type="latent").latents
    half_fn = _sample(components, cond, controlnet_scale=lambda i, f: 0.5, output_type="latent").latents
    assert torch.equal(half, half_fn) and not torch.equal(half, plain)

    table = np.ones((STEPS, FRAMES))
    table[1] = 0.0
    with CallCounter(components.controlnet) as counter:
        skipped = _sample(components, cond, controlnet_scale=table, output_type="latent")
    assert len(counter.calls) == skipped.controlnet_calls == STEPS - 1
    per_frame = np.ones((STEPS, FRAMES))
    per_frame[:, 0] = 0.0
    varied = _sample(components, cond, controlnet_scale=per_frame, output_type="latent").latents
    assert (varied - plain).abs().max().item() > 1e-4
    assert step_scales(per_frame, 0.5, STEPS, FRAMES)[2] is None
    assert step_scales([1.0, 0.0, 2.0, 2.0], 1.0, STEPS, FRAMES)[:3] == [1.0, None, 2.0]
    with pytest.raises(ValueError, match="controlnet_scale"):
        step_scales(np.ones((3, 2)), 1.0, STEPS, FRAMES)


# -- 6. FreeU --------------------------------------------------------------------------------------------
def test_freeu_changes_the_output_and_is_switched_off_after(components, cond):
    plain = _sample(components, cond, output_type="latent").latents
    freeu = _sample(components, cond, freeu=True, output_type="latent").latents
    assert (freeu - plain).abs().max().item() > 1e-4
    assert torch.equal(_sample(components, cond, output_type="latent").latents, plain)


@pytest.mark.parametrize("name", ["euler", "dpmpp_2m"])
def test_other_schedulers_match_the_pipeline(components, cond, name):
    from diffusers import AnimateDiffControlNetPipeline

    from storyreel.models.schedulers import make_scheduler
    pipe = AnimateDiffControlNetPipeline(**{**components.pipeline_kwargs(), "scheduler": make_scheduler(name)})
    pipe.set_progress_bar_config(disable=True)
    reference = _pipe(pipe, cond, output_type="latent", control_guidance_end=0.5)
    ours = StructureGuidedSampler(components, scheduler=make_scheduler(name))(
        PROMPT, NEGATIVE, conditioning=cond, steps=STEPS, seed=3, tau=0.5, output_type="latent")
    assert ours.controlnet_calls == STEPS // 2
    assert (ours.latents - reference).abs().max().item() < 1e-4


def test_vae_slicing_and_windowed_frame_scales(components, cond):
    plain = _sample(components, cond, tau=0.0)
    sliced = _sample(components, cond, tau=0.0, vae_slicing=True, decode_chunk_size=2)
    assert (plain.frames - sliced.frames).abs().max().item() < 1e-5
    assert not components.vae.use_slicing
    per_frame = np.ones((STEPS, FRAMES))
    per_frame[:, :2] = 0.0  # the first window's first frames: the ControlNet still runs for the others
    split = _sample(components, cond, output_type="latent", context_window=4, context_stride=2,
                    controlnet_scale=per_frame)
    assert split.controlnet_calls == 2 * STEPS
    per_frame[:, :4] = 0.0  # the whole first window: only the second window calls the ControlNet
    split = _sample(components, cond, output_type="latent", context_window=4, context_stride=2,
                    controlnet_scale=per_frame)
    assert split.controlnet_calls == STEPS


def test_cpu_offload_places_each_model_for_its_phase(components, cond):
    """Under CPU offload every model runs only while the sampler has put it on the execution device, the
    models go back to the offload device at the end, and the video is the same as without offload."""
    from render.sampler import StructureGuidedSampler
    from storyreel.models.offload import ModelOffload

    expected = StructureGuidedSampler(components)("a hare", conditioning=cond, steps=3, seed=3,
                                                  output_type="latent").latents
    components.enable_model_cpu_offload("cpu")
    offload = components.offload
    assert isinstance(offload, ModelOffload)
    on_device, ran_outside = set(), []
    original_use = offload.use

    def use(*names):
        original_use(*names)
        on_device.clear()
        on_device.update(names)
    offload.use = use
    handles = [getattr(components, name).register_forward_pre_hook(
        lambda module, args, name=name: ran_outside.append(name) if name not in on_device else None)
        for name in ("text_encoder", "unet", "controlnet", "vae")]
    try:
        result = StructureGuidedSampler(components)("a hare", conditioning=cond, steps=3, seed=3,
                                                    output_type="pt")
        assert ran_outside == []
        assert on_device == set()  # all back on the offload device
        hook = lambda i, t: (components_encode(components, "a hare"), None)  # noqa: E731
        on_device.clear()
        StructureGuidedSampler(components)("a hare", conditioning=cond, steps=2, seed=3,
                                           prompt_embeds_for_step=hook, output_type="latent")
        assert ran_outside == []  # the per-step hook may use the text encoder during the loop
    finally:
        for handle in handles:
            handle.remove()
        components.offload = None
    assert torch.equal(result.latents, expected)
    with pytest.raises(ValueError, match="unknown model"):
        ModelOffload(components, "cpu").use("tokenizer")


def components_encode(components, prompt):
    from render.sampler import StructureGuidedSampler

    return StructureGuidedSampler(components).encode_prompt(prompt)


# -- prompt travel ------------------------------------------------------------------------------------------
def test_prompt_travel_gives_each_frame_its_blend_of_the_two_prompts(components, cond):
    """Weights 0 are the prompt alone, weights 1 the second prompt alone (also across context windows); linear
    weights reach the UNet as frame 0 = the first prompt, the last frame = the second, the middle a blend."""
    from render.sampler import PromptTravel

    sampler = StructureGuidedSampler(components)
    first, second = sampler.encode_prompt(PROMPT), sampler.encode_prompt("a boat on a calm lake")
    negative = sampler.encode_prompt(NEGATIVE)
    args = dict(negative_prompt_embeds=negative, output_type="latent")
    plain = _sample(components, cond, prompt_embeds=first, **args).latents
    travel = _sample(components, cond, prompt_embeds=first, **args,
                     prompt_travel=PromptTravel(second, (0.0,) * FRAMES)).latents
    assert torch.equal(plain, travel)
    windows = dict(context_window=4, context_stride=2)
    arrived = _sample(components, cond, prompt_embeds=first, **args, **windows,
                      prompt_travel=PromptTravel(second, (1.0,) * FRAMES)).latents
    assert torch.allclose(arrived, _sample(components, cond, prompt_embeds=second, **args, **windows).latents,
                          atol=1e-6)

    seen = []
    handle = components.unet.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["encoder_hidden_states"].clone()), with_kwargs=True)
    try:
        _sample(components, cond, prompt_embeds=first, steps=1, **args,
                prompt_travel=PromptTravel.linear(second, FRAMES))
    finally:
        handle.remove()
    text = seen[0].view(2, FRAMES, *first.shape[1:])  # [uncond, cond] x frames
    assert torch.equal(text[1, 0], first[0]) and torch.allclose(text[1, -1], second[0], atol=1e-6)
    assert torch.allclose(text[1, 2], 0.6 * first[0] + 0.4 * second[0], atol=1e-6)
    assert all(torch.allclose(text[0, f], negative[0], atol=1e-6) for f in range(FRAMES))  # one negative, all frames
    with pytest.raises(ValueError, match="3 weights for 6 frames"):
        _sample(components, cond, prompt_embeds=first, prompt_travel=PromptTravel(second, (0.0, 0.5, 1.0)))
