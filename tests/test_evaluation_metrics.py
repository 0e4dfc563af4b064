"""evaluate-story's metrics, each against an independent computation on a fixed input (the model features taken
from the same tiny models), and the model-free ones on real clips whose answer is known."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cosine as cosine_distance

from evaluation import action, consistency, distribution, identity, structure_fidelity, text_alignment
from evaluation.metric_models import (
    VideoPredictions,
    ZeroShotClassifier,
    build_tiny_dino,
    build_tiny_video_classifier,
    load_dino,
    load_video_classifier,
)
from storyreel.errors import ModelLoadError


def cos(a, b) -> float:
    return 1.0 - cosine_distance(a, b)


@pytest.fixture(scope="module")
def tiny_clip():
    from retrieval.clip_models import load_clip_model

    return load_clip_model("tiny", device="cpu")


@pytest.fixture(scope="module")
def frames():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, size=(1, 32, 32, 3))
    return np.clip(base + rng.integers(-20, 21, size=(6, 32, 32, 3)), 0, 255).astype(np.uint8)


# -- text alignment and identity ----------------------------------------------------------------------------
def test_clip_t_is_the_cosine_of_the_text_and_the_mean_frame(tiny_clip, frames):
    image_features = tiny_clip.encode_images(tiny_clip.prepare_frames(frames)).astype(np.float64)
    text_feature = tiny_clip.encode_texts(["a hare jumping"])[0].astype(np.float64)
    mean = sum(f / np.sqrt(np.dot(f, f)) for f in image_features) / len(image_features)
    expected = cos(text_feature, mean)
    assert text_alignment.clip_t(text_feature, image_features) == pytest.approx(expected, abs=1e-6)
    # the mean of the frames, not the mean of per-frame cosines
    per_frame = np.mean([cos(text_feature, f) for f in image_features])
    assert abs(per_frame - expected) > 1e-5


def test_reference_similarity_averages_the_cosine_of_each_reference(tiny_clip, frames):
    dino = load_dino("tiny", torch.device("cpu"))
    frame_features = dino(frames)
    references = dino(frames[::-1][:3] // 2)
    mean = frame_features.mean(axis=0)
    expected = np.mean([cos(r, mean) for r in references])
    assert identity.reference_similarity(references, frame_features) == pytest.approx(expected, abs=1e-6)


def test_dino_features_are_the_vit_cls_token_with_imagenet_normalisation(frames):
    model = build_tiny_dino()
    features = load_dino("tiny", torch.device("cpu"))(frames)
    pixels = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255  # already 32x32: no resize
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        direct = model.forward_head(model.forward_features((pixels - mean) / std), pre_logits=True).numpy()
    direct /= np.linalg.norm(direct, axis=1, keepdims=True)
    np.testing.assert_allclose(features, direct, atol=1e-5)
    assert model.global_pool == "token" and model.patch_embed.patch_size == (8, 8)


def test_across_shots_is_the_mean_pairwise_cosine():
    rng = np.random.default_rng(1)
    shots = {name: rng.normal(size=(4, 8)) for name in ("a", "b", "c")}
    result = identity.across_shots(shots)
    means = {k: (v / np.linalg.norm(v, axis=1, keepdims=True)).mean(0) for k, v in shots.items()}
    expected = np.mean([cos(means[x], means[y]) for x, y in itertools.combinations("abc", 2)])
    assert result["mean"] == pytest.approx(expected, abs=1e-9) and len(result["pairs"]) == 3
    assert identity.across_shots({"a": shots["a"]})["mean"] is None


def test_plain_caption_drops_weights_and_names_class_words():
    caption = "(<hare> rabbit)1.2 racing past a calm (<tortoise>)1.1 in a (sunny meadow)1.1, dusk"
    words = {"<hare>": "rabbit", "<tortoise>": "turtle"}
    assert text_alignment.plain_caption(caption, words) == "rabbit racing past a calm turtle in a sunny meadow, dusk"


# -- consistency --------------------------------------------------------------------------------------------
def test_subject_consistency_is_vbench_formula():
    rng = np.random.default_rng(2)
    features = rng.normal(size=(5, 6))
    features[3] = -features[0]  # a negative cosine is clipped at 0
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    expected = np.mean([(max(0, unit[i - 1] @ unit[i]) + max(0, unit[0] @ unit[i])) / 2 for i in range(1, 5)])
    assert consistency.subject_consistency(features) == pytest.approx(expected, abs=1e-12)
    assert consistency.frame_to_frame(features) == pytest.approx(np.mean([unit[i - 1] @ unit[i] for i in range(1, 5)]))
    assert consistency.subject_consistency(np.repeat(features[:1], 4, axis=0)) == pytest.approx(1.0)


def test_flicker_is_vbench_formula():
    rng = np.random.default_rng(3)
    frames = rng.integers(0, 256, size=(4, 5, 6, 3)).astype(np.uint8)
    total = sum(abs(int(frames[t + 1, y, x, c]) - int(frames[t, y, x, c]))
                for t in range(3) for y in range(5) for x in range(6) for c in range(3))
    mad = total / (3 * 5 * 6 * 3)
    assert consistency.mean_absolute_difference(frames) == pytest.approx(mad)
    assert consistency.flicker_score(frames) == pytest.approx((255 - mad) / 255)
    assert consistency.flicker_score(np.repeat(frames[:1], 3, axis=0)) == 1.0


def test_flicker_drops_on_a_shuffled_real_clip(real_clips):
    from structure.extract import read_source_frames

    clip = read_source_frames((real_clips / "v_SoccerJuggling_g23_c01.avi", 0.0, 2.0), frames=16, size=(96, 96))
    shuffled = clip[np.random.default_rng(0).permutation(len(clip))]
    assert consistency.flicker_score(shuffled) < consistency.flicker_score(clip) - 0.005


# -- structure fidelity -------------------------------------------------------------------------------------
def test_depth_fidelity_ignores_scale_and_shift_and_sees_changes():
    rng = np.random.default_rng(4)
    guide = rng.uniform(0, 1, size=(3, 16, 16))
    perfect = structure_fidelity.depth_fidelity(3.0 * guide - 7.0, guide)
    assert perfect["abs_rel"] == pytest.approx(0, abs=1e-9) and perfect["correlation"] == pytest.approx(1)
    noisy = guide + rng.normal(0, 0.1, size=guide.shape)
    result = structure_fidelity.depth_fidelity(noisy, guide)
    errors, correlations = [], []
    for p, g in zip(noisy, guide):
        scale, shift = np.polyfit(p.ravel(), g.ravel(), 1)  # independent least squares
        valid = g >= structure_fidelity.MIN_GUIDE
        errors.append(np.mean(np.abs(scale * p[valid] + shift - g[valid]) / g[valid]))
        correlations.append(np.corrcoef(p.ravel(), g.ravel())[0, 1])
    assert result["abs_rel"] == pytest.approx(np.mean(errors), rel=1e-6)
    assert result["correlation"] == pytest.approx(np.mean(correlations), rel=1e-9)
    assert result["abs_rel"] > 0.05 and result["correlation"] < 0.99


def test_motion_fidelity_on_a_real_clip(real_clips):
    from structure.extract import read_source_frames

    clip = read_source_frames((real_clips / "v_SoccerJuggling_g23_c01.avi", 0.0, 2.0), frames=12, size=(96, 96))
    itself = structure_fidelity.motion_fidelity(clip, clip)
    assert itself["flow_correlation"] == pytest.approx(1.0) and itself["flow_epe"] == 0.0
    reversed_ = structure_fidelity.motion_fidelity(clip, clip[::-1].copy())
    shuffled = structure_fidelity.motion_fidelity(clip, clip[np.random.default_rng(0).permutation(12)])
    assert reversed_["flow_correlation"] < 0 and reversed_["flow_epe"] > 0.5
    assert shuffled["flow_correlation"] < 0.5 and shuffled["flow_epe"] > 0.5


def test_flow_agreement_is_the_cosine_of_the_flattened_fields():
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(2, 4, 4, 2)), rng.normal(size=(2, 4, 4, 2))
    result = structure_fidelity.flow_agreement(a, b)
    assert result["flow_correlation"] == pytest.approx(np.mean([cos(x.ravel(), y.ravel()) for x, y in zip(a, b)]))
    epe = np.mean([np.hypot(*(a[p, y, x] - b[p, y, x])) for p in range(2) for y in range(4) for x in range(4)])
    assert result["flow_epe"] == pytest.approx(epe)


# -- action -------------------------------------------------------------------------------------------------
def test_tiny_classifier_ranks_by_its_own_logits(frames):
    classifier = load_video_classifier("tiny", torch.device("cpu"))
    predictions = classifier(frames)
    model = build_tiny_video_classifier().eval()
    picks = np.linspace(0, len(frames) - 1, 4).round().astype(int)
    pixels = torch.from_numpy(frames[picks]).permute(0, 3, 1, 2).float()[None] / 255
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 1, 3, 1, 1)
    with torch.no_grad():
        logits = model(pixel_values=(pixels - mean) / std).logits[0].numpy()
    assert predictions.labels == [model.config.id2label[i] for i in np.argsort(-logits)]
    np.testing.assert_allclose(sorted(predictions.probabilities, reverse=True),
                               np.sort(np.exp(logits) / np.exp(logits).sum())[::-1], atol=1e-6)


def test_action_scores_match_labels_loosely_and_say_why_not():
    render = VideoPredictions(["Playing guitar", "jumping", "b", "c", "d", "e"], [0.5, 0.2, 0.1, 0.1, 0.05, 0.05],
                              np.zeros(2))
    footage = VideoPredictions(["jumping", "Playing guitar"], [0.6, 0.4], np.zeros(2))
    classes = render.labels
    hit = action.action_scores(render, footage, "playing_guitar", classes)
    assert hit["top1"] is True and hit["top5"] is True
    assert hit["agrees_with_footage"] is False and hit["footage_top1_in_top5"] is True
    second = action.action_scores(render, footage, "jumping", classes)
    assert second["top1"] is False and second["top5"] is True
    missed = action.action_scores(render, None, "e", classes)
    assert missed["top5"] is False
    unknown = action.action_scores(render, footage, "SoccerJuggling", classes)
    assert unknown["top1"] is None and "not one of the classifier's classes" in unknown["note"]
    assert action.action_scores(render, footage, None, classes)["note"] == "the footage has no label"


def test_zero_shot_classifier_ranks_labels_by_cosine(tiny_clip, frames):
    labels = ["jumping", "walking", "waving"]
    classifier = ZeroShotClassifier(tiny_clip, labels, "a figure {label}")
    predictions = classifier(frames)
    mean = tiny_clip.encode_images(tiny_clip.prepare_frames(frames)).mean(0)
    texts = tiny_clip.encode_texts([f"a figure {label}" for label in labels])
    expected = [labels[i] for i in np.argsort([-cos(t, mean) for t in texts])]
    assert predictions.labels == expected


# -- distribution -------------------------------------------------------------------------------------------
def test_fvd_against_an_independent_computation():
    rng = np.random.default_rng(6)
    a, b = rng.normal(size=(40, 5)), rng.normal(size=(30, 5)) @ rng.normal(size=(5, 5)) + 1.0
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a.T), np.cov(b.T)
    # Tr((S_a S_b)^(1/2)) = sum of the square roots of the eigenvalues of S_a^(1/2) S_b S_a^(1/2) (all >= 0)
    w, v = np.linalg.eigh(s_a)
    root_a = v @ np.diag(np.sqrt(w)) @ v.T
    trace_root = np.sum(np.sqrt(np.clip(np.linalg.eigvalsh(root_a @ s_b @ root_a), 0, None)))
    expected = np.sum((mu_a - mu_b) ** 2) + np.trace(s_a) + np.trace(s_b) - 2 * trace_root
    assert distribution.fvd(a, b) == pytest.approx(expected, rel=1e-6)
    assert distribution.fvd(a, a) == pytest.approx(0, abs=1e-8)
    assert distribution.fvd(a, a + 3) == pytest.approx(9 * 5, rel=1e-6)  # a shift of 3 in each of 5 dimensions


def test_kvd_against_an_independent_computation():
    rng = np.random.default_rng(7)
    a, b = rng.normal(size=(6, 3)), rng.normal(size=(5, 3)) + 0.5
    k = lambda x, y: (np.dot(x, y) / 3 + 1) ** 3  # noqa: E731
    within_a = sum(k(a[i], a[j]) for i in range(6) for j in range(6) if i != j) / (6 * 5)
    within_b = sum(k(b[i], b[j]) for i in range(5) for j in range(5) if i != j) / (5 * 4)
    between = sum(k(x, y) for x in a for y in b) / 30
    assert distribution.kvd(a, b) == pytest.approx(within_a + within_b - 2 * between, rel=1e-9)
    with pytest.raises(ValueError, match="at least 2"):
        distribution.kvd(a[:1], b)


# -- models -------------------------------------------------------------------------------------------------
def test_model_files_are_refused_unless_safetensors(tmp_path):
    pickle = tmp_path / "dino.pth"
    pickle.write_bytes(b"not really")
    with pytest.raises(ModelLoadError, match="refusing to load"):
        load_dino(str(pickle), torch.device("cpu"))
    with pytest.raises(ModelLoadError, match="no such file"):
        load_dino(str(tmp_path / "missing.safetensors"), torch.device("cpu"))


def test_an_unreachable_classifier_names_itself(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(ModelLoadError, match="video classifier 'org/not-here'.*--models tiny"):
        load_video_classifier("org/not-here", torch.device("cpu"))


def test_dino_weights_load_from_a_local_safetensors_file_or_folder(tmp_path, frames):
    import json

    import timm
    from safetensors.torch import save_file

    from storyreel.seeding import seeded

    with seeded(3):
        model = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0).eval()
    state = {key: value.contiguous() for key, value in model.state_dict().items()}
    save_file(state, str(tmp_path / "dino.safetensors"))
    folder = tmp_path / "dino"
    folder.mkdir()
    save_file(state, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({"architecture": "vit_small_patch16_224", "num_classes": 0}))
    expected = load_dino("tiny", torch.device("cpu"))
    expected.model, expected.image_size = model, 224  # the same preprocessing around the saved weights
    for source in (tmp_path / "dino.safetensors", folder):
        loaded = load_dino(str(source), torch.device("cpu"))
        np.testing.assert_allclose(loaded(frames), expected(frames), atol=1e-5)


def test_a_video_classifier_loads_from_a_local_folder_of_safetensors_only(tmp_path, frames):
    from transformers import VideoMAEImageProcessor

    model = build_tiny_video_classifier()
    folder = tmp_path / "videomae"
    model.save_pretrained(folder, safe_serialization=True)
    VideoMAEImageProcessor(image_mean=[0.5, 0.5, 0.5], image_std=[0.25, 0.25, 0.25]).save_pretrained(folder)
    loaded = load_video_classifier(str(folder), torch.device("cpu"))
    assert loaded.labels == list(model.config.id2label.values())
    assert loaded._mean.flatten().tolist() == [0.5, 0.5, 0.5]  # the folder's own normalisation
    picks = np.linspace(0, len(frames) - 1, 4).round().astype(int)
    pixels = torch.from_numpy(frames[picks]).permute(0, 3, 1, 2).float()[None] / 255
    with torch.no_grad():
        logits = model.eval()(pixel_values=(pixels - 0.5) / 0.25).logits[0].numpy()
    assert loaded(frames).labels[0] == model.config.id2label[int(np.argmax(logits))]
    for path in folder.glob("*.safetensors"):
        torch.save({}, path.with_suffix(".bin"))
        path.unlink()  # a folder with pickles only is refused
    with pytest.raises(ModelLoadError, match="video classifier"):
        load_video_classifier(str(folder), torch.device("cpu"))
