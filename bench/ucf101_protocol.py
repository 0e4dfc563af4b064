"""Animate-A-Story's UCF-101 zero-shot protocol: FVD/KVD of class-name renders against real UCF-101 clips.

See :mod:`evaluation.ucf101_protocol` for the steps. Build the index over UCF-101 first, so the footage is
UCF-101's (``build-index UCF-101/ --out ucf-index``), then::

    .venv/bin/python bench/ucf101_protocol.py --ucf-root UCF-101/ --index ucf-index --out ucf-protocol \\
        --videos-per-class 10 --models sd15
    # the quick check on the two UCF-101 clips in ../shared/data/real_clips, tiny models (a minute on a CPU):
    .venv/bin/python bench/ucf101_protocol.py --ucf-root ../shared/data/real_clips --index demo-out/index \\
        --out /tmp/ucf-tiny --models tiny --metric-models tiny --videos-per-class 2 --size 64 --frames 8 --steps 2

The settings are written to ``OUT/protocol.json`` before anything renders, the distances to ``OUT/result.json``;
a rerun resumes the renders and reuses the cached features.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from evaluation.metric_models import METRIC_PRESET_NAMES
from evaluation.ucf101_protocol import ProtocolSettings, run_protocol
from storyreel.command_line import IntRange, command


@command("ucf101-protocol")
@click.option("--ucf-root", type=click.Path(path_type=Path), required=True, help="UCF-101 videos (any layout).")
@click.option("--index", type=click.Path(path_type=Path), required=True, help="An index built over UCF-101.")
@click.option("--out", type=click.Path(path_type=Path), required=True, help="Output folder (resumable).")
@click.option("--models", default="sd15", show_default=True, help="The render's model preset.")
@click.option("--metric-models", type=click.Choice(METRIC_PRESET_NAMES), default="real", show_default=True,
              help="The FVD feature extractor's preset.")
@click.option("--classes", default="", help="Comma-separated class names [default: every class found].")
@click.option("--videos-per-class", type=IntRange(min=1), default=10, show_default=True)
@click.option("--real-per-class", type=IntRange(min=1), default=10, show_default=True)
@click.option("--size", type=IntRange(min=64), default=256, show_default=True, help="Square render size.")
@click.option("--frames", type=IntRange(min=2), default=16, show_default=True)
@click.option("--steps", type=IntRange(min=1), default=None, help="Denoising steps [default: the preset's].")
@click.option("--tau", type=float, default=1.0, show_default=True)
@click.option("--seed", type=IntRange(min=0), default=0, show_default=True)
def main(ucf_root, index, out, models, metric_models, classes, videos_per_class, real_per_class, size, frames, steps,
         tau, seed):
    """Render UCF-101 classes from their names with retrieved UCF-101 depth; FVD/KVD against real clips."""
    settings = ProtocolSettings(ucf_root=str(ucf_root), index=str(index), out=str(out), models=models,
                                metric_models=metric_models,
                                classes=tuple(c.strip() for c in classes.split(",") if c.strip()),
                                videos_per_class=videos_per_class, real_per_class=real_per_class, width=size,
                                height=size, frames=frames, tau=tau, steps=steps, seed=seed)
    result = run_protocol(settings, echo=click.echo)
    click.echo(f"FVD {result['fvd']}, KVD {result['kvd']} ({result['rendered_videos']} rendered, "
               f"{result['real_videos']} real, features {result['video_features']}); {out}/result.json")


if __name__ == "__main__":
    main()
