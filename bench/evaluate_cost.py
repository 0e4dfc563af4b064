"""What evaluate-story costs beside the render it measures, shot for shot, in one run.

Renders a storyboard with ``render-story`` (cold: a fresh output folder), then evaluates it with
``evaluate-story`` twice: cold (every metric computed) and warm (every shot from the cache). It prints the render's
and the evaluation's seconds per shot and their ratio. The baseline is the render; the metric models are the
preset's (``toy`` for the toy fable: the toy CLIP, the tiny DINO, the toy DPT, zero-shot action).

Run (from the repository root, after ``make demo`` has built demo-out/toy-index)::

    .venv/bin/python bench/evaluate_cost.py
    .venv/bin/python bench/evaluate_cost.py --storyboard data/examples/toy-fable.json --index demo-out/toy-index \\
        --models toy --references zuri=demo-out/zuri-references
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import click
from click.testing import CliRunner

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from evaluation.cli import main as evaluate_story  # noqa: E402 (after the repository is on the path)
from render.cli import main as render_story  # noqa: E402


def _run(command, args: list[str]) -> float:
    began = time.perf_counter()
    result = CliRunner().invoke(command, args, catch_exceptions=False)
    if result.exit_code != 0:
        raise SystemExit(result.output)
    return time.perf_counter() - began


@click.command()
@click.option("--storyboard", type=click.Path(path_type=Path), default=REPO_ROOT / "data/examples/toy-fable.json",
              show_default=True)
@click.option("--index", type=click.Path(path_type=Path), default=REPO_ROOT / "demo-out/toy-index", show_default=True)
@click.option("--models", default="toy", show_default=True, help="The render's preset (the metrics follow it).")
@click.option("--references", "references", multiple=True, default=("zuri=demo-out/zuri-references",),
              show_default=True)
@click.option("--threads", type=int, default=2, show_default=True)
def main(storyboard, index, models, references, threads):
    import torch

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "out"
        render_s = _run(render_story, [str(storyboard), "--index", str(index), "--out", str(out), "--models", models,
                                       "--no-progress"])
        shots = len(json.loads((out / "report.json").read_text())["shots"])
        refs = [arg for item in references for arg in ("--references", item)]
        cold_s = _run(evaluate_story, [str(out), *refs, "--quiet"])
        warm_s = _run(evaluate_story, [str(out), *refs, "--quiet"])
    click.echo(f"{shots} shots, --models {models}, {threads} threads")
    click.echo(f"render-story         {render_s:7.1f} s  {render_s / shots:6.2f} s/shot")
    click.echo(f"evaluate-story cold  {cold_s:7.1f} s  {cold_s / shots:6.2f} s/shot  ratio to the render "
               f"{cold_s / render_s:.2f}")
    click.echo(f"evaluate-story warm  {warm_s:7.1f} s  {warm_s / shots:6.2f} s/shot  ratio to the render "
               f"{warm_s / render_s:.2f}")


if __name__ == "__main__":
    main()
