"""The model specification: every bad value (a missing folder or file, a typo'd TOML key, a pickle file, an
unknown preset, a base that is not SD1.5) raises naming the value and its flag or TOML key, before any model
loads; what the values resolve to (precedence, relative paths, the depth model, the record)."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from characters.cli import main as train_character
from storyreel.errors import StoryreelError
from storyreel.models import architectures, loading, presets, single_file
from storyreel.models.loading import load_render_components
from storyreel.models.specification import ModelConfigError, ModelSpecification


@pytest.fixture()
def nothing_loads(monkeypatch):
    """Every way a model gets built or loaded fails the test."""
    def loads(*args, **kwargs):
        raise AssertionError("a model was loaded")

    for module, name in ((loading, "load_component"), (single_file, "load_sd_checkpoint"),
                         (single_file, "load_motion_adapter_file"), (single_file, "fuse_lora_file"),
                         (architectures, "build_tiny_components"), (architectures, "build_random_components"),
                         (loading, "weights_file")):
        monkeypatch.setattr(module, name, loads)


def header_only_file(path, shapes: dict) -> str:
    """A safetensors file with tensors of these names and shapes (zeros; only the header is ever read)."""
    save_file({name: torch.zeros(shape, dtype=torch.float16) for name, shape in shapes.items()}, str(path))
    return str(path)


UNET = "model.diffusion_model."
SD2_LIKE = {f"{UNET}input_blocks.0.0.weight": (320, 4, 3, 3),
            f"{UNET}input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, 1024)}
INPAINTING = {f"{UNET}input_blocks.0.0.weight": (320, 9, 3, 3)}
SDXL_LIKE = {"conditioner.embedders.1.model.ln_final.weight": (1280,), "first_stage_model.encoder.conv_in.weight": (8,)}


def case_files(tmp_path) -> dict:
    """The files and folders the bad values point at."""
    (tmp_path / "model.ckpt").write_bytes(b"a pickle is never opened")
    (tmp_path / "renamed-pickle.safetensors").write_bytes(b"\x80\x04\x95 not safetensors at all, a pickle")
    sdxl_folder = tmp_path / "sdxl"
    (sdxl_folder / "unet").mkdir(parents=True)
    (sdxl_folder / "unet" / "config.json").write_text(json.dumps(
        {"block_out_channels": [320, 640, 1280], "cross_attention_dim": 2048, "in_channels": 4}))
    return {"sd2": header_only_file(tmp_path / "sd2.safetensors", SD2_LIKE),
            "inpainting": header_only_file(tmp_path / "inpainting.safetensors", INPAINTING),
            "sdxl": header_only_file(tmp_path / "sdxl.safetensors", SDXL_LIKE),
            "not_an_adapter": header_only_file(tmp_path / "adapter.safetensors", {"some.weight": (2, 2)}),
            "sdxl_folder": str(sdxl_folder)}


# (specification fields or a TOML file's text, where the error points, what it says)
BAD_VALUES = {
    "missing folder": ({"preset": "tiny", "controlnet": "{tmp}/no-such-controlnet"}, "--controlnet",
                       "no such folder '{tmp}/no-such-controlnet'"),
    "missing file": ({"preset": "tiny", "base": "{tmp}/realistic.safetensors"}, "--base",
                     "no such file '{tmp}/realistic.safetensors'"),
    "missing file, short path": ({"preset": "tiny", "base": "models/realistic.safetensors"}, "--base",
                                 "no such file"),
    "missing depth model folder": ({"preset": "tiny", "depth_model": "./no-such-dpt"}, "--depth-model",
                                   "no such folder"),
    "typo'd TOML key": ('[components]\nmotion_adaptor = "org/name"\n', "[components] motion_adaptor",
                        "unknown component 'motion_adaptor'; expected one of base, tokenizer, text_encoder, vae, "
                        "unet, motion_adapter, controlnet, lora, lora_scale, depth_model, sparsectrl, i2vgen, "
                        "ip_adapter (did you mean 'motion_adapter'?)"),
    "typo'd TOML table": ('[component]\nbase = "org/name"\n', "component", "unknown key"),
    "pickle file": ({"preset": "tiny", "base": "{tmp}/model.ckpt"}, "--base",
                    "refusing '{tmp}/model.ckpt': pickle-based checkpoints can run code"),
    "pickle file in TOML": ('[components]\nlora = "model.ckpt"\n', "[components] lora",
                            "refusing 'model.ckpt': pickle-based checkpoints can run code"),
    "pickle file on the hub": ({"motion_adapter": "guoyww/animatediff/mm_sd_v15_v2.ckpt"}, "--motion-adapter",
                               "refusing 'guoyww/animatediff/mm_sd_v15_v2.ckpt': pickle-based checkpoints"),
    "pickle renamed .safetensors": ({"preset": "tiny", "base": "{tmp}/renamed-pickle.safetensors"}, "--base",
                                    "'{tmp}/renamed-pickle.safetensors' is not a readable safetensors file"),
    "unknown preset": ({"preset": "sd21"}, "--models", "unknown preset 'sd21'; use one of sd15, tiny, sd15-random"),
    "unknown preset in TOML": ('preset = "sd21"\n[components]\n', "preset", "unknown preset 'sd21'"),
    "TOML for another preset": ({"preset": "sd15", "toml": 'preset = "tiny"\n[components]\n'}, "preset",
                                "the components are for preset 'tiny', not 'sd15' (--models)"),
    "SD2.x single file": ({"base": "{sd2}"}, "--base",
                          "'{sd2}' is not an SD1.5 checkpoint: its UNet attends to 1024-d text features, SD1.5's to "
                          "768-d (an SD2.x checkpoint)"),
    "inpainting single file": ({"base": "{inpainting}"}, "--base",
                               "is not an SD1.5 checkpoint: its UNet's input convolution is [320, 9, 3, 3], SD1.5's "
                               "[320, 4, 3, 3] ('model.diffusion_model.input_blocks.0.0.weight') (an inpainting UNet)"),
    "SDXL single file": ('[components]\nbase = "sdxl.safetensors"\n', "[components] base",
                         "'{sdxl}' is not an SD1.5 checkpoint: it is an SDXL checkpoint"),
    "SDXL folder": ('[components]\nbase = "sdxl"\n', "[components] base",
                    "'{sdxl_folder}' is not an SD1.5 model: unet/config.json has block_out_channels [320, 640, 1280], "
                    "SD1.5's is [320, 640, 1280, 1280]; unet/config.json has cross_attention_dim 2048, SD1.5's is 768"),
    "not a motion adapter": ({"preset": "sd15-lightning", "motion_adapter": "{not_an_adapter}"}, "--motion-adapter",
                             "'{not_an_adapter}' is not a motion adapter for SD1.5: it holds no motion modules"),
    "a single-file VAE": ({"vae": "stabilityai/sd-vae-ft-mse/vae.safetensors"}, "--vae",
                          "single files are taken for base, motion_adapter, lora"),
    "a LoRA folder on the hub": ('[components]\nlora = "wangfuyun/AnimateLCM"\n', "[components] lora",
                                 "names no .safetensors file"),
    "lora_scale without a LoRA": ('[components]\nlora_scale = 0.8\n', "[components] lora_scale",
                                  "there is no LoRA to scale (preset 'sd15' has none"),
    "lora_scale not a number": ('[components]\nlora_scale = "high"\n', "[components] lora_scale",
                                "expected a number (the LoRA's weight, such as 0.8), got 'high'"),
}


@pytest.mark.parametrize("case", list(BAD_VALUES))
def test_a_bad_value_names_itself_and_its_flag_or_key_before_anything_loads(case, tmp_path, nothing_loads,
                                                                             monkeypatch):
    values, where, detail = BAD_VALUES[case]
    files = {"tmp": str(tmp_path), **case_files(tmp_path)}
    monkeypatch.chdir(tmp_path)
    toml = tmp_path / "models.toml"
    if isinstance(values, str):
        toml.write_text(values)
        specification = ModelSpecification(config_file=toml)
    else:
        values = {key: value.format(**files) for key, value in values.items()}
        if "toml" in values:
            toml.write_text(values.pop("toml"))
            values["config_file"] = toml
        specification = ModelSpecification(**values)
    with pytest.raises(ModelConfigError) as raised:
        load_render_components(specification, device="cpu")
    message = str(raised.value)
    assert isinstance(raised.value, StoryreelError) and raised.value.exit_code == 2
    if where.startswith("--"):
        assert message.startswith(f"{where}: ") and raised.value.flag == where, message
    else:
        assert message.startswith(f"{toml}: {where}: "), message
    assert detail.format(**files) in message, message
    assert "\n" not in message


def test_train_character_names_the_flag_and_writes_nothing(tmp_path, nothing_loads):
    images = tmp_path / "images"
    images.mkdir()
    out = tmp_path / "out" / "cat.safetensors"
    result = CliRunner().invoke(train_character, [
        "--images", str(images), "--name", "cat", "--token", "<cat>", "--class-word", "cat", "--out", str(out),
        "--models", "tiny", "--device", "cpu", "--base", str(tmp_path / "missing.safetensors")])
    assert result.exit_code == 2
    assert result.stderr == f"error: --base: no such file '{tmp_path / 'missing.safetensors'}'\n"
    assert not (tmp_path / "out").exists()


# -- what the values mean --------------------------------------------------------------------------------------
def test_flags_win_over_the_file_and_the_file_over_the_preset(tmp_path, monkeypatch):
    folders = {name: tmp_path / "models" / name for name in ("vae", "controlnet", "other-controlnet", "dpt")}
    for folder in folders.values():
        folder.mkdir(parents=True)
    toml = tmp_path / "models" / "models.toml"
    toml.write_text('[components]\nvae = "vae"\ncontrolnet = "./controlnet"\ndepth_model = "dpt"\n'
                    'motion_adapter = "ByteDance/AnimateDiff-Lightning/animatediff_lightning_8step_diffusers'
                    '.safetensors@main"\n')
    monkeypatch.chdir(tmp_path)  # relative paths in the file are relative to the file, not to here
    specification = ModelSpecification(config_file=toml, controlnet=str(folders["other-controlnet"]))
    resolved = specification.validate()
    assert resolved.preset == "sd15"
    assert resolved.sources["vae"].location == str(folders["vae"]) and resolved.sources["vae"].key == "vae"
    assert resolved.sources["controlnet"].location == str(folders["other-controlnet"])
    assert resolved.sources["unet"].location == presets.SD15_BASE_ID
    adapter = resolved.sources["motion_adapter"]
    assert (adapter.kind, adapter.location, adapter.filename, adapter.revision) == (
        "hub_file", "ByteDance/AnimateDiff-Lightning", "animatediff_lightning_8step_diffusers.safetensors", "main")
    assert resolved.depth_model == str(folders["dpt"]) == specification.depth_model_spec()
    record = specification.record()
    json.dumps(record)
    assert record["requested"] == {"config_file": str(toml), "controlnet": str(folders["other-controlnet"])}
    assert record["components"]["motion_adapter"]["file"] == "animatediff_lightning_8step_diffusers.safetensors"
    assert record["lora"] is None and record["depth_model"] == str(folders["dpt"])


def test_presets_resolve_their_single_files_lora_and_depth_model():
    lightning = ModelSpecification(preset="sd15-lightning").resolve()
    adapter = lightning.sources["motion_adapter"]
    assert (adapter.kind, adapter.location, adapter.filename) == (
        "hub_file", "ByteDance/AnimateDiff-Lightning", "animatediff_lightning_4step_diffusers.safetensors")
    assert lightning.lora is None and lightning.depth_model == "dpt-hybrid"
    lcm = ModelSpecification(preset="sd15-lcm", lora_scale=0.5).resolve()
    assert (lcm.lora.location, lcm.lora.filename, lcm.lora_scale) == (
        "wangfuyun/AnimateLCM", "AnimateLCM_sd15_t2v_lora.safetensors", 0.5)
    assert ModelSpecification(preset="sd15-lcm").resolve().lora_scale == presets.ANIMATELCM_LORA_SCALE
    assert ModelSpecification().preset_name() == presets.DEFAULT_PRESET
    assert ModelSpecification(preset="tiny").depth_model_spec() == "tiny"
    assert ModelSpecification(preset="tiny", depth_model="dpt-large").depth_model_spec() == "dpt-large"


def test_a_tiny_base_folder_is_not_sd15_but_loads_with_the_tiny_preset(tmp_path):
    parts = architectures.build_tiny_components(only={"text_encoder", "unet"}, merge=False)
    for name in ("text_encoder", "unet"):
        parts[name].save_pretrained(tmp_path / "tiny-base" / name)
    with pytest.raises(ModelConfigError, match=r"^--base: '.*tiny-base' is not an SD1.5 model: unet/config.json has "
                                               r"block_out_channels \[8, 16\], SD1.5's is \[320, 640, 1280, 1280\]"):
        ModelSpecification(preset="sd15", base=str(tmp_path / "tiny-base")).validate()
    ModelSpecification(preset="tiny", base=str(tmp_path / "tiny-base")).validate()


def test_the_models_stories_add_resolve_from_a_model_config(tmp_path):
    """sparsectrl, i2vgen, ip_adapter in [components]: hub ids and tiny as they are, folders relative to the file;
    a pickle or a missing folder is named with its key."""
    (tmp_path / "sparsectrl").mkdir()
    config = tmp_path / "models.toml"
    config.write_text('[components]\nsparsectrl = "sparsectrl"\ni2vgen = "ali-vilab/i2vgen-xl"\nip_adapter = "hub"\n')
    resolved = ModelSpecification(preset="tiny", config_file=config).resolve()
    assert resolved.extras == {"sparsectrl": str(tmp_path / "sparsectrl"), "i2vgen": "ali-vilab/i2vgen-xl",
                               "ip_adapter": "hub"}
    assert resolved.record()["extras"] == resolved.extras
    assert "extras" not in ModelSpecification(preset="tiny").resolve().record()  # old records unchanged
    for value, message in (("weights.bin", "pickle"), ("./missing", "no such file or folder"),
                           ("not an id", "neither a hub id")):
        config.write_text(f'[components]\nsparsectrl = "{value}"\n')
        with pytest.raises(ModelConfigError, match=message) as error:
            ModelSpecification(preset="tiny", config_file=config).resolve()
        assert "[components] sparsectrl" in str(error.value)
