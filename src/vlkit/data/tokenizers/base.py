"""What every vlkit tokenizer shares: the call convention and loading from a checkpoint directory.

Every tokenizer is called as `tok(texts, context_length=None) -> LongTensor (N, context_length)`
(`as_text_list`, `check_context_length`), decodes one row of ids (`ids_as_list`), and loads from
a Hugging Face style checkpoint directory through the one `PretrainedTokenizer.from_pretrained`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch

__all__ = [
    "PretrainedTokenizer",
    "as_text_list",
    "check_context_length",
    "context_from_directory",
    "ids_as_list",
    "pad_rows",
    "read_json",
    "token_content",
]

# Hugging Face writes `model_max_length = int(1e30)` when a tokenizer has no limit.
_MAX_SANE_CONTEXT = 100_000

_T = TypeVar("_T", bound="PretrainedTokenizer")


def as_text_list(texts: str | Sequence[str]) -> list[str]:
    """`texts` as a list of strings (one string is a batch of one).

    Raises:
        TypeError: An element is not a string.
    """
    if isinstance(texts, str):
        return [texts]
    texts = list(texts)
    for t in texts:
        if not isinstance(t, str):
            raise TypeError(f"expected str or a sequence of str, got an element of type {type(t)}")
    return texts


def check_context_length(context_length: int | None, default: int) -> int:
    """The row length to use: `context_length`, or `default` when it is 0 or None.

    open_clip: `context_length = context_length or self.context_length`.

    Raises:
        ValueError: The result is not a positive integer.
    """
    ctx = context_length or default
    if not isinstance(ctx, int) or ctx < 1:
        raise ValueError(f"context_length must be a positive integer, got {context_length!r}")
    return ctx


def ids_as_list(ids: Sequence[int] | torch.Tensor | np.ndarray) -> list[int]:
    """One row of ids (list, 1-D tensor or array) as a list of Python ints."""
    return [int(i) for i in (ids.tolist() if hasattr(ids, "tolist") else ids)]


def pad_rows(rows: Sequence[Sequence[int]], ctx: int, pad_token_id: int) -> np.ndarray:
    """`(len(rows), ctx)` int64 matrix: each row's ids from the left, then `pad_token_id`.

    Rows must already fit in `ctx`.
    """
    result = np.full((len(rows), ctx), pad_token_id, dtype=np.int64)
    for i, ids in enumerate(rows):
        result[i, : len(ids)] = ids
    return result


def token_content(value: Any) -> str | None:
    """A special token as tokenizer_config.json stores it: a string or an AddedToken dict."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object file; {} when the file is missing or holds no object.

    Raises:
        ValueError: The file exists but is not valid JSON.
    """
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


def context_from_directory(directory: Path, default: int) -> int:
    """The row length a checkpoint directory asks for.

    `config.json` text_config.max_position_embeddings, else tokenizer_config.json
    `model_max_length` (when it is a real limit, not HF's 1e30 "unset"), else `default`.
    """
    text_config = read_json(directory / "config.json").get("text_config")
    if isinstance(text_config, dict):
        ctx = _sane_context(text_config.get("max_position_embeddings"))
        if ctx is not None:
            return ctx
    ctx = _sane_context(read_json(directory / "tokenizer_config.json").get("model_max_length"))
    return ctx if ctx is not None else default


class PretrainedTokenizer:
    """Base of the tokenizers stored as files in a checkpoint directory.

    A subclass names the files it needs (`required_files`), the error when they are missing and
    its default row length, and builds itself from the directory in `_from_directory`.
    """

    #: Files that must be in the directory.
    required_files: ClassVar[tuple[str, ...]] = ()
    #: Error message for missing files, formatted with `directory` and `missing`.
    missing_files_message: ClassVar[str] = "{directory}: missing {missing}"
    #: Row length when neither the caller nor the directory gives one.
    default_context_length: ClassVar[int]
    #: Row length of a call without `context_length`.
    context_length: int

    def __call__(
        self, texts: str | Sequence[str], context_length: int | None = None
    ) -> torch.LongTensor:
        """Tokenize to a `(N, context_length)` LongTensor, as the checkpoint's own tokenizer does.

        Args:
            texts: A string or a sequence of strings.
            context_length: Row length; default `self.context_length`.

        Returns:
            One row per text, laid out by the subclass's `_rows` (special tokens, padding,
            truncation as its reference implementation).
        """
        ctx = check_context_length(context_length, self.context_length)
        return torch.from_numpy(self._rows(as_text_list(texts), ctx))  # type: ignore[return-value]

    def _rows(self, texts: list[str], ctx: int) -> np.ndarray:
        """The `(len(texts), ctx)` int64 id matrix of `texts`."""
        raise NotImplementedError

    @classmethod
    def from_pretrained(
        cls: type[_T],
        directory: str | os.PathLike[str],
        context_length: int | None = None,
        **options: Any,
    ) -> _T:
        """Load the tokenizer files of a checkpoint directory.

        Args:
            directory: The checkpoint directory.
            context_length: Row length; default: `config.json` `text_config.
                max_position_embeddings`, else `tokenizer_config.json` `model_max_length`,
                else the class's `default_context_length`.
            **options: Options of the subclass (e.g. `CLIPTokenizer`'s `batch_mode`).

        Returns:
            The tokenizer.

        Raises:
            ValueError: Missing, unreadable or malformed files.
        """
        d = Path(directory)
        missing = [f for f in cls.required_files if not (d / f).is_file()]
        if missing:
            raise ValueError(
                cls.missing_files_message.format(directory=d, missing=", ".join(missing))
            )
        ctx = context_length or context_from_directory(d, cls.default_context_length)
        return cls._from_directory(d, ctx, **options)

    @classmethod
    def _from_directory(cls: type[_T], directory: Path, context_length: int, **options: Any) -> _T:
        """Build the tokenizer from a directory that holds `required_files`."""
        raise NotImplementedError
