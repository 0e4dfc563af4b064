"""Does consistent self-attention keep the toy character the same across shots? Measured on the toy world.

Renders one toy story, Zuri (the toy world's pink hare) in three shots, four ways with ``--models toy``:

* ``token``: Zuri's trained TimeInv + LoRA file and its token in the captions (the method's identity path);
* ``token+csa``: the same with consistent self-attention (``consistency``: rate 0.5, until 0.6, 2 bank frames);
* ``class word``: no character file, the captions say "a pink hare" (no identity mechanism at all);
* ``class word+csa``: the same with consistent self-attention.

Every variant plays the same footage (retrieved once) and seeds. For each it measures, with the toy CLIP as the
judge (the toy preset's metric model; the tiny DINO of ``evaluate-story --models toy`` has random weights):

* **across shots**: the mean cosine of the shots' normalised mean frame features over every pair of Zuri's shots
  (``evaluation.identity.across_shots``: StoryDiffusion's character similarity);
* **CLIP-I**: the mean over shots of the cosine with Zuri's reference pictures (``reference_similarity``).

Run (from the repository root, after ``make demo`` has built demo-out/toy-index and demo-out/zuri-references)::

    .venv/bin/python bench/consistency_identity.py
"""

from __future__ import annotations

import copy
import json
import sys
import tempfile
import time
from pathlib import Path

import click
import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

FABLE = REPO_ROOT / "data" / "examples" / "toy-fable.json"
CONSISTENCY = {"mode": "self_attention", "rate": 0.5, "until": 0.6, "bank_frames": 2}
SHOTS = [("challenge", "a hare jumping", "a {zuri} jumping in a meadow"),
         ("sprint", "a hare running", "a {zuri} running in a desert"),
         ("wave", "a hare waving", "a {zuri} waving at night")]


def storyboard(folder: Path, token: bool, consistency: bool) -> Path:
    data = json.loads(FABLE.read_text())
    zuri = data["characters"]["zuri"]
    zuri["embedding"] = str((FABLE.parent / zuri["embedding"]).resolve())
    if not token:
        del zuri["embedding"]
    name = "<zuri> hare" if token else "pink hare"
    data["shots"] = [{"id": shot, "text": caption.format(zuri=name), "characters": ["zuri"], "motion_query": query,
                      "caption": caption.format(zuri=name)} for shot, query, caption in SHOTS]
    if consistency:
        data["defaults"]["consistency"] = copy.deepcopy(CONSISTENCY)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "story.json"
    path.write_text(json.dumps(data, indent=1))
    return path


@click.command()
@click.option("--index", type=click.Path(path_type=Path), default=REPO_ROOT / "demo-out/toy-index", show_default=True)
@click.option("--references", type=click.Path(path_type=Path), default=REPO_ROOT / "demo-out/zuri-references",
              show_default=True)
@click.option("--threads", type=int, default=2, show_default=True)
@click.option("--rate", type=float, default=CONSISTENCY["rate"], show_default=True)
@click.option("--until", type=float, default=CONSISTENCY["until"], show_default=True)
@click.option("--bank-frames", type=int, default=CONSISTENCY["bank_frames"], show_default=True)
@click.option("--record", type=click.Path(path_type=Path), default=None, help="Also write the figures as JSON here.")
def main(index, references, threads, rate, until, bank_frames, record):
    import torch

    from evaluation.identity import across_shots, reference_similarity
    from render.shot_sidecar import Segment
    from render.story import StoryOptions, prepare_story, render_story
    from retrieval.clip_models import load_clip_model
    from storyreel.video_files import read_video

    torch.set_num_threads(threads)
    CONSISTENCY.update(rate=rate, until=until, bank_frames=bank_frames)
    clip = load_clip_model("toy", device="cpu")
    from PIL import Image

    pictures = [np.asarray(Image.open(p).convert("RGB")) for p in sorted(Path(references).glob("*.png"))]
    reference_features = clip.encode_images(clip.prepare_frames(np.stack(pictures)))
    figures, footage = {}, None
    with tempfile.TemporaryDirectory() as folder:
        for token in (True, False):
            for consistency in (False, True):
                name = ("token" if token else "class word") + ("+csa" if consistency else "")
                story = storyboard(Path(folder) / name.replace(" ", "_"), token, consistency)
                began = time.perf_counter()
                plan = prepare_story(StoryOptions(story, Path(folder) / name.replace(" ", "_") / "out", index=index,
                                                  models="toy", progress=False, footage=footage,
                                                  depth_cache=Path(folder) / "depth"))
                report = render_story(plan, echo=lambda text: None)
                seconds = time.perf_counter() - began
                if footage is None:
                    footage = {shot["id"]: Segment.from_json(shot["segment"]) for shot in report["shots"]}
                features = {}
                for shot in report["shots"]:
                    frames, _ = read_video(plan.out / shot["files"]["mp4"])
                    features[shot["id"]] = clip.encode_images(clip.prepare_frames(frames))
                figures[name] = {
                    "across_shots": across_shots(features)["mean"],
                    "clip_i": float(np.mean([reference_similarity(reference_features, f)
                                             for f in features.values()])),
                    "seconds": round(seconds, 1)}
                print(f"{name:16s} across shots {figures[name]['across_shots']:.4f}   CLIP-I "
                      f"{figures[name]['clip_i']:.4f}   ({seconds:.0f} s)", flush=True)
    for base in ("token", "class word"):
        gain = figures[f"{base}+csa"]["across_shots"] - figures[base]["across_shots"]
        print(f"{base}: consistent self-attention changes across-shot similarity by {gain:+.4f}")
    if record is not None:
        Path(record).write_text(json.dumps({"consistency": CONSISTENCY, "figures": figures}, indent=1))


if __name__ == "__main__":
    main()
