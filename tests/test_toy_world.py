"""The toy world: deterministic clips with known depth and masks, its world folder and manifest, the two toy
trainers (the loss falls, a killed run resumes to the same weights), and the committed weights' floors."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from index_builder.build import BuildOptions, build_index
from index_builder.sources import SourceReport, read_jsonl_manifest
from retrieval.index_format import METADATA_FILE
from storyreel.models.toy_weights import MANIFEST_FILE, TOY_WEIGHTS_DIR, ToyWeightsError, verified_file
from toy_world import train_clip, train_depth, training_loop
from toy_world.scenes import (
    ACTIONS,
    BACKGROUNDS,
    COLOURS,
    GERUNDS,
    KINDS,
    SKY_INVERSE_DEPTH,
    ClipSpec,
    caption,
    clip_seed,
    render_clip,
    world_specs,
)
from toy_world.world_files import read_world, write_world

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "data" / "make_toy_world.py"
# The committed toy depth model measured AbsRel 0.093 on the subset the test uses (0.099 on every other frame of
# all 90 held-out clips); the target is 0.15.
ABS_REL_CEILING = 0.11
# The committed toy CLIP (4800 steps) finds a clip of the right kind and colour first for all 15 kind + colour
# queries (target 0.9) and of the right action for 10 of 12 action queries (0.833; target 0.8). The 2400-step CLIP
# before it gave 0.80 and 1.0; on 12 queries the action figure moves with the recipe (3600 steps: 0.5), so its floor
# is the target.
ACTION_RECALL_FLOOR = 0.8
KIND_COLOUR_RECALL_FLOOR = 0.9


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def small_world(tmp_path_factory) -> Path:
    """Eight train clips of world 0 (clips 5 and 7 have a hard cut, at 2.0 s and 2.25 s)."""
    out = tmp_path_factory.mktemp("toy_world")
    write_world(out, seed=0, clips=8)
    return out


# -- the generator --------------------------------------------------------------------------------------
def test_the_same_spec_draws_the_same_arrays_and_another_seed_does_not():
    spec = ClipSpec("hare", "red", "jump", "meadow", 2.5, seed=12)
    first, second = render_clip(spec), render_clip(spec)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    frames, depth, mask = first
    assert frames.shape == (20, 64, 64, 3) and frames.dtype == np.uint8
    assert depth.shape == mask.shape == (20, 64, 64) and depth.dtype == np.float32 and mask.dtype == bool
    other = render_clip(ClipSpec("hare", "red", "jump", "meadow", 2.5, seed=13))[0]
    assert not np.array_equal(frames, other)
    assert render_clip(spec, size=96)[0].shape == (20, 96, 96, 3)
    with pytest.raises(ValueError, match="size"):
        render_clip(spec, size=63)
    assert world_specs(3, 20, "heldout") == world_specs(3, 20, "heldout")


def test_train_and_heldout_never_share_a_clip_seed():
    for seed in (0, 1, 7):
        train = {spec.seed for spec in world_specs(seed, 300, "train")}
        heldout = {spec.seed for spec in world_specs(seed, 300, "heldout")}
        assert len(train) == len(heldout) == 300
        assert not train & heldout
    assert all(clip_seed(s, "train", i) % 2 == 0 and clip_seed(s, "heldout", i) % 2 == 1
               for s in range(5) for i in range(50))


def test_every_kind_colour_and_action_occurs_and_some_clips_have_a_cut():
    specs = world_specs(0, 90, "train")
    assert {(s.kind, s.colour, s.action) for s in specs} == {(k, c, a) for k in KINDS for c in COLOURS for a in ACTIONS}
    cuts = [s for s in specs if s.cut is not None]
    assert 5 <= len(cuts) <= 30
    for spec in cuts:
        assert spec.cut.background != spec.background and spec.cut.kind != spec.kind
        assert spec.cut_seconds() == spec.cut_frame() / 8


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("action", ACTIONS)
def test_depth_orders_sky_ground_and_figure(kind, action):
    spec = ClipSpec(kind, "blue", action, BACKGROUNDS[ACTIONS.index(action) % 3], 2.0, seed=5)
    _, depth, mask = render_clip(spec)
    assert mask.any(axis=(1, 2)).all()
    for inverse, figure in zip(depth, mask):
        background = inverse[~figure]
        assert background.min() == pytest.approx(SKY_INVERSE_DEPTH)  # the sky is the farthest thing
        is_ground = ~figure & (inverse > SKY_INVERSE_DEPTH)
        ground = np.where(is_ground, inverse, 0.0)
        rows_of_ground = is_ground.any(axis=1)
        assert np.all(np.diff(ground.max(axis=1)[rows_of_ground]) > 0)  # nearer towards the bottom
        rows = np.flatnonzero(figure.any(axis=1))
        behind = ground[rows[0] : rows[-1] - 1]  # the ground behind the figure, above its lowest rows
        assert inverse[figure].min() > behind.max(initial=0.0)
        assert np.unique(inverse[figure]).size == 1  # a flat cut-out
    if action == "approach":
        nearness = [inverse[figure][0] for inverse, figure in zip(depth, mask)]
        sizes = mask.sum(axis=(1, 2))
        assert nearness[-1] > 2 * nearness[0] and sizes[-1] > 3 * sizes[0]
        assert np.all(np.diff(nearness) >= 0)


def test_captions_name_the_scene_and_the_cut():
    spec = ClipSpec("tortoise", "orange", "wave", "night", 3.0, seed=1,
                    cut=ClipSpec("hare", "red", "run", "desert", 3.0, seed=2))
    assert caption(spec) == "an orange tortoise waving at night, then a red hare running in a desert"
    assert spec.label == "waving" and spec.cut_seconds() == 1.5
    for s in world_specs(2, 40):
        text = caption(s)
        assert text.startswith(f"a{'n' if s.colour == 'orange' else ''} {s.colour} {s.kind} {GERUNDS[s.action]}")
        assert s.label == GERUNDS[s.action] and (", then " in text) == (s.cut is not None)
    with pytest.raises(ValueError, match="ClipSpec.kind"):
        ClipSpec("dragon", "red", "run", "desert", 3.0, seed=2)


# -- the world folder ---------------------------------------------------------------------------------------
def test_the_world_folder_is_a_manifest_build_index_reads(small_world):
    rows = [json.loads(line) for line in (small_world / "captions.jsonl").read_text().splitlines()]
    report = SourceReport()
    jobs = read_jsonl_manifest(small_world / "captions.jsonl", report)
    assert not report.problems and len(jobs) == len(rows) == 8
    for job, row in zip(jobs, rows):
        assert Path(job.path).parent.name == job.label == row["label"] == GERUNDS[row["spec"]["action"]]
        assert job.caption == row["caption"] == caption(ClipSpec.from_dict(row["spec"]))
    clips = read_world(small_world)
    for clip in clips:
        frames, depth, mask = render_clip(clip.spec)
        np.testing.assert_array_equal(clip.inverse_depth, depth)
        np.testing.assert_array_equal(clip.mask, mask)
        assert np.abs(clip.frames.astype(int) - frames).mean() < 4  # H.264 at crf 18
    assert [row["cut_s"] for row in rows] == [None] * 5 + [2.0, None, 2.25]


def test_build_index_reads_the_world_and_finds_its_cut(small_world, tmp_path):
    build_index(BuildOptions(out=tmp_path / "index", manifest=small_world / "captions.jsonl", models="tiny",
                             workers=1, progress=False))
    with sqlite3.connect(tmp_path / "index" / METADATA_FILE) as db:
        found = db.execute("SELECT v.label, v.caption, s.scene_start_s FROM segments s JOIN videos v USING (video_id) "
                           "WHERE v.status = 'ok'").fetchall()
        videos = db.execute("SELECT count(*) FROM videos WHERE status = 'ok'").fetchone()[0]
    assert videos == 8
    rows = [json.loads(line) for line in (small_world / "captions.jsonl").read_text().splitlines()]
    cuts = {row["caption"]: row["cut_s"] for row in rows if row["cut_s"] is not None}
    assert len(cuts) == 2
    # every scene after a cut, and nothing else, starts a scene of its own in the index
    assert {(caption, start) for _, caption, start in found if start > 0} == set(cuts.items())


def _script(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args), "--quiet"], capture_output=True, text=True,
                          cwd="/")


def test_the_script_writes_a_world_and_refuses_bad_arguments(tmp_path):
    done = _script("--out", tmp_path / "w", "--seed", 4, "--clips", 2, "--split", "heldout", "--size", 96)
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in (tmp_path / "w" / "captions.jsonl").read_text().splitlines()]
    assert [row["name"] for row in rows] == ["heldout-0000", "heldout-0001"]
    assert all((tmp_path / "w" / row["path"]).is_file() and (tmp_path / "w" / row["depth"]).is_file() for row in rows)
    assert read_world(tmp_path / "w")[0].frames.shape[1:] == (96, 96, 3)
    for args, wanted in ((("--clips", 0), "--clips: must be at least 1, got 0"),
                         (("--clips", 2, "--size", 63), "--size: must be an even number of pixels, got 63"),
                         (("--clips", 2, "--split", "test"), "--split"),
                         (("--clips", 2, "--seed", 5, "--split", "heldout"), "holds a world made with")):
        bad = _script("--out", tmp_path / "w", *args)
        assert bad.returncode == 2
        assert bad.stderr.startswith("error: ") and wanted in bad.stderr and len(bad.stderr.splitlines()) == 1


# -- the trainers ------------------------------------------------------------------------------------------------
def test_the_clip_trainer_lowers_its_loss_and_resumes_to_the_same_weights(small_world, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    record = train_clip.train_clip(small_world, tmp_path / "straight", steps=30, checkpoints=tmp_path / "c1",
                                   heldout=small_world, progress=False)
    losses = json.loads((tmp_path / "c1" / "checkpoint.json").read_text())["losses"]
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.2
    assert set(record["metrics"]) >= {"action_recall_at_1", "kind_colour_recall_at_1"}

    saves = []
    original = training_loop.save_checkpoint

    def killed_after_first_save(*args, **kwargs):
        original(*args, **kwargs)
        saves.append(args[3])
        raise KeyboardInterrupt  # as if killed right after the checkpoint

    monkeypatch.setattr(training_loop, "save_checkpoint", killed_after_first_save)
    with pytest.raises(KeyboardInterrupt):
        train_clip.train_clip(small_world, tmp_path / "resumed", steps=30, checkpoints=tmp_path / "c2",
                              checkpoint_every=12, progress=False)
    monkeypatch.setattr(training_loop, "save_checkpoint", original)
    train_clip.train_clip(small_world, tmp_path / "resumed", steps=30, checkpoints=tmp_path / "c2",
                          checkpoint_every=12, progress=False)
    assert saves == [12]
    straight, resumed = load_file(tmp_path / "straight" / "clip.safetensors"), load_file(
        tmp_path / "resumed" / "clip.safetensors")
    assert all(torch.equal(straight[key], resumed[key]) for key in straight)

    embedder = train_clip.load_toy_clip(tmp_path / "straight")
    assert embedder.encode_texts(["a red hare"]).shape == (1, train_clip.CLIP_CONFIG["embed_dim"])
    weights = tmp_path / "straight" / "clip.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")
    with pytest.raises(ToyWeightsError, match="sha256"):
        train_clip.load_toy_clip(tmp_path / "straight")


def test_the_depth_trainer_lowers_its_loss(small_world, tmp_path, monkeypatch):
    monkeypatch.setattr(train_depth, "BATCH", 4)
    monkeypatch.setattr(train_depth, "WARMUP_STEPS", 5)
    train_depth.train_depth(small_world, tmp_path / "w", steps=25, checkpoints=tmp_path / "c", progress=False,
                            max_clips=4)
    losses = json.loads((tmp_path / "c" / "checkpoint.json").read_text())["losses"]
    assert np.mean(losses[-5:]) < 0.75 * np.mean(losses[:5])
    estimator = train_depth.load_toy_depth(tmp_path / "w")
    frames = read_world(small_world, limit=1)[0].frames[:3]
    assert estimator(frames).shape == (3, 64, 64)


def test_aligned_abs_rel_ignores_scale_and_shift():
    truth = np.linspace(0.1, 1.0, 64 * 64, dtype=np.float32).reshape(64, 64)
    assert train_depth.aligned_abs_rel(3 * truth - 2, truth) == pytest.approx(0.0, abs=1e-6)
    assert train_depth.aligned_abs_rel(np.ones_like(truth), truth) > 0.3


# -- the committed weights -----------------------------------------------------------------------------------
def _committed(name: str) -> dict:
    """The manifest entry of the committed toy weights ``name`` (they are part of the repository)."""
    return json.loads((TOY_WEIGHTS_DIR / MANIFEST_FILE).read_text())[name]


@pytest.fixture(scope="module")
def heldout_world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("toy_heldout")
    write_world(out, seed=0, clips=90, split="heldout")
    return out


def test_the_committed_clip_retrieves_actions_kinds_and_colours(heldout_world):
    _committed("clip")
    metrics = train_clip.clip_recall(train_clip.load_toy_clip(), read_world(heldout_world))
    assert metrics["action_queries"] == 12 and metrics["heldout_clips"] == 86
    assert metrics["action_recall_at_1"] >= ACTION_RECALL_FLOOR
    assert metrics["kind_colour_queries"] == 15 and metrics["kind_colour_recall_at_1"] >= KIND_COLOUR_RECALL_FLOOR


def test_the_committed_depth_model_is_accurate(heldout_world):
    _committed("depth")
    clips = read_world(heldout_world)[::3]
    metrics = train_depth.depth_metrics(train_depth.load_toy_depth(), clips, stride=4)
    assert metrics["abs_rel"] <= ABS_REL_CEILING


@pytest.mark.parametrize("name", ["clip", "depth"])
def test_committed_weights_are_small_and_match_the_manifest(name):
    entry = _committed(name)
    assert (TOY_WEIGHTS_DIR / entry["file"]).stat().st_size == entry["bytes"] < 5_000_000
    from safetensors.torch import load_file

    state = load_file(verified_file(entry["file"]))  # checks the sha256
    assert all(value.dtype == torch.float16 for value in state.values())  # stored small, loaded as float32
