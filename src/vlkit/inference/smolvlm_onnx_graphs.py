"""The three graphs of a SmolVLM / Idefics3 ONNX export, as torch modules with flat tensor I/O.

The split of Hugging Face optimum and the onnx-community exports (e.g.
onnx-community/SmolVLM-256M-Instruct), which onnxruntime and transformers.js users run:

    vision_encoder        pixel_values (B, M, 3, H, W) float32, pixel_attention_mask (B, M, H, W)
                          bool -> image_features (I, T, D): the real (not all-zero) images after
                          the vision tower and the pixel-shuffle connector, in (batch, image) order
    embed_tokens          input_ids (B, L) int64 -> inputs_embeds (B, L, D)
    decoder_model_merged  inputs_embeds (B, L, D), attention_mask (B, P + L) int64, position_ids
                          (B, L) int64, past_key_values.{i}.key / .value (B, H_kv, P, Dh)
                          -> logits (B, L, V), present.{i}.key / .value (B, H_kv, P + L, Dh)

The caller splices image_features into inputs_embeds at the `<image>` tokens (what
`GenerativeVLM.embed` does). "Merged" means one decoder for the prompt and for each new token:
the past length P may be 0 (the first step) or more.

The modules re-run vlkit's own layers (`GenerativeVLM`, `DecoderLM`, `SmolVLMVisionTransformer`)
in a form the torch.export-based ONNX exporter can trace: the masks are always built (the eager
code skips an all-ones mask after reading it on the host, a data-dependent branch an exported
graph cannot keep), and the cache is a `KVCache` seeded from the flat past tensors.
"""

from __future__ import annotations

import torch
from torch import nn

from vlkit.models.decoder import DecoderLM, KVCache
from vlkit.models.decoder.masks import attention_mask_4d
from vlkit.models.smolvlm import GenerativeVLM

__all__ = ["DecoderWithPast", "TokenEmbedding", "VisionEncoder", "past_names", "present_names"]


def past_names(num_layers: int) -> list[str]:
    """optimum's input names of the cache: past_key_values.0.key, past_key_values.0.value, ..."""
    return [f"past_key_values.{i}.{kind}" for i in range(num_layers) for kind in ("key", "value")]


def present_names(num_layers: int) -> list[str]:
    """optimum's output names of the updated cache: present.0.key, present.0.value, ..."""
    return [f"present.{i}.{kind}" for i in range(num_layers) for kind in ("key", "value")]


class VisionEncoder(nn.Module):
    """(B, M, 3, H, W) padded image batch + pixel mask -> (I, T, D) features of the I real images.

    As `GenerativeVLM.encode_images` (transformers' `Idefics3Model.get_image_features`): images
    whose pixels are all zero are padding and dropped (one is kept when all are); each image's
    patch mask comes from its pixel mask. The vision tower's layers are called with the key mask
    always present (`SmolVLMVisionTransformer.forward` drops an all-real mask after reading it).
    """

    def __init__(self, model: GenerativeVLM) -> None:
        super().__init__()
        self.vision = model.vision
        self.connector = model.connector

    def forward(
        self, pixel_values: torch.Tensor, pixel_attention_mask: torch.Tensor
    ) -> torch.Tensor:
        b, m = pixel_values.shape[:2]
        images = pixel_values.reshape(b * m, *pixel_values.shape[2:])  # (B*M, C, H, W)
        masks = pixel_attention_mask.reshape(b * m, *pixel_attention_mask.shape[2:])
        real = (images != 0).flatten(1).any(dim=1)  # (B*M,)
        first = torch.arange(b * m, device=images.device) == 0
        real = real | (first & ~real.any())  # keep one image when all are padding
        images, masks = images[real], masks[real]  # (I, C, H, W), (I, H, W)
        patches = self.vision.patch_mask(masks)  # (I, H/p, W/p) bool
        x = self.vision.embeddings(images, patches)  # (I, N, Dv)
        key_mask = patches.reshape(patches.shape[0], 1, 1, -1)  # (I, 1, 1, N)
        for layer in self.vision.encoder.layers:
            x = layer(x, key_mask)
        return self.connector(self.vision.post_layernorm(x))  # (I, T, D)


class TokenEmbedding(nn.Module):
    """(B, L) token ids -> (B, L, D) embeddings (the decoder's `embed_tokens`)."""

    def __init__(self, model: GenerativeVLM) -> None:
        super().__init__()
        self.embed_tokens = model.decoder.get_input_embeddings()

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.embed_tokens(input_ids)


class DecoderWithPast(nn.Module):
    """The merged decoder: new embeddings + flat past keys/values -> logits + present keys/values.

    `forward(inputs_embeds, attention_mask, position_ids, *past)` with `past` the 2 * num_layers
    (B, H_kv, P, Dh) tensors in `past_names` order; returns (logits, *present) in
    `present_names` order. Keys are cached after RoPE, as in `KVCache`.
    """

    def __init__(self, decoder: DecoderLM) -> None:
        super().__init__()
        self.decoder = decoder
        self.num_layers = decoder.config.num_layers

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        *past: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        b, n, _ = inputs_embeds.shape
        cache = KVCache()
        cache.keys, cache.values = list(past[0::2]), list(past[1::2])
        total = attention_mask.shape[1]  # P + L
        # (B, 1, L, P + L) causal + padding mask, built from shapes only (no host reads).
        mask = attention_mask_4d(attention_mask, b, n, total - n, inputs_embeds.device)
        model = self.decoder.model
        cos, sin = model.rotary_emb(position_ids, inputs_embeds.dtype)  # (B, 1, L, Dh)
        x = inputs_embeds
        for layer in model.layers:
            x = layer(x, cos, sin, mask, cache)
        logits = self.decoder.output(x).logits  # (B, L, V)
        present = [t for pair in zip(cache.keys, cache.values, strict=True) for t in pair]
        return (logits, *present)
