"""The story driver: a whole story, shot by shot: storyboard → retrieval → render → shot videos and story files.

:func:`prepare_story` checks everything a run needs (storyboard, index, models value, output folder) and
raises :class:`StoryInputError` before any model is loaded or any file written; :func:`render_story` then
chooses each changed shot's footage (:func:`choose_segment`), has it rendered (:mod:`render.shot_renderer`,
here or on Ray workers: :mod:`render.ray_engine`), writes its sidecar (:mod:`render.shot_sidecar`) and
rebuilds the story files (:mod:`render.story_report`)::

    plan = prepare_story(StoryOptions(storyboard="fable.json", index="index", out="out", models="tiny"))
    report = render_story(plan)

Layout of ``out``::

    shots/<safe_id>.mp4 .gif     the shot (H.264 yuv420p at the storyboard's fps; a looping GIF)
    shots/<safe_id>.json         sidecar, written after the mp4: settings hash and every decision
    shots/<safe_id>.preview.npz  a few retrieved frames and their depth, for the sheet
    cache/depth/                 depth sequences (structure.DepthCache)
    story.mp4 storyboard.png report.json   rebuilt from the shots on every run

**Resume.** A shot is skipped when its mp4 exists and its sidecar records the settings hash of this run
(:meth:`storyboard.Storyboard.settings_hash` with the models, the depth model, the index's manifest and
:data:`render.shot_sidecar.CODE_VERSION` as ``extra``). Skipped shots keep their recorded segment, and shots
that are rendered again avoid the footage of every other shot, so no two shots overlap.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from render.shot_renderer import RenderSettings, ShotRenderer, with_style
from render.shot_sidecar import CODE_VERSION, Segment, ShotSidecar, shot_files
from render.story_report import (
    IndexRecord,
    ModelsRecord,
    StoryboardRecord,
    StoryReport,
    report_shots,
    story_table,
    write_story_video,
)
from storyreel.errors import StoryreelError
from storyreel.hashing import file_sha256
from storyreel.models import presets

# with_style and shot_files live with the shot renderer and the sidecar; they stay importable from here.
__all__ = ["StoryInputError", "StoryOptions", "StoryPlan", "choose_segment", "prepare_story", "render_story",
           "shot_files", "with_style"]


class StoryInputError(StoryreelError, ValueError):
    """Bad input (storyboard, index, options): reported as ``error: ...`` with exit code 2."""


@dataclass
class StoryOptions:
    storyboard: Path
    out: Path
    index: Path | None = None
    models: str = "sd15"
    crossfade: float = 0.0
    device: str | None = None
    progress: bool = True
    engine: str = "local"          # "local": one process; "ray": shots in parallel, one per GPU
    workers: int | None = None     # ray: render workers (default: one per GPU, else 1)
    cpu_offload: bool = False      # models on the GPU only for the phase that uses them
    character_files: dict[str, Path] = field(default_factory=dict)  # name → character file, over the storyboard's
    planner: str | None = None     # shots without a query or caption: "rules", "openai", "local" (None: auto)
    planner_options: dict = field(default_factory=dict)  # storyboard.planner.make_planner's keyword arguments


@dataclass
class StoryPlan:
    options: StoryOptions
    storyboard: object
    shots: list
    library: object | None
    index_record: dict | None
    depth_model: str
    hashes: dict[str, str]
    out: Path
    storyboard_sha256: str = ""
    characters: tuple[tuple[str, str, str], ...] = ()  # (name, character file, token) of trained characters
    planned: list = field(default_factory=list)  # the planner's records, one per shot it completed
    timings: dict = field(default_factory=dict)

    def shot_files(self, shot) -> dict[str, Path]:
        return shot_files(self.out, shot)

    def render_settings(self) -> RenderSettings:
        """What the shot renderers need of this plan."""
        o = self.options
        return RenderSettings(o.models, self.depth_model, o.device, o.cpu_offload, self.out, o.progress,
                              self.characters)


# -- preparing ----------------------------------------------------------------------------------------------
def prepare_story(options: StoryOptions) -> StoryPlan:
    """Check every input; raise :class:`StoryInputError` (nothing loaded, nothing written)."""
    from storyboard import StoryboardError, load_storyboard

    if options.engine not in ("local", "ray"):
        raise StoryInputError(f"unknown --engine {options.engine!r}; use local or ray")
    if options.engine == "ray":
        import importlib.util

        if importlib.util.find_spec("ray") is None:
            raise StoryInputError("--engine ray needs Ray: pip install 'storyreel[ray]' (or use --engine local)")
    if options.workers is not None and options.workers < 1:
        raise StoryInputError(f"--workers must be 1 or more, got {options.workers}")
    if options.models not in presets.PRESETS:
        raise StoryInputError(f"unknown --models value {options.models!r}; "
                              f"use one of {', '.join(presets.PRESET_NAMES)}")
    if not (isinstance(options.crossfade, (int, float)) and math.isfinite(options.crossfade)
            and options.crossfade >= 0):
        raise StoryInputError(f"--crossfade must be 0 or more seconds, got {options.crossfade!r}")
    try:
        story = load_storyboard(options.storyboard)
    except StoryboardError as exc:
        raise StoryInputError(str(exc)) from None
    _apply_character_files(story, options)
    story, planned = _complete_shots(story, options)
    shots = story.all_shot_settings()
    characters = _check_characters(shots, options.models)
    for shot in shots:
        if shot.width % 8 or shot.height % 8:
            raise StoryInputError(f"shot {shot.id!r}: width and height must be multiples of 8, "
                                  f"got {shot.width}x{shot.height}")
    for shot in shots:
        if shot.clip is not None:
            _check_clip(shot)
    out = Path(options.out)
    if out.exists() and not out.is_dir():
        raise StoryInputError(f"--out {out}: exists and is not a folder")

    library, index_record = None, None
    needs_index = [shot.id for shot in shots if shot.clip is None]
    if needs_index and options.index is None:
        raise StoryInputError(f"shots {', '.join(needs_index)} have no clip override and need retrieval: "
                              "give --index INDEX (a folder made by `build-index`)")
    if options.index is not None:
        library, index_record = _open_index(Path(options.index))

    depth_model = presets.PRESETS[options.models].depth_model
    hashes = {}
    for shot in shots:
        extra = {"models": options.models, "depth_model": depth_model, "code_version": CODE_VERSION,
                 "index": index_record["fingerprint"] if shot.clip is None else None}
        hashes[shot.id] = story.settings_hash(shot.id, extra=extra)
    return StoryPlan(options, story, shots, library, index_record, depth_model, hashes, out,
                     storyboard_sha256=file_sha256(options.storyboard), characters=characters, planned=planned)


def _complete_shots(story, options: StoryOptions):
    """Shots without a motion query or caption get the planner's (storyboard.planner); the records say which
    backend wrote what, and why an LLM answer was not used. ``planner="none"`` keeps the shot's text for both."""
    if options.planner == "none":
        return story, []
    from storyboard.planner import PlannerSetupError, complete_storyboard

    try:
        return complete_storyboard(story, options.planner, **options.planner_options)
    except PlannerSetupError as exc:
        raise StoryInputError(f"--planner: {exc}") from None


def _apply_character_files(story, options: StoryOptions) -> None:
    """``--character NAME=FILE``: use FILE as the character's file (the storyboard's own, if any, is replaced)."""
    for name, path in options.character_files.items():
        if name not in story.characters:
            known = ", ".join(story.characters) or "none"
            raise StoryInputError(f"--character {name}={path}: the storyboard has no character {name!r} "
                                  f"(its characters: {known})")
        path = Path(path).expanduser()
        if not path.is_file():
            raise StoryInputError(f"--character {name}={path}: no such character file")
        story.characters[name].embedding = str(path.resolve())


def _check_characters(shots, models: str) -> tuple[tuple[str, str, str], ...]:
    """Every character file the shots use, read and checked (safetensors, format, the preset it was trained
    on against ``--models``; the full check against the loaded models follows): ``(name, path, token)``."""
    from characters import CharacterFileError, load_character

    found = {}
    for shot in shots:
        for character in shot.characters:
            if character.embedding is None or character.name in found:
                continue
            try:
                trained_on = load_character(character.embedding).base_model.get("preset")
            except CharacterFileError as exc:
                raise StoryInputError(f"character {character.name!r}: {exc}") from None
            if trained_on and not presets.same_architecture(trained_on, models):
                raise StoryInputError(f"character {character.name!r}: {character.embedding} was trained on the "
                                      f"{trained_on!r} models; this render uses --models {models} (train the "
                                      f"character again with train-character --models {models})")
            found[character.name] = (character.name, str(character.embedding), character.token)
    return tuple(found.values())


def _check_clip(shot) -> None:
    """A clip override must open and its range lie within the clip (checked before any model loads)."""
    from structure.extract import check_within_clip, resolve_source

    try:
        check_within_clip(resolve_source((shot.clip.path, shot.clip.start, shot.clip.end)))
    except Exception as exc:  # noqa: BLE001  (decode errors of any kind are the input's fault here)
        raise StoryInputError(f"shot {shot.id!r}: clip {shot.clip.path}: {exc}") from None


def _open_index(index_dir: Path):
    import sqlite3

    from retrieval.index_format import IndexFormatError
    from retrieval.library import Library

    try:
        library = Library.open(index_dir)
    except (IndexFormatError, OSError, sqlite3.Error, ValueError) as exc:
        raise StoryInputError(f"--index {index_dir}: {exc}") from None
    manifest = library.manifest
    record = {"path": str(index_dir.resolve()), "model": dict(manifest.model), "segments": len(library),
              "fingerprint": {"model": dict(manifest.model), "faiss_sha256": manifest.faiss_sha256}}
    return library, record


# -- running ------------------------------------------------------------------------------------------------
def choose_segment(plan: StoryPlan, shot, avoid: list) -> Segment:
    """The shot's footage: its clip override, else the best retrieved segment not overlapping ``avoid``."""
    if shot.clip is not None:
        return Segment(source="clip_override", segment_id=None, path=str(shot.clip.path), start=shot.clip.start,
                       end=shot.clip.end, score=None, label=None)
    found = plan.library.search(shot.motion_query, k=1, avoid=avoid)
    if not found:
        raise RuntimeError(f"shot {shot.id!r}: the index has no segment for {shot.motion_query!r} that does not "
                           "overlap another shot's footage")
    chosen = found[0]
    return Segment(source="retrieval", segment_id=chosen.segment_id, path=chosen.path, start=chosen.start,
                   end=chosen.end, score=chosen.score, label=chosen.label)


def render_story(plan: StoryPlan, echo: Callable[[str], None] = print) -> dict:
    """Render the shots that changed, then rebuild story.mp4, storyboard.png and report.json; return the report
    (:meth:`render.story_report.StoryReport.to_json`).

    Segments are chosen here, in story order, each avoiding the footage of every other shot; the renders
    then run in this process (``engine="local"``) or on Ray workers (``engine="ray"``, one per GPU).
    """
    from tqdm import tqdm

    options, out = plan.options, plan.out
    started = time.perf_counter()
    sidecars = _unchanged_shots(plan)
    status = {shot.id: "skipped" for shot in plan.shots if shot.id in sidecars}
    to_render = [shot for shot in plan.shots if shot.id not in sidecars]

    renderer = ShotRenderer(plan.render_settings())
    if to_render and options.engine == "local":
        renderer.load()  # a load error fails here, before anything is written
    (out / "shots").mkdir(parents=True, exist_ok=True)
    used = [sidecar.segment for sidecar in sidecars.values()]
    jobs = []
    for shot in to_render:
        t0 = time.perf_counter()
        segment = choose_segment(plan, shot, avoid=list(used))
        used.append(segment)
        jobs.append((shot, segment, time.perf_counter() - t0))

    with tqdm(disable=not options.progress, dynamic_ncols=True, total=len(plan.shots), initial=len(sidecars),
              desc="story", unit="shot") as bar:
        def done(shot, sidecar: ShotSidecar, retrieval_s: float) -> None:
            """Write the sidecar after the mp4: it always describes a finished shot."""
            sidecar = sidecar.with_retrieval_time(retrieval_s)
            sidecar.write(plan.shot_files(shot)["sidecar"])
            sidecars[shot.id] = sidecar
            status[shot.id] = "rendered"
            bar.update(1)

        if options.engine == "ray":
            from render.ray_engine import render_on_ray

            render_on_ray(renderer.settings, [(shot, segment, plan.hashes[shot.id], retrieval_s)
                                              for shot, segment, retrieval_s in jobs], done, workers=options.workers)
        else:
            for shot, segment, retrieval_s in jobs:
                bar.set_postfix_str(shot.id)
                done(shot, renderer.render(shot, segment, plan.hashes[shot.id]), retrieval_s)

    report = _finish(plan, sidecars, status, renderer, time.perf_counter() - started)
    echo(story_table(plan.shots, sidecars, status))
    return report.to_json()


def _unchanged_shots(plan: StoryPlan) -> dict[str, ShotSidecar]:
    """The sidecars of the shots to skip: their mp4 exists and their sidecar has this run's settings hash."""
    found = {}
    for shot in plan.shots:
        files = plan.shot_files(shot)
        sidecar = ShotSidecar.read(files["sidecar"]) if files["mp4"].is_file() else None
        if sidecar is not None and sidecar.settings_hash == plan.hashes[shot.id]:
            found[shot.id] = sidecar
    return found


def _finish(plan: StoryPlan, sidecars: dict[str, ShotSidecar], status: dict[str, str], renderer: ShotRenderer,
            seconds: float) -> StoryReport:
    """story.mp4 and storyboard.png from every shot, then report.json."""
    video = write_story_video(plan.out, plan.shots, sidecars, plan.options.crossfade,
                              title=getattr(plan.storyboard, "title", None))
    components = renderer.components  # None when nothing was rendered here (all skipped, or on Ray workers)
    report = StoryReport(
        code_version=CODE_VERSION,
        storyboard=StoryboardRecord(path=str(Path(plan.options.storyboard).resolve()), sha256=plan.storyboard_sha256,
                                    title=plan.storyboard.title),
        models=ModelsRecord(preset=plan.options.models, depth_model=plan.depth_model,
                            render=components.record() if components is not None
                            else sidecars[plan.shots[0].id].models),
        index=IndexRecord.of(plan.index_record),
        crossfade_s=plan.options.crossfade,
        story=video,
        planned=plan.planned,
        rendered=[s.id for s in plan.shots if status.get(s.id) == "rendered"],
        skipped=[s.id for s in plan.shots if status.get(s.id) == "skipped"],
        seconds=round(seconds, 3),
        shots=report_shots(plan.out, plan.shots, sidecars, status),
    )
    report.write(plan.out / "report.json")
    return report
