"""The character file: one safetensors file with the TimeInv table, the LoRA and the metadata.

Tensors:

* ``lora_bundle.timeinv_table``: the ``buckets x d`` TimeInv table (float32). diffusers'
  ``load_lora_weights`` requires every key of a LoRA file to contain ``lora`` and loads only keys under
  ``unet.`` and ``text_encoder.``, so this name lets a stock pipeline load the file and skip the table.
* ``unet.<module path>.lora_A.weight`` (``rank x in``) and ``unet.<module path>.lora_B.weight``
  (``out x rank``) for every adapted spatial attention projection: diffusers' (peft-style) UNet LoRA
  keys, so ``pipe.load_lora_weights("hare.safetensors", adapter_name="hare")`` works on any SD1.5 /
  AnimateDiff pipeline.

Header (``__metadata__``, strings): ``storyreel_character`` (the format version), ``name``, ``token``,
``class_word``, ``buckets``, ``num_train_timesteps``, ``lora_rank``, ``lora_alpha``, and JSON values
``base_model`` (what the trainer was told about the base model: preset, sources, config fingerprints; and
``weights``, the fingerprint of the base weights it was trained on, which the render checks: see
:func:`characters.character_set.base_weights_fingerprint`; files written before it was recorded lack it),
``base_signature`` (the structure the file needs: text width and vocabulary, training timesteps, a digest of
the UNet's spatial attention shapes), ``training`` (the training settings and data, and ``timeinv_coverage``:
the updates of every table row and how the untrained ones were derived, :attr:`Character.coverage`; files
written before it was recorded lack it), plus diffusers' own
``lora_adapter_metadata`` (the ``LoraConfig``: rank, alpha, target modules, so diffusers rebuilds the same
adapter scale).

:func:`load_character` reads only safetensors: ``.bin``, ``.pt``, ``.pth``, ``.ckpt``, ``.pkl`` and
``.pickle`` files (pickles can run code) and anything that is not a safetensors file are refused with a
:class:`~characters.errors.CharacterFileError` naming the file. :func:`export_textual_inversion` writes
the time-averaged embedding as a plain textual-inversion file (``{token: 1 x d}``, the format of
diffusers' textual-inversion training) that ``pipe.load_textual_inversion(path)`` loads.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from characters.errors import CharacterFileError
from characters.timeinv import row_index
from storyreel.errors import first_line
from storyreel.weights_policy import PICKLE_SUFFIXES

FORMAT_VERSION = 1
FORMAT_KEY = "storyreel_character"
TABLE_KEY = "lora_bundle.timeinv_table"
UNET_PREFIX = "unet."
LORA_ADAPTER_METADATA_KEY = "lora_adapter_metadata"  # diffusers' header key for the LoraConfig
_JSON_FIELDS = ("base_model", "base_signature", "training")
RENDER_SCHEDULERS = ("ddim", "euler", "dpmpp_2m")  # the schedulers whose rows the coverage check looks at


@dataclass
class Character:
    """A trained character: its token, class word, TimeInv table and LoRA weights.

    ``table`` is ``buckets x d`` float32 (``buckets == num_train_timesteps``: one row per timestep);
    ``lora_state_dict`` maps diffusers' keys (``unet.<module path>.lora_A.weight`` / ``.lora_B.weight``)
    to tensors; ``metadata`` is the file header with its JSON values decoded.
    """

    name: str
    token: str
    class_word: str
    table: torch.Tensor
    lora_state_dict: dict[str, torch.Tensor]
    num_train_timesteps: int = 1000
    lora_rank: int = 8
    lora_alpha: float = 8.0
    base_model: dict = field(default_factory=dict)
    base_signature: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)
    path: Path | None = None

    @property
    def buckets(self) -> int:
        """Rows of the table (``num_train_timesteps`` when every timestep has its own row)."""
        return int(self.table.shape[0])

    @property
    def dim(self) -> int:
        return int(self.table.shape[1])

    @property
    def lora_targets(self) -> list[str]:
        """Module paths of the UNet layers the LoRA adapts."""
        return sorted({key[len(UNET_PREFIX):].rsplit(".lora_", 1)[0] for key in self.lora_state_dict})

    def row_index(self, timestep) -> int:
        return int(row_index(timestep, self.buckets, self.num_train_timesteps))

    def embedding_at(self, timestep) -> torch.Tensor:
        """The token's embedding at a diffusion timestep: row ``floor(t * buckets / T)``."""
        return self.table[self.row_index(timestep)]

    def time_average(self) -> torch.Tensor:
        """The mean over all training timesteps (each timestep counts once): the exported TI embedding."""
        index = row_index(torch.arange(self.num_train_timesteps), self.buckets, self.num_train_timesteps)
        return self.table.to(torch.float32)[index].mean(0)

    @property
    def coverage(self) -> dict | None:
        """The training's TimeInv coverage, or None (a file from before it was recorded): ``rows``, ``updates``
        (how many training steps updated each row, in row order), ``trained_rows``, ``derived_rows`` (rows no
        step updated, derived from the trained ones: :func:`characters.timeinv.fill_untrained_rows`) and
        ``derivation`` (how)."""
        coverage = self.training.get("timeinv_coverage") if isinstance(self.training, dict) else None
        if not isinstance(coverage, dict) or len(coverage.get("updates") or ()) != self.buckets:
            return None
        return coverage

    def untrained_rows_read(self, steps: int = 25, schedulers=RENDER_SCHEDULERS) -> dict[str, list[int]] | None:
        """``{scheduler: rows}``: the rows no training step updated that a ``steps``-step render with each
        scheduler reads (empty lists when every row it reads was trained); None without a coverage record."""
        from characters.timeinv import rows_read_by_render

        coverage = self.coverage
        if coverage is None:
            return None
        updates = coverage["updates"]
        return {name: [row for row in rows_read_by_render(name, self.buckets, self.num_train_timesteps, steps)
                       if not updates[row] > 0]
                for name in schedulers}

    @property
    def metadata(self) -> dict:
        """The header as a dict (JSON fields decoded)."""
        return {
            FORMAT_KEY: FORMAT_VERSION, "name": self.name, "token": self.token, "class_word": self.class_word,
            "buckets": self.buckets, "num_train_timesteps": self.num_train_timesteps, "lora_rank": self.lora_rank,
            "lora_alpha": self.lora_alpha, "base_model": self.base_model, "base_signature": self.base_signature,
            "training": self.training, LORA_ADAPTER_METADATA_KEY: self.lora_adapter_metadata(),
        }

    def lora_adapter_metadata(self) -> dict:
        """diffusers' ``lora_adapter_metadata``: the ``LoraConfig`` arguments under the ``unet.`` prefix."""
        return {"unet.r": self.lora_rank, "unet.lora_alpha": self.lora_alpha,
                "unet.target_modules": self.lora_targets, "unet.lora_dropout": 0.0, "unet.bias": "none"}

    def describe_base(self) -> str:
        return describe_base_model(self.base_model)


def describe_base_model(base_model: dict | None) -> str:
    """A short human description of a base model record (preset, and where the text encoder came from)."""
    if not base_model:
        return "an unrecorded base model"
    preset = base_model.get("preset")
    text = f"preset '{preset}'" if preset else "a base model"
    source = (base_model.get("components") or {}).get("text_encoder") or {}
    where = source.get("source")
    if where and source.get("kind") not in ("tiny", "random"):
        text += f" (text encoder from '{where}')"
    return text


def _header(character: Character) -> dict[str, str]:
    header = {"format": "pt"}
    for key, value in character.metadata.items():
        header[key] = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return header


def character_tensors(character: Character) -> dict[str, torch.Tensor]:
    """The file's tensors (contiguous CPU copies)."""
    tensors = {TABLE_KEY: character.table.detach().to("cpu", torch.float32).contiguous()}
    for key, value in sorted(character.lora_state_dict.items()):
        if not key.startswith(UNET_PREFIX):
            raise ValueError(f"LoRA key {key!r} is not a UNet key (unet.<module path>.lora_A/B.weight)")
        tensors[key] = value.detach().to("cpu").contiguous()
    return tensors


def save_character(character: Character, path: str | os.PathLike) -> Path:
    """Write ``character`` to ``path`` (``.safetensors``) atomically; returns the path."""
    from safetensors.torch import save_file

    from storyreel.atomic_files import atomic_path

    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise CharacterFileError(path, "a character file must be a .safetensors file")
    tensors = character_tensors(character)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=_header(character))
    character.path = path
    return path


def _sniff(path: Path) -> str:
    try:
        with open(path, "rb") as handle:
            head = handle.read(8)
    except OSError:
        return ""
    if head.startswith(b"PK"):
        return " (it looks like a PyTorch zip checkpoint)"
    if head[:1] == b"\x80":
        return " (it looks like a Python pickle)"
    return ""


def _refuse_pickle(path: Path) -> None:
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise CharacterFileError(
            path, f"refusing to load a {path.suffix} file: pickle-based checkpoints can run code when loaded. "
                  "Only .safetensors character files are loaded (train-character writes them)")


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and header of a safetensors file; pickles and other content are refused (naming the file)."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    _refuse_pickle(path)
    if not path.exists():
        raise CharacterFileError(path, "no such file")
    if not path.is_file():
        raise CharacterFileError(path, "not a file")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            header = dict(handle.metadata() or {})
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        reason = first_line(exc, limit=None)
        raise CharacterFileError(path, f"not a safetensors file{_sniff(path)}: {reason}. Only .safetensors "
                                       "character files are loaded") from None
    return tensors, header


def _field(path: Path, header: dict, key: str, kind=str):
    if key not in header:
        raise CharacterFileError(path, f"the header has no '{key}' entry; the file is damaged or not a character file")
    value = header[key]
    try:
        if kind is str:
            if not value:
                raise ValueError("empty")
            return value
        if kind in (int, float):
            return kind(value)
        return json.loads(value)
    except (ValueError, TypeError):
        raise CharacterFileError(path, f"header entry '{key}' is not valid ({value[:80]!r})") from None


def load_character(path: str | os.PathLike) -> Character:
    """Read a character file (safetensors only; see the module docstring).

    Raises :class:`~characters.errors.CharacterFileError` naming the file for a pickle (``.bin``, ``.pt``,
    ...), a file that is not safetensors, a safetensors file that is not a character file (a plain LoRA or
    textual inversion), another format version, or inconsistent tensors.
    """
    path = Path(path)
    tensors, header = read_safetensors(path)
    if FORMAT_KEY not in header:
        kind = "a LoRA" if any(".lora" in k or "lora_" in k for k in tensors) else "safetensors"
        raise CharacterFileError(path, f"{kind} file but not a storyreel character file (no '{FORMAT_KEY}' entry in "
                                       "its header); train one with train-character")
    version = header[FORMAT_KEY]
    if version != str(FORMAT_VERSION):
        raise CharacterFileError(path, f"character file format version {version!r}; this storyreel reads version "
                                       f"{FORMAT_VERSION}")
    name = _field(path, header, "name")
    token = _field(path, header, "token")
    class_word = _field(path, header, "class_word")
    buckets = _field(path, header, "buckets", int)
    steps = _field(path, header, "num_train_timesteps", int)
    rank = _field(path, header, "lora_rank", int)
    alpha = _field(path, header, "lora_alpha", float)
    records = {key: _field(path, header, key, dict) for key in _JSON_FIELDS}
    for key, value in records.items():
        if not isinstance(value, dict):
            raise CharacterFileError(path, f"header entry '{key}' must be a JSON object")

    table = tensors.pop(TABLE_KEY, None)
    if table is None:
        raise CharacterFileError(path, f"no TimeInv table (tensor '{TABLE_KEY}')")
    if table.ndim != 2 or table.shape[0] != buckets or not table.is_floating_point():
        raise CharacterFileError(path, f"the TimeInv table has shape {tuple(table.shape)} ({table.dtype}); the header "
                                       f"says {buckets} rows")
    if not 1 <= buckets <= steps:
        raise CharacterFileError(path, f"{buckets} table rows for {steps} training timesteps")
    if not torch.isfinite(table).all():
        raise CharacterFileError(path, "the TimeInv table holds NaN or infinite values")
    lora = {}
    for key, value in tensors.items():
        if not key.startswith(UNET_PREFIX) or not key.endswith((".lora_A.weight", ".lora_B.weight")):
            raise CharacterFileError(path, f"unexpected tensor '{key}' (a character file holds the table and UNet "
                                           "LoRA weights unet.<module>.lora_A.weight / lora_B.weight)")
        lora[key] = value
    _check_lora_pairs(path, lora, rank)
    return Character(name=name, token=token, class_word=class_word, table=table.to(torch.float32),
                     lora_state_dict=lora, num_train_timesteps=steps, lora_rank=rank, lora_alpha=alpha,
                     base_model=records["base_model"], base_signature=records["base_signature"],
                     training=records["training"], path=path)


def _check_lora_pairs(path: Path, lora: dict[str, torch.Tensor], rank: int) -> None:
    modules = {key.rsplit(".lora_", 1)[0] for key in lora}
    for module in sorted(modules):
        a, b = lora.get(f"{module}.lora_A.weight"), lora.get(f"{module}.lora_B.weight")
        if a is None or b is None:
            raise CharacterFileError(path, f"LoRA of '{module[len(UNET_PREFIX):]}' lacks its "
                                           f"{'lora_A' if a is None else 'lora_B'} weight")
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != rank or b.shape[1] != rank:
            raise CharacterFileError(path, f"LoRA of '{module[len(UNET_PREFIX):]}' has shapes {tuple(a.shape)} and "
                                           f"{tuple(b.shape)}, not rank {rank}")
        if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
            raise CharacterFileError(path, f"LoRA of '{module[len(UNET_PREFIX):]}' holds NaN or infinite values")


def export_textual_inversion(character: Character, path: str | os.PathLike) -> Path:
    """Write the time-averaged embedding as a plain textual-inversion file: ``{token: 1 x d}`` safetensors."""
    from safetensors.torch import save_file

    from storyreel.atomic_files import atomic_path

    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise CharacterFileError(path, "the textual-inversion export must be a .safetensors file")
    embedding = character.time_average()[None].contiguous()
    with atomic_path(path) as tmp:
        save_file({character.token: embedding}, str(tmp),
                  metadata={"format": "pt", "name": character.name, "token": character.token,
                            "class_word": character.class_word, "source": "storyreel TimeInv time average"})
    return path
