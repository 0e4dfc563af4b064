"""Segmentation: windows follow the clip's real duration and never span a scene cut."""

from __future__ import annotations

import math

import numpy as np
import pytest

from index_builder.segmenter import SceneAwareSegmenter, SegmentSettings
from retrieval.clip_reader import iter_frames
from retrieval.frame_preprocessing import square_crop


def _scene(color, t, size=48):
    """A textured frame of one scene with a square that moves with time t."""
    rng = np.random.default_rng(int(sum(color)))
    frame = np.clip(np.array(color)[None, None, :] + rng.integers(-20, 20, (size, size, 3)), 0, 255).astype(np.uint8)
    x = int(4 + 10 * (1 + math.sin(t * 3)))
    frame[20:30, x : x + 10] = 255 - np.array(color)
    return frame


def _pairs(pairs):
    return [(pytest.approx(a, abs=1e-6), pytest.approx(b, abs=1e-6)) for a, b in pairs]


def _run(settings, frames):
    segmenter = SceneAwareSegmenter(settings, lambda f: square_crop(f, 16))
    out = []
    for t, frame in frames:
        out += segmenter.push(t, frame)
    last = frames[-1][0]
    out += segmenter.finish(last + 1 / 24)
    return segmenter, out


def test_windows_cover_a_single_scene_clip():
    frames = [(i / 24, _scene((40, 90, 160), i / 24)) for i in range(24 * 5)]  # 5.0 s
    segmenter, segments = _run(SegmentSettings(window_s=2.0, stride_s=1.0, frames_per_segment=4), frames)
    assert segmenter.cuts == []
    assert [(s.start, s.end) for s in segments] == _pairs([(0, 2), (1, 3), (2, 4), (3, 5)])
    assert all(s.frames.shape == (4, 16, 16, 3) for s in segments)
    assert all(s.motion > 0 for s in segments)


def test_no_window_spans_a_cut():
    frames = [(i / 24, _scene((40, 90, 160), i / 24)) for i in range(24 * 3 + 12)]  # scene A: 0-3.5 s
    frames += [(i / 24, _scene((200, 60, 30), i / 24)) for i in range(24 * 3 + 12, 24 * 7)]  # scene B: 3.5-7 s
    segmenter, segments = _run(SegmentSettings(window_s=2.0, stride_s=1.0, frames_per_segment=4), frames)
    assert segmenter.cuts == pytest.approx([3.5])
    for s in segments:
        assert s.end <= 3.5 + 1e-6 or s.start >= 3.5 - 1e-6, f"segment {s.start}-{s.end} spans the cut"
    assert [(s.start, s.end) for s in segments] == _pairs([(0, 2), (1, 3), (3.5, 5.5), (4.5, 6.5)])


def test_a_clip_shorter_than_a_window_gives_one_segment():
    frames = [(i / 24, _scene((40, 90, 160), i / 24)) for i in range(30)]  # 1.25 s
    _, segments = _run(SegmentSettings(window_s=2.0, stride_s=1.0, frames_per_segment=8), frames)
    assert len(segments) == 1
    assert segments[0].start == 0 and segments[0].end == pytest.approx(30 / 24)
    assert segments[0].frames.shape[0] == 8


def test_short_scenes_between_cuts_are_dropped():
    frames = [(i / 24, _scene((40, 90, 160), i / 24)) for i in range(48)]  # 2 s
    frames += [(i / 24, _scene((200, 60, 30), i / 24)) for i in range(48, 54)]  # 0.25 s flash
    frames += [(i / 24, _scene((30, 200, 60), i / 24)) for i in range(54, 102)]  # 2 s
    segmenter, segments = _run(SegmentSettings(window_s=2.0, stride_s=1.0, min_scene_s=0.5), frames)
    assert len(segmenter.cuts) == 2
    assert [(s.start, s.end) for s in segments] == _pairs([(0, 2), (54 / 24, 54 / 24 + 2)])


@pytest.mark.parametrize("name,expected_cuts", [
    ("R6llTwEh07w.mp4", []),
    ("v_SoccerJuggling_g23_c01.avi", []),
    ("SOX5yA1l24A.mp4", [4.60, 7.31, 9.74]),  # hard cuts, checked by eye
    ("TrumanShow_wave_f_nm_np1_fr_med_26.avi", [0.63]),
])
def test_segments_of_real_clips_follow_their_duration_and_cuts(real_clips, name, expected_cuts):
    settings = SegmentSettings()
    info, stream = iter_frames(real_clips / name)
    segmenter = SceneAwareSegmenter(settings, lambda f: square_crop(f, 16))
    segments, last = [], 0.0
    for t, frame in stream:
        segments += segmenter.push(t, frame)
        last = t
    segments += segmenter.finish(last + 1 / info.fps)
    assert segmenter.cuts == pytest.approx(expected_cuts, abs=0.02)
    bounds = [0.0, *segmenter.cuts, info.duration_s]
    expected = 0
    for a, b in zip(bounds, bounds[1:]):
        length = b - a
        if length >= settings.window_s - 1e-4:
            expected += math.floor((length - settings.window_s) / settings.stride_s + 1e-4) + 1
        elif length >= settings.min_scene_s:
            expected += 1
    assert len(segments) == expected
    assert segments[-1].end <= info.duration_s + 1e-3
    for s in segments:
        assert not any(s.start < c < s.end - 1e-4 for c in segmenter.cuts)
