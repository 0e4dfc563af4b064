"""File-safe shot ids: every shot gets a distinct name made of ``[A-Za-z0-9_-]`` for its output files.

A shot id that is already safe is used as it is. Other ids are sanitised (runs of other characters
become ``_``, at most :data:`MAX_LENGTH` characters); when that makes two names equal, ignoring case
(macOS and Windows file systems do), the sanitised one gets ``-`` and the first 8 hex digits of the
SHA-256 of its raw id. A shot's name therefore depends on its own id alone unless it collides, and
editing a messy id never renames a clean one.
"""

from __future__ import annotations

import hashlib
import re
from typing import Iterable

MAX_LENGTH = 64
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


def safe_file_stem(text: str) -> str:
    """``"1: The Race!"`` → ``"1_The_Race"``; never empty (``"shot"``), at most :data:`MAX_LENGTH` long."""
    stem = _UNSAFE.sub("_", text).strip("_-")[:MAX_LENGTH].rstrip("_-")
    return stem or "shot"


def unique_safe_ids(ids: Iterable[str]) -> list[str]:
    """The safe names of ``ids`` (in order), distinct from each other even ignoring case."""
    ids = list(ids)
    names: list[str | None] = [None] * len(ids)
    taken: set[str] = set()
    # Pass 1: ids that are already safe keep their names, first come first served.
    for i, raw in enumerate(ids):
        if safe_file_stem(raw) == raw and raw.lower() not in taken:
            names[i] = raw
            taken.add(raw.lower())
    stems = [safe_file_stem(raw) for raw in ids]
    stem_counts: dict[str, int] = {}
    for i, stem in enumerate(stems):
        if names[i] is None:
            stem_counts[stem.lower()] = stem_counts.get(stem.lower(), 0) + 1
    # Pass 2: the rest keep their sanitised stem when it is free and shared with no other, else get a suffix.
    for i, raw in enumerate(ids):
        if names[i] is not None:
            continue
        stem = stems[i]
        candidate = stem
        if stem.lower() in taken or stem_counts[stem.lower()] > 1:
            digest = hashlib.sha256(raw.encode("utf-8")).hexdigest()
            candidate = f"{stem[:MAX_LENGTH - 9]}-{digest[:8]}"
            n = 2
            while candidate.lower() in taken:            # only two ids with one digest prefix get here
                candidate = f"{stem[:MAX_LENGTH - 12]}-{digest[:8]}-{n}"
                n += 1
        names[i] = candidate
        taken.add(candidate.lower())
    return names  # type: ignore[return-value]
