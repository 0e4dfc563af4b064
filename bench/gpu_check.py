"""GPU check: every CUDA path once at real size with random weights, as ONE JSON line of figures.

On a CUDA machine (``--preset sd15-random``, the default there) it runs, in one process:

* ``shot_tau1_*``, ``shot_tau05_*``: a 512x512x16 shot at 25 steps in float16 with the structure window
  tau 1 and tau 0.5 (the ControlNet skipped for the second half): seconds per denoising step (the median
  of the steps, synchronised) and peak GPU memory;
* ``keyframe_*``: the shot's keyframe (``render-story --keyframes-only``: one frame, the motion modules
  bypassed) alone and in a batch of 8 (``--keyframe-batch 8``: 8 prompts, depth frames and seeds in one sampler
  call; seconds per keyframe), each against the tau-1 shot's time (``keyframe_ratio``, ``keyframe_batch_ratio``;
  issue 16's goal: at most 1/8);
* ``long_shot_*``: a 32-frame shot denoised in overlapping context windows (16 frames, stride 8);
* ``lightning_*``: the AnimateDiff-Lightning way of sampling on the same architecture: Euler with trailing
  timesteps (``make_scheduler("euler", timestep_spacing="trailing")``), 4 steps, guidance 1.0;
* ``offload_*``: the tau-1 shot again with model CPU offload (``enable_model_cpu_offload``), against the
  shot without it (``shot_tau1_*``);
* ``training_*``: 20 character-training steps (TimeInv table + LoRA) in float16 mixed precision at 512x512x16;
* ``depth_*``: DPT-Hybrid (``dpt-hybrid-random``: the real architecture, random weights) on 16 frames;
* ``clip_*``: ViT-B-32 (``load_clip_model("sd15-random")``: random weights) embedding 256 frames;
* ``faiss_*``: an exact inner-product search, on the GPU when faiss has GPU support (``info.faiss_gpu``),
  else on the CPU.

Peak memory is ``torch.cuda.max_memory_allocated`` (reset before each part) on CUDA; on a CPU it is the
process's peak resident memory so far. The line is ``{"info": {...}, "figures": {name: number}, "errors":
{part: message}}``; the exit code is 1 when a part failed (its figures are then missing). Progress goes to
stderr. Built for under 8 minutes on one H200.

``--preset tiny --device cpu`` (``--smoke``) runs the same code paths at toy size on a CPU in about half a
minute, so the script cannot rot (``tests/test_gpu_check.py``).

Run (from the repository root)::

    .venv/bin/python bench/gpu_check.py                 # on a CUDA machine
    .venv/bin/python bench/gpu_check.py --smoke         # anywhere
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))


@dataclass(frozen=True)
class CheckSizes:
    """How big each part runs."""

    size: int  # shot width and height
    frames: int
    steps: int
    long_frames: int
    context_window: int
    context_stride: int
    lightning_steps: int
    offload_steps: int
    training_steps: int
    training_resolution: int
    training_frames: int
    depth_frames: int
    depth_size: int
    clip_frames: int
    faiss_vectors: int
    faiss_queries: int


REAL = CheckSizes(size=512, frames=16, steps=25, long_frames=32, context_window=16, context_stride=8,
                  lightning_steps=4, offload_steps=25, training_steps=20, training_resolution=512,
                  training_frames=16, depth_frames=16, depth_size=512, clip_frames=256, faiss_vectors=200_000,
                  faiss_queries=1000)
TINY = CheckSizes(size=64, frames=8, steps=2, long_frames=12, context_window=8, context_stride=4,
                  lightning_steps=2, offload_steps=2, training_steps=2, training_resolution=64, training_frames=2,
                  depth_frames=4, depth_size=64, clip_frames=16, faiss_vectors=2000, faiss_queries=20)
SIZES = {"sd15-random": REAL, "tiny": TINY}
DEPTH_MODELS = {"sd15-random": "dpt-hybrid-random", "tiny": "tiny"}
PROMPT, NEGATIVE = "a knight riding a horse along a beach at sunset", "blurry, low quality"
# Every figure the line holds when no part failed (tests/test_gpu_check.py checks them).
FIGURES = (
    "load_s",
    "shot_tau1_s_per_step", "shot_tau1_s", "shot_tau1_peak_gib",
    "shot_tau05_s_per_step", "shot_tau05_s", "shot_tau05_peak_gib", "shot_tau05_controlnet_calls",
    "keyframe_s", "keyframe_batch_s_per_keyframe", "keyframe_ratio", "keyframe_batch_ratio",
    "long_shot_s_per_step", "long_shot_s", "long_shot_peak_gib", "long_shot_windows",
    "lightning_s_per_step", "lightning_s", "lightning_peak_gib",
    "training_s_per_step", "training_peak_gib",
    "depth_s_per_frame", "depth_peak_gib",
    "clip_frames_per_s", "clip_peak_gib",
    "faiss_ms_per_query",
    "offload_s_per_step", "offload_s", "offload_peak_gib", "offload_peak_ratio",
    "total_s",
)


class Probe:
    """Synchronised timing and peak memory on the check's device."""

    def __init__(self, device):
        import torch

        self.torch = torch
        self.device = device

    def sync(self) -> None:
        if self.device.type == "cuda":
            self.torch.cuda.synchronize()

    def reset_peak(self) -> None:
        if self.device.type == "cuda":
            self.sync()
            self.torch.cuda.empty_cache()
            self.torch.cuda.reset_peak_memory_stats()

    def peak_gib(self) -> float:
        if self.device.type == "cuda":
            self.sync()
            return self.torch.cuda.max_memory_allocated() / 2**30
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def conditioning(frames: int, size: int):
    """A moving ramp as depth conditioning: ``frames x 3 x size x size`` in [0, 1]."""
    import torch

    y, x = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    return torch.stack([((0.6 * x + 0.4 * y + 0.03 * t) % 1.0).expand(3, size, size) for t in range(frames)])


def time_shot(probe: Probe, components, scheduler=None, *, frames: int, size: int, steps: int, tau: float = 1.0,
              guidance: float = 7.5, context_window: int = 16, context_stride: int = 8) -> dict:
    """One sampler call to frames: seconds per step (median of the synchronised steps), seconds, peak memory."""
    import torch

    from render.sampler import StructureGuidedSampler

    sampler = StructureGuidedSampler(components, scheduler=scheduler)
    ends = []

    def step_done(i, t, latents):
        probe.sync()
        ends.append(time.perf_counter())

    probe.reset_peak()
    began = time.perf_counter()
    result = sampler(PROMPT, NEGATIVE, conditioning=conditioning(frames, size), steps=steps, guidance_scale=guidance,
                     tau=tau, seed=0, output_type="np", context_window=context_window, context_stride=context_stride,
                     autocast_dtype=torch.float16 if probe.device.type == "cuda" else None, callback=step_done)
    probe.sync()
    seconds = time.perf_counter() - began
    if result.frames.shape != (frames, size, size, 3):
        raise RuntimeError(f"the sampler returned frames of shape {result.frames.shape}")
    per_step = [b - a for a, b in zip(ends, ends[1:])] or [seconds / steps]
    return {"s_per_step": statistics.median(per_step), "s": seconds, "peak_gib": probe.peak_gib(),
            "controlnet_calls": result.controlnet_calls, "windows": len(result.windows)}


def check_training(probe: Probe, components, depth_model, sizes: CheckSizes) -> dict:
    """``training_steps`` character-training steps (fp16 mixed precision on CUDA) after one warm-up step."""
    import numpy as np

    from characters.training import CharacterTrainer, TrainingSettings

    precision = "fp16" if probe.device.type == "cuda" else "no"
    settings = TrainingSettings(name="hare", token="<hare>", class_word="rabbit", steps=10**6, rank=8,
                                resolution=sizes.training_resolution, frames=sizes.training_frames, seed=0,
                                mixed_precision=precision)
    rng = np.random.default_rng(0)
    side = sizes.training_resolution + sizes.training_resolution // 4
    images = [rng.integers(0, 256, (side, side, 3), dtype=np.uint8) for _ in range(3)]
    probe.reset_peak()
    with CharacterTrainer(components, depth_model, images, settings) as trainer:
        trainer.train_step()
        probe.sync()
        began = time.perf_counter()
        for _ in range(sizes.training_steps):
            loss = trainer.train_step()
        probe.sync()
        seconds = time.perf_counter() - began
    if not math.isfinite(loss):
        raise RuntimeError(f"training loss is {loss}")
    return {"training_s_per_step": seconds / sizes.training_steps, "training_peak_gib": probe.peak_gib()}


def check_depth(probe: Probe, depth_model, sizes: CheckSizes) -> dict:
    import numpy as np

    frames = np.random.default_rng(1).integers(0, 256, (sizes.depth_frames, sizes.depth_size, sizes.depth_size, 3),
                                               dtype=np.uint8)
    depth_model(frames[:1])  # warm-up
    probe.reset_peak()
    began = time.perf_counter()
    depth = depth_model(frames)
    probe.sync()
    seconds = time.perf_counter() - began
    if depth.shape != frames.shape[:3] or not np.isfinite(depth).all():
        raise RuntimeError(f"depth of shape {depth.shape} (finite: {bool(np.isfinite(depth).all())})")
    return {"depth_s_per_frame": seconds / len(frames), "depth_peak_gib": probe.peak_gib()}


def check_clip(probe: Probe, clip_model, sizes: CheckSizes) -> dict:
    import numpy as np

    size = clip_model.image_size
    frames = np.random.default_rng(2).integers(0, 256, (sizes.clip_frames, size, size, 3), dtype=np.uint8)
    clip_model.encode_images(frames[:2])  # warm-up
    probe.reset_peak()
    began = time.perf_counter()
    vectors = clip_model.encode_images(frames)
    probe.sync()
    seconds = time.perf_counter() - began
    if vectors.shape[0] != len(frames) or not np.isfinite(vectors).all():
        raise RuntimeError(f"embeddings of shape {vectors.shape}")
    return {"clip_frames_per_s": len(frames) / seconds, "clip_peak_gib": probe.peak_gib()}


def check_faiss(sizes: CheckSizes, dim: int, use_gpu: bool) -> tuple[dict, bool]:
    """Exact inner-product search of ``faiss_queries`` over ``faiss_vectors``; on a GPU when faiss can."""
    import faiss
    import numpy as np

    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((sizes.faiss_vectors, dim), dtype=np.float32)
    queries = rng.standard_normal((sizes.faiss_queries, dim), dtype=np.float32)
    index = faiss.IndexFlatIP(dim)
    on_gpu = use_gpu and hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
    if on_gpu:
        resources = faiss.StandardGpuResources()
        index = faiss.index_cpu_to_gpu(resources, 0, index)
    index.add(vectors)
    index.search(queries[:2], 10)  # warm-up
    began = time.perf_counter()
    _, found = index.search(queries, 10)
    seconds = time.perf_counter() - began
    if found.shape != (len(queries), 10) or (found < 0).any():
        raise RuntimeError("faiss returned missing neighbours")
    return {"faiss_ms_per_query": 1000 * seconds / len(queries)}, on_gpu


def time_keyframes(probe: Probe, components, *, size: int, steps: int, shot_s: float | None,
                   batch: int = 8) -> dict:
    """A keyframe alone and ``batch`` keyframes in one sampler call (seconds per keyframe), each after a warm-up
    call, with their ratios to ``shot_s`` (the 16-frame shot's seconds)."""
    import torch

    from render.keyframes import image_model
    from render.sampler import StructureGuidedSampler

    sampler = StructureGuidedSampler(components)
    cond = conditioning(batch, size)
    autocast = torch.float16 if probe.device.type == "cuda" else None
    result = {}
    with image_model(components.unet):
        for name, count in (("keyframe_s", 1), ("keyframe_batch_s_per_keyframe", batch)):
            prompts = [f"{PROMPT}, picture {i}" for i in range(count)]
            for _ in range(2):  # the second call is timed
                probe.sync()
                began = time.perf_counter()
                out = sampler(prompts, NEGATIVE, conditioning=cond[:count], num_frames=1, steps=steps,
                              guidance_scale=7.5, tau=1.0, seed=list(range(count)), output_type="np",
                              autocast_dtype=autocast)
                probe.sync()
                result[name] = (time.perf_counter() - began) / count
            if out.frames.shape != (count, size, size, 3):
                raise RuntimeError(f"the sampler returned keyframes of shape {out.frames.shape}")
    if shot_s:
        result["keyframe_ratio"] = result["keyframe_s"] / shot_s
        result["keyframe_batch_ratio"] = result["keyframe_batch_s_per_keyframe"] / shot_s
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(SIZES), default=None,
                        help="sd15-random (real size) on CUDA, tiny elsewhere [default: by device]")
    parser.add_argument("--device", default=None, help="torch device [default: cuda if available, else cpu]")
    parser.add_argument("--smoke", action="store_true", help="--preset tiny --device cpu: the same paths, toy size")
    args = parser.parse_args(argv)
    if args.smoke:
        args.preset, args.device = "tiny", "cpu"

    import torch

    from storyreel.devices import default_device

    started = time.perf_counter()
    device = torch.device(args.device) if args.device else default_device()
    preset = args.preset or ("sd15-random" if device.type == "cuda" else "tiny")
    sizes = SIZES[preset]
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    probe = Probe(device)
    figures: dict[str, float] = {}
    errors: dict[str, str] = {}
    info = {"preset": preset, "device": str(device), "dtype": str(dtype).removeprefix("torch."),
            "torch": torch.__version__, "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "sizes": sizes.__dict__}

    def part(name: str, run) -> None:
        """Run one part; its figures join the line, its failure is recorded and the others still run."""
        began = time.perf_counter()
        before = set(figures)
        try:
            figures.update(run())
        except Exception as exc:  # noqa: BLE001  (a failed part is reported in the line; the exit code says so)
            errors[name] = f"{type(exc).__name__}: {exc}"
            traceback.print_exc(file=sys.stderr)
        # the part's figures go to the progress log as well, so a run cut short still reports what it measured
        new = {key: round(value, 6) if isinstance(value, float) else value
               for key, value in figures.items() if key not in before}
        print(f"gpu_check: {name} {time.perf_counter() - began:.1f} s {json.dumps(new, sort_keys=True)}",
              file=sys.stderr, flush=True)

    from storyreel.models.loading import load_render_components
    from storyreel.models.schedulers import make_scheduler

    began = time.perf_counter()
    components = load_render_components(preset, device=device, dtype=dtype)
    probe.sync()
    figures["load_s"] = time.perf_counter() - began
    shot = {"frames": sizes.frames, "size": sizes.size, "steps": sizes.steps}
    timed = ("s_per_step", "s", "peak_gib")
    part("shot_tau1", lambda: _prefixed("shot_tau1", time_shot(probe, components, **shot, tau=1.0), timed))
    part("shot_tau05", lambda: _prefixed("shot_tau05", time_shot(probe, components, **shot, tau=0.5),
                                         (*timed, "controlnet_calls")))
    part("keyframe", lambda: time_keyframes(probe, components, size=sizes.size, steps=sizes.steps,
                                            shot_s=figures.get("shot_tau1_s")))
    part("long_shot", lambda: _prefixed("long_shot", time_shot(
        probe, components, frames=sizes.long_frames, size=sizes.size, steps=sizes.steps, tau=1.0,
        context_window=sizes.context_window, context_stride=sizes.context_stride), (*timed, "windows")))
    part("lightning", lambda: _prefixed("lightning", time_shot(
        probe, components, make_scheduler("euler", timestep_spacing="trailing"), frames=sizes.frames,
        size=sizes.size, steps=sizes.lightning_steps, guidance=1.0), timed))

    def training_and_depth():
        from structure.depth_models import load_depth_model

        depth_model = load_depth_model(DEPTH_MODELS[preset], device=device, progress=False)
        part("training", lambda: check_training(probe, components, depth_model, sizes))
        return check_depth(probe, depth_model, sizes)

    part("depth", training_and_depth)

    def clip_and_faiss():
        from retrieval.clip_models import load_clip_model

        clip_model = load_clip_model(preset, device=device)
        figures.update(check_clip(probe, clip_model, sizes))
        result, info["faiss_gpu"] = check_faiss(sizes, clip_model.dim, use_gpu=device.type == "cuda")
        return result

    part("clip_and_faiss", clip_and_faiss)
    if device.type == "cuda":
        torch.cuda.empty_cache()

    def offload_part():  # last: offload keeps the models on the CPU from here on
        components.enable_model_cpu_offload(device)
        result = _prefixed("offload", time_shot(probe, components, frames=sizes.frames, size=sizes.size,
                                                steps=sizes.offload_steps, tau=1.0), timed)
        if "shot_tau1_peak_gib" in figures:
            result["offload_peak_ratio"] = result["offload_peak_gib"] / figures["shot_tau1_peak_gib"]
        return result

    part("offload", offload_part)
    figures["total_s"] = time.perf_counter() - started
    line = {"info": info, "figures": {k: (round(v, 6) if isinstance(v, float) else v) for k, v in figures.items()},
            "errors": errors}
    print(json.dumps(line, sort_keys=True), flush=True)
    return 1 if errors else 0


def _prefixed(prefix: str, result: dict, keys) -> dict:
    return {f"{prefix}_{key}": result[key] for key in keys}


if __name__ == "__main__":
    sys.exit(main())
