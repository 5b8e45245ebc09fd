"""Tokenising expanded SmolVLM prompts with transformers' text options: `add_special_tokens`,
`padding` (True / "longest" / "max_length" / False), `truncation`, `max_length`,
`pad_to_multiple_of` and `padding_side`.

transformers' fast tokenizers (`tokenization_utils_tokenizers.py`, `set_truncation_and_padding`)
turn these options into the `tokenizers` library's own truncation and padding settings for the
length of one `encode_batch` call; so does this module, so the ids are the library's, not a
re-implementation. The settings live on the shared `Tokenizer`, hence the lock.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import torch
from tokenizers import Tokenizer

__all__ = ["TextOptions", "encode_prompts"]

_LOCK = threading.Lock()
_PADDING = {True: "longest", "longest": "longest", "max_length": "max_length"}
_NO_PADDING = (False, None, "do_not_pad")
_TRUNCATION = (True, "longest_first", "only_first", "only_second")
_NO_TRUNCATION = (False, None, "do_not_truncate")


@dataclass
class TextOptions:
    """The tokenizer's call options, under transformers' names and with its meanings.

    Attributes:
        add_special_tokens: Run the tokenizer's post-processor (e.g. a BOS template).
        padding: True / "longest" (vlkit's default; transformers' is False): to the batch's
            longest row; "max_length": to `max_length` (rows longer than it stay longer unless
            `truncation`); False / "do_not_pad": none. Rows that still differ in length are
            an error, as in transformers with return_tensors="pt" (it returns ragged lists
            only without tensors, which vlkit does not offer).
        truncation: True / "longest_first" / "only_first": cut rows to `max_length`.
        max_length: Row length for truncation and "max_length" padding; defaults to the
            tokenizer's `model_max_length` (none when it has no limit, as transformers).
        pad_to_multiple_of: Round the padded length up to a multiple of this.
        padding_side: "left" or "right"; defaults to the tokenizer's.
        return_attention_mask: Return `attention_mask` (default True).
    """

    add_special_tokens: bool = True
    padding: bool | str | None = True
    truncation: bool | str | None = None
    max_length: int | None = None
    pad_to_multiple_of: int | None = None
    padding_side: str | None = None
    return_attention_mask: bool | None = None


def encode_prompts(
    tokenizer: Tokenizer,
    prompts: list[str],
    options: TextOptions,
    *,
    pad_token: str | None,
    default_padding_side: str = "right",
    truncation_side: str = "right",
    model_max_length: int | None = None,
) -> dict[str, torch.Tensor]:
    """`input_ids` and `attention_mask` `(B, L)` int64 for already expanded prompts.

    Raises:
        ValueError: An unknown option value, padding to max_length without a pad token, or rows
            of different lengths (unpadded, longer than `max_length` without truncation, or no
            pad token); transformers fails there too, when making tensors. The message names
            the cause.
    """
    if options.padding not in _NO_PADDING and options.padding not in _PADDING:
        raise ValueError(f"padding={options.padding!r}: True, 'longest', 'max_length' or False")
    if options.truncation not in _NO_TRUNCATION and options.truncation not in _TRUNCATION:
        raise ValueError(f"truncation={options.truncation!r}: True, 'longest_first' or False")
    padding_side = options.padding_side or default_padding_side
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side={padding_side!r}: 'left' or 'right'")
    padding = _PADDING.get(options.padding)  # type: ignore[arg-type]
    max_length = options.max_length if options.max_length is not None else model_max_length
    truncate = options.truncation not in _NO_TRUNCATION and max_length is not None
    # transformers: "max_length" padding without any length falls back to no padding.
    if padding == "max_length" and max_length is None:
        padding = None
    pad_options: dict[str, Any] = {}
    pad_id = None if pad_token is None else tokenizer.token_to_id(pad_token)
    if pad_id is None and padding == "max_length":
        raise ValueError("padding needs a pad_token (tokenizer_config.json)")
    if padding is not None and pad_id is not None:
        # Without a pad token, "longest" (vlkit's default) pads nothing: equal rows pass and
        # rows of different lengths fail below, naming the padding option.
        pad_options = dict(
            direction=padding_side, pad_id=pad_id, pad_token=pad_token,
            length=max_length if padding == "max_length" else None,
            pad_to_multiple_of=options.pad_to_multiple_of,
        )  # fmt: skip
    with _LOCK:
        previous_truncation, previous_padding = tokenizer.truncation, tokenizer.padding
        try:
            tokenizer.no_truncation()
            tokenizer.no_padding()
            if truncate:
                tokenizer.enable_truncation(
                    max_length, stride=0, strategy="longest_first", direction=truncation_side
                )
            if pad_options:
                tokenizer.enable_padding(**pad_options)
            encodings = tokenizer.encode_batch(
                prompts, add_special_tokens=options.add_special_tokens
            )
        finally:
            _restore(tokenizer, previous_truncation, previous_padding)
    ids = [encoding.ids for encoding in encodings]
    masks = [encoding.attention_mask for encoding in encodings]
    lengths = sorted({len(row) for row in ids})
    if len(lengths) > 1:
        # transformers returns such ragged rows as lists and raises "Unable to create tensor"
        # with return_tensors="pt"; vlkit returns tensors only, so it raises too, saying why.
        raise ValueError(_ragged_message(options, padding, pad_id, max_length, truncate, lengths))
    out = {"input_ids": torch.tensor(ids, dtype=torch.int64)}
    if options.return_attention_mask is not False:
        out["attention_mask"] = torch.tensor(masks, dtype=torch.int64)
    return out


def _ragged_message(
    options: TextOptions,
    padding: str | None,
    pad_id: int | None,
    max_length: int | None,
    truncate: bool,
    lengths: list[int],
) -> str:
    """Why the prompts' rows came out of different lengths (`lengths`, sorted), and the fix."""
    found = f"prompts tokenise to different lengths ({lengths[0]} to {lengths[-1]} tokens)"
    if padding == "max_length" and max_length is not None and not truncate:
        return (
            f"a prompt tokenises to {lengths[-1]} tokens, longer than max_length={max_length}, "
            "and padding='max_length' does not cut rows: pass truncation=True or a larger "
            "max_length"
        )
    if padding is not None and pad_id is None:
        return (
            f"{found} and the tokenizer has no pad_token to pad them with "
            "(tokenizer_config.json): set one, or pass prompts of equal length"
        )
    if options.padding == "max_length":
        return (
            f"{found}: padding='max_length' without max_length (and no model_max_length) pads "
            "nothing, as in transformers: pass max_length or padding=True"
        )
    return (
        f"{found} and padding={options.padding!r} leaves them unpadded, which cannot make "
        "tensors: pass padding=True (vlkit's default), 'longest' or 'max_length'"
    )


def _restore(tokenizer: Tokenizer, truncation: dict | None, padding: dict | None) -> None:
    tokenizer.no_truncation()
    tokenizer.no_padding()
    if truncation:
        tokenizer.enable_truncation(**truncation)
    if padding:
        padding = dict(padding)
        padding.pop("pad_type_id", None)
        tokenizer.enable_padding(**padding)
