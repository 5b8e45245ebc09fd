"""Model definitions: vision towers, text towers and the CLIP-like models that join them."""

from vlkit.models.clip import CLIP, CLIPConfig, SigLIP
from vlkit.models.decoder import DecoderConfig, DecoderLM, KVCache, StaticKVCache, generate
from vlkit.models.resnet import ModifiedResNet, ResNetConfig
from vlkit.models.text import TextConfig, TextOutput, TextTransformer
from vlkit.models.vit import VisionOutput, VisionTransformer, ViTConfig

__all__ = [
    "CLIP",
    "CLIPConfig",
    "DecoderConfig",
    "DecoderLM",
    "KVCache",
    "ModifiedResNet",
    "ResNetConfig",
    "SigLIP",
    "StaticKVCache",
    "TextConfig",
    "TextOutput",
    "TextTransformer",
    "ViTConfig",
    "VisionOutput",
    "VisionTransformer",
    "generate",
]
