"""``train-character --images DIR --name hare --token "<hare>" --class-word rabbit --out characters/hare.safetensors``.

Trains a character (TimeInv table + LoRA, :mod:`characters.training`) on the render model of a preset from
the model zoo (``--models``, :mod:`storyreel.models`) and the depth model the preset names, with validation
clips (:mod:`characters.validation`) every ``--validate-every`` steps. The character file is written only
when training has finished; bad input (a missing or empty folder, an image that cannot be decoded or is
too small, a token that is already a word, a checkpoint of other settings) exits with code 2 and a message
naming the file, before anything is written.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import click

from storyreel.models import presets


def _note(text: str) -> None:
    """A line on stderr that does not break the progress bar."""
    from tqdm.auto import tqdm

    tqdm.write(text, file=sys.stderr)


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(2)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--images", type=click.Path(path_type=Path), required=True,
              help="Folder of 3-20 reference images of the character (any size >= --resolution, any mode).")
@click.option("--name", required=True, help="Character name (letters, digits, '_' or '-'): the LoRA adapter's name.")
@click.option("--token", required=True, help="The character's new token in prompts, such as \"<hare>\".")
@click.option("--class-word", required=True, help="What the character is (rabbit, old man): initialises the token.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Character file to write (.safetensors).")
@click.option("--models", default="sd15", show_default=True,
              help="Render model preset: sd15, tiny or sd15-random (the character only works on this base model).")
@click.option("--model-config", type=click.Path(path_type=Path), default=None,
              help="TOML file replacing components of the preset ([components] base = ..., as render-story).")
@click.option("--depth-model", default=None,
              help="Depth model for the pseudo-videos [default: dpt-hybrid for sd15, tiny for tiny].")
@click.option("--steps", type=click.IntRange(min=1), default=1000, show_default=True, help="Training steps.")
@click.option("--rank", type=click.IntRange(min=1), default=8, show_default=True, help="LoRA rank.")
@click.option("--lora-targets", default="qkvo", show_default=True,
              help="Spatial attention projections with LoRA: letters of qkvo (query, key, value, output).")
@click.option("--resolution", type=click.IntRange(min=8), default=512, show_default=True,
              help="Training size (square, a multiple of 8); smaller reference images are refused.")
@click.option("--frames", type=click.IntRange(min=1), default=16, show_default=True,
              help="Frames per pseudo-video (the render's frame count).")
@click.option("--buckets", type=click.IntRange(min=1), default=None,
              help="Share the TimeInv table over this many timestep ranges [default: one row per timestep].")
@click.option("--table-lr", type=float, default=1e-4, show_default=True, help="Learning rate of the TimeInv table.")
@click.option("--lora-lr", type=float, default=1e-4, show_default=True, help="Learning rate of the LoRA.")
@click.option("--batch-size", type=click.IntRange(min=1), default=1, show_default=True, help="Videos per step.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed: the same seed gives the same character.")
@click.option("--reg-index", type=click.Path(path_type=Path), default=None,
              help="Index folder (build-index) to retrieve real clips of the class word from, for regularisation.")
@click.option("--reg-count", type=click.IntRange(min=1), default=200, show_default=True,
              help="Regularisation clips to retrieve (the paper used 200).")
@click.option("--reg-ratio", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              help="Share of training videos drawn from the regularisation clips.")
@click.option("--checkpoint-every", type=click.IntRange(min=0), default=100, show_default=True,
              help="Write a checkpoint every N steps (0: only at the end).")
@click.option("--checkpoint-dir", type=click.Path(path_type=Path), default=None,
              help="Checkpoint folder [default: OUT without .safetensors, plus .checkpoints].")
@click.option("--resume", is_flag=True, help="Continue from the checkpoint in the checkpoint folder.")
@click.option("--validate-every", type=click.IntRange(min=0), default=0, show_default=True,
              help="Render a validation GIF every N steps into CHECKPOINT_DIR/validation (0: never).")
@click.option("--validation-prompt", default=None,
              help="Prompt of the validation clips [default: \"a video of TOKEN CLASS_WORD\"].")
@click.option("--validation-steps", type=click.IntRange(min=1), default=20, show_default=True,
              help="Denoising steps of a validation clip.")
@click.option("--mixed-precision", type=click.Choice(["auto", "no", "fp16", "bf16"]), default="auto",
              show_default=True, help="CUDA only: fp16 (with loss scaling) or bf16 autocast; auto = fp16 on CUDA.")
@click.option("--gradient-checkpointing", is_flag=True,
              help="Recompute activations in the backward pass (less memory, more time).")
@click.option("--export-ti", type=click.Path(path_type=Path), default=None,
              help="Also write a plain textual-inversion embedding (time-averaged) for other SD1.5 tools.")
@click.option("--device", default=None, help="torch device [default: cuda if available, else cpu].")
@click.option("-q", "--quiet", is_flag=True, help="No progress bar.")
def main(images, name, token, class_word, out, models, model_config, depth_model, steps, rank, lora_targets,
         resolution, frames, buckets, table_lr, lora_lr, batch_size, seed, reg_index, reg_count, reg_ratio,
         checkpoint_every, checkpoint_dir, resume, validate_every, validation_prompt, validation_steps,
         mixed_precision, gradient_checkpointing, export_ti, device, quiet):
    """Train a character (TimeInv token + LoRA) from the reference images in --images."""
    import torch

    from characters.character_set import check_name
    from characters.errors import CharacterError
    from characters.reference_images import load_reference_images
    from characters.training import TrainingSettings

    for option, path in (("--out", out), ("--export-ti", export_ti)):
        if path is not None and path.suffix.lower() != ".safetensors":
            _fail(f"{option}: expected a .safetensors file, got '{path}'")
    if export_ti is not None and export_ti.resolve() == out.resolve():
        _fail("--export-ti must be another file than --out")
    if models not in presets.PRESETS:
        _fail(f"--models: unknown preset {models!r}; use one of {', '.join(presets.PRESET_NAMES)}")
    if reg_index is not None and not reg_index.is_dir():
        _fail(f"--reg-index: '{reg_index}' is not a folder (an index made by build-index)")
    checkpoint_dir = checkpoint_dir or out.with_name(out.name[: -len(out.suffix)] + ".checkpoints")
    device = torch.device(device) if device else (torch.device("cuda") if torch.cuda.is_available()
                                                  else torch.device("cpu"))
    if mixed_precision == "auto":
        mixed_precision = "fp16" if device.type == "cuda" else "no"
    if mixed_precision != "no" and device.type != "cuda":
        _fail(f"--mixed-precision {mixed_precision} needs a CUDA device (training runs on {device})")
    settings = TrainingSettings(name=name, token=token, class_word=class_word, steps=steps, rank=rank,
                                resolution=resolution, frames=frames, buckets=buckets, table_lr=table_lr,
                                lora_lr=lora_lr, lora_targets=lora_targets, seed=seed, batch_size=batch_size,
                                reg_ratio=reg_ratio, mixed_precision=mixed_precision,
                                gradient_checkpointing=gradient_checkpointing)
    try:
        check_name(name)
    except CharacterError as exc:
        _fail(f"--name: {exc}")
    try:
        settings.check()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            reference = load_reference_images(images, resolution)
        for warning in caught:
            click.echo(f"warning: {warning.message}", err=True)
    except CharacterError as exc:
        _fail(str(exc))

    from storyreel.models.loading import ModelConfigError, load_render_components
    from storyreel.errors import ModelLoadError
    from structure.depth_models import load_depth_model

    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mixed_precision, torch.float32)
    try:
        components = load_render_components(models, config_file=model_config, device=device, dtype=dtype)
        estimator = load_depth_model(depth_model or presets.PRESETS[models].depth_model, device=device, progress=False)
    except (ModelLoadError, ModelConfigError) as exc:
        _fail(str(exc))
    from storyreel.models.loading import base_model_record

    base_model = base_model_record(components)

    from retrieval.index_format import IndexFormatError

    try:
        run(components, estimator, reference, settings, out, checkpoint_dir=checkpoint_dir,
            checkpoint_every=checkpoint_every, resume=resume, base_model=base_model, reg_index=reg_index,
            reg_count=reg_count, validate_every=validate_every, validation_prompt=validation_prompt,
            validation_steps=validation_steps, export_ti=export_ti, progress=not quiet)
    except (CharacterError, IndexFormatError, ModelLoadError) as exc:  # bad input: nothing written at --out
        _fail(str(exc))


def run(components, estimator, reference, settings, out: Path, *, checkpoint_dir: Path, checkpoint_every: int,
        resume: bool, base_model: dict, reg_index: Path | None, reg_count: int, validate_every: int,
        validation_prompt: str | None, validation_steps: int, export_ti: Path | None, progress: bool) -> None:
    import time

    from characters.character_set import check_token
    from characters.pseudo_video import Augmentation, character_prompt, pseudo_video
    from characters.regularisation import RegularisationSet, retrieve_clips
    from characters.validation import make_validator
    from characters.training import train_character

    check_token(components.tokenizer, settings.token)  # before any clip is retrieved or step is run
    regularisation = None
    if reg_index is not None:
        clips = retrieve_clips(reg_index, settings.class_word, reg_count)
        click.echo(f"regularisation: {len(clips)} clips of 'a {settings.class_word}' from {reg_index}")
        regularisation = RegularisationSet(clips, settings.class_word, settings.frames, settings.resolution, estimator)
    validate = None
    if validate_every:
        prompt = validation_prompt or character_prompt(settings.token, settings.class_word)
        still = pseudo_video(reference[0].pixels, Augmentation(1.0, 0.5, 0.5, False), settings.resolution,
                             settings.frames, estimator, prompt)
        validate = make_validator(components, checkpoint_dir / "validation", prompt, "blurry, low quality",
                                  still.condition_frames(), validation_steps, settings.seed, 8.0, _note)
    began = time.perf_counter()
    character = train_character(components, estimator, reference, settings, out, checkpoint_dir=checkpoint_dir,
                                checkpoint_every=checkpoint_every, resume=resume, base_model=base_model,
                                regularisation=regularisation, validate=validate, validate_every=validate_every,
                                export_ti=export_ti, progress=progress, echo=_note)
    seconds = time.perf_counter() - began
    loss = character.training.get("final_loss")
    click.echo(f"trained '{character.name}' ({character.token}, {character.class_word}) for "
               f"{character.training['steps_done']} steps in {seconds:.1f} s"
               + (f", last loss {loss:.4f}" if loss is not None else "") + f": {out}"
               + (f" (textual inversion: {export_ti})" if export_ti else ""))


if __name__ == "__main__":
    main()
