"""One model specification: which render models and depth model a command uses, checked before anything loads.

:class:`ModelSpecification` holds what a user asked for: a preset (``--models``), a TOML model config
(``--model-config``), the common swaps ``base``, ``motion_adapter``, ``controlnet``, ``vae`` and
``depth_model`` (``--base``, ...), a UNet ``lora`` with its ``lora_scale``, and any further ``[components]``
value in ``components``. :meth:`ModelSpecification.resolve` says where every component comes from
(:class:`ResolvedModels`); :meth:`ModelSpecification.validate` also checks local weights against the
preset's architecture. Neither loads a model: they read the TOML file, look at folders and read
safetensors headers (:mod:`storyreel.models.single_file`). Bad input raises :class:`ModelConfigError`
naming the value and where it came from: the flag (``--base: ...``) or the file and key
(``models.toml: [components] base: ...``).

The first of these that sets a value wins: the field (a flag), ``components``, the TOML file, the preset. A
TOML model config::

    preset = "sd15-lcm"      # optional: the preset the components are for (--models may not say otherwise)

    [components]
    base = "stable-diffusion-v1-5/stable-diffusion-v1-5"   # SD1.5 layout: tokenizer/, text_encoder/, vae/, unet/
    motion_adapter = "ByteDance/AnimateDiff-Lightning/animatediff_lightning_4step_diffusers.safetensors"
    controlnet = "models/control_v11f1p_sd15_depth"       # a local folder (relative to this file)
    vae = "stabilityai/sd-vae-ft-mse"                       # also: tokenizer, text_encoder, unet
    lora = "wangfuyun/AnimateLCM/AnimateLCM_sd15_t2v_lora.safetensors"
    lora_scale = 0.8
    depth_model = "Intel/dpt-hybrid-midas"                  # as extract-depth --models takes
    sparsectrl = "guoyww/animatediff-sparsectrl-rgb"        # keyframe shots and generated transitions
    i2vgen = "models/i2vgen-xl"                             # render-story --animator i2vgen-xl
    ip_adapter = "models/IP-Adapter"                        # characters with reference_images (or "hub")

A value is a local path when it starts with ``/``, ``.`` or ``~`` or names something that exists (relative
paths in a TOML file are relative to the file), otherwise a hub id ``org/name`` with an optional
``/subfolder`` and ``@revision``. ``base`` is a diffusers SD1.5 folder or repository, or one SD1.5
checkpoint in the original layout (``file.safetensors``, local or ``org/name/file.safetensors`` on the
hub; its tokenizer is the built-in CLIP tokenizer). ``motion_adapter`` may also be one ``.safetensors``
file (how AnimateDiff-Lightning ships); ``lora`` is always one (a diffusers- or kohya-format UNet LoRA,
fused into the UNet when it loads). Pickle checkpoints (``.ckpt``, ``.bin``, ``.pt``, ...) are refused.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from storyreel.errors import StoryreelError
from storyreel.models import presets, single_file
from storyreel.weights_policy import PICKLE_REFUSAL, is_pickle_checkpoint

COMPONENT_KEYS = ("base", "tokenizer", "text_encoder", "vae", "unet", "motion_adapter", "controlnet")
BASE_PARTS = ("tokenizer", "text_encoder", "vae", "unet")
RENDER_PARTS = (*BASE_PARTS, "motion_adapter", "controlnet")
EXTRA_KEYS = ("sparsectrl", "i2vgen", "ip_adapter")  # the models some stories add: keyframe animation, identity
SETTING_KEYS = ("lora", "lora_scale", "depth_model", *EXTRA_KEYS)
TOML_KEYS = (*COMPONENT_KEYS, *SETTING_KEYS)
SINGLE_FILE_KEYS = ("base", "motion_adapter", "lora")  # the keys that take one .safetensors file
WEIGHTS_SUFFIX = ".safetensors"
# The flags of storyreel.models.model_options, by field.
OPTION_FLAGS = {"preset": "--models", "config_file": "--model-config", "base": "--base",
                "motion_adapter": "--motion-adapter", "controlnet": "--controlnet", "vae": "--vae",
                "depth_model": "--depth-model", "sparsectrl": "--sparsectrl", "i2vgen": "--i2vgen",
                "ip_adapter": "--ip-adapter"}
# architecture (ModelPreset.architecture) → (name in messages, "is not ..." phrase)
ARCHITECTURE_NAMES = {"sd15": ("SD1.5", "an SD1.5"), "tiny": ("the tiny preset", "a tiny-preset"),
                      "toy": ("the toy preset", "a toy-preset")}
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(/[\w.-]+)*$")


class ModelConfigError(StoryreelError, ValueError):
    """A bad model specification value; ``path`` (the TOML file, if any) and ``field`` (its key, or the flag
    such as ``--base``) say where it came from."""

    def __init__(self, path: Path | str | None, field: str | None, detail: str, in_table: bool | None = None):
        super().__init__(path, field, detail)
        self.path = path
        self.field = field
        self.detail = detail
        self.in_table = field in TOML_KEYS if in_table is None else in_table  # a key of the [components] table

    @property
    def flag(self) -> str | None:
        """The command-line flag the value came from (``--base``), or None."""
        return self.field if self.field and self.field.startswith("-") else None

    def __str__(self) -> str:
        where = [str(self.path)] if self.path else []
        if self.field:
            where.append(f"[components] {self.field}" if self.in_table else self.field)
        return f"{': '.join(where)}: {self.detail}" if where else self.detail


@dataclass(frozen=True)
class ValueOrigin:
    """Where a value came from: a flag, or a key (of the TOML file ``path``, or given in code)."""

    key: str
    path: Path | None = None
    flag: str | None = None

    def error(self, detail: str) -> ModelConfigError:
        return ModelConfigError(None if self.flag else self.path, self.flag or self.key, detail)


@dataclass(frozen=True)
class ComponentSource:
    """Where one component comes from.

    ``kind``: ``hub`` (a diffusers repository, ``subfolder`` in it), ``local`` (a folder), ``file`` (one local
    ``.safetensors`` file), ``hub_file`` (``filename`` in the repository ``location``), ``tiny`` / ``random``
    (built in code by the preset ``location``), ``toy`` (the toy preset's trained folder ``location``, checked
    against the toy weights' manifest) or ``builtin`` (the CLIP tokenizer built in code).
    """

    kind: str
    location: str
    subfolder: str | None = None
    revision: str | None = None
    key: str | None = None  # the [components] key that chose it (None: the preset)
    filename: str | None = None

    @property
    def is_single_file(self) -> bool:
        return self.kind in ("file", "hub_file")

    def describe(self) -> str:
        if self.kind in ("tiny", "random"):
            return f"the {self.location} preset"
        if self.kind == "builtin":
            return "the built-in CLIP tokenizer"
        if self.kind == "toy":
            return f"the toy preset's trained weights '{self.location}'"
        if self.kind == "file":
            return f"the file '{self.location}'"
        where = f"'{self.location}'" + (f" (file '{self.filename}')" if self.filename else "")
        where += f" (subfolder '{self.subfolder}')" if self.subfolder else ""
        return where + (f" at revision {self.revision}" if self.revision else "")

    def as_record(self) -> dict:
        on_hub = self.kind in ("hub", "hub_file")
        record = {"kind": self.kind, "source": self.location, "subfolder": self.subfolder,
                  "revision": (self.revision or "main") if on_hub else self.revision}
        if self.filename is not None:
            record["file"] = self.filename
        return record


# -- one value ------------------------------------------------------------------------------------------
def _looks_local(text: str) -> bool:
    return text.startswith(("/", ".", "~")) or (os.sep != "/" and os.sep in text)


def _local_candidate(text: str, path: Path | None) -> Path:
    candidate = Path(text).expanduser()
    return candidate if candidate.is_absolute() else (path.parent if path is not None else Path.cwd()) / candidate


def _what_it_takes(key: str) -> str:
    if key == "lora":
        return f"a {WEIGHTS_SUFFIX} file (local, or org/name/file{WEIGHTS_SUFFIX} on the hub)"
    if key in SINGLE_FILE_KEYS:
        return f"a hub id (org/name), a local folder or a {WEIGHTS_SUFFIX} file"
    return "a hub id (org/name) or a local folder"


def parse_source(value: Any, key: str, path: Path | None = None, flag: str | None = None) -> ComponentSource:
    """``value`` (str or Path) → :class:`ComponentSource`; relative paths resolve against ``path``'s folder.
    Errors name ``flag`` when given, else ``path`` and ``key``."""
    origin = ValueOrigin(key, path, flag)
    if isinstance(value, Path):
        text = str(value)
    elif isinstance(value, str):
        text = value.strip()
    else:
        raise origin.error(f"expected a string ({_what_it_takes(key)}), got {type(value).__name__}")
    if not text:
        raise origin.error(f"empty value; give {_what_it_takes(key)}")
    candidate = _local_candidate(text, path)
    single = key in SINGLE_FILE_KEYS
    if isinstance(value, Path) or _looks_local(text) or candidate.exists():
        if is_pickle_checkpoint(candidate):
            raise origin.error(f"refusing '{text}': {PICKLE_REFUSAL}; give "
                               + (f"a {WEIGHTS_SUFFIX} file" if key == "lora" else
                                  f"a {WEIGHTS_SUFFIX} file or a folder with .safetensors weights" if single else
                                  "a folder with .safetensors weights"))
        if candidate.is_file():
            if single and candidate.suffix.lower() == WEIGHTS_SUFFIX:
                return ComponentSource("file", str(candidate.resolve()), key=key)
            if single:
                raise origin.error(f"'{text}' is not a {WEIGHTS_SUFFIX} file; only safetensors are loaded")
            raise origin.error(f"'{text}' is a file; give the folder that holds its config.json and .safetensors "
                               "weights (the diffusers / transformers layout)")
        if candidate.suffix.lower() == WEIGHTS_SUFFIX and not candidate.exists():
            raise origin.error(f"no such file '{candidate}'")
        if not candidate.is_dir():
            raise origin.error(f"no such folder '{candidate}'")
        if key == "lora":
            raise origin.error(f"'{text}' is a folder; give the LoRA's {WEIGHTS_SUFFIX} file")
        return ComponentSource("local", str(candidate.resolve()), key=key)
    return _parse_hub_value(text, key, origin, candidate)


def _parse_hub_value(text: str, key: str, origin: ValueOrigin, candidate: Path) -> ComponentSource:
    repo, at, revision = text.partition("@")
    if not HUB_ID.match(repo) or (at and not revision):
        raise origin.error(f"'{text}' is neither an existing folder nor a hub id (org/name, org/name/subfolder, "
                           "optionally @revision" + (f", or org/name/file{WEIGHTS_SUFFIX}" if key in SINGLE_FILE_KEYS
                                                     else "") + ")")
    org, name, *rest = repo.split("/")
    last = rest[-1] if rest else name
    if is_pickle_checkpoint(last):
        raise origin.error(f"refusing '{text}': {PICKLE_REFUSAL}; only {WEIGHTS_SUFFIX} files are loaded")
    if last.lower().endswith(WEIGHTS_SUFFIX):
        if not rest:  # org/file.safetensors: a local file that is not there, not a repository
            raise origin.error(f"no such file '{candidate}' (a file on the hub is written org/name/file"
                               f"{WEIGHTS_SUFFIX})")
        if key not in SINGLE_FILE_KEYS:
            raise origin.error(f"'{text}' is one weights file; {key} takes {_what_it_takes(key)} (single files are "
                               f"taken for {', '.join(SINGLE_FILE_KEYS)})")
        return ComponentSource("hub_file", f"{org}/{name}", revision=revision or None, key=key, filename="/".join(rest))
    if key == "lora":
        raise origin.error(f"'{text}' names no {WEIGHTS_SUFFIX} file; give {_what_it_takes(key)}")
    return ComponentSource("hub", f"{org}/{name}", subfolder="/".join(rest) or None, revision=revision or None,
                           key=key)


def parse_depth_model(value: Any, path: Path | None = None, flag: str | None = None) -> str:
    """A depth model value: a local folder (resolved; relative to ``path``'s folder) or, as it is, a name or
    hub id for the structure stage (``dpt-hybrid``, ``Intel/dpt-large``)."""
    origin = ValueOrigin("depth_model", path, flag)
    if not isinstance(value, (str, Path)) or not str(value).strip():
        raise origin.error("expected a depth model: a name (dpt-hybrid, tiny, ...), a hub id or a local folder")
    text = str(value).strip()
    candidate = _local_candidate(text, path)
    if is_pickle_checkpoint(candidate):
        raise origin.error(f"refusing '{text}': {PICKLE_REFUSAL}; give a folder with .safetensors weights")
    if isinstance(value, Path) or _looks_local(text) or candidate.exists():
        if candidate.is_file():
            raise origin.error(f"'{text}' is a file; give the depth model's folder (config.json, "
                               "preprocessor_config.json, .safetensors weights)")
        if not candidate.is_dir():
            raise origin.error(f"no such folder '{candidate}'")
        return str(candidate.resolve())
    return text


def parse_extra_model(value: Any, key: str, path: Path | None = None) -> str:
    """A ``sparsectrl``, ``i2vgen`` or ``ip_adapter`` value: ``tiny``, ``toy``, ``hub`` (the IP-Adapter's hub
    repository) or a hub id as it is, or a local folder or ``.safetensors`` file (resolved; relative to ``path``'s
    folder); a pickle file is refused."""
    origin = ValueOrigin(key, path)
    if not isinstance(value, (str, Path)) or not str(value).strip():
        raise origin.error("expected a hub id (org/name), a local folder or file, or tiny")
    text = str(value).strip()
    candidate = _local_candidate(text, path)
    if is_pickle_checkpoint(candidate):
        raise origin.error(f"refusing '{text}': {PICKLE_REFUSAL}; give a folder or file with .safetensors weights")
    if text in ("tiny", "toy", "hub"):
        return text
    if isinstance(value, Path) or _looks_local(text) or candidate.exists():
        if not candidate.exists():
            raise origin.error(f"no such file or folder '{candidate}'")
        return str(candidate.resolve())
    if not HUB_ID.match(text):
        raise origin.error(f"'{text}' is neither a hub id (org/name) nor an existing local folder or file")
    return text


def parse_lora_scale(value: Any, origin: ValueOrigin) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise origin.error(f"expected a number (the LoRA's weight, such as 0.8), got {value!r}")
    return float(value)


# -- the TOML file --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelConfigFile:
    """A TOML model config as read: its ``path``, the optional ``preset`` it is for, its ``[components]``."""

    path: Path
    preset: str | None
    components: dict


def _unknown_key(path: Path | None, key: str) -> ModelConfigError:
    guess = difflib.get_close_matches(key, TOML_KEYS, n=1)
    return ModelConfigError(path, key, f"unknown component '{key}'; expected one of {', '.join(TOML_KEYS)}"
                                       + (f" (did you mean '{guess[0]}'?)" if guess else ""), in_table=True)


def read_model_config(path: Path | str) -> ModelConfigFile:
    """Read and check a TOML model config: its keys (a typo is named, with the key it may mean), its preset."""
    path = Path(path).expanduser()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelConfigError(path, None, "no such model config file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelConfigError(path, None, f"cannot read the model config file: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ModelConfigError(path, None, f"not valid TOML: {exc}") from None
    for key in data:
        if key not in ("components", "preset"):
            raise ModelConfigError(path, key, "unknown key; a model config file holds a [components] table "
                                              "(and optionally preset = \"NAME\" before it)")
    preset = data.get("preset")
    if preset is not None and preset not in presets.PRESETS:
        raise ModelConfigError(path, "preset", f"unknown preset {preset!r}; use one of "
                                               f"{', '.join(presets.PRESET_NAMES)}")
    table = data.get("components", {})
    if not isinstance(table, dict):
        raise ModelConfigError(path, "components", "expected a [components] table")
    for key in table:
        if key not in TOML_KEYS:
            raise _unknown_key(path, key)
    return ModelConfigFile(path, preset, dict(table))


def read_config_file(path: Path | str) -> dict[str, ComponentSource]:
    """The components of a TOML model config's ``[components]`` table (its settings are checked, not returned)."""
    config = read_model_config(path)
    return {key: parse_source(value, key, config.path) for key, value in config.components.items()
            if key in COMPONENT_KEYS}


# -- the preset's components ----------------------------------------------------------------------------
def base_sources(base: ComponentSource) -> dict[str, ComponentSource]:
    """The four SD1.5 parts a ``base`` value gives: subfolders of a folder or repository, or one checkpoint
    file (the text encoder, VAE and UNet; the tokenizer is built in)."""
    if base.is_single_file:
        return {"tokenizer": ComponentSource("builtin", "clip", key=base.key),
                **{part: base for part in single_file.SD_CHECKPOINT_PARTS}}
    return {part: ComponentSource(base.kind, base.location, subfolder=f"{base.subfolder}/{part}" if base.subfolder
                                  else part, revision=base.revision, key=base.key) for part in BASE_PARTS}


def _preset_hub_source(value: str) -> ComponentSource:
    hub_file = presets.parse_hub_file(value)
    if hub_file is not None:
        return ComponentSource("hub_file", hub_file.repo_id, filename=hub_file.filename)
    return ComponentSource("hub", value)


def preset_sources(preset: presets.ModelPreset) -> dict[str, ComponentSource]:
    """Where each of the six components of ``preset`` comes from when nothing replaces it."""
    if preset.render == "toy":  # trained on the toy world, in the repository (storyreel.models.toy_weights)
        from storyreel.models.toy_weights import RENDER_FOLDER, TOY_WEIGHTS_DIR

        return {name: ComponentSource("builtin", "clip") if name == "tokenizer" else
                ComponentSource("toy", str(TOY_WEIGHTS_DIR / RENDER_FOLDER / name)) for name in RENDER_PARTS}
    if preset.render != "hub":  # "tiny" or "random": built in code with seeded weights
        return {name: ComponentSource(preset.render, preset.name) for name in RENDER_PARTS}
    base = _preset_hub_source(preset.base)
    sources = base_sources(ComponentSource(base.kind, base.location, filename=base.filename))
    sources["motion_adapter"] = _preset_hub_source(preset.motion_adapter)
    sources["controlnet"] = _preset_hub_source(preset.controlnet)
    return sources


# -- resolved -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ResolvedModels:
    """What a :class:`ModelSpecification` means: the preset, where each of the six render components comes
    from, the UNet LoRA (None: none) and its scale, the depth model, and where each chosen value came from."""

    preset: str
    sources: dict[str, ComponentSource]
    lora: ComponentSource | None = None
    lora_scale: float = 1.0
    depth_model: str = ""
    config_file: Path | None = None
    base: ComponentSource | None = None  # the base value that replaced the preset's (None: the preset's)
    origins: dict[str, ValueOrigin] = field(default_factory=dict)
    extras: dict[str, str] = field(default_factory=dict)  # sparsectrl, i2vgen, ip_adapter from a TOML model config

    def error(self, key: str, detail: str) -> ModelConfigError:
        """A :class:`ModelConfigError` naming where the value of ``key`` came from (flag, file and key, preset)."""
        origin = self.origins.get(key)
        if origin is None:
            return ModelConfigError(None, key, f"preset '{self.preset}': {detail}")
        return origin.error(detail)

    def record(self) -> dict:
        """What a report stores: the preset, each component's source, the LoRA, the depth model."""
        return {"preset": self.preset, "config_file": str(self.config_file) if self.config_file else None,
                "components": {name: self.sources[name].as_record() for name in RENDER_PARTS},
                "lora": {**self.lora.as_record(), "scale": self.lora_scale} if self.lora else None,
                "depth_model": self.depth_model, **({"extras": dict(self.extras)} if self.extras else {})}


def architecture_configs(preset: str) -> tuple[dict | None, str, str]:
    """``(configs, name, phrase)`` of a preset's architecture: the component configuration dicts of
    :mod:`storyreel.models.architectures` (None for an architecture it does not describe), its name in
    messages (``SD1.5``) and the phrase of an ``is not ...`` message (``an SD1.5``)."""
    from storyreel.models import architectures  # imports torch: only when local weights are checked

    architecture = presets.PRESETS[preset].architecture
    configs = {"sd15": architectures.SD15_RANDOM_CONFIGS, "tiny": architectures.TINY_CONFIGS,
               "toy": architectures.TOY_CONFIGS}.get(architecture)
    name, phrase = ARCHITECTURE_NAMES.get(architecture, (architecture, f"a {architecture}"))
    return configs, name, phrase


def _weights_problem(key: str, source: ComponentSource, resolved: ResolvedModels, configs: dict | None, name: str,
                     phrase: str) -> str | None:
    """Why the local weights of ``key`` do not fit the preset's architecture (a sentence naming the value), or
    None."""
    if source.kind == "local":  # a base folder in the diffusers layout
        problem = configs and single_file.folder_problem(Path(source.location), configs, name)
        return f"'{source.location}' is not {phrase} model: {problem}" if problem else None
    try:
        shapes = single_file.tensor_shapes(source.location)
    except single_file.UnreadableWeightsFile as exc:
        return str(exc)
    if key == "lora":
        problem, what = single_file.lora_problem(shapes), "a UNet LoRA"
    elif configs is None:  # an architecture the configs do not describe: nothing to compare with
        return None
    elif key == "base":
        parts = [part for part in single_file.SD_CHECKPOINT_PARTS if resolved.sources[part] == source]
        problem, what = single_file.sd_checkpoint_problem(shapes, configs, parts, name), f"{phrase} checkpoint"
    else:
        problem = single_file.motion_adapter_problem(shapes, configs["unet"], name)
        what = f"a motion adapter for {name}"
    return f"'{source.location}' is not {what}: {problem}" if problem else None


@dataclass
class ModelSpecification:
    """The render models and depth model a command uses (see the module docstring).

    ``preset`` None means the TOML file's ``preset``, else :data:`~storyreel.models.presets.DEFAULT_PRESET`.
    ``components`` holds further ``[components]`` values given in code (``tokenizer``, ``unet``, ...; errors
    name them by key); the named fields are the command-line swaps (errors name their flags).
    """

    preset: str | None = None
    config_file: Path | str | None = None
    base: str | Path | None = None
    motion_adapter: str | Path | None = None
    controlnet: str | Path | None = None
    vae: str | Path | None = None
    depth_model: str | Path | None = None
    lora: str | Path | None = None
    lora_scale: float | None = None
    components: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_overrides(cls, preset: str | None, overrides: dict | None = None,
                       config_file: Path | str | None = None) -> ModelSpecification:
        """The specification of ``load_render_components(preset, overrides, config_file)``: every override is a
        ``[components]`` value given in code (named by its key in errors)."""
        return cls(preset=preset, config_file=config_file,
                   components={k: v for k, v in (overrides or {}).items() if v is not None})

    def _preset(self, config: ModelConfigFile | None) -> str:
        if self.preset is not None and self.preset not in presets.PRESETS:
            raise ModelConfigError(None, OPTION_FLAGS["preset"], f"unknown preset {self.preset!r}; use one of "
                                                                 f"{', '.join(presets.PRESET_NAMES)}")
        if config is not None and config.preset is not None and self.preset not in (None, config.preset):
            raise ModelConfigError(config.path, "preset", f"the components are for preset '{config.preset}', not "
                                                          f"'{self.preset}' ({OPTION_FLAGS['preset']}); drop "
                                                          f"{OPTION_FLAGS['preset']} or give {config.preset}")
        return self.preset or (config.preset if config is not None else None) or presets.DEFAULT_PRESET

    def resolve(self) -> ResolvedModels:
        """Where every component comes from (reads the TOML file; checks names, paths, pickle files and hub
        ids; loads nothing and reads no weights). Raises :class:`ModelConfigError`."""
        config = read_model_config(self.config_file) if self.config_file is not None else None
        preset_name = self._preset(config)
        preset = presets.PRESETS[preset_name]
        chosen: dict[str, ComponentSource] = {}
        settings: dict[str, Any] = {}
        origins: dict[str, ValueOrigin] = {}

        def assign(key: str, value: Any, origin: ValueOrigin) -> None:
            if key == "lora_scale":
                settings[key] = parse_lora_scale(value, origin)
            elif key == "depth_model":
                settings[key] = parse_depth_model(value, origin.path, origin.flag)
            elif key in EXTRA_KEYS:
                settings[key] = parse_extra_model(value, key, origin.path)
            else:
                chosen[key] = parse_source(value, key, origin.path, origin.flag)
            origins[key] = origin

        if config is not None:
            for key, value in config.components.items():
                assign(key, value, ValueOrigin(key, config.path))
        for key, value in self.components.items():
            if key not in TOML_KEYS:
                raise _unknown_key(None, key)
            if value is not None:
                assign(key, value, ValueOrigin(key))
        for key in ("base", "motion_adapter", "controlnet", "vae", "depth_model", "lora", "lora_scale"):
            value = getattr(self, key)
            if value is not None:
                assign(key, value, ValueOrigin(key, flag=OPTION_FLAGS.get(key)))

        sources = preset_sources(preset)
        if "base" in chosen:
            sources.update(base_sources(chosen["base"]))
        sources.update({name: source for name, source in chosen.items() if name in RENDER_PARTS})
        lora, lora_scale = chosen.get("lora"), settings.get("lora_scale")
        if lora is None and preset.lora is not None:
            lora = _preset_hub_source(preset.lora)
            lora_scale = preset.lora_scale if lora_scale is None else lora_scale
        if lora is None and lora_scale is not None:
            raise origins["lora_scale"].error(f"there is no LoRA to scale (preset '{preset_name}' has none; give lora "
                                              f"= \"FILE{WEIGHTS_SUFFIX}\")")
        return ResolvedModels(preset=preset_name, sources=sources, lora=lora,
                              lora_scale=1.0 if lora_scale is None else lora_scale,
                              depth_model=settings.get("depth_model") or preset.depth_model,
                              config_file=config.path if config is not None else None, base=chosen.get("base"),
                              origins=origins, extras={key: settings[key] for key in EXTRA_KEYS if key in settings})

    def validate(self) -> ResolvedModels:
        """:meth:`resolve`, then check local weights against the preset's architecture without loading them: a
        base folder's ``unet/config.json`` and ``text_encoder/config.json``, a base checkpoint's tensor names
        and shapes (an SD2.x, SDXL or inpainting file is refused), a single-file motion adapter's and a LoRA
        file's tensors. Raises :class:`ModelConfigError` naming the value and its flag or TOML key."""
        resolved = self.resolve()
        adapter = resolved.sources["motion_adapter"]
        checked = {key: source for key, source in (("base", resolved.base),
                                                   ("motion_adapter", adapter if adapter.key else None),
                                                   ("lora", resolved.lora if resolved.lora and resolved.lora.key
                                                    else None))
                   if source is not None and (source.kind == "file" or (key == "base" and source.kind == "local"))}
        if checked:
            architecture = architecture_configs(resolved.preset)
            for key, source in checked.items():
                problem = _weights_problem(key, source, resolved, *architecture)
                if problem:
                    raise resolved.error(key, problem)
        return resolved

    def preset_name(self) -> str:
        """The preset the specification uses (the field, else the TOML file's, else the default)."""
        config = read_model_config(self.config_file) if self.config_file is not None else None
        return self._preset(config)

    def depth_model_spec(self) -> str:
        """The depth model: ``depth_model``, else the TOML file's, else the preset's."""
        return self.resolve().depth_model

    def record(self) -> dict:
        """What a report stores: what was asked for (the non-empty fields) and what it resolved to."""
        asked = {key: str(value) if isinstance(value, Path) else value for key, value in (
            ("preset", self.preset), ("config_file", self.config_file), ("base", self.base),
            ("motion_adapter", self.motion_adapter), ("controlnet", self.controlnet), ("vae", self.vae),
            ("depth_model", self.depth_model), ("lora", self.lora), ("lora_scale", self.lora_scale))
            if value is not None}
        if self.components:
            asked["components"] = {key: str(value) for key, value in self.components.items()}
        return {"requested": asked, **self.resolve().record()}
