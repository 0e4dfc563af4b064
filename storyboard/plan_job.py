"""What one ``plan-story`` run is asked to do: :class:`PlanStoryJob`, built from the flags and checked once.

The command line builds the job from its options (one field per flag, named as click names them), calls
:meth:`PlanStoryJob.validate` and hands the job to the run. Numbers that have a range (``--shots``,
``--timeout``, ``--retries``, ``--backoff``, ``--llm-max-new-tokens``) and choices (``--llm``) are checked
by the command line's click types already; :meth:`~PlanStoryJob.validate` checks what a type cannot: the
storyboard defaults the format allows (``--width`` a multiple of 8, ``--frames`` 1-256, ...) and where
``--out`` may be written. Its errors (:class:`PlanStoryJobError`) name the flag.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from storyreel.errors import OptionError

# Fields of the storyboard's Defaults and the flags that set them.
DEFAULT_FLAGS = {"width": "--width", "height": "--height", "frames": "--frames", "fps": "--fps", "steps": "--steps",
                 "seed": "--seed", "negative_prompt": "--negative-prompt"}


class PlanStoryJobError(OptionError):
    """A ``plan-story`` flag that cannot be used; the message starts with the flag (``--width: ...``)."""


@dataclass
class PlanStoryJob:
    """A ``plan-story`` run: the passage, the output, the story's defaults and the planner's options.

    ``backend`` is ``--llm`` (None: openai when a base URL is configured, else rules); the ``llm_*``,
    ``cache_dir``, ``no_cache``, ``timeout``, ``retries`` and ``backoff`` fields configure the planner
    (:func:`storyboard.planner.make_planner`); ``width`` to ``negative_prompt`` are the storyboard's defaults.
    """

    passage: Path
    out: Path
    backend: str | None = None
    shots: int | None = None
    characters: Path | None = None
    style: str = ""
    title: str | None = None
    width: int = 512
    height: int = 512
    frames: int = 16
    fps: float = 8.0
    steps: int | None = None  # None: the render model preset's (25 for sd15, 4 for sd15-lightning)
    seed: int = 0
    negative_prompt: str | None = None
    llm_base_url: str | None = None
    llm_model: str | None = None
    llm_api_key_env: str | None = None
    llm_model_path: Path | None = None
    llm_max_new_tokens: int = 400
    cache_dir: Path | None = None
    no_cache: bool = False
    timeout: float = 60.0
    retries: int | None = None
    backoff: float = 1.0
    quiet: bool = False

    def validate(self) -> None:
        """Raise :class:`PlanStoryJobError` naming the first flag that cannot be used (nothing is read or written)."""
        self.story_defaults()
        out = Path(self.out)
        if out.exists() and out.is_dir():
            raise PlanStoryJobError("--out", f"{out}: is a folder; give the storyboard file to write", " ")
        passage = Path(self.passage)
        if passage.exists() and out.resolve() == passage.resolve():
            raise PlanStoryJobError("--out", f"{out}: would overwrite a passage; give a .json storyboard file", " ")

    def story_defaults(self):
        """The storyboard's :class:`~storyboard.format.Defaults` from the flags; :class:`PlanStoryJobError`
        names the flag of a value the format does not allow."""
        from pydantic import ValidationError

        from storyboard.errors import problems_from_validation_error
        from storyboard.format import DEFAULT_NEGATIVE_PROMPT, Defaults

        negative = DEFAULT_NEGATIVE_PROMPT if self.negative_prompt is None else self.negative_prompt
        try:
            optional = {"steps": self.steps} if self.steps is not None else {}  # unset: the preset decides
            return Defaults(width=self.width, height=self.height, frames=self.frames, fps=self.fps, seed=self.seed,
                            negative_prompt=negative, **optional)
        except ValidationError as exc:
            problem = problems_from_validation_error(exc, Defaults.model_json_schema())[0]
            raise PlanStoryJobError(DEFAULT_FLAGS.get(problem.path, problem.path), problem.message) from None

    def planner_options(self) -> dict:
        """The keyword arguments of :func:`storyboard.planner.make_planner` (besides the backend)."""
        return {"base_url": self.llm_base_url, "model": self.llm_model, "api_key_env": self.llm_api_key_env,
                "timeout": self.timeout, "retries": self.retries, "backoff": self.backoff,
                "model_path": self.llm_model_path, "max_new_tokens": self.llm_max_new_tokens,
                "cache_dir": self.answer_cache()}

    def answer_cache(self) -> str | os.PathLike | None:
        """The openai backend's answer cache folder (None with ``no_cache``)."""
        if self.no_cache:
            return None
        if self.cache_dir is not None:
            return self.cache_dir
        from storyboard.openai_planner import default_cache_dir

        return default_cache_dir()
