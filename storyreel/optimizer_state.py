"""An optimizer's state as safetensors tensors plus JSON, and back: how every resumable training run of storyreel
(characters, the toy world's models) keeps its optimizer in a checkpoint without pickle.

Tensors go to the checkpoint's safetensors file under ``optimizer.<param index>.<name>``; the other entries
(Adam's ``step`` when it is a number, flags) and the parameter groups go to its JSON record.
"""

from __future__ import annotations

import torch

PREFIX = "optimizer."


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict, list]:
    """``(tensors, scalars, param_groups)`` of ``optimizer.state_dict()``: the tensors keyed for a safetensors
    file (on the CPU), the rest JSON-serialisable."""
    state = optimizer.state_dict()
    tensors, scalars = {}, {}
    for index, entries in state["state"].items():
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{PREFIX}{index}.{key}"] = value.detach().to("cpu").contiguous()
            else:
                scalars[f"{index}.{key}"] = value
    return tensors, scalars, state["param_groups"]


def optimizer_state(tensors: dict[str, torch.Tensor], scalars: dict, param_groups: list) -> dict:
    """The ``state_dict`` :func:`optimizer_tensors` took apart (``tensors`` may hold other keys; they are
    ignored)."""
    state: dict = {"state": {}, "param_groups": param_groups}
    for key, value in tensors.items():
        if key.startswith(PREFIX):
            index, name = key[len(PREFIX):].split(".", 1)
            state["state"].setdefault(int(index), {})[name] = value
    for key, value in scalars.items():
        index, name = key.split(".", 1)
        state["state"].setdefault(int(index), {})[name] = value
    return state
