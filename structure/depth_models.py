"""Monocular depth models behind the structure stage: transformers' DPT family, by preset, id or folder.

Model specs (what ``--models`` takes):

* a model preset of :mod:`storyreel.models.presets`, meaning its depth model (:func:`resolve_depth_model`):
  ``sd15`` → ``dpt-hybrid``, ``tiny`` → ``tiny``, ``sd15-random`` → ``dpt-hybrid-random``.
* ``dpt-hybrid`` (default): ``Intel/dpt-hybrid-midas``, MiDaS v3 DPT-Hybrid, the depth model
  Animate-A-Story used. Its ``main`` branch holds only a pickle checkpoint, so the preset loads the
  safetensors conversion of the same weights from the repository's ``refs/pr/5`` revision.
* ``dpt-large``: ``Intel/dpt-large`` (MiDaS v3 DPT-Large).
* ``depth-anything-v2``: ``depth-anything/Depth-Anything-V2-Small-hf``.
* ``tiny``: the DPT architecture from a small ``DPTConfig`` with seeded random weights, built in code
  (with its image processor); runs the real transformers code path on CPU in a fraction of a second. Its depth
  means nothing; it is for tests, the demo and benchmarks of the plumbing.
* ``dpt-hybrid-random`` / ``dpt-large-random``: the real DPT-Hybrid / DPT-Large architectures (the
  configs of transformers' DPT conversion script) with seeded random weights, built in code: for
  speed and memory benchmarks without the weights.
* any Hugging Face model id with a depth-estimation head (``AutoModelForDepthEstimation``), or a local
  folder holding ``config.json``, ``preprocessor_config.json`` and ``*.safetensors`` weights.

Only safetensors weights are loaded (pickle checkpoints can run code). Offline, download a model once
(e.g. ``hf download Intel/dpt-hybrid-midas --revision refs/pr/5 --local-dir models/dpt-hybrid-midas``)
and pass the folder.

Each model's own image processor prepares its input. The DPT models see every frame scaled to 384x384
(their hub config, as transformers' depth-estimation pipeline runs them): MiDaS' ``run.py`` keeps the
aspect ratio instead, but transformers' DPT neck assumes a square grid of ViT tokens. Depth Anything
keeps the aspect ratio (shorter side 518, multiples of 14). The depth comes back at the frames' size.

A :class:`DepthEstimator` maps ``N x H x W x 3`` uint8 frames to ``N x H x W`` float32 *relative inverse
depth* (near = large, arbitrary scale and offset), batched, on the GPU in float16 when there is one.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from storyreel.devices import default_device
from storyreel.errors import ModelLoadError, first_line
from storyreel.hashing import weights_fingerprint
from storyreel.models.presets import DEPTH_MODEL_REPOS
from storyreel.models.presets import PRESETS as MODEL_PRESETS
from storyreel.seeding import seeded
from storyreel.weights_policy import PICKLE_REFUSAL, PICKLE_SUFFIXES

DEFAULT_MODEL = "dpt-hybrid"
TINY = "tiny"
TINY_SEED = 0
TOY = "toy"
TOY_WEIGHTS_FILE = "depth.safetensors"
TOY_INIT_SEED = 0
# The toy preset: a small DPT trained on the toy world (make toy-world), its weights checked against the
# manifest of storyreel/models/toy_weights.
TOY_CONFIG = {
    "hidden_size": 64,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "intermediate_size": 128,
    "image_size": 64,
    "patch_size": 8,
    "backbone_out_indices": [0, 1, 2, 3],
    "neck_hidden_sizes": [16, 32, 64, 64],
    "fusion_hidden_size": 32,
    "initializer_range": 0.05,
}
RANDOM_SEED = 0

# The tiny preset: the DPT (ViT) architecture at toy size. initializer_range 0.1, not DPT's 0.02: with
# 0.02 the random network's depth is about 1e-9 and half of it exactly 0 (the head ends in a ReLU).
TINY_CONFIG = {
    "hidden_size": 32,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "intermediate_size": 64,
    "image_size": 32,
    "patch_size": 8,
    "backbone_out_indices": [0, 1, 2, 3],
    "neck_hidden_sizes": [8, 8, 16, 16],
    "fusion_hidden_size": 16,
    "initializer_range": 0.1,
}
# The tiny model sees frames scaled to 64x64 (fast on CPU), prepared like the DPT models' hub configs.
TINY_PROCESSOR = {
    "size": {"height": 64, "width": 64},
    "keep_aspect_ratio": False,
    "resample": 2,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
}
# What the preprocessor_config.json of Intel/dpt-hybrid-midas says (384x384, bilinear, mean = std = 0.5).
DPT_PROCESSOR = {**TINY_PROCESSOR, "size": {"height": 384, "width": 384}}
# The real architectures, as transformers' DPT conversion script configures them (DPTConfig's
# defaults with is_hybrid=True are the BiT-ResNet50 + ViT-B/16 hybrid backbone).
DPT_HYBRID_CONFIG = {
    "is_hybrid": True,
    "hidden_size": 768,
    "reassemble_factors": [1, 1, 1, 0.5],
    "neck_hidden_sizes": [256, 512, 768, 768],
    "readout_type": "project",
    "use_batch_norm_in_fusion_residual": False,
}
DPT_LARGE_CONFIG = {
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "backbone_out_indices": [5, 11, 17, 23],
    "neck_hidden_sizes": [256, 512, 1024, 1024],
    "readout_type": "project",
}


class DepthModelLoadError(ModelLoadError):
    """A depth model that cannot be built or loaded; the message says which and what to do instead."""


@dataclass(frozen=True)
class HubPreset:
    """A named depth model on the Hugging Face hub."""

    repo_id: str
    revision: str | None = None


HUB_PRESETS = {name: HubPreset(repo_id, revision) for name, (repo_id, revision) in DEPTH_MODEL_REPOS.items()}
RANDOM_PRESETS = {
    "dpt-hybrid-random": DPT_HYBRID_CONFIG,
    "dpt-large-random": DPT_LARGE_CONFIG,
}
PRESET_NAMES = (*HUB_PRESETS, TINY, TOY, *RANDOM_PRESETS)


class DepthEstimator:
    """Relative inverse depth for batches of frames, with a transformers depth model and its processor.

    Call it with ``N x H x W x 3`` uint8 frames; it returns ``N x H x W`` float32 (near = large), resized
    back to the frames' size by the processor's own post-processing. ``fingerprint`` identifies the
    weights and the preprocessing; the depth cache keys on it.
    """

    def __init__(self, name: str, model: torch.nn.Module, processor, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None, batch_size: int = 8, progress: bool = True):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.name = name
        self.device = torch.device(device) if device is not None else default_device()
        self.dtype = dtype or (torch.float16 if self.device.type == "cuda" else torch.float32)
        self.processor = processor
        self.batch_size = batch_size
        self.progress = progress
        self.fingerprint = self._fingerprint(model)
        self.model = model.to(device=self.device, dtype=self.dtype).eval()

    def _fingerprint(self, model: torch.nn.Module) -> str:
        record = {"name": self.name, "weights": weights_fingerprint(model), "processor": self.processor.to_dict()}
        text = json.dumps(record, sort_keys=True, default=str)
        return f"{self.name}-{hashlib.sha256(text.encode()).hexdigest()[:16]}"

    @torch.inference_mode()
    def predict_batch(self, frames: np.ndarray) -> torch.Tensor:
        """One batch, ``N x H x W x 3`` uint8 → ``N x H x W`` float32 tensor on the model's device."""
        pixels = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)
        inputs = self.processor(images=pixels, return_tensors="pt", device=self.device)
        outputs = self.model(pixel_values=inputs["pixel_values"].to(device=self.device, dtype=self.dtype))
        outputs.predicted_depth = outputs.predicted_depth.float()
        height, width = frames.shape[1:3]
        results = self.processor.post_process_depth_estimation(outputs, target_sizes=[(height, width)] * len(frames))
        return torch.stack([result["predicted_depth"].reshape(height, width) for result in results])

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[3] != 3 or frames.dtype != np.uint8:
            raise ValueError(f"expected N x H x W x 3 uint8 frames, got {frames.shape} {frames.dtype}")
        from tqdm.auto import tqdm

        out = np.empty(frames.shape[:3], dtype=np.float32)
        with tqdm(total=len(frames), unit="frame", desc=f"depth ({self.name})", disable=not self.progress,
                  leave=False) as bar:
            for first in range(0, len(frames), self.batch_size):
                batch = frames[first : first + self.batch_size]
                out[first : first + len(batch)] = self.predict_batch(batch).cpu().numpy()
                bar.update(len(batch))
        return out


# -- building and loading ----------------------------------------------------------------------------
def build_tiny_model():
    """The tiny preset's ``DPTForDepthEstimation`` (seeded random weights) and ``DPTImageProcessor``."""
    from transformers import DPTConfig, DPTForDepthEstimation, DPTImageProcessor

    with seeded(TINY_SEED):
        model = DPTForDepthEstimation(DPTConfig(**TINY_CONFIG))
    return model, DPTImageProcessor(**TINY_PROCESSOR)


def build_toy_model(trained: bool = True, folder: Path | None = None):
    """The toy preset's ``DPTForDepthEstimation`` and its ``DPTImageProcessor`` (64x64, like the tiny one's):
    with the trained weights of ``folder`` (default: ``storyreel/models/toy_weights``) checked against its
    manifest, or (``trained=False``) the seeded initial ones training starts from."""
    from transformers import DPTConfig, DPTForDepthEstimation, DPTImageProcessor

    with seeded(TOY_INIT_SEED):
        model = DPTForDepthEstimation(DPTConfig(**TOY_CONFIG))
    if trained:
        from safetensors.torch import load_file

        from storyreel.models.toy_weights import TOY_WEIGHTS_DIR, verified_file

        state = load_file(str(verified_file(TOY_WEIGHTS_FILE, folder or TOY_WEIGHTS_DIR)))
        model.load_state_dict({key: value.float() for key, value in state.items()})
    return model, DPTImageProcessor(**TINY_PROCESSOR)


def build_random_model(name: str):
    """A real DPT architecture (``dpt-hybrid-random``, ``dpt-large-random``) with seeded random weights."""
    from transformers import DPTConfig, DPTForDepthEstimation, DPTImageProcessor

    config = DPTConfig(**RANDOM_PRESETS[name])
    with seeded(RANDOM_SEED):
        model = DPTForDepthEstimation(config)
    return model, DPTImageProcessor(**DPT_PROCESSOR)


def _offline_hint(repo_or_folder: str, revision: str | None, local: bool) -> str:
    if local:
        return "check that the folder holds config.json, preprocessor_config.json and *.safetensors weights"
    command = f"hf download {repo_or_folder}" + (f" --revision {revision}" if revision else "") + " --local-dir DIR"
    return (f"Without network access, download it once ({command}) and pass the local folder with "
            f"--models DIR, or use --models {TINY} (a small DPT with random weights)")


def _load_pretrained(repo_or_folder: str, revision: str | None, local: bool):
    from transformers import AutoImageProcessor, AutoModelForDepthEstimation

    try:
        processor = AutoImageProcessor.from_pretrained(repo_or_folder, revision=revision, local_files_only=local)
        model = AutoModelForDepthEstimation.from_pretrained(
            repo_or_folder, revision=revision, use_safetensors=True, local_files_only=local
        )
    except Exception as exc:
        where = f"'{repo_or_folder}'" + (f" (revision {revision})" if revision else "")
        raise DepthModelLoadError(
            f"cannot load depth model {where}: {first_line(exc)[:160]}. "
            f"{_offline_hint(repo_or_folder, revision, local)}. Only safetensors weights are loaded."
        ) from exc
    return model, processor


def _load_from_hub(spec: str, repo_id: str, revision: str | None):
    """From the hub cache, or downloaded once the hub answered (:func:`storyreel.hub_access.ensure_available`:
    an offline machine learns it at once, with the command that fetches the model)."""
    from storyreel.hub_access import HubUnavailableError, ensure_available, offline_requested
    from storyreel.models.hub_models import depth_models

    try:
        ensure_available(depth_models(spec) or depth_models(repo_id))
    except HubUnavailableError as exc:
        raise DepthModelLoadError(str(exc)) from None
    return _load_pretrained(repo_id, revision, local=offline_requested())


def _check_local_folder(folder: Path) -> None:
    if not any(folder.glob("*.safetensors")):
        unsafe = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
        found = f" (found {', '.join(unsafe)})" if unsafe else ""
        raise DepthModelLoadError(
            f"depth model folder '{folder}' holds no .safetensors weights{found}; pickle-based checkpoints can "
            "run code, so only safetensors are loaded: convert them, or use --models tiny"
        )


def resolve_depth_model(spec: str | None) -> str:
    """The depth model a ``--models`` value names: a model preset (``sd15``, ``tiny``, ``sd15-random``) means its
    depth model; anything else (a depth preset, a Hugging Face id, a folder) is itself. Loads nothing."""
    spec = (spec or "").strip()
    return MODEL_PRESETS[spec].depth_model if spec in MODEL_PRESETS else spec


def load_depth_model(spec: str = DEFAULT_MODEL, device: str | torch.device | None = None,
                     dtype: torch.dtype | None = None, batch_size: int = 8, progress: bool = True) -> DepthEstimator:
    """Build the :class:`DepthEstimator` for ``spec`` (see the module docstring; a model preset means its depth
    model, and the estimator is named after that model).

    ``dtype`` defaults to float16 on CUDA and float32 on CPU. Raises :class:`DepthModelLoadError`.
    """
    spec = resolve_depth_model(spec)
    if not spec:
        raise DepthModelLoadError(f"empty depth model spec; use one of {', '.join(PRESET_NAMES)}, "
                                  "a Hugging Face id or a local folder")
    if spec == TINY:
        model, processor = build_tiny_model()
    elif spec == TOY:
        model, processor = build_toy_model()
    elif spec in RANDOM_PRESETS:
        model, processor = build_random_model(spec)
    else:
        preset = HUB_PRESETS.get(spec) or next((p for p in HUB_PRESETS.values() if p.repo_id == spec), None)
        path = Path(spec).expanduser()
        if preset is not None:
            model, processor = _load_from_hub(spec, preset.repo_id, preset.revision)
        elif path.suffix.lower() in PICKLE_SUFFIXES:
            raise DepthModelLoadError(
                f"refusing to load '{path}': {PICKLE_REFUSAL}; pass a folder with "
                ".safetensors weights"
            )
        elif path.is_dir():
            _check_local_folder(path)
            model, processor = _load_pretrained(str(path), None, local=True)
        elif spec.startswith((".", "/", "~")) or path.exists():
            raise DepthModelLoadError(f"depth model folder '{path}' does not exist")
        else:
            model, processor = _load_from_hub(spec, spec, None)
    return DepthEstimator(spec, model, processor, device=device, dtype=dtype, batch_size=batch_size,
                          progress=progress)
