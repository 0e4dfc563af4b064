"""The rules planner: deterministic, offline, no model.

For one shot it reads the text with the tables of :mod:`storyboard.motion_lexicon` (:func:`read_shot`):

* **action**: the verbs of motion in context (``the race`` is a noun, ``did not run`` is negated); the most
  visible one wins (``jumps`` over ``laughing``), the earlier on a tie;
* **character**: the verb's subject (the nearest character named before it that is not an object,
  a pronoun resolved to the previous shot's subject, or a person such as "a farmer"), and its stand-in
  body (:class:`story_characters.CastMember`); an action that needs hands makes an animal body a person;
* **object** and **setting**: the first object noun after the verb (a tree, a horse, a butterfly) and
  the first place noun (a meadow), or the setting carried over from earlier shots.

and writes (:func:`plan_shot`) the motion query ``<body> <action> [speed] [path]`` (``a dog running across
a field``), the caption ``(<token> class)1.3 <verb>ing <rest of the clause>, (<other> class)1.2 ...,
in a (setting)1.1, <style>`` and a negative prompt that keeps the stand-in's look out (``dog`` for a hare
whose motion comes from a dog).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from storyboard.caption_weights import CHARACTER_WEIGHT, SECOND_WEIGHT, SETTING_WEIGHT, plain_words, weighted
from storyboard.motion_lexicon import (
    CLAUSE_WORDS,
    DETERMINERS,
    OBJECTS,
    PREPOSITIONS,
    SETTINGS,
    SPEED_WORDS,
    STOP_WORDS,
    SUBJECT_PRONOUNS,
    Action,
    Place,
    being_for,
    gerund,
    verb_lemma,
)
from storyboard.shot_plan import PlanOutcome, ShotAnalysis, ShotPlan, ShotRequest
from storyboard.story_characters import CastMember, mentions
from storyboard.verb_phrases import Token, VerbHit, find_verbs, tokenize

HAND_OBJECTS = frozenset({"instrument", "cards", "chess", "kite", "axe", "spear", "sword", "bow", "coin", "disc",
                          "baby", "letter", "gift"})
"""Object classes whose action needs hands even where the verb alone does not (an animal playing a lute)."""
ANIMAL_BODIES = frozenset({"a dog", "a bird", "a horse", "a camel", "an elephant"})
GENERIC_BODY = "a person"
STILL = Action("standing still", 0)
MAX_REST_WORDS = 8
MAX_SCENE_WORDS = 20
MAX_QUERY_WORDS = 12
_GROUND_ACTIONS = ("running", "jogging", "walking", "galloping", "trotting", "hopping", "marching", "crawling")
_SENTENCE_END = frozenset({".", "!", "?", "\u2026"})
_POSSESSIVES = frozenset({"his", "her", "its", "their", "my", "your", "our"})
_MASS_NOUNS = frozenset({"grass", "snow", "ice", "sand", "sky", "grassland", "woodland", "desert", "sea", "ocean"})


@dataclass(frozen=True)
class Subject:
    """Who does the shot's action: a cast member, or someone the text only describes (a farmer)."""

    member: CastMember | None
    body: str
    phrase: str
    """How the caption names a non-character subject (``a farmer``); "" for none."""
    how: str
    """How the rules found it (named, pronoun, carried, described, default)."""


@dataclass(frozen=True)
class Reading:
    """What the rules read in one shot's text."""

    tokens: list[Token]
    mentioned: tuple[str, ...]
    verb: VerbHit | None
    action: Action
    subject: Subject
    object_class: str | None
    object_phrase: str | None
    setting: str | None
    place: Place | None
    setting_from_text: bool
    hits: list[VerbHit] = field(default_factory=list)


# -- reading ---------------------------------------------------------------------------------------------


def _sentence_bounds(tokens: list[Token], index: int) -> tuple[int, int]:
    start = index
    while start > 0 and tokens[start - 1].text not in _SENTENCE_END:
        start -= 1
    end = index
    while end < len(tokens) - 1 and tokens[end].text not in _SENTENCE_END:
        end += 1
    return start, end


def _is_verbish(token: Token) -> bool:
    lower = token.lower
    return verb_lemma(lower) is not None or (lower.endswith("ed") and len(lower) > 4)


def _in_object_position(tokens: list[Token], index: int) -> bool:
    """Whether the noun at ``index`` follows a verb or preposition (``at the slow tortoise``, ``passes the
    hare``): ``[verb|preposition] [determiner] [up to two adjectives] noun``."""
    j = index - 1
    adjectives = 0
    while (j >= 0 and adjectives < 2 and tokens[j].is_word and tokens[j].lower not in STOP_WORDS
           and tokens[j].lower not in CLAUSE_WORDS and not _is_verbish(tokens[j]) and not _is_name(tokens[j])):
        j -= 1
        adjectives += 1
    if j >= 0 and tokens[j].is_word and tokens[j].lower in DETERMINERS:
        j -= 1
    if j < 0 or not tokens[j].is_word:
        return False
    lower = tokens[j].lower
    return lower in PREPOSITIONS or lower == "to" or _is_verbish(tokens[j])


def _is_name(token: Token) -> bool:
    return token.text[0].isupper()


def _subject_at(tokens: list[Token], index: int, members: dict[int, CastMember], previous: CastMember | None,
                described: bool) -> Subject | None:
    if index in members:
        member = members[index]
        return Subject(member, member.body, "", "named")
    lower = tokens[index].lower
    if lower in SUBJECT_PRONOUNS:
        if previous is None:          # "... said Zoë. She ran": the last character named before
            previous = next((members[j] for j in range(index - 1, -1, -1) if j in members), None)
        if previous is None:
            return Subject(None, GENERIC_BODY, "", "pronoun")
        return Subject(previous, previous.body, "", "pronoun")
    being = being_for(lower) if described else None
    if being is not None:
        article = "an" if lower[0] in "aeiou" else "a"
        return Subject(None, being.body, f"{article} {lower}", "described")
    return None


def _find_subject(tokens: list[Token], verb_index: int, members: dict[int, CastMember],
                  previous: CastMember | None) -> Subject | None:
    """The subject of the verb at ``verb_index``: a character or pronoun before it in the sentence (not
    in object position), else a character after it ("Laughing, the hare ..."), else a person the text
    describes before it ("a farmer")."""
    start, end = _sentence_bounds(tokens, verb_index)
    before = [j for j in range(verb_index - 1, start - 1, -1)
              if tokens[j].is_word and not _in_object_position(tokens, j)]
    for j in before:
        found = _subject_at(tokens, j, members, previous, described=False)
        if found is not None:
            return found
    if not before or tokens[verb_index].lower.endswith("ing"):    # "Laughing, the hare ..."
        for j in range(verb_index + 1, end + 1):
            if tokens[j].is_word and not _in_object_position(tokens, j) and j in members:
                return _subject_at(tokens, j, members, previous, described=False)
    for j in before:
        found = _subject_at(tokens, j, members, previous, described=True)
        if found is not None:
            return found
    return None


def _thing_before(tokens: list[Token], hit: VerbHit, members: dict[int, CastMember]) -> str | None:
    """The thing that does the verb, when the word before it is one: someone's thing (``his hat flew``)
    or a bare noun opening the sentence (``Rain fell``); never a character, a being or a pronoun.
    ``the bard strummed`` is left alone, as the tables do not know every person."""
    j = hit.token.index - 1
    while j >= 0 and tokens[j].is_word and tokens[j].lower.endswith("ly"):
        j -= 1
    if j < 0 or not tokens[j].is_word or j in members:
        return None
    noun = tokens[j].lower
    if (noun in STOP_WORDS or noun in SUBJECT_PRONOUNS or noun in CLAUSE_WORDS or being_for(noun) is not None
            or _is_verbish(tokens[j])):
        return None
    if _sentence_start(tokens, j):
        return noun                                             # "Rain fell"
    before = tokens[j - 1]
    possessed = before.is_word and (before.lower in _POSSESSIVES or before.lower.endswith("'s"))
    if (possessed and not _is_name(tokens[j])) or noun in OBJECTS or noun in SETTINGS:
        return f"{'an' if noun[0] in 'aeiou' else 'a'} {noun}"  # "his hat flew", "the old mill stood"
    return None


def _sentence_start(tokens: list[Token], index: int) -> bool:
    return index == 0 or tokens[index - 1].text in _SENTENCE_END or tokens[index - 1].text in ('"', "\u201c")


def _clause_end(tokens: list[Token], start: int, limit: int) -> int:
    """Index after the last token of the clause that starts at ``start`` (at most ``limit`` words)."""
    words = 0
    i = start
    while i < len(tokens):
        token = tokens[i]
        if token.is_punct or (token.lower in CLAUSE_WORDS and token.lower not in ("that", "where")):
            break
        words += token.is_word
        if words > limit:
            break
        i += 1
    return i


def _find_object(tokens: list[Token], hit: VerbHit, members: dict[int, CastMember], subject: Subject
                 ) -> tuple[str | None, str | None]:
    end = _clause_end(tokens, hit.token.index + 1, 6)
    for j in range(hit.token.index + 1, end):
        token = tokens[j]
        if not token.is_word:
            continue
        member = members.get(j)
        if member is not None and member is not subject.member:
            return "*", member.body
        lower = token.lower
        if lower in OBJECTS:
            while j + 1 < end and tokens[j + 1].lower in OBJECTS:   # "rope ladder": the head is the last noun
                j += 1
            return OBJECTS[tokens[j].lower]
        being = being_for(lower)
        if being is not None:
            noun = lower if being.kind == "animal" else being.body.split()[-1]
            return "*", f"{'an' if noun[0] in 'aeiou' else 'a'} {noun}"
    return None, None


def _find_setting(tokens: list[Token], members: dict[int, CastMember]) -> tuple[str, Place] | None:
    for token in tokens:
        lower = token.lower
        if lower not in SETTINGS or token.index in members:
            continue
        before = [t.lower for t in tokens[max(0, token.index - 3):token.index] if t.is_word]
        if not any(word in DETERMINERS or word in PREPOSITIONS for word in before):
            continue                                    # "chops wood": an object, not a place
        words = [lower]
        if token.index > 0:
            prev = tokens[token.index - 1]
            if (prev.is_word and prev.lower not in STOP_WORDS and prev.index not in members
                    and verb_lemma(prev.lower) is None and not prev.lower.endswith("'s") and not _is_name(prev)):
                words.insert(0, prev.lower)
        return " ".join(words), SETTINGS[lower]
    return None


def _setting_place(setting: str | None) -> Place | None:
    if not setting:
        return None
    return SETTINGS.get(setting.split()[-1])


def read_shot(text: str, cast: tuple[CastMember, ...] | list[CastMember], previous: CastMember | None = None,
              carried_setting: str | None = None) -> Reading:
    """What the rules read in ``text``; ``previous`` is who "he"/"she" is, ``carried_setting`` the setting
    of earlier shots."""
    tokens = tokenize(text)
    found = mentions(tokens, list(cast))
    members = dict(found)
    mentioned: list[str] = []
    for _, member in found:
        if member.name not in mentioned:
            mentioned.append(member.name)
    subject_words = frozenset(alias for member in cast for alias in member.aliases)
    hits = [hit for hit in find_verbs(tokens, subject_words) if not hit.negated]
    nobody = Subject(None, GENERIC_BODY, "", "default")

    def rank(hit: VerbHit) -> tuple:
        if _thing_before(tokens, hit, members) is not None:
            return (0, 0, -hit.token.index)                 # "his hat flew off": no character moves
        object_class, _ = _find_object(tokens, hit, members, nobody)   # a verb with an object is specific
        return (hit.action.strength, int(object_class is not None), -hit.token.index)

    best = max(hits, key=rank) if hits else None
    subject = None
    if best is not None:
        thing = _thing_before(tokens, best, members)
        if thing is not None and best.action.strength <= 1:  # "the old mill stood": a still scene
            best = None
        elif thing is not None:                              # nobody moves: the thing is the motion
            subject = Subject(None, thing, thing, "thing")
        else:
            subject = _find_subject(tokens, best.token.index, members, previous)
    if subject is None:
        if previous is not None and best is not None and (not mentioned or previous.name in mentioned):
            subject = Subject(previous, previous.body, "", "carried")
        elif mentioned:
            member = next(m for m in cast if m.name == mentioned[0])
            subject = Subject(member, member.body, "", "named")
        else:
            subject = Subject(None, GENERIC_BODY, "", "default")
    object_class = object_phrase = None
    if best is not None:
        object_class, object_phrase = _find_object(tokens, best, members, subject)
    setting_found = _find_setting(tokens, members)
    if setting_found is not None:
        setting, place, from_text = setting_found[0], setting_found[1], True
    else:
        setting, place, from_text = carried_setting, _setting_place(carried_setting), False
    return Reading(tokens, tuple(mentioned), best, best.action if best else STILL, subject, object_class,
                   object_phrase, setting, place, from_text, hits)


# -- writing ---------------------------------------------------------------------------------------------


def _speed(reading: Reading) -> str:
    if reading.verb is None:
        return ""
    i = reading.verb.token.index
    window = reading.tokens[max(0, i - 2):i] + reading.tokens[i + 1:i + 5]
    for token in window:
        if token.lower in SPEED_WORDS:
            return SPEED_WORDS[token.lower]
    member = reading.subject.member
    return member.manner if member is not None else ""


def motion_query(reading: Reading) -> str:
    """``<body> <action> [speed] [path]``: the movement only, with the stand-in body."""
    action, subject = reading.action, reading.subject
    if reading.verb is None and not reading.mentioned and reading.setting:
        setting = reading.setting
        article = "the" if setting.split()[-1] in _MASS_NOUNS else ("an" if setting[0] in "aeiou" else "a")
        return f"a view of {article} {setting}"
    if subject.how == "thing" and reading.verb is not None:      # "a hat flying", "a river rushing"
        return f"{subject.body} {gerund(reading.verb.lemma)}"
    body = subject.body
    with_object = action.phrase_for(reading.object_class, reading.object_phrase)
    object_used = with_object != action.phrase
    if (action.hands or (object_used and reading.object_class in HAND_OBJECTS)) and body in ANIMAL_BODIES:
        body = GENERIC_BODY
    phrase = (None if object_used else dict(action.bodies).get(body)) or with_object
    words = [body, phrase]
    if action.moves and phrase.split()[0] in _GROUND_ACTIONS:
        speed = _speed(reading)
        if speed and speed not in phrase:
            words.append(speed)
        if reading.place is not None and not object_used and not reading.place.path.endswith("sky"):
            path = reading.place.path
            if words[1].split()[-1] == path.split()[0]:             # "walking across" + "across a field"
                words[1] = words[1].rsplit(" ", 1)[0]
            words.append(path)
    query = " ".join(words)
    return " ".join(query.split()[:MAX_QUERY_WORDS])


def _member_phrase(member: CastMember, weight: float) -> str:
    return weighted(f"{member.token} {plain_words(member.class_word)}", weight)


def _rest_words(reading: Reading, hit: VerbHit, members: dict[int, CastMember], skip: set[str],
                placed: list[bool], end: int | None = None) -> list[str]:
    tokens = reading.tokens
    start = hit.token.index + 1
    if hit.lemma:
        own = verb_lemma(hit.token.lower)
        if own != hit.lemma and start < len(tokens) and tokens[start].is_word:
            start += 1                                  # "fell asleep" → sleeping; "set off" → walking
    if end is None:
        end = _clause_end(tokens, start, MAX_REST_WORDS)
    words: list[str] = []
    setting_noun = reading.setting.split()[-1] if reading.setting and reading.setting_from_text else None
    j = start
    while j < end:
        token = tokens[j]
        member = members.get(j)
        if member is not None:
            if member.name not in skip:
                words.append(_member_phrase(member, SECOND_WEIGHT))
                skip.add(member.name)
            else:
                words.append(plain_words(token.text))
        elif setting_noun and token.lower == setting_noun and not placed[0]:
            phrase = plain_words(reading.setting)
            if len(phrase.split()) == 2 and words and words[-1].lower() == phrase.split()[0]:
                words.pop()
            words.append(weighted(phrase, SETTING_WEIGHT))
            placed[0] = True
        elif token.is_word:
            cleaned = plain_words(token.text)
            if cleaned:
                words.append(cleaned)
        j += 1
    while words and words[-1].lower() in STOP_WORDS:
        words.pop()
    return [w for w in words if w]


def _scene_words(reading: Reading, members: dict[int, CastMember], used: set[str], placed: list[bool]
                 ) -> list[str]:
    """The first sentence of the text as caption words, characters and setting weighted."""
    end = next((t.index for t in reading.tokens if t.text in _SENTENCE_END), len(reading.tokens))
    start = Token("", -1, 0, 0)
    hit = VerbHit(start, "", STILL, False)
    return _rest_words(reading, hit, members, used, placed, end=min(end, MAX_SCENE_WORDS))


def _verb_words(hit: VerbHit) -> str:
    return gerund(hit.lemma) if hit.token.lower != gerund(hit.lemma) else hit.token.lower


def caption(reading: Reading, request: ShotRequest) -> str:
    """The compel-weighted caption: subject and action, the other characters, the setting, the style."""
    members = {i: m for i, m in mentions(reading.tokens, list(request.cast))}
    subject = reading.subject
    placed = [False]
    used: set[str] = set()
    parts: list[str] = []
    main: list[str] = []
    if subject.member is not None:
        main.append(_member_phrase(subject.member, CHARACTER_WEIGHT))
        used.add(subject.member.name)
    elif subject.phrase:
        main.append(subject.phrase)
    if reading.verb is not None:
        main.append(_verb_words(reading.verb))
        main += _rest_words(reading, reading.verb, members, used, placed)
    elif main:
        main.append("standing")
    else:                                   # no mover, no movement: the text describes the scene
        main += _scene_words(reading, members, used, placed)
    parts.append(" ".join(main))
    previous = subject.member
    for name in list(reading.mentioned) + list(request.required):
        if name in used:
            continue
        member = request.member(name)
        used.add(name)
        piece = [_member_phrase(member, SECOND_WEIGHT)]
        for hit in reading.hits:
            if hit is reading.verb:
                continue
            found = _find_subject(reading.tokens, hit.token.index, members, previous)
            if found is not None and found.member is member:
                piece.append(_verb_words(hit))
                piece += _rest_words(reading, hit, members, used, placed)
                break
        parts.append(" ".join(piece))
    if reading.setting and not placed[0]:
        noun = reading.setting.split()[-1]
        place = reading.place
        plural_or_mass = (noun.endswith("s") and noun not in ("grass", "moss")) or noun in _MASS_NOUNS
        article = "the" if plural_or_mass else ("an" if reading.setting[0] in "aeiou" else "a")
        preposition = place.preposition if place is not None else "in"
        parts.append(f"{preposition} {article} {weighted(plain_words(reading.setting), SETTING_WEIGHT)}")
    style = plain_words(request.style)
    if style:
        parts.append(style)
    return ", ".join(part for part in parts if part.strip())


def negative_prompt(reading: Reading, request: ShotRequest, names: list[str]) -> str:
    """The story's negative prompt plus the stand-in bodies of animal characters (a hare rendered from a
    dog's motion should not look like a dog)."""
    extras: list[str] = []
    for name in names:
        member = request.member(name)
        head = member.class_word.lower().split()[-1]
        being = being_for(head) or being_for(member.name)
        if being is None or being.kind != "animal":
            continue
        noun = member.body.split()[-1]
        if noun in (head, "bird") or noun in extras:
            continue
        extras.append("human" if noun == "person" else noun)
    base = request.negative_prompt.strip().strip(",")
    return ", ".join(part for part in [base, *extras] if part)


def analysis(reading: Reading, query: str) -> ShotAnalysis:
    subject = reading.subject
    if subject.member is not None:
        who = (f"{subject.member.name} ({subject.member.token} {subject.member.class_word}, {subject.how}), "
               f"moves like {subject.body}")
    elif subject.how == "thing":
        who = f"no character moves; {subject.phrase} does"
    elif subject.phrase:
        who = f"{subject.phrase} (not a story character), moves like {subject.body}"
    else:
        who = f"no character named; {subject.body}"
    if reading.verb is not None:
        what = f"'{reading.verb.token.text}' ({reading.verb.lemma}) -> {query}"
    else:
        what = f"no movement named -> {query}"
    if reading.setting:
        where = f"{reading.setting} ({'named in this shot' if reading.setting_from_text else 'from an earlier shot'})"
    else:
        where = "not named"
    return ShotAnalysis(character=who, action=what, setting=where)


def previous_member(request: ShotRequest) -> CastMember | None:
    name = request.state.get("last_subject") if request.state else None
    return next((m for m in request.cast if m.name == name), None)


def plan_shot(request: ShotRequest) -> tuple[ShotPlan, Reading]:
    """The rules plan of one shot and what the rules read in it."""
    reading = read_shot(request.text, request.cast, previous_member(request), request.setting)
    query = motion_query(reading)
    text = caption(reading, request)
    names = [m.name for m in request.cast if f"{m.token} " in text]
    plan = ShotPlan(analysis=analysis(reading, query), motion_query=query, caption=text,
                    negative_prompt=negative_prompt(reading, request, names))
    return plan, reading


class RulesPlanner:
    """The planner backend that needs nothing: :func:`plan_shot` for every shot."""

    name = "rules"

    def plan(self, request: ShotRequest) -> PlanOutcome:
        plan, _ = plan_shot(request)
        return PlanOutcome(plan=plan)

    def describe(self) -> dict:
        return {"backend": self.name}
