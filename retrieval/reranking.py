"""Re-ranking of CLIP candidates: label/caption match, room for a shot's duration, motion range, diversity.

The final score is the CLIP cosine plus small, explained adjustments, so the raw similarity stays the
dominant signal::

    score = clip_score + label_weight * word_match(query, label or caption)
                       - duration_weight * min(1, max(0, duration - room) / duration)

``room`` is the length of the cut-free stretch of the clip around the segment (its scene, where the index
recorded one; else the segment itself): a shot of ``duration`` seconds takes footage of its own length from
there (:mod:`retrieval.footage`), so a segment whose clip can host the whole shot loses nothing, and one
that would have to be slowed down loses in proportion to the missing time.

Segments whose motion score lies outside ``motion_range`` are dropped. ``max_per_clip`` keeps the
best N segments of any one clip, and ``avoid`` drops segments that overlap ones already used (how
shots of one story get different footage).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Iterable, Protocol, Sequence

import snowballstemmer

_STOPWORDS = frozenset(
    "a an the of in on at to and or with by for from into onto over under is are was were be being "
    "his her their its this that these those some someone something person people man woman video clip".split()
)


class Scored(Protocol):
    path: str
    start: float
    end: float
    label: str | None
    caption: str | None
    motion_score: float
    clip_score: float
    score: float


@dataclass(frozen=True)
class RerankOptions:
    label_weight: float = 0.05
    duration: float | None = None
    duration_weight: float = 0.05
    motion_range: tuple[float | None, float | None] | None = None
    max_per_clip: int | None = None

    def __post_init__(self):
        if self.duration is not None and self.duration <= 0:
            raise ValueError(f"duration must be positive, got {self.duration}")
        if self.max_per_clip is not None and self.max_per_clip < 1:
            raise ValueError(f"max_per_clip must be at least 1, got {self.max_per_clip}")
        if self.motion_range is not None:
            low, high = self.motion_range
            if low is not None and high is not None and low > high:
                raise ValueError(f"motion range is empty: minimum {low} > maximum {high}")


_STEMMER = snowballstemmer.stemmer("english")


def content_words(text: str | None) -> set[str]:
    if not text:
        return set()
    words = re.findall(r"[a-z0-9]+", text.lower().replace("_", " "))
    return set(_STEMMER.stemWords([w for w in words if w not in _STOPWORDS]))


def word_match(query: str | None, text: str | None) -> float:
    """The fraction of ``text``'s content words found in ``query`` (0 when either is empty)."""
    target = content_words(text)
    if not target or not query:
        return 0.0
    return len(target & content_words(query)) / len(target)


def room(segment: Scored) -> float:
    """Seconds of cut-free footage around ``segment``: its scene where known, else the segment itself."""
    start, end = getattr(segment, "scene", (segment.start, segment.end))
    return end - start


def overlaps(a: Scored, b: Scored) -> bool:
    return a.path == b.path and a.start < b.end and b.start < a.end


def rerank(
    candidates: Iterable[Scored],
    query: str | None,
    options: RerankOptions,
    avoid: Sequence[Scored] = (),
) -> list:
    kept = []
    low, high = options.motion_range or (None, None)
    for segment in candidates:
        if (low is not None and segment.motion_score < low) or (high is not None and segment.motion_score > high):
            continue
        if any(overlaps(segment, used) for used in avoid):
            continue
        score = segment.clip_score
        if query and options.label_weight:
            score += options.label_weight * max(word_match(query, segment.label), word_match(query, segment.caption))
        if options.duration is not None:
            score -= options.duration_weight * min(1.0, max(0.0, options.duration - room(segment)) / options.duration)
        kept.append(replace(segment, score=score))
    kept.sort(key=lambda s: -s.score)
    if options.max_per_clip is None:
        return kept
    per_clip: dict[str, int] = {}
    limited = []
    for segment in kept:
        if per_clip.get(segment.path, 0) < options.max_per_clip:
            per_clip[segment.path] = per_clip.get(segment.path, 0) + 1
            limited.append(segment)
    return limited
