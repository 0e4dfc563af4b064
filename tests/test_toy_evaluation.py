"""evaluate-story on toy renders: the structure-fidelity metrics see what tau does.

Two held-out toy clips are rendered with the committed toy weights as clip-override shots, swept over
tau = 0 and tau = 1, and evaluated with the toy metric models. Depth guidance for every step must show as higher
depth and optical-flow agreement with the footage than no guidance (docs/EVALUATION.md has the figures).
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from evaluation.cli import main as evaluate
from evaluation.story_evaluation import shots_by_id
from render.cli import main as render
from toy_world.world_files import write_world

# τ = 1 against τ = 0 on these two shots at 10 steps, measured: flow correlation +0.447 / +0.502 (0.042 → 0.490,
# -0.026 → 0.475), depth correlation +0.164 / +0.142, depth AbsRel -0.095 / -0.187 (docs/EVALUATION.md)
FLOW_GAIN_FLOOR = 0.35
DEPTH_CORRELATION_GAIN_FLOOR = 0.1
ABS_REL_DROP_FLOOR = 0.05
OTHER_FOOTAGE_FLOW_CEILING = 0.2


@pytest.fixture(scope="module")
def swept(tmp_path_factory, one_thread):
    folder = tmp_path_factory.mktemp("toy_evaluation")
    rows = write_world(folder / "world", seed=0, clips=8, split="heldout")
    moving = [row for row in rows if row["cut_s"] is None and row["label"] in ("jumping", "running", "walking")]
    shots = [{"id": f"shot{i}", "text": row["caption"], "caption": row["caption"],
              "clip": {"path": str(folder / "world" / row["path"]), "start": 0.0, "end": 2.0}}
             for i, row in enumerate(moving[:2])]
    assert len(shots) == 2
    storyboard = folder / "story.json"
    storyboard.write_text(json.dumps({"title": "toy sweep", "shots": shots, "defaults": {
        "width": 64, "height": 64, "frames": 16, "fps": 8, "steps": 10, "guidance": 4.0, "negative_prompt": ""}}))
    out = folder / "out"
    result = CliRunner().invoke(render, [str(storyboard), "--out", str(out), "--models", "toy", "--sweep", "tau=0,1",
                                         "--no-progress"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    variants = [out / "sweep" / "tau=0", out / "sweep" / "tau=1"]
    result = CliRunner().invoke(evaluate, [*map(str, variants), "--quiet"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    metrics = [shots_by_id(json.loads((v / "eval" / "metrics.json").read_text())) for v in variants]
    return metrics, result.output, variants


def test_depth_guidance_shows_in_depth_and_flow_fidelity(swept):
    (free, guided), output, _ = swept
    for shot in guided:
        a, b = free[shot]["structure"], guided[shot]["structure"]
        assert b["flow_correlation"] - a["flow_correlation"] >= FLOW_GAIN_FLOOR, (shot, a, b)
        assert b["depth_correlation"] - a["depth_correlation"] >= DEPTH_CORRELATION_GAIN_FLOOR, (shot, a, b)
        assert a["depth_abs_rel"] - b["depth_abs_rel"] >= ABS_REL_DROP_FLOOR, (shot, a, b)
        assert b["flow_epe"] < a["flow_epe"], (shot, a, b)
    assert "metric models: toy" in output


def test_flow_fidelity_is_about_the_shots_own_footage(swept):
    """The guided render measured against the other shot's footage: no agreement left."""
    from evaluation.story_output import RenderedStory
    from evaluation.structure_fidelity import motion_fidelity

    (_, guided), _, variants = swept
    story = RenderedStory.open(variants[1])
    first, second = story.shots
    own = motion_fidelity(first.footage(), first.frames())["flow_correlation"]
    other = motion_fidelity(second.footage(), first.frames())["flow_correlation"]
    assert own == pytest.approx(guided[first.id]["structure"]["flow_correlation"], abs=1e-9)
    assert other <= OTHER_FOOTAGE_FLOW_CEILING < own, (own, other)
