"""Any Hugging Face `tokenizer.json` fast tokenizer (SigLIP 2, Gemma, causal LMs such as SmolLM2,
Llama 3 and Qwen), as fixed-length rows for text towers, or as transformers' `AutoTokenizer`
encodes, decodes and applies its chat template for language models.

What transformers (5.25, `tokenization_utils_tokenizers.py`) does on top of `tokenizer.json`, and
so `from_pretrained` here: the special tokens of `tokenizer_config.json` (bos/eos/unk/pad and
the extra special tokens) and its `added_tokens_decoder` entries that the file lacks are added
as special tokens (so they match whole in text and `skip_special_tokens` drops them); the
post-processor is the file's (transformers ignores `add_bos_token` / `add_eos_token` when
`tokenizer.json` exists); a sentencepiece-style `LlamaTokenizer` (TinyLlama, Llama 2) gets the
Metaspace pre-tokenizer and decoder transformers 5 builds for that class; the chat template is
read by `vlkit.data.chat_template`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from tokenizers import AddedToken, Tokenizer, decoders, pre_tokenizers

from vlkit.data.chat_template import read_chat_template, render_chat_template, select_chat_template
from vlkit.data.tokenizers.base import (
    PretrainedTokenizer,
    as_text_list,
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
        special_tokens: The named special tokens of tokenizer_config.json as strings
            (`bos_token`, `eos_token`, `unk_token`, `pad_token`, ...); chat templates see them.
        chat_template: The checkpoint's chat template (a string, or {name: template}), or None.
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
        self.special_tokens: dict[str, str] = {}
        self.chat_template: str | dict[str, str] | None = None
        self.source = self.tokenizer_file
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
        """`from_pretrained`: `tokenizer.json` + the special tokens, added tokens and chat
        template of `tokenizer_config.json` (see the module docstring)."""
        cfg = read_json(directory / "tokenizer_config.json")
        tok = Tokenizer.from_file(str(directory / "tokenizer.json"))
        special = {
            key: token_content(cfg.get(key))
            for key in _NAMED_SPECIAL_TOKENS
            if token_content(cfg.get(key)) is not None
        }
        _sentencepiece_pipeline(tok, cfg)
        _add_config_tokens(tok, cfg, special)

        def token_id(key: str) -> int | None:
            content = special.get(key)
            return None if content is None else tok.token_to_id(content)

        tokenizer = cls(
            directory / "tokenizer.json",
            context_length=context_length,
            pad_token_id=token_id("pad_token"),
            eot_token_id=token_id("eos_token"),
            sot_token_id=token_id("bos_token"),
        )
        tokenizer._tokenizer = tok  # with the added tokens
        tokenizer.vocab_size = tok.get_vocab_size(with_added_tokens=True)
        tokenizer.special_tokens = {key: str(value) for key, value in special.items()}
        tokenizer.chat_template = read_chat_template(directory)
        tokenizer.source = str(directory)
        return tokenizer

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids of one text, untruncated; with `add_special_tokens` the post-processor's
        special tokens are added (transformers' `tok(text)["input_ids"]`, whose default is True)."""
        return self._tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    def batch_encode(
        self,
        texts: str | Sequence[str],
        add_special_tokens: bool = True,
        padding_side: str = "left",
    ) -> dict[str, torch.Tensor]:
        """`input_ids` and `attention_mask` (B, L) LongTensors of texts padded to the longest
        with the pad id (left padding by default, what batched generation needs); a text is
        encoded as `encode(text, add_special_tokens)`."""
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        rows = [self.encode(t, add_special_tokens) for t in as_text_list(texts)]
        width = max((len(r) for r in rows), default=0)
        ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            cols = slice(width - len(row), width) if padding_side == "left" else slice(0, len(row))
            ids[i, cols] = torch.tensor(row, dtype=torch.long)
            mask[i, cols] = 1
        return {"input_ids": ids, "attention_mask": mask}

    @property
    def bos_token_id(self) -> int | None:
        return self.sot_token_id

    @property
    def eos_token_id(self) -> int | None:
        return self.eot_token_id

    def apply_chat_template(
        self,
        conversation: Sequence[Any],
        tokenize: bool = True,
        add_generation_prompt: bool = False,
        chat_template: str | None = None,
        tools: Sequence[dict[str, Any]] | None = None,
        documents: Sequence[dict[str, Any]] | None = None,
        **kwargs: Any,
    ) -> str | list[int] | list[str] | list[list[int]]:
        """Render messages with the chat template, as transformers' `apply_chat_template`.

        Args:
            conversation: A list of `{"role", "content"}` messages, or a list of such lists (a
                batch; the result is then a list).
            tokenize: Return token ids (encoded without post-processor tokens: the template
                writes them) instead of the string.
            add_generation_prompt: Append the opener of the assistant's turn.
            chat_template: A template name among the checkpoint's, or Jinja source.
            tools, documents: Passed to templates that render them.
            **kwargs: Template variables (e.g. `enable_thinking=False` for Qwen3); they
                override the special tokens of the same name.

        Raises:
            ValueError: The tokenizer has no chat template and none was passed, or an empty
                conversation.
        """
        template = select_chat_template(
            self.chat_template, chat_template, tools, source=self.source
        )
        batched = bool(conversation) and isinstance(conversation[0], (list, tuple))
        conversations = list(conversation) if batched else [conversation]
        if not conversations or any(len(c) == 0 for c in conversations):
            raise ValueError("cannot apply a chat template to an empty conversation")
        # transformers drops message keys whose value is None (`_normalize_chat_messages`).
        conversations = [
            [{k: v for k, v in dict(m).items() if v is not None} for m in c] for c in conversations
        ]
        texts = render_chat_template(
            template,
            conversations,
            add_generation_prompt,
            {**self.special_tokens, **kwargs},
            tools=tools,
            documents=documents,
        )
        out: list[Any] = [self.encode(t) for t in texts] if tokenize else texts
        return out if batched else out[0]

    def _rows(self, texts: list[str], ctx: int) -> np.ndarray:
        """The post-processor's special tokens added, truncated to `ctx`, right-padded."""
        tok = self._truncating.get(ctx)
        if tok is None:
            tok = Tokenizer.from_str(self._tokenizer.to_str())
            tok.enable_truncation(max_length=ctx)
            self._truncating[ctx] = tok
        encodings = tok.encode_batch(texts, add_special_tokens=True)
        return pad_rows([enc.ids for enc in encodings], ctx, self.pad_token_id)

    def decode(
        self, ids: Sequence[int] | torch.Tensor | np.ndarray, skip_special_tokens: bool = True
    ) -> str:
        """Text of a row of ids, special tokens (and so padding, if special) skipped by default
        (transformers' `decode` keeps them unless `skip_special_tokens=True`)."""
        seq = ids_as_list(ids)
        return self._tokenizer.decode(seq, skip_special_tokens=skip_special_tokens)

    def __repr__(self) -> str:
        return (
            f"HFTokenizer(tokenizer_file={self.tokenizer_file!r}, vocab_size={self.vocab_size}, "
            f"context_length={self.context_length})"
        )


# `SpecialTokensMixin.SPECIAL_TOKENS_ATTRIBUTES` (transformers 5.25).
_NAMED_SPECIAL_TOKENS = (
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
)


def _add_config_tokens(tok: Tokenizer, cfg: dict[str, Any], special: dict[str, str]) -> None:
    """Add what transformers adds on loading: `added_tokens_decoder` entries and special tokens
    (named ones, `extra_special_tokens` / `additional_special_tokens`) missing from the file."""
    present = {str(t.content) for t in tok.get_added_tokens_decoder().values()}
    new: list[AddedToken] = []
    decoder = cfg.get("added_tokens_decoder") or {}
    for _, entry in sorted(decoder.items(), key=lambda item: int(item[0])):
        if isinstance(entry, dict) and entry.get("content") not in present:
            options = {
                k: bool(entry[k])
                for k in ("single_word", "lstrip", "rstrip", "normalized", "special")
                if k in entry
            }
            new.append(AddedToken(entry["content"], **options))
            present.add(entry["content"])
    extra = cfg.get("extra_special_tokens") or cfg.get("additional_special_tokens") or []
    extra = extra.values() if isinstance(extra, dict) else extra
    for value in [*special.values(), *extra]:
        content = token_content(value)
        if content is not None and content not in present:
            new.append(AddedToken(content, special=True))
            present.add(content)
    if new:
        tok.add_tokens(new)


def _sentencepiece_pipeline(tok: Tokenizer, cfg: dict[str, Any]) -> None:
    """What transformers 5's `LlamaTokenizer.__init__` builds around a non-byte-level
    `tokenizer.json` BPE (models/llama/tokenization_llama.py): no normalizer, a Metaspace
    pre-tokenizer (prepend "first" unless `legacy`, "never" without `add_prefix_space`), and a
    decoder that strips the prepended space. Byte-level files load as they are (transformers
    then uses `TokenizersBackend`, `tokenization_auto.py`)."""
    declared = str(cfg.get("tokenizer_class") or "").removesuffix("Fast")
    if declared != "LlamaTokenizer":
        return
    state = json.loads(tok.to_str())
    if state.get("model", {}).get("type") != "BPE" or "ByteLevel" in json.dumps(
        [state.get("pre_tokenizer"), state.get("decoder")]
    ):
        return
    add_prefix_space = cfg.get("add_prefix_space")
    add_prefix_space = True if add_prefix_space is None else bool(add_prefix_space)
    if add_prefix_space:
        scheme = "always" if cfg.get("legacy", False) else "first"
    else:
        scheme = "never"
    tok.normalizer = None
    tok.pre_tokenizer = pre_tokenizers.Metaspace(
        replacement="▁", prepend_scheme=scheme, split=False
    )
    steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if add_prefix_space:
        steps.append(decoders.Strip(content=" ", left=1))
    tok.decoder = decoders.Sequence(steps)
