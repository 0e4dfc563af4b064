"""Normalisation, smoothing and flicker, through extract_depth with a deterministic stand-in depth model.

The stand-in returns a known raw inverse depth (near = large): a floor that comes nearer towards the
bottom of the picture, and a square in the middle that flies towards the camera (it grows and its
inverse depth rises from 2 to 6, past everything else).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from structure.conditioning import conditioning_frames, controlnet_condition
from structure.depth_sequence import (
    DepthSequence,
    flicker,
    load_npz,
    normalize_per_frame,
    normalize_sequence,
    smooth_temporally,
)
from structure.extract import DepthModel, extract_depth
from structure.preview import INFERNO, colorize, depth_to_indices, save_depth_gif, save_strip

FRAMES, HEIGHT, WIDTH = 16, 64, 96


def approaching_square(frames: int = FRAMES) -> np.ndarray:
    floor = np.repeat(np.linspace(0.5, 1.5, HEIGHT, dtype=np.float32)[:, None], WIDTH, axis=1)
    raw = np.repeat(floor[None], frames, axis=0).copy()
    for t in range(frames):
        progress = t / max(1, frames - 1)
        half = int(round(4 + 12 * progress))
        raw[t, HEIGHT // 2 - half : HEIGHT // 2 + half, WIDTH // 2 - half : WIDTH // 2 + half] = 2.0 + 4.0 * progress
    return raw


class KnownDepth:
    """A stand-in depth model that returns ``raw`` for the frames it is given."""

    name = "known-depth"
    fingerprint = "known-depth-1"

    def __init__(self, raw: np.ndarray):
        self.raw = raw
        self.calls = 0

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        self.calls += 1
        assert frames.shape == (len(self.raw), *self.raw.shape[1:], 3) and frames.dtype == np.uint8
        return self.raw.copy()


def _blank_images(count: int = FRAMES) -> list[np.ndarray]:
    return [np.zeros((HEIGHT, WIDTH, 3), np.uint8)] * count


def _depth(raw: np.ndarray, **kwargs) -> DepthSequence:
    return extract_depth(_blank_images(len(raw)), size=(WIDTH, HEIGHT), estimator=KnownDepth(raw), **kwargs)


def test_the_stand_in_is_a_depth_model():
    assert isinstance(KnownDepth(approaching_square()), DepthModel)


def test_near_is_bright_and_order_is_kept_across_the_whole_sequence():
    raw = approaching_square()
    depth = _depth(raw).depth
    assert depth.shape == raw.shape and depth.dtype == np.float32
    assert depth.min() == 0.0 and depth.max() == 1.0
    middle = (slice(HEIGHT // 2 - 2, HEIGHT // 2 + 2), slice(WIDTH // 2 - 2, WIDTH // 2 + 2))
    for frame in depth:
        assert frame[middle].mean() > frame[-1].mean() > frame[0].mean()  # square > near floor > far floor
    # one monotonic map for all frames: sorting every pixel of the sequence by raw depth sorts it by depth
    order = np.argsort(raw.ravel(), kind="stable")
    assert np.all(np.diff(depth.ravel()[order]) >= 0)
    # per-frame min-max breaks that across frames (the same raw floor value changes brightness)
    per_frame = normalize_per_frame(raw)
    assert not np.all(np.diff(per_frame.ravel()[order]) >= -1e-6)


def test_one_range_for_the_sequence():
    raw = approaching_square()
    depth = _depth(raw).depth
    never_covered = np.all(raw == raw[0], axis=0)  # floor pixels the square never reaches
    assert never_covered.mean() > 0.5
    assert np.array_equal(depth[:, never_covered], np.repeat(depth[:1, never_covered], FRAMES, axis=0))
    per_frame = normalize_per_frame(raw)  # re-stretched each frame: the floor darkens as the square nears
    assert per_frame[-1, never_covered].mean() < 0.5 * per_frame[0, never_covered].mean()


def test_sequence_normalisation_flickers_less_than_per_frame():
    raw = approaching_square()
    sequence, per_frame = flicker(_depth(raw).depth), flicker(normalize_per_frame(raw))
    assert sequence < 0.5 * per_frame, (sequence, per_frame)


def test_percentiles_ignore_a_few_spiky_pixels():
    raw = approaching_square()
    spiky = raw.copy()
    spiky[5, 3, 3] = 1000.0  # one absurd pixel, as monocular depth models produce at edges
    clean, noisy = normalize_sequence(raw), normalize_sequence(spiky)
    others = np.ones(raw.shape, bool)
    others[5, 3, 3] = False
    assert np.abs(noisy[others] - clean[others]).max() < 0.02
    assert normalize_per_frame(spiky)[5][others[5]].max() < 0.01  # min-max: the whole frame goes black


def test_flat_and_single_frame_inputs():
    assert np.array_equal(normalize_sequence(np.full((3, 4, 4), 7.0, np.float32)), np.zeros((3, 4, 4), np.float32))
    assert np.array_equal(normalize_per_frame(np.full((2, 4, 4), 7.0, np.float32)), np.zeros((2, 4, 4), np.float32))
    one = _depth(approaching_square(1), smoothing=2.0)
    assert one.num_frames == 1 and one.flicker() == 0.0
    with pytest.raises(ValueError, match="NaN"):
        normalize_sequence(np.full((2, 4, 4), np.nan, np.float32))


def _jittery(raw: np.ndarray) -> np.ndarray:
    """Raw depth whose scale jumps by +-10% every other frame, as a flickering model's would."""
    return raw * (1.0 + 0.1 * (-1.0) ** np.arange(len(raw), dtype=np.float32))[:, None, None]


def test_smoothing_reduces_flicker():
    raw = _jittery(approaching_square())
    plain, smoothed = _depth(raw), _depth(raw, smoothing=1.5)
    assert smoothed.flicker() < 0.4 * plain.flicker(), (smoothed.flicker(), plain.flicker())
    assert smoothed.depth.min() >= 0.0 and smoothed.depth.max() <= 1.0
    assert smoothed.settings["smoothing"] == 1.5 and plain.settings["smoothing"] == 0.0
    assert np.allclose(smoothed.depth, smooth_temporally(plain.depth, 1.5), atol=1e-6)


def test_smoothing_does_not_shift_the_sequence_in_time():
    # an event: the square is nearest in frame 7 only; after smoothing it still peaks in frame 7,
    # and frames 6 and 8 get the same share of it (a causal filter would lag and lean forward)
    pulse = np.zeros((FRAMES, 8, 8), np.float32)
    pulse[7, 2:6, 2:6] = 1.0
    smoothed = smooth_temporally(pulse, 1.5)
    assert np.all(smoothed[:, 3, 3].argmax() == 7)
    assert smoothed[6, 3, 3] == pytest.approx(smoothed[8, 3, 3], abs=1e-7)
    times = np.arange(FRAMES)
    assert (smoothed[:, 3, 3] * times).sum() / smoothed[:, 3, 3].sum() == pytest.approx(7.0, abs=1e-5)
    # a steady approach (linear in time) passes unchanged away from the ends
    ramp = np.repeat(np.linspace(0, 1, FRAMES, dtype=np.float32)[:, None, None], 4, axis=1).repeat(4, axis=2)
    smoothed = smooth_temporally(ramp, 1.5)
    assert np.allclose(smoothed[5:-5], ramp[5:-5], atol=1e-6)
    # a constant sequence is unchanged, and strength 0 is the identity
    assert np.allclose(smooth_temporally(np.full((5, 2, 2), 0.3, np.float32), 2.0), 0.3)
    assert np.array_equal(smooth_temporally(ramp, 0.0), ramp)


def test_npz_round_trip_and_corrupt_files(tmp_path):
    sequence = _depth(approaching_square(), fps=8)
    path = sequence.save_npz(tmp_path / "depth.npz")
    loaded = load_npz(path)
    assert np.array_equal(loaded.depth, sequence.depth) and loaded.fps == 8.0
    assert loaded.source == sequence.source and loaded.settings == sequence.settings
    assert loaded.settings["raw_low"] < loaded.settings["raw_high"]
    assert [p.name for p in tmp_path.iterdir()] == ["depth.npz"]  # no temporary files left
    bad = tmp_path / "bad.npz"
    bad.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ValueError, match="bad.npz"):
        load_npz(bad)


def test_controlnet_condition_layout_and_values():
    sequence = _depth(approaching_square())
    condition = controlnet_condition(sequence)
    assert condition.shape == (FRAMES, 3, HEIGHT, WIDTH) and condition.dtype == torch.float32
    for channel in range(3):
        assert torch.equal(condition[:, channel], torch.from_numpy(sequence.depth))
    assert controlnet_condition(sequence.depth, dtype=torch.float16).dtype == torch.float16
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        controlnet_condition(approaching_square())  # raw depth, not normalised


def test_conditioning_frames_survive_the_pipelines_control_processor():
    """AnimateDiffControlNetPipeline prepares conditioning_frames with this processor; values must not move."""
    from diffusers.video_processor import VideoProcessor

    sequence = _depth(approaching_square())
    processor = VideoProcessor(vae_scale_factor=8, do_convert_rgb=True, do_normalize=False)
    frames = conditioning_frames(sequence)
    assert len(frames) == FRAMES and frames[0].shape == (3, HEIGHT, WIDTH)
    video = processor.preprocess_video(frames, height=HEIGHT, width=WIDTH)  # 1 x 3 x T x H x W
    assert torch.allclose(video[0].permute(1, 0, 2, 3), controlnet_condition(sequence), atol=1e-6)


def test_preview_gif_and_strip(tmp_path):
    from PIL import Image

    sequence = _depth(approaching_square(), fps=8)
    gif = save_depth_gif(sequence, tmp_path / "depth.gif")
    with Image.open(gif) as image:
        assert image.n_frames == FRAMES and image.size == (WIDTH, HEIGHT)
        for index in (0, FRAMES // 2, FRAMES - 1):  # every frame shows each depth in its exact colour
            image.seek(index)
            assert np.array_equal(np.asarray(image.convert("RGB")), colorize(sequence.depth[index]))
    colours = colorize(sequence.depth)
    assert np.array_equal(colours[0, 0, 0], INFERNO[depth_to_indices(sequence.depth[0, 0, 0])])
    assert colours.shape == (*sequence.depth.shape, 3)
    assert colours[-1, HEIGHT // 2, WIDTH // 2].sum() > colours[-1, 0, 0].sum()  # near is brighter
    frames = np.zeros((FRAMES, HEIGHT, WIDTH, 3), np.uint8)
    strip = save_strip(frames, sequence, tmp_path / "strip.png", max_columns=8, cell_height=32, gap=4)
    with Image.open(strip) as image:
        assert image.size == (8 * (48 + 4) - 4, 2 * 32 + 4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["depth.gif", "strip.png"]
