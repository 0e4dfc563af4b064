"""Does consistent self-attention keep the toy character the same across shots? Measured on the toy world.

Renders one toy story, Zuri (the toy world's pink hare) in three shots, four ways with ``--models toy``:

* ``token``: Zuri's trained TimeInv + LoRA file and its token in the captions (the method's identity path);
* ``token+csa``: the same with consistent self-attention (``consistency``: rate 0.5, until 0.6, 2 bank frames);
* ``class word``: no character file, the captions say "a pink hare" (no identity mechanism at all);
* ``class word+csa``: the same with consistent self-attention;
* with ``--ip-adapter SCALE`` (repeatable): ``token+ip SCALE`` and ``class word+ip SCALE``, the same two stories
  with Zuri's five reference pictures as ``reference_images`` at ``ip_adapter_scale`` SCALE through the toy
  IP-Adapter (``--ip-adapter toy``, trained on the toy world: toy_world/train_ip_adapter.py). ``--no-csa``
  leaves the consistent self-attention rows out; ``--reference keyframes`` takes the bank from the reference
  shot's keyframe instead of its video.

Every variant plays the same footage (retrieved once) and seeds. For each it measures, with the toy CLIP as the
judge (the toy preset's metric model; the tiny DINO of ``evaluate-story --models toy`` has random weights):

* **across shots**: the mean cosine of the shots' normalised mean frame features over every pair of Zuri's shots
  (``evaluation.identity.across_shots``: StoryDiffusion's character similarity);
* **CLIP-I**: the mean over shots of the cosine with Zuri's reference pictures (``reference_similarity``).

Run (from the repository root, after ``make demo`` has built demo-out/toy-index and demo-out/zuri-references)::

    .venv/bin/python bench/consistency_identity.py
    .venv/bin/python bench/consistency_identity.py --no-csa --ip-adapter 0.5 --ip-adapter 1.0
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


def storyboard(folder: Path, token: bool, consistency: bool, ip_scale: float | None = None,
               references: Path | None = None) -> Path:
    data = json.loads(FABLE.read_text())
    zuri = data["characters"]["zuri"]
    zuri["embedding"] = str((FABLE.parent / zuri["embedding"]).resolve())
    if not token:
        del zuri["embedding"]
    if ip_scale is not None:
        zuri.update(reference_images=str(Path(references).resolve()), ip_adapter_scale=ip_scale)
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
@click.option("--reference", type=click.Choice(["first_shot", "keyframes"]), default="first_shot", show_default=True,
              help="Where the consistency bank comes from: the reference shot's video, or its keyframe.")
@click.option("--ip-adapter", "ip_scales", type=float, multiple=True, metavar="SCALE",
              help="Also render token and class word with the toy IP-Adapter at this ip_adapter_scale (repeatable).")
@click.option("--csa/--no-csa", default=True, show_default=True, help="Include the consistent self-attention rows.")
@click.option("--record", type=click.Path(path_type=Path), default=None, help="Also write the figures as JSON here.")
def main(index, references, threads, rate, until, bank_frames, reference, ip_scales, csa, record):
    import torch

    from evaluation.identity import across_shots, reference_similarity
    from render.shot_sidecar import Segment
    from render.story import StoryOptions, prepare_story, render_story
    from retrieval.clip_models import load_clip_model
    from storyreel.video_files import read_video

    torch.set_num_threads(threads)
    CONSISTENCY.update(rate=rate, until=until, bank_frames=bank_frames, reference=reference)
    clip = load_clip_model("toy", device="cpu")
    from PIL import Image

    pictures = [np.asarray(Image.open(p).convert("RGB")) for p in sorted(Path(references).glob("*.png"))]
    reference_features = clip.encode_images(clip.prepare_frames(np.stack(pictures)))
    figures, footage = {}, None
    with tempfile.TemporaryDirectory() as folder:
        for token in (True, False):
            for consistency, ip_scale in [(False, None), *([(True, None)] if csa else []),
                                          *((False, scale) for scale in ip_scales)]:
                name = ("token" if token else "class word") + ("+csa" if consistency else "") + (
                    f"+ip {ip_scale:g}" if ip_scale is not None else "")
                story = storyboard(Path(folder) / name.replace(" ", "_"), token, consistency, ip_scale, references)
                began = time.perf_counter()
                plan = prepare_story(StoryOptions(story, Path(folder) / name.replace(" ", "_") / "out", index=index,
                                                  models="toy", progress=False, footage=footage,
                                                  depth_cache=Path(folder) / "depth",
                                                  ip_adapter="toy" if ip_scale is not None else None))
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
                print(f"{name:20s} across shots {figures[name]['across_shots']:.4f}   CLIP-I "
                      f"{figures[name]['clip_i']:.4f}   ({seconds:.0f} s)", flush=True)
    for base in ("token", "class word"):
        for extra, what in [*([("+csa", "consistent self-attention")] if csa else []),
                            *((f"+ip {scale:g}", f"the IP-Adapter at {scale:g}") for scale in ip_scales)]:
            gain = figures[f"{base}{extra}"]["across_shots"] - figures[base]["across_shots"]
            clip_i = figures[f"{base}{extra}"]["clip_i"] - figures[base]["clip_i"]
            print(f"{base}: {what} changes across-shot similarity by {gain:+.4f}, CLIP-I by {clip_i:+.4f}")
    if record is not None:
        Path(record).write_text(json.dumps({"consistency": CONSISTENCY, "ip_adapter_scales": list(ip_scales),
                                            "figures": figures}, indent=1))


if __name__ == "__main__":
    main()
