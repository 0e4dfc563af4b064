"""Regularisation with real videos of the class word, retrieved from a clip library index.

Animate-A-Story mixes the character's pseudo-videos with real videos of its class (200 retrieved clips in
the paper) so the model keeps its prior of how such things look and move. :func:`retrieve_clips` searches
an index (``retrieval.library.Library``) for ``"a <class word>"``; :class:`RegularisationSet` reads a
clip's frames as the render frames them (``structure.extract.read_source_frames``: ``frames`` frames over
the segment, cover-cropped to the training resolution) and its depth through the structure stage, on
first use, keeping the last ``cache_size`` clips in memory. Their prompt is ``"a <class word>"`` without
the token, so they train the LoRA only. A clip that cannot be read is skipped with a warning.
"""

from __future__ import annotations

import os
import warnings
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from characters.pseudo_video import VideoSample, depth_condition, to_pixels


@dataclass(frozen=True)
class ClipRef:
    """A retrieved segment: file and time range."""

    path: str
    start: float
    end: float

    def record(self) -> dict:
        return {"path": self.path, "start": round(self.start, 4), "end": round(self.end, 4)}


def regularisation_prompt(class_word: str) -> str:
    return f"a {class_word}"


def retrieve_clips(index_dir: str | os.PathLike, class_word: str, count: int) -> list[ClipRef]:
    """The ``count`` best segments for ``"a <class_word>"`` in the index at ``index_dir``."""
    from retrieval.library import Library

    with Library.open(index_dir) as library:
        found = library.search(regularisation_prompt(class_word), k=count)
    return [ClipRef(str(s.path), float(s.start), float(s.end)) for s in found]


class RegularisationSet:
    """Real clips as training videos, read lazily (see the module docstring)."""

    def __init__(self, clips: list[ClipRef], class_word: str, frames: int, resolution: int, depth_model,
                 cache_size: int = 8):
        self.clips = list(clips)
        self.prompt = regularisation_prompt(class_word)
        self.frames = frames
        self.resolution = resolution
        self.depth_model = depth_model
        self.cache_size = cache_size
        self._cache: OrderedDict[int, VideoSample | None] = OrderedDict()

    def __len__(self) -> int:
        return len(self.clips)

    def record(self) -> list[dict]:
        return [clip.record() for clip in self.clips]

    def _read(self, index: int) -> VideoSample | None:
        from structure.extract import read_source_frames

        clip = self.clips[index]
        try:
            frames = read_source_frames((clip.path, clip.start, clip.end), frames=self.frames,
                                        size=(self.resolution, self.resolution))
            condition = depth_condition(frames, self.depth_model)
        except Exception as exc:  # noqa: BLE001 (one bad clip never stops training)
            warnings.warn(f"{clip.path}: skipped as a regularisation clip ({type(exc).__name__}: {exc})",
                          stacklevel=3)
            return None
        return VideoSample(to_pixels(np.asarray(frames)), condition, self.frames, self.prompt, "regularisation",
                           clip.record())

    def get(self, index: int) -> VideoSample | None:
        """Clip ``index`` as a :class:`VideoSample`, or None when it cannot be read."""
        if index in self._cache:
            self._cache.move_to_end(index)
            return self._cache[index]
        sample = self._read(index)
        self._cache[index] = sample
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return sample
