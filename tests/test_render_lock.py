"""One run per output folder: `render-story` on a folder another run is writing exits 2 naming that run, and a
killed run never leaves the folder locked (the lock is an OS lock the kernel drops with its process)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from test_render_story import cheap_storyboard, run

from render.story import LOCK_FILE, OutputBusyError, OutputLock

REPO = Path(__file__).resolve().parent.parent
HOLD_LOCK = """
import sys, time
from pathlib import Path
from render.story import OutputLock
OutputLock(Path(sys.argv[1])).acquire()
print("locked", flush=True)
time.sleep(600)
"""


def one_clip_shot(clip: Path):
    """The fable's first shot on a clip override (no index needed): 64x64, 8 frames, 3 steps."""
    def edit(data):
        data["shots"] = data["shots"][:1]
        data["shots"][0]["clip"] = {"path": str(clip), "start": 0.0, "end": 1.0}
    return edit


@pytest.fixture()
def lock_holder(tmp_path):
    """A process holding the lock of ``tmp_path / "out"``, until the test kills it."""
    out = tmp_path / "out"
    process = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out)], cwd=REPO, stdout=subprocess.PIPE,
                               text=True)
    try:
        assert process.stdout.readline().strip() == "locked"
        yield out, process
    finally:
        process.kill()
        process.wait()


def test_a_second_run_exits_2_naming_the_holder_and_a_killed_holder_frees_the_folder(tmp_path, lock_holder,
                                                                                      real_clips):
    out, holder = lock_holder
    storyboard = cheap_storyboard(tmp_path / "board", one_clip_shot(real_clips / "R6llTwEh07w.mp4"))

    result = run(storyboard, "--out", out, "--models", "tiny")
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: --out ") and len(result.output.strip().splitlines()) == 1
    assert f"pid {holder.pid} on {socket.gethostname()}, started 20" in result.output
    assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE]  # nothing else written

    holder.send_signal(signal.SIGKILL)
    holder.wait()
    result = run(storyboard, "--out", out, "--models", "tiny")
    assert result.exit_code == 0, result.output
    assert json.loads((out / "report.json").read_text())["rendered"] == ["challenge"]
    assert json.loads((out / LOCK_FILE).read_text())["pid"] == os.getpid()  # the last holder's details


def test_the_lock_is_released_after_a_run_and_held_only_once(tmp_path):
    out = tmp_path / "out"
    with OutputLock(out) as first:
        with pytest.raises(OutputBusyError, match=f"pid {os.getpid()} on "):
            OutputLock(out).acquire()  # a second open file description: refused even in the same process
        assert first.path.is_file()
    with OutputLock(out):  # released on exit
        pass


def test_a_holder_that_has_not_written_its_details_yet_is_named_as_such(tmp_path):
    out = tmp_path / "out"
    with OutputLock(out) as first:
        first.path.write_text(json.dumps({"pid": 2**22 + 12345, "host": socket.gethostname()}))  # a dead holder's
        with pytest.raises(OutputBusyError, match="a process that has not written its details yet"):
            OutputLock(out).acquire()


def test_a_run_removes_temporary_files_left_by_a_killed_run_and_nothing_else(tmp_path):
    out = tmp_path / "out"
    stale = [out / ".report.json.x1y2.tmp", out / "shots" / ".plod.mp4.abc123.tmp",
             out / "cache" / "depth" / "ea" / ".ea01.npz.q9.tmp"]
    kept = [out / "shots" / "plod.mp4", out / "notes.tmp", out / "shots" / ".hidden"]
    for path in stale + kept:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    with OutputLock(out) as lock:
        assert sorted(lock.remove_stale_temporary_files()) == sorted(stale)
    assert [p.exists() for p in stale] == [False] * 3 and all(p.exists() for p in kept)


def test_a_failure_before_anything_is_written_leaves_no_folder(tmp_path):
    out = tmp_path / "new"
    with OutputLock(out) as lock:
        lock.forget_folder_if_untouched()
    assert not out.exists()
    out.mkdir()
    with OutputLock(out) as lock:  # a folder that was there before stays
        lock.forget_folder_if_untouched()
    assert out.is_dir()
