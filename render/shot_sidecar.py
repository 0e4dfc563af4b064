"""A shot's files and its record: where a shot's files go under ``out/shots/``, and the sidecar.

The sidecar (``shots/<safe_id>.json``, written after the shot's mp4) is a :class:`ShotSidecar`: the settings
hash a rerun compares (:data:`CODE_VERSION` is part of that hash) and every decision made for the shot: its
footage (:class:`Segment`), prompt, characters, sampling settings, depth and models. Its JSON is made and read
here only (:meth:`ShotSidecar.to_json`, :meth:`ShotSidecar.from_json`). Fields added since the first sidecars
have defaults, and a sidecar without them still reads (its shot is not rendered again for that).
"""

from __future__ import annotations

import json
from dataclasses import MISSING, asdict, dataclass, fields, replace
from pathlib import Path

from storyreel.atomic_files import write_json

CODE_VERSION = 3  # bump when a change in the render changes a shot's pixels (it is part of every settings hash)


def shot_files(out: Path, shot) -> dict[str, Path]:
    """A shot's files under ``out/shots/``, named by its safe id."""
    base = Path(out) / "shots" / shot.safe_id
    return {"mp4": base.with_suffix(".mp4"), "gif": base.with_suffix(".gif"),
            "sidecar": base.with_suffix(".json"), "preview": Path(f"{base}.preview.npz")}


@dataclass(frozen=True)
class FootageRecord:
    """What the shot plays of its clip (:class:`retrieval.footage.Footage`): the span ``start``-``end``
    (seconds), its ``speed`` (footage seconds per shot second; 1.0 keeps the real motion), how it was fitted
    (``fit``; ``pingpong``: the span plays forwards and back), the cut-free ``room`` it could use, and the
    shot's length (``shot_seconds``)."""

    start: float
    end: float
    speed: float
    fit: str
    pingpong: bool
    room: list[float]
    shot_seconds: float


@dataclass(frozen=True)
class FootageSpan:
    """The footage a shot plays, as :func:`structure.extract.resolve_source` and
    :func:`retrieval.reranking.overlaps` read it: ``path``, ``start``, ``end`` and ``pingpong_s``."""

    path: str
    start: float
    end: float
    pingpong_s: float | None = None


@dataclass(frozen=True)
class Segment:
    """A shot's footage: the retrieved segment (``source="retrieval"``) or the shot's clip override
    (``source="clip_override"``: no segment id, score or label), and what the shot plays of its clip
    (``footage``; None in sidecars from before footage kept its speed, where the segment itself was played).
    :attr:`range` is the footage played, so the ranges of rendered shots are the avoid list of the next search."""

    source: str
    segment_id: int | None
    path: str
    start: float
    end: float
    score: float | None
    label: str | None
    footage: FootageRecord | None = None

    @property
    def range(self) -> FootageSpan:
        """The footage played, as a :func:`structure.extract.resolve_source` source."""
        if self.footage is None:
            return FootageSpan(self.path, self.start, self.end)
        return FootageSpan(self.path, self.footage.start, self.footage.end,
                           self.footage.shot_seconds if self.footage.pingpong else None)

    @classmethod
    def from_json(cls, data: dict) -> Segment:
        footage = data.get("footage")
        return cls(**{**data, "footage": None if footage is None else FootageRecord(**footage)})


@dataclass(frozen=True)
class CharacterUse:
    """A trained character in a shot: its LoRA scale, its token, whether the prompt names it, and whether it was
    trained on the base weights it was rendered on (``same``; ``other``: rendered with ``--allow-other-base``;
    ``unrecorded``: a character file, or a sidecar, from before base weights were fingerprinted)."""

    scale: float
    token: str
    in_prompt: bool
    base_weights: str = "unrecorded"


@dataclass(frozen=True)
class DepthRecord:
    """The depth the shot was guided by: the depth model, the sequence's own source and settings, and the raw depth
    cache it is kept in (None in sidecars from before it was recorded: ``out/cache/depth``)."""

    model: str
    source: dict
    settings: dict
    cache: str | None = None


@dataclass(frozen=True)
class WorkerRecord:
    """Where the shot was rendered."""

    host: str
    pid: int
    device: str


@dataclass(frozen=True)
class ShotSidecar:
    """Everything recorded for a rendered shot (the JSON keys are the field names, in this order)."""

    settings_hash: str
    code_version: int
    shot: str
    safe_id: str
    query: str | None
    segment: Segment
    prompt: str
    negative_prompt: str
    prompt_weighting: str
    characters: dict[str, CharacterUse]
    seed: int
    tau: float
    steps: int
    guidance: float
    scheduler: str
    frames: int
    fps: float
    width: int
    height: int
    controlnet_calls: int
    depth: DepthRecord
    models: dict | None  # the render components' record; None in a report's shot entries (kept once at the top)
    settings: dict
    timings_s: dict[str, float]
    worker: WorkerRecord
    rendered_at: str
    deterministic: bool = False  # rendered under render-story --deterministic
    consistency: dict | None = None  # consistent self-attention: the bank recorded and the banks attended to
    ip_adapter: dict | None = None  # IP-Adapter identity: the adapter, and each character's scale and pictures
    keyframe: dict | None = None  # animated from a keyframe: the picture, its source and SHA-256, the SparseCtrl model

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> ShotSidecar:
        """The sidecar of ``data``; KeyError or TypeError when a key is missing (one with a default may be) or
        unknown."""
        values = {f.name: data[f.name] for f in fields(cls) if f.name in data or f.default is MISSING}
        if set(data) - set(values):
            raise KeyError(f"unknown sidecar keys {sorted(set(data) - set(values))}")
        values.update(segment=Segment.from_json(data["segment"]), depth=DepthRecord(**data["depth"]),
                      worker=WorkerRecord(**data["worker"]),
                      characters={name: CharacterUse(**use) for name, use in data["characters"].items()})
        return cls(**values)

    @classmethod
    def read(cls, path: Path) -> ShotSidecar | None:
        """The sidecar at ``path``; None when it is missing or is not a sidecar (the shot is rendered again)."""
        try:
            return cls.from_json(json.loads(Path(path).read_text()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None

    def write(self, path: Path) -> None:
        write_json(path, self.to_json())

    def with_retrieval_time(self, retrieval_s: float) -> ShotSidecar:
        """The timings with the driver's retrieval time first and their total last."""
        timings = {"retrieval": round(retrieval_s, 3), **self.timings_s}
        timings["total"] = round(sum(v for k, v in timings.items() if k != "total"), 3)
        return replace(self, timings_s=timings)
