"""Which UNet layers a character's LoRA adapts: the spatial attention projections, never the motion modules.

Animate-A-Story puts LoRA on the query, key and value projections of the spatial self-attention
(``attn1``) and cross-attention (``attn2``) of the UNet, and so do we by default (``"qkv"``); the output
projection (``to_out.0``) is an option (``"qkvo"``, ``projections`` chooses). In an AnimateDiff
``UNetMotionModel`` the motion modules reuse the names ``attn1``/``attn2`` and ``to_q``/``to_k``/``to_v``,
so layers are selected by their module path:
``{down_blocks.N | up_blocks.N | mid_block}.attentions.N.transformer_blocks.N.attn{1,2}.<projection>``;
``...motion_modules.N...`` never matches. The same paths exist in a plain SD1.5 ``UNet2DConditionModel``,
so a character's LoRA also loads on a stock SD1.5 pipeline.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

ALL_PROJECTIONS = ("to_q", "to_k", "to_v", "to_out.0")
DEFAULT_PROJECTIONS = ("to_q", "to_k", "to_v")  # the paper's: query, key and value
DEFAULT_LORA_TARGETS = "qkv"  # the same, as the letters of --lora-targets
PROJECTION_LETTERS = {"q": "to_q", "k": "to_k", "v": "to_v", "o": "to_out.0"}
_SPATIAL = re.compile(r"^(?:down_blocks\.\d+|up_blocks\.\d+|mid_block)\.attentions\.\d+\."
                      r"transformer_blocks\.\d+\.attn[12]\.(to_q|to_k|to_v|to_out\.0)$")


def parse_projections(spec: str) -> tuple[str, ...]:
    """``"qkvo"`` → ``("to_q", "to_k", "to_v", "to_out.0")``; ``"qkv"`` is the paper's choice."""
    letters = spec.strip().lower()
    if not letters or any(ch not in PROJECTION_LETTERS for ch in letters) or len(set(letters)) != len(letters):
        raise ValueError(f"LoRA targets are letters of 'qkvo' (query, key, value, output), got {spec!r}")
    return tuple(PROJECTION_LETTERS[ch] for ch in "qkvo" if ch in letters)


def is_spatial_attention(path: str, projections=ALL_PROJECTIONS) -> bool:
    match = _SPATIAL.match(path)
    return bool(match) and match.group(1) in projections


def _linear(module):
    return getattr(module, "base_layer", module)  # a peft LoRA layer wraps the original Linear


def spatial_attention_targets(unet: torch.nn.Module, projections=DEFAULT_PROJECTIONS) -> list[str]:
    """Module paths of the UNet's spatial attention projections (see the module docstring), in model order."""
    import torch  # here, not at the top: the command line reads this module's defaults without torch

    unknown = set(projections) - set(ALL_PROJECTIONS)
    if unknown:
        raise ValueError(f"unknown attention projections {sorted(unknown)}; use some of {', '.join(ALL_PROJECTIONS)}")
    return [name for name, module in unet.named_modules()
            if is_spatial_attention(name, projections) and isinstance(_linear(module), torch.nn.Linear)]


def target_shapes(unet: torch.nn.Module, projections=ALL_PROJECTIONS) -> dict[str, tuple[int, int]]:
    """``{path: (in_features, out_features)}`` of the spatial attention projections."""
    modules = dict(unet.named_modules())
    return {name: (_linear(modules[name]).in_features, _linear(modules[name]).out_features)
            for name in spatial_attention_targets(unet, projections)}


def unet_signature(unet: torch.nn.Module) -> str:
    """A short digest of every spatial attention projection's path and shape: equal for UNets a LoRA fits."""
    shapes = sorted(target_shapes(unet).items())
    return hashlib.sha256(json.dumps(shapes).encode()).hexdigest()[:16]


def lora_config(targets: list[str], rank: int, alpha: float | None = None):
    """peft ``LoraConfig`` on exactly these module paths (``alpha`` defaults to ``rank``: scale 1)."""
    from peft import LoraConfig

    if rank < 1:
        raise ValueError(f"the LoRA rank must be at least 1, got {rank}")
    return LoraConfig(r=rank, lora_alpha=float(alpha if alpha is not None else rank), target_modules=list(targets),
                      init_lora_weights=True, lora_dropout=0.0, bias="none")
