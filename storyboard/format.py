"""Storyboard format v1: the pydantic models of a storyboard file.

A storyboard is a JSON object (``data/examples/fable.json`` is a complete one)::

    {
      "format_version": 1,
      "title": "The Hare and the Tortoise",
      "style": "watercolour storybook illustration",
      "defaults": {"width": 512, "height": 512, "frames": 16, "fps": 8, "tau": 0.5, "seed": 42},
      "characters": {
        "hare": {"token": "<hare>", "class_word": "rabbit", "embedding": "characters/hare.safetensors"}
      },
      "shots": [
        {"id": "sprint", "text": "The hare sprints ahead.", "characters": ["hare"],
         "motion_query": "a dog running across a field", "caption": "(<hare> rabbit)1.3 sprinting",
         "duration": 2.5},
        {"id": "finish", "text": "The hare crosses the line.", "characters": ["hare"],
         "clip": {"path": "clips/finish.mp4", "start": 1.0, "end": 3.0}}
      ]
    }

Every field a shot leaves out comes from ``defaults`` (:meth:`Storyboard.shot_settings` merges them).
Unknown fields are refused, so a typo such as ``tua`` is an error rather than a silently ignored
setting. Relative paths (embedding files, clips) are relative to the storyboard file's folder; the
loader (:func:`storyboard.load_storyboard`) resolves them and checks that the files exist.

**Model defaults.** ``steps``, ``guidance`` and ``scheduler`` that the storyboard does not set come from the
model preset when the caller passes its defaults (``model_defaults``, the preset's
``ModelPreset.shot_defaults()``): a 4-step distilled model renders in 4 steps unless the storyboard asks
for more. "Set" means written in the file (pydantic's ``model_fields_set``), even when the value equals
the format's default; a value left out stays left out through :func:`storyboard.save_storyboard` and the
planner's copies. Each :class:`ShotSettings` says where its values came from (``sources``: ``shot``,
``storyboard``, ``preset``, or ``default``: the format's own).
"""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Annotated, Literal, Mapping

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SerializerFunctionWrapHandler,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

from storyboard.errors import (
    Problem,
    StoryboardError,
    custom_error,
    describe,
    json_path,
    problems_error,
    problems_from_validation_error,
)
from storyboard.fingerprint import shot_hash
from storyboard.shot_ids import unique_safe_ids
from storyboard.shot_settings import (
    DEFAULT_DEPTH_RANGE,
    DEFAULT_ETA,
    DEFAULT_FOOTAGE_FIT,
    DEFAULT_IP_ADAPTER_SCALE,
    DEFAULT_MAX_SPEED_CHANGE,
    DEPTH_RANGES,
    FOOTAGE_FITS,
    ResolvedCharacter,
    ResolvedClip,
    ShotConsistency,
    ShotSettings,
    derive_seed,
    frames_for_duration,
)
from storyreel.errors import StoryreelError
from storyreel.models.presets import DEFAULT_GUIDANCE, DEFAULT_SCHEDULER, DEFAULT_STEPS, SCHEDULER_NAMES

FORMAT_VERSION = 1
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")  # a reference_images folder's pictures
SCHEDULERS = SCHEDULER_NAMES  # the model registry's names
DEFAULT_NEGATIVE_PROMPT = "blurry, low quality, deformed, distorted, watermark, text"
MAX_FRAMES = 256
MAX_SEED = 2**32 - 1
EMBEDDING_SUFFIX = ".safetensors"
TOKEN_PATTERN = r"^<[A-Za-z0-9_-]+>$"
NAME_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
_TOKEN_IN_TEXT = re.compile(r"<[^\s<>]+>")

# Where a shot's value came from (ShotSettings.sources): the shot's own field, the storyboard's defaults,
# the model preset's defaults, or the format's own default.
FROM_SHOT = "shot"
FROM_STORYBOARD = "storyboard"
FROM_PRESET = "preset"
FROM_DEFAULT = "default"
# The defaults a model preset may give (ModelPreset.shot_defaults), and the settings whose source is told.
MODEL_DEFAULT_KEYS = ("steps", "guidance", "scheduler")
SOURCED_SETTINGS = ("width", "height", "frames", "fps", "steps", "guidance", "tau", "seed", "scheduler",
                    "negative_prompt", "eta", "depth_range", "footage_fit", "max_speed_change")

# Constrained values, shared by the defaults and the shots that override them.
Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]
Size = Annotated[int, Field(ge=64, le=2048, multiple_of=8)]
Frames = Annotated[int, Field(ge=1, le=MAX_FRAMES)]
Fps = Annotated[float, Field(gt=0, le=60)]
Steps = Annotated[int, Field(ge=1, le=200)]
Guidance = Annotated[float, Field(ge=0, le=30)]
Tau = Annotated[float, Field(ge=0, le=1)]
Eta = Annotated[float, Field(ge=0, le=1)]
DepthRange = Literal[DEPTH_RANGES]
FootageFit = Literal[FOOTAGE_FITS]
SpeedChange = Annotated[float, Field(ge=1, le=8)]
Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]
Scheduler = Literal[SCHEDULER_NAMES]
Transition = Literal["cut", "crossfade", "generate"]
TransitionSeconds = Annotated[float, Field(gt=0, le=10)]


def _check_name(name: str) -> str:
    if not re.match(NAME_PATTERN, name):
        raise custom_error("character_name", f"character names are 1-64 letters, digits, '_' or '-', "
                                             f"got {describe(name)}")
    return name


CharacterName = Annotated[str, AfterValidator(_check_name)]


class _Model(BaseModel):
    # strict: "16" is not 16 and 16.0 is not a frame count; LLM output is untrusted.
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, use_attribute_docstrings=True)


class Consistency(_Model):
    """Consistent self-attention across shots (StoryDiffusion, adapted to video): the character's reference shot
    stores tokens sampled from its frames, and every later shot that names the character attends to them."""

    mode: Literal["self_attention", "off"] = "self_attention"
    """"self_attention" turns it on; "off" turns it off for a shot when the defaults turn it on."""
    rate: Annotated[float, Field(ge=0, le=1)] = 0.5
    """The share of a reference frame's tokens that are kept and attended to (0-1; 0 changes nothing)."""
    until: Annotated[float, Field(ge=0, le=1)] = 0.6
    """The fraction of denoising steps, from the first, that attend to the reference tokens (0-1)."""
    reference: Literal["first_shot", "keyframes"] = "first_shot"
    """Where a character's reference tokens come from: "first_shot", the video of its first shot with consistency
    on; "keyframes", that shot's keyframe (one picture, made first, as StoryDiffusion's reference images), which
    every shot of the character attends to, its first shot's video included."""
    bank_frames: Annotated[int, Field(ge=1, le=16)] = 2
    """How many frames of the reference shot (evenly spaced) give tokens (1-16)."""
    budget_mb: Annotated[float, Field(gt=0, le=65536)] = 1024.0
    """The most memory a character's reference tokens may take, in MB; fewer frames are kept to fit."""


class Defaults(_Model):
    """Settings of every shot that does not set its own; sized for SD1.5 AnimateDiff."""

    width: Size = 512
    """Frame width in pixels: a multiple of 8 (the latent grid) from 64 to 2048."""
    height: Size = 512
    """Frame height in pixels: a multiple of 8 (the latent grid) from 64 to 2048."""
    frames: Frames = 16
    """Frames per shot (1-256), where the shot gives neither frames nor duration."""
    fps: Fps = 8.0
    """Frames per second of the story video; a shot's duration is converted at this rate."""
    steps: Steps = DEFAULT_STEPS
    """Denoising steps (1-200); left out: the model preset's (25 for sd15, 4 for sd15-lightning)."""
    guidance: Guidance = DEFAULT_GUIDANCE
    """Classifier-free guidance scale (0-30; 1 or less: none); left out: the model preset's (7.5 for sd15)."""
    tau: Tau = 0.5
    """Structure guidance τ (Animate-A-Story): the fraction of denoising steps, from the first, that are
    guided by the retrieved clip's depth; 0 = none, 1 = all."""
    seed: Seed = 0
    """The story's seed; a shot without its own seed derives one from it and its id."""
    negative_prompt: str = DEFAULT_NEGATIVE_PROMPT
    """Negative prompt of shots that give none ("" for none)."""
    scheduler: Scheduler = DEFAULT_SCHEDULER
    """Diffusion scheduler: ddim, euler, dpmpp_2m or lcm; left out: the model preset's (ddim for sd15)."""
    eta: Eta = DEFAULT_ETA
    """DDIM's eta (0-1): 0 denoises deterministically, 1 adds fresh noise each step as DDPM does
    (Make-Your-Video samples with 1.0); schedulers without eta ignore it."""
    depth_range: DepthRange = DEFAULT_DEPTH_RANGE
    """How the footage's depth is brought to [0, 1]: "sequence" (one range for the whole shot, so a still
    surface keeps its brightness) or "frame" (each frame's own min and max: Make-Your-Video's convention and
    the depth ControlNet's training data)."""
    footage_fit: FootageFit = DEFAULT_FOOTAGE_FIT
    """How the footage fills the shot's duration: "extend" (footage of the shot's own length around the matched
    segment, inside its cut-free scene, so the motion keeps its real speed; slowed only when the scene is
    shorter), "stretch" (the matched segment itself, retimed to the shot) or "pingpong" (as extend, but a
    scene shorter than the shot plays forwards and back at its real speed)."""
    max_speed_change: SpeedChange = DEFAULT_MAX_SPEED_CHANGE
    """How much faster or slower than real the footage may play (1-8; 1.5 allows 0.67x to 1.5x); footage that
    would need more is passed over for the next match, or refused."""
    consistency: Consistency | None = None
    """Consistent self-attention across the shots of each character (off when left out)."""
    keyframe: bool = False
    """Animate every shot from its keyframe (render-story --keyframes-only makes them; SparseCtrl RGB at frame 0)."""
    transition: Transition | None = None
    """How each shot goes into the next: "cut", "crossfade" or "generate" (a clip made between the last frame of
    one shot and the first of the next); left out: render-story --crossfade decides."""
    transition_seconds: TransitionSeconds = 1.0
    """The length of a crossfade or of a generated transition, in seconds."""

    @model_serializer(mode="wrap")
    def _keep_model_defaults_unset(self, handler: SerializerFunctionWrapHandler) -> dict:
        # A value left to the model preset stays left out when the storyboard is dumped, copied or saved.
        data = handler(self)
        for key in MODEL_DEFAULT_KEYS:
            if key not in self.model_fields_set:
                data.pop(key, None)
        return data


class ModelDefaultsError(StoryreelError, ValueError):
    """Model defaults (``model_defaults``) with a value the storyboard format does not allow."""


class ModelDefaults(_Model):
    """What a model preset renders with unless the storyboard says otherwise (None: no preset value)."""

    steps: Steps | None = None
    guidance: Guidance | None = None
    scheduler: Scheduler | None = None

    @classmethod
    def from_mapping(cls, values: Mapping | ModelDefaults | None) -> ModelDefaults:
        """Validated defaults from ``{"steps": 4, "guidance": 1.0, "scheduler": "euler"}`` (any subset);
        :class:`ModelDefaultsError` names the key of a bad value."""
        if isinstance(values, ModelDefaults):
            return values
        try:
            return cls.model_validate(dict(values or {}))
        except ValidationError as exc:
            problems = problems_from_validation_error(exc, cls.model_json_schema())
            raise ModelDefaultsError("model defaults: " + "; ".join(str(p) for p in problems)) from None


class Character(_Model):
    """A character kept consistent across shots by a trained TimeInv token and LoRA."""

    token: str = Field(json_schema_extra={"pattern": TOKEN_PATTERN})
    """The character's token in captions, such as <hare>: letters, digits, '_' or '-' in angle brackets."""
    class_word: Text
    """The kind of thing the character is (rabbit, old man), written after its token in captions."""
    embedding: str | None = None
    """The character's trained TimeInv + LoRA weights: a .safetensors file, relative to the storyboard's
    folder. Leave out before the character is trained."""
    scale: Annotated[float, Field(ge=0, le=2)] = 1.0
    """LoRA scale (0-2)."""
    reference_images: Text | list[Text] | None = None
    """Pictures of the character for IP-Adapter identity without training: a folder (its .png, .jpg, .jpeg and
    .webp files) or a list of image files, relative to the storyboard's folder."""
    ip_adapter_scale: Annotated[float, Field(ge=0, le=2)] = DEFAULT_IP_ADAPTER_SCALE
    """How strongly the reference pictures steer the shots that list the character (0-2; 0: not at all)."""

    @field_validator("reference_images")
    @classmethod
    def _some_pictures(cls, images):
        if isinstance(images, list) and not images:
            raise custom_error("reference_images", "must list at least one image file (or leave the field out)")
        return images

    @field_validator("token")
    @classmethod
    def _token_shape(cls, token: str) -> str:
        if not re.match(TOKEN_PATTERN, token):
            raise custom_error("token", "must look like <name>: letters, digits, '_' or '-' in angle brackets, "
                                        f"got {describe(token)}")
        return token

    @field_validator("embedding")
    @classmethod
    def _embedding_file(cls, embedding: str | None) -> str | None:
        if embedding is None:
            return None
        if not embedding.strip():
            raise custom_error("embedding", "must not be empty (leave the field out for an untrained character)")
        if not embedding.lower().endswith(EMBEDDING_SUFFIX):
            raise custom_error("embedding", f"must be a {EMBEDDING_SUFFIX} file (only safetensors are loaded), "
                                            f"got {describe(embedding)}")
        return embedding


class ClipOverride(_Model):
    """A clip that gives a shot its motion directly: retrieval is skipped for the shot."""

    path: Text
    """The video file, relative to the storyboard's folder."""
    start: Annotated[float, Field(ge=0)] = 0.0
    """Start of the segment in seconds."""
    end: Annotated[float, Field(gt=0)] | None = None
    """End of the segment in seconds, after start; left out: as much as the shot's duration needs (at most to
    the clip's end). The segment fills the shot as the shot's footage_fit says."""

    @field_validator("end")
    @classmethod
    def _after_start(cls, end: float | None, info: ValidationInfo) -> float | None:
        start = info.data.get("start")
        if start is not None and end is not None and end <= start:
            raise custom_error("clip_range", f"must be after start ({start:g} s), got {end:g}")
        return end


class Shot(_Model):
    """One shot of the story."""

    id: Text
    """Unique name of the shot; output files use a sanitised form (Storyboard.safe_id)."""
    text: Text
    """What happens in the shot, in words."""
    characters: list[str] = Field(default_factory=list)
    """Names of the characters in the shot (keys of the storyboard's characters)."""
    motion_query: Text | None = None
    """The text that retrieves the shot's motion from the video library (default: text)."""
    caption: Text | None = None
    """The diffusion prompt, with compel weighting such as (<hare> rabbit)1.3 sprinting (default: text)."""
    negative_prompt: str | None = None
    """The shot's negative prompt, replacing the default's ("" for none)."""
    analysis: str | None = None
    """The planner's reasoning for this shot; not used by the render."""
    frames: Frames | None = None
    """Frame count (1-256); give frames or duration, not both."""
    duration: Annotated[float, Field(gt=0)] | None = None
    """Length in seconds, converted to frames at defaults.fps; give frames or duration, not both."""
    seed: Seed | None = None
    """The shot's seed (default: derived from defaults.seed and the shot's id)."""
    tau: Tau | None = None
    """The shot's structure guidance τ (default: defaults.tau)."""
    eta: Eta | None = None
    """The shot's DDIM eta, 0-1 (default: defaults.eta)."""
    depth_range: DepthRange | None = None
    """The shot's depth normalisation, "sequence" or "frame" (default: defaults.depth_range)."""
    footage_fit: FootageFit | None = None
    """How the shot's footage fills its duration: "extend", "stretch" or "pingpong" (default:
    defaults.footage_fit)."""
    max_speed_change: SpeedChange | None = None
    """How much faster or slower than real the shot's footage may play, 1-8 (default: defaults.max_speed_change)."""
    clip: ClipOverride | None = None
    """A clip that gives the shot its motion instead of retrieval."""
    consistency: Consistency | None = None
    """The shot's consistent self-attention, replacing the defaults' ({"mode": "off"} turns it off)."""
    keyframe: bool | None = None
    """Animate the shot from its keyframe: out/keyframes/<id>.png (made first when missing; edit it to change the
    shot), or keyframe_image (default: defaults.keyframe)."""
    keyframe_image: Text | None = None
    """A picture to animate the shot from, relative to the storyboard's folder (implies keyframe)."""
    transition: Transition | None = None
    """How this shot goes into the next one (default: defaults.transition); ignored on the last shot."""
    transition_seconds: TransitionSeconds | None = None
    """The length of this shot's transition into the next, in seconds (default: defaults.transition_seconds)."""

    @model_validator(mode="after")
    def _frames_or_duration(self) -> "Shot":
        if self.frames is not None and self.duration is not None:
            raise problems_error([(("duration",), f"give frames or duration, not both "
                                                  f"(frames is {self.frames}, duration {self.duration:g} s)")])
        return self


class Storyboard(_Model):
    """A storyboard: the story's shots, its characters and the render settings they share."""

    format_version: int = FORMAT_VERSION
    """Version of the storyboard format; this storyreel reads version 1."""
    title: Text
    """The story's title."""
    style: str = ""
    """The visual style of the whole story (for example "watercolour storybook illustration")."""
    analysis: str | None = None
    """The planner's reasoning for the whole story; not used by the render."""
    defaults: Defaults = Field(default_factory=Defaults)
    """Settings of every shot that does not set its own."""
    characters: dict[CharacterName, Character] = Field(default_factory=dict,
                                                       json_schema_extra={"propertyNames": {"pattern": NAME_PATTERN}})
    """The story's characters by name."""
    shots: list[Shot] = Field(min_length=1)
    """The shots, in story order."""

    _source: Path | None = PrivateAttr(default=None)
    _base_dir: Path | None = PrivateAttr(default=None)

    @field_validator("format_version")
    @classmethod
    def _known_version(cls, version: int) -> int:
        if version != FORMAT_VERSION:
            raise custom_error("format_version", f"this storyreel reads storyboard format version "
                                                 f"{FORMAT_VERSION}, got {describe(version)}")
        return version

    @model_validator(mode="after")
    def _consistent(self) -> "Storyboard":
        problems = self._cross_field_problems()
        if problems:
            raise problems_error(problems)
        return self

    def _cross_field_problems(self) -> list[tuple[tuple, str]]:
        problems: list[tuple[tuple, str]] = []
        token_owner: dict[str, str] = {}
        for name, character in self.characters.items():
            if character.token in token_owner:
                problems.append((("characters", name, "token"),
                                 f"token {character.token!r} is also the token of {token_owner[character.token]!r}"))
            token_owner.setdefault(character.token, name)
        first_index: dict[str, int] = {}
        for i, shot in enumerate(self.shots):
            if shot.id in first_index:
                problems.append((("shots", i, "id"),
                                 f"duplicate shot id {shot.id!r} (also shots[{first_index[shot.id]}].id)"))
            first_index.setdefault(shot.id, i)
            seen: set[str] = set()
            for j, name in enumerate(shot.characters):
                if name not in self.characters:
                    known = ", ".join(sorted(self.characters)) or "none"
                    problems.append((("shots", i, "characters", j),
                                     f"unknown character {name!r} (the storyboard's characters: {known})"))
                elif name in seen:
                    problems.append((("shots", i, "characters", j), f"character {name!r} is listed twice"))
                seen.add(name)
            for token in _TOKEN_IN_TEXT.findall(shot.caption or ""):
                if token not in token_owner:
                    problems.append((("shots", i, "caption"), f"{token} is not the token of any character"))
            problems.extend(self._unlisted_character_tokens(i, token_owner))
            if shot.duration is not None:
                frames = frames_for_duration(shot.duration, self.defaults.fps)
                if frames > MAX_FRAMES:
                    problems.append((("shots", i, "duration"),
                                     f"{shot.duration:g} s at {self.defaults.fps:g} fps is {frames} frames; "
                                     f"a shot has at most {MAX_FRAMES}"))
        return problems

    def _unlisted_character_tokens(self, index: int, token_owner: Mapping[str, str]) -> list[tuple[tuple, str]]:
        """Problems for every text the render encodes for shot ``index`` (its caption, or its text where it has
        no caption; its negative prompt, or the defaults'; the story's style) that holds the token of a
        character the shot does not list: the render would read that character's TimeInv rows with its LoRA
        off, and the shot's settings hash would not cover the character's file."""
        shot = self.shots[index]
        prompt_field = "caption" if shot.caption is not None else "text"
        negative_loc = (("shots", index, "negative_prompt") if shot.negative_prompt is not None
                        else ("defaults", "negative_prompt"))
        negative = shot.negative_prompt if shot.negative_prompt is not None else self.defaults.negative_prompt
        texts = [(("shots", index, prompt_field), getattr(shot, prompt_field), ""),
                 (negative_loc, negative, "" if shot.negative_prompt is not None else " (its negative prompt)"),
                 (("style",), self.style, " (the style is part of every shot's prompt)")]
        problems: list[tuple[tuple, str]] = []
        for loc, text, why in texts:
            for token in dict.fromkeys(_TOKEN_IN_TEXT.findall(text or "")):
                owner = token_owner.get(token)
                if owner is not None and owner not in shot.characters:
                    problems.append((loc, f"uses {token}, the token of {owner!r}, who is not in "
                                          f"shots[{index}].characters{why}"))
        return problems

    # -- where the storyboard came from, and its paths ------------------------------------------------

    @property
    def source(self) -> Path | None:
        """The file the storyboard was loaded from (None when it was built in memory)."""
        return self._source

    @property
    def base_dir(self) -> Path | None:
        """The folder relative paths are relative to: the file's folder (None: the current directory)."""
        return self._base_dir

    def attach_source(self, source: str | Path | None, base_dir: str | Path | None = None) -> "Storyboard":
        """Record that the storyboard was read from ``source`` (named in errors) and that its relative
        paths start at ``base_dir`` (default: ``source``'s folder). Changes ``self`` and returns it."""
        self._source = Path(source) if source is not None else None
        if base_dir is None and source is not None:
            base_dir = Path(source).parent
        self._base_dir = Path(os.path.abspath(base_dir)) if base_dir is not None else None
        return self

    def resolve_path(self, path: str | Path) -> Path:
        """An absolute path for a path written in the storyboard (``~`` expanded, absolute kept)."""
        path = Path(path).expanduser()
        if path.is_absolute():
            return path
        return Path(os.path.abspath((self._base_dir or Path.cwd()) / path))

    def referenced_files(self, shot: str | int | None = None) -> list[tuple[str, Path]]:
        """``(JSON path, resolved path)`` of every file the storyboard (or one shot) uses."""
        files: list[tuple[str, Path]] = []
        if shot is None:
            names = list(self.characters)
            shots = list(enumerate(self.shots))
        else:
            index = self.shot_index(shot)
            names = self.shots[index].characters
            shots = [(index, self.shots[index])]
        for name in names:
            if self.characters[name].embedding is not None:
                files.append((json_path(("characters", name, "embedding")),
                              self.resolve_path(self.characters[name].embedding)))
            images = self.characters[name].reference_images
            if isinstance(images, list):
                files.extend((json_path(("characters", name, "reference_images", i)), self.resolve_path(image))
                             for i, image in enumerate(images))
            elif images is not None:  # a folder (missing_files says when it holds no pictures), or one file
                files.extend((json_path(("characters", name, "reference_images")), path)
                             for path in self.reference_pictures(name))
        for i, item in shots:
            if item.clip is not None:
                files.append((json_path(("shots", i, "clip", "path")), self.resolve_path(item.clip.path)))
            if item.keyframe_image is not None:
                files.append((json_path(("shots", i, "keyframe_image")), self.resolve_path(item.keyframe_image)))
        return files

    def missing_files(self, shot: str | int | None = None) -> list[Problem]:
        """A problem for every referenced file that does not exist, naming its JSON path and resolved path (and
        for a reference_images folder without pictures)."""
        problems = []
        names = list(self.characters) if shot is None else self.shots[self.shot_index(shot)].characters
        for name in names:
            images = self.characters[name].reference_images
            if isinstance(images, str) and self.resolve_path(images).is_dir() and not self.reference_pictures(name):
                problems.append(Problem(json_path(("characters", name, "reference_images")),
                                        f"no {', '.join(IMAGE_SUFFIXES)} pictures in {self.resolve_path(images)}"))
        for path_in_json, path in self.referenced_files(shot):
            if not path.is_file():
                reason = "is a folder, not a file" if path.is_dir() else "file not found"
                problems.append(Problem(path_in_json, f"{reason}: {path}"))
            elif path_in_json.endswith("keyframe_image") and not _is_picture(path):
                problems.append(Problem(path_in_json, f"not a picture that can be read: {path}"))
        return problems

    # -- shots ----------------------------------------------------------------------------------------

    def shot_index(self, shot: str | int) -> int:
        """The position of a shot given by id or position; ``KeyError`` for an unknown one."""
        if isinstance(shot, int) and not isinstance(shot, bool):
            if -len(self.shots) <= shot < len(self.shots):
                return shot % len(self.shots)
            raise KeyError(f"no shot {shot}: the storyboard has {len(self.shots)} shots")
        for i, item in enumerate(self.shots):
            if item.id == shot:
                return i
        raise KeyError(f"no shot with id {shot!r}; the shots are {', '.join(s.id for s in self.shots)}")

    def shot(self, shot: str | int) -> Shot:
        """A shot given by id or position."""
        return self.shots[self.shot_index(shot)]

    def safe_ids(self) -> dict[str, str]:
        """Each shot's id → a distinct name of ``[A-Za-z0-9_-]`` for its files (see :mod:`storyboard.shot_ids`)."""
        return dict(zip((s.id for s in self.shots), unique_safe_ids(s.id for s in self.shots)))

    def safe_id(self, shot: str | int) -> str:
        """The file-safe name of one shot."""
        return self.safe_ids()[self.shot(shot).id]

    def shot_frames(self, shot: str | int) -> int:
        """The shot's frame count: its frames, or its duration at ``defaults.fps``, or ``defaults.frames``."""
        item = self.shot(shot)
        if item.frames is not None:
            return item.frames
        if item.duration is not None:
            return frames_for_duration(item.duration, self.defaults.fps)
        return self.defaults.frames

    def shot_seed(self, shot: str | int) -> int:
        """The shot's seed, or one derived from ``defaults.seed`` and its id (:func:`derive_seed`)."""
        item = self.shot(shot)
        return item.seed if item.seed is not None else derive_seed(self.defaults.seed, item.id)

    def character(self, name: str) -> ResolvedCharacter:
        """A character with its embedding path and reference pictures resolved."""
        character = self.characters[name]
        embedding = self.resolve_path(character.embedding) if character.embedding is not None else None
        return ResolvedCharacter(name, character.token, character.class_word, embedding, character.scale,
                                 reference_images=self.reference_pictures(name),
                                 ip_adapter_scale=character.ip_adapter_scale)

    def reference_pictures(self, name: str) -> tuple[Path, ...]:
        """The character's reference pictures: the listed files, or a folder's image files (sorted by name)."""
        images = self.characters[name].reference_images
        if images is None:
            return ()
        if isinstance(images, list):
            return tuple(self.resolve_path(image) for image in images)
        folder = self.resolve_path(images)
        if not folder.is_dir():
            return (folder,)  # one file given as a string (or a missing folder: missing_files names it)
        return tuple(sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()))

    def setting_sources(self, shot: str | int,
                        model_defaults: Mapping | ModelDefaults | None = None) -> dict[str, str]:
        """Where each of the shot's settings (:data:`SOURCED_SETTINGS`) comes from: ``shot`` (its own field),
        ``storyboard`` (the defaults, set in the file), ``preset`` (``model_defaults``) or ``default`` (the
        format's own default)."""
        model = ModelDefaults.from_mapping(model_defaults)
        item = self.shot(shot)
        own = {"frames": item.frames is not None or item.duration is not None, "tau": item.tau is not None,
               "seed": item.seed is not None, "negative_prompt": item.negative_prompt is not None,
               "eta": item.eta is not None, "depth_range": item.depth_range is not None,
               "footage_fit": item.footage_fit is not None, "max_speed_change": item.max_speed_change is not None}
        return {key: FROM_SHOT if own.get(key) else self._default_source(key, model) for key in SOURCED_SETTINGS}

    def _default_source(self, key: str, model: ModelDefaults) -> str:
        if key in self.defaults.model_fields_set:
            return FROM_STORYBOARD
        if key in MODEL_DEFAULT_KEYS and getattr(model, key) is not None:
            return FROM_PRESET
        return FROM_DEFAULT

    def shot_settings(self, shot: str | int, model_defaults: Mapping | ModelDefaults | None = None) -> ShotSettings:
        """Everything the render needs for one shot (given by id or position), defaults merged in.

        ``model_defaults`` (``{"steps", "guidance", "scheduler"}``, any subset: the model preset's
        :meth:`~storyreel.models.presets.ModelPreset.shot_defaults`) replace the format's defaults of the
        values the storyboard does not set; without them every value is the storyboard's or the format's,
        as before. :class:`ModelDefaultsError` for a value the format does not allow."""
        model = ModelDefaults.from_mapping(model_defaults)
        index = self.shot_index(shot)
        item, defaults = self.shots[index], self.defaults
        sources = self.setting_sources(index, model)
        chosen = {key: getattr(model, key) if sources[key] == FROM_PRESET else getattr(defaults, key)
                  for key in MODEL_DEFAULT_KEYS}
        clip = None
        if item.clip is not None:
            clip = ResolvedClip(self.resolve_path(item.clip.path), item.clip.start, item.clip.end)
        return ShotSettings(
            index=index,
            id=item.id,
            safe_id=self.safe_id(index),
            text=item.text,
            prompt=item.caption if item.caption is not None else item.text,
            motion_query=item.motion_query if item.motion_query is not None else item.text,
            negative_prompt=item.negative_prompt if item.negative_prompt is not None else defaults.negative_prompt,
            style=self.style,
            width=defaults.width,
            height=defaults.height,
            frames=self.shot_frames(index),
            fps=defaults.fps,
            steps=chosen["steps"],
            guidance=chosen["guidance"],
            tau=item.tau if item.tau is not None else defaults.tau,
            seed=self.shot_seed(index),
            scheduler=chosen["scheduler"],
            characters=tuple(self.character(name) for name in item.characters),
            clip=clip,
            eta=item.eta if item.eta is not None else defaults.eta,
            depth_range=item.depth_range if item.depth_range is not None else defaults.depth_range,
            footage_fit=item.footage_fit if item.footage_fit is not None else defaults.footage_fit,
            max_speed_change=(item.max_speed_change if item.max_speed_change is not None
                              else defaults.max_speed_change),
            consistency=_resolved_consistency(item.consistency if item.consistency is not None
                                              else defaults.consistency),
            keyframe=(item.keyframe_image is not None
                      or (item.keyframe if item.keyframe is not None else defaults.keyframe)),
            keyframe_image=self.resolve_path(item.keyframe_image) if item.keyframe_image is not None else None,
            transition=item.transition if item.transition is not None else defaults.transition,
            transition_seconds=(item.transition_seconds if item.transition_seconds is not None
                                else defaults.transition_seconds),
            sources=sources,
        )

    def all_shot_settings(self, model_defaults: Mapping | ModelDefaults | None = None) -> list[ShotSettings]:
        """:meth:`shot_settings` of every shot, in story order (``model_defaults``: the model preset's, such
        as ``{"steps": 4, "guidance": 1.0, "scheduler": "euler"}``)."""
        model = ModelDefaults.from_mapping(model_defaults)
        return [self.shot_settings(i, model) for i in range(len(self.shots))]

    def settings_hash(self, shot: str | int, extra: Mapping | None = None,
                      model_defaults: Mapping | ModelDefaults | None = None) -> str:
        """A stable SHA-256 (hex) of everything that determines the shot's output
        (:mod:`storyboard.fingerprint`); ``extra`` adds what the caller knows (index, models, code version);
        ``model_defaults`` as in :meth:`shot_settings` (give the same ones). The hash covers the resolved
        values, not where they came from: without model defaults, or with defaults equal to the format's,
        it is what it always was. Raises :class:`StoryboardError` when a file the shot uses is missing."""
        missing = self.missing_files(shot)
        if missing:
            raise StoryboardError(missing, self._source)
        return shot_hash(self.shot_settings(shot, model_defaults), extra)


def _resolved_consistency(consistency: Consistency | None) -> ShotConsistency | None:
    if consistency is None or consistency.mode == "off":
        return None
    return ShotConsistency(rate=consistency.rate, until=consistency.until, reference=consistency.reference,
                           bank_frames=consistency.bank_frames, budget_mb=consistency.budget_mb)


def storyboard_json_schema() -> dict:
    """The JSON Schema of a storyboard file (what ``render-story --schema`` prints)."""
    schema = copy.deepcopy(Storyboard.model_json_schema())
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        **schema,
        "title": f"storyreel storyboard (format version {FORMAT_VERSION})",
        "description": (
            "A story for storyreel's render-story: shots whose motion is retrieved from real footage (or "
            "given as a clip), characters kept consistent by trained TimeInv + LoRA files, and the render "
            "settings shots share. Relative paths are relative to the storyboard file's folder; unknown "
            "fields are errors."
        ),
    }


def _is_picture(path: Path) -> bool:
    """Whether ``path`` is an image PIL can read (checked before any model loads: an empty or broken keyframe
    picture is bad input, not a failed render)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.verify()
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError):
        return False
    return True
