"""The public entry points that accept a preset name, a checkpoint directory or a model.

`get_tokenizer` and `get_transform` answer "what does this model expect?" for anything
`create_model` or `from_pretrained` accepts, so user code never has to know which format a
checkpoint came in; `get_processor` returns the processor of a generative checkpoint (SmolVLM,
LLaVA: prompt and images -> model inputs, as transformers' `AutoProcessor`); `load_clip` returns a CLIP-like checkpoint ready for inference; `compose_vlm` builds a
generative VLM from a pretrained vision tower and a pretrained causal LM. They are
implemented in `vlkit.hub.clip_checkpoint` (so the library's own layers can use them); this
facade is what users import, and nothing inside vlkit imports it.
"""

from vlkit.hub.clip_checkpoint import get_tokenizer, get_transform, load_clip
from vlkit.hub.compose import compose_vlm
from vlkit.hub.processors import get_processor

__all__ = ["compose_vlm", "get_processor", "get_tokenizer", "get_transform", "load_clip"]
