"""``fetch-models PRESET --out DIR``: every component of a preset in local folders, and ``DIR/models.toml``.

Downloads what a :class:`~storyreel.models.specification.ModelSpecification` names from the Hugging Face hub
(``fetch-models sd15-lcm --out models``, or ``fetch-models --model-config my.toml --out models``; the swaps
``--base``, ``--motion-adapter``, ... work as everywhere) into one folder per component under DIR, and
writes ``DIR/models.toml`` (atomically) pointing at them with paths relative to it, with the preset it is
for. Afterwards, offline::

    render-story story.json --out OUT --model-config models/models.toml
    train-character ... --model-config models/models.toml

How:

* a diffusers repository (the SD1.5 base, a motion adapter, a ControlNet, a depth model given as a hub id)
  is fetched with ``huggingface_hub.snapshot_download`` and ``allow_patterns`` naming exactly the config,
  tokenizer and ``.safetensors`` files wanted (the full-precision weights, else the fp16 variant; never
  pickles, EMA copies or other variants), chosen from the repository's file list;
* a single file (AnimateDiff-Lightning's motion adapter, AnimateLCM's LoRA, an SD1.5 checkpoint) with
  ``hf_hub_download``;
* the ``tiny`` and ``sd15-random`` presets' seeded weights are written with ``save_pretrained``
  (safetensors): ``fetch-models tiny`` is the offline path's test.

A component folder is complete only when its marker file (:data:`MARKER`, what was asked for and the files
it holds) exists; the marker is written last. A rerun skips complete folders and fetches the others again:
huggingface_hub resumes partial files and keeps the ones already there. A folder whose marker records another
request is emptied first. Local values (folders and files) are not copied: ``models.toml`` names them by
their absolute paths. The depth model is fetched too: a hub id, or a depth model the structure stage names
(``dpt-hybrid`` and the others of :data:`storyreel.models.presets.DEPTH_MODEL_REPOS`, at their revision).
"""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import click
from huggingface_hub import hf_hub_download, list_repo_files, snapshot_download

from storyreel import atomic_files, hub_access
from storyreel.command_line import command, quiet_option
from storyreel.errors import ModelLoadError, OptionError, first_line
from storyreel.hub_access import HubModel
from storyreel.models import presets
from storyreel.models.hub_models import EXTRAS, clip_models, extra_models, render_models
from storyreel.models.model_options import model_options, model_specification
from storyreel.models.specification import (
    BASE_PARTS,
    HUB_ID,
    RENDER_PARTS,
    ComponentSource,
    ModelSpecification,
    ResolvedModels,
)
from storyreel.weights_policy import PICKLE_REFUSAL

MARKER = ".storyreel-complete.json"
MODELS_TOML = "models.toml"
CONFIG_SUFFIXES = (".json", ".txt")  # configs, tokenizer vocabularies and merges, preprocessor configs
WEIGHTS_SUFFIX = ".safetensors"
INDEX_SUFFIX = ".safetensors.index.json"
# the weights files diffusers and transformers load from a component folder (other .safetensors files beside
# them, such as a LoRA in a motion adapter's repository, are not the component's)
STANDARD_WEIGHTS = re.compile(r"^(diffusion_pytorch_model|model)([.-].*)?\.safetensors$")
# weights files that are not the plain full-precision ones
VARIANT_WEIGHTS = re.compile(r"\.(fp16|bf16|fp32)\.|non[_-]?ema|(^|[._])ema\.", re.IGNORECASE)


class FetchError(ModelLoadError):
    """A component that cannot be fetched; the message names it, the repository and what to do."""


@dataclass(frozen=True)
class FetchItem:
    """One folder of DIR and how it is filled.

    ``kind``: ``snapshot`` (the files of ``subfolders`` of the hub repository ``repo_id``, and the single
    ``files`` named), ``file`` (one hub file ``filename``) or ``generated`` (the seeded weights of ``parts`` of the
    preset ``preset``).
    """

    folder: str
    kind: str
    repo_id: str | None = None
    revision: str | None = None
    subfolders: tuple[str, ...] = ()
    filename: str | None = None
    parts: tuple[str, ...] = ()
    preset: str | None = None
    files: tuple[str, ...] = ()

    def request(self) -> dict:
        """What the marker records: a complete folder of another request is fetched again."""
        return {"kind": self.kind, "repo_id": self.repo_id, "revision": self.revision or None,
                "subfolders": list(self.subfolders), "filename": self.filename, "parts": list(self.parts),
                "preset": self.preset, **({"files": list(self.files)} if self.files else {})}

    def describe(self) -> str:
        if self.kind == "generated":
            return f"the {self.preset} preset's {', '.join(self.parts)}"
        where = self.repo_id + (f"/{self.filename}" if self.filename else "")
        return where + (f"@{self.revision}" if self.revision else "")


@dataclass
class FetchPlan:
    """What to fetch (``items``) and what ``models.toml`` says (``preset``, ``components`` values in order)."""

    preset: str
    items: list[FetchItem] = field(default_factory=list)
    components: dict[str, object] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass
class FetchReport:
    """What a fetch did: folders fetched, folders already complete, the ``models.toml`` written."""

    fetched: list[str]
    skipped: list[str]
    models_toml: Path
    notes: list[str]


# -- the plan -------------------------------------------------------------------------------------------
def _base_prefix(source: ComponentSource, part: str) -> str | None:
    """The folder of an SD1.5 layout that ``source`` (part ``part`` of a base) lives in ("" at the root), or None
    when it is not such a part."""
    subfolder = source.subfolder or ""
    if source.kind != "hub" or not (subfolder == part or subfolder.endswith(f"/{part}")):
        return None
    return subfolder[: -len(part)].rstrip("/")


def plan_fetch(resolved: ResolvedModels) -> FetchPlan:
    """The folders to fill for ``resolved`` and the ``models.toml`` values that point at them."""
    sources = resolved.sources
    plan = FetchPlan(resolved.preset)
    generated = tuple(name for name in RENDER_PARTS if sources[name].kind in ("tiny", "random"))
    handled = set(generated)
    # "base" names a folder in the SD1.5 layout; a part given otherwise has its own key, which wins over it
    if any(part in generated for part in BASE_PARTS):
        plan.items.append(FetchItem("base", "generated", parts=tuple(p for p in BASE_PARTS if p in generated),
                                    preset=resolved.preset))
        plan.components["base"] = "base"
    for name in generated:
        if name not in BASE_PARTS:
            plan.items.append(FetchItem(name, "generated", parts=(name,), preset=resolved.preset))
            plan.components[name] = name
    from_base = {part: sources[part] for part in BASE_PARTS
                 if sources[part].key in (None, "base") and _base_prefix(sources[part], part) is not None}
    groups = {(s.location, s.revision, _base_prefix(s, part)) for part, s in from_base.items()}
    if from_base and len(groups) == 1:  # the parts of one SD1.5 repository
        location, revision, prefix = groups.pop()
        plan.items.append(FetchItem("base", "snapshot", repo_id=location, revision=revision,
                                    subfolders=tuple(f"{prefix}/{part}" if prefix else part for part in from_base)))
        plan.components["base"] = f"base/{prefix}" if prefix else "base"
        handled |= set(from_base)
    for name in RENDER_PARTS:
        source = sources[name]
        if name in handled or source.kind in ("tiny", "random", "builtin"):
            continue
        key = "base" if source.is_single_file and name in BASE_PARTS else name
        if key in plan.components:
            continue  # one checkpoint file gives several parts
        if source.kind == "hub":
            plan.items.append(FetchItem(key, "snapshot", repo_id=source.location, revision=source.revision,
                                        subfolders=(source.subfolder or "",)))
            plan.components[key] = f"{key}/{source.subfolder}" if source.subfolder else key
        elif source.kind == "hub_file":
            plan.items.append(FetchItem(key, "file", repo_id=source.location, revision=source.revision,
                                        filename=source.filename))
            plan.components[key] = f"{key}/{source.filename}"
        else:  # a local folder or file: named where it is
            plan.components[source.key or key] = source.location
    if resolved.lora is not None:
        lora = resolved.lora
        if lora.kind == "hub_file":
            plan.items.append(FetchItem("lora", "file", repo_id=lora.location, revision=lora.revision,
                                        filename=lora.filename))
            plan.components["lora"] = f"lora/{lora.filename}"
        else:
            plan.components["lora"] = lora.location
        plan.components["lora_scale"] = resolved.lora_scale
    depth = resolved.depth_model
    if Path(depth).is_absolute():
        plan.components["depth_model"] = depth
    elif HUB_ID.match(depth.partition("@")[0]):
        repo, _, revision = depth.partition("@")
        org, name, *rest = repo.split("/")
        plan.items.append(FetchItem("depth_model", "snapshot", repo_id=f"{org}/{name}", revision=revision or None,
                                    subfolders=("/".join(rest),)))
        plan.components["depth_model"] = "/".join(["depth_model", *rest])
    elif depth in presets.DEPTH_MODEL_REPOS:  # a named depth model of the structure stage (dpt-hybrid, ...)
        repo, revision = presets.DEPTH_MODEL_REPOS[depth]
        plan.items.append(FetchItem("depth_model", "snapshot", repo_id=repo, revision=revision, subfolders=("",)))
        plan.components["depth_model"] = "depth_model"
    else:  # tiny and the *-random depth models are built in code
        plan.components["depth_model"] = depth
    return plan


# -- fetching -------------------------------------------------------------------------------------------
def plan_extras(plan: FetchPlan, extras) -> None:
    """Add the models of ``fetch-models --with`` (:data:`storyreel.models.hub_models.EXTRAS`) to ``plan``: a folder
    each, and the TOML key that points ``render-story`` at it (``sparsectrl``, ``ip_adapter``, ``i2vgen``)."""
    for name in extras:
        if name == "sparsectrl":
            plan.items.append(FetchItem("sparsectrl", "snapshot", repo_id=presets.SPARSECTRL_RGB_ID, subfolders=("",)))
            plan.components["sparsectrl"] = "sparsectrl"
        elif name == "i2vgen-xl":
            plan.items.append(FetchItem("i2vgen", "snapshot", repo_id=presets.I2VGEN_XL_ID,  # not the root's .pth
                                        subfolders=presets.I2VGEN_PARTS, files=("model_index.json",)))
            plan.components["i2vgen"] = "i2vgen"
        else:  # ip-adapter, ip-adapter-plus, ip-adapter-plus-face: h94's layout, one adapter file and the encoder
            variant = name.removeprefix("ip-adapter").lstrip("-") or "base"
            folder = presets.IP_ADAPTER_FOLDER
            plan.items.append(FetchItem(f"ip_adapter_{variant.replace('-', '_')}", "snapshot",
                                        repo_id=presets.IP_ADAPTER_ID, subfolders=(f"{folder}/image_encoder",),
                                        files=(f"{folder}/{presets.IP_ADAPTER_FILES[variant]}",)))
            plan.components["ip_adapter"] = f"ip_adapter_{variant.replace('-', '_')}"
            plan.notes.append(f"the IP-Adapter in models.toml is the {variant} variant: render with "
                              f"--ip-adapter-variant {variant}")


def is_complete(folder: Path, item: FetchItem) -> bool:
    """True when ``folder`` holds a finished fetch of ``item`` (its marker, written last, says so)."""
    try:
        marker = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return marker.get("request") == item.request()


def choose_files(repo_files: list[str], subfolder: str, repo_id: str) -> list[str]:
    """The files of one folder of a repository to fetch: configs and tokenizer files, and the full-precision
    ``.safetensors`` weights (``diffusion_pytorch_model`` / ``model`` ones where there are such, with their
    index), else the fp16 variant; :class:`FetchError` when there are no safetensors weights but there are
    other weights (pickles only)."""
    prefix = f"{subfolder.strip('/')}/" if subfolder.strip("/") else ""
    inside = [f for f in repo_files if f.startswith(prefix) and "/" not in f[len(prefix):]]
    weights = [f for f in inside if f.endswith(WEIGHTS_SUFFIX)]
    weights = [f for f in weights if STANDARD_WEIGHTS.match(Path(f).name)] or weights
    plain = [f for f in weights if not VARIANT_WEIGHTS.search(Path(f).name)]
    chosen = plain or [f for f in weights if ".fp16." in Path(f).name]
    fp16 = bool(chosen) and not plain
    indexes = [f for f in inside if f.endswith(INDEX_SUFFIX)
               and ((".fp16." in Path(f).name) if fp16 else not VARIANT_WEIGHTS.search(Path(f).name))]
    configs = [f for f in inside if f.endswith(CONFIG_SUFFIXES) and not f.endswith(INDEX_SUFFIX)]
    if not chosen:
        others = [f for f in inside if Path(f).suffix.lower() in (".bin", ".ckpt", ".pt", ".pth", ".pkl")]
        if others:
            raise FetchError(f"'{repo_id}' holds no .safetensors weights in '{subfolder or '/'}' (only "
                             f"{', '.join(Path(f).name for f in others[:3])}): {PICKLE_REFUSAL}, so only safetensors "
                             "are loaded")
        if not configs:
            raise FetchError(f"'{repo_id}' has no folder '{subfolder}' with model files")
    return sorted({*configs, *chosen, *indexes})


def _hub_error(item: FetchItem, exc: BaseException) -> FetchError:
    return FetchError(f"cannot fetch {item.folder} from {item.describe()}: {first_line(exc)}. Check the id and the "
                      "network (HF_HUB_OFFLINE must be unset; a gated repository needs `hf auth login`); rerun "
                      "fetch-models to resume")


def _fetch_snapshot(item: FetchItem, folder: Path, listings: dict) -> list[str]:
    listing_key = (item.repo_id, item.revision)
    try:
        if listing_key not in listings:
            listings[listing_key] = list_repo_files(item.repo_id, revision=item.revision)
        files = [name for subfolder in item.subfolders for name in choose_files(listings[listing_key], subfolder,
                                                                                  item.repo_id)]
        absent = [name for name in item.files if name not in listings[listing_key]]
        if absent:
            raise FetchError(f"'{item.repo_id}' holds no {', '.join(absent)}")
        files += [name for name in item.files if name not in files]
        snapshot_download(item.repo_id, revision=item.revision, allow_patterns=files, local_dir=folder)
    except FetchError:
        raise
    except Exception as exc:  # network, authorisation, missing repository: reported alike, a rerun resumes
        raise _hub_error(item, exc) from exc
    missing = [name for name in files if not (folder / name).is_file()]
    if missing:
        raise FetchError(f"fetching {item.folder} from {item.describe()} left out {', '.join(missing[:3])}; rerun "
                         "fetch-models to resume")
    return files


def _fetch_file(item: FetchItem, folder: Path) -> list[str]:
    try:
        hf_hub_download(item.repo_id, item.filename, revision=item.revision, local_dir=folder)
    except Exception as exc:  # network, authorisation, missing file: reported alike, a rerun resumes
        raise _hub_error(item, exc) from exc
    if not (folder / item.filename).is_file():
        raise FetchError(f"fetching {item.folder} from {item.describe()} left no file {item.filename}")
    return [item.filename]


def _write_generated(item: FetchItem, folder: Path, built: dict) -> list[str]:
    """Save the seeded weights of ``item.parts`` (built once per fetch) with ``save_pretrained`` (safetensors)."""
    from storyreel.models import architectures

    if item.preset not in built:
        build = (architectures.build_tiny_components if presets.PRESETS[item.preset].render == "tiny"
                 else architectures.build_random_components)
        built[item.preset] = build(merge=False)
    for part in item.parts:
        target = folder / part if item.folder == "base" else folder
        built[item.preset][part].save_pretrained(str(target))
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def models_toml_text(plan: FetchPlan, command_line: str) -> str:
    """The ``models.toml`` of a plan (TOML strings are written as JSON strings, which TOML reads alike)."""
    lines = [f"# Written by {command_line}: the components of preset '{plan.preset}' in the folders beside this",
             "# file (relative paths are relative to it). Use it with --model-config; the preset comes with it.",
             f"preset = {json.dumps(plan.preset)}", "", "[components]"]
    for key, value in plan.components.items():
        lines.append(f"{key} = {json.dumps(value) if isinstance(value, str) else repr(float(value))}")
    return "\n".join(lines) + "\n"


def fetch_models(specification: ModelSpecification, out: Path | str, progress: bool = True,
                 echo: Callable[[str], None] = print, extras=()) -> FetchReport:
    """Fetch every component of ``specification`` (and the ``extras`` of ``--with``) into folders of ``out`` and
    write ``out/models.toml`` (see the module docstring). The specification is validated before anything is
    fetched."""
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    resolved = specification.validate()
    plan = plan_fetch(resolved)
    plan_extras(plan, extras)
    out = Path(out).expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise OptionError("--out", f"'{out}' is a file, not a folder")
    pending = [item for item in plan.items if item.kind != "generated" and not is_complete(out / item.folder, item)]
    reason = hub_access.unreachable_reason() if pending else None  # the hub asked once, not per file
    if reason is not None:
        raise FetchError(f"{reason}: cannot fetch " + "; ".join(f"{item.folder} ({item.describe()})"
                                                                for item in pending) + "; rerun where the hub can "
                         "be reached (complete folders are kept)")
    fetched, skipped, built, listings = [], [], {}, {}
    quiet_before = are_progress_bars_disabled()
    if not progress:
        disable_progress_bars()
    try:
        for item in plan.items:
            folder = out / item.folder
            if is_complete(folder, item):
                skipped.append(item.folder)
                echo(f"{item.folder}: complete ({item.describe()}), skipped")
                continue
            if (folder / MARKER).exists() or (item.kind == "generated" and folder.exists()):
                shutil.rmtree(folder)  # another request's files, or generated files that were cut short
            folder.mkdir(parents=True, exist_ok=True)
            echo(f"{item.folder}: fetching {item.describe()}")
            if item.kind == "snapshot":
                files = _fetch_snapshot(item, folder, listings)
            elif item.kind == "file":
                files = _fetch_file(item, folder)
            else:
                files = _write_generated(item, folder, built)
            atomic_files.write_json(folder / MARKER, {"request": item.request(), "files": files})  # last
            fetched.append(item.folder)
    finally:
        if not progress and not quiet_before:
            enable_progress_bars()
    command_line = "fetch-models " + (resolved.preset if specification.config_file is None else
                                      f"--model-config {specification.config_file}")
    toml = out / MODELS_TOML
    atomic_files.write_text(toml, models_toml_text(plan, command_line))
    for note in plan.notes:
        echo(f"note: {note}")
    return FetchReport(fetched, skipped, toml, plan.notes)


# -- the hub cache ---------------------------------------------------------------------------------------
def cache_files(model: HubModel, repo_files: list[str]) -> list[str]:
    """The files of ``model.required`` to fetch, chosen from the repository's listing: an exact name as it is, a
    weights pattern (``unet/diffusion_pytorch_model*.safetensors``) through :func:`choose_files` (the plain
    full-precision file with its index, else the fp16 variant: never every variant the pattern matches), any
    other pattern by matching. :class:`FetchError` names a required file the repository does not hold."""
    chosen: list[str] = []
    for pattern in model.required:
        if not any(c in pattern for c in "*?["):
            found = [pattern] if pattern in repo_files else []
        elif pattern.endswith(WEIGHTS_SUFFIX):
            folder = pattern.rpartition("/")[0]
            found = [f for f in choose_files(repo_files, folder, model.repo_id)
                     if fnmatch.fnmatch(f, pattern) or (f.endswith(INDEX_SUFFIX) and f.startswith(folder))]
        else:
            found = fnmatch.filter(repo_files, pattern)
        if not found:
            raise FetchError(f"'{model.label}' holds no file '{pattern}' (needed for {model.what})")
        chosen += [f for f in found if f not in chosen]
    return chosen


def fill_hub_cache(models: list[HubModel], progress: bool = True, echo: Callable[[str], None] = print) -> list[str]:
    """Download ``models`` into the hub cache (``HF_HUB_CACHE``), where every command looks first; models already
    complete there are skipped. The hub is asked once before anything (an offline machine learns it at once).
    Returns the labels of the models fetched."""
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    wanted = hub_access.merge(models)
    missing = [model for model in wanted if not hub_access.is_cached(model)]
    for model in wanted:
        if model not in missing:
            echo(f"{model.label}: in the hub cache, skipped")
    if not missing:
        return []
    reason = hub_access.unreachable_reason()
    if reason is not None:
        raise FetchError(f"{reason}: cannot fetch " + "; ".join(f"{m.label} ({m.what})" for m in missing)
                         + ". Run fetch-models where the hub can be reached, then copy the hub cache "
                         f"({hub_access.cache_folder()}) here or set HF_HUB_CACHE to it")
    quiet_before = are_progress_bars_disabled()
    if not progress:
        disable_progress_bars()
    fetched = []
    try:
        for model in missing:
            item = FetchItem(model.repo_id, "snapshot", repo_id=model.repo_id, revision=model.revision)
            try:
                files = cache_files(model, list_repo_files(model.repo_id, revision=model.revision))
                echo(f"{model.label}: fetching {len(files)} files ({model.what})")
                snapshot_download(model.repo_id, revision=model.revision, allow_patterns=files)
            except FetchError:
                raise
            except Exception as exc:  # network, authorisation, missing repository: reported alike, a rerun resumes
                raise _hub_error(item, exc) from exc
            still = hub_access.missing_files(model)
            if still:
                raise FetchError(f"fetching {model.label} left out {', '.join(still[:3])}; rerun fetch-models to "
                                 "resume")
            fetched.append(model.label)
    finally:
        if not progress and not quiet_before:
            enable_progress_bars()
    return fetched


@command("fetch-models")
@click.argument("items", nargs=-1, metavar="[PRESET] [REPO[@REVISION][:PATTERN,...] ...]")
@model_options(preset_option=False)
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Folder to fetch into: one folder per component, and models.toml pointing at them.")
@click.option("--with", "extras", multiple=True, type=click.Choice(tuple(EXTRAS)),
              help="Also fetch a model some stories add: sparsectrl (keyframe shots, generated transitions), "
                   "ip-adapter / ip-adapter-plus / ip-adapter-plus-face (characters' reference_images), i2vgen-xl "
                   "(--animator i2vgen-xl); repeatable. models.toml then names it (sparsectrl, ip_adapter, i2vgen).")
@click.option("--hub-cache", is_flag=True,
              help="Fetch into the hub cache instead (HF_HUB_CACHE, where every command looks first): PRESET's "
                   "models (its render components, depth model and CLIP), or the REPO values an offline error "
                   "printed.")
@quiet_option("No download progress bars.")
def main(items, out, extras, hub_cache, quiet, **options):
    """Download every component of PRESET (default: the --model-config file's, else sd15) into --out, for
    offline use with --model-config OUT/models.toml; or, with --hub-cache, into the hub cache. Reruns resume and
    skip complete components."""
    preset, repos = _split_items(items, hub_cache)
    if hub_cache:
        if out is not None:
            raise click.UsageError("give --out or --hub-cache, not both")
        if repos:
            models = repos
        else:
            specification = model_specification(models=preset, **options)
            resolved = specification.validate()
            models = render_models(resolved) + clip_models(resolved.preset)
        models += extra_models(extras)
        fetched = fill_hub_cache(models, progress=not quiet, echo=click.echo)
        click.echo(f"hub cache {hub_access.cache_folder()}: {len(fetched)} fetched, "
                   f"{len(hub_access.merge(models)) - len(fetched)} already there")
        return
    if out is None:
        raise click.UsageError("give --out DIR (or --hub-cache)")
    specification = model_specification(models=preset, **options)
    report = fetch_models(specification, out, progress=not quiet, echo=click.echo, extras=extras)
    click.echo(f"wrote {report.models_toml} ({len(report.fetched)} fetched, {len(report.skipped)} already complete); "
               f"use --model-config {report.models_toml}")


def _split_items(items: tuple[str, ...], hub_cache: bool) -> tuple[str | None, list[HubModel]]:
    preset, repos = None, []
    for item in items:
        if item in presets.PRESET_NAMES and preset is None and not repos:
            preset = item
            continue
        if "/" not in item:
            raise click.BadParameter(f"'{item}' is neither a preset ({', '.join(presets.PRESET_NAMES)}) nor a "
                                     "repository ORG/NAME", param_hint="ITEMS")
        if not hub_cache:
            raise click.UsageError(f"'{item}': repositories are fetched with --hub-cache")
        try:
            repos.append(hub_access.parse_fetch_argument(item))
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="ITEMS") from None
    if preset is not None and repos:
        raise click.UsageError("give a PRESET or repositories, not both")
    return preset, repos


if __name__ == "__main__":
    main()
