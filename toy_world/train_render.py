"""Train the toy render model on a toy world: VAE, then image model with its depth ControlNet, then motion module.

The components are the render's own diffusers and transformers classes at toy size
(:data:`storyreel.models.architectures.TOY_CONFIGS`): ``AutoencoderKL``, ``CLIPTextModel`` with the real CLIP
tokenizer, ``UNet2DConditionModel``, ``MotionAdapter`` (merged into a ``UNetMotionModel`` for the render) and
``ControlNetModel``. They are trained in the order the real ones were, except that the ControlNet learns with
the image model instead of after it:

1. ``vae``: reconstruction of single frames from the posterior's mean (L1 + L2, figure pixels weighted
   ``FIGURE_WEIGHT`` times: the figure is a few percent of a frame, and unweighted it came back as a grey
   smudge; + a small KL term), half the figures recoloured at random (:func:`recoloured_figures`) so that the
   latent space holds colours beyond the world's five; its ``scaling_factor`` is set afterwards so that scaled
   latents have unit standard deviation, as SD1.5's 0.18215 does for its VAE;
2. ``image``: the UNet, the text encoder and the depth ControlNet (``ControlNetModel.from_unet``) together,
   epsilon prediction on single frames and their scene captions (10% of captions dropped to "", for
   classifier-free guidance) with the render's noise schedule
   (:data:`storyreel.models.schedulers.RENDER_SCHEDULER_CONFIG`); half the samples are guided by their depth
   (ground-truth inverse depth of the frame's scene, normalised with one range per scene as the render
   normalises a shot, repeated in three channels as :func:`structure.conditioning.controlnet_condition`
   gives it) and half are not, so the UNet alone stays a text-to-image model and τ < 1 has one to fall back
   on. Trained after a frozen image model instead, as ControlNets are, the zero-initialised ControlNet had
   not learnt to use depth within this budget (400 steps: figure IoU 0.045 with depth and without);
3. ``motion``: AnimateDiff's recipe: the motion modules only, on 8-frame windows that never span a cut, the
   image model frozen.

Each stage checkpoints to ``CHECKPOINTS/<stage>`` (resumable after ``kill -9``) and saves its component(s)
as a diffusers folder of float16 safetensors under ``OUT/render/``; ``OUT/manifest.json`` gets an entry
``render.<stage>`` with the recipe, losses, seconds and the sha256 of every file written.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np
import torch
import torch.nn.functional as F

from storyreel.atomic_files import write_json
from storyreel.command_line import IntRange, command, quiet_option
from storyreel.hashing import file_sha256
from storyreel.models import architectures
from storyreel.models.schedulers import RENDER_SCHEDULER_CONFIG
from storyreel.models.toy_weights import MANIFEST_FILE, RENDER_FOLDER, TOY_WEIGHTS_DIR
from toy_world.scenes import FPS, scene_caption
from toy_world.training_loop import train_steps
from toy_world.world_files import WorldClip, read_world, world_record

STAGES = ("vae", "image", "motion")
DEFAULT_STEPS = {"vae": 1000, "image": 3500, "motion": 600}  # what the committed weights were trained for
BATCH = {"vae": 16, "image": 16, "motion": 4}  # motion: clips of WINDOW frames
LEARNING_RATE = {"vae": 1e-3, "image": 5e-4, "motion": 5e-4}
DEPTH_DROP = 0.5  # the share of image-stage samples trained without depth (ControlNet residuals off)
WINDOW = 8
WARMUP_STEPS = 100
CAPTION_DROP = {"image": 0.1, "motion": 0.1}
KL_WEIGHT = 1e-6
FIGURE_WEIGHT = 8.0  # figure pixels count this much more than background ones in the VAE loss
RECOLOUR_SHARE = 0.5  # the share of VAE samples whose figure is recoloured at random
INIT_SEED = 0


# -- the world as training tensors -------------------------------------------------------------------------
@dataclass
class FrameData:
    """Every frame of a world with what the stages need: pixels, the caption of its scene, its normalised depth,
    and where 8-frame windows without a cut start."""

    frames: torch.Tensor  # N x 3 x H x W in [-1, 1]
    captions: list[str]
    depth: torch.Tensor  # N x H x W in [0, 1], near = 1
    figure: torch.Tensor  # N x H x W bool, the figure's pixels
    windows: list[int]  # first frame of each cut-free WINDOW-frame window

    @classmethod
    def from_clips(cls, clips: list[WorldClip]) -> FrameData:
        from structure.depth_sequence import depth_from_raw

        frames, captions, depth, figure, windows = [], [], [], [], []
        offset = 0
        for clip in clips:
            for start, end, spec in clip.scenes():
                frames.append(clip.frames[start:end])
                captions += [scene_caption(spec)] * (end - start)
                depth.append(depth_from_raw(clip.inverse_depth[start:end], fps=FPS).depth)
                figure.append(clip.mask[start:end])
                windows += [offset + start + i for i in range(0, end - start - WINDOW + 1)]
            offset += len(clip.frames)
        pixels = torch.from_numpy(np.concatenate(frames)).permute(0, 3, 1, 2).float() / 127.5 - 1
        return cls(pixels, captions, torch.from_numpy(np.concatenate(depth)).float(),
                   torch.from_numpy(np.concatenate(figure)), windows)


def _captions(captions: list[str], rng: np.random.Generator, drop: float) -> list[str]:
    return ["" if rng.random() < drop else caption for caption in captions]


# -- components ------------------------------------------------------------------------------------------
class _Joint(torch.nn.Module):
    """Modules trained together in one stage (one state dict for the checkpoint)."""

    def __init__(self, **modules):
        super().__init__()
        self.parts = torch.nn.ModuleDict(modules)


def _encode_text(tokenizer, text_encoder, captions: list[str]) -> torch.Tensor:
    ids = tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    return text_encoder(ids)[0]


class CaptionCache:
    """Text embeddings of a frozen text encoder, computed once per caption (the world has a few hundred)."""

    def __init__(self, tokenizer, text_encoder):
        self.tokenizer, self.text_encoder, self.known = tokenizer, text_encoder, {}

    @torch.no_grad()
    def __call__(self, captions: list[str]) -> torch.Tensor:
        missing = sorted(set(captions) - set(self.known))
        if missing:
            self.known.update(zip(missing, _encode_text(self.tokenizer, self.text_encoder, missing)))
        return torch.stack([self.known[caption] for caption in captions])


@torch.no_grad()
def encode_latents(vae, frames: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """Scaled VAE latents (the posterior's mean) of ``frames`` (N x 3 x H x W in [-1, 1])."""
    out = [vae.encode(frames[i:i + batch]).latent_dist.mean for i in range(0, len(frames), batch)]
    return torch.cat(out) * vae.config.scaling_factor


def _noise_scheduler():
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(RENDER_SCHEDULER_CONFIG)


def _epsilon_loss(scheduler, latents: torch.Tensor, generator: torch.Generator, predict, timesteps=None):
    noise = torch.randn(latents.shape, generator=generator)
    if timesteps is None:
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],), generator=generator)
    noisy = scheduler.add_noise(latents, noise, timesteps)
    return F.mse_loss(predict(noisy, timesteps), noise)


# -- one stage ---------------------------------------------------------------------------------------------
@dataclass
class StageRun:
    """The state every stage shares: where checkpoints go, the seed, progress."""

    checkpoints: Path
    seed: int
    progress: bool
    checkpoint_every: int


def _train(stage: str, module: torch.nn.Module, parameters, step_loss, steps: int, run: StageRun,
           recipe: dict) -> dict:
    """Run ``step_loss(step, generator)`` for ``steps`` steps (resuming the stage's checkpoint); returns losses and
    seconds."""
    optimizer = torch.optim.AdamW(parameters, lr=LEARNING_RATE[stage], weight_decay=0.0)

    def seeded_step_loss(step: int) -> torch.Tensor:
        return step_loss(step, torch.Generator().manual_seed(run.seed * 1_000_003 + STAGES.index(stage) * 100_003
                                                              + step))

    return train_steps(module, optimizer, seeded_step_loss, steps=steps, warmup_steps=WARMUP_STEPS,
                       checkpoints=run.checkpoints / stage, recipe=recipe, checkpoint_every=run.checkpoint_every,
                       description=f"toy render: {stage}", progress=run.progress, clip_grad_norm=1.0)


def recoloured_figures(pixels: torch.Tensor, figure: torch.Tensor, generator: torch.Generator,
                       share: float = RECOLOUR_SHARE) -> torch.Tensor:
    """``pixels`` (B x 3 x H x W in [-1, 1]) with the figure (``figure``: B x 1 x H x W bool) of a ``share`` of the
    samples moved to a random colour, its shading kept (the figure's mean colour is replaced, the differences
    from it stay): the VAE then represents colours the world never shows, which a character's look may have."""
    batch = pixels.shape[0]
    chosen = (torch.rand(batch, generator=generator) < share).view(-1, 1, 1, 1)
    colours = torch.rand(batch, 3, 1, 1, generator=generator) * 2 - 1
    area = figure.sum(dim=(2, 3), keepdim=True).clamp(min=1)
    means = (pixels * figure).sum(dim=(2, 3), keepdim=True) / area
    recoloured = (pixels - means + colours).clamp(-1, 1)
    return torch.where(figure & chosen, recoloured, pixels)


def train_vae(components: dict, data: FrameData, steps: int, run: StageRun, recipe: dict) -> dict:
    vae = components["vae"]

    def step_loss(step: int, generator: torch.Generator) -> torch.Tensor:
        index = torch.randint(0, len(data.frames), (BATCH["vae"],), generator=generator)
        figure = data.figure[index, None]
        pixels = recoloured_figures(data.frames[index], figure, generator)
        weight = 1.0 + FIGURE_WEIGHT * figure.float()
        posterior = vae.encode(pixels).latent_dist
        error = vae.decode(posterior.mean).sample - pixels
        return ((error.abs() + error.square()) * weight).mean() / weight.mean() + KL_WEIGHT * posterior.kl().mean()

    record = _train("vae", vae, list(vae.parameters()), step_loss, steps, run, recipe)
    probe = data.frames[::max(1, len(data.frames) // 512)][:512]
    with torch.no_grad():
        sample = vae.encode(probe).latent_dist.mean
        vae.register_to_config(scaling_factor=float(1.0 / sample.std()))
        record["reconstruction_l1"] = float((vae.decode(sample[:64]).sample - probe[:64]).abs().mean())
    record["scaling_factor"] = vae.config.scaling_factor
    return record


def train_image_model(components: dict, data: FrameData, latents: torch.Tensor, steps: int, run: StageRun,
                      recipe: dict) -> dict:
    """The UNet, the text encoder and the depth ControlNet together (see the module doc): each sample is guided
    by its depth with probability ``1 - DEPTH_DROP`` and is a plain text-to-image sample otherwise."""
    from diffusers import ControlNetModel

    from structure.conditioning import controlnet_condition

    unet, text_encoder, tokenizer = components["unet"], components["text_encoder"], components["tokenizer"]
    with torch.random.fork_rng():
        torch.manual_seed(INIT_SEED)
        controlnet = ControlNetModel.from_unet(
            unet, conditioning_embedding_out_channels=architectures.TOY_CONTROLNET_CONFIG[
                "conditioning_embedding_out_channels"])
        # Not the zero-initialised output layers of a ControlNet trained after its image model: two zero layers in
        # series (the conditioning embedding's last convolution and the zero convolutions) learn to pass depth
        # only after thousands of large batches. Variance-preserving weights let depth reach the UNet at step 0.
        architectures.perturb_controlnet(controlnet)
    components["controlnet"] = controlnet
    joint = _Joint(unet=unet, text_encoder=text_encoder, controlnet=controlnet)
    scheduler = _noise_scheduler()
    batch = BATCH["image"]

    def step_loss(step: int, generator: torch.Generator) -> torch.Tensor:
        index = torch.randint(0, len(latents), (batch,), generator=generator)
        rng_step = np.random.default_rng([run.seed, step])
        text = _encode_text(tokenizer, text_encoder, _captions([data.captions[i] for i in index], rng_step,
                                                                CAPTION_DROP["image"]))
        guided = torch.from_numpy(rng_step.random(batch) >= DEPTH_DROP).float()
        condition = controlnet_condition(data.depth[index])

        def predict(noisy, t):
            down, mid = controlnet(noisy, t, encoder_hidden_states=text, controlnet_cond=condition, return_dict=False)
            keep = guided.view(-1, 1, 1, 1)
            return unet(noisy, t, encoder_hidden_states=text,
                        down_block_additional_residuals=[residual * keep for residual in down],
                        mid_block_additional_residual=mid * keep).sample

        return _epsilon_loss(scheduler, latents[index], generator, predict)

    return _train("image", joint, list(joint.parameters()), step_loss, steps, run, recipe)


def train_motion_module(components: dict, data: FrameData, latents: torch.Tensor, steps: int, run: StageRun,
                        recipe: dict) -> dict:
    unet = architectures.merge_motion_adapter(components["unet"], components["motion_adapter"])
    unet.freeze_unet2d_params()
    text_encoder, tokenizer = components["text_encoder"], components["tokenizer"]
    scheduler = _noise_scheduler()
    motion = [p for p in unet.parameters() if p.requires_grad]
    starts = torch.tensor(data.windows)
    encode_cached = CaptionCache(tokenizer, text_encoder)

    def step_loss(step: int, generator: torch.Generator) -> torch.Tensor:
        first = starts[torch.randint(0, len(starts), (BATCH["motion"],), generator=generator)]
        index = (first[:, None] + torch.arange(WINDOW)[None]).reshape(-1)  # B*F frames, clip by clip
        rng_step = np.random.default_rng([run.seed, step])
        captions = _captions([data.captions[int(i)] for i in first], rng_step, CAPTION_DROP["motion"])
        text = encode_cached(captions).repeat_interleave(WINDOW, dim=0)
        batch = latents[index].reshape(BATCH["motion"], WINDOW, *latents.shape[1:]).transpose(1, 2)  # B x C x F x h x w
        t = torch.randint(0, scheduler.config.num_train_timesteps, (BATCH["motion"],), generator=generator)
        return _epsilon_loss(scheduler, batch, generator,
                             lambda noisy, timesteps: unet(noisy, timesteps, encoder_hidden_states=text).sample, t)

    record = _train("motion", unet, motion, step_loss, steps, run, recipe)
    # the trained motion modules back into the adapter that is saved
    adapter = components["motion_adapter"]
    for adapter_block, unet_block in zip(adapter.down_blocks, unet.down_blocks):
        adapter_block.motion_modules.load_state_dict(unet_block.motion_modules.state_dict())
    for adapter_block, unet_block in zip(adapter.up_blocks, unet.up_blocks):
        adapter_block.motion_modules.load_state_dict(unet_block.motion_modules.state_dict())
    return record


# -- saving ------------------------------------------------------------------------------------------------
def save_component(module, folder: Path) -> dict[str, str]:
    """``module.save_pretrained(folder)`` in float16 safetensors; the sha256 of every file written."""
    import copy

    folder.mkdir(parents=True, exist_ok=True)
    half = copy.deepcopy(module).to(torch.float16)
    half.save_pretrained(str(folder), safe_serialization=True)
    return {str(path.relative_to(folder.parent.parent)): file_sha256(path)
            for path in sorted(folder.rglob("*")) if path.is_file()}


def _update_manifest(out: Path, key: str, record: dict) -> None:
    path = out / MANIFEST_FILE
    manifest = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    manifest[key] = record
    write_json(path, manifest)


# -- the whole run -----------------------------------------------------------------------------------------
def train_render_model(world: Path, out: Path = TOY_WEIGHTS_DIR, steps: dict | None = None, seed: int = 0,
                       checkpoints: Path | None = None, checkpoint_every: int = 200, progress: bool = True,
                       max_clips: int | None = None) -> dict:
    """Train the stages in order on ``world`` (a stage whose checkpoint is complete is only restored, so a rerun
    resumes where a killed one stopped); save the components under ``out/render`` and their entries in
    ``out/manifest.json``. Returns the records."""
    world, out = Path(world), Path(out)
    steps = {**DEFAULT_STEPS, **(steps or {})}
    checkpoints = Path(checkpoints) if checkpoints is not None else world / ".checkpoints" / "render"
    run = StageRun(checkpoints, seed, progress, checkpoint_every)
    clips = read_world(world, limit=max_clips)
    data = FrameData.from_clips(clips)
    base_recipe = {"configs": {k: architectures._config(v) for k, v in architectures.TOY_CONFIGS.items()},
                   "init_seed": INIT_SEED, "seed": seed, "world": str(world.resolve()), "clips": len(clips),
                   "frames": len(data.frames), "scheduler": RENDER_SCHEDULER_CONFIG}
    with torch.random.fork_rng():
        components = architectures.build_toy_components()
    records = {}
    latents = None
    for stage in STAGES:
        recipe = {**base_recipe, "stage": stage, "steps": steps[stage], "batch": BATCH[stage],
                  "learning_rate": LEARNING_RATE[stage], "caption_drop": CAPTION_DROP.get(stage),
                  **({"figure_weight": FIGURE_WEIGHT, "recolour_share": RECOLOUR_SHARE, "kl_weight": KL_WEIGHT}
                     if stage == "vae" else {})}
        if stage == "vae":
            record = train_vae(components, data, steps[stage], run, recipe)
        else:
            if latents is None:
                latents = encode_latents(components["vae"], data.frames)
            trainer = {"image": train_image_model, "motion": train_motion_module}
            record = trainer[stage](components, data, latents, steps[stage], run, recipe)
        files = {}
        for name in _STAGE_COMPONENTS[stage]:
            files.update(save_component(components[name], out / RENDER_FOLDER / name))
        record.update(recipe=recipe, world_made_with=world_record(world), threads=torch.get_num_threads(),
                      files=files)
        _update_manifest(out, f"render.{stage}", record)
        records[stage] = record
    return records


_STAGE_COMPONENTS = {"vae": ("vae",), "image": ("unet", "text_encoder", "controlnet"), "motion": ("motion_adapter",)}


@command("toy-world-train-render")
@click.option("--world", required=True, type=click.Path(path_type=Path, exists=True, file_okay=False),
              help="A toy world folder (data/make_toy_world.py).")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), default=TOY_WEIGHTS_DIR, show_default=True,
              help="Where render/ and manifest.json go.")
@click.option("--steps", "step_values", multiple=True, metavar="STAGE=N",
              help=f"Steps of a stage ({', '.join(STAGES)}); defaults {DEFAULT_STEPS}.")
@click.option("--seed", type=IntRange(min=0), default=0, show_default=True, help="Seed of the batches.")
@click.option("--checkpoints", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Checkpoint folder [default: WORLD/.checkpoints/render].")
@click.option("--checkpoint-every", type=IntRange(min=1), default=200, show_default=True)
@click.option("--max-clips", type=IntRange(min=1), default=None, help="Train on the first N clips only.")
@click.option("--threads", type=IntRange(min=1), default=1, show_default=True, help="torch CPU threads.")
@quiet_option()
def main(world, out, step_values, seed, checkpoints, checkpoint_every, max_clips, threads, quiet):
    """Train the toy render model (VAE, image model, motion module, depth ControlNet) on a toy world."""
    from storyreel.command_line import fail

    torch.set_num_threads(threads)
    steps = {}
    for value in step_values:
        stage, _, count = value.partition("=")
        if stage not in STAGES or not count.isdigit() or int(count) < 1:
            fail(f"--steps: expected STAGE=N with STAGE one of {', '.join(STAGES)}, got {value!r}")
        steps[stage] = int(count)
    records = train_render_model(world, out, steps, seed=seed, checkpoints=checkpoints,
                                 checkpoint_every=checkpoint_every, progress=not quiet, max_clips=max_clips)
    for stage, record in records.items():
        click.echo(f"{stage}: {record['steps']} steps in {record['train_seconds']} s, loss {record['first_loss']} → "
                   f"{record['final_loss']:.4f}")


if __name__ == "__main__":
    main()
