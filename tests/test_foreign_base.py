"""Characters and the base weights they were trained on: recorded in the file, checked when rendering.

Two tiny base variants: the tiny preset's VAE saved with ``save_pretrained`` (the same weights) and the same
VAE with one weight changed, each loaded through a TOML ``[components]`` config.
"""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from test_render_story import cheap_storyboard, run

from characters import CharacterFileError, CharacterSet, load_character, save_character
from characters.character_set import OtherBaseWeightsWarning, UnrecordedBaseWeightsWarning, base_weights_fingerprint
from storyreel.models import loading


@pytest.fixture(scope="module")
def base_configs(tmp_path_factory) -> dict[str, Path]:
    """``same``: the tiny preset's own VAE from a folder; ``other``: that VAE with one weight changed."""
    folder = tmp_path_factory.mktemp("bases")
    vae = loading.load_render_components("tiny", device="cpu").vae
    configs = {}
    for name in ("same", "other"):
        variant = copy.deepcopy(vae)
        if name == "other":
            with torch.no_grad():
                variant.encoder.conv_in.weight.view(-1)[0] += 0.25
        variant.save_pretrained(folder / name / "vae", safe_serialization=True)
        configs[name] = folder / name / "models.toml"
        configs[name].write_text('[components]\nvae = "vae"\n')
    return configs


@pytest.fixture(scope="module")
def hare(tmp_path_factory) -> Path:
    """A character trained for a few steps on the tiny preset (its file records the base weights)."""
    from characters.training import TrainingSettings, train_character
    from structure.depth_models import load_depth_model

    components = loading.load_render_components("tiny", device="cpu")
    path = tmp_path_factory.mktemp("hare") / "hare.safetensors"
    images = [np.random.default_rng(i).integers(0, 256, (72, 80, 3), dtype=np.uint8) for i in range(3)]
    settings = TrainingSettings(name="hare", token="<hare>", class_word="rabbit", steps=3, rank=4, resolution=64,
                                frames=2, table_lr=5e-2, lora_lr=5e-2, seed=0)
    train_character(components, load_depth_model("tiny", device="cpu", progress=False), images, settings, path,
                    base_model=loading.base_model_record(components), progress=False)
    return path


def components_of(config: Path | None = None, **kwargs):
    return loading.load_render_components("tiny", config_file=config, device="cpu", **kwargs)


def test_the_file_records_the_weights_it_was_trained_on(hare, base_configs):
    recorded = load_character(hare).base_model["weights"]
    assert recorded == base_weights_fingerprint(components_of())
    assert recorded["fingerprint"] == base_weights_fingerprint(components_of(base_configs["same"]))["fingerprint"]
    assert load_character(hare).base_model["preset"] == "tiny"  # the caller's record is kept beside it


def test_the_fingerprint_names_the_weights_whatever_their_precision_or_adapters(hare, base_configs):
    plain = base_weights_fingerprint(components_of())
    assert base_weights_fingerprint(components_of(dtype=torch.float16))["fingerprint"] == plain["fingerprint"]
    other = base_weights_fingerprint(components_of(base_configs["other"]))
    assert other["fingerprint"] != plain["fingerprint"]
    assert [k for k in plain["components"] if plain["components"][k] != other["components"][k]] == ["vae"]
    components = components_of()
    with CharacterSet(components) as characters:
        characters.add(load_character(hare))
        assert any(".lora_" in name for name in components.unet.state_dict())  # the LoRA is in the UNet
        assert base_weights_fingerprint(components) == plain


def test_other_base_weights_are_refused_naming_both_fingerprints_or_allowed_with_a_warning(hare, base_configs):
    components = components_of(base_configs["other"])
    ours = base_weights_fingerprint(components)["fingerprint"]
    theirs = load_character(hare).base_model["weights"]["fingerprint"]
    with pytest.raises(CharacterFileError) as refused:
        CharacterSet(components, base_model=loading.base_model_record(components)).add(load_character(hare))
    message = str(refused.value)
    assert str(hare) in message and theirs in message and ours in message and "differing: vae" in message
    assert not getattr(components.unet, "peft_config", None)  # refused before anything was loaded

    with pytest.warns(OtherBaseWeightsWarning, match=theirs):
        with CharacterSet(components, allow_other_base=True) as characters:
            characters.add(load_character(hare))
            assert characters.base_weights_match("hare") == "other"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same weights: no warning
        with CharacterSet(components_of(base_configs["same"])) as characters:
            characters.add(load_character(hare))
            assert characters.base_weights_match("hare") == "same"


def test_an_old_file_without_a_fingerprint_still_loads_with_a_warning(hare, tmp_path, base_configs):
    old = load_character(hare)
    old.base_model = {k: v for k, v in old.base_model.items() if k != "weights"}
    path = save_character(old, tmp_path / "old-hare.safetensors")
    assert "weights" not in load_character(path).base_model
    with pytest.warns(UnrecordedBaseWeightsWarning, match="old-hare.safetensors"):
        with CharacterSet(components_of(base_configs["other"])) as characters:
            characters.add(load_character(path))
            assert characters.base_weights_match("hare") == "unrecorded"


def test_render_story_refuses_other_base_weights_before_rendering_unless_allowed(hare, base_configs, tmp_path,
                                                                                real_clips):
    def edit(data):
        data["shots"] = data["shots"][:1]  # challenge: the hare and the tortoise (no file: untrained)
        data["shots"][0]["clip"] = {"path": str(real_clips / "R6llTwEh07w.mp4"), "start": 0.0, "end": 1.0}
    storyboard = cheap_storyboard(tmp_path, edit)
    args = [storyboard, "--models", "tiny", "--character", f"hare={hare}"]
    theirs = load_character(hare).base_model["weights"]["fingerprint"]
    ours = base_weights_fingerprint(components_of(base_configs["other"]))["fingerprint"]

    args_other = [*args, "--model-config", base_configs["other"]]
    result = run(*args_other, "--out", tmp_path / "refused")
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: ") and theirs in result.output and ours in result.output
    assert "--allow-other-base" in result.output
    assert not (tmp_path / "refused").exists()  # nothing written, not even the lock file

    with pytest.warns(OtherBaseWeightsWarning, match="rendered anyway"):
        result = run(*args_other, "--out", tmp_path / "allowed", "--allow-other-base")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "allowed" / "report.json").read_text())
    assert report["allow_other_base"] is True and report["characters_on_other_base"] == ["hare"]
    assert report["shots"][0]["characters"]["hare"]["base_weights"] == "other"

    result = run(*args, "--model-config", base_configs["same"], "--out", tmp_path / "same")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "same" / "report.json").read_text())
    assert report["allow_other_base"] is False and report["characters_on_other_base"] == []
    assert report["shots"][0]["characters"]["hare"]["base_weights"] == "same"
