"""``storyreel-doctor``: one screen that says what this machine can do, and whether ``make demo`` can run here.

Each check is a small function returning a :class:`Check` (name, ``ok`` / ``warn`` / ``fail``, a one-line
detail and, for warn and fail, the fix): Python, torch and the accelerator (CUDA devices, MPS or CPU only), the
CPU count, PyAV with the H.264 encoder :func:`storyreel.video_files.write_mp4` uses (``libx264``, tried with one
real encode), decord, an ``ffmpeg`` binary, faiss (GPU or not), Ray, free disk space where outputs go and in the
hub cache, the packages of the design, the models of every preset (how many of its hub models are in the local
hub cache, :mod:`storyreel.models.hub_models`; the toy weights checked against their manifest), the hub
(:func:`storyreel.hub_access.hub_reachable`) and the LLM endpoint of ``plan-story`` when one is configured.

A ``fail`` in a check that ``make demo`` needs (:attr:`Check.demo`: the packages, PyAV with libx264, faiss, the
toy weights, disk space for the outputs) makes the command exit with code 1; the demo needs no GPU, no network,
no Ray, no decord and no real model weights, so those are at most ``warn``. The last line says which.

It lives in the model zoo, not in ``storyreel/`` itself, because it reads the preset registry and the toy
weights (the shared home imports no model zoo module). Everything heavy is imported inside the checks, so
``storyreel-doctor --help`` is fast.
"""

from __future__ import annotations

import importlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import click

from storyreel.command_line import command

OK, WARN, FAIL = "ok", "warn", "fail"
MIN_PYTHON = (3, 11)
DISK_WARN_BYTES = 5 * 10**9
DISK_FAIL_BYTES = 1 * 10**9
LLM_PROBE_TIMEOUT_SECONDS = 3.0
# (distribution, module) of the packages the design uses; torch, PyAV and faiss have checks of their own
DESIGN_PACKAGES = (
    ("diffusers", "diffusers"),
    ("transformers", "transformers"),
    ("open_clip_torch", "open_clip"),
    ("timm", "timm"),
    ("peft", "peft"),
    ("compel", "compel"),
    ("safetensors", "safetensors"),
    ("huggingface_hub", "huggingface_hub"),
    ("pydantic", "pydantic"),
)
ENV_LLM_BASE_URL = ("STORYREEL_LLM_BASE_URL", "OPENAI_BASE_URL")  # as storyboard.planner reads them
ENV_LLM_MODEL = "STORYREEL_LLM_MODEL"
ENV_LLM_API_KEY = ("STORYREEL_LLM_API_KEY", "OPENAI_API_KEY")
ENV_LLM_MODEL_PATH = "STORYREEL_LLM_MODEL_PATH"
INSTALL_FIX = "pip install -e . (in the storyreel checkout; `make install` does it into .venv)"


@dataclass(frozen=True)
class Check:
    """One line of the doctor's table; ``demo``: ``make demo`` needs this check not to fail."""

    name: str
    status: str
    detail: str
    fix: str = ""
    demo: bool = False


def format_size(size: float) -> str:
    """Bytes in decimal units: ``0 B``, ``812 KB``, ``4.3 GB``."""
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000:
            return f"{size:.0f} {unit}" if unit == "B" or size >= 100 else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


# -- the machine -----------------------------------------------------------------------------------------
def check_python() -> Check:
    version = platform.python_version()
    if sys.version_info[:2] < MIN_PYTHON:
        return Check("python", FAIL, f"{version} ({sys.executable})",
                     f"use Python >= {'.'.join(map(str, MIN_PYTHON))}", demo=True)
    return Check("python", OK, f"{version} ({sys.executable})", demo=True)


def check_cpus() -> Check:
    count = os.cpu_count() or 0
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else count
    detail = f"{count} cores" + (f" ({usable} usable by this process)" if usable != count else "")
    return Check("cpu", OK, detail)


def check_torch() -> Check:
    try:
        import torch
    except ImportError as exc:
        return Check("torch", FAIL, f"not importable ({_first_line(exc)})", INSTALL_FIX, demo=True)
    built = f", built for CUDA {torch.version.cuda}" if torch.version.cuda else ", CPU build"
    return Check("torch", OK, f"{torch.__version__}{built}", demo=True)


def cuda_devices() -> list[tuple[str, int]]:
    """(name, total memory in bytes) of every CUDA device torch sees (none without torch)."""
    try:
        import torch
    except ImportError:
        return []
    if not torch.cuda.is_available():
        return []
    devices = []
    for index in range(torch.cuda.device_count()):
        properties = torch.cuda.get_device_properties(index)
        devices.append((properties.name, properties.total_memory))
    return devices


def check_accelerator() -> Check:
    try:
        import torch
    except ImportError:
        return Check("accelerator", WARN, "unknown (torch is not importable)", INSTALL_FIX)
    devices = cuda_devices()
    if devices:
        names = "; ".join(f"cuda:{i} {name} ({format_size(memory)})" for i, (name, memory) in enumerate(devices))
        return Check("accelerator", OK, f"{len(devices)} CUDA device{'s' if len(devices) > 1 else ''}: {names}")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return Check("accelerator", OK, "Apple MPS (no CUDA device)")
    why = "no CUDA device visible" if torch.version.cuda else "torch is a CPU build"
    return Check("accelerator", WARN, f"CPU only ({why}): tiny and toy run, real presets are very slow",
                 "fine for make demo; render with the real presets on a machine with a CUDA GPU (and a CUDA build "
                 "of torch)")


# -- video ----------------------------------------------------------------------------------------------
def check_pyav() -> Check:
    """PyAV and the encoder :func:`storyreel.video_files.write_mp4` uses (libx264), tried with a real encode."""
    try:
        import av
    except ImportError as exc:
        return Check("pyav", FAIL, f"not importable ({_first_line(exc)}): no mp4 can be written",
                     "pip install av (its wheels bundle FFmpeg with libx264)", demo=True)
    ffmpeg = getattr(av, "ffmpeg_version_info", "")
    version = f"PyAV {av.__version__}" + (f" (FFmpeg {ffmpeg})" if ffmpeg else "")
    try:
        av.codec.Codec("libx264", "w")
    except Exception as exc:  # noqa: BLE001 - av raises its own error types for an unknown codec; any means none
        other = _other_h264_encoder(av)
        found = f"; its H.264 encoder is {other}, but storyreel writes with libx264" if other else ""
        return Check("pyav", FAIL, f"{version}: no libx264 encoder ({_first_line(exc)}){found}",
                     "pip install --force-reinstall av (the PyPI wheels bundle libx264)", demo=True)
    try:
        _encode_probe()
    except Exception as exc:  # noqa: BLE001 - any failure of the test encode means no mp4 here; it is reported
        return Check("pyav", FAIL, f"{version}: libx264 is there but a test encode failed ({_first_line(exc)})",
                     "pip install --force-reinstall av", demo=True)
    return Check("pyav", OK, f"{version}, H.264 encoder libx264 (test encode ok)", demo=True)


def _other_h264_encoder(av) -> str:
    try:
        return av.codec.Codec("h264", "w").name
    except Exception:  # noqa: BLE001 - no H.264 encoder at all, whatever av raises for it
        return ""


def _encode_probe() -> None:
    """Two 64x64 frames written the way every render writes its mp4."""
    import numpy as np

    from storyreel.video_files import write_mp4

    with tempfile.TemporaryDirectory(prefix="storyreel-doctor-") as folder:
        path = write_mp4(np.zeros((2, 64, 64, 3), dtype=np.uint8), Path(folder) / "probe.mp4", fps=8)
        if path.stat().st_size == 0:
            raise RuntimeError("the mp4 is empty")


def check_decord() -> Check:
    try:
        import decord
    except Exception as exc:  # noqa: BLE001 - a missing or broken decord (ImportError, a bad shared library)
        return Check("decord", WARN, f"not importable ({_first_line(exc)}): clips are decoded with PyAV instead",
                     "pip install decord (optional: PyAV is the fallback; no wheels for some platforms)")
    return Check("decord", OK, f"{decord.__version__}")


def check_ffmpeg_binary() -> Check:
    path = shutil.which("ffmpeg")
    if path is None:
        return Check("ffmpeg", OK, "no ffmpeg on PATH (not needed: PyAV has its own FFmpeg libraries)")
    try:
        output = subprocess.run([path, "-version"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        return Check("ffmpeg", OK, f"{path} (does not run: {_first_line(exc)}; not needed)")
    first = output.splitlines()[0] if output else "version unknown"
    return Check("ffmpeg", OK, f"{path}: {first} (informational)")


# -- search and engines ---------------------------------------------------------------------------------
def check_faiss(cuda_count: int) -> Check:
    try:
        import faiss
    except ImportError as exc:
        return Check("faiss", FAIL, f"not importable ({_first_line(exc)})", INSTALL_FIX + " (faiss-cpu)", demo=True)
    version = getattr(faiss, "__version__", "version unknown")
    gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    if gpus:
        return Check("faiss", OK, f"{version}, GPU faiss ({gpus} GPU{'s' if gpus > 1 else ''})", demo=True)
    if cuda_count:
        return Check("faiss", WARN, f"{version}, CPU faiss on a machine with {cuda_count} CUDA device(s)",
                     "pip install -e '.[gpu]' (faiss-gpu) for GPU search; CPU search works", demo=True)
    return Check("faiss", OK, f"{version}, CPU faiss (no GPU index)", demo=True)


def check_ray() -> Check:
    try:
        import ray
    except Exception as exc:  # noqa: BLE001 - a missing or broken Ray; only --engine ray needs it
        return Check("ray", WARN, f"not importable ({_first_line(exc)}): only render-story --engine ray needs it",
                     "pip install -e '.[ray]'")
    return Check("ray", OK, f"{ray.__version__} (render-story --engine ray)")


def check_package(distribution: str, module: str) -> Check:
    from importlib import metadata

    name = f"package {distribution}"
    try:
        importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001 - missing, or installed but broken (a bad wheel raises anything)
        return Check(name, FAIL, f"not importable ({_first_line(exc)})", INSTALL_FIX, demo=True)
    try:
        version = metadata.version(distribution)
    except metadata.PackageNotFoundError:
        version = getattr(sys.modules[module], "__version__", "version unknown")
    return Check(name, OK, version, demo=True)


# -- disk -----------------------------------------------------------------------------------------------
def _existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_disk(name: str, path: Path, demo: bool, what: str) -> Check:
    """Free space at ``path`` (or its nearest existing parent): warn under 5 GB, fail under 1 GB."""
    where = _existing(path)
    try:
        free = shutil.disk_usage(where).free
    except OSError as exc:
        return Check(name, WARN, f"{path}: free space unknown ({_first_line(exc)})", "", demo=demo)
    note = "" if where == path.absolute() else " (not created yet)"
    detail = f"{format_size(free)} free at {path}{note}"
    if free < DISK_FAIL_BYTES:
        return Check(name, FAIL, detail, f"free space for {what} (at least {format_size(DISK_WARN_BYTES)})",
                     demo=demo)
    if free < DISK_WARN_BYTES:
        return Check(name, WARN, detail, f"free space for {what} (at least {format_size(DISK_WARN_BYTES)})",
                     demo=demo)
    return Check(name, OK, detail, demo=demo)


# -- models ---------------------------------------------------------------------------------------------
def check_toy_weights() -> Check:
    """Every file the toy weights' manifest lists, checked against its sha256."""
    from storyreel.models import toy_weights

    name, fix = "models: toy", "git checkout storyreel/models/toy_weights (or train them again: make toy-world)"
    folder = Path(toy_weights.TOY_WEIGHTS_DIR)
    try:
        expected = toy_weights.expected_sha256(folder)
    except toy_weights.ToyWeightsError as exc:
        return Check(name, FAIL, str(exc), fix, demo=True)
    if not expected:
        return Check(name, FAIL, f"{folder / toy_weights.MANIFEST_FILE} lists no files", fix, demo=True)
    bad = []
    for relative in sorted(expected):
        try:
            toy_weights.verified_file(relative, folder)
        except toy_weights.ToyWeightsError:
            bad.append(f"{relative} ({'sha256 differs' if (folder / relative).is_file() else 'missing'})")
    if bad:
        return Check(name, FAIL, f"{len(bad)} of {len(expected)} toy weights files are not the trained ones: "
                     + ", ".join(bad), fix, demo=True)
    size = sum((folder / relative).stat().st_size for relative in expected)
    return Check(name, OK, f"toy weights verified: {len(expected)} files match {toy_weights.MANIFEST_FILE} "
                 f"({format_size(size)})", demo=True)


def check_preset(preset: str) -> Check:
    """How many of ``preset``'s hub models are in the local hub cache, and their size."""
    from storyreel import hub_access
    from storyreel.models import presets
    from storyreel.models.hub_models import preset_models

    name = f"models: {preset}"
    if preset == presets.TINY:
        return Check(name, OK, "built in code (small seeded random weights): needs no download")
    if preset == presets.TOY:
        return check_toy_weights()
    try:
        models = hub_access.merge(preset_models(preset))
    except Exception as exc:  # noqa: BLE001 - a preset this install cannot resolve is reported, not fatal
        return Check(name, WARN, f"its models cannot be listed ({_first_line(exc)})", INSTALL_FIX)
    if not models:
        return Check(name, OK, "needs no hub models (weights built in code)")
    cached = [model for model in models if hub_access.is_cached(model)]
    size = sum(hub_access.cached_size(model) for model in cached)
    detail = f"{len(cached)} of {len(models)} hub models cached ({format_size(size)})"
    if len(cached) == len(models):
        return Check(name, OK, detail)
    if cached:
        missing = [model.label for model in models if model not in cached]
        detail += f"; missing: {', '.join(missing)}"
    return Check(name, WARN, detail, f"fetch-models {preset} --hub-cache (where the hub is reachable)")


def check_hub(offline: bool) -> Check:
    from storyreel import hub_access

    where = f"{hub_access.endpoint()}, cache {hub_access.cache_folder()}"
    fix = ("models come only from the hub cache: fetch them where the hub is reachable (fetch-models PRESET "
           "--hub-cache) and copy the cache here or set HF_HUB_CACHE; tiny and toy run offline")
    if offline:
        return Check("hub", OK, f"not probed (--offline): {where}")
    if hub_access.offline_requested():
        return Check("hub", WARN, f"offline mode is on (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE): {where}",
                     "unset HF_HUB_OFFLINE to let commands download; " + fix)
    if hub_access.hub_reachable(refresh=True):
        return Check("hub", OK, f"reachable: {where}")
    return Check("hub", WARN, f"unreachable ({hub_access.probe_problem()}): {where}", fix)


# -- the planner's LLM ----------------------------------------------------------------------------------
def _first_set(names: tuple[str, ...]) -> str | None:
    return next((os.environ[name] for name in names if os.environ.get(name)), None)


def probe_llm(base_url: str, timeout: float = LLM_PROBE_TIMEOUT_SECONDS) -> tuple[bool, str, list[str]]:
    """One ``GET {base_url}/models``: (answered, what happened, the model ids it listed)."""
    request = urllib.request.Request(base_url.rstrip("/") + "/models", method="GET")
    key = _first_set(ENV_LLM_API_KEY)
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    found: list[tuple[bool, str, list[str]]] = []

    def probe() -> None:
        try:
            with urllib.request.urlopen(request, timeout=timeout) as answer:
                body = answer.read(1_000_000)
            try:
                ids = [str(item.get("id")) for item in json.loads(body).get("data", []) if isinstance(item, dict)]
            except (ValueError, AttributeError):
                ids = []
            found.append((True, "answers", ids))
        except urllib.error.HTTPError as exc:
            found.append((True, f"answers with HTTP {exc.code}", []))
        except (OSError, ValueError) as exc:  # no name, refused, timed out (URLError is an OSError), a bad URL
            found.append((False, str(getattr(exc, "reason", exc)), []))

    # in a thread: the socket timeout does not cover a name lookup that hangs
    thread = threading.Thread(target=probe, name="storyreel-llm-probe", daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    return found[0] if found else (False, f"no answer within {timeout:g} s", [])


def check_llm(offline: bool) -> Check:
    """The OpenAI-compatible endpoint ``plan-story`` uses when one is configured (as storyboard.planner finds it)."""
    base_url = _first_set(ENV_LLM_BASE_URL)
    model = os.environ.get(ENV_LLM_MODEL)
    if not base_url:
        local = os.environ.get(ENV_LLM_MODEL_PATH)
        if local and not Path(local).expanduser().is_dir():
            return Check("llm", WARN, f"{ENV_LLM_MODEL_PATH}={local} is not a folder (plan-story --llm local)",
                         f"point {ENV_LLM_MODEL_PATH} at a transformers chat model folder, or unset it")
        extra = f"; --llm local would load {local}" if local else ""
        return Check("llm", OK, f"no endpoint configured: plan-story uses the rules planner{extra}")
    named = f"{base_url}, model {model or '(none)'}"
    if not model:
        return Check("llm", WARN, f"{named}: no model name",
                     f"set {ENV_LLM_MODEL} (or give plan-story --llm-model)")
    if offline:
        return Check("llm", OK, f"not probed (--offline): {named}")
    answered, what, ids = probe_llm(base_url)
    if not answered:
        return Check("llm", WARN, f"{named}: unreachable ({what}); plan-story falls back to the rules planner",
                     f"start the server or fix {ENV_LLM_BASE_URL[0]}")
    if what != "answers":
        return Check("llm", WARN, f"{named}: {what} to GET /models",
                     f"check the API key ({ENV_LLM_API_KEY[0]}) and the URL (it usually ends in /v1)")
    if ids and model not in ids:
        return Check("llm", WARN, f"{named}: answers, but does not list that model (it has {', '.join(ids[:5])})",
                     f"set {ENV_LLM_MODEL} to one of the models it serves")
    return Check("llm", OK, f"{named}: answers")


# -- the command ----------------------------------------------------------------------------------------
def _guarded(name: str, demo: bool, check: Callable[[], Check]) -> Check:
    try:
        return check()
    except Exception as exc:  # noqa: BLE001 - one check that breaks must not hide the others; it is reported
        return Check(name, FAIL if demo else WARN, f"the check itself failed ({_first_line(exc)})", INSTALL_FIX,
                     demo=demo)


def run_checks(offline: bool = False) -> list[Check]:
    """Every check, in the order of the table."""
    from storyreel import hub_access
    from storyreel.models.presets import PRESET_NAMES

    checks = [_guarded("python", True, check_python), _guarded("cpu", False, check_cpus),
              _guarded("torch", True, check_torch), _guarded("accelerator", False, check_accelerator)]
    cuda_count = len(cuda_devices()) if checks[2].status == OK else 0
    checks += [_guarded("pyav", True, check_pyav), _guarded("decord", False, check_decord),
               _guarded("ffmpeg", False, check_ffmpeg_binary),
               _guarded("faiss", True, lambda: check_faiss(cuda_count)), _guarded("ray", False, check_ray)]
    checks += [_guarded(f"package {dist}", True, lambda d=dist, m=module: check_package(d, m))
               for dist, module in DESIGN_PACKAGES]
    checks.append(_guarded("disk: outputs", True, lambda: check_disk(
        "disk: outputs", Path.cwd(), True, "the outputs (the current folder)")))
    checks.append(_guarded("disk: hub cache", False, lambda: check_disk(
        "disk: hub cache", hub_access.cache_folder(), False, "the models (the hub cache)")))
    checks += [_guarded(f"models: {preset}", False, lambda p=preset: check_preset(p)) for preset in PRESET_NAMES]
    checks.append(_guarded("hub", False, lambda: check_hub(offline)))
    checks.append(_guarded("llm", False, lambda: check_llm(offline)))
    return checks


def demo_blockers(checks: list[Check]) -> list[Check]:
    """The failed checks that ``make demo`` needs."""
    return [check for check in checks if check.demo and check.status == FAIL]


def verdict(checks: list[Check]) -> str:
    blockers = demo_blockers(checks)
    if not blockers:
        return "make demo can run here"
    return "make demo cannot run here: " + ", ".join(check.name for check in blockers)


def table(checks: list[Check]) -> list[str]:
    """The checks as aligned columns; the fix of a warn or fail on the line below its detail."""
    width = max(len("check"), *(len(check.name) for check in checks))
    lines = [f"{'check':<{width}}  status  detail"]
    for check in checks:
        lines.append(f"{check.name:<{width}}  {check.status:<6}  {check.detail}")
        if check.status != OK and check.fix:
            lines.append(f"{'':<{width}}  {'':<6}  fix: {check.fix}")
    return lines


@command("storyreel-doctor")
@click.option("--offline", "--no-network", "offline", is_flag=True,
              help="Make no network request: skip the hub probe and the LLM endpoint probe.")
@click.option("--json", "as_json", is_flag=True, help="Print the checks as JSON instead of the table.")
def main(offline: bool, as_json: bool) -> None:
    """Check this machine's set-up: Python, torch and the GPU, PyAV and H.264, faiss, Ray, disk space, the
    packages, the models of every preset, the hub and the LLM endpoint.

    Exits with code 0 when `make demo` can run here, 1 otherwise (the last line says which checks stop it).
    """
    checks = run_checks(offline=offline)
    blockers = demo_blockers(checks)
    if as_json:
        click.echo(json.dumps({"checks": [asdict(check) for check in checks], "demo_can_run": not blockers,
                               "verdict": verdict(checks)}, indent=2))
    else:
        for line in table(checks):
            click.echo(line)
        click.echo(verdict(checks))
    if blockers:
        sys.exit(1)
