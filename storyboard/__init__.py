"""Storyboards: the story a render turns into a video, shot by shot.

Stage zero of **storyboard** → retrieval → structure → characters → render. A storyboard file (format
version 1, :mod:`storyboard.format`) gives the story's title and style, the render defaults, the
characters (token, class word, trained embedding file) and the shots (text, characters, motion query,
caption, length, seed, τ, or a clip that replaces retrieval)::

    from storyboard import load_storyboard

    story = load_storyboard("data/examples/fable.json")    # StoryboardError names file and field
    for shot in story.all_shot_settings():                  # defaults merged, paths resolved
        print(shot.safe_id, shot.frames, shot.tau, shot.seed, shot.motion_query)
    key = story.settings_hash("sprint")                     # unchanged shot, unchanged key

:func:`storyboard_json_schema` is the file's JSON Schema (``render-story --schema``).
"""

from storyboard.errors import Problem, StoryboardError
from storyboard.fingerprint import shot_hash
from storyboard.format import (
    DEFAULT_NEGATIVE_PROMPT,
    FORMAT_VERSION,
    SCHEDULERS,
    Character,
    ClipOverride,
    Defaults,
    Shot,
    Storyboard,
    storyboard_json_schema,
)
from storyboard.loading import load_storyboard, parse_storyboard, save_storyboard
from storyboard.shot_ids import safe_file_stem, unique_safe_ids
from storyboard.shot_settings import ResolvedCharacter, ResolvedClip, ShotSettings, derive_seed, frames_for_duration

__all__ = [
    "Character",
    "ClipOverride",
    "DEFAULT_NEGATIVE_PROMPT",
    "Defaults",
    "FORMAT_VERSION",
    "Problem",
    "ResolvedCharacter",
    "ResolvedClip",
    "SCHEDULERS",
    "Shot",
    "ShotSettings",
    "Storyboard",
    "StoryboardError",
    "derive_seed",
    "frames_for_duration",
    "load_storyboard",
    "parse_storyboard",
    "safe_file_stem",
    "save_storyboard",
    "shot_hash",
    "storyboard_json_schema",
    "unique_safe_ids",
]

# Story planning: prose → shots (plan-story), and filling in shots that lack a motion query or caption
# (render-story calls complete_storyboard). See storyboard.planner.
from storyboard.caption_weights import caption_problems, caption_weights_parse
from storyboard.planner import BACKENDS, PlannerSetupError, complete_storyboard, make_planner, plan_passage
from storyboard.shot_plan import PlanRejected, ShotAnalysis, ShotPlan, ShotRequest, shot_plan_json_schema, validate_plan
from storyboard.story_characters import CastMember, detect_cast, load_characters_file

__all__ += [
    "BACKENDS",
    "CastMember",
    "PlanRejected",
    "PlannerSetupError",
    "ShotAnalysis",
    "ShotPlan",
    "ShotRequest",
    "caption_problems",
    "caption_weights_parse",
    "complete_storyboard",
    "detect_cast",
    "load_characters_file",
    "make_planner",
    "plan_passage",
    "shot_plan_json_schema",
    "validate_plan",
]
