"""Choose and build the FAISS index over segment vectors (ids = segment ids, inner product on unit vectors).

Small libraries get an exact index. Larger ones get IVF-PQ, whose candidates :mod:`retrieval` re-scores
exactly against the stored vectors, so recall stays high while the index keeps ~70 bytes per vector in
memory. The coarse quantizer is trained on GPU when faiss sees one.
"""

from __future__ import annotations

import math

import faiss
import numpy as np

EXACT_MAX_VECTORS = 100_000


def choose_factory(num_vectors: int, dim: int) -> str:
    if num_vectors <= EXACT_MAX_VECTORS:
        return "Flat"
    nlist = 2 ** round(math.log2(2 * math.sqrt(num_vectors)))
    nlist = max(64, min(nlist, num_vectors // 39, 65536))
    subquantizers = next(m for m in (dim // 8, dim // 4, dim // 2, dim) if dim % m == 0)
    return f"IVF{nlist},PQ{subquantizers}"


def default_search_params(factory: str) -> dict:
    """Search settings for an index that was not tuned (see :func:`tune_search_params`)."""
    if factory == "Flat":
        return {"nprobe": 0, "rescore_factor": 1}
    nlist = int(factory.split(",")[0][3:])
    return {"nprobe": max(1, min(nlist, 32)), "rescore_factor": 20}


def tune_search_params(index: faiss.Index, vectors: np.ndarray, queries: np.ndarray, target_recall: float = 0.95,
                       k: int = 10) -> dict:
    """The cheapest ``nprobe`` and ``rescore_factor`` whose recall@k on ``queries`` reaches ``target_recall``.

    ``queries`` must come from the distribution searches will use: text queries sit far from the image
    vectors they retrieve (CLIP's modality gap), so stored vectors make far too easy tuning queries.
    The build passes the text embeddings of :data:`index_builder.tuning_queries.MOTION_QUERIES`. Exact
    answers come from brute force over ``vectors``. The cost of a setting is counted, not timed, so the
    choice is the same on every run: PQ codes scanned (``nprobe`` lists x ``m`` look-ups) plus candidates
    re-scored (``dim`` multiply-adds each). If no setting reaches the target, the best recall is taken.
    """
    from retrieval.vector_search import VectorSearcher

    if not _is_ivf(index):
        return default_search_params("Flat")
    ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
    n, dim = vectors.shape
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    truth = _exact_top_k(vectors, queries, k)
    per_list = n / ivf.nlist
    code_lookups = ivf.pq.M if hasattr(ivf, "pq") else dim
    trials = []
    for nprobe in (4, 8, 16, 32, 64, 128, 256):
        if nprobe > ivf.nlist:
            break
        for factor in (5, 10, 20, 30, 50):
            _, found = VectorSearcher(index, lambda ids: vectors[ids], nprobe, factor).search(queries, k)
            recall = float(np.mean([len(set(a) & set(b)) / k for a, b in zip(found, truth)]))
            cost = nprobe * per_list * code_lookups + factor * k * dim
            trials.append((recall >= target_recall, -cost, recall, nprobe, factor))
    reached = [t for t in trials if t[0]]
    best = max(reached, key=lambda t: t[1]) if reached else max(trials, key=lambda t: (t[2], t[1]))
    _, _, recall, nprobe, factor = best
    return {"nprobe": nprobe, "rescore_factor": factor, "tuned_recall_at_10": round(recall, 4),
            "target_recall": target_recall}


def _is_ivf(index: faiss.Index) -> bool:
    try:
        faiss.extract_index_ivf(index)
        return True
    except RuntimeError:
        return False


def _exact_top_k(vectors: np.ndarray, queries: np.ndarray, k: int, chunk: int = 262_144) -> np.ndarray:
    best_scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
    best_ids = np.zeros((len(queries), k), dtype=np.int64)
    for start in range(0, len(vectors), chunk):
        scores = queries @ vectors[start : start + chunk].T
        top = np.argpartition(-scores, min(k, scores.shape[1] - 1), axis=1)[:, :k]
        merged_scores = np.concatenate([best_scores, np.take_along_axis(scores, top, axis=1)], axis=1)
        merged_ids = np.concatenate([best_ids, top + start], axis=1)
        order = np.argsort(-merged_scores, axis=1)[:, :k]
        best_scores = np.take_along_axis(merged_scores, order, axis=1)
        best_ids = np.take_along_axis(merged_ids, order, axis=1)
    return best_ids


def build_faiss_index(vectors: np.ndarray, ids: np.ndarray, factory: str, seed: int = 1234) -> faiss.Index:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    dim = vectors.shape[1]
    index = faiss.index_factory(dim, factory if factory != "Flat" else "IDMap2,Flat", faiss.METRIC_INNER_PRODUCT)
    if not index.is_trained:
        ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
        # Polysemous codes (on by default in the factory) cost ~10x the training time and are unused:
        # candidates are re-scored exactly (retrieval.vector_search).
        if hasattr(ivf, "do_polysemous_training"):
            ivf.do_polysemous_training = False
        ivf.cp.seed = seed
        if faiss.get_num_gpus() > 0:
            ivf.clustering_index = faiss.index_cpu_to_all_gpus(faiss.IndexFlatL2(dim))
        rng = np.random.default_rng(seed)
        sample_size = min(len(vectors), max(64 * ivf.nlist, 100_000))
        sample = vectors[np.sort(rng.choice(len(vectors), sample_size, replace=False))]
        index.train(sample)
    index.add_with_ids(vectors, ids)
    return index


def serialize(index: faiss.Index) -> bytes:
    return faiss.serialize_index(index).tobytes()
