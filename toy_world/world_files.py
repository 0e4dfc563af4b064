"""A toy world on disk: ``DIR/<label>/<name>.mp4``, ``DIR/depth/<label>/<name>.npz``, ``DIR/captions.jsonl``.

``captions.jsonl`` is a build-index manifest (``build-index --manifest DIR/captions.jsonl``): one row per clip
with the keys build-index reads, ``path`` (relative to the manifest), ``caption`` and ``label``, and the keys
it ignores, ``depth`` (the npz, relative to the manifest), ``cut_s`` (seconds of the hard cut, or null),
``split``, ``name`` and ``spec`` (the :class:`~toy_world.scenes.ClipSpec` as a dict). Each npz holds
``inverse_depth`` (T x H x W float32) and ``mask`` (T x H x W bool). ``DIR/world.json`` records what made the
world (seed, split, size, fps); writing more clips into a folder made with other settings is refused.

Every file is written atomically, and a clip whose MP4 and npz are already there is not drawn again, so an
interrupted run resumes.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from storyreel.atomic_files import write_bytes, write_json, write_jsonl
from storyreel.errors import StoryreelError
from storyreel.video_files import read_video, write_mp4
from toy_world.scenes import FPS, ClipSpec, caption, render_clip, world_specs

MANIFEST_NAME = "captions.jsonl"
WORLD_RECORD = "world.json"


class WorldError(StoryreelError, ValueError):
    """A world folder that cannot be written or read (other settings, missing files)."""


@dataclass
class WorldClip:
    """One clip of a world read back: decoded frames (as an index sees them) and the ground truth."""

    name: str
    spec: ClipSpec
    caption: str
    frames: np.ndarray  # T x H x W x 3 uint8, decoded from the MP4
    inverse_depth: np.ndarray  # T x H x W float32
    mask: np.ndarray  # T x H x W bool

    def scenes(self) -> list[tuple[int, int, ClipSpec]]:
        """``(first frame, end, spec)`` of each scene: the whole clip, or the two sides of its hard cut."""
        count, cut = len(self.frames), self.spec.cut_frame(FPS)
        return [(0, count, self.spec)] if cut is None else [(0, cut, self.spec), (cut, count, self.spec.cut)]


def clip_name(split: str, index: int) -> str:
    return f"{split}-{index:04d}"


def _npz_bytes(inverse_depth: np.ndarray, mask: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, inverse_depth=inverse_depth.astype(np.float32), mask=mask.astype(bool))
    return buffer.getvalue()


def write_world(out: str | Path, seed: int, clips: int, split: str = "train", size: int = 64, fps: int = FPS,
                progress: Callable[[int, int, str], None] | None = None) -> list[dict]:
    """Draw ``clips`` clips of ``split`` of the world ``seed`` into ``out``; returns the manifest rows."""
    out = Path(out)
    record = {"seed": seed, "split": split, "size": size, "fps": fps}
    record_path = out / WORLD_RECORD
    if record_path.is_file():
        old = json.loads(record_path.read_text(encoding="utf-8"))
        if any(old.get(key) != value for key, value in record.items()):
            raise WorldError(f"{out}: this folder holds a world made with {old}, not {record}; use another --out")
    write_json(record_path, record)
    rows = []
    for index, spec in enumerate(world_specs(seed, clips, split)):
        name = clip_name(split, index)
        video = Path(spec.label) / f"{name}.mp4"
        depth = Path("depth") / spec.label / f"{name}.npz"
        if not ((out / video).is_file() and (out / depth).is_file()):
            frames, inverse_depth, mask = render_clip(spec, size=size, fps=fps)
            write_bytes(out / depth, _npz_bytes(inverse_depth, mask))
            write_mp4(frames, out / video, fps=fps)
        rows.append({"path": video.as_posix(), "caption": caption(spec), "label": spec.label,
                     "depth": depth.as_posix(), "cut_s": spec.cut_seconds(fps), "split": split, "name": name,
                     "spec": spec.to_dict()})
        if progress is not None:
            progress(index + 1, clips, name)
    write_jsonl(out / MANIFEST_NAME, rows)
    return rows


def world_record(world: str | Path) -> dict | None:
    """What made ``world`` (its ``world.json``: seed, split, size, fps), or None when it has none."""
    path = Path(world) / WORLD_RECORD
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def read_manifest(world: str | Path) -> list[dict]:
    """The rows of ``world``'s ``captions.jsonl``."""
    manifest = Path(world) / MANIFEST_NAME
    if not manifest.is_file():
        raise WorldError(f"{manifest}: no such file; make the world first (python data/make_toy_world.py)")
    return [json.loads(line) for line in manifest.read_text(encoding="utf-8").splitlines() if line.strip()]


def read_world(world: str | Path, limit: int | None = None) -> list[WorldClip]:
    """Every clip of ``world`` (the first ``limit``), decoded from its MP4, with its depth and mask."""
    world = Path(world)
    clips = []
    for row in read_manifest(world)[:limit]:
        frames, _ = read_video(world / row["path"])
        with np.load(world / row["depth"], allow_pickle=False) as data:
            inverse_depth, mask = data["inverse_depth"], data["mask"]
        if len(frames) != len(inverse_depth):
            raise WorldError(f"{world / row['path']}: {len(frames)} frames, but its depth has {len(inverse_depth)}")
        clips.append(WorldClip(row["name"], ClipSpec.from_dict(row["spec"]), row["caption"], frames, inverse_depth,
                               mask))
    return clips
