"""Build a real CLIP BPE tokenizer folder from the vocabulary shipped in ``assets/clip``.

The file ``bpe_simple_vocab_16e6.txt.gz`` comes from open-clip-torch (MIT, licence beside it);
the token order below is OpenAI CLIP's, which Hugging Face's ``vocab.json`` also uses.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from studio.shipped import asset_path

NUM_MERGES = 49152 - 256 - 2
MODEL_MAX_LENGTH = 77


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from bytes to printable unicode characters."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars), strict=True))


def write_vocab_files(out_dir: Path) -> None:
    """Write ``vocab.json`` and ``merges.txt`` (49408 tokens) into ``out_dir``."""
    with gzip.open(asset_path("clip", "bpe_simple_vocab_16e6.txt.gz")) as fh:
        lines = fh.read().decode("utf-8")
    merges = [tuple(m.split()) for m in lines.split("\n")[1 : NUM_MERGES + 1]]
    base = list(_bytes_to_unicode().values())
    tokens = base + [t + "</w>" for t in base] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "vocab.json").write_text(
        json.dumps({t: i for i, t in enumerate(tokens)}, ensure_ascii=False), encoding="utf-8"
    )
    (out_dir / "merges.txt").write_text(
        "#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n", encoding="utf-8"
    )


def build_clip_tokenizer(out_dir: Path, pad_token: str = "<|endoftext|>"):
    """Save a ``CLIPTokenizer`` to ``out_dir`` and return it (SDXL's second one pads with ``!``)."""
    from transformers import CLIPTokenizer

    write_vocab_files(out_dir)
    tokenizer = CLIPTokenizer.from_pretrained(
        str(out_dir), model_max_length=MODEL_MAX_LENGTH, pad_token=pad_token
    )
    tokenizer.save_pretrained(str(out_dir))
    return tokenizer
