"""Characters registered on a render's components: tokens, TimeInv tables, and LoRA adapters by name.

::

    from characters import CharacterSet, load_character, per_step_embeddings

    characters = CharacterSet(components, base_model=identity)   # before anything is added
    characters.add(load_character("characters/hare.safetensors"))
    characters.add(load_character("characters/tortoise.safetensors"), name="tortoise")
    characters.activate({"hare": 1.0, "tortoise": 0.8})          # this shot's LoRAs; {} for none
    hook = per_step_embeddings(characters, sampler.encode_prompt, caption, negative_prompt)
    sampler(caption, negative_prompt, conditioning=..., prompt_embeds_for_step=hook)
    characters.remove()                                         # components back to the base model

``components`` is anything with ``tokenizer``, ``text_encoder``, ``unet`` and ``scheduler`` (the render's
``RenderComponents``); the characters stage never imports the render.

* :meth:`CharacterSet.add` checks that the file fits the loaded base model (text width and vocabulary,
  training timesteps, the shapes of every LoRA layer, and the text encoder's configuration when the caller
  passes the base model's record) and raises :class:`~characters.errors.CharacterFileError` naming the file
  and both models when it does not; then that it was trained on these base weights (the file's
  ``base_model["weights"]`` against :func:`base_weights_fingerprint` of the components, taken when the set is
  made): other weights are refused with both fingerprints named, or, with ``allow_other_base``, loaded with an
  :class:`OtherBaseWeightsWarning`; a file from before fingerprints were recorded loads with an
  :class:`UnrecordedBaseWeightsWarning` (:meth:`CharacterSet.base_weights_match` says which); registers the
  token in the tokenizer (refused if it is a word of the vocabulary or another character's token); appends one
  row to the text encoder's input embeddings (set to the time-averaged embedding, what the token means outside
  :meth:`at_timestep`); and loads the LoRA as a peft adapter named after the character. After an ``add`` every
  character's adapter is active at scale 1 until :meth:`activate` says otherwise.
* :meth:`CharacterSet.at_timestep` makes every text-encoder call inside it embed each character's token
  with its table row for that timestep (:class:`~characters.timeinv.TokenEmbeddingHook`).
* :meth:`CharacterSet.remove` (or leaving ``with CharacterSet(...)``) deletes the adapters (and the
  LoRA layers, when no other adapter is left), removes the hook, and restores the tokenizer and the
  text encoder's embedding layer, so the components are the base model again.

Training uses the same object (:meth:`CharacterSet.add_trainable`): a trainable table and a fresh LoRA.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import re
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import torch

from characters.character_file import UNET_PREFIX, Character, describe_base_model
from characters.errors import CharacterError, CharacterFileError, CharacterTokenError
from characters.lora_targets import (
    DEFAULT_PROJECTIONS,
    lora_config,
    spatial_attention_targets,
    target_shapes,
    unet_signature,
)
from characters.timeinv import TimeInvTable, TokenEmbeddingHook, initial_table
from storyreel.hashing import state_fingerprint
from storyreel.seeding import seeded

_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
BASE_WEIGHT_MODELS = ("text_encoder", "vae", "unet", "controlnet")


class UnrecordedBaseWeightsWarning(UserWarning):
    """A character file that records no fingerprint of its base weights (made before they were recorded):
    it loads, unchecked."""


class OtherBaseWeightsWarning(UserWarning):
    """A character trained on other base weights, loaded anyway (``allow_other_base``)."""


def base_weights_fingerprint(components) -> dict:
    """A fingerprint of the base weights a character is trained on and rendered with: ``{"fingerprint": 16 hex
    digits over all four models, "components": {text_encoder, vae, unet, controlnet: 16 hex digits each},
    "dtype": the UNet's}``.

    Each model's digest is :func:`storyreel.hashing.weights_fingerprint`'s (the names, shapes and first 4096
    values of every tensor) with two changes, so that it names the *base* weights whatever was done to them:
    the values are rounded to float16 before hashing (the same weights loaded in float32 on a CPU and in
    float16 on a GPU match; bfloat16 copies do not), and what characters add is left out (peft's ``lora_*``
    tensors, with its ``base_layer`` names mapped back, and token embedding rows past the text encoder's
    configured vocabulary), so components carrying characters hash as their base.
    """
    digests = {name: _base_weights_digest(getattr(components, name)) for name in BASE_WEIGHT_MODELS
               if getattr(components, name, None) is not None}
    combined = hashlib.sha256(json.dumps(digests, sort_keys=True).encode()).hexdigest()[:16]
    dtype = getattr(getattr(components, "unet", None), "dtype", None)
    return {"fingerprint": combined, "components": digests,
            "dtype": str(dtype).removeprefix("torch.") if dtype is not None else None}


def _base_weights_digest(model: torch.nn.Module) -> str:
    return state_fingerprint(_base_state(model), value_dtype=torch.float16)


def _base_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's state without what characters add: LoRA tensors (peft's ``base_layer`` names mapped back)
    and the token embedding rows past the vocabulary of the model's configuration."""
    state = {name.replace(".base_layer.", "."): tensor for name, tensor in model.state_dict().items()
             if ".lora_" not in name}
    vocabulary = getattr(getattr(model, "config", None), "vocab_size", None)
    input_embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if isinstance(vocabulary, int) and isinstance(input_embeddings, torch.nn.Embedding):
        pointer = input_embeddings.weight.data_ptr()
        for name, tensor in state.items():
            if tensor.data_ptr() == pointer and tensor.shape[0] > vocabulary:
                state[name] = tensor[:vocabulary]
    return state


def base_signature(components) -> dict:
    """What a character file needs of a base model: text width and vocabulary, timesteps, UNet attention shapes."""
    embedding = components.text_encoder.get_input_embeddings()
    tokenizer = components.tokenizer
    return {
        "text_hidden_size": int(embedding.embedding_dim),
        "text_vocab_size": int(getattr(tokenizer, "vocab_size", len(tokenizer))),
        "num_train_timesteps": int(components.scheduler.config.num_train_timesteps),
        "unet_attention": unet_signature(components.unet),
    }


_SIGNATURE_WORDS = {
    "text_hidden_size": "text encoder width",
    "text_vocab_size": "tokenizer vocabulary",
    "num_train_timesteps": "diffusion training timesteps",
    "unet_attention": "UNet attention layers (digest of their shapes)",
}


@dataclass
class CharacterEntry:
    """One registered character: its token id, table and adapter."""

    name: str
    token: str
    token_id: int
    class_word: str
    table: TimeInvTable
    adapter: str | None
    trainable: bool = False
    character: Character | None = None
    lora_rank: int = 0
    lora_alpha: float = 0.0
    extra: dict = field(default_factory=dict)


class CharacterSet:
    """Characters on a set of components (see the module docstring)."""

    def __init__(self, components, base_model: dict | None = None, allow_other_base: bool = False):
        self.components = components
        self.base_model = base_model
        self.base_signature = base_signature(components)
        self.base_weights = base_weights_fingerprint(components)  # before any adapter or token is added
        self.allow_other_base = allow_other_base
        self._base_weights_match: dict[str, str] = {}
        self._entries: dict[str, CharacterEntry] = {}
        self._hook = TokenEmbeddingHook()
        self._saved: dict | None = None
        self._scales: dict[str, float] = {}

    # -- lookup ---------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def __getitem__(self, name: str) -> CharacterEntry:
        return self._entries[name]

    @property
    def names(self) -> list[str]:
        return list(self._entries)

    @property
    def scales(self) -> dict[str, float]:
        """The active adapters and their scales (what the last :meth:`activate` set)."""
        return dict(self._scales)

    @property
    def observers(self) -> list:
        """Callables ``(token_id, row_indices)`` told about every table lookup (instrumentation)."""
        return self._hook.observers

    def table(self, name: str) -> TimeInvTable:
        return self._entries[name].table

    def row_index(self, name: str, timestep) -> int:
        return int(self._entries[name].table.row_index(timestep))

    def characters_in(self, text: str | None) -> list[str]:
        """Names of the registered characters whose token occurs in ``text`` (as the tokenizer sees it)."""
        if not text or not self._entries:
            return []
        ids = set(self.components.tokenizer(text, add_special_tokens=False).input_ids)
        return [name for name, entry in self._entries.items() if entry.token_id in ids]

    # -- the base model ------------------------------------------------------------------------------
    def _save_base(self) -> None:
        if self._saved is None:
            unet = self.components.unet
            self._saved = {
                "tokenizer": copy.deepcopy(self.components.tokenizer),
                "embedding": self.components.text_encoder.get_input_embeddings(),
                "unet_had_peft": bool(getattr(unet, "peft_config", None)),
            }

    def _check_base(self, character: Character, base_model: dict | None) -> None:
        """Refuse a character whose file does not fit the loaded base model (naming the file and both models)."""
        here = self.base_signature
        problems = []
        if character.dim != here["text_hidden_size"]:
            problems.append(f"its TimeInv table is {character.dim}-d but the text encoder is "
                            f"{here['text_hidden_size']}-d")
        for key, words in _SIGNATURE_WORDS.items():
            theirs = character.base_signature.get(key)
            if theirs is not None and theirs != here[key] and not (key == "text_hidden_size" and problems):
                problems.append(f"{words}: {theirs} in the file, {here[key]} here")
        if character.num_train_timesteps != here["num_train_timesteps"] and \
                "num_train_timesteps" not in character.base_signature:
            problems.append(f"diffusion training timesteps: {character.num_train_timesteps} in the file, "
                            f"{here['num_train_timesteps']} here")
        if base_model and character.base_model:
            ours = (base_model.get("components") or {}).get("text_encoder") or {}
            theirs = (character.base_model.get("components") or {}).get("text_encoder") or {}
            if ours.get("config") and theirs.get("config") and ours["config"] != theirs["config"]:
                problems.append(f"text encoder configuration {theirs['config']} in the file, {ours['config']} here")
        if character.lora_state_dict and not problems:
            problems += self._lora_shape_problems(character)
        if problems:
            current = describe_base_model(base_model or self.base_model)
            if current == "an unrecorded base model":
                current = "the loaded one"
            raise CharacterFileError(
                character.path, f"character '{character.name}' was made for {character.describe_base()}, not for "
                                f"the loaded base model ({current}): " + "; ".join(problems[:4])
                                + (f" (and {len(problems) - 4} more)" if len(problems) > 4 else ""))

    def _check_base_weights(self, character: Character, name: str) -> str:
        """``same`` when the file was trained on these base weights; ``unrecorded`` (with a warning) when it does
        not say; ``other`` (with a warning) when it was trained on other weights and ``allow_other_base``; else
        :class:`~characters.errors.CharacterFileError` naming both fingerprints."""
        theirs = character.base_model.get("weights") if isinstance(character.base_model, dict) else None
        if not isinstance(theirs, dict) or not theirs.get("fingerprint"):
            warnings.warn(f"{character.path}: character '{name}' records no fingerprint of the base weights it "
                          "was trained on (an older character file); it is loaded without that check",
                          UnrecordedBaseWeightsWarning, stacklevel=3)
            return "unrecorded"
        ours = self.base_weights
        if theirs["fingerprint"] == ours["fingerprint"]:
            return "same"
        differing = [f"{model} ({theirs_digest} in the file, {ours['components'].get(model)} loaded)"
                     for model, theirs_digest in sorted((theirs.get("components") or {}).items())
                     if theirs_digest != ours["components"].get(model)]
        detail = (f"character '{name}' was trained on other base weights than the loaded ones: the file records "
                  f"base weights {theirs['fingerprint']} ({theirs.get('dtype')}), the loaded models are "
                  f"{ours['fingerprint']} ({ours['dtype']})" + (f"; differing: {', '.join(differing)}"
                                                                if differing else ""))
        if "bfloat16" in (theirs.get("dtype"), ours["dtype"]) and theirs.get("dtype") != ours["dtype"]:
            detail += " (the same weights in bfloat16 and another precision do not match)"
        if self.allow_other_base:
            warnings.warn(f"{character.path}: {detail}; rendered anyway (allow_other_base)", OtherBaseWeightsWarning,
                          stacklevel=3)
            return "other"
        raise CharacterFileError(character.path, f"{detail}. Render it on the weights it was trained on, train it "
                                                 "again on these, or render anyway with render-story "
                                                 "--allow-other-base")

    def base_weights_match(self, name: str) -> str:
        """How the character ``name`` was checked against the base weights: ``same``, ``other`` (loaded with
        ``allow_other_base``) or ``unrecorded`` (an older file); ``same`` for a character trained here."""
        return self._base_weights_match.get(name, "same")

    def _lora_shape_problems(self, character: Character) -> list[str]:
        shapes = target_shapes(self.components.unet)
        problems = []
        for module in character.lora_targets:
            if module not in shapes:
                problems.append(f"LoRA layer '{module}' is not a spatial attention projection of this UNet")
                continue
            fan_in, fan_out = shapes[module]
            a = character.lora_state_dict[f"{UNET_PREFIX}{module}.lora_A.weight"]
            b = character.lora_state_dict[f"{UNET_PREFIX}{module}.lora_B.weight"]
            if a.shape[1] != fan_in or b.shape[0] != fan_out:
                problems.append(f"LoRA layer '{module}' is {a.shape[1]}->{b.shape[0]}, the UNet's is "
                                f"{fan_in}->{fan_out}")
        return problems

    # -- tokens --------------------------------------------------------------------------------------
    def _check_new(self, name: str, token: str) -> None:
        check_name(name)
        if name in self._entries:
            raise CharacterError(f"a character named '{name}' is already loaded")
        unet_adapters = getattr(self.components.unet, "peft_config", None) or {}
        if name in unet_adapters:
            raise CharacterError(f"the UNet already has an adapter named '{name}'")
        check_token(self.components.tokenizer, token, taken={e.token_id: n for n, e in self._entries.items()})

    def _register_token(self, token: str, row: torch.Tensor) -> int:
        tokenizer = self.components.tokenizer
        text_encoder = self.components.text_encoder
        self._save_base()
        tokenizer.add_tokens([token])
        token_id = tokenizer.convert_tokens_to_ids(token)
        ids = tokenizer(token, add_special_tokens=False).input_ids
        if ids != [token_id]:
            raise CharacterTokenError(f"token {token!r} does not tokenize to one token after it was added ({ids})")
        old = text_encoder.get_input_embeddings()
        size = max(old.num_embeddings, token_id + 1)
        weight = old.weight
        new = torch.nn.Embedding(size, old.embedding_dim, device=weight.device, dtype=weight.dtype)
        new.requires_grad_(False)
        with torch.no_grad():
            new.weight[: old.num_embeddings] = weight
            new.weight[token_id] = row.to(device=weight.device, dtype=weight.dtype)
        text_encoder.set_input_embeddings(new)
        self._hook.attach(new)
        return token_id

    # -- adding characters ---------------------------------------------------------------------------
    def add(self, character: Character, name: str | None = None, token: str | None = None,
            base_model: dict | None = None) -> str:
        """Register a loaded :class:`~characters.character_file.Character`; returns its name.

        ``name`` and ``token`` override the file's (the storyboard's names and tokens win); ``base_model``
        (default: the one given to the constructor) is the loaded base model's record, compared with the
        file's. Raises :class:`~characters.errors.CharacterFileError` for a file made for another base
        model, or trained on other base weights (unless ``allow_other_base``), and
        :class:`~characters.errors.CharacterTokenError` for a token that is already a word.
        """
        name = name or character.name
        token = token or character.token
        self._check_new(name, token)
        self._check_base(character, base_model or self.base_model)
        match = self._check_base_weights(character, name)
        device = self.components.text_encoder.get_input_embeddings().weight.device
        table = TimeInvTable(character.table, character.num_train_timesteps).to(device)
        adapter = None
        if character.lora_state_dict:
            adapter = self._load_lora(name, character)
        try:
            token_id = self._register_token(token, table.time_average())
        except Exception:
            if adapter is not None:
                self.components.unet.delete_adapters([adapter])
            raise
        self._hook.tables[token_id] = table
        self._entries[name] = CharacterEntry(name, token, token_id, character.class_word, table, adapter,
                                             character=character, lora_rank=character.lora_rank,
                                             lora_alpha=character.lora_alpha)
        self._base_weights_match[name] = match
        self.activate({n: 1.0 for n in self._entries})
        return name

    def _add_adapter(self, name: str, config) -> None:
        self._save_base()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*multiple adapters.*")
            self.components.unet.add_adapter(config, adapter_name=name)

    def _load_lora(self, name: str, character: Character) -> str:
        from peft.utils import set_peft_model_state_dict

        unet = self.components.unet
        config = lora_config(character.lora_targets, character.lora_rank, character.lora_alpha)
        self._add_adapter(name, config)
        state = {key[len(UNET_PREFIX):]: value for key, value in character.lora_state_dict.items()}
        result = set_peft_model_state_dict(unet, state, adapter_name=name)
        unexpected = [k for k in getattr(result, "unexpected_keys", []) if "lora_" in k]
        missing = [k for k in getattr(result, "missing_keys", []) if adapter_parameter_key(k, name) is not None]
        if unexpected or missing:
            unet.delete_adapters([name])
            raise CharacterFileError(character.path, f"the LoRA does not fit this UNet: "
                                                     f"{(unexpected or missing)[:3]} did not load")
        for param in self.lora_parameters(name).values():
            param.requires_grad_(False)
        return name

    def add_trainable(self, name: str, token: str, class_word: str, *, rank: int = 8, alpha: float | None = None,
                      buckets: int | None = None, projections=DEFAULT_PROJECTIONS, seed: int = 0) -> CharacterEntry:
        """A new character to train: the table starts as the class word's embedding in every row, the LoRA
        (rank ``rank`` on the spatial attention ``projections``) at zero (peft's init, seeded by ``seed``).
        Table and LoRA parameters are float32 and require gradients; everything else stays frozen."""
        self._check_new(name, token)
        components = self.components
        steps = self.base_signature["num_train_timesteps"]
        buckets = steps if buckets is None else int(buckets)
        if not 1 <= buckets <= steps:
            raise CharacterError(f"buckets must be 1 to {steps} (the diffusion training timesteps), got {buckets}")
        rows = initial_table(components.tokenizer, components.text_encoder, class_word, buckets)
        device = components.text_encoder.get_input_embeddings().weight.device
        table = TimeInvTable(rows, steps, trainable=True).to(device)
        targets = spatial_attention_targets(components.unet, projections)
        if not targets:
            raise CharacterError("the UNet has no spatial attention layers to put a LoRA on")
        with seeded(seed):
            self._add_adapter(name, lora_config(targets, rank, alpha))
        try:
            token_id = self._register_token(token, table.time_average().detach())
        except Exception:
            components.unet.delete_adapters([name])
            raise
        for param in self.lora_parameters(name).values():
            param.data = param.data.to(torch.float32)
            param.requires_grad_(True)
        self._hook.tables[token_id] = table
        entry = CharacterEntry(name, token, token_id, class_word, table, name, trainable=True, lora_rank=rank,
                               lora_alpha=float(alpha if alpha is not None else rank))
        self._entries[name] = entry
        self.activate({name: 1.0})
        return entry

    # -- weights -------------------------------------------------------------------------------------
    def lora_parameters(self, name: str) -> dict[str, torch.nn.Parameter]:
        """The adapter's parameters by peft key (``<module path>.lora_A.weight``), in sorted order: exactly
        those :func:`adapter_parameter_key` assigns to ``name``, whatever the name (``0``, ``attn1``, ``lora_A``)."""
        params = {}
        for param_name, param in self.components.unet.named_parameters():
            key = adapter_parameter_key(param_name, name)
            if key is not None:
                params[key] = param
        return dict(sorted(params.items()))

    def lora_state_dict(self, name: str) -> dict[str, torch.Tensor]:
        """The adapter's weights with diffusers' keys (``unet.<module path>.lora_A.weight``), float32 on the CPU."""
        return {f"{UNET_PREFIX}{key}": param.detach().to("cpu", torch.float32).clone()
                for key, param in self.lora_parameters(name).items()}

    def character(self, name: str, **metadata) -> Character:
        """A snapshot of a registered character as a :class:`Character` (``metadata``: base_model, training)."""
        entry = self._entries[name]
        return Character(name=entry.name, token=entry.token, class_word=entry.class_word,
                         table=entry.table.weight.detach().to("cpu", torch.float32).clone(),
                         lora_state_dict=self.lora_state_dict(name) if entry.adapter else {},
                         num_train_timesteps=entry.table.num_train_timesteps, lora_rank=entry.lora_rank,
                         lora_alpha=entry.lora_alpha,
                         base_model=metadata.get("base_model", self.base_model or {}),
                         base_signature=dict(self.base_signature), training=metadata.get("training", {}))

    # -- rendering -----------------------------------------------------------------------------------
    def activate(self, scales: Mapping[str, float] | Iterable[str] | None = None) -> None:
        """Enable exactly these characters' LoRAs with these scales (a list means scale 1); others are off.

        ``{}`` or None turns every LoRA off (the base UNet). Tokens keep their tables either way.
        """
        if scales is None:
            scales = {}
        elif not isinstance(scales, Mapping):
            scales = dict.fromkeys(scales, 1.0)
        unknown = [n for n in scales if n not in self._entries]
        if unknown:
            raise KeyError(f"no character named {', '.join(map(repr, unknown))} is loaded "
                           f"(loaded: {', '.join(self._entries) or 'none'})")
        unet = self.components.unet
        names = [n for n in scales if self._entries[n].adapter]
        if getattr(unet, "peft_config", None):
            if names:
                unet.enable_adapters()
                unet.set_adapters([self._entries[n].adapter for n in names], [float(scales[n]) for n in names])
                for name, param in self._adapter_params():
                    param.requires_grad_(self._entries[name].trainable and name in names)
            else:
                unet.disable_adapters()
        self._scales = {n: float(scales[n]) for n in scales}

    def _adapter_params(self):
        for name, entry in self._entries.items():
            if entry.adapter:
                for param in self.lora_parameters(name).values():
                    yield name, param

    @contextlib.contextmanager
    def at_timestep(self, timestep):
        """Inside, text-encoder calls embed each token with its table row for ``timestep`` (a number, or
        a tensor with one timestep per prompt of the batch)."""
        previous = self._hook.timesteps
        self._hook.timesteps = timestep
        try:
            yield self
        finally:
            self._hook.timesteps = previous

    # -- restoring the base model --------------------------------------------------------------------
    def remove(self) -> None:
        """Unload every character: adapters deleted, hook removed, tokenizer and embeddings restored."""
        unet = self.components.unet
        adapters = [e.adapter for e in self._entries.values() if e.adapter]
        if adapters and getattr(unet, "peft_config", None):
            present = [a for a in adapters if a in unet.peft_config]
            if present:
                unet.delete_adapters(present)
        if self._saved is not None:
            if not self._saved["unet_had_peft"] and not getattr(unet, "peft_config", None):
                if any(".lora_" in n or "base_layer" in n for n, _ in unet.named_parameters()):
                    unet.unload_lora()
            elif getattr(unet, "peft_config", None):
                with contextlib.suppress(ValueError):
                    unet.enable_adapters()
            self.components.text_encoder.set_input_embeddings(self._saved["embedding"])
            tokenizer = self.components.tokenizer
            tokenizer.__dict__.clear()
            tokenizer.__dict__.update(self._saved["tokenizer"].__dict__)
        self._hook.detach()
        self._hook.tables.clear()
        self._hook.timesteps = None
        self._entries.clear()
        self._base_weights_match.clear()
        self._scales = {}
        self._saved = None

    def __enter__(self) -> "CharacterSet":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


_LORA_MATRICES = ("lora_A", "lora_B")


def adapter_parameter_key(param_name: str, adapter: str) -> str | None:
    """The peft key (``<module path>.lora_A.weight``) of a UNet parameter of adapter ``adapter``, else None.

    peft names an adapter's weights ``<module path>.lora_A.<adapter>.weight`` (and ``lora_B``): the adapter
    is exactly the component after ``lora_A``/``lora_B``, followed by the final ``weight``. Matching the
    components (not ``.<adapter>.`` anywhere in the name) keeps a character named ``0``, ``attn1``, ``to_q`` or
    ``lora_A`` from collecting the module paths' own components, or another character's weights.
    """
    parts = param_name.split(".")
    if len(parts) < 4 or parts[-1] != "weight" or parts[-2] != adapter or parts[-3] not in _LORA_MATRICES:
        return None
    return ".".join([*parts[:-2], parts[-1]])


def check_name(name: str) -> None:
    """Refuse a character name that cannot be an adapter name: 1-64 letters, digits, '_' or '-'."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise CharacterError(f"character names are 1-64 letters, digits, '_' or '-', got {name!r}")


def check_token(tokenizer, token: str, taken: Mapping[int, str] | None = None) -> None:
    """Refuse a token that is empty, has spaces, is a word of the vocabulary, or is already taken."""
    if not isinstance(token, str) or not token.strip() or token != token.strip() or any(c.isspace() for c in token):
        raise CharacterTokenError(f"a character token is one word without spaces, such as <hare>; got {token!r}")
    added = tokenizer.get_added_vocab()
    lowered = token.lower()
    for existing, token_id in added.items():
        if existing.lower() == lowered:
            owner = (taken or {}).get(token_id)
            who = f"the token of the loaded character '{owner}'" if owner else "already an added token of the tokenizer"
            raise CharacterTokenError(f"token {token!r} is {who}; choose another token")
    ids = tokenizer(token, add_special_tokens=False).input_ids
    if len(ids) == 1:
        word = tokenizer.convert_ids_to_tokens(ids[0])
        raise CharacterTokenError(
            f"token {token!r} is already in the tokenizer's vocabulary (as {word!r}); a character needs a new "
            f"token such as <{lowered.strip('<>')}>, or its training would change what that word means")


def per_step_embeddings(character_set: CharacterSet, encode: Callable[[str], torch.Tensor] | None, prompt: str,
                        negative_prompt: str | None = None, *,
                        encode_pair: Callable[[str, str | None], tuple] | None = None):
    """A ``prompt_embeds_for_step(step_index, timestep) -> (cond, uncond or None)`` hook for the sampler.

    ``encode`` turns a prompt into embeddings (the sampler's ``encode_prompt``, or a compel call); each
    step encodes ``prompt`` under :meth:`CharacterSet.at_timestep`, so every character token in it uses its
    table row for that step's timestep. The negative prompt is re-encoded only when it holds a character
    token (else ``None``: the sampler keeps its own). Encodings are cached by the rows they use, so
    bucketed tables and prompts without tokens encode once per distinct row.

    ``encode_pair(prompt, negative_prompt) -> (cond, uncond)`` instead of ``encode`` encodes both every
    time (cached the same way) and returns both: for encoders that pad the two to one length (compel's
    long prompts, ``render.prompt_weighting.WeightedPromptEncoder.encode_pair``).
    """
    if (encode is None) == (encode_pair is None):
        raise ValueError("give exactly one of encode and encode_pair")
    cond_tables = [character_set.table(n) for n in character_set.characters_in(prompt)]
    negative_tables = [character_set.table(n) for n in character_set.characters_in(negative_prompt)]
    cache: dict = {}

    def hook(step_index: int, timestep):
        key = (tuple(int(table.row_index(timestep)) for table in cond_tables),
               tuple(int(table.row_index(timestep)) for table in negative_tables))
        if key not in cache:
            with character_set.at_timestep(timestep):
                if encode_pair is not None:
                    cond, uncond = encode_pair(prompt, negative_prompt)
                else:
                    cond = encode(prompt)
                    uncond = encode(negative_prompt) if negative_tables else None
            cache[key] = (cond, uncond)
        return cache[key]

    hook.cache = cache
    return hook
