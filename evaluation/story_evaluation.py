"""``evaluate-story``'s work: every metric for every shot of a rendered story, then the story's summary.

:class:`StoryEvaluator` takes the metric models (:class:`evaluation.metric_models.MetricModelSet`, loaded on
first use: a rerun with nothing new loads nothing) and the characters' reference images, and runs one readable
loop per shot::

    1. the frames: the render's, the footage's (at the render's sample times), the guide depth
    2. text alignment      CLIP-T of the caption (tokens → class words)
    3. identity            CLIP-I and DINO-I against each character's reference images
    4. consistency         DINO subject and CLIP background consistency, frame-to-frame, flicker
    5. structure fidelity  the render's depth against the guide; optical flow against the footage's
    6. action              the classifier on the render and on the footage
    7. what the story needs: the shot's mean DINO feature (identity across shots), its video features (FVD)

A shot's result is cached under ``OUT/eval/cache/`` keyed by the shot's settings hash, its video's content, the
metric models (with an I3D extractor's weights file's SHA-256) and its characters' references
(:meth:`StoryEvaluator.shot_key`), so a second run after a new shot computes only the new shot. The story's
summary (means over shots, identity across shots per character, FVD and KVD against the footage or
``real_videos``) is always recomputed from the cached shots: it is cheap.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from evaluation import action, consistency, distribution, identity, structure_fidelity, text_alignment
from evaluation.metric_models import CLIP_FRAMES, ZERO_SHOT, MetricModelSet, video_features_key
from evaluation.story_output import RenderedShot, RenderedStory
from storyreel.atomic_files import write_bytes, write_json

EVALUATE_VERSION = 2  # bump when a metric's computation changes (it is part of every cache key)
EVAL_FOLDER = "eval"
METRICS_FILE = "metrics.json"
VIDEO_FEATURE_FRAMES = 16  # frames sampled from a real video file for its FVD feature (a shot's own frames: all)
SHOT_SECTIONS = ("text", "consistency", "structure", "action")  # a shot's figures, by section
SUMMARY_METRICS = (  # (section, key) of the per-shot figures averaged over the story
    ("text", "clip_t"), ("consistency", "dino_subject"), ("consistency", "clip_background"),
    ("consistency", "clip_frame_to_frame"), ("consistency", "flicker"), ("consistency", "mean_abs_diff"),
    ("structure", "depth_abs_rel"), ("structure", "depth_correlation"), ("structure", "flow_correlation"),
    ("structure", "flow_epe"), ("action", "top1"), ("action", "top5"), ("action", "agrees_with_footage"),
)


@dataclass
class LoadedModels:
    """The metric models, each loaded on first use."""

    choice: MetricModelSet
    device: object
    labels: list[str] = field(default_factory=list)  # the zero-shot classifier's classes
    depth_models: list[str] = field(default_factory=list)  # the stories' depth models (structure fidelity)
    _loaded: dict = field(default_factory=dict)

    def _get(self, key: str, build: Callable[[], object]):
        if key not in self._loaded:
            if not self._loaded:  # the first model to load: every hub model checked at once (offline: all named)
                self.check_available()
            self._loaded[key] = build()
        return self._loaded[key]

    def check_available(self) -> None:
        """Every hub model the evaluation may load, from the local cache or the hub asked once
        (:func:`storyreel.hub_access.ensure_available`); a run whose shots all come from the cache loads none
        and checks none."""
        from storyreel.hub_access import ensure_available
        from storyreel.models.hub_models import depth_models

        ensure_available(self.choice.hub_models() + [model for name in self.depth_models
                                                     for model in depth_models(name)])

    @property
    def clip(self):
        from retrieval.clip_models import load_clip_model

        return self._get("clip", lambda: load_clip_model(self.choice.clip, device=self.device))

    @property
    def dino(self):
        from evaluation.metric_models import load_dino

        return self._get("dino", lambda: load_dino(self.choice.dino, self.device))

    @property
    def classifier(self):
        """The action classifier; a zero-shot one is built for the current ``labels`` (a story's footage labels)."""
        from evaluation.metric_models import ZeroShotClassifier, load_video_classifier

        if self.choice.action == ZERO_SHOT:
            return self._get(f"classifier:{self.labels}", lambda: ZeroShotClassifier(self.clip, self.labels,
                                                                                      self.choice.action_template))
        return self._get("classifier", lambda: load_video_classifier(self.choice.action, self.device))

    def depth(self, name: str):
        from structure.depth_models import load_depth_model

        return self._get(f"depth:{name}", lambda: load_depth_model(name, device=self.device, progress=False))

    def file_feature(self, path: Path, frames: int = VIDEO_FEATURE_FRAMES) -> np.ndarray:
        """The FVD feature of a video file (any footage: the clip reader's decord, PyAV where it fails), from
        ``frames`` frames at evenly spaced times over it."""
        from retrieval.clip_reader import probe_video, read_frames_at

        duration = probe_video(path).duration_s
        sampled = read_frames_at(path, list((np.arange(frames) + 0.5) * duration / frames))
        uses_classifier = self.choice.video_features == self.choice.action
        return self.video_feature(sampled, self.classifier(sampled) if uses_classifier else None)

    def video_feature(self, frames: np.ndarray, predictions) -> np.ndarray:
        """The FVD feature of one video: the classifier's pooled feature when the extractor is the classifier,
        else the named extractor's (I3D: the time-mean of its 400 logits over all the frames, a clip of fewer than
        16 looped to 16)."""
        if self.choice.video_features == CLIP_FRAMES:
            return distribution.clip_frames_feature(self.clip, frames)
        if self.choice.video_features == self.choice.action:
            return np.asarray(predictions.feature, dtype=np.float64)
        from evaluation.metric_models import is_i3d, load_video_features

        extractor = self._get("video_features", lambda: load_video_features(self.choice.video_features,
                                                                            self.device))
        if is_i3d(self.choice.video_features):
            return np.asarray(extractor(frames), dtype=np.float64)
        return np.asarray(extractor(frames).feature, dtype=np.float64)


def metric_catalogue(models: MetricModelSet, depth_model: str) -> dict:
    """Every metric's model and recipe, as metrics.json states them."""
    return {
        "clip_t": {"model": models.clip, "recipe": text_alignment.RECIPE},
        "clip_i": {"model": models.clip, "recipe": identity.RECIPE_REFERENCE},
        "dino_i": {"model": models.dino, "recipe": identity.RECIPE_REFERENCE},
        "identity_across_shots": {"model": models.dino, "recipe": identity.RECIPE_ACROSS_SHOTS},
        "dino_subject": {"model": models.dino, "recipe": consistency.RECIPE_SUBJECT},
        "clip_background": {"model": models.clip, "recipe": consistency.RECIPE_SUBJECT + " (CLIP features)"},
        "clip_frame_to_frame": {"model": models.clip, "recipe": consistency.RECIPE_FRAME_TO_FRAME},
        "flicker": {"model": None, "recipe": consistency.RECIPE_FLICKER},
        "depth_abs_rel": {"model": depth_model, "recipe": structure_fidelity.RECIPE_DEPTH},
        "depth_correlation": {"model": depth_model, "recipe": structure_fidelity.RECIPE_DEPTH},
        "flow_correlation": {"model": None, "recipe": structure_fidelity.RECIPE_MOTION},
        "flow_epe": {"model": None, "recipe": structure_fidelity.RECIPE_MOTION},
        "action": {"model": models.action, "recipe": action.RECIPE},
        "fvd": {"model": models.video_features, "recipe": distribution.RECIPE_FVD},
        "kvd": {"model": models.video_features, "recipe": distribution.RECIPE_KVD},
    }


@dataclass(frozen=True)
class References:
    """A character's reference images (``N x H x W x 3`` uint8 each) and a digest of their pixels."""

    images: list[np.ndarray]
    digest: str

    @classmethod
    def read(cls, folder: Path) -> References:
        from characters.reference_images import ReferenceImageError, image_files, read_image

        files = image_files(folder)
        if not files:
            raise ReferenceImageError(folder, "holds no images")
        images = [read_image(path).pixels for path in files]
        digest = hashlib.sha256()
        for image in images:
            digest.update(f"{image.shape}".encode())
            digest.update(np.ascontiguousarray(image).tobytes())
        return cls(images=images, digest=digest.hexdigest())


class StoryEvaluator:
    """Evaluates the shots of rendered stories with one set of metric models (see the module docstring)."""

    def __init__(self, models: MetricModelSet, references: Mapping[str, References] | None = None,
                 device=None, real_videos: list[Path] | None = None, progress: bool = False):
        import torch

        from storyreel.devices import default_device

        self.choice = models
        self.references = dict(references or {})
        self.device = torch.device(device) if device else default_device()
        self.real_videos = list(real_videos or [])
        self.progress = progress
        self.models = LoadedModels(models, self.device)
        self.computed: list[str] = []  # "out:shot" of every shot computed (not cached) by this evaluator
        self._reference_features: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # name → (CLIP, DINO)

    # -- the cache -------------------------------------------------------------------------------------
    def shot_key(self, shot: RenderedShot, labels: list[str]) -> str:
        record = {"version": EVALUATE_VERSION, "shot": shot.fingerprint(), "models": self.choice.record(),
                  "depth_model": shot.sidecar.depth.model,
                  "references": {name: self.references[name].digest for name in sorted(shot.characters)
                                 if name in self.references},
                  "labels": labels if self.choice.action == ZERO_SHOT else None}
        extractor = video_features_key(self.choice.video_features)
        if extractor != self.choice.video_features:  # I3D weights: their content too, not only their path
            record["video_features_weights"] = extractor
        return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()

    @staticmethod
    def cache_files(shot: RenderedShot) -> tuple[Path, Path]:
        folder = shot.out / EVAL_FOLDER / "cache"
        return folder / f"{shot.safe_id}.json", folder / f"{shot.safe_id}.npz"

    def _cached(self, shot: RenderedShot, key: str) -> tuple[dict, dict[str, np.ndarray]] | None:
        record_file, arrays_file = self.cache_files(shot)
        try:
            record = json.loads(record_file.read_text())
            if record.get("key") != key:
                return None
            with np.load(arrays_file) as data:
                return record["metrics"], {name: data[name] for name in data.files}
        except (OSError, ValueError, KeyError):  # absent, half-written by another tool, or stale: compute again
            return None

    def _store(self, shot: RenderedShot, key: str, metrics: dict, arrays: dict[str, np.ndarray]) -> None:
        import io

        record_file, arrays_file = self.cache_files(shot)
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **arrays)
        write_bytes(arrays_file, buffer.getvalue())
        write_json(record_file, {"key": key, "metrics": metrics})  # last: the key vouches for the arrays

    # -- one shot --------------------------------------------------------------------------------------
    def evaluate_shot(self, shot: RenderedShot, labels: list[str]) -> tuple[dict, dict[str, np.ndarray]]:
        """The shot's metrics and the arrays the story needs (cached: see :meth:`shot_key`)."""
        key = self.shot_key(shot, labels)
        cached = self._cached(shot, key)
        if cached is not None:
            return cached
        self.models.labels = labels
        models = self.models

        # 1. the frames
        frames, footage = shot.frames(), shot.footage()
        depth_model = models.depth(shot.sidecar.depth.model)
        guide = shot.guide_depth(depth_model)

        # 2. text alignment
        caption = text_alignment.plain_caption(shot.caption, shot.class_words)
        clip_frames = models.clip.encode_images(models.clip.prepare_frames(frames))
        text = {"caption": caption, "clip_t": text_alignment.clip_t(models.clip.encode_texts([caption])[0],
                                                                     clip_frames)}

        # 3. identity against the references
        dino_frames = models.dino(frames)
        references = {}
        for name in shot.characters:
            if name not in self.references:
                references[name] = {"clip_i": None, "dino_i": None, "note": "no reference images given"}
                continue
            clip_refs, dino_refs = self.reference_features(name)
            references[name] = {"clip_i": identity.reference_similarity(clip_refs, clip_frames),
                                "dino_i": identity.reference_similarity(dino_refs, dino_frames)}

        # 4. consistency within the shot
        temporal = {"dino_subject": consistency.subject_consistency(dino_frames),
                    "clip_background": consistency.subject_consistency(clip_frames),
                    "clip_frame_to_frame": consistency.frame_to_frame(clip_frames),
                    "dino_frame_to_frame": consistency.frame_to_frame(dino_frames),
                    "flicker": consistency.flicker_score(frames),
                    "mean_abs_diff": consistency.mean_absolute_difference(frames),
                    "footage_flicker": consistency.flicker_score(footage)}

        # 5. structure fidelity
        from structure.extract import extract_raw_depth

        rendered_depth = extract_raw_depth(list(frames), size=shot.size, estimator=depth_model).values
        depth = structure_fidelity.depth_fidelity(rendered_depth, guide)
        motion = structure_fidelity.motion_fidelity(footage, frames)
        structure = {"depth_abs_rel": depth["abs_rel"], "depth_correlation": depth["correlation"], **motion}

        # 6. action
        render_predictions, footage_predictions = models.classifier(frames), models.classifier(footage)
        actions = action.action_scores(render_predictions, footage_predictions, shot.label,
                                       models.classifier.labels)

        # 7. what the story needs
        arrays = {"dino_mean": text_alignment.mean_feature(dino_frames),
                  "video_feature": models.video_feature(frames, render_predictions),
                  "footage_feature": models.video_feature(footage, footage_predictions)}
        metrics = {"shot": shot.id, "tau": shot.sidecar.tau, "label": shot.label, "characters": shot.characters,
                   "text": text, "identity": references, "consistency": temporal, "structure": structure,
                   "action": actions}
        metrics = _plain(metrics)
        self._store(shot, key, metrics, arrays)
        self.computed.append(f"{shot.out}:{shot.id}")
        return metrics, arrays

    def reference_features(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """The CLIP and DINO features of a character's reference images, computed once."""
        if name not in self._reference_features:
            images = self.references[name].images
            clip = self.models.clip.encode_images(self.models.clip.prepare_frames(images))
            dino = np.concatenate([self.models.dino(image[None]) for image in images])  # images differ in size
            self._reference_features[name] = (clip, dino)
        return self._reference_features[name]

    # -- the story -------------------------------------------------------------------------------------
    def evaluate(self, story: RenderedStory) -> dict:
        """metrics.json's content for ``story`` (written by :func:`write_metrics`)."""
        from tqdm import tqdm

        labels = sorted({shot.label for shot in story.shots if shot.label})
        if story.depth_model not in self.models.depth_models:
            self.models.depth_models.append(story.depth_model)
        shots, arrays = {}, {}
        for shot in tqdm(story.shots, desc=f"evaluate {story.out.name}", unit="shot", disable=not self.progress,
                         dynamic_ncols=True, leave=False):
            shots[shot.id], arrays[shot.id] = self.evaluate_shot(shot, labels)
        return {
            "evaluate_version": EVALUATE_VERSION,
            "story": {"out": str(story.out), "storyboard": story.report.storyboard.path,
                      "title": story.report.storyboard.title, "shots": len(story.shots)},
            "models": {**self.choice.record(), "depth": story.depth_model},
            "metrics": metric_catalogue(self.choice, story.depth_model),
            "summary": summarise(shots),
            "characters": self._characters(story, shots, arrays),
            "distribution": self._distribution(story, arrays),
            "shots": list(shots.values()),  # a list: the storyboard's order survives sorted JSON keys
        }

    def _characters(self, story: RenderedStory, shots: dict, arrays: dict) -> dict:
        names = sorted({name for shot in story.shots for name in shot.characters})
        result = {}
        for name in names:
            seen = [shot.id for shot in story.shots if name in shot.characters]
            entry = {"shots": seen, "across_shots": identity.across_shots(
                {shot: arrays[shot]["dino_mean"][None] for shot in seen})}
            for metric in ("clip_i", "dino_i"):
                values = [shots[shot]["identity"][name][metric] for shot in seen
                          if shots[shot]["identity"][name][metric] is not None]
                entry[metric] = float(np.mean(values)) if values else None
            result[name] = entry
        return result

    def _distribution(self, story: RenderedStory, arrays: dict) -> dict:
        rendered = np.stack([arrays[shot.id]["video_feature"] for shot in story.shots])
        if self.real_videos:
            real = np.stack([self.models.file_feature(path) for path in self.real_videos])
            source = f"{len(self.real_videos)} videos given with --real-videos"
        else:
            real = np.stack([arrays[shot.id]["footage_feature"] for shot in story.shots])
            source = "the shots' footage"
        return distribution.distribution_record(rendered, real, self.choice.video_features, source)


def shot_figure(shot: dict, key: str):
    """One figure of a shot's metrics by its key (``clip_t``, ``flow_correlation``, ...), whatever its section."""
    for section in SHOT_SECTIONS:
        if key in shot.get(section, {}):
            return shot[section][key]
    return None


def shots_by_id(metrics: dict) -> dict[str, dict]:
    """metrics.json's shots by id, in the storyboard's order."""
    return {shot["shot"]: shot for shot in metrics["shots"]}


def summarise(shots: dict) -> dict:
    """The mean of every per-shot figure over the shots that have it (booleans count as 0/1)."""
    summary = {}
    for section, key in SUMMARY_METRICS:
        values = [float(metrics[section][key]) for metrics in shots.values()
                  if metrics[section].get(key) is not None]
        summary[key] = float(np.mean(values)) if values else None
    return summary


def write_metrics(out: Path, metrics: dict) -> Path:
    path = Path(out) / EVAL_FOLDER / METRICS_FILE
    write_json(path, metrics)
    return path


def _plain(value):
    """``value`` with numpy scalars made plain Python (for JSON)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value
