"""The extract-depth command: outputs on a real clip and a sample clip, the cache, errors with exit code 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from structure.cli import main
from structure.depth_cache import CACHE_ENV
from structure.depth_sequence import load_npz

BIN = Path(sys.executable).parent
SOCCER = "v_SoccerJuggling_g23_c01.avi"


@pytest.fixture()
def run(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    runner = CliRunner()

    def invoke(*args):
        return runner.invoke(main, [str(a) for a in args])

    return invoke


def test_extract_depth_writes_depth_preview_and_strip(run, real_clips, tmp_path):
    out, gif, png = tmp_path / "depth.npz", tmp_path / "depth.gif", tmp_path / "depth.png"
    result = run(real_clips / SOCCER, "--start", 1.0, "--end", 3.0, "--frames", 16, "--size", "256x144",
                 "--out", out, "--preview", gif, "--strip", png, "--models", "tiny", "-q")
    assert result.exit_code == 0, result.output
    sequence = load_npz(out)
    assert sequence.depth.shape == (16, 144, 256) and sequence.fps == 8.0
    assert sequence.depth.min() == 0.0 and sequence.depth.max() == 1.0
    assert sequence.source["start"] == 1.0 and sequence.source["end"] == 3.0
    with Image.open(gif) as image:
        assert image.n_frames == 16 and image.size == (256, 144)
    with Image.open(png) as image:
        strip = np.asarray(image.convert("RGB"))
    assert strip.shape[0] == 2 * 144 + 4 and strip[:144].std() > 10  # real frames on top
    assert "computed" in result.output and "flicker" in result.output and f"wrote {out}" in result.output

    again = run(real_clips / SOCCER, "--start", 1.0, "--end", 3.0, "--size", "256x144", "--out", out,
                "--models", "tiny", "-q")
    assert again.exit_code == 0 and "from the cache" in again.output


def test_extract_depth_on_a_sample_clip_with_default_range(run, sample_clip_maker, tmp_path):
    clip = sample_clip_maker.write_clip(tmp_path / "run_01.mp4", "running", seconds=3.0)
    out = tmp_path / "run.npz"
    result = run(clip, "--out", out, "--preview", tmp_path / "run.gif", "--models", "tiny", "--size", "128x128",
                 "--smoothing", 1.0, "-q")
    assert result.exit_code == 0, result.output
    sequence = load_npz(out)
    assert sequence.depth.shape == (16, 128, 128) and sequence.settings["smoothing"] == 1.0
    assert (sequence.source["start"], sequence.source["end"]) == (0.0, 2.0)  # 16 frames at 8 fps


@pytest.mark.parametrize("args, message", [
    (("--start", 1.0, "--end", 9.0), "error: --end: 9 s is past the end of"),
    (("--start", 5.0, "--end", 6.0), "error: --start: 5 s is past the end of"),
    (("--start", 2.0, "--end", 1.0), "error: --end: must be after start"),
    (("--frames", 0), "error: --frames:"),
    (("--size", "500x512"), "error: --size: width and height must be divisible by 8"),
    (("--size", "wide"), "error: --size: expected WIDTHxHEIGHT"),
    (("--preview", "depth.png"), "error: --preview: expected a .gif file"),
])
def test_bad_arguments_exit_2_naming_the_argument(run, real_clips, tmp_path, args, message):
    clip = real_clips / "TrumanShow_wave_f_nm_np1_fr_med_26.avi"  # 1.63 s
    result = run(clip, "--out", tmp_path / "depth.npz", "--models", "tiny", "-q", *args)
    assert result.exit_code == 2 and message in result.output, result.output
    assert not (tmp_path / "depth.npz").exists()


def test_unreadable_video_and_missing_model_exit_2(tmp_path):
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"\x00" * 4096)
    script = str(BIN / "extract-depth")
    result = subprocess.run([script, str(garbage), "--out", str(tmp_path / "d.npz"), "--models", "tiny"],
                            capture_output=True, text=True)
    assert result.returncode == 2 and f"error: {garbage}" in result.stderr
    missing = subprocess.run([script, str(garbage), "--start", "0", "--end", "1", "--out", str(tmp_path / "d.npz"),
                              "--models", str(tmp_path / "no-such-model")], capture_output=True, text=True)
    assert missing.returncode == 2 and "does not exist" in missing.stderr
