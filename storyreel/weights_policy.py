"""Safetensors only: storyreel never loads a pickle-based checkpoint a user hands it (loading one can run code).

Every loader (retrieval's CLIP, structure's depth models, the render model zoo, character files) checks
paths against :data:`PICKLE_SUFFIXES` and refuses them with :data:`PICKLE_REFUSAL` in its message.
"""

from __future__ import annotations

import os
from pathlib import Path

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
PICKLE_REFUSAL = "pickle-based checkpoints can run code"


def is_pickle_checkpoint(path: str | os.PathLike) -> bool:
    """True for a file name with a pickle checkpoint suffix (``.bin``, ``.pt``, ``.ckpt``, ...)."""
    return Path(path).suffix.lower() in PICKLE_SUFFIXES
