"""Train a toy DPT depth model on a toy world: ``python -m toy_world.train_depth --world DIR --steps N``.

The model is transformers' ``DPTForDepthEstimation`` from :data:`DEPTH_CONFIG` (a small ViT on 64x64 frames
with DPT's reassemble, fusion and head; the depth comes out at twice the input size). Frames are prepared by
the ``DPTImageProcessor`` of :data:`DEPTH_PROCESSOR`, the processor :class:`structure.depth_models.DepthEstimator`
runs, and the prediction is brought back to the frame's size with the processor's own post-processing
(bicubic), so training sees exactly what the structure stage will.

The loss is the relative L1 error ``|predicted - truth| / truth`` against the ground-truth inverse depth, which
the toy world already gives on a fixed scale (sky 0.1, the ground from 0.15 at the horizon to 1 at the bottom
row, figures a little nearer than the ground they stand on), so the far sky counts as much as AbsRel counts it;
figure pixels weigh :data:`FIGURE_WEIGHT` times more, as they are few. Each step
takes :data:`BATCH` random frames (the step's own seeded generator, so a resumed run draws the same batches),
with random horizontal flips.

Progress (tqdm), the loss, checkpoints every ``--checkpoint-every`` steps (resumed after a kill), and at the end
the float16 weights in ``--out/depth.safetensors`` with their entry in ``--out/manifest.json``, including the
held-out error of :func:`depth_metrics` when ``--heldout`` is given.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from storyreel.models.toy_weights import TOY_WEIGHTS_DIR
from structure.depth_models import TINY_PROCESSOR as DEPTH_PROCESSOR
from structure.depth_models import TOY_CONFIG as DEPTH_CONFIG
from structure.depth_models import TOY_INIT_SEED, build_toy_model
from toy_world.training_files import save_trained_weights, trainer_command
from toy_world.training_loop import train_steps
from toy_world.world_files import WorldClip, read_world, world_record

DEFAULT_STEPS = 1000  # what the committed weights were trained for
MODEL_NAME = "depth"
BATCH = 16
LEARNING_RATE = 1e-3
WEIGHT_DECAY = 0.01
WARMUP_STEPS = 50
EVAL_FRAME_STRIDE = 2
FIGURE_WEIGHT = 4.0  # the loss weight of a figure pixel (a background pixel weighs 1)


def build_depth_model():
    """The toy DPT architecture (:data:`structure.depth_models.TOY_CONFIG`, seeded initial weights) and its image
    processor."""
    return build_toy_model(trained=False)


def load_toy_depth(folder: Path = TOY_WEIGHTS_DIR, device: str | torch.device | None = "cpu", batch_size: int = 32,
                   progress: bool = False):
    """The trained toy DPT as a :class:`structure.depth_models.DepthEstimator` (named ``toy``), after checking
    ``depth.safetensors`` against the sha256 in ``folder/manifest.json``
    (:class:`storyreel.models.toy_weights.ToyWeightsError` otherwise)."""
    from structure.depth_models import DepthEstimator

    model, processor = build_toy_model(folder=folder)
    return DepthEstimator("toy", model, processor, device=device or "cpu", dtype=torch.float32,
                          batch_size=batch_size, progress=progress)


def predict_at_frame_size(model, processor, frames: np.ndarray) -> torch.Tensor:
    """``N x H x W x 3`` uint8 frames → ``N x H x W`` inverse depth, prepared and post-processed by ``processor``
    as :meth:`structure.depth_models.DepthEstimator.predict_batch` does (with gradients)."""
    pixels = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)
    inputs = processor(images=pixels, return_tensors="pt")
    depth = model(pixel_values=inputs["pixel_values"]).predicted_depth
    height, width = frames.shape[1:3]
    return torch.nn.functional.interpolate(depth[:, None], size=(height, width), mode="bicubic",
                                           align_corners=False)[:, 0]


# -- measuring ------------------------------------------------------------------------------------------
def aligned_abs_rel(predicted: np.ndarray, truth: np.ndarray) -> float:
    """AbsRel of one frame after least-squares scale-and-shift alignment, in inverse depth.

    ``s, t = argmin sum((s * predicted + t - truth) ** 2)`` over all pixels, then
    ``mean(|s * predicted + t - truth| / truth)`` over all pixels (the toy world's inverse depth is at least
    0.1 everywhere, so no pixel is left out).
    """
    from evaluation.structure_fidelity import align_scale_shift

    g = truth.astype(np.float64)
    return float(np.mean(np.abs(align_scale_shift(predicted, g) - g) / g))


def depth_metrics(estimator, clips: list[WorldClip], stride: int = EVAL_FRAME_STRIDE) -> dict:
    """Held-out depth error of ``estimator`` (``N x H x W x 3`` uint8 → ``N x H x W`` inverse depth).

    Frames 0, ``stride``, 2 ``stride``, … of every clip (decoded from the MP4s) are predicted, and
    ``abs_rel`` is the mean over those frames of :func:`aligned_abs_rel`. ``abs_rel_figure`` is the same
    mean restricted to the figure's pixels (the alignment still uses the whole frame).
    """
    from evaluation.structure_fidelity import align_scale_shift

    errors, figure_errors = [], []
    for clip in clips:
        frames, truth, masks = clip.frames[::stride], clip.inverse_depth[::stride], clip.mask[::stride]
        predicted = np.asarray(estimator(frames))
        for p, g, mask in zip(predicted, truth, masks):
            errors.append(aligned_abs_rel(p, g))
            if mask.any():
                aligned = align_scale_shift(p, g.astype(np.float64))
                figure_errors.append(float(np.mean(np.abs(aligned[mask] - g[mask]) / g[mask])))
    return {"abs_rel": float(np.mean(errors)), "abs_rel_figure": float(np.mean(figure_errors)),
            "heldout_frames": len(errors), "frame_stride": stride}


# -- training -------------------------------------------------------------------------------------------
def depth_step_loss(model, processor, frames: np.ndarray, truth: np.ndarray, masks: np.ndarray, seed: int,
                    step: int) -> torch.Tensor:
    """The loss of training step ``step``, its batch drawn from ``np.random.default_rng([seed, step])``: relative
    L1 on inverse depth (``|predicted - truth| / truth``, as AbsRel counts it), each figure pixel weighing
    :data:`FIGURE_WEIGHT` times a background pixel."""
    rng = np.random.default_rng([seed, step])
    picks = np.sort(rng.integers(len(frames), size=BATCH))
    flips = rng.random(BATCH) < 0.5

    def flipped(array):
        return np.ascontiguousarray(np.where(flips.reshape(-1, *[1] * (array.ndim - 1)), array[:, :, ::-1], array))

    target = torch.from_numpy(flipped(truth[picks]))
    weight = torch.from_numpy(1.0 + (FIGURE_WEIGHT - 1.0) * flipped(masks[picks]).astype(np.float32)) / target
    error = (predict_at_frame_size(model, processor, flipped(frames[picks])) - target).abs()
    return (error * weight).sum() / weight.sum()


def train_depth(world: Path, out: Path, steps: int, seed: int = 0, checkpoints: Path | None = None,
                checkpoint_every: int = 100, heldout: Path | None = None, progress: bool = True,
                max_clips: int | None = None) -> dict:
    """Train the toy DPT on ``world`` for ``steps`` steps (resuming ``checkpoints``), save it to ``out``;
    returns the manifest entry (with the held-out AbsRel when ``heldout`` is given)."""
    from structure.depth_models import DepthEstimator

    world, out = Path(world), Path(out)
    checkpoints = Path(checkpoints) if checkpoints is not None else world / ".checkpoints" / MODEL_NAME
    model, processor = build_depth_model()
    clips = read_world(world, limit=max_clips)
    frames = np.concatenate([clip.frames for clip in clips])
    truth = np.concatenate([clip.inverse_depth for clip in clips]).astype(np.float32)
    masks = np.concatenate([clip.mask for clip in clips])
    recipe = {"config": DEPTH_CONFIG, "processor": DEPTH_PROCESSOR, "batch": BATCH, "learning_rate": LEARNING_RATE,
              "weight_decay": WEIGHT_DECAY, "warmup_steps": WARMUP_STEPS,
              "loss": "relative l1 on inverse depth, figure pixels weighted", "figure_weight": FIGURE_WEIGHT,
              "init_seed": TOY_INIT_SEED, "seed": seed, "steps": steps, "world": str(world.resolve()),
              "clips": len(clips), "frames": len(frames)}
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)
    record = {"recipe": recipe, "world_made_with": world_record(world), "threads": torch.get_num_threads()}
    record.update(train_steps(model, optimizer, lambda step: depth_step_loss(model, processor, frames, truth, masks,
                                                                             seed, step),
                              steps=steps, warmup_steps=WARMUP_STEPS, checkpoints=checkpoints, recipe=recipe,
                              checkpoint_every=checkpoint_every, description="toy depth", progress=progress))
    if heldout is not None:
        record["heldout"] = {"path": str(Path(heldout).resolve()), "made_with": world_record(heldout)}
        estimator = DepthEstimator("toy-world-depth", model, processor, device="cpu", dtype=torch.float32,
                                   batch_size=32, progress=False)
        record["metrics"] = depth_metrics(estimator, read_world(heldout))
    save_trained_weights(out, MODEL_NAME, model, record)
    return record


main = trainer_command("toy-world-train-depth", train_depth, MODEL_NAME, DEFAULT_STEPS, 100, "AbsRel",
                       "Train the toy DPT depth model on a toy world.")


if __name__ == "__main__":
    main()
