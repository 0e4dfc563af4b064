"""A ``render-story`` output folder as the evaluation reads it: its report, and per shot the rendered frames, the
footage frames and the guide depth exactly as the render used them.

``report.json`` (:class:`render.story_report.StoryReport`) tells every shot, its caption, characters, footage and
depth settings. The footage is read again at the render's sample times and framing
(:func:`structure.extract.read_source_frames`); the guide depth comes from the story's own depth cache
(``OUT/cache/depth``), so the depth model runs again only when the cache was removed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from render.shot_sidecar import ShotSidecar
from render.story_report import StoryReport
from storyreel.errors import StoryreelError
from storyreel.hashing import file_sha256

REPORT_FILE = "report.json"


class StoryOutputError(StoryreelError, ValueError):
    """An output folder that cannot be evaluated; the message names the folder or file and why."""


@dataclass(frozen=True)
class RenderedShot:
    """One rendered shot of a story: its record and where its files are."""

    out: Path
    sidecar: ShotSidecar
    mp4: Path

    @property
    def id(self) -> str:
        return self.sidecar.shot

    @property
    def safe_id(self) -> str:
        return self.sidecar.safe_id

    @property
    def caption(self) -> str:
        """The shot's caption (without the story's style)."""
        return str(self.sidecar.settings.get("prompt") or self.sidecar.prompt)

    @property
    def class_words(self) -> dict[str, str]:
        """``{token: class word}`` of the story's characters named in this shot's settings."""
        return {c["token"]: c["class_word"] for c in self.sidecar.settings.get("characters", [])
                if c.get("token") and c.get("class_word")}

    @property
    def characters(self) -> list[str]:
        """The characters of the shot (by name)."""
        return [c["name"] for c in self.sidecar.settings.get("characters", [])]

    @property
    def size(self) -> tuple[int, int]:
        return (self.sidecar.width, self.sidecar.height)

    @property
    def label(self) -> str | None:
        return self.sidecar.segment.label

    def fingerprint(self) -> dict:
        """What the shot's metrics depend on, apart from the metric models and references: its settings hash and
        its video's content."""
        return {"settings_hash": self.sidecar.settings_hash, "mp4_sha256": file_sha256(self.mp4)}

    def frames(self) -> np.ndarray:
        """The rendered frames, ``T x H x W x 3`` uint8, as written to the shot's mp4."""
        from storyreel.video_files import read_video

        frames, _fps = read_video(self.mp4)
        return frames

    def footage(self) -> np.ndarray:
        """The footage frames at the render's sample times and framing, ``T x H x W x 3`` uint8."""
        from structure.extract import read_source_frames

        return read_source_frames(self.sidecar.segment.range, frames=self.sidecar.frames, size=self.size)

    def guide_depth(self, estimator) -> np.ndarray:
        """The depth the shot was guided by (``T x H x W`` in [0, 1], near = 1), from the story's depth cache."""
        from structure.extract import extract_depth

        settings = self.sidecar.depth.settings
        cache = self.out / "cache" / "depth"  # where render.shot_renderer.ShotRenderer.depth_cache_folder put it
        if self.sidecar.depth.cache and Path(self.sidecar.depth.cache).is_dir():  # a sweep's shared cache
            cache = Path(self.sidecar.depth.cache)
        elif self.sidecar.deterministic:
            device = self.sidecar.worker.device if self.sidecar.worker else "cpu"
            cache = self.out / "cache" / "depth-deterministic" / device.split(":")[0]
        depth_range = self.sidecar.settings.get("depth_range", "sequence")
        sequence = extract_depth(self.sidecar.segment.range, frames=self.sidecar.frames, size=self.size,
                                 estimator=estimator, cache=cache, fps=self.sidecar.fps,
                                 smoothing=float(settings.get("smoothing", 0.0)),
                                 low_pct=float(settings.get("low_pct", 2.0)),
                                 high_pct=float(settings.get("high_pct", 98.0)), depth_range=depth_range)
        return sequence.depth


@dataclass(frozen=True)
class RenderedStory:
    """A ``render-story`` output folder: its report and its rendered shots (in storyboard order)."""

    out: Path
    report: StoryReport
    shots: list[RenderedShot]

    @property
    def depth_model(self) -> str:
        return self.report.models.depth_model

    @classmethod
    def open(cls, out: str | Path) -> RenderedStory:
        """Read ``out``; :class:`StoryOutputError` when it is not a render-story output folder with at least one
        rendered shot whose video exists."""
        out = Path(out)
        report_path = out / REPORT_FILE
        if not out.is_dir():
            raise StoryOutputError(f"'{out}': no such folder (expected a render-story output folder)")
        if not report_path.is_file():
            raise StoryOutputError(f"'{out}': no {REPORT_FILE} (not a render-story output folder, or its render "
                                   "has not finished a shot)")
        try:
            report = StoryReport.read(report_path)
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise StoryOutputError(f"'{report_path}': not a storyreel report ({type(exc).__name__}: {exc})") from exc
        shots = []
        for entry in report.shots:
            mp4 = out / entry.files.get("mp4", "")
            if entry.status is None or not entry.files.get("mp4"):
                continue
            if not mp4.is_file():
                raise StoryOutputError(f"'{report_path}': shots[{entry.id!r}].files.mp4: no such file '{mp4}'")
            shots.append(RenderedShot(out=out, sidecar=entry.sidecar, mp4=mp4))
        if not shots:
            raise StoryOutputError(f"'{report_path}': shots: no rendered shot to evaluate")
        return cls(out=out, report=report, shots=shots)
