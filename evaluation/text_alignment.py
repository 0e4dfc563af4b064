"""Text alignment (CLIP-T): how well a shot's frames match its caption.

Recipe (DreamVideo's ``metric/cal_metric_DreamVideo.py`` in ali-vilab/VGen, the CLIP-T most video papers report):
the caption's CLIP text feature and each frame's CLIP image feature are L2-normalised, the frame features are
averaged and normalised again, and CLIP-T is the cosine of the two. CLIP ViT-B/32 by default.

The caption is the shot's own caption, not the render prompt: compel's weighting syntax is dropped (CLIP reads
plain text) and each character token is replaced by its class word (``(<hare> rabbit)1.2 jumping`` → ``rabbit
jumping``), since the metric's CLIP has never seen the token.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np

from storyboard.caption_weights import parse_caption

RECIPE = "cosine of the caption's CLIP text feature and the normalised mean of the frames' CLIP features (DreamVideo)"


def unit(vectors: np.ndarray) -> np.ndarray:
    """Rows (or one vector) scaled to unit length."""
    vectors = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


def mean_feature(frame_features: np.ndarray) -> np.ndarray:
    """The unit mean of unit frame features (``N x D`` → ``D``)."""
    return unit(unit(frame_features).mean(axis=0))


def clip_t(text_feature: np.ndarray, frame_features: np.ndarray) -> float:
    """CLIP-T of one shot: ``cos(text, mean of unit frame features)``."""
    return float(unit(text_feature) @ mean_feature(frame_features))


def plain_caption(caption: str, class_words: Mapping[str, str]) -> str:
    """``caption`` without compel's weights and with every character token (``<hare>``) replaced by its class
    word; a token already followed by its class word is dropped instead, so the word is not doubled."""
    text = " ".join(piece for piece, _weight in parse_caption(caption))
    for token, word in class_words.items():
        text = re.sub(rf"{re.escape(token)}\s+(?={re.escape(word)}\b)", "", text)
        text = text.replace(token, word)
    return re.sub(r"\s+", " ", re.sub(r"\s+([,.;:!?])", r"\1", text)).strip()
