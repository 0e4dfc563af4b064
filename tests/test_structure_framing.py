"""The render framing: one centred cover crop for frames and depth maps alike."""

from __future__ import annotations

import numpy as np
import pytest

from retrieval.clip_reader import read_frames_at
from structure.framing import CropBox, cover_box, frame_image, frame_images
from structure.validation import InvalidArgumentError, check_size, parse_size


@pytest.mark.parametrize(
    "source, target, box",
    [
        ((320, 240), (512, 288), CropBox(0, 30, 320, 210)),  # wider target: full width, middle rows
        ((340, 256), (512, 512), CropBox(42, 0, 298, 256)),  # square target: middle columns
        ((320, 240), (256, 384), CropBox(80, 0, 240, 240)),  # portrait target from a landscape clip
        ((640, 480), (64, 48), CropBox(0, 0, 640, 480)),  # same aspect: everything, scaled down
    ],
)
def test_cover_box_is_the_largest_centred_box_of_the_target_aspect(source, target, box):
    found = cover_box(source, target)
    assert found.as_tuple() == pytest.approx(box.as_tuple())
    assert found.width / found.height == pytest.approx(target[0] / target[1])
    assert found.left == pytest.approx(source[0] - found.right)  # centred
    assert found.top == pytest.approx(source[1] - found.bottom)


def _marked_frame(width: int, height: int) -> np.ndarray:
    """Grey frame with a white 8x8 block in the middle and black 4x4 blocks at the left and right edges."""
    frame = np.full((height, width, 3), 128, np.uint8)
    cy, cx = height // 2, width // 2
    frame[cy - 4 : cy + 4, cx - 4 : cx + 4] = 255
    frame[cy - 2 : cy + 2, :4] = 0
    frame[cy - 2 : cy + 2, -4:] = 0
    return frame


def test_frame_image_crops_the_sides_and_keeps_the_centre():
    framed = frame_image(_marked_frame(320, 160), (128, 128))  # keeps the middle 160x160
    assert framed.shape == (128, 128, 3) and framed.dtype == np.uint8
    assert framed[64, 64].min() > 240  # the centre block stays in the centre
    assert framed[:, :6].min() > 100 and framed[:, -6:].min() > 100  # the edge blocks were cropped away
    stretched = frame_image(_marked_frame(160, 160), (128, 128))  # same aspect: nothing cropped
    assert stretched[64, 1].max() < 60 and stretched[64, -2].max() < 60


def test_frames_and_depth_maps_get_the_same_box():
    """A float map that equals a frame's brightness stays equal to it after framing."""
    rng = np.random.default_rng(0)
    smooth = np.kron(rng.integers(0, 255, (24, 34)), np.ones((10, 10)))  # 10-pixel blocks, 340x240
    frame = np.repeat(smooth[:, :, None], 3, axis=2).astype(np.uint8)
    brightness = smooth.astype(np.float32) / 255.0
    for size in [(512, 512), (512, 288), (256, 384), (96, 64)]:
        framed_frame = frame_image(frame, size)[..., 0].astype(np.float32) / 255.0
        framed_map = frame_image(brightness, size)
        assert framed_map.shape == (size[1], size[0]) and framed_map.dtype == np.float32
        assert np.abs(framed_frame - framed_map).mean() < 0.02, size
        # a box off by two pixels would not line up: shifted, the match is lost
        assert np.abs(framed_frame - np.roll(framed_map, 2, axis=1)).mean() > 0.035, size


def test_float_maps_stay_within_their_range():
    depth = np.random.default_rng(1).random((97, 131), dtype=np.float32)
    framed = frame_image(depth, (64, 64))
    assert framed.min() >= 0.0 and framed.max() <= 1.0


def test_frames_and_depth_of_a_real_clip_line_up(real_clips):
    """On real footage of several aspect ratios, a per-pixel map framed alone matches the framed frame."""
    for name in ["R6llTwEh07w.mp4", "RATRACE_wave_f_nm_np1_fr_goo_37.avi", "v_SoccerJuggling_g23_c01.avi"]:
        frame = read_frames_at(real_clips / name, [1.0])[0]
        luminance = frame.astype(np.float32).mean(axis=2) / 255.0
        for size in [(512, 288), (256, 256), (192, 320)]:
            from_frame = frame_image(frame, size).astype(np.float32).mean(axis=2) / 255.0
            from_map = frame_image(luminance, size)
            assert np.abs(from_frame - from_map).mean() < 0.01, (name, size)
            assert np.corrcoef(from_frame.ravel(), from_map.ravel())[0, 1] > 0.99, (name, size)


def test_frame_images_and_bad_inputs():
    frames = np.zeros((3, 50, 70, 3), np.uint8)
    assert frame_images(frames, (32, 16)).shape == (3, 16, 32, 3)
    with pytest.raises(ValueError, match="H x W x 3 uint8"):
        frame_image(np.zeros((10, 10, 4), np.uint8), (8, 8))
    with pytest.raises(ValueError, match="no images"):
        frame_images([], (8, 8))


@pytest.mark.parametrize("size", [(500, 512), (512, 300), (0, 512), (-8, 8)])
def test_sizes_must_be_positive_multiples_of_8(size):
    with pytest.raises(InvalidArgumentError) as caught:
        check_size(size)
    assert caught.value.argument == "size" and str(caught.value).startswith("size:")


def test_parse_size():
    assert parse_size("512x288") == (512, 288)
    assert parse_size("256") == (256, 256)
    for bad in ["512x", "big", "512x287"]:
        with pytest.raises(InvalidArgumentError, match="size"):
            parse_size(bad)
