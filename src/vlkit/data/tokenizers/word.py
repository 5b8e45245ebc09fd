"""A word-level tokenizer for small closed-vocabulary corpora (easy-VQA, the synthetic scenes).

The small generative VLMs of the fusion comparison talk about a few dozen words. With CLIP's
49,408-token BPE vocabulary the LM head and its softmax would dominate the cost of a 128-wide
decoder; a word vocabulary built from the training text keeps the head at ~100 rows. Built on the
`tokenizers` library (WordLevel model, lower-casing, whitespace/punctuation pre-tokenizer) and
saved as a standard `tokenizer.json`, so transformers' `PreTrainedTokenizerFast` reads it too.

Special tokens have fixed ids: `<pad>` 0, `<unk>` 1, `<bos>` 2, `<eos>` 3, `<image>` 4.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import WordLevel
from tokenizers.trainers import WordLevelTrainer

__all__ = ["SPECIAL_TOKENS", "WordTokenizer"]

SPECIAL_TOKENS: tuple[str, ...] = ("<pad>", "<unk>", "<bos>", "<eos>", "<image>")


class WordTokenizer:
    """Word-level ids with the CLIP-style attributes the VQA / caption datasets use.

    Args:
        tokenizer: A `tokenizers.Tokenizer` whose vocabulary starts with `SPECIAL_TOKENS`.

    Raises:
        ValueError: A special token is missing or has an unexpected id.
    """

    def __init__(self, tokenizer: Tokenizer) -> None:
        for expected, token in enumerate(SPECIAL_TOKENS):
            found = tokenizer.token_to_id(token)
            if found != expected:
                raise ValueError(f"special token {token} must have id {expected}, found {found}")
        self.backend = tokenizer
        self.pad_token_id, self.unk_token_id, self.sot_token_id, self.eot_token_id = 0, 1, 2, 3
        self.image_token_id = 4

    @classmethod
    def train(cls, texts: Iterable[str], min_frequency: int = 1) -> WordTokenizer:
        """Builds the vocabulary of `texts` (special tokens first, then by frequency)."""
        backend = Tokenizer(WordLevel(unk_token="<unk>"))
        backend.normalizer = normalizers.Lowercase()
        backend.pre_tokenizer = pre_tokenizers.Whitespace()  # "shape?" -> "shape", "?"
        # WordPiece's decoder with cleanup re-attaches punctuation: "circle , a" -> "circle, a".
        backend.decoder = decoders.WordPiece(prefix="##", cleanup=True)
        trainer = WordLevelTrainer(
            special_tokens=list(SPECIAL_TOKENS), min_frequency=min_frequency, show_progress=False
        )
        backend.train_from_iterator(texts, trainer=trainer)
        return cls(backend)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> WordTokenizer:
        """Loads a `tokenizer.json` (or a directory holding one).

        Raises:
            FileNotFoundError: No such file.
            ValueError: The file is not a word tokenizer with vlkit's special tokens.
        """
        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no tokenizer.json")
        try:
            backend = Tokenizer.from_file(str(path))
        except Exception as error:  # tokenizers raises a bare Exception on malformed JSON
            raise ValueError(f"{path}: not a tokenizers file ({error})") from error
        try:
            return cls(backend)
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from error

    def save(self, path: str | os.PathLike[str]) -> None:
        """Writes `tokenizer.json` to `path` (a file path, or a directory to write it in)."""
        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        self.backend.save(str(path))

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        """Ids of `text`'s words, without bos/eos (unknown words -> `<unk>`)."""
        return self.backend.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        """Text of `ids`, stopping at the first `<eos>` and dropping special tokens."""
        ids = [int(i) for i in (ids.tolist() if isinstance(ids, torch.Tensor) else ids)]
        if self.eot_token_id in ids:
            ids = ids[: ids.index(self.eot_token_id)]
        return self.backend.decode(ids, skip_special_tokens=True)

    def __repr__(self) -> str:
        return f"WordTokenizer(vocab_size={self.vocab_size})"
