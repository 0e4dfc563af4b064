"""A toy world where every stage can be trained: procedural clips with known depth, masks and captions.

* :mod:`toy_world.scenes` draws the clips (``ClipSpec``, ``render_clip``, ``world_specs``, ``caption``);
* :mod:`toy_world.world_files` writes a world folder (MP4s, the build-index manifest, depth) and reads it back;
* :mod:`toy_world.train_clip` trains a toy open_clip model on it (``load_toy_clip``, ``clip_recall``);
* :mod:`toy_world.train_depth` trains a toy DPT depth model on it (``load_toy_depth``, ``aligned_abs_rel``).

The trained weights live in ``toy_world/weights/`` with a ``manifest.json`` (recipe, seeds, metrics, sha256).
"""
