"""Train the toy IP-Adapter on a toy world: h94's ``base`` adapter for the toy render model, with the toy CLIP's
vision tower as its image encoder.

* **The image encoder** is the trained toy CLIP's vision tower (open_clip ``VisionTransformer``: 64 px, patch 8, 4
  layers, width 64, GELU, class-token pooling after ``ln_post``) converted weight for weight into a transformers
  ``CLIPVisionModelWithProjection`` (:func:`vision_encoder_from_open_clip`): its ``image_embeds`` are the toy
  CLIP's ``encode_image`` (tested), and :func:`render.ip_adapter.image_processor_for` (64 px, CLIP's mean and
  std, which are the toy CLIP's) prepares its input as retrieval prepares the toy CLIP's. It is not trained.
* **The adapter** is h94's ``base`` layout sized for the toy UNet (``image_proj``: a linear map of the 32-d image
  embedding to 4 tokens of the cross-attention width and a LayerNorm; ``ip_adapter``: ``to_k_ip`` / ``to_v_ip``
  on each of the 7 cross-attention layers), installed with :func:`render.ip_adapter.install_ip_adapters` (diffusers'
  ``IPAdapterAttnProcessor2_0``), so training and rendering run the same layers. The key and value projections
  start as copies of the text's (IP-Adapter's initialisation); everything else of the render model is frozen.
* **The recipe** (IP-Adapter's, at toy size): epsilon prediction on single frames of the train world with the
  render's noise schedule, the motion UNet with its motion modules bypassed (:func:`render.keyframes.image_model`,
  the image model keyframes use), no depth. The image embedding comes from **another frame of the same scene**,
  flipped left-right half the time, so it has to carry the figure's kind and colour rather than its pixels' place.
  Half the samples have their figure recoloured at random in both frames
  (:func:`toy_world.train_render.recoloured_figures`, the VAE's recolouring; the caption then loses its colour
  word), so colours the world never shows, such as the toy character's pink, come through the image alone. The
  caption is dropped to "" for ``CAPTION_DROP`` of the samples and the image embedding zeroed (diffusers' negative
  for ``base``) for ``IMAGE_DROP``.

It writes ``OUT/ip_adapter/ip-adapter_toy.safetensors`` (h94's keys, float32) and ``OUT/ip_adapter/image_encoder/``
(config.json + model.safetensors, float16 as the toy CLIP is) and the entry ``ip_adapter`` of ``OUT/manifest.json``
(recipe, seed, steps, losses, sha256 of each file). Checkpoints go to ``CHECKPOINTS`` (resumable after ``kill -9``).
``render-story --models toy --ip-adapter toy`` loads the files, refusing any whose sha256 differs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np
import torch
import torch.nn.functional as F

from storyreel.atomic_files import atomic_path, write_json
from storyreel.command_line import command
from storyreel.hashing import file_sha256
from storyreel.models.schedulers import RENDER_SCHEDULER_CONFIG
from storyreel.models.toy_weights import MANIFEST_FILE, RENDER_FOLDER, TOY_WEIGHTS_DIR
from toy_world.scenes import scene_caption
from toy_world.stage_options import stage_options
from toy_world.training_loop import train_steps
from toy_world.world_files import WorldClip, read_world, world_record

MANIFEST_KEY = "ip_adapter"
DEFAULT_STEPS = 6000
BATCH = 16
LEARNING_RATE = 1e-3
WARMUP_STEPS = 100
CAPTION_DROP = 0.5
IMAGE_DROP = 0.1
RECOLOUR_SHARE = 0.5
FLIP_SHARE = 0.5
TOKENS = 4
INIT_SEED = 0
SEED_OFFSET = 7_000_003  # the batches' seeds differ from the render stages'


# -- the image encoder: the toy CLIP's vision tower as a transformers CLIPVisionModelWithProjection ----------------
def vision_config_from_open_clip(visual, projection_dim: int):
    """The ``CLIPVisionConfig`` of an open_clip ``VisionTransformer`` (GELU, class-token pooling, no attention
    pooling, pre-norm blocks: what the toy CLIP is; anything else is refused)."""
    from transformers import CLIPVisionConfig

    block = visual.transformer.resblocks[0]
    if getattr(visual, "attn_pool", None) is not None or getattr(visual, "pool_type", "tok") != "tok":
        raise ValueError("only class-token pooling converts to CLIPVisionModelWithProjection")
    if not isinstance(block.mlp.gelu, torch.nn.GELU) or block.mlp.gelu.approximate != "none":
        raise ValueError(f"the open_clip MLP activation is {block.mlp.gelu}, not exact GELU")
    if not isinstance(block.ls_1, torch.nn.Identity) or not isinstance(block.attn, torch.nn.MultiheadAttention):
        raise ValueError("layer scale or a custom attention does not convert to CLIPVisionModelWithProjection")
    width = visual.conv1.out_channels
    return CLIPVisionConfig(hidden_size=width, intermediate_size=block.mlp.c_fc.out_features,
                            projection_dim=projection_dim, num_hidden_layers=len(visual.transformer.resblocks),
                            num_attention_heads=block.attn.num_heads, image_size=visual.image_size[0],
                            patch_size=visual.patch_size[0], hidden_act="gelu", layer_norm_eps=block.ln_1.eps)


def vision_encoder_from_open_clip(clip_model):
    """A transformers ``CLIPVisionModelWithProjection`` whose ``image_embeds`` equal ``clip_model.encode_image``
    (unnormalised) on the same normalised pixels: the open_clip model's vision tower, weight for weight."""
    from transformers import CLIPVisionModelWithProjection

    visual = clip_model.visual
    projection_dim = visual.proj.shape[1]
    encoder = CLIPVisionModelWithProjection(vision_config_from_open_clip(visual, projection_dim))
    source = {key: value.detach().float() for key, value in visual.state_dict().items()}
    state = {"vision_model.embeddings.class_embedding": source["class_embedding"],
             "vision_model.embeddings.patch_embedding.weight": source["conv1.weight"],
             "vision_model.embeddings.position_embedding.weight": source["positional_embedding"],
             "vision_model.pre_layrnorm.weight": source["ln_pre.weight"],
             "vision_model.pre_layrnorm.bias": source["ln_pre.bias"],
             "vision_model.post_layernorm.weight": source["ln_post.weight"],
             "vision_model.post_layernorm.bias": source["ln_post.bias"],
             "visual_projection.weight": source["proj"].t().contiguous()}
    for index in range(len(visual.transformer.resblocks)):
        old, new = f"transformer.resblocks.{index}.", f"vision_model.encoder.layers.{index}."
        for part, (weight, bias) in zip(("q", "k", "v"), zip(source[old + "attn.in_proj_weight"].chunk(3),
                                                              source[old + "attn.in_proj_bias"].chunk(3))):
            state[f"{new}self_attn.{part}_proj.weight"], state[f"{new}self_attn.{part}_proj.bias"] = weight, bias
        for ours, theirs in (("self_attn.out_proj", "attn.out_proj"), ("layer_norm1", "ln_1"),
                             ("layer_norm2", "ln_2"), ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj")):
            for kind in ("weight", "bias"):
                state[f"{new}{ours}.{kind}"] = source[f"{old}{theirs}.{kind}"]
    missing, unexpected = encoder.load_state_dict(state, strict=False)
    missing = [key for key in missing if not key.endswith("position_ids")]
    if missing or unexpected:
        raise ValueError(f"open_clip → CLIPVisionModelWithProjection: missing {missing}, unexpected {unexpected}")
    return encoder.eval()


def normalised_pixels(frames: torch.Tensor, processor) -> torch.Tensor:
    """Frames (B x 3 x S x S in [-1, 1], S the encoder's size) normalised as ``processor`` (a CLIPImageProcessor
    whose size is S: its resize and crop leave such frames as they are) normalises them."""
    mean = torch.tensor(processor.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(processor.image_std).view(1, 3, 1, 1)
    return ((frames + 1) / 2 - mean) / std


# -- the world as training tensors ------------------------------------------------------------------------------
@dataclass
class SceneFrames:
    """Every frame of a world with its scene (a clip, or each side of its cut), the scene's caption with and
    without its colour word, and the figure's pixels."""

    frames: torch.Tensor  # N x 3 x H x W in [-1, 1]
    figure: torch.Tensor  # N x H x W bool
    scene: torch.Tensor  # N: the scene of each frame
    spans: list[tuple[int, int]]  # per scene: first frame, end
    captions: list[str]  # per scene
    colourless: list[str]  # per scene, the caption without its colour word

    @classmethod
    def from_clips(cls, clips: list[WorldClip]) -> SceneFrames:
        frames, figure, scene, spans, captions, colourless = [], [], [], [], [], []
        offset = 0
        for clip in clips:
            for start, end, spec in clip.scenes():
                if end - start < 2:
                    continue
                frames.append(clip.frames[start:end])
                figure.append(clip.mask[start:end])
                scene += [len(spans)] * (end - start)
                spans.append((offset, offset + end - start))
                offset += end - start
                text = scene_caption(spec)
                captions.append(text)
                colourless.append("a " + text.split(" ", 2)[2])  # "a red hare ..." → "a hare ..."
        pixels = torch.from_numpy(np.concatenate(frames)).permute(0, 3, 1, 2).float() / 127.5 - 1
        return cls(pixels, torch.from_numpy(np.concatenate(figure)), torch.tensor(scene), spans, captions,
                   colourless)


# -- the adapter ----------------------------------------------------------------------------------------------
def initial_state_dict(unet, projection_dim: int, seed: int = INIT_SEED) -> dict[str, dict[str, torch.Tensor]]:
    """h94's ``base`` layout for ``unet``: ``image_proj`` as ``torch.nn.Linear`` / ``LayerNorm`` initialise them
    (seeded), ``to_k_ip`` / ``to_v_ip`` copies of each cross-attention layer's ``to_k`` / ``to_v``."""
    from render.ip_adapter import cross_attention_layers

    layers = cross_attention_layers(unet)
    cross = layers[0][1].to_k.in_features
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        proj = torch.nn.Linear(projection_dim, TOKENS * cross)
    state = {"image_proj": {"proj.weight": proj.weight.detach().clone(), "proj.bias": proj.bias.detach().clone(),
                            "norm.weight": torch.ones(cross), "norm.bias": torch.zeros(cross)},
             "ip_adapter": {}}
    for index, (_, attn) in enumerate(layers):
        state["ip_adapter"][f"{2 * index + 1}.to_k_ip.weight"] = attn.to_k.weight.detach().clone()
        state["ip_adapter"][f"{2 * index + 1}.to_v_ip.weight"] = attn.to_v.weight.detach().clone()
    return state


class _Trained(torch.nn.Module):
    """What is trained (one state dict for the checkpoint): the installed image projection and IP processors."""

    def __init__(self, active):
        super().__init__()
        self.image_proj = active.unet.encoder_hid_proj
        self.layers = torch.nn.ModuleList(active.processors.values())


def trained_state_dict(active) -> dict[str, dict[str, torch.Tensor]]:
    """The installed adapter's weights back in h94's ``base`` layout (slot 0)."""
    projection = active.unet.encoder_hid_proj.image_projection_layers[0]
    image_proj = {"proj.weight": projection.image_embeds.weight, "proj.bias": projection.image_embeds.bias,
                  "norm.weight": projection.norm.weight, "norm.bias": projection.norm.bias}
    ip = {}
    for index, processor in enumerate(active.processors.values()):
        ip[f"{2 * index + 1}.to_k_ip.weight"] = processor.to_k_ip[0].weight
        ip[f"{2 * index + 1}.to_v_ip.weight"] = processor.to_v_ip[0].weight
    detach = {key: value.detach().float().cpu().contiguous() for key, value in image_proj.items()}
    return {"image_proj": detach, "ip_adapter": {key: value.detach().float().cpu().contiguous()
                                                 for key, value in ip.items()}}


def load_toy_render(out: Path):
    """The toy render model (``out``'s render folders when it has its own, else the committed ones), float32."""
    from storyreel.models.loading import load_render_components

    overrides = None
    if Path(out).resolve() != Path(TOY_WEIGHTS_DIR).resolve() and (Path(out) / RENDER_FOLDER / "unet").is_dir():
        overrides = {name: str((Path(out) / RENDER_FOLDER / name).resolve())
                     for name in ("vae", "text_encoder", "unet", "motion_adapter", "controlnet")}
    return load_render_components("toy", overrides=overrides, device="cpu", dtype=torch.float32)


def load_toy_clip(out: Path):
    from retrieval.clip_models import build_toy_clip

    folder = Path(out) if (Path(out) / "clip.safetensors").is_file() else None
    return build_toy_clip(folder)[0].eval()


# -- training -----------------------------------------------------------------------------------------------------
def train_ip_adapter(world: Path, out: Path = TOY_WEIGHTS_DIR, steps: int = DEFAULT_STEPS, seed: int = 0,
                     checkpoints: Path | None = None, checkpoint_every: int = 200, heldout: Path | None = None,
                     progress: bool = True, max_clips: int | None = None) -> dict:
    """Train the toy IP-Adapter on ``world`` and save it with its image encoder under ``out/ip_adapter`` and its
    entry in ``out/manifest.json``; returns the entry. ``heldout`` is accepted for the trainers' common command
    line and not used (the adapter is measured by ``bench/consistency_identity.py``)."""
    from diffusers import DDPMScheduler

    from render.ip_adapter import IPAdapter, IPAdapterSource, image_processor_for, install_ip_adapters
    from render.keyframes import image_model
    from toy_world.train_render import CaptionCache, recoloured_figures

    world, out = Path(world), Path(out)
    checkpoints = Path(checkpoints) if checkpoints is not None else world / ".checkpoints" / MANIFEST_KEY
    components = load_toy_render(out)
    for module in (components.unet, components.vae, components.text_encoder):
        module.requires_grad_(False).eval()
    encoder = vision_encoder_from_open_clip(load_toy_clip(out)).requires_grad_(False)
    processor = image_processor_for(encoder)
    clips = read_world(world, limit=max_clips)
    data = SceneFrames.from_clips(clips)
    recipe = {"seed": seed, "init_seed": INIT_SEED, "world": str(world.resolve()), "clips": len(clips),
              "frames": len(data.frames), "steps": steps, "batch": BATCH, "learning_rate": LEARNING_RATE,
              "warmup_steps": WARMUP_STEPS, "caption_drop": CAPTION_DROP, "image_drop": IMAGE_DROP,
              "recolour_share": RECOLOUR_SHARE, "flip_share": FLIP_SHARE, "tokens": TOKENS,
              "reference": "another frame of the same scene", "scheduler": RENDER_SCHEDULER_CONFIG,
              "encoder": "the toy CLIP's vision tower (converted, frozen)", "variant": "base"}
    source = IPAdapterSource("base", "toy")
    adapter = IPAdapter(source, initial_state_dict(components.unet, encoder.config.projection_dim), encoder,
                        processor, "toy")
    active = install_ip_adapters(components, [adapter], ["toy"])
    trained = _Trained(active)
    trained.requires_grad_(True)
    scheduler = DDPMScheduler.from_config(RENDER_SCHEDULER_CONFIG)
    captions = CaptionCache(components.tokenizer, components.text_encoder)
    vae, unet = components.vae, components.unet
    scaling = vae.config.scaling_factor

    def step_loss(step: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(seed * 1_000_003 + SEED_OFFSET + step)
        rng = np.random.default_rng([seed, SEED_OFFSET, step])
        index = torch.randint(0, len(data.frames), (BATCH,), generator=generator)
        scenes = data.scene[index]
        reference = torch.tensor([_other_frame(data.spans[int(s)], int(i), rng) for s, i in zip(scenes, index)])
        state = generator.get_state()
        target = recoloured_figures(data.frames[index], data.figure[index, None], generator, RECOLOUR_SHARE)
        generator.set_state(state)  # the same choice and colour for the reference frame
        picture = recoloured_figures(data.frames[reference], data.figure[reference, None], generator, RECOLOUR_SHARE)
        recoloured = (target != data.frames[index]).flatten(1).any(dim=1)
        flip = torch.from_numpy(rng.random(BATCH) < FLIP_SHARE).view(-1, 1, 1, 1)
        picture = torch.where(flip, picture.flip(-1), picture)
        texts = [data.colourless[int(s)] if r else data.captions[int(s)] for s, r in zip(scenes, recoloured)]
        texts = ["" if rng.random() < CAPTION_DROP else text for text in texts]
        keep = torch.from_numpy(rng.random(BATCH) >= IMAGE_DROP).float().view(-1, 1, 1)
        with torch.no_grad():
            latents = vae.encode(target).latent_dist.mean * scaling
            embeds = encoder(normalised_pixels(picture, processor)).image_embeds[:, None] * keep
            text = captions(texts)
        noise = torch.randn(latents.shape, generator=generator)
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (BATCH,), generator=generator)
        noisy = scheduler.add_noise(latents, noise, timesteps)[:, :, None]  # B x C x 1 x h x w
        with image_model(unet):
            prediction = unet(noisy, timesteps, encoder_hidden_states=text,
                              added_cond_kwargs={"image_embeds": [embeds]}).sample[:, :, 0]
        return F.mse_loss(prediction, noise)

    optimizer = torch.optim.AdamW(list(trained.parameters()), lr=LEARNING_RATE, weight_decay=0.0)
    try:
        record = train_steps(trained, optimizer, step_loss, steps=steps, warmup_steps=WARMUP_STEPS,
                             checkpoints=checkpoints, recipe=recipe, checkpoint_every=checkpoint_every,
                             description="toy IP-Adapter", progress=progress, clip_grad_norm=1.0)
        state = trained_state_dict(active)
    finally:
        active.remove()
    files = save_toy_ip_adapter(out, state, encoder)
    record.update(recipe=recipe, world_made_with=world_record(world), threads=torch.get_num_threads(), files=files)
    _update_manifest(out, MANIFEST_KEY, record)
    return record


def _other_frame(span: tuple[int, int], frame: int, rng: np.random.Generator) -> int:
    """A frame of the scene ``span`` other than ``frame``."""
    start, end = span
    other = int(rng.integers(start, end - 1))
    return other + 1 if other >= frame else other


def save_toy_ip_adapter(out: Path, state: dict, encoder) -> dict[str, str]:
    """``out/ip_adapter/ip-adapter_toy.safetensors`` (h94's keys, float32) and ``out/ip_adapter/image_encoder``
    (float16); the sha256 of each file, by its path relative to ``out``."""
    import copy

    from safetensors.torch import save_file

    from render.ip_adapter import TOY_ADAPTER_FILE, TOY_ENCODER_FOLDER

    out = Path(out)
    target = out / TOY_ADAPTER_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    flat = {f"{part}.{key}": value for part in ("image_proj", "ip_adapter") for key, value in state[part].items()}
    with atomic_path(target) as tmp:
        save_file(flat, str(tmp))
    folder = out / TOY_ENCODER_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    copy.deepcopy(encoder).to(torch.float16).save_pretrained(str(folder), safe_serialization=True)
    paths = [target, *sorted(p for p in folder.rglob("*") if p.is_file())]
    return {str(path.relative_to(out)): file_sha256(path) for path in paths}


def _update_manifest(out: Path, key: str, record: dict) -> None:
    path = Path(out) / MANIFEST_FILE
    manifest = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    manifest[key] = record
    write_json(path, manifest)


@command("toy-world-train-ip-adapter")
@stage_options("ip_adapter", DEFAULT_STEPS)
def main(world, out, steps, seed, checkpoints, checkpoint_every, max_clips, threads, quiet):
    """Train the toy IP-Adapter (h94's base layout, the toy CLIP's vision tower as encoder) on a toy world."""
    torch.set_num_threads(threads)
    record = train_ip_adapter(world, out, steps, seed=seed, checkpoints=checkpoints,
                              checkpoint_every=checkpoint_every, progress=not quiet, max_clips=max_clips)
    click.echo(f"trained {record['steps']} steps in {record['train_seconds']} s, loss {record['first_loss']} → "
               f"{record['final_loss']:.4f}")


if __name__ == "__main__":
    main()
