"""The toy render model's recipe cannot rot: each stage's loss falls in a few steps, a killed stage resumes, the
saved folders load through the render's own loader as the toy preset does (sha256-checked)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from storyreel.models.loading import load_render_components
from storyreel.models.toy_weights import MANIFEST_FILE, ToyWeightsError, verified_folder
from toy_world import train_render
from toy_world.world_files import write_world


@pytest.fixture(scope="module")
def small_world(tmp_path_factory):
    out = tmp_path_factory.mktemp("toy_render_world")
    write_world(out, seed=5, clips=6, split="train")
    return out


def losses(folder, stage: str) -> list[float]:
    return json.loads((folder / stage / "checkpoint.json").read_text())["losses"]


def test_every_stage_learns_and_the_folders_load_as_the_toy_preset(small_world, tmp_path, monkeypatch, one_thread):
    monkeypatch.setattr(train_render, "BATCH", {"vae": 8, "image": 8, "motion": 2})
    monkeypatch.setattr(train_render, "WARMUP_STEPS", 5)
    steps = {"vae": 30, "image": 30, "motion": 6}
    records = train_render.train_render_model(small_world, tmp_path / "weights", steps, checkpoints=tmp_path / "c",
                                              checkpoint_every=10, progress=False)
    assert set(records) == set(train_render.STAGES)
    for stage in ("vae", "image"):
        curve = losses(tmp_path / "c", stage)
        assert len(curve) == steps[stage] and np.mean(curve[-5:]) < 0.75 * np.mean(curve[:5]), (stage, curve)
    assert np.isfinite(losses(tmp_path / "c", "motion")).all()
    assert records["vae"]["scaling_factor"] > 0

    manifest = json.loads((tmp_path / "weights" / MANIFEST_FILE).read_text())
    assert {"render.vae", "render.image", "render.motion"} <= set(manifest)
    for name in ("vae", "unet", "text_encoder", "controlnet", "motion_adapter"):
        verified_folder(f"render/{name}", tmp_path / "weights")
    folders = {name: str(tmp_path / "weights" / "render" / name)
               for name in ("text_encoder", "vae", "unet", "motion_adapter", "controlnet")}
    components = load_render_components("toy", overrides=folders, device="cpu")
    assert components.vae_scale_factor == 4 and components.unet.dtype == torch.float32

    # a second run resumes every finished stage instead of training it again
    again = train_render.train_render_model(small_world, tmp_path / "weights", steps, checkpoints=tmp_path / "c",
                                            checkpoint_every=10, progress=False)
    assert [again[s]["steps"] for s in train_render.STAGES] == [steps[s] for s in train_render.STAGES]
    assert len(losses(tmp_path / "c", "image")) == steps["image"]
    rewritten = json.loads((tmp_path / "weights" / MANIFEST_FILE).read_text())
    assert all(rewritten[key]["files"] == manifest[key]["files"] for key in manifest)  # the same weights again

    unet_weights = tmp_path / "weights" / "render" / "unet" / "diffusion_pytorch_model.safetensors"
    unet_weights.write_bytes(unet_weights.read_bytes()[:-1] + b"\0")
    with pytest.raises(ToyWeightsError, match="sha256"):
        verified_folder("render/unet", tmp_path / "weights")


def test_the_vae_sees_figures_in_colours_the_world_does_not_have():
    pixels = torch.rand(64, 3, 8, 8) * 2 - 1
    figure = torch.zeros(64, 1, 8, 8, dtype=torch.bool)
    figure[:, :, 2:6, 3:5] = True
    out = train_render.recoloured_figures(pixels, figure, torch.Generator().manual_seed(0), share=0.5)
    changed = (out != pixels).flatten(1).any(dim=1)
    assert 16 <= int(changed.sum()) <= 48  # about half the samples
    assert torch.equal(out[~figure.expand_as(out)], pixels[~figure.expand_as(pixels)])  # the background is kept
    one = int(torch.nonzero(changed)[0])
    inside = figure[one, 0]
    before, after = pixels[one][:, inside], out[one][:, inside]
    unclamped = (after.abs() < 1).all(dim=0)
    # the shading is kept: the differences between figure pixels are the same where nothing was clamped
    assert torch.allclose((after - before)[:, unclamped].std(dim=1), torch.zeros(3), atol=1e-6)
