"""Model CPU offload: whole models wait on the CPU and move to the GPU only for the phase that uses them.

The same trade as diffusers' ``enable_model_cpu_offload``: peak GPU memory is the largest phase's models
(the UNet and the ControlNet while denoising) rather than all of them, at the cost of one host-to-device
copy per phase. Phases of one render::

    text encoding   text_encoder
    denoising       unet + controlnet (+ text_encoder when embeddings change per step)
    decoding        vae

:meth:`ModelOffload.use` puts exactly the named models on the execution device and every other model on the
offload device; ``moves`` records each transfer (tests read it, so placement is checked without a GPU).
"""

from __future__ import annotations

import torch

OFFLOADED_MODELS = ("text_encoder", "unet", "controlnet", "vae")


class ModelOffload:
    """Placement of the render's models between ``execution_device`` and ``offload_device``."""

    def __init__(self, components, execution_device: str | torch.device, offload_device: str | torch.device = "cpu"):
        self.components = components
        self.execution_device = torch.device(execution_device)
        self.offload_device = torch.device(offload_device)
        self.moves: list[tuple[str, str]] = []  # (model name, device type) per transfer
        self.use()  # everything starts on the offload device

    def _model(self, name: str) -> torch.nn.Module:
        return getattr(self.components, name)

    def use(self, *names: str) -> None:
        """Put ``names`` on the execution device and all other models on the offload device."""
        unknown = set(names) - set(OFFLOADED_MODELS)
        if unknown:
            raise ValueError(f"unknown model(s) {', '.join(sorted(unknown))}; offloaded: {', '.join(OFFLOADED_MODELS)}")
        leaving = [n for n in OFFLOADED_MODELS if n not in names]
        for name in leaving + list(names):  # free memory before filling it
            target = self.execution_device if name in names else self.offload_device
            model = self._model(name)
            if model.device != target:
                model.to(target)
                self.moves.append((name, target.type))
        if self.execution_device.type == "cuda" and leaving:
            torch.cuda.empty_cache()

    def placement(self) -> dict[str, str]:
        """Where each model is now: name → device type."""
        return {name: self._model(name).device.type for name in OFFLOADED_MODELS}
