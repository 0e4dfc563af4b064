"""Issue 12's smaller departures: DDIM eta and the depth range per shot (schema, hash, what reaches the sampler and
the conditioning), character tokens in texts of shots that do not list the character, a clear error for long
prompt embeddings without matching negatives, and training that drops depth where the render's tau would."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_render_story import cheap_storyboard, run

from storyboard import StoryboardError, load_storyboard
from storyboard.shot_settings import DEPTH_RANGES as STORYBOARD_DEPTH_RANGES
from structure.depth_sequence import DEPTH_RANGES as STRUCTURE_DEPTH_RANGES

FABLE = Path(__file__).resolve().parents[1] / "data" / "examples" / "fable.json"
# data/examples/fable.json's first shot, computed before eta and depth_range existed: existing output folders
# must keep resuming, so a storyboard that does not use a new field keeps its hash.
FABLE_FIRST_SHOT_HASH = "dddf143f6a3c0fc2744d978117f99835a7cb5fba2dceef2e6bdc93012ac9e18d"


def write_fable(folder: Path, edit) -> Path:
    data = json.loads(FABLE.read_text())
    edit(data)
    path = folder / "fable.json"
    path.write_text(json.dumps(data))
    return path


def load_edited(tmp_path: Path, edit):
    return load_storyboard(write_fable(tmp_path, edit))


# -- 1 and 4: eta and depth_range in the storyboard --------------------------------------------------------
def test_the_fable_keeps_its_pinned_settings_hash():
    storyboard = load_storyboard(FABLE)
    assert storyboard.settings_hash(storyboard.shots[0].id) == FABLE_FIRST_SHOT_HASH
    settings = storyboard.shot_settings(0)
    assert (settings.eta, settings.depth_range) == (0.0, "sequence")


def test_eta_and_depth_range_come_from_the_defaults_or_the_shot_and_change_the_hash(tmp_path):
    def edit(data):
        data["defaults"].update(eta=1.0, depth_range="frame")
        data["shots"][1].update(eta=0.25, depth_range="sequence")

    storyboard = load_edited(tmp_path, edit)
    first, second = storyboard.shot_settings(0), storyboard.shot_settings(1)
    assert (first.eta, first.depth_range, first.sources["eta"]) == (1.0, "frame", "storyboard")
    assert (second.eta, second.depth_range, second.sources["depth_range"]) == (0.25, "sequence", "shot")
    assert storyboard.settings_hash(0) != FABLE_FIRST_SHOT_HASH
    # written out at their defaults they are the defaults: the hash is the old one
    same = load_edited(tmp_path, lambda d: d["defaults"].update(eta=0.0, depth_range="sequence"))
    assert same.settings_hash(0) == FABLE_FIRST_SHOT_HASH
    assert load_edited(tmp_path, lambda d: d["shots"][0].update(eta=1.0)).settings_hash(0) != FABLE_FIRST_SHOT_HASH
    assert load_edited(tmp_path, lambda d: d["shots"][0].update(depth_range="frame")).settings_hash(0) \
        != FABLE_FIRST_SHOT_HASH


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["defaults"].update(eta=1.5), "defaults.eta: must be between 0 and 1, got 1.5"),
    (lambda d: d["shots"][2].update(eta=-0.1), "shots[2].eta: must be between 0 and 1, got -0.1"),
    (lambda d: d["shots"][0].update(depth_range="pixel"), "shots[0].depth_range: must be one of"),
    (lambda d: d["defaults"].update(depth_range="frames"), "defaults.depth_range: must be one of"),
])
def test_bad_eta_and_depth_range_name_their_json_path(tmp_path, edit, message):
    with pytest.raises(StoryboardError) as caught:
        load_edited(tmp_path, edit)
    assert f"fable.json: {message}" in str(caught.value)


def test_the_schema_accepts_and_refuses_eta_and_depth_range():
    jsonschema = pytest.importorskip("jsonschema")
    from storyboard import storyboard_json_schema

    validator = jsonschema.Draft202012Validator(storyboard_json_schema())
    data = json.loads(FABLE.read_text())
    data["defaults"].update(eta=1.0, depth_range="frame")
    data["shots"][0].update(eta=0.0, depth_range="sequence")
    assert validator.is_valid(data)
    for key, bad in (("eta", 1.01), ("eta", -1), ("depth_range", "per-frame")):
        changed = json.loads(json.dumps(data))
        changed["shots"][0][key] = bad
        assert not validator.is_valid(changed), (key, bad)


def test_the_storyboard_and_structure_know_the_same_depth_ranges():
    assert STORYBOARD_DEPTH_RANGES == STRUCTURE_DEPTH_RANGES == ("sequence", "frame")


# -- 2: a character's token in a shot that does not list the character ---------------------------------------
@pytest.mark.parametrize("edit, message", [
    (lambda d: d["shots"][1].update(caption="<hare> rabbit racing <tortoise> turtle"),
     "shots[1].caption: uses <tortoise>, the token of 'tortoise', who is not in shots[1].characters"),
    (lambda d: (d["shots"][1].pop("caption"), d["shots"][1].update(text="The <tortoise> turtle waits.")),
     "shots[1].text: uses <tortoise>, the token of 'tortoise', who is not in shots[1].characters"),
    (lambda d: d["shots"][1].update(negative_prompt="blurry, <tortoise> turtle"),
     "shots[1].negative_prompt: uses <tortoise>, the token of 'tortoise', who is not in shots[1].characters"),
    (lambda d: d["defaults"].update(negative_prompt="blurry, <tortoise> turtle"),
     "defaults.negative_prompt: uses <tortoise>, the token of 'tortoise', who is not in shots[1].characters "
     "(its negative prompt)"),
    (lambda d: d.update(style="storybook with <hare> rabbit"),
     "style: uses <hare>, the token of 'hare', who is not in shots[2].characters "
     "(the style is part of every shot's prompt)"),
])
def test_a_token_of_an_unlisted_character_is_refused_with_its_path(tmp_path, edit, message):
    data = json.loads(FABLE.read_text())
    assert data["shots"][1]["characters"] == ["hare"] and data["shots"][2]["characters"] == ["tortoise"]
    path = write_fable(tmp_path, edit)
    with pytest.raises(StoryboardError) as caught:
        load_storyboard(path)
    assert str(caught.value) == f"{path}: {message}"


def test_a_token_in_the_text_is_fine_when_the_caption_is_the_prompt_or_the_character_is_listed(tmp_path):
    # the text is not encoded when the shot has a caption; a listed character's token is what captions are for
    load_edited(tmp_path, lambda d: d["shots"][1].update(text="The hare passes the <tortoise> turtle."))
    load_edited(tmp_path, lambda d: d["shots"][1].update(negative_prompt="<hare> rabbit, blurry"))


# -- 1: eta reaches the sampler ------------------------------------------------------------------------------
def test_a_shot_with_eta_1_calls_the_sampler_with_eta_1(tmp_path, tiny_index, monkeypatch):
    from render.sampler import StructureGuidedSampler

    calls = []
    original = StructureGuidedSampler.__call__

    def spy(self, *args, **kwargs):
        calls.append(kwargs.get("eta"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(StructureGuidedSampler, "__call__", spy)

    def edit(data):
        data["shots"] = data["shots"][:2]
        data["shots"][1]["eta"] = 1.0

    result = run(cheap_storyboard(tmp_path, edit), "--index", tiny_index, "--out", tmp_path / "out",
                 "--models", "tiny")
    assert result.exit_code == 0, result.output
    assert calls == [0.0, 1.0]


def test_eta_changes_a_ddim_render(components, one_thread):
    from render.sampler import StructureGuidedSampler
    from storyreel.models.schedulers import preset_scheduler

    condition = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))

    def latents(eta):
        sampler = StructureGuidedSampler(components, scheduler=preset_scheduler("tiny", "ddim"))
        return sampler("a rabbit", conditioning=condition, steps=3, seed=0, eta=eta, output_type="latent").latents

    assert torch.equal(latents(0.0), latents(0.0))
    assert not torch.allclose(latents(0.0), latents(1.0))


# -- 3: long prompt embeddings without matching negatives ---------------------------------------------------
def test_long_prompt_embeddings_with_short_negatives_say_to_use_encode_pair(components, one_thread):
    from render.prompt_weighting import WeightedPromptEncoder
    from render.sampler import StructureGuidedSampler

    encoder = WeightedPromptEncoder(components.tokenizer, components.text_encoder)
    long_prompt = ", ".join(["a small brown rabbit"] * 37)
    cond = encoder.encode(long_prompt)
    assert cond.shape[1] == 3 * 77
    short_negative = encoder.encode("blurry")
    condition = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    sampler = StructureGuidedSampler(components)
    with pytest.raises(ValueError, match=r"prompt_embeds are 231 tokens .* negative_prompt_embeds are 77 tokens"
                                         r".*WeightedPromptEncoder\.encode_pair"):
        sampler(prompt_embeds=cond, negative_prompt_embeds=short_negative, conditioning=condition, steps=1,
                seed=0, output_type="latent")
    with pytest.raises(ValueError, match="encode_pair"):  # the negative the sampler encodes itself is 77 tokens
        sampler(prompt_embeds=cond, negative_prompt="blurry", conditioning=condition, steps=1, seed=0,
                output_type="latent")
    with pytest.raises(ValueError, match="from prompt_embeds_for_step at step 0"):
        pair = encoder.encode_pair("a rabbit", "blurry")
        sampler(prompt_embeds=pair[0], negative_prompt_embeds=pair[1], conditioning=condition, steps=1, seed=0,
                prompt_embeds_for_step=lambda i, t: (cond, None), output_type="latent")
    # without guidance there is nothing to batch together, and encode_pair's pair renders
    sampler(prompt_embeds=cond, negative_prompt_embeds=short_negative, conditioning=condition, steps=1, seed=0,
            guidance_scale=1.0, output_type="latent")
    cond, uncond = encoder.encode_pair(long_prompt, "blurry")
    sampler(prompt_embeds=cond, negative_prompt_embeds=uncond, conditioning=condition, steps=1, seed=0,
            output_type="latent")


# -- 4: the depth range reaches the conditioning -------------------------------------------------------------
def test_frame_depth_range_stretches_every_frame_and_sequence_does_not(real_clips, tiny_depth_model):
    """On a real clip with the tiny DPT: ``frame`` is each frame's own min-max of the raw depth (min 0, max 1 in
    every frame of the conditioning), ``sequence`` one range for all frames."""
    from structure.conditioning import controlnet_condition
    from structure.extract import extract_depth, extract_raw_depth

    source = (real_clips / "v_SoccerJuggling_g23_c01.avi", 1.0, 4.0)
    raw = extract_raw_depth(source, frames=6, size=(64, 64), estimator=tiny_depth_model).values
    per_frame = extract_depth(source, frames=6, size=(64, 64), estimator=tiny_depth_model, depth_range="frame")
    sequence = extract_depth(source, frames=6, size=(64, 64), estimator=tiny_depth_model)
    frame_condition = controlnet_condition(per_frame).float()
    assert torch.allclose(frame_condition.amin(dim=(1, 2, 3)), torch.zeros(6), atol=1e-6)
    assert torch.allclose(frame_condition.amax(dim=(1, 2, 3)), torch.ones(6), atol=1e-6)
    low, high = raw.min(axis=(1, 2), keepdims=True), raw.max(axis=(1, 2), keepdims=True)
    assert np.allclose(per_frame.depth, (raw - low) / (high - low), atol=1e-5)
    assert per_frame.settings["normalization"] == "per-frame-minmax"
    assert sequence.settings["normalization"] == "sequence-percentile"
    one_range = np.clip((raw - sequence.settings["raw_low"])
                        / (sequence.settings["raw_high"] - sequence.settings["raw_low"]), 0, 1)
    assert np.allclose(sequence.depth, one_range, atol=1e-5)
    assert not np.allclose(per_frame.depth, sequence.depth, atol=1e-3)


def test_a_frame_nearer_than_the_rest_dims_the_others_only_under_sequence():
    """Synthetic frames: the same gradient, the second frame's twice as near. Per frame both span 0 to 1; over
    the sequence the first frame stays darker."""
    from structure.conditioning import controlnet_condition
    from structure.extract import extract_depth

    def gradient_depth(frames):
        ramp = np.linspace(0.0, 1.0, frames.shape[2], dtype=np.float32)[None, None, :]
        return np.broadcast_to(ramp, frames.shape[:3]) * (1.0 + frames[:, :1, :1, 0].astype(np.float32) / 255.0)

    images = [np.zeros((32, 32, 3), np.uint8), np.full((32, 32, 3), 255, np.uint8)]
    frame = controlnet_condition(extract_depth(images, estimator=gradient_depth, depth_range="frame")).float()
    sequence = controlnet_condition(extract_depth(images, estimator=gradient_depth, depth_range="sequence")).float()
    assert torch.allclose(frame.amax(dim=(1, 2, 3)), torch.ones(2)) and float(frame.min()) == 0.0
    assert float(sequence[0].max()) < 0.6 and float(sequence[1].max()) == 1.0


def test_an_unknown_depth_range_names_the_argument(tiny_depth_model):
    from structure.extract import extract_depth
    from structure.validation import InvalidArgumentError

    with pytest.raises(InvalidArgumentError, match="depth_range"):
        extract_depth([np.zeros((32, 32, 3), np.uint8)], estimator=tiny_depth_model, depth_range="pixel")


def test_a_shot_with_frame_depth_range_renders_with_per_frame_depth(tmp_path, tiny_index, monkeypatch):
    import structure.extract as extract

    ranges = []
    original = extract.extract_depth

    def spy(*args, **kwargs):
        ranges.append(kwargs.get("depth_range"))
        sequence = original(*args, **kwargs)
        if kwargs.get("depth_range") == "frame":
            assert np.allclose(sequence.depth.max(axis=(1, 2)), 1.0) and np.allclose(sequence.depth.min(axis=(1, 2)), 0)
        return sequence

    monkeypatch.setattr(extract, "extract_depth", spy)

    def edit(data):
        data["shots"] = data["shots"][:2]
        data["shots"][0]["depth_range"] = "frame"

    result = run(cheap_storyboard(tmp_path, edit), "--index", tiny_index, "--out", tmp_path / "out",
                 "--models", "tiny")
    assert result.exit_code == 0, result.output
    assert ranges == ["frame", "sequence"]


# -- 5: training without depth where the render's tau runs without it ----------------------------------------
def test_depth_conditioned_follows_the_renders_tau_window():
    from characters.training import depth_conditioned

    timesteps = torch.tensor([0, 499, 500, 999])
    assert depth_conditioned(timesteps, None, 1000).tolist() == [True] * 4
    assert depth_conditioned(timesteps, 0.5, 1000).tolist() == [False, False, True, True]
    assert depth_conditioned(timesteps, 1.0, 1000).tolist() == [True] * 4
    assert depth_conditioned(timesteps, 0.0, 1000).tolist() == [False] * 4


def test_depth_tau_is_checked_and_part_of_a_checkpoints_identity_only_when_set():
    from characters.errors import CharacterError
    from characters.training import TrainingSettings

    base = dict(name="cat", token="<cat>", class_word="cat")
    assert "depth_tau" not in TrainingSettings(**base).identity()  # older checkpoints keep resuming
    assert TrainingSettings(**base, depth_tau=0.5).identity()["depth_tau"] == 0.5
    with pytest.raises(CharacterError, match="depth_tau must be between 0 and 1"):
        TrainingSettings(**base, depth_tau=1.5).check()


def test_training_drops_depth_for_timesteps_the_render_runs_without_it(components, tiny_depth_model,
                                                                       reference_images, one_thread):
    """A spy on the ControlNet and the UNet during training steps: with depth_tau 0.5 the ControlNet sees only
    batches with a timestep of 500 or more and a video below 500 gets zero residuals; off, every step uses it."""
    from characters.errors import ReferenceImageCountWarning
    from characters.reference_images import load_reference_images
    from characters.training import CharacterTrainer, TrainingSettings

    with pytest.warns(ReferenceImageCountWarning):  # the two shared photographs are enough for a few steps
        photos = load_reference_images(reference_images, 64)
    controlnet_timesteps, unet_residuals = [], []
    controlnet_forward, unet_forward = components.controlnet.forward, components.unet.forward

    def controlnet_spy(sample, timestep, *args, **kwargs):
        controlnet_timesteps.append(sorted(set(timestep.tolist())))
        return controlnet_forward(sample, timestep, *args, **kwargs)

    def unet_spy(sample, timestep, *args, **kwargs):
        mid = kwargs.get("mid_block_additional_residual")
        frames = sample.shape[2]
        unet_residuals.append(None if mid is None else
                              [float(m.detach().abs().max()) for m in mid.reshape(-1, frames, *mid.shape[1:])])
        return unet_forward(sample, timestep, *args, **kwargs)

    def train(depth_tau, steps=4):
        settings = TrainingSettings(name="cat", token="<cat>", class_word="cat", steps=steps, rank=2, resolution=64,
                                    frames=2, batch_size=2, seed=5, depth_tau=depth_tau)
        controlnet_timesteps.clear()
        unet_residuals.clear()
        with CharacterTrainer(components, tiny_depth_model, photos, settings) as trainer:
            components.controlnet.forward, components.unet.forward = controlnet_spy, unet_spy
            try:
                batches = [trainer.sample_batch(step).timesteps.tolist() for step in range(steps)]
                for _ in range(steps):
                    trainer.train_step()
                # one batch of each kind, whatever the seed drew: all below, mixed, all above the threshold
                for timesteps in ([100, 200], [100, 900], [700, 900]):
                    batch = trainer.sample_batch(0)
                    batch.timesteps = torch.tensor(timesteps)
                    trainer.loss(batch)
                    batches.append(timesteps)
            finally:
                del components.controlnet.forward, components.unet.forward
        return batches

    batches = train(None)
    assert len(controlnet_timesteps) == len(unet_residuals) == len(batches) == 7
    assert all(residuals is not None and min(residuals) > 0 for residuals in unet_residuals)

    batches = train(0.5)
    assert len(unet_residuals) == len(batches) == 7
    conditioned = [timesteps for timesteps in batches if max(timesteps) >= 500]
    assert controlnet_timesteps == [sorted(set(t)) for t in conditioned]
    for timesteps, residuals in zip(batches, unet_residuals):
        if max(timesteps) < 500:
            assert residuals is None, timesteps  # the ControlNet was skipped
        else:
            assert [r > 0 for r in residuals] == [t >= 500 for t in timesteps], (timesteps, residuals)


def test_train_character_depth_tau_flag(reference_images, tmp_path):
    from click.testing import CliRunner

    from characters import load_character
    from characters.cli import main

    help_text = " ".join(CliRunner().invoke(main, ["--help"]).output.split())
    assert "--depth-tau" in help_text and "rendered with tau below 1" in help_text
    out = tmp_path / "cat.safetensors"
    args = ["--images", str(reference_images), "--name", "cat", "--token", "<cat>", "--class-word", "cat",
            "--out", str(out), "--models", "tiny", "--resolution", "64", "--frames", "2", "--rank", "2",
            "--device", "cpu", "--quiet", "--steps", "2"]
    bad = CliRunner().invoke(main, [*args, "--depth-tau", "1.5"], catch_exceptions=False)
    assert bad.exit_code == 2 and "--depth-tau" in bad.output and not out.exists()
    result = CliRunner().invoke(main, [*args, "--depth-tau", "0.5"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert load_character(out).training["depth_tau"] == 0.5
