"""Character names that are also parts of peft's parameter names (``0``, ``attn1``, ``to_q``, ``lora_A``) select
exactly their own LoRA weights, and the files they write load back."""

from __future__ import annotations

import pytest
import torch

from characters import CharacterSet, load_character, save_character
from characters.character_set import adapter_parameter_key
from characters.lora_targets import spatial_attention_targets

NAME_PAIRS = [("0", "1"), ("attn1", "to_q"), ("lora_A", "lora_B"), ("weight", "hare")]


def test_adapter_parameter_key_matches_the_adapter_component_only():
    name = "down_blocks.0.attentions.1.transformer_blocks.0.attn1.to_q.lora_A.0.weight"
    expected = "down_blocks.0.attentions.1.transformer_blocks.0.attn1.to_q.lora_A.weight"
    assert adapter_parameter_key(name, "0") == expected
    assert adapter_parameter_key(name, "1") is None  # a module index, not the adapter
    assert adapter_parameter_key(name, "attn1") is None and adapter_parameter_key(name, "to_q") is None
    assert adapter_parameter_key(name, "lora_A") is None
    assert adapter_parameter_key("mid_block.attentions.0.transformer_blocks.0.attn2.to_v.lora_B.lora_A.weight",
                                 "lora_A") == "mid_block.attentions.0.transformer_blocks.0.attn2.to_v.lora_B.weight"
    assert adapter_parameter_key("mid_block.attentions.0.transformer_blocks.0.attn2.to_v.base_layer.weight",
                                 "base_layer") is None


@pytest.mark.parametrize("names", NAME_PAIRS, ids=["-".join(pair) for pair in NAME_PAIRS])
def test_two_characters_collect_exactly_their_own_parameters_and_their_files_load(components, names, tmp_path):
    targets = spatial_attention_targets(components.unet)
    expected = sorted(f"{module}.lora_{matrix}.weight" for module in targets for matrix in "AB")
    snapshots = {}
    with CharacterSet(components) as characters:
        for index, name in enumerate(names):
            characters.add_trainable(name, f"<char{index}>", "cat", rank=2, seed=index)
        collected = {name: characters.lora_parameters(name) for name in names}
        for index, name in enumerate(names):
            assert sorted(collected[name]) == expected  # 2 matrices per adapted projection, nothing more
            generator = torch.Generator().manual_seed(100 + index)
            with torch.no_grad():
                for param in collected[name].values():
                    param.copy_(torch.randn(param.shape, generator=generator))
        first, second = (set(map(id, collected[name].values())) for name in names)
        assert not first & second  # no parameter belongs to both characters
        for name in names:
            character = characters.character(name, base_model={"weights": characters.base_weights})
            snapshots[name] = character
            save_character(character, tmp_path / f"{name}.safetensors")

    with CharacterSet(components) as characters:
        for name in names:
            loaded = load_character(tmp_path / f"{name}.safetensors")
            assert loaded.name == name and sorted(loaded.lora_state_dict) == [f"unet.{key}" for key in expected]
            characters.add(loaded)
        for name in names:
            reloaded = characters.lora_parameters(name)
            original = snapshots[name].lora_state_dict
            assert sorted(reloaded) == expected
            assert all(torch.equal(reloaded[key].detach(), original[f"unet.{key}"]) for key in expected)
