"""Video customisation from images: a reference image becomes an L-frame pseudo-video with its depth.

Animate-A-Story trains the character on videos so the motion modules are not left out of training
("motion omission"): each reference image, augmented, is repeated into an ``L``-frame video, and its
per-frame depth conditions the depth ControlNet as it will during rendering. The augmentation is drawn
per video (:func:`sample_augmentation`): a random square crop whose side is ``scale`` of the image's
shorter side (``scale_range``), at a random position, optionally mirrored, resampled to the training
resolution. Depth comes from the structure stage (:func:`structure.extract.extract_raw_depth` on the
augmented frame, normalised with :func:`structure.depth_sequence.normalize_sequence`, turned into the
ControlNet's input by :func:`structure.conditioning.controlnet_condition`); the frames of a
pseudo-video are the same picture, so depth is computed once per augmented image and repeated.

A :class:`VideoSample` keeps ``pixels`` and ``condition`` as ``n x 3 x H x W`` with ``n = 1`` for a
pseudo-video (expanded to ``frames`` after the VAE) or ``n = frames`` for a real clip (regularisation).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

PROMPT_TEMPLATES = (
    "a video of {}",
    "a photo of {}",
    "a clip of {}",
    "a close-up video of {}",
    "a good video of {}",
    "a rendering of {}",
)
DEFAULT_SCALE_RANGE = (0.6, 1.0)


@dataclass(frozen=True)
class Augmentation:
    """A square crop of side ``scale`` x the shorter side at relative position ``(x, y)``, then a mirror."""

    scale: float
    x: float
    y: float
    flip: bool

    def record(self) -> dict:
        return {"scale": round(self.scale, 4), "x": round(self.x, 4), "y": round(self.y, 4), "flip": self.flip}


def sample_augmentation(generator: torch.Generator, scale_range: tuple[float, float] = DEFAULT_SCALE_RANGE,
                        flip: bool = True) -> Augmentation:
    """Draw one augmentation from ``generator`` (always four draws, so the stream does not depend on flags)."""
    low, high = scale_range
    u = torch.rand(4, generator=generator, dtype=torch.float64).tolist()
    return Augmentation(scale=low + (high - low) * u[0], x=u[1], y=u[2], flip=flip and u[3] < 0.5)


def augment(pixels: np.ndarray, augmentation: Augmentation, resolution: int) -> np.ndarray:
    """Apply ``augmentation`` to an ``H x W x 3`` uint8 image: ``resolution x resolution x 3`` uint8."""
    from PIL import Image

    height, width = pixels.shape[:2]
    side = augmentation.scale * min(width, height)
    left = augmentation.x * (width - side)
    top = augmentation.y * (height - side)
    box = (left, top, left + side, top + side)
    out = Image.fromarray(np.ascontiguousarray(pixels)).resize((resolution, resolution), Image.Resampling.BICUBIC,
                                                                box=box)
    out = np.asarray(out, dtype=np.uint8)
    return np.ascontiguousarray(out[:, ::-1]) if augmentation.flip else out


def depth_condition(frames: np.ndarray, depth_model) -> torch.Tensor:
    """Depth ControlNet input of ``n x H x W x 3`` uint8 frames, through the structure stage: ``n x 3 x H x W``.

    One normalisation range for all the frames (a real clip's depth keeps its brightness over time).
    """
    from structure.conditioning import controlnet_condition
    from structure.depth_sequence import normalize_sequence
    from structure.extract import extract_raw_depth

    frames = np.asarray(frames)
    height, width = frames.shape[1:3]
    raw = extract_raw_depth(list(frames), size=(width, height), estimator=depth_model).values
    return controlnet_condition(normalize_sequence(raw))


def to_pixels(frames: np.ndarray) -> torch.Tensor:
    """``n x H x W x 3`` uint8 → ``n x 3 x H x W`` float32 in ``[-1, 1]`` (the VAE's input)."""
    tensor = torch.from_numpy(np.array(frames, dtype=np.uint8)).permute(0, 3, 1, 2).to(torch.float32)
    return tensor / 127.5 - 1.0


@dataclass
class VideoSample:
    """One training video: ``pixels`` / ``condition`` ``n x 3 x H x W`` (n = 1: a still repeated ``frames`` times)."""

    pixels: torch.Tensor
    condition: torch.Tensor
    frames: int
    prompt: str
    kind: str = "reference"  # or "regularisation"
    source: dict = field(default_factory=dict)

    @property
    def still(self) -> bool:
        return self.pixels.shape[0] == 1

    def condition_frames(self) -> torch.Tensor:
        """The conditioning of every frame: ``frames x 3 x H x W``."""
        return self.condition.expand(self.frames, -1, -1, -1) if self.still else self.condition


def character_prompt(token: str, class_word: str, template: str = PROMPT_TEMPLATES[0]) -> str:
    return template.format(f"{token} {class_word}")


def pseudo_video(pixels: np.ndarray, augmentation: Augmentation, resolution: int, frames: int, depth_model,
                 prompt: str, source: dict | None = None) -> VideoSample:
    """An augmented reference image as an ``frames``-frame pseudo-video with its depth condition."""
    framed = augment(pixels, augmentation, resolution)[None]
    condition = depth_condition(framed, depth_model)
    record = {**(source or {}), "augmentation": augmentation.record()}
    return VideoSample(to_pixels(framed), condition, frames, prompt, "reference", record)
