"""IP-Adapter identity in render-story: characters with reference_images get an adapter, only the shots that list
them are steered, the reference embedding is cached and reused, and bad input exits 2 (tiny models)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from render.cli import main


def storyboard(folder: Path, clip: Path, pictures, scale=0.8, consistency=None) -> Path:
    shots = [("meet", ["hare"], "(<hare> rabbit) standing in a meadow"),
             ("walk", ["tortoise"], "(<tortoise> turtle) walking on a path"),
             ("run", ["hare"], "(<hare> rabbit) running across a field")]
    hare = {"token": "<hare>", "class_word": "rabbit"}
    if pictures is not None:
        hare.update(reference_images=pictures, ip_adapter_scale=scale)
    data = {"format_version": 1, "title": "pictures", "defaults": {"width": 64, "height": 64, "frames": 8,
                                                                    "steps": 3, "seed": 1},
            "characters": {"hare": hare, "tortoise": {"token": "<tortoise>", "class_word": "turtle"}},
            "shots": [{"id": i, "text": caption, "caption": caption, "characters": names,
                       "clip": {"path": str(clip), "start": 0.0, "end": 1.0}} for i, names, caption in shots]}
    if consistency:
        data["defaults"]["consistency"] = consistency
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "story.json"
    path.write_text(json.dumps(data))
    return path


def invoke(story: Path, out: Path, *extra):
    return CliRunner().invoke(main, [str(story), "--out", str(out), "--models", "tiny", "--no-progress", *extra])


def render(story: Path, out: Path, *extra):
    result = invoke(story, out, *extra)
    assert result.exit_code == 0, result.output
    return json.loads((out / "report.json").read_text())


def digests(out: Path) -> dict[str, str]:
    return {p.stem: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((out / "shots").glob("*.mp4"))}


@pytest.fixture(scope="module")
def clip(synthetic_library) -> Path:
    return sorted(Path(synthetic_library).rglob("*.mp4"))[0]


@pytest.fixture(scope="module")
def pictures(reference_images, tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("hare-pictures")
    for name in ("chelsea.png", "astronaut.png"):
        shutil.copy(reference_images / name, folder / name)
    return folder


@pytest.fixture(scope="module")
def renders(tmp_path_factory, clip, pictures, one_thread):
    folder = tmp_path_factory.mktemp("ip-adapter")
    plain = folder / "plain"
    render(storyboard(folder / "a", clip, None), plain)
    steered = folder / "steered"
    report = render(storyboard(folder / "b", clip, str(pictures)), steered)
    return folder, plain, steered, report


def test_only_the_shots_that_list_the_character_change(renders):
    _, plain, steered, report = renders
    before, after = digests(plain), digests(steered)
    assert after["walk"] == before["walk"]  # the tortoise's shot: the hare's adapter at scale 0, bit for bit
    assert after["meet"] != before["meet"] and after["run"] != before["run"]
    shots = {shot["id"]: shot for shot in report["shots"]}
    assert shots["walk"]["ip_adapter"] is None
    hare = shots["meet"]["ip_adapter"]["characters"]["hare"]
    assert hare["scale"] == 0.8 and hare["pictures"] == 2
    assert shots["meet"]["ip_adapter"]["variant"] == "base"
    assert (steered / hare["embedding"]).is_file()


def test_scale_zero_renders_as_without_pictures(renders, clip, pictures):
    folder, plain, _, _ = renders
    out = folder / "zero"
    render(storyboard(folder / "c", clip, str(pictures), scale=0.0), out)
    assert digests(out) == digests(plain)


def test_the_saved_embedding_is_reused_on_resume(renders, clip, pictures, monkeypatch):
    folder, _, steered, report = renders
    before = digests(steered)
    (steered / "shots" / "run.mp4").unlink()

    def no_encoding(*args, **kwargs):
        raise AssertionError("the reference pictures were encoded again")

    monkeypatch.setattr("render.ip_adapter.encode_reference_images", no_encoding)
    report = render(storyboard(folder / "b", clip, str(pictures)), steered)
    assert report["rendered"] == ["run"] and digests(steered) == before


def test_other_pictures_render_the_characters_shots_again(renders, clip, pictures, tmp_path):
    folder, _, steered, _ = renders
    work = tmp_path / "out"
    shutil.copytree(steered, work)
    fewer = tmp_path / "one-picture"
    fewer.mkdir()
    shutil.copy(pictures / "chelsea.png", fewer / "chelsea.png")
    report = render(storyboard(folder / "b", clip, str(fewer)), work)
    assert report["rendered"] == ["meet", "run"] and report["skipped"] == ["walk"]


def test_ip_adapter_and_consistent_self_attention_compose(renders, clip, pictures):
    folder, _, steered, _ = renders
    out = folder / "both"
    consistency = {"rate": 0.5, "until": 0.6}
    report = render(storyboard(folder / "d", clip, str(pictures), consistency=consistency), out)
    shots = {shot["id"]: shot for shot in report["shots"]}
    assert shots["run"]["ip_adapter"]["characters"]["hare"]["scale"] == 0.8
    assert shots["run"]["consistency"]["attends"][0]["source_shot"] == "meet"
    assert digests(out)["run"] != digests(steered)["run"]  # CSA on top of the adapter does something
    assert digests(out)["walk"] == digests(steered)["walk"]


def test_bad_pictures_and_adapters_exit_2_before_any_model(clip, tmp_path):
    missing = invoke(storyboard(tmp_path / "a", clip, str(tmp_path / "nowhere")), tmp_path / "out-a")
    empty = tmp_path / "empty"
    empty.mkdir()
    no_pictures = invoke(storyboard(tmp_path / "b", clip, str(empty)), tmp_path / "out-b")
    pickle = tmp_path / "ip-adapter.bin"
    pickle.write_bytes(b"not loaded")
    refused = invoke(storyboard(tmp_path / "c", clip, [str(clip)]), tmp_path / "out-c", "--ip-adapter", str(pickle))
    storyboard(tmp_path / "d", clip, [str(clip)])
    toy = CliRunner().invoke(main, [str(tmp_path / "d" / "story.json"), "--out", str(tmp_path / "out-d"),
                                    "--models", "toy", "--ip-adapter-variant", "plus", "--no-progress"])
    for result, words in ((missing, "characters.hare.reference_images"), (no_pictures, "no .png"),
                          (refused, "pickle"), (toy, "toy IP-Adapter is a base adapter")):
        assert result.exit_code == 2, result.output
        assert result.output.startswith("error:") and words in result.output
    assert not any((tmp_path / f"out-{x}").exists() for x in "abcd")


def test_timeinv_lora_pictures_and_consistency_compose(renders, clip, pictures, tmp_path):
    """A trained TimeInv + LoRA file, reference pictures and consistent self-attention on the same character: each
    is recorded, and the file still changes the frames."""
    import numpy as np

    from characters.training import TrainingSettings, train_character
    from storyreel.models.loading import base_model_record, load_render_components
    from structure.depth_models import load_depth_model

    folder, _, _, _ = renders
    components = load_render_components("tiny", device="cpu")
    images = [np.random.default_rng(i).integers(0, 256, (72, 80, 3), dtype=np.uint8) for i in range(3)]
    character = tmp_path / "hare.safetensors"
    train_character(components, load_depth_model("tiny", device="cpu", progress=False), images,
                    TrainingSettings(name="hare", token="<hare>", class_word="rabbit", steps=4, rank=4, resolution=64,
                                     frames=2, table_lr=5e-2, lora_lr=5e-2, seed=0),
                    character, base_model=base_model_record(components), progress=False)
    story = storyboard(tmp_path / "story", clip, str(pictures), consistency={"rate": 0.5, "until": 0.6})
    without = render(story, tmp_path / "without")
    report = render(story, tmp_path / "with", "--character", f"hare={character}")
    run = {shot["id"]: shot for shot in report["shots"]}["run"]
    assert run["characters"]["hare"]["in_prompt"] and run["ip_adapter"]["characters"]["hare"]["scale"] == 0.8
    assert run["consistency"]["attends"][0]["source_shot"] == "meet"
    assert digests(tmp_path / "with")["run"] != digests(tmp_path / "without")["run"]
    assert without["shots"][2]["characters"] == {}


def test_keyframes_with_pictures_in_a_batch_are_the_keyframes_made_alone(clip, pictures, tmp_path):
    """meet and run (the hare, with pictures) share one sampler call; each row gets its own IP-Adapter embeddings
    ([uncond x 2, cond x 2]), so the pictures equal `--keyframe-batch 1`'s and differ from those without pictures."""
    import numpy as np
    from PIL import Image

    def keyframes(story, out, *extra):
        result = invoke(story, out, "--keyframes-only", *extra)
        assert result.exit_code == 0, result.output
        return result.output, {p.stem: np.asarray(Image.open(p)).astype(int)
                               for p in sorted((out / "keyframes").glob("*.png"))}

    story = storyboard(tmp_path / "with", clip, [str(p) for p in sorted(pictures.glob("*.png"))])
    output, batched = keyframes(story, tmp_path / "batched")
    assert "meet, run: 2 keyframes in one batch" in output
    _, alone = keyframes(story, tmp_path / "alone", "--keyframe-batch", "1")
    _, plain = keyframes(storyboard(tmp_path / "without", clip, None), tmp_path / "plain")
    for shot in ("meet", "run", "walk"):
        assert np.abs(batched[shot] - alone[shot]).max() <= 1, shot
    for shot in ("meet", "run"):
        assert np.abs(batched[shot] - plain[shot]).mean() > 1.0, shot
    assert np.abs(batched["walk"] - plain["walk"]).max() <= 1  # the tortoise has no pictures
