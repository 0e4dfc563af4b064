"""Where videos come from: a folder tree, a Kinetics annotation CSV, or a JSONL manifest.

Every source yields :class:`VideoJob` records; a job's ``key`` identifies it across runs (resume and
``--update`` skip keys already in the store).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from storyreel.errors import StoryreelError

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov")


class SourceError(StoryreelError, ValueError):
    """A source that cannot be used at all (missing folder, malformed CSV or manifest)."""


@dataclass(frozen=True)
class VideoJob:
    path: str
    label: str | None = None
    caption: str | None = None
    start: float | None = None
    end: float | None = None

    @property
    def key(self) -> str:
        if self.start is None and self.end is None:
            return self.path
        return f"{self.path}#{self.start if self.start is not None else ''}-{self.end if self.end is not None else ''}"

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class SourceReport:
    """What the sources found besides jobs: problems that are reported, not fatal."""

    problems: list[dict] = field(default_factory=list)

    def add(self, source: str, reason: str, **details) -> None:
        self.problems.append({"stage": "source", "source": source, "reason": reason, **details})


def is_video_file(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_EXTENSIONS and not path.name.startswith(".")


def scan_folder(root: str | Path, report: SourceReport) -> list[VideoJob]:
    """Every video under ``root`` (sorted); the parent folder's name is the label (Kinetics/UCF layout).

    Videos directly inside ``root`` get no label.
    """
    root = Path(root)
    if not root.exists():
        raise SourceError(f"{root}: no such folder")
    if root.is_file():
        if not is_video_file(root):
            raise SourceError(f"{root}: not a video file (expected one of {', '.join(VIDEO_EXTENSIONS)})")
        return [VideoJob(path=os.path.abspath(root))]
    jobs = []
    for folder, dirs, files in os.walk(root, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            path = Path(folder) / name
            if is_video_file(path):
                label = path.parent.name if path.parent != root else None
                jobs.append(VideoJob(path=os.path.abspath(path), label=label))
    if not jobs:
        report.add(str(root), f"no videos found (looked for {', '.join(VIDEO_EXTENSIONS)})")
    return jobs


def read_jsonl_manifest(manifest: str | Path, report: SourceReport) -> list[VideoJob]:
    """A JSONL file of ``{"path": ..., "caption"?, "label"?, "start"?, "end"?}`` (paths relative to it)."""
    manifest = Path(manifest)
    if not manifest.is_file():
        raise SourceError(f"{manifest}: no such manifest file")
    jobs = []
    with manifest.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{manifest}:{number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise SourceError(f"{where}: not valid JSON ({exc.msg})") from exc
            if not isinstance(row, dict):
                raise SourceError(f"{where}: each line must be a JSON object")
            if not isinstance(row.get("path"), str) or not row["path"]:
                raise SourceError(f"{where}: field 'path' is required and must be a string")
            for key in ("caption", "label"):
                if row.get(key) is not None and not isinstance(row[key], str):
                    raise SourceError(f"{where}: field '{key}' must be a string")
            times = {}
            for key in ("start", "end"):
                value = row.get(key)
                if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0):
                    raise SourceError(f"{where}: field '{key}' must be a non-negative number of seconds")
                times[key] = None if value is None else float(value)
            if times["start"] is not None and times["end"] is not None and times["end"] <= times["start"]:
                raise SourceError(f"{where}: field 'end' must be greater than 'start'")
            path = Path(row["path"]).expanduser()
            path = path if path.is_absolute() else manifest.parent / path
            if not path.exists():
                report.add(str(manifest), "file not found", line=number, path=str(path))
                continue
            jobs.append(VideoJob(os.path.abspath(path), row.get("label"), row.get("caption"), times["start"],
                                 times["end"]))
    return jobs
