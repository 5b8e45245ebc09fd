"""Model definitions: vision towers, text towers and the CLIP-like models that join them."""

from vlkit.models.chameleon import ChameleonConfig, ChameleonLM
from vlkit.models.clip import CLIP, CLIPConfig, SigLIP
from vlkit.models.decoder import DecoderConfig, DecoderLM, KVCache, StaticKVCache, generate
from vlkit.models.resnet import ModifiedResNet, ResNetConfig
from vlkit.models.text import TextConfig, TextOutput, TextTransformer
from vlkit.models.vit import VisionOutput, VisionTransformer, ViTConfig
from vlkit.models.vq_tokenizer import VQTokenizer, VQTokenizerConfig

__all__ = [
    "CLIP",
    "CLIPConfig",
    "ChameleonConfig",
    "ChameleonLM",
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
    "VQTokenizer",
    "VQTokenizerConfig",
    "ViTConfig",
    "VisionOutput",
    "VisionTransformer",
    "generate",
]
