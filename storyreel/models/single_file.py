"""Single-file weights: SD1.5 checkpoints in the original (LDM) layout, one-file motion adapters, UNet LoRAs.

What this module owns:

* **Reading a safetensors header** (:func:`tensor_shapes`): tensor names and shapes, without reading a weight
  and without torch, so a model specification is checked before anything loads.
* **Checks against an architecture** (the configuration dicts of :mod:`storyreel.models.architectures`):
  :func:`sd_checkpoint_problem` says why a single file is not an SD1.5 checkpoint of that architecture (an
  SD2.x or SDXL file, an inpainting UNet, another size, a missing VAE or text encoder);
  :func:`motion_adapter_problem` and :func:`lora_problem` do the same for a motion adapter and a LoRA file.
  Each returns a sentence (None when the file fits): the caller names the flag or TOML key.
* **Loading** through diffusers' own single-file code: :func:`load_sd_checkpoint` converts the original
  layout with diffusers' converters (``convert_ldm_unet_checkpoint``, ``convert_ldm_vae_checkpoint``) and
  loads with ``from_single_file`` (UNet, VAE) and ``create_diffusers_clip_model_from_ldm`` (text encoder)
  against the architecture's configs, written to a temporary diffusers-layout folder passed as ``config=``
  with ``local_files_only=True``: nothing is downloaded. :func:`load_motion_adapter_file` loads a
  diffusers- or original-format motion module file into a plain ``MotionAdapter`` (how
  AnimateDiff-Lightning ships). :func:`fuse_lora_file` fuses a UNet LoRA (diffusers or kohya format, read by
  diffusers' ``lora_state_dict``) into the UNet and removes the adapter layers.

Only ``.safetensors`` files are read (:mod:`storyreel.weights_policy`).
"""

from __future__ import annotations

import copy
import json
import re
import tempfile
from pathlib import Path
from typing import Any

LDM_UNET_PREFIX = "model.diffusion_model."
LDM_VAE_PREFIXES = ("first_stage_model.", "vae.")
LDM_TEXT_ENCODER_PREFIX = "cond_stage_model.transformer.text_model."
OPEN_CLIP_PREFIX = "cond_stage_model.model."
SDXL_PREFIX = "conditioner.embedders."
SD_CHECKPOINT_PARTS = ("text_encoder", "vae", "unet")
LORA_ADAPTER_NAME = "storyreel_fused_lora"
_MOTION_PROJ_IN = re.compile(r"^down_blocks\.0\.motion_modules\.0\.(temporal_transformer\.)?proj_in\.weight$")


class UnreadableWeightsFile(ValueError):
    """A file that is not a readable safetensors file (a renamed pickle, a truncated download)."""


class SingleFileMismatch(ValueError):
    """Single-file weights that do not fit the architecture they are loaded into; the message says how."""


# -- reading headers ------------------------------------------------------------------------------------
def tensor_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """``{tensor name: shape}`` from a safetensors file's header (no weight is read, torch is not imported)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as handle:
            return {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}
    except (SafetensorError, OSError) as exc:
        raise UnreadableWeightsFile(f"'{path}' is not a readable safetensors file ({exc})") from None


def _count(shapes: dict, pattern: str) -> int:
    """How many distinct values the ``(\\d+)`` group of ``pattern`` takes over the tensor names."""
    compiled = re.compile(pattern)
    return len({match.group(1) for name in shapes if (match := compiled.match(name))})


# -- SD1.5 checkpoints in the original layout -----------------------------------------------------------
def _vae_prefix(shapes: dict) -> str | None:
    return next((prefix for prefix in LDM_VAE_PREFIXES if any(name.startswith(prefix) for name in shapes)), None)


def _expect(shapes: dict, name: str, want: tuple, what: str, label: str) -> str | None:
    found = shapes.get(name)
    if found is None:
        return f"it has no '{name}' ({what})"
    if tuple(found) != tuple(want):
        return f"its {what} is {list(found)}, {label}'s {list(want)} ('{name}')"
    return None


def _unet_problem(shapes: dict, config: dict, label: str) -> str | None:
    unet = LDM_UNET_PREFIX
    if not any(name.startswith(unet) for name in shapes):
        if any(name.startswith(SDXL_PREFIX) for name in shapes):
            return "it is an SDXL checkpoint"
        if any(name.startswith(("down_blocks.", "unet.down_blocks.")) for name in shapes):
            return ("it holds diffusers-layout weights, not an original-layout checkpoint; give the diffusers "
                    "folder (tokenizer/, text_encoder/, vae/, unet/) instead")
        return f"it holds no Stable Diffusion UNet ('{unet}*' weights)"
    channels = list(config["block_out_channels"])
    per_block = config["layers_per_block"]
    problem = _expect(shapes, f"{unet}input_blocks.0.0.weight", (channels[0], config["in_channels"], 3, 3),
                      "UNet's input convolution", label)
    if problem:
        if unet + "input_blocks.0.0.weight" in shapes and shapes[unet + "input_blocks.0.0.weight"][1] == 9:
            problem += " (an inpainting UNet)"
        return problem
    attention_block = next((b for b, kind in enumerate(config["down_block_types"]) if kind.startswith("CrossAttn")),
                           None)
    if attention_block is not None:
        key = f"{unet}input_blocks.{attention_block * (per_block + 1) + 1}.1.transformer_blocks.0.attn2.to_k.weight"
        found = shapes.get(key)
        if found is None:
            return f"it has no '{key}' (the UNet's first cross-attention)"
        if len(found) != 2 or found[1] != config["cross_attention_dim"]:
            width = found[-1]
            return (f"its UNet attends to {width}-d text features, {label}'s to {config['cross_attention_dim']}-d"
                    + (" (an SD2.x checkpoint)" if width == 1024 else ""))
    found_channels = [shapes.get(f"{unet}input_blocks.{b * (per_block + 1) + 1}.0.out_layers.3.weight", (None,))[0]
                      for b in range(len(channels))]
    if found_channels != channels:
        return f"its UNet blocks have {found_channels} channels, {label}'s {channels}"
    outputs = _count(shapes, re.escape(unet) + r"output_blocks\.(\d+)\.")
    if outputs != len(channels) * (per_block + 1):
        return (f"its UNet has {outputs} output blocks, {label}'s {len(channels) * (per_block + 1)} "
                f"({len(channels)} levels x {per_block + 1})")
    return _expect(shapes, f"{unet}out.2.weight", (config["out_channels"], channels[0], 3, 3),
                   "UNet's output convolution", label)


def _vae_problem(shapes: dict, config: dict, label: str) -> str | None:
    prefix = _vae_prefix(shapes)
    if prefix is None:
        return "it holds no VAE ('first_stage_model.*' weights); give the VAE separately (--vae or [components] vae)"
    channels = list(config["block_out_channels"])
    latent = config["latent_channels"]
    for name, want, what in ((f"{prefix}encoder.conv_in.weight", (channels[0], config["in_channels"], 3, 3),
                              "VAE's input convolution"),
                             (f"{prefix}decoder.conv_out.weight", (config["out_channels"], channels[0], 3, 3),
                              "VAE's output convolution"),
                             (f"{prefix}quant_conv.weight", (2 * latent, 2 * latent, 1, 1), "VAE's latent projection")):
        problem = _expect(shapes, name, want, what, label)
        if problem:
            return problem
    levels = _count(shapes, re.escape(prefix) + r"encoder\.down\.(\d+)\.")
    if levels != len(channels):
        return f"its VAE has {levels} levels, {label}'s {len(channels)}"
    return None


def _text_encoder_problem(shapes: dict, config: dict, label: str) -> str | None:
    prefix = LDM_TEXT_ENCODER_PREFIX
    if not any(name.startswith(prefix) for name in shapes):
        if any(name.startswith(OPEN_CLIP_PREFIX) for name in shapes):
            return "its text encoder is OpenCLIP ViT-H (an SD2.x checkpoint), not SD1.5's CLIP ViT-L"
        return (f"it holds no text encoder ('{prefix}*' weights); give the text encoder separately "
                "([components] text_encoder)")
    hidden = config["hidden_size"]
    for name, want, what in ((f"{prefix}embeddings.token_embedding.weight", (config["vocab_size"], hidden),
                              "token embedding"),
                             (f"{prefix}embeddings.position_embedding.weight",
                              (config["max_position_embeddings"], hidden), "position embedding")):
        problem = _expect(shapes, name, want, f"text encoder's {what}", label)
        if problem:
            return problem
    layers = _count(shapes, re.escape(prefix) + r"encoder\.layers\.(\d+)\.")
    if layers != config["num_hidden_layers"]:
        return f"its text encoder has {layers} layers, {label}'s {config['num_hidden_layers']}"
    return None


def sd_checkpoint_problem(shapes: dict, configs: dict, parts=SD_CHECKPOINT_PARTS,
                          label: str = "SD1.5") -> str | None:
    """Why a single-file checkpoint (its :func:`tensor_shapes`) is not an SD1.5 checkpoint of the architecture
    ``configs`` (``{"unet", "vae", "text_encoder": config dict}``, named ``label`` in the sentence), checking
    the ``parts`` that will be loaded from it; None when it fits."""
    checks = {"unet": _unet_problem, "vae": _vae_problem, "text_encoder": _text_encoder_problem}
    for part in ("unet", "vae", "text_encoder"):  # the UNet first: it tells an SD2.x or SDXL file best
        if part in parts:
            problem = checks[part](shapes, configs[part], label)
            if problem:
                return problem
    return None


def folder_problem(folder: Path, configs: dict, label: str = "SD1.5") -> str | None:
    """Why a diffusers SD1.5-layout folder is not of the architecture ``configs``, from its ``unet/config.json``
    and ``text_encoder/config.json`` (what they do not set is not compared); None when it fits or when the
    folder has no such files (the loader then says what is missing)."""
    problems = []
    unet_file, text_file = folder / "unet" / "config.json", folder / "text_encoder" / "config.json"
    for file, config, keys in (
            (unet_file, configs["unet"], ("in_channels", "out_channels", "block_out_channels", "layers_per_block",
                                          "cross_attention_dim", "down_block_types", "up_block_types")),
            (text_file, configs["text_encoder"], ("hidden_size", "num_hidden_layers", "vocab_size"))):
        if not file.is_file():
            continue
        try:
            found = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            return f"cannot read its {file.parent.name}/config.json ({exc})"
        for key in keys:
            if key in found and key in config and _plain(found[key]) != _plain(config[key]):
                problems.append(f"{file.parent.name}/config.json has {key} {_plain(found[key])}, "
                                f"{label}'s is {_plain(config[key])}")
    return "; ".join(problems[:3]) or None


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, (tuple, list)) else value


# -- motion adapters and LoRAs --------------------------------------------------------------------------
def motion_adapter_problem(shapes: dict, unet_config: dict, label: str = "SD1.5") -> str | None:
    """Why a single file is not a motion adapter for the UNet of ``unet_config``; None when it fits."""
    if any(name.startswith(LDM_UNET_PREFIX) for name in shapes):
        return "it is a whole Stable Diffusion checkpoint, not a motion adapter (give it as the base)"
    if not any(".motion_modules." in name for name in shapes):
        return "it holds no motion modules ('*.motion_modules.*' weights): not an AnimateDiff motion adapter"
    channels = list(unet_config["block_out_channels"])
    levels = _count(shapes, r"down_blocks\.(\d+)\.motion_modules\.")
    if levels != len(channels):
        return f"its motion modules cover {levels} UNet levels, {label}'s UNet has {len(channels)}"
    first = next((shape for name, shape in shapes.items() if _MOTION_PROJ_IN.match(name)), None)
    if first is not None and first[-1] != channels[0]:
        return f"its motion modules are for {first[-1]}-channel blocks, {label}'s first UNet block has {channels[0]}"
    return None


def motion_adapter_config(shapes: dict, base_config: dict) -> dict:
    """The ``MotionAdapter`` configuration of a single-file adapter: ``base_config`` (the architecture's) with
    what the file itself shows: a motion mid block or not, motion layers per block, the positional
    encoding's length. For an SD1.5 file with a mid block this is a plain ``MotionAdapter()``."""
    config = copy.deepcopy(base_config)
    mid_layers = _count(shapes, r"mid_block\.motion_modules\.(\d+)\.")
    config["use_motion_mid_block"] = mid_layers > 0
    if mid_layers:
        config["motion_mid_block_layers_per_block"] = mid_layers
    layers = _count(shapes, r"down_blocks\.0\.motion_modules\.(\d+)\.")
    if layers:
        config["motion_layers_per_block"] = layers
    lengths = [shape[1] for name, shape in shapes.items() if name.endswith((".pos_embed.pe", ".pos_encoder.pe"))
               and len(shape) == 3]
    if lengths:
        config["motion_max_seq_length"] = lengths[0]
    return config


def lora_problem(shapes: dict) -> str | None:
    """Why a single file is not a UNet LoRA; None when it looks like one."""
    names = list(shapes)
    if not any("lora" in name.lower() for name in names):
        return "it holds no LoRA weights (no '*lora*' tensors)"
    if any(name.startswith(("text_encoder.", "lora_te")) for name in names):
        return "it holds LoRA weights for the text encoder; only a UNet LoRA is fused"
    return None


# -- loading --------------------------------------------------------------------------------------------
def _config_json(config: dict) -> dict:
    return {key: _plain(value) for key, value in config.items()}


def write_config_folder(folder: Path, configs: dict) -> Path:
    """Write the architecture's ``unet``, ``vae`` and ``text_encoder`` configs in the diffusers layout (what
    ``from_single_file(config=folder)`` reads); returns ``folder``."""
    from storyreel.models.architectures import text_encoder_config

    for name, class_name in (("unet", "UNet2DConditionModel"), ("vae", "AutoencoderKL")):
        (folder / name).mkdir(parents=True, exist_ok=True)
        (folder / name / "config.json").write_text(
            json.dumps({"_class_name": class_name, **_config_json(configs[name])}, indent=2), encoding="utf-8")
    text_encoder_config(configs["text_encoder"]).save_pretrained(str(folder / "text_encoder"))
    return folder


def _meta_shapes(build) -> dict[str, tuple[int, ...]]:
    import torch

    with torch.device("meta"):
        model = build()
    return {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}


def _check_weights(what: str, weights: dict, expected: dict, optional=()) -> None:
    """Refuse converted weights that do not match the model's tensors one for one."""
    missing = [k for k in expected if k not in weights and not k.endswith(tuple(optional))]
    unexpected = [k for k in weights if k not in expected]
    wrong = [f"{k} {list(weights[k].shape)} (expected {list(expected[k])})" for k in expected
             if k in weights and tuple(weights[k].shape) != expected[k]]
    problems = []
    for words, names in (("lacks", missing), ("has unexpected", unexpected), ("has mis-shaped", wrong)):
        if names:
            problems.append(f"{words} {len(names)} weights ({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})")
    if problems:
        raise SingleFileMismatch(f"its {what} " + "; ".join(problems))


def load_sd_checkpoint(path: str | Path, parts, configs: dict, dtype=None) -> dict:
    """Load ``parts`` (some of ``text_encoder``, ``vae``, ``unet``) from an SD1.5 single-file checkpoint in the
    original layout, against the architecture ``configs``; ``{part: model}`` in eval mode.

    Raises :class:`SingleFileMismatch` when the converted weights do not match the models one for one (a
    missing or extra weight is never left at random or silently dropped)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import (
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
        create_diffusers_clip_model_from_ldm,
    )
    from safetensors.torch import load_file
    from transformers import CLIPTextModel

    from storyreel.models.architectures import quiet_dtype_warning, text_encoder_config

    checkpoint = load_file(str(path))
    loaded = {}
    with tempfile.TemporaryDirectory(prefix="storyreel-sd15-config-") as temporary, quiet_dtype_warning():
        folder = write_config_folder(Path(temporary), configs)
        for name, cls, convert in (("unet", UNet2DConditionModel, convert_ldm_unet_checkpoint),
                                   ("vae", AutoencoderKL, convert_ldm_vae_checkpoint)):
            if name not in parts:
                continue
            config = _config_json(configs[name])
            weights = convert(checkpoint=checkpoint, config=config)
            _check_weights(name.upper(), weights, _meta_shapes(lambda cls=cls, config=config: cls(**config)))
            loaded[name] = cls.from_single_file(weights, config=str(folder), subfolder=name, local_files_only=True,
                                                torch_dtype=dtype)
        if "text_encoder" in parts:
            model = create_diffusers_clip_model_from_ldm(CLIPTextModel, checkpoint, config=str(folder),
                                                         subfolder="text_encoder", torch_dtype=dtype,
                                                         local_files_only=True)
            expected = _meta_shapes(lambda: CLIPTextModel(text_encoder_config(configs["text_encoder"])))
            left = [name for name, tensor in model.state_dict().items() if tensor.device.type == "meta"]
            if left or set(model.state_dict()) != set(expected):
                raise SingleFileMismatch(f"its text encoder lacks {len(left)} weights ({', '.join(left[:3])})")
            loaded["text_encoder"] = model
    return {name: model.eval() for name, model in loaded.items()}


def load_motion_adapter_file(path: str | Path, base_config: dict, dtype=None):
    """A ``MotionAdapter`` from one safetensors file (diffusers layout, as AnimateDiff-Lightning ships, or the
    original AnimateDiff layout, converted by diffusers), configured by :func:`motion_adapter_config`."""
    from diffusers import MotionAdapter
    from diffusers.loaders.single_file_utils import convert_animatediff_checkpoint_to_diffusers
    from safetensors.torch import load_file

    weights = load_file(str(path))
    config = _config_json(motion_adapter_config({k: tuple(v.shape) for k, v in weights.items()}, base_config))
    expected = _meta_shapes(lambda: MotionAdapter(**config))
    if set(weights) != set(expected):
        weights = convert_animatediff_checkpoint_to_diffusers(weights)
    # the sinusoidal position encodings are not weights: files without them get the computed ones
    _check_weights("motion modules", weights, expected, optional=(".pe",))
    with tempfile.TemporaryDirectory(prefix="storyreel-motion-adapter-config-") as temporary:
        (Path(temporary) / "config.json").write_text(json.dumps({"_class_name": "MotionAdapter", **config}),
                                                      encoding="utf-8")
        adapter = MotionAdapter.from_single_file(weights, config=temporary, local_files_only=True, torch_dtype=dtype)
    return adapter.eval()


def fuse_lora_file(unet, path: str | Path, scale: float = 1.0) -> int:
    """Fuse the UNet LoRA in ``path`` into ``unet`` at ``scale`` (diffusers' ``lora_state_dict``,
    ``load_lora_into_unet``, ``fuse_lora``, ``unload_lora``: what ``pipe.load_lora_weights(...)`` then
    ``pipe.fuse_lora(lora_scale=scale)`` does), leaving plain layers with the fused weights. Returns the number
    of layers changed; :class:`SingleFileMismatch` when the LoRA does not fit the UNet."""
    from diffusers.loaders import StableDiffusionLoraLoaderMixin
    from peft.tuners.tuners_utils import BaseTunerLayer
    from safetensors.torch import load_file

    state_dict, network_alphas = StableDiffusionLoraLoaderMixin.lora_state_dict(load_file(str(path)))
    if not any(key.startswith("unet.") for key in state_dict):  # a LoRA saved from the UNet alone
        state_dict = {f"unet.{key}": value for key, value in state_dict.items()}
        network_alphas = {f"unet.{key}": value for key, value in (network_alphas or {}).items()} or None
    if any(not key.startswith("unet.") for key in state_dict):
        raise SingleFileMismatch("it holds LoRA weights for other models than the UNet; only a UNet LoRA is fused")
    lora_weights = sum(1 for key in state_dict if ".lora_A." in key or ".lora.down." in key or "lora_down" in key)
    try:
        StableDiffusionLoraLoaderMixin.load_lora_into_unet(state_dict, network_alphas, unet,
                                                           adapter_name=LORA_ADAPTER_NAME)
    except (ValueError, KeyError, RuntimeError) as exc:
        raise SingleFileMismatch(f"its LoRA does not fit the UNet: {exc}") from None
    layers = [module for module in unet.modules() if isinstance(module, BaseTunerLayer)]
    if not layers or (lora_weights and len(layers) < lora_weights):
        unet.unload_lora()
        raise SingleFileMismatch(f"only {len(layers)} of its {lora_weights} LoRA layers name layers of the UNet")
    unet.fuse_lora(lora_scale=scale, adapter_names=[LORA_ADAPTER_NAME])
    unet.unload_lora()
    return len(layers)
