"""The on-disk format of a storyreel video library index (owned here; index_builder writes it).

An index folder holds::

    manifest.json         what built it (model, frames, window, stride, factory, counts, format version)
    metadata.sqlite       videos, segments and embedding shards (tables below)
    embeddings/*.npy      float32 unit vectors, one row per segment, in segment-id order
    index.faiss           the FAISS index over all segment vectors (ids = segment ids)
    errors.jsonl          every file that failed, with its reason

Segment ids are contiguous from 0 in the order the sources list their videos, so a resumed build and
an uninterrupted one give every segment the same id.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from storyreel.errors import StoryreelError

FORMAT_VERSION = 1

MANIFEST_FILE = "manifest.json"
METADATA_FILE = "metadata.sqlite"
EMBEDDINGS_DIR = "embeddings"
FAISS_FILE = "index.faiss"
ERRORS_FILE = "errors.jsonl"

SCHEMA = """
CREATE TABLE IF NOT EXISTS build_info (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS videos (
    video_id     INTEGER PRIMARY KEY,
    source_key   TEXT NOT NULL UNIQUE,
    path         TEXT NOT NULL,
    status       TEXT NOT NULL CHECK (status IN ('ok', 'partial', 'error')),
    error        TEXT,
    label        TEXT,
    caption      TEXT,
    fps          REAL,
    width        INTEGER,
    height       INTEGER,
    duration_s   REAL,
    num_segments INTEGER NOT NULL DEFAULT 0,
    backend      TEXT
);
CREATE TABLE IF NOT EXISTS shards (
    shard_id         INTEGER PRIMARY KEY,
    file             TEXT NOT NULL,
    first_segment_id INTEGER NOT NULL,
    count            INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS segments (
    segment_id   INTEGER PRIMARY KEY,
    video_id     INTEGER NOT NULL REFERENCES videos(video_id),
    clip_path    TEXT NOT NULL,
    start_s      REAL NOT NULL,
    end_s        REAL NOT NULL,
    fps          REAL,
    width        INTEGER,
    height       INTEGER,
    label        TEXT,
    caption      TEXT,
    motion_score REAL NOT NULL,
    shard_id     INTEGER NOT NULL REFERENCES shards(shard_id),
    shard_row    INTEGER NOT NULL,
    scene_start_s REAL,
    scene_end_s   REAL
);
CREATE INDEX IF NOT EXISTS segments_by_video ON segments(video_id);
"""

# The cut-free stretch of its clip that holds each segment (from the cut before it, or the clip's first frame,
# to the cut after it, or the clip's end): how far a shot's footage may extend the segment. Added to format
# version 1 later; an index built before has no such columns (NULL: only the segment itself is known cut-free).
SCENE_COLUMNS = ("scene_start_s", "scene_end_s")


def add_scene_columns(db) -> None:
    """Give an index database written before :data:`SCENE_COLUMNS` existed those columns (NULL for old rows)."""
    present = {row[1] for row in db.execute("PRAGMA table_info(segments)")}
    for column in SCENE_COLUMNS:
        if column not in present:
            db.execute(f"ALTER TABLE segments ADD COLUMN {column} REAL")


def has_scene_columns(db) -> bool:
    present = {row[1] for row in db.execute("PRAGMA table_info(segments)")}
    return all(column in present for column in SCENE_COLUMNS)


# Frames are taken at the middle of N equal slices of a segment; the frame shown at time t is the last
# decoded frame whose timestamp is <= t (+ this tolerance for rounding in container timestamps).
TIME_EPSILON = 1e-4


def segment_sample_times(start: float, end: float, num_frames: int) -> list[float]:
    """The timestamps at which a segment's ``num_frames`` frames are sampled (slice midpoints)."""
    if num_frames < 1:
        raise ValueError(f"num_frames must be at least 1, got {num_frames}")
    step = (end - start) / num_frames
    return [start + (i + 0.5) * step for i in range(num_frames)]


class IndexFormatError(StoryreelError, ValueError):
    """An index folder that is missing files or was written by another format version."""


@dataclass(frozen=True)
class Manifest:
    """The parsed ``manifest.json``."""

    format_version: int
    model: dict
    dim: int
    frames_per_segment: int
    window_s: float
    stride_s: float
    image_size: int
    factory: str
    search: dict
    counts: dict
    faiss_sha256: str
    path: Path

    @classmethod
    def read(cls, index_dir: str | Path) -> "Manifest":
        index_dir = Path(index_dir)
        path = index_dir / MANIFEST_FILE
        if not index_dir.is_dir():
            raise IndexFormatError(f"{index_dir}: no such index folder (build one with `build-index`)")
        if not path.is_file():
            raise IndexFormatError(
                f"{path}: missing; the index was never finished (rerun the same `build-index` command to resume)"
            )
        try:
            raw = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise IndexFormatError(f"{path}: not valid JSON ({exc})") from exc
        version = raw.get("format_version")
        if version != FORMAT_VERSION:
            raise IndexFormatError(
                f"{path}: field 'format_version' is {version!r}; this storyreel reads version {FORMAT_VERSION}"
            )
        try:
            return cls(
                format_version=version,
                model=raw["model"],
                dim=int(raw["dim"]),
                frames_per_segment=int(raw["frames_per_segment"]),
                window_s=float(raw["window_s"]),
                stride_s=float(raw["stride_s"]),
                image_size=int(raw["image_size"]),
                factory=str(raw["factory"]),
                search=dict(raw.get("search", {})),
                counts=dict(raw.get("counts", {})),
                faiss_sha256=str(raw["faiss_sha256"]),
                path=path,
            )
        except KeyError as exc:
            raise IndexFormatError(f"{path}: missing field {exc.args[0]!r}") from exc
