"""Storyboard errors that name the file and the JSON path of every bad field.

One exception, :class:`StoryboardError` (a ``ValueError``), carries a list of :class:`Problem` and reads::

    fable.json: shots[2].tau: must be between 0 and 1, got 1.5
    fable.json: characters.hare.token: must look like <name> (angle brackets, no spaces), got 'hare'

pydantic's errors are translated here: its ``loc`` tuples become JSON paths (``shots[2].tau``,
``characters.hare.token``, ``characters["Mr Fox"]``) and its messages become sentences that say what is
allowed, using the bounds and allowed values of the storyboard's own JSON schema. Checks that span
fields (an unknown character in a shot, duplicate ids) raise :func:`problems_error` inside a validator,
which carries the exact paths of the fields at fault through pydantic.
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from pydantic import ValidationError
from pydantic_core import PydanticCustomError

from storyreel.errors import StoryreelError

# The error type that carries problems found by a cross-field validator, with their own paths.
PROBLEMS_ERROR_TYPE = "storyboard_problems"
# At most this many problems are listed in an error's message (all are kept in ``problems``).
MAX_LISTED = 20

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")

Loc = Sequence[str | int]


@dataclass(frozen=True)
class Problem:
    """One bad field: its JSON path (``""`` for the file as a whole) and what is wrong with it."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class StoryboardError(StoryreelError, ValueError):
    """A storyboard that cannot be used; ``problems`` lists every bad field, ``source`` is the file."""

    def __init__(self, problems: Iterable[Problem], source: str | Path | None = None):
        self.problems = tuple(problems)
        self.source = Path(source) if source is not None else None
        super().__init__(self._render())

    def _render(self) -> str:
        prefix = str(self.source) if self.source is not None else "storyboard"
        lines = [f"{prefix}: {problem}" for problem in self.problems[:MAX_LISTED]]
        if len(self.problems) > MAX_LISTED:
            lines.append(f"{prefix}: ... and {len(self.problems) - MAX_LISTED} more problems")
        return "\n".join(lines) or f"{prefix}: invalid storyboard"

    def __str__(self) -> str:
        return self.args[0]


def json_path(loc: Loc) -> str:
    """``("shots", 2, "tau")`` → ``shots[2].tau``; keys that are not plain names are quoted."""
    path = ""
    for part in loc:
        if part == "[key]":          # pydantic's marker for an error in a mapping's key
            continue
        if isinstance(part, int):
            path += f"[{part}]"
        elif _IDENTIFIER.match(part):
            path += f".{part}" if path else part
        else:
            path += f"[{json.dumps(part)}]"
    return path


def problems_error(problems: Iterable[tuple[Loc, str]]) -> PydanticCustomError:
    """An error for a validator to raise: ``problems`` are ``(loc relative to the model, message)``."""
    problems = tuple((tuple(loc), message) for loc, message in problems)
    summary = "; ".join(f"{json_path(loc)}: {message}" if loc else message for loc, message in problems)
    return PydanticCustomError(PROBLEMS_ERROR_TYPE, "{summary}", {"summary": summary, "problems": problems})


def custom_error(kind: str, message: str) -> PydanticCustomError:
    """An error for a validator to raise whose message is used as it is (braces and all)."""
    return PydanticCustomError(kind, "{message}", {"message": message})


def problems_from_validation_error(exc: ValidationError, schema: dict) -> list[Problem]:
    """Translate pydantic's errors into problems, using the model's JSON ``schema`` for bounds and names.

    An error in ``format_version`` hides the rest: a file of another version is expected to fail
    everywhere else too, and the version is what the user has to fix.
    """
    problems: list[Problem] = []
    for error in exc.errors(include_url=False):
        loc = tuple(error["loc"])
        if error["type"] == PROBLEMS_ERROR_TYPE:
            for sub_loc, message in error["ctx"]["problems"]:
                problems.append(Problem(json_path(loc + tuple(sub_loc)), message))
            continue
        problem = Problem(json_path(loc), _message(error, loc, schema))
        if loc == ("format_version",):
            return [problem]
        problems.append(problem)
    return problems


def describe(value: Any) -> str:
    """A JSON reader's words for a value: ``'text'``, ``1.5``, ``an array``, ``null``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return repr(value if len(value) <= 60 else value[:57] + "...")
    if isinstance(value, (list, tuple)):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _number(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


_TYPE_WORDS = {
    "int_type": "a whole number",
    "int_parsing": "a whole number",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "float_parsing": "a number",
    "finite_number": "a finite number",
    "string_type": "a string",
    "bool_type": "true or false",
    "list_type": "an array",
    "dict_type": "a JSON object",
    "model_type": "a JSON object",
    "model_attributes_type": "a JSON object",
}


def _message(error: dict, loc: tuple, schema: dict) -> str:
    kind = error["type"]
    value = error.get("input")
    ctx = error.get("ctx") or {}
    got = f", got {describe(value)}"
    if kind == "missing":
        return "required field is missing"
    if kind == "extra_forbidden":
        return _unknown_field(loc, schema)
    if kind in _TYPE_WORDS:
        return f"must be {_TYPE_WORDS[kind]}{got}"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        return _range_phrase(_schema_at(schema, loc), ctx) + got
    if kind == "multiple_of":
        return f"must be a multiple of {_number(ctx['multiple_of'])}{got}"
    if kind == "literal_error":
        allowed = _schema_at(schema, loc).get("enum")
        choices = ", ".join(repr(v) for v in allowed) if allowed else ctx.get("expected", "")
        return f"must be one of {choices}{got}"
    if kind == "string_too_short":
        return "must not be empty" if ctx.get("min_length") == 1 else f"needs at least {ctx['min_length']} characters"
    if kind == "too_short":
        return "must not be empty" if ctx.get("min_length") == 1 else f"needs at least {ctx['min_length']} items"
    if kind == "string_pattern_mismatch":
        return f"must match the pattern {ctx.get('pattern')}{got}"
    message = error["msg"]
    return message.removeprefix("Value error, ").removeprefix("Assertion failed, ")


def _range_phrase(node: dict, ctx: dict) -> str:
    """``must be between 0 and 1`` from the schema's bounds (or the one bound pydantic reports)."""
    low = ("at least", node["minimum"]) if "minimum" in node else (
        ("more than", node["exclusiveMinimum"]) if "exclusiveMinimum" in node else None)
    high = ("at most", node["maximum"]) if "maximum" in node else (
        ("less than", node["exclusiveMaximum"]) if "exclusiveMaximum" in node else None)
    if low is None and high is None:       # no schema node: fall back on pydantic's own bound
        words = {"ge": "at least", "gt": "more than", "le": "at most", "lt": "less than"}
        key = next(iter(ctx))
        return f"must be {words[key]} {_number(ctx[key])}"
    if low and high and low[0] == "at least" and high[0] == "at most":
        return f"must be between {_number(low[1])} and {_number(high[1])}"
    parts = [f"{word} {_number(bound)}" for word, bound in (side for side in (low, high) if side)]
    return "must be " + " and ".join(parts)


def _unknown_field(loc: tuple, schema: dict) -> str:
    name = loc[-1] if loc else ""
    allowed = sorted(_schema_at(schema, loc[:-1]).get("properties", {}))
    if not allowed:
        return "unknown field"
    close = difflib.get_close_matches(str(name), allowed, n=1, cutoff=0.6)
    if close:
        return f"unknown field; did you mean {close[0]!r}?"
    return f"unknown field; allowed fields are {', '.join(allowed)}"


def _schema_at(schema: dict, loc: Sequence) -> dict:
    """The JSON-schema node that validates the value at ``loc`` (``{}`` where it cannot be told)."""
    node = _deref(schema, schema)
    for part in loc:
        if part == "[key]":
            return {}
        if isinstance(part, int):
            node = node.get("items", {})
        elif part in node.get("properties", {}):
            node = node["properties"][part]
        elif isinstance(node.get("additionalProperties"), dict):
            node = node["additionalProperties"]
        else:
            return {}
        node = _deref(node, schema)
    return node


def _deref(node: dict, schema: dict) -> dict:
    """Follow ``$ref`` and take the non-null branch of an optional field's ``anyOf``."""
    for _ in range(8):
        if "$ref" in node:
            node = schema.get("$defs", {}).get(node["$ref"].rsplit("/", 1)[-1], {})
        elif "anyOf" in node:
            branches = [b for b in node["anyOf"] if b.get("type") != "null"]
            node = branches[0] if len(branches) == 1 else {}
        else:
            break
    return node
