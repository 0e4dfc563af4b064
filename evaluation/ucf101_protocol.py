"""Animate-A-Story's UCF-101 zero-shot protocol: render every class from its name, then FVD/KVD against real clips.

The paper (Sec. 4.2; Make-Your-Video's protocol) renders UCF-101 classes zero-shot: the class name is the text
prompt, the structure comes from retrieved UCF-101 footage, and FVD and KVD are computed between the rendered
videos and real UCF-101 clips. Here:

1. classes: the ``v_<Class>_gNN_cNN`` files under ``ucf_root`` (the official layout, one folder per class, or
   flat); ``classes`` picks some of them;
2. for each class, a storyboard of ``videos_per_class`` shots whose caption and retrieval query are the class
   name in words (``SoccerJuggling`` → ``soccer juggling``, worded by ``prompt_template``), each with its own seed,
   rendered by ``render-story`` into ``out/renders/<Class>/`` against ``index`` (an index built over UCF-101, so
   the footage is UCF-101's): a rerun resumes there;
3. every rendered shot and up to ``real_per_class`` real clips per class through the video feature extractor
   (features cached under ``out/features/``), then FVD and KVD (:mod:`evaluation.distribution`).

``out/protocol.json`` holds the settings (written first; a rerun with other settings is refused instead of
mixing results), ``out/result.json`` the distances, the set sizes and the extractor.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from storyreel.atomic_files import write_bytes, write_json
from storyreel.errors import StoryreelError

UCF_NAME = re.compile(r"^v_(?P<label>[A-Za-z]+)_g\d+_c\d+$")
VIDEO_SUFFIXES = (".avi", ".mp4")
PROTOCOL_VERSION = 1


class ProtocolError(StoryreelError, ValueError):
    """Settings or data the protocol cannot run with; the message names the option or folder."""


@dataclass(frozen=True)
class ProtocolSettings:
    ucf_root: str
    index: str
    out: str
    models: str = "sd15"  # the render's preset
    metric_models: str = "real"  # evaluation.metric_models.METRIC_PRESETS
    classes: tuple[str, ...] = ()  # () = every class found
    videos_per_class: int = 10
    real_per_class: int = 10
    prompt_template: str = "{words}"
    width: int = 256  # Make-Your-Video's 256x256, 16 frames at 8 fps
    height: int = 256
    frames: int = 16
    fps: float = 8.0
    tau: float = 1.0
    steps: int | None = None  # None: the preset's
    seed: int = 0
    version: int = PROTOCOL_VERSION


def class_words(label: str) -> str:
    """``SoccerJuggling`` → ``soccer juggling`` (``YoYo`` → ``yo yo``)."""
    return " ".join(part.lower() for part in re.findall(r"[A-Z][a-z]*|[a-z]+|\d+", label))


def ucf_videos(root: Path) -> dict[str, list[Path]]:
    """``{class: [video, ...]}`` of the UCF-101 files under ``root`` (recursive, sorted)."""
    found: dict[str, list[Path]] = {}
    for path in sorted(root.rglob("*")):
        match = UCF_NAME.match(path.stem) if path.suffix.lower() in VIDEO_SUFFIXES else None
        if match and path.is_file():
            found.setdefault(match["label"], []).append(path)
    return found


def class_storyboard(label: str, settings: ProtocolSettings) -> dict:
    """The storyboard of one class: ``videos_per_class`` shots captioned and retrieved by the class name."""
    words = settings.prompt_template.format(words=class_words(label), label=label)
    defaults = {"width": settings.width, "height": settings.height, "frames": settings.frames, "fps": settings.fps,
                "tau": settings.tau, "seed": settings.seed}
    if settings.steps is not None:
        defaults["steps"] = settings.steps
    return {"title": f"UCF-101 {label}", "defaults": defaults,
            "shots": [{"id": f"{label}-{i:03d}", "text": words, "caption": words, "motion_query": words}
                      for i in range(settings.videos_per_class)]}


def check_settings(settings: ProtocolSettings) -> dict[str, list[Path]]:
    """The videos per chosen class; :class:`ProtocolError` for a missing folder, no UCF-101 files, an unknown
    class, or ``out`` holding a run with other settings."""
    root = Path(settings.ucf_root)
    if not root.is_dir():
        raise ProtocolError(f"--ucf-root: no such folder '{root}'")
    videos = ucf_videos(root)
    if not videos:
        raise ProtocolError(f"--ucf-root: '{root}' holds no UCF-101 videos (v_<Class>_gNN_cNN.avi)")
    unknown = [label for label in settings.classes if label not in videos]
    if unknown:
        raise ProtocolError(f"--classes: {', '.join(unknown)} not found under '{root}' "
                            f"(found {', '.join(sorted(videos)[:10])}{'...' if len(videos) > 10 else ''})")
    if not Path(settings.index).is_dir():
        raise ProtocolError(f"--index: no such folder '{settings.index}'")
    recorded = Path(settings.out) / "protocol.json"
    if recorded.is_file():
        before = json.loads(recorded.read_text())
        if before != json.loads(json.dumps(asdict(settings))):
            raise ProtocolError(f"--out {settings.out}: holds a run with other settings ({recorded}); "
                                "give another --out or remove it")
    chosen = settings.classes or tuple(sorted(videos))
    return {label: videos[label] for label in chosen}


def run_protocol(settings: ProtocolSettings, echo=print) -> dict:
    """Render, extract, measure (see the module docstring); returns result.json's content."""
    from evaluation.distribution import distribution_record
    from evaluation.metric_models import metric_preset
    from evaluation.story_evaluation import LoadedModels
    from render.story import StoryOptions, prepare_story, render_story
    from storyreel.devices import default_device

    videos = check_settings(settings)
    out = Path(settings.out)
    write_json(out / "protocol.json", asdict(settings))

    # 1-2. render each class (render-story resumes what is already there)
    rendered = []
    for label in videos:
        folder = out / "renders" / label
        storyboard = folder / "storyboard.json"
        write_json(storyboard, class_storyboard(label, settings))
        plan = prepare_story(StoryOptions(storyboard=storyboard, out=folder, index=Path(settings.index),
                                          models=settings.models, progress=False))
        echo(f"{label}: rendering {len(plan.shots)} videos")
        report = render_story(plan, echo=lambda line: None)
        rendered += [folder / shot["files"]["mp4"] for shot in report["shots"]]

    # 3. features and distances
    choice = metric_preset(settings.metric_models)  # real: I3D when its weights are present, else VideoMAE
    models = LoadedModels(choice, default_device())
    real = [path for label in videos for path in videos[label][:settings.real_per_class]]
    echo(f"features of {len(rendered)} rendered and {len(real)} real videos ({choice.video_features})")
    rendered_features = np.stack([cached_feature(models, path, out / "features") for path in rendered])
    real_features = np.stack([cached_feature(models, path, out / "features") for path in real])
    result = distribution_record(rendered_features, real_features, choice.video_features,
                                 f"{len(real)} UCF-101 clips, at most {settings.real_per_class} per class")
    result.update(classes=list(videos), settings="protocol.json")
    write_json(out / "result.json", result)
    return result


def cached_feature(models, path: Path, folder: Path) -> np.ndarray:
    """One video's FVD feature (:meth:`evaluation.story_evaluation.LoadedModels.file_feature`), cached by the
    file's path, size and mtime and the extractor (I3D: with its weights' SHA-256)."""
    from evaluation.metric_models import video_features_key

    stat = path.stat()
    key = hashlib.sha256(json.dumps([str(path.resolve()), stat.st_size, stat.st_mtime_ns,
                                     video_features_key(models.choice.video_features)]).encode()).hexdigest()[:32]
    cached = folder / f"{key}.npy"
    if cached.is_file():
        return np.load(cached)
    feature = models.file_feature(path)
    buffer = io.BytesIO()
    np.save(buffer, feature)
    write_bytes(cached, buffer.getvalue())
    return feature
