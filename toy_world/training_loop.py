"""The loop every toy model trains with: warm-up then cosine decay, progress, checkpoints, resume.

:func:`train_steps` runs ``step_loss(step)`` for the steps a run still has to do, from the checkpoint of
``checkpoints`` when there is one (:mod:`toy_world.training_files`), so a run killed with ``kill -9`` resumes
where its last checkpoint was and ends with the same weights as an uninterrupted one (each step's batch and
noise depend only on the seed and the step).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch

from toy_world.training_files import RunClock, load_checkpoint, save_checkpoint


def learning_rate_factor(step: int, steps: int, warmup_steps: int) -> float:
    """The share of the peak learning rate at ``step``: a linear warm-up over ``warmup_steps``, then half a cosine
    down to 0 at ``steps``."""
    return min(1.0, (step + 1) / warmup_steps) * 0.5 * (1 + np.cos(np.pi * min(step, steps) / steps))


def train_steps(module: torch.nn.Module, optimizer: torch.optim.Optimizer, step_loss: Callable[[int], torch.Tensor],
                *, steps: int, warmup_steps: int, checkpoints: Path, recipe: dict, checkpoint_every: int,
                description: str, progress: bool = True, clip_grad_norm: float | None = None) -> dict:
    """Train ``module`` (what is checkpointed) with ``optimizer`` for ``steps`` steps of ``step_loss``; returns
    the record every manifest entry has: steps, seconds, first and final loss, the loss every 50 steps."""
    from tqdm.auto import tqdm

    peaks = [group["lr"] for group in optimizer.param_groups]
    step, losses, seconds = load_checkpoint(checkpoints, module, optimizer, recipe)
    clock = RunClock(seconds)
    module.train()
    with tqdm(total=steps, initial=step, desc=description, disable=not progress) as bar:
        while step < steps:
            factor = learning_rate_factor(step, steps, warmup_steps)
            for group, peak in zip(optimizer.param_groups, peaks):
                group["lr"] = peak * factor
            loss = step_loss(step)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if clip_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_([p for group in optimizer.param_groups for p in group["params"]],
                                               clip_grad_norm)
            optimizer.step()
            step += 1
            losses.append(round(loss.item(), 5))
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.4f}")
            if step % checkpoint_every == 0 or step == steps:
                save_checkpoint(checkpoints, module, optimizer, step, losses, clock.seconds, recipe)
    module.eval()
    return {"steps": step, "train_seconds": round(clock.seconds, 1), "first_loss": losses[0] if losses else None,
            "final_loss": float(np.mean(losses[-50:])) if losses else None, "loss_every_50": losses[::50]}
