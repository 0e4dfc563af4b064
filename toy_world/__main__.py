"""``python -m toy_world`` (``make toy-world``): the toy world and every toy model, from scratch, resumable.

1. draw the world: ``WORK/train`` and ``WORK/heldout`` (:mod:`toy_world.world_files`; the two splits never
   share a clip seed);
2. train the toy CLIP (:mod:`toy_world.train_clip`), the toy DPT (:mod:`toy_world.train_depth`) and the toy
   render model (:mod:`toy_world.train_render`) on the train split, measuring the first two on the held-out
   split;
3. train the toy character of the identity checks with ``train-character --models toy`` on the trained render
   model (:mod:`toy_world.toy_character`);
4. train the toy IP-Adapter (h94's base layout, the toy CLIP's vision tower as its image encoder) on the train
   split with the render model frozen (:mod:`toy_world.train_ip_adapter`);
5. train the toy SparseCtrl RGB model (keyframe shots, generated transitions) on 8-frame windows of the train split
   with the render model frozen (:mod:`toy_world.train_sparse_control`);
6. write the weights and ``manifest.json`` to ``storyreel/models/toy_weights`` (``--out``).

Every step resumes: clips already drawn are not drawn again, and each training continues from its last
checkpoint under ``WORK/checkpoints`` (a run killed with ``kill -9`` loses at most one checkpoint interval).
"""

from __future__ import annotations

import time
from pathlib import Path

import click
import torch

from storyreel.command_line import IntRange, command, quiet_option
from storyreel.models.toy_weights import TOY_WEIGHTS_DIR

TRAIN_CLIPS = 270
HELDOUT_CLIPS = 90
SEED = 0


@command("toy-world")
@click.option("--work", type=click.Path(path_type=Path, file_okay=False), default=Path("toy-world"),
              show_default=True, help="Where the world's clips and the checkpoints go.")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), default=TOY_WEIGHTS_DIR,
              show_default=True, help="Where the trained weights and manifest.json go.")
@click.option("--train-clips", type=IntRange(min=4), default=TRAIN_CLIPS, show_default=True)
@click.option("--heldout-clips", type=IntRange(min=4), default=HELDOUT_CLIPS, show_default=True)
@click.option("--seed", type=IntRange(min=0), default=SEED, show_default=True, help="The world's and the runs' seed.")
@click.option("--threads", type=IntRange(min=1), default=2, show_default=True, help="torch CPU threads.")
@quiet_option()
def main(work, out, train_clips, heldout_clips, seed, threads, quiet):
    """Draw the toy world and train every toy model on it (about an hour on 2 CPU cores)."""
    from toy_world.toy_character import train_toy_character
    from toy_world.train_clip import train_clip
    from toy_world.train_depth import train_depth
    from toy_world.train_ip_adapter import train_ip_adapter
    from toy_world.train_render import train_render_model
    from toy_world.train_sparse_control import train_sparse_control
    from toy_world.world_files import write_world

    torch.set_num_threads(threads)
    started = time.perf_counter()
    train, heldout, checkpoints = work / "train", work / "heldout", work / "checkpoints"
    for folder, split, count in ((train, "train", train_clips), (heldout, "heldout", heldout_clips)):
        write_world(folder, seed=seed, clips=count, split=split)
        click.echo(f"world: {count} {split} clips in {folder}", err=True)
    clip = train_clip(train, out, steps=_steps("clip"), seed=seed, checkpoints=checkpoints / "clip", heldout=heldout,
                      progress=not quiet)
    click.echo(f"toy CLIP: {clip.get('metrics')}", err=True)
    depth = train_depth(train, out, steps=_steps("depth"), seed=seed, checkpoints=checkpoints / "depth",
                        heldout=heldout, progress=not quiet)
    click.echo(f"toy DPT: {depth.get('metrics')}", err=True)
    render = train_render_model(train, out, seed=seed, checkpoints=checkpoints / "render", progress=not quiet)
    for stage, record in render.items():
        click.echo(f"toy render {stage}: loss {record['first_loss']} → {record['final_loss']:.4f} in "
                   f"{record['train_seconds']} s", err=True)
    character = train_toy_character(work, out, progress=not quiet)
    click.echo(f"toy character: {character['steps']} steps, loss {character['final_loss']} in "
               f"{character['seconds']} s", err=True)
    adapter = train_ip_adapter(train, out, seed=seed, checkpoints=checkpoints / "ip_adapter", progress=not quiet)
    click.echo(f"toy IP-Adapter: loss {adapter['first_loss']} → {adapter['final_loss']:.4f} in "
               f"{adapter['train_seconds']} s", err=True)
    sparse = train_sparse_control(train, out, seed=seed, checkpoints=checkpoints / "sparse_control",
                                  progress=not quiet)
    click.echo(f"toy SparseCtrl: loss {sparse['first_loss']} → {sparse['final_loss']:.4f} in "
               f"{sparse['train_seconds']} s", err=True)
    click.echo(f"toy world trained in {time.perf_counter() - started:.0f} s; weights and manifest in {out}")


def _steps(model: str) -> int:
    from toy_world import train_clip, train_depth

    return {"clip": train_clip.DEFAULT_STEPS, "depth": train_depth.DEFAULT_STEPS}[model]


if __name__ == "__main__":
    main()
