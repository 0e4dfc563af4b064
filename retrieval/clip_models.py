"""The CLIP embedder behind the index and the queries: open_clip models by name, or the tiny preset.

Model specs (what ``--models`` takes):

* a model preset of :mod:`storyreel.models.presets`, meaning its CLIP model: ``sd15`` →
  ``ViT-B-32:laion2b_s34b_b79k``, ``tiny`` → ``tiny``, ``sd15-random`` → ``ViT-B-32`` (random weights);
* ``tiny``: open_clip's CLIP architecture from a small config with seeded random weights, built in code,
  with open_clip's bundled BPE tokenizer. Runs the real code path on CPU in milliseconds.
* ``toy``: open_clip's CLIP architecture at toy size (:data:`TOY_CONFIG`), trained on the toy world
  (``make toy-world``; weights in ``storyreel/models/toy_weights``, checked against their manifest's sha256).
* ``NAME:TAG``: an open_clip architecture and pretrained tag, e.g. ``ViT-B-32:laion2b_s34b_b79k``
  (the default), loaded from the ``open_clip_model.safetensors`` file of the hub repository open_clip's registry
  names for the tag (never the pickle ``open_clip_pytorch_model.bin`` beside it; a tag with no hub repository is
  refused), through the hub cache first (:mod:`storyreel.hub_access`).
* ``NAME``: an open_clip architecture at its real size with seeded random weights (nothing is downloaded).
* ``NAME:/path/to/weights.safetensors``: an open_clip architecture with a local checkpoint.
* ``hf-hub:org/repo`` or ``local-dir:/path``: open_clip's own schemes.

A spec is resolved once, by :meth:`ModelSpec.parse`: the index's manifest records the resolved spec
(``ViT-B-32:laion2b_s34b_b79k``, never ``sd15``), so an index built with ``--models sd15`` is searched with
``--models sd15`` or with the open_clip name alike.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from retrieval.frame_preprocessing import square_crop
from storyreel.devices import default_device
from storyreel.errors import ModelLoadError, first_line
from storyreel.hashing import weights_fingerprint
from storyreel.hub_access import HubModel, ensure_available, offline_requested
from storyreel.models.hub_models import OPEN_CLIP_WEIGHTS, open_clip_weights
from storyreel.models.presets import PRESETS
from storyreel.seeding import seeded
from storyreel.weights_policy import PICKLE_REFUSAL, PICKLE_SUFFIXES

DEFAULT_MODEL = "ViT-B-32:laion2b_s34b_b79k"
TINY = "tiny"
TINY_SEED = 0
RANDOM_SEED = 0  # the weights of an open_clip architecture named without pretrained weights
TOY = "toy"
TOY_WEIGHTS_FILE = "clip.safetensors"
TOY_INIT_SEED = 0
TOY_CONFIG = {  # 64x64 frames (the toy world's size), the real BPE vocabulary with a short context
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 4, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}
TINY_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


@dataclass(frozen=True)
class ModelSpec:
    """An open_clip architecture ``name`` and its ``pretrained`` weights (a tag or a file; None: random)."""

    name: str
    pretrained: str | None = None

    @classmethod
    def parse(cls, text: str) -> "ModelSpec":
        """The spec of a ``--models`` value (see the module docstring); a preset name means its CLIP model."""
        text = text.strip()
        if not text:
            raise ModelLoadError("empty model spec; use a preset (" + ", ".join(PRESETS) + "), 'tiny' or NAME:TAG "
                                 "such as " + DEFAULT_MODEL)
        if text in PRESETS:
            text = PRESETS[text].clip_model
        if text in (TINY, TOY) or text.startswith(("hf-hub:", "local-dir:")):
            return cls(text)
        name, sep, tag = text.partition(":")
        return cls(name, tag or None) if sep else cls(name)

    def __str__(self) -> str:
        return self.name if self.pretrained is None else f"{self.name}:{self.pretrained}"

    @property
    def is_tiny(self) -> bool:
        return self.name == TINY


def build_small_clip(config: dict, seed: int) -> tuple[torch.nn.Module, object]:
    """open_clip's ``CLIP`` from a small ``config`` (seeded weights) and the real BPE tokenizer at its context."""
    import open_clip
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg

    with seeded(seed):
        model = open_clip.CLIP(
            embed_dim=config["embed_dim"],
            vision_cfg=CLIPVisionCfg(**config["vision_cfg"]),
            text_cfg=CLIPTextCfg(**config["text_cfg"]),
        )
    tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=config["text_cfg"]["context_length"])
    return model, tokenizer


def _build_tiny() -> tuple[torch.nn.Module, object]:
    return build_small_clip(TINY_CONFIG, TINY_SEED)


def build_toy_clip(folder: Path | None = None) -> tuple[torch.nn.Module, object]:
    """The toy preset's CLIP with its trained weights from ``folder`` (default: ``storyreel/models/toy_weights``),
    checked against the folder's manifest (:class:`storyreel.models.toy_weights.ToyWeightsError`)."""
    from safetensors.torch import load_file

    from storyreel.models.toy_weights import TOY_WEIGHTS_DIR, verified_file

    model, tokenizer = build_small_clip(TOY_CONFIG, TOY_INIT_SEED)
    state = load_file(str(verified_file(TOY_WEIGHTS_FILE, folder or TOY_WEIGHTS_DIR)))
    model.load_state_dict({key: value.float() for key, value in state.items()})
    return model, tokenizer


def _build_open_clip(spec: ModelSpec, device: torch.device) -> tuple[torch.nn.Module, object]:
    import open_clip

    pretrained = spec.pretrained
    if spec.name.startswith("local-dir:"):
        folder = Path(spec.name.removeprefix("local-dir:")).expanduser()
        if not folder.is_dir():
            raise ModelLoadError(f"model '{spec}': no such folder '{folder}'")
        if not any(folder.glob("*.safetensors")):
            raise ModelLoadError(
                f"model '{spec}': '{folder}' holds no .safetensors weights; pickle-based checkpoints can run "
                "code, so only safetensors are loaded"
            )
    if pretrained and ("/" in pretrained or Path(pretrained).suffix):
        path = Path(pretrained).expanduser()
        if path.suffix.lower() in PICKLE_SUFFIXES:
            raise ModelLoadError(
                f"refusing to load '{path}': {PICKLE_REFUSAL}; convert it to .safetensors"
            )
        if not path.is_file():
            raise ModelLoadError(f"model '{spec}': no such checkpoint file '{path}'")
        pretrained = str(path)
    hub_weights = open_clip_weights(spec.name, spec.pretrained)
    try:
        if hub_weights is not None:  # a pretrained tag or hf-hub: its safetensors file, never the pickle beside it
            model = _create_from_hub(spec, hub_weights, device)
        elif pretrained is None and ":" not in spec.name:  # seeded random weights: an index can be searched again
            with seeded(RANDOM_SEED):
                model = open_clip.create_model(spec.name, pretrained=None, device="cpu")
        else:
            model = open_clip.create_model(spec.name, pretrained=pretrained, device=device)
        tokenizer = open_clip.get_tokenizer(spec.name)
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(
            f"cannot load open_clip model '{spec.name}' with pretrained weights '{spec.pretrained}': "
            f"{first_line(exc, limit=None)}. "
            "Without network access, download the weights once and pass the local file, e.g. "
            f"--models {spec.name}:/path/to/open_clip_model.safetensors (or local-dir:/path/to/folder), "
            "or use --models tiny for a small model with random weights."
        ) from exc
    return model, tokenizer


def _create_from_hub(spec: ModelSpec, weights: HubModel, device: torch.device) -> torch.nn.Module:
    """open_clip's model for a pretrained tag or ``hf-hub:`` name, from the repository's safetensors file (taken
    from the hub cache, or downloaded once :func:`storyreel.hub_access.ensure_available` found the hub), with the
    tag's QuickGELU and preprocessing settings as open_clip would apply them."""
    import open_clip
    from huggingface_hub import hf_hub_download

    ensure_available([weights])
    local = offline_requested()
    files = {name: hf_hub_download(weights.repo_id, name, revision=weights.revision, local_files_only=local)
             for name in weights.required}
    if spec.name.startswith("hf-hub:"):  # the snapshot holds the config and the safetensors file
        folder = Path(files[OPEN_CLIP_WEIGHTS]).parent
        return open_clip.create_model(f"local-dir:{folder}", device=device)
    tag = open_clip.get_pretrained_cfg(spec.name, spec.pretrained)
    preprocess = {key: tag[key] for key in ("mean", "std", "interpolation", "resize_mode") if key in tag}
    return open_clip.create_model(spec.name, pretrained=files[OPEN_CLIP_WEIGHTS], device=device,
                                  force_quick_gelu=bool(tag.get("quick_gelu", False)),
                                  force_preprocess_cfg=preprocess or None)


class ClipEmbedder:
    """Embeds frames and texts into one unit-length space (float32 numpy arrays)."""

    def __init__(self, spec: ModelSpec, model: torch.nn.Module, tokenizer, device: torch.device):
        from open_clip import get_model_preprocess_cfg

        self.spec = spec
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.device = device
        cfg = get_model_preprocess_cfg(model)
        size = cfg.get("size", 224)
        self.image_size = int(size if isinstance(size, int) else size[0])
        mean = cfg.get("mean", (0.48145466, 0.4578275, 0.40821073))
        std = cfg.get("std", (0.26862954, 0.26130258, 0.27577711))
        self._mean = torch.tensor(mean, device=device).view(1, 3, 1, 1)
        self._std = torch.tensor(std, device=device).view(1, 3, 1, 1)
        with torch.inference_mode():
            self.dim = int(self.encode_texts(["a"]).shape[1])
        self.fingerprint = weights_fingerprint(model)

    def _autocast(self):
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    def record(self) -> dict:
        """What the manifest stores about the model, checked again when the index is opened."""
        return {
            "spec": str(self.spec),
            "name": self.spec.name,
            "pretrained": self.spec.pretrained,
            "fingerprint": self.fingerprint,
            "dim": self.dim,
            "image_size": self.image_size,
        }

    def prepare_frames(self, frames: Sequence[np.ndarray] | np.ndarray) -> np.ndarray:
        """Frame any H x W x 3 uint8 frames the way the index does (shorter side, center square)."""
        return np.stack([square_crop(np.asarray(frame), self.image_size) for frame in frames])

    @torch.inference_mode()
    def encode_images(self, frames: np.ndarray) -> np.ndarray:
        """Unit vectors for already prepared frames, an N x S x S x 3 uint8 array (S = image_size)."""
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[1:] != (self.image_size, self.image_size, 3):
            raise ValueError(
                f"expected N x {self.image_size} x {self.image_size} x 3 frames, got {tuple(frames.shape)}; "
                "use prepare_frames() first"
            )
        pixels = torch.from_numpy(np.ascontiguousarray(frames)).to(self.device)
        pixels = pixels.permute(0, 3, 1, 2).float().div_(255.0)
        pixels = (pixels - self._mean) / self._std
        with self._autocast():
            features = self.model.encode_image(pixels)
        return _unit_rows(features.float().cpu().numpy())

    @torch.inference_mode()
    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        tokens = self.tokenizer(list(texts)).to(self.device)
        with self._autocast():
            features = self.model.encode_text(tokens)
        return _unit_rows(features.float().cpu().numpy())

    def encode_segments(self, frames: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """One unit vector per segment: the normalised mean of its frames' unit vectors.

        ``frames`` is segments x frames x S x S x 3. Frames are embedded in chunks of ``batch_size``
        taken from this array alone, so a video's vectors never depend on what it was batched with.
        """
        segments, per_segment = frames.shape[:2]
        flat = frames.reshape(segments * per_segment, *frames.shape[2:])
        chunks = [self.encode_images(flat[i : i + batch_size]) for i in range(0, len(flat), batch_size)]
        vectors = np.concatenate(chunks).reshape(segments, per_segment, -1).mean(axis=1)
        return _unit_rows(vectors)


def _unit_rows(matrix: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return (matrix / np.maximum(norms, 1e-12)).astype(np.float32)


def load_clip_model(spec: str | ModelSpec = DEFAULT_MODEL, device: str | torch.device | None = None) -> ClipEmbedder:
    """Build the embedder for ``spec`` (see the module docstring); raises :class:`ModelLoadError`."""
    spec = spec if isinstance(spec, ModelSpec) else ModelSpec.parse(spec)
    device = torch.device(device) if device is not None else default_device()
    if spec.is_tiny:
        model, tokenizer = _build_tiny()
    elif spec.name == TOY:
        model, tokenizer = build_toy_clip()
    else:
        model, tokenizer = _build_open_clip(spec, device)
    return ClipEmbedder(spec, model, tokenizer, device)
