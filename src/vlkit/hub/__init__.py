"""Every checkpoint format in and out: Hugging Face CLIP/SigLIP/Llama/SmolVLM, HF preprocessor
configs, open_clip and vlkit's own (safetensors + JSON). Models never import this package.

`from_pretrained` / `save_pretrained` (loading.py) recognise the format of a directory; the
conversions live one format a file (`hf_clip`, `hf_llama`, `hf_causal_lm`, `hf_opt`,
`hf_smolvlm`, `hf_llava` with `hf_llava_config`, `hf_llava_processor`, `hf_blip2`,
`hf_preprocess`, `open_clip`), reading config.json / generation_config.json through
`hf_config_files`; `clip_checkpoint` answers what a CLIP checkpoint needs (tokenizer,
transform), `processors.get_processor` what a generative one does.
"""

from vlkit.hub.clip_checkpoint import get_tokenizer, get_transform, load_clip
from vlkit.hub.loading import (
    VLKIT_CONFIG,
    CheckpointError,
    from_pretrained,
    resolve_checkpoint,
    save_pretrained,
)

__all__ = [
    "VLKIT_CONFIG",
    "CheckpointError",
    "from_pretrained",
    "get_tokenizer",
    "get_transform",
    "load_clip",
    "resolve_checkpoint",
    "save_pretrained",
]
