"""Footage at the shot's own speed: spans of the shot's duration inside cut-free scenes, the speed limit,
stretch and pingpong, scenes recorded by the index, and what render-story records."""

from __future__ import annotations

import json
import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from retrieval.footage import FootageFitError, find_footage, fit_footage, footage_sample_times, free_room
from retrieval.library import ClipSegment, Library
from retrieval.reranking import RerankOptions, rerank

REAL_CLIP = "v_SoccerJuggling_g23_c01.avi"  # 7.4 s of UCF-101 without a cut


def segment(i, score, path="a.mp4", start=0.0, end=2.0, scene=None) -> ClipSegment:
    scene_start, scene_end = scene if scene is not None else (None, None)
    return ClipSegment(i, score, score, path, start, end, 30.0, 320, 240, None, None, 1.0, scene_start, scene_end)


# -- fitting footage to a shot ---------------------------------------------------------------------------
def test_extend_takes_the_shots_duration_around_the_segment_at_real_speed():
    footage = fit_footage("a.mp4", (3.0, 5.0), (0.0, 10.0), 4.0)
    assert (footage.start, footage.end, footage.speed, footage.pingpong) == (2.0, 6.0, 1.0, False)
    near_start = fit_footage("a.mp4", (0.5, 2.5), (0.0, 10.0), 4.0)  # moved to stay inside the scene
    assert (near_start.start, near_start.end, near_start.speed) == (0.0, 4.0, 1.0)
    near_end = fit_footage("a.mp4", (8.0, 10.0), (0.0, 10.0), 4.0)
    assert (near_end.start, near_end.end) == (6.0, 10.0)
    trimmed = fit_footage("a.mp4", (3.0, 5.0), (0.0, 10.0), 1.0)  # a short shot trims the segment
    assert (trimmed.start, trimmed.end, trimmed.speed) == (3.5, 4.5, 1.0)


def test_a_room_shorter_than_the_shot_is_slowed_within_the_limit_only():
    slowed = fit_footage("a.mp4", (0.0, 2.0), (0.0, 3.0), 4.0)
    assert (slowed.start, slowed.end) == (0.0, 3.0) and slowed.speed == pytest.approx(0.75)
    with pytest.raises(FootageFitError, match=r"2.00 s of footage for a 4.00 s shot would play at 0.50x speed "
                                              r"\(slowed by 2.00x\), beyond max_speed_change 1.5"):
        fit_footage("a.mp4", (0.0, 2.0), (0.0, 2.0), 4.0)
    assert fit_footage("a.mp4", (0.0, 2.0), (0.0, 2.0), 4.0, max_speed_change=2.0).speed == pytest.approx(0.5)


def test_stretch_retimes_the_segment_itself():
    footage = fit_footage("a.mp4", (3.0, 5.0), (0.0, 10.0), 1.6, fit="stretch")
    assert (footage.start, footage.end) == (3.0, 5.0) and footage.speed == pytest.approx(1.25)
    with pytest.raises(FootageFitError, match="sped up by 2.00x"):
        fit_footage("a.mp4", (3.0, 5.0), (0.0, 10.0), 1.0, fit="stretch")


def test_pingpong_plays_a_short_room_back_and_forth_at_real_speed():
    footage = fit_footage("a.mp4", (0.0, 1.0), (0.0, 1.0), 2.0, fit="pingpong")
    assert (footage.start, footage.end, footage.speed, footage.pingpong) == (0.0, 1.0, 1.0, True)
    times = np.array(footage.sample_times(8))  # 8 frames at 4 fps: 0.125, 0.375, ..., then back
    assert times == pytest.approx([0.125, 0.375, 0.625, 0.875, 0.875, 0.625, 0.375, 0.125])
    assert np.all(np.abs(np.diff(times)[[0, 1, 2, 4, 5, 6]]) == pytest.approx(0.25))  # real speed both ways
    assert fit_footage("a.mp4", (0.0, 1.0), (0.0, 5.0), 2.0, fit="pingpong").pingpong is False  # room enough
    once = footage_sample_times(2.0, 6.0, 16)  # played once: 16 frames over 4 s are 0.25 s apart
    assert np.diff(once) == pytest.approx([0.25] * 15) and once[0] == pytest.approx(2.125)


def test_other_shots_footage_bounds_the_room():
    candidate = segment(1, 0.3, "a.mp4", 4.0, 6.0, scene=(0.0, 12.0))
    used = [segment(2, 0.3, "a.mp4", 1.0, 3.0), segment(3, 0.3, "a.mp4", 8.0, 9.0), segment(4, 0.3, "b.mp4", 6, 7)]
    assert free_room(candidate, used) == (3.0, 8.0)
    assert free_room(segment(5, 0.3, "a.mp4", 4.0, 6.0), []) == (4.0, 6.0)  # no scene recorded: the segment


def test_reranking_prefers_segments_whose_clip_can_host_the_shot():
    short = segment(1, 0.300, "a.mp4", 0, 2, scene=(0.0, 2.0))
    long = segment(2, 0.290, "b.mp4", 0, 2, scene=(0.0, 8.0))
    assert [s.segment_id for s in rerank([short, long], None, RerankOptions(duration=4.0))] == [2, 1]
    assert [s.segment_id for s in rerank([short, long], None, RerankOptions())] == [1, 2]


@dataclass
class FakeLibrary:
    found: list

    def search(self, query, k, rerank_options=None, avoid=()):
        return rerank(self.found, query, rerank_options or RerankOptions(), avoid)[:k]


def test_find_footage_passes_over_candidates_that_cannot_fill_the_shot():
    library = FakeLibrary([segment(1, 0.9, "a.mp4", 0, 2, scene=(0.0, 2.0)),
                           segment(2, 0.5, "b.mp4", 0, 2, scene=(0.0, 3.0))])
    chosen, footage = find_footage(library, "q", 4.0)
    assert chosen.segment_id == 2 and footage.speed == pytest.approx(0.75)
    with pytest.raises(FootageFitError, match=r"none of the 2 best segments for 'q' can fill a 6.00 s shot within "
                                              r"max_speed_change 1.5 \(the longest cut-free footage among them is "
                                              r"3.00 s\): use footage_fit \"pingpong\""):
        find_footage(library, "q", 6.0)
    chosen, footage = find_footage(library, "q", 6.0, fit="pingpong")
    assert chosen.segment_id == 1 and footage.pingpong and footage.speed == 1.0


# -- the index records each segment's cut-free scene --------------------------------------------------------
@pytest.fixture(scope="module")
def cut_index(tmp_path_factory, sample_clip_maker, synthetic_library):
    """An index of the synthetic clip with a hard cut at 2.5 s (5 s long)."""
    from index_builder.build import BuildOptions, build_index

    folder = tmp_path_factory.mktemp("cut_library")
    label, stem = sample_clip_maker.CUT_CLIP
    (folder / label).mkdir()
    shutil.copy(synthetic_library / label / f"{stem}.mp4", folder / label / f"{stem}.mp4")
    out = folder / "index"
    build_index(BuildOptions(out=out, paths=[folder], models="tiny", workers=1, progress=False))
    return out


def test_index_records_scenes_and_footage_never_crosses_a_cut(cut_index, sample_clip_maker):
    cut = sample_clip_maker.CUT_AT_S
    with Library.open(cut_index) as library:
        segments = library.segments(range(len(library)))
    scenes = {(round(s.start, 2), round(s.end, 2)): (round(s.scene_start, 2), round(s.scene_end, 2)) for s in segments}
    assert scenes == {(0.0, 2.0): (0.0, cut), (cut, cut + 2.0): (cut, 5.0)}
    first = next(s for s in segments if s.start == 0.0)
    footage = fit_footage(first.path, (first.start, first.end), free_room(first), 3.0)
    assert footage.end <= cut + 1e-6 and footage.speed == pytest.approx(cut / 3.0)  # slowed, not across the cut
    assert max(footage.sample_times(12)) < cut


def test_an_index_from_before_scenes_still_opens(cut_index, tmp_path):
    old = tmp_path / "index"
    shutil.copytree(cut_index, old)
    with sqlite3.connect(old / "metadata.sqlite") as db:
        db.execute("ALTER TABLE segments DROP COLUMN scene_start_s")
        db.execute("ALTER TABLE segments DROP COLUMN scene_end_s")
    with Library.open(old) as library:
        first = library.segments([0])[0]
    assert first.scene_start is None and first.scene == (first.start, first.end)
    from index_builder.store import IndexStore

    store = IndexStore(old)  # a build resumed on it gets the columns back (NULL for the old rows)
    assert {"scene_start_s", "scene_end_s"} <= {row[1] for row in store.db.execute("PRAGMA table_info(segments)")}


# -- render-story records the span and the speed --------------------------------------------------------------
def storyboard(folder: Path, clip: dict | None, shot_extra: dict | None = None) -> Path:
    shot = {"id": "juggle", "text": "a boy juggles a ball", "duration": 4.0, **(shot_extra or {})}
    if clip is not None:
        shot["clip"] = clip
    data = {"title": "speed", "defaults": {"width": 64, "height": 64, "fps": 4, "steps": 2}, "shots": [shot]}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "story.json"
    path.write_text(json.dumps(data))
    return path


def render(storyboard_path: Path, index: Path, out: Path):
    from render.cli import main

    return CliRunner().invoke(main, [str(storyboard_path), "--index", str(index), "--out", str(out), "--models",
                                     "tiny", "--no-progress"], catch_exceptions=False)


def recorded(out: Path) -> tuple[dict, dict]:
    report = json.loads((out / "report.json").read_text())
    shot = report["shots"][0]
    return shot["segment"]["footage"], shot["depth"]["source"]


def test_a_4_s_shot_from_a_long_enough_real_clip_plays_4_s_at_real_speed(tmp_path, tiny_index, real_clips):
    clip = {"path": str(real_clips / REAL_CLIP), "start": 1.0}  # no end: as much as the shot needs
    result = render(storyboard(tmp_path, clip), tiny_index, tmp_path / "out")
    assert result.exit_code == 0, result.output
    footage, depth_source = recorded(tmp_path / "out")
    assert (footage["start"], footage["end"], footage["speed"], footage["pingpong"]) == (1.0, 5.0, 1.0, False)
    times = np.array(depth_source["sample_times"])  # the depth guiding the render is of that span, at 4 fps
    assert len(times) == 16 and times[0] == pytest.approx(1.125) and np.diff(times) == pytest.approx([0.25] * 15)
    assert "1.00-5.00 s at 1.00x" in result.output  # the final table


def test_a_retrieved_shot_keeps_real_speed_inside_its_scene(tmp_path, tiny_index):
    result = render(storyboard(tmp_path, None), tiny_index, tmp_path / "out")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    segment_record = report["shots"][0]["segment"]
    footage = segment_record["footage"]
    room_start, room_end = footage["room"]
    assert room_start - 1e-6 <= footage["start"] < footage["end"] <= room_end + 1e-6
    with Library.open(tiny_index) as library:
        chosen = library.segments([segment_record["segment_id"]])[0]
    assert (room_start, room_end) == pytest.approx(chosen.scene)
    if room_end - room_start >= 4.0:
        assert footage["end"] - footage["start"] == pytest.approx(4.0) and footage["speed"] == 1.0
    else:
        assert footage["speed"] == pytest.approx((room_end - room_start) / 4.0)


def test_a_clip_too_short_is_slowed_within_the_limit_and_refused_beyond_it(tmp_path, tiny_index, real_clips):
    path = str(real_clips / REAL_CLIP)
    result = render(storyboard(tmp_path / "a", {"path": path, "start": 1.0, "end": 4.0}), tiny_index, tmp_path / "a1")
    assert result.exit_code == 0, result.output
    footage, depth_source = recorded(tmp_path / "a1")
    assert (footage["start"], footage["end"]) == (1.0, 4.0) and footage["speed"] == 0.75
    assert np.diff(depth_source["sample_times"]) == pytest.approx([0.1875] * 15)  # 3 s spread over 16 frames

    result = render(storyboard(tmp_path / "b", {"path": path, "start": 1.0, "end": 3.0}), tiny_index, tmp_path / "b1")
    assert result.exit_code == 2
    assert result.output.startswith("error: ") and len(result.output.strip().splitlines()) == 1
    assert "would play at 0.50x speed (slowed by 2.00x), beyond max_speed_change 1.5" in result.output
    assert not (tmp_path / "b1" / "shots").exists()  # refused before anything was rendered

    raised = storyboard(tmp_path / "c", {"path": path, "start": 1.0, "end": 3.0}, {"max_speed_change": 2.0})
    assert render(raised, tiny_index, tmp_path / "c1").exit_code == 0
    assert recorded(tmp_path / "c1")[0]["speed"] == 0.5

    looped = storyboard(tmp_path / "d", {"path": path, "start": 1.0, "end": 3.0}, {"footage_fit": "pingpong"})
    assert render(looped, tiny_index, tmp_path / "d1").exit_code == 0
    footage, depth_source = recorded(tmp_path / "d1")
    assert footage["pingpong"] and footage["speed"] == 1.0
    times = np.array(depth_source["sample_times"])
    assert times.max() < 3.0 and np.abs(np.diff(times)) == pytest.approx([0.25] * 7 + [0.0] + [0.25] * 7)
