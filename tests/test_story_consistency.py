"""Consistent self-attention across a story's shots (render.story_consistency): the reference shot records the bank,
the shots of its character attend to it, the report says so, and resume renders again exactly what changed."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from render.cli import main

CONSISTENCY = {"mode": "self_attention", "rate": 0.5, "until": 0.6, "bank_frames": 2}


def storyboard(folder: Path, clip: Path, consistency=CONSISTENCY, edit=None) -> Path:
    """Four shots at 64x64, 8 frames, 3 steps: the hare in three (meet is its reference), the tortoise in one."""
    shots = [("meet", ["hare"], "(<hare> rabbit) standing in a meadow"),
             ("run", ["hare"], "(<hare> rabbit) running across a field"),
             ("walk", ["tortoise"], "(<tortoise> turtle) walking on a path"),
             ("rest", ["hare"], "(<hare> rabbit) resting under a tree")]
    data = {"format_version": 1, "title": "consistency", "style": "storybook",
            "defaults": {"width": 64, "height": 64, "frames": 8, "steps": 3, "seed": 1,
                         **({"consistency": consistency} if consistency else {})},
            "characters": {"hare": {"token": "<hare>", "class_word": "rabbit"},
                           "tortoise": {"token": "<tortoise>", "class_word": "turtle"}},
            "shots": [{"id": i, "text": caption, "caption": caption, "characters": names,
                       "clip": {"path": str(clip), "start": 0.0, "end": 1.0}} for i, names, caption in shots]}
    if edit:
        edit(data)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "story.json"
    path.write_text(json.dumps(data, indent=1))
    return path


def render(story: Path, out: Path):
    result = CliRunner().invoke(main, [str(story), "--out", str(out), "--models", "tiny", "--no-progress"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads((out / "report.json").read_text())


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def shot_digests(out: Path) -> dict[str, str]:
    return {p.stem: digest(p) for p in sorted((out / "shots").glob("*.mp4"))}


@pytest.fixture(scope="module")
def clip(synthetic_library) -> Path:
    return sorted(Path(synthetic_library).rglob("*.mp4"))[0]


@pytest.fixture(scope="module")
def renders(tmp_path_factory, clip, one_thread):
    """The story with consistency on, and the same story without it."""
    folder = tmp_path_factory.mktemp("consistency")
    with_csa = folder / "csa"
    report = render(storyboard(folder / "a", clip), with_csa)
    without = folder / "plain"
    render(storyboard(folder / "b", clip, consistency=None), without)
    return folder, with_csa, report, without


def test_the_reference_records_and_the_others_attend(renders):
    _, out, report, _ = renders
    shots = {shot["id"]: shot for shot in report["shots"]}
    meet = shots["meet"]["consistency"]
    assert meet["records"]["characters"] == ["hare"] and meet["records"]["source_shot"] == "meet"
    assert meet["records"]["frames"] == [0, 7] and meet["records"]["active_steps"] == [0, 1]
    bank = out / meet["records"]["file"]
    assert bank.is_file() and bank.parent == out / "cache" / "consistency"
    assert meet["records"]["bytes"] > 0 and meet["attends"] == []
    for shot in ("run", "rest"):
        attends = shots[shot]["consistency"]["attends"]
        assert [(a["source_shot"], a["characters"], a["file"]) for a in attends] == [
            ("meet", ["hare"], meet["records"]["file"])]
        assert shots[shot]["consistency"]["records"] is None
    assert shots["walk"]["consistency"] is None  # the tortoise is in one shot only: nothing to share


def test_consistency_changes_the_shared_shots_only(renders):
    _, out, _, without = renders
    with_csa, plain = shot_digests(out), shot_digests(without)
    assert with_csa["walk"] == plain["walk"]  # no shared character: the same file, bit for bit
    for shot in ("meet", "run", "rest"):
        assert with_csa[shot] != plain[shot]


def test_editing_a_shot_renders_it_alone_and_editing_the_reference_renders_its_character(renders, clip):
    folder, out, _, _ = renders
    work = folder / "resume"
    report = render(storyboard(folder / "c", clip), work)
    assert report["rendered"] == ["meet", "run", "walk", "rest"]

    def caption(shot_id, text):
        def edit(data):
            next(s for s in data["shots"] if s["id"] == shot_id)["caption"] = text
        return edit

    report = render(storyboard(folder / "c", clip, edit=caption("run", "(<hare> rabbit) leaping")), work)
    assert report["rendered"] == ["run"]
    report = render(storyboard(folder / "c", clip, edit=caption("meet", "(<hare> rabbit) waving")), work)
    assert report["rendered"] == ["meet", "run", "rest"] and report["skipped"] == ["walk"]
    banks = sorted(p.name for p in (work / "cache" / "consistency").glob("*.safetensors"))
    assert len(banks) == 2  # the edited reference wrote a bank of its own


def test_a_resumed_story_reuses_the_bank(renders, clip):
    folder, out, first, _ = renders
    before = shot_digests(out)
    (out / "shots" / "rest.mp4").unlink()
    report = render(storyboard(folder / "a", clip), out)
    assert report["rendered"] == ["rest"]  # the reference is not rendered again: its bank is read from the file
    assert shot_digests(out)["rest"] == before["rest"]
    bank = out / first["shots"][0]["consistency"]["records"]["file"]
    bank.unlink()  # a lost bank: its reference shot is rendered again, and writes the same bank
    report = render(storyboard(folder / "a", clip), out)
    assert report["rendered"] == ["meet"] and bank.is_file()
    assert shot_digests(out) == before


def test_a_shot_can_turn_it_off_and_bad_settings_exit_2(renders, clip, tmp_path):
    folder, _, _, without = renders

    def off(data):
        for shot in data["shots"]:
            shot["consistency"] = {"mode": "off"}
    report = render(storyboard(tmp_path / "off", clip, edit=off), tmp_path / "off-out")
    assert all(shot["consistency"] is None for shot in report["shots"])
    assert shot_digests(tmp_path / "off-out") == shot_digests(without)

    bad = storyboard(tmp_path / "bad", clip, consistency={"rate": 1.5})
    result = CliRunner().invoke(main, [str(bad), "--out", str(tmp_path / "bad-out"), "--models", "tiny"])
    assert result.exit_code == 2
    assert result.output.startswith("error:") and "defaults.consistency.rate" in result.output
    assert not (tmp_path / "bad-out").exists()


def test_the_ray_engine_renders_the_reference_first_and_the_same_frames(renders, clip):
    """On Ray the reference shot renders before the shots attending to its bank, which read it from out/cache: the
    frames equal the local engine's (up to the few grey levels two processes' thread counts give)."""
    pytest.importorskip("ray")
    import numpy as np

    from storyreel.video_files import read_video

    folder, local, _, _ = renders
    out = folder / "ray"
    result = CliRunner().invoke(main, [str(storyboard(folder / "ray-story", clip)), "--out", str(out), "--models",
                                       "tiny", "--no-progress", "--engine", "ray", "--workers", "2"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert sorted(report["rendered"]) == ["meet", "rest", "run", "walk"]
    assert [a["source_shot"] for a in report["shots"][1]["consistency"]["attends"]] == ["meet"]
    for shot in ("meet", "run", "walk", "rest"):
        a = read_video(local / "shots" / f"{shot}.mp4")[0].astype(int)
        b = read_video(out / "shots" / f"{shot}.mp4")[0].astype(int)
        diff = np.abs(a - b)  # as tests/test_render_story.py's assert_same_renders allows between processes
        assert diff.mean() < 1.0 and np.percentile(diff, 99) <= 12, (shot, diff.max(), diff.mean())


KEYFRAME_REFERENCE = {**CONSISTENCY, "reference": "keyframes"}


@pytest.fixture(scope="module")
def keyframe_reference(tmp_path_factory, clip, one_thread):
    """The story with the hare's tokens taken from its reference shot's keyframe."""
    folder = tmp_path_factory.mktemp("keyframe-reference")
    out = folder / "out"
    return folder, out, render(storyboard(folder / "a", clip, consistency=KEYFRAME_REFERENCE), out)


def test_keyframes_as_the_reference_every_hare_shot_attends_to_the_reference_keyframe(keyframe_reference, renders):
    _, out, report = keyframe_reference
    shots = {shot["id"]: shot for shot in report["shots"]}
    meet = shots["meet"]["consistency"]
    assert meet["records"] is None  # the video records nothing: its keyframe did
    assert (out / "keyframes" / "meet.png").is_file()
    bank = out / meet["attends"][0]["file"]
    assert bank.name.endswith(".keyframe.safetensors") and bank.is_file()
    assert meet["attends"][0]["source_shot"] == "meet" and meet["attends"][0]["characters"] == ["hare"]
    for shot in ("run", "rest"):
        attends = shots[shot]["consistency"]["attends"]
        assert [(a["source_shot"], out / a["file"]) for a in attends] == [("meet", bank)]
    assert "consistency" not in shots["walk"] or not shots["walk"]["consistency"]
    assert not [p for p in (out / "cache" / "consistency").iterdir() if not p.name.endswith(".keyframe.safetensors")]
    # the hare's shots differ from those following the reference shot's video; the tortoise's does not
    _, with_video_reference, _, _ = renders
    videos, keyframes = shot_digests(with_video_reference), shot_digests(out)
    assert videos["walk"] == keyframes["walk"]
    assert all(videos[shot] != keyframes[shot] for shot in ("meet", "run", "rest"))


def test_keyframes_as_the_reference_resume_and_a_deleted_bank_makes_the_keyframe_again(keyframe_reference, clip):
    folder, out, _ = keyframe_reference
    story = storyboard(folder / "a", clip, consistency=KEYFRAME_REFERENCE)
    before = shot_digests(out)
    report = render(story, out)
    assert sorted(report["skipped"]) == ["meet", "rest", "run", "walk"]
    bank = next((out / "cache" / "consistency").glob("meet.*.keyframe.safetensors"))
    from safetensors.torch import load_file

    kept = load_file(str(bank))  # (the file's bytes are not: safetensors writes its metadata in any order)
    bank.unlink()

    def edit_rest(data):
        data["shots"][3]["caption"] = "(<hare> rabbit) sleeping under a tree"
    report = render(storyboard(folder / "b", clip, consistency=KEYFRAME_REFERENCE, edit=edit_rest), out)
    assert report["rendered"] == ["rest"]  # the bank is made again from the reference keyframe, not the videos
    again = load_file(str(bank))
    assert again.keys() == kept.keys() and all(torch.equal(again[key], kept[key]) for key in kept)
    after = shot_digests(out)
    assert {k: v for k, v in after.items() if k != "rest"} == {k: v for k, v in before.items() if k != "rest"}
