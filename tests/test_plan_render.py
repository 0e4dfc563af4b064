"""plan → render: `plan-story` on an example passage, then `render-story --models tiny` renders its plan."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from render.cli import main as render_main
from storyboard.plan_cli import main as plan_main

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "data" / "examples"


def test_a_planned_passage_renders_with_tiny_models(tmp_path, tiny_index):
    story = tmp_path / "plan" / "story.json"
    result = CliRunner().invoke(plan_main, [
        str(EXAMPLES / "hare-and-tortoise.txt"), "--out", str(story), "--shots", "2", "--characters",
        str(EXAMPLES / "fable-characters.json"), "--style", "watercolour storybook illustration",
        "--width", "64", "--height", "64", "--frames", "8", "--steps", "3", "--seed", "42"])
    assert result.exit_code == 0, result.output
    planned = json.loads(story.read_text())
    assert len(planned["shots"]) == 2

    out = tmp_path / "render"
    result = CliRunner().invoke(render_main, [str(story), "--index", str(tiny_index), "--out", str(out),
                                              "--models", "tiny", "--no-progress"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert [s["id"] for s in report["shots"]] == [s["id"] for s in planned["shots"]]
    assert [s["query"] for s in report["shots"]] == [s["motion_query"] for s in planned["shots"]]
    for shot in report["shots"]:
        assert (out / "shots" / f"{shot['safe_id']}.mp4").is_file()
        assert shot["segment"]["source"] == "retrieval"
    assert (out / "story.mp4").is_file()


def _unplanned_storyboard(folder: Path) -> Path:
    """The fable at 64x64, 8 frames, 3 steps, 2 shots; the second has no motion query and no caption."""
    data = json.loads((EXAMPLES / "fable.json").read_text())
    data["defaults"].update(width=64, height=64, frames=8, steps=3)
    data["shots"] = [data["shots"][0], data["shots"][1]]
    for key in ("motion_query", "caption", "duration"):
        data["shots"][1].pop(key, None)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "fable.json"
    path.write_text(json.dumps(data))
    return path


def _render(*args):
    return CliRunner().invoke(render_main, [str(a) for a in args] + ["--no-progress", "--models", "tiny"],
                              catch_exceptions=False)


def test_render_story_plans_the_shots_that_lack_a_query_or_caption(tmp_path, tiny_index, monkeypatch):
    monkeypatch.delenv("STORYREEL_LLM_BASE_URL", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    storyboard = _unplanned_storyboard(tmp_path / "sb")
    out = tmp_path / "out"
    result = _render(storyboard, "--index", tiny_index, "--out", out)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    [record] = report["planned"]
    assert record["shot"] == "sprint" and record["backend"] == "rules"
    assert set(record["wrote"]) >= {"motion_query", "caption"}
    sprint = report["shots"][1]
    assert sprint["query"] == record["wrote"]["motion_query"] and "hare" not in sprint["query"].lower()
    assert sprint["prompt"].startswith(record["wrote"]["caption"].split(",")[0])
    assert "<hare>" in sprint["prompt"]  # the character's token, weighted in compel syntax
    style = json.loads(storyboard.read_text())["style"]
    assert sprint["prompt"].count(style) == 1  # the planned caption ends with the style: not added twice
    assert report["shots"][0]["query"] == "a person jumping up and down"  # a complete shot is kept as written

    unplanned = tmp_path / "out-none"
    result = _render(storyboard, "--index", tiny_index, "--out", unplanned, "--llm", "none")
    assert result.exit_code == 0, result.output
    report = json.loads((unplanned / "report.json").read_text())
    assert report["planned"] == [] and report["shots"][1]["query"] == report["shots"][1]["settings"]["text"]


def test_render_story_refuses_an_llm_it_cannot_reach_before_writing(tmp_path, tiny_index, monkeypatch):
    monkeypatch.delenv("STORYREEL_LLM_BASE_URL", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    storyboard = _unplanned_storyboard(tmp_path / "sb")
    out = tmp_path / "out"
    result = _render(storyboard, "--index", tiny_index, "--out", out, "--llm", "openai")
    assert result.exit_code == 2
    assert "base URL" in result.output
    assert not out.exists()


def test_the_style_is_added_once():
    from render.story import with_style

    assert with_style("a hare running", "watercolor") == "a hare running, watercolor"
    assert with_style("a (hare)1.3 running, watercolor", "watercolor") == "a (hare)1.3 running, watercolor"
    assert with_style("a hare running", "") == "a hare running"
