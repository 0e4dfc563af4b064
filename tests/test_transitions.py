"""Transitions between shots (render.transitions): cut, crossfade, or a clip generated between the last frame of
one shot and the first of the next, spliced into story.mp4 and kept while its two shots do not change (tiny)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from render.cli import main
from storyreel.video_files import join_story, read_video


def test_join_story_cuts_crossfades_and_inserts_clips():
    a, b, c = (np.full((4, 8, 8, 3), v, np.uint8) for v in (0, 100, 200))
    clip = np.full((3, 8, 8, 3), 50, np.uint8)
    story = join_story([a, b, c], fps=4, boundaries=[clip, 0.5])  # a | clip | b, then b crossfaded 2 frames into c
    assert len(story) == 4 + 3 + 4 + 4 - 2
    assert (story[4:7] == 50).all() and (story[7] == 100).all()
    assert story[9, 0, 0, 0] == round(100 * 2 / 3 + 200 / 3) and story[10, 0, 0, 0] == round(100 / 3 + 200 * 2 / 3)
    assert len(join_story([a, b], fps=4, boundaries=[0.0])) == 8
    with pytest.raises(ValueError, match="boundaries"):
        join_story([a, b], fps=4, boundaries=[])


def storyboard(folder: Path, clip: Path, rest_caption="(<hare> rabbit) resting under a tree") -> Path:
    shots = [("meet", "(<hare> rabbit) standing in a meadow"), ("run", "(<hare> rabbit) running across a field"),
             ("rest", rest_caption)]
    data = {"format_version": 1, "title": "transitions",
            "defaults": {"width": 64, "height": 64, "frames": 8, "steps": 3, "seed": 1, "fps": 8},
            "characters": {"hare": {"token": "<hare>", "class_word": "rabbit"}},
            "shots": [{"id": i, "text": c, "caption": c, "characters": ["hare"],
                       "clip": {"path": str(clip), "start": 0.0, "end": 1.0}} for i, c in shots]}
    data["shots"][0].update(transition="generate", transition_seconds=0.5)
    data["shots"][1].update(transition="crossfade", transition_seconds=0.25)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "story.json").write_text(json.dumps(data))
    return folder / "story.json"


def render(story: Path, out: Path, *extra):
    result = CliRunner().invoke(main, [str(story), "--out", str(out), "--models", "tiny", "--no-progress", *extra],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads((out / "report.json").read_text())


def test_a_generated_transition_is_spliced_in_and_depends_on_its_two_shots_only(synthetic_library, tmp_path,
                                                                                 one_thread):
    clip = sorted(Path(synthetic_library).rglob("*.mp4"))[0]
    out = tmp_path / "out"
    report = render(storyboard(tmp_path / "a", clip), out)
    generated, crossfade = report["transitions"]
    assert generated["kind"] == "generate" and generated["frames"] == 4 and generated["status"] == "rendered"
    assert crossfade == {"from": "run", "to": "rest", "kind": "crossfade", "seconds": 0.25}
    mp4 = out / generated["file"]
    frames, _ = read_video(mp4)
    assert frames.shape == (4, 64, 64, 3)
    sidecar = json.loads(mp4.with_suffix(".json").read_text())
    assert sidecar["frame_indices"] == [0, 3] and sidecar["sparse_calls"] == 3 and sidecar["to"] == "run"
    assert sidecar["prompt"] == {"from": "(<hare> rabbit) standing in a meadow",  # its text travels meet → run
                                 "to": "(<hare> rabbit) running across a field", "travel": "linear"}
    assert report["story"]["frames"] == 8 + 4 + 8 + 8 - 2  # the transition between, a 2-frame crossfade
    story_frames, _ = read_video(out / "story.mp4")
    assert len(story_frames) == report["story"]["frames"]
    digest = hashlib.sha256(mp4.read_bytes()).hexdigest()

    report = render(storyboard(tmp_path / "b", clip, rest_caption="(<hare> rabbit) asleep"), out)
    assert report["rendered"] == ["rest"] and report["transitions"][0]["status"] == "skipped"
    assert hashlib.sha256(mp4.read_bytes()).hexdigest() == digest  # a third shot's edit keeps it

    story = storyboard(tmp_path / "c", clip, rest_caption="(<hare> rabbit) asleep")
    data = json.loads(story.read_text())
    data["shots"][1]["caption"] = "(<hare> rabbit) leaping"
    story.write_text(json.dumps(data))
    report = render(story, out)
    assert report["rendered"] == ["run"] and report["transitions"][0]["status"] == "rendered"
    assert hashlib.sha256(mp4.read_bytes()).hexdigest() != digest


def test_a_generated_transition_needs_a_sparsectrl_model_that_fits(synthetic_library, tmp_path):
    clip = sorted(Path(synthetic_library).rglob("*.mp4"))[0]
    story = storyboard(tmp_path, clip)
    result = CliRunner().invoke(main, [str(story), "--out", str(tmp_path / "toy"), "--models", "tiny", "--sparsectrl",
                                       "toy"])  # the toy SparseCtrl (the toy preset's default) fits only toy models
    assert result.exit_code == 2 and "--sparsectrl toy" in result.output and "--models toy" in result.output
    data = json.loads(story.read_text())
    data["shots"][0]["transition"] = "dissolve"
    story.write_text(json.dumps(data))
    result = CliRunner().invoke(main, [str(story), "--out", str(tmp_path / "bad"), "--models", "tiny"])
    assert result.exit_code == 2 and "shots[0].transition" in result.output
