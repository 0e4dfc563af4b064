"""I3D, the standard FVD extractor: pytorch-i3d's layout, SAME padding, FVD preprocessing, the feature, the
safetensors converter, loading, and the choice reaching evaluate-story's FVD features."""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from evaluation.i3d import (
    BN_EPS,
    BN_MOMENTUM,
    I3DFeatures,
    InceptionI3d,
    build_tiny_i3d,
    load_i3d,
    preprocess_video,
    same_padding,
)
from evaluation.i3d_conversion import main as convert_main
from storyreel.errors import ModelLoadError
from storyreel.weights_policy import PICKLE_REFUSAL

REPO = Path(__file__).resolve().parent.parent

# Checked once (a throwaway script, not part of the suite) against pytorch-i3d's pytorch_i3d.py at the mirrored
# commit: InceptionI3d(400, in_channels=3).state_dict() has exactly these keys and shapes, the parameter count is
# the same, and with the tiny weights loaded into both, the logits on random 1x3x16x224x224, 1x3x40x224x224 and
# 2x3x19x231x237 inputs (eval mode) equal its logits (max abs difference 0.0) and the features its time-mean logits.
PYTORCH_I3D_KEYS = 344
PYTORCH_I3D_PARAMETERS = 12_697_264
PYTORCH_I3D_LAYOUT_SHA256 = "f2b6fadc9e73709cdbb3c3d49db4cc9f183b02810e1dbfd49bcf71631debe38d"  # sorted "key:[shape]"
TOP_LEVEL = ["Conv3d_1a_7x7", "Conv3d_2b_1x1", "Conv3d_2c_3x3", "Mixed_3b", "Mixed_3c", "Mixed_4b", "Mixed_4c",
             "Mixed_4d", "Mixed_4e", "Mixed_4f", "Mixed_5b", "Mixed_5c", "logits"]


def layout(state: dict) -> str:
    return "\n".join(f"{key}:{list(value.shape)}" for key, value in sorted(state.items()))


def convert(*args):
    return CliRunner().invoke(convert_main, [str(a) for a in args])


def one_error_line(result, *expected: str) -> str:
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for text in expected:
        assert text in lines[0], (text, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def tiny() -> InceptionI3d:
    torch.set_num_threads(2)
    return build_tiny_i3d()


@pytest.fixture(scope="module")
def clip() -> np.ndarray:
    """12 frames of 40x56 seeded noise over a moving gradient (uint8)."""
    rng = np.random.default_rng(3)
    t, y, x = np.meshgrid(np.arange(12), np.arange(40), np.arange(56), indexing="ij")
    base = (x * 4 + t * 9 + y * 2)[..., None] + np.array([0, 60, 120])
    return ((base + rng.integers(0, 40, base.shape)) % 256).astype(np.uint8)


@pytest.fixture(scope="module")
def converted(tiny, tmp_path_factory) -> Path:
    """The tiny I3D's state dict saved as DataParallel would (``module.`` keys), converted by
    ``python -m evaluation.i3d_conversion``."""
    folder = tmp_path_factory.mktemp("i3d")
    source, target = folder / "i3d_pretrained_400.pt", folder / "i3d.safetensors"
    torch.save({f"module.{key}": value for key, value in tiny.state_dict().items()}, source)
    done = subprocess.run([sys.executable, "-m", "evaluation.i3d_conversion", str(source), str(target)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1 and hashlib.sha256(target.read_bytes()).hexdigest() in lines[0], done.stdout
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no temporary file left
    return target


# -- the architecture ---------------------------------------------------------------------------------------
def test_the_state_dict_is_pytorch_i3d_s_layout(tiny):
    state = tiny.state_dict()
    assert len(state) == PYTORCH_I3D_KEYS
    assert sum(p.numel() for p in tiny.parameters()) == PYTORCH_I3D_PARAMETERS
    assert hashlib.sha256(layout(state).encode()).hexdigest() == PYTORCH_I3D_LAYOUT_SHA256
    assert sorted({key.split(".")[0] for key in state}) == sorted(TOP_LEVEL)
    assert [key for key in state if key.endswith("conv3d.bias")] == ["logits.conv3d.bias"]
    assert {key.split(".")[1] for key in state if key.startswith("Mixed_")} == {"b0", "b1a", "b1b", "b2a", "b2b",
                                                                                 "b3b"}
    assert list(state["logits.conv3d.weight"].shape) == [400, 1024, 1, 1, 1]
    norms = [m for m in tiny.modules() if isinstance(m, torch.nn.BatchNorm3d)]
    assert len(norms) == 57 and {(m.eps, m.momentum) for m in norms} == {(BN_EPS, BN_MOMENTUM)} == {(1e-3, 0.01)}


def _tf_same(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow's own statement of SAME: ceil(size / stride) outputs, padding split with the odd one behind."""
    outputs = -(-size // stride)
    total = max((outputs - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def test_same_padding_on_odd_sizes_matches_tensorflow_and_a_manual_unit(tiny):
    for size in range(1, 24):
        for kernel, stride in ((7, 2), (3, 1), (3, 2), (2, 2), (1, 1), (1, 2)):
            assert same_padding(size, kernel, stride) == _tf_same(size, kernel, stride), (size, kernel, stride)
    # Conv3d_1a_7x7 (7x7x7, stride 2) → BN → ReLU on a 9 x 13 x 11 input, by hand in numpy
    unit = tiny.Conv3d_1a_7x7
    x = torch.randn(1, 3, 9, 13, 11, generator=torch.Generator().manual_seed(5))
    padded = np.pad(x[0].numpy().astype(np.float64), [(0, 0)] + [_tf_same(n, 7, 2) for n in (9, 13, 11)])
    assert padded.shape == (3, 9 + 6, 13 + 6, 11 + 6)  # odd sizes, stride 2: pad 7 - 1 = 6 (3 front), ceil(n/2) out
    windows = np.lib.stride_tricks.sliding_window_view(padded, (7, 7, 7), axis=(1, 2, 3))[:, ::2, ::2, ::2]
    conv = np.einsum("ctyxijk,ocijk->otyx", windows, unit.conv3d.weight.detach().double().numpy())
    bn = unit.bn
    scale = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach().double().numpy()[:, None, None, None]
    shift = (bn.bias - bn.running_mean * bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach().double().numpy()
    expected = np.maximum(conv * scale + shift[:, None, None, None], 0)
    with torch.no_grad():
        got = unit(x)[0].double().numpy()
    assert got.shape == (64, 5, 7, 6)
    np.testing.assert_allclose(got, expected, atol=1e-4)
    # the 3x3x3 stride-2 max pool before Mixed_4b, zero-padded the same way
    values = np.abs(np.random.default_rng(1).normal(size=(1, 2, 5, 7, 9))).astype(np.float32)
    padded = np.pad(values[0], [(0, 0)] + [_tf_same(n, 3, 2) for n in (5, 7, 9)])
    windows = np.lib.stride_tricks.sliding_window_view(padded, (3, 3, 3), axis=(1, 2, 3))[:, ::2, ::2, ::2]
    np.testing.assert_array_equal(tiny.MaxPool3d_4a_3x3(torch.from_numpy(values))[0].numpy(),
                                  windows.max(axis=(4, 5, 6)))


def test_preprocessing_scales_the_shorter_side_crops_the_centre_and_loops_short_clips():
    frames = np.random.default_rng(7).integers(0, 256, size=(5, 30, 50, 3), dtype=np.uint8)
    video = preprocess_video(frames)
    assert video.shape == (3, 16, 224, 224) and video.dtype == torch.float32
    # by hand: each channel as a float image, PIL's bilinear (upscaling: half-pixel centres, no antialias) to
    # 224 x ceil(50 * 224 / 30) = 224 x 374, the centre 224 columns from (374 - 224) // 2 = 75, then to [-1, 1]
    expected = np.empty((3, 5, 224, 224), dtype=np.float64)
    for t in range(5):
        for c in range(3):
            image = Image.fromarray(frames[t, :, :, c].astype(np.float32) / 255.0)  # mode F
            resized = np.asarray(image.resize((374, 224), Image.BILINEAR), dtype=np.float64)
            expected[c, t] = resized[:, 75:75 + 224] * 2 - 1
    np.testing.assert_allclose(video.numpy(), expected[:, np.arange(16) % 5], atol=2e-5)
    assert preprocess_video(np.repeat(frames, 4, axis=0)).shape == (3, 20, 224, 224)  # longer clips: every frame
    tall = preprocess_video(frames.transpose(0, 2, 1, 3))  # 50 x 30: width to 224, height 374, rows 75..298
    np.testing.assert_allclose(tall.numpy(), expected[:, np.arange(16) % 5].transpose(0, 1, 3, 2), atol=2e-5)


def test_the_feature_is_the_time_mean_of_the_logits_layer(tiny, clip):
    outputs = []
    hook = tiny.logits.register_forward_hook(lambda module, inputs, output: outputs.append(output.detach()))
    try:  # two lengths (24 frames, 12 looped to 16): two batches, the rows back in the order given
        features = I3DFeatures(tiny, "tiny", torch.device("cpu")).features([np.concatenate([clip, clip]), clip])
    finally:
        hook.remove()
    long, short = outputs
    assert long.shape == (1, 400, 2, 1, 1) and short.shape == (1, 400, 1, 1, 1)  # 24 frames leave 2 time positions
    assert features.shape == (2, 400) and features.dtype == np.float64
    np.testing.assert_allclose(features[0], long[0, :, :, 0, 0].double().mean(1).numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(features[1], short[0, :, 0, 0, 0].double().numpy(), rtol=1e-6, atol=1e-6)
    assert np.abs(features[0] - long[0, :, 0, 0, 0].double().numpy()).max() > 1e-3  # the mean, not one position


# -- the converter and loading ------------------------------------------------------------------------------
def test_the_converted_file_loads_and_gives_the_original_features(tiny, converted, clip):
    from safetensors import safe_open

    with safe_open(str(converted), "pt") as handle:
        assert sorted(handle.keys()) == sorted(tiny.state_dict())  # the module. prefix is gone
    loaded = load_i3d(converted, "cpu")
    assert loaded.name == str(converted)
    for key, value in tiny.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value), key
    np.testing.assert_array_equal(loaded(clip), I3DFeatures(tiny, "tiny", torch.device("cpu"))(clip))


def test_counters_an_old_state_dict_lacks_are_added(tiny, tmp_path):
    state = {key: value for key, value in tiny.state_dict().items() if not key.endswith("num_batches_tracked")}
    torch.save(state, tmp_path / "old.pt")
    result = convert(tmp_path / "old.pt", tmp_path / "old.safetensors")
    assert result.exit_code == 0 and "added 57 num_batches_tracked counters" in result.output, result.output
    assert len(load_i3d(tmp_path / "old.safetensors").model.state_dict()) == PYTORCH_I3D_KEYS


@pytest.mark.parametrize("case", ["object", "not_a_tensor", "renamed_key", "wrong_shape", "torchscript", "missing",
                                  "output_suffix"])
def test_converter_errors_exit_2_naming_the_file(tiny, tmp_path, case):
    source, target = tmp_path / "in.pt", tmp_path / "out.safetensors"
    state = dict(tiny.state_dict())
    expected = [str(source)]
    if case == "object":  # a pickle of an arbitrary object: weights_only refuses it before anything is built
        torch.save({"args": argparse.Namespace(lr=0.1), **state}, source)
        expected.append("weights_only=True refused")
    elif case == "not_a_tensor":
        torch.save({"epoch": 3, **state}, source)
        expected.append("entry 'epoch' holds int, not a tensor")
    elif case == "renamed_key":
        state["Mixed_3b.b0.conv.weight"] = state.pop("Mixed_3b.b0.conv3d.weight")
        torch.save(state, source)
        expected.append("1 key(s) missing, the first 'Mixed_3b.b0.conv3d.weight'")
    elif case == "wrong_shape":
        state["logits.conv3d.bias"] = torch.zeros(101)
        torch.save(state, source)
        expected.append("'logits.conv3d.bias' has shape [101]")
    elif case == "torchscript":
        with warnings.catch_warnings():  # torch.jit.script is deprecated; StyleGAN-V's file is TorchScript all the same
            warnings.simplefilter("ignore", FutureWarning)
            torch.jit.script(torch.nn.Linear(2, 2)).save(str(source))
        expected += ["TorchScript", "not supported", "state dict"]
    elif case == "missing":
        expected.append("no such file")
    else:
        torch.save(state, source)
        target = tmp_path / "out.pt"
        expected = [str(target), ".safetensors"]
    one_error_line(convert(source, target), *expected)
    assert not target.exists() and [p.name for p in tmp_path.iterdir() if p.name != "in.pt"] == []


def test_load_i3d_refuses_pickles_missing_files_and_other_layouts(tmp_path):
    from safetensors.torch import save_file

    with pytest.raises(ModelLoadError, match=PICKLE_REFUSAL) as refused:
        load_i3d(tmp_path / "i3d_pretrained_400.pt")
    assert "i3d_conversion" in str(refused.value)
    with pytest.raises(ModelLoadError, match="no such file") as missing:
        load_i3d(tmp_path / "absent.safetensors")
    assert str(tmp_path / "absent.safetensors") in str(missing.value)
    other = tmp_path / "other.safetensors"
    save_file({"Conv3d_1a_7x7.conv3d.weight": torch.zeros(64, 3, 7, 7, 7), "extra": torch.zeros(1)}, str(other))
    with pytest.raises(ModelLoadError, match="key\\(s\\) missing, the first 'Conv3d_1a_7x7.bn.bias'") as wrong:
        load_i3d(other)
    assert str(other) in str(wrong.value)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not safetensors")
    with pytest.raises(ModelLoadError, match="not a readable safetensors file"):
        load_i3d(garbage)


# -- the choice of extractor --------------------------------------------------------------------------------
def test_the_real_preset_uses_i3d_when_its_weights_are_present(converted, tmp_path, monkeypatch):
    from evaluation.metric_models import I3D_FILE_NAME, METRIC_PRESETS, metric_preset, video_features_key

    videomae = METRIC_PRESETS["real"].video_features
    monkeypatch.delenv("STORYREEL_I3D", raising=False)
    monkeypatch.setenv("STORYREEL_CACHE", str(tmp_path))
    assert metric_preset("real").video_features == videomae  # no weights: VideoMAE stands in
    (tmp_path / I3D_FILE_NAME).write_bytes(converted.read_bytes())
    assert metric_preset("real").video_features == f"i3d:{(tmp_path / I3D_FILE_NAME).resolve()}"
    assert metric_preset("real").action == METRIC_PRESETS["real"].action  # the classifier stays VideoMAE
    assert metric_preset("tiny") == METRIC_PRESETS["tiny"]
    monkeypatch.setenv("STORYREEL_I3D", str(converted))
    assert metric_preset("real").video_features == f"i3d:{converted.resolve()}"
    digest = hashlib.sha256(converted.read_bytes()).hexdigest()
    assert video_features_key(f"i3d:{converted}") == f"i3d:{converted}@sha256:{digest}"
    monkeypatch.setenv("STORYREEL_I3D", str(tmp_path / "absent.safetensors"))
    with pytest.raises(ModelLoadError, match="STORYREEL_I3D=.*absent.safetensors: no such file"):
        metric_preset("real")


def test_file_features_with_i3d_are_400_d_time_mean_logits(converted, real_clips):
    from evaluation.metric_models import MetricModelSet
    from evaluation.story_evaluation import VIDEO_FEATURE_FRAMES, LoadedModels
    from retrieval.clip_reader import probe_video, read_frames_at

    video = sorted(real_clips.glob("*.mp4"))[0]
    choice = MetricModelSet("tiny", clip="tiny", dino="tiny", action="tiny", video_features=f"i3d:{converted}")
    feature = LoadedModels(choice, torch.device("cpu")).file_feature(video)
    duration = probe_video(video).duration_s
    frames = read_frames_at(video, list((np.arange(VIDEO_FEATURE_FRAMES) + 0.5) * duration / VIDEO_FEATURE_FRAMES))
    assert feature.shape == (400,)
    np.testing.assert_allclose(feature, load_i3d("tiny")(frames), rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def rendered_two(tmp_path_factory, tiny_index):
    """The fable's first two shots, rendered with the tiny models (64x64, 8 frames)."""
    from test_render_story import cheap_storyboard
    from test_render_story import run as render

    folder = tmp_path_factory.mktemp("i3d_story")

    def first_two(data):
        data["shots"] = data["shots"][:2]
    out = folder / "out"
    result = render(cheap_storyboard(folder, first_two), "--index", tiny_index, "--out", out, "--models", "tiny")
    assert result.exit_code == 0, result.output
    return out


def test_evaluate_story_uses_the_chosen_i3d_for_fvd(rendered_two, converted):
    from evaluation.cli import main
    from evaluation.story_output import RenderedStory

    result = CliRunner().invoke(main, [str(rendered_two), "--models", "tiny", "--video-features", f"i3d:{converted}",
                                       "--quiet"], catch_exceptions=False)
    assert result.exit_code == 0 and "2 of 2 shots computed" in result.output, result.output
    metrics = json.loads((rendered_two / "eval" / "metrics.json").read_text())
    assert metrics["distribution"]["video_features"] == metrics["models"]["video_features"] == f"i3d:{converted}"
    assert metrics["metrics"]["fvd"]["model"] == f"i3d:{converted}" and metrics["distribution"]["fvd"] is not None
    shots = RenderedStory.open(rendered_two).shots
    for shot in shots:
        with np.load(rendered_two / "eval" / "cache" / f"{shot.safe_id}.npz") as arrays:
            assert arrays["video_feature"].shape == arrays["footage_feature"].shape == (400,)
            if shot is shots[0]:  # its 8 rendered frames, looped to 16, through the converted weights
                np.testing.assert_allclose(arrays["video_feature"], load_i3d(converted)(shot.frames()), rtol=1e-5,
                                           atol=1e-5)


def test_the_shot_cache_key_follows_the_extractor_and_its_weights(rendered_two, converted, tiny, tmp_path):
    from evaluation.metric_models import METRIC_PRESETS
    from evaluation.story_evaluation import StoryEvaluator
    from evaluation.story_output import RenderedStory

    shot = RenderedStory.open(rendered_two).shots[0]
    weights = tmp_path / "i3d.safetensors"
    weights.write_bytes(converted.read_bytes())

    def key(video_features: str) -> str:
        choice = METRIC_PRESETS["tiny"].with_overrides(video_features=video_features)
        return StoryEvaluator(choice, device="cpu").shot_key(shot, [])

    first = key(f"i3d:{weights}")
    assert key(f"i3d:{weights}") == first  # the same weights: the cache is used
    assert len({first, key("i3d-tiny"), key("tiny"), key(f"i3d:{converted}")}) == 4
    state = tiny.state_dict()
    state["logits.conv3d.bias"] = state["logits.conv3d.bias"] + 1.0
    torch.save(state, tmp_path / "other.pt")
    assert convert(tmp_path / "other.pt", weights).exit_code == 0  # other weights at the same path
    assert key(f"i3d:{weights}") != first


def test_evaluate_story_refuses_a_missing_or_pickle_i3d_before_any_model(rendered_two, tmp_path, monkeypatch):
    import evaluation.story_evaluation as story_evaluation
    from evaluation.cli import main

    monkeypatch.setattr(story_evaluation.StoryEvaluator, "evaluate", lambda *a: pytest.fail("evaluated"))
    for spec, expected in ((f"i3d:{tmp_path / 'absent.safetensors'}", "no such file"),
                           (f"i3d:{tmp_path / 'i3d_pretrained_400.pt'}", PICKLE_REFUSAL)):
        one_error_line(CliRunner().invoke(main, [str(rendered_two), "--video-features", spec]), spec, expected)
    monkeypatch.setenv("STORYREEL_I3D", str(tmp_path / "absent.safetensors"))
    one_error_line(CliRunner().invoke(main, [str(rendered_two), "--models", "real"]), "STORYREEL_I3D=",
                   "no such file")
