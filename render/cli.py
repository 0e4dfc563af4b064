"""``render-story storyboard.json --index INDEX --out OUT [--models tiny]``: a storyboard → videos and a report."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

import click

from render.keyframes import DEFAULT_KEYFRAME_BATCH
from storyreel.command_line import command, named_paths, offline_option, quiet_option
from storyreel.models.model_options import model_options, model_specification


@command("render-story")
@offline_option()
@click.argument("storyboard", required=False, type=click.Path(path_type=Path))
@click.option("--index", type=click.Path(path_type=Path), default=None,
              help="Index folder (from `build-index`); needed unless every shot has a clip override.")
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="Output folder: shots/, story.mp4, storyboard.png, report.json.")
@model_options()
@click.option("--crossfade", type=float, default=0.0, show_default=True,
              help="Crossfade between shots in story.mp4, seconds.")
@click.option("--device", default=None, help="torch device [default: cuda if available, else cpu].")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: one process; ray: shots in parallel on Ray workers, one per GPU.")
@click.option("--workers", type=int, default=None,
              help="--engine ray: render workers [default: one per GPU, else 1].")
@click.option("--cpu-offload", is_flag=True,
              help="Keep the models on the CPU and move each to the GPU only while it is used (less GPU memory).")
@click.option("--character", "characters", multiple=True, metavar="NAME=FILE",
              help="Use this character file (from `train-character`) for the storyboard's character NAME; repeatable.")
@click.option("--llm", "planner", type=click.Choice(["rules", "openai", "local", "none"]), default=None,
              help="Planner for shots without a motion query or caption (as plan-story) [default: openai when "
                   "STORYREEL_LLM_BASE_URL is set, else rules]; none: use the shot's text for both.")
@click.option("--llm-base-url", default=None, help="OpenAI-compatible endpoint for --llm openai.")
@click.option("--llm-model", default=None, help="Model name at the endpoint [default: STORYREEL_LLM_MODEL].")
@click.option("--llm-model-path", type=click.Path(path_type=Path), default=None,
              help="Local chat model folder for --llm local.")
@click.option("--deterministic", is_flag=True,
              help="Bit-identical frames and videos run after run on this machine, a killed run resumed or not: one "
                   "CPU thread, torch's deterministic algorithms, deterministic cuDNN and cuBLAS (slower on a CPU). "
                   "Recorded in report.json; shots made without it are rendered again.")
@click.option("--allow-other-base", is_flag=True,
              help="Render characters trained on other base weights than the loaded ones (refused otherwise); "
                   "report.json records which.")
@click.option("--ip-adapter", "ip_adapter", default=None, metavar="hub|tiny|toy|DIR|FILE.safetensors",
              help="IP-Adapter weights for characters with reference_images: hub (h94/IP-Adapter), tiny (random "
                   "weights), toy (trained on the toy world, for --models toy; base only), a local copy of the "
                   "hub's folder, or one .safetensors file [default: tiny for the tiny preset, toy for the toy "
                   "preset, hub otherwise].")
@click.option("--ip-adapter-variant", type=click.Choice(["base", "plus", "plus-face"]), default="base",
              show_default=True, help="Which h94 SD1.5 adapter: base (4 image tokens), plus or plus-face (16).")
@click.option("--sparsectrl", default=None, metavar="ID|DIR|tiny|toy",
              help="SparseCtrl RGB model for shots animated from a keyframe (\"keyframe\": true) and generated "
                   "transitions: a hub id, a local folder, tiny (random weights) or toy (trained on the toy world, "
                   "for --models toy) [default: tiny for the tiny preset, toy for the toy preset, "
                   "guoyww/animatediff-sparsectrl-rgb otherwise].")
@click.option("--animator", type=click.Choice(["sparsectrl", "i2vgen-xl"]), default="sparsectrl", show_default=True,
              help="What animates shots with \"keyframe\": true: SparseCtrl RGB with the depth ControlNet, or "
                   "diffusers' I2VGen-XL (EpicDiffusion's choice; no depth guidance), for comparison.")
@click.option("--i2vgen", default=None, metavar="ID|DIR|tiny",
              help="I2VGen-XL for --animator i2vgen-xl [default: tiny for the tiny preset, ali-vilab/i2vgen-xl "
                   "otherwise].")
@click.option("--keyframes-only", is_flag=True,
              help="Render each shot's first frame as a picture (OUT/keyframes/<id>.png) and a sheet of them "
                   "(OUT/keyframes.png), not the videos: a preview in seconds (see render/keyframes.py).")
@click.option("--keyframe-batch", type=click.IntRange(min=1), default=DEFAULT_KEYFRAME_BATCH, show_default=True,
              help="Keyframes made in one sampler call at most (those with the same size, steps, guidance, tau, "
                   "scheduler and characters): a GPU makes 8 in little more time than 1. 1: one at a time.")
@click.option("--sweep", "sweep_text", default=None, metavar="NAME=V1,V2,...",
              help="Render the story once per value of a storyboard default (tau, guidance, steps, seed, eta), into "
                   "OUT/sweep/NAME=VALUE/, retrieving footage and computing depth once; compare the variants with "
                   "`evaluate-story OUT/sweep/*`.")
@quiet_option("No progress bars.", no_progress_alias=True)
@click.option("--schema", is_flag=True, help="Print the storyboard JSON Schema and exit.")
def main(storyboard, index, out, crossfade, device, engine, workers, cpu_offload, characters, planner,
         llm_base_url, llm_model, llm_model_path, deterministic, allow_other_base, ip_adapter, ip_adapter_variant,
         sparsectrl, animator, i2vgen, keyframes_only, keyframe_batch, sweep_text, quiet, schema, **model_flags):
    """Render STORYBOARD (a storyboard JSON file) shot by shot; rerunning skips unchanged shots."""
    if schema:
        from storyboard import storyboard_json_schema

        click.echo(json.dumps(storyboard_json_schema(), indent=2))
        return
    if storyboard is None:
        raise click.UsageError("give a STORYBOARD file (or --schema)")
    if out is None:
        raise click.UsageError("give --out OUT, the output folder")

    character_files = named_paths("--character", characters, "NAME=FILE", "hare=characters/hare.safetensors")

    from render.story import StoryOptions, prepare_story, render_story

    models = model_specification(**model_flags)
    options = StoryOptions(storyboard=storyboard, out=out, index=index, models=models, crossfade=crossfade,
                           device=device, progress=not quiet, engine=engine, workers=workers,
                           cpu_offload=cpu_offload, character_files=character_files, planner=planner,
                           planner_options={k: v for k, v in (("base_url", llm_base_url), ("model", llm_model),
                                                              ("model_path", llm_model_path)) if v is not None},
                           deterministic=deterministic, allow_other_base=allow_other_base, ip_adapter=ip_adapter,
                           ip_adapter_variant=ip_adapter_variant, sparsectrl=sparsectrl, animator=animator,
                           i2vgen=i2vgen, keyframe_batch=keyframe_batch)
    if sweep_text is not None:
        _sweep(options, sweep_text)
        return
    plan = prepare_story(options)  # StoryInputError: "error: ..." (exit 2), nothing loaded or written
    if keyframes_only:
        from render.story import render_keyframes

        with _shot_failures():
            result = render_keyframes(plan, echo=click.echo)
        click.echo(f"keyframes: rendered {len(result['rendered'])}, skipped {len(result['skipped'])} (unchanged); "
                   f"sheet {result['sheet']}")
        return
    with _shot_failures():
        report = render_story(plan, echo=click.echo)
    click.echo(f"rendered {len(report['rendered'])}, skipped {len(report['skipped'])} "
               f"(unchanged) in {report['seconds']:.1f} s; outputs in {out}/")


@contextlib.contextmanager
def _shot_failures():
    """A shot that cannot be made: ``error: ...`` and exit 1 (finished shots are kept); a
    :class:`~storyreel.errors.StoryreelError` (another run holds --out, models that cannot be loaded, a character
    made for other models or other base weights) goes on to the command's ``error: ...`` and exit 2."""
    from storyreel.errors import StoryreelError

    try:
        yield
    except StoryreelError:
        raise
    except (RuntimeError, ValueError, OSError) as exc:
        click.echo(f"error: {exc} (finished shots are kept; rerun to resume)", err=True)
        sys.exit(1)


def _sweep(options, sweep_text: str) -> None:
    """--sweep: every variant checked, then rendered in turn."""
    from render.story import prepare_sweep, render_sweep
    from storyboard.sweep import SettingSweep

    sweep = SettingSweep.parse(sweep_text)  # OptionError: "error: --sweep: ..." (exit 2)
    plans = prepare_sweep(options, sweep)  # StoryInputError: "error: ..." (exit 2), nothing loaded or written
    with _shot_failures():
        reports = render_sweep(plans, echo=click.echo)
    for plan, report in zip(plans, reports):
        click.echo(f"{plan.out.name}: rendered {len(report['rendered'])}, skipped {len(report['skipped'])}")
    click.echo(f"outputs in {options.out}/sweep/; compare them with: evaluate-story {options.out}/sweep/*")


if __name__ == "__main__":
    main()
