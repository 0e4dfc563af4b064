"""SparseCtrl in our sampler: equal to diffusers' AnimateDiffSparseControlNetPipeline on the tiny components, added
to the depth ControlNet's residuals with the depth tau window kept, the condition at the right frames (and only in
the context windows that hold them), renders without it unchanged, and the loader's refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from render.sampler import StructureGuidedSampler
from render.sparse_control import (
    SparseCondition,
    build_tiny_sparse_controlnet,
    check_sparse_controlnet,
    load_sparse_controlnet,
)
from storyreel.errors import ModelLoadError
from storyreel.weights_policy import PICKLE_REFUSAL

PROMPT = "a knight riding a horse"
NEGATIVE = "blurry, low quality"
SIZE = 32
FRAMES = 6
STEPS = 4
SEED = 3
ENCODE_SEED = 11


@pytest.fixture(scope="module", autouse=True)
def seeded_global_rng(one_thread):
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def sparse_model(components):
    return build_tiny_sparse_controlnet(components)


@pytest.fixture(scope="module")
def sparse_pipeline(components, sparse_model):
    """diffusers' SparseCtrl pipeline on the same tiny components, the tiny SparseCtrl as its controlnet."""
    from diffusers import AnimateDiffSparseControlNetPipeline

    pipe = AnimateDiffSparseControlNetPipeline(**{**components.pipeline_kwargs(), "controlnet": sparse_model})
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def keyframes() -> np.ndarray:
    """Two RGB images (2 x H x W x 3 uint8): a colour ramp with a square, and its mirror with another square."""
    y, x = np.mgrid[0:SIZE, 0:SIZE] / (SIZE - 1)
    first = np.stack([x, y, 0.5 * (x + y)], axis=-1)
    first[4:14, 6:16] = (1.0, 0.2, 0.1)
    last = first[:, ::-1].copy()
    last[18:28, 12:22] = (0.1, 0.3, 1.0)
    return (np.stack([first, last]) * 255).round().astype(np.uint8)


@pytest.fixture(scope="module")
def depth():
    from structure.conditioning import controlnet_condition

    y, x = np.mgrid[0:SIZE, 0:SIZE] / (SIZE - 1)
    return controlnet_condition(np.stack([0.6 * ((x + 0.05 * t) % 1.0) + 0.2 * y for t in range(FRAMES)])
                                .astype(np.float32))


class Calls:
    """Records each forward call of a module: its keyword arguments (a pre-hook) and its output."""

    def __init__(self, module):
        self.kwargs, self.outputs = [], []
        self.handles = [
            module.register_forward_pre_hook(lambda mod, args, kwargs: self.kwargs.append(kwargs), with_kwargs=True),
            module.register_forward_hook(lambda mod, args, out: self.outputs.append(out)),
        ]

    def __len__(self):
        return len(self.outputs)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()


def _sample(components, **kwargs):
    args = dict(conditioning=None, num_frames=FRAMES, height=SIZE, width=SIZE, steps=STEPS, guidance_scale=7.5,
                seed=SEED)
    args.update(kwargs)
    return StructureGuidedSampler(components)(PROMPT, NEGATIVE, **args)


def _nonzero_frames(tensor: torch.Tensor) -> list[int]:
    """The frames (dim 2 of a B x C x F x h x w tensor) with any non-zero value."""
    return [f for f in range(tensor.shape[2]) if bool(tensor[:, :, f].abs().sum() > 0)]


# -- 1. equivalence with diffusers -----------------------------------------------------------------------
@pytest.mark.parametrize("indices", [[0], [0, FRAMES - 1]], ids=["keyframe", "first-and-last"])
@pytest.mark.parametrize("guidance_scale, guess_mode", [(7.5, False), (1.0, True)], ids=["cfg", "guess-no-cfg"])
def test_sparse_only_equals_the_diffusers_sparsectrl_pipeline(components, sparse_model, sparse_pipeline, keyframes,
                                                              indices, guidance_scale, guess_mode):
    images = keyframes[:len(indices)]
    torch.manual_seed(ENCODE_SEED)  # the pipeline samples the VAE latents of its images from the global RNG
    pictures = [Image.fromarray(image) for image in images]
    reference = sparse_pipeline(PROMPT, negative_prompt=NEGATIVE, conditioning_frames=pictures,
                                controlnet_frame_indices=indices, num_frames=FRAMES, height=SIZE, width=SIZE,
                                num_inference_steps=STEPS, guidance_scale=guidance_scale, guess_mode=guess_mode,
                                generator=torch.Generator().manual_seed(SEED), output_type="pt").frames[0]
    reference = reference.permute(0, 2, 3, 1)
    condition = SparseCondition(images, indices, guess_mode=guess_mode, encode_seed=ENCODE_SEED)
    with Calls(components.controlnet) as depth_calls, Calls(sparse_model) as sparse_calls:
        ours = _sample(components, sparse_controlnet=sparse_model, sparse_condition=condition,
                       guidance_scale=guidance_scale)
    difference = (ours.frames - reference).abs().max().item()
    print(f"SparseCtrl {indices} guidance {guidance_scale} guess {guess_mode}: max |ours - diffusers| = "
          f"{difference:.3g}")
    assert difference < 1e-5
    assert len(depth_calls) == ours.controlnet_calls == 0
    assert len(sparse_calls) == ours.sparse_calls == STEPS
    # the SparseCtrl matters: the same render without it differs
    plain = _sample(components, guidance_scale=guidance_scale)
    assert (plain.frames - ours.frames).abs().max().item() > 1e-2


def test_tau_zero_turns_the_depth_controlnet_off_like_no_conditioning(components, sparse_model, keyframes, depth):
    condition = SparseCondition.keyframe(keyframes[0])
    without = _sample(components, sparse_controlnet=sparse_model, sparse_condition=condition, output_type="latent")
    tau_zero = _sample(components, conditioning=depth, tau=0.0, sparse_controlnet=sparse_model,
                       sparse_condition=condition, output_type="latent")
    assert torch.equal(without.latents, tau_zero.latents)
    assert tau_zero.controlnet_calls == 0 and tau_zero.sparse_calls == STEPS


# -- 2. depth ControlNet and SparseCtrl together ---------------------------------------------------------
def test_depth_and_sparse_residuals_add_up_and_keep_their_own_windows(components, sparse_model, keyframes, depth):
    condition = SparseCondition.transition(keyframes[0], keyframes[1])
    unet_calls = Calls(components.unet)
    with unet_calls, Calls(components.controlnet) as depth_calls, Calls(sparse_model) as sparse_calls:
        both = _sample(components, conditioning=depth, tau=0.5, sparse_controlnet=sparse_model,
                       sparse_condition=condition)
    assert len(depth_calls) == both.controlnet_calls == 2  # tau 0.5 of 4 steps, as without SparseCtrl
    assert len(sparse_calls) == both.sparse_calls == STEPS  # every step
    # the UNet gets the sum of both residuals while the depth ControlNet runs, SparseCtrl's alone after
    for step in range(STEPS):
        sparse_down, sparse_mid = sparse_calls.outputs[step]
        given = unet_calls.kwargs[step]
        if step < 2:
            depth_down, depth_mid = depth_calls.outputs[step]
            expected_down = [d + s for d, s in zip(depth_down, sparse_down)]
            expected_mid = depth_mid + sparse_mid
        else:
            expected_down, expected_mid = sparse_down, sparse_mid
        assert torch.equal(given["mid_block_additional_residual"], expected_mid)
        pairs = zip(given["down_block_additional_residuals"], expected_down, strict=True)
        assert all(torch.equal(a, b) for a, b in pairs)
    depth_only = _sample(components, conditioning=depth, tau=0.5)
    sparse_only = _sample(components, sparse_controlnet=sparse_model, sparse_condition=condition)
    assert depth_only.controlnet_calls == 2 and depth_only.sparse_calls == 0
    assert (both.frames - depth_only.frames).abs().max().item() > 1e-2
    assert (both.frames - sparse_only.frames).abs().max().item() > 1e-2


def test_guess_mode_with_guidance_conditions_only_the_conditional_half(components, sparse_model, keyframes):
    """diffusers' SparseCtrl pipeline fails here (it adds the conditional half's residuals to the whole batch); we
    pad the unconditional half with zeros, as its AnimateDiffControlNetPipeline does."""
    condition = SparseCondition.keyframe(keyframes[0], guess_mode=True)
    with Calls(components.unet) as unet_calls, Calls(sparse_model) as sparse_calls:
        guess = _sample(components, steps=2, sparse_controlnet=sparse_model, sparse_condition=condition)
    assert len(sparse_calls) == guess.sparse_calls == 2
    for kwargs, (sparse_down, _) in zip(unet_calls.kwargs, sparse_calls.outputs):
        assert sparse_down[0].shape[0] == FRAMES  # the conditional batch only
        for residual in kwargs["down_block_additional_residuals"]:
            assert residual.shape[0] == 2 * FRAMES
            assert not residual[:FRAMES].any() and residual[FRAMES:].abs().max() > 0
    plain = _sample(components, steps=2, sparse_controlnet=sparse_model,
                    sparse_condition=SparseCondition.keyframe(keyframes[0]))
    assert (plain.frames - guess.frames).abs().max().item() > 1e-3


# -- 3. the condition reaches its frames -----------------------------------------------------------------
@pytest.mark.parametrize("indices", [[0], [0, -1]], ids=["keyframe", "first-and-last"])
def test_the_condition_and_mask_are_at_the_given_frames(components, sparse_model, keyframes, indices):
    condition = SparseCondition(keyframes[:len(indices)], indices)
    expected = [i % FRAMES for i in indices]
    with Calls(sparse_model) as calls:
        _sample(components, steps=2, sparse_controlnet=sparse_model, sparse_condition=condition, output_type="latent")
    assert len(calls) == 2
    for kwargs in calls.kwargs:
        mask, cond = kwargs["conditioning_mask"], kwargs["controlnet_cond"]
        assert mask.shape == (1, 1, FRAMES, SIZE // 8, SIZE // 8) and cond.shape == (1, 4, FRAMES, SIZE // 8, SIZE // 8)
        assert _nonzero_frames(mask) == expected and bool((mask[:, :, expected] == 1).all())
        assert _nonzero_frames(cond) == expected  # VAE latents of the images there, zeros elsewhere


@pytest.mark.parametrize("indices, conditioned_windows", [([0], [0]), ([0, -1], [0, 3]), ([9], [1, 2])],
                         ids=["keyframe", "first-and-last", "middle"])
def test_in_context_windows_only_the_windows_holding_the_frames_get_the_condition(components, sparse_model,
                                                                                  keyframes, indices,
                                                                                  conditioned_windows):
    frames, steps = 20, 2
    condition = SparseCondition(keyframes[:len(indices)], indices)
    full = condition.prepare(sparse_model, components.vae, frames, SIZE, SIZE)
    with Calls(sparse_model) as calls:
        result = _sample(components, num_frames=frames, steps=steps, context_window=8, context_stride=4,
                         sparse_controlnet=sparse_model, sparse_condition=condition, output_type="latent")
    assert result.windows == [list(range(s, s + 8)) for s in (0, 4, 8, 12)]
    assert len(calls) == result.sparse_calls == steps * len(conditioned_windows)
    for call, kwargs in enumerate(calls.kwargs):
        window = result.windows[conditioned_windows[call % len(conditioned_windows)]]
        local = [position for position, frame in enumerate(window) if frame in full.frame_indices]
        assert _nonzero_frames(kwargs["conditioning_mask"]) == local
        assert torch.equal(kwargs["controlnet_cond"], full.cond[:, :, window])  # the window's slice of the shot's


# -- 4. without SparseCtrl nothing changes ---------------------------------------------------------------
def test_without_sparse_arguments_the_render_is_bit_identical(components, depth):
    plain = _sample(components, conditioning=depth, tau=0.5)
    explicit = _sample(components, conditioning=depth, tau=0.5, sparse_controlnet=None, sparse_condition=None)
    assert torch.equal(plain.latents, explicit.latents) and torch.equal(plain.frames, explicit.frames)
    assert plain.sparse_calls == explicit.sparse_calls == 0 and plain.controlnet_calls == 2


# -- 5. bad input ----------------------------------------------------------------------------------------
def test_bad_sparse_inputs_are_refused(components, sparse_model, keyframes):
    with pytest.raises(ValueError, match="both"):
        _sample(components, sparse_condition=SparseCondition.keyframe(keyframes[0]))
    with pytest.raises(ValueError, match="outside a shot of 6 frames"):
        _sample(components, sparse_controlnet=sparse_model, sparse_condition=SparseCondition(keyframes[:1], [6]))
    with pytest.raises(ValueError, match="twice"):
        SparseCondition(keyframes, [0, -6]).resolved_indices(FRAMES)
    with pytest.raises(ValueError, match="one image per index"):
        SparseCondition(keyframes, [0]).pixel_frames()
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        SparseCondition(torch.full((1, 3, 8, 8), 2.0), [0]).pixel_frames()
    # the two input layouts give the same pixels
    as_float = torch.from_numpy(keyframes).permute(0, 3, 1, 2).float() / 255
    assert torch.equal(SparseCondition(keyframes, [0, -1]).pixel_frames(), SparseCondition(as_float, [0, -1])
                       .pixel_frames())
    other = build_tiny_sparse_controlnet(components)
    other.register_to_config(cross_attention_dim=16)
    with pytest.raises(ValueError, match="text features"):
        check_sparse_controlnet(other, components)


def test_loading_refuses_pickles_and_names_missing_folders(tmp_path, components, sparse_model):
    pickle = tmp_path / "sparsectrl.bin"
    pickle.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelLoadError, match=PICKLE_REFUSAL):
        load_sparse_controlnet(pickle)
    missing = tmp_path / "no_such_model"
    with pytest.raises(ModelLoadError, match="no such folder") as error:
        load_sparse_controlnet(missing)
    assert str(missing) in str(error.value)
    only_pickle = tmp_path / "pickled"
    only_pickle.mkdir()
    (only_pickle / "config.json").write_text("{}")
    (only_pickle / "diffusion_pytorch_model.bin").write_bytes(b"x")
    with pytest.raises(ModelLoadError, match=PICKLE_REFUSAL) as error:
        load_sparse_controlnet(only_pickle)
    assert "diffusion_pytorch_model.bin" in str(error.value)
    with pytest.raises(ModelLoadError, match="offline mode is on .*guoyww/animatediff-sparsectrl-rgb .*fetch-models "
                                             "--hub-cache"):  # offline (conftest): named at once, with the fix
        load_sparse_controlnet("guoyww/animatediff-sparsectrl-rgb")
    # a saved folder loads back; "tiny" is the tiny SparseCtrl of the tiny preset
    sparse_model.save_pretrained(tmp_path / "saved", safe_serialization=True)
    loaded = load_sparse_controlnet(tmp_path / "saved")
    tiny = load_sparse_controlnet("tiny")
    for name, tensor in sparse_model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor) and torch.equal(tiny.state_dict()[name], tensor)
