"""SigLIP's sentencepiece tokenizer, id-for-id with transformers' `SiglipTokenizer`.

`SigLIPTokenizer` gives exactly the `input_ids` of transformers' `SiglipTokenizer`
(transformers/models/siglip/tokenization_siglip.py) called the way `SiglipProcessor` calls it:
`padding="max_length", max_length=64, truncation=True`.
"""

from __future__ import annotations

import os
import re
import string
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import sentencepiece as spm
import torch

from vlkit.data.tokenizers.base import (
    PretrainedTokenizer,
    check_context_length,
    ids_as_list,
    pad_rows,
    read_json,
    token_content,
)

__all__ = ["DEFAULT_SIGLIP_CONTEXT_LENGTH", "SPIECE_UNDERLINE", "SigLIPTokenizer"]

DEFAULT_SIGLIP_CONTEXT_LENGTH = 64  # SiglipTokenizer model_max_length / SiglipProcessor max_length
SPIECE_UNDERLINE = "▁"


class SigLIPTokenizer(PretrainedTokenizer):
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
    required_files: ClassVar[tuple[str, ...]] = ("spiece.model",)
    missing_files_message: ClassVar[str] = (
        "{directory}: no spiece.model (SigLIP sentencepiece model) in this directory"
    )
    default_context_length: ClassVar[int] = DEFAULT_SIGLIP_CONTEXT_LENGTH

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
        self.context_length = check_context_length(context_length, DEFAULT_SIGLIP_CONTEXT_LENGTH)
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
    def _from_directory(cls, directory: Path, context_length: int) -> SigLIPTokenizer:
        """`from_pretrained`: `spiece.model` + the special tokens of `tokenizer_config.json`.

        SigLIP 2 / Gemma directories ship `tokenizer.json` instead: load those with
        `get_tokenizer` (-> `HFTokenizer`).
        """
        cfg = read_json(directory / "tokenizer_config.json")
        kwargs: dict[str, Any] = {}
        for key in ("eos_token", "unk_token", "pad_token"):
            content = token_content(cfg.get(key))
            if content is not None:
                kwargs[key] = content
        extra = cfg.get("additional_special_tokens") or cfg.get("extra_special_tokens") or []
        if isinstance(extra, list):
            kwargs["additional_special_tokens"] = [
                c for c in map(token_content, extra) if c is not None
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
        return cls(
            directory / "spiece.model",
            context_length=context_length,
            added_tokens=added,
            **kwargs,
        )

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

    def _rows(self, texts: list[str], ctx: int) -> np.ndarray:
        """As the SigLIP processor: ids + eos, right-padded with `pad_token_id`, truncated to
        `ctx`."""
        return pad_rows([self._finish(self.encode(t), ctx) for t in texts], ctx, self.pad_token_id)

    def decode(self, ids: Sequence[int] | torch.Tensor | np.ndarray) -> str:
        """Text of a row of ids: cut at the first eos (padding follows), drop other specials.

        Args:
            ids: One row of ids.

        Returns:
            The text, as sentencepiece decodes it.
        """
        seq = ids_as_list(ids)
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
