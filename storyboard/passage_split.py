"""Prose → events: the sentences of a passage, cut and joined into single events, one per shot.

A shot shows one event without a change of shot. :func:`split_events` splits a passage into sentences
(abbreviations such as ``Mr.`` and quoted speech kept whole), cuts a sentence at ``;`` or ``then`` where
both sides show a movement, and joins a sentence that shows no movement at all ("It was a hot day.") to
its neighbour, so that every event has something for the retrieval to find. :func:`limit_events` joins
neighbouring events until at most N are left (``plan-story --shots N``), shortest pair first.

:func:`read_passage` reads a passage file: UTF-8 text, an optional title on the first line (a short line
without final punctuation, followed by a blank line).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from storyboard.verb_phrases import motion_strength
from storyreel.errors import StoryreelError

MAX_PASSAGE_CHARS = 200_000
"""Longer passages are refused: a storyboard of thousands of shots is not what anyone means."""

_ABBREVIATIONS = frozenset("mr mrs ms dr st jr sr prof capt col gen lt sgt mt rev fr vs etc no fig".split())
_SENTENCE_END = re.compile(r"([.!?]+|\u2026)([\"'\u201d\u2019)\]]*)(\s+)(?=[\"'\u201c\u2018(\[]*[A-Z0-9])")
_WORD = re.compile(r"[^\W\d_]+")


class PassageError(StoryreelError, ValueError):
    """A passage that cannot be planned; the message says why (the caller names the file)."""


@dataclass(frozen=True)
class Passage:
    title: str | None
    text: str


def read_passage(path: str | Path) -> Passage:
    """The passage in ``path`` (:class:`PassageError` for a missing, unreadable, non-UTF-8 or empty file)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise PassageError("no such passage file") from None
    except IsADirectoryError:
        raise PassageError("is a folder, not a passage file") from None
    except OSError as exc:
        raise PassageError(f"cannot be read: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise PassageError(f"not UTF-8 text (byte {exc.start})") from None
    return parse_passage(text)


def parse_passage(text: str) -> Passage:
    """Split an optional title line off ``text`` and check that prose is left."""
    if len(text) > MAX_PASSAGE_CHARS:
        raise PassageError(f"is {len(text)} characters long; a passage has at most {MAX_PASSAGE_CHARS}")
    if "\x00" in text:
        raise PassageError("contains NUL characters (not a text file)")
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    lines = text.split("\n")
    title = None
    first = next((i for i, line in enumerate(lines) if line.strip()), None)
    if first is not None:
        candidate = lines[first].strip().lstrip("#").strip()
        followed_by_blank = first + 1 >= len(lines) or not lines[first + 1].strip()
        if (candidate and len(candidate) <= 80 and not re.search(r"[.!?,;:\"\u201d]$", candidate)
                and followed_by_blank and any(line.strip() for line in lines[first + 1:])):
            title = candidate
            lines = lines[first + 1:]
    body = "\n".join(lines).strip()
    if not _WORD.search(body):
        raise PassageError("is empty (no prose to plan)")
    return Passage(title, body)


def split_sentences(text: str) -> list[str]:
    """The sentences of ``text``; paragraph breaks end sentences too."""
    sentences: list[str] = []
    for paragraph in re.split(r"\n\s*\n", text):
        paragraph = re.sub(r"\s+", " ", paragraph).strip()
        if not paragraph:
            continue
        start = 0
        for match in _SENTENCE_END.finditer(paragraph):
            end = match.end(2)
            before = paragraph[start:match.start(1)]
            last_word = re.findall(r"[A-Za-z]+$", before)
            if match.group(1) == "." and last_word and (
                    last_word[0].lower() in _ABBREVIATIONS or len(last_word[0]) == 1 and last_word[0].isupper()):
                continue  # Mr. Fox, J. Smith
            sentence = paragraph[start:end].strip()
            if sentence:
                sentences.append(sentence)
            start = match.end()
        tail = paragraph[start:].strip()
        if tail:
            sentences.append(tail)
    return [s for s in sentences if _WORD.search(s)]


def _cut_sentence(sentence: str) -> list[str]:
    """Cut at ``;`` and at ``, then`` / ``and then`` + a new subject, where both sides show a clear movement
    (``the fox leapt, then fell`` stays one event: one body, one continuous shot)."""
    parts = [sentence]
    for pattern in (r";\s+", r",?\s+(?:and\s+)?then,?\s+(?=(?:he|she|it|they|the|a|an|his|her|their|its)\b|[A-Z])"):
        cut: list[str] = []
        for part in parts:
            pieces = re.split(pattern, part)
            merged = [pieces[0]]
            for piece in pieces[1:]:
                if motion_strength(merged[-1]) >= 2 and motion_strength(piece) >= 2:
                    merged.append(piece)
                else:
                    joiner = "; " if pattern.startswith(";") else ", then "
                    merged[-1] = merged[-1] + joiner + piece
            cut.extend(merged)
        parts = cut
    return [_as_sentence(p) for p in parts]


def _as_sentence(text: str) -> str:
    text = text.strip()
    if text and text[0].islower():
        text = text[0].upper() + text[1:]
    if text and text[-1] not in ".!?\"'\u201d\u2019)":
        text += "."
    return text


def split_events(text: str) -> list[str]:
    """The events of a passage, in order: sentences cut at ``;``/``then`` between two movements, and
    sentences without any movement joined to the next event (the last such one to the previous)."""
    pieces = [piece for sentence in split_sentences(text) for piece in _cut_sentence(sentence)]
    events: list[str] = []
    pending: list[str] = []
    for piece in pieces:
        if motion_strength(piece) == 0:
            pending.append(piece)
            continue
        events.append(" ".join(pending + [piece]))
        pending = []
    if pending:
        if events:
            events[-1] = " ".join([events[-1]] + pending)
        else:
            events.append(" ".join(pending))
    return events


def limit_events(events: list[str], most: int | None) -> list[str]:
    """Join neighbouring events until at most ``most`` are left, the pair with the fewest words first
    (ties: the earlier pair). ``None`` keeps them all."""
    events = list(events)
    if most is None:
        return events
    if most < 1:
        raise ValueError("at least one shot is needed")
    while len(events) > most:
        sizes = [len(events[i].split()) + len(events[i + 1].split()) for i in range(len(events) - 1)]
        i = sizes.index(min(sizes))
        events[i:i + 2] = [f"{events[i]} {events[i + 1]}"]
    return events
