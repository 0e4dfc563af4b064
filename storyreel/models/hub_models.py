"""Which hub repositories, and which files in them, a model value needs: the list each command checks with
:func:`storyreel.hub_access.ensure_available` before it loads anything.

* :func:`render_models`: the six render components, the LoRA and the depth model of a
  :class:`~storyreel.models.specification.ResolvedModels` (a diffusers component needs ``SUBFOLDER/config.json``
  and ``SUBFOLDER/*.safetensors``, a single file itself);
* :func:`depth_models`: a depth model value (``dpt-hybrid`` and the other names of
  :data:`~storyreel.models.presets.DEPTH_MODEL_REPOS` at their revision, or a hub id);
* :func:`open_clip_weights` / :func:`clip_models`: an open_clip ``NAME:TAG`` by its **safetensors** file in the
  repository open_clip's pretrained registry names (a tag without one is refused, naming it: the ``.bin`` next
  to it is a pickle), or ``hf-hub:ORG/NAME``;
* :func:`preset_models`: everything a preset loads (render, depth, CLIP): what ``fetch-models PRESET
  --hub-cache`` fetches and what the doctor looks for.

Values that are not on the hub (``tiny``, ``toy``, the ``*-random`` presets, local folders and files) need
nothing. Nothing here touches the network.
"""

from __future__ import annotations

from pathlib import Path

from storyreel.errors import ModelLoadError
from storyreel.hub_access import HubModel
from storyreel.models import presets
from storyreel.models.specification import RENDER_PARTS, ComponentSource, ResolvedModels

OPEN_CLIP_WEIGHTS = "open_clip_model.safetensors"
OPEN_CLIP_CONFIG = "open_clip_config.json"
DIFFUSERS_WEIGHTS = "diffusion_pytorch_model*.safetensors"
TRANSFORMERS_WEIGHTS = "model*.safetensors"
_COMPONENT_FILES = {
    "tokenizer": ("vocab.json", "merges.txt"),
    "scheduler": ("scheduler_config.json",),
    "text_encoder": ("config.json", TRANSFORMERS_WEIGHTS),
}


class NoSafetensorsError(ModelLoadError):
    """An open_clip tag whose weights exist only as a pickle or a URL."""


def component_model(name: str, source: ComponentSource) -> HubModel | None:
    """The hub repository and files of one render component (None: not on the hub)."""
    what = f"render {name}"
    if source.kind == "hub_file":
        return HubModel(source.location, what, source.revision, (source.filename,))
    if source.kind != "hub":
        return None
    prefix = f"{source.subfolder.strip('/')}/" if source.subfolder else ""
    files = _COMPONENT_FILES.get(name, ("config.json", DIFFUSERS_WEIGHTS))
    return HubModel(source.location, what, source.revision, tuple(prefix + f for f in files))


def depth_models(spec: str | None) -> list[HubModel]:
    """The hub repository of a depth model value (a model preset means its depth model)."""
    spec = (spec or "").strip()
    if spec in presets.PRESETS:
        spec = presets.PRESETS[spec].depth_model
    required = ("config.json", "preprocessor_config.json", TRANSFORMERS_WEIGHTS)
    if spec in presets.DEPTH_MODEL_REPOS:
        repo, revision = presets.DEPTH_MODEL_REPOS[spec]
        return [HubModel(repo, f"depth model {spec}", revision, required)]
    for repo, revision in presets.DEPTH_MODEL_REPOS.values():
        if spec == repo:
            return [HubModel(repo, f"depth model {spec}", revision, required)]
    if is_hub_id(spec):
        return [HubModel(spec, f"depth model {spec}", None, required)]
    return []


def is_hub_id(value: str) -> bool:
    """``ORG/NAME`` that names no local file or folder: a hub repository (``tiny``, ``toy``, paths: not)."""
    if not value or value.startswith((".", "/", "~")) or Path(value).expanduser().exists():
        return False
    parts = value.split("/")
    return len(parts) == 2 and all(parts)


def open_clip_weights(name: str, tag: str | None) -> HubModel | None:
    """The hub file of open_clip's ``name`` + pretrained ``tag`` (None: random weights, a local file or folder).

    Raises :class:`NoSafetensorsError` for a tag whose registry entry has no hub repository (only a URL, usually
    a pickle)."""
    if name.startswith("hf-hub:"):
        repo = name.removeprefix("hf-hub:").strip("/")
        return HubModel(repo, f"CLIP {name}", None, (OPEN_CLIP_CONFIG, OPEN_CLIP_WEIGHTS))
    if not tag or name.startswith("local-dir:") or "/" in tag or Path(tag).suffix:
        return None
    import open_clip

    config = open_clip.get_pretrained_cfg(name, tag)
    repo = (config or {}).get("hf_hub", "").strip("/")
    if not repo:
        if not config:
            known = ", ".join(open_clip.list_pretrained_tags_by_model(name)) or "none"
            raise NoSafetensorsError(f"open_clip model '{name}' has no pretrained tag '{tag}' (its tags: {known})")
        raise NoSafetensorsError(
            f"open_clip '{name}:{tag}' has no weights on the hub, only '{config.get('url', '?')}' (a pickle); only "
            "safetensors are loaded: convert it once and pass the file, e.g. --models "
            f"{name}:/path/to/open_clip_model.safetensors")
    return HubModel(repo, f"CLIP {name}:{tag}", None, (OPEN_CLIP_WEIGHTS,))


def clip_models(value: str) -> list[HubModel]:
    """The hub file of a CLIP ``--models`` value (a preset, ``NAME:TAG``, ``hf-hub:...``; see retrieval)."""
    value = value.strip()
    if value in presets.PRESETS:
        value = presets.PRESETS[value].clip_model
    if value in (presets.TINY, presets.TOY) or value.startswith("local-dir:"):
        return []
    if value.startswith("hf-hub:"):
        model = open_clip_weights(value, None)
    else:
        name, _, tag = value.partition(":")
        model = open_clip_weights(name, tag or None)
    return [model] if model else []


def ip_adapter_model(variant: str = "base") -> HubModel:
    """h94's SD1.5 IP-Adapter ``variant`` (one file of ``models/``) and its CLIP image encoder."""
    encoder = f"{presets.IP_ADAPTER_FOLDER}/image_encoder"
    return HubModel(presets.IP_ADAPTER_ID, f"IP-Adapter {variant}", None, (
        f"{presets.IP_ADAPTER_FOLDER}/{presets.IP_ADAPTER_FILES[variant]}", f"{encoder}/config.json",
        f"{encoder}/{TRANSFORMERS_WEIGHTS}"))


def sparsectrl_model(repo_id: str = presets.SPARSECTRL_RGB_ID) -> HubModel:
    return HubModel(repo_id, "SparseCtrl RGB", None, ("config.json", DIFFUSERS_WEIGHTS))


def i2vgen_model(repo_id: str = presets.I2VGEN_XL_ID) -> HubModel:
    """I2VGen-XL's pipeline folder: ``model_index.json`` and each component's config and weights."""
    weighted = ("unet", "vae", "text_encoder", "image_encoder")
    return HubModel(repo_id, "I2VGen-XL", None, (
        "model_index.json", "scheduler/scheduler_config.json", "tokenizer/vocab.json",
        "feature_extractor/preprocessor_config.json", *(f"{part}/config.json" for part in weighted),
        *(f"{part}/*.safetensors" for part in weighted)))


EXTRAS = {"sparsectrl": sparsectrl_model, "i2vgen-xl": i2vgen_model,
          **{("ip-adapter" if variant == "base" else f"ip-adapter-{variant}"): (lambda v=variant: ip_adapter_model(v))
             for variant in presets.IP_ADAPTER_FILES}}


def extra_models(names) -> list[HubModel]:
    """The hub models of ``fetch-models --with`` names (:data:`EXTRAS`)."""
    return [EXTRAS[name]() for name in names]


def render_models(resolved: ResolvedModels, depth: bool = True) -> list[HubModel]:
    """The render components' repositories (and the LoRA's and, with ``depth``, the depth model's)."""
    models = [component_model(name, resolved.sources[name]) for name in RENDER_PARTS]
    if resolved.lora is not None:
        models.append(component_model("lora", resolved.lora))
    found = [model for model in models if model is not None]
    return found + (depth_models(resolved.depth_model) if depth else [])


def preset_models(preset: str) -> list[HubModel]:
    """Everything ``preset`` loads from the hub: render components, depth model, CLIP."""
    from storyreel.models.specification import ModelSpecification

    resolved = ModelSpecification.from_overrides(preset).resolve()
    return render_models(resolved) + clip_models(preset)
