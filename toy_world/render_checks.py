"""What the toy render model can be shown to do, measured on held-out toy clips with the render's own sampler.

* motion transfer: a shot guided by a held-out clip's depth draws its figure where the clip's figure is:
  the IoU of the rendered figure's pixels (:mod:`toy_world.figure_pixels`) with the clip's ground-truth figure
  mask, for each τ (depth guidance for the first τ of the steps): high at τ = 1, falling as τ falls;
* caption control: the rendered figure has the colour the caption names (a colour other than the guiding
  clip's, so it can only come from the text).

Each shot goes through :class:`render.sampler.StructureGuidedSampler`, as ``render-story`` renders it: the
guide's depth normalised with one range for the sequence, the caption through the text encoder, DDIM.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from toy_world.figure_pixels import figure_colour, figure_mask, mask_iou
from toy_world.scenes import COLOURS, FPS, GERUNDS, PLACES, ClipSpec
from toy_world.world_files import WorldClip

TAUS = (0.0, 0.25, 0.5, 0.75, 1.0)
FRAMES = 8
STEPS = 20
GUIDANCE = 4.0


@dataclass(frozen=True)
class Guide:
    """A held-out shot: the clip's first ``FRAMES`` frames of one scene, their depth and figure mask."""

    spec: ClipSpec
    depth: np.ndarray  # T x H x W in [0, 1], near = 1
    mask: np.ndarray  # T x H x W bool

    @classmethod
    def from_clip(cls, clip: WorldClip, depth_of=None) -> Guide:
        """The guide of ``clip``'s first scene; ``depth_of(frames)`` gives raw inverse depth (default: the ground
        truth), normalised here with one range for the sequence, as the render does."""
        from structure.depth_sequence import depth_from_raw

        end = min(FRAMES, clip.spec.cut_frame(FPS) or len(clip.frames))
        raw = clip.inverse_depth[:end] if depth_of is None else depth_of(clip.frames[:end])
        return cls(clip.spec, depth_from_raw(np.asarray(raw, dtype=np.float32), fps=FPS).depth, clip.mask[:end])


def caption_for(spec: ClipSpec, colour: str | None = None) -> str:
    """The toy world's caption of ``spec``, with another ``colour`` if given."""
    return f"a {colour or spec.colour} {spec.kind} {GERUNDS[spec.action]} {PLACES[spec.background]}"


def render_shot(components, guide: Guide, prompt: str, tau: float, seed: int, steps: int = STEPS,
                guidance: float = GUIDANCE, prompt_embeds_for_step=None) -> np.ndarray:
    """``T x H x W x 3`` uint8 frames of ``prompt`` guided by ``guide``'s depth for the first ``tau`` of the steps
    (``prompt_embeds_for_step``: a character's per-step hook, :func:`characters.per_step_embeddings`)."""
    from render.sampler import StructureGuidedSampler
    from structure.conditioning import controlnet_condition

    sampler = StructureGuidedSampler(components)
    height, width = guide.depth.shape[1:]
    with torch.no_grad():
        result = sampler(prompt, "", conditioning=controlnet_condition(guide.depth), num_frames=len(guide.depth),
                         height=height, width=width, steps=steps, guidance_scale=guidance, tau=tau, seed=seed,
                         prompt_embeds_for_step=prompt_embeds_for_step, output_type="np")
    return np.asarray(result.frames)


def motion_transfer(components, guides: list[Guide], taus=TAUS, seed: int = 0, **render) -> dict[float, float]:
    """Mean figure IoU between each guide's mask and its render, for each ``tau``."""
    out = {}
    for tau in taus:
        scores = [mask_iou(figure_mask(render_shot(components, guide, caption_for(guide.spec), tau, seed + i,
                                                   **render), guide.spec.background), guide.mask)
                  for i, guide in enumerate(guides)]
        out[float(tau)] = float(np.mean(scores))
    return out


def caption_control(components, guides: list[Guide], seed: int = 0, tau: float = 1.0, **render) -> dict:
    """The fraction of shots whose rendered figure has the caption's colour (always one the guide's is not)."""
    names = list(COLOURS)
    hits, asked = [], []
    for i, guide in enumerate(guides):
        colour = names[(names.index(guide.spec.colour) + 1 + i % (len(names) - 1)) % len(names)]
        frames = render_shot(components, guide, caption_for(guide.spec, colour), tau, seed + i, **render)
        hits.append(figure_colour(frames, guide.spec.background) == colour)
        asked.append(colour)
    return {"colour_match": float(np.mean(hits)), "shots": len(hits), "colours": asked}


def comparison_sheet(components, clips: list[WorldClip], guides: list[Guide], path, seed: int = 0,
                     frames_shown: int = 4) -> None:
    """A PNG with, for each guide, four rows: the footage, its depth, the render at τ = 1 and at τ = 0."""
    from PIL import Image

    from storyreel import atomic_files

    rows = []
    for i, (clip, guide) in enumerate(zip(clips, guides)):
        picks = np.linspace(0, len(guide.depth) - 1, frames_shown).round().astype(int)
        depth = (np.repeat(guide.depth[..., None], 3, axis=-1) * 255).round().astype(np.uint8)
        guided = render_shot(components, guide, caption_for(guide.spec), 1.0, seed + i)
        free = render_shot(components, guide, caption_for(guide.spec), 0.0, seed + i)
        for strip in (clip.frames[: len(guide.depth)], depth, guided, free):
            rows.append(np.concatenate(list(strip[picks]), axis=1))
    sheet = Image.fromarray(np.concatenate(rows, axis=0))
    sheet = sheet.resize((sheet.width * 2, sheet.height * 2), Image.Resampling.NEAREST)
    with atomic_files.atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG")
