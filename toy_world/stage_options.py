"""The command-line options of a toy training stage trained on a world folder (``--world``, ``--out``, steps, seed,
checkpoints, threads): one decorator, so every stage's command reads alike."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import click

from storyreel.command_line import IntRange, quiet_option
from storyreel.models.toy_weights import TOY_WEIGHTS_DIR


def stage_options(folder: str, default_steps: int) -> Callable[[Callable], Callable]:
    """``--world --out --steps --seed --checkpoints --checkpoint-every --max-clips --threads -q`` for a stage that
    writes ``folder/`` and its manifest entry into ``--out``."""
    options = [
        click.option("--world", required=True, type=click.Path(path_type=Path, exists=True, file_okay=False),
                     help="A toy world folder (data/make_toy_world.py), the train split."),
        click.option("--out", type=click.Path(path_type=Path, file_okay=False), default=TOY_WEIGHTS_DIR,
                     show_default=True, help=f"Where {folder}/ and manifest.json go (the toy models it trains with "
                                             "are read from there when it has them)."),
        click.option("--steps", type=IntRange(min=1), default=default_steps, show_default=True,
                     help="Training steps."),
        click.option("--seed", type=IntRange(min=0), default=0, show_default=True, help="Seed of the batches."),
        click.option("--checkpoints", type=click.Path(path_type=Path, file_okay=False), default=None,
                     help=f"Checkpoint folder [default: WORLD/.checkpoints/{folder}]."),
        click.option("--checkpoint-every", type=IntRange(min=1), default=200, show_default=True),
        click.option("--max-clips", type=IntRange(min=1), default=None, help="Train on the first N clips only."),
        click.option("--threads", type=IntRange(min=1), default=1, show_default=True, help="torch CPU threads."),
        quiet_option(),
    ]

    def decorate(function: Callable) -> Callable:
        for option in reversed(options):
            function = option(function)
        return function

    return decorate
