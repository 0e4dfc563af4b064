"""The toy IP-Adapter (toy_world/train_ip_adapter.py): its image encoder is the toy CLIP's vision tower converted
to transformers, its files are the ones in the toy weights' manifest, it steers renders toward the reference
pictures (and at scale 0 it is as if not installed), the trainer writes loadable files, and ``render-story
--models toy`` uses it for a character with reference_images (docs/TOY_WORLD.md has the figures)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from render.ip_adapter import (
    TOY_ADAPTER_FILE,
    TOY_ENCODER_FOLDER,
    IPAdapterLoadError,
    IPAdapterSource,
    encode_reference_images,
    ip_adapters,
    load_ip_adapter,
    toy_ip_adapter,
)
from retrieval.clip_models import build_toy_clip, load_clip_model
from storyreel.models.loading import load_render_components
from storyreel.models.toy_weights import MANIFEST_FILE, TOY_WEIGHTS_DIR, ToyWeightsError
from toy_world.identity_checks import KIND, character_guides, reference_images
from toy_world.render_checks import Guide
from toy_world.scenes import GERUNDS, PLACES
from toy_world.train_ip_adapter import normalised_pixels, train_ip_adapter, vision_encoder_from_open_clip
from toy_world.world_files import read_world, write_world

SHOTS = 2
FRAMES = 8
STEPS = 10
SCALE = 1.0
# Measured on these 2 held-out hare shots (ground-truth depth, τ = 1), 8 frames, 10 steps, guidance 4, caption
# "a hare ...", seeds 0-1, the committed adapter: the toy CLIP's cosine between a shot's mean frame feature and the
# five reference pictures' mean feature, averaged over the shots, is 0.437 at scale 0 (equal to no adapter) and
# 0.767 at scale 1 (+0.33). The floor leaves half of that gain as margin.
SIMILARITY_GAIN_FLOOR = 0.15


@pytest.fixture(scope="module")
def pictures() -> np.ndarray:
    return np.stack(reference_images())


def test_the_converted_encoder_is_the_toy_clips_vision_tower(pictures, one_thread):
    model, _ = build_toy_clip()
    adapter = toy_ip_adapter()
    converted = vision_encoder_from_open_clip(model.eval())
    pixels = adapter.image_processor([Image.fromarray(p) for p in pictures], return_tensors="pt").pixel_values
    with torch.no_grad():
        expected = model.encode_image(pixels)
        assert torch.allclose(converted(pixels).image_embeds, expected, atol=1e-5)
        assert torch.allclose(adapter.image_encoder(pixels).image_embeds, expected, atol=1e-5)  # the committed one
    # the processor prepares 64 px pictures exactly as retrieval prepares the toy CLIP's frames
    embedder = load_clip_model("toy", device="cpu")
    ours = (expected / expected.norm(dim=1, keepdim=True)).numpy()
    assert np.allclose(ours, embedder.encode_images(embedder.prepare_frames(pictures)), atol=1e-5)
    frames = torch.from_numpy(pictures).permute(0, 3, 1, 2).float() / 127.5 - 1
    assert torch.allclose(normalised_pixels(frames, adapter.image_processor), pixels, atol=1e-5)


def _copy_toy_files(folder: Path) -> Path:
    shutil.copy(TOY_WEIGHTS_DIR / MANIFEST_FILE, folder / MANIFEST_FILE)
    shutil.copytree(TOY_WEIGHTS_DIR / "ip_adapter", folder / "ip_adapter")
    return folder


@pytest.mark.parametrize("changed", [TOY_ADAPTER_FILE, f"{TOY_ENCODER_FOLDER}/model.safetensors"])
def test_a_changed_byte_is_refused(tmp_path, changed):
    folder = _copy_toy_files(tmp_path)
    assert toy_ip_adapter(folder=folder).variant == "base"  # the copy as it is loads
    data = bytearray((folder / changed).read_bytes())
    data[-10] ^= 1
    (folder / changed).write_bytes(bytes(data))
    with pytest.raises(ToyWeightsError, match="sha256"):
        toy_ip_adapter(folder=folder)


def test_the_toy_source(tmp_path):
    source = IPAdapterSource("base", "toy")
    assert source.kind == "toy" and "toy" in source.describe()
    with pytest.raises(IPAdapterLoadError, match="base"):
        load_ip_adapter(IPAdapterSource("plus", "toy"))
    extra = _copy_toy_files(tmp_path) / TOY_ENCODER_FOLDER / "extra.bin"
    extra.write_bytes(b"x")
    with pytest.raises(ToyWeightsError, match="not listed"):
        toy_ip_adapter(folder=tmp_path)


@pytest.fixture(scope="module")
def toy(tmp_path_factory, one_thread):
    world = tmp_path_factory.mktemp("toy_ip_adapter")
    write_world(world, seed=0, clips=14, split="heldout")
    guides = [Guide(g.spec, g.depth[:FRAMES], g.mask[:FRAMES]) for g in character_guides(read_world(world), SHOTS)]
    assert len(guides) == SHOTS
    components = load_render_components("toy", device="cpu")
    adapter = load_ip_adapter(IPAdapterSource("base", "toy"))
    return components, guides, adapter


def _render(components, guide, seed, image_embeds=None):
    from render.sampler import StructureGuidedSampler
    from structure.conditioning import controlnet_condition

    prompt = f"a {KIND} {GERUNDS[guide.spec.action]} {PLACES[guide.spec.background]}"
    result = StructureGuidedSampler(components)(
        prompt, "", conditioning=controlnet_condition(guide.depth), num_frames=len(guide.depth), height=64,
        width=64, steps=STEPS, guidance_scale=4.0, tau=1.0, seed=seed, output_type="np",
        ip_adapter_image_embeds=image_embeds)
    return np.asarray(result.frames)


def test_the_adapter_draws_the_references_and_does_nothing_at_scale_0(toy, pictures):
    components, guides, adapter = toy
    embedder = load_clip_model("toy", device="cpu")
    target = embedder.encode_images(embedder.prepare_frames(pictures)).mean(axis=0)
    target /= np.linalg.norm(target)

    def similarity(frames):
        features = embedder.encode_images(embedder.prepare_frames(frames)).mean(axis=0)
        return float(features @ target / np.linalg.norm(features))

    plain = [_render(components, guide, seed) for seed, guide in enumerate(guides)]
    embedding = encode_reference_images(adapter, list(pictures))
    figures = {}
    with ip_adapters(components, [adapter], names=["zuri"]) as active:
        for scale in (0.0, SCALE):
            active.set_scales(scale)
            frames = [_render(components, guide, seed, active.image_embeds([embedding]))
                      for seed, guide in enumerate(guides)]
            figures[scale] = float(np.mean([similarity(f) for f in frames]))
            if scale == 0.0:
                assert all(np.array_equal(a, b) for a, b in zip(frames, plain))
    figures["plain"] = float(np.mean([similarity(f) for f in plain]))
    assert figures[SCALE] >= figures[0.0] + SIMILARITY_GAIN_FLOOR, figures


def test_the_trainer_writes_files_the_loader_accepts(tmp_path, one_thread):
    world = tmp_path / "world"
    write_world(world, seed=0, clips=3, split="train")
    out = tmp_path / "out"
    record = train_ip_adapter(world, out, steps=3, checkpoints=tmp_path / "ck", progress=False)
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    assert manifest["ip_adapter"]["steps"] == 3 and set(record["files"]) == set(manifest["ip_adapter"]["files"])
    assert TOY_ADAPTER_FILE in record["files"] and f"{TOY_ENCODER_FOLDER}/config.json" in record["files"]
    loaded = toy_ip_adapter(folder=out)
    trained = loaded.state_dict["ip_adapter"]["1.to_k_ip.weight"]
    components = load_render_components("toy", device="cpu")
    start = dict(components.unet.attn_processors)
    layer = next(name for name in start if name.endswith("attn2.processor") and "motion" not in name)
    initial = components.unet.get_submodule(layer.removesuffix(".processor")).to_k.weight
    assert trained.shape == initial.shape and not torch.equal(trained, initial)  # it moved from the text's k
    again = train_ip_adapter(world, out, steps=3, checkpoints=tmp_path / "ck", progress=False)  # resumed: done
    assert again["files"] == record["files"]


def test_render_story_uses_the_toy_adapter(tmp_path, one_thread):
    from render.cli import main

    world = tmp_path / "world"
    write_world(world, seed=0, clips=2, split="heldout")
    clip = sorted(world.rglob("*.mp4"))[0]
    references = tmp_path / "zuri"
    references.mkdir()
    for index, picture in enumerate(reference_images(2)):
        Image.fromarray(picture).save(references / f"zuri-{index}.png")
    story = {"format_version": 1, "title": "zuri", "defaults": {"width": 64, "height": 64, "frames": 8, "steps": 3,
                                                                 "seed": 1, "negative_prompt": ""},
             "characters": {"zuri": {"token": "<zuri>", "class_word": "hare", "reference_images": str(references),
                                     "ip_adapter_scale": 0.8}},
             "shots": [{"id": "run", "text": "a hare running", "caption": "a hare running in a meadow",
                        "characters": ["zuri"], "clip": {"path": str(clip), "start": 0.0, "end": 1.0}}]}
    (tmp_path / "story.json").write_text(json.dumps(story))
    result = CliRunner().invoke(main, [str(tmp_path / "story.json"), "--out", str(tmp_path / "out"), "--models", "toy",
                                       "--ip-adapter", "toy", "--no-progress"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["shots"][0]["ip_adapter"] is not None, report["shots"][0]
    result = CliRunner().invoke(main, [str(tmp_path / "story.json"), "--out", str(tmp_path / "out2"), "--models",
                                       "toy", "--ip-adapter", "toy", "--ip-adapter-variant", "plus", "--no-progress"])
    assert result.exit_code != 0 and "base" in result.output
