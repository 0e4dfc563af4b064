"""storyreel's shared home: what every stage uses, below all of them.

Nothing in this package imports a stage (``storyboard``, ``retrieval``, ``index_builder``, ``structure``,
``characters``, ``render``); the stages import from here. Its modules are named for what they hold:

* :mod:`storyreel.atomic_files`: writes that leave the old file or the new one, never half of one.
* :mod:`storyreel.hashing`: file and weights fingerprints.
* :mod:`storyreel.errors`: :class:`~storyreel.errors.StoryreelError`, the base of every error a command
  reports as ``error: ...``, carrying its exit code.
* :mod:`storyreel.devices`: the default torch device.
* :mod:`storyreel.weights_policy`: safetensors only for anything a user hands us.
* :mod:`storyreel.seeding`: seeded model construction that leaves the caller's random state alone.
* :mod:`storyreel.command_line`: the convention every command follows (``error:`` lines, ``--quiet``).
* :mod:`storyreel.drawing`: colours and fonts of the contact sheets.
* :mod:`storyreel.ray_runtime`: starting Ray the same way for every engine.
* :mod:`storyreel.models`: the model zoo: presets (one registry), the render model's loaders, tokenizer
  and CPU offload.
"""
