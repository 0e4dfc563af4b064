"""Few-step presets: the time per shot of sd15-lightning's and sd15-lcm's render settings against sd15's.

One process, one set of components (``--models``: ``tiny`` by default, or ``sd15-random`` at a reduced size
on a CPU); each preset's settings come from the registry, as render-story uses them: its scheduler with
its overrides (``preset_scheduler``), its steps and guidance (``ModelPreset.shot_defaults``):

* ``sd15``: DDIM, 25 steps, guidance 7.5 (the baseline);
* ``sd15-lightning``: Euler with trailing timesteps, 4 steps, guidance 1.0 (no unconditional half);
* ``sd15-lcm``: LCM, 6 steps, guidance 1.5.

A shot is the whole sampler call (text encoding, the denoising loop with the structure window ``--tau``,
decoding to uint8 frames). One warm-up shot of each preset is not counted; then the presets alternate in
rounds (reversed order every other round) and the medians are compared. Goal: sd15-lightning <= 0.2 of
sd15's time. The weights are the same for all three (random ones: this measures speed, not quality).

Run (from the repository root)::

    .venv/bin/python bench/few_step.py                                   # tiny, 64x64, 16 frames
    .venv/bin/python bench/few_step.py --models sd15-random --size 64 --frames 8 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

COMPARED = ("sd15", "sd15-lightning", "sd15-lcm")  # the first is the baseline
GOAL = {"sd15-lightning": 0.2}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="tiny", help="the components every preset's settings run on")
    parser.add_argument("--device", default=None)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--tau", type=float, default=0.5, help="structure window (the storyboard default)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args(argv)

    import torch

    from render.sampler import StructureGuidedSampler
    from storyreel.models.loading import load_render_components
    from storyreel.models.presets import get_preset
    from storyreel.models.schedulers import preset_scheduler

    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    components = load_render_components(args.models, device=args.device)
    build_s = time.perf_counter() - start
    device = components.device
    y = torch.linspace(0, 1, args.size)[:, None].expand(args.size, args.size)
    cond = torch.stack([((y + 0.03 * t) % 1.0)[None].expand(3, -1, -1) for t in range(args.frames)])
    prompt, negative = "a knight riding a horse", "blurry, low quality"

    settings = {name: get_preset(name).shot_defaults() for name in COMPARED}
    samplers = {name: StructureGuidedSampler(components, scheduler=preset_scheduler(name)) for name in COMPARED}

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def shot(name):
        return samplers[name](prompt, negative, conditioning=cond, steps=settings[name]["steps"],
                              guidance_scale=settings[name]["guidance"], tau=args.tau, seed=0, output_type="np")

    load_before = os.getloadavg()[0]
    calls = {name: shot(name).controlnet_calls for name in COMPARED}  # warm-up, not counted
    times = {name: [] for name in COMPARED}
    for r in range(args.rounds):
        for name in (COMPARED if r % 2 == 0 else tuple(reversed(COMPARED))):
            sync()
            start = time.perf_counter()
            shot(name)
            sync()
            times[name].append(time.perf_counter() - start)
    load_after = os.getloadavg()[0]
    median = {name: statistics.median(values) for name, values in times.items()}
    baseline = median[COMPARED[0]]

    print(f"{args.models} on {device} (built in {build_s:.1f} s), {args.frames} frames {args.size}x{args.size}, "
          f"tau {args.tau:g}, {args.rounds} rounds, torch threads {torch.get_num_threads()}; 1-minute load "
          f"average {load_before:.2f} before, {load_after:.2f} after (other jobs make the rounds spread)")
    print(f"  {'settings of':15s} {'scheduler':26s} {'steps':>5s} {'guid.':>5s} {'UNet rows':>9s} "
          f"{'ctrl calls':>10s} {'median s/shot':>13s} {'min s':>8s} {'ratio':>6s}")
    for name in COMPARED:
        spec, values = get_preset(name), settings[name]
        scheduler = spec.scheduler + "".join(f", {v}" for v in spec.scheduler_config.values())
        rows = values["steps"] * (2 if values["guidance"] > 1 else 1) * args.frames  # UNet batch rows, all steps
        print(f"  {name:15s} {scheduler:26s} {values['steps']:5d} {values['guidance']:5.1f} {rows:9d} "
              f"{calls[name]:10d} {median[name]:13.3f} {min(times[name]):8.3f} {median[name] / baseline:6.3f}")
    for name in COMPARED:
        print(f"  {name:15s} rounds (s): {' '.join(f'{value:.3f}' for value in times[name])}")
    for name, goal in GOAL.items():
        ratio = median[name] / baseline
        print(f"{name} / {COMPARED[0]}: {ratio:.3f}   (goal <= {goal}: {'met' if ratio <= goal else 'NOT met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
