"""The processor of an anyres (LLaVA-NeXT) composed model: tiles, sizes and per-image counts.

As transformers' `LlavaNextProcessor` (processing_llava_next.py) with its
`LlavaNextImageProcessor`: each image becomes a global view plus a grid of tiles
(`vlkit.data.anyres_tiling.anyres_pixel_values`), the images' views are zero-padded to one count,
`image_sizes` keeps each image's original (height, width), and each `<image>` of the prompts
expands to that image's own `anyres_token_count`. Tokenizer, chat template and text options are
the `LlavaProcessor`'s.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from vlkit.data.anyres_placeholders import anyres_token_count
from vlkit.data.anyres_tiling import anyres_pixel_values
from vlkit.data.llava_processor import LlavaProcessor

__all__ = ["AnyResProcessor"]


class AnyResProcessor(LlavaProcessor):
    """A `LlavaProcessor` that tiles images (LLaVA-NeXT "anyres").

    Build it with `AnyResProcessor.from_llava(processor, pinpoints)`; the transform's square
    image size is the tile size S and the processor's `patch_size` the tower's.

    Attributes:
        pinpoints: Candidate (height, width) grids, multiples of S.
    """

    pinpoints: list[tuple[int, int]]

    @classmethod
    def from_llava(
        cls, processor: LlavaProcessor, pinpoints: Sequence[Sequence[int]]
    ) -> AnyResProcessor:
        """The same processor, tiling with `pinpoints`."""
        out = cls.__new__(cls)
        out.__dict__.update(processor.__dict__)
        out.pinpoints = [(int(h), int(w)) for h, w in pinpoints]
        return out

    @property
    def tile_size(self) -> int:
        return int(self.transform.config.output_size[0])

    def num_image_tokens(self, height: int, width: int) -> int:
        """Placeholders an image of original size (height, width) fills."""
        return anyres_token_count((height, width), self.pinpoints, self.tile_size, self.patch_size)

    def images_to_views(self, images: list[Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, V, 3, S, S) views, zero views after each image's own, and (N, 2) sizes."""
        tiled = [
            anyres_pixel_values(image, self.pinpoints, self.transform.config) for image in images
        ]
        most = max(views.shape[0] for views, _ in tiled)
        pixel_values = torch.zeros(len(tiled), most, *tiled[0][0].shape[1:])
        for index, (views, _) in enumerate(tiled):
            pixel_values[index, : views.shape[0]] = views
        return pixel_values, torch.tensor([size for _, size in tiled], dtype=torch.long)

    def image_inputs(self, images: list[Any]) -> tuple[dict[str, torch.Tensor], list[int]]:
        """`pixel_values` (N, V, 3, S, S) and `image_sizes` (N, 2), and each image's own
        placeholder count; the rest of `LlavaProcessor.__call__` is shared."""
        pixel_values, image_sizes = self.images_to_views(images)
        counts = [self.num_image_tokens(h, w) for h, w in image_sizes.tolist()]
        return {"pixel_values": pixel_values, "image_sizes": image_sizes}, counts
