"""``--animator i2vgen-xl``'s core: diffusers' I2VGen-XL pipeline on the tiny components (CPU, no downloads)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from render.i2vgen_animator import I2VGEN_XL, animate_keyframe, build_tiny_i2vgen, load_i2vgen, record, to_uint8
from storyreel.errors import ModelLoadError
from storyreel.weights_policy import PICKLE_REFUSAL

# Non-square on purpose (an axis swap would show): 32 x 48 pixels, 4 x 6 latent cells.
HEIGHT, WIDTH, FRAMES, STEPS = 32, 48, 3, 2
PROMPT, NEGATIVE = "a knight riding a horse", "blurry, static"


def _keyframe(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(HEIGHT, WIDTH, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def pipeline():
    return load_i2vgen("tiny", "cpu", torch.float32)


def _animate(pipeline, image=None, seed=7, **overrides):
    arguments = dict(prompt=PROMPT, negative_prompt=NEGATIVE, num_frames=FRAMES, height=HEIGHT, width=WIDTH,
                     steps=STEPS, guidance=9.0, seed=seed, fps=8)
    arguments.update(overrides)
    return animate_keyframe(pipeline, _keyframe(0) if image is None else image, **arguments)


def test_tiny_pipeline_returns_the_asked_frames_at_the_asked_size(pipeline):
    frames = _animate(pipeline)
    assert frames.shape == (FRAMES, HEIGHT, WIDTH, 3)
    assert frames.dtype == np.uint8
    assert frames.std() > 1  # a picture, not a constant
    assert _animate(pipeline, num_frames=2, height=40, width=24).shape == (2, 40, 24, 3)


def test_the_seed_decides_and_the_global_rng_does_not(pipeline):
    torch.manual_seed(1)
    first = _animate(pipeline, seed=7)
    state = torch.random.get_rng_state()
    torch.manual_seed(12345)  # another global state: the pipeline's VAE sample must not depend on it
    again = _animate(pipeline, seed=7)
    other = _animate(pipeline, seed=8)
    np.testing.assert_array_equal(first, again)
    assert np.abs(first.astype(int) - other.astype(int)).mean() > 1
    # the caller's global RNG is restored
    torch.manual_seed(1)
    _animate(pipeline, seed=7)
    assert torch.equal(torch.random.get_rng_state(), state)


def test_the_keyframe_matters(pipeline):
    # With the tiny model's random weights the keyframe moves the frames only a little (the random VAE and CLIP
    # encoders map two noise pictures to similar codes); ignoring it would give identical frames.
    one = _animate(pipeline, image=_keyframe(0))
    two = _animate(pipeline, image=_keyframe(1))
    assert (one != two).mean() > 0.01
    np.testing.assert_array_equal(one, _animate(pipeline, image=_keyframe(0)))


def test_the_prompt_and_fps_reach_the_model(pipeline):
    base = _animate(pipeline)
    assert not np.array_equal(base, _animate(pipeline, prompt="a dragon over a castle"))
    assert not np.array_equal(base, _animate(pipeline, fps=24))


def test_animate_keyframe_equals_a_direct_diffusers_call(pipeline):
    from diffusers import I2VGenXLPipeline
    from PIL import Image

    ours = _animate(pipeline, seed=11)
    direct_pipeline = I2VGenXLPipeline(**pipeline.components)  # the same components, a fresh pipeline
    direct_pipeline.set_progress_bar_config(disable=True)
    torch.manual_seed(11)  # the pipeline's VAE latent sample comes from the global RNG
    video = direct_pipeline(image=Image.fromarray(_keyframe(0)), prompt=PROMPT, negative_prompt=NEGATIVE,
                            height=HEIGHT, width=WIDTH, target_fps=8, num_frames=FRAMES, num_inference_steps=STEPS,
                            guidance_scale=9.0, eta=0.0, decode_chunk_size=1,
                            generator=torch.Generator("cpu").manual_seed(11), output_type="np").frames
    assert video.shape == (1, FRAMES, HEIGHT, WIDTH, 3)
    np.testing.assert_array_equal(ours, to_uint8(video[0]))  # bit-identical
    np.testing.assert_array_equal(ours, (video[0] * 255).round().astype(np.uint8))


def test_tiny_is_seeded_and_the_scheduler_is_the_real_models():
    one, two = build_tiny_i2vgen(), build_tiny_i2vgen()
    for name in ("unet", "vae", "text_encoder", "image_encoder"):
        a, b = getattr(one, name).state_dict(), getattr(two, name).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    other = build_tiny_i2vgen(seed=1).unet.state_dict()
    assert not all(torch.equal(one.unet.state_dict()[k], other[k]) for k in other)
    config = one.scheduler.config
    assert type(one.scheduler).__name__ == "DDIMScheduler"
    assert (config.prediction_type, config.beta_schedule, config.rescale_betas_zero_snr) == \
        ("v_prediction", "squaredcos_cap_v2", True)
    # consistent with each other: text width = image projection = the UNet's context width
    assert one.text_encoder.config.hidden_size == one.image_encoder.config.projection_dim == \
        one.unet.config.cross_attention_dim
    assert one.text_encoder.config.vocab_size == len(one.tokenizer)


def test_a_saved_folder_loads_back_and_renders_the_same(pipeline, tmp_path):
    pipeline.save_pretrained(tmp_path / "i2vgen", safe_serialization=True)
    loaded = load_i2vgen(tmp_path / "i2vgen", "cpu", torch.float32)
    np.testing.assert_array_equal(_animate(pipeline), _animate(loaded))
    assert record(tmp_path / "i2vgen")["model"] == str((tmp_path / "i2vgen").resolve())


def test_a_pickle_is_refused(tmp_path):
    checkpoint = tmp_path / "i2vgen.bin"
    checkpoint.write_bytes(b"not loaded")
    with pytest.raises(ModelLoadError, match=PICKLE_REFUSAL) as error:
        load_i2vgen(checkpoint)
    assert str(checkpoint) in str(error.value)


def test_a_folder_with_pickled_weights_is_refused(pipeline, tmp_path):
    folder = tmp_path / "pickled"
    pipeline.save_pretrained(folder, safe_serialization=True)
    for weights in (folder / "unet").glob("*.safetensors"):
        weights.rename(weights.with_suffix(".bin"))
    with pytest.raises(ModelLoadError, match=PICKLE_REFUSAL) as error:
        load_i2vgen(folder)
    assert str(folder) in str(error.value) and "diffusion_pytorch_model.bin" in str(error.value)


def test_a_missing_folder_is_named(tmp_path):
    missing = tmp_path / "no" / "such" / "model"
    with pytest.raises(ModelLoadError, match="no such folder") as error:
        load_i2vgen(missing)
    assert str(missing) in str(error.value)
    with pytest.raises(ModelLoadError, match="model_index.json"):
        load_i2vgen(tmp_path)  # a folder, but not a pipeline's


def test_record_says_what_was_used(pipeline):
    assert record(I2VGEN_XL)["model"] == I2VGEN_XL
    entry = record("tiny", pipeline)
    assert entry["animator"] == "i2vgen-xl" and entry["depth_guidance"] is False
    assert entry["pipeline"] == "diffusers.I2VGenXLPipeline" and entry["scheduler"] == "DDIMScheduler"


def test_bad_sizes_are_refused_before_rendering(pipeline):
    with pytest.raises(ValueError, match="divisible by 8"):
        _animate(pipeline, height=36)
    with pytest.raises(ValueError, match="target_fps"):
        _animate(pipeline, fps=0)
