"""A shot's footage: the stretch of a clip whose motion a shot plays, and the speed it plays at.

Animate-A-Story transfers the motion of real footage, so the footage should keep its real speed: a 2 s index
window spread over a 4 s shot would play its motion at half speed. A shot of ``duration`` seconds therefore
takes footage of its own duration around the segment that was chosen for it (retrieved, or a clip override),
inside the segment's *room*: the cut-free stretch of its clip (the scene the index recorded, from the cut
before it to the cut after it or the clip's end) less the footage other shots of the story already use.
How the footage fills the shot is the storyboard's ``footage_fit``:

``extend`` (the default)
    a span of exactly the shot's duration, centred on the segment and moved to lie inside its room: speed
    1.0. When the room is shorter than the shot, the whole room, slowed to fill the shot (speed = room /
    duration), if that stays within ``max_speed_change``.
``stretch``
    the segment itself, retimed to the shot (speed = segment / duration), within ``max_speed_change``.
``pingpong``
    as ``extend``; when the room is shorter than the shot, the room plays forwards and back at its own
    speed (speed 1.0) until the shot ends.

``speed`` is footage seconds per shot second: 1.0 keeps the real motion, 0.5 plays it at half speed.
``max_speed_change`` (default 1.5) bounds it to ``[1 / max_speed_change, max_speed_change]``; footage that
cannot fill the shot within the bound raises :class:`FootageFitError`, and :func:`find_footage` moves on to
the next candidate (the re-ranking already prefers segments whose clip can host the shot).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from retrieval.index_format import segment_sample_times
from retrieval.reranking import RerankOptions, overlaps
from storyboard.shot_settings import (
    DEFAULT_FOOTAGE_FIT,
    DEFAULT_MAX_SPEED_CHANGE,
    FOOTAGE_FIT_EXTEND,
    FOOTAGE_FIT_PINGPONG,
    FOOTAGE_FIT_STRETCH,
    FOOTAGE_FITS,
)
from storyreel.errors import StoryreelError

# Seconds within which two times are the same (container timestamps and float sums are not exact).
TIME_TOLERANCE = 1e-6
# Candidates find_footage considers before it reports that none can host the shot.
CANDIDATES = 20


class FootageFitError(StoryreelError, ValueError):
    """Footage that cannot fill a shot within the storyboard's ``max_speed_change``."""


@dataclass(frozen=True)
class Footage:
    """The stretch ``[start, end)`` of ``path`` that a shot of ``shot_s`` seconds plays (see the module doc).

    ``room`` is the cut-free stretch it could use; ``pingpong`` says that the span plays forwards and back
    (at ``speed`` 1.0) because the room was shorter than the shot.
    """

    path: str
    start: float
    end: float
    shot_s: float
    speed: float
    fit: str
    room: tuple[float, float]
    pingpong: bool = False

    @property
    def seconds(self) -> float:
        return self.end - self.start

    @property
    def pingpong_s(self) -> float | None:
        """The shot seconds over which the span plays back and forth, or None when it plays once."""
        return self.shot_s if self.pingpong else None

    def sample_times(self, frames: int) -> list[float]:
        """The clip times of the shot's ``frames`` frames (see :func:`footage_sample_times`)."""
        return footage_sample_times(self.start, self.end, frames, self.pingpong_s)

    def record(self) -> dict:
        """What a shot's record keeps: the span, the speed and how it was fitted."""
        return {"start": round(self.start, 6), "end": round(self.end, 6), "speed": round(self.speed, 6),
                "fit": self.fit, "pingpong": self.pingpong,
                "room": [round(self.room[0], 6), round(self.room[1], 6)], "shot_seconds": round(self.shot_s, 6)}


def footage_sample_times(start: float, end: float, frames: int, pingpong_s: float | None = None) -> list[float]:
    """The clip times of ``frames`` frames played from ``[start, end)``.

    Once through (``pingpong_s`` None): the midpoints of ``frames`` equal slices, as the index samples a
    segment, so the span's length sets the speed. Back and forth over ``pingpong_s`` shot seconds: frame
    ``i`` is at shot time ``(i + 0.5) * pingpong_s / frames`` and the span is walked forwards, then
    backwards, at its own speed (kept a millisecond inside ``end``, whose frame may be past a cut).
    """
    if pingpong_s is None:
        return segment_sample_times(start, end, frames)
    if frames < 1:
        raise ValueError(f"frames must be at least 1, got {frames}")
    length = end - start
    if length <= 0:
        raise ValueError(f"an empty span: {start:g}-{end:g} s")
    inside = max(0.0, length - min(1e-3, length / 2))
    times = []
    for i in range(frames):
        phase = ((i + 0.5) * pingpong_s / frames) % (2 * length)
        offset = phase if phase <= length else 2 * length - phase
        times.append(start + min(offset, inside))
    return times


def check_fit(fit: str, max_speed_change: float) -> None:
    if fit not in FOOTAGE_FITS:
        raise ValueError(f"footage_fit must be one of {', '.join(FOOTAGE_FITS)}, got {fit!r}")
    if not max_speed_change >= 1:
        raise ValueError(f"max_speed_change must be at least 1, got {max_speed_change!r}")


def fit_footage(path: str, segment: tuple[float, float], room: tuple[float, float], duration: float,
                fit: str = DEFAULT_FOOTAGE_FIT, max_speed_change: float = DEFAULT_MAX_SPEED_CHANGE) -> Footage:
    """The footage a ``duration``-second shot plays from ``segment`` (``(start, end)`` seconds of ``path``)
    inside ``room`` (the cut-free, unused stretch around it), by ``fit``; see the module doc.

    Raises :class:`FootageFitError` when the footage would play faster or slower than ``max_speed_change``.
    """
    check_fit(fit, max_speed_change)
    if duration <= 0:
        raise ValueError(f"the shot's duration must be positive, got {duration!r}")
    seg_start, seg_end = float(segment[0]), float(segment[1])
    room_start, room_end = min(float(room[0]), seg_start), max(float(room[1]), seg_end)
    room_s = room_end - room_start
    if fit == FOOTAGE_FIT_STRETCH:
        return _within_limit(Footage(path, seg_start, seg_end, duration, (seg_end - seg_start) / duration, fit,
                                     (room_start, room_end)), max_speed_change)
    if room_s >= duration - TIME_TOLERANCE:
        centre = (seg_start + seg_end) / 2
        start = min(max(centre - duration / 2, room_start), room_end - duration)
        start = max(start, room_start)
        return Footage(path, start, min(start + duration, room_end), duration, 1.0, fit, (room_start, room_end))
    if fit == FOOTAGE_FIT_PINGPONG:
        return Footage(path, room_start, room_end, duration, 1.0, fit, (room_start, room_end), pingpong=True)
    assert fit == FOOTAGE_FIT_EXTEND
    return _within_limit(Footage(path, room_start, room_end, duration, room_s / duration, fit,
                                 (room_start, room_end)), max_speed_change)


def _within_limit(footage: Footage, max_speed_change: float) -> Footage:
    slowest, fastest = 1 / max_speed_change, max_speed_change
    if footage.speed < slowest - TIME_TOLERANCE or footage.speed > fastest + TIME_TOLERANCE:
        how = "slowed" if footage.speed < 1 else "sped up"
        raise FootageFitError(
            f"{footage.seconds:.2f} s of footage for a {footage.shot_s:.2f} s shot would play at {footage.speed:.2f}x "
            f"speed ({how} by {max(footage.speed, 1 / footage.speed):.2f}x), beyond max_speed_change "
            f"{max_speed_change:g}"
        )
    return footage


def free_room(segment, used: Sequence = ()) -> tuple[float, float]:
    """The segment's cut-free stretch (``segment.scene``, or the segment itself) less the footage in ``used``
    from the same clip: the largest stretch around the segment that no other shot plays."""
    start, end = getattr(segment, "scene", (segment.start, segment.end))
    for other in used:
        if other.path != segment.path or overlaps(segment, other):
            continue
        if other.end <= segment.start + TIME_TOLERANCE:
            start = max(start, other.end)
        elif other.start >= segment.end - TIME_TOLERANCE:
            end = min(end, other.start)
    return (start, end)


def find_footage(library, query: str, duration: float, fit: str = DEFAULT_FOOTAGE_FIT,
                 max_speed_change: float = DEFAULT_MAX_SPEED_CHANGE, used: Sequence = (),
                 rerank_options: RerankOptions | None = None, candidates: int = CANDIDATES):
    """The best segment for ``query`` whose footage can fill a ``duration``-second shot, and that footage:
    ``(ClipSegment, Footage)``.

    Candidates are re-ranked with the shot's duration (segments with room for the whole shot first) and skip
    footage in ``used`` (other shots' :class:`Footage`, or anything with ``path``, ``start`` and ``end``);
    the first whose footage fits within ``max_speed_change`` wins. :class:`FootageFitError` when none of the
    ``candidates`` best does, naming the longest room found and what to change; ``LookupError`` when the
    library has no segment at all that avoids ``used``.
    """
    check_fit(fit, max_speed_change)
    options = rerank_options or RerankOptions(duration=duration)
    found = library.search(query, k=candidates, rerank_options=options, avoid=used)
    if not found:
        raise LookupError(f"the index has no segment for {query!r} that does not overlap another shot's footage")
    longest = 0.0
    for segment in found:
        room = free_room(segment, used)
        try:
            return segment, fit_footage(segment.path, (segment.start, segment.end), room, duration, fit,
                                        max_speed_change)
        except FootageFitError:
            longest = max(longest, segment.duration if fit == FOOTAGE_FIT_STRETCH else room[1] - room[0])
    raise FootageFitError(
        f"none of the {len(found)} best segments for {query!r} can fill a {duration:.2f} s shot within "
        f"max_speed_change {max_speed_change:g} (the longest cut-free footage among them is {longest:.2f} s): "
        "use footage_fit \"pingpong\", raise max_speed_change, shorten the shot, or index longer clips"
    )
