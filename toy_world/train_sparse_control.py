"""Train the toy SparseCtrl RGB model on a toy world: diffusers' ``SparseControlNetModel`` for the toy render UNet.

* **The model** has the layout :func:`render.sparse_control.sparse_controlnet_config` gives the toy UNet (the RGB
  variant: ``use_simplified_condition_embedding``, so the condition is the VAE latents of the conditioning frames
  next to a mask channel saying which frames they are). Its input convolution, time embedding, down blocks (with
  their motion modules) and mid block start as copies of the trained toy motion UNet's (what
  ``SparseControlNetModel.from_unet`` copies from a ``UNet2DConditionModel``, plus the motion modules); its output
  convolutions start at zero (so at step 0 the render is the plain one), and its condition embedding, which
  SparseCtrl also zero-initialises, starts with variance-preserving random weights instead (``EMBEDDING_GAIN``):
  two zero layers in series learn nothing until one of them moves, which at this budget wastes most of the run
  (the toy depth ControlNet's lesson, :mod:`toy_world.train_render`). A first run with the embedding at a tenth of
  that gain, a learning rate of 5e-4 and 10% of captions dropped had not learnt to use the condition after 600
  steps (frame 0 no nearer a keyframe picture than without it), and one with this gain, 1e-3 and 30% but the
  unweighted loss not after 400, so both were stopped.
* **The recipe** (SparseCtrl's, at toy size): the toy render model frozen, epsilon prediction on 8-frame windows of
  the train world that never span a cut, with the render's noise schedule, each sample's squared error weighted
  by ``(1 - alpha_bar) / alpha_bar`` capped at ``X0_WEIGHT_CAP`` (an x0 loss in epsilon form: what a condition
  can tell the model about the frames counts most at high noise, where the plain epsilon loss hardly rewards it;
  unweighted, conditioning frame 0 lowered its epsilon error at t = 800 by only 12% after 400 steps). Each sample
  is conditioned on frame 0 only (a keyframe shot), on frames 0 and 7, on frames 0 and 7 of a "two scenes" window
  (frames 0-3 of one scene then 4-7 of another, with the second scene's caption and no depth: a generated
  transition, which the first recipe without it drew as the next scene from frame 0 on, bench/toy_transitions.py),
  or on nothing (SparseCtrl's unconditioned share), at random (``CONDITION_SHARES``); the conditioning frames are
  VAE latent *samples* (the posterior's mean plus its standard deviation times noise), as
  :class:`render.sparse_control.SparseCondition` encodes them by default. Captions are dropped to "" for
  ``CAPTION_DROP`` of the samples (a generated transition's first frame has to follow its condition against the
  next shot's caption). The frozen depth ControlNet guides half the samples (``DEPTH_SHARE``), its residuals added
  to SparseCtrl's as the sampler adds them (keyframe shots keep their depth; transitions run without).

It writes ``OUT/sparse_control/`` (``config.json`` + ``diffusion_pytorch_model.safetensors``, float16) and the
entry ``sparse_control`` of ``OUT/manifest.json`` (recipe, seed, steps, losses, the sha256 of each file).
Checkpoints go to ``CHECKPOINTS`` (resumable after ``kill -9``). ``render-story --models toy`` loads it for keyframe
shots and generated transitions (``--sparsectrl toy``, the toy preset's default), refusing a changed file.
"""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np
import torch
import torch.nn.functional as F

from storyreel.command_line import command
from storyreel.models.schedulers import RENDER_SCHEDULER_CONFIG
from storyreel.models.toy_weights import TOY_WEIGHTS_DIR
from toy_world.stage_options import stage_options
from toy_world.training_loop import train_steps
from toy_world.world_files import read_world, world_record

MANIFEST_KEY = "sparse_control"
FOLDER = "sparse_control"  # relative to the toy weights folder
DEFAULT_STEPS = 1600
BATCH = 4  # windows of WINDOW frames
WINDOW = 8
LEARNING_RATE = 1e-3
WARMUP_STEPS = 100
# "two_scenes": a generated transition as it is rendered: the first half of one scene's window then the second
# half of another scene's (a cut in the middle), conditioned on its first and last frames, with the second scene's
# caption and no depth. Without it the model never sees a window whose ends are different scenes, and draws a
# transition as the next scene from its first frame on.
CONDITION_SHARES = {"first": 0.3, "first_last": 0.25, "two_scenes": 0.3, "none": 0.15}
DEPTH_SHARE = 0.5
CAPTION_DROP = 0.3
EMBEDDING_GAIN = 1.0
X0_WEIGHT_CAP = 20.0  # the epsilon loss weighted as an x0 loss, (1 - alpha_bar) / alpha_bar, capped
INIT_SEED = 0
SEED_OFFSET = 9_000_011  # the batches' seeds differ from the other stages'


def initial_sparse_controlnet(components, seed: int = INIT_SEED):
    """An RGB ``SparseControlNetModel`` for the toy render model: its trunk copied from the motion UNet, its output
    convolutions zero, its condition embedding small and random (seeded)."""
    from diffusers import SparseControlNetModel

    from render.sparse_control import sparse_controlnet_config

    unet = components.unet
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = SparseControlNetModel(**sparse_controlnet_config(unet, components.vae.config.latent_channels))
        for name in ("conv_in", "time_proj", "time_embedding", "down_blocks", "mid_block"):
            getattr(model, name).load_state_dict(getattr(unet, name).state_dict(), strict=False)
        conv = model.controlnet_cond_embedding
        with torch.no_grad():
            torch.nn.init.normal_(conv.weight, std=EMBEDDING_GAIN / conv.weight[0].numel() ** 0.5)
            torch.nn.init.zeros_(conv.bias)
    return model


@torch.no_grad()
def encode_posterior(vae, frames: torch.Tensor, batch: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """The VAE posterior's mean and standard deviation of ``frames`` (N x 3 x H x W in [-1, 1]), scaled."""
    means, stds = [], []
    for i in range(0, len(frames), batch):
        posterior = vae.encode(frames[i:i + batch]).latent_dist
        means.append(posterior.mean)
        stds.append(posterior.std)
    scaling = vae.config.scaling_factor
    return torch.cat(means) * scaling, torch.cat(stds) * scaling


def condition_kinds(rng: np.random.Generator, count: int) -> list[str]:
    kinds = list(CONDITION_SHARES)
    return [kinds[i] for i in rng.choice(len(kinds), size=count, p=list(CONDITION_SHARES.values()))]


def train_sparse_control(world: Path, out: Path = TOY_WEIGHTS_DIR, steps: int = DEFAULT_STEPS, seed: int = 0,
                         checkpoints: Path | None = None, checkpoint_every: int = 200, heldout: Path | None = None,
                         progress: bool = True, max_clips: int | None = None) -> dict:
    """Train the toy SparseCtrl model on ``world`` and save it under ``out/sparse_control`` with its entry in
    ``out/manifest.json``; returns the entry. ``heldout`` is accepted for the trainers' common command line and not
    used (the model is measured by ``bench/toy_transitions.py``)."""
    from diffusers import DDPMScheduler

    from structure.conditioning import controlnet_condition
    from toy_world.train_ip_adapter import _update_manifest, load_toy_render
    from toy_world.train_render import CaptionCache, FrameData

    world, out = Path(world), Path(out)
    checkpoints = Path(checkpoints) if checkpoints is not None else world / ".checkpoints" / MANIFEST_KEY
    components = load_toy_render(out)
    for module in (components.unet, components.vae, components.text_encoder, components.controlnet):
        module.requires_grad_(False).eval()
    clips = read_world(world, limit=max_clips)
    data = FrameData.from_clips(clips)
    means, stds = encode_posterior(components.vae, data.frames)
    starts = torch.tensor(data.windows)
    recipe = {"seed": seed, "init_seed": INIT_SEED, "world": str(world.resolve()), "clips": len(clips),
              "frames": len(data.frames), "windows": len(data.windows), "window": WINDOW, "steps": steps,
              "batch": BATCH, "learning_rate": LEARNING_RATE, "warmup_steps": WARMUP_STEPS,
              "condition_shares": CONDITION_SHARES, "depth_share": DEPTH_SHARE, "caption_drop": CAPTION_DROP,
              "embedding_gain": EMBEDDING_GAIN, "x0_weight_cap": X0_WEIGHT_CAP, "scheduler": RENDER_SCHEDULER_CONFIG,
              "init": "trunk copied from the toy motion UNet; output convolutions zero",
              "condition": "VAE latent samples of frame 0 (first), frames 0 and 7 (first_last; two_scenes: frames 0-3 "
                           "of one scene's window then 4-7 of another's, its caption, no depth) or none, + mask"}
    model = initial_sparse_controlnet(components)
    model.requires_grad_(True)
    unet, controlnet = components.unet, components.controlnet
    scheduler = DDPMScheduler.from_config(RENDER_SCHEDULER_CONFIG)
    captions = CaptionCache(components.tokenizer, components.text_encoder)

    def step_loss(step: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed * 1_000_003 + SEED_OFFSET + step)
        rng = np.random.default_rng([seed, SEED_OFFSET, step])
        first = starts[torch.randint(0, len(starts), (BATCH,), generator=generator)]
        second = starts[torch.randint(0, len(starts), (BATCH,), generator=generator)]  # another scene's window
        kinds = condition_kinds(rng, BATCH)
        frames = torch.arange(WINDOW)[None]
        joined = torch.tensor([kind == "two_scenes" for kind in kinds])[:, None] & (frames >= WINDOW // 2)
        index = torch.where(joined, second[:, None] + frames, first[:, None] + frames).reshape(-1)  # B*F frames
        caption_of = [int(second[b]) if kind == "two_scenes" else int(first[b]) for b, kind in enumerate(kinds)]

        def windows(values: torch.Tensor) -> torch.Tensor:  # B*F x ... → B x C x F x h x w
            return values.reshape(BATCH, WINDOW, *values.shape[1:]).transpose(1, 2)

        latents = windows(means[index])
        sampled = windows(means[index] + stds[index] * torch.randn(means[index].shape, generator=generator))
        mask = torch.zeros(BATCH, 1, WINDOW, 1, 1)
        for b, kind in enumerate(kinds):
            if kind != "none":
                mask[b, :, 0] = 1
            if kind in ("first_last", "two_scenes"):
                mask[b, :, WINDOW - 1] = 1
        mask = mask.expand(-1, -1, -1, *latents.shape[3:])
        cond = sampled * mask
        texts = ["" if rng.random() < CAPTION_DROP else data.captions[i] for i in caption_of]
        text = captions(texts).repeat_interleave(WINDOW, dim=0)
        with_depth = (rng.random(BATCH) < DEPTH_SHARE) & np.array([kind != "two_scenes" for kind in kinds])
        guided = torch.from_numpy(with_depth).float().repeat_interleave(WINDOW).view(-1, 1, 1, 1)
        noise = torch.randn(latents.shape, generator=generator)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (BATCH,), generator=generator)
        noisy = scheduler.add_noise(latents, noise, timesteps)
        down, mid = model(noisy, timesteps, encoder_hidden_states=text, controlnet_cond=cond, conditioning_mask=mask,
                          return_dict=False)
        with torch.no_grad():
            flat = noisy.transpose(1, 2).reshape(-1, *noisy.shape[1:2], *noisy.shape[3:])
            depth_down, depth_mid = controlnet(flat, timesteps.repeat_interleave(WINDOW), encoder_hidden_states=text,
                                               controlnet_cond=controlnet_condition(data.depth[index]),
                                               return_dict=False)
        down = [d + s * guided for d, s in zip(down, depth_down)]
        mid = mid + depth_mid * guided
        prediction = unet(noisy, timesteps, encoder_hidden_states=text, down_block_additional_residuals=down,
                          mid_block_additional_residual=mid).sample
        alpha = scheduler.alphas_cumprod[timesteps]
        weight = ((1 - alpha) / alpha).clamp(max=X0_WEIGHT_CAP).view(-1, 1, 1, 1, 1)
        return (weight * F.mse_loss(prediction, noise, reduction="none")).mean()

    optimizer = torch.optim.AdamW(list(model.parameters()), lr=LEARNING_RATE, weight_decay=0.0)
    record = train_steps(model, optimizer, step_loss, steps=steps, warmup_steps=WARMUP_STEPS, checkpoints=checkpoints,
                         recipe=recipe, checkpoint_every=checkpoint_every, description="toy SparseCtrl",
                         progress=progress, clip_grad_norm=1.0)
    files = save_sparse_control(model, out)
    record.update(recipe=recipe, world_made_with=world_record(world), threads=torch.get_num_threads(), files=files)
    _update_manifest(out, MANIFEST_KEY, record)
    return record


def save_sparse_control(model, out: Path) -> dict[str, str]:
    """``out/sparse_control`` (diffusers layout, float16 safetensors); the sha256 of each file by its path relative
    to ``out``."""
    import copy

    from storyreel.hashing import file_sha256

    folder = Path(out) / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    copy.deepcopy(model).to(torch.float16).save_pretrained(str(folder), safe_serialization=True)
    return {str(path.relative_to(out)): file_sha256(path) for path in sorted(folder.rglob("*")) if path.is_file()}


@command("toy-world-train-sparse-control")
@stage_options("sparse_control", DEFAULT_STEPS)
def main(world, out, steps, seed, checkpoints, checkpoint_every, max_clips, threads, quiet):
    """Train the toy SparseCtrl RGB model (keyframe shots, generated transitions) on a toy world."""
    torch.set_num_threads(threads)
    record = train_sparse_control(world, out, steps, seed=seed, checkpoints=checkpoints,
                                  checkpoint_every=checkpoint_every, progress=not quiet, max_clips=max_clips)
    click.echo(f"trained {record['steps']} steps in {record['train_seconds']} s, loss {record['first_loss']} → "
               f"{record['final_loss']:.4f}")


if __name__ == "__main__":
    main()
