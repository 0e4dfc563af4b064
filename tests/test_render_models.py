"""render-story with the model flags: fetched folders render what the preset renders, a preset's scheduler, steps
and guidance reach the sampler, and bad model values exit 2 before any model loads."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
from test_render_story import cheap_storyboard, run

from storyreel.models import presets
from storyreel.models.fetch import fetch_models
from storyreel.models.specification import ModelSpecification
from storyreel.video_files import read_video


def shot_frames(out) -> dict[str, np.ndarray]:
    return {path.stem: read_video(path)[0] for path in sorted((out / "shots").glob("*.mp4"))}


@pytest.fixture(scope="module")
def fetched_tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    fetch_models(ModelSpecification(preset="tiny"), folder, progress=False, echo=lambda line: None)
    return folder


def test_fetched_tiny_folders_render_the_tiny_preset_bit_for_bit(tmp_path, tiny_index, fetched_tiny):
    storyboard = cheap_storyboard(tmp_path, lambda d: d.update(shots=d["shots"][:2]))
    preset = run(storyboard, "--index", tiny_index, "--out", tmp_path / "preset", "--models", "tiny")
    folders = run(storyboard, "--index", tiny_index, "--out", tmp_path / "folders",
                  "--model-config", fetched_tiny / "models.toml")
    assert preset.exit_code == 0 and folders.exit_code == 0, preset.output + folders.output
    ours, theirs = shot_frames(tmp_path / "folders"), shot_frames(tmp_path / "preset")
    assert list(ours) == list(theirs) and len(ours) == 2
    for name in ours:
        assert np.array_equal(ours[name], theirs[name]), name
    report = json.loads((tmp_path / "folders" / "report.json").read_text())
    assert report["models"]["preset"] == "tiny"
    assert report["models"]["specification"]["requested"] == {"config_file": str(fetched_tiny / "models.toml")}
    unet = report["models"]["render"]["components"]["unet"]
    assert (unet["kind"], unet["source"], unet["subfolder"]) == ("local", str(fetched_tiny / "base"), "unet")
    # another specification is another render: the folders' shots were not taken for the preset's
    assert json.loads((tmp_path / "folders" / "shots" / f"{next(iter(ours))}.json").read_text())["settings_hash"] != \
        json.loads((tmp_path / "preset" / "shots" / f"{next(iter(ours))}.json").read_text())["settings_hash"]


@pytest.mark.parametrize("preset, scheduler, spacing, steps, guidance, storyboard_guidance", [
    ("sd15-lightning", "EulerDiscreteScheduler", "trailing", 4, 1.0, None),
    ("sd15-lcm", "LCMScheduler", "leading", 6, 1.5, None),
    ("sd15-lightning", "EulerDiscreteScheduler", "trailing", 4, 3.0, 3.0),  # the storyboard's own value wins
])
def test_the_presets_scheduler_steps_and_guidance_reach_the_sampler(tmp_path, tiny_index, monkeypatch, preset,
                                                                      scheduler, spacing, steps, guidance,
                                                                      storyboard_guidance):
    """A few-step preset's defaults on the tiny models (the registry entry's scheduler, its config, steps and
    guidance given to the tiny preset): what the sampler is called with, for a storyboard that sets neither
    steps nor scheduler."""
    from render.sampler import StructureGuidedSampler

    few_step = presets.PRESETS[preset]
    monkeypatch.setitem(presets.PRESETS, "tiny", replace(
        presets.PRESETS["tiny"], scheduler=few_step.scheduler, scheduler_config=few_step.scheduler_config,
        steps=few_step.steps, guidance=few_step.guidance))
    calls = []
    original = StructureGuidedSampler.__call__

    def spy(self, *args, **kwargs):
        calls.append({"scheduler": type(self.scheduler).__name__,
                      "spacing": self.scheduler.config.get("timestep_spacing"), "steps": kwargs["steps"],
                      "guidance": kwargs["guidance_scale"]})
        return original(self, *args, **kwargs)

    monkeypatch.setattr(StructureGuidedSampler, "__call__", spy)

    def edit(data):
        data["defaults"].pop("steps")
        if storyboard_guidance is not None:
            data["defaults"]["guidance"] = storyboard_guidance
        data["shots"] = data["shots"][:2]

    result = run(cheap_storyboard(tmp_path, edit), "--index", tiny_index, "--out", tmp_path / "out", "--models", "tiny")
    assert result.exit_code == 0, result.output
    assert calls == [{"scheduler": scheduler, "spacing": spacing, "steps": steps, "guidance": guidance}] * 2
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["models"]["shot_defaults"] == few_step.shot_defaults()
    sources = {(s["settings"]["sources"]["steps"], s["settings"]["sources"]["guidance"],
                s["settings"]["sources"]["scheduler"]) for s in report["shots"]}
    assert sources == {("preset", "storyboard" if storyboard_guidance else "preset", "preset")}


@pytest.mark.parametrize("flags, message", [
    (["--models", "sd15-turbo"], "--models"),
    (["--base", "{tmp}/missing"], "--base"),
    (["--base", "{tmp}/model.ckpt"], "pickle"),
    (["--model-config", "{tmp}/typo.toml"], "[components] bsae"),
])
def test_bad_model_values_exit_2_before_any_model_loads(tmp_path, tiny_index, monkeypatch, flags, message):
    import storyreel.models.loading as loading

    def no_load(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(loading, "load_render_components", no_load)
    (tmp_path / "model.ckpt").write_bytes(b"not a checkpoint")
    (tmp_path / "typo.toml").write_text('[components]\nbsae = "somewhere"\n')
    result = run(cheap_storyboard(tmp_path), "--index", tiny_index, "--out", tmp_path / "out",
                 *[flag.format(tmp=tmp_path) for flag in flags])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: ") and message in result.output, result.output
    assert not (tmp_path / "out" / "shots").exists()
