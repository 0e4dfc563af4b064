"""Loading the render's components from a :class:`~storyreel.models.specification.ModelSpecification` or a preset.

``load_render_components(specification_or_preset, overrides, config_file, device, dtype, scheduler)`` gives a
:class:`RenderComponents`: tokenizer, text encoder, VAE, UNet with the motion modules (``UNetMotionModel``),
depth ControlNet and scheduler, plus :meth:`RenderComponents.record` (what a report stores about them).

What to load is a :class:`~storyreel.models.specification.ModelSpecification` (validated first: nothing loads
when a value is bad), or, as before, a preset name with ``overrides`` (a dict of ``[components]`` values that
wins over the file) and a TOML ``config_file`` (:mod:`storyreel.models.specification` describes both). Each
component comes from

* a diffusers / transformers folder, local or on the hub (``from_pretrained``; a folder with only pickle
  checkpoints is refused);
* one SD1.5 checkpoint in the original layout for ``base`` (text encoder, VAE and UNet through diffusers'
  single-file loading against the architecture's configs, offline; the built-in CLIP tokenizer), or one
  motion adapter file (:mod:`storyreel.models.single_file`), local or ``org/name/file.safetensors`` on the hub;
* the preset's own seeded weights (``tiny``, ``sd15-random``).

A UNet LoRA (``lora``, the preset's or the file's) is fused into the merged UNet at ``lora_scale``. When the
hub cannot be reached (offline), the error names the component and the id, and says how to point at a
downloaded folder (``fetch-models``) or use ``--models tiny``. Only safetensors weights are loaded.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from storyreel.devices import default_device
from storyreel.errors import ModelLoadError, first_line
from storyreel.hashing import weights_fingerprint
from storyreel.hub_access import HubUnavailableError, ensure_available, is_cached, offline_requested
from storyreel.models import architectures, presets, single_file
from storyreel.models.hub_models import component_model, render_models
from storyreel.models.specification import (
    BASE_PARTS,
    COMPONENT_KEYS,
    RENDER_PARTS,
    ComponentSource,
    ModelConfigError,
    ModelSpecification,
    ResolvedModels,
    architecture_configs,
    parse_source,
    read_config_file,
)
from storyreel.weights_policy import PICKLE_REFUSAL, PICKLE_SUFFIXES

__all__ = ["BASE_PARTS", "COMPONENT_KEYS", "LOAD_ORDER", "ComponentSource", "ModelConfigError", "ModelSpecification",
           "RenderComponents", "RenderModelLoadError", "base_model_record", "check_compatible", "load_component",
           "load_render_components", "parse_source", "read_config_file", "resolve_models", "resolve_sources"]

# The order components are loaded in: small first, so an offline failure comes before gigabytes are read.
LOAD_ORDER = ("tokenizer", "text_encoder", "vae", "controlnet", "motion_adapter", "unet")
CHECKPOINT_PARTS = single_file.SD_CHECKPOINT_PARTS  # what one original-layout checkpoint holds
_METADATA_KEY = re.compile(r"^_|^(transformers_version|architectures|dtype|torch_dtype|model_type)$")


class RenderModelLoadError(ModelLoadError):
    """A render component that cannot be built or loaded; the message says which and what to do instead."""


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
    lora: dict | None = None  # the LoRA fused into the UNet: its source record and scale (None: none)

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
        record = {
            "preset": self.preset,
            "components": components,
            "scheduler": {"name": self.scheduler_name, "class": type(self.scheduler).__name__,
                          "config": {k: v for k, v in dict(self.scheduler.config).items() if not k.startswith("_")}},
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            "cpu_offload": self.offload is not None,
        }
        if self.lora is not None:  # only then: records of models without a LoRA stay as they were
            record["lora"] = self.lora
        return record


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


# -- what to load ---------------------------------------------------------------------------------------
def resolve_models(preset: str, overrides: dict | None = None, config_file: Path | str | None = None) -> ResolvedModels:
    """What ``load_render_components(preset, overrides, config_file)`` loads (no architecture checks: a preset
    name with overrides loads what it is given, and the loaded components are checked against each other)."""
    if preset not in presets.PRESETS:
        raise RenderModelLoadError(f"unknown render model preset '{preset}'; use one of "
                                   f"{', '.join(presets.PRESET_NAMES)} (and a TOML config to replace components)")
    return ModelSpecification.from_overrides(preset, overrides, config_file).resolve()


def resolve_sources(preset: str, overrides: dict | None = None,
                    config_file: Path | str | None = None) -> dict[str, ComponentSource]:
    """Where each of the six components comes from, after the file's and the dict's overrides."""
    return resolve_models(preset, overrides, config_file).sources


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



def _load_error(name: str, source: ComponentSource, exc: BaseException) -> RenderModelLoadError:
    on_hub = source.kind in ("hub", "hub_file")
    key = source.key or (("base" if name in BASE_PARTS else name) if on_hub else name)
    reason = first_line(exc)
    if on_hub:
        if offline_requested():
            reason += " (the hub is offline, HF_HUB_OFFLINE is set, and the files are not in the local cache)"
        revision = f" --revision {source.revision}" if source.revision else ""
        if source.kind == "hub_file":
            download = f"hf download {source.location} {source.filename}{revision}"
            target = f"DIR/{source.filename}"
        else:
            download, target = f"hf download {source.location}{revision}", "DIR"
        hint = (f"Without network access, download it once (fetch-models PRESET --out DIR writes DIR/models.toml; or "
                f"{download} --local-dir DIR) and point the render at it in a TOML model config ([components] {key} = "
                f"\"{target}\"), or use --models tiny (the same architecture with small random weights)")
        if source.key:
            hint += (f". If '{source.location}' was meant as a local path: no such file or folder (relative paths in a "
                     "TOML model config are relative to the file)")
    elif source.is_single_file:
        hint = "check that the file is a complete .safetensors file of the right model"
    else:
        hint = "check that the folder holds the component's config and .safetensors weights"
    what = f"{name} ({_CLASSES[name][1]})" if name in _CLASSES else name
    return RenderModelLoadError(
        f"cannot load the render's {what} from {source.describe()}: {reason}. {hint}. "
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
    """One component from the hub (or its cache), a local folder or the toy preset's trained weights (checked
    against their manifest first); raises :class:`RenderModelLoadError`."""
    if source.kind == "toy":
        from storyreel.models.toy_weights import ToyWeightsError, render_component_folder

        try:
            folder = render_component_folder(Path(source.location).name)
        except ToyWeightsError as exc:
            raise RenderModelLoadError(f"cannot load the render's {name} of the toy preset: {exc}") from None
        try:
            return _from_pretrained(name, str(folder), None, None, None, dtype, local=True)
        except Exception as exc:
            raise _load_error(name, source, exc) from exc
    if source.kind == "local":
        folder = _component_folder(name, source)
        variant = None if name == "tokenizer" else _local_variant(name, folder)
        try:
            return _from_pretrained(name, str(folder), None, None, variant, dtype, local=True)
        except Exception as exc:
            raise _load_error(name, source, exc) from exc
    try:
        return _from_pretrained(name, source.location, source.subfolder, source.revision, None, dtype,
                                local=offline_requested())
    except Exception as exc:
        # Some repositories hold only an fp16 safetensors variant next to full-precision pickles.
        if name != "tokenizer" and ".safetensors" in str(exc):
            try:
                return _from_pretrained(name, source.location, source.subfolder, source.revision, "fp16", dtype,
                                        local=offline_requested())
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


def weights_file(name: str, source: ComponentSource) -> Path:
    """The local path of a single-file component: the file itself, or the hub file downloaded to (or found in)
    the hub cache (``HF_HUB_OFFLINE`` is honoured)."""
    if source.kind == "file":
        return Path(source.location)
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(source.location, source.filename, revision=source.revision,
                                    local_files_only=offline_requested()))
    except Exception as exc:  # offline, missing, unauthorised: each is reported the same way
        raise _load_error(name, source, exc) from exc


def _architecture(preset: str, name: str, source: ComponentSource) -> tuple[dict, str]:
    configs, architecture, _ = architecture_configs(preset)
    if configs is None:
        raise RenderModelLoadError(f"render {name}: preset '{preset}' has no architecture configs to load "
                                   f"{source.describe()} against")
    return configs, architecture


def load_checkpoint_parts(preset: str, source: ComponentSource, parts, dtype: torch.dtype = torch.float32) -> dict:
    """``parts`` (of text_encoder, vae, unet) from one SD1.5 checkpoint in the original layout, against the
    preset's architecture (:func:`storyreel.models.single_file.load_sd_checkpoint`)."""
    configs, architecture = _architecture(preset, "base", source)
    path = weights_file("unet", source)
    try:
        problem = single_file.sd_checkpoint_problem(single_file.tensor_shapes(path), configs, parts, architecture)
        if problem:
            raise single_file.SingleFileMismatch(f"not {architecture} checkpoint: {problem}")
        return single_file.load_sd_checkpoint(path, parts, configs, dtype)
    except (single_file.SingleFileMismatch, single_file.UnreadableWeightsFile) as exc:
        raise _load_error("base", source, exc) from exc


def load_motion_adapter_file(preset: str, source: ComponentSource, dtype: torch.dtype = torch.float32):
    """A single-file motion adapter (local or on the hub), configured for the preset's architecture."""
    configs, architecture = _architecture(preset, "motion_adapter", source)
    path = weights_file("motion_adapter", source)
    try:
        problem = single_file.motion_adapter_problem(single_file.tensor_shapes(path), configs["unet"], architecture)
        if problem:
            raise single_file.SingleFileMismatch(problem)
        return single_file.load_motion_adapter_file(path, configs["motion_adapter"], dtype)
    except (single_file.SingleFileMismatch, single_file.UnreadableWeightsFile) as exc:
        raise _load_error("motion_adapter", source, exc) from exc


def fuse_lora(unet, source: ComponentSource, scale: float) -> dict:
    """Fuse the LoRA file of ``source`` into ``unet`` at ``scale``; returns what the record stores about it."""
    path = weights_file("lora", source)
    try:
        problem = single_file.lora_problem(single_file.tensor_shapes(path))
        if problem:
            raise single_file.SingleFileMismatch(problem)
        layers = single_file.fuse_lora_file(unet, path, scale)
    except (single_file.SingleFileMismatch, single_file.UnreadableWeightsFile) as exc:
        raise _load_error("lora", source, exc) from exc
    return {**source.as_record(), "scale": scale, "layers": layers}


def _load_parts(resolved: ResolvedModels, dtype: torch.dtype) -> dict:
    """Every component that is not built in code, in :data:`LOAD_ORDER` (a single checkpoint gives its parts
    at once)."""
    from storyreel.models.clip_tokenizer import build_clip_tokenizer

    sources, parts = resolved.sources, {}
    for name in LOAD_ORDER:
        source = sources[name]
        if name in parts or source.kind in ("tiny", "random"):
            continue
        if source.kind == "builtin":
            parts[name] = build_clip_tokenizer()
        elif source.is_single_file and name in CHECKPOINT_PARTS:
            together = [part for part in CHECKPOINT_PARTS if sources[part] == source]
            parts.update(load_checkpoint_parts(resolved.preset, source, together, dtype))
        elif source.is_single_file and name == "motion_adapter":
            parts[name] = load_motion_adapter_file(resolved.preset, source, dtype)
        else:
            parts[name] = load_component(name, source, dtype=dtype)
    return parts


def _ensure_on_hand(resolved: ResolvedModels) -> None:
    """The hub components of ``resolved`` from the local cache, or the hub asked once
    (:func:`storyreel.hub_access.ensure_available`); a :class:`RenderModelLoadError` naming every missing one,
    and the TOML keys that would point the render at local copies instead."""
    try:
        ensure_available(render_models(resolved, depth=False))
    except HubUnavailableError as exc:
        keys = []
        for name in RENDER_PARTS:
            source = resolved.sources[name]
            model = component_model(name, source)
            key = source.key or ("base" if name in BASE_PARTS else name)
            if model is not None and not is_cached(model) and key not in keys:
                keys.append(key)
        tables = ", ".join(f'[components] {key} = "DIR"' for key in keys)
        raise RenderModelLoadError(f"{exc}; a TOML model config (--model-config) can name local copies instead: "
                                   f"{tables}") from None


def load_render_components(specification_or_preset: ModelSpecification | str = presets.DEFAULT_PRESET,
                           overrides: dict | None = None, config_file: Path | str | None = None,
                           device: str | torch.device | None = None, dtype: torch.dtype | None = None,
                           scheduler: str | None = None) -> RenderComponents:
    """Build or load the render's components (see the module docstring).

    ``specification_or_preset``: a :class:`ModelSpecification` (validated first; then ``overrides`` and
    ``config_file`` are not taken), or a preset name with ``overrides`` and a TOML ``config_file``.
    ``device`` defaults to CUDA when there is one, else the CPU; "meta" builds the ``tiny`` and
    ``sd15-random`` presets without memory (shapes and parameter counts only). ``dtype`` defaults to
    float16 on CUDA and float32 elsewhere. ``scheduler`` defaults to the preset's (with the preset's
    scheduler settings either way). Raises :class:`ModelConfigError` for a bad specification or config and
    :class:`RenderModelLoadError` for components that cannot be loaded.
    """
    from storyreel.models.schedulers import preset_scheduler

    if isinstance(specification_or_preset, ModelSpecification):
        if overrides is not None or config_file is not None:
            raise TypeError("give overrides and config_file inside the ModelSpecification")
        resolved = specification_or_preset.validate()
    else:
        resolved = resolve_models(specification_or_preset, overrides, config_file)
    preset, sources = resolved.preset, resolved.sources
    device = torch.device(device) if device is not None else default_device()
    dtype = dtype or (torch.float16 if device.type == "cuda" else torch.float32)
    if device.type == "meta" and (resolved.lora is not None or
                                  any(s.kind not in ("tiny", "random") for s in sources.values())):
        raise RenderModelLoadError("the meta device only builds the tiny and sd15-random presets' own components")
    scheduler_name = scheduler or presets.PRESETS[preset].scheduler
    scheduler_object = preset_scheduler(preset, scheduler_name)  # an unknown name fails before anything is loaded

    _ensure_on_hand(resolved)  # offline: every missing component named at once, before any loads
    parts = _load_parts(resolved, dtype)  # loaded parts first: a missing one fails before anything is built
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
    lora = fuse_lora(parts["unet"], resolved.lora, resolved.lora_scale) if resolved.lora is not None else None
    for name in ("text_encoder", "vae", "unet", "controlnet"):
        parts[name] = _move(parts[name], None if device.type == "meta" else device, dtype).eval()
        parts[name].requires_grad_(False)
    fingerprints["unet"] = config_fingerprint(parts["unet"])
    return RenderComponents(preset=preset, scheduler=scheduler_object, scheduler_name=scheduler_name, sources=sources,
                            config_fingerprints=fingerprints, lora=lora, **parts)
