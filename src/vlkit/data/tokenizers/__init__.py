"""Text tokenizers: CLIP (byte-level BPE) and SigLIP (sentencepiece), id-for-id with the references.

* `CLIPTokenizer` (clip_bpe.py): open_clip's default CLIP tokenizer, BPE in Rust.
* `SigLIPTokenizer` (siglip.py): transformers' `SiglipTokenizer` as `SiglipProcessor` calls it.
* `HFTokenizer` (hf_json.py): any `tokenizer.json` (SigLIP 2 / Gemma and other fast tokenizers).
* `WordTokenizer` (word.py): a word vocabulary for small closed-vocabulary corpora.
* `get_tokenizer` picks one from a name or a checkpoint directory. vlkit preset names are a
  model concept: `vlkit.get_tokenizer` resolves them before it calls this one.

All of them are called as `tok(texts, context_length=None) -> LongTensor (N, context_length)`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from vlkit.data.tokenizers.cleaning import clean_text
from vlkit.data.tokenizers.clip_bpe import DEFAULT_CLIP_CONTEXT_LENGTH, CLIPTokenizer
from vlkit.data.tokenizers.clip_vocab import CLIP_VOCAB_SIZE, bytes_to_unicode
from vlkit.data.tokenizers.hf_json import HFTokenizer
from vlkit.data.tokenizers.siglip import (
    DEFAULT_SIGLIP_CONTEXT_LENGTH,
    SPIECE_UNDERLINE,
    SigLIPTokenizer,
)

__all__ = [
    "CLIP_VOCAB_SIZE",
    "DEFAULT_CLIP_CONTEXT_LENGTH",
    "DEFAULT_SIGLIP_CONTEXT_LENGTH",
    "SPIECE_UNDERLINE",
    "CLIPTokenizer",
    "HFTokenizer",
    "SigLIPTokenizer",
    "bytes_to_unicode",
    "clean_text",
    "get_tokenizer",
]


def get_tokenizer(
    name_or_path: str | os.PathLike[str], context_length: int | None = None
) -> CLIPTokenizer | SigLIPTokenizer | HFTokenizer:
    """The tokenizer for a name or a checkpoint directory.

    * "clip" or any name starting with "clip": the shipped CLIP vocabulary (context length:
      the argument, else 77).
    * A directory with `vocab.json` + `merges.txt`: `CLIPTokenizer` with that vocabulary.
    * A directory with `spiece.model`: `SigLIPTokenizer`.
    * A directory with only `tokenizer.json`, or a causal language model's directory (Llama,
      Qwen2, Qwen3 `config.json`, or a chat template in `tokenizer_config.json`) with
      `tokenizer.json`: `HFTokenizer` (with `apply_chat_template`).

    For directories the context length defaults to `config.json` `text_config.
    max_position_embeddings`, else a sane `tokenizer_config.json` `model_max_length`, else 77
    (CLIP) or 64 (SigLIP / tokenizer.json). Preset names ("tiny", ...) go through
    `vlkit.get_tokenizer`, which knows the models.

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
        if (path / "tokenizer.json").is_file() and _is_language_model(path):
            return HFTokenizer.from_pretrained(path, context_length)
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
    if lowered.startswith("siglip"):
        raise ValueError(
            f"{name!r}: the SigLIP sentencepiece vocabulary is not shipped with vlkit; pass a "
            "SigLIP checkpoint directory that contains spiece.model (or tokenizer.json)"
        )
    raise ValueError(
        f"cannot find a tokenizer for {name!r}: it is not a directory and not a known name; "
        "expected 'clip' (or a name starting with 'clip'), or a checkpoint directory "
        "containing vocab.json + merges.txt, spiece.model or tokenizer.json (vlkit preset "
        "names are resolved by vlkit.get_tokenizer)"
    )


_LANGUAGE_MODEL_TYPES = ("llama", "qwen2", "qwen3")


def _is_language_model(directory: Path) -> bool:
    """Whether a directory holds a causal LM's tokenizer (whose `vocab.json` + `merges.txt` must
    not be mistaken for CLIP's): its config.json model_type, or a chat template."""
    config = _read_object(directory / "config.json")
    if config.get("model_type") in _LANGUAGE_MODEL_TYPES:
        return True
    if (directory / "chat_template.jinja").is_file():
        return True
    return "chat_template" in _read_object(directory / "tokenizer_config.json")


def _read_object(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
