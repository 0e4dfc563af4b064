"""Action: is the shot's action the footage's action? (EpicDiffusion's evaluation)

Recipe: a Kinetics-400 video classifier (VideoMAE or TimeSformer through transformers; the toy preset's zero-shot
CLIP) classifies the rendered shot. ``top1`` and ``top5`` say whether the footage's library label is the first,
or among the first five, of its answers; they are None when the footage has no label or the label is not one of
the classifier's classes (a folder-tree library's labels are its folder names). ``agrees_with_footage`` needs no
label: the classifier runs on the footage too, and the shot agrees when both get the same first answer
(``footage_top1_in_top5``: the footage's first answer is among the render's first five).
"""

from __future__ import annotations

import re

from evaluation.metric_models import VideoPredictions

RECIPE = ("top-1/top-5 of the footage's label among a Kinetics-400 classifier's answers for the render "
          "(EpicDiffusion); agreement of the render's and the footage's first answers")
TOP_K = 5


def label_key(label: str) -> str:
    """Labels compare without case, underscores or extra spaces (``playing_guitar`` = ``Playing guitar``)."""
    return re.sub(r"\s+", " ", label.replace("_", " ")).strip().lower()


def action_scores(render: VideoPredictions, footage: VideoPredictions | None, label: str | None,
                  classes: list[str]) -> dict:
    """The action record of one shot (see the module docstring)."""
    known = {label_key(name) for name in classes}
    record = {"label": label, "predicted": render.labels[:TOP_K],
              "probabilities": [round(p, 6) for p in render.probabilities[:TOP_K]], "top1": None, "top5": None}
    if label is None:
        record["note"] = "the footage has no label"
    elif label_key(label) not in known:
        record["note"] = f"the footage's label {label!r} is not one of the classifier's classes"
    else:
        ranked = [label_key(name) for name in render.labels]
        record["top1"] = ranked[:1] == [label_key(label)]
        record["top5"] = label_key(label) in ranked[:TOP_K]
    if footage is not None and footage.labels:
        record["footage_predicted"] = footage.labels[0]
        record["agrees_with_footage"] = render.labels[:1] == footage.labels[:1]
        record["footage_top1_in_top5"] = footage.labels[0] in render.labels[:TOP_K]
    return record
