"""The rules planner, passage splitting, caption weights and the validation of planned shots."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from storyboard import load_storyboard, parse_storyboard
from storyboard.caption_weights import caption_problems, caption_weights_parse, parse_caption
from storyboard.motion_lexicon import gerund, verb_lemma
from storyboard.passage_split import PassageError, limit_events, parse_passage, split_events, split_sentences
from storyboard.planner import complete_storyboard, plan_passage
from storyboard.shot_plan import PlanRejected, ShotRequest, validate_plan
from storyboard.story_characters import cast_member, detect_cast, load_characters_file
from storyboard.verb_phrases import find_verbs, tokenize

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "data" / "examples"
PASSAGES = sorted(EXAMPLES.glob("*.txt"))


def test_there_are_example_passages():
    assert {p.name for p in PASSAGES} >= {"hare-and-tortoise.txt", "fox-and-grapes.txt", "road-to-hollowmere.txt"}


@pytest.mark.parametrize("path", PASSAGES, ids=lambda p: p.stem)
def test_rules_plan_every_example_passage_into_a_usable_storyboard(path):
    passage = parse_passage(path.read_text())
    story, report = plan_passage(passage.text, title=passage.title, style="watercolour, soft light")
    assert len(story.shots) >= 4
    names = [(name, c.token) for name, c in story.characters.items()]
    assert names, "the rules should find the passage's characters"
    for shot, record in zip(story.shots, report["shots"]):
        query = shot.motion_query
        assert query and re.search(r"[a-z]{3}", query)
        for name, token in names:
            assert not re.search(rf"\b{name}\b", query, re.I) and token not in query, (name, query)
        assert caption_weights_parse(shot.caption), shot.caption
        assert shot.caption.endswith(", watercolour, soft light")
        for name in shot.characters:
            assert f"({story.characters[name].token} {story.characters[name].class_word})1." in shot.caption
        assert shot.analysis.startswith("character: ") and "; action: " in shot.analysis
        assert record["backend"] == "rules" and record["problems"] == [] and record["fallback"] is None
    assert any(shot.characters for shot in story.shots)
    parse_storyboard(story.model_dump(mode="json", exclude_none=True))     # a valid storyboard file
    again, _ = plan_passage(passage.text, title=passage.title, style="watercolour, soft light")
    assert again.model_dump() == story.model_dump()                         # deterministic


def plan_one(text: str, cast=None, style: str = "") -> tuple[str, str, list[str]]:
    story, _ = plan_passage(text, cast=cast, style=style)
    shot = story.shots[0]
    return shot.motion_query, shot.caption, shot.characters


@pytest.mark.parametrize("text, query", [
    ("The race begins and the hare sprints far ahead across the meadow.", "a dog running across a field"),
    ("The fox jumps for the grapes.", "a dog jumping"),
    ("An elf plays with a butterfly in the forest, and the elf laughs.", "a child chasing a butterfly"),
    ("The tortoise plods along the dusty road.", "a person walking slowly along a road"),
    ("The knight rode his horse to the castle.", "a man riding a horse"),
    ("The crow flew over the farmhouse.", "a bird flying"),
    ("The fox played the lute by the fire.", "a person playing guitar"),   # no dog plays a lute
    ("The hare did not run; instead the hare slept under a tree.", "a dog sleeping"),
    ("The dragon swooped down on the village.", "a bird flying"),
    ("The boy climbed the old apple tree.", "a boy climbing a tree"),            # the head of "apple tree"
    ("The fox crossed the meadow.", "a dog walking across a field"),            # not "across across"
    ("The wizard laughed as his cloak flew away.", "a man laughing"),           # a cloak is not a mover
    ("The girl jumped up and caught the ball.", "a girl catching a ball"),      # the specific action wins
    ("The dog chased the ball across the yard.", "a dog chasing a ball"),       # "dog" is its own stand-in
])
def test_rules_queries_name_real_footage(text, query):
    story, report = plan_passage(text)
    assert story.shots[0].motion_query == query
    assert report["shots"][0]["problems"] == []                 # the rules' own plan passes validation


def test_rules_caption_weights_characters_setting_and_style():
    cast, _ = load_characters_file(EXAMPLES / "fable-characters.json")
    query, caption, characters = plan_one("In the sunny meadow the hare sprints far ahead.", cast, "watercolor")
    assert query == "a dog running across a field"
    assert caption == "(<hare> rabbit)1.3 sprinting far ahead, in a (sunny meadow)1.1, watercolor"
    assert characters == ["hare"]
    assert parse_caption(caption) == [("<hare> rabbit", 1.3), ("sprinting far ahead, in a", 1.0),
                                      ("sunny meadow", 1.1), (", watercolor", 1.0)]


def test_pronouns_and_settings_carry_from_shot_to_shot():
    story, _ = plan_passage("The hare raced across the meadow. Then he stopped and laughed. He sat down.")
    assert [s.characters for s in story.shots] == [["hare"], ["hare"], ["hare"]]
    assert [s.motion_query for s in story.shots] == ["a dog running across a field", "a dog laughing",
                                                     "a dog sitting down"]
    assert "(meadow)1.1" in story.shots[1].caption and "(meadow)1.1" in story.shots[2].caption


def test_detect_cast_finds_beings_and_acting_names_only():
    text = ("Mira, a young shepherd girl, left the cottage. A man passed by. In Greywater the fox waited. "
            "\"Come,\" said Tobin. The miller's son waved. Rain fell.")
    cast = {m.name: m for m in detect_cast(text)}
    assert set(cast) == {"mira", "fox", "tobin"}
    assert cast["mira"].class_word == "young girl" and cast["mira"].body == "a girl"
    assert cast["fox"].body == "a dog" and cast["tobin"].class_word == "person"


def test_scenes_without_movers_and_things_that_move():
    shot = plan_passage("Rain fell softly on the quiet village.")[0].shots[0]
    assert (shot.motion_query, shot.caption, shot.characters) == (
        "rain falling", "rain falling softly on the (quiet village)1.1", [])
    shot = plan_passage("The old mill stood by the river. Nothing moved in the valley.")[0].shots[0]
    assert shot.motion_query == "a view of an old mill"                   # nothing moves: the scene
    assert shot.caption == "The (old mill)1.1 stood by the river"
    assert plan_passage("The boat sailed past the old harbour.")[0].shots[0].motion_query == "a boat sailing"


def test_names_in_any_script_and_pronouns_without_a_previous_shot():
    story, _ = plan_passage('"Hello," said Zoë. She smiled and ran to the well, where Old Pétur waited.')
    assert {name: c.token for name, c in story.characters.items()} == {"zoe": "<zoe>", "petur": "<petur>"}
    shot = story.shots[0]
    assert shot.motion_query == "a person running"
    assert shot.caption == "(<zoe> person)1.3 running to the well, (<petur> person)1.2 waiting"


def test_verbs_are_read_in_context():
    def lemmas(text):
        return [(h.lemma, h.negated) for h in find_verbs(tokenize(text))]
    assert lemmas("The race begins and the hare races off.") == [("race", False)]
    assert lemmas("After a long leap, it did not jump again.") == [("jump", True)]
    assert lemmas("In spring the fox fell asleep.") == [("sleep", False)]
    assert lemmas("They set off at dawn.") == [("go", False)]
    assert (verb_lemma("ran"), verb_lemma("sprinted"), verb_lemma("dances")) == ("run", "sprint", "dance")
    assert [gerund(v) for v in ("run", "dance", "lie", "plod", "gallop", "flee", "visit")] == [
        "running", "dancing", "lying", "plodding", "galloping", "fleeing", "visiting"]


def test_passages_split_into_single_events():
    text = ('Mr. Fox walked to St. Ives. "Stop!" cried the crow. It was hot. The fox leapt, then the crow '
            'flew off; the hare ran home. The fox leapt up, then fell.')
    assert split_sentences(text)[:2] == ["Mr. Fox walked to St. Ives.", '"Stop!" cried the crow.']
    events = split_events(text)
    assert events == ["Mr. Fox walked to St. Ives.", '"Stop!" cried the crow.',
                      "It was hot. The fox leapt.", "The crow flew off.", "The hare ran home.",
                      "The fox leapt up, then fell."]
    # words 6 4 6 4 4 6: join 3+4, then 0+1, then 1+2 (the earlier of two ties), then the last two
    assert limit_events(events, 2) == [" ".join(events[:2]), " ".join(events[2:])]
    assert limit_events(events, None) == events


def test_passage_title_and_empty_passages():
    assert parse_passage("The Fox\n\nThe fox ran.").title == "The Fox"
    assert parse_passage("The fox ran.\nIt was fast.").title is None
    for bad in ("", "   \n\n", "...\n!!"):
        with pytest.raises(PassageError, match="empty"):
            parse_passage(bad)


@pytest.mark.parametrize("caption, reason", [
    ("(<hare> rabbit)1.3 running (meadow", "never closed"),
    ("running) fast", "without its"),
    ("(<hare> rabbit)3 running", "weight 3"),
    ("(<hare> rabbit)0.2 running", "weight 0.2"),
    ('("a", "b").blend(1, 1)', "operator"),
    ("a [b] c", "'[]'"),
    ("   ", "empty"),
])
def test_captions_that_do_not_parse(caption, reason):
    assert not caption_weights_parse(caption)
    assert reason in caption_problems(caption)[0]


def test_captions_that_parse():
    for caption in ("(<hare> rabbit)1.3 sprinting across a (sunlit meadow)1.1, watercolor",
                    "a fox, a crow, a tree", "(a (b)1.2)1.3 c", "rock+ climbing"):
        assert caption_weights_parse(caption), caption


def request_for_hare(**changes) -> ShotRequest:
    hare = cast_member("hare", "<hare>", "rabbit", body="a dog")
    fox = cast_member("fox", "<fox>", "fox")
    fields = {"shot_id": "s", "text": "The hare sprints.", "cast": (hare, fox), "required": ("hare",)}
    fields.update(changes)
    return ShotRequest(**fields)


def plan_json(**changes) -> str:
    plan = {"analysis": {"character": "the hare, like a dog", "action": "sprinting", "setting": "a meadow"},
            "motion_query": "a dog running", "caption": "(<hare> rabbit)1.3 sprinting, (meadow)1.1",
            "negative_prompt": "blurry"}
    plan.update(changes)
    return json.dumps(plan)


@pytest.mark.parametrize("changes, reason", [
    ({"motion_query": "the hare running"}, "off-topic: motion_query names the character 'hare'"),
    ({"motion_query": "a dog chasing Fox"}, "off-topic: motion_query names the character 'fox'"),
    ({"motion_query": "an elf running"}, "names 'elf'"),
    ({"motion_query": "  "}, "motion_query: empty"),
    ({"motion_query": "a dog " + "go " * 17}, "words (at most 16)"),
    ({"motion_query": "a dog " + "running " * 20}, "characters (at most 120)"),
    ({"motion_query": "a (dog)1.2 running"}, "brackets"),
    ({"caption": "a dog in a meadow"}, "off-topic: caption leaves out <hare>"),
    ({"caption": "(<hare> rabbit)1.3 and (<wolf> wolf)1.2"}, "<wolf>, which is not the token"),
    ({"caption": "(<hare> rabbit)1.3 sprinting\u202e"}, "control characters"),
    ({"caption": "(<hare> rabbit)1.3 " + "x" * 500}, "caption: 519 characters (at most 400)"),
    ({"negative_prompt": 3}, "schema: negative_prompt: must be a string"),
    ({"script": "rm -rf /"}, "schema: script: unknown field"),
])
def test_invalid_plans_are_rejected_with_a_reason(changes, reason):
    with pytest.raises(PlanRejected, match=re.escape(reason)):
        validate_plan(plan_json(**changes), request_for_hare())


def test_answers_inside_prose_are_found_and_duplicates_refused():
    plan = validate_plan("Here you go:\n```json\n" + plan_json() + "\n```", request_for_hare())
    assert plan.motion_query == "a dog running"
    assert plan.analysis_text() == "character: the hare, like a dog; action: sprinting; setting: a meadow"
    with pytest.raises(PlanRejected, match="appears twice"):
        validate_plan('{"motion_query": "a", "motion_query": "b"}', request_for_hare())
    with pytest.raises(PlanRejected, match="no JSON object"):
        validate_plan("I cannot help with that.", request_for_hare())


def test_shots_without_characters_must_stay_on_topic():
    request = request_for_hare(text="Rain falls on the old mill.", required=())
    off = plan_json(caption="a spaceship over mars", analysis={"character": "none", "action": "hovering",
                                                               "setting": "space"})
    with pytest.raises(PlanRejected, match="off-topic: the caption and analysis share no word"):
        validate_plan(off, request)
    assert validate_plan(plan_json(caption="rain over an (old mill)1.1"), request)


def test_complete_storyboard_fills_only_what_is_missing(tmp_path):
    data = json.loads((EXAMPLES / "fable.json").read_text())
    for field in ("motion_query", "caption"):
        del data["shots"][1][field]
    del data["shots"][2]["caption"]
    (tmp_path / "fable.json").write_text(json.dumps(data))
    story = load_storyboard(tmp_path / "fable.json")
    completed, records = complete_storyboard(story, "rules")
    assert [r["shot"] for r in records] == ["sprint", "plod"]
    sprint, plod = completed.shot("sprint"), completed.shot("plod")
    assert sprint.motion_query == "a dog running across a field"
    assert sprint.caption == ("(<hare> rabbit)1.3 sprinting far ahead, in a (meadow)1.1, watercolour storybook "
                              "illustration, soft morning light, green meadow")
    assert records[0]["wrote"] == {"motion_query": sprint.motion_query, "caption": sprint.caption,
                                   "negative_prompt": sprint.negative_prompt, "analysis": sprint.analysis}
    assert records[0]["backend"] == "rules" and records[0]["fallback"] is None
    assert plod.motion_query == "a person walking slowly" and "motion_query" not in records[1]["wrote"]
    assert plod.caption.startswith("(<tortoise> turtle)1.3 walking") and "<hare>" not in plod.caption
    assert sprint.tau == 0.6 and completed.source == story.source            # everything else kept
    assert completed.shot("challenge") == story.shot("challenge")
    again, more = complete_storyboard(story, "rules")
    assert again.model_dump() == completed.model_dump()                      # deterministic
    same, none = complete_storyboard(completed)
    assert same is completed and none == []
