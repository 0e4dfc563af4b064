"""`render-story --deterministic`: a run killed part-way and resumed gives the same bits as an uninterrupted run.

The three runs differ in what a real machine varies: the uninterrupted run starts with ``OMP_NUM_THREADS=2``,
the killed run with 1, and the resumed run in this process with torch set to 3 threads. Without a fixed thread
count those runs give other frames (the tiny VAE decodes the same latents up to 34 grey levels apart with 1
and 2 threads), so the frame comparisons fail when ``--deterministic`` stops fixing it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageSequence
from test_render_story import cheap_storyboard, run

from render.story import StoryOptions, prepare_story
from storyreel.video_files import read_video

REPO = Path(__file__).resolve().parent.parent


def render_command(storyboard: Path, index: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "render.cli", str(storyboard), "--index", str(index), "--out", str(out),
            "--models", "tiny", "--deterministic", "--quiet"]


def environment(threads: int) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}


def gif_frames(path: Path) -> np.ndarray:
    with Image.open(path) as gif:
        return np.stack([np.asarray(frame.convert("RGB")) for frame in ImageSequence.Iterator(gif)])


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_index):
    """An uninterrupted deterministic run, and one killed after its first shot and resumed."""
    folder = tmp_path_factory.mktemp("deterministic")
    storyboard = cheap_storyboard(folder)
    whole, resumed = folder / "whole", folder / "resumed"
    finished = subprocess.run(render_command(storyboard, tiny_index, whole), cwd=REPO, env=environment(2),
                              capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr

    killed = subprocess.Popen(render_command(storyboard, tiny_index, resumed), cwd=REPO, env=environment(1),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    first_sidecar = resumed / "shots" / "challenge.json"
    deadline = time.monotonic() + 300
    while not first_sidecar.exists() and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert first_sidecar.exists(), killed.stderr.read()
    sidecars_at_kill = sorted(p.name for p in (resumed / "shots").glob("*.json"))
    (resumed / "shots" / ".plod.mp4.k1ll3d.tmp").write_bytes(b"half a file")  # as a kill mid-write leaves

    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        result = run(storyboard, "--index", tiny_index, "--out", resumed, "--models", "tiny", "--deterministic")
        threads_after = torch.get_num_threads()
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output
    return storyboard, whole, resumed, sidecars_at_kill, threads_after


def test_the_kill_interrupted_the_run(runs):
    _, _, resumed, sidecars_at_kill, _ = runs
    assert 1 <= len(sidecars_at_kill) < 4, sidecars_at_kill
    report = json.loads((resumed / "report.json").read_text())
    assert len(report["skipped"]) == len(sidecars_at_kill) and "challenge" in report["skipped"]
    assert len(report["rendered"]) == 4 - len(sidecars_at_kill)


def test_every_shot_and_the_story_are_bit_identical_to_an_uninterrupted_run(runs):
    _, whole, resumed, _, _ = runs
    shots = sorted(p.name for p in (whole / "shots").glob("*.mp4"))
    assert len(shots) == 4 and shots == sorted(p.name for p in (resumed / "shots").glob("*.mp4"))
    for name in shots:
        a, b = read_video(whole / "shots" / name)[0], read_video(resumed / "shots" / name)[0]
        assert np.array_equal(a, b), (name, int(np.abs(a.astype(int) - b.astype(int)).max()))
        gif = Path(name).with_suffix(".gif")  # the GIF shows rendered-frame differences the H.264 encoder absorbs
        assert np.array_equal(gif_frames(whole / "shots" / gif), gif_frames(resumed / "shots" / gif)), gif
        assert (whole / "shots" / name).read_bytes() == (resumed / "shots" / name).read_bytes(), name
    assert np.array_equal(read_video(whole / "story.mp4")[0], read_video(resumed / "story.mp4")[0])
    assert (whole / "story.mp4").read_bytes() == (resumed / "story.mp4").read_bytes()


def test_the_report_records_the_deterministic_settings_and_torch_is_put_back(runs):
    _, whole, resumed, _, threads_after = runs
    for out in (whole, resumed):
        report = json.loads((out / "report.json").read_text())
        assert report["deterministic"]["cpu_threads"] == 1
        assert report["deterministic"]["torch_deterministic_algorithms"] is True
        assert all(shot["deterministic"] is True for shot in report["shots"])
    assert threads_after == 3  # the resumed run (in this process) restored the thread count it found
    import torch

    assert not torch.are_deterministic_algorithms_enabled()
    assert not list(resumed.rglob("*.tmp"))  # the killed run's temporary file is gone
    assert (resumed / "cache" / "depth-deterministic" / "cpu").is_dir() and not (resumed / "cache" / "depth").exists()


def test_a_deterministic_run_does_not_reuse_shots_made_without_it(runs, tiny_index):
    storyboard = runs[0]
    plain = prepare_story(StoryOptions(storyboard=storyboard, out=Path("unused"), index=tiny_index, models="tiny",
                                       planner="none"))
    deterministic = prepare_story(StoryOptions(storyboard=storyboard, out=Path("unused"), index=tiny_index,
                                               models="tiny", planner="none", deterministic=True))
    assert plain.hashes.keys() == deterministic.hashes.keys()
    assert all(plain.hashes[k] != deterministic.hashes[k] for k in plain.hashes)
    sidecar = json.loads((runs[2] / "shots" / "challenge.json").read_text())
    assert sidecar["settings_hash"] == deterministic.hashes["challenge"]
