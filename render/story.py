"""A whole story, shot by shot: storyboard → retrieval → depth → render → shot videos, story video, sheet, report.

:func:`prepare_story` checks everything a run needs (storyboard, index, models value, output folder) and
raises :class:`StoryInputError` before any model is loaded or any file written; :func:`render_story` then
renders what changed and rebuilds the story files::

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
:data:`CODE_VERSION` as ``extra``). Skipped shots keep their recorded segment, and shots that are rendered
again avoid the footage of every other shot, so no two shots overlap.
"""

from __future__ import annotations

from storyreel.errors import StoryreelError

import json
import math
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from storyreel.atomic_files import atomic_path, write_json
from storyreel.hashing import file_sha256
from storyreel.models import presets

CODE_VERSION = 2  # bump when a change in this module or the render changes a shot's pixels
PREVIEW_FRAMES = 3


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
class _Span:
    """Just enough of a segment for :func:`retrieval.reranking.overlaps` (avoid lists)."""

    path: str
    start: float
    end: float


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


def shot_files(out: Path, shot) -> dict[str, Path]:
    """A shot's files under ``out/shots/``, named by its safe id."""
    base = Path(out) / "shots" / shot.safe_id
    return {"mp4": base.with_suffix(".mp4"), "gif": base.with_suffix(".gif"),
            "sidecar": base.with_suffix(".json"), "preview": Path(f"{base}.preview.npz")}


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
        raise StoryInputError(f"unknown --models value {options.models!r}; use one of {', '.join(presets.PRESET_NAMES)}")
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
def _read_sidecar(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _tqdm(progress: bool, **kwargs):
    from tqdm import tqdm

    return tqdm(disable=not progress, dynamic_ncols=True, **kwargs)


@dataclass(frozen=True)
class RenderSettings:
    """What a shot renderer needs besides the shot (picklable: Ray workers get a copy)."""

    models: str
    depth_model: str
    device: str | None
    cpu_offload: bool
    out: Path
    progress: bool
    characters: tuple[tuple[str, str, str], ...] = ()  # (name, character file, token), loaded once

    @classmethod
    def of(cls, plan: StoryPlan) -> "RenderSettings":
        o = plan.options
        return cls(o.models, plan.depth_model, o.device, o.cpu_offload, plan.out, o.progress, plan.characters)


class ShotRenderer:
    """Renders shots whose segment is chosen; loads the models on first use (a no-op rerun loads nothing)."""

    def __init__(self, settings: RenderSettings):
        self.settings = settings
        self._components = None
        self._depth = None
        self._characters = None

    @property
    def components(self):
        return self._components

    def load(self):
        if self._components is None:
            from storyreel.models.loading import load_render_components
            from structure.depth_models import load_depth_model

            s = self.settings
            components = load_render_components(s.models, device=s.device)
            if s.cpu_offload:
                components.enable_model_cpu_offload()
            self._depth = load_depth_model(s.depth_model, device=components.device, progress=False)
            if s.characters:
                self._characters = load_characters(components, s.characters)
            self._components = components
        return self._components, self._depth

    def render(self, shot, segment: dict, settings_hash: str) -> dict:
        """Depth of ``segment`` → structure-guided render → the shot's mp4, gif, preview and sidecar."""
        import torch

        from storyreel.models.schedulers import make_scheduler
        from render.prompt_weighting import WeightedPromptEncoder
        from render.sampler import StructureGuidedSampler
        from storyreel.video_files import write_gif, write_mp4
        from structure.conditioning import controlnet_condition
        from structure.extract import extract_depth, read_source_frames

        settings = self.settings
        components, estimator = self.load()
        files = shot_files(settings.out, shot)
        timings = {}
        source = (segment["path"], segment["start"], segment["end"])

        t0 = time.perf_counter()
        depth = extract_depth(source, frames=shot.frames, size=shot.size, estimator=estimator,
                              cache=settings.out / "cache" / "depth", fps=shot.fps)
        timings["depth"] = time.perf_counter() - t0

        prompt = with_style(shot.prompt, shot.style)
        t0 = time.perf_counter()
        components.use("text_encoder")
        encoder = WeightedPromptEncoder(components.tokenizer, components.text_encoder)
        cond, uncond = encoder.encode_pair(prompt, shot.negative_prompt)  # compel: (word)1.3, word++, > 77 tokens
        characters, per_step = self._activate_characters(shot, prompt, encoder)
        sampler = StructureGuidedSampler(components, scheduler=make_scheduler(shot.scheduler))
        with _tqdm(settings.progress, total=shot.steps, desc=f"  {shot.id}", unit="step", leave=False) as steps:
            result = sampler(prompt_embeds=cond, negative_prompt_embeds=uncond, prompt_embeds_for_step=per_step,
                             conditioning=controlnet_condition(depth), num_frames=shot.frames, height=shot.height,
                             width=shot.width, steps=shot.steps, guidance_scale=shot.guidance, tau=shot.tau,
                             seed=shot.seed, output_type="np", callback=lambda i, t, latents: steps.update(1))
        frames = np.asarray(result.frames)
        controlnet_calls = int(result.controlnet_calls)
        timings["render"] = time.perf_counter() - t0
        del result
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

        t0 = time.perf_counter()
        picks = np.linspace(0, shot.frames - 1, PREVIEW_FRAMES).round().astype(int)
        retrieved = read_source_frames(source, frames=PREVIEW_FRAMES, size=shot.size)
        with atomic_path(files["preview"]) as tmp:
            with open(tmp, "wb") as handle:
                np.savez_compressed(handle, retrieved=retrieved,
                                    depth=(depth.depth[picks] * 255).round().astype(np.uint8))
        write_gif(frames, files["gif"], shot.fps)
        write_mp4(frames, files["mp4"], shot.fps)
        timings["write"] = time.perf_counter() - t0

        sidecar = {
            "settings_hash": settings_hash,
            "code_version": CODE_VERSION,
            "shot": shot.id,
            "safe_id": shot.safe_id,
            "query": shot.motion_query,
            "segment": segment,
            "prompt": prompt,
            "negative_prompt": shot.negative_prompt,
            "prompt_weighting": "compel",
            "characters": characters,
            "seed": shot.seed,
            "tau": shot.tau,
            "steps": shot.steps,
            "guidance": shot.guidance,
            "scheduler": shot.scheduler,
            "frames": shot.frames,
            "fps": shot.fps,
            "width": shot.width,
            "height": shot.height,
            "controlnet_calls": controlnet_calls,
            "depth": {"model": settings.depth_model, "source": depth.source, "settings": depth.settings},
            "models": components.record(),
            "settings": shot.to_dict(),
            "timings_s": {k: round(v, 3) for k, v in timings.items()},
            "worker": {"host": socket.gethostname(), "pid": os.getpid(), "device": str(components.device)},
            "rendered_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        return sidecar


    def _activate_characters(self, shot, prompt: str, encoder) -> tuple[dict, object]:
        """Turn on the LoRA of each trained character of the shot (at its storyboard scale, the others off)
        and make the per-step hook that embeds their tokens with the TimeInv row of each timestep."""
        if self._characters is None:
            return {}, None
        from characters import per_step_embeddings

        scales = {c.name: c.scale for c in shot.characters if c.name in self._characters}
        self._characters.activate(scales)
        in_prompt = self._characters.characters_in(prompt)
        record = {name: {"scale": scale, "token": self._characters[name].token, "in_prompt": name in in_prompt}
                  for name, scale in scales.items()}
        if not in_prompt and not self._characters.characters_in(shot.negative_prompt):
            return record, None
        hook = per_step_embeddings(self._characters, None, prompt, shot.negative_prompt,
                                   encode_pair=encoder.encode_pair)
        return record, hook


def with_style(prompt: str, style: str) -> str:
    """The render prompt: the caption, then the story's style unless the caption already has it (planned
    captions end with it; adding it twice would weight it twice)."""
    if not style or style.strip().lower() in prompt.lower():
        return prompt
    return f"{prompt}, {style}"


def load_characters(components, characters: tuple[tuple[str, str, str], ...]):
    """A :class:`characters.CharacterSet` on ``components`` with each ``(name, file, token)`` loaded once: its
    token registered and its LoRA a named adapter. A file made for another base model is refused here."""
    from characters import CharacterSet, load_character
    from storyreel.models.loading import base_model_record

    character_set = CharacterSet(components, base_model=base_model_record(components))
    for name, path, token in characters:
        character_set.add(load_character(path), name=name, token=token)
    return character_set


def choose_segment(plan: StoryPlan, shot, avoid: list) -> dict:
    """The shot's footage: its clip override, else the best retrieved segment not overlapping ``avoid``."""
    if shot.clip is not None:
        return {"source": "clip_override", "segment_id": None, "path": str(shot.clip.path),
                "start": shot.clip.start, "end": shot.clip.end, "score": None, "label": None}
    found = plan.library.search(shot.motion_query, k=1, avoid=avoid)
    if not found:
        raise RuntimeError(f"shot {shot.id!r}: the index has no segment for {shot.motion_query!r} that does not "
                           "overlap another shot's footage")
    chosen = found[0]
    return {"source": "retrieval", "segment_id": chosen.segment_id, "path": chosen.path,
            "start": chosen.start, "end": chosen.end, "score": chosen.score, "label": chosen.label}


def finish_sidecar(plan: StoryPlan, shot, sidecar: dict, retrieval_s: float) -> dict:
    """Add the driver's retrieval time and write the sidecar (after the mp4: it always describes a finished shot)."""
    timings = {"retrieval": round(retrieval_s, 3), **sidecar["timings_s"]}
    timings["total"] = round(sum(v for k, v in timings.items() if k != "total"), 3)
    sidecar["timings_s"] = timings
    write_json(plan.shot_files(shot)["sidecar"], sidecar)
    return sidecar


def render_story(plan: StoryPlan, echo: Callable[[str], None] = print) -> dict:
    """Render the shots that changed, then rebuild story.mp4, storyboard.png and report.json; return the report.

    Segments are chosen here, in story order, each avoiding the footage of every other shot; the renders
    then run in this process (``engine="local"``) or on Ray workers (``engine="ray"``, one per GPU).
    """
    options, out = plan.options, plan.out
    started = time.perf_counter()
    sidecars = {}
    to_render = []
    for shot in plan.shots:
        files = plan.shot_files(shot)
        sidecar = _read_sidecar(files["sidecar"]) if files["mp4"].is_file() else None
        if sidecar is not None and sidecar.get("settings_hash") == plan.hashes[shot.id]:
            sidecars[shot.id] = sidecar
        else:
            to_render.append(shot)

    renderer = ShotRenderer(RenderSettings.of(plan))
    if to_render and options.engine == "local":
        renderer.load()  # a load error fails here, before anything is written
    (out / "shots").mkdir(parents=True, exist_ok=True)
    used = [_Span(**{k: s["segment"][k] for k in ("path", "start", "end")}) for s in sidecars.values()]
    jobs = []
    for shot in to_render:
        t0 = time.perf_counter()
        segment = choose_segment(plan, shot, avoid=list(used))
        used.append(_Span(segment["path"], segment["start"], segment["end"]))
        jobs.append((shot, segment, time.perf_counter() - t0))

    status = {shot.id: "skipped" for shot in plan.shots if shot.id in sidecars}
    with _tqdm(options.progress, total=len(plan.shots), initial=len(sidecars), desc="story", unit="shot") as bar:
        if options.engine == "ray":
            from render.ray_engine import render_on_ray

            def done(shot, sidecar, retrieval_s):
                sidecars[shot.id] = finish_sidecar(plan, shot, sidecar, retrieval_s)
                status[shot.id] = "rendered"
                bar.update(1)

            render_on_ray(renderer.settings, [(shot, segment, plan.hashes[shot.id], retrieval_s)
                                              for shot, segment, retrieval_s in jobs], done, workers=options.workers)
        else:
            for shot, segment, retrieval_s in jobs:
                bar.set_postfix_str(shot.id)
                sidecar = renderer.render(shot, segment, plan.hashes[shot.id])
                sidecars[shot.id] = finish_sidecar(plan, shot, sidecar, retrieval_s)
                status[shot.id] = "rendered"
                bar.update(1)

    report = _finish(plan, sidecars, status, renderer, time.perf_counter() - started)
    echo(_table(plan, sidecars, status))
    return report


def _finish(plan: StoryPlan, sidecars: dict, status: dict, renderer: ShotRenderer, seconds: float) -> dict:
    from render.story_sheet import SheetRow, draw_story_sheet
    from storyreel.video_files import join_shots, read_video, write_mp4

    out = plan.out
    shot_frames, rows = [], []
    for shot in plan.shots:
        files = plan.shot_files(shot)
        frames, _ = read_video(files["mp4"])
        shot_frames.append(frames)
        retrieved = depth = None
        if files["preview"].is_file():
            with np.load(files["preview"]) as preview:
                retrieved, depth = preview["retrieved"], preview["depth"].astype(np.float32) / 255
        segment = sidecars[shot.id]["segment"]
        where = f"query: {sidecars[shot.id]['query']}  ->  {Path(segment['path']).name}  " \
                f"{segment['start']:.2f}-{segment['end']:.2f} s"
        if segment["score"] is not None:
            where += f"  score {segment['score']:.3f}"
        rows.append(SheetRow(title=f"{shot.index + 1}. {shot.id}", caption=shot.text, source=where,
                             retrieved=retrieved, depth=depth, rendered=frames,
                             prompt=sidecars[shot.id].get("prompt", "")))
    fps = plan.shots[0].fps
    story = join_shots(shot_frames, fps, plan.options.crossfade)
    write_mp4(story, out / "story.mp4", fps)
    draw_story_sheet(rows, out / "storyboard.png", title=getattr(plan.storyboard, "title", None))

    first = sidecars[plan.shots[0].id]
    components = renderer.components
    report = {
        "report_version": 1,
        "code_version": CODE_VERSION,
        "storyboard": {"path": str(Path(plan.options.storyboard).resolve()), "sha256": plan.storyboard_sha256,
                       "title": plan.storyboard.title},
        "models": {"preset": plan.options.models,
                   "render": components.record() if components is not None else first["models"],
                   "depth_model": plan.depth_model},
        "index": None if plan.index_record is None else {k: v for k, v in plan.index_record.items()
                                                         if k != "fingerprint"} | {
            "faiss_sha256": plan.index_record["fingerprint"]["faiss_sha256"]},
        "crossfade_s": plan.options.crossfade,
        "story": {"path": "story.mp4", "frames": int(len(story)), "fps": fps},
        "planned": plan.planned,
        "rendered": [s.id for s in plan.shots if status.get(s.id) == "rendered"],
        "skipped": [s.id for s in plan.shots if status.get(s.id) == "skipped"],
        "seconds": round(seconds, 3),
        "shots": [],
    }
    for shot in plan.shots:
        sidecar = sidecars[shot.id]
        files = plan.shot_files(shot)
        entry = {k: v for k, v in sidecar.items() if k not in ("models",)}
        entry.update({"id": shot.id, "status": status.get(shot.id),
                      "files": {k: str(p.relative_to(out)) for k, p in files.items()}})
        report["shots"].append(entry)
    write_json(out / "report.json", report)
    return report


def _table(plan: StoryPlan, sidecars: dict, status: dict) -> str:
    rows = [("shot", "clip", "status", "seconds")]
    for shot in plan.shots:
        sidecar = sidecars[shot.id]
        segment = sidecar["segment"]
        clip = f"{Path(segment['path']).name} {segment['start']:.2f}-{segment['end']:.2f}"
        rows.append((shot.id, clip, status.get(shot.id, ""), f"{sidecar['timings_s']['total']:.1f}"))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)
