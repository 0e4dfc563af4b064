"""``render-story --engine ray``: shots rendered in parallel by Ray actors, one per GPU.

The driver chooses every shot's segment first (in story order, so footage is never shared, exactly as
with the local engine), then hands ``(shot, segment, settings hash)`` jobs to a pool of
:class:`render.shot_renderer.ShotRenderer` actors. Each actor loads the models once and renders shot after shot;
the driver writes each shot's sidecar as soon as its render returns, so an interrupted run resumes with
the shots that finished. Without GPUs the actors share the CPUs (``--workers``, default 1); under
``--deterministic`` each actor runs torch in deterministic mode with the same fixed CPU thread count as the local
engine (:func:`render.shot_renderer.enable_deterministic_torch`), so both engines give the same bits. An input
error in an actor (a character trained on other base weights, models that cannot be loaded: a
:class:`~storyreel.errors.StoryreelError`) stops the run and is raised as itself, so the command exits 2.
"""

from __future__ import annotations

from collections.abc import Callable

from render.shot_renderer import RenderSettings, ShotRenderer, enable_deterministic_torch
from render.shot_sidecar import Segment, ShotSidecar
from storyreel.errors import StoryreelError
from storyreel.ray_runtime import init_ray


def worker_resources(ray, workers: int | None) -> tuple[int, dict]:
    """How many render actors and what each holds: one GPU each when there are GPUs, else a share of the CPUs."""
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    cpus = max(1.0, resources.get("CPU", 1.0))
    if gpus:
        count = min(workers or gpus, gpus)
        return count, {"num_gpus": 1, "num_cpus": 1}
    count = workers or 1
    return count, {"num_gpus": 0, "num_cpus": max(1, int(cpus // count))}


class _RenderActor:
    def __init__(self, settings: RenderSettings, threads: int):
        import torch

        if settings.deterministic:
            enable_deterministic_torch()  # for the actor's life
        elif not torch.cuda.is_available():
            torch.set_num_threads(max(1, threads))
        self.renderer = ShotRenderer(settings)

    def render(self, shot, segment: Segment, settings_hash: str, consistency=None, keyframe=None) -> ShotSidecar:
        return self.renderer.render(shot, segment, settings_hash, consistency, keyframe)


def render_on_ray(settings: RenderSettings, jobs: list[tuple], done: Callable[[object, ShotSidecar, float], None],
                  workers: int | None = None) -> None:
    """Render ``jobs`` (shot, segment, settings hash, retrieval seconds, consistency use or None, keyframe use or
    None); call
    ``done(shot, sidecar, retrieval_s)``
    in the driver as each finishes. A failed shot does not stop the others; the first error is raised at the end."""
    if not jobs:
        return
    ray = init_ray()
    count, resources = worker_resources(ray, workers)
    count = min(count, len(jobs))
    actor_class = ray.remote(**resources)(_RenderActor)
    actors = [actor_class.remote(settings, resources["num_cpus"]) for _ in range(count)]
    pending = list(jobs)
    running = {}  # object ref -> (actor, job)
    errors = []

    def submit(actor):
        if pending:
            job = pending.pop(0)
            shot, segment, settings_hash, _retrieval_s, consistency, keyframe = job
            running[actor.render.remote(shot, segment, settings_hash, consistency, keyframe)] = (actor, job)

    for actor in actors:
        submit(actor)
    try:
        while running:
            ready, _ = ray.wait(list(running), num_returns=1)
            actor, (shot, _segment, _hash, retrieval_s, _consistency, _keyframe) = running.pop(ready[0])
            try:
                sidecar = ray.get(ready[0])
            except Exception as exc:  # noqa: BLE001  (a shot's failure is reported after the others finish)
                cause = getattr(exc, "cause", None)
                if isinstance(cause, StoryreelError):  # bad input: every actor would fail the same way
                    raise cause from None
                errors.append(RuntimeError(f"shot {shot.id!r}: {_cause(exc)}"))
            else:
                done(shot, sidecar, retrieval_s)
            submit(actor)
    finally:
        for actor in actors:
            ray.kill(actor)
    if errors:
        raise errors[0]


def _cause(exc: BaseException) -> str:
    """The worker's own error message, without Ray's traceback wrapper."""
    cause = getattr(exc, "cause", None)
    return str(cause) if cause is not None else str(exc).strip().splitlines()[-1]
