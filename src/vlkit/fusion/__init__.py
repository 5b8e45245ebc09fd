"""Vision-language fusion modules: cross-attention blocks, resamplers and connectors.

Fusion blocks: ``forward(text_tokens (B, L, D), media_tokens, media_mask=None) -> (B, L, D)``.
Resamplers / connectors: ``forward(media_tokens) -> (B, K, D_out)``.
"""

from vlkit.fusion.cross_attention import CrossModalAttention
from vlkit.fusion.early_fusion import EarlyFusionTransformer
from vlkit.fusion.gated_cross_attention import (
    GatedCrossAttentionBlock,
    media_attention_mask,
    media_time_index,
)
from vlkit.fusion.gemini_fusion import GeminiFusion
from vlkit.fusion.perceiver_resampler import PerceiverAttention, PerceiverResampler
from vlkit.fusion.pixel_shuffle import PixelShuffleConnector, pixel_shuffle
from vlkit.fusion.projector import (
    IGNORE_INDEX,
    LlavaProjector,
    build_projector,
    splice_image_tokens,
)
from vlkit.fusion.qformer import QFormer
from vlkit.fusion.qformer_pretraining import QFormerPretrainer
from vlkit.fusion.qwen_resampler import QwenResampler, sincos_2d
from vlkit.fusion.token_fusion import TokenFusion
from vlkit.fusion.visual_expert import VisualExpertLayer

__all__ = [
    "EarlyFusionTransformer",
    "GeminiFusion",
    "QFormer",
    "QFormerPretrainer",
    "TokenFusion",
    "VisualExpertLayer",
    "IGNORE_INDEX",
    "CrossModalAttention",
    "GatedCrossAttentionBlock",
    "LlavaProjector",
    "PerceiverAttention",
    "PerceiverResampler",
    "PixelShuffleConnector",
    "QwenResampler",
    "build_projector",
    "media_attention_mask",
    "media_time_index",
    "pixel_shuffle",
    "sincos_2d",
    "splice_image_tokens",
]
