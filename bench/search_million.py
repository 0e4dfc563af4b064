"""Vector search over a million segment vectors: IVF-PQ + exact re-scoring against the exact baseline.

What it measures, on ``--n`` synthetic ``--dim``-d unit vectors (default 1,000,000 x 512) shaped like
CLIP embeddings, with ``--queries`` held-out query vectors (default 1000):

* the FAISS factory the library picks, ``choose_factory(n, dim)`` (``IVF2048,PQ64`` at 1M x 512), and
  its search settings ``default_search_params(factory)``;
* build time of ``build_faiss_index`` (train on its sample + add all vectors, split in two);
* bytes per vector: the serialised index (``index.faiss``) / n. Re-scoring also reads the stored float32
  vectors (``embeddings/*.npy``, dim x 4 = 2048 B per vector on disk, memory-mapped, not held in RAM);
* recall@10 against exact brute force (numpy, float32, database in chunks);
* queries/s through ``VectorSearcher.search`` at batch 1 (a loop of single queries, as a user typing
  queries one by one) and at batch 64, median of ``--repeats`` runs;
* the same figures for the exact baseline, ``build_faiss_index(..., "Flat")`` (IDMap2 over
  IndexFlatIP, what the library uses up to 100k vectors), on the same vectors and the same queries
  (on the first ``--exact-queries`` queries at batch 1 and ``--exact-batch-queries`` at batch 64 only:
  every exact query scans all n x dim floats),
  side by side in this process, and the ratio IVF-PQ qps / exact qps;
* a sweep over nprobe (16, 32, 64) x rescore_factor (10, 20, 30) at batch 1, plus PQ alone (no re-scoring),
  to show the recall / speed trade-off.

Goal: recall@10 >= 0.95 at >= 1000 single queries/s with the default settings.

The stored vectors are looked up the way an opened index does it: written as ``.npy`` to a temp
folder, opened with ``mmap_mode="r"`` and read through the library's own ``Library.vectors`` code
(called on a stand-in object holding the shard list), so re-scoring pays the real lookup cost. By
default they are one file, the layout of a finished index (the build merges its shards into one file,
``IndexStore.compact``); ``--compare-shard-size 8192`` (the default) also times the uncompacted layout,
one file per 8192 rows (``build-index``'s ``--shard-size``), where every query gathers its candidates
from ~100 memory maps. The files sit in the page cache, as on a machine serving queries.

Synthetic data: the recipe of ``clustered_unit_vectors`` in ``tests/test_vector_search.py`` (clusters
in a 48-d subspace projected to ``dim`` dims, plus isotropic noise, normalised), generated in float32
chunks to save time and memory. Unlike that test helper, queries come from the same subspace and
clusters as the library (one generator, different samples), so a query has real near neighbours, as
a frame query has among clips like it. Real text queries sit farther from the image vectors (CLIP's
modality gap) and may need more lists probed for the same recall; see docs/BENCHMARKS.md.

Run (from the repository root; ~4 minutes, ~8 GB of memory and ~4 GB of temp files at the default size
on 2 cores)::

    .venv/bin/python bench/search_million.py
    .venv/bin/python bench/search_million.py --n 200000 --queries 500     # a quicker look

Exits 0 whatever the figures; the goal line says whether the goal was met.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np

GOAL_RECALL = 0.95
GOAL_QPS = 1000.0
K = 10
SUBSPACE = 48


# -- synthetic embeddings ------------------------------------------------------------------------
class ClusteredEmbeddings:
    """``clustered_unit_vectors`` from tests/test_vector_search.py, split so that the library and the
    queries are different samples of one distribution: clusters in a 48-d subspace, plus noise."""

    def __init__(self, dim: int, seed: int, clusters: int = 200):
        rng = np.random.default_rng(seed)
        self.dim = dim
        self.basis = rng.standard_normal((SUBSPACE, dim)).astype(np.float32)
        self.centers = rng.standard_normal((clusters, SUBSPACE)).astype(np.float32)

    def sample(self, n: int, seed: int, chunk: int = 65536) -> np.ndarray:
        rng = np.random.default_rng(seed)
        out = np.empty((n, self.dim), dtype=np.float32)
        for start in range(0, n, chunk):
            rows = min(chunk, n - start)
            latent = self.centers[rng.integers(0, len(self.centers), rows)]
            latent += 0.6 * rng.standard_normal((rows, SUBSPACE), dtype=np.float32)
            block = latent @ self.basis
            block += 0.5 * rng.standard_normal((rows, self.dim), dtype=np.float32)
            block /= np.linalg.norm(block, axis=1, keepdims=True)
            out[start : start + rows] = block
        return out


def brute_force_top_k(vectors: np.ndarray, queries: np.ndarray, k: int, chunk: int = 65536) -> np.ndarray:
    """Exact top-k ids by inner product (numpy float32, the database in chunks)."""
    best_scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
    best_ids = np.full((len(queries), k), -1, dtype=np.int64)
    for start in range(0, len(vectors), chunk):
        scores = queries @ vectors[start : start + chunk].T
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        scores = np.concatenate([best_scores, np.take_along_axis(scores, top, axis=1)], axis=1)
        ids = np.concatenate([best_ids, top + start], axis=1)
        keep = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        best_scores, best_ids = np.take_along_axis(scores, keep, axis=1), np.take_along_axis(ids, keep, axis=1)
    return best_ids


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    k = truth.shape[1]
    return float(np.mean([len(set(a.tolist()) & set(b.tolist())) / k for a, b in zip(found[:, :k], truth)]))


# -- stored vectors, looked up like an opened index ------------------------------------------------
def write_shards(vectors: np.ndarray, folder: Path, shard_size: int):
    """``.npy`` shards of ``shard_size`` rows (0: one file), memory-mapped as ``Library.open`` does them;
    returns the lookup, the library's own ``Library.vectors`` on a stand-in holding the shards."""
    from retrieval.library import Library

    folder.mkdir(parents=True, exist_ok=True)
    shard_size = shard_size or len(vectors)
    shards, starts = [], []
    for number, start in enumerate(range(0, len(vectors), shard_size)):
        path = folder / f"shard-{number:05d}.npy"
        np.save(path, vectors[start : start + shard_size])
        shards.append(np.load(path, mmap_mode="r"))
        starts.append(start)
    stand_in = types.SimpleNamespace(_shards=shards, _shard_starts=np.asarray(starts, dtype=np.int64),
                                     manifest=types.SimpleNamespace(dim=vectors.shape[1]))
    return lambda ids: Library.vectors(stand_in, ids)


# -- timing ----------------------------------------------------------------------------------------
def search_all(searcher, queries: np.ndarray, batch: int) -> np.ndarray:
    found = []
    for start in range(0, len(queries), batch):
        found.append(searcher.search(queries[start : start + batch], K)[1])
    return np.concatenate(found)


def timed_qps(searcher, queries: np.ndarray, batch: int, repeats: int) -> tuple[float, np.ndarray]:
    """Median queries/s over ``repeats`` passes over ``queries`` in batches of ``batch``, and the ids found."""
    rates, found = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        found = search_all(searcher, queries, batch)
        rates.append(len(queries) / (time.perf_counter() - started))
    return statistics.median(rates), found


def faiss_ms_per_query(index, queries: np.ndarray, candidates: int, batch: int) -> float:
    """The FAISS candidate search alone (what VectorSearcher asks FAISS for), ms per query."""
    started = time.perf_counter()
    for start in range(0, len(queries), batch):
        index.search(queries[start : start + batch], candidates)
    return 1000 * (time.perf_counter() - started) / len(queries)


def lookup_ms_per_query(index, lookup, queries: np.ndarray, candidates: int) -> float:
    """Reading the stored vectors of each query's candidates alone, ms per query."""
    _, found = index.search(queries, candidates)
    rows = [row[row >= 0] for row in found]
    started = time.perf_counter()
    for row in rows:
        lookup(row)
    return 1000 * (time.perf_counter() - started) / len(queries)


def build_timed(vectors: np.ndarray, ids: np.ndarray, factory: str):
    """``build_faiss_index`` with its train and add steps timed apart (timing wrappers on the new index)."""
    import faiss

    from index_builder import faiss_index

    times = {"train": 0.0, "add": 0.0}
    original_factory = faiss.index_factory

    def timing_factory(*args, **kwargs):
        index = original_factory(*args, **kwargs)
        for name, label in (("train", "train"), ("add_with_ids", "add")):
            method = getattr(index, name)

            def timed(*a, _method=method, _label=label, **kw):
                started = time.perf_counter()
                try:
                    return _method(*a, **kw)
                finally:
                    times[_label] += time.perf_counter() - started

            setattr(index, name, timed)
        return index

    faiss_index.faiss.index_factory = timing_factory
    try:
        started = time.perf_counter()
        index = faiss_index.build_faiss_index(vectors, ids, factory)
        total = time.perf_counter() - started
    finally:
        faiss_index.faiss.index_factory = original_factory
    return index, total, times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000, help="library vectors [1000000]")
    parser.add_argument("--dim", type=int, default=512, help="dimensions [512]")
    parser.add_argument("--queries", type=int, default=1000, help="query vectors [1000]")
    parser.add_argument("--exact-queries", type=int, default=100,
                        help="queries for the exact baseline at batch 1 (each scans everything) [100]")
    parser.add_argument("--exact-batch-queries", type=int, default=256,
                        help="queries for the exact baseline at batch 64 [256]")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per figure, median reported [3]")
    parser.add_argument("--clusters", type=int, default=200, help="clusters of the synthetic embeddings [200]")
    parser.add_argument("--shard-size", type=int, default=0,
                        help="rows per stored .npy shard; 0 = one file, the layout of a finished index [0]")
    parser.add_argument("--compare-shard-size", type=int, default=8192,
                        help="diagnostic second layout, e.g. 8192 = uncompacted build shards; 0 skips it [8192]")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tmp", type=Path, default=None, help="where the stored vector shards go [system temp]")
    parser.add_argument("--no-sweep", action="store_true", help="skip the nprobe x rescore_factor sweep")
    parser.add_argument("--no-exact", action="store_true", help="skip the exact (Flat) baseline")
    args = parser.parse_args()
    if min(args.n, args.dim, args.queries, args.exact_queries, args.exact_batch_queries, args.repeats) < 1:
        print("error: sizes and counts must be at least 1", file=sys.stderr)
        return 2

    import faiss

    from index_builder.faiss_index import build_faiss_index, choose_factory, default_search_params, serialize
    from retrieval.vector_search import VectorSearcher

    print(f"search over {args.n:,} synthetic {args.dim}-d unit vectors, {args.queries} queries, k={K}")
    print(f"machine: nproc={os.cpu_count()}  python {sys.version.split()[0]}  faiss {faiss.__version__} "
          f"(omp threads {faiss.omp_get_max_threads()}, gpus {faiss.get_num_gpus()})  numpy {np.__version__}")

    started = time.perf_counter()
    model = ClusteredEmbeddings(args.dim, args.seed, args.clusters)
    vectors = model.sample(args.n, args.seed + 1)
    queries = model.sample(args.queries, args.seed + 2)
    ids = np.arange(args.n, dtype=np.int64)
    print(f"data generated in {time.perf_counter() - started:.1f} s")
    started = time.perf_counter()
    truth = brute_force_top_k(vectors, queries, K)
    print(f"exact top-{K} (numpy brute force) in {time.perf_counter() - started:.1f} s")

    scratch = Path(tempfile.mkdtemp(prefix="storyreel-search-", dir=args.tmp))
    try:
        lookup = write_shards(vectors, scratch / "main", args.shard_size)

        factory = choose_factory(args.n, args.dim)
        params = default_search_params(factory)
        print(f"factory: {factory}  default search params: {params}")
        index, build_s, split = build_timed(vectors, ids, factory)
        index_bytes = len(serialize(index))
        print(f"built in {build_s:.1f} s (train {split['train']:.1f} s, add {split['add']:.1f} s)")

        searcher = VectorSearcher(index, lookup, **params)
        qps1, found1 = timed_qps(searcher, queries, 1, args.repeats)
        qps64, found64 = timed_qps(searcher, queries, 64, args.repeats)
        recall = recall_at_k(found1, truth)
        if not np.array_equal(found1, found64):
            print(f"note: batch 64 results differ from batch 1 on {np.mean(np.any(found1 != found64, axis=1)):.1%} "
                  "of queries (ties)")
        # where a query's time goes: the FAISS candidate search alone, the stored-vector lookup alone
        candidates = K * params["rescore_factor"]
        faiss_ms = faiss_ms_per_query(index, queries, candidates, 1)
        faiss_ms64 = faiss_ms_per_query(index, queries, candidates, 64)
        lookup_ms = lookup_ms_per_query(index, lookup, queries, candidates)
        # diagnostic: the same search with the stored vectors in another layout (many shards)
        other = None
        if args.compare_shard_size:
            other = write_shards(vectors, scratch / "compare", args.compare_shard_size)
            other_lookup_ms = lookup_ms_per_query(index, other, queries, candidates)
            other_searcher = VectorSearcher(index, other, **params)
            other_qps1, _ = timed_qps(other_searcher, queries, 1, args.repeats)
            other_qps64, _ = timed_qps(other_searcher, queries, 64, args.repeats)

        exact = None
        if factory != "Flat" and not args.no_exact:
            started = time.perf_counter()
            flat = build_faiss_index(vectors, ids, "Flat")
            flat_build_s = time.perf_counter() - started
            flat_bytes = len(serialize(flat))
            flat_searcher = VectorSearcher(flat, lookup, **default_search_params("Flat"))
            few = queries[: args.exact_queries]
            flat_qps1, flat_found1 = timed_qps(flat_searcher, few, 1, args.repeats)
            many = queries[: args.exact_batch_queries]
            flat_qps64, flat_found64 = timed_qps(flat_searcher, many, 64, args.repeats)
            exact = {
                "build_s": flat_build_s, "bytes": flat_bytes, "qps1": flat_qps1, "qps64": flat_qps64,
                "recall": recall_at_k(flat_found64, truth[: len(many)]),
            }
            del flat, flat_searcher

        sweep = []
        if not args.no_sweep and factory != "Flat":
            for nprobe in (16, 32, 64):
                for rescore in (1, 10, 20, 30):
                    if rescore == 1 and nprobe != params["nprobe"]:
                        continue
                    variant = VectorSearcher(index, lookup, nprobe=nprobe, rescore_factor=rescore)
                    qps, found = timed_qps(variant, queries, 1, args.repeats)
                    f_ms = faiss_ms_per_query(index, queries, K * rescore, 1)
                    other_qps = None
                    if other is not None:
                        variant = VectorSearcher(index, other, nprobe=nprobe, rescore_factor=rescore)
                        other_qps, _ = timed_qps(variant, queries, 1, args.repeats)
                    sweep.append((nprobe, rescore, recall_at_k(found, truth), qps, f_ms, other_qps))
            faiss.extract_index_ivf(index).nprobe = params["nprobe"]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    stored = args.dim * 4

    def layout(size):
        return "one file" if not size or size >= args.n else f"{-(-args.n // size)} shards of {size}"

    print(f"stored vectors: {layout(args.shard_size)}, memory-mapped, read through Library.vectors")
    print()
    header = f"{'':<38}{factory + ' + rescore':>24}{'exact (Flat)':>16}"
    print(header)
    print("-" * len(header))

    def row(label, ours, theirs=""):
        print(f"{label:<38}{ours:>24}{theirs:>16}")

    row("build s (train + add)", f"{build_s:.1f} ({split['train']:.1f} + {split['add']:.1f})",
        f"{exact['build_s']:.1f}" if exact else "-")
    row("index bytes / vector (in RAM)", f"{index_bytes / args.n:.1f}",
        f"{exact['bytes'] / args.n:.1f}" if exact else "-")
    row("stored float32 bytes / vector (disk)", f"{stored} (mmap, re-scoring)", f"{stored} (unused)" if exact else "-")
    row(f"recall@{K}", f"{recall:.4f}",
        f"{exact['recall']:.4f} ({len(many)} q)" if exact else "-")
    row("queries/s, batch 1", f"{qps1:,.0f}",
        f"{exact['qps1']:,.1f} ({args.exact_queries} q)" if exact else "-")
    row("queries/s, batch 64", f"{qps64:,.0f}",
        f"{exact['qps64']:,.1f} ({len(many)} q)" if exact else "-")
    row("ms / query, batch 1", f"{1000 / qps1:.3f}", f"{1000 / exact['qps1']:.1f}" if exact else "-")
    row("  of which FAISS candidate search", f"{faiss_ms:.3f} ({candidates} cand.)", "")
    row("  of which stored-vector lookup", f"{lookup_ms:.3f}", "")
    row("  of which the rest (dot, sort, loop)", f"{1000 / qps1 - faiss_ms - lookup_ms:.3f}", "")
    row("ms / query, batch 64", f"{1000 / qps64:.3f}", f"{1000 / exact['qps64']:.1f}" if exact else "-")
    row("  of which FAISS candidate search", f"{faiss_ms64:.3f}", "")
    print()
    if exact:
        print(f"ratio IVF-PQ qps / exact qps, batch 1:  {qps1 / exact['qps1']:.1f}x")
        print(f"ratio IVF-PQ qps / exact qps, batch 64: {qps64 / exact['qps64']:.1f}x")
        print(f"ratio index bytes IVF-PQ / exact:       {index_bytes / exact['bytes']:.3f}")
    if other is not None:
        print(f"\ndiagnostic, stored vectors in {layout(args.compare_shard_size)} instead "
              f"(an uncompacted index):")
        print(f"  lookup {other_lookup_ms:.3f} ms/query ({layout(args.shard_size)}: {lookup_ms:.3f}); "
              f"queries/s batch 1 {other_qps1:,.0f} ({qps1:,.0f}), batch 64 {other_qps64:,.0f} ({qps64:,.0f})")
    if sweep:
        print(f"\nsweep at batch 1 ({args.queries} queries; rescore_factor 1 = PQ scores alone, no re-scoring;")
        print(" 'faiss ms' = FAISS candidate search alone; 'qps shards' = diagnostic layout "
              f"{layout(args.compare_shard_size)}):")
        print(f"{'nprobe':>7} {'rescore':>8} {'candidates':>11} {'recall@10':>10} {'qps':>9} {'faiss ms':>9} "
              f"{'qps shards':>11}")
        for nprobe, rescore, rec, qps, f_ms, other_qps in sweep:
            mark = "  <- default" if (nprobe, rescore) == (params["nprobe"], params["rescore_factor"]) else ""
            print(f"{nprobe:>7} {rescore:>8} {K * rescore:>11} {rec:>10.4f} {qps:>9,.0f} {f_ms:>9.3f} "
                  f"{other_qps if other_qps is not None else float('nan'):>11,.0f}{mark}")
    met = recall >= GOAL_RECALL and qps1 >= GOAL_QPS
    print(f"\ngoal recall@{K} >= {GOAL_RECALL} at >= {GOAL_QPS:.0f} single queries/s: "
          f"{'met' if met else 'NOT met'} (recall {recall:.4f}, {qps1:,.0f} queries/s at batch 1)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
