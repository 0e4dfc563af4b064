"""What one shot resolves to: the storyboard's defaults merged with the shot's own fields.

:meth:`storyboard.Storyboard.shot_settings` returns a :class:`ShotSettings`, so render code reads every
setting of a shot from one object, with paths already resolved against the storyboard's folder.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

DEFAULT_ETA = 0.0  # DDIM's eta: 0 is deterministic DDIM, 1 is DDPM-like (Make-Your-Video samples with 1.0)
DEPTH_RANGE_SEQUENCE = "sequence"  # one depth range for the whole sequence (storyreel's default)
DEPTH_RANGE_FRAME = "frame"  # each frame stretched by its own min and max (Make-Your-Video, the ControlNet's data)
DEPTH_RANGES = (DEPTH_RANGE_SEQUENCE, DEPTH_RANGE_FRAME)
DEFAULT_DEPTH_RANGE = DEPTH_RANGE_SEQUENCE
# How a shot's footage fills its duration (retrieval.footage): extended within its clip at its real speed,
# the matched segment retimed, or looped back and forth; and how far its speed may change.
FOOTAGE_FIT_EXTEND = "extend"
FOOTAGE_FIT_STRETCH = "stretch"
FOOTAGE_FIT_PINGPONG = "pingpong"
FOOTAGE_FITS = (FOOTAGE_FIT_EXTEND, FOOTAGE_FIT_STRETCH, FOOTAGE_FIT_PINGPONG)
DEFAULT_FOOTAGE_FIT = FOOTAGE_FIT_EXTEND
DEFAULT_MAX_SPEED_CHANGE = 1.5
DEFAULT_IP_ADAPTER_SCALE = 0.6  # IP-Adapter's weight for a character's reference pictures (diffusers' examples: 0.5-1)


def frames_for_duration(duration: float, fps: float) -> int:
    """Seconds → frames at ``fps``: the nearest whole number (halves round up), at least 1."""
    return max(1, math.floor(duration * fps + 0.5))


def derive_seed(story_seed: int, shot_id: str) -> int:
    """The seed of a shot that sets none: a hash of the story's seed and the shot's id, in [0, 2**32).

    It depends on the shot's id rather than its position, so inserting, removing or reordering other
    shots leaves it (and the shot's render) unchanged.
    """
    digest = hashlib.sha256(f"storyreel-shot-seed:{story_seed}:{shot_id}".encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "big")


@dataclass(frozen=True)
class ResolvedCharacter:
    """A character as the render loads it; ``embedding`` is an absolute path, or None before training;
    ``reference_images`` its pictures for IP-Adapter identity (absolute paths; empty: none) at
    ``ip_adapter_scale``."""

    name: str
    token: str
    class_word: str
    embedding: Path | None
    scale: float
    reference_images: tuple[Path, ...] = ()
    ip_adapter_scale: float = DEFAULT_IP_ADAPTER_SCALE


@dataclass(frozen=True)
class ResolvedClip:
    """A shot's clip override: this segment (seconds) of this file is its motion, not a retrieved one.
    ``end`` None: from ``start`` on, as far as the shot needs (at most to the clip's end)."""

    path: Path
    start: float
    end: float | None


@dataclass(frozen=True)
class ShotConsistency:
    """A shot's consistent self-attention (the storyboard's ``consistency``, resolved; None when off)."""

    rate: float
    until: float
    reference: str
    bank_frames: int
    budget_mb: float


@dataclass(frozen=True)
class ShotSettings:
    """Everything the render needs for one shot.

    ``prompt`` is the shot's caption, or its text where it has no caption; ``motion_query`` is its
    motion query, or its text; ``negative_prompt`` is the shot's own, or the default. ``tau`` is the
    fraction of denoising steps that are guided by the retrieved clip's depth (Animate-A-Story's τ).
    ``sources`` says where each render setting came from (setting → ``shot``, ``storyboard``, ``preset``
    or ``default``; :meth:`storyboard.Storyboard.setting_sources`); it is not part of the settings hash.
    ``eta`` is DDIM's eta (0: deterministic, 1: fresh noise each step); ``depth_range`` how the footage's depth
    is normalised: ``sequence`` (one range for all frames) or ``frame`` (each frame's own min and max).
    ``footage_fit`` and ``max_speed_change`` say how the footage fills the shot's duration (see
    :mod:`retrieval.footage`): ``extend``, ``stretch`` or ``pingpong``, and the largest speed change allowed.
    ``consistency`` is the shot's consistent self-attention across shots (:mod:`render.consistent_attention`),
    None when off. ``keyframe``: the shot is animated from a keyframe, ``keyframe_image`` (absolute) or its
    generated ``out/keyframes/<safe_id>.png`` (:mod:`render.keyframes`); neither is in :func:`shot_hash`'s record:
    the render adds the keyframe's content to the hash. ``transition`` (``cut``, ``crossfade``, ``generate``; None:
    the render's ``--crossfade``) and ``transition_seconds`` say how the shot goes into the next; they do not
    change the shot's frames and are not in its hash.
    """

    index: int
    id: str
    safe_id: str
    text: str
    prompt: str
    motion_query: str
    negative_prompt: str
    style: str
    width: int
    height: int
    frames: int
    fps: float
    steps: int
    guidance: float
    tau: float
    seed: int
    scheduler: str
    characters: tuple[ResolvedCharacter, ...]
    clip: ResolvedClip | None
    eta: float = DEFAULT_ETA
    depth_range: str = DEFAULT_DEPTH_RANGE
    footage_fit: str = DEFAULT_FOOTAGE_FIT
    max_speed_change: float = DEFAULT_MAX_SPEED_CHANGE
    consistency: ShotConsistency | None = None
    keyframe: bool = False
    keyframe_image: Path | None = None
    transition: str | None = None
    transition_seconds: float = 1.0
    sources: dict[str, str] = field(default_factory=dict, hash=False, compare=False)

    @property
    def size(self) -> tuple[int, int]:
        """``(width, height)`` in pixels."""
        return self.width, self.height

    @property
    def duration(self) -> float:
        """The shot's length in seconds."""
        return self.frames / self.fps

    @property
    def uses_retrieval(self) -> bool:
        """False when a clip override gives the shot its motion."""
        return self.clip is None

    def to_dict(self) -> dict:
        """A JSON-ready dict (paths as strings), for logs and render manifests."""
        return _jsonable(asdict(self))


def _jsonable(value):
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    if isinstance(value, Path):
        return str(value)
    return value
