"""Fingerprints: of files (for resume and reports) and of model weights (for caches and compatibility).

Importing this module does not import torch (the storyboard stage hashes files without it).
"""

from __future__ import annotations

import hashlib
import os
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


def weights_fingerprint(model: torch.nn.Module) -> str:
    """A short hash of a model's weights: names, shapes and the first 4096 values of each tensor ("meta" for a
    model on the meta device, which has no values)."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if tensor.device.type == "meta":
            return "meta"
        digest.update(f"{name}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().flatten()[:4096].to(torch.float32).cpu().numpy().tobytes())
    return digest.hexdigest()[:16]
