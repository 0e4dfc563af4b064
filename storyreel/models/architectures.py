"""The render model's architectures: configurations at real and toy size, and the code that builds them.

A render model is an SD1.5 base (CLIP tokenizer and text encoder, VAE, UNet), an AnimateDiff motion
adapter merged into the UNet (``UNet2DConditionModel`` + ``MotionAdapter`` → ``UNetMotionModel``), a
depth ControlNet and a noise scheduler (:mod:`storyreel.models.schedulers`). Which preset uses what is
the registry's business (:mod:`storyreel.models.presets`); this module builds the generated ones:

* ``tiny``: the same architectures at toy size with seeded random weights, built in code: every
  component runs the real diffusers / transformers code path on CPU in milliseconds. The tokenizer is
  the real CLIP BPE tokenizer (:mod:`storyreel.models.clip_tokenizer`). The tiny ControlNet's zero-initialised
  layers are perturbed (see :func:`perturb_controlnet`), so depth changes its output.
* ``sd15-random``: every component at its real size (the configs below, checked against the real
  config files by the tests) with seeded random weights, its ControlNet perturbed like the tiny one's: for
  GPU benchmarks and shape checks without downloads. It can be built on the meta device to count
  parameters; on CUDA its weights are created on the GPU (on 2 CPU cores: ~18 s and ~13 GB peak).

Any component can be replaced by a hub id or a local folder (:mod:`storyreel.models.loading`).
"""

from __future__ import annotations

import contextlib
import copy
import logging

import torch

from storyreel.seeding import seeded

TINY_SEED = 0
RANDOM_SEED = 0


# -- real sizes, written out (diffusers / transformers config keys) ------------------------------------
# stable-diffusion-v1-5 unet/config.json (the keys it sets; every other key takes diffusers' default).
SD15_UNET_CONFIG = {
    "act_fn": "silu",
    "attention_head_dim": 8,
    "block_out_channels": (320, 640, 1280, 1280),
    "center_input_sample": False,
    "cross_attention_dim": 768,
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "downsample_padding": 1,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "sample_size": 64,
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
}
# stable-diffusion-v1-5 vae/config.json, plus SD1.5's latent scaling factor (diffusers' default).
SD15_VAE_CONFIG = {
    "act_fn": "silu",
    "block_out_channels": (128, 256, 512, 512),
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 512,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "scaling_factor": 0.18215,
}
# stable-diffusion-v1-5 text_encoder/config.json: the text tower of openai/clip-vit-large-patch14. The
# token ids (bos 0, eos 2, pad 1) are the file's: with eos 2 transformers pools at the highest id, the
# behaviour of the real checkpoint (equal to pooling at <|endoftext|> with CLIP's vocabulary).
SD15_TEXT_ENCODER_CONFIG = {
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "projection_dim": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-05,
    "attention_dropout": 0.0,
    "dropout": 0.0,
    "initializer_range": 0.02,
    "initializer_factor": 1.0,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "pad_token_id": 1,
}
# guoyww/animatediff-motion-adapter-v1-5-3: the v1-5-2 config without the motion mid block.
MOTION_ADAPTER_CONFIG = {
    "block_out_channels": (320, 640, 1280, 1280),
    "motion_layers_per_block": 2,
    "motion_mid_block_layers_per_block": 1,
    "motion_max_seq_length": 32,
    "motion_norm_num_groups": 32,
    "motion_num_attention_heads": 8,
    "use_motion_mid_block": False,
}
# The SD1.5 ControlNet (v1.1 depth, and Depth Anything's re-trained depth ControlNet): the UNet's
# encoder plus the conditioning embedding (3 input channels, RGB order).
SD15_CONTROLNET_CONFIG = {
    "act_fn": "silu",
    "addition_embed_type": None,
    "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": None,
    "attention_head_dim": 8,
    "block_out_channels": (320, 640, 1280, 1280),
    "class_embed_type": None,
    "conditioning_channels": 3,
    "conditioning_embedding_out_channels": (16, 32, 96, 256),
    "controlnet_conditioning_channel_order": "rgb",
    "cross_attention_dim": 768,
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "downsample_padding": 1,
    "encoder_hid_dim": None,
    "encoder_hid_dim_type": None,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "global_pool_conditions": False,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_scale_factor": 1,
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "num_attention_heads": None,
    "num_class_embeds": None,
    "only_cross_attention": False,
    "projection_class_embeddings_input_dim": None,
    "resnet_time_scale_shift": "default",
    "transformer_layers_per_block": 1,
    "upcast_attention": False,
    "use_linear_projection": False,
}

# -- the tiny preset ------------------------------------------------------------------------------------
# Toy sizes in the spirit of diffusers' own AnimateDiff + ControlNet tests, with the real geometry where it
# matters downstream: a 4-block VAE (8 pixels per latent cell, like SD1.5), a ControlNet whose conditioning
# embedding downsamples 8x, cross-attention width = the text encoder's hidden size, the real CLIP vocabulary.
TINY_TEXT_HIDDEN = 32
TINY_UNET_CONFIG = {
    "block_out_channels": (8, 16),
    "layers_per_block": 2,
    "sample_size": 8,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
    "cross_attention_dim": TINY_TEXT_HIDDEN,
    "attention_head_dim": 2,
    "norm_num_groups": 2,
}
TINY_VAE_CONFIG = {
    "block_out_channels": (8, 8, 16, 16),
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 1,
    "norm_num_groups": 2,
    "sample_size": 64,
    "scaling_factor": 0.18215,
}
TINY_TEXT_ENCODER_CONFIG = {
    **SD15_TEXT_ENCODER_CONFIG,
    "hidden_size": TINY_TEXT_HIDDEN,
    "intermediate_size": 64,
    "projection_dim": TINY_TEXT_HIDDEN,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
}
TINY_MOTION_ADAPTER_CONFIG = {
    "block_out_channels": (8, 16),
    "motion_layers_per_block": 2,
    "motion_mid_block_layers_per_block": 1,
    "motion_max_seq_length": 32,
    "motion_norm_num_groups": 2,
    "motion_num_attention_heads": 2,
    "use_motion_mid_block": False,
}
TINY_CONTROLNET_CONFIG = {
    "block_out_channels": (8, 16),
    "layers_per_block": 2,
    "in_channels": 4,
    "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
    "cross_attention_dim": TINY_TEXT_HIDDEN,
    "attention_head_dim": 2,
    "norm_num_groups": 2,
    "conditioning_channels": 3,
    "conditioning_embedding_out_channels": (4, 8, 8, 16),
}
# -- the toy preset -------------------------------------------------------------------------------------
# Trained here on the toy world (toy_world/train_render.py): 64x64 frames, a 3-block VAE (4 pixels per latent
# cell, so a 64x64 frame is a 16x16 latent with room for a figure's silhouette), the real CLIP vocabulary.
TOY_TEXT_HIDDEN = 32
TOY_TEXT_ENCODER_CONFIG = {
    **SD15_TEXT_ENCODER_CONFIG,
    "hidden_size": TOY_TEXT_HIDDEN,
    "intermediate_size": 64,
    "projection_dim": TOY_TEXT_HIDDEN,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
}
TOY_VAE_CONFIG = {
    "block_out_channels": (16, 32, 64),
    "down_block_types": ("DownEncoderBlock2D",) * 3,
    "up_block_types": ("UpDecoderBlock2D",) * 3,
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "sample_size": 64,
    "scaling_factor": 1.0,  # set from the trained latents' spread (toy_world.train_render.train_vae)
}
TOY_UNET_CONFIG = {
    "block_out_channels": (32, 64, 64),
    "layers_per_block": 1,
    "sample_size": 16,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),  # attention at 8x8, 4x4
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "cross_attention_dim": TOY_TEXT_HIDDEN,
    "attention_head_dim": 8,
    "norm_num_groups": 8,
}
TOY_MOTION_ADAPTER_CONFIG = {
    "block_out_channels": (32, 64, 64),
    "motion_layers_per_block": 1,
    "motion_mid_block_layers_per_block": 1,
    "motion_max_seq_length": 32,
    "motion_norm_num_groups": 8,
    "motion_num_attention_heads": 4,
    "use_motion_mid_block": False,
}
TOY_CONTROLNET_CONFIG = {  # ControlNetModel.from_unet(toy UNet) with a 4x conditioning embedding
    "block_out_channels": (32, 64, 64),
    "layers_per_block": 1,
    "in_channels": 4,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "cross_attention_dim": TOY_TEXT_HIDDEN,
    "attention_head_dim": 8,
    "norm_num_groups": 8,
    "conditioning_channels": 3,
    "conditioning_embedding_out_channels": (16, 32, 64),
}
TOY_SEED = 0

# How the tiny ControlNet is perturbed (see perturb_controlnet).
CONDITIONING_GAIN = 1.5
CONDITIONING_EMBEDDING_STD = 0.5  # about the spread of the UNet's first features
ZERO_CONV_GAIN = 1.0

@contextlib.contextmanager
def _on_device(device: torch.device | None):
    """Create tensors directly on ``device`` ("meta" for shapes only, "cuda" to skip a CPU copy)."""
    if device is None or device.type == "cpu":
        yield
    else:
        with device:
            yield


def _config(config: dict) -> dict:
    return {key: list(value) if isinstance(value, tuple) else copy.deepcopy(value) for key, value in config.items()}


def text_encoder_config(config: dict):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(**_config(config))


def build_text_encoder(config: dict):
    from transformers import CLIPTextModel

    return CLIPTextModel(text_encoder_config(config)).eval()


def build_vae(config: dict):
    from diffusers import AutoencoderKL

    return AutoencoderKL(**_config(config)).eval()


def build_unet2d(config: dict):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**_config(config)).eval()


def build_motion_adapter(config: dict):
    from diffusers import MotionAdapter

    return MotionAdapter(**_config(config)).eval()


def build_controlnet(config: dict):
    from diffusers import ControlNetModel

    return ControlNetModel(**_config(config)).eval()


@contextlib.contextmanager
def quiet_dtype_warning():
    """Silence diffusers 0.42.1's warning on every ``ModelMixin.to(dtype)`` (even with no float32 modules)."""
    log = logging.getLogger("diffusers.models.modeling_utils")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def merge_motion_adapter(unet2d, motion_adapter):
    """``UNetMotionModel.from_unet2d``: the UNet with the adapter's motion modules inserted (weights copied)."""
    from diffusers import UNetMotionModel

    with quiet_dtype_warning():
        return UNetMotionModel.from_unet2d(unet2d, motion_adapter).eval()


def _scaled_normal_(conv: torch.nn.Conv2d, gain: float) -> None:
    """Weights ~ N(0, gain^2 / fan_in), bias 0: a variance-preserving init scaled by ``gain``."""
    fan_in = conv.weight[0].numel()
    torch.nn.init.normal_(conv.weight, std=gain / fan_in**0.5)
    if conv.bias is not None:
        torch.nn.init.zeros_(conv.bias)


@torch.no_grad()
def perturb_controlnet(controlnet) -> None:
    """Give a freshly initialised ControlNet layers through which its conditioning reaches its output.

    A new ControlNet changes nothing: its output convolutions (``controlnet_down_blocks``,
    ``controlnet_mid_block``) start at zero, and so does the last convolution of its conditioning
    embedding (``controlnet_cond_embedding.conv_out``). Perturbing only the output convolutions makes the
    ControlNet change the UNet, but not with the depth: the embedding's input still passes through a zero
    convolution, and with the default (shrinking) init and non-zero biases of the embedding's other
    convolutions the image would be lost in the biases anyway. So the whole conditioning embedding gets
    variance-preserving weights (gain 1.5, zero biases), its output convolution scaled so that the
    embedding of a fixed ramp image has a standard deviation of 0.5 (the order of the latent features
    it is added to, at any model size), and the zero convolutions get gain 1. Draws from the global torch
    RNG: call it inside a seeded context.
    """
    embedding = controlnet.controlnet_cond_embedding
    for conv in (embedding.conv_in, *embedding.blocks, embedding.conv_out):
        _scaled_normal_(conv, CONDITIONING_GAIN)
    for conv in (*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block):
        _scaled_normal_(conv, ZERO_CONV_GAIN)
    weight = embedding.conv_out.weight
    ramp = torch.linspace(0, 1, 64, device=weight.device, dtype=weight.dtype)
    probe = torch.stack([ramp.expand(64, 64), ramp[:, None].expand(64, 64), ramp.outer(ramp)])
    channels = embedding.conv_in.in_channels
    probe = probe.repeat((channels + 2) // 3, 1, 1)[:channels][None]
    weight.mul_(CONDITIONING_EMBEDDING_STD / embedding(probe).std().clamp_min(1e-12))


COMPONENT_NAMES = ("tokenizer", "text_encoder", "vae", "unet", "motion_adapter", "controlnet")
TINY_CONFIGS = {"text_encoder": TINY_TEXT_ENCODER_CONFIG, "vae": TINY_VAE_CONFIG, "controlnet": TINY_CONTROLNET_CONFIG,
                "motion_adapter": TINY_MOTION_ADAPTER_CONFIG, "unet": TINY_UNET_CONFIG}
TOY_CONFIGS = {"text_encoder": TOY_TEXT_ENCODER_CONFIG, "vae": TOY_VAE_CONFIG, "controlnet": TOY_CONTROLNET_CONFIG,
               "motion_adapter": TOY_MOTION_ADAPTER_CONFIG, "unet": TOY_UNET_CONFIG}
SD15_RANDOM_CONFIGS = {"text_encoder": SD15_TEXT_ENCODER_CONFIG, "vae": SD15_VAE_CONFIG,
                       "controlnet": SD15_CONTROLNET_CONFIG, "motion_adapter": MOTION_ADAPTER_CONFIG,
                       "unet": SD15_UNET_CONFIG}
_BUILDERS = {"text_encoder": build_text_encoder, "vae": build_vae, "controlnet": build_controlnet,
             "motion_adapter": build_motion_adapter, "unet": build_unet2d}


def _build_preset(configs: dict, seed: int, device: torch.device | None, only, merge: bool, perturb: bool) -> dict:
    from storyreel.models.clip_tokenizer import build_clip_tokenizer

    wanted = set(COMPONENT_NAMES if only is None else only)
    unknown = wanted - set(COMPONENT_NAMES)
    if unknown:
        raise ValueError(f"unknown components {sorted(unknown)}; expected some of {', '.join(COMPONENT_NAMES)}")
    if "unet" in wanted and merge:
        wanted.add("motion_adapter")
    built: dict = dict.fromkeys(COMPONENT_NAMES)
    meta = device is not None and device.type == "meta"
    with seeded(seed, device), _on_device(device):
        for offset, name in enumerate(_BUILDERS):
            if name in wanted:
                # one seed per component: a subset is built with the same weights as the whole preset
                torch.manual_seed(seed + 1 + offset)
                built[name] = _BUILDERS[name](configs[name])
                if name == "controlnet" and perturb and not meta:
                    perturb_controlnet(built[name])
        if built["unet"] is not None and merge:
            built["unet"] = merge_motion_adapter(built["unet"], built["motion_adapter"])
    if "tokenizer" in wanted:
        built["tokenizer"] = build_clip_tokenizer()
    return built


def build_tiny_components(device: torch.device | None = None, only=None, merge: bool = True) -> dict:
    """The tiny preset's components, seeded (identical weights on every call), its ControlNet perturbed.

    Returns a dict with ``tokenizer``, ``text_encoder``, ``vae``, ``unet`` (a ``UNetMotionModel``; with
    ``merge=False`` the ``UNet2DConditionModel``), ``motion_adapter`` and ``controlnet``; ``only`` limits
    the build to some of them (the others are None). ``device`` "meta" builds shapes only.
    """
    return _build_preset(TINY_CONFIGS, TINY_SEED, device, only, merge, perturb=True)


def build_random_components(device: torch.device | None = None, only=None, merge: bool = True) -> dict:
    """The ``sd15-random`` preset: every component at its real size with seeded random weights.

    ``device`` is where the weights are created: "meta" (no memory: shapes and parameter counts), "cuda"
    (fast, for benchmarks) or the CPU (None). ``only`` and ``merge`` as in :func:`build_tiny_components`.
    Its ControlNet is perturbed like the tiny one's, so depth changes its output too.
    """
    return _build_preset(SD15_RANDOM_CONFIGS, RANDOM_SEED, device, only, merge, perturb=True)


def build_toy_components(device: torch.device | None = None, only=None) -> dict:
    """The toy preset's components before training: seeded fresh weights, the UNet not merged (training merges
    it for the motion stage) and the ControlNet not perturbed (training starts it from the trained UNet)."""
    return _build_preset(TOY_CONFIGS, TOY_SEED, device, only, merge=False, perturb=False)
