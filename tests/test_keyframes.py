"""Keyframes first (render.keyframes): the motion UNet without its motion modules is SD1.5's image UNet, and
``render-story --keyframes-only`` writes one picture per shot and a sheet, resumably (tiny models)."""

from __future__ import annotations

import hashlib
import inspect
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from render.cli import main
from render.keyframes import image_model
from render.sampler import StructureGuidedSampler
from structure.conditioning import controlnet_condition

SIZE, STEPS = 32, 4


@pytest.fixture(scope="module", autouse=True)
def quiet_threads(one_thread):
    torch.manual_seed(0)


def image_unet(motion_unet):
    """A diffusers UNet2DConditionModel holding the motion UNet's image weights (every key but the motion modules)."""
    from diffusers import UNet2DConditionModel

    config = dict(motion_unet.config)
    accepted = set(inspect.signature(UNet2DConditionModel.__init__).parameters)
    kwargs = {k: v for k, v in config.items() if k in accepted and k != "num_attention_heads"}
    kwargs.update(attention_head_dim=config["num_attention_heads"],  # diffusers' naming (its issue #2011)
                  down_block_types=[t.replace("Motion", "2D") for t in config["down_block_types"]],
                  up_block_types=[t.replace("Motion", "2D") for t in config["up_block_types"]],
                  mid_block_type="UNetMidBlock2DCrossAttn")
    unet = UNet2DConditionModel(**kwargs)
    unet.load_state_dict({k: v for k, v in motion_unet.state_dict().items() if "motion_modules" not in k},
                         strict=True)
    return unet.eval()


def depth_frame(size: int = SIZE) -> torch.Tensor:
    y, x = np.mgrid[0:size, 0:size] / (size - 1)
    return controlnet_condition((0.6 * x + 0.3 * y)[None].astype(np.float32))


def test_the_image_model_is_sd15_with_a_depth_controlnet(components):
    """One frame through our sampler with the motion modules bypassed equals diffusers'
    StableDiffusionControlNetPipeline on a UNet2DConditionModel with the same image weights."""
    from diffusers import StableDiffusionControlNetPipeline

    cond = depth_frame()
    with image_model(components.unet):
        ours = StructureGuidedSampler(components)("a knight riding a horse", "blurry", conditioning=cond, steps=STEPS,
                                                  guidance_scale=7.5, seed=3, output_type="pt").frames
    pipe = StableDiffusionControlNetPipeline(vae=components.vae, text_encoder=components.text_encoder,
                                             tokenizer=components.tokenizer, unet=image_unet(components.unet),
                                             controlnet=components.controlnet, scheduler=components.scheduler,
                                             safety_checker=None, feature_extractor=None,
                                             requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe("a knight riding a horse", image=cond, negative_prompt="blurry", num_inference_steps=STEPS,
                  guidance_scale=7.5, height=SIZE, width=SIZE, generator=torch.Generator().manual_seed(3),
                  output_type="pt").images
    assert ours.shape == (1, SIZE, SIZE, 3) and theirs.shape == (1, 3, SIZE, SIZE)
    assert torch.allclose(ours, theirs.permute(0, 2, 3, 1), atol=1e-5), (ours - theirs.permute(0, 2, 3, 1)).abs().max()


def test_the_motion_modules_come_back_after_the_block(components):
    cond = controlnet_condition(np.stack([np.full((SIZE, SIZE), 0.1 * t, np.float32) for t in range(4)]))
    sampler = StructureGuidedSampler(components)
    before = sampler("a rabbit", conditioning=cond, steps=2, seed=1, output_type="latent").latents
    with image_model(components.unet):
        bypassed = sampler("a rabbit", conditioning=cond, steps=2, seed=1, output_type="latent").latents
    after = sampler("a rabbit", conditioning=cond, steps=2, seed=1, output_type="latent").latents
    assert torch.equal(before, after) and not torch.equal(before, bypassed)


def storyboard(folder: Path, clip: Path, caption_of_run="(<hare> rabbit) running across a field") -> Path:
    shots = [("meet", "(<hare> rabbit) standing in a meadow"), ("run", caption_of_run),
             ("rest", "(<hare> rabbit) resting under a tree")]
    data = {"format_version": 1, "title": "keyframes", "defaults": {"width": 64, "height": 64, "frames": 8,
                                                                     "steps": 3, "seed": 1},
            "characters": {"hare": {"token": "<hare>", "class_word": "rabbit"}},
            "shots": [{"id": i, "text": c, "caption": c, "characters": ["hare"],
                       "clip": {"path": str(clip), "start": 0.0, "end": 1.0}} for i, c in shots]}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "story.json").write_text(json.dumps(data))
    return folder / "story.json"


def run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args] + ["--models", "tiny", "--no-progress"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob("*.png"))}


def test_keyframes_only_writes_a_picture_per_shot_and_a_sheet_and_resumes(synthetic_library, tmp_path):
    from PIL import Image

    clip = sorted(Path(synthetic_library).rglob("*.mp4"))[0]
    story, out = storyboard(tmp_path, clip), tmp_path / "out"
    output = run(story, "--out", out, "--keyframes-only")
    assert "keyframes: rendered 3, skipped 0" in output
    pictures = digests(out / "keyframes")
    assert sorted(pictures) == ["meet.png", "rest.png", "run.png"]
    assert Image.open(out / "keyframes" / "meet.png").size == (64, 64) and (out / "keyframes.png").is_file()
    assert not (out / "shots").exists() and not (out / "story.mp4").exists()  # no video rendered
    record = json.loads((out / "keyframes" / "run.json").read_text())
    assert record["shot"] == "run" and record["segment"]["path"] == str(clip) and record["steps"] == 3
    assert "keyframes: rendered 0, skipped 3" in run(story, "--out", out, "--keyframes-only")
    edited = storyboard(tmp_path, clip, "(<hare> rabbit) leaping over a log")
    assert "keyframes: rendered 1, skipped 2" in run(edited, "--out", out, "--keyframes-only")
    after = digests(out / "keyframes")
    assert after["run.png"] != pictures["run.png"] and after["meet.png"] == pictures["meet.png"]
    # the videos after the keyframes: the same footage, and the first frame's depth from the same cache
    run(edited, "--out", out)
    report = json.loads((out / "report.json").read_text())
    assert [s["segment"]["path"] for s in report["shots"]] == [str(clip)] * 3


def test_a_keyframe_shot_is_animated_from_its_keyframe_and_an_edit_renders_it_alone(synthetic_library, tmp_path):
    from PIL import Image

    clip = sorted(Path(synthetic_library).rglob("*.mp4"))[0]
    plain_story = storyboard(tmp_path / "plain", clip)
    run(plain_story, "--out", tmp_path / "plain-out")
    data = json.loads(plain_story.read_text())
    data["shots"][1]["keyframe"] = True
    story = tmp_path / "story.json"
    story.write_text(json.dumps(data))
    out = tmp_path / "out"
    run(story, "--out", out)
    report = json.loads((out / "report.json").read_text())
    run_shot = report["shots"][1]["keyframe"]
    assert run_shot["source"] == "generated" and run_shot["image"] == "keyframes/run.png"
    assert run_shot["sparse_calls"] == 3 and run_shot["frame_indices"] == [0]  # SparseCtrl at every step
    assert report["shots"][0]["keyframe"] is None and not (out / "keyframes" / "meet.png").exists()
    videos = {name: digest for name, digest in digests_of(out / "shots", "*.mp4").items()}
    plain = digests_of(tmp_path / "plain-out" / "shots", "*.mp4")
    assert videos["run.mp4"] != plain["run.mp4"] and videos["meet.mp4"] == plain["meet.mp4"]

    picture = np.asarray(Image.open(out / "keyframes" / "run.png")).copy()
    picture[:8] = 255  # someone edits the keyframe
    Image.fromarray(picture).save(out / "keyframes" / "run.png")
    run(story, "--out", out)
    report = json.loads((out / "report.json").read_text())
    assert report["rendered"] == ["run"] and report["shots"][1]["keyframe"]["source"] == "edited"
    assert digests_of(out / "shots", "*.mp4")["run.mp4"] != videos["run.mp4"]
    assert np.array_equal(np.asarray(Image.open(out / "keyframes" / "run.png")), picture)  # kept as edited
    run(story, "--out", out)
    assert json.loads((out / "report.json").read_text())["rendered"] == []


def test_a_keyframe_image_in_the_storyboard_is_used_and_checked(synthetic_library, tmp_path):
    from PIL import Image

    clip = sorted(Path(synthetic_library).rglob("*.mp4"))[0]
    data = json.loads(storyboard(tmp_path, clip).read_text())
    picture = tmp_path / "start.png"
    Image.fromarray(np.full((64, 64, 3), 200, np.uint8)).save(picture)
    data["shots"][2]["keyframe_image"] = "start.png"
    story = tmp_path / "story.json"
    story.write_text(json.dumps(data))
    run(story, "--out", tmp_path / "out")
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["shots"][2]["keyframe"]["source"] == "keyframe_image"
    assert report["shots"][2]["keyframe"]["image"] == str(picture)
    Image.fromarray(np.full((64, 64, 3), 30, np.uint8)).save(picture)
    run(story, "--out", tmp_path / "out")
    assert json.loads((tmp_path / "out" / "report.json").read_text())["rendered"] == ["rest"]

    picture.unlink()
    result = CliRunner().invoke(main, [str(story), "--out", str(tmp_path / "other"), "--models", "tiny"])
    assert result.exit_code == 2 and "shots[2].keyframe_image" in result.output
    picture.write_bytes(b"")  # an empty picture is bad input, named before anything renders
    result = CliRunner().invoke(main, [str(story), "--out", str(tmp_path / "other"), "--models", "tiny"])
    assert result.exit_code == 2 and "shots[2].keyframe_image: not a picture" in result.output
    Image.fromarray(np.full((64, 64, 3), 30, np.uint8)).save(picture)
    result = CliRunner().invoke(main, [str(story), "--out", str(tmp_path / "toy"), "--models", "tiny", "--sparsectrl",
                                       "toy"])  # the toy SparseCtrl fits only the toy models: refused before any work
    assert result.exit_code == 2 and "--sparsectrl toy" in result.output
    assert not (tmp_path / "other").exists() and not (tmp_path / "toy").exists()


def digests_of(folder: Path, pattern: str) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.glob(pattern))}


def test_a_keyframe_attending_to_a_reference_makes_the_reference_keyframe_first(synthetic_library, tmp_path):
    """With consistent self-attention, a keyframe attends to its references' keyframe banks: animating the last shot
    from its keyframe makes the reference shot's keyframe (and bank) first."""
    clip = sorted(Path(synthetic_library).rglob("*.mp4"))[0]
    data = json.loads(storyboard(tmp_path, clip).read_text())
    data["defaults"]["consistency"] = {"rate": 0.5, "until": 0.6}
    data["shots"][2]["keyframe"] = True
    story = tmp_path / "story.json"
    story.write_text(json.dumps(data))
    run(story, "--out", tmp_path / "out")
    keyframes = sorted(p.name for p in (tmp_path / "out" / "keyframes").glob("*.png"))
    assert keyframes == ["meet.png", "rest.png"]  # the reference's keyframe, then the animated shot's
    banks = sorted(p.name.split(".")[0] + "." + p.name.split(".")[2]
                   for p in (tmp_path / "out" / "cache" / "consistency").glob("*.safetensors"))
    assert banks == ["meet.keyframe", "meet.safetensors"]
    rest = json.loads((tmp_path / "out" / "keyframes" / "rest.json").read_text())
    assert rest["consistency"]["attends"][0]["file"].endswith(".keyframe.safetensors")


def test_the_i2vgen_animator_animates_keyframe_shots_without_depth(synthetic_library, tmp_path):
    """--animator i2vgen-xl: the keyframe shot is made by diffusers' I2VGen-XL (tiny), the others as before; switching
    animators renders the keyframe shots alone again."""
    clip = sorted(Path(synthetic_library).rglob("*.mp4"))[0]
    data = json.loads(storyboard(tmp_path, clip).read_text())
    data["shots"][1]["keyframe"] = True
    story = tmp_path / "story.json"
    story.write_text(json.dumps(data))
    out = tmp_path / "out"
    run(story, "--out", out)
    report = json.loads((out / "report.json").read_text())
    assert "sparse_calls" in report["shots"][1]["keyframe"]
    run(story, "--out", out, "--animator", "i2vgen-xl")
    report = json.loads((out / "report.json").read_text())
    assert report["rendered"] == ["run"]
    used = report["shots"][1]["keyframe"]
    assert used["animator"] == "i2vgen-xl" and used["depth_guidance"] is False and used["model"] == "tiny (seed 0)"
    assert used["prompt"].startswith("rabbit running") and report["shots"][1]["controlnet_calls"] == 0
    assert read_frames(out / "shots" / "run.mp4").shape == (8, 64, 64, 3)

    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps(json.loads(storyboard(tmp_path / "p", clip).read_text())))
    result = CliRunner().invoke(main, [str(plain), "--out", str(tmp_path / "none"), "--models", "tiny",
                                       "--animator", "i2vgen-xl"])
    assert result.exit_code == 2 and "no shot has" in result.output


def read_frames(path: Path) -> np.ndarray:
    from storyreel.video_files import read_video

    return read_video(path)[0]


def test_a_model_config_names_the_sparsectrl_model_and_the_flag_wins(synthetic_library, tmp_path):
    """sparsectrl in a TOML model config (what fetch-models --with sparsectrl writes) is the keyframe shots'
    SparseCtrl model, relative to the file; --sparsectrl still wins over it."""
    from render.sparse_control import load_sparse_controlnet

    models = tmp_path / "models"
    load_sparse_controlnet("tiny").save_pretrained(models / "sparsectrl", safe_serialization=True)
    (models / "models.toml").write_text('preset = "tiny"\n\n[components]\nsparsectrl = "sparsectrl"\n')
    clip = sorted(Path(synthetic_library).rglob("*.mp4"))[0]
    data = json.loads(storyboard(tmp_path / "story", clip).read_text())
    data["shots"] = data["shots"][:1]
    data["shots"][0]["keyframe"] = True
    story = tmp_path / "story.json"
    story.write_text(json.dumps(data))
    run(story, "--out", tmp_path / "out", "--model-config", models / "models.toml")
    shot = json.loads((tmp_path / "out" / "report.json").read_text())["shots"][0]
    assert shot["keyframe"]["sparsectrl"] == str((models / "sparsectrl").resolve())
    run(story, "--out", tmp_path / "flag", "--model-config", models / "models.toml", "--sparsectrl", "tiny")
    assert json.loads((tmp_path / "flag" / "report.json").read_text())["shots"][0]["keyframe"]["sparsectrl"] == "tiny"
    bad = tmp_path / "bad.toml"
    bad.write_text('[components]\nsparsectrl = "weights.ckpt"\n')
    result = CliRunner().invoke(main, [str(story), "--out", str(tmp_path / "bad"), "--model-config", str(bad)])
    assert result.exit_code == 2 and "sparsectrl" in result.output and "pickle" in result.output


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_a_batch_of_keyframes_equals_each_keyframe_alone(components, eta):
    """A story's keyframes in one sampler call (B samples of one frame, each its own prompt, depth and seed) are
    the keyframes rendered one at a time: the same noise per seed, also in DDIM's stochastic steps (eta 1)."""
    prompts = ["a knight riding a horse", "a hare in a meadow", "a boat on a lake"]
    seeds = [3, 7, 11]
    depths = [depth_frame(), depth_frame().flip(-1), 1 - depth_frame()]
    sampler = StructureGuidedSampler(components)
    embeds = torch.cat([sampler.encode_prompt(p) for p in prompts])
    common = dict(steps=STEPS, guidance_scale=7.5, tau=0.5, eta=eta, output_type="pt")
    rows = []
    handle = components.unet.register_forward_hook(lambda module, args, out: rows.append(args[0].shape[0]))
    try:
        with image_model(components.unet):
            batch = sampler(prompt_embeds=embeds, negative_prompt="blurry", conditioning=torch.cat(depths),
                            seed=seeds, **common)
    finally:
        handle.remove()
    with image_model(components.unet):
        alone = [sampler(p, "blurry", conditioning=d, seed=s, **common) for p, d, s in zip(prompts, depths, seeds)]
    assert rows == [2 * 3] * STEPS  # one UNet call per step for the three, [uncond, cond] each
    assert batch.latents.shape[0] == 3 and batch.frames.shape == (3, SIZE, SIZE, 3)
    assert batch.controlnet_calls == alone[0].controlnet_calls == STEPS // 2  # tau as for one keyframe
    for index, single in enumerate(alone):
        assert torch.allclose(batch.latents[index:index + 1], single.latents, atol=1e-5)
        assert torch.allclose(batch.frames[index:index + 1], single.frames, atol=1e-5)
    assert not torch.allclose(batch.frames[0], batch.frames[1], atol=1e-2)  # three pictures, not one


def test_a_batch_checks_its_seeds_and_conditioning(components):
    sampler = StructureGuidedSampler(components)
    embeds = torch.cat([sampler.encode_prompt(p) for p in ["a hare", "a fox"]])
    with pytest.raises(ValueError, match="3 seeds for a batch of 2"):
        sampler(prompt_embeds=embeds, conditioning=torch.cat([depth_frame()] * 2), steps=1, seed=[1, 2, 3])
    with pytest.raises(ValueError, match="in each of 2 samples"):
        sampler(prompt_embeds=embeds, conditioning=torch.cat([depth_frame()] * 3), steps=1, seed=[1, 2],
                num_frames=1)


def test_keyframe_batches_group_shots_that_can_share_a_sampler_call():
    from types import SimpleNamespace

    from render.keyframes import keyframe_batches

    def shot(id_, characters=(("hare", 1.0),), **changes):
        values = dict(width=64, height=64, steps=3, guidance=7.5, tau=0.5, eta=0.0, scheduler="ddim")
        values.update(changes)
        return SimpleNamespace(id=id_, characters=[SimpleNamespace(name=n, scale=s, ip_adapter_scale=0.6)
                                                   for n, s in characters], **values)

    shots = [shot("a"), shot("b", characters=()), shot("c"), shot("d", steps=4), shot("e"), shot("f"),
             shot("g", characters=(("hare", 0.5),)), shot("h", tau=0.8), shot("i")]
    ids = [[s.id for s in batch] for batch in keyframe_batches(shots, limit=3, alone=lambda s: s.id == "f")]
    assert ids == [["a", "c", "e"], ["b"], ["d"], ["f"], ["g"], ["h"], ["i"]]
    assert [[s.id for s in b] for b in keyframe_batches(shots[:3], limit=1)] == [["a"], ["b"], ["c"]]
    with pytest.raises(ValueError, match="at least 1"):
        keyframe_batches(shots, limit=0)
