"""CLIP's byte-level BPE vocabulary and pre-tokenization regex, built exactly as open_clip does.

`vocab_from_bpe_gz` reads open_clip's gzipped merges file (shipped with vlkit),
`vocab_from_hf_files` a Hugging Face `vocab.json` + `merges.txt` pair; both give open_clip's
ids. `OPEN_CLIP_PATTERN` is open_clip's word split, `clip_split_pattern` the same split
rewritten for the Rust `tokenizers` engine.
"""

from __future__ import annotations

import gzip
import importlib.resources
import json
import os
from functools import lru_cache
from pathlib import Path

import numpy as np
import regex

__all__ = [
    "BPE_ASSET",
    "CLIP_VOCAB_SIZE",
    "HF_CLIP_SPECIALS",
    "OPEN_CLIP_PATTERN",
    "OPEN_CLIP_SPECIALS",
    "OPEN_CLIP_SPECIAL_SEARCH",
    "bytes_to_unicode",
    "clip_split_pattern",
    "vocab_from_bpe_gz",
    "vocab_from_hf_files",
]

CLIP_VOCAB_SIZE = 49408
BPE_ASSET = "bpe_simple_vocab_16e6.txt.gz"

# The special tokens as open_clip 3.x names them (open_clip/tokenizer.py SimpleTokenizer:
# `special_tokens = ['<start_of_text>', '<end_of_text>']`). Only these strings are treated as
# special *inside the text*; OpenAI's "<|startoftext|>"/"<|endoftext|>" (the names in HF's
# vocab.json) are split like any other text by open_clip, so they are here too.
OPEN_CLIP_SPECIALS = ("<start_of_text>", "<end_of_text>")
HF_CLIP_SPECIALS = ("<|startoftext|>", "<|endoftext|>")
_CONTRACTIONS = ("s", "t", "re", "ve", "m", "ll", "d")


# --------------------------------------------------------------------------------------------
# CLIP pre-tokenization pattern
# --------------------------------------------------------------------------------------------

# open_clip's pattern, compiled with the `regex` module and IGNORECASE exactly as
# SimpleTokenizer.__init__ does (open_clip/tokenizer.py).
OPEN_CLIP_PATTERN = regex.compile(
    "|".join(OPEN_CLIP_SPECIALS)
    + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)
# Any match of the special alternatives (same flags): in "pipeline" mode such texts are encoded
# with open_clip's regex in Python instead.
OPEN_CLIP_SPECIAL_SEARCH = regex.compile("|".join(OPEN_CLIP_SPECIALS), regex.IGNORECASE)


def _all_codepoints() -> str:
    """Every Unicode scalar value (surrogates excluded), in order, as one string."""
    cps = np.arange(0x110000, dtype="<u4")  # little-endian, to match the codec below
    cps = cps[(cps < 0xD800) | (cps > 0xDFFF)]
    return cps.tobytes().decode("utf-32-le")


@lru_cache(maxsize=1)
def clip_split_pattern() -> str:
    """open_clip's pre-tokenization regex, rewritten for the Oniguruma engine of `tokenizers`.

    The pattern is open_clip's
    `<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+`
    but with `\\p{L}`, `\\p{N}` and `[^\\s\\p{L}\\p{N}]` replaced by explicit code point
    ranges computed with the `regex` module (IGNORECASE, as open_clip compiles it), and the
    contractions by their case-fold classes (`'s` also matches "'S" and "'ſ"). Written
    with the `\\p{..}` classes, Oniguruma and `regex` disagree on ~17k code points (different
    Unicode versions; `regex`'s IGNORECASE makes U+0345 match no class at all), so the
    explicit ranges are what makes the Rust split equal open_clip's `re.findall`.
    """
    chars = _all_codepoints()

    def ranges(pattern: str) -> str:
        parts = []
        for m in regex.finditer(pattern, chars, flags=regex.IGNORECASE):
            # Each run is consecutive code points (surrogates were removed, so a run that
            # crosses them is still a valid range: U+D7FF-U+E000 contains no scalar values).
            lo, hi = ord(m.group()[0]), ord(m.group()[-1])
            parts.append(f"\\x{{{lo:X}}}" if lo == hi else f"\\x{{{lo:X}}}-\\x{{{hi:X}}}")
        return "[" + "".join(parts) + "]"

    def fold(ch: str) -> str:
        variants = regex.findall(regex.escape(ch), chars, flags=regex.IGNORECASE)
        return "[" + "".join(f"\\x{{{ord(c):X}}}" for c in variants) + "]"

    contractions = "|".join("'" + "".join(fold(c) for c in w) for w in _CONTRACTIONS)
    letters = ranges(r"[\p{L}]+")
    numbers = ranges(r"[\p{N}]+")
    other = ranges(r"[^\s\p{L}\p{N}]+")
    specials = "|".join(s.replace("|", r"\|") for s in OPEN_CLIP_SPECIALS)
    return f"{specials}|{contractions}|{letters}+|{numbers}|{other}+"


# --------------------------------------------------------------------------------------------
# CLIP vocabulary
# --------------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table (open_clip/tokenizer.py `bytes_to_unicode`)."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(2**8):
        if b not in bs:
            bs.append(b)
            cs.append(2**8 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs], strict=True))


def _default_bpe_bytes() -> bytes:
    return importlib.resources.files("vlkit").joinpath("assets", BPE_ASSET).read_bytes()


@lru_cache(maxsize=4)
def vocab_from_bpe_gz(path: str | None) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Vocabulary and merges built exactly as open_clip's SimpleTokenizer.__init__ builds them.

    256 byte characters, the same with "</w>", one token per merge of lines[1:49152-256-2+1],
    then "<start_of_text>" and "<end_of_text>": 49,408 ids.
    """
    try:
        data = _default_bpe_bytes() if path is None else Path(path).read_bytes()
        lines = gzip.decompress(data).decode("utf-8").split("\n")
    except (OSError, EOFError, UnicodeDecodeError) as e:
        where = f"vlkit/assets/{BPE_ASSET}" if path is None else path
        raise ValueError(f"{where}: cannot read a gzipped CLIP BPE merges file ({e})") from e
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    if any(len(m) != 2 for m in merges):
        raise ValueError(f"{path or BPE_ASSET}: malformed merge line (expected 'a b')")
    tokens = list(bytes_to_unicode().values())
    tokens = tokens + [t + "</w>" for t in tokens]
    tokens += ["".join(m) for m in merges]
    tokens += list(OPEN_CLIP_SPECIALS)
    return {t: i for i, t in enumerate(tokens)}, merges  # type: ignore[return-value]


def vocab_from_hf_files(
    vocab_file: str | os.PathLike[str], merges_file: str | os.PathLike[str]
) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A Hugging Face CLIP `vocab.json` + `merges.txt` pair (same ids as open_clip's table)."""
    try:
        vocab = json.loads(Path(vocab_file).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{vocab_file}: cannot read a vocab.json token -> id mapping ({e})") from e
    if not isinstance(vocab, dict):
        raise ValueError(f"{vocab_file}: expected a JSON object mapping tokens to ids")
    try:
        lines = Path(merges_file).read_text(encoding="utf-8").split("\n")
    except OSError as e:
        raise ValueError(f"{merges_file}: cannot read merges ({e})") from e
    if lines and lines[0].startswith("#version"):
        lines = lines[1:]
    merges = [tuple(line.split()) for line in lines if line.strip()]
    bad = next((m for m in merges if len(m) != 2), None)
    if bad is not None:
        raise ValueError(f"{merges_file}: malformed merge line {' '.join(bad)!r} (expected 'a b')")
    return vocab, merges  # type: ignore[return-value]
