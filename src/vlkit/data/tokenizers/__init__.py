"""Text tokenizers: CLIP (byte-level BPE) and SigLIP (sentencepiece), id-for-id with the references.

* `CLIPTokenizer` gives exactly the ids of `open_clip.tokenizer.tokenize` /
  `open_clip.get_tokenizer("ViT-B-32")` (open_clip/tokenizer.py, `SimpleTokenizer` with the
  default `clean="lower"`), with the BPE in Rust (Hugging Face `tokenizers`), a per-word id
  cache and ftfy skipped where it provably changes nothing; optionally the whole pipeline
  runs in `tokenizers` (`Tokenizer.encode_batch`).
* `SigLIPTokenizer` gives exactly the `input_ids` of transformers' `SiglipTokenizer`
  (transformers/models/siglip/tokenization_siglip.py) called the way `SiglipProcessor` calls it:
  `padding="max_length", max_length=64, truncation=True`.
* `HFTokenizer` wraps any `tokenizer.json` (SigLIP 2 / Gemma and other fast tokenizers).
* `get_tokenizer` picks one from a name or a checkpoint directory.

All of them are called as `tok(texts, context_length=None) -> LongTensor (N, context_length)`.
"""

from __future__ import annotations

import gzip
import html
import importlib.resources
import itertools
import json
import os
import re
import string
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import ftfy
import numpy as np
import regex
import sentencepiece as spm
import torch
from tokenizers import Regex, Tokenizer, models, pre_tokenizers

__all__ = [
    "CLIPTokenizer",
    "HFTokenizer",
    "SigLIPTokenizer",
    "clean_text",
    "get_tokenizer",
]

DEFAULT_CLIP_CONTEXT_LENGTH = 77  # OpenAI CLIP (open_clip/tokenizer.py DEFAULT_CONTEXT_LENGTH)
DEFAULT_SIGLIP_CONTEXT_LENGTH = 64  # SiglipTokenizer model_max_length / SiglipProcessor max_length
CLIP_VOCAB_SIZE = 49408
_BPE_ASSET = "bpe_simple_vocab_16e6.txt.gz"
# Hugging Face writes `model_max_length = int(1e30)` when a tokenizer has no limit.
_MAX_SANE_CONTEXT = 100_000

# The special tokens as open_clip 3.x names them (open_clip/tokenizer.py SimpleTokenizer:
# `special_tokens = ['<start_of_text>', '<end_of_text>']`). Only these strings are treated as
# special *inside the text*; OpenAI's "<|startoftext|>"/"<|endoftext|>" (the names in HF's
# vocab.json) are split like any other text by open_clip, so they are here too.
_OPEN_CLIP_SPECIALS = ("<start_of_text>", "<end_of_text>")
_HF_CLIP_SPECIALS = ("<|startoftext|>", "<|endoftext|>")
_CONTRACTIONS = ("s", "t", "re", "ve", "m", "ll", "d")


# --------------------------------------------------------------------------------------------
# CLIP text cleaning (open_clip/tokenizer.py: basic_clean + whitespace_clean + lower)
# --------------------------------------------------------------------------------------------

# ASCII characters that ftfy.fix_text (ftfy 6.x, default config) provably leaves alone:
# printable ASCII plus tab and newline, without "&". Every ftfy fixer either only touches
# non-ASCII characters (mojibake detection returns early on ASCII, c1 controls, ligatures,
# widths, curly quotes, surrogates, NFC), or needs a character excluded here: "&" (HTML
# unescaping), "\r" (fix_line_breaks), "\x1b" (remove_terminal_escapes) and the other C0
# controls / DEL (remove_control_chars). tests/test_tokenizer.py re-checks this claim against
# the installed ftfy. Skipping ftfy is what makes ASCII captions fast: it is ~20 us per text.
_FTFY_UNSAFE_ASCII = re.compile(r"[^\t\n\x20-\x25\x27-\x7e]")


def _ftfy_is_identity(text: str) -> bool:
    """True when `ftfy.fix_text(text) == text` is guaranteed (see `_FTFY_UNSAFE_ASCII`)."""
    if not text.isascii():
        return False
    if text.isprintable():  # the common case: one C-level scan, then the "&" check
        return "&" not in text
    return _FTFY_UNSAFE_ASCII.search(text) is None


def clean_text(text: str) -> str:
    """Clean a caption exactly as open_clip's default CLIP tokenizer does.

    open_clip/tokenizer.py `_clean_lower`: `ftfy.fix_text`, `html.unescape` twice, strip,
    collapse whitespace runs (`str.split`) to single spaces, lower-case. ftfy is skipped for
    pure-ASCII text on which it cannot change anything (see `_FTFY_UNSAFE_ASCII`).

    Args:
        text: Raw caption.

    Returns:
        The cleaned, lower-cased caption.
    """
    if not _ftfy_is_identity(text):
        text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return " ".join(text.split()).strip().lower()


# --------------------------------------------------------------------------------------------
# CLIP pre-tokenization pattern
# --------------------------------------------------------------------------------------------

# open_clip's pattern, compiled with the `regex` module and IGNORECASE exactly as
# SimpleTokenizer.__init__ does (open_clip/tokenizer.py).
_OPEN_CLIP_PAT = regex.compile(
    "|".join(_OPEN_CLIP_SPECIALS)
    + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)
# Any match of the special alternatives (same flags): in "pipeline" mode such texts are encoded
# with open_clip's regex in Python instead.
_OPEN_CLIP_SPECIAL_SEARCH = regex.compile("|".join(_OPEN_CLIP_SPECIALS), regex.IGNORECASE)


def _all_codepoints() -> str:
    """Every Unicode scalar value (surrogates excluded), in order, as one string."""
    cps = np.arange(0x110000, dtype="<u4")  # little-endian, to match the codec below
    cps = cps[(cps < 0xD800) | (cps > 0xDFFF)]
    return cps.tobytes().decode("utf-32-le")


@lru_cache(maxsize=1)
def _clip_split_pattern() -> str:
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
    specials = "|".join(s.replace("|", r"\|") for s in _OPEN_CLIP_SPECIALS)
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
    return importlib.resources.files("vlkit").joinpath("assets", _BPE_ASSET).read_bytes()


@lru_cache(maxsize=4)
def _vocab_from_bpe_gz(path: str | None) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """Vocabulary and merges built exactly as open_clip's SimpleTokenizer.__init__ builds them.

    256 byte characters, the same with "</w>", one token per merge of lines[1:49152-256-2+1],
    then "<start_of_text>" and "<end_of_text>": 49,408 ids.
    """
    try:
        data = _default_bpe_bytes() if path is None else Path(path).read_bytes()
        lines = gzip.decompress(data).decode("utf-8").split("\n")
    except (OSError, EOFError, UnicodeDecodeError) as e:
        where = f"vlkit/assets/{_BPE_ASSET}" if path is None else path
        raise ValueError(f"{where}: cannot read a gzipped CLIP BPE merges file ({e})") from e
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    if any(len(m) != 2 for m in merges):
        raise ValueError(f"{path or _BPE_ASSET}: malformed merge line (expected 'a b')")
    tokens = list(bytes_to_unicode().values())
    tokens = tokens + [t + "</w>" for t in tokens]
    tokens += ["".join(m) for m in merges]
    tokens += list(_OPEN_CLIP_SPECIALS)
    return {t: i for i, t in enumerate(tokens)}, merges  # type: ignore[return-value]


def _vocab_from_hf_files(
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


def _as_text_list(texts: str | Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        return [texts]
    texts = list(texts)
    for t in texts:
        if not isinstance(t, str):
            raise TypeError(f"expected str or a sequence of str, got an element of type {type(t)}")
    return texts


def _context(context_length: int | None, default: int) -> int:
    # open_clip: `context_length = context_length or self.context_length` (0/None -> default).
    ctx = context_length or default
    if not isinstance(ctx, int) or ctx < 1:
        raise ValueError(f"context_length must be a positive integer, got {context_length!r}")
    return ctx


class CLIPTokenizer:
    """CLIP's byte-level BPE tokenizer, id-for-id with open_clip's default tokenizer.

    Every text is first cleaned in Python by `clean_text` (ftfy, HTML unescaping, whitespace,
    lower case; open_clip/tokenizer.py `_clean_lower`). The BPE itself is a
    `tokenizers.models.BPE` (Rust) with `end_of_word_suffix="</w>"`. Two ways to split and
    encode a batch, with identical results:

    * `batch_mode="words"` (default): open_clip's regex in Python (the `regex` module, same
      pattern and flags as open_clip), then a per-word id cache; words not seen before go
      through the Rust BPE. This is open_clip's own algorithm with the BPE and the id lookup
      replaced, so special-token strings in the text behave exactly as in open_clip by
      construction. On short captions it is ~3x faster than the full Rust pipeline, whose
      fixed cost per text dominates (see benchmarks/tokenizer_throughput.py).
    * `batch_mode="pipeline"`: `backend_tokenizer.encode_batch` (parallel Rust): a
      `tokenizers.Tokenizer` with a `Split` pre-tokenizer (open_clip's regex, see
      `_clip_split_pattern`), `ByteLevel(add_prefix_space=False, use_regex=False)` and the
      BPE. Texts containing open_clip's special-token strings ("<start_of_text>",
      "<end_of_text>", matched case-insensitively like open_clip) take the "words" path,
      because tokenizers' added-token extraction matches them anywhere, while open_clip's
      regex only matches them where a match starts. May win on many-core machines.

    OpenAI's "<|endoftext|>" is not special inside the text for open_clip 3.x (its special
    strings are "<start_of_text>"/"<end_of_text>"); it is split as ordinary text here too.

    Output of `__call__`: `[sot] + tokens + [eot]`, zero padded; longer sequences are cut to
    `context_length` and the last id is replaced by `eot` (open_clip `SimpleTokenizer.__call__`).

    Attributes:
        context_length: Default row length of `__call__`.
        vocab_size: Number of ids (49,408 for CLIP).
        sot_token_id: Start-of-text id (49406).
        eot_token_id: End-of-text id (49407).
        pad_token_id: Padding id (0, as open_clip pads with zeros).
        batch_mode: "words" or "pipeline" (see above).
    """

    pad_token_id: int = 0
    # Bound on the per-word id cache ("words" mode); cleared when full. open_clip's own cache
    # is unbounded.
    _MAX_CACHED_WORDS = 1_000_000

    def __init__(
        self,
        bpe_path: str | os.PathLike[str] | None = None,
        context_length: int = DEFAULT_CLIP_CONTEXT_LENGTH,
        *,
        vocab_file: str | os.PathLike[str] | None = None,
        merges_file: str | os.PathLike[str] | None = None,
        batch_mode: str = "words",
    ) -> None:
        """Build the tokenizer.

        Args:
            bpe_path: An open_clip-style gzipped merges file; default: the one shipped with
                vlkit (`vlkit/assets/bpe_simple_vocab_16e6.txt.gz`, identical to open_clip's).
            context_length: Default row length of `__call__`.
            vocab_file: A Hugging Face CLIP `vocab.json` (use together with `merges_file`,
                instead of `bpe_path`).
            merges_file: The matching Hugging Face `merges.txt`.
            batch_mode: "words" (default) or "pipeline"; same ids, different speed.

        Raises:
            ValueError: Unreadable or malformed vocabulary files, a vocabulary without the
                start/end-of-text tokens, or an unknown `batch_mode`.
        """
        if (vocab_file is None) != (merges_file is None):
            raise ValueError("vocab_file and merges_file must be given together")
        if vocab_file is not None and bpe_path is not None:
            raise ValueError("give either bpe_path or vocab_file + merges_file, not both")
        if batch_mode not in ("words", "pipeline"):
            raise ValueError(f"batch_mode must be 'words' or 'pipeline', got {batch_mode!r}")
        if vocab_file is not None:
            vocab, merges = _vocab_from_hf_files(vocab_file, merges_file)  # type: ignore[arg-type]
            source = str(vocab_file)
        else:
            vocab, merges = _vocab_from_bpe_gz(None if bpe_path is None else str(bpe_path))
            source = str(bpe_path) if bpe_path is not None else f"vlkit/assets/{_BPE_ASSET}"
        self.context_length = _context(context_length, DEFAULT_CLIP_CONTEXT_LENGTH)
        self.batch_mode = batch_mode
        self.source = source
        self.vocab_size = len(vocab)
        self.sot_token_id = self._find_special(vocab, 0, source)
        self.eot_token_id = self._find_special(vocab, 1, source)
        self._special_ids = {
            _OPEN_CLIP_SPECIALS[0]: self.sot_token_id,
            _OPEN_CLIP_SPECIALS[1]: self.eot_token_id,
        }
        self._decoder = {i: t for t, i in vocab.items()}
        self._byte_encoder = bytes_to_unicode()
        self._byte_decoder = {c: b for b, c in self._byte_encoder.items()}
        # No added tokens: the special tokens are in the BPE vocab (so their ids decode) but
        # the text only produces them through open_clip's regex (see class docstring).
        self._bpe = models.BPE(
            vocab=vocab,
            merges=merges,
            end_of_word_suffix="</w>",
            fuse_unk=False,
            cache_capacity=100_000,
        )
        self._word_cache: dict[str, list[int]] = {}
        self._pipeline: Tokenizer | None = None

    @staticmethod
    def _find_special(vocab: dict[str, int], which: int, source: str) -> int:
        for name in (_OPEN_CLIP_SPECIALS[which], _HF_CLIP_SPECIALS[which]):
            if name in vocab:
                return int(vocab[name])
        raise ValueError(
            f"{source}: vocabulary has neither {_OPEN_CLIP_SPECIALS[which]!r} nor "
            f"{_HF_CLIP_SPECIALS[which]!r}"
        )

    @classmethod
    def from_pretrained(
        cls,
        directory: str | os.PathLike[str],
        context_length: int | None = None,
        *,
        batch_mode: str = "words",
    ) -> CLIPTokenizer:
        """Load `vocab.json` + `merges.txt` from a Hugging Face CLIP checkpoint directory.

        Args:
            directory: The checkpoint directory.
            context_length: Row length; default: `config.json` `text_config.
                max_position_embeddings`, else `tokenizer_config.json` `model_max_length`,
                else 77.
            batch_mode: See the class docstring.

        Returns:
            The tokenizer.

        Raises:
            ValueError: Missing or malformed files.
        """
        d = Path(directory)
        missing = [f for f in ("vocab.json", "merges.txt") if not (d / f).is_file()]
        if missing:
            raise ValueError(f"{d}: not a CLIP tokenizer directory, missing {', '.join(missing)}")
        ctx = context_length or _context_from_dir(d, DEFAULT_CLIP_CONTEXT_LENGTH)
        return cls(
            vocab_file=d / "vocab.json",
            merges_file=d / "merges.txt",
            context_length=ctx,
            batch_mode=batch_mode,
        )

    @property
    def backend_tokenizer(self) -> Tokenizer:
        """The equivalent `tokenizers.Tokenizer` (Split + ByteLevel pre-tokenizers, BPE model).

        It expects text already cleaned by `clean_text` and containing no special-token
        string (see the class docstring); it adds no start/end-of-text ids. Built on first use.
        """
        if self._pipeline is None:
            tok = Tokenizer(self._bpe)
            split = pre_tokenizers.Split(
                Regex(_clip_split_pattern()), behavior="removed", invert=True
            )
            tok.pre_tokenizer = pre_tokenizers.Sequence(
                [split, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
            )
            self._pipeline = tok
        return self._pipeline

    # -- encoding ------------------------------------------------------------------------------

    def _encode_words(self, cleaned: str) -> list[int]:
        """open_clip's `SimpleTokenizer.encode` loop on cleaned text, with the BPE in Rust."""
        cache = self._word_cache
        ids: list[int] = []
        for piece in _OPEN_CLIP_PAT.findall(cleaned):
            word_ids = cache.get(piece)
            if word_ids is None:
                special = self._special_ids.get(piece)
                if special is not None:  # open_clip's bpe cache maps specials to themselves
                    word_ids = [special]
                else:
                    byte_text = "".join(self._byte_encoder[b] for b in piece.encode("utf-8"))
                    word_ids = [t.id for t in self._bpe.tokenize(byte_text)]
                if len(cache) >= self._MAX_CACHED_WORDS:
                    cache.clear()
                cache[piece] = word_ids
            ids += word_ids
        return ids

    def _encode_pipeline(self, cleaned: list[str]) -> list[list[int]]:
        tok = self.backend_tokenizer
        encode_batch = getattr(tok, "encode_batch_fast", tok.encode_batch)
        out: list[list[int] | None] = [None] * len(cleaned)
        plain: list[int] = []
        for i, text in enumerate(cleaned):
            if _OPEN_CLIP_SPECIAL_SEARCH.search(text) is None:
                plain.append(i)
            else:
                out[i] = self._encode_words(text)
        encodings = encode_batch([cleaned[i] for i in plain], add_special_tokens=False)
        for i, e in zip(plain, encodings, strict=True):
            out[i] = e.ids
        return out  # type: ignore[return-value]

    def encode_batch(self, texts: str | Sequence[str]) -> list[list[int]]:
        """Token ids of each text, without start/end-of-text and without truncation.

        Args:
            texts: A string or a sequence of strings.

        Returns:
            One list of ids per text.
        """
        cleaned = [clean_text(t) for t in _as_text_list(texts)]
        if self.batch_mode == "pipeline":
            return self._encode_pipeline(cleaned)
        return [self._encode_words(t) for t in cleaned]

    def encode(self, text: str) -> list[int]:
        """Token ids of one text, without start/end-of-text (open_clip `SimpleTokenizer.encode`).

        Args:
            text: The text.

        Returns:
            The ids.
        """
        return self.encode_batch([text])[0]

    def __call__(
        self, texts: str | Sequence[str], context_length: int | None = None
    ) -> torch.LongTensor:
        """Tokenize to a `(N, context_length)` LongTensor, as `open_clip.tokenize` does.

        Args:
            texts: A string or a sequence of strings.
            context_length: Row length; default `self.context_length`.

        Returns:
            `sot + ids + eot`, zero padded; rows longer than `context_length` are cut and end
            with `eot`.
        """
        ctx = _context(context_length, self.context_length)
        return torch.from_numpy(self._to_rows(self.encode_batch(texts), ctx))  # type: ignore[return-value]

    def _to_rows(self, all_ids: list[list[int]], ctx: int) -> np.ndarray:
        """open_clip's `[sot] + ids + [eot]`, zero padded, cut to `ctx` with `eot` kept last.

        Vectorized equivalent of open_clip's loop (`tokens = tokens[:context_length];
        tokens[-1] = eot_token_id` when too long): row = sot, ids[:k], eot with
        k = min(len(ids), ctx - 2); for ctx == 1 open_clip's rule leaves just [eot].
        """
        n = len(all_ids)
        result = np.zeros((n, ctx), dtype=np.int64)
        if n == 0:
            return result
        if ctx == 1:
            result[:, 0] = self.eot_token_id
            return result
        lens = np.fromiter(map(len, all_ids), dtype=np.int64, count=n)
        flat_ids = itertools.chain.from_iterable(all_ids)
        flat = np.fromiter(flat_ids, dtype=np.int64, count=int(lens.sum()))
        keep = np.minimum(lens, ctx - 2)
        rows = np.repeat(np.arange(n), keep)
        # Position of each kept id inside its row (0..keep-1) and inside `flat`.
        within = np.arange(int(keep.sum())) - np.repeat(np.cumsum(keep) - keep, keep)
        src = np.repeat(np.cumsum(lens) - lens, keep) + within
        result[:, 0] = self.sot_token_id
        result[rows, within + 1] = flat[src]
        result[np.arange(n), keep + 1] = self.eot_token_id
        return result

    # -- decoding ------------------------------------------------------------------------------

    def decode(self, ids: Sequence[int] | torch.Tensor | np.ndarray) -> str:
        """Text of a row of ids, like open_clip's `SimpleTokenizer.decode`.

        The row is cut at the first end-of-text (what follows is padding), start-of-text ids
        are dropped, bytes are decoded as UTF-8 (invalid sequences replaced) and "</w>"
        becomes a space; the result is stripped.

        Args:
            ids: One row of ids (list, 1-D tensor or array).

        Returns:
            The text.
        """
        seq = [int(i) for i in (ids.tolist() if hasattr(ids, "tolist") else ids)]
        if self.eot_token_id in seq:
            seq = seq[: seq.index(self.eot_token_id)]
        unknown = next((i for i in seq if i not in self._decoder), None)
        if unknown is not None:
            raise ValueError(f"id {unknown} is not in the vocabulary of {self.source}")
        specials = {self.sot_token_id, self.eot_token_id}
        text = "".join(self._decoder[i] for i in seq if i not in specials)
        data = bytearray(self._byte_decoder[c] for c in text)
        return data.decode("utf-8", errors="replace").replace("</w>", " ").strip()

    def __repr__(self) -> str:
        return (
            f"CLIPTokenizer(source={self.source!r}, vocab_size={self.vocab_size}, "
            f"context_length={self.context_length}, batch_mode={self.batch_mode!r})"
        )


# --------------------------------------------------------------------------------------------
# SigLIP
# --------------------------------------------------------------------------------------------

SPIECE_UNDERLINE = "▁"


def _token_content(value: Any) -> str | None:
    """A special token as tokenizer_config.json stores it: a string or an AddedToken dict."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: cannot parse JSON ({e})") from e
    return data if isinstance(data, dict) else {}


def _sane_context(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value < _MAX_SANE_CONTEXT:
        return value
    return None


def _context_from_dir(directory: Path, default: int) -> int:
    """`config.json` text_config.max_position_embeddings, else tokenizer_config.json
    `model_max_length` (when it is a real limit, not HF's 1e30 "unset"), else `default`."""
    text_config = _read_json(directory / "config.json").get("text_config")
    if isinstance(text_config, dict):
        ctx = _sane_context(text_config.get("max_position_embeddings"))
        if ctx is not None:
            return ctx
    ctx = _sane_context(_read_json(directory / "tokenizer_config.json").get("model_max_length"))
    return ctx if ctx is not None else default


class SigLIPTokenizer:
    """SigLIP's sentencepiece tokenizer, id-for-id with transformers' `SiglipTokenizer`.

    Reproduces `SiglipTokenizer(text, padding="max_length", max_length=L, truncation=True)`
    (transformers/models/siglip/tokenization_siglip.py, on top of
    tokenization_utils_sentencepiece.py and tokenization_python.py):

    1. `"▁" + text.replace("▁", " ")` (`SiglipTokenizer.tokenize`).
    2. Split out special-token strings ("</s>", "<unk>", ...; `PreTrainedTokenizer.tokenize`),
       stripping whitespace next to those registered with lstrip/rstrip (eos/unk/pad are).
    3. Each other chunk: `canonicalize_text` (lower-case if `do_lower_case`, remove ASCII
       punctuation `string.punctuation`, collapse `\\s+` to one space, strip), then
       `sp.encode(unk + chunk)` with the pieces of the unk prefix dropped
       (`SiglipTokenizer._tokenize`).
    4. A leading lone "▁" piece before a special token is dropped.
    5. Truncate to `L - 1` ids, append eos unless the ids already end with it
       (`_add_eos_if_not_present`), right-pad with the pad id ("</s>", i.e. eos, by default).

    Attributes:
        context_length: Default row length of `__call__`.
        vocab_size: Sentencepiece vocabulary size.
        eos_token_id: End-of-sequence id (also `eot_token_id`).
        pad_token_id: Padding id.
        unk_token_id: Unknown-token id.
        sot_token_id: None (SigLIP has no start token).
    """

    sot_token_id = None

    def __init__(
        self,
        model_file: str | os.PathLike[str],
        context_length: int = DEFAULT_SIGLIP_CONTEXT_LENGTH,
        *,
        do_lower_case: bool = True,
        eos_token: str = "</s>",
        unk_token: str = "<unk>",
        pad_token: str = "</s>",
        additional_special_tokens: Sequence[str] = (),
        added_tokens: dict[str, tuple[int, bool, bool]] | None = None,
    ) -> None:
        """Load a sentencepiece model.

        Args:
            model_file: The checkpoint's `spiece.model`.
            context_length: Default row length (SigLIP: 64).
            do_lower_case: Lower-case before encoding (SiglipTokenizer default True).
            eos_token: End-of-sequence token string.
            unk_token: Unknown token string (also the prefix trick of `_tokenize`).
            pad_token: Padding token string.
            additional_special_tokens: More special strings split out of the text unchanged
                (no whitespace stripping, as transformers registers plain strings).
            added_tokens: `content -> (id, lstrip, rstrip)` from tokenizer_config.json's
                `added_tokens_decoder`; overrides the defaults above for those tokens.

        Raises:
            ValueError: Unreadable model, or special tokens missing from the vocabulary.
        """
        self.model_file = str(model_file)
        self._load(self.model_file)
        self.context_length = _context(context_length, DEFAULT_SIGLIP_CONTEXT_LENGTH)
        self.do_lower_case = do_lower_case
        self.eos_token, self.unk_token, self.pad_token = eos_token, unk_token, pad_token
        # content -> (id, lstrip, rstrip). SiglipTokenizer.__init__ wraps eos/unk/pad in
        # AddedToken(lstrip=True, rstrip=True); plain-string extras get no stripping.
        specials = dict(added_tokens or {})
        for content in (eos_token, unk_token, pad_token, *additional_special_tokens):
            if content not in specials:
                strip = content in (eos_token, unk_token, pad_token)
                specials[content] = (self._piece_id(content), strip, strip)
        self._specials = specials
        self.eos_token_id = specials[eos_token][0]
        self.unk_token_id = specials[unk_token][0]
        self.pad_token_id = specials[pad_token][0]
        # transformers' Trie matches the longest token at the earliest position.
        alternatives = sorted(specials, key=len, reverse=True)
        self._special_split = re.compile("(" + "|".join(map(re.escape, alternatives)) + ")")
        self._punct = str.maketrans("", "", string.punctuation)
        # SiglipTokenizer.unk_token_length: how many pieces the "<unk>" prefix encodes to.
        self._unk_len = len(self._sp.encode(unk_token, out_type=str))

    def _load(self, model_file: str) -> None:
        sp = spm.SentencePieceProcessor()
        try:
            sp.Load(model_file)
        except (OSError, RuntimeError) as e:
            raise ValueError(f"{model_file}: cannot load sentencepiece model ({e})") from e
        self._sp = sp
        self.vocab_size = sp.get_piece_size()

    def _piece_id(self, content: str) -> int:
        pid = self._sp.piece_to_id(content)
        if pid >= self.vocab_size or self._sp.id_to_piece(pid) != content:
            raise ValueError(
                f"{self.model_file}: special token {content!r} is not in the sentencepiece "
                "vocabulary"
            )
        return pid

    @property
    def eot_token_id(self) -> int:
        """Alias of `eos_token_id` (the id that ends every row)."""
        return self.eos_token_id

    @classmethod
    def from_pretrained(
        cls, directory: str | os.PathLike[str], context_length: int | None = None
    ) -> SigLIPTokenizer:
        """Load `spiece.model` (+ `tokenizer_config.json` if present) from a checkpoint directory.

        SigLIP 2 / Gemma directories ship `tokenizer.json` instead: load those with
        `get_tokenizer` (-> `HFTokenizer`).

        Args:
            directory: The checkpoint directory.
            context_length: Row length; default: `config.json` `text_config.
                max_position_embeddings`, else `tokenizer_config.json` `model_max_length`,
                else 64.

        Returns:
            The tokenizer.

        Raises:
            ValueError: No `spiece.model`, or unreadable files.
        """
        d = Path(directory)
        if not (d / "spiece.model").is_file():
            raise ValueError(f"{d}: no spiece.model (SigLIP sentencepiece model) in this directory")
        cfg = _read_json(d / "tokenizer_config.json")
        kwargs: dict[str, Any] = {}
        for key in ("eos_token", "unk_token", "pad_token"):
            content = _token_content(cfg.get(key))
            if content is not None:
                kwargs[key] = content
        extra = cfg.get("additional_special_tokens") or cfg.get("extra_special_tokens") or []
        if isinstance(extra, list):
            kwargs["additional_special_tokens"] = [
                c for c in map(_token_content, extra) if c is not None
            ]
        added: dict[str, tuple[int, bool, bool]] = {}
        for idx, tok in (cfg.get("added_tokens_decoder") or {}).items():
            if isinstance(tok, dict) and isinstance(tok.get("content"), str):
                added[tok["content"]] = (
                    int(idx),
                    bool(tok.get("lstrip", False)),
                    bool(tok.get("rstrip", False)),
                )
        if isinstance(cfg.get("do_lower_case"), bool):
            kwargs["do_lower_case"] = cfg["do_lower_case"]
        ctx = context_length or _context_from_dir(d, DEFAULT_SIGLIP_CONTEXT_LENGTH)
        return cls(d / "spiece.model", context_length=ctx, added_tokens=added, **kwargs)

    # -- encoding ------------------------------------------------------------------------------

    def _canonicalize(self, text: str) -> str:
        # SiglipTokenizer.canonicalize_text (keep_punctuation_exact_string=None).
        if self.do_lower_case:
            text = text.lower()
        text = text.translate(self._punct)
        return re.sub(r"\s+", " ", text).strip()

    def _sp_pieces(self, chunk: str) -> list[str]:
        # SiglipTokenizer._tokenize: encode "<unk>" + text and drop the pieces of "<unk>", so
        # that sentencepiece's dummy prefix lands on "<unk>", not on the text.
        pieces = self._sp.encode(self.unk_token + self._canonicalize(chunk), out_type=str)
        return pieces[self._unk_len :] if len(pieces) >= self._unk_len else pieces

    def encode(self, text: str) -> list[int]:
        """Token ids of one text, without eos, padding or truncation.

        Args:
            text: The text.

        Returns:
            The ids (what `SiglipTokenizer.convert_tokens_to_ids(tokenize(text))` returns).
        """
        if not isinstance(text, str):
            raise TypeError(f"expected str, got {type(text)}")
        prefixed = SPIECE_UNDERLINE + text.replace(SPIECE_UNDERLINE, " ")
        # The Trie split: special strings become their own chunks; empty chunks are dropped.
        chunks = [c for c in self._special_split.split(prefixed) if c]
        # PreTrainedTokenizer.tokenize: strip whitespace around lstrip/rstrip special tokens.
        # (canonicalize_text strips each chunk anyway, so this only mirrors transformers.)
        for i, chunk in enumerate(chunks):
            spec = self._specials.get(chunk)
            if spec is None:
                continue
            _, lstrip, rstrip = spec
            if rstrip and i + 1 < len(chunks) and chunks[i + 1]:
                chunks[i + 1] = chunks[i + 1].lstrip()
            if lstrip and i > 0 and chunks[i - 1]:
                chunks[i - 1] = chunks[i - 1].rstrip()
        pieces: list[str] = []
        for chunk in chunks:
            if not chunk:
                continue
            if chunk in self._specials:
                pieces.append(chunk)
            else:
                pieces.extend(self._sp_pieces(chunk))
        # SiglipTokenizer.tokenize: drop a lone leading "▁" before a special token (mirrored;
        # sentencepiece drops a trailing "▁" itself, so this rarely if ever applies).
        if len(pieces) > 1 and pieces[0] == SPIECE_UNDERLINE and pieces[1] in self._specials:
            pieces = pieces[1:]
        piece_to_id = self._sp.piece_to_id
        return [self._specials[p][0] if p in self._specials else piece_to_id(p) for p in pieces]

    def _finish(self, ids: list[int], ctx: int) -> list[int]:
        # prepare_for_model: one special token is reserved (num_special_tokens_to_add() == 1),
        # the ids are cut from the right, then eos is appended unless already last.
        if len(ids) + 1 > ctx:
            ids = ids[: max(ctx - 1, 0)]
        if not ids or ids[-1] != self.eos_token_id:
            ids = [*ids, self.eos_token_id]
        return ids

    def __call__(
        self, texts: str | Sequence[str], context_length: int | None = None
    ) -> torch.LongTensor:
        """Tokenize to a `(N, context_length)` LongTensor, as the SigLIP processor does.

        Args:
            texts: A string or a sequence of strings.
            context_length: Row length; default `self.context_length`.

        Returns:
            ids + eos, right-padded with `pad_token_id`, truncated to `context_length`.
        """
        ctx = _context(context_length, self.context_length)
        texts = _as_text_list(texts)
        result = np.full((len(texts), ctx), self.pad_token_id, dtype=np.int64)
        for i, text in enumerate(texts):
            row = self._finish(self.encode(text), ctx)
            result[i, : len(row)] = row
        return torch.from_numpy(result)  # type: ignore[return-value]

    def decode(self, ids: Sequence[int] | torch.Tensor | np.ndarray) -> str:
        """Text of a row of ids: cut at the first eos (padding follows), drop other specials.

        Args:
            ids: One row of ids.

        Returns:
            The text, as sentencepiece decodes it.
        """
        seq = [int(i) for i in (ids.tolist() if hasattr(ids, "tolist") else ids)]
        if self.eos_token_id in seq:
            seq = seq[: seq.index(self.eos_token_id)]
        special_ids = {v[0] for v in self._specials.values()}
        return self._sp.decode([i for i in seq if i not in special_ids])

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_sp"] = self._sp.serialized_model_proto()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        proto = state.pop("_sp")
        self.__dict__.update(state)
        self._sp = spm.SentencePieceProcessor()
        self._sp.LoadFromSerializedProto(proto)

    def __repr__(self) -> str:
        return (
            f"SigLIPTokenizer(model_file={self.model_file!r}, vocab_size={self.vocab_size}, "
            f"context_length={self.context_length})"
        )


# --------------------------------------------------------------------------------------------
# Any tokenizer.json
# --------------------------------------------------------------------------------------------


class HFTokenizer:
    """A `tokenizer.json` fast tokenizer (SigLIP 2 / Gemma and others), padded to a fixed length.

    Encodes with the file's own normalizer, pre-tokenizer and post-processor (so its special
    tokens, e.g. Gemma's `<bos>`/`<eos>` when configured, are added), truncates to
    `context_length` with `tokenizers`' truncation (post-processor tokens are kept) and
    right-pads with the pad id. No text cleaning or lower-casing is applied: do it yourself if
    the model was trained on cleaned text (SigLIP 2 expects lower-cased text).

    The pad id is the `pad_token` of `tokenizer_config.json`, else the padding section of
    `tokenizer.json`, else the id of "<pad>", else 0.

    Attributes:
        context_length: Default row length of `__call__`.
        vocab_size: Number of ids, added tokens included.
        pad_token_id: Padding id.
        eot_token_id: `eos_token` of tokenizer_config.json if any, else None.
        sot_token_id: `bos_token` of tokenizer_config.json if any, else None.
    """

    def __init__(
        self,
        tokenizer_file: str | os.PathLike[str],
        context_length: int = DEFAULT_SIGLIP_CONTEXT_LENGTH,
        *,
        pad_token_id: int | None = None,
        eot_token_id: int | None = None,
        sot_token_id: int | None = None,
    ) -> None:
        """Load a `tokenizer.json`.

        Args:
            tokenizer_file: Path of the file.
            context_length: Default row length.
            pad_token_id: Padding id; default as described in the class docstring.
            eot_token_id: End-of-sequence id, informational.
            sot_token_id: Start-of-sequence id, informational.

        Raises:
            ValueError: The file cannot be loaded.
        """
        self.tokenizer_file = str(tokenizer_file)
        try:
            tok = Tokenizer.from_file(self.tokenizer_file)
        except Exception as e:  # tokenizers raises a bare Exception on parse errors
            raise ValueError(f"{tokenizer_file}: cannot load tokenizer.json ({e})") from e
        if pad_token_id is None:
            padding = tok.padding
            pad_token_id = padding["pad_id"] if padding else tok.token_to_id("<pad>")
        self.pad_token_id = int(pad_token_id or 0)
        self.eot_token_id, self.sot_token_id = eot_token_id, sot_token_id
        self.context_length = _context(context_length, DEFAULT_SIGLIP_CONTEXT_LENGTH)
        self.vocab_size = tok.get_vocab_size(with_added_tokens=True)
        tok.no_padding()
        tok.no_truncation()
        self._tokenizer = tok
        # One truncating copy per context length, so `encode` (untruncated) and calls with
        # different lengths never reconfigure a shared tokenizer.
        self._truncating: dict[int, Tokenizer] = {}

    @classmethod
    def from_pretrained(
        cls, directory: str | os.PathLike[str], context_length: int | None = None
    ) -> HFTokenizer:
        """Load `tokenizer.json` (+ `tokenizer_config.json` special tokens) from a directory.

        Args:
            directory: The checkpoint directory.
            context_length: Row length; default: `config.json` `text_config.
                max_position_embeddings`, else `tokenizer_config.json` `model_max_length`,
                else 64.

        Returns:
            The tokenizer.

        Raises:
            ValueError: No `tokenizer.json`, or unreadable files.
        """
        d = Path(directory)
        if not (d / "tokenizer.json").is_file():
            raise ValueError(f"{d}: no tokenizer.json in this directory")
        cfg = _read_json(d / "tokenizer_config.json")
        tok = Tokenizer.from_file(str(d / "tokenizer.json"))

        def token_id(key: str) -> int | None:
            content = _token_content(cfg.get(key))
            return None if content is None else tok.token_to_id(content)

        ctx = context_length or _context_from_dir(d, DEFAULT_SIGLIP_CONTEXT_LENGTH)
        return cls(
            d / "tokenizer.json",
            context_length=ctx,
            pad_token_id=token_id("pad_token"),
            eot_token_id=token_id("eos_token"),
            sot_token_id=token_id("bos_token"),
        )

    def encode(self, text: str) -> list[int]:
        """Token ids of one text without the post-processor's special tokens, untruncated."""
        return self._tokenizer.encode(text, add_special_tokens=False).ids

    def __call__(
        self, texts: str | Sequence[str], context_length: int | None = None
    ) -> torch.LongTensor:
        """Tokenize to a `(N, context_length)` LongTensor (special tokens added, right-padded).

        Args:
            texts: A string or a sequence of strings.
            context_length: Row length; default `self.context_length`.

        Returns:
            The ids.
        """
        ctx = _context(context_length, self.context_length)
        texts = _as_text_list(texts)
        tok = self._truncating.get(ctx)
        if tok is None:
            tok = Tokenizer.from_str(self._tokenizer.to_str())
            tok.enable_truncation(max_length=ctx)
            self._truncating[ctx] = tok
        result = np.full((len(texts), ctx), self.pad_token_id, dtype=np.int64)
        for i, enc in enumerate(tok.encode_batch(texts, add_special_tokens=True)):
            ids = enc.ids
            result[i, : len(ids)] = ids
        return torch.from_numpy(result)  # type: ignore[return-value]

    def decode(self, ids: Sequence[int] | torch.Tensor | np.ndarray) -> str:
        """Text of a row of ids, special tokens (and so padding, if special) skipped."""
        seq = [int(i) for i in (ids.tolist() if hasattr(ids, "tolist") else ids)]
        return self._tokenizer.decode(seq, skip_special_tokens=True)

    def __repr__(self) -> str:
        return (
            f"HFTokenizer(tokenizer_file={self.tokenizer_file!r}, vocab_size={self.vocab_size}, "
            f"context_length={self.context_length})"
        )


# --------------------------------------------------------------------------------------------
# Factory
# --------------------------------------------------------------------------------------------


def get_tokenizer(
    name_or_path: str | os.PathLike[str], context_length: int | None = None
) -> CLIPTokenizer | SigLIPTokenizer | HFTokenizer:
    """The tokenizer for a name or a checkpoint directory.

    * "clip", any name starting with "clip", or a vlkit preset of a CLIP model (e.g. "tiny"):
      the shipped CLIP vocabulary (context length: the argument, else the preset's, else 77).
    * A directory with `vocab.json` + `merges.txt`: `CLIPTokenizer` with that vocabulary.
    * A directory with `spiece.model`: `SigLIPTokenizer`.
    * A directory with only `tokenizer.json`: `HFTokenizer`.

    For directories the context length defaults to `config.json` `text_config.
    max_position_embeddings`, else a sane `tokenizer_config.json` `model_max_length`, else 77
    (CLIP) or 64 (SigLIP / tokenizer.json).

    Args:
        name_or_path: A name or a directory.
        context_length: Row length; overrides every default.

    Returns:
        The tokenizer.

    Raises:
        ValueError: SigLIP names (the vocabulary is not shipped), directories without tokenizer
            files, unknown names.
    """
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if (path / "vocab.json").is_file() or (path / "merges.txt").is_file():
            return CLIPTokenizer.from_pretrained(path, context_length)
        if (path / "spiece.model").is_file():
            return SigLIPTokenizer.from_pretrained(path, context_length)
        if (path / "tokenizer.json").is_file():
            return HFTokenizer.from_pretrained(path, context_length)
        raise ValueError(
            f"{path}: no tokenizer files found; looked for vocab.json + merges.txt (CLIP), "
            "spiece.model (SigLIP) and tokenizer.json"
        )
    name = str(name_or_path)
    lowered = name.lower()
    if lowered.startswith("clip"):
        return CLIPTokenizer(context_length=context_length or DEFAULT_CLIP_CONTEXT_LENGTH)
    preset = _preset(name)
    if (
        preset is not None
        and preset.model_type == "clip"
        and preset.text.vocab_size == CLIP_VOCAB_SIZE
    ):
        return CLIPTokenizer(context_length=context_length or preset.text.context_length)
    if lowered.startswith("siglip") or (preset is not None and preset.model_type == "siglip"):
        raise ValueError(
            f"{name!r}: the SigLIP sentencepiece vocabulary is not shipped with vlkit; pass a "
            "SigLIP checkpoint directory that contains spiece.model (or tokenizer.json)"
        )
    raise ValueError(
        f"cannot find a tokenizer for {name!r}: it is not a directory and not a known name; "
        "expected 'clip' (or a name starting with 'clip', or a CLIP preset), or a checkpoint "
        "directory containing vocab.json + merges.txt, spiece.model or tokenizer.json"
    )


def _preset(name: str) -> Any:
    """The vlkit preset config called `name`, or None (imported lazily: models import data)."""
    try:
        from vlkit.models.presets import PRESETS
    except ImportError:  # pragma: no cover - presets are part of the package
        return None
    return PRESETS.get(name)
