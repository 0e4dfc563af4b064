"""Words of a shot's text, and which of them are verbs of motion (no tagger: context rules).

:func:`tokenize` splits text into word and punctuation tokens; :func:`find_verbs` returns the words that
are verbs in :data:`motion_lexicon.ACTIONS` in their context: ``the race`` and ``a long leap`` are nouns,
``the hare races`` and ``it leaps`` are verbs, ``did not move`` is negated, ``fell asleep`` is sleeping
and ``set off`` is going.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from storyboard.motion_lexicon import (
    ACTIONS,
    ADJECTIVES_BEFORE_NOUNS,
    IRREGULAR,
    NEGATIONS,
    NOT_VERBS,
    PREPOSITIONS,
    SUBJECT_PRONOUNS,
    Action,
    being_for,
    stem,
    verb_lemma,
)

_LETTERS = r"[^\W\d_]+"                 # letters of any script: Zoë, Pétur
_TOKEN = re.compile(rf"{_LETTERS}(?:['\u2019]{_LETTERS})*['\u2019]?|[0-9]+|[.,;:!?\u2026\u2014\"\u201c\u201d()]")
_NOUN_MARKERS = frozenset("the a an his her their its my your our these those each every some no another".split())
_MODALS = frozenset("to will would could can shall should might must may did does do i you we".split())
# (lemma of the verb, next word) → the lemma the pair means.
_PHRASAL = {("fall", "asleep"): "sleep", ("set", "off"): "go", ("set", "out"): "go", ("take", "off"): "fly",
            ("look", "for"): "search", ("lie", "down"): "sleep", ("get", "up"): "stand", ("sit", "up"): "sit",
            ("climb", "down"): "climb", ("make", "way"): "go", ("head", "off"): "go"}
_PHRASAL_HEADS = {"fall": ("fell", "fallen", "fall", "falls", "falling"), "set": ("set", "sets", "setting"),
                  "take": ("took", "taken", "take", "takes", "taking"), "get": ("got", "get", "gets", "getting"),
                  "make": ("made", "make", "makes", "making")}


@dataclass(frozen=True)
class Token:
    text: str
    index: int
    start: int
    end: int

    @property
    def lower(self) -> str:
        return self.text.lower().replace("\u2019", "'")

    @property
    def is_word(self) -> bool:
        return self.text[0].isalpha()

    @property
    def is_punct(self) -> bool:
        return not self.text[0].isalnum()


@dataclass(frozen=True)
class VerbHit:
    """A verb of the lexicon at ``token`` (its ``lemma`` and :class:`Action`)."""

    token: Token
    lemma: str
    action: Action
    negated: bool


def tokenize(text: str) -> list[Token]:
    return [Token(m.group(0), i, m.start(), m.end()) for i, m in enumerate(_TOKEN.finditer(text))]


def _previous_words(tokens: list[Token], index: int, count: int) -> list[str]:
    words = []
    for token in reversed(tokens[:index]):
        if token.is_punct:
            break
        words.append(token.lower)
        if len(words) == count:
            break
    return words


def _next_word(tokens: list[Token], index: int) -> str | None:
    if index + 1 < len(tokens) and tokens[index + 1].is_word:
        return tokens[index + 1].lower
    return None


def _sentence_start(tokens: list[Token], index: int) -> bool:
    return index == 0 or tokens[index - 1].text in (".", "!", "?", "\u2026", "\"", "\u201c", "(")


def _lemma(tokens: list[Token], token: Token) -> str | None:
    lower = token.lower
    following = _next_word(tokens, token.index)
    if following is not None:
        for head, forms in _PHRASAL_HEADS.items():
            if lower in forms and (head, following) in _PHRASAL:
                return _PHRASAL[(head, following)]
        lemma = verb_lemma(lower) or IRREGULAR.get(lower)
        if lemma is not None and (lemma, following) in _PHRASAL:
            return _PHRASAL[(lemma, following)]
    return verb_lemma(lower)


def _is_noun_here(tokens: list[Token], token: Token, subjects: frozenset[str]) -> bool:
    previous = _previous_words(tokens, token.index, 2)
    prev = previous[0] if previous else None
    prev2 = previous[1] if len(previous) > 1 else None
    if token.text[0].isupper() and not _sentence_start(tokens, token.index):
        return True                                     # a name: Bolt, Swift
    if prev is None:
        return False
    if prev in _NOUN_MARKERS or prev.endswith("'s") or prev.endswith("s'"):
        return True                                     # the race, the hare's leap
    gerund_form = token.lower.endswith("ing") and token.lower not in ACTIONS   # not "spring", "swing"
    if prev in PREPOSITIONS and not gerund_form:
        return True                                     # in spring, for water
    if prev in ADJECTIVES_BEFORE_NOUNS and prev2 in _NOUN_MARKERS:
        return True                                     # a long race
    if token.lower in NOT_VERBS:
        bare_subject = (token.index == 1 or (token.index > 1 and _sentence_start(tokens, token.index - 1))) and \
            prev not in PREPOSITIONS
        return not (prev in SUBJECT_PRONOUNS or prev in _MODALS or prev in subjects or being_for(prev) is not None
                    or bare_subject)                 # "Rain fell": a bare noun opening the sentence
    return False


def find_verbs(tokens: list[Token], subjects: frozenset[str] = frozenset()) -> list[VerbHit]:
    """The lexicon's verbs among ``tokens``, in order. ``subjects`` are lower-case words that name the
    story's characters, so that ``Swift races`` reads as a verb after a name the tables do not know."""
    hits = []
    for token in tokens:
        if not token.is_word:
            continue
        lemma = _lemma(tokens, token)
        if lemma is None or lemma not in ACTIONS or _is_noun_here(tokens, token, subjects):
            continue
        previous = _previous_words(tokens, token.index, 3)
        negated = any(word in NEGATIONS or word.endswith("n't") for word in previous)
        hits.append(VerbHit(token, lemma, ACTIONS[lemma], negated))
    return hits


def motion_strength(text: str, subjects: frozenset[str] = frozenset()) -> int:
    """The strongest movement a (not negated) verb of ``text`` names: 0 when none does."""
    return max((hit.action.strength for hit in find_verbs(tokenize(text), subjects) if not hit.negated), default=0)


def word_stems(text: str) -> list[str]:
    """Snowball stems of the words of ``text``, in order (for matching phrases loosely)."""
    return [stem(token.lower) for token in tokenize(text) if token.is_word]
