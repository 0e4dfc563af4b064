"""Checks shared by the model-loading tests: exact weight hashes and a short sampler render (not a test module)."""

from __future__ import annotations

import hashlib

import torch

from render.sampler import StructureGuidedSampler

PROMPT, NEGATIVE = "a knight riding a horse", "blurry, low quality"


def full_hash(model: torch.nn.Module) -> str:
    """SHA-256 of every tensor's name and bytes: equal only for bit-identical weights."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()


def sampler_frames(components) -> torch.Tensor:
    """Two 32x32 frames over a moving ramp, 2 steps, seed 0: the same components give the same frames."""
    ramp = torch.linspace(0, 1, 32)
    condition = torch.stack([((ramp[:, None] + ramp[None, :] / 2 + 0.1 * t) % 1.0).expand(3, 32, 32)
                             for t in range(2)])
    return StructureGuidedSampler(components)(PROMPT, NEGATIVE, conditioning=condition, steps=2, guidance_scale=7.5,
                                              generator=torch.Generator().manual_seed(0), output_type="pt").frames
