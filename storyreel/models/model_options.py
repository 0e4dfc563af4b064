"""The model flags of every command that loads the render's models, and the specification they give.

``@model_options()`` adds ``--models PRESET``, ``--model-config FILE.toml``, ``--base``, ``--motion-adapter``,
``--controlnet``, ``--vae`` and ``--depth-model`` to a click command (parameters ``models``, ``model_config``,
``base``, ``motion_adapter``, ``controlnet``, ``vae``, ``depth_model``); :func:`model_specification` turns
their values into a :class:`~storyreel.models.specification.ModelSpecification`::

    @command("train-character")
    @model_options()
    @quiet_option()
    def main(quiet, **options):
        specification = model_specification(**options)
        specification.validate()   # "error: --base: ..." (exit 2) before anything loads

``--models`` is a ``click.Choice`` of the registry's presets; the other values are checked by
:meth:`ModelSpecification.validate <storyreel.models.specification.ModelSpecification.validate>`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import click

from storyreel.models import presets
from storyreel.models.specification import ModelSpecification

MODEL_OPTION_NAMES = ("models", "model_config", "base", "motion_adapter", "controlnet", "vae", "depth_model")
_SOURCE = "a hub id (org/name, org/name/subfolder, @revision) or a local diffusers folder"


class PresetChoice(click.Choice):
    """``click.Choice`` of the registry's presets, whose message says the value is not a preset and lists them."""

    def convert(self, value, param, ctx):
        if value in self.choices:
            return value
        self.fail(f"unknown --models value {value!r}; use one of {', '.join(self.choices)}", param, ctx)


def model_options(preset_option: bool = True) -> Callable[[Callable], Callable]:
    """The model flags (see the module docstring); ``preset_option=False`` leaves out ``--models`` (for a
    command that takes the preset as an argument)."""
    options = [
        click.option("--model-config", type=click.Path(path_type=Path, dir_okay=False), default=None,
                     metavar="FILE.toml",
                     help="TOML model config: a [components] table replacing components of the preset (base, "
                          "motion_adapter, controlnet, vae, tokenizer, text_encoder, unet, lora, lora_scale, "
                          "depth_model) and optionally the preset it is for; fetch-models writes one. Relative "
                          "paths in it are relative to the file."),
        click.option("--base", default=None, metavar="ID|DIR|FILE.safetensors",
                     help=f"SD1.5 base model (tokenizer, text encoder, VAE, UNet): {_SOURCE} in the SD1.5 layout, "
                          "or one SD1.5 checkpoint .safetensors in the original layout (local or "
                          "org/name/file.safetensors) [default: the preset's]."),
        click.option("--motion-adapter", default=None, metavar="ID|DIR|FILE.safetensors",
                     help=f"AnimateDiff motion adapter: {_SOURCE}, or one .safetensors file (local or "
                          "org/name/file.safetensors, as AnimateDiff-Lightning ships) [default: the preset's]."),
        click.option("--controlnet", default=None, metavar="ID|DIR",
                     help=f"Depth ControlNet: {_SOURCE} [default: the preset's]."),
        click.option("--vae", default=None, metavar="ID|DIR", help=f"VAE: {_SOURCE} [default: the base's]."),
        click.option("--depth-model", default=None, metavar="NAME|ID|DIR",
                     help="Depth model of the structure stage, as extract-depth --models takes (dpt-hybrid, "
                          "dpt-large, depth-anything-v2, tiny, a hub id or a local folder) [default: the "
                          "preset's: dpt-hybrid for the sd15 presets, tiny for tiny, dpt-hybrid-random for "
                          "sd15-random]."),
    ]
    if preset_option:
        options.insert(0, click.option(
            "--models", type=PresetChoice(presets.PRESET_NAMES), default=None,
            help=f"Model preset: its render models, their scheduler defaults and its depth model [default: the "
                 f"--model-config file's preset, else {presets.DEFAULT_PRESET}]."))

    def decorate(function: Callable) -> Callable:
        for option in reversed(options):
            function = option(function)
        return function

    return decorate


def model_specification(models: str | None = None, model_config: Path | None = None, base: str | None = None,
                        motion_adapter: str | None = None, controlnet: str | None = None, vae: str | None = None,
                        depth_model: str | None = None, default_preset: str | None = None,
                        **other_options: Any) -> ModelSpecification:
    """The :class:`ModelSpecification` of :func:`model_options` values (a command's other options are
    ignored, so ``model_specification(**options)`` works on all of them). ``default_preset`` is the preset
    when neither ``--models`` nor ``--model-config`` chose one (a bench's ``tiny``)."""
    if models is None and model_config is None:
        models = default_preset
    return ModelSpecification(preset=models, config_file=model_config, base=base, motion_adapter=motion_adapter,
                              controlnet=controlnet, vae=vae, depth_model=depth_model)
