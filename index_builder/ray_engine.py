"""The Ray engine: the local engine's reader → decode → embed → writer stages as a Ray Data pipeline.

* reader: ``from_items`` of the pending jobs, each with its position in ``pending``;
* decode: ``map_batches`` with CPU actors, each running the local engine's ``decode_isolated`` on a
  batch of files, so a file is still decoded in a separate process, with a timeout and the PyAV retry
  (one process per batch, not per file: starting one costs about as much as decoding a short clip);
* embed: ``map_batches`` with one actor per GPU (one CPU actor without GPUs) holding the CLIP model,
  rebuilt from the driver's model spec; it drops the frames once they are embedded;
* writer: this process iterates the output and yields results in ``pending`` order through a reorder
  buffer, so segment ids are the same as with the local engine however Ray schedules the work.

Rows carry one pickled object per stage (the job, then ``(decoded, error)``, then
``(decoded, error, vectors)``) plus the integer position: Ray Data moves opaque bytes without trying to
convert dataclasses, ``None`` or N-d arrays to Arrow.
"""

from __future__ import annotations

import pickle
from typing import Iterable, Iterator

import numpy as np

from index_builder.decode_worker import DecodedVideo, DecodeSettings
from index_builder.sources import VideoJob
from storyreel.ray_runtime import init_ray

DECODE_BATCH = 8  # files per decode call at most
Result = tuple[VideoJob, DecodedVideo | None, str | None, np.ndarray | None]


def _blob(*values) -> np.ndarray:
    """A column of pickled objects (Ray Data stores it as an Arrow binary column)."""
    return np.array([pickle.dumps(value, protocol=5) for value in values], dtype=object)


class _Decode:
    """Decode stage: keeps no state; yields each file's result as soon as it is decoded."""

    def __init__(self, settings: DecodeSettings, timeout_s: float):
        self.settings, self.timeout_s = settings, timeout_s

    def __call__(self, batch: dict) -> Iterator[dict]:
        from index_builder.local_engine import decode_isolated

        jobs = [pickle.loads(blob) for blob in batch["job"]]
        results = decode_isolated(jobs, self.settings, workers=1, timeout_s=self.timeout_s)
        for position, (_, video, error) in zip(batch["position"], results):  # one output per file, when ready
            yield {"position": np.array([position]), "decoded": _blob((video, error))}


class _Embed:
    """Embed stage: the CLIP model, rebuilt in the actor from its spec and checked by its fingerprint."""

    def __init__(self, spec: str, fingerprint: str, batch_size: int):
        from retrieval.clip_models import load_clip_model

        self.embedder, self.batch_size = load_clip_model(spec), batch_size
        if self.embedder.fingerprint != fingerprint:
            raise RuntimeError(f"model {spec!r} loaded in a Ray actor has other weights than in the driver")

    def __call__(self, batch: dict) -> dict:
        out = []
        for blob in batch["decoded"]:
            video, error = pickle.loads(blob)
            vectors = None
            if video is not None:
                vectors = self.embedder.encode_segments(video.frames, self.batch_size)
                video.frames = None
            out.append((video, error, vectors))
        return {"position": np.asarray(batch["position"]), "result": _blob(*out)}


def _init_ray():
    ray = init_ray()
    ray.data.DataContext.get_current().enable_progress_bars = False
    return ray


def _plan(ray, workers: int) -> tuple[dict, dict]:
    """Resources of the decode and embed stages, within the CPUs the cluster has free."""
    available = ray.available_resources()
    cpus = available.get("CPU") or ray.cluster_resources().get("CPU", 1.0)
    gpus = int(available.get("GPU", 0))
    embed_actors = max(gpus, 1)
    embed_cpus = min(1.0, cpus / (2 * embed_actors))  # at most half the CPUs go to the embed actors
    decode_actors = max(1, workers)
    decode_cpus = min(1.0, (cpus - embed_actors * embed_cpus) / decode_actors)
    pool = ray.data.ActorPoolStrategy
    return ({"compute": pool(size=decode_actors), "num_cpus": decode_cpus},
            {"compute": pool(size=embed_actors), "num_cpus": embed_cpus, "num_gpus": 1 if gpus else 0})


def run_ray(pending: list[VideoJob], decode_settings: DecodeSettings, embedder, options) -> Iterable[Result]:
    """Yield ``(job, decoded, error, vectors)`` for every job of ``pending``, in that order."""
    if not pending:
        return iter(())
    ray = _init_ray()
    decode_resources, embed_resources = _plan(ray, options.workers)
    record = embedder.record()
    decode_batch = max(1, min(DECODE_BATCH, len(pending) // max(1, options.workers)))  # keep every actor busy
    items = [{"position": i, "job": pickle.dumps(job, protocol=5)} for i, job in enumerate(pending)]
    dataset = (
        ray.data.from_items(items)
        .map_batches(_Decode, fn_constructor_kwargs={"settings": decode_settings, "timeout_s": options.timeout_s},
                     batch_size=decode_batch, batch_format="numpy", **decode_resources)
        .map_batches(_Embed, fn_constructor_kwargs={"spec": record["spec"], "fingerprint": record["fingerprint"],
                                                    "batch_size": options.batch_size},
                     batch_size=1, batch_format="numpy", **embed_resources)
    )
    return _in_order(pending, dataset.iter_rows())


def _in_order(pending: list[VideoJob], rows: Iterator[dict]) -> Iterator[Result]:
    waiting: dict[int, tuple] = {}
    next_position = 0
    for row in rows:
        waiting[int(row["position"])] = pickle.loads(row["result"])
        while next_position in waiting:
            video, error, vectors = waiting.pop(next_position)
            yield pending[next_position], video, error, vectors
            next_position += 1
    if next_position != len(pending):
        raise RuntimeError(f"the Ray pipeline gave no result for job {next_position} of {len(pending)}")
