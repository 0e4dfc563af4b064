"""One command-line convention for the six commands (``storyreel.command_line``), ``--models`` presets meaning the
same for every stage, and the job dataclasses of ``train-character`` and ``plan-story``. No model is loaded here."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from characters.cli import main as train_character
from characters.training_job import TrainCharacterJob, TrainCharacterJobError
from index_builder.cli import main as build_index
from render.cli import main as render_story
from retrieval.cli import main as search_clips
from storyboard.plan_cli import main as plan_story
from storyboard.plan_job import PlanStoryJob, PlanStoryJobError
from storyreel.command_line import FloatRange, IntRange, command, fail, quiet_option
from storyreel.errors import ModelLoadError, StoryreelError
from storyreel.models import presets
from structure.cli import main as extract_depth

COMMANDS = {
    "build-index": build_index,
    "search-clips": search_clips,
    "extract-depth": extract_depth,
    "plan-story": plan_story,
    "train-character": train_character,
    "render-story": render_story,
}


def good_arguments(name: str, tmp_path, missing) -> list[str]:
    """Arguments of command ``name`` whose input file or folder is ``missing`` (and nothing else is wrong)."""
    out = tmp_path / "out"
    return {
        "build-index": [missing, "--out", out, "--models", "tiny", "--workers", "1"],
        "search-clips": [missing, "a person running"],
        "extract-depth": [missing, "--out", tmp_path / "depth.npz", "--models", "tiny"],
        "plan-story": [missing, "--out", tmp_path / "story.json"],
        "train-character": ["--images", missing, "--name", "cat", "--token", "<cat>", "--class-word", "cat",
                            "--out", tmp_path / "cat.safetensors", "--models", "tiny", "--device", "cpu"],
        "render-story": [missing, "--out", out, "--models", "tiny"],
    }[name]


def invoke(cli, args) -> click.testing.Result:
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def one_error_line(result) -> str:
    """The only non-empty line on stderr, checked to be an ``error:`` line."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: "), lines[0]
    return lines[0]


@pytest.mark.parametrize("name", list(COMMANDS))
def test_an_unknown_option_is_one_error_line_naming_it(name, tmp_path):
    result = invoke(COMMANDS[name], [*good_arguments(name, tmp_path, tmp_path / "missing"), "--no-such-option"])
    assert result.exit_code == 2, result.output
    line = one_error_line(result)
    assert "--no-such-option" in line and f"(see '{name} --help')" in line, line
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", list(COMMANDS))
def test_a_missing_input_is_one_error_line_naming_the_file(name, tmp_path):
    missing = tmp_path / ("missing.mp4" if name == "extract-depth" else "missing")
    result = invoke(COMMANDS[name], good_arguments(name, tmp_path, missing))
    assert result.exit_code == 2, result.output
    assert str(missing) in one_error_line(result)
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "nothing is written"


@pytest.mark.parametrize("name", list(COMMANDS))
def test_help_and_quiet_are_the_same_everywhere(name):
    cli = COMMANDS[name]
    result = invoke(cli, ["-h"])
    assert result.exit_code == 0 and result.output == invoke(cli, ["--help"]).output
    assert "--no-progress" not in result.output  # a hidden alias where it exists
    if name != "search-clips":  # no progress to hide: it prints its results only
        assert "-q, --quiet" in result.output
    assert ("--models" in result.output) == (name != "plan-story")


@pytest.mark.parametrize("name, args, message", [
    ("build-index", ["x", "--out", "y", "--workers", "0"], "--workers: must be at least 1, got 0"),
    ("search-clips", ["index", "query", "-k", "0"], "-k: must be at least 1, got 0"),
    ("extract-depth", ["v.mp4", "--out", "d.npz", "--fps", "0"], "--fps: must be more than 0, got 0"),
    ("plan-story", ["p.txt", "--out", "s.json", "--backoff", "-1"], "--backoff: must be 0 or more seconds, got -1"),
    ("train-character", ["--images", "i", "--name", "n", "--token", "<n>", "--class-word", "c", "--out",
                         "o.safetensors", "--reg-ratio", "2"], "--reg-ratio: must be between 0 and 1, got 2"),
    ("train-character", ["--images", "i", "--name", "n", "--token", "<n>", "--class-word", "c", "--out",
                         "o.safetensors", "--models", "huge"],
     "--models: unknown --models value 'huge'; use one of sd15, tiny"),
    ("render-story", ["s.json", "--out", "o", "--engine", "gpu"], "--engine: 'gpu' is not one of 'local', 'ray'"),
    ("plan-story", ["p.txt"], "missing option '--out'"),
])
def test_bad_values_name_the_option(name, args, message):
    result = invoke(COMMANDS[name], args)
    assert result.exit_code == 2, result.output
    line = one_error_line(result)
    assert message in line and line.endswith(f"(see '{name} --help')"), line


# -- the helpers ------------------------------------------------------------------------------------------
def test_fail_prints_one_error_line_and_exits_2(capsys):
    with pytest.raises(SystemExit) as exited:
        fail("--out: is a folder")
    assert exited.value.code == 2
    captured = capsys.readouterr()
    assert captured.err == "error: --out: is a folder\n" and captured.out == ""


class Unavailable(StoryreelError):
    exit_code = 3


@pytest.mark.parametrize("raised, code, line", [
    (Unavailable("the service is down"), 3, "error: the service is down"),
    (ModelLoadError("cannot load model 'x'"), 2, "error: cannot load model 'x'"),
    (KeyboardInterrupt(), 1, "aborted"),
])
def test_errors_escaping_a_command_exit_with_their_code(raised, code, line):
    @command("demo")
    def demo():
        """Raise."""
        raise raised

    result = CliRunner().invoke(demo, [])
    assert result.exit_code == code
    assert [text for text in result.stderr.splitlines() if text.strip()] == [line]


def test_standalone_mode_off_leaves_errors_to_the_caller():
    @command("demo")
    @click.option("--n", type=IntRange(min=1))
    def demo(n):
        """Raise."""
        raise ModelLoadError("no model")

    with pytest.raises(click.BadParameter):
        demo.main(["--n", "0"], standalone_mode=False)
    with pytest.raises(ModelLoadError):
        demo.main([], standalone_mode=False)


def test_quiet_option_and_its_hidden_alias():
    seen = []

    @command("demo")
    @quiet_option(no_progress_alias=True)
    @click.option("--other", is_flag=True)
    def demo(quiet, other):
        """Record --quiet."""
        seen.append(quiet)

    for args in ([], ["-q"], ["--quiet"], ["--no-progress"], ["--other", "--no-progress"], ["--no-progress", "-q"]):
        assert CliRunner().invoke(demo, args).exit_code == 0
    assert seen == [False, True, True, True, True, True]
    help_text = CliRunner().invoke(demo, ["--help"]).output
    assert "--quiet" in help_text and "--no-progress" not in help_text


@pytest.mark.parametrize("kind, value, message", [
    (IntRange(min=1), "0", "must be at least 1, got 0"),
    (IntRange(min=0), "-2", "must be 0 or more, got -2"),
    (IntRange(1, 256), "300", "must be between 1 and 256, got 300"),
    (IntRange(max=5, max_open=True), "5", "must be less than 5, got 5"),
    (FloatRange(min=0, min_open=True, unit="seconds"), "0", "must be more than 0 seconds, got 0"),
    (FloatRange(min=0.5, max=2.0), "2.5", "must be between 0.5 and 2, got 2.5"),
    (IntRange(min=1), "many", "'many' is not a valid integer"),
])
def test_range_messages_say_what_is_allowed(kind, value, message):
    with pytest.raises(click.BadParameter, match=message):
        kind.convert(value, None, None)


def test_ranges_keep_good_values():
    assert IntRange(min=1).convert("3", None, None) == 3
    assert FloatRange(min=0, min_open=True).convert("0.25", None, None) == 0.25


# -- --models ------------------------------------------------------------------------------------------------
def test_models_presets_resolve_to_each_stage_model():
    from retrieval.clip_models import ModelSpec
    from structure.depth_models import resolve_depth_model

    assert ModelSpec.parse("sd15-random") == ModelSpec("ViT-B-32")  # random weights: nothing to download
    assert ModelSpec.parse("tiny").is_tiny and str(ModelSpec.parse("tiny")) == "tiny"
    assert ModelSpec.parse("sd15") == ModelSpec("ViT-B-32", "laion2b_s34b_b79k")
    assert resolve_depth_model("sd15-random") == "dpt-hybrid-random"
    assert resolve_depth_model("tiny") == "tiny"
    assert resolve_depth_model("sd15") == "dpt-hybrid"
    for name, preset in presets.PRESETS.items():
        assert str(ModelSpec.parse(name)) == preset.clip_model
        assert resolve_depth_model(name) == preset.depth_model
    # the stages' own values keep their meaning
    assert ModelSpec.parse("ViT-B-32:openai") == ModelSpec("ViT-B-32", "openai")
    assert ModelSpec.parse("hf-hub:org/repo") == ModelSpec("hf-hub:org/repo")
    for own in ("dpt-large", "Intel/dpt-hybrid-midas", "./models/dpt", " dpt-hybrid "):
        assert resolve_depth_model(own) == own.strip()


def test_an_unusable_models_value_is_one_error_line():
    result = invoke(search_clips, ["index", "query", "--models", " "])
    assert result.exit_code == 2 and "empty model spec" in one_error_line(result)


# -- the jobs ------------------------------------------------------------------------------------------------
def train_job(tmp_path, **changes) -> TrainCharacterJob:
    values = {"images": tmp_path, "name": "cat", "token": "<cat>", "class_word": "cat",
              "out": tmp_path / "cat.safetensors", "models": "tiny", "device": "cpu", "resolution": 64}
    return TrainCharacterJob(**{**values, **changes})


@pytest.mark.parametrize("changes, flag, message", [
    ({"out": "cat.bin"}, "--out", "--out: expected a .safetensors file, got 'cat.bin'"),
    ({"export_ti": "cat.safetensors", "out": "cat.safetensors"}, "--export-ti", "must be another file than --out"),
    ({"models": "huge"}, "--models", "--models: unknown preset 'huge'"),
    ({"reg_index": "no-such-index"}, "--reg-index", "'no-such-index' is not a folder"),
    ({"mixed_precision": "bf16"}, "--mixed-precision", "bf16 needs a CUDA device (training runs on cpu)"),
    ({"name": "two words"}, "--name", "--name: character names are 1-64 letters"),
])
def test_train_character_job_names_the_flag(tmp_path, changes, flag, message):
    with pytest.raises(TrainCharacterJobError, match=message.replace("(", r"\(").replace(")", r"\)")) as raised:
        train_job(tmp_path, **changes).validate()
    assert raised.value.flag == flag and isinstance(raised.value, StoryreelError) and raised.value.exit_code == 2


def test_train_character_job_gives_the_training_settings(tmp_path):
    job = train_job(tmp_path, rank=2, steps=3)
    job.validate()
    settings = job.settings()
    assert (settings.name, settings.rank, settings.steps, settings.resolution) == ("cat", 2, 3, 64)
    assert settings.mixed_precision == "no" and job.precision() == "no"  # auto on the CPU
    assert job.checkpoints() == tmp_path / "cat.checkpoints"
    assert job.depth_model_spec() == presets.PRESETS["tiny"].depth_model


def test_plan_story_job_names_the_flag(tmp_path):
    passage = tmp_path / "fable.txt"
    passage.write_text("The hare ran.")
    with pytest.raises(PlanStoryJobError, match="--width: must be a multiple of 8, got 100") as raised:
        PlanStoryJob(passage=passage, out=tmp_path / "story.json", width=100).validate()
    assert raised.value.flag == "--width"
    with pytest.raises(PlanStoryJobError, match="would overwrite a passage"):
        PlanStoryJob(passage=passage, out=passage).validate()
    job = PlanStoryJob(passage=passage, out=tmp_path / "story.json", frames=8, no_cache=True, retries=0)
    job.validate()
    assert job.story_defaults().frames == 8
    assert job.planner_options()["cache_dir"] is None and job.planner_options()["retries"] == 0
