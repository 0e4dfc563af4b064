"""Searching an index: re-ranking, story diversity, the search-clips CLI and its contact sheet."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retrieval.index_format import IndexFormatError
from retrieval.library import ClipSegment, Library, ModelMismatchError
from retrieval.reranking import RerankOptions, overlaps, rerank, word_match

BIN = Path(sys.executable).parent


def segment(i, score, path="a.mp4", start=0.0, end=2.0, label=None, caption=None, motion=1.0) -> ClipSegment:
    return ClipSegment(i, score, score, path, start, end, 30.0, 320, 240, label, caption, motion)


def test_word_match_stems_and_ignores_stopwords():
    assert word_match("a man riding a horse", "riding horse") == 1.0
    assert word_match("a boy rides horses on the beach", "riding horse") == 1.0
    assert word_match("a person running in a park", "juggling soccer ball") == 0.0
    assert word_match("someone juggling a ball", "SoccerJuggling") == 0.0  # camel case is one word
    assert word_match("", "riding horse") == 0.0 and word_match("riding", None) == 0.0


def test_label_match_can_lift_a_slightly_lower_clip_score():
    candidates = [segment(1, 0.30, "a.mp4", label="playing guitar"), segment(2, 0.28, "b.mp4", label="riding horse")]
    ranked = rerank(candidates, "a woman riding a horse", RerankOptions(label_weight=0.05))
    assert [s.segment_id for s in ranked] == [2, 1]
    assert ranked[0].score == pytest.approx(0.33) and ranked[0].clip_score == pytest.approx(0.28)
    assert [s.segment_id for s in rerank(candidates, "a woman riding a horse", RerankOptions(label_weight=0))] == [1, 2]


def test_duration_fit_motion_range_and_clip_limit():
    candidates = [
        segment(1, 0.30, "a.mp4", 0, 1.0, motion=0.1),
        segment(2, 0.29, "b.mp4", 0, 4.0, motion=0.5),
        segment(3, 0.28, "b.mp4", 1, 5.0, motion=0.6),
        segment(4, 0.27, "c.mp4", 0, 4.0, motion=3.0),
    ]
    by_duration = rerank(candidates, None, RerankOptions(duration=4.0))
    assert [s.segment_id for s in by_duration][:1] == [2]
    moving = rerank(candidates, None, RerankOptions(motion_range=(0.2, 1.0)))
    assert [s.segment_id for s in moving] == [2, 3]
    one_per_clip = rerank(candidates, None, RerankOptions(max_per_clip=1))
    assert [s.segment_id for s in one_per_clip] == [1, 2, 4]
    with pytest.raises(ValueError, match="motion range is empty"):
        RerankOptions(motion_range=(2.0, 1.0))


def test_avoid_drops_overlapping_footage_only():
    used = segment(9, 0.9, "a.mp4", 2.0, 4.0)
    candidates = [segment(1, 0.5, "a.mp4", 3.0, 5.0), segment(2, 0.4, "a.mp4", 4.0, 6.0),
                  segment(3, 0.3, "b.mp4", 2.0, 4.0)]
    assert overlaps(candidates[0], used) and not overlaps(candidates[1], used)
    assert [s.segment_id for s in rerank(candidates, None, RerankOptions(), avoid=[used])] == [2, 3]


def test_story_shots_get_different_footage_unless_asked(tiny_index):
    queries = ["a person running"] * 4
    with Library.open(tiny_index) as library:
        diverse = [shot[0] for shot in library.search_story(queries, k=1)]
        repeated = [shot[0] for shot in library.search_story(queries, k=1, allow_repeats=True)]
    assert len({s.segment_id for s in repeated}) == 1
    assert len({s.segment_id for s in diverse}) == 4
    for i, a in enumerate(diverse):
        assert not any(overlaps(a, b) for b in diverse[i + 1:])
    assert diverse[0] == repeated[0]


def test_library_refuses_another_model_and_a_tampered_index(tiny_index, tmp_path):
    with pytest.raises(ModelMismatchError, match="built with model 'tiny', not 'ViT-B-32:openai'"):
        Library.open(tiny_index, model="ViT-B-32:openai")
    copy = tmp_path / "copy"
    import shutil

    shutil.copytree(tiny_index, copy)
    data = bytearray((copy / "index.faiss").read_bytes())
    data[-1] ^= 0xFF
    (copy / "index.faiss").write_bytes(bytes(data))
    with pytest.raises(IndexFormatError, match="do not match manifest.json"):
        Library.open(copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["format_version"] = 99
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(IndexFormatError, match="'format_version' is 99"):
        Library.open(copy)


def test_search_rejects_empty_queries(tiny_index):
    with Library.open(tiny_index) as library:
        with pytest.raises(ValueError, match="empty"):
            library.search("   ")
        with pytest.raises(ValueError, match="k must be at least 1"):
            library.search("running", k=0)


def _search(*args) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "search-clips"), *map(str, args)], capture_output=True, text=True)


def test_search_clips_cli_table_json_and_contact_sheet(tiny_index, tmp_path):
    table = _search(tiny_index, "a person running", "-k", "3")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["rank", "score", "label", "file", "start-end"] and len(lines) == 4

    as_json = _search(tiny_index, "a person running", "-k", "3", "--json")
    results = json.loads(as_json.stdout)
    assert [r["rank"] for r in results] == [1, 2, 3]
    assert set(results[0]) >= {"rank", "score", "label", "caption", "path", "start", "end"}
    assert results[0]["score"] >= results[1]["score"] >= results[2]["score"]
    assert lines[1].split()[1] == f"{results[0]['score']:.3f}"

    sheet = tmp_path / "top.png"
    drawn = _search(tiny_index, "someone waving", "-k", "2", "--contact-sheet", sheet)
    assert drawn.returncode == 0, drawn.stderr
    image = np.asarray(Image.open(sheet).convert("RGB"))
    assert image.shape[0] > 2 * 96 and image.std() > 10  # two rows of real frames, not a blank canvas


@pytest.mark.parametrize("args,message", [
    (("{missing}", "running"), "no such index folder"),
    (("{index}", "running", "--models", "ViT-B-32:openai"), "built with model 'tiny'"),
    (("{index}", "running", "--min-motion", "2", "--max-motion", "1"), "motion range is empty"),
    (("{index}", "running", "-k", "0"), "-k"),
])
def test_search_clips_errors_exit_2(tiny_index, tmp_path, args, message):
    args = [a.format(index=tiny_index, missing=tmp_path / "missing") for a in args]
    result = _search(*args)
    assert result.returncode == 2 and message in result.stderr


def test_model_specs_and_unsafe_checkpoints(tmp_path):
    from retrieval.clip_models import ModelSpec, load_clip_model
    from storyreel.errors import ModelLoadError

    assert ModelSpec.parse("ViT-B-32:laion2b_s34b_b79k") == ModelSpec("ViT-B-32", "laion2b_s34b_b79k")
    assert ModelSpec.parse("hf-hub:org/repo") == ModelSpec("hf-hub:org/repo")
    assert ModelSpec.parse("tiny").is_tiny
    (tmp_path / "open_clip_pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(ModelLoadError, match="holds no .safetensors weights"):
        load_clip_model(f"local-dir:{tmp_path}", device="cpu")
    with pytest.raises(ModelLoadError, match="refusing to load"):
        load_clip_model(f"ViT-B-32:{tmp_path / 'open_clip_pytorch_model.bin'}", device="cpu")
    with pytest.raises(ModelLoadError, match="--models tiny"):
        load_clip_model("ViT-B-32:laion2b_s34b_b79k", device="cpu")  # offline: no weights to download


def test_tiny_model_is_deterministic_and_embeds_text_and_frames():
    from retrieval.clip_models import load_clip_model

    a, b = load_clip_model("tiny", device="cpu"), load_clip_model("tiny", device="cpu")
    assert a.fingerprint == b.fingerprint and a.dim == 32 and a.image_size == 32
    tokens = a.tokenizer(["a person riding a horse"])[0][:7].tolist()
    assert tokens == [49406, 320, 2533, 6765, 320, 4558, 49407]  # open_clip's real BPE, offline
    texts = a.encode_texts(["a dog", "a cat"])
    np.testing.assert_array_equal(texts, b.encode_texts(["a dog", "a cat"]))
    frames = np.random.default_rng(0).integers(0, 255, (3, 2, 40, 60, 3), dtype=np.uint8)
    prepared = np.stack([a.prepare_frames(s) for s in frames])
    vectors = a.encode_segments(prepared)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)
    per_frame = a.encode_images(prepared.reshape(-1, 32, 32, 3)).reshape(3, 2, -1).mean(axis=1)
    np.testing.assert_allclose(vectors, per_frame / np.linalg.norm(per_frame, axis=1, keepdims=True), atol=1e-6)
