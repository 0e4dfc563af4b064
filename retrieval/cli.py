"""``search-clips INDEX "a person riding a horse" -k 5``: find real footage whose motion fits a text."""

from __future__ import annotations

import json
from pathlib import Path

import click

from storyreel.command_line import IntRange, command, fail, offline_option
from storyreel.models import presets


def _table(results) -> str:
    header = ("rank", "score", "label", "file", "start-end")
    rows = [(str(i), f"{r.score:.3f}", r.label or "-", Path(r.path).name, f"{r.start:.2f}-{r.end:.2f}")
            for i, r in enumerate(results, start=1)]
    widths = [max(len(h), *(len(row[c]) for row in rows)) for c, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(lines)


@command("search-clips")
@offline_option()
@click.argument("index", type=click.Path(path_type=Path))
@click.argument("query")
@click.option("-k", "k", type=IntRange(min=1), default=5, show_default=True, help="How many results.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@click.option("--contact-sheet", type=click.Path(path_type=Path), help="Write a PNG of the top results.")
@click.option("--models", default=None,
              help=f"Query model, the same as the index's: a preset ({', '.join(presets.PRESET_NAMES)}: its CLIP "
                   "model) or an open_clip NAME:TAG as build-index takes [default: the index's].")
@click.option("--duration", type=float, default=None,
              help="Prefer segments whose clip has this many seconds of cut-free footage around them (a shot this "
                   "long plays them at their own speed).")
@click.option("--min-motion", type=float, default=None, help="Drop segments with a lower motion score.")
@click.option("--max-motion", type=float, default=None, help="Drop segments with a higher motion score.")
@click.option("--per-clip", type=IntRange(min=1), default=None, help="At most this many segments per clip.")
@click.option("--label-weight", type=float, default=0.05, show_default=True,
              help="Bonus per unit of label/caption word match.")
def main(index, query, k, as_json, contact_sheet, models, duration, min_motion, max_motion, per_clip, label_weight):
    """Search the index folder INDEX for segments matching QUERY."""
    from retrieval.clip_models import ModelSpec
    from retrieval.library import Library
    from retrieval.reranking import RerankOptions

    try:
        options = RerankOptions(
            label_weight=label_weight, duration=duration, max_per_clip=per_clip,
            motion_range=None if min_motion is None and max_motion is None else (min_motion, max_motion),
        )
        model = None if models is None else str(ModelSpec.parse(models))  # a preset → its CLIP model
        with Library.open(index, model=model) as library:  # IndexFormatError, ModelLoadError: "error: ..."
            results = library.search(query, k, options)
    except ValueError as exc:
        fail(str(exc))
    if as_json:
        keys = ("score", "label", "caption", "path", "start", "end", "segment_id", "clip_score", "motion_score",
                "scene_start", "scene_end")
        click.echo(json.dumps([{"rank": i, **{key: getattr(r, key) for key in keys}}
                               for i, r in enumerate(results, start=1)], indent=2))
    else:
        click.echo(_table(results) if results else "no results")
    if contact_sheet is not None and results:
        from retrieval.contact_sheet import draw_contact_sheet

        draw_contact_sheet(results, contact_sheet, title=f'"{query}"  ({index})')
        click.echo(f"contact sheet: {contact_sheet}", err=as_json)


if __name__ == "__main__":
    main()
