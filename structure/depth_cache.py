"""A disk cache of raw depth, so re-rendering a shot never runs the depth model again.

Keys are the SHA-256 of a canonical JSON record of everything the raw depth depends on:

* for a video: its absolute path, file size and modification time (so an edited file misses), the time
  range, the frame count and the render size;
* for images: a hash of their pixels, the frame count and the render size;
* the depth model's fingerprint (weights and preprocessing), and :data:`CACHE_VERSION` (bumped when the
  sampling or framing code changes what a key means).

Values are the *raw* model output at the render size (``T x H x W`` float32, near = large), before
normalisation and smoothing, so changing those settings reuses the entry. Files are written atomically
(``storyreel.atomic_files``). A file that cannot be read or does not hold what its key promises (a
truncated write from another tool, disk corruption, a hash collision) is reported with a warning,
recomputed and replaced; it is never fatal.

The cache folder is ``~/.cache/storyreel/depth``, or ``$STORYREEL_CACHE/depth``, or the ``root`` given.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import warnings
from pathlib import Path

import numpy as np

from storyreel.atomic_files import write_bytes

CACHE_VERSION = 1
CACHE_ENV = "STORYREEL_CACHE"


def default_cache_root() -> Path:
    base = os.environ.get(CACHE_ENV)
    return (Path(base).expanduser() if base else Path.home() / ".cache" / "storyreel") / "depth"


def video_key_record(path: str | os.PathLike, start: float, end: float, frames: int, size: tuple[int, int],
                     model_fingerprint: str, pingpong_s: float | None = None) -> dict:
    """The key record of a video segment (the file is identified by path, size and mtime); ``pingpong_s``: the
    range plays back and forth for that many seconds (in the key only then, so older keys stay)."""
    path = Path(path).resolve()
    stat = path.stat()
    extra = {} if pingpong_s is None else {"pingpong_s": round(float(pingpong_s), 6)}
    return {**extra,
        "version": CACHE_VERSION,
        "kind": "video",
        "path": str(path),
        "file_size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "start": round(float(start), 6),
        "end": round(float(end), 6),
        "frames": int(frames),
        "size": [int(size[0]), int(size[1])],
        "model": model_fingerprint,
    }


def images_key_record(images: list[np.ndarray], size: tuple[int, int], model_fingerprint: str) -> dict:
    """The key record of an image sequence (identified by a hash of its pixels and shapes)."""
    digest = hashlib.sha256()
    for image in images:
        digest.update(f"{image.shape}{image.dtype}".encode())
        digest.update(np.ascontiguousarray(image).tobytes())
    return {
        "version": CACHE_VERSION,
        "kind": "images",
        "sha256": digest.hexdigest(),
        "frames": len(images),
        "size": [int(size[0]), int(size[1])],
        "model": model_fingerprint,
    }


def cache_key(record: dict) -> str:
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()


class DepthCache:
    """Raw depth arrays on disk, one ``.npz`` per key. ``hits`` and ``misses`` count lookups."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root).expanduser() if root is not None else default_cache_root()
        self.hits = 0
        self.misses = 0

    def path_for(self, record: dict) -> Path:
        key = cache_key(record)
        return self.root / key[:2] / f"{key}.npz"

    def load(self, record: dict) -> np.ndarray | None:
        """The cached raw depth for ``record``, or None (a miss, or an unusable file, with a warning)."""
        path = self.path_for(record)
        if not path.is_file():
            self.misses += 1
            return None
        problem = None
        try:
            with np.load(path, allow_pickle=False) as data:
                stored = json.loads(str(data["record"][()]))
                raw = np.asarray(data["raw"])
        except Exception as exc:  # noqa: BLE001 (zip, format and JSON errors all mean the same: unusable)
            problem = f"{type(exc).__name__}: {exc}"
        else:
            width, height = record["size"]
            if stored != record:
                problem = "it was written for another key"
            elif raw.dtype != np.float32 or raw.shape != (record["frames"], height, width):
                problem = f"it holds {raw.shape} {raw.dtype}, expected {(record['frames'], height, width)} float32"
            elif not np.all(np.isfinite(raw)):
                problem = "it holds NaN or infinite values"
        if problem is not None:
            warnings.warn(f"depth cache file {path} is unusable ({problem}); recomputing it", RuntimeWarning,
                          stacklevel=2)
            self.misses += 1
            return None
        self.hits += 1
        return raw

    def store(self, record: dict, raw: np.ndarray) -> Path:
        """Write ``raw`` for ``record`` atomically (replacing any file there); returns its path."""
        buffer = io.BytesIO()
        np.savez(buffer, raw=np.ascontiguousarray(raw, dtype=np.float32),
                 record=np.array(json.dumps(record, sort_keys=True)))
        path = self.path_for(record)
        write_bytes(path, buffer.getvalue())
        return path
