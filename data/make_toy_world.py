"""Write a toy world: ``python data/make_toy_world.py --out DIR --seed N --clips K [--split train|heldout]``.

Writes ``DIR/<label>/<name>.mp4``, ``DIR/depth/<label>/<name>.npz`` (inverse depth and the figure's mask) and
``DIR/captions.jsonl``, a manifest ``build-index --manifest DIR/captions.jsonl`` reads (see
:mod:`toy_world.world_files`). Rerunning the same command resumes.
"""

from pathlib import Path

import click

from storyreel.command_line import IntRange, command, quiet_option
from toy_world.scenes import FPS, SPLITS
from toy_world.world_files import write_world


def _even_size(ctx, param, value):
    if value % 2:
        raise click.BadParameter(f"must be an even number of pixels, got {value}", ctx=ctx, param=param)
    return value


@command("make-toy-world")
@click.option("--out", required=True, type=click.Path(path_type=Path, file_okay=False), help="World folder.")
@click.option("--seed", type=IntRange(min=0), default=0, show_default=True, help="The world's seed.")
@click.option("--clips", type=IntRange(min=1), required=True, help="Number of clips.")
@click.option("--split", type=click.Choice(SPLITS), default="train", show_default=True,
              help="Which clips of the world: the two splits never share a clip seed.")
@click.option("--size", type=IntRange(min=32, max=256), default=64, show_default=True, callback=_even_size,
              help="Frame width and height in pixels (even).")
@click.option("--fps", type=IntRange(min=1, max=60), default=FPS, show_default=True, help="Frames per second.")
@click.option("--character-references", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Also write the toy character zuri's reference images (the pink hare) into this folder, for "
                   "train-character --images or evaluate-story --references zuri=FOLDER.")
@quiet_option("No progress lines.")
def main(out, seed, clips, split, size, fps, character_references, quiet):
    """Draw toy clips with known depth and captions into the folder --out."""

    def progress(done, total, name):
        if not quiet and (done == total or done % 10 == 0):
            click.echo(f"{done}/{total} clips ({name})", err=True)

    rows = write_world(out, seed=seed, clips=clips, split=split, size=size, fps=fps, progress=progress)
    cuts = sum(row["cut_s"] is not None for row in rows)
    click.echo(f"wrote {len(rows)} clips ({cuts} with a hard cut) to {out}; manifest {out / 'captions.jsonl'}")
    if character_references is not None:
        from toy_world.identity_checks import write_reference_images

        written = write_reference_images(character_references)
        click.echo(f"wrote {len(written)} reference images of zuri to {character_references}")


if __name__ == "__main__":
    main()
