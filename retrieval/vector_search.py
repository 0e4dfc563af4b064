"""Nearest segment vectors: FAISS proposes candidates, the stored vectors re-score them exactly.

With an exact (Flat) index the FAISS scores are final. With IVF-PQ, ``rescore_factor * k`` candidates
are re-scored with exact inner products from the stored float32 vectors (memory-mapped shards), which
restores the recall that product quantization loses while the index itself stays small.
"""

from __future__ import annotations

from typing import Callable

import numpy as np


class VectorSearcher:
    def __init__(self, faiss_index, lookup: Callable[[np.ndarray], np.ndarray], nprobe: int = 0,
                 rescore_factor: int = 1):
        import faiss

        self.index = faiss_index
        self.lookup = lookup
        self.rescore_factor = max(1, int(rescore_factor))
        if nprobe:
            faiss.extract_index_ivf(faiss_index).nprobe = int(nprobe)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` ``(scores, ids)`` for each row of ``queries`` (ids of -1 pad short results)."""
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        k = min(k, len(self))
        candidates = min(len(self), k * self.rescore_factor)
        scores, ids = self.index.search(queries, candidates)
        if self.rescore_factor == 1:
            return scores[:, :k], ids[:, :k]
        out_scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        out_ids = np.full((len(queries), k), -1, dtype=np.int64)
        for row, (query, row_ids) in enumerate(zip(queries, ids)):
            valid = row_ids[row_ids >= 0]
            exact = self.lookup(valid) @ query
            order = np.argsort(-exact, kind="stable")[:k]
            out_scores[row, : len(order)], out_ids[row, : len(order)] = exact[order], valid[order]
        return out_scores, out_ids
