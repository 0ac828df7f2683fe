"""CLIP BPE tokenizers of the Stable Diffusion families, rebuilt offline from the shipped merges (no download).

SD 1.x and SDXL's first tokenizer pad with ``<|endoftext|>``; SD 2.x's and SDXL's second with ``!`` (token 0).
docs/design.md ("Model loading") records why only the merges ship.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Dict, List, Tuple

from .errors import FDIError

CONFIG_DIR = Path(__file__).with_name("configs")
#: CLIP BPE merges (OpenAI CLIP tokenizer data, MIT); OpenCLIP-H/-G (SD 2.x, SDXL) use the same vocabulary
MERGES_FILE = CONFIG_DIR / "clip_bpe_merges.txt.gz"
#: OpenAI CLIP's end token: SD 1.x's tokenizer and SDXL's first pad with it
END_TOKEN = "<|endoftext|>"
#: OpenCLIP's pad, token 0 ("!"): SD 2.x's tokenizer and SDXL's second
SD2_PAD_TOKEN = "!"
#: the pad token of each tokenizer of an architecture (``tokenizer``, then ``tokenizer_2``)
PAD_TOKENS = {"sd1": (END_TOKEN,), "sd2": (SD2_PAD_TOKEN,), "sdxl": (END_TOKEN, SD2_PAD_TOKEN)}
CONTEXT_LENGTH = 77


def _bytes_to_unicode() -> Dict[int, str]:
    """GPT-2/CLIP's reversible byte → printable-character table."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def clip_vocab_and_merges() -> Tuple[Dict[str, int], List[str]]:
    """The CLIP BPE vocabulary (49 408 tokens) and merge list, rebuilt from the shipped merges.

    CLIP's vocabulary is a function of its merges (OpenAI's ``SimpleTokenizer``): the 256 byte
    characters, the same with ``</w>``, one token per merge, then the start and end tokens."""
    with gzip.open(MERGES_FILE, "rt", encoding="utf-8") as fh:
        merges = [line for line in fh.read().split("\n")[1:] if line]
    chars = list(_bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + ["".join(m.split(" ")) for m in merges]
    tokens += ["<|startoftext|>", END_TOKEN]
    return {t: i for i, t in enumerate(tokens)}, merges


def clip_tokenizer(pad_token: str = END_TOKEN):
    """A CLIP BPE tokenizer (77 tokens) from the shipped merges, padding with ``pad_token``: the end token
    for SD 1.x and SDXL's first tokenizer, ``!`` for SD 2.x and SDXL's second (:data:`PAD_TOKENS`)."""
    import tempfile

    from transformers import CLIPTokenizer

    vocab, merges = clip_vocab_and_merges()
    if pad_token not in vocab:
        raise FDIError(f"pad token {pad_token!r} is not in the CLIP vocabulary; use {END_TOKEN!r} or '!'")
    with tempfile.TemporaryDirectory(prefix="fdi-tokenizer-") as tmp:  # the file layout every transformers reads
        d = Path(tmp)
        (d / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
        (d / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
        (d / "tokenizer_config.json").write_text(
            json.dumps({"pad_token": pad_token, "model_max_length": CONTEXT_LENGTH})
        )
        return CLIPTokenizer.from_pretrained(tmp, local_files_only=True)


def sd2_tokenizer():
    """SD 2.x's tokenizer (CLIP BPE, padded with ``!``, 77 tokens) from the shipped merges."""
    return clip_tokenizer(SD2_PAD_TOKEN)


def family_tokenizers(arch: str) -> tuple:
    """The tokenizers of an architecture (``sd1``/``sd2``: one; ``sdxl``: two), from the shipped merges."""
    return tuple(clip_tokenizer(pad) for pad in PAD_TOKENS[arch])
