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
* **A story's keyframes in batches.** One picture leaves a GPU mostly idle (a batch of 2 UNet rows with
  classifier-free guidance is bound by kernel launches, not arithmetic), so keyframes that can share a sampler
  call are made together: :func:`keyframe_batches` groups the shots with the same size, steps, guidance, tau,
  eta, scheduler and characters at the same scales (the LoRA and IP-Adapter scales are the UNet's state, one per
  call), at most ``--keyframe-batch`` of them (default :data:`DEFAULT_KEYFRAME_BATCH`). Each keyframe keeps its
  own caption, per-step character embeddings, IP-Adapter embedding, depth and seed, and is the picture its seed
  gives alone up to float rounding (``render.sampler``'s batch of samples; on the CPU with one thread, as
  ``--deterministic`` renders, bit for bit in our tests; on a GPU larger matrix products may round differently,
  so ``--keyframe-batch 1`` is the way to make each picture independent of the others made with it). A keyframe
  with consistent self-attention is made alone: it records or reads banks in a fixed order.
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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

KEYFRAME_VERSION = 1
KEYFRAME_FOLDER = "keyframes"
DEFAULT_KEYFRAME_BATCH = 8  # keyframes per sampler call: 16 UNet rows with guidance, a few GB at 512x512 in fp16


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


def keyframe_batch_key(shot) -> tuple:
    """What keyframes made in one sampler call must share: the latent size, the schedule, the guidance, tau, eta,
    and the characters with their LoRA and IP-Adapter scales (the UNet's adapter state is one per call)."""
    characters = tuple(sorted((c.name, float(c.scale), float(c.ip_adapter_scale)) for c in shot.characters))
    return (shot.width, shot.height, shot.steps, float(shot.guidance), float(shot.tau), float(shot.eta),
            shot.scheduler, characters)


def keyframe_batches(shots: list, limit: int = DEFAULT_KEYFRAME_BATCH, alone: Callable[[object], bool] | None = None
                     ) -> list[list]:
    """``shots`` in the batches their keyframes are made in: shots with the same :func:`keyframe_batch_key`
    together, at most ``limit`` per batch, in the order their first shot comes; a shot for which ``alone(shot)``
    is true (consistent self-attention) in a batch of its own, where it comes."""
    if limit < 1:
        raise ValueError(f"a keyframe batch holds at least 1 keyframe, not {limit}")
    batches, open_batches = [], {}
    for shot in shots:
        if alone is not None and alone(shot):
            batches.append([shot])
            continue
        key = keyframe_batch_key(shot)
        batch = open_batches.get(key)
        if batch is None or len(batch) >= limit:
            batch = open_batches[key] = []
            batches.append(batch)
        batch.append(shot)
    return batches


def batched_embeds_hook(prompts: list) -> Callable | None:
    """One ``prompt_embeds_for_step`` hook for a batch of keyframes: each shot's per-step character embeddings
    (its own hook's, or its fixed embeddings when it has no character token), row after row; None when no shot
    of the batch has a hook."""
    if all(p.per_step is None for p in prompts):
        return None
    if len(prompts) == 1:
        return prompts[0].per_step
    import torch

    def hook(step_index: int, timestep):
        conds, unconds = [], []
        for p in prompts:
            cond, uncond = p.per_step(step_index, timestep) if p.per_step is not None else (p.cond, None)
            conds.append(cond)
            unconds.append(p.uncond if uncond is None else uncond)
        return torch.cat(conds), torch.cat(unconds)

    return hook


def batched_image_embeds(per_shot: list) -> list | None:
    """The IP-Adapter embeddings of a batch of keyframes (each shot's ``[uncond, cond]`` per adapter, or ``[cond]``
    without guidance) as the sampler takes a batch: per adapter, the unconditional rows of every shot, then the
    conditional ones."""
    if per_shot[0] is None:
        return None
    if len(per_shot) == 1:
        return per_shot[0]
    import torch

    halves = per_shot[0][0].shape[0]
    return [torch.cat([embeds[adapter].chunk(halves)[half] for half in range(halves) for embeds in per_shot])
            for adapter in range(len(per_shot[0]))]


def same_length_groups(prompts: list) -> list[list[int]]:
    """The indices of ``prompts`` by token length (compel makes 77, 154, ... tokens): one sampler call takes one."""
    groups: dict[int, list[int]] = {}
    for index, p in enumerate(prompts):
        groups.setdefault(int(p.cond.shape[-2]), []).append(index)
    return list(groups.values())
