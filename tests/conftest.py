"""Shared fixtures: the real data beside the checkout, synthetic clips, and a tiny index built once."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("STORYREEL_SHARED_DATA", REPO.parent / "shared" / "data"))

# No test may need the network: make the hub fail at once instead of retrying.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _hub_probe_forgotten():
    """storyreel.hub_access asks the hub once per process: each test starts without that answer, and with the
    offline flag as the suite set it (a command's --offline or a fully cached run sets it for the process)."""
    from storyreel import hub_access

    hub_access._probe_result = None
    hub_access._offline_for_the_cache = False
    before = {name: os.environ.get(name) for name in hub_access.OFFLINE_VARIABLES}
    yield
    hub_access._probe_result = None
    hub_access._offline_for_the_cache = False
    for name, value in before.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def _require(path: Path) -> Path:
    if path.exists():
        return path
    message = f"real test data not found at {path} (expected ../shared/data beside the checkout)"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    return _require(SHARED_DATA)


@pytest.fixture(scope="session")
def real_clips(shared_data) -> Path:
    return _require(shared_data / "real_clips")


@pytest.fixture(scope="session")
def kinetics_dir(shared_data) -> Path:
    return _require(shared_data / "kinetics")


@pytest.fixture(scope="session")
def bad_videos(shared_data) -> Path:
    return _require(shared_data / "bad_videos")


def load_sample_clip_maker():
    spec = importlib.util.spec_from_file_location("make_sample_clips", REPO / "data" / "make_sample_clips.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def sample_clip_maker():
    return load_sample_clip_maker()


@pytest.fixture(scope="session")
def synthetic_library(tmp_path_factory, sample_clip_maker) -> Path:
    """The demo's synthetic clip library (label folders of short H.264 clips, one with a hard cut)."""
    out = tmp_path_factory.mktemp("synthetic_library")
    sample_clip_maker.make_library(out)
    return out


@pytest.fixture(scope="session")
def tiny_index(tmp_path_factory, real_clips, synthetic_library) -> Path:
    """A tiny-preset index over the real clips and the synthetic library, built once per session."""
    from index_builder.build import BuildOptions, build_index

    out = tmp_path_factory.mktemp("tiny_index") / "index"
    build_index(BuildOptions(out=out, paths=[real_clips, synthetic_library], models="tiny", workers=2,
                             progress=False))
    return out


@pytest.fixture(scope="session")
def reference_images(shared_data) -> Path:
    """Real photographs for character training (chelsea.png, astronaut.png; see its README)."""
    return _require(shared_data / "reference_images")


# -- the tiny models -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def components():
    """The tiny render model (real architectures, seeded random weights), built once per test module: modules
    add adapters and tokens to it, so each gets its own."""
    from storyreel.models.loading import load_render_components

    return load_render_components("tiny", device="cpu")


@pytest.fixture(scope="module")
def tiny_pipeline(components):
    """diffusers' ``AnimateDiffControlNetPipeline`` on the same tiny components (the reference of the sampler)."""
    from diffusers import AnimateDiffControlNetPipeline

    pipe = AnimateDiffControlNetPipeline(**components.pipeline_kwargs())
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def tiny_depth_model():
    """The tiny DPT depth model (seeded random weights)."""
    from structure.depth_models import load_depth_model

    return load_depth_model("tiny", device="cpu", progress=False)


@pytest.fixture(scope="module")
def one_thread():
    """The tiny models gain nothing from intra-op threads, and on a shared 2-core machine spinning OpenMP
    threads made the first sampler test take 30 s instead of 1 s: one thread for the module, then restored."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def photos(reference_images, tmp_path_factory):
    """The two real photographs plus a mirrored copy of one (3 images, the method's minimum), loaded at 64 px."""
    import shutil

    from PIL import Image

    from characters.reference_images import load_reference_images

    folder = tmp_path_factory.mktemp("photos")
    for path in sorted(reference_images.glob("*.png")):
        shutil.copy(path, folder / path.name)
    with Image.open(reference_images / "chelsea.png") as image:
        image.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(folder / "chelsea_flipped.png")
    return load_reference_images(folder, 64)
