"""`evaluate-story` end to end on tiny renders: every metric for every shot, the page, the cache, --against,
and bad input."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner
from test_render_story import cheap_storyboard
from test_render_story import run as render

from evaluation.cli import main
from evaluation.story_evaluation import shots_by_id

SHOT_SECTIONS = {
    "text": {"caption", "clip_t"},
    "consistency": {"dino_subject", "clip_background", "clip_frame_to_frame", "dino_frame_to_frame", "flicker",
                    "mean_abs_diff", "footage_flicker"},
    "structure": {"depth_abs_rel", "depth_correlation", "flow_correlation", "flow_epe"},
    "action": {"label", "predicted", "top1", "top5"},
}


def evaluate(*args):
    return CliRunner().invoke(main, [str(a) for a in args] + ["--quiet"], catch_exceptions=False)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, tiny_index):
    """The fable's first three shots rendered with ``--sweep tau=0.5,1.0`` (tiny models)."""
    folder = tmp_path_factory.mktemp("evaluate")

    def first_three(data):
        data["shots"] = data["shots"][:3]
    storyboard = cheap_storyboard(folder, first_three)
    out = folder / "out"
    result = render(storyboard, "--index", tiny_index, "--out", out, "--models", "tiny", "--sweep", "tau=0.5,1.0")
    assert result.exit_code == 0, result.output
    return out, result.output


@pytest.fixture(scope="module")
def rendered(sweep):
    out, _ = sweep
    return [out / "sweep" / "tau=0.5", out / "sweep" / "tau=1.0"]


def test_sweep_renders_each_value_with_the_same_footage_and_one_depth_cache(sweep, rendered):
    out, output = sweep
    reports = [json.loads((folder / "report.json").read_text()) for folder in rendered]
    assert [{shot["tau"] for shot in report["shots"]} for report in reports] == [{0.5}, {1.0}]
    assert [report["sweep"] for report in reports] == [{"name": "tau", "value": 0.5}, {"name": "tau", "value": 1.0}]
    assert [s["segment"] for s in reports[0]["shots"]] == [s["segment"] for s in reports[1]["shots"]]
    assert len(list((out / "cache" / "depth").rglob("*.npz"))) == 3  # one raw depth per shot, for both variants
    assert not (rendered[0] / "cache" / "depth").exists() and not (rendered[1] / "cache" / "depth").exists()
    assert {s["depth"]["cache"] for r in reports for s in r["shots"]} == {str((out / "cache" / "depth").resolve())}
    assert "evaluate-story" in output
    again = render(out.parent / "fable.json", "--index", "unused-index-folder", "--out", out, "--models", "tiny",
                   "--sweep", "tau=0.5,1.0")
    assert again.exit_code == 2 and "--index unused-index-folder" in again.output  # checked before anything renders


def test_a_sweep_retrieves_footage_once(tmp_path, tiny_index, monkeypatch):
    import render.story as story
    from storyboard.sweep import SettingSweep

    def first_two(data):
        data["shots"] = data["shots"][:2]
    calls = []
    choose = story.choose_segment
    monkeypatch.setattr(story, "choose_segment", lambda *a, **k: calls.append(a[1].id) or choose(*a, **k))
    options = story.StoryOptions(storyboard=cheap_storyboard(tmp_path, first_two), out=tmp_path / "out",
                                 index=tiny_index, models="tiny", progress=False)
    story.render_sweep(story.prepare_sweep(options, SettingSweep.parse("seed=1,2,3")), echo=lambda line: None)
    assert calls == ["challenge", "sprint"]  # the first variant's; the other two play the same footage


@pytest.mark.parametrize("text, message", [("tau", "expected NAME=V1,V2"), ("width=64,128", "cannot sweep 'width'"),
                                           ("steps=2,x", "'x' is not an integer"), ("tau=0.5,2", "defaults.tau")])
def test_bad_sweeps_exit_2(tmp_path, tiny_index, text, message):
    storyboard = cheap_storyboard(tmp_path)
    result = render(storyboard, "--index", tiny_index, "--out", tmp_path / "out", "--models", "tiny", "--sweep", text)
    assert result.exit_code == 2 and message in result.output and not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def evaluated(rendered, reference_images):
    out = rendered[0]
    result = evaluate(out, "--references", f"hare={reference_images}")
    assert result.exit_code == 0, result.output
    return out, result.output


def test_every_metric_for_every_shot(evaluated):
    out, output = evaluated
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    report = json.loads((out / "report.json").read_text())
    shots = shots_by_id(metrics)
    assert list(shots) == [shot["id"] for shot in report["shots"]]
    for shot_id, shot in shots.items():
        for section, keys in SHOT_SECTIONS.items():
            assert keys <= set(shot[section]), (shot_id, section)
        for key in ("clip_t",):
            assert -1 <= shot["text"][key] <= 1
        assert 0 <= shot["consistency"]["flicker"] <= 1 and shot["structure"]["flow_epe"] >= 0
        assert "<" not in shot["text"]["caption"] and "(" not in shot["text"]["caption"]
    hare_shots = [s for s in shots.values() if "hare" in s["characters"]]
    assert hare_shots and all(-1 <= s["identity"]["hare"]["dino_i"] <= 1 for s in hare_shots)
    assert all(s["identity"][name]["clip_i"] is None for s in shots.values()
               for name in s["identity"] if name != "hare")
    assert metrics["models"]["name"] == "tiny" and metrics["models"]["depth"] == "tiny"
    for entry in metrics["metrics"].values():
        assert entry["recipe"]
    assert metrics["distribution"]["fvd"] is not None and metrics["distribution"]["rendered_videos"] == 3
    assert metrics["summary"]["clip_t"] == pytest.approx(
        sum(s["text"]["clip_t"] for s in shots.values()) / 3)
    page = (out / "eval" / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 1 + 3  # the chart and a strip per shot
    assert all(shot_id in page for shot_id in shots)
    assert "3 of 3 shots computed" in output


def test_second_run_computes_nothing_and_a_changed_shot_alone_again(evaluated, reference_images):
    out, _ = evaluated
    before = json.loads((out / "eval" / "metrics.json").read_text())
    again = evaluate(out, "--references", f"hare={reference_images}")
    assert again.exit_code == 0 and "0 of 3 shots computed, 3 from the cache" in again.output
    assert json.loads((out / "eval" / "metrics.json").read_text())["shots"] == before["shots"]
    report = json.loads((out / "report.json").read_text())
    first = report["shots"][0]
    mp4 = out / first["files"]["mp4"]
    saved = mp4.read_bytes()
    try:
        shutil.copy(out / report["shots"][1]["files"]["mp4"], mp4)  # the first shot's video changed
        changed = evaluate(out, "--references", f"hare={reference_images}")
        assert "1 of 3 shots computed" in changed.output
    finally:
        mp4.write_bytes(saved)


def test_against_puts_folders_side_by_side(rendered, evaluated):
    first, second = rendered
    result = evaluate(first, "--against", second)
    assert result.exit_code == 0, result.output
    comparison = json.loads((first / "eval" / "comparison.json").read_text())
    assert comparison["folders"] == [str(first), str(second)]
    assert comparison["swept"] == {"name": "tau", "values": [0.5, 1.0]}
    assert (second / "eval" / "metrics.json").is_file()
    page = (first / "eval" / "report.html").read_text()
    assert "Side by side" in page and page.count("data:image/png;base64,") >= 2 + 3
    # the same footage and depth: the footage's own flicker is the same in both folders
    a = shots_by_id(json.loads((first / "eval" / "metrics.json").read_text()))
    b = shots_by_id(json.loads((second / "eval" / "metrics.json").read_text()))
    for shot in a:
        assert a[shot]["consistency"]["footage_flicker"] == pytest.approx(b[shot]["consistency"]["footage_flicker"])


@pytest.mark.parametrize("case", ["missing", "no_report", "bad_report", "missing_mp4"])
def test_bad_out_exits_2_naming_it(tmp_path, rendered, case):
    if case == "missing":
        out, expected = tmp_path / "nowhere", "no such folder"
    elif case == "no_report":
        out, expected = tmp_path, "no report.json"
    else:
        out = tmp_path / "copy"
        shutil.copytree(rendered[0], out)
        report = out / "report.json"
        if case == "bad_report":
            report.write_text("{not json")
            expected = "not a storyreel report"
        else:
            data = json.loads(report.read_text())
            (out / data["shots"][0]["files"]["mp4"]).unlink()
            expected = "files.mp4: no such file"
    result = CliRunner().invoke(main, [str(out)])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0] and str(out) in lines[0]


def test_bad_references_exit_2_before_any_model(rendered, tmp_path, monkeypatch):
    import evaluation.story_evaluation as story_evaluation

    monkeypatch.setattr(story_evaluation.StoryEvaluator, "evaluate", lambda *a: pytest.fail("evaluated"))
    result = CliRunner().invoke(main, [str(rendered[0]), "--references", f"hare={tmp_path / 'none'}"])
    assert result.exit_code == 2 and "--references hare=" in result.output and "no such folder" in result.output
    result = CliRunner().invoke(main, [str(rendered[0]), "--references", "hare"])
    assert result.exit_code == 2 and "expected NAME=DIR" in result.output
    result = CliRunner().invoke(main, [str(rendered[0]), "--references", f"hair={tmp_path}"])
    assert result.exit_code == 2 and "no shot has a character 'hair' (the characters: hare, tortoise)" in result.output


def test_real_videos_are_the_fvd_reference_when_given(rendered, real_clips, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(rendered[1], out)
    result = evaluate(out, "--real-videos", real_clips)
    assert result.exit_code == 0, result.output
    distribution = json.loads((out / "eval" / "metrics.json").read_text())["distribution"]
    videos = [p for p in real_clips.iterdir() if p.suffix in (".mp4", ".avi")]
    assert distribution["real_videos"] == len(videos) and distribution["rendered_videos"] == 3
    assert str(len(videos)) in distribution["real_source"] and distribution["fvd"] > 0
    empty = CliRunner().invoke(main, [str(out), "--real-videos", str(tmp_path / "none")])
    assert empty.exit_code == 2 and "--real-videos: no such folder" in empty.output


def test_real_metric_models_offline_are_named_all_at_once(rendered, tmp_path, monkeypatch):
    """Offline with an empty hub cache: every real metric model is named in one error, before any loads."""
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
    result = evaluate(rendered[0], "--models", "real")
    assert result.exit_code == 2, result.output
    for repo in ("timm/vit_base_patch32_clip_224.openai", "timm/vit_small_patch16_224.dino",
                 "MCG-NJU/videomae-base-finetuned-kinetics"):
        assert repo in result.output
    assert "fetch-models --hub-cache" in result.output
