"""The local planner with a real (tiny, random) transformers chat model saved to disk.

A random model writes garbage: validation must refuse it, the planner retry, and the shot fall back to
the rules planner with the reason recorded. Only safetensors weights are loaded.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from storyboard.openai_planner import PlannerSetupError
from storyboard.plan_cli import main as plan_main
from storyboard.planner import make_planner, plan_passage
from storyboard.story_characters import load_characters_file

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "data" / "examples"
CHAT_TEMPLATE = ("{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"
                 "{% if add_generation_prompt %}<s>assistant: {% endif %}")


@pytest.fixture(scope="module")
def tiny_chat_model(tmp_path_factory) -> Path:
    """A byte-level BPE tokenizer with a chat template and a 1-layer random Llama, save_pretrained'ed."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("tiny_chat_model")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<s>", "</s>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(['{"motion_query": "a dog running", "caption": "(<hare> rabbit)1.3"}'] * 4,
                                  trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(folder)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(fast), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=8192,
                         bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id,
                         pad_token_id=fast.pad_token_id)
    LlamaForCausalLM(config).save_pretrained(folder)
    assert list(folder.glob("*.safetensors"))
    return folder


def test_garbage_from_a_local_model_is_refused_and_falls_back_to_the_rules(tiny_chat_model):
    cast, _ = load_characters_file(EXAMPLES / "fable-characters.json")
    planner = make_planner("local", model_path=tiny_chat_model, retries=1, max_new_tokens=24, device="cpu")
    story, report = plan_passage("The hare sprints far ahead. The tortoise waves.", cast=cast, planner=planner)
    assert planner.generations == 4                          # two shots, two attempts each
    for record in report["shots"]:
        assert record["backend"] == "rules" and record["attempts"] == 2
        assert record["fallback"].startswith("local: ") and len(record["problems"]) == 2
        assert record["problems"][0].startswith(("malformed", "schema"))
    assert report["planner"]["backend"] == "local"
    assert [s.motion_query for s in story.shots] == ["a dog running", "a person waving"]


def test_plan_story_with_a_local_model(tiny_chat_model, tmp_path):
    out = tmp_path / "story.json"
    result = CliRunner().invoke(plan_main, [str(EXAMPLES / "fox-and-grapes.txt"), "--out", str(out), "--llm", "local",
                                            "--llm-model-path", str(tiny_chat_model), "--shots", "1", "--retries", "0",
                                            "--llm-max-new-tokens", "32"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "story.plan.json").read_text())
    assert report["counts"]["fallbacks"] == 1 and report["shots"][0]["fallback"].startswith("local: ")
    assert "fell back" in result.output


def test_only_safetensors_weights_are_loaded(tiny_chat_model, tmp_path):
    folder = tmp_path / "pickled"
    folder.mkdir()
    for file in tiny_chat_model.iterdir():
        if file.suffix != ".safetensors":
            (folder / file.name).write_bytes(file.read_bytes())
    (folder / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(PlannerSetupError, match="no .safetensors weights"):
        make_planner("local", model_path=folder)
    result = CliRunner().invoke(plan_main, [str(EXAMPLES / "fox-and-grapes.txt"), "--out", str(tmp_path / "s.json"),
                                            "--llm", "local", "--llm-model-path", str(folder)])
    assert result.exit_code == 2 and "only safetensors are loaded" in result.output
    assert not (tmp_path / "s.json").exists()
