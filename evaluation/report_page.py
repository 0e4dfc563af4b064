"""``OUT/eval/report.html``: one self-contained page (pictures inlined as PNG) of a story's metrics.

For the story: its metric models, the summary table and a chart of the main figures per shot. Per shot: a strip
of its rendered frames over the footage frames and the guide depth at the same moments (from the shot's preview,
so nothing is decoded or estimated again) and its scores. With other folders (``--against``): a table of the
summaries side by side with the differences from the first folder, the per-shot differences, and a chart of each
metric across the folders (against the swept value when the folders are named ``name=value``, as
``render-story --sweep`` names them). Charts are matplotlib's (Agg backend).
"""

from __future__ import annotations

import base64
import html
import io
import re
from pathlib import Path

import numpy as np

from evaluation.story_evaluation import shot_figure, shots_by_id
from storyreel.atomic_files import write_bytes

REPORT_FILE = "report.html"
STRIP_TILE = 128  # the page's frame tiles are this high: small for 512x512 renders, visible for 64x64 ones
CHART_METRICS = ("clip_t", "dino_subject", "flicker", "depth_correlation", "flow_correlation", "agrees_with_footage")
SHOT_ROWS = (("text", "clip_t"), ("consistency", "dino_subject"), ("consistency", "clip_background"),
             ("consistency", "flicker"), ("structure", "depth_abs_rel"), ("structure", "depth_correlation"),
             ("structure", "flow_correlation"), ("structure", "flow_epe"), ("action", "top1"), ("action", "top5"),
             ("action", "agrees_with_footage"))
_SWEEP_NAME = re.compile(r"^(?P<name>[a-z_]+)=(?P<value>-?[0-9.]+)$")
_STYLE = """body{font-family:sans-serif;margin:2em;max-width:1100px}table{border-collapse:collapse;margin:.5em 0}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f3f3f3}td:first-child,th:first-child
{text-align:left}img{max-width:100%}.shot{margin:2em 0;border-top:1px solid #ddd}.note{color:#777;font-size:90%}
.worse{color:#b00}.better{color:#070}"""
LOWER_IS_BETTER = {"depth_abs_rel", "flow_epe", "mean_abs_diff", "fvd", "kvd"}


def png_data(figure_or_pixels) -> str:
    """A data URI of a matplotlib figure or of ``H x W x 3`` uint8 pixels."""
    buffer = io.BytesIO()
    if isinstance(figure_or_pixels, np.ndarray):
        from PIL import Image

        Image.fromarray(figure_or_pixels).save(buffer, format="PNG")
    else:
        import matplotlib.pyplot as plt

        figure_or_pixels.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
        plt.close(figure_or_pixels)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def number(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)):
        return f"{value:.4g}"
    return html.escape(str(value))


def shot_strip(out: Path, safe_id: str, frames: np.ndarray) -> np.ndarray | None:
    """The render's frames over the footage's and the guide depth's at the preview's moments, or None without a
    preview."""
    from matplotlib import colormaps

    preview = out / "shots" / f"{safe_id}.preview.npz"
    if not preview.is_file():
        return None
    with np.load(preview) as data:
        footage, depth = data["retrieved"], data["depth"]
    picks = np.linspace(0, len(frames) - 1, len(footage)).round().astype(int)
    coloured = (colormaps["magma"](depth.astype(np.float32) / 255)[..., :3] * 255).astype(np.uint8)
    rows = [np.concatenate([_tile(image) for image in images], axis=1)
            for images in (frames[picks], footage, coloured)]
    return np.concatenate(rows, axis=0)


def _tile(image: np.ndarray) -> np.ndarray:
    from PIL import Image

    height, width = image.shape[:2]
    if height == STRIP_TILE:
        return image
    size = (max(1, round(width * STRIP_TILE / height)), STRIP_TILE)
    resample = Image.Resampling.LANCZOS if height > STRIP_TILE else Image.Resampling.NEAREST
    return np.asarray(Image.fromarray(image).resize(size, resample))


def summary_chart(metrics: dict):
    """Bars of the main figures per shot, one panel per metric."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_id = shots_by_id(metrics)
    shots = list(by_id)
    figure, axes = plt.subplots(1, len(CHART_METRICS), figsize=(3 * len(CHART_METRICS), 2.8), squeeze=False)
    for axis, key in zip(axes[0], CHART_METRICS):
        values = [shot_figure(by_id[shot], key) for shot in shots]
        axis.bar(range(len(shots)), [np.nan if v is None else float(v) for v in values], color="#4a7ab5")
        axis.set_xticks(range(len(shots)), shots, rotation=45, ha="right", fontsize=7)
        axis.set_title(key, fontsize=9)
    figure.tight_layout()
    return figure


def swept_setting(names: list[str]) -> dict | None:
    """``{"name", "values"}`` when every folder is named ``name=value`` for one name (a ``--sweep``), else None."""
    matches = [_SWEEP_NAME.match(name) for name in names]
    if not all(matches) or len({m["name"] for m in matches}) != 1:
        return None
    return {"name": matches[0]["name"], "values": [float(m["value"]) for m in matches]}


def comparison_chart(names: list[str], summaries: list[dict]):
    """Each metric across the compared folders: against the swept value when every folder is ``name=value``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweep = swept_setting(names)
    swept = sweep is not None
    x = sweep["values"] if swept else list(range(len(names)))
    order = np.argsort(x)
    keys = [key for key in CHART_METRICS if any(s.get(key) is not None for s in summaries)]
    figure, axes = plt.subplots(1, max(len(keys), 1), figsize=(3 * max(len(keys), 1), 2.8), squeeze=False)
    for axis, key in zip(axes[0], keys):
        values = [np.nan if summaries[i].get(key) is None else float(summaries[i][key]) for i in order]
        axis.plot([x[i] for i in order], values, marker="o", color="#b5544a")
        axis.set_title(key, fontsize=9)
        if swept:
            axis.set_xlabel(sweep["name"])
        else:
            axis.set_xticks(x, names, rotation=45, ha="right", fontsize=7)
    figure.tight_layout()
    return figure


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _difference(key: str, value, base) -> str:
    if value is None or base is None or isinstance(value, bool):
        return ""
    delta = float(value) - float(base)
    if delta == 0:
        return " (±0)"
    better = (delta < 0) == (key in LOWER_IS_BETTER)
    return f' <span class="{"better" if better else "worse"}">({delta:+.3g})</span>'


def comparison_section(names: list[str], all_metrics: list[dict]) -> str:
    """The side-by-side table of the summaries, the per-shot differences and the chart."""
    summaries = [m["summary"] for m in all_metrics]
    keys = list(summaries[0])
    rows = [[key] + [number(s.get(key)) + (_difference(key, s.get(key), summaries[0].get(key)) if i else "")
                     for i, s in enumerate(summaries)] for key in keys]
    parts = ["<h2>Side by side</h2>", _table(["metric"] + names, rows),
             f'<img src="{png_data(comparison_chart(names, summaries))}">', "<h3>Per shot</h3>"]
    tables = [shots_by_id(m) for m in all_metrics]
    shots = [shot for shot in tables[0] if all(shot in table for table in tables[1:])]
    for section, key in SHOT_ROWS:
        cells = []
        for shot in shots:
            base = tables[0][shot][section].get(key)
            cells.append([shot] + [number(table[shot][section].get(key))
                                   + (_difference(key, table[shot][section].get(key), base) if i else "")
                                   for i, table in enumerate(tables)])
        parts += [f"<p><b>{key}</b></p>", _table(["shot"] + names, cells)]
    return "\n".join(parts)


def write_report_page(story, metrics: dict, compared: list[tuple[str, dict]] | None = None) -> Path:
    """Write ``eval/report.html`` of ``story`` (a :class:`evaluation.story_output.RenderedStory`) for ``metrics``
    (and the comparison with ``compared``: name → metrics)."""
    out = story.out
    title = metrics["story"].get("title") or Path(metrics["story"]["out"]).name
    models = metrics["models"]
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}: evaluation</title>"
             f"<style>{_STYLE}</style></head><body>", f"<h1>{html.escape(title)}</h1>",
             f"<p class='note'>{html.escape(str(out))} · {metrics['story']['shots']} shots</p>",
             "<h2>Models</h2>", _table(["metric", "model", "recipe"],
                                       [[key, html.escape(str(entry['model'])), html.escape(entry["recipe"])]
                                        for key, entry in metrics["metrics"].items()]),
             "<h2>Summary</h2>", _table(["metric", "mean over shots"],
                                        [[key, number(value)] for key, value in metrics["summary"].items()])]
    for name, entry in metrics["characters"].items():
        parts.append(f"<p>character <b>{html.escape(name)}</b>: CLIP-I {number(entry['clip_i'])}, DINO-I "
                     f"{number(entry['dino_i'])}, across shots {number(entry['across_shots']['mean'])}</p>")
    dist = metrics["distribution"]
    parts.append(f"<p>FVD {number(dist['fvd'])}, KVD {number(dist['kvd'])} ({dist['rendered_videos']} rendered "
                 f"against {dist['real_videos']} real: {html.escape(dist['real_source'])}; features "
                 f"{html.escape(str(models['video_features']))}) <span class='note'>"
                 f"{html.escape(dist.get('note', ''))}</span></p>")
    parts.append(f'<img src="{png_data(summary_chart(metrics))}">')
    if compared:
        parts.append(comparison_section([Path(metrics["story"]["out"]).name] + [n for n, _ in compared],
                                        [metrics] + [m for _, m in compared]))
    parts.append("<h2>Shots</h2>")
    for shot in story.shots:
        scores = shots_by_id(metrics).get(shot.id)
        if scores is None:
            continue
        parts.append(f"<div class='shot'><h3>{html.escape(shot.id)}</h3><p>{html.escape(scores['text']['caption'])}"
                     f" <span class='note'>tau {number(scores['tau'])}, footage label "
                     f"{html.escape(str(scores['label']))}</span></p>")
        strip = shot_strip(out, shot.safe_id, shot.frames())
        if strip is not None:
            parts.append(f'<img src="{png_data(strip)}"><p class="note">rows: render, footage, guide depth</p>')
        rows = [[key, number(scores[section].get(key))] for section, key in SHOT_ROWS]
        rows += [[f"{name}: CLIP-I / DINO-I", f"{number(e['clip_i'])} / {number(e['dino_i'])}"]
                 for name, e in scores["identity"].items()]
        rows.append(["predicted action", html.escape(", ".join(scores["action"]["predicted"][:3]))])
        parts.append(_table(["metric", "value"], rows) + "</div>")
    parts.append("</body></html>")
    path = Path(out) / "eval" / REPORT_FILE
    write_bytes(path, "\n".join(parts).encode())
    return path
