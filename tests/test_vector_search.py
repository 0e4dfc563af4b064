"""FAISS index choice and search: exact equals brute force; IVF-PQ + exact re-scoring keeps recall."""

from __future__ import annotations

import numpy as np
import pytest

from index_builder.faiss_index import build_faiss_index, choose_factory, default_search_params, tune_search_params
from retrieval.vector_search import VectorSearcher


def clustered_unit_vectors(n: int, dim: int, seed: int, clusters: int = 200) -> np.ndarray:
    """Synthetic embeddings shaped like real ones: clusters in a low-dimensional subspace, plus noise."""
    rng = np.random.default_rng(seed)
    basis = rng.standard_normal((48, dim))
    centers = rng.standard_normal((clusters, 48))
    latent = centers[rng.integers(0, clusters, n)] + 0.6 * rng.standard_normal((n, 48))
    vectors = latent @ basis + 0.5 * rng.standard_normal((n, dim))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def test_factory_grows_with_the_library():
    assert choose_factory(5_000, 512) == "Flat"
    assert choose_factory(100_000, 512) == "Flat"
    assert choose_factory(1_000_000, 512) == "IVF2048,PQ64"
    assert choose_factory(10_000_000, 512) == "IVF8192,PQ64"
    assert choose_factory(200_000, 32) == "IVF1024,PQ4"
    assert default_search_params("Flat") == {"nprobe": 0, "rescore_factor": 1}
    assert default_search_params("IVF2048,PQ64") == {"nprobe": 32, "rescore_factor": 20}


def test_exact_search_equals_numpy_brute_force():
    vectors = clustered_unit_vectors(3000, 64, seed=1)
    queries = clustered_unit_vectors(20, 64, seed=2)
    ids = np.arange(len(vectors)) + 1000  # ids need not start at zero
    searcher = VectorSearcher(build_faiss_index(vectors, ids, "Flat"), lambda i: vectors[i - 1000])
    scores, found = searcher.search(queries, 10)
    brute = queries @ vectors.T
    expected = np.argsort(-brute, axis=1)[:, :10] + 1000
    assert np.array_equal(found, expected)
    np.testing.assert_allclose(scores, np.take_along_axis(brute, expected - 1000, axis=1), atol=1e-5)


@pytest.mark.slow
def test_ivf_pq_recall_at_10_on_50k_vectors():
    vectors = clustered_unit_vectors(50_000, 512, seed=3)
    queries = clustered_unit_vectors(200, 512, seed=4)
    ids = np.arange(len(vectors))
    factory = "IVF512,PQ64"
    index = build_faiss_index(vectors, ids, factory)
    tuning, queries = queries[:100], queries[100:]  # tune on some queries, measure on others
    tuned = tune_search_params(index, vectors, tuning, target_recall=0.95)
    assert tuned["tuned_recall_at_10"] >= 0.95
    params = {"nprobe": tuned["nprobe"], "rescore_factor": tuned["rescore_factor"]}
    assert tune_search_params(index, vectors, tuning, target_recall=0.95) == tuned, "the choice is deterministic"
    cheaper = tune_search_params(index, vectors, tuning, target_recall=0.8)
    assert (cheaper["nprobe"], cheaper["rescore_factor"]) != (params["nprobe"], params["rescore_factor"])
    assert cheaper["tuned_recall_at_10"] < tuned["tuned_recall_at_10"]
    searcher = VectorSearcher(index, lambda i: vectors[i], **params)
    _, found = searcher.search(queries, 10)
    truth = np.argsort(-(queries @ vectors.T), axis=1)[:, :10]
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, truth)])
    assert recall >= 0.9, f"recall@10 {recall:.3f}"
    # without exact re-scoring, PQ alone loses recall: the re-scoring stage is doing real work
    plain = VectorSearcher(searcher.index, lambda i: vectors[i], nprobe=params["nprobe"], rescore_factor=1)
    _, raw = plain.search(queries, 10)
    raw_recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(raw, truth)])
    assert raw_recall < recall
