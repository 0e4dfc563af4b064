"""The endpoint planner against a real loopback HTTP server speaking the chat-completions API.

The server (tests/scripted_chat_server.py) answers good, malformed, schema-invalid, off-topic, slow and
error replies; the planner must parse the good ones, retry the rest with growing waits, honour its
timeout, fall back to the rules planner (and say so), and cache answers so a second plan asks nothing.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from scripted_chat_server import Reply, ScriptedChatServer, answer, good_answer, good_plan, shot_of, status

from storyboard import load_storyboard
from storyboard.caption_weights import caption_weights_parse
from storyboard.plan_cli import main as plan_main
from storyboard.planner import complete_storyboard, make_planner, plan_passage
from storyboard.shot_plan import shot_plan_json_schema
from storyboard.story_characters import load_characters_file

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "data" / "examples"
PASSAGE = "The race begins and the hare sprints far ahead. The tortoise crosses the finish line and waves."
SECRET = "sk-test-do-not-leak-7731"


@pytest.fixture
def cast():
    members, _ = load_characters_file(EXAMPLES / "fable-characters.json")
    return members


@pytest.fixture(autouse=True)
def no_llm_environment(monkeypatch):
    for name in ("STORYREEL_LLM_BASE_URL", "OPENAI_BASE_URL", "STORYREEL_LLM_MODEL", "STORYREEL_LLM_API_KEY",
                 "OPENAI_API_KEY", "STORYREEL_LLM_MODEL_PATH"):
        monkeypatch.delenv(name, raising=False)


def endpoint(server, tmp_path, **options):
    settings = {"base_url": server.url, "model": "scripted-model", "api_key": SECRET, "timeout": 5.0, "retries": 2,
                "backoff": 0.01, "cache_dir": tmp_path / "cache"}
    settings.update(options)
    return make_planner("openai", **settings)


def plan(server, tmp_path, cast, text=PASSAGE, **options):
    return plan_passage(text, title="Race", cast=cast, style="watercolour",
                        planner=endpoint(server, tmp_path, **options))


def test_good_answers_are_used_and_a_second_plan_is_answered_from_the_cache(tmp_path, cast):
    with ScriptedChatServer([good_answer]) as server:
        story, report = plan(server, tmp_path, cast)
        assert len(server.requests) == 2
        assert [r["backend"] for r in report["shots"]] == ["openai", "openai"]
        assert [r["attempts"] for r in report["shots"]] == [1, 1] and report["counts"]["fallbacks"] == 0
        body = server.requests[0]
        assert body["model"] == "scripted-model" and body["temperature"] == 0.0
        assert body["response_format"]["type"] == "json_schema"
        assert body["response_format"]["json_schema"]["schema"] == shot_plan_json_schema()
        assert shot_of(body)["must_include"] == ["<hare>"] and shot_of(server.requests[1])["must_include"] == [
            "<tortoise>"]
        assert server.headers[0]["authorization"] == f"Bearer {SECRET}"
        first = story.shots[0]
        assert first.motion_query == "a dog running across a field"
        assert first.caption == "(<hare> rabbit)1.3 running, in a (green meadow)1.1, watercolour"
        assert first.characters == ["hare"] and first.analysis.startswith("character: ")

        again, second = plan(server, tmp_path, cast)
        assert len(server.requests) == 2                      # nothing asked
        assert [r["cached"] for r in second["shots"]] == [True, True]
        assert second["counts"]["requests"] == 0 and second["counts"]["cache_hits"] == 2
        assert again.model_dump() == story.model_dump()
    assert SECRET not in json.dumps(report) and SECRET not in json.dumps(second)
    for file in (tmp_path / "cache").rglob("*.json"):
        assert SECRET not in file.read_text()


def test_malformed_and_invalid_answers_are_retried_with_the_reason(tmp_path, cast):
    not_json = answer('{"analysis": {"character": "hare", ')
    wrong_schema = answer(json.dumps({"motion_query": "a dog running", "caption": "x", "extra": 1}))
    html = Reply(200, b"<html>proxy error</html>", {"Content-Type": "text/html"})
    with ScriptedChatServer([html, not_json, wrong_schema, good_answer]) as server:
        story, report = plan(server, tmp_path, cast, text="The hare sprints far ahead.", retries=3)
        record = report["shots"][0]
        assert record["backend"] == "openai" and record["attempts"] == 4 and record["fallback"] is None
        assert record["problems"][0].startswith("malformed")
        assert record["problems"][1].startswith("malformed JSON")
        assert record["problems"][2].startswith("schema:") and "analysis" in record["problems"][2]
        retry = server.requests[3]["messages"]
        assert [m["role"] for m in retry] == ["system", "user", "assistant", "user"]
        assert "refused" in retry[-1]["content"] and "schema" in retry[-1]["content"]
        assert story.shots[0].motion_query == "a dog running across a field"


def off_topic(body):
    plan = good_plan(body, query="the hare sprinting through <hare> land")
    return answer(json.dumps(plan))


def bad_weights(body):
    plan = good_plan(body)
    plan["caption"] = plan["caption"].replace(")1.3", ")7")
    return answer(json.dumps(plan))


@pytest.mark.parametrize("step, reason", [(off_topic, "off-topic: motion_query names the character 'hare'"),
                                          (bad_weights, "caption: weight 7")])
def test_an_answer_that_stays_wrong_falls_back_to_the_rules(tmp_path, cast, step, reason):
    with ScriptedChatServer([step]) as server:
        story, report = plan(server, tmp_path, cast, text="The hare sprints far ahead.", retries=1)
        assert len(server.requests) == 2                      # the first attempt and one retry
        record = report["shots"][0]
        assert record["backend"] == "rules" and record["fallback"].startswith("openai: " + reason)
        assert len(record["problems"]) == 2
        assert report["counts"] == {"shots": 1, "by_backend": {"rules": 1}, "fallbacks": 1, "cache_hits": 0,
                                    "requests": 2}
        shot = story.shots[0]
        assert shot.motion_query == "a dog running"       # the rules' query
        assert "hare" not in shot.motion_query and caption_weights_parse(shot.caption)
        assert not list((tmp_path / "cache").rglob("*.json"))           # refused answers are not cached


def test_slow_answers_time_out_and_a_silent_endpoint_is_given_up(tmp_path, cast):
    slow = answer("{}", delay=3.0)
    text = "The hare sprints far ahead. The tortoise walks on. The hare naps."
    with ScriptedChatServer([slow]) as server:
        started = time.monotonic()
        story, report = plan(server, tmp_path, cast, text=text, timeout=0.25, retries=1, give_up_after=2)
        elapsed = time.monotonic() - started
    # two shots of two attempts of 0.25 s (plus 10 ms waits); the third shot is not asked
    assert len(server.requests) == 4
    assert elapsed < 2.5, elapsed
    records = report["shots"]
    assert [r["backend"] for r in records] == ["rules"] * 3
    assert records[0]["problems"] == ["timed out after 0.25 s"] * 2
    assert records[0]["fallback"] == "openai: timed out after 0.25 s"
    assert records[2]["attempts"] == 0 and records[2]["fallback"].startswith("openai: endpoint not asked")
    assert all(shot.motion_query for shot in story.shots)


def test_server_errors_are_retried_with_exponential_backoff(tmp_path, cast):
    waits = []
    script = [status(500), status(503), status(429, "slow down", {"Retry-After": "0.05"}), good_answer]
    with ScriptedChatServer(script) as server:
        planner = endpoint(server, tmp_path, retries=3, backoff=0.01, sleep=waits.append)
        story, report = plan_passage("The hare sprints far ahead.", cast=cast, planner=planner)
    record = report["shots"][0]
    assert record["backend"] == "openai" and record["attempts"] == 4
    assert [p.split(":")[0] for p in record["problems"]] == ["HTTP 500", "HTTP 503", "HTTP 429"]
    assert waits == [0.01, 0.02, 0.05]                # doubled, then Retry-After (within max_backoff)


def test_an_authentication_error_is_not_retried_and_stops_the_endpoint(tmp_path, cast):
    with ScriptedChatServer([status(401, "bad key")]) as server:
        story, report = plan(server, tmp_path, cast)
        assert len(server.requests) == 1
    first, second = report["shots"]
    assert first["fallback"].startswith("openai: HTTP 401") and first["attempts"] == 1
    assert second["attempts"] == 0 and "HTTP 401" in second["fallback"]


def test_a_damaged_cache_entry_is_asked_again(tmp_path, cast):
    with ScriptedChatServer([good_answer]) as server:
        plan(server, tmp_path, cast, text="The hare sprints far ahead.")
        (entry,) = (tmp_path / "cache").rglob("*.json")
        data = json.loads(entry.read_text())
        data["answer"] = json.dumps({"motion_query": "<hare>"})
        entry.write_text(json.dumps(data))
        _, report = plan(server, tmp_path, cast, text="The hare sprints far ahead.")
        assert len(server.requests) == 2 and report["shots"][0]["cached"] is False
        _, report = plan(server, tmp_path, cast, text="The hare sprints far ahead.")
        assert len(server.requests) == 2 and report["shots"][0]["cached"] is True


def test_complete_storyboard_asks_only_for_incomplete_shots(tmp_path):
    data = json.loads((EXAMPLES / "fable.json").read_text())
    del data["shots"][1]["caption"]
    (tmp_path / "fable.json").write_text(json.dumps(data))
    story = load_storyboard(tmp_path / "fable.json")
    options = {"base_url": None, "model": "scripted-model", "cache_dir": tmp_path / "cache", "backoff": 0.01}
    with ScriptedChatServer([good_answer]) as server:
        options["base_url"] = server.url
        completed, records = complete_storyboard(story, **options)       # openai: a base URL is given
        assert len(server.requests) == 1
        assert shot_of(server.requests[0])["must_include"] == ["<hare>"]
        (record,) = records
        assert {k: record[k] for k in ("shot", "backend", "fallback", "attempts", "cached")} == {
            "shot": "sprint", "backend": "openai", "fallback": None, "attempts": 1, "cached": False}
        assert sorted(record["wrote"]) == ["analysis", "caption", "negative_prompt"]   # never motion_query
        sprint = completed.shot("sprint")
        assert sprint.motion_query == "a dog running across a field"      # kept
        assert sprint.caption == record["wrote"]["caption"] == (
            "(<hare> rabbit)1.3 running, in a (green meadow)1.1, watercolour storybook illustration, soft morning "
            "light, green meadow")
        assert sprint.negative_prompt == "blurry, extra limbs" and sprint.analysis.startswith("character: ")
        assert completed.shot("challenge") == story.shot("challenge")

        again, none = complete_storyboard(completed, **options)
        assert again is completed and none == [] and len(server.requests) == 1


def test_plan_story_cli_with_an_endpoint_never_shows_the_key(tmp_path, monkeypatch):
    monkeypatch.setenv("MY_LLM_KEY", SECRET)
    out = tmp_path / "story.json"
    with ScriptedChatServer([good_answer]) as server:
        result = CliRunner().invoke(plan_main, [
            str(EXAMPLES / "hare-and-tortoise.txt"), "--out", str(out), "--llm-base-url", server.url,
            "--llm-model", "scripted-model", "--llm-api-key-env", "MY_LLM_KEY", "--cache-dir", str(tmp_path / "c"),
            "--characters", str(EXAMPLES / "fable-characters.json"), "--style", "watercolour"])
        assert result.exit_code == 0, result.output
        assert len(server.requests) == 4 and server.headers[0]["authorization"] == f"Bearer {SECRET}"
    report = json.loads((tmp_path / "story.plan.json").read_text())
    assert report["planner"]["backend"] == "openai" and report["planner"]["api_key"] == "set"
    assert report["counts"]["by_backend"] == {"openai": 4}
    story = load_storyboard(out)
    assert [s.characters for s in story.shots] == [["hare", "tortoise"], ["hare"], ["hare", "tortoise"],
                                                    ["tortoise", "hare"]]     # the order the text names them
    for text in (result.output, (tmp_path / "story.plan.json").read_text(), out.read_text()):
        assert SECRET not in text
