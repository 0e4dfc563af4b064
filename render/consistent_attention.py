"""Consistent self-attention across shots: StoryDiffusion's training-free identity sharing, adapted to video.

StoryDiffusion (Zhou et al. 2024, "Consistent Self-Attention for Long-Range Image and Video Generation") keeps
a character the same from image to image by letting each image's spatial self-attention also see tokens
sampled from the other images of the story. Its released code is SDXL images only; this module brings the
mechanism to storyreel's AnimateDiff shots:

* **Where.** The spatial self-attention (``attn1``) of the UNet's up blocks
  (``up_blocks.*.attentions.*.transformer_blocks.*.attn1``), as StoryDiffusion does. Down and mid blocks, every
  cross-attention (``attn2``) and the motion modules (``up_blocks.*.motion_modules.*``, whose attention layers
  reuse the names attn1/attn2) keep their processors, and so does the ControlNet.
* **The bank.** A character's reference shot (its first shot with ``consistency`` on, ``reference:
  "first_shot"``) is rendered with CSA among its own frames: at each active step and layer, ``round(rate * N)``
  of the N tokens of each of ``bank_frames`` evenly spaced frames are drawn (a seeded permutation per step,
  layer and frame, so a render is reproducible), and every frame attends to its own tokens plus those. The
  drawn tokens (hidden states before the key/value projections, both classifier-free-guidance halves) are the
  bank, saved under ``OUT/cache/consistency/``. Every later shot that names the character attends to its
  own tokens plus the bank of each of its characters, at the same step and layer.
* **Steps.** CSA runs on the steps ``i`` with ``i / steps < until`` (the first ``until`` of the denoising,
  where layout and identity form); the later steps are plain. StoryDiffusion instead skips the first step and
  applies CSA at random with probability 0.7-0.9 afterwards; the deterministic window keeps renders
  reproducible and the bank bounded. A shot with another step count reads the bank's step
  ``floor(i * bank_steps / steps)``.
* **Memory.** ``halves x bank_frames x round(rate x N_layer) x C_layer`` values per layer and active step
  (:func:`bank_bytes` computes it before the render; SD1.5 at 512x512, rate 0.5, 2 frames, 15 of 25 steps,
  fp16: 413 MB). A bank over ``budget_mb`` keeps fewer frames; one that does not fit with a single frame is an
  error before sampling. The bank lives on the GPU when it takes under a quarter of the free memory, else on
  the CPU (moved per layer as it is used).
* **Context windows.** A long shot's UNet runs once per window and step; the bank is recorded from the first
  window of each step (the shot's first frames) and every window attends to it.

With ``rate`` 0, or no bank to attend to, the original processor runs and the frames are bit-identical to a
render without CSA (tested).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from storyreel.atomic_files import atomic_path
from storyreel.errors import StoryreelError

CSA_LAYER = re.compile(r"^up_blocks\.(\d+)\.attentions\.\d+\.transformer_blocks\.\d+\.attn1$")
BANK_FORMAT = "storyreel-consistency-bank"
BANK_VERSION = 1
GPU_SHARE = 0.25  # the bank stays on the GPU when it takes at most this share of the free memory


class ConsistencyBudgetError(StoryreelError, ValueError):
    """The bank does not fit its budget even with one frame."""


@dataclass(frozen=True)
class ConsistencySettings:
    """A shot's consistent self-attention: the sampling rate, the fraction of steps it runs for, how many
    reference frames the bank keeps and the bank's memory budget."""

    rate: float = 0.5
    until: float = 0.6
    bank_frames: int = 2
    budget_mb: float = 1024.0

    def active_steps(self, steps: int) -> list[int]:
        """The step indices CSA runs on: ``i / steps < until``."""
        return [i for i in range(steps) if i / steps < self.until]

    def tokens_per_frame(self, tokens: int) -> int:
        return int(round(self.rate * tokens))


def consistency_layers(unet) -> dict[str, torch.nn.Module]:
    """The attention modules CSA replaces: the up blocks' spatial self-attention, never a motion module's."""
    return {name: module for name, module in unet.named_modules() if CSA_LAYER.match(name)}


def layer_tokens(unet, name: str, height: int, width: int, vae_scale_factor: int = 8) -> tuple[int, int]:
    """``(tokens, channels)`` a CSA layer sees for a ``height x width`` render: the latent grid (the frame over the
    VAE's ``vae_scale_factor``), halved by every downsampler of the down blocks and doubled back by every
    upsampler of the up blocks before the layer's (diffusers' convolutions round a half up)."""
    block = int(CSA_LAYER.match(name).group(1))
    size = [math.ceil(height / vae_scale_factor), math.ceil(width / vae_scale_factor)]
    grids = [tuple(size)]
    for down in unet.down_blocks:
        if down.downsamplers:
            size = [math.ceil(side / 2) for side in size]
            grids.append(tuple(size))
    level = len(grids) - 1 - sum(1 for up in unet.up_blocks[:block] if up.upsamplers)
    rows, cols = grids[level]
    module = dict(unet.named_modules())[name]
    return rows * cols, module.to_k.in_features


def bank_bytes(unet, height: int, width: int, settings: ConsistencySettings, steps: int, halves: int,
               frames: int | None = None, element_size: int = 2, vae_scale_factor: int = 8) -> int:
    """The size of a bank recorded for a ``height x width`` shot of ``steps`` steps: every CSA layer's drawn
    tokens of ``frames`` (default ``settings.bank_frames``) frames, both guidance halves, each active step."""
    frames = settings.bank_frames if frames is None else frames
    per_step = 0
    for name in consistency_layers(unet):
        tokens, channels = layer_tokens(unet, name, height, width, vae_scale_factor)
        per_step += halves * frames * settings.tokens_per_frame(tokens) * channels
    return per_step * len(settings.active_steps(steps)) * element_size


def frames_within_budget(unet, height: int, width: int, settings: ConsistencySettings, steps: int, halves: int,
                         element_size: int = 2, vae_scale_factor: int = 8) -> int:
    """The most bank frames (at most ``settings.bank_frames``) whose bank fits ``settings.budget_mb``;
    :class:`ConsistencyBudgetError` when one frame does not."""
    budget = settings.budget_mb * 2**20
    for frames in range(settings.bank_frames, 0, -1):
        if bank_bytes(unet, height, width, settings, steps, halves, frames, element_size, vae_scale_factor) <= budget:
            return frames
    one = bank_bytes(unet, height, width, settings, steps, halves, 1, element_size, vae_scale_factor)
    raise ConsistencyBudgetError(f"a consistency bank of one frame takes {one / 2**20:.0f} MB at {width}x{height}, "
                                 f"{steps} steps and rate {settings.rate:g}, over its budget_mb "
                                 f"{settings.budget_mb:g}; raise budget_mb or lower rate or until")


# -- the bank -------------------------------------------------------------------------------------------------
@dataclass
class TokenBank:
    """Tokens drawn from a reference shot, per ``(step, layer)``: ``halves x (frames * k) x C`` hidden states."""

    source_shot: str
    steps: int
    halves: int
    frames: list[int]
    rate: float
    tokens: dict[tuple[int, str], torch.Tensor] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tokens.values())

    def entry(self, step: int, steps: int, layer: str) -> torch.Tensor | None:
        """The tokens for step ``step`` of a ``steps``-step shot at ``layer`` (None when the bank has none)."""
        if steps != self.steps:
            step = step * self.steps // steps
        return self.tokens.get((step, layer))

    def record(self) -> dict:
        """What a sidecar states of the bank: its source, steps, layers, frames, rate and size."""
        return {"source_shot": self.source_shot, "steps": self.steps,
                "active_steps": sorted({step for step, _ in self.tokens}),
                "layers": len({layer for _, layer in self.tokens}), "frames": list(self.frames),
                "rate": self.rate, "halves": self.halves, "bytes": self.nbytes}

    def save(self, path: Path) -> None:
        """Write the bank as safetensors (atomically), its description in the metadata."""
        from safetensors.torch import save_file

        metadata = {"format": BANK_FORMAT, "version": str(BANK_VERSION),
                    "bank": json.dumps({"source_shot": self.source_shot, "steps": self.steps, "halves": self.halves,
                                        "frames": self.frames, "rate": self.rate})}
        tensors = {f"{step}:{layer}": t.detach().to("cpu").contiguous() for (step, layer), t in self.tokens.items()}
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=metadata)

    @classmethod
    def load(cls, path: Path, device: torch.device | str = "cpu") -> TokenBank:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt", device=str(device)) as handle:
            metadata = handle.metadata() or {}
            if metadata.get("format") != BANK_FORMAT:
                raise ValueError(f"{path}: not a storyreel consistency bank")
            described = json.loads(metadata["bank"])
            bank = cls(described["source_shot"], described["steps"], described["halves"], described["frames"],
                       described["rate"])
            for key in handle.keys():
                step, layer = key.split(":", 1)
                bank.tokens[(int(step), layer)] = handle.get_tensor(key)
        return bank


# -- the controller and the processor ----------------------------------------------------------------------------
class ConsistencyController:
    """What the CSA processors of one render share: the step being denoised (from the UNet's timestep), the bank
    being recorded (a reference shot) and the banks attended to, and the key lengths seen (for reports and tests)."""

    def __init__(self, settings: ConsistencySettings, steps: int, halves: int, seed: int, *,
                 record: TokenBank | None = None, banks: tuple[TokenBank, ...] = (), bank_frames: int | None = None,
                 bank_device: torch.device | str = "cpu", bank_dtype: torch.dtype | None = None):
        self.settings = settings
        self.steps = steps
        self.halves = halves
        self.seed = seed
        self.recording = record
        self.banks = tuple(banks)
        self.bank_frames = settings.bank_frames if bank_frames is None else bank_frames
        self.bank_device = torch.device(bank_device)
        # the bank's dtype: the UNet's (under fp16 autocast the hidden states reaching attn1 come out of a
        # float32 LayerNorm, and a bank kept in float32 would take twice the size stated for it)
        self.bank_dtype = bank_dtype
        self.active = set(settings.active_steps(steps))
        self.step = -1
        self._timesteps: list[int] = []
        self.key_tokens: dict[str, tuple[int, int]] = {}  # layer → (own tokens, extra tokens) of the last call

    def before_unet(self, module, args, kwargs) -> None:
        """Forward pre-hook of the UNet: the step index from the timestep (windows of one step share it)."""
        timestep = args[1] if len(args) > 1 else kwargs.get("timestep")
        value = int(timestep.flatten()[0]) if isinstance(timestep, torch.Tensor) else int(timestep)
        if value not in self._timesteps:
            self._timesteps.append(value)
        self.step = self._timesteps.index(value)

    def extra_tokens(self, layer: str, hidden_states: torch.Tensor) -> torch.Tensor | None:
        """The tokens this call's frames attend to besides their own, ``(halves * F) x M x C``, or None."""
        if self.step not in self.active or self.settings.rate <= 0:
            return None
        frames = hidden_states.shape[0] // self.halves
        parts = []
        if self.recording is not None:
            key = (self.step, layer)
            if key not in self.recording.tokens:
                self.recording.tokens[key] = self._draw(layer, hidden_states, frames)
            parts.append(self.recording.tokens[key])
        for bank in self.banks:
            entry = bank.entry(self.step, self.steps, layer)
            if entry is not None:
                parts.append(self._halves_of(entry))
        parts = [p.to(device=hidden_states.device, dtype=hidden_states.dtype) for p in parts if p.shape[1]]
        if not parts:
            return None
        extra = torch.cat(parts, dim=1)
        self.key_tokens[layer] = (hidden_states.shape[1], extra.shape[1])
        return extra.repeat_interleave(frames, dim=0)  # rows are ordered (half, frame)

    def _draw(self, layer: str, hidden_states: torch.Tensor, frames: int) -> torch.Tensor:
        """``round(rate * N)`` tokens of each bank frame (evenly spaced over the call's frames), the same
        positions for both guidance halves: ``halves x (bank frames * k) x C``."""
        tokens = hidden_states.shape[1]
        count = self.settings.tokens_per_frame(tokens)
        kept = evenly_spaced(frames, self.bank_frames)
        self.recording.frames = kept
        chunks = []
        for frame in kept:
            generator = torch.Generator().manual_seed(_draw_seed(self.seed, self.step, layer, frame))
            picked = torch.randperm(tokens, generator=generator)[:count].to(hidden_states.device)
            rows = [hidden_states[half * frames + frame, picked] for half in range(self.halves)]
            chunks.append(torch.stack(rows))
        return torch.cat(chunks, dim=1).detach().to(self.bank_device, dtype=self.bank_dtype)

    def _halves_of(self, entry: torch.Tensor) -> torch.Tensor:
        """A bank entry for this render's guidance halves: the conditional half alone without guidance, or one
        half for both."""
        if entry.shape[0] == self.halves:
            return entry
        if self.halves == 1:
            return entry[-1:]
        return entry.expand(self.halves, *entry.shape[1:])


def _draw_seed(seed: int, step: int, layer: str, frame: int) -> int:
    digest = hashlib.sha256(f"storyreel-csa:{seed}:{step}:{layer}:{frame}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & (2**63 - 1)


class ConsistentSelfAttentionProcessor:
    """Self-attention whose keys and values are the frame's own tokens plus the controller's extra tokens; the
    original processor runs when there are none."""

    def __init__(self, layer: str, original, controller: ConsistencyController):
        self.layer = layer
        self.original = original
        self.controller = controller

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args,
                 **kwargs):
        extra = None
        plain_layer = attn.spatial_norm is None and attn.group_norm is None and hidden_states.ndim == 3
        if encoder_hidden_states is None and attention_mask is None and plain_layer:
            extra = self.controller.extra_tokens(self.layer, hidden_states)
        if extra is None:
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        return attend_with_extra_tokens(attn, hidden_states, extra)


def attend_with_extra_tokens(attn, hidden_states: torch.Tensor, extra: torch.Tensor) -> torch.Tensor:
    """diffusers' ``AttnProcessor2_0`` for self-attention, with ``extra`` tokens appended to the keys and values
    (queries stay the frame's own tokens)."""
    residual = hidden_states
    batch = hidden_states.shape[0]
    context = torch.cat([hidden_states, extra], dim=1)
    query, key, value = attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context)
    head_dim = key.shape[-1] // attn.heads
    query = query.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
    key = key.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
    value = value.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
    if attn.norm_q is not None:
        query = attn.norm_q(query)
    if attn.norm_k is not None:
        key = attn.norm_k(key)
    out = F.scaled_dot_product_attention(query, key, value, dropout_p=0.0, is_causal=False)
    out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
    out = attn.to_out[1](attn.to_out[0](out))
    if attn.residual_connection:
        out = out + residual
    return out / attn.rescale_output_factor


@contextlib.contextmanager
def consistent_self_attention(unet, controller: ConsistencyController) -> Iterator[ConsistencyController]:
    """CSA processors on the UNet's up-block spatial self-attention for the block; the processors found are put
    back after it, however it ends."""
    layers = consistency_layers(unet)
    originals = {name: module.processor for name, module in layers.items()}
    handle = unet.register_forward_pre_hook(controller.before_unet, with_kwargs=True)
    try:
        for name, module in layers.items():
            module.set_processor(ConsistentSelfAttentionProcessor(name, originals[name], controller))
        yield controller
    finally:
        handle.remove()
        for name, module in layers.items():
            module.set_processor(originals[name])


def bank_device_for(device: torch.device, size: int) -> torch.device:
    """Where a bank of ``size`` bytes lives: the GPU when it takes at most :data:`GPU_SHARE` of the free memory."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        if size <= GPU_SHARE * free:
            return device
    return torch.device("cpu")


def evenly_spaced(frames: int, count: int) -> list[int]:
    """``count`` frame indices (at most ``frames``) spread evenly from the first frame to the last."""
    count = max(1, min(count, frames))
    if count == 1:
        return [0]
    return [round(i * (frames - 1) / (count - 1)) for i in range(count)]
