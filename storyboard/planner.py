"""Story planning: prose or an incomplete storyboard → shots with motion queries, captions and analyses.

Two entry points:

* :func:`plan_passage` (``plan-story``): a prose passage → a new :class:`~storyboard.Storyboard` and a
  report. The passage is split into events (:mod:`storyboard.passage_split`), the characters come from a
  characters file or are found in the text (:mod:`storyboard.story_characters`), and every event
  becomes a shot planned by the chosen backend.
* :func:`complete_storyboard` (``render-story``): fills in the shots of a storyboard that lack a motion
  query or a caption, keeping every value a shot already has::

      from storyboard.planner import complete_storyboard

      story, records = complete_storyboard(story)                 # rules, or the endpoint configured
      story, records = complete_storyboard(story, "openai", base_url="http://127.0.0.1:8000/v1",
                                           model="qwen2.5-7b-instruct", cache_dir="cache/llm")
      for record in records:   # {"shot", "backend", "fallback", "wrote", "attempts", "cached", "problems"}
          print(record["shot"], record["backend"], record["fallback"], record["wrote"])

Backends (:func:`make_planner`): ``rules`` (:mod:`storyboard.rules_planner`, deterministic, offline),
``openai`` (:mod:`storyboard.openai_planner`, any OpenAI-compatible endpoint) and ``local``
(:mod:`storyboard.local_planner`, a transformers chat model in a folder). With no backend named, ``openai``
is used when a base URL is configured (option, ``STORYREEL_LLM_BASE_URL`` or ``OPENAI_BASE_URL``), else
``rules``. A shot the LLM backend cannot plan (every answer invalid, off-topic, or no answer) falls back
to the rules planner, and its record says why.
"""

from __future__ import annotations

import os
from typing import Any, Callable

from storyboard.format import Defaults, Shot, Storyboard
from storyboard.loading import parse_storyboard
from storyboard.openai_planner import EndpointConfig, OpenAIPlanner, PlannerSetupError, default_cache_dir
from storyboard.passage_split import limit_events, split_events
from storyboard.rules_planner import Reading, RulesPlanner, plan_shot, read_shot
from storyboard.shot_plan import ShotAnalysis, ShotPlan, ShotRequest, plan_characters, plan_problems
from storyboard.story_characters import CastMember, cast_from_characters, detect_cast

BACKENDS = ("rules", "openai", "local")
ENV_BASE_URL = ("STORYREEL_LLM_BASE_URL", "OPENAI_BASE_URL")
ENV_MODEL = "STORYREEL_LLM_MODEL"
ENV_API_KEY = ("STORYREEL_LLM_API_KEY", "OPENAI_API_KEY")
ENV_MODEL_PATH = "STORYREEL_LLM_MODEL_PATH"
_UNSET: Any = object()

__all__ = ["BACKENDS", "PlannerSetupError", "choose_backend", "complete_storyboard", "configured_base_url",
           "make_planner", "plan_passage"]


def configured_base_url(base_url: str | None = None) -> str | None:
    """The endpoint's base URL: ``base_url``, else ``STORYREEL_LLM_BASE_URL``, else ``OPENAI_BASE_URL``."""
    if base_url:
        return base_url
    for name in ENV_BASE_URL:
        if os.environ.get(name):
            return os.environ[name]
    return None


def choose_backend(backend: str | None = None, base_url: str | None = None) -> str:
    """``backend`` checked, or the default: ``openai`` when a base URL is configured, else ``rules``."""
    if backend is None:
        return "openai" if configured_base_url(base_url) else "rules"
    if backend not in BACKENDS:
        raise PlannerSetupError(f"unknown planner backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    return backend


def _api_key(api_key: str | None, api_key_env: str | None) -> str | None:
    if api_key:
        return api_key
    if api_key_env:
        value = os.environ.get(api_key_env)
        if not value:
            raise PlannerSetupError(f"environment variable {api_key_env} (the API key) is not set")
        return value
    for name in ENV_API_KEY:
        if os.environ.get(name):
            return os.environ[name]
    return None


def make_planner(backend: str | None = None, *, base_url: str | None = None, model: str | None = None,
                 api_key: str | None = None, api_key_env: str | None = None, timeout: float = 60.0,
                 retries: int | None = None, backoff: float = 1.0, max_backoff: float = 30.0,
                 temperature: float = 0.0, cache_dir: str | os.PathLike | None = _UNSET, give_up_after: int = 2,
                 model_path: str | os.PathLike | None = None, max_new_tokens: int = 400, device: str | None = None,
                 sleep: Callable[[float], None] | None = None):
    """A planner backend (see the module's description); :class:`PlannerSetupError` for bad options.

    ``openai``: ``base_url``, ``model`` (or ``STORYREEL_LLM_MODEL``), the key (``api_key``, the variable
    named by ``api_key_env``, ``STORYREEL_LLM_API_KEY`` or ``OPENAI_API_KEY``; none for servers that need
    none), ``timeout`` seconds per request, ``retries`` (default 3) with ``backoff`` doubling up to
    ``max_backoff``, ``cache_dir`` (None: no cache). ``local``: ``model_path`` (or
    ``STORYREEL_LLM_MODEL_PATH``), ``retries`` (default 1), ``max_new_tokens``, ``device``.
    """
    name = choose_backend(backend, base_url)
    if name == "rules":
        return RulesPlanner()
    if name == "openai":
        url = configured_base_url(base_url)
        if not url:
            raise PlannerSetupError("the openai backend needs a base URL (give --llm-base-url or set "
                                    "STORYREEL_LLM_BASE_URL)")
        config = EndpointConfig(base_url=url, model=model or os.environ.get(ENV_MODEL, ""),
                                api_key=_api_key(api_key, api_key_env), timeout=timeout,
                                retries=3 if retries is None else retries, backoff=backoff, max_backoff=max_backoff,
                                temperature=temperature,
                                cache_dir=default_cache_dir() if cache_dir is _UNSET else cache_dir,
                                give_up_after=give_up_after)
        return OpenAIPlanner(config, **({"sleep": sleep} if sleep is not None else {}))
    from storyboard.local_planner import LocalPlanner

    path = model_path or os.environ.get(ENV_MODEL_PATH)
    if not path:
        raise PlannerSetupError("the local backend needs a model folder (give --llm-model-path or set "
                                f"{ENV_MODEL_PATH})")
    return LocalPlanner(path, retries=1 if retries is None else retries, max_new_tokens=max_new_tokens,
                        device=device)


# -- planning shots --------------------------------------------------------------------------------------


class _StoryWalk:
    """What carries from shot to shot: the last subject (who "he" is), the setting, the previous text."""

    def __init__(self):
        self.last_subject: str | None = None
        self.setting: str | None = None
        self.previous_text: str | None = None

    def read(self, text: str, cast: list[CastMember]) -> Reading:
        previous = next((m for m in cast if m.name == self.last_subject), None)
        return read_shot(text, cast, previous, self.setting)

    def request(self, shot_id: str, text: str, cast: list[CastMember], required: tuple[str, ...], style: str,
                negative_prompt: str) -> ShotRequest:
        return ShotRequest(shot_id=shot_id, text=text, cast=tuple(cast), required=required, style=style,
                           negative_prompt=negative_prompt, previous_text=self.previous_text, setting=self.setting,
                           state={"last_subject": self.last_subject} if self.last_subject else {})

    def advance(self, text: str, reading: Reading, plan: ShotPlan, request: ShotRequest) -> None:
        names = plan_characters(plan, request)
        if reading.subject.member is not None and reading.subject.member.name in names:
            self.last_subject = reading.subject.member.name
        elif names:
            self.last_subject = names[0]
        if reading.setting_from_text:
            self.setting = reading.setting
        self.previous_text = text


def _plan_one(planner, request: ShotRequest) -> tuple[ShotPlan, dict]:
    """A plan for one request from ``planner``, falling back to the rules; and its record."""
    record: dict[str, Any] = {"shot": request.shot_id, "backend": "rules", "fallback": None, "attempts": 0,
                              "cached": False, "problems": []}
    if planner.name != "rules":
        outcome = planner.plan(request)
        record.update(attempts=outcome.attempts, cached=outcome.cached, problems=list(outcome.problems))
        if outcome.plan is not None:
            record["backend"] = planner.name
            return outcome.plan, record
        record["fallback"] = f"{planner.name}: {outcome.error}"
    plan, _ = plan_shot(request)
    problems = plan_problems(plan, request)
    if problems:                                    # a gap in the rules' tables; the shot is still usable
        record["problems"].append("rules: " + "; ".join(problems))
    return plan, record


def plan_passage(text: str, *, title: str | None = None, cast: list[CastMember] | None = None, style: str = "",
                 shots: int | None = None, defaults: Defaults | None = None, backend: str | None = None,
                 planner=None, **backend_options) -> tuple[Storyboard, dict]:
    """A storyboard planned from prose, and the plan report (per shot: backend, attempts, fallback reason,
    cache hits). ``cast`` defaults to the characters found in the text; ``shots`` caps the shot count;
    ``planner`` (from :func:`make_planner`) overrides ``backend`` and ``backend_options``. The storyboard
    is validated like a file (:class:`~storyboard.StoryboardError`); it has no source, so relative paths
    in ``cast`` are relative to the current directory until ``attach_source`` says otherwise."""
    defaults = defaults or Defaults()
    events = limit_events(split_events(text), shots)
    if not events:
        raise ValueError("the passage has no sentences to plan")
    found = cast is None
    cast = list(detect_cast(text) if cast is None else cast)
    planner = planner or make_planner(backend, **backend_options)
    walk = _StoryWalk()
    story_shots: list[Shot] = []
    records: list[dict] = []
    for number, event in enumerate(events, start=1):
        reading = walk.read(event, cast)
        keyword = reading.verb.lemma if reading.verb is not None else "still"
        shot_id = f"{number:02d}-{keyword}"
        request = walk.request(shot_id, event, cast, reading.mentioned, style, defaults.negative_prompt)
        plan, record = _plan_one(planner, request)
        walk.advance(event, reading, plan, request)
        story_shots.append(Shot(id=shot_id, text=event, characters=plan_characters(plan, request),
                                motion_query=plan.motion_query, caption=plan.caption,
                                negative_prompt=plan.negative_prompt, analysis=plan.analysis_text()))
        record["text"] = event
        record["wrote"] = {"motion_query": plan.motion_query, "caption": plan.caption,
                           "negative_prompt": plan.negative_prompt}
        records.append(record)
    summary = "; ".join(f"{m.name} ({m.token} {m.class_word}, moves like {m.body})" for m in cast) or "none"
    analysis = (f"Planned by plan-story with the {planner.name} planner: {len(events)} shots. Characters "
                f"({'found in the text' if found else 'from the characters file'}): {summary}.")
    data = {"title": title or "Untitled story", "style": style, "analysis": analysis,
            "defaults": defaults.model_dump(mode="json"),
            "characters": {m.name: m.character().model_dump(mode="json", exclude_none=True) for m in cast},
            "shots": [shot.model_dump(mode="json", exclude_none=True) for shot in story_shots]}
    story = parse_storyboard(data)             # StoryboardError naming the field, should a plan not fit
    report = {"planner": planner.describe(), "shots": records, "counts": _counts(records, planner),
              "characters": [{"name": m.name, "token": m.token, "class_word": m.class_word, "body": m.body}
                             for m in cast], "characters_found_in_text": found}
    return story, report


def _counts(records: list[dict], planner) -> dict:
    by_backend: dict[str, int] = {}
    for record in records:
        by_backend[record["backend"]] = by_backend.get(record["backend"], 0) + 1
    return {"shots": len(records), "by_backend": by_backend,
            "fallbacks": sum(1 for r in records if r["fallback"]),
            "cache_hits": sum(1 for r in records if r["cached"]),
            "requests": sum(r["attempts"] for r in records)}


def complete_storyboard(story: Storyboard, backend: str | None = None, **backend_options
                        ) -> tuple[Storyboard, list[dict]]:
    """A copy of ``story`` in which every shot that lacks a motion query or a caption has the planner's,
    and one record per planned shot.

    Values a shot already has are kept; ``negative_prompt`` and ``analysis`` are filled only where absent.
    A planned caption uses only the tokens of the shot's own ``characters`` and includes all of them.
    ``backend`` and ``backend_options`` are those of :func:`make_planner`, plus ``bodies``
    (character name → stand-in body, such as ``{"hare": "a dog"}``; default: from the name or class word)
    and ``planner`` (a backend already made by :func:`make_planner`, to share its request count and cache).
    Records are ``{"shot", "backend", "fallback", "wrote", "attempts", "cached", "problems"}``: the backend
    that wrote the values, why the LLM backend was not used (None when it was, or for rules), and the
    fields written. A storyboard that needs nothing is returned as it is (the same object), with no
    records, and no backend is set up or asked. The rules backend is deterministic.
    Raises :class:`PlannerSetupError` for bad backend options.
    """
    bodies = backend_options.pop("bodies", None)
    planner = backend_options.pop("planner", None)
    missing = [i for i, shot in enumerate(story.shots) if shot.motion_query is None or shot.caption is None]
    if not missing:
        return story, []
    planner = planner or make_planner(backend, **backend_options)
    cast = cast_from_characters(story.characters, bodies=bodies)
    by_name = {m.name: m for m in cast}
    walk = _StoryWalk()
    data = story.model_dump(mode="json", exclude_none=True)
    records: list[dict] = []
    for i, shot in enumerate(story.shots):
        shot_cast = [by_name[name] for name in shot.characters if name in by_name]
        reading = walk.read(shot.text, shot_cast)
        request = walk.request(shot.id, shot.text, shot_cast, tuple(m.name for m in shot_cast), story.style,
                               story.defaults.negative_prompt)
        if i not in missing:
            walk.advance(shot.text, reading, _as_plan(shot, reading), request)
            continue
        plan, record = _plan_one(planner, request)
        walk.advance(shot.text, reading, plan, request)
        values = {"motion_query": plan.motion_query, "caption": plan.caption,
                  "negative_prompt": plan.negative_prompt, "analysis": plan.analysis_text()}
        wrote = {field: value for field, value in values.items() if getattr(shot, field) is None}
        data["shots"][i].update(wrote)
        record["wrote"] = wrote
        records.append({key: record[key] for key in ("shot", "backend", "fallback", "wrote", "attempts", "cached",
                                                     "problems")})
    completed = parse_storyboard(data, source=story.source, base_dir=story.base_dir)
    return completed, records


def _as_plan(shot: Shot, reading: Reading) -> ShotPlan:
    """A complete shot as a plan, only so that the walk learns who acts in it."""
    return ShotPlan(analysis=ShotAnalysis(character="", action="", setting=""), motion_query=shot.motion_query or "",
                    caption=shot.caption or "", negative_prompt=shot.negative_prompt or "")
