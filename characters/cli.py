"""``train-character --images DIR --name hare --token "<hare>" --class-word rabbit --out characters/hare.safetensors``.

Trains a character (TimeInv table + LoRA, :mod:`characters.training`) on the render models the model zoo's
flags name (``--models``, ``--model-config``, ``--base``, ... : :mod:`storyreel.models.model_options`) and
their depth model, with validation
clips (:mod:`characters.validation`) every ``--validate-every`` steps. The character file is written only
when training has finished; bad input (a missing or empty folder, an image that cannot be decoded or is
too small, a token that is already a word, a checkpoint of other settings, a model value that cannot be used)
exits with code 2 and a message naming the file or flag, before anything is written.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import click

from characters.lora_targets import DEFAULT_LORA_TARGETS
from characters.training_job import TrainCharacterJob
from storyreel.command_line import FloatRange, IntRange, command, offline_option, quiet_option
from storyreel.models.model_options import model_options


def _note(text: str) -> None:
    """A line on stderr that does not break the progress bar."""
    from tqdm.auto import tqdm

    tqdm.write(text, file=sys.stderr)


@command("train-character")
@offline_option()
@click.option("--images", type=click.Path(path_type=Path), required=True,
              help="Folder of 3-20 reference images of the character (any size >= --resolution, any mode).")
@click.option("--name", required=True, help="Character name (letters, digits, '_' or '-'): the LoRA adapter's name.")
@click.option("--token", required=True, help="The character's new token in prompts, such as \"<hare>\".")
@click.option("--class-word", required=True, help="What the character is (rabbit, old man): initialises the token.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Character file to write (.safetensors).")
@model_options()  # the character only works on the base model it was trained on
@click.option("--steps", type=IntRange(min=1), default=1000, show_default=True, help="Training steps.")
@click.option("--rank", type=IntRange(min=1), default=8, show_default=True, help="LoRA rank.")
@click.option("--lora-targets", default=DEFAULT_LORA_TARGETS, show_default=True,
              help="Spatial attention projections with LoRA: letters of qkvo (query, key, value, output); "
                   "qkv is the paper's, qkvo adds the output projection.")
@click.option("--resolution", type=IntRange(min=8), default=512, show_default=True,
              help="Training size (square, a multiple of 8); smaller reference images are refused.")
@click.option("--frames", type=IntRange(min=1), default=16, show_default=True,
              help="Frames per pseudo-video (the render's frame count).")
@click.option("--buckets", type=IntRange(min=1), default=None,
              help="Share the TimeInv table over this many timestep ranges [default: one row per timestep, the "
                   "paper's; rows no step trains are interpolated from trained neighbours].")
@click.option("--table-lr", type=FloatRange(min=0, min_open=True), default=1e-4, show_default=True,
              help="Learning rate of the TimeInv table.")
@click.option("--lora-lr", type=FloatRange(min=0, min_open=True), default=1e-4, show_default=True,
              help="Learning rate of the LoRA.")
@click.option("--batch-size", type=IntRange(min=1), default=1, show_default=True, help="Videos per step.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed: the same seed gives the same character.")
@click.option("--reg-index", type=click.Path(path_type=Path), default=None,
              help="Index folder (build-index) to retrieve real clips of the class word from, for regularisation.")
@click.option("--reg-count", type=IntRange(min=1), default=200, show_default=True,
              help="Regularisation clips to retrieve (the paper used 200).")
@click.option("--reg-ratio", type=FloatRange(0, 1), default=0.5, show_default=True,
              help="Share of training videos drawn from the regularisation clips.")
@click.option("--checkpoint-every", type=IntRange(min=0), default=100, show_default=True,
              help="Write a checkpoint every N steps (0: only at the end).")
@click.option("--checkpoint-dir", type=click.Path(path_type=Path), default=None,
              help="Checkpoint folder [default: OUT without .safetensors, plus .checkpoints].")
@click.option("--resume", is_flag=True, help="Continue from the checkpoint in the checkpoint folder.")
@click.option("--validate-every", type=IntRange(min=0), default=0, show_default=True,
              help="Render a validation GIF every N steps into CHECKPOINT_DIR/validation (0: never).")
@click.option("--validation-prompt", default=None,
              help="Prompt of the validation clips [default: \"a video of TOKEN CLASS_WORD\"].")
@click.option("--validation-steps", type=IntRange(min=1), default=20, show_default=True,
              help="Denoising steps of a validation clip.")
@click.option("--depth-tau", type=FloatRange(0, 1), default=None,
              help="Train without depth at the timesteps a render with this tau runs without it (t < (1 - TAU) x "
                   "the training timesteps; off by default: every step conditions on depth, as in the paper). Use "
                   "it when the character will be rendered with tau below 1 (the storyboard's tau, 0.5 unless set), "
                   "so its late, unguided denoising steps see the LoRA and TimeInv rows trained as they are used; "
                   "leave it off for renders that guide every step with depth (tau 1).")
@click.option("--mixed-precision", type=click.Choice(["auto", "no", "fp16", "bf16"]), default="auto",
              show_default=True, help="CUDA only: fp16 (with loss scaling) or bf16 autocast; auto = fp16 on CUDA.")
@click.option("--gradient-checkpointing", is_flag=True,
              help="Recompute activations in the backward pass: at 512x512 x 16 frames in fp16, 18 GiB of "
                   "GPU memory instead of 36 for 1.2x the time (H200, docs/BENCHMARKS.md); use it below 40 GiB.")
@click.option("--export-ti", type=click.Path(path_type=Path), default=None,
              help="Also write a plain textual-inversion embedding (time-averaged) for other SD1.5 tools.")
@click.option("--device", default=None, help="torch device [default: cuda if available, else cpu].")
@quiet_option("No progress bar.")
def main(**options):
    """Train a character (TimeInv token + LoRA) from the reference images in --images."""
    job = TrainCharacterJob(**options)
    job.validate()  # TrainCharacterJobError, CharacterError: "error: ..." (exit 2), nothing loaded or written
    run(job)


def run(job: TrainCharacterJob) -> None:
    """Train a validated job: reference images, then the preset's models, then training; the character file
    is written at the end. Bad input (CharacterError, IndexFormatError, ModelLoadError) leaves --out alone."""
    import time

    import torch

    from characters.character_set import check_token
    from characters.pseudo_video import Augmentation, character_prompt, pseudo_video
    from characters.reference_images import load_reference_images
    from characters.regularisation import RegularisationSet, retrieve_clips
    from characters.training import train_character
    from characters.validation import make_validator
    from storyreel.models.loading import base_model_record, load_render_components
    from structure.depth_models import load_depth_model

    settings = job.settings()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        reference = load_reference_images(job.images, job.resolution)
    for warning in caught:
        click.echo(f"warning: {warning.message}", err=True)

    from storyreel.hub_access import ensure_available
    from storyreel.models.hub_models import depth_models, render_models

    # offline: every missing model named at once, before any loads
    ensure_available(render_models(job.model_specification().validate(), depth=False)
                     + depth_models(job.depth_model_spec()))
    device = job.torch_device()
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(settings.mixed_precision, torch.float32)
    components = load_render_components(job.model_specification(), device=device, dtype=dtype)
    estimator = load_depth_model(job.depth_model_spec(), device=device, progress=False)
    checkpoint_dir = job.checkpoints()

    check_token(components.tokenizer, settings.token)  # before any clip is retrieved or step is run
    regularisation = None
    if job.reg_index is not None:
        clips = retrieve_clips(job.reg_index, settings.class_word, job.reg_count)
        click.echo(f"regularisation: {len(clips)} clips of 'a {settings.class_word}' from {job.reg_index}")
        regularisation = RegularisationSet(clips, settings.class_word, settings.frames, settings.resolution, estimator)
    validate = None
    if job.validate_every:
        prompt = job.validation_prompt or character_prompt(settings.token, settings.class_word)
        still = pseudo_video(reference[0].pixels, Augmentation(1.0, 0.5, 0.5, False), settings.resolution,
                             settings.frames, estimator, prompt)
        validate = make_validator(components, checkpoint_dir / "validation", prompt, "blurry, low quality",
                                  still.condition_frames(), job.validation_steps, settings.seed, 8.0, _note)
    began = time.perf_counter()
    character = train_character(components, estimator, reference, settings, job.out, checkpoint_dir=checkpoint_dir,
                                checkpoint_every=job.checkpoint_every, resume=job.resume,
                                base_model=base_model_record(components), regularisation=regularisation,
                                validate=validate, validate_every=job.validate_every, export_ti=job.export_ti,
                                progress=not job.quiet, echo=_note)
    seconds = time.perf_counter() - began
    loss = character.training.get("final_loss")
    click.echo(f"trained '{character.name}' ({character.token}, {character.class_word}) for "
               f"{character.training['steps_done']} steps in {seconds:.1f} s"
               + (f", last loss {loss:.4f}" if loss is not None else "") + f": {job.out}"
               + (f" (textual inversion: {job.export_ti})" if job.export_ti else ""))
    report_coverage(character, settings.steps * settings.batch_size)


RENDER_STEPS = 25  # the render length the coverage warning checks


def report_coverage(character, videos: int) -> None:
    """Print the TimeInv coverage (stdout) and warn (stderr) when a ``RENDER_STEPS``-step DDIM, Euler or DPM++
    render reads a row no training step updated (in the file it is derived from its trained neighbours)."""
    from characters.character_file import RENDER_SCHEDULERS

    coverage = character.coverage
    if coverage is None:
        return
    updates = coverage["updates"]
    trained = [count for count in updates if count > 0]
    click.echo(f"TimeInv coverage: {len(trained)} of {coverage['rows']} table rows trained (updates per trained row: "
               f"{min(trained, default=0)} to {max(trained, default=0)}, "
               f"{sum(trained) / max(len(trained), 1):.1f} on average)"
               + (f"; the other {coverage['derived_rows']} derived by {coverage['derivation']}"
                  if coverage["derived_rows"] else ""))
    read = character.untrained_rows_read(RENDER_STEPS, RENDER_SCHEDULERS)
    if any(read.values()):
        counts = ", ".join(f"{name}: {len(rows)}" for name, rows in read.items())
        suggestion = max(1, min(coverage["rows"] - 1, videos // 20))
        click.echo(f"warning: a {RENDER_STEPS}-step render reads table rows no training step updated ({counts}); "
                   f"they are derived from trained neighbours. Train longer, or share rows over "
                   f"timestep ranges with --buckets (--buckets {suggestion}: about 20 updates a row)", err=True)


if __name__ == "__main__":
    main()
