"""The default engine: decode in isolated worker processes, embed and write in this process.

Each file is decoded by a pebble worker process with a timeout, so a decoder that segfaults or hangs
costs that file alone (a file that broke a decord worker is tried once more with PyAV). Results are
taken in source order from a bounded window of in-flight files, so workers keep decoding while this
process embeds, and ids come out the same however the workers are scheduled.
"""

from __future__ import annotations

import multiprocessing
from collections import deque
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import replace
from typing import Callable, Iterable

from pebble import ProcessExpired, ProcessPool

from index_builder.decode_worker import DecodedVideo, DecodeSettings, decode_video
from index_builder.sources import VideoJob
from retrieval.clip_reader import VideoDecodeError

DecodeFunction = Callable[[VideoJob, DecodeSettings], DecodedVideo]


def describe_failure(exc: BaseException, timeout_s: float) -> str:
    if isinstance(exc, FutureTimeout):
        return f"decoding took longer than {timeout_s:g} s; the worker was stopped"
    if isinstance(exc, ProcessExpired):
        return f"the decoder crashed (worker exit code {exc.exitcode})"
    if isinstance(exc, VideoDecodeError):
        return exc.reason
    return f"{type(exc).__name__}: {exc}"


def decode_isolated(
    jobs: Iterable[VideoJob],
    settings: DecodeSettings,
    workers: int,
    timeout_s: float,
    decode_function: DecodeFunction = decode_video,
) -> Iterable[tuple[VideoJob, DecodedVideo | None, str | None]]:
    """Yield ``(job, decoded, error)`` for every job, in the order given."""
    context = multiprocessing.get_context("spawn")
    with ProcessPool(max_workers=workers, context=context) as pool:

        def schedule(job: VideoJob, backend: str):
            return pool.schedule(decode_function, args=(job, replace(settings, backend=backend)), timeout=timeout_s)

        pending = iter(jobs)
        window: deque = deque()

        def refill():
            while len(window) < max(2, 3 * workers):
                job = next(pending, None)
                if job is None:
                    return
                window.append((job, schedule(job, settings.backend)))

        refill()
        while window:
            job, future = window.popleft()
            try:
                decoded, error = future.result(), None
            except (FutureTimeout, ProcessExpired) as exc:
                decoded, error = None, describe_failure(exc, timeout_s)
                if settings.backend == "auto":  # decord may be the culprit: one more try with PyAV alone
                    try:
                        decoded, error = schedule(job, "pyav").result(), None
                    except Exception as retry_exc:  # noqa: BLE001 (any failure costs this file alone)
                        error = f"{error}; with PyAV: {describe_failure(retry_exc, timeout_s)}"
            except Exception as exc:  # noqa: BLE001 (any failure costs this file alone)
                decoded, error = None, describe_failure(exc, timeout_s)
            refill()
            yield job, decoded, error
