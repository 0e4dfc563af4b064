"""The story's own files, rebuilt from its shots on every run: story.mp4, storyboard.png, report.json, the table.

``report.json`` is a :class:`StoryReport` (the run's inputs, models, index and story video, which shots were
rendered or skipped, whether the run was deterministic and whether characters trained on other base weights
were allowed (and which were), and one entry per shot: its sidecar without the models, kept once at the top);
its JSON is made and read here only (:meth:`StoryReport.to_json`, :meth:`StoryReport.from_json`).
:func:`write_story_video` joins the shots into story.mp4 and draws storyboard.png; :func:`story_table` is the
table printed at the end.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from render.shot_sidecar import ShotSidecar, shot_files
from storyreel.atomic_files import write_json

REPORT_VERSION = 1


@dataclass(frozen=True)
class StoryboardRecord:
    path: str
    sha256: str
    title: str | None


@dataclass(frozen=True)
class ModelsRecord:
    preset: str
    render: dict  # the render components' record (as in each sidecar)
    depth_model: str
    specification: dict | None = None  # what --models, --model-config and the swaps asked for, and resolved to
    shot_defaults: dict | None = None  # the preset's steps, guidance and scheduler (each shot's settings.sources
                                       # says which of its values came from the preset)


@dataclass(frozen=True)
class IndexRecord:
    path: str
    model: dict
    segments: int
    faiss_sha256: str

    @classmethod
    def of(cls, index_record: dict | None) -> IndexRecord | None:
        """The report's index entry for the driver's index record (its fingerprint's faiss hash only)."""
        if index_record is None:
            return None
        return cls(path=index_record["path"], model=index_record["model"], segments=index_record["segments"],
                   faiss_sha256=index_record["fingerprint"]["faiss_sha256"])


@dataclass(frozen=True)
class StoryVideo:
    path: str
    frames: int
    fps: float


@dataclass(frozen=True)
class ReportShot:
    """A shot's entry: its sidecar's keys except ``models``, then ``id``, ``status`` and ``files``."""

    sidecar: ShotSidecar  # its models are None when read back from a report
    id: str
    status: str | None  # "rendered" or "skipped"
    files: dict[str, str]  # mp4, gif, sidecar, preview: paths relative to the output folder

    def to_json(self) -> dict:
        entry = {k: v for k, v in self.sidecar.to_json().items() if k != "models"}
        entry.update({"id": self.id, "status": self.status, "files": dict(self.files)})
        return entry

    @classmethod
    def from_json(cls, data: dict) -> ReportShot:
        own = {"id", "status", "files"}
        sidecar = ShotSidecar.from_json({k: v for k, v in data.items() if k not in own} | {"models": None})
        return cls(sidecar=sidecar, id=data["id"], status=data["status"], files=data["files"])


@dataclass(frozen=True)
class StoryReport:
    """``report.json``."""

    code_version: int
    storyboard: StoryboardRecord
    models: ModelsRecord
    index: IndexRecord | None
    crossfade_s: float
    story: StoryVideo
    planned: list[dict]  # the planner's records (storyboard.planner), one per shot it completed
    rendered: list[str]
    skipped: list[str]
    seconds: float
    shots: list[ReportShot]
    report_version: int = REPORT_VERSION
    deterministic: dict | None = None  # the deterministic settings of a --deterministic run, else None
    allow_other_base: bool = False  # --allow-other-base: characters trained on other base weights rendered
    sweep: dict | None = None  # a --sweep variant: {"name", "value"} set for every shot over the storyboard's own
    transitions: list[dict] = field(default_factory=list)  # how each shot goes into the next (render.transitions)

    @property
    def characters_on_other_base(self) -> list[str]:
        """The characters rendered on base weights other than the ones they were trained on."""
        return sorted({name for shot in self.shots for name, use in shot.sidecar.characters.items()
                       if use.base_weights == "other"})

    def to_json(self) -> dict:
        return {
            "report_version": self.report_version,
            "code_version": self.code_version,
            "storyboard": asdict(self.storyboard),
            "models": asdict(self.models),
            "index": None if self.index is None else asdict(self.index),
            "crossfade_s": self.crossfade_s,
            "deterministic": self.deterministic,
            "allow_other_base": self.allow_other_base,
            "characters_on_other_base": self.characters_on_other_base,
            "sweep": self.sweep,
            "story": asdict(self.story),
            "planned": self.planned,
            "rendered": list(self.rendered),
            "skipped": list(self.skipped),
            "seconds": self.seconds,
            "shots": [shot.to_json() for shot in self.shots],
            "transitions": list(self.transitions),
        }

    @classmethod
    def from_json(cls, data: dict) -> StoryReport:
        return cls(code_version=data["code_version"], storyboard=StoryboardRecord(**data["storyboard"]),
                   models=ModelsRecord(**data["models"]),
                   index=None if data["index"] is None else IndexRecord(**data["index"]),
                   crossfade_s=data["crossfade_s"], story=StoryVideo(**data["story"]), planned=data["planned"],
                   rendered=data["rendered"], skipped=data["skipped"], seconds=data["seconds"],
                   shots=[ReportShot.from_json(shot) for shot in data["shots"]],
                   report_version=data["report_version"], deterministic=data.get("deterministic"),
                   allow_other_base=data.get("allow_other_base", False), sweep=data.get("sweep"),
                   transitions=data.get("transitions", []))

    @classmethod
    def read(cls, path: Path) -> StoryReport:
        return cls.from_json(json.loads(Path(path).read_text()))

    def write(self, path: Path) -> None:
        write_json(path, self.to_json())


def report_shots(out: Path, shots: Sequence, sidecars: dict[str, ShotSidecar],
                 status: dict[str, str]) -> list[ReportShot]:
    """The report's entries of ``shots``, in story order."""
    return [ReportShot(sidecar=sidecars[shot.id], id=shot.id, status=status.get(shot.id),
                       files={k: str(p.relative_to(out)) for k, p in shot_files(out, shot).items()})
            for shot in shots]


def write_story_video(out: Path, shots: Sequence, sidecars: dict[str, ShotSidecar], crossfade: float,
                      title: str | None, boundaries: Sequence = ()) -> StoryVideo:
    """story.mp4 (the shots' mp4s joined, with ``crossfade`` seconds between them, or as ``boundaries`` say: a
    :class:`render.transitions.Boundary` per pair, a generated transition's mp4 put between) and storyboard.png (a
    row per shot: its retrieved frames, their depth and its rendered frames, from the shot's preview and mp4)."""
    from render.story_sheet import draw_story_sheet
    from storyreel.video_files import join_shots, join_story, read_video, write_mp4

    shot_frames, rows = [], []
    for shot in shots:
        frames, _ = read_video(shot_files(out, shot)["mp4"])
        shot_frames.append(frames)
        rows.append(sheet_row(out, shot, sidecars[shot.id], frames))
    fps = shots[0].fps
    if boundaries:
        joins = [read_video(b.mp4)[0] if b.kind == "generate" else b.seconds for b in boundaries]
        story = join_story(shot_frames, fps, joins)
    else:
        story = join_shots(shot_frames, fps, crossfade)
    write_mp4(story, out / "story.mp4", fps)
    draw_story_sheet(rows, out / "storyboard.png", title=title)
    return StoryVideo(path="story.mp4", frames=int(len(story)), fps=fps)


def sheet_row(out: Path, shot, sidecar: ShotSidecar, frames: np.ndarray):
    """The shot's :class:`render.story_sheet.SheetRow`: its caption, where its motion came from, its frames."""
    from render.story_sheet import SheetRow

    preview = shot_files(out, shot)["preview"]
    retrieved = depth = None
    if preview.is_file():
        with np.load(preview) as data:
            retrieved, depth = data["retrieved"], data["depth"].astype(np.float32) / 255
    segment = sidecar.segment
    where = f"query: {sidecar.query}  ->  {Path(segment.path).name}  {footage_text(segment)}"
    if segment.score is not None:
        where += f"  score {segment.score:.3f}"
    return SheetRow(title=f"{shot.index + 1}. {shot.id}", caption=shot.text, source=where, retrieved=retrieved,
                    depth=depth, rendered=frames, prompt=sidecar.prompt)


def footage_text(segment) -> str:
    """``1.20-5.20 s at 1.00x`` (the span the shot plays and its speed), ``back and forth`` when it loops."""
    footage = segment.footage
    if footage is None:
        return f"{segment.start:.2f}-{segment.end:.2f} s"
    text = f"{footage.start:.2f}-{footage.end:.2f} s at {footage.speed:.2f}x"
    return text + " back and forth" if footage.pingpong else text


def story_table(shots: Sequence, sidecars: dict[str, ShotSidecar], status: dict[str, str]) -> str:
    """The table printed at the end: each shot's clip, status and seconds."""
    rows = [("shot", "clip", "status", "seconds")]
    for shot in shots:
        sidecar = sidecars[shot.id]
        segment = sidecar.segment
        clip = f"{Path(segment.path).name} {footage_text(segment)}"
        rows.append((shot.id, clip, status.get(shot.id, ""), f"{sidecar.timings_s['total']:.1f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows)
