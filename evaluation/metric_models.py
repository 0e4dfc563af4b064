"""The models the metrics use, by preset (``real``, ``toy``, ``tiny``) or one by one, and how each is loaded.

=========== ============================ ================================== =========================================
preset      CLIP (CLIP-T, CLIP-I)        DINO (DINO-I, subject consistency) action classifier / FVD video features
=========== ============================ ================================== =========================================
``real``    ``ViT-B-32:openai``          ``vit_small_patch16_224.dino``     ``MCG-NJU/videomae-base-finetuned-kinetics``
                                         (timm's DINO ViT-S/16)             (VideoMAE-B, Kinetics-400); FVD on I3D
                                                                            (``i3d:PATH``) when its weights are
                                                                            present, else on VideoMAE's pooled
                                                                            features
``toy``     the toy world's CLIP         the tiny DINO (no toy DINO)        zero-shot with the toy CLIP over the
                                                                            footage labels; FVD on toy CLIP features
``tiny``    the tiny CLIP                a ViT-S/16 at toy size, random     a VideoMAE at toy size, random
=========== ============================ ================================== =========================================

Each model can be swapped on the command line (``--clip-model ViT-L-14:openai``, a timm DINO name or a local
folder or ``.safetensors`` file for ``--dino-model``, a transformers video classifier id or folder for
``--action-model``). Weights are safetensors only: transformers loads with ``use_safetensors=True``, a local DINO
file must be ``.safetensors``. A model that cannot be had raises :class:`~storyreel.errors.ModelLoadError` naming
it and the way to fetch it.

The FVD/KVD feature extractor (``video_features``) is one of:

===================== ======================================================================================
``i3d:PATH``          the standard one, I3D on Kinetics-400 (:mod:`evaluation.i3d`): a ``.safetensors``
                      conversion of pytorch-i3d's state dict (``python -m evaluation.i3d_conversion``);
                      features are the 400 logits averaged over time
``i3d-tiny``          the same I3D architecture with seeded random weights (tests)
a classifier          a transformers video classifier id or folder: its pooled feature (VideoMAE: 768-d)
``clip-frames``       the toy preset's: CLIP frame features, their mean and mean change
``tiny``              the tiny VideoMAE's pooled feature
===================== ======================================================================================

The ``real`` preset (:func:`metric_preset`) uses I3D when its weights are present: the file named by the
environment variable ``STORYREEL_I3D`` (an error when it names no file), else
``$STORYREEL_CACHE/i3d_kinetics400.safetensors`` (``~/.cache/storyreel/`` when ``STORYREEL_CACHE`` is unset) if it
exists; otherwise VideoMAE's pooled features stand in. Every result names its extractor (``video_features``), so
distances computed with different extractors are never compared; cached features are keyed by the extractor and,
for I3D, its weights file's SHA-256 (:func:`video_features_key`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from storyreel.errors import ModelLoadError, first_line
from storyreel.hub_access import offline_requested
from storyreel.weights_policy import PICKLE_REFUSAL, is_pickle_checkpoint

TINY = "tiny"
ZERO_SHOT = "clip-zero-shot"
CLIP_FRAMES = "clip-frames"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TINY_SEED = 0
TINY_ACTIONS = ("jumping", "running", "spinning", "walking", "waving")  # the demo's sample clips' labels
DINO_ARCHITECTURE = "vit_small_patch16_224"
I3D_PREFIX = "i3d:"  # video_features "i3d:PATH.safetensors"
I3D_TINY = "i3d-tiny"
I3D_ENV = "STORYREEL_I3D"  # the converted I3D weights the real preset uses
CACHE_ENV = "STORYREEL_CACHE"  # storyreel's cache folder (structure.depth_cache's convention)
I3D_FILE_NAME = "i3d_kinetics400.safetensors"


@dataclass(frozen=True)
class MetricModelSet:
    """Which model each metric uses (:data:`METRIC_PRESETS`); ``action_template`` words a label for a zero-shot
    classifier."""

    name: str
    clip: str
    dino: str
    action: str
    video_features: str
    action_template: str = "a video of a person {label}"

    def with_overrides(self, **models: str | None) -> MetricModelSet:
        chosen = {key: value for key, value in models.items() if value is not None}
        return replace(self, **chosen, name=self.name if not chosen else f"{self.name}+custom")

    def record(self) -> dict:
        return asdict(self)

    def hub_models(self) -> list:
        """The hub repositories these metric models load (:class:`storyreel.hub_access.HubModel`): the CLIP's
        safetensors file, the DINO's timm repository, the classifier's and FVD extractor's (an I3D is a local
        file). Models built in code and local folders or files need nothing."""
        from storyreel.hub_access import HubModel
        from storyreel.models.hub_models import TRANSFORMERS_WEIGHTS, clip_models, is_hub_id

        models = clip_models(self.clip)
        if _names_timm_hub_model(self.dino):
            models.append(HubModel(f"timm/{self.dino}", f"DINO {self.dino}", None,
                                   ("config.json", "model.safetensors")))
        for role, name in (("action classifier", self.action), ("FVD video features", self.video_features)):
            if not is_i3d(name) and is_hub_id(name):
                models.append(HubModel(name, role, None, ("config.json", TRANSFORMERS_WEIGHTS)))
        return models


def _names_timm_hub_model(name: str) -> bool:
    """A timm model name such as ``vit_small_patch16_224.dino`` (on the hub as ``timm/NAME``), not a local path."""
    return bool(name) and name != TINY and "/" not in name and not Path(name).suffix.lower() == ".safetensors" \
        and not Path(name).expanduser().exists()


METRIC_PRESETS = {
    "real": MetricModelSet("real", clip="ViT-B-32:openai", dino=f"{DINO_ARCHITECTURE}.dino",
                           action="MCG-NJU/videomae-base-finetuned-kinetics",
                           video_features="MCG-NJU/videomae-base-finetuned-kinetics"),
    "toy": MetricModelSet("toy", clip="toy", dino=TINY, action=ZERO_SHOT, video_features=CLIP_FRAMES,
                          action_template="a figure {label}"),
    "tiny": MetricModelSet("tiny", clip=TINY, dino=TINY, action=TINY, video_features=TINY),
}
METRIC_PRESET_NAMES = tuple(METRIC_PRESETS)


# -- the FVD extractor the real preset uses ----------------------------------------------------------------
def default_i3d_file() -> Path:
    """Where the real preset looks for I3D weights when ``STORYREEL_I3D`` is unset:
    ``$STORYREEL_CACHE/i3d_kinetics400.safetensors``, or ``~/.cache/storyreel/i3d_kinetics400.safetensors``."""
    import os

    base = os.environ.get(CACHE_ENV)
    return (Path(base).expanduser() if base else Path.home() / ".cache" / "storyreel") / I3D_FILE_NAME


def i3d_weights() -> Path | None:
    """The I3D weights file the real preset uses: ``$STORYREEL_I3D`` (:class:`ModelLoadError` when it names no
    file), else :func:`default_i3d_file` when it exists, else None (VideoMAE stands in)."""
    import os

    named = os.environ.get(I3D_ENV)
    if named:
        path = Path(named).expanduser()
        if not path.is_file():
            raise ModelLoadError(f"{I3D_ENV}={named}: no such file (convert pytorch-i3d's i3d_pretrained_400.pt with "
                                 "python -m evaluation.i3d_conversion, or unset it to use VideoMAE features)")
        return path.resolve()
    default = default_i3d_file()
    return default.resolve() if default.is_file() else None


def metric_preset(name: str) -> MetricModelSet:
    """:data:`METRIC_PRESETS`' ``name``; for ``real``, FVD on I3D (``i3d:PATH``) when :func:`i3d_weights` finds
    the weights, else on VideoMAE's pooled features."""
    preset = METRIC_PRESETS[name]
    if name == "real":
        weights = i3d_weights()
        if weights is not None:
            preset = replace(preset, video_features=f"{I3D_PREFIX}{weights}")
    return preset


def is_i3d(video_features: str) -> bool:
    return video_features == I3D_TINY or video_features.startswith(I3D_PREFIX)


def i3d_spec(video_features: str) -> str:
    """What :func:`evaluation.i3d.load_i3d` takes for an I3D ``video_features``: ``tiny`` or the weights' path."""
    return "tiny" if video_features == I3D_TINY else video_features[len(I3D_PREFIX):]


def check_video_features(video_features: str) -> None:
    """Before any model loads: :class:`ModelLoadError` for an ``i3d:`` path that is a pickle, not safetensors or
    missing."""
    if not video_features.startswith(I3D_PREFIX):
        return
    path = Path(i3d_spec(video_features)).expanduser()
    if is_pickle_checkpoint(path):
        raise ModelLoadError(f"--video-features {video_features}: refusing '{path}': {PICKLE_REFUSAL}; convert it "
                             "with python -m evaluation.i3d_conversion IN.pt OUT.safetensors")
    if path.suffix.lower() != ".safetensors":
        raise ModelLoadError(f"--video-features {video_features}: expected a .safetensors file")
    if not path.is_file():
        raise ModelLoadError(f"--video-features {video_features}: no such file '{path}'")


def video_features_key(video_features: str) -> str:
    """The extractor's part of a feature cache key: its name, and for ``i3d:PATH`` the weights file's SHA-256 too
    (other weights at the same path are another extractor)."""
    if video_features.startswith(I3D_PREFIX):
        from storyreel.hashing import file_sha256

        path = Path(i3d_spec(video_features)).expanduser()
        return f"{video_features}@sha256:{file_sha256(path)}" if path.is_file() else video_features
    return video_features


def load_video_features(video_features: str, device: torch.device):
    """The FVD extractor for ``video_features`` other than ``clip-frames``: an I3D
    (:class:`evaluation.i3d.I3DFeatures`, ``frames → 400-d feature``) or a video classifier
    (:class:`VideoClassifier`, ``frames → VideoPredictions``)."""
    if is_i3d(video_features):
        from evaluation.i3d import load_i3d

        check_video_features(video_features)
        features = load_i3d(i3d_spec(video_features), device)
        features.name = video_features
        return features
    return load_video_classifier(video_features, device)


def _offline_hint(what: str, name: str) -> str:
    return (f"cannot load the {what} '{name}'. Without network access, download it once on a connected machine "
            f"(its safetensors weights) and pass the local folder or file, or use --models tiny")


def resize_square(frames: np.ndarray, size: int) -> torch.Tensor:
    """``N x H x W x 3`` uint8 → ``N x 3 x size x size`` float in [0, 1]: the centre square, resized (bicubic,
    antialiased)."""
    from retrieval.frame_preprocessing import square_crop

    frames = np.asarray(frames)
    side = min(frames.shape[1:3])
    cropped = np.stack([square_crop(frame, side) for frame in frames])
    pixels = torch.from_numpy(np.ascontiguousarray(cropped)).permute(0, 3, 1, 2).float().div_(255.0)
    if side != size:
        pixels = torch.nn.functional.interpolate(pixels, size=(size, size), mode="bicubic", antialias=True,
                                                 align_corners=False).clamp_(0, 1)
    return pixels


# -- DINO --------------------------------------------------------------------------------------------------
class DinoFeatures:
    """DINO ViT image features (the CLS token, DreamVideo's and VBench's choice), unit-length rows."""

    def __init__(self, model: torch.nn.Module, name: str, device: torch.device, batch_size: int = 32):
        self.model = model.to(device).eval()
        self.name = name
        self.device = device
        self.batch_size = batch_size
        self.image_size = int(model.patch_embed.img_size[0])
        self._mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
        self._std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)

    @torch.inference_mode()
    def __call__(self, frames: np.ndarray) -> np.ndarray:
        rows = []
        for start in range(0, len(frames), self.batch_size):
            pixels = resize_square(frames[start:start + self.batch_size], self.image_size).to(self.device)
            rows.append(self.model((pixels - self._mean) / self._std).float().cpu().numpy())
        features = np.concatenate(rows)
        return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)


def build_tiny_dino() -> torch.nn.Module:
    """DINO's ViT-S/16 architecture (timm's VisionTransformer, CLS pooling, no head) at toy size, seeded."""
    from timm.models.vision_transformer import VisionTransformer

    from storyreel.seeding import seeded

    with seeded(TINY_SEED):
        return VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=0)


def load_dino(name: str, device: torch.device) -> DinoFeatures:
    """``tiny``, a timm model name (``vit_small_patch16_224.dino``; timm fetches its safetensors from the hub), a
    local folder in timm's hub layout (``config.json`` and ``model.safetensors``) or a local ``.safetensors``
    file of DINO ViT-S/16 weights."""
    import timm

    if name == TINY:
        return DinoFeatures(build_tiny_dino(), name, device)
    path = Path(name).expanduser()
    try:
        if path.is_dir():
            if not (path / "model.safetensors").is_file():
                raise ModelLoadError(f"--dino-model: '{path}' holds no model.safetensors (only safetensors are "
                                     "loaded)")
            model = timm.create_model(f"local-dir:{path}", pretrained=True, num_classes=0)
        elif path.suffix:
            if is_pickle_checkpoint(path):
                raise ModelLoadError(f"refusing to load '{path}': {PICKLE_REFUSAL}; convert it to .safetensors")
            if not path.is_file():
                raise ModelLoadError(f"--dino-model: no such file '{path}'")
            model = timm.create_model(DINO_ARCHITECTURE, pretrained=True, num_classes=0,
                                      pretrained_cfg_overlay={"file": str(path)})
        else:
            model = timm.create_model(name, pretrained=True, num_classes=0)
    except ModelLoadError:
        raise
    except Exception as exc:  # timm raises what the hub client raises: say which model and how to get it
        raise ModelLoadError(f"{_offline_hint('DINO model', name)} ({first_line(exc)})") from exc
    return DinoFeatures(model, name, device)


# -- video classifiers (action) and video features (FVD) ---------------------------------------------------
@dataclass
class VideoPredictions:
    """A classifier's answer for one video: the labels from most to least likely, their probabilities, and
    the video's pooled feature (the FVD feature of the VideoMAE extractor)."""

    labels: list[str]
    probabilities: list[float]
    feature: np.ndarray


class VideoClassifier:
    """A transformers video classifier (VideoMAE, TimeSformer): ``frames → VideoPredictions``; the clip is
    sampled uniformly to the model's frame count and resized to its image size."""

    def __init__(self, model: torch.nn.Module, name: str, device: torch.device, mean=IMAGENET_MEAN,
                 std=IMAGENET_STD):
        self.model = model.to(device).eval()
        self.name = name
        self.device = device
        config = model.config
        self.num_frames = int(config.num_frames)
        self.image_size = int(config.image_size)
        self.labels = [config.id2label[i] for i in range(config.num_labels)]
        self._mean = torch.tensor(mean, device=device).view(1, 1, 3, 1, 1)
        self._std = torch.tensor(std, device=device).view(1, 1, 3, 1, 1)

    def sample(self, frames: np.ndarray) -> np.ndarray:
        picks = np.linspace(0, len(frames) - 1, self.num_frames).round().astype(int)
        return np.asarray(frames)[picks]

    @torch.inference_mode()
    def __call__(self, frames: np.ndarray) -> VideoPredictions:
        pixels = resize_square(self.sample(frames), self.image_size).to(self.device)[None]
        output = self.model(pixel_values=(pixels - self._mean) / self._std, output_hidden_states=True)
        probabilities = output.logits.float().softmax(-1)[0].cpu().numpy()
        order = np.argsort(-probabilities, kind="stable")
        return VideoPredictions(labels=[self.labels[i] for i in order],
                                probabilities=[float(probabilities[i]) for i in order],
                                feature=self.pooled_feature(output.hidden_states[-1]))

    def pooled_feature(self, last_hidden: torch.Tensor) -> np.ndarray:
        """The feature the classifier's head reads (VideoMAE: the normalised mean of the patch tokens; others:
        the first token)."""
        backbone = self.model
        if getattr(backbone, "fc_norm", None) is not None:
            return backbone.fc_norm(last_hidden.mean(1))[0].float().cpu().numpy()
        return last_hidden[0, 0].float().cpu().numpy()


class ZeroShotClassifier:
    """Zero-shot action classification with a CLIP model (the toy preset's classifier): the labels are worded by
    ``template`` and ranked by the cosine of their text feature with the normalised mean frame feature; the
    feature is that mean frame feature."""

    def __init__(self, clip, labels: list[str], template: str):
        self.clip = clip
        self.name = f"{ZERO_SHOT}:{clip.spec}"
        self.labels = list(labels)
        self.template = template
        self._texts = clip.encode_texts([template.format(label=label) for label in self.labels]) if labels else None

    def __call__(self, frames: np.ndarray) -> VideoPredictions:
        features = self.clip.encode_images(self.clip.prepare_frames(frames))
        mean = features.mean(axis=0)
        mean = mean / max(np.linalg.norm(mean), 1e-12)
        if self._texts is None:
            return VideoPredictions(labels=[], probabilities=[], feature=mean)
        scores = self._texts @ mean
        probabilities = np.exp(100 * (scores - scores.max()))  # CLIP's logit scale
        probabilities /= probabilities.sum()
        order = np.argsort(-scores, kind="stable")
        return VideoPredictions(labels=[self.labels[i] for i in order],
                                probabilities=[float(probabilities[i]) for i in order], feature=mean)


def build_tiny_video_classifier() -> torch.nn.Module:
    """VideoMAE's architecture for Kinetics classification at toy size (4 frames of 32x32), seeded, with the
    demo's action labels."""
    from transformers import VideoMAEConfig, VideoMAEForVideoClassification

    from storyreel.seeding import seeded

    config = VideoMAEConfig(image_size=32, patch_size=8, num_frames=4, tubelet_size=2, hidden_size=32,
                            num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                            num_labels=len(TINY_ACTIONS), id2label=dict(enumerate(TINY_ACTIONS)),
                            label2id={label: i for i, label in enumerate(TINY_ACTIONS)})
    with seeded(TINY_SEED):
        return VideoMAEForVideoClassification(config)


def load_video_classifier(name: str, device: torch.device) -> VideoClassifier:
    """``tiny`` or a transformers video-classification model (hub id or local folder, safetensors only)."""
    if name == TINY:
        return VideoClassifier(build_tiny_video_classifier(), name, device)
    from transformers import AutoImageProcessor, AutoModelForVideoClassification

    try:
        model = AutoModelForVideoClassification.from_pretrained(name, use_safetensors=True,
                                                                local_files_only=offline_requested())
    except Exception as exc:  # the hub client's and transformers' errors: say which model and how to get it
        raise ModelLoadError(f"{_offline_hint('video classifier', name)} ({first_line(exc)})") from exc
    try:
        processor = AutoImageProcessor.from_pretrained(name, local_files_only=offline_requested())
        mean, std = processor.image_mean, processor.image_std
    except Exception:  # noqa: BLE001 - no processor config: the ImageNet statistics every Kinetics model uses
        mean, std = IMAGENET_MEAN, IMAGENET_STD
    return VideoClassifier(model, name, device, mean=mean, std=std)
