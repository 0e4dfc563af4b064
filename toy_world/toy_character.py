"""The toy character of the identity checks, trained with ``train-character --models toy`` like any character.

:func:`train_toy_character` writes the five reference images (:func:`toy_world.identity_checks.reference_images`)
to ``WORK/character/images``, runs ``train-character`` on them as a user would (a subprocess; checkpoints in
``WORK/checkpoints/character``, so a killed run resumes), and records the file in the toy weights'
``manifest.json`` as ``character.zuri`` (its sha256, the arguments, the seconds and the losses). The
character was trained on the committed render weights: ``render-story`` refuses it on any others.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from storyreel.atomic_files import write_json
from storyreel.hashing import file_sha256
from storyreel.models.toy_weights import MANIFEST_FILE, TOY_WEIGHTS_DIR
from toy_world.identity_checks import NAME, TRAINING_ARGUMENTS, write_reference_images

CHARACTER_FILE = f"characters/{NAME}.safetensors"


def train_toy_character(work: Path, out: Path = TOY_WEIGHTS_DIR, progress: bool = True,
                        steps: int | None = None) -> dict:
    """Train the toy character into ``out/characters/zuri.safetensors`` (resuming ``work``'s checkpoint) and
    record it in ``out/manifest.json``; returns the record. ``steps`` replaces the recipe's (for tests)."""
    from characters.character_file import load_character
    from characters.training import CHECKPOINT_FILE

    work, out = Path(work), Path(out)
    images = work / "character" / "images"
    write_reference_images(images)
    target = out / CHARACTER_FILE
    target.parent.mkdir(parents=True, exist_ok=True)
    checkpoints = work / "checkpoints" / "character"
    recipe = list(TRAINING_ARGUMENTS)
    if steps is not None:
        recipe[recipe.index("--steps") + 1] = str(steps)
    arguments = [*recipe, "--models", "toy", *_render_model_options(work, out), "--images", str(images),
                 "--out", str(target), "--checkpoint-dir", str(checkpoints), "--device", "cpu",
                 *(() if progress else ("--quiet",))]
    if (checkpoints / CHECKPOINT_FILE).is_file():
        arguments.append("--resume")
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "characters.cli", *arguments], check=True)
    character = load_character(target)
    record = {"file": CHARACTER_FILE, "sha256": file_sha256(target), "bytes": target.stat().st_size,
              "arguments": recipe, "reference_images": len(list(images.glob("*.png"))),
              "seconds": round(time.perf_counter() - started, 1),
              "final_loss": character.training.get("final_loss"), "steps": character.training.get("steps_done")}
    manifest_path = out / MANIFEST_FILE
    manifest = json.loads(manifest_path.read_text(encoding="utf-8")) if manifest_path.is_file() else {}
    manifest[f"character.{NAME}"] = record
    write_json(manifest_path, manifest)
    return record


def _render_model_options(work: Path, out: Path) -> list[str]:
    """``--model-config`` pointing the toy preset at ``out``'s render folders when ``out`` has its own
    (``python -m toy_world --out DIR``): the character is trained on the render model trained beside it."""
    from storyreel.atomic_files import write_text
    from storyreel.models.toy_weights import RENDER_FOLDER

    if out.resolve() == Path(TOY_WEIGHTS_DIR).resolve() or not (out / RENDER_FOLDER).is_dir():
        return []
    config = work / "character" / "models.toml"
    folders = {name: (out / RENDER_FOLDER / name).resolve()
               for name in ("vae", "text_encoder", "unet", "motion_adapter", "controlnet")}
    write_text(config, 'preset = "toy"\n\n[components]\n'
               + "".join(f'{name} = "{folder.as_posix()}"\n' for name, folder in folders.items()))
    return ["--model-config", str(config)]
