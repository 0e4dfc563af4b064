"""``python -m evaluation.i3d_conversion IN.pt OUT.safetensors``: pytorch-i3d's I3D state dict → safetensors.

The standard FVD extractor's weights are published only as pickles. This converts the state dict form, pytorch-i3d's
``InceptionI3d(400, in_channels=3)`` weights as MCVD, TATS and VideoGPT ship them (``i3d_pretrained_400.pt``;
pytorch-i3d's own ``models/rgb_imagenet.pt`` has the same layout), into a ``.safetensors`` file that
:func:`evaluation.i3d.load_i3d` loads.

This is the one place storyreel reads a pickle, and only at the user's explicit request (running this command on a
file they chose). It reads it with ``torch.load(path, map_location="cpu", weights_only=True)``, PyTorch's tensor-only
unpickler, which refuses any object other than tensors and plain containers, so the file cannot run code. A
``module.`` prefix on every key (a model saved inside ``DataParallel``) is dropped; batch-norm
``num_batches_tracked`` counters that an old file lacks are added as 0 (they take no part in inference). The keys
and shapes must then be exactly :class:`evaluation.i3d.InceptionI3d`'s. StyleGAN-V's ``i3d_torchscript.pt`` is a
TorchScript program, not a state dict: it is refused (loading it would run its code); use the state dict form.

The output is written atomically (a temporary file in the same folder, then renamed) and the command prints one
line with its SHA-256. Bad input prints one ``error: ...`` line naming the file and exits with code 2.
"""

from __future__ import annotations

import zipfile
from collections.abc import Mapping
from pathlib import Path

import click

from storyreel.command_line import command
from storyreel.errors import StoryreelError, first_line

MODULE_PREFIX = "module."
COUNTER_SUFFIX = ".num_batches_tracked"


class ConversionError(StoryreelError, ValueError):
    """An input the converter cannot use; the message names the file."""


def is_torchscript(path: Path) -> bool:
    """True for a TorchScript archive (a zip holding ``constants.pkl`` or ``code/``), found without unpickling."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
    return any(name.endswith("/constants.pkl") or "/code/" in name for name in names)


def read_state_dict(path: Path) -> dict:
    """The tensors of a pytorch-i3d state dict file, read with PyTorch's tensor-only loader, ``module.`` dropped."""
    import torch

    if not path.is_file():
        raise ConversionError(f"'{path}': no such file")
    if is_torchscript(path):
        raise ConversionError(f"'{path}' is a TorchScript program (StyleGAN-V's i3d_torchscript.pt?), which is not "
                              "supported: loading it runs its code. Convert pytorch-i3d's state dict "
                              "(i3d_pretrained_400.pt) instead")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises many types (UnpicklingError, RuntimeError, EOFError): say why
        raise ConversionError(f"'{path}': not a tensor-only PyTorch state dict (torch.load with weights_only=True "
                              f"refused it: {first_line(exc, 200)})") from exc
    if not isinstance(state, Mapping):
        raise ConversionError(f"'{path}' holds a {type(state).__name__}, not a state dict")
    others = [key for key, value in state.items() if not isinstance(value, torch.Tensor)]
    if others:
        raise ConversionError(f"'{path}': entry '{others[0]}' holds {type(state[others[0]]).__name__}, not a "
                              "tensor (expected pytorch-i3d's InceptionI3d state dict)")
    if state and all(str(key).startswith(MODULE_PREFIX) for key in state):
        state = {key[len(MODULE_PREFIX):]: value for key, value in state.items()}
    return dict(state)


def convert(source: Path, target: Path) -> tuple[str, int]:
    """Write ``source``'s I3D weights to ``target`` (safetensors, atomically); the file's SHA-256 and the number of
    ``num_batches_tracked`` counters added."""
    import torch
    from safetensors.torch import save_file

    from evaluation.i3d import InceptionI3d, check_state_dict
    from storyreel.atomic_files import atomic_path
    from storyreel.hashing import file_sha256

    if target.suffix.lower() != ".safetensors":
        raise ConversionError(f"'{target}': the output must be a .safetensors file")
    state = read_state_dict(source)
    model = InceptionI3d()
    added = 0
    for key in model.state_dict():
        if key.endswith(COUNTER_SUFFIX) and key not in state and key[:-len(COUNTER_SUFFIX)] + ".running_mean" in state:
            state[key] = torch.zeros((), dtype=torch.long)
            added += 1
    check_state_dict(state, str(source), model)  # ModelLoadError naming the file and the first wrong key
    tensors = {key: (value.float() if value.is_floating_point() else value).contiguous()
               for key, value in sorted(state.items())}
    with atomic_path(target) as temporary:
        save_file(tensors, str(temporary), metadata={"format": "pt", "architecture": "pytorch-i3d InceptionI3d(400)",
                                                     "converted_from": source.name})
    return file_sha256(target), added


@command("i3d-conversion")
@click.argument("source", type=click.Path(path_type=Path), metavar="IN.pt")
@click.argument("target", type=click.Path(path_type=Path), metavar="OUT.safetensors")
def main(source: Path, target: Path) -> None:
    """Convert pytorch-i3d's InceptionI3d(400) state dict IN.pt (i3d_pretrained_400.pt) to OUT.safetensors, the
    I3D weights evaluate-story loads for FVD (read with torch.load(weights_only=True); TorchScript is refused)."""
    digest, added = convert(source, target)
    note = f"; added {added} num_batches_tracked counters the file lacked" if added else ""
    click.echo(f"wrote {target} (sha256 {digest}{note})")


if __name__ == "__main__":
    main()
