"""``build-index PATH... --out INDEX``: index a video library (rerunning the same command resumes)."""

from __future__ import annotations

import os
from pathlib import Path

import click

from index_builder.segmenter import SegmentSettings
from storyreel.command_line import IntRange, command, offline_option, quiet_option
from storyreel.models import presets

DEFAULT_MODELS = presets.DEFAULT_PRESET


@command("build-index")
@offline_option()
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Index folder to write (or resume).")
@click.option("--kinetics-csv", type=click.Path(path_type=Path),
              help="Kinetics annotation CSV; PATH is then the root of the downloaded videos.")
@click.option("--manifest", type=click.Path(path_type=Path),
              help="JSONL of {path, caption?, label?, start?, end?} (paths relative to the file).")
@click.option("--models", default=DEFAULT_MODELS, show_default=True,
              help=f"CLIP model: a preset ({', '.join(presets.PRESET_NAMES)}: its CLIP model), an open_clip "
                   "NAME:TAG, NAME:/path/weights.safetensors, hf-hub:… or local-dir:…")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True)
@click.option("--workers", type=IntRange(min=1), default=None, help="Decode worker processes [default: CPU count].")
@click.option("--update", is_flag=True, help="Add new videos to a finished index without recomputing old ones.")
@click.option("--window", "window_s", type=float, default=2.0, show_default=True, help="Segment length in seconds.")
@click.option("--stride", "stride_s", type=float, default=1.0, show_default=True,
              help="Seconds between segment starts.")
@click.option("--frames", "frames_per_segment", type=IntRange(min=1), default=8, show_default=True,
              help="Frames embedded per segment.")
@click.option("--timeout", "timeout_s", type=float, default=300.0, show_default=True,
              help="Seconds one file may take to decode before its worker is stopped.")
@click.option("--batch-size", type=IntRange(min=1), default=256, show_default=True, help="Frames per embedding batch.")
@click.option("--shard-size", type=IntRange(min=1), default=8192, show_default=True,
              help="Vectors per embedding shard file.")
@click.option("--factory", default=None, help="FAISS factory string [default: chosen from the number of vectors].")
@quiet_option("Hide the progress bar.", no_progress_alias=True)
def main(paths, out, kinetics_csv, manifest, models, engine, workers, update, window_s, stride_s,
         frames_per_segment, timeout_s, batch_size, shard_size, factory, quiet):
    """Index the videos under PATH... into the folder --out."""
    from index_builder.build import BuildOptions, build_index

    if not paths and manifest is None:
        raise click.UsageError("give at least one PATH (a folder of videos) or --manifest")
    try:
        segments = SegmentSettings(window_s=window_s, stride_s=stride_s, frames_per_segment=frames_per_segment)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    options = BuildOptions(
        out=out, paths=list(paths), kinetics_csv=kinetics_csv, manifest=manifest, models=models, engine=engine,
        workers=workers or max(1, os.cpu_count() or 1), update=update, segments=segments, timeout_s=timeout_s,
        batch_size=batch_size, shard_size=shard_size, factory=factory, progress=not quiet,
    )
    summary = build_index(options)  # SourceError, BuildError, ModelLoadError: "error: ..." (exit 2)
    click.echo(summary.describe())


if __name__ == "__main__":
    main()
