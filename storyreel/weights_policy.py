"""Safetensors only: storyreel never loads a pickle-based checkpoint a user hands it (loading one can run code).

Every loader (retrieval's CLIP, structure's depth models, the render model zoo, character files, IP-Adapters, the
evaluation's metric models) checks paths against :data:`PICKLE_SUFFIXES` and refuses them with
:data:`PICKLE_REFUSAL` in its message. One command reads a pickle, at the user's explicit request:
``python -m evaluation.i3d_conversion IN.pt OUT.safetensors`` converts the standard FVD extractor's state dict
(published only as a pickle) with ``torch.load(weights_only=True)``, PyTorch's tensor-only loader, which refuses
any other object.
"""

from __future__ import annotations

import os
from pathlib import Path

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
PICKLE_REFUSAL = "pickle-based checkpoints can run code"


def is_pickle_checkpoint(path: str | os.PathLike) -> bool:
    """True for a file name with a pickle checkpoint suffix (``.bin``, ``.pt``, ``.ckpt``, ...)."""
    return Path(path).suffix.lower() in PICKLE_SUFFIXES
