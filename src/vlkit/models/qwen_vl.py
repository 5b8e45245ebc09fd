"""Qwen-VL: a ViT at any resolution, compressed to K queries by a position-aware adapter.

Bai et al. 2023, "Qwen-VL: A Versatile Vision-Language Model", Sec. 2.1: the ViT's patch
features, however many the input resolution gives, are cross-attended by K learned queries
(256 in the paper) with 2-D absolute positions added to queries and keys
(`vlkit.fusion.qwen_resampler.QwenResampler`); the K outputs replace K `<image>` placeholders
in the LM's input. Sec. 3.2 raises the ViT's input from 224 to 448 px between stages, the
tower's position embeddings interpolated (`vlkit.models.position_interpolation`): the image
fills K placeholders at every resolution, only the grid the queries read grows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from vlkit.fusion.qwen_resampler import QwenResampler
from vlkit.models.decoder import DecoderLM
from vlkit.models.frozen_vision import VisionTokens, is_frozen
from vlkit.models.splicing_vlm import SplicingVLM
from vlkit.models.vit import VisionTransformer

if TYPE_CHECKING:
    from vlkit.models.fusion_vlm import FusionVLMConfig

__all__ = ["QwenVLM"]


class QwenVLM(SplicingVLM):
    """ViT patch grid (N, h*w, Dv) -> `QwenResampler` (N, K, D) -> spliced at K placeholders.

    Args:
        vision: The tower's patch tokens, class token dropped (`VisionTokens(drop_first=True)`
            for a CLIP tower), so they form the `(H // p) x (W // p)` grid. The tower is switched
            to interpolated position embeddings: images of any size >= one patch go through.
        connector: The resampler; its `num_queries` is the placeholder count K.
        decoder, image_token_id, config: As `SplicingVLM`.
    """

    def __init__(
        self,
        vision: VisionTokens,
        connector: QwenResampler,
        decoder: DecoderLM,
        image_token_id: int,
        config: FusionVLMConfig | None = None,
    ) -> None:
        if not isinstance(vision.tower, VisionTransformer):
            raise ValueError(f"Qwen-VL needs a ViT tower, got {type(vision.tower).__name__}")
        super().__init__(vision, connector, decoder, image_token_id, connector.query.shape[0],
                         config)  # fmt: skip
        vision.tower.set_interpolate_pos_encoding(True)
        self.patch_size = vision.tower.config.patch_size

    def _grid_tokens(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """(N, C, H, W) images -> (N, h*w, Dv) tokens and the grid (h, w)."""
        dtype = next(self.vision.parameters()).dtype
        tokens = self.vision(images.to(dtype))
        return tokens, (images.shape[-2] // self.patch_size, images.shape[-1] // self.patch_size)

    def encode_images(
        self, pixel_values: torch.Tensor, pixel_attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """As `GenerativeVLM.encode_images` (all-zero padding images dropped), with the patch
        grid passed to the resampler; (I*K, D) features.

        Raises:
            ValueError: A `pixel_attention_mask`: images are resized to one size, not padded.
        """
        if pixel_attention_mask is not None:
            raise ValueError("QwenVLM takes resized images: pixel_attention_mask is not used")
        if pixel_values.dim() == 4:
            pixel_values = pixel_values[:, None]
        images = pixel_values.flatten(0, 1)  # (B*M, C, H, W)
        real = (images != 0).flatten(1).any(dim=1)  # (B*M,)
        real[0] |= ~real.any()  # keep one image when all are padding (as GenerativeVLM)
        images = images[real]  # (N, C, H, W)
        grad = torch.is_grad_enabled() and (images.requires_grad or not is_frozen(self.vision))
        with torch.set_grad_enabled(grad):
            tokens, grid = self._grid_tokens(images)  # (N, h*w, Dv)
        features = self.connector(tokens, grid)  # (N, K, D)
        return features.reshape(-1, features.shape[-1])  # (N*K, D)

    def slot_to_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, K, h*w): the queries' attention to the patch tokens, head-averaged."""
        images = pixel_values.flatten(0, 1) if pixel_values.dim() == 5 else pixel_values
        tokens, grid = self._grid_tokens(images)
        _, probs = self.connector(tokens, grid, return_attention=True)  # (B, heads, K, h*w)
        return probs.mean(dim=1)
