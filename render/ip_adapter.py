"""IP-Adapter identity from reference images: h94's SD1.5 adapters on the render's motion UNet, one per character.

IP-Adapter (Ye et al. 2023, h94/IP-Adapter) adds a second key/value projection to every cross-attention layer
of the UNet, fed with a CLIP image encoding of a reference picture: no training, a few pictures of a character
are enough. This module loads the adapters, installs several at once on ``components.unet`` (a diffusers
``UNetMotionModel``), sets one scale per adapter for each shot and removes them again; the image embeddings go
to the sampler (:class:`render.sampler.StructureGuidedSampler`, ``ip_adapter_image_embeds``)::

    from render.ip_adapter import IPAdapterSource, encode_reference_images, ip_adapters, load_ip_adapter

    adapter = load_ip_adapter(IPAdapterSource("plus-face"))          # h94/IP-Adapter, or a local copy
    alice = encode_reference_images(adapter, [image_1, image_2])      # a ReferenceEmbedding (save / load it)
    bob = encode_reference_images(adapter, [image_3])
    with ip_adapters(components, [adapter, adapter], names=["alice", "bob"]) as active:
        active.set_scales({"alice": 0.7})                             # bob is not in this shot: scale 0
        sampler(prompt, conditioning=depth, ip_adapter_image_embeds=active.image_embeds([alice, bob]))
    # here the UNet is exactly as before (processors, encoder_hid_proj, config)

* **Variants** (:data:`VARIANTS`): ``base`` (``ip-adapter_sd15.safetensors``: the encoder's projected
  ``image_embeds``, 4 tokens), ``plus`` (``ip-adapter-plus_sd15.safetensors``) and ``plus-face``
  (``ip-adapter-plus-face_sd15.safetensors``): a Resampler over the encoder's penultimate hidden states, 16 tokens.
  As in diffusers, which encoder output is used follows the weights' image projection (a Resampler: hidden
  states); a file whose projection contradicts its declared variant is refused.
* **Sources** (:class:`IPAdapterSource`): the hub (``h94/IP-Adapter``, subfolder ``models``, the image encoder
  in ``models/image_encoder``, a ``CLIPVisionModelWithProjection`` read from safetensors only), a local folder
  with the same layout (or the ``models`` folder itself), one local ``.safetensors`` file plus an image encoder
  folder, or ``tiny``: a seeded random state dict in h94's format sized for the given UNet and a tiny CLIP
  vision encoder (32 px), so the whole path runs in tests. Pickle files (``.bin``) are refused.
* **Installing** (:func:`ip_adapters`, :func:`install_ip_adapters`): diffusers' own layers
  (``IPAdapterAttnProcessor2_0`` with one key/value projection per adapter on every cross-attention ``attn2``
  outside the motion modules, ``MultiIPAdapterImageProjection`` as ``unet.encoder_hid_proj``,
  ``config.encoder_hid_dim_type = "ip_image_proj"``), built from h94's keys the way diffusers'
  ``UNet2DConditionLoadersMixin._load_ip_adapter_weights`` does (layer ``k`` of the file is the ``k``-th
  cross-attention layer, keys ``1, 3, 5, ...``), so a render equals diffusers' ``AnimateDiffControlNetPipeline``
  with ``load_ip_adapter`` (tested). Only those cross-attention processors change (self-attention and motion
  modules keep theirs: consistent self-attention can run beside it), and removal puts the very same processor
  objects back: a render after removal is bit-identical to one that never had an adapter.
* **Scales**: one per adapter (:meth:`ActiveIPAdapters.set_scales`); an adapter at scale 0 is skipped by the
  processor, so a shot that does not list a character renders as if its adapter were not installed.
* **Reference embeddings** (:func:`encode_reference_images`): the CLIP image processor and encoder as diffusers'
  ``encode_image`` uses them; several reference pictures are averaged (the mean of the per-image embeddings, or
  of the per-image hidden states for the plus variants: the usual way to combine pictures of one subject, with
  the same number of tokens as one picture; diffusers instead attends to all pictures' tokens side by side). The
  negative (the unconditional half of classifier-free guidance) is what diffusers uses: zeros for ``base``, the
  encoding of an all-zero image for the plus variants. :func:`save_reference_embedding` /
  :func:`load_reference_embedding` keep one in a ``.safetensors`` file with its variant, encoder id, encoder
  fingerprint and the SHA-256 of each picture, so a resumed story reuses it (:meth:`ReferenceEmbedding.matches`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from storyreel.atomic_files import atomic_path
from storyreel.errors import ModelLoadError, StoryreelError, first_line
from storyreel.hashing import file_sha256, weights_fingerprint
from storyreel.hub_access import offline_requested
from storyreel.models import presets
from storyreel.seeding import seeded
from storyreel.weights_policy import PICKLE_REFUSAL, is_pickle_checkpoint

HUB_ID = presets.IP_ADAPTER_ID
HUB_SUBFOLDER = presets.IP_ADAPTER_FOLDER
IMAGE_ENCODER_FOLDER = "image_encoder"  # inside the weights' folder: models/image_encoder on the hub
EMBEDDING_FORMAT = "storyreel-ip-adapter-reference"
EMBEDDING_VERSION = "1"
TINY_IMAGE_SIZE = 32
TINY_SEED = 0
TINY_VISION_CONFIG = {"hidden_size": 32, "intermediate_size": 64, "projection_dim": 32, "num_hidden_layers": 2,
                      "num_attention_heads": 4, "image_size": TINY_IMAGE_SIZE, "patch_size": 8}
TINY_RESAMPLER = {"hidden_dims": 32, "heads": 1, "num_queries": 4, "depth": 4, "ffn_ratio": 4}
RESAMPLER_DIM_HEAD = 64  # diffusers reads the Resampler's heads as to_q rows // 64
# the toy IP-Adapter (toy_world/train_ip_adapter.py), relative to storyreel/models/toy_weights
TOY_ADAPTER_FILE = "ip_adapter/ip-adapter_toy.safetensors"
TOY_ENCODER_FOLDER = "ip_adapter/image_encoder"


@dataclass(frozen=True)
class IPAdapterVariant:
    """One of h94's SD1.5 adapters: its file in ``models/`` and which encoder output it reads."""

    name: str
    weight_name: str
    hidden_states: bool  # the encoder's penultimate hidden states (Resampler) instead of its image_embeds
    tokens: int  # image tokens per picture in the real file
    description: str


VARIANTS = {
    "base": IPAdapterVariant("base", presets.IP_ADAPTER_FILES["base"], False, 4,
                             "global image embedding, 4 tokens: style and overall look"),
    "plus": IPAdapterVariant("plus", presets.IP_ADAPTER_FILES["plus"], True, 16,
                             "Resampler over patch features, 16 tokens: closer to the reference"),
    "plus-face": IPAdapterVariant("plus-face", presets.IP_ADAPTER_FILES["plus-face"], True, 16,
                                  "plus trained on cropped faces: a face reference"),
}


class IPAdapterLoadError(ModelLoadError):
    """An IP-Adapter or its image encoder that cannot be had or does not fit the UNet; the message says which
    file and what to do."""


class ReferenceEmbeddingError(StoryreelError, ValueError):
    """A reference embedding file that cannot be read or written (names the file)."""


# -- where an adapter comes from ------------------------------------------------------------------------------
@dataclass(frozen=True)
class IPAdapterSource:
    """Where an IP-Adapter and its image encoder come from.

    ``location``: ``"hub"`` (``h94/IP-Adapter``, or ``repo_id``), ``"tiny"`` (seeded random weights for the
    UNet it is loaded for), a local folder in the hub's layout (``DIR/models/<weight file>`` and
    ``DIR/models/image_encoder/``, or ``DIR`` being that ``models`` folder) or a local ``.safetensors`` file
    (its image encoder: ``image_encoder``, default the ``image_encoder`` folder beside the file).
    """

    variant: str = "base"
    location: str = "hub"
    image_encoder: str | None = None
    repo_id: str = HUB_ID
    revision: str | None = None
    seed: int = TINY_SEED

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise IPAdapterLoadError(f"unknown IP-Adapter variant '{self.variant}'; use one of {', '.join(VARIANTS)}")

    @property
    def spec(self) -> IPAdapterVariant:
        return VARIANTS[self.variant]

    @property
    def kind(self) -> str:
        """``hub``, ``tiny``, ``file`` (a weights file) or ``folder``."""
        if self.location in ("hub", "tiny", "toy"):
            return self.location
        path = Path(self.location).expanduser()
        return "file" if path.suffix.lower() == ".safetensors" or is_pickle_checkpoint(path) or path.is_file() \
            else "folder"

    def describe(self) -> str:
        if self.kind == "hub":
            return f"{self.repo_id}/{HUB_SUBFOLDER}/{self.spec.weight_name}" + (f"@{self.revision}" if self.revision
                                                                                 else "")
        if self.kind == "tiny":
            return f"tiny {self.variant} (seed {self.seed})"
        if self.kind == "toy":
            return f"the toy IP-Adapter (storyreel/models/toy_weights/{TOY_ADAPTER_FILE})"
        return str(self.location)

    def record(self) -> dict:
        return {"variant": self.variant, "location": self.location, "image_encoder": self.image_encoder,
                "repo_id": self.repo_id, "revision": self.revision, "seed": self.seed if self.kind == "tiny" else None}

    def fetch_hint(self) -> str:
        """How to get the files onto an offline machine."""
        revision = f" --revision {self.revision}" if self.revision else ""
        return (f"download them once (hf download {self.repo_id} {HUB_SUBFOLDER}/{self.spec.weight_name} "
                f"{HUB_SUBFOLDER}/{IMAGE_ENCODER_FOLDER}/config.json "
                f"{HUB_SUBFOLDER}/{IMAGE_ENCODER_FOLDER}/model.safetensors{revision} --local-dir DIR) and point at "
                f"DIR (IPAdapterSource('{self.variant}', location='DIR')), or use location='tiny' (the same "
                f"architecture with small random weights)")


# -- the loaded adapter -----------------------------------------------------------------------------------------
@dataclass
class IPAdapter:
    """An IP-Adapter's weights in h94's format (``{"image_proj": {...}, "ip_adapter": {...}}``, as diffusers'
    ``load_ip_adapter`` reads a file), its CLIP vision encoder and image processor."""

    source: IPAdapterSource
    state_dict: dict[str, dict[str, torch.Tensor]]
    image_encoder: object  # transformers.CLIPVisionModelWithProjection
    image_processor: object  # transformers.CLIPImageProcessor
    encoder_id: str

    @property
    def variant(self) -> str:
        return self.source.variant

    @property
    def hidden_states(self) -> bool:
        """True when the adapter reads the encoder's penultimate hidden states (a Resampler projection)."""
        return uses_hidden_states(self.state_dict)

    @property
    def num_tokens(self) -> int:
        """Image tokens per picture the projection makes."""
        proj = self.state_dict["image_proj"]
        return proj["latents"].shape[1] if "latents" in proj else proj["proj.weight"].shape[0] // proj[
            "norm.weight"].shape[0]

    @property
    def embedding_shape(self) -> tuple[int, ...]:
        """The shape of one picture's embedding: (D,) or (tokens, D)."""
        config = self.image_encoder.config
        if self.hidden_states:
            return ((config.image_size // config.patch_size) ** 2 + 1, config.hidden_size)
        return (config.projection_dim,)

    def encoder_fingerprint(self) -> str:
        return weights_fingerprint(self.image_encoder)

    def save(self, folder: str | os.PathLike) -> Path:
        """Write the adapter in the hub's layout: ``folder/models/<weight file>`` and ``folder/models/image_encoder``
        (safetensors), so ``IPAdapterSource(variant, location=folder)`` and diffusers'
        ``pipe.load_ip_adapter(folder, subfolder="models", weight_name=...)`` both read it. Returns the file."""
        from safetensors.torch import save_file

        models = Path(folder) / HUB_SUBFOLDER
        target = models / self.source.spec.weight_name
        flat = {f"{part}.{key}": value.contiguous() for part in ("image_proj", "ip_adapter")
                for key, value in self.state_dict[part].items()}
        with atomic_path(target) as tmp:
            save_file(flat, str(tmp))
        self.image_encoder.save_pretrained(models / IMAGE_ENCODER_FOLDER, safe_serialization=True)
        return target


def uses_hidden_states(state_dict: Mapping[str, Mapping[str, torch.Tensor]]) -> bool:
    """Whether an adapter's image projection is a Resampler (reads hidden states, like diffusers decides from the
    projection it builds) rather than a linear projection of ``image_embeds``."""
    return "latents" in state_dict["image_proj"]


def load_ip_adapter(source: IPAdapterSource | str, unet=None, device: str | torch.device | None = None,
                    dtype: torch.dtype = torch.float32) -> IPAdapter:
    """Load an adapter and its image encoder (``unet``: needed for ``tiny``, whose weights are sized for it).

    Raises :class:`IPAdapterLoadError` naming the file (and how to fetch it when the hub is out of reach)."""
    if isinstance(source, str):
        source = IPAdapterSource(source)
    if source.kind == "tiny":
        if unet is None:
            raise IPAdapterLoadError("a tiny IP-Adapter is sized for a UNet: pass unet=components.unet")
        adapter = tiny_ip_adapter(unet, source.variant, source.seed)
    elif source.kind == "toy":
        adapter = toy_ip_adapter(source)
    else:
        weights, encoder_location, encoder_kwargs, encoder_id = _resolve_files(source)
        state_dict = read_ip_adapter_file(weights, source)
        encoder = _load_image_encoder(source, encoder_location, encoder_kwargs)
        adapter = IPAdapter(source, state_dict, encoder, image_processor_for(encoder), encoder_id)
    _check_variant(adapter)
    _check_encoder(adapter)
    adapter.image_encoder.to(device=device, dtype=dtype).eval()
    return adapter


def _resolve_files(source: IPAdapterSource) -> tuple[Path, str, dict, str]:
    """The weights file (downloaded or found in the hub cache for the hub), where the image encoder is, the
    ``from_pretrained`` keyword arguments for it, and the encoder's id."""
    spec = source.spec
    if source.kind == "hub":
        from huggingface_hub import hf_hub_download

        try:
            weights = Path(hf_hub_download(source.repo_id, spec.weight_name, subfolder=HUB_SUBFOLDER,
                                           revision=source.revision))
        except Exception as exc:  # offline, missing, unauthorised: each is reported the same way
            raise _hub_error(source, f"{source.repo_id}/{HUB_SUBFOLDER}/{spec.weight_name}", exc) from exc
        subfolder = f"{HUB_SUBFOLDER}/{IMAGE_ENCODER_FOLDER}"
        kwargs = {"subfolder": subfolder, **({"revision": source.revision} if source.revision else {})}
        return weights, source.repo_id, kwargs, f"{source.repo_id}/{subfolder}" + (
            f"@{source.revision}" if source.revision else "")
    location = Path(source.location).expanduser()
    if source.kind == "file":
        if is_pickle_checkpoint(location):
            raise IPAdapterLoadError(
                f"IP-Adapter weights '{location}': {PICKLE_REFUSAL}, so only .safetensors files are loaded; use "
                f"{spec.weight_name} from {source.repo_id} ({source.fetch_hint()})")
        if not location.is_file():
            raise IPAdapterLoadError(f"IP-Adapter weights '{location}': no such file; {source.fetch_hint()}")
        weights = location
        encoder = Path(source.image_encoder).expanduser() if source.image_encoder else location.parent / \
            IMAGE_ENCODER_FOLDER
    else:
        candidates = [location / HUB_SUBFOLDER, location]
        folder = next((c for c in candidates if (c / spec.weight_name).is_file()), None)
        if folder is None:
            pickles = sorted(p.name for c in candidates if c.is_dir() for p in c.iterdir()
                             if p.stem == Path(spec.weight_name).stem and is_pickle_checkpoint(p))
            found = f" (it holds {', '.join(pickles)}: {PICKLE_REFUSAL}, so only .safetensors files are loaded)" \
                if pickles else ""
            raise IPAdapterLoadError(
                f"IP-Adapter {spec.name}: no {location / HUB_SUBFOLDER / spec.weight_name} (nor "
                f"{location / spec.weight_name}){found}; {source.fetch_hint()}")
        weights = folder / spec.weight_name
        encoder = Path(source.image_encoder).expanduser() if source.image_encoder else folder / IMAGE_ENCODER_FOLDER
    if not (encoder / "config.json").is_file():
        raise IPAdapterLoadError(
            f"IP-Adapter image encoder: no {encoder / 'config.json'} (a CLIPVisionModelWithProjection folder with "
            f"config.json and model.safetensors, {source.repo_id}/{HUB_SUBFOLDER}/{IMAGE_ENCODER_FOLDER} on the "
            f"hub); {source.fetch_hint()}")
    return weights, str(encoder), {"local_files_only": True}, str(encoder.resolve())


def _hub_error(source: IPAdapterSource, what: str, exc: BaseException) -> IPAdapterLoadError:
    reason = first_line(exc)
    if offline_requested():
        reason += " (the hub is offline, HF_HUB_OFFLINE is set, and the files are not in the local cache)"
    return IPAdapterLoadError(f"cannot load the IP-Adapter {what}: {reason}. Without network access, "
                              f"{source.fetch_hint()}. Only safetensors weights are loaded.")


def read_ip_adapter_file(path: str | os.PathLike, source: IPAdapterSource | None = None) -> dict:
    """An h94 ``.safetensors`` file as ``{"image_proj": {...}, "ip_adapter": {...}}`` (the keys without their
    prefix, as diffusers' ``load_ip_adapter`` splits them); pickle files are refused."""
    from safetensors import safe_open

    path = Path(path)
    if is_pickle_checkpoint(path):
        raise IPAdapterLoadError(f"IP-Adapter weights '{path}': {PICKLE_REFUSAL}, so only .safetensors files "
                                 "are loaded")
    if not path.is_file():
        raise IPAdapterLoadError(f"IP-Adapter weights '{path}': no such file" + (
            f"; {source.fetch_hint()}" if source is not None else ""))
    state_dict: dict[str, dict[str, torch.Tensor]] = {"image_proj": {}, "ip_adapter": {}}
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            for key in handle.keys():
                part, _, name = key.partition(".")
                if part in state_dict:
                    state_dict[part][name] = handle.get_tensor(key)
    except Exception as exc:  # a truncated or foreign file
        raise IPAdapterLoadError(f"IP-Adapter weights '{path}': cannot read it as safetensors: {first_line(exc)}; "
                                 "check that it is a complete IP-Adapter .safetensors file") from exc
    if not state_dict["image_proj"] or not state_dict["ip_adapter"]:
        raise IPAdapterLoadError(f"IP-Adapter weights '{path}': no image_proj.* and ip_adapter.* keys; it is not an "
                                 "IP-Adapter file in h94's format")
    if not ("proj.weight" in state_dict["image_proj"] or "latents" in state_dict["image_proj"]):
        raise IPAdapterLoadError(f"IP-Adapter weights '{path}': an image projection other than IP-Adapter's and "
                                 "IP-Adapter Plus's (full-face and FaceID adapters are not supported)")
    return state_dict


def _load_image_encoder(source: IPAdapterSource, location: str, kwargs: dict):
    from transformers import CLIPVisionModelWithProjection

    try:
        return CLIPVisionModelWithProjection.from_pretrained(location, use_safetensors=True, **kwargs)
    except Exception as exc:
        if source.kind == "hub":
            raise _hub_error(source, f"image encoder {location}/{kwargs.get('subfolder', '')}", exc) from exc
        raise IPAdapterLoadError(f"cannot load the IP-Adapter image encoder from '{location}': {first_line(exc)}; "
                                 "it must be a CLIPVisionModelWithProjection folder with config.json and "
                                 f"model.safetensors ({PICKLE_REFUSAL}, so .bin weights are not loaded)") from exc


def image_processor_for(image_encoder):
    """The CLIP image processor diffusers' ``load_ip_adapter`` makes for an encoder (resize the shortest side
    to, and centre-crop at, the encoder's image size; CLIP's normalisation)."""
    from transformers import CLIPImageProcessor

    size = image_encoder.config.image_size
    return CLIPImageProcessor(size=size, crop_size=size)


def _check_variant(adapter: IPAdapter) -> None:
    if adapter.hidden_states != adapter.source.spec.hidden_states:
        kind = "a Resampler (plus) projection" if adapter.hidden_states else "a linear (base) projection"
        raise IPAdapterLoadError(f"IP-Adapter {adapter.source.describe()}: the weights have {kind}, which does not "
                                 f"fit the variant '{adapter.variant}'; name the variant the file is")


def _check_encoder(adapter: IPAdapter) -> None:
    config = adapter.image_encoder.config
    proj = adapter.state_dict["image_proj"]
    if adapter.hidden_states:
        expected, have, what = proj["proj_in.weight"].shape[1], config.hidden_size, "hidden size"
    else:
        expected, have, what = proj["proj.weight"].shape[1], config.projection_dim, "projection size"
    if expected != have:
        raise IPAdapterLoadError(f"IP-Adapter {adapter.source.describe()} reads {expected}-d image features but its "
                                 f"image encoder ({adapter.encoder_id}) has {what} {have}; use the image encoder "
                                 f"the adapter was trained with ({HUB_ID}/{HUB_SUBFOLDER}/{IMAGE_ENCODER_FOLDER} "
                                 "for the SD1.5 adapters)")


# -- tiny: the real format with seeded random weights ----------------------------------------------------------
def cross_attention_layers(unet) -> list[tuple[str, torch.nn.Module]]:
    """The UNet's cross-attention layers an IP-Adapter extends, in the order of h94's keys (``1, 3, 5, ...``):
    every ``attn2`` outside the motion modules, in the order of ``unet.attn_processors``."""
    layers = []
    for name in unet.attn_processors:
        if name.endswith("attn1.processor") or "motion_modules" in name or name.startswith("encoder_hid_proj"):
            continue
        layers.append((name, unet.get_submodule(name.removesuffix(".processor"))))
    return layers


def tiny_ip_adapter_state_dict(unet, variant: str = "base", seed: int = TINY_SEED,
                               image_features: int | None = None) -> dict[str, dict[str, torch.Tensor]]:
    """A seeded random IP-Adapter in h94's format for ``unet``'s cross-attention layers: ``image_proj`` (a
    linear projection to 4 tokens for ``base``; a 4-layer Resampler for the plus variants) and ``ip_adapter``
    (``{k}.to_k_ip.weight`` / ``{k}.to_v_ip.weight`` for ``k = 1, 3, 5, ...``). ``image_features``: the image
    encoder's projection size (base) or hidden size (plus); default the tiny encoder's."""
    spec = VARIANTS[variant]
    layers = cross_attention_layers(unet)
    cross = layers[0][1].to_k.in_features
    features = image_features or (TINY_VISION_CONFIG["hidden_size"] if spec.hidden_states
                                  else TINY_VISION_CONFIG["projection_dim"])

    def linear(rows, cols):
        return torch.randn(rows, cols) / cols ** 0.5

    def norm(width):
        return 1.0 + 0.1 * torch.randn(width), 0.1 * torch.randn(width)

    with seeded(seed + list(VARIANTS).index(variant)):
        proj: dict[str, torch.Tensor] = {}
        if not spec.hidden_states:
            tokens = 4
            proj["proj.weight"] = linear(tokens * cross, features)
            proj["proj.bias"] = 0.1 * torch.randn(tokens * cross)
            proj["norm.weight"], proj["norm.bias"] = norm(cross)
        else:
            r = TINY_RESAMPLER
            hidden, inner = r["hidden_dims"], r["heads"] * RESAMPLER_DIM_HEAD
            proj["latents"] = torch.randn(1, r["num_queries"], hidden) / hidden ** 0.5
            proj["proj_in.weight"], proj["proj_in.bias"] = linear(hidden, features), 0.1 * torch.randn(hidden)
            for i in range(r["depth"]):
                block = f"layers.{i}"
                proj[f"{block}.0.norm1.weight"], proj[f"{block}.0.norm1.bias"] = norm(hidden)
                proj[f"{block}.0.norm2.weight"], proj[f"{block}.0.norm2.bias"] = norm(hidden)
                proj[f"{block}.0.to_q.weight"] = linear(inner, hidden)
                proj[f"{block}.0.to_kv.weight"] = linear(2 * inner, hidden)
                proj[f"{block}.0.to_out.weight"] = linear(hidden, inner)
                proj[f"{block}.1.0.weight"], proj[f"{block}.1.0.bias"] = norm(hidden)
                proj[f"{block}.1.1.weight"] = linear(hidden * r["ffn_ratio"], hidden)
                proj[f"{block}.1.3.weight"] = linear(hidden, hidden * r["ffn_ratio"])
            proj["proj_out.weight"], proj["proj_out.bias"] = linear(cross, hidden), 0.1 * torch.randn(cross)
            proj["norm_out.weight"], proj["norm_out.bias"] = norm(cross)
        ip = {}
        for index, (_, attn) in enumerate(layers):
            key = 2 * index + 1
            ip[f"{key}.to_k_ip.weight"] = linear(attn.to_k.out_features, attn.to_k.in_features)
            ip[f"{key}.to_v_ip.weight"] = linear(attn.to_v.out_features, attn.to_v.in_features)
    return {"image_proj": proj, "ip_adapter": ip}


def tiny_image_encoder(seed: int = TINY_SEED):
    """A tiny ``CLIPVisionModelWithProjection`` (32 px, 2 layers, 32-d) with seeded random weights."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    with seeded(seed):
        return CLIPVisionModelWithProjection(CLIPVisionConfig(**TINY_VISION_CONFIG)).eval()


def tiny_ip_adapter(unet, variant: str = "base", seed: int = TINY_SEED) -> IPAdapter:
    """The tiny adapter of ``variant`` for ``unet`` with the tiny image encoder (seeded)."""
    encoder = tiny_image_encoder(seed)
    return IPAdapter(IPAdapterSource(variant, "tiny", seed=seed), tiny_ip_adapter_state_dict(unet, variant, seed),
                     encoder, image_processor_for(encoder), f"tiny:seed={seed}")


def toy_ip_adapter(source: IPAdapterSource | None = None, folder: str | os.PathLike | None = None) -> IPAdapter:
    """The toy IP-Adapter trained on the toy world for the toy render model (``base`` only; toy_world/
    train_ip_adapter.py): its files in ``folder`` (default ``storyreel/models/toy_weights``), each checked against
    the toy weights' manifest (:class:`storyreel.models.toy_weights.ToyWeightsError` for a changed file)."""
    from transformers import CLIPVisionModelWithProjection

    from storyreel.models.toy_weights import TOY_WEIGHTS_DIR, verified_file, verified_folder

    source = source or IPAdapterSource("base", "toy")
    if source.variant != "base":
        raise IPAdapterLoadError(f"the toy IP-Adapter is a base adapter; there is no toy '{source.variant}' (use "
                                 "--ip-adapter-variant base)")
    folder = Path(folder) if folder is not None else TOY_WEIGHTS_DIR
    weights = verified_file(TOY_ADAPTER_FILE, folder)
    encoder_folder = verified_folder(TOY_ENCODER_FOLDER, folder)
    state_dict = read_ip_adapter_file(weights, source)
    try:
        encoder = CLIPVisionModelWithProjection.from_pretrained(str(encoder_folder), use_safetensors=True,
                                                                local_files_only=True).float().eval()
    except Exception as exc:
        raise IPAdapterLoadError(f"cannot load the toy IP-Adapter's image encoder '{encoder_folder}': "
                                 f"{first_line(exc)}") from exc
    return IPAdapter(source, state_dict, encoder, image_processor_for(encoder), f"toy:{file_sha256(weights)[:16]}")


# -- installing on the UNet ------------------------------------------------------------------------------------
_MISSING = object()


class ActiveIPAdapters:
    """IP-Adapters installed on a UNet (from :func:`install_ip_adapters` or :func:`ip_adapters`): one slot per
    adapter, in order, each with a name (a character) and a scale."""

    def __init__(self, unet, adapters: Sequence[IPAdapter], names: Sequence[str]):
        self.unet = unet
        self.adapters = list(adapters)
        self.names = list(names)
        self.processors: dict[str, torch.nn.Module] = {}
        self._saved: dict = {}
        self.installed = False

    # -- scales ------------------------------------------------------------------------------------------------
    @property
    def scales(self) -> list[float]:
        first = next(iter(self.processors.values()), None)
        return list(first.scale) if first is not None else []

    def set_scales(self, scales: Sequence[float] | Mapping[str, float] | float) -> None:
        """One scale per adapter: a list in slot order, a mapping name → scale (names left out: 0, so a shot that
        does not list a character renders without its adapter), or one float for all."""
        if isinstance(scales, Mapping):
            unknown = set(scales) - set(self.names)
            if unknown:
                raise ValueError(f"no IP-Adapter named {', '.join(sorted(unknown))}; installed: "
                                 f"{', '.join(self.names)}")
            values = [float(scales.get(name, 0.0)) for name in self.names]
        elif isinstance(scales, (int, float)):
            values = [float(scales)] * len(self.adapters)
        else:
            values = [float(s) for s in scales]
            if len(values) != len(self.adapters):
                raise ValueError(f"{len(values)} IP-Adapter scales for {len(self.adapters)} adapters")
        for processor in self.processors.values():
            processor.scale = list(values)

    # -- embeddings ------------------------------------------------------------------------------------------
    def image_embeds(self, embeddings: Sequence[ReferenceEmbedding | None] | Mapping[str, ReferenceEmbedding],
                     guidance: bool = True) -> list[torch.Tensor]:
        """The sampler's ``ip_adapter_image_embeds``: one tensor per slot, ``[negative, embedding]`` with
        classifier-free guidance. A slot without an embedding (None, or a name missing from a mapping) gets
        zeros of the right shape: only for a slot whose scale is 0."""
        if isinstance(embeddings, Mapping):
            embeddings = [embeddings.get(name) for name in self.names]
        if len(embeddings) != len(self.adapters):
            raise ValueError(f"{len(embeddings)} reference embeddings for {len(self.adapters)} IP-Adapters")
        out = []
        scales = self.scales
        for slot, (adapter, embedding) in enumerate(zip(self.adapters, embeddings)):
            if embedding is None:
                if scales and scales[slot] != 0:
                    raise ValueError(f"no reference embedding for IP-Adapter '{self.names[slot]}' at scale "
                                     f"{scales[slot]}: give one, or set its scale to 0 first")
                zeros = torch.zeros((1, 1, *adapter.embedding_shape))
                out.append(torch.cat([zeros, zeros]) if guidance else zeros)
                continue
            if tuple(embedding.image_embeds.shape[1:]) != adapter.embedding_shape:
                raise ValueError(f"a reference embedding of shape {tuple(embedding.image_embeds.shape[1:])} for an "
                                 f"IP-Adapter that reads {adapter.embedding_shape} ({adapter.variant}, "
                                 f"{adapter.encoder_id}): encode the pictures with this adapter")
            out.append(embedding.sampler_embeds(guidance))
        return out

    # -- install / remove --------------------------------------------------------------------------------------
    def install(self) -> ActiveIPAdapters:
        from diffusers.models.attention_processor import IPAdapterAttnProcessor2_0, IPAdapterXFormersAttnProcessor
        from diffusers.models.embeddings import MultiIPAdapterImageProjection

        unet = self.unet
        if getattr(unet, "encoder_hid_proj", None) is not None:
            raise ValueError("the UNet already has an encoder_hid_proj (IP-Adapters installed, or a text "
                             "projection): remove those first")
        layers = cross_attention_layers(unet)
        for adapter in self.adapters:
            _check_fits(adapter, layers)
        device, dtype = unet.device, unet.dtype
        projections = [unet._convert_ip_adapter_image_proj_to_diffusers(a.state_dict["image_proj"],
                                                                        low_cpu_mem_usage=False)
                       for a in self.adapters]
        for index, (name, attn) in enumerate(layers):
            key = 2 * index + 1
            cls = IPAdapterXFormersAttnProcessor if "XFormers" in type(attn.processor).__name__ \
                else IPAdapterAttnProcessor2_0
            processor = cls(hidden_size=attn.to_k.out_features, cross_attention_dim=attn.to_k.in_features,
                            num_tokens=[a.num_tokens for a in self.adapters], scale=[1.0] * len(self.adapters))
            weights = {}
            for slot, adapter in enumerate(self.adapters):
                weights[f"to_k_ip.{slot}.weight"] = adapter.state_dict["ip_adapter"][f"{key}.to_k_ip.weight"]
                weights[f"to_v_ip.{slot}.weight"] = adapter.state_dict["ip_adapter"][f"{key}.to_v_ip.weight"]
            processor.load_state_dict(weights)
            self.processors[name] = processor.to(device=device, dtype=dtype)
        config = unet.config
        self._saved = {
            "processors": {name: attn.processor for name, attn in layers},
            "encoder_hid_proj": unet.__dict__.get("encoder_hid_proj", _MISSING),
            "in_modules": "encoder_hid_proj" in unet._modules,
            "dim_type": vars(config).get("encoder_hid_dim_type", _MISSING),
        }
        for name, attn in layers:
            attn.set_processor(self.processors[name])
        unet.encoder_hid_proj = MultiIPAdapterImageProjection(projections).to(device=device, dtype=dtype)
        config.encoder_hid_dim_type = "ip_image_proj"  # an attribute, as diffusers sets it (the dict keeps None)
        self.installed = True
        return self

    def remove(self) -> None:
        """Put back what was there: the same processor objects, ``encoder_hid_proj`` and the config value."""
        if not self.installed:
            return
        unet, saved = self.unet, self._saved
        # encoder_hid_proj first: a Resampler's own attention layers must not be among the UNet's processors
        if saved["in_modules"]:
            unet._modules["encoder_hid_proj"] = None
        else:
            unet._modules.pop("encoder_hid_proj", None)
            if saved["encoder_hid_proj"] is not _MISSING:
                unet.encoder_hid_proj = saved["encoder_hid_proj"]
        for name, processor in saved["processors"].items():
            unet.get_submodule(name.removesuffix(".processor")).set_processor(processor)
        if saved["dim_type"] is _MISSING:
            vars(unet.config).pop("encoder_hid_dim_type", None)
        else:
            unet.config.encoder_hid_dim_type = saved["dim_type"]
        self.processors = {}
        self.installed = False


def _check_fits(adapter: IPAdapter, layers) -> None:
    ip = adapter.state_dict["ip_adapter"]
    keys = sorted({int(k.split(".")[0]) for k in ip})
    expected = [2 * i + 1 for i in range(len(layers))]
    where = adapter.source.describe()
    if keys != expected:
        raise IPAdapterLoadError(f"IP-Adapter {where} has weights for {len(keys)} cross-attention layers but the UNet "
                                 f"has {len(layers)}: an adapter fits only the base model it was trained for "
                                 "(h94's SD1.5 adapters: an SD1.5 UNet)")
    for index, (name, attn) in enumerate(layers):
        shape = tuple(ip[f"{2 * index + 1}.to_k_ip.weight"].shape)
        if shape != (attn.to_k.out_features, attn.to_k.in_features):
            raise IPAdapterLoadError(f"IP-Adapter {where}: layer {2 * index + 1} is {shape[1]} → {shape[0]} but the "
                                     f"UNet's {name.removesuffix('.processor')} is {attn.to_k.in_features} → "
                                     f"{attn.to_k.out_features}; the adapter was trained for another base model")
    proj = adapter.state_dict["image_proj"]
    out = proj["norm_out.weight" if "latents" in proj else "norm.weight"].shape[0]
    if out != layers[0][1].to_k.in_features:
        raise IPAdapterLoadError(f"IP-Adapter {where} makes {out}-d image tokens but the UNet attends to "
                                 f"{layers[0][1].to_k.in_features}-d ones")


def install_ip_adapters(components_or_unet, adapters: Sequence[IPAdapter],
                        names: Sequence[str] | None = None) -> ActiveIPAdapters:
    """Install ``adapters`` (one per character; the same adapter may fill several slots) on the render's UNet,
    all at scale 1; :meth:`ActiveIPAdapters.remove` undoes it. Prefer :func:`ip_adapters`."""
    unet = getattr(components_or_unet, "unet", components_or_unet)
    if not adapters:
        raise ValueError("no IP-Adapter to install")
    names = list(names) if names is not None else [f"adapter{i}" for i in range(len(adapters))]
    if len(names) != len(adapters) or len(set(names)) != len(names):
        raise ValueError(f"{len(adapters)} IP-Adapters need as many distinct names, got {names}")
    return ActiveIPAdapters(unet, adapters, names).install()


@contextlib.contextmanager
def ip_adapters(components_or_unet, adapters: Sequence[IPAdapter],
                names: Sequence[str] | None = None) -> Iterator[ActiveIPAdapters]:
    """IP-Adapters installed for the block and removed after it, also when it fails."""
    active = install_ip_adapters(components_or_unet, adapters, names)
    try:
        yield active
    finally:
        active.remove()


# -- reference embeddings --------------------------------------------------------------------------------------
@dataclass
class ReferenceEmbedding:
    """One character's image conditioning: ``image_embeds`` (1 x D for ``base``, 1 x tokens x D for the plus
    variants: the mean over the reference pictures) and ``negative_image_embeds`` (the unconditional half), with
    what made them."""

    image_embeds: torch.Tensor
    negative_image_embeds: torch.Tensor
    variant: str
    encoder_id: str
    encoder_fingerprint: str
    image_hashes: list[str] = field(default_factory=list)

    @property
    def num_images(self) -> int:
        return len(self.image_hashes)

    def sampler_embeds(self, guidance: bool = True) -> torch.Tensor:
        """The tensor for one adapter in ``ip_adapter_image_embeds``: ``[negative, embedding]`` (2 x 1 x ...) with
        classifier-free guidance, the embedding alone (1 x 1 x ...) without; the layout of diffusers'
        ``prepare_ip_adapter_image_embeds``."""
        cond = self.image_embeds[:, None]
        return torch.cat([self.negative_image_embeds[:, None], cond]) if guidance else cond

    def metadata(self) -> dict[str, str]:
        return {"format": EMBEDDING_FORMAT, "version": EMBEDDING_VERSION, "variant": self.variant,
                "encoder_id": self.encoder_id, "encoder_fingerprint": self.encoder_fingerprint,
                "image_hashes": json.dumps(self.image_hashes)}

    def matches(self, adapter: IPAdapter, image_hashes: Sequence[str] | None = None) -> bool:
        """Whether this embedding is what ``adapter`` would compute (same variant and image encoder weights) from
        the same pictures (``image_hashes``, when given: see :func:`image_hash`)."""
        return (self.variant == adapter.variant and self.encoder_fingerprint == adapter.encoder_fingerprint()
                and (image_hashes is None or list(image_hashes) == self.image_hashes))


def image_hash(image) -> str:
    """SHA-256 of a picture: of the file's bytes for a path, else of its RGB pixels (shape and uint8 values)."""
    if isinstance(image, (str, os.PathLike)):
        return file_sha256(image)
    pixels = np.ascontiguousarray(_rgb_array(image))
    digest = hashlib.sha256(f"{pixels.shape}".encode())
    digest.update(pixels.tobytes())
    return digest.hexdigest()


def _rgb_array(image) -> np.ndarray:
    from PIL import Image

    if isinstance(image, (str, os.PathLike)):
        with Image.open(image) as opened:
            return np.asarray(opened.convert("RGB"))
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise ValueError(f"a reference picture must be H x W x 3 uint8 (or a PIL image or a path), got "
                         f"{array.dtype} {tuple(array.shape)}")
    return array


@torch.no_grad()
def encode_reference_images(adapter: IPAdapter, images: Sequence) -> ReferenceEmbedding:
    """The image conditioning of one character from its reference pictures (H x W x 3 uint8 arrays, PIL images or
    paths): each picture through the adapter's CLIP processor and encoder as diffusers' ``encode_image`` does
    (``image_embeds`` for base, the penultimate hidden states for plus), then the mean over the pictures. The
    negative is diffusers' unconditional input: zeros (base) or the encoding of an all-zero image (plus)."""
    if len(images) == 0:
        raise ValueError("no reference picture to encode")
    from PIL import Image

    hashes = [image_hash(image) for image in images]
    pictures = [Image.fromarray(_rgb_array(image)) for image in images]
    encoder = adapter.image_encoder
    parameter = next(encoder.parameters())
    pixels = adapter.image_processor(pictures, return_tensors="pt").pixel_values
    pixels = pixels.to(device=parameter.device, dtype=parameter.dtype)
    if adapter.hidden_states:
        per_image = encoder(pixels, output_hidden_states=True).hidden_states[-2]
        negative = encoder(torch.zeros_like(pixels[:1]), output_hidden_states=True).hidden_states[-2]
    else:
        per_image = encoder(pixels).image_embeds
        negative = None
    embeds = per_image.mean(dim=0, keepdim=True) if len(images) > 1 else per_image
    if negative is None:
        negative = torch.zeros_like(embeds)
    return ReferenceEmbedding(embeds.float().cpu(), negative.float().cpu(), adapter.variant, adapter.encoder_id,
                              adapter.encoder_fingerprint(), hashes)


def _check_embedding_path(path: Path) -> None:
    if is_pickle_checkpoint(path) or path.suffix.lower() != ".safetensors":
        raise ReferenceEmbeddingError(f"reference embedding '{path}': only .safetensors files are read and written "
                                      f"({PICKLE_REFUSAL})")


def save_reference_embedding(path: str | os.PathLike, embedding: ReferenceEmbedding) -> Path:
    """Write ``embedding`` to a ``.safetensors`` file (atomically) with its metadata."""
    from safetensors.torch import save_file

    path = Path(path)
    _check_embedding_path(path)
    tensors = {"image_embeds": embedding.image_embeds.contiguous().cpu(),
               "negative_image_embeds": embedding.negative_image_embeds.contiguous().cpu()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=embedding.metadata())
    return path


def load_reference_embedding(path: str | os.PathLike) -> ReferenceEmbedding:
    """Read what :func:`save_reference_embedding` wrote; raises :class:`ReferenceEmbeddingError` naming the file."""
    from safetensors import safe_open

    path = Path(path)
    _check_embedding_path(path)
    if not path.is_file():
        raise ReferenceEmbeddingError(f"reference embedding '{path}': no such file")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except Exception as exc:  # a truncated or foreign file
        raise ReferenceEmbeddingError(f"reference embedding '{path}': cannot read it: {first_line(exc)}") from exc
    if metadata.get("format") != EMBEDDING_FORMAT or set(tensors) != {"image_embeds", "negative_image_embeds"}:
        raise ReferenceEmbeddingError(f"reference embedding '{path}': not a {EMBEDDING_FORMAT} file")
    if metadata.get("version") != EMBEDDING_VERSION:
        raise ReferenceEmbeddingError(f"reference embedding '{path}': version {metadata.get('version')}, this "
                                      f"storyreel reads version {EMBEDDING_VERSION}; encode the pictures again")
    return ReferenceEmbedding(tensors["image_embeds"], tensors["negative_image_embeds"], metadata["variant"],
                              metadata["encoder_id"], metadata["encoder_fingerprint"],
                              json.loads(metadata["image_hashes"]))
