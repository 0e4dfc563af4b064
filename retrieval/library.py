"""Open an index folder and search it: text or frames → CLIP embedding → FAISS → re-ranked segments."""

from __future__ import annotations

import hashlib
import sqlite3
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from retrieval.clip_reader import read_segment_frames
from retrieval.index_format import FAISS_FILE, METADATA_FILE, IndexFormatError, Manifest, has_scene_columns
from retrieval.reranking import RerankOptions, rerank
from retrieval.vector_search import VectorSearcher


class ModelMismatchError(IndexFormatError):
    """The query model differs from the one that built the index."""


@dataclass(frozen=True)
class ClipSegment:
    """One retrieved segment: where it is, what it shows, and how well it matched."""

    segment_id: int
    score: float
    clip_score: float
    path: str
    start: float
    end: float
    fps: float | None
    width: int | None
    height: int | None
    label: str | None
    caption: str | None
    motion_score: float
    scene_start: float | None = None
    """Start of the cut-free stretch of the clip that holds the segment (None: an index from before scenes
    were recorded, where only the segment itself is known to be cut-free)."""
    scene_end: float | None = None
    """End of that stretch: the next detected cut, or the end of the clip (or of its listed range)."""

    @property
    def duration(self) -> float:
        return self.end - self.start

    @property
    def scene(self) -> tuple[float, float]:
        """``(start, end)`` of the cut-free stretch holding the segment: how far its footage may extend."""
        if self.scene_start is None or self.scene_end is None:
            return (self.start, self.end)
        return (min(self.scene_start, self.start), max(self.scene_end, self.end))

    def read_frames(self, num_frames: int | None = None, fps: float | None = None,
                    size: tuple[int, int] | None = None) -> np.ndarray:
        """The segment's frames (T x H x W x 3 uint8); see :func:`retrieval.clip_reader.read_segment_frames`."""
        return read_segment_frames(self.path, self.start, self.end, num_frames=num_frames, fps=fps, size=size)

    def to_dict(self) -> dict:
        return asdict(self)


_SEGMENT_COLUMNS = "segment_id, clip_path, start_s, end_s, fps, width, height, label, caption, motion_score"
_SCENE_COLUMNS = ", scene_start_s, scene_end_s"


class Library:
    """A built index, ready for queries. Use :meth:`open`."""

    def __init__(self, index_dir: Path, manifest: Manifest, faiss_index, db: sqlite3.Connection,
                 shards: list[np.ndarray], shard_starts: np.ndarray, embedder=None, model_spec: str | None = None):
        self.index_dir = index_dir
        self.manifest = manifest
        self.faiss_index = faiss_index
        self._db = db
        self._shards = shards
        self._shard_starts = shard_starts
        self._embedder = embedder
        self._model_spec = model_spec or manifest.model["spec"]
        self._columns = _SEGMENT_COLUMNS + (_SCENE_COLUMNS if has_scene_columns(db) else "")
        self._searcher = VectorSearcher(faiss_index, self.vectors, nprobe=manifest.search.get("nprobe", 0),
                                        rescore_factor=manifest.search.get("rescore_factor", 1))

    # -- opening -------------------------------------------------------------------------------
    @classmethod
    def open(cls, index_dir: str | Path, model: str | None = None, embedder=None, device=None) -> "Library":
        """Open ``index_dir``. ``model`` (a spec such as ``tiny``) must match the one that built it."""
        import faiss

        index_dir = Path(index_dir)
        manifest = Manifest.read(index_dir)
        built_with = manifest.model["spec"]
        asked = model if model is not None else (str(embedder.spec) if embedder is not None else None)
        if asked is not None and asked != built_with:
            raise ModelMismatchError(
                f"{index_dir} was built with model '{built_with}', not '{asked}': queries must be embedded by the "
                f"model that built the index (use --models {built_with}, or rebuild the index)"
            )
        faiss_path = index_dir / FAISS_FILE
        if not faiss_path.is_file():
            raise IndexFormatError(f"{faiss_path}: missing (rerun the same `build-index` command)")
        data = faiss_path.read_bytes()
        if hashlib.sha256(data).hexdigest() != manifest.faiss_sha256:
            raise IndexFormatError(f"{faiss_path}: contents do not match manifest.json (faiss_sha256); rebuild it")
        faiss_index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
        db = sqlite3.connect(f"file:{index_dir / METADATA_FILE}?mode=ro", uri=True, check_same_thread=False)
        rows = db.execute("SELECT file, first_segment_id FROM shards ORDER BY shard_id").fetchall()
        shards = [np.load(index_dir / file, mmap_mode="r") for file, _ in rows]
        starts = np.array([first for _, first in rows], dtype=np.int64)
        if faiss_index.ntotal != sum(len(s) for s in shards):
            raise IndexFormatError(f"{faiss_path}: holds {faiss_index.ntotal} vectors but the shards hold "
                                   f"{sum(len(s) for s in shards)}; rerun `build-index` to rebuild it")
        return cls(index_dir, manifest, faiss_index, db, shards, starts, embedder, model)

    @property
    def embedder(self):
        """The query encoder named by the manifest, loaded on first use and checked against its fingerprint."""
        if self._embedder is None:
            from retrieval.clip_models import load_clip_model

            self._embedder = load_clip_model(self.manifest.model["spec"])
        if self._embedder.fingerprint != self.manifest.model["fingerprint"]:
            raise ModelMismatchError(
                f"the weights of model '{self.manifest.model['spec']}' (fingerprint {self._embedder.fingerprint}) "
                f"differ from those that built {self.index_dir} ({self.manifest.model['fingerprint']}); "
                "rebuild the index"
            )
        return self._embedder

    def __len__(self) -> int:
        return int(self.faiss_index.ntotal)

    def close(self) -> None:
        self._db.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- stored data ---------------------------------------------------------------------------
    def vectors(self, segment_ids: Sequence[int]) -> np.ndarray:
        """The stored unit vectors of ``segment_ids``."""
        ids = np.asarray(segment_ids, dtype=np.int64)
        which = np.searchsorted(self._shard_starts, ids, side="right") - 1
        out = np.empty((len(ids), self.manifest.dim), dtype=np.float32)
        for shard in np.unique(which):
            mask = which == shard
            out[mask] = self._shards[shard][ids[mask] - self._shard_starts[shard]]
        return out

    def segments(self, segment_ids: Iterable[int], scores: Sequence[float] | None = None) -> list[ClipSegment]:
        ids = [int(i) for i in segment_ids]
        if not ids:
            return []
        marks = ",".join("?" * len(ids))
        rows = {row[0]: row for row in self._db.execute(
            f"SELECT {self._columns} FROM segments WHERE segment_id IN ({marks})", ids)}
        scores = scores if scores is not None else [float("nan")] * len(ids)
        out = []
        for segment_id, score in zip(ids, scores):
            sid, path, start, end, fps, width, height, label, caption, motion, *scene = rows[segment_id]
            out.append(ClipSegment(sid, float(score), float(score), path, start, end, fps, width, height,
                                   label, caption, motion, *scene))
        return out

    # -- search --------------------------------------------------------------------------------
    def nearest(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` ``(scores, ids)`` per query vector (see :class:`retrieval.vector_search.VectorSearcher`)."""
        return self._searcher.search(queries, k)

    def search_vector(self, query: np.ndarray, k: int = 5, text: str | None = None,
                      rerank_options: RerankOptions | None = None,
                      avoid: Sequence[ClipSegment] = ()) -> list[ClipSegment]:
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        options = rerank_options or RerankOptions()
        wanted = k * 10 + 20 * len(avoid) + (50 if options.motion_range or options.max_per_clip else 0)
        scores, ids = self.nearest(query, max(k, wanted))
        valid = ids[0] >= 0
        candidates = self.segments(ids[0][valid], scores[0][valid])
        return rerank(candidates, text, options, avoid)[:k]

    def search(self, text: str, k: int = 5, rerank_options: RerankOptions | None = None,
               avoid: Sequence[ClipSegment] = ()) -> list[ClipSegment]:
        """Segments whose motion matches ``text`` (a motion description), best first."""
        if not text or not text.strip():
            raise ValueError("the query text is empty")
        return self.search_vector(self.embedder.encode_texts([text])[0], k, text, rerank_options, avoid)

    def search_by_frames(self, frames: Sequence[np.ndarray] | np.ndarray, k: int = 5,
                         rerank_options: RerankOptions | None = None) -> list[ClipSegment]:
        """Segments that look like ``frames`` (any H x W x 3 uint8 frames; embedded as the index embeds)."""
        if len(frames) == 0:
            raise ValueError("no frames given")
        embedder = self.embedder
        vectors = embedder.encode_images(embedder.prepare_frames(frames))
        query = vectors.mean(axis=0)
        query /= max(np.linalg.norm(query), 1e-12)
        return self.search_vector(query, k, None, rerank_options)

    def search_story(self, queries: Sequence[str], k: int = 1, allow_repeats: bool = False,
                     rerank_options: RerankOptions | None = None) -> list[list[ClipSegment]]:
        """Results for each shot of a story; no two shots share footage unless ``allow_repeats``."""
        used: list[ClipSegment] = []
        results = []
        for query in queries:
            found = self.search(query, k, rerank_options, avoid=() if allow_repeats else used)
            results.append(found)
            if found:
                used.append(found[0])
        return results
