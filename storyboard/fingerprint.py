"""A stable hash of everything that determines a shot's output, so a rerun skips unchanged shots.

The hash is the SHA-256 of a canonical JSON record (sorted keys, no whitespace) of the shot's resolved
settings: size, frames, fps, steps, guidance, τ, seed, scheduler, prompt, negative prompt, style, text,
motion query, its characters (token, class word, LoRA scale and the SHA-256 of the embedding file's
content) and its clip override (the SHA-256 of the file's content and the time range). It leaves out
what does not change the pixels: the shot's id and position, the title, the planner's analysis, and
where files live (moving the project keeps every hash). Settings added after the first version of the
record (``eta``, ``depth_range``, ``footage_fit``, ``max_speed_change``, ``consistency``) are in it only when
they differ from their defaults, so a storyboard that does not use them keeps the hash it always had (its output folder
keeps resuming). The caller adds what the storyboard cannot know (the index's fingerprint, model presets,
the render code's version) through ``extra``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from typing import Mapping

from storyboard.shot_settings import (
    DEFAULT_DEPTH_RANGE,
    DEFAULT_ETA,
    DEFAULT_FOOTAGE_FIT,
    DEFAULT_MAX_SPEED_CHANGE,
    ShotSettings,
)
from storyreel.hashing import file_sha256

HASH_VERSION = 1


def shot_record(settings: ShotSettings) -> dict:
    """The JSON record that :func:`shot_hash` hashes (files are read to hash their content)."""
    record = {
        "hash_version": HASH_VERSION,
        "text": settings.text,
        "prompt": settings.prompt,
        "motion_query": settings.motion_query,
        "negative_prompt": settings.negative_prompt,
        "style": settings.style,
        "size": [settings.width, settings.height],
        "frames": settings.frames,
        "fps": settings.fps,
        "steps": settings.steps,
        "guidance": settings.guidance,
        "tau": settings.tau,
        "seed": settings.seed,
        "scheduler": settings.scheduler,
        "characters": [_character_record(character) for character in settings.characters],
        "clip": None if settings.clip is None else {
            "sha256": file_sha256(settings.clip.path),
            "start": settings.clip.start,
            "end": settings.clip.end,
        },
    }
    # later settings: recorded only when not at their default, so older storyboards keep their hashes
    if settings.eta != DEFAULT_ETA:
        record["eta"] = settings.eta
    if settings.depth_range != DEFAULT_DEPTH_RANGE:
        record["depth_range"] = settings.depth_range
    if settings.footage_fit != DEFAULT_FOOTAGE_FIT:
        record["footage_fit"] = settings.footage_fit
    if settings.max_speed_change != DEFAULT_MAX_SPEED_CHANGE:
        record["max_speed_change"] = settings.max_speed_change
    if settings.consistency is not None:
        record["consistency"] = asdict(settings.consistency)
    return record


def _character_record(character) -> dict:
    record = {
        "token": character.token,
        "class_word": character.class_word,
        "scale": character.scale,
        "embedding_sha256": file_sha256(character.embedding) if character.embedding else None,
    }
    if character.reference_images:  # later: only for characters with pictures, so older hashes stay
        record["reference_images_sha256"] = [file_sha256(path) for path in character.reference_images]
        record["ip_adapter_scale"] = character.ip_adapter_scale
    return record


def shot_hash(settings: ShotSettings, extra: Mapping | None = None) -> str:
    """The hex SHA-256 of the shot's record and ``extra`` (any JSON-serialisable mapping)."""
    record = {"shot": shot_record(settings), "extra": dict(extra) if extra else {}}
    text = json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
