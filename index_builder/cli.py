"""``build-index PATH... --out INDEX``: index a video library (rerunning the same command resumes)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from index_builder.segmenter import SegmentSettings

DEFAULT_MODELS = "ViT-B-32:laion2b_s34b_b79k"


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("paths", nargs=-1, type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Index folder to write (or resume).")
@click.option("--kinetics-csv", type=click.Path(path_type=Path),
              help="Kinetics annotation CSV; PATH is then the root of the downloaded videos.")
@click.option("--manifest", type=click.Path(path_type=Path),
              help="JSONL of {path, caption?, label?, start?, end?} (paths relative to the file).")
@click.option("--models", default=DEFAULT_MODELS, show_default=True,
              help="'tiny', an open_clip NAME:TAG, NAME:/path/weights.safetensors, hf-hub:… or local-dir:…")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True)
@click.option("--workers", type=int, default=None, help="Decode worker processes [default: CPU count].")
@click.option("--update", is_flag=True, help="Add new videos to a finished index without recomputing old ones.")
@click.option("--window", "window_s", type=float, default=2.0, show_default=True, help="Segment length in seconds.")
@click.option("--stride", "stride_s", type=float, default=1.0, show_default=True, help="Seconds between segment starts.")
@click.option("--frames", "frames_per_segment", type=int, default=8, show_default=True, help="Frames embedded per segment.")
@click.option("--timeout", "timeout_s", type=float, default=300.0, show_default=True,
              help="Seconds one file may take to decode before its worker is stopped.")
@click.option("--batch-size", type=int, default=256, show_default=True, help="Frames per embedding batch.")
@click.option("--shard-size", type=int, default=8192, show_default=True, help="Vectors per embedding shard file.")
@click.option("--factory", default=None, help="FAISS factory string [default: chosen from the number of vectors].")
@click.option("--no-progress", is_flag=True, help="Hide the progress bar.")
def main(paths, out, kinetics_csv, manifest, models, engine, workers, update, window_s, stride_s,
         frames_per_segment, timeout_s, batch_size, shard_size, factory, no_progress):
    """Index the videos under PATH... into the folder --out."""
    from index_builder.build import BuildError, BuildOptions, build_index
    from index_builder.sources import SourceError
    from storyreel.errors import ModelLoadError

    if not paths and manifest is None:
        raise click.UsageError("give at least one PATH (a folder of videos) or --manifest")
    for name, value in (("--workers", workers), ("--frames", frames_per_segment), ("--batch-size", batch_size),
                        ("--shard-size", shard_size)):
        if value is not None and value < 1:
            raise click.BadParameter("must be at least 1", param_hint=name)
    try:
        segments = SegmentSettings(window_s=window_s, stride_s=stride_s, frames_per_segment=frames_per_segment)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    options = BuildOptions(
        out=out, paths=list(paths), kinetics_csv=kinetics_csv, manifest=manifest, models=models, engine=engine,
        workers=workers or max(1, os.cpu_count() or 1), update=update, segments=segments, timeout_s=timeout_s,
        batch_size=batch_size, shard_size=shard_size, factory=factory, progress=not no_progress,
    )
    try:
        summary = build_index(options)
    except (SourceError, BuildError, ModelLoadError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    click.echo(summary.describe())


if __name__ == "__main__":
    main()
