"""The model zoo: every ``--models`` preset in one registry, and the render model's builders and loaders.

A leaf below every stage: ``render``, ``characters``, ``structure``, ``retrieval`` and the benches import it;
it imports no stage. Its modules:

* :mod:`storyreel.models.presets`: THE registry. A preset name (``sd15``, ``tiny``, ``sd15-random``,
  ``sd15-lightning``, ``sd15-lcm``) means the same in every command: the retrieval CLIP model, the structure
  depth model, the render components and the scheduler, steps and guidance defaults.
* :mod:`storyreel.models.specification`: :class:`~storyreel.models.specification.ModelSpecification`, a
  preset plus a TOML file and swapped components, checked without loading anything;
  :mod:`storyreel.models.model_options` gives every command the same model flags.
* :mod:`storyreel.models.single_file`: single-file SD1.5 checkpoints, motion-module files and fused LoRAs.
* :mod:`storyreel.models.fetch`: ``fetch-models``, every component into local folders for offline machines.
* :mod:`storyreel.models.architectures`: the render model's configurations at real and toy size, and the
  code that builds them with seeded random weights.
* :mod:`storyreel.models.schedulers`: the noise schedulers and their configurations.
* :mod:`storyreel.models.loading`: :func:`~storyreel.models.loading.load_render_components` (a preset, with
  components replaced by hub ids or local folders from a TOML file), :class:`RenderComponents`.
* :mod:`storyreel.models.clip_tokenizer`: the CLIP BPE tokenizer, built from the files open_clip ships.
* :mod:`storyreel.models.offload`: moving each model to the GPU only for the phase that uses it.

Import the submodules directly; this package imports nothing heavy.
"""
