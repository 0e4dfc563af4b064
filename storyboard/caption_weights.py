"""Captions in compel's weighting syntax: build weighted pieces, and check that a caption parses.

A planned caption weights its key elements the way compel (the render's prompt weighting) reads them::

    (<hare> rabbit)1.3 sprinting far ahead, in a (sunny meadow)1.1, watercolour storybook illustration

:func:`caption_problems` parses a caption with compel's own parser and lists what is wrong with it; a caption
"parses" (:func:`caption_weights_parse`) when compel reads it as one plain prompt (no ``.blend()``,
``.and()``, ``.swap()`` or LoRA), every bracket is consumed by the syntax (none left over as text), and
every weight is within :data:`WEIGHT_RANGE`. compel's parser is lenient (it reads ``(a`` as the text
``(a``), so the leftover-bracket check is what catches a broken caption.

compel's package imports torch and transformers (seconds); only its pure-Python ``prompt_parser`` module
(pyparsing) is needed here, so it is loaded on first use from the installed package's file without
running the package's ``__init__``, and falls back to the plain import where that file cannot be found.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from functools import lru_cache

WEIGHT_RANGE = (0.5, 2.0)
"""Weights outside this range are refused: beyond it a token drowns or vanishes from the prompt."""
CHARACTER_WEIGHT = 1.3
"""The weight of a shot's main character; other characters in the shot get :data:`SECOND_WEIGHT`."""
SECOND_WEIGHT = 1.2
SETTING_WEIGHT = 1.1

_UNSAFE = re.compile(r"[^\w' ,]+|_+")
_OPERATORS = re.compile(r"\.(blend|and|swap|withlora)\s*\(", re.IGNORECASE)
_BRACKETS = set("()[]{}")


class CaptionError(ValueError):
    """A caption compel would not read as intended; the message says why."""


def plain_words(text: str) -> str:
    """``text`` reduced to words (any script), digits, apostrophes, commas and single spaces: nothing compel reads as
    syntax (brackets, ``+``/``-`` weights, ``.blend()``), so it can be put into a caption safely."""
    text = text.replace("-", " ").replace("\u2019", "'")
    return re.sub(r"\s+", " ", _UNSAFE.sub(" ", text)).strip(" ,")


def weighted(text: str, weight: float) -> str:
    """``(text)1.3``; ``text`` as it is for weight 1. The text must already be plain (or a token)."""
    if abs(weight - 1.0) < 1e-9:
        return text
    return f"({text}){weight:g}"


@lru_cache(maxsize=1)
def _parser():
    module = sys.modules.get("compel.prompt_parser")
    if module is None:
        spec = importlib.util.find_spec("compel")
        locations = list(spec.submodule_search_locations or []) if spec is not None else []
        for folder in locations:
            file_spec = importlib.util.spec_from_file_location("_storyreel_compel_prompt_parser",
                                                               f"{folder}/prompt_parser.py")
            if file_spec is None or file_spec.loader is None:
                continue
            try:
                module = importlib.util.module_from_spec(file_spec)
                file_spec.loader.exec_module(module)
                break
            except (OSError, ImportError):
                module = None
        if module is None:
            from compel import prompt_parser as module
    return module.PromptParser()


def parse_caption(caption: str) -> list[tuple[str, float]]:
    """The caption's ``(text, weight)`` fragments as compel reads them; :class:`CaptionError` when the
    caption does not parse as one plain weighted prompt (see the module's description)."""
    if not isinstance(caption, str) or not caption.strip():
        raise CaptionError("caption is empty")
    if _OPERATORS.search(caption):
        raise CaptionError("uses a compel operator (.blend/.and/.swap/.withLora); write a plain weighted prompt")
    depth = 0
    for char in caption:
        depth += char == "("
        depth -= char == ")"
        if depth < 0:
            raise CaptionError("has a ')' without its '('")
    if depth:
        raise CaptionError("has a '(' that is never closed")
    parser = _parser()
    try:
        conjunction = parser.parse_conjunction(caption)
    except Exception as exc:  # pyparsing's and compel's own exceptions  # noqa: BLE001
        raise CaptionError(f"compel cannot parse it: {exc}") from None
    if len(conjunction.prompts) != 1 or type(conjunction.prompts[0]).__name__ != "FlattenedPrompt":
        raise CaptionError("compel reads it as several prompts or a blend; write one plain weighted prompt")
    if getattr(conjunction, "lora_weights", None):
        raise CaptionError("uses a LoRA weight, which captions may not set")
    fragments = []
    for fragment in conjunction.prompts[0].children:
        text, weight = getattr(fragment, "text", None), getattr(fragment, "weight", None)
        if not isinstance(text, str) or not isinstance(weight, (int, float)):
            raise CaptionError("uses compel syntax other than weights (such as a swap)")
        leftover = _BRACKETS & set(text)
        if leftover:
            raise CaptionError(f"compel leaves {''.join(sorted(leftover))!r} as text in {text.strip()!r}: "
                               "write weights as (words)1.2")
        low, high = WEIGHT_RANGE
        if not low - 1e-9 <= weight <= high + 1e-9:
            raise CaptionError(f"weight {weight:g} of {text.strip()!r} is outside {low:g}-{high:g}")
        fragments.append((text, float(weight)))
    return fragments


def caption_problems(caption: str) -> list[str]:
    """Why compel would not read ``caption`` as intended (empty list: it parses)."""
    try:
        parse_caption(caption)
    except CaptionError as exc:
        return [str(exc)]
    return []


def caption_weights_parse(caption: str) -> bool:
    """True when compel reads ``caption`` as one plain prompt whose weights are all in range."""
    return not caption_problems(caption)
