"""The hub, asked at most once: the local cache first, one short probe, every missing model named at once.

Every command that may download (``build-index``, ``search-clips``, ``extract-depth``, ``train-character``,
``render-story``, ``evaluate-story``, ``fetch-models``) first lists the hub models it is going to load (a
:class:`HubModel` each: repository, revision, the files it needs) and calls :func:`ensure_available` before it
loads any of them:

* every model already in the local cache (``HF_HUB_CACHE`` / ``HF_HOME``, as the hub client resolves it) →
  the process goes offline (:func:`go_offline`): the libraries load from the cache and nothing touches the
  network, not even to ask whether a newer revision exists;
* some missing, and offline asked for (``HF_HUB_OFFLINE=1``, ``TRANSFORMERS_OFFLINE=1`` or the command's
  ``--offline``) or the hub not answering one request within :data:`PROBE_TIMEOUT_SECONDS` →
  :class:`HubUnavailableError` (exit code 2), naming every missing model and the one ``fetch-models --hub-cache``
  command that fetches them all, instead of the hub client's retries (five per file, with back-off: minutes);
* some missing and the hub answering → the libraries download them as usual.

``HF_ENDPOINT`` (the probe goes there), ``HF_TOKEN`` and the proxy variables are the hub client's own and apply
unchanged (the probe is one ``HEAD`` request made with the standard library, through the proxy variables).
This module imports only huggingface_hub (lazily) and the shared errors.
"""

from __future__ import annotations

import fnmatch
import os
import re
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from storyreel.errors import ModelLoadError

PROBE_TIMEOUT_SECONDS = 5.0
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
WEIGHTS = "*.safetensors"
DEFAULT_REQUIRED = ("config.json", WEIGHTS)
_COMMIT = re.compile(r"[0-9a-f]{40}")
_TRUE = ("1", "true", "yes", "on")
# modules that copy huggingface_hub.constants.HF_HUB_OFFLINE when they are imported
_OFFLINE_COPIES = ("diffusers.utils.hub_utils", "diffusers.loaders.lora_base", "diffusers.models.attention_dispatch",
                   "diffusers.utils.constants")

_probe_result: bool | None = None
_probe_problem = ""
_offline_for_the_cache = False  # go_offline ran because everything was cached, not because anyone asked


class HubUnavailableError(ModelLoadError):
    """Models that are neither in the local cache nor reachable; the message names all of them and the fix."""


@dataclass(frozen=True)
class HubModel:
    """One hub repository a command needs: ``required`` are glob patterns inside the repository, each matched by
    at least one cached file (``unet/config.json``, ``unet/*.safetensors``); ``what`` says what it is for."""

    repo_id: str
    what: str
    revision: str | None = None
    required: tuple[str, ...] = DEFAULT_REQUIRED

    @property
    def label(self) -> str:
        return self.repo_id + (f"@{self.revision}" if self.revision else "")

    def fetch_argument(self) -> str:
        """``REPO[@REVISION]:PATTERN,...``, what ``fetch-models --hub-cache`` takes (:func:`parse_fetch_argument`)."""
        return f"{self.label}:{','.join(self.required)}"


def parse_fetch_argument(text: str) -> HubModel:
    """The inverse of :meth:`HubModel.fetch_argument` (patterns optional: a config and safetensors weights)."""
    repo, _, patterns = text.partition(":")
    repo_id, _, revision = repo.partition("@")
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise ValueError(f"'{text}': expected ORG/NAME[@REVISION][:PATTERN,...]")
    required = tuple(p for p in patterns.split(",") if p) or DEFAULT_REQUIRED
    return HubModel(repo_id, "asked for", revision or None, required)


def merge(models: Iterable[HubModel]) -> list[HubModel]:
    """One entry per repository and revision, their patterns and purposes joined, in first-seen order."""
    merged: dict[tuple[str, str | None], HubModel] = {}
    for model in models:
        key = (model.repo_id, model.revision)
        old = merged.get(key)
        if old is None:
            merged[key] = model
            continue
        what = old.what if model.what in old.what.split("; ") else f"{old.what}; {model.what}"
        required = old.required + tuple(p for p in model.required if p not in old.required)
        merged[key] = HubModel(old.repo_id, what, old.revision, required)
    return list(merged.values())


# -- the environment -------------------------------------------------------------------------------------
def offline_requested() -> bool:
    """``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE`` is set to a true value (or :func:`go_offline` ran)."""
    return any(os.environ.get(name, "").strip().lower() in _TRUE for name in OFFLINE_VARIABLES)


def go_offline(asked: bool = True) -> None:
    """No hub request from here on, in this process and the ones it starts: sets ``HF_HUB_OFFLINE=1`` and the
    copies the hub client and diffusers made of it when they were imported. ``asked=False``: only because every
    model was cached (:func:`ensure_available` undoes it when a later model is missing)."""
    global _offline_for_the_cache
    if not asked and not offline_requested():
        _offline_for_the_cache = True
    elif asked:
        _offline_for_the_cache = False
    os.environ["HF_HUB_OFFLINE"] = "1"
    _set_offline_flags(True)


def _set_offline_flags(value: bool) -> None:
    from huggingface_hub import constants

    constants.HF_HUB_OFFLINE = value
    for name in _OFFLINE_COPIES:
        module = sys.modules.get(name)
        if module is not None and hasattr(module, "HF_HUB_OFFLINE"):
            module.HF_HUB_OFFLINE = value


def _back_online() -> None:
    """Undo a :func:`go_offline` that nobody asked for (a later model is missing from the cache)."""
    global _offline_for_the_cache
    if _offline_for_the_cache:
        os.environ.pop("HF_HUB_OFFLINE", None)
        _set_offline_flags(offline_requested())
        _offline_for_the_cache = False


def cache_folder() -> Path:
    """The hub cache the hub client uses (``HF_HUB_CACHE``, else ``HF_HOME/hub``, else ``~/.cache/huggingface/hub``)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def endpoint() -> str:
    from huggingface_hub import constants

    return constants.ENDPOINT.rstrip("/")


# -- the cache -------------------------------------------------------------------------------------------
def _repo_folder(repo_id: str, cache: Path | None = None) -> Path:
    return (cache or cache_folder()) / ("models--" + repo_id.replace("/", "--"))


def cached_snapshot(model: HubModel, cache: Path | None = None) -> Path | None:
    """The cached snapshot folder of ``model``'s revision (None: that revision was never fetched); no network."""
    root = _repo_folder(model.repo_id, cache)
    revision = model.revision or "main"
    if _COMMIT.fullmatch(revision):
        commit = revision
    else:
        ref = root / "refs" / revision
        if not ref.is_file():
            return None
        commit = ref.read_text().strip()
    snapshot = root / "snapshots" / commit
    return snapshot if snapshot.is_dir() else None


def _cached_files(snapshot: Path) -> list[Path]:
    # a link left dangling by an interrupted download is not a file
    return [path for path in snapshot.rglob("*") if path.is_file()]


def missing_files(model: HubModel, cache: Path | None = None) -> list[str]:
    """The patterns of ``model.required`` that no complete cached file matches (all of them when the snapshot
    is absent)."""
    snapshot = cached_snapshot(model, cache)
    if snapshot is None:
        return list(model.required)
    present = [path.relative_to(snapshot).as_posix() for path in _cached_files(snapshot)]
    return [pattern for pattern in model.required if not fnmatch.filter(present, pattern)]


def is_cached(model: HubModel, cache: Path | None = None) -> bool:
    return not missing_files(model, cache)


def cached_size(model: HubModel, cache: Path | None = None) -> int:
    """Bytes of the cached files of ``model``'s snapshot (0 when absent)."""
    snapshot = cached_snapshot(model, cache)
    return 0 if snapshot is None else sum(path.stat().st_size for path in _cached_files(snapshot))


# -- the hub ---------------------------------------------------------------------------------------------
def hub_reachable(timeout: float | None = None, refresh: bool = False) -> bool:
    """Whether the hub answers one request (any HTTP status) within ``timeout`` seconds (default
    :data:`PROBE_TIMEOUT_SECONDS`); asked once per process
    (``refresh`` asks again). False, without a request, when offline was asked for."""
    global _probe_result, _probe_problem
    if offline_requested():
        return False
    if _probe_result is not None and not refresh:
        return _probe_result
    timeout = PROBE_TIMEOUT_SECONDS if timeout is None else timeout
    answers: list[bool] = []
    problems: list[str] = []

    def probe() -> None:
        request = urllib.request.Request(f"{endpoint()}/api/models", method="HEAD")
        try:
            with urllib.request.urlopen(request, timeout=timeout):
                pass
            answers.append(True)
        except urllib.error.HTTPError:  # an answer, whatever its status
            answers.append(True)
        except (OSError, ValueError) as exc:  # no name, no route, refused, timed out (URLError is an OSError)
            problems.append(str(getattr(exc, "reason", exc)))
            answers.append(False)

    # in a thread: the socket timeout does not cover a name lookup that hangs
    thread = threading.Thread(target=probe, name="storyreel-hub-probe", daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    _probe_result = bool(answers and answers[0])
    _probe_problem = problems[0] if problems else ("" if answers else f"no answer within {timeout:g} s")
    return _probe_result


def probe_problem() -> str:
    """Why the last probe found the hub unreachable (a name lookup failure, a refusal, no answer in time)."""
    return _probe_problem


def unreachable_reason() -> str | None:
    """Why the hub cannot be asked (offline asked for, or the probe found it unreachable); None when it answers."""
    if offline_requested():
        return "offline mode is on (HF_HUB_OFFLINE or --offline)"
    if not hub_reachable():
        return f"the hub ({endpoint()}) cannot be reached ({probe_problem()})"
    return None


def fetch_command(models: Iterable[HubModel]) -> str:
    """The one command that fills the hub cache with ``models`` (run where the hub can be reached)."""
    return "fetch-models --hub-cache " + " ".join(f"'{model.fetch_argument()}'" for model in models)


def unavailable_message(missing: list[HubModel], reason: str) -> str:
    names = "; ".join(f"{model.label} ({model.what})" for model in missing)
    count = "1 model is" if len(missing) == 1 else f"{len(missing)} models are"
    return (f"{reason}, and {count} not in the local hub cache {cache_folder()}: {names}. Fetch them on a machine "
            f"that reaches the hub with: {fetch_command(missing)} (then copy that cache here, or set HF_HUB_CACHE "
            "to it); or point the command at local folders; or use --models tiny or toy")


def ensure_available(models: Iterable[HubModel]) -> list[HubModel]:
    """Check that every model can be had before any is loaded (see the module docstring); returns the models
    that will be downloaded (empty: everything is cached, and the process is now offline when any was asked).

    Raises :class:`HubUnavailableError` naming every missing model when the hub cannot be reached."""
    wanted = merge(models)
    missing = [model for model in wanted if not is_cached(model)]
    if not missing:
        if wanted:
            go_offline(asked=False)
        return []
    _back_online()
    reason = unreachable_reason()
    if reason is not None:
        raise HubUnavailableError(unavailable_message(missing, reason))
    return missing
