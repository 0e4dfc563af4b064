"""storyreel index_builder: scan a video library, cut clips into segments, embed them with CLIP and write
the FAISS index and metadata store that :mod:`retrieval` reads."""
