"""How each shot goes into the next: a cut, a crossfade, or a generated transition.

StoryDiffusion generates the motion between two story images (its predictor was never released); storyreel does
it with what AnimateDiff users have: a short clip conditioned through SparseCtrl RGB on the last frame of one
shot (frame 0) and the first frame of the next (its last frame), its text travelling frame by frame from the first
shot's caption to the next's (:class:`render.sampler.PromptTravel`, linear: AnimateDiff's prompt travel), with both
shots' characters, the next shot's steps, guidance and IP-Adapter, and no depth guidance (there is no footage
between two shots). A shot's ``transition``
(or ``defaults.transition``) says which: ``cut``, ``crossfade`` (``transition_seconds`` overlapped) or
``generate`` (a clip of ``transition_seconds`` put between the two shots); left out, ``render-story
--crossfade`` decides, as before.

A generated transition is written to ``OUT/transitions/<a>--<b>.mp4`` with a sidecar; its hash is made of the two
shots' settings hashes, its length and the SparseCtrl model (:func:`transition_hash`), so it depends on those two
shots only: editing a third keeps it, editing either renders it again.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

TRANSITION_VERSION = 2  # 2: the text travels from the first shot's caption to the next's
TRANSITION_FOLDER = "transitions"
GENERATE, CROSSFADE, CUT = "generate", "crossfade", "cut"


@dataclass(frozen=True)
class Boundary:
    """What joins shot ``before`` to shot ``after`` in story.mp4: ``kind`` (cut, crossfade or generate), its
    seconds and, for a generated one, its frame count, hash and files."""

    before: str
    after: str
    kind: str
    seconds: float
    frames: int = 0
    settings_hash: str | None = None
    mp4: Path | None = None
    sidecar: Path | None = None

    def record(self, out: Path, status: str | None = None) -> dict:
        entry = {"from": self.before, "to": self.after, "kind": self.kind, "seconds": self.seconds}
        if self.kind == GENERATE:
            entry.update(frames=self.frames, file=str(self.mp4.relative_to(out)), settings_hash=self.settings_hash,
                         status=status)
        return entry


def transition_files(out: Path, before, after) -> dict[str, Path]:
    folder = Path(out) / TRANSITION_FOLDER
    name = f"{before.safe_id}--{after.safe_id}"
    return {"mp4": folder / f"{name}.mp4", "sidecar": folder / f"{name}.json"}


def transition_hash(before_hash: str, after_hash: str, frames: int, sparsectrl: str | None) -> str:
    record = {"version": TRANSITION_VERSION, "before": before_hash, "after": after_hash, "frames": frames,
              "sparsectrl": sparsectrl}
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


def story_boundaries(shots, hashes: dict[str, str], out: Path, crossfade: float,
                     sparsectrl: str | None) -> list[Boundary]:
    """The boundary after each shot but the last, from its ``transition`` (``--crossfade`` seconds of crossfade,
    or a cut, where the storyboard sets none)."""
    boundaries = []
    for before, after in zip(shots, shots[1:]):
        kind = before.transition
        if kind is None:
            boundaries.append(Boundary(before.id, after.id, CROSSFADE if crossfade > 0 else CUT, crossfade))
        elif kind == GENERATE:
            frames = max(2, round(before.transition_seconds * after.fps))
            files = transition_files(out, before, after)
            boundaries.append(Boundary(before.id, after.id, GENERATE, before.transition_seconds, frames,
                                       transition_hash(hashes[before.id], hashes[after.id], frames, sparsectrl),
                                       files["mp4"], files["sidecar"]))
        else:
            boundaries.append(Boundary(before.id, after.id, kind, before.transition_seconds if kind == CROSSFADE
                                       else 0.0))
    return boundaries


def is_current(boundary: Boundary) -> bool:
    """A generated transition whose mp4 exists and whose sidecar records this run's hash (it is not rendered again)."""
    if not boundary.mp4.is_file():
        return False
    try:
        return json.loads(boundary.sidecar.read_text()).get("settings_hash") == boundary.settings_hash
    except (OSError, ValueError):
        return False


def transition_seed(before_seed: int, after_seed: int) -> int:
    digest = hashlib.sha256(f"storyreel-transition:{before_seed}:{after_seed}".encode()).digest()
    return int.from_bytes(digest[:4], "big")
