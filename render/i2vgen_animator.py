"""I2VGen-XL as a keyframe animator: the baseline ``--animator i2vgen-xl`` compares storyreel's renders with.

EpicDiffusion animates its keyframes with I2VGen-XL (Zhang et al. 2023, https://arxiv.org/abs/2311.04145): a
video model conditioned on one image (VAE latents of the image as the first frame, plus its CLIP image
embedding) and a prompt. storyreel animates a keyframe with SparseCtrl inside its own sampler, guided by the
shot's footage depth; this module runs diffusers' ``I2VGenXLPipeline`` (``ali-vilab/i2vgen-xl``) as it is, so
the two can be compared on the same keyframes. It has **no depth guidance**: the footage's structure does not
reach it, only the keyframe, the prompt and the frame rate (``target_fps``, a micro-condition of the model)::

    from render.i2vgen_animator import animate_keyframe, load_i2vgen, record

    pipeline = load_i2vgen("ali-vilab/i2vgen-xl", "cuda", torch.float16)       # or "tiny", a local folder
    frames = animate_keyframe(pipeline, keyframe, prompt, negative_prompt, num_frames=16, height=512,
                              width=512, steps=50, guidance=9.0, seed=7, fps=8)   # 16 x 512 x 512 x 3 uint8
    sidecar["animator"] = record("ali-vilab/i2vgen-xl")

One call of the pipeline per keyframe, with diffusers' defaults for everything not named here (``clip_skip=1``:
the text encoder's penultimate layer, as the model was trained; ``eta=0``; the keyframe center-cropped to the
render's aspect ratio by the pipeline itself). Determinism: the initial noise comes from a CPU generator seeded
with ``seed`` (the same noise on every device), and the pipeline also draws the keyframe's VAE latent sample
from torch's *global* RNG (``latent_dist.sample()`` with no generator); :func:`animate_keyframe` seeds the global
RNG with ``seed`` for the call and restores it afterwards, so a seed gives the same video on a given device
whatever ran before (that one sample comes from the device's RNG, so CPU and CUDA renders differ slightly).

``diffusers`` 0.42.1 keeps the pipeline under ``pipelines/deprecated`` (no fixes after 0.33.1) and warns when it is
built; we silence that warning.

:func:`build_tiny_i2vgen` builds every component at toy size (seeded, consistent with each other) for tests;
:func:`load_i2vgen` loads ``tiny``, a hub id or a local folder in the diffusers layout, safetensors only.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from storyreel.errors import ModelLoadError, first_line
from storyreel.hub_access import HubModel, ensure_available, offline_requested
from storyreel.models import presets
from storyreel.models.architectures import TINY_VAE_CONFIG
from storyreel.seeding import seeded
from storyreel.weights_policy import PICKLE_REFUSAL, PICKLE_SUFFIXES, is_pickle_checkpoint

I2VGEN_XL = presets.I2VGEN_XL_ID
TINY_I2VGEN_SEED = 0
ANIMATOR_NAME = "i2vgen-xl"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# The components with weights: each must hold safetensors in a local folder.
_WEIGHTED = ("vae", "text_encoder", "image_encoder", "unet")

# The real model's scheduler (ali-vilab/i2vgen-xl, scheduler/scheduler_config.json as we recall it; not checked
# against the hub here, which is offline): DDIM on a cosine schedule rescaled to zero terminal SNR, predicting v,
# as the original code's config (schedule "cosine", prediction "v", zero_terminal_snr). beta_start / beta_end are
# unused by the cosine schedule. A loaded model keeps its own scheduler config; this is for the tiny one.
I2VGEN_SCHEDULER_CONFIG = {
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "squaredcos_cap_v2",
    "clip_sample": False,
    "prediction_type": "v_prediction",
    "rescale_betas_zero_snr": True,
    "set_alpha_to_one": True,
    "steps_offset": 1,
    "timestep_spacing": "leading",
}

# -- the tiny components (the real architecture, toy size) ----------------------------------------------------
TINY_CROSS_ATTENTION_DIM = 32  # the text encoder's width, the image encoder's projection, the UNet's context
TINY_IMAGE_SIZE = 32  # the CLIP image encoder's input (the real one: 224)
TINY_I2VGEN_UNET_CONFIG = {
    "block_out_channels": (8, 16),
    "layers_per_block": 1,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ("CrossAttnDownBlock3D", "DownBlock3D"),
    "up_block_types": ("UpBlock3D", "CrossAttnUpBlock3D"),
    "cross_attention_dim": TINY_CROSS_ATTENTION_DIM,
    "attention_head_dim": 4,
    "norm_num_groups": 2,
    "sample_size": 8,
}
TINY_I2VGEN_VAE_CONFIG = dict(TINY_VAE_CONFIG)  # the tiny render VAE's: 8 pixels per latent cell, as the real one
TINY_I2VGEN_TEXT_CONFIG = {  # the real CLIP vocabulary, so the real tokenizer fits
    "vocab_size": 49408,
    "hidden_size": TINY_CROSS_ATTENTION_DIM,
    "intermediate_size": 64,
    "projection_dim": TINY_CROSS_ATTENTION_DIM,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "max_position_embeddings": 77,
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-05,
    "bos_token_id": 49406,
    "eos_token_id": 49407,
    "pad_token_id": 49407,
}
TINY_I2VGEN_IMAGE_CONFIG = {
    "hidden_size": 16,
    "intermediate_size": 32,
    "projection_dim": TINY_CROSS_ATTENTION_DIM,  # the UNet's context_embedding takes image_embeds of this width
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "image_size": TINY_IMAGE_SIZE,
    "patch_size": 8,
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-05,
}


@contextlib.contextmanager
def _quiet_deprecation():
    """Silence diffusers' "I2VGenXLPipeline has been deprecated" warning while the pipeline is built."""
    log = logging.getLogger("diffusers.pipelines.pipeline_utils")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def fit_text_encoder(pipeline):
    """Let diffusers 0.42.1's I2VGen-XL pipeline use a transformers 5 ``CLIPTextModel``; returns ``pipeline``.

    With its default ``clip_skip=1`` the pipeline applies ``text_encoder.text_model.final_layer_norm`` to the
    penultimate hidden states; transformers 5 flattened ``CLIPTextModel`` (its ``embeddings``, ``encoder`` and
    ``final_layer_norm`` are direct children, there is no ``text_model``), so the call fails with an
    ``AttributeError``. We give the encoder a plain (unregistered: not in its state dict or modules) ``text_model``
    attribute pointing at its own ``final_layer_norm``, the very module the older layout held: the same numbers.
    Idempotent; a text encoder that has ``text_model`` is left as it is."""
    encoder = pipeline.text_encoder
    if not hasattr(encoder, "text_model") and hasattr(encoder, "final_layer_norm"):
        object.__setattr__(encoder, "text_model", _TextModelView(encoder))
    return pipeline


class _TextModelView:
    """``text_encoder.text_model`` as diffusers reads it: ``final_layer_norm``, looked up on the encoder each time
    (so it follows the encoder through ``.to()`` and weight loading)."""

    def __init__(self, encoder):
        self._encoder = encoder

    @property
    def final_layer_norm(self):
        return self._encoder.final_layer_norm


def _tokenizer():
    """The real CLIP tokenizer built offline; the tiny render components' one where open_clip's BPE is absent."""
    try:
        from storyreel.models.clip_tokenizer import build_clip_tokenizer

        return build_clip_tokenizer()
    except FileNotFoundError:
        from storyreel.models.loading import load_render_components

        return load_render_components("tiny").tokenizer


def build_tiny_i2vgen(seed: int = TINY_I2VGEN_SEED):
    """An ``I2VGenXLPipeline`` with every component at toy size, seeded (the same weights on every call, the
    caller's RNG untouched), on the CPU in float32: an ``I2VGenXLUNet``, an SD-style 4-block VAE (8 pixels per
    latent cell), a CLIP text encoder with the real vocabulary and the real CLIP tokenizer, a CLIP vision encoder
    whose projection is the UNet's cross-attention width, a ``CLIPImageProcessor`` at the encoder's size, and the
    real model's DDIM scheduler (:data:`I2VGEN_SCHEDULER_CONFIG`)."""
    from diffusers import AutoencoderKL, DDIMScheduler, I2VGenXLPipeline, I2VGenXLUNet
    from transformers import (
        CLIPImageProcessor,
        CLIPTextConfig,
        CLIPTextModel,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )

    def plain(config: dict) -> dict:
        return {key: list(value) if isinstance(value, tuple) else value for key, value in config.items()}

    with seeded(seed):
        unet = I2VGenXLUNet(**plain(TINY_I2VGEN_UNET_CONFIG)).eval()
        vae = AutoencoderKL(**plain(TINY_I2VGEN_VAE_CONFIG)).eval()
        text_encoder = CLIPTextModel(CLIPTextConfig(**TINY_I2VGEN_TEXT_CONFIG)).eval()
        image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(**TINY_I2VGEN_IMAGE_CONFIG)).eval()
    feature_extractor = CLIPImageProcessor(
        size={"shortest_edge": TINY_IMAGE_SIZE}, crop_size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE},
        do_center_crop=True, do_normalize=True, do_resize=True, do_rescale=True,
        image_mean=[0.48145466, 0.4578275, 0.40821073], image_std=[0.26862954, 0.26130258, 0.27577711])
    scheduler = DDIMScheduler(**I2VGEN_SCHEDULER_CONFIG)
    with _quiet_deprecation():
        pipeline = I2VGenXLPipeline(vae=vae, text_encoder=text_encoder, tokenizer=_tokenizer(),
                                    image_encoder=image_encoder, feature_extractor=feature_extractor, unet=unet,
                                    scheduler=scheduler)
    pipeline.set_progress_bar_config(disable=True)
    return fit_text_encoder(pipeline)


# -- loading --------------------------------------------------------------------------------------------------

def hub_models(spec: str | os.PathLike) -> list[HubModel]:
    """The hub repository ``spec`` names and the files it needs (none for ``tiny`` or a local folder)."""
    from storyreel.models.hub_models import i2vgen_model, is_hub_id

    text = os.fspath(spec)
    if not is_hub_id(text):
        return []

    return [i2vgen_model(text)]


def load_i2vgen(spec: str | os.PathLike = I2VGEN_XL, device: torch.device | str | None = None,
                dtype: torch.dtype = torch.float32, variant: str | None = None):
    """An ``I2VGenXLPipeline`` on ``device`` (default the CPU) in ``dtype``, its progress bar off.

    ``spec``: ``"tiny"`` (:func:`build_tiny_i2vgen`), a hub id (``ali-vilab/i2vgen-xl``; ``variant="fp16"`` for
    its half-precision files) or a local folder in the diffusers layout (``model_index.json`` and one folder per
    component). Only safetensors are loaded; raises :class:`storyreel.errors.ModelLoadError` naming the source
    and what to do instead.
    """
    device = torch.device(device) if device is not None else torch.device("cpu")
    text = os.fspath(spec)
    if text == "tiny":
        pipeline = build_tiny_i2vgen()
    else:
        pipeline = _load_pretrained(text, dtype, variant)
    from storyreel.models.architectures import quiet_dtype_warning

    with quiet_dtype_warning():
        pipeline = pipeline.to(device, dtype)
    pipeline.set_progress_bar_config(disable=True)
    return fit_text_encoder(pipeline)


def _load_pretrained(spec: str, dtype: torch.dtype, variant: str | None):
    from diffusers import I2VGenXLPipeline

    path = Path(spec).expanduser()
    if is_pickle_checkpoint(path):
        raise ModelLoadError(f"cannot load the I2VGen-XL model '{spec}': {PICKLE_REFUSAL}, so only safetensors are "
                             "loaded; convert it once in a trusted environment (I2VGenXLPipeline.from_pretrained "
                             "then save_pretrained with safe_serialization=True) and give the folder")
    if path.is_file():
        raise ModelLoadError(f"cannot load the I2VGen-XL model '{spec}': a single file is not supported; give a "
                             "folder in the diffusers layout (model_index.json and one folder per component) or a "
                             f"hub id such as {I2VGEN_XL}")
    if path.is_dir():
        _check_folder(path, variant)
        try:
            with _quiet_deprecation():
                return I2VGenXLPipeline.from_pretrained(str(path), dtype=dtype, use_safetensors=True,
                                                        variant=variant, local_files_only=True)
        except Exception as exc:
            raise ModelLoadError(f"cannot load the I2VGen-XL model from the folder '{path}': {first_line(exc)}. "
                                 "Check that it holds model_index.json and each component's config and .safetensors "
                                 "weights") from exc
    if not _HUB_ID.match(spec) or spec.startswith((".", "~")):
        raise ModelLoadError(f"cannot load the I2VGen-XL model: no such folder '{path}' (give a local folder in the "
                             f"diffusers layout, a hub id such as {I2VGEN_XL}, or 'tiny')")
    ensure_available(hub_models(spec))  # from the cache, or the hub asked once: offline is known at once
    try:
        with _quiet_deprecation():
            return I2VGenXLPipeline.from_pretrained(spec, dtype=dtype, use_safetensors=True, variant=variant,
                                                    local_files_only=offline_requested())
    except Exception as exc:
        reason = first_line(exc)
        if offline_requested():
            reason += " (the hub is offline, HF_HUB_OFFLINE is set, and the files are not in the local cache)"
        raise ModelLoadError(
            f"cannot load the I2VGen-XL model '{spec}' from the hub: {reason}. Without network access, download it "
            f"once (hf download {spec} --local-dir DIR) and give DIR instead, or use 'tiny' (the same architecture "
            f"at toy size with random weights). If '{spec}' was meant as a local path: no such folder. Only "
            "safetensors weights are loaded.") from exc


def _check_folder(folder: Path, variant: str | None) -> None:
    if not (folder / "model_index.json").is_file():
        raise ModelLoadError(f"cannot load the I2VGen-XL model from '{folder}': it holds no model_index.json; give "
                             "the pipeline's folder in the diffusers layout (model_index.json and one folder per "
                             "component: vae, text_encoder, tokenizer, image_encoder, feature_extractor, unet, "
                             "scheduler)")
    for name in _WEIGHTED:
        sub = folder / name
        files = [p.name for p in sub.iterdir() if p.is_file()] if sub.is_dir() else []
        if not files:
            raise ModelLoadError(f"cannot load the I2VGen-XL model from '{folder}': its '{name}' folder is missing "
                                 "or empty")
        safe = [f for f in files if f.endswith((".safetensors", ".safetensors.index.json"))]
        if variant is not None:
            safe = [f for f in safe if f".{variant}." in f]
        if not safe:
            unsafe = sorted(f for f in files if Path(f).suffix.lower() in PICKLE_SUFFIXES)
            found = f" (it holds {', '.join(unsafe)})" if unsafe else ""
            which = f"{variant} " if variant is not None else ""
            raise ModelLoadError(f"cannot load the I2VGen-XL model from '{folder}': '{name}' has no {which}"
                                 f".safetensors weights{found}; {PICKLE_REFUSAL}, so only safetensors are loaded: "
                                 "convert them (load once in a trusted environment and save_pretrained with "
                                 "safe_serialization=True)")


# -- animating ------------------------------------------------------------------------------------------------
def _as_pil(image):
    """A keyframe (H x W x 3 uint8 numpy or torch, 3 x H x W float in [0, 1], or a PIL image) → a PIL RGB image."""
    from PIL import Image

    if isinstance(image, Image.Image):
        return image.convert("RGB")
    array = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if array.ndim == 3 and array.shape[0] == 3 and array.shape[-1] != 3:
        array = array.transpose(1, 2, 0)
    if array.ndim != 3 or array.shape[-1] != 3:
        raise ValueError(f"a keyframe must be H x W x 3 (uint8) or 3 x H x W (float in [0, 1]), got shape "
                         f"{array.shape}")
    if array.dtype != np.uint8:
        if not np.issubdtype(array.dtype, np.floating):
            raise ValueError(f"a keyframe must be uint8 or float in [0, 1], got {array.dtype}")
        if array.size and (array.min() < 0 or array.max() > 1):
            raise ValueError(f"a float keyframe must be in [0, 1], got values in [{array.min():.3g}, "
                             f"{array.max():.3g}]")
        array = (array * 255).round().astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(array), "RGB")


def animate_keyframe(pipeline, image, prompt: str, negative_prompt: str | None, num_frames: int, height: int,
                     width: int, steps: int, guidance: float, seed: int, fps: float, *, eta: float = 0.0,
                     decode_chunk_size: int | None = 1) -> np.ndarray:
    """``num_frames`` x ``height`` x ``width`` x 3 uint8: the keyframe ``image`` animated by one call of the
    I2VGen-XL ``pipeline`` with ``prompt`` (and ``negative_prompt``), ``steps`` DDIM steps, classifier-free
    ``guidance`` (on when above 1), ``target_fps`` = ``fps`` rounded, the initial noise from a CPU generator
    seeded with ``seed`` and torch's global RNG seeded with ``seed`` for the call (see the module's docstring)."""
    if height % 8 or width % 8 or height <= 0 or width <= 0:
        raise ValueError(f"I2VGen-XL renders sizes divisible by 8, got {height} x {width}")
    if num_frames < 1 or steps < 1:
        raise ValueError(f"I2VGen-XL needs at least one frame and one step, got {num_frames} frames, {steps} steps")
    target_fps = int(round(float(fps)))
    if target_fps < 1:
        raise ValueError(f"I2VGen-XL's target_fps must be a positive frame rate, got {fps}")
    keyframe = _as_pil(image)
    fit_text_encoder(pipeline)
    device = getattr(pipeline, "_execution_device", None) or pipeline.device
    generator = torch.Generator(device="cpu").manual_seed(int(seed))
    with seeded(int(seed), torch.device(device)):
        video = pipeline(image=keyframe, prompt=prompt, negative_prompt=negative_prompt, height=height, width=width,
                         target_fps=target_fps, num_frames=num_frames, num_inference_steps=steps,
                         guidance_scale=guidance, eta=eta, decode_chunk_size=decode_chunk_size, generator=generator,
                         output_type="np").frames
    return to_uint8(video[0])


def to_uint8(frames) -> np.ndarray:
    """Frames in [0, 1] (as the pipeline's ``output_type="np"`` gives them) → uint8, rounded as diffusers' PIL
    output rounds them."""
    frames = np.asarray(frames, dtype=np.float32)
    return np.clip((frames * 255).round(), 0, 255).astype(np.uint8)


def record(pipeline_spec: str | os.PathLike, pipeline: Any = None) -> dict:
    """What animated the keyframes, for a shot's sidecar and the report: the model (``tiny``, the hub id, or the
    local folder's absolute path), that it is diffusers' ``I2VGenXLPipeline`` with no depth guidance, and with
    ``pipeline`` its scheduler and dtype."""
    from diffusers import __version__ as diffusers_version

    text = os.fspath(pipeline_spec)
    if text == "tiny":
        model = f"tiny (seed {TINY_I2VGEN_SEED})"
    elif Path(text).expanduser().is_dir():
        model = str(Path(text).expanduser().resolve())
    else:
        model = text
    result = {
        "animator": ANIMATOR_NAME,
        "model": model,
        "pipeline": "diffusers.I2VGenXLPipeline",
        "diffusers": diffusers_version,
        "depth_guidance": False,
        "conditioning": "the keyframe (VAE latents and CLIP image embedding), the prompt and target_fps; the "
                        "footage's depth is not used",
    }
    if pipeline is not None:
        result["scheduler"] = type(pipeline.scheduler).__name__
        result["prediction_type"] = pipeline.scheduler.config.get("prediction_type")
        result["dtype"] = str(pipeline.unet.dtype).removeprefix("torch.")
    return result
