"""What a keyframe costs against the shot it previews, in one run.

The same shot two ways, alternating round by round on the same components, prompt, depth and seed: the 16-frame
video (the baseline) and its keyframe (``render-story --keyframes-only``: one frame by the image model, the
motion modules bypassed, guided by the first depth frame; :mod:`render.keyframes`). Both include text encoding,
denoising and VAE decoding; retrieval and depth are shared by the two and not timed. Goal: a keyframe at most
1/8 of the shot's time.

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
@click.option("--threads", type=int, default=None, help="torch intra-op threads (default: torch's).")
def main(models, device, size, frames, steps, rounds, threads):
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

    def render(keyframe: bool) -> float:
        if cuda:
            torch.cuda.synchronize()
        began = time.perf_counter()
        args = dict(conditioning=cond[:1] if keyframe else cond, steps=steps, guidance_scale=7.5, seed=0,
                    output_type="np", autocast_dtype=dtype if cuda else None)
        if keyframe:
            with image_model(components.unet):
                sampler("a pink hare in a meadow", "blurry", **args)
        else:
            sampler("a pink hare in a meadow", "blurry", **args)
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - began

    render(False), render(True)  # warm-up
    times = {"shot": [], "keyframe": []}
    for round_ in range(rounds):
        for keyframe in ((False, True) if round_ % 2 == 0 else (True, False)):
            times["keyframe" if keyframe else "shot"].append(render(keyframe))
    shot, key = statistics.median(times["shot"]), statistics.median(times["keyframe"])
    print(f"{models} on {device}, {size}x{size}, {steps} steps, guidance 7.5, {rounds} rounds, torch threads "
          f"{torch.get_num_threads()}")
    for name, values in times.items():
        print(f"  {name:9s} median {statistics.median(values):8.3f} s  (rounds: "
              f"{' '.join(f'{v:.3f}' for v in values)})" + (f"  [{frames} frames]" if name == "shot" else ""))
    ratio = key / shot
    verdict = "met" if ratio <= 0.125 else "not met"
    print(f"keyframe / {frames}-frame shot: {ratio:.3f} (goal <= 1/8 = 0.125: {verdict})")


if __name__ == "__main__":
    main()
