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
    cache/depth/                 depth sequences (structure.DepthCache; cache/depth-deterministic/ under
                                 --deterministic)
    story.mp4 storyboard.png report.json   rebuilt from the shots on every run
    .render.lock                 held by the run writing the folder (:class:`OutputLock`)

**One run per folder.** :func:`render_story` holds an OS lock (``fcntl.flock``) on ``out/.render.lock`` while
it runs; a second run on the same folder stops at once with :class:`OutputBusyError` (exit 2) naming the holder
(pid, host, start time, written into the file). The kernel drops the lock when its process dies, however it
dies, so a killed run never leaves the folder locked; and temporary files a killed run left behind
(``.<name>.<random>.tmp`` from :mod:`storyreel.atomic_files`) are removed by the next run, which alone may
write there.

**Resume.** A shot is skipped when its mp4 exists and its sidecar records the settings hash of this run
(:meth:`storyboard.Storyboard.settings_hash` with the models, the depth model, the index's manifest and
:data:`render.shot_sidecar.CODE_VERSION` as ``extra``; and, under ``--deterministic``, the deterministic
settings and the device type, so a deterministic run renders again what a run without it made). Skipped
shots keep their recorded segment, and shots that are rendered again avoid the footage of every other shot,
so no two shots overlap.

**Deterministic runs** (``deterministic=True``, ``render-story --deterministic``): the same storyboard, models
and seed give bit-identical frames, shot mp4s and story.mp4 on the same machine, whether a run was killed and
resumed or not and whatever else runs there. What made the frames of one shot differ between runs:

1. x264's macroblock tree (a killed run's shot differed from an uninterrupted run's by up to 27 grey levels
   once decoded; the GIFs, written from the same frames, matched): it chose differently for the same frames
   depending on the heap layout. Fixed for every run in :func:`storyreel.video_files.write_mp4` (one thread,
   ``mbtree=0``, the RGB → yuv420p conversion done before the encoder).
2. torch's CPU intra-op thread count: float reductions (the VAE decoder's convolutions and group norms) are
   split over the threads and round differently for each count. Measured on the tiny models: the same latents
   decode to frames up to 34 grey levels apart with 1 and 2 threads, and a story rendered with
   ``OMP_NUM_THREADS=2`` and resumed with ``OMP_NUM_THREADS=1`` had a shot 22 levels off in its mp4. The count
   follows the environment (``OMP_NUM_THREADS``, a Ray worker's CPU share, a caller that capped torch's
   threads, as ``build-index`` does while it runs), so ``--deterministic`` fixes it
   (:data:`render.shot_renderer.DETERMINISTIC_CPU_THREADS`, also on Ray workers).
3. The depth cache: depth computed under other settings (thread count, device) would be reused by a resumed
   run, so deterministic runs keep their own cache (:meth:`render.shot_renderer.ShotRenderer.depth_cache_folder`).
4. On CUDA: cuDNN's autotuner and non-deterministic kernels, and cuBLAS's workspace; ``--deterministic`` turns
   on ``torch.use_deterministic_algorithms`` (warning on an op without a deterministic version), cuDNN's
   deterministic mode without benchmarking, and ``CUBLAS_WORKSPACE_CONFIG=:4096:8``
   (:func:`render.shot_renderer.deterministic_torch`, undone when the run ends).

Not causes, checked: memory alignment (matmul, convolution and sums give the same bits at every offset), the
order shots are rendered in within a process, prompt encoding, and the depth cache's own round trip (float32
stored as computed). Two machines, two GPU models or two torch builds still may differ.
"""

from __future__ import annotations

import json
import math
import os
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from render.keyframes import DEFAULT_KEYFRAME_BATCH, KeyframeUse, keyframe_hash, keyframe_use
from render.shot_renderer import (
    DETERMINISTIC_CPU_THREADS,
    RenderSettings,
    ShotRenderer,
    deterministic_record,
    deterministic_torch,
    with_style,
)
from render.shot_sidecar import CODE_VERSION, FootageRecord, Segment, ShotSidecar, shot_files
from render.story_consistency import (
    ConsistencyUse,
    bank_dependencies,
    consistency_uses,
    is_keyframe_bank,
    reference_shots,
)
from render.story_report import (
    IndexRecord,
    ModelsRecord,
    StoryboardRecord,
    StoryReport,
    report_shots,
    story_table,
    write_story_video,
)
from render.transitions import story_boundaries
from storyreel.errors import StoryreelError
from storyreel.hashing import file_sha256
from storyreel.models import presets
from storyreel.models.specification import ModelSpecification

# with_style and shot_files live with the shot renderer and the sidecar; they stay importable from here.
__all__ = ["LOCK_FILE", "OutputBusyError", "OutputLock", "StoryInputError", "StoryOptions", "StoryPlan",
           "choose_segment", "prepare_story", "render_keyframes", "render_story", "shot_files", "with_style"]

LOCK_FILE = ".render.lock"


class StoryInputError(StoryreelError, ValueError):
    """Bad input (storyboard, index, options): reported as ``error: ...`` with exit code 2."""


class OutputBusyError(StoryInputError):
    """Another run is writing the output folder (exit code 2); ``holder`` is what it wrote into the lock file."""

    def __init__(self, out: Path, holder: dict):
        self.out = out
        self.holder = holder
        if holder:
            who = (f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}, started "
                   f"{holder.get('started_at', '?')}")
        else:
            who = "a process that has not written its details yet"
        super().__init__(f"--out {out}: another render-story is writing this folder ({who}; lock file "
                         f"{out / LOCK_FILE}); wait for it to finish, or give another --out")


@dataclass
class StoryOptions:
    storyboard: Path
    out: Path
    index: Path | None = None
    models: str | ModelSpecification = presets.DEFAULT_PRESET  # a preset name, or the flags' specification
    crossfade: float = 0.0
    device: str | None = None
    progress: bool = True
    engine: str = "local"          # "local": one process; "ray": shots in parallel, one per GPU
    workers: int | None = None     # ray: render workers (default: one per GPU, else 1)
    cpu_offload: bool = False      # models on the GPU only for the phase that uses them
    character_files: dict[str, Path] = field(default_factory=dict)  # name → character file, over the storyboard's
    planner: str | None = None     # shots without a query or caption: "rules", "openai", "local" (None: auto)
    planner_options: dict = field(default_factory=dict)  # storyboard.planner.make_planner's keyword arguments
    deterministic: bool = False    # bit-identical frames, resumed or not (see the module docstring)
    allow_other_base: bool = False  # render characters trained on other base weights (recorded in report.json)
    setting: tuple[str, object] | None = None  # a sweep's variant: (storyboard default, value) for every shot
    footage: dict[str, Segment] | None = None  # shot id → footage chosen before (a sweep's first variant)
    depth_cache: Path | None = None  # raw depth cache shared with other renders (default: out/cache/depth)
    ip_adapter: str | None = None  # IP-Adapter weights: hub, tiny, a folder or a .safetensors file (None: preset's)
    ip_adapter_variant: str = "base"  # base, plus or plus-face
    sparsectrl: str | None = None  # SparseCtrl RGB for keyframe shots: hub id, tiny or a folder (None: preset's)
    animator: str = "sparsectrl"  # what animates keyframe shots: sparsectrl (with depth) or i2vgen-xl (without)
    i2vgen: str | None = None  # I2VGen-XL for --animator i2vgen-xl: hub id, tiny or a folder (None: preset's)
    keyframe_batch: int = DEFAULT_KEYFRAME_BATCH  # keyframes per sampler call at most (render.keyframes)


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
    consistency: dict[str, ConsistencyUse] = field(default_factory=dict)  # shot id → its banks (story_consistency)
    keyframe_consistency: dict[str, ConsistencyUse] = field(default_factory=dict)  # the same for its keyframe
    references: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (name, pictures) of characters with reference images
    ip_adapter: tuple[str, str] | None = None  # (variant, location) of the IP-Adapter, when a character has pictures
    keyframe_hashes: dict[str, str] = field(default_factory=dict)  # shot id → its keyframe's hash (render.keyframes)
    keyframes: dict[str, KeyframeUse] = field(default_factory=dict)  # shots animated from a keyframe
    sparsectrl: str | None = None  # the SparseCtrl model keyframe shots load
    i2vgen: str | None = None  # the I2VGen-XL pipeline keyframe shots load under --animator i2vgen-xl

    def shot_files(self, shot) -> dict[str, Path]:
        return shot_files(self.out, shot)

    @property
    def models(self) -> ModelSpecification:
        return model_specification_of(self.options.models)

    def render_settings(self) -> RenderSettings:
        """What the shot renderers need of this plan."""
        o = self.options
        return RenderSettings(self.models, self.depth_model, o.device, o.cpu_offload, self.out, o.progress,
                              self.characters, deterministic=o.deterministic, allow_other_base=o.allow_other_base,
                              depth_cache=o.depth_cache, references=self.references, ip_adapter=self.ip_adapter,
                              sparsectrl=self.sparsectrl, i2vgen=self.i2vgen)


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
    models = model_specification_of(options.models)
    try:  # the preset, TOML file, folders and files: checked without loading a model
        resolved = models.validate()
    except StoryreelError as exc:
        raise StoryInputError(str(exc)) from None
    preset = presets.get_preset(resolved.preset)
    model_defaults = preset.shot_defaults()  # steps, guidance, scheduler, where the storyboard sets none
    if not (isinstance(options.crossfade, (int, float)) and math.isfinite(options.crossfade)
            and options.crossfade >= 0):
        raise StoryInputError(f"--crossfade must be 0 or more seconds, got {options.crossfade!r}")
    try:
        story = load_storyboard(options.storyboard)
        if options.setting is not None:
            from storyboard.sweep import swept_storyboard

            story = swept_storyboard(story, *options.setting)
    except StoryboardError as exc:
        raise StoryInputError(str(exc)) from None
    _apply_character_files(story, options)
    story, planned = _complete_shots(story, options)
    shots = story.all_shot_settings(model_defaults)
    characters = _check_characters(shots, preset.name)
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

    depth_model = resolved.depth_model
    # the preset's name while only a preset is asked for (output folders of earlier versions keep resuming),
    # else everything the specification resolved to: another base, adapter or LoRA renders the shots again
    models_key = preset.name if _preset_only(models) else resolved.record()
    if resolved.extras:  # a TOML model config's sparsectrl, i2vgen, ip_adapter: the flags still win
        options = replace(options, **{key: value for key, value in resolved.extras.items()
                                      if getattr(options, key) is None})
    pictures, ip_adapter = _reference_pictures(shots, options, preset.name)
    references = reference_shots(shots)  # each shared character's consistency reference shot
    sparsectrl = _sparsectrl(shots, options, preset.name, out)
    i2vgen = _i2vgen(shots, options, preset.name)
    hashes, keyframe_hashes, keyframes = {}, {}, {}
    for shot in shots:  # in story order: a reference shot's hash is known before the shots attending to it
        extra = {"models": models_key, "depth_model": depth_model, "code_version": CODE_VERSION,
                 "index": index_record["fingerprint"] if shot.clip is None else None}
        if options.deterministic:  # only then: the hashes of other runs stay as they were
            extra["deterministic"] = {"cpu_threads": DETERMINISTIC_CPU_THREADS, "device": _device_type(options.device)}
        if any(c.reference_images for c in shot.characters):  # only then: other shots keep their hashes
            extra["ip_adapter"] = {"variant": ip_adapter[0], "location": ip_adapter[1]}
        banks = bank_dependencies(shot, references)
        if banks:  # only then: an edited reference shot renders its characters' shots again
            extra["consistency_banks"] = [hashes[ref] for ref in banks]
        hashes[shot.id] = story.settings_hash(shot.id, extra=extra, model_defaults=model_defaults)
        keyframe_hashes[shot.id] = keyframe_hash(hashes[shot.id])  # the picture depends on the shot, not vice versa
        if shot.keyframe:  # the shot depends on its keyframe's content (edited, replaced or to be generated)
            keyframes[shot.id] = keyframe_use(out, shot, keyframe_hashes[shot.id])
            extra["keyframe"] = ({"image": keyframes[shot.id].identity, "sparsectrl": sparsectrl} if i2vgen is None
                                 else {"image": keyframes[shot.id].identity, "animator": "i2vgen-xl",
                                       "i2vgen": i2vgen})
            hashes[shot.id] = story.settings_hash(shot.id, extra=extra, model_defaults=model_defaults)
    return StoryPlan(options, story, shots, library, index_record, depth_model, hashes, out,
                     storyboard_sha256=file_sha256(options.storyboard), characters=characters, planned=planned,
                     consistency=consistency_uses(shots, references, hashes, out),
                     keyframe_consistency=consistency_uses(shots, references, hashes, out, for_keyframes=True),
                     references=pictures,
                     ip_adapter=ip_adapter, keyframe_hashes=keyframe_hashes, keyframes=keyframes,
                     sparsectrl=sparsectrl, i2vgen=i2vgen)


def model_specification_of(models: str | ModelSpecification) -> ModelSpecification:
    """``StoryOptions.models`` as a :class:`ModelSpecification` (a preset name is one with only the preset)."""
    return models if isinstance(models, ModelSpecification) else ModelSpecification(preset=models)


def _preset_only(models: ModelSpecification) -> bool:
    return models.preset is not None and all(
        getattr(models, name) is None for name in ("config_file", "base", "motion_adapter", "controlnet", "vae",
                                                   "depth_model", "lora", "lora_scale")) and not models.components


def _device_type(device: str | None) -> str:
    """The type of the device the render will run on (``cpu``, ``cuda``, ...), without loading anything."""
    import torch

    from storyreel.devices import default_device

    try:
        return (torch.device(device) if device else default_device()).type
    except (RuntimeError, ValueError) as exc:
        raise StoryInputError(f"--device {device}: {exc}") from None


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


def _reference_pictures(shots, options: StoryOptions, preset: str):
    """``((name, pictures), ...)`` of the characters with reference images, and the IP-Adapter's ``(variant,
    location)`` (None when no character has pictures): ``options.ip_adapter``, else the preset's (``tiny`` for the
    tiny preset, the toy IP-Adapter trained on the toy world for the toy preset, the hub's h94/IP-Adapter for real
    models)."""
    from render.ip_adapter import IPAdapterSource
    from storyreel.weights_policy import PICKLE_REFUSAL, is_pickle_checkpoint

    found = {}
    for shot in shots:
        for character in shot.characters:
            if character.reference_images:
                found.setdefault(character.name, tuple(str(p) for p in character.reference_images))
    if not found:
        return (), None
    location = options.ip_adapter
    if location is None:
        location = "toy" if preset == presets.TOY else "tiny" if presets.same_architecture(preset, presets.TINY) \
            else "hub"
    try:
        source = IPAdapterSource(options.ip_adapter_variant, location)
    except StoryreelError as exc:
        raise StoryInputError(f"--ip-adapter-variant: {exc}") from None
    if source.kind == "toy" and source.variant != "base":
        raise StoryInputError(f"--ip-adapter-variant {source.variant}: the toy IP-Adapter is a base adapter (use "
                              "--ip-adapter-variant base)")
    if source.kind in ("file", "folder"):
        path = Path(location).expanduser()
        if is_pickle_checkpoint(path):
            raise StoryInputError(f"--ip-adapter {location}: only .safetensors files are loaded ({PICKLE_REFUSAL})")
        if not path.exists():
            raise StoryInputError(f"--ip-adapter {location}: no such file or folder")
        location = str(path.resolve())
    return tuple(found.items()), (source.variant, location)


def _sparsectrl(shots, options: StoryOptions, preset: str, out: Path) -> str | None:
    """The SparseCtrl model keyframe shots and generated transitions load (None when there are none):
    ``options.sparsectrl``, else the preset's (``tiny`` for the tiny preset, ``toy`` (trained on the toy world) for
    the toy preset, guoyww/animatediff-sparsectrl-rgb for real models)."""
    from render.sparse_control import SPARSECTRL_RGB

    generated = [shot.id for shot in shots[:-1] if shot.transition == "generate"]
    if not any(shot.keyframe for shot in shots) and not generated:
        return None
    spec = options.sparsectrl
    if spec is None:
        if presets.same_architecture(preset, presets.TOY):
            return "toy"
        return "tiny" if presets.same_architecture(preset, presets.TINY) else SPARSECTRL_RGB
    if spec == "toy":
        if not presets.same_architecture(preset, presets.TOY):
            raise StoryInputError(f"--sparsectrl toy is the toy render model's SparseCtrl; it does not fit --models "
                                  f"{preset} (use it with --models toy)")
        return spec
    return _folder_or_id("--sparsectrl", spec, "a SparseCtrl model")


def _i2vgen(shots, options: StoryOptions, preset: str) -> str | None:
    """``--animator i2vgen-xl``: the I2VGen-XL pipeline that animates keyframe shots instead of SparseCtrl (no depth
    guidance; EpicDiffusion's choice, for comparison): ``options.i2vgen``, else the preset's (``tiny`` for the tiny
    preset, ali-vilab/i2vgen-xl for real models; none for toy). None with the default animator."""
    if options.animator not in ("sparsectrl", "i2vgen-xl"):
        raise StoryInputError(f"--animator {options.animator}: use sparsectrl or i2vgen-xl")
    if options.animator != "i2vgen-xl":
        return None
    if not any(shot.keyframe for shot in shots):
        raise StoryInputError("--animator i2vgen-xl animates keyframe shots, and no shot has \"keyframe\": true")
    from render.i2vgen_animator import I2VGEN_XL

    spec = options.i2vgen
    if spec is None:
        if preset == presets.TOY:
            raise StoryInputError("the toy world trains no I2VGen-XL: give --i2vgen tiny (random weights: the code "
                                  "path only) or real weights with real models")
        return "tiny" if presets.same_architecture(preset, presets.TINY) else I2VGEN_XL
    return _folder_or_id("--i2vgen", spec, "an I2VGen-XL pipeline")


def _folder_or_id(flag: str, spec: str, what: str) -> str:
    """A model given on the command line: ``tiny``, a hub id, or a local folder (made absolute); a pickle file, or a
    path that is not a folder, is an input error."""
    from storyreel.weights_policy import PICKLE_REFUSAL, is_pickle_checkpoint

    path = Path(spec).expanduser()
    if is_pickle_checkpoint(path):
        raise StoryInputError(f"{flag} {spec}: only safetensors are loaded ({PICKLE_REFUSAL})")
    if spec != "tiny" and (path.exists() or spec.startswith((".", "/", "~"))):
        if not path.is_dir():
            raise StoryInputError(f"{flag} {spec}: no such folder ({what} in the diffusers layout)")
        return str(path.resolve())
    return spec


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
    """A clip override must open, its range lie within the clip, and its footage fill the shot within the
    shot's max_speed_change (checked before any model loads)."""
    from retrieval.footage import FootageFitError
    from structure.extract import check_within_clip, resolve_source

    try:
        check_within_clip(resolve_source(override_footage(shot)))
    except FootageFitError as exc:
        raise StoryInputError(f"shot {shot.id!r}: clip {shot.clip.path}: {exc} (give a longer range, or set the "
                              "shot's footage_fit or max_speed_change)") from None
    except Exception as exc:  # noqa: BLE001  (decode errors of any kind are the input's fault here)
        raise StoryInputError(f"shot {shot.id!r}: clip {shot.clip.path}: {exc}") from None


def override_footage(shot):
    """The :class:`retrieval.footage.Footage` of a shot's clip override: its range (or, without an end, from its
    start to the clip's end) fitted to the shot's duration as its ``footage_fit`` says."""
    from retrieval.clip_reader import probe_video
    from retrieval.footage import fit_footage

    clip = shot.clip
    if clip.end is not None:
        segment = room = (clip.start, clip.end)
    else:
        clip_end = probe_video(clip.path).duration_s
        room = (clip.start, max(clip.start, clip_end))
        segment = (clip.start, min(clip.start + shot.duration, room[1]))
    return fit_footage(str(clip.path), segment, room, shot.duration, shot.footage_fit, shot.max_speed_change)


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
    """The shot's footage: its clip override, else the best retrieved segment whose clip can fill the shot's
    duration (:func:`retrieval.footage.find_footage`) without playing footage in ``avoid`` (other shots'
    :attr:`Segment.range`); with the span the shot plays and its speed."""
    from retrieval.footage import FootageFitError, find_footage

    if shot.clip is not None:
        footage = override_footage(shot)
        return Segment(source="clip_override", segment_id=None, path=str(shot.clip.path), start=shot.clip.start,
                       end=shot.clip.end if shot.clip.end is not None else footage.end, score=None, label=None,
                       footage=FootageRecord(**footage.record()))
    try:
        chosen, footage = find_footage(plan.library, shot.motion_query, shot.duration, shot.footage_fit,
                                       shot.max_speed_change, used=avoid)
    except LookupError as exc:
        raise RuntimeError(f"shot {shot.id!r}: {exc}") from None
    except FootageFitError as exc:
        raise StoryInputError(f"shot {shot.id!r}: {exc}") from None
    return Segment(source="retrieval", segment_id=chosen.segment_id, path=chosen.path, start=chosen.start,
                   end=chosen.end, score=chosen.score, label=chosen.label, footage=FootageRecord(**footage.record()))


def render_story(plan: StoryPlan, echo: Callable[[str], None] = print) -> dict:
    """Render the shots that changed, then rebuild story.mp4, storyboard.png and report.json; return the report
    (:meth:`render.story_report.StoryReport.to_json`).

    Segments are chosen here, in story order, each avoiding the footage of every other shot; the renders
    then run in this process (``engine="local"``) or on Ray workers (``engine="ray"``, one per GPU). The whole
    run holds ``out``'s lock (:class:`OutputBusyError` at once when another run holds it) and, with
    ``deterministic``, runs torch in deterministic mode (:func:`render.shot_renderer.deterministic_torch`).
    """
    return _holding_out(plan, _render_story, echo)


def _holding_out(plan: StoryPlan, work: Callable, echo: Callable[[str], None]):
    """``work(plan, echo)`` holding ``out``'s lock (stale temporary files removed first), in deterministic torch
    when asked; a failure before anything was written leaves no folder behind."""
    with OutputLock(plan.out) as lock, deterministic_torch(plan.options.deterministic):
        lock.remove_stale_temporary_files()
        try:
            return work(plan, echo)
        except BaseException:
            lock.forget_folder_if_untouched()
            raise


def render_keyframes(plan: StoryPlan, echo: Callable[[str], None] = print) -> dict:
    """``--keyframes-only``: each shot's first frame as ``out/keyframes/<safe_id>.png`` (:mod:`render.keyframes`)
    and all of them as ``out/keyframes.png``; unchanged keyframes are skipped. Footage is chosen as for the shots
    (and recorded, so the shots' render plays it); returns ``{"rendered": [...], "skipped": [...], "sheet": path}``."""
    return _holding_out(plan, _render_keyframes, echo)


def _render_keyframes(plan: StoryPlan, echo: Callable[[str], None]) -> dict:

    from render.keyframes import keyframe_files
    from render.story_sheet import SheetRow, draw_story_sheet

    records, status = {}, {}
    for shot in plan.shots:  # unchanged keyframes: their picture is there and their sidecar has this run's hash
        files = keyframe_files(plan.out, shot)
        try:
            record = json.loads(files["sidecar"].read_text()) if files["png"].is_file() else None
        except (OSError, ValueError):
            record = None
        use = plan.keyframe_consistency.get(shot.id)
        bank_missing = use is not None and use.records is not None and not use.records.is_file()
        if record is not None and record.get("settings_hash") == plan.keyframe_hashes[shot.id] and not bank_missing:
            records[shot.id], status[shot.id] = record, "skipped"
    shot_sidecars = _unchanged_shots(plan)  # shots already rendered keep their footage
    used = [Segment.from_json(r["segment"]).range for r in records.values()]
    used += [sidecar.segment.range for shot_id, sidecar in shot_sidecars.items() if shot_id not in records]
    renderer = ShotRenderer(plan.render_settings())
    to_make = [shot for shot in plan.shots if shot.id not in records]
    check_models_available(plan, [shot for shot in to_make if shot.id not in shot_sidecars], keyframes_only=True)
    segments = {}
    for shot in to_make:  # footage first: a shot no footage can fill fails before any model loads
        segments[shot.id] = (shot_sidecars[shot.id].segment if shot.id in shot_sidecars
                             else (plan.options.footage or {}).get(shot.id)
                             or choose_segment(plan, shot, avoid=list(used)))
        used.append(segments[shot.id].range)
    made: dict[str, dict] = {}
    _make_keyframes(plan, renderer, to_make, segments, made, echo)
    for shot in to_make:
        records[shot.id], status[shot.id] = made[shot.id], "rendered"
    import numpy as np
    from PIL import Image

    rows = []
    for shot in plan.shots:
        record, files = records[shot.id], keyframe_files(plan.out, shot)
        picture = np.asarray(Image.open(files["png"]).convert("RGB"))  # as edited, if someone edited it
        segment = Segment.from_json(record["segment"])
        retrieved = depth = None
        if files["preview"].is_file():
            with np.load(files["preview"]) as preview:
                retrieved, depth = preview["retrieved"], preview["depth"].astype(np.float32) / 255
        rows.append(SheetRow(title=shot.id, caption=shot.text, source=f"{Path(segment.path).name} "
                             f"{segment.range.start:.2f}-{segment.range.end:.2f} s", retrieved=retrieved,
                             depth=depth, rendered=picture[None], prompt=record["prompt"]))
    sheet = draw_story_sheet(rows, plan.out / "keyframes.png", title=plan.storyboard.title, frames_per_part=1,
                             thumb=160)
    return {"rendered": [s.id for s in plan.shots if status[s.id] == "rendered"],
            "skipped": [s.id for s in plan.shots if status[s.id] == "skipped"], "sheet": str(sheet)}


def make_keyframes(plan: StoryPlan, renderer: ShotRenderer, shots: list, segments: dict) -> list[dict]:
    """Render the keyframes of ``shots`` (``out/keyframes/<safe_id>.png``) in one sampler call, a batch of
    :func:`render.keyframes.keyframe_batches`, and write their sidecars, each with its picture's SHA-256 (an edit
    changes it: the shot animated from it then uses the edited picture as it is)."""
    from dataclasses import asdict

    from render.keyframes import keyframe_files
    from storyreel.atomic_files import write_json

    consistency = plan.keyframe_consistency.get(shots[0].id) if len(shots) == 1 else None
    records = renderer.render_keyframes([(shot, segments[shot.id], plan.keyframe_hashes[shot.id]) for shot in shots],
                                        consistency)
    for shot, record in zip(shots, records):
        files = keyframe_files(plan.out, shot)
        record.update(segment=asdict(record["segment"]),
                      characters={k: asdict(v) for k, v in record["characters"].items()},
                      png_sha256=file_sha256(files["png"]))
        write_json(files["sidecar"], record)
    return records


def _make_keyframes(plan: StoryPlan, renderer: ShotRenderer, shots: list, segments: dict, made: dict[str, dict],
                    echo: Callable[[str], None]) -> None:
    """Make the keyframes of ``shots`` not yet in ``made`` (shot id → its record, filled in), in the batches of
    :func:`render.keyframes.keyframe_batches` (``--keyframe-batch`` at most); a keyframe with consistent
    self-attention alone, after the keyframes of its references whose keyframe banks are missing (it attends to
    them)."""
    from render.keyframes import keyframe_batches

    by_id = {s.id: s for s in plan.shots}

    def with_banks(shot) -> None:
        use = plan.keyframe_consistency.get(shot.id)
        for ref, bank, _ in (use.attends if use is not None else ()):
            if not bank.is_file() and ref not in made:
                with_banks(by_id[ref])
        make([shot])

    def make(batch: list) -> None:
        records = make_keyframes(plan, renderer, batch, segments)
        made.update({shot.id: record for shot, record in zip(batch, records)})
        if len(batch) == 1:
            echo(f"{batch[0].id}: keyframe in {records[0]['seconds']:.1f} s (keyframes/{batch[0].safe_id}.png)")
        else:
            echo(f"{', '.join(shot.id for shot in batch)}: {len(batch)} keyframes in one batch, "
                 f"{records[0]['batch']['seconds']:.1f} s ({records[0]['seconds']:.1f} s each)")

    def alone(shot) -> bool:
        return plan.keyframe_consistency.get(shot.id) is not None

    for batch in keyframe_batches(shots, plan.options.keyframe_batch, alone=alone):
        batch = [shot for shot in batch if shot.id not in made]  # made first as a reference's keyframe
        if batch and alone(batch[0]):
            with_banks(batch[0])
        elif batch:
            make(batch)


def prepare_sweep(options: StoryOptions, sweep) -> list[StoryPlan]:
    """The plan of each variant of ``sweep`` (a :class:`storyboard.sweep.SettingSweep`), every one checked before
    anything renders: variant ``NAME=VALUE`` renders into ``out/sweep/NAME=VALUE/``, and all share the raw depth
    cache ``out/cache/depth``."""
    out = Path(options.out)
    if out.exists() and not out.is_dir():
        raise StoryInputError(f"--out {out}: exists and is not a folder")
    return [prepare_story(replace(options, out=out / "sweep" / folder, setting=(sweep.name, value),
                                  depth_cache=out / "cache" / "depth"))
            for folder, value in zip(sweep.folder_names(), sweep.values)]


def render_sweep(plans: list[StoryPlan], echo: Callable[[str], None] = print) -> list[dict]:
    """Render each variant in turn (:func:`render_story`); the variants after the first play the first one's
    footage (retrieval runs once) and find its depth in the shared cache. Returns the reports."""
    reports, footage = [], None
    for plan in plans:
        plan.options.footage = footage
        echo(f"{plan.out.name}:")
        report = render_story(plan, echo=echo)
        if footage is None:
            footage = {shot["id"]: Segment.from_json(shot["segment"]) for shot in report["shots"]}
        reports.append(report)
    return reports


def _render_story(plan: StoryPlan, echo: Callable[[str], None]) -> dict:
    from tqdm import tqdm

    options, out = plan.options, plan.out
    started = time.perf_counter()
    sidecars = _unchanged_shots(plan)
    status = {shot.id: "skipped" for shot in plan.shots if shot.id in sidecars}
    to_render = [shot for shot in plan.shots if shot.id not in sidecars]

    check_models_available(plan, to_render)  # offline: every missing model named at once, before any work
    used = [sidecar.segment.range for sidecar in sidecars.values()]
    jobs = []
    for shot in to_render:  # footage first: a shot no footage can fill fails before any model loads
        t0 = time.perf_counter()
        chosen = (options.footage or {}).get(shot.id)
        segment = chosen if chosen is not None else choose_segment(plan, shot, avoid=list(used))
        used.append(segment.range)
        jobs.append((shot, segment, plan.hashes[shot.id], time.perf_counter() - t0, plan.consistency.get(shot.id),
                     plan.keyframes.get(shot.id)))
    renderer = ShotRenderer(plan.render_settings())
    if to_render and options.engine == "local":
        renderer.load()  # a load error fails here, before anything is written
    (out / "shots").mkdir(parents=True, exist_ok=True)
    segments = {**{shot_id: sidecar.segment for shot_id, sidecar in sidecars.items()},
                **{job[0].id: job[1] for job in jobs}}
    made: dict[str, dict] = {}
    # keyframe shots whose keyframe is still to be made: first (in batches)
    _make_keyframes(plan, renderer, [job[0] for job in jobs if job[5] is not None and job[5].needs_render],
                    segments, made, echo)
    by_id = {shot.id: shot for shot in plan.shots}
    for _, _, _, _, consistency, _ in jobs:  # reference: "keyframes": the reference keyframes record the banks
        refs = [by_id[ref] for ref, bank, _ in (consistency.attends if consistency is not None else ())
                if is_keyframe_bank(bank) and not bank.is_file() and ref not in made]
        _make_keyframes(plan, renderer, refs, segments, made, echo)

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

            # shots that record a consistency bank first: the shots attending to it read it from out/cache
            records = [job[4] is not None and job[4].records is not None for job in jobs]
            for first in (True, False):
                batch = [job for job, record in zip(jobs, records) if record == first]
                render_on_ray(renderer.settings, batch, done, workers=options.workers)
        else:  # in story order: a character's reference shot comes before the shots attending to its bank
            for shot, segment, settings_hash, retrieval_s, consistency, keyframe in jobs:
                bar.set_postfix_str(shot.id)
                done(shot, renderer.render(shot, segment, settings_hash, consistency, keyframe), retrieval_s)

    boundaries = story_boundaries(plan.shots, plan.hashes, out, options.crossfade, plan.sparsectrl)
    transitions = _make_transitions(plan, boundaries, renderer, echo)
    report = _finish(plan, sidecars, status, renderer, time.perf_counter() - started, boundaries, transitions)
    echo(story_table(plan.shots, sidecars, status))
    return report.to_json()


def check_models_available(plan: StoryPlan, shots: list, keyframes_only: bool = False) -> None:
    """Every hub model that rendering ``shots`` loads (the index's CLIP when one of them retrieves its footage, the
    render components, the depth model, and IP-Adapter, SparseCtrl, I2VGen-XL when used) from the local cache, or
    the hub asked once (:func:`storyreel.hub_access.ensure_available`): an offline machine learns at once which
    models it lacks, all of them. Nothing to render (a resumed story) needs nothing."""
    from storyreel.hub_access import ensure_available
    from storyreel.models.hub_models import clip_models

    if not shots:
        return
    settings = plan.render_settings()
    if keyframes_only:  # keyframes need the image model, not the animators
        settings = replace(settings, sparsectrl=None, i2vgen=None)
    models = settings.hub_models()
    footage = plan.options.footage or {}
    if plan.library is not None and any(shot.clip is None and shot.id not in footage for shot in shots):
        models = clip_models(plan.library.manifest.model["spec"]) + models
    ensure_available(models)


def _unchanged_shots(plan: StoryPlan) -> dict[str, ShotSidecar]:
    """The sidecars of the shots to skip: their mp4 exists, their sidecar has this run's settings hash and, for a
    consistency reference shot, its bank is there."""
    found = {}
    for shot in plan.shots:
        files = plan.shot_files(shot)
        sidecar = ShotSidecar.read(files["sidecar"]) if files["mp4"].is_file() else None
        use = plan.consistency.get(shot.id)
        bank_missing = use is not None and use.records is not None and not use.records.is_file()
        if sidecar is not None and sidecar.settings_hash == plan.hashes[shot.id] and not bank_missing:
            found[shot.id] = sidecar
    return found


def _make_transitions(plan: StoryPlan, boundaries, renderer: ShotRenderer, echo) -> dict[str, str]:
    """Render the generated transitions that are missing or out of date (:mod:`render.transitions`); their status
    by ``"<from>--<to>"``."""
    from render.transitions import GENERATE, is_current
    from storyreel.atomic_files import write_json

    by_id = {shot.id: shot for shot in plan.shots}
    status = {}
    for boundary in boundaries:
        if boundary.kind != GENERATE:
            continue
        key = f"{boundary.before}--{boundary.after}"
        if is_current(boundary):
            status[key] = "skipped"
            continue
        record = renderer.render_transition(by_id[boundary.before], by_id[boundary.after], boundary)
        write_json(boundary.sidecar, record)  # after the mp4: the sidecar always describes a finished transition
        status[key] = "rendered"
        echo(f"transition {key}: {boundary.frames} frames in {record['seconds']:.1f} s")
    return status


def _finish(plan: StoryPlan, sidecars: dict[str, ShotSidecar], status: dict[str, str], renderer: ShotRenderer,
            seconds: float, boundaries=(), transitions: dict | None = None) -> StoryReport:
    """story.mp4 and storyboard.png from every shot (and the transitions between them), then report.json."""
    video = write_story_video(plan.out, plan.shots, sidecars, plan.options.crossfade,
                              title=getattr(plan.storyboard, "title", None), boundaries=boundaries)
    components = renderer.components  # None when nothing was rendered here (all skipped, or on Ray workers)
    preset = plan.models.preset_name()
    report = StoryReport(
        code_version=CODE_VERSION,
        storyboard=StoryboardRecord(path=str(Path(plan.options.storyboard).resolve()), sha256=plan.storyboard_sha256,
                                    title=plan.storyboard.title),
        models=ModelsRecord(preset=preset, depth_model=plan.depth_model,
                            specification=plan.models.record(),
                            shot_defaults=presets.get_preset(preset).shot_defaults(),
                            render=components.record() if components is not None
                            else sidecars[plan.shots[0].id].models),
        index=IndexRecord.of(plan.index_record),
        crossfade_s=plan.options.crossfade,
        deterministic=deterministic_record() if plan.options.deterministic else None,
        allow_other_base=plan.options.allow_other_base,
        sweep=None if plan.options.setting is None else {"name": plan.options.setting[0],
                                                          "value": plan.options.setting[1]},
        story=video,
        planned=plan.planned,
        rendered=[s.id for s in plan.shots if status.get(s.id) == "rendered"],
        skipped=[s.id for s in plan.shots if status.get(s.id) == "skipped"],
        seconds=round(seconds, 3),
        shots=report_shots(plan.out, plan.shots, sidecars, status),
        transitions=[b.record(plan.out, (transitions or {}).get(f"{b.before}--{b.after}")) for b in boundaries],
    )
    report.write(plan.out / "report.json")
    return report


# -- one run per output folder ------------------------------------------------------------------------------
class OutputLock:
    """``out/.render.lock``, held with ``fcntl.flock`` while a run writes ``out`` (see the module docstring).

    The file is written in place, not through :mod:`storyreel.atomic_files`: the lock belongs to the file's
    inode, and replacing the file would let a second run lock the new inode while the first holds the old one.
    The holder writes its pid, host, start time and command into it after locking; the file stays when the
    run ends (deleting it would race with a run opening it), and the next holder overwrites it.
    """

    def __init__(self, out: Path):
        self.out = Path(out)
        self.path = self.out / LOCK_FILE
        self._fd: int | None = None
        self._created_folder = False

    def acquire(self) -> OutputLock:
        """Lock ``out`` (made if missing) or raise :class:`OutputBusyError` at once."""
        import fcntl

        self._created_folder = not self.out.exists()
        self.out.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise OutputBusyError(self.out, self._holder()) from None
        holder = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                  "command": " ".join(sys.argv)}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            import fcntl

            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def _holder(self, tries: int = 20) -> dict:
        """What the holder wrote ({} when unknown). It writes just after locking, so a read that finds nothing,
        or the details of a previous holder no longer running here, is retried for a moment."""
        for _ in range(tries):
            try:
                holder = json.loads(self.path.read_text() or "{}")
            except (OSError, ValueError):
                holder = {}
            if isinstance(holder, dict) and holder and (holder.get("host") != socket.gethostname()
                                                        or _process_exists(holder.get("pid"))):
                return holder
            time.sleep(0.05)
        return {}

    def remove_stale_temporary_files(self) -> list[Path]:
        """Remove the ``.<name>.<random>.tmp`` files of :mod:`storyreel.atomic_files` that a killed run left in
        ``out``, ``out/shots`` and ``out/cache`` (only the lock's holder writes there, so none is in use)."""
        found = [*self.out.glob(".*.tmp"), *self.out.glob("shots/.*.tmp"), *self.out.glob("cache/**/.*.tmp")]
        for path in found:
            path.unlink(missing_ok=True)
        return found

    def forget_folder_if_untouched(self) -> None:
        """After a failure before anything was written: remove the lock file and the folder when this run made
        the folder (bad input leaves no trace)."""
        if self._created_folder and [p.name for p in self.out.iterdir()] == [LOCK_FILE]:
            self.path.unlink(missing_ok=True)
            self.out.rmdir()

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _process_exists(pid) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True
