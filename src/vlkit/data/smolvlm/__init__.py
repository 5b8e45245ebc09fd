"""SmolVLM / Idefics3 inputs: the image processor (splitting, resizing, videos) and the processor
that expands `<image>` placeholders into the prompt strings transformers builds."""

from vlkit.data.smolvlm.image_processor import Video
from vlkit.data.smolvlm.processor import SmolVLMProcessor

__all__ = ["SmolVLMProcessor", "Video"]
