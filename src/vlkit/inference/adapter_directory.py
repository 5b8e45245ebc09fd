"""A peft LoRA adapter directory as a model: the base it records, with the adapter merged in.

`vlkit finetune --lora` (without `--merge`) ends with `OUT/final` holding only the adapter in
peft's format: `adapter_config.json` (its `base_model_name_or_path` names the base model, as
`PeftModel.save_pretrained` records it) + `adapter_model.safetensors`. `load_vlm` (and so
`vlkit generate --model OUT/final` and `vlkit serve --vlm OUT/final`) loads the base named there
(a directory, or a hub id), then the adapter (`vlkit.hub.peft.load_adapter`), merged into the
base weights for inference speed (`merge_and_unload`). Adapters written by transformers + peft
load the same way.
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from vlkit.errors import CheckpointError

__all__ = ["ADAPTER_CONFIG", "adapter_base", "merge_adapter"]

ADAPTER_CONFIG = "adapter_config.json"


def adapter_base(directory: str | Path) -> str | None:
    """The base model an adapter directory records; None when `directory` is no adapter.

    Raises:
        CheckpointError: An unreadable `adapter_config.json`, or one that names no base model.
    """
    path = Path(directory) / ADAPTER_CONFIG
    if not path.is_file() or (Path(directory) / "config.json").is_file():
        return None  # a full checkpoint (config.json) is loaded as itself
    try:
        base = json.loads(path.read_text()).get("base_model_name_or_path")
    except (OSError, ValueError, AttributeError) as error:
        raise CheckpointError(f"{path}: unreadable adapter config ({error})") from error
    if not base:
        raise CheckpointError(
            f"{path}: base_model_name_or_path is empty; set it to the base model's directory "
            "or hub id to load this adapter"
        )
    return str(base)


def merge_adapter(model: nn.Module, directory: str | Path) -> nn.Module:
    """`model` with the LoRA adapter of `directory` loaded and merged into its weights."""
    from vlkit.hub.peft import load_adapter
    from vlkit.training.lora import merge_and_unload

    load_adapter(model, directory)
    return merge_and_unload(model)
