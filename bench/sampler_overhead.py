"""Sampler overhead: our structure-guided loop against diffusers' AnimateDiffControlNetPipeline.

Both run on the same components (``--models tiny`` by default), prompt, negative prompt, depth, seed and
step count, decoding to frames, in alternating rounds in one process; the medians are compared:

* ``ours / diffusers`` at tau = 1 (the same math; goal <= 1.05);
* ``ours tau=0.5 / ours tau=1`` (the ControlNet skipped for the second half of the steps).

The tiny models make the loop's own overhead (Python, preprocessing, decoding) visible; on real weights
(``--models sd15-random`` on a GPU) the UNet and ControlNet dominate and tau = 0.5 saves most of the
ControlNet's share. The models are chosen with the model zoo's flags (``--models``, ``--model-config``,
``--base``, ``--motion-adapter``, ``--controlnet``, ``--vae``: :mod:`storyreel.models.model_options`); with
neither ``--models`` nor ``--model-config`` the bench runs ``tiny``.

Run (from the repository root)::

    .venv/bin/python bench/sampler_overhead.py
    .venv/bin/python bench/sampler_overhead.py --size 64 --frames 16 --steps 20 --rounds 7
    .venv/bin/python bench/sampler_overhead.py --model-config models/models.toml --device cuda   # fetch-models
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import click

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from storyreel.command_line import IntRange, command  # noqa: E402 (after the repository is on the path)
from storyreel.models.model_options import model_options, model_specification  # noqa: E402

BENCH_PRESET = "tiny"  # without --models and --model-config


@command("sampler-overhead", help=__doc__.splitlines()[0])
@model_options()
@click.option("--device", default=None)
@click.option("--size", type=IntRange(min=8), default=64)
@click.option("--frames", type=IntRange(min=1), default=16)
@click.option("--steps", type=IntRange(min=1), default=20)
@click.option("--rounds", type=IntRange(min=1), default=7)
@click.option("--threads", type=IntRange(min=1), default=None, help="torch intra-op threads (default: torch's)")
def main(**options) -> None:
    """Time our sampler against diffusers' pipeline on the same components."""
    args = SimpleNamespace(**options)
    specification = model_specification(default_preset=BENCH_PRESET, **options)
    specification.validate()  # "error: --base: ..." before anything loads

    import torch
    from diffusers import AnimateDiffControlNetPipeline

    from render.sampler import StructureGuidedSampler
    from storyreel.models.loading import load_render_components

    if args.threads:
        torch.set_num_threads(args.threads)
    components = load_render_components(specification, device=args.device)
    device = components.device
    pipe = AnimateDiffControlNetPipeline(**components.pipeline_kwargs())
    pipe.set_progress_bar_config(disable=True)
    sampler = StructureGuidedSampler(components)
    y = torch.linspace(0, 1, args.size)[:, None].expand(args.size, args.size)
    cond = torch.stack([((y + 0.03 * t) % 1.0)[None].expand(3, -1, -1) for t in range(args.frames)])
    prompt, negative = "a knight riding a horse", "blurry, low quality"

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def run_pipe():
        return pipe(prompt, negative_prompt=negative, conditioning_frames=list(cond), num_frames=args.frames,
                    height=args.size, width=args.size, num_inference_steps=args.steps, guidance_scale=7.5,
                    generator=torch.Generator().manual_seed(0), output_type="pt").frames

    def run_ours(tau):
        return sampler(prompt, negative, conditioning=cond, steps=args.steps, guidance_scale=7.5, tau=tau,
                       generator=torch.Generator().manual_seed(0), output_type="pt").frames

    runs = {"diffusers": run_pipe, "ours": lambda: run_ours(1.0), "ours tau=0.5": lambda: run_ours(0.5)}
    reference = run_pipe()[0].permute(0, 2, 3, 1).float().cpu()  # warm-up, and the equivalence check
    diff = (run_ours(1.0).float().cpu() - reference).abs().max().item()
    times = {name: [] for name in runs}
    for r in range(args.rounds):
        order = list(runs) if r % 2 == 0 else list(reversed(runs))
        for name in order:
            sync()
            start = time.perf_counter()
            runs[name]()
            sync()
            times[name].append(time.perf_counter() - start)
    median = {name: statistics.median(values) for name, values in times.items()}
    print(f"{components.preset} on {device}, {args.frames} frames {args.size}x{args.size}, {args.steps} steps, "
          f"{args.rounds} rounds, torch threads {torch.get_num_threads()}; max |ours - diffusers| = {diff:.2e}")
    for name, value in median.items():
        print(f"  {name:14s} median {value * 1000:8.1f} ms   (min {min(times[name]) * 1000:8.1f} ms)")
    print(f"ours / diffusers (tau=1):  {median['ours'] / median['diffusers']:.3f}   (goal <= 1.05)")
    print(f"ours tau=0.5 / ours tau=1: {median['ours tau=0.5'] / median['ours']:.3f}")


if __name__ == "__main__":
    main()
