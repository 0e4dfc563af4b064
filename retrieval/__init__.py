"""storyreel retrieval: the video library's index format, its clip reader and text-to-motion search.

Heavy modules (torch, faiss) are imported lazily so that light users, such as the decode workers of
index_builder, import only what they need.
"""

from importlib import import_module

_EXPORTS = {
    "Library": "retrieval.library",
    "ClipSegment": "retrieval.library",
    "RerankOptions": "retrieval.reranking",
    "ClipEmbedder": "retrieval.clip_models",
    "load_clip_model": "retrieval.clip_models",
    "ModelLoadError": "retrieval.clip_models",
    "read_segment_frames": "retrieval.clip_reader",
    "iter_frames": "retrieval.clip_reader",
    "probe_video": "retrieval.clip_reader",
    "VideoDecodeError": "retrieval.clip_reader",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'retrieval' has no attribute {name!r}")
