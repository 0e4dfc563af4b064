"""The toy SparseCtrl RGB model (toy_world/train_sparse_control.py): its files are the ones in the toy weights'
manifest, conditioning frame 0 on a picture draws frame 0 toward it (and not with its residuals zeroed), a generated
transition's ends are nearer the boundary frames than a crossfade's middle frame, the trainer writes files the
loader accepts, and ``render-story --models toy`` uses it by default (docs/TOY_WORLD.md has the figures)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from render.sparse_control import TOY_FOLDER, SparseCondition, load_sparse_controlnet, toy_sparse_controlnet
from storyreel.models.loading import load_render_components
from storyreel.models.toy_weights import MANIFEST_FILE, TOY_WEIGHTS_DIR, ToyWeightsError
from toy_world.render_checks import Guide
from toy_world.scenes import scene_caption
from toy_world.world_files import read_world, write_world

FRAMES = 8
STEPS = 10
# Measured with the committed model on these held-out scenes (seed 0 world, 8 frames, 10 DDIM steps, guidance 4),
# mean absolute pixel difference (0-255):
# * keyframe: frame 0 vs the footage's first frame, plain → conditioned: 23.4 → 21.3, 18.7 → 16.3, 28.2 → 26.6
#   (mean gain 2.0); the floor keeps half of it;
# * transition: an end's distance to its boundary frame over the crossfade middle frame's, mean of 2 pairs: A's end
#   2.00 (2.12 with the residuals zeroed), B's end 0.80 (1.14 zeroed); ceilings and floors leave margin.
KEYFRAME_SHOTS = 3
KEYFRAME_GAIN_FLOOR = 1.0
LAST_RATIO_CEILING = 1.0
LAST_GAIN_FLOOR = 0.15
FIRST_RATIO_CEILING = 1.5
FIRST_GAIN_FLOOR = 0.5
# With the text travelling from A's caption to B's (render-story's transitions since prompt travel), the same two
# pairs: A's end 0.83 and 0.43, B's end 0.66 and 0.94 (1.63 and 0.80, 0.62 and 0.96 with B's caption alone):
# every end under 1, the criterion pair by pair; A's end at least TRAVEL_FIRST_GAIN_FLOOR nearer on the mean.
TRAVEL_RATIO_CEILING = 1.0
TRAVEL_FIRST_GAIN_FLOOR = 0.3


def _copy_toy_files(folder: Path) -> Path:
    shutil.copy(TOY_WEIGHTS_DIR / MANIFEST_FILE, folder / MANIFEST_FILE)
    shutil.copytree(TOY_WEIGHTS_DIR / TOY_FOLDER, folder / TOY_FOLDER)
    return folder


def test_a_changed_byte_or_an_unlisted_file_is_refused(tmp_path):
    folder = _copy_toy_files(tmp_path)
    assert toy_sparse_controlnet(folder).config.use_simplified_condition_embedding  # the copy as it is loads
    weights = folder / TOY_FOLDER / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(ToyWeightsError, match="sha256"):
        toy_sparse_controlnet(folder)
    again = tmp_path / "again"
    again.mkdir()
    (_copy_toy_files(again) / TOY_FOLDER / "extra.bin").write_bytes(b"x")
    with pytest.raises(ToyWeightsError, match="not listed"):
        toy_sparse_controlnet(again)


@pytest.fixture(scope="module")
def toy(tmp_path_factory, one_thread):
    world = tmp_path_factory.mktemp("toy_sparse_control")
    write_world(world, seed=0, clips=6, split="heldout")
    clips = [clip for clip in read_world(world) if clip.spec.cut is None]
    components = load_render_components("toy", device="cpu")
    return components, load_sparse_controlnet("toy", components=components), clips


def _render(components, sparse, condition, caption, seed, depth=None, frames=FRAMES):
    from render.sampler import StructureGuidedSampler
    from structure.conditioning import controlnet_condition

    result = StructureGuidedSampler(components)(
        caption, "", conditioning=None if depth is None else controlnet_condition(depth), num_frames=frames,
        height=64, width=64, steps=STEPS, guidance_scale=4.0, tau=1.0, seed=seed, output_type="np",
        sparse_controlnet=sparse if condition is not None else None, sparse_condition=condition)
    return np.asarray(result.frames)


def _mad(a, b) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean())


def test_a_keyframe_draws_frame_0_toward_its_picture(toy):
    """Each held-out shot guided by its depth and caption, frame 0 conditioned on the footage's first frame (a
    picture that fits the depth and the caption, as a keyframe made by the image model does)."""
    components, sparse, clips = toy
    gains = []
    for seed, clip in enumerate(clips[:KEYFRAME_SHOTS]):
        guide = Guide.from_clip(clip)
        picture = clip.frames[0]
        caption = scene_caption(clip.spec)
        plain = _render(components, sparse, None, caption, seed, guide.depth[:FRAMES])
        keyed = _render(components, sparse, SparseCondition.keyframe(picture), caption, seed, guide.depth[:FRAMES])
        zeroed = _render(components, sparse, SparseCondition.keyframe(picture, scale=0.0), caption, seed,
                         guide.depth[:FRAMES])
        assert np.array_equal(zeroed, plain)  # residuals zeroed: the plain render
        gains.append(_mad(plain[0], picture) - _mad(keyed[0], picture))
    assert float(np.mean(gains)) >= KEYFRAME_GAIN_FLOOR, gains


def test_a_transitions_ends_move_toward_the_boundary_frames(toy):
    """A's last frame and B's first frame from two held-out clips, B's caption, no depth (as render-story does). Each
    end's distance to its boundary frame over the crossfade middle frame's (the issue's criterion is a ratio under 1
    at both ends: on these two pairs at 10 steps B's end 0.79, A's 1.22, against 1.14 and 2.12 with the residuals
    zeroed; over 8 pairs at 20 steps both means are under 1, docs/TOY_WORLD.md), with SparseCtrl and zeroed."""
    components, sparse, clips = toy
    figures = []
    for seed, (a, b) in enumerate(zip(clips[:2], clips[2:4])):
        last, first = a.frames[-1], b.frames[0]
        middle = np.round((last.astype(np.float64) + first) / 2)
        row = []
        for scale in (1.0, 0.0):
            clip = _render(components, sparse, SparseCondition.transition(last, first, scale=scale),
                           scene_caption(b.spec), seed)
            row += [_mad(clip[0], last) / _mad(middle, last), _mad(clip[-1], first) / _mad(middle, first)]
        figures.append(row)
    first, last, first_zeroed, last_zeroed = np.mean(figures, axis=0)
    assert last <= LAST_RATIO_CEILING and last <= last_zeroed - LAST_GAIN_FLOOR, figures
    assert first <= FIRST_RATIO_CEILING and first <= first_zeroed - FIRST_GAIN_FLOOR, figures


def test_prompt_travel_brings_a_transitions_first_frame_to_the_previous_shot(toy):
    """As render-story makes a transition: the text travels from A's caption (frame 0) to B's (the last frame).
    Both ends of each pair are then nearer their boundary frames than the crossfade's middle frame is."""
    from render.sampler import PromptTravel, StructureGuidedSampler

    components, sparse, clips = toy
    sampler = StructureGuidedSampler(components)
    travelled, alone = [], []
    for seed, (a, b) in enumerate(zip(clips[:2], clips[2:4])):
        last, first = a.frames[-1], b.frames[0]
        middle = np.round((last.astype(np.float64) + first) / 2)
        for caption, travel, rows in ((scene_caption(a.spec), True, travelled), (scene_caption(b.spec), False, alone)):
            result = sampler(caption, "", conditioning=None, num_frames=FRAMES, height=64, width=64, steps=STEPS,
                             guidance_scale=4.0, seed=seed, output_type="np", sparse_controlnet=sparse,
                             sparse_condition=SparseCondition.transition(last, first),
                             prompt_travel=(PromptTravel.linear(sampler.encode_prompt(scene_caption(b.spec)), FRAMES)
                                            if travel else None))
            clip = np.asarray(result.frames)
            rows.append([_mad(clip[0], last) / _mad(middle, last), _mad(clip[-1], first) / _mad(middle, first)])
    assert np.max(travelled) < TRAVEL_RATIO_CEILING, travelled
    assert np.mean(travelled, axis=0)[0] <= np.mean(alone, axis=0)[0] - TRAVEL_FIRST_GAIN_FLOOR, (travelled, alone)


def test_the_trainer_writes_files_the_loader_accepts(tmp_path, one_thread):
    from toy_world.train_sparse_control import MANIFEST_KEY, train_sparse_control

    world = tmp_path / "world"
    write_world(world, seed=0, clips=3, split="train")
    out = tmp_path / "out"
    record = train_sparse_control(world, out, steps=2, checkpoints=tmp_path / "ck", progress=False)
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    assert manifest[MANIFEST_KEY]["steps"] == 2 and set(record["files"]) == set(manifest[MANIFEST_KEY]["files"])
    assert f"{TOY_FOLDER}/config.json" in record["files"]
    model = toy_sparse_controlnet(out)
    assert model.controlnet_down_blocks[0].weight.abs().sum() > 0  # the zero convolutions moved
    again = train_sparse_control(world, out, steps=2, checkpoints=tmp_path / "ck", progress=False)  # resumed: done
    assert again["files"] == record["files"]


def test_render_story_uses_the_toy_sparsectrl_for_a_generated_transition(tmp_path, one_thread):
    from render.cli import main

    world = tmp_path / "world"
    write_world(world, seed=0, clips=2, split="heldout")
    clips = sorted(world.rglob("*.mp4"))
    story = {"format_version": 1, "title": "t", "defaults": {"width": 64, "height": 64, "frames": 8, "steps": 3,
                                                              "seed": 1, "negative_prompt": ""},
             "shots": [{"id": "a", "text": "a hare running", "caption": "a red hare running in a meadow",
                        "clip": {"path": str(clips[0]), "start": 0.0, "end": 1.0}, "transition": "generate",
                        "transition_seconds": 1.0},
                       {"id": "b", "text": "a tortoise", "caption": "a blue tortoise walking at night",
                        "clip": {"path": str(clips[1]), "start": 0.0, "end": 1.0}}]}
    (tmp_path / "story.json").write_text(json.dumps(story))
    result = CliRunner().invoke(main, [str(tmp_path / "story.json"), "--out", str(tmp_path / "out"), "--models", "toy",
                                       "--no-progress"])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["transitions"][0]["kind"] == "generate" and report["transitions"][0]["status"] == "rendered"
    sidecar = json.loads((tmp_path / "out" / report["transitions"][0]["file"]).with_suffix(".json").read_text())
    assert sidecar["sparsectrl"] == "toy"
    result = CliRunner().invoke(main, [str(tmp_path / "story.json"), "--out", str(tmp_path / "tiny"), "--models",
                                       "tiny", "--sparsectrl", "toy", "--no-progress"])
    assert result.exit_code == 2 and "--sparsectrl toy" in result.output
