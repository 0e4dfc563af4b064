"""Loading the render's components: a preset, optionally with components replaced by hub ids or local folders.

``load_render_components(preset, overrides, config_file, device, dtype)`` gives a :class:`RenderComponents`:
tokenizer, text encoder, VAE, UNet with the motion modules (``UNetMotionModel``), depth ControlNet and
scheduler, plus :meth:`RenderComponents.record` (what a report stores about them).

Overrides come from a TOML file and/or a dict (the dict wins), with the keys of a ``[components]`` table::

    [components]
    base = "stable-diffusion-v1-5/stable-diffusion-v1-5"   # SD1.5 layout: tokenizer/, text_encoder/, vae/, unet/
    motion_adapter = "guoyww/animatediff-motion-adapter-v1-5-3"
    controlnet = "models/control_v11f1p_sd15_depth"       # a local folder (relative to this file)
    vae = "stabilityai/sd-vae-ft-mse"                       # optional: tokenizer, text_encoder, vae, unet

A value is a local folder when it starts with ``/``, ``.`` or ``~`` or names an existing folder (relative
paths in a TOML file are relative to the file); otherwise a hub id ``org/name``, optionally
``org/name/subfolder`` and ``@revision``. ``base`` fills the four SD1.5 components from their subfolders;
a per-component value points at that component's own folder (or at an SD1.5-layout folder or repository
holding it in the subfolder of its name). Only safetensors weights are loaded: a folder with only pickle
checkpoints (``.bin``, ``.ckpt``, ...) is refused. When the hub cannot be reached (offline), the error
names the component and the id, and says how to point at a downloaded folder or use ``--models tiny``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from storyreel.devices import default_device
from storyreel.errors import ModelLoadError, StoryreelError, first_line
from storyreel.hashing import weights_fingerprint
from storyreel.models import architectures, presets
from storyreel.models.schedulers import make_scheduler
from storyreel.weights_policy import PICKLE_REFUSAL, PICKLE_SUFFIXES

COMPONENT_KEYS = ("base", "tokenizer", "text_encoder", "vae", "unet", "motion_adapter", "controlnet")
BASE_PARTS = ("tokenizer", "text_encoder", "vae", "unet")
# The order components are loaded in: small first, so an offline failure comes before gigabytes are read.
LOAD_ORDER = ("tokenizer", "text_encoder", "vae", "controlnet", "motion_adapter", "unet")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(/[\w.-]+)*$")
_METADATA_KEY = re.compile(r"^_|^(transformers_version|architectures|dtype|torch_dtype|model_type)$")


class RenderModelLoadError(ModelLoadError):
    """A render component that cannot be built or loaded; the message says which and what to do instead."""


class ModelConfigError(StoryreelError, ValueError):
    """A bad model configuration (TOML file or overrides); ``path`` and ``field`` say where."""

    def __init__(self, path: Path | str | None, field: str | None, detail: str):
        super().__init__(path, field, detail)
        self.path = path
        self.field = field
        self.detail = detail

    def __str__(self) -> str:
        where = [str(self.path)] if self.path else []
        if self.field:
            where.append(f"[components] {self.field}" if self.field in COMPONENT_KEYS else self.field)
        return f"{': '.join(where)}: {self.detail}" if where else self.detail


@dataclass(frozen=True)
class ComponentSource:
    """Where one component comes from: ``kind`` is ``hub``, ``local``, ``tiny`` or ``random``."""

    kind: str
    location: str
    subfolder: str | None = None
    revision: str | None = None
    key: str | None = None  # the [components] key that chose it (None: the preset)

    def describe(self) -> str:
        if self.kind in ("tiny", "random"):
            return f"the {self.location} preset"
        where = f"'{self.location}'" + (f" (subfolder '{self.subfolder}')" if self.subfolder else "")
        return where + (f" at revision {self.revision}" if self.revision else "")

    def as_record(self) -> dict:
        return {"kind": self.kind, "source": self.location, "subfolder": self.subfolder,
                "revision": self.revision if self.kind != "hub" else (self.revision or "main")}


# -- fingerprints ---------------------------------------------------------------------------------------
def _digest(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def architecture_config(component) -> dict:
    """The configuration that defines a component (metadata such as paths and versions left out)."""
    if hasattr(component, "backend_tokenizer"):  # a tokenizer: its vocabulary, merges and settings
        return {"class": type(component).__name__, "tokenizer": _tokenizer_digest(component.backend_tokenizer),
                "model_max_length": component.model_max_length}
    config = component.config
    config = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    return {key: value for key, value in config.items() if not _METADATA_KEY.match(key)}


def _tokenizer_digest(backend) -> str:
    # The serialised backend starts with the padding and truncation of the last call, which are not
    # configuration: hash from "added_tokens" on (the rest is written in a fixed order).
    text = backend.to_str()
    start = text.find('"added_tokens":')
    if start < 0:
        state = {k: v for k, v in json.loads(text).items() if k not in ("padding", "truncation")}
        text, start = json.dumps(state, sort_keys=True), 0
    return hashlib.sha256(text[start:].encode()).hexdigest()


def config_fingerprint(component) -> str:
    return _digest(architecture_config(component))


# -- the components -------------------------------------------------------------------------------------
@dataclass
class RenderComponents:
    """Everything the sampler needs. ``unet`` is a ``UNetMotionModel`` (the motion adapter merged in)."""

    preset: str
    tokenizer: Any
    text_encoder: Any
    vae: Any
    unet: Any
    controlnet: Any
    scheduler: Any
    scheduler_name: str = presets.DEFAULT_SCHEDULER
    sources: dict[str, ComponentSource] = field(default_factory=dict)
    config_fingerprints: dict[str, str] = field(default_factory=dict)  # at load time, incl. motion_adapter
    offload: Any = None  # a storyreel.models.offload.ModelOffload after enable_model_cpu_offload()

    @property
    def device(self) -> torch.device:
        """Where the computation runs: the UNet's device, or the execution device under CPU offload."""
        return self.offload.execution_device if self.offload is not None else self.unet.device

    def enable_model_cpu_offload(self, device: str | torch.device | None = None) -> "RenderComponents":
        """Keep the models on the CPU and move each to ``device`` (default: the current device, else CUDA)
        only for the phase that uses it (:mod:`storyreel.models.offload`)."""
        from storyreel.models.offload import ModelOffload

        if self.offload is None:
            target = torch.device(device) if device is not None else (
                self.unet.device if self.unet.device.type != "cpu" else default_device())
            self.offload = ModelOffload(self, target)
        return self

    def use(self, *names: str) -> None:
        """Under CPU offload, put exactly these models on the execution device; otherwise nothing to do."""
        if self.offload is not None:
            self.offload.use(*names)

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent cell (8 for SD1.5 and the tiny preset)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def models(self) -> dict[str, torch.nn.Module]:
        return {"text_encoder": self.text_encoder, "vae": self.vae, "unet": self.unet, "controlnet": self.controlnet}

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> "RenderComponents":
        for model in self.models().values():
            _move(model, device, dtype)
        return self

    def pipeline_kwargs(self) -> dict:
        """Keyword arguments for diffusers' ``AnimateDiffControlNetPipeline`` (the motion adapter is merged)."""
        return {"vae": self.vae, "text_encoder": self.text_encoder, "tokenizer": self.tokenizer, "unet": self.unet,
                "motion_adapter": None, "controlnet": self.controlnet, "scheduler": self.scheduler}

    def weights_fingerprint(self) -> dict[str, str]:
        return {name: weights_fingerprint(model) for name, model in self.models().items()}

    def record(self) -> dict:
        """What a report stores: preset, where each component came from, configuration fingerprints."""
        components = {}
        for name in ("tokenizer", "text_encoder", "vae", "unet", "motion_adapter", "controlnet"):
            source = self.sources.get(name)
            entry = source.as_record() if source else {"kind": "unknown", "source": None}
            live = getattr(self, name, None)
            entry["class"] = type(live).__name__ if live is not None else "MotionAdapter"
            entry["config"] = config_fingerprint(live) if live is not None else self.config_fingerprints.get(name)
            components[name] = entry
        return {
            "preset": self.preset,
            "components": components,
            "scheduler": {"name": self.scheduler_name, "class": type(self.scheduler).__name__,
                          "config": {k: v for k, v in dict(self.scheduler.config).items() if not k.startswith("_")}},
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            "cpu_offload": self.offload is not None,
        }


def base_model_record(components) -> dict:
    """What a character file records about the base model it was trained on (and is checked against when
    loaded): preset, component sources and configuration fingerprints, the training noise schedule."""
    record = components.record()
    scheduler = record.get("scheduler", {})
    keep = ("beta_start", "beta_end", "beta_schedule", "num_train_timesteps", "prediction_type")
    return {"preset": record["preset"], "components": record["components"],
            "scheduler": {"class": scheduler.get("class"),
                          "config": {k: v for k, v in scheduler.get("config", {}).items() if k in keep}}}



def _move(model: torch.nn.Module, device, dtype) -> torch.nn.Module:
    if device is None and dtype is None:
        return model
    kwargs = {k: v for k, v in (("device", device), ("dtype", dtype)) if v is not None}
    with architectures.quiet_dtype_warning():
        return model.to(**kwargs)


# -- configuration: TOML file and overrides -------------------------------------------------------------
def _looks_local(text: str) -> bool:
    return text.startswith(("/", ".", "~")) or (os.sep != "/" and os.sep in text)


def parse_source(value: Any, key: str, path: Path | None = None) -> ComponentSource:
    """``value`` (str or Path) → :class:`ComponentSource`; relative folders resolve against ``path``'s folder."""
    if isinstance(value, Path):
        text = str(value)
    elif isinstance(value, str):
        text = value.strip()
    else:
        raise ModelConfigError(path, key, f"expected a string (a hub id or a folder), got {type(value).__name__}")
    if not text:
        raise ModelConfigError(path, key, "empty value; give a hub id (org/name) or a local folder")
    base_dir = path.parent if path is not None else Path.cwd()
    candidate = Path(text).expanduser()
    candidate = candidate if candidate.is_absolute() else base_dir / candidate
    if isinstance(value, Path) or _looks_local(text) or candidate.exists():
        if candidate.suffix.lower() in PICKLE_SUFFIXES:
            raise ModelConfigError(path, key, f"refusing '{text}': {PICKLE_REFUSAL}; give a "
                                              "folder with .safetensors weights")
        if candidate.is_file():
            raise ModelConfigError(path, key, f"'{text}' is a file; give the folder that holds its config.json "
                                              "and .safetensors weights (the diffusers / transformers layout)")
        if not candidate.is_dir():
            raise ModelConfigError(path, key, f"no such folder '{candidate}'")
        return ComponentSource("local", str(candidate.resolve()), key=key)
    repo, at, revision = text.partition("@")
    if not _HUB_ID.match(repo) or (at and not revision):
        raise ModelConfigError(path, key, f"'{text}' is neither an existing folder nor a hub id "
                                          "(org/name, org/name/subfolder, optionally @revision)")
    org, name, *sub = repo.split("/")
    return ComponentSource("hub", f"{org}/{name}", subfolder="/".join(sub) or None, revision=revision or None,
                           key=key)


def read_config_file(path: Path | str) -> dict[str, ComponentSource]:
    """The ``[components]`` table of a TOML file; unknown keys are refused, naming the key and the file."""
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
        if key != "components":
            raise ModelConfigError(path, key, "unknown key; a model config file holds one [components] table")
    table = data.get("components", {})
    if not isinstance(table, dict):
        raise ModelConfigError(path, "components", "expected a [components] table")
    return _parse_table(table, path)


def _parse_table(table: dict, path: Path | None) -> dict[str, ComponentSource]:
    sources = {}
    for key, value in table.items():
        if key not in COMPONENT_KEYS:
            raise ModelConfigError(path, key, f"unknown component '{key}'; expected one of {', '.join(COMPONENT_KEYS)}")
        sources[key] = parse_source(value, key, path)
    return sources


def resolve_sources(preset: str, overrides: dict | None = None,
                    config_file: Path | str | None = None) -> dict[str, ComponentSource]:
    """Where each of the six components comes from, after the file's and the dict's overrides."""
    if preset not in presets.PRESETS:
        raise RenderModelLoadError(f"unknown render model preset '{preset}'; use one of "
                                   f"{', '.join(presets.PRESET_NAMES)} (and a TOML config to replace components)")
    spec = presets.PRESETS[preset]
    chosen = read_config_file(config_file) if config_file is not None else {}
    chosen.update(_parse_table({k: v for k, v in (overrides or {}).items() if v is not None}, None))
    if spec.render == "hub":
        sources = {part: ComponentSource("hub", spec.base, subfolder=part) for part in BASE_PARTS}
        sources["motion_adapter"] = ComponentSource("hub", spec.motion_adapter)
        sources["controlnet"] = ComponentSource("hub", spec.controlnet)
    else:  # "tiny" or "random": built in code with seeded weights
        sources = {name: ComponentSource(spec.render, preset) for name in (*BASE_PARTS, "motion_adapter", "controlnet")}
    if "base" in chosen:
        base = chosen["base"]
        for part in BASE_PARTS:
            sub = f"{base.subfolder}/{part}" if base.subfolder else part
            sources[part] = ComponentSource(base.kind, base.location, subfolder=sub, revision=base.revision,
                                            key="base")
    for name, source in chosen.items():
        if name != "base":
            sources[name] = source
    return sources


# -- loading from the hub or a folder -------------------------------------------------------------------
_CLASSES = {
    "tokenizer": ("transformers", "CLIPTokenizer"),
    "text_encoder": ("transformers", "CLIPTextModel"),
    "vae": ("diffusers", "AutoencoderKL"),
    "unet": ("diffusers", "UNet2DConditionModel"),
    "motion_adapter": ("diffusers", "MotionAdapter"),
    "controlnet": ("diffusers", "ControlNetModel"),
}


def _class(name: str):
    module, cls = _CLASSES[name]
    return getattr(__import__(module, fromlist=[cls]), cls)


def _offline() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _load_error(name: str, source: ComponentSource, exc: BaseException) -> RenderModelLoadError:
    key = source.key or (("base" if name in BASE_PARTS else name) if source.kind == "hub" else name)
    reason = first_line(exc)
    if source.kind == "hub":
        if _offline():
            reason += " (the hub is offline, HF_HUB_OFFLINE is set, and the files are not in the local cache)"
        download = f"hf download {source.location}" + (f" --revision {source.revision}" if source.revision else "")
        hint = (f"Without network access, download it once ({download} --local-dir DIR) and point the render at the "
                f"folder in a TOML model config ([components] {key} = \"DIR\"), or use --models tiny (the same "
                "architecture with small random weights)")
        if source.key:
            hint += (f". If '{source.location}' was meant as a local folder: no such folder (relative paths in a TOML "
                     "model config are relative to the file)")
    else:
        hint = "check that the folder holds the component's config and .safetensors weights"
    return RenderModelLoadError(
        f"cannot load the render's {name} ({_CLASSES[name][1]}) from {source.describe()}: {reason}. {hint}. "
        "Only safetensors weights are loaded."
    )


def _component_folder(name: str, source: ComponentSource) -> Path:
    """The folder that holds a local component: the given one, its subfolder, or its ``name`` subfolder."""
    folder = Path(source.location) / (source.subfolder or "")
    markers = ("vocab.json", "tokenizer.json", "tokenizer_config.json") if name == "tokenizer" else ("config.json",)
    if not any((folder / marker).is_file() for marker in markers) and (folder / name).is_dir():
        folder = folder / name
    if not folder.is_dir():
        raise RenderModelLoadError(f"render {name}: no such folder '{folder}'")
    if not any((folder / marker).is_file() for marker in markers):
        raise RenderModelLoadError(
            f"render {name}: '{folder}' holds no {' or '.join(markers)} (nor a '{name}' subfolder that does); "
            f"point [components] {source.key or name} at the component's folder in the diffusers / transformers layout"
        )
    return folder


def _local_variant(name: str, folder: Path) -> str | None:
    """None (plain safetensors), "fp16" (only fp16 safetensors); refuses folders without safetensors."""
    files = [p.name for p in folder.iterdir() if p.is_file()]
    safetensors = [f for f in files if f.endswith(".safetensors") or f.endswith(".safetensors.index.json")]
    if not safetensors:
        unsafe = sorted(f for f in files if Path(f).suffix.lower() in PICKLE_SUFFIXES)
        found = f" (it holds {', '.join(unsafe)})" if unsafe else ""
        raise RenderModelLoadError(
            f"render {name}: '{folder}' holds no .safetensors weights{found}; {PICKLE_REFUSAL}, "
            "so only safetensors are loaded: convert them (load once in a trusted environment and save_pretrained "
            "with safe_serialization=True), or use --models tiny"
        )
    if any(not re.search(r"\.(fp16|bf16)\.safetensors", f) for f in safetensors):
        return None
    return "fp16" if any(".fp16." in f for f in safetensors) else None


def _from_pretrained(name: str, location: str, subfolder: str | None, revision: str | None, variant: str | None,
                     dtype: torch.dtype, local: bool):
    cls = _class(name)
    kwargs: dict = {"local_files_only": local}
    if subfolder:
        kwargs["subfolder"] = subfolder
    if revision:
        kwargs["revision"] = revision
    if name == "tokenizer":
        return _check_tokenizer(cls.from_pretrained(location, **kwargs))
    kwargs.update(use_safetensors=True, variant=variant)
    kwargs["dtype" if name == "text_encoder" else "torch_dtype"] = dtype
    return cls.from_pretrained(location, **kwargs)


class _NoTokenizerFiles(OSError):
    pass


def _check_tokenizer(tokenizer):
    # transformers 5.23's CLIPTokenizer.from_pretrained does not fail when it finds no tokenizer files (an
    # unknown or uncached hub id, an empty folder): it returns a tokenizer of 2 tokens that maps every word
    # to <|endoftext|>. A real vocabulary covers at least the 256 byte symbols.
    if len(tokenizer) < 256:
        raise _NoTokenizerFiles(f"no tokenizer files found (vocab.json + merges.txt or tokenizer.json): "
                                f"what loaded has {len(tokenizer)} tokens")
    return tokenizer


def load_component(name: str, source: ComponentSource, dtype: torch.dtype = torch.float32):
    """One component from the hub (or its cache) or a local folder; raises :class:`RenderModelLoadError`."""
    if source.kind == "local":
        folder = _component_folder(name, source)
        variant = None if name == "tokenizer" else _local_variant(name, folder)
        try:
            return _from_pretrained(name, str(folder), None, None, variant, dtype, local=True)
        except Exception as exc:
            raise _load_error(name, source, exc) from exc
    try:
        return _from_pretrained(name, source.location, source.subfolder, source.revision, None, dtype, local=False)
    except Exception as exc:
        # Some repositories hold only an fp16 safetensors variant next to full-precision pickles.
        if name != "tokenizer" and ".safetensors" in str(exc) and not _offline():
            try:
                return _from_pretrained(name, source.location, source.subfolder, source.revision, "fp16", dtype,
                                        local=False)
            except Exception:  # noqa: BLE001 (the first error is the one to report)
                pass
        raise _load_error(name, source, exc) from exc


# -- building -------------------------------------------------------------------------------------------
def _build_generated(preset: str, wanted: set[str], device: torch.device, merge: bool) -> dict:
    tiny = presets.PRESETS[preset].render == "tiny"
    build = architectures.build_tiny_components if tiny else architectures.build_random_components
    # tiny weights are made on the CPU (the same on every machine); real sizes directly where they will run
    on = device if device.type == "meta" or (device.type == "cuda" and not tiny) else None
    return build(on, only=wanted, merge=merge)


def check_compatible(parts: dict, sources: dict[str, ComponentSource]) -> None:
    """Refuse components that cannot work together, before they are merged or run."""
    problems = []
    unet, adapter, controlnet = parts.get("unet"), parts.get("motion_adapter"), parts.get("controlnet")
    text_encoder, tokenizer = parts.get("text_encoder"), parts.get("tokenizer")
    width = text_encoder.config.hidden_size if text_encoder is not None else None
    if unet is not None and width is not None and unet.config.cross_attention_dim != width:
        problems.append(f"the unet attends to {unet.config.cross_attention_dim}-d text features but the text "
                        f"encoder gives {width}-d ones")
    if controlnet is not None and width is not None and controlnet.config.cross_attention_dim != width:
        problems.append(f"the controlnet attends to {controlnet.config.cross_attention_dim}-d text features but the "
                        f"text encoder gives {width}-d ones")
    if unet is not None and controlnet is not None and (
            list(controlnet.config.block_out_channels) != list(unet.config.block_out_channels)
            or controlnet.config.layers_per_block != unet.config.layers_per_block):
        problems.append(f"the controlnet's blocks {list(controlnet.config.block_out_channels)} do not match the "
                        f"unet's {list(unet.config.block_out_channels)}")
    if unet is not None and adapter is not None and (
            list(adapter.config.block_out_channels) != list(unet.config.block_out_channels)
            or adapter.config.motion_layers_per_block != unet.config.layers_per_block):
        problems.append(f"the motion adapter's blocks {list(adapter.config.block_out_channels)} x "
                        f"{adapter.config.motion_layers_per_block} layers do not match the unet's "
                        f"{list(unet.config.block_out_channels)} x {unet.config.layers_per_block}")
    if tokenizer is not None and text_encoder is not None and len(tokenizer) > text_encoder.config.vocab_size:
        problems.append(f"the tokenizer has {len(tokenizer)} tokens but the text encoder only "
                        f"{text_encoder.config.vocab_size} embeddings")
    if problems:
        where = ", ".join(f"{name} from {source.describe()}" for name, source in sources.items())
        raise RenderModelLoadError("incompatible render components: " + "; ".join(problems) + f" ({where})")


def load_render_components(preset: str = presets.DEFAULT_PRESET, overrides: dict | None = None,
                           config_file: Path | str | None = None, device: str | torch.device | None = None,
                           dtype: torch.dtype | None = None,
                           scheduler: str = presets.DEFAULT_SCHEDULER) -> RenderComponents:
    """Build or load the render's components (see the module docstring).

    ``device`` defaults to CUDA when there is one, else the CPU; "meta" builds the ``tiny`` and
    ``sd15-random`` presets without memory (shapes and parameter counts only). ``dtype`` defaults to
    float16 on CUDA and float32 elsewhere. Raises :class:`ModelConfigError` for a bad config and
    :class:`RenderModelLoadError` for components that cannot be loaded.
    """
    device = torch.device(device) if device is not None else default_device()
    dtype = dtype or (torch.float16 if device.type == "cuda" else torch.float32)
    sources = resolve_sources(preset, overrides, config_file)
    if device.type == "meta" and any(s.kind in ("hub", "local") for s in sources.values()):
        raise RenderModelLoadError("the meta device only builds the tiny and sd15-random presets' own components")
    scheduler_object = make_scheduler(scheduler)  # an unknown name fails before anything is loaded

    parts = {}
    for name in LOAD_ORDER:  # loaded parts first: a missing one fails before anything is built
        if sources[name].kind in ("hub", "local"):
            parts[name] = load_component(name, sources[name], dtype=dtype)
    generated = {name for name, source in sources.items() if source.kind in ("tiny", "random")}
    merge_here = {"unet", "motion_adapter"} <= generated  # else the UNet is merged with the adapter below
    if generated:
        built = _build_generated(preset, generated, device, merge_here)
        parts.update({name: built[name] for name in generated})
    check_compatible(parts, sources)

    adapter = parts.pop("motion_adapter")
    fingerprints = {name: config_fingerprint(part) for name, part in parts.items() if name != "unet"}
    fingerprints["motion_adapter"] = config_fingerprint(adapter)
    if not merge_here:
        unet2d = _move(parts["unet"], device, None)
        with device if device.type == "cuda" else contextlib.nullcontext():
            parts["unet"] = architectures.merge_motion_adapter(unet2d, _move(adapter, device, None))
        del unet2d
    del adapter
    for name in ("text_encoder", "vae", "unet", "controlnet"):
        parts[name] = _move(parts[name], None if device.type == "meta" else device, dtype).eval()
        parts[name].requires_grad_(False)
    fingerprints["unet"] = config_fingerprint(parts["unet"])
    return RenderComponents(preset=preset, scheduler=scheduler_object, scheduler_name=scheduler, sources=sources,
                            config_fingerprints=fingerprints, **parts)

