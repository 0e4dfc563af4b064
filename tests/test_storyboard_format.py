"""Storyboard format v1: the example, defaults, derived values, paths, settings hashes, the schema, and
malformed storyboards, each with the exact message that names the file and the field."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest

from storyboard import (
    DEFAULT_NEGATIVE_PROMPT,
    Storyboard,
    StoryboardError,
    derive_seed,
    frames_for_duration,
    load_storyboard,
    parse_storyboard,
    save_storyboard,
    storyboard_json_schema,
    unique_safe_ids,
)

REPO = Path(__file__).resolve().parent.parent
FABLE = REPO / "data" / "examples" / "fable.json"

BASE = {
    "format_version": 1,
    "title": "Test story",
    "characters": {
        "hare": {"token": "<hare>", "class_word": "rabbit"},
        "tortoise": {"token": "<tortoise>", "class_word": "turtle"},
    },
    "shots": [
        {"id": "a", "text": "The hare runs.", "characters": ["hare"]},
        {"id": "b", "text": "The tortoise walks.", "characters": ["tortoise"]},
        {"id": "c", "text": "They meet.", "characters": ["hare", "tortoise"]},
    ],
}


def base() -> dict:
    return copy.deepcopy(BASE)


def write(folder: Path, data, name: str = "story.json") -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(data if isinstance(data, str) else json.dumps(data, indent=2))
    return path


def edited(edit) -> dict:
    data = base()
    edit(data)
    return data


# -- the example ---------------------------------------------------------------------------------------

def test_example_fable_loads_and_resolves():
    story = load_storyboard(FABLE)
    assert story.title == "The Hare and the Tortoise"
    assert [s.id for s in story.shots] == ["challenge", "sprint", "plod", "finish"]
    assert {name: (c.token, c.class_word, c.embedding) for name, c in story.characters.items()} == {
        "hare": ("<hare>", "rabbit", None), "tortoise": ("<tortoise>", "turtle", None)}
    settings = story.all_shot_settings()
    assert [s.safe_id for s in settings] == ["challenge", "sprint", "plod", "finish"]
    assert all(s.size == (256, 256) and s.fps == 8 and s.steps == 25 and s.scheduler == "ddim" for s in settings)
    assert all(s.uses_retrieval and s.motion_query and s.motion_query != s.text for s in settings)
    assert [s.frames for s in settings] == [16, 20, 16, 16]        # sprint: 2.5 s at 8 fps
    assert [s.tau for s in settings] == [0.5, 0.6, 0.5, 0.5]
    assert settings[3].seed == 7
    assert settings[1].characters[0].token == "<hare>" and settings[1].characters[0].embedding is None
    assert "<hare>" in settings[1].prompt
    assert story.source == FABLE and story.base_dir == FABLE.parent
    assert len({story.settings_hash(s.id) for s in settings}) == 4
    json.dumps([s.to_dict() for s in settings])                      # render manifests can log them


# -- defaults and derived values ---------------------------------------------------------------------

def test_defaults_merge_into_each_shot():
    data = base()
    data["defaults"] = {"width": 384, "tau": 0.3, "guidance": 6, "negative_prompt": "ugly"}
    data["shots"][1].update(tau=0.9, negative_prompt="", caption="(<tortoise> turtle)1.2 walking",
                            motion_query="a person walking slowly")
    story = parse_storyboard(data)
    a, b = story.shot_settings("a"), story.shot_settings(1)
    assert (a.width, a.height, a.frames, a.fps, a.steps) == (384, 512, 16, 8.0, 25)
    assert (a.guidance, a.tau, a.scheduler, a.negative_prompt) == (6.0, 0.3, "ddim", "ugly")
    assert (a.prompt, a.motion_query) == ("The hare runs.", "The hare runs.")   # both fall back on text
    assert (b.tau, b.negative_prompt) == (0.9, "")
    assert (b.prompt, b.motion_query) == ("(<tortoise> turtle)1.2 walking", "a person walking slowly")
    assert parse_storyboard(base()).shot_settings("a").negative_prompt == DEFAULT_NEGATIVE_PROMPT


@pytest.mark.parametrize("duration, fps, frames", [(2.5, 8, 20), (0.01, 8, 1), (0.1875, 8, 2), (1.0, 12, 12),
                                                    (2.0, 24, 48), (0.0625, 8, 1)])
def test_duration_becomes_frames(duration, fps, frames):
    data = base()
    data["defaults"] = {"fps": fps}
    data["shots"][0]["duration"] = duration
    story = parse_storyboard(data)
    assert frames_for_duration(duration, fps) == frames
    assert story.shot_settings("a").frames == frames
    assert story.shot_settings("a").duration == pytest.approx(frames / fps)


def test_seed_derivation_is_stable_and_independent_of_other_shots():
    story = parse_storyboard(base())
    seeds = [s.seed for s in story.all_shot_settings()]
    assert seeds == [derive_seed(0, "a"), derive_seed(0, "b"), derive_seed(0, "c")]
    assert len(set(seeds)) == 3 and all(0 <= s < 2**32 for s in seeds)
    assert derive_seed(42, "challenge") == 1013984936                # pinned: a change re-renders every story
    data = base()
    data["shots"].insert(0, {"id": "intro", "text": "Once upon a time."})
    assert [s.seed for s in parse_storyboard(data).all_shot_settings()][1:] == seeds
    data["defaults"] = {"seed": 1}
    assert parse_storyboard(data).shot_settings("a").seed != seeds[0]
    data["shots"][1]["seed"] = 123
    assert parse_storyboard(data).shot_settings("a").seed == 123


def test_safe_ids_are_sanitised_and_unique():
    ids = ["Shot 1: the race!", "Shot_1_the_race", "hare", "Hare", "a/b", "a:b", "../../etc", "ok-id_2", "???"]
    names = unique_safe_ids(ids)
    assert all(re.fullmatch(r"[A-Za-z0-9_-]{1,64}", n) for n in names)
    assert len({n.lower() for n in names}) == len(ids)              # distinct even on case-blind file systems
    assert names[1] == "Shot_1_the_race" and names[2] == "hare" and names[7] == "ok-id_2"   # clean ids kept
    assert names[0].startswith("Shot_1_the_race-") and names[3].startswith("Hare-")
    assert names[6] == "etc" and names[8] == "shot"
    assert unique_safe_ids(["x" * 200])[0] == "x" * 64
    assert unique_safe_ids(["Shot 1: the race!", "Shot_1_the_race"]) == names[:2]  # stable: own id alone
    data = base()
    for shot, new_id in zip(data["shots"], ["1. Start", "1_Start", "end"]):
        shot["id"] = new_id
    story = parse_storyboard(data)
    assert list(story.safe_ids()) == ["1. Start", "1_Start", "end"]
    assert story.safe_id("1_Start") == "1_Start" and story.safe_id(0).startswith("1_Start-")
    assert story.shot_settings("1. Start").safe_id == story.safe_id(0)


# -- paths ---------------------------------------------------------------------------------------------

def story_with_files(folder: Path) -> Path:
    (folder / "board" / "weights").mkdir(parents=True)
    (folder / "clips").mkdir()
    (folder / "board" / "weights" / "hare.safetensors").write_bytes(b"hare weights")
    (folder / "clips" / "run.mp4").write_bytes(b"not really a video")
    (folder / "abs.safetensors").write_bytes(b"tortoise weights")
    data = base()
    data["characters"]["hare"]["embedding"] = "weights/hare.safetensors"
    data["characters"]["tortoise"]["embedding"] = str(folder / "abs.safetensors")
    data["shots"][0]["clip"] = {"path": "../clips/run.mp4", "start": 0.5, "end": 2.5}
    return write(folder / "board", data)


def test_paths_resolve_relative_to_the_storyboard_file(tmp_path, monkeypatch):
    path = story_with_files(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    story = load_storyboard(Path("..") / "board" / "story.json")
    a = story.shot_settings("a")
    assert a.characters[0].embedding == (tmp_path / "board" / "weights" / "hare.safetensors").absolute()
    assert a.clip.path.resolve() == (tmp_path / "clips" / "run.mp4").resolve()
    assert (a.clip.start, a.clip.end, a.uses_retrieval) == (0.5, 2.5, False)
    assert story.shot_settings("b").characters[0].embedding == tmp_path / "abs.safetensors"   # absolute kept
    assert story.shots[0].clip.path == "../clips/run.mp4"           # the model keeps what the file says
    assert story.source == Path("..") / "board" / "story.json"
    assert story.base_dir.resolve() == path.parent.resolve()


def test_save_moves_relative_paths_with_the_file(tmp_path):
    story = load_storyboard(story_with_files(tmp_path))
    copy_path = tmp_path / "other" / "deeper" / "copy.json"
    saved = save_storyboard(story, copy_path)
    again = load_storyboard(copy_path)
    for reloaded in (saved, again):
        for name in ("hare", "tortoise"):
            assert reloaded.character(name).embedding.resolve() == story.character(name).embedding.resolve()
        assert reloaded.shot_settings("a").clip.path.resolve() == (tmp_path / "clips" / "run.mp4").resolve()
    written = json.loads(copy_path.read_text())
    assert written["characters"]["hare"]["embedding"] == "../../board/weights/hare.safetensors"
    assert not list(copy_path.parent.glob(".*.tmp"))                  # written atomically, nothing left over
    assert (again.title, again.defaults, again.shots[1:]) == (story.title, story.defaults, story.shots[1:])
    assert again.settings_hash("a") == story.settings_hash("a")      # same files, same hash


# -- settings hash ---------------------------------------------------------------------------------------

def hashes(data, folder: Path | None = None) -> dict[str, str]:
    story = parse_storyboard(data, base_dir=folder)
    return {shot.id: story.settings_hash(shot.id) for shot in story.shots}


def test_settings_hash_is_stable_and_tracks_only_its_shot():
    before = hashes(base())
    assert before == hashes(base())
    assert all(re.fullmatch(r"[0-9a-f]{64}", h) for h in before.values())

    def changed(edit) -> set[str]:
        after = hashes(edited(edit))
        return {shot_id for shot_id in before if after.get(shot_id) != before[shot_id]}

    assert changed(lambda d: d["shots"][1].update(text="The tortoise plods.")) == {"b"}
    assert changed(lambda d: d["shots"][1].update(tau=0.8)) == {"b"}
    assert changed(lambda d: d["shots"][1].update(tau=0.5)) == set()           # the default's value: same shot
    assert changed(lambda d: d["shots"][0].update(caption="(<hare> rabbit)1.3 running")) == {"a"}
    assert changed(lambda d: d["shots"][0].update(motion_query="a dog running")) == {"a"}
    assert changed(lambda d: d["shots"][0].update(analysis="the hare is fast")) == set()
    assert changed(lambda d: d.update(title="Another title")) == set()
    assert changed(lambda d: d["shots"].insert(0, {"id": "new", "text": "Once."})) == set()
    assert changed(lambda d: d["characters"]["hare"].update(class_word="bunny")) == {"a", "c"}
    assert changed(lambda d: d.update(defaults={"steps": 30})) == {"a", "b", "c"}
    assert changed(lambda d: d.update(style="pencil sketch")) == {"a", "b", "c"}
    story = parse_storyboard(base())
    assert story.settings_hash("a", extra={"index": "k400"}) != story.settings_hash("a", extra={"index": "ucf"})


def test_settings_hash_follows_file_contents_not_locations(tmp_path):
    story = load_storyboard(story_with_files(tmp_path))
    first = {shot.id: story.settings_hash(shot.id) for shot in story.shots}
    (tmp_path / "board" / "weights" / "hare.safetensors").write_bytes(b"retrained hare weights")
    (tmp_path / "clips" / "run.mp4").write_bytes(b"another video")
    second = {shot.id: story.settings_hash(shot.id) for shot in story.shots}
    assert {k for k in first if first[k] != second[k]} == {"a", "c"}  # a: clip and hare; c: hare; b: tortoise only
    moved = tmp_path / "moved"
    (tmp_path / "board").rename(moved)
    (moved / "weights" / "hare.safetensors").write_bytes(b"retrained hare weights")
    data = json.loads((moved / "story.json").read_text())
    data["shots"][0]["clip"]["path"] = str(tmp_path / "clips" / "run.mp4")
    assert hashes(data, moved) == second
    (moved / "weights" / "hare.safetensors").unlink()
    with pytest.raises(StoryboardError, match=r"characters\.hare\.embedding: file not found: .*hare\.safetensors"):
        parse_storyboard(data, base_dir=moved).settings_hash("a")


# -- the schema --------------------------------------------------------------------------------------------

def test_json_schema_describes_the_format():
    schema = storyboard_json_schema()
    json.dumps(schema)
    assert schema["$schema"].endswith("2020-12/schema") and "format version 1" in schema["title"]
    assert schema["required"] == ["title", "shots"] and schema["additionalProperties"] is False
    assert {"format_version", "title", "style", "defaults", "characters", "shots"} <= set(schema["properties"])
    shot = schema["$defs"]["Shot"]["properties"]
    assert {"id", "text", "characters", "motion_query", "caption", "negative_prompt", "analysis", "frames",
            "duration", "seed", "tau", "eta", "depth_range", "footage_fit", "max_speed_change", "clip",
            "consistency", "keyframe", "keyframe_image", "transition", "transition_seconds"} == set(shot)
    assert {"minimum": 0, "maximum": 1} in [{k: b[k] for k in ("minimum", "maximum") if k in b}
                                             for b in shot["tau"]["anyOf"]]
    defaults = schema["$defs"]["Defaults"]["properties"]
    assert defaults["scheduler"]["enum"] == ["ddim", "euler", "dpmpp_2m", "lcm"]
    assert defaults["width"]["multipleOf"] == 8 and defaults["width"]["default"] == 512
    assert "denoising steps" in defaults["tau"]["description"]
    assert schema["$defs"]["Character"]["properties"]["token"]["pattern"] == "^<[A-Za-z0-9_-]+>$"
    assert {"reference_images", "ip_adapter_scale"} <= set(schema["$defs"]["Character"]["properties"])
    consistency = schema["$defs"]["Consistency"]["properties"]
    assert consistency["mode"]["enum"] == ["self_attention", "off"] and consistency["rate"]["maximum"] == 1
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    validator.validate(json.loads(FABLE.read_text()))
    assert not validator.is_valid(edited(lambda d: d["shots"][0].update(tua=0.5)))
    assert not validator.is_valid(edited(lambda d: d["characters"]["hare"].update(token="hare")))


# -- malformed storyboards -----------------------------------------------------------------------------

def _clip(start, end, path="clip.mp4"):
    return lambda d: d["shots"][0].update(clip={"path": path, "start": start, "end": end})


MALFORMED = [
    ("tau-range", lambda d: d["shots"][2].update(tau=1.5), "shots[2].tau: must be between 0 and 1, got 1.5"),
    ("tau-type", lambda d: d["shots"][0].update(tau="high"), "shots[0].tau: must be a number, got 'high'"),
    ("width-multiple", lambda d: d.update(defaults={"width": 500}),
     "defaults.width: must be a multiple of 8, got 500"),
    ("width-range", lambda d: d.update(defaults={"height": 4096}),
     "defaults.height: must be between 64 and 2048, got 4096"),
    ("fps-zero", lambda d: d.update(defaults={"fps": 0}), "defaults.fps: must be more than 0 and at most 60, got 0"),
    ("steps-range", lambda d: d.update(defaults={"steps": 0}), "defaults.steps: must be between 1 and 200, got 0"),
    ("guidance-range", lambda d: d.update(defaults={"guidance": -1}),
     "defaults.guidance: must be between 0 and 30, got -1"),
    ("seed-negative", lambda d: d["shots"][1].update(seed=-3),
     "shots[1].seed: must be between 0 and 4294967295, got -3"),
    ("frames-range", lambda d: d["shots"][0].update(frames=300), "shots[0].frames: must be between 1 and 256, got 300"),
    ("frames-string", lambda d: d["shots"][0].update(frames="16"), "shots[0].frames: must be a whole number, got '16'"),
    ("frames-float", lambda d: d["shots"][0].update(frames=16.0), "shots[0].frames: must be a whole number, got 16.0"),
    ("unknown-scheduler", lambda d: d.update(defaults={"scheduler": "pndm"}),
     "defaults.scheduler: must be one of 'ddim', 'euler', 'dpmpp_2m', 'lcm', got 'pndm'"),
    ("unknown-character", lambda d: d["shots"][1].update(characters=["fox", "tortoise"]),
     "shots[1].characters[0]: unknown character 'fox' (the storyboard's characters: hare, tortoise)"),
    ("character-twice", lambda d: d["shots"][2].update(characters=["hare", "hare"]),
     "shots[2].characters[1]: character 'hare' is listed twice"),
    ("characters-not-list", lambda d: d["shots"][0].update(characters="hare"),
     "shots[0].characters: must be an array, got 'hare'"),
    ("duplicate-shot-ids", lambda d: d["shots"][2].update(id="a"),
     "shots[2].id: duplicate shot id 'a' (also shots[0].id)"),
    ("frames-and-duration", lambda d: d["shots"][0].update(frames=16, duration=2),
     "shots[0].duration: give frames or duration, not both (frames is 16, duration 2 s)"),
    ("duration-too-long", lambda d: d["shots"][0].update(duration=40),
     "shots[0].duration: 40 s at 8 fps is 320 frames; a shot has at most 256"),
    ("shot-field-typo", lambda d: d["shots"][1].update(tua=0.5), "shots[1].tua: unknown field; did you mean 'tau'?"),
    ("top-field-typo", lambda d: d.update(charcters={}), "charcters: unknown field; did you mean 'characters'?"),
    ("defaults-unknown-field", lambda d: d.update(defaults={"sampler": "ddim"}),
     "defaults.sampler: unknown field; allowed fields are consistency, depth_range, eta, footage_fit, fps, frames, "
     "guidance, height, keyframe, max_speed_change, negative_prompt, scheduler, seed, steps, tau, transition, "
     "transition_seconds, width"),
    ("token-format", lambda d: d["characters"]["hare"].update(token="hare"),
     "characters.hare.token: must look like <name>: letters, digits, '_' or '-' in angle brackets, got 'hare'"),
    ("token-space", lambda d: d["characters"]["hare"].update(token="<the hare>"),
     "characters.hare.token: must look like <name>: letters, digits, '_' or '-' in angle brackets, "
     "got '<the hare>'"),
    ("duplicate-tokens", lambda d: d["characters"]["tortoise"].update(token="<hare>"),
     "characters.tortoise.token: token '<hare>' is also the token of 'hare'"),
    ("empty-class-word", lambda d: d["characters"]["hare"].update(class_word="  "),
     "characters.hare.class_word: must not be empty"),
    ("character-name", lambda d: d["characters"].update({"Mr Fox": {"token": "<fox>", "class_word": "fox"}}),
     "characters[\"Mr Fox\"]: character names are 1-64 letters, digits, '_' or '-', got 'Mr Fox'"),
    ("embedding-not-safetensors", lambda d: d["characters"]["hare"].update(embedding="hare.pt"),
     "characters.hare.embedding: must be a .safetensors file (only safetensors are loaded), got 'hare.pt'"),
    ("lora-scale", lambda d: d["characters"]["hare"].update(scale=3),
     "characters.hare.scale: must be between 0 and 2, got 3"),
    ("caption-unknown-token", lambda d: d["shots"][0].update(caption="(<fox> fox)1.2 running"),
     "shots[0].caption: <fox> is not the token of any character"),
    ("caption-unlisted-character", lambda d: d["shots"][0].update(caption="<hare> rabbit racing <tortoise> turtle"),
     "shots[0].caption: uses <tortoise>, the token of 'tortoise', who is not in shots[0].characters"),
    ("clip-end-before-start", _clip(2.0, 1.0), "shots[0].clip.end: must be after start (2 s), got 1"),
    ("clip-end-equals-start", _clip(2.0, 2.0), "shots[0].clip.end: must be after start (2 s), got 2"),
    ("clip-negative-start", _clip(-1, 1.0), "shots[0].clip.start: must be at least 0, got -1"),
    ("clip-missing-path", lambda d: d["shots"][0].update(clip={"start": 1.0}),
     "shots[0].clip.path: required field is missing"),
    ("footage-fit", lambda d: d["shots"][0].update(footage_fit="loop"),
     "shots[0].footage_fit: must be one of 'extend', 'stretch', 'pingpong', got 'loop'"),
    ("speed-change-below-1", lambda d: d.update(defaults={"max_speed_change": 0.5}),
     "defaults.max_speed_change: must be between 1 and 8, got 0.5"),
    ("missing-text", lambda d: d["shots"][1].pop("text"), "shots[1].text: required field is missing"),
    ("blank-text", lambda d: d["shots"][1].update(text="   "), "shots[1].text: must not be empty"),
    ("missing-title", lambda d: d.pop("title"), "title: required field is missing"),
    ("empty-shots", lambda d: d.update(shots=[]), "shots: must not be empty"),
    ("shots-not-list", lambda d: d.update(shots={"a": {}}), "shots: must be an array, got an object"),
    ("defaults-not-object", lambda d: d.update(defaults=[]), "defaults: must be a JSON object, got an array"),
    ("format-version", lambda d: d.update(format_version=2),
     "format_version: this storyreel reads storyboard format version 1, got 2"),
]


@pytest.mark.parametrize("edit, expected", [pytest.param(e, m, id=i) for i, e, m in MALFORMED])
def test_malformed_storyboard_names_file_and_field(tmp_path, edit, expected):
    path = write(tmp_path, edited(edit), "fable.json")
    with pytest.raises(StoryboardError) as info:
        load_storyboard(path)
    message = str(info.value)
    assert f"{path}: {expected}" in message.splitlines()
    assert isinstance(info.value, ValueError) and info.value.source == path
    assert all(line.startswith(f"{path}: ") for line in message.splitlines())


@pytest.mark.parametrize("text, expected", [
    pytest.param('{\n  "title": "x",\n  "shots": [\n    {"id": "a" "text": "b"}\n  ]\n}',
                 "line 4, column 16: invalid JSON: Expecting ',' delimiter", id="invalid-json"),
    pytest.param('{"title": "x", "shots": [{"id": "a", "text": "b", "tau": NaN}]}',
                 "invalid JSON: NaN is not a number in JSON", id="json-nan"),
    pytest.param('{"title": "x", "shots": [{"id": "a", "text": "b", "tau": 0.1, "tau": 0.9}]}',
                 "invalid JSON: key 'tau' appears twice in one object", id="json-duplicate-key"),
    pytest.param('[{"id": "a", "text": "b"}]', "a storyboard must be a JSON object, got an array", id="json-array"),
    pytest.param("", "line 1, column 1: invalid JSON: Expecting value", id="empty-file"),
])
def test_unreadable_json_names_line_and_column(tmp_path, text, expected):
    path = write(tmp_path, text, "fable.json")
    with pytest.raises(StoryboardError) as info:
        load_storyboard(path)
    assert str(info.value) == f"{path}: {expected}"


def test_missing_files_are_named_with_their_json_path(tmp_path):
    data = base()
    data["characters"]["hare"]["embedding"] = "weights/hare.safetensors"
    data["shots"][2]["clip"] = {"path": "clips/missing.mp4", "start": 0, "end": 2}
    (tmp_path / "clips").mkdir()
    (tmp_path / "clips" / "missing.mp4").mkdir()                       # a folder is not a clip
    path = write(tmp_path, data, "fable.json")
    with pytest.raises(StoryboardError) as info:
        load_storyboard(path)
    assert str(info.value).splitlines() == [
        f"{path}: characters.hare.embedding: file not found: {tmp_path / 'weights' / 'hare.safetensors'}",
        f"{path}: shots[2].clip.path: is a folder, not a file: {tmp_path / 'clips' / 'missing.mp4'}",
    ]
    assert [p.path for p in info.value.problems] == ["characters.hare.embedding", "shots[2].clip.path"]
    assert load_storyboard(path, check_files=False).shot_settings(2).clip.path == tmp_path / "clips" / "missing.mp4"


def test_missing_storyboard_file_is_named(tmp_path):
    with pytest.raises(StoryboardError) as info:
        load_storyboard(tmp_path / "nope.json")
    assert str(info.value) == f"{tmp_path / 'nope.json'}: no such storyboard file"


def test_every_problem_is_listed_on_its_own_line(tmp_path):
    data = base()
    data["defaults"] = {"width": 500, "tau": 2}
    data["shots"][0]["tua"] = 0.5
    data["shots"][2]["frames"] = 0
    path = write(tmp_path, data, "fable.json")
    with pytest.raises(StoryboardError) as info:
        load_storyboard(path)
    assert str(info.value).splitlines() == [
        f"{path}: defaults.width: must be a multiple of 8, got 500",
        f"{path}: defaults.tau: must be between 0 and 1, got 2",
        f"{path}: shots[0].tua: unknown field; did you mean 'tau'?",
        f"{path}: shots[2].frames: must be between 1 and 256, got 0",
    ]
    assert [p.path for p in info.value.problems] == ["defaults.width", "defaults.tau", "shots[0].tua",
                                                     "shots[2].frames"]


def test_format_version_error_hides_the_rest(tmp_path):
    data = base()
    data.update(format_version=2, scenes=[], shots=[{"id": "a", "prompt": "x"}])
    path = write(tmp_path, data, "fable.json")
    with pytest.raises(StoryboardError) as info:
        load_storyboard(path)
    assert str(info.value) == f"{path}: format_version: this storyreel reads storyboard format version 1, got 2"


def test_in_memory_storyboards_are_checked_too():
    with pytest.raises(StoryboardError) as info:
        parse_storyboard(edited(lambda d: d["shots"][2].update(tau=-0.1)))
    assert str(info.value) == "storyboard: shots[2].tau: must be between 0 and 1, got -0.1"
    with pytest.raises(StoryboardError, match=r"^llm answer: shots\[1\]\.id: duplicate shot id 'b'"):
        parse_storyboard(json.dumps(edited(lambda d: d["shots"][0].update(id="b"))), source="llm answer")
    assert isinstance(parse_storyboard(base()), Storyboard)
    with pytest.raises(KeyError, match="no shot with id 'zz'"):
        parse_storyboard(base()).shot_settings("zz")
