"""CLIP's byte-level BPE tokenizer, id-for-id with open_clip's default tokenizer.

`CLIPTokenizer` gives exactly the ids of `open_clip.tokenizer.tokenize` /
`open_clip.get_tokenizer("ViT-B-32")` (open_clip/tokenizer.py, `SimpleTokenizer` with the
default `clean="lower"`), with the BPE in Rust (Hugging Face `tokenizers`), a per-word id cache
and ftfy skipped where it provably changes nothing; optionally the whole pipeline runs in
`tokenizers` (`Tokenizer.encode_batch`).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from tokenizers import Regex, Tokenizer, models, pre_tokenizers

from vlkit.data.tokenizers.base import (
    PretrainedTokenizer,
    as_text_list,
    check_context_length,
    ids_as_list,
)
from vlkit.data.tokenizers.cleaning import clean_text
from vlkit.data.tokenizers.clip_vocab import (
    BPE_ASSET,
    HF_CLIP_SPECIALS,
    OPEN_CLIP_PATTERN,
    OPEN_CLIP_SPECIAL_SEARCH,
    OPEN_CLIP_SPECIALS,
    bytes_to_unicode,
    clip_split_pattern,
    vocab_from_bpe_gz,
    vocab_from_hf_files,
)

__all__ = ["DEFAULT_CLIP_CONTEXT_LENGTH", "CLIPTokenizer"]

DEFAULT_CLIP_CONTEXT_LENGTH = 77  # OpenAI CLIP (open_clip/tokenizer.py DEFAULT_CONTEXT_LENGTH)


class CLIPTokenizer(PretrainedTokenizer):
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
      `clip_split_pattern`), `ByteLevel(add_prefix_space=False, use_regex=False)` and the
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
    required_files: ClassVar[tuple[str, ...]] = ("vocab.json", "merges.txt")
    missing_files_message: ClassVar[str] = (
        "{directory}: not a CLIP tokenizer directory, missing {missing}"
    )
    default_context_length: ClassVar[int] = DEFAULT_CLIP_CONTEXT_LENGTH
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
            vocab, merges = vocab_from_hf_files(vocab_file, merges_file)  # type: ignore[arg-type]
            source = str(vocab_file)
        else:
            vocab, merges = vocab_from_bpe_gz(None if bpe_path is None else str(bpe_path))
            source = str(bpe_path) if bpe_path is not None else f"vlkit/assets/{BPE_ASSET}"
        self.context_length = check_context_length(context_length, DEFAULT_CLIP_CONTEXT_LENGTH)
        self.batch_mode = batch_mode
        self.source = source
        self.vocab_size = len(vocab)
        self.sot_token_id = self._find_special(vocab, 0, source)
        self.eot_token_id = self._find_special(vocab, 1, source)
        self._special_ids = {
            OPEN_CLIP_SPECIALS[0]: self.sot_token_id,
            OPEN_CLIP_SPECIALS[1]: self.eot_token_id,
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
        for name in (OPEN_CLIP_SPECIALS[which], HF_CLIP_SPECIALS[which]):
            if name in vocab:
                return int(vocab[name])
        raise ValueError(
            f"{source}: vocabulary has neither {OPEN_CLIP_SPECIALS[which]!r} nor "
            f"{HF_CLIP_SPECIALS[which]!r}"
        )

    @classmethod
    def _from_directory(
        cls, directory: Path, context_length: int, *, batch_mode: str = "words"
    ) -> CLIPTokenizer:
        """`from_pretrained`: a Hugging Face CLIP checkpoint's `vocab.json` + `merges.txt`.

        Args:
            directory: The checkpoint directory.
            context_length: Row length.
            batch_mode: See the class docstring.
        """
        return cls(
            vocab_file=directory / "vocab.json",
            merges_file=directory / "merges.txt",
            context_length=context_length,
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
                Regex(clip_split_pattern()), behavior="removed", invert=True
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
        for piece in OPEN_CLIP_PATTERN.findall(cleaned):
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
            if OPEN_CLIP_SPECIAL_SEARCH.search(text) is None:
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
        cleaned = [clean_text(t) for t in as_text_list(texts)]
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

    def _rows(self, texts: list[str], ctx: int) -> np.ndarray:
        """As `open_clip.tokenize`: `sot + ids + eot`, zero padded; rows longer than `ctx` are
        cut and end with `eot`."""
        return self._to_rows(self.encode_batch(texts), ctx)

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
        seq = ids_as_list(ids)
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
