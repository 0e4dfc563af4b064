"""The base of every error storyreel reports to a user, and how such errors are printed.

A command catches :class:`StoryreelError`, prints ``error: <message>`` on one line and exits with the
error's :attr:`~StoryreelError.exit_code` (2: bad input or a model that cannot be had, nothing written).
Each stage's errors derive from it (and keep their builtin base, ``ValueError`` or ``RuntimeError``, so
callers that catch those still do).
"""

from __future__ import annotations


class StoryreelError(Exception):
    """An error meant for the user: its message names the file, field or model and what to do instead."""

    exit_code: int = 2


class ModelLoadError(StoryreelError, RuntimeError):
    """A model that cannot be built or loaded; the message says which and what to do instead."""


class OptionError(StoryreelError, ValueError):
    """A command-line option that cannot be used; the message starts with the option (``--out: ...``)."""

    def __init__(self, flag: str, detail: str, separator: str = ": "):
        self.flag = flag
        self.detail = detail
        super().__init__(f"{flag}{separator}{detail}")


def first_line(exc: BaseException, limit: int | None = 300) -> str:
    """The first line of an exception's message (at most ``limit`` characters; None: all of it), or its
    type's name when it has no message."""
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else type(exc).__name__
