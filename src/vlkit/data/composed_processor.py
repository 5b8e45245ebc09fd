"""The processor of a composed VLM whose image fills a fixed number of placeholders.

`LlavaProcessor` expands each `<image>` to as many placeholders as the tower has patch tokens;
the other composed kinds fill a fixed number per image, whatever its size: Q-Former queries
(BLIP-2), one marker (Flamingo), the pixel-shuffled grid (SmolVLM / nanoVLM). Everything else
(tokenizer, chat template, image transform, padding and truncation options) is the
`LlavaProcessor`'s.
"""

from __future__ import annotations

from vlkit.data.llava_processor import LlavaProcessor

__all__ = ["FixedCountProcessor"]


class FixedCountProcessor(LlavaProcessor):
    """A `LlavaProcessor` whose every image fills `image_seq_length` placeholders.

    Build it with `FixedCountProcessor.from_llava(processor, count)`.
    """

    image_seq_length: int = 1

    @classmethod
    def from_llava(cls, processor: LlavaProcessor, count: int) -> FixedCountProcessor:
        """The same processor, with `count` placeholders per image."""
        out = cls.__new__(cls)
        out.__dict__.update(processor.__dict__)
        out.image_seq_length = int(count)
        return out

    def num_image_tokens(self, height: int, width: int) -> int:
        """`image_seq_length`, whatever the image size."""
        return self.image_seq_length
