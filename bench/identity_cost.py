"""What the training-free identity mechanisms cost per shot, against the plain render, in one run.

Four renders of the same shot (same components, prompt, depth and seed), alternating round by round:

* ``plain``: the structure-guided sampler alone (the baseline);
* ``reference``: a character's consistent self-attention reference shot, rendered with CSA among its frames while
  it records the bank (rate 0.5, until 0.6, 2 bank frames: the storyboard defaults);
* ``attending``: a later shot attending to that bank;
* ``ip_adapter``: the shot with one IP-Adapter (``base``, scale 0.6) installed and its image embedding given
  (the adapter's weights are the seeded random ``tiny`` ones, sized for the UNet: the same layers and shapes as
  h94's; the image encoder runs once per character, not per shot, so it is not timed).

It prints each render's median seconds, the ratio to plain (goal for CSA: at most 1.3), the bank's size against
the size stated before the render and its budget, and on CUDA the peak GPU memory of each render
(``torch.cuda.max_memory_allocated``).

Run (from the repository root)::

    .venv/bin/python bench/identity_cost.py                                   # tiny, CPU
    python bench/identity_cost.py --models sd15-random --size 512 --frames 16 --steps 25 --rounds 2   # GPU
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import click

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

PROMPT, NEGATIVE = "a pink hare running across a meadow", "blurry, low quality"


def conditioning(frames: int, size: int):
    import torch

    y, x = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    return torch.stack([((0.6 * x + 0.4 * y + 0.03 * t) % 1.0).expand(3, size, size) for t in range(frames)])


@click.command()
@click.option("--models", default="tiny", show_default=True, help="Render preset (tiny, sd15-random, toy, ...).")
@click.option("--device", default=None, help="torch device [default: cuda if available, else cpu].")
@click.option("--size", type=int, default=64, show_default=True)
@click.option("--frames", type=int, default=16, show_default=True)
@click.option("--steps", type=int, default=20, show_default=True)
@click.option("--rounds", type=int, default=5, show_default=True)
@click.option("--threads", type=int, default=None, help="torch intra-op threads (default: torch's).")
def main(models, device, size, frames, steps, rounds, threads):
    import torch

    from render.consistent_attention import (
        ConsistencyController,
        ConsistencySettings,
        TokenBank,
        bank_bytes,
        consistent_self_attention,
    )
    from render.ip_adapter import encode_reference_images, ip_adapters, tiny_ip_adapter
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
    cond = conditioning(frames, size)
    settings = ConsistencySettings(rate=0.5, until=0.6, bank_frames=2)
    stated = bank_bytes(components.unet, size, size, settings, steps, 2, element_size=dtype.itemsize,
                        vae_scale_factor=components.vae_scale_factor)
    bank = {}
    adapter = tiny_ip_adapter(components.unet, "base")
    adapter.image_encoder.to(device)
    picture = (torch.rand(64, 64, 3, generator=torch.Generator().manual_seed(0)) * 255).byte().numpy()
    embedding = encode_reference_images(adapter, [picture])

    def render(variant: str) -> float:
        controller = None
        if variant == "reference":
            controller = ConsistencyController(settings, steps, 2, 0, record=TokenBank("ref", steps, 2, [], 0.5),
                                               bank_device=device, bank_dtype=dtype)
        elif variant == "attending":
            controller = ConsistencyController(settings, steps, 2, 1, banks=(bank["ref"],))
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        began = time.perf_counter()
        args = dict(conditioning=cond, steps=steps, guidance_scale=7.5, seed=0, output_type="np",
                    autocast_dtype=dtype if cuda else None)
        if variant == "ip_adapter":
            with ip_adapters(components, [adapter], names=["hare"]) as active:
                active.set_scales({"hare": 0.6})
                sampler(PROMPT, NEGATIVE, ip_adapter_image_embeds=active.image_embeds([embedding]), **args)
        elif controller is None:
            sampler(PROMPT, NEGATIVE, **args)
        else:
            with consistent_self_attention(components.unet, controller):
                sampler(PROMPT, NEGATIVE, **args)
        if cuda:
            torch.cuda.synchronize()
        seconds = time.perf_counter() - began
        if variant == "reference":
            bank["ref"] = controller.recording
        peaks.setdefault(variant, []).append(torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan"))
        return seconds

    peaks: dict[str, list[float]] = {}
    order = ["plain", "reference", "attending", "ip_adapter"]
    times: dict[str, list[float]] = {variant: [] for variant in order}
    render("plain"), render("reference")  # warm-up (CUDA kernels, allocator), and the first bank
    peaks.clear()
    for round_ in range(rounds):
        for variant in (order if round_ % 2 == 0 else order[::-1]):
            times[variant].append(render(variant))
    medians = {variant: statistics.median(values) for variant, values in times.items()}
    print(f"{models} on {device}, {frames} frames {size}x{size}, {steps} steps, {rounds} rounds, CSA rate 0.5 "
          f"until 0.6, 2 bank frames, torch threads {torch.get_num_threads()}")
    for variant in order:
        rounds_text = " ".join(f"{value:.3f}" for value in times[variant])
        peak = max(peaks[variant])
        print(f"  {variant:10s} median {medians[variant]:8.3f} s  x{medians[variant] / medians['plain']:.3f} of plain"
              f"  (rounds: {rounds_text})" + (f"  peak {peak:.2f} GiB" if cuda else ""))
    recorded = bank["ref"].nbytes
    print(f"bank: {recorded / 2**20:.3f} MiB recorded, {stated / 2**20:.3f} MiB stated before the render, budget "
          f"{settings.budget_mb:g} MB: {'within' if recorded <= settings.budget_mb * 2**20 else 'OVER'}")
    worst = max(medians["reference"], medians["attending"]) / medians["plain"]
    print(f"CSA / plain time: {worst:.3f} (goal <= 1.3: {'met' if worst <= 1.3 else 'not met'}); IP-Adapter / plain: "
          f"{medians['ip_adapter'] / medians['plain']:.3f}")


if __name__ == "__main__":
    main()
