"""The real CLIP BPE tokenizer (49,408 tokens), built offline in code from open_clip's bundled BPE file.

SD1.5's tokenizer folder (``stable-diffusion-v1-5/tokenizer``) is the CLIP ViT-L/14 tokenizer: its
``vocab.json`` and ``merges.txt`` are derived from OpenAI's ``bpe_simple_vocab_16e6.txt.gz``, which the
``open_clip`` package ships. CLIP derives its vocabulary from that file: the 256 byte symbols of
``bytes_to_unicode``, the same 256 with the end-of-word mark ``</w>``, one token per merge (the first
48,894 merges), then ``<|startoftext|>`` (49406) and ``<|endoftext|>`` (49407). Built that way, the
vocabulary and merges equal SD1.5's files entry for entry, and transformers' ``CLIPTokenizer`` (backed by
the tokenizers library) gives the real ids: ``'a knight riding a horse'`` →
``[49406, 320, 7355, 6765, 320, 4558, 49407]``.

The tiny and ``sd15-random`` render presets use it, so their prompts are tokenised exactly as the real
model's are, with no download and no copy of the tokenizer files in the repository.
"""

from __future__ import annotations

import gzip
import importlib.util
from functools import lru_cache
from pathlib import Path

BPE_FILE_NAME = "bpe_simple_vocab_16e6.txt.gz"
VOCAB_SIZE = 49408
MODEL_MAX_LENGTH = 77
BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
# CLIP keeps the first 49152 - 256 - 2 merges of the file (after its version line).
_NUM_MERGES = 49152 - 256 - 2


def bpe_file() -> Path:
    """open_clip's bundled BPE merges file (found without importing open_clip, which is slow to import)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the CLIP BPE file ships with open_clip_torch, which is not installed")
    for folder in spec.submodule_search_locations:
        path = Path(folder) / BPE_FILE_NAME
        if path.is_file():
            return path
    raise FileNotFoundError(f"open_clip is installed but holds no {BPE_FILE_NAME}")


def bytes_to_unicode() -> dict[int, str]:
    """CLIP's (and GPT-2's) reversible map from the 256 byte values to printable unicode symbols."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    codes = list(printable)
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, codes)))


@lru_cache(maxsize=1)
def clip_vocab_and_merges() -> tuple[tuple[tuple[str, str], ...], tuple[str, ...]]:
    """``(merges, tokens)``: the BPE merges in rank order and the vocabulary in id order."""
    lines = gzip.open(bpe_file()).read().decode("utf-8").split("\n")
    merges = tuple(tuple(line.split()) for line in lines[1 : _NUM_MERGES + 1])
    symbols = list(bytes_to_unicode().values())
    tokens = (*symbols, *(symbol + "</w>" for symbol in symbols), *("".join(merge) for merge in merges),
              BOS_TOKEN, EOS_TOKEN)
    if len(tokens) != VOCAB_SIZE or any(len(merge) != 2 for merge in merges):
        raise ValueError(f"unexpected CLIP BPE file {bpe_file()}: {len(tokens)} tokens, expected {VOCAB_SIZE}")
    return merges, tokens


def build_clip_tokenizer():
    """A new ``transformers.CLIPTokenizer`` with CLIP's real vocabulary (SD1.5's tokenizer), built offline.

    Each call returns a fresh tokenizer (callers may add tokens to theirs, as textual inversion does).
    """
    from transformers import CLIPTokenizer

    merges, tokens = clip_vocab_and_merges()
    return CLIPTokenizer(
        vocab={token: index for index, token in enumerate(tokens)},
        merges=list(merges),
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=EOS_TOKEN,
        pad_token=EOS_TOKEN,
        model_max_length=MODEL_MAX_LENGTH,
    )
