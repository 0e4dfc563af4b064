"""Seeded model construction: the same weights on every call, the caller's random state untouched."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def seeded(seed: int, device: torch.device | None = None) -> Iterator[None]:
    """Seed the RNG of the device that builds (the CPU, or ``device`` when it is a CUDA device) for the block,
    then restore it: models built inside get the same weights on every call and every machine."""
    devices = []
    if device is not None and device.type == "cuda":
        devices = [device.index if device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield
