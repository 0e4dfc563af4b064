"""Depth-estimation throughput: batch 1 against batch 16, and a depth-cache hit against a miss, in one process.

What it measures (medians of ``--rounds`` rounds; the modes alternate within each round so drifts in
machine load hit both):

(a) **model throughput**: frames per second of :class:`structure.depth_models.DepthEstimator` on
    ``--frames`` real frames already decoded and framed to ``--size``, called with ``batch_size=1`` and
    with ``batch_size=16`` (``--batch-sizes``). Each call includes the model's image processor, the
    forward pass and the post-processing back to ``--size``: all a user pays per frame once the frames
    are decoded. The ratio batch 16 / batch 1 is printed.
(b) **cache miss vs hit**: ``extract_raw_depth((clip, start, end), frames=16, size=--size, cache=...)``
    on a real clip, first into an empty cache folder (miss: probe, decode, frame, run the model, write
    the cache file atomically), then the same call again (hit: stat the clip, read and check the file).
    The ratio miss / hit is printed.

On CUDA the model runs in float16 (``--dtype``) and the peak CUDA memory of each batch size is printed
(``torch.cuda.max_memory_allocated``, reset before each mode). ``--models dpt-hybrid-random`` builds
the real DPT-Hybrid architecture (BiT-ResNet50 + ViT-B/16, the config of transformers' conversion
script) with random weights in code, so the real model's speed and memory can be measured without its
weights; at ``--size 384x384`` the processor's resize is then an identity.

A warm-up round (not counted) runs first: imports, the model build, first-call allocations and the OS
file cache are excluded. The model build time is printed apart.

Run (from the repository root)::

    .venv/bin/python bench/depth_throughput.py                                   # tiny DPT, CPU
    .venv/bin/python bench/depth_throughput.py --models dpt-hybrid-random --size 384x384 --frames 256

Exits 0; it only reports.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CLIPS = REPO_ROOT.parent / "shared" / "data" / "real_clips"
VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm")


def load_frames(clips: Path, count: int, size: tuple[int, int]):
    """``count`` real frames framed to ``size``, taken in turn from every clip in ``clips``."""
    import numpy as np

    from retrieval.clip_reader import probe_video, read_frames_at
    from structure.framing import frame_image

    files = sorted(p for p in clips.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
    if not files:
        sys.exit(f"no video files in {clips}")
    per_clip = -(-count // len(files))
    frames = []
    for path in files:
        duration = probe_video(path).duration_s
        times = [duration * (i + 0.5) / per_clip for i in range(per_clip)]
        frames.extend(frame_image(frame, size) for frame in read_frames_at(path, times))
    return np.stack(frames[:count]), files


def time_model(estimator, frames, batch_size: int, cuda: bool) -> tuple[float, float | None]:
    """(seconds, peak CUDA GiB or None) for one pass over ``frames`` at ``batch_size``."""
    import torch

    estimator.batch_size = batch_size
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    began = time.perf_counter()
    estimator(frames)  # returns numpy: the device work is finished when it returns
    seconds = time.perf_counter() - began
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    return seconds, peak


def time_cache(estimator, clip: Path, size, workdir: Path, round_index: int) -> tuple[float, float]:
    """(miss seconds, hit seconds) for one clip segment into a fresh cache folder."""
    import numpy as np

    from retrieval.clip_reader import probe_video
    from structure.depth_cache import DepthCache
    from structure.extract import extract_raw_depth

    duration = probe_video(clip).duration_s
    start = max(0.0, duration / 2 - 1.0)
    source = (clip, start, min(duration, start + 2.0))
    cache = DepthCache(workdir / f"cache-{round_index}")
    began = time.perf_counter()
    miss = extract_raw_depth(source, frames=16, size=size, estimator=estimator, cache=cache)
    miss_s = time.perf_counter() - began
    began = time.perf_counter()
    hit = extract_raw_depth(source, frames=16, size=size, estimator=estimator, cache=cache)
    hit_s = time.perf_counter() - began
    assert hit.cached and not miss.cached and np.array_equal(hit.values, miss.values)
    return miss_s, hit_s


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="tiny", help="depth model spec (default: tiny)")
    parser.add_argument("--clips", type=Path, default=DEFAULT_CLIPS, help="folder of real clips")
    parser.add_argument("--size", default="512x512", help="render size WIDTHxHEIGHT (default: 512x512)")
    parser.add_argument("--frames", type=int, default=64, help="frames per throughput measurement (default: 64)")
    parser.add_argument("--batch-sizes", type=int, nargs=2, default=(1, 16), metavar=("SMALL", "LARGE"))
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds, at least 1 (default: 5)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's; 1 is steadier on a shared machine)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available)")
    parser.add_argument("--dtype", default=None, choices=("float16", "bfloat16", "float32"),
                        help="model dtype (default: float16 on CUDA, float32 on CPU)")
    args = parser.parse_args(argv)

    import torch

    from structure.depth_models import load_depth_model
    from structure.validation import parse_size

    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    size = parse_size(args.size)
    began = time.perf_counter()
    estimator = load_depth_model(args.models, device=args.device, progress=False,
                                 dtype=getattr(torch, args.dtype) if args.dtype else None)
    build_s = time.perf_counter() - began
    cuda = estimator.device.type == "cuda"
    frames, files = load_frames(args.clips, args.frames, size)
    device_name = torch.cuda.get_device_name(estimator.device) if cuda else f"CPU, {torch.get_num_threads()} threads"
    print(f"model {args.models} ({estimator.fingerprint}), {estimator.dtype}, on {device_name}")
    print(f"model build {build_s:.2f} s; {len(frames)} real frames from {len(files)} clips, framed to "
          f"{size[0]}x{size[1]}; torch {torch.__version__}")

    small, large = args.batch_sizes
    cache_clip = files[0]
    timings: dict[str, list[float]] = {"small": [], "large": [], "miss": [], "hit": []}
    peaks: dict[str, float | None] = {"small": None, "large": None}
    with tempfile.TemporaryDirectory(prefix="depth-bench-") as workdir:
        for round_index in range(args.rounds + 1):  # round 0 is the warm-up
            results = {}
            for mode, batch_size in (("small", small), ("large", large)):
                results[mode], peak = time_model(estimator, frames, batch_size, cuda)
                peaks[mode] = peak if peak is None else max(peak, peaks[mode] or 0.0)
            results["miss"], results["hit"] = time_cache(estimator, cache_clip, size, Path(workdir), round_index)
            if round_index == 0:
                continue
            for mode, seconds in results.items():
                timings[mode].append(seconds)
            print(f"round {round_index}: batch {small} {len(frames) / results['small']:.1f} frames/s, "
                  f"batch {large} {len(frames) / results['large']:.1f} frames/s, "
                  f"cache miss {results['miss'] * 1000:.1f} ms, hit {results['hit'] * 1000:.2f} ms")

    median = {mode: statistics.median(values) for mode, values in timings.items()}
    fps_small, fps_large = len(frames) / median["small"], len(frames) / median["large"]
    print()
    for mode, batch_size, fps in (("small", small, fps_small), ("large", large, fps_large)):
        memory = f", peak CUDA memory {peaks[mode]:.2f} GiB" if cuda else ""
        print(f"batch {batch_size:>2}: {fps:8.1f} frames/s{memory}")
    print(f"batch {large} / batch {small} throughput: {fps_large / fps_small:.2f}x")
    print(f"cache miss (decode + frame + model + write, 16 frames of {cache_clip.name}): "
          f"{median['miss'] * 1000:.1f} ms")
    print(f"cache hit (stat + read + check): {median['hit'] * 1000:.2f} ms")
    print(f"miss / hit: {median['miss'] / median['hit']:.0f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
