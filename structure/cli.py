"""``extract-depth VIDEO --start 1 --end 3 --frames 16 --size 512x512 --out depth.npz``: a clip's depth sequence."""

from __future__ import annotations

import time
from pathlib import Path

import click

from storyreel.command_line import FloatRange, IntRange, command, fail, offline_option, quiet_option
from storyreel.models import presets

_OPTION_NAMES = {"source": "VIDEO", "estimator": "--models"}


@command("extract-depth")
@offline_option()
@click.argument("video", type=click.Path(path_type=Path))
@click.option("--start", type=float, default=0.0, show_default=True, help="Segment start, seconds.")
@click.option("--end", type=float, default=None,
              help="Segment end, seconds [default: start + frames/fps, at most the clip's end].")
@click.option("--frames", type=IntRange(min=1), default=16, show_default=True,
              help="Depth frames (the render's frame count).")
@click.option("--fps", type=FloatRange(min=0, min_open=True), default=8.0, show_default=True,
              help="The render's frame rate.")
@click.option("--size", "size_text", default="512x512", show_default=True,
              help="Render size WIDTHxHEIGHT, multiples of 8.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Depth sequence file to write (.npz).")
@click.option("--preview", type=click.Path(path_type=Path), default=None, help="Also write a colourised depth GIF.")
@click.option("--strip", type=click.Path(path_type=Path), default=None,
              help="Also write a PNG of frames over their depth.")
@click.option("--models", default=presets.DEFAULT_PRESET, show_default=True,
              help=f"Depth model: a preset ({', '.join(presets.PRESET_NAMES)}: its depth model), or dpt-hybrid, "
                   "dpt-large, depth-anything-v2, dpt-hybrid-random, an HF id or a folder.")
@click.option("--smoothing", type=FloatRange(min=0), default=0.0, show_default=True,
              help="Temporal Gaussian smoothing, standard deviation in frames (0: none).")
@click.option("--batch-size", type=IntRange(min=1), default=8, show_default=True, help="Frames per model call.")
@click.option("--device", default=None, help="torch device [default: cuda if available, else cpu].")
@click.option("--dtype", type=click.Choice(["float16", "bfloat16", "float32"]), default=None,
              help="Model precision [default: float16 on CUDA, float32 on CPU].")
@click.option("--cache-dir", type=click.Path(path_type=Path), default=None,
              help="Depth cache folder [default: $STORYREEL_CACHE/depth or ~/.cache/storyreel/depth].")
@click.option("--no-cache", is_flag=True, help="Neither read nor write the depth cache.")
@quiet_option("No progress bar.")
def main(video, start, end, frames, fps, size_text, out, preview, strip, models, smoothing, batch_size, device,
         dtype, cache_dir, no_cache, quiet):
    """Extract the depth sequence of VIDEO between --start and --end for a render of --frames frames."""
    import torch

    from retrieval.clip_reader import probe_video
    from structure.depth_cache import DepthCache
    from structure.depth_models import load_depth_model
    from structure.depth_sequence import depth_from_raw, flicker, normalize_per_frame
    from structure.extract import extract_raw_depth, read_source_frames
    from structure.validation import InvalidArgumentError, check_time_range, parse_size

    for option, path, suffix in (("--preview", preview, ".gif"), ("--strip", strip, ".png")):
        if path is not None and path.suffix.lower() != suffix:
            fail(f"{option}: expected a {suffix} file, got '{path}'")
    try:
        size = parse_size(size_text)
        if end is None:
            end = min(start + frames / fps, probe_video(video).duration_s)
        check_time_range(start, end)
        estimator = load_depth_model(models, device=device, batch_size=batch_size,
                                     dtype=getattr(torch, dtype) if dtype else None, progress=not quiet)
        cache = None if no_cache else DepthCache(cache_dir)
        began = time.perf_counter()
        raw = extract_raw_depth((video, start, end), frames=frames, size=size, estimator=estimator, cache=cache)
        seconds = time.perf_counter() - began
        sequence = depth_from_raw(raw.values, fps=fps, source=raw.source, smoothing=smoothing)
        sequence.save_npz(out)
        framed = read_source_frames((video, start, end), frames=frames, size=size) if strip is not None else None
    except InvalidArgumentError as exc:  # VideoDecodeError, DepthModelLoadError: "error: ..." (exit 2)
        fail(f"{_OPTION_NAMES.get(exc.argument, '--' + exc.argument)}: {exc.detail}")

    how = "from the cache" if raw.cached else f"computed in {seconds:.1f} s"
    click.echo(f"depth of {video} [{start:.2f}-{end:.2f} s]: {sequence.num_frames} frames "
               f"{size[0]}x{size[1]} at {fps:g} fps, model {estimator.name} ({how})")
    click.echo(f"wrote {out}")
    if preview is not None:
        from structure.preview import save_depth_gif

        save_depth_gif(sequence, preview)
        click.echo(f"wrote {preview}")
    if strip is not None:
        from structure.preview import save_strip

        save_strip(framed, sequence, strip)
        click.echo(f"wrote {strip}")
    per_frame = flicker(normalize_per_frame(raw.values))
    click.echo(f"flicker (mean |frame t+1 - frame t|): {sequence.flicker():.4f} with one range for the sequence"
               + (f" and smoothing {smoothing:g}" if smoothing else "")
               + f"; per-frame min-max would give {per_frame:.4f}")


if __name__ == "__main__":
    main()
