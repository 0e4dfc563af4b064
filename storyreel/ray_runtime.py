"""Starting Ray the same way for every engine (index building, rendering)."""

from __future__ import annotations

import os
import sys


def init_ray():
    """Start (or join) a local Ray runtime with every CPU, no dashboard, and this process's import path on
    the workers (so a checkout that is not installed runs there too); returns the ``ray`` module."""
    import ray

    if not ray.is_initialized():
        paths = os.pathsep.join(p for p in sys.path if p)
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, ignore_reinit_error=True,
                 runtime_env={"env_vars": {"PYTHONPATH": paths}})
    return ray
