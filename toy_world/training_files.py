"""The files of a toy training run: resumable checkpoints, and the trained weights with their manifest.

A checkpoint folder holds ``checkpoint-<step>.safetensors`` (the model in float32 and the optimizer's tensors)
and ``checkpoint.json`` (the step, the losses so far, the seconds trained, the recipe, the optimizer's other
state and the tensors file's sha256). Both are written atomically, the JSON last, so a run killed at any point
(``kill -9``) resumes from the last complete checkpoint.

The trained weights are one safetensors file per model in ``storyreel/models/toy_weights/`` (float16, to stay
small), listed in its ``manifest.json`` with their sha256; the loaders refuse a file whose sha256 is not the
manifest's (:mod:`storyreel.models.toy_weights`).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import torch

from storyreel.atomic_files import atomic_path, write_json
from storyreel.errors import StoryreelError
from storyreel.hashing import file_sha256
from storyreel.models.toy_weights import MANIFEST_FILE
from storyreel.optimizer_state import optimizer_state, optimizer_tensors

CHECKPOINT_FILE = "checkpoint.json"


class CheckpointError(StoryreelError, ValueError):
    """A checkpoint that cannot be resumed (another recipe, damaged files)."""


class RunClock:
    """Seconds spent training, summed over resumed runs."""

    def __init__(self, already: float = 0.0):
        self.already = already
        self.started = time.perf_counter()

    @property
    def seconds(self) -> float:
        return self.already + time.perf_counter() - self.started


def save_checkpoint(folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int,
                    losses: list[float], seconds: float, recipe: dict) -> None:
    """Write the state after ``step`` steps to ``folder`` and remove older checkpoint files."""
    from safetensors.torch import save_file

    folder = Path(folder)
    name = f"checkpoint-{step:07d}.safetensors"
    tensors = {f"model.{key}": value.detach().cpu().contiguous() for key, value in model.state_dict().items()}
    optimizer_part, scalars, param_groups = optimizer_tensors(optimizer)
    tensors.update(optimizer_part)
    with atomic_path(folder / name) as tmp:
        save_file(tensors, str(tmp))
    write_json(folder / CHECKPOINT_FILE, {
        "step": step, "losses": losses, "seconds": seconds, "recipe": recipe, "tensors": name,
        "sha256": file_sha256(folder / name), "param_groups": param_groups, "optimizer_scalars": scalars,
    })
    for old in folder.glob("checkpoint-*.safetensors"):
        if old.name != name:
            old.unlink(missing_ok=True)


def load_checkpoint(folder: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    recipe: dict) -> tuple[int, list[float], float]:
    """Restore ``folder``'s checkpoint into ``model`` and ``optimizer``: ``(step, losses, seconds)``, or
    ``(0, [], 0.0)`` when there is none. Raises :class:`CheckpointError` for another recipe or damaged files."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(folder) / CHECKPOINT_FILE
    if not path.is_file():
        return 0, [], 0.0
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        tensors_path = Path(folder) / record["tensors"]
    except (ValueError, KeyError, TypeError, OSError) as exc:
        raise CheckpointError(f"{path}: not a readable checkpoint ({exc}); delete {folder} to start over") from None
    if record.get("recipe") != recipe:
        raise CheckpointError(f"{path}: the checkpoint was made with another recipe or world; use the same "
                              f"settings, or delete {folder} to start over")
    if not tensors_path.is_file() or file_sha256(tensors_path) != record.get("sha256"):
        raise CheckpointError(f"{tensors_path}: missing or does not match {path}; delete {folder} to start over")
    try:
        tensors = load_file(str(tensors_path))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{tensors_path}: not readable ({exc})") from None
    model.load_state_dict({key[len("model."):]: value for key, value in tensors.items() if key.startswith("model.")})
    optimizer.load_state_dict(optimizer_state(tensors, record["optimizer_scalars"], record["param_groups"]))
    return int(record["step"]), list(record["losses"]), float(record["seconds"])


def save_trained_weights(out: Path, model_name: str, model: torch.nn.Module, record: dict) -> Path:
    """Write ``out/<model_name>.safetensors`` (float16) and its entry in ``out/manifest.json`` (``record`` plus
    the file's name, sha256 and size); other models' entries are kept."""
    from safetensors.torch import save_file

    out = Path(out)
    path = out / f"{model_name}.safetensors"
    tensors = {key: value.detach().cpu().to(torch.float16).contiguous() for key, value in model.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp))
    manifest_path = out / MANIFEST_FILE
    manifest = json.loads(manifest_path.read_text(encoding="utf-8")) if manifest_path.is_file() else {}
    manifest[model_name] = {**record, "file": path.name, "sha256": file_sha256(path), "bytes": path.stat().st_size}
    write_json(manifest_path, manifest)
    return path


def trainer_command(name: str, train: Callable[..., dict], model_name: str, default_steps: int,
                    checkpoint_every: int, measured: str, summary: str):
    """The command line of a toy model's trainer (``python -m toy_world.train_<model>``): the world, where the
    weights go, steps, seed, a held-out world to measure ``measured`` on, checkpoints, threads, ``--quiet``."""
    import click

    from storyreel.command_line import IntRange, command, quiet_option
    from storyreel.models.toy_weights import TOY_WEIGHTS_DIR

    @command(name)
    @click.option("--world", required=True, type=click.Path(path_type=Path, exists=True, file_okay=False),
                  help="A toy world folder (data/make_toy_world.py).")
    @click.option("--out", type=click.Path(path_type=Path, file_okay=False), default=TOY_WEIGHTS_DIR,
                  show_default=True, help=f"Where {model_name}.safetensors and manifest.json go.")
    @click.option("--steps", type=IntRange(min=1), default=default_steps, show_default=True, help="Training steps.")
    @click.option("--seed", type=IntRange(min=0), default=0, show_default=True, help="Seed of the batches.")
    @click.option("--heldout", type=click.Path(path_type=Path, exists=True, file_okay=False), default=None,
                  help=f"A held-out toy world to measure {measured} on.")
    @click.option("--checkpoints", type=click.Path(path_type=Path, file_okay=False), default=None,
                  help=f"Checkpoint folder [default: WORLD/.checkpoints/{model_name}].")
    @click.option("--checkpoint-every", type=IntRange(min=1), default=checkpoint_every, show_default=True)
    @click.option("--threads", type=IntRange(min=1), default=1, show_default=True, help="torch CPU threads.")
    @quiet_option()
    def main(world, out, steps, seed, heldout, checkpoints, checkpoint_every, threads, quiet):
        torch.set_num_threads(threads)
        record = train(world, out, steps, seed=seed, checkpoints=checkpoints, checkpoint_every=checkpoint_every,
                       heldout=heldout, progress=not quiet)
        click.echo(f"trained {record['steps']} steps in {record['train_seconds']} s, loss {record['first_loss']} → "
                   f"{record['final_loss']:.4f}; metrics {record.get('metrics')}")

    main.help = summary
    return main
