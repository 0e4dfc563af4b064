"""A story's cast: who the characters are, how they are named in text, and the body that moves like them.

Characters come from a characters file (``plan-story --characters chars.json``)::

    {
      "hare": {"token": "<hare>", "class_word": "rabbit", "body": "a dog", "aliases": ["rabbit"]},
      "tortoise": {"token": "<tortoise>", "class_word": "turtle", "embedding": "tortoise.safetensors"}
    }

(a storyboard file is accepted too: its ``characters`` are used), or, without one, from the passage
itself (:func:`detect_cast`): beings the story calls "the hare" or "the Fox", and capitalised names that
act ("Mira ran", "said Mira"). ``body`` is the real mover retrieval looks for; without it one is chosen
from :data:`motion_lexicon.BEINGS` by the name or class word (a hare moves like a dog, an elf like a
child), else ``a person``.
"""

from __future__ import annotations

import os
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Mapping

from pydantic import Field, RootModel, ValidationError, field_validator

from storyboard.errors import Problem, StoryboardError, custom_error, describe, problems_from_validation_error
from storyboard.format import NAME_PATTERN, Character
from storyboard.loading import read_json_file
from storyboard.motion_lexicon import (
    BEINGS,
    HUMAN_NOUNS,
    IRREGULAR,
    PREPOSITIONS,
    STOP_WORDS,
    being_for,
    body_for_class_word,
    verb_lemma,
)
from storyboard.verb_phrases import tokenize

DEFAULT_BODY = "a person"
MAX_AUTO_CHARACTERS = 8
_BODY_PATTERN = re.compile(r"^[A-Za-z][A-Za-z' ]{0,58}[A-Za-z]$")
_NOT_NAMES = frozenset(
    "i god sir madam mr mrs ms miss dr lord lady king queen prince princess old young little big the a an "
    "monday tuesday wednesday thursday friday saturday sunday january february march april may june july "
    "august september october november december english french one two three oh yes no ah well then once "
    "when while but and so if as at in on of".split())
_SPEECH_VERBS = frozenset("said says asked cried called shouted replied answered whispered laughed exclaimed "
                          "muttered sighed".split())
_CLASS_WORDS = {"son": "young man", "daughter": "young woman", "brother": "man", "sister": "woman",
                "husband": "man", "wife": "woman", "mother": "woman", "father": "man", "grandmother": "old woman",
                "grandfather": "old man"}
_BE_HAVE = frozenset("was is had has were are did could would".split())


class CharacterSpec(Character):
    """One character of a characters file: a storyboard character, plus what planning needs."""

    body: str | None = None
    """The real mover retrieval should find for this character (``a dog``, ``a child``)."""
    aliases: list[Annotated[str, Field(min_length=1, max_length=40)]] = Field(default_factory=list, max_length=10)
    """Other words the text uses for the character (``rabbit``, ``Mr Hare``)."""

    @field_validator("body")
    @classmethod
    def _plain_body(cls, body: str | None) -> str | None:
        if body is None:
            return None
        body = " ".join(body.split())
        if not _BODY_PATTERN.match(body):
            raise custom_error("body", "must be 2-60 letters and spaces, such as 'a dog' or 'an old man', "
                                       f"got {describe(body)}")
        return body


class CharactersFile(RootModel[dict[Annotated[str, Field(pattern=NAME_PATTERN)], CharacterSpec]]):
    pass


@dataclass(frozen=True)
class CastMember:
    """A character as the planners see it."""

    name: str
    token: str
    class_word: str
    body: str
    aliases: tuple[str, ...]
    """Lower-case words that name the character in text (its name first)."""
    manner: str = ""
    """How it moves when the text does not say (``slowly``)."""
    embedding: str | None = None
    scale: float = 1.0

    @property
    def weighted_phrase(self) -> str:
        return f"{self.token} {self.class_word}"

    def character(self) -> Character:
        return Character(token=self.token, class_word=self.class_word, embedding=self.embedding, scale=self.scale)

    def as_prompt_dict(self) -> dict:
        return {"name": self.name, "token": self.token, "class_word": self.class_word, "stand_in_body": self.body}


def _manner(*words: str) -> str:
    for word in words:
        being = being_for(word) if word else None
        if being is not None and being.manner:
            return being.manner
    return ""


def cast_member(name: str, token: str, class_word: str, *, body: str | None = None, aliases=(),
                embedding: str | None = None, scale: float = 1.0, unique_class_words: frozenset[str] = frozenset()
                ) -> CastMember:
    """A :class:`CastMember`, choosing the body from the tables when none is given."""
    chosen = body or _body_from_tables(name, class_word) or DEFAULT_BODY
    words = [name.lower()]
    words += [alias.lower() for alias in aliases]
    head = class_word.lower().split()[-1] if class_word.split() else ""
    if head in unique_class_words and being_for(head) is not None and head not in HUMAN_NOUNS:
        words.append(head)
    seen: dict[str, None] = {}
    for word in words:
        seen.setdefault(word, None)
    return CastMember(name, token, class_word, chosen, tuple(seen), _manner(name.lower(), head), embedding, scale)


def _body_from_tables(name: str, class_word: str) -> str | None:
    being = being_for(name)
    if being is not None:
        return being.body
    return body_for_class_word(class_word)


def cast_from_characters(characters: Mapping[str, Character], bodies: Mapping[str, str] | None = None,
                         aliases: Mapping[str, list[str]] | None = None) -> list[CastMember]:
    """Cast members for a storyboard's characters (bodies from ``bodies`` or the tables)."""
    heads = Counter(c.class_word.lower().split()[-1] for c in characters.values() if c.class_word.split())
    unique = frozenset(word for word, count in heads.items() if count == 1)
    return [cast_member(name, c.token, c.class_word, body=(bodies or {}).get(name),
                        aliases=(aliases or {}).get(name, ()), embedding=c.embedding, scale=c.scale,
                        unique_class_words=unique) for name, c in characters.items()]


# -- the characters file --------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _file_schema() -> dict:
    schema = CharactersFile.model_json_schema()
    for node in schema.pop("patternProperties", {}).values():    # errors.py reads additionalProperties
        schema["additionalProperties"] = node
    return schema


def load_characters_file(path: str | os.PathLike) -> tuple[list[CastMember], Path]:
    """The cast in a characters file (or a storyboard file's characters) and the folder its relative
    embedding paths start from. :class:`StoryboardError` names the file and field of any problem."""
    path = Path(path)
    raw = read_json_file(path, "characters")
    prefix: tuple = ()
    if isinstance(raw, dict) and "format_version" in raw and isinstance(raw.get("characters"), dict):
        raw, prefix = raw["characters"], ("characters",)          # a storyboard: its characters
    if not isinstance(raw, dict):
        raise StoryboardError([Problem("", "a characters file is a JSON object of name → character, "
                                           f"got {describe(raw)}")], path)
    if not raw:
        raise StoryboardError([Problem("", "names no characters")], path)
    try:
        parsed = CharactersFile.model_validate(raw).root
    except ValidationError as exc:
        problems = problems_from_validation_error(exc, _file_schema())
        if prefix:
            problems = [Problem(f"characters.{p.path}" if p.path else "characters", p.message) for p in problems]
        raise StoryboardError(problems, path) from None
    problems = []
    owners: dict[str, str] = {}
    base = path.absolute().parent
    for name, spec in parsed.items():
        where = ".".join(prefix + (name,))
        if spec.token in owners:
            problems.append(Problem(f"{where}.token", f"token {spec.token!r} is also the token of "
                                                      f"{owners[spec.token]!r}"))
        owners.setdefault(spec.token, name)
        if spec.embedding is not None:
            file = Path(spec.embedding).expanduser()
            file = file if file.is_absolute() else base / file
            if not file.is_file():
                problems.append(Problem(f"{where}.embedding", f"file not found: {file}"))
    if problems:
        raise StoryboardError(problems, path)
    heads = Counter(s.class_word.lower().split()[-1] for s in parsed.values())
    unique = frozenset(word for word, count in heads.items() if count == 1)
    cast = [cast_member(name, spec.token, spec.class_word, body=spec.body, aliases=spec.aliases,
                        embedding=spec.embedding, scale=spec.scale, unique_class_words=unique)
            for name, spec in parsed.items()]
    return cast, base


def _ascii_name(word: str) -> str:
    folded = unicodedata.normalize("NFKD", word).encode("ascii", "ignore").decode("ascii")
    return re.sub(r"[^a-z0-9_-]", "", folded.lower())[:64]


def _acts_after(tokens, index: int) -> bool:
    """Whether the word after ``tokens[index]`` (an adverb skipped) is a verb: ``Mira ran``, ``Mira quickly
    climbed``, ``Mira was``."""
    for token in tokens[index + 1:index + 3]:
        if not token.is_word:
            return False
        lower = token.lower
        if lower in _BE_HAVE or lower in _SPEECH_VERBS or verb_lemma(lower) or lower in IRREGULAR:
            return True
        if lower.endswith("ed") and len(lower) > 4:
            return True
        if not lower.endswith("ly"):
            return False
    return False


def detect_cast(text: str) -> list[CastMember]:
    """The characters of a passage, in order of first appearance: beings the text names with ``the``
    (or capitalises, as fables do: "the Fox"), and capitalised names that act or speak ("said Mira",
    "Mira, a young girl,", "... then Mira ran"). Plural and indefinite mentions ("a man passed by") and
    words that act only once at the start of a sentence ("Rain fell") do not make a character."""
    tokens = tokenize(text)
    lower_words = {t.lower for t in tokens if t.is_word and t.text[0].islower()}
    beings: Counter[str] = Counter()
    candidates: dict[str, Counter] = {}
    first_seen: dict[str, int] = {}
    class_words: dict[str, str] = {}
    for token in tokens:
        if not token.is_word:
            continue
        word = re.sub(r"['\u2019]s?$", "", token.text)
        lower = word.lower()
        previous = tokens[token.index - 1].lower if token.index > 0 else ""
        sentence_start = token.index == 0 or tokens[token.index - 1].text in (".", "!", "?", "\"", "\u201c",
                                                                              "\u201d", "\u2026")
        possessive = token.lower.endswith(("'s", "\u2019s"))
        if lower in BEINGS and lower not in ("kid", "person"):
            if possessive:                  # "the miller's son": the son is meant
                continue
            if previous == "the" or (word[0].isupper() and not sentence_start):
                beings[lower] += 1
                first_seen.setdefault(lower, token.start)
            continue
        if (not word[0].isupper() or lower in _NOT_NAMES or lower in STOP_WORDS or len(word) < 2
                or being_for(lower) is not None):
            continue
        if lower in lower_words or lower.endswith("ly"):  # also written in lower case, or an adverb
            continue
        speech = previous in _SPEECH_VERBS or (token.index + 1 < len(tokens)
                                                and tokens[token.index + 1].lower in _SPEECH_VERBS)
        acting = _acts_after(tokens, token.index) or speech
        if previous in PREPOSITIONS and not acting:
            continue                        # "in Greywater": a place
        signs = candidates.setdefault(word, Counter())
        signs["acting"] += int(acting)
        signs["speech"] += int(speech)
        signs["acting_mid_sentence"] += int(acting and not sentence_start)
        first_seen.setdefault(lower, token.start)
    for name in candidates:
        match = re.search(rf"\b{re.escape(name)},\s+(?:a|an|the)\s+([A-Za-z' ]{{1,40}}?)\s*[,.;]", text)
        if match:
            words = [w.lower() for w in match.group(1).split()]
            heads = [i for i, w in enumerate(words) if w in HUMAN_NOUNS]
            if heads:
                head = words[heads[-1]]
                adjective = [w for w in words[:heads[-1]] if w in ("old", "young", "little")][-1:]
                class_words[name.lower()] = _CLASS_WORDS.get(head, " ".join(adjective + [head]))
    # A capitalised word that acts only at the start of sentences may be a common noun ("Rain fell"):
    # a name needs a second sign (speech, an appositive, acting mid-sentence or twice).
    names = Counter({name: signs["acting"] for name, signs in candidates.items()
                     if signs["speech"] or signs["acting_mid_sentence"] or signs["acting"] >= 2
                     or name.lower() in class_words})
    chosen = [(first_seen[w], w, "being") for w in beings] + [(first_seen[n.lower()], n.lower(), "name")
                                                              for n in names]
    chosen.sort()
    counts = {**{w: beings[w] for w in beings}, **{n.lower(): names[n] for n in names}}
    if len(chosen) > MAX_AUTO_CHARACTERS:
        keep = sorted(chosen, key=lambda item: (-counts[item[1]], item[0]))[:MAX_AUTO_CHARACTERS]
        chosen = sorted(keep)
    cast: list[CastMember] = []
    used_names: set[str] = set()
    for _, word, kind in chosen:
        name = _ascii_name(word) or f"character{len(cast) + 1}"
        if name in used_names:
            continue
        used_names.add(name)
        class_word = word if kind == "being" else class_words.get(word, "person")
        aliases = (word,) if word != name else ()
        cast.append(cast_member(name, f"<{name}>", class_word, aliases=aliases))
    return cast


def mentions(tokens, cast: list[CastMember]) -> list[tuple[int, CastMember]]:
    """``(token index, member)`` of every word in ``tokens`` that names a cast member (``hare's`` too)."""
    by_word: dict[str, CastMember] = {}
    for member in cast:
        for alias in member.aliases:
            by_word.setdefault(alias, member)
    found = []
    for token in tokens:
        if not token.is_word:
            continue
        word = re.sub(r"['\u2019]s?$", "", token.lower)
        member = by_word.get(word)
        if member is not None:
            found.append((token.index, member))
    return found
