"""LLaVA-NeXT: LLaVA whose images are tiled ("anyres"), each filling its own number of tokens.

Liu et al. 2024, "LLaVA-NeXT: Improved reasoning, OCR, and world knowledge" (LLaVA-1.6,
"AnyRes"): an image is cut into a global view and a grid of tower-sized tiles chosen for its
aspect ratio (`vlkit.data.anyres_tiling`); the tower and the LLaVA projector encode every view,
and the tiles' patch grids are stitched back into one grid, unpadded with the image's original
size and closed row by row with a learned `image_newline` (`vlkit.models.anyres`). An image thus
fills `anyres_token_count(size)` placeholders, different per image.

Inputs follow transformers' `LlavaNextForConditionalGeneration`: `pixel_values` (N, V, 3, S, S),
image n's views first and zero views after them, with `image_sizes` (N, 2): each image's
original (height, width), in the order of the `<image>` placeholders across the batch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from vlkit.data.anyres_tiling import anyres_grid_shape
from vlkit.fusion.projector import LlavaProjector
from vlkit.models.anyres import pack_anyres_features
from vlkit.models.decoder import DecoderLM
from vlkit.models.frozen_vision import VisionTokens, is_frozen
from vlkit.models.smolvlm import VLMOutput
from vlkit.models.splicing_vlm import SplicingVLM
from vlkit.models.vit import VisionTransformer

if TYPE_CHECKING:
    from vlkit.models.fusion_vlm import FusionVLMConfig

__all__ = ["ANYRES_GRIDS", "AnyResLlavaVLM", "check_pinpoints"]

# LLaVA-NeXT's grids in tiles (llava-v1.6's pinpoints: 1x2, 2x1, 2x2, 3x1 and 1x3 tiles of 336 px).
ANYRES_GRIDS = ((1, 2), (2, 1), (2, 2), (3, 1), (1, 3))

# The image sizes of the `forward` / `generate` call in progress. The shared base
# (`GenerativeVLM.forward` / `generate`) calls `embed(input_ids, pixel_values, mask)` and carries
# no `image_sizes`; a context variable hands them to `embed` for this call only, per thread and
# per asyncio task (a served model answers concurrent requests).
_IMAGE_SIZES: ContextVar[torch.Tensor | None] = ContextVar("anyres_image_sizes", default=None)


@contextmanager
def _image_sizes(sizes: torch.Tensor | Sequence[Sequence[int]] | None) -> Iterator[None]:
    token = _IMAGE_SIZES.set(None if sizes is None else torch.as_tensor(sizes))
    try:
        yield
    finally:
        _IMAGE_SIZES.reset(token)


def check_pinpoints(pinpoints: Any, tile_size: int) -> list[list[int]]:
    """`pinpoints` as [[height, width], ...], each a positive multiple of `tile_size`; None
    gives LLaVA-NeXT's grids (`ANYRES_GRIDS`) of `tile_size` tiles.

    Raises:
        ValueError: An empty list or a pinpoint that is not such a pair, naming it.
    """
    if pinpoints is None:
        return [[rows * tile_size, cols * tile_size] for rows, cols in ANYRES_GRIDS]
    checked = []
    for pinpoint in pinpoints if isinstance(pinpoints, list | tuple) else [pinpoints]:
        if not (isinstance(pinpoint, list | tuple) and len(pinpoint) == 2
                and all(isinstance(v, int) and v > 0 and v % tile_size == 0 for v in pinpoint)):  # fmt: skip
            raise ValueError(
                f"pinpoints: {pinpoint!r} is not a (height, width) pair of positive multiples of "
                f"the tower's image size, {tile_size}"
            )
        checked.append([int(pinpoint[0]), int(pinpoint[1])])
    if not checked:
        raise ValueError("pinpoints: empty; give at least one (height, width)")
    return checked


class AnyResLlavaVLM(SplicingVLM):
    """Views (N, V, 3, S, S) + `image_sizes` -> tower + `LlavaProjector` per view -> packed
    (unpadded, `image_newline` per row) -> spliced at each image's placeholders -> `DecoderLM`.

    Args:
        vision: The tower's patch tokens as a square `h x w` grid (`VisionTokens` over a ViT,
            the class token dropped).
        connector: The `LlavaProjector` (Dv -> D).
        decoder, image_token_id, config: As `SplicingVLM`.
        pinpoints: The tiling's candidate (height, width) grids, multiples of the tower's
            input size (`check_pinpoints`).

    Attributes:
        image_newline: (D,) the learned row terminator (transformers' `model.image_newline`).
        num_image_tokens: The global view's token count, the fewest an image fills.
    """

    def __init__(
        self,
        vision: VisionTokens,
        connector: LlavaProjector,
        decoder: DecoderLM,
        image_token_id: int,
        pinpoints: Sequence[Sequence[int]],
        config: FusionVLMConfig | None = None,
    ) -> None:
        tower = vision.tower
        if not isinstance(tower, VisionTransformer):
            raise ValueError(f"anyres needs a ViT tower, got {type(tower).__name__}")
        if int(tower.config.class_token) != int(vision.drop_first):
            raise ValueError(
                "anyres stitches square patch grids: the tower's class token must be dropped and "
                "no patch token may be (vision_feature_select_strategy 'default' for CLIP, "
                "'full' for SigLIP)"
            )
        super().__init__(vision, connector, decoder, image_token_id, tower.config.grid_size**2,
                         config)  # fmt: skip
        self.tile_size = int(tower.config.image_size)
        self.pinpoints = [(h, w) for h, w in check_pinpoints(pinpoints, self.tile_size)]
        dim = decoder.config.hidden_size
        # LLaVA-NeXT initialises image_newline as randn(D) / sqrt(D) (llava_arch.py).
        self.image_newline = nn.Parameter(torch.randn(dim) / dim**0.5)

    def view_counts(self, image_sizes: torch.Tensor) -> list[int]:
        """1 + rows * cols views per image (transformers' `image_size_to_num_patches`)."""
        counts = []
        for height, width in image_sizes.tolist():
            rows, cols = anyres_grid_shape(
                (int(height), int(width)), self.pinpoints, self.tile_size
            )
            counts.append(1 + rows * cols)
        return counts

    def encode_images(
        self,
        pixel_values: torch.Tensor,
        pixel_attention_mask: torch.Tensor | None = None,
        image_sizes: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(N, V, 3, S, S) views of N images (or (V, 3, S, S) for one) and their (N, 2)
        original sizes -> (I, D) packed features, image after image.

        Raises:
            ValueError: No `image_sizes`, one count differing from the images', fewer views
                than an image's grid needs, or a `pixel_attention_mask`.
        """
        if pixel_attention_mask is not None:
            raise ValueError("anyres takes tiled views, not padded images: pixel_attention_mask")
        if pixel_values.dim() == 4:
            pixel_values = pixel_values[None]
        if image_sizes is None:
            raise ValueError(
                "image_sizes: required by an anyres model (each image's original (height, "
                "width), as the processor returns it)"
            )
        sizes = torch.as_tensor(image_sizes).reshape(-1, 2)
        if sizes.shape[0] != pixel_values.shape[0]:
            raise ValueError(
                f"image_sizes: {sizes.shape[0]} sizes for {pixel_values.shape[0]} images"
            )
        counts = self.view_counts(sizes)
        if max(counts) > pixel_values.shape[1]:
            raise ValueError(
                f"pixel_values: {pixel_values.shape[1]} views per image, but an image of size "
                f"{tuple(sizes[counts.index(max(counts))].tolist())} needs {max(counts)}"
            )
        dtype = next(self.vision.parameters()).dtype
        views = torch.cat(
            [image[:count] for image, count in zip(pixel_values, counts, strict=True)]
        )
        grad = torch.is_grad_enabled() and (views.requires_grad or not is_frozen(self.vision))
        with torch.set_grad_enabled(grad):
            tokens = self.vision(views.to(dtype))  # (sum V_n, h*w, Dv)
        features = self.connector(tokens)  # (sum V_n, h*w, D)
        packed = [
            pack_anyres_features(
                image, (int(h), int(w)), self.pinpoints, self.tile_size, self.image_newline
            )
            for image, (h, w) in zip(features.split(counts), sizes.tolist(), strict=True)
        ]
        return torch.cat(packed)  # (I, D)

    def embed(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        pixel_attention_mask: torch.Tensor | None = None,
        image_sizes: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """As `GenerativeVLM.embed`, the sizes given or those of the call in progress."""
        embeds = self.decoder.get_input_embeddings()(input_ids)  # (B, L, D)
        if pixel_values is None:
            return embeds, None
        sizes = _IMAGE_SIZES.get() if image_sizes is None else image_sizes
        features = self.encode_images(pixel_values, pixel_attention_mask, sizes).to(embeds.dtype)
        slots = input_ids == self.image_token_id  # (B, L)
        if int(slots.sum()) != features.shape[0]:
            raise ValueError(
                f"image features and image tokens do not match: {int(slots.sum())} <image> "
                f"tokens, {features.shape[0]} feature vectors"
            )
        return embeds.masked_scatter(slots[..., None], features), features

    def forward(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        *,
        image_sizes: torch.Tensor | Sequence[Sequence[int]] | None = None,
        num_items_in_batch: float | None = None,
        **kwargs: Any,
    ) -> VLMOutput:
        """`GenerativeVLM.forward` with `image_sizes` (N, 2), required with `pixel_values`.
        (`num_items_in_batch` is named so that the SFT loss sees this forward computes it.)"""
        with _image_sizes(image_sizes):
            return super().forward(input_ids, pixel_values, attention_mask, labels,
                                   num_items_in_batch=num_items_in_batch, **kwargs)  # fmt: skip

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        *,
        image_sizes: torch.Tensor | Sequence[Sequence[int]] | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        """`GenerativeVLM.generate` with `image_sizes` (N, 2), required with `pixel_values`."""
        with _image_sizes(image_sizes):
            return super().generate(input_ids, pixel_values, attention_mask, **kwargs)

    def attention_maps(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Refused: the maps are over one image's T tokens, and an anyres image has several
        views and a per-image token count.

        Raises:
            ValueError: Always.
        """
        raise ValueError("attention_maps: not available for an anyres (LLaVA-NeXT) model")
