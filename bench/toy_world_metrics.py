"""The toy world's figures: the committed toy models on held-out clips, and the index's cut detection.

* ``clip``: text → clip recall@1 of the toy CLIP (``toy_world.train_clip.clip_recall``: action queries such as
  "a figure jumping", kind + colour queries such as "a red hare"; targets 0.8 and 0.9);
* ``depth``: AbsRel of the toy DPT after per-frame least-squares scale and shift alignment, in inverse depth
  (``toy_world.train_depth.depth_metrics``; target 0.15);
* ``render``: what the toy render model does with the toy DPT's depth of held-out clips
  (:mod:`toy_world.render_checks`): the figure IoU between each render and its guide's figure for τ = 0, 0.25,
  0.5, 0.75, 1 (target ≥ 0.5 at τ = 1, falling as τ falls), and the share of shots whose figure has the
  caption's colour (target ≥ 0.8);
* ``identity``: the toy character (``toy_world.identity_checks``, trained with ``train-character --models toy``
  by ``make toy-world``) rendered over held-out hare clips: the share of frames whose figure has the
  character's colour with its token in the caption (target ≥ 0.8) and with the class word alone (≤ 0.3), and the
  share the toy CLIP judges to be a hare;
* ``normalisation``: depth of held-out clips of figures approaching the camera, normalised with one range per
  sequence and per frame (``toy_world.normalisation_checks``): flicker of the still background, flicker, and the
  figure's separation from its ground, for the ground truth and the toy DPT (``--chart`` draws one clip);
* ``cuts``: the hard cuts of the held-out world that the index's segmenter finds (``SceneAwareSegmenter`` with
  build-index's default settings, on the decoded MP4 frames), and the cuts it reports where there is none.

The held-out world (``--seed``, ``--clips``, split ``heldout``) is drawn into ``--world`` (a temporary folder by
default) unless it is already there. Everything runs on ``--threads`` CPU threads.

Run (from the repository root)::

    .venv/bin/python bench/toy_world_metrics.py
    .venv/bin/python bench/toy_world_metrics.py --world /tmp/toy_heldout --only clip
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
MEASURES = ("clip", "depth", "render", "identity", "normalisation", "cuts")


def cut_detection(world: Path) -> dict:
    """How many of ``world``'s hard cuts the index's segmenter finds (within one frame), and its false cuts."""
    import numpy as np

    from index_builder.segmenter import SceneAwareSegmenter, SegmentSettings
    from retrieval.frame_preprocessing import square_crop
    from toy_world.world_files import read_manifest, read_world

    rows = {row["name"]: row for row in read_manifest(world)}
    found = missed = false = 0
    for clip in read_world(world):
        segmenter = SceneAwareSegmenter(SegmentSettings(), lambda frame: square_crop(frame, 32))
        fps = 8.0
        for number, frame in enumerate(clip.frames):
            segmenter.push(number / fps, frame)
        segmenter.finish(len(clip.frames) / fps)
        truth = rows[clip.name]["cut_s"]
        cuts = np.array(segmenter.cuts)
        hits = [] if truth is None else [c for c in cuts if abs(c - truth) <= 1 / fps + 1e-6]
        found += bool(hits)
        missed += truth is not None and not hits
        false += len(cuts) - len(hits[:1])
    return {"cuts_found": found, "cuts_missed": missed, "false_cuts": false, "clips": len(rows)}


def render_figures(clips: list, shots: int, sheet: Path | None = None) -> dict:
    """Motion transfer (figure IoU for each τ) and caption control of the toy render model, guided by the toy
    DPT's depth of the first ``shots`` held-out clips without a cut (and their comparison ``sheet``)."""
    from storyreel.models.loading import load_render_components
    from structure.depth_models import load_depth_model
    from toy_world.render_checks import TAUS, Guide, caption_control, comparison_sheet, motion_transfer

    components = load_render_components("toy", device="cpu")
    estimator = load_depth_model("toy", device="cpu", progress=False)
    uncut = [clip for clip in clips if clip.spec.cut is None][:shots]
    guides = [Guide.from_clip(clip, depth_of=estimator) for clip in uncut]
    if sheet is not None:
        comparison_sheet(components, uncut[:4], guides[:4], sheet)
    return {"figure_iou_by_tau": motion_transfer(components, guides, TAUS), **caption_control(components, guides),
            "shots": len(guides)}


def identity_figures(clips: list, shots: int, weights: Path, sheet: Path | None = None) -> dict:
    """The toy character's look with its token and with the class word, over the first ``shots`` hare clips."""
    from storyreel.models.loading import load_render_components
    from storyreel.models.toy_weights import verified_file
    from structure.depth_models import load_depth_model
    from toy_world import identity_checks
    from toy_world.toy_character import CHARACTER_FILE
    from toy_world.train_clip import load_toy_clip

    components = load_render_components("toy", device="cpu")
    estimator = load_depth_model("toy", device="cpu", progress=False)
    guides = identity_checks.character_guides(clips, shots, depth_of=estimator)
    character_set = identity_checks.load_character_set(components, verified_file(CHARACTER_FILE, weights))
    if sheet is not None:
        identity_checks.identity_sheet(components, character_set, identity_checks.character_clips(clips, 3),
                                       guides[:3], sheet)
    judge = identity_checks.kind_judge(load_toy_clip(weights))
    return identity_checks.identity_figures(components, character_set, guides, judge_kind=judge)


def normalisation_figures(clips: list, weights: Path, chart: Path | None = None) -> dict:
    """Sequence against per-frame normalisation on the approaching clips, ground truth and toy DPT."""
    from toy_world.normalisation_checks import approaching_clips, compare_normalisations, normalisation_chart
    from toy_world.train_depth import load_toy_depth

    approaching = approaching_clips(clips)
    estimator = load_toy_depth(weights)
    if chart is not None:
        normalisation_chart(approaching[0], chart, depth_of=estimator)
    return {"ground_truth": compare_normalisations(approaching),
            "toy_dpt": compare_normalisations(approaching, depth_of=estimator)}


def record_in_manifest(weights: Path, results: dict, settings: dict) -> None:
    """Merge ``results`` into ``manifest.json``'s ``measured`` entry (one key per measure, with the held-out
    world's settings and the date)."""
    import datetime

    from storyreel.atomic_files import write_json
    from storyreel.models.toy_weights import MANIFEST_FILE

    path = weights / MANIFEST_FILE
    manifest = json.loads(path.read_text(encoding="utf-8"))
    measured = manifest.setdefault("measured", {})
    for name, figures in results.items():
        measured[name] = {**figures, "heldout": settings, "date": datetime.date.today().isoformat(),
                          "command": "python bench/toy_world_metrics.py --record"}
    write_json(path, manifest)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world", type=Path, default=None, help="Held-out world folder [default: a temporary one].")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--clips", type=int, default=90)
    parser.add_argument("--weights", type=Path, default=None,
                        help="Weights folder [default: storyreel/models/toy_weights].")
    parser.add_argument("--only", choices=MEASURES, action="append", default=None)
    parser.add_argument("--shots", type=int, default=12, help="Held-out shots the render figures are measured on.")
    parser.add_argument("--sheet", type=Path, default=None,
                        help="Also draw footage, depth, render at tau 1 and at tau 0 of 4 shots into this PNG.")
    parser.add_argument("--identity-sheet", type=Path, default=None,
                        help="Also draw the references and 3 hare shots with the token and the class word.")
    parser.add_argument("--chart", type=Path, default=None,
                        help="Also draw the normalisation chart of one approaching clip into this PNG.")
    parser.add_argument("--record", action="store_true",
                        help="Also store the figures in the weights' manifest.json (under 'measured').")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    import torch

    from storyreel.models.toy_weights import TOY_WEIGHTS_DIR
    from toy_world.train_clip import clip_recall, load_toy_clip
    from toy_world.train_depth import depth_metrics, load_toy_depth
    from toy_world.world_files import read_world, write_world

    torch.set_num_threads(args.threads)
    weights = args.weights or TOY_WEIGHTS_DIR
    only = args.only or list(MEASURES)
    with tempfile.TemporaryDirectory() as scratch:
        world = args.world or Path(scratch) / "heldout"
        write_world(world, seed=args.seed, clips=args.clips, split="heldout")
        clips = read_world(world)
        results = {}
        if "clip" in only:
            started = time.perf_counter()
            results["clip"] = clip_recall(load_toy_clip(weights), clips)
            results["clip"]["seconds"] = round(time.perf_counter() - started, 1)
        if "depth" in only:
            started = time.perf_counter()
            results["depth"] = depth_metrics(load_toy_depth(weights), clips)
            results["depth"]["seconds"] = round(time.perf_counter() - started, 1)
        if "render" in only:
            started = time.perf_counter()
            results["render"] = render_figures(clips, args.shots, args.sheet)
            results["render"]["seconds"] = round(time.perf_counter() - started, 1)
        if "identity" in only:
            started = time.perf_counter()
            results["identity"] = identity_figures(clips, args.shots, weights, args.identity_sheet)
            results["identity"]["seconds"] = round(time.perf_counter() - started, 1)
        if "normalisation" in only:
            results["normalisation"] = normalisation_figures(clips, weights, args.chart)
        if "cuts" in only:
            results["cuts"] = cut_detection(world)
    print(json.dumps(results, indent=2))
    if args.record:
        record_in_manifest(weights, results, {"seed": args.seed, "clips": args.clips, "shots": args.shots})


if __name__ == "__main__":
    main()
