"""`TextStreamer`: generated text as it grows, for `generate(..., streamer=...)` (batch 1)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TextIO

import torch

__all__ = ["TextStreamer"]


class TextStreamer:
    """Prints generated text as it grows (batch 1): decodes all tokens so far, prints the new part.

    Decoding the whole prefix each time (rather than token by token) keeps word boundaries and
    multi-byte characters right; text that ends in an incomplete character (U+FFFD) is held back
    until the next token completes it, as transformers' `TextStreamer` does.

    Args:
        decode: Token ids -> text (e.g. a pipeline's `decode`).
        out: Where the text goes (`write` + `flush`); default `sys.stdout`, looked up at
            construction so that tests can swap it.
    """

    def __init__(self, decode: Callable[[list[int]], str], out: TextIO | None = None) -> None:
        self.decode = decode
        self.out = out if out is not None else sys.stdout
        self.tokens: list[int] = []
        self.printed = ""

    def _emit(self, text: str) -> None:
        if text.startswith(self.printed) and len(text) > len(self.printed):
            self.out.write(text[len(self.printed) :])
            self.out.flush()
            self.printed = text

    def __call__(self, new_tokens: torch.Tensor) -> None:
        self.tokens.append(int(new_tokens.reshape(-1)[0]))
        text = self.decode(self.tokens)
        if not text.endswith("\ufffd"):
            self._emit(text)

    def finish(self) -> str:
        """Prints what was held back and a newline; returns the whole decoded text."""
        text = self.decode(self.tokens)
        self._emit(text)
        self.out.write("\n")
        self.out.flush()
        return text
