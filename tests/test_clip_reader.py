"""The clip reader on real clips: decord and PyAV agree, traps in real files are handled."""

from __future__ import annotations

import numpy as np
import pytest

from retrieval.clip_reader import VideoDecodeError, iter_frames, probe_video, read_segment_frames

# (file, fps, duration from the shared README, frames PyAV decodes)
REAL = [
    ("R6llTwEh07w.mp4", 30.0, 10.10, 303),
    ("SOX5yA1l24A.mp4", 29.97, 11.08, 332),
    ("RATRACE_wave_f_nm_np1_fr_goo_37.avi", 30.0, 2.43, 72),
    ("hmdb51_Turnk_r_Pippi_Michel_cartwheel_f_cm_np2_le_med_6.avi", 30.0, 2.80, 83),
    ("v_SoccerJuggling_g23_c01.avi", 29.97, 8.01, 240),
]


@pytest.mark.parametrize("name,fps,duration,frames", REAL)
def test_probe_matches_the_real_clip(real_clips, name, fps, duration, frames):
    info = probe_video(real_clips / name)
    assert info.fps == pytest.approx(fps, abs=0.01)
    assert info.duration_s == pytest.approx(duration, abs=0.05)
    pyav_info, stream = iter_frames(real_clips / name, backend="pyav")
    times = [t for t, _ in stream]
    assert len(times) == frames
    assert times[0] == pytest.approx(0.0, abs=1e-6)
    assert times[-1] == pytest.approx((frames - 1) / info.fps, abs=0.002)
    assert np.all(np.diff(times) > 0), "frame times must increase"


def test_hmdb_file_with_non_utf8_metadata_opens_with_pyav(real_clips):
    # av.open() without metadata_errors raises UnicodeDecodeError on this real file
    path = real_clips / "hmdb51_Turnk_r_Pippi_Michel_cartwheel_f_cm_np2_le_med_6.avi"
    info, stream = iter_frames(path, backend="pyav")
    first = next(iter(stream))[1]
    assert first.shape == (240, 320, 3) and first.dtype == np.uint8
    assert info.width == 320 and info.height == 240


# The two FFmpeg builds (decord's and PyAV's) decode this xvid file slightly differently at a few
# frames before keyframes (mean difference < 1 grey level); the h264 mp4 decodes bit-identically.
@pytest.mark.parametrize("name,tolerance", [("R6llTwEh07w.mp4", 0.0), ("v_SoccerJuggling_g24_c01.avi", 2.0),
                                            ("RATRACE_wave_f_nm_np1_fr_goo_37.avi", 0.0)])
def test_decord_and_pyav_give_the_same_frames_at_the_same_times(real_clips, name, tolerance):
    a = read_segment_frames(real_clips / name, 1.0, 2.0, num_frames=6, backend="decord")
    b = read_segment_frames(real_clips / name, 1.0, 2.0, num_frames=6, backend="pyav")
    assert a.shape == b.shape == (6, *a.shape[1:])
    differences = np.abs(a.astype(np.int16) - b).mean(axis=(1, 2, 3))
    assert differences.max() <= tolerance


def test_decord_random_access_equals_its_sequential_decode(real_clips):
    path = real_clips / "v_SoccerJuggling_g24_c01.avi"
    _, stream = iter_frames(path, backend="decord")
    sequential = [frame for _, frame in stream]
    sampled = read_segment_frames(path, 1.0, 3.0, num_frames=6, backend="decord")
    picks = [round((1.0 + (i + 0.5) / 3) * 29.97 - 0.5) for i in range(6)]  # last frame at or before each time
    assert all(np.array_equal(f, sequential[i]) for f, i in zip(sampled, picks))


def test_frames_at_fps_and_size(real_clips):
    frames = read_segment_frames(real_clips / "R6llTwEh07w.mp4", 2.0, 4.0, fps=8, size=(64, 48))
    assert frames.shape == (16, 48, 64, 3)
    # consecutive frames of real footage differ, but not completely
    diffs = np.abs(np.diff(frames.astype(np.int16), axis=0)).mean(axis=(1, 2, 3))
    assert np.all(diffs > 0) and np.all(diffs < 60)


def test_corrupted_video_falls_back_to_pyav_and_names_the_file(bad_videos):
    path = bad_videos / "decord_corrupted.mp4"
    info, stream = iter_frames(path)  # decord cannot decode it; PyAV takes over
    decoded = []
    with pytest.raises(VideoDecodeError) as err:
        for t, _ in stream:
            decoded.append(t)
    assert len(decoded) == 28  # the shared README: decoding fails after 28 of 50 frames
    assert str(path) in str(err.value)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(start=3.0, end=2.0, num_frames=4), "must be after start"),
        (dict(start=-1.0, end=2.0, num_frames=4), "must not be negative"),
        (dict(start=0.0, end=2.0, num_frames=0), "num_frames"),
        (dict(start=0.0, end=2.0), "exactly one of"),
    ],
)
def test_bad_arguments_are_named(real_clips, kwargs, message):
    with pytest.raises(ValueError, match=message):
        read_segment_frames(real_clips / "R6llTwEh07w.mp4", **kwargs)


def test_unreadable_inputs_raise_decode_errors_naming_the_file(tmp_path):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 50)
    folder = tmp_path / "folder.mp4"
    folder.mkdir()
    cases = [(empty, "empty"), (text, "cannot open"), (folder, "folder"), (tmp_path / "gone.mp4", "no such")]
    for path, reason in cases:
        with pytest.raises(VideoDecodeError, match=reason) as err:
            probe_video(path)
        assert err.value.path == str(path)
