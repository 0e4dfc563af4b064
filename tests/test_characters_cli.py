"""``train-character``: a tiny run end to end, resuming, and the bad inputs that exit with code 2."""

from __future__ import annotations

import shutil

import pytest
from click.testing import CliRunner

from characters import load_character
from characters.cli import main

TINY = ["--models", "tiny", "--resolution", "64", "--frames", "2", "--rank", "2", "--device", "cpu", "--quiet"]


def train(images, out, *extra):
    args = ["--images", str(images), "--name", "cat", "--token", "<cat>", "--class-word", "cat", "--out", str(out),
            *TINY, *[str(a) for a in extra]]
    return CliRunner().invoke(main, args, catch_exceptions=False)


@pytest.fixture()
def one_photo(reference_images, tmp_path):
    folder = tmp_path / "one"
    folder.mkdir()
    shutil.copy(reference_images / "chelsea.png", folder / "chelsea.png")
    return folder


def test_one_image_warns_trains_resumes_and_exports(one_photo, tmp_path):
    out = tmp_path / "characters" / "cat.safetensors"
    ti = tmp_path / "cat-ti.safetensors"
    result = train(one_photo, out, "--steps", "3", "--checkpoint-every", "2", "--export-ti", ti)
    assert result.exit_code == 0, result.output
    assert "warning:" in result.stderr and "only 1 reference image" in result.stderr and str(one_photo) in result.stderr
    assert "trained 'cat' (<cat>, cat) for 3 steps" in result.stdout
    character = load_character(out)
    assert character.training["steps_done"] == 3 and character.base_model["preset"] == "tiny"
    assert ti.is_file()
    checkpoints = tmp_path / "characters" / "cat.checkpoints"
    assert (checkpoints / "checkpoint.json").is_file()

    result = train(one_photo, out, "--steps", "5", "--checkpoint-every", "2", "--resume")
    assert result.exit_code == 0, result.output
    assert "resuming from" in result.stderr and "at step 3" in result.stderr
    assert load_character(out).training["steps_done"] == 5

    result = train(one_photo, out, "--steps", "6", "--rank", "3", "--resume")
    assert result.exit_code == 2
    assert f"error: {checkpoints / 'checkpoint.json'}: the checkpoint was made with other settings" in result.stderr
    assert "rank: 2 in the checkpoint, 3 now" in result.stderr
    assert load_character(out).training["steps_done"] == 5  # the old file is untouched


@pytest.mark.parametrize("case", ["empty", "missing", "corrupt", "small", "token", "suffix"])
def test_bad_input_exits_2_naming_the_file_and_writes_nothing(case, reference_images, tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    for name in ("chelsea.png", "astronaut.png"):
        shutil.copy(reference_images / name, folder / name)
    out = tmp_path / "out" / "cat.safetensors"
    extra = []
    if case == "empty":
        for path in folder.iterdir():
            path.unlink()
        expected = f"{folder}: holds no reference images"
    elif case == "missing":
        shutil.rmtree(folder)
        expected = f"{folder}: no such folder"
    elif case == "corrupt":
        (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
        expected = f"{folder / 'broken.jpg'}: cannot decode the image"
    elif case == "small":
        extra = ["--resolution", "304"]
        expected = f"{folder / 'chelsea.png'}: 451x300 is smaller than the training resolution 304x304"
    elif case == "token":
        expected = "token 'cat' is already in the tokenizer's vocabulary"
    else:
        out = tmp_path / "out" / "cat.bin"
        expected = f"--out: expected a .safetensors file, got '{out}'"
    args = ["--images", str(folder), "--name", "cat", "--token", "cat" if case == "token" else "<cat>",
            "--class-word", "cat", "--out", str(out), *TINY, "--steps", "2", *extra]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 2, result.output
    assert "error: " + expected in result.stderr
    assert result.stderr.count("error:") == 1
    assert not out.exists() and not (tmp_path / "out").exists()
