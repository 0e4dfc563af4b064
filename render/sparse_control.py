"""SparseCtrl: condition a shot on a few of its frames (a keyframe, or its first and last frames).

SparseCtrl (Guo et al. 2023, https://arxiv.org/abs/2311.16933) is a ControlNet with motion modules that takes
conditions on *some* frames of a clip, a mask channel telling which, and propagates them to the others. diffusers
0.42.1 has it as ``SparseControlNetModel`` and ``AnimateDiffSparseControlNetPipeline``; this module holds what
:class:`render.sampler.StructureGuidedSampler` needs to run it in our own loop::

    from render.sparse_control import SparseCondition, load_sparse_controlnet

    sparse = load_sparse_controlnet("guoyww/animatediff-sparsectrl-rgb", device, dtype)   # or "tiny", a folder
    keyframe = SparseCondition.keyframe(image)                    # frame 0 (H x W x 3 uint8, 3 x H x W in [0, 1])
    transition = SparseCondition.transition(first, last)          # frames 0 and -1 (the last)
    result = sampler(prompt, conditioning=depth, sparse_controlnet=sparse, sparse_condition=keyframe, ...)

How the conditioning is prepared, as the pipeline's ``prepare_image`` + ``prepare_sparse_control_conditioning``:

* the K images, RGB in [0, 1] at the render size, are VAE-encoded (``2 x - 1``, a sample of the latent
  distribution, times the VAE's ``scaling_factor``) when the model has ``use_simplified_condition_embedding``
  (the RGB variant, ``guoyww/animatediff-sparsectrl-rgb``); otherwise (the scribble variant) they stay pixels;
* they are placed at their frame indices in a zero tensor of all F frames (1 x C x F x h x w) next to a mask
  (1 x 1 x F x h x w) that is 1 at those frames and 0 elsewhere; the model concatenates the two.

Where we differ from the pipeline, on purpose: the latent sample is drawn from a generator seeded with
``SparseCondition.encode_seed`` (the pipeline draws from torch's global RNG, so its renders depend on whatever
ran before; seed the global RNG with the same number to reproduce it) or, with ``encode="mean"``, it is the
distribution's mean; images not at the render size are resized bilinearly with antialiasing (the pipeline uses
PIL's Lanczos for PIL images and nearest-neighbour interpolation for tensors: hand images at the render size for
identical results). Negative frame indices count from the end (``-1`` is the last frame), so a transition does
not need to know the shot's length. ``guess_mode`` follows ``SparseControlNetModel`` (residuals scaled from 0.1
to 1 over the blocks, for the conditional batch only with classifier-free guidance); with classifier-free
guidance diffusers' SparseCtrl pipeline fails in guess mode (it adds the conditional half's residuals to the
whole batch), so the sampler pads the unconditional half with zeros, as diffusers' ``AnimateDiffControlNetPipeline``
does.

:func:`build_tiny_sparse_controlnet` builds a toy-size RGB SparseCtrl that fits a model's UNet (seeded, its zero
convolutions perturbed so that the conditioning changes the output), for tests; :func:`load_sparse_controlnet`
loads ``tiny``, ``toy`` (trained on the toy world, verified by sha256), a hub id or a local diffusers folder,
safetensors only.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from storyreel.errors import ModelLoadError, first_line
from storyreel.hub_access import HubModel, ensure_available, offline_requested
from storyreel.models import presets
from storyreel.models.hub_models import is_hub_id, sparsectrl_model
from storyreel.seeding import seeded
from storyreel.weights_policy import PICKLE_REFUSAL, PICKLE_SUFFIXES, is_pickle_checkpoint

SPARSECTRL_RGB = presets.SPARSECTRL_RGB_ID
TINY_SPARSE_SEED = 0
ENCODE_MODES = ("sample", "mean")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
TOY_FOLDER = "sparse_control"  # the toy SparseCtrl (toy_world/train_sparse_control.py), in storyreel/models/toy_weights

# How the tiny SparseCtrl's zero-initialised layers are perturbed (variance-preserving normal weights x gain).
CONDITIONING_GAIN = 1.0
ZERO_CONV_GAIN = 1.0


# -- the conditioning ---------------------------------------------------------------------------------------
@dataclass
class SparseCondition:
    """Conditioning images for some frames of a shot.

    ``images``: K images, as K x H x W x 3 uint8 (numpy or torch), K x 3 x H x W float in [0, 1], or a list of
    H x W x 3 uint8 arrays / 3 x H x W float tensors / PIL images. ``frame_indices``: the K frames they condition
    (``[0]`` a keyframe, ``[0, -1]`` the first and last frames; negative ones count from the end). ``scale``:
    diffusers' ``controlnet_conditioning_scale``. ``guess_mode``: diffusers' guess mode. ``encode``: ``"sample"``
    (the pipeline's latent sample, drawn from a generator seeded with ``encode_seed``) or ``"mean"``.
    """

    images: Any
    frame_indices: Sequence[int] = (0,)
    scale: float = 1.0
    guess_mode: bool = False
    encode: str = "sample"
    encode_seed: int = 0

    @classmethod
    def keyframe(cls, image, frame_index: int = 0, **kwargs) -> SparseCondition:
        """One image conditioning one frame (the first by default)."""
        return cls(images=_as_list(image), frame_indices=(frame_index,), **kwargs)

    @classmethod
    def transition(cls, first, last, **kwargs) -> SparseCondition:
        """The first and the last frame of the shot."""
        return cls(images=[*_as_list(first), *_as_list(last)], frame_indices=(0, -1), **kwargs)

    def __post_init__(self):
        if self.encode not in ENCODE_MODES:
            raise ValueError(f"SparseCondition.encode must be one of {', '.join(ENCODE_MODES)}, got {self.encode!r}")
        if not np.isfinite(float(self.scale)):
            raise ValueError(f"SparseCondition.scale must be finite, got {self.scale}")
        self.frame_indices = tuple(int(i) for i in self.frame_indices)
        if not self.frame_indices:
            raise ValueError("SparseCondition needs at least one frame index")

    # -- the pieces ---------------------------------------------------------------------------------------
    def resolved_indices(self, num_frames: int) -> list[int]:
        """The frame indices in ``[0, num_frames)`` (negative ones counted from the end); checked."""
        resolved = []
        for index in self.frame_indices:
            if not -num_frames <= index < num_frames:
                raise ValueError(f"SparseCondition frame index {index} is outside a shot of {num_frames} frames")
            resolved.append(index % num_frames)
        if len(set(resolved)) != len(resolved):
            raise ValueError(f"SparseCondition frame indices {list(self.frame_indices)} name a frame twice "
                             f"(in a shot of {num_frames} frames: {resolved})")
        return resolved

    def pixel_frames(self, height: int | None = None, width: int | None = None) -> torch.Tensor:
        """The images as K x 3 x H x W float32 in [0, 1], resized (bilinear, antialiased) to ``height`` x ``width``
        when given and different."""
        frames = _to_float_frames(self.images)
        if frames.shape[0] != len(self.frame_indices):
            raise ValueError(f"SparseCondition has {frames.shape[0]} images for {len(self.frame_indices)} frame "
                             f"indices {list(self.frame_indices)}: give one image per index")
        if height is not None and width is not None and tuple(frames.shape[2:]) != (height, width):
            frames = F.interpolate(frames, size=(height, width), mode="bilinear", align_corners=False,
                                   antialias=True).clamp(0, 1)
        return frames

    @property
    def size(self) -> tuple[int, int]:
        """The images' height and width."""
        frames = _to_float_frames(self.images)
        return int(frames.shape[2]), int(frames.shape[3])

    @torch.no_grad()
    def prepare(self, controlnet, vae, num_frames: int, height: int, width: int,
                device: torch.device | str | None = None) -> PreparedSparseCondition:
        """The tensors ``SparseControlNetModel`` takes for a shot of ``num_frames`` frames at ``height`` x
        ``width``: ``cond`` (1 x C x F x h x w: VAE latents for the RGB variant, pixels otherwise) and ``mask``
        (1 x 1 x F x h x w, 1 at the conditioned frames), in the model's dtype on ``device``."""
        device = torch.device(device) if device is not None else controlnet.device
        indices = self.resolved_indices(num_frames)
        pixels = self.pixel_frames(height, width)
        if controlnet.config.use_simplified_condition_embedding:
            images = (2 * pixels - 1).to(device=device, dtype=vae.dtype)
            posterior = vae.encode(images).latent_dist
            if self.encode == "mean":
                latents = posterior.mean
            else:
                # a CPU generator: the same sample on every device (diffusers' randn_tensor moves it over)
                generator = torch.Generator(device="cpu").manual_seed(self.encode_seed)
                latents = posterior.sample(generator)
            frames = latents * vae.config.scaling_factor
        else:
            frames = pixels.to(device)
        dtype = controlnet.dtype
        frames = frames.to(device=device, dtype=dtype)
        channels, h, w = frames.shape[1:]
        cond = torch.zeros((1, channels, num_frames, h, w), device=device, dtype=dtype)
        mask = torch.zeros((1, 1, num_frames, h, w), device=device, dtype=dtype)
        cond[0, :, indices] = frames.permute(1, 0, 2, 3)
        mask[:, :, indices] = 1
        return PreparedSparseCondition(controlnet=controlnet, cond=cond, mask=mask, frame_indices=indices,
                                       scale=float(self.scale), guess_mode=bool(self.guess_mode))


@dataclass
class PreparedSparseCondition:
    """A :class:`SparseCondition` ready for the model, over all F frames of a shot (or of one context window)."""

    controlnet: Any
    cond: torch.Tensor  # 1 x C x F x h x w
    mask: torch.Tensor  # 1 x 1 x F x h x w
    frame_indices: list[int]  # the conditioned frames, in this tensor's frame numbering
    scale: float = 1.0
    guess_mode: bool = False

    def window(self, frames: Sequence[int]) -> PreparedSparseCondition | None:
        """The condition of the context window made of the shot's ``frames`` (global indices), with the
        conditioned frames renumbered inside the window; ``None`` when the window holds none of them (such a
        window gets no SparseCtrl residuals)."""
        frames = list(frames)
        conditioned = set(self.frame_indices)
        local = [position for position, frame in enumerate(frames) if frame in conditioned]
        if not local:
            return None
        return PreparedSparseCondition(controlnet=self.controlnet, cond=self.cond[:, :, frames],
                                       mask=self.mask[:, :, frames], frame_indices=local, scale=self.scale,
                                       guess_mode=self.guess_mode)


def _as_list(image) -> list:
    if isinstance(image, (list, tuple)):
        return list(image)
    if isinstance(image, (np.ndarray, torch.Tensor)) and image.ndim == 4:
        return list(image)
    return [image]


def _one_frame(image) -> torch.Tensor:
    """One image → 3 x H x W float32 in [0, 1]."""
    if not isinstance(image, (np.ndarray, torch.Tensor)):  # a PIL image
        image = np.asarray(image.convert("RGB"))
    tensor = torch.as_tensor(np.ascontiguousarray(image) if isinstance(image, np.ndarray) else image)
    if tensor.ndim != 3:
        raise ValueError(f"a SparseCondition image must be H x W x 3 or 3 x H x W, got shape {tuple(tensor.shape)}")
    if tensor.dtype == torch.uint8:
        if tensor.shape[-1] != 3:
            raise ValueError(f"a uint8 SparseCondition image must be H x W x 3, got shape {tuple(tensor.shape)}")
        return tensor.permute(2, 0, 1).float() / 255
    if not tensor.is_floating_point():
        raise ValueError(f"SparseCondition images must be uint8 or float in [0, 1], got {tensor.dtype}")
    if tensor.shape[0] != 3:
        raise ValueError(f"a float SparseCondition image must be 3 x H x W, got shape {tuple(tensor.shape)}")
    tensor = tensor.detach().cpu().float()
    if tensor.numel() and (float(tensor.min()) < 0 or float(tensor.max()) > 1):
        raise ValueError(f"float SparseCondition images must be in [0, 1], got values in "
                         f"[{float(tensor.min()):.3g}, {float(tensor.max()):.3g}]")
    return tensor


def _to_float_frames(images) -> torch.Tensor:
    """K images → K x 3 x H x W float32 in [0, 1]."""
    frames = [_one_frame(image) for image in _as_list(images)]
    if not frames:
        raise ValueError("SparseCondition has no images")
    if len({tuple(frame.shape) for frame in frames}) != 1:
        raise ValueError(f"SparseCondition images differ in size: {[tuple(f.shape[1:]) for f in frames]}")
    return torch.stack(frames)


# -- the model ----------------------------------------------------------------------------------------------
def check_sparse_controlnet(controlnet, components) -> None:
    """Raise ``ValueError`` when a SparseCtrl model cannot work with the render's components (its blocks, text
    width or conditioning channels differ from theirs)."""
    config, unet = controlnet.config, components.unet.config
    problems = []
    if list(config.block_out_channels) != list(unet.block_out_channels) or \
            config.layers_per_block != unet.layers_per_block:
        problems.append(f"its blocks {list(config.block_out_channels)} x {config.layers_per_block} layers do not "
                        f"match the unet's {list(unet.block_out_channels)} x {unet.layers_per_block}")
    if config.cross_attention_dim != unet.cross_attention_dim:
        problems.append(f"it attends to {config.cross_attention_dim}-d text features but the unet to "
                        f"{unet.cross_attention_dim}-d ones")
    if config.in_channels != unet.in_channels:
        problems.append(f"it takes {config.in_channels} latent channels, the unet {unet.in_channels}")
    expected = components.vae.config.latent_channels if config.use_simplified_condition_embedding else 3
    if config.conditioning_channels != expected:
        what = "VAE latents" if config.use_simplified_condition_embedding else "RGB pixels"
        problems.append(f"it takes {config.conditioning_channels}-channel conditions but gets {expected}-channel "
                        f"{what}")
    if problems:
        raise ValueError("the SparseCtrl model does not fit the render model: " + "; ".join(problems))


def sparse_controlnet_config(unet, latent_channels: int = 4) -> dict:
    """An RGB SparseCtrl configuration (VAE-latent conditions, a mask channel) with the blocks of ``unet``
    (a ``UNetMotionModel`` or a ``UNet2DConditionModel``)."""
    config = unet.config
    down = ["CrossAttnDownBlockMotion" if "CrossAttn" in kind else "DownBlockMotion"
            for kind in config.down_block_types]
    heads = config.get("num_attention_heads") or config.get("attention_head_dim")
    return {
        "in_channels": config.in_channels,
        "conditioning_channels": latent_channels,
        "down_block_types": down,
        "block_out_channels": list(config.block_out_channels),
        "layers_per_block": config.layers_per_block,
        "norm_num_groups": config.norm_num_groups,
        "cross_attention_dim": config.cross_attention_dim,
        "attention_head_dim": heads,
        "num_attention_heads": heads,
        "use_linear_projection": config.get("use_linear_projection", False),
        "motion_max_seq_length": config.get("motion_max_seq_length", 32),
        "motion_num_attention_heads": config.get("motion_num_attention_heads", 8),
        "concat_conditioning_mask": True,
        "use_simplified_condition_embedding": True,
    }


def build_tiny_sparse_controlnet(unet_or_components, seed: int = TINY_SPARSE_SEED):
    """A toy-size RGB ``SparseControlNetModel`` (``use_simplified_condition_embedding``: VAE-latent conditions
    plus the mask channel) with the blocks of the given UNet or render components, seeded: the same weights on
    every call. Its zero-initialised layers (the condition embedding, the output convolutions) get
    variance-preserving random weights, so the conditioning reaches the output."""
    from diffusers import SparseControlNetModel

    unet = getattr(unet_or_components, "unet", unet_or_components)
    vae = getattr(unet_or_components, "vae", None)
    latent_channels = vae.config.latent_channels if vae is not None else unet.config.in_channels
    with seeded(seed):
        model = SparseControlNetModel(**sparse_controlnet_config(unet, latent_channels)).eval()
        with torch.no_grad():
            _perturb(model.controlnet_cond_embedding, CONDITIONING_GAIN)
            for conv in (*model.controlnet_down_blocks, model.controlnet_mid_block):
                _perturb(conv, ZERO_CONV_GAIN)
    return model


def _perturb(conv: torch.nn.Conv2d, gain: float) -> None:
    fan_in = conv.weight[0].numel()
    torch.nn.init.normal_(conv.weight, std=gain / fan_in**0.5)
    if conv.bias is not None:
        torch.nn.init.zeros_(conv.bias)



def hub_models(spec: str | os.PathLike) -> list[HubModel]:
    """The hub repository ``spec`` names and the files it needs (none for ``tiny``, ``toy`` or a local folder)."""
    text = os.fspath(spec)
    if not is_hub_id(text):
        return []
    return [sparsectrl_model(text)]


def load_sparse_controlnet(spec: str | os.PathLike, device: torch.device | str | None = None,
                           dtype: torch.dtype = torch.float32, components=None):
    """A ``SparseControlNetModel`` in eval mode on ``device`` (default: the components' device, else the CPU).

    ``spec``: ``"tiny"`` (:func:`build_tiny_sparse_controlnet` for ``components``, or for the tiny preset's UNet),
    ``"toy"`` (:func:`toy_sparse_controlnet`, the toy render model's, trained on the toy world), a hub id
    (``guoyww/animatediff-sparsectrl-rgb``) or a local folder in the diffusers layout (``config.json`` +
    ``diffusion_pytorch_model.safetensors``). Only safetensors are loaded; raises
    :class:`storyreel.errors.ModelLoadError`, naming the source and what to do instead.
    """
    if device is None:
        device = components.device if components is not None else torch.device("cpu")
    text = os.fspath(spec)
    if text == "toy":
        model = toy_sparse_controlnet(dtype=dtype)
    elif text == "tiny":
        if components is None:
            from storyreel.models.architectures import build_tiny_components

            components = build_tiny_components(only={"unet", "vae"})
            components = _Parts(unet=components["unet"], vae=components["vae"])
        model = build_tiny_sparse_controlnet(components)
    else:
        model = _load_pretrained(text, dtype)
    from storyreel.models.architectures import quiet_dtype_warning

    with quiet_dtype_warning():
        return model.to(device=device, dtype=dtype).eval()


def toy_sparse_controlnet(folder: str | os.PathLike | None = None, dtype: torch.dtype = torch.float32):
    """The toy SparseCtrl RGB model trained on the toy world for the toy render model (toy_world/
    train_sparse_control.py): ``TOY_FOLDER`` of ``folder`` (default ``storyreel/models/toy_weights``), every file
    checked against the toy weights' manifest (:class:`storyreel.models.toy_weights.ToyWeightsError` for a changed,
    missing or unlisted file)."""
    from diffusers import SparseControlNetModel

    from storyreel.models.toy_weights import TOY_WEIGHTS_DIR, verified_folder

    checked = verified_folder(TOY_FOLDER, Path(folder) if folder is not None else TOY_WEIGHTS_DIR)
    try:
        return SparseControlNetModel.from_pretrained(str(checked), use_safetensors=True, torch_dtype=dtype,
                                                     local_files_only=True)
    except Exception as exc:
        raise ModelLoadError(f"cannot load the toy SparseCtrl model from '{checked}': {first_line(exc)}") from exc


@dataclass
class _Parts:
    unet: Any
    vae: Any


def _load_pretrained(spec: str, dtype: torch.dtype):
    from diffusers import SparseControlNetModel

    path = Path(spec).expanduser()
    if is_pickle_checkpoint(path):
        raise ModelLoadError(f"cannot load the SparseCtrl model '{spec}': {PICKLE_REFUSAL}, so only safetensors are "
                             "loaded; convert it once in a trusted environment (SparseControlNetModel.from_pretrained "
                             "then save_pretrained with safe_serialization=True) and give the folder")
    if path.is_file():
        raise ModelLoadError(f"cannot load the SparseCtrl model '{spec}': a single file is not supported; give a "
                             "folder in the diffusers layout (config.json + diffusion_pytorch_model.safetensors) or "
                             f"a hub id such as {SPARSECTRL_RGB}")
    if path.is_dir():
        _check_folder(path)
        try:
            return SparseControlNetModel.from_pretrained(str(path), use_safetensors=True, torch_dtype=dtype,
                                                         local_files_only=True)
        except Exception as exc:
            raise ModelLoadError(f"cannot load the SparseCtrl model from the folder '{path}': {first_line(exc)}. "
                                 "Check that it holds the model's config.json and .safetensors weights") from exc
    if not _HUB_ID.match(spec) or spec.startswith((".", "~")):
        raise ModelLoadError(f"cannot load the SparseCtrl model: no such folder '{path}' (give a local folder in the "
                             f"diffusers layout, a hub id such as {SPARSECTRL_RGB}, or 'tiny')")
    ensure_available(hub_models(spec))  # from the cache, or the hub asked once: offline is known at once
    try:
        return SparseControlNetModel.from_pretrained(spec, use_safetensors=True, torch_dtype=dtype,
                                                     local_files_only=offline_requested())
    except Exception as exc:
        reason = first_line(exc)
        if offline_requested():
            reason += " (the hub is offline, HF_HUB_OFFLINE is set, and the files are not in the local cache)"
        raise ModelLoadError(
            f"cannot load the SparseCtrl model '{spec}' from the hub: {reason}. Without network access, download it "
            f"once (hf download {spec} --local-dir DIR) and give DIR instead, or use 'tiny' (the same architecture "
            f"at toy size with random weights). If '{spec}' was meant as a local path: no such folder. Only "
            "safetensors weights are loaded.") from exc


def _check_folder(folder: Path) -> None:
    files = [p.name for p in folder.iterdir() if p.is_file()]
    if "config.json" not in files:
        raise ModelLoadError(f"cannot load the SparseCtrl model from '{folder}': it holds no config.json; give the "
                             "model's folder in the diffusers layout (config.json + "
                             "diffusion_pytorch_model.safetensors)")
    if not any(name.endswith((".safetensors", ".safetensors.index.json")) for name in files):
        unsafe = sorted(name for name in files if Path(name).suffix.lower() in PICKLE_SUFFIXES)
        found = f" (it holds {', '.join(unsafe)})" if unsafe else ""
        raise ModelLoadError(f"cannot load the SparseCtrl model from '{folder}': no .safetensors weights{found}; "
                             f"{PICKLE_REFUSAL}, so only safetensors are loaded: convert them (load once in a trusted "
                             "environment and save_pretrained with safe_serialization=True)")
