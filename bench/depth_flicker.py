"""Depth flicker on the real clips: one range for the sequence against per-frame normalisation.

For every real clip, the depth model's raw output for the middle ``--seconds`` of the clip
(``--frames`` frames framed to ``--size``, as the render gets them) is normalised four ways and the
flicker of each is printed (mean absolute difference between consecutive frames, in ``[0, 1]`` units):

* ``min-max``: every frame stretched by its own min and max (Make-Your-Video; most ControlNet
  preprocessors do this per image);
* ``pct/frame``: every frame stretched by its own 2nd-98th percentiles (the same robust range as ours,
  but per frame: separates "per frame vs per sequence" from "min-max vs percentiles");
* ``sequence``: one 2nd-98th percentile range over all frames (``structure.normalize_sequence``);
* ``seq+smooth``: the same, then the temporal Gaussian of ``--smoothing`` frames.

Flicker counts real motion too, and a normalisation with less contrast flickers less for that reason
alone (min-max spends its range on outliers), so the contrast (mean per-frame standard deviation) is
printed as well, and ``rel`` = flicker / contrast.

Read the numbers with the model in mind: with ``--models tiny`` (random weights) the "depth" is a fixed
pattern that moves a little with the picture, not depth. The real comparison needs real weights:
``--models /path/to/dpt-hybrid-midas`` (a local safetensors folder) or ``--models dpt-hybrid`` online.

Run (from the repository root)::

    .venv/bin/python bench/depth_flicker.py
    .venv/bin/python bench/depth_flicker.py --models /models/dpt-hybrid-midas --size 512x288
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CLIPS = REPO_ROOT.parent / "shared" / "data" / "real_clips"
VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm")
MODES = ("min-max", "pct/frame", "sequence", "seq+smooth")


def per_frame_percentiles(raw, low_pct: float = 2.0, high_pct: float = 98.0):
    import numpy as np

    out = np.empty_like(raw)
    for index, frame in enumerate(raw):
        low, high = np.percentile(frame, [low_pct, high_pct])
        out[index] = np.clip((frame - low) / (high - low), 0, 1) if high > low else 0.0
    return out


def normalisations(raw, smoothing: float) -> dict:
    from structure.depth_sequence import normalize_per_frame, normalize_sequence, smooth_temporally

    sequence = normalize_sequence(raw)
    return {
        "min-max": normalize_per_frame(raw),
        "pct/frame": per_frame_percentiles(raw),
        "sequence": sequence,
        "seq+smooth": smooth_temporally(sequence, smoothing),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="tiny", help="depth model spec (default: tiny)")
    parser.add_argument("--clips", type=Path, default=DEFAULT_CLIPS, help="folder of real clips")
    parser.add_argument("--size", default="512x512", help="render size WIDTHxHEIGHT (default: 512x512)")
    parser.add_argument("--frames", type=int, default=16, help="frames per clip (default: 16)")
    parser.add_argument("--seconds", type=float, default=2.0, help="segment length, from the clip's middle")
    parser.add_argument("--smoothing", type=float, default=1.0, help="temporal Gaussian sigma, frames (default: 1)")
    parser.add_argument("--device", default=None)
    args = parser.parse_args(argv)

    import numpy as np

    from retrieval.clip_reader import probe_video
    from structure.depth_models import load_depth_model
    from structure.depth_sequence import flicker
    from structure.extract import extract_raw_depth
    from structure.validation import parse_size

    size = parse_size(args.size)
    estimator = load_depth_model(args.models, device=args.device, progress=False)
    files = sorted(p for p in args.clips.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
    if not files:
        sys.exit(f"no video files in {args.clips}")
    print(f"model {args.models} ({estimator.fingerprint}); {args.frames} frames over the middle "
          f"{args.seconds:g} s of each clip, framed to {size[0]}x{size[1]}; smoothing sigma {args.smoothing:g}")
    header = (f"{'clip':<34} " + " ".join(f"{m:>10}" for m in MODES)
              + f" {'contrast':>17} {'rel min-max':>11} {'rel seq':>8}")
    print(header)
    print("-" * len(header))
    ratios, rel_ratios = [], []
    for path in files:
        duration = probe_video(path).duration_s
        start = max(0.0, duration / 2 - args.seconds / 2)
        raw = extract_raw_depth((path, start, min(duration, start + args.seconds)), frames=args.frames,
                                size=size, estimator=estimator).values
        normalised = normalisations(raw, args.smoothing)
        flickers = {mode: flicker(depth) for mode, depth in normalised.items()}
        contrast = {mode: float(np.mean([frame.std() for frame in depth])) for mode, depth in normalised.items()}
        rel_minmax = flickers["min-max"] / contrast["min-max"]
        rel_sequence = flickers["sequence"] / contrast["sequence"]
        ratios.append(flickers["sequence"] / flickers["min-max"])
        rel_ratios.append(rel_sequence / rel_minmax)
        print(f"{path.name[:34]:<34} " + " ".join(f"{flickers[m]:>10.4f}" for m in MODES)
              + f" {contrast['min-max']:>8.3f}/{contrast['sequence']:.3f} {rel_minmax:>11.3f} {rel_sequence:>8.3f}")
    print()
    print(f"sequence / min-max flicker: median {statistics.median(ratios):.2f} "
          f"(range {min(ratios):.2f}-{max(ratios):.2f}); "
          f"relative to contrast: median {statistics.median(rel_ratios):.2f}")
    print("(contrast = mean per-frame standard deviation, min-max / sequence; rel = flicker / contrast)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
