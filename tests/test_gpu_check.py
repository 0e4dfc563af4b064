"""bench/gpu_check.py: its CPU smoke run (the same code paths at toy size) prints one JSON line of figures."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "bench" / "gpu_check.py"


def load_script():
    spec = importlib.util.spec_from_file_location("bench_gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_the_smoke_run_prints_one_line_with_every_figure_as_a_number():
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, str(SCRIPT), "--smoke"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1, done.stdout
    line = json.loads(lines[0])
    assert line["errors"] == {}
    assert line["info"]["preset"] == "tiny" and line["info"]["device"] == "cpu" and line["info"]["faiss_gpu"] is False
    figures = line["figures"]
    assert set(figures) == set(load_script().FIGURES)
    for name, value in figures.items():
        assert isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value), (name, value)
        assert value > 0, name
    sizes = line["info"]["sizes"]
    assert figures["long_shot_windows"] == 2  # 12 frames in windows of 8, stride 4
    assert figures["shot_tau05_controlnet_calls"] == sizes["steps"] // 2  # the ControlNet skipped after tau
    assert figures["shot_tau1_s"] >= figures["shot_tau1_s_per_step"]
