"""The toy preset's weights are loaded only when their sha256 is the manifest's; the figure-pixel measure the toy
functional tests rely on finds the drawn figure and its colour."""

from __future__ import annotations

import json

import numpy as np
import pytest

from storyreel.hashing import file_sha256
from storyreel.models.toy_weights import ToyWeightsError, verified_file, verified_folder
from toy_world.figure_pixels import figure_colour, figure_mask, mask_iou
from toy_world.scenes import COLOURS, render_clip, world_specs


def weights_folder(tmp_path):
    (tmp_path / "render" / "vae").mkdir(parents=True)
    (tmp_path / "render" / "vae" / "config.json").write_text("{}")
    (tmp_path / "clip.safetensors").write_bytes(b"weights")
    manifest = {"clip": {"file": "clip.safetensors", "sha256": file_sha256(tmp_path / "clip.safetensors")},
                "render.vae": {"files": {"render/vae/config.json": file_sha256(tmp_path / "render/vae/config.json")}}}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    return tmp_path


def test_weights_load_only_with_the_manifests_sha256(tmp_path):
    folder = weights_folder(tmp_path)
    assert verified_file("clip.safetensors", folder) == folder / "clip.safetensors"
    assert verified_folder("render/vae", folder) == folder / "render" / "vae"
    (folder / "clip.safetensors").write_bytes(b"other weights")
    with pytest.raises(ToyWeightsError, match="its sha256 is not the one in manifest.json"):
        verified_file("clip.safetensors", folder)
    (folder / "render" / "vae" / "extra.bin").write_bytes(b"x")
    with pytest.raises(ToyWeightsError, match="extra.bin: not listed in manifest.json"):
        verified_folder("render/vae", folder)
    with pytest.raises(ToyWeightsError, match="depth.safetensors: not listed"):
        verified_file("depth.safetensors", folder)
    (folder / "manifest.json").unlink()
    with pytest.raises(ToyWeightsError, match="make toy-world"):
        verified_file("clip.safetensors", folder)


def test_figure_pixels_find_the_drawn_figure_and_its_colour():
    specs = [spec for spec in world_specs(3, 30, "heldout") if spec.cut is None][:12]
    for spec in specs:
        frames, _, mask = render_clip(spec)
        assert mask_iou(figure_mask(frames, spec.background), mask) > 0.85, spec
        assert figure_colour(frames, spec.background) == spec.colour
        assert (figure_mask(frames, spec.background) & ~mask).mean() < 0.02  # the background is not the figure
    assert mask_iou(np.zeros((2, 2)), np.zeros((2, 2))) == 1.0 and set(COLOURS) >= {"red", "blue"}


def test_the_toy_preset_names_the_committed_models_of_every_stage():
    from retrieval.clip_models import ModelSpec, load_clip_model
    from storyreel.models import presets
    from storyreel.models.specification import ModelSpecification
    from structure.depth_models import load_depth_model, resolve_depth_model

    preset = presets.get_preset("toy")
    assert (preset.clip_model, preset.depth_model, preset.render) == ("toy", "toy", "toy")
    assert preset.shot_defaults() == {"steps": 20, "guidance": 4.0, "scheduler": "ddim"}
    assert str(ModelSpec.parse("toy")) == "toy" and resolve_depth_model("toy") == "toy"
    sources = ModelSpecification.from_overrides("toy").resolve().sources
    assert sources["tokenizer"].kind == "builtin"
    assert {name: source.kind for name, source in sources.items() if name != "tokenizer"} == dict.fromkeys(
        ("text_encoder", "vae", "unet", "motion_adapter", "controlnet"), "toy")
    embedder = load_clip_model("toy", device="cpu")
    texts = embedder.encode_texts(["a red hare jumping in a meadow", "a blue tortoise walking at night"])
    assert texts.shape == (2, 32) and abs(float(texts[0] @ texts[1])) < 0.99
    estimator = load_depth_model("toy", device="cpu", progress=False)
    assert estimator(np.zeros((1, 64, 64, 3), dtype=np.uint8)).shape == (1, 64, 64)
