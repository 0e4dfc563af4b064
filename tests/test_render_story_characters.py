"""`render-story --character NAME=FILE`: trained characters in a story (tiny models, quick characters)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_render_story import cheap_storyboard, run, shot_frames


def two_shots(data):
    """challenge (hare and tortoise) and plod (tortoise only)."""
    data["shots"] = [data["shots"][0], data["shots"][2]]


@pytest.fixture(scope="module")
def character_files(tmp_path_factory):
    """Two characters trained for a few steps at high learning rates (far from the base model)."""
    from characters.training import TrainingSettings, train_character
    from storyreel.models.loading import base_model_record, load_render_components
    from structure.depth_models import load_depth_model

    folder = tmp_path_factory.mktemp("characters")
    components = load_render_components("tiny", device="cpu")
    depth = load_depth_model("tiny", device="cpu", progress=False)
    files = {}
    for seed, (name, word) in enumerate([("hare", "rabbit"), ("tortoise", "turtle"), ("hare2", "rabbit")]):
        images = [np.random.default_rng(10 * seed + i).integers(0, 256, (72, 80, 3), dtype=np.uint8) for i in range(3)]
        token = "<hare>" if name == "hare2" else f"<{name}>"
        settings = TrainingSettings(name=name.rstrip("2"), token=token, class_word=word, steps=4, rank=4,
                                    resolution=64, frames=2, table_lr=5e-2, lora_lr=5e-2, seed=seed)
        files[name] = folder / f"{name}.safetensors"
        train_character(components, depth, images, settings, files[name],
                        base_model=base_model_record(components), progress=False)
    return files


@pytest.fixture(scope="module")
def renders(tmp_path_factory, tiny_index, character_files):
    folder = tmp_path_factory.mktemp("story-characters")
    storyboard = cheap_storyboard(folder, two_shots)
    plain, cast = folder / "plain", folder / "cast"
    assert run(storyboard, "--index", tiny_index, "--out", plain, "--models", "tiny").exit_code == 0
    result = run(storyboard, "--index", tiny_index, "--out", cast, "--models", "tiny",
                 "--character", f"hare={character_files['hare']}", "--character",
                 f"tortoise={character_files['tortoise']}")
    assert result.exit_code == 0, result.output
    return storyboard, plain, cast


def test_characters_are_recorded_and_change_their_shots(renders):
    _, plain, cast = renders
    report = json.loads((cast / "report.json").read_text())
    by_id = {shot["id"]: shot for shot in report["shots"]}
    assert set(by_id["challenge"]["characters"]) == {"hare", "tortoise"}  # two characters: both adapters on
    assert set(by_id["plod"]["characters"]) == {"tortoise"}
    assert all(entry["in_prompt"] and entry["scale"] == 1.0 for entry in by_id["challenge"]["characters"].values())
    assert json.loads((plain / "report.json").read_text())["shots"][0]["characters"] == {}
    a, b = shot_frames(plain), shot_frames(cast)
    for name in a:  # LoRA and per-step token rows change the pixels far beyond encoder rounding
        assert np.abs(a[name].astype(int) - b[name].astype(int)).mean() > 2.0, name
    # the same footage: characters change appearance, not the retrieved motion
    assert [s["segment"] for s in report["shots"]] == \
        [s["segment"] for s in json.loads((plain / "report.json").read_text())["shots"]]


def test_a_retrained_character_re_renders_only_its_shots(renders, tiny_index, character_files, tmp_path):
    import shutil

    storyboard, _, cast = renders
    out = tmp_path / "out"
    shutil.copytree(cast, out)
    args = [storyboard, "--index", tiny_index, "--out", out, "--models", "tiny",
            "--character", f"tortoise={character_files['tortoise']}"]
    result = run(*args, "--character", f"hare={character_files['hare']}")
    assert json.loads((out / "report.json").read_text())["rendered"] == []  # unchanged: nothing to do
    result = run(*args, "--character", f"hare={character_files['hare2']}")
    assert result.exit_code == 0, result.output
    assert json.loads((out / "report.json").read_text())["rendered"] == ["challenge"]  # plod has no hare


@pytest.mark.parametrize("make_arg, message", [
    (lambda files, tmp: f"nobody={files['hare']}", "has no character 'nobody'"),
    (lambda files, tmp: f"hare={tmp / 'missing.safetensors'}", "no such character file"),
    (lambda files, tmp: "hare", "expected NAME=FILE"),
    (lambda files, tmp: f"hare={_pickle_file(tmp)}", "hare.pt"),
])
def test_bad_character_arguments_exit_2_before_writing(tmp_path, tiny_index, character_files, make_arg, message):
    storyboard = cheap_storyboard(tmp_path, two_shots)
    out = tmp_path / "out"
    result = run(storyboard, "--index", tiny_index, "--out", out, "--models", "tiny",
                 "--character", make_arg(character_files, tmp_path))
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not out.exists()


def test_a_character_of_other_models_exits_2_before_loading_them(tmp_path, tiny_index, character_files):
    storyboard = cheap_storyboard(tmp_path, two_shots)
    out = tmp_path / "out"
    result = run(storyboard, "--index", tiny_index, "--out", out, "--models", "sd15",  # sd15 is not downloadable
                 "--character", f"hare={character_files['hare']}")
    assert result.exit_code == 2, result.output
    assert "trained on the 'tiny' models" in result.output and "--models sd15" in result.output
    assert not out.exists()


def _pickle_file(folder):
    import torch

    path = folder / "hare.pt"
    torch.save({"<hare>": torch.zeros(32)}, path)
    return path


def test_keyframes_in_batches_are_the_keyframes_made_one_at_a_time(tiny_index, character_files, tmp_path):
    """`--keyframes-only` makes the keyframes of shots with the same characters in one sampler call (challenge and
    finish: hare and tortoise); each is the picture made alone (`--keyframe-batch 1`), its own TimeInv rows, LoRA
    scales, depth and seed included, up to float rounding."""
    from PIL import Image

    storyboard = cheap_storyboard(tmp_path)
    cast = ["--character", f"hare={character_files['hare']}", "--character",
            f"tortoise={character_files['tortoise']}"]
    pictures = {}
    for batch in (8, 1):
        out = tmp_path / f"batch-{batch}"
        result = run(storyboard, "--index", tiny_index, "--out", out, "--models", "tiny", *cast, "--keyframes-only",
                     "--keyframe-batch", batch)
        assert result.exit_code == 0, result.output
        pictures[batch] = {p.stem: np.asarray(Image.open(p)).astype(int) for p in (out / "keyframes").glob("*.png")}
        records = {p.stem: json.loads(p.read_text()) for p in (out / "keyframes").glob("*.json")}
        batches = {shot: record["batch"]["shots"] for shot, record in records.items()}
        if batch == 8:
            assert "challenge, finish: 2 keyframes in one batch" in result.output
            assert batches == {"challenge": ["challenge", "finish"], "finish": ["challenge", "finish"],
                               "sprint": ["sprint"], "plod": ["plod"]}
        else:
            assert batches == {shot: [shot] for shot in records}
    assert sorted(pictures[8]) == sorted(pictures[1]) == ["challenge", "finish", "plod", "sprint"]
    for shot in pictures[8]:
        assert np.abs(pictures[8][shot] - pictures[1][shot]).max() <= 1, shot
    assert np.abs(pictures[8]["challenge"] - pictures[8]["finish"]).mean() > 2.0  # two pictures, not one twice
