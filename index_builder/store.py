"""The index being built: SQLite metadata plus ``.npy`` embedding shards (the writer stage).

Results are staged in memory and committed in flushes: first the shard file is written atomically,
then one SQLite transaction records its segments and videos. A build killed at any moment loses at most
the staged results; the rerun redoes exactly those, with the same ids, because results are committed in
the order the sources list the videos.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import numpy as np

from index_builder.decode_worker import DecodedVideo
from index_builder.sources import VideoJob
from retrieval.index_format import EMBEDDINGS_DIR, METADATA_FILE, SCHEMA, add_scene_columns
from storyreel import atomic_files


class IndexStore:
    def __init__(self, out_dir: str | Path, shard_size: int = 8192, flush_interval_s: float = 30.0):
        self.out_dir = Path(out_dir)
        (self.out_dir / EMBEDDINGS_DIR).mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.out_dir / METADATA_FILE, isolation_level=None)
        self.db.execute("PRAGMA foreign_keys = ON")
        self.db.executescript(SCHEMA)
        add_scene_columns(self.db)  # a build resumed on a database from before the scene columns
        self.shard_size = shard_size
        self.flush_interval_s = flush_interval_s
        self._next_video = self._scalar("SELECT COALESCE(MAX(video_id) + 1, 0) FROM videos")
        self._next_segment = self._scalar("SELECT COALESCE(MAX(segment_id) + 1, 0) FROM segments")
        self._next_shard = self._scalar("SELECT COALESCE(MAX(shard_id) + 1, 0) FROM shards")
        self._videos: list[tuple] = []
        self._segments: list[tuple] = []
        self._vectors: list[np.ndarray] = []
        self._last_flush = time.monotonic()
        self._remove_unreferenced_shards()

    def _remove_unreferenced_shards(self) -> None:
        """Drop shard files no committed row points to (a flush or a compaction cut short by a crash)."""
        referenced = {row[0] for row in self.db.execute("SELECT file FROM shards")}
        for path in (self.out_dir / EMBEDDINGS_DIR).glob("shard-*.npy"):
            if f"{EMBEDDINGS_DIR}/{path.name}" not in referenced:
                path.unlink(missing_ok=True)

    def _scalar(self, sql: str, *args):
        return self.db.execute(sql, args).fetchone()[0]

    # -- build settings ------------------------------------------------------------------------
    def build_info(self) -> dict | None:
        row = self.db.execute("SELECT value FROM build_info WHERE key = 'settings'").fetchone()
        return None if row is None else json.loads(row[0])

    def set_build_info(self, settings: dict) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO build_info (key, value) VALUES ('settings', ?)",
            (json.dumps(settings, sort_keys=True),),
        )

    def done_keys(self) -> set[str]:
        return {row[0] for row in self.db.execute("SELECT source_key FROM videos")}

    # -- staging -------------------------------------------------------------------------------
    @property
    def staged_vectors(self) -> int:
        return sum(len(v) for v in self._vectors)

    def add_video(self, video: DecodedVideo, vectors: np.ndarray) -> None:
        job, video_id = video.job, self._next_video
        self._next_video += 1
        status = "partial" if video.warning else "ok"
        self._videos.append((
            video_id, job.key, job.path, status, video.warning, job.label, job.caption, video.fps,
            video.width, video.height, video.duration_s, video.num_segments, video.backend,
        ))
        row = self.staged_vectors
        for i in range(video.num_segments):
            self._segments.append((
                self._next_segment, video_id, job.path, video.starts[i], video.ends[i], video.fps, video.width,
                video.height, job.label, job.caption, video.motions[i], self._next_shard, row + i,
                video.scene_starts[i], video.scene_ends[i],
            ))
            self._next_segment += 1
        self._vectors.append(np.asarray(vectors, dtype=np.float32))
        self._maybe_flush()

    def add_error(self, job: VideoJob, reason: str) -> None:
        self._videos.append((self._next_video, job.key, job.path, "error", reason, job.label, job.caption,
                             None, None, None, None, 0, None))
        self._next_video += 1
        self._maybe_flush()

    def _maybe_flush(self) -> None:
        if self.staged_vectors >= self.shard_size or time.monotonic() - self._last_flush >= self.flush_interval_s:
            self.flush()

    def flush(self) -> None:
        self._last_flush = time.monotonic()
        if not self._videos:
            return
        shard_rows = []
        if self._segments:
            vectors = np.concatenate(self._vectors)
            name = f"{EMBEDDINGS_DIR}/shard-{self._next_shard:05d}.npy"
            atomic_files.save_npy(self.out_dir / name, vectors)
            shard_rows.append((self._next_shard, name, self._segments[0][0], len(vectors)))
            self._next_shard += 1
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.executemany("INSERT INTO shards VALUES (?, ?, ?, ?)", shard_rows)
            self.db.executemany("INSERT INTO videos VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", self._videos)
            self.db.executemany("INSERT INTO segments VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                                self._segments)
            self.db.execute("COMMIT")
        self._videos, self._segments, self._vectors = [], [], []

    # -- reading back --------------------------------------------------------------------------
    def load_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """All committed vectors with their segment ids, in id order."""
        shards = self.db.execute("SELECT file, first_segment_id, count FROM shards ORDER BY shard_id").fetchall()
        if not shards:
            return np.zeros(0, dtype=np.int64), np.zeros((0, 0), dtype=np.float32)
        vectors = np.concatenate([np.load(self.out_dir / file) for file, _, _ in shards])
        ids = np.concatenate([np.arange(first, first + count, dtype=np.int64) for _, first, count in shards])
        return ids, vectors

    def compact(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Merge every shard into one file, so a search reads its vectors from one memory map.

        ``ids, vectors`` are :meth:`load_vectors`' result. The merged file is written first, then one
        transaction points every segment at it; the old files are removed last (or at the next open).
        """
        old = [row[0] for row in self.db.execute("SELECT file FROM shards")]
        if len(old) <= 1:
            return
        if not np.array_equal(ids, np.arange(len(ids))):
            raise RuntimeError(f"{self.out_dir}: segment ids are not contiguous from 0; the store is damaged")
        shard_id = self._next_shard
        self._next_shard += 1
        name = f"{EMBEDDINGS_DIR}/shard-{shard_id:05d}.npy"
        atomic_files.save_npy(self.out_dir / name, vectors)
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.execute("INSERT INTO shards VALUES (?, ?, 0, ?)", (shard_id, name, len(ids)))
            self.db.execute("UPDATE segments SET shard_id = ?, shard_row = segment_id", (shard_id,))
            self.db.execute("DELETE FROM shards WHERE shard_id != ?", (shard_id,))
            self.db.execute("COMMIT")
        for file in old:
            (self.out_dir / file).unlink(missing_ok=True)

    def error_rows(self) -> list[dict]:
        rows = self.db.execute(
            "SELECT path, status, error FROM videos WHERE status != 'ok' ORDER BY video_id"
        ).fetchall()
        return [{"stage": "decode", "path": p, "status": s, "reason": e} for p, s, e in rows]

    def counts(self) -> dict:
        by_status = dict(self.db.execute("SELECT status, COUNT(*) FROM videos GROUP BY status").fetchall())
        return {
            "videos": sum(by_status.values()),
            "videos_ok": by_status.get("ok", 0),
            "videos_partial": by_status.get("partial", 0),
            "videos_failed": by_status.get("error", 0),
            "segments": self._scalar("SELECT COUNT(*) FROM segments"),
        }

    def close(self) -> None:
        self.db.close()
