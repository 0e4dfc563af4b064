"""Weighted prompts for the render, through compel: ``(word)1.3``, ``word++``, ``word--``, long prompts.

Captions written by the planner (or by hand) weight key elements, e.g.
``(<hare> rabbit)1.3 sprinting across a (sunlit meadow)1.1, watercolor``. compel encodes them with the
render's own tokenizer and text encoder:

* a weight ``w > 1`` scales that token's embedding away from the empty prompt's:
  ``empty + w * (plain - empty)``; ``w < 1`` blends toward the prompt without the words;
* a prompt longer than the tokenizer's 77 tokens is encoded in 77-token chunks and concatenated (no
  truncation), and the positive and negative embeddings are padded to the same length;
* a prompt without weights encodes exactly as the plain CLIP encoding (``StructureGuidedSampler.encode_prompt``).

Character tokens (TimeInv) go through the same text encoder, so under ``CharacterSet.at_timestep(t)``
the weighted encoding carries the character's row for ``t``.
"""

from __future__ import annotations

import torch


class WeightedPromptEncoder:
    """``encode(prompt)`` → 1 x L x D; ``encode_pair(prompt, negative)`` → both padded to one length."""

    def __init__(self, tokenizer, text_encoder):
        from compel import Compel

        self.text_encoder = text_encoder
        self.compel = Compel(tokenizer=tokenizer, text_encoder=text_encoder, truncate_long_prompts=False,
                             dtype_for_device_getter=lambda device: text_encoder.dtype)

    @torch.no_grad()
    def encode(self, prompt: str) -> torch.Tensor:
        return self.compel.build_conditioning_tensor(prompt)

    @torch.no_grad()
    def encode_pair(self, prompt: str, negative_prompt: str | None) -> tuple[torch.Tensor, torch.Tensor]:
        cond = self.encode(prompt)
        uncond = self.encode(negative_prompt or "")
        cond, uncond = self.compel.pad_conditioning_tensors_to_same_length([cond, uncond])
        return cond, uncond
