"""Fingerprints: of files (for resume and reports) and of model weights (for caches and compatibility).

Importing this module does not import torch (the storyboard stage hashes files without it).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

_CHUNK = 1 << 20
# (resolved path, size, mtime_ns) → content SHA-256, so a file used by many shots is read once.
_FILE_HASHES: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's content (memoised per process while its size and mtime stay the same)."""
    path = Path(path).resolve()
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _FILE_HASHES:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
        _FILE_HASHES[key] = digest.hexdigest()
    return _FILE_HASHES[key]


FINGERPRINT_VALUES = 4096  # values hashed per tensor


def weights_fingerprint(model: torch.nn.Module, value_dtype: torch.dtype | None = None) -> str:
    """A short hash of a model's weights: names, shapes and the first 4096 values of each tensor ("meta" for a
    model on the meta device, which has no values); see :func:`state_fingerprint`."""
    return state_fingerprint(model.state_dict(), value_dtype)


def state_fingerprint(state: Mapping[str, torch.Tensor], value_dtype: torch.dtype | None = None) -> str:
    """16 hex digits over the names, shapes and first values of a state dict's tensors, the values cast to
    ``value_dtype`` first (default float32; float16 makes float32 and float16 copies of the same weights
    match)."""
    import torch

    value_dtype = value_dtype or torch.float32
    digest = hashlib.sha256()
    for name, tensor in sorted(state.items()):
        if tensor.device.type == "meta":
            return "meta"
        digest.update(f"{name}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().flatten()[:FINGERPRINT_VALUES].to(value_dtype).cpu().numpy().tobytes())
    return digest.hexdigest()[:16]
