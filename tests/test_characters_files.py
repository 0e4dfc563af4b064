"""Character files: round trip, diffusers compatibility, LoRA scales, and the files and tokens we refuse."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from characters import (
    CharacterFileError,
    CharacterSet,
    CharacterTokenError,
    export_textual_inversion,
    load_character,
    save_character,
)
from characters.character_file import TABLE_KEY, Character
from characters.character_set import base_signature
from characters.training import TrainingSettings, train_character


@pytest.fixture(scope="module")
def base_model(components):
    from storyreel.models.loading import base_model_record

    return base_model_record(components)


@pytest.fixture(scope="module")
def trained(components, base_model, tmp_path_factory):
    """A character trained for a few steps (high learning rates, so its LoRA is far from zero)."""
    from structure.depth_models import load_depth_model

    out = tmp_path_factory.mktemp("character") / "hare.safetensors"
    images = [np.random.default_rng(i).integers(0, 256, (72, 80, 3), dtype=np.uint8) for i in range(3)]
    settings = TrainingSettings(name="hare", token="<hare>", class_word="rabbit", steps=4, rank=4, resolution=64,
                                frames=2, table_lr=1e-2, lora_lr=1e-2, seed=1)
    character = train_character(components, load_depth_model("tiny", device="cpu", progress=False), images,
                                settings, out, base_model=base_model, progress=False)
    return character, out


def unet_inputs():
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(1, 4, 2, 8, 8, generator=generator)
    text = torch.randn(2, 77, 32, generator=generator)
    return sample, torch.tensor(400), text


def unet_output(unet):
    sample, t, text = unet_inputs()
    with torch.no_grad():
        return unet(sample, t, encoder_hidden_states=text).sample


def test_saved_file_reloads_to_identical_tensors_and_metadata(trained):
    character, path = trained
    loaded = load_character(path)
    assert (loaded.name, loaded.token, loaded.class_word) == ("hare", "<hare>", "rabbit")
    assert loaded.buckets == 1000 and loaded.num_train_timesteps == 1000 and loaded.lora_rank == 4
    assert torch.equal(loaded.table, character.table)
    assert loaded.lora_state_dict.keys() == character.lora_state_dict.keys()
    assert all(torch.equal(loaded.lora_state_dict[k], v) for k, v in character.lora_state_dict.items())
    assert all(k.startswith("unet.") and k.endswith((".lora_A.weight", ".lora_B.weight")) and "motion_modules" not in k
               for k in loaded.lora_state_dict)
    meta = loaded.metadata
    assert meta["storyreel_character"] == 1 and meta["base_model"]["preset"] == "tiny"
    assert meta["training"]["steps"] == 4 and meta["training"]["rank"] == 4
    assert meta["base_signature"]["text_hidden_size"] == 32
    # diffusers' header entry describes the same adapter
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        header = handle.metadata()
    adapter = json.loads(header["lora_adapter_metadata"])
    assert adapter["unet.r"] == 4 and adapter["unet.lora_alpha"] == 4.0
    assert sorted(adapter["unet.target_modules"]) == loaded.lora_targets


def test_diffusers_load_lora_weights_equals_our_loader_and_scale_zero_is_the_base(trained, components):
    from diffusers import AnimateDiffControlNetPipeline

    from storyreel.models.loading import load_render_components

    _, path = trained
    base = unet_output(components.unet)
    with CharacterSet(components) as characters:
        characters.add(load_character(path))
        ours = unet_output(components.unet)
        assert (ours - base).abs().max() > 1e-3  # the LoRA does something
        characters.activate({"hare": 0.0})
        assert torch.equal(unet_output(components.unet), base)
        characters.activate({})
        assert torch.equal(unet_output(components.unet), base)
        characters.activate({"hare": 0.5})
        half = unet_output(components.unet)
        assert not torch.equal(half, ours) and not torch.equal(half, base)
    assert torch.equal(unet_output(components.unet), base)  # removed: the base model again

    stock = load_render_components("tiny", device="cpu")
    pipe = AnimateDiffControlNetPipeline(**stock.pipeline_kwargs())
    pipe.load_lora_weights(str(path), adapter_name="hare")  # the table key is skipped, the header ignored
    assert pipe.unet.active_adapters() == ["hare"]
    torch.testing.assert_close(unet_output(pipe.unet), ours, rtol=0, atol=1e-6)
    pipe.set_adapters(["hare"], [0.0])
    assert torch.equal(unet_output(pipe.unet), base)


def test_exported_textual_inversion_loads_in_diffusers(trained, tmp_path):
    from diffusers import AnimateDiffControlNetPipeline

    from storyreel.models.loading import load_render_components

    character, _ = trained
    ti = export_textual_inversion(character, tmp_path / "hare-ti.safetensors")
    stock = load_render_components("tiny", device="cpu")
    pipe = AnimateDiffControlNetPipeline(**stock.pipeline_kwargs())
    pipe.load_textual_inversion(str(ti))
    token_id = pipe.tokenizer.convert_tokens_to_ids("<hare>")
    assert pipe.tokenizer("<hare>").input_ids[1] == token_id
    row = pipe.text_encoder.get_input_embeddings().weight[token_id]
    torch.testing.assert_close(row, character.table.mean(0), rtol=0, atol=1e-6)  # one row per timestep: the mean


def test_pickles_and_other_content_are_refused_naming_the_file(trained, tmp_path):
    character, _ = trained
    for suffix in (".bin", ".pt", ".ckpt", ".pkl"):
        path = tmp_path / f"hare{suffix}"
        path.write_bytes(pickle.dumps({"x": 1}))
        with pytest.raises(CharacterFileError, match=rf"hare\{suffix}: refusing to load a \{suffix} file"):
            load_character(path)
    disguised = tmp_path / "disguised.safetensors"
    torch.save({"table": character.table}, disguised)
    with pytest.raises(CharacterFileError, match=r"disguised\.safetensors: not a safetensors file \(it looks like a "
                                                 r"PyTorch zip checkpoint\)"):
        load_character(disguised)
    text = tmp_path / "notes.safetensors"
    text.write_text("hello")
    with pytest.raises(CharacterFileError, match=r"notes\.safetensors: not a safetensors file"):
        load_character(text)
    plain_lora = tmp_path / "plain_lora.safetensors"
    save_file(dict(character.lora_state_dict), str(plain_lora))
    with pytest.raises(CharacterFileError, match=r"plain_lora\.safetensors: a LoRA file but not a storyreel character"):
        load_character(plain_lora)
    with pytest.raises(CharacterFileError, match=r"missing\.safetensors: no such file"):
        load_character(tmp_path / "missing.safetensors")
    damaged = tmp_path / "damaged.safetensors"
    save_character(character, damaged)
    tensors, _ = {}, None
    from safetensors import safe_open

    with safe_open(str(damaged), framework="pt") as handle:
        header = handle.metadata()
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
    tensors[TABLE_KEY] = tensors[TABLE_KEY][:10]
    save_file(tensors, str(damaged), metadata=header)
    with pytest.raises(CharacterFileError, match=r"damaged\.safetensors: the TimeInv table has shape \(10, 32\)"):
        load_character(damaged)


def test_a_file_for_another_base_model_is_refused_naming_file_and_models(components, base_model, tmp_path):
    from storyreel.models.loading import base_model_record, load_render_components

    sd15 = load_render_components("sd15-random", device="meta")  # shapes only: the real SD1.5 architecture
    module = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"
    other = Character(name="knight", token="<knight>", class_word="man", table=torch.zeros(1000, 768),
                      lora_state_dict={f"unet.{module}.lora_A.weight": torch.zeros(8, 768),
                                       f"unet.{module}.lora_B.weight": torch.zeros(320, 8)},
                      base_model=base_model_record(sd15), base_signature=base_signature(sd15))
    path = save_character(other, tmp_path / "knight.safetensors")
    with CharacterSet(components, base_model=base_model) as characters:
        with pytest.raises(CharacterFileError) as caught:
            characters.add(load_character(path))
        assert len(characters) == 0
    message = str(caught.value)
    assert message.startswith(f"{path}: character 'knight' was made for preset 'sd15-random'")
    assert "the loaded base model (preset 'tiny')" in message and "768-d but the text encoder is 32-d" in message

    # Same widths, other UNet: the LoRA's layer shapes are checked against this UNet's.
    sneaky = Character(name="fox", token="<fox>", class_word="fox", table=torch.zeros(1000, 32),
                       lora_state_dict=other.lora_state_dict, base_model={"preset": "custom"})
    with CharacterSet(components) as characters:
        with pytest.raises(CharacterFileError, match=r"made for preset 'custom'.*LoRA layer 'down_blocks\.0\.attentions"
                                                     r"\.0\.transformer_blocks\.0\.attn2\.to_k' is 768->320, the "
                                                     r"UNet's is 32->8"):
            characters.add(sneaky)


def test_tokens_already_in_the_vocabulary_or_taken_are_refused(components, trained):
    character, _ = trained
    vocabulary = len(components.tokenizer)
    with CharacterSet(components) as characters:
        with pytest.raises(CharacterTokenError, match=r"token 'rabbit' is already in the tokenizer's vocabulary"):
            characters.add(character, token="rabbit")
        with pytest.raises(CharacterTokenError, match=r"one word without spaces"):
            characters.add(character, token="<two words>")
        characters.add(character)
        with pytest.raises(CharacterTokenError, match=r"token '<HARE>' is the token of the loaded character 'hare'"):
            characters.add(character, name="hare2", token="<HARE>")
        assert characters.names == ["hare"]
    assert len(components.tokenizer) == vocabulary
    assert components.tokenizer("<hare>", add_special_tokens=False).input_ids != [vocabulary]
