"""Build (or resume, or update) an index: sources → decode → embed → store → FAISS + manifest."""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from index_builder.decode_worker import DecodeSettings
from index_builder.faiss_index import build_faiss_index, choose_factory, serialize, tune_search_params
from index_builder.kinetics import kinetics_jobs
from index_builder.segmenter import SegmentSettings
from index_builder.sources import SourceError, SourceReport, VideoJob, read_jsonl_manifest, scan_folder
from index_builder.store import IndexStore
from index_builder.tuning_queries import MOTION_QUERIES
from retrieval.index_format import ERRORS_FILE, FAISS_FILE, FORMAT_VERSION, MANIFEST_FILE, IndexFormatError, Manifest
from storyreel import atomic_files
from storyreel.errors import StoryreelError


class BuildError(StoryreelError, RuntimeError):
    """A build that cannot start or finish; the message says why and what to do."""


@dataclass
class BuildOptions:
    out: Path
    paths: list[Path] = field(default_factory=list)
    kinetics_csv: Path | None = None
    manifest: Path | None = None
    models: str = "ViT-B-32:laion2b_s34b_b79k"
    engine: str = "local"
    workers: int = 2
    update: bool = False
    segments: SegmentSettings = field(default_factory=SegmentSettings)
    timeout_s: float = 300.0
    batch_size: int = 256
    shard_size: int = 8192
    flush_interval_s: float = 30.0
    factory: str | None = None
    progress: bool = True


@dataclass
class BuildSummary:
    out: Path
    counts: dict
    missing_rows: int
    factory: str
    seconds: float
    processed_now: int

    def describe(self) -> str:
        c = self.counts
        lines = [
            f"index: {self.out}",
            f"clips: {c['videos']} ({c['videos_ok']} ok, {c['videos_partial']} partial, {c['videos_failed']} failed; "
            f"{self.processed_now} processed in this run)",
            f"segments: {c['segments']}  factory: {self.factory}",
            f"time: {self.seconds:.1f} s",
        ]
        if c["videos_failed"] or c["videos_partial"] or self.missing_rows:
            lines.append(f"problems: see {self.out / ERRORS_FILE}"
                         + (f" ({self.missing_rows} source rows without a file)" if self.missing_rows else ""))
        return "\n".join(lines)


def collect_jobs(options: BuildOptions, report: SourceReport) -> list[VideoJob]:
    jobs: list[VideoJob] = []
    if options.kinetics_csv is not None:
        if len(options.paths) != 1:
            raise SourceError("with --kinetics-csv give exactly one PATH: the root folder of the downloaded videos")
        jobs += kinetics_jobs(options.kinetics_csv, options.paths[0], report)
    else:
        for path in options.paths:
            jobs += scan_folder(path, report)
    if options.manifest is not None:
        jobs += read_jsonl_manifest(options.manifest, report)
    unique, seen = [], set()
    for job in jobs:
        if job.key not in seen:
            seen.add(job.key)
            unique.append(job)
    return unique


def _settings_record(options: BuildOptions, model_record: dict) -> dict:
    return {"model": model_record, "segments": asdict(options.segments), "format_version": FORMAT_VERSION}


def _check_settings(stored: dict, current: dict, out: Path) -> None:
    if stored == current:
        return
    differences = []
    for section in sorted(set(stored) | set(current)):
        a, b = stored.get(section), current.get(section)
        if isinstance(a, dict) and isinstance(b, dict):
            differences += [f"{section}.{k}: index has {a.get(k)!r}, now {b.get(k)!r}"
                            for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        elif a != b:
            differences.append(f"{section}: index has {a!r}, now {b!r}")
    raise BuildError(
        f"{out} was built with other settings ({'; '.join(differences)}). "
        "Rerun with the same settings to resume or update it, or choose another --out."
    )


def build_index(options: BuildOptions, decode_function=None) -> BuildSummary:
    started = time.monotonic()
    out = Path(options.out)
    report = SourceReport()
    jobs = collect_jobs(options, report)
    for problem in report.problems:
        if problem["reason"].startswith("no videos found"):
            print(f"warning: {problem['source']}: {problem['reason']}", file=sys.stderr)
    if not jobs:
        raise SourceError("no videos to index: " + "; ".join(
            f"{p['source']}: {p['reason']}" for p in report.problems[:5]) if report.problems else "no sources given")

    from retrieval.clip_models import load_clip_model  # torch is imported only once inputs are valid

    embedder = load_clip_model(options.models)
    settings = _settings_record(options, embedder.record())
    manifest_exists = (out / MANIFEST_FILE).is_file()
    store = IndexStore(out, shard_size=options.shard_size, flush_interval_s=options.flush_interval_s)
    try:
        stored = store.build_info()
        if stored is None:
            store.set_build_info(settings)
        else:
            _check_settings(stored, settings, out)
        done = store.done_keys()
        pending = [job for job in jobs if job.key not in done]
        if manifest_exists and pending and not options.update:
            raise BuildError(
                f"{out} is a finished index and {len(pending)} new video(s) were found; "
                "add --update to add them (existing segments are kept, not recomputed)"
            )
        decode_settings = DecodeSettings(segments=options.segments, image_size=embedder.image_size)
        if pending:
            _run_engine(options, pending, decode_settings, embedder, store, decode_function)
        store.flush()
        if pending or not _index_is_current(out, options.factory):
            factory = _finalize(options, store, embedder, report, settings)
        else:  # nothing new: keep the index as it is (an IVF rebuild and tuning can take minutes)
            atomic_files.write_jsonl(out / ERRORS_FILE, store.error_rows() + report.problems)
            factory = Manifest.read(out).factory
        return BuildSummary(out, store.counts(), len([p for p in report.problems if "line" in p]), factory,
                            time.monotonic() - started, len(pending))
    finally:
        store.close()


def _engine_results(options, pending, decode_settings, embedder, decode_function):
    """``(job, decoded, error, vectors)`` for every pending job, in order, from the chosen engine."""
    if options.engine == "ray":
        from index_builder.ray_engine import run_ray

        return run_ray(pending, decode_settings, embedder, options)
    if options.engine == "local":
        from index_builder.local_engine import decode_isolated

        kwargs = {"decode_function": decode_function} if decode_function else {}
        decoded = decode_isolated(pending, decode_settings, options.workers, options.timeout_s, **kwargs)
        return ((job, video, error,
                 None if video is None else embedder.encode_segments(video.frames, options.batch_size))
                for job, video, error in decoded)
    raise BuildError(f"--engine must be 'local' or 'ray', not {options.engine!r}")


def _run_engine(options, pending, decode_settings, embedder, store, decode_function) -> None:
    bar = tqdm(total=len(pending), unit="clip", desc="indexing", disable=not options.progress, dynamic_ncols=True)
    cores = (_cores_shared_with_workers(embedder, options.workers) if options.engine == "local"
             else contextlib.nullcontext())
    segments = errors = 0
    with cores, bar:
        results = _engine_results(options, pending, decode_settings, embedder, decode_function)
        for job, decoded, error, vectors in results:
            if decoded is None:
                errors += 1
                store.add_error(job, error)
            else:
                segments += decoded.num_segments
                errors += bool(decoded.warning)
                store.add_video(decoded, vectors)
            bar.update(1)
            bar.set_postfix(segments=segments, errors=errors, refresh=False)


def _index_is_current(out: Path, factory: str | None) -> bool:
    """Whether ``out`` holds a finished index whose FAISS file matches its manifest (and the factory asked for)."""
    try:
        manifest = Manifest.read(out)
        data = (out / FAISS_FILE).read_bytes()
    except (IndexFormatError, OSError):
        return False
    return hashlib.sha256(data).hexdigest() == manifest.faiss_sha256 and factory in (None, manifest.factory)


@contextlib.contextmanager
def _cores_shared_with_workers(embedder, workers: int):
    """On CPU, embed with the cores the decode workers leave free: oversubscribed cores slow both."""
    import torch

    before = torch.get_num_threads()
    if embedder.device.type == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 1) - workers))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _finalize(options, store: IndexStore, embedder, report: SourceReport, settings: dict) -> str:
    out = store.out_dir
    atomic_files.write_jsonl(out / ERRORS_FILE, store.error_rows() + report.problems)
    ids, vectors = store.load_vectors()
    if len(ids) == 0:
        raise BuildError(f"no segments could be indexed: every video failed (reasons in {out / ERRORS_FILE})")
    store.compact(ids, vectors)
    factory = options.factory or choose_factory(len(ids), vectors.shape[1])
    index = build_faiss_index(vectors, ids, factory)
    search_params = tune_search_params(index, vectors, embedder.encode_texts(MOTION_QUERIES))
    data = serialize(index)
    atomic_files.write_bytes(out / FAISS_FILE, data)
    counts = store.counts()
    counts["source_problems"] = len(report.problems)
    atomic_files.write_json(out / MANIFEST_FILE, {
        "format_version": FORMAT_VERSION,
        "model": settings["model"],
        "dim": int(vectors.shape[1]),
        "frames_per_segment": options.segments.frames_per_segment,
        "window_s": options.segments.window_s,
        "stride_s": options.segments.stride_s,
        "segment_settings": settings["segments"],
        "image_size": embedder.image_size,
        "factory": factory,
        "search": search_params,
        "counts": counts,
        "faiss_sha256": hashlib.sha256(data).hexdigest(),
    })
    return factory
