"""The errors and warnings of the characters stage; every message names the file (or field) at fault."""

from __future__ import annotations

import os

from storyreel.errors import StoryreelError


class CharacterError(StoryreelError, ValueError):
    """Bad input to the characters stage (reference images, tokens, settings, character files)."""


class CharacterFileError(CharacterError):
    """A character file that cannot be used: not safetensors, not a character file, or made for another model.

    ``path`` is the file; the message names it.
    """

    def __init__(self, path: str | os.PathLike | None, detail: str):
        self.path = path
        self.detail = detail
        super().__init__(f"{path}: {detail}" if path is not None else detail)


class ReferenceImageError(CharacterError):
    """A reference image folder or image that cannot be trained on; ``path`` names the folder or file."""

    def __init__(self, path: str | os.PathLike, detail: str):
        self.path = path
        self.detail = detail
        super().__init__(f"{path}: {detail}")


class CharacterTokenError(CharacterError):
    """A character token that cannot be registered (already a word of the vocabulary, or taken)."""


class CheckpointError(CharacterError):
    """A training checkpoint that cannot be resumed (other settings, other images, damaged files)."""


class ReferenceImageCountWarning(UserWarning):
    """Fewer (or more) reference images than the method wants, 3 to 20: training goes on."""
