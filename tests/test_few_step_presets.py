"""Few-step presets (AnimateDiff-Lightning, AnimateLCM): their registry entries, their schedulers (equal to
what the model cards build), our sampler against diffusers' pipeline with them, and the preset defaults
that reach every shot the storyboard leaves them to."""

from __future__ import annotations

import inspect
import json

import pytest
import torch

from render.sampler import StructureGuidedSampler
from storyboard import load_storyboard, parse_storyboard, save_storyboard
from storyboard.format import ModelDefaults, ModelDefaultsError
from storyreel.errors import StoryreelError
from storyreel.models import presets, schedulers
from structure.conditioning import controlnet_condition

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPT = "a knight riding a horse"
NEGATIVE = "blurry, low quality"
SIZE = 32
FRAMES = 6
STORY = {"title": "Few steps", "shots": [{"id": "a", "text": "The hare runs."},
                                         {"id": "b", "text": "The tortoise walks.", "tau": 0.8}]}
# settings_hash of STORY's shot "a", computed by the code before model defaults existed: existing output
# folders must keep resuming.
HASH_BEFORE_MODEL_DEFAULTS = "e307f702c5d49d12b8f92a3f6e5eb00114f21e33539ba9b4f56d7e06b16c5dcd"


@pytest.fixture(scope="module")
def cond():
    """A moving ramp: T x 3 x H x W in [0, 1]."""
    x = torch.linspace(0, 1, SIZE)[None, :].expand(SIZE, SIZE)
    y = torch.linspace(0, 1, SIZE)[:, None].expand(SIZE, SIZE)
    depth = torch.stack([0.6 * ((x + 0.05 * t) % 1.0) + 0.2 * y for t in range(FRAMES)]).numpy()
    return controlnet_condition(depth)


# -- the registry ---------------------------------------------------------------------------------------------
def test_few_step_presets_in_the_registry():
    assert presets.PRESET_NAMES[:3] == ("sd15", "tiny", "sd15-random")  # the names error messages list first
    sd15 = presets.get_preset("sd15")
    lightning, lcm = presets.get_preset("sd15-lightning"), presets.get_preset("sd15-lcm")
    for preset in (lightning, lcm):
        assert (preset.architecture, preset.render, preset.base, preset.controlnet) == (
            "sd15", "hub", "stable-diffusion-v1-5/stable-diffusion-v1-5", "lllyasviel/control_v11f1p_sd15_depth")
        assert (preset.depth_model, preset.clip_model) == ("dpt-hybrid", sd15.clip_model)
        assert presets.same_architecture(preset.name, "sd15") and presets.same_architecture(preset.name, "sd15-random")
    assert lightning.motion_adapter == ("ByteDance/AnimateDiff-Lightning/"
                                        "animatediff_lightning_4step_diffusers.safetensors")
    assert lightning.motion_adapter_file == presets.HubFile("ByteDance/AnimateDiff-Lightning",
                                                             "animatediff_lightning_4step_diffusers.safetensors")
    assert (lightning.lora, lightning.lora_file) == (None, None)
    assert (lcm.motion_adapter, lcm.motion_adapter_file) == ("wangfuyun/AnimateLCM", None)  # a diffusers repository
    assert lcm.lora_file == presets.HubFile("wangfuyun/AnimateLCM", "AnimateLCM_sd15_t2v_lora.safetensors")
    assert lcm.lora_scale == 0.8
    # the existing presets are unchanged, and every preset has render defaults
    assert (sd15.motion_adapter, sd15.motion_adapter_file, sd15.lora) == (presets.MOTION_ADAPTER_ID, None, None)
    assert {name: p.shot_defaults() for name, p in presets.PRESETS.items()} == {
        "sd15": {"steps": 25, "guidance": 7.5, "scheduler": "ddim"},
        "tiny": {"steps": 25, "guidance": 7.5, "scheduler": "ddim"},
        "sd15-random": {"steps": 25, "guidance": 7.5, "scheduler": "ddim"},
        "sd15-lightning": {"steps": 4, "guidance": 1.0, "scheduler": "euler"},
        "sd15-lcm": {"steps": 6, "guidance": 1.5, "scheduler": "lcm"},
        "toy": {"steps": 20, "guidance": 4.0, "scheduler": "ddim"}}
    assert dict(lightning.scheduler_config) == {"timestep_spacing": "trailing"}
    assert all(dict(presets.get_preset(name).scheduler_config) == {}
               for name in ("sd15", "tiny", "sd15-random", "sd15-lcm"))
    for preset in presets.PRESETS.values():  # the storyboard format accepts every preset's defaults
        assert ModelDefaults.from_mapping(preset.shot_defaults()).model_dump() == preset.shot_defaults()


@pytest.mark.parametrize("value, message", [
    ("org/name/weights.ckpt", "pickle-based checkpoints can run code"),
    ("org/name/folder", "must be a .safetensors file"),
    ("org", "neither a hub repository id"),
    ("org//file.safetensors", "neither a hub repository id"),
])
def test_hub_files_are_safetensors_files_in_a_repository(value, message):
    assert presets.parse_hub_file("org/name") is None
    assert presets.parse_hub_file("org/name/sub/w.safetensors") == presets.HubFile("org/name", "sub/w.safetensors")
    with pytest.raises(presets.HubFileError, match=message) as raised:
        presets.parse_hub_file(value)
    assert isinstance(raised.value, StoryreelError) and raised.value.exit_code == 2


# -- the schedulers ---------------------------------------------------------------------------------------------
def _config(scheduler) -> dict:
    """The values the scheduler's class takes (from_config also keeps keys it does not use)."""
    takes = set(inspect.signature(type(scheduler).__init__).parameters)
    return {key: value for key, value in dict(scheduler.config).items() if key in takes}


def test_preset_schedulers_are_what_the_model_cards_build():
    from diffusers import EulerDiscreteScheduler, LCMScheduler

    # the model cards: <Scheduler>.from_config(<the base model's scheduler config>, <their changes>)
    sd15 = {**schedulers.SD15_SCHEDULER_CONFIG, "skip_prk_steps": True}
    lightning = schedulers.preset_scheduler("sd15-lightning")
    card = EulerDiscreteScheduler.from_config(sd15, timestep_spacing="trailing", beta_schedule="linear")
    assert isinstance(lightning, EulerDiscreteScheduler) and _config(lightning) == _config(card)
    lightning.set_timesteps(4)
    assert lightning.timesteps.tolist() == [999, 749, 499, 249]
    lcm = schedulers.preset_scheduler("sd15-lcm")
    card = LCMScheduler.from_config(sd15, beta_schedule="linear")
    assert isinstance(lcm, LCMScheduler) and _config(lcm) == _config(card)
    assert _config(schedulers.make_scheduler("lcm")) == _config(lcm)
    lcm.set_timesteps(6)
    assert lcm.timesteps.tolist() == [999, 839, 679, 499, 339, 179]
    # the presets of today keep their DDIM; a preset's overrides apply to the scheduler a storyboard names
    assert _config(schedulers.preset_scheduler("sd15")) == _config(schedulers.make_scheduler("ddim"))
    ddim = schedulers.preset_scheduler("sd15-lightning", "ddim")
    assert ddim.config.timestep_spacing == "trailing"
    ddim.set_timesteps(4)
    assert ddim.timesteps.tolist() == [999, 749, 499, 249]


def test_unknown_scheduler_and_preset_names_are_refused():
    for call in (lambda: schedulers.make_scheduler("plms"), lambda: schedulers.preset_scheduler("sd15", "plms")):
        with pytest.raises(presets.UnknownSchedulerError, match="unknown scheduler 'plms'; choose one of "
                                                                "ddim, euler, dpmpp_2m, lcm") as raised:
            call()
        assert isinstance(raised.value, StoryreelError) and isinstance(raised.value, ValueError)
    with pytest.raises(presets.UnknownPresetError, match="sd15, tiny, sd15-random, sd15-lightning, sd15-lcm"):
        schedulers.preset_scheduler("sd21")
    with pytest.raises(presets.UnknownSchedulerError, match="preset 'x': unknown scheduler 'pndm'"):
        presets.ModelPreset("x", "", architecture="sd15", render="hub", depth_model="d", clip_model="c",
                            scheduler="pndm")
    with pytest.raises(StoryreelError, match="defaults.scheduler: must be one of 'ddim', 'euler', 'dpmpp_2m', 'lcm'"):
        parse_storyboard({**STORY, "defaults": {"scheduler": "pndm"}})


# -- our sampler with them, against diffusers -----------------------------------------------------------------
@pytest.mark.parametrize("preset, steps, guidance", [("sd15-lightning", 4, 1.0), ("sd15-lcm", 6, 1.5)])
def test_sampler_matches_the_pipeline_with_the_preset_scheduler(components, cond, preset, steps, guidance):
    """The calls render-story makes: the shot's settings with the preset's defaults, the preset's scheduler
    for the shot's scheduler name; tau = 1 is diffusers' pipeline exactly (LCM's noise between steps comes
    from the same generator in the same order)."""
    from diffusers import AnimateDiffControlNetPipeline

    shot = parse_storyboard(STORY).all_shot_settings(presets.get_preset(preset).shot_defaults())[0]
    assert (shot.steps, shot.guidance, shot.scheduler) == (steps, guidance, presets.get_preset(preset).scheduler)
    pipe = AnimateDiffControlNetPipeline(**{**components.pipeline_kwargs(),
                                            "scheduler": schedulers.preset_scheduler(preset, shot.scheduler)})
    pipe.set_progress_bar_config(disable=True)
    reference = pipe(PROMPT, negative_prompt=NEGATIVE, conditioning_frames=list(cond), num_frames=FRAMES,
                     height=SIZE, width=SIZE, num_inference_steps=steps, guidance_scale=guidance,
                     generator=torch.Generator().manual_seed(3), output_type="pt").frames[0].permute(0, 2, 3, 1)
    sampler = StructureGuidedSampler(components, scheduler=schedulers.preset_scheduler(preset, shot.scheduler))
    calls = []
    hook = components.controlnet.register_forward_hook(lambda module, args, out: calls.append(args[0].shape[0]))
    try:
        ours = sampler(PROMPT, NEGATIVE, conditioning=cond, steps=shot.steps, guidance_scale=shot.guidance, tau=1.0,
                       seed=3, output_type="pt")
    finally:
        hook.remove()
    assert ours.frames.shape == (FRAMES, SIZE, SIZE, 3)
    assert (ours.frames - reference).abs().max().item() < 1e-4
    assert len(ours.timesteps) == steps and ours.controlnet_calls == steps
    assert calls == [FRAMES * (2 if guidance > 1 else 1)] * steps  # guidance 1: no unconditional half
    other = sampler(PROMPT, NEGATIVE, conditioning=cond, steps=shot.steps, guidance_scale=shot.guidance, seed=4,
                    output_type="latent")
    assert (other.latents - ours.latents).abs().max().item() > 1e-3


# -- preset defaults in the shot settings ----------------------------------------------------------------------
LIGHTNING = {"steps": 4, "guidance": 1.0, "scheduler": "euler"}


def test_preset_defaults_fill_what_the_storyboard_leaves_out():
    story = parse_storyboard(STORY)
    a, b = story.all_shot_settings(LIGHTNING)
    assert (a.steps, a.guidance, a.scheduler, a.tau) == (4, 1.0, "euler", 0.5)
    assert (b.steps, b.guidance, b.scheduler, b.tau) == (4, 1.0, "euler", 0.8)
    assert {k: a.sources[k] for k in ("steps", "guidance", "scheduler", "tau", "width")} == {
        "steps": "preset", "guidance": "preset", "scheduler": "preset", "tau": "default", "width": "default"}
    assert b.sources["tau"] == "shot" and b.to_dict()["sources"]["steps"] == "preset"  # sidecars can record it
    plain = story.all_shot_settings()[0]
    assert (plain.steps, plain.guidance, plain.scheduler) == (25, 7.5, "ddim")
    assert {plain.sources[k] for k in ("steps", "guidance", "scheduler")} == {"default"}
    partial = story.shot_settings("a", {"steps": 6})
    assert (partial.steps, partial.guidance, partial.scheduler) == (6, 7.5, "ddim")
    assert story.setting_sources("a", {"steps": 6})["guidance"] == "default"


def test_the_storyboard_wins_even_with_the_formats_default_value():
    story = parse_storyboard({**STORY, "defaults": {"steps": 25, "scheduler": "ddim", "width": 256}})
    a = story.shot_settings("a", LIGHTNING)
    assert (a.steps, a.guidance, a.scheduler, a.width) == (25, 1.0, "ddim", 256)
    assert {k: a.sources[k] for k in ("steps", "guidance", "scheduler", "width")} == {
        "steps": "storyboard", "guidance": "preset", "scheduler": "storyboard", "width": "storyboard"}


def test_left_out_stays_left_out_through_save_and_copies(tmp_path):
    story = parse_storyboard({**STORY, "defaults": {"guidance": 3.0}})
    saved = save_storyboard(story, tmp_path / "story.json")
    written = json.loads((tmp_path / "story.json").read_text())
    assert written["defaults"]["guidance"] == 3.0 and "steps" not in written["defaults"]
    assert "scheduler" not in written["defaults"] and written["defaults"]["width"] == 512
    copied = parse_storyboard(story.model_dump(mode="json", exclude_none=True))  # what the planner does
    for again in (saved, load_storyboard(tmp_path / "story.json"), copied):
        a = again.shot_settings("a", LIGHTNING)
        assert (a.steps, a.guidance, a.scheduler) == (4, 3.0, "euler")


def test_settings_hash_is_unchanged_without_model_defaults():
    story = parse_storyboard(STORY)
    assert story.settings_hash("a") == HASH_BEFORE_MODEL_DEFAULTS
    assert story.settings_hash("a", model_defaults=presets.get_preset("sd15").shot_defaults()) == \
        HASH_BEFORE_MODEL_DEFAULTS  # sd15's defaults are the format's: sd15 folders resume either way
    lightning = story.settings_hash("a", model_defaults=LIGHTNING)
    assert lightning != HASH_BEFORE_MODEL_DEFAULTS
    assert lightning == parse_storyboard({**STORY, "defaults": LIGHTNING}).settings_hash("a")  # values, not origin


@pytest.mark.parametrize("values, message", [
    ({"steps": 0}, "model defaults: steps: must be between 1 and 200, got 0"),
    ({"guidance": "high"}, "model defaults: guidance: must be a number, got 'high'"),
    ({"scheduler": "pndm"}, "model defaults: scheduler: must be one of 'ddim', 'euler', 'dpmpp_2m', 'lcm', got 'pndm'"),
    ({"stepz": 4}, "model defaults: stepz: unknown field; did you mean 'steps'?"),
])
def test_bad_model_defaults_name_the_key(values, message):
    story = parse_storyboard(STORY)
    with pytest.raises(ModelDefaultsError) as raised:
        story.all_shot_settings(values)
    assert str(raised.value) == message
    assert isinstance(raised.value, StoryreelError) and raised.value.exit_code == 2
