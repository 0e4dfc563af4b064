"""One planned shot: what a planner is asked (:class:`ShotRequest`) and what it must answer (:class:`ShotPlan`).

A plan dissects the shot step by step (``analysis``: character, action, setting) and writes:

* ``motion_query``: the movement only, as real footage would show it, with a stand-in body for every
  character (``a dog running across a field``): no names, tokens, fantasy beings or weighting syntax;
* ``caption``: the render prompt in compel weighting syntax with the characters' tokens
  (``(<hare> rabbit)1.3 sprinting far ahead, in a (sunny meadow)1.1, watercolour``);
* ``negative_prompt``.

LLM answers are untrusted: :func:`validate_plan` parses and checks one (schema, lengths, control
characters, compel weights, tokens, off-topic answers) and raises :class:`PlanRejected` with the reason;
nothing in an answer is executed or used as a path. :func:`shot_plan_json_schema` is the JSON Schema sent
to an endpoint for structured output.
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Any, Mapping

from pydantic import BaseModel, ConfigDict, ValidationError

from storyboard.caption_weights import caption_problems
from storyboard.errors import problems_from_validation_error
from storyboard.format import DEFAULT_NEGATIVE_PROMPT
from storyboard.loading import strict_json_loads
from storyboard.motion_lexicon import FANTASY, STOP_WORDS
from storyboard.story_characters import CastMember
from storyboard.verb_phrases import word_stems

MAX_ANSWER_CHARS = 20_000
MAX_QUERY_CHARS = 120
MAX_QUERY_WORDS = 16
MAX_CAPTION_CHARS = 400
MAX_NEGATIVE_CHARS = 300
MAX_ANALYSIS_CHARS = 300
_TOKEN_IN_TEXT = re.compile(r"<[^\s<>]*>")


class PlanRejected(ValueError):
    """A planner's answer that cannot be used; the message is the reason (recorded in the plan report)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, use_attribute_docstrings=True)


class ShotAnalysis(_Strict):
    """The planner's step-by-step dissection of the shot."""

    character: str
    """Who moves in the shot, and the real body that moves like them."""
    action: str
    """The one movement the shot shows."""
    setting: str
    """Where the shot happens."""


class ShotPlan(_Strict):
    """What a planner writes for one shot."""

    analysis: ShotAnalysis
    motion_query: str
    """The movement only, in words real footage matches, with stand-in bodies (a dog running)."""
    caption: str
    """The render prompt in compel weighting syntax, with character tokens and the story's style."""
    negative_prompt: str
    """What the render should avoid."""

    def analysis_text(self) -> str:
        """The analysis as the storyboard keeps it: ``character: ...; action: ...; setting: ...``."""
        a = self.analysis
        return f"character: {a.character}; action: {a.action}; setting: {a.setting}"


@dataclass(frozen=True)
class ShotRequest:
    """Everything a planner is given for one shot."""

    shot_id: str
    text: str
    """The shot's event, as the story tells it."""
    cast: tuple[CastMember, ...]
    """The characters the caption may use (by token)."""
    required: tuple[str, ...] = ()
    """Names of characters whose tokens the caption must contain (those the text names)."""
    style: str = ""
    """The story's visual style; the caption ends with it."""
    negative_prompt: str = DEFAULT_NEGATIVE_PROMPT
    """The story's default negative prompt, which a shot's own extends."""
    previous_text: str | None = None
    """The previous shot's text (who "he" is)."""
    setting: str | None = None
    """The setting carried over from earlier shots, when this one names none."""
    state: Mapping[str, Any] = field(default_factory=dict)
    """What the rules planner carries from shot to shot (last subject); opaque to other planners."""

    def member(self, name: str) -> CastMember:
        return next(m for m in self.cast if m.name == name)


@dataclass
class PlanOutcome:
    """What a planner backend made of one request."""

    plan: ShotPlan | None
    """The accepted plan; None when every attempt failed."""
    attempts: int = 0
    """Requests sent (0 for the rules planner and for an answer from the cache)."""
    cached: bool = False
    """The plan came from the answer cache."""
    problems: list[str] = field(default_factory=list)
    """Why each failed attempt failed, in order."""
    error: str | None = None
    """Why there is no plan (when ``plan`` is None)."""


def shot_plan_json_schema() -> dict:
    """The JSON Schema of an answer, in the subset OpenAI-compatible structured output accepts (every
    property required, no additional properties; lengths are checked after the answer arrives)."""
    def text(description: str) -> dict:
        return {"type": "string", "description": description}
    return {
        "type": "object",
        "properties": {
            "analysis": {
                "type": "object",
                "properties": {
                    "character": text("Who moves in the shot and which real body (a dog, a child, a person) "
                                      "moves like them."),
                    "action": text("The one movement the shot shows, as an everyday action."),
                    "setting": text("Where the shot happens."),
                },
                "required": ["character", "action", "setting"],
                "additionalProperties": False,
            },
            "motion_query": text("The movement only, in at most 12 words that real footage would match, with "
                                 "the stand-in body instead of any character: 'a dog running across a field'."),
            "caption": text("The render prompt in compel weighting syntax: each character as "
                            "(<token> class word)1.3, the setting as (setting)1.1, ending with the story style."),
            "negative_prompt": text("Comma-separated things the render should avoid."),
        },
        "required": ["analysis", "motion_query", "caption", "negative_prompt"],
        "additionalProperties": False,
    }


def parse_answer(content: Any) -> dict:
    """An answer's JSON object (text → dict); :class:`PlanRejected` for anything else. A JSON object
    inside prose or a ```json fence is taken; duplicate keys and NaN are refused."""
    if isinstance(content, Mapping):
        return dict(content)
    if not isinstance(content, str):
        raise PlanRejected(f"malformed answer: expected JSON text, got {type(content).__name__}")
    if len(content) > MAX_ANSWER_CHARS:
        raise PlanRejected(f"malformed answer: {len(content)} characters (at most {MAX_ANSWER_CHARS})")
    text = content.strip()
    if not text.startswith("{"):
        start, end = text.find("{"), text.rfind("}")
        if start < 0 or end < start:
            raise PlanRejected(f"malformed answer: no JSON object in {_quote(text)}")
        text = text[start:end + 1]
    try:
        value = strict_json_loads(text)
    except json.JSONDecodeError as exc:
        raise PlanRejected(f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except ValueError as exc:
        raise PlanRejected(f"malformed JSON: {exc}") from None
    if not isinstance(value, dict):
        raise PlanRejected(f"malformed answer: expected a JSON object, got {type(value).__name__}")
    return value


def _quote(text: str) -> str:
    text = "".join(c if c.isprintable() else " " for c in text)
    return repr(text if len(text) <= 60 else text[:57] + "...")


def validate_plan(answer: Any, request: ShotRequest) -> ShotPlan:
    """The answer as a :class:`ShotPlan`, checked against ``request``; :class:`PlanRejected` says why not."""
    data = parse_answer(answer)
    try:
        plan = ShotPlan.model_validate(data)
    except ValidationError as exc:
        problems = problems_from_validation_error(exc, ShotPlan.model_json_schema())
        raise PlanRejected("schema: " + "; ".join(str(p) for p in problems[:4])) from None
    problems = plan_problems(plan, request)
    if problems:
        raise PlanRejected(problems[0])
    return plan


def _control_characters(value: str) -> bool:
    return any(unicodedata.category(c) in ("Cc", "Cf", "Co", "Cs") for c in value)


def _names_word(text: str, word: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(word)}(?:'s)?(?!\w)", text, re.IGNORECASE) is not None


def plan_problems(plan: ShotPlan, request: ShotRequest) -> list[str]:
    """Why ``plan`` cannot be used for ``request`` (empty: it can)."""
    problems: list[str] = []
    fields = {"analysis.character": (plan.analysis.character, MAX_ANALYSIS_CHARS),
              "analysis.action": (plan.analysis.action, MAX_ANALYSIS_CHARS),
              "analysis.setting": (plan.analysis.setting, MAX_ANALYSIS_CHARS),
              "motion_query": (plan.motion_query, MAX_QUERY_CHARS),
              "caption": (plan.caption, MAX_CAPTION_CHARS),
              "negative_prompt": (plan.negative_prompt, MAX_NEGATIVE_CHARS)}
    for name, (value, limit) in fields.items():
        if _control_characters(value):
            problems.append(f"{name}: contains control characters")
        if len(value) > limit:
            problems.append(f"{name}: {len(value)} characters (at most {limit})")
    if problems:
        return problems
    query = plan.motion_query.strip()
    words = re.findall(r"[^\W\d_]+", query)
    if not words:
        problems.append("motion_query: empty")
    elif len(query.split()) > MAX_QUERY_WORDS:
        problems.append(f"motion_query: {len(query.split())} words (at most {MAX_QUERY_WORDS})")
    for member in request.cast:
        head = member.class_word.lower().split()[-1] if member.class_word.split() else ""
        stand_in = member.body.lower().split()[-1]               # "the boy" may be found as "a boy"
        names = [w for w in (member.name, *(a for a in member.aliases if a != head)) if w != stand_in]
        if member.token in query or any(_names_word(query, word) for word in names):
            problems.append(f"off-topic: motion_query names the character {member.name!r} "
                            f"(use a stand-in body such as {member.body!r})")
            break
    if re.search(r"[<>()\[\]{}]", query):
        problems.append("motion_query: contains brackets or a token; a query is plain words")
    fantasy = [w for w in words if w.lower() in FANTASY or w.lower().rstrip("s") in FANTASY]
    if fantasy:
        problems.append(f"motion_query: names {fantasy[0].lower()!r}, which real footage does not show")
    caption = plan.caption.strip()
    problems += [f"caption: {problem}" for problem in caption_problems(caption)]
    tokens = {m.token: m for m in request.cast}
    used = _TOKEN_IN_TEXT.findall(caption)
    for token in used:
        if token not in tokens:
            problems.append(f"caption: uses {token}, which is not the token of a character of this shot")
    for name in request.required:
        member = request.member(name)
        if member.token not in used:
            problems.append(f"off-topic: caption leaves out {member.token} ({name}, who is in the shot)")
    if not used and not request.required:
        shot_words = {s for s in word_stems(request.text) if s not in STOP_WORDS}
        answer_words = set(word_stems(f"{caption} {plan.analysis.action} {plan.analysis.character}"))
        if shot_words and not shot_words & answer_words:
            problems.append("off-topic: the caption and analysis share no word with the shot's text")
    return problems


def plan_characters(plan: ShotPlan, request: ShotRequest) -> list[str]:
    """Names of the characters whose tokens the caption uses, in order of first use."""
    by_token = {m.token: m.name for m in request.cast}
    names: list[str] = []
    for token in _TOKEN_IN_TEXT.findall(plan.caption):
        name = by_token.get(token)
        if name is not None and name not in names:
            names.append(name)
    return names

