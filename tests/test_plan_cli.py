"""`plan-story`: files written atomically on success; bad input → `error: ...` naming file and field, exit 2,
nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from storyboard import load_storyboard
from storyboard.plan_cli import main

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "data" / "examples"
FABLE = EXAMPLES / "hare-and-tortoise.txt"


@pytest.fixture(autouse=True)
def no_llm_environment(monkeypatch):
    for name in ("STORYREEL_LLM_BASE_URL", "OPENAI_BASE_URL", "STORYREEL_LLM_MODEL", "STORYREEL_LLM_API_KEY",
                 "OPENAI_API_KEY", "STORYREEL_LLM_MODEL_PATH"):
        monkeypatch.delenv(name, raising=False)


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_plans_a_passage_into_a_storyboard_and_a_report(tmp_path):
    out = tmp_path / "plans" / "story.json"
    result = run(FABLE, "--out", out, "--characters", EXAMPLES / "fable-characters.json", "--style", "watercolor",
                 "--width", 256, "--height", 192, "--frames", 8, "--steps", 4, "--seed", 3)
    assert result.exit_code == 0, result.output
    story = load_storyboard(out)
    assert story.title == "The Hare and the Tortoise" and story.style == "watercolor"
    assert (story.defaults.width, story.defaults.height, story.defaults.frames, story.defaults.steps,
            story.defaults.seed) == (256, 192, 8, 4, 3)
    assert [s.id for s in story.shots] == ["01-jump", "02-sprint", "03-walk", "04-wave"]
    assert [s.motion_query for s in story.shots] == ["a dog jumping", "a dog running across a field",
                                                     "a person walking slowly across a field", "a person waving"]
    assert story.shots[1].caption == "(<hare> rabbit)1.3 sprinting far ahead, in a (meadow)1.1, watercolor"
    report = json.loads((tmp_path / "plans" / "story.plan.json").read_text())
    assert report["planner"] == {"backend": "rules"} and report["counts"]["by_backend"] == {"rules": 4}
    assert [r["shot"] for r in report["shots"]] == [s.id for s in story.shots]
    assert "01-jump" in result.output and "a dog jumping" in result.output
    assert sorted(p.name for p in (tmp_path / "plans").iterdir()) == ["story.json", "story.plan.json"]


def test_characters_file_embeddings_stay_pointing_at_their_files(tmp_path):
    chars = tmp_path / "chars"
    chars.mkdir()
    (chars / "hare.safetensors").write_bytes(b"weights")
    (chars / "cast.json").write_text(json.dumps({"hare": {"token": "<hare>", "class_word": "rabbit",
                                                          "embedding": "hare.safetensors"}}))
    out = tmp_path / "elsewhere" / "story.json"
    result = run(FABLE, "--out", out, "--characters", chars / "cast.json", "--shots", 2)
    assert result.exit_code == 0, result.output
    story = load_storyboard(out)                                   # checks that the file exists
    assert story.characters["hare"].embedding == "../chars/hare.safetensors"
    assert len(story.shots) == 2 and all(s.characters == ["hare"] for s in story.shots)


def bad_characters(tmp_path, content) -> Path:
    path = tmp_path / "chars.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


@pytest.mark.parametrize("args, message", [
    (["missing.txt"], "missing.txt: no such passage file"),
    (["empty.txt"], "empty.txt: is empty (no prose to plan)"),
    (["latin1.txt"], "latin1.txt: not UTF-8 text (byte 11)"),
    (["folder"], "folder: is a folder, not a passage file"),
    ([FABLE, "--shots", "0"], "--shots: must be at least 1, got 0"),
    ([FABLE, "--shots", "many"], "'many' is not a valid integer"),
    ([FABLE, "--width", "100"], "--width: must be a multiple of 8, got 100"),
    ([FABLE, "--frames", "0"], "--frames: must be between 1 and 256, got 0"),
    ([FABLE, "--timeout", "0"], "--timeout: must be more than 0 seconds"),
    ([FABLE, "--llm", "gpt"], "'gpt' is not one of 'rules', 'openai', 'local'"),
    ([FABLE, "--llm", "openai"], "needs a base URL"),
    ([FABLE, "--llm", "openai", "--llm-base-url", "ftp://x"], "must be an http:// or https:// URL"),
    ([FABLE, "--llm-base-url", "http://127.0.0.1:9/v1"], "no model name"),
    ([FABLE, "--llm-base-url", "http://127.0.0.1:9/v1", "--llm-model", "m", "--llm-api-key-env", "NO_SUCH_VAR"],
     "environment variable NO_SUCH_VAR (the API key) is not set"),
    ([FABLE, "--llm", "local"], "needs a model folder"),
    ([FABLE, "--llm", "local", "--llm-model-path", "folder"], "no config.json in"),
])
def test_bad_input_is_an_error_and_writes_nothing(tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty.txt").write_text("  \n")
    (tmp_path / "latin1.txt").write_bytes("The fox ran\xe9 far.".encode("latin-1"))
    (tmp_path / "folder").mkdir()
    before = sorted(p.name for p in tmp_path.iterdir())
    result = run(*args, "--out", tmp_path / "story.json")
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: ") and message in result.output, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.parametrize("content, message", [
    ("{not json", "chars.json: line 1, column 2: invalid JSON"),
    ([], "chars.json: a characters file is a JSON object"),
    ({}, "chars.json: names no characters"),
    ({"hare": {"token": "hare", "class_word": "rabbit"}}, "chars.json: hare.token: must look like <name>"),
    ({"hare": {"token": "<hare>", "class_word": "rabbit", "bodyy": "a dog"}},
     "chars.json: hare.bodyy: unknown field; did you mean 'body'?"),
    ({"hare": {"token": "<hare>", "class_word": ""}}, "chars.json: hare.class_word: must not be empty"),
    ({"hare": {"token": "<hare>", "class_word": "rabbit", "body": "a (dog)1.5"}}, "chars.json: hare.body: must be"),
    ({"hare": {"token": "<hare>", "class_word": "rabbit", "embedding": "hare.bin"}},
     "chars.json: hare.embedding: must be a .safetensors file"),
    ({"hare": {"token": "<hare>", "class_word": "rabbit", "embedding": "gone.safetensors"}},
     "chars.json: hare.embedding: file not found"),
    ({"hare": {"token": "<a>", "class_word": "rabbit"}, "fox": {"token": "<a>", "class_word": "fox"}},
     "chars.json: fox.token: token '<a>' is also the token of 'hare'"),
    ({"bad name": {"token": "<a>", "class_word": "rabbit"}}, "chars.json: "),
])
def test_a_bad_characters_file_names_the_field(tmp_path, content, message):
    path = bad_characters(tmp_path, content)
    result = run(FABLE, "--out", tmp_path / "story.json", "--characters", path)
    assert result.exit_code == 2, result.output
    assert f"error: {tmp_path / message}" in result.output or f"error: {path}: " in result.output
    assert message.split(": ", 1)[1] in result.output, result.output
    assert not (tmp_path / "story.json").exists() and not (tmp_path / "story.plan.json").exists()


def test_a_storyboard_file_can_give_the_characters(tmp_path):
    result = run(FABLE, "--out", tmp_path / "story.json", "--characters", EXAMPLES / "fable.json")
    assert result.exit_code == 0, result.output
    story = load_storyboard(tmp_path / "story.json")
    assert story.characters["tortoise"].class_word == "turtle"
    assert story.shots[0].caption.startswith("(<hare> rabbit)1.3 jumping")


def test_out_must_not_be_a_folder_or_the_passage(tmp_path):
    passage = tmp_path / "fable.txt"
    passage.write_text(FABLE.read_text())
    result = run(passage, "--out", tmp_path)
    assert result.exit_code == 2 and "is a folder" in result.output
    result = run(passage, "--out", passage)
    assert result.exit_code == 2 and "would overwrite a passage" in result.output
    assert passage.read_text() == FABLE.read_text()
