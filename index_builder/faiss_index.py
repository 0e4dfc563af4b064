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
    """Search settings recorded in the manifest: IVF lists probed and candidates re-scored per result."""
    if factory == "Flat":
        return {"nprobe": 0, "rescore_factor": 1}
    nlist = int(factory.split(",")[0][3:])
    return {"nprobe": max(1, min(nlist, 64)), "rescore_factor": 30}


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
