"""The Llama-style decoder of vlkit's generative VLMs, and how it generates.

`config` (shape, output), `llama` (RMSNorm, grouped-query attention with optional q/k/v biases
and q/k norms, SwiGLU, the LM), `rope` (rotary embeddings and the linear / dynamic / llama3
scalings),
`kv_cache` (dynamic and static caches), `masks` (padding/causal masks and RoPE positions),
`generation` (greedy, sampling, beam search) and `fast_decode` (the static-cache decode step,
replayed from a CUDA graph on GPUs); `opt` is the GPT-style OPT decoder (BLIP-2's LM) behind the
same interface. Converting Hugging Face Llama / Qwen2 / Qwen3 / OPT checkpoints is the format
layer's job: `vlkit.hub.hf_llama`, `vlkit.hub.hf_causal_lm`, `vlkit.hub.hf_opt`.
"""

from vlkit.models.decoder.config import DecoderConfig, DecoderOutput
from vlkit.models.decoder.generation import generate
from vlkit.models.decoder.kv_cache import KVCache, StaticKVCache
from vlkit.models.decoder.llama import (
    MLP,
    Attention,
    DecoderLayer,
    DecoderLM,
    DecoderModel,
    RMSNorm,
    RotaryEmbedding,
    apply_rotary,
    rotate_half,
)
from vlkit.models.decoder.masks import (
    attention_mask_4d,
    mask_and_positions,
    next_position_ids,
    position_ids_from_mask,
)
from vlkit.models.decoder.opt import OPTLM, OPTConfig

__all__ = [
    "MLP",
    "Attention",
    "DecoderConfig",
    "DecoderLM",
    "DecoderLayer",
    "DecoderModel",
    "DecoderOutput",
    "KVCache",
    "OPTConfig",
    "OPTLM",
    "RMSNorm",
    "RotaryEmbedding",
    "StaticKVCache",
    "apply_rotary",
    "attention_mask_4d",
    "generate",
    "mask_and_positions",
    "next_position_ids",
    "position_ids_from_mask",
    "rotate_half",
]
