"""Depth of real clips with the tiny DPT (the real transformers code path), model loading, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from retrieval.clip_reader import VideoDecodeError, probe_video, read_frames_at
from retrieval.library import ClipSegment
from structure.depth_models import (
    TINY_PROCESSOR,
    DepthModelLoadError,
    build_tiny_model,
    load_depth_model,
)
from structure.extract import extract_depth, extract_raw_depth, read_source_frames
from structure.framing import frame_image
from structure.validation import InvalidArgumentError

SOCCER = "v_SoccerJuggling_g23_c01.avi"


@pytest.fixture(scope="module")
def tiny():
    return load_depth_model("tiny", device="cpu", batch_size=8, progress=False)


def _luminance_depth(frames: np.ndarray) -> np.ndarray:
    """A content-based stand-in: "depth" = brightness of each pixel of the frames it is given."""
    return frames.astype(np.float32).mean(axis=3) / 255.0


_luminance_depth.fingerprint = "luminance-1"


@pytest.mark.parametrize(
    "name, start, end, frames, size",
    [
        ("R6llTwEh07w.mp4", 2.0, 4.0, 16, (512, 512)),  # 340x256 mp4, square render
        ("RATRACE_wave_f_nm_np1_fr_goo_37.avi", 0.5, 2.0, 16, (512, 288)),  # 560x240 DivX, wide render
        (SOCCER, 1.0, 4.0, 12, (256, 384)),  # 320x240 xvid, portrait render
        ("hmdb51_Turnk_r_Pippi_Michel_cartwheel_f_cm_np2_le_med_6.avi", 0.0, 2.8, 8, (320, 240)),  # odd metadata
    ],
)
def test_real_clips_give_normalised_depth_at_the_render_size(real_clips, tiny, name, start, end, frames, size):
    sequence = extract_depth((real_clips / name, start, end), frames=frames, size=size, estimator=tiny, fps=8)
    width, height = size
    assert sequence.depth.shape == (frames, height, width) and sequence.depth.dtype == np.float32
    assert sequence.size == size and sequence.num_frames == frames and sequence.fps == 8.0
    assert sequence.depth.min() == 0.0 and sequence.depth.max() == 1.0  # the robust range is used in full
    assert np.all(np.isfinite(sequence.depth))
    times = sequence.source["sample_times"]
    assert len(times) == frames and start < times[0] < times[-1] < end  # resampled to the frame count
    assert np.allclose(np.diff(times), (end - start) / frames)
    assert sequence.source["model"]["fingerprint"] == tiny.fingerprint


def test_a_clip_segment_from_retrieval_is_a_source(real_clips, tiny):
    segment = ClipSegment(segment_id=3, score=0.5, clip_score=0.5, path=str(real_clips / SOCCER), start=1.0, end=3.0,
                          fps=29.97, width=320, height=240, label="SoccerJuggling", caption=None, motion_score=0.1)
    from_segment = extract_depth(segment, frames=16, size=(256, 256), estimator=tiny)
    from_tuple = extract_depth((segment.path, 1.0, 3.0), frames=16, size=(256, 256), estimator=tiny)
    assert np.array_equal(from_segment.depth, from_tuple.depth)
    assert from_segment.source["path"] == str((real_clips / SOCCER).resolve())


def test_depth_is_estimated_on_the_frames_the_render_sees(real_clips):
    """With brightness as "depth", the raw depth equals the brightness of the framed frames, pixel for pixel."""
    source = (real_clips / "RATRACE_wave_f_nm_np1_fr_goo_37.avi", 0.5, 1.5)
    raw = extract_raw_depth(source, frames=4, size=(256, 144), estimator=_luminance_depth).values
    framed = read_source_frames(source, frames=4, size=(256, 144))
    assert np.allclose(raw, _luminance_depth(framed), atol=1e-6)
    decoded = read_frames_at(source[0], [0.625, 0.875, 1.125, 1.375])  # the slice midpoints of [0.5, 1.5)
    assert np.array_equal(framed, np.stack([frame_image(frame, (256, 144)) for frame in decoded]))


def test_reference_images_make_a_pseudo_video(shared_data, tiny):
    from PIL import Image

    images = [Image.open(shared_data / "reference_images" / name) for name in ("astronaut.png", "chelsea.png")]
    sequence = extract_depth(images, size=(128, 192), estimator=tiny)
    assert sequence.depth.shape == (2, 192, 128) and sequence.source["kind"] == "images"
    with pytest.raises(InvalidArgumentError) as caught:
        extract_depth(images, frames=16, size=(128, 192), estimator=tiny)
    assert caught.value.argument == "frames"


def test_tiny_dpt_runs_the_transformers_code_path(real_clips, tiny):
    """Same numbers as transformers' own processor → DPTForDepthEstimation → post-processing, batch by batch."""
    from transformers import DPTForDepthEstimation, DPTImageProcessor

    frames = np.stack([frame_image(f, (96, 64)) for f in read_frames_at(real_clips / SOCCER, [1, 2, 3, 4, 5])])
    ours = tiny(frames)  # batch_size 8: one batch of 5
    model, _ = build_tiny_model()
    assert isinstance(model, DPTForDepthEstimation)
    processor = DPTImageProcessor(**TINY_PROCESSOR)
    inputs = processor(images=list(frames), return_tensors="pt")
    assert inputs["pixel_values"].shape == (5, 3, 64, 64)
    with torch.inference_mode():
        outputs = model.eval()(**inputs)
    assert outputs.predicted_depth.shape == (5, 128, 128)  # the DPT head upsamples to twice the input
    reference = processor.post_process_depth_estimation(outputs, target_sizes=[(64, 96)] * 5)
    reference = np.stack([r["predicted_depth"].numpy() for r in reference])
    assert ours.shape == (5, 64, 96) and ours.dtype == np.float32
    assert np.allclose(ours, reference, rtol=1e-4, atol=1e-6)
    # batching does not change the numbers; different frames give different depth
    assert np.allclose(load_depth_model("tiny", device="cpu", batch_size=2, progress=False)(frames), ours,
                       rtol=1e-4, atol=1e-6)
    assert np.abs(ours[0] - ours[4]).mean() > 0.01 * np.abs(ours).mean()


def test_tiny_preset_is_deterministic_and_loads_from_a_safetensors_folder(tmp_path, tiny):
    again = load_depth_model("tiny", device="cpu", progress=False)
    assert again.fingerprint == tiny.fingerprint
    model, processor = build_tiny_model()
    model.save_pretrained(tmp_path / "tiny-dpt")  # safetensors, as a downloaded model folder holds them
    processor.save_pretrained(tmp_path / "tiny-dpt")
    assert list((tmp_path / "tiny-dpt").glob("*.safetensors"))
    from_folder = load_depth_model(str(tmp_path / "tiny-dpt"), device="cpu", progress=False)
    frames = np.random.default_rng(0).integers(0, 256, (2, 48, 64, 3), dtype=np.uint8)
    assert np.allclose(from_folder(frames), tiny(frames), rtol=1e-5, atol=1e-7)


def test_model_loading_errors_say_what_to_do(tmp_path):
    try:
        load_depth_model("dpt-hybrid", device="cpu")
    except DepthModelLoadError as error:
        message = str(error)
        assert "Intel/dpt-hybrid-midas" in message and "--models tiny" in message and "local folder" in message
    else:
        pytest.skip("Intel/dpt-hybrid-midas is in the local Hugging Face cache")
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text("{}")
    (pickled / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(DepthModelLoadError, match="safetensors"):
        load_depth_model(str(pickled))
    with pytest.raises(DepthModelLoadError, match="pickle"):
        load_depth_model(str(tmp_path / "model.pt"))
    with pytest.raises(DepthModelLoadError, match="does not exist"):
        load_depth_model(str(tmp_path / "missing"))


# -- bad input ---------------------------------------------------------------------------------------
def _argument_of(call) -> str:
    with pytest.raises(InvalidArgumentError) as caught:
        call()
    assert str(caught.value).startswith(caught.value.argument + ":")
    return caught.value.argument


def test_time_ranges_outside_the_clip_name_the_argument(real_clips, tiny):
    clip = real_clips / "TrumanShow_wave_f_nm_np1_fr_med_26.avi"  # 1.63 s
    duration = probe_video(clip).duration_s
    assert _argument_of(lambda: extract_depth((clip, 1.0, duration + 2), estimator=tiny)) == "end"
    assert _argument_of(lambda: extract_depth((clip, duration + 1, duration + 2), estimator=tiny)) == "start"
    assert _argument_of(lambda: extract_depth((clip, -1.0, 1.0), estimator=tiny)) == "start"
    assert _argument_of(lambda: extract_depth((clip, 1.0, 1.0), estimator=tiny)) == "end"
    assert extract_depth((clip, 0.0, duration), frames=4, size=(64, 64), estimator=tiny).num_frames == 4


def test_frame_counts_and_sizes_name_the_argument(real_clips, tiny):
    source = (real_clips / SOCCER, 1.0, 2.0)
    for frames in (0, -3, 2.5):
        assert _argument_of(lambda frames=frames: extract_depth(source, frames=frames, estimator=tiny)) == "frames"
    for size in ((500, 512), (512, 284), (0, 64)):
        assert _argument_of(lambda size=size: extract_depth(source, size=size, estimator=tiny)) == "size"
    assert _argument_of(lambda: extract_depth(source, fps=0, estimator=tiny)) == "fps"
    assert _argument_of(lambda: extract_depth(source, smoothing=-1.0, estimator=tiny)) == "smoothing"
    assert _argument_of(lambda: extract_depth(42, estimator=tiny)) == "source"


def test_unreadable_videos_name_the_file(tmp_path, bad_videos, tiny):
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    for path, start, end in [(garbage, 0.0, 1.0), (tmp_path / "missing.mp4", 0.0, 1.0),
                             (bad_videos / "decord_corrupted.mp4", 3.0, 4.5)]:  # breaks after 2.8 s
        with pytest.raises(VideoDecodeError) as caught:
            extract_depth((path, start, end), frames=4, size=(64, 64), estimator=tiny)
        assert str(path) in str(caught.value)
