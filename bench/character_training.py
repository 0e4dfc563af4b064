"""Character training speed and memory: steps/s and peak memory, with and without gradient checkpointing.

Trains a character (:class:`characters.training.CharacterTrainer`: TimeInv table + LoRA on depth-conditioned
pseudo-videos) on the render's components, alternating two modes round by round in one process:

* ``plain``: activations kept for the backward pass;
* ``checkpointing``: ``gradient_checkpointing`` (UNet and ControlNet recompute activations in the backward
  pass: less memory, more compute).

Each round builds a fresh trainer (not timed), runs one warm-up step, then times ``--steps`` steps; the
medians per mode are compared. Also reported: the share of a step spent preparing its batch (augmentation,
depth through the structure stage, VAE encoding), and peak memory per mode: on CUDA
``torch.cuda.max_memory_allocated``; on CPU the peak resident memory of the process sampled every
millisecond (``/proc/self/statm``) while the mode's trainer is built and runs, and how much of it came
on top of the loaded models.

The models are chosen with the model zoo's flags (``--models``, ``--model-config``, ``--base``,
``--motion-adapter``, ``--controlnet``, ``--vae``, ``--depth-model``: :mod:`storyreel.models.model_options`);
with neither ``--models`` nor ``--model-config`` the bench runs ``tiny``.

Run (from the repository root)::

    .venv/bin/python bench/character_training.py                       # tiny, CPU, 64x64x16 frames
    .venv/bin/python bench/character_training.py --models sd15-random --resolution 512 --frames 16 \\
        --mixed-precision fp16                                          # real size, on a CUDA machine
"""

from __future__ import annotations

import importlib.util
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

MODES = {"plain": False, "checkpointing": True}
BENCH_PRESET = "tiny"  # without --models and --model-config


def reference_images(resolution: int):
    """The demo's cartoon hare images, scaled so their shorter side covers ``resolution``."""
    import numpy as np
    from PIL import Image

    path = REPO_ROOT / "data" / "make_reference_images.py"
    spec = importlib.util.spec_from_file_location("make_reference_images", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    images = []
    for pose in module.POSES:
        image = module.draw_hare(pose)
        factor = max(1.0, resolution / min(image.size))
        if factor > 1:
            image = image.resize((round(image.width * factor), round(image.height * factor)), Image.Resampling.BICUBIC)
        images.append(np.asarray(image))
    return images


def setup(args, specification):
    """The render's components and the depth model of ``specification``, and the mixed precision to train in."""
    import torch

    from storyreel.models.loading import load_render_components
    from structure.depth_models import load_depth_model

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device) if args.device else (
        torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu"))
    precision = args.mixed_precision
    if precision == "auto":
        precision = "fp16" if device.type == "cuda" else "no"
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision, torch.float32)
    components = load_render_components(specification, device=device, dtype=dtype)
    depth = load_depth_model(specification.depth_model_spec(), device=device, progress=False)
    return components, depth, precision


def settings_for(args, precision: str, checkpointing: bool, seed: int):
    from characters.training import TrainingSettings

    return TrainingSettings(name="hare", token="<hare>", class_word="rabbit", steps=10**6, rank=args.rank,
                            resolution=args.resolution, frames=args.frames, seed=seed, mixed_precision=precision,
                            gradient_checkpointing=checkpointing)


def run_steps(components, depth, images, settings, steps: int, device) -> tuple[float, float]:
    """Seconds for ``steps`` steps after a warm-up step, and seconds spent preparing their batches."""
    import torch

    from characters.training import CharacterTrainer

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    with CharacterTrainer(components, depth, images, settings) as trainer:
        trainer.train_step()
        sync()
        began = time.perf_counter()
        for _ in range(steps):
            trainer.train_step()
        sync()
        seconds = time.perf_counter() - began
        began = time.perf_counter()
        for k in range(steps):
            trainer.sample_batch(1000 + k)
        sync()
        data = time.perf_counter() - began
    return seconds, data


class RssPeak:
    """Samples this process's resident memory (``/proc/self/statm``) every millisecond in a thread; ``peak_mb``
    is the highest value seen while inside the ``with`` block, ``start_mb`` the value on entry."""

    def __init__(self, interval: float = 0.001):
        self.interval = interval
        self.start_mb = self.peak_mb = 0.0
        self._stop = None
        self._thread = None

    @staticmethod
    def now_mb() -> float:
        import os

        with open("/proc/self/statm") as handle:
            pages = int(handle.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20

    def _run(self):
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, self.now_mb())
            self._stop.wait(self.interval)

    def __enter__(self):
        import threading

        self.start_mb = self.peak_mb = self.now_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, self.now_mb())


@command("character-training-bench", help=__doc__.splitlines()[0])
@model_options()
@click.option("--device", default=None)
@click.option("--resolution", type=IntRange(min=8), default=64)
@click.option("--frames", type=IntRange(min=1), default=16)
@click.option("--rank", type=IntRange(min=1), default=8)
@click.option("--steps", type=IntRange(min=1), default=10, help="timed steps per round")
@click.option("--rounds", type=IntRange(min=1), default=5)
@click.option("--mixed-precision", type=click.Choice(["auto", "no", "fp16", "bf16"]), default="auto")
@click.option("--threads", type=IntRange(min=1), default=None, help="torch intra-op threads (default: torch's)")
def main(**options) -> None:
    """Time character training steps with and without gradient checkpointing."""
    args = SimpleNamespace(**options)
    specification = model_specification(default_preset=BENCH_PRESET, **options)
    specification.validate()  # "error: --base: ..." before anything loads

    import torch

    components, depth, precision = setup(args, specification)
    device = components.device
    images = reference_images(args.resolution)
    times = {name: [] for name in MODES}
    data = []
    peak = {}
    run_steps(components, depth, images, settings_for(args, precision, False, 0), 2, device)  # warm-up
    for r in range(args.rounds):
        for name in (MODES if r % 2 == 0 else reversed(list(MODES))):
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
                before = torch.cuda.memory_allocated() / 2**20
            with RssPeak() as rss:
                seconds, data_seconds = run_steps(components, depth, images,
                                                  settings_for(args, precision, MODES[name], r), args.steps, device)
            if device.type == "cuda":
                used = torch.cuda.max_memory_allocated() / 2**20
                peak[name] = max(peak.get(name, (0.0, 0.0)), (used, used - before))
            else:
                peak[name] = max(peak.get(name, (0.0, 0.0)), (rss.peak_mb, rss.peak_mb - rss.start_mb))
            times[name].append(seconds / args.steps)
            if name == "plain":
                data.append(data_seconds / args.steps)
    median = {name: statistics.median(values) for name, values in times.items()}
    print(f"{components.preset} on {device} ({precision} mixed precision), {args.resolution}x{args.resolution} x "
          f"{args.frames} frames, batch 1, LoRA rank {args.rank}, {args.steps} steps x {args.rounds} rounds, "
          f"torch threads {torch.get_num_threads()}")
    for name in MODES:
        print(f"  {name:14s} median {median[name] * 1000:8.1f} ms/step  {1 / median[name]:7.2f} steps/s  "
              f"(rounds: {' '.join(f'{v * 1000:.0f}' for v in times[name])} ms)")
    print(f"checkpointing / plain time: {median['checkpointing'] / median['plain']:.3f}")
    print(f"batch preparation (augment + depth + VAE encode): {statistics.median(data) * 1000:.1f} ms/step, "
          f"{statistics.median(data) / median['plain']:.0%} of a plain step")
    what = "peak GPU memory allocated" if device.type == "cuda" else "peak resident memory of the process"
    line = f"{what}: " + ", ".join(f"{n} {v[0]:.0f} MiB (+{v[1]:.0f} MiB over the loaded models)"
                                   for n, v in peak.items())
    if device.type == "cuda":  # on the CPU the allocator keeps freed memory: small differences are not resolved
        line += f"; checkpointing / plain (training part): {peak['checkpointing'][1] / peak['plain'][1]:.3f}"
    print(line)


if __name__ == "__main__":
    main()
