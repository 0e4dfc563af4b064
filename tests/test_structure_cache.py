"""The depth cache: hits skip the model, keys change with what the depth depends on, bad files are replaced."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from structure.depth_cache import CACHE_ENV, DepthCache, default_cache_root
from structure.depth_models import load_depth_model
from structure.extract import extract_depth, extract_raw_depth
from structure.validation import InvalidArgumentError

SOCCER = "v_SoccerJuggling_g23_c01.avi"


class CountingDepth:
    """A deterministic stand-in depth model (brightness, near = bright) that counts its calls."""

    name = "counting"
    fingerprint = "counting-1"

    def __init__(self):
        self.calls = 0
        self.frames_seen = 0

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        self.calls += 1
        self.frames_seen += len(frames)
        return frames.astype(np.float32).mean(axis=3)


@pytest.fixture()
def clip(real_clips, tmp_path):
    """A private copy of a real clip (its mtime can be changed)."""
    copy = tmp_path / "clip" / SOCCER
    copy.parent.mkdir()
    shutil.copyfile(real_clips / SOCCER, copy)
    return copy


def test_a_second_call_does_not_run_the_model(clip, tmp_path):
    model, cache = CountingDepth(), DepthCache(tmp_path / "cache")
    first = extract_depth((clip, 1.0, 3.0), frames=16, size=(128, 96), estimator=model, cache=cache)
    second = extract_depth((clip, 1.0, 3.0), frames=16, size=(128, 96), estimator=model, cache=cache)
    assert model.calls == 1 and (cache.hits, cache.misses) == (1, 1)
    assert np.array_equal(first.depth, second.depth) and first.source == second.source
    # the raw depth is cached: other normalisation or smoothing settings reuse it
    smoothed = extract_depth((clip, 1.0, 3.0), frames=16, size=(128, 96), estimator=model, cache=cache, smoothing=1.0)
    assert model.calls == 1 and not np.array_equal(smoothed.depth, first.depth)
    # a fresh cache object over the same folder (a re-render in a new process) hits too
    assert extract_raw_depth((clip, 1.0, 3.0), 16, (128, 96), model, DepthCache(tmp_path / "cache")).cached
    assert model.calls == 1


def test_the_key_follows_everything_the_depth_depends_on(clip, tmp_path):
    model, cache = CountingDepth(), DepthCache(tmp_path / "cache")
    base = dict(frames=8, size=(64, 64), estimator=model, cache=cache)
    extract_raw_depth((clip, 1.0, 3.0), **base)
    variants = [((clip, 1.0, 3.5), {}), ((clip, 1.5, 3.0), {}), ((clip, 1.0, 3.0), {"frames": 9}),
                ((clip, 1.0, 3.0), {"size": (64, 48)})]
    for source, change in variants:
        extract_raw_depth(source, **{**base, **change})
    assert model.calls == 1 + len(variants)
    other_model = CountingDepth()
    other_model.fingerprint = "counting-2"
    extract_raw_depth((clip, 1.0, 3.0), **{**base, "estimator": other_model})
    assert other_model.calls == 1
    stat = clip.stat()  # the file changed (same size, new mtime): recompute
    os.utime(clip, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    extract_raw_depth((clip, 1.0, 3.0), **base)
    assert model.calls == 2 + len(variants)
    extract_raw_depth((clip, 1.0, 3.0), **base)
    assert model.calls == 2 + len(variants)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty", "wrong-shape"])
def test_a_corrupt_cache_file_is_recomputed_and_replaced(clip, tmp_path, damage):
    model, cache = CountingDepth(), DepthCache(tmp_path / "cache")
    source = (clip, 1.0, 2.0)
    good = extract_raw_depth(source, 8, (64, 64), model, cache)
    files = list((tmp_path / "cache").rglob("*.npz"))
    assert len(files) == 1
    path = files[0]
    if damage == "garbage":
        path.write_bytes(b"\x00not an npz file" * 100)
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "empty":
        path.write_bytes(b"")
    else:  # the right key, the wrong contents
        with np.load(path) as data:
            record = data["record"].copy()
        with path.open("wb") as handle:
            np.savez(handle, raw=np.zeros((3, 4, 4), np.float32), record=record)
    with pytest.warns(RuntimeWarning, match="unusable"):
        again = extract_raw_depth(source, 8, (64, 64), model, cache)
    assert model.calls == 2 and np.array_equal(again.values, good.values) and not again.cached
    third = extract_raw_depth(source, 8, (64, 64), model, cache)  # the file was replaced with a good one
    assert third.cached and model.calls == 2
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary files left


def test_tiny_dpt_through_the_cache(real_clips, tmp_path):
    tiny = load_depth_model("tiny", device="cpu", progress=False)
    runs = []
    original = tiny.predict_batch
    tiny.predict_batch = lambda frames: runs.append(len(frames)) or original(frames)
    cache = DepthCache(tmp_path / "cache")
    first = extract_depth((real_clips / SOCCER, 2.0, 4.0), frames=16, size=(128, 128), estimator=tiny, cache=cache)
    second = extract_depth((real_clips / SOCCER, 2.0, 4.0), frames=16, size=(128, 128), estimator=tiny, cache=cache)
    assert sum(runs) == 16 and np.array_equal(first.depth, second.depth)


def test_images_are_keyed_by_their_pixels(tmp_path):
    model, cache = CountingDepth(), DepthCache(tmp_path / "cache")
    images = [np.full((40, 60, 3), value, np.uint8) for value in (10, 200)]
    extract_raw_depth(images, size=(64, 48), estimator=model, cache=cache)
    extract_raw_depth([image.copy() for image in images], size=(64, 48), estimator=model, cache=cache)
    assert model.calls == 1
    images[1][0, 0, 0] = 201
    extract_raw_depth(images, size=(64, 48), estimator=model, cache=cache)
    assert model.calls == 2


def test_cache_location_and_uncacheable_models(clip, tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "elsewhere"))
    assert default_cache_root() == tmp_path / "elsewhere" / "depth"
    assert DepthCache().root == tmp_path / "elsewhere" / "depth"
    extract_raw_depth((clip, 1.0, 2.0), 4, (64, 64), CountingDepth(), cache=tmp_path / "as-a-path")
    assert list((tmp_path / "as-a-path").rglob("*.npz"))

    def anonymous(frames):
        return frames.astype(np.float32).mean(axis=3)

    assert extract_raw_depth((clip, 1.0, 2.0), 4, (64, 64), anonymous).values.shape == (4, 64, 64)
    with pytest.raises(InvalidArgumentError, match="fingerprint") as caught:
        extract_raw_depth((clip, 1.0, 2.0), 4, (64, 64), anonymous, cache=tmp_path / "cache")
    assert caught.value.argument == "estimator"
