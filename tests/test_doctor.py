"""storyreel-doctor: this machine, a tampered toy weights file, a filled hub cache, --json, the LLM probe."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import threading
import types
from http.server import BaseHTTPRequestHandler, HTTPServer

import huggingface_hub.constants
import pytest
from click.testing import CliRunner

from storyreel import hub_access
from storyreel.models import doctor, toy_weights
from storyreel.models.hub_models import preset_models
from storyreel.models.presets import PRESET_NAMES

LLM_VARIABLES = ("STORYREEL_LLM_BASE_URL", "OPENAI_BASE_URL", "STORYREEL_LLM_MODEL", "STORYREEL_LLM_API_KEY",
                 "OPENAI_API_KEY", "STORYREEL_LLM_MODEL_PATH")


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """Offline (no probe), an empty hub cache in tmp_path, no LLM endpoint configured."""
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))  # read when it was imported
    for name in LLM_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return cache


def run_doctor(*args):
    return CliRunner().invoke(doctor.main, list(args), catch_exceptions=False)


def rows(output: str) -> dict[str, tuple[str, str]]:
    """check name → (status, detail) from the table."""
    found = {}
    for line in output.splitlines():
        match = re.match(r"^(\S(?:.*?\S)?)\s{2,}(ok|warn|fail)\s{2,}(.*)$", line)
        if match:
            found[match[1]] = (match[2], match[3])
    return found


def fill_cache(cache, model, commit):
    """A complete cached snapshot of ``model``: its ref, and one file per required pattern."""
    root = cache / ("models--" + model.repo_id.replace("/", "--"))
    ref = root / "refs" / (model.revision or "main")
    ref.parent.mkdir(parents=True, exist_ok=True)
    ref.write_text(commit)
    size = 0
    for pattern in model.required:
        path = root / "snapshots" / commit / pattern.replace("*", "")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x" * 1000)
        size += 1000
    return size


def test_the_doctor_on_this_machine_says_make_demo_can_run(hub_cache):
    result = run_doctor()
    assert result.exit_code == 0, result.output
    table = rows(result.output)
    import torch

    if not torch.cuda.is_available():
        status, detail = table["accelerator"]
        assert status != doctor.FAIL and detail.startswith("CPU only"), table["accelerator"]
    assert table["pyav"][0] == doctor.OK and "libx264" in table["pyav"][1]
    assert table["models: toy"][0] == doctor.OK and "toy weights verified" in table["models: toy"][1]
    assert table["models: tiny"] == (doctor.OK, "built in code (small seeded random weights): needs no download")
    assert table["models: sd15"][0] == doctor.WARN and table["models: sd15"][1].startswith("0 of ")
    assert "fix: fetch-models sd15 --hub-cache" in result.output
    assert table["hub"][0] == doctor.WARN and "offline mode is on" in table["hub"][1]
    assert str(hub_cache) in table["hub"][1]
    assert table["llm"][0] == doctor.OK and "rules planner" in table["llm"][1]
    for dist, _ in doctor.DESIGN_PACKAGES:
        assert table[f"package {dist}"][0] == doctor.OK, table[f"package {dist}"]
    assert result.output.rstrip().splitlines()[-1] == "make demo can run here"


def test_a_tampered_toy_weights_file_stops_the_demo_and_names_the_fix(hub_cache, tmp_path, monkeypatch):
    copy = tmp_path / "toy_weights"
    shutil.copytree(toy_weights.TOY_WEIGHTS_DIR, copy)
    expected = toy_weights.expected_sha256(copy)
    victim = min(expected, key=lambda relative: (copy / relative).stat().st_size)
    data = bytearray((copy / victim).read_bytes())
    data[-1] ^= 1
    (copy / victim).write_bytes(bytes(data))
    monkeypatch.setattr(toy_weights, "TOY_WEIGHTS_DIR", copy)

    result = run_doctor()
    assert result.exit_code == 1, result.output
    status, detail = rows(result.output)["models: toy"]
    assert status == doctor.FAIL and f"{victim} (sha256 differs)" in detail and detail.startswith("1 of ")
    assert "fix: git checkout storyreel/models/toy_weights (or train them again: make toy-world)" in result.output
    assert result.output.rstrip().splitlines()[-1] == "make demo cannot run here: models: toy"


def test_models_in_the_hub_cache_are_counted_with_their_size(hub_cache):
    models = hub_access.merge(preset_models("sd15"))
    size = sum(fill_cache(hub_cache, model, f"{index:040x}") for index, model in enumerate(models, 1))

    table = rows(run_doctor().output)
    assert table["models: sd15"] == (doctor.OK, f"{len(models)} of {len(models)} hub models cached "
                                                f"({doctor.format_size(size)})")
    # the few-step presets share all but their motion model with sd15
    lightning = hub_access.merge(preset_models("sd15-lightning"))
    shared = [model for model in lightning if model in models]
    missing = [model.label for model in lightning if model not in models]
    status, detail = table["models: sd15-lightning"]
    assert status == doctor.WARN and missing
    assert detail.startswith(f"{len(shared)} of {len(lightning)} hub models cached")
    assert detail.endswith("missing: " + ", ".join(missing))


def test_json_has_every_check(hub_cache):
    result = run_doctor("--json", "--offline")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    names = [check["name"] for check in report["checks"]]
    expected = ["python", "cpu", "torch", "accelerator", "pyav", "decord", "ffmpeg", "faiss", "ray"]
    expected += [f"package {dist}" for dist, _ in doctor.DESIGN_PACKAGES]
    expected += ["disk: outputs", "disk: hub cache"] + [f"models: {preset}" for preset in PRESET_NAMES]
    assert names == expected + ["hub", "llm"]
    assert all(set(check) == {"name", "status", "detail", "fix", "demo"} for check in report["checks"])
    assert all(check["status"] in ("ok", "warn", "fail") for check in report["checks"])
    assert report["demo_can_run"] is True and report["verdict"] == "make demo can run here"
    hub = next(check for check in report["checks"] if check["name"] == "hub")
    assert hub["status"] == "ok" and hub["detail"].startswith("not probed (--offline)")


def test_disk_space_thresholds(tmp_path, monkeypatch):
    for free, status in ((10 * 10**9, doctor.OK), (3 * 10**9, doctor.WARN), (5 * 10**8, doctor.FAIL)):
        monkeypatch.setattr(doctor.shutil, "disk_usage", lambda _path, f=free: types.SimpleNamespace(free=f))
        check = doctor.check_disk("disk: outputs", tmp_path / "not-yet", True, "the outputs")
        assert check.status == status and "(not created yet)" in check.detail, check
        assert bool(check.fix) == (status != doctor.OK)


class _Models(BaseHTTPRequestHandler):
    def do_GET(self):  # the name http.server calls
        body = json.dumps({"data": [{"id": "chat-model"}]}).encode()
        status = 200 if self.path == "/v1/models" else 404
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_the_llm_endpoint_is_probed_when_configured(monkeypatch):
    for name in LLM_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    server = HTTPServer(("127.0.0.1", 0), _Models)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_port}/v1"
        monkeypatch.setenv("STORYREEL_LLM_BASE_URL", base)
        monkeypatch.setenv("STORYREEL_LLM_MODEL", "chat-model")
        assert doctor.check_llm(offline=False) == doctor.Check("llm", "ok", f"{base}, model chat-model: answers")
        monkeypatch.setenv("STORYREEL_LLM_MODEL", "other")
        check = doctor.check_llm(offline=False)
        assert check.status == "warn" and "does not list that model" in check.detail
        assert doctor.check_llm(offline=True).detail.startswith("not probed")
    finally:
        server.shutdown()
        server.server_close()
    # nothing listens there any more: unreachable is a warning, never a failure
    check = doctor.check_llm(offline=False)
    assert check.status == "warn" and "unreachable" in check.detail and "rules planner" in check.detail


def test_importing_the_doctor_imports_no_torch():
    code = ("import sys, storyreel.models.doctor; "
            "print(sorted(m for m in ('torch', 'av', 'faiss', 'diffusers', 'huggingface_hub') if m in sys.modules))")
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert output.strip() == "[]"
