"""The fine-tuned model as a directory that vlkit, `vlkit generate`, the web app and
transformers load: `OUT/final`.

- Full fine-tuning, or LoRA with `merge=true`: a plain checkpoint of the base architecture,
  written by the model's own `save_pretrained`: SmolVLM / Idefics3 through
  `vlkit.hub.hf_smolvlm.save_smolvlm` (the base directory's config, generation config,
  tokenizer and processor files, `model.safetensors` in transformers' names), LLaVA through
  `LlavaVLM.save_pretrained` (transformers' layout with its processor), composed models in
  vlkit's composed format.
- LoRA without merging: the adapter in peft's format (`adapter_config.json` +
  `adapter_model.safetensors`, transformers' parameter names; `vlkit.hub.peft`), whose
  `base_model_name_or_path` records the base model directory, as peft itself does. That is
  how the adapter directory loads alone: `vlkit generate --model OUT/final` reads the base from
  it, and transformers + peft take `PeftModel.from_pretrained(base_model, "OUT/final")`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from vlkit.models.llava import LlavaVLM

__all__ = ["save_full_model"]


def save_full_model(model: nn.Module, processor: Any, directory: str | Path) -> Path:
    """Writes `model` (a fine-tuned, unsharded model without LoRA layers) as a checkpoint of
    its kind.

    Raises:
        ValueError: A model kind without a writer.
    """
    import vlkit.hub  # noqa: F401  (installs the writers behind the models' save_pretrained)
    import vlkit.hub.composed_checkpoint  # noqa: F401

    directory = Path(directory)
    if isinstance(model, LlavaVLM):
        model.save_pretrained(directory, processor)
    elif hasattr(model, "save_pretrained"):
        model.save_pretrained(directory)
    else:
        raise ValueError(f"no checkpoint writer for a {type(model).__name__}")
    return directory
