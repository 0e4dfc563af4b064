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

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from retrieval.atomic_files import atomic_path, write_json

CODE_VERSION = 1  # bump when a change in this module or the render changes a shot's pixels
DEPTH_MODELS = {"tiny": "tiny", "sd15": "dpt-hybrid"}  # --models value → depth model
PREVIEW_FRAMES = 3


class StoryInputError(ValueError):
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
    timings: dict = field(default_factory=dict)

    def shot_files(self, shot) -> dict[str, Path]:
        base = self.out / "shots" / shot.safe_id
        return {"mp4": base.with_suffix(".mp4"), "gif": base.with_suffix(".gif"),
                "sidecar": base.with_suffix(".json"), "preview": Path(f"{base}.preview.npz")}


# -- preparing ----------------------------------------------------------------------------------------------
def prepare_story(options: StoryOptions) -> StoryPlan:
    """Check every input; raise :class:`StoryInputError` (nothing loaded, nothing written)."""
    from storyboard import StoryboardError, file_sha256, load_storyboard

    if options.models not in DEPTH_MODELS:
        raise StoryInputError(f"unknown --models value {options.models!r}; use one of {', '.join(DEPTH_MODELS)}")
    if not (isinstance(options.crossfade, (int, float)) and math.isfinite(options.crossfade)
            and options.crossfade >= 0):
        raise StoryInputError(f"--crossfade must be 0 or more seconds, got {options.crossfade!r}")
    try:
        story = load_storyboard(options.storyboard)
    except StoryboardError as exc:
        raise StoryInputError(str(exc)) from None
    shots = story.all_shot_settings()
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

    depth_model = DEPTH_MODELS[options.models]
    hashes = {}
    for shot in shots:
        extra = {"models": options.models, "depth_model": depth_model, "code_version": CODE_VERSION,
                 "index": index_record["fingerprint"] if shot.clip is None else None}
        hashes[shot.id] = story.settings_hash(shot.id, extra=extra)
    return StoryPlan(options, story, shots, library, index_record, depth_model, hashes, out,
                     storyboard_sha256=file_sha256(options.storyboard))


def _check_clip(shot) -> None:
    """A clip override must open and its range lie within the clip (checked before any model loads)."""
    from structure.extract import _check_within_clip, resolve_source

    try:
        _check_within_clip(resolve_source((shot.clip.path, shot.clip.start, shot.clip.end)))
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


class _Models:
    """The render components and depth estimator, loaded on first use (a no-op rerun loads nothing)."""

    def __init__(self, plan: StoryPlan):
        self.plan = plan
        self._components = None
        self._depth = None

    def load(self):
        if self._components is None:
            from render.model_loading import load_render_components
            from structure.depth_models import load_depth_model

            self._components = load_render_components(self.plan.options.models, device=self.plan.options.device)
            self._depth = load_depth_model(self.plan.depth_model, device=self._components.device, progress=False)
        return self._components, self._depth


def render_story(plan: StoryPlan, echo: Callable[[str], None] = print) -> dict:
    """Render the shots that changed, then rebuild story.mp4, storyboard.png and report.json; return the report."""
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

    models = _Models(plan)
    if to_render:
        models.load()  # a load error fails here, before anything is written
    (out / "shots").mkdir(parents=True, exist_ok=True)
    used = [_Span(**{k: s["segment"][k] for k in ("path", "start", "end")}) for s in sidecars.values()]

    status = {}
    with _tqdm(options.progress, total=len(plan.shots), desc="story", unit="shot") as bar:
        for shot in plan.shots:
            if shot.id in sidecars:
                status[shot.id] = "skipped"
                bar.update(1)
                continue
            bar.set_postfix_str(shot.id)
            sidecar = _render_shot(plan, shot, models, avoid=list(used))
            sidecars[shot.id] = sidecar
            used.append(_Span(**{k: sidecar["segment"][k] for k in ("path", "start", "end")}))
            status[shot.id] = "rendered"
            bar.update(1)

    report = _finish(plan, sidecars, status, models, time.perf_counter() - started)
    echo(_table(plan, sidecars, status))
    return report


def _render_shot(plan: StoryPlan, shot, models: _Models, avoid: list) -> dict:
    import torch

    from render.model_presets import make_scheduler
    from render.sampler import StructureGuidedSampler
    from render.video_files import write_gif, write_mp4
    from structure.conditioning import controlnet_condition
    from structure.extract import extract_depth, read_source_frames

    components, estimator = models.load()
    files = plan.shot_files(shot)
    timings = {}

    t0 = time.perf_counter()
    query = shot.motion_query
    if shot.clip is None:
        found = plan.library.search(query, k=1, avoid=avoid)
        if not found:
            raise RuntimeError(f"shot {shot.id!r}: the index has no segment for {query!r} that does not overlap "
                               "another shot's footage")
        chosen = found[0]
        segment = {"source": "retrieval", "segment_id": chosen.segment_id, "path": chosen.path,
                   "start": chosen.start, "end": chosen.end, "score": chosen.score, "label": chosen.label}
    else:
        segment = {"source": "clip_override", "segment_id": None, "path": str(shot.clip.path),
                   "start": shot.clip.start, "end": shot.clip.end, "score": None, "label": None}
    timings["retrieval"] = time.perf_counter() - t0
    source = (segment["path"], segment["start"], segment["end"])

    t0 = time.perf_counter()
    depth = extract_depth(source, frames=shot.frames, size=shot.size, estimator=estimator,
                          cache=plan.out / "cache" / "depth", fps=shot.fps)
    timings["depth"] = time.perf_counter() - t0

    prompt = f"{shot.prompt}, {shot.style}" if shot.style else shot.prompt
    t0 = time.perf_counter()
    sampler = StructureGuidedSampler(components, scheduler=make_scheduler(shot.scheduler))
    with _tqdm(plan.options.progress, total=shot.steps, desc=f"  {shot.id}", unit="step", leave=False) as steps:
        result = sampler(prompt, negative_prompt=shot.negative_prompt,
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
    timings["total"] = sum(timings.values())

    sidecar = {
        "settings_hash": plan.hashes[shot.id],
        "code_version": CODE_VERSION,
        "shot": shot.id,
        "safe_id": shot.safe_id,
        "query": query,
        "segment": segment,
        "prompt": prompt,
        "negative_prompt": shot.negative_prompt,
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
        "depth": {"model": plan.depth_model, "source": depth.source, "settings": depth.settings},
        "models": components.record(),
        "settings": shot.to_dict(),
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
        "rendered_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    write_json(files["sidecar"], sidecar)  # after the mp4: a sidecar always describes a finished shot
    return sidecar


def _finish(plan: StoryPlan, sidecars: dict, status: dict, models: _Models, seconds: float) -> dict:
    from render.story_sheet import SheetRow, draw_story_sheet
    from render.video_files import join_shots, read_video, write_mp4

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
        where = f"{Path(segment['path']).name}  {segment['start']:.2f}-{segment['end']:.2f} s"
        if segment["score"] is not None:
            where += f"  score {segment['score']:.3f}"
        rows.append(SheetRow(title=f"{shot.index + 1}. {shot.id}", caption=shot.text, source=where,
                             retrieved=retrieved, depth=depth, rendered=frames))
    fps = plan.shots[0].fps
    story = join_shots(shot_frames, fps, plan.options.crossfade)
    write_mp4(story, out / "story.mp4", fps)
    draw_story_sheet(rows, out / "storyboard.png", title=getattr(plan.storyboard, "title", None))

    first = sidecars[plan.shots[0].id]
    components = models._components
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
