"""``plan-story passage.txt --out storyboard.json``: prose → a storyboard with motion queries and captions.

Writes the storyboard (format v1) and, beside it, ``<out stem>.plan.json``: per shot the backend that
planned it, the requests made, cache hits and why a shot fell back to the rules planner. Both are written
atomically, and only once everything has been checked and planned: bad input (a missing or empty passage,
a bad characters file, bad flags) is reported as ``error: ...`` naming the file and field, with exit code
2, and nothing is written. The API key is never printed or written.
"""

from __future__ import annotations

import time
from pathlib import Path

import click

from storyboard.plan_job import PlanStoryJob
from storyreel.command_line import FloatRange, IntRange, command, fail, offline_option, quiet_option


def report_path(out: Path) -> Path:
    """Where the plan report of storyboard ``out`` goes: ``story.json`` → ``story.plan.json``."""
    return out.with_name(f"{out.stem if out.suffix else out.name}.plan.json")


@command("plan-story")
@offline_option()
@click.argument("passage", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), required=True,
              help="The storyboard file to write; the plan report goes beside it (<stem>.plan.json).")
@click.option("--llm", "backend", type=click.Choice(["rules", "openai", "local"]), default=None,
              help="Planner backend [default: openai when a base URL is configured, else rules].")
@click.option("--shots", type=IntRange(min=1), default=None,
              help="At most this many shots (neighbouring events are joined).")
@click.option("--characters", type=click.Path(path_type=Path), default=None,
              help="Characters file: name → {token, class_word, embedding, body, aliases} "
                   "[default: found in the text].")
@click.option("--style", default="", help="The story's visual style; every caption ends with it.")
@click.option("--title", default=None, help="The story's title [default: the passage's title line, or its file name].")
@click.option("--width", type=int, default=512, show_default=True, help="Frame width (multiple of 8).")
@click.option("--height", type=int, default=512, show_default=True, help="Frame height (multiple of 8).")
@click.option("--frames", type=int, default=16, show_default=True, help="Frames per shot.")
@click.option("--fps", type=float, default=8.0, show_default=True, help="Frames per second.")
@click.option("--steps", type=int, default=None,
              help="Denoising steps [default: the render model preset's: 25 for sd15, 4 for sd15-lightning].")
@click.option("--seed", type=int, default=0, show_default=True, help="The story's seed.")
@click.option("--negative-prompt", default=None, help="The story's negative prompt [default: the format's].")
@click.option("--llm-base-url", default=None,
              help="OpenAI-compatible endpoint, such as http://127.0.0.1:8000/v1 [env STORYREEL_LLM_BASE_URL, "
                   "OPENAI_BASE_URL].")
@click.option("--llm-model", default=None, help="Model name at the endpoint [env STORYREEL_LLM_MODEL].")
@click.option("--llm-api-key-env", default=None,
              help="Name of the environment variable holding the API key [default: STORYREEL_LLM_API_KEY, "
                   "then OPENAI_API_KEY].")
@click.option("--llm-model-path", type=click.Path(path_type=Path), default=None,
              help="--llm local: folder of a transformers chat model (safetensors) [env STORYREEL_LLM_MODEL_PATH].")
@click.option("--llm-max-new-tokens", type=IntRange(min=1), default=400, show_default=True,
              help="--llm local: the longest answer generated, in tokens.")
@click.option("--cache-dir", type=click.Path(path_type=Path), default=None,
              help="Answer cache of the openai backend [default: ~/.cache/storyreel/llm].")
@click.option("--no-cache", is_flag=True, help="Neither read nor write the answer cache.")
@click.option("--timeout", type=FloatRange(min=0, min_open=True, unit="seconds"), default=60.0, show_default=True,
              help="Seconds per LLM request.")
@click.option("--retries", type=IntRange(min=0), default=None,
              help="LLM attempts after the first, per shot [default: openai 3, local 1].")
@click.option("--backoff", type=FloatRange(min=0, unit="seconds"), default=1.0, show_default=True,
              help="Seconds before the first retry (doubled for each next one).")
@quiet_option("Print only errors.")
def main(**options):
    """Plan PASSAGE (a prose text file) into a storyboard: shots, motion queries, weighted captions."""
    job = PlanStoryJob(**options)
    job.validate()  # PlanStoryJobError: "error: --width: ..." (exit 2), nothing read or written
    run(job)


def run(job: PlanStoryJob) -> None:
    """Plan a validated job: read the passage and the characters file, plan, then write the storyboard and its
    report (both atomically, only once everything has been planned)."""
    from storyboard.errors import StoryboardError
    from storyboard.loading import save_storyboard
    from storyboard.openai_planner import PlannerSetupError
    from storyboard.passage_split import PassageError, read_passage
    from storyboard.planner import make_planner, plan_passage
    from storyboard.story_characters import load_characters_file
    from storyreel.atomic_files import write_json

    started = time.monotonic()
    passage, out, characters = Path(job.passage), Path(job.out), job.characters
    try:
        text = read_passage(passage)
    except PassageError as exc:
        fail(f"{passage}: {exc}")
    cast = None
    if characters is not None:
        try:
            cast, _ = load_characters_file(characters)
        except StoryboardError as exc:
            fail(str(exc).replace("\n", "\nerror: "))
    try:
        planner = make_planner(job.backend, **job.planner_options())
    except PlannerSetupError as exc:
        fail(f"--llm {job.backend or 'openai'}: {exc}")

    try:
        story, report = plan_passage(text.text, title=job.title or text.title or _title_from(passage), cast=cast,
                                     style=job.style, shots=job.shots, defaults=job.story_defaults(), planner=planner)
    except StoryboardError as exc:               # the plan itself does not validate: a planner bug, say so
        fail(f"the planned storyboard is invalid: {exc}")
    if cast is not None and characters is not None:
        story = _with_embedding_paths(story, Path(characters))
    report = {"passage": str(passage), "storyboard": str(out), **report,
              "seconds": round(time.monotonic() - started, 3)}
    save_storyboard(story, out)
    write_json(report_path(out), report)
    if not job.quiet:
        for record in report["shots"]:
            shot = next(s for s in story.shots if s.id == record["shot"])
            note = f" (fell back: {record['fallback']})" if record["fallback"] else ""
            note += " (cached)" if record["cached"] else ""
            click.echo(f"{record['shot']:<14} {record['backend']:<7} {shot.motion_query}{note}")
        counts = report["counts"]
        click.echo(f"planned {counts['shots']} shots ({', '.join(f'{k} {v}' for k, v in counts['by_backend'].items())}"
                   f"; {counts['fallbacks']} fallbacks, {counts['requests']} requests, {counts['cache_hits']} "
                   f"cached) → {out}, report {report_path(out)}")


def _title_from(passage: Path) -> str:
    words = passage.stem.replace("_", " ").replace("-", " ").split()
    return " ".join(word.capitalize() for word in words) or "Untitled story"


def _with_embedding_paths(story, characters: Path):
    """Embedding paths of a characters file are relative to its folder: give the storyboard that folder
    so that ``save_storyboard`` rewrites them relative to the output."""
    return story.attach_source(None, base_dir=characters.absolute().parent)


if __name__ == "__main__":
    main()
