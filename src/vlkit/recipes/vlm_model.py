"""The model of a VLM recipe: its image tower (a vlkit CLIP) and its fusion VLM around it."""

from __future__ import annotations

import torch
from torch import nn

from vlkit.data.tokenizers.word import WordTokenizer
from vlkit.hub import from_pretrained
from vlkit.models.clip import CLIP, create_model
from vlkit.models.decoder import DecoderConfig
from vlkit.models.fusion_vlm import FusionVLMConfig, build_fusion_vlm_on_clip
from vlkit.training.vlm_recipe import VLMRecipe

__all__ = ["build_recipe_model", "fusion_config", "vision_clip"]


def vision_clip(recipe: VLMRecipe) -> CLIP:
    """The CLIP whose image tower feeds the connector: `recipe.vision.path`, or a random preset."""
    if recipe.vision.path:
        return from_pretrained(recipe.vision.path)
    torch.manual_seed(recipe.seed)
    return create_model(recipe.vision.preset)


def fusion_config(recipe: VLMRecipe, tokenizer: WordTokenizer, image_size: int) -> FusionVLMConfig:
    """The fusion VLM shape of a recipe over the tokenizer's vocabulary.

    Args:
        recipe: Kind, decoder shape and number of queries.
        tokenizer: Its vocabulary and `<image>` id.
        image_size: The tower's input side (the builder's dry run; early fusion's patch grid).
    """
    shape = recipe.decoder
    decoder = DecoderConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_layers=shape.num_layers,
        num_heads=shape.num_heads,
        num_kv_heads=shape.num_heads,
        max_position_embeddings=256,
        tie_word_embeddings=False,
    )
    return FusionVLMConfig(
        kind=recipe.kind,
        decoder=decoder,
        image_token_id=tokenizer.image_token_id,
        num_queries=recipe.num_queries,
        image_size=image_size,
    )


def build_recipe_model(recipe: VLMRecipe, clip: CLIP, tokenizer: WordTokenizer) -> nn.Module:
    """The recipe's fusion VLM around `clip`'s image tower, initialised from `recipe.seed`.

    Its `config` is the resolved `FusionVLMConfig` (the tower's token width measured by the
    builder's dry run), which the run directory stores.
    """
    config = fusion_config(recipe, tokenizer, clip.config.preprocess.image_size)
    torch.manual_seed(recipe.seed)
    return build_fusion_vlm_on_clip(config, clip, recipe.vision.trainable, recipe.vision.tokens)
