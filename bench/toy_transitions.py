"""Generated transitions and keyframe shots with the toy SparseCtrl, measured on the toy world (issue 16).

**Transitions.** Renders one toy story of ``--pairs + 1`` shots of held-out footage (varied kinds, colours, actions
and backgrounds, so every two consecutive shots differ) with ``transition: "generate"`` and ``transition_seconds``
1 between every two, through ``render-story --models toy`` (the toy SparseCtrl, ``--sparsectrl toy``, is the toy
preset's default). For each pair (A, B) it compares the transition's first frame with A's last frame and its last
frame with B's first frame, against the same distances for a crossfade's middle frame (the 50/50 blend of A's last
and B's first frames, what ``--crossfade`` shows halfway), by two measures:

* ``mad``: the mean absolute pixel difference (0-255; lower is closer);
* ``clip``: the cosine of the toy CLIP's image embeddings (higher is closer).

A pair **passes** a measure when both ends of the transition are closer to their shot's boundary frame than the
crossfade's middle frame is (the issue's criterion). ``largest_step``: the largest pixel difference between two
consecutive frames a viewer sees from A's last frame through the transition to B's first (a cut's is ``a_to_b``;
a transition that jumped from A to B halfway would show about as much). ``--picture`` writes every transition as a
row: A's last frame, the transition's frames, B's first frame.

**Keyframe shots.** Renders ``--keyframes`` shots with ``keyframe: true`` (their keyframes made first by the image
model, then each shot animated from its keyframe through the toy SparseCtrl at frame 0, with its depth) and the
same shots without, and compares frame 0 of each with the keyframe picture, by the same two measures.

Run (from the repository root; the index of held-out clips is ``make demo``'s ``demo-out/toy-index``)::

    .venv/bin/python bench/toy_transitions.py --threads 2
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import click
import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

# (motion query, caption): consecutive shots differ in kind, colour, action and background
SHOTS = [("a hare jumping", "a red hare jumping in a meadow"),
         ("a tortoise walking", "a blue tortoise walking in a desert"),
         ("a person waving", "a white person waving at night"),
         ("a hare running", "an orange hare running in a desert"),
         ("a tortoise spinning", "a purple tortoise spinning in a meadow"),
         ("a person walking", "a red person walking at night"),
         ("a hare waving", "a blue hare waving in a meadow"),
         ("a person jumping", "an orange person jumping in a desert"),
         ("a tortoise approaching", "a white tortoise approaching at night"),
         ("a person running", "a purple person running in a meadow"),
         ("a hare spinning", "a white hare spinning in a desert"),
         ("a tortoise jumping", "a red tortoise jumping in a meadow")]
DEFAULTS = {"width": 64, "height": 64, "frames": 8, "fps": 8, "tau": 1.0, "steps": 20, "guidance": 4.0, "seed": 5,
            "negative_prompt": ""}


def storyboard(folder: Path, count: int, *, transitions: bool = False, keyframe: bool = False,
               steps: int = DEFAULTS["steps"]) -> Path:
    shots = []
    for i in range(count):
        query, caption = SHOTS[i % len(SHOTS)]
        shot = {"id": f"s{i}", "text": caption, "motion_query": query, "caption": caption, "seed": 5 + i}
        if transitions and i < count - 1:
            shot.update(transition="generate", transition_seconds=1.0)
        if keyframe:
            shot["keyframe"] = True
        shots.append(shot)
    data = {"format_version": 1, "title": "toy transitions", "defaults": {**DEFAULTS, "steps": steps},
            "shots": shots}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "story.json"
    path.write_text(json.dumps(data, indent=1))
    return path


def mad(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean())


class Judge:
    """The two measures: mean absolute pixel difference and the toy CLIP's image-embedding cosine."""

    def __init__(self):
        from retrieval.clip_models import load_clip_model

        self.clip = load_clip_model("toy", device="cpu")

    def embed(self, frames: list[np.ndarray]) -> np.ndarray:
        return self.clip.encode_images(self.clip.prepare_frames(np.stack(frames)))

    def cosine(self, a: np.ndarray, b: np.ndarray) -> float:
        ea, eb = self.embed([a, b])
        return float(ea @ eb)


def transition_figures(out: Path, report: dict, judge: Judge) -> list[dict]:
    """One record per generated transition of a rendered story: the distances of its ends and of the crossfade's
    middle frame to the two boundary frames, and whether it passes each measure."""
    from storyreel.video_files import read_video

    frames = {shot["id"]: read_video(out / shot["files"]["mp4"])[0] for shot in report["shots"]}
    rows = []
    for entry in report["transitions"]:
        if entry["kind"] != "generate":
            continue
        clip = read_video(out / entry["file"])[0]
        a_last, b_first = frames[entry["from"]][-1], frames[entry["to"]][0]
        middle = np.round((a_last.astype(np.float64) + b_first.astype(np.float64)) / 2).astype(np.uint8)
        seen = [a_last, *clip, b_first]
        row = {"from": entry["from"], "to": entry["to"], "frames": len(clip),
               "mad": {"first_to_a": mad(clip[0], a_last), "last_to_b": mad(clip[-1], b_first),
                       "middle_to_a": mad(middle, a_last), "middle_to_b": mad(middle, b_first),
                       "a_to_b": mad(a_last, b_first),
                       "largest_step": max(mad(x, y) for x, y in zip(seen, seen[1:]))},
               "clip": {"first_to_a": judge.cosine(clip[0], a_last), "last_to_b": judge.cosine(clip[-1], b_first),
                        "middle_to_a": judge.cosine(middle, a_last), "middle_to_b": judge.cosine(middle, b_first),
                        "a_to_b": judge.cosine(a_last, b_first)}}
        row["passes_mad"] = (row["mad"]["first_to_a"] < row["mad"]["middle_to_a"]
                             and row["mad"]["last_to_b"] < row["mad"]["middle_to_b"])
        row["passes_clip"] = (row["clip"]["first_to_a"] > row["clip"]["middle_to_a"]
                              and row["clip"]["last_to_b"] > row["clip"]["middle_to_b"])
        rows.append(row)
    return rows


def summary(rows: list[dict]) -> dict:
    keys = {"mad": ("first_to_a", "last_to_b", "middle_to_a", "middle_to_b", "a_to_b", "largest_step"),
            "clip": ("first_to_a", "last_to_b", "middle_to_a", "middle_to_b", "a_to_b")}
    return {"pairs": len(rows),
            **{f"{measure}_mean": {key: round(float(np.mean([r[measure][key] for r in rows])), 4)
                                   for key in keys[measure]} for measure in ("mad", "clip")},
            "pass_mad": sum(r["passes_mad"] for r in rows), "pass_clip": sum(r["passes_clip"] for r in rows),
            "pass_both": sum(r["passes_mad"] and r["passes_clip"] for r in rows)}


def render(story: Path, out: Path, index: Path, depth: Path, footage=None, sparsectrl: str | None = None) -> dict:
    from render.story import StoryOptions, prepare_story, render_story

    plan = prepare_story(StoryOptions(story, out, index=index, models="toy", progress=False, footage=footage,
                                      depth_cache=depth, sparsectrl=sparsectrl))
    return render_story(plan, echo=lambda text: None)


def transition_picture(out: Path, report: dict, path: Path) -> None:
    """Each generated transition as a row: A's last frame, the transition's frames, B's first frame."""
    from PIL import Image

    from storyreel.video_files import read_video

    frames = {shot["id"]: read_video(out / shot["files"]["mp4"])[0] for shot in report["shots"]}
    rows = [np.concatenate([frames[e["from"]][-1], *read_video(out / e["file"])[0], frames[e["to"]][0]], axis=1)
            for e in report["transitions"] if e["kind"] == "generate"]
    width = max(row.shape[1] for row in rows)
    sheet = np.concatenate([np.pad(row, ((0, 4), (0, width - row.shape[1]), (0, 0)), constant_values=255)
                            for row in rows])
    Image.fromarray(sheet).resize((sheet.shape[1] * 2, sheet.shape[0] * 2), Image.NEAREST).save(path)


def keyframe_figures(with_keyframes: tuple[Path, dict], without: tuple[Path, dict], judge: Judge) -> dict:
    from PIL import Image

    from storyreel.video_files import read_video

    (out_k, report_k), (out_p, report_p) = with_keyframes, without
    rows = []
    for shot_k, shot_p in zip(report_k["shots"], report_p["shots"]):
        picture = np.asarray(Image.open(out_k / "keyframes" / f"{shot_k['id']}.png").convert("RGB"))
        first_k = read_video(out_k / shot_k["files"]["mp4"])[0][0]
        first_p = read_video(out_p / shot_p["files"]["mp4"])[0][0]
        rows.append({"shot": shot_k["id"], "mad_keyframe": mad(first_k, picture), "mad_plain": mad(first_p, picture),
                     "clip_keyframe": judge.cosine(first_k, picture), "clip_plain": judge.cosine(first_p, picture)})
    means = {key: round(float(np.mean([r[key] for r in rows])), 4)
             for key in ("mad_keyframe", "mad_plain", "clip_keyframe", "clip_plain")}
    closer = sum(r["mad_keyframe"] < r["mad_plain"] for r in rows)
    return {"shots": len(rows), **means, "closer_mad": closer, "rows": rows}


@click.command()
@click.option("--index", type=click.Path(path_type=Path), default=REPO_ROOT / "demo-out/toy-index", show_default=True,
              help="A toy index of held-out clips (make demo's).")
@click.option("--pairs", type=int, default=8, show_default=True, help="Transitions measured (pairs of shots).")
@click.option("--keyframes", type=int, default=4, show_default=True, help="Keyframe shots measured (0: none).")
@click.option("--steps", type=int, default=DEFAULTS["steps"], show_default=True)
@click.option("--threads", type=int, default=2, show_default=True)
@click.option("--record", type=click.Path(path_type=Path), default=None, help="Also write the figures as JSON here.")
@click.option("--picture", type=click.Path(path_type=Path), default=None,
              help="Also write the transitions as a PNG here (a row each: A's last frame, the clip, B's first).")
def main(index, pairs, keyframes, steps, threads, record, picture):
    import torch

    torch.set_num_threads(threads)
    judge = Judge()
    figures = {"steps": steps, "index": str(index)}
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        began = time.perf_counter()
        story = storyboard(folder / "transitions", pairs + 1, transitions=True, steps=steps)
        report = render(story, folder / "transitions" / "out", index, folder / "depth")
        rows = transition_figures(folder / "transitions" / "out", report, judge)
        if picture is not None:
            transition_picture(folder / "transitions" / "out", report, picture)
        figures["transitions"] = {**summary(rows), "rows": rows, "seconds": round(time.perf_counter() - began, 1)}
        for row in rows:
            print(f"{row['from']} → {row['to']}: MAD first→A {row['mad']['first_to_a']:.1f} last→B "
                  f"{row['mad']['last_to_b']:.1f} | middle→A {row['mad']['middle_to_a']:.1f} middle→B "
                  f"{row['mad']['middle_to_b']:.1f}   CLIP {row['clip']['first_to_a']:.3f} "
                  f"{row['clip']['last_to_b']:.3f} | {row['clip']['middle_to_a']:.3f} "
                  f"{row['clip']['middle_to_b']:.3f}   largest step {row['mad']['largest_step']:.1f}   pass "
                  f"{row['passes_mad']}/{row['passes_clip']}", flush=True)
        print(json.dumps({k: v for k, v in figures["transitions"].items() if k != "rows"}, indent=1), flush=True)
        if keyframes:
            began = time.perf_counter()
            results = []
            for keyframe in (True, False):
                name = "keyframe" if keyframe else "plain"
                story = storyboard(folder / name, keyframes, keyframe=keyframe, steps=steps)
                results.append((folder / name / "out", render(story, folder / name / "out", index, folder / "depth")))
            figures["keyframes"] = {**keyframe_figures(results[0], results[1], judge),
                                    "seconds": round(time.perf_counter() - began, 1)}
            print(json.dumps({k: v for k, v in figures["keyframes"].items() if k != "rows"}, indent=1), flush=True)
    if record is not None:
        Path(record).write_text(json.dumps(figures, indent=1))


if __name__ == "__main__":
    main()
