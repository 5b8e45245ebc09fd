"""Building blocks shared by the vision and text towers."""

from vlkit.layers.activations import get_activation
from vlkit.layers.attention import MultiheadSelfAttention
from vlkit.layers.attention_pool import AttentionPoolingHead
from vlkit.layers.mlp import Mlp
from vlkit.layers.transformer import Transformer, TransformerBlock

__all__ = [
    "AttentionPoolingHead",
    "Mlp",
    "MultiheadSelfAttention",
    "Transformer",
    "TransformerBlock",
    "get_activation",
]
