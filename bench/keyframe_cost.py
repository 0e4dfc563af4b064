"""What a keyframe costs against the shot it previews, in one run.

The same shot three ways, in turn round by round on the same components, prompt, depth and seed: the 16-frame
video (the baseline), its keyframe alone (``render-story --keyframes-only --keyframe-batch 1``: one frame by the
image model, the motion modules bypassed, guided by the first depth frame; :mod:`render.keyframes`), and a
story's keyframes made together (``--keyframe-batch B``, the default 8: B keyframes, each its own prompt, depth
and seed, in one sampler call; the time per keyframe is the batch's time / B). All include text encoding,
denoising and VAE decoding; retrieval and depth are shared and not timed. Goal: a keyframe at most 1/8 of the
shot's time.

Run (from the repository root)::

    .venv/bin/python bench/keyframe_cost.py                                              # tiny, CPU
    python bench/keyframe_cost.py --models sd15-random --size 512 --steps 25 --rounds 3   # GPU
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import click

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))


@click.command()
@click.option("--models", default="tiny", show_default=True)
@click.option("--device", default=None, help="torch device [default: cuda if available, else cpu].")
@click.option("--size", type=int, default=64, show_default=True)
@click.option("--frames", type=int, default=16, show_default=True)
@click.option("--steps", type=int, default=20, show_default=True)
@click.option("--rounds", type=int, default=5, show_default=True)
@click.option("--batch", type=int, default=8, show_default=True, help="Keyframes per sampler call in a story batch.")
@click.option("--threads", type=int, default=None, help="torch intra-op threads (default: torch's).")
def main(models, device, size, frames, steps, batch, rounds, threads):
    import torch

    from render.keyframes import image_model
    from render.sampler import StructureGuidedSampler
    from storyreel.devices import default_device
    from storyreel.models.loading import load_render_components

    if threads:
        torch.set_num_threads(threads)
    device = torch.device(device) if device else default_device()
    cuda = device.type == "cuda"
    dtype = torch.float16 if cuda else torch.float32
    components = load_render_components(models, device=device, dtype=dtype)
    sampler = StructureGuidedSampler(components)
    y, x = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    cond = torch.stack([((0.6 * x + 0.4 * y + 0.03 * t) % 1.0).expand(3, size, size) for t in range(frames)])

    prompts = [f"a {colour} hare in a meadow" for colour in ("pink", "grey", "brown", "white", "black", "golden",
                                                              "spotted", "striped")]
    prompts = [prompts[i % len(prompts)] for i in range(batch)]

    def render(kind: str) -> float:
        """Seconds per picture: the shot, one keyframe, or a batch of keyframes (its time / batch)."""
        if cuda:
            torch.cuda.synchronize()
        began = time.perf_counter()
        args = dict(steps=steps, guidance_scale=7.5, output_type="np", autocast_dtype=dtype if cuda else None)
        if kind == "shot":
            sampler(prompts[0], "blurry", conditioning=cond, seed=0, **args)
        elif kind == "keyframe":
            with image_model(components.unet):
                sampler(prompts[0], "blurry", conditioning=cond[:1], seed=0, **args)
        else:  # a story's keyframes: their own prompts, depth frames and seeds, in one call
            with image_model(components.unet):
                sampler(prompts, "blurry", conditioning=cond[[i % frames for i in range(batch)]],
                        seed=list(range(batch)), num_frames=1, **args)
        if cuda:
            torch.cuda.synchronize()
        return (time.perf_counter() - began) / (batch if kind == "batch" else 1)

    kinds = ["shot", "keyframe", "batch"]
    for kind in kinds:  # warm-up
        render(kind)
    times = {kind: [] for kind in kinds}
    for round_ in range(rounds):
        for kind in (kinds if round_ % 2 == 0 else kinds[::-1]):
            times[kind].append(render(kind))
    shot = statistics.median(times["shot"])
    print(f"{models} on {device}, {size}x{size}, {steps} steps, guidance 7.5, {rounds} rounds, torch threads "
          f"{torch.get_num_threads()}")
    labels = {"shot": f"{frames}-frame shot", "keyframe": "keyframe alone",
              "batch": f"keyframe in a batch of {batch} (time / {batch})"}
    for kind, values in times.items():
        print(f"  {labels[kind]:36s} median {statistics.median(values):8.3f} s  (rounds: "
              f"{' '.join(f'{v:.3f}' for v in values)})")
    for kind in ("keyframe", "batch"):
        ratio = statistics.median(times[kind]) / shot
        verdict = "met" if ratio <= 0.125 else "not met"
        print(f"{labels[kind]} / {frames}-frame shot: {ratio:.3f} (goal <= 1/8 = 0.125: {verdict})")


if __name__ == "__main__":
    main()
