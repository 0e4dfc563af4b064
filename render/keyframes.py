"""Keyframes first: one picture per shot, in seconds, before any video is rendered.

Emu Video generates a video's first frame with a text-to-image model and then the video from it; for storyreel's
users the same factorisation is a workflow: ``render-story STORY --keyframes-only`` writes each shot's first frame
as ``OUT/keyframes/<safe_id>.png`` and all of them, with their captions and guide depth, as ``OUT/keyframes.png``,
so a prompt, a seed or a retrieval can be fixed before GPU minutes go into video.

* **The image model.** AnimateDiff adds motion modules to SD1.5's UNet as residual blocks; with them bypassed
  (:func:`image_model`), the motion UNet *is* SD1.5's image UNet, and our sampler with one frame is SD1.5 +
  depth ControlNet (tested against diffusers' ``StableDiffusionControlNetPipeline`` with the same weights in a
  ``UNet2DConditionModel``). The keyframe is guided by the first frame of the shot's guide depth, within the
  shot's tau, with the shot's compel caption, seed, steps and guidance, its characters' TimeInv + LoRA and
  IP-Adapter, and consistent self-attention across the keyframes of a character when the shot has it on (its
  banks are the keyframes' own, ``*.keyframe.safetensors``).
* **Reuse and resume.** Retrieval and depth are the shot's (the same footage choice and the same depth cache,
  so the video render after it computes neither again); a keyframe whose PNG exists and whose sidecar
  (``OUT/keyframes/<safe_id>.json``) records this run's :func:`keyframe_hash` is skipped.
* **Animating from a keyframe.** A shot with ``keyframe: true`` (or ``defaults.keyframe``, or a
  ``keyframe_image``) is rendered as a video conditioned on its keyframe at frame 0 through SparseCtrl RGB
  (:mod:`render.sparse_control`), together with the depth ControlNet and its tau. Its keyframe is made first when
  missing; a keyframe someone edited (its PNG no longer has the SHA-256 its sidecar recorded) or a
  ``keyframe_image`` is used as it is, and the picture's content is in the shot's settings hash
  (:func:`keyframe_use`), so editing one keyframe renders that shot again and no other.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

KEYFRAME_VERSION = 1
KEYFRAME_FOLDER = "keyframes"


@contextlib.contextmanager
def image_model(unet) -> Iterator[None]:
    """The motion UNet as SD1.5's image UNet for the block: every motion module passes its input through."""
    from diffusers.models.unets.unet_motion_model import AnimateDiffTransformer3D

    modules = [module for module in unet.modules() if isinstance(module, AnimateDiffTransformer3D)]
    if not modules:
        raise ValueError("the UNet has no motion modules to bypass (it is not an AnimateDiff UNetMotionModel)")
    for module in modules:
        module.forward = _pass_through
    try:
        yield
    finally:
        for module in modules:
            del module.forward  # back to the class's forward


def _pass_through(hidden_states, *args, **kwargs):
    return hidden_states


@dataclass(frozen=True)
class KeyframeUse:
    """The picture a ``keyframe`` shot is animated from (picklable: Ray workers get it with the shot).

    ``path``: the shot's ``keyframe_image``, or its generated ``out/keyframes/<safe_id>.png``; ``source``:
    ``keyframe_image``, ``edited`` (a generated keyframe someone changed: used as it is) or ``generated``;
    ``identity``: what the shot's settings hash holds of it (the picture's SHA-256, or for a generated one its
    keyframe hash, known before the picture exists); ``needs_render``: the keyframe is to be made first."""

    path: Path
    source: str
    identity: str
    needs_render: bool


def keyframe_use(out: Path, shot, keyframe_hash_: str) -> KeyframeUse:
    """Which picture ``shot`` (with ``keyframe`` on) is animated from; see :class:`KeyframeUse`."""
    import json

    from storyreel.hashing import file_sha256

    if shot.keyframe_image is not None:
        path = Path(shot.keyframe_image)
        return KeyframeUse(path, "keyframe_image", f"sha256:{file_sha256(path)}", False)
    files = keyframe_files(out, shot)
    record = {}
    if files["png"].is_file():
        try:
            record = json.loads(files["sidecar"].read_text())
        except (OSError, ValueError):
            record = {}
        content = file_sha256(files["png"])
        if content != record.get("png_sha256"):  # edited or replaced by hand: used as it is
            return KeyframeUse(files["png"], "edited", f"sha256:{content}", False)
    current = record.get("settings_hash") == keyframe_hash_
    return KeyframeUse(files["png"], "generated", f"generated:{keyframe_hash_}", not current)


def keyframe_files(out: Path, shot) -> dict[str, Path]:
    folder = Path(out) / KEYFRAME_FOLDER
    return {"png": folder / f"{shot.safe_id}.png", "sidecar": folder / f"{shot.safe_id}.json",
            "preview": folder / f"{shot.safe_id}.preview.npz"}


def keyframe_hash(shot_hash: str) -> str:
    """A keyframe's resume hash: its shot's settings hash (every setting that shapes the shot) and the keyframe
    code's version."""
    return hashlib.sha256(f"storyreel-keyframe:{KEYFRAME_VERSION}:{shot_hash}".encode()).hexdigest()
