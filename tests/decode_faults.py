"""Decode functions that misbehave on purpose, run inside the build's isolated worker processes."""

from __future__ import annotations

import os
import signal
import time

from index_builder.decode_worker import decode_video


def crash_or_hang(job, settings):
    """Segfault on files named ``crash*``, hang on files named ``hang*``, else decode normally."""
    name = os.path.basename(job.path)
    if name.startswith("crash"):
        os.kill(os.getpid(), signal.SIGSEGV)
    if name.startswith("hang"):
        time.sleep(3600)
    return decode_video(job, settings)
