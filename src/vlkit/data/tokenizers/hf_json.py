"""Any Hugging Face `tokenizer.json` fast tokenizer (SigLIP 2, Gemma, ...), as fixed-length rows."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from tokenizers import Tokenizer

from vlkit.data.tokenizers.base import (
    PretrainedTokenizer,
    check_context_length,
    ids_as_list,
    pad_rows,
    read_json,
    token_content,
)
from vlkit.data.tokenizers.siglip import DEFAULT_SIGLIP_CONTEXT_LENGTH

__all__ = ["HFTokenizer"]


class HFTokenizer(PretrainedTokenizer):
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

    required_files: ClassVar[tuple[str, ...]] = ("tokenizer.json",)
    missing_files_message: ClassVar[str] = "{directory}: no tokenizer.json in this directory"
    default_context_length: ClassVar[int] = DEFAULT_SIGLIP_CONTEXT_LENGTH

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
        self.context_length = check_context_length(context_length, DEFAULT_SIGLIP_CONTEXT_LENGTH)
        self.vocab_size = tok.get_vocab_size(with_added_tokens=True)
        tok.no_padding()
        tok.no_truncation()
        self._tokenizer = tok
        # One truncating copy per context length, so `encode` (untruncated) and calls with
        # different lengths never reconfigure a shared tokenizer.
        self._truncating: dict[int, Tokenizer] = {}

    @classmethod
    def _from_directory(cls, directory: Path, context_length: int) -> HFTokenizer:
        """`from_pretrained`: `tokenizer.json` + the special tokens of `tokenizer_config.json`."""
        cfg = read_json(directory / "tokenizer_config.json")
        tok = Tokenizer.from_file(str(directory / "tokenizer.json"))

        def token_id(key: str) -> int | None:
            content = token_content(cfg.get(key))
            return None if content is None else tok.token_to_id(content)

        return cls(
            directory / "tokenizer.json",
            context_length=context_length,
            pad_token_id=token_id("pad_token"),
            eot_token_id=token_id("eos_token"),
            sot_token_id=token_id("bos_token"),
        )

    def encode(self, text: str) -> list[int]:
        """Token ids of one text without the post-processor's special tokens, untruncated."""
        return self._tokenizer.encode(text, add_special_tokens=False).ids

    def _rows(self, texts: list[str], ctx: int) -> np.ndarray:
        """The post-processor's special tokens added, truncated to `ctx`, right-padded."""
        tok = self._truncating.get(ctx)
        if tok is None:
            tok = Tokenizer.from_str(self._tokenizer.to_str())
            tok.enable_truncation(max_length=ctx)
            self._truncating[ctx] = tok
        encodings = tok.encode_batch(texts, add_special_tokens=True)
        return pad_rows([enc.ids for enc in encodings], ctx, self.pad_token_id)

    def decode(self, ids: Sequence[int] | torch.Tensor | np.ndarray) -> str:
        """Text of a row of ids, special tokens (and so padding, if special) skipped."""
        seq = ids_as_list(ids)
        return self._tokenizer.decode(seq, skip_special_tokens=True)

    def __repr__(self) -> str:
        return (
            f"HFTokenizer(tokenizer_file={self.tokenizer_file!r}, vocab_size={self.vocab_size}, "
            f"context_length={self.context_length})"
        )
