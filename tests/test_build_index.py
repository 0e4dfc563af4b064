"""build-index end to end with the tiny preset: real and synthetic clips, bad input, resume, update."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from index_builder.build import BuildOptions, build_index
from index_builder.store import IndexStore
from retrieval.clip_reader import probe_video
from retrieval.index_format import ERRORS_FILE, METADATA_FILE, Manifest
from retrieval.library import Library

CUT_FREE_REAL = ["R6llTwEh07w.mp4", "WUzgd7C1pWA.mp4", "v_SoccerJuggling_g23_c01.avi",
                 "v_SoccerJuggling_g24_c01.avi", "RATRACE_wave_f_nm_np1_fr_goo_37.avi",
                 "hmdb51_Turnk_r_Pippi_Michel_cartwheel_f_cm_np2_le_med_6.avi"]
BIN = Path(sys.executable).parent


def rows(index: Path, sql: str, *args) -> list[tuple]:
    with sqlite3.connect(index / METADATA_FILE) as db:
        return db.execute(sql, args).fetchall()


def expected_windows(duration: float, window: float = 2.0, stride: float = 1.0) -> list[tuple[float, float]]:
    if duration < window:
        return [(0.0, duration)]
    count = math.floor((duration - window) / stride + 1e-4) + 1
    return [(i * stride, i * stride + window) for i in range(count)]


def test_segments_follow_each_real_clip_duration(tiny_index, real_clips):
    for name in CUT_FREE_REAL:
        path = real_clips / name
        found = rows(tiny_index, "SELECT start_s, end_s FROM segments WHERE clip_path = ? ORDER BY segment_id",
                     str(path.resolve()))
        expected = expected_windows(probe_video(path).duration_s)
        assert len(found) == len(expected), name
        np.testing.assert_allclose(found, expected, atol=0.04, err_msg=name)


def test_synthetic_clips_are_labelled_and_split_at_the_cut(tiny_index, synthetic_library, sample_clip_maker):
    labels = {label for (label,) in rows(tiny_index, "SELECT DISTINCT label FROM segments WHERE label IS NOT NULL")}
    assert labels == set(sample_clip_maker.LABELS)
    folder, stem = sample_clip_maker.CUT_CLIP
    cut_clip = (synthetic_library / folder / f"{stem}.mp4").resolve()
    spans = rows(tiny_index, "SELECT start_s, end_s FROM segments WHERE clip_path = ?", str(cut_clip))
    cut = sample_clip_maker.CUT_AT_S
    assert spans and not any(start < cut - 1e-3 < end - 2e-3 for start, end in spans)
    assert any(abs(start - cut) < 0.05 for start, _ in spans), "a segment starts at the cut"


def test_vectors_are_unit_length_and_exact_search_is_brute_force(tiny_index):
    store = IndexStore(tiny_index)
    ids, vectors = store.load_vectors()
    store.close()
    assert np.array_equal(ids, np.arange(len(ids)))
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    manifest = Manifest.read(tiny_index)
    assert manifest.factory == "Flat" and manifest.counts["segments"] == len(ids)
    with Library.open(tiny_index) as library:
        queries = library.embedder.encode_texts(["a person running", "someone waving", "a segway"])
        scores, found = library.nearest(queries, 10)
    brute = queries @ vectors.T
    assert np.array_equal(found, np.argsort(-brute, axis=1, kind="stable")[:, :10])
    np.testing.assert_allclose(scores, np.sort(brute, axis=1)[:, ::-1][:, :10], atol=1e-5)


def test_a_segments_own_frames_find_it_first(tiny_index):
    with Library.open(tiny_index) as library:
        for segment in library.segments([0, 5, 17, len(library) - 1]):
            frames = segment.read_frames(num_frames=library.manifest.frames_per_segment)
            best = library.search_by_frames(frames, k=3)[0]
            assert best.segment_id == segment.segment_id
            assert best.score == pytest.approx(1.0, abs=1e-5)


@pytest.fixture
def messy_library(tmp_path, real_clips, bad_videos):
    root = tmp_path / "messy"
    (root / "good").mkdir(parents=True)
    shutil.copy(real_clips / "TrumanShow_wave_f_nm_np1_fr_med_26.avi", root / "good" / "wave.avi")
    shutil.copy(real_clips / "v_SoccerJuggling_g23_c01.avi", root / "good" / "juggle.avi")
    shutil.copy(bad_videos / "decord_corrupted.mp4", root / "good" / "corrupted.mp4")
    bad = root / "bad"
    bad.mkdir()
    (bad / "zero.mp4").write_bytes(b"")
    data = (real_clips / "R6llTwEh07w.mp4").read_bytes()
    (bad / "truncated.mp4").write_bytes(data[: len(data) // 3])
    (bad / "notes.mp4").write_text("not a video\n" * 100)
    (bad / "dangling.mp4").symlink_to(tmp_path / "nowhere.mp4")
    (root / "empty").mkdir()
    return root


def test_bad_files_are_logged_by_name_and_the_build_completes(tmp_path, messy_library):
    out = tmp_path / "index"
    summary = build_index(BuildOptions(out=out, paths=[messy_library / "good", messy_library / "bad",
                                                       messy_library / "empty"], models="tiny", progress=False))
    errors = {Path(e["path"]).name: e for e in map(json.loads, (out / ERRORS_FILE).read_text().splitlines())
              if "path" in e}
    assert "empty (0 bytes)" in errors["zero.mp4"]["reason"]
    assert "no such file" in errors["dangling.mp4"]["reason"]
    assert errors["notes.mp4"]["status"] == "error"
    # a third of an mp4 whose index sits at the end of the file: nothing decodes
    assert errors["truncated.mp4"]["status"] == "error"
    # the real corrupted file keeps the segment decoded before the damage, and says so
    assert errors["corrupted.mp4"]["status"] == "partial" and "28 frames" in errors["corrupted.mp4"]["reason"]
    assert summary.counts["videos_ok"] == 2 and summary.counts["videos_failed"] == 4
    source_problems = [json.loads(line) for line in (out / ERRORS_FILE).read_text().splitlines()]
    assert any(p.get("source") == str(messy_library / "empty") for p in source_problems)
    with Library.open(out) as library:
        assert {Path(s.path).name for s in library.segments(range(len(library)))} == {"wave.avi", "juggle.avi",
                                                                                   "corrupted.mp4"}


def test_a_crashing_or_hanging_decoder_costs_only_its_file(tmp_path, real_clips):
    from decode_faults import crash_or_hang

    library = tmp_path / "lib"
    library.mkdir()
    for name in ("crash.avi", "good.avi", "hang.avi"):
        shutil.copy(real_clips / "TrumanShow_wave_f_nm_np1_fr_med_26.avi", library / name)
    out = tmp_path / "index"
    started = time.monotonic()
    summary = build_index(BuildOptions(out=out, paths=[library], models="tiny", timeout_s=3, progress=False),
                          decode_function=crash_or_hang)
    assert time.monotonic() - started < 60
    assert summary.counts["videos_ok"] == 1 and summary.counts["videos_failed"] == 2
    errors = {Path(p).name: reason for p, reason in rows(out, "SELECT path, error FROM videos WHERE status='error'")}
    assert "crashed" in errors["crash.avi"] and "-11" in errors["crash.avi"]
    assert "longer than 3 s" in errors["hang.avi"]
    assert "with PyAV" in errors["hang.avi"], "a file that broke a decord worker is tried again with PyAV"


def test_bad_sources_are_rejected_before_any_work(tmp_path, kinetics_dir, real_clips):
    from index_builder.sources import SourceError

    with pytest.raises(SourceError, match="no videos to index"):
        build_index(BuildOptions(out=tmp_path / "a", paths=[tmp_path], models="tiny", progress=False))
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("label,youtube_id,split\nx,y,val\n")
    with pytest.raises(SourceError, match="missing column"):
        build_index(BuildOptions(out=tmp_path / "b", paths=[real_clips], kinetics_csv=bad_csv, models="tiny"))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_kinetics_build_counts_rows_without_files(tmp_path, kinetics_dir, real_clips):
    out = tmp_path / "k400"
    summary = build_index(BuildOptions(out=out, paths=[real_clips], kinetics_csv=kinetics_dir / "kinetics-400_val.csv",
                                       models="tiny", progress=False))
    assert summary.counts["videos"] == 3 and summary.missing_rows == 19906 - 3
    assert {label for (label,) in rows(out, "SELECT DISTINCT label FROM segments")} == {"using segway"}


def _cli(*args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "build-index"), *map(str, args), "--no-progress"], capture_output=True,
                          text=True, **kwargs)


def _segments_and_vectors(index: Path):
    meta = rows(index, "SELECT segment_id, clip_path, start_s, end_s, label, motion_score FROM segments "
                       "ORDER BY segment_id")
    store = IndexStore(index)
    ids, vectors = store.load_vectors()
    store.close()
    return meta, ids, vectors


@pytest.mark.slow
def test_kill_9_then_rerun_equals_an_uninterrupted_build(tmp_path, tiny_index, real_clips, synthetic_library):
    out = tmp_path / "killed"
    command = [str(BIN / "build-index"), str(real_clips), str(synthetic_library), "--out", str(out), "--models",
               "tiny", "--workers", "1", "--shard-size", "4", "--no-progress"]
    process = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    committed = 0
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        try:
            committed = rows(out, "SELECT COUNT(*) FROM videos")[0][0]
        except sqlite3.Error:
            committed = 0
        if committed >= 3:
            break
        time.sleep(0.02)
    assert process.poll() is None, "the build finished before it could be killed"
    os.killpg(process.pid, signal.SIGKILL)  # the build and its decode workers
    process.wait()
    assert 3 <= committed < 20 and not (out / "manifest.json").exists()

    rerun = subprocess.run(command, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert "processed in this run" in rerun.stdout
    meta, ids, vectors = _segments_and_vectors(out)
    ref_meta, ref_ids, ref_vectors = _segments_and_vectors(tiny_index)
    assert meta == ref_meta
    assert np.array_equal(ids, ref_ids)
    np.testing.assert_allclose(vectors, ref_vectors, atol=1e-6)
    assert Manifest.read(out).faiss_sha256 == Manifest.read(tiny_index).faiss_sha256
    assert [p.name for p in (out / "embeddings").iterdir()] != [], "compacted"
    assert len(list((out / "embeddings").glob("*.npy"))) == 1


def test_update_adds_new_videos_without_touching_old_ones(tmp_path, real_clips):
    library = tmp_path / "lib"
    (library / "wave").mkdir(parents=True)
    shutil.copy(real_clips / "TrumanShow_wave_f_nm_np1_fr_med_26.avi", library / "wave" / "a.avi")
    out = tmp_path / "index"
    first = _cli(library, "--out", out, "--models", "tiny")
    assert first.returncode == 0, first.stderr
    old_meta, old_ids, old_vectors = _segments_and_vectors(out)

    index_time = (out / "index.faiss").stat().st_mtime_ns
    same = _cli(library, "--out", out, "--models", "tiny")
    assert same.returncode == 0 and "0 processed in this run" in same.stdout
    assert (out / "index.faiss").stat().st_mtime_ns == index_time, "a no-op rerun keeps the index as it is"

    (library / "juggle").mkdir()
    shutil.copy(real_clips / "v_SoccerJuggling_g23_c01.avi", library / "juggle" / "b.avi")
    refused = _cli(library, "--out", out, "--models", "tiny")
    assert refused.returncode == 2 and "--update" in refused.stderr

    updated = _cli(library, "--out", out, "--models", "tiny", "--update")
    assert updated.returncode == 0 and "1 processed in this run" in updated.stdout
    meta, ids, vectors = _segments_and_vectors(out)
    assert meta[: len(old_meta)] == old_meta
    assert {m[4] for m in meta[len(old_meta):]} == {"juggle"}
    np.testing.assert_array_equal(vectors[: len(old_ids)], old_vectors)
    assert len(list((out / "embeddings").iterdir())) == 1, "shards are compacted into one file"


def test_other_settings_are_refused_on_resume(tmp_path, real_clips):
    library = tmp_path / "lib"
    library.mkdir()
    shutil.copy(real_clips / "TrumanShow_wave_f_nm_np1_fr_med_26.avi", library / "a.avi")
    out = tmp_path / "index"
    assert _cli(library, "--out", out, "--models", "tiny").returncode == 0
    changed = _cli(library, "--out", out, "--models", "tiny", "--frames", "4")
    assert changed.returncode == 2
    assert "segments.frames_per_segment: index has 8, now 4" in changed.stderr


@pytest.mark.parametrize("args,message", [
    (("--out", "y"), "give at least one PATH"),
    (("x", "--out", "y", "--frames", "0"), "--frames"),
    (("x", "--out", "y", "--window", "-1"), "window and stride must be positive"),
])
def test_cli_usage_errors(args, message):
    result = _cli(*args)
    assert result.returncode == 2 and message in result.stderr


def test_unloadable_model_is_named(tmp_path, real_clips):
    result = _cli(real_clips, "--out", tmp_path / "x", "--models", "ViT-B-32:/no/such/weights.safetensors")
    assert result.returncode == 2
    assert "no such checkpoint file '/no/such/weights.safetensors'" in result.stderr
    pickled = _cli(real_clips, "--out", tmp_path / "x", "--models", "ViT-B-32:/tmp/model.pt")
    assert pickled.returncode == 2 and "convert it to .safetensors" in pickled.stderr
