"""The toy preset's trained weights: where they are, and the check that they are the files that were trained.

``make toy-world`` (:mod:`toy_world`) trains every model of the chain at toy size on the procedural toy world
and writes the weights here, in ``storyreel/models/toy_weights/``, next to ``manifest.json``:

* ``clip.safetensors``: the toy open_clip model (retrieval's embedder for ``--models toy``);
* ``depth.safetensors``: the toy DPT (the depth model for ``--models toy``);
* ``render/<component>/``: the toy render model, one diffusers / transformers folder per component (VAE, text
  encoder, UNet, motion adapter, ControlNet), float16 safetensors;
* ``ip_adapter/``: the toy IP-Adapter and its image encoder (``render-story --ip-adapter toy``);
* ``sparse_control/``: the toy SparseCtrl RGB model (keyframe shots and generated transitions, ``--sparsectrl toy``).

``manifest.json`` has one entry per trained model (``clip``, ``depth``, ``render.<stage>``): the recipe, seeds,
steps, losses, measured metrics, and the sha256 of every file it wrote (``file`` + ``sha256`` for one file,
``files``: path → sha256 for several). Loading goes through :func:`verified_file` / :func:`verified_folder`,
which refuse a file that is missing or whose sha256 is not the manifest's (:class:`ToyWeightsError`): the toy
preset never runs on weights other than the ones whose figures the manifest reports.
"""

from __future__ import annotations

import json
from pathlib import Path

from storyreel.errors import ModelLoadError
from storyreel.hashing import file_sha256

TOY_WEIGHTS_DIR = Path(__file__).resolve().parent / "toy_weights"
MANIFEST_FILE = "manifest.json"
RENDER_FOLDER = "render"


class ToyWeightsError(ModelLoadError):
    """Toy weights that are missing, or whose sha256 is not the one in the toy weights' manifest."""


def read_manifest(folder: Path = TOY_WEIGHTS_DIR) -> dict:
    """The toy weights' manifest (:class:`ToyWeightsError` when there is none: train them with ``make toy-world``)."""
    path = Path(folder) / MANIFEST_FILE
    if not path.is_file():
        raise ToyWeightsError(f"{path}: no toy weights manifest; train the toy models with `make toy-world`")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ToyWeightsError(f"{path}: not readable ({exc}); train the toy models again with `make toy-world`") \
            from None


def expected_sha256(folder: Path = TOY_WEIGHTS_DIR) -> dict[str, str]:
    """Every file the manifest lists (path relative to ``folder``) → its sha256."""
    expected = {}
    for entry in read_manifest(folder).values():
        if not isinstance(entry, dict):
            continue
        if "file" in entry and "sha256" in entry:
            expected[entry["file"]] = entry["sha256"]
        expected.update(entry.get("files", {}))
    return expected


def verified_file(relative: str, folder: Path = TOY_WEIGHTS_DIR) -> Path:
    """``folder/relative`` after checking its sha256 against the manifest."""
    folder = Path(folder)
    wanted = expected_sha256(folder).get(relative)
    path = folder / relative
    if wanted is None:
        raise ToyWeightsError(f"{path}: not listed in {folder / MANIFEST_FILE}; train the toy models with "
                              "`make toy-world`")
    if not path.is_file():
        raise ToyWeightsError(f"{path}: missing (listed in {MANIFEST_FILE}); train the toy models with "
                              "`make toy-world`")
    if file_sha256(path) != wanted:
        raise ToyWeightsError(f"{path}: its sha256 is not the one in {MANIFEST_FILE}: these are not the trained toy "
                              "weights (restore them with git, or train them again with `make toy-world`)")
    return path


def verified_folder(relative: str, folder: Path = TOY_WEIGHTS_DIR) -> Path:
    """``folder/relative`` (a component's folder) after checking every file the manifest lists in it, and that
    it holds no file the manifest does not list."""
    folder = Path(folder)
    prefix = relative.rstrip("/") + "/"
    listed = [name for name in expected_sha256(folder) if name.startswith(prefix)]
    if not listed:
        raise ToyWeightsError(f"{folder / relative}: no files of it in {folder / MANIFEST_FILE}; train the toy "
                              "models with `make toy-world`")
    for name in listed:
        verified_file(name, folder)
    present = {str(p.relative_to(folder)) for p in (folder / relative).rglob("*") if p.is_file()}
    extra = sorted(present - set(listed))
    if extra:
        raise ToyWeightsError(f"{folder / extra[0]}: not listed in {MANIFEST_FILE}; remove it or train the toy "
                              "models again with `make toy-world`")
    return folder / relative


def render_component_folder(name: str, folder: Path = TOY_WEIGHTS_DIR) -> Path:
    """The verified folder of the toy render model's ``name`` component (``vae``, ``unet``, ...)."""
    return verified_folder(f"{RENDER_FOLDER}/{name}", folder)
