"""``evaluate-story OUT [OUT ...] [--against OTHER ...] [--references NAME=DIR ...] [--models real|toy|tiny]``.

Every metric for every shot of a ``render-story`` output folder, written to ``OUT/eval/metrics.json`` and
``OUT/eval/report.html``; with several folders (``--against``, or more than one OUT, such as
``OUT/sweep/*``), each is evaluated with the same models and the first one's page and ``comparison.json`` put
them side by side. Everything is checked (the folders, the reference images, the videos of ``--real-videos``)
before a model loads.
"""

from __future__ import annotations

from pathlib import Path

import click

from evaluation.metric_models import METRIC_PRESET_NAMES, METRIC_PRESETS, check_video_features, metric_preset
from storyreel.command_line import command, fail, named_paths, offline_option, quiet_option

AUTO = "auto"
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm")
TABLE_KEYS = ("clip_t", "dino_subject", "flicker", "depth_correlation", "flow_correlation", "agrees_with_footage")


def metric_preset_for(render_preset: str) -> str:
    """``auto``: the render's own small preset (``tiny``, ``toy``), else ``real``."""
    return render_preset if render_preset in ("tiny", "toy") else "real"


def real_video_files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        fail(f"--real-videos: no such folder '{folder}'")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file())
    if len(files) < 2:
        fail(f"--real-videos: '{folder}' holds {len(files)} video(s); FVD needs at least 2")
    return files


@command("evaluate-story")
@offline_option()
@click.argument("outs", nargs=-1, required=True, type=click.Path(path_type=Path), metavar="OUT [OUT ...]")
@click.option("--against", multiple=True, type=click.Path(path_type=Path), metavar="OTHER_OUT",
              help="Another render-story output folder to evaluate and put side by side with OUT; repeatable.")
@click.option("--references", "reference_items", multiple=True, metavar="NAME=DIR",
              help="Reference images of character NAME (CLIP-I, DINO-I); repeatable.")
@click.option("--models", "preset", type=click.Choice((AUTO, *METRIC_PRESET_NAMES)), default=AUTO, show_default=True,
              help="Metric models: real (CLIP ViT-B/32, DINO ViT-S/16, VideoMAE Kinetics-400; FVD on I3D when "
                   "$STORYREEL_I3D or ~/.cache/storyreel/i3d_kinetics400.safetensors holds its weights, else on "
                   "VideoMAE), toy, tiny; auto: tiny or toy when the story was rendered with it, else real.")
@click.option("--clip-model", default=None, help="open_clip model for CLIP-T and CLIP-I, e.g. ViT-L-14:openai.")
@click.option("--dino-model", default=None, help="DINO model: a timm name, or a local folder or .safetensors file.")
@click.option("--action-model", default=None,
              help="Video classifier: a transformers id or folder (VideoMAE, TimeSformer), or clip-zero-shot.")
@click.option("--video-features", default=None,
              help="FVD feature extractor: i3d:PATH.safetensors (the standard I3D, Kinetics-400; convert "
                   "pytorch-i3d's i3d_pretrained_400.pt with python -m evaluation.i3d_conversion), i3d-tiny (random "
                   "weights, tests), a video classifier id or folder (its pooled feature), or clip-frames.")
@click.option("--real-videos", type=click.Path(path_type=Path), default=None,
              help="A folder of real videos for FVD/KVD [default: the shots' own footage].")
@click.option("--device", default=None, help="torch device [default: cuda if available, else cpu].")
@quiet_option("No progress bars.")
def main(outs, against, reference_items, preset, clip_model, dino_model, action_model, video_features,
         real_videos, device, quiet):
    """Measure the rendered story in OUT: text alignment, identity, consistency, structure and motion fidelity,
    action and FVD/KVD, per shot and for the story."""
    from characters.reference_images import ReferenceImageError
    from evaluation.report_page import swept_setting, write_report_page
    from evaluation.story_evaluation import References, StoryEvaluator, write_metrics
    from evaluation.story_output import RenderedStory
    from storyreel.atomic_files import write_json

    # 1. check every input before a model loads
    folders = list(dict.fromkeys([*outs, *against]))
    stories = [RenderedStory.open(folder) for folder in folders]  # StoryOutputError: "error: ..." (exit 2)
    references = {}
    cast = sorted({name for story in stories for shot in story.shots for name in shot.characters})
    for name, folder in named_paths("--references", reference_items, "NAME=DIR",
                                    "hare=data/reference_images/hare").items():
        if name not in cast:
            fail(f"--references {name}={folder}: no shot has a character {name!r} "
                 f"(the characters: {', '.join(cast) or 'none'})")
        try:
            references[name] = References.read(folder)
        except ReferenceImageError as exc:
            fail(f"--references {name}={folder}: {exc}")
    real = real_video_files(real_videos) if real_videos is not None else None
    chosen = metric_preset_for(stories[0].report.models.preset) if preset == AUTO else preset
    base = METRIC_PRESETS[chosen] if video_features is not None else metric_preset(chosen)  # real: I3D or VideoMAE
    models = base.with_overrides(clip=clip_model, dino=dino_model, action=action_model, video_features=video_features)
    check_video_features(models.video_features)  # a missing or pickle I3D file: "error: ..." before any model

    # 2. evaluate each folder with the same models
    evaluator = StoryEvaluator(models, references=references, device=device, real_videos=real, progress=not quiet)
    results = []
    for story in stories:
        metrics = evaluator.evaluate(story)
        write_metrics(story.out, metrics)
        results.append((story, metrics))

    # 3. the pages, and the comparison in the first folder
    for index, (story, metrics) in enumerate(results):
        compared = [(s.out.name, m) for s, m in results[1:]] if index == 0 and len(results) > 1 else None
        page = write_report_page(story, metrics, compared)
        click.echo(f"wrote {story.out / 'eval' / 'metrics.json'} and {page}")
    if len(results) > 1:
        first = results[0][0].out
        write_json(first / "eval" / "comparison.json",
                   {"folders": [str(s.out) for s, _ in results],
                    "swept": swept_setting([s.out.name for s, _ in results]),
                    "summaries": {str(s.out): m["summary"] for s, m in results}})
        click.echo(f"wrote {first / 'eval' / 'comparison.json'}")
    computed = len(evaluator.computed)
    total = sum(len(s.shots) for s in stories)
    click.echo(f"{computed} of {total} shots computed, {total - computed} from the cache; metric models: {models.name}")
    for story, metrics in results:
        click.echo(summary_table(story.out, metrics))


def summary_table(out: Path, metrics: dict) -> str:
    """A plain-text table: a row per shot with the main figures, then the story's means."""
    from evaluation.story_evaluation import shot_figure, shots_by_id

    header = f"{out}\n  {'shot':<16}" + "".join(f"{key:>20}" for key in TABLE_KEYS)
    rows = [header]
    for shot, scores in shots_by_id(metrics).items():
        values = [shot_figure(scores, key) for key in TABLE_KEYS]
        rows.append(f"  {shot[:16]:<16}" + "".join(f"{_text(v):>20}" for v in values))
    rows.append(f"  {'(mean)':<16}" + "".join(f"{_text(metrics['summary'].get(key)):>20}" for key in TABLE_KEYS))
    return "\n".join(rows)


def _text(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return f"{value:.3f}"


if __name__ == "__main__":
    main()
