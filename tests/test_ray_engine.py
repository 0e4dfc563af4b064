"""The Ray engine builds the same index as the local engine: same ids, metadata, errors and vectors."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest

from index_builder.build import BuildOptions, build_index
from index_builder.store import IndexStore
from retrieval.index_format import METADATA_FILE

ray = pytest.importorskip("ray")


@pytest.fixture
def ray_session():
    yield
    ray.shutdown()


def _build(out: Path, engine: str, paths: list[Path]) -> Path:
    build_index(BuildOptions(out=out, paths=paths, models="tiny", engine=engine, workers=1, progress=False))
    return out


def _rows(index: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(index / METADATA_FILE) as db:
        return db.execute(sql).fetchall()


@pytest.mark.slow
def test_ray_engine_matches_local_engine(tmp_path, ray_session, real_clips):
    clips = real_clips
    broken = tmp_path / "broken"  # a file that fails to decode: its error must come through in order too
    broken.mkdir()
    (broken / "not_a_video.mp4").write_bytes(b"\x00" * 4096)
    paths = [clips, broken]

    local = _build(tmp_path / "local", "local", paths)
    ray_index = _build(tmp_path / "ray", "ray", paths)

    segments = "SELECT segment_id, clip_path, start_s, end_s, label FROM segments ORDER BY segment_id"
    videos = "SELECT video_id, path, status, error, num_segments FROM videos ORDER BY video_id"
    assert _rows(ray_index, segments) == _rows(local, segments)
    assert _rows(ray_index, videos) == _rows(local, videos)
    statuses = [row[2] for row in _rows(local, videos)]
    assert statuses.count("ok") == 9 and statuses[-1] == "error"

    local_ids, local_vectors = IndexStore(local).load_vectors()
    ray_ids, ray_vectors = IndexStore(ray_index).load_vectors()
    assert len(local_ids) > 0
    np.testing.assert_array_equal(ray_ids, local_ids)
    np.testing.assert_allclose(ray_vectors, local_vectors, atol=1e-6)
