"""Characters: TimeInv (timestep-dependent textual inversion) + LoRA, trained from a few reference images.

Stage four of storyboard → retrieval → structure → **characters** → render. A character is one
safetensors file (:mod:`characters.character_file`): a token (``<hare>``) that owns one text embedding
per diffusion timestep (:mod:`characters.timeinv`), a LoRA on the UNet's spatial attention
(:mod:`characters.lora_targets`) and metadata. :mod:`characters.training` trains both from 3-20
reference images turned into depth-conditioned pseudo-videos (:mod:`characters.pseudo_video`), optionally
regularised with real clips of the class word (:mod:`characters.regularisation`);
:class:`CharacterSet` puts characters on the render's components::

    from characters import CharacterSet, load_character, per_step_embeddings

    with CharacterSet(components, base_model=identity) as characters:
        characters.add(load_character("characters/hare.safetensors"))
        characters.activate({"hare": 1.0})
        hook = per_step_embeddings(characters, sampler.encode_prompt, "a video of <hare> rabbit running")
        sampler(..., prompt_embeds_for_step=hook)

This package works on components passed in (tokenizer, text encoder, VAE, UNet, ControlNet, scheduler)
and never imports the render. Heavy modules are imported lazily.
"""

from importlib import import_module

_EXPORTS = {
    "Character": "characters.character_file",
    "load_character": "characters.character_file",
    "save_character": "characters.character_file",
    "export_textual_inversion": "characters.character_file",
    "describe_base_model": "characters.character_file",
    "CharacterSet": "characters.character_set",
    "base_signature": "characters.character_set",
    "check_name": "characters.character_set",
    "check_token": "characters.character_set",
    "per_step_embeddings": "characters.character_set",
    "CharacterError": "characters.errors",
    "CharacterFileError": "characters.errors",
    "CharacterTokenError": "characters.errors",
    "CheckpointError": "characters.errors",
    "ReferenceImageError": "characters.errors",
    "ReferenceImageCountWarning": "characters.errors",
    "spatial_attention_targets": "characters.lora_targets",
    "load_reference_images": "characters.reference_images",
    "RegularisationSet": "characters.regularisation",
    "retrieve_clips": "characters.regularisation",
    "TimeInvTable": "characters.timeinv",
    "CharacterTrainer": "characters.training",
    "TrainingSettings": "characters.training",
    "train_character": "characters.training",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'characters' has no attribute {name!r}")
